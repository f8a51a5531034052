/*
 * queue/suppress.c - the suppression list: addresses that must not get
 * mail (docs/bounces-in.md).
 *
 *   queue_supp_normalize        the key form of an address
 *   queue_suppressed / _lookup  the one question (any thread, a read txn)
 *   q_supp_on_bounce            fed by synchronous bounces (outcome.c, in its txn)
 *   queue_supp_report           fed by asynchronous reports (queue.c sends them here)
 *   q_supp_request              sluicectl suppress add|remove|check|list|import
 *
 * Storage: the spool's `suppress` sub-database, key = normalized address,
 * NUL, scope ("" = global), so that every scope of one address sits
 * together (check, remove) and a lookup is one or two point reads. Value:
 * version (1), reason (u8 length + bytes), time (u64 BE), expiry (u64 BE,
 * 0 = never), source (u8 length + bytes). An expired entry counts as absent
 * and is overwritten by the next add; list and export skip it.
 * Normalization: the whole address lower-cased (what mailbox providers
 * do in practice), but for suppression.case_domains (the local part kept
 * as it is) and suppression.fold_domains (Gmail: dots dropped, a +tag cut,
 * then lower-cased). Both lists are copied at open: the same rule for
 * lookups and insertions, on every thread, until a restart.
 *
 * Threads: the queue thread is the only writer. Lookups run on any thread
 * with their own read transaction (MDB_NOTLS); the one thing they must not
 * meet is map growth (mdb_env_set_mapsize needs no reader in the process),
 * so they hold q_map_lock shared and q_map_grow holds it exclusive.
 */
#include "queue/queue_int.h"

#include <ctype.h>
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SUPP_VERSION 1
#define SUPP_IMPORT_TXN 100000 /* lines per write transaction, sorted before the puts */
#define SUPP_IMPORT_MAX 200000 /* lines per request (the client asks again) */
#define SUPP_LIST_MAX 10000    /* entries per LIST page */
#define SUPP_SCAN_MAX 1000000  /* keys examined per LIST page with filters */
#define SUPP_IMPORT_ERRORS 10  /* errors quoted per request */
#define SUPP_KEY_MAX (QUEUE_SUPP_ADDR_MAX + 1 + QUEUE_SUPP_SCOPE_MAX)

typedef struct q_supp {
    MDB_dbi s_dbi;
    char **s_fold; /* suppression.fold_domains, copied at open (a restart key) */
    char **s_case; /* suppression.case_domains */
    atomic_uint_fast64_t s_entries;
    atomic_uint_fast64_t s_hits;
    queue_supp_hook_fn s_hook; /* several nodes (queue_supp_set_hook), or NULL */
    void *s_hook_arg;
} q_supp_t;

static bool strv_has(char *const *v, const char *s, size_t n);
static size_t supp_key(uint8_t *k, const char *addr, const char *scope);
static int supp_put(queue_t *q, MDB_txn *txn, const char *addr, const char *scope,
                    const char *reason, uint64_t when, uint64_t expires, const char *source);
static int supp_decode(const MDB_val *k, const MDB_val *v, queue_supp_entry_t *e);
static bool reason_ok(const char *r);
static json_object *entry_json(const queue_supp_entry_t *e);
static void supp_count(queue_t *q, MDB_txn *txn);

/* ------------------------------------------------------------ open, free */

/* The normalization's domain lists live as long as the queue: lookups on
 * any thread read them without the config snapshot, which reload swaps. */
static char **strv_dup(char *const *v)
{
    size_t n = 0;
    while (v != NULL && v[n] != NULL)
        n++;
    char **d = xcalloc(n + 1, sizeof(*d));
    for (size_t i = 0; i < n; i++)
        d[i] = xstrdup(v[i]);
    return d;
}

static void strv_free(char **v)
{
    for (size_t i = 0; v != NULL && v[i] != NULL; i++)
        free(v[i]);
    free(v);
}

int q_supp_open(queue_t *q, MDB_txn *txn)
{
    SL_ASSERT_MAIN_THREAD();
    q_supp_t *s = xcalloc(1, sizeof(*s));
    q->q_supp = s;
    s->s_fold = strv_dup(q->q_cfg->c_supp_fold_domains);
    s->s_case = strv_dup(q->q_cfg->c_supp_case_domains);
    int rc = mdb_dbi_open(txn, "suppress", MDB_CREATE, &s->s_dbi);
    if (rc == 0) /* the sent index (suppress_sent.c) */
        rc = mdb_dbi_open(txn, "sent", MDB_CREATE, &q->q_dbi_sent);
    if (rc != 0)
        return rc;
    supp_count(q, txn);
    return 0;
}

void q_supp_free(queue_t *q)
{
    q_supp_t *s = q->q_supp;
    if (s == NULL)
        return;
    strv_free(s->s_fold);
    strv_free(s->s_case);
    free(s);
    q->q_supp = NULL;
}

static void supp_count(queue_t *q, MDB_txn *txn)
{
    MDB_stat st;
    if (mdb_stat(txn, q->q_supp->s_dbi, &st) == 0)
        atomic_store_explicit(&q->q_supp->s_entries, st.ms_entries, memory_order_relaxed);
}

void queue_supp_stats(const queue_t *q, uint64_t *entries, uint64_t *hits)
{
    const q_supp_t *s = q->q_supp;
    *entries = s ? (uint64_t)atomic_load_explicit(&s->s_entries, memory_order_relaxed) : 0;
    *hits = s ? (uint64_t)atomic_load_explicit(&s->s_hits, memory_order_relaxed) : 0;
}

/* ------------------------------------------------------------ keys */

static bool strv_has(char *const *v, const char *s, size_t n)
{
    for (size_t i = 0; v != NULL && v[i] != NULL; i++)
        if (strlen(v[i]) == n && memcmp(v[i], s, n) == 0)
            return true;
    return false;
}

