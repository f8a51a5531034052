/*
 * queue/queue.h - the LMDB spool and the queue thread.
 *
 * The queue thread is the only LMDB writer. Reception threads submit
 * messages (queue_submit); the queue thread drains its channel, writes every
 * pending insert in one write transaction, commits once (group commit: one
 * fsync for many messages), then pushes each message back to the channel
 * its submitter named, with qm_status set. A submitter answers 250 only
 * when it gets its message back with qm_status == 0.
 *
 * Spool layout (one LMDB environment in cfg->c_spool_path, see
 * docs/spool.md):
 *   msg : msgid (8 bytes, big-endian)            -> msg record + body
 *   rcpt: msgid (8 BE) + index (4 BE)            -> rcpt record
 *   due : next-attempt (8 BE, unix s) + msgid + index -> (empty)
 *   meta: "version" etc.
 *
 * Thread: queue_open/queue_start/queue_stop on the main thread; the rest as
 * noted.
 */
#ifndef SLUICE_QUEUE_H
#define SLUICE_QUEUE_H

#include "core/base/base.h"
#include "config/config.h"

#include <stdatomic.h>

typedef struct queue queue_t;

/* DSN NOTIFY bits (RFC 3461); 0 = not given (default: FAILURE). */
#define Q_NOTIFY_NEVER 0x01
#define Q_NOTIFY_SUCCESS 0x02
#define Q_NOTIFY_FAILURE 0x04
#define Q_NOTIFY_DELAY 0x08

/* Message flags. */
#define Q_F_8BITMIME 0x01 /* BODY=8BITMIME given */
#define Q_F_SMTPUTF8 0x02 /* SMTPUTF8 given */
#define Q_F_RET_FULL 0x04 /* RET=FULL */
#define Q_F_RET_HDRS 0x08 /* RET=HDRS */
#define Q_F_DSN 0x10      /* a DSN sluice wrote: the msg record names the message it reports */

typedef struct queue_rcpt_in {
    char *qr_addr;     /* owned */
    char *qr_orcpt;    /* owned, ORCPT=... or NULL */
    uint8_t qr_notify; /* Q_NOTIFY_* */
} queue_rcpt_in_t;

/*
 * A message on its way into the spool. Built and owned by the submitter;
 * owned by the queue thread between queue_submit() and the push back onto
 * qm_reply; freed by the submitter with queue_msg_in_free().
 */
typedef struct queue_msg_in {
    chan_node_t qm_node;
    uint64_t qm_id;      /* from queue_msgid_new() */
    uint64_t qm_arrival; /* unix seconds */
    uint64_t
        qm_first;    /* unix s of the first attempt (HTTP deferred_until, priority); 0 = arrival */
    char *qm_sender; /* owned; "" for the null sender <> */
    char *qm_job;    /* owned or NULL: X-Sluice-Job */
    char *qm_envid;  /* owned or NULL: ENVID */
    char *qm_auth_user; /* owned or NULL */
    char qm_client_ip[48];
    uint8_t qm_flags; /* Q_F_* */
    int qm_nrcpt;
    queue_rcpt_in_t *qm_rcpts; /* owned array of qm_nrcpt */
    buf_t qm_body;             /* the message as it will be delivered: header lines
                                  (Received first) + blank line + body; CRLF line
                                  ends; NOT dot-stuffed */
    uint64_t qm_dsn_for;       /* Q_F_DSN: the message this DSN reports (dsn.c) */
    char *qm_dsn_job;          /* Q_F_DSN: that message's job, owned or NULL */
    /* set by the queue thread before the push back */
    int qm_status; /* 0 committed and durable; SL_EFULL (452 4.3.1);
                      SL_ESPOOL (451 4.3.0) */
    /* set by the submitter */
    chan_t *qm_reply; /* where the message comes back after commit */
    void *qm_ctx;     /* the submitter's context */
} queue_msg_in_t;

void queue_msg_in_free(queue_msg_in_t *m);

