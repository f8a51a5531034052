/*
 * queue/spool.c - the spool's records and the writes every other queue/
 * file builds on; a leaf of queue/ (it calls no other file of it).
 *
 *   q_msg_encode / q_msg_decode     the `msg` record (docs/spool.md)
 *   q_rcpt_encode / q_rcpt_decode   the `rcpt` record
 *   q_insert_msg                    msg + rcpt + due records of a new message
 *   q_map_grow / q_stats_refresh    map growth after MDB_MAP_FULL, fill level
 *   q_check_txn                     QREQ_CHECK and queue_check_offline
 *   queue_spool_lock / _unlock      one daemon per spool (sluiced.lock)
 *
 * Keys are big-endian so that LMDB cursors walk them in numeric order.
 * Thread: the encodings are pure, any thread; q_insert_msg, q_map_grow and
 * q_stats_refresh on the queue thread (q_stats_refresh also from
 * queue_open on the main thread, before the queue thread starts);
 * q_check_txn on the txn's thread; the lock on the main thread.
 */
#include "queue/queue_int.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void put16(buf_t *b, const char *s, size_t len);
static bool get16(const uint8_t **p, const uint8_t *end, const char **s, uint16_t *len);
static long lock_holder_pid(int fd);

void q_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

void q_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

uint64_t q_rd64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

uint32_t q_rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

void q_msg_key(uint8_t *k, uint64_t id)
{
    q_be64(k, id);
}

void q_rcpt_key(uint8_t *k, uint64_t id, uint32_t idx)
{
    q_be64(k, id);
    q_be32(k + 8, idx);
}

void q_due_key(uint8_t *k, uint64_t next, uint64_t id, uint32_t idx)
{
    q_be64(k, next);
    q_be64(k + 8, id);
    q_be32(k + 16, idx);
}

static void put16(buf_t *b, const char *s, size_t len)
{
    if (s == NULL)
        len = 0;
    if (len > 0xffff)
        len = 0xffff;
    uint8_t h[2] = {(uint8_t)(len >> 8), (uint8_t)len};
    buf_append(b, h, 2);
    buf_append(b, s, len);
}

static bool get16(const uint8_t **p, const uint8_t *end, const char **s, uint16_t *len)
{
    if (end - *p < 2)
        return false;
    uint16_t n = (uint16_t)((*p)[0] << 8 | (*p)[1]);
    *p += 2;
    if (end - *p < n)
        return false;
    *s = n ? (const char *)*p : NULL;
    *len = n;
    *p += n;
    return true;
}

void q_msg_encode(buf_t *b, const q_msg_rec_t *r)
{
    uint8_t h[18];
    h[0] = Q_REC_VERSION;
    h[1] = r->mr_flags;
    q_be64(h + 2, r->mr_arrival);
    q_be32(h + 10, r->mr_nrcpt);
    q_be32(h + Q_MSG_PENDING_OFF, r->mr_pending);
    buf_reserve(b, sizeof(h) + 28 + r->mr_sender_len + r->mr_job_len + r->mr_envid_len +
                       r->mr_auth_len + r->mr_ip_len + r->mr_dsn_job_len + r->mr_hdr_msgid_len +
                       r->mr_hdrs_len + (r->mr_body ? r->mr_body_len : 0));
    buf_append(b, h, sizeof(h));
    put16(b, r->mr_sender, r->mr_sender_len);
    put16(b, r->mr_job, r->mr_job_len);
    put16(b, r->mr_envid, r->mr_envid_len);
    put16(b, r->mr_auth, r->mr_auth_len);
    put16(b, r->mr_ip, r->mr_ip_len);
    if (r->mr_flags & Q_F_DSN) { /* a DSN: the message it reports, and its job */
        uint8_t id[8];
        q_be64(id, r->mr_dsn_for);
        buf_append(b, id, 8);
        put16(b, r->mr_dsn_job, r->mr_dsn_job_len);
    }
    if (r->mr_flags & Q_F_HDRS) {
        put16(b, r->mr_hdr_msgid, r->mr_hdr_msgid_len);
        put16(b, r->mr_hdrs, r->mr_hdrs_len);
    }
    uint8_t bl[4];
    q_be32(bl, r->mr_body_len);
    buf_append(b, bl, 4);
    if (r->mr_body != NULL) /* NULL: the caller copies the body itself */
        buf_append(b, r->mr_body, r->mr_body_len);
}