int queue_supp_normalize(const queue_t *q, const char *addr, char *out, size_t outlen)
{
    const char *at = strrchr(addr, '@');
    size_t len = strlen(addr);
    if (at == NULL || at == addr || at[1] == '\0' || len > QUEUE_SUPP_ADDR_MAX || len >= outlen)
        return SL_EPARSE;
    for (const char *p = addr; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f)
            return SL_EPARSE;
    size_t llen = (size_t)(at - addr);
    char dom[256];
    size_t dlen = strlen(at + 1);
    if (dlen >= sizeof(dom))
        return SL_EPARSE;
    for (size_t i = 0; i <= dlen; i++)
        dom[i] = (char)tolower((unsigned char)at[1 + i]);
    if (dlen > 0 && dom[dlen - 1] == '.')
        dom[--dlen] = '\0';
    const q_supp_t *s = q != NULL ? q->q_supp : NULL;
    bool fold = s != NULL && strv_has(s->s_fold, dom, dlen);
    bool keep = s != NULL && !fold && strv_has(s->s_case, dom, dlen);
    size_t o = 0;
    for (size_t i = 0; i < llen; i++) {
        char ch = addr[i];
        if (fold && ch == '+')
            break; /* Gmail: everything from the first '+' is a tag */
        if (fold && ch == '.')
            continue; /* Gmail: dots do not count */
        out[o++] = keep ? ch : (char)tolower((unsigned char)ch);
    }
    if (o == 0)
        return SL_EPARSE; /* "+tag@gmail.com", ".@gmail.com" */
    out[o++] = '@';
    memcpy(out + o, dom, dlen + 1);
    return 0;
}

/* key = address NUL scope; returns its length (k holds SUPP_KEY_MAX). */
static size_t supp_key(uint8_t *k, const char *addr, const char *scope)
{
    size_t a = strlen(addr), sc = scope ? strnlen(scope, QUEUE_SUPP_SCOPE_MAX) : 0;
    memcpy(k, addr, a);
    k[a] = '\0';
    if (sc > 0)
        memcpy(k + a + 1, scope, sc);
    return a + 1 + sc;
}

static int supp_decode(const MDB_val *k, const MDB_val *v, queue_supp_entry_t *e)
{
    const uint8_t *p = v->mv_data, *end = p + v->mv_size;
    const char *kk = k->mv_data, *nul = memchr(kk, '\0', k->mv_size);
    memset(e, 0, sizeof(*e));
    if (nul == NULL || v->mv_size < 2 || p[0] != SUPP_VERSION)
        return SL_EPARSE;
    size_t al = (size_t)(nul - kk), sl = k->mv_size - al - 1;
    if (al > QUEUE_SUPP_ADDR_MAX || sl > QUEUE_SUPP_SCOPE_MAX)
        return SL_EPARSE;
    memcpy(e->se_addr, kk, al);
    memcpy(e->se_scope, nul + 1, sl);
    p++;
    size_t rl = *p++;
    if (rl > QUEUE_SUPP_REASON_MAX || (size_t)(end - p) < rl + 17)
        return SL_EPARSE;
    memcpy(e->se_reason, p, rl);
    p += rl;
    e->se_time = q_rd64(p);
    e->se_expires = q_rd64(p + 8);
    p += 16;
    size_t srcl = *p++;
    if (srcl >= sizeof(e->se_source) || (size_t)(end - p) < srcl)
        return SL_EPARSE;
    memcpy(e->se_source, p, srcl);
    return 0;
}

/* ------------------------------------------------------------ lookups */

/* One entry in force in txn, or not: 1, 0, or an LMDB error. */
static int supp_get(const q_supp_t *s, MDB_txn *txn, const char *norm, const char *scope,
                    uint64_t now, queue_supp_entry_t *out)
{
    uint8_t key[SUPP_KEY_MAX + 1];
    MDB_val k = {supp_key(key, norm, scope), key}, v;
    int rc = mdb_get(txn, s->s_dbi, &k, &v);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc != 0)
        return rc;
    queue_supp_entry_t tmp, *e = out ? out : &tmp;
    if (supp_decode(&k, &v, e) != 0)
        return 0;
    return e->se_expires == 0 || e->se_expires > now ? 1 : 0;
}

int queue_supp_lookup(queue_t *q, const char *addr, const char *scope, queue_supp_entry_t *out)
{
    q_supp_t *s = q->q_supp;
    char norm[QUEUE_SUPP_ADDR_MAX + 1];
    if (s == NULL || queue_supp_normalize(q, addr, norm, sizeof(norm)) != 0)
        return 0;
    uint64_t now = clock_now_s();
    MDB_txn *txn;
    pthread_rwlock_rdlock(&q->q_map_lock);
    int rc = mdb_txn_begin(q->q_env, NULL, MDB_RDONLY, &txn);
    if (rc == 0) {
        rc = 0;
        if (scope != NULL && scope[0] != '\0')
            rc = supp_get(s, txn, norm, scope, now, out);
        if (rc == 0)
            rc = supp_get(s, txn, norm, "", now, out);
        mdb_txn_abort(txn);
    }
    pthread_rwlock_unlock(&q->q_map_lock);
    if (rc < 0 || rc > 1) {
        log_warn("suppression list: lookup of <%s>: %s", log_esc(addr), mdb_strerror(rc));
        return SL_ESPOOL;
    }
    if (rc == 1)
        atomic_fetch_add_explicit(&s->s_hits, 1, memory_order_relaxed);
    return rc;
}

bool queue_suppressed(queue_t *q, const char *addr, const char *scope)
{
    return queue_supp_lookup(q, addr, scope, NULL) == 1;
}

/* ------------------------------------------------------------ writes (queue thread) */