/* A new message id, unique across threads and restarts (time-based,
 * monotonic). Any thread. */
uint64_t queue_msgid_new(void);
/* Format as 16 upper-case hex digits; returns dst (>= 17 bytes). */
char *queue_msgid_fmt(uint64_t id, char *dst);
/* Parse the 16-hex form. 0 or SL_EPARSE. */
int queue_msgid_parse(const char *s, uint64_t *id);

#define Q_LAT_NBUCKETS 16 /* time-in-queue histogram buckets */

/* Counters, updated by the queue thread with relaxed atomics, read by any
 * thread. */
typedef struct queue_stats {
    atomic_uint_fast64_t qs_msgs;         /* messages in the spool */
    atomic_uint_fast64_t qs_rcpts;        /* recipients in the spool */
    atomic_uint_fast64_t qs_received;     /* messages committed since start */
    atomic_uint_fast64_t qs_commits;      /* write transactions committed */
    atomic_uint_fast64_t qs_pending;      /* submitted, not yet committed */
    atomic_uint_fast64_t qs_map_size;     /* current LMDB map size, bytes */
    atomic_uint_fast64_t qs_used;         /* bytes used in the map */
    atomic_uint_fast64_t qs_max_size;     /* spool.max_size */
    atomic_int qs_fill_pct;               /* used / max_size, percent */
    atomic_uint_fast64_t qs_errors;       /* failed commits */
    atomic_uint_fast64_t qs_active_bytes; /* message bytes handed to delivery (queue.active_size) */
    atomic_uint_fast64_t qs_active_limit; /* queue.active_size in force (ulimit -v may cap it) */
    /* Outcomes applied (queue/outcome.c counts them as they are committed)
     * and the time in queue of delivered recipients, for `metrics`. */
    atomic_uint_fast64_t qs_out_delivered;
    atomic_uint_fast64_t qs_out_transient;
    atomic_uint_fast64_t qs_out_bounced;
    atomic_uint_fast64_t qs_out_expired;
    atomic_uint_fast64_t qs_out_admin_bounced;
    atomic_uint_fast64_t qs_lat_bucket[Q_LAT_NBUCKETS]; /* not cumulative; see queue_lat_bounds */
    atomic_uint_fast64_t qs_lat_sum;                    /* microseconds */
    atomic_uint_fast64_t qs_lat_count;
} queue_stats_t;

/* Upper bounds (microseconds) of the time-in-queue histogram buckets; the
 * last is UINT64_MAX (+Inf). */
extern const uint64_t queue_lat_bounds[Q_LAT_NBUCKETS];

/* Open (creating) the spool and find the queue again. Start-up errors
 * (not writable, corrupt, map too small) return SL_ESPOOL with a clear
 * message in err. Main thread. */
int queue_open(cfg_t *cfg, queue_t **out, char *err, size_t errlen);
/* Start the queue thread. Main thread. */
int queue_start(queue_t *q);
/* Commit everything already submitted, stop the thread, close the spool.
 * Messages submitted after this started come back with SL_ESPOOL. Main
 * thread, after reception stopped submitting. */
void queue_stop(queue_t *q);
void queue_free(queue_t *q);

/* Hand a message to the queue thread. Any thread. Always succeeds; the
 * outcome comes back through m->qm_reply. */
void queue_submit(queue_t *q, queue_msg_in_t *m);
/* Hand n messages (n >= 1) to the queue thread as one batch: one channel
 * hop, so they join the same group commit (in transactions of at most
 * spool.commit_batch messages, their fdatasync shared), and they come back
 * through their qm_reply in runs of one push each. As queue_submit for
 * every message. Any thread. */
void queue_submit_batch(queue_t *q, queue_msg_in_t **msgs, size_t n);

const queue_stats_t *queue_stats(const queue_t *q);
/* Backpressure, for reception: true when new mail should be refused. */
bool queue_over_high_water(const queue_t *q); /* spool fill >= high_water */
uint64_t queue_pending(const queue_t *q);

