/*
 * queue/queue_int.h - private to queue/: the queue handle and the
 * interfaces between queue/'s files, one section per file. A file calls
 * only files on a lower line, never back (docs/architecture.md, "queue/
 * and core/server"; tests/arch/layers.py checks it):
 *     queue.c                    the thread, its channels, group commit
 *     admin.c                    operator requests
 *     outcome.c                  outcomes -> spool, retry, accounting
 *     sched.c, dsn.c             scan and in-flight set; DSN messages
 *     holds.c                    delivery holds
 *     events.c                   the event stream in the spool, the webhook thread
 *     spool.c, acct.c, chanmsg.c records and writes; accounting log; frees
 *     msgid.c                    message ids
 * Nothing outside queue/ includes this.
 */
#ifndef SLUICE_QUEUE_INT_H
#define SLUICE_QUEUE_INT_H

#include "queue/queue.h"

#include <lmdb.h>
#include <pthread.h>
#include <sys/types.h>

#define Q_REC_VERSION 1
#define Q_TEXT_MAX 512      /* last response text kept in a rcpt record */
#define Q_MSG_KEY_LEN 8     /* msgid */
#define Q_RCPT_KEY_LEN 12   /* msgid + idx */
#define Q_DUE_KEY_LEN 20    /* next + msgid + idx */
#define Q_KICK_MIN_US 10000 /* at most one commit-triggered scan per 10 ms */
#define Q_SCAN_CAP 50000    /* due entries examined per scan, at most */

/* ------------------------------------------------------------ records */

/* A decoded msg record. Strings point into the LMDB value (borrowed, valid
 * until the transaction ends or the next write to the same page) or into a
 * copy the caller made. Lengths exclude any NUL: strings are NOT
 * NUL-terminated in the record; *_len gives their length. */
typedef struct q_msg_rec {
    uint8_t mr_flags;
    uint64_t mr_arrival;
    uint32_t mr_nrcpt;   /* recipients at arrival */
    uint32_t mr_pending; /* recipients at arrival too: the record is never rewritten (a
                            message goes with its last recipient record) */
    const char *mr_sender;
    uint16_t mr_sender_len;
    const char *mr_job;
    uint16_t mr_job_len;
    const char *mr_envid;
    uint16_t mr_envid_len;
    const char *mr_auth;
    uint16_t mr_auth_len;
    const char *mr_ip;
    uint16_t mr_ip_len;
    uint64_t mr_dsn_for; /* Q_F_DSN: the message this DSN reports */
    const char *mr_dsn_job;
    uint16_t mr_dsn_job_len;
    /* Q_F_HDRS: taken from the header at reception (q_insert_msg), for the
     * records; absent (NULL, 0) in records written before */
    const char *mr_hdr_msgid; /* the Message-ID field's value, unfolded */
    uint16_t mr_hdr_msgid_len;
    const char *mr_hdrs; /* log.header_fields as a JSON object ("{}" for none) */
    uint16_t mr_hdrs_len;
    const char *mr_body;
    uint32_t mr_body_len;
} q_msg_rec_t;

#define Q_MSG_PENDING_OFF 14 /* offset of the pending count (u32 BE) */
/* A msg record flag of the spool's own (beside queue.h's Q_F_*): the
 * record holds mr_hdr_msgid and mr_hdrs. */
#define Q_F_HDRS 0x80
#define Q_HDR_VALUE_MAX 998 /* a header value kept for the records, at most (RFC 5322 2.1.1) */

/* Point the strings of a record decoded at `from` into a copy of its head
 * at `to` (the body pointer is left alone). */
void q_msg_rebase(q_msg_rec_t *r, const void *from, const void *to);

typedef struct q_rcpt_rec {
    uint8_t rr_notify;
    uint32_t rr_attempts;
    uint64_t rr_next;
    uint16_t rr_code;
    const char *rr_status;
    uint8_t rr_status_len;
    const char *rr_text;
    uint16_t rr_text_len;
    const char *rr_addr;
    uint16_t rr_addr_len;
    const char *rr_orcpt;
    uint16_t rr_orcpt_len;
    const char *rr_mx; /* the server that gave the last reply (rr_code), or none */
    uint16_t rr_mx_len;
} q_rcpt_rec_t;

