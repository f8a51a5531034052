/*
 * queue/outcome.c - what a delivery attempt's outcome does to the spool.
 *
 *   q_outcomes_apply    outcomes -> spool writes inside a write txn: remove
 *                       the recipient (delivered, bounced, expired) or
 *                       reschedule it (deferred), accounting records, DSNs
 *   q_outcomes_done     after the commit: counters, accounting log, release
 *                       the recipients from flight
 *   q_outcomes_process  outcomes in their own transactions (operator
 *                       bounces, the fallback of a shared txn that failed)
 *   q_outcomes_sweep    DSNs whose round is over, or waited too long, or that a
 *                       crash left (the periodic scan, start-up, stop)
 *   q_outcomes_stop     the queue stops: every DSN marked is built
 *   q_retry_delay       the retry schedule
 *
 * Every outcome is applied at once, its record with it (Postfix's way):
 * one that a DSN will report (bounced, expired, relayed) also leaves a
 * durable mark in the same transaction (dsn.c), and its message record
 * stays while it has marks. The message's one DSN is built from its marks
 * when its delivery round (sched.c) ends - no recipient of it left in
 * flight -, in that batch's transaction; a message that keeps cycling gets
 * it after queue.dsn_max_delay (q_outcomes_sweep), and marks a crash left
 * are built at the next start.
 *
 * Calls sched.c (the in-flight set and its rounds), dsn.c, acct.c, spool.c,
 * msgid.c and chanmsg.c; queue.c and admin.c call here.
 * Thread: queue thread only (queue_lat_bounds is read-only data).
 */
#include "queue/queue_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Outcome marks (queue_outcome_t.qo_sched). */
#define Q_OS_MARKED 0x01 /* its DSN mark was written: the DSN is due when ready */
#define Q_SWEEP_MAX 256  /* messages whose DSN a sweep transaction builds, at most */

/* The batch being applied (q->q_octx). */
typedef struct outcome_ctx {
    q_dsns_t *dsns;          /* the DSNs the batch creates */
    int64_t d_msgs, d_rcpts; /* change of the spool's counts, once committed */
    buf_t acct;              /* its accounting records, written once committed */
    uint64_t gen;            /* the batch: rounds it touched have r_gen == gen */
    q_round_t *touched;
    bool closing; /* q_outcomes_stop: every DSN is built at once */
} outcome_ctx_t;

/* What an outcome makes of its recipient. */
typedef struct fate {
    const char *f_type;     /* accounting record type */
    const char *f_status;   /* enhanced status code */
    const char *f_category; /* bounce category */
    uint64_t f_next;        /* deferred: the next attempt (unix s); 0 = final */
    bool f_expired;
} fate_t;

static int outcome_apply(queue_t *q, MDB_txn *txn, queue_outcome_t *o, uint64_t now_us,
                         outcome_ctx_t *cx);
static void outcome_fate(queue_t *q, const queue_outcome_t *o, const q_msg_rec_t *mr,
                         const q_rcpt_rec_t *rr, uint64_t now, fate_t *f);
static int outcome_write(queue_t *q, MDB_txn *txn, outcome_ctx_t *cx, const queue_outcome_t *o,
                         const q_rcpt_rec_t *rr, uint64_t next);
static void outcome_note(queue_t *q, const char *type, uint64_t queued_us);

/* microseconds: 50 ms .. 1 day (docs/operations.md) */
const uint64_t queue_lat_bounds[Q_LAT_NBUCKETS] = {
    50000ull,      100000ull,      250000ull,      500000ull,    1000000ull,   5000000ull,
    10000000ull,   30000000ull,    60000000ull,    300000000ull, 900000000ull, 1800000000ull,
    3600000000ull, 14400000000ull, 86400000000ull, UINT64_MAX,
};

void q_outcomes_init(queue_t *q)
{
    SL_ASSERT_MAIN_THREAD();
    q->q_octx = xcalloc(1, sizeof(outcome_ctx_t));
    q->q_octx->dsns = q_dsns_new();
    buf_init(&q->q_octx->acct, 4096);
}

void q_outcomes_free(queue_t *q)
{
    SL_ASSERT_MAIN_THREAD();
    outcome_ctx_t *cx = q->q_octx;
    if (cx == NULL)
        return;
    q_dsns_free(cx->dsns);
    buf_free(&cx->acct);
    free(cx);
    q->q_octx = NULL;
}

