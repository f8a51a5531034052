/*
 * delivery/delivery_int.h - private structures and calls of the delivery
 * module (docs/architecture.md has the map): the threads (delivery.c),
 * the reply judge (trouble.c), destinations (dest.c), sessions (session.c,
 * commands.c, prepare.c) and MTA-STS (mta_sts.c). Never included from
 * outside delivery/ (tests aside).
 *
 * Ownership: a thread owns its destinations; a destination owns its
 * pending dispatches and its sessions; a session owns the dispatch it is
 * working on until every recipient has an outcome. Everything here but
 * struct dlv's shared parts (stats, the provider registry) is touched only
 * by the owning delivery thread (DLV_ASSERT_ON_LOOP).
 */
#ifndef SLUICE_DELIVERY_INT_H
#define SLUICE_DELIVERY_INT_H

#include "delivery/delivery.h"

#include <pthread.h>

#define DLV_MAX_MX 10        /* MX hosts we look at */
#define DLV_MAX_ADDRS 16     /* addresses kept per destination */
#define DLV_MAX_TRIES 5      /* addresses one session tries before giving up */
#define DLV_REPLY_MAX 65536  /* bound on one reply (RFC 5321 has none) */
#define DLV_RBUF 16384       /* read buffer per session */
#define DLV_START_CONNS 2    /* slow start: connections opened at first */
#define DLV_TEMPFAIL_CACHE 5 /* seconds a DNS temporary failure is remembered */
#define DLV_RFAIL_MIN_TTL 5  /* floor of any cached route failure, whatever the DNS TTL */
#define DLV_NOTLS_TIME 600   /* seconds to skip opportunistic TLS after it failed */
#define DLV_TLS_SESSIONS 8   /* TLS sessions (tickets) kept per destination */

typedef struct dlv_thread dlv_thread_t;
typedef struct dlv_dest dlv_dest_t;
typedef struct dlv_session dlv_session_t;
typedef struct dlv_shaping dlv_shaping_t;     /* shaping_int.h */
typedef struct shp_dest shp_dest_t;           /* dest.c: backlog, throttles */
typedef struct shp_queue shp_queue_t;         /* shaping_int.h: a (provider, virtual MTA) queue */
typedef struct dlv_sts_cache dlv_sts_cache_t; /* mta_sts.c */
typedef struct dlv_sts_dest dlv_sts_dest_t;   /* mta_sts.c */
typedef struct dlv_dane dlv_dane_t;           /* dane.c */

struct dlv {
    cfg_t *d_cfg;
    queue_t *d_queue;
    int d_nthreads;
    dlv_thread_t *d_threads;
    dlv_stats_t d_stats;
    atomic_bool d_stopping;
    atomic_int d_dispatching; /* dispatcher calls in progress (see dlv_stop) */
    bool d_started;
    dlv_shaping_t *d_shaping;      /* the provider registry (providers.c) */
    struct dlv_cluster *d_cluster; /* shared limits through Redis (cluster.c), or NULL */
};

struct dlv_thread {
    dlv_t *t_d;
    cfg_t *t_cfg;
    int t_idx;
    uv_loop_t t_loop;
    uv_thread_t t_tid;  /* the main thread's handle (join) */
    uv_thread_t t_self; /* the thread's own id, set first thing on it (DLV_ASSERT_ON_LOOP) */
    chan_t *t_inbox;
    uv_async_t t_stop_async;
    uv_timer_t t_sweep;
    dns_resolver_t *t_dns;
    tls_ctx_t *t_tls_ctx;
    char t_tls_err[256];  /* why t_tls_ctx is NULL */
    dlv_dest_t **t_dests; /* hash table by domain */
    size_t t_ndests;
    size_t t_dest_cap;
    bool t_stopping;
    const char *t_helo;
    dlv_sts_cache_t *t_sts; /* MTA-STS policy cache (mta_sts.c), NULL until used */
    http_client_t *t_http;  /* HTTPS for MTA-STS policies (sts_fetch.c), NULL until used */
    /* reload (dlv_set_config): the main thread leaves t_cfg_next, the
     * thread takes it in dlv_cfg_cb. Replaced snapshots stay referenced
     * until dlv_free: state may still point into them. */
    pthread_mutex_t t_cfg_lock;
    cfg_t *t_cfg_next;
    bool t_cfg_reroute;
    uv_async_t t_cfg_async;
    cfg_t **t_cfg_old;
    int t_ncfg_old;
    uint64_t t_cfg_epoch; /* clock_mono_us() of the last rerouting reload, 0 = none */
};

