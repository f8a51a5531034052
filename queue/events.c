/*
 * queue/events.c - the event stream in the spool, and the webhook thread
 * that sends it (docs/events.md).
 *
 * The stream: every accounting record is also appended to the `events`
 * sub-database, keyed by a sequence number that only grows, in the write
 * transaction that commits its event (an outcome's record in the
 * outcome's transaction; the records that are not outcomes - received,
 * shaping, suspended, resumed, tls_failure, webhook_parked - in the next
 * group commit after they were written to the file, at the latest with
 * the periodic scan's, queue.scan_interval). Each webhook's
 * position (the last sequence it acknowledged, and the batches it parked)
 * is kept in `evcursor`, written by the queue thread in a group commit
 * after the webhook thread moved it. Entries every webhook is past are
 * trimmed, a bounded number per transaction. Without a webhook nothing
 * of this runs (no db is written, no thread starts).
 *
 * The webhook thread: its own libuv loop and HTTP client (core/base's
 * libcurl multi client: HTTP/1.1 keep-alive, TLS verified). Per webhook,
 * one POST in flight at a time, so records arrive in order: a JSON array
 * of up to `batch` records, or fewer once the oldest has waited
 * `max_latency`; signed with HMAC-SHA256 over "timestamp.body". A 2xx
 * moves the cursor; a 4xx other than 408/429 parks the batch (its range
 * is kept, the stream goes on, a `webhook_parked` record says so, `events
 * unpark NAME` sends it again); anything else retries the same range with
 * exponential backoff, at least Retry-After.
 *
 *   q_events_open / q_events_start / q_events_stop / q_events_free
 *   q_events_txn_begin / q_events_put / q_events_txn_end   (queue thread)
 *   q_record_emit      a record that is not an outcome (queue thread)
 *   queue_events_json / queue_events_unpark / queue_events_replay (any thread)
 *
 * `events replay` (the accounting files sent again, a stream of its own
 * beside a webhook's) is evreplay.c's; this file starts it on the thread.
 *
 * Calls acct.c and spool.c. Thread: as noted per function; the shared
 * part (ev_lock) is the per-webhook state both threads and the control
 * thread read.
 */
#include "queue/events_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EV_TRIM_MAX 4096  /* entries trimmed per transaction, at most */
#define EV_SCAN_MAX 20000 /* entries a batch looks at, at most (type filter) */
#define EV_PARK_MAX 64    /* parked ranges kept per webhook */
#define EV_BODY_MAX 4096  /* response body kept for the error text */
#define EV_CUR_VERSION 1

typedef struct ev_range {
    uint64_t from, to;
} ev_range_t;

/* One webhook. Fields under "shared" are read and written under ev_lock;
 * the rest belong to the webhook thread. */
typedef struct ev_wh {
    const cfg_webhook_t *w_cfg;
    struct q_events *w_ev;
    /* shared */
    uint64_t w_cursor; /* last sequence acknowledged (or parked, or skipped) */
    ev_range_t w_parked[EV_PARK_MAX];
    int w_nparked;
    uint64_t w_gen, w_saved_gen, w_txn_gen; /* persistence of cursor and parked */
    char w_last_error[256];
    uint64_t w_last_error_at; /* unix us */
    int w_in_flight;          /* records in the POST in flight */
    uint64_t w_flight_from;   /* its first sequence (the bound keeps it: w_in_flight > 0) */
    uint64_t w_dropped;       /* records the backlog bound dropped since start */
    uint64_t w_sent_records, w_sent_batches, w_failures, w_parked_batches;
    /* webhook thread */
    uv_timer_t w_timer;
    http_request_t *w_req;
    ev_range_t w_batch;   /* the range in flight (or being retried) */
    uint64_t w_span_from; /* covered without a POST since (filtered out): the next
                             POST's X-Sluice-Sequence starts there; 0: none */
    bool w_batch_unpark;  /* the batch is a parked range sent again */
    uint32_t w_fails;
    uint64_t w_not_before; /* mono us: backoff */
    buf_t w_body;
    atomic_int w_unpark;
    /* `events replay`: asked (shared), run on the webhook thread */
    bool w_rp_asked;
    uint64_t w_rp_since, w_rp_until;
    ev_replay_t *w_rp;
} ev_wh_t;

typedef struct q_events {
    queue_t *ev_q;
    cfg_t *ev_cfg; /* the start-up snapshot (events.webhooks needs a restart) */
    MDB_dbi ev_dbi, ev_dbi_cur;
    uint64_t ev_next;             /* queue thread: next sequence to assign, committed */
    uint64_t ev_txn_next;         /* queue thread: the same inside the open txn */
    atomic_uint_fast64_t ev_head; /* last committed sequence: any thread */
    buf_t ev_pend;                /* queue thread: records waiting for the next txn */
    size_t ev_pend_txn;           /* bytes of ev_pend the open txn wrote */
    uint64_t ev_bound_at;         /* queue thread: mono us of the last age check */
    ev_wh_t *ev_wh;
    int ev_n;
    pthread_mutex_t ev_lock;
    atomic_int ev_dirty; /* a webhook moved: the queue thread writes it */
    buf_t ev_xrec;       /* ev_lock: records the webhook thread made (webhook_parked) */
    /* the thread */
    pthread_t ev_thread;
    bool ev_started;
    uv_loop_t ev_loop;
    uv_async_t ev_wake;
    http_client_t *ev_http;
    atomic_int ev_stopping;
} q_events_t;

static void ev_thread_kick(q_events_t *ev);
static void ev_wh_try(ev_wh_t *w);
static void ev_wh_moved(ev_wh_t *w);
static bool ev_type_wanted(const ev_wh_t *w, const char *type, size_t tl);

/* ------------------------------------------------------------ encoding */

static void ev_cur_key(const char *name, MDB_val *k)
{
    k->mv_data = (void *)name;
    k->mv_size = strlen(name);
}

/* cursor value: version, cursor (8), nparked (1), ranges (16 each) */
static void ev_cur_encode(const ev_wh_t *w, buf_t *b)
{
    uint8_t h[10];
    h[0] = EV_CUR_VERSION;
    q_be64(h + 1, w->w_cursor);
    h[9] = (uint8_t)w->w_nparked;
    buf_append(b, h, sizeof(h));
    for (int i = 0; i < w->w_nparked; i++) {
        uint8_t r[16];
        q_be64(r, w->w_parked[i].from);
        q_be64(r + 8, w->w_parked[i].to);
        buf_append(b, r, 16);
    }
}

