/*
 * queue/sched.c - the scheduler and the outcomes of delivery attempts.
 *
 *   q_sched_scan        due index -> dispatches (by message and domain)
 *   q_outcomes_process  outcomes -> one write txn per batch (group commit)
 *   q_retry_delay       the retry schedule
 *   rounds              the outcomes a DSN will report are held until their
 *                       message's delivery round ends (docs/delivery.md)
 *   DSN                 RFC 3464 reports for bounced, expired and relayed
 *                       recipients: one per message per round
 *
 * Memory holds only the active set: an open-addressing hash of the
 * recipients in flight (msgid, idx), a counter per destination domain
 * with recipients in flight and a round per message with recipients in
 * flight. The scan walks the `due` index by cursor from the oldest entry
 * up to now, skips recipients in flight, stops when the total window is
 * full, and examines at most Q_SCAN_CAP entries per scan (resuming from
 * there next time), so a million queued recipients for one domain cost a
 * cursor walk, never a million objects.
 * Thread: queue thread only.
 */
#include "queue/admin_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* One recipient of a DSN. */
typedef struct dsn_rcpt {
    char *dr_addr, *dr_orcpt;
    char *dr_mx;    /* Remote-MTA: the server that gave dr_reply, or NULL */
    char *dr_reply; /* that server's reply ("550 5.1.1 No such user"), or NULL */
    char *dr_local; /* sluice's own diagnostic when no reply is quoted, or how the
                       last attempt ended when an earlier reply is (expiry) */
    char dr_status[16];
    bool dr_relayed; /* Action: relayed (NOTIFY=SUCCESS, the next hop has no DSN) */
    bool dr_expired;
} dsn_rcpt_t;

/* The recipients of one message that one batch reports on: one DSN. */
typedef struct dsn {
    uint64_t ds_msgid;
    uint64_t ds_arrival;
    uint8_t ds_flags;
    char *ds_sender;
    char *ds_envid;
    char *ds_job;
    char *ds_orig; /* the whole message with RET=FULL, else its header */
    size_t ds_orig_len;
    size_t ds_hdr_len; /* the header's length in ds_orig (with its last CRLF) */
    int ds_n, ds_nfailed;
    dsn_rcpt_t *ds_rcpts;
} dsn_t;

/* Outcome marks (queue_outcome_t.qo_sched). */
#define Q_OS_HELD 0x01 /* held for its message's DSN: nothing of it written yet */

/*
 * A message with recipients in flight. Its delivery round lasts while
 * any recipient is in flight: the outcomes a DSN reports (bounced,
 * expired, relayed) are held here, their recipients kept in flight, and
 * applied together - one DSN - in the batch that brings back the last of
 * the others. Held outcomes are not in the spool yet: after a crash their
 * recipients are tried again, as for any outcome not committed.
 */
typedef struct q_round {
    struct q_round *r_next; /* hash chain */
    uint64_t r_msgid;
    int r_inflight;      /* recipients in flight (their flight entries) */
    int r_nheld;         /* of which outcomes are held in r_held */
    chan_node_t *r_held; /* queue_outcome_t, linked by cn_next */
    chan_node_t *r_held_tail;
    uint64_t r_gen;            /* the batch r_seen and r_ends are about */
    int r_seen;                /* outcomes of this message in that batch */
    bool r_ends;               /* the round ends with that batch */
    struct q_round *r_touched; /* the next round that batch touched */
} q_round_t;

typedef struct outcome_ctx {
    dsn_t *dsns;
    int ndsn, capdsn;
    int64_t d_msgs, d_rcpts;
    buf_t acct;
    /* rounds, by msgid */
    q_round_t **rounds;
    size_t rounds_cap, rounds_n;
    /* the batch being applied */
    uint64_t gen;
    q_round_t *touched;
    queue_outcome_t **held; /* its outcomes held (Q_OS_HELD) */
    size_t nheld, capheld;
    bool closing; /* q_sched_stop: nothing is held any more */
} outcome_ctx_t;

static uint64_t mix64(uint64_t x);
static q_flight_t *flight_find(queue_t *q, uint64_t id, uint32_t idx);
static void flight_add(queue_t *q, uint64_t id, uint32_t idx, q_dom_t *d, uint64_t bytes);
static void flight_del(queue_t *q, uint64_t id, uint32_t idx);
static q_dom_t *dom_get(queue_t *q, const char *name, size_t len);
static void dom_release(queue_t *q, q_dom_t *d);
static q_round_t *round_find(outcome_ctx_t *cx, uint64_t id);
static q_round_t *round_get(outcome_ctx_t *cx, uint64_t id);
static void round_drop(outcome_ctx_t *cx, q_round_t *r);
static q_round_t *round_touch(queue_t *q, outcome_ctx_t *cx, const queue_outcome_t *o);
static void kick_cb(uv_timer_t *t);
static int outcome_apply(queue_t *q, MDB_txn *txn, queue_outcome_t *o, uint64_t now_us,
                         outcome_ctx_t *cx, bool may_hold);
static void dsn_add(outcome_ctx_t *cx, uint64_t id, const q_msg_rec_t *mr, const q_rcpt_rec_t *rr,
                    const queue_outcome_t *o, bool relayed, bool expired);
static uint8_t dsn_build(queue_t *q, const dsn_t *d, buf_t *out);
static void dsn_free_all(outcome_ctx_t *cx);
static void rfc5322_date(char *dst, size_t len, uint64_t t);

/* ------------------------------------------------------------ in flight */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

void q_sched_init(queue_t *q)
{
    q->q_flight_cap = 1024;
    q->q_flight = xcalloc(q->q_flight_cap, sizeof(q_flight_t));
    q->q_doms_cap = 256;
    q->q_doms = xcalloc(q->q_doms_cap, sizeof(q_dom_t *));
    q->q_octx = xcalloc(1, sizeof(outcome_ctx_t));
    buf_init(&q->q_octx->acct, 4096);
}

void q_sched_free(queue_t *q)
{
    outcome_ctx_t *cx = q->q_octx;
    if (cx) {
        dsn_free_all(cx);
        free(cx->dsns);
        buf_free(&cx->acct);
        for (size_t i = 0; i < cx->rounds_cap; i++) {
            while (cx->rounds[i] != NULL) { /* q_sched_stop applied what was held */
                q_round_t *r = cx->rounds[i];
                cx->rounds[i] = r->r_next;
                for (chan_node_t *h = r->r_held, *hn; h != NULL; h = hn) {
                    hn = h->cn_next;
                    queue_outcome_free((queue_outcome_t *)h);
                }
                free(r);
            }
        }
        free(cx->rounds);
        free(cx->held);
        free(cx);
        q->q_octx = NULL;
    }
    free(q->q_flight);
    q->q_flight = NULL;
    if (q->q_doms) {
        for (size_t i = 0; i < q->q_doms_cap; i++) {
            q_dom_t *d = q->q_doms[i];
            while (d) {
                q_dom_t *n = d->d_next;
                free(d);
                d = n;
            }
        }
        free(q->q_doms);
        q->q_doms = NULL;
    }
}

