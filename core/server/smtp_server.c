/*
 * smtp_server.c - SMTP reception (RFC 5321 ESMTP, RFC 2920 PIPELINING,
 * RFC 3207 STARTTLS, RFC 4954 AUTH, RFC 3461 DSN parameters).
 *
 * c_smtp_threads reception threads each run one libuv loop with their own
 * listening sockets (SO_REUSEPORT when there are several threads, so the
 * kernel spreads connections). A session reads everything available,
 * processes the commands in order and batches the replies into one write.
 * After the final dot the message goes to the queue thread (queue_submit);
 * the session stops reading until the message comes back on this thread's
 * channel, then answers 250 (committed and durable) or 4xx.
 *
 * Main functions: smtp_server_new/start/stop/free/stats/set_config.
 *
 * Ownership: a session (sess_t) is created on accept and freed when both
 * of its handles are closed AND no message of it is in the queue
 * (se_pending). Its buffers are freed with it. Listeners, the stop async,
 * the grace timer and the reply channel belong to the thread's loop.
 *
 * Thread: smtp_server_* on the main thread; everything else on the
 * reception thread that owns the session. Shared across threads: the
 * stats (atomics), the config pointer (mutex, read once per connection)
 * and the tables in smtp_auth.c.
 *
 * Choices worth knowing:
 * - Only <CR><LF>.<CR><LF> ends DATA (RFC 5321 §4.1.1.4; the 2023 SMTP
 *   smuggling advisories). A bare LF or a bare CR in the message is refused
 *   (smtp.bare_newline = reject: "550 5.5.2" at the end of DATA, or "521
 *   5.5.2" and a close when the client ends DATA with <LF>.<LF>,
 *   <LF>.<CR><LF> or <CR><LF>.<LF>), or made a CRLF line end (normalize),
 *   as Postfix's smtpd_forbid_bare_newline does. The spool only ever holds
 *   CRLF lines. BDAT (CHUNKING) is not offered.
 * - A DATA line longer than c_smtp_max_line (CRLF included) rejects the
 *   message after the final dot with "500 5.5.2 Line too long"; the rest is
 *   read and dropped so the session stays in sync. Same for size
 *   (552 5.3.4) and NUL bytes (554 5.6.0).
 * - 8-bit bytes without BODY=8BITMIME are accepted (as Postfix does) and
 *   noted in the message's log line ("8bit=undeclared").
 * - Command lines (AUTH responses included) are limited to 512 octets; a
 *   NUL in one is refused (500 5.5.2). HELO names, ENVID and ORCPT are
 *   checked (core/base/smtp.c) before they can reach a header, a DSN or
 *   the next hop; ENVID and ORCPT are stored as received (xtext).
 * - A client must read its replies: past OUT_HIGH bytes of unsent replies
 *   the session stops reading (and processing) until they drain.
 * - Commands that make no progress (EHLO/HELO, NOOP, RSET, VRFY, EXPN,
 *   HELP, unknown) count towards smtp.max_commands_before_mail until a
 *   message is accepted, and do not restart the idle timer.
 * - Connections past the cap main.c derives from the open files limit
 *   (smtp_server_set_conn_cap) get 421 4.3.2 and are closed at once.
 * - Peer text in log lines goes through log_esc().
 */
#include "core/server/server_int.h"
#include "core/server/smtp_int.h"
#include "core/server/inbound_int.h"
#include "core/server/suppress_int.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SMTP_LINE_MAX 512        /* RFC 5321 §4.5.3.1.4, with CRLF */
#define READ_BUF_SIZE 65536      /* per thread, reused by every read */
#define BODY_KEEP_MAX (1u << 20) /* recycle body buffers up to this size */
#define BODY_INITIAL 8192
#define HDR_END_ROOM 512    /* Message-ID and Date that hdr_end may add */
#define OUT_HIGH 65536      /* unsent reply bytes that pause a session's input */
#define OUT_LOW 16384       /* ... and that let it go on */
#define IN_COMMIT_MAX 65536 /* input held while a commit runs (sess_read_update) */

typedef enum {
    SST_INIT = 0,   /* greeted, waiting for EHLO/HELO */
    SST_READY,      /* EHLO/HELO seen, no transaction */
    SST_MAIL,       /* MAIL accepted, no recipient yet */
    SST_RCPT,       /* at least one recipient */
    SST_DATA,       /* reading the message after 354 */
    SST_COMMIT,     /* message in the queue, reading paused */
    SST_AUTH,       /* waiting for an AUTH continuation line */
    SST_AUTH_DELAY, /* failed AUTH, 535 after c_auth_fail_delay */
    SST_TLS,        /* TLS handshake after STARTTLS */
    SST_CLOSING,
} sess_state_t;

static const char *const sess_state_names[] = {
    "init", "ready", "mail", "rcpt", "data", "commit", "auth", "auth-delay", "tls", "closing",
};

enum { AUTH_MECH_PLAIN = 1, AUTH_MECH_LOGIN };

typedef struct smtp_thread smtp_thread_t;

/* Debug builds check that reception-thread code runs on the thread that
 * owns the loop (t_self): at every libuv callback, where that code starts. */
#define SMTP_ASSERT_ON_LOOP(t) SL_ASSERT_ON_THREAD((t)->t_self)

typedef struct sess {
    uv_tcp_t se_tcp;
    uv_timer_t se_timer;
    uv_shutdown_t se_shutdown;
    smtp_thread_t *se_thr;
    cfg_t *se_cfg;
    struct sess *se_prev, *se_next;

    sess_state_t se_state;
    int se_handles;   /* open libuv handles (tcp, timer) */
    bool se_pending;  /* a message of ours is in the queue */
    bool se_closing;  /* handles are being closed */
    bool se_shutting; /* graceful close in progress */
    bool se_counted;  /* counted in ss_conn_current */
    bool se_counted_ip;
    bool se_stop_after; /* server stopping: 421 after this transaction */
    bool se_relay_ok;
    bool se_loopback;
    bool se_esmtp;
    bool se_skip_line; /* dropping the rest of an over-long command line */
    bool se_delay;     /* se_timer runs the AUTH failure delay */
    bool se_grace;     /* the idle timer was extended once for input not yet read */
    bool se_wpaused;   /* not reading: too many replies not yet written (OUT_HIGH) */
    bool se_reading;   /* uv_read_start is in force */
    uint64_t se_last;  /* uv_now() of the last input */
    uint64_t se_start_us;
    int se_nmsgs;
    int se_errors;
    int se_nontx; /* commands without progress since the last accepted message */
    char se_ip[48];
    char se_helo[256];
    char *se_auth_user;
    int se_auth_mech;
    int se_auth_step;
    char *se_auth_login; /* LOGIN: the user name given in step 1 */

    tls_conn_t *se_tls;
    buf_t se_in; /* plaintext input; se_ipos bytes of it processed */
    size_t se_ipos;
    buf_t se_out;  /* plaintext replies not yet written */
    buf_t se_cout; /* TLS records not yet written */

    /* the transaction */
    uint64_t se_msgid;
    char *se_sender;
    queue_rcpt_in_t *se_rcpts;
    int se_nrcpt;
    int se_rcap;
    uint8_t se_flags;
    char *se_envid;
    uint64_t se_size_hint;
    /* DATA */
    buf_t se_body;
    bool se_in_hdrs;
    bool se_in_job;
    bool se_saw_msgid;
    bool se_saw_date;
    bool se_too_long;
    bool se_too_big;
    bool se_no_mem; /* the body could not grow (memory limit): 452 at the dot */
    bool se_nul;
    bool se_8bit;
    bool se_midline; /* inside the tail of a dropped over-long line */
    bool se_prev_lf; /* the last DATA line ended with a bare LF */
    bool se_bare_lf; /* a bare LF / bare CR seen (smtp.bare_newline = reject) */
    bool se_bare_cr;
    uint64_t se_data_bytes;
    char *se_job;
    smtp_drops_t *se_drops; /* recipients accepted and dropped: suppressed (suppress_rcpt.c) */
    bool se_inbound;        /* a report for the bounce domain (inbound.c): never queued */
    bool se_reports;        /* came in on bounces.listen: reports only, their own limits */
    size_t se_mem;          /* bytes charged to the server's message memory (ss_mem_used) */
} sess_t;

struct smtp_thread {
    smtp_server_t *t_srv;
    int t_idx;
    uv_loop_t t_loop;
    uv_thread_t t_tid;  /* uv_thread_create's handle, for the join */
    uv_thread_t t_self; /* set by the thread itself before its loop runs */
    int t_nlisten;
    uv_tcp_t t_listen[2 * CFG_MAX_LISTEN]; /* smtp.listen, then bounces.listen */
    bool t_lreports[2 * CFG_MAX_LISTEN];   /* t_listen[i] is a bounces.listen address */
    chan_t *t_chan;
    uv_async_t t_stop_async;
    uv_timer_t t_grace;
    sess_t *t_sessions;
    int t_nsess;
    bool t_stopping;
    bool t_finishing;
    uint64_t t_date_s;
    char t_date[64];
    char t_rdbuf[READ_BUF_SIZE];
};

struct smtp_server {
    pthread_mutex_t s_cfg_lock;
    atomic_int s_conn_cap;             /* from the open files limit (smtp_server_set_conn_cap) */
    atomic_uint_fast64_t s_nofile;     /* that limit, for the log line */
    atomic_uint_fast64_t s_cap_logged; /* uv_now() of the last "cap reached" warning */
    atomic_uint_fast64_t s_cap_quiet;  /* refusals since then, not logged one by one */
    cfg_t *s_cfg;
    queue_t *s_q;
    tls_ctx_t *s_tls;
    int s_nthr;
    smtp_thread_t *s_thr;
    bool s_started;
    bool s_stopped;
    atomic_uint_fast64_t s_grace_ms;
    atomic_uint_fast64_t s_as_cap;  /* smtp.max_memory capped under ulimit -v */
    atomic_uint_fast64_t s_as_when; /* uv_now() of the last look at the limit */
    smtp_server_stats_t s_stats;
};

typedef struct wreq {
    uv_write_t w_req;
    sess_t *w_sess;
    char w_data[];
} wreq_t;

/* table of contents */
static void sess_enter_state(sess_t *s, sess_state_t st);
static void sess_reply(sess_t *s, const char *fmt, ...) PRINTF_LIKE(2, 3);
static void sess_error(sess_t *s, const char *reply);
static void sess_flush(sess_t *s);
static void sess_close(sess_t *s);
static void sess_close_after_flush(sess_t *s);
static void sess_maybe_free(sess_t *s);
static void sess_process(sess_t *s);
static void sess_txn_reset(sess_t *s);
static void sess_resume(sess_t *s);
static void sess_read_update(sess_t *s);
static void sess_drained(sess_t *s);
static size_t sess_out_pending(sess_t *s);
static void sess_handle_line(sess_t *s, char *line, size_t len);
static bool data_consume(sess_t *s);
static void data_done(sess_t *s);
static void thread_maybe_finish(smtp_thread_t *t);
static void queue_reply_cb(chan_t *ch, chan_node_t *first, void *arg);
static void sess_arm_timer(sess_t *s);
static void sess_timer_set(sess_t *s, uint64_t ms);
static void mem_sync(sess_t *s);
static bool mem_fits(sess_t *s, uint64_t size);
static const char *sess_ipkey(const sess_t *s, char *buf, size_t len);

#define STATS_INC(s, field) atomic_fetch_add_explicit(&(s)->field, 1, memory_order_relaxed)

static smtp_server_stats_t *sess_stats(sess_t *s)
{
    return &s->se_thr->t_srv->s_stats;
}

static void sess_enter_state(sess_t *s, sess_state_t st)
{
    if (s->se_state != st)
        log_debug("smtp client=%s state %s -> %s", s->se_ip, sess_state_names[s->se_state],
                  sess_state_names[st]);
    s->se_state = st;
}

/* ------------------------------------------------------------ output */

