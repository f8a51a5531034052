/*
 * queue/admin.c - operator requests on the queue thread (docs/operations.md).
 *
 *   q_admin_request     QUEUES / SUSPEND / RESUME / HOLDS / RETRY / BOUNCE
 *                       (the holds themselves are holds.c's)
 *   q_admin_stop        answer what is still in progress when the queue stops
 *
 * The long requests walk the spool by cursor and never block the queue
 * thread for long: each turn of the loop (a uv_idle handle) examines at
 * most ADM_SCAN_CHUNK records in a fresh transaction, resuming from the
 * key where the previous turn stopped, so submissions and outcomes are
 * committed in between. QUEUES aggregates the `rcpt` db by recipient
 * domain (~0.2 s of cursor walk per million recipients, spread over
 * turns); the counts are exact for a quiet queue and approximate while it
 * moves (each chunk sees its own snapshot). No per-domain counters are
 * kept on the insert path, so reception pays nothing for this.
 * RETRY rewrites the future `due` entries (and the rcpt's next attempt) to
 * now, ADM_BATCH per write transaction. BOUNCE feeds matching recipients to
 * q_outcomes_process() (outcome.c) as operator bounces (qo_admin), so that
 * accounting ("admin_bounce"), DSNs and the message records follow the
 * normal bounce path; recipients in flight are skipped (their attempt
 * decides) and counted; messages that arrive after the request (including
 * the DSNs it creates) are never touched.
 *
 * State: the jobs in progress and their idle handle, in q->q_admin,
 * created on the first request and freed by q_admin_stop.
 * Thread: queue thread only.
 */
#include "queue/queue_int.h"

#include <ctype.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define ADM_SCAN_CHUNK 65536 /* records examined per loop turn */
#define ADM_BATCH 4096       /* recipients rewritten or bounced per turn */
#define ADM_DEFAULT_TOP 20

/* QUEUES: one recipient domain's aggregate. */
typedef struct adm_dom {
    struct adm_dom *ad_next;
    uint32_t ad_hash;
    uint64_t ad_queued, ad_deferred, ad_msgs;
    uint64_t ad_oldest_id, ad_last_id;
    uint64_t ad_next_min;  /* earliest next attempt */
    uint64_t ad_resp_next; /* next attempt of the response kept below */
    int ad_in_flight;
    uint16_t ad_code;
    char ad_status[16];
    char *ad_text; /* owned */
    char ad_name[];
} adm_dom_t;

typedef struct adm_job {
    struct adm_job *j_next;
    queue_req_t *j_req;
    uint8_t j_key[Q_DUE_KEY_LEN]; /* where the next turn starts */
    size_t j_klen;                /* 0: from the start */
    bool j_done;
    uint64_t j_stop_id; /* BOUNCE: messages from this id on are newer than the request */
    uint64_t j_count, j_skipped;
    /* QUEUES */
    adm_dom_t **j_doms;
    size_t j_doms_cap, j_ndoms;
    uint64_t j_total;
    /* BOUNCE: the message filter's verdict for the current message */
    uint64_t j_cur_id;
    bool j_cur_match;
    buf_t j_buf;
} adm_job_t;

typedef struct q_admin {
    queue_t *a_q;
    uv_idle_t a_idle;
    adm_job_t *a_jobs;
    adm_job_t **a_tail;
} q_admin_t;

static q_admin_t *adm_get(queue_t *q);
static void adm_closed_cb(uv_handle_t *h);
static void adm_idle_cb(uv_idle_t *h);
static void adm_reply(queue_req_t *r);
static bool job_step(q_admin_t *a, adm_job_t *j);
static bool step_queues(q_admin_t *a, adm_job_t *j);
static bool step_retry(q_admin_t *a, adm_job_t *j);
static bool step_bounce(q_admin_t *a, adm_job_t *j);
static void job_finish(q_admin_t *a, adm_job_t *j);
static void job_free(adm_job_t *j);

/* ------------------------------------------------------------ helpers */

/* The domain part of addr (after the last '@'); its length in *len. */
static const char *addr_dom(const char *addr, size_t alen, size_t *len)
{
    for (size_t i = alen; i > 0; i--)
        if (addr[i - 1] == '@') {
            *len = alen - i;
            return addr + i;
        }
    *len = 0;
    return addr + alen;
}