static bool reason_ok(const char *r)
{
    size_t n = strlen(r);
    if (n == 0 || n > QUEUE_SUPP_REASON_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!(islower((unsigned char)r[i]) || isdigit((unsigned char)r[i]) || r[i] == '-'))
            return false;
    return true;
}

#define SUPP_VAL_MAX (2 + QUEUE_SUPP_REASON_MAX + 16 + 1 + 128)

/* An entry's value into val (SUPP_VAL_MAX bytes); returns its length. */
static size_t supp_val(uint8_t *val, const char *reason, uint64_t when, uint64_t expires,
                       const char *source)
{
    size_t rl = MIN(strlen(reason), QUEUE_SUPP_REASON_MAX);
    size_t sl = source ? MIN(strlen(source), 128) : 0;
    size_t n = 0;
    val[n++] = SUPP_VERSION;
    val[n++] = (uint8_t)rl;
    memcpy(val + n, reason, rl);
    n += rl;
    q_be64(val + n, when);
    q_be64(val + n + 8, expires);
    n += 16;
    val[n++] = (uint8_t)sl;
    if (sl > 0)
        memcpy(val + n, source, sl);
    return n + sl;
}

static int supp_put(queue_t *q, MDB_txn *txn, const char *addr, const char *scope,
                    const char *reason, uint64_t when, uint64_t expires, const char *source)
{
    uint8_t key[SUPP_KEY_MAX + 1], val[SUPP_VAL_MAX];
    MDB_val k = {supp_key(key, addr, scope), key},
            v = {supp_val(val, reason, when, expires, source), val};
    int rc = mdb_put(txn, q->q_supp->s_dbi, &k, &v, 0);
    /* the other nodes learn it (delivery/cluster.c); not an import (bulk:
     * each node imports) nor another node's entry (no echo) */
    if (rc == 0 && q->q_supp->s_hook != NULL && source != NULL && strcmp(source, "import") != 0 &&
        strncmp(source, "cluster:", 8) != 0)
        q->q_supp->s_hook(q->q_supp->s_hook_arg, addr, scope, reason, expires);
    return rc;
}

void queue_supp_set_hook(queue_t *q, queue_supp_hook_fn fn, void *arg)
{
    SL_ASSERT_MAIN_THREAD();
    q->q_supp->s_hook = fn;
    q->q_supp->s_hook_arg = arg;
}

/* Is category one the operator feeds the list with? */
static bool category_feeds(const cfg_t *c, const char *category)
{
    if (!c->c_supp_enabled || category == NULL)
        return false;
    if (strcmp(category, "complaint") == 0)
        return c->c_supp_complaints;
    return strv_has(c->c_supp_categories, category, strlen(category));
}

bool queue_supp_header_scope(const cfg_t *cfg, const char *msg, size_t len, char *out,
                             size_t outlen)
{
    const char *name = cfg->c_supp_scope_header, *p = msg, *end = msg + len;
    size_t nl = strlen(name);
    if (nl == 0 || outlen == 0)
        return false;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p)), *le = eol ? eol : end;
        if (le == p || (le == p + 1 && *p == '\r'))
            return false; /* the end of the header block */
        if ((size_t)(le - p) > nl && p[nl] == ':' && strncasecmp(p, name, nl) == 0) {
            const char *v = p + nl + 1, *ve = le > v && le[-1] == '\r' ? le - 1 : le;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            size_t n = (size_t)(ve - v);
            if (n == 0 || n > QUEUE_SUPP_SCOPE_MAX || n >= outlen)
                return false;
            for (size_t i = 0; i < n; i++)
                if ((unsigned char)v[i] < ' ' || (unsigned char)v[i] >= 127)
                    return false;
            memcpy(out, v, n);
            out[n] = '\0';
            return true;
        }
        p = le + 1;
    }
    return false;
}

void q_supp_scope_of(const cfg_t *c, const char *hscope, const char *auth, size_t auth_len,
                     char *dst, size_t dlen)
{
    dst[0] = '\0';
    if (hscope != NULL && hscope[0] != '\0')
        snprintf(dst, dlen, "%s", hscope);
    else if (strcmp(c->c_supp_scope, "auth_user") == 0 && auth != NULL && auth_len > 0)
        snprintf(dst, dlen, "%.*s", (int)MIN(auth_len, QUEUE_SUPP_SCOPE_MAX), auth);
}

static uint64_t expiry_for(const cfg_t *c, const char *reason, uint64_t now)
{
    uint64_t d =
        strcmp(reason, "complaint") == 0 ? c->c_supp_expire_complaints : c->c_supp_expire_bounces;
    return d > 0 ? now + d : 0;
}

int q_supp_on_bounce(queue_t *q, MDB_txn *txn, uint64_t msgid, uint32_t idx, const q_msg_rec_t *mr,
                     const q_rcpt_rec_t *rr, const char *category, const char *hscope)
{
    Q_ASSERT_QUEUE_THREAD(q);
    const cfg_t *c = q->q_cfg;
    if (!category_feeds(c, category) || (mr->mr_flags & Q_F_DSN))
        return 0; /* a DSN of ours bouncing says nothing about a recipient */
    char addr[QUEUE_SUPP_ADDR_MAX + 1], norm[QUEUE_SUPP_ADDR_MAX + 1], scope[129], src[64], id[17];
    if (rr->rr_addr_len > QUEUE_SUPP_ADDR_MAX)
        return 0;
    memcpy(addr, rr->rr_addr, rr->rr_addr_len);
    addr[rr->rr_addr_len] = '\0';
    if (queue_supp_normalize(q, addr, norm, sizeof(norm)) != 0)
        return 0;
    q_supp_scope_of(c, hscope, mr->mr_auth, mr->mr_auth_len, scope, sizeof(scope));
    snprintf(src, sizeof(src), "%s/%u", queue_msgid_fmt(msgid, id), idx);
    uint64_t now = clock_now_s();
    int rc = supp_put(q, txn, norm, scope, category, now, expiry_for(c, category, now), src);
    if (rc == 0)
        log_info("%s suppressed <%s> scope=%s reason=%s", id, log_esc(norm),
                 scope[0] ? log_esc(scope) : "global", category);
    return rc;
}