static void sess_reply(sess_t *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[1024];
    int n = vsnprintf(tmp, sizeof(tmp) - 2, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    size_t len = MIN((size_t)n, sizeof(tmp) - 3);
    tmp[len++] = '\r';
    tmp[len++] = '\n';
    buf_append(&s->se_out, tmp, len);
}

/* A reply for a client mistake; too many of them end the session. */
static void sess_error(sess_t *s, const char *reply)
{
    sess_reply(s, "%s", reply);
    if (++s->se_errors >= s->se_cfg->c_smtp_max_errors && s->se_cfg->c_smtp_max_errors > 0) {
        log_info("smtp client=%s too many errors, closing", s->se_ip);
        sess_reply(s, "421 4.7.0 %s Error: too many errors, closing", s->se_cfg->c_hostname);
        sess_close_after_flush(s);
    }
}

static void write_cb(uv_write_t *req, int status)
{
    wreq_t *w = (wreq_t *)req;
    sess_t *s = w->w_sess;
    SMTP_ASSERT_ON_LOOP(s->se_thr);
    free(w);
    if (s->se_closing)
        return;
    if (status < 0) {
        log_debug("smtp client=%s write: %s", s->se_ip, uv_strerror(status));
        sess_close(s);
        return;
    }
    sess_drained(s);
}

/* Reply bytes not yet handed to the kernel. */
static size_t sess_out_pending(sess_t *s)
{
    return s->se_out.b_len + s->se_cout.b_len +
           uv_stream_get_write_queue_size((uv_stream_t *)&s->se_tcp);
}

/* Write whatever replies are waiting: one syscall for a pipelined batch. */
static void sess_flush(sess_t *s)
{
    if (s->se_closing) {
        buf_reset(&s->se_out);
        return;
    }
    buf_t *src = &s->se_out;
    if (s->se_tls != NULL) {
        if (s->se_out.b_len > 0) {
            if (tls_write(s->se_tls, s->se_out.b_data, s->se_out.b_len) < 0) {
                log_info("smtp client=%s TLS write: %s", s->se_ip, tls_last_error(s->se_tls));
                buf_reset(&s->se_out);
                sess_close(s);
                return;
            }
            buf_reset(&s->se_out);
        }
        tls_pending_out(s->se_tls, &s->se_cout);
        src = &s->se_cout;
    }
    if (src->b_len == 0)
        return;
    uv_buf_t b = uv_buf_init(src->b_data, (unsigned)src->b_len);
    int n = uv_try_write((uv_stream_t *)&s->se_tcp, &b, 1);
    if (n == (int)src->b_len) {
        buf_reset(src);
        return;
    }
    if (n < 0 && n != UV_EAGAIN) {
        log_debug("smtp client=%s write: %s", s->se_ip, uv_strerror(n));
        buf_reset(src);
        sess_close(s);
        return;
    }
    size_t done = n > 0 ? (size_t)n : 0;
    size_t rest = src->b_len - done;
    wreq_t *w = xmalloc(sizeof(*w) + rest);
    w->w_sess = s;
    memcpy(w->w_data, src->b_data + done, rest);
    buf_reset(src);
    b = uv_buf_init(w->w_data, (unsigned)rest);
    int rc = uv_write(&w->w_req, (uv_stream_t *)&s->se_tcp, &b, 1, write_cb);
    if (rc != 0) {
        free(w);
        sess_close(s);
    }
}

/* ------------------------------------------------------------ closing */

static void handle_closed_cb(uv_handle_t *h)
{
    sess_t *s = h->data;
    SMTP_ASSERT_ON_LOOP(s->se_thr);
    s->se_handles--;
    sess_maybe_free(s);
}

static void sess_txn_reset(sess_t *s)
{
    free(s->se_sender);
    s->se_sender = NULL;
    for (int i = 0; i < s->se_nrcpt; i++) {
        free(s->se_rcpts[i].qr_addr);
        free(s->se_rcpts[i].qr_orcpt);
    }
    s->se_nrcpt = 0;
    free(s->se_envid);
    s->se_envid = NULL;
    free(s->se_job);
    s->se_job = NULL;
    smtp_drops_free(s->se_drops);
    s->se_drops = NULL;
    s->se_inbound = false;
    s->se_flags = 0;
    s->se_size_hint = 0;
    s->se_msgid = 0;
    if (s->se_body.b_cap > BODY_KEEP_MAX) { /* do not sit on a big buffer between messages */
        buf_free(&s->se_body);
        mem_sync(s);
    }
    buf_reset(&s->se_body);
}

static void sess_maybe_free(sess_t *s)
{
    if (s->se_handles > 0 || s->se_pending)
        return;
    smtp_thread_t *t = s->se_thr;
    if (s->se_prev)
        s->se_prev->se_next = s->se_next;
    else
        t->t_sessions = s->se_next;
    if (s->se_next)
        s->se_next->se_prev = s->se_prev;
    t->t_nsess--;
    sess_txn_reset(s);
    free(s->se_rcpts);
    free(s->se_auth_user);
    free(s->se_auth_login);
    tls_conn_free(s->se_tls);
    buf_free(&s->se_in);
    buf_free(&s->se_out);
    buf_free(&s->se_cout);
    buf_free(&s->se_body);
    mem_sync(s);
    if (s->se_cfg)
        cfg_unref(s->se_cfg);
    free(s);
    thread_maybe_finish(t);
}

/* Close now (pending writes are cancelled). */
static void sess_close(sess_t *s)
{
    if (s->se_closing)
        return;
    s->se_closing = true;
    sess_enter_state(s, SST_CLOSING);
    smtp_server_stats_t *st = sess_stats(s);
    if (s->se_counted)
        atomic_fetch_sub_explicit(&st->ss_conn_current, 1, memory_order_relaxed);
    char key[64];
    if (s->se_counted_ip)
        smtp_ipconn_release(sess_ipkey(s, key, sizeof(key)));
    log_info("smtp session end client=%s msgs=%d errors=%d tls=%s auth=%s duration=%.3fs", s->se_ip,
             s->se_nmsgs, s->se_errors, s->se_tls ? tls_version(s->se_tls) : "no",
             s->se_auth_user ? log_esc(s->se_auth_user) : "-",
             (double)(clock_now_us() - s->se_start_us) / 1e6);
    uv_close((uv_handle_t *)&s->se_tcp, handle_closed_cb);
    uv_close((uv_handle_t *)&s->se_timer, handle_closed_cb);
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
    sess_close(req->data);
}

/* Send what is queued (a 221 or 421), then close. */
static void sess_close_after_flush(sess_t *s)
{
    if (s->se_closing || s->se_shutting)
        return;
    sess_flush(s);
    if (s->se_closing)
        return;
    s->se_shutting = true;
    sess_enter_state(s, SST_CLOSING);
    uv_read_stop((uv_stream_t *)&s->se_tcp);
    s->se_reading = false;
    s->se_shutdown.data = s;
    if (uv_shutdown(&s->se_shutdown, (uv_stream_t *)&s->se_tcp, shutdown_cb) != 0)
        sess_close(s);
}

/* ------------------------------------------------------------ helpers */

static const char *thread_date(smtp_thread_t *t)
{
    uint64_t now = clock_now_s();
    if (now != t->t_date_s) {
        time_t tt = (time_t)now;
        struct tm tm;
        gmtime_r(&tt, &tm);
        strftime(t->t_date, sizeof(t->t_date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
        t->t_date_s = now;
    }
    return t->t_date;
}

static bool sess_auth_offered(sess_t *s)
{
    const cfg_t *c = s->se_cfg;
    if (c->c_nusers == 0 || s->se_reports)
        return false; /* the reports listener submits nothing: no AUTH there */
    return s->se_tls != NULL || (c->c_auth_plaintext_loopback && s->se_loopback);
}

/* A report (on the reports listener, or a report transaction on the SMTP
 * listener) has bounces.max_message_size, everything else
 * smtp.max_message_size. */
static uint64_t sess_size_limit(const sess_t *s)
{
    const cfg_t *c = s->se_cfg;
    return s->se_reports || s->se_inbound ? c->c_bounce_max_size : c->c_smtp_max_message_size;
}

/* The key of the per-IP connection count: the reports listener counts
 * apart from the SMTP listener (bounces.max_connections_per_ip). */
static const char *sess_ipkey(const sess_t *s, char *buf, size_t len)
{
    if (!s->se_reports)
        return s->se_ip;
    snprintf(buf, len, "r %s", s->se_ip);
    return buf;
}

static void read_cb(uv_stream_t *st, ssize_t n, const uv_buf_t *b);
static void alloc_cb(uv_handle_t *h, size_t sugg, uv_buf_t *b);

/* Read from the client unless the session waits for the AUTH failure
 * delay or for the client to read its replies (se_wpaused). While its
 * commit runs it goes on reading (libuv's read stop and start cost two
 * epoll_ctl calls, per message) into se_in, processed after the 250, up
 * to IN_COMMIT_MAX bytes: more and it stops until the 250. A client that
 * hangs up meanwhile is seen at once ("disconnected before the 250"). */
static void sess_read_update(sess_t *s)
{
    if (s->se_closing || s->se_shutting)
        return;
    bool want = !s->se_wpaused && s->se_state != SST_AUTH_DELAY &&
                (s->se_state != SST_COMMIT || s->se_in.b_len - s->se_ipos < IN_COMMIT_MAX);
    if (want && !s->se_reading)
        uv_read_start((uv_stream_t *)&s->se_tcp, alloc_cb, read_cb);
    else if (!want && s->se_reading)
        uv_read_stop((uv_stream_t *)&s->se_tcp);
    s->se_reading = want;
}

/* Pause reading (the AUTH delay; a commit holding IN_COMMIT_MAX of input). */
static void sess_pause(sess_t *s)
{
    sess_read_update(s);
}

/* Replies went out: a session paused because its client did not read them
 * goes on once they are down to OUT_LOW (a whole batch may be written at
 * once, without a write callback: hence the loop). The client read what
 * it was sent, so it is not idle: the idle timeout runs again from here (a
 * client that reads nothing never gets this far). */
static void sess_drained(sess_t *s)
{
    while (s->se_wpaused && !s->se_closing && !s->se_shutting && sess_out_pending(s) <= OUT_LOW) {
        s->se_wpaused = false;
        s->se_last = uv_now(&s->se_thr->t_loop);
        sess_process(s);
        sess_flush(s);
    }
    sess_read_update(s);
}

/* Continue after a pause: process what was pipelined, then read again. */
static void sess_resume(sess_t *s)
{
    if (s->se_closing || s->se_shutting)
        return;
    s->se_last = uv_now(&s->se_thr->t_loop);
    sess_process(s);
    sess_flush(s);
    sess_drained(s);
}

/* ------------------------------------------------------------ commands */

static void cmd_ehlo(sess_t *s, const smtp_cmd_t *c, bool ehlo)
{
    const cfg_t *cfg = s->se_cfg;
    sess_txn_reset(s);
    snprintf(s->se_helo, sizeof(s->se_helo), "%s", c->sc_arg);
    s->se_esmtp = ehlo;
    sess_enter_state(s, SST_READY);
    if (!ehlo) {
        sess_reply(s, "250 %s", cfg->c_hostname);
        return;
    }
    sess_reply(s, "250-%s", cfg->c_hostname);
    sess_reply(s, "250-PIPELINING");
    sess_reply(s, "250-SIZE %llu", (unsigned long long)sess_size_limit(s));
    if (s->se_thr->t_srv->s_tls != NULL && s->se_tls == NULL)
        sess_reply(s, "250-STARTTLS");
    if (sess_auth_offered(s))
        sess_reply(s, "250-AUTH PLAIN LOGIN");
    sess_reply(s, "250-ENHANCEDSTATUSCODES");
    sess_reply(s, "250-8BITMIME");
    sess_reply(s, "250-DSN");
    sess_reply(s, "250 SMTPUTF8");
}

static bool param_seen(const smtp_cmd_t *c, int i)
{
    for (int j = 0; j < i; j++)
        if (strcmp(c->sc_pkey[j], c->sc_pkey[i]) == 0)
            return true;
    return false;
}

static void cmd_mail(sess_t *s, const smtp_cmd_t *c)
{
    const cfg_t *cfg = s->se_cfg;
    smtp_server_t *srv = s->se_thr->t_srv;
    if (s->se_state == SST_MAIL || s->se_state == SST_RCPT) {
        sess_error(s, "503 5.5.1 Error: nested MAIL command");
        return;
    }
    if (s->se_stop_after || s->se_thr->t_stopping) {
        sess_reply(s, "421 4.3.2 Service shutting down");
        sess_close_after_flush(s);
        return;
    }
    uint8_t flags = 0;
    uint64_t size = 0;
    const char *envid = NULL;
    bool utf8_param = false; /* SMTPUTF8, wherever it is among the parameters */
    for (int i = 0; i < c->sc_nparams; i++)
        if (strcmp(c->sc_pkey[i], "SMTPUTF8") == 0)
            utf8_param = true;
    for (int i = 0; i < c->sc_nparams; i++) {
        const char *k = c->sc_pkey[i], *v = c->sc_pval[i];
        if (param_seen(c, i)) {
            sess_error(s, "501 5.5.4 Duplicate parameter");
            return;
        }
        if (strcmp(k, "SIZE") == 0) {
            char *end;
            if (v == NULL || *v == '\0' || v[strspn(v, "0123456789")] != '\0') {
                sess_error(s, "501 5.5.4 Bad SIZE parameter");
                return;
            }
            errno = 0;
            size = strtoull(v, &end, 10);
            if (errno != 0 || size > sess_size_limit(s)) {
                STATS_INC(&srv->s_stats, ss_msgs_rejected);
                sess_error(s, "552 5.3.4 Message size exceeds fixed limit");
                return;
            }
        } else if (strcmp(k, "BODY") == 0) {
            if (v != NULL && strcasecmp(v, "8BITMIME") == 0) {
                flags |= Q_F_8BITMIME;
            } else if (v == NULL || strcasecmp(v, "7BIT") != 0) {
                sess_error(s, "501 5.5.4 Unsupported BODY parameter");
                return;
            }
        } else if (strcmp(k, "SMTPUTF8") == 0 && v == NULL) {
            flags |= Q_F_SMTPUTF8;
        } else if (strcmp(k, "RET") == 0) {
            if (v != NULL && strcasecmp(v, "FULL") == 0) {
                flags |= Q_F_RET_FULL;
            } else if (v != NULL && strcasecmp(v, "HDRS") == 0) {
                flags |= Q_F_RET_HDRS;
            } else {
                sess_error(s, "501 5.5.4 Bad RET parameter");
                return;
            }
        } else if (strcmp(k, "ENVID") == 0) {
            /* xtext (RFC 3461 §4.4): it goes to the next hop and into DSNs */
            if (v == NULL || strlen(v) > 100 || smtp_xtext_check(v, utf8_param) != 0) {
                sess_error(s, "501 5.5.4 Bad ENVID parameter");
                return;
            }
            envid = v;
        } else if (strcmp(k, "AUTH") == 0 && v != NULL) {
            /* RFC 4954 §5: accepted and not propagated. */
        } else {
            char r[128];
            snprintf(r, sizeof(r), "555 5.5.4 Unsupported option: %.64s", k);
            sess_error(s, r);
            return;
        }
    }
    const char *path = c->sc_path;
    if (path[0] != '\0') {
        bool utf8 = false;
        if (smtp_addr_check(path, &utf8) != 0) {
            sess_error(s, "553 5.1.7 Bad sender address syntax");
            return;
        }
        if (utf8 && !(flags & Q_F_SMTPUTF8)) {
            sess_error(s, "553 5.6.7 Non-ASCII address requires SMTPUTF8");
            return;
        }
    }
    /* Backpressure: refuse new work rather than queue it in memory. */
    if (queue_over_high_water(srv->s_q)) {
        STATS_INC(&srv->s_stats, ss_msgs_rejected);
        log_warn("smtp client=%s reject MAIL: spool over high water", s->se_ip);
        sess_reply(s, "452 4.3.1 Insufficient system storage");
        return;
    }
    if (cfg->c_smtp_max_pending > 0 &&
        queue_pending(srv->s_q) > (uint64_t)cfg->c_smtp_max_pending) {
        STATS_INC(&srv->s_stats, ss_msgs_rejected);
        log_warn("smtp client=%s reject MAIL: %llu inserts pending", s->se_ip,
                 (unsigned long long)queue_pending(srv->s_q));
        sess_reply(s, "421 4.3.2 System busy, try again later");
        sess_close_after_flush(s);
        return;
    }
    if (size > 0 && !mem_fits(s, size + 4096)) {
        STATS_INC(&srv->s_stats, ss_msgs_rejected);
        STATS_INC(&srv->s_stats, ss_mem_refused);
        log_warn("smtp client=%s reject MAIL SIZE=%llu: message memory full", s->se_ip,
                 (unsigned long long)size);
        sess_reply(s, "452 4.3.1 Insufficient system storage");
        return;
    }
    sess_txn_reset(s);
    s->se_sender = xstrdup(path);
    s->se_flags = flags;
    s->se_size_hint = size;
    s->se_envid = envid ? xstrdup(envid) : NULL;
    s->se_msgid = queue_msgid_new();
    sess_enter_state(s, SST_MAIL);
    sess_reply(s, "250 2.1.0 Ok");
}

static int parse_notify(const char *v, uint8_t *out)
{
    uint8_t bits = 0;
    char tmp[64];
    if (v == NULL || strlen(v) >= sizeof(tmp))
        return SL_EPARSE;
    snprintf(tmp, sizeof(tmp), "%s", v);
    char *save = NULL;
    for (char *tok = strtok_r(tmp, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (strcasecmp(tok, "NEVER") == 0)
            bits |= Q_NOTIFY_NEVER;
        else if (strcasecmp(tok, "SUCCESS") == 0)
            bits |= Q_NOTIFY_SUCCESS;
        else if (strcasecmp(tok, "FAILURE") == 0)
            bits |= Q_NOTIFY_FAILURE;
        else if (strcasecmp(tok, "DELAY") == 0)
            bits |= Q_NOTIFY_DELAY;
        else
            return SL_EPARSE;
    }
    if (bits == 0 || ((bits & Q_NOTIFY_NEVER) && bits != Q_NOTIFY_NEVER))
        return SL_EPARSE;
    *out = bits;
    return 0;
}

/* The suppression list (suppress_rcpt.c): true when the recipient was
 * answered here, refused (550 5.7.1) or accepted and dropped (250). */
static bool rcpt_suppressed(sess_t *s, const char *addr)
{
    char reply[512];
    switch (smtp_supp_check(s->se_thr->t_srv->s_q, s->se_cfg, s->se_sender, addr, s->se_auth_user,
                            &s->se_drops, reply, sizeof(reply))) {
    case SMTP_SUPP_REJECT:
        STATS_INC(sess_stats(s), ss_rcpts_rejected);
        sess_error(s, reply);
        return true;
    case SMTP_SUPP_DROP:
        STATS_INC(sess_stats(s), ss_rcpts_accepted);
        sess_enter_state(s, SST_RCPT);
        sess_reply(s, "250 2.1.5 Ok");
        return true;
    default:
        return false;
    }
}

/* A report for the bounce domain (inbound.c): 1 it is one (accepted from
 * anyone), 0 not, -1 answered (a bad token, not a report on the reports
 * listener, over bounces.max_messages_per_minute, or mixed with other
 * recipients: a report transaction holds reports only, so nothing in it
 * is ever relayed). */
static int rcpt_inbound(sess_t *s, const char *addr)
{
    char reply[512];
    /* with a reports listener (bounces.listen) the SMTP listener is for
     * submission only: the bounce domain's MX points at the other one */
    inbound_rcpt_t ib = s->se_reports || s->se_cfg->c_bounce_listen.ca_n == 0
                            ? inbound_rcpt_check(s->se_cfg, addr, reply, sizeof(reply))
                            : INBOUND_NO;
    if (ib == INBOUND_REFUSED) {
        STATS_INC(sess_stats(s), ss_rcpts_rejected);
        log_info("smtp client=%s reject RCPT <%s>: bad VERP token", s->se_ip, log_esc(addr));
        sess_error(s, reply);
        return -1;
    }
    bool is = ib == INBOUND_YES;
    if (!is && s->se_reports) { /* the reports listener never relays, whoever asks */
        STATS_INC(sess_stats(s), ss_rcpts_rejected);
        log_info("smtp client=%s reject RCPT <%s>: not a report address", s->se_ip, log_esc(addr));
        snprintf(reply, sizeof(reply), "550 5.7.1 <%s>: this server takes reports for %s only",
                 log_esc(addr), s->se_cfg->c_bounce_domain);
        sess_error(s, reply);
        return -1;
    }
    if (!is && !s->se_relay_ok && s->se_auth_user == NULL)
        return 0; /* relaying denied, whatever came before */
    bool first = s->se_nrcpt + smtp_drops_count(s->se_drops) == 0;
    if (!first && is != s->se_inbound) {
        STATS_INC(sess_stats(s), ss_rcpts_rejected);
        sess_reply(s, "452 4.5.3 Reports to the bounce domain go in a transaction of their own");
        return -1;
    }
    if (is && first && !inbound_rate_take(s->se_cfg, s->se_ip, clock_now_us())) {
        STATS_INC(sess_stats(s), ss_rcpts_rejected);
        log_info("smtp client=%s reject RCPT <%s>: over bounces.max_messages_per_minute", s->se_ip,
                 log_esc(addr));
        sess_reply(s, "452 4.7.1 Too many reports from %s, try again later", s->se_ip);
        return -1;
    }
    s->se_inbound = is;
    return is ? 1 : 0;
}

static void cmd_rcpt(sess_t *s, const smtp_cmd_t *c)
{
    const cfg_t *cfg = s->se_cfg;
    smtp_server_stats_t *st = sess_stats(s);
    if (s->se_state != SST_MAIL && s->se_state != SST_RCPT) {
        sess_error(s, "503 5.5.1 Error: need MAIL command");
        return;
    }
    uint8_t notify = 0;
    const char *orcpt = NULL;
    for (int i = 0; i < c->sc_nparams; i++) {
        const char *k = c->sc_pkey[i], *v = c->sc_pval[i];
        if (param_seen(c, i)) {
            sess_error(s, "501 5.5.4 Duplicate parameter");
            return;
        }
        if (strcmp(k, "NOTIFY") == 0) {
            if (parse_notify(v, &notify) != 0) {
                sess_error(s, "501 5.5.4 Bad NOTIFY parameter");
                return;
            }
        } else if (strcmp(k, "ORCPT") == 0) {
            /* "addr-type;xtext" (RFC 3461 §4.2): relayed, and put in DSNs */
            if (v == NULL || strlen(v) > 500 ||
                smtp_orcpt_check(v, (s->se_flags & Q_F_SMTPUTF8) != 0) != 0) {
                sess_error(s, "501 5.5.4 Bad ORCPT parameter");
                return;
            }
            orcpt = v;
        } else {
            char r[128];
            snprintf(r, sizeof(r), "555 5.5.4 Unsupported option: %.64s", k);
            sess_error(s, r);
            return;
        }
    }
    char pm[300];
    const char *addr = c->sc_path;
    if (strcasecmp(addr, "postmaster") == 0) { /* RFC 5321 §4.5.1 */
        snprintf(pm, sizeof(pm), "postmaster@%s", cfg->c_hostname);
        addr = pm;
    }
    bool utf8 = false;
    if (smtp_addr_check(addr, &utf8) != 0) {
        STATS_INC(st, ss_rcpts_rejected);
        sess_error(s, "553 5.1.3 Bad recipient address syntax");
        return;
    }
    if (utf8 && !(s->se_flags & Q_F_SMTPUTF8)) {
        STATS_INC(st, ss_rcpts_rejected);
        sess_error(s, "553 5.6.7 Non-ASCII address requires SMTPUTF8");
        return;
    }
    int ib = rcpt_inbound(s, addr);
    if (ib < 0)
        return;
    if (ib == 0 && !s->se_relay_ok && s->se_auth_user == NULL) {
        STATS_INC(st, ss_rcpts_rejected);
        log_info("smtp client=%s reject RCPT <%s>: relaying denied", s->se_ip, log_esc(addr));
        sess_error(s, "550 5.7.1 Relaying denied");
        return;
    }
    if (s->se_nrcpt >= cfg->c_smtp_max_recipients) {
        STATS_INC(st, ss_rcpts_rejected);
        sess_reply(s, "452 4.5.3 Too many recipients");
        return;
    }
    if (ib == 0 && rcpt_suppressed(s, addr))
        return;
    if (s->se_nrcpt == s->se_rcap) {
        s->se_rcap = s->se_rcap ? s->se_rcap * 2 : 4;
        s->se_rcpts = xrealloc(s->se_rcpts, (size_t)s->se_rcap * sizeof(*s->se_rcpts));
    }
    queue_rcpt_in_t *r = &s->se_rcpts[s->se_nrcpt++];
    r->qr_addr = xstrdup(addr);
    r->qr_orcpt = orcpt ? xstrdup(orcpt) : NULL;
    r->qr_notify = notify;
    STATS_INC(st, ss_rcpts_accepted);
    sess_enter_state(s, SST_RCPT);
    sess_reply(s, "250 2.1.5 Ok");
}

/* ------------------------------------------------------------ message memory
 *
 * Every session's message buffer (the body being received, and the one
 * waiting in the queue for its commit) is charged to one server-wide total,
 * ss_mem_used, which may not pass smtp.max_memory (capped at a quarter of
 * the address space left under ulimit -v). The charge follows the buffer's
 * capacity; it is released when the buffer is freed. Over the budget, MAIL
 * with a SIZE that does not fit, DATA, and a body that outgrows it get
 * 452 4.3.1: the client tries again later, nothing is lost, and the daemon
 * never reaches the point where an allocation fails. */

/* The budget in force: smtp.max_memory, capped under ulimit -v. The limit
 * is looked at again every second (prlimit can lower it under a running
 * daemon). */
static uint64_t mem_budget(const sess_t *s)
{
    smtp_server_t *srv = s->se_thr->t_srv;
    uint64_t want = s->se_cfg->c_smtp_max_memory;
    uint64_t now = uv_now(&s->se_thr->t_loop);
    uint_fast64_t when = atomic_load_explicit(&srv->s_as_when, memory_order_relaxed);
    if (now >= when + 1000 && atomic_compare_exchange_strong(&srv->s_as_when, &when, now)) {
        uint64_t cap = mem_budget_cap(want, atomic_load(&srv->s_stats.ss_mem_used));
        atomic_store(&srv->s_as_cap, cap);
        atomic_store(&srv->s_stats.ss_mem_limit, cap);
    }
    return MIN(want, atomic_load_explicit(&srv->s_as_cap, memory_order_relaxed));
}

/* Charge the session for `bytes` in all. Growing fails when the
 * server-wide total would pass the budget; shrinking always succeeds. */
static bool mem_charge(sess_t *s, size_t bytes)
{
    smtp_server_stats_t *st = sess_stats(s);
    if (bytes <= s->se_mem) {
        atomic_fetch_sub_explicit(&st->ss_mem_used, s->se_mem - bytes, memory_order_relaxed);
        s->se_mem = bytes;
        return true;
    }
    uint64_t add = bytes - s->se_mem, budget = mem_budget(s);
    uint_fast64_t cur = atomic_load_explicit(&st->ss_mem_used, memory_order_relaxed);
    do {
        if (cur + add > budget)
            return false;
    } while (!atomic_compare_exchange_weak_explicit(&st->ss_mem_used, &cur, cur + add,
                                                    memory_order_relaxed, memory_order_relaxed));
    s->se_mem = bytes;
    return true;
}

/* The charge is what the session's body buffer holds now (small growth by
 * buf_printf, a buffer kept or freed), whatever the budget says. */
static void mem_sync(sess_t *s)
{
    smtp_server_stats_t *st = sess_stats(s);
    size_t now = s->se_body.b_cap;
    if (now >= s->se_mem)
        atomic_fetch_add_explicit(&st->ss_mem_used, now - s->se_mem, memory_order_relaxed);
    else
        atomic_fetch_sub_explicit(&st->ss_mem_used, s->se_mem - now, memory_order_relaxed);
    s->se_mem = now;
}

/* Does a message of `size` bytes (MAIL SIZE=) fit in what is left now? */
static bool mem_fits(sess_t *s, uint64_t size)
{
    uint64_t used = atomic_load_explicit(&sess_stats(s)->ss_mem_used, memory_order_relaxed);
    uint64_t budget = mem_budget(s);
    return used <= budget && size <= budget - used + s->se_mem;
}

/* Grow the body buffer like buf_reserve, but within the budget and without
 * aborting: a body that does not fit is dropped (its memory given back),
 * the rest of the DATA is read and discarded, and the final dot gets
 * 452 4.3.1. */
static bool body_reserve(sess_t *s, size_t extra)
{
    buf_t *b = &s->se_body;
    if (b->b_len + extra <= b->b_cap)
        return true;
    size_t cap = b->b_cap ? b->b_cap : 256;
    while (cap < b->b_len + extra)
        cap *= 2;
    char *p = NULL;
    if (!mem_charge(s, cap)) {
        log_warn("smtp client=%s message memory full (smtp.max_memory %llu MB, %llu MB in use): "
                 "refusing a %zu-byte body",
                 s->se_ip, (unsigned long long)(mem_budget(s) >> 20),
                 (unsigned long long)(atomic_load(&sess_stats(s)->ss_mem_used) >> 20), cap);
    } else if ((p = realloc(b->b_data, cap)) == NULL) {
        log_warn("smtp client=%s out of memory for a %zu-byte body", s->se_ip, cap);
    }
    if (p == NULL) {
        s->se_no_mem = true;
        buf_free(b);
        mem_sync(s);
        return false;
    }
    b->b_data = p;
    b->b_cap = cap;
    return true;
}

/* The Received header (RFC 5321 §4.4), first line of the stored message. */
static bool data_begin(sess_t *s)
{
    const cfg_t *cfg = s->se_cfg;
    smtp_thread_t *t = s->se_thr;
    buf_reset(&s->se_body);
    size_t want = s->se_size_hint ? s->se_size_hint + 1024 : BODY_INITIAL;
    s->se_no_mem = false;
    if (!body_reserve(s, MIN(want, sess_size_limit(s) + 4096)))
        return false;
    char id[17];
    queue_msgid_fmt(s->se_msgid, id);
    const char *proto = !s->se_esmtp                   ? "SMTP"
                        : s->se_tls && s->se_auth_user ? "ESMTPSA"
                        : s->se_tls                    ? "ESMTPS"
                        : s->se_auth_user              ? "ESMTPA"
                                                       : "ESMTP";
    buf_printf(&s->se_body, "Received: from %s ([%s])\r\n\tby %s (sluice) with %s id %s",
               s->se_helo, s->se_ip, cfg->c_hostname, proto, id);
    if (s->se_nrcpt == 1)
        buf_printf(&s->se_body, "\r\n\tfor <%s>", s->se_rcpts[0].qr_addr);
    buf_printf(&s->se_body, "; %s\r\n", thread_date(t));
    s->se_in_hdrs = true;
    s->se_in_job = false;
    s->se_saw_msgid = s->se_saw_date = false;
    s->se_too_long = s->se_too_big = s->se_nul = s->se_8bit = s->se_midline = false;
    s->se_prev_lf = s->se_bare_lf = s->se_bare_cr = false;
    s->se_data_bytes = 0;
    return true;
}

static void cmd_data(sess_t *s)
{
    if (s->se_state == SST_MAIL) {
        sess_error(s, "554 5.5.1 Error: no valid recipients");
        return;
    }
    if (s->se_state != SST_RCPT) {
        sess_error(s, "503 5.5.1 Error: need RCPT command");
        return;
    }
    if (!data_begin(s)) {
        /* RFC 5321 §4.3.2: 452 to DATA; the transaction is over. */
        smtp_server_stats_t *st = sess_stats(s);
        STATS_INC(st, ss_msgs_rejected);
        STATS_INC(st, ss_mem_refused);
        sess_txn_reset(s);
        sess_enter_state(s, SST_READY);
        sess_reply(s, "452 4.3.1 Insufficient system storage");
        return;
    }
    sess_enter_state(s, SST_DATA);
    sess_reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

static void auth_done(sess_t *s, const char *user, const char *pass);

static void cmd_auth(sess_t *s, const smtp_cmd_t *c)
{
    const cfg_t *cfg = s->se_cfg;
    if (cfg->c_nusers == 0) {
        sess_error(s, "503 5.5.1 Error: authentication not enabled");
        return;
    }
    if (s->se_state == SST_INIT) {
        sess_error(s, "503 5.5.1 Error: send EHLO first");
        return;
    }
    if (s->se_auth_user != NULL) {
        sess_error(s, "503 5.5.1 Error: already authenticated");
        return;
    }
    if (s->se_state != SST_READY) {
        sess_error(s, "503 5.5.1 Error: MAIL transaction in progress");
        return;
    }
    if (!sess_auth_offered(s)) {
        sess_error(s, "538 5.7.11 Encryption required for requested authentication mechanism");
        return;
    }
    if (smtp_auth_locked(cfg, s->se_ip)) {
        STATS_INC(sess_stats(s), ss_auth_failed);
        sess_reply(s, "454 4.7.0 Too many authentication failures, try later");
        s->se_errors++;
        return;
    }
    char mech[32];
    const char *p = c->sc_arg;
    size_t ml = strcspn(p, " ");
    if (ml == 0 || ml >= sizeof(mech)) {
        sess_error(s, "501 5.5.4 Syntax: AUTH mechanism");
        return;
    }
    memcpy(mech, p, ml);
    mech[ml] = '\0';
    const char *init = p[ml] ? p + ml + 1 : NULL;
    while (init && *init == ' ')
        init++;
    if (init && *init == '\0')
        init = NULL;
    if (strcasecmp(mech, "PLAIN") == 0) {
        s->se_auth_mech = AUTH_MECH_PLAIN;
        s->se_auth_step = 1;
    } else if (strcasecmp(mech, "LOGIN") == 0) {
        s->se_auth_mech = AUTH_MECH_LOGIN;
        s->se_auth_step = 1;
    } else {
        sess_error(s, "504 5.5.4 Unrecognized authentication type");
        return;
    }
    sess_enter_state(s, SST_AUTH);
    if (init != NULL) {
        char tmp[SMTP_LINE_MAX + 1];
        snprintf(tmp, sizeof(tmp), "%s", init);
        sess_handle_line(s, tmp, strlen(tmp)); /* as if sent after the 334 */
        return;
    }
    sess_reply(s, s->se_auth_mech == AUTH_MECH_PLAIN ? "334 " : "334 VXNlcm5hbWU6");
}

/* An AUTH continuation line (state SST_AUTH). */
static void auth_line(sess_t *s, const char *line)
{
    char dec[SMTP_LINE_MAX];
    if (strcmp(line, "*") == 0) {
        sess_enter_state(s, SST_READY);
        sess_error(s, "501 5.0.0 Authentication cancelled");
        return;
    }
    int n = strcmp(line, "=") == 0 ? 0 : smtp_b64_decode(line, strlen(line), dec, sizeof(dec));
    if (n < 0) {
        sess_enter_state(s, SST_READY);
        sess_error(s, "501 5.5.2 Cannot decode response");
        return;
    }
    dec[n] = '\0';
    if (s->se_auth_mech == AUTH_MECH_PLAIN) {
        /* authzid NUL authcid NUL passwd (RFC 4616) */
        const char *authz = dec;
        const char *a = memchr(dec, '\0', (size_t)n);
        const char *b = a ? memchr(a + 1, '\0', (size_t)(dec + n - (a + 1))) : NULL;
        if (a == NULL || b == NULL) {
            sess_enter_state(s, SST_READY);
            sess_error(s, "501 5.5.2 Invalid PLAIN response");
            return;
        }
        const char *user = a + 1, *pass = b + 1;
        if (authz[0] != '\0' && strcmp(authz, user) != 0) {
            auth_done(s, "", ""); /* acting for someone else: not allowed */
            return;
        }
        auth_done(s, user, pass);
        return;
    }
    if (s->se_auth_step == 1) {
        free(s->se_auth_login);
        s->se_auth_login = xstrndup(dec, (size_t)n);
        s->se_auth_step = 2;
        sess_reply(s, "334 UGFzc3dvcmQ6");
        return;
    }
    auth_done(s, s->se_auth_login ? s->se_auth_login : "", dec);
}

static void auth_done(sess_t *s, const char *user, const char *pass)
{
    const cfg_t *cfg = s->se_cfg;
    bool ok = user[0] != '\0' && smtp_auth_verify(cfg, user, pass);
    if (ok) {
        s->se_auth_user = xstrdup(user);
        STATS_INC(sess_stats(s), ss_auth_ok);
        log_info("smtp client=%s auth ok user=%s", s->se_ip, log_esc(user));
    } else {
        log_info("smtp client=%s auth failed user=%s", s->se_ip, log_escn(user, strnlen(user, 64)));
    }
    free(s->se_auth_login); /* user may point into it: freed only now */
    s->se_auth_login = NULL;
    if (ok) {
        sess_enter_state(s, SST_READY);
        sess_reply(s, "235 2.7.0 Authentication successful");
        return;
    }
    STATS_INC(sess_stats(s), ss_auth_failed);
    smtp_auth_failed(cfg, s->se_ip);
    s->se_errors++;
    /* The 535 waits: a guesser gets one answer per delay per connection. */
    sess_enter_state(s, SST_AUTH_DELAY);
    sess_pause(s);
    s->se_delay = true;
    sess_timer_set(s, cfg->c_auth_fail_delay);
}

static void cmd_starttls(sess_t *s)
{
    tls_ctx_t *ctx = s->se_thr->t_srv->s_tls;
    if (ctx == NULL) {
        sess_error(s, "502 5.5.1 Error: command not implemented");
        return;
    }
    if (s->se_tls != NULL) {
        sess_error(s, "503 5.5.1 Error: TLS already active");
        return;
    }
    if (s->se_state == SST_INIT) {
        sess_error(s, "503 5.5.1 Error: send EHLO first");
        return;
    }
    if (s->se_state != SST_READY) {
        sess_error(s, "503 5.5.1 Error: MAIL transaction in progress");
        return;
    }
    tls_conn_t *tls = tls_conn_new_server(ctx);
    if (tls == NULL) {
        sess_reply(s, "454 4.7.0 TLS not available due to local problem");
        return;
    }
    sess_reply(s, "220 2.0.0 Ready to start TLS");
    sess_flush(s); /* the 220 goes out in plaintext */
    /* RFC 3207 §6: anything pipelined after STARTTLS is an injection. */
    size_t extra = s->se_in.b_len - s->se_ipos;
    if (extra > 0)
        log_warn("smtp client=%s discarding %zu bytes sent after STARTTLS", s->se_ip, extra);
    s->se_ipos = s->se_in.b_len;
    s->se_tls = tls;
    sess_enter_state(s, SST_TLS);
}

static void sess_handle_line(sess_t *s, char *line, size_t len)
{
    const cfg_t *cfg = s->se_cfg;
    uint64_t now = uv_now(&s->se_thr->t_loop);
    if (s->se_state == SST_AUTH) {
        s->se_last = now;
        auth_line(s, line);
        return;
    }
    smtp_cmd_t c;
    const char *reply = NULL;
    int rc = smtp_cmd_parse(line, &c, &reply);
    /* Commands that make no progress count towards the limit until a
     * message is accepted, in any state (an EHLO flood, a MAIL/RSET loop),
     * and do not restart the idle timer (NOOPs cannot hold a session). The
     * first EHLO/HELO (of the session, or after STARTTLS) is progress. */
    bool hello = c.sc_verb == SMTP_CMD_EHLO || c.sc_verb == SMTP_CMD_HELO;
    bool junk = hello || c.sc_verb == SMTP_CMD_UNKNOWN || c.sc_verb == SMTP_CMD_NOOP ||
                c.sc_verb == SMTP_CMD_RSET || c.sc_verb == SMTP_CMD_VRFY ||
                c.sc_verb == SMTP_CMD_EXPN || c.sc_verb == SMTP_CMD_HELP;
    if (rc == 0 && (!junk || (hello && s->se_state == SST_INIT)))
        s->se_last = now;
    if (junk && cfg->c_smtp_max_commands_before_mail > 0 &&
        ++s->se_nontx > cfg->c_smtp_max_commands_before_mail) {
        log_info("smtp client=%s too many commands before MAIL, closing", s->se_ip);
        sess_reply(s, "421 4.7.0 Too many commands, closing");
        sess_close_after_flush(s);
        return;
    }
    if (rc != 0) {
        sess_error(s, reply);
        return;
    }
    if (s->se_state == SST_INIT) {
        switch (c.sc_verb) {
        case SMTP_CMD_EHLO:
        case SMTP_CMD_HELO:
        case SMTP_CMD_NOOP:
        case SMTP_CMD_RSET:
        case SMTP_CMD_QUIT:
        case SMTP_CMD_VRFY:
        case SMTP_CMD_EXPN:
        case SMTP_CMD_HELP:
            break;
        default:
            sess_error(s, "503 5.5.1 Error: send HELO/EHLO first");
            return;
        }
    }
    switch (c.sc_verb) {
    case SMTP_CMD_EHLO:
        cmd_ehlo(s, &c, true);
        break;
    case SMTP_CMD_HELO:
        cmd_ehlo(s, &c, false);
        break;
    case SMTP_CMD_MAIL:
        cmd_mail(s, &c);
        break;
    case SMTP_CMD_RCPT:
        cmd_rcpt(s, &c);
        break;
    case SMTP_CMD_DATA:
        cmd_data(s);
        break;
    case SMTP_CMD_RSET:
        sess_txn_reset(s);
        if (s->se_state != SST_INIT)
            sess_enter_state(s, SST_READY);
        sess_reply(s, "250 2.0.0 Ok");
        break;
    case SMTP_CMD_NOOP:
        sess_reply(s, "250 2.0.0 Ok");
        break;
    case SMTP_CMD_QUIT:
        sess_reply(s, "221 2.0.0 Bye");
        sess_close_after_flush(s);
        break;
    case SMTP_CMD_VRFY:
        sess_reply(s, "252 2.5.2 Cannot VRFY user");
        break;
    case SMTP_CMD_EXPN:
        sess_error(s, "502 5.5.1 Error: EXPN not supported");
        break;
    case SMTP_CMD_HELP:
        sess_reply(s, "214 2.0.0 See https://www.rfc-editor.org/rfc/rfc5321");
        break;
    case SMTP_CMD_STARTTLS:
        cmd_starttls(s);
        break;
    case SMTP_CMD_AUTH:
        cmd_auth(s, &c);
        break;
    case SMTP_CMD_BDAT:
    case SMTP_CMD_UNKNOWN:
    default:
        sess_error(s, "502 5.5.1 Error: command not implemented");
        break;
    }
}

/* ------------------------------------------------------------ DATA */

static bool has_8bit(const char *p, size_t len)
{
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        if (w & 0x8080808080808080ull)
            return true;
    }
    for (; i < len; i++)
        if ((unsigned char)p[i] & 0x80)
            return true;
    return false;
}

/* Message-ID and Date are added at the end of the header block if the
 * client left them out (RFC 5322 §3.6 wants both). */
static void hdr_end(sess_t *s)
{
    const cfg_t *cfg = s->se_cfg;
    if (!s->se_saw_msgid) {
        char id[17];
        buf_printf(&s->se_body, "Message-ID: <%s.%llu@%s>\r\n", queue_msgid_fmt(s->se_msgid, id),
                   (unsigned long long)clock_now_s(), cfg->c_hostname);
    }
    if (!s->se_saw_date)
        buf_printf(&s->se_body, "Date: %s\r\n", thread_date(s->se_thr));
    if (cfg->c_bounce_inbound && !s->se_inbound) { /* what a report without VERP returns */
        char id[17];
        buf_printf(&s->se_body, "X-Sluice-Id: %s\r\n", queue_msgid_fmt(s->se_msgid, id));
    }
    s->se_in_hdrs = false;
    s->se_in_job = false;
}

static bool hdr_name_ok(const char *p, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < 33 || c > 126)
            return false;
    }
    return true;
}

static void header_line(sess_t *s, const char *p, size_t len)
{
    buf_t *b = &s->se_body;
    if (len == 0) {
        hdr_end(s);
        buf_append(b, "\r\n", 2);
        return;
    }
    if (p[0] == ' ' || p[0] == '\t') {
        if (s->se_in_job) { /* folded X-Sluice-Job: unfold into the value */
            size_t i = 0;
            while (i < len && (p[i] == ' ' || p[i] == '\t'))
                i++;
            size_t ol = s->se_job ? strlen(s->se_job) : 0;
            if (ol + (len - i) < 1024) {
                s->se_job = xrealloc(s->se_job, ol + (len - i) + 2);
                s->se_job[ol] = ' ';
                memcpy(s->se_job + ol + 1, p + i, len - i);
                s->se_job[ol + 1 + (len - i)] = '\0';
            }
            return;
        }
        buf_append(b, p, len);
        buf_append(b, "\r\n", 2);
        return;
    }
    s->se_in_job = false;
    const char *colon = memchr(p, ':', len);
    size_t nl = colon ? (size_t)(colon - p) : 0;
    while (nl > 0 && (p[nl - 1] == ' ' || p[nl - 1] == '\t'))
        nl--; /* obsolete "Name :" form */
    if (colon == NULL || !hdr_name_ok(p, nl)) {
        /* Not a header: the body started without its empty line. */
        hdr_end(s);
        buf_append(b, "\r\n", 2);
        buf_append(b, p, len);
        buf_append(b, "\r\n", 2);
        return;
    }
    if (nl == 10 && strncasecmp(p, "Message-ID", 10) == 0) {
        s->se_saw_msgid = true;
    } else if (nl == 4 && strncasecmp(p, "Date", 4) == 0) {
        s->se_saw_date = true;
    } else if (nl == 12 && strncasecmp(p, "X-Sluice-Job", 12) == 0) {
        const char *v = colon + 1, *e = p + len;
        while (v < e && (*v == ' ' || *v == '\t'))
            v++;
        while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        free(s->se_job);
        s->se_job = xstrndup(v, MIN((size_t)(e - v), 1000));
        s->se_in_job = true;
        return; /* removed from the stored message */
    }
    buf_append(b, p, len);
    buf_append(b, "\r\n", 2);
}

/* True when the message is refused already: its lines are not kept. */
static bool data_refused(const sess_t *s)
{
    return s->se_too_long || s->se_too_big || s->se_nul || s->se_no_mem || s->se_bare_lf ||
           s->se_bare_cr;
}

/* One message line, dot-unstuffed, without its line end (and without a
 * CR): counted, checked and kept. */
static void data_store(sess_t *s, const char *p, size_t len)
{
    const cfg_t *cfg = s->se_cfg;
    s->se_data_bytes += len + 2;
    if (len + 2 > (size_t)cfg->c_smtp_max_line)
        s->se_too_long = true;
    if (UNLIKELY(memchr(p, '\0', len) != NULL))
        s->se_nul = true;
    if (!s->se_8bit && !(s->se_flags & Q_F_8BITMIME) && has_8bit(p, len))
        s->se_8bit = true;
    if (s->se_data_bytes > sess_size_limit(s))
        s->se_too_big = true;
    if (data_refused(s))
        return; /* rejected at the final dot; keep reading in sync */
    /* room for the line, and in the header block for what hdr_end adds */
    if (!body_reserve(s, len + 2 + (s->se_in_hdrs ? HDR_END_ROOM : 0)))
        return;
    if (s->se_in_hdrs) {
        header_line(s, p, len);
        return;
    }
    memcpy(s->se_body.b_data + s->se_body.b_len, p, len);
    memcpy(s->se_body.b_data + s->se_body.b_len + len, "\r\n", 2);
    s->se_body.b_len += len + 2;
}

/* One message line as the client framed it, dot-unstuffed, without its
 * line end. A bare CR inside would reach the next hop, where a receiver
 * may take it for a line end: refused, or (normalize) a line end. */
static void data_line(sess_t *s, const char *p, size_t len)
{
    const char *cr;
    if (UNLIKELY((cr = memchr(p, '\r', len)) != NULL)) {
        if (s->se_cfg->c_smtp_bare_newline != CFG_BARENL_NORMALIZE) {
            s->se_bare_cr = true;
        } else {
            do {
                data_store(s, p, (size_t)(cr - p));
                len -= (size_t)(cr - p) + 1;
                p = cr + 1;
            } while ((cr = memchr(p, '\r', len)) != NULL);
        }
    }
    data_store(s, p, len);
}

static void data_lax_end(sess_t *s);

/* Consume DATA lines from se_in. Returns true when DATA ended (the state
 * changed), false when more input is needed. Only <CR><LF>.<CR><LF> ends
 * it (RFC 5321 §4.1.1.4): a server that also takes <LF>.<LF>,
 * <LF>.<CR><LF> or <CR><LF>.<LF> for the end can be made to read the rest
 * of a message as a new transaction with any sender (SMTP smuggling). */
static bool data_consume(sess_t *s)
{
    const char *base = s->se_in.b_data;
    size_t pos = s->se_ipos, end = s->se_in.b_len;
    size_t maxl = (size_t)s->se_cfg->c_smtp_max_line;
    bool normalize = s->se_cfg->c_smtp_bare_newline == CFG_BARENL_NORMALIZE;
    while (pos < end) {
        const char *p = base + pos;
        size_t avail = end - pos;
        const char *nl = memchr(p, '\n', avail);
        if (nl == NULL) {
            if (avail > maxl + 2) {
                /* An over-long line: remember it, drop what we have. */
                s->se_too_long = true;
                s->se_data_bytes += avail;
                s->se_midline = true;
                pos = end;
            }
            break;
        }
        size_t ll = (size_t)(nl - p);
        bool crlf = ll > 0 && p[ll - 1] == '\r';
        size_t cl = crlf ? ll - 1 : ll;
        bool after_lf = s->se_prev_lf;
        s->se_prev_lf = !crlf;
        pos += ll + 1;
        if (s->se_midline) {
            s->se_midline = false;
            continue;
        }
        if (!crlf && !normalize)
            s->se_bare_lf = true;
        if (cl == 1 && p[0] == '.') {
            s->se_ipos = pos;
            if (crlf && !after_lf) {
                data_done(s);
                return true;
            }
            if (!normalize) {
                data_lax_end(s);
                return true;
            }
            data_line(s, p, 1); /* normalize: text, kept with its dot */
            continue;
        }
        if (cl > 0 && p[0] == '.') {
            p++;
            cl--;
        }
        data_line(s, p, cl);
    }
    s->se_ipos = pos;
    return false;
}

static void data_reject(sess_t *s, const char *reply, const char *why)
{
    char id[17];
    STATS_INC(sess_stats(s), ss_msgs_rejected);
    log_info("%s reject: %s from=<%s> nrcpt=%d client=%s", queue_msgid_fmt(s->se_msgid, id), why,
             log_esc(s->se_sender), s->se_nrcpt, s->se_ip);
    sess_txn_reset(s);
    sess_enter_state(s, SST_READY);
    sess_error(s, reply);
}

/* smtp.bare_newline = reject, and the client ended DATA with <LF>.<LF>,
 * <LF>.<CR><LF> or <CR><LF>.<LF>: it waits for an answer (an LF-only
 * client), or what follows is a smuggled transaction. Either way nothing
 * after it can be trusted as a command: refuse and close (Postfix answers
 * such a client "521 5.5.2 ... bare <LF> received" too). */
static void data_lax_end(sess_t *s)
{
    char id[17];
    STATS_INC(sess_stats(s), ss_msgs_rejected);
    log_info("%s reject: bare <LF> received (DATA ended without <CR><LF>.<CR><LF>) from=<%s> "
             "nrcpt=%d client=%s, closing",
             queue_msgid_fmt(s->se_msgid, id), log_esc(s->se_sender), s->se_nrcpt, s->se_ip);
    sess_txn_reset(s);
    sess_enter_state(s, SST_READY);
    sess_reply(s, "521 5.5.2 %s Error: bare <LF> received", s->se_cfg->c_hostname);
    sess_close_after_flush(s);
}

/* The final dot: reject, or hand the message to the queue thread. */
/* suppression.action = drop took every recipient: the client gets its 250
 * and nothing goes to the spool; the records say what happened. */
static void data_all_dropped(sess_t *s)
{
    char id[17];
    queue_msgid_fmt(s->se_msgid, id);
    smtp_drops_record(s->se_thr->t_srv->s_q, s->se_drops, s->se_msgid, s->se_sender, s->se_job,
                      s->se_ip, s->se_auth_user);
    log_info("%s from=<%s> nrcpt=0 dropped=%d client=%s: every recipient suppressed", id,
             log_esc(s->se_sender), smtp_drops_count(s->se_drops), s->se_ip);
    sess_reply(s, "250 2.0.0 Ok: queued as %s", id);
    s->se_nmsgs++;
    s->se_nontx = 0;
    sess_txn_reset(s);
    mem_sync(s);
    sess_enter_state(s, SST_READY);
}

/* A report to the bounce domain (inbound.c): recorded, never queued. */
static void data_inbound(sess_t *s)
{
    char id[17];
    queue_msgid_fmt(s->se_msgid, id);
    inbound_msg_t m = {s->se_msgid,       s->se_rcpts[0].qr_addr, s->se_sender,
                       s->se_body.b_data, s->se_body.b_len,       s->se_ip};
    const char *what = inbound_process(s->se_thr->t_srv->s_q, s->se_cfg, &m);
    sess_reply(s, "250 2.0.0 Ok: report %s (%s)", id, what);
    s->se_nmsgs++;
    s->se_nontx = 0;
    sess_txn_reset(s);
    mem_sync(s);
    sess_enter_state(s, SST_READY);
}

static void data_done(sess_t *s)
{
    smtp_thread_t *t = s->se_thr;
    if (s->se_in_hdrs && !data_refused(s) && body_reserve(s, HDR_END_ROOM))
        hdr_end(s);
    if (s->se_nul) {
        data_reject(s, "554 5.6.0 Message contains NUL characters", "NUL characters");
        return;
    }
    if (s->se_too_big) {
        data_reject(s, "552 5.3.4 Message size exceeds fixed limit", "message too big");
        return;
    }
    if (s->se_too_long) {
        data_reject(s, "500 5.5.2 Line too long", "line too long");
        return;
    }
    if (s->se_bare_lf) { /* smtp.bare_newline = reject */
        data_reject(s, "550 5.5.2 Error: bare <LF> received", "bare <LF> received");
        return;
    }
    if (s->se_bare_cr) {
        data_reject(s, "550 5.5.2 Error: bare <CR> received", "bare <CR> received");
        return;
    }
    if (s->se_no_mem) {
        STATS_INC(sess_stats(s), ss_mem_refused);
        data_reject(s, "452 4.3.1 Insufficient system storage", "no memory for the body");
        return;
    }
    if (!s->se_inbound) /* suppression.scope_header: known only now */
        smtp_supp_scope_check(t->t_srv->s_q, s->se_cfg, s->se_sender, s->se_body.b_data,
                              s->se_body.b_len, s->se_rcpts, &s->se_nrcpt, &s->se_drops);
    if (s->se_nrcpt == 0) { /* every recipient suppressed and dropped */
        data_all_dropped(s);
        return;
    }
    if (s->se_inbound) { /* a report: read here, never queued */
        data_inbound(s);
        return;
    }
    mem_sync(s); /* the charge stays with the session until the queue answers */
    queue_msg_in_t *m = xcalloc(1, sizeof(*m));
    m->qm_id = s->se_msgid;
    m->qm_arrival = clock_now_s();
    m->qm_sender = s->se_sender;
    s->se_sender = NULL;
    m->qm_job = s->se_job;
    s->se_job = NULL;
    m->qm_envid = s->se_envid;
    s->se_envid = NULL;
    m->qm_auth_user = s->se_auth_user ? xstrdup(s->se_auth_user) : NULL;
    snprintf(m->qm_client_ip, sizeof(m->qm_client_ip), "%s", s->se_ip);
    m->qm_flags = s->se_flags;
    m->qm_nrcpt = s->se_nrcpt;
    m->qm_rcpts = s->se_rcpts;
    s->se_rcpts = NULL;
    s->se_nrcpt = s->se_rcap = 0;
    m->qm_body = s->se_body;
    memset(&s->se_body, 0, sizeof(s->se_body));
    m->qm_reply = t->t_chan;
    m->qm_ctx = s;
    if (s->se_8bit)
        log_info("%016llX 8bit=undeclared client=%s", (unsigned long long)m->qm_id, s->se_ip);
    s->se_pending = true;
    sess_enter_state(s, SST_COMMIT);
    sess_pause(s);
    queue_submit(t->t_srv->s_q, m);
}

/* The queue thread pushed committed (or failed) messages back. */
static void queue_reply_cb(chan_t *ch, chan_node_t *first, void *arg)
{
    smtp_thread_t *t = arg;
    SMTP_ASSERT_ON_LOOP(t);
    smtp_server_stats_t *st = &t->t_srv->s_stats;
    for (chan_node_t *n = first, *next; n != NULL; n = next) {
        next = n->cn_next;
        queue_msg_in_t *m = (queue_msg_in_t *)n;
        sess_t *s = m->qm_ctx;
        s->se_pending = false;
        char id[17];
        queue_msgid_fmt(m->qm_id, id);
        if (m->qm_status == 0) {
            smtp_drops_record(t->t_srv->s_q, s->se_drops, m->qm_id, m->qm_sender, m->qm_job,
                              m->qm_client_ip, m->qm_auth_user);
            STATS_INC(st, ss_msgs_accepted);
            atomic_fetch_add_explicit(&st->ss_bytes_received, m->qm_body.b_len,
                                      memory_order_relaxed);
            log_info("%s from=<%s> nrcpt=%d size=%zu client=%s%s%s", id, log_esc(m->qm_sender),
                     m->qm_nrcpt, m->qm_body.b_len, m->qm_client_ip, m->qm_job ? " job=" : "",
                     m->qm_job ? log_esc(m->qm_job) : "");
        } else {
            STATS_INC(st, ss_msgs_rejected);
            log_warn("%s reject: spool %s from=<%s> client=%s", id, sl_strerror(m->qm_status),
                     log_esc(m->qm_sender), m->qm_client_ip);
        }
        if (s->se_closing || s->se_shutting) {
            if (m->qm_status == 0)
                log_info("%s client=%s disconnected before the 250", id, m->qm_client_ip);
            queue_msg_in_free(m);
            mem_sync(s);
            sess_maybe_free(s);
            continue;
        }
        if (m->qm_status == 0) {
            sess_reply(s, "250 2.0.0 Ok: queued as %s", id);
            s->se_nontx = 0; /* progress: the count of idle commands starts again */
        } else if (m->qm_status == SL_EFULL)
            sess_reply(s, "452 4.3.1 Insufficient system storage");
        else
            sess_reply(s, "451 4.3.0 Temporary spool failure, try again");
        s->se_nmsgs++;
        /* Keep the body's storage for the next message. */
        if (s->se_body.b_data == NULL && m->qm_body.b_cap <= BODY_KEEP_MAX) {
            s->se_body = m->qm_body;
            buf_reset(&s->se_body);
            memset(&m->qm_body, 0, sizeof(m->qm_body));
        }
        mem_sync(s); /* the kept buffer, or nothing once m is freed */
        queue_msg_in_free(m);
        sess_txn_reset(s);
        sess_enter_state(s, SST_READY);
        if (s->se_stop_after || t->t_stopping) {
            sess_reply(s, "421 4.3.2 Service shutting down");
            sess_close_after_flush(s);
            continue;
        }
        sess_arm_timer(s);
        sess_resume(s);
    }
}

/* ------------------------------------------------------------ input */

/* Process buffered input until it runs out or the session must wait. */
static void sess_process(sess_t *s)
{
    sess_state_t before = s->se_state;
    while (!s->se_closing && !s->se_shutting) {
        sess_state_t st = s->se_state;
        if (st == SST_COMMIT || st == SST_AUTH_DELAY || st == SST_TLS || st == SST_CLOSING)
            break;
        if (st == SST_DATA) {
            if (!data_consume(s))
                break;
            continue;
        }
        const char *p = s->se_in.b_data + s->se_ipos;
        size_t avail = s->se_in.b_len - s->se_ipos;
        if (avail == 0)
            break;
        if (sess_out_pending(s) >= OUT_HIGH) {
            /* The client does not read its replies: stop reading (and
             * answering) its commands until they drain (sess_drained), or
             * its replies would pile up in memory without bound. */
            s->se_wpaused = true;
            sess_read_update(s);
            break;
        }
        const char *nl = memchr(p, '\n', avail);
        if (nl == NULL) {
            if (avail > SMTP_LINE_MAX) {
                if (!s->se_skip_line)
                    sess_error(s, "500 5.5.2 Line too long");
                s->se_skip_line = true;
                s->se_ipos = s->se_in.b_len;
            }
            break;
        }
        size_t ll = (size_t)(nl - p);
        s->se_ipos += ll + 1;
        if (s->se_skip_line) {
            s->se_skip_line = false;
            continue;
        }
        if (ll > 0 && p[ll - 1] == '\r')
            ll--;
        if (ll + 2 > SMTP_LINE_MAX) {
            sess_error(s, "500 5.5.2 Line too long");
            continue;
        }
        const char *why = NULL;
        if (smtp_line_check(p, ll, &why) != 0) { /* a NUL would cut the line short */
            if (s->se_state == SST_AUTH)
                sess_enter_state(s, SST_READY); /* the AUTH exchange is abandoned */
            sess_error(s, why);
            continue;
        }
        char line[SMTP_LINE_MAX + 1];
        memcpy(line, p, ll);
        line[ll] = '\0';
        sess_handle_line(s, line, ll);
    }
    /* Drop what was processed; the rest is at most one partial line (or
     * input pipelined behind a pause). */
    if (s->se_ipos > 0) {
        buf_consume(&s->se_in, s->se_ipos);
        s->se_ipos = 0;
    }
    if (before != s->se_state && (before == SST_DATA || s->se_state == SST_DATA))
        sess_arm_timer(s);
}

/* (Re)arm the session timer for whatever the state needs now. */
static void sess_arm_timer(sess_t *s)
{
    if (s->se_closing)
        return;
    const cfg_t *cfg = s->se_cfg;
    if (s->se_delay || s->se_shutting)
        return; /* the AUTH delay or the close deadline is running */
    uint64_t to = (s->se_state == SST_DATA ? cfg->c_smtp_data_timeout : cfg->c_smtp_idle_timeout);
    sess_timer_set(s, to * 1000);
}

static void alloc_cb(uv_handle_t *h, size_t sugg, uv_buf_t *b)
{
    sess_t *s = h->data;
    b->base = s->se_thr->t_rdbuf;
    b->len = READ_BUF_SIZE;
}

static void tls_handshake_step(sess_t *s)
{
    int r = tls_handshake(s->se_tls);
    if (r < 0) {
        log_info("smtp client=%s TLS handshake failed: %s", s->se_ip, tls_last_error(s->se_tls));
        tls_pending_out(s->se_tls, &s->se_cout); /* the alert, if any */
        sess_flush(s);
        sess_close(s);
        return;
    }
    if (r == 0)
        return;
    /* RFC 3207 §4.2: forget everything learned before TLS. */
    STATS_INC(sess_stats(s), ss_tls_sessions);
    log_debug("smtp client=%s TLS %s %s", s->se_ip, tls_version(s->se_tls), tls_cipher(s->se_tls));
    sess_txn_reset(s);
    s->se_helo[0] = '\0';
    s->se_esmtp = false;
    free(s->se_auth_user);
    s->se_auth_user = NULL;
    sess_enter_state(s, SST_INIT);
}

static void read_cb(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    sess_t *s = st->data;
    SMTP_ASSERT_ON_LOOP(s->se_thr);
    if (n < 0) {
        if (n != UV_EOF)
            log_debug("smtp client=%s read: %s", s->se_ip, uv_strerror((int)n));
        if (s->se_state == SST_DATA)
            log_info("smtp client=%s lost connection in DATA", s->se_ip);
        sess_close(s);
        return;
    }
    if (n == 0 || s->se_closing || s->se_shutting)
        return;
    /* Outside DATA the idle timeout runs from the last complete command
     * (sess_process): a client trickling bytes (slowloris) cannot hold a
     * session open past it. */
    if (s->se_state == SST_DATA || s->se_state == SST_TLS)
        s->se_last = uv_now(&s->se_thr->t_loop);
    if (s->se_tls != NULL) {
        if (tls_feed(s->se_tls, b->base, (size_t)n) != 0) {
            sess_close(s);
            return;
        }
        if (s->se_state == SST_TLS) {
            tls_handshake_step(s);
            if (s->se_closing || s->se_state == SST_TLS) {
                sess_flush(s);
                return;
            }
        }
        for (;;) {
            buf_reserve(&s->se_in, 16384);
            int r = tls_read(s->se_tls, s->se_in.b_data + s->se_in.b_len,
                             s->se_in.b_cap - s->se_in.b_len);
            if (r > 0) {
                s->se_in.b_len += (size_t)r;
                continue;
            }
            if (r < 0) {
                log_debug("smtp client=%s TLS read: %s", s->se_ip, tls_last_error(s->se_tls));
                sess_flush(s);
                sess_close(s);
                return;
            }
            break;
        }
    } else {
        buf_append(&s->se_in, b->base, (size_t)n);
    }
    sess_process(s);
    sess_flush(s);
    /* sess_process may have paused at OUT_HIGH with the replies still in
     * se_out; when the flush hands them all to the kernel at once there is
     * no write callback to resume the session: see here whether it can. */
    sess_drained(s);
}

/* ------------------------------------------------------------ timer */

static void auth_delay_done(sess_t *s)
{
    sess_reply(s, "535 5.7.8 Authentication credentials invalid");
    sess_enter_state(s, SST_READY);
    if (s->se_errors >= s->se_cfg->c_smtp_max_errors && s->se_cfg->c_smtp_max_errors > 0) {
        sess_reply(s, "421 4.7.0 %s Error: too many errors, closing", s->se_cfg->c_hostname);
        sess_close_after_flush(s);
        return;
    }
    sess_resume(s);
}

static void sess_timer_cb(uv_timer_t *h);

/* Bytes from the client in the socket that the loop has not read yet. */
static bool input_waiting(sess_t *s)
{
    uv_os_fd_t fd;
    int n = 0;
    return uv_fileno((uv_handle_t *)&s->se_tcp, &fd) == 0 && ioctl(fd, FIONREAD, &n) == 0 && n > 0;
}

static void sess_timer_set(sess_t *s, uint64_t ms)
{
    uv_timer_start(&s->se_timer, sess_timer_cb, ms, 0);
}

static void sess_timer_cb(uv_timer_t *h)
{
    sess_t *s = h->data;
    SMTP_ASSERT_ON_LOOP(s->se_thr);
    if (s->se_closing)
        return;
    const cfg_t *cfg = s->se_cfg;
    if (s->se_delay) {
        s->se_delay = false;
        sess_timer_set(s, cfg->c_smtp_idle_timeout * 1000);
        auth_delay_done(s);
        return;
    }
    uint64_t to = (s->se_state == SST_DATA ? cfg->c_smtp_data_timeout : cfg->c_smtp_idle_timeout);
    to = to * 1000;
    if (s->se_shutting) {
        sess_close(s); /* the client does not read our last reply */
        return;
    }
    if (s->se_state == SST_COMMIT) {
        sess_timer_set(s, to);
        return;
    }
    uint64_t now = uv_now(&s->se_thr->t_loop);
    uint64_t idle = now - s->se_last;
    if (idle < to) {
        s->se_grace = false;
        sess_timer_set(s, to - idle);
        return;
    }
    /* libuv runs due timers before it polls for input: after the loop was
     * held up (a burst of work, a starved CPU), the client's next command
     * may be in the socket already. Look once, and if bytes wait, give the
     * loop a second to read them before calling the client idle. */
    if (!s->se_grace && input_waiting(s)) {
        s->se_grace = true;
        sess_timer_set(s, 1000);
        return;
    }
    log_info("smtp client=%s timeout in state %s", s->se_ip, sess_state_names[s->se_state]);
    sess_reply(s, "421 4.4.2 %s Error: timeout exceeded", cfg->c_hostname);
    sess_close_after_flush(s);
    /* If the client does not read, the grace of the shutdown is bounded by
     * this timer: close for good on the next expiry. */
    if (!s->se_closing)
        sess_timer_set(s, 10000);
}

/* ------------------------------------------------------------ accept */

/* One warning every 10 s at most while connections are refused for the
 * open files limit (a flood must not flood the log too). */
static void fd_cap_log(smtp_thread_t *t, sess_t *s, int cap)
{
    smtp_server_t *srv = t->t_srv;
    uint64_t now = uv_now(&t->t_loop);
    uint_fast64_t last = atomic_load(&srv->s_cap_logged);
    if ((last != 0 && now < last + 10000) ||
        !atomic_compare_exchange_strong(&srv->s_cap_logged, &last, now)) {
        atomic_fetch_add(&srv->s_cap_quiet, 1);
        return;
    }
    uint64_t quiet = atomic_exchange(&srv->s_cap_quiet, 0);
    log_warn("smtp client=%s refused: %d connections already, the most the open files limit "
             "(%llu) leaves room for; answering 421 4.3.2 (%llu more refused since the last "
             "warning)",
             s->se_ip, cap, (unsigned long long)atomic_load(&srv->s_nofile),
             (unsigned long long)quiet);
}

static void listen_cb(uv_stream_t *server, int status)
{
    smtp_thread_t *t = server->data;
    SMTP_ASSERT_ON_LOOP(t);
    smtp_server_t *srv = t->t_srv;
    if (status < 0) {
        log_warn("smtp accept: %s", uv_strerror(status));
        return;
    }
    sess_t *s = xcalloc(1, sizeof(*s));
    s->se_thr = t;
    s->se_start_us = clock_now_us();
    uv_tcp_init(&t->t_loop, &s->se_tcp);
    s->se_tcp.data = s;
    s->se_timer.data = s;
    s->se_handles = 1;
    s->se_next = t->t_sessions;
    if (t->t_sessions)
        t->t_sessions->se_prev = s;
    t->t_sessions = s;
    t->t_nsess++;
    snprintf(s->se_ip, sizeof(s->se_ip), "?");
    s->se_reports = t->t_lreports[(uv_tcp_t *)server - t->t_listen];
    if (uv_accept(server, (uv_stream_t *)&s->se_tcp) != 0) {
        s->se_closing = true;
        uv_close((uv_handle_t *)&s->se_tcp, handle_closed_cb);
        return;
    }
    uv_timer_init(&t->t_loop, &s->se_timer);
    s->se_handles = 2;
    pthread_mutex_lock(&srv->s_cfg_lock);
    s->se_cfg = cfg_ref(srv->s_cfg);
    pthread_mutex_unlock(&srv->s_cfg_lock);
    const cfg_t *cfg = s->se_cfg;

    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    if (uv_tcp_getpeername(&s->se_tcp, (struct sockaddr *)&ss, &sl) == 0) {
        net_ntop((struct sockaddr *)&ss, s->se_ip, sizeof(s->se_ip));
        s->se_loopback = net_is_loopback((struct sockaddr *)&ss);
        for (int i = 0; i < cfg->c_smtp_nrelay && !s->se_reports; i++) {
            if (net_cidr_match(&cfg->c_smtp_relay[i], (struct sockaddr *)&ss)) {
                s->se_relay_ok = true;
                break;
            }
        }
    }
    uv_tcp_nodelay(&s->se_tcp, 1);
    s->se_last = uv_now(&t->t_loop);
    STATS_INC(&srv->s_stats, ss_conn_total);
    uint64_t cur =
        atomic_fetch_add_explicit(&srv->s_stats.ss_conn_current, 1, memory_order_relaxed) + 1;
    s->se_counted = true;
    int cap = atomic_load_explicit(&srv->s_conn_cap, memory_order_relaxed);
    if (cap > 0 && cur > (uint64_t)cap) {
        /* Past what the open files limit leaves room for: the descriptors
         * left are for delivery, DNS, the spool and the control socket. */
        STATS_INC(&srv->s_stats, ss_conn_refused);
        fd_cap_log(t, s, cap);
        sess_reply(s, "421 4.3.2 %s Too many connections, try again later", cfg->c_hostname);
        sess_close_after_flush(s);
        sess_timer_set(s, 10000);
        return;
    }
    bool over = cfg->c_smtp_max_connections > 0 && cur > (uint64_t)cfg->c_smtp_max_connections;
    if (!over) {
        char key[64];
        s->se_counted_ip = smtp_ipconn_acquire(sess_ipkey(s, key, sizeof(key)),
                                               s->se_reports ? cfg->c_bounce_max_conn_per_ip
                                                             : cfg->c_smtp_max_conn_per_ip);
        over = !s->se_counted_ip;
    }
    if (over) {
        STATS_INC(&srv->s_stats, ss_conn_refused);
        log_info("smtp client=%s refused: too many connections", s->se_ip);
        sess_reply(s, "421 4.7.0 Too many connections");
        sess_close_after_flush(s);
        sess_timer_set(s, 10000);
        return;
    }
    log_debug("smtp client=%s connected", s->se_ip);
    sess_reply(s, "220 %s ESMTP sluice", cfg->c_hostname);
    sess_flush(s);
    if (s->se_closing)
        return;
    sess_timer_set(s, cfg->c_smtp_idle_timeout * 1000);
    sess_read_update(s);
}

/* ------------------------------------------------------------ threads */

static void thread_closed_cb(uv_handle_t *h)
{
    UNUSED(h);
}

static void thread_maybe_finish(smtp_thread_t *t)
{
    if (!t->t_stopping || t->t_finishing || t->t_nsess > 0)
        return;
    t->t_finishing = true;
    chan_close(t->t_chan);
    t->t_chan = NULL;
    uv_close((uv_handle_t *)&t->t_stop_async, thread_closed_cb);
    uv_close((uv_handle_t *)&t->t_grace, thread_closed_cb);
}

static void grace_cb(uv_timer_t *h)
{
    smtp_thread_t *t = h->data;
    SMTP_ASSERT_ON_LOOP(t);
    int n = 0;
    for (sess_t *s = t->t_sessions; s != NULL; s = s->se_next) {
        if (!s->se_closing) {
            sess_close(s);
            n++;
        }
    }
    if (n > 0)
        log_warn("smtp: grace period over, closed %d sessions", n);
    thread_maybe_finish(t);
}

static void stop_async_cb(uv_async_t *h)
{
    smtp_thread_t *t = h->data;
    SMTP_ASSERT_ON_LOOP(t);
    if (t->t_stopping)
        return;
    t->t_stopping = true;
    for (int i = 0; i < t->t_nlisten; i++)
        uv_close((uv_handle_t *)&t->t_listen[i], thread_closed_cb);
    t->t_nlisten = 0;
    for (sess_t *s = t->t_sessions, *next; s != NULL; s = next) {
        next = s->se_next;
        if (s->se_closing || s->se_shutting)
            continue;
        if (s->se_state == SST_DATA || s->se_state == SST_COMMIT) {
            s->se_stop_after = true; /* let the message finish */
            continue;
        }
        sess_reply(s, "421 4.3.2 Service shutting down");
        sess_close_after_flush(s);
    }
    uint64_t grace = atomic_load(&t->t_srv->s_grace_ms);
    uv_timer_start(&t->t_grace, grace_cb, grace, 0);
    thread_maybe_finish(t);
}

static void thread_main(void *arg)
{
    smtp_thread_t *t = arg;
    t->t_self = uv_thread_self();
    char name[16];
    snprintf(name, sizeof(name), "smtp%d", t->t_idx);
    log_thread_name(name);
    log_buffer(&t->t_loop); /* one write of the log a loop iteration, not one a line */
    uv_run(&t->t_loop, UV_RUN_DEFAULT);
    log_unbuffer(&t->t_loop);
    int rc = uv_loop_close(&t->t_loop);
    if (rc != 0)
        log_error("smtp thread %d: loop not closed cleanly: %s", t->t_idx, uv_strerror(rc));
}

/* ------------------------------------------------------------ listeners */

static void fmt_addr(const sockaddr_any_t *a, char *dst, size_t len)
{
    char host[INET6_ADDRSTRLEN];
    net_ntop((const struct sockaddr *)a, host, sizeof(host));
    int port = a->ss_family == AF_INET6 ? ntohs(((const struct sockaddr_in6 *)a)->sin6_port)
                                        : ntohs(((const struct sockaddr_in *)a)->sin_port);
    if (a->ss_family == AF_INET6)
        snprintf(dst, len, "[%s]:%d", host, port);
    else
        snprintf(dst, len, "%s:%d", host, port);
}

static int open_listener(const sockaddr_any_t *a, bool reuseport, int *out)
{
    socklen_t al =
        a->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    int fd = socket(a->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0)
        goto fail;
    if (a->ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)a, al) != 0)
        goto fail;
    *out = fd;
    return 0;
fail:;
    int e = -errno;
    close(fd);
    return e;
}

