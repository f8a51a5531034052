/*
 * queue/suppress_sent.c - the sent index: what lets a report that has no
 * VERP token (a DSN to a fixed address, a complaint whose return path was
 * not VERP) be matched to the message and recipient it is about, by the
 * returned X-Sluice-Id or Message-ID (docs/bounces-in.md, "Matching").
 *
 *   q_sent_note        at reception, in the message's insert transaction
 *   queue_sent_match   a report's (X-Sluice-Id, Message-ID, recipient)
 *   queue_sent_scope   the tenant of a message a VERP token names
 *
 * Kept only with bounces.inbound, in the spool's `sent` sub-database:
 *   'R' msgid(8)             -> day(4) nrcpt(4) mid(8) then nrcpt x h(addr)(8)
 *                               then, for a tenant's message, len(1) scope
 *   'M' mid(8) msgid(8)      -> ""
 * where h() is the first 8 bytes of SHA-256 of the normalized address
 * (queue_supp_normalize) and mid of the Message-ID value without its
 * angle brackets. Addresses are not stored (the index says "this message
 * had a recipient with that hash", nothing a reader of the spool could
 * mail); the report's own recipient is what gets suppressed. An entry
 * lives bounces.verp_max_age (as a VERP token does): each note removes up
 * to two expired entries from the front (ids are time-ordered), so the
 * index never grows past what that age holds, without a timer.
 *
 * The scope is the suppression list a hard bounce of the message goes to
 * (q_supp_scope_of: suppression.scope_header's tenant, else the AUTH user
 * with suppression.scope = auth_user), fixed when the message is received:
 * a report that comes back weeks later feeds the tenant's list even though
 * the message left the spool long ago. An entry without it (written before
 * it was kept, or a message with no tenant) is global.
 *
 * The trust rule: a Message-ID is known to every recipient and an
 * X-Sluice-Id can be made up, so naming a message is not enough: the
 * report's recipient must be one of that message's recipients. A forged
 * report can then at worst suppress an address the message was sent to,
 * which any recipient could do for itself by complaining.
 * Thread: q_sent_note on the queue thread; queue_sent_match and
 * queue_sent_scope any thread.
 */
#include "queue/queue_int.h"

#include <openssl/evp.h>
#include <string.h>
#include <strings.h>

#define SENT_SWEEP 2     /* expired entries removed per note */
#define SENT_MID_SCAN 16 /* messages sharing one Message-ID that are looked at */
#define SENT_HEAD 16     /* day, nrcpt, mid */

static uint64_t h64(const char *s, size_t len)
{
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_Digest(s, len, md, &n, EVP_sha256(), NULL);
    return q_rd64(md);
}

/* The Message-ID's hash: its value without spaces and angle brackets; 0
 * for none. */
static uint64_t mid_hash(const char *mid, size_t len)
{
    while (len > 0 && (*mid == ' ' || *mid == '\t' || *mid == '<'))
        mid++, len--;
    while (len > 0 && (mid[len - 1] == ' ' || mid[len - 1] == '\t' || mid[len - 1] == '>'))
        len--;
    if (len == 0)
        return 0;
    uint64_t h = h64(mid, len);
    return h != 0 ? h : 1;
}

static uint64_t addr_hash(const queue_t *q, const char *addr)
{
    char norm[QUEUE_SUPP_ADDR_MAX + 1];
    if (queue_supp_normalize(q, addr, norm, sizeof(norm)) != 0)
        snprintf(norm, sizeof(norm), "%.*s", QUEUE_SUPP_ADDR_MAX, addr);
    return h64(norm, strlen(norm));
}

