/*
 * queue/dsn.c - delivery status notifications (RFC 3461, RFC 3464, RFC 6533)
 * for the bounced, expired and relayed recipients of one batch of outcomes.
 *
 *   q_dsns_add      a recipient to report: joins its message's DSN
 *   q_dsns_insert   each DSN as a new message from <> to the sender, in the
 *                   batch's write transaction (q_insert_msg)
 *   q_dsns_reset    forget the batch's DSNs (after its commit or abort)
 *
 *   q_dsn_mark      what the DSN will say of one recipient, durably (the
 *                   `dsn` sub-db), in its outcome's transaction
 *   q_dsn_flush     a message's marks into its DSN, deleted
 *   q_dsn_marked / q_dsn_list   which messages have marks
 *
 * One DSN per message per round: outcome.c applies every outcome at once
 * and marks what a DSN reports; the message's DSN is built from its marks
 * when its delivery round ends (docs/delivery.md), or after
 * queue.dsn_max_delay, or at start-up for marks a crash left. The message
 * record stays while it has marks (the DSN returns its header or body).
 * The DSN quotes the receiver's reply and its server (Remote-MTA), or
 * sluice's own diagnostic when there was none.
 * Calls spool.c and msgid.c only.
 * Thread: queue thread only.
 */
#include "queue/queue_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
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

/* The DSNs of one batch. */
struct q_dsns {
    dsn_t *dl_v;
    int dl_n, dl_cap;
};

static uint8_t dsn_build(const char *host, const dsn_t *d, buf_t *out);
static void rfc5322_date(char *dst, size_t len, uint64_t t);

static char *dupn(const char *s, size_t n)
{
    return s ? xstrndup(s, n) : NULL;
}

q_dsns_t *q_dsns_new(void)
{
    return xcalloc(1, sizeof(q_dsns_t));
}

void q_dsns_free(q_dsns_t *dl)
{
    if (dl == NULL)
        return;
    q_dsns_reset(dl);
    free(dl->dl_v);
    free(dl);
}

int q_dsns_insert(queue_t *q, MDB_txn *txn, q_dsns_t *dl, uint64_t now_us, int *inserted)
{
    Q_ASSERT_QUEUE_THREAD(q);
    const char *host = q->q_cfg->c_hostname ? q->q_cfg->c_hostname : "localhost";
    int rc = 0;
    for (int i = 0; rc == 0 && i < dl->dl_n; i++) {
        const dsn_t *ds = &dl->dl_v[i];
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
        m.qm_flags = dsn_build(host, ds, &m.qm_body);
        rc = q_insert_msg(q, txn, &m);
        buf_free(&m.qm_body);
        if (rc == 0) {
            char a[17], b[17];
            log_info("%s: dsn=%s to=<%s> failed=%d relayed=%d", queue_msgid_fmt(ds->ds_msgid, a),
                     queue_msgid_fmt(m.qm_id, b), ds->ds_sender, ds->ds_nfailed,
                     ds->ds_n - ds->ds_nfailed);
            (*inserted)++;
        }
    }
    return rc;
}

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

