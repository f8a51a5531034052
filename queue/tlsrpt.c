/*
 * queue/tlsrpt.c - TLSRPT (RFC 8460) counters in the spool: per UTC day and
 * policy domain, the TLS sessions that succeeded and those that failed,
 * by policy type and failure (result type, receiving MX host and IP).
 *
 *   q_tlsrpt_add      one session's result (the channel of queue_tlsrpt_note)
 *   q_tlsrpt_flush    the counters gathered since the last flush, into the
 *                     `tlsrpt` sub-database, in one write transaction
 *   q_tlsrpt_json     a day's counters as JSON (`sluicectl tlsrpt`)
 *
 * Delivery threads send one event per TLS session outcome; the queue
 * thread adds them up in memory and writes them on its periodic timer
 * (queue.scan_interval, 1 s by default) and at stop, so that a TLS session
 * costs no transaction of its own and a restart loses at most one period.
 * Key: "YYYY-MM-DD" NUL domain NUL policy type NUL result type ("" for a
 * success) NUL MX host NUL IP NUL failure reason; value: the count (u64 BE). A calling file
 * of this one: queue.c; it calls spool.c's encodings.
 *
 * Thread: queue thread only.
 */
#include "queue/queue_int.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TR_BUCKETS 256
#define TR_KEY_MAX 700

typedef struct tr_ent {
    struct tr_ent *te_next;
    uint64_t te_count;
    size_t te_len;
    char te_key[];
} tr_ent_t;

struct q_tlsrpt {
    tr_ent_t *tr_b[TR_BUCKETS];
    size_t tr_n;
};

static size_t tr_key(char *k, const char *day, const char *dom, const char *ptype,
                     const char *result, const char *mx, const char *ip, const char *reason);

void q_tlsrpt_day(uint64_t unix_s, char day[11])
{
    time_t t = (time_t)unix_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(day, 11, "%Y-%m-%d", &tm);
}

/* The parts joined by NULs (each cut to fit), and the length. */
static size_t tr_key(char *k, const char *day, const char *dom, const char *ptype,
                     const char *result, const char *mx, const char *ip, const char *reason)
{
    const char *parts[] = {day, dom, ptype, result, mx, ip, reason};
    size_t caps[] = {10, 253, 16, 40, 253, 46, 64};
    size_t n = 0;
    for (size_t i = 0; i < ARRAY_SIZE(parts); i++) {
        size_t l = strnlen(parts[i] ? parts[i] : "", caps[i]);
        memcpy(k + n, parts[i] ? parts[i] : "", l);
        n += l;
        if (i + 1 < ARRAY_SIZE(parts))
            k[n++] = '\0';
    }
    return n;
}

void q_tlsrpt_add(queue_t *q, uint64_t unix_s, const char *dom, const char *ptype,
                  const char *result, const char *reason, const char *mx, const char *ip)
{
    Q_ASSERT_QUEUE_THREAD(q);
    if (q->q_tlsrpt == NULL)
        q->q_tlsrpt = xcalloc(1, sizeof(*q->q_tlsrpt));
    struct q_tlsrpt *tr = q->q_tlsrpt;
    char day[11], k[TR_KEY_MAX];
    q_tlsrpt_day(unix_s, day);
    size_t len = tr_key(k, day, dom, ptype, result, mx, ip, result && result[0] ? reason : "");
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)k[i]) * 16777619u;
    tr_ent_t **pp = &tr->tr_b[h % TR_BUCKETS];
    for (tr_ent_t *e = *pp; e != NULL; e = e->te_next) {
        if (e->te_len == len && memcmp(e->te_key, k, len) == 0) {
            e->te_count++;
            return;
        }
    }
    tr_ent_t *e = xmalloc(sizeof(*e) + len);
    memcpy(e->te_key, k, len);
    e->te_len = len;
    e->te_count = 1;
    e->te_next = *pp;
    *pp = e;
    tr->tr_n++;
}

static void tr_clear(struct q_tlsrpt *tr)
{
    for (int i = 0; i < TR_BUCKETS; i++) {
        while (tr->tr_b[i] != NULL) {
            tr_ent_t *e = tr->tr_b[i];
            tr->tr_b[i] = e->te_next;
            free(e);
        }
    }
    tr->tr_n = 0;
}

void q_tlsrpt_flush(queue_t *q)
{
    Q_ASSERT_QUEUE_THREAD(q);
    struct q_tlsrpt *tr = q->q_tlsrpt;
    if (tr == NULL || tr->tr_n == 0)
        return;
    MDB_txn *txn;
    int rc = mdb_txn_begin(q->q_env, NULL, 0, &txn);
    for (int i = 0; rc == 0 && i < TR_BUCKETS; i++) {
        for (tr_ent_t *e = tr->tr_b[i]; rc == 0 && e != NULL; e = e->te_next) {
            MDB_val k = {e->te_len, e->te_key}, v;
            uint64_t n = e->te_count;
            rc = mdb_get(txn, q->q_dbi_tlsrpt, &k, &v);
            if (rc == 0 && v.mv_size == 8)
                n += q_rd64(v.mv_data);
            else if (rc != MDB_NOTFOUND && rc != 0)
                break;
            uint8_t val[8];
            q_be64(val, n);
            v.mv_size = 8;
            v.mv_data = val;
            rc = mdb_put(txn, q->q_dbi_tlsrpt, &k, &v, 0);
        }
    }
    if (rc == 0)
        rc = mdb_txn_commit(txn);
    else if (txn != NULL)
        mdb_txn_abort(txn);
    if (rc != 0) /* the spool is full or broken: the reports lose these, mail does not */
        log_warn("tlsrpt: counters not saved: %s", mdb_strerror(rc));
    tr_clear(tr);
}

