/*
 * bench/source.c - sluice-source, the SMTP load generator.
 *
 * Drives C concurrent SMTP connections from one libuv loop and injects N
 * messages of about S bytes, each to R recipients "user<N>@d<K>.example"
 * spread over D domains (K = message number % D). Per message it sends
 * MAIL, RCPT(s) and DATA in one write when the server offers PIPELINING
 * (RFC 2920: DATA last in the batch), then the body after the 354, and
 * times the interval from the end of the body to the final reply.
 *
 * Cost per message: the body is built and dot-stuffed once and shared by
 * every connection; each connection owns a command buffer and a header
 * block whose static part is written once and whose tail (To, Message-ID)
 * is rewritten per message. Write requests come from a free list, so the
 * steady state allocates nothing per message (the TLS path reuses the
 * ciphertext buffer of its request).
 *
 * Main functions: main() parses options, src_run() runs the loop,
 * src_report() prints the summary (text or --json). Everything runs on the
 * main thread; no locks.
 */
#include "core/base/base.h"

#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define SRC_RBUF_SIZE 16384   /* reply line buffer per connection */
#define SRC_NETBUF_SIZE 65536 /* ciphertext read buffer (TLS) */
#define SRC_REPLY_TIMEOUT_US 60000000u
#define SRC_QUIT_TIMEOUT_US 5000000u
#define SRC_TICK_MS 20
#define SRC_MAX_CONNECT_FAILS 5 /* consecutive connect failures before a slot gives up */
#define SRC_MAX_REOPENS 10000   /* server-closed (421) reopens, all slots together */
#define SRC_LINE_LEN 76         /* body line length without CRLF */
#define SRC_EHLO_NAME "sluice-source.localdomain"

/* Connection states, in protocol order. */
typedef enum {
    SRC_S_WAIT = 0,  /* not connected: waiting to (re)connect at sc_reconnect_at */
    SRC_S_CONNECT,   /* TCP connect in progress */
    SRC_S_GREETING,  /* waiting for 220 */
    SRC_S_EHLO,      /* waiting for the EHLO reply */
    SRC_S_STARTTLS,  /* waiting for 220 to STARTTLS */
    SRC_S_HANDSHAKE, /* TLS handshake */
    SRC_S_EHLO_TLS,  /* waiting for the EHLO reply inside TLS */
    SRC_S_TXN,       /* waiting for the RSET/MAIL/RCPT/DATA replies */
    SRC_S_BODY,      /* body sent, waiting for the final reply */
    SRC_S_QUIT,      /* QUIT sent */
    SRC_S_CLOSING,   /* uv_close issued */
    SRC_S_DONE,      /* slot finished for good */
} src_state_t;

static const char *const src_state_names[] = {
    "wait",     "connect", "greeting", "ehlo", "starttls", "handshake",
    "ehlo-tls", "txn",     "body",     "quit", "closing",  "done",
};

typedef struct src src_t;

/* A write request from the free list; w_buf holds ciphertext (TLS only). */
typedef struct src_wreq {
    uv_write_t w_req;
    struct src_wreq *w_next;
    struct src_conn *w_conn;
    buf_t w_buf;
} src_wreq_t;

typedef struct src_conn {
    src_t *sc_src;
    int sc_slot;
    src_state_t sc_state;
    uv_tcp_t sc_tcp;
    uv_connect_t sc_connreq;
    tls_conn_t *sc_tls;
    bool sc_pipelining;
    bool sc_8bitmime;
    bool sc_has_starttls;
    bool sc_need_rset; /* MAIL was accepted but the transaction died before DATA */
    bool sc_reopen;    /* after close: connect again (at sc_reconnect_at) */
    uint64_t sc_reconnect_at;
    uint64_t sc_deadline; /* reply deadline (monotonic us), 0 = none */
    int sc_fail_streak;   /* consecutive connect/session failures */
    int sc_on_conn;       /* messages sent on this connection */
    bool sc_progress;     /* a message got an SMTP outcome on this connection */
    /* the current message */
    bool sc_has_msg;
    uint64_t sc_msgno;
    int sc_reply_idx;  /* replies seen in this TXN */
    int sc_nreplies;   /* replies expected in this TXN */
    int sc_first_fail; /* first 4xx/5xx code among RSET/MAIL/RCPT, 0 = none */
    bool sc_mail_ok;
    int sc_rcpt_ok;
    uint64_t sc_data_end;
    /* buffers */
    char *sc_rbuf; /* reply bytes (plaintext) */
    size_t sc_rlen;
    char *sc_netbuf;    /* TLS ciphertext in */
    char *sc_cmd;       /* RSET? MAIL RCPT* DATA */
    size_t *sc_cmd_off; /* offsets of each command, plus the end */
    int sc_ncmds;
    int sc_cmd_sent; /* commands written (non-pipelining) */
    char *sc_hdr;    /* header block of the current message */
    size_t sc_hdr_len;
} src_conn_t;

/* Options. */
typedef struct src_opts {
    const char *o_server;
    uint64_t o_n;
    uint64_t o_size;
    int o_conns;
    int o_rcpts;
    int o_domains;
    int o_per_conn;
    bool o_tls;
    uint64_t o_max_seconds;
    const char *o_from;
    const char *o_ids;
    const char *o_job;
    bool o_json;
    bool o_8bit;
    bool o_verbose;
} src_opts_t;

struct src {
    src_opts_t s_opt;
    uv_loop_t *s_loop;
    uv_timer_t s_tick;
    sockaddr_any_t s_addr;
    tls_ctx_t *s_tls_ctx;
    src_conn_t *s_conns;
    src_wreq_t *s_wfree;
    FILE *s_ids;
    /* shared message parts */
    char *s_body; /* dot-stuffed body + ".\r\n" */
    size_t s_body_len;
    char *s_hdr_prefix; /* static header lines */
    size_t s_hdr_prefix_len;
    char s_msgid_nonce[32];
    /* progress */
    uint64_t s_next;     /* next message number to assign */
    uint64_t s_done;     /* messages with an outcome */
    uint64_t s_accepted; /* 2xx after the body */
    uint64_t s_temp;     /* 4xx */
    uint64_t s_perm;     /* 5xx */
    uint64_t s_errors;   /* no SMTP outcome: connection lost, timeout, protocol */
    uint64_t s_rcpt_rejected;
    uint64_t s_ids_missing; /* 2xx without "queued as <id>" */
    uint64_t s_conn_errors; /* connects that failed or sessions that broke */
    uint64_t s_reopens;     /* reconnects after a server close */
    uint64_t s_bytes;       /* plaintext bytes written */
    uint32_t *s_lat;        /* latency per finished message, microseconds */
    uint64_t s_nlat;
    uint64_t s_start;
    uint64_t s_end;
    bool s_stopping;
    bool s_timed_out;
    int s_live; /* slots not DONE */
};