/* FNV-1a of a domain: its thread (dispatch) and its bucket (table). */
static inline uint64_t dlv_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

/* The caller runs on the delivery thread that owns t: the "delivery thread
 * only" / "the destination's thread" of a Thread: note, checked at the
 * entry of the functions that carry it (debug builds; SL_ASSERT_ON_THREAD,
 * core/base/base.h). */
#define DLV_ASSERT_ON_LOOP(t) SL_ASSERT_ON_THREAD((t)->t_self)

typedef struct dlv_addr {
    char *da_host; /* MX host name (or the route's host) */
    sockaddr_any_t da_sa;
    dlv_dane_t *da_dane; /* DANE verdict of the host (a reference; dane.c), NULL: not asked */
} dlv_addr_t;

typedef enum { DLV_RT_NONE = 0, DLV_RT_RESOLVING, DLV_RT_READY, DLV_RT_FAILED } dlv_rstate_t;

struct dlv_dest {
    dlv_dest_t *de_hnext;
    dlv_thread_t *de_t;
    char *de_domain;
    int de_policy; /* CFG_TLS_* */
    /* pending dispatches: by pool and job in de_shp (dest.c) */
    shp_dest_t *de_shp;
    int de_npending;
    /* route */
    dlv_rstate_t de_rstate;
    bool de_rfresh;      /* just resolved: the next use is not a cache hit */
    uint64_t de_rexpire; /* monotonic us */
    uint64_t de_rstart;  /* clock_mono_us() when the route lookup started */
    dlv_addr_t *de_addrs;
    int de_naddr;
    int de_fail_code; /* DLV_RT_FAILED: the failure every recipient gets (dlv_judge) */
    char de_fail_status[16];
    char *de_fail_text;
    /* MX resolution in progress */
    dns_mx_t *de_mx;
    int de_nmx;
    int de_mx_waiting;
    bool de_mx_implicit; /* no MX: the domain's own addresses (RFC 5321 5.1) */
    uint32_t de_mx_ttl;
    dlv_addr_t *de_mx_addrs[DLV_MAX_MX];
    int de_mx_naddr[DLV_MAX_MX];
    dns_status_t de_mx_st[DLV_MAX_MX];
    dlv_dane_t *de_mx_dane[DLV_MAX_MX]; /* DANE verdicts of the MX hosts (dane.c) */
    int de_port;
    /* pool */
    dlv_session_t *de_sessions;
    int de_nconn;
    int de_limit; /* slow start: grows on success up to c_dlv_max_conn_per_dest */
    /* what the destination showed, smoothed (dest.c, dest_open_pays), 0 =
     * not measured yet: a connection's time from opening to ready for MAIL
     * (TCP, greeting, EHLO, TLS), and a transaction's on a ready one */
    uint64_t de_setup_us;
    uint64_t de_txn_us;
    int de_failures;
    uint64_t de_dead_until;  /* monotonic us */
    uint64_t de_notls_until; /* monotonic us */
    uint64_t de_last_used;   /* monotonic us */
    /* TLS sessions (tickets) to resume, newest last, each offered once:
     * an OpenSSL server takes a TLS 1.3 ticket only once (its replay
     * protection is on by default), and RFC 8446 C.4 asks the same of
     * clients. Every connection leaves one when ready and one at close. */
    tls_session_t *de_tls_sessions[DLV_TLS_SESSIONS];
    int de_ntls_sessions;
    bool de_kicking;
    bool de_rekick;
    dlv_sts_dest_t *de_sts; /* MTA-STS state (mta_sts.c), NULL when not looked up */
};

/* ------------------------------------------------------------ trouble.c
 * The reply judge (after Postfix's smtp_trouble.c): every reply of a
 * receiving server, and every failure decided without one, goes to
 * dlv_judge(), which says what follows from it. Nothing else classifies. */

