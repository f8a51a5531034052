/*
 * control.c - the control socket: JSON lines over a Unix stream socket.
 *
 * control_start() binds cfg->c_ctl_socket (owner-only by default), replacing
 * a stale socket file but never a live daemon's, and serves any number of
 * clients on the main loop. Each line is one request {"cmd":"...", ...};
 * each gets one response line {"ok":true,...} or {"ok":false,"error":...}.
 * Commands are a table of {name, handler} (ctl_cmds below): add a row to
 * add a command.
 *
 * Commands that read the spool (list, inspect, check) are forwarded to the
 * queue thread as queue_req_t and answered when the request comes back on
 * ct_reply, a channel on the main loop. While a request is in flight the
 * connection reads no further lines, so responses keep request order. A
 * client may disconnect first: the request holds a reference on its
 * connection (and on the control), and the late answer is dropped.
 *
 * Lifetime: the control is freed when its listener is closed, every
 * connection is freed and every queue request has come back (ct_refs).
 * Call control_stop() after queue_stop() (which answers every request it
 * holds) and keep running the main loop until its handles are closed.
 *
 * Thread: main thread only (everything runs on ce_loop).
 */
#include "core/server/ops_int.h"
#include "core/server/notify_int.h"
#ifdef SLUICE_HAVE_DELIVERY
#include "delivery/delivery.h"
#endif

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define CTL_MAX_CONNS 128 /* concurrent control clients */
#define CTL_READ_CHUNK 16384

typedef struct ctl_conn ctl_conn_t;

struct control {
    uv_pipe_t ct_server;
    control_env_t ct_env;
    char *ct_path;
    char *ct_hostname;
    dev_t ct_dev; /* the socket file we created, to unlink only ours */
    ino_t ct_ino;
    chan_t *ct_reply;     /* queue requests come back here */
    ctl_conn_t *ct_conns; /* open connections */
    int ct_nconns;
    int ct_refs;    /* listener + connections + queue requests in flight */
    int ct_pending; /* queue requests in flight */
    bool ct_stopping;
    bool ct_shutdown_called;
    uv_thread_t ct_thread;
    http_metrics_t *ct_http; /* control.http_metrics, or NULL */
};

struct ctl_conn {
    uv_pipe_t cc_pipe;
    control_t *cc_ctl;
    ctl_conn_t *cc_next;
    ctl_conn_t **cc_prevp;
    buf_t cc_in;
    int cc_refs;     /* the handle + a queue request in flight */
    int cc_writes;   /* writes in flight */
    bool cc_closing; /* uv_close called */
    bool cc_busy;    /* waiting for the queue thread's answer */
    bool cc_reading;
    bool cc_eof;    /* peer finished sending: close once answered */
    bool cc_finish; /* close once the pending writes are done */
};

typedef struct ctl_write {
    uv_write_t w_req;
    char *w_data;
    bool w_shutdown; /* call ce_shutdown once written */
} ctl_write_t;

/* A handler fills resp (which already holds "ok":true) and returns
 * CTL_REPLY, or starts a queue request and returns CTL_ASYNC, or writes
 * err and returns a negative code. */
enum { CTL_REPLY = 0, CTL_ASYNC = 1, CTL_REPLY_SHUTDOWN = 2 };
typedef int (*ctl_handler_fn)(ctl_conn_t *c, json_object *req, json_object *resp, char *err,
                              size_t errlen);

static int cmd_status(ctl_conn_t *c, json_object *req, json_object *resp, char *err, size_t errlen);
static int req_limit(json_object *req, size_t *limit, char *err, size_t errlen);
static int cmd_list(ctl_conn_t *c, json_object *req, json_object *resp, char *err, size_t errlen);
static int cmd_inspect(ctl_conn_t *c, json_object *req, json_object *resp, char *err,
                       size_t errlen);
static int cmd_check(ctl_conn_t *c, json_object *req, json_object *resp, char *err, size_t errlen);
static int cmd_shutdown(ctl_conn_t *c, json_object *req, json_object *resp, char *err,
                        size_t errlen);
static int cmd_log_rotate(ctl_conn_t *c, json_object *req, json_object *resp, char *err,
                          size_t errlen);
static json_object *log_rotate_response(queue_req_t *r);
static bool resume_missed(queue_req_t *r);
/* operator commands (docs/operations.md) */
static int cmd_queues(ctl_conn_t *c, json_object *req, json_object *resp, char *err, size_t errlen);
static int cmd_queue(ctl_conn_t *c, json_object *req, json_object *resp, char *err, size_t errlen);
static int cmd_suspend(ctl_conn_t *c, json_object *req, json_object *resp, char *err,
                       size_t errlen);
static int cmd_resume(ctl_conn_t *c, json_object *req, json_object *resp, char *err, size_t errlen);
static int cmd_suspended(ctl_conn_t *c, json_object *req, json_object *resp, char *err,
                         size_t errlen);
static int cmd_retry(ctl_conn_t *c, json_object *req, json_object *resp, char *err, size_t errlen);
static int cmd_bounce(ctl_conn_t *c, json_object *req, json_object *resp, char *err, size_t errlen);
static int cmd_reload(ctl_conn_t *c, json_object *req, json_object *resp, char *err, size_t errlen);
static int cmd_metrics(ctl_conn_t *c, json_object *req, json_object *resp, char *err,
                       size_t errlen);
static int cmd_providers(ctl_conn_t *c, json_object *req, json_object *resp, char *err,
                         size_t errlen);

static const struct ctl_cmd {
    const char *name;
    ctl_handler_fn fn;
} ctl_cmds[] = {
    {"status", cmd_status},       {"list", cmd_list},           {"inspect", cmd_inspect},
    {"check", cmd_check},         {"shutdown", cmd_shutdown},   {"log-rotate", cmd_log_rotate},
    {"queues", cmd_queues},       {"queue", cmd_queue},         {"suspend", cmd_suspend},
    {"resume", cmd_resume},       {"suspended", cmd_suspended}, {"retry", cmd_retry},
    {"bounce", cmd_bounce},       {"reload", cmd_reload},       {"metrics", cmd_metrics},
    {"providers", cmd_providers},
};

static void ctl_unref(control_t *ct);
static void conn_unref(ctl_conn_t *c);
static void conn_close(ctl_conn_t *c);
static void conn_maybe_finish(ctl_conn_t *c);
static void conn_process(ctl_conn_t *c);
static void conn_send(ctl_conn_t *c, json_object *resp, bool then_shutdown);
static void ctl_call_shutdown(control_t *ct);
static void conn_send_error(ctl_conn_t *c, const char *msg);
static void conn_read_start(ctl_conn_t *c);
static void reply_cb(chan_t *ch, chan_node_t *first, void *arg);
static void accept_cb(uv_stream_t *server, int status);
static json_object *hold_new(const char *type, json_object *name, json_object *provider,
                             const char *by, json_object *until);
static void shaping_holds_append(control_t *ct, json_object *holds);

/* ------------------------------------------------------------ helpers */

static void assert_main_thread(const control_t *ct)
{
#ifndef NDEBUG
    uv_thread_t self = uv_thread_self();
    assert(uv_thread_equal(&self, &ct->ct_thread));
#else
    UNUSED(ct);
#endif
}

static uint64_t u64_load(const atomic_uint_fast64_t *a)
{
    return (uint64_t)atomic_load_explicit(a, memory_order_relaxed);
}

static void add_u64(json_object *o, const char *key, uint64_t v)
{
    json_object_object_add(o, key, json_object_new_uint64(v));
}

/* mkdir -p for the directory part of path. */
static int mkdir_parents(const char *path)
{
    char *p = xstrdup(path);
    int rc = 0;
    char *slash = strrchr(p, '/');
    if (slash == NULL || slash == p)
        goto out;
    *slash = '\0';
    for (char *s = p + 1;; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char save = *s;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            rc = -errno;
            goto out;
        }
        *s = save;
        if (save == '\0')
            break;
    }
out:
    free(p);
    return rc;
}

/* A socket file already at path: 0 when nothing is there or it was stale
 * and has been removed, else an error in err. */
static int clear_stale_socket(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT)
            return 0;
        snprintf(err, errlen, "control socket %s: %s", path, strerror(errno));
        return -errno;
    }
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "control socket %s: exists and is not a socket", path);
        return -EEXIST;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        snprintf(err, errlen, "control socket %s: socket: %s", path, strerror(errno));
        return -errno;
    }
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    memcpy(sun.sun_path, path, strlen(path) + 1);
    int rc = connect(fd, (struct sockaddr *)&sun, sizeof(sun));
    int e = errno;
    close(fd);
    /* Connected, or a full backlog (EAGAIN): someone is listening. */
    if (rc == 0 || e == EAGAIN || e == EINPROGRESS) {
        snprintf(err, errlen, "control socket %s: another sluiced is running", path);
        return -EADDRINUSE;
    }
    if (e != ECONNREFUSED) {
        snprintf(err, errlen, "control socket %s: %s", path, strerror(e));
        return -e;
    }
    if (unlink(path) != 0 && errno != ENOENT) {
        snprintf(err, errlen, "control socket %s: cannot remove stale socket: %s", path,
                 strerror(errno));
        return -errno;
    }
    log_info("control socket %s: removed a stale socket file", path);
    return 0;
}

