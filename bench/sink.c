/*
 * bench/sink.c - sluice-sink, the receiving SMTP server of the end-to-end
 * tests and the benchmarks.
 *
 * It accepts mail on one or more loopback listeners, counts everything
 * (connections, messages, recipients, bytes, faults, per client IP, per
 * recipient domain), optionally stores each message (DIR/<seq>.eml, the
 * data exactly as received after dot-unstuffing, plus DIR/<seq>.json with
 * the envelope), and answers with scripted faults chosen by the recipient's
 * local part (tempfail, permfail, 421, slow, drop, datafail, datareject,
 * tempfailonce) or by probability (--tempfail-pct, --permfail-pct).
 *
 * Providers (--profile FILE, JSON): named groups of recipient domains (or
 * one listener each, like an MX host) with their own behaviour: response
 * texts, tempfail/permfail percentages, a cap on concurrent connections
 * (421 above it), messages per connection, a recipient rate (token bucket)
 * and their own counters in the summary and the stats lines. --hold makes
 * every new connection wait for its greeting until SIGUSR1 (a backlog
 * builds up in the client, then drains at once).
 *
 * Main parts: main() (options through sink_parse_args(), listeners,
 * signals, the loop),
 * sink_conn_* (one SMTP session: read, line/DATA parsing, replies, TLS),
 * sink_prov_* (the profile), sink_map_* (string-keyed counters),
 * sink_summary_write().
 *
 * Thread: everything runs on one libuv loop in the main thread. The hot path
 * (MAIL, RCPT, DATA, body, 250) allocates nothing once a connection's
 * buffers have grown; bodies are only kept with --store.
 */
#include "core/base/base.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <json-c/json.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SINK_MAX_LISTENERS 16
#define SINK_MAX_LINE 8192     /* longest command line we buffer */
#define SINK_MAX_RCPTS 1000    /* RFC 5321 §4.5.3.1 asks for at least 100 */
#define SINK_MAX_SIZE 52428800 /* advertised SIZE */
#define SINK_READ_SIZE 65536
#define SINK_MAX_PROVS 64
#define SINK_HDR_KEEP 8192 /* bytes of each message kept for the log's header fields */

/* ---------------------------------------------------------------- counters */

/* A string-keyed set of counters (open addressing, FNV-1a). */
typedef struct sink_count {
    char *sc_key;
    uint64_t sc_v[4];
} sink_count_t;

typedef struct sink_map {
    sink_count_t *sm_slots;
    size_t sm_cap; /* power of two */
    size_t sm_n;
} sink_map_t;

/* by_ip counters */
enum { IP_CONNS = 0, IP_MSGS, IP_RCPTS, IP_BYTES };
/* by_domain counters */
enum { DOM_RCPTS = 0, DOM_TEMPFAILS, DOM_PERMFAILS };

/* One provider of the --profile: its domains, its behaviour, its counters.
 * Numbers left out of the profile are taken from the command line. */
typedef struct sink_prov {
    char *p_name;
    char **p_domains; /* "d.example" exact, "*.suffix" or ".suffix": subdomains */
    int p_ndomains;
    int p_listener; /* index of the -l listener it owns, -1 = by domain only */
    long p_max_conns;
    long p_rate_per_conn;
    double p_rate; /* recipients per second accepted by the provider, 0 = no limit */
    double p_tempfail_pct, p_permfail_pct;
    char *p_ok_text; /* "{seq}" is replaced by the message number */
    char *p_tempfail_text, *p_permfail_text, *p_max_conns_text, *p_rate_per_conn_text, *p_rate_text;
    double p_tokens;
    uint64_t p_tokens_us;
    uint64_t p_conns, p_conns_rejected, p_conns_cur, p_conns_max;
    uint64_t p_msgs, p_rcpts, p_bytes, p_tempfails, p_permfails, p_rate_limited, p_421s;
    uint64_t p_st_msgs; /* at the previous stats line */
} sink_prov_t;

/* ---------------------------------------------------------------- session */

typedef enum {
    SINK_ST_CONNECTED = 0, /* greeted, waiting for EHLO/HELO */
    SINK_ST_READY,         /* HELO done, no transaction */
    SINK_ST_MAIL,          /* MAIL accepted, RCPTs may follow */
    SINK_ST_DATA,          /* reading the message body */
    SINK_ST_TLS,           /* STARTTLS handshake in progress */
    SINK_ST_CLOSING,
} sink_state_t;

static const char *const sink_state_names[] = {"connected", "ready", "mail",
                                               "data",      "tls",   "closing"};

/* Faults scripted for the current transaction (by recipient local part). */
enum {
    SINK_F_SLOW = 1 << 0,
    SINK_F_DROP = 1 << 1,
    SINK_F_DATAFAIL = 1 << 2,
    SINK_F_DATAREJECT = 1 << 3,
};

typedef struct sink_conn {
    uv_tcp_t c_tcp; /* first: the handle's data is the conn too */
    uv_timer_t c_timer;
    uv_write_t c_wreq;
    int c_nhandles; /* open handles; freed when 0 */
    struct sink_conn *c_prev, *c_next;

    sink_state_t c_state;
    uint64_t c_id;   /* connection number, from 1 */
    bool c_rejected; /* greeted with 421 (max-conns, greeting-421) */
    bool c_quit;     /* close once the output is flushed */
    bool c_paused;   /* a slow reply is held */
    bool c_writing;  /* c_wreq in flight */
    bool c_esmtp;
    bool c_on_hold;       /* --hold: not greeted yet */
    int c_prov;           /* provider index, -1 = none yet */
    const char *c_reason; /* why the session ended */

    char c_ip[64];
    int c_port;
    int c_lport; /* the listener's port */
    char c_helo[256];
    char c_tls_version[32];
    char c_tls_cipher[96];
    tls_conn_t *c_tls;

    buf_t c_in;   /* plaintext input, processed from the front */
    buf_t c_out;  /* wire bytes to send */
    buf_t c_wbuf; /* wire bytes being written */
    buf_t c_rep;  /* plaintext replies waiting for encryption (TLS) */
    buf_t c_held; /* a reply held back by the "slow" fault */

    /* the transaction */
    buf_t c_from;
    buf_t c_rcpts; /* NUL-terminated addresses, back to back */
    int c_nrcpt;
    int c_faults;
    bool c_utf8;     /* MAIL had SMTPUTF8 */
    bool c_data_bol; /* DATA: at the beginning of a line */
    bool c_toobig;
    uint64_t c_msg_bytes;
    buf_t c_body; /* --store only */
    buf_t c_head; /* --log only: the first SINK_HDR_KEEP bytes, for qid / Message-ID */

    /* per connection totals */
    uint64_t c_msgs, c_nrcpts_ok, c_bytes;
    uint64_t c_start_us;
} sink_conn_t;

/* ---------------------------------------------------------------- options */

typedef struct sink_opts {
    const char *o_listen[SINK_MAX_LISTENERS];
    int o_nlisten;
    const char *o_port_file;
    const char *o_tls_cert, *o_tls_key, *o_tls_generate;
    bool o_starttls, o_pipelining, o_8bitmime, o_smtputf8, o_ehlo_fail, o_greeting_421;
    const char *o_store;
    const char *o_log;
    double o_tempfail_pct, o_permfail_pct;
    long o_max_conns;
    long o_rate_per_conn;
    char o_hostname[256];
    double o_quit_after;
    double o_stats_interval;
    const char *o_summary;
    long o_slow_ms;
    uint64_t o_seed;
    const char *o_profile;
    bool o_hold;
} sink_opts_t;

/* The sink's state: one instance, owned by main, used by the loop thread. */
typedef struct sink {
    sink_opts_t s_o;
    uv_loop_t s_loop;
    uv_tcp_t s_listen[SINK_MAX_LISTENERS];
    int s_ports[SINK_MAX_LISTENERS];
    int s_nlisten;
    uv_signal_t s_sigterm, s_sigint, s_sigusr1;
    uv_timer_t s_quit_timer, s_stats_timer, s_tick_timer;
    bool s_stopping;
    tls_ctx_t *s_tls_ctx;
    FILE *s_log;
    buf_t s_line; /* scratch for log lines */
    sink_conn_t *s_conns;
    uint64_t s_rng;

    uint64_t s_start_us;
    uint64_t s_first_msg_us, s_last_msg_us;
    uint64_t s_conns_total, s_conns_rejected, s_conns_cur, s_conns_max, s_tls_conns;
    uint64_t s_tls_resumed; /* of s_tls_conns: the client resumed a session (issue 18) */
    uint64_t s_msgs, s_rcpts, s_bytes;
    uint64_t s_rcpt_tempfails, s_rcpt_permfails, s_data_tempfails, s_data_permfails;
    uint64_t s_drops, s_aborts, s_421s, s_seq;
    /* the previous stats interval */
    uint64_t s_st_us, s_st_msgs, s_st_rcpts, s_st_bytes;

    sink_map_t s_by_ip, s_by_domain, s_seen_once;

    sink_prov_t s_provs[SINK_MAX_PROVS];
    int s_nprovs;
    sink_map_t s_prov_of; /* domain -> provider index + 1 (0 = none), a cache */
    bool s_held;          /* --hold until SIGUSR1 */
} sink_t;

static sink_t G;

/* ---------------------------------------------------------------- table of contents */

static void sink_map_init(sink_map_t *m);
static void sink_map_free(sink_map_t *m);
static sink_count_t *sink_map_get(sink_map_t *m, const char *key, size_t len, bool *created);
static void json_str(buf_t *b, const char *s, size_t len);
static void json_cstr(buf_t *b, const char *s);
static void sink_log_line(buf_t *line);
static double sink_rand_pct(void);

static void sink_accept_cb(uv_stream_t *srv, int status);
static void sink_conn_enter_state(sink_conn_t *c, sink_state_t st);
static void sink_conn_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b);
static void sink_conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b);
static void sink_conn_process(sink_conn_t *c);
static void sink_conn_command(sink_conn_t *c, char *line, size_t len);
static size_t sink_conn_data(sink_conn_t *c, const char *p, size_t len);
static void sink_conn_message_end(sink_conn_t *c);
static void sink_conn_reply(sink_conn_t *c, const char *s);
static void sink_conn_emit(sink_conn_t *c, const char *s, size_t len);
static void sink_conn_flush(sink_conn_t *c);
static void sink_conn_write_cb(uv_write_t *w, int status);
static void sink_conn_slow_cb(uv_timer_t *t);
static void sink_conn_txn_reset(sink_conn_t *c);
static void sink_conn_close(sink_conn_t *c, const char *reason);
static void sink_conn_closed_cb(uv_handle_t *h);
static int sink_conn_starttls(sink_conn_t *c);
static int sink_conn_tls_input(sink_conn_t *c, const char *data, size_t len);
static void sink_store_message(sink_conn_t *c, uint64_t seq, uint64_t now_us);
static void sink_summary_write(void);
static void sink_stats_cb(uv_timer_t *t);
static void sink_stop(const char *why);
static int sink_prov_load(const char *path);
static void sink_prov_free(void);
static int sink_prov_for(const char *addr);
static int sink_prov_assign(sink_conn_t *c, int p);
static bool sink_prov_rate_ok(sink_prov_t *p, uint64_t now_us);
static void sink_conn_greet(sink_conn_t *c);
static void sink_log_headers(buf_t *l, const buf_t *head);

/* ---------------------------------------------------------------- helpers */

static void sink_map_init(sink_map_t *m)
{
    m->sm_cap = 64;
    m->sm_n = 0;
    m->sm_slots = xcalloc(m->sm_cap, sizeof(sink_count_t));
}

static void sink_map_free(sink_map_t *m)
{
    for (size_t i = 0; i < m->sm_cap; i++)
        free(m->sm_slots[i].sc_key);
    free(m->sm_slots);
    m->sm_slots = NULL;
    m->sm_cap = m->sm_n = 0;
}

