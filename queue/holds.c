/*
 * queue/holds.c - delivery holds: `sluicectl suspend DOMAIN | --job J | --all`
 * (docs/operations.md).
 *
 *   q_holds_held        the scheduler's one question: is this recipient held
 *                       (or, without a recipient, is every delivery held)?
 *   q_holds_suspend / q_holds_resume / q_holds_list   QREQ_SUSPEND / RESUME / HOLDS
 *   q_holds_json / q_holds_domain                     for QUEUES (admin.c)
 *
 * Holds live in memory on the queue thread (q->q_holds, created on first
 * use) and in the meta db ("hold:*", "hold:d:<domain>", "hold:j:<job>" ->
 * until, 8 bytes BE, 0 = until resumed), so they survive a restart; one
 * with an end time expires by itself. The scheduler skips held recipients:
 * they stay due on disk and go out at the first scan after the hold ends
 * (admin.c rescans from the oldest entry after a resume).
 *
 * Calls spool.c (q_map_grow, the key encodings) and acct.c (q_jtime_s)
 * only: the scheduler and admin.c call here, never the other way round.
 * Thread: queue thread only; q_holds_free on the main thread once the
 * queue thread has ended.
 */
#include "queue/queue_int.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HOLD_MAX 10000
#define HOLD_PREFIX "hold:"

typedef struct hold {
    char h_type;      /* 'd' domain, 'j' job, '*' everything */
    char *h_name;     /* owned; NULL for '*' */
    uint64_t h_until; /* unix s; 0 = until resumed */
} hold_t;

struct q_holds {
    hold_t *hs_v;
    int hs_n, hs_cap;
};

static q_holds_t *holds_get(queue_t *q);
static void hold_add(q_holds_t *hs, char type, const char *name, size_t nlen, uint64_t until);
static void hold_del(q_holds_t *hs, int i);
static void hold_expire(q_holds_t *hs, uint64_t now);
static int holds_load(queue_t *q, q_holds_t *hs);
static int holds_save(queue_t *q, q_holds_t *hs);

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

/* The holds, loaded from the spool on first use. */
static q_holds_t *holds_get(queue_t *q)
{
    q_holds_t *hs = q->q_holds;
    if (hs != NULL)
        return hs;
    Q_ASSERT_QUEUE_THREAD(q);
    hs = xcalloc(1, sizeof(*hs));
    q->q_holds = hs;
    holds_load(q, hs);
    return hs;
}

void q_holds_free(queue_t *q)
{
    SL_ASSERT_MAIN_THREAD();
    q_holds_t *hs = q->q_holds;
    if (hs == NULL)
        return;
    for (int i = 0; i < hs->hs_n; i++)
        free(hs->hs_v[i].h_name);
    free(hs->hs_v);
    free(hs);
    q->q_holds = NULL;
}

/* ------------------------------------------------------------ the set */

static void hold_add(q_holds_t *hs, char type, const char *name, size_t nlen, uint64_t until)
{
    for (int i = 0; i < hs->hs_n; i++) {
        hold_t *h = &hs->hs_v[i];
        if (h->h_type == type &&
            (type == '*' || (strlen(h->h_name) == nlen && memcmp(h->h_name, name, nlen) == 0))) {
            h->h_until = until;
            return;
        }
    }
    if (hs->hs_n == hs->hs_cap) {
        hs->hs_cap = hs->hs_cap ? hs->hs_cap * 2 : 8;
        hs->hs_v = xrealloc(hs->hs_v, (size_t)hs->hs_cap * sizeof(hold_t));
    }
    hs->hs_v[hs->hs_n++] = (hold_t){
        .h_type = type,
        .h_name = type == '*' ? NULL : xstrndup(name, nlen),
        .h_until = until,
    };
}

static void hold_del(q_holds_t *hs, int i)
{
    free(hs->hs_v[i].h_name);
    hs->hs_v[i] = hs->hs_v[--hs->hs_n];
}