static bool dom_eq(const char *name, const char *d, size_t dl)
{
    return strncasecmp(name, d, dl) == 0 && name[dl] == '\0';
}

static uint32_t fnv_lower(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)tolower((unsigned char)s[i])) * 16777619u;
    return h;
}

static q_admin_t *adm_get(queue_t *q)
{
    q_admin_t *a = q->q_admin;
    if (a != NULL)
        return a;
    Q_ASSERT_QUEUE_THREAD(q);
    a = xcalloc(1, sizeof(*a));
    a->a_q = q;
    a->a_tail = &a->a_jobs;
    uv_idle_init(&q->q_loop, &a->a_idle);
    a->a_idle.data = a;
    q->q_admin = a;
    return a;
}

static void adm_reply(queue_req_t *r)
{
    chan_push(r->qq_reply, &r->qq_node);
}

/* ------------------------------------------------------------ requests */

bool q_admin_request(queue_t *q, queue_req_t *r)
{
    Q_ASSERT_QUEUE_THREAD(q);
    if (r->qq_type < QREQ_QUEUES || r->qq_type > QREQ_BOUNCE)
        return false;
    r->qq_result = NULL;
    r->qq_error[0] = '\0';
    q_admin_t *a = adm_get(q);
    if (a == NULL) {
        snprintf(r->qq_error, sizeof(r->qq_error), "operator requests are not available");
        adm_reply(r);
        return true;
    }
    switch (r->qq_type) {
    case QREQ_SUSPEND:
        q_holds_suspend(q, r);
        adm_reply(r);
        return true;
    case QREQ_RESUME:
        q_holds_resume(q, r);
        /* Held recipients are due already: scan from the oldest again. */
        q->q_scan_resume = false;
        q_sched_kick(q);
        adm_reply(r);
        return true;
    case QREQ_HOLDS:
        q_holds_list(q, r);
        adm_reply(r);
        return true;
    default:
        break;
    }
    adm_job_t *j = xcalloc(1, sizeof(*j));
    j->j_req = r;
    j->j_stop_id = queue_msgid_new(); /* everything inserted from now on is newer */
    buf_init(&j->j_buf, 1024);
    if (r->qq_type == QREQ_QUEUES) {
        j->j_doms_cap = 1024;
        j->j_doms = xcalloc(j->j_doms_cap, sizeof(adm_dom_t *));
    }
    *a->a_tail = j;
    a->a_tail = &j->j_next;
    if (!uv_is_active((uv_handle_t *)&a->a_idle))
        uv_idle_start(&a->a_idle, adm_idle_cb);
    return true;
}

/* One chunk of the oldest job per loop turn. */
static void adm_idle_cb(uv_idle_t *h)
{
    q_admin_t *a = h->data;
    Q_ASSERT_QUEUE_THREAD(a->a_q);
    adm_job_t *j = a->a_jobs;
    if (j == NULL || atomic_load(&a->a_q->q_stopping)) {
        uv_idle_stop(h);
        return;
    }
    if (job_step(a, j)) {
        a->a_jobs = j->j_next;
        if (a->a_jobs == NULL)
            a->a_tail = &a->a_jobs;
        job_finish(a, j);
    }
    if (a->a_jobs == NULL)
        uv_idle_stop(h);
}

static bool job_step(q_admin_t *a, adm_job_t *j)
{
    switch (j->j_req->qq_type) {
    case QREQ_QUEUES:
        return step_queues(a, j);
    case QREQ_RETRY:
        return step_retry(a, j);
    case QREQ_BOUNCE:
        return step_bounce(a, j);
    default:
        snprintf(j->j_req->qq_error, sizeof(j->j_req->qq_error), "unknown request %d",
                 (int)j->j_req->qq_type);
        return true;
    }
}

/* ------------------------------------------------------------ QUEUES */