static uint64_t sink_hash(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* The counters for key (inserted, zeroed, when missing). The pointer is valid
 * until the next insertion. */
static sink_count_t *sink_map_get(sink_map_t *m, const char *key, size_t len, bool *created)
{
    if ((m->sm_n + 1) * 4 > m->sm_cap * 3) {
        sink_map_t n = {xcalloc(m->sm_cap * 2, sizeof(sink_count_t)), m->sm_cap * 2, m->sm_n};
        for (size_t i = 0; i < m->sm_cap; i++) {
            sink_count_t *e = &m->sm_slots[i];
            if (e->sc_key == NULL)
                continue;
            size_t j = sink_hash(e->sc_key, strlen(e->sc_key)) & (n.sm_cap - 1);
            while (n.sm_slots[j].sc_key != NULL)
                j = (j + 1) & (n.sm_cap - 1);
            n.sm_slots[j] = *e;
        }
        free(m->sm_slots);
        *m = n;
    }
    size_t j = sink_hash(key, len) & (m->sm_cap - 1);
    for (;;) {
        sink_count_t *e = &m->sm_slots[j];
        if (e->sc_key == NULL) {
            e->sc_key = xstrndup(key, len);
            m->sm_n++;
            if (created)
                *created = true;
            return e;
        }
        if (strncmp(e->sc_key, key, len) == 0 && e->sc_key[len] == '\0') {
            if (created)
                *created = false;
            return e;
        }
        j = (j + 1) & (m->sm_cap - 1);
    }
}

/* Append s as a JSON string (quotes included). Bytes >= 0x80 pass through:
 * addresses and HELO names are expected to be UTF-8. */
static void json_str(buf_t *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    buf_reserve(b, len + 2);
    b->b_data[b->b_len++] = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            char e[2] = {'\\', (char)ch};
            buf_append(b, e, 2);
        } else if (ch < 0x20 || ch == 0x7f) {
            char e[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
            buf_append(b, e, 6);
        } else {
            buf_reserve(b, 1);
            b->b_data[b->b_len++] = (char)ch;
        }
    }
    buf_append(b, "\"", 1);
}

static void json_cstr(buf_t *b, const char *s)
{
    if (s == NULL)
        buf_append_str(b, "null");
    else
        json_str(b, s, strlen(s));
}

/* One JSON line to --log, or to stderr without --log. Buffered; flushed by
 * the tick timer and at exit. */
static void sink_log_line(buf_t *line)
{
    buf_append(line, "\n", 1);
    if (G.s_log != NULL)
        fwrite(line->b_data, 1, line->b_len, G.s_log);
    else if (write(2, line->b_data, line->b_len) < 0)
        (void)0;
}

/* xorshift64*: a uniform number in [0, 100). */
static double sink_rand_pct(void)
{
    uint64_t x = G.s_rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    G.s_rng = x;
    return (double)((x * 2685821657736338717ULL) >> 11) / (double)(1ULL << 53) * 100.0;
}

static double us_to_s(uint64_t us)
{
    return (double)us / 1e6;
}

/* "/path/x.tmp" then rename, so that readers never see half a file. */
static int write_file_atomic(const char *path, const void *data, size_t len)
{
    char tmp[4200];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            int e = -errno;
            close(fd);
            unlink(tmp);
            return e;
        }
        p += w;
        len -= (size_t)w;
    }
    close(fd);
    if (rename(tmp, path) < 0)
        return -errno;
    return 0;
}

static void str_lower(char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (s[i] >= 'A' && s[i] <= 'Z')
            s[i] = (char)(s[i] - 'A' + 'a');
}

/* ---------------------------------------------------------------- sessions */

static void sink_conn_enter_state(sink_conn_t *c, sink_state_t st)
{
    if (c->c_state == st)
        return;
    log_debug("conn=%" PRIu64 " state %s -> %s", c->c_id, sink_state_names[c->c_state],
              sink_state_names[st]);
    c->c_state = st;
}

static void sink_log_connect(sink_conn_t *c)
{
    buf_t *l = &G.s_line;
    buf_reset(l);
    buf_printf(l, "{\"event\":\"connect\",\"time\":%.6f,\"conn\":%" PRIu64 ",\"client_ip\":",
               us_to_s(clock_now_us()), c->c_id);
    json_cstr(l, c->c_ip);
    buf_printf(
        l, ",\"client_port\":%d,\"listener_port\":%d,\"concurrent\":%" PRIu64 ",\"rejected\":%s}",
        c->c_port, c->c_lport, G.s_conns_cur, c->c_rejected ? "true" : "false");
    sink_log_line(l);
}

static void sink_accept_cb(uv_stream_t *srv, int status)
{
    if (status < 0) {
        log_warn("accept: %s", uv_strerror(status));
        return;
    }
    sink_conn_t *c = xcalloc(1, sizeof(*c));
    uv_tcp_init(&G.s_loop, &c->c_tcp);
    uv_timer_init(&G.s_loop, &c->c_timer);
    c->c_tcp.data = c;
    c->c_timer.data = c;
    c->c_nhandles = 2;
    c->c_prov = -1;
    if (uv_accept(srv, (uv_stream_t *)&c->c_tcp) != 0) {
        c->c_state = SINK_ST_CLOSING;
        uv_close((uv_handle_t *)&c->c_tcp, sink_conn_closed_cb);
        uv_close((uv_handle_t *)&c->c_timer, sink_conn_closed_cb);
        return;
    }
    uv_tcp_nodelay(&c->c_tcp, 1);
    c->c_id = ++G.s_conns_total;
    c->c_start_us = clock_now_us();
    c->c_lport = (int)(intptr_t)srv->data;
    sockaddr_any_t sa;
    int salen = sizeof(sa);
    if (uv_tcp_getpeername(&c->c_tcp, (struct sockaddr *)&sa, &salen) == 0) {
        net_ntop((struct sockaddr *)&sa, c->c_ip, sizeof(c->c_ip));
        c->c_port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                                   : ((struct sockaddr_in *)&sa)->sin_port);
    } else {
        snprintf(c->c_ip, sizeof(c->c_ip), "unknown");
    }
    buf_init(&c->c_in, 4096);
    buf_init(&c->c_out, 1024);
    buf_init(&c->c_from, 256);
    buf_init(&c->c_rcpts, 256);
    sink_conn_txn_reset(c);
    c->c_next = G.s_conns;
    if (G.s_conns)
        G.s_conns->c_prev = c;
    G.s_conns = c;

    sink_count_t *ip = sink_map_get(&G.s_by_ip, c->c_ip, strlen(c->c_ip), NULL);
    ip->sc_v[IP_CONNS]++;

    if (G.s_o.o_greeting_421 ||
        (G.s_o.o_max_conns > 0 && G.s_conns_cur >= (uint64_t)G.s_o.o_max_conns)) {
        c->c_rejected = true;
        G.s_conns_rejected++;
        G.s_421s++;
        if (G.s_o.o_log)
            sink_log_connect(c);
        char r[400];
        if (G.s_o.o_greeting_421)
            snprintf(r, sizeof(r), "421 4.7.0 %s Service not available, try again later",
                     G.s_o.o_hostname);
        else
            snprintf(r, sizeof(r), "421 4.7.0 Too many connections");
        sink_conn_reply(c, r);
        c->c_quit = true;
        c->c_reason = "rejected";
        sink_conn_flush(c);
        return;
    }
    /* A provider that owns this listener (its "MX host") caps it at once. */
    for (int i = 0; i < G.s_nprovs; i++) {
        if (G.s_provs[i].p_listener < 0 || &G.s_listen[G.s_provs[i].p_listener] != (uv_tcp_t *)srv)
            continue;
        if (sink_prov_assign(c, i) < 0) {
            c->c_rejected = true;
            G.s_conns_rejected++;
            if (G.s_o.o_log)
                sink_log_connect(c);
            c->c_reason = "provider max-conns";
            sink_conn_flush(c);
            return;
        }
        break;
    }
    G.s_conns_cur++;
    if (G.s_conns_cur > G.s_conns_max)
        G.s_conns_max = G.s_conns_cur;
    if (G.s_o.o_log)
        sink_log_connect(c);
    if (G.s_held) {
        c->c_on_hold = true; /* greeted by sink_release_cb */
        return;
    }
    sink_conn_greet(c);
}

static void sink_conn_greet(sink_conn_t *c)
{
    char greet[400];
    c->c_on_hold = false;
    snprintf(greet, sizeof(greet), "220 %s ESMTP sluice-sink", G.s_o.o_hostname);
    sink_conn_reply(c, greet);
    sink_conn_flush(c);
    if (c->c_state != SINK_ST_CLOSING)
        uv_read_start((uv_stream_t *)&c->c_tcp, sink_conn_alloc_cb, sink_conn_read_cb);
}

/* SIGUSR1: end --hold, greet every connection that waited. */
static void sink_release_cb(uv_signal_t *sig, int signum)
{
    UNUSED(sig);
    UNUSED(signum);
    if (!G.s_held)
        return;
    G.s_held = false;
    log_info("hold released");
    for (sink_conn_t *c = G.s_conns; c; c = c->c_next)
        if (c->c_on_hold && c->c_state != SINK_ST_CLOSING)
            sink_conn_greet(c);
}

/* One loop thread: every read lands in the same scratch buffer, copied out
 * (or decrypted) before the callback returns. */
static void sink_conn_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    static char rbuf[SINK_READ_SIZE];
    b->base = rbuf;
    b->len = sizeof(rbuf);
}

static void sink_conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    sink_conn_t *c = s->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        if (c->c_state == SINK_ST_DATA) {
            G.s_aborts++;
            sink_conn_close(c, "client aborted in DATA");
        } else {
            sink_conn_close(c, nread == UV_EOF ? "client closed" : uv_strerror((int)nread));
        }
        return;
    }
    if (c->c_state == SINK_ST_CLOSING)
        return;
    if (c->c_tls != NULL) {
        if (sink_conn_tls_input(c, b->base, (size_t)nread) < 0)
            return;
    } else {
        buf_append(&c->c_in, b->base, (size_t)nread);
    }
    sink_conn_process(c);
}

/* Run every complete command line (or body part) in the input buffer. */
static void sink_conn_process(sink_conn_t *c)
{
    size_t pos = 0;
    while (!c->c_paused && !c->c_quit && c->c_state != SINK_ST_CLOSING &&
           c->c_state != SINK_ST_TLS && pos < c->c_in.b_len) {
        char *p = c->c_in.b_data + pos;
        size_t len = c->c_in.b_len - pos;
        if (c->c_state == SINK_ST_DATA) {
            size_t n = sink_conn_data(c, p, len);
            if (n == 0)
                break;
            pos += n;
            continue;
        }
        char *nl = memchr(p, '\n', len);
        if (nl == NULL) {
            if (len > SINK_MAX_LINE) {
                sink_conn_reply(c, "500 5.5.2 Line too long");
                c->c_quit = true;
                c->c_reason = "line too long";
            }
            break;
        }
        size_t ll = (size_t)(nl - p);
        pos += ll + 1;
        if (ll > 0 && p[ll - 1] == '\r')
            ll--;
        p[ll] = '\0';
        bool was_starttls = c->c_tls == NULL;
        sink_conn_command(c, p, ll);
        if (was_starttls && c->c_tls != NULL) {
            /* RFC 3207 §5: discard anything pipelined after STARTTLS. */
            pos = c->c_in.b_len;
        }
    }
    if (c->c_state != SINK_ST_CLOSING)
        buf_consume(&c->c_in, MIN(pos, c->c_in.b_len));
    sink_conn_flush(c);
}

/* The local part's fault name: before the last '@', without "+tag". */
static int fault_match(const char *addr, const char *name)
{
    const char *at = strrchr(addr, '@');
    size_t ll = at ? (size_t)(at - addr) : strlen(addr);
    const char *plus = memchr(addr, '+', ll);
    if (plus)
        ll = (size_t)(plus - addr);
    return strlen(name) == ll && strncasecmp(addr, name, ll) == 0;
}

/* Parse "FROM:<path> params" / "TO:<path> params". Sets *path (NUL-terminated
 * in place) and *params. Returns 0 or -1. */
