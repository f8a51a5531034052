/*
 * core/server/control.c - the control socket: JSON lines over a Unix stream
 * socket.
 *
 * control_start() binds cfg->c_ctl_socket (owner-only by default), replacing
 * a stale socket file but never a live daemon's, and serves any number of
 * clients on the main loop. Each line is one request {"cmd":"...", ...};
 * each gets one response line {"ok":true,...} or {"ok":false,"error":...}.
 * The handlers are commands.c's (ctl_cmd_find); reload is reload.c's.
 *
 * Commands that need the queue thread (list, inspect, check, log-rotate,
 * and the operator's queue commands) come back from their handler as a
 * queue_req_t, which is sent here and answered when it comes back on
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
#include "core/server/control_int.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
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
    chan_t *ct_http_reply; /* queue requests of the HTTP admin API come back here */
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
static void queue_req_send(ctl_conn_t *c, queue_req_t *r);
static void http_reply_cb(chan_t *ch, chan_node_t *first, void *arg);

/* ------------------------------------------------------------ helpers */

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
    SL_ASSERT_MAIN_THREAD();
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
    ct->ct_refs = 1; /* the listener */
    if (uv_pipe_init(env->ce_loop, &ct->ct_server, 0) != 0 || uv_pipe_open(&ct->ct_server, fd) != 0)
        abort(); /* only fails on a bad fd or loop: a bug */
    ct->ct_server.data = ct;
    ct->ct_reply = chan_new(env->ce_loop, reply_cb, ct);
    ct->ct_http_reply = chan_new(env->ce_loop, http_reply_cb, ct);
    /* Already listening: uv_listen only starts watching the fd. */
    if (uv_listen((uv_stream_t *)&ct->ct_server, 64, accept_cb) != 0)
        abort();
    log_info("control socket listening path=%s mode=%04o", path, (unsigned)mode);
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
    SL_ASSERT_MAIN_THREAD();
    if (ct->ct_stopping)
        return;
    ct->ct_stopping = true;
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
    /* The same for the HTTP admin API's answers, which go to the HTTP
     * thread: main.c stops it (httpd_stop) right after this. */
    chan_close(ct->ct_http_reply);
    ct->ct_http_reply = NULL;
    SL_ASSERT(ct->ct_pending == 0 && "control_stop() before queue_stop() with a request in flight");
    for (ctl_conn_t *c = ct->ct_conns; c != NULL; c = c->cc_next)
        conn_close(c);
    ctl_unref(ct);
}