/* Warnings about connections: the first SRC_MAX_WARN, then debug only. */
#define SRC_MAX_WARN 20
static int src_nwarn;
#define src_warn(...)                                                                              \
    do {                                                                                           \
        if (src_nwarn < SRC_MAX_WARN) {                                                            \
            log_warn(__VA_ARGS__);                                                                 \
            if (++src_nwarn == SRC_MAX_WARN)                                                       \
                log_warn("(further connection warnings only at debug level)");                     \
        } else {                                                                                   \
            log_debug(__VA_ARGS__);                                                                \
        }                                                                                          \
    } while (0)

static void src_usage(FILE *f);
static int src_parse_num(const char *s, uint64_t *out);
static int src_setup(src_t *s);
static void src_build_body(src_t *s);
static void src_build_prefix(src_t *s);
static int src_run(src_t *s);
static void src_report(src_t *s);
static void src_enter_state(src_conn_t *c, src_state_t st);
static void src_connect(src_conn_t *c);
static void src_connect_cb(uv_connect_t *req, int status);
static void src_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void src_read_cb(uv_stream_t *st, ssize_t n, const uv_buf_t *buf);
static void src_write_cb(uv_write_t *req, int status);
static void src_close_cb(uv_handle_t *h);
static void src_tick_cb(uv_timer_t *t);
static void src_send(src_conn_t *c, const uv_buf_t *bufs, unsigned nbufs);
static void src_send_str(src_conn_t *c, const char *str);
static int src_tls_flush(src_conn_t *c);
static void src_parse_lines(src_conn_t *c);
static void src_on_reply(src_conn_t *c, int code, const char *line, size_t len);
static void src_ehlo_line(src_conn_t *c, const char *line, size_t len);
static void src_next_message(src_conn_t *c);
static void src_send_next_cmd(src_conn_t *c);
static void src_msg_outcome(src_conn_t *c, int code, const char *line, size_t len);
static void src_conn_fail(src_conn_t *c, const char *why, bool server_closed);
static void src_conn_close(src_conn_t *c);
static void src_maybe_finish(src_t *s);
static void src_stop(src_t *s);

/* ------------------------------------------------------------ helpers */

static char *u64_to_dec(char *p, uint64_t v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0)
        *p++ = tmp[--n];
    return p;
}

static char *u64_to_hex(char *p, uint64_t v, int width)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = width - 1; i >= 0; i--) {
        p[i] = hex[v & 15];
        v >>= 4;
    }
    return p + width;
}

static char *put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

#define PUTS(p, lit) put((p), (lit), sizeof(lit) - 1)

/* Parse "123", "5K", "2M" (binary multiples). 0 or SL_EPARSE. */
static int src_parse_num(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || s[0] == '-')
        return SL_EPARSE;
    if (*end == 'k' || *end == 'K') {
        v *= 1024;
        end++;
    } else if (*end == 'm' || *end == 'M') {
        v *= 1024 * 1024;
        end++;
    }
    if (*end != '\0')
        return SL_EPARSE;
    *out = v;
    return 0;
}

static void src_usage(FILE *f)
{
    fprintf(f, "usage: sluice-source [-s host:port] [-n messages] [-S size] [-c connections]\n"
               "                     [-r rcpts_per_msg] [-d domains] [-m msgs_per_conn] [-T]\n"
               "                     [-t max_seconds] [-f from] [--ids FILE] [--job ID]\n"
               "                     [--json] [--8bit] [-v]\n"
               "  -s  server (default 127.0.0.1:2525)     -n  messages (default 1000)\n"
               "  -S  message size in bytes (5120)        -c  connections (10)\n"
               "  -r  recipients per message (1)          -d  recipient domains (1)\n"
               "  -m  messages per connection (0 = reuse) -T  STARTTLS\n"
               "  -t  max seconds (300)                   -f  envelope sender\n"
               "  --ids FILE  append the queue id of every accepted message\n"
               "  --job ID    add an X-Sluice-Job header\n"
               "  --json      print one JSON object     --8bit  8-bit UTF-8 body\n"
               "  -h, --help  this help                 --version  the version\n"
               "exit: 0 all accepted, 1 otherwise, 2 usage error\n");
}

/* ------------------------------------------------------------ set-up */

/* The header lines every message shares; To and Message-ID follow per
 * message (see src_next_message). */
static void src_build_prefix(src_t *s)
{
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S %z", &tm);
    buf_t b;
    buf_init(&b, 512);
    buf_printf(&b, "From: sluice-source <%s>\r\n", s->s_opt.o_from);
    buf_printf(&b, "Subject: sluice-source test message\r\n");
    buf_printf(&b, "Date: %s\r\n", date);
    if (s->s_opt.o_job != NULL)
        buf_printf(&b, "X-Sluice-Job: %s\r\n", s->s_opt.o_job);
    buf_printf(&b, "MIME-Version: 1.0\r\n");
    if (s->s_opt.o_8bit)
        buf_printf(&b, "Content-Type: text/plain; charset=utf-8\r\n"
                       "Content-Transfer-Encoding: 8bit\r\n");
    else
        buf_printf(&b, "Content-Type: text/plain; charset=us-ascii\r\n"
                       "Content-Transfer-Encoding: 7bit\r\n");
    s->s_hdr_prefix_len = b.b_len;
    s->s_hdr_prefix = buf_steal(&b, NULL);
    snprintf(s->s_msgid_nonce, sizeof(s->s_msgid_nonce), "%llx.%x",
             (unsigned long long)clock_now_us(), (unsigned)getpid());
}

/* The shared body: lines of 76 characters, already dot-stuffed, then the
 * final ".\r\n". Every 40th line starts with a dot so that the server's
 * un-stuffing is exercised. Sized so that headers + body is about -S. */