/* ------------------------------------------------------------ start/stop */

int control_start(cfg_t *cfg, const control_env_t *env, control_t **out, char *err, size_t errlen)
{
    const char *path = cfg->c_ctl_socket;
    int mode = cfg->c_ctl_mode & 07777;
    int fd = -1, rc;
    bool bound = false;
    struct stat st;
    struct sockaddr_un sun = {.sun_family = AF_UNIX};

    if (path == NULL || path[0] == '\0') {
        snprintf(err, errlen, "control socket: no path configured");
        return SL_ECONFIG;
    }
    if (strlen(path) >= sizeof(sun.sun_path)) {
        snprintf(err, errlen, "control socket %s: path too long (at most %zu bytes)", path,
                 sizeof(sun.sun_path) - 1);
        return -ENAMETOOLONG;
    }
    memcpy(sun.sun_path, path, strlen(path) + 1);
    if ((rc = mkdir_parents(path)) < 0) {
        snprintf(err, errlen, "control socket %s: cannot create its directory: %s", path,
                 sl_strerror(rc));
        return rc;
    }
    if ((rc = clear_stale_socket(path, err, errlen)) < 0)
        return rc;

    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "control socket %s: socket: %s", path, strerror(errno));
        goto fail;
    }
    if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
        rc = -errno;
        snprintf(err, errlen, "control socket %s: bind: %s", path, strerror(errno));
        goto fail;
    }
    bound = true;
    /* No one can connect before listen(), so setting the mode here leaves
     * no window with a wider one (and needs no process-wide umask). */
    if (chmod(path, (mode_t)mode) != 0 || stat(path, &st) != 0) {
        rc = -errno;
        snprintf(err, errlen, "control socket %s: chmod: %s", path, strerror(errno));
        goto fail;
    }
    if ((int)(st.st_mode & 07777) != mode) {
        rc = -EPERM;
        snprintf(err, errlen, "control socket %s: mode is %04o, wanted %04o", path,
                 (unsigned)(st.st_mode & 07777), (unsigned)mode);
        goto fail;
    }
    if (listen(fd, 64) != 0) {
        rc = -errno;
        snprintf(err, errlen, "control socket %s: listen: %s", path, strerror(errno));
        goto fail;
    }

    control_t *ct = xcalloc(1, sizeof(*ct));
    ct->ct_env = *env;
    ct->ct_path = xstrdup(path);
    ct->ct_hostname = xstrdup(cfg->c_hostname ? cfg->c_hostname : "");
    ct->ct_dev = st.st_dev;
    ct->ct_ino = st.st_ino;
    ct->ct_thread = uv_thread_self();
    ct->ct_refs = 1; /* the listener */
    if (uv_pipe_init(env->ce_loop, &ct->ct_server, 0) != 0 || uv_pipe_open(&ct->ct_server, fd) != 0)
        abort(); /* only fails on a bad fd or loop: a bug */
    ct->ct_server.data = ct;
    ct->ct_reply = chan_new(env->ce_loop, reply_cb, ct);
    /* Already listening: uv_listen only starts watching the fd. */
    if (uv_listen((uv_stream_t *)&ct->ct_server, 64, accept_cb) != 0)
        abort();
    log_info("control socket listening path=%s mode=%04o", path, (unsigned)mode);
    if (cfg->c_ctl_http != NULL && cfg->c_ctl_http[0] != '\0' &&
        (rc = http_metrics_start(cfg->c_ctl_http, env, &ct->ct_http, err, errlen)) != 0) {
        control_stop(ct); /* its handles close when the caller runs the loop */
        return rc;
    }
    *out = ct;
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    if (bound)
        unlink(path);
    return rc;
}

static void server_closed_cb(uv_handle_t *h)
{
    ctl_unref(h->data);
}

void control_stop(control_t *ct)
{
    if (ct == NULL)
        return;
    assert_main_thread(ct);
    if (ct->ct_stopping)
        return;
    ct->ct_stopping = true;
    http_metrics_stop(ct->ct_http);
    ct->ct_http = NULL;
    /* Unlink only our own socket file: a newer daemon may own the path. */
    struct stat st;
    if (stat(ct->ct_path, &st) == 0 && st.st_dev == ct->ct_dev && st.st_ino == ct->ct_ino)
        unlink(ct->ct_path);
    ct->ct_refs++; /* the drain below may drop the last connection */
    uv_close((uv_handle_t *)&ct->ct_server, server_closed_cb);
    /* The queue thread has stopped (queue_stop answers every request it
     * holds), so every answer still owed is already in ct_reply: the drain
     * in chan_close hands them to reply_cb, which sends what it can before
     * the connections close. Closing the channel here, not later, also
     * keeps it out of the daemon's final uv_walk. */
    chan_close(ct->ct_reply);
    ct->ct_reply = NULL;
    assert(ct->ct_pending == 0 && "control_stop() before queue_stop() with a request in flight");
    for (ctl_conn_t *c = ct->ct_conns; c != NULL; c = c->cc_next)
        conn_close(c);
    ctl_unref(ct);
}

static void ctl_unref(control_t *ct)
{
    assert(ct->ct_refs > 0);
    if (--ct->ct_refs > 0)
        return;
    chan_close(ct->ct_reply); /* NULL after control_stop */
    free(ct->ct_path);
    free(ct->ct_hostname);
    free(ct);
}

/* ------------------------------------------------------------ connections */

static void conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    ctl_conn_t *c = h->data;
    buf_reserve(&c->cc_in, CTL_READ_CHUNK);
    b->base = c->cc_in.b_data + c->cc_in.b_len;
    b->len = c->cc_in.b_cap - c->cc_in.b_len;
}

static void conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    ctl_conn_t *c = s->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        uv_read_stop(s);
        c->cc_reading = false;
        if (nread != UV_EOF) {
            log_debug("control: read error: %s", uv_strerror((int)nread));
            conn_close(c);
            return;
        }
        c->cc_eof = true;
    } else {
        c->cc_in.b_len += (size_t)nread;
    }
    conn_process(c);
}

static void accept_cb(uv_stream_t *server, int status)
{
    control_t *ct = server->data;
    if (status < 0) {
        log_warn("control socket %s: accept: %s", ct->ct_path, uv_strerror(status));
        return;
    }
    ctl_conn_t *c = xcalloc(1, sizeof(*c));
    c->cc_ctl = ct;
    c->cc_refs = 1;
    uv_pipe_init(ct->ct_env.ce_loop, &c->cc_pipe, 0);
    c->cc_pipe.data = c;
    ct->ct_refs++;
    c->cc_next = ct->ct_conns;
    if (c->cc_next)
        c->cc_next->cc_prevp = &c->cc_next;
    c->cc_prevp = &ct->ct_conns;
    ct->ct_conns = c;
    ct->ct_nconns++;
    if (uv_accept(server, (uv_stream_t *)&c->cc_pipe) != 0) {
        conn_close(c);
        return;
    }
    if (ct->ct_nconns > CTL_MAX_CONNS) {
        log_warn("control socket %s: too many clients (%d), refusing one", ct->ct_path,
                 CTL_MAX_CONNS);
        conn_send_error(c, "too many control connections");
        c->cc_finish = true;
        conn_maybe_finish(c);
        return;
    }
    conn_read_start(c);
}

static void conn_read_start(ctl_conn_t *c)
{
    if (c->cc_reading || c->cc_closing || c->cc_eof || c->cc_finish)
        return;
    if (uv_read_start((uv_stream_t *)&c->cc_pipe, conn_alloc_cb, conn_read_cb) == 0)
        c->cc_reading = true;
    else
        conn_close(c);
}

static void conn_closed_cb(uv_handle_t *h)
{
    conn_unref(h->data);
}

static void conn_close(ctl_conn_t *c)
{
    if (c->cc_closing)
        return;
    c->cc_closing = true;
    c->cc_reading = false;
    uv_close((uv_handle_t *)&c->cc_pipe, conn_closed_cb);
}