/* One write transaction around fn, growing the map when it is full. */
static int supp_txn(queue_t *q, int (*fn)(queue_t *q, MDB_txn *txn, void *arg), void *arg)
{
    for (;;) {
        MDB_txn *txn;
        int rc = mdb_txn_begin(q->q_env, NULL, 0, &txn);
        if (rc != 0)
            return rc;
        rc = fn(q, txn, arg);
        if (rc == 0) {
            supp_count(q, txn);
            rc = mdb_txn_commit(txn);
        } else {
            mdb_txn_abort(txn);
        }
        if (rc == MDB_MAP_FULL && q_map_grow(q) == 0)
            continue;
        if (rc != 0) {
            MDB_txn *rt;
            if (mdb_txn_begin(q->q_env, NULL, MDB_RDONLY, &rt) == 0) {
                supp_count(q, rt); /* the count of what stayed */
                mdb_txn_abort(rt);
            }
        }
        return rc;
    }
}

/* ------------------------------------------------------------ asynchronous reports */

typedef struct supp_report {
    const char *addr, *scope, *reason, *source;
} supp_report_t;

/* Another node's entry (queue_supp_remote): its reason and expiry as
 * they are. */
static int remote_put(queue_t *q, MDB_txn *txn, void *arg)
{
    const queue_supp_req_t *sr = arg;
    char norm[QUEUE_SUPP_ADDR_MAX + 1];
    const char *scope = sr->sr_scope ? sr->sr_scope : "";
    if (queue_supp_normalize(q, sr->sr_addrs[0], norm, sizeof(norm)) != 0 ||
        !reason_ok(sr->sr_reason) || strlen(scope) > QUEUE_SUPP_SCOPE_MAX)
        return 0;
    if (sr->sr_if_absent) {
        uint8_t key[SUPP_KEY_MAX + 1];
        MDB_val k = {supp_key(key, norm, scope), key}, v;
        if (mdb_get(txn, q->q_supp->s_dbi, &k, &v) == 0)
            return 0; /* already here (own, an operator's, or learnt before) */
    }
    int rc =
        supp_put(q, txn, norm, scope, sr->sr_reason, clock_now_s(), sr->sr_expires, sr->sr_source);
    if (rc == 0)
        log_info("suppressed <%s> scope=%s reason=%s source=%s", log_esc(norm),
                 scope[0] ? log_esc(scope) : "global", sr->sr_reason, log_esc(sr->sr_source));
    return rc;
}

static int report_put(queue_t *q, MDB_txn *txn, void *arg)
{
    const supp_report_t *r = arg;
    char norm[QUEUE_SUPP_ADDR_MAX + 1];
    if (queue_supp_normalize(q, r->addr, norm, sizeof(norm)) != 0)
        return 0;
    uint64_t now = clock_now_s();
    int rc = supp_put(q, txn, norm, r->scope, r->reason, now, expiry_for(q->q_cfg, r->reason, now),
                      r->source);
    if (rc == 0)
        log_info("suppressed <%s> scope=%s reason=%s source=%s", log_esc(norm),
                 r->scope[0] ? log_esc(r->scope) : "global", r->reason, log_esc(r->source));
    return rc;
}

/* ------------------------------------------------------------ operator requests */

static json_object *entry_json(const queue_supp_entry_t *e)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "address", json_object_new_string(e->se_addr));
    json_object_object_add(o, "scope", e->se_scope[0] ? json_object_new_string(e->se_scope) : NULL);
    json_object_object_add(o, "reason", json_object_new_string(e->se_reason));
    json_object_object_add(o, "time", q_jtime_s(e->se_time));
    json_object_object_add(o, "expires", q_jtime_s(e->se_expires));
    json_object_object_add(o, "source",
                           e->se_source[0] ? json_object_new_string(e->se_source) : NULL);
    return o;
}

typedef struct supp_batch {
    queue_supp_req_t *b_req;
    char (*b_norm)[QUEUE_SUPP_ADDR_MAX + 1];
    int b_done;
} supp_batch_t;

static int add_fn(queue_t *q, MDB_txn *txn, void *arg)
{
    supp_batch_t *b = arg;
    queue_supp_req_t *sr = b->b_req;
    uint64_t now = clock_now_s();
    b->b_done = 0;
    for (int i = 0; i < sr->sr_naddrs; i++) {
        int rc = supp_put(q, txn, b->b_norm[i], sr->sr_scope ? sr->sr_scope : "", sr->sr_reason,
                          now, sr->sr_expires, "operator");
        if (rc != 0)
            return rc;
        b->b_done++;
    }
    return 0;
}

static int remove_fn(queue_t *q, MDB_txn *txn, void *arg)
{
    supp_batch_t *b = arg;
    queue_supp_req_t *sr = b->b_req;
    b->b_done = 0;
    for (int i = 0; i < sr->sr_naddrs; i++) {
        uint8_t key[SUPP_KEY_MAX + 1];
        if (sr->sr_scope != NULL) {
            MDB_val k = {supp_key(key, b->b_norm[i], sr->sr_scope), key};
            int rc = mdb_del(txn, q->q_supp->s_dbi, &k, NULL);
            if (rc != 0 && rc != MDB_NOTFOUND)
                return rc;
            b->b_done += rc == 0;
            continue;
        }
        /* every scope of the address: the keys that start "addr\0" */
        MDB_cursor *c;
        int rc = mdb_cursor_open(txn, q->q_supp->s_dbi, &c);
        if (rc != 0)
            return rc;
        size_t pl = supp_key(key, b->b_norm[i], "");
        MDB_val k = {pl, key}, v;
        for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
             rc == 0 && k.mv_size >= pl && memcmp(k.mv_data, key, pl) == 0;
             rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
            if ((rc = mdb_cursor_del(c, 0)) != 0)
                break;
            b->b_done++;
        }
        mdb_cursor_close(c);
        if (rc != 0 && rc != MDB_NOTFOUND)
            return rc;
    }
    return 0;
}