/* Drop holds whose time is up (in memory; holds_save drops them on disk). */
static void hold_expire(q_holds_t *hs, uint64_t now)
{
    for (int i = 0; i < hs->hs_n;) {
        hold_t *h = &hs->hs_v[i];
        if (h->h_until != 0 && now >= h->h_until) {
            log_info("queue: hold on %s%s expired", h->h_type == 'j' ? "job " : "",
                     h->h_name ? h->h_name : "all delivery");
            hold_del(hs, i);
            continue;
        }
        i++;
    }
}

/* ------------------------------------------------------------ the meta db */

static int holds_load(queue_t *q, q_holds_t *hs)
{
    MDB_txn *txn;
    MDB_cursor *c;
    uint64_t now = clock_now_s();
    if (mdb_txn_begin(q->q_env, NULL, MDB_RDONLY, &txn) != 0)
        return SL_ESPOOL;
    if (mdb_cursor_open(txn, q->q_dbi_meta, &c) != 0) {
        mdb_txn_abort(txn);
        return SL_ESPOOL;
    }
    size_t pl = strlen(HOLD_PREFIX);
    MDB_val k = {pl, HOLD_PREFIX}, v;
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
         rc == 0 && k.mv_size > pl && memcmp(k.mv_data, HOLD_PREFIX, pl) == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        const char *p = (const char *)k.mv_data + pl;
        size_t n = k.mv_size - pl;
        uint64_t until = v.mv_size == 8 ? q_rd64(v.mv_data) : 0;
        if (until != 0 && until <= now)
            continue;
        if (n == 1 && p[0] == '*')
            hold_add(hs, '*', NULL, 0, until);
        else if (n > 2 && (p[0] == 'd' || p[0] == 'j') && p[1] == ':')
            hold_add(hs, p[0], p + 2, n - 2, until);
    }
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    if (hs->hs_n > 0)
        log_info("queue: %d delivery hold%s in force (sluicectl suspended)", hs->hs_n,
                 hs->hs_n == 1 ? "" : "s");
    return 0;
}

/* Rewrite every "hold:" key of the meta db from memory, in one write txn. */
static int holds_save(queue_t *q, q_holds_t *hs)
{
    size_t pl = strlen(HOLD_PREFIX);
    int rc = 0;
    for (int attempt = 0; attempt < 4; attempt++) {
        MDB_txn *txn = NULL;
        MDB_cursor *c = NULL;
        buf_t old; /* the keys on disk now: length byte + key */
        buf_init(&old, 256);
        if ((rc = mdb_txn_begin(q->q_env, NULL, 0, &txn)) != 0) {
            buf_free(&old);
            return rc;
        }
        if ((rc = mdb_cursor_open(txn, q->q_dbi_meta, &c)) == 0) {
            MDB_val k = {pl, HOLD_PREFIX}, v;
            for (int g = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
                 g == 0 && k.mv_size >= pl && k.mv_size < 256 &&
                 memcmp(k.mv_data, HOLD_PREFIX, pl) == 0;
                 g = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
                uint8_t l = (uint8_t)k.mv_size;
                buf_append(&old, &l, 1);
                buf_append(&old, k.mv_data, k.mv_size);
            }
            mdb_cursor_close(c);
        }
        for (size_t off = 0; rc == 0 && off < old.b_len;) {
            uint8_t l = (uint8_t)old.b_data[off];
            MDB_val dk = {l, old.b_data + off + 1};
            rc = mdb_del(txn, q->q_dbi_meta, &dk, NULL);
            off += 1 + l;
        }
        buf_free(&old);
        for (int i = 0; rc == 0 && i < hs->hs_n; i++) {
            hold_t *h = &hs->hs_v[i];
            char key[512];
            int kl = h->h_type == '*'
                         ? snprintf(key, sizeof(key), "%s*", HOLD_PREFIX)
                         : snprintf(key, sizeof(key), "%s%c:%s", HOLD_PREFIX, h->h_type, h->h_name);
            uint8_t val[8];
            q_be64(val, h->h_until);
            MDB_val hk = {(size_t)MIN(kl, 255), key}, hv = {8, val};
            rc = mdb_put(txn, q->q_dbi_meta, &hk, &hv, 0);
        }
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        if (rc == MDB_MAP_FULL && q_map_grow(q) == 0)
            continue;
        break;
    }
    return rc;
}