static void conn_unref(ctl_conn_t *c)
{
    assert(c->cc_refs > 0);
    if (--c->cc_refs > 0)
        return;
    control_t *ct = c->cc_ctl;
    *c->cc_prevp = c->cc_next;
    if (c->cc_next)
        c->cc_next->cc_prevp = c->cc_prevp;
    ct->ct_nconns--;
    buf_free(&c->cc_in);
    free(c);
    ctl_unref(ct);
}

/* Close once everything owed has been written: after EOF, an over-long
 * line, or a refused connection. */
static void conn_maybe_finish(ctl_conn_t *c)
{
    if ((c->cc_eof || c->cc_finish) && !c->cc_busy && c->cc_writes == 0)
        conn_close(c);
}

static void conn_write_cb(uv_write_t *req, int status)
{
    ctl_write_t *w = (ctl_write_t *)req;
    ctl_conn_t *c = req->handle->data;
    control_t *ct = c->cc_ctl;
    c->cc_writes--;
    if (w->w_shutdown)
        ctl_call_shutdown(ct);
    free(w->w_data);
    free(w);
    if (status < 0 && status != UV_ECANCELED) {
        log_debug("control: write error: %s", uv_strerror(status));
        conn_close(c);
        return;
    }
    if (!c->cc_closing)
        conn_maybe_finish(c);
}

/* Ask the daemon to shut down, once. */
static void ctl_call_shutdown(control_t *ct)
{
    if (ct->ct_stopping || ct->ct_shutdown_called)
        return;
    ct->ct_shutdown_called = true;
    log_info("control: shutdown requested");
    if (ct->ct_env.ce_shutdown)
        ct->ct_env.ce_shutdown(ct->ct_env.ce_arg);
}

/* Send one answer line. ctl_response_append makes every string in it
 * valid UTF-8 without control characters: answers carry peer text (remote
 * replies, job names) that json-c would pass through as raw bytes. */
static void conn_send(ctl_conn_t *c, json_object *resp, bool then_shutdown)
{
    if (c->cc_closing)
        return;
    buf_t line;
    buf_init(&line, 256);
    ctl_response_append(&line, resp);
    size_t len = line.b_len, off = 0;
    if (c->cc_writes == 0) {
        /* Most answers fit in the socket buffer: write them now, which
         * also gets them out before a close that would cancel a queued
         * write. */
        uv_buf_t part = uv_buf_init(line.b_data, (unsigned)len);
        int n = uv_try_write((uv_stream_t *)&c->cc_pipe, &part, 1);
        if (n < 0 && n != UV_EAGAIN) {
            log_debug("control: write: %s", uv_strerror(n));
            buf_free(&line);
            conn_close(c);
            return;
        }
        off = n > 0 ? (size_t)n : 0;
        if (off == len) {
            buf_free(&line);
            if (then_shutdown)
                ctl_call_shutdown(c->cc_ctl);
            return;
        }
    }
    ctl_write_t *w = xcalloc(1, sizeof(*w));
    size_t rest = len - off;
    w->w_data = xmalloc(rest);
    memcpy(w->w_data, line.b_data + off, rest);
    buf_free(&line);
    w->w_shutdown = then_shutdown;
    uv_buf_t ub = uv_buf_init(w->w_data, (unsigned)rest);
    int rc = uv_write(&w->w_req, (uv_stream_t *)&c->cc_pipe, &ub, 1, conn_write_cb);
    if (rc != 0) {
        log_debug("control: write: %s", uv_strerror(rc));
        free(w->w_data);
        free(w);
        conn_close(c);
        return;
    }
    c->cc_writes++;
}

static void conn_send_error(ctl_conn_t *c, const char *msg)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "ok", json_object_new_boolean(0));
    json_object_object_add(o, "error", json_object_new_string(msg));
    conn_send(c, o, false);
    json_object_put(o);
}

/* One request line: parse, dispatch through the table, answer. */
static void conn_handle_line(ctl_conn_t *c, const char *line, size_t len)
{
    char err[512];
    json_object *req = NULL;
    const char *cmd;

    if (ctl_request_parse(line, len, &req, &cmd, err, sizeof(err)) != 0) {
        conn_send_error(c, err);
        return;
    }
    const struct ctl_cmd *cc = NULL;
    for (size_t i = 0; i < ARRAY_SIZE(ctl_cmds); i++) {
        if (strcmp(ctl_cmds[i].name, cmd) == 0) {
            cc = &ctl_cmds[i];
            break;
        }
    }
    if (cc == NULL) {
        json_object *e = json_object_new_object();
        json_object_object_add(e, "ok", json_object_new_boolean(0));
        char *msg = xasprintf("unknown command \"%.100s\"", cmd);
        json_object_object_add(e, "error", json_object_new_string(msg));
        free(msg);
        conn_send(c, e, false);
        json_object_put(e);
        json_object_put(req);
        return;
    }
    log_debug("control: cmd=%s", cc->name);
    json_object *resp = json_object_new_object();
    json_object_object_add(resp, "ok", json_object_new_boolean(1));
    err[0] = '\0';
    int rc = cc->fn(c, req, resp, err, sizeof(err));
    if (rc < 0)
        conn_send_error(c, err[0] ? err : sl_strerror(rc));
    else if (rc != CTL_ASYNC)
        conn_send(c, resp, rc == CTL_REPLY_SHUTDOWN);
    json_object_put(resp);
    json_object_put(req);
}

/* Answer every complete line buffered, unless a queue request is in
 * flight (then stop reading until it comes back). */
static void conn_process(ctl_conn_t *c)
{
    size_t off = 0;
    while (!c->cc_busy && !c->cc_closing && !c->cc_finish) {
        size_t ll, used;
        const char *p = c->cc_in.b_data + off;
        size_t avail = c->cc_in.b_len - off;
        int rc = ctl_line_next(p, avail, CTL_MAX_LINE, &ll, &used);
        if (rc == 0 && c->cc_eof && avail > 0) {
            ll = used = avail; /* a last request without its newline */
            rc = 1;
        }
        if (rc == 0)
            break;
        if (rc < 0) {
            char msg[96];
            snprintf(msg, sizeof(msg), "request line longer than %d bytes", CTL_MAX_LINE);
            conn_send_error(c, msg);
            c->cc_finish = true; /* the stream is out of sync: answer, then close */
            off = c->cc_in.b_len;
            break;
        }
        off += used;
        bool blank = true;
        for (size_t i = 0; i < ll && blank; i++)
            blank = p[i] == ' ' || p[i] == '\t';
        if (!blank)
            conn_handle_line(c, p, ll);
    }
    buf_consume(&c->cc_in, off);
    if (c->cc_closing)
        return;
    if (c->cc_busy || c->cc_finish) {
        if (c->cc_reading) {
            uv_read_stop((uv_stream_t *)&c->cc_pipe);
            c->cc_reading = false;
        }
    } else {
        conn_read_start(c);
    }
    conn_maybe_finish(c);
}

/* ------------------------------------------------------------ queue requests */

static int queue_req_start(ctl_conn_t *c, queue_req_type_t type, uint64_t msgid, size_t limit,
                           char *err, size_t errlen)
{
    control_t *ct = c->cc_ctl;
    if (ct->ct_env.ce_queue == NULL) {
        snprintf(err, errlen, "the queue is not running");
        return SL_EBUSY;
    }
    queue_req_t *r = xcalloc(1, sizeof(*r));
    r->qq_type = type;
    r->qq_msgid = msgid;
    r->qq_limit = limit;
    r->qq_reply = ct->ct_reply;
    r->qq_ctx = c;
    c->cc_refs++;
    c->cc_busy = true;
    ct->ct_refs++;
    ct->ct_pending++;
    queue_request(ct->ct_env.ce_queue, r);
    return CTL_ASYNC;
}

/* One entry of "holds"; name, provider and until are borrowed from another
 * object (a reference is taken) or NULL. */
static json_object *hold_new(const char *type, json_object *name, json_object *provider,
                             const char *by, json_object *until)
{
    json_object *h = json_object_new_object();
    json_object_object_add(h, "type", json_object_new_string(type));
    json_object_object_add(h, "name", json_object_get(name));
    json_object_object_add(h, "provider", json_object_get(provider));
    json_object_object_add(h, "by", json_object_new_string(by));
    json_object_object_add(h, "until", json_object_get(until));
    json_object_object_add(h, "persistent", json_object_new_boolean(0)); /* in memory only */
    return h;
}

