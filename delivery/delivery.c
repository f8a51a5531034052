/*
 * delivery.c - delivery threads, the dispatcher, destinations and routes.
 *
 * dlv_new() builds N thread contexts (loop, inbox channel, c-ares resolver,
 * TLS client context); the dispatcher (queue thread) hashes qd_domain to a
 * thread and pushes the dispatch onto its inbox. On its loop, a dispatch
 * joins its destination's FIFO; dlv_dest_kick() resolves the route (static
 * route, MX + A/AAAA, implicit MX, null MX), hands work to idle sessions
 * and opens new ones (slow start, up to c_dlv_max_conn_per_dest), or
 * applies a route failure / dead-site verdict to everything pending.
 * Outcomes go back with queue_outcome_submit().
 *
 * Main functions: dlv_new/dlv_start/dlv_stop/dlv_free (main thread),
 * dlv_dispatch (queue thread), the rest on the owning delivery thread.
 */
#include "delivery/delivery_int.h"
#include "delivery/rules_int.h"
#include "delivery/shaping_int.h" /* dlv_shaping_new / dlv_shaping_free */

#include <arpa/inet.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void dlv_dispatch(void *arg, queue_dispatch_t *qd);
static void dlv_inbox_cb(chan_t *ch, chan_node_t *first, void *arg);
static void dlv_thread_main(void *arg);
static void dlv_stop_cb(uv_async_t *h);
static void dlv_cfg_cb(uv_async_t *h);
static void dlv_sweep_cb(uv_timer_t *h);
static dlv_dest_t *dlv_dest_get(dlv_thread_t *t, const char *domain);
static void dlv_dest_free(dlv_dest_t *de);
static void dlv_route_start(dlv_dest_t *de);
static void dlv_route_fail(dlv_dest_t *de, int code, const char *status, const char *text,
                           uint32_t ttl);
static void dlv_mx_cb(void *arg, dns_status_t st, const dns_mx_t *mx, int n, uint32_t ttl);
static void dlv_addr_cb(void *arg, dns_status_t st, const sockaddr_any_t *addrs, int n,
                        uint32_t ttl);

static uint64_t dlv_mono(void)
{
    return clock_mono_us();
}

static uint64_t dlv_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

/* ------------------------------------------------------------- life cycle */

int dlv_new(cfg_t *cfg, queue_t *q, dlv_t **out, char *err, size_t errlen)
{
    /* bounce classification rules (rules.c): a bad file fails start-up */
    if (dlv_rules_install(cfg, err, errlen) != 0)
        return SL_ECONFIG;
    dlv_t *d = xcalloc(1, sizeof(*d));
    d->d_cfg = cfg_ref(cfg);
    d->d_queue = q;
    int n = cfg->c_dlv_threads;
    if (n <= 0) {
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        n = nc > 0 ? (int)nc : 1;
    }
    d->d_nthreads = n;
    if (dlv_shaping_new(cfg->c_dlv_shaping, NULL, q, &d->d_shaping, err, errlen) != 0) {
        cfg_unref(d->d_cfg);
        free(d);
        return SL_ECONFIG;
    }
    d->d_threads = xcalloc((size_t)n, sizeof(dlv_thread_t));
    int i;
    for (i = 0; i < n; i++) {
        dlv_thread_t *t = &d->d_threads[i];
        t->t_d = d;
        t->t_cfg = cfg_ref(cfg);
        pthread_mutex_init(&t->t_cfg_lock, NULL);
        t->t_idx = i;
        t->t_helo = (cfg->c_dlv_helo && cfg->c_dlv_helo[0]) ? cfg->c_dlv_helo : cfg->c_hostname;
        if (t->t_helo == NULL || t->t_helo[0] == '\0')
            t->t_helo = "localhost";
        if (uv_loop_init(&t->t_loop) != 0) {
            snprintf(err, errlen, "delivery: uv_loop_init failed");
            goto fail;
        }
        if (dns_resolver_new(&t->t_loop, cfg->c_dlv_resolvers, 3000, 2, &t->t_dns, err, errlen) !=
            0) {
            uv_loop_close(&t->t_loop);
            goto fail;
        }
        t->t_inbox = chan_new(&t->t_loop, dlv_inbox_cb, t);
        uv_async_init(&t->t_loop, &t->t_stop_async, dlv_stop_cb);
        t->t_stop_async.data = t;
        uv_async_init(&t->t_loop, &t->t_cfg_async, dlv_cfg_cb);
        t->t_cfg_async.data = t;
        uv_timer_init(&t->t_loop, &t->t_sweep);
        t->t_sweep.data = t;
        const char *ca = (cfg->c_dlv_ca_file && cfg->c_dlv_ca_file[0]) ? cfg->c_dlv_ca_file : NULL;
        t->t_tls_ctx = tls_client_ctx_new(ca, t->t_tls_err, sizeof(t->t_tls_err));
        if (t->t_tls_ctx == NULL) {
            /* "verify" domains then defer; opportunistic ones go plain */
            log_warn("delivery: TLS client context: %s", t->t_tls_err);
        }
        t->t_dest_cap = 1024;
        t->t_dests = xcalloc(t->t_dest_cap, sizeof(dlv_dest_t *));
    }
    queue_set_dispatcher(q, dlv_dispatch, d);
    *out = d;
    return 0;
fail:
    /* threads [0, i) are fully built: close their handles on their loops */
    for (int j = 0; j < i; j++) {
        dlv_thread_t *t = &d->d_threads[j];
        dns_resolver_free(t->t_dns);
        chan_close(t->t_inbox);
        uv_close((uv_handle_t *)&t->t_stop_async, NULL);
        uv_close((uv_handle_t *)&t->t_cfg_async, NULL);
        uv_close((uv_handle_t *)&t->t_sweep, NULL);
        uv_run(&t->t_loop, UV_RUN_DEFAULT);
        uv_loop_close(&t->t_loop);
        if (t->t_tls_ctx)
            tls_ctx_free(t->t_tls_ctx);
        free(t->t_dests);
    }
    for (int j = 0; j < n; j++) /* every thread got its reference */
        if (d->d_threads[j].t_cfg != NULL)
            cfg_unref(d->d_threads[j].t_cfg);
    free(d->d_threads);
    dlv_shaping_free(d->d_shaping);
    cfg_unref(d->d_cfg);
    free(d);
    return SL_ECONFIG;
}