static bool ev_cur_decode(ev_wh_t *w, const MDB_val *v)
{
    const uint8_t *p = v->mv_data;
    if (v->mv_size < 10 || p[0] != EV_CUR_VERSION || p[9] > EV_PARK_MAX ||
        v->mv_size != 10 + (size_t)p[9] * 16)
        return false;
    w->w_cursor = q_rd64(p + 1);
    w->w_nparked = p[9];
    for (int i = 0; i < w->w_nparked; i++) {
        w->w_parked[i].from = q_rd64(p + 10 + 16 * i);
        w->w_parked[i].to = q_rd64(p + 18 + 16 * i);
    }
    return true;
}

/* ------------------------------------------------------------ queue thread */

int q_events_open(queue_t *q, MDB_txn *txn, char *err, size_t errlen)
{
    if (q->q_cfg->c_nwebhooks == 0)
        return 0;
    q_events_t *ev = xcalloc(1, sizeof(*ev));
    ev->ev_q = q;
    ev->ev_cfg = cfg_ref(q->q_cfg);
    pthread_mutex_init(&ev->ev_lock, NULL);
    buf_init(&ev->ev_pend, 4096);
    buf_init(&ev->ev_xrec, 0);
    q->q_ev = ev;
    int rc;
    if ((rc = mdb_dbi_open(txn, "events", MDB_CREATE, &ev->ev_dbi)) != 0 ||
        (rc = mdb_dbi_open(txn, "evcursor", MDB_CREATE, &ev->ev_dbi_cur)) != 0) {
        snprintf(err, errlen, "spool %s: events: %s", q->q_path, mdb_strerror(rc));
        return SL_ESPOOL;
    }
    MDB_cursor *c;
    MDB_val k, v;
    ev->ev_next = 1;
    if ((rc = mdb_cursor_open(txn, ev->ev_dbi, &c)) == 0) {
        if (mdb_cursor_get(c, &k, &v, MDB_LAST) == 0 && k.mv_size == 8)
            ev->ev_next = q_rd64(k.mv_data) + 1;
        mdb_cursor_close(c);
    }
    /* the last sequence ever given, even when trimmed since: never reused */
    MDB_val mk = {7, "ev_next"};
    if (mdb_get(txn, ev->ev_dbi_cur, &mk, &v) == 0 && v.mv_size == 8 &&
        q_rd64(v.mv_data) > ev->ev_next)
        ev->ev_next = q_rd64(v.mv_data);
    atomic_store(&ev->ev_head, ev->ev_next - 1);
    ev->ev_n = ev->ev_cfg->c_nwebhooks;
    ev->ev_wh = xcalloc((size_t)ev->ev_n, sizeof(ev_wh_t));
    for (int i = 0; i < ev->ev_n; i++) {
        ev_wh_t *w = &ev->ev_wh[i];
        w->w_cfg = &ev->ev_cfg->c_webhooks[i];
        w->w_ev = ev;
        buf_init(&w->w_body, 4096);
        ev_cur_key(w->w_cfg->wh_name, &k);
        if (mdb_get(txn, ev->ev_dbi_cur, &k, &v) == 0 && ev_cur_decode(w, &v)) {
            if (w->w_cursor > ev->ev_next - 1)
                w->w_cursor = ev->ev_next - 1;
        } else {
            /* a new webhook starts with what happens from now on */
            w->w_cursor = ev->ev_next - 1;
            w->w_gen = 1;
        }
    }
    /* webhooks no longer configured must not hold the trimming back */
    if ((rc = mdb_cursor_open(txn, ev->ev_dbi_cur, &c)) == 0) {
        int op = MDB_FIRST;
        while (mdb_cursor_get(c, &k, &v, op) == 0) {
            op = MDB_NEXT;
            if (k.mv_size == 7 && memcmp(k.mv_data, "ev_next", 7) == 0)
                continue;
            bool known = false;
            for (int i = 0; i < ev->ev_n && !known; i++)
                known = strlen(ev->ev_wh[i].w_cfg->wh_name) == k.mv_size &&
                        memcmp(ev->ev_wh[i].w_cfg->wh_name, k.mv_data, k.mv_size) == 0;
            if (!known) {
                log_info("events: webhook \"%.*s\" is no longer configured: its cursor goes",
                         (int)k.mv_size, (const char *)k.mv_data);
                mdb_cursor_del(c, 0);
            }
        }
        mdb_cursor_close(c);
    }
    atomic_store(&ev->ev_dirty, 1);
    return 0;
}

void q_events_free(queue_t *q)
{
    q_events_t *ev = q->q_ev;
    if (ev == NULL)
        return;
    for (int i = 0; i < ev->ev_n; i++) {
        buf_free(&ev->ev_wh[i].w_body);
        ev_replay_free(ev->ev_wh[i].w_rp);
    }
    free(ev->ev_wh);
    buf_free(&ev->ev_pend);
    buf_free(&ev->ev_xrec);
    pthread_mutex_destroy(&ev->ev_lock);
    cfg_unref(ev->ev_cfg);
    free(ev);
    q->q_ev = NULL;
}

bool q_events_want_txn(const queue_t *q)
{
    q_events_t *ev = q->q_ev;
    if (ev == NULL)
        return false;
    if (ev->ev_pend.b_len > 0 || atomic_load(&ev->ev_dirty))
        return true;
    /* the backlog bound (ev_bound) with no record coming: checked once a
     * second while a webhook lags past it (or at all, for the age bound) */
    const cfg_t *c = q->q_cfg;
    if ((c->c_ev_max_backlog == 0 && c->c_ev_max_backlog_age == 0) ||
        clock_mono_us() - ev->ev_bound_at < 1000000)
        return false;
    uint64_t head = atomic_load(&ev->ev_head), lag = 0;
    pthread_mutex_lock(&ev->ev_lock);
    for (int i = 0; i < ev->ev_n; i++) {
        const ev_wh_t *w = &ev->ev_wh[i];
        lag = MAX(lag, head - MIN(head, w->w_nparked > 0 ? w->w_parked[0].from - 1 : head));
        lag = MAX(lag, head - MIN(head, w->w_cursor));
    }
    pthread_mutex_unlock(&ev->ev_lock);
    /* the age of the backlog is in the spool: ev_bound reads it */
    return (c->c_ev_max_backlog > 0 && lag > (uint64_t)c->c_ev_max_backlog) ||
           (c->c_ev_max_backlog_age > 0 && lag > 0);
}