/* Build the response for a request the queue thread answered. */
static json_object *queue_req_response(queue_req_t *r)
{
    if (r->qq_type == QREQ_ROTATE)
        return log_rotate_response(r);
    json_object *resp = json_object_new_object();
    if (r->qq_error[0] != '\0' || r->qq_result == NULL || resume_missed(r)) {
        json_object_object_add(resp, "ok", json_object_new_boolean(0));
        json_object_object_add(resp, "error",
                               json_object_new_string(r->qq_error[0] ? r->qq_error : "no answer"));
        return resp;
    }
    json_object_object_add(resp, "ok", json_object_new_boolean(1));
    if (r->qq_type == QREQ_INSPECT) {
        json_object_object_add(resp, "message", json_object_get(r->qq_result));
        return resp;
    }
    json_object_object_foreach(r->qq_result, key, val)
    {
        /* check's own "ok" means "consistent": "ok" here means "answered". */
        const char *k = strcmp(key, "ok") == 0 ? "consistent" : key;
        json_object_object_add(resp, k, json_object_get(val));
    }
    return resp;
}

/* The suspensions traffic shaping holds in memory (operator and rules),
 * in the form of the queue's holds (docs/records.md), appended to holds. */
static void shaping_holds_append(control_t *ct, json_object *holds)
{
#ifdef SLUICE_HAVE_DELIVERY
    struct dlv *dlv = ct->ct_env.ce_dlv;
    if (dlv == NULL || holds == NULL || !json_object_is_type(holds, json_type_array))
        return;
    json_object *sh = dlv_shaping_json(dlv), *v;
    json_object *provs = json_object_object_get(sh, "providers");
    for (size_t i = 0; i < json_object_array_length(provs); i++) {
        json_object *p = json_object_array_get_idx(provs, i);
        json_object *name = json_object_object_get(p, "provider");
        if (json_object_get_boolean(json_object_object_get(p, "suspended")))
            json_object_array_add(
                holds, hold_new("provider", name, NULL,
                                json_object_get_string(json_object_object_get(p, "suspended_by")),
                                json_object_object_get(p, "suspended_until")));
        json_object *qs = json_object_object_get(p, "queues");
        for (size_t j = 0; j < json_object_array_length(qs); j++) {
            json_object *q = json_object_array_get_idx(qs, j);
            /* a rule's disable-source: this vmta skipped for this provider */
            if ((v = json_object_object_get(q, "disabled_until")) != NULL)
                json_object_array_add(
                    holds, hold_new("source", json_object_object_get(q, "vmta"), name, "rule", v));
        }
    }
    json_object *vms = json_object_object_get(sh, "virtual_mtas");
    for (size_t i = 0; i < json_object_array_length(vms); i++) {
        json_object *m = json_object_array_get_idx(vms, i);
        if (json_object_get_boolean(json_object_object_get(m, "suspended")))
            json_object_array_add(holds, hold_new("vmta", json_object_object_get(m, "name"), NULL,
                                                  "operator",
                                                  json_object_object_get(m, "suspended_until")));
    }
    json_object_put(sh);
#else
    UNUSED(ct);
    UNUSED(holds);
#endif
}

static void reply_cb(chan_t *ch, chan_node_t *first, void *arg)
{
    control_t *ct = arg;
    ct->ct_refs++; /* stay alive through the walk */
    for (chan_node_t *n = first, *next; n != NULL; n = next) {
        next = n->cn_next;
        queue_req_t *r = (queue_req_t *)n;
        ctl_conn_t *c = r->qq_ctx;
        c->cc_busy = false;
        if (!c->cc_closing) {
            json_object *resp = queue_req_response(r);
            /* every kind of suspension where holds are listed */
            shaping_holds_append(ct, json_object_object_get(resp, "holds"));
            conn_send(c, resp, false);
            json_object_put(resp);
            if (!ct->ct_stopping)
                conn_process(c); /* lines that arrived meanwhile */
        }
        json_object_put(r->qq_result);
        free(r->qq_domain);
        free(r->qq_job);
        free(r->qq_sender);
        free(r);
        ct->ct_pending--;
        conn_unref(c);
        ctl_unref(ct);
    }
    ctl_unref(ct);
}

/* ------------------------------------------------------------ commands */

static int cmd_status(ctl_conn_t *c, json_object *req, json_object *resp, char *err, size_t errlen)
{
    const control_env_t *env = &c->cc_ctl->ct_env;
    /* ce_start_us is expected from clock_now_us(); accept a monotonic one. */
    uint64_t now = env->ce_start_us > 1000000000000000ull ? clock_now_us() : clock_mono_us();
    uint64_t up = now > env->ce_start_us ? (now - env->ce_start_us) / 1000000u : 0;

    json_object_object_add(resp, "version", json_object_new_string(SLUICE_VERSION));
    json_object_object_add(resp, "pid", json_object_new_int64((int64_t)getpid()));
    add_u64(resp, "uptime_s", up);
    json_object_object_add(resp, "hostname", json_object_new_string(c->cc_ctl->ct_hostname));

    if (env->ce_queue != NULL) {
        const queue_stats_t *qs = queue_stats(env->ce_queue);
        json_object *q = json_object_new_object();
        add_u64(q, "messages", u64_load(&qs->qs_msgs));
        add_u64(q, "recipients", u64_load(&qs->qs_rcpts));
        add_u64(q, "pending_commits", u64_load(&qs->qs_pending));
        add_u64(q, "spool_used_bytes", u64_load(&qs->qs_used));
        add_u64(q, "spool_map_bytes", u64_load(&qs->qs_map_size));
        add_u64(q, "spool_max_bytes", u64_load(&qs->qs_max_size));
        json_object_object_add(
            q, "spool_fill_pct",
            json_object_new_int(atomic_load_explicit(&qs->qs_fill_pct, memory_order_relaxed)));
        add_u64(q, "commits", u64_load(&qs->qs_commits));
        add_u64(q, "received", u64_load(&qs->qs_received));
        add_u64(q, "commit_errors", u64_load(&qs->qs_errors));
        add_u64(q, "active_bytes", u64_load(&qs->qs_active_bytes));
        add_u64(q, "active_limit_bytes", u64_load(&qs->qs_active_limit));
        json_object_object_add(resp, "queue", q);
    }
    if (env->ce_smtp != NULL) {
        const smtp_server_stats_t *ss = smtp_server_stats(env->ce_smtp);
        json_object *s = json_object_new_object();
        add_u64(s, "connections_current", u64_load(&ss->ss_conn_current));
        add_u64(s, "connections_total", u64_load(&ss->ss_conn_total));
        add_u64(s, "connections_refused", u64_load(&ss->ss_conn_refused));
        add_u64(s, "messages_accepted", u64_load(&ss->ss_msgs_accepted));
        add_u64(s, "messages_rejected", u64_load(&ss->ss_msgs_rejected));
        add_u64(s, "recipients_accepted", u64_load(&ss->ss_rcpts_accepted));
        add_u64(s, "recipients_rejected", u64_load(&ss->ss_rcpts_rejected));
        add_u64(s, "auth_ok", u64_load(&ss->ss_auth_ok));
        add_u64(s, "auth_failed", u64_load(&ss->ss_auth_failed));
        add_u64(s, "tls_sessions", u64_load(&ss->ss_tls_sessions));
        add_u64(s, "bytes_received", u64_load(&ss->ss_bytes_received));
        add_u64(s, "memory_bytes", u64_load(&ss->ss_mem_used));
        add_u64(s, "memory_limit_bytes", u64_load(&ss->ss_mem_limit));
        add_u64(s, "memory_refused", u64_load(&ss->ss_mem_refused));
        json_object_object_add(resp, "smtp", s);
    }
#ifdef SLUICE_HAVE_DELIVERY
    if (env->ce_dlv != NULL) {
        const dlv_stats_t *ds = dlv_stats(env->ce_dlv);
        json_object *o = json_object_new_object();
        add_u64(o, "connections_current", u64_load(&ds->ds_conn_open));
        add_u64(o, "connections_total", u64_load(&ds->ds_conn_total));
        add_u64(o, "connections_failed", u64_load(&ds->ds_conn_failed));
        add_u64(o, "transactions", u64_load(&ds->ds_transactions));
        add_u64(o, "delivered", u64_load(&ds->ds_delivered));
        add_u64(o, "deferred", u64_load(&ds->ds_deferred));
        add_u64(o, "bounced", u64_load(&ds->ds_bounced));
        add_u64(o, "tls_sessions", u64_load(&ds->ds_tls_sessions));
        add_u64(o, "tls_resumed", u64_load(&ds->ds_tls_resumed));
        add_u64(o, "dns_lookups", u64_load(&ds->ds_dns_lookups));
        add_u64(o, "dns_cache_hits", u64_load(&ds->ds_dns_cache_hits));
        add_u64(o, "destinations_down", u64_load(&ds->ds_dests_down));
        json_object_object_add(resp, "delivery", o);
    }
#endif
    return CTL_REPLY;
}

/* The optional "limit" member of a request: 0 (and *limit, 0 when absent)
 * or SL_EPARSE with err set. */