int dlv_start(dlv_t *d)
{
    for (int i = 0; i < d->d_nthreads; i++) {
        dlv_thread_t *t = &d->d_threads[i];
        int rc = uv_thread_create(&t->t_tid, dlv_thread_main, t);
        if (rc != 0) {
            log_error("delivery: thread create: %s", uv_strerror(rc));
            /* the ones already running are stopped by dlv_stop */
            d->d_nthreads = i;
            d->d_started = i > 0;
            return rc;
        }
    }
    d->d_started = true;
    log_info("delivery: %d thread(s) started", d->d_nthreads);
    return 0;
}

void dlv_stop(dlv_t *d)
{
    if (d == NULL || !d->d_started)
        return;
    /* Dekker with the dispatcher: after this loop no dispatcher call can
     * still be touching a channel (both sides are seq_cst). */
    atomic_store(&d->d_stopping, true);
    while (atomic_load(&d->d_dispatching) > 0)
        sched_yield();
    for (int i = 0; i < d->d_nthreads; i++)
        uv_async_send(&d->d_threads[i].t_stop_async);
    for (int i = 0; i < d->d_nthreads; i++)
        uv_thread_join(&d->d_threads[i].t_tid);
    d->d_started = false;
    log_info("delivery: stopped");
}

void dlv_free(dlv_t *d)
{
    if (d == NULL)
        return;
    dlv_stop(d);
    for (int i = 0; i < d->d_nthreads; i++) {
        dlv_thread_t *t = &d->d_threads[i];
        if (t->t_inbox != NULL) { /* never started: close here */
            dns_resolver_free(t->t_dns);
            chan_close(t->t_inbox);
            uv_close((uv_handle_t *)&t->t_stop_async, NULL);
            uv_close((uv_handle_t *)&t->t_cfg_async, NULL);
            uv_close((uv_handle_t *)&t->t_sweep, NULL);
            uv_run(&t->t_loop, UV_RUN_DEFAULT);
            if (uv_loop_close(&t->t_loop) != 0)
                log_error("delivery: loop %d not closed cleanly", i);
        }
        if (t->t_tls_ctx)
            tls_ctx_free(t->t_tls_ctx);
        free(t->t_dests);
        dlv_sts_thread_free(t); /* MTA-STS policy cache (NULL if never used) */
        if (t->t_cfg_next)
            cfg_unref(t->t_cfg_next);
        for (int k = 0; k < t->t_ncfg_old; k++)
            cfg_unref(t->t_cfg_old[k]);
        free(t->t_cfg_old);
        cfg_unref(t->t_cfg);
        pthread_mutex_destroy(&t->t_cfg_lock);
    }
    free(d->d_threads);
    dlv_shaping_free(d->d_shaping);
    cfg_unref(d->d_cfg);
    free(d);
}

const dlv_stats_t *dlv_stats(const dlv_t *d)
{
    return &d->d_stats;
}

/* The bounce rules cfg names (delivery.bounce_rules; "" = built-in), their
 * providers looked up in the shaping rule set cfg names (the shipped
 * providers.conf and delivery.shaping: a provider is defined once for
 * both): the active set from now on. Main thread. */
