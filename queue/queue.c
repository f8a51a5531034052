/*
 * queue/queue.c - the spool environment and the queue thread.
 *
 *   queue_open / queue_start / queue_stop / queue_free   life cycle
 *   queue_submit        reception -> queue thread (group commit, reply)
 *   queue_submit_batch  the same for an HTTP request's messages, at once
 *   queue_request       control socket -> queue thread (LIST/INSPECT/CHECK)
 *
 * The queue thread owns a libuv loop with three MPSC channels, one per
 * message kind (submissions, control requests, delivery outcomes), so no
 * kind tag is needed in the public structs, and a wake-up async for
 * rotate/stop. Each channel drain is one group commit: all pending
 * submissions (up to spool.commit_batch per transaction) are written in
 * one write transaction and committed once; only then are the messages
 * pushed back to their submitters.
 *
 * Thread: queue_open/start/stop/free on the main thread; queue_submit,
 * queue_request, queue_outcome_submit, queue_acct_rotate, queue_stats
 * from any thread; everything static runs on the queue thread.
 */
#include "queue/queue_int.h"

#include <errno.h>
#include <json-c/json.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

static void *queue_thread_main(void *arg);
static void queue_sub_cb(chan_t *ch, chan_node_t *first, void *arg);
static void queue_req_cb(chan_t *ch, chan_node_t *first, void *arg);
static void queue_out_cb(chan_t *ch, chan_node_t *first, void *arg);
static void queue_acct_ev_cb(chan_t *ch, chan_node_t *first, void *arg);
static void queue_tlsrpt_cb(chan_t *ch, chan_node_t *first, void *arg);
static void queue_wake_cb(uv_async_t *h);
static void queue_timer_cb(uv_timer_t *t);
static void queue_commit_check_cb(uv_check_t *h);
static void queue_commit_pending(queue_t *q);
static int queue_txn(queue_t *q, chan_node_t *subs, size_t ns, chan_node_t *outs, size_t no);
static void queue_subs_done(queue_t *q, chan_node_t *first, size_t n, int rc);
static void queue_acks_release(queue_t *q, int status);
static void queue_acks_sync(queue_t *q);
static void q_reply_push(chan_node_t *first);
static void queue_acct_received(queue_t *q, const queue_msg_in_t *m, const char *when);
static void queue_req_do(queue_t *q, queue_req_t *r);
static json_object *queue_msg_json(queue_t *q, MDB_txn *txn, uint64_t id, const MDB_val *v,
                                   bool detail);
static bool queue_enter(queue_t *q);
static void queue_leave(queue_t *q);
static void queue_take_config(queue_t *q);

/* ------------------------------------------------------------ open / close */

/* The LMDB environment of the spool at path: the map at least the data
 * file's size and at most spool.max_size, the sync flags of spool.sync.
 * 0, or -1 with err set. Main thread, from queue_open. */
static int q_env_open(queue_t *q, const cfg_t *cfg, const char *path, uint64_t max, char *err,
                      size_t errlen)
{
    int rc;
    uint64_t map = cfg->c_spool_map_size;
    if (max > 0 && map > max)
        map = max;
    char data[1100];
    struct stat st;
    snprintf(data, sizeof(data), "%s/data.mdb", path);
    if (stat(data, &st) == 0 && (uint64_t)st.st_size > map)
        map = (uint64_t)st.st_size;

    if ((rc = mdb_env_create(&q->q_env)) != 0 || (rc = mdb_env_set_maxdbs(q->q_env, 16)) != 0 ||
        (rc = mdb_env_set_mapsize(q->q_env, map)) != 0) {
        snprintf(err, errlen, "spool %s: %s", path, mdb_strerror(rc));
        return -1;
    }
    unsigned flags = MDB_NORDAHEAD | MDB_NOTLS;
    if (cfg->c_spool_sync == CFG_SYNC_NONE)
        flags |= MDB_NOSYNC | MDB_NOMETASYNC; /* unsafe: for comparison runs only */
    else
        flags |= MDB_NOMETASYNC; /* durable all the same: a 250 waits for the next data
                                    sync, which covers the meta page (queue_acks_release) */
    rc = mdb_env_open(q->q_env, path, flags, 0600);
    if (rc != 0) {
        snprintf(err, errlen, "spool %s: %s", path, rc > 0 ? strerror(rc) : mdb_strerror(rc));
        mdb_env_close(q->q_env);
        q->q_env = NULL;
        return -1;
    }
    MDB_envinfo info;
    MDB_stat mst;
    mdb_env_info(q->q_env, &info);
    mdb_env_stat(q->q_env, &mst);
    q->q_map_size = info.me_mapsize;
    q->q_psize = mst.ms_psize;
    return 0;
}