static int parse_path(char *arg, const char *kw, char **path, char **params)
{
    size_t kl = strlen(kw);
    if (strncasecmp(arg, kw, kl) != 0)
        return -1;
    char *p = arg + kl;
    while (*p == ' ')
        p++;
    if (*p == '<') {
        char *end = strchr(p, '>');
        if (end == NULL)
            return -1;
        *end = '\0';
        p++;
        /* RFC 5321 §4.1.2: drop an obsolete source route "@a,@b:" */
        if (*p == '@') {
            char *colon = strchr(p, ':');
            if (colon)
                p = colon + 1;
        }
        *path = p;
        *params = end + 1;
    } else {
        char *sp = strchr(p, ' ');
        *path = p;
        *params = p + strlen(p);
        if (sp != NULL) {
            *sp = '\0';
            *params = sp + 1;
        }
    }
    while (**params == ' ')
        (*params)++;
    return 0;
}

/* Find an ESMTP parameter (case-insensitive keyword). Returns its value, ""
 * for a keyword without value, NULL when absent. */
static const char *param_get(const char *params, const char *key, char *val, size_t vlen)
{
    size_t kl = strlen(key);
    const char *p = params;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *end = p + strcspn(p, " ");
        if ((size_t)(end - p) >= kl && strncasecmp(p, key, kl) == 0 &&
            (p[kl] == '=' || p + kl == end)) {
            size_t n = p[kl] == '=' ? (size_t)(end - p - (ptrdiff_t)kl - 1) : 0;
            n = MIN(n, vlen - 1);
            if (n)
                memcpy(val, p + kl + 1, n);
            val[n] = '\0';
            return val;
        }
        p = end;
    }
    return NULL;
}

static bool has_8bit(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x80)
            return true;
    return false;
}

static void sink_cmd_ehlo(sink_conn_t *c, const char *arg, bool ehlo)
{
    if (*arg == '\0') {
        sink_conn_reply(c, "501 5.5.4 Syntax: EHLO hostname");
        return;
    }
    if (ehlo && G.s_o.o_ehlo_fail) {
        sink_conn_reply(c, "502 5.5.2 EHLO not implemented, use HELO");
        return;
    }
    snprintf(c->c_helo, sizeof(c->c_helo), "%s", arg);
    sink_conn_txn_reset(c);
    sink_conn_enter_state(c, SINK_ST_READY);
    c->c_esmtp = ehlo;
    char r[1024];
    if (!ehlo) {
        snprintf(r, sizeof(r), "250 %s", G.s_o.o_hostname);
        sink_conn_reply(c, r);
        return;
    }
    const char *ext[8];
    char size[32];
    int n = 0;
    if (G.s_o.o_pipelining)
        ext[n++] = "PIPELINING";
    snprintf(size, sizeof(size), "SIZE %d", SINK_MAX_SIZE);
    ext[n++] = size;
    if (G.s_o.o_8bitmime)
        ext[n++] = "8BITMIME";
    if (G.s_o.o_smtputf8)
        ext[n++] = "SMTPUTF8";
    ext[n++] = "ENHANCEDSTATUSCODES";
    if (G.s_tls_ctx != NULL && c->c_tls == NULL)
        ext[n++] = "STARTTLS";
    int off = snprintf(r, sizeof(r), "250-%s Hello %s", G.s_o.o_hostname, c->c_helo);
    for (int i = 0; i < n && off < (int)sizeof(r); i++)
        off += snprintf(r + off, sizeof(r) - (size_t)off, "\r\n250%c%s", i == n - 1 ? ' ' : '-',
                        ext[i]);
    sink_conn_reply(c, r);
}

static void sink_cmd_mail(sink_conn_t *c, char *arg)
{
    char *path, *params;
    char val[64];
    if (c->c_state == SINK_ST_CONNECTED) {
        sink_conn_reply(c, "503 5.5.1 Send EHLO/HELO first");
        return;
    }
    if (c->c_state != SINK_ST_READY) {
        sink_conn_reply(c, "503 5.5.1 Nested MAIL command");
        return;
    }
    sink_prov_t *pv = c->c_prov >= 0 ? &G.s_provs[c->c_prov] : NULL;
    long per_conn = pv ? pv->p_rate_per_conn : G.s_o.o_rate_per_conn;
    if (per_conn > 0 && c->c_msgs >= (uint64_t)per_conn) {
        G.s_421s++;
        if (pv)
            pv->p_421s++;
        sink_conn_reply(c, pv ? pv->p_rate_per_conn_text
                              : "421 4.7.0 Too many messages on this connection");
        c->c_quit = true;
        c->c_reason = "rate-per-conn";
        return;
    }
    if (parse_path(arg, "FROM:", &path, &params) < 0) {
        sink_conn_reply(c, "501 5.5.4 Syntax: MAIL FROM:<address>");
        return;
    }
    if (param_get(params, "SIZE", val, sizeof(val)) && strtoull(val, NULL, 10) > SINK_MAX_SIZE) {
        sink_conn_reply(c, "552 5.3.4 Message size exceeds fixed limit");
        return;
    }
    if (param_get(params, "BODY", val, sizeof(val)) && strcasecmp(val, "8BITMIME") == 0 &&
        !G.s_o.o_8bitmime) {
        sink_conn_reply(c, "555 5.5.4 BODY=8BITMIME not supported");
        return;
    }
    bool utf8 = param_get(params, "SMTPUTF8", val, sizeof(val)) != NULL;
    if (utf8 && !G.s_o.o_smtputf8) {
        sink_conn_reply(c, "555 5.5.4 SMTPUTF8 not supported");
        return;
    }
    if (!utf8 && has_8bit(path)) {
        sink_conn_reply(c, "553 5.6.7 Non-ASCII address requires SMTPUTF8");
        return;
    }
    buf_reset(&c->c_from);
    buf_append(&c->c_from, path, strlen(path) + 1);
    c->c_utf8 = utf8;
    sink_conn_enter_state(c, SINK_ST_MAIL);
    sink_conn_reply(c, "250 2.1.0 Ok");
}

/* Count a refused recipient against its domain. */
static void sink_domain_fail(const char *addr, int which)
{
    char dom[256];
    const char *at = strrchr(addr, '@');
    snprintf(dom, sizeof(dom), "%s", at ? at + 1 : "");
    size_t dl = strlen(dom);
    str_lower(dom, dl);
    sink_map_get(&G.s_by_domain, dom, dl, NULL)->sc_v[which]++;
}

static void sink_cmd_rcpt(sink_conn_t *c, char *arg)
{
    char *path, *params;
    if (c->c_state != SINK_ST_MAIL) {
        sink_conn_reply(c, "503 5.5.1 Need MAIL before RCPT");
        return;
    }
    if (parse_path(arg, "TO:", &path, &params) < 0 || *path == '\0') {
        sink_conn_reply(c, "501 5.5.4 Syntax: RCPT TO:<address>");
        return;
    }
    if (c->c_nrcpt >= SINK_MAX_RCPTS) {
        sink_conn_reply(c, "452 4.5.3 Too many recipients");
        return;
    }
    if (fault_match(path, "tempfail")) {
        G.s_rcpt_tempfails++;
        sink_domain_fail(path, DOM_TEMPFAILS);
        sink_conn_reply(c, "450 4.2.1 Mailbox temporarily unavailable");
        return;
    }
    if (fault_match(path, "permfail")) {
        G.s_rcpt_permfails++;
        sink_domain_fail(path, DOM_PERMFAILS);
        sink_conn_reply(c, "550 5.1.1 User unknown");
        return;
    }
    if (fault_match(path, "421")) {
        G.s_421s++;
        sink_conn_reply(c, "421 4.7.0 Try again later");
        c->c_quit = true;
        c->c_reason = "421 fault";
        return;
    }
    if (fault_match(path, "tempfailonce")) {
        size_t al = strlen(path);
        char key[1024];
        al = MIN(al, sizeof(key) - 1);
        memcpy(key, path, al);
        key[al] = '\0';
        str_lower(key, al);
        bool created;
        sink_map_get(&G.s_seen_once, key, al, &created)->sc_v[0]++;
        if (created) {
            G.s_rcpt_tempfails++;
            sink_domain_fail(path, DOM_TEMPFAILS);
            sink_conn_reply(c, "450 4.2.1 Mailbox temporarily unavailable (first attempt)");
            return;
        }
    } else if (fault_match(path, "slow")) {
        c->c_faults |= SINK_F_SLOW;
    } else if (fault_match(path, "drop")) {
        c->c_faults |= SINK_F_DROP;
    } else if (fault_match(path, "datafail")) {
        c->c_faults |= SINK_F_DATAFAIL;
    } else if (fault_match(path, "datareject")) {
        c->c_faults |= SINK_F_DATAREJECT;
    } else {
        /* The recipient's provider: the connection's one (its listener or
         * its first recipient), else by domain. */
        int pi = c->c_prov >= 0 ? c->c_prov : sink_prov_for(path);
        sink_prov_t *pv = NULL;
        if (pi >= 0) {
            if (c->c_prov < 0 && sink_prov_assign(c, pi) < 0) {
                c->c_reason = "provider max-conns";
                return;
            }
            pv = &G.s_provs[pi];
            if (pv->p_rate > 0 && !sink_prov_rate_ok(pv, clock_now_us())) {
                pv->p_rate_limited++;
                G.s_rcpt_tempfails++;
                pv->p_tempfails++;
                sink_domain_fail(path, DOM_TEMPFAILS);
                sink_conn_reply(c, pv->p_rate_text);
                if (strncmp(pv->p_rate_text, "421", 3) == 0) {
                    G.s_421s++;
                    pv->p_421s++;
                    c->c_quit = true;
                    c->c_reason = "provider rate";
                }
                return;
            }
        }
        double tf = pv ? pv->p_tempfail_pct : G.s_o.o_tempfail_pct;
        double pf = pv ? pv->p_permfail_pct : G.s_o.o_permfail_pct;
        if (tf > 0 || pf > 0) {
            double r = sink_rand_pct();
            if (r < tf) {
                G.s_rcpt_tempfails++;
                if (pv)
                    pv->p_tempfails++;
                sink_domain_fail(path, DOM_TEMPFAILS);
                sink_conn_reply(c, pv ? pv->p_tempfail_text
                                      : "450 4.2.1 Mailbox temporarily unavailable (random)");
                return;
            }
            if (r < tf + pf) {
                G.s_rcpt_permfails++;
                if (pv)
                    pv->p_permfails++;
                sink_domain_fail(path, DOM_PERMFAILS);
                sink_conn_reply(c, pv ? pv->p_permfail_text : "550 5.1.1 User unknown (random)");
                return;
            }
        }
    }
    if (has_8bit(path) && !c->c_utf8) {
        sink_conn_reply(c, "553 5.6.7 Non-ASCII address requires SMTPUTF8");
        return;
    }
    buf_append(&c->c_rcpts, path, strlen(path) + 1);
    c->c_nrcpt++;
    sink_conn_reply(c, "250 2.1.5 Ok");
}