int dlv_rules_install(const cfg_t *cfg, char *err, size_t errlen)
{
    dlv_shaping_t *sh = NULL;
    if (dlv_shaping_new(cfg ? cfg->c_dlv_shaping : NULL, NULL, NULL, &sh, err, errlen) != 0)
        return SL_ECONFIG;
    dlv_rules_t *r = NULL;
    int rc = dlv_rules_load(cfg ? cfg->c_dlv_bounce_rules : NULL, shp_provider_lookup, sh, &r, err,
                            errlen);
    dlv_shaping_free(sh);
    if (rc != 0)
        return SL_ECONFIG;
    log_info("delivery: bounce rules %s: %d providers, %d rules", dlv_rules_name(r),
             dlv_rules_nproviders(r), dlv_rules_nrules(r));
    dlv_rules_set(r, false);
    return 0;
}

/* ------------------------------------------------------------- threads */

/* Queue thread: pick the domain's thread and push. */
static void dlv_dispatch(void *arg, queue_dispatch_t *qd)
{
    dlv_t *d = arg;
    atomic_fetch_add(&d->d_dispatching, 1);
    if (atomic_load(&d->d_stopping)) {
        queue_dispatch_free(qd); /* not reported: retried after restart */
    } else {
        dlv_thread_t *t = &d->d_threads[dlv_hash(qd->qd_domain) % (uint64_t)d->d_nthreads];
        chan_push(t->t_inbox, &qd->qd_node);
    }
    atomic_fetch_sub(&d->d_dispatching, 1);
}

static void dlv_inbox_cb(chan_t *ch, chan_node_t *first, void *arg)
{
    dlv_thread_t *t = arg;
    UNUSED(ch);
    dlv_dest_t *last = NULL;
    while (first != NULL) {
        queue_dispatch_t *qd = (queue_dispatch_t *)first;
        first = first->cn_next;
        if (t->t_stopping) {
            queue_dispatch_free(qd);
            continue;
        }
        atomic_fetch_add_explicit(&t->t_d->d_stats.ds_dispatches, 1, memory_order_relaxed);
        dlv_dest_t *de = dlv_dest_get(t, qd->qd_domain);
        dlv_shp_enqueue(de, qd); /* by pool and job; counts de_npending */
        /* a burst for one domain is kicked once */
        if (last != NULL && last != de)
            dlv_dest_kick(last);
        last = de;
    }
    if (last != NULL)
        dlv_dest_kick(last);
}

static void dlv_thread_main(void *arg)
{
    dlv_thread_t *t = arg;
    char name[16];
    snprintf(name, sizeof(name), "dlv%d", t->t_idx);
    log_thread_name(name);
    uv_timer_start(&t->t_sweep, dlv_sweep_cb, 10000, 10000);
    uv_run(&t->t_loop, UV_RUN_DEFAULT);
    /* every handle is closed: free what is left */
    for (size_t i = 0; i < t->t_dest_cap; i++) {
        while (t->t_dests[i] != NULL) {
            dlv_dest_t *de = t->t_dests[i];
            t->t_dests[i] = de->de_hnext;
            dlv_dest_free(de);
        }
    }
    dlv_sts_thread_free(t); /* MTA-STS policy cache */
    int rc = uv_loop_close(&t->t_loop);
    if (rc != 0)
        log_error("delivery: uv_loop_close: %s", uv_strerror(rc));
}

static void dlv_walk_sessions_shutdown(dlv_thread_t *t)
{
    for (size_t i = 0; i < t->t_dest_cap; i++) {
        for (dlv_dest_t *de = t->t_dests[i]; de; de = de->de_hnext) {
            while (de->de_npending > 0) {
                queue_dispatch_t *qd = dlv_dest_pop(de);
                queue_dispatch_free(qd); /* unreported: retried after restart */
            }
            dlv_shp_dest_stop(de);
            dlv_session_t *s = de->de_sessions;
            while (s != NULL) {
                /* shutdown may unlink s; take next first */
                dlv_session_t *next = dlv_session_next(s);
                dlv_session_shutdown(s);
                s = next;
            }
        }
    }
}

/* Loop thread: stop everything; the loop ends when the last handle closed. */
static void dlv_stop_cb(uv_async_t *h)
{
    dlv_thread_t *t = h->data;
    t->t_stopping = true;
    chan_close(t->t_inbox); /* undelivered dispatches are freed by the callback */
    t->t_inbox = NULL;
    dns_resolver_free(t->t_dns); /* pending lookups are cancelled now */
    t->t_dns = NULL;
    dlv_sts_thread_stop(t); /* MTA-STS policy fetches in flight are closed */
    uv_close((uv_handle_t *)&t->t_sweep, NULL);
    uv_close((uv_handle_t *)&t->t_stop_async, NULL);
    uv_close((uv_handle_t *)&t->t_cfg_async, NULL);
    dlv_walk_sessions_shutdown(t);
}

/* ------------------------------------------------------------- reload */