void q_record_emit(queue_t *q, const char *lines, size_t len)
{
    buf_append(q_acct_buf(q->q_acct), lines, len);
    if (q->q_ev != NULL) /* with the next group commit, or the periodic scan's */
        buf_append(&q->q_ev->ev_pend, lines, len);
}

/* Does any webhook take records of this type? A record nobody takes is
 * not stored: the stream's cost is the bytes it adds to the group commit
 * (docs/benchmarks.md, "Events"). */
static bool ev_type_stored(const q_events_t *ev, const char *type, size_t tl)
{
    for (int i = 0; i < ev->ev_n; i++) {
        char **t = ev->ev_wh[i].w_cfg->wh_types;
        if (t == NULL)
            return true;
        for (; *t != NULL; t++)
            if (strlen(*t) == tl && memcmp(*t, type, tl) == 0)
                return true;
    }
    return false;
}

/* One record line (without its newline) at the txn's next sequence. */
static int ev_put_line(q_events_t *ev, MDB_txn *txn, const char *line, size_t len, uint64_t now)
{
    const char *type = "";
    size_t tl = q_ev_line_type(line, len, &type);
    if (!ev_type_stored(ev, type, tl))
        return 0;
    uint8_t key[8];
    q_be64(key, ev->ev_txn_next);
    MDB_val k = {8, key}, v = {9 + tl + len, NULL};
    int rc = mdb_put(txn, ev->ev_dbi, &k, &v, MDB_RESERVE | MDB_APPEND);
    if (rc != 0)
        return rc;
    uint8_t *p = v.mv_data;
    q_be64(p, now);
    p[8] = (uint8_t)tl;
    memcpy(p + 9, type, tl);
    memcpy(p + 9 + tl, line, len);
    ev->ev_txn_next++;
    return 0;
}

int q_events_put(queue_t *q, MDB_txn *txn, const char *lines, size_t len)
{
    q_events_t *ev = q->q_ev;
    if (ev == NULL)
        return 0;
    uint64_t now = clock_now_us();
    const char *p = lines, *end = lines + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        if (le > p) {
            int rc = ev_put_line(ev, txn, p, (size_t)(le - p), now);
            if (rc != 0)
                return rc;
        }
        p = le + 1;
    }
    return 0;
}

/* Trim what every webhook is past (their cursors, and their parked
 * ranges), at most EV_TRIM_MAX entries. */
static int ev_trim(q_events_t *ev, MDB_txn *txn)
{
    uint64_t keep = UINT64_MAX; /* entries below keep may go */
    pthread_mutex_lock(&ev->ev_lock);
    for (int i = 0; i < ev->ev_n; i++) {
        ev_wh_t *w = &ev->ev_wh[i];
        keep = MIN(keep, w->w_cursor + 1);
        for (int j = 0; j < w->w_nparked; j++)
            keep = MIN(keep, w->w_parked[j].from);
    }
    pthread_mutex_unlock(&ev->ev_lock);
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, ev->ev_dbi, &c);
    if (rc != 0)
        return rc;
    MDB_val k, v;
    int n = 0;
    while (n < EV_TRIM_MAX && (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST)) == 0 && k.mv_size == 8 &&
           q_rd64(k.mv_data) < keep) {
        if ((rc = mdb_cursor_del(c, 0)) != 0)
            break;
        n++;
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND || rc == 0 ? 0 : rc;
}

/* What the bound dropped of one webhook's backlog (ev_bound). */
typedef struct ev_drop {
    uint64_t first, last, count;
} ev_drop_t;

/* Is seq owed to w (past its cursor, or in a parked range)? ev_lock held. */
static bool ev_owed(const ev_wh_t *w, uint64_t seq)
{
    if (seq > w->w_cursor)
        return true;
    for (int j = 0; j < w->w_nparked; j++)
        if (seq >= w->w_parked[j].from && seq <= w->w_parked[j].to)
            return true;
    return false;
}

/* w no longer owes anything up to `upto`: the cursor and the parked
 * ranges move past it. ev_lock held. */
static void ev_wh_skip_to(ev_wh_t *w, uint64_t upto)
{
    int k = 0;
    for (int j = 0; j < w->w_nparked; j++) {
        ev_range_t r = w->w_parked[j];
        if (r.to <= upto)
            continue;
        if (r.from <= upto)
            r.from = upto + 1;
        w->w_parked[k++] = r;
    }
    w->w_nparked = k;
    if (w->w_cursor < upto)
        w->w_cursor = upto;
    ev_wh_moved(w);
}

/* The record of what the bound dropped (docs/records.md, events_dropped). */
static void ev_dropped_record(queue_t *q, const ev_wh_t *w, const ev_drop_t *d, const char *why)
{
    buf_t b;
    buf_init(&b, 256);
    buf_append_str(&b, "{\"type\":\"events_dropped\",\"time\":");
    q_json_time(&b, clock_now_us());
    buf_append_str(&b, ",\"webhook\":");
    q_json_strz(&b, w->w_cfg->wh_name);
    buf_printf(&b, ",\"first\":%llu,\"last\":%llu,\"count\":%llu,\"reason\":\"%s\"}\n",
               (unsigned long long)d->first, (unsigned long long)d->last,
               (unsigned long long)d->count, why);
    q_record_emit(q, b.b_data, b.b_len); /* the stream takes it with the next commit */
    buf_free(&b);
    log_error("events: webhook %s: backlog over events.%s: records %llu-%llu dropped (%llu of its "
              "types)",
              w->w_cfg->wh_name, why, (unsigned long long)d->first, (unsigned long long)d->last,
              (unsigned long long)d->count);
}

/* The backlog bound (events.max_backlog records, events.max_backlog_age):
 * the oldest entries beyond it go even when a webhook has not had them
 * (at most EV_TRIM_MAX per transaction), and each webhook that was owed
 * some gets an events_dropped record. A batch in flight is kept, and what
 * follows it (deleting is from the front): its answer decides, so what
 * reached an endpoint is never reported dropped; the spool may exceed the
 * bound until that answer (at most the webhook's timeout).
 * ev_lock is held throughout, so the webhook thread cannot start a POST
 * of entries being dropped (ev_post checks its cursor under the lock). */
