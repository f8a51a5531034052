/*
 * core/base/base.h - the ground floor of sluice.
 *
 * Memory, logging, byte buffers, inter-thread channels, the clock, error
 * codes, network address helpers, the SMTP codec and TLS on memory BIOs.
 * Every other module includes this header; it includes nothing of ours.
 *
 * Thread notes are given per function. "Any thread" functions are safe to
 * call concurrently.
 */
#ifndef SLUICE_BASE_H
#define SLUICE_BASE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <netinet/in.h>

#include <uv.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#undef MIN
#undef MAX
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define UNUSED(x) ((void)(x))

#if defined(__GNUC__)
#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define PRINTF_LIKE(f, a)
#define LIKELY(x) (x)
#define UNLIKELY(x) (x)
#endif

/* ---------------------------------------------------------------- errors */

/* Project error codes: negative, beside negative errno values. */
#define SL_ERRNO_MAP(X)                                                                            \
    X(SL_EPARSE, -10001, "parse error")                                                            \
    X(SL_ETOOLONG, -10002, "line too long")                                                        \
    X(SL_ETOOBIG, -10003, "too big")                                                               \
    X(SL_EFULL, -10004, "storage full")                                                            \
    X(SL_EBUSY, -10005, "busy, try again")                                                         \
    X(SL_ENOTFOUND, -10006, "not found")                                                           \
    X(SL_ETLS, -10007, "TLS error")                                                                \
    X(SL_ECONFIG, -10008, "configuration error")                                                   \
    X(SL_ESPOOL, -10009, "spool error")                                                            \
    X(SL_ECLOSED, -10010, "closed")

enum {
#define SL_ERR_ENUM(name, val, str) name = val,
    SL_ERRNO_MAP(SL_ERR_ENUM)
#undef SL_ERR_ENUM
};

/* A static string for a project code or a negative errno. Any thread. */
const char *sl_strerror(int err);

/* ------------------------------------------------------------- assertions
 *
 * A broken invariant is a bug (STYLE.md's third tier): SL_ASSERT logs the
 * expression with file:line and aborts, so that it dumps core, in every
 * build (Postfix's msg_panic, Redis's serverAssert). SL_DEBUG_ASSERT is
 * compiled out with NDEBUG (release builds): for checks on a hot path, such
 * as the thread-ownership notes below. SL_ASSERT_ON_THREAD(tid): the caller
 * runs on thread tid ("delivery thread only", "reception thread only",
 * "queue thread only" in a function's Thread: note). */