/* ------------------------------------------------------------ queries */

bool q_holds_held(queue_t *q, const char *addr, size_t addr_len, const char *job, size_t job_len)
{
    Q_ASSERT_QUEUE_THREAD(q);
    q_holds_t *hs = holds_get(q);
    if (hs->hs_n == 0)
        return false;
    uint64_t now = clock_now_s();
    if (addr == NULL) { /* once per scan: the holds whose time is up go here */
        hold_expire(hs, now);
        for (int i = 0; i < hs->hs_n; i++)
            if (hs->hs_v[i].h_type == '*')
                return true;
        return false;
    }
    size_t dl;
    const char *d = addr_dom(addr, addr_len, &dl);
    for (int i = 0; i < hs->hs_n; i++) {
        const hold_t *h = &hs->hs_v[i];
        if (h->h_until != 0 && now >= h->h_until)
            continue;
        if (h->h_type == '*')
            return true;
        if (h->h_type == 'd' && dom_eq(h->h_name, d, dl))
            return true;
        if (h->h_type == 'j' && job != NULL && strlen(h->h_name) == job_len &&
            memcmp(h->h_name, job, job_len) == 0)
            return true;
    }
    return false;
}

bool q_holds_domain(queue_t *q, const char *domain, uint64_t *until)
{
    Q_ASSERT_QUEUE_THREAD(q);
    q_holds_t *hs = holds_get(q);
    bool held = false;
    uint64_t now = clock_now_s();
    *until = 0;
    for (int i = 0; i < hs->hs_n; i++) {
        const hold_t *h = &hs->hs_v[i];
        if (h->h_until != 0 && now >= h->h_until)
            continue;
        if (h->h_type == '*' || (h->h_type == 'd' && strcasecmp(h->h_name, domain) == 0)) {
            held = true;
            *until = h->h_until;
        }
    }
    return held;
}

json_object *q_holds_json(queue_t *q)
{
    Q_ASSERT_QUEUE_THREAD(q);
    q_holds_t *hs = holds_get(q);
    json_object *arr = json_object_new_array();
    for (int i = 0; i < hs->hs_n; i++) {
        hold_t *h = &hs->hs_v[i];
        json_object *o = json_object_new_object();
        json_object_object_add(o, "type",
                               json_object_new_string(h->h_type == 'd'   ? "domain"
                                                      : h->h_type == 'j' ? "job"
                                                                         : "all"));
        json_object_object_add(o, "name", h->h_name ? json_object_new_string(h->h_name) : NULL);
        /* the same keys as the shaping suspensions core/server adds to
         * `suspended` (docs/records.md) */
        json_object_object_add(o, "provider", NULL);
        json_object_object_add(o, "by", json_object_new_string("operator"));
        json_object_object_add(o, "until", q_jtime_s(h->h_until)); /* null: until resumed */
        json_object_object_add(o, "persistent", json_object_new_boolean(1));
        json_object_array_add(arr, o);
    }
    return arr;
}

/* ------------------------------------------------------------ requests */

/* The record of an operator's suspend or resume (docs/records.md):
 * scope and name of the hold, its end (suspended; null: until resumed)
 * or how many holds went (resumed). */