/* Where the reply came from. The stage decides which replies are outcomes:
 * a reply that decides no recipient's fate (220 greeting, 250 to EHLO,
 * RCPT, 354, a DATA or final-dot reply of a transaction nobody was
 * accepted in, an RCPT reply after a refused MAIL, STARTTLS, RSET, QUIT)
 * is "not an outcome" and never reaches the shaping rules. */
typedef enum {
    DLV_STAGE_DEST = 0, /* the destination's backlog, no connection: route (DNS), dead site,
                         * TLS policy, MTA-STS, a held provider; code 0 or the route's */
    DLV_STAGE_CONNECT,  /* a connection that failed before the session was ready, without a
                         * reply: connect, timeout, lost, TLS (code 0) */
    DLV_STAGE_GREETING, /* the server's 220 */
    DLV_STAGE_EHLO,     /* the first EHLO: a 5xx means HELO next */
    DLV_STAGE_EHLO_TLS, /* EHLO again after STARTTLS */
    DLV_STAGE_HELO,
    DLV_STAGE_STARTTLS,
    DLV_STAGE_MAIL,
    DLV_STAGE_RCPT,
    DLV_STAGE_DATA,
    DLV_STAGE_DOT,   /* the reply to the final dot */
    DLV_STAGE_LOCAL, /* the dispatch in a session, decided here: 5.6.7, 5.3.4, 5.6.3, DKIM,
                      * a connection lost in a transaction (code 0) */
    DLV_STAGE_OTHER, /* RSET, QUIT, a reply nobody asked for */
} dlv_stage_t;

typedef enum {
    DLV_FATE_NONE = 0, /* not an outcome: the dialogue goes on */
    DLV_FATE_NEXT_TXN, /* RCPT "too many recipients": this one goes in the next transaction */
    DLV_FATE_DELIVERED,
    DLV_FATE_DEFERRED,
    DLV_FATE_BOUNCED,
} dlv_fate_t;

/* A reply (or a failure without one), as dlv_judge() reads it. */
typedef struct dlv_reply {
    dlv_stage_t rp_stage;
    int rp_code;           /* 0: no reply */
    const char *rp_status; /* the enhanced status as given; "" or NULL: none */
    const char *rp_text;   /* the reply's text on one line (or the failure's) */
    const char *rp_domain; /* the recipient domain */
    const char *rp_mx;     /* the host that answered (or was tried); NULL: none */
    const char *rp_mx_ip;
    int rp_port;
    shp_queue_t *rp_q;    /* its (provider, virtual MTA) queue; NULL: no shaping */
    int rp_accepted;      /* RCPT, DATA, DOT: recipients accepted in the transaction */
    bool rp_mail_refused; /* RCPT, DATA: MAIL was refused */
    int rp_conn_msgs;     /* messages the connection completed before this reply */
    uint64_t rp_retry_at; /* DEST: a retry time the caller knows (unix s), 0 = none */
} dlv_reply_t;

/* What one recipient's outcome is. */
typedef struct dlv_result {
    dlv_fate_t rs_fate;
    int rs_code;             /* the code as recorded (0: none) */
    char rs_status[16];      /* the enhanced status as recorded */
    const char *rs_category; /* the bounce category (static); NULL when delivered */
    uint64_t rs_retry_at;    /* deferred: earliest next attempt (unix s), 0 = the schedule's */
} dlv_result_t;

#define DLV_TEXT_MAX 1280

/* Everything that follows from a reply. */
typedef struct dlv_verdict {
    dlv_result_t v_res;
    char v_text[DLV_TEXT_MAX]; /* the text as recorded (empty when not an outcome) */
    const char *v_rule;        /* the bounce rule that classified ("file:line"), or NULL */
    int v_signal;              /* the shaping rule's action that fired (shp_action_t), 0 none */
    int v_capacity;            /* v_signal SHP_A_CAPACITY: the limit passed (shp_capacity_t) */
    bool v_abort;              /* a protocol error: the session must end (QUIT) */
    const char *v_tls_policy;  /* set by the caller on a TLS refusal: the policy that refused
                                * ("dane", ...), NULL = the destination's */
    const char *v_tls_failure; /* and its RFC 8460 result type ("starttls-not-supported") */
} dlv_verdict_t;