/* ------------------------------------------------------------ retry policy */

static uint64_t q_rand_next(queue_t *q)
{
    uint64_t x = q->q_rand;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    q->q_rand = x;
    return x;
}

/* Delay before the next attempt after `attempts` attempts (>= 1): the
 * explicit list (the last value repeats) as given, or the exponential
 * default (retry_initial doubling, clamped at retry_max) with +/- jitter
 * percent so that a burst of deferrals does not come back as one burst. */
uint64_t q_retry_delay(queue_t *q, uint32_t attempts)
{
    const cfg_t *c = q->q_cfg;
    if (attempts == 0)
        attempts = 1;
    if (c->c_retry_n > 0)
        return c->c_retry[MIN((int)attempts - 1, c->c_retry_n - 1)];
    uint64_t d = c->c_retry_initial ? c->c_retry_initial : 300;
    uint64_t max = c->c_retry_max ? c->c_retry_max : 4 * 3600;
    for (uint32_t i = 1; i < attempts && d < max; i++)
        d *= 2;
    if (d > max)
        d = max;
    if (c->c_retry_jitter > 0) {
        uint64_t span = d * (uint64_t)c->c_retry_jitter / 100;
        if (span > 0) {
            uint64_t r = q_rand_next(q) % (2 * span + 1);
            d = d - span + r;
        }
    }
    return d ? d : 1;
}

/* ------------------------------------------------------------ one outcome */

/* The RFC 3464 2.3.3 action a DSN would give this record's recipient, as
 * PowerMTA's dsnAction does: a delivery to the next hop is "relayed" (the
 * receiving MTA, not sluice, knows about the mailbox), a deferral
 * "delayed", every final failure "failed". */
static const char *acct_dsn_action(const char *type)
{
    switch (type[0]) {
    case 'd':
        return "relayed";
    case 't':
        return "delayed";
    default: /* bounce, expired, admin_bounce */
        return "failed";
    }
}

/* One outcome record. Every key is always there, in one form per kind of
 * field (docs/records.md): null for what does not apply (no MX reached, no
 * TLS, no reply code, no next attempt), never "" or 0. */