static void src_build_body(src_t *s)
{
    static const char words[] = "the quick brown fox jumps over the lazy dog 0123456789 "
                                "sluice bench payload lorem ipsum dolor sit amet ";
    static const char utf8[] = "\xc3\xa9t\xc3\xa9 \xe2\x82\xac "; /* "été € " */
    size_t hdr = s->s_hdr_prefix_len + 120;                       /* + To, Message-ID, blank line */
    size_t want = s->s_opt.o_size > hdr ? s->s_opt.o_size - hdr : 0;
    size_t nlines = (want + SRC_LINE_LEN + 1) / (SRC_LINE_LEN + 2);
    if (nlines == 0)
        nlines = 1;
    buf_t b;
    buf_init(&b, nlines * (SRC_LINE_LEN + 3) + 8);
    size_t wpos = 0;
    for (size_t i = 0; i < nlines; i++) {
        char line[SRC_LINE_LEN + 4];
        size_t n = 0;
        if (i % 40 == 39) {
            line[n++] = '.'; /* the stuffed form of a line that starts with "." */
            line[n++] = '.';
        }
        if (s->s_opt.o_8bit && i % 4 == 1) {
            memcpy(line + n, utf8, sizeof(utf8) - 1);
            n += sizeof(utf8) - 1;
        }
        while (n < SRC_LINE_LEN + (i % 40 == 39 ? 1 : 0)) {
            line[n++] = words[wpos];
            wpos = (wpos + 1) % (sizeof(words) - 1);
        }
        line[n++] = '\r';
        line[n++] = '\n';
        buf_append(&b, line, n);
    }
    buf_append(&b, ".\r\n", 3);
    s->s_body_len = b.b_len;
    s->s_body = buf_steal(&b, NULL);
}

static int src_resolve(const char *hostport, sockaddr_any_t *out)
{
    if (net_parse_hostport(hostport, 25, out) == 0)
        return 0;
    /* a name ("localhost:2525"): resolve once, at start-up */
    char host[256];
    const char *colon = strrchr(hostport, ':');
    const char *port = colon != NULL ? colon + 1 : "25";
    size_t hl = colon != NULL ? (size_t)(colon - hostport) : strlen(hostport);
    if (hl == 0 || hl >= sizeof(host))
        return SL_EPARSE;
    memcpy(host, hostport, hl);
    host[hl] = '\0';
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo(host, port, &hints, &res) != 0 || res == NULL)
        return SL_EPARSE;
    memset(out, 0, sizeof(*out));
    memcpy(out, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return 0;
}

static int src_setup(src_t *s)
{
    char err[256];
    if (src_resolve(s->s_opt.o_server, &s->s_addr) != 0) {
        fprintf(stderr, "sluice-source: bad server address '%s'\n", s->s_opt.o_server);
        return SL_EPARSE;
    }
    if (s->s_opt.o_tls) {
        s->s_tls_ctx = tls_client_ctx_new(NULL, err, sizeof(err));
        if (s->s_tls_ctx == NULL) {
            fprintf(stderr, "sluice-source: TLS: %s\n", err);
            return SL_ETLS;
        }
    }
    if (s->s_opt.o_ids != NULL) {
        s->s_ids = fopen(s->s_opt.o_ids, "a");
        if (s->s_ids == NULL) {
            fprintf(stderr, "sluice-source: %s: %s\n", s->s_opt.o_ids, strerror(errno));
            return -errno;
        }
    }
    src_build_prefix(s);
    src_build_body(s);
    s->s_lat = xcalloc(s->s_opt.o_n > 0 ? s->s_opt.o_n : 1, sizeof(uint32_t));
    s->s_conns = xcalloc((size_t)s->s_opt.o_conns, sizeof(src_conn_t));
    size_t from_len = strlen(s->s_opt.o_from);
    size_t cmd_cap = 8 + 40 + from_len + (size_t)s->s_opt.o_rcpts * 64 + 16;
    size_t hdr_cap = s->s_hdr_prefix_len + 256;
    for (int i = 0; i < s->s_opt.o_conns; i++) {
        src_conn_t *c = &s->s_conns[i];
        c->sc_src = s;
        c->sc_slot = i;
        c->sc_state = SRC_S_WAIT;
        c->sc_rbuf = xmalloc(SRC_RBUF_SIZE);
        if (s->s_opt.o_tls)
            c->sc_netbuf = xmalloc(SRC_NETBUF_SIZE);
        c->sc_cmd = xmalloc(cmd_cap);
        c->sc_cmd_off = xcalloc((size_t)s->s_opt.o_rcpts + 4, sizeof(size_t));
        c->sc_hdr = xmalloc(hdr_cap);
        memcpy(c->sc_hdr, s->s_hdr_prefix, s->s_hdr_prefix_len);
    }
    s->s_live = s->s_opt.o_conns;
    return 0;
}

/* ------------------------------------------------------------ state machine */

static void src_enter_state(src_conn_t *c, src_state_t st)
{
    log_debug("conn=%d state %s -> %s", c->sc_slot, src_state_names[c->sc_state],
              src_state_names[st]);
    c->sc_state = st;
}

static void src_connect(src_conn_t *c)
{
    src_t *s = c->sc_src;
    c->sc_rlen = 0;
    c->sc_pipelining = c->sc_8bitmime = c->sc_has_starttls = false;
    c->sc_need_rset = false;
    c->sc_on_conn = 0;
    c->sc_progress = false;
    c->sc_reopen = false;
    uv_tcp_init(s->s_loop, &c->sc_tcp);
    c->sc_tcp.data = c;
    uv_tcp_nodelay(&c->sc_tcp, 1);
    c->sc_connreq.data = c;
    c->sc_deadline = clock_mono_us() + SRC_REPLY_TIMEOUT_US;
    src_enter_state(c, SRC_S_CONNECT);
    int rc = uv_tcp_connect(&c->sc_connreq, &c->sc_tcp, (const struct sockaddr *)&s->s_addr,
                            src_connect_cb);
    if (rc < 0) {
        src_warn("conn=%d connect: %s", c->sc_slot, uv_strerror(rc));
        src_conn_fail(c, "connect", false);
    }
}

static void src_connect_cb(uv_connect_t *req, int status)
{
    src_conn_t *c = req->data;
    if (status == UV_ECANCELED)
        return;
    if (c->sc_state != SRC_S_CONNECT)
        return;
    if (status < 0) {
        src_warn("conn=%d connect: %s", c->sc_slot, uv_strerror(status));
        src_conn_fail(c, "connect", false);
        return;
    }
    src_enter_state(c, SRC_S_GREETING);
    int rc = uv_read_start((uv_stream_t *)&c->sc_tcp, src_alloc_cb, src_read_cb);
    if (rc < 0)
        src_conn_fail(c, "read_start", false);
}

static void src_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    src_conn_t *c = h->data;
    if (c->sc_tls != NULL) {
        buf->base = c->sc_netbuf;
        buf->len = SRC_NETBUF_SIZE;
    } else {
        buf->base = c->sc_rbuf + c->sc_rlen;
        buf->len = SRC_RBUF_SIZE - c->sc_rlen;
    }
}