void q_msg_rebase(q_msg_rec_t *r, const void *from, const void *to)
{
    const char *f = from, *t = to;
#define REBASE(field)                                                                              \
    if (r->field != NULL)                                                                          \
        r->field = t + (r->field - f);
    REBASE(mr_sender)
    REBASE(mr_job)
    REBASE(mr_envid)
    REBASE(mr_auth)
    REBASE(mr_ip)
    REBASE(mr_dsn_job)
    REBASE(mr_hdr_msgid)
    REBASE(mr_hdrs)
#undef REBASE
}

size_t q_addr_domain(const char *addr, size_t len, char *dst, size_t dlen)
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

/* The DSN marks are dsn.c's; whether a message has any is a spool
 * question (its record stays while it has, q_check_txn). */
int q_dsn_marked(queue_t *q, MDB_txn *txn, uint64_t id, bool *marked)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, q->q_dbi_dsn, &c);
    if (rc != 0)
        return rc;
    uint8_t key[12];
    q_be64(key, id);
    q_be32(key + 8, 0);
    MDB_val k = {12, key}, v;
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    *marked = rc == 0 && k.mv_size == 12 && q_rd64(k.mv_data) == id;
    mdb_cursor_close(c);
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : rc;
}

int q_msg_has_rcpts(queue_t *q, MDB_txn *txn, uint64_t id, bool *more)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, q->q_dbi_rcpt, &c);
    if (rc != 0)
        return rc;
    uint8_t key[Q_RCPT_KEY_LEN];
    q_rcpt_key(key, id, 0);
    MDB_val k = {Q_RCPT_KEY_LEN, key}, v;
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    mdb_cursor_close(c);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return rc;
    *more = rc == 0 && k.mv_size == Q_RCPT_KEY_LEN && q_rd64(k.mv_data) == id;
    return 0;
}

int q_msg_decode(const void *data, size_t len, q_msg_rec_t *r)
{
    const uint8_t *p = data, *end = p + len;
    if (len < 18 || p[0] != Q_REC_VERSION)
        return SL_EPARSE;
    r->mr_flags = p[1];
    r->mr_arrival = q_rd64(p + 2);
    r->mr_nrcpt = q_rd32(p + 10);
    r->mr_pending = q_rd32(p + Q_MSG_PENDING_OFF);
    p += 18;
    if (!get16(&p, end, &r->mr_sender, &r->mr_sender_len) ||
        !get16(&p, end, &r->mr_job, &r->mr_job_len) ||
        !get16(&p, end, &r->mr_envid, &r->mr_envid_len) ||
        !get16(&p, end, &r->mr_auth, &r->mr_auth_len) || !get16(&p, end, &r->mr_ip, &r->mr_ip_len))
        return SL_EPARSE;
    r->mr_dsn_for = 0;
    r->mr_dsn_job = NULL;
    r->mr_dsn_job_len = 0;
    if (r->mr_flags & Q_F_DSN) {
        if (end - p < 8)
            return SL_EPARSE;
        r->mr_dsn_for = q_rd64(p);
        p += 8;
        if (!get16(&p, end, &r->mr_dsn_job, &r->mr_dsn_job_len))
            return SL_EPARSE;
    }
    r->mr_hdr_msgid = r->mr_hdrs = NULL;
    r->mr_hdr_msgid_len = r->mr_hdrs_len = 0;
    if ((r->mr_flags & Q_F_HDRS) && (!get16(&p, end, &r->mr_hdr_msgid, &r->mr_hdr_msgid_len) ||
                                     !get16(&p, end, &r->mr_hdrs, &r->mr_hdrs_len)))
        return SL_EPARSE;
    if (end - p < 4)
        return SL_EPARSE;
    r->mr_body_len = q_rd32(p);
    p += 4;
    if ((size_t)(end - p) != r->mr_body_len)
        return SL_EPARSE;
    r->mr_body = (const char *)p;
    return 0;
}