/* One address of smtp.listen or (reports) bounces.listen, on every
 * reception thread. */
static int bind_listener(smtp_server_t *srv, sockaddr_any_t a, bool reports, char *err,
                         size_t errlen)
{
    bool multi = srv->s_nthr > 1;
    char name[80];
    fmt_addr(&a, name, sizeof(name));
    for (int k = 0; k < srv->s_nthr; k++) {
        smtp_thread_t *t = &srv->s_thr[k];
        int fd = -1, rc;
        if (multi && k == 0) {
            /* SO_REUSEPORT would let us share a port with another live
             * daemon: bind once without it to find out. */
            rc = open_listener(&a, false, &fd);
            if (rc == 0) {
                socklen_t sl = sizeof(a);
                getsockname(fd, (struct sockaddr *)&a, &sl); /* port 0 -> real port */
                close(fd);
                fd = -1;
                fmt_addr(&a, name, sizeof(name));
            }
            if (rc == 0)
                rc = open_listener(&a, true, &fd);
        } else {
            rc = open_listener(&a, multi, &fd);
        }
        if (rc == 0 && !multi) {
            socklen_t sl = sizeof(a);
            getsockname(fd, (struct sockaddr *)&a, &sl);
        }
        if (rc == 0) {
            uv_tcp_init(&t->t_loop, &t->t_listen[t->t_nlisten]);
            t->t_listen[t->t_nlisten].data = t;
            t->t_lreports[t->t_nlisten] = reports;
            t->t_nlisten++;
            rc = uv_tcp_open(&t->t_listen[t->t_nlisten - 1], fd);
            if (rc == 0)
                rc = uv_listen((uv_stream_t *)&t->t_listen[t->t_nlisten - 1], SOMAXCONN, listen_cb);
            else
                close(fd);
        }
        if (rc != 0) {
            snprintf(err, errlen, "listen %s: %s", name, uv_strerror(rc));
            return SL_ECONFIG;
        }
    }
    log_info("smtp listening on %s (%d thread%s)%s", name, srv->s_nthr, multi ? "s" : "",
             reports ? " for reports only (bounces.listen)" : "");
    return 0;
}