static int req_limit(json_object *req, size_t *limit, char *err, size_t errlen)
{
    json_object *lim;
    *limit = 0;
    if (!json_object_object_get_ex(req, "limit", &lim))
        return 0;
    int64_t v = json_object_get_int64(lim);
    if (!json_object_is_type(lim, json_type_int) || v < 0) {
        snprintf(err, errlen, "\"limit\" must be a non-negative integer");
        return SL_EPARSE;
    }
    *limit = (size_t)v;
    return 0;
}

static int cmd_list(ctl_conn_t *c, json_object *req, json_object *resp, char *err, size_t errlen)
{
    size_t limit = 0;
    if (req_limit(req, &limit, err, errlen) != 0)
        return SL_EPARSE;
    return queue_req_start(c, QREQ_LIST, 0, limit, err, errlen);
}

static int cmd_inspect(ctl_conn_t *c, json_object *req, json_object *resp, char *err, size_t errlen)
{
    json_object *id;
    uint64_t msgid;
    if (!json_object_object_get_ex(req, "id", &id) || !json_object_is_type(id, json_type_string)) {
        snprintf(err, errlen, "inspect needs \"id\": a message id");
        return SL_EPARSE;
    }
    if (queue_msgid_parse(json_object_get_string(id), &msgid) != 0) {
        snprintf(err, errlen, "invalid message id \"%.64s\" (16 hex digits expected)",
                 json_object_get_string(id));
        return SL_EPARSE;
    }
    return queue_req_start(c, QREQ_INSPECT, msgid, 0, err, errlen);
}

static int cmd_check(ctl_conn_t *c, json_object *req, json_object *resp, char *err, size_t errlen)
{
    return queue_req_start(c, QREQ_CHECK, 0, 0, err, errlen);
}

static int cmd_shutdown(ctl_conn_t *c, json_object *req, json_object *resp, char *err,
                        size_t errlen)
{
    /* ce_shutdown runs once the answer is written (conn_write_cb), so the
     * client sees it before the daemon closes the socket. */
    return CTL_REPLY_SHUTDOWN;
}

static int cmd_log_rotate(ctl_conn_t *c, json_object *req, json_object *resp, char *err,
                          size_t errlen)
{
    /* The accounting log first, on the queue thread; the operational log
     * when its answer is back (log_rotate_response), so that one answer
     * reports both and comes only once both are done: logrotate's
     * postrotate may compress the old files right after it. */
    return queue_req_start(c, QREQ_ROTATE, 0, 0, err, errlen);
}

/* The answer to log-rotate: the queue thread's accounting outcome, then
 * the operational log reopened here. ok:false when either failed. */
static json_object *log_rotate_response(queue_req_t *r)
{
    json_object *resp = json_object_new_object();
    char lerr[512] = "", lpath[256] = "";
    cfg_t *cfg = cfg_current(); /* log.file needs a restart: the one log_init opened */
    if (cfg != NULL && cfg->c_log_file != NULL)
        snprintf(lpath, sizeof(lpath), "%s", cfg->c_log_file);
    cfg_unref(cfg);
    int rc = log_reopen();
    if (rc < 0)
        snprintf(lerr, sizeof(lerr), "log file %s: reopen: %s", lpath, sl_strerror(rc));
    bool ok = r->qq_error[0] == '\0' && r->qq_result != NULL && rc >= 0;
    json_object_object_add(resp, "ok", json_object_new_boolean(ok));
    if (!ok) {
        char e[1024];
        snprintf(e, sizeof(e), "%s%s%s", r->qq_error, r->qq_error[0] && lerr[0] ? "; " : "", lerr);
        json_object_object_add(resp, "error", json_object_new_string(e));
    }
    json_object *acct = r->qq_result ? json_object_object_get(r->qq_result, "accounting") : NULL;
    if (acct != NULL)
        json_object_object_add(resp, "accounting", json_object_get(acct));
    if (rc >= 0)
        json_object_object_add(resp, "log",
                               json_object_new_string(lpath[0] ? "reopened" : "stderr"));
    if (ok)
        log_info("control: log files rotated");
    return resp;
}

/* ------------------------------------------------------------ operator commands */

/* An optional string argument: 0 absent (or null), 1 present (*out borrowed),
 * SL_EPARSE with err set when it is not a string or too long. */
static int arg_str(json_object *req, const char *key, size_t max, const char **out, char *err,
                   size_t errlen)
{
    json_object *v;
    *out = NULL;
    if (!json_object_object_get_ex(req, key, &v) || json_object_is_type(v, json_type_null))
        return 0;
    if (!json_object_is_type(v, json_type_string) || (size_t)json_object_get_string_len(v) > max) {
        snprintf(err, errlen, "\"%s\" must be a string of at most %zu bytes", key, max);
        return SL_EPARSE;
    }
    *out = json_object_get_string(v);
    return 1;
}

static bool arg_bool(json_object *req, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(req, key, &v) && json_object_get_boolean(v);
}

/* A duration: seconds as an integer or "30s" / "5m" / "2h" / "1d". 0 absent. */
static int arg_duration(json_object *req, const char *key, uint64_t *out, char *err, size_t errlen)
{
    json_object *v;
    *out = 0;
    if (!json_object_object_get_ex(req, key, &v) || json_object_is_type(v, json_type_null))
        return 0;
    if (json_object_is_type(v, json_type_int) && json_object_get_int64(v) > 0) {
        *out = (uint64_t)json_object_get_int64(v);
        return 1;
    }
    if (json_object_is_type(v, json_type_string) &&
        cfg_parse_duration(json_object_get_string(v), out) == 0 && *out > 0)
        return 1;
    snprintf(err, errlen, "\"%s\" must be a duration such as 90, \"30m\", \"2h\" or \"1d\"", key);
    return SL_EPARSE;
}

/* A recipient domain, lower-cased, without a trailing dot. Caller frees. */
static char *domain_norm(const char *s, char *err, size_t errlen)
{
    size_t n = strlen(s);
    if (n > 0 && s[n - 1] == '.')
        n--;
    if (n == 0 || n > 253 || s[0] == '@' || s[0] == '.') {
        snprintf(err, errlen, "invalid domain \"%.100s\"", s);
        return NULL;
    }
    char *d = xstrndup(s, n);
    for (char *p = d; *p; p++) {
        if ((unsigned char)*p <= ' ' || *p == '@' || *p == '/' || *p == '"') {
            snprintf(err, errlen, "invalid domain \"%.100s\"", s);
            free(d);
            return NULL;
        }
        *p = (char)tolower((unsigned char)*p);
    }
    return d;
}

static queue_req_t *admin_req_new(ctl_conn_t *c, queue_req_type_t type, char *err, size_t errlen)
{
    if (c->cc_ctl->ct_env.ce_queue == NULL) {
        snprintf(err, errlen, "the queue is not running");
        return NULL;
    }
    queue_req_t *r = xcalloc(1, sizeof(*r));
    r->qq_type = type;
    return r;
}

/* Send r (filled by the caller) to the queue thread; answered in reply_cb. */
static int admin_req_send(ctl_conn_t *c, queue_req_t *r)
{
    control_t *ct = c->cc_ctl;
    r->qq_reply = ct->ct_reply;
    r->qq_ctx = c;
    c->cc_refs++;
    c->cc_busy = true;
    ct->ct_refs++;
    ct->ct_pending++;
    queue_request(ct->ct_env.ce_queue, r);
    return CTL_ASYNC;
}

static void admin_req_free(queue_req_t *r)
{
    if (r == NULL)
        return;
    free(r->qq_domain);
    free(r->qq_job);
    free(r->qq_sender);
    free(r);
}

/* The target of suspend / resume / retry: "domain", "job" or "all":true
 * (exactly one; job only where allow_job). */
static int admin_target(queue_req_t *r, json_object *req, bool allow_job, const char *what,
                        char *err, size_t errlen)
{
    const char *dom, *job;
    int rc;
    if ((rc = arg_str(req, "domain", 255, &dom, err, errlen)) < 0 ||
        (rc = arg_str(req, "job", 200, &job, err, errlen)) < 0)
        return rc;
    bool all = arg_bool(req, "all");
    if ((dom != NULL) + (job != NULL) + all != 1 || (job != NULL && !allow_job)) {
        snprintf(err, errlen, "%s needs exactly one of \"domain\"%s or \"all\":true", what,
                 allow_job ? ", \"job\"" : "");
        return SL_EPARSE;
    }
    if (dom != NULL && (r->qq_domain = domain_norm(dom, err, errlen)) == NULL)
        return SL_EPARSE;
    if (job != NULL && job[0] == '\0') {
        snprintf(err, errlen, "\"job\" must not be empty");
        return SL_EPARSE;
    }
    r->qq_job = job ? xstrdup(job) : NULL;
    r->qq_all = all;
    return 0;
}