void q_tlsrpt_free(queue_t *q)
{
    if (q->q_tlsrpt == NULL)
        return;
    tr_clear(q->q_tlsrpt);
    free(q->q_tlsrpt);
    q->q_tlsrpt = NULL;
}

/* The NUL-separated parts of a key, or false. */
bool q_tlsrpt_split(const MDB_val *k, const char *parts[Q_TLSRPT_PARTS],
                    size_t lens[Q_TLSRPT_PARTS])
{
    const char *p = k->mv_data, *end = p + k->mv_size;
    for (int i = 0; i < Q_TLSRPT_PARTS; i++) {
        const char *z = p < end ? memchr(p, '\0', (size_t)(end - p)) : NULL;
        if (z == NULL && i < Q_TLSRPT_PARTS - 1)
            return false;
        if (z == NULL)
            z = end;
        parts[i] = p;
        lens[i] = (size_t)(z - p);
        p = z + 1;
    }
    return true;
}

static json_object *tr_find(json_object *arr, const char *key, const char *s, size_t n)
{
    size_t len = json_object_array_length(arr);
    for (size_t i = 0; i < len; i++) {
        json_object *o = json_object_array_get_idx(arr, i), *v;
        if (json_object_object_get_ex(o, key, &v) && (size_t)json_object_get_string_len(v) == n &&
            memcmp(json_object_get_string(v), s, n) == 0)
            return o;
    }
    return NULL;
}

static void tr_inc(json_object *o, const char *key, uint64_t n)
{
    json_object *v;
    uint64_t cur = json_object_object_get_ex(o, key, &v) ? (uint64_t)json_object_get_int64(v) : 0;
    json_object_object_add(o, key, json_object_new_int64((int64_t)(cur + n)));
}

json_object *q_tlsrpt_json(queue_t *q, MDB_txn *txn, const char *day, const char *domain)
{
    json_object *doms = json_object_new_array();
    MDB_cursor *c;
    if (mdb_cursor_open(txn, q->q_dbi_tlsrpt, &c) != 0)
        return doms;
    size_t dl = strlen(day);
    char start[12];
    snprintf(start, sizeof(start), "%s", day);
    MDB_val k = {dl, start}, v; /* "YYYY-MM-DD" sorts just before its day's keys */
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        const char *p[Q_TLSRPT_PARTS];
        size_t l[Q_TLSRPT_PARTS];
        if (!q_tlsrpt_split(&k, p, l) || l[0] != dl || memcmp(p[0], day, dl) != 0)
            break;
        if (v.mv_size != 8)
            continue;
        if (domain != NULL && (strlen(domain) != l[1] || memcmp(domain, p[1], l[1]) != 0))
            continue;
        uint64_t n = q_rd64(v.mv_data);
        json_object *d = tr_find(doms, "domain", p[1], l[1]);
        if (d == NULL) {
            d = json_object_new_object();
            json_object_object_add(d, "domain", json_object_new_string_len(p[1], (int)l[1]));
            json_object_object_add(d, "policies", json_object_new_array());
            json_object_array_add(doms, d);
        }
        json_object *pols = json_object_object_get(d, "policies");
        json_object *pol = tr_find(pols, "policy_type", p[2], l[2]);
        if (pol == NULL) {
            pol = json_object_new_object();
            json_object_object_add(pol, "policy_type", json_object_new_string_len(p[2], (int)l[2]));
            json_object_object_add(pol, "successful", json_object_new_int64(0));
            json_object_object_add(pol, "failed", json_object_new_int64(0));
            json_object_object_add(pol, "failures", json_object_new_array());
            json_object_array_add(pols, pol);
        }
        if (l[3] == 0) {
            tr_inc(pol, "successful", n);
            continue;
        }
        tr_inc(pol, "failed", n);
        json_object *f = json_object_new_object();
        json_object_object_add(f, "result_type", json_object_new_string_len(p[3], (int)l[3]));
        json_object_object_add(f, "receiving_mx_hostname",
                               l[4] ? json_object_new_string_len(p[4], (int)l[4]) : NULL);
        json_object_object_add(f, "receiving_ip",
                               l[5] ? json_object_new_string_len(p[5], (int)l[5]) : NULL);
        json_object_object_add(f, "failure_reason",
                               l[6] ? json_object_new_string_len(p[6], (int)l[6]) : NULL);
        json_object_object_add(f, "count", json_object_new_int64((int64_t)n));
        json_object_array_add(json_object_object_get(pol, "failures"), f);
    }
    mdb_cursor_close(c);
    return doms;
}