int queue_open(cfg_t *cfg, queue_t **out, char *err, size_t errlen)
{
    SL_ASSERT_MAIN_THREAD();
    queue_t *q = xcalloc(1, sizeof(*q));
    MDB_txn *txn = NULL;
    const char *path = cfg->c_spool_path;
    int rc;

    q->q_cfg = cfg_ref(cfg);
    pthread_mutex_init(&q->q_cfg_lock, NULL);
    pthread_rwlockattr_t rwa; /* a waiting map growth must not starve behind lookups */
    pthread_rwlockattr_init(&rwa);
    pthread_rwlockattr_setkind_np(&rwa, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&q->q_map_lock, &rwa);
    pthread_rwlockattr_destroy(&rwa);
    atomic_store(&q->q_high_water, cfg->c_spool_high_water);
    snprintf(q->q_path, sizeof(q->q_path), "%s", path);
    buf_init(&q->q_scratch, 4096);
    buf_init(&q->q_scratch2, 4096);
    buf_init(&q->q_scratch_hdr, 1024);
    q->q_rand = clock_now_us() | 1;
    atomic_store(&q->q_stopping, 1); /* producers are refused until queue_start */

    rc = q_mkdir_p(path, 0700);
    if (rc != 0) {
        snprintf(err, errlen, "spool %s: cannot create: %s", path, strerror(-rc));
        goto fail;
    }
    if (access(path, R_OK | W_OK | X_OK) != 0) {
        snprintf(err, errlen, "spool %s: %s", path, strerror(errno));
        goto fail;
    }
    uint64_t max = cfg->c_spool_max_size;
    if (q_env_open(q, cfg, path, max, err, errlen) != 0)
        goto fail;

    if ((rc = mdb_txn_begin(q->q_env, NULL, 0, &txn)) != 0 ||
        (rc = mdb_dbi_open(txn, "msg", MDB_CREATE, &q->q_dbi_msg)) != 0 ||
        (rc = mdb_dbi_open(txn, "rcpt", MDB_CREATE, &q->q_dbi_rcpt)) != 0 ||
        (rc = mdb_dbi_open(txn, "due", MDB_CREATE, &q->q_dbi_due)) != 0 ||
        (rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &q->q_dbi_meta)) != 0 ||
        (rc = mdb_dbi_open(txn, "tlsrpt", MDB_CREATE, &q->q_dbi_tlsrpt)) != 0 ||
        (rc = mdb_dbi_open(txn, "dsn", MDB_CREATE, &q->q_dbi_dsn)) != 0 ||
        (rc = q_supp_open(q, txn)) != 0) {
        snprintf(err, errlen, "spool %s: %s", path, mdb_strerror(rc));
        goto fail;
    }
    MDB_val k = {7, "version"}, v;
    rc = mdb_get(txn, q->q_dbi_meta, &k, &v);
    if (rc == MDB_NOTFOUND) {
        v.mv_size = 1;
        v.mv_data = "1";
        rc = mdb_put(txn, q->q_dbi_meta, &k, &v, 0);
    } else if (rc == 0 && (v.mv_size != 1 || *(char *)v.mv_data != '1')) {
        snprintf(err, errlen, "spool %s: unknown spool version", path);
        goto fail;
    }
    if (rc == 0 && q_events_open(q, txn, err, errlen) != 0)
        goto fail;
    if (rc != 0) {
        snprintf(err, errlen, "spool %s: %s", path, mdb_strerror(rc));
        goto fail;
    }
    MDB_stat s1, s2;
    mdb_stat(txn, q->q_dbi_msg, &s1);
    mdb_stat(txn, q->q_dbi_rcpt, &s2);
    atomic_store(&q->q_stats.qs_msgs, s1.ms_entries);
    atomic_store(&q->q_stats.qs_rcpts, s2.ms_entries);
    MDB_cursor *cur;
    if (mdb_cursor_open(txn, q->q_dbi_msg, &cur) == 0) {
        if (mdb_cursor_get(cur, &k, &v, MDB_LAST) == 0 && k.mv_size == Q_MSG_KEY_LEN)
            q_msgid_seen(q_rd64(k.mv_data));
        mdb_cursor_close(cur);
    }
    rc = mdb_txn_commit(txn);
    txn = NULL;
    if (rc != 0) {
        snprintf(err, errlen, "spool %s: %s", path, mdb_strerror(rc));
        goto fail;
    }
    atomic_store(&q->q_stats.qs_max_size, max);
    q_stats_refresh(q);

    if (q_acct_open(cfg->c_acct_dir, cfg->c_acct_max_size, cfg->c_acct_format, cfg->c_acct_headers,
                    &q->q_acct, err, errlen) != 0)
        goto fail;
    q_sched_init(q);
    q_outcomes_init(q);
    log_info("spool %s: %zu messages, %zu recipients, map %llu MB", path, s1.ms_entries,
             s2.ms_entries, (unsigned long long)(q->q_map_size >> 20));
    *out = q;
    return 0;
fail:
    if (txn)
        mdb_txn_abort(txn);
    queue_free(q);
    return SL_ESPOOL;
}

int queue_start(queue_t *q)
{
    SL_ASSERT_MAIN_THREAD();
    SL_ASSERT(!q->q_started);
    int rc = uv_loop_init(&q->q_loop);
    if (rc != 0)
        return rc;
    /* Handles are set up here, before the thread runs the loop, so that
     * producers can push as soon as queue_start returns. */
    q->q_ch_sub = chan_new(&q->q_loop, queue_sub_cb, q);
    q->q_ch_req = chan_new(&q->q_loop, queue_req_cb, q);
    q->q_ch_out = chan_new(&q->q_loop, queue_out_cb, q);
    q->q_ch_acct = chan_new(&q->q_loop, queue_acct_ev_cb, q);
    q->q_ch_tlsrpt = chan_new(&q->q_loop, queue_tlsrpt_cb, q);
    uv_async_init(&q->q_loop, &q->q_wake, queue_wake_cb);
    q->q_wake.data = q;
    uv_timer_init(&q->q_loop, &q->q_timer);
    q->q_timer.data = q;
    uv_timer_init(&q->q_loop, &q->q_kick);
    q->q_kick.data = q;
    uv_check_init(&q->q_loop, &q->q_commit_check);
    q->q_commit_check.data = q;
    uv_idle_init(&q->q_loop, &q->q_commit_idle);
    q->q_commit_idle.data = q;
    atomic_store(&q->q_stopping, 0);
    q->q_as_cap = mem_budget_cap(q->q_cfg->c_active_size, 0);
    q->q_as_when = clock_mono_us();
    if (q->q_as_cap < q->q_cfg->c_active_size)
        log_warn("queue: address space limit (ulimit -v): queue.active_size capped at %llu MB",
                 (unsigned long long)(q->q_as_cap >> 20));
    atomic_store(&q->q_stats.qs_active_limit, q->q_as_cap);
    if ((rc = q_events_start(q)) != 0)
        return rc;
    q->q_started_us = clock_now_us(); /* DSN marks older than this were left by a crash */
    rc = pthread_create(&q->q_thread, NULL, queue_thread_main, q);
    if (rc != 0)
        return -rc;
    q->q_started = true;
    return 0;
}

static void *queue_thread_main(void *arg)
{
    queue_t *q = arg;
    q->q_tid = pthread_self();
    log_thread_name("queue");
    q_outcomes_sweep(q, true); /* DSN marks a crash (or a stop that failed) left */
    uint64_t iv = q->q_cfg->c_scan_interval_ms ? q->q_cfg->c_scan_interval_ms : 1000;
    uv_timer_start(&q->q_timer, queue_timer_cb, 0, iv);
    uv_run(&q->q_loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&q->q_loop);
    if (rc != 0)
        log_error("queue: uv_loop_close: %s", uv_strerror(rc));
    SL_DEBUG_ASSERT(rc == 0);
    return NULL;
}

static void queue_closed_cb(uv_handle_t *h)
{
    UNUSED(h);
}