/* A request of this type aimed by admin_target(), or NULL with *rc set. */
static queue_req_t *admin_target_req(ctl_conn_t *c, queue_req_type_t type, json_object *req,
                                     bool allow_job, const char *what, int *rc, char *err,
                                     size_t errlen)
{
    queue_req_t *r = admin_req_new(c, type, err, errlen);
    if (r == NULL) {
        *rc = SL_EBUSY;
        return NULL;
    }
    if ((*rc = admin_target(r, req, allow_job, what, err, errlen)) < 0) {
        admin_req_free(r);
        return NULL;
    }
    return r;
}

static int cmd_queues(ctl_conn_t *c, json_object *req, json_object *resp, char *err, size_t errlen)
{
    size_t limit = 0;
    if (req_limit(req, &limit, err, errlen) != 0)
        return SL_EPARSE;
    queue_req_t *r = admin_req_new(c, QREQ_QUEUES, err, errlen);
    if (r == NULL)
        return SL_EBUSY;
    r->qq_limit = limit;
    return admin_req_send(c, r);
}

static int cmd_queue(ctl_conn_t *c, json_object *req, json_object *resp, char *err, size_t errlen)
{
    const char *dom;
    int rc = arg_str(req, "domain", 255, &dom, err, errlen);
    if (rc <= 0) {
        if (rc == 0)
            snprintf(err, errlen, "queue needs \"domain\"");
        return SL_EPARSE;
    }
    char *d = domain_norm(dom, err, errlen);
    if (d == NULL)
        return SL_EPARSE;
    queue_req_t *r = admin_req_new(c, QREQ_QUEUES, err, errlen);
    if (r == NULL) {
        free(d);
        return SL_EBUSY;
    }
    r->qq_domain = d;
    return admin_req_send(c, r);
}

/* suspend / resume of a provider or a virtual MTA: in the delivery's
 * traffic shaping, not the queue: *handled, and CTL_REPLY or an error; not
 * *handled when req names neither. */
static int shaping_suspend(ctl_conn_t *c, json_object *req, json_object *resp, bool resume,
                           bool *handled, char *err, size_t errlen)
{
    *handled = true;
    const char *pv, *vm;
    uint64_t dur = 0;
    int rc;
    if ((rc = arg_str(req, "provider", 255, &pv, err, errlen)) < 0 ||
        (rc = arg_str(req, "vmta", 255, &vm, err, errlen)) < 0 ||
        (!resume && (rc = arg_duration(req, "for", &dur, err, errlen)) < 0))
        return rc;
    if (pv == NULL && vm == NULL) {
        *handled = false;
        return 0;
    }
    const char *what = resume ? "resume" : "suspend";
    if ((pv != NULL) + (vm != NULL) != 1 || json_object_object_get_ex(req, "domain", NULL) ||
        json_object_object_get_ex(req, "job", NULL) || arg_bool(req, "all")) {
        snprintf(err, errlen, "%s needs exactly one of \"provider\" or \"vmta\"", what);
        return SL_EPARSE;
    }
    if ((pv != NULL && pv[0] == '\0') || (vm != NULL && vm[0] == '\0')) {
        snprintf(err, errlen, "%s: the name must not be empty", what);
        return SL_EPARSE;
    }
#ifdef SLUICE_HAVE_DELIVERY
    struct dlv *dlv = c->cc_ctl->ct_env.ce_dlv;
    if (dlv != NULL) {
        if ((rc = dlv_shaping_suspend(dlv, pv, vm, dur, resume, err, errlen)) != 0)
            return rc;
        log_info("control: %s %s=%s%s", what, pv ? "provider" : "vmta", pv ? pv : vm,
                 dur ? " (with a duration)" : "");
        /* both keys always there, the one not named null (docs/records.md) */
        json_object_object_add(resp, "provider", pv ? json_object_new_string(pv) : NULL);
        json_object_object_add(resp, "vmta", vm ? json_object_new_string(vm) : NULL);
        json_object_object_add(resp, resume ? "resumed" : "suspended", json_object_new_boolean(1));
        if (!resume) /* seconds; null: until resumed */
            json_object_object_add(resp, "for", dur ? json_object_new_int64((int64_t)dur) : NULL);
        return CTL_REPLY;
    }
#endif
    UNUSED(c);
    snprintf(err, errlen, "delivery is not running");
    return SL_ENOTFOUND;
}

static int cmd_suspend(ctl_conn_t *c, json_object *req, json_object *resp, char *err, size_t errlen)
{
    uint64_t dur;
    int rc;
    bool handled;
    if ((rc = shaping_suspend(c, req, resp, false, &handled, err, errlen)) < 0 || handled)
        return rc;
    queue_req_t *r = admin_target_req(c, QREQ_SUSPEND, req, true, "suspend", &rc, err, errlen);
    if (r == NULL)
        return rc;
    if ((rc = arg_duration(req, "for", &dur, err, errlen)) < 0) {
        admin_req_free(r);
        return rc;
    }
    r->qq_until = dur ? clock_now_s() + dur : 0;
    return admin_req_send(c, r);
}

/* resume of a domain or job that holds nothing: refused with qq_error set
 * (exit 1 in sluicectl), as a provider's or a virtual MTA's resume is, so
 * that a misspelt name never passes for a resumed one. resume --all is
 * "make sure nothing is held": fine with nothing held. */
static bool resume_missed(queue_req_t *r)
{
    if (r->qq_type != QREQ_RESUME || r->qq_all || r->qq_error[0] != '\0' || r->qq_result == NULL)
        return false;
    json_object *n = json_object_object_get(r->qq_result, "resumed");
    if (n == NULL || json_object_get_int64(n) > 0)
        return false;
    snprintf(r->qq_error, sizeof(r->qq_error), "%s \"%.200s\" is not suspended",
             r->qq_domain ? "domain" : "job", r->qq_domain ? r->qq_domain : r->qq_job);
    return true;
}

static int cmd_resume(ctl_conn_t *c, json_object *req, json_object *resp, char *err, size_t errlen)
{
    bool handled;
    int src = shaping_suspend(c, req, resp, true, &handled, err, errlen);
    if (src < 0 || handled)
        return src;
    int rc;
    queue_req_t *r = admin_target_req(c, QREQ_RESUME, req, true, "resume", &rc, err, errlen);
    return r ? admin_req_send(c, r) : rc;
}

static int cmd_suspended(ctl_conn_t *c, json_object *req, json_object *resp, char *err,
                         size_t errlen)
{
    queue_req_t *r = admin_req_new(c, QREQ_HOLDS, err, errlen);
    return r ? admin_req_send(c, r) : SL_EBUSY;
}

static int cmd_retry(ctl_conn_t *c, json_object *req, json_object *resp, char *err, size_t errlen)
{
    int rc;
    queue_req_t *r = admin_target_req(c, QREQ_RETRY, req, false, "retry", &rc, err, errlen);
    return r ? admin_req_send(c, r) : rc;
}

static int cmd_bounce(ctl_conn_t *c, json_object *req, json_object *resp, char *err, size_t errlen)
{
    const char *dom, *job, *sender;
    uint64_t older;
    int rc;
    if ((rc = arg_str(req, "domain", 255, &dom, err, errlen)) < 0 ||
        (rc = arg_str(req, "job", 200, &job, err, errlen)) < 0 ||
        (rc = arg_str(req, "sender", 320, &sender, err, errlen)) < 0 ||
        (rc = arg_duration(req, "older_than", &older, err, errlen)) < 0)
        return rc;
    if (dom == NULL && job == NULL && sender == NULL && older == 0 && !arg_bool(req, "yes")) {
        snprintf(err, errlen,
                 "bounce without a filter (domain, job, sender, older_than) removes every "
                 "recipient in the queue: confirm with \"yes\":true (sluicectl bounce --yes)");
        return SL_EPARSE;
    }
    queue_req_t *r = admin_req_new(c, QREQ_BOUNCE, err, errlen);
    if (r == NULL)
        return SL_EBUSY;
    if (dom != NULL && (r->qq_domain = domain_norm(dom, err, errlen)) == NULL) {
        admin_req_free(r);
        return SL_EPARSE;
    }
    r->qq_job = job ? xstrdup(job) : NULL;
    /* "<>" names the null sender */
    r->qq_sender = sender ? xstrdup(strcmp(sender, "<>") == 0 ? "" : sender) : NULL;
    r->qq_older_than = older;
    log_info("control: bounce requested domain=%s job=%s sender=%s older_than=%llu",
             r->qq_domain ? r->qq_domain : "*", job ? job : "*", sender ? sender : "*",
             (unsigned long long)older);
    return admin_req_send(c, r);
}

