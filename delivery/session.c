/*
 * session.c - the SMTP client: one connection to one MX address, driven by
 * a state machine (dlv_session_enter_state logs old -> new at debug).
 *
 *   CONNECT -> GREETING -> EHLO (5xx: HELO) -> [STARTTLS -> TLS -> EHLO]
 *   -> READY -> MAIL -> RCPT... -> DATA -> DOT -> READY ... -> QUIT
 *
 * Connect failures, timeouts and a non-2xx greeting move to the next
 * address of the destination (RFC 5321 5.1). STARTTLS follows the domain's
 * policy (RFC 3207): opportunistic falls back to a new plaintext
 * connection, required/verify defer with 4.7.4/4.7.5. With PIPELINING,
 * MAIL, every RCPT and DATA go in one write (RFC 2920) and every RCPT
 * reply is checked before the body goes out. A connection lost before the
 * reply to the final dot defers every recipient of the transaction.
 *
 * Every byte leaves through session_out(), which goes through TLS once
 * STARTTLS succeeded. What the server advertised is honoured when a
 * dispatch is taken (dlv_session_take): SMTPUTF8 per recipient, then the
 * message as this server gets it (prepare.c: a 7-bit copy without
 * 8BITMIME, DKIM over what is sent, SIZE). The EHLO keywords and the MAIL
 * and RCPT lines are commands.c's. A transaction is a list of recipients: those a
 * server refuses as "too many" (452/552) go in the next one. Every reply
 * goes to the judge (trouble.c, session_judge): its verdict says whose fate
 * the reply decides, if anyone's, and the session records it; the
 * outcomes go out through dlv_report at the end of each transaction.
 *
 * Thread: a session belongs to its destination's delivery thread. It owns
 * its dispatch until every recipient has an outcome; its memory is freed
 * in the last close callback of its handles.
 */
#include "delivery/delivery_int.h"

#include <assert.h>
#include <ctype.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef enum {
    S_CONNECT = 0,
    S_GREETING,
    S_EHLO,
    S_HELO,
    S_STARTTLS,
    S_TLS,
    S_READY,
    S_MAIL,
    S_RCPT,
    S_DATA,
    S_DOT,
    S_RSET,
    S_QUIT,
    S_CLOSED,
} dlv_sstate_t;

static const char *const dlv_sstate_names[] = {
    "CONNECT", "GREETING", "EHLO", "HELO", "STARTTLS", "TLS",  "READY",
    "MAIL",    "RCPT",     "DATA", "DOT",  "RSET",     "QUIT", "CLOSED",
};

/* A recipient of the dispatch: not tried yet (or carried over to the next
 * transaction), accepted at RCPT, outcome known, outcome reported. */
enum { RR_PENDING = 0, RR_ACCEPTED, RR_DONE, RR_SENT };

typedef struct dlv_rres {
    int rr_state;
    dlv_result_t rr_res; /* RR_DONE: the judge's result */
    char *rr_text;       /* owned */
} dlv_rres_t;

struct dlv_session {
    dlv_session_t *s_next;
    dlv_dest_t *s_dest;
    dlv_thread_t *s_t;
    uv_tcp_t s_tcp;
    uv_timer_t s_timer;
    uv_connect_t s_creq;
    int s_handles;
    bool s_tcp_open;
    bool s_tcp_closing;
    bool s_connected; /* TCP established (counted in ds_conn_open) */
    bool s_closing;
    bool s_ever_ready;
    bool s_idle;
    bool s_no_tls;
    dlv_sstate_t s_state;
    int s_addr;
    int s_tries;
    /* server extensions (EHLO) */
    dlv_ehlo_t s_x;
    /* TLS */
    tls_conn_t *s_tls;
    dlv_dane_t *s_dane;     /* the host's DANE verdict (ON or FAILED), a reference; dane.c */
    const char *s_tls_fail; /* RFC 8460 result type of the TLS failure being handled */
    bool s_tls_done;
    char s_tls_ver[24];
    char s_cipher[64];
    /* input */
    buf_t s_in;
    size_t s_inpos;
    bool s_in_reset;
    smtp_reply_t s_reply;
    char s_text[1024]; /* the current reply's text on one line */
    char s_host[256];  /* copies: the route may be refreshed meanwhile */
    sockaddr_any_t s_sa;
    char s_mx_ip[48];
    char s_src_ip[48];
    int s_port;
    /* transaction */
    queue_dispatch_t *s_qd;
    dlv_rres_t *s_res;
    int *s_txn;     /* recipient indexes of the transaction, in RCPT order */
    int s_n;        /* recipients in the transaction */
    int s_ri;       /* next RCPT reply expected (index into s_txn) */
    int s_nacc;     /* accepted at RCPT */
    int s_pend;     /* no recipient below this index is RR_PENDING */
    int s_rcpt_cap; /* learned from "too many recipients" (0 = none) */
    bool s_pipelined;
    bool s_mail_failed;
    bool s_discard;
    bool s_need_rset;
    buf_t s_body;
    dlv_msg_t s_m; /* the dispatch's message as this server gets it (prepare.c) */
    int s_msgs;
    int s_vmta; /* virtual MTA: source address, EHLO name (vmta.c) */
    uint64_t s_born;
    uint64_t s_opened;   /* clock_mono_us() at dlv_session_new (dlv_dest_conn_ok) */
    uint64_t s_txn_t0;   /* clock_mono_us() when the dispatch was taken (dlv_dest_txn_done) */
    dlv_verdict_t s_err; /* the last connection-level error, for dlv_dest_conn_failed */
    char s_rbuf[DLV_RBUF];
};

typedef struct dlv_wreq {
    uv_write_t w_req;
    buf_t w_buf;
    dlv_session_t *w_s;
    bool w_body;
} dlv_wreq_t;

static void dlv_session_enter_state(dlv_session_t *s, dlv_sstate_t st);
static void session_connect(dlv_session_t *s);
static void session_connect_cb(uv_connect_t *req, int status);
static void session_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void session_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);
static void session_write_cb(uv_write_t *req, int status);
static void session_timer_cb(uv_timer_t *t);
static void session_timer(dlv_session_t *s, uint64_t seconds);
static void session_wire_write(dlv_session_t *s, buf_t *b, bool body);
static void session_flush_tls(dlv_session_t *s, bool body);
static void session_out(dlv_session_t *s, buf_t *b, bool body);
static void session_send(dlv_session_t *s, const char *p, size_t n);
static void session_send_body(dlv_session_t *s);
static void session_process_input(dlv_session_t *s);
static void session_on_reply(dlv_session_t *s);
static void session_conn_error(dlv_session_t *s, const dlv_verdict_t *v);
static void session_conn_fail(dlv_session_t *s, const char *status, const char *text);
static void session_reply_conn_error(dlv_session_t *s, const dlv_verdict_t *v, bool quit);
static void session_lost(dlv_session_t *s, const char *text);
static void session_abort(dlv_session_t *s, const dlv_verdict_t *v, bool quit);
static void session_close(dlv_session_t *s);
static void session_quit(dlv_session_t *s);
static void session_ready(dlv_session_t *s);
static void session_keep_tls_session(dlv_session_t *s);
static void session_fail_dispatch(dlv_session_t *s, const char *status, const char *text);
static bool session_utf8_ascii_copy(dlv_session_t *s);
static void session_local(dlv_session_t *s, const char *status, const char *text, dlv_verdict_t *v);
static void session_record(dlv_session_t *s, int i, const dlv_verdict_t *v);
static void session_report(dlv_session_t *s);
static void session_next_work(dlv_session_t *s);
static void session_start_txn(dlv_session_t *s);
static void session_end_txn(dlv_session_t *s, bool completed);
static void session_finish_dispatch(dlv_session_t *s);
static void session_tls_start(dlv_session_t *s);
static void session_tls_step(dlv_session_t *s);
static void session_tls_failed(dlv_session_t *s, const char *why);
static void session_policy_fail(dlv_session_t *s, const char *status, const char *text);
static void session_dane_fail(dlv_session_t *s, const char *type, const char *why, bool quit);
static const char *session_tls_policy(const dlv_session_t *s);
static void session_judge(dlv_session_t *s, dlv_verdict_t *v);

static const cfg_t *S_CFG(const dlv_session_t *s)
{
    return s->s_t->t_cfg;
}

static dlv_stats_t *S_STATS(const dlv_session_t *s)
{
    return &s->s_t->t_d->d_stats;
}

static const char *S_HOST(const dlv_session_t *s)
{
    return s->s_host;
}