static void sink_conn_command(sink_conn_t *c, char *line, size_t len)
{
    char verb[5] = {0};
    size_t vl = strcspn(line, " ");
    char *arg = line + vl;
    while (*arg == ' ')
        arg++;
    if (vl >= 4 && vl <= 8) {
        memcpy(verb, line, 4);
        str_lower(verb, 4);
    }
    if (vl == 4 && strcmp(verb, "ehlo") == 0) {
        sink_cmd_ehlo(c, arg, true);
    } else if (vl == 4 && strcmp(verb, "helo") == 0) {
        sink_cmd_ehlo(c, arg, false);
    } else if (vl == 4 && strcmp(verb, "mail") == 0) {
        sink_cmd_mail(c, arg);
    } else if (vl == 4 && strcmp(verb, "rcpt") == 0) {
        sink_cmd_rcpt(c, arg);
    } else if (vl == 4 && strcmp(verb, "data") == 0) {
        if (c->c_state != SINK_ST_MAIL) {
            sink_conn_reply(c, "503 5.5.1 Need MAIL before DATA");
        } else if (c->c_nrcpt == 0) {
            /* RFC 2920 §3.1: a pipelined DATA after refused recipients */
            sink_conn_reply(c, "554 5.5.1 No valid recipients");
        } else {
            c->c_data_bol = true;
            c->c_msg_bytes = 0;
            c->c_toobig = false;
            if (G.s_o.o_store) {
                if (c->c_body.b_cap == 0)
                    buf_init(&c->c_body, 8192);
                buf_reset(&c->c_body);
            }
            if (G.s_log != NULL) {
                if (c->c_head.b_cap == 0)
                    buf_init(&c->c_head, SINK_HDR_KEEP);
                buf_reset(&c->c_head);
            }
            sink_conn_enter_state(c, SINK_ST_DATA);
            sink_conn_reply(c, "354 End data with <CR><LF>.<CR><LF>");
        }
    } else if (vl == 4 && strcmp(verb, "rset") == 0) {
        sink_conn_txn_reset(c);
        if (c->c_state != SINK_ST_CONNECTED)
            sink_conn_enter_state(c, SINK_ST_READY);
        sink_conn_reply(c, "250 2.0.0 Ok");
    } else if (vl == 4 && strcmp(verb, "noop") == 0) {
        sink_conn_reply(c, "250 2.0.0 Ok");
    } else if (vl == 4 && strcmp(verb, "quit") == 0) {
        sink_conn_reply(c, "221 2.0.0 Bye");
        c->c_quit = true;
        c->c_reason = "quit";
    } else if (vl == 4 && strcmp(verb, "vrfy") == 0) {
        sink_conn_reply(c, "252 2.5.2 Cannot VRFY user, but will accept message");
    } else if (vl == 4 && strcmp(verb, "help") == 0) {
        sink_conn_reply(c, "214 2.0.0 See RFC 5321");
    } else if (vl == 8 && strncasecmp(line, "starttls", 8) == 0) {
        if (G.s_tls_ctx == NULL)
            sink_conn_reply(c, "502 5.5.1 STARTTLS not available");
        else if (c->c_tls != NULL)
            sink_conn_reply(c, "503 5.5.1 TLS already active");
        else if (*arg != '\0')
            sink_conn_reply(c, "501 5.5.4 Syntax: STARTTLS");
        else if (c->c_state == SINK_ST_CONNECTED)
            sink_conn_reply(c, "503 5.5.1 Send EHLO first");
        else
            sink_conn_starttls(c);
    } else {
        UNUSED(len);
        sink_conn_reply(c, "500 5.5.2 Command unrecognized");
    }
}

/*
 * Consume message data: whole lines, plus the tail of a line when it cannot
 * be (the start of) the terminating ".". Returns the bytes consumed, 0 when
 * more input is needed.
 */
static size_t sink_conn_data(sink_conn_t *c, const char *p, size_t len)
{
    size_t pos = 0;
    bool store = G.s_o.o_store != NULL;
    while (pos < len) {
        const char *l = p + pos;
        size_t rem = len - pos;
        const char *nl = memchr(l, '\n', rem);
        size_t ll = nl ? (size_t)(nl - l) + 1 : rem; /* with the LF */
        const char *d = l;
        size_t dl = ll;
        if (c->c_data_bol && l[0] == '.') {
            if (nl == NULL && (rem == 1 || (rem == 2 && l[1] == '\r')))
                break; /* maybe the terminator: wait */
            if ((ll == 3 && l[1] == '\r' && nl) || (ll == 2 && nl)) {
                pos += ll;
                sink_conn_message_end(c);
                return pos;
            }
            d++; /* RFC 5321 §4.5.2: remove the stuffed dot */
            dl--;
        }
        if (G.s_log != NULL && c->c_msg_bytes < SINK_HDR_KEEP)
            buf_append(&c->c_head, d, MIN(dl, SINK_HDR_KEEP - (size_t)c->c_msg_bytes));
        c->c_msg_bytes += dl;
        if (c->c_msg_bytes > SINK_MAX_SIZE)
            c->c_toobig = true;
        else if (store)
            buf_append(&c->c_body, d, dl);
        c->c_data_bol = nl != NULL;
        pos += ll;
        if ((c->c_faults & SINK_F_DROP) && c->c_msg_bytes > 0) {
            /* hang up in the middle of DATA, without answering the dot */
            G.s_drops++;
            c->c_quit = true;
            c->c_reason = "drop fault";
            return pos;
        }
    }
    return pos;
}

static void sink_conn_message_end(sink_conn_t *c)
{
    uint64_t now = clock_now_us();
    const char *reply;
    const char *result;
    char okbuf[512];
    int code;
    if (c->c_faults & SINK_F_DATAFAIL) {
        reply = "451 4.3.0 Temporary failure, try again later";
        result = "datafail";
        code = 451;
        G.s_data_tempfails++;
    } else if (c->c_faults & SINK_F_DATAREJECT) {
        reply = "554 5.7.1 Message rejected";
        result = "datareject";
        code = 554;
        G.s_data_permfails++;
    } else if (c->c_toobig) {
        reply = "552 5.3.4 Message too big";
        result = "toobig";
        code = 552;
        G.s_data_permfails++;
    } else {
        uint64_t seq = ++G.s_seq;
        const char *ok = c->c_prov >= 0 ? G.s_provs[c->c_prov].p_ok_text : NULL;
        const char *mark = ok ? strstr(ok, "{seq}") : NULL;
        if (ok == NULL)
            snprintf(okbuf, sizeof(okbuf), "250 2.0.0 Ok: queued as %" PRIu64, seq);
        else if (mark == NULL)
            snprintf(okbuf, sizeof(okbuf), "%s", ok);
        else
            snprintf(okbuf, sizeof(okbuf), "%.*s%" PRIu64 "%s", (int)(mark - ok), ok, seq,
                     mark + 5);
        reply = okbuf;
        if (c->c_prov >= 0) {
            sink_prov_t *pv = &G.s_provs[c->c_prov];
            pv->p_msgs++;
            pv->p_rcpts += (uint64_t)c->c_nrcpt;
            pv->p_bytes += c->c_msg_bytes;
        }
        result = "accepted";
        code = 250;
        G.s_msgs++;
        G.s_rcpts += (uint64_t)c->c_nrcpt;
        G.s_bytes += c->c_msg_bytes;
        if (G.s_first_msg_us == 0)
            G.s_first_msg_us = now;
        G.s_last_msg_us = now;
        c->c_msgs++;
        c->c_nrcpts_ok += (uint64_t)c->c_nrcpt;
        c->c_bytes += c->c_msg_bytes;
        sink_count_t *ip = sink_map_get(&G.s_by_ip, c->c_ip, strlen(c->c_ip), NULL);
        ip->sc_v[IP_MSGS]++;
        ip->sc_v[IP_RCPTS] += (uint64_t)c->c_nrcpt;
        ip->sc_v[IP_BYTES] += c->c_msg_bytes;
        /* per domain: accepted recipients */
        const char *r = c->c_rcpts.b_data;
        for (int i = 0; i < c->c_nrcpt; i++) {
            size_t rl = strlen(r);
            const char *at = strrchr(r, '@');
            char dom[256];
            size_t dl = at ? MIN(rl - (size_t)(at + 1 - r), sizeof(dom) - 1) : 0;
            memcpy(dom, at ? at + 1 : "", dl);
            dom[dl] = '\0';
            str_lower(dom, dl);
            sink_map_get(&G.s_by_domain, dom, dl, NULL)->sc_v[DOM_RCPTS]++;
            r += rl + 1;
        }
        if (G.s_o.o_store)
            sink_store_message(c, seq, now);
    }
    if (G.s_o.o_log) {
        buf_t *l = &G.s_line;
        buf_reset(l);
        buf_printf(l,
                   "{\"event\":\"message\",\"time\":%.6f,\"conn\":%" PRIu64 ",\"seq\":%" PRIu64
                   ",\"result\":\"%s\",\"code\":%d,\"size\":%" PRIu64 ",\"tls\":%s,\"mail_from\":",
                   us_to_s(now), c->c_id, code == 250 ? G.s_seq : 0, result, code, c->c_msg_bytes,
                   c->c_tls ? "true" : "false");
        json_cstr(l, c->c_from.b_data);
        buf_append_str(l, ",\"rcpts\":[");
        const char *r = c->c_rcpts.b_data;
        for (int i = 0; i < c->c_nrcpt; i++) {
            if (i)
                buf_append(l, ",", 1);
            json_cstr(l, r);
            r += strlen(r) + 1;
        }
        buf_append_str(l, "],\"provider\":");
        json_cstr(l, c->c_prov >= 0 ? G.s_provs[c->c_prov].p_name : NULL);
        sink_log_headers(l, &c->c_head);
        buf_append_str(l, "}");
        sink_log_line(l);
    }
    sink_conn_enter_state(c, SINK_ST_READY);
    sink_conn_reply(c, reply); /* may be held by "slow": reset after */
    sink_conn_txn_reset(c);
}

/* DIR/<seq>.eml (the data as received, dot-unstuffed) and DIR/<seq>.json. */
static void sink_store_message(sink_conn_t *c, uint64_t seq, uint64_t now_us)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%" PRIu64 ".eml", G.s_o.o_store, seq);
    int rc = write_file_atomic(path, c->c_body.b_data ? c->c_body.b_data : "", c->c_body.b_len);
    if (rc < 0)
        log_error("store %s: %s", path, sl_strerror(rc));

    buf_t j;
    buf_init(&j, 1024);
    time_t t = (time_t)(now_us / 1000000);
    struct tm tm;
    gmtime_r(&t, &tm);
    buf_printf(&j, "{\"seq\":%" PRIu64 ",\"conn\":%" PRIu64 ",\"time\":%.6f,", seq, c->c_id,
               us_to_s(now_us));
    buf_printf(&j, "\"date\":\"%04d-%02d-%02dT%02d:%02d:%02d.%06uZ\",", tm.tm_year + 1900,
               tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
               (unsigned)(now_us % 1000000));
    buf_append_str(&j, "\"mail_from\":");
    json_cstr(&j, c->c_from.b_data);
    buf_append_str(&j, ",\"rcpts\":[");
    const char *r = c->c_rcpts.b_data;
    for (int i = 0; i < c->c_nrcpt; i++) {
        if (i)
            buf_append(&j, ",", 1);
        json_cstr(&j, r);
        r += strlen(r) + 1;
    }
    buf_append_str(&j, "],\"client_ip\":");
    json_cstr(&j, c->c_ip);
    buf_printf(&j, ",\"client_port\":%d,\"listener_port\":%d,\"helo\":", c->c_port, c->c_lport);
    json_cstr(&j, c->c_helo);
    buf_printf(&j, ",\"esmtp\":%s,\"size\":%" PRIu64 ",\"tls\":", c->c_esmtp ? "true" : "false",
               c->c_msg_bytes);
    if (c->c_tls) {
        buf_append_str(&j, "{\"version\":");
        json_cstr(&j, c->c_tls_version);
        buf_append_str(&j, ",\"cipher\":");
        json_cstr(&j, c->c_tls_cipher);
        buf_append_str(&j, "}");
    } else {
        buf_append_str(&j, "null");
    }
    buf_append_str(&j, "}\n");
    snprintf(path, sizeof(path), "%s/%" PRIu64 ".json", G.s_o.o_store, seq);
    rc = write_file_atomic(path, j.b_data, j.b_len);
    if (rc < 0)
        log_error("store %s: %s", path, sl_strerror(rc));
    buf_free(&j);
}

static void sink_conn_txn_reset(sink_conn_t *c)
{
    buf_reset(&c->c_from);
    buf_append(&c->c_from, "", 1);
    buf_reset(&c->c_rcpts);
    c->c_nrcpt = 0;
    c->c_faults = 0;
    c->c_utf8 = false;
    c->c_msg_bytes = 0;
    c->c_toobig = false;
    if (c->c_state == SINK_ST_MAIL || c->c_state == SINK_ST_DATA)
        sink_conn_enter_state(c, SINK_ST_READY);
}