static adm_dom_t *agg_get(adm_job_t *j, const char *d, size_t dl)
{
    uint32_t h = fnv_lower(d, dl);
    adm_dom_t **slot = &j->j_doms[h & (j->j_doms_cap - 1)];
    for (adm_dom_t *x = *slot; x; x = x->ad_next)
        if (x->ad_hash == h && dom_eq(x->ad_name, d, dl))
            return x;
    if (j->j_ndoms >= j->j_doms_cap) { /* grow: rehash into twice the buckets */
        size_t ncap = j->j_doms_cap * 2;
        adm_dom_t **nd = xcalloc(ncap, sizeof(adm_dom_t *));
        for (size_t i = 0; i < j->j_doms_cap; i++) {
            for (adm_dom_t *x = j->j_doms[i], *nx; x; x = nx) {
                nx = x->ad_next;
                x->ad_next = nd[x->ad_hash & (ncap - 1)];
                nd[x->ad_hash & (ncap - 1)] = x;
            }
        }
        free(j->j_doms);
        j->j_doms = nd;
        j->j_doms_cap = ncap;
        slot = &j->j_doms[h & (ncap - 1)];
    }
    adm_dom_t *x = xcalloc(1, sizeof(*x) + dl + 1);
    x->ad_hash = h;
    for (size_t i = 0; i < dl; i++)
        x->ad_name[i] = (char)tolower((unsigned char)d[i]);
    x->ad_next = *slot;
    *slot = x;
    j->j_ndoms++;
    return x;
}

/* A read transaction and a cursor on the rcpt table for one chunk of an
 * operator job; on failure the request says why. */
static int rcpt_cursor(queue_t *q, queue_req_t *r, MDB_txn **txn, MDB_cursor **c)
{
    int rc = mdb_txn_begin(q->q_env, NULL, MDB_RDONLY, txn);
    if (rc == 0 && (rc = mdb_cursor_open(*txn, q->q_dbi_rcpt, c)) != 0)
        mdb_txn_abort(*txn);
    if (rc != 0)
        snprintf(r->qq_error, sizeof(r->qq_error), "spool: %s", mdb_strerror(rc));
    return rc;
}

static bool step_queues(q_admin_t *a, adm_job_t *j)
{
    queue_t *q = a->a_q;
    queue_req_t *r = j->j_req;
    MDB_txn *txn;
    MDB_cursor *c;
    int rc;
    if (rcpt_cursor(q, r, &txn, &c) != 0)
        return true;
    const char *want = r->qq_domain;
    size_t wl = want ? strlen(want) : 0;
    MDB_val k = {j->j_klen, j->j_key}, v;
    rc = mdb_cursor_get(c, &k, &v, j->j_klen ? MDB_SET_RANGE : MDB_FIRST);
    bool finished = true;
    for (size_t n = 0; rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT), n++) {
        if (n >= ADM_SCAN_CHUNK) {
            memcpy(j->j_key, k.mv_data, MIN(k.mv_size, sizeof(j->j_key)));
            j->j_klen = MIN(k.mv_size, sizeof(j->j_key));
            finished = false;
            break;
        }
        q_rcpt_rec_t rr;
        if (k.mv_size != Q_RCPT_KEY_LEN || q_rcpt_decode(v.mv_data, v.mv_size, &rr) != 0)
            continue;
        size_t dl;
        const char *d = addr_dom(rr.rr_addr, rr.rr_addr_len, &dl);
        if (want && (dl != wl || strncasecmp(d, want, wl) != 0))
            continue;
        uint64_t id = q_rd64(k.mv_data);
        j->j_total++;
        adm_dom_t *x = agg_get(j, d, dl);
        x->ad_queued++;
        if (x->ad_last_id != id) {
            x->ad_msgs++;
            x->ad_last_id = id;
            if (x->ad_oldest_id == 0)
                x->ad_oldest_id = id; /* the cursor walks msgids in order */
        }
        if (x->ad_next_min == 0 || rr.rr_next < x->ad_next_min)
            x->ad_next_min = rr.rr_next;
        if (rr.rr_attempts > 0) {
            x->ad_deferred++;
            /* the latest scheduled retry stands for the latest answer */
            if ((rr.rr_code || rr.rr_text_len) && rr.rr_next >= x->ad_resp_next) {
                x->ad_resp_next = rr.rr_next;
                x->ad_code = rr.rr_code;
                snprintf(x->ad_status, sizeof(x->ad_status), "%.*s", (int)rr.rr_status_len,
                         rr.rr_status ? rr.rr_status : "");
                free(x->ad_text);
                x->ad_text = xstrndup(rr.rr_text ? rr.rr_text : "", rr.rr_text_len);
            }
        }
    }
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    return finished;
}