void dlv_set_config(dlv_t *d, cfg_t *cfg, bool reroute)
{
    if (d == NULL || !d->d_started || atomic_load(&d->d_stopping))
        return;
    for (int i = 0; i < d->d_nthreads; i++) {
        dlv_thread_t *t = &d->d_threads[i];
        cfg_t *nc = cfg_ref(cfg);
        pthread_mutex_lock(&t->t_cfg_lock);
        cfg_t *old = t->t_cfg_next;
        t->t_cfg_next = nc;
        t->t_cfg_reroute |= reroute;
        pthread_mutex_unlock(&t->t_cfg_lock);
        if (old)
            cfg_unref(old);
        uv_async_send(&t->t_cfg_async);
    }
}

/* Loop thread: take the snapshot dlv_set_config left. */
static void dlv_cfg_cb(uv_async_t *h)
{
    dlv_thread_t *t = h->data;
    pthread_mutex_lock(&t->t_cfg_lock);
    cfg_t *nc = t->t_cfg_next;
    bool reroute = t->t_cfg_reroute;
    t->t_cfg_next = NULL;
    t->t_cfg_reroute = false;
    pthread_mutex_unlock(&t->t_cfg_lock);
    if (nc == NULL || t->t_stopping) {
        if (nc)
            cfg_unref(nc);
        return;
    }
    t->t_cfg_old = xrealloc(t->t_cfg_old, (size_t)(t->t_ncfg_old + 1) * sizeof(cfg_t *));
    t->t_cfg_old[t->t_ncfg_old++] = t->t_cfg;
    t->t_cfg = nc;
    if (!reroute)
        return;
    /* routes or TLS policies changed: every destination resolves again at
     * its next use, takes its TLS policy from the new snapshot (MTA-STS
     * enforce keeps verify), idle sessions QUIT now and busy ones opened
     * before QUIT when their transaction is done (dlv_cfg_session_stale) */
    t->t_cfg_epoch = clock_mono_us();
    for (size_t i = 0; i < t->t_dest_cap; i++)
        for (dlv_dest_t *de = t->t_dests[i]; de; de = de->de_hnext) {
            int want =
                dlv_sts_enforced(de) ? CFG_TLS_VERIFY : cfg_tls_policy_for(nc, de->de_domain);
            if (want != de->de_policy) {
                de->de_policy = want;
                if (de->de_tls_session != NULL) { /* resumed, it would skip a now required check */
                    tls_session_free(de->de_tls_session);
                    de->de_tls_session = NULL;
                }
            }
            for (dlv_session_t *s = de->de_sessions, *next; s != NULL; s = next) {
                next = dlv_session_next(s); /* shutdown may unlink s */
                if (dlv_session_idle(s))
                    dlv_session_shutdown(s); /* QUIT now; busy ones after their transaction */
            }
            dlv_dest_kick(de);
        }
    log_info("delivery: configuration reloaded; routes and TLS policies apply to new connections");
}

bool dlv_cfg_session_stale(const dlv_dest_t *de, uint64_t born)
{
    return born < de->de_t->t_cfg_epoch;
}

/* Every 10 s: forget destinations with nothing to do. */
static void dlv_sweep_cb(uv_timer_t *h)
{
    dlv_thread_t *t = h->data;
    uint64_t now = dlv_mono();
    for (size_t i = 0; i < t->t_dest_cap; i++) {
        dlv_dest_t **pp = &t->t_dests[i];
        while (*pp != NULL) {
            dlv_dest_t *de = *pp;
            bool busy = de->de_npending > 0 || de->de_nconn > 0 ||
                        de->de_rstate == DLV_RT_RESOLVING || de->de_dead_until > now ||
                        now - de->de_last_used < 60 * 1000000ULL;
            if (busy) {
                pp = &de->de_hnext;
                continue;
            }
            *pp = de->de_hnext;
            t->t_ndests--;
            dlv_dest_free(de);
        }
    }
}

/* ------------------------------------------------------------- destinations */

static dlv_dest_t *dlv_dest_get(dlv_thread_t *t, const char *domain)
{
    size_t b = dlv_hash(domain) & (t->t_dest_cap - 1);
    for (dlv_dest_t *de = t->t_dests[b]; de; de = de->de_hnext)
        if (strcmp(de->de_domain, domain) == 0)
            return de;
    if (t->t_ndests >= t->t_dest_cap) { /* grow: rehash */
        size_t cap = t->t_dest_cap * 2;
        dlv_dest_t **nt = xcalloc(cap, sizeof(*nt));
        for (size_t i = 0; i < t->t_dest_cap; i++) {
            while (t->t_dests[i]) {
                dlv_dest_t *de = t->t_dests[i];
                t->t_dests[i] = de->de_hnext;
                size_t nb = dlv_hash(de->de_domain) & (cap - 1);
                de->de_hnext = nt[nb];
                nt[nb] = de;
            }
        }
        free(t->t_dests);
        t->t_dests = nt;
        t->t_dest_cap = cap;
        b = dlv_hash(domain) & (cap - 1);
    }
    dlv_dest_t *de = xcalloc(1, sizeof(*de));
    de->de_t = t;
    de->de_domain = xstrdup(domain);
    de->de_policy = cfg_tls_policy_for(t->t_cfg, domain);
    de->de_limit = MIN(DLV_START_CONNS, MAX(1, t->t_cfg->c_dlv_max_conn_per_dest));
    de->de_last_used = dlv_mono();
    dlv_shp_dest_init(de);
    de->de_hnext = t->t_dests[b];
    t->t_dests[b] = de;
    t->t_ndests++;
    return de;
}