/*
 * Requests from the control socket, answered on the queue thread with a
 * read transaction. The queue thread fills qq_result (a json-c object,
 * owned by the requester afterwards) or qq_error, then pushes the request
 * back onto qq_reply.
 */
typedef enum {
    QREQ_LIST = 1, /* messages, oldest first: {"messages":[{id, arrival, sender, size, job,
                      recipients:[{addr, attempts, next_attempt}]}], "total": N}; the
                      forms of every answer: docs/records.md */
    QREQ_INSPECT,  /* one message by qq_msgid: the same fields plus flags and envid */
    QREQ_CHECK,    /* integrity check: {"ok":bool, "msgs":N, "rcpts":N, "due":N, "problems":[..]} */
    /* Operator requests (queue/admin.c, docs/operations.md). The long ones
     * (QUEUES, RETRY, BOUNCE) run in bounded chunks between the queue
     * thread's other work and answer when done. */
    QREQ_QUEUES,   /* per-domain summary, top qq_limit (0 = 20) by queued recipients:
                      {"domains":[{domain, queued, in_flight, deferred, oldest, next_attempt,
                      last_code, last_status, last_text, suspended}], "total_domains",
                      "total_recipients"}; with qq_domain: {"domain":{...}} for that one */
    QREQ_SUSPEND,  /* hold delivery for qq_domain, qq_job or qq_all until qq_until (unix s,
                      0 = until resumed); persisted in the meta db: {"holds":[...]} */
    QREQ_RESUME,   /* drop the hold on qq_domain / qq_job / qq_all: {"resumed":N, "holds":[...]} */
    QREQ_HOLDS,    /* the holds in force: {"holds":[{"type", "name", "provider", "by",
                      "until", "persistent"}]} (core/server/commands.c adds the
                      shaping ones) */
    QREQ_RETRY,    /* deferred recipients of qq_domain (or all) due now: {"rescheduled":N} */
    QREQ_BOUNCE,   /* remove and bounce (accounting "admin_bounce", DSN as for a bounce) the
                      recipients matching qq_domain, qq_job, qq_sender and qq_older_than
                      (all that are given; none = every recipient):
                      {"bounced":N, "skipped_in_flight":N} */
    QREQ_ROTATE,   /* rotate the accounting log (`sluicectl log-rotate`): our own rename,
                      or a reopen when the file was moved away: {"accounting": what
                      happened}, or qq_error when it failed */
    QREQ_SUPPRESS, /* the suppression list (queue/suppress.c): qq_supp says what;
                      answers in docs/records.md ("suppress") */
    QREQ_TLSRPT,   /* TLSRPT counters (queue/tlsrpt.c) of the day qq_domain names
                      ("YYYY-MM-DD"; NULL = today, UTC): {"day", "domains":[...]} */
    QREQ_TLSRPT_SEND, /* send the pending TLSRPT reports now, today's included:
                         {"reports": N started} */
} queue_req_type_t;

struct queue_supp_req; /* below, with the suppression list */

typedef struct queue_req {
    chan_node_t qq_node;
    queue_req_type_t qq_type;
    uint64_t qq_msgid;             /* INSPECT */
    size_t qq_limit;               /* LIST: at most this many (0 = 1000) */
    struct json_object *qq_result; /* set by the queue thread */
    char qq_error[256];            /* set on failure ("" on success) */
    chan_t *qq_reply;
    void *qq_ctx;
    /* operator requests (QREQ_QUEUES and after); strings owned by the requester */
    char *qq_domain;                /* lower-case domain or NULL */
    char *qq_job;                   /* job id or NULL */
    char *qq_sender;                /* envelope sender or NULL ("" = the null sender) */
    uint64_t qq_older_than;         /* BOUNCE: arrived at least this many seconds ago (0 = any) */
    uint64_t qq_until;              /* SUSPEND: unix s, 0 = until resumed */
    bool qq_all;                    /* SUSPEND/RESUME/RETRY: everything */
    struct queue_supp_req *qq_supp; /* SUPPRESS: owned by the requester (queue_supp_req_free) */
} queue_req_t;