bool q_sched_in_flight(queue_t *q, uint64_t id, uint32_t idx)
{
    return flight_find(q, id, idx) != NULL;
}

static q_flight_t *flight_find(queue_t *q, uint64_t id, uint32_t idx)
{
    size_t mask = q->q_flight_cap - 1;
    for (size_t i = mix64(id ^ ((uint64_t)idx << 40)) & mask;; i = (i + 1) & mask) {
        q_flight_t *f = &q->q_flight[i];
        if (f->f_msgid == 0 && !f->f_tomb)
            return NULL;
        if (f->f_msgid == id && f->f_idx == idx && !f->f_tomb)
            return f;
    }
}

static void flight_rehash(queue_t *q, size_t cap)
{
    q_flight_t *old = q->q_flight;
    size_t ocap = q->q_flight_cap;
    q->q_flight = xcalloc(cap, sizeof(q_flight_t));
    q->q_flight_cap = cap;
    q->q_flight_used = q->q_flight_n;
    for (size_t j = 0; j < ocap; j++) {
        if (old[j].f_msgid == 0 || old[j].f_tomb)
            continue;
        size_t mask = cap - 1;
        size_t i = mix64(old[j].f_msgid ^ ((uint64_t)old[j].f_idx << 40)) & mask;
        while (q->q_flight[i].f_msgid != 0)
            i = (i + 1) & mask;
        q->q_flight[i] = old[j];
    }
    free(old);
}

static void flight_add(queue_t *q, uint64_t id, uint32_t idx, q_dom_t *d, uint64_t bytes)
{
    if ((q->q_flight_used + 1) * 2 > q->q_flight_cap)
        flight_rehash(q, (q->q_flight_n + 1) * 4 > q->q_flight_cap ? q->q_flight_cap * 2
                                                                   : q->q_flight_cap);
    size_t mask = q->q_flight_cap - 1;
    size_t i = mix64(id ^ ((uint64_t)idx << 40)) & mask;
    while (q->q_flight[i].f_msgid != 0 && !q->q_flight[i].f_tomb)
        i = (i + 1) & mask;
    if (q->q_flight[i].f_msgid == 0)
        q->q_flight_used++;
    q->q_flight[i] =
        (q_flight_t){.f_msgid = id, .f_idx = idx, .f_tomb = 0, .f_dom = d, .f_bytes = bytes};
    q->q_flight_n++;
    round_get(q->q_octx, id)->r_inflight++;
    d->d_active++;
    q->q_active_total++;
    q->q_active_bytes += bytes;
    atomic_store_explicit(&q->q_stats.qs_active_bytes, q->q_active_bytes, memory_order_relaxed);
}

static void flight_del(queue_t *q, uint64_t id, uint32_t idx)
{
    q_flight_t *f = flight_find(q, id, idx);
    if (f == NULL)
        return;
    q_dom_t *d = f->f_dom;
    f->f_tomb = 1;
    f->f_dom = NULL;
    q->q_active_bytes -= f->f_bytes;
    f->f_bytes = 0;
    atomic_store_explicit(&q->q_stats.qs_active_bytes, q->q_active_bytes, memory_order_relaxed);
    q->q_flight_n--;
    q->q_active_total--;
    d->d_active--;
    if (d->d_active == 0)
        dom_release(q, d);
    q_round_t *r = round_find(q->q_octx, id);
    if (r != NULL && --r->r_inflight == 0)
        round_drop(q->q_octx, r);
}