/* Normalize every address of the request into b (owned by the caller);
 * false with qq_error set on the first bad one. */
static bool norm_all(queue_t *q, queue_req_t *r, supp_batch_t *b)
{
    queue_supp_req_t *sr = r->qq_supp;
    b->b_req = sr;
    b->b_norm = xcalloc((size_t)sr->sr_naddrs + 1, sizeof(*b->b_norm));
    for (int i = 0; i < sr->sr_naddrs; i++) {
        if (queue_supp_normalize(q, sr->sr_addrs[i], b->b_norm[i], sizeof(b->b_norm[i])) != 0) {
            snprintf(r->qq_error, sizeof(r->qq_error), "invalid address \"%.200s\"",
                     sr->sr_addrs[i]);
            return false;
        }
    }
    return true;
}

static void supp_check(queue_t *q, queue_req_t *r, const char *norm)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(q->q_env, NULL, MDB_RDONLY, &txn);
    if (rc != 0) {
        snprintf(r->qq_error, sizeof(r->qq_error), "spool: %s", mdb_strerror(rc));
        return;
    }
    json_object *res = json_object_new_object(), *arr = json_object_new_array();
    uint8_t key[SUPP_KEY_MAX + 1];
    size_t pl = supp_key(key, norm, "");
    MDB_val k = {pl, key}, v;
    MDB_cursor *c;
    uint64_t now = clock_now_s();
    bool any = false;
    if (mdb_cursor_open(txn, q->q_supp->s_dbi, &c) == 0) {
        for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
             rc == 0 && k.mv_size >= pl && memcmp(k.mv_data, key, pl) == 0;
             rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
            queue_supp_entry_t e;
            if (supp_decode(&k, &v, &e) != 0 || (e.se_expires != 0 && e.se_expires <= now))
                continue;
            any = true;
            json_object_array_add(arr, entry_json(&e));
        }
        mdb_cursor_close(c);
    }
    mdb_txn_abort(txn);
    json_object_object_add(res, "address", json_object_new_string(norm));
    json_object_object_add(res, "suppressed", json_object_new_boolean(any));
    json_object_object_add(res, "entries", arr);
    r->qq_result = res;
}

/* A LIST cursor is the last key of the page, in hex. */
static void hex_key(const MDB_val *k, char *dst)
{
    static const char hx[] = "0123456789abcdef";
    const uint8_t *p = k->mv_data;
    for (size_t i = 0; i < k->mv_size; i++) {
        dst[2 * i] = hx[p[i] >> 4];
        dst[2 * i + 1] = hx[p[i] & 15];
    }
    dst[2 * k->mv_size] = '\0';
}

static int unhex_key(const char *s, uint8_t *dst, size_t *len)
{
    size_t n = strlen(s);
    if (n % 2 != 0 || n / 2 > SUPP_KEY_MAX)
        return SL_EPARSE;
    for (size_t i = 0; i < n; i += 2) {
        int hi = isxdigit((unsigned char)s[i])
                     ? (isdigit((unsigned char)s[i]) ? s[i] - '0'
                                                     : (tolower((unsigned char)s[i]) - 'a' + 10))
                     : -1;
        int lo =
            isxdigit((unsigned char)s[i + 1])
                ? (isdigit((unsigned char)s[i + 1]) ? s[i + 1] - '0'
                                                    : (tolower((unsigned char)s[i + 1]) - 'a' + 10))
                : -1;
        if (hi < 0 || lo < 0)
            return SL_EPARSE;
        dst[i / 2] = (uint8_t)(hi << 4 | lo);
    }
    *len = n / 2;
    return 0;
}

static void supp_list(queue_t *q, queue_req_t *r)
{
    queue_supp_req_t *sr = r->qq_supp;
    size_t limit = sr->sr_limit == 0 || sr->sr_limit > SUPP_LIST_MAX ? SUPP_LIST_MAX : sr->sr_limit;
    uint8_t key[SUPP_KEY_MAX + 1];
    size_t klen = 0;
    if (sr->sr_after != NULL && unhex_key(sr->sr_after, key, &klen) != 0) {
        snprintf(r->qq_error, sizeof(r->qq_error), "invalid \"after\" cursor");
        return;
    }
    MDB_txn *txn;
    int rc = mdb_txn_begin(q->q_env, NULL, MDB_RDONLY, &txn);
    if (rc != 0) {
        snprintf(r->qq_error, sizeof(r->qq_error), "spool: %s", mdb_strerror(rc));
        return;
    }
    json_object *res = json_object_new_object(), *arr = json_object_new_array();
    MDB_stat st;
    mdb_stat(txn, q->q_supp->s_dbi, &st);
    MDB_cursor *c;
    MDB_val k = {klen, key}, v;
    char next[2 * SUPP_KEY_MAX + 1] = "";
    size_t n = 0, scanned = 0;
    uint64_t now = clock_now_s();
    if (mdb_cursor_open(txn, q->q_supp->s_dbi, &c) == 0) {
        rc = klen ? mdb_cursor_get(c, &k, &v, MDB_SET_RANGE) : mdb_cursor_get(c, &k, &v, MDB_FIRST);
        if (rc == 0 && klen && k.mv_size == klen && memcmp(k.mv_data, key, klen) == 0)
            rc = mdb_cursor_get(c, &k, &v, MDB_NEXT); /* after the cursor, not at it */
        for (; rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
            if (n == limit || scanned == SUPP_SCAN_MAX)
                break; /* more to come: next names the last key returned or examined */
            scanned++;
            hex_key(&k, next);
            queue_supp_entry_t e;
            if (supp_decode(&k, &v, &e) != 0 || (e.se_expires != 0 && e.se_expires <= now))
                continue;
            if (sr->sr_scope != NULL && strcmp(sr->sr_scope, e.se_scope) != 0)
                continue;
            if (sr->sr_reason != NULL && strcmp(sr->sr_reason, e.se_reason) != 0)
                continue;
            json_object_array_add(arr, entry_json(&e));
            n++;
        }
        mdb_cursor_close(c);
    }
    mdb_txn_abort(txn);
    json_object_object_add(res, "entries", arr);
    json_object_object_add(res, "next", rc == 0 ? json_object_new_string(next) : NULL);
    json_object_object_add(res, "total", json_object_new_int64((int64_t)st.ms_entries));
    r->qq_result = res;
}

