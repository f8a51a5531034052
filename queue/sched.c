/*
 * queue/sched.c - the scheduler and the outcomes of delivery attempts.
 *
 *   q_sched_scan        due index -> dispatches (by message and domain)
 *   q_outcomes_process  outcomes -> one write txn per batch (group commit)
 *   q_retry_delay       the retry schedule
 *   DSN                 RFC 3464 reports for bounced / expired recipients
 *
 * Memory holds only the active set: an open-addressing hash of the
 * recipients in flight (msgid, idx) and a counter per destination domain
 * with recipients in flight. The scan walks the `due` index by cursor from
 * the oldest entry up to now, skips recipients in flight, stops when the
 * total window is full, and examines at most Q_SCAN_CAP entries per scan
 * (resuming from there next time), so a million queued recipients for one
 * domain cost a cursor walk, never a million objects.
 * Thread: queue thread only.
 */
#include "queue/admin_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Failed recipients of one message in one outcome batch: one DSN. */
typedef struct dsn_rcpt {
    char *dr_addr, *dr_orcpt, *dr_text, *dr_mx;
    char dr_status[16];
    int dr_code;
} dsn_rcpt_t;

typedef struct dsn {
    uint64_t ds_msgid;
    uint64_t ds_arrival;
    uint8_t ds_flags;
    char *ds_sender;
    char *ds_envid;
    char *ds_orig; /* headers, or the whole message with RET=FULL */
    size_t ds_orig_len;
    int ds_n;
    dsn_rcpt_t *ds_rcpts;
} dsn_t;

typedef struct outcome_ctx {
    dsn_t *dsns;
    int ndsn, capdsn;
    int64_t d_msgs, d_rcpts;
    buf_t acct;
} outcome_ctx_t;

static uint64_t mix64(uint64_t x);
static q_flight_t *flight_find(queue_t *q, uint64_t id, uint32_t idx);
static void flight_add(queue_t *q, uint64_t id, uint32_t idx, q_dom_t *d, uint64_t bytes);
static void flight_del(queue_t *q, uint64_t id, uint32_t idx);
static q_dom_t *dom_get(queue_t *q, const char *name, size_t len);
static void dom_release(queue_t *q, q_dom_t *d);
static void kick_cb(uv_timer_t *t);
static int outcome_apply(queue_t *q, MDB_txn *txn, queue_outcome_t *o, uint64_t now_us,
                         outcome_ctx_t *cx);
static void dsn_add(outcome_ctx_t *cx, uint64_t id, const q_msg_rec_t *mr, const q_rcpt_rec_t *rr,
                    const queue_outcome_t *o, const char *status);
static void dsn_build(queue_t *q, const dsn_t *d, buf_t *out);
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
    if (q->q_octx) {
        dsn_free_all(q->q_octx);
        free(q->q_octx->dsns);
        buf_free(&q->q_octx->acct);
        free(q->q_octx);
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
    if (mr->mr_job)
        q_json_str(b, mr->mr_job, mr->mr_job_len);
    else
        buf_append_str(b, "null");
    buf_append_str(b, ",\"sender\":");
    q_json_str(b, mr->mr_sender ? mr->mr_sender : "", mr->mr_sender_len);
    buf_append_str(b, ",\"recipient\":");
    q_json_str(b, rr->rr_addr, rr->rr_addr_len);
    buf_append_str(b, ",\"domain\":");
    q_json_strz(b, domain);
    buf_append_str(b, ",\"mx\":");
    q_json_strz(b, o->qo_mx);
    buf_append_str(b, ",\"mx_ip\":");
    q_json_strz(b, o->qo_mx_ip);
    buf_append_str(b, ",\"src_ip\":");
    q_json_strz(b, o->qo_src_ip);
    buf_append_str(b, ",\"tls\":");
    q_json_strz(b, o->qo_tls);
    buf_append_str(b, ",\"cipher\":");
    q_json_strz(b, o->qo_cipher);
    buf_append_str(b, ",\"mta_sts\":");
    q_json_strz(b, o->qo_mta_sts[0] ? o->qo_mta_sts : NULL);
    uint64_t now_s = now_us / 1000000;
    buf_printf(
        b, ",\"attempt\":%u,\"queued_seconds\":%llu,\"code\":%d,\"status\":", rr->rr_attempts + 1,
        (unsigned long long)(now_s > mr->mr_arrival ? now_s - mr->mr_arrival : 0), o->qo_code);
    q_json_strz(b, status);
    buf_append_str(b, ",\"text\":");
    q_json_strz(b, o->qo_text);
    buf_append_str(b, ",\"category\":");
    q_json_strz(b, category);
    if (next)
        buf_printf(b, ",\"next_attempt\":%llu", (unsigned long long)next);
    buf_append_str(b, "}\n");
}

static bool dsn_wanted(queue_t *q, const q_msg_rec_t *mr, const q_rcpt_rec_t *rr)
{
    if (!q->q_cfg->c_dsn || mr->mr_sender_len == 0)
        return false; /* never bounce a bounce */
    if (rr->rr_notify == 0)
        return true;
    return (rr->rr_notify & Q_NOTIFY_FAILURE) && !(rr->rr_notify & Q_NOTIFY_NEVER);
}