static uint32_t dom_hash(const char *s, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

/* The counter for a (lower-case) domain, created at 0. */
static q_dom_t *dom_get(queue_t *q, const char *name, size_t len)
{
    uint32_t h = dom_hash(name, len);
    q_dom_t **slot = &q->q_doms[h & (q->q_doms_cap - 1)];
    for (q_dom_t *d = *slot; d; d = d->d_next)
        if (d->d_hash == h && strncmp(d->d_name, name, len) == 0 && d->d_name[len] == '\0')
            return d;
    q_dom_t *d = xmalloc(sizeof(*d) + len + 1);
    d->d_hash = h;
    d->d_active = 0;
    memcpy(d->d_name, name, len);
    d->d_name[len] = '\0';
    d->d_next = *slot;
    *slot = d;
    return d;
}

static void dom_release(queue_t *q, q_dom_t *d)
{
    q_dom_t **slot = &q->q_doms[d->d_hash & (q->q_doms_cap - 1)];
    for (; *slot; slot = &(*slot)->d_next) {
        if (*slot == d) {
            *slot = d->d_next;
            free(d);
            return;
        }
    }
}

/* ------------------------------------------------------------ rounds */

static q_round_t *round_find(outcome_ctx_t *cx, uint64_t id)
{
    if (cx->rounds == NULL)
        return NULL;
    for (q_round_t *r = cx->rounds[mix64(id) & (cx->rounds_cap - 1)]; r; r = r->r_next)
        if (r->r_msgid == id)
            return r;
    return NULL;
}

/* The round of message id, created empty. */
static q_round_t *round_get(outcome_ctx_t *cx, uint64_t id)
{
    q_round_t *r = round_find(cx, id);
    if (r != NULL)
        return r;
    if (cx->rounds_n >= cx->rounds_cap) { /* grow: rehash */
        size_t cap = cx->rounds_cap ? cx->rounds_cap * 2 : 256;
        q_round_t **nt = xcalloc(cap, sizeof(*nt));
        for (size_t i = 0; i < cx->rounds_cap; i++) {
            while (cx->rounds[i] != NULL) {
                q_round_t *x = cx->rounds[i];
                cx->rounds[i] = x->r_next;
                size_t b = mix64(x->r_msgid) & (cap - 1);
                x->r_next = nt[b];
                nt[b] = x;
            }
        }
        free(cx->rounds);
        cx->rounds = nt;
        cx->rounds_cap = cap;
    }
    r = xcalloc(1, sizeof(*r));
    r->r_msgid = id;
    size_t b = mix64(id) & (cx->rounds_cap - 1);
    r->r_next = cx->rounds[b];
    cx->rounds[b] = r;
    cx->rounds_n++;
    return r;
}

static void round_drop(outcome_ctx_t *cx, q_round_t *r)
{
    assert(r->r_nheld == 0 && r->r_held == NULL); /* held outcomes keep theirs in flight */
    q_round_t **pp = &cx->rounds[mix64(r->r_msgid) & (cx->rounds_cap - 1)];
    while (*pp != r)
        pp = &(*pp)->r_next;
    *pp = r->r_next;
    cx->rounds_n--;
    free(r);
}

/* An outcome of the batch being applied: its round (counted as seen in
 * this batch), or NULL when its recipient is not in flight (an operator
 * bounce, a duplicate) or the queue is stopping: applied at once then. */
static q_round_t *round_touch(queue_t *q, outcome_ctx_t *cx, const queue_outcome_t *o)
{
    if (cx->closing || flight_find(q, o->qo_msgid, o->qo_idx) == NULL)
        return NULL;
    q_round_t *r = round_find(cx, o->qo_msgid);
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

/* ------------------------------------------------------------ scan */

/* Lower-cased domain of addr into dst; returns its length. */
static size_t addr_domain(const char *addr, size_t len, char *dst, size_t dlen)
{
    const char *at = NULL;
    for (size_t i = len; i > 0; i--)
        if (addr[i - 1] == '@') {
            at = addr + i;
            break;
        }
    size_t n = 0;
    if (at)
        for (; at < addr + len && n + 1 < dlen; at++)
            dst[n++] = (char)tolower((unsigned char)*at);
    dst[n] = '\0';
    return n;
}

typedef struct scan_group {
    q_dom_t *sg_dom;
    queue_dispatch_t *sg_d;
    int sg_cap;
} scan_group_t;

static void scan_flush(queue_t *q, scan_group_t *g, int *ng)
{
    for (int i = 0; i < *ng; i++)
        q->q_dispatch(q->q_dispatch_arg, g[i].sg_d);
    *ng = 0;
}

static char *dupn(const char *s, size_t n)
{
    return s ? xstrndup(s, n) : NULL;
}

void q_sched_scan(queue_t *q)
{
    if (q->q_dispatch == NULL || q->q_env == NULL)
        return;
    Q_ASSERT_QUEUE_THREAD(q);
    const cfg_t *c = q->q_cfg;
    int window = c->c_active_window > 0 ? c->c_active_window : 2000;
    int total = c->c_active_total > 0 ? c->c_active_total : 100000;
    q->q_last_scan_us = clock_mono_us();
    if (q->q_last_scan_us >= q->q_as_when + 1000000) { /* prlimit may lower it at run time */
        q->q_as_when = q->q_last_scan_us;
        q->q_as_cap = mem_budget_cap(c->c_active_size, q->q_active_bytes);
        atomic_store_explicit(&q->q_stats.qs_active_limit, q->q_as_cap, memory_order_relaxed);
    }
    uint64_t active_size = MIN(c->c_active_size, q->q_as_cap);
    if (q->q_active_total >= total || q_admin_hold_all(q)) /* `sluicectl suspend --all` */
        return;
    uint64_t now = clock_now_s();
    MDB_txn *txn = NULL;
    MDB_cursor *cur = NULL;
    if (mdb_txn_begin(q->q_env, NULL, MDB_RDONLY, &txn) != 0)
        return;
    if (mdb_cursor_open(txn, q->q_dbi_due, &cur) != 0) {
        mdb_txn_abort(txn);
        return;
    }
    scan_group_t groups[16];
    int ng = 0;
    uint64_t cur_id = 0;
    q_msg_rec_t mr;
    bool have_msg = false, reached_end = true;
    size_t examined = 0, dispatched = 0, skipped_size = 0;
    MDB_val k, v;
    int rc;
    if (q->q_scan_resume) {
        k.mv_size = Q_DUE_KEY_LEN;
        k.mv_data = q->q_scan_key;
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    } else {
        rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
    }
    q->q_scan_resume = false;
    for (; rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (k.mv_size != Q_DUE_KEY_LEN)
            continue;
        const uint8_t *kp = k.mv_data;
        if (q_rd64(kp) > now)
            break;
        if (++examined > Q_SCAN_CAP) {
            memcpy(q->q_scan_key, kp, Q_DUE_KEY_LEN);
            q->q_scan_resume = true;
            reached_end = false;
            break;
        }
        uint64_t id = q_rd64(kp + 8);
        uint32_t idx = q_rd32(kp + 16);
        if (flight_find(q, id, idx))
            continue;
        if (id != cur_id) {
            scan_flush(q, groups, &ng);
            cur_id = id;
            uint8_t mk[Q_MSG_KEY_LEN];
            q_msg_key(mk, id);
            MDB_val mkv = {Q_MSG_KEY_LEN, mk}, mv;
            have_msg = mdb_get(txn, q->q_dbi_msg, &mkv, &mv) == 0 &&
                       q_msg_decode(mv.mv_data, mv.mv_size, &mr) == 0;
        }
        if (!have_msg)
            continue;
        uint8_t rk[Q_RCPT_KEY_LEN];
        memcpy(rk, kp + 8, Q_RCPT_KEY_LEN);
        MDB_val rkv = {Q_RCPT_KEY_LEN, rk}, rv;
        q_rcpt_rec_t rr;
        if (mdb_get(txn, q->q_dbi_rcpt, &rkv, &rv) != 0 ||
            q_rcpt_decode(rv.mv_data, rv.mv_size, &rr) != 0)
            continue;
        if (q_admin_held(q, rr.rr_addr, rr.rr_addr_len, mr.mr_job, mr.mr_job_len))
            continue; /* domain or job suspended: stays due */
        char dom[256];
        size_t dl = addr_domain(rr.rr_addr, rr.rr_addr_len, dom, sizeof(dom));
        q_dom_t *d = dom_get(q, dom, dl);
        if (d->d_active >= window) {
            continue;
        }
        scan_group_t *g = NULL;
        for (int i = 0; i < ng; i++)
            if (groups[i].sg_dom == d)
                g = &groups[i];
        uint64_t charge = 0;
        if (g == NULL) {
            /* queue.active_size: the bodies copied for delivery threads
             * (each delivery holds one or two more copies); one message
             * always goes, however big. A message that does not fit now
             * is passed over, not waited behind: the bytes in flight may
             * belong to a destination that takes minutes to answer, and
             * smaller messages for healthy ones must not wait for it. It
             * goes at a later scan, once enough has come back. */
            if (q->q_active_bytes > 0 && q->q_active_bytes + mr.mr_body_len > active_size) {
                reached_end = false;
                skipped_size++;
                continue;
            }
            char *body = malloc(mr.mr_body_len + 1);
            if (body == NULL) { /* ulimit -v: try again at the next scan */
                log_warn("queue: no memory for a %zu-byte message to dispatch",
                         (size_t)mr.mr_body_len);
                reached_end = false;
                break;
            }
            if (ng == (int)ARRAY_SIZE(groups))
                scan_flush(q, groups, &ng);
            g = &groups[ng++];
            queue_dispatch_t *qd = xcalloc(1, sizeof(*qd));
            qd->qd_msgid = id;
            qd->qd_domain = xstrdup(dom);
            qd->qd_sender = xstrndup(mr.mr_sender ? mr.mr_sender : "", mr.mr_sender_len);
            qd->qd_job = dupn(mr.mr_job, mr.mr_job_len);
            qd->qd_envid = dupn(mr.mr_envid, mr.mr_envid_len);
            qd->qd_auth_user = dupn(mr.mr_auth, mr.mr_auth_len);
            qd->qd_flags = mr.mr_flags;
            qd->qd_arrival = mr.mr_arrival;
            qd->qd_body = body;
            memcpy(qd->qd_body, mr.mr_body, mr.mr_body_len);
            qd->qd_body[mr.mr_body_len] = '\0';
            qd->qd_body_len = mr.mr_body_len;
            g->sg_dom = d;
            g->sg_d = qd;
            g->sg_cap = 0;
            charge = mr.mr_body_len;
        }
        queue_dispatch_t *qd = g->sg_d;
        if (qd->qd_nrcpt == g->sg_cap) {
            g->sg_cap = g->sg_cap ? g->sg_cap * 2 : 4;
            qd->qd_rcpts = xrealloc(qd->qd_rcpts, (size_t)g->sg_cap * sizeof(queue_rcpt_out_t));
        }
        qd->qd_rcpts[qd->qd_nrcpt++] = (queue_rcpt_out_t){
            .qo_idx = idx,
            .qo_addr = xstrndup(rr.rr_addr, rr.rr_addr_len),
            .qo_orcpt = dupn(rr.rr_orcpt, rr.rr_orcpt_len),
            .qo_notify = rr.rr_notify,
            .qo_attempts = rr.rr_attempts,
        };
        flight_add(q, id, idx, d, charge);
        dispatched++;
        if (q->q_active_total >= total) {
            reached_end = false; /* full: the next scan starts from the oldest again */
            break;
        }
    }
    scan_flush(q, groups, &ng);
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    if (dispatched || skipped_size)
        log_debug("queue: scan examined=%zu dispatched=%zu in_flight=%d end=%d"
                  " over_active_size=%zu",
                  examined, dispatched, q->q_active_total, reached_end, skipped_size);
}

static void kick_cb(uv_timer_t *t)
{
    q_sched_scan(t->data);
}

void q_sched_kick(queue_t *q)
{
    if (q->q_dispatch == NULL || atomic_load(&q->q_stopping))
        return;
    uint64_t since = clock_mono_us() - q->q_last_scan_us;
    if (since >= Q_KICK_MIN_US) {
        q_sched_scan(q);
        return;
    }
    if (!uv_is_active((uv_handle_t *)&q->q_kick))
        uv_timer_start(&q->q_kick, kick_cb, (Q_KICK_MIN_US - since) / 1000 + 1, 0);
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

/* ------------------------------------------------------------ outcomes */

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

/* A reply a server gave (not sluice's own diagnostic, which has no MX
 * host: route failures, local failures, connections that failed). */
static bool outcome_is_reply(const queue_outcome_t *o)
{
    return o->qo_code != 0 && o->qo_mx != NULL && o->qo_mx[0] != '\0';
}

/* Apply one outcome inside txn. With may_hold, an outcome a DSN will
 * report is only marked Q_OS_HELD (nothing written): its round applies
 * it later. Returns 0 or an LMDB error (the whole batch is then retried
 * or dropped). */
static int outcome_apply(queue_t *q, MDB_txn *txn, queue_outcome_t *o, uint64_t now_us,
                         outcome_ctx_t *cx, bool may_hold)
{
    uint8_t mk[Q_MSG_KEY_LEN], rk[Q_RCPT_KEY_LEN], dk[Q_DUE_KEY_LEN];
    MDB_val k, v;
    q_msg_rec_t mr;
    q_rcpt_rec_t rr;
    int rc;
    uint64_t now = now_us / 1000000;
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
    addr_domain(rr.rr_addr, rr.rr_addr_len, dom, sizeof(dom));

    queue_result_t res = o->qo_result;
    const char *type = "delivery", *status = o->qo_status, *category = o->qo_category;
    uint64_t next = 0;
    bool expire = false;
    if (res == Q_OUT_DEFERRED) {
        uint64_t deadline = mr.mr_arrival + q->q_cfg->c_max_age;
        if (q->q_cfg->c_max_age > 0 && now >= deadline) {
            expire = true;
        } else {
            next = now + q_retry_delay(q, rr.rr_attempts + 1);
            if (o->qo_retry_at > next)
                next = o->qo_retry_at;
            if (q->q_cfg->c_max_age > 0 && next > deadline)
                next = deadline; /* one last try at the deadline, then expire */
            type = "transient";
        }
    } else if (res == Q_OUT_BOUNCED) {
        type = o->qo_admin ? "admin_bounce" : "bounce";
        if (category == NULL)
            category = "other";
    }
    if (expire) {
        type = "expired";
        status = "4.4.7";
        category = "message-expired";
    }
    bool failed = !next && (res == Q_OUT_BOUNCED || expire) && dsn_wanted(q, &mr, &rr);
    bool relayed = res == Q_OUT_DELIVERED && dsn_relayed_wanted(q, &mr, &rr, o);
    if ((failed || relayed) && may_hold) {
        o->qo_sched |= Q_OS_HELD; /* for the round's one DSN */
        return 0;
    }
    if (failed || relayed)
        dsn_add(cx, o->qo_msgid, &mr, &rr, o, relayed, expire); /* copies from the body first */
    mr.mr_body = NULL;

    q_due_key(dk, rr.rr_next, o->qo_msgid, o->qo_idx);
    k = (MDB_val){Q_DUE_KEY_LEN, dk};
    rc = mdb_del(txn, q->q_dbi_due, &k, NULL);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return rc;

    if (next) {
        q_rcpt_rec_t nr = rr;
        nr.rr_attempts = rr.rr_attempts + 1;
        nr.rr_next = next;
        /* The last reply a server gave stays, with that server, until
         * another server replies: a local deferral afterwards (destination
         * marked down, connection refused, DNS) does not replace it, so
         * that the DSN at expiry quotes what the receiver said. Without a
         * reply yet, the latest local diagnostic is kept. */
        if (outcome_is_reply(o) || rr.rr_code == 0 || rr.rr_mx_len == 0) {
            nr.rr_code = (uint16_t)o->qo_code;
            nr.rr_status = o->qo_status;
            nr.rr_status_len = (uint8_t)strnlen(o->qo_status, sizeof(o->qo_status));
            nr.rr_text = o->qo_text;
            nr.rr_text_len = (uint16_t)(o->qo_text ? MIN(strlen(o->qo_text), Q_TEXT_MAX) : 0);
            nr.rr_mx = outcome_is_reply(o) ? o->qo_mx : NULL;
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
        if ((rc = mdb_put(txn, q->q_dbi_due, &k, &v, 0)) != 0)
            return rc;
    } else {
        /* final: delivered, bounced or expired */
        k = (MDB_val){Q_RCPT_KEY_LEN, rk};
        if ((rc = mdb_del(txn, q->q_dbi_rcpt, &k, NULL)) != 0)
            return rc;
        cx->d_rcpts--;
        bool more;
        if ((rc = q_msg_has_rcpts(q, txn, o->qo_msgid, &more)) != 0)
            return rc;
        if (!more) {
            k = (MDB_val){Q_MSG_KEY_LEN, mk};
            if ((rc = mdb_del(txn, q->q_dbi_msg, &k, NULL)) != 0)
                return rc;
            cx->d_msgs--;
        }
    }
    acct_outcome(&cx->acct, type, now_us, o->qo_msgid, &mr, &rr, dom, o, status, category, next);
    /* the histogram in microseconds: message ids are the reception time in
     * us (queue_msgid_new), mr_arrival only whole seconds */
    uint64_t arr_us = o->qo_msgid;
    if (arr_us / 1000000 + 60 < mr.mr_arrival || arr_us / 1000000 > mr.mr_arrival + 60)
        arr_us = mr.mr_arrival * 1000000; /* not a time-based id (clock moved) */
    q_admin_outcome_note(q, type, now_us > arr_us ? now_us - arr_us : 0);
    return 0;
}

int q_outcomes_apply(queue_t *q, MDB_txn *txn, chan_node_t *first, size_t n)
{
    outcome_ctx_t *cx = q->q_octx;
    Q_ASSERT_QUEUE_THREAD(q);
    buf_reset(&cx->acct);
    dsn_free_all(cx);
    cx->d_msgs = cx->d_rcpts = 0;
    cx->gen++; /* this call may repeat the previous one (a full map): start afresh */
    cx->touched = NULL;
    cx->nheld = 0;
    uint64_t now_us = clock_now_us();
    int rc = 0;
    chan_node_t *node = first;
    for (size_t i = 0; i < n; i++, node = node->cn_next)
        ((queue_outcome_t *)node)->qo_sched = 0;
    node = first;
    for (size_t i = 0; rc == 0 && i < n; i++, node = node->cn_next) {
        queue_outcome_t *o = (queue_outcome_t *)node;
        q_round_t *r = round_touch(q, cx, o);
        rc = outcome_apply(q, txn, o, now_us, cx, r != NULL);
        if (rc == 0 && (o->qo_sched & Q_OS_HELD)) {
            if (cx->nheld == cx->capheld) {
                cx->capheld = cx->capheld ? cx->capheld * 2 : 64;
                cx->held = xrealloc(cx->held, cx->capheld * sizeof(*cx->held));
            }
            cx->held[cx->nheld++] = o;
        }
    }
    /* The rounds this batch ends (none of their recipients left in flight
     * but the held ones): what they held, earlier batches' first, goes
     * into one DSN per message now. */
    for (q_round_t *r = cx->touched; rc == 0 && r != NULL; r = r->r_touched) {
        if (r->r_inflight - r->r_nheld - r->r_seen > 0)
            continue; /* the round goes on */
        r->r_ends = true;
        for (chan_node_t *h = r->r_held; rc == 0 && h != NULL; h = h->cn_next)
            rc = outcome_apply(q, txn, (queue_outcome_t *)h, now_us, cx, false);
    }
    for (size_t i = 0; rc == 0 && i < cx->nheld; i++) {
        queue_outcome_t *o = cx->held[i];
        q_round_t *r = round_find(cx, o->qo_msgid);
        if (r != NULL && r->r_ends) {
            o->qo_sched &= (uint8_t)~Q_OS_HELD;
            rc = outcome_apply(q, txn, o, now_us, cx, false);
        }
    }
    /* DSNs go in the same txn: a new message from <> to the sender */
    for (int i = 0; rc == 0 && i < cx->ndsn; i++) {
        const dsn_t *ds = &cx->dsns[i];
        queue_msg_in_t m;
        memset(&m, 0, sizeof(m));
        m.qm_id = queue_msgid_new();
        m.qm_arrival = now_us / 1000000;
        m.qm_sender = "";
        m.qm_dsn_for = ds->ds_msgid;
        m.qm_dsn_job = ds->ds_job;
        queue_rcpt_in_t r = {.qr_addr = ds->ds_sender, .qr_notify = 0};
        m.qm_nrcpt = 1;
        m.qm_rcpts = &r;
        buf_init(&m.qm_body, 0);
        m.qm_flags = dsn_build(q, ds, &m.qm_body);
        rc = q_insert_msg(q, txn, &m);
        buf_free(&m.qm_body);
        if (rc == 0) {
            char a[17], b[17];
            log_info("%s: dsn=%s to=<%s> failed=%d relayed=%d", queue_msgid_fmt(ds->ds_msgid, a),
                     queue_msgid_fmt(m.qm_id, b), ds->ds_sender, ds->ds_nfailed,
                     ds->ds_n - ds->ds_nfailed);
            cx->d_msgs++;
            cx->d_rcpts++;
        }
    }
    return rc;
}

void q_outcomes_done(queue_t *q, chan_node_t *first, size_t n, bool committed)
{
    outcome_ctx_t *cx = q->q_octx;
    if (committed) {
        atomic_fetch_add_explicit(&q->q_stats.qs_msgs, (uint64_t)cx->d_msgs, memory_order_relaxed);
        atomic_fetch_add_explicit(&q->q_stats.qs_rcpts, (uint64_t)cx->d_rcpts,
                                  memory_order_relaxed);
        buf_append(q_acct_buf(q->q_acct), cx->acct.b_data, cx->acct.b_len);
    }
    /* Rounds that ended: what they held from earlier batches is done
     * (applied; or, not committed, still due and tried again). Their
     * rounds stay: this batch's outcomes are still counted in flight. */
    for (q_round_t *r = cx->touched; r != NULL; r = r->r_touched) {
        if (!r->r_ends)
            continue;
        chan_node_t *h = r->r_held;
        r->r_held = r->r_held_tail = NULL;
        r->r_nheld = 0;
        r->r_ends = false;
        while (h != NULL) {
            chan_node_t *hn = h->cn_next;
            queue_outcome_t *o = (queue_outcome_t *)h;
            flight_del(q, o->qo_msgid, o->qo_idx);
            queue_outcome_free(o);
            h = hn;
        }
    }
    cx->touched = NULL;
    cx->nheld = 0;
    /* Not committed: the recipients stay due and are tried again. */
    chan_node_t *node = first;
    for (size_t i = 0; i < n; i++) {
        chan_node_t *next = node->cn_next;
        queue_outcome_t *o = (queue_outcome_t *)node;
        q_round_t *r = NULL;
        if (committed && (o->qo_sched & Q_OS_HELD))
            r = round_find(cx, o->qo_msgid);
        if (r != NULL) { /* its round goes on: held, its recipient still in flight */
            node->cn_next = NULL;
            if (r->r_held_tail)
                r->r_held_tail->cn_next = node;
            else
                r->r_held = node;
            r->r_held_tail = node;
            r->r_nheld++;
        } else {
            flight_del(q, o->qo_msgid, o->qo_idx);
            queue_outcome_free(o);
        }
        node = next;
    }
    buf_reset(&cx->acct);
    dsn_free_all(cx);
}

void q_sched_stop(queue_t *q)
{
    Q_ASSERT_QUEUE_THREAD(q);
    outcome_ctx_t *cx = q->q_octx;
    chan_node_t *head = NULL, *tail = NULL;
    for (size_t i = 0; i < cx->rounds_cap; i++)
        for (q_round_t *r = cx->rounds[i]; r != NULL; r = r->r_next) {
            if (r->r_held == NULL)
                continue;
            if (tail)
                tail->cn_next = r->r_held;
            else
                head = r->r_held;
            tail = r->r_held_tail;
            r->r_held = r->r_held_tail = NULL;
            r->r_nheld = 0;
        }
    /* the rest of those rounds will not come back (delivery stopped
     * first): apply what they held, with its DSNs, rather than try
     * recipients again that already have their outcome */
    cx->closing = true;
    if (head != NULL)
        q_outcomes_process(q, head);
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
        int rc;
        for (;;) {
            MDB_txn *txn = NULL;
            rc = mdb_txn_begin(q->q_env, NULL, 0, &txn);
            if (rc == 0)
                rc = q_outcomes_apply(q, txn, first, n);
            if (rc == 0)
                rc = mdb_txn_commit(txn);
            else if (txn)
                mdb_txn_abort(txn);
            if (rc == MDB_MAP_FULL && q_map_grow(q) == 0)
                continue;
            break;
        }
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

/* ------------------------------------------------------------ DSN */

/* "550 5.1.1 text" (text up to Q_TEXT_MAX), newly allocated. */
static char *dsn_reply_str(int code, const char *status, size_t slen, const char *text, size_t tlen)
{
    buf_t b;
    buf_init(&b, 64 + tlen);
    buf_printf(&b, "%d", code);
    if (status != NULL && slen > 0) {
        buf_append(&b, " ", 1);
        buf_append(&b, status, slen);
    }
    if (text != NULL && tlen > 0) {
        buf_append(&b, " ", 1);
        buf_append(&b, text, MIN(tlen, Q_TEXT_MAX));
    }
    buf_append(&b, "", 1);
    return buf_steal(&b, NULL);
}

static void dsn_add(outcome_ctx_t *cx, uint64_t id, const q_msg_rec_t *mr, const q_rcpt_rec_t *rr,
                    const queue_outcome_t *o, bool relayed, bool expired)
{
    dsn_t *d = NULL;
    for (int i = cx->ndsn - 1; i >= 0; i--)
        if (cx->dsns[i].ds_msgid == id) {
            d = &cx->dsns[i];
            break;
        }
    if (d == NULL) {
        if (cx->ndsn == cx->capdsn) {
            cx->capdsn = cx->capdsn ? cx->capdsn * 2 : 8;
            cx->dsns = xrealloc(cx->dsns, (size_t)cx->capdsn * sizeof(dsn_t));
        }
        d = &cx->dsns[cx->ndsn++];
        memset(d, 0, sizeof(*d));
        d->ds_msgid = id;
        d->ds_arrival = mr->mr_arrival;
        d->ds_flags = mr->mr_flags;
        d->ds_sender = xstrndup(mr->mr_sender, mr->mr_sender_len);
        d->ds_envid = dupn(mr->mr_envid, mr->mr_envid_len);
        d->ds_job = dupn(mr->mr_job, mr->mr_job_len);
        /* the header: up to and including the blank line's first CRLF */
        const char *body = mr->mr_body ? mr->mr_body : "";
        const char *e = memmem(body, mr->mr_body_len, "\r\n\r\n", 4);
        d->ds_hdr_len = e ? (size_t)(e - body) + 2 : mr->mr_body_len;
        /* RET=FULL: the whole message, in case one recipient fails (a DSN
         * that only reports relays returns the header alone) */
        size_t len = (mr->mr_flags & Q_F_RET_FULL) ? mr->mr_body_len : d->ds_hdr_len;
        d->ds_orig = xstrndup(body, len);
        d->ds_orig_len = len;
    }
    d->ds_rcpts = xrealloc(d->ds_rcpts, (size_t)(d->ds_n + 1) * sizeof(dsn_rcpt_t));
    dsn_rcpt_t *r = &d->ds_rcpts[d->ds_n++];
    memset(r, 0, sizeof(*r));
    r->dr_addr = xstrndup(rr->rr_addr, rr->rr_addr_len);
    r->dr_orcpt = dupn(rr->rr_orcpt, rr->rr_orcpt_len);
    r->dr_relayed = relayed;
    r->dr_expired = expired;
    size_t olen = o->qo_text ? strlen(o->qo_text) : 0;
    if (outcome_is_reply(o)) {
        /* the reply as the server gave it: its code and its own enhanced
         * status, even when the DSN's Status says 4.4.7 (expired) */
        r->dr_mx = xstrdup(o->qo_mx);
        r->dr_reply = dsn_reply_str(o->qo_code, o->qo_status,
                                    strnlen(o->qo_status, sizeof(o->qo_status)), o->qo_text, olen);
    } else if (expired && rr->rr_code != 0 && rr->rr_mx_len > 0) {
        /* the last attempt had no reply (marked down, refused, DNS): quote
         * the last reply a server did give, and say how the end came */
        r->dr_mx = xstrndup(rr->rr_mx, rr->rr_mx_len);
        r->dr_reply = dsn_reply_str(rr->rr_code, rr->rr_status, rr->rr_status_len, rr->rr_text,
                                    rr->rr_text_len);
        r->dr_local = o->qo_text ? xstrndup(o->qo_text, MIN(olen, Q_TEXT_MAX)) : NULL;
    } else {
        r->dr_local =
            o->qo_text ? xstrndup(o->qo_text, MIN(olen, Q_TEXT_MAX)) : xstrdup("delivery failed");
    }
    const char *st = relayed   ? (o->qo_status[0] == '2' ? o->qo_status : "2.0.0")
                     : expired ? "4.4.7"
                     : o->qo_status[0] == '5' || o->qo_status[0] == '4' ? o->qo_status
                                                                        : "5.0.0";
    snprintf(r->dr_status, sizeof(r->dr_status), "%s", st);
    if (!relayed)
        d->ds_nfailed++;
}

static void dsn_free_all(outcome_ctx_t *cx)
{
    for (int i = 0; i < cx->ndsn; i++) {
        dsn_t *d = &cx->dsns[i];
        for (int j = 0; j < d->ds_n; j++) {
            dsn_rcpt_t *r = &d->ds_rcpts[j];
            free(r->dr_addr);
            free(r->dr_orcpt);
            free(r->dr_mx);
            free(r->dr_reply);
            free(r->dr_local);
        }
        free(d->ds_rcpts);
        free(d->ds_sender);
        free(d->ds_envid);
        free(d->ds_job);
        free(d->ds_orig);
    }
    cx->ndsn = 0;
}

static void rfc5322_date(char *dst, size_t len, uint64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    static const char *const wd[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const mo[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    snprintf(dst, len, "%s, %d %s %04d %02d:%02d:%02d +0000", wd[tm.tm_wday], tm.tm_mday,
             mo[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* Append peer-supplied text as one line of a header field or report:
 * controls (CR, LF, ...) become spaces; 8-bit bytes stay only where UTF-8
 * may be (utf8: a message/global-delivery-status), else become '?'. */
static void dsn_line(buf_t *b, const char *s, size_t n, bool utf8)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < n && s[i]; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *put = c < 0x20 || c == 0x7f ? " " : (c >= 0x80 && !utf8) ? "?" : &s[i];
        buf_append(b, put, 1);
    }
}

static void one_line(buf_t *b, const char *s, bool utf8)
{
    dsn_line(b, s, s ? strlen(s) : 0, utf8);
}

static bool is_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80)
            return false;
    return true;
}

static int hexval(int c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                  : -1;
}

/* Decode RFC 3461 xtext ("+2B" is '+'), and with unicode also RFC 6533's
 * "\x{20AC}" of the utf-8 address type. NULL when the text is not well
 * formed or the result would not be printable (US-ASCII, or UTF-8 where
 * utf8 allows it): the caller prints the encoded form, which always is. */
static char *xtext_decode(const char *s, bool unicode, bool utf8)
{
    buf_t b;
    buf_init(&b, strlen(s) + 1);
    for (const char *p = s; *p;) {
        unsigned char c = (unsigned char)*p;
        if (c == '+') {
            int h = hexval(p[1]), l = h >= 0 ? hexval(p[2]) : -1;
            if (h < 0 || l < 0)
                goto bad;
            c = (unsigned char)(h * 16 + l);
            buf_append(&b, &c, 1);
            p += 3;
        } else if (unicode && c == '\\' && p[1] == 'x' && p[2] == '{') {
            unsigned long cp = 0;
            const char *q = p + 3;
            int nd = 0;
            for (; hexval(*q) >= 0 && nd < 6; q++, nd++)
                cp = cp * 16 + (unsigned long)hexval(*q);
            if (*q != '}' || nd == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                goto bad;
            unsigned char u[4];
            size_t un;
            if (cp < 0x80) {
                u[0] = (unsigned char)cp;
                un = 1;
            } else if (cp < 0x800) {
                u[0] = (unsigned char)(0xC0 | (cp >> 6));
                u[1] = (unsigned char)(0x80 | (cp & 0x3F));
                un = 2;
            } else if (cp < 0x10000) {
                u[0] = (unsigned char)(0xE0 | (cp >> 12));
                u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
                u[2] = (unsigned char)(0x80 | (cp & 0x3F));
                un = 3;
            } else {
                u[0] = (unsigned char)(0xF0 | (cp >> 18));
                u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
                u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
                u[3] = (unsigned char)(0x80 | (cp & 0x3F));
                un = 4;
            }
            buf_append(&b, u, un);
            p = q + 1;
        } else {
            buf_append(&b, p, 1);
            p++;
        }
    }
    for (size_t i = 0; i < b.b_len; i++) {
        unsigned char c = (unsigned char)b.b_data[i];
        if (c < 0x20 || c == 0x7f || (c >= 0x80 && !utf8))
            goto bad;
    }
    buf_append(&b, "", 1);
    return buf_steal(&b, NULL);
bad:
    buf_free(&b);
    return NULL;
}

/* A DSN field whose value came encoded as xtext (ENVID; ORCPT after its
 * "type;"): decoded when that gives printable text (RFC 3464 2.2.1,
 * 2.3.1), as received otherwise. */
static void put_xtext(buf_t *b, const char *s, bool unicode, bool utf8)
{
    char *dec = xtext_decode(s, unicode, utf8);
    one_line(b, dec ? dec : s, utf8);
    free(dec);
}

/*
 * RFC 3464 multipart/report for the recipients of one message that a
 * round reports on: failed (bounced, expired) and relayed ones. For an
 * internationalized message (SMTPUTF8) the report is RFC 6533's
 * message/global-delivery-status, with utf-8 addresses and the message
 * returned as message/global(-headers). Returns the DSN's own message
 * flags: Q_F_DSN, SMTPUTF8 when it carries UTF-8 headers or goes to a
 * UTF-8 address, 8BITMIME when it carries 8-bit text (the returned
 * message of an 8BITMIME one) - so that its MAIL command says so.
 */
static uint8_t dsn_build(queue_t *q, const dsn_t *d, buf_t *out)
{
    const char *host = q->q_cfg->c_hostname ? q->q_cfg->c_hostname : "localhost";
    char now[64], arr[64], idbuf[17], boundary[64];
    uint64_t t = clock_now_s();
    bool global = d->ds_flags & Q_F_SMTPUTF8;
    bool failed = d->ds_nfailed > 0;
    bool full = failed && (d->ds_flags & Q_F_RET_FULL);
    size_t orig_len = full ? d->ds_orig_len : MIN(d->ds_hdr_len, d->ds_orig_len);
    rfc5322_date(now, sizeof(now), t);
    rfc5322_date(arr, sizeof(arr), d->ds_arrival);
    queue_msgid_fmt(d->ds_msgid, idbuf);
    snprintf(boundary, sizeof(boundary), "%s.%llu/%s", idbuf, (unsigned long long)t, host);

    /* the human-readable part first: its charset goes in its header */
    buf_t h;
    buf_init(&h, 1024);
    buf_printf(&h, "This is the mail system at host %s.\r\n\r\n", host);
    if (failed)
        buf_printf(&h,
                   "Your message (queue id %s) could not be delivered to one or more\r\n"
                   "recipients. %s attached below.\r\n\r\n",
                   idbuf, full ? "It is" : "Its header is");
    if (d->ds_n > d->ds_nfailed)
        buf_printf(&h,
                   "Your message (queue id %s) was relayed to the servers of the\r\n"
                   "recipients marked \"relayed\" below. They do not offer delivery\r\n"
                   "status notifications (RFC 3461): this is the last notice of its\r\n"
                   "success you will get from the mail system.\r\n\r\n",
                   idbuf);
    for (int i = 0; i < d->ds_n; i++) {
        const dsn_rcpt_t *r = &d->ds_rcpts[i];
        buf_append_str(&h, "<");
        one_line(&h, r->dr_addr, global);
        buf_append_str(&h, ">: ");
        if (r->dr_relayed) {
            buf_append_str(&h, "relayed to ");
            one_line(&h, r->dr_mx ? r->dr_mx : "the next server", global);
            buf_append_str(&h, ", which does not offer DSN");
            if (r->dr_reply) {
                buf_append_str(&h, ": ");
                one_line(&h, r->dr_reply, global);
            }
        } else {
            if (r->dr_expired)
                buf_append_str(&h, "delivery time expired");
            if (r->dr_reply) {
                buf_printf(&h, "%shost ", r->dr_expired ? "; the last reply: " : "");
                one_line(&h, r->dr_mx, global);
                buf_append_str(&h, " said: ");
                one_line(&h, r->dr_reply, global);
            }
            if (r->dr_local) {
                buf_append_str(&h, r->dr_reply     ? " (last attempt: "
                                   : r->dr_expired ? " (last attempt: "
                                                   : "");
                one_line(&h, r->dr_local, global);
                if (r->dr_reply || r->dr_expired)
                    buf_append_str(&h, ")");
            }
        }
        buf_append_str(&h, "\r\n\r\n");
    }

    buf_append_str(out, "From: Mail Delivery System <MAILER-DAEMON@");
    buf_append_str(out, host);
    buf_append_str(out, ">\r\nTo: <");
    one_line(out, d->ds_sender, true); /* an SMTPUTF8 DSN when it is not ASCII */
    buf_printf(out,
               ">\r\n"
               "Subject: %s\r\n"
               "Date: %s\r\n"
               "Message-ID: <%s.dsn.%llu@%s>\r\n"
               "Auto-Submitted: auto-replied\r\n"
               "MIME-Version: 1.0\r\n"
               "Content-Type: multipart/report; report-type=delivery-status;\r\n"
               "\tboundary=\"%s\"\r\n"
               "\r\n"
               "This is a MIME-encapsulated message.\r\n"
               "\r\n"
               "--%s\r\n"
               "Content-Description: Notification\r\n",
               failed ? "Undelivered Mail Returned to Sender" : "Successful Mail Delivery Report",
               now, idbuf, (unsigned long long)t, host, boundary, boundary);
    if (is_ascii(h.b_data, h.b_len))
        buf_append_str(out, "Content-Type: text/plain; charset=us-ascii\r\n\r\n");
    else
        buf_append_str(out, "Content-Type: text/plain; charset=utf-8\r\n"
                            "Content-Transfer-Encoding: 8bit\r\n\r\n");
    buf_append(out, h.b_data, h.b_len);
    buf_free(&h);

    /* RFC 3464 2.2 / 2.3: per-message fields, then one block per recipient */
    buf_t ds;
    buf_init(&ds, 512 + (size_t)d->ds_n * 256);
    if (d->ds_envid) {
        buf_append_str(&ds, "Original-Envelope-Id: ");
        put_xtext(&ds, d->ds_envid, false, global);
        buf_append_str(&ds, "\r\n");
    }
    buf_printf(&ds, "Reporting-MTA: dns; %s\r\nArrival-Date: %s\r\nX-Sluice-Queue-ID: %s\r\n", host,
               arr, idbuf);
    for (int i = 0; i < d->ds_n; i++) {
        const dsn_rcpt_t *r = &d->ds_rcpts[i];
        buf_append_str(&ds, "\r\n");
        if (r->dr_orcpt) {
            /* ORCPT is "addr-type;xtext" (RFC 3461 4.2); the report has it
             * decoded (RFC 3464 2.3.1) */
            const char *semi = strchr(r->dr_orcpt, ';');
            buf_append_str(&ds, "Original-Recipient: ");
            if (semi) {
                dsn_line(&ds, r->dr_orcpt, (size_t)(semi - r->dr_orcpt), false);
                buf_append_str(&ds, "; ");
                bool unicode =
                    (size_t)(semi - r->dr_orcpt) == 5 && strncasecmp(r->dr_orcpt, "utf-8", 5) == 0;
                const char *v = semi + 1;
                while (*v == ' ')
                    v++;
                put_xtext(&ds, v, unicode, global);
            } else {
                buf_append_str(&ds, "rfc822; ");
                put_xtext(&ds, r->dr_orcpt, false, global);
            }
            buf_append_str(&ds, "\r\n");
        }
        bool utf8addr = !is_ascii(r->dr_addr, strlen(r->dr_addr));
        buf_printf(&ds, "Final-Recipient: %s; ", global && utf8addr ? "utf-8" : "rfc822");
        one_line(&ds, r->dr_addr, global);
        buf_printf(&ds, "\r\nAction: %s\r\nStatus: %s\r\n", r->dr_relayed ? "relayed" : "failed",
                   r->dr_status);
        if (r->dr_mx) {
            buf_append_str(&ds, "Remote-MTA: dns; ");
            one_line(&ds, r->dr_mx, false);
            buf_append_str(&ds, "\r\n");
        }
        if (r->dr_reply) {
            buf_append_str(&ds, "Diagnostic-Code: smtp; ");
            one_line(&ds, r->dr_reply, global);
            buf_append_str(&ds, "\r\n");
        } else if (r->dr_local) {
            buf_append_str(&ds, "Diagnostic-Code: X-Sluice; ");
            one_line(&ds, r->dr_local, global);
            buf_append_str(&ds, "\r\n");
        }
        buf_printf(&ds, "Last-Attempt-Date: %s\r\n", now);
    }
    buf_printf(out, "--%s\r\nContent-Description: Delivery report\r\nContent-Type: %s\r\n",
               boundary, global ? "message/global-delivery-status" : "message/delivery-status");
    if (!is_ascii(ds.b_data, ds.b_len))
        buf_append_str(out, "Content-Transfer-Encoding: 8bit\r\n");
    buf_append_str(out, "\r\n");
    buf_append(out, ds.b_data, ds.b_len);
    buf_free(&ds);

    bool eight = !is_ascii(d->ds_orig, orig_len);
    buf_printf(out, "\r\n--%s\r\nContent-Description: %s\r\nContent-Type: %s\r\n%s\r\n", boundary,
               full ? "Undelivered Message" : "Message Headers",
               full ? (global ? "message/global" : "message/rfc822")
                    : (global ? "message/global-headers" : "text/rfc822-headers"),
               eight ? "Content-Transfer-Encoding: 8bit\r\n" : "");
    buf_append(out, d->ds_orig, orig_len);
    if (orig_len < 2 || memcmp(d->ds_orig + orig_len - 2, "\r\n", 2) != 0)
        buf_append_str(out, "\r\n");
    buf_printf(out, "\r\n--%s--\r\n", boundary);

    uint8_t flags = Q_F_DSN;
    if (global || !is_ascii(d->ds_sender, strlen(d->ds_sender)))
        flags |= Q_F_SMTPUTF8;
    if ((d->ds_flags & Q_F_8BITMIME) || !is_ascii(out->b_data, out->b_len))
        flags |= Q_F_8BITMIME;
    return flags;
}

/* ------------------------------------------------------------ frees */

void queue_dispatch_free(queue_dispatch_t *d)
{
    if (d == NULL)
        return;
    for (int i = 0; i < d->qd_nrcpt; i++) {
        free(d->qd_rcpts[i].qo_addr);
        free(d->qd_rcpts[i].qo_orcpt);
    }
    free(d->qd_rcpts);
    free(d->qd_domain);
    free(d->qd_sender);
    free(d->qd_job);
    free(d->qd_envid);
    free(d->qd_auth_user);
    free(d->qd_body);
    free(d);
}

void queue_outcome_free(queue_outcome_t *o)
{
    if (o == NULL)
        return;
    free(o->qo_text);
    free(o->qo_category);
    free(o->qo_mx);
    free(o);
}