static void acct_outcome(buf_t *b, const char *type, uint64_t now_us, uint64_t id,
                         const q_msg_rec_t *mr, const q_rcpt_rec_t *rr, const char *domain,
                         const queue_outcome_t *o, const char *status, const char *category,
                         uint64_t next)
{
    char idbuf[17];
    buf_printf(b, "{\"type\":\"%s\",\"time\":", type);
    q_json_time(b, now_us);
    buf_append_str(b, ",\"msgid\":\"");
    buf_append(b, queue_msgid_fmt(id, idbuf), 16);
    buf_append_str(b, "\",\"job\":");
    q_json_opt(b, mr->mr_job, mr->mr_job_len);
    buf_append_str(b, ",\"dsn_for\":"); /* a DSN: the message (and job) it reports */
    if (mr->mr_flags & Q_F_DSN) {
        buf_append_str(b, "{\"msgid\":\"");
        buf_append(b, queue_msgid_fmt(mr->mr_dsn_for, idbuf), 16);
        buf_append_str(b, "\",\"job\":");
        q_json_opt(b, mr->mr_dsn_job, mr->mr_dsn_job_len);
        buf_append_str(b, "}");
    } else {
        buf_append_str(b, "null");
    }
    buf_append_str(b, ",\"sender\":");
    q_json_str(b, mr->mr_sender ? mr->mr_sender : "", mr->mr_sender_len);
    buf_append_str(b, ",\"recipient\":");
    q_json_str(b, rr->rr_addr, rr->rr_addr_len);
    buf_append_str(b, ",\"domain\":");
    q_json_optz(b, domain);
    buf_append_str(b, ",\"mx\":");
    q_json_optz(b, o->qo_mx);
    buf_append_str(b, ",\"mx_ip\":");
    q_json_optz(b, o->qo_mx_ip);
    buf_append_str(b, ",\"src_ip\":");
    q_json_optz(b, o->qo_src_ip);
    buf_append_str(b, ",\"tls\":");
    q_json_optz(b, o->qo_tls);
    buf_append_str(b, ",\"cipher\":");
    q_json_optz(b, o->qo_cipher);
    buf_append_str(b, ",\"mta_sts\":");
    q_json_optz(b, o->qo_mta_sts);
    buf_append_str(b, ",\"tls_policy\":");
    q_json_optz(b, o->qo_tls_policy);
    buf_append_str(b, ",\"tls_failure\":");
    q_json_optz(b, o->qo_tls_failure);
    uint64_t now_s = now_us / 1000000;
    buf_printf(b, ",\"attempt\":%u,\"queued_seconds\":%llu,\"code\":", rr->rr_attempts + 1,
               (unsigned long long)(now_s > mr->mr_arrival ? now_s - mr->mr_arrival : 0));
    q_json_code(b, o->qo_code);
    buf_append_str(b, ",\"status\":");
    q_json_optz(b, status);
    buf_append_str(b, ",\"text\":");
    q_json_optz(b, o->qo_text);
    buf_append_str(b, ",\"category\":");
    q_json_optz(b, category);
    buf_append_str(b, ",\"next_attempt\":");
    q_json_time_s(b, next);
    buf_append_str(b, ",\"vmta\":");
    q_json_optz(b, o->qo_vmta);
    buf_append_str(b, ",\"pool\":");
    q_json_optz(b, o->qo_pool);
    buf_append_str(b, ",\"provider\":");
    q_json_optz(b, o->qo_provider);
    buf_printf(b, ",\"size\":%u,\"arrival\":", mr->mr_body_len);
    q_json_time_s(b, mr->mr_arrival);
    buf_append_str(b, ",\"message_id\":");
    q_json_opt(b, mr->mr_hdr_msgid, mr->mr_hdr_msgid_len);
    buf_append_str(b, ",\"envid\":");
    q_json_opt(b, mr->mr_envid, mr->mr_envid_len);
    buf_append_str(b, ",\"orcpt\":");
    q_json_opt(b, rr->rr_orcpt, rr->rr_orcpt_len);
    buf_printf(b, ",\"txn_recipients\":%u,\"dsn_action\":\"%s\",\"headers\":", o->qo_txn_rcpts,
               acct_dsn_action(type));
    if (mr->mr_hdrs_len >= 2) /* a JSON object q_insert_msg wrote */
        buf_append(b, mr->mr_hdrs, mr->mr_hdrs_len);
    else
        buf_append_str(b, "{}");
    buf_append_str(b, "}\n");
}

/* A DSN for this recipient's failure (RFC 3461 4.1: FAILURE when NOTIFY
 * was not given), never for the null sender. */
static bool dsn_wanted(queue_t *q, const q_msg_rec_t *mr, const q_rcpt_rec_t *rr)
{
    if (!q->q_cfg->c_dsn || mr->mr_sender_len == 0)
        return false; /* never bounce a bounce */
    if (rr->rr_notify == 0)
        return true;
    return (rr->rr_notify & Q_NOTIFY_FAILURE) && !(rr->rr_notify & Q_NOTIFY_NEVER);
}

/* A "relayed" DSN for this delivery (RFC 3461 5.2.2): NOTIFY=SUCCESS, and
 * the next hop did not offer DSN, so nobody after us will report it. */
static bool dsn_relayed_wanted(queue_t *q, const q_msg_rec_t *mr, const q_rcpt_rec_t *rr,
                               const queue_outcome_t *o)
{
    return q->q_cfg->c_dsn && mr->mr_sender_len > 0 && !o->qo_peer_dsn &&
           (rr->rr_notify & Q_NOTIFY_SUCCESS) && !(rr->rr_notify & Q_NOTIFY_NEVER);
}

/* An outcome of the batch being applied: its round (counted as seen in
 * this batch), or NULL when its recipient is not in flight (an operator
 * bounce, a duplicate) or the queue is stopping: applied at once then. */
static q_round_t *round_touch(queue_t *q, outcome_ctx_t *cx, const queue_outcome_t *o)
{
    if (cx->closing || !q_sched_in_flight(q, o->qo_msgid, o->qo_idx))
        return NULL;
    q_round_t *r = q_round_find(q, o->qo_msgid);
    if (r == NULL)
        return NULL;
    if (r->r_gen != cx->gen) {
        r->r_gen = cx->gen;
        r->r_seen = 0;
        r->r_ends = false;
        r->r_touched = cx->touched;
        cx->touched = r;
    }
    r->r_seen++;
    return r;
}