void q_rcpt_encode(buf_t *b, const q_rcpt_rec_t *r)
{
    uint8_t h[17];
    h[0] = Q_REC_VERSION;
    h[1] = r->rr_notify;
    q_be32(h + 2, r->rr_attempts);
    q_be64(h + 6, r->rr_next);
    h[14] = (uint8_t)(r->rr_code >> 8);
    h[15] = (uint8_t)r->rr_code;
    size_t sl = r->rr_status ? MIN(r->rr_status_len, 15) : 0;
    h[16] = (uint8_t)sl;
    buf_append(b, h, sizeof(h));
    buf_append(b, r->rr_status, sl);
    put16(b, r->rr_text, MIN(r->rr_text_len, Q_TEXT_MAX));
    put16(b, r->rr_addr, r->rr_addr_len);
    put16(b, r->rr_orcpt, r->rr_orcpt_len);
    put16(b, r->rr_mx, r->rr_mx_len);
}

int q_rcpt_decode(const void *data, size_t len, q_rcpt_rec_t *r)
{
    const uint8_t *p = data, *end = p + len;
    if (len < 17 || p[0] != Q_REC_VERSION)
        return SL_EPARSE;
    r->rr_notify = p[1];
    r->rr_attempts = q_rd32(p + 2);
    r->rr_next = q_rd64(p + 6);
    r->rr_code = (uint16_t)(p[14] << 8 | p[15]);
    r->rr_status_len = p[16];
    p += 17;
    if (end - p < r->rr_status_len)
        return SL_EPARSE;
    r->rr_status = (const char *)p;
    p += r->rr_status_len;
    if (!get16(&p, end, &r->rr_text, &r->rr_text_len) ||
        !get16(&p, end, &r->rr_addr, &r->rr_addr_len) ||
        !get16(&p, end, &r->rr_orcpt, &r->rr_orcpt_len) || r->rr_addr_len == 0)
        return SL_EPARSE;
    /* the last reply's server came later: records written before have none */
    r->rr_mx = NULL;
    r->rr_mx_len = 0;
    if (p != end && !get16(&p, end, &r->rr_mx, &r->rr_mx_len))
        return SL_EPARSE;
    if (p != end)
        return SL_EPARSE;
    return 0;
}

/* ------------------------------------------------------------ check */

#define CHECK_MAX_PROBLEMS 100

static void problem(json_object *arr, const char *fmt, ...) PRINTF_LIKE(2, 3);

static void problem(json_object *arr, const char *fmt, ...)
{
    if (json_object_array_length(arr) >= CHECK_MAX_PROBLEMS)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    json_object_array_add(arr, json_object_new_string(line));
}

/*
 * Walk msg and rcpt side by side (both sorted by msgid): every msg's pending
 * count equals its rcpt entries, no rcpt without its msg, every rcpt has its
 * due entry, and the number of due entries equals the number of rcpts (so
 * the mapping is one to one). Returns {"ok","msgs","rcpts","due","problems"}.
 */