void queue_request(queue_t *q, queue_req_t *r);

/* Offline integrity check of a spool directory (no daemon running): opens
 * it read-only and runs the QREQ_CHECK logic. Prints problems to stderr.
 * Returns 0 when consistent. Used by `sluiced --check-spool`. */
int queue_check_offline(const char *spool_path, size_t *nmsgs, size_t *nrcpts);

/* One daemon per spool: take the exclusive lock on spool_path's lock file
 * (QUEUE_LOCK_FILE, created 0640 with the holder's pid in it). 0 and the
 * descriptor that holds it in *fd_out (keep it open while the spool is in
 * use; queue_spool_unlock, or the process's end, drops it); SL_EBUSY when
 * another process holds it (err names its pid), or -errno (the spool
 * directory missing: -ENOENT). Main thread, before queue_open. */
#define QUEUE_LOCK_FILE "sluiced.lock"
int queue_spool_lock(const char *spool_path, int *fd_out, char *err, size_t errlen);
void queue_spool_unlock(int fd);

/* ------------------------------------------------------------------------
 * Delivery interface (queue thread <-> delivery threads), "Deliver mail".
 *
 * The scheduler reads due recipients from the `due` index by cursor, groups
 * them by (message, recipient domain), and hands each group to the
 * dispatcher function (set by the delivery module before queue_start). At
 * most c_active_window recipients per domain and c_active_total in all are
 * in flight; the rest stay on disk until outcomes come back. Each
 * dispatched recipient comes back as exactly one queue_outcome_t.
 */
typedef struct queue_rcpt_out {
    uint32_t qo_idx;      /* index of the recipient within its message */
    char *qo_addr;        /* owned */
    char *qo_orcpt;       /* owned or NULL */
    uint8_t qo_notify;    /* Q_NOTIFY_* */
    uint32_t qo_attempts; /* attempts made before this one */
} queue_rcpt_out_t;

typedef struct queue_dispatch {
    chan_node_t qd_node;
    uint64_t qd_msgid;
    char *qd_domain;     /* owned, lower-case recipient domain */
    char *qd_sender;     /* owned, "" for <> */
    char *qd_job;        /* owned or NULL */
    char *qd_envid;      /* owned or NULL */
    char *qd_auth_user;  /* owned or NULL: the SMTP AUTH user who submitted it */
    uint8_t qd_flags;    /* Q_F_* */
    uint64_t qd_arrival; /* unix seconds */
    int qd_nrcpt;
    queue_rcpt_out_t *qd_rcpts; /* owned array */
    char *qd_body;              /* owned copy of the stored message (not dot-stuffed) */
    size_t qd_body_len;
    int qd_pool; /* delivery's (dest.c): the pool it was queued in, -1 before */
} queue_dispatch_t;

void queue_dispatch_free(queue_dispatch_t *d);

typedef enum { Q_OUT_DELIVERED = 1, Q_OUT_DEFERRED, Q_OUT_BOUNCED } queue_result_t;

/* One recipient's outcome. Built by a delivery thread, owned by the queue
 * after queue_outcome_submit(). Strings are owned (NULL allowed). */