static int ev_bound(queue_t *q, q_events_t *ev, MDB_txn *txn)
{
    const cfg_t *cfg = q->q_cfg;
    uint64_t head = ev->ev_txn_next - 1;
    uint64_t cut = 0, age_cut = 0; /* entries below cut, or older than age_cut, go */
    if (cfg->c_ev_max_backlog > 0 && head >= (uint64_t)cfg->c_ev_max_backlog)
        cut = head + 1 - (uint64_t)cfg->c_ev_max_backlog;
    if (cfg->c_ev_max_backlog > 0 || cfg->c_ev_max_backlog_age > 0)
        ev->ev_bound_at = clock_mono_us();
    if (cfg->c_ev_max_backlog_age > 0)
        age_cut = clock_now_us() - cfg->c_ev_max_backlog_age * 1000000;
    if (cut == 0 && age_cut == 0)
        return 0;
    ev_drop_t drop[CFG_MAX_WEBHOOKS] = {{0, 0, 0}};
    bool by_count = false;
    uint64_t upto = 0;
    pthread_mutex_lock(&ev->ev_lock);
    uint64_t keep = UINT64_MAX; /* the batches in flight */
    for (int i = 0; i < ev->ev_n; i++)
        if (ev->ev_wh[i].w_in_flight > 0)
            keep = MIN(keep, ev->ev_wh[i].w_flight_from);
    MDB_cursor *c = NULL;
    int rc = mdb_cursor_open(txn, ev->ev_dbi, &c);
    MDB_val k, v;
    for (int n = 0; rc == 0 && n < EV_TRIM_MAX; n++) {
        if ((rc = mdb_cursor_get(c, &k, &v, MDB_FIRST)) != 0)
            break;
        if (k.mv_size != 8 || v.mv_size < 9 || v.mv_size < 9u + ((uint8_t *)v.mv_data)[8])
            break;
        uint64_t seq = q_rd64(k.mv_data), t = q_rd64(v.mv_data);
        if (seq >= keep || !(seq < cut || t < age_cut))
            break;
        by_count |= seq < cut;
        const char *type = (const char *)v.mv_data + 9;
        size_t tl = ((uint8_t *)v.mv_data)[8];
        for (int i = 0; i < ev->ev_n; i++) {
            ev_wh_t *w = &ev->ev_wh[i];
            if (!ev_owed(w, seq) || !ev_type_wanted(w, type, tl))
                continue;
            if (drop[i].count++ == 0)
                drop[i].first = seq;
            drop[i].last = seq;
        }
        upto = seq;
        rc = mdb_cursor_del(c, 0);
    }
    if (rc == 0 || rc == MDB_NOTFOUND) {
        rc = 0;
        for (int i = 0; upto > 0 && i < ev->ev_n; i++) {
            ev_wh_skip_to(&ev->ev_wh[i], upto);
            ev->ev_wh[i].w_dropped += drop[i].count;
        }
    }
    pthread_mutex_unlock(&ev->ev_lock);
    if (c != NULL)
        mdb_cursor_close(c);
    for (int i = 0; rc == 0 && i < ev->ev_n; i++)
        if (drop[i].count > 0)
            ev_dropped_record(q, &ev->ev_wh[i], &drop[i],
                              by_count ? "max_backlog" : "max_backlog_age");
    return rc;
}

static int q_events_txn_begin(queue_t *q, MDB_txn *txn)
{
    q_events_t *ev = q->q_ev;
    if (ev == NULL)
        return 0;
    ev->ev_txn_next = ev->ev_next;
    pthread_mutex_lock(&ev->ev_lock);
    if (ev->ev_xrec.b_len > 0) { /* the webhook thread's records: to the log and the stream */
        buf_append(q_acct_buf(q->q_acct), ev->ev_xrec.b_data, ev->ev_xrec.b_len);
        buf_append(&ev->ev_pend, ev->ev_xrec.b_data, ev->ev_xrec.b_len);
        buf_reset(&ev->ev_xrec);
    }
    pthread_mutex_unlock(&ev->ev_lock);
    ev->ev_pend_txn = ev->ev_pend.b_len;
    int rc = q_events_put(q, txn, ev->ev_pend.b_data, ev->ev_pend.b_len);
    if (rc == 0)
        rc = ev_bound(q, ev, txn);
    if (rc != 0)
        return rc;
    if (!atomic_exchange(&ev->ev_dirty, 0))
        return 0;
    /* cursors that moved */
    buf_t *b = &q->q_scratch;
    pthread_mutex_lock(&ev->ev_lock);
    for (int i = 0; rc == 0 && i < ev->ev_n; i++) {
        ev_wh_t *w = &ev->ev_wh[i];
        w->w_txn_gen = w->w_gen;
        if (w->w_gen == w->w_saved_gen)
            continue;
        buf_reset(b);
        ev_cur_encode(w, b);
        MDB_val k, v = {b->b_len, b->b_data};
        ev_cur_key(w->w_cfg->wh_name, &k);
        rc = mdb_put(txn, ev->ev_dbi_cur, &k, &v, 0);
    }
    pthread_mutex_unlock(&ev->ev_lock);
    if (rc == 0)
        rc = ev_trim(ev, txn);
    if (rc != 0)
        atomic_store(&ev->ev_dirty, 1);
    return rc;
}

static int q_events_txn_seal(queue_t *q, MDB_txn *txn)
{
    q_events_t *ev = q->q_ev;
    if (ev == NULL || ev->ev_txn_next == ev->ev_next)
        return 0;
    uint8_t nb[8];
    q_be64(nb, ev->ev_txn_next);
    MDB_val k = {7, "ev_next"}, v = {8, nb};
    return mdb_put(txn, ev->ev_dbi_cur, &k, &v, 0);
}

static void q_events_txn_end(queue_t *q, bool committed)
{
    q_events_t *ev = q->q_ev;
    if (ev == NULL)
        return;
    if (!committed) {
        atomic_store(&ev->ev_dirty, 1); /* the cursors again, next time */
        return;
    }
    buf_consume(&ev->ev_pend, ev->ev_pend_txn);
    ev->ev_pend_txn = 0;
    pthread_mutex_lock(&ev->ev_lock);
    for (int i = 0; i < ev->ev_n; i++)
        ev->ev_wh[i].w_saved_gen = MAX(ev->ev_wh[i].w_saved_gen, ev->ev_wh[i].w_txn_gen);
    pthread_mutex_unlock(&ev->ev_lock);
    if (ev->ev_txn_next != ev->ev_next) {
        ev->ev_next = ev->ev_txn_next;
        atomic_store(&ev->ev_head, ev->ev_next - 1);
        ev_thread_kick(ev);
    }
}