_Noreturn void sl_assert_fail(const char *expr, const char *file, int line, const char *func);
#define SL_ASSERT(cond)                                                                            \
    (LIKELY(cond) ? (void)0 : sl_assert_fail(#cond, __FILE__, __LINE__, __func__))
#ifdef NDEBUG
#define SL_DEBUG_ASSERT(cond) ((void)0)
#else
#define SL_DEBUG_ASSERT(cond) SL_ASSERT(cond)
#endif
#define SL_ASSERT_ON_THREAD(tid)                                                                   \
    SL_DEBUG_ASSERT(uv_thread_equal(&(uv_thread_t){uv_thread_self()}, &(tid)))
/* The process's main thread: the one that runs main() (sluiced's main
 * loop, control socket, start-up and shutdown), recorded before main() runs.
 * SL_ASSERT_MAIN_THREAD(): the caller runs there ("Main thread." in a
 * Thread: note). Any thread. */
const uv_thread_t *sl_main_thread(void);
#define SL_ASSERT_MAIN_THREAD() SL_ASSERT_ON_THREAD(*sl_main_thread())

/* ---------------------------------------------------------------- memory */

/* Allocate or abort ("x" = aborts instead of failing). Any thread. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) PRINTF_LIKE(1, 2);

/* Address space this process may still map under RLIMIT_AS (ulimit -v):
 * the limit minus VmSize now, or UINT64_MAX without a limit. Any thread. */
uint64_t mem_as_headroom(void);
/* A memory budget of `want` bytes capped under ulimit -v at a quarter of
 * the headroom plus the `used` bytes the budget already holds (reception
 * and the scheduler each take at most a quarter). Reads /proc: call it at
 * most every second or so. Any thread. */
uint64_t mem_budget_cap(uint64_t want, uint64_t used);

/* ---------------------------------------------------------------- logging */

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level_t;

extern int log_level_current;

/* Set the level and the destination (NULL or "" = stderr). Main thread,
 * before other threads start; log_reopen() may be called later. */
int log_init(log_level_t level, const char *path);
int log_reopen(void);
int log_level_parse(const char *s, log_level_t *out);
/* Set this thread's name, shown in every line it logs (and, but on the
 * main thread, as the thread's name for ps -L, top -H and perf). */
void log_thread_name(const char *name);
/* Hold this thread's info and debug lines and write them with one write(2)
 * per iteration of its loop (a prepare handle: before the loop waits), or
 * sooner when PIPE_BUF bytes are held; a warning or an error writes what is
 * held with it at once. Lines stay whole and in order. log_unbuffer, after
 * uv_run returned and before uv_loop_close: writes what is held, closes the
 * handle, and logs unbuffered from then on. Thread: the loop's thread. */
void log_buffer(uv_loop_t *loop);
void log_unbuffer(uv_loop_t *loop);
/* Write what this thread holds now. Any thread (its own lines). */
void log_flush(void);
void log_write(log_level_t lvl, const char *fmt, ...) PRINTF_LIKE(2, 3);

/* Peer-supplied text made safe for a log line: printable ASCII is kept,
 * "\\" and '"' get a backslash, CR, LF and TAB become \r \n \t, and every
 * other byte (control characters, DEL, and all bytes >= 0x80, UTF-8
 * included) becomes \xHH. log_esc_buf writes into dst (always
 * NUL-terminated; a text that does not fit ends with "...") and returns it.
 * log_esc/log_escn use one of 8 thread-local 1 KiB buffers, overwritten
 * in turn: use their result at once, at most 8 of them in one log call
 * (the log_* macros evaluate their arguments only when the level is on).
 * NULL gives "". Any thread. */
const char *log_esc_buf(char *dst, size_t dstlen, const char *src, size_t len);
const char *log_esc(const char *s);
const char *log_escn(const char *s, size_t len);

#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (UNLIKELY(log_level_current <= LOG_DEBUG))                                              \
            log_write(LOG_DEBUG, __VA_ARGS__);                                                     \
    } while (0)
#define log_info(...)                                                                              \
    do {                                                                                           \
        if (log_level_current <= LOG_INFO)                                                         \
            log_write(LOG_INFO, __VA_ARGS__);                                                      \
    } while (0)
#define log_warn(...) log_write(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)

/* ---------------------------------------------------------------- clock */

/* Wall clock in microseconds / seconds since the epoch. Any thread. */
uint64_t clock_now_us(void);
uint64_t clock_now_s(void);
/* Monotonic clock in microseconds. Any thread. */
uint64_t clock_mono_us(void);

/* ---------------------------------------------------------------- buffers */

/* A growable byte buffer. Owner frees with buf_free(). Not thread safe. */
typedef struct buf {
    char *b_data;
    size_t b_len;
    size_t b_cap;
} buf_t;

void buf_init(buf_t *b, size_t cap);
void buf_free(buf_t *b);
void buf_reserve(buf_t *b, size_t extra);
void buf_append(buf_t *b, const void *p, size_t n);
void buf_append_str(buf_t *b, const char *s);
void buf_printf(buf_t *b, const char *fmt, ...) PRINTF_LIKE(2, 3);
void buf_consume(buf_t *b, size_t n); /* drop n bytes from the front */
void buf_reset(buf_t *b);             /* length 0, keep the storage */
/* Move the storage out: the caller owns the returned pointer (free()). */
char *buf_steal(buf_t *b, size_t *len);

/* ---------------------------------------------------------------- channels */

/*
 * An MPSC channel: any thread pushes, one libuv loop consumes. A message is
 * any struct that embeds chan_node_t; ownership passes with the push.
 * Producers take a short mutex to link the node; the consumer swaps the
 * whole list out at once, so a burst of N messages costs one wake-up.
 */
typedef struct chan_node {
    struct chan_node *cn_next;
} chan_node_t;

typedef struct chan chan_t;
/* Called on the consumer's loop with the messages in push order. The
 * callback owns every node (walk cn_next; it may free them). */
typedef void (*chan_cb)(chan_t *ch, chan_node_t *first, void *arg);

/* Create on the consumer's loop thread. */
chan_t *chan_new(uv_loop_t *loop, chan_cb cb, void *arg);
/* Push from any thread. Returns the number of messages now waiting. */
size_t chan_push(chan_t *ch, chan_node_t *n);
/* Push the n nodes first..last, already linked through cn_next, under one
 * lock and one wake-up: they reach the consumer together, in order (one
 * callback, unless it was already draining). Any thread. Returns the
 * number of messages now waiting. */
size_t chan_push_list(chan_t *ch, chan_node_t *first, chan_node_t *last, size_t n);
/* Close the async handle (consumer thread). The chan is freed in the
 * handle's close callback; undelivered messages are handed to cb first. */
void chan_close(chan_t *ch);

/* ---------------------------------------------------------------- network */

typedef struct sockaddr_storage sockaddr_any_t;

/* Parse "1.2.3.4:25", "[::1]:25", "host" (with default port). 0 or SL_EPARSE. */
int net_parse_hostport(const char *s, int default_port, sockaddr_any_t *out);
/* Format an address without the port ("127.0.0.1", "::1"). */
const char *net_ntop(const struct sockaddr *sa, char *dst, size_t len);
bool net_is_loopback(const struct sockaddr *sa);

/* A CIDR network, "10.0.0.0/8", "::1/128", or a plain address. */
typedef struct net_cidr {
    int nc_family;
    uint8_t nc_addr[16];
    int nc_prefix;
} net_cidr_t;
int net_cidr_parse(const char *s, net_cidr_t *out);
bool net_cidr_match(const net_cidr_t *c, const struct sockaddr *sa);

/* ---------------------------------------------------------------- SMTP codec */

/* SMTP command verbs (server side). */
typedef enum {
    SMTP_CMD_UNKNOWN = 0,
    SMTP_CMD_HELO,
    SMTP_CMD_EHLO,
    SMTP_CMD_MAIL,
    SMTP_CMD_RCPT,
    SMTP_CMD_DATA,
    SMTP_CMD_BDAT,
    SMTP_CMD_RSET,
    SMTP_CMD_NOOP,
    SMTP_CMD_QUIT,
    SMTP_CMD_VRFY,
    SMTP_CMD_EXPN,
    SMTP_CMD_HELP,
    SMTP_CMD_STARTTLS,
    SMTP_CMD_AUTH,
} smtp_verb_t;

#define SMTP_MAX_PARAMS 8

/* A parsed command. Pointers borrow from the line passed to smtp_cmd_parse
 * (which it modifies in place); valid while that line is. */
typedef struct smtp_cmd {
    smtp_verb_t sc_verb;
    const char *sc_arg;                   /* HELO/EHLO domain, AUTH mechanism args, rest of line */
    const char *sc_path;                  /* MAIL/RCPT: the address inside <>, "" for <> */
    int sc_nparams;                       /* ESMTP parameters after the path */
    const char *sc_pkey[SMTP_MAX_PARAMS]; /* upper-cased keyword */
    const char *sc_pval[SMTP_MAX_PARAMS]; /* value or NULL */
} smtp_cmd_t;

/* A command line as read, before it becomes a C string: refuse a NUL,
 * which would cut the command short ("RCPT TO:<a@b>\0garbage"). Returns 0,
 * or SL_EPARSE and sets *reply ("500 5.5.2 ..."). Any thread. */
int smtp_line_check(const char *line, size_t len, const char **reply);

/* Parse one command line (without CRLF; NUL-terminated, modified in place).
 * Returns 0, or a negative code and sets *reply to the SMTP reply to send
 * ("501 5.5.4 Syntax error in parameters"; "500 5.5.2 ..."). Any thread. */
int smtp_cmd_parse(char *line, smtp_cmd_t *cmd, const char **reply);

/* Check an address (local@domain) for RFC 5321 syntax. Sets *is_utf8 when
 * it holds non-ASCII. Returns 0 or SL_EPARSE. */
int smtp_addr_check(const char *addr, bool *is_utf8);
/* A HELO/EHLO name: a domain (letters, digits, '-', '_', '.', UTF-8
 * U-labels) or an address literal "[...]" (printable ASCII). 0 or
 * SL_EPARSE. smtp_cmd_parse applies it to EHLO and HELO. Any thread. */
int smtp_helo_check(const char *name);
/* An RFC 3461 §4 xtext (ENVID, ORCPT's address): '!'..'~' except '+' and
 * '=', and "+XX" (upper-case hex) that decodes to printable ASCII - never
 * to a control byte that decoding could put in a DSN header. With utf8
 * (an SMTPUTF8 transaction, RFC 6533) well-formed UTF-8 is accepted too.
 * Empty is invalid. 0 or SL_EPARSE. Any thread. */
int smtp_xtext_check(const char *v, bool utf8);
/* ORCPT's value, "addr-type;xtext" (addr-type: letters, digits, '-'). */
int smtp_orcpt_check(const char *v, bool utf8);
/* The domain part of an address (after the last '@'), or "" */
const char *smtp_addr_domain(const char *addr);

/* A parsed server reply (client side, possibly multi-line). */
typedef struct smtp_reply {
    int sr_code;        /* 250 */
    char sr_status[16]; /* enhanced status "2.0.0" or "" */
    buf_t sr_text;      /* all lines' text joined by "\n", without codes */
    bool sr_done;       /* the last line was seen */
} smtp_reply_t;

/* Feed one reply line (without CRLF). Returns 1 when the reply is complete,
 * 0 when more lines follow, SL_EPARSE on a malformed line, SL_ETOOBIG when
 * the reply grows past max_len bytes. Any thread. */
int smtp_reply_feed(smtp_reply_t *r, const char *line, size_t len, size_t max_len);
void smtp_reply_reset(smtp_reply_t *r);
void smtp_reply_free(smtp_reply_t *r);

/* Dot-stuff src into dst for DATA (RFC 5321 §4.5.2), ending every line
 * with CRLF (a bare LF or a bare CR in src ends a line too), and append
 * the final ".\r\n". */
void smtp_dot_stuff(buf_t *dst, const char *src, size_t len);

/* ---------------------------------------------------------------- TLS */

/*
 * TLS on memory BIOs, driven by a libuv stream owner: feed ciphertext that
 * arrived with tls_feed(), read plaintext with tls_read(), write plaintext
 * with tls_write(), and send whatever tls_pending_out() returns.
 */
typedef struct tls_conn tls_conn_t;
/* A context (certificate, key, verification store, settings): built once,
 * shared by any threads, freed with tls_ctx_free. */
typedef struct tls_ctx tls_ctx_t;
/* A client session kept for resumption (per destination). */
typedef struct tls_session tls_session_t;

/* Server context from PEM files. NULL and *err set on failure. */
tls_ctx_t *tls_server_ctx_new(const char *cert_file, const char *key_file, char *err,
                              size_t errlen);
/* Generate a self-signed certificate and key for hostname (first start). */
int tls_selfsigned_create(const char *cert_file, const char *key_file, const char *hostname,
                          char *err, size_t errlen);
void tls_ctx_free(tls_ctx_t *ctx);
/* The OpenSSL SSL_CTX * behind ctx (borrowed), for a library that runs
 * its own TLS on it (h2o in core/server/httpd.c). */
void *tls_ctx_ssl(tls_ctx_t *ctx);

/* Client context: verify_ca = CA file for "verify" policies (NULL = the
 * system store). Keeps a session cache so that tls_conn_new_client can
 * resume sessions per destination (see tls_session_*). */
tls_ctx_t *tls_client_ctx_new(const char *ca_file, char *err, size_t errlen);

tls_conn_t *tls_conn_new_server(tls_ctx_t *ctx);
/* sni: server name to send (and to check when verify is true). */
tls_conn_t *tls_conn_new_client(tls_ctx_t *ctx, const char *sni, bool verify);
/* Session resumption (client): the session to offer before the handshake,
 * and the one to keep after it (caller frees with tls_session_free). */
void tls_conn_set_session(tls_conn_t *t, tls_session_t *session);
struct dns_tlsa;
/* A client connection that authenticates the server by DANE (RFC 7671,
 * RFC 7672) with OpenSSL's DANE API: SNI and the DANE-TA name checks use
 * host; DANE-EE(3) matches skip names. tlsa: the usable records (usages 2
 * and 3). The handshake always completes; tls_verify_result() says
 * whether a record matched. NULL when none of the records is usable. Any
 * thread. */
tls_conn_t *tls_conn_new_dane(tls_ctx_t *ctx, const char *host, const struct dns_tlsa *tlsa, int n);
/* The RFC 8460 4.3 result type of a failed verification (a tls_verify_result
 * code): "certificate-expired", "certificate-host-mismatch" or
 * "validation-failure"; NULL for X509_V_OK. */
const char *tls_failure_type(long verify_result);
tls_session_t *tls_conn_get_session(tls_conn_t *t);
void tls_session_free(tls_session_t *session);
bool tls_conn_resumed(tls_conn_t *t);
/* Peer certificate verification result (client with verify): 0 ok, or an
 * X509 error code; text in tls_last_error. */
long tls_verify_result(tls_conn_t *t);
void tls_conn_free(tls_conn_t *t);
/* Ciphertext in from the network. */
int tls_feed(tls_conn_t *t, const void *data, size_t len);
/* Drive the handshake: 1 done, 0 wants more input, negative on failure. */
int tls_handshake(tls_conn_t *t);
/* Decrypted bytes: >0 count, 0 none available now, negative on error/close. */
int tls_read(tls_conn_t *t, void *dst, size_t len);
/* Encrypt plaintext; ciphertext queued for tls_pending_out(). */
int tls_write(tls_conn_t *t, const void *data, size_t len);
/* Move queued ciphertext into out (appends). Returns bytes moved. */
size_t tls_pending_out(tls_conn_t *t, buf_t *out);
/* "TLSv1.3", "TLS_AES_256_GCM_SHA384" after the handshake */
const char *tls_version(tls_conn_t *t);
const char *tls_cipher(tls_conn_t *t);
/* Last error as text, for logs. */
const char *tls_last_error(tls_conn_t *t);

/* ---------------------------------------------------------------- peer text */
/*
 * Bytes a peer chose (replies, HELO names, headers) reach the accounting
 * log, the control socket's JSON and sluicectl's terminal only through
 * these (jsontext.c). JSON: valid UTF-8 passes; controls (C0, DEL, C1),
 * U+2028/9 and bidi overrides become \uXXXX; an invalid byte becomes
 * \ufffd. Terminal: the same characters become \xNN / \uXXXX, an invalid
 * byte \xNN. Any thread.
 */

/* Append s[0..len) as a JSON string literal (with its quotes). */
void json_str_append(buf_t *b, const char *s, size_t len);
/* Append a serialised JSON text (json-c's output) with the rules above
 * applied inside its strings; what is outside strings is copied. */
void json_text_sanitize(buf_t *out, const char *in, size_t len);
/* Append s[0..len) for a terminal; keep_newlines leaves "\n" as it is. */
void tty_str_append(buf_t *b, const char *s, size_t len, bool keep_newlines);
/* A point in time as every JSON record and answer gives it (RFC 3339, UTC,
 * milliseconds): "2026-11-27T10:15:30.123Z". dst holds 25 bytes. */
char *time_fmt_rfc3339(uint64_t unix_us, char *dst, size_t len);
/* Read that form back ("...:30Z" and any number of decimals too) into unix
 * microseconds. 0 or SL_EPARSE. */
int time_parse_rfc3339(const char *s, uint64_t *unix_us);

/* ---------------------------------------------------------------- control protocol */
/*
 * JSON lines over the control socket (core/server/control.c, sluicectl):
 * one request object per line, {"cmd":"status", ...}; one response object
 * per line, {"ok":true, ...} or {"ok":false,"error":"..."}. Helpers in
 * ctlproto.c, shared by the daemon and the client. Any thread.
 */
struct json_object;

#define CTL_MAX_LINE (64 * 1024) /* longest request line, without its "\n" */

/* Find the next complete line in data[0..len). Returns 1 and sets *line_len
 * (without "\n" or a trailing "\r") and *used (bytes to consume, with the
 * "\n"); 0 when no complete line is there yet; SL_ETOOLONG when the line is
 * longer than max bytes (complete or not). */
int ctl_line_next(const char *data, size_t len, size_t max, size_t *line_len, size_t *used);

/* Parse one request line: a JSON object with a string member "cmd". On
 * success returns 0, *req (caller frees with json_object_put) and *cmd
 * (borrowed from *req). On failure returns SL_EPARSE and writes the reason
 * into err ("malformed JSON: unexpected end of data", "request must be a
 * JSON object", "missing \"cmd\" string"). */
int ctl_request_parse(const char *line, size_t len, struct json_object **req, const char **cmd,
                      char *err, size_t errlen);

/* Append resp as one JSON line (plain, "/" not escaped) plus "\n". */
void ctl_response_append(buf_t *out, struct json_object *resp);
/* Append {"ok":false,"error":msg} plus "\n". */
void ctl_error_append(buf_t *out, const char *msg);

/* Human forms for sluicectl: "512 B", "1.2 KiB", "1.2 GiB"; "45s",
 * "5m 2s", "3h 4m", "2d 3h". Return dst. */
char *ctl_fmt_bytes(uint64_t n, char *dst, size_t len);
char *ctl_fmt_duration(uint64_t seconds, char *dst, size_t len);

/* ---------------------------------------------------------------- DNS */
/*
 * Asynchronous DNS (c-ares driven from one libuv loop: ares socket state
 * callbacks feed uv_poll handles, a uv_timer drives ares timeouts). One
 * resolver per loop; every function below is called on that loop's thread.
 * Callbacks always run later on the loop, never inside the query call.
 * Owned by "Deliver mail" (core/base/dns.c).
 */
typedef struct dns_resolver dns_resolver_t;

typedef enum {
    DNS_OK = 0,
    DNS_NODATA,    /* the name exists but has no record of that type */
    DNS_NXDOMAIN,  /* the name does not exist */
    DNS_TEMPFAIL,  /* SERVFAIL, timeout, refused, network error: try later */
    DNS_CANCELLED, /* the resolver was freed before an answer came */
} dns_status_t;

typedef struct dns_mx {
    char *dm_host; /* exchange host name, "" for the root (null MX, RFC 7505) */
    uint16_t dm_pref;
} dns_mx_t;

/* MX answer: records sorted by preference, equal preferences in random
 * order. mx is borrowed for the duration of the call. ttl = smallest TTL
 * of the answer (a negative answer gets 60). secure: the answer had the AD
 * bit and the resolver is trusted for it (dns_resolver_set_dnssec). */
typedef void (*dns_mx_cb)(void *arg, dns_status_t st, bool secure, const dns_mx_t *mx, int n,
                          uint32_t ttl);
/* Address answer: IPv4 first, then IPv6, each with the given port. */
typedef void (*dns_addr_cb)(void *arg, dns_status_t st, const sockaddr_any_t *addrs, int n,
                            uint32_t ttl);

/* New resolver on loop. servers: "" or NULL = /etc/resolv.conf, else
 * "127.0.0.1:5353,[::1]:53" (ares_set_servers_ports_csv). timeout_ms and
 * tries per query (0 = c-ares defaults). 0 or SL_ECONFIG with err set.
 * Loop thread (or before the loop runs). */
int dns_resolver_new(uv_loop_t *loop, const char *servers, unsigned timeout_ms, int tries,
                     dns_resolver_t **out, char *err, size_t errlen);
/* Cancel every pending query (callbacks get DNS_CANCELLED, synchronously)
 * and close the handles; the memory goes in the last close callback, so
 * the loop must run once more. NULL allowed. Loop thread. */
void dns_resolver_free(dns_resolver_t *r);
/* Start an MX / A+AAAA lookup. Loop thread. */
void dns_query_mx(dns_resolver_t *r, const char *name, dns_mx_cb cb, void *arg);
void dns_query_addr(dns_resolver_t *r, const char *name, int port, dns_addr_cb cb, void *arg);
/* Lookups started since creation (for stats). */
uint64_t dns_resolver_queries(const dns_resolver_t *r);
const char *dns_status_str(dns_status_t st);
/* Parse an MX answer packet (exposed for unit tests): sorted/shuffled as
 * above. Returns 0 and an owned array (dns_mx_array_free), or SL_EPARSE. */
int dns_parse_mx(const unsigned char *abuf, int alen, dns_mx_t **out, int *n, uint32_t *ttl);
void dns_mx_array_free(dns_mx_t *mx, int n);
/* True for the RFC 7505 null MX: exactly one record whose host is "." */
bool dns_mx_is_null(const dns_mx_t *mx, int n);

/* TXT answer (MTA-STS discovery, RFC 8461 3.1): one string per record, the
 * record's character-strings joined without separator; records holding a
 * NUL byte are left out. txt is borrowed for the duration of the call.
 * No TXT record in the answer: DNS_NODATA. */
typedef void (*dns_txt_cb)(void *arg, dns_status_t st, const char *const *txt, int n, uint32_t ttl);
/* Start a TXT lookup. Loop thread. */
void dns_query_txt(dns_resolver_t *r, const char *name, dns_txt_cb cb, void *arg);
/* Parse a TXT answer packet (exposed for unit tests and fuzzing). Returns 0
 * and an owned array (dns_txt_array_free; NULL when n is 0), or SL_EPARSE. */
int dns_parse_txt(const unsigned char *abuf, int alen, char ***out, int *n, uint32_t *ttl);
void dns_txt_array_free(char **txt, int n);

/* DNSSEC through a trusted validating resolver (RFC 7672 2.1, as Postfix's
 * smtp_dns_support_level = dnssec): from now on queries carry EDNS0 with
 * the DO bit and answers' AD bits are reported as "secure". Never set this
 * for a resolver the operator does not run (an AD bit from elsewhere can
 * be forged on the way). Loop thread. */
void dns_resolver_set_dnssec(dns_resolver_t *r, bool on);

/* One TLSA record (RFC 6698 2.1): certificate usage, selector, matching
 * type and the association data (owned). */
typedef struct dns_tlsa {
    uint8_t dt_usage;
    uint8_t dt_selector;
    uint8_t dt_mtype;
    size_t dt_len;
    unsigned char *dt_data;
} dns_tlsa_t;
#define DNS_TLSA_MAX 32 /* records kept from one answer */
/* TLSA answer: the records (borrowed for the call; none: DNS_NODATA),
 * secure as for MX. A malformed record makes the answer DNS_TEMPFAIL. */
typedef void (*dns_tlsa_cb)(void *arg, dns_status_t st, bool secure, const dns_tlsa_t *t, int n,
                            uint32_t ttl);
void dns_query_tlsa(dns_resolver_t *r, const char *name, dns_tlsa_cb cb, void *arg);
/* Parse a TLSA answer packet (unit tests, fuzzing): 0 and an owned array
 * (dns_tlsa_array_free), or SL_EPARSE. */
int dns_parse_tlsa(const unsigned char *abuf, int alen, dns_tlsa_t **out, int *n, uint32_t *ttl);
void dns_tlsa_array_free(dns_tlsa_t *t, int n);
/* Is the answer for name/type (1 = A, 28 = AAAA) secure? st as usual
 * (DNS_NODATA for an empty answer, which can be secure too). */
typedef void (*dns_secure_cb)(void *arg, dns_status_t st, bool secure);
void dns_query_secure(dns_resolver_t *r, const char *name, int type, dns_secure_cb cb, void *arg);

/* ---------------------------------------------------------------- HTTP client */
/*
 * HTTP(S) GET on a libuv loop: libcurl's multi interface driven by the
 * loop (core/base/http_client.c). One client per loop; every function
 * below is called on that loop's thread. A request's callback always runs
 * later on the loop, never inside http_get(), exactly once unless the
 * request is cancelled. TLS: the peer's certificate chain (the CA file
 * given, else the system store) and its name are verified; redirects are
 * not followed (a 3xx is the answer); no proxy is used.
 */
typedef struct http_client http_client_t;
typedef struct http_request http_request_t;

typedef struct http_get_opts {
    const char *hg_url;     /* "https://host[:port]/path" */
    const char *hg_ca_file; /* PEM CA file; NULL or "": the system store */
    const char *hg_host;    /* with hg_addrs: the URL's host and port, already resolved, */
    int hg_port;            /* pinned to these addresses (tried in order; no DNS by curl) */
    const sockaddr_any_t *hg_addrs;
    int hg_naddrs;
    size_t hg_max_body;     /* a larger body fails the request; 0: no bound */
    uint64_t hg_timeout_ms; /* the whole request; 0: none */
    const char *hg_accept;  /* the Accept header, or NULL */
    bool hg_allow_http;     /* plain http:// too (tests); else https only */
    /* a POST instead of a GET (webhooks, TLSRPT reports): the body (copied),
     * its Content-Type (or NULL) and extra header lines ("Name: value"),
     * NULL-terminated; NULL: none */
    const void *hg_post;
    size_t hg_post_len;
    const char *hg_content_type;
    const char *const *hg_headers;
} http_get_opts_t;

typedef struct http_response {
    int hr_status;               /* the HTTP status, 0 when none came */
    const char *hr_content_type; /* as the server gave it, or NULL */
    const char *hr_body;         /* NUL-terminated ("" when none) */
    size_t hr_len;
    const char *hr_error;    /* NULL: the response is complete; else why not ("timed out",
                              * "response body larger than N bytes", the TLS or
                              * connection error) */
    uint64_t hr_retry_after; /* Retry-After (RFC 9110 10.2.3) in seconds from now, 0: none */
} http_response_t;

/* r and everything in it are borrowed for the duration of the call. */
typedef void (*http_done_cb)(void *arg, const http_response_t *r);

/* A client on loop. 0, or SL_ECONFIG with err set (libcurl unusable).
 * Loop thread (or before the loop runs). */
int http_client_new(uv_loop_t *loop, http_client_t **out, char *err, size_t errlen);
/* Cancel every request in flight (their callbacks never run) and close
 * the handles; the memory goes in the last close callback, so the loop
 * must run once more. Not from a request's callback. NULL allowed. */
void http_client_free(http_client_t *c);
/* Start a GET, or a POST with o->hg_post (o is copied). The request, or
 * NULL when libcurl could not start one. */
http_request_t *http_get(http_client_t *c, const http_get_opts_t *o, http_done_cb cb, void *arg);
/* Stop a request in flight: its callback never runs. NULL allowed. */
void http_request_cancel(http_request_t *r);

/* ------------------------------------------------------------------------
 * VERP tokens (core/base/verp.c, docs/bounces-in.md): the return path
 * bounces+TOKEN@<bounce domain> names the message and the recipient a
 * bounce is about. TOKEN = base32 (RFC 4648 alphabet, lower case, no
 * padding) of message id (8 bytes), recipient index (4), day number since
 * the epoch (2), and the first 10 bytes of HMAC-SHA256(key, those 14
 * bytes): 39 characters. Without the key nobody can make a token that
 * verifies (so a forged bounce cannot suppress someone else's address).
 * Pure functions, any thread.
 */
#define VERP_KEY_LEN 32
#define VERP_TOKEN_LEN 39
#define VERP_LOCAL_PREFIX "bounces+"

typedef enum {
    VERP_OK = 0,
    VERP_MALFORMED = -1, /* not a token: wrong length or alphabet */
    VERP_FORGED = -2,    /* the MAC does not verify */
    VERP_EXPIRED = -3,   /* older than max_age (or from the future) */
} verp_status_t;

/* The token of (msgid, idx) made at now_s into dst (VERP_TOKEN_LEN + 1
 * bytes, NUL-terminated). */
void verp_token_make(const uint8_t key[VERP_KEY_LEN], uint64_t msgid, uint32_t idx, uint64_t now_s,
                     char *dst);
/* Verify tok[0..len) (case-insensitive) in constant time against key;
 * valid for max_age_s seconds (day granularity; 0 = forever). On VERP_OK
 * *msgid, *idx and *made_s (the day's start) are set. */
verp_status_t verp_token_check(const uint8_t key[VERP_KEY_LEN], const char *tok, size_t len,
                               uint64_t now_s, uint64_t max_age_s, uint64_t *msgid, uint32_t *idx,
                               uint64_t *made_s);
/* The VERP address of (msgid, idx) in domain into dst (dlen bytes);
 * returns its length, 0 when it does not fit. */
size_t verp_address(const uint8_t key[VERP_KEY_LEN], uint64_t msgid, uint32_t idx, uint64_t now_s,
                    const char *domain, char *dst, size_t dlen);
/* The token part of addr when it is "bounces+TOKEN@domain" (domain
 * compared without case): 0 with *tok / *len borrowed from addr, or
 * VERP_MALFORMED. */
int verp_address_token(const char *addr, const char *domain, const char **tok, size_t *len);
/* A VERP key from a file's bytes: exactly 32 raw bytes, or 64 hex digits
 * (openssl rand -hex 32), a final newline allowed. 0 or SL_EPARSE. */
int verp_key_parse(const uint8_t *data, size_t len, uint8_t key[VERP_KEY_LEN]);

#endif /* SLUICE_BASE_H */