typedef struct queue_outcome {
    chan_node_t qo_node;
    uint64_t qo_msgid;
    uint32_t qo_idx;
    queue_result_t qo_result;
    int qo_code;        /* SMTP reply code, 0 when there was no reply */
    char qo_status[16]; /* enhanced status "5.1.1" */
    char *qo_text;      /* reply text or a local diagnostic ("connect: refused") */
    char *qo_category;  /* bounce category ("bad-mailbox") or NULL */
    char *qo_mx;        /* MX host name */
    char qo_mx_ip[48];
    char qo_src_ip[48];
    char qo_tls[24]; /* "TLSv1.3" or "" */
    char qo_cipher[64];
    char qo_mta_sts[12];     /* MTA-STS mode that applied: "enforce", "testing" or "" */
    char qo_tls_policy[16];  /* "dane", "mta-sts", "verify", "required", "opportunistic",
                                "none", or "" (not known) */
    char qo_tls_failure[32]; /* a TLS refusal's RFC 8460 result type, or "" */
    uint64_t qo_retry_at;    /* deferred: earliest next attempt (unix s), 0 = schedule */
    bool qo_admin;           /* bounced by the operator (QREQ_BOUNCE): "admin_bounce" */
    bool qo_peer_dsn;        /* the next hop offered DSN (RFC 3461): NOTIFY went on with the
                                message, so a success is that hop's to report, not ours */
    /* for the records (docs/records.md): "" when none applies */
    char qo_vmta[64];      /* the virtual MTA of the connection */
    char qo_pool[64];      /* the pool the message was queued in */
    char qo_provider[64];  /* the shaping provider of the destination */
    uint32_t qo_txn_rcpts; /* recipients in the SMTP transaction (0: none was opened) */
    uint8_t qo_sched;      /* the queue thread's own marks (outcome.c); 0 when submitted */
} queue_outcome_t;

void queue_outcome_free(queue_outcome_t *o);

/* TLSRPT (RFC 8460, docs/tlsrpt.md): one TLS session towards a host of
 * policy domain dom, under policy type ptype ("tlsa", "sts",
 * "no-policy-found"); result NULL or "" when it succeeded, else the RFC
 * 8460 result type and reason the error text (failure-reason-code; cut
 * to 64 bytes, NULL: none); mx / ip the receiving host (NULL: none).
 * Counted by the queue thread and kept in the spool. The caller checks
 * that reports.tlsrpt is on. Any thread. */
void queue_tlsrpt_note(queue_t *q, const char *dom, const char *ptype, const char *result,
                       const char *reason, const char *mx, const char *ip);

/* Called on the queue thread with a dispatch it hands over (ownership
 * passes). The function must not block: it pushes onto a delivery
 * thread's channel. */
typedef void (*queue_dispatch_fn)(void *arg, queue_dispatch_t *d);
/* Set before queue_start(). Without a dispatcher nothing is scheduled. */
void queue_set_dispatcher(queue_t *q, queue_dispatch_fn fn, void *arg);
/* Any thread. The queue commits outcomes in batches (group commit) and
 * writes one accounting record for each. */
void queue_outcome_submit(queue_t *q, queue_outcome_t *o);
/* Ask the queue thread to rotate the accounting log, without an answer
 * (the outcome is logged; QREQ_ROTATE answers). Any thread. */
void queue_acct_rotate(queue_t *q);
/* A reloaded configuration (the queue takes a reference). Any thread. The
 * queue thread takes it at its next wake-up: queue.* (retry schedule,
 * max_age, dsn, active_*, scan_interval), spool.high_water and
 * spool.commit_batch apply from then on. The caller keeps the start-up
 * values of spool.path/sync/map_size/max_size and log.accounting_* in cfg
 * (they need a restart). */
void queue_set_config(queue_t *q, cfg_t *cfg);
/* Append one record (a complete JSON object, no newline) to the accounting
 * log: the queue thread writes it with its next batch. Used for records
 * that are not outcomes, e.g. type "shaping" (delivery/shaping.c). Copied;
 * dropped when the queue is stopping. Any thread. */
void queue_acct_event(queue_t *q, const char *json_line);

/* `sluicectl events`: the stream's head and each webhook's cursor, lag,
 * in flight, parked batches, counters and last error (docs/records.md,
 * ctl/events); caller puts. Any thread. */
struct json_object *queue_events_json(queue_t *q);
/* `sluicectl events unpark NAME`: send the parked batches of webhook name
 * again; how many there are in *nparked. 0 or SL_ENOTFOUND. Any thread. */