void q_be64(uint8_t *p, uint64_t v);
void q_be32(uint8_t *p, uint32_t v);
uint64_t q_rd64(const uint8_t *p);
uint32_t q_rd32(const uint8_t *p);

void q_msg_key(uint8_t *k, uint64_t id);
void q_rcpt_key(uint8_t *k, uint64_t id, uint32_t idx);
void q_due_key(uint8_t *k, uint64_t next, uint64_t id, uint32_t idx);

/* Append an encoded record to b (msg: without the body bytes when mr_body
 * is NULL, so that the caller can copy them straight into MDB_RESERVE). */
void q_msg_encode(buf_t *b, const q_msg_rec_t *r);
void q_rcpt_encode(buf_t *b, const q_rcpt_rec_t *r);
/* 0 or SL_EPARSE (truncated, wrong version). */
int q_msg_decode(const void *p, size_t len, q_msg_rec_t *r);
int q_rcpt_decode(const void *p, size_t len, q_rcpt_rec_t *r);

/* ------------------------------------------------------------ accounting */

typedef struct q_acct q_acct_t;

/* Open (mkdir -p dir, append to dir/acct.jsonl and/or dir/acct.csv as
 * format - log.accounting_format: "jsonl", "pmta-csv" or "both" - says;
 * hdrs: the CSV's header_* columns, borrowed for the handle's life).
 * Queue thread (or main before it starts). */
int q_acct_open(const char *dir, uint64_t max_size, const char *format, char **hdrs, q_acct_t **out,
                char *err, size_t errlen);
/* pmtacsv.c: PowerMTA accounting CSV (docs/events.md). The header line;
 * the rows of the JSON record lines in [lines, lines+len) (records
 * PowerMTA has no letter for are left out). Any thread. */
void q_pmta_csv_header(buf_t *b, char **hdrs);
void q_pmta_csv_rows(buf_t *b, const char *lines, size_t len, char **hdrs);
void q_acct_close(q_acct_t *a);
/* The buffer records are built in; q_acct_flush writes it with one
 * write(2) and rotates when the file grew past max_size. */
buf_t *q_acct_buf(q_acct_t *a);
void q_acct_flush(q_acct_t *a);
/* Rotate (acct.c's header): rename acct.jsonl to
 * acct-YYYYmmddTHHMMSS[-N].jsonl and open a new one, or reopen the path
 * when the file was moved away, or nothing when it is empty. 0, or -errno;
 * what happened (or went wrong) in msg either way. */
int q_acct_rotate(q_acct_t *a, char *msg, size_t msglen);
/* QREQ_ROTATE: q_acct_rotate with the outcome in r (qq_result
 * {"accounting": what happened}, or qq_error). */
void q_acct_rotate_req(q_acct_t *a, queue_req_t *r);

/* mkdir -p; 0 or -errno. */
int q_mkdir_p(const char *path, mode_t mode);

/* JSON helpers for the hot path (no json-c). */
void q_json_str(buf_t *b, const char *s, size_t len);      /* "escaped" */
void q_json_strz(buf_t *b, const char *s);                 /* NULL -> null */
void q_json_opt(buf_t *b, const char *s, size_t len);      /* NULL or "" -> null */
void q_json_optz(buf_t *b, const char *s);                 /* NULL or "" -> null */
void q_json_code(buf_t *b, int code);                      /* 0 -> null */
void q_json_time(buf_t *b, uint64_t us);                   /* "2026-11-27T07:00:00.123Z" */
void q_json_time_s(buf_t *b, uint64_t unix_s);             /* 0 -> null */
struct json_object *q_jstr_opt(const char *s, size_t len); /* json-c forms of the same */
struct json_object *q_jcode(int code);
struct json_object *q_jtime_s(uint64_t unix_s);

/* ------------------------------------------------------------ the queue */

/* In-flight set entry: open addressing keyed by (msgid, idx). */
typedef struct q_flight {
    uint64_t f_msgid; /* 0 = empty */
    uint32_t f_idx;
    uint32_t f_tomb; /* 1 = deleted slot */
    struct q_dom *f_dom;
    uint64_t f_bytes; /* the dispatch's body, charged to its first recipient */
} q_flight_t;