static void dlv_addrs_free(dlv_addr_t *a, int n)
{
    if (a == NULL)
        return;
    for (int i = 0; i < n; i++)
        free(a[i].da_host);
    free(a);
}

static void dlv_mx_scratch_free(dlv_dest_t *de)
{
    for (int i = 0; i < DLV_MAX_MX; i++) {
        dlv_addrs_free(de->de_mx_addrs[i], de->de_mx_naddr[i]);
        de->de_mx_addrs[i] = NULL;
        de->de_mx_naddr[i] = 0;
    }
    dns_mx_array_free(de->de_mx, de->de_nmx);
    de->de_mx = NULL;
    de->de_nmx = 0;
}

static void dlv_dest_free(dlv_dest_t *de)
{
    dlv_shp_dest_free(de); /* and the backlog */
    dlv_sts_dest_free(de); /* MTA-STS state */
    dlv_addrs_free(de->de_addrs, de->de_naddr);
    dlv_mx_scratch_free(de);
    free(de->de_fail_text);
    if (de->de_tls_session)
        tls_session_free(de->de_tls_session);
    free(de->de_domain);
    free(de);
}

queue_dispatch_t *dlv_dest_pop(dlv_dest_t *de)
{
    return dlv_shp_pop_any(de);
}

void dlv_dest_fail_pending(dlv_dest_t *de, const dlv_verdict_t *v)
{
    dlv_where_t w = {.w_mta_sts = dlv_sts_mode(de)}; /* e.g. 4.7.5 no MX matches */
    queue_dispatch_t *qd;
    while ((qd = dlv_dest_pop(de)) != NULL) {
        for (int i = 0; i < qd->qd_nrcpt; i++)
            dlv_report(de->de_t, qd, i, &v->v_res, v->v_text, &w);
        queue_dispatch_free(qd);
    }
}

void dlv_dest_fail_pending_with(dlv_dest_t *de, int code, const char *status, const char *text,
                                uint64_t retry_at)
{
    if (de->de_npending == 0)
        return;
    dlv_reply_t r = {.rp_stage = DLV_STAGE_DEST,
                     .rp_code = code,
                     .rp_status = status,
                     .rp_text = text,
                     .rp_domain = de->de_domain,
                     .rp_retry_at = retry_at};
    dlv_verdict_t v;
    dlv_judge(&r, &v);
    dlv_dest_fail_pending(de, &v);
}

void dlv_dest_kick(dlv_dest_t *de)
{
    dlv_thread_t *t = de->de_t;
    if (t->t_stopping)
        return;
    if (de->de_kicking) {
        de->de_rekick = true;
        return;
    }
    de->de_kicking = true;
    do {
        de->de_rekick = false;
        uint64_t now = dlv_mono();
        de->de_last_used = now;
        if (de->de_npending == 0)
            continue; /* to the rekick test */
        if (de->de_dead_until > now) {
            dlv_dest_fail_pending_with(de, 0, "4.4.1", "destination marked down", 0);
            continue; /* to the rekick test */
        }
        if (de->de_rstate == DLV_RT_RESOLVING)
            continue; /* to the rekick test */
        if (de->de_rstate == DLV_RT_NONE || de->de_rexpire <= now ||
            de->de_rstart < t->t_cfg_epoch) { /* expired, or a reload changed routes */
            dlv_route_start(de);              /* may answer at once: rekick */
            continue;                         /* to the rekick test */
        }
        if (!de->de_rfresh)
            atomic_fetch_add_explicit(&t->t_d->d_stats.ds_dns_cache_hits, 1, memory_order_relaxed);
        de->de_rfresh = false;
        if (de->de_rstate == DLV_RT_FAILED) {
            dlv_dest_fail_pending_with(de, de->de_fail_code, de->de_fail_status, de->de_fail_text,
                                       0);
            continue; /* to the rekick test */
        }
        /* MTA-STS (mta_sts.c): held while the policy is looked up; enforce
         * keeps the matching MX hosts or defers */
        if (!dlv_sts_gate(de))
            continue; /* to the rekick test */
        /* work for idle connections, then new ones gradually, within the
         * throttles (shaping.c) */
        dlv_shp_kick(de);
    } while (de->de_rekick);
    de->de_kicking = false;
}