static void wr64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static void wr32(uint8_t *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static void mkey(uint8_t *k, uint64_t mid, uint64_t id)
{
    k[0] = 'M';
    wr64(k + 1, mid);
    wr64(k + 9, id);
}

/* Remove up to SENT_SWEEP entries older than verp_max_age. */
static int sent_sweep(queue_t *q, MDB_txn *txn, uint32_t today)
{
    uint32_t days = (uint32_t)(q->q_cfg->c_verp_max_age / 86400) + 1;
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, q->q_dbi_sent, &c);
    if (rc != 0)
        return rc;
    uint8_t rk = 'R';
    MDB_val k = {1, &rk}, v;
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    for (int n = 0; rc == 0 && n < SENT_SWEEP; n++) {
        const uint8_t *kp = k.mv_data, *vp = v.mv_data;
        if (k.mv_size != 9 || kp[0] != 'R' || v.mv_size < SENT_HEAD || q_rd32(vp) + days > today)
            break;
        uint8_t mk[17];
        mkey(mk, q_rd64(vp + 8), q_rd64(kp + 1));
        MDB_val mkv = {sizeof(mk), mk};
        if ((rc = mdb_del(txn, q->q_dbi_sent, &mkv, NULL)) != 0 && rc != MDB_NOTFOUND)
            break;
        if ((rc = mdb_cursor_del(c, 0)) != 0)
            break;
        rc = mdb_cursor_get(c, &k, &v, MDB_GET_CURRENT);
        if (rc == EINVAL) /* the cursor was on the last entry */
            rc = MDB_NOTFOUND;
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* The Message-ID field's value in the header block of body (its first
 * line: it is never folded in practice, and a fold only cuts the value
 * short, which the hash of the report's copy then misses). */
static const char *body_mid(const buf_t *body, size_t *len)
{
    const char *p = body->b_data, *end = p + body->b_len;
    static const char name[] = "message-id:";
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *le = eol ? eol : end;
        if (le == p || (le == p + 1 && *p == '\r'))
            break; /* the blank line: end of the header block */
        if ((size_t)(le - p) > sizeof(name) - 1 && strncasecmp(p, name, sizeof(name) - 1) == 0) {
            const char *v = p + sizeof(name) - 1;
            *len = (size_t)((le > v && le[-1] == '\r' ? le - 1 : le) - v);
            return v;
        }
        p = le + 1;
    }
    *len = 0;
    return "";
}

int q_sent_note(queue_t *q, MDB_txn *txn, const queue_msg_in_t *m)
{
    if (!q->q_cfg->c_bounce_inbound || (m->qm_flags & Q_F_DSN) || m->qm_nrcpt <= 0)
        return 0; /* our own DSNs are never reported on */
    uint32_t today = (uint32_t)(m->qm_arrival / 86400);
    int rc = sent_sweep(q, txn, today);
    if (rc != 0)
        return rc;
    size_t midlen;
    const char *mid = body_mid(&m->qm_body, &midlen);
    uint64_t mh = mid_hash(mid, midlen);
    char hscope[QUEUE_SUPP_SCOPE_MAX + 1] = "", scope[QUEUE_SUPP_SCOPE_MAX + 1];
    if (!queue_supp_header_scope(q->q_cfg, m->qm_body.b_data, m->qm_body.b_len, hscope,
                                 sizeof(hscope)))
        hscope[0] = '\0';
    const char *auth = m->qm_auth_user;
    q_supp_scope_of(q->q_cfg, hscope, auth, auth ? strlen(auth) : 0, scope, sizeof(scope));
    size_t slen = strlen(scope), rlen = SENT_HEAD + (size_t)m->qm_nrcpt * 8;
    uint8_t rk[9];
    rk[0] = 'R';
    wr64(rk + 1, m->qm_id);
    MDB_val k = {sizeof(rk), rk}, v = {rlen + (slen > 0 ? 1 + slen : 0), NULL};
    if ((rc = mdb_put(txn, q->q_dbi_sent, &k, &v, MDB_RESERVE)) != 0)
        return rc;
    uint8_t *p = v.mv_data;
    wr32(p, today);
    wr32(p + 4, (uint32_t)m->qm_nrcpt);
    wr64(p + 8, mh);
    for (int i = 0; i < m->qm_nrcpt; i++)
        wr64(p + SENT_HEAD + (size_t)i * 8, addr_hash(q, m->qm_rcpts[i].qr_addr));
    if (slen > 0) {
        p[rlen] = (uint8_t)slen; /* at most QUEUE_SUPP_SCOPE_MAX (128) */
        memcpy(p + rlen + 1, scope, slen);
    }
    if (mh == 0)
        return 0;
    uint8_t mk[17];
    mkey(mk, mh, m->qm_id);
    MDB_val mkv = {sizeof(mk), mk}, empty = {0, ""};
    return mdb_put(txn, q->q_dbi_sent, &mkv, &empty, 0);
}

/* Message id's entry (in txn): 1 with *v, 0 when there is none (or it is
 * short), or an LMDB error. */
static int sent_get(queue_t *q, MDB_txn *txn, uint64_t id, MDB_val *v)
{
    uint8_t rk[9];
    rk[0] = 'R';
    wr64(rk + 1, id);
    MDB_val k = {sizeof(rk), rk};
    int rc = mdb_get(txn, q->q_dbi_sent, &k, v);
    if (rc != 0)
        return rc == MDB_NOTFOUND ? 0 : rc;
    if (v->mv_size < SENT_HEAD ||
        v->mv_size < SENT_HEAD + (size_t)q_rd32((uint8_t *)v->mv_data + 4) * 8)
        return 0;
    return 1;
}

/* The scope at the end of entry v into scope ("" for none). */
static void sent_scope(const MDB_val *v, char *scope, size_t slen)
{
    const uint8_t *p = v->mv_data;
    size_t off = SENT_HEAD + (size_t)q_rd32(p + 4) * 8, n = 0;
    if (v->mv_size > off && (n = p[off]) > 0 && v->mv_size >= off + 1 + n && n < slen)
        memcpy(scope, p + off + 1, n);
    else
        n = 0;
    scope[n] = '\0';
}

/* Is ah one of message id's recipients (in txn)? 1 with *idx and its
 * scope (when scope is not NULL), 0, or an LMDB error. */
static int sent_rcpt(queue_t *q, MDB_txn *txn, uint64_t id, uint64_t ah, uint32_t *idx, char *scope,
                     size_t slen)
{
    MDB_val v;
    int rc = sent_get(q, txn, id, &v);
    if (rc != 1)
        return rc;
    const uint8_t *p = v.mv_data;
    uint32_t n = q_rd32(p + 4);
    for (uint32_t i = 0; i < n; i++) {
        if (q_rd64(p + SENT_HEAD + (size_t)i * 8) == ah) {
            *idx = i;
            if (scope != NULL)
                sent_scope(&v, scope, slen);
            return 1;
        }
    }
    return 0;
}

/* Of the messages with Message-ID hash mh (the newest SENT_MID_SCAN),
 * the one that had ah as a recipient. */
static int sent_by_mid(queue_t *q, MDB_txn *txn, uint64_t mh, uint64_t ah, uint64_t *id,
                       uint32_t *idx, char *scope, size_t slen)
{
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, q->q_dbi_sent, &c);
    if (rc != 0)
        return rc;
    uint8_t mk[17];
    mkey(mk, mh, UINT64_MAX);
    MDB_val k = {sizeof(mk), mk}, v;
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    rc = rc == 0 ? mdb_cursor_get(c, &k, &v, MDB_PREV) : mdb_cursor_get(c, &k, &v, MDB_LAST);
    int found = 0;
    for (int n = 0; rc == 0 && found == 0 && n < SENT_MID_SCAN; n++) {
        const uint8_t *kp = k.mv_data;
        if (k.mv_size != sizeof(mk) || kp[0] != 'M' || q_rd64(kp + 1) != mh)
            break;
        uint64_t cand = q_rd64(kp + 9);
        found = sent_rcpt(q, txn, cand, ah, idx, scope, slen);
        if (found == 1)
            *id = cand;
        else if (found == 0)
            rc = mdb_cursor_get(c, &k, &v, MDB_PREV);
    }
    mdb_cursor_close(c);
    if (found != 0)
        return found;
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : rc;
}

