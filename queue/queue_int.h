/*
 * queue/queue_int.h - private to queue/: the queue handle, spool record
 * encodings (see docs/spool.md), the accounting log and the scheduler.
 * Nothing outside queue/ includes this.
 */
#ifndef SLUICE_QUEUE_INT_H
#define SLUICE_QUEUE_INT_H

#include "queue/queue.h"

#include <assert.h>
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
    const char *mr_body;
    uint32_t mr_body_len;
} q_msg_rec_t;

#define Q_MSG_PENDING_OFF 14 /* offset of the pending count (u32 BE) */

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

/* Open (mkdir -p dir, append to dir/acct.jsonl). Queue thread (or main
 * before it starts). */
int q_acct_open(const char *dir, uint64_t max_size, q_acct_t **out, char *err, size_t errlen);
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
    struct q_admin *q_admin; /* operator requests and holds (admin.c), queue thread */
    uint64_t q_map_size;
    unsigned q_psize;
    char q_path[1024];
    queue_stats_t q_stats;

    /* thread */
    pthread_t q_thread;
    pthread_t q_tid; /* the queue thread, for Q_ASSERT_QUEUE_THREAD */
    bool q_started;
    uv_loop_t q_loop;
    chan_t *q_ch_sub;  /* queue_msg_in_t */
    chan_t *q_ch_req;  /* queue_req_t */
    chan_t *q_ch_out;  /* queue_outcome_t */
    chan_t *q_ch_acct; /* queue_acct_event records */
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
    struct outcome_ctx *q_octx; /* sched.c's outcome batch state */

    /* scratch, queue thread */
    buf_t q_scratch;
    buf_t q_scratch2;
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

/* Scheduler (sched.c), queue thread. */
void q_sched_init(queue_t *q);
void q_sched_free(queue_t *q);
void q_sched_scan(queue_t *q);
/* Scan soon (now, or within Q_KICK_MIN_US of the last scan). */
void q_sched_kick(queue_t *q);
void q_outcomes_process(queue_t *q, chan_node_t *first);
/* The two halves of q_outcomes_process, for a transaction shared with
 * submissions: apply n outcomes (and the DSNs they cause) inside txn, 0 or
 * an LMDB error; then, after the commit (or the abort), count them, queue
 * their accounting records (committed only; the caller flushes) and
 * release their in-flight entries (frees the outcomes). */
int q_outcomes_apply(queue_t *q, MDB_txn *txn, chan_node_t *first, size_t n);
void q_outcomes_done(queue_t *q, chan_node_t *first, size_t n, bool committed);
/* The queue is stopping: the outcomes held for their message's DSN
 * (delivery rounds, sched.c) are applied now, in their own transaction. */
void q_sched_stop(queue_t *q);
uint64_t q_retry_delay(queue_t *q, uint32_t attempts);

#endif /* SLUICE_QUEUE_INT_H */