static int bind_listeners(smtp_server_t *srv, const cfg_t *cfg, char *err, size_t errlen)
{
    for (int i = 0; i < cfg->c_smtp_nlisten; i++)
        if (bind_listener(srv, cfg->c_smtp_listen[i], false, err, errlen) != 0)
            return SL_ECONFIG;
    for (int i = 0; i < cfg->c_bounce_listen.ca_n; i++)
        if (bind_listener(srv, cfg->c_bounce_listen.ca_a[i], true, err, errlen) != 0)
            return SL_ECONFIG;
    return 0;
}

static bool file_exists(const char *p)
{
    struct stat st;
    return p != NULL && p[0] != '\0' && stat(p, &st) == 0;
}

static int load_tls(smtp_server_t *srv, const cfg_t *cfg, char *err, size_t errlen)
{
    const char *cert = cfg->c_tls_cert, *key = cfg->c_tls_key;
    if (cert == NULL || key == NULL || cert[0] == '\0' || key[0] == '\0') {
        log_info("smtp: no TLS certificate configured, STARTTLS not offered");
        return 0;
    }
    bool hc = file_exists(cert), hk = file_exists(key);
    if (!hc && !hk) {
        if (!cfg->c_tls_generate) {
            snprintf(err, errlen, "TLS: %s and %s are missing (and tls.generate is false)", cert,
                     key);
            return SL_ECONFIG;
        }
        char e[256];
        if (tls_selfsigned_create(cert, key, cfg->c_hostname, e, sizeof(e)) != 0) {
            snprintf(err, errlen, "TLS: %s", e);
            return SL_ECONFIG;
        }
        log_info("smtp: generated a self-signed certificate for %s in %s", cfg->c_hostname, cert);
    } else if (!hc || !hk) {
        snprintf(err, errlen, "TLS: %s is missing (both certificate and key are needed)",
                 hc ? key : cert);
        return SL_ECONFIG;
    }
    char e[512];
    srv->s_tls = tls_server_ctx_new(cert, key, e, sizeof(e));
    if (srv->s_tls == NULL) {
        snprintf(err, errlen, "TLS: %s", e);
        return SL_ECONFIG;
    }
    return 0;
}