int queue_sent_match(queue_t *q, const char *sluice_id, const char *message_id, const char *rcpt,
                     uint64_t *id, uint32_t *idx, char *scope, size_t slen)
{
    if (rcpt == NULL || rcpt[0] == '\0')
        return 0;
    uint64_t ah = addr_hash(q, rcpt), sid = 0;
    uint64_t mh = message_id ? mid_hash(message_id, strlen(message_id)) : 0;
    bool by_sid = sluice_id != NULL && queue_msgid_parse(sluice_id, &sid) == 0;
    if (!by_sid && mh == 0)
        return 0;
    MDB_txn *txn;
    uint32_t i = 0;
    uint64_t got = 0;
    pthread_rwlock_rdlock(&q->q_map_lock);
    int rc = mdb_txn_begin(q->q_env, NULL, MDB_RDONLY, &txn);
    if (rc == 0) {
        rc = by_sid ? sent_rcpt(q, txn, sid, ah, &i, scope, slen) : 0;
        if (rc == 1)
            got = sid;
        else if (rc == 0 && mh != 0 &&
                 (rc = sent_by_mid(q, txn, mh, ah, &got, &i, scope, slen)) == 1)
            rc = 2;
        mdb_txn_abort(txn);
    }
    pthread_rwlock_unlock(&q->q_map_lock);
    if (rc == 1 || rc == 2) {
        *id = got;
        *idx = i;
        return rc;
    }
    if (rc != 0) {
        log_warn("sent index: lookup for <%s>: %s", log_esc(rcpt), mdb_strerror(rc));
        return SL_ESPOOL;
    }
    return 0;
}

int queue_sent_scope(queue_t *q, uint64_t id, char *scope, size_t slen)
{
    MDB_txn *txn;
    MDB_val v;
    scope[0] = '\0';
    pthread_rwlock_rdlock(&q->q_map_lock);
    int rc = mdb_txn_begin(q->q_env, NULL, MDB_RDONLY, &txn);
    if (rc == 0) {
        if ((rc = sent_get(q, txn, id, &v)) == 1)
            sent_scope(&v, scope, slen);
        mdb_txn_abort(txn);
    }
    pthread_rwlock_unlock(&q->q_map_lock);
    if (rc == 0 || rc == 1)
        return rc;
    char hex[17];
    log_warn("sent index: scope of %s: %s", queue_msgid_fmt(id, hex), mdb_strerror(rc));
    return SL_ESPOOL;
}