int q_events_write(queue_t *q, q_write_fn fn, void *arg)
{
    for (;;) {
        MDB_txn *txn = NULL;
        int rc = mdb_txn_begin(q->q_env, NULL, 0, &txn);
        if (rc == 0)
            rc = q_events_txn_begin(q, txn);
        if (rc == 0)
            rc = fn(q, txn, arg);
        if (rc == 0)
            rc = q_events_txn_seal(q, txn);
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else if (txn)
            mdb_txn_abort(txn);
        q_events_txn_end(q, rc == 0);
        if (rc == MDB_MAP_FULL && q_map_grow(q) == 0)
            continue;
        return rc;
    }
}

/* ------------------------------------------------------------ the thread */

static void ev_thread_kick(q_events_t *ev)
{
    if (ev->ev_started)
        uv_async_send(&ev->ev_wake);
}

/* The webhook moved (cursor or parked): the queue thread writes it. */
static void ev_wh_moved(ev_wh_t *w)
{
    w->w_gen++;
    /* no wake-up: the cursor rides with the queue's next group commit, or
     * its periodic scan (queue.scan_interval) starts one; a wake-up per
     * acknowledged batch would cost a commit and an fsync each when the
     * queue is busy (measured: bench/run-events) */
    atomic_store(&w->w_ev->ev_dirty, 1);
}

static bool ev_type_wanted(const ev_wh_t *w, const char *type, size_t tl)
{
    return q_ev_type_taken(w->w_cfg, type, tl);
}

/* Read the next batch of w from the stream, from `from` up to `limit`
 * (inclusive): its JSON array in w_body, the range it covers in *to (the
 * last entry looked at), how many records in *n and the time of the
 * oldest in *oldest (unix us). 0 or an LMDB error. */
static int ev_read_batch(ev_wh_t *w, uint64_t from, uint64_t limit, uint64_t *to, int *n,
                         uint64_t *oldest)
{
    q_events_t *ev = w->w_ev;
    MDB_txn *txn;
    int rc = mdb_txn_begin(ev->ev_q->q_env, NULL, MDB_RDONLY, &txn);
    if (rc != 0)
        return rc;
    MDB_cursor *c;
    if ((rc = mdb_cursor_open(txn, ev->ev_dbi, &c)) != 0) {
        mdb_txn_abort(txn);
        return rc;
    }
    buf_reset(&w->w_body);
    buf_append(&w->w_body, "[", 1);
    *n = 0;
    *to = from - 1;
    *oldest = 0;
    uint8_t key[8];
    q_be64(key, from);
    MDB_val k = {8, key}, v;
    int looked = 0;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        uint64_t seq = q_rd64(k.mv_data);
        if (seq > limit || *n >= w->w_cfg->wh_batch || looked >= EV_SCAN_MAX)
            break;
        looked++;
        *to = seq;
        const uint8_t *p = v.mv_data;
        if (v.mv_size < 9 || v.mv_size < 9u + p[8])
            continue;
        size_t tl = p[8];
        if (!ev_type_wanted(w, (const char *)p + 9, tl))
            continue;
        if (*n > 0)
            buf_append(&w->w_body, ",", 1);
        buf_append(&w->w_body, p + 9 + tl, v.mv_size - 9 - tl);
        if (*n == 0)
            *oldest = q_rd64(p);
        (*n)++;
    }
    if (rc == 0 || rc == MDB_NOTFOUND) {
        rc = 0;
        if (*to < limit && *n < w->w_cfg->wh_batch && looked < EV_SCAN_MAX)
            *to = limit; /* nothing more up to limit: covered (trimmed or filtered) */
    }
    buf_append(&w->w_body, "]", 1);
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    return rc;
}

static void ev_set_error(ev_wh_t *w, const char *fmt, ...) PRINTF_LIKE(2, 3);
static void ev_set_error(ev_wh_t *w, const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&w->w_ev->ev_lock);
    va_start(ap, fmt);
    vsnprintf(w->w_last_error, sizeof(w->w_last_error), fmt, ap);
    va_end(ap);
    w->w_last_error_at = clock_now_us();
    pthread_mutex_unlock(&w->w_ev->ev_lock);
}

/* The record of a parked batch (docs/records.md, webhook_parked). */
static void ev_parked_record(ev_wh_t *w, const ev_range_t *r, int status, const char *body)
{
    buf_t b;
    buf_init(&b, 512);
    buf_append_str(&b, "{\"type\":\"webhook_parked\",\"time\":");
    q_json_time(&b, clock_now_us());
    buf_append_str(&b, ",\"webhook\":");
    q_json_strz(&b, w->w_cfg->wh_name);
    buf_printf(&b, ",\"first\":%llu,\"last\":%llu,\"http_status\":%d,\"response\":",
               (unsigned long long)r->from, (unsigned long long)r->to, status);
    q_json_opt(&b, body, body ? MIN(strlen(body), 512) : 0);
    buf_append_str(&b, "}\n");
    pthread_mutex_lock(&w->w_ev->ev_lock);
    buf_append(&w->w_ev->ev_xrec, b.b_data, b.b_len);
    ev_wh_moved(w); /* the queue thread takes it with its next commit */
    pthread_mutex_unlock(&w->w_ev->ev_lock);
    buf_free(&b);
}