/* The recipient's fate: delivered, deferred to f_next, bounced, or expired
 * (a deferral past queue.max_age), with its record type, status and
 * category. */
static void outcome_fate(queue_t *q, const queue_outcome_t *o, const q_msg_rec_t *mr,
                         const q_rcpt_rec_t *rr, uint64_t now, fate_t *f)
{
    *f = (fate_t){.f_type = "delivery", .f_status = o->qo_status, .f_category = o->qo_category};
    if (o->qo_result == Q_OUT_DEFERRED) {
        uint64_t deadline = mr->mr_arrival + q->q_cfg->c_max_age;
        if (q->q_cfg->c_max_age > 0 && now >= deadline) {
            f->f_expired = true;
        } else {
            f->f_next = now + q_retry_delay(q, rr->rr_attempts + 1);
            if (o->qo_retry_at > f->f_next)
                f->f_next = o->qo_retry_at;
            if (q->q_cfg->c_max_age > 0 && f->f_next > deadline)
                f->f_next = deadline; /* one last try at the deadline, then expire */
            f->f_type = "transient";
        }
    } else if (o->qo_result == Q_OUT_BOUNCED) {
        f->f_type = o->qo_admin ? "admin_bounce" : "bounce";
        if (f->f_category == NULL)
            f->f_category = "other";
    }
    if (f->f_expired) {
        f->f_type = "expired";
        f->f_status = "4.4.7";
        f->f_category = "message-expired";
    }
}

/* The spool writes of one outcome: its due entry goes; a deferred
 * recipient comes back with its next attempt (next), a final one goes with
 * its message when it was the last. */
static int outcome_write(queue_t *q, MDB_txn *txn, outcome_ctx_t *cx, const queue_outcome_t *o,
                         const q_rcpt_rec_t *rr, uint64_t next)
{
    uint8_t mk[Q_MSG_KEY_LEN], rk[Q_RCPT_KEY_LEN], dk[Q_DUE_KEY_LEN];
    MDB_val k, v;
    int rc;
    q_msg_key(mk, o->qo_msgid);
    q_rcpt_key(rk, o->qo_msgid, o->qo_idx);
    q_due_key(dk, rr->rr_next, o->qo_msgid, o->qo_idx);
    k = (MDB_val){Q_DUE_KEY_LEN, dk};
    rc = mdb_del(txn, q->q_dbi_due, &k, NULL);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return rc;

    if (next) {
        q_rcpt_rec_t nr = *rr;
        nr.rr_attempts = rr->rr_attempts + 1;
        nr.rr_next = next;
        /* The last reply a server gave stays, with that server, until
         * another server replies: a local deferral afterwards (destination
         * marked down, connection refused, DNS) does not replace it, so
         * that the DSN at expiry quotes what the receiver said. Without a
         * reply yet, the latest local diagnostic is kept. */
        if (q_outcome_is_reply(o) || rr->rr_code == 0 || rr->rr_mx_len == 0) {
            nr.rr_code = (uint16_t)o->qo_code;
            nr.rr_status = o->qo_status;
            nr.rr_status_len = (uint8_t)strnlen(o->qo_status, sizeof(o->qo_status));
            nr.rr_text = o->qo_text;
            nr.rr_text_len = (uint16_t)(o->qo_text ? MIN(strlen(o->qo_text), Q_TEXT_MAX) : 0);
            nr.rr_mx = q_outcome_is_reply(o) ? o->qo_mx : NULL;
            nr.rr_mx_len = (uint16_t)(nr.rr_mx ? MIN(strlen(nr.rr_mx), 255) : 0);
        }
        buf_t *b = &cx->acct; /* borrow a buffer for the encoding: append then cut */
        size_t mark = b->b_len;
        q_rcpt_encode(b, &nr);
        MDB_val rv = {b->b_len - mark, b->b_data + mark};
        k = (MDB_val){Q_RCPT_KEY_LEN, rk};
        rc = mdb_put(txn, q->q_dbi_rcpt, &k, &rv, 0);
        b->b_len = mark;
        if (rc != 0)
            return rc;
        q_due_key(dk, next, o->qo_msgid, o->qo_idx);
        k = (MDB_val){Q_DUE_KEY_LEN, dk};
        v = (MDB_val){0, ""};
        return mdb_put(txn, q->q_dbi_due, &k, &v, 0);
    }
    /* final: delivered, bounced or expired */
    k = (MDB_val){Q_RCPT_KEY_LEN, rk};
    if ((rc = mdb_del(txn, q->q_dbi_rcpt, &k, NULL)) != 0)
        return rc;
    cx->d_rcpts--;
    bool more;
    if ((rc = q_msg_has_rcpts(q, txn, o->qo_msgid, &more)) != 0)
        return rc;
    if (!more && (o->qo_sched & Q_OS_MARKED)) /* its DSN returns it: q_dsn_flush removes it */
        return 0;
    if (!more && (rc = q_dsn_marked(q, txn, o->qo_msgid, &more)) != 0)
        return rc;
    if (!more) {
        k = (MDB_val){Q_MSG_KEY_LEN, mk};
        if ((rc = mdb_del(txn, q->q_dbi_msg, &k, NULL)) != 0)
            return rc;
        cx->d_msgs--;
    }
    return 0;
}