static void queue_wake_cb(uv_async_t *h)
{
    queue_t *q = h->data;
    Q_ASSERT_QUEUE_THREAD(q);
    if (atomic_exchange(&q->q_rotate, 0)) {
        char msg[1400];
        if (q_acct_rotate(q->q_acct, msg, sizeof(msg)) != 0)
            log_error("acct: %s", msg);
        else
            log_info("acct: %s", msg);
    }
    queue_take_config(q);
    if (q_events_want_txn(q)) /* records waiting for the stream, a webhook's cursor moved */
        uv_check_start(&q->q_commit_check, queue_commit_check_cb);
    if (!atomic_load(&q->q_stopping))
        return;
    /* chan_close hands every message still queued to its callback first,
     * so everything submitted before the stop is committed. */
    chan_close(q->q_ch_sub);
    chan_close(q->q_ch_out);
    chan_close(q->q_ch_req);
    queue_commit_pending(q); /* what the closes handed over */
    q_outcomes_stop(q);      /* every DSN marked: built and written */
    queue_acks_sync(q);
    uv_close((uv_handle_t *)&q->q_commit_check, queue_closed_cb);
    uv_close((uv_handle_t *)&q->q_commit_idle, queue_closed_cb);
    chan_close(q->q_ch_acct);
    chan_close(q->q_ch_tlsrpt);
    q_tlsrpt_flush(q); /* counters of the last period: a restart loses none */
    q_tlsrpt_send_stop(q);
    q->q_ch_sub = q->q_ch_out = q->q_ch_req = q->q_ch_acct = q->q_ch_tlsrpt = NULL;
    q_admin_stop(q); /* answers operator requests still in progress */
    q_acct_flush(q->q_acct);
    uv_timer_stop(&q->q_timer);
    uv_close((uv_handle_t *)&q->q_timer, queue_closed_cb);
    uv_timer_stop(&q->q_kick);
    uv_close((uv_handle_t *)&q->q_kick, queue_closed_cb);
    uv_close((uv_handle_t *)&q->q_wake, queue_closed_cb);
}

void queue_stop(queue_t *q)
{
    SL_ASSERT_MAIN_THREAD();
    if (q == NULL || !q->q_started)
        return;
    q_events_stop(q); /* first: its last cursors go into the queue's last commit */
    atomic_store(&q->q_stopping, 1);
    /* wait until no producer is between its check and its push */
    while (atomic_load(&q->q_users) > 0)
        sched_yield();
    uv_async_send(&q->q_wake);
    pthread_join(q->q_thread, NULL);
    q->q_started = false;
    if (q->q_env) {
        mdb_env_close(q->q_env);
        q->q_env = NULL;
    }
    log_info("spool %s: closed", q->q_path);
}

void queue_free(queue_t *q)
{
    SL_ASSERT_MAIN_THREAD();
    if (q == NULL)
        return;
    queue_stop(q);
    if (q->q_env)
        mdb_env_close(q->q_env);
    q_acct_close(q->q_acct);
    q_holds_free(q);
    q_tlsrpt_free(q);
    q_tlsrpt_send_free(q);
    q_sched_free(q);
    q_outcomes_free(q);
    q_events_free(q);
    q_supp_free(q);
    buf_free(&q->q_scratch);
    buf_free(&q->q_scratch2);
    buf_free(&q->q_scratch_hdr);
    if (q->q_cfg)
        cfg_unref(q->q_cfg);
    if (q->q_cfg_next)
        cfg_unref(q->q_cfg_next);
    pthread_mutex_destroy(&q->q_cfg_lock);
    pthread_rwlock_destroy(&q->q_map_lock);
    free(q);
}

/* ------------------------------------------------------------ producers */

/* A producer announces itself so that queue_stop never frees a channel
 * under it. False when the queue is stopping (or not started). */
static bool queue_enter(queue_t *q)
{
    atomic_fetch_add(&q->q_users, 1);
    if (atomic_load(&q->q_stopping)) {
        atomic_fetch_sub(&q->q_users, 1);
        return false;
    }
    return true;
}

static void queue_leave(queue_t *q)
{
    atomic_fetch_sub(&q->q_users, 1);
}

void queue_submit(queue_t *q, queue_msg_in_t *m)
{
    if (!queue_enter(q)) {
        m->qm_status = SL_ESPOOL;
        chan_push(m->qm_reply, &m->qm_node);
        return;
    }
    atomic_fetch_add_explicit(&q->q_stats.qs_pending, 1, memory_order_relaxed);
    chan_push(q->q_ch_sub, &m->qm_node);
    queue_leave(q);
}

void queue_submit_batch(queue_t *q, queue_msg_in_t **msgs, size_t n)
{
    for (size_t i = 0; i + 1 < n; i++)
        msgs[i]->qm_node.cn_next = &msgs[i + 1]->qm_node;
    msgs[n - 1]->qm_node.cn_next = NULL;
    if (!queue_enter(q)) {
        for (size_t i = 0; i < n; i++)
            msgs[i]->qm_status = SL_ESPOOL;
        q_reply_push(&msgs[0]->qm_node);
        return;
    }
    atomic_fetch_add_explicit(&q->q_stats.qs_pending, n, memory_order_relaxed);
    chan_push_list(q->q_ch_sub, &msgs[0]->qm_node, &msgs[n - 1]->qm_node, n);
    queue_leave(q);
}

void queue_request(queue_t *q, queue_req_t *r)
{
    if (!queue_enter(q)) {
        r->qq_result = NULL;
        snprintf(r->qq_error, sizeof(r->qq_error), "queue is stopping");
        chan_push(r->qq_reply, &r->qq_node);
        return;
    }
    chan_push(q->q_ch_req, &r->qq_node);
    queue_leave(q);
}

/* One suppression entry sent to the queue thread, no answer (suppress.c
 * frees the request); sr_op and what only it needs are the caller's. */
static queue_supp_req_t *supp_one(const char *addr, const char *scope, const char *reason,
                                  const char *source)
{
    queue_supp_req_t *sr = xcalloc(1, sizeof(*sr));
    sr->sr_addrs = xcalloc(1, sizeof(char *));
    sr->sr_addrs[0] = xstrdup(addr);
    sr->sr_naddrs = 1;
    sr->sr_scope = scope && scope[0] ? xstrdup(scope) : NULL;
    sr->sr_reason = xstrdup(reason);
    sr->sr_source = source ? xstrdup(source) : NULL;
    return sr;
}

static void supp_send(queue_t *q, queue_supp_req_t *sr)
{
    queue_req_t *r = xcalloc(1, sizeof(*r));
    r->qq_type = QREQ_SUPPRESS; /* no qq_reply: suppress.c frees it */
    r->qq_supp = sr;
    if (!queue_enter(q)) {
        queue_supp_req_free(sr);
        free(r);
        return;
    }
    chan_push(q->q_ch_req, &r->qq_node);
    queue_leave(q);
}