/* Close every handle of a loop that never ran (new without start). */
static void thread_teardown_unstarted(smtp_thread_t *t)
{
    for (int i = 0; i < t->t_nlisten; i++)
        uv_close((uv_handle_t *)&t->t_listen[i], thread_closed_cb);
    t->t_nlisten = 0;
    if (t->t_chan)
        chan_close(t->t_chan);
    t->t_chan = NULL;
    uv_close((uv_handle_t *)&t->t_stop_async, thread_closed_cb);
    uv_close((uv_handle_t *)&t->t_grace, thread_closed_cb);
    uv_run(&t->t_loop, UV_RUN_DEFAULT);
    uv_loop_close(&t->t_loop);
}

/* ------------------------------------------------------------ public */

int smtp_server_new(cfg_t *cfg, queue_t *q, smtp_server_t **out, char *err, size_t errlen)
{
    SL_ASSERT_MAIN_THREAD();
    smtp_server_t *srv = xcalloc(1, sizeof(*srv));
    int ninit = 0;
    pthread_mutex_init(&srv->s_cfg_lock, NULL);
    srv->s_cfg = cfg_ref(cfg);
    srv->s_q = q;
    srv->s_nthr = cfg->c_smtp_threads > 0 ? cfg->c_smtp_threads : 1;
    srv->s_thr = xcalloc((size_t)srv->s_nthr, sizeof(*srv->s_thr));
    for (int i = 0; i < srv->s_nthr; i++) {
        smtp_thread_t *t = &srv->s_thr[i];
        t->t_srv = srv;
        t->t_idx = i;
        if (uv_loop_init(&t->t_loop) != 0) {
            snprintf(err, errlen, "smtp: cannot create event loop");
            goto fail;
        }
        t->t_chan = chan_new(&t->t_loop, queue_reply_cb, t);
        uv_async_init(&t->t_loop, &t->t_stop_async, stop_async_cb);
        t->t_stop_async.data = t;
        uv_timer_init(&t->t_loop, &t->t_grace);
        t->t_grace.data = t;
        ninit++;
    }
    if (load_tls(srv, cfg, err, errlen) != 0)
        goto fail;
    if (bind_listeners(srv, cfg, err, errlen) != 0)
        goto fail;
    *out = srv;
    return 0;
fail:
    for (int i = 0; i < ninit; i++)
        thread_teardown_unstarted(&srv->s_thr[i]);
    tls_ctx_free(srv->s_tls);
    cfg_unref(srv->s_cfg);
    pthread_mutex_destroy(&srv->s_cfg_lock);
    free(srv->s_thr);
    free(srv);
    return SL_ECONFIG;
}