/* Apply one outcome inside txn; one a DSN will report leaves its mark
 * (Q_OS_MARKED). Returns 0 or an LMDB error (the whole batch is then
 * retried or dropped). */
static int outcome_apply(queue_t *q, MDB_txn *txn, queue_outcome_t *o, uint64_t now_us,
                         outcome_ctx_t *cx)
{
    uint8_t mk[Q_MSG_KEY_LEN], rk[Q_RCPT_KEY_LEN];
    MDB_val k, v;
    q_msg_rec_t mr;
    q_rcpt_rec_t rr;
    int rc;
    char idbuf[17];

    /* Copies: records are written below in the same txn, which may move
     * the pages the decoded pointers point into. Only the msg record's
     * head is copied: its body (up to smtp.max_message_size) is read in
     * place, before the first write, and only for a DSN. The msg record
     * itself is never rewritten: it goes with its last recipient. */
    q_msg_key(mk, o->qo_msgid);
    k = (MDB_val){Q_MSG_KEY_LEN, mk};
    if ((rc = mdb_get(txn, q->q_dbi_msg, &k, &v)) != 0) {
        if (rc != MDB_NOTFOUND)
            return rc;
        log_debug("%s: outcome for a message not in the spool (idx %u)",
                  queue_msgid_fmt(o->qo_msgid, idbuf), o->qo_idx);
        return 0;
    }
    if (q_msg_decode(v.mv_data, v.mv_size, &mr) != 0)
        return 0;
    size_t head = (size_t)(mr.mr_body - (const char *)v.mv_data);
    buf_reset(&q->q_scratch);
    buf_append(&q->q_scratch, v.mv_data, head);
    q_msg_rebase(&mr, v.mv_data, q->q_scratch.b_data); /* the body stays in the map */
    q_rcpt_key(rk, o->qo_msgid, o->qo_idx);
    k = (MDB_val){Q_RCPT_KEY_LEN, rk};
    if ((rc = mdb_get(txn, q->q_dbi_rcpt, &k, &v)) != 0) {
        if (rc != MDB_NOTFOUND)
            return rc;
        log_debug("%s: duplicate outcome for idx %u", queue_msgid_fmt(o->qo_msgid, idbuf),
                  o->qo_idx);
        return 0;
    }
    buf_reset(&q->q_scratch2);
    buf_append(&q->q_scratch2, v.mv_data, v.mv_size);
    if (q_rcpt_decode(q->q_scratch2.b_data, q->q_scratch2.b_len, &rr) != 0)
        return 0;
    char dom[256];
    q_addr_domain(rr.rr_addr, rr.rr_addr_len, dom, sizeof(dom));

    fate_t f;
    outcome_fate(q, o, &mr, &rr, now_us / 1000000, &f);
    bool failed =
        !f.f_next && (o->qo_result == Q_OUT_BOUNCED || f.f_expired) && dsn_wanted(q, &mr, &rr);
    bool relayed = o->qo_result == Q_OUT_DELIVERED && dsn_relayed_wanted(q, &mr, &rr, o);
    if (failed || relayed) { /* for the round's one DSN */
        if ((rc = q_dsn_mark(q, txn, o->qo_msgid, o->qo_idx, &rr, o, relayed, f.f_expired,
                             now_us)) != 0)
            return rc;
        o->qo_sched |= Q_OS_MARKED;
    }
    char hscope[QUEUE_SUPP_SCOPE_MAX + 1] = ""; /* suppression.scope_header: from the body */
    if (o->qo_result == Q_OUT_BOUNCED && q->q_cfg->c_supp_scope_header[0] != '\0' &&
        !queue_supp_header_scope(q->q_cfg, mr.mr_body, mr.mr_body_len, hscope, sizeof(hscope)))
        hscope[0] = '\0';
    mr.mr_body = NULL;
    if ((rc = outcome_write(q, txn, cx, o, &rr, f.f_next)) != 0)
        return rc;
    if (o->qo_result == Q_OUT_BOUNCED && !o->qo_admin && !f.f_expired &&
        (rc = q_supp_on_bounce(q, txn, o->qo_msgid, o->qo_idx, &mr, &rr, f.f_category, hscope)) !=
            0)
        return rc; /* the suppression list (suppress.c) */
    acct_outcome(&cx->acct, f.f_type, now_us, o->qo_msgid, &mr, &rr, dom, o, f.f_status,
                 f.f_category, f.f_next);
    /* the histogram in microseconds: message ids are the reception time in
     * us (queue_msgid_new), mr_arrival only whole seconds */
    uint64_t arr_us = o->qo_msgid;
    if (arr_us / 1000000 + 60 < mr.mr_arrival || arr_us / 1000000 > mr.mr_arrival + 60)
        arr_us = mr.mr_arrival * 1000000; /* not a time-based id (clock moved) */
    outcome_note(q, f.f_type, now_us > arr_us ? now_us - arr_us : 0);
    return 0;
}