static int agg_cmp(const void *pa, const void *pb)
{
    const adm_dom_t *x = *(adm_dom_t *const *)pa, *y = *(adm_dom_t *const *)pb;
    if (x->ad_queued != y->ad_queued)
        return x->ad_queued > y->ad_queued ? -1 : 1;
    return strcmp(x->ad_name, y->ad_name);
}

static json_object *agg_json(q_admin_t *a, const adm_dom_t *x, const char *name)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "domain", json_object_new_string(name));
    json_object_object_add(o, "queued", json_object_new_int64(x ? (int64_t)x->ad_queued : 0));
    json_object_object_add(o, "messages", json_object_new_int64(x ? (int64_t)x->ad_msgs : 0));
    json_object_object_add(o, "in_flight", json_object_new_int(x ? x->ad_in_flight : 0));
    json_object_object_add(o, "deferred", json_object_new_int64(x ? (int64_t)x->ad_deferred : 0));
    /* message ids are microseconds since the epoch at arrival */
    char t[32];
    json_object_object_add(o, "oldest",
                           x && x->ad_oldest_id ? json_object_new_string(time_fmt_rfc3339(
                                                      x->ad_oldest_id, t, sizeof(t)))
                                                : NULL);
    json_object_object_add(o, "next_attempt", q_jtime_s(x ? x->ad_next_min : 0));
    bool resp = x && x->ad_text;
    json_object_object_add(o, "last_code", q_jcode(resp ? x->ad_code : 0));
    json_object_object_add(o, "last_status",
                           resp ? q_jstr_opt(x->ad_status, strlen(x->ad_status)) : NULL);
    json_object_object_add(o, "last_text",
                           resp ? q_jstr_opt(x->ad_text, strlen(x->ad_text)) : NULL);
    /* is it held? (a job hold is not a domain's) */
    uint64_t until;
    bool held = q_holds_domain(a->a_q, name, &until);
    json_object_object_add(o, "suspended", json_object_new_boolean(held));
    json_object_object_add(o, "suspended_until", q_jtime_s(held ? until : 0));
    return o;
}

static void queues_result(q_admin_t *a, adm_job_t *j)
{
    queue_t *q = a->a_q;
    queue_req_t *r = j->j_req;
    /* in flight, from the scheduler's per-domain counters (queue thread) */
    for (size_t i = 0; q->q_doms && i < q->q_doms_cap; i++) {
        for (q_dom_t *d = q->q_doms[i]; d; d = d->d_next) {
            if (d->d_active <= 0)
                continue;
            if (r->qq_domain && strcasecmp(r->qq_domain, d->d_name) != 0)
                continue;
            agg_get(j, d->d_name, strlen(d->d_name))->ad_in_flight = d->d_active;
        }
    }
    json_object *res = json_object_new_object();
    if (r->qq_domain) {
        adm_dom_t *x = NULL;
        if (j->j_ndoms > 0)
            x = agg_get(j, r->qq_domain, strlen(r->qq_domain));
        json_object_object_add(res, "domain", agg_json(a, x, r->qq_domain));
        r->qq_result = res;
        return;
    }
    adm_dom_t **all = xmalloc((j->j_ndoms + 1) * sizeof(adm_dom_t *));
    size_t n = 0;
    for (size_t i = 0; i < j->j_doms_cap; i++)
        for (adm_dom_t *x = j->j_doms[i]; x; x = x->ad_next)
            all[n++] = x;
    qsort(all, n, sizeof(*all), agg_cmp);
    size_t top = r->qq_limit ? r->qq_limit : ADM_DEFAULT_TOP;
    json_object *arr = json_object_new_array();
    for (size_t i = 0; i < n && i < top; i++)
        json_object_array_add(arr, agg_json(a, all[i], all[i]->ad_name));
    free(all);
    json_object_object_add(res, "domains", arr);
    json_object_object_add(res, "total_domains", json_object_new_int64((int64_t)n));
    json_object_object_add(res, "total_recipients", json_object_new_int64((int64_t)j->j_total));
    json_object_object_add(res, "holds", q_holds_json(q));
    r->qq_result = res;
}