static void ev_done_cb(void *arg, const http_response_t *r)
{
    ev_wh_t *w = arg;
    q_events_t *ev = w->w_ev;
    w->w_req = NULL;
    int st = r->hr_status;
    ev_range_t br = w->w_batch;
    pthread_mutex_lock(&ev->ev_lock);
    int nrec = w->w_in_flight;
    w->w_in_flight = 0;
    pthread_mutex_unlock(&ev->ev_lock);
    if (r->hr_error == NULL && st >= 200 && st <= 299) {
        w->w_fails = 0;
        w->w_not_before = 0;
        pthread_mutex_lock(&ev->ev_lock);
        w->w_sent_records += (uint64_t)nrec;
        w->w_sent_batches++;
        if (w->w_batch_unpark) {
            for (int i = 0; i < w->w_nparked; i++)
                if (w->w_parked[i].from == br.from) {
                    memmove(&w->w_parked[i], &w->w_parked[i + 1],
                            (size_t)(w->w_nparked - i - 1) * sizeof(ev_range_t));
                    w->w_nparked--;
                    break;
                }
        } else if (br.to > w->w_cursor) {
            w->w_cursor = br.to;
            w->w_span_from = 0;
        }
        ev_wh_moved(w);
        pthread_mutex_unlock(&ev->ev_lock);
    } else if (r->hr_error == NULL && st >= 400 && st <= 499 && st != 408 && st != 429) {
        /* the endpoint refuses this batch: retrying will not change its mind */
        log_error("events: webhook %s: HTTP %d for records %llu-%llu: parked (`sluicectl events "
                  "unpark %s` sends it again)",
                  w->w_cfg->wh_name, st, (unsigned long long)br.from, (unsigned long long)br.to,
                  w->w_cfg->wh_name);
        ev_set_error(w, "HTTP %d: %.200s", st, r->hr_body ? r->hr_body : "");
        w->w_fails = 0;
        w->w_not_before = 0;
        bool was_parked = w->w_batch_unpark;
        if (was_parked)
            atomic_store(&w->w_unpark, 0); /* refused again: stays parked until asked again */
        pthread_mutex_lock(&ev->ev_lock);
        w->w_failures++;
        if (!was_parked) {
            w->w_parked_batches++;
            if (w->w_nparked == EV_PARK_MAX) { /* the oldest goes: bounded */
                log_error("events: webhook %s: more than %d parked batches: records %llu-%llu "
                          "dropped",
                          w->w_cfg->wh_name, EV_PARK_MAX, (unsigned long long)w->w_parked[0].from,
                          (unsigned long long)w->w_parked[0].to);
                memmove(&w->w_parked[0], &w->w_parked[1],
                        (size_t)(EV_PARK_MAX - 1) * sizeof(ev_range_t));
                w->w_nparked--;
            }
            w->w_parked[w->w_nparked++] = br;
            if (br.to > w->w_cursor)
                w->w_cursor = br.to;
            w->w_span_from = 0;
            ev_wh_moved(w);
        }
        pthread_mutex_unlock(&ev->ev_lock);
        if (!was_parked)
            ev_parked_record(w, &br, st, r->hr_body);
    } else {
        /* 5xx, 408, 429, timeout, connection or TLS failure: the same
         * batch again after a backoff, at least Retry-After */
        const cfg_webhook_t *c = w->w_cfg;
        uint64_t d = c->wh_retry_initial_ms;
        for (uint32_t i = 1; i < w->w_fails + 1 && d < c->wh_retry_max_ms; i++)
            d *= 2;
        d = MIN(d, c->wh_retry_max_ms);
        if (r->hr_retry_after > 0)
            d = MAX(d, MIN(r->hr_retry_after, 86400) * 1000);
        w->w_fails++;
        w->w_not_before = clock_mono_us() + d * 1000;
        if (r->hr_error != NULL)
            ev_set_error(w, "%s", r->hr_error);
        else
            ev_set_error(w, "HTTP %d: %.200s", st, r->hr_body ? r->hr_body : "");
        pthread_mutex_lock(&ev->ev_lock);
        w->w_failures++;
        pthread_mutex_unlock(&ev->ev_lock);
        log_warn("events: webhook %s: %s%s (records %llu-%llu): again in %llu ms",
                 w->w_cfg->wh_name, r->hr_error ? "" : "HTTP ", r->hr_error ? r->hr_error : "",
                 (unsigned long long)br.from, (unsigned long long)br.to, (unsigned long long)d);
        if (r->hr_error == NULL)
            log_warn("events: webhook %s: the answer was %d", w->w_cfg->wh_name, st);
    }
    if (atomic_load(&ev->ev_stopping))
        return;
    ev_wh_try(w);
}

static void ev_timer_cb(uv_timer_t *t)
{
    ev_wh_try(t->data);
}

/* POST w_body (n records, range r, read from `from` on) to w; false when
 * the backlog bound dropped entries of it meanwhile (ev_bound): read again. */
static bool ev_post(ev_wh_t *w, ev_range_t r, uint64_t from, int n, bool unpark)
{
    pthread_mutex_lock(&w->w_ev->ev_lock);
    bool stale = unpark ? w->w_nparked == 0 || w->w_parked[0].from != from : w->w_cursor >= from;
    if (!stale) {
        w->w_in_flight = n;
        w->w_flight_from = from;
    }
    pthread_mutex_unlock(&w->w_ev->ev_lock);
    if (stale)
        return false;
    char ts[24], sig[EV_SIG_MAX];
    q_ev_sign(w->w_cfg, w->w_body.b_data, w->w_body.b_len, ts, sig);
    char h_ts[64], h_sig[2 * EVP_MAX_MD_SIZE + 40], h_seq[80], h_name[120];
    snprintf(h_ts, sizeof(h_ts), "X-Sluice-Timestamp: %s", ts);
    snprintf(h_sig, sizeof(h_sig), "X-Sluice-Signature: v1=%s", sig);
    snprintf(h_seq, sizeof(h_seq), "X-Sluice-Sequence: %llu-%llu", (unsigned long long)r.from,
             (unsigned long long)r.to);
    snprintf(h_name, sizeof(h_name), "X-Sluice-Webhook: %s", w->w_cfg->wh_name);
    const char *hdrs[] = {
        "Content-Type: application/json", h_ts, h_sig, h_seq, h_name, "Expect:", NULL};
    http_get_opts_t o = {
        .hg_url = w->w_cfg->wh_url,
        .hg_ca_file = w->w_cfg->wh_ca_file,
        .hg_max_body = EV_BODY_MAX,
        .hg_timeout_ms = w->w_cfg->wh_timeout_ms,
        .hg_allow_http = true, /* the config allows http:// to loopback only */
        .hg_post = w->w_body.b_data,
        .hg_post_len = w->w_body.b_len,
        .hg_headers = hdrs,
    };
    w->w_batch = r;
    w->w_batch_unpark = unpark;
    w->w_req = http_get(w->w_ev->ev_http, &o, ev_done_cb, w);
    if (w->w_req == NULL) {
        pthread_mutex_lock(&w->w_ev->ev_lock);
        w->w_in_flight = 0;
        pthread_mutex_unlock(&w->w_ev->ev_lock);
        ev_set_error(w, "libcurl could not start a request");
        w->w_not_before = clock_mono_us() + w->w_cfg->wh_retry_initial_ms * 1000;
        uv_timer_start(&w->w_timer, ev_timer_cb, w->w_cfg->wh_retry_initial_ms, 0);
    }
    return true;
}