/* ------------------------------------------------------------ import (CSV) */

/* One CSV field (RFC 4180 quoting) from *p into dst; *p moves past it and
 * its comma. false when the field does not fit or a quote is unbalanced. */
static bool csv_field(const char **p, char *dst, size_t dlen)
{
    const char *s = *p;
    size_t o = 0;
    if (*s == '"') {
        for (s++;; s++) {
            if (*s == '\0')
                return false;
            if (*s == '"' && s[1] == '"') {
                s++;
            } else if (*s == '"') {
                s++;
                break;
            }
            if (o + 1 >= dlen)
                return false;
            dst[o++] = *s;
        }
    } else {
        for (; *s != ',' && *s != '\0'; s++) {
            if (o + 1 >= dlen)
                return false;
            dst[o++] = *s;
        }
    }
    dst[o] = '\0';
    if (*s == ',')
        s++;
    else if (*s != '\0')
        return false;
    *p = s;
    return true;
}

/* One parsed line of an import batch: key and value in im_bytes. */
typedef struct imp_ent {
    uint32_t ie_off; /* of the key; the value follows it */
    uint32_t ie_seq; /* line order: of two lines with one key, the later wins */
    uint16_t ie_klen;
    uint16_t ie_vlen;
} imp_ent_t;

typedef struct supp_import {
    queue_supp_req_t *im_req;
    size_t im_max;      /* lines of this request at most */
    imp_ent_t *im_ents; /* the batch, sorted by key before its puts */
    size_t im_nents;
    buf_t im_bytes;
    FILE *im_f;
    char *im_line;
    size_t im_cap;
    uint64_t im_offset; /* of the next line */
    uint64_t im_lineno; /* lines read in this request */
    size_t im_imported;
    size_t im_skipped;
    bool im_eof;
    json_object *im_errors;
    int im_nerr;
    /* the batch in progress, to start it again when the txn is retried
     * (supp_txn after a map growth): the lines it read are read again */
    bool im_again;
    uint64_t im_b_offset, im_b_lineno;
    size_t im_b_imported, im_b_skipped;
    int im_b_nerr;
} supp_import_t;

static void import_error(supp_import_t *im, const char *fmt, const char *what)
{
    im->im_skipped++;
    if (im->im_nerr++ >= SUPP_IMPORT_ERRORS)
        return;
    char m[400];
    snprintf(m, sizeof(m), "byte %llu: ", (unsigned long long)im->im_offset);
    size_t n = strlen(m);
    snprintf(m + n, sizeof(m) - n, fmt, what);
    json_object_array_add(im->im_errors, json_object_new_string(m));
}

/* One line: address[,reason[,time[,scope]]]; the header line and blank
 * lines are skipped quietly. */
static int import_line(queue_t *q, MDB_txn *txn, supp_import_t *im, char *line)
{
    queue_supp_req_t *sr = im->im_req;
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    if (n == 0 || strncasecmp(line, "address,", 8) == 0 || strcasecmp(line, "address") == 0)
        return 0;
    char addr[QUEUE_SUPP_ADDR_MAX + 8], reason[64] = "", when[64] = "", scope[160] = "";
    const char *p = line;
    if (!csv_field(&p, addr, sizeof(addr)) || (*p && !csv_field(&p, reason, sizeof(reason))) ||
        (*p && !csv_field(&p, when, sizeof(when))) ||
        (*p && !csv_field(&p, scope, sizeof(scope)))) {
        import_error(im, "malformed CSV line \"%.100s\"", line);
        return 0;
    }
    char norm[QUEUE_SUPP_ADDR_MAX + 1];
    if (queue_supp_normalize(q, addr, norm, sizeof(norm)) != 0) {
        import_error(im, "invalid address \"%.100s\"", addr);
        return 0;
    }
    const char *rs = reason[0] ? reason : (sr->sr_reason ? sr->sr_reason : "import");
    if (!reason_ok(rs)) {
        import_error(im, "invalid reason \"%.40s\"", rs);
        return 0;
    }
    uint64_t t = clock_now_s(), us;
    if (when[0] != '\0') {
        char *end;
        if (when[strspn(when, "0123456789")] == '\0')
            t = strtoull(when, &end, 10);
        else if (time_parse_rfc3339(when, &us) == 0)
            t = us / 1000000;
        else {
            import_error(im, "invalid time \"%.40s\"", when);
            return 0;
        }
    }
    const char *sc = scope[0] ? scope : (sr->sr_scope ? sr->sr_scope : "");
    if (strlen(sc) > QUEUE_SUPP_SCOPE_MAX) {
        import_error(im, "scope too long \"%.40s\"", sc);
        return 0;
    }
    UNUSED(txn);
    uint8_t key[SUPP_KEY_MAX + 1], val[SUPP_VAL_MAX];
    size_t kl = supp_key(key, norm, sc), vl = supp_val(val, rs, t, sr->sr_expires, "import");
    imp_ent_t *e = &im->im_ents[im->im_nents];
    e->ie_off = (uint32_t)im->im_bytes.b_len;
    e->ie_seq = (uint32_t)im->im_nents++;
    e->ie_klen = (uint16_t)kl;
    e->ie_vlen = (uint16_t)vl;
    buf_append(&im->im_bytes, key, kl);
    buf_append(&im->im_bytes, val, vl);
    im->im_imported++;
    return 0;
}