static void ctl_unref(control_t *ct)
{
    SL_ASSERT(ct->ct_refs > 0);
    if (--ct->ct_refs > 0)
        return;
    chan_close(ct->ct_reply); /* NULL after control_stop */
    chan_close(ct->ct_http_reply);
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
    SL_ASSERT_MAIN_THREAD();
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
    SL_ASSERT_MAIN_THREAD();
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
    SL_ASSERT(c->cc_refs > 0);
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
    SL_ASSERT_MAIN_THREAD();
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
    ctl_handler_fn fn = ctl_cmd_find(cmd);
    if (fn == NULL) {
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
    log_debug("control: cmd=%s", cmd);
    json_object *resp = json_object_new_object();
    json_object_object_add(resp, "ok", json_object_new_boolean(1));
    err[0] = '\0';
    control_t *ct = c->cc_ctl;
    ctl_ctx_t x = {.cx_env = &ct->ct_env, .cx_hostname = ct->ct_hostname};
    queue_req_t *qr = NULL;
    int rc = fn(&x, req, resp, &qr, err, sizeof(err));
    if (rc < 0)
        conn_send_error(c, err[0] ? err : sl_strerror(rc));
    else if (rc == CTL_ASYNC)
        queue_req_send(c, qr);
    else
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

/* Send r (a handler's CTL_ASYNC) to the queue thread; reply_cb answers. */
static void queue_req_send(ctl_conn_t *c, queue_req_t *r)
{
    control_t *ct = c->cc_ctl;
    r->qq_reply = ct->ct_reply;
    r->qq_ctx = c;
    c->cc_refs++;
    c->cc_busy = true;
    ct->ct_refs++;
    ct->ct_pending++;
    queue_request(ct->ct_env.ce_queue, r);
}

static void reply_cb(chan_t *ch, chan_node_t *first, void *arg)
{
    SL_ASSERT_MAIN_THREAD();
    control_t *ct = arg;
    ct->ct_refs++; /* stay alive through the walk */
    for (chan_node_t *n = first, *next; n != NULL; n = next) {
        next = n->cn_next;
        queue_req_t *r = (queue_req_t *)n;
        ctl_conn_t *c = r->qq_ctx;
        c->cc_busy = false;
        if (!c->cc_closing) {
            json_object *resp = ctl_queue_answer(&ct->ct_env, r);
            conn_send(c, resp, false);
            json_object_put(resp);
            if (!ct->ct_stopping)
                conn_process(c); /* lines that arrived meanwhile */
        }
        ctl_queue_req_free(r);
        ct->ct_pending--;
        conn_unref(c);
        ctl_unref(ct);
    }
    ctl_unref(ct);
}

/* ------------------------------------------------------------ HTTP admin API */

/* A queue request of the HTTP admin API: who gets the answer. */
typedef struct ctl_http_wait {
    control_done_fn hw_done;
    void *hw_arg;
} ctl_http_wait_t;

static void http_done_error(control_done_fn done, void *arg, const char *msg)
{
    json_object *e = json_object_new_object();
    json_object_object_add(e, "ok", json_object_new_boolean(0));
    json_object_object_add(e, "error", json_object_new_string(msg));
    done(arg, e);
    json_object_put(e);
}

void control_call(control_t *ct, json_object *req, control_done_fn done, void *arg)
{
    SL_ASSERT_MAIN_THREAD();
    json_object *c = NULL;
    const char *cmd = json_object_object_get_ex(req, "cmd", &c) ? json_object_get_string(c) : "";
    ctl_handler_fn fn = ctl_cmd_find(cmd ? cmd : "");
    if (ct->ct_stopping || fn == NULL) {
        http_done_error(done, arg, ct->ct_stopping ? "shutting down" : "unknown command");
        return;
    }
    log_debug("control: http cmd=%s", cmd);
    json_object *resp = json_object_new_object();
    json_object_object_add(resp, "ok", json_object_new_boolean(1));
    char err[512] = "";
    ctl_ctx_t x = {.cx_env = &ct->ct_env, .cx_hostname = ct->ct_hostname};
    queue_req_t *qr = NULL;
    int rc = fn(&x, req, resp, &qr, err, sizeof(err));
    if (rc < 0) {
        http_done_error(done, arg, err[0] ? err : sl_strerror(rc));
    } else if (rc == CTL_ASYNC) {
        ctl_http_wait_t *w = xcalloc(1, sizeof(*w));
        w->hw_done = done;
        w->hw_arg = arg;
        qr->qq_reply = ct->ct_http_reply;
        qr->qq_ctx = w;
        ct->ct_refs++;
        ct->ct_pending++;
        queue_request(ct->ct_env.ce_queue, qr);
    } else {
        done(arg, resp);
        if (rc == CTL_REPLY_SHUTDOWN)
            ctl_call_shutdown(ct);
    }
    json_object_put(resp);
}

static void http_reply_cb(chan_t *ch, chan_node_t *first, void *arg)
{
    SL_ASSERT_MAIN_THREAD();
    control_t *ct = arg;
    ct->ct_refs++; /* stay alive through the walk */
    for (chan_node_t *n = first, *next; n != NULL; n = next) {
        next = n->cn_next;
        queue_req_t *r = (queue_req_t *)n;
        ctl_http_wait_t *w = r->qq_ctx;
        json_object *resp = ctl_queue_answer(&ct->ct_env, r);
        w->hw_done(w->hw_arg, resp);
        json_object_put(resp);
        free(w);
        ctl_queue_req_free(r);
        ct->ct_pending--;
        ctl_unref(ct);
    }
    ctl_unref(ct);
}

/* ------------------------------------------------------------ reload */

int control_reload(control_t *ct, json_object *resp, char *err, size_t errlen)
{
    SL_ASSERT_MAIN_THREAD();
    return ctl_reload(&ct->ct_env, resp, err, errlen);
}