/* Send w's next batch if it may: nothing in flight, not backing off, a
 * full batch or one whose oldest record waited max_latency. */
static void ev_wh_try(ev_wh_t *w)
{
    q_events_t *ev = w->w_ev;
    if (w->w_req != NULL || atomic_load(&ev->ev_stopping))
        return;
    uint64_t mono = clock_mono_us();
    if (w->w_not_before > mono) {
        uv_timer_start(&w->w_timer, ev_timer_cb, (w->w_not_before - mono + 999) / 1000, 0);
        return;
    }
    for (int guard = 0; guard < 64; guard++) {
        pthread_mutex_lock(&ev->ev_lock);
        uint64_t cursor = w->w_cursor;
        ev_range_t park = {0, 0};
        bool unpark = atomic_load(&w->w_unpark) && w->w_nparked > 0;
        if (unpark)
            park = w->w_parked[0];
        else
            atomic_store(&w->w_unpark, 0);
        pthread_mutex_unlock(&ev->ev_lock);
        uint64_t head = atomic_load(&ev->ev_head);
        uint64_t from = unpark ? park.from : cursor + 1;
        uint64_t limit = unpark ? park.to : head;
        if (from > limit)
            return; /* nothing new */
        uint64_t to, oldest;
        int n;
        int rc = ev_read_batch(w, from, limit, &to, &n, &oldest);
        if (rc != 0) {
            ev_set_error(w, "spool: %s", mdb_strerror(rc));
            uv_timer_start(&w->w_timer, ev_timer_cb, 1000, 0);
            return;
        }
        if (n == 0) { /* filtered out or trimmed: covered without a POST */
            if (unpark) {
                pthread_mutex_lock(&ev->ev_lock);
                if (w->w_nparked > 0 && w->w_parked[0].from == park.from) {
                    memmove(&w->w_parked[0], &w->w_parked[1],
                            (size_t)(w->w_nparked - 1) * sizeof(ev_range_t));
                    w->w_nparked--;
                }
                ev_wh_moved(w);
                pthread_mutex_unlock(&ev->ev_lock);
                continue;
            }
            if (to >= from) {
                if (w->w_span_from == 0)
                    w->w_span_from = from;
                pthread_mutex_lock(&ev->ev_lock);
                if (to > w->w_cursor)
                    w->w_cursor = to;
                ev_wh_moved(w);
                pthread_mutex_unlock(&ev->ev_lock);
            }
            if (to >= limit)
                return;
            continue;
        }
        if (!unpark && n < w->w_cfg->wh_batch && to >= head) {
            uint64_t now = clock_now_us();
            uint64_t due = oldest + w->w_cfg->wh_max_latency_ms * 1000;
            if (due > now) { /* a partial batch waits for more, up to max_latency */
                uv_timer_start(&w->w_timer, ev_timer_cb, (due - now + 999) / 1000, 0);
                return;
            }
        }
        uint64_t first = !unpark && w->w_span_from != 0 ? w->w_span_from : from;
        if (ev_post(w, (ev_range_t){first, to}, from, n, unpark))
            return;
    }
}

static void ev_wake_cb(uv_async_t *h)
{
    q_events_t *ev = h->data;
    if (atomic_load(&ev->ev_stopping)) {
        for (int i = 0; i < ev->ev_n; i++) {
            ev_wh_t *w = &ev->ev_wh[i];
            uv_timer_stop(&w->w_timer);
            uv_close((uv_handle_t *)&w->w_timer, NULL);
            w->w_req = NULL; /* http_client_free cancels it */
            ev_replay_stop(w->w_rp);
        }
        http_client_free(ev->ev_http);
        ev->ev_http = NULL;
        uv_close((uv_handle_t *)&ev->ev_wake, NULL);
        return;
    }
    for (int i = 0; i < ev->ev_n; i++) {
        ev_wh_t *w = &ev->ev_wh[i];
        pthread_mutex_lock(&ev->ev_lock);
        bool rp = w->w_rp_asked;
        w->w_rp_asked = false;
        pthread_mutex_unlock(&ev->ev_lock);
        if (rp)
            ev_replay_start(w->w_rp, w->w_rp_since, w->w_rp_until);
        ev_wh_try(w);
    }
}

static void *ev_thread_main(void *arg)
{
    q_events_t *ev = arg;
    log_thread_name("events");
    for (int i = 0; i < ev->ev_n; i++)
        ev_wh_try(&ev->ev_wh[i]);
    uv_run(&ev->ev_loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&ev->ev_loop);
    if (rc != 0)
        log_error("events: uv_loop_close: %s", uv_strerror(rc));
    SL_DEBUG_ASSERT(rc == 0);
    return NULL;
}

int q_events_start(queue_t *q)
{
    q_events_t *ev = q->q_ev;
    if (ev == NULL)
        return 0;
    int rc = uv_loop_init(&ev->ev_loop);
    if (rc != 0)
        return rc;
    char err[256];
    if (http_client_new(&ev->ev_loop, &ev->ev_http, err, sizeof(err)) != 0) {
        log_error("events: %s", err);
        uv_loop_close(&ev->ev_loop);
        return SL_ECONFIG;
    }
    uv_async_init(&ev->ev_loop, &ev->ev_wake, ev_wake_cb);
    ev->ev_wake.data = ev;
    for (int i = 0; i < ev->ev_n; i++) {
        ev_wh_t *w = &ev->ev_wh[i];
        uv_timer_init(&ev->ev_loop, &w->w_timer);
        w->w_timer.data = w;
        w->w_rp = ev_replay_new(&ev->ev_loop, ev->ev_http, w->w_cfg, ev->ev_cfg->c_acct_dir,
                                &ev->ev_lock);
    }
    rc = pthread_create(&ev->ev_thread, NULL, ev_thread_main, ev);
    if (rc != 0)
        return -rc;
    ev->ev_started = true;
    return 0;
}

void q_events_stop(queue_t *q)
{
    q_events_t *ev = q->q_ev;
    if (ev == NULL || !ev->ev_started)
        return;
    atomic_store(&ev->ev_stopping, 1);
    uv_async_send(&ev->ev_wake);
    pthread_join(ev->ev_thread, NULL);
    ev->ev_started = false;
    atomic_store(&ev->ev_dirty, 1); /* the last cursors go in the queue's last commit */
}

/* ------------------------------------------------------------ any thread */