void dlv_dest_conn_ok(dlv_dest_t *de)
{
    const cfg_t *cfg = de->de_t->t_cfg;
    de->de_failures = 0;
    if (de->de_limit < cfg->c_dlv_max_conn_per_dest)
        de->de_limit++;
}

void dlv_dest_conn_failed(dlv_dest_t *de, const dlv_verdict_t *v)
{
    dlv_thread_t *t = de->de_t;
    const cfg_t *cfg = t->t_cfg;
    atomic_fetch_add_explicit(&t->t_d->d_stats.ds_conn_failed, 1, memory_order_relaxed);
    de->de_failures++;
    de->de_limit = MAX(1, MIN(de->de_limit, DLV_START_CONNS));
    if (t->t_stopping)
        return;
    if (cfg->c_dlv_dead_after > 0 && de->de_failures >= cfg->c_dlv_dead_after) {
        de->de_dead_until = dlv_mono() + cfg->c_dlv_dead_time * 1000000ULL;
        de->de_failures = 0;
        atomic_fetch_add_explicit(&t->t_d->d_stats.ds_dests_down, 1, memory_order_relaxed);
        log_warn("delivery: %s marked down for %llus after %d connection failures (%s)",
                 de->de_domain, (unsigned long long)cfg->c_dlv_dead_time, cfg->c_dlv_dead_after,
                 v->v_text);
        dlv_dest_fail_pending_with(de, 0, "4.4.1", "destination marked down", 0);
        return;
    }
    /* no other connection will take the backlog: defer it now */
    if (de->de_sessions == NULL)
        dlv_dest_fail_pending(de, v);
}

/* ------------------------------------------------------------- routes */

/* The route failed: cache the failure (at least DLV_RFAIL_MIN_TTL, so that
 * a TTL of 0 cannot make every kick ask DNS again) and settle the
 * recipients that were waiting for it now, before anything kicks the
 * destination again: a kick with an expired failure would start another
 * lookup instead of applying it, and those recipients would never get an
 * outcome (a delivery thread spinning on DNS). */
static void dlv_route_fail(dlv_dest_t *de, int code, const char *status, const char *text,
                           uint32_t ttl)
{
    const cfg_t *cfg = de->de_t->t_cfg;
    if (ttl > cfg->c_dlv_dns_cache_max)
        ttl = (uint32_t)cfg->c_dlv_dns_cache_max;
    if (ttl < DLV_RFAIL_MIN_TTL)
        ttl = DLV_RFAIL_MIN_TTL;
    de->de_rstate = DLV_RT_FAILED;
    de->de_rfresh = false; /* used right here */
    de->de_rexpire = dlv_mono() + (uint64_t)ttl * 1000000ULL;
    de->de_fail_code = code;
    snprintf(de->de_fail_status, sizeof(de->de_fail_status), "%s", status);
    free(de->de_fail_text);
    de->de_fail_text = xstrdup(text);
    log_info("delivery: route %s: %s %s (cached %us)", de->de_domain, status, log_esc(text), ttl);
    dlv_dest_fail_pending_with(de, code, status, text, 0);
}

static void dlv_route_ready(dlv_dest_t *de, dlv_addr_t *addrs, int n, uint32_t ttl)
{
    const cfg_t *cfg = de->de_t->t_cfg;
    if (ttl > cfg->c_dlv_dns_cache_max)
        ttl = (uint32_t)cfg->c_dlv_dns_cache_max;
    dlv_addrs_free(de->de_addrs, de->de_naddr);
    de->de_addrs = addrs;
    de->de_naddr = n;
    de->de_rstate = DLV_RT_READY;
    de->de_rfresh = true;
    de->de_rexpire = dlv_mono() + (uint64_t)MAX(ttl, 1) * 1000000ULL;
    dlv_shp_route_ready(de); /* the provider by MX host name */
    if (log_level_current <= LOG_DEBUG) {
        char ip[64];
        for (int i = 0; i < n; i++)
            log_debug("delivery: route %s #%d %s[%s] ttl=%u", de->de_domain, i, addrs[i].da_host,
                      net_ntop((struct sockaddr *)&addrs[i].da_sa, ip, sizeof(ip)), ttl);
    }
    dlv_dest_kick(de);
}

/* Resolution context of one host lookup. */
typedef struct dlv_lookup {
    dlv_dest_t *lk_dest;
    int lk_slot; /* MX index, or -1 for a static route host, -2 implicit MX */
} dlv_lookup_t;