/* Per-domain in-flight counter. */
typedef struct q_dom {
    struct q_dom *d_next;
    uint32_t d_hash;
    int d_active;
    char d_name[];
} q_dom_t;

struct queue {
    cfg_t *q_cfg;
    MDB_env *q_env;
    MDB_dbi q_dbi_msg, q_dbi_rcpt, q_dbi_due, q_dbi_meta;
    struct q_admin *q_admin;             /* operator requests in progress (admin.c), queue thread */
    struct q_holds *q_holds;             /* delivery holds (holds.c), queue thread */
    struct q_supp *q_supp;               /* the suppression list (suppress.c) */
    pthread_rwlock_t q_map_lock;         /* readers of other threads (suppression lookups) hold it
                                            shared; q_map_grow exclusive: mdb_env_set_mapsize wants
                                            no transaction open in the process */
    MDB_dbi q_dbi_tlsrpt;                /* TLSRPT counters (tlsrpt.c) */
    MDB_dbi q_dbi_dsn;                   /* DSN marks: what a DSN will say (dsn.c) */
    uint64_t q_dsn_swept;                /* mono us of the last sweep (outcome.c), queue thread */
    uint64_t q_started_us;               /* unix us: marks older were left by a crash */
    MDB_dbi q_dbi_sent;                  /* the sent index (suppress_sent.c) */
    struct q_tlsrpt *q_tlsrpt;           /* counters not yet written (tlsrpt.c), queue thread */
    struct q_tlsrpt_send *q_tlsrpt_send; /* reports being sent (tlsrpt_send.c) */
    uint64_t q_map_size;
    unsigned q_psize;
    char q_path[1024];
    queue_stats_t q_stats;

    /* thread */
    pthread_t q_thread;
    pthread_t q_tid; /* the queue thread, for Q_ASSERT_QUEUE_THREAD */
    bool q_started;
    uv_loop_t q_loop;
    chan_t *q_ch_sub;    /* queue_msg_in_t */
    chan_t *q_ch_req;    /* queue_req_t */
    chan_t *q_ch_out;    /* queue_outcome_t */
    chan_t *q_ch_acct;   /* queue_acct_event records */
    chan_t *q_ch_tlsrpt; /* queue_tlsrpt_note events */
    uv_async_t q_wake;
    uv_timer_t q_timer; /* periodic scan */
    uv_timer_t q_kick;  /* one-shot scan soon after new work */
    uint64_t q_last_scan_us;
    atomic_int q_stopping;
    atomic_int q_users; /* producers inside queue_submit & co. */
    atomic_int q_rotate;
    pthread_mutex_t q_cfg_lock; /* guards q_cfg_next */
    cfg_t *q_cfg_next;          /* a reloaded config for the queue thread to take */
    atomic_int q_high_water;    /* spool.high_water, read by reception threads */

    q_acct_t *q_acct;
    struct q_events *q_ev; /* the event stream and its webhooks (events.c), or NULL */

    /* group commit (queue.c), queue thread: what the channels handed over,
     * written in one transaction per loop iteration by q_commit_check; and
     * the committed submissions whose 250 waits for the next data sync
     * (spool.sync = fsync runs LMDB with MDB_NOMETASYNC: "Group commit" in
     * queue.c) */
    uv_check_t q_commit_check;
    uv_idle_t q_commit_idle;
    chan_node_t *q_sub_head, *q_sub_tail;
    chan_node_t *q_out_head, *q_out_tail;
    chan_node_t *q_ack_head, *q_ack_tail;
    struct outcome_ctx *q_octx; /* outcome.c's batch state */

    /* scratch, queue thread */
    buf_t q_scratch;
    buf_t q_scratch2;
    buf_t q_scratch_hdr; /* q_insert_msg's header capture */
    uint64_t q_rand;