/* Queue one reply line (or lines, joined by CRLF) without its final CRLF.
 * Under the "slow" fault the reply is held for --slow-ms and input stops. */
static void sink_conn_reply(sink_conn_t *c, const char *s)
{
    size_t len = strlen(s);
    if (c->c_faults & SINK_F_SLOW) {
        buf_append(&c->c_held, s, len);
        buf_append(&c->c_held, "\r\n", 2);
        c->c_paused = true;
        uv_read_stop((uv_stream_t *)&c->c_tcp);
        uv_timer_start(&c->c_timer, sink_conn_slow_cb, (uint64_t)G.s_o.o_slow_ms, 0);
        return;
    }
    sink_conn_emit(c, s, len);
    sink_conn_emit(c, "\r\n", 2);
}

static void sink_conn_emit(sink_conn_t *c, const char *s, size_t len)
{
    if (c->c_tls != NULL && c->c_state != SINK_ST_TLS)
        buf_append(&c->c_rep, s, len);
    else
        buf_append(&c->c_out, s, len);
}

static void sink_conn_slow_cb(uv_timer_t *t)
{
    sink_conn_t *c = t->data;
    if (c->c_state == SINK_ST_CLOSING)
        return;
    c->c_paused = false;
    sink_conn_emit(c, c->c_held.b_data, c->c_held.b_len);
    buf_reset(&c->c_held);
    if (!c->c_quit)
        uv_read_start((uv_stream_t *)&c->c_tcp, sink_conn_alloc_cb, sink_conn_read_cb);
    sink_conn_process(c); /* input that arrived meanwhile; flushes */
}

/* Send c_rep (encrypted) and c_out; close when c_quit and all is written. */
static void sink_conn_flush(sink_conn_t *c)
{
    if (c->c_state == SINK_ST_CLOSING)
        return;
    if (c->c_tls != NULL && c->c_rep.b_len > 0) {
        if (tls_write(c->c_tls, c->c_rep.b_data, c->c_rep.b_len) < 0) {
            sink_conn_close(c, "TLS write error");
            return;
        }
        buf_reset(&c->c_rep);
    }
    if (c->c_tls != NULL)
        tls_pending_out(c->c_tls, &c->c_out);
    if (c->c_writing)
        return; /* the write callback comes back here */
    if (c->c_out.b_len > 0) {
        uv_buf_t b = uv_buf_init(c->c_out.b_data, (unsigned)c->c_out.b_len);
        int n = uv_try_write((uv_stream_t *)&c->c_tcp, &b, 1);
        if (n < 0 && n != UV_EAGAIN) {
            sink_conn_close(c, uv_strerror(n));
            return;
        }
        if (n > 0)
            buf_consume(&c->c_out, (size_t)n);
        if (c->c_out.b_len > 0) {
            buf_t tmp = c->c_wbuf;
            c->c_wbuf = c->c_out;
            c->c_out = tmp;
            buf_reset(&c->c_out);
            b = uv_buf_init(c->c_wbuf.b_data, (unsigned)c->c_wbuf.b_len);
            c->c_writing = true;
            uv_write(&c->c_wreq, (uv_stream_t *)&c->c_tcp, &b, 1, sink_conn_write_cb);
            return;
        }
    }
    if (c->c_quit && !c->c_paused)
        sink_conn_close(c, c->c_reason ? c->c_reason : "closed");
}

static void sink_conn_write_cb(uv_write_t *w, int status)
{
    sink_conn_t *c = w->handle->data;
    c->c_writing = false;
    buf_reset(&c->c_wbuf);
    if (c->c_state == SINK_ST_CLOSING)
        return;
    if (status < 0) {
        sink_conn_close(c, uv_strerror(status));
        return;
    }
    sink_conn_flush(c);
}

static int sink_conn_starttls(sink_conn_t *c)
{
    sink_conn_reply(c, "220 2.0.0 Ready to start TLS"); /* plaintext, in c_out */
    c->c_tls = tls_conn_new_server(G.s_tls_ctx);
    if (c->c_tls == NULL) {
        log_warn("conn=%" PRIu64 " TLS setup failed", c->c_id);
        c->c_quit = true;
        c->c_reason = "TLS setup failed";
        return SL_ETLS;
    }
    sink_conn_txn_reset(c);
    sink_conn_enter_state(c, SINK_ST_TLS);
    return 0;
}

/* Ciphertext in: drive the handshake, then decrypt into c_in. Returns 0, or
 * negative when the connection was closed. */
static int sink_conn_tls_input(sink_conn_t *c, const char *data, size_t len)
{
    if (tls_feed(c->c_tls, data, len) < 0)
        goto fail;
    if (c->c_state == SINK_ST_TLS) {
        int r = tls_handshake(c->c_tls);
        tls_pending_out(c->c_tls, &c->c_out);
        if (r < 0)
            goto fail;
        if (r == 0) {
            sink_conn_flush(c);
            return c->c_state == SINK_ST_CLOSING ? -1 : 0;
        }
        snprintf(c->c_tls_version, sizeof(c->c_tls_version), "%s", tls_version(c->c_tls));
        snprintf(c->c_tls_cipher, sizeof(c->c_tls_cipher), "%s", tls_cipher(c->c_tls));
        G.s_tls_conns++;
        if (tls_conn_resumed(c->c_tls))
            G.s_tls_resumed++;
        c->c_helo[0] = '\0';
        sink_conn_enter_state(c, SINK_ST_CONNECTED); /* RFC 3207: EHLO again */
    }
    for (;;) {
        buf_reserve(&c->c_in, 16384);
        int n = tls_read(c->c_tls, c->c_in.b_data + c->c_in.b_len, c->c_in.b_cap - c->c_in.b_len);
        if (n > 0) {
            c->c_in.b_len += (size_t)n;
            continue;
        }
        if (n == 0)
            break;
        sink_conn_close(c, c->c_state == SINK_ST_DATA ? "TLS closed in DATA" : "TLS closed");
        return -1;
    }
    return 0;
fail:
    log_info("conn=%" PRIu64 " TLS error: %s", c->c_id, tls_last_error(c->c_tls));
    sink_conn_flush(c); /* an alert, if any */
    sink_conn_close(c, "TLS error");
    return -1;
}

static void sink_conn_close(sink_conn_t *c, const char *reason)
{
    if (c->c_state == SINK_ST_CLOSING)
        return;
    sink_conn_enter_state(c, SINK_ST_CLOSING);
    if (!c->c_rejected)
        G.s_conns_cur--;
    if (c->c_prov >= 0)
        G.s_provs[c->c_prov].p_conns_cur--;
    if (G.s_o.o_log) {
        buf_t *l = &G.s_line;
        buf_reset(l);
        uint64_t now = clock_now_us();
        buf_printf(l, "{\"event\":\"disconnect\",\"time\":%.6f,\"conn\":%" PRIu64 ",\"client_ip\":",
                   us_to_s(now), c->c_id);
        json_cstr(l, c->c_ip);
        buf_printf(l,
                   ",\"messages\":%" PRIu64 ",\"rcpts\":%" PRIu64 ",\"bytes\":%" PRIu64
                   ",\"duration_ms\":%.3f,\"tls\":%s,\"reason\":",
                   c->c_msgs, c->c_nrcpts_ok, c->c_bytes, (double)(now - c->c_start_us) / 1e3,
                   c->c_tls ? "true" : "false");
        json_cstr(l, reason);
        buf_append(l, "}", 1);
        sink_log_line(l);
    }
    uv_read_stop((uv_stream_t *)&c->c_tcp);
    uv_timer_stop(&c->c_timer);
    uv_close((uv_handle_t *)&c->c_tcp, sink_conn_closed_cb);
    uv_close((uv_handle_t *)&c->c_timer, sink_conn_closed_cb);
}

static void sink_conn_closed_cb(uv_handle_t *h)
{
    sink_conn_t *c = h->data;
    if (--c->c_nhandles > 0)
        return;
    if (c->c_prev)
        c->c_prev->c_next = c->c_next;
    else if (G.s_conns == c)
        G.s_conns = c->c_next;
    if (c->c_next)
        c->c_next->c_prev = c->c_prev;
    tls_conn_free(c->c_tls);
    buf_free(&c->c_in);
    buf_free(&c->c_out);
    buf_free(&c->c_wbuf);
    buf_free(&c->c_rep);
    buf_free(&c->c_held);
    buf_free(&c->c_from);
    buf_free(&c->c_rcpts);
    buf_free(&c->c_body);
    buf_free(&c->c_head);
    free(c);
}

/* ---------------------------------------------------------------- providers */

/* The header fields the benchmark driver matches on, from the first bytes of
 * the message: "qid" (the "id" in the topmost Received field: the relaying
 * MTA's queue id), "message_id", and "dkim" (a DKIM-Signature is present). */
static void sink_log_headers(buf_t *l, const buf_t *head)
{
    const char *p = head->b_data, *end = p ? p + head->b_len : NULL;
    const char *qid = NULL, *mid = NULL;
    size_t qlen = 0, mlen = 0;
    bool dkim = false, in_first_received = false, seen_received = false;
    while (p != NULL && p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        size_t ll = (size_t)(le - p);
        if (ll > 0 && p[ll - 1] == '\r')
            ll--;
        if (ll == 0)
            break; /* end of the header section */
        bool cont = p[0] == ' ' || p[0] == '\t';
        if (!cont) {
            in_first_received = false;
            if (ll >= 9 && strncasecmp(p, "Received:", 9) == 0 && !seen_received) {
                in_first_received = seen_received = true;
            } else if (ll >= 11 && strncasecmp(p, "Message-ID:", 11) == 0 && mid == NULL) {
                const char *v = p + 11;
                while (v < p + ll && (*v == ' ' || *v == '\t'))
                    v++;
                mid = v;
                mlen = (size_t)(p + ll - v);
            } else if (ll >= 15 && strncasecmp(p, "DKIM-Signature:", 15) == 0) {
                dkim = true;
            }
        }
        if (in_first_received && qid == NULL) {
            /* " id TOKEN" (RFC 5321 4.4: "with ESMTP id ...") */
            for (const char *q = p; q + 4 <= p + ll; q++) {
                if ((q[0] == ' ' || q[0] == '\t') && (q[1] == 'i' || q[1] == 'I') &&
                    (q[2] == 'd' || q[2] == 'D') && q[3] == ' ') {
                    const char *v = q + 4;
                    size_t n = 0;
                    while (v + n < p + ll && v[n] != ' ' && v[n] != ';' && v[n] != '\t')
                        n++;
                    if (n > 0) {
                        qid = v;
                        qlen = n;
                    }
                    break;
                }
            }
        }
        if (nl == NULL)
            break;
        p = nl + 1;
    }
    buf_append_str(l, ",\"qid\":");
    if (qid)
        json_str(l, qid, qlen);
    else
        buf_append_str(l, "null");
    buf_append_str(l, ",\"message_id\":");
    if (mid)
        json_str(l, mid, mlen);
    else
        buf_append_str(l, "null");
    buf_printf(l, ",\"dkim\":%s", dkim ? "true" : "false");
}

/* "a.example" matches itself; "*.x.example" and ".x.example" match every
 * subdomain of x.example (not x.example itself). */
static bool domain_match(const char *dom, size_t dl, const char *pat)
{
    if (pat[0] == '*')
        pat++;
    size_t pl = strlen(pat);
    if (pat[0] == '.')
        return dl > pl && strncasecmp(dom + dl - pl, pat, pl) == 0;
    return dl == pl && strncasecmp(dom, pat, pl) == 0;
}

/* The provider of a recipient address by its domain, or -1. Cached. */
static int sink_prov_for(const char *addr)
{
    if (G.s_nprovs == 0)
        return -1;
    const char *at = strrchr(addr, '@');
    char dom[256];
    size_t dl = at ? strlen(at + 1) : 0;
    dl = MIN(dl, sizeof(dom) - 1);
    memcpy(dom, at ? at + 1 : "", dl);
    dom[dl] = '\0';
    str_lower(dom, dl);
    bool created;
    sink_count_t *e = sink_map_get(&G.s_prov_of, dom, dl, &created);
    if (created) {
        e->sc_v[0] = 0;
        for (int i = 0; i < G.s_nprovs && e->sc_v[0] == 0; i++)
            for (int k = 0; k < G.s_provs[i].p_ndomains; k++)
                if (domain_match(dom, dl, G.s_provs[i].p_domains[k])) {
                    e->sc_v[0] = (uint64_t)i + 1;
                    break;
                }
    }
    return (int)e->sc_v[0] - 1;
}