static void holds_record(queue_t *q, const queue_req_t *r, bool suspend, int removed)
{
    buf_t b;
    buf_init(&b, 256);
    buf_printf(&b, "{\"type\":\"%s\",\"time\":", suspend ? "suspended" : "resumed");
    q_json_time(&b, clock_now_us());
    const char *scope = r->qq_all ? "all" : r->qq_domain && r->qq_domain[0] ? "domain" : "job";
    const char *name = r->qq_all                         ? NULL
                       : r->qq_domain && r->qq_domain[0] ? r->qq_domain
                                                         : r->qq_job;
    buf_printf(&b, ",\"scope\":\"%s\",\"name\":", scope);
    q_json_optz(&b, name);
    buf_append_str(&b, ",\"by\":\"operator\",\"until\":");
    if (suspend)
        q_json_time_s(&b, r->qq_until);
    else
        buf_append_str(&b, "null");
    buf_printf(&b, ",\"holds_removed\":%d}\n", suspend ? 0 : removed);
    q_record_emit(q, b.b_data, b.b_len);
    q_acct_flush(q->q_acct);
    buf_free(&b);
}

void q_holds_suspend(queue_t *q, queue_req_t *r)
{
    Q_ASSERT_QUEUE_THREAD(q);
    q_holds_t *hs = holds_get(q);
    if (r->qq_all)
        hold_add(hs, '*', NULL, 0, r->qq_until);
    else if (r->qq_domain && r->qq_domain[0])
        hold_add(hs, 'd', r->qq_domain, strlen(r->qq_domain), r->qq_until);
    else if (r->qq_job && r->qq_job[0])
        hold_add(hs, 'j', r->qq_job, strlen(r->qq_job), r->qq_until);
    else {
        snprintf(r->qq_error, sizeof(r->qq_error), "suspend needs a domain, a job or all");
        return;
    }
    if (hs->hs_n > HOLD_MAX) {
        hold_del(hs, hs->hs_n - 1);
        snprintf(r->qq_error, sizeof(r->qq_error), "too many holds (at most %d)", HOLD_MAX);
        return;
    }
    hold_expire(hs, clock_now_s());
    int rc = holds_save(q, hs);
    if (rc != 0)
        log_error("spool %s: saving holds: %s (in force until restart)", q->q_path,
                  mdb_strerror(rc));
    log_info("queue: suspended %s%s%s until=%llu", r->qq_all ? "all delivery" : "",
             r->qq_domain && !r->qq_all ? r->qq_domain : "",
             r->qq_job && !r->qq_all && !r->qq_domain ? r->qq_job : "",
             (unsigned long long)r->qq_until);
    holds_record(q, r, true, 0);
    r->qq_result = json_object_new_object();
    json_object_object_add(r->qq_result, "holds", q_holds_json(q));
}

int q_holds_resume(queue_t *q, queue_req_t *r)
{
    Q_ASSERT_QUEUE_THREAD(q);
    q_holds_t *hs = holds_get(q);
    int n = 0;
    for (int i = 0; i < hs->hs_n;) {
        hold_t *h = &hs->hs_v[i];
        bool m = r->qq_all ||
                 (h->h_type == 'd' && r->qq_domain && strcasecmp(h->h_name, r->qq_domain) == 0) ||
                 (h->h_type == 'j' && r->qq_job && strcmp(h->h_name, r->qq_job) == 0);
        if (m) {
            hold_del(hs, i);
            n++;
            continue;
        }
        i++;
    }
    hold_expire(hs, clock_now_s());
    int rc = holds_save(q, hs);
    if (rc != 0)
        log_error("spool %s: saving holds: %s", q->q_path, mdb_strerror(rc));
    log_info("queue: resumed %s%s (%d hold%s removed)", r->qq_all ? "all delivery" : "",
             r->qq_all      ? ""
             : r->qq_domain ? r->qq_domain
             : r->qq_job    ? r->qq_job
                            : "?",
             n, n == 1 ? "" : "s");
    holds_record(q, r, false, n);
    r->qq_result = json_object_new_object();
    json_object_object_add(r->qq_result, "resumed", json_object_new_int(n));
    json_object_object_add(r->qq_result, "holds", q_holds_json(q));
    return n;
}

void q_holds_list(queue_t *q, queue_req_t *r)
{
    Q_ASSERT_QUEUE_THREAD(q);
    hold_expire(holds_get(q), clock_now_s());
    r->qq_result = json_object_new_object();
    json_object_object_add(r->qq_result, "holds", q_holds_json(q));
}