    /* scheduler, queue thread */
    queue_dispatch_fn q_dispatch;
    void *q_dispatch_arg;
    q_flight_t *q_flight;
    size_t q_flight_cap;  /* power of two */
    size_t q_flight_n;    /* live entries */
    size_t q_flight_used; /* live + tombstones */
    q_dom_t **q_doms;
    size_t q_doms_cap;
    struct q_round **q_rounds; /* rounds by msgid (hash chains) */
    size_t q_rounds_cap, q_rounds_n;
    int q_active_total;
    uint64_t q_active_bytes; /* bodies in flight (f_bytes summed), queue.active_size */
    uint64_t q_as_cap;       /* queue.active_size capped under ulimit -v */
    uint64_t q_as_when;      /* clock_mono_us() of the last look at the limit */
    bool q_scan_resume;
    uint8_t q_scan_key[Q_DUE_KEY_LEN];
    bool q_scan_soon;
};

/* Debug builds check that queue-thread-only code runs there. */
#define Q_ASSERT_QUEUE_THREAD(q) SL_ASSERT_ON_THREAD((q)->q_tid)

/* ------------------------------------------------------------ spool (spool.c) */

/* Grow the map (doubling up to max_size) after MDB_MAP_FULL. 0 when grown,
 * SL_EFULL at the maximum. Queue thread, no transaction open. */
int q_map_grow(queue_t *q);
/* Refresh qs_used / qs_fill_pct / qs_map_size. */
void q_stats_refresh(queue_t *q);
/* Run the integrity check inside txn; returns a json object (caller puts). */
struct json_object *q_check_txn(queue_t *q, MDB_txn *txn, bool *ok);
/* Insert a message (msg + rcpt + due records) inside a write txn. */
int q_insert_msg(queue_t *q, MDB_txn *txn, const queue_msg_in_t *m);
/* Does message id still have a recipient record (in txn)? */
int q_msg_has_rcpts(queue_t *q, MDB_txn *txn, uint64_t id, bool *more);
/* The lower-cased domain of addr (after its last '@') into dst (dlen
 * bytes, NUL-terminated; "" without an '@'); returns its length. */
size_t q_addr_domain(const char *addr, size_t len, char *dst, size_t dlen);

/* Message ids (msgid.c): ids never go below id from now on (queue_open:
 * the last message a previous run left in the spool). Any thread. */
void q_msgid_seen(uint64_t id);

/* ------------------------------------------------------------ holds (holds.c) */

typedef struct q_holds q_holds_t;

/* The scheduler's one question. With addr: is this recipient held - its
 * domain (after the last '@' of addr) or its message's job suspended, or
 * every delivery? Without (addr NULL): is every delivery held (`suspend
 * --all`)? The scan asks that first, once per scan, and the holds whose
 * time is up are dropped then. Loads the persisted holds on first use; costs
 * a load and a compare when nothing is suspended. Queue thread. */
bool q_holds_held(queue_t *q, const char *addr, size_t addr_len, const char *job, size_t job_len);
/* QUEUES: is domain held (a domain hold or `--all`), and until when (0:
 * until resumed)? Queue thread. */
bool q_holds_domain(queue_t *q, const char *domain, uint64_t *until);
/* Every hold as the JSON array of `suspended` (docs/records.md); caller
 * puts. Queue thread. */
struct json_object *q_holds_json(queue_t *q);
/* QREQ_SUSPEND / QREQ_RESUME / QREQ_HOLDS: change or list the holds (and
 * save them in the meta db); the answer in r->qq_result or r->qq_error.
 * q_holds_resume returns how many holds it removed: the caller rescans.
 * Queue thread. */
void q_holds_suspend(queue_t *q, queue_req_t *r);
int q_holds_resume(queue_t *q, queue_req_t *r);
void q_holds_list(queue_t *q, queue_req_t *r);
/* Free the holds in memory (they stay in the spool). Main thread, after
 * the queue thread has ended. */
void q_holds_free(queue_t *q);

/* ------------------------------------------------------------ scheduler (sched.c) */

/*
 * A message with recipients in flight: sched.c keeps one per message from
 * its first dispatched recipient until its last one is released
 * (q_flight_del). Its delivery round lasts that long: outcome.c holds the
 * outcomes a DSN reports (bounced, expired, relayed) on it, their
 * recipients kept in flight, and applies them together - one DSN - in the
 * batch that brings back the last of the others.
 */