json_object *q_check_txn(queue_t *q, MDB_txn *txn, bool *okp)
{
    json_object *res = json_object_new_object();
    json_object *probs = json_object_new_array();
    size_t nmsg = 0, nrcpt = 0, ndue = 0, nprob = 0;
    MDB_cursor *mc = NULL, *rc = NULL, *dc = NULL;
    MDB_val k, v, rk, rv;
    char idbuf[17];

    if (mdb_cursor_open(txn, q->q_dbi_msg, &mc) || mdb_cursor_open(txn, q->q_dbi_rcpt, &rc) ||
        mdb_cursor_open(txn, q->q_dbi_due, &dc)) {
        problem(probs, "cannot open cursors");
        nprob++;
        goto done;
    }
    int rrc = mdb_cursor_get(rc, &rk, &rv, MDB_FIRST);
    for (int mrc = mdb_cursor_get(mc, &k, &v, MDB_FIRST); mrc == 0;
         mrc = mdb_cursor_get(mc, &k, &v, MDB_NEXT)) {
        nmsg++;
        if (k.mv_size != Q_MSG_KEY_LEN) {
            problem(probs, "msg key of %zu bytes", k.mv_size);
            nprob++;
            continue;
        }
        uint64_t id = q_rd64(k.mv_data);
        queue_msgid_fmt(id, idbuf);
        q_msg_rec_t mr;
        bool mok = q_msg_decode(v.mv_data, v.mv_size, &mr) == 0;
        if (!mok) {
            problem(probs, "%s: msg record does not decode", idbuf);
            nprob++;
        }
        /* rcpts before this msg are orphans */
        while (rrc == 0 && rk.mv_size == Q_RCPT_KEY_LEN && q_rd64(rk.mv_data) < id) {
            problem(probs, "%016llX.%u: recipient without message",
                    (unsigned long long)q_rd64(rk.mv_data), q_rd32((uint8_t *)rk.mv_data + 8));
            nprob++;
            nrcpt++;
            rrc = mdb_cursor_get(rc, &rk, &rv, MDB_NEXT);
        }
        uint32_t have = 0;
        while (rrc == 0 && rk.mv_size == Q_RCPT_KEY_LEN && q_rd64(rk.mv_data) == id) {
            have++;
            nrcpt++;
            uint32_t idx = q_rd32((uint8_t *)rk.mv_data + 8);
            q_rcpt_rec_t rr;
            if (q_rcpt_decode(rv.mv_data, rv.mv_size, &rr) != 0) {
                problem(probs, "%s.%u: rcpt record does not decode", idbuf, idx);
                nprob++;
            } else {
                uint8_t dk[Q_DUE_KEY_LEN];
                q_due_key(dk, rr.rr_next, id, idx);
                MDB_val dkv = {Q_DUE_KEY_LEN, dk}, dv;
                if (mdb_get(txn, q->q_dbi_due, &dkv, &dv) != 0) {
                    problem(probs, "%s.%u: recipient has no due entry", idbuf, idx);
                    nprob++;
                }
            }
            rrc = mdb_cursor_get(rc, &rk, &rv, MDB_NEXT);
        }
        if (mok && have > mr.mr_nrcpt) {
            problem(probs, "%s: %u recipients at arrival but %u recipient records", idbuf,
                    mr.mr_nrcpt, have);
            nprob++;
        }
        bool marked = false; /* its recipients are done, its DSN is not built yet (dsn.c) */
        if (have == 0 && (q_dsn_marked(q, txn, id, &marked) != 0 || !marked)) {
            problem(probs, "%s: message without recipients", idbuf);
            nprob++;
        }
    }
    while (rrc == 0) {
        nrcpt++;
        problem(probs, "recipient without message (key of %zu bytes)", rk.mv_size);
        nprob++;
        rrc = mdb_cursor_get(rc, &rk, &rv, MDB_NEXT);
    }
    for (int drc = mdb_cursor_get(dc, &k, &v, MDB_FIRST); drc == 0;
         drc = mdb_cursor_get(dc, &k, &v, MDB_NEXT)) {
        ndue++;
        if (k.mv_size != Q_DUE_KEY_LEN) {
            problem(probs, "due key of %zu bytes", k.mv_size);
            nprob++;
            continue;
        }
        uint8_t rkey[Q_RCPT_KEY_LEN];
        memcpy(rkey, (uint8_t *)k.mv_data + 8, Q_RCPT_KEY_LEN);
        MDB_val rkv = {Q_RCPT_KEY_LEN, rkey}, rvv;
        q_rcpt_rec_t rr;
        if (mdb_get(txn, q->q_dbi_rcpt, &rkv, &rvv) != 0 ||
            q_rcpt_decode(rvv.mv_data, rvv.mv_size, &rr) != 0 || rr.rr_next != q_rd64(k.mv_data)) {
            problem(probs, "%016llX.%u: due entry without matching recipient",
                    (unsigned long long)q_rd64(rkey), q_rd32(rkey + 8));
            nprob++;
        }
    }
    if (ndue != nrcpt) {
        problem(probs, "%zu due entries for %zu recipients", ndue, nrcpt);
        nprob++;
    }
done:
    if (mc)
        mdb_cursor_close(mc);
    if (rc)
        mdb_cursor_close(rc);
    if (dc)
        mdb_cursor_close(dc);
    *okp = nprob == 0;
    json_object_object_add(res, "ok", json_object_new_boolean(nprob == 0));
    json_object_object_add(res, "msgs", json_object_new_int64((int64_t)nmsg));
    json_object_object_add(res, "rcpts", json_object_new_int64((int64_t)nrcpt));
    json_object_object_add(res, "due", json_object_new_int64((int64_t)ndue));
    json_object_object_add(res, "problems", probs);
    return res;
}

/* ------------------------------------------------------------ writes and map growth */