/* Judge reply r into *v. Applies the shaping rules of r->rp_q to the
 * replies that decide a fate (its counters, backoff, suspension; the
 * caller acts on the destination's part of v_signal with dlv_dest_signal).
 * Any thread (sluiced calls it on the reply's delivery thread; rp_q's
 * provider is shared and locks what it changes). */
void dlv_judge(const dlv_reply_t *r, dlv_verdict_t *v);
/* The judge's classification step alone (tests, dlv_classify): the active
 * bounce rules, then the built-in table; always fills *out (h_category
 * never NULL). Without mx, a connection-level failure's text
 * ("host[ip]:port greeting: 421 ...") gives the host that refused. Any
 * thread. */
struct dlv_rule_hit;
void dlv_classify_reply(int code, const char *status, const char *text, const char *domain,
                        const char *mx, struct dlv_rule_hit *out);
/* The bounce rules in force: the installed set, else the built-in one with
 * the shipped providers (made on first need). Any thread. */
struct dlv_rules;
const struct dlv_rules *dlv_rules_in_force(void);
/* The outcome for a reply given its rule hit: dlv_result_for_code(), except
 * a 4xx whose rule says "bounce" is Q_OUT_BOUNCED. Any thread. */
queue_result_t dlv_result_for_verdict(int code, const struct dlv_rule_hit *h);

/* Where an outcome happened: the connection fields of the record and of
 * the delivery log line. */
typedef struct dlv_where {
    const char *w_mx; /* NULL: no connection ("relay=none") */
    const char *w_mx_ip;
    int w_port;
    const char *w_src_ip;
    const char *w_tls;
    const char *w_cipher;
    const char *w_mta_sts;     /* MTA-STS mode that applied ("enforce", "testing") or NULL */
    const char *w_tls_policy;  /* "dane", "mta-sts", "verify", "required", "opportunistic",
                                * "none" (tls disabled); NULL: not known */
    const char *w_tls_failure; /* a TLS refusal's RFC 8460 result type, or NULL */
    bool w_peer_dsn;           /* the server offered DSN: NOTIFY and ORCPT went on with the RCPT */
    /* for the records: NULL / 0 when none applies (dlv_dest_names) */
    const char *w_vmta;
    const char *w_pool;
    const char *w_provider;
    int w_txn_rcpts; /* recipients in the SMTP transaction */
} dlv_where_t;

/* Fill w's virtual MTA (vmta < 0: none), the pool qd was queued in and
 * the destination's provider; borrowed names, valid on de's thread until
 * the next reload. Delivery thread of de. */
void dlv_dest_names(dlv_dest_t *de, const queue_dispatch_t *qd, int vmta, dlv_where_t *w);

/* Recipient i of qd has outcome res (text: its text): write the one
 * delivery log line, count it and hand it to the queue. Delivery thread
 * t only. */
void dlv_report(dlv_thread_t *t, const queue_dispatch_t *qd, int i, const dlv_result_t *res,
                const char *text, const dlv_where_t *w);

/* ------------------------------------------------------------ dest.c
 * Destinations. All on the destination's delivery thread. */

/* The thread's destination for domain (created on first use). */
dlv_dest_t *dlv_dest_get(dlv_thread_t *t, const char *domain);
/* Add a dispatch to the backlog (its pool, its job); counts de_npending. */
void dlv_dest_enqueue(dlv_dest_t *de, queue_dispatch_t *qd);
/* Hand out work / open connections / apply route failures. */
void dlv_dest_kick(dlv_dest_t *de);
/* Pop the next pending dispatch, or NULL (no throttle: failing or freeing
 * the backlog). */
queue_dispatch_t *dlv_dest_pop(dlv_dest_t *de);
/* A session could not get through to any address (connect, greeting): v
 * is the judge's verdict on its last error (trouble.c). */
void dlv_dest_conn_failed(dlv_dest_t *de, const dlv_verdict_t *v);
/* A session reached the ready state, setup_us after it was opened. */
void dlv_dest_conn_ok(dlv_dest_t *de, uint64_t setup_us);
/* A dispatch a ready connection of de finished took us (dest_open_pays). */
void dlv_dest_txn_done(dlv_dest_t *de, uint64_t us);
/* The destination's TLS sessions (dest.c): keep one (the oldest goes when
 * DLV_TLS_SESSIONS are kept; owned from then on), take the newest (the
 * caller owns it, NULL when none), drop them all (a policy change: a
 * resumed session would skip a check now required). Thread: the
 * destination's delivery thread. */