/* The DSN of message id in dl, made from mr (its body copied) if new. */
static dsn_t *dsn_for(q_dsns_t *dl, uint64_t id, const q_msg_rec_t *mr)
{
    dsn_t *d = NULL;
    for (int i = dl->dl_n - 1; i >= 0; i--)
        if (dl->dl_v[i].ds_msgid == id) {
            d = &dl->dl_v[i];
            break;
        }
    if (d == NULL) {
        if (dl->dl_n == dl->dl_cap) {
            dl->dl_cap = dl->dl_cap ? dl->dl_cap * 2 : 8;
            dl->dl_v = xrealloc(dl->dl_v, (size_t)dl->dl_cap * sizeof(dsn_t));
        }
        d = &dl->dl_v[dl->dl_n++];
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
    return d;
}

/* What the DSN says of recipient rr after outcome o: *r, owned. */
static void dsn_rcpt_make(const q_rcpt_rec_t *rr, const queue_outcome_t *o, bool relayed,
                          bool expired, dsn_rcpt_t *r)
{
    memset(r, 0, sizeof(*r));
    r->dr_addr = xstrndup(rr->rr_addr, rr->rr_addr_len);
    r->dr_orcpt = dupn(rr->rr_orcpt, rr->rr_orcpt_len);
    r->dr_relayed = relayed;
    r->dr_expired = expired;
    size_t olen = o->qo_text ? strlen(o->qo_text) : 0;
    if (q_outcome_is_reply(o)) {
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
}

static void dsn_push(dsn_t *d, const dsn_rcpt_t *r)
{
    d->ds_rcpts = xrealloc(d->ds_rcpts, (size_t)(d->ds_n + 1) * sizeof(dsn_rcpt_t));
    d->ds_rcpts[d->ds_n++] = *r;
    if (!r->dr_relayed)
        d->ds_nfailed++;
}

void q_dsns_add(q_dsns_t *dl, uint64_t id, const q_msg_rec_t *mr, const q_rcpt_rec_t *rr,
                const queue_outcome_t *o, bool relayed, bool expired)
{
    dsn_t *d = dsn_for(dl, id, mr);
    dsn_rcpt_t r;
    dsn_rcpt_make(rr, o, relayed, expired, &r);
    dsn_push(d, &r);
}

/* ------------------------------------------------------------ durable marks */

/* A mark's value: version (1), time (8, unix us), flags (1: relayed 1,
 * expired 2), status (16, NUL-padded), then addr, orcpt, mx, reply, local:
 * each a 16-bit length (0xffff: none) and its bytes. */
#define DSN_MARK_VERSION 1
#define DSN_MARK_HEAD 26

static void mark_key(uint8_t k[12], uint64_t id, uint32_t idx)
{
    q_be64(k, id);
    q_be32(k + 8, idx);
}

static void mark_str(buf_t *b, const char *s)
{
    uint8_t l[2];
    size_t n = s ? MIN(strlen(s), 0xfffe) : 0xffff;
    l[0] = (uint8_t)(n >> 8);
    l[1] = (uint8_t)n;
    buf_append(b, l, 2);
    if (s != NULL)
        buf_append(b, s, n);
}

int q_dsn_mark(queue_t *q, MDB_txn *txn, uint64_t id, uint32_t idx, const q_rcpt_rec_t *rr,
               const queue_outcome_t *o, bool relayed, bool expired, uint64_t now_us)
{
    dsn_rcpt_t r;
    dsn_rcpt_make(rr, o, relayed, expired, &r);
    buf_t b;
    buf_init(&b, 256);
    uint8_t h[DSN_MARK_HEAD] = {DSN_MARK_VERSION};
    q_be64(h + 1, now_us);
    h[9] = (uint8_t)((relayed ? 1 : 0) | (expired ? 2 : 0));
    memcpy(h + 10, r.dr_status, MIN(strlen(r.dr_status), 16));
    buf_append(&b, h, sizeof(h));
    const char *strs[] = {r.dr_addr, r.dr_orcpt, r.dr_mx, r.dr_reply, r.dr_local};
    for (size_t i = 0; i < ARRAY_SIZE(strs); i++)
        mark_str(&b, strs[i]);
    uint8_t key[12];
    mark_key(key, id, idx);
    MDB_val k = {12, key}, v = {b.b_len, b.b_data};
    int rc = mdb_put(txn, q->q_dbi_dsn, &k, &v, 0);
    buf_free(&b);
    free(r.dr_addr);
    free(r.dr_orcpt);
    free(r.dr_mx);
    free(r.dr_reply);
    free(r.dr_local);
    return rc;
}

/* A mark's value into *r (owned) and its time; false when malformed. */
static bool mark_decode(const MDB_val *v, dsn_rcpt_t *r, uint64_t *t)
{
    const uint8_t *p = v->mv_data, *end = p + v->mv_size;
    memset(r, 0, sizeof(*r));
    if (v->mv_size < DSN_MARK_HEAD || p[0] != DSN_MARK_VERSION)
        return false;
    *t = q_rd64(p + 1);
    r->dr_relayed = p[9] & 1;
    r->dr_expired = (p[9] & 2) != 0;
    memcpy(r->dr_status, p + 10, 15);
    p += DSN_MARK_HEAD;
    char **strs[] = {&r->dr_addr, &r->dr_orcpt, &r->dr_mx, &r->dr_reply, &r->dr_local};
    for (size_t i = 0; i < ARRAY_SIZE(strs); i++) {
        if (end - p < 2)
            return false;
        size_t n = (size_t)p[0] << 8 | p[1];
        p += 2;
        if (n == 0xffff)
            continue;
        if ((size_t)(end - p) < n)
            return false;
        *strs[i] = xstrndup((const char *)p, n);
        p += n;
    }
    return r->dr_addr != NULL;
}

int q_dsn_flush(queue_t *q, MDB_txn *txn, q_dsns_t *dl, uint64_t id, bool *gone)
{
    char idbuf[17];
    *gone = false;
    bool marked;
    int rc = q_dsn_marked(q, txn, id, &marked); /* the common case: none (a round's end) */
    if (rc != 0 || !marked)
        return rc;
    uint8_t mk[Q_MSG_KEY_LEN];
    q_msg_key(mk, id);
    MDB_val k = {Q_MSG_KEY_LEN, mk}, v;
    q_msg_rec_t mr;
    rc = mdb_get(txn, q->q_dbi_msg, &k, &v);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return rc;
    bool have = rc == 0 && q_msg_decode(v.mv_data, v.mv_size, &mr) == 0;
    dsn_t *d = NULL;
    MDB_cursor *c;
    if ((rc = mdb_cursor_open(txn, q->q_dbi_dsn, &c)) != 0)
        return rc;
    uint8_t key[12];
    mark_key(key, id, 0);
    k = (MDB_val){12, key};
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
         rc == 0 && k.mv_size == 12 && q_rd64(k.mv_data) == id;
         rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE)) {
        dsn_rcpt_t r;
        uint64_t t;
        if (!have || !mark_decode(&v, &r, &t)) {
            log_error("%s: DSN mark of recipient %u %s: dropped", queue_msgid_fmt(id, idbuf),
                      q_rd32((const uint8_t *)k.mv_data + 8),
                      have ? "unreadable" : "without its message");
        } else {
            if (d == NULL) /* the body is copied before the first write */
                d = dsn_for(dl, id, &mr);
            dsn_push(d, &r);
        }
        if ((rc = mdb_cursor_del(c, 0)) != 0)
            break;
        k = (MDB_val){12, key};
    }
    mdb_cursor_close(c);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return rc;
    if (!have)
        return 0;
    bool more;
    if ((rc = q_msg_has_rcpts(q, txn, id, &more)) != 0)
        return rc;
    if (!more) { /* the last recipient went before its DSN: the message goes now */
        k = (MDB_val){Q_MSG_KEY_LEN, mk};
        if ((rc = mdb_del(txn, q->q_dbi_msg, &k, NULL)) != 0)
            return rc;
        *gone = true;
    }
    return 0;
}