void q_stats_refresh(queue_t *q)
{
    /* Live pages of every database, not the high-water page number: LMDB
     * reuses freed pages but never lowers me_last_pgno, so a spool that
     * filled once and drained would otherwise look full forever. */
    MDB_envinfo info;
    mdb_env_info(q->q_env, &info);
    uint64_t used = ((uint64_t)info.me_last_pgno + 1) * q->q_psize;
    MDB_txn *txn;
    if (mdb_txn_begin(q->q_env, NULL, MDB_RDONLY, &txn) == 0) {
        MDB_dbi dbis[] = {q->q_dbi_msg, q->q_dbi_rcpt, q->q_dbi_due, q->q_dbi_meta};
        uint64_t pages = 4; /* two meta pages, the main and free DB roots */
        for (size_t i = 0; i < ARRAY_SIZE(dbis); i++) {
            MDB_stat ms;
            if (mdb_stat(txn, dbis[i], &ms) == 0)
                pages += ms.ms_branch_pages + ms.ms_leaf_pages + ms.ms_overflow_pages;
        }
        mdb_txn_abort(txn);
        used = MIN(used, pages * q->q_psize);
    }
    uint64_t max = q->q_cfg->c_spool_max_size;
    atomic_store_explicit(&q->q_stats.qs_used, used, memory_order_relaxed);
    atomic_store_explicit(&q->q_stats.qs_map_size, q->q_map_size, memory_order_relaxed);
    atomic_store_explicit(&q->q_stats.qs_fill_pct, max ? (int)(used * 100 / max) : 0,
                          memory_order_relaxed);
}

int q_map_grow(queue_t *q)
{
    uint64_t max = q->q_cfg->c_spool_max_size;
    if (q->q_map_size >= max)
        return SL_EFULL;
    uint64_t want = MIN(q->q_map_size * 2, max);
    /* LMDB unmaps the old map before it maps the new one, and a failed
     * mmap (ulimit -v) leaves the environment with no map at all. Make
     * sure the address space is there first (with the old map still in
     * place, so this asks for more than the growth needs); without it the
     * spool stays its size and reception answers 452 4.3.1. */
    void *probe = mmap(NULL, want, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (probe == MAP_FAILED) {
        log_error("spool %s: cannot grow map to %llu MB: %s", q->q_path,
                  (unsigned long long)(want >> 20), strerror(errno));
        return SL_EFULL;
    }
    munmap(probe, want);
    pthread_rwlock_wrlock(&q->q_map_lock); /* no lookup of another thread in the old map */
    int rc = mdb_env_set_mapsize(q->q_env, want);
    pthread_rwlock_unlock(&q->q_map_lock);
    if (rc != 0) {
        /* Another thread took the address space between the probe and
         * LMDB's mmap: the environment has no map now and cannot be
         * used. Everything committed is on disk; a restart reopens it. */
        log_error("spool %s: grow map to %llu: %s; the spool is unusable until a restart",
                  q->q_path, (unsigned long long)want, mdb_strerror(rc));
        _exit(70);
    }
    MDB_envinfo info;
    mdb_env_info(q->q_env, &info);
    q->q_map_size = info.me_mapsize;
    log_info("spool %s: map grown to %llu MB", q->q_path,
             (unsigned long long)(q->q_map_size >> 20));
    q_stats_refresh(q);
    return 0;
}

/* The value of the first header field `name` (lower case) of the message
 * head in [p, end), unfolded (RFC 5322 2.2.3) and trimmed, at most
 * Q_HDR_VALUE_MAX bytes, into out (reset first). False when absent. */
static bool hdr_value(const char *p, const char *end, const char *name, buf_t *out)
{
    size_t nl = strlen(name);
    buf_reset(out);
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *le = eol ? eol : end;
        if (le == p || (le == p + 1 && *p == '\r'))
            return false; /* the blank line: the head ends */
        if ((size_t)(le - p) > nl && p[nl] == ':' && strncasecmp(p, name, nl) == 0) {
            const char *v = p + nl + 1;
            for (;;) { /* this line, then its continuations */
                const char *ve = le > v && le[-1] == '\r' ? le - 1 : le;
                buf_append(out, v, (size_t)(ve - v));
                if (le >= end || le + 1 >= end || (le[1] != ' ' && le[1] != '\t'))
                    break;
                v = le + 1;
                eol = memchr(v, '\n', (size_t)(end - v));
                le = eol ? eol : end;
            }
            size_t a = 0, z = out->b_len;
            while (a < z && (out->b_data[a] == ' ' || out->b_data[a] == '\t'))
                a++;
            while (z > a && (out->b_data[z - 1] == ' ' || out->b_data[z - 1] == '\t'))
                z--;
            z = MIN(z, a + Q_HDR_VALUE_MAX);
            memmove(out->b_data, out->b_data + a, z - a);
            out->b_len = z - a;
            return true;
        }
        p = le + 1;
    }
    return false;
}