/* ------------------------------------------------------------ batches */

/* Build message id's DSN from its marks into cx->dsns (dsn.c). */
static int dsn_build_due(queue_t *q, MDB_txn *txn, outcome_ctx_t *cx, uint64_t id)
{
    bool gone = false;
    int rc = q_dsn_flush(q, txn, cx->dsns, id, &gone);
    if (rc == 0 && gone)
        cx->d_msgs--;
    return rc;
}

int q_outcomes_apply(queue_t *q, MDB_txn *txn, chan_node_t *first, size_t n)
{
    outcome_ctx_t *cx = q->q_octx;
    Q_ASSERT_QUEUE_THREAD(q);
    buf_reset(&cx->acct);
    q_dsns_reset(cx->dsns);
    cx->d_msgs = cx->d_rcpts = 0;
    cx->gen++; /* this call may repeat the previous one (a full map): start afresh */
    cx->touched = NULL;
    uint64_t now_us = clock_now_us();
    int rc = 0;
    chan_node_t *node = first;
    for (size_t i = 0; i < n; i++, node = node->cn_next)
        ((queue_outcome_t *)node)->qo_sched = 0;
    node = first;
    for (size_t i = 0; rc == 0 && i < n; i++, node = node->cn_next) {
        queue_outcome_t *o = (queue_outcome_t *)node;
        round_touch(q, cx, o);
        rc = outcome_apply(q, txn, o, now_us, cx);
    }
    /* The rounds this batch ends: their messages' DSNs, from the marks of
     * this batch and earlier ones, one per message. */
    for (q_round_t *r = cx->touched; rc == 0 && r != NULL; r = r->r_touched) {
        r->r_ends = r->r_inflight - r->r_seen <= 0;
        if (r->r_ends)
            rc = dsn_build_due(q, txn, cx, r->r_msgid);
    }
    /* Marks of messages with no round going on (operator bounces), or
     * every one when the queue stops */
    node = first;
    for (size_t i = 0; rc == 0 && i < n; i++, node = node->cn_next) {
        queue_outcome_t *o = (queue_outcome_t *)node;
        if ((o->qo_sched & Q_OS_MARKED) && (cx->closing || q_round_find(q, o->qo_msgid) == NULL))
            rc = dsn_build_due(q, txn, cx, o->qo_msgid);
    }
    /* DSNs go in the same txn: a new message from <> to the sender */
    if (rc == 0) {
        int made = 0;
        rc = q_dsns_insert(q, txn, cx->dsns, now_us, &made);
        cx->d_msgs += made;
        cx->d_rcpts += made;
    }
    /* the records go into the event stream in the same txn (events.c) */
    if (rc == 0)
        rc = q_events_put(q, txn, cx->acct.b_data, cx->acct.b_len);
    return rc;
}