static const uint8_t *imp_bytes; /* qsort has no context argument: the queue thread's only */

static int imp_cmp(const void *a, const void *b)
{
    const imp_ent_t *x = a, *y = b;
    size_t n = MIN(x->ie_klen, y->ie_klen);
    int c = memcmp(imp_bytes + x->ie_off, imp_bytes + y->ie_off, n);
    if (c == 0)
        c = (x->ie_klen > y->ie_klen) - (x->ie_klen < y->ie_klen); /* LMDB's order */
    if (c == 0)
        c = (x->ie_seq > y->ie_seq) - (x->ie_seq < y->ie_seq);
    return c;
}

/* Write the batch in key order: LMDB then touches each leaf page once
 * and walks the tree in order (random puts copy a page per line); keys
 * past the list's last one are appended (MDB_APPEND: a sorted file into
 * an empty list fills pages without splitting them). Of two lines with
 * one key the later wins, as it did with a put per line. */
static int imp_flush(queue_t *q, MDB_txn *txn, supp_import_t *im)
{
    if (im->im_nents == 0)
        return 0;
    imp_bytes = (const uint8_t *)im->im_bytes.b_data;
    qsort(im->im_ents, im->im_nents, sizeof(im->im_ents[0]), imp_cmp);
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, q->q_supp->s_dbi, &c);
    if (rc != 0)
        return rc;
    MDB_val lk, lv;
    bool have_last = mdb_cursor_get(c, &lk, &lv, MDB_LAST) == 0, append = false;
    for (size_t i = 0; rc == 0 && i < im->im_nents; i++) {
        const imp_ent_t *e = &im->im_ents[i];
        if (i + 1 < im->im_nents && im->im_ents[i + 1].ie_klen == e->ie_klen &&
            memcmp(imp_bytes + e->ie_off, imp_bytes + im->im_ents[i + 1].ie_off, e->ie_klen) == 0)
            continue; /* a later line has this key */
        MDB_val k = {e->ie_klen, (void *)(imp_bytes + e->ie_off)};
        MDB_val v = {e->ie_vlen, (void *)(imp_bytes + e->ie_off + e->ie_klen)};
        if (!append) {
            append = !have_last || mdb_cmp(txn, q->q_supp->s_dbi, &k, &lk) > 0;
        }
        rc = mdb_cursor_put(c, &k, &v, append ? MDB_APPEND : 0);
    }
    mdb_cursor_close(c);
    im->im_nents = 0;
    buf_reset(&im->im_bytes);
    return rc;
}

static int import_fn(queue_t *q, MDB_txn *txn, void *arg)
{
    supp_import_t *im = arg;
    if (im->im_again) { /* the same batch once more, in a new txn */
        if (fseeko(im->im_f, (off_t)im->im_b_offset, SEEK_SET) != 0)
            return MDB_PANIC;
        im->im_offset = im->im_b_offset;
        im->im_lineno = im->im_b_lineno;
        im->im_imported = im->im_b_imported;
        im->im_skipped = im->im_b_skipped;
        while ((int)json_object_array_length(im->im_errors) >
               MIN(im->im_b_nerr, SUPP_IMPORT_ERRORS))
            json_object_array_del_idx(im->im_errors, json_object_array_length(im->im_errors) - 1,
                                      1);
        im->im_nerr = im->im_b_nerr;
        im->im_eof = false;
    }
    im->im_again = true;
    im->im_b_offset = im->im_offset;
    im->im_b_lineno = im->im_lineno;
    im->im_b_imported = im->im_imported;
    im->im_b_skipped = im->im_skipped;
    im->im_b_nerr = im->im_nerr;
    im->im_nents = 0;
    buf_reset(&im->im_bytes);
    for (size_t i = 0; i < SUPP_IMPORT_TXN && im->im_lineno < im->im_max; i++) {
        ssize_t n = getline(&im->im_line, &im->im_cap, im->im_f);
        if (n < 0) {
            im->im_eof = true;
            break;
        }
        int rc = import_line(q, txn, im, im->im_line);
        if (rc != 0)
            return rc;
        im->im_offset += (uint64_t)n;
        im->im_lineno++;
    }
    return imp_flush(q, txn, im);
}

/* Long: opens the file, seeks, runs the batches, answers; the parts are the
 * small functions above, and the answer's every field is set here. */