int queue_events_unpark(queue_t *q, const char *name, int *nparked);
/* `sluicectl events replay NAME --since T [--until T]`: send the records
 * of the accounting files in [since_us, until_us] to webhook name again,
 * as a stream of its own (docs/events.md). 0, or SL_ENOTFOUND, SL_EBUSY (a
 * replay of it is running), SL_ECONFIG (no JSON accounting file) with err
 * set. Any thread. */
int queue_events_replay(queue_t *q, const char *name, uint64_t since_us, uint64_t until_us,
                        char *err, size_t errlen);
/* ------------------------------------------------------------------------
 * The suppression list (queue/suppress.c, docs/bounces-in.md): addresses
 * that must not get mail, in the spool's `suppress` sub-database, keyed by
 * (normalized address, scope). Scope "" is global; another scope is a
 * tenant (the AUTH user). The queue thread is the only writer (bounces,
 * complaints, the operator's requests); any thread may look up.
 */
#define QUEUE_SUPP_ADDR_MAX 320  /* normalized address, bytes */
#define QUEUE_SUPP_SCOPE_MAX 128 /* scope, bytes */
#define QUEUE_SUPP_REASON_MAX 32 /* reason: [a-z0-9-], e.g. "bad-mailbox", "complaint" */

typedef struct queue_supp_entry {
    char se_addr[QUEUE_SUPP_ADDR_MAX + 1];
    char se_scope[QUEUE_SUPP_SCOPE_MAX + 1];   /* "" = global */
    char se_reason[QUEUE_SUPP_REASON_MAX + 1]; /* category, "complaint", "operator", "import" */
    char se_source[129];                       /* what put it there ("msgid/idx"), or "" */
    uint64_t se_time;                          /* unix s */
    uint64_t se_expires;                       /* unix s, 0 = never */
} queue_supp_entry_t;

/* addr normalized as the list keys it: lower-cased (domain and local
 * part), a trailing dot of the domain dropped; for a domain of
 * suppression.fold_domains the local part's dots dropped and its +tag
 * cut, for one of suppression.case_domains its case kept (the lists as
 * they were at queue_open). 0, or SL_EPARSE (no '@', empty local part or
 * domain, a control character or space, too long).
 * Any thread. */
int queue_supp_normalize(const queue_t *q, const char *addr, char *out, size_t outlen);
/* suppression.scope_header's value in the header block of msg[0..len)
 * (the first field of that name; spaces trimmed; printable ASCII, at most
 * QUEUE_SUPP_SCOPE_MAX bytes) into out: true, or false when the key is
 * "" or the message has no such field. Any thread. */
bool queue_supp_header_scope(const cfg_t *cfg, const char *msg, size_t len, char *out,
                             size_t outlen);
/* Is addr suppressed (an entry in force) for scope - the global list, and
 * that scope's when scope is neither NULL nor ""? One LMDB read
 * transaction, no lock but a shared one against map growth: a few
 * microseconds. Counts a hit when true. Any thread, between queue_open
 * and queue_free. (core/server's RCPT check and the injection API use it.) */
bool queue_suppressed(queue_t *q, const char *addr, const char *scope);
/* The same with the entry that matched (the scoped one first) in *out:
 * 1 found, 0 not, or SL_ESPOOL. Any thread. */
int queue_supp_lookup(queue_t *q, const char *addr, const char *scope, queue_supp_entry_t *out);
/* Entries in the list (read at open and after each write) and hits since
 * start. Any thread. */
void queue_supp_stats(const queue_t *q, uint64_t *entries, uint64_t *hits);
/* Feed the list from an asynchronous report (a DSN or an ARF complaint
 * that came back, core/server/inbound.c): the queue thread adds addr when
 * reason is one the operator chose (suppression.categories, "complaint"
 * with suppression.complaints). Copied; dropped when the queue is
 * stopping. Any thread. */
void queue_supp_report(queue_t *q, const char *addr, const char *scope, const char *reason,
                       const char *source);

/* Several nodes (delivery/cluster.c, docs/cluster.md): fn is called on
 * the queue thread for every entry written to the list by a bounce, a
 * report or an operator's add (not imports, not entries of another node):
 * addr normalized, scope ("" = global), reason, expires (unix s, 0 =
 * never). Main thread, before queue_start; fn must not block. */