int smtp_server_start(smtp_server_t *s)
{
    SL_ASSERT_MAIN_THREAD();
    uint64_t cap = mem_budget_cap(s->s_cfg->c_smtp_max_memory, 0);
    if (cap < s->s_cfg->c_smtp_max_memory)
        log_warn("smtp: address space limit (ulimit -v): smtp.max_memory capped at %llu MB",
                 (unsigned long long)(cap >> 20));
    atomic_store(&s->s_as_cap, cap);
    atomic_store(&s->s_stats.ss_mem_limit, cap);
    for (int i = 0; i < s->s_nthr; i++) {
        int rc = uv_thread_create(&s->s_thr[i].t_tid, thread_main, &s->s_thr[i]);
        if (rc != 0) {
            log_error("smtp: cannot start thread: %s", uv_strerror(rc));
            /* the threads already running are stopped by smtp_server_stop */
            s->s_nthr = i;
            s->s_started = i > 0;
            return rc;
        }
    }
    s->s_started = true;
    return 0;
}

void smtp_server_stop(smtp_server_t *s, uint64_t grace_ms)
{
    SL_ASSERT_MAIN_THREAD();
    if (s == NULL || !s->s_started || s->s_stopped)
        return;
    atomic_store(&s->s_grace_ms, grace_ms);
    for (int i = 0; i < s->s_nthr; i++)
        uv_async_send(&s->s_thr[i].t_stop_async);
    for (int i = 0; i < s->s_nthr; i++)
        uv_thread_join(&s->s_thr[i].t_tid);
    s->s_stopped = true;
}