typedef struct q_round {
    struct q_round *r_next; /* hash chain (sched.c) */
    uint64_t r_msgid;
    int r_inflight; /* recipients in flight (sched.c: their flight entries) */
    /* outcome.c's */
    uint64_t r_gen;            /* the batch r_seen and r_ends are about */
    int r_seen;                /* outcomes of this message in that batch */
    bool r_ends;               /* the round ends with that batch */
    struct q_round *r_touched; /* the next round that batch touched */
} q_round_t;

/* Every function of sched.c runs on the queue thread. */
void q_sched_init(queue_t *q);
/* Frees the in-flight set, the domain counters and the rounds (with any
 * outcome still held). Main thread, after the queue thread has ended. */
void q_sched_free(queue_t *q);
void q_sched_scan(queue_t *q);
/* Scan soon (now, or within Q_KICK_MIN_US of the last scan). */
void q_sched_kick(queue_t *q);
/* True while (msgid, idx) is in flight (dispatched, no outcome yet). */
bool q_sched_in_flight(queue_t *q, uint64_t id, uint32_t idx);
/* Release (msgid, idx) from flight: its domain's counter, the bytes it
 * charged, and its round when it was the last (nothing may be held on it
 * then). Nothing when it is not in flight. */
void q_flight_del(queue_t *q, uint64_t id, uint32_t idx);
/* The round of message id, or NULL when none of its recipients is in
 * flight. */
q_round_t *q_round_find(queue_t *q, uint64_t id);
/* Call fn on every round. fn must not add or drop rounds. */
void q_rounds_foreach(queue_t *q, void (*fn)(q_round_t *r, void *arg), void *arg);

/* ------------------------------------------------------------ outcomes (outcome.c) */

/* Every function of outcome.c runs on the queue thread, but
 * q_outcomes_init (queue_open) and q_outcomes_free (queue_free): main
 * thread, while the queue thread does not run. */
void q_outcomes_init(queue_t *q);
void q_outcomes_free(queue_t *q);
/* Outcomes in their own write transactions, durable before return; frees
 * them. */
void q_outcomes_process(queue_t *q, chan_node_t *first);
/* The two halves of q_outcomes_process, for a transaction shared with
 * submissions: apply n outcomes (and the DSNs they cause) inside txn, 0 or
 * an LMDB error; then, after the commit (or the abort), count them, queue
 * their accounting records (committed only; the caller flushes) and
 * release their in-flight entries (frees the outcomes). */
int q_outcomes_apply(queue_t *q, MDB_txn *txn, chan_node_t *first, size_t n);
void q_outcomes_done(queue_t *q, chan_node_t *first, size_t n, bool committed);
/* The DSNs that are due from their marks (dsn.c), in their own
 * transactions: every one with all (start-up, stop), else those of
 * messages whose round is over, that waited queue.dsn_max_delay, or that
 * a crash left; at most once a second. */
void q_outcomes_sweep(queue_t *q, bool all);
/* The queue is stopping: every DSN marked is built now. */
void q_outcomes_stop(queue_t *q);
/* Delay in seconds before the next attempt after `attempts` attempts. */
uint64_t q_retry_delay(queue_t *q, uint32_t attempts);

/* A reply a server gave (not sluice's own diagnostic, which has no MX
 * host: route failures, local failures, connections that failed). */
static inline bool q_outcome_is_reply(const queue_outcome_t *o)
{
    return o->qo_code != 0 && o->qo_mx != NULL && o->qo_mx[0] != '\0';
}

/* ------------------------------------------------------------ events (events.c) */

/* Without events.webhooks none of these does anything (q->q_ev NULL). */
/* Open the `events` and `evcursor` dbs in queue_open's txn, find the
 * sequence and the cursors again. 0 or SL_ESPOOL (err set). Main thread. */
int q_events_open(queue_t *q, MDB_txn *txn, char *err, size_t errlen);
/* Start / stop the webhook thread (stop: before the queue thread stops,
 * so that its last cursors go into the queue's last commit). Main thread. */