/* "format": "prometheus" (text 0.0.4, the default) or "openmetrics". */
static int cmd_metrics(ctl_conn_t *c, json_object *req, json_object *resp, char *err, size_t errlen)
{
    const char *fmt;
    if (arg_str(req, "format", 32, &fmt, err, errlen) < 0)
        return SL_EPARSE;
    if (fmt != NULL && strcmp(fmt, "prometheus") != 0 && strcmp(fmt, "openmetrics") != 0) {
        snprintf(err, errlen, "\"format\" must be \"prometheus\" or \"openmetrics\"");
        return SL_EPARSE;
    }
    buf_t b;
    buf_init(&b, 8192);
    metrics_render(&c->cc_ctl->ct_env, &b, fmt != NULL && strcmp(fmt, "openmetrics") == 0);
    json_object_object_add(resp, "metrics", json_object_new_string_len(b.b_data, (int)b.b_len));
    buf_free(&b);
    return CTL_REPLY;
}

static int cmd_reload(ctl_conn_t *c, json_object *req, json_object *resp, char *err, size_t errlen)
{
    return srv_reload(c->cc_ctl, resp, err, errlen); /* control_reload, systemd told */
}

/* ------------------------------------------------------------ reload */

typedef enum { D_INT, D_U64, D_BOOL, D_STR } diff_kind_t;

/* Keys compared field by field. live: takes effect at once (reception
 * reads its snapshot per session; log.level is one global); the others
 * are read at start-up by a module that keeps its own snapshot, so a
 * change there needs a restart (and the old value stays in force). */
static const struct diff_key {
    const char *dk_name;
    size_t dk_off;
    diff_kind_t dk_kind;
    bool dk_live;
} diff_keys[] = {
#define DK(n, f, k, live)                                                                          \
    {                                                                                              \
        n, offsetof(cfg_t, f), k, live                                                             \
    }
    DK("hostname", c_hostname, D_STR, false),
    DK("log.level", c_log_level, D_INT, true),
    DK("log.file", c_log_file, D_STR, false),
    DK("log.accounting_dir", c_acct_dir, D_STR, false),
    DK("log.accounting_max_size", c_acct_max_size, D_U64, false),
    DK("spool.path", c_spool_path, D_STR, false),
    DK("spool.sync", c_spool_sync, D_INT, false),
    DK("spool.map_size", c_spool_map_size, D_U64, false),
    DK("spool.max_size", c_spool_max_size, D_U64, false),
    DK("spool.high_water", c_spool_high_water, D_INT, true),
    DK("spool.commit_batch", c_spool_batch, D_INT, true),
    DK("control.socket", c_ctl_socket, D_STR, false),
    DK("control.mode", c_ctl_mode, D_INT, false),
    DK("control.http_metrics", c_ctl_http, D_STR, false),
    DK("smtp.threads", c_smtp_threads, D_INT, false),
    DK("smtp.max_message_size", c_smtp_max_message_size, D_U64, true),
    DK("smtp.max_recipients", c_smtp_max_recipients, D_INT, true),
    DK("smtp.max_line_length", c_smtp_max_line, D_INT, true),
    DK("smtp.max_connections", c_smtp_max_connections, D_INT, true),
    DK("smtp.max_connections_per_ip", c_smtp_max_conn_per_ip, D_INT, true),
    DK("smtp.max_commands_before_mail", c_smtp_max_commands_before_mail, D_INT, true),
    DK("smtp.max_errors", c_smtp_max_errors, D_INT, true),
    DK("smtp.idle_timeout", c_smtp_idle_timeout, D_U64, true),
    DK("smtp.data_timeout", c_smtp_data_timeout, D_U64, true),
    DK("smtp.max_pending", c_smtp_max_pending, D_INT, true),
    DK("smtp.max_memory", c_smtp_max_memory, D_U64, true),
    DK("smtp.bare_newline", c_smtp_bare_newline, D_INT, true),
    DK("smtp.tls.cert", c_tls_cert, D_STR, false),
    DK("smtp.tls.key", c_tls_key, D_STR, false),
    DK("smtp.tls.generate", c_tls_generate, D_BOOL, false),
    DK("smtp.auth.plaintext_loopback", c_auth_plaintext_loopback, D_BOOL, true),
    DK("smtp.auth.fail_delay", c_auth_fail_delay, D_U64, true),
    DK("smtp.auth.lockout_failures", c_auth_lockout_failures, D_INT, true),
    DK("smtp.auth.lockout_window", c_auth_lockout_window, D_U64, true),
    DK("smtp.auth.lockout_time", c_auth_lockout_time, D_U64, true),
    DK("queue.retry_initial", c_retry_initial, D_U64, true),
    DK("queue.retry_max", c_retry_max, D_U64, true),
    DK("queue.retry_jitter", c_retry_jitter, D_INT, true),
    DK("queue.max_age", c_max_age, D_U64, true),
    DK("queue.dsn", c_dsn, D_BOOL, true),
    DK("queue.active_window", c_active_window, D_INT, true),
    DK("queue.active_total", c_active_total, D_INT, true),
    DK("queue.active_size", c_active_size, D_U64, true),
    DK("queue.scan_interval", c_scan_interval_ms, D_U64, true),
    DK("delivery.threads", c_dlv_threads, D_INT, false),
    DK("delivery.port", c_dlv_port, D_INT, true),
    DK("delivery.resolvers", c_dlv_resolvers, D_STR, false),
    DK("delivery.smarthost", c_dlv_smarthost, D_STR, true),
    DK("delivery.tls", c_dlv_tls_default, D_INT, true),
    DK("delivery.ca_file", c_dlv_ca_file, D_STR, false),
    DK("delivery.helo_name", c_dlv_helo, D_STR, false),
    DK("delivery.max_rcpt_per_transaction", c_dlv_max_rcpt_per_txn, D_INT, true),
    DK("delivery.max_connections_per_destination", c_dlv_max_conn_per_dest, D_INT, true),
    DK("delivery.max_messages_per_connection", c_dlv_max_msgs_per_conn, D_INT, true),
    DK("delivery.connection_reuse_time", c_dlv_conn_reuse_time, D_U64, true),
    DK("delivery.idle_time", c_dlv_idle_time, D_U64, true),
    DK("delivery.dns_cache_max_ttl", c_dlv_dns_cache_max, D_U64, true),
    DK("delivery.dead_after_failures", c_dlv_dead_after, D_INT, true),
    DK("delivery.dead_time", c_dlv_dead_time, D_U64, true),
    DK("delivery.mta_sts", c_dlv_mta_sts, D_BOOL, false),
    DK("delivery.mta_sts_port", c_dlv_mta_sts_port, D_INT, false),
    DK("delivery.connect_timeout", c_to_connect, D_U64, true),
    DK("delivery.greeting_timeout", c_to_greeting, D_U64, true),
    DK("delivery.ehlo_timeout", c_to_ehlo, D_U64, true),
    DK("delivery.starttls_timeout", c_to_starttls, D_U64, true),
    DK("delivery.mail_timeout", c_to_mail, D_U64, true),
    DK("delivery.rcpt_timeout", c_to_rcpt, D_U64, true),
    DK("delivery.data_timeout", c_to_data, D_U64, true),
    DK("delivery.data_block_timeout", c_to_data_block, D_U64, true),
    DK("delivery.data_done_timeout", c_to_data_done, D_U64, true),
    DK("delivery.quit_timeout", c_to_quit, D_U64, true),
#undef DK
};

static bool diff_field(const cfg_t *a, const cfg_t *b, const struct diff_key *k)
{
    const char *pa = (const char *)a + k->dk_off, *pb = (const char *)b + k->dk_off;
    switch (k->dk_kind) {
    case D_INT:
        return *(const int *)pa != *(const int *)pb;
    case D_U64:
        return *(const uint64_t *)pa != *(const uint64_t *)pb;
    case D_BOOL:
        return *(const bool *)pa != *(const bool *)pb;
    case D_STR: {
        const char *sa = *(char *const *)pa, *sb = *(char *const *)pb;
        return strcmp(sa ? sa : "", sb ? sb : "") != 0;
    }
    }
    return false;
}

static void diff_add(json_object *arr, buf_t *log, const char *name)
{
    json_object_array_add(arr, json_object_new_string(name));
    buf_printf(log, "%s%s", log->b_len ? "," : "", name);
}

/* Keys whose change needs a restart keep their old value in the new
 * snapshot where reception could read them (it gets the snapshot). */