void q_outcomes_done(queue_t *q, chan_node_t *first, size_t n, bool committed)
{
    outcome_ctx_t *cx = q->q_octx;
    Q_ASSERT_QUEUE_THREAD(q);
    if (committed) {
        atomic_fetch_add_explicit(&q->q_stats.qs_msgs, (uint64_t)cx->d_msgs, memory_order_relaxed);
        atomic_fetch_add_explicit(&q->q_stats.qs_rcpts, (uint64_t)cx->d_rcpts,
                                  memory_order_relaxed);
        buf_append(q_acct_buf(q->q_acct), cx->acct.b_data, cx->acct.b_len);
    }
    cx->touched = NULL;
    /* Not committed: the recipients stay due and are tried again. */
    chan_node_t *node = first;
    for (size_t i = 0; i < n; i++) {
        chan_node_t *next = node->cn_next;
        queue_outcome_t *o = (queue_outcome_t *)node;
        q_flight_del(q, o->qo_msgid, o->qo_idx);
        queue_outcome_free(o);
        node = next;
    }
    buf_reset(&cx->acct);
    q_dsns_reset(cx->dsns);
}

typedef struct sweep {
    bool all;   /* every message with marks (start-up, stop) */
    int listed; /* messages with marks this transaction looked at */
} sweep_t;

/* One sweep transaction: the DSNs due of up to Q_SWEEP_MAX messages. */
static int sweep_write(queue_t *q, MDB_txn *txn, void *arg)
{
    sweep_t *sw = arg;
    outcome_ctx_t *cx = q->q_octx;
    q_dsns_reset(cx->dsns);
    cx->d_msgs = cx->d_rcpts = 0;
    uint64_t ids[Q_SWEEP_MAX], oldest[Q_SWEEP_MAX], now_us = clock_now_us();
    uint64_t wait_us = q->q_cfg->c_dsn_max_delay * 1000000;
    int rc = q_dsn_list(q, txn, ids, oldest, Q_SWEEP_MAX, &sw->listed);
    for (int i = 0; rc == 0 && i < sw->listed; i++) {
        /* a crash left it, its round is over, or it waited long enough */
        if (sw->all || oldest[i] < q->q_started_us || q_round_find(q, ids[i]) == NULL ||
            now_us >= oldest[i] + wait_us)
            rc = dsn_build_due(q, txn, cx, ids[i]);
    }
    if (rc == 0) {
        int made = 0;
        rc = q_dsns_insert(q, txn, cx->dsns, now_us, &made);
        cx->d_msgs += made;
        cx->d_rcpts += made;
    }
    return rc;
}

void q_outcomes_sweep(queue_t *q, bool all)
{
    Q_ASSERT_QUEUE_THREAD(q);
    uint64_t mono = clock_mono_us();
    if (!all && mono - q->q_dsn_swept < 1000000)
        return;
    q->q_dsn_swept = mono;
    outcome_ctx_t *cx = q->q_octx;
    for (int guard = 0; guard < 1000; guard++) {
        MDB_txn *rt;
        MDB_stat st = {0};
        if (mdb_txn_begin(q->q_env, NULL, MDB_RDONLY, &rt) == 0) {
            mdb_stat(rt, q->q_dbi_dsn, &st);
            mdb_txn_abort(rt);
        }
        if (st.ms_entries == 0)
            return; /* the common case: no mark, no write */
        sweep_t sw = {all, 0};
        int rc = q_events_write(q, sweep_write, &sw);
        if (rc == 0 && q->q_cfg->c_spool_sync != CFG_SYNC_NONE)
            rc = mdb_env_sync(q->q_env, 1);
        if (rc == 0) {
            atomic_fetch_add_explicit(&q->q_stats.qs_msgs, (uint64_t)cx->d_msgs,
                                      memory_order_relaxed);
            atomic_fetch_add_explicit(&q->q_stats.qs_rcpts, (uint64_t)cx->d_rcpts,
                                      memory_order_relaxed);
            atomic_fetch_add_explicit(&q->q_stats.qs_commits, 1, memory_order_relaxed);
        } else {
            atomic_fetch_add_explicit(&q->q_stats.qs_errors, 1, memory_order_relaxed);
            log_error("spool %s: DSNs of marked recipients: %s", q->q_path, mdb_strerror(rc));
        }
        q_dsns_reset(cx->dsns);
        q_acct_flush(q->q_acct);
        if (rc != 0 || !all || sw.listed < Q_SWEEP_MAX)
            break;
    }
    q_sched_kick(q); /* the DSNs made are due */
}