/* ------------------------------------------------------------ RETRY */

typedef struct adm_key {
    uint64_t k_next, k_id;
    uint32_t k_idx;
} adm_key_t;

static bool step_retry(q_admin_t *a, adm_job_t *j)
{
    queue_t *q = a->a_q;
    queue_req_t *r = j->j_req;
    uint64_t now = clock_now_s();
    adm_key_t *keys = xmalloc(ADM_BATCH * sizeof(adm_key_t));
    size_t nk = 0;
    bool finished = true;
    int rc;
    for (int attempt = 0;; attempt++) {
        MDB_txn *txn = NULL;
        MDB_cursor *c = NULL;
        nk = 0;
        finished = true;
        if ((rc = mdb_txn_begin(q->q_env, NULL, 0, &txn)) != 0)
            break;
        if ((rc = mdb_cursor_open(txn, q->q_dbi_due, &c)) != 0) {
            mdb_txn_abort(txn);
            break;
        }
        uint8_t start[Q_DUE_KEY_LEN];
        if (j->j_klen) {
            memcpy(start, j->j_key, Q_DUE_KEY_LEN);
        } else {
            q_due_key(start, now + 1, 0, 0); /* only future entries are deferred */
        }
        MDB_val k = {Q_DUE_KEY_LEN, start}, v;
        size_t n = 0;
        uint8_t resume[Q_DUE_KEY_LEN];
        for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0;
             rc = mdb_cursor_get(c, &k, &v, MDB_NEXT), n++) {
            if (k.mv_size != Q_DUE_KEY_LEN)
                continue;
            if (n >= ADM_SCAN_CHUNK || nk == ADM_BATCH) {
                memcpy(resume, k.mv_data, Q_DUE_KEY_LEN);
                finished = false;
                break;
            }
            const uint8_t *kp = k.mv_data;
            uint64_t t = q_rd64(kp), id = q_rd64(kp + 8);
            uint32_t idx = q_rd32(kp + 16);
            if (t <= now || q_sched_in_flight(q, id, idx))
                continue;
            if (r->qq_domain) {
                uint8_t rk[Q_RCPT_KEY_LEN];
                memcpy(rk, kp + 8, Q_RCPT_KEY_LEN);
                MDB_val rkv = {Q_RCPT_KEY_LEN, rk}, rv;
                q_rcpt_rec_t rr;
                size_t dl;
                if (mdb_get(txn, q->q_dbi_rcpt, &rkv, &rv) != 0 ||
                    q_rcpt_decode(rv.mv_data, rv.mv_size, &rr) != 0)
                    continue;
                const char *d = addr_dom(rr.rr_addr, rr.rr_addr_len, &dl);
                if (dl != strlen(r->qq_domain) || strncasecmp(d, r->qq_domain, dl) != 0)
                    continue;
            }
            keys[nk++] = (adm_key_t){t, id, idx};
        }
        mdb_cursor_close(c);
        rc = 0;
        /* rewrite: the rcpt's next attempt and its due key move to now */
        for (size_t i = 0; rc == 0 && i < nk; i++) {
            uint8_t dk[Q_DUE_KEY_LEN], rk[Q_RCPT_KEY_LEN];
            q_rcpt_key(rk, keys[i].k_id, keys[i].k_idx);
            MDB_val rkv = {Q_RCPT_KEY_LEN, rk}, rv;
            q_rcpt_rec_t rr;
            if ((rc = mdb_get(txn, q->q_dbi_rcpt, &rkv, &rv)) != 0)
                break;
            buf_reset(&j->j_buf);
            buf_append(&j->j_buf, rv.mv_data, rv.mv_size);
            if (q_rcpt_decode(j->j_buf.b_data, j->j_buf.b_len, &rr) != 0)
                continue;
            rr.rr_next = now;
            buf_t enc;
            buf_init(&enc, j->j_buf.b_len + 16);
            q_rcpt_encode(&enc, &rr);
            rv = (MDB_val){enc.b_len, enc.b_data};
            rc = mdb_put(txn, q->q_dbi_rcpt, &rkv, &rv, 0);
            buf_free(&enc);
            if (rc != 0)
                break;
            q_due_key(dk, keys[i].k_next, keys[i].k_id, keys[i].k_idx);
            MDB_val dkv = {Q_DUE_KEY_LEN, dk}, dv = {0, ""};
            if ((rc = mdb_del(txn, q->q_dbi_due, &dkv, NULL)) != 0)
                break;
            q_due_key(dk, now, keys[i].k_id, keys[i].k_idx);
            if ((rc = mdb_put(txn, q->q_dbi_due, &dkv, &dv, 0)) != 0)
                break;
        }
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        if (rc == MDB_MAP_FULL && attempt < 3 && q_map_grow(q) == 0)
            continue;
        if (rc == 0 && !finished) {
            memcpy(j->j_key, resume, Q_DUE_KEY_LEN);
            j->j_klen = Q_DUE_KEY_LEN;
        }
        break;
    }
    free(keys);
    if (rc != 0) {
        snprintf(r->qq_error, sizeof(r->qq_error), "spool: %s (%llu rescheduled before)",
                 mdb_strerror(rc), (unsigned long long)j->j_count);
        return true;
    }
    j->j_count += nk;
    if (nk > 0) {
        q->q_scan_resume = false; /* the rewritten entries sit before the scan's resume key */
        q_sched_kick(q);
    }
    return finished;
}