typedef void (*queue_supp_hook_fn)(void *arg, const char *addr, const char *scope,
                                   const char *reason, uint64_t expires);
void queue_supp_set_hook(queue_t *q, queue_supp_hook_fn fn, void *arg);
/* An entry another node added (delivery/cluster.c): written as it is, with
 * source "cluster:NODE", and not passed to the hook. if_absent: only when
 * this node has no entry for the address in that scope (the sync on
 * connect, which must not rewrite what it already has). Copied; dropped
 * when the queue is stopping. Any thread. */
void queue_supp_remote(queue_t *q, const char *addr, const char *scope, const char *reason,
                       uint64_t expires, const char *node, bool if_absent);

typedef enum {
    QSUPP_ADD = 1, /* sr_addrs with sr_scope, sr_reason, sr_expires: {"added":N} */
    QSUPP_REMOVE,  /* sr_addrs from sr_scope (NULL: every scope): {"removed":N} */
    QSUPP_CHECK,   /* sr_addrs[0], every scope: {"address", "suppressed", "entries":[..]} */
    QSUPP_LIST,    /* up to sr_limit after sr_after, sr_scope/sr_reason filters:
                      {"entries":[..], "next": cursor or null, "total": N} */
    QSUPP_IMPORT,  /* CSV sr_file from byte sr_offset, at most sr_limit lines, committed per
                      10,000: {"imported":N, "skipped":N, "offset":N, "done":bool,
                      "errors":[..]} */
    QSUPP_REPORT,  /* an asynchronous report (no answer, qq_reply NULL): sr_addrs[0],
                      sr_scope, sr_reason, sr_source, added when the reason is one the
                      operator chose (suppression.categories, .complaints) */
    QSUPP_REMOTE,  /* another node's entry (no answer): sr_addrs[0], sr_scope, sr_reason,
                      sr_expires, sr_source "cluster:NODE" (queue_supp_remote) */
} queue_supp_op_t;

typedef struct queue_supp_req {
    queue_supp_op_t sr_op;
    char **sr_addrs; /* owned */
    int sr_naddrs;
    char *sr_scope;  /* owned or NULL */
    char *sr_reason; /* owned or NULL */
    uint64_t sr_expires;
    char *sr_after; /* owned or NULL: LIST's cursor (the "next" of the last page) */
    size_t sr_limit;
    char *sr_file;   /* owned: IMPORT */
    char *sr_source; /* owned or NULL: REPORT */
    uint64_t sr_offset;
    bool sr_if_absent; /* REMOTE: not over an entry already there */
} queue_supp_req_t;

void queue_supp_req_free(queue_supp_req_t *r);

/* A report without a VERP token (core/server/inbound.c): the message it
 * names by sluice_id (X-Sluice-Id, 16 hex digits) or else message_id (the
 * returned Message-ID), provided rcpt was one of its recipients (the
 * trust rule, docs/bounces-in.md). Either name may be NULL or "". 1
 * matched by sluice_id, 2 by message_id (*id, *idx set, and the message's
 * suppression scope into scope[slen] unless scope is NULL: "" for global),
 * 0 not, SL_ESPOOL. Kept with bounces.inbound, for bounces.verp_max_age
 * (suppress_sent.c). Any thread, between queue_open and queue_free. */
int queue_sent_match(queue_t *q, const char *sluice_id, const char *message_id, const char *rcpt,
                     uint64_t *id, uint32_t *idx, char *scope, size_t slen);
/* The suppression scope message id was received with (its tenant, noted
 * in the sent index; a VERP token names the message) into scope[slen]:
 * 1 (scope "" for global), 0 when the index does not have the message
 * (scope ""), or SL_ESPOOL. Any thread, between queue_open and queue_free. */
int queue_sent_scope(queue_t *q, uint64_t id, char *scope, size_t slen);

#endif /* SLUICE_QUEUE_H */