static void dlv_session_enter_state(dlv_session_t *s, dlv_sstate_t st)
{
    log_debug("delivery: session %s[%s]:%d %s -> %s", S_HOST(s), s->s_mx_ip, s->s_port,
              dlv_sstate_names[s->s_state], dlv_sstate_names[st]);
    s->s_state = st;
}

dlv_session_t *dlv_session_next(const dlv_session_t *s)
{
    DLV_ASSERT_ON_LOOP(s->s_t);
    return s->s_next;
}

bool dlv_session_idle(const dlv_session_t *s)
{
    DLV_ASSERT_ON_LOOP(s->s_t);
    return s->s_idle && !s->s_closing && s->s_qd == NULL;
}

bool dlv_session_connecting(const dlv_session_t *s)
{
    DLV_ASSERT_ON_LOOP(s->s_t);
    return !s->s_closing && !s->s_ever_ready;
}

bool dlv_session_closing(const dlv_session_t *s)
{
    DLV_ASSERT_ON_LOOP(s->s_t);
    return s->s_closing;
}

/* ------------------------------------------------------------ life cycle */

int dlv_session_vmta(const dlv_session_t *s)
{
    DLV_ASSERT_ON_LOOP(s->s_t);
    return s->s_vmta;
}

dlv_session_t *dlv_session_new(dlv_dest_t *de, int vmta)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    if (de->de_naddr == 0)
        return NULL;
    dlv_session_t *s = xcalloc(1, sizeof(*s));
    s->s_dest = de;
    s->s_t = de->de_t;
    s->s_vmta = vmta;
    s->s_opened = clock_mono_us();
    s->s_next = de->de_sessions;
    de->de_sessions = s;
    de->de_nconn++;
    buf_init(&s->s_in, 0);
    buf_init(&s->s_body, 0);
    buf_init(&s->s_m.m_dkim, 0);
    buf_init(&s->s_m.m_copy, 0);
    s->s_no_tls = de->de_policy == CFG_TLS_DISABLED ||
                  (de->de_policy == CFG_TLS_OPPORTUNISTIC && de->de_notls_until > clock_mono_us());
    uv_timer_init(&s->s_t->t_loop, &s->s_timer);
    s->s_timer.data = s;
    s->s_handles = 1;
    session_connect(s);
    return s;
}

static void session_reset_conn_state(dlv_session_t *s)
{
    memset(&s->s_x, 0, sizeof(s->s_x));
    if (s->s_tls) {
        tls_conn_free(s->s_tls);
        s->s_tls = NULL;
    }
    s->s_tls_done = false;
    s->s_tls_fail = NULL;
    s->s_tls_ver[0] = s->s_cipher[0] = '\0';
    s->s_rcpt_cap = 0;
    buf_reset(&s->s_in);
    s->s_inpos = 0;
    smtp_reply_reset(&s->s_reply);
}

static void session_connect(dlv_session_t *s)
{
    dlv_dest_t *de = s->s_dest;
    if (s->s_addr >= de->de_naddr)
        s->s_addr = 0;
    snprintf(s->s_host, sizeof(s->s_host), "%s", de->de_addrs[s->s_addr].da_host);
    s->s_sa = de->de_addrs[s->s_addr].da_sa;
    dlv_dane_t *dn = de->de_addrs[s->s_addr].da_dane;
    dlv_dane_unref(s->s_dane);
    s->s_dane = dn != NULL && dn->dn_state != DLV_DANE_NONE ? dlv_dane_ref(dn) : NULL;
    const sockaddr_any_t *sa = &s->s_sa;
    net_ntop((const struct sockaddr *)sa, s->s_mx_ip, sizeof(s->s_mx_ip));
    s->s_port = ntohs(sa->ss_family == AF_INET6 ? ((const struct sockaddr_in6 *)sa)->sin6_port
                                                : ((const struct sockaddr_in *)sa)->sin_port);
    session_reset_conn_state(s);
    s->s_state = S_CONNECT;
    log_debug("delivery: connecting to %s[%s]:%d for %s", S_HOST(s), s->s_mx_ip, s->s_port,
              de->de_domain);
    uv_tcp_init(&s->s_t->t_loop, &s->s_tcp);
    s->s_tcp.data = s;
    s->s_tcp_open = true;
    s->s_handles++;
    uv_tcp_nodelay(&s->s_tcp, 1);
    int brc = dlv_dest_bind(de, s->s_vmta, &s->s_tcp); /* the virtual MTA's source address */
    if (brc != 0) {
        char text[512];
        snprintf(text, sizeof(text), "bind source address for %s[%s]:%d: %s", S_HOST(s), s->s_mx_ip,
                 s->s_port, uv_strerror(brc));
        session_conn_fail(s, "4.4.1", text);
        return;
    }
    if (s->s_dane != NULL && s->s_dane->dn_state == DLV_DANE_FAILED) {
        /* RFC 7672 2.2: this host's TLSA records cannot be known: not
         * used (4.7.5), the next MX is */
        session_dane_fail(s, s->s_dane->dn_failure, s->s_dane->dn_why, false);
        return;
    }
    s->s_creq.data = s;
    int rc = uv_tcp_connect(&s->s_creq, &s->s_tcp, (const struct sockaddr *)sa, session_connect_cb);
    if (rc != 0) {
        char text[512];
        snprintf(text, sizeof(text), "connect to %s[%s]:%d: %s", S_HOST(s), s->s_mx_ip, s->s_port,
                 uv_strerror(rc));
        session_conn_fail(s, "4.4.1", text);
        return;
    }
    session_timer(s, S_CFG(s)->c_to_connect);
}

static void session_connect_cb(uv_connect_t *req, int status)
{
    dlv_session_t *s = req->data;
    if (s->s_closing || s->s_tcp_closing || status == UV_ECANCELED)
        return;
    if (status < 0) {
        char text[512];
        snprintf(text, sizeof(text), "connect to %s[%s]:%d: %s", S_HOST(s), s->s_mx_ip, s->s_port,
                 uv_strerror(status));
        session_conn_fail(s, "4.4.1", text);
        return;
    }
    s->s_connected = true;
    s->s_born = clock_mono_us();
    atomic_fetch_add_explicit(&S_STATS(s)->ds_conn_open, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&S_STATS(s)->ds_conn_total, 1, memory_order_relaxed);
    sockaddr_any_t local;
    int len = sizeof(local);
    if (uv_tcp_getsockname(&s->s_tcp, (struct sockaddr *)&local, &len) == 0)
        net_ntop((struct sockaddr *)&local, s->s_src_ip, sizeof(s->s_src_ip));
    uv_read_start((uv_stream_t *)&s->s_tcp, session_alloc_cb, session_read_cb);
    dlv_session_enter_state(s, S_GREETING);
    session_timer(s, S_CFG(s)->c_to_greeting);
}

static void session_handle_closed_cb(uv_handle_t *h)
{
    dlv_session_t *s = h->data;
    if (h == (uv_handle_t *)&s->s_tcp) {
        s->s_tcp_closing = false;
        s->s_tcp_open = false;
    }
    if (--s->s_handles > 0) {
        if (!s->s_closing && h == (uv_handle_t *)&s->s_tcp)
            session_connect(s); /* reconnect: next address or plaintext */
        return;
    }
    session_reset_conn_state(s);
    buf_free(&s->s_in);
    buf_free(&s->s_body);
    buf_free(&s->s_m.m_dkim);
    buf_free(&s->s_m.m_copy);
    smtp_reply_free(&s->s_reply);
    dlv_dane_unref(s->s_dane);
    free(s);
}

/* Close the TCP handle and connect again (to s_addr) in its close callback. */
static void session_reconnect(dlv_session_t *s)
{
    uv_timer_stop(&s->s_timer);
    if (s->s_connected) {
        s->s_connected = false;
        atomic_fetch_sub_explicit(&S_STATS(s)->ds_conn_open, 1, memory_order_relaxed);
    }
    s->s_tcp_closing = true;
    uv_close((uv_handle_t *)&s->s_tcp, session_handle_closed_cb);
}

/* Unlink from the destination and close the handles. The caller has dealt
 * with the dispatch (s_qd is NULL). */