static void src_read_cb(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    src_conn_t *c = st->data;
    if (n == 0)
        return;
    if (c->sc_state == SRC_S_CLOSING || c->sc_state == SRC_S_DONE)
        return;
    if (n < 0) {
        if (c->sc_state == SRC_S_QUIT) {
            src_conn_close(c);
            return;
        }
        src_conn_fail(c, n == UV_EOF ? "closed by server" : uv_strerror((int)n), true);
        return;
    }
    if (c->sc_tls == NULL) {
        c->sc_rlen += (size_t)n;
        src_parse_lines(c);
        return;
    }
    if (tls_feed(c->sc_tls, buf->base, (size_t)n) < 0) {
        src_conn_fail(c, "TLS feed", false);
        return;
    }
    if (c->sc_state == SRC_S_HANDSHAKE) {
        int rc = tls_handshake(c->sc_tls);
        if (src_tls_flush(c) < 0)
            return;
        if (rc < 0) {
            src_warn("conn=%d TLS handshake: %s", c->sc_slot, tls_last_error(c->sc_tls));
            src_conn_fail(c, "TLS handshake", false);
            return;
        }
        if (rc == 0)
            return;
        log_debug("conn=%d TLS %s %s", c->sc_slot, tls_version(c->sc_tls), tls_cipher(c->sc_tls));
        src_enter_state(c, SRC_S_EHLO_TLS);
        c->sc_pipelining = c->sc_8bitmime = c->sc_has_starttls = false;
        src_send_str(c, "EHLO " SRC_EHLO_NAME "\r\n");
    }
    for (;;) {
        if (c->sc_state == SRC_S_CLOSING || c->sc_state == SRC_S_DONE || c->sc_tls == NULL)
            return;
        if (c->sc_rlen >= SRC_RBUF_SIZE) {
            src_conn_fail(c, "reply line too long", false);
            return;
        }
        int r = tls_read(c->sc_tls, c->sc_rbuf + c->sc_rlen, SRC_RBUF_SIZE - c->sc_rlen);
        if (r == 0)
            break;
        if (r < 0) {
            if (c->sc_state == SRC_S_QUIT)
                src_conn_close(c);
            else
                src_conn_fail(c, "TLS read", true);
            return;
        }
        c->sc_rlen += (size_t)r;
        src_parse_lines(c);
    }
    src_tls_flush(c);
}

/* Split the reply buffer into lines; hand each complete reply to
 * src_on_reply. Stops when the connection leaves the session. */
static void src_parse_lines(src_conn_t *c)
{
    size_t off = 0;
    while (off < c->sc_rlen) {
        char *line = c->sc_rbuf + off;
        char *nl = memchr(line, '\n', c->sc_rlen - off);
        if (nl == NULL)
            break;
        size_t len = (size_t)(nl - line);
        off += len + 1;
        if (len > 0 && line[len - 1] == '\r')
            len--;
        if (len < 3 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9' ||
            line[2] < '0' || line[2] > '9' || (len > 3 && line[3] != ' ' && line[3] != '-')) {
            src_conn_fail(c, "malformed reply", false);
            return;
        }
        int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
        if (c->sc_state == SRC_S_EHLO || c->sc_state == SRC_S_EHLO_TLS)
            src_ehlo_line(c, line, len);
        if (len > 3 && line[3] == '-')
            continue;
        src_on_reply(c, code, line, len);
        if (c->sc_state == SRC_S_CLOSING || c->sc_state == SRC_S_DONE || c->sc_state == SRC_S_WAIT)
            return;
        if (c->sc_tls != NULL && c->sc_state == SRC_S_HANDSHAKE) {
            /* bytes after the 220 to STARTTLS are TLS, not SMTP */
            off = c->sc_rlen;
            break;
        }
    }
    if (off > 0) {
        memmove(c->sc_rbuf, c->sc_rbuf + off, c->sc_rlen - off);
        c->sc_rlen -= off;
    }
    if (c->sc_rlen >= SRC_RBUF_SIZE)
        src_conn_fail(c, "reply line too long", false);
}

/* EHLO keywords (RFC 5321 4.1.1.1): the lines after the first. */
static void src_ehlo_line(src_conn_t *c, const char *line, size_t len)
{
    if (len < 5)
        return;
    const char *kw = line + 4;
    size_t kl = len - 4;
#define KW_IS(lit)                                                                                 \
    (kl >= sizeof(lit) - 1 && strncasecmp(kw, lit, sizeof(lit) - 1) == 0 &&                        \
     (kl == sizeof(lit) - 1 || kw[sizeof(lit) - 1] == ' '))
    if (KW_IS("PIPELINING"))
        c->sc_pipelining = true;
    else if (KW_IS("8BITMIME"))
        c->sc_8bitmime = true;
    else if (KW_IS("STARTTLS"))
        c->sc_has_starttls = true;
#undef KW_IS
}

static bool src_is_server_close(int code)
{
    return code == 421;
}

/* Long: the client's state machine, one case per state, read top to bottom
 * next to RFC 5321's command order. */