void queue_supp_report(queue_t *q, const char *addr, const char *scope, const char *reason,
                       const char *source)
{
    queue_supp_req_t *sr = supp_one(addr, scope, reason, source);
    sr->sr_op = QSUPP_REPORT;
    supp_send(q, sr);
}

void queue_supp_remote(queue_t *q, const char *addr, const char *scope, const char *reason,
                       uint64_t expires, const char *node, bool if_absent)
{
    char src[160];
    snprintf(src, sizeof(src), "cluster:%s", node);
    queue_supp_req_t *sr = supp_one(addr, scope, reason, src);
    sr->sr_op = QSUPP_REMOTE;
    sr->sr_expires = expires;
    sr->sr_if_absent = if_absent;
    supp_send(q, sr);
}

void queue_outcome_submit(queue_t *q, queue_outcome_t *o)
{
    if (!queue_enter(q)) {
        /* not committed: the recipient stays due and is tried again */
        queue_outcome_free(o);
        return;
    }
    chan_push(q->q_ch_out, &o->qo_node);
    queue_leave(q);
}

void queue_set_config(queue_t *q, cfg_t *cfg)
{
    cfg_t *nc = cfg_ref(cfg), *old;
    pthread_mutex_lock(&q->q_cfg_lock);
    old = q->q_cfg_next;
    q->q_cfg_next = nc;
    pthread_mutex_unlock(&q->q_cfg_lock);
    if (old)
        cfg_unref(old);
    atomic_store(&q->q_high_water, cfg->c_spool_high_water);
    if (queue_enter(q)) {
        uv_async_send(&q->q_wake);
        queue_leave(q);
    }
}

/* Queue thread: take a config queue_set_config left. */
static void queue_take_config(queue_t *q)
{
    Q_ASSERT_QUEUE_THREAD(q);
    pthread_mutex_lock(&q->q_cfg_lock);
    cfg_t *nc = q->q_cfg_next;
    q->q_cfg_next = NULL;
    pthread_mutex_unlock(&q->q_cfg_lock);
    if (nc == NULL)
        return;
    cfg_t *old = q->q_cfg;
    q->q_cfg = nc;
    if (nc->c_scan_interval_ms != old->c_scan_interval_ms &&
        uv_is_active((uv_handle_t *)&q->q_timer))
        uv_timer_start(&q->q_timer, queue_timer_cb, nc->c_scan_interval_ms, nc->c_scan_interval_ms);
    q->q_as_when = 0; /* the next scan works out queue.active_size again (ulimit -v cap) */
    cfg_unref(old);
    log_info("queue: configuration reloaded (retry, max_age, dsn, active_*, scan_interval)");
    q_sched_kick(q);
}

void queue_acct_rotate(queue_t *q)
{
    atomic_store(&q->q_rotate, 1);
    if (queue_enter(q)) {
        uv_async_send(&q->q_wake);
        queue_leave(q);
    }
}

void queue_set_dispatcher(queue_t *q, queue_dispatch_fn fn, void *arg)
{
    q->q_dispatch = fn;
    q->q_dispatch_arg = arg;
}

const queue_stats_t *queue_stats(const queue_t *q)
{
    return &q->q_stats;
}

bool queue_over_high_water(const queue_t *q)
{
    return atomic_load_explicit(&q->q_stats.qs_fill_pct, memory_order_relaxed) >=
           atomic_load_explicit(&q->q_high_water, memory_order_relaxed);
}

uint64_t queue_pending(const queue_t *q)
{
    return atomic_load_explicit(&q->q_stats.qs_pending, memory_order_relaxed);
}

/*
 * Group commit. The channel callbacks only collect (queue_sub_cb,
 * queue_out_cb); the check handle runs once libuv has handled every
 * wake-up of this loop iteration and writes all of it - submissions and
 * delivery outcomes - in one write transaction (at most commit_batch of
 * each per transaction): one commit per cycle, not one per kind.
 *
 * With spool.sync = fsync, LMDB runs with MDB_NOMETASYNC: mdb_txn_commit
 * writes the pages, fdatasyncs, then writes the meta page without a sync
 * of its own. That commit is durable after the next fdatasync of the file
 * - the next commit's, or mdb_env_sync() when no work follows - so the
 * submissions of a commit wait on q_ack_* for it before their 250. Under
 * load this halves the syncs per commit (LMDB otherwise does two ordered
 * ones: pages, then meta). LMDB reuses a snapshot's freed pages only two
 * commits later, so a crash in the middle of a flush still finds the last
 * synced meta page and its pages intact (LMDB's NOMETASYNC guarantee: the
 * last commit may be lost, never the integrity) - and nothing of the
 * unsynced commit has been acknowledged.
 */
static void queue_idle_cb(uv_idle_t *h)
{
    UNUSED(h); /* an active idle handle only keeps the next poll from blocking */
}

static void queue_commit_check_cb(uv_check_t *h)
{
    queue_t *q = h->data;
    Q_ASSERT_QUEUE_THREAD(q);
    if (q->q_sub_head != NULL || q->q_out_head != NULL || q_events_want_txn(q)) {
        queue_commit_pending(q);
    } else if (q->q_ack_head != NULL) {
        /* nothing came in during the last commit: sync it on its own */
        queue_acks_sync(q);
    }
    if (q->q_ack_head != NULL) {
        /* come back at once: what arrives meanwhile joins the next commit */
        uv_idle_start(&q->q_commit_idle, queue_idle_cb);
    } else {
        uv_idle_stop(&q->q_commit_idle);
        uv_check_stop(&q->q_commit_check);
    }
}

/* Cut up to max nodes off the front of a list; returns how many were cut
 * (they stay linked from the old head). */
static size_t list_cut(chan_node_t **head, chan_node_t **tail, size_t max)
{
    chan_node_t *n = *head;
    size_t k = 0;
    while (n != NULL && k < max) {
        n = n->cn_next;
        k++;
    }
    *head = n;
    if (n == NULL)
        *tail = NULL;
    return k;
}

static void list_append(chan_node_t **head, chan_node_t **tail, chan_node_t *first)
{
    if (first == NULL)
        return;
    if (*tail)
        (*tail)->cn_next = first;
    else
        *head = first;
    chan_node_t *n = first;
    while (n->cn_next != NULL)
        n = n->cn_next;
    *tail = n;
}

/* Commit everything collected, in transactions of at most commit_batch
 * submissions and commit_batch outcomes. */