/* Count connection c against provider p, or refuse it with the provider's
 * max-conns reply (421, c_quit set) when p is at its cap. */
static int sink_prov_assign(sink_conn_t *c, int p)
{
    sink_prov_t *pv = &G.s_provs[p];
    if (pv->p_max_conns > 0 && pv->p_conns_cur >= (uint64_t)pv->p_max_conns) {
        pv->p_conns_rejected++;
        pv->p_421s++;
        G.s_421s++;
        sink_conn_reply(c, pv->p_max_conns_text);
        c->c_quit = true;
        return -1;
    }
    c->c_prov = p;
    pv->p_conns++;
    pv->p_conns_cur++;
    if (pv->p_conns_cur > pv->p_conns_max)
        pv->p_conns_max = pv->p_conns_cur;
    return 0;
}

/* Token bucket of the provider's recipient rate: a burst of one second. */
static bool sink_prov_rate_ok(sink_prov_t *p, uint64_t now_us)
{
    double burst = p->p_rate < 1 ? 1 : p->p_rate;
    if (p->p_tokens_us == 0) {
        p->p_tokens = burst;
    } else if (now_us > p->p_tokens_us) {
        p->p_tokens += (double)(now_us - p->p_tokens_us) / 1e6 * p->p_rate;
        if (p->p_tokens > burst)
            p->p_tokens = burst;
    }
    p->p_tokens_us = now_us;
    if (p->p_tokens < 1)
        return false;
    p->p_tokens -= 1;
    return true;
}

/* A reply text of the profile: one line, three digits of class cls, a space. */
static char *prof_text(json_object *o, const char *key, const char *dflt, int cls, char *err,
                       size_t errlen)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v))
        return xstrdup(dflt);
    const char *s = json_object_get_string(v);
    if (!json_object_is_type(v, json_type_string) || strlen(s) < 4 || s[0] != '0' + cls ||
        s[1] < '0' || s[1] > '9' || s[2] < '0' || s[2] > '9' || s[3] != ' ' ||
        strpbrk(s, "\r\n") != NULL || strlen(s) > 400) {
        snprintf(err, errlen, "%s: want a one-line %dxx reply text", key, cls);
        return NULL;
    }
    return xstrdup(s);
}

static int prof_num(json_object *o, const char *key, double lo, double hi, double *out, char *err,
                    size_t errlen)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v))
        return 0;
    if (!json_object_is_type(v, json_type_int) && !json_object_is_type(v, json_type_double)) {
        snprintf(err, errlen, "%s: want a number", key);
        return -1;
    }
    double d = json_object_get_double(v);
    if (d < lo || d > hi) {
        snprintf(err, errlen, "%s: %g is out of range [%g, %g]", key, d, lo, hi);
        return -1;
    }
    *out = d;
    return 0;
}

/*
 * --profile FILE:
 *   {"providers": [{"name": "gmail", "domains": ["d0.example", "*.gmail.example"],
 *     "listener": 1, "max_conns": 10, "rate_per_conn": 100, "rate": 500,
 *     "tempfail_pct": 2, "permfail_pct": 1, "ok_text": "250 2.0.0 OK {seq} - gsmtp",
 *     "tempfail_text": "450 4.2.1 ...", "permfail_text": "550 5.1.1 ...",
 *     "max_conns_text": "421 4.7.0 ...", "rate_per_conn_text": "421 4.7.0 ...",
 *     "rate_text": "451 4.7.28 ..."}, ...]}
 * "listener" is the index of a -l option: the provider owns that port.
 * Numbers left out are the command line's (--max-conns, --tempfail-pct, ...).
 */
static int sink_prov_load(const char *path)
{
    char err[512] = "";
    json_object *root = json_object_from_file(path), *arr;
    if (root == NULL) {
        fprintf(stderr, "sluice-sink: %s: %s\n", path, json_util_get_last_err());
        return SL_ECONFIG;
    }
    if (!json_object_object_get_ex(root, "providers", &arr) ||
        !json_object_is_type(arr, json_type_array)) {
        snprintf(err, sizeof(err), "want {\"providers\": [...]}");
        goto fail;
    }
    size_t n = json_object_array_length(arr);
    if (n > SINK_MAX_PROVS) {
        snprintf(err, sizeof(err), "at most %d providers", SINK_MAX_PROVS);
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        json_object *o = json_object_array_get_idx(arr, i), *v;
        sink_prov_t *p = &G.s_provs[G.s_nprovs];
        if (!json_object_is_type(o, json_type_object) ||
            !json_object_object_get_ex(o, "name", &v) ||
            !json_object_is_type(v, json_type_string)) {
            snprintf(err, sizeof(err), "provider %zu: want an object with a \"name\"", i);
            goto fail;
        }
        memset(p, 0, sizeof(*p));
        G.s_nprovs++;
        p->p_name = xstrdup(json_object_get_string(v));
        p->p_listener = -1;
        if (json_object_object_get_ex(o, "domains", &v)) {
            if (!json_object_is_type(v, json_type_array)) {
                snprintf(err, sizeof(err), "%s: domains: want a list", p->p_name);
                goto fail;
            }
            size_t nd = json_object_array_length(v);
            p->p_domains = xcalloc(nd + 1, sizeof(char *));
            for (size_t k = 0; k < nd; k++) {
                json_object *d = json_object_array_get_idx(v, k);
                if (!json_object_is_type(d, json_type_string) ||
                    json_object_get_string_len(d) == 0) {
                    snprintf(err, sizeof(err), "%s: domains: want strings", p->p_name);
                    goto fail;
                }
                p->p_domains[p->p_ndomains++] = xstrdup(json_object_get_string(d));
            }
        }
        double li = -1, mc = (double)G.s_o.o_max_conns, rpc = (double)G.s_o.o_rate_per_conn;
        p->p_tempfail_pct = G.s_o.o_tempfail_pct;
        p->p_permfail_pct = G.s_o.o_permfail_pct;
        char e2[256] = "";
        if (prof_num(o, "listener", 0, SINK_MAX_LISTENERS - 1, &li, e2, sizeof(e2)) < 0 ||
            prof_num(o, "max_conns", 0, 1e9, &mc, e2, sizeof(e2)) < 0 ||
            prof_num(o, "rate_per_conn", 0, 1e12, &rpc, e2, sizeof(e2)) < 0 ||
            prof_num(o, "rate", 0, 1e9, &p->p_rate, e2, sizeof(e2)) < 0 ||
            prof_num(o, "tempfail_pct", 0, 100, &p->p_tempfail_pct, e2, sizeof(e2)) < 0 ||
            prof_num(o, "permfail_pct", 0, 100, &p->p_permfail_pct, e2, sizeof(e2)) < 0) {
            snprintf(err, sizeof(err), "%s: %s", p->p_name, e2);
            goto fail;
        }
        if (li >= 0) {
            if ((int)li >= G.s_o.o_nlisten) {
                snprintf(err, sizeof(err), "%s: listener %d: there are only %d -l options",
                         p->p_name, (int)li, G.s_o.o_nlisten);
                goto fail;
            }
            p->p_listener = (int)li;
        }
        p->p_max_conns = (long)mc;
        p->p_rate_per_conn = (long)rpc;
        if (!(p->p_ok_text =
                  prof_text(o, "ok_text", "250 2.0.0 Ok: queued as {seq}", 2, e2, sizeof(e2))) ||
            !(p->p_tempfail_text =
                  prof_text(o, "tempfail_text", "450 4.2.1 Mailbox temporarily unavailable", 4, e2,
                            sizeof(e2))) ||
            !(p->p_permfail_text =
                  prof_text(o, "permfail_text", "550 5.1.1 User unknown", 5, e2, sizeof(e2))) ||
            !(p->p_max_conns_text = prof_text(o, "max_conns_text", "421 4.7.0 Too many connections",
                                              4, e2, sizeof(e2))) ||
            !(p->p_rate_per_conn_text =
                  prof_text(o, "rate_per_conn_text",
                            "421 4.7.0 Too many messages on this connection", 4, e2, sizeof(e2))) ||
            !(p->p_rate_text =
                  prof_text(o, "rate_text", "451 4.7.1 Rate limit exceeded", 4, e2, sizeof(e2)))) {
            snprintf(err, sizeof(err), "%s: %s", p->p_name, e2);
            goto fail;
        }
        if (p->p_ndomains == 0 && p->p_listener < 0) {
            snprintf(err, sizeof(err), "%s: give \"domains\" or a \"listener\"", p->p_name);
            goto fail;
        }
    }
    json_object_put(root);
    return 0;
fail:
    fprintf(stderr, "sluice-sink: %s: %s\n", path, err);
    json_object_put(root);
    return SL_ECONFIG;
}

static void sink_prov_free(void)
{
    for (int i = 0; i < G.s_nprovs; i++) {
        sink_prov_t *p = &G.s_provs[i];
        for (int k = 0; k < p->p_ndomains; k++)
            free(p->p_domains[k]);
        free(p->p_domains);
        free(p->p_name);
        free(p->p_ok_text);
        free(p->p_tempfail_text);
        free(p->p_permfail_text);
        free(p->p_max_conns_text);
        free(p->p_rate_per_conn_text);
        free(p->p_rate_text);
    }
    G.s_nprovs = 0;
}

/* ---------------------------------------------------------------- reporting */

static void sink_counts_json(buf_t *b, uint64_t now)
{
    double el = us_to_s(now - G.s_start_us);
    double span = us_to_s(G.s_last_msg_us - G.s_first_msg_us);
    buf_printf(b,
               "\"elapsed_s\":%.3f,\"connections\":%" PRIu64 ",\"connections_rejected\":%" PRIu64
               ",\"concurrent_current\":%" PRIu64 ",\"concurrent_max\":%" PRIu64
               ",\"tls_connections\":%" PRIu64 ",\"messages\":%" PRIu64 ",\"recipients\":%" PRIu64
               ",\"bytes\":%" PRIu64 ",\"tempfails\":%" PRIu64 ",\"permfails\":%" PRIu64
               ",\"rcpt_tempfails\":%" PRIu64 ",\"rcpt_permfails\":%" PRIu64
               ",\"data_tempfails\":%" PRIu64 ",\"data_permfails\":%" PRIu64 ",\"drops\":%" PRIu64
               ",\"aborts\":%" PRIu64 ",\"replies_421\":%" PRIu64
               ",\"msgs_per_s\":%.1f,\"first_message_time\":%.6f,\"last_message_time\":%.6f",
               el, G.s_conns_total, G.s_conns_rejected, G.s_conns_cur, G.s_conns_max, G.s_tls_conns,
               G.s_msgs, G.s_rcpts, G.s_bytes, G.s_rcpt_tempfails + G.s_data_tempfails,
               G.s_rcpt_permfails + G.s_data_permfails, G.s_rcpt_tempfails, G.s_rcpt_permfails,
               G.s_data_tempfails, G.s_data_permfails, G.s_drops, G.s_aborts, G.s_421s,
               span > 0 ? (double)G.s_msgs / span : (el > 0 ? (double)G.s_msgs / el : 0.0),
               us_to_s(G.s_first_msg_us), us_to_s(G.s_last_msg_us));
    buf_printf(b, ",\"tls_resumed\":%" PRIu64, G.s_tls_resumed);
}

/* ,"by_provider":{name:{...}}; with rates, the messages/s since the last
 * stats line (and that line's baseline moves on). */