static void src_on_reply(src_conn_t *c, int code, const char *line, size_t len)
{
    src_t *s = c->sc_src;
    c->sc_deadline = clock_mono_us() + SRC_REPLY_TIMEOUT_US;
    switch (c->sc_state) {
    case SRC_S_GREETING:
        if (code != 220) {
            src_warn("conn=%d greeting: %.*s", c->sc_slot, (int)len, line);
            src_conn_fail(c, "greeting refused", src_is_server_close(code));
            return;
        }
        src_enter_state(c, SRC_S_EHLO);
        src_send_str(c, "EHLO " SRC_EHLO_NAME "\r\n");
        return;
    case SRC_S_EHLO:
    case SRC_S_EHLO_TLS:
        if (code != 250) {
            src_warn("conn=%d EHLO: %.*s", c->sc_slot, (int)len, line);
            src_conn_fail(c, "EHLO refused", src_is_server_close(code));
            return;
        }
        if (s->s_opt.o_tls && c->sc_tls == NULL) {
            if (!c->sc_has_starttls) {
                fprintf(stderr, "sluice-source: the server does not offer STARTTLS\n");
                c->sc_fail_streak = SRC_MAX_CONNECT_FAILS; /* give up this slot */
                src_conn_fail(c, "no STARTTLS", false);
                return;
            }
            src_enter_state(c, SRC_S_STARTTLS);
            src_send_str(c, "STARTTLS\r\n");
            return;
        }
        src_next_message(c);
        return;
    case SRC_S_STARTTLS:
        if (code != 220) {
            src_warn("conn=%d STARTTLS: %.*s", c->sc_slot, (int)len, line);
            src_conn_fail(c, "STARTTLS refused", src_is_server_close(code));
            return;
        }
        c->sc_tls = tls_conn_new_client(s->s_tls_ctx, NULL, false);
        if (c->sc_tls == NULL) {
            src_conn_fail(c, "TLS conn", false);
            return;
        }
        src_enter_state(c, SRC_S_HANDSHAKE);
        tls_handshake(c->sc_tls);
        src_tls_flush(c);
        return;
    case SRC_S_TXN:
        c->sc_reply_idx++;
        if (src_is_server_close(code)) {
            src_msg_outcome(c, code, line, len);
            src_conn_fail(c, "421 from server", true);
            return;
        }
        {
            int idx = c->sc_reply_idx - 1 - (c->sc_need_rset ? 1 : 0);
            bool last = c->sc_reply_idx == c->sc_nreplies;
            if (idx == -1) {
                /* RSET */
                if (code / 100 != 2 && c->sc_first_fail == 0)
                    c->sc_first_fail = code;
            } else if (idx == 0) {
                c->sc_mail_ok = code / 100 == 2;
                if (!c->sc_mail_ok && c->sc_first_fail == 0)
                    c->sc_first_fail = code;
            } else if (!last) {
                if (code / 100 == 2) {
                    c->sc_rcpt_ok++;
                } else {
                    s->s_rcpt_rejected++;
                    if (c->sc_first_fail == 0)
                        c->sc_first_fail = code;
                }
            }
            if (!last) {
                if (!c->sc_pipelining)
                    src_send_next_cmd(c);
                return;
            }
            c->sc_need_rset = false;
            if (code == 354) {
                /* Send the per-message header block and the shared body. */
                uv_buf_t bufs[2] = {uv_buf_init(c->sc_hdr, (unsigned)c->sc_hdr_len),
                                    uv_buf_init(s->s_body, (unsigned)s->s_body_len)};
                src_enter_state(c, SRC_S_BODY);
                src_send(c, bufs, 2);
                c->sc_data_end = clock_mono_us();
                return;
            }
            /* DATA refused: the message failed at MAIL, RCPT or DATA. */
            if (code / 100 == 2) {
                src_conn_fail(c, "2xx reply to DATA", false);
                return;
            }
            if (c->sc_mail_ok)
                c->sc_need_rset = true;
            src_msg_outcome(c, c->sc_first_fail != 0 ? c->sc_first_fail : code, line, len);
            src_next_message(c);
        }
        return;
    case SRC_S_BODY: {
        uint64_t lat = clock_mono_us() - c->sc_data_end;
        if (s->s_nlat < s->s_opt.o_n)
            s->s_lat[s->s_nlat++] = lat > UINT32_MAX ? UINT32_MAX : (uint32_t)lat;
        src_msg_outcome(c, code, line, len);
        if (src_is_server_close(code)) {
            src_conn_fail(c, "421 from server", true);
            return;
        }
        c->sc_on_conn++;
        src_next_message(c);
        return;
    }
    case SRC_S_QUIT:
        src_conn_close(c);
        return;
    default:
        /* an unsolicited reply (e.g. 421 while idle) */
        src_warn("conn=%d unexpected reply in %s: %.*s", c->sc_slot, src_state_names[c->sc_state],
                 (int)len, line);
        src_conn_fail(c, "unexpected reply", src_is_server_close(code));
        return;
    }
}

/* Record the outcome of the current message (code 0 = no SMTP outcome). */
static void src_msg_outcome(src_conn_t *c, int code, const char *line, size_t len)
{
    src_t *s = c->sc_src;
    if (!c->sc_has_msg)
        return;
    c->sc_has_msg = false;
    s->s_done++;
    if (code != 0) {
        c->sc_progress = true;
        c->sc_fail_streak = 0;
    }
    if (code / 100 == 2) {
        s->s_accepted++;
        const char *q = NULL;
        for (size_t i = 0; i + 10 <= len; i++) {
            if (strncasecmp(line + i, "queued as ", 10) == 0) {
                q = line + i + 10;
                break;
            }
        }
        size_t ql = 0;
        while (q != NULL && q + ql < line + len && q[ql] != ' ' && q[ql] != ';' && q[ql] != ')' &&
               q[ql] != ']')
            ql++;
        if (ql == 0)
            s->s_ids_missing++;
        else if (s->s_ids != NULL)
            fprintf(s->s_ids, "%.*s\n", (int)ql, q);
    } else if (code / 100 == 4) {
        s->s_temp++;
        log_debug("conn=%d msg=%llu temp: %.*s", c->sc_slot, (unsigned long long)c->sc_msgno,
                  (int)len, line);
    } else if (code / 100 == 5) {
        s->s_perm++;
        log_debug("conn=%d msg=%llu perm: %.*s", c->sc_slot, (unsigned long long)c->sc_msgno,
                  (int)len, line);
    } else {
        s->s_errors++;
    }
    if (s->s_done >= s->s_opt.o_n && s->s_end == 0)
        s->s_end = clock_mono_us();
}