static void queue_commit_pending(queue_t *q)
{
    Q_ASSERT_QUEUE_THREAD(q);
    size_t batch = q->q_cfg->c_spool_batch > 0 ? (size_t)q->q_cfg->c_spool_batch : 1024;
    bool ev = q_events_want_txn(q); /* one transaction for the stream alone, at least */
    while (q->q_sub_head != NULL || q->q_out_head != NULL || ev) {
        ev = false;
        chan_node_t *subs = q->q_sub_head, *outs = q->q_out_head;
        size_t ns = list_cut(&q->q_sub_head, &q->q_sub_tail, batch);
        size_t no = list_cut(&q->q_out_head, &q->q_out_tail, batch);
        int src = queue_txn(q, subs, ns, outs, no);
        int orc = src;
        if (src != 0 && ns > 0 && no > 0) {
            /* one kind's failure (a full map) must not fail the other */
            src = queue_txn(q, subs, ns, NULL, 0);
            orc = queue_txn(q, NULL, 0, outs, no);
        }
        if (src == 0 || orc == 0) {
            queue_acks_release(q, 0); /* this commit's fdatasync covered the earlier ones */
            q_stats_refresh(q);
        } else if (q->q_ack_head != NULL) {
            queue_acks_sync(q);
        }
        if (ns > 0)
            queue_subs_done(q, subs, ns, src);
        if (no > 0) {
            if (orc != 0)
                log_error("spool %s: commit of %zu outcomes failed: %s", q->q_path, no,
                          mdb_strerror(orc));
            q_outcomes_done(q, outs, no, orc == 0);
        }
    }
    q_acct_flush(q->q_acct);
    q_sched_kick(q);
}

typedef struct queue_batch {
    chan_node_t *qb_subs, *qb_outs;
    size_t qb_ns, qb_no;
} queue_batch_t;

static int queue_batch_write(queue_t *q, MDB_txn *txn, void *arg)
{
    queue_batch_t *b = arg;
    int rc = 0;
    chan_node_t *node = b->qb_subs;
    for (size_t i = 0; rc == 0 && i < b->qb_ns; i++, node = node->cn_next)
        if ((rc = q_insert_msg(q, txn, (queue_msg_in_t *)node)) == 0)
            rc = q_sent_note(q, txn, (queue_msg_in_t *)node); /* bounces.inbound only */
    if (rc == 0 && b->qb_no > 0)
        rc = q_outcomes_apply(q, txn, b->qb_outs, b->qb_no);
    return rc;
}

/* One write transaction: the ns submissions and the no outcomes (q_events_write:
 * on MDB_MAP_FULL the map grows and it starts over). 0 or an LMDB error
 * (then nothing of it was written). */
static int queue_txn(queue_t *q, chan_node_t *subs, size_t ns, chan_node_t *outs, size_t no)
{
    queue_batch_t b = {.qb_subs = subs, .qb_outs = outs, .qb_ns = ns, .qb_no = no};
    int rc = q_events_write(q, queue_batch_write, &b);
    if (rc == 0)
        atomic_fetch_add_explicit(&q->q_stats.qs_commits, 1, memory_order_relaxed);
    else
        atomic_fetch_add_explicit(&q->q_stats.qs_errors, 1, memory_order_relaxed);
    return rc;
}

/* A commit error that means "no space": a full map, a full disk or quota,
 * no memory for the transaction's dirty pages (ulimit -v), or LMDB's EIO
 * for a short write when the disk fills part-way through a page run (then
 * the file system has next to nothing left). Failure path only: the
 * statvfs costs nothing on the hot path. */
static bool q_rc_full(const queue_t *q, int rc)
{
    if (rc == MDB_MAP_FULL || rc == ENOSPC || rc == EDQUOT || rc == ENOMEM)
        return true;
    struct statvfs sv;
    return rc == EIO && statvfs(q->q_path, &sv) == 0 &&
           (uint64_t)sv.f_bavail * sv.f_frsize < (1u << 20);
}

/* After the transaction of n submissions: committed ones wait on q_ack_*
 * for the next data sync (without fsync they are answered at once);
 * failed ones are answered with their error. */
static void queue_subs_done(queue_t *q, chan_node_t *first, size_t n, int rc)
{
    /* a full map or a full disk: 452 4.3.1 (RFC 3463), not a spool fault */
    int status = rc == 0 ? 0 : q_rc_full(q, rc) ? SL_EFULL : SL_ESPOOL;
    bool hold = status == 0 && q->q_cfg->c_spool_sync != CFG_SYNC_NONE;
    if (status != 0)
        log_error("spool %s: commit of %zu messages failed: %s", q->q_path, n, mdb_strerror(rc));
    uint64_t nrcpt = 0;
    char when[40];
    time_fmt_rfc3339(clock_now_us(), when, sizeof(when)); /* one time for the batch's records */
    chan_node_t *node = first, *last = NULL;
    for (size_t i = 0; i < n; i++) {
        queue_msg_in_t *m = (queue_msg_in_t *)node;
        m->qm_status = status;
        nrcpt += (uint64_t)m->qm_nrcpt;
        if (!hold) {
            if (status == 0)
                queue_acct_received(q, m, when);
            atomic_fetch_sub_explicit(&q->q_stats.qs_pending, 1, memory_order_relaxed);
        }
        last = node;
        node = node->cn_next;
    }
    last->cn_next = NULL; /* list_cut left the rest linked from it */
    if (hold) {
        if (q->q_ack_tail)
            q->q_ack_tail->cn_next = first;
        else
            q->q_ack_head = first;
        q->q_ack_tail = last;
    } else {
        q_reply_push(first);
    }
    if (status == 0) {
        atomic_fetch_add_explicit(&q->q_stats.qs_received, n, memory_order_relaxed);
        atomic_fetch_add_explicit(&q->q_stats.qs_msgs, n, memory_order_relaxed);
        atomic_fetch_add_explicit(&q->q_stats.qs_rcpts, nrcpt, memory_order_relaxed);
    }
}

/* Every commit so far is durable (status 0): the 250s may go, with their
 * "received" accounting records, timed at the acknowledgement. Or the sync
 * that should have made them durable failed: 451, the client tries again
 * (the message may then be delivered twice, never lost). */