static void session_close(dlv_session_t *s)
{
    if (s->s_closing)
        return;
    dlv_dest_t *de = s->s_dest;
    s->s_closing = true;
    dlv_session_enter_state(s, S_CLOSED);
    for (dlv_session_t **pp = &de->de_sessions; *pp; pp = &(*pp)->s_next) {
        if (*pp == s) {
            *pp = s->s_next;
            break;
        }
    }
    de->de_nconn--;
    dlv_dest_conn_release(de, s->s_vmta);
    if (s->s_connected) {
        s->s_connected = false;
        atomic_fetch_sub_explicit(&S_STATS(s)->ds_conn_open, 1, memory_order_relaxed);
    }
    session_keep_tls_session(s); /* the freshest ticket for the next one */
    uv_timer_stop(&s->s_timer);
    uv_close((uv_handle_t *)&s->s_timer, session_handle_closed_cb);
    if (s->s_tcp_open && !s->s_tcp_closing) {
        s->s_tcp_closing = true;
        uv_close((uv_handle_t *)&s->s_tcp, session_handle_closed_cb);
    }
}

void dlv_session_shutdown(dlv_session_t *s)
{
    DLV_ASSERT_ON_LOOP(s->s_t);
    if (s->s_closing)
        return;
    if (s->s_qd != NULL) { /* in flight at stop: not reported (at-least-once) */
        for (int i = 0; i < s->s_qd->qd_nrcpt; i++)
            free(s->s_res[i].rr_text);
        free(s->s_res);
        s->s_res = NULL;
        free(s->s_txn);
        s->s_txn = NULL;
        queue_dispatch_free(s->s_qd);
        s->s_qd = NULL;
        session_close(s);
        return;
    }
    if (s->s_state == S_READY && s->s_connected && !s->s_tcp_closing) {
        session_quit(s);
        session_timer(s, 1); /* short deadline at shutdown */
        return;
    }
    session_close(s);
}

static void session_quit(dlv_session_t *s)
{
    s->s_idle = false;
    session_send(s, "QUIT\r\n", 6);
    dlv_session_enter_state(s, S_QUIT);
    session_timer(s, S_CFG(s)->c_to_quit);
}

/* ------------------------------------------------------------ I/O */

static void session_timer(dlv_session_t *s, uint64_t seconds)
{
    uint64_t ms = seconds * 1000;
    if (ms == 0)
        ms = 1;
    uv_timer_start(&s->s_timer, session_timer_cb, ms, 0);
}

static void session_timer_cb(uv_timer_t *t)
{
    dlv_session_t *s = t->data;
    if (s->s_closing)
        return;
    if (s->s_state == S_READY && s->s_idle) { /* idle long enough */
        session_quit(s);
        return;
    }
    if (s->s_state == S_QUIT) {
        session_close(s);
        return;
    }
    char text[128];
    snprintf(text, sizeof(text), "timeout in state %s", dlv_sstate_names[s->s_state]);
    session_lost(s, text);
}

/* The socket itself: b (consumed) is already in its on-the-wire form,
 * plaintext before STARTTLS or TLS records after it. Only session_out and
 * session_flush_tls call this.
 * Straight to the kernel when nothing is queued before it (uv_try_write):
 * a uv_write costs libuv an epoll_ctl and a deferred callback even when
 * the kernel took every byte at once, two per message. What the kernel
 * does not take, and any error, goes through uv_write as before (an error
 * is then reported by its callback, never from inside the caller). */
static void session_wire_write(dlv_session_t *s, buf_t *b, bool body)
{
    if (b->b_len == 0) {
        buf_free(b);
        return;
    }
    uv_buf_t tb = uv_buf_init(b->b_data, (unsigned)b->b_len);
    int n = uv_try_write((uv_stream_t *)&s->s_tcp, &tb, 1);
    if (n == (int)b->b_len) {
        buf_free(b);
        if (body && s->s_state == S_DOT) /* as session_write_cb does */
            session_timer(s, S_CFG(s)->c_to_data_done);
        return;
    }
    if (n > 0)
        buf_consume(b, (size_t)n);
    dlv_wreq_t *w = xmalloc(sizeof(*w));
    w->w_buf = *b;
    w->w_s = s;
    w->w_body = body;
    w->w_req.data = w;
    b->b_data = NULL;
    b->b_len = b->b_cap = 0;
    uv_buf_t ub = uv_buf_init(w->w_buf.b_data, (unsigned)w->w_buf.b_len);
    int rc = uv_write(&w->w_req, (uv_stream_t *)&s->s_tcp, &ub, 1, session_write_cb);
    if (rc != 0) {
        buf_free(&w->w_buf);
        free(w);
        char text[128];
        snprintf(text, sizeof(text), "write: %s", uv_strerror(rc));
        session_lost(s, text);
    }
}

static void session_write_cb(uv_write_t *req, int status)
{
    dlv_wreq_t *w = req->data;
    dlv_session_t *s = w->w_s;
    bool body = w->w_body;
    buf_free(&w->w_buf);
    free(w);
    if (s->s_closing || s->s_tcp_closing || status == UV_ECANCELED)
        return;
    if (status < 0) {
        char text[128];
        snprintf(text, sizeof(text), "write: %s", uv_strerror(status));
        session_lost(s, text);
        return;
    }
    if (body && s->s_state == S_DOT) /* body sent: now wait for the final reply */
        session_timer(s, S_CFG(s)->c_to_data_done);
}

/* TLS records the engine has ready (handshake, alerts, encrypted data). */
static void session_flush_tls(dlv_session_t *s, bool body)
{
    buf_t b;
    buf_init(&b, 0);
    tls_pending_out(s->s_tls, &b);
    session_wire_write(s, &b, body);
}

/* Every SMTP byte the client sends (commands and the body) goes out here,
 * and only here: once STARTTLS was answered 220 (s_tls set), through the
 * TLS layer, never to the socket (RFC 3207 4.2; a lock-step RCPT written
 * straight to the socket once went out in the clear). Consumes b. */
static void session_out(dlv_session_t *s, buf_t *b, bool body)
{
    if (s->s_tls == NULL) {
        session_wire_write(s, b, body);
        return;
    }
    /* Nothing is sent between STARTTLS and the end of the handshake: a
     * caller that does is a bug (the server would read it as TLS). */
    assert(s->s_tls_done);
    int rc = s->s_tls_done ? tls_write(s->s_tls, b->b_data, b->b_len) : -1;
    buf_free(b);
    if (rc < 0) {
        session_lost(s, "TLS write failed");
        return;
    }
    session_flush_tls(s, body);
}

/* One command (or a few, pipelined) from memory: see session_out. */
static void session_send(dlv_session_t *s, const char *p, size_t n)
{
    buf_t b;
    buf_init(&b, n);
    buf_append(&b, p, n);
    session_out(s, &b, false);
}

/* The dot-stuffed body (s_body) goes out as one write: see session_out. */
static void session_send_body(dlv_session_t *s)
{
    buf_t b = s->s_body;
    buf_init(&s->s_body, 0);
    session_out(s, &b, true);
}

static void session_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    dlv_session_t *s = h->data;
    UNUSED(hint);
    buf->base = s->s_rbuf;
    buf->len = sizeof(s->s_rbuf);
}

static void session_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    dlv_session_t *s = st->data;
    if (s->s_closing || s->s_tcp_closing)
        return;
    if (nread == 0)
        return;
    if (nread < 0) {
        if (s->s_state == S_QUIT) {
            session_close(s);
            return;
        }
        char text[128];
        snprintf(text, sizeof(text), "%s",
                 nread == UV_EOF ? "connection closed by server" : uv_strerror((int)nread));
        session_lost(s, text);
        return;
    }
    if (s->s_tls == NULL) {
        buf_append(&s->s_in, buf->base, (size_t)nread);
    } else {
        if (tls_feed(s->s_tls, buf->base, (size_t)nread) < 0) {
            session_lost(s, "TLS input error");
            return;
        }
        if (!s->s_tls_done) {
            session_tls_step(s);
            return;
        }
        char tmp[8192];
        int r;
        while ((r = tls_read(s->s_tls, tmp, sizeof(tmp))) > 0)
            buf_append(&s->s_in, tmp, (size_t)r);
        if (r < 0) {
            if (s->s_state == S_QUIT) {
                session_close(s);
                return;
            }
            session_lost(s, "TLS connection closed by server");
            return;
        }
        session_flush_tls(s, false);
        if (s->s_closing || s->s_tcp_closing)
            return;
    }
    session_process_input(s);
}