/* Message-ID and log.header_fields, once, at reception: into hb as
 * "<message-id>" then the JSON object; the lengths in *idlen, *hlen. */
static void hdr_capture(const cfg_t *c, const queue_msg_in_t *m, buf_t *hb, size_t *idlen,
                        size_t *hlen)
{
    const char *p = m->qm_body.b_data, *end = p + m->qm_body.b_len;
    buf_t v;
    buf_init(&v, 256);
    buf_reset(hb);
    if (hdr_value(p, end, "message-id", &v))
        buf_append(hb, v.b_data, v.b_len);
    *idlen = hb->b_len;
    buf_append(hb, "{", 1);
    for (char **h = c->c_acct_headers; h != NULL && *h != NULL; h++) {
        if (h != c->c_acct_headers)
            buf_append(hb, ",", 1);
        q_json_strz(hb, *h);
        buf_append(hb, ":", 1);
        if (hdr_value(p, end, *h, &v) && v.b_len > 0)
            q_json_str(hb, v.b_data, v.b_len);
        else
            buf_append(hb, "null", 4);
    }
    buf_append(hb, "}", 1);
    *hlen = hb->b_len - *idlen;
    buf_free(&v);
}

int q_insert_msg(queue_t *q, MDB_txn *txn, const queue_msg_in_t *m)
{
    buf_t *b = &q->q_scratch;
    uint8_t key[Q_DUE_KEY_LEN];
    int rc;

    size_t idlen = 0, hlen = 0;
    hdr_capture(q->q_cfg, m, &q->q_scratch_hdr, &idlen, &hlen);
    if (hlen > UINT16_MAX) { /* 64 fields of 998 bytes could pass it: values go, names stay */
        q->q_scratch_hdr.b_len = idlen;
        buf_append_str(&q->q_scratch_hdr, "{}");
        hlen = 2;
    }
    buf_reset(b);
    q_msg_rec_t mr = {
        .mr_flags = (uint8_t)(m->qm_flags | Q_F_HDRS),
        .mr_hdr_msgid = q->q_scratch_hdr.b_data,
        .mr_hdr_msgid_len = (uint16_t)idlen,
        .mr_hdrs = q->q_scratch_hdr.b_data + idlen,
        .mr_hdrs_len = (uint16_t)hlen,
        .mr_arrival = m->qm_arrival,
        .mr_nrcpt = (uint32_t)m->qm_nrcpt,
        .mr_pending = (uint32_t)m->qm_nrcpt,
        .mr_sender = m->qm_sender,
        .mr_sender_len = (uint16_t)(m->qm_sender ? strlen(m->qm_sender) : 0),
        .mr_job = m->qm_job,
        .mr_job_len = (uint16_t)(m->qm_job ? strlen(m->qm_job) : 0),
        .mr_envid = m->qm_envid,
        .mr_envid_len = (uint16_t)(m->qm_envid ? strlen(m->qm_envid) : 0),
        .mr_auth = m->qm_auth_user,
        .mr_auth_len = (uint16_t)(m->qm_auth_user ? strlen(m->qm_auth_user) : 0),
        .mr_ip = m->qm_client_ip,
        .mr_ip_len = (uint16_t)strnlen(m->qm_client_ip, sizeof(m->qm_client_ip)),
        .mr_dsn_for = m->qm_dsn_for,
        .mr_dsn_job = m->qm_dsn_job,
        .mr_dsn_job_len = (uint16_t)(m->qm_dsn_job ? strlen(m->qm_dsn_job) : 0),
        .mr_body = NULL, /* copied below, straight into the reserved value */
        .mr_body_len = (uint32_t)m->qm_body.b_len,
    };
    q_msg_encode(b, &mr);
    q_msg_key(key, m->qm_id);
    MDB_val k = {Q_MSG_KEY_LEN, key};
    MDB_val v = {b->b_len + m->qm_body.b_len, NULL};
    if ((rc = mdb_put(txn, q->q_dbi_msg, &k, &v, MDB_RESERVE)) != 0)
        return rc;
    memcpy(v.mv_data, b->b_data, b->b_len);
    if (m->qm_body.b_len)
        memcpy((char *)v.mv_data + b->b_len, m->qm_body.b_data, m->qm_body.b_len);

    uint64_t first = m->qm_first != 0 ? m->qm_first : m->qm_arrival; /* the due order */
    for (int i = 0; i < m->qm_nrcpt; i++) {
        const queue_rcpt_in_t *r = &m->qm_rcpts[i];
        q_rcpt_rec_t rr = {
            .rr_notify = r->qr_notify,
            .rr_next = first,
            .rr_addr = r->qr_addr,
            .rr_addr_len = (uint16_t)strlen(r->qr_addr),
            .rr_orcpt = r->qr_orcpt,
            .rr_orcpt_len = (uint16_t)(r->qr_orcpt ? strlen(r->qr_orcpt) : 0),
        };
        buf_reset(b);
        q_rcpt_encode(b, &rr);
        q_rcpt_key(key, m->qm_id, (uint32_t)i);
        k.mv_size = Q_RCPT_KEY_LEN;
        v.mv_size = b->b_len;
        v.mv_data = b->b_data;
        if ((rc = mdb_put(txn, q->q_dbi_rcpt, &k, &v, 0)) != 0)
            return rc;
        q_due_key(key, first, m->qm_id, (uint32_t)i);
        k.mv_size = Q_DUE_KEY_LEN;
        v.mv_size = 0;
        v.mv_data = "";
        if ((rc = mdb_put(txn, q->q_dbi_due, &k, &v, 0)) != 0)
            return rc;
    }
    return 0;
}