static void queue_acks_release(queue_t *q, int status)
{
    chan_node_t *node = q->q_ack_head;
    if (node == NULL)
        return;
    q->q_ack_head = q->q_ack_tail = NULL;
    if (status == 0) {
        char when[40];
        time_fmt_rfc3339(clock_now_us(), when, sizeof(when)); /* formatted once, not per record */
        for (chan_node_t *n = node; n != NULL; n = n->cn_next)
            queue_acct_received(q, (queue_msg_in_t *)n, when);
        q_acct_flush(q->q_acct); /* the records are in the log before the 250s */
    }
    for (chan_node_t *n = node; n != NULL; n = n->cn_next) {
        ((queue_msg_in_t *)n)->qm_status = status;
        atomic_fetch_sub_explicit(&q->q_stats.qs_pending, 1, memory_order_relaxed);
    }
    q_reply_push(node);
}

/* Send every message of the list (linked through qm_node) back to its
 * submitter: a run of messages with the same qm_reply (an HTTP request's
 * batch, or SMTP sessions answered on one channel) in one push, in list
 * order, as the pushes one by one would have delivered them. */
static void q_reply_push(chan_node_t *first)
{
    while (first != NULL) {
        chan_t *to = ((queue_msg_in_t *)first)->qm_reply;
        chan_node_t *last = first;
        size_t n = 1;
        while (last->cn_next != NULL && ((queue_msg_in_t *)last->cn_next)->qm_reply == to) {
            last = last->cn_next;
            n++;
        }
        chan_node_t *next = last->cn_next;
        chan_push_list(to, first, last, n);
        first = next;
    }
}

/* Make the last commit durable with an explicit sync, then answer. */
static void queue_acks_sync(queue_t *q)
{
    if (q->q_ack_head == NULL)
        return;
    int rc = mdb_env_sync(q->q_env, 1);
    if (rc != 0) {
        atomic_fetch_add_explicit(&q->q_stats.qs_errors, 1, memory_order_relaxed);
        log_error("spool %s: sync: %s", q->q_path, rc > 0 ? strerror(rc) : mdb_strerror(rc));
    }
    queue_acks_release(q, rc == 0 ? 0 : SL_ESPOOL);
}

/* Decimal, as printf's %llu: the records of a commit without printf (its
 * two passes per field were a fifth of the queue thread's time under HTTP
 * injection). */