/* ------------------------------------------------------------ BOUNCE */

/* Does message id match the request's message-level filters? */
static bool bounce_msg_match(queue_t *q, MDB_txn *txn, const queue_req_t *r, uint64_t id,
                             uint64_t now)
{
    if (r->qq_job == NULL && r->qq_sender == NULL && r->qq_older_than == 0)
        return true;
    uint8_t mk[Q_MSG_KEY_LEN];
    q_msg_key(mk, id);
    MDB_val k = {Q_MSG_KEY_LEN, mk}, v;
    q_msg_rec_t mr;
    if (mdb_get(txn, q->q_dbi_msg, &k, &v) != 0 || q_msg_decode(v.mv_data, v.mv_size, &mr) != 0)
        return false;
    if (r->qq_job && (mr.mr_job == NULL || mr.mr_job_len != strlen(r->qq_job) ||
                      memcmp(mr.mr_job, r->qq_job, mr.mr_job_len) != 0))
        return false;
    if (r->qq_sender &&
        (mr.mr_sender_len != strlen(r->qq_sender) ||
         strncasecmp(mr.mr_sender ? mr.mr_sender : "", r->qq_sender, mr.mr_sender_len) != 0))
        return false;
    if (r->qq_older_than && mr.mr_arrival + r->qq_older_than > now)
        return false;
    return true;
}