static void sink_prov_json(buf_t *b, uint64_t now, bool rates)
{
    if (G.s_nprovs == 0)
        return;
    double dt = us_to_s(now - G.s_st_us);
    buf_append_str(b, ",\"by_provider\":{");
    for (int i = 0; i < G.s_nprovs; i++) {
        sink_prov_t *p = &G.s_provs[i];
        if (i)
            buf_append(b, ",", 1);
        json_cstr(b, p->p_name);
        buf_printf(b,
                   ":{\"connections\":%" PRIu64 ",\"connections_rejected\":%" PRIu64
                   ",\"concurrent_current\":%" PRIu64 ",\"concurrent_max\":%" PRIu64
                   ",\"messages\":%" PRIu64 ",\"recipients\":%" PRIu64 ",\"bytes\":%" PRIu64
                   ",\"tempfails\":%" PRIu64 ",\"permfails\":%" PRIu64 ",\"rate_limited\":%" PRIu64
                   ",\"replies_421\":%" PRIu64,
                   p->p_conns, p->p_conns_rejected, p->p_conns_cur, p->p_conns_max, p->p_msgs,
                   p->p_rcpts, p->p_bytes, p->p_tempfails, p->p_permfails, p->p_rate_limited,
                   p->p_421s);
        if (rates) {
            buf_printf(b, ",\"msgs_per_s\":%.1f",
                       dt > 0 ? (double)(p->p_msgs - p->p_st_msgs) / dt : 0.0);
            p->p_st_msgs = p->p_msgs;
        }
        buf_append(b, "}", 1);
    }
    buf_append(b, "}", 1);
}

static void sink_map_json(buf_t *b, const sink_map_t *m, const char *const *names, int nnames)
{
    buf_append(b, "{", 1);
    bool first = true;
    for (size_t i = 0; i < m->sm_cap; i++) {
        const sink_count_t *e = &m->sm_slots[i];
        if (e->sc_key == NULL)
            continue;
        if (!first)
            buf_append(b, ",", 1);
        first = false;
        json_cstr(b, e->sc_key);
        buf_append(b, ":{", 2);
        for (int k = 0; k < nnames; k++)
            buf_printf(b, "%s\"%s\":%" PRIu64, k ? "," : "", names[k], e->sc_v[k]);
        buf_append(b, "}", 1);
    }
    buf_append(b, "}", 1);
}

static void sink_summary_write(void)
{
    static const char *const ipn[] = {"connections", "messages", "recipients", "bytes"};
    static const char *const domn[] = {"recipients", "tempfails", "permfails"};
    uint64_t now = clock_now_us();
    buf_t b;
    buf_init(&b, 4096);
    buf_append_str(&b, "{");
    sink_counts_json(&b, now);
    buf_append_str(&b, ",\"by_ip\":");
    sink_map_json(&b, &G.s_by_ip, ipn, 4);
    buf_append_str(&b, ",\"by_domain\":");
    sink_map_json(&b, &G.s_by_domain, domn, 3);
    sink_prov_json(&b, now, false);
    buf_append_str(&b, "}\n");
    if (G.s_o.o_summary) {
        int rc = write_file_atomic(G.s_o.o_summary, b.b_data, b.b_len);
        if (rc < 0)
            fprintf(stderr, "sluice-sink: cannot write %s: %s\n", G.s_o.o_summary, sl_strerror(rc));
    }
    buf_free(&b);
    double el = us_to_s(now - G.s_start_us);
    fprintf(stderr,
            "sluice-sink: %" PRIu64 " messages, %" PRIu64 " recipients, %" PRIu64 " bytes, %" PRIu64
            " connections (%" PRIu64 " max concurrent, %" PRIu64 " rejected), %" PRIu64
            " tempfails, %" PRIu64 " permfails, %" PRIu64 " drops in %.2f s (%.0f msg/s)\n",
            G.s_msgs, G.s_rcpts, G.s_bytes, G.s_conns_total, G.s_conns_max, G.s_conns_rejected,
            G.s_rcpt_tempfails + G.s_data_tempfails, G.s_rcpt_permfails + G.s_data_permfails,
            G.s_drops, el, el > 0 ? (double)G.s_msgs / el : 0.0);
}

/* One JSON line per interval: rates over the interval, and the totals. */
static void sink_stats_cb(uv_timer_t *t)
{
    uint64_t now = clock_now_us();
    double dt = us_to_s(now - G.s_st_us);
    if (dt <= 0)
        return;
    buf_t *l = &G.s_line;
    buf_reset(l);
    buf_printf(l,
               "{\"event\":\"stats\",\"time\":%.6f,\"interval_s\":%.3f,\"msgs_per_s\":%.1f,"
               "\"rcpts_per_s\":%.1f,\"bytes_per_s\":%.1f,",
               us_to_s(now), dt, (double)(G.s_msgs - G.s_st_msgs) / dt,
               (double)(G.s_rcpts - G.s_st_rcpts) / dt, (double)(G.s_bytes - G.s_st_bytes) / dt);
    sink_counts_json(l, now);
    sink_prov_json(l, now, true);
    buf_append(l, "}", 1);
    sink_log_line(l);
    G.s_st_us = now;
    G.s_st_msgs = G.s_msgs;
    G.s_st_rcpts = G.s_rcpts;
    G.s_st_bytes = G.s_bytes;
}

static void sink_tick_cb(uv_timer_t *t)
{
    if (G.s_log)
        fflush(G.s_log);
}

static void sink_close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Write the summary, close every handle; uv_run then returns. */
static void sink_stop(const char *why)
{
    if (G.s_stopping)
        return;
    G.s_stopping = true;
    log_info("stopping: %s", why);
    if (G.s_o.o_stats_interval > 0)
        sink_stats_cb(&G.s_stats_timer);
    sink_summary_write();
    for (int i = 0; i < G.s_nlisten; i++)
        sink_close_handle((uv_handle_t *)&G.s_listen[i]);
    sink_close_handle((uv_handle_t *)&G.s_sigterm);
    sink_close_handle((uv_handle_t *)&G.s_sigint);
    sink_close_handle((uv_handle_t *)&G.s_sigusr1);
    sink_close_handle((uv_handle_t *)&G.s_quit_timer);
    sink_close_handle((uv_handle_t *)&G.s_stats_timer);
    sink_close_handle((uv_handle_t *)&G.s_tick_timer);
    for (sink_conn_t *c = G.s_conns; c; c = c->c_next)
        sink_conn_close(c, "sink stopping");
}