int q_dsn_list(queue_t *q, MDB_txn *txn, uint64_t *ids, uint64_t *oldest, int max, int *n)
{
    MDB_cursor *c;
    *n = 0;
    int rc = mdb_cursor_open(txn, q->q_dbi_dsn, &c);
    if (rc != 0)
        return rc;
    MDB_val k, v;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 12 || v.mv_size < DSN_MARK_HEAD)
            continue;
        uint64_t id = q_rd64(k.mv_data), t = q_rd64((const uint8_t *)v.mv_data + 1);
        if (*n > 0 && ids[*n - 1] == id) {
            oldest[*n - 1] = MIN(oldest[*n - 1], t);
            continue;
        }
        if (*n == max)
            break;
        ids[*n] = id;
        oldest[*n] = t;
        (*n)++;
    }
    mdb_cursor_close(c);
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : rc;
}

void q_dsns_reset(q_dsns_t *dl)
{
    for (int i = 0; i < dl->dl_n; i++) {
        dsn_t *d = &dl->dl_v[i];
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
    dl->dl_n = 0;
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

/* The human-readable part (RFC 3464 2.1), into h. */
static void dsn_notification(buf_t *h, const dsn_t *d, const char *host, const char *idbuf,
                             bool full, bool global)
{
    bool failed = d->ds_nfailed > 0;
    buf_printf(h, "This is the mail system at host %s.\r\n\r\n", host);
    if (failed)
        buf_printf(h,
                   "Your message (queue id %s) could not be delivered to one or more\r\n"
                   "recipients. %s attached below.\r\n\r\n",
                   idbuf, full ? "It is" : "Its header is");
    if (d->ds_n > d->ds_nfailed)
        buf_printf(h,
                   "Your message (queue id %s) was relayed to the servers of the\r\n"
                   "recipients marked \"relayed\" below. They do not offer delivery\r\n"
                   "status notifications (RFC 3461): this is the last notice of its\r\n"
                   "success you will get from the mail system.\r\n\r\n",
                   idbuf);
    for (int i = 0; i < d->ds_n; i++) {
        const dsn_rcpt_t *r = &d->ds_rcpts[i];
        buf_append_str(h, "<");
        one_line(h, r->dr_addr, global);
        buf_append_str(h, ">: ");
        if (r->dr_relayed) {
            buf_append_str(h, "relayed to ");
            one_line(h, r->dr_mx ? r->dr_mx : "the next server", global);
            buf_append_str(h, ", which does not offer DSN");
            if (r->dr_reply) {
                buf_append_str(h, ": ");
                one_line(h, r->dr_reply, global);
            }
        } else {
            if (r->dr_expired)
                buf_append_str(h, "delivery time expired");
            if (r->dr_reply) {
                buf_printf(h, "%shost ", r->dr_expired ? "; the last reply: " : "");
                one_line(h, r->dr_mx, global);
                buf_append_str(h, " said: ");
                one_line(h, r->dr_reply, global);
            }
            if (r->dr_local) {
                buf_append_str(h, r->dr_reply     ? " (last attempt: "
                                  : r->dr_expired ? " (last attempt: "
                                                  : "");
                one_line(h, r->dr_local, global);
                if (r->dr_reply || r->dr_expired)
                    buf_append_str(h, ")");
            }
        }
        buf_append_str(h, "\r\n\r\n");
    }
}

/* The delivery-status part (RFC 3464 2.2 / 2.3): the per-message fields,
 * then one block per recipient, into ds. */
static void dsn_report(buf_t *ds, const dsn_t *d, const char *host, const char *idbuf,
                       const char *now, bool global)
{
    char arr[64];
    rfc5322_date(arr, sizeof(arr), d->ds_arrival);
    if (d->ds_envid) {
        buf_append_str(ds, "Original-Envelope-Id: ");
        put_xtext(ds, d->ds_envid, false, global);
        buf_append_str(ds, "\r\n");
    }
    buf_printf(ds, "Reporting-MTA: dns; %s\r\nArrival-Date: %s\r\nX-Sluice-Queue-ID: %s\r\n", host,
               arr, idbuf);
    for (int i = 0; i < d->ds_n; i++) {
        const dsn_rcpt_t *r = &d->ds_rcpts[i];
        buf_append_str(ds, "\r\n");
        if (r->dr_orcpt) {
            /* ORCPT is "addr-type;xtext" (RFC 3461 4.2); the report has it
             * decoded (RFC 3464 2.3.1) */
            const char *semi = strchr(r->dr_orcpt, ';');
            buf_append_str(ds, "Original-Recipient: ");
            if (semi) {
                dsn_line(ds, r->dr_orcpt, (size_t)(semi - r->dr_orcpt), false);
                buf_append_str(ds, "; ");
                bool unicode =
                    (size_t)(semi - r->dr_orcpt) == 5 && strncasecmp(r->dr_orcpt, "utf-8", 5) == 0;
                const char *v = semi + 1;
                while (*v == ' ')
                    v++;
                put_xtext(ds, v, unicode, global);
            } else {
                buf_append_str(ds, "rfc822; ");
                put_xtext(ds, r->dr_orcpt, false, global);
            }
            buf_append_str(ds, "\r\n");
        }
        bool utf8addr = !is_ascii(r->dr_addr, strlen(r->dr_addr));
        buf_printf(ds, "Final-Recipient: %s; ", global && utf8addr ? "utf-8" : "rfc822");
        one_line(ds, r->dr_addr, global);
        buf_printf(ds, "\r\nAction: %s\r\nStatus: %s\r\n", r->dr_relayed ? "relayed" : "failed",
                   r->dr_status);
        if (r->dr_mx) {
            buf_append_str(ds, "Remote-MTA: dns; ");
            one_line(ds, r->dr_mx, false);
            buf_append_str(ds, "\r\n");
        }
        if (r->dr_reply) {
            buf_append_str(ds, "Diagnostic-Code: smtp; ");
            one_line(ds, r->dr_reply, global);
            buf_append_str(ds, "\r\n");
        } else if (r->dr_local) {
            buf_append_str(ds, "Diagnostic-Code: X-Sluice; ");
            one_line(ds, r->dr_local, global);
            buf_append_str(ds, "\r\n");
        }
        buf_printf(ds, "Last-Attempt-Date: %s\r\n", now);
    }
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
static uint8_t dsn_build(const char *host, const dsn_t *d, buf_t *out)
{
    char now[64], idbuf[17], boundary[64];
    uint64_t t = clock_now_s();
    bool global = d->ds_flags & Q_F_SMTPUTF8;
    bool failed = d->ds_nfailed > 0;
    bool full = failed && (d->ds_flags & Q_F_RET_FULL);
    size_t orig_len = full ? d->ds_orig_len : MIN(d->ds_hdr_len, d->ds_orig_len);
    rfc5322_date(now, sizeof(now), t);
    queue_msgid_fmt(d->ds_msgid, idbuf);
    snprintf(boundary, sizeof(boundary), "%s.%llu/%s", idbuf, (unsigned long long)t, host);

    /* the human-readable part first: its charset goes in its header */
    buf_t h;
    buf_init(&h, 1024);
    dsn_notification(&h, d, host, idbuf, full, global);

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

    buf_t ds;
    buf_init(&ds, 512 + (size_t)d->ds_n * 256);
    dsn_report(&ds, d, host, idbuf, now, global);
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