/* Start the next message on a ready connection, or QUIT. */
static void src_next_message(src_conn_t *c)
{
    src_t *s = c->sc_src;
    const src_opts_t *o = &s->s_opt;
    if (s->s_stopping || s->s_next >= o->o_n ||
        (o->o_per_conn > 0 && c->sc_on_conn >= o->o_per_conn)) {
        if (!s->s_stopping && s->s_next < o->o_n) {
            c->sc_reopen = true; /* -m reached: a fresh connection */
            c->sc_reconnect_at = 0;
        }
        src_enter_state(c, SRC_S_QUIT);
        c->sc_deadline = clock_mono_us() + SRC_QUIT_TIMEOUT_US;
        src_send_str(c, "QUIT\r\n");
        return;
    }
    uint64_t m = s->s_next++;
    uint64_t dom = m % (uint64_t)o->o_domains;
    c->sc_has_msg = true;
    c->sc_msgno = m;
    c->sc_reply_idx = 0;
    c->sc_first_fail = 0;
    c->sc_mail_ok = false;
    c->sc_rcpt_ok = 0;
    c->sc_cmd_sent = 0;

    /* Commands: [RSET] MAIL RCPT... DATA */
    char *p = c->sc_cmd;
    int k = 0;
    if (c->sc_need_rset) {
        c->sc_cmd_off[k++] = 0;
        p = PUTS(p, "RSET\r\n");
    }
    c->sc_cmd_off[k++] = (size_t)(p - c->sc_cmd);
    p = PUTS(p, "MAIL FROM:<");
    p = put(p, o->o_from, strlen(o->o_from));
    p = PUTS(p, ">");
    if (o->o_8bit && c->sc_8bitmime)
        p = PUTS(p, " BODY=8BITMIME");
    p = PUTS(p, "\r\n");
    char *first_rcpt = NULL, *first_rcpt_end = NULL;
    for (int r = 0; r < o->o_rcpts; r++) {
        c->sc_cmd_off[k++] = (size_t)(p - c->sc_cmd);
        p = PUTS(p, "RCPT TO:<");
        char *a = p;
        p = PUTS(p, "user");
        p = u64_to_dec(p, m * (uint64_t)o->o_rcpts + (uint64_t)r);
        p = PUTS(p, "@d");
        p = u64_to_dec(p, dom);
        p = PUTS(p, ".example");
        if (r == 0) {
            first_rcpt = a;
            first_rcpt_end = p;
        }
        p = PUTS(p, ">\r\n");
    }
    c->sc_cmd_off[k++] = (size_t)(p - c->sc_cmd);
    p = PUTS(p, "DATA\r\n");
    c->sc_cmd_off[k] = (size_t)(p - c->sc_cmd);
    c->sc_ncmds = k;
    c->sc_nreplies = k;

    /* Header tail: To and Message-ID after the shared prefix. */
    char *h = c->sc_hdr + s->s_hdr_prefix_len;
    h = PUTS(h, "To: <");
    h = put(h, first_rcpt, (size_t)(first_rcpt_end - first_rcpt));
    h = PUTS(h, ">\r\nMessage-ID: <");
    h = u64_to_hex(h, m, 12);
    h = PUTS(h, ".");
    h = put(h, s->s_msgid_nonce, strlen(s->s_msgid_nonce));
    h = PUTS(h, "@sluice-source.invalid>\r\n\r\n");
    c->sc_hdr_len = (size_t)(h - c->sc_hdr);

    src_enter_state(c, SRC_S_TXN);
    if (c->sc_pipelining) {
        uv_buf_t b = uv_buf_init(c->sc_cmd, (unsigned)c->sc_cmd_off[k]);
        src_send(c, &b, 1);
        c->sc_cmd_sent = k;
    } else {
        src_send_next_cmd(c);
    }
}

/* Without PIPELINING: one command per reply. */
static void src_send_next_cmd(src_conn_t *c)
{
    int i = c->sc_cmd_sent;
    if (i >= c->sc_ncmds)
        return;
    uv_buf_t b = uv_buf_init(c->sc_cmd + c->sc_cmd_off[i],
                             (unsigned)(c->sc_cmd_off[i + 1] - c->sc_cmd_off[i]));
    c->sc_cmd_sent++;
    src_send(c, &b, 1);
}

/* ------------------------------------------------------------ writing */

static src_wreq_t *src_wreq_get(src_t *s)
{
    src_wreq_t *w = s->s_wfree;
    if (w != NULL) {
        s->s_wfree = w->w_next;
        return w;
    }
    w = xcalloc(1, sizeof(*w));
    return w;
}

static void src_send(src_conn_t *c, const uv_buf_t *bufs, unsigned nbufs)
{
    src_t *s = c->sc_src;
    for (unsigned i = 0; i < nbufs; i++)
        s->s_bytes += bufs[i].len;
    if (c->sc_tls != NULL) {
        for (unsigned i = 0; i < nbufs; i++) {
            if (tls_write(c->sc_tls, bufs[i].base, bufs[i].len) < 0) {
                src_conn_fail(c, "TLS write", false);
                return;
            }
        }
        src_tls_flush(c);
        return;
    }
    src_wreq_t *w = src_wreq_get(s);
    w->w_conn = c;
    w->w_req.data = w;
    int rc = uv_write(&w->w_req, (uv_stream_t *)&c->sc_tcp, bufs, nbufs, src_write_cb);
    if (rc < 0) {
        w->w_next = s->s_wfree;
        s->s_wfree = w;
        src_conn_fail(c, uv_strerror(rc), true);
    }
}

static void src_send_str(src_conn_t *c, const char *str)
{
    uv_buf_t b = uv_buf_init((char *)str, (unsigned)strlen(str));
    src_send(c, &b, 1);
}

/* Write whatever ciphertext TLS has queued. 0, or negative after failing
 * the connection. */
static int src_tls_flush(src_conn_t *c)
{
    src_t *s = c->sc_src;
    if (c->sc_tls == NULL)
        return 0;
    src_wreq_t *w = src_wreq_get(s);
    buf_reset(&w->w_buf);
    tls_pending_out(c->sc_tls, &w->w_buf);
    if (w->w_buf.b_len == 0) {
        w->w_next = s->s_wfree;
        s->s_wfree = w;
        return 0;
    }
    w->w_conn = c;
    w->w_req.data = w;
    uv_buf_t b = uv_buf_init(w->w_buf.b_data, (unsigned)w->w_buf.b_len);
    int rc = uv_write(&w->w_req, (uv_stream_t *)&c->sc_tcp, &b, 1, src_write_cb);
    if (rc < 0) {
        w->w_next = s->s_wfree;
        s->s_wfree = w;
        src_conn_fail(c, uv_strerror(rc), true);
        return rc;
    }
    return 0;
}

static void src_write_cb(uv_write_t *req, int status)
{
    src_wreq_t *w = req->data;
    src_conn_t *c = w->w_conn;
    src_t *s = c->sc_src;
    w->w_next = s->s_wfree;
    s->s_wfree = w;
    if (status < 0 && status != UV_ECANCELED && c->sc_state != SRC_S_CLOSING &&
        c->sc_state != SRC_S_DONE && c->sc_state != SRC_S_WAIT)
        src_conn_fail(c, uv_strerror(status), true);
}

/* ------------------------------------------------------------ closing */

/* The session broke. The message in flight (if any) gets no outcome
 * ("error"), and the slot reconnects after a delay: at once-ish after a
 * server close (421, EOF), with a growing delay after connect failures,
 * giving up after SRC_MAX_CONNECT_FAILS in a row. */
static void src_conn_fail(src_conn_t *c, const char *why, bool server_closed)
{
    src_t *s = c->sc_src;
    if (c->sc_state == SRC_S_CLOSING || c->sc_state == SRC_S_DONE || c->sc_state == SRC_S_WAIT)
        return;
    log_debug("conn=%d failed in %s: %s", c->sc_slot, src_state_names[c->sc_state], why);
    if (c->sc_has_msg)
        src_msg_outcome(c, 0, "", 0);
    s->s_conn_errors++;
    uint64_t delay_ms;
    if (server_closed && c->sc_progress) {
        /* closed after some work (421 backpressure, -m style limits): reopen */
        s->s_reopens++;
        c->sc_fail_streak = 0;
        delay_ms = 100;
        if (s->s_reopens > SRC_MAX_REOPENS)
            c->sc_fail_streak = SRC_MAX_CONNECT_FAILS;
    } else {
        c->sc_fail_streak++;
        delay_ms = 100u * (uint64_t)c->sc_fail_streak;
    }
    c->sc_reopen = c->sc_fail_streak < SRC_MAX_CONNECT_FAILS;
    if (!c->sc_reopen)
        src_warn("conn=%d giving up: %s", c->sc_slot, why);
    c->sc_reconnect_at = clock_mono_us() + delay_ms * 1000u;
    src_conn_close(c);
}