static void sink_signal_cb(uv_signal_t *s, int signum)
{
    sink_stop(signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void sink_quit_cb(uv_timer_t *t)
{
    sink_stop("quit-after");
}

/* ---------------------------------------------------------------- start-up */

static void usage(FILE *f)
{
    fprintf(f, "usage: sluice-sink [options]\n"
               "  -l, --listen HOST:PORT   listen here (repeatable; port 0 = ephemeral);\n"
               "                           default 127.0.0.1:2526\n"
               "  --port-file FILE         write the bound port(s), one per line\n"
               "  --tls-cert F --tls-key F certificate for STARTTLS\n"
               "  --tls-generate DIR       make (once) and use DIR/sink-cert.pem, sink-key.pem\n"
               "                           (without either, a throw-away self-signed one)\n"
               "  --no-starttls --no-pipelining --no-8bitmime --no-smtputf8\n"
               "  --ehlo-fail              answer EHLO with 502 (clients must use HELO)\n"
               "  --store DIR              write DIR/<seq>.eml and DIR/<seq>.json\n"
               "  --log FILE               JSON lines: connect, message, disconnect, stats\n"
               "  --tempfail-pct P         450 to P%% of recipients\n"
               "  --permfail-pct P         550 to P%% of recipients\n"
               "  --greeting-421           greet every connection with 421 and close\n"
               "  --max-conns N            421 above N concurrent connections\n"
               "  --rate-per-conn N        421 on the MAIL after N messages on a connection\n"
               "  --hostname NAME          name in the greeting and EHLO reply\n"
               "  --quit-after SECONDS     write the summary and exit\n"
               "  --stats-interval S       one JSON stats line every S seconds\n"
               "  --summary FILE           JSON summary on exit\n"
               "  --slow-ms MS             delay of the 'slow' fault (default 2000)\n"
               "  --seed N                 random seed for the -pct faults\n"
               "  --profile FILE           per-provider behaviour (JSON, docs/benchmarks.md)\n"
               "  --hold                   greet no connection until SIGUSR1\n"
               "  -v, --verbose            debug log (state changes) to stderr\n"
               "  -h, --help / --version   this help / the version, and exit\n"
               "exit: 0 ok, 1 cannot start, 2 usage error\n"
               "Faults by recipient local part (before '@', '+tag' ignored): tempfail,\n"
               "permfail, 421, slow, drop, datafail, datareject, tempfailonce.\n");
}

enum {
    OPT_PORT_FILE = 256,
    OPT_TLS_CERT,
    OPT_TLS_KEY,
    OPT_TLS_GEN,
    OPT_NO_STARTTLS,
    OPT_NO_PIPE,
    OPT_NO_8BIT,
    OPT_NO_UTF8,
    OPT_EHLO_FAIL,
    OPT_STORE,
    OPT_LOG,
    OPT_TEMP_PCT,
    OPT_PERM_PCT,
    OPT_GREET_421,
    OPT_MAX_CONNS,
    OPT_RATE,
    OPT_HOSTNAME,
    OPT_QUIT_AFTER,
    OPT_STATS,
    OPT_SUMMARY,
    OPT_SLOW_MS,
    OPT_SEED,
    OPT_PROFILE,
    OPT_HOLD,
    OPT_VERSION,
};

static int parse_num(const char *s, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || v < lo || v > hi)
        return SL_EPARSE;
    *out = v;
    return 0;
}

/* Long: one case per option, in the order of the usage text, each with its
 * range check; a table would need a callback per option for the checks. */
static int sink_parse_args(int argc, char **argv, sink_opts_t *o)
{
    static const struct option longopts[] = {
        {"listen", required_argument, NULL, 'l'},
        {"port-file", required_argument, NULL, OPT_PORT_FILE},
        {"tls-cert", required_argument, NULL, OPT_TLS_CERT},
        {"tls-key", required_argument, NULL, OPT_TLS_KEY},
        {"tls-generate", required_argument, NULL, OPT_TLS_GEN},
        {"no-starttls", no_argument, NULL, OPT_NO_STARTTLS},
        {"no-pipelining", no_argument, NULL, OPT_NO_PIPE},
        {"no-8bitmime", no_argument, NULL, OPT_NO_8BIT},
        {"no-smtputf8", no_argument, NULL, OPT_NO_UTF8},
        {"ehlo-fail", no_argument, NULL, OPT_EHLO_FAIL},
        {"store", required_argument, NULL, OPT_STORE},
        {"log", required_argument, NULL, OPT_LOG},
        {"tempfail-pct", required_argument, NULL, OPT_TEMP_PCT},
        {"permfail-pct", required_argument, NULL, OPT_PERM_PCT},
        {"greeting-421", no_argument, NULL, OPT_GREET_421},
        {"max-conns", required_argument, NULL, OPT_MAX_CONNS},
        {"rate-per-conn", required_argument, NULL, OPT_RATE},
        {"hostname", required_argument, NULL, OPT_HOSTNAME},
        {"quit-after", required_argument, NULL, OPT_QUIT_AFTER},
        {"stats-interval", required_argument, NULL, OPT_STATS},
        {"summary", required_argument, NULL, OPT_SUMMARY},
        {"slow-ms", required_argument, NULL, OPT_SLOW_MS},
        {"seed", required_argument, NULL, OPT_SEED},
        {"profile", required_argument, NULL, OPT_PROFILE},
        {"hold", no_argument, NULL, OPT_HOLD},
        {"version", no_argument, NULL, OPT_VERSION},
        {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    o->o_starttls = o->o_pipelining = o->o_8bitmime = o->o_smtputf8 = true;
    o->o_slow_ms = 2000;
    o->o_seed = (uint64_t)clock_now_us() ^ ((uint64_t)getpid() << 32);
    if (gethostname(o->o_hostname, sizeof(o->o_hostname) - 1) != 0 || o->o_hostname[0] == '\0')
        snprintf(o->o_hostname, sizeof(o->o_hostname), "sluice-sink.localhost");
    int ch;
    double v;
    while ((ch = getopt_long(argc, argv, "l:vh", longopts, NULL)) != -1) {
        switch (ch) {
        case 'l':
            if (o->o_nlisten >= SINK_MAX_LISTENERS) {
                fprintf(stderr, "sluice-sink: at most %d listeners\n", SINK_MAX_LISTENERS);
                return SL_ECONFIG;
            }
            o->o_listen[o->o_nlisten++] = optarg;
            break;
        case 'v':
            log_level_current = LOG_DEBUG;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case OPT_VERSION:
            printf("sluice-sink %s\n", SLUICE_VERSION);
            exit(0);
        case OPT_PORT_FILE:
            o->o_port_file = optarg;
            break;
        case OPT_TLS_CERT:
            o->o_tls_cert = optarg;
            break;
        case OPT_TLS_KEY:
            o->o_tls_key = optarg;
            break;
        case OPT_TLS_GEN:
            o->o_tls_generate = optarg;
            break;
        case OPT_NO_STARTTLS:
            o->o_starttls = false;
            break;
        case OPT_NO_PIPE:
            o->o_pipelining = false;
            break;
        case OPT_NO_8BIT:
            o->o_8bitmime = false;
            break;
        case OPT_NO_UTF8:
            o->o_smtputf8 = false;
            break;
        case OPT_EHLO_FAIL:
            o->o_ehlo_fail = true;
            break;
        case OPT_STORE:
            o->o_store = optarg;
            break;
        case OPT_LOG:
            o->o_log = optarg;
            break;
        case OPT_GREET_421:
            o->o_greeting_421 = true;
            break;
        case OPT_HOSTNAME:
            snprintf(o->o_hostname, sizeof(o->o_hostname), "%s", optarg);
            break;
        case OPT_SUMMARY:
            o->o_summary = optarg;
            break;
        case OPT_PROFILE:
            o->o_profile = optarg;
            break;
        case OPT_HOLD:
            o->o_hold = true;
            break;
        case OPT_TEMP_PCT:
        case OPT_PERM_PCT:
        case OPT_MAX_CONNS:
        case OPT_RATE:
        case OPT_QUIT_AFTER:
        case OPT_STATS:
        case OPT_SLOW_MS:
        case OPT_SEED: {
            double hi = (ch == OPT_TEMP_PCT || ch == OPT_PERM_PCT) ? 100.0 : 1e15;
            if (parse_num(optarg, 0, hi, &v) < 0) {
                fprintf(stderr, "sluice-sink: bad number for option: %s\n", optarg);
                return SL_ECONFIG;
            }
            if (ch == OPT_TEMP_PCT)
                o->o_tempfail_pct = v;
            else if (ch == OPT_PERM_PCT)
                o->o_permfail_pct = v;
            else if (ch == OPT_MAX_CONNS)
                o->o_max_conns = (long)v;
            else if (ch == OPT_RATE)
                o->o_rate_per_conn = (long)v;
            else if (ch == OPT_QUIT_AFTER)
                o->o_quit_after = v;
            else if (ch == OPT_STATS)
                o->o_stats_interval = v;
            else if (ch == OPT_SLOW_MS)
                o->o_slow_ms = (long)v;
            else
                o->o_seed = (uint64_t)v;
            break;
        }
        default:
            usage(stderr);
            return SL_ECONFIG;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "sluice-sink: unexpected argument: %s\n", argv[optind]);
        return SL_ECONFIG;
    }
    if ((o->o_tls_cert == NULL) != (o->o_tls_key == NULL)) {
        fprintf(stderr, "sluice-sink: --tls-cert and --tls-key go together\n");
        return SL_ECONFIG;
    }
    if (o->o_nlisten == 0)
        o->o_listen[o->o_nlisten++] = "127.0.0.1:2526";
    if (o->o_seed == 0)
        o->o_seed = 0x9e3779b97f4a7c15ULL;
    return 0;
}

/* The STARTTLS context: given files, DIR/sink-*.pem, or a throw-away pair. */
static int sink_tls_setup(const sink_opts_t *o)
{
    char err[512] = "";
    char cert[4096], key[4096], tmpdir[1024] = "";
    if (!o->o_starttls)
        return 0;
    if (o->o_tls_cert) {
        snprintf(cert, sizeof(cert), "%s", o->o_tls_cert);
        snprintf(key, sizeof(key), "%s", o->o_tls_key);
    } else {
        const char *dir = o->o_tls_generate;
        if (dir == NULL) {
            const char *t = getenv("TMPDIR");
            snprintf(tmpdir, sizeof(tmpdir), "%s/sluice-sink-XXXXXX", t && *t ? t : "/tmp");
            if (mkdtemp(tmpdir) == NULL) {
                fprintf(stderr, "sluice-sink: mkdtemp: %s\n", strerror(errno));
                return -errno;
            }
            dir = tmpdir;
        } else if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
            fprintf(stderr, "sluice-sink: mkdir %s: %s\n", dir, strerror(errno));
            return -errno;
        }
        snprintf(cert, sizeof(cert), "%s/sink-cert.pem", dir);
        snprintf(key, sizeof(key), "%s/sink-key.pem", dir);
        if (access(cert, R_OK) != 0 || access(key, R_OK) != 0) {
            if (tls_selfsigned_create(cert, key, o->o_hostname, err, sizeof(err)) < 0) {
                fprintf(stderr, "sluice-sink: cannot create a certificate: %s\n", err);
                return SL_ETLS;
            }
        }
    }
    G.s_tls_ctx = tls_server_ctx_new(cert, key, err, sizeof(err));
    if (tmpdir[0]) {
        unlink(cert);
        unlink(key);
        rmdir(tmpdir);
    }
    if (G.s_tls_ctx == NULL) {
        fprintf(stderr, "sluice-sink: TLS: %s\n", err);
        return SL_ETLS;
    }
    return 0;
}

static int sink_listen(void)
{
    buf_t ports;
    buf_init(&ports, 64);
    for (int i = 0; i < G.s_o.o_nlisten; i++) {
        sockaddr_any_t sa;
        const char *spec = G.s_o.o_listen[i];
        if (net_parse_hostport(spec, 2526, &sa) < 0) {
            fprintf(stderr, "sluice-sink: bad listen address: %s\n", spec);
            goto fail;
        }
        uv_tcp_t *t = &G.s_listen[i];
        uv_tcp_init(&G.s_loop, t);
        G.s_nlisten = i + 1;
        int rc = uv_tcp_bind(t, (struct sockaddr *)&sa, 0);
        if (rc == 0)
            rc = uv_listen((uv_stream_t *)t, 1024, sink_accept_cb);
        if (rc < 0) {
            fprintf(stderr, "sluice-sink: listen on %s: %s\n", spec, uv_strerror(rc));
            goto fail;
        }
        sockaddr_any_t bound;
        int blen = sizeof(bound);
        uv_tcp_getsockname(t, (struct sockaddr *)&bound, &blen);
        int port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                     : ((struct sockaddr_in *)&bound)->sin_port);
        G.s_ports[i] = port;
        t->data = (void *)(intptr_t)port;
        char host[64];
        net_ntop((struct sockaddr *)&bound, host, sizeof(host));
        printf("listening on %s%s%s:%d\n", bound.ss_family == AF_INET6 ? "[" : "", host,
               bound.ss_family == AF_INET6 ? "]" : "", port);
        buf_printf(&ports, "%d\n", port);
    }
    fflush(stdout);
    if (G.s_o.o_port_file) {
        int rc = write_file_atomic(G.s_o.o_port_file, ports.b_data, ports.b_len);
        if (rc < 0) {
            fprintf(stderr, "sluice-sink: cannot write %s: %s\n", G.s_o.o_port_file,
                    sl_strerror(rc));
            goto fail;
        }
    }
    buf_free(&ports);
    return 0;
fail:
    buf_free(&ports);
    return SL_ECONFIG;
}

int main(int argc, char **argv)
{
    int rc = 1;
    signal(SIGPIPE, SIG_IGN);
    log_init(LOG_INFO, NULL);
    log_thread_name("sink");
    if (sink_parse_args(argc, argv, &G.s_o) < 0)
        return 2;
    G.s_rng = G.s_o.o_seed;
    G.s_start_us = G.s_st_us = clock_now_us();
    buf_init(&G.s_line, 1024);
    sink_map_init(&G.s_by_ip);
    sink_map_init(&G.s_by_domain);
    sink_map_init(&G.s_seen_once);
    sink_map_init(&G.s_prov_of);
    G.s_held = G.s_o.o_hold;
    if (G.s_o.o_profile && sink_prov_load(G.s_o.o_profile) < 0)
        goto out;
    if (G.s_o.o_store && mkdir(G.s_o.o_store, 0755) < 0 && errno != EEXIST) {
        fprintf(stderr, "sluice-sink: mkdir %s: %s\n", G.s_o.o_store, strerror(errno));
        goto out;
    }
    if (G.s_o.o_log) {
        G.s_log = fopen(G.s_o.o_log, "ae");
        if (G.s_log == NULL) {
            fprintf(stderr, "sluice-sink: cannot open %s: %s\n", G.s_o.o_log, strerror(errno));
            goto out;
        }
        setvbuf(G.s_log, NULL, _IOFBF, 1 << 20);
    }
    if (sink_tls_setup(&G.s_o) < 0)
        goto out;
    uv_loop_init(&G.s_loop);
    uv_signal_init(&G.s_loop, &G.s_sigterm);
    uv_signal_init(&G.s_loop, &G.s_sigint);
    uv_signal_init(&G.s_loop, &G.s_sigusr1);
    uv_timer_init(&G.s_loop, &G.s_quit_timer);
    uv_timer_init(&G.s_loop, &G.s_stats_timer);
    uv_timer_init(&G.s_loop, &G.s_tick_timer);
    uv_signal_start(&G.s_sigterm, sink_signal_cb, SIGTERM);
    uv_signal_start(&G.s_sigint, sink_signal_cb, SIGINT);
    uv_signal_start(&G.s_sigusr1, sink_release_cb, SIGUSR1);
    if (sink_listen() < 0) {
        G.s_stopping = true; /* no summary: we never started */
        for (int i = 0; i < G.s_nlisten; i++)
            sink_close_handle((uv_handle_t *)&G.s_listen[i]);
        sink_close_handle((uv_handle_t *)&G.s_sigterm);
        sink_close_handle((uv_handle_t *)&G.s_sigint);
        sink_close_handle((uv_handle_t *)&G.s_sigusr1);
        sink_close_handle((uv_handle_t *)&G.s_quit_timer);
        sink_close_handle((uv_handle_t *)&G.s_stats_timer);
        sink_close_handle((uv_handle_t *)&G.s_tick_timer);
        uv_run(&G.s_loop, UV_RUN_DEFAULT);
        uv_loop_close(&G.s_loop);
        goto out;
    }
    if (G.s_o.o_quit_after > 0)
        uv_timer_start(&G.s_quit_timer, sink_quit_cb, (uint64_t)(G.s_o.o_quit_after * 1000), 0);
    if (G.s_o.o_stats_interval > 0) {
        uint64_t ms = (uint64_t)(G.s_o.o_stats_interval * 1000);
        uv_timer_start(&G.s_stats_timer, sink_stats_cb, ms ? ms : 1, ms ? ms : 1);
    }
    uv_timer_start(&G.s_tick_timer, sink_tick_cb, 1000, 1000);

    uv_run(&G.s_loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&G.s_loop) == 0 ? 0 : 1;
    if (rc != 0)
        fprintf(stderr, "sluice-sink: loop closed with handles still open\n");
out:
    if (G.s_log)
        fclose(G.s_log);
    tls_ctx_free(G.s_tls_ctx);
    sink_map_free(&G.s_by_ip);
    sink_map_free(&G.s_by_domain);
    sink_map_free(&G.s_seen_once);
    sink_map_free(&G.s_prov_of);
    sink_prov_free();
    buf_free(&G.s_line);
    return rc;
}