static void supp_import(queue_t *q, queue_req_t *r)
{
    queue_supp_req_t *sr = r->qq_supp;
    supp_import_t im = {.im_req = sr, .im_offset = sr->sr_offset};
    if (sr->sr_reason != NULL && !reason_ok(sr->sr_reason)) {
        snprintf(r->qq_error, sizeof(r->qq_error), "invalid reason \"%.40s\"", sr->sr_reason);
        return;
    }
    im.im_f = fopen(sr->sr_file, "re");
    if (im.im_f == NULL) {
        snprintf(r->qq_error, sizeof(r->qq_error), "cannot open %.200s: %s", sr->sr_file,
                 strerror(errno));
        return;
    }
    if (fseeko(im.im_f, (off_t)sr->sr_offset, SEEK_SET) != 0) {
        snprintf(r->qq_error, sizeof(r->qq_error), "cannot seek in %.200s: %s", sr->sr_file,
                 strerror(errno));
        fclose(im.im_f);
        return;
    }
    im.im_errors = json_object_new_array();
    im.im_ents = xmalloc(SUPP_IMPORT_TXN * sizeof(im.im_ents[0]));
    buf_init(&im.im_bytes, 1 << 20);
    size_t max =
        sr->sr_limit == 0 || sr->sr_limit > SUPP_IMPORT_MAX ? SUPP_IMPORT_MAX : sr->sr_limit;
    int rc = 0;
    im.im_max = max;
    while (!im.im_eof && im.im_lineno < max) {
        im.im_again = false;
        rc = supp_txn(q, import_fn, &im);
        if (rc != 0) { /* nothing of this batch stayed: report where it starts */
            im.im_offset = im.im_b_offset;
            break;
        }
    }
    free(im.im_line);
    free(im.im_ents);
    buf_free(&im.im_bytes);
    fclose(im.im_f);
    if (rc != 0) {
        snprintf(r->qq_error, sizeof(r->qq_error), "import stopped at byte %llu: %s",
                 (unsigned long long)im.im_offset, mdb_strerror(rc));
        json_object_put(im.im_errors);
        return;
    }
    json_object *res = json_object_new_object();
    json_object_object_add(res, "imported", json_object_new_int64((int64_t)im.im_imported));
    json_object_object_add(res, "skipped", json_object_new_int64((int64_t)im.im_skipped));
    json_object_object_add(res, "offset", json_object_new_int64((int64_t)im.im_offset));
    json_object_object_add(res, "done", json_object_new_boolean(im.im_eof));
    json_object_object_add(res, "errors", im.im_errors);
    r->qq_result = res;
    log_info("suppression list: imported %zu from %s (%zu skipped)%s", im.im_imported,
             log_esc(sr->sr_file), im.im_skipped, im.im_eof ? "" : ", more to come");
}

/* Long: one switch over the operations, each a few lines around the
 * helpers above; kept together so the answers read next to queue.h's list. */
void q_supp_request(queue_t *q, queue_req_t *r)
{
    Q_ASSERT_QUEUE_THREAD(q);
    queue_supp_req_t *sr = r->qq_supp;
    r->qq_result = NULL;
    r->qq_error[0] = '\0';
    supp_batch_t b = {0};
    int rc;
    if (sr == NULL) {
        snprintf(r->qq_error, sizeof(r->qq_error), "empty suppression request");
    } else if (sr->sr_op == QSUPP_REPORT && sr->sr_naddrs == 1 && sr->sr_reason != NULL) {
        /* queue_supp_report: the operator's choice of reasons decides */
        supp_report_t rep = {sr->sr_addrs[0], sr->sr_scope ? sr->sr_scope : "", sr->sr_reason,
                             sr->sr_source ? sr->sr_source : ""};
        if (category_feeds(q->q_cfg, sr->sr_reason) && (rc = supp_txn(q, report_put, &rep)) != 0)
            log_error("suppression list: add <%s>: %s", log_esc(rep.addr), mdb_strerror(rc));
    } else if (sr->sr_op == QSUPP_REMOTE && sr->sr_naddrs == 1 && sr->sr_reason != NULL &&
               sr->sr_source != NULL) {
        if ((rc = supp_txn(q, remote_put, sr)) != 0)
            log_error("suppression list: add <%s>: %s", log_esc(sr->sr_addrs[0]), mdb_strerror(rc));
    } else if (sr->sr_op == QSUPP_ADD || sr->sr_op == QSUPP_REMOVE) {
        bool add = sr->sr_op == QSUPP_ADD;
        if (add && (sr->sr_reason == NULL || !reason_ok(sr->sr_reason))) {
            snprintf(r->qq_error, sizeof(r->qq_error),
                     "invalid reason \"%.40s\" (lower-case letters, digits and '-')",
                     sr->sr_reason ? sr->sr_reason : "");
        } else if (norm_all(q, r, &b)) {
            rc = supp_txn(q, add ? add_fn : remove_fn, &b);
            if (rc != 0) {
                snprintf(r->qq_error, sizeof(r->qq_error), "spool: %s", mdb_strerror(rc));
            } else {
                r->qq_result = json_object_new_object();
                json_object_object_add(r->qq_result, add ? "added" : "removed",
                                       json_object_new_int(b.b_done));
                log_info("suppression list: operator %s %d address(es)%s%s",
                         add ? "added" : "removed", b.b_done, sr->sr_scope ? " scope=" : "",
                         sr->sr_scope ? log_esc(sr->sr_scope) : "");
            }
        }
    } else if (sr->sr_op == QSUPP_CHECK && sr->sr_naddrs == 1) {
        if (norm_all(q, r, &b))
            supp_check(q, r, b.b_norm[0]);
    } else if (sr->sr_op == QSUPP_LIST) {
        supp_list(q, r);
    } else if (sr->sr_op == QSUPP_IMPORT && sr->sr_file != NULL) {
        supp_import(q, r);
    } else {
        snprintf(r->qq_error, sizeof(r->qq_error), "unknown suppression request");
    }
    free(b.b_norm);
    if (r->qq_reply != NULL) {
        chan_push(r->qq_reply, &r->qq_node);
    } else {
        json_object_put(r->qq_result);
        queue_supp_req_free(r->qq_supp);
        free(r);
    }
}

void queue_supp_req_free(queue_supp_req_t *r)
{
    if (r == NULL)
        return;
    for (int i = 0; i < r->sr_naddrs; i++)
        free(r->sr_addrs[i]);
    free(r->sr_addrs);
    free(r->sr_scope);
    free(r->sr_reason);
    free(r->sr_after);
    free(r->sr_file);
    free(r->sr_source);
    free(r);
}