static void src_conn_close(src_conn_t *c)
{
    if (c->sc_state == SRC_S_CLOSING || c->sc_state == SRC_S_DONE || c->sc_state == SRC_S_WAIT)
        return;
    src_enter_state(c, SRC_S_CLOSING);
    uv_close((uv_handle_t *)&c->sc_tcp, src_close_cb);
}

static void src_close_cb(uv_handle_t *h)
{
    src_conn_t *c = h->data;
    src_t *s = c->sc_src;
    if (c->sc_tls != NULL) {
        tls_conn_free(c->sc_tls);
        c->sc_tls = NULL;
    }
    c->sc_deadline = 0;
    if (c->sc_reopen && !s->s_stopping && s->s_next < s->s_opt.o_n) {
        src_enter_state(c, SRC_S_WAIT);
        if (c->sc_reconnect_at == 0)
            src_connect(c);
        return;
    }
    src_enter_state(c, SRC_S_DONE);
    s->s_live--;
    src_maybe_finish(s);
}

/* Close everything at once (time limit). */
static void src_stop(src_t *s)
{
    s->s_stopping = true;
    for (int i = 0; i < s->s_opt.o_conns; i++) {
        src_conn_t *c = &s->s_conns[i];
        if (c->sc_has_msg) {
            /* unfinished at the deadline: counted as errors */
            src_msg_outcome(c, 0, "", 0);
        }
        if (c->sc_state == SRC_S_WAIT) {
            src_enter_state(c, SRC_S_DONE);
            s->s_live--;
        } else {
            c->sc_reopen = false;
            src_conn_close(c);
        }
    }
    src_maybe_finish(s);
}

static void src_maybe_finish(src_t *s)
{
    if (s->s_live > 0)
        return;
    if (s->s_end == 0)
        s->s_end = clock_mono_us();
    uv_timer_stop(&s->s_tick);
    if (!uv_is_closing((uv_handle_t *)&s->s_tick))
        uv_close((uv_handle_t *)&s->s_tick, NULL);
}

/* Every SRC_TICK_MS: the time limit, reply deadlines, due reconnects. */
static void src_tick_cb(uv_timer_t *t)
{
    src_t *s = t->data;
    uint64_t now = clock_mono_us();
    if (!s->s_stopping && now - s->s_start >= s->s_opt.o_max_seconds * 1000000u) {
        fprintf(stderr, "sluice-source: time limit (%llu s) reached\n",
                (unsigned long long)s->s_opt.o_max_seconds);
        s->s_timed_out = true;
        src_stop(s);
        return;
    }
    for (int i = 0; i < s->s_opt.o_conns; i++) {
        src_conn_t *c = &s->s_conns[i];
        if (c->sc_state == SRC_S_WAIT) {
            if (s->s_stopping || s->s_next >= s->s_opt.o_n) {
                src_enter_state(c, SRC_S_DONE);
                s->s_live--;
            } else if (now >= c->sc_reconnect_at) {
                src_connect(c);
            }
        } else if (c->sc_deadline != 0 && now >= c->sc_deadline && c->sc_state != SRC_S_CLOSING &&
                   c->sc_state != SRC_S_DONE) {
            if (c->sc_state == SRC_S_QUIT) {
                src_conn_close(c);
            } else {
                src_warn("conn=%d timeout in %s", c->sc_slot, src_state_names[c->sc_state]);
                src_conn_fail(c, "timeout", false);
            }
        }
    }
    src_maybe_finish(s);
}

/* ------------------------------------------------------------ run & report */