void dlv_dest_tls_keep(dlv_dest_t *de, tls_session_t *sess);
tls_session_t *dlv_dest_tls_take(dlv_dest_t *de);
static inline void dlv_dest_tls_drop(dlv_dest_t *de) /* inline: mta_sts.c calls it too */
{
    while (de->de_ntls_sessions)
        tls_session_free(de->de_tls_sessions[--de->de_ntls_sessions]);
}
/* Every pending dispatch of de gets the fate of verdict v (route failure,
 * dead site, TLS policy, a held provider). */
void dlv_dest_fail_pending(dlv_dest_t *de, const dlv_verdict_t *v);
/* The same with a verdict judged here: stage DLV_STAGE_DEST, no reply
 * (code 0 unless the route has one, e.g. 556 for a null MX). retry_at:
 * unix s, 0 = the schedule's. */
void dlv_dest_fail_pending_with(dlv_dest_t *de, int code, const char *status, const char *text,
                                uint64_t retry_at);
/* The next dispatch for an idle session of vmta, or NULL (a timer kicks
 * the destination when a token is due); *quit: the session should QUIT
 * (source disabled, provider suspended, over a lowered connection cap). */
queue_dispatch_t *dlv_dest_next(dlv_dest_t *de, int vmta, bool *quit);
/* A session of vmta closed (dlv_session_new's connection was counted). */
void dlv_dest_conn_release(dlv_dest_t *de, int vmta);
/* Per-session limits and identity of vmta for de's provider. */
int dlv_dest_max_msgs(dlv_dest_t *de, int vmta);
int dlv_dest_max_rcpt(dlv_dest_t *de, int vmta);
const char *dlv_dest_helo(dlv_dest_t *de, int vmta);
/* VERP as the shaping file says for virtual MTA vmta and pool (-1: none):
 * 1 on, -1 off, 0 not said (shp_verp). Delivery thread. */
int dlv_dest_verp(dlv_dest_t *de, int vmta, int pool);
/* Bind the TCP handle to vmta's source address. 0 or a libuv error. */
int dlv_dest_bind(dlv_dest_t *de, int vmta, uv_tcp_t *tcp);
/* The (provider, vmta) queue a reply of a session of de from vmta goes to
 * (dlv_reply_t's rp_q): looked up at each reply, since a reload may move
 * the destination to another provider. */
shp_queue_t *dlv_dest_queue(dlv_dest_t *de, int vmta);
/* Act on the destination's part of a verdict's shaping signal: defer-queue
 * defers the backlog now; suspend and disable-source move it on (other
 * sources) or defer it at the next kick. */
void dlv_dest_signal(dlv_dest_t *de, int signal);
/* A reload changed routes or TLS policies after a session born at `born`
 * (clock_mono_us) connected: it QUITs instead of taking more work. */
bool dlv_dest_session_stale(const dlv_dest_t *de, uint64_t born);
/* The thread's table, for delivery.c: forget destinations idle for a minute
 * (every 10 s); free them all (after the loop closed); drop the backlogs
 * unreported and shut the sessions down (stop); take a rerouting reload
 * (t_cfg is the new snapshot: TLS policies, idle sessions QUIT). */
void dlv_dest_sweep(dlv_thread_t *t);
void dlv_dest_free_all(dlv_thread_t *t);
void dlv_dest_shutdown_all(dlv_thread_t *t);
void dlv_dest_reconfig_all(dlv_thread_t *t);

/* ------------------------------------------------------------ session.c
 * The SMTP client. All on the destination's delivery thread. */

/* Open a new connection for de (to de_addrs[0], then the next ones) from
 * virtual MTA vmta (dest.c has counted it: dlv_dest_conn_release when it
 * closes). */
dlv_session_t *dlv_session_new(dlv_dest_t *de, int vmta);
/* The session's virtual MTA. */
int dlv_session_vmta(const dlv_session_t *s);
/* True when the session is connected, idle and may take a dispatch. */
bool dlv_session_idle(const dlv_session_t *s);
/* Give an idle session a dispatch (ownership passes). */
void dlv_session_take(dlv_session_t *s, queue_dispatch_t *qd);
/* Shut down: QUIT when idle (short deadline), close otherwise; the
 * dispatch in progress is dropped unreported. */
