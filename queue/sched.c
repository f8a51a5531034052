/*
 * queue/sched.c - the scheduler: what is in flight, and the scan that
 * hands due recipients to the delivery threads.
 *
 *   q_sched_scan        due index -> dispatches (by message and domain)
 *   q_sched_kick        scan soon after new work (at most every 10 ms)
 *   in flight           q_sched_in_flight, q_flight_del: the recipients
 *                       dispatched and not back yet
 *   rounds              q_round_find / q_rounds_foreach: one per message with
 *                       recipients in flight (outcome.c builds a message's
 *                       DSN from its marks when its round ends)
 *
 * Memory holds only the active set: an open-addressing hash of the
 * recipients in flight (msgid, idx), a counter per destination domain
 * with recipients in flight and a round per message with recipients in
 * flight. The scan walks the `due` index by cursor from the oldest entry
 * up to now, skips recipients in flight or held (holds.c, one question per
 * recipient), stops when the total window is full, and examines at most
 * Q_SCAN_CAP entries per scan (resuming from there next time), so a million
 * queued recipients for one domain cost a cursor walk, never a million
 * objects.
 * Calls holds.c, spool.c and chanmsg.c; outcome.c and admin.c call here.
 * Thread: queue thread only.
 */
#include "queue/queue_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t mix64(uint64_t x);
static q_flight_t *flight_find(queue_t *q, uint64_t id, uint32_t idx);
static void flight_add(queue_t *q, uint64_t id, uint32_t idx, q_dom_t *d, uint64_t bytes);
static q_dom_t *dom_get(queue_t *q, const char *name, size_t len);
static void dom_release(queue_t *q, q_dom_t *d);
static q_round_t *round_get(queue_t *q, uint64_t id);
static void round_drop(queue_t *q, q_round_t *r);
static void kick_cb(uv_timer_t *t);

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
    SL_ASSERT_MAIN_THREAD();
    q->q_flight_cap = 1024;
    q->q_flight = xcalloc(q->q_flight_cap, sizeof(q_flight_t));
    q->q_doms_cap = 256;
    q->q_doms = xcalloc(q->q_doms_cap, sizeof(q_dom_t *));
}

void q_sched_free(queue_t *q)
{
    SL_ASSERT_MAIN_THREAD();
    for (size_t i = 0; i < q->q_rounds_cap; i++) {
        while (q->q_rounds[i] != NULL) {
            q_round_t *r = q->q_rounds[i];
            q->q_rounds[i] = r->r_next;
            free(r);
        }
    }
    free(q->q_rounds);
    q->q_rounds = NULL;
    q->q_rounds_cap = q->q_rounds_n = 0;
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
    Q_ASSERT_QUEUE_THREAD(q);
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
    round_get(q, id)->r_inflight++;
    d->d_active++;
    q->q_active_total++;
    q->q_active_bytes += bytes;
    atomic_store_explicit(&q->q_stats.qs_active_bytes, q->q_active_bytes, memory_order_relaxed);
}