static void dlv_route_start(dlv_dest_t *de)
{
    dlv_thread_t *t = de->de_t;
    const cfg_t *cfg = t->t_cfg;
    de->de_rstate = DLV_RT_RESOLVING;
    de->de_rstart = clock_mono_us();
    const struct cfg_route *rt = cfg_route_for(cfg, de->de_domain);
    if (rt != NULL) {
        de->de_port = rt->r_port > 0 ? rt->r_port : cfg->c_dlv_port;
        sockaddr_any_t sa;
        const char *h = rt->r_host;
        char lit[256];
        /* "[::1]" style literals */
        if (h[0] == '[' && strlen(h) < sizeof(lit)) {
            snprintf(lit, sizeof(lit), "%s", h + 1);
            char *e = strchr(lit, ']');
            if (e)
                *e = '\0';
            h = lit;
        }
        if (net_parse_hostport(h, de->de_port, &sa) == 0) {
            dlv_addr_t *a = xcalloc(1, sizeof(*a));
            a->da_host = xstrdup(h);
            a->da_sa = sa;
            dlv_route_ready(de, a, 1, (uint32_t)cfg->c_dlv_dns_cache_max);
            return;
        }
        dlv_lookup_t *lk = xcalloc(1, sizeof(*lk));
        lk->lk_dest = de;
        lk->lk_slot = -1;
        atomic_fetch_add_explicit(&t->t_d->d_stats.ds_dns_lookups, 1, memory_order_relaxed);
        dns_query_addr(t->t_dns, rt->r_host, de->de_port, dlv_addr_cb, lk);
        return;
    }
    de->de_port = cfg->c_dlv_port;
    dlv_sts_route_start(de); /* MTA-STS: the _mta-sts TXT lookup beside the MX one */
    atomic_fetch_add_explicit(&t->t_d->d_stats.ds_dns_lookups, 1, memory_order_relaxed);
    dns_query_mx(t->t_dns, de->de_domain, dlv_mx_cb, de);
}

static void dlv_mx_cb(void *arg, dns_status_t st, const dns_mx_t *mx, int n, uint32_t ttl)
{
    dlv_dest_t *de = arg;
    dlv_thread_t *t = de->de_t;
    if (st == DNS_CANCELLED || t->t_stopping) {
        de->de_rstate = DLV_RT_NONE;
        return;
    }
    char text[512];
    switch (st) {
    case DNS_OK:
        break;
    case DNS_NODATA: { /* no MX: implicit MX, the domain's own A/AAAA (RFC 5321 5.1) */
        dlv_mx_scratch_free(de);
        de->de_mx = xcalloc(1, sizeof(dns_mx_t));
        de->de_mx[0].dm_host = xstrdup(de->de_domain);
        de->de_nmx = 1;
        de->de_mx_waiting = 1;
        de->de_mx_ttl = ttl;
        dlv_lookup_t *lk = xcalloc(1, sizeof(*lk));
        lk->lk_dest = de;
        lk->lk_slot = -2;
        atomic_fetch_add_explicit(&t->t_d->d_stats.ds_dns_lookups, 1, memory_order_relaxed);
        dns_query_addr(t->t_dns, de->de_domain, de->de_port, dlv_addr_cb, lk);
        return;
    }
    case DNS_NXDOMAIN:
        snprintf(text, sizeof(text), "Host or domain name not found (%s: %s)", de->de_domain,
                 dns_status_str(st));
        dlv_route_fail(de, 0, "5.1.2", text, ttl);
        return;
    default:
        snprintf(text, sizeof(text), "DNS lookup of MX for %s failed: %s", de->de_domain,
                 dns_status_str(st));
        dlv_route_fail(de, 0, "4.4.3", text, DLV_TEMPFAIL_CACHE);
        return;
    }
    if (dns_mx_is_null(mx, n)) {
        snprintf(text, sizeof(text), "Domain %s does not accept mail (null MX, RFC 7505)",
                 de->de_domain);
        dlv_route_fail(de, 556, "5.1.10", text, ttl);
        return;
    }
    dlv_mx_scratch_free(de);
    int k = 0;
    de->de_mx = xcalloc((size_t)MIN(n, DLV_MAX_MX), sizeof(dns_mx_t));
    for (int i = 0; i < n && k < DLV_MAX_MX; i++) {
        if (mx[i].dm_host[0] == '\0')
            continue; /* a stray "." among real MX records */
        de->de_mx[k].dm_host = xstrdup(mx[i].dm_host);
        de->de_mx[k].dm_pref = mx[i].dm_pref;
        k++;
    }
    de->de_nmx = k;
    if (k == 0) {
        /* MX records, none of them usable (e.g. "MX 0 ." and "MX 10 ."): as
         * a null MX (RFC 7505 3; RFC 5321 5.1 never falls back to A then) */
        dlv_mx_scratch_free(de);
        snprintf(text, sizeof(text), "Domain %s does not accept mail (no usable MX host, %d MX)",
                 de->de_domain, n);
        dlv_route_fail(de, 556, "5.1.10", text, ttl);
        return;
    }
    de->de_mx_ttl = ttl;
    de->de_mx_waiting = k;
    for (int i = 0; i < k; i++) {
        de->de_mx_st[i] = DNS_TEMPFAIL;
        dlv_lookup_t *lk = xcalloc(1, sizeof(*lk));
        lk->lk_dest = de;
        lk->lk_slot = i;
        atomic_fetch_add_explicit(&t->t_d->d_stats.ds_dns_lookups, 1, memory_order_relaxed);
        dns_query_addr(t->t_dns, de->de_mx[i].dm_host, de->de_port, dlv_addr_cb, lk);
    }
}