/* Split the input into lines and feed the reply parser. */
static void session_process_input(dlv_session_t *s)
{
    s->s_in_reset = false;
    for (;;) {
        if (s->s_closing || s->s_tcp_closing || s->s_in_reset)
            return;
        char *start = s->s_in.b_data + s->s_inpos;
        size_t avail = s->s_in.b_len - s->s_inpos;
        char *nl = avail ? memchr(start, '\n', avail) : NULL;
        if (nl == NULL)
            break;
        size_t len = (size_t)(nl - start);
        s->s_inpos += len + 1;
        if (len > 0 && start[len - 1] == '\r')
            len--;
        int rc = smtp_reply_feed(&s->s_reply, start, len, DLV_REPLY_MAX);
        if (rc == SL_ETOOBIG) {
            session_lost(s, "reply too long");
            return;
        }
        if (rc < 0) {
            session_lost(s, "malformed reply from server");
            return;
        }
        if (rc == 1) {
            /* one line of text for logs and outcomes */
            size_t k = 0;
            const buf_t *t = &s->s_reply.sr_text;
            for (size_t i = 0; i < t->b_len && k + 1 < sizeof(s->s_text); i++) {
                char c = t->b_data[i];
                s->s_text[k++] = (c == '\n' || c == '\r' || c == '\0') ? ' ' : c;
            }
            s->s_text[k] = '\0';
            session_on_reply(s);
            if (!s->s_in_reset)
                smtp_reply_reset(&s->s_reply);
        }
    }
    if (s->s_in.b_len - s->s_inpos > DLV_REPLY_MAX) {
        session_lost(s, "reply too long");
        return;
    }
    buf_consume(&s->s_in, s->s_inpos);
    s->s_inpos = 0;
}

/* ------------------------------------------------------------ failures */

/* A refusal before any transaction (greeting, EHLO, HELO): the judge's
 * verdict on it becomes the session's connection error (after a QUIT when
 * quit is set). */
static void session_reply_conn_error(dlv_session_t *s, const dlv_verdict_t *v, bool quit)
{
    if (quit)
        session_send(s, "QUIT\r\n", 6);
    session_conn_error(s, v);
}

/* Before the session was ready, without a reply (connect, timeout, TLS):
 * this address failed. */
static void session_conn_fail(dlv_session_t *s, const char *status, const char *text)
{
    dlv_reply_t r = {.rp_stage = DLV_STAGE_CONNECT,
                     .rp_status = status,
                     .rp_text = text,
                     .rp_domain = s->s_dest->de_domain,
                     .rp_mx = S_HOST(s),
                     .rp_mx_ip = s->s_mx_ip,
                     .rp_port = s->s_port};
    dlv_verdict_t v;
    dlv_judge(&r, &v);
    session_conn_error(s, &v);
}

/* This address failed: try the next one; after the last, the destination
 * hears of the last error. */
static void session_conn_error(dlv_session_t *s, const dlv_verdict_t *v)
{
    dlv_dest_t *de = s->s_dest;
    if (v != &s->s_err)
        s->s_err = *v;
    log_info("delivery: %s: %s", de->de_domain, log_esc(v->v_text)); /* holds the peer's reply */
    s->s_tries++;
    if (s->s_addr + 1 < de->de_naddr && s->s_tries < DLV_MAX_TRIES && !s->s_t->t_stopping) {
        s->s_addr++;
        session_reconnect(s);
        return;
    }
    session_close(s);
    dlv_dest_conn_failed(de, &s->s_err);
}

/* Connection lost, timed out, or the server spoke nonsense. */
static void session_lost(dlv_session_t *s, const char *text)
{
    if (s->s_closing)
        return;
    char buf[640];
    switch (s->s_state) {
    case S_CONNECT:
    case S_GREETING:
    case S_EHLO:
    case S_HELO:
    case S_STARTTLS:
        snprintf(buf, sizeof(buf), "%s[%s]:%d: %s", S_HOST(s), s->s_mx_ip, s->s_port, text);
        session_conn_fail(s, "4.4.2", buf);
        return;
    case S_TLS:
        session_tls_failed(s, text);
        return;
    default:
        break;
    }
    if (s->s_qd != NULL) {
        snprintf(buf, sizeof(buf), "%s with %s[%s] %s: %s",
                 s->s_state == S_DOT ? "connection lost during DATA" : "connection lost", S_HOST(s),
                 s->s_mx_ip,
                 s->s_state == S_DOT ? "before the final reply" : "during the transaction", text);
        dlv_verdict_t v;
        session_local(s, "4.4.2", buf, &v);
        session_abort(s, &v, false);
        return;
    }
    log_debug("delivery: %s[%s]: %s", S_HOST(s), s->s_mx_ip, log_esc(text));
    session_close(s);
    dlv_dest_kick(s->s_dest);
}

/* The dispatch in progress ends here: every recipient without a final
 * answer (this transaction's accepted ones and those not tried yet) gets
 * verdict v (a deferral), nothing is lost; the connection closes, after a
 * QUIT when the server still reads commands (quit). */
static void session_abort(dlv_session_t *s, const dlv_verdict_t *v, bool quit)
{
    queue_dispatch_t *qd = s->s_qd;
    s->s_n = 0;
    for (int i = 0; i < qd->qd_nrcpt; i++) {
        dlv_rres_t *r = &s->s_res[i];
        if (r->rr_state == RR_SENT)
            continue;
        s->s_txn[s->s_n++] = i;
        if (r->rr_state == RR_DONE) /* refused at RCPT: that answer stands */
            continue;
        session_record(s, i, v);
    }
    log_info("delivery: %s: %s", s->s_dest->de_domain, log_esc(v->v_text));
    if (quit && !s->s_tcp_closing)
        session_send(s, "QUIT\r\n", 6);
    session_close(s);
    session_end_txn(s, false); /* emits and frees the dispatch; no new work */
    dlv_dest_kick(s->s_dest);
}

/* The tls_failure record (docs/records.md): TLS with this host failed
 * or fell short of the policy; action says what sluice did about it
 * ("deferred": the recipients wait, "plaintext": opportunistic TLS goes on
 * without). One per failed connection. */