/* Apply one outcome inside txn. Returns 0 or an LMDB error (the whole
 * batch is then retried or dropped). */
static int outcome_apply(queue_t *q, MDB_txn *txn, queue_outcome_t *o, uint64_t now_us,
                         outcome_ctx_t *cx)
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
    if (!next && (res == Q_OUT_BOUNCED || expire) && dsn_wanted(q, &mr, &rr))
        dsn_add(cx, o->qo_msgid, &mr, &rr, o, status); /* copies from the body: before writes */
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
        nr.rr_code = (uint16_t)o->qo_code;
        nr.rr_status = o->qo_status;
        nr.rr_status_len = (uint8_t)strnlen(o->qo_status, sizeof(o->qo_status));
        nr.rr_text = o->qo_text;
        nr.rr_text_len = (uint16_t)(o->qo_text ? MIN(strlen(o->qo_text), Q_TEXT_MAX) : 0);
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
    q_admin_outcome_note(q, type, now > mr.mr_arrival ? now - mr.mr_arrival : 0);
    return 0;
}

int q_outcomes_apply(queue_t *q, MDB_txn *txn, chan_node_t *first, size_t n)
{
    outcome_ctx_t *cx = q->q_octx;
    Q_ASSERT_QUEUE_THREAD(q);
    buf_reset(&cx->acct);
    dsn_free_all(cx);
    cx->d_msgs = cx->d_rcpts = 0;
    uint64_t now_us = clock_now_us();
    int rc = 0;
    chan_node_t *node = first;
    for (size_t i = 0; rc == 0 && i < n; i++, node = node->cn_next)
        rc = outcome_apply(q, txn, (queue_outcome_t *)node, now_us, cx);
    /* DSNs go in the same txn: a new message from <> to the sender */
    for (int i = 0; rc == 0 && i < cx->ndsn; i++) {
        queue_msg_in_t m;
        memset(&m, 0, sizeof(m));
        m.qm_id = queue_msgid_new();
        m.qm_arrival = now_us / 1000000;
        m.qm_sender = "";
        queue_rcpt_in_t r = {.qr_addr = cx->dsns[i].ds_sender, .qr_notify = 0};
        m.qm_nrcpt = 1;
        m.qm_rcpts = &r;
        buf_init(&m.qm_body, 0);
        dsn_build(q, &cx->dsns[i], &m.qm_body);
        rc = q_insert_msg(q, txn, &m);
        buf_free(&m.qm_body);
        if (rc == 0) {
            char a[17], b[17];
            log_info("%s: dsn=%s to=<%s> failed=%d", queue_msgid_fmt(cx->dsns[i].ds_msgid, a),
                     queue_msgid_fmt(m.qm_id, b), cx->dsns[i].ds_sender, cx->dsns[i].ds_n);
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
    /* Not committed: the recipients stay due and are tried again. */
    chan_node_t *node = first;
    for (size_t i = 0; i < n; i++) {
        chan_node_t *next = node->cn_next;
        queue_outcome_t *o = (queue_outcome_t *)node;
        flight_del(q, o->qo_msgid, o->qo_idx);
        queue_outcome_free(o);
        node = next;
    }
    buf_reset(&cx->acct);
    dsn_free_all(cx);
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

static void dsn_add(outcome_ctx_t *cx, uint64_t id, const q_msg_rec_t *mr, const q_rcpt_rec_t *rr,
                    const queue_outcome_t *o, const char *status)
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
        size_t len = mr->mr_body_len;
        if (!(mr->mr_flags & Q_F_RET_FULL)) {
            /* headers only: up to and including the blank line */
            const char *e = memmem(mr->mr_body, mr->mr_body_len, "\r\n\r\n", 4);
            len = e ? (size_t)(e - mr->mr_body) + 2 : mr->mr_body_len;
        }
        d->ds_orig = xstrndup(mr->mr_body ? mr->mr_body : "", len);
        d->ds_orig_len = len;
    }
    d->ds_rcpts = xrealloc(d->ds_rcpts, (size_t)(d->ds_n + 1) * sizeof(dsn_rcpt_t));
    dsn_rcpt_t *r = &d->ds_rcpts[d->ds_n++];
    memset(r, 0, sizeof(*r));
    r->dr_addr = xstrndup(rr->rr_addr, rr->rr_addr_len);
    r->dr_orcpt = dupn(rr->rr_orcpt, rr->rr_orcpt_len);
    r->dr_text = o->qo_text ? xstrndup(o->qo_text, MIN(strlen(o->qo_text), Q_TEXT_MAX)) : NULL;
    r->dr_mx = o->qo_mx ? xstrdup(o->qo_mx) : NULL;
    snprintf(r->dr_status, sizeof(r->dr_status), "%s", status && *status ? status : "5.0.0");
    r->dr_code = o->qo_code;
}

static void dsn_free_all(outcome_ctx_t *cx)
{
    for (int i = 0; i < cx->ndsn; i++) {
        dsn_t *d = &cx->dsns[i];
        for (int j = 0; j < d->ds_n; j++) {
            free(d->ds_rcpts[j].dr_addr);
            free(d->ds_rcpts[j].dr_orcpt);
            free(d->ds_rcpts[j].dr_text);
            free(d->ds_rcpts[j].dr_mx);
        }
        free(d->ds_rcpts);
        free(d->ds_sender);
        free(d->ds_envid);
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

/* Append text with CR/LF and other controls replaced by spaces (one line). */
static void one_line(buf_t *b, const char *s)
{
    if (s == NULL)
        return;
    for (; *s; s++)
        buf_append(b, (unsigned char)*s < 0x20 ? " " : s, 1);
}

/* RFC 3464 multipart/report for the failed recipients of one message. */
static void dsn_build(queue_t *q, const dsn_t *d, buf_t *out)
{
    const char *host = q->q_cfg->c_hostname ? q->q_cfg->c_hostname : "localhost";
    char now[64], arr[64], idbuf[17], boundary[64];
    uint64_t t = clock_now_s();
    rfc5322_date(now, sizeof(now), t);
    rfc5322_date(arr, sizeof(arr), d->ds_arrival);
    queue_msgid_fmt(d->ds_msgid, idbuf);
    snprintf(boundary, sizeof(boundary), "%s.%llu/%s", idbuf, (unsigned long long)t, host);

    buf_printf(out,
               "From: Mail Delivery System <MAILER-DAEMON@%s>\r\n"
               "To: <%s>\r\n"
               "Subject: Undelivered Mail Returned to Sender\r\n"
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
               "Content-Description: Notification\r\n"
               "Content-Type: text/plain; charset=us-ascii\r\n"
               "\r\n"
               "This is the mail system at host %s.\r\n"
               "\r\n"
               "Your message (queue id %s) could not be delivered to one or more\r\n"
               "recipients. It is attached below.\r\n"
               "\r\n",
               host, d->ds_sender, now, idbuf, (unsigned long long)t, host, boundary, boundary,
               host, idbuf);
    for (int i = 0; i < d->ds_n; i++) {
        const dsn_rcpt_t *r = &d->ds_rcpts[i];
        buf_printf(out, "<%s>: ", r->dr_addr);
        if (r->dr_mx)
            buf_printf(out, "host %s said: ", r->dr_mx);
        if (r->dr_code)
            buf_printf(out, "%d %s ", r->dr_code, r->dr_status);
        one_line(out, r->dr_text ? r->dr_text : "delivery failed");
        buf_append_str(out, "\r\n\r\n");
    }
    buf_printf(out,
               "--%s\r\n"
               "Content-Description: Delivery report\r\n"
               "Content-Type: message/delivery-status\r\n"
               "\r\n"
               "Reporting-MTA: dns; %s\r\n"
               "X-Sluice-Queue-ID: %s\r\n",
               boundary, host, idbuf);
    if (d->ds_envid)
        buf_printf(out, "Original-Envelope-Id: %s\r\n", d->ds_envid);
    buf_printf(out, "Arrival-Date: %s\r\n", arr);
    for (int i = 0; i < d->ds_n; i++) {
        const dsn_rcpt_t *r = &d->ds_rcpts[i];
        buf_printf(out, "\r\nFinal-Recipient: rfc822; %s\r\n", r->dr_addr);
        if (r->dr_orcpt) {
            /* ORCPT is "addr-type;addr" already (RFC 3461 4.2) */
            if (strchr(r->dr_orcpt, ';'))
                buf_printf(out, "Original-Recipient: %s\r\n", r->dr_orcpt);
            else
                buf_printf(out, "Original-Recipient: rfc822; %s\r\n", r->dr_orcpt);
        }
        buf_printf(out, "Action: failed\r\nStatus: %s\r\n", r->dr_status);
        if (r->dr_mx)
            buf_printf(out, "Remote-MTA: dns; %s\r\n", r->dr_mx);
        if (r->dr_code) {
            buf_printf(out, "Diagnostic-Code: smtp; %d %s ", r->dr_code, r->dr_status);
            one_line(out, r->dr_text);
            buf_append_str(out, "\r\n");
        } else if (r->dr_text) {
            buf_append_str(out, "Diagnostic-Code: X-Sluice; ");
            one_line(out, r->dr_text);
            buf_append_str(out, "\r\n");
        }
        buf_printf(out, "Last-Attempt-Date: %s\r\n", now);
    }
    bool full = d->ds_flags & Q_F_RET_FULL;
    buf_printf(out,
               "\r\n--%s\r\n"
               "Content-Description: %s\r\n"
               "Content-Type: %s\r\n"
               "\r\n",
               boundary, full ? "Undelivered Message" : "Undelivered Message Headers",
               full ? "message/rfc822" : "text/rfc822-headers");
    buf_append(out, d->ds_orig, d->ds_orig_len);
    if (d->ds_orig_len < 2 || memcmp(d->ds_orig + d->ds_orig_len - 2, "\r\n", 2) != 0)
        buf_append_str(out, "\r\n");
    buf_printf(out, "\r\n--%s--\r\n", boundary);
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