/* All MX host lookups answered: the route is the addresses in MX order.
 * Without any address: a temporary failure of any lookup defers (4.4.3);
 * when every host is authoritatively absent (NXDOMAIN, or no A/AAAA) the
 * recipients bounce 5.4.4, as Postfix and Exim do - no retry for days. */
static void dlv_mx_done(dlv_dest_t *de, bool implicit)
{
    int total = 0;
    bool tempfail = false;
    for (int i = 0; i < de->de_nmx; i++) {
        total += de->de_mx_naddr[i];
        if (de->de_mx_st[i] == DNS_TEMPFAIL)
            tempfail = true;
    }
    if (total == 0) {
        char text[512];
        dns_status_t st = de->de_mx_st[0];
        if (implicit && (st == DNS_NXDOMAIN || st == DNS_NODATA)) {
            snprintf(text, sizeof(text), "Host or domain name not found (%s: no MX, no address)",
                     de->de_domain);
            dlv_route_fail(de, 0, "5.1.2", text, de->de_mx_ttl);
        } else if (tempfail) {
            snprintf(text, sizeof(text), "DNS lookup of the MX hosts of %s failed: %s",
                     de->de_domain, dns_status_str(DNS_TEMPFAIL));
            dlv_route_fail(de, 0, "4.4.3", text, DLV_TEMPFAIL_CACHE);
        } else {
            snprintf(text, sizeof(text),
                     "Host or domain name not found: no MX host of %s has an address (%s: %s%s)",
                     de->de_domain, de->de_nmx ? de->de_mx[0].dm_host : "?", dns_status_str(st),
                     de->de_nmx > 1 ? ", ..." : "");
            dlv_route_fail(de, 0, "5.4.4", text, de->de_mx_ttl);
        }
        dlv_mx_scratch_free(de);
        return;
    }
    int n = MIN(total, DLV_MAX_ADDRS), k = 0;
    dlv_addr_t *a = xcalloc((size_t)n, sizeof(*a));
    for (int i = 0; i < de->de_nmx && k < n; i++)
        for (int j = 0; j < de->de_mx_naddr[i] && k < n; j++) {
            a[k].da_host = xstrdup(de->de_mx[i].dm_host);
            a[k].da_sa = de->de_mx_addrs[i][j].da_sa;
            k++;
        }
    uint32_t ttl = de->de_mx_ttl;
    dlv_mx_scratch_free(de);
    dlv_route_ready(de, a, k, ttl);
}

static void dlv_addr_cb(void *arg, dns_status_t st, const sockaddr_any_t *addrs, int n,
                        uint32_t ttl)
{
    dlv_lookup_t *lk = arg;
    dlv_dest_t *de = lk->lk_dest;
    int slot = lk->lk_slot;
    free(lk);
    if (st == DNS_CANCELLED || de->de_t->t_stopping) {
        de->de_rstate = DLV_RT_NONE;
        return;
    }
    if (slot == -1) { /* static route host name */
        if (st != DNS_OK) {
            char text[512];
            snprintf(text, sizeof(text), "static route host lookup failed: %s", dns_status_str(st));
            dlv_route_fail(de, 0, st == DNS_TEMPFAIL ? "4.4.3" : "4.4.4", text, DLV_TEMPFAIL_CACHE);
            return;
        }
        const struct cfg_route *rt = cfg_route_for(de->de_t->t_cfg, de->de_domain);
        int k = MIN(n, DLV_MAX_ADDRS);
        dlv_addr_t *a = xcalloc((size_t)k, sizeof(*a));
        for (int i = 0; i < k; i++) {
            a[i].da_host = xstrdup(rt ? rt->r_host : de->de_domain);
            a[i].da_sa = addrs[i];
        }
        dlv_route_ready(de, a, k, ttl);
        return;
    }
    int i = slot == -2 ? 0 : slot;
    de->de_mx_st[i] = st;
    if (st == DNS_OK && n > 0) {
        de->de_mx_addrs[i] = xcalloc((size_t)n, sizeof(dlv_addr_t));
        for (int j = 0; j < n; j++)
            de->de_mx_addrs[i][j].da_sa = addrs[j];
        de->de_mx_naddr[i] = n;
        if (ttl < de->de_mx_ttl)
            de->de_mx_ttl = ttl;
    }
    if (--de->de_mx_waiting == 0)
        dlv_mx_done(de, slot == -2);
}