void q_flight_del(queue_t *q, uint64_t id, uint32_t idx)
{
    Q_ASSERT_QUEUE_THREAD(q);
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
    q_round_t *r = q_round_find(q, id);
    if (r != NULL && --r->r_inflight == 0)
        round_drop(q, r);
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

q_round_t *q_round_find(queue_t *q, uint64_t id)
{
    if (q->q_rounds == NULL)
        return NULL;
    for (q_round_t *r = q->q_rounds[mix64(id) & (q->q_rounds_cap - 1)]; r; r = r->r_next)
        if (r->r_msgid == id)
            return r;
    return NULL;
}

/* The round of message id, created empty. */
static q_round_t *round_get(queue_t *q, uint64_t id)
{
    q_round_t *r = q_round_find(q, id);
    if (r != NULL)
        return r;
    if (q->q_rounds_n >= q->q_rounds_cap) { /* grow: rehash */
        size_t cap = q->q_rounds_cap ? q->q_rounds_cap * 2 : 256;
        q_round_t **nt = xcalloc(cap, sizeof(*nt));
        for (size_t i = 0; i < q->q_rounds_cap; i++) {
            while (q->q_rounds[i] != NULL) {
                q_round_t *x = q->q_rounds[i];
                q->q_rounds[i] = x->r_next;
                size_t b = mix64(x->r_msgid) & (cap - 1);
                x->r_next = nt[b];
                nt[b] = x;
            }
        }
        free(q->q_rounds);
        q->q_rounds = nt;
        q->q_rounds_cap = cap;
    }
    r = xcalloc(1, sizeof(*r));
    r->r_msgid = id;
    size_t b = mix64(id) & (q->q_rounds_cap - 1);
    r->r_next = q->q_rounds[b];
    q->q_rounds[b] = r;
    q->q_rounds_n++;
    return r;
}

static void round_drop(queue_t *q, q_round_t *r)
{
    q_round_t **pp = &q->q_rounds[mix64(r->r_msgid) & (q->q_rounds_cap - 1)];
    while (*pp != r)
        pp = &(*pp)->r_next;
    *pp = r->r_next;
    q->q_rounds_n--;
    free(r);
}

void q_rounds_foreach(queue_t *q, void (*fn)(q_round_t *r, void *arg), void *arg)
{
    Q_ASSERT_QUEUE_THREAD(q);
    for (size_t i = 0; i < q->q_rounds_cap; i++)
        for (q_round_t *r = q->q_rounds[i]; r != NULL; r = r->r_next)
            fn(r, arg);
}

/* ------------------------------------------------------------ scan */

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

/* A dispatch of message id (mr, decoded in the scan's txn) to domain dom,
 * with body, a copy of the stored message the caller allocated (its size
 * plus a NUL). Its recipients come with group_add_rcpt. */
static queue_dispatch_t *dispatch_new(uint64_t id, const char *dom, const q_msg_rec_t *mr,
                                      char *body)
{
    queue_dispatch_t *qd = xcalloc(1, sizeof(*qd));
    qd->qd_msgid = id;
    qd->qd_domain = xstrdup(dom);
    qd->qd_sender = xstrndup(mr->mr_sender ? mr->mr_sender : "", mr->mr_sender_len);
    qd->qd_job = dupn(mr->mr_job, mr->mr_job_len);
    qd->qd_envid = dupn(mr->mr_envid, mr->mr_envid_len);
    qd->qd_auth_user = dupn(mr->mr_auth, mr->mr_auth_len);
    qd->qd_flags = mr->mr_flags & (uint8_t)~Q_F_HDRS;
    qd->qd_arrival = mr->mr_arrival;
    qd->qd_body = body;
    memcpy(qd->qd_body, mr->mr_body, mr->mr_body_len);
    qd->qd_body[mr->mr_body_len] = '\0';
    qd->qd_body_len = mr->mr_body_len;
    qd->qd_pool = -1;
    return qd;
}

static void group_add_rcpt(scan_group_t *g, uint32_t idx, const q_rcpt_rec_t *rr)
{
    queue_dispatch_t *qd = g->sg_d;
    if (qd->qd_nrcpt == g->sg_cap) {
        g->sg_cap = g->sg_cap ? g->sg_cap * 2 : 4;
        qd->qd_rcpts = xrealloc(qd->qd_rcpts, (size_t)g->sg_cap * sizeof(queue_rcpt_out_t));
    }
    qd->qd_rcpts[qd->qd_nrcpt++] = (queue_rcpt_out_t){
        .qo_idx = idx,
        .qo_addr = xstrndup(rr->rr_addr, rr->rr_addr_len),
        .qo_orcpt = dupn(rr->rr_orcpt, rr->rr_orcpt_len),
        .qo_notify = rr->rr_notify,
        .qo_attempts = rr->rr_attempts,
    };
}

/* queue.active_size in force: the configured one, capped under ulimit -v
 * (looked at again every second: prlimit may lower it at run time). */
static uint64_t scan_active_size(queue_t *q)
{
    const cfg_t *c = q->q_cfg;
    if (q->q_last_scan_us >= q->q_as_when + 1000000) {
        q->q_as_when = q->q_last_scan_us;
        q->q_as_cap = mem_budget_cap(c->c_active_size, q->q_active_bytes);
        atomic_store_explicit(&q->q_stats.qs_active_limit, q->q_as_cap, memory_order_relaxed);
    }
    return MIN(c->c_active_size, q->q_as_cap);
}

/* Message id's record, decoded into *mr (borrowed from txn); false when it
 * is gone or does not decode. */
static bool scan_msg(queue_t *q, MDB_txn *txn, uint64_t id, q_msg_rec_t *mr)
{
    uint8_t mk[Q_MSG_KEY_LEN];
    q_msg_key(mk, id);
    MDB_val mkv = {Q_MSG_KEY_LEN, mk}, mv;
    return mdb_get(txn, q->q_dbi_msg, &mkv, &mv) == 0 &&
           q_msg_decode(mv.mv_data, mv.mv_size, mr) == 0;
}

/* The recipient record a due key (next, msgid, idx) names, decoded into
 * *rr (borrowed from txn); false when it is gone or does not decode. */
static bool scan_rcpt(queue_t *q, MDB_txn *txn, const uint8_t *due_key, q_rcpt_rec_t *rr)
{
    uint8_t rk[Q_RCPT_KEY_LEN];
    memcpy(rk, due_key + 8, Q_RCPT_KEY_LEN);
    MDB_val rkv = {Q_RCPT_KEY_LEN, rk}, rv;
    return mdb_get(txn, q->q_dbi_rcpt, &rkv, &rv) == 0 &&
           q_rcpt_decode(rv.mv_data, rv.mv_size, rr) == 0;
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
    uint64_t active_size = scan_active_size(q);
    if (q->q_active_total >= total || q_holds_held(q, NULL, 0, NULL, 0)) /* `suspend --all` */
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
            have_msg = scan_msg(q, txn, id, &mr);
        }
        q_rcpt_rec_t rr;
        if (!have_msg || !scan_rcpt(q, txn, kp, &rr))
            continue;
        if (q_holds_held(q, rr.rr_addr, rr.rr_addr_len, mr.mr_job, mr.mr_job_len))
            continue; /* domain or job suspended: stays due */
        char dom[256];
        size_t dl = q_addr_domain(rr.rr_addr, rr.rr_addr_len, dom, sizeof(dom));
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
            g->sg_dom = d;
            g->sg_d = dispatch_new(id, dom, &mr, body);
            g->sg_cap = 0;
            charge = mr.mr_body_len;
        }
        group_add_rcpt(g, idx, &rr);
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
    Q_ASSERT_QUEUE_THREAD(q);
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