struct json_object *queue_events_json(queue_t *q)
{
    json_object *o = json_object_new_object();
    json_object *arr = json_object_new_array();
    q_events_t *ev = q->q_ev;
    uint64_t head = ev ? atomic_load(&ev->ev_head) : 0;
    json_object_object_add(o, "head", json_object_new_int64((int64_t)head));
    if (ev == NULL) {
        json_object_object_add(o, "stored", json_object_new_int(0));
        json_object_object_add(o, "webhooks", arr);
        return o;
    }
    pthread_mutex_lock(&ev->ev_lock);
    for (int i = 0; i < ev->ev_n; i++) {
        ev_wh_t *w = &ev->ev_wh[i];
        json_object *j = json_object_new_object();
        json_object_object_add(j, "name", json_object_new_string(w->w_cfg->wh_name));
        json_object_object_add(j, "url", json_object_new_string(w->w_cfg->wh_url));
        json_object_object_add(j, "cursor", json_object_new_int64((int64_t)w->w_cursor));
        json_object_object_add(
            j, "lag_records",
            json_object_new_int64((int64_t)(head > w->w_cursor ? head - w->w_cursor : 0)));
        json_object_object_add(j, "in_flight", json_object_new_int(w->w_in_flight));
        uint64_t parked_recs = 0;
        json_object *pa = json_object_new_array();
        for (int k = 0; k < w->w_nparked; k++) {
            json_object *r = json_object_new_object();
            json_object_object_add(r, "first", json_object_new_int64((int64_t)w->w_parked[k].from));
            json_object_object_add(r, "last", json_object_new_int64((int64_t)w->w_parked[k].to));
            json_object_array_add(pa, r);
            parked_recs += w->w_parked[k].to - w->w_parked[k].from + 1;
        }
        json_object_object_add(j, "parked", pa);
        json_object_object_add(j, "sent_records",
                               json_object_new_int64((int64_t)w->w_sent_records));
        json_object_object_add(j, "sent_batches",
                               json_object_new_int64((int64_t)w->w_sent_batches));
        json_object_object_add(j, "failures", json_object_new_int64((int64_t)w->w_failures));
        json_object_object_add(j, "parked_batches",
                               json_object_new_int64((int64_t)w->w_parked_batches));
        json_object_object_add(j, "dropped_records", json_object_new_int64((int64_t)w->w_dropped));
        json_object_object_add(j, "last_error",
                               w->w_last_error[0] ? json_object_new_string(w->w_last_error) : NULL);
        json_object_object_add(j, "last_error_at",
                               w->w_last_error_at ? q_jtime_s(w->w_last_error_at / 1000000) : NULL);
        json_object_object_add(j, "replay", ev_replay_json(w->w_rp));
        json_object_array_add(arr, j);
    }
    pthread_mutex_unlock(&ev->ev_lock);
    /* lag in seconds: the age of the first record past each cursor */
    MDB_txn *txn;
    MDB_stat ms = {0};
    if (mdb_txn_begin(q->q_env, NULL, MDB_RDONLY, &txn) == 0) {
        mdb_stat(txn, ev->ev_dbi, &ms); /* the entries the spool keeps */
        MDB_cursor *c;
        if (mdb_cursor_open(txn, ev->ev_dbi, &c) == 0) {
            uint64_t now = clock_now_us();
            for (int i = 0; i < ev->ev_n; i++) {
                json_object *j = json_object_array_get_idx(arr, (size_t)i);
                json_object *cur;
                json_object_object_get_ex(j, "cursor", &cur);
                uint8_t key[8];
                q_be64(key, (uint64_t)json_object_get_int64(cur) + 1);
                MDB_val k = {8, key}, v;
                uint64_t lag = 0;
                if (mdb_cursor_get(c, &k, &v, MDB_SET_RANGE) == 0 && v.mv_size >= 8) {
                    uint64_t t = q_rd64(v.mv_data);
                    lag = now > t ? (now - t) / 1000000 : 0;
                }
                json_object_object_add(j, "lag_seconds", json_object_new_int64((int64_t)lag));
            }
            mdb_cursor_close(c);
        }
        mdb_txn_abort(txn);
    }
    json_object_object_add(o, "stored", json_object_new_int64((int64_t)ms.ms_entries));
    json_object_object_add(o, "webhooks", arr);
    return o;
}

int queue_events_unpark(queue_t *q, const char *name, int *nparked)
{
    q_events_t *ev = q->q_ev;
    for (int i = 0; ev != NULL && i < ev->ev_n; i++) {
        ev_wh_t *w = &ev->ev_wh[i];
        if (strcmp(w->w_cfg->wh_name, name) != 0)
            continue;
        pthread_mutex_lock(&ev->ev_lock);
        *nparked = w->w_nparked;
        pthread_mutex_unlock(&ev->ev_lock);
        atomic_store(&w->w_unpark, 1);
        ev_thread_kick(ev);
        return 0;
    }
    return SL_ENOTFOUND;
}

int queue_events_replay(queue_t *q, const char *name, uint64_t since_us, uint64_t until_us,
                        char *err, size_t errlen)
{
    q_events_t *ev = q->q_ev;
    ev_wh_t *w = NULL;
    for (int i = 0; ev != NULL && i < ev->ev_n && w == NULL; i++)
        if (strcmp(ev->ev_wh[i].w_cfg->wh_name, name) == 0)
            w = &ev->ev_wh[i];
    if (w == NULL) {
        snprintf(err, errlen, "no webhook \"%s\"", name);
        return SL_ENOTFOUND;
    }
    const char *fmt = ev->ev_cfg->c_acct_format;
    if (fmt != NULL && strcmp(fmt, "pmta-csv") == 0) {
        snprintf(err, errlen,
                 "log.accounting_format is pmta-csv: replay reads the JSON lines files "
                 "(acct*.jsonl); write them too with accounting_format = both");
        return SL_ECONFIG;
    }
    pthread_mutex_lock(&ev->ev_lock);
    bool busy = w->w_rp_asked || ev_replay_running(w->w_rp);
    if (!busy) {
        w->w_rp_asked = true;
        w->w_rp_since = since_us;
        w->w_rp_until = until_us;
    }
    pthread_mutex_unlock(&ev->ev_lock);
    if (busy) {
        snprintf(err, errlen, "a replay to \"%s\" is running (sluicectl events shows it)", name);
        return SL_EBUSY;
    }
    ev_thread_kick(ev);
    return 0;
}