static void session_tls_record(dlv_session_t *s, const char *policy, const char *action,
                               const char *reason)
{
    dlv_where_t w = {0};
    dlv_dest_names(s->s_dest, s->s_qd, s->s_vmta, &w);
    json_object *o = json_object_new_object();
    char ts[32];
    json_object_object_add(o, "type", json_object_new_string("tls_failure"));
    json_object_object_add(
        o, "time", json_object_new_string(time_fmt_rfc3339(clock_now_us(), ts, sizeof(ts))));
    json_object_object_add(o, "domain", json_object_new_string(s->s_dest->de_domain));
    json_object_object_add(o, "mx", json_object_new_string(S_HOST(s)));
    json_object_object_add(o, "mx_ip", s->s_mx_ip[0] ? json_object_new_string(s->s_mx_ip) : NULL);
    json_object_object_add(o, "src_ip",
                           s->s_src_ip[0] ? json_object_new_string(s->s_src_ip) : NULL);
    json_object_object_add(o, "vmta", w.w_vmta ? json_object_new_string(w.w_vmta) : NULL);
    json_object_object_add(o, "provider",
                           w.w_provider ? json_object_new_string(w.w_provider) : NULL);
    json_object_object_add(o, "policy", json_object_new_string(policy));
    json_object_object_add(o, "action", json_object_new_string(action));
    json_object_object_add(o, "reason", json_object_new_string(reason));
    queue_acct_event(s->s_t->t_d->d_queue,
                     json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
}

static void session_policy_fail(dlv_session_t *s, const char *status, const char *text)
{
    char buf[640];
    bool sts = dlv_sts_enforced(s->s_dest); /* MTA-STS enforce: always 4.7.5, said so */
    int pre = sts ? snprintf(buf, sizeof(buf), "MTA-STS: ") : 0;
    snprintf(buf + pre, sizeof(buf) - (size_t)pre, "%s[%s]: %s", S_HOST(s), s->s_mx_ip, text);
    if (sts)
        status = "4.7.5";
    log_warn("delivery: %s: TLS policy %s: %s", s->s_dest->de_domain,
             sts                                      ? "MTA-STS enforce"
             : s->s_dest->de_policy == CFG_TLS_VERIFY ? "verify"
                                                      : "required",
             buf + pre);
    session_tls_record(s,
                       sts                                      ? "mta-sts"
                       : s->s_dest->de_policy == CFG_TLS_VERIFY ? "verify"
                                                                : "required",
                       "deferred", text);
    dlv_dest_t *de = s->s_dest;
    const char *type = s->s_tls_fail ? s->s_tls_fail : "validation-failure";
    if (sts)
        dlv_tlsrpt_note(s->s_t, de->de_domain, "sts", type, text, S_HOST(s), s->s_mx_ip);
    if (s->s_tls_done || s->s_tls == NULL)
        session_quit(s);
    session_close(s);
    if (de->de_npending == 0)
        return;
    dlv_reply_t r = {.rp_stage = DLV_STAGE_DEST,
                     .rp_status = status,
                     .rp_text = buf,
                     .rp_domain = de->de_domain};
    dlv_verdict_t v;
    dlv_judge(&r, &v);
    v.v_tls_failure = type; /* the record says why (docs/records.md) */
    dlv_dest_fail_pending(de, &v);
}

/* ------------------------------------------------------------ replies */

/* DANE (RFC 7672 2.2): a failure at this host defers 4.7.5 and the next
 * MX is tried (session_conn_error), never plaintext. type: the RFC 8460
 * result type, for the record and TLSRPT. quit: the server still reads
 * commands in the clear. */
static void session_dane_fail(dlv_session_t *s, const char *type, const char *why, bool quit)
{
    char text[640];
    snprintf(text, sizeof(text), "%s[%s]:%d: %s%s", S_HOST(s), s->s_mx_ip, s->s_port,
             strncmp(why, "DANE", 4) == 0 ? "" : "DANE: ", why);
    dlv_reply_t r = {.rp_stage = DLV_STAGE_CONNECT,
                     .rp_status = "4.7.5",
                     .rp_text = text,
                     .rp_domain = s->s_dest->de_domain,
                     .rp_mx = S_HOST(s),
                     .rp_mx_ip = s->s_mx_ip,
                     .rp_port = s->s_port};
    dlv_verdict_t v;
    dlv_judge(&r, &v);
    v.v_tls_policy = "dane";
    v.v_tls_failure = type;
    dlv_tlsrpt_note(s->s_t, s->s_dest->de_domain, "tlsa", type, why, S_HOST(s), s->s_mx_ip);
    session_tls_record(s, "dane", "deferred", why);
    log_warn("delivery: %s: TLS policy dane: %s", s->s_dest->de_domain, log_esc(text));
    session_reply_conn_error(s, &v, quit);
}

static const char *session_tls_policy(const dlv_session_t *s)
{
    if (s->s_dane != NULL && s->s_dane->dn_state == DLV_DANE_ON)
        return "dane"; /* RFC 8461 2: DANE wins over MTA-STS for this host */
    return dlv_dest_tls_policy(s->s_dest);
}

/* After EHLO/HELO: STARTTLS if the policy wants it, else ready. */
static void session_after_ehlo(dlv_session_t *s)
{
    dlv_dest_t *de = s->s_dest;
    int pol = de->de_policy;
    if (!s->s_tls_done && s->s_dane != NULL) { /* DANE: TLS is mandatory */
        if (!s->s_x.x_starttls || s->s_t->t_tls_ctx == NULL) {
            session_dane_fail(s, "starttls-not-supported",
                              s->s_x.x_starttls ? "no TLS client context" : "STARTTLS not offered",
                              true);
            return;
        }
        session_send(s, "STARTTLS\r\n", 10);
        dlv_session_enter_state(s, S_STARTTLS);
        session_timer(s, S_CFG(s)->c_to_starttls);
        return;
    }
    bool must = pol == CFG_TLS_REQUIRED || pol == CFG_TLS_VERIFY;
    if (!s->s_tls_done && !s->s_no_tls && pol != CFG_TLS_DISABLED && s->s_x.x_starttls &&
        s->s_t->t_tls_ctx != NULL) {
        session_send(s, "STARTTLS\r\n", 10);
        dlv_session_enter_state(s, S_STARTTLS);
        session_timer(s, S_CFG(s)->c_to_starttls);
        return;
    }
    if (!s->s_tls_done && must) {
        s->s_tls_fail = "starttls-not-supported";
        session_policy_fail(s, "4.7.4",
                            s->s_x.x_starttls ? "TLS required but no TLS client context"
                                              : "TLS required but STARTTLS not offered");
        return;
    }
    if (!s->s_tls_done) /* MTA-STS testing: enforce would have refused plaintext */
        dlv_sts_testing_failure(de, S_HOST(s),
                                !s->s_x.x_starttls ? "STARTTLS not offered"
                                : s->s_no_tls      ? "TLS not used (it failed before)"
                                                   : "TLS not used");
    session_ready(s);
}

static void session_send_ehlo(dlv_session_t *s, bool helo)
{
    char cmd[300];
    int n = snprintf(cmd, sizeof(cmd), "%s %s\r\n", helo ? "HELO" : "EHLO",
                     dlv_dest_helo(s->s_dest, s->s_vmta));
    session_send(s, cmd, (size_t)n);
    dlv_session_enter_state(s, helo ? S_HELO : S_EHLO);
    session_timer(s, S_CFG(s)->c_to_ehlo);
}

/* Every reply goes to the judge (trouble.c), once, whatever it decides:
 * the verdict says whether it is an outcome (and for whom: MAIL's for the
 * transaction, RCPT's for its recipient, DATA's and the dot's for the
 * accepted ones, a refusal's for the connection), and the shaping signal
 * it raised is acted on here for the destination. */
static void session_judge(dlv_session_t *s, dlv_verdict_t *v)
{
    static const dlv_stage_t stage_of[] = {
        [S_CONNECT] = DLV_STAGE_OTHER,     [S_GREETING] = DLV_STAGE_GREETING,
        [S_EHLO] = DLV_STAGE_EHLO,         [S_HELO] = DLV_STAGE_HELO,
        [S_STARTTLS] = DLV_STAGE_STARTTLS, [S_TLS] = DLV_STAGE_OTHER,
        [S_READY] = DLV_STAGE_OTHER,       [S_MAIL] = DLV_STAGE_MAIL,
        [S_RCPT] = DLV_STAGE_RCPT,         [S_DATA] = DLV_STAGE_DATA,
        [S_DOT] = DLV_STAGE_DOT,           [S_RSET] = DLV_STAGE_OTHER,
        [S_QUIT] = DLV_STAGE_OTHER,        [S_CLOSED] = DLV_STAGE_OTHER,
    };
    dlv_stage_t stage = stage_of[s->s_state];
    if (stage == DLV_STAGE_EHLO && s->s_tls_done)
        stage = DLV_STAGE_EHLO_TLS; /* no HELO fallback after STARTTLS */
    dlv_reply_t r = {.rp_stage = stage,
                     .rp_code = s->s_reply.sr_code,
                     .rp_status = s->s_reply.sr_status,
                     .rp_text = s->s_text,
                     .rp_domain = s->s_dest->de_domain,
                     .rp_mx = S_HOST(s),
                     .rp_mx_ip = s->s_mx_ip,
                     .rp_port = s->s_port,
                     .rp_q = dlv_dest_queue(s->s_dest, s->s_vmta),
                     .rp_accepted = s->s_state == S_DOT && s->s_discard ? 0 : s->s_nacc,
                     .rp_mail_refused = s->s_mail_failed,
                     .rp_conn_msgs = s->s_msgs};
    dlv_judge(&r, v);
    if (v->v_signal != 0)
        dlv_dest_signal(s->s_dest, v->v_signal);
}

/* A failure decided here for the dispatch in hand (no reply): the judge's
 * verdict on it. */
static void session_local(dlv_session_t *s, const char *status, const char *text, dlv_verdict_t *v)
{
    dlv_reply_t r = {.rp_stage = DLV_STAGE_LOCAL,
                     .rp_status = status,
                     .rp_text = text,
                     .rp_domain = s->s_dest->de_domain,
                     .rp_mx = S_HOST(s),
                     .rp_mx_ip = s->s_mx_ip,
                     .rp_port = s->s_port,
                     .rp_q = dlv_dest_queue(s->s_dest, s->s_vmta)};
    dlv_judge(&r, v);
}

/* Recipient i's outcome is verdict v. */
static void session_record(dlv_session_t *s, int i, const dlv_verdict_t *v)
{
    dlv_rres_t *r = &s->s_res[i];
    r->rr_state = RR_DONE;
    r->rr_res = v->v_res;
    free(r->rr_text);
    r->rr_text = xstrdup(v->v_text);
}

/* Record v for every recipient the server accepted in this transaction
 * (the DATA and final-dot replies), when it decides their fate. */
static void session_record_accepted(dlv_session_t *s, const dlv_verdict_t *v)
{
    if (v->v_res.rs_fate == DLV_FATE_NONE)
        return;
    for (int k = 0; k < s->s_n; k++)
        if (s->s_res[s->s_txn[k]].rr_state == RR_ACCEPTED)
            session_record(s, s->s_txn[k], v);
}

/* Lock-step: the RCPT of the transaction's k-th recipient. */
static void session_send_rcpt(dlv_session_t *s, int k)
{
    buf_t b;
    buf_init(&b, 256);
    dlv_cmd_rcpt(&b, &s->s_qd->qd_rcpts[s->s_txn[k]], &s->s_x);
    session_out(s, &b, false);
}

/* The greeting, EHLO and HELO: the extensions, HELO after a 5xx to the
 * first EHLO, or the refusal (v) that ends this address. */
static void session_on_hello(dlv_session_t *s, const dlv_verdict_t *v)
{
    int code = s->s_reply.sr_code;
    if (code / 100 != 2) {
        if (s->s_state == S_EHLO && code / 100 == 5 && !s->s_tls_done)
            session_send_ehlo(s, true);
        else
            session_reply_conn_error(s, v, s->s_state == S_GREETING); /* QUIT after a greeting */
        return;
    }
    if (s->s_state == S_GREETING) {
        session_send_ehlo(s, false);
        return;
    }
    dlv_ehlo_parse(&s->s_reply.sr_text, &s->s_x);
    if (s->s_state == S_HELO) { /* no extensions but SIZE */
        uint64_t max = s->s_x.x_size_max;
        bool size = s->s_x.x_size;
        memset(&s->s_x, 0, sizeof(s->s_x));
        s->s_x.x_size = size;
        s->s_x.x_size_max = max;
    }
    session_after_ehlo(s);
}

static void session_on_mail(dlv_session_t *s, const dlv_verdict_t *v)
{
    if (s->s_reply.sr_code / 100 != 2) {
        s->s_mail_failed = true;
        for (int k = 0; k < s->s_n; k++)
            session_record(s, s->s_txn[k], v);
        if (!s->s_pipelined) {
            session_end_txn(s, false);
            return;
        }
    } else if (!s->s_pipelined) {
        session_send_rcpt(s, 0);
    }
    s->s_ri = 0;
    dlv_session_enter_state(s, S_RCPT);
    session_timer(s, S_CFG(s)->c_to_rcpt);
}

static void session_on_rcpt(dlv_session_t *s, const dlv_verdict_t *v)
{
    int i = s->s_txn[s->s_ri];
    if (!s->s_mail_failed) {
        if (s->s_reply.sr_code / 100 == 2) {
            s->s_res[i].rr_state = RR_ACCEPTED;
            s->s_nacc++;
        } else if (v->v_res.rs_fate == DLV_FATE_NEXT_TXN) {
            /* Too many recipients (452, or RFC 821's 552, once someone
             * was accepted): the recipient stays pending and goes in the
             * next transaction, which holds no more than this server
             * took. With nobody accepted yet it is a refusal of this
             * recipient (e.g. over quota), recorded below. */
            if (s->s_rcpt_cap == 0 || s->s_nacc < s->s_rcpt_cap)
                s->s_rcpt_cap = s->s_nacc;
            if (!s->s_pipelined) /* the rest would get the same answer */
                s->s_n = s->s_ri + 1;
        } else {
            session_record(s, i, v); /* a 552 is recorded as 452 (temporary) */
        }
    }
    s->s_ri++;
    if (s->s_ri < s->s_n) {
        if (!s->s_pipelined)
            session_send_rcpt(s, s->s_ri);
        session_timer(s, S_CFG(s)->c_to_rcpt);
        return;
    }
    if (!s->s_pipelined) {
        if (s->s_nacc == 0) {
            session_end_txn(s, false);
            return;
        }
        session_send(s, "DATA\r\n", 6);
    }
    dlv_session_enter_state(s, S_DATA);
    session_timer(s, S_CFG(s)->c_to_data);
}

static void session_on_data(dlv_session_t *s, const dlv_verdict_t *v)
{
    if (s->s_reply.sr_code == 354) {
        dlv_session_enter_state(s, S_DOT);
        session_timer(s, S_CFG(s)->c_to_data_block + S_CFG(s)->c_to_data_done);
        if (s->s_nacc > 0 && !s->s_mail_failed) {
            buf_reset(&s->s_body);
            /* signature fields: CRLF lines, none starts with '.' */
            buf_append(&s->s_body, s->s_m.m_dkim.b_data, s->s_m.m_dkim.b_len);
            smtp_dot_stuff(&s->s_body, s->s_m.m_msg, s->s_m.m_len);
            session_send_body(s);
        } else { /* pipelined, nobody accepted, yet 354: send an empty message */
            s->s_discard = true;
            session_send(s, ".\r\n", 3);
        }
        return;
    }
    if (v->v_abort) { /* neither 354 nor a refusal: a protocol error (the judge) */
        session_abort(s, v, true);
        return;
    }
    session_record_accepted(s, v);
    session_end_txn(s, false);
}

/* A complete reply: the judge's verdict, then the state machine. */
static void session_on_reply(dlv_session_t *s)
{
    int code = s->s_reply.sr_code;
    dlv_verdict_t v;
    session_judge(s, &v);
    switch (s->s_state) {
    case S_GREETING:
    case S_EHLO:
    case S_HELO:
        session_on_hello(s, &v);
        return;
    case S_STARTTLS:
        if (code == 220) {
            session_tls_start(s);
        } else {
            char why[600];
            snprintf(why, sizeof(why), "STARTTLS refused: %d %.400s", code, s->s_text);
            s->s_tls_fail = "starttls-not-supported";
            session_tls_failed(s, why);
        }
        return;
    case S_MAIL:
        session_on_mail(s, &v);
        return;
    case S_RCPT:
        session_on_rcpt(s, &v);
        return;
    case S_DATA:
        session_on_data(s, &v);
        return;
    case S_DOT:
        session_record_accepted(s, &v);
        session_end_txn(s, true);
        return;
    case S_RSET:
        if (code / 100 != 2) {
            session_quit(s);
            return;
        }
        s->s_need_rset = false;
        session_start_txn(s);
        return;
    case S_QUIT:
        session_close(s);
        return;
    default: /* READY (e.g. a 421 on an idle connection) or unexpected */
        log_debug("delivery: %s[%s]: unexpected reply in %s: %d %s", S_HOST(s), s->s_mx_ip,
                  dlv_sstate_names[s->s_state], code, log_escn(s->s_text, strnlen(s->s_text, 400)));
        if (s->s_qd == NULL) {
            session_close(s);
            dlv_dest_kick(s->s_dest);
        } else {
            session_lost(s, "unexpected reply");
        }
        return;
    }
}

/* ------------------------------------------------------------ TLS */

static void session_tls_start(dlv_session_t *s)
{
    dlv_dest_t *de = s->s_dest;
    bool verify = de->de_policy == CFG_TLS_VERIFY;
    /* RFC 3207 5.2: anything the server sent before the handshake is void */
    buf_reset(&s->s_in);
    s->s_inpos = 0;
    s->s_in_reset = true;
    smtp_reply_reset(&s->s_reply);
    if (s->s_dane != NULL) /* no resumption: the session was not DANE-verified */
        s->s_tls = tls_conn_new_dane(s->s_t->t_tls_ctx, S_HOST(s), s->s_dane->dn_tlsa,
                                     s->s_dane->dn_ntlsa);
    else
        s->s_tls = tls_conn_new_client(s->s_t->t_tls_ctx, S_HOST(s), verify);
    if (s->s_tls == NULL) {
        session_tls_failed(s, "cannot create TLS connection");
        return;
    }
    if (s->s_dane == NULL) { /* offered once: the connection takes it */
        tls_session_t *sess = dlv_dest_tls_take(de);
        if (sess != NULL) {
            tls_conn_set_session(s->s_tls, sess); /* takes its own reference */
            tls_session_free(sess);
        }
    }
    dlv_session_enter_state(s, S_TLS);
    session_timer(s, S_CFG(s)->c_to_starttls);
    session_tls_step(s);
}

static void session_tls_step(dlv_session_t *s)
{
    int rc = tls_handshake(s->s_tls);
    if (!s->s_closing && !s->s_tcp_closing)
        session_flush_tls(s, false);
    if (s->s_closing || s->s_tcp_closing)
        return;
    if (rc < 0) {
        char why[300];
        snprintf(why, sizeof(why), "TLS handshake failed: %s", tls_last_error(s->s_tls));
        /* a verification that failed the handshake (verify, MTA-STS): its
         * reason, for the record and TLSRPT (certificate-expired, ...) */
        s->s_tls_fail = tls_failure_type(tls_verify_result(s->s_tls));
        session_tls_failed(s, why);
        return;
    }
    if (rc == 0)
        return;
    dlv_dest_t *de = s->s_dest;
    if (s->s_dane != NULL) {
        long vr = tls_verify_result(s->s_tls);
        if (vr != 0) {
            char why[300];
            snprintf(why, sizeof(why), "DANE: %s", tls_last_error(s->s_tls));
            session_dane_fail(s, tls_failure_type(vr), why, false);
            return;
        }
    } else if (de->de_policy == CFG_TLS_VERIFY) {
        long vr = tls_verify_result(s->s_tls);
        if (vr != 0) {
            char why[300];
            s->s_tls_fail = tls_failure_type(vr);
            snprintf(why, sizeof(why), "certificate verification failed: %s",
                     tls_last_error(s->s_tls));
            session_tls_failed(s, why);
            return;
        }
    }
    if (s->s_dane == NULL && de->de_policy != CFG_TLS_VERIFY && dlv_sts_mode(de) != NULL &&
        tls_verify_result(s->s_tls) != 0) /* MTA-STS testing: the chain only */
        dlv_sts_testing_failure(de, S_HOST(s), tls_last_error(s->s_tls));
    s->s_tls_done = true;
    dlv_tlsrpt_note(s->s_t, de->de_domain,
                    s->s_dane != NULL          ? "tlsa"
                    : dlv_sts_mode(de) != NULL ? "sts"
                                               : "no-policy-found",
                    NULL, NULL, S_HOST(s), s->s_mx_ip);
    snprintf(s->s_tls_ver, sizeof(s->s_tls_ver), "%s", tls_version(s->s_tls));
    snprintf(s->s_cipher, sizeof(s->s_cipher), "%s", tls_cipher(s->s_tls));
    atomic_fetch_add_explicit(&S_STATS(s)->ds_tls_sessions, 1, memory_order_relaxed);
    bool resumed = tls_conn_resumed(s->s_tls);
    if (resumed)
        atomic_fetch_add_explicit(&S_STATS(s)->ds_tls_resumed, 1, memory_order_relaxed);
    log_debug("delivery: %s[%s]: %s %s%s", S_HOST(s), s->s_mx_ip, s->s_tls_ver, s->s_cipher,
              resumed ? " (resumed)" : "");
    session_send_ehlo(s, false); /* RFC 3207: EHLO again */
    /* the server's first reply may already be buffered */
    char tmp[8192];
    int r;
    while ((r = tls_read(s->s_tls, tmp, sizeof(tmp))) > 0)
        buf_append(&s->s_in, tmp, (size_t)r);
    if (s->s_in.b_len > 0)
        session_process_input(s);
}

static void session_tls_failed(dlv_session_t *s, const char *why)
{
    dlv_dest_t *de = s->s_dest;
    if (s->s_dane != NULL) { /* a refused STARTTLS: the server still speaks SMTP */
        bool refused = s->s_tls == NULL && s->s_state == S_STARTTLS;
        session_dane_fail(s, refused ? "starttls-not-supported" : "validation-failure", why,
                          refused);
        return;
    }
    if (de->de_policy == CFG_TLS_REQUIRED || de->de_policy == CFG_TLS_VERIFY) {
        bool cert = strstr(why, "certificate") != NULL || strstr(why, "verif") != NULL;
        session_policy_fail(s, cert && de->de_policy == CFG_TLS_VERIFY ? "4.7.5" : "4.7.4", why);
        return;
    }
    /* opportunistic: a new plaintext connection to the same host. STARTTLS
     * refused (no TLS yet): the server still speaks SMTP, so say QUIT
     * first (RFC 5321 4.1.1.10); a failed handshake leaves nothing to say
     * it to. */
    if (s->s_tls == NULL && s->s_state == S_STARTTLS)
        session_send(s, "QUIT\r\n", 6);
    log_warn("delivery: %s: TLS with %s[%s] failed (%s); retrying without TLS", de->de_domain,
             S_HOST(s), s->s_mx_ip, why);
    session_tls_record(s, "opportunistic", "plaintext", why);
    dlv_tlsrpt_note(s->s_t, de->de_domain, dlv_sts_mode(de) != NULL ? "sts" : "no-policy-found",
                    s->s_tls_fail ? s->s_tls_fail : "validation-failure", why, S_HOST(s),
                    s->s_mx_ip);
    dlv_sts_testing_failure(de, S_HOST(s), why); /* MTA-STS testing */
    de->de_notls_until = clock_mono_us() + DLV_NOTLS_TIME * 1000000ULL;
    s->s_no_tls = true;
    s->s_tries++;
    if (s->s_tries >= DLV_MAX_TRIES) {
        session_conn_fail(s, "4.7.0", why);
        return;
    }
    session_reconnect(s);
}

/* ------------------------------------------------------------ transactions */

/*
 * Leave this connection's TLS session with its destination, for another
 * connection to resume (a TLS 1.3 ticket, or a TLS 1.2 session): at the
 * first ready state (the EHLO reply after STARTTLS has been read, so the
 * server's tickets have come in), so that the connections slow start
 * opens while this one lives resume too, and at close, the freshest
 * ticket. Each is offered once (dlv_dest_tls_take): every connection
 * leaves one when ready and takes at most one, so there is one for each
 * connection slow start opens next.
 */
static void session_keep_tls_session(dlv_session_t *s)
{
    if (s->s_tls == NULL || !s->s_tls_done)
        return;
    void *sess = tls_conn_get_session(s->s_tls);
    if (sess != NULL)
        dlv_dest_tls_keep(s->s_dest, sess);
}

static void session_ready(dlv_session_t *s)
{
    dlv_session_enter_state(s, S_READY);
    uv_timer_stop(&s->s_timer);
    if (!s->s_ever_ready) {
        s->s_ever_ready = true;
        session_keep_tls_session(s);
        dlv_dest_conn_ok(s->s_dest, clock_mono_us() - s->s_opened);
    }
    session_next_work(s);
    /* slow start: a good connection lets the destination open more */
    dlv_dest_kick(s->s_dest);
}

static void session_next_work(dlv_session_t *s)
{
    const cfg_t *cfg = S_CFG(s);
    dlv_dest_t *de = s->s_dest;
    if (s->s_closing || s->s_t->t_stopping)
        return;
    int max_msgs = dlv_dest_max_msgs(de, s->s_vmta);
    if (max_msgs > 0 && s->s_msgs >= max_msgs) {
        session_quit(s);
        return;
    }
    if (s->s_msgs > 0 && clock_mono_us() - s->s_born >= cfg->c_dlv_conn_reuse_time * 1000000ULL) {
        session_quit(s);
        return;
    }
    if (dlv_sts_session_stale(de, s->s_born) ||  /* MTA-STS policy changed since it connected */
        dlv_dest_session_stale(de, s->s_born)) { /* or a reload changed routes / TLS policies */
        session_quit(s);
        return;
    }
    bool quit = false;
    queue_dispatch_t *qd = dlv_dest_next(de, s->s_vmta, &quit); /* within the throttles */
    if (qd != NULL) {
        dlv_session_take(s, qd);
        return;
    }
    if (quit) {
        session_quit(s);
        return;
    }
    s->s_idle = true;
    if (s->s_state != S_READY)
        dlv_session_enter_state(s, S_READY);
    session_timer(s, cfg->c_dlv_idle_time);
}

void dlv_session_take(dlv_session_t *s, queue_dispatch_t *qd)
{
    DLV_ASSERT_ON_LOOP(s->s_t);
    s->s_idle = false;
    s->s_qd = qd;
    s->s_txn_t0 = clock_mono_us();
    s->s_res = xcalloc((size_t)MAX(qd->qd_nrcpt, 1), sizeof(dlv_rres_t));
    s->s_txn = xcalloc((size_t)MAX(qd->qd_nrcpt, 1), sizeof(int));
    s->s_pend = 0;
    s->s_n = 0;
    if ((qd->qd_flags & Q_F_SMTPUTF8) && !s->s_x.x_smtputf8 && !session_utf8_ascii_copy(s))
        return;
    char status[16], text[640];
    if (dlv_msg_prepare(S_CFG(s), qd, &s->s_x, S_HOST(s), s->s_mx_ip, &s->s_m, status, text,
                        sizeof(text)) < 0) {
        session_fail_dispatch(s, status, text);
        return;
    }
    session_start_txn(s);
}

/* SMTPUTF8 was asked for and the server does not offer it (RFC 6531 3.4):
 * a non-ASCII sender or header bounces every recipient 5.6.7; otherwise a
 * recipient whose own address is not ASCII bounces 5.6.7 alone and the
 * others go without SMTPUTF8 (prepare.c). False when no recipient is left
 * (the dispatch is over). */
static bool session_utf8_ascii_copy(dlv_session_t *s)
{
    queue_dispatch_t *qd = s->s_qd;
    char text[512];
    const char *what = dlv_msg_utf8_need(qd);
    if (what != NULL) {
        snprintf(text, sizeof(text), "SMTPUTF8 required (non-ASCII %s) but not offered by %s[%s]",
                 what, S_HOST(s), s->s_mx_ip);
        session_fail_dispatch(s, "5.6.7", text);
        return false;
    }
    snprintf(text, sizeof(text),
             "SMTPUTF8 required (non-ASCII recipient address) but not offered by %s[%s]", S_HOST(s),
             s->s_mx_ip);
    s->s_n = 0;
    dlv_verdict_t v;
    for (int i = 0; i < qd->qd_nrcpt; i++) {
        if (!dlv_msg_rcpt_utf8(qd, i))
            continue;
        if (s->s_n == 0)
            session_local(s, "5.6.7", text, &v);
        session_record(s, i, &v);
        s->s_txn[s->s_n++] = i;
    }
    if (s->s_n == 0)
        return true;
    bool left = s->s_n < qd->qd_nrcpt;
    session_report(s);
    s->s_n = 0;
    if (!left)
        session_finish_dispatch(s);
    return left;
}

/* Every recipient of the dispatch still without an outcome gets this local
 * one, decided here (no transaction): it joins s_txn to be reported. */
static void session_fail_dispatch(dlv_session_t *s, const char *status, const char *text)
{
    queue_dispatch_t *qd = s->s_qd;
    dlv_verdict_t v;
    session_local(s, status, text, &v);
    s->s_n = 0;
    for (int i = 0; i < qd->qd_nrcpt; i++) {
        if (s->s_res[i].rr_state == RR_PENDING) {
            session_record(s, i, &v);
            s->s_txn[s->s_n++] = i;
        }
    }
    session_end_txn(s, true);
}

/* VERP for this message from this virtual MTA (docs/bounces-in.md): a job
 * of bounces.verp_jobs always; else the virtual MTA's or its pool's verp
 * in the shaping file; else bounces.verp. Only with the key and the bounce
 * domain, and never for the null sender. */
static bool session_verp(const dlv_session_t *s, const cfg_t *cfg, const queue_dispatch_t *qd)
{
    if (!cfg->c_verp_key_loaded || cfg->c_bounce_domain[0] == '\0' || qd->qd_sender[0] == '\0')
        return false;
    for (char **j = cfg->c_verp_jobs; qd->qd_job != NULL && j != NULL && *j != NULL; j++)
        if (strcasecmp(*j, qd->qd_job) == 0)
            return true;
    int v = dlv_dest_verp(s->s_dest, s->s_vmta, qd->qd_pool);
    return v != 0 ? v > 0 : cfg->c_verp;
}

static void session_start_txn(dlv_session_t *s)
{
    const cfg_t *cfg = S_CFG(s);
    queue_dispatch_t *qd = s->s_qd;
    if (s->s_need_rset) {
        session_send(s, "RSET\r\n", 6);
        dlv_session_enter_state(s, S_RSET);
        session_timer(s, cfg->c_to_mail);
        return;
    }
    int max = dlv_dest_max_rcpt(s->s_dest, s->s_vmta);
    if (max <= 0)
        max = 100;
    if (s->s_rcpt_cap > 0 && s->s_rcpt_cap < max)
        max = s->s_rcpt_cap;
    /* VERP: the return path names one recipient, so one recipient per
     * transaction; never for a DSN (its sender is <>) */
    bool verp = session_verp(s, cfg, qd);
    if (verp)
        max = 1;
    s->s_n = 0;
    for (int i = s->s_pend; i < qd->qd_nrcpt && s->s_n < max; i++)
        if (s->s_res[i].rr_state == RR_PENDING)
            s->s_txn[s->s_n++] = i;
    assert(s->s_n > 0);
    s->s_ri = 0;
    s->s_nacc = 0;
    s->s_mail_failed = false;
    s->s_discard = false;
    s->s_pipelined = s->s_x.x_pipelining;
    buf_t b;
    buf_init(&b, 256 + (size_t)(s->s_pipelined ? s->s_n : 1) * 80);
    char from[400];
    if (verp && verp_address(cfg->c_verp_key, qd->qd_msgid, qd->qd_rcpts[s->s_txn[0]].qo_idx,
                             clock_now_s(), cfg->c_bounce_domain, from, sizeof(from)) == 0)
        verp = false; /* a domain too long for it: the sender as it is */
    dlv_cmd_mail(&b, qd, verp ? from : NULL, &s->s_x, s->s_m.m_8bit, dlv_msg_size(&s->s_m));
    if (s->s_pipelined) { /* RFC 2920: MAIL, RCPTs, DATA in one go */
        for (int k = 0; k < s->s_n; k++)
            dlv_cmd_rcpt(&b, &qd->qd_rcpts[s->s_txn[k]], &s->s_x);
        buf_append(&b, "DATA\r\n", 6);
    }
    session_out(s, &b, false);
    if (s->s_closing)
        return;
    dlv_session_enter_state(s, S_MAIL);
    session_timer(s, cfg->c_to_mail);
}

/* The transaction s_txn is over: report it (a recipient carried over to
 * the next one stays pending). completed = the server saw the end of it
 * (final dot reply), else RSET is due. */
static void session_end_txn(dlv_session_t *s, bool completed)
{
    queue_dispatch_t *qd = s->s_qd;
    bool judged = false;
    dlv_verdict_t v;
    for (int k = 0; k < s->s_n; k++) {
        dlv_rres_t *r = &s->s_res[s->s_txn[k]];
        if (r->rr_state == RR_ACCEPTED) { /* no final answer: defer */
            if (!judged)
                session_local(s, "4.4.2", "transaction aborted", &v);
            judged = true;
            session_record(s, s->s_txn[k], &v);
        }
    }
    session_report(s);
    atomic_fetch_add_explicit(&S_STATS(s)->ds_transactions, 1, memory_order_relaxed);
    if (!completed)
        s->s_need_rset = true;
    s->s_n = 0;
    while (s->s_pend < qd->qd_nrcpt && s->s_res[s->s_pend].rr_state != RR_PENDING)
        s->s_pend++;
    if (s->s_pend < qd->qd_nrcpt && !s->s_closing) {
        session_start_txn(s);
        return;
    }
    session_finish_dispatch(s);
}

/* Log and hand to the queue the outcome of every recipient of s_txn that
 * has one (a recipient carried over to the next transaction has none). */
static void session_report(dlv_session_t *s)
{
    queue_dispatch_t *qd = s->s_qd;
    dlv_where_t w = {.w_mx = S_HOST(s),
                     .w_mx_ip = s->s_mx_ip,
                     .w_port = s->s_port,
                     .w_src_ip = s->s_src_ip,
                     .w_tls = s->s_tls_done ? s->s_tls_ver : "",
                     .w_cipher = s->s_tls_done ? s->s_cipher : "",
                     .w_mta_sts = dlv_sts_mode(s->s_dest),
                     .w_tls_policy = session_tls_policy(s),
                     .w_peer_dsn = s->s_x.x_dsn,
                     .w_txn_rcpts = s->s_n};
    dlv_dest_names(s->s_dest, qd, s->s_vmta, &w);
    for (int k = 0; k < s->s_n; k++) {
        int i = s->s_txn[k];
        dlv_rres_t *r = &s->s_res[i];
        if (r->rr_state == RR_PENDING)
            continue;
        dlv_report(s->s_t, qd, i, &r->rr_res, r->rr_text, &w);
        free(r->rr_text);
        r->rr_text = NULL;
        r->rr_state = RR_SENT;
    }
}

static void session_finish_dispatch(dlv_session_t *s)
{
    free(s->s_res);
    s->s_res = NULL;
    free(s->s_txn);
    s->s_txn = NULL;
    queue_dispatch_free(s->s_qd);
    s->s_qd = NULL;
    s->s_msgs++;
    if (!s->s_closing)
        dlv_dest_txn_done(s->s_dest, clock_mono_us() - s->s_txn_t0);
    buf_reset(&s->s_body);
    dlv_msg_done(&s->s_m);
    if (s->s_closing)
        return;
    dlv_session_enter_state(s, S_READY);
    session_next_work(s);
}