static bool step_bounce(q_admin_t *a, adm_job_t *j)
{
    queue_t *q = a->a_q;
    queue_req_t *r = j->j_req;
    uint64_t now = clock_now_s();
    MDB_txn *txn;
    MDB_cursor *c;
    int rc;
    if (rcpt_cursor(q, r, &txn, &c) != 0)
        return true;
    chan_node_t *first = NULL, **tail = &first;
    size_t nb = 0;
    bool finished = true;
    MDB_val k = {j->j_klen, j->j_key}, v;
    rc = mdb_cursor_get(c, &k, &v, j->j_klen ? MDB_SET_RANGE : MDB_FIRST);
    for (size_t n = 0; rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT), n++) {
        if (k.mv_size != Q_RCPT_KEY_LEN)
            continue;
        uint64_t id = q_rd64(k.mv_data);
        uint32_t idx = q_rd32((const uint8_t *)k.mv_data + 8);
        if (id >= j->j_stop_id)
            break; /* newer than the request (its own DSNs too) */
        if (n >= ADM_SCAN_CHUNK || nb == ADM_BATCH) {
            memcpy(j->j_key, k.mv_data, Q_RCPT_KEY_LEN);
            j->j_klen = Q_RCPT_KEY_LEN;
            finished = false;
            break;
        }
        if (id != j->j_cur_id) {
            j->j_cur_id = id;
            j->j_cur_match = bounce_msg_match(q, txn, r, id, now);
        }
        if (!j->j_cur_match)
            continue;
        if (r->qq_domain) {
            q_rcpt_rec_t rr;
            size_t dl;
            if (q_rcpt_decode(v.mv_data, v.mv_size, &rr) != 0)
                continue;
            const char *d = addr_dom(rr.rr_addr, rr.rr_addr_len, &dl);
            if (dl != strlen(r->qq_domain) || strncasecmp(d, r->qq_domain, dl) != 0)
                continue;
        }
        if (q_sched_in_flight(q, id, idx)) {
            j->j_skipped++;
            continue;
        }
        queue_outcome_t *o = xcalloc(1, sizeof(*o));
        o->qo_msgid = id;
        o->qo_idx = idx;
        o->qo_result = Q_OUT_BOUNCED;
        o->qo_admin = true;
        snprintf(o->qo_status, sizeof(o->qo_status), "5.0.0");
        o->qo_text = xstrdup("message removed from the queue by the administrator");
        o->qo_category = xstrdup("admin");
        *tail = &o->qo_node;
        tail = &o->qo_node.cn_next;
        nb++;
    }
    *tail = NULL;
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    if (first != NULL) {
        /* the normal outcome path: group commit, accounting, DSNs */
        q_outcomes_process(q, first);
        j->j_count += nb;
    }
    return finished;
}

/* ------------------------------------------------------------ finish */

static void job_finish(q_admin_t *a, adm_job_t *j)
{
    queue_req_t *r = j->j_req;
    if (r->qq_error[0] == '\0') {
        switch (r->qq_type) {
        case QREQ_QUEUES:
            queues_result(a, j);
            break;
        case QREQ_RETRY:
            r->qq_result = json_object_new_object();
            json_object_object_add(r->qq_result, "rescheduled",
                                   json_object_new_int64((int64_t)j->j_count));
            log_info("queue: retry %s: %llu recipients due now",
                     r->qq_domain ? r->qq_domain : "all", (unsigned long long)j->j_count);
            break;
        case QREQ_BOUNCE:
            r->qq_result = json_object_new_object();
            json_object_object_add(r->qq_result, "bounced",
                                   json_object_new_int64((int64_t)j->j_count));
            json_object_object_add(r->qq_result, "skipped_in_flight",
                                   json_object_new_int64((int64_t)j->j_skipped));
            log_info("queue: admin bounce domain=%s job=%s sender=%s older_than=%llu: %llu "
                     "recipients bounced, %llu in flight skipped",
                     r->qq_domain ? r->qq_domain : "*", r->qq_job ? r->qq_job : "*",
                     r->qq_sender ? r->qq_sender : "*", (unsigned long long)r->qq_older_than,
                     (unsigned long long)j->j_count, (unsigned long long)j->j_skipped);
            break;
        default:
            break;
        }
    }
    adm_reply(r);
    job_free(j);
}

static void job_free(adm_job_t *j)
{
    for (size_t i = 0; j->j_doms && i < j->j_doms_cap; i++) {
        for (adm_dom_t *x = j->j_doms[i], *nx; x; x = nx) {
            nx = x->ad_next;
            free(x->ad_text);
            free(x);
        }
    }
    free(j->j_doms);
    buf_free(&j->j_buf);
    free(j);
}

static void adm_closed_cb(uv_handle_t *h)
{
    free(h->data);
}

void q_admin_stop(queue_t *q)
{
    Q_ASSERT_QUEUE_THREAD(q);
    q_admin_t *a = q->q_admin;
    if (a == NULL)
        return;
    q->q_admin = NULL;
    for (adm_job_t *j = a->a_jobs, *nj; j; j = nj) {
        nj = j->j_next;
        queue_req_t *r = j->j_req;
        json_object_put(r->qq_result);
        r->qq_result = NULL;
        snprintf(r->qq_error, sizeof(r->qq_error), "queue is stopping");
        adm_reply(r);
        job_free(j);
    }
    a->a_jobs = NULL;
    uv_idle_stop(&a->a_idle);
    uv_close((uv_handle_t *)&a->a_idle, adm_closed_cb);
}