void dlv_session_shutdown(dlv_session_t *s);
/* The next session of the same destination. */
dlv_session_t *dlv_session_next(const dlv_session_t *s);
/* Sessions that have not reached the ready state yet. */
bool dlv_session_connecting(const dlv_session_t *s);
/* Sessions that are closing (QUIT sent or being closed): no more work. */
bool dlv_session_closing(const dlv_session_t *s);

/* ------------------------------------------------------------ commands.c */

/* The service extensions an EHLO reply advertises. */
typedef struct dlv_ehlo {
    bool x_pipelining, x_8bitmime, x_smtputf8, x_starttls, x_dsn, x_size;
    uint64_t x_size_max; /* SIZE n (RFC 1870), 0 = no limit given */
} dlv_ehlo_t;

/* Read the keywords of an EHLO reply's text (its lines after the first,
 * joined by "\n") into *x. Any thread. */
void dlv_ehlo_parse(const buf_t *text, dlv_ehlo_t *x);
/* Append "MAIL FROM:<...> [BODY=8BITMIME] [SMTPUTF8] [SIZE=n] [RET=] [ENVID=]"
 * CRLF for qd to a server offering x (from: the VERP return path, or NULL
 * for qd's sender; body_8bit: what is sent has 8-bit bytes; size: what is
 * sent, RFC 1870). Any thread. */
void dlv_cmd_mail(buf_t *b, const queue_dispatch_t *qd, const char *from, const dlv_ehlo_t *x,
                  bool body_8bit, size_t size);
/* Append "RCPT TO:<...> [NOTIFY=] [ORCPT=]" CRLF (DSN parameters only to a
 * server offering DSN). Any thread. */
void dlv_cmd_rcpt(buf_t *b, const queue_rcpt_out_t *r, const dlv_ehlo_t *x);

/* ------------------------------------------------------------ prepare.c
 * A dispatch's message as one server gets it. The session's delivery
 * thread. */

typedef struct dlv_msg {
    const char *m_msg; /* what is sent: qd_body, or m_copy's bytes */
    size_t m_len;
    bool m_8bit;  /* the stored message holds 8-bit bytes */
    buf_t m_copy; /* the 7-bit copy for a server without 8BITMIME (mime7bit.c) */
    buf_t m_dkim; /* the DKIM-Signature fields (CRLF lines) that go first */
} dlv_msg_t;

/* SMTPUTF8 asked for and not offered: what of qd needs it whatever the
 * recipient ("sender address", "header fields"), or NULL (then only
 * recipients whose own address is not ASCII, dlv_msg_rcpt_utf8). */
const char *dlv_msg_utf8_need(const queue_dispatch_t *qd);
bool dlv_msg_rcpt_utf8(const queue_dispatch_t *qd, int i);
/* Make qd's message for a server offering x (host[ip] for the texts): a
 * 7-bit copy without 8BITMIME, DKIM over what is sent (a signing failure
 * is logged), SIZE checked. 0 and *m ready, or -1 with the local failure
 * every recipient left gets (status and text: 5.6.3, 4.3.0 DKIM, 5.3.4). */
int dlv_msg_prepare(const cfg_t *cfg, const queue_dispatch_t *qd, const dlv_ehlo_t *x,
                    const char *host, const char *ip, dlv_msg_t *m, char status[16], char *text,
                    size_t textlen);
/* What is on the wire, dot-stuffing aside (RFC 1870 SIZE). */
size_t dlv_msg_size(const dlv_msg_t *m);
/* The dispatch is over: keep the buffers' memory, drop the copy. */
void dlv_msg_done(dlv_msg_t *m);

/* ------------------------------------------------------------ mta_sts.c
 * MTA-STS (RFC 8461) for destinations routed by MX. All on the
 * destination's delivery thread. */

/* The route is being resolved by MX: look up _mta-sts.<domain> beside it
 * (nothing when delivery.mta_sts is off or tls_policy { } names the
 * domain); kick(de) when the policy in force is known. */