static void keep_old(cfg_t *nc, const cfg_t *old)
{
    nc->c_smtp_nlisten = old->c_smtp_nlisten;
    memcpy(nc->c_smtp_listen, old->c_smtp_listen, sizeof(nc->c_smtp_listen));
    nc->c_smtp_threads = old->c_smtp_threads;
    nc->c_tls_generate = old->c_tls_generate;
    /* the queue reads these from its config at run time */
    nc->c_spool_sync = old->c_spool_sync;
    nc->c_spool_map_size = old->c_spool_map_size;
    nc->c_spool_max_size = old->c_spool_max_size;
    nc->c_acct_max_size = old->c_acct_max_size;
    /* and these the delivery threads set up at start */
    nc->c_dlv_threads = old->c_dlv_threads;
    nc->c_dlv_mta_sts = old->c_dlv_mta_sts;
    nc->c_dlv_mta_sts_port = old->c_dlv_mta_sts_port;
    char **strs[][2] = {{&nc->c_tls_cert, (char **)&old->c_tls_cert},
                        {&nc->c_tls_key, (char **)&old->c_tls_key},
                        {&nc->c_hostname, (char **)&old->c_hostname},
                        {&nc->c_spool_path, (char **)&old->c_spool_path},
                        {&nc->c_acct_dir, (char **)&old->c_acct_dir},
                        {&nc->c_dlv_resolvers, (char **)&old->c_dlv_resolvers},
                        {&nc->c_dlv_ca_file, (char **)&old->c_dlv_ca_file},
                        {&nc->c_dlv_helo, (char **)&old->c_dlv_helo}};
    for (size_t i = 0; i < ARRAY_SIZE(strs); i++) {
        free(*strs[i][0]);
        *strs[i][0] = *strs[i][1] ? xstrdup(*strs[i][1]) : NULL;
    }
}

int control_reload(control_t *ct, json_object *resp, char *err, size_t errlen)
{
    char lerr[1024];
    cfg_t *old = cfg_current(), *nc = NULL;
    if (old == NULL) {
        snprintf(err, errlen, "reload: no configuration in force");
        return SL_ECONFIG;
    }
    const char *file = old->c_file;
    int rc = strcmp(file, "(default)") == 0 ? cfg_default(&nc, lerr, sizeof(lerr))
                                            : cfg_load(file, &nc, lerr, sizeof(lerr));
    if (rc != 0) {
        snprintf(err, errlen, "reload refused, the running configuration is unchanged: %s", lerr);
        log_warn("%s", err);
        cfg_unref(old);
        return SL_ECONFIG;
    }
#ifdef SLUICE_HAVE_DELIVERY
    /* traffic shaping and bounce rules: checked before anything changes */
    struct dlv *dlv = ct->ct_env.ce_dlv;
    if (dlv != NULL && (dlv_shaping_check(nc->c_dlv_shaping, lerr, sizeof(lerr)) != 0 ||
                        dlv_rules_install(nc, lerr, sizeof(lerr)) != 0)) {
        snprintf(err, errlen, "reload refused, the running configuration is unchanged: %s", lerr);
        log_warn("%s", err);
        cfg_unref(nc);
        cfg_unref(old);
        return SL_ECONFIG;
    }
#endif
    json_object *applied = json_object_new_array(), *restart = json_object_new_array();
    buf_t la, lr;
    buf_init(&la, 256);
    buf_init(&lr, 256);
    for (size_t i = 0; i < ARRAY_SIZE(diff_keys); i++)
        if (diff_field(old, nc, &diff_keys[i]))
            diff_add(diff_keys[i].dk_live ? applied : restart, diff_keys[i].dk_live ? &la : &lr,
                     diff_keys[i].dk_name);
    /* lists and sections */
    if (old->c_smtp_nlisten != nc->c_smtp_nlisten ||
        memcmp(old->c_smtp_listen, nc->c_smtp_listen,
               (size_t)nc->c_smtp_nlisten * sizeof(nc->c_smtp_listen[0])) != 0)
        diff_add(restart, &lr, "smtp.listen");
    if (old->c_smtp_nrelay != nc->c_smtp_nrelay ||
        memcmp(old->c_smtp_relay, nc->c_smtp_relay,
               (size_t)nc->c_smtp_nrelay * sizeof(nc->c_smtp_relay[0])) != 0)
        diff_add(applied, &la, "smtp.relay_networks");
    bool users = old->c_nusers != nc->c_nusers;
    for (int i = 0; !users && i < nc->c_nusers; i++)
        users = strcmp(old->c_users[i].cu_name, nc->c_users[i].cu_name) != 0 ||
                strcmp(old->c_users[i].cu_hash, nc->c_users[i].cu_hash) != 0;
    if (users)
        diff_add(applied, &la, "smtp.auth.users");
    if (old->c_retry_n != nc->c_retry_n ||
        memcmp(old->c_retry, nc->c_retry, (size_t)nc->c_retry_n * sizeof(nc->c_retry[0])) != 0)
        diff_add(applied, &la, "queue.retry");
    bool routes = old->c_dlv_nroutes != nc->c_dlv_nroutes;
    for (int i = 0; !routes && i < nc->c_dlv_nroutes; i++) {
        const struct cfg_route *x = &old->c_dlv_routes[i], *y = &nc->c_dlv_routes[i];
        routes = strcmp(x->r_domain, y->r_domain) != 0 || x->r_port != y->r_port ||
                 strcmp(x->r_host ? x->r_host : "", y->r_host ? y->r_host : "") != 0;
    }
    if (routes)
        diff_add(applied, &la, "delivery.routes");
    bool tls = old->c_dlv_ntls != nc->c_dlv_ntls;
    for (int i = 0; !tls && i < nc->c_dlv_ntls; i++)
        tls = strcmp(old->c_dlv_tls[i].tp_domain, nc->c_dlv_tls[i].tp_domain) != 0 ||
              old->c_dlv_tls[i].tp_policy != nc->c_dlv_tls[i].tp_policy;
    if (tls)
        diff_add(applied, &la, "delivery.tls_policy");
    /* delivery threads: destinations resolve their route again */
    bool reroute = routes || tls || old->c_dlv_port != nc->c_dlv_port ||
                   old->c_dlv_tls_default != nc->c_dlv_tls_default ||
                   strcmp(old->c_dlv_smarthost ? old->c_dlv_smarthost : "",
                          nc->c_dlv_smarthost ? nc->c_dlv_smarthost : "") != 0;

#ifdef SLUICE_HAVE_DELIVERY
    if (dlv != NULL) { /* the files are read again even when their names did not change */
        bool vm = false;
        if (dlv_shaping_reload(dlv, nc->c_dlv_shaping, &vm, lerr, sizeof(lerr)) != 0)
            log_warn("reload: shaping: %s", lerr); /* changed since the check: old one kept */
        diff_add(applied, &la, "delivery.shaping");
        diff_add(applied, &la, "delivery.bounce_rules");
        if (vm)
            diff_add(restart, &lr, "delivery.shaping virtual_mtas/pools");
    }
#endif
    keep_old(nc, old);
    if (nc->c_log_level != old->c_log_level)
        __atomic_store_n(&log_level_current, (int)nc->c_log_level, __ATOMIC_RELAXED);
    if (ct->ct_env.ce_smtp != NULL)
        smtp_server_set_config(ct->ct_env.ce_smtp, nc);
    if (ct->ct_env.ce_queue != NULL)
        queue_set_config(ct->ct_env.ce_queue, nc);
    (void)reroute;
#ifdef SLUICE_HAVE_DELIVERY
    if (dlv != NULL)
        dlv_set_config(dlv, nc, reroute);
#endif
    log_info("config reloaded from %s: applied=[%.*s] needs_restart=[%.*s]", file, (int)la.b_len,
             la.b_data, (int)lr.b_len, lr.b_data);
    if (resp != NULL) {
        json_object_object_add(resp, "file", json_object_new_string(file));
        json_object_object_add(resp, "applied", applied);
        json_object_object_add(resp, "needs_restart", restart);
    } else {
        json_object_put(applied);
        json_object_put(restart);
    }
    buf_free(&la);
    buf_free(&lr);
    cfg_set_current(nc); /* takes over our reference */
    cfg_unref(old);
    return CTL_REPLY;
}

/* Traffic shaping state: providers, their queues (provider, virtual MTA)
 * with mode, rate and connections, and the virtual MTAs. */
static int cmd_providers(ctl_conn_t *c, json_object *req, json_object *resp, char *err,
                         size_t errlen)
{
    UNUSED(req);
#ifdef SLUICE_HAVE_DELIVERY
    void *dlv = c->cc_ctl->ct_env.ce_dlv;
    if (dlv != NULL) {
        json_object *o = dlv_shaping_json(dlv);
        json_object_object_foreach(o, key, val)
        {
            json_object_object_add(resp, key, json_object_get(val));
        }
        json_object_put(o);
        return CTL_REPLY;
    }
#endif
    UNUSED(c);
    snprintf(err, errlen, "delivery is not running");
    return -1;
}