int q_events_start(queue_t *q);
void q_events_stop(queue_t *q);
void q_events_free(queue_t *q);
/* The queue thread's write transactions that carry the event stream
 * (submissions, outcomes): one transaction with the stream's part around
 * fn's writes (the records waiting, the cursors that moved, trimming
 * before; the sequence's high mark last), committed; on MDB_MAP_FULL the
 * map grows and it starts over. 0 or an LMDB error (then nothing of it
 * was written). Queue thread. */
typedef int (*q_write_fn)(queue_t *q, MDB_txn *txn, void *arg);
int q_events_write(queue_t *q, q_write_fn fn, void *arg);
/* Record lines (the outcomes' own) into the stream, inside fn's
 * transaction. 0 or an LMDB error. */
int q_events_put(queue_t *q, MDB_txn *txn, const char *lines, size_t len);
/* Is there something for a transaction of its own (records waiting, a
 * cursor moved)? */
bool q_events_want_txn(const queue_t *q);
/* A record that is not an outcome (lines end with '\n'): to the
 * accounting log's buffer, and to the stream with the next commit.
 * Queue thread. */
void q_record_emit(queue_t *q, const char *lines, size_t len);

/* ------------------------------------------------------------ DSNs (dsn.c) */

/* The DSNs one batch of outcomes creates; queue thread. */
typedef struct q_dsns q_dsns_t;
q_dsns_t *q_dsns_new(void);
void q_dsns_free(q_dsns_t *dl);
/* Report recipient rr of message id (mr, whose body is read here: call it
 * before the txn writes) in its message's DSN: failed (bounced, or
 * expired), or relayed. */
void q_dsns_add(q_dsns_t *dl, uint64_t id, const q_msg_rec_t *mr, const q_rcpt_rec_t *rr,
                const queue_outcome_t *o, bool relayed, bool expired);
/* Insert each DSN as a new message from <> to the sender inside txn; 0 or
 * an LMDB error. *inserted counts the messages (one recipient each). */
int q_dsns_insert(queue_t *q, MDB_txn *txn, q_dsns_t *dl, uint64_t now_us, int *inserted);
/* Forget the DSNs (the batch was committed or aborted). */
void q_dsns_reset(q_dsns_t *dl);
/* The durable marks (the `dsn` sub-db, key message id + recipient index):
 * what the DSN will say of recipient idx (rr, o), written in the outcome's
 * txn; the message record stays while its message has marks. 0 or an
 * LMDB error. */
int q_dsn_mark(queue_t *q, MDB_txn *txn, uint64_t id, uint32_t idx, const q_rcpt_rec_t *rr,
               const queue_outcome_t *o, bool relayed, bool expired, uint64_t now_us);
/* Does message id have marks? (spool.c: q_check_txn asks too) */
int q_dsn_marked(queue_t *q, MDB_txn *txn, uint64_t id, bool *marked);
/* Message id's marks into dl (one DSN), deleted; its message record goes
 * too when it has no recipient left (*gone = true). 0 or an LMDB error. */
int q_dsn_flush(queue_t *q, MDB_txn *txn, q_dsns_t *dl, uint64_t id, bool *gone);
/* The messages with marks, up to max: ids[i] and the time of its oldest
 * mark (unix us) in oldest[i]; their number in *n. */
int q_dsn_list(queue_t *q, MDB_txn *txn, uint64_t *ids, uint64_t *oldest, int max, int *n);

/* ------------------------------------------------------------ TLSRPT (tlsrpt.c) */

/* One TLS session's result (result "" or NULL: it succeeded) at unix_s,
 * counted in memory until the next q_tlsrpt_flush. Queue thread. */
void q_tlsrpt_add(queue_t *q, uint64_t unix_s, const char *dom, const char *ptype,
                  const char *result, const char *reason, const char *mx, const char *ip);
/* Write the counters gathered since the last flush (one write txn; none
 * when there is nothing). Queue thread, no transaction open. */
void q_tlsrpt_flush(queue_t *q);
void q_tlsrpt_free(queue_t *q);
/* "YYYY-MM-DD" of unix_s, UTC. */
void q_tlsrpt_day(uint64_t unix_s, char day[11]);
/* A key's seven parts (day, domain, policy type, result, MX, IP, reason). */
#define Q_TLSRPT_PARTS 7
bool q_tlsrpt_split(const MDB_val *k, const char *parts[Q_TLSRPT_PARTS],
                    size_t lens[Q_TLSRPT_PARTS]);