void dlv_sts_route_start(dlv_dest_t *de, void (*kick)(dlv_dest_t *de));
/* Before handing out work on a ready route: go on; hold while the policy
 * is being looked up or fetched (kick comes when it ends); or defer the
 * pending recipients (4.7.5, *why) when enforce mode leaves no MX host.
 * Applies the policy once per route: filters de_addrs, sets de_policy
 * (enforce = verify). */
typedef enum { DLV_STS_GO = 0, DLV_STS_HOLD, DLV_STS_DEFER } dlv_sts_gate_t;
dlv_sts_gate_t dlv_sts_gate(dlv_dest_t *de, const char **why);
/* Destination freed / thread stopping (closes fetches) / thread ended
 * (frees the cache; after the loop closed). */
void dlv_sts_dest_free(dlv_dest_t *de);
void dlv_sts_thread_stop(dlv_thread_t *t);
void dlv_sts_thread_free(dlv_thread_t *t);
/* The mode applied to de's current route: "enforce", "testing", or NULL
 * (no policy, mode none, or not looked up). */
const char *dlv_sts_mode(const dlv_dest_t *de);
/* Enforce mode rules de's TLS (de_policy was set to verify by it). */
bool dlv_sts_enforced(const dlv_dest_t *de);
/* Testing mode: log (warn) a failure enforce mode would have deferred. */
void dlv_sts_testing_failure(const dlv_dest_t *de, const char *host, const char *what);
/* A session connected at born (monotonic us) predates the policy in force
 * now: it should QUIT rather than take more work. */
bool dlv_sts_session_stale(const dlv_dest_t *de, uint64_t born);

/* The TLS policy of de's current route as the record names it (dest.c):
 * "mta-sts" (enforce), else the tls_policy in force ("verify", "required",
 * "opportunistic", "none"). A DANE host's session says "dane" itself. */
const char *dlv_dest_tls_policy(const dlv_dest_t *de);

/* ------------------------------------------------------------ dane.c
 * DANE (RFC 7672): the verdict on one MX host, shared by its addresses.
 * All on the destination's delivery thread. */

typedef enum {
    DLV_DANE_NONE = 0, /* no DANE for this host: other policies apply */
    DLV_DANE_ON,       /* usable TLSA records: TLS mandatory, authenticated by them */
    DLV_DANE_FAILED,   /* the lookup failed in a signed zone: defer 4.7.5, next MX */
} dlv_dane_state_t;

struct dlv_dane {
    int dn_refs;
    dlv_dane_state_t dn_state;
    dns_tlsa_t *dn_tlsa; /* DLV_DANE_ON: the usable records */
    int dn_ntlsa;
    const char *dn_failure; /* RFC 8460 result type of a failed or unusable lookup, or NULL */
    char dn_why[200];       /* the failure in words */
};

/* Done with a lookup: dn holds one reference for the callee, NULL when the
 * resolver was freed (thread stopping). */
typedef void (*dlv_dane_done_fn)(void *arg, dlv_dane_t *dn);
/* Ask whether host's address answer is secure and for its TLSA records at
 * _<port>._tcp.<host>. The caller asks only for hosts of a secure MX
 * answer, with delivery.dnssec = "trust-ad". */
void dlv_dane_lookup(dlv_thread_t *t, const char *host, int port, dlv_dane_done_fn done, void *arg);
dlv_dane_t *dlv_dane_ref(dlv_dane_t *dn); /* NULL allowed */
void dlv_dane_unref(dlv_dane_t *dn);      /* NULL allowed */
/* TLSRPT (RFC 8460): count one TLS session to mx/ip for policy domain
 * domain under ptype ("tlsa", "sts", "no-policy-found"); result NULL when
 * it succeeded, else its result type and reason the error in words (the
 * report's failure-reason-code). Nothing when reports.tlsrpt is off.
 * Delivery thread t. */
void dlv_tlsrpt_note(dlv_thread_t *t, const char *domain, const char *ptype, const char *result,
                     const char *reason, const char *mx, const char *ip);
/* RFC 7672 2.2 / 3.1: DANE-TA(2) or DANE-EE(3), selector 0/1, matching 0/1/2
 * with a digest of the right length. Any thread. */
bool dlv_dane_usable(const dns_tlsa_t *r);

#endif /* SLUICE_DELIVERY_INT_H */