/* ------------------------------------------------------------ the spool lock */

/* The pid a lock holder wrote into the lock file, or 0 when there is none
 * (yet: the holder writes it just after taking the lock, so wait a little
 * for it, a bounded number of times). */
static long lock_holder_pid(int fd)
{
    for (int i = 0; i < 20; i++) {
        char b[32];
        ssize_t n = pread(fd, b, sizeof(b) - 1, 0);
        if (n > 0) {
            b[n] = '\0';
            long pid = strtol(b, NULL, 10);
            if (pid > 0)
                return pid;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

/*
 * An exclusive flock(2) on <spool>/sluiced.lock, as Postfix's master.lock:
 * the kernel drops it when the process ends, however it ends, so a lock
 * file left by a crash never blocks a restart. The holder's pid is written
 * into the file for the message of the one that is refused. A spool the
 * caller may not write (an offline check as another user) is locked
 * through a read-only descriptor when the file exists.
 */
int queue_spool_lock(const char *spool_path, int *fd_out, char *err, size_t errlen)
{
    SL_ASSERT_MAIN_THREAD();
    char path[1100];
    snprintf(path, sizeof(path), "%s/" QUEUE_LOCK_FILE, spool_path);
    bool writable = true;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0640);
    int e = errno;
    if (fd < 0 && (e == EACCES || e == EROFS)) {
        writable = false;
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    }
    if (fd < 0) {
        snprintf(err, errlen, "spool %s: lock file %s: %s", spool_path, path, strerror(e));
        return -e;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        e = errno;
        if (e == EWOULDBLOCK) {
            long pid = lock_holder_pid(fd);
            if (pid > 0)
                snprintf(err, errlen, "spool %s is in use by sluiced pid %ld (lock file %s)",
                         spool_path, pid, path);
            else
                snprintf(err, errlen, "spool %s is in use by another sluiced (lock file %s)",
                         spool_path, path);
        } else {
            snprintf(err, errlen, "spool %s: lock %s: %s", spool_path, path, strerror(e));
        }
        close(fd);
        return e == EWOULDBLOCK ? SL_EBUSY : -e;
    }
    if (writable) {
        char b[32];
        int n = snprintf(b, sizeof(b), "%ld\n", (long)getpid());
        if (ftruncate(fd, 0) != 0 || pwrite(fd, b, (size_t)n, 0) != n)
            log_warn("spool %s: cannot write the pid into %s: %s", spool_path, path,
                     strerror(errno));
    }
    *fd_out = fd;
    return 0;
}

void queue_spool_unlock(int fd)
{
    if (fd >= 0)
        close(fd); /* drops the flock; the file stays, as Postfix's master.lock */
}