/* The counters of day (and of domain only, unless NULL) as a JSON array
 * [{domain, policies:[{policy_type, successful, failed, failures:[{
 * result_type, receiving_mx_hostname, receiving_ip, failure_reason,
 * count}]}]}]. */
struct json_object *q_tlsrpt_json(queue_t *q, MDB_txn *txn, const char *day, const char *domain);

/* ------------------------------------------------------------ TLSRPT reports (tlsrpt_send.c) */

/* Send the pending reports: every (day, domain) counted before today -
 * once per day unless now - and with now today's too. Returns how many
 * reports were started. Queue thread. */
int q_tlsrpt_send(queue_t *q, bool now);
/* Close the resolver and HTTP client (stop) / free the state (free). */
void q_tlsrpt_send_stop(queue_t *q);
void q_tlsrpt_send_free(queue_t *q);
/* RFC 8460 3: the mailto: and https: URIs of a "v=TLSRPTv1; rua=..." TXT
 * record (at most 8; other schemes left out). 0 and an owned array
 * (q_tlsrpt_uris_free), or SL_EPARSE (not a TLSRPT record, no usable URI).
 * Pure, any thread. */
int q_tlsrpt_txt_parse(const char *txt, char ***uris, int *n);
void q_tlsrpt_uris_free(char **uris, int n);
/* The RFC 8460 4.4 report of (day, domain), from the counters in txn,
 * the date range from the day's start to end_s. Caller puts. */
struct json_object *q_tlsrpt_report(queue_t *q, MDB_txn *txn, const char *day, const char *domain,
                                    uint64_t end_s, const char *report_id);

/* ------------------------------------------------------------ operator requests (admin.c) */

/* Take an operator request (QREQ_QUEUES and after). Returns false for the
 * other types (queue.c answers them). When it returns true, admin.c owns
 * the request until it pushes it back onto qq_reply (at once for the short
 * ones, after the last chunk for QUEUES / RETRY / BOUNCE). Queue thread. */
bool q_admin_request(queue_t *q, queue_req_t *r);
/* The queue is stopping: answer every request still in progress with
 * "queue is stopping", close admin.c's handle and free its state. Called
 * after the request channel has been drained. Queue thread. */
void q_admin_stop(queue_t *q);

/* ------------------------------------------------------------ suppression list (suppress.c) */

/* Open (create) the `suppress` sub-database inside queue_open's txn. 0 or
 * an LMDB error. Main thread. */
int q_supp_open(queue_t *q, MDB_txn *txn);
/* After the environment is closed. Main thread. */
void q_supp_free(queue_t *q);
/* A synchronous bounce applied in txn: add the recipient when its category
 * is one of suppression.categories, in the scope hscope (the message's
 * suppression.scope_header value, read from its body before the txn's
 * writes; NULL or "" for none), else by suppression.scope. 0 or an LMDB
 * error. Queue thread. */
int q_supp_on_bounce(queue_t *q, MDB_txn *txn, uint64_t msgid, uint32_t idx, const q_msg_rec_t *mr,
                     const q_rcpt_rec_t *rr, const char *category, const char *hscope);
/* The scope a message's recipients are suppressed in, into dst: the
 * header's tenant (suppression.scope_header, hscope), else the AUTH
 * user's (suppression.scope = auth_user), else global (""). Any thread. */
void q_supp_scope_of(const cfg_t *c, const char *hscope, const char *auth, size_t auth_len,
                     char *dst, size_t dlen);
/* The sent index (suppress_sent.c): with bounces.inbound, note message
 * m's recipients and Message-ID in its own insert transaction, for
 * matching reports without a VERP token; and drop a few expired entries.
 * 0 or an LMDB error. Queue thread. */
int q_sent_note(queue_t *q, MDB_txn *txn, const queue_msg_in_t *m);
/* QREQ_SUPPRESS: answers r and pushes it back onto qq_reply (or frees it
 * when there is none: queue_supp_report's). Queue thread. */
void q_supp_request(queue_t *q, queue_req_t *r);

#endif /* SLUICE_QUEUE_INT_H */