static int src_run(src_t *s)
{
    s->s_loop = xmalloc(sizeof(uv_loop_t));
    uv_loop_init(s->s_loop);
    uv_timer_init(s->s_loop, &s->s_tick);
    s->s_tick.data = s;
    s->s_start = clock_mono_us();
    uv_timer_start(&s->s_tick, src_tick_cb, SRC_TICK_MS, SRC_TICK_MS);
    for (int i = 0; i < s->s_opt.o_conns; i++) {
        if (s->s_opt.o_n == 0) {
            s->s_conns[i].sc_state = SRC_S_DONE;
            s->s_live--;
            continue;
        }
        src_connect(&s->s_conns[i]);
    }
    src_maybe_finish(s);
    uv_run(s->s_loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(s->s_loop);
    free(s->s_loop);
    s->s_loop = NULL;
    return rc;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of the sorted latencies, in milliseconds. */
static double src_pct(const src_t *s, double p)
{
    if (s->s_nlat == 0)
        return 0.0;
    uint64_t rank = (uint64_t)(p * (double)s->s_nlat + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > s->s_nlat)
        rank = s->s_nlat;
    return s->s_lat[rank - 1] / 1000.0;
}

static void src_report(src_t *s)
{
    qsort(s->s_lat, s->s_nlat, sizeof(uint32_t), cmp_u32);
    uint64_t end = s->s_end != 0 ? s->s_end : clock_mono_us();
    double el = (double)(end - s->s_start) / 1e6;
    double rate = el > 0 ? (double)s->s_accepted / el : 0.0;
    double p50 = src_pct(s, 0.50), p90 = src_pct(s, 0.90), p99 = src_pct(s, 0.99);
    double pmax = src_pct(s, 1.0);
    if (s->s_opt.o_json) {
        printf("{\"sent\":%llu,\"accepted\":%llu,\"temp_failed\":%llu,\"perm_failed\":%llu,"
               "\"errors\":%llu,\"elapsed_s\":%.3f,\"msgs_per_s\":%.1f,\"lat_p50_ms\":%.3f,"
               "\"lat_p90_ms\":%.3f,\"lat_p99_ms\":%.3f,\"lat_max_ms\":%.3f,\"bytes\":%llu,"
               "\"rcpt_rejected\":%llu,\"ids_missing\":%llu,\"conn_errors\":%llu,"
               "\"timed_out\":%s}\n",
               (unsigned long long)s->s_done, (unsigned long long)s->s_accepted,
               (unsigned long long)s->s_temp, (unsigned long long)s->s_perm,
               (unsigned long long)s->s_errors, el, rate, p50, p90, p99, pmax,
               (unsigned long long)s->s_bytes, (unsigned long long)s->s_rcpt_rejected,
               (unsigned long long)s->s_ids_missing, (unsigned long long)s->s_conn_errors,
               s->s_timed_out ? "true" : "false");
    } else {
        printf("sluice-source: %llu messages of %zu bytes over %d connections to %s%s\n",
               (unsigned long long)s->s_done, s->s_hdr_prefix_len + 100 + s->s_body_len,
               s->s_opt.o_conns, s->s_opt.o_server, s->s_opt.o_tls ? " (STARTTLS)" : "");
        printf("  accepted      %llu\n", (unsigned long long)s->s_accepted);
        printf("  temp-failed   %llu (4xx)\n", (unsigned long long)s->s_temp);
        printf("  perm-failed   %llu (5xx)\n", (unsigned long long)s->s_perm);
        printf("  errors        %llu (no reply; %llu connection errors)\n",
               (unsigned long long)s->s_errors, (unsigned long long)s->s_conn_errors);
        if (s->s_rcpt_rejected > 0)
            printf("  rcpt-rejected %llu\n", (unsigned long long)s->s_rcpt_rejected);
        if (s->s_ids_missing > 0)
            printf("  no queue id   %llu (250 without \"queued as\")\n",
                   (unsigned long long)s->s_ids_missing);
        printf("  elapsed       %.3f s%s\n", el, s->s_timed_out ? " (time limit reached)" : "");
        printf("  rate          %.1f accepted msgs/s\n", rate);
        printf("  latency ms    p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n", p50, p90, p99, pmax);
        printf("  bytes sent    %llu\n", (unsigned long long)s->s_bytes);
    }
    fflush(stdout);
}

static void src_free(src_t *s)
{
    for (int i = 0; s->s_conns != NULL && i < s->s_opt.o_conns; i++) {
        src_conn_t *c = &s->s_conns[i];
        free(c->sc_rbuf);
        free(c->sc_netbuf);
        free(c->sc_cmd);
        free(c->sc_cmd_off);
        free(c->sc_hdr);
    }
    free(s->s_conns);
    while (s->s_wfree != NULL) {
        src_wreq_t *w = s->s_wfree;
        s->s_wfree = w->w_next;
        buf_free(&w->w_buf);
        free(w);
    }
    free(s->s_lat);
    free(s->s_body);
    free(s->s_hdr_prefix);
    if (s->s_tls_ctx != NULL)
        tls_ctx_free(s->s_tls_ctx);
    if (s->s_ids != NULL)
        fclose(s->s_ids);
}

/* Long: options, set-up, the run and its report, in the order they happen;
 * each step's error exit makes the length. */
int main(int argc, char **argv)
{
    static src_t src;
    src_t *s = &src;
    src_opts_t *o = &s->s_opt;
    o->o_server = "127.0.0.1:2525";
    o->o_n = 1000;
    o->o_size = 5120;
    o->o_conns = 10;
    o->o_rcpts = 1;
    o->o_domains = 1;
    o->o_max_seconds = 300;
    o->o_from = "bench@source.example";

    enum { OPT_IDS = 256, OPT_JOB, OPT_JSON, OPT_8BIT, OPT_VERSION };
    static const struct option longopts[] = {
        {"ids", required_argument, NULL, OPT_IDS},
        {"job", required_argument, NULL, OPT_JOB},
        {"json", no_argument, NULL, OPT_JSON},
        {"8bit", no_argument, NULL, OPT_8BIT},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
    };
    int ch;
    uint64_t v;
    while ((ch = getopt_long(argc, argv, "s:n:S:c:r:d:m:Tt:f:vh", longopts, NULL)) != -1) {
        switch (ch) {
        case 's':
            o->o_server = optarg;
            break;
        case 'n':
        case 'S':
        case 'c':
        case 'r':
        case 'd':
        case 'm':
        case 't':
            if (src_parse_num(optarg, &v) != 0) {
                fprintf(stderr, "sluice-source: -%c: not a number: '%s'\n", ch, optarg);
                return 2;
            }
            if ((ch == 'c' || ch == 'r' || ch == 'd') && (v < 1 || v > 100000)) {
                fprintf(stderr, "sluice-source: -%c: must be 1..100000\n", ch);
                return 2;
            }
            if ((ch == 'm' && v > 100000000) || (ch == 'n' && v > 1000000000) ||
                (ch == 't' && (v < 1 || v > 86400)) || (ch == 'S' && v > 256u * 1024 * 1024)) {
                fprintf(stderr, "sluice-source: -%c: out of range\n", ch);
                return 2;
            }
            if (ch == 'n')
                o->o_n = v;
            else if (ch == 'S')
                o->o_size = v;
            else if (ch == 'c')
                o->o_conns = (int)v;
            else if (ch == 'r')
                o->o_rcpts = (int)v;
            else if (ch == 'd')
                o->o_domains = (int)v;
            else if (ch == 'm')
                o->o_per_conn = (int)v;
            else
                o->o_max_seconds = v;
            break;
        case 'T':
            o->o_tls = true;
            break;
        case 'f':
            if (strlen(optarg) > 256 || strpbrk(optarg, "<> \r\n") != NULL) {
                fprintf(stderr, "sluice-source: -f: bad address\n");
                return 2;
            }
            o->o_from = optarg;
            break;
        case 'v':
            o->o_verbose = true;
            break;
        case OPT_IDS:
            o->o_ids = optarg;
            break;
        case OPT_JOB:
            if (strlen(optarg) > 200 || strpbrk(optarg, "\r\n") != NULL) {
                fprintf(stderr, "sluice-source: --job: bad value\n");
                return 2;
            }
            o->o_job = optarg;
            break;
        case OPT_JSON:
            o->o_json = true;
            break;
        case OPT_8BIT:
            o->o_8bit = true;
            break;
        case 'h':
            src_usage(stdout);
            return 0;
        case OPT_VERSION:
            printf("sluice-source %s\n", SLUICE_VERSION);
            return 0;
        default:
            src_usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        src_usage(stderr);
        return 2;
    }
    if ((uint64_t)o->o_conns > o->o_n && o->o_n > 0)
        o->o_conns = (int)o->o_n;
    log_init(o->o_verbose ? LOG_DEBUG : LOG_WARN, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (src_setup(s) != 0) {
        src_free(s);
        return 2;
    }
    if (src_run(s) != 0)
        log_warn("loop did not close cleanly");
    src_report(s);
    int status = s->s_accepted == o->o_n ? 0 : 1;
    src_free(s);
    return status;
}