void q_outcomes_stop(queue_t *q)
{
    Q_ASSERT_QUEUE_THREAD(q);
    /* delivery stopped first: the rounds will not come back; every DSN
     * marked is built now rather than at the next start */
    q->q_octx->closing = true;
    q_outcomes_sweep(q, true);
}

typedef struct outcomes_batch {
    chan_node_t *ob_first;
    size_t ob_n;
} outcomes_batch_t;

static int outcomes_write(queue_t *q, MDB_txn *txn, void *arg)
{
    outcomes_batch_t *ob = arg;
    return q_outcomes_apply(q, txn, ob->ob_first, ob->ob_n);
}

/* Outcomes in their own transactions (operator bounces; the fallback when
 * a transaction shared with submissions failed). Durable before return. */
void q_outcomes_process(queue_t *q, chan_node_t *first)
{
    Q_ASSERT_QUEUE_THREAD(q);
    size_t batch = q->q_cfg->c_spool_batch > 0 ? (size_t)q->q_cfg->c_spool_batch : 1024;
    while (first != NULL) {
        chan_node_t *end = first;
        size_t n = 0;
        while (end != NULL && n < batch) {
            end = end->cn_next;
            n++;
        }
        outcomes_batch_t ob = {first, n};
        int rc = q_events_write(q, outcomes_write, &ob);
        if (rc == 0 && q->q_cfg->c_spool_sync != CFG_SYNC_NONE)
            rc = mdb_env_sync(q->q_env, 1); /* MDB_NOMETASYNC: make it durable now */
        if (rc == 0) {
            atomic_fetch_add_explicit(&q->q_stats.qs_commits, 1, memory_order_relaxed);
            q_stats_refresh(q);
        } else {
            atomic_fetch_add_explicit(&q->q_stats.qs_errors, 1, memory_order_relaxed);
            log_error("spool %s: commit of %zu outcomes failed: %s", q->q_path, n,
                      mdb_strerror(rc));
        }
        q_outcomes_done(q, first, n, rc == 0);
        q_acct_flush(q->q_acct);
        first = end;
    }
    q_sched_kick(q);
}

/* ------------------------------------------------------------ metrics */

/* Count one applied outcome for metrics: type is the accounting record
 * type; queued_us the message's time in queue in microseconds (histogram
 * for deliveries: sub-second times count). */
static void outcome_note(queue_t *q, const char *type, uint64_t queued_us)
{
    queue_stats_t *s = &q->q_stats;
    atomic_uint_fast64_t *ctr = NULL;
    switch (type[0]) {
    case 'd': /* delivery */
        ctr = &s->qs_out_delivered;
        for (int i = 0; i < Q_LAT_NBUCKETS; i++) {
            if (queued_us <= queue_lat_bounds[i]) {
                atomic_fetch_add_explicit(&s->qs_lat_bucket[i], 1, memory_order_relaxed);
                break;
            }
        }
        atomic_fetch_add_explicit(&s->qs_lat_sum, queued_us, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->qs_lat_count, 1, memory_order_relaxed);
        break;
    case 't': /* transient */
        ctr = &s->qs_out_transient;
        break;
    case 'b': /* bounce */
        ctr = &s->qs_out_bounced;
        break;
    case 'e': /* expired */
        ctr = &s->qs_out_expired;
        break;
    case 'a': /* admin_bounce */
        ctr = &s->qs_out_admin_bounced;
        break;
    default:
        return;
    }
    atomic_fetch_add_explicit(ctr, 1, memory_order_relaxed);
}