static void append_dec(buf_t *b, uint64_t v)
{
    char d[20];
    int i = (int)sizeof(d);
    do {
        d[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    buf_append(b, d + i, sizeof(d) - (size_t)i);
}

/* The "received" record; when: the acknowledgement's time, RFC 3339. */
static void queue_acct_received(queue_t *q, const queue_msg_in_t *m, const char *when)
{
    buf_t rec;
    buf_init(&rec, 512);
    buf_t *b = &rec;
    char id[17];
    buf_append_str(b, "{\"type\":\"received\",\"time\":\"");
    buf_append_str(b, when);
    buf_append_str(b, "\",\"msgid\":\"");
    buf_append(b, queue_msgid_fmt(m->qm_id, id), 16);
    buf_append_str(b, "\",\"job\":");
    q_json_optz(b, m->qm_job);
    buf_append_str(b, ",\"sender\":");
    q_json_strz(b, m->qm_sender ? m->qm_sender : "");
    buf_append_str(b, ",\"recipients\":");
    append_dec(b, (uint64_t)m->qm_nrcpt);
    buf_append_str(b, ",\"rcpts\":[");
    for (int i = 0; i < m->qm_nrcpt; i++) {
        if (i)
            buf_append(b, ",", 1);
        q_json_strz(b, m->qm_rcpts[i].qr_addr);
    }
    buf_append_str(b, "],\"size\":");
    append_dec(b, m->qm_body.b_len);
    buf_append_str(b, ",\"client_ip\":");
    q_json_optz(b, m->qm_client_ip);
    buf_append_str(b, ",\"auth_user\":");
    q_json_optz(b, m->qm_auth_user);
    buf_append_str(b, ",\"envid\":");
    q_json_optz(b, m->qm_envid);
    buf_append_str(b, "}\n");
    q_record_emit(q, rec.b_data, rec.b_len);
    buf_free(&rec);
}

/* ------------------------------------------------------------ queue thread */

/* Collect; the check handle commits (see "Group commit" above). */
static void queue_sub_cb(chan_t *ch, chan_node_t *first, void *arg)
{
    queue_t *q = arg;
    Q_ASSERT_QUEUE_THREAD(q);
    UNUSED(ch);
    list_append(&q->q_sub_head, &q->q_sub_tail, first);
    uv_check_start(&q->q_commit_check, queue_commit_check_cb);
}

static void queue_out_cb(chan_t *ch, chan_node_t *first, void *arg)
{
    queue_t *q = arg;
    Q_ASSERT_QUEUE_THREAD(q);
    UNUSED(ch);
    list_append(&q->q_out_head, &q->q_out_tail, first);
    uv_check_start(&q->q_commit_check, queue_commit_check_cb);
}

/* queue_acct_event: one accounting record, owned text after the node. */
typedef struct q_acct_ev {
    chan_node_t ae_node;
    char ae_line[];
} q_acct_ev_t;

void queue_acct_event(queue_t *q, const char *json_line)
{
    /* json-c passes bytes >= 0x80 (and DEL) through as they are: a record
     * holding a peer's reply is made valid UTF-8 here (docs/records.md). */
    buf_t clean;
    buf_init(&clean, strlen(json_line) + 16);
    json_text_sanitize(&clean, json_line, strlen(json_line));
    size_t n = clean.b_len;
    q_acct_ev_t *e = xmalloc(sizeof(*e) + n + 1);
    memcpy(e->ae_line, clean.b_data, n);
    e->ae_line[n] = '\0';
    buf_free(&clean);
    if (!queue_enter(q)) {
        free(e);
        return;
    }
    chan_push(q->q_ch_acct, &e->ae_node);
    queue_leave(q);
}

static void queue_acct_ev_cb(chan_t *ch, chan_node_t *first, void *arg)
{
    queue_t *q = arg;
    Q_ASSERT_QUEUE_THREAD(q);
    UNUSED(ch);
    while (first) {
        q_acct_ev_t *e = (q_acct_ev_t *)first;
        first = first->cn_next;
        size_t n = strlen(e->ae_line);
        e->ae_line[n] = '\n'; /* the NUL's byte: the text stays within its allocation */
        q_record_emit(q, e->ae_line, n + 1);
        free(e);
    }
    q_acct_flush(q->q_acct);
}

/* queue_tlsrpt_note: one TLS session's result, strings after the node. */
typedef struct q_tlsrpt_ev {
    chan_node_t te_node;
    uint64_t te_time;
    const char *te_s[6]; /* domain, policy type, result, MX, IP, reason: into te_text */
    char te_text[];
} q_tlsrpt_ev_t;

void queue_tlsrpt_note(queue_t *q, const char *dom, const char *ptype, const char *result,
                       const char *reason, const char *mx, const char *ip)
{
    const char *in[6] = {dom, ptype, result, mx, ip, reason};
    size_t len[6], total = 0;
    for (int i = 0; i < 6; i++) {
        len[i] = in[i] ? strnlen(in[i], i == 5 ? 64 : 300) : 0;
        total += len[i] + 1;
    }
    q_tlsrpt_ev_t *e = xmalloc(sizeof(*e) + total);
    e->te_time = clock_now_us() / 1000000;
    char *p = e->te_text;
    for (int i = 0; i < 6; i++) {
        memcpy(p, in[i] ? in[i] : "", len[i]);
        p[len[i]] = '\0';
        for (size_t k = 0; k < len[i]; k++) /* the reason may quote a peer: ASCII only */
            if ((unsigned char)p[k] < ' ' || (unsigned char)p[k] > '~')
                p[k] = '?';
        e->te_s[i] = p;
        p += len[i] + 1;
    }
    if (!queue_enter(q)) {
        free(e);
        return;
    }
    chan_push(q->q_ch_tlsrpt, &e->te_node);
    queue_leave(q);
}

static void queue_tlsrpt_cb(chan_t *ch, chan_node_t *first, void *arg)
{
    queue_t *q = arg;
    Q_ASSERT_QUEUE_THREAD(q);
    UNUSED(ch);
    while (first) {
        q_tlsrpt_ev_t *e = (q_tlsrpt_ev_t *)first;
        first = first->cn_next;
        q_tlsrpt_add(q, e->te_time, e->te_s[0], e->te_s[1], e->te_s[2], e->te_s[5], e->te_s[3],
                     e->te_s[4]);
        free(e);
    }
}

static void queue_timer_cb(uv_timer_t *t)
{
    queue_t *q = t->data;
    Q_ASSERT_QUEUE_THREAD(q);
    q_tlsrpt_flush(q); /* the TLSRPT counters of the last period, if any */
    if (!atomic_load(&q->q_stopping))
        q_tlsrpt_send(q, false); /* once a day: the reports of the days before */
    if (q->q_dispatch && !atomic_load(&q->q_stopping))
        q_sched_scan(q);
    if (!atomic_load(&q->q_stopping))
        q_outcomes_sweep(q, false); /* DSNs that waited queue.dsn_max_delay */
    if (q_events_want_txn(q))       /* stream records or cursors no commit took yet */
        uv_check_start(&q->q_commit_check, queue_commit_check_cb);
}

static void queue_req_cb(chan_t *ch, chan_node_t *first, void *arg)
{
    UNUSED(ch);
    Q_ASSERT_QUEUE_THREAD((queue_t *)arg);
    while (first) {
        chan_node_t *next = first->cn_next;
        queue_req_t *r = (queue_req_t *)first;
        if (r->qq_type == QREQ_TLSRPT_SEND) { /* `sluicectl tlsrpt send --now` */
            queue_t *q = arg;
            r->qq_result = json_object_new_object();
            json_object_object_add(r->qq_result, "reports",
                                   json_object_new_int(q_tlsrpt_send(q, true)));
            chan_push(r->qq_reply, &r->qq_node);
        } else if (r->qq_type == QREQ_ROTATE) { /* `sluicectl log-rotate` (acct.c) */
            q_acct_rotate_req(((queue_t *)arg)->q_acct, r);
            chan_push(r->qq_reply, &r->qq_node);
        } else if (r->qq_type == QREQ_SUPPRESS) { /* suppress.c answers (or frees) */
            q_supp_request(arg, r);
        } else if (!q_admin_request(arg, r)) { /* operator requests answer themselves */
            if (r->qq_type == QREQ_TLSRPT)
                q_tlsrpt_flush(arg); /* what this period counted so far */
            queue_req_do(arg, r);
            chan_push(r->qq_reply, &r->qq_node);
        }
        first = next;
    }
}

static json_object *json_strn(const char *s, size_t n)
{
    return json_object_new_string_len(s ? s : "", (int)(s ? n : 0));
}

/* A message as JSON: id, arrival, sender, size, job, recipients (and with
 * detail: flags, envid, auth_user, client_ip, pending, last responses). */
static json_object *queue_msg_json(queue_t *q, MDB_txn *txn, uint64_t id, const MDB_val *v,
                                   bool detail)
{
    q_msg_rec_t mr;
    char idbuf[17];
    json_object *o = json_object_new_object();
    json_object_object_add(o, "id", json_object_new_string(queue_msgid_fmt(id, idbuf)));
    if (q_msg_decode(v->mv_data, v->mv_size, &mr) != 0) {
        json_object_object_add(o, "error", json_object_new_string("record does not decode"));
        return o;
    }
    json_object_object_add(o, "arrival", q_jtime_s(mr.mr_arrival));
    json_object_object_add(o, "sender", json_strn(mr.mr_sender, mr.mr_sender_len));
    json_object_object_add(o, "size", json_object_new_int64(mr.mr_body_len));
    json_object_object_add(o, "job", q_jstr_opt(mr.mr_job, mr.mr_job_len));
    if (detail) {
        json_object_object_add(o, "flags", json_object_new_int(mr.mr_flags & ~Q_F_HDRS));
        json_object_object_add(o, "envid", q_jstr_opt(mr.mr_envid, mr.mr_envid_len));
        json_object_object_add(o, "auth_user", q_jstr_opt(mr.mr_auth, mr.mr_auth_len));
        json_object_object_add(o, "client_ip", q_jstr_opt(mr.mr_ip, mr.mr_ip_len));
        json_object_object_add(o, "nrcpt", json_object_new_int64(mr.mr_nrcpt));
    }
    json_object *arr = json_object_new_array();
    MDB_cursor *c;
    if (mdb_cursor_open(txn, q->q_dbi_rcpt, &c) == 0) {
        uint8_t key[Q_RCPT_KEY_LEN];
        q_rcpt_key(key, id, 0);
        MDB_val k = {Q_RCPT_KEY_LEN, key}, rv;
        for (int rc = mdb_cursor_get(c, &k, &rv, MDB_SET_RANGE);
             rc == 0 && k.mv_size == Q_RCPT_KEY_LEN && q_rd64(k.mv_data) == id;
             rc = mdb_cursor_get(c, &k, &rv, MDB_NEXT)) {
            q_rcpt_rec_t rr;
            if (q_rcpt_decode(rv.mv_data, rv.mv_size, &rr) != 0)
                continue;
            json_object *r = json_object_new_object();
            json_object_object_add(r, "addr", json_strn(rr.rr_addr, rr.rr_addr_len));
            json_object_object_add(r, "attempts", json_object_new_int64(rr.rr_attempts));
            json_object_object_add(r, "next_attempt", q_jtime_s(rr.rr_next));
            if (detail) {
                json_object_object_add(r, "idx",
                                       json_object_new_int64(q_rd32((uint8_t *)k.mv_data + 8)));
                json_object_object_add(r, "orcpt", q_jstr_opt(rr.rr_orcpt, rr.rr_orcpt_len));
                json_object_object_add(r, "notify", json_object_new_int(rr.rr_notify));
                /* always there, null before a first answer ("connect:
                 * refused" has a text and no code) */
                json_object_object_add(r, "last_code", q_jcode(rr.rr_code));
                json_object_object_add(r, "last_status",
                                       q_jstr_opt(rr.rr_status, rr.rr_status_len));
                json_object_object_add(r, "last_text", q_jstr_opt(rr.rr_text, rr.rr_text_len));
            }
            json_object_array_add(arr, r);
        }
        mdb_cursor_close(c);
    }
    if (detail) /* recipients still in the spool */
        json_object_object_add(o, "pending",
                               json_object_new_int64((int64_t)json_object_array_length(arr)));
    json_object_object_add(o, "recipients", arr);
    return o;
}

static void queue_req_do(queue_t *q, queue_req_t *r)
{
    MDB_txn *txn = NULL;
    char idbuf[17];
    Q_ASSERT_QUEUE_THREAD(q);
    r->qq_result = NULL;
    r->qq_error[0] = '\0';
    int rc = mdb_txn_begin(q->q_env, NULL, MDB_RDONLY, &txn);
    if (rc != 0) {
        snprintf(r->qq_error, sizeof(r->qq_error), "spool: %s", mdb_strerror(rc));
        return;
    }
    switch (r->qq_type) {
    case QREQ_LIST: {
        size_t limit = r->qq_limit ? r->qq_limit : 1000;
        json_object *res = json_object_new_object();
        json_object *arr = json_object_new_array();
        MDB_stat st;
        mdb_stat(txn, q->q_dbi_msg, &st);
        MDB_cursor *c;
        if (mdb_cursor_open(txn, q->q_dbi_msg, &c) == 0) {
            MDB_val k, v;
            size_t n = 0;
            for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0 && n < limit;
                 rc = mdb_cursor_get(c, &k, &v, MDB_NEXT), n++)
                json_object_array_add(arr, queue_msg_json(q, txn, q_rd64(k.mv_data), &v, false));
            mdb_cursor_close(c);
        }
        json_object_object_add(res, "messages", arr);
        json_object_object_add(res, "total", json_object_new_int64((int64_t)st.ms_entries));
        r->qq_result = res;
        break;
    }
    case QREQ_INSPECT: {
        uint8_t key[Q_MSG_KEY_LEN];
        q_msg_key(key, r->qq_msgid);
        MDB_val k = {Q_MSG_KEY_LEN, key}, v;
        if (mdb_get(txn, q->q_dbi_msg, &k, &v) != 0)
            snprintf(r->qq_error, sizeof(r->qq_error), "message %s: not found",
                     queue_msgid_fmt(r->qq_msgid, idbuf));
        else
            r->qq_result = queue_msg_json(q, txn, r->qq_msgid, &v, true);
        break;
    }
    case QREQ_CHECK: {
        bool ok;
        r->qq_result = q_check_txn(q, txn, &ok);
        break;
    }
    case QREQ_TLSRPT: {
        char day[11];
        q_tlsrpt_day(clock_now_us() / 1000000, day);
        const char *want = r->qq_domain ? r->qq_domain : day;
        json_object *res = json_object_new_object();
        json_object_object_add(res, "day", json_object_new_string(want));
        json_object_object_add(res, "domains", q_tlsrpt_json(q, txn, want, NULL));
        r->qq_result = res;
        break;
    }
    default:
        snprintf(r->qq_error, sizeof(r->qq_error), "unknown request %d", (int)r->qq_type);
    }
    mdb_txn_abort(txn);
}

int queue_check_offline(const char *spool_path, size_t *nmsgs, size_t *nrcpts)
{
    queue_t q;
    MDB_txn *txn = NULL;
    int rc, ret = SL_ESPOOL;
    memset(&q, 0, sizeof(q));
    if ((rc = mdb_env_create(&q.q_env)) != 0)
        goto fail;
    mdb_env_set_maxdbs(q.q_env, 8);
    rc = mdb_env_open(q.q_env, spool_path, MDB_RDONLY | MDB_NOTLS | MDB_NORDAHEAD, 0600);
    if (rc != 0)
        goto fail;
    if ((rc = mdb_txn_begin(q.q_env, NULL, MDB_RDONLY, &txn)) != 0 ||
        (rc = mdb_dbi_open(txn, "msg", 0, &q.q_dbi_msg)) != 0 ||
        (rc = mdb_dbi_open(txn, "rcpt", 0, &q.q_dbi_rcpt)) != 0 ||
        (rc = mdb_dbi_open(txn, "due", 0, &q.q_dbi_due)) != 0)
        goto fail;
    if (mdb_dbi_open(txn, "dsn", 0, &q.q_dbi_dsn) != 0)
        q.q_dbi_dsn = (MDB_dbi)-1; /* a spool from before DSN marks: none */
    bool ok;
    json_object *res = q_check_txn(&q, txn, &ok);
    json_object *probs = json_object_object_get(res, "problems");
    for (size_t i = 0; i < json_object_array_length(probs); i++)
        fprintf(stderr, "spool %s: %s\n", spool_path,
                json_object_get_string(json_object_array_get_idx(probs, i)));
    if (nmsgs)
        *nmsgs = (size_t)json_object_get_int64(json_object_object_get(res, "msgs"));
    if (nrcpts)
        *nrcpts = (size_t)json_object_get_int64(json_object_object_get(res, "rcpts"));
    json_object_put(res);
    ret = ok ? 0 : SL_ESPOOL;
    mdb_txn_abort(txn);
    mdb_env_close(q.q_env);
    return ret;
fail:
    fprintf(stderr, "spool %s: %s\n", spool_path, rc > 0 ? strerror(rc) : mdb_strerror(rc));
    if (txn)
        mdb_txn_abort(txn);
    if (q.q_env)
        mdb_env_close(q.q_env);
    return ret;
}