void smtp_server_free(smtp_server_t *s)
{
    SL_ASSERT_MAIN_THREAD();
    if (s == NULL)
        return;
    if (s->s_started && !s->s_stopped)
        smtp_server_stop(s, 0);
    if (!s->s_started)
        for (int i = 0; i < s->s_nthr; i++)
            thread_teardown_unstarted(&s->s_thr[i]);
    tls_ctx_free(s->s_tls);
    cfg_unref(s->s_cfg);
    pthread_mutex_destroy(&s->s_cfg_lock);
    free(s->s_thr);
    free(s);
}

const smtp_server_stats_t *smtp_server_stats(const smtp_server_t *s)
{
    return &s->s_stats;
}

void smtp_server_set_conn_cap(smtp_server_t *s, int cap, uint64_t nofile)
{
    atomic_store(&s->s_nofile, nofile);
    atomic_store(&s->s_conn_cap, cap);
}

void smtp_server_set_config(smtp_server_t *s, cfg_t *cfg)
{
    SL_ASSERT_MAIN_THREAD();
    cfg_t *nc = cfg_ref(cfg);
    pthread_mutex_lock(&s->s_cfg_lock);
    cfg_t *old = s->s_cfg;
    s->s_cfg = nc;
    pthread_mutex_unlock(&s->s_cfg_lock);
    cfg_unref(old);
    atomic_store(&s->s_as_when, 0); /* look at the limit again with the new value */
}
