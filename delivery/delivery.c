/*
 * delivery.c - the delivery threads: life cycle, the dispatcher, the
 * inbox, reload, and the module's public calls on shaping and bounce
 * rules.
 *
 * dlv_new() builds N thread contexts (loop, inbox channel, c-ares resolver,
 * TLS client context) and the provider registry (providers.c) from the
 * shaping rule set (shaping_conf.c); the dispatcher (queue thread) hashes
 * qd_domain to a thread and pushes the dispatch onto its inbox. On its
 * loop, a dispatch joins its destination's backlog (dest.c), which does
 * the rest; outcomes go back from the judge (trouble.c, dlv_report).
 * dlv_set_config() hands a reloaded snapshot to each thread; a rerouting
 * one makes every destination resolve again (dlv_dest_reconfig_all).
 *
 * Main functions: dlv_new/dlv_start/dlv_stop/dlv_free, dlv_set_config,
 * dlv_rules_install, dlv_shaping_check/reload/suspend/json (main thread),
 * dlv_dispatch (queue thread), the callbacks on the owning delivery thread.
 */
#include "delivery/delivery_int.h"
#include "delivery/rules_int.h"
#include "delivery/shaping_int.h" /* the shaping rule set and the provider registry */
#include "delivery/cluster_int.h" /* shared limits */

#include <json-c/json.h>

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

/* ------------------------------------------------------------- life cycle */

/* A virtual MTA or pool of the shaping file with verp = true, and no VERP
 * key or bounce domain to make the return path with: refused at start-up
 * as bounces.verp = true is (docs/bounces-in.md). */
static bool verp_unusable(const cfg_t *cfg, const shp_conf_t *sc, char *err, size_t errlen)
{
    if (cfg->c_verp_key_loaded && cfg->c_bounce_domain[0] != '\0')
        return false;
    for (int i = 0; i < sc->sc_nvmtas; i++)
        if (sc->sc_vmtas[i].vm_verp > 0) {
            snprintf(err, errlen,
                     "virtual_mtas.%s.verp = true needs bounces.domain and bounces.verp_key_file",
                     sc->sc_vmtas[i].vm_name);
            return true;
        }
    for (int i = 0; i < sc->sc_npools; i++)
        if (sc->sc_pools[i].po_verp > 0) {
            snprintf(err, errlen,
                     "pools.%s.verp = true needs bounces.domain and bounces.verp_key_file",
                     sc->sc_pools[i].po_name);
            return true;
        }
    return false;
}

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
    shp_conf_t *sc = NULL;
    if (shp_conf_load(cfg->c_dlv_shaping, &sc, err, errlen) != 0 ||
        verp_unusable(cfg, sc, err, errlen)) {
        shp_conf_free(sc);
        cfg_unref(d->d_cfg);
        free(d);
        return SL_ECONFIG;
    }
    log_info("shaping: %d provider rule(s), %d virtual MTA(s), %d pool(s)%s%s", sc->sc_nprules,
             sc->sc_nvmtas, sc->sc_npools, cfg->c_dlv_shaping[0] ? " from " : "",
             cfg->c_dlv_shaping);
    d->d_shaping = dlv_shaping_new(sc, q);
    /* shared limits (cluster.c): before any provider is made */
    if (dlv_cluster_new(cfg, d->d_shaping, shp_registry_apply, &d->d_cluster, err, errlen) != 0) {
        dlv_shaping_free(d->d_shaping);
        cfg_unref(d->d_cfg);
        free(d);
        return SL_ECONFIG;
    }
    d->d_shaping->sh_cluster = d->d_cluster;
    shp_cluster_global(d->d_shaping);
    if (d->d_cluster != NULL)
        dlv_cluster_share_suppression(d->d_cluster, q);
    d->d_shaping->sh_adaptive = cfg->c_dlv_adaptive;
    /* adaptive mode's learned values: kept in the spool directory */
    shp_adapt_open(d->d_shaping, q != NULL ? cfg->c_spool_path : NULL);
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
        /* DANE (dane.c): DO on queries, AD trusted (a restart key: the
         * resolver is made once) */
        dns_resolver_set_dnssec(t->t_dns, cfg_dnssec_trust_ad(cfg));
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
    dlv_cluster_free(d->d_cluster);
    cfg_unref(d->d_cfg);
    free(d);
    return SL_ECONFIG;
}

int dlv_start(dlv_t *d)
{
    int crc = dlv_cluster_start(d->d_cluster);
    if (crc != 0) {
        log_error("cluster: thread create: %s", uv_strerror(crc));
        return crc;
    }
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
    /* after the delivery threads: they wake the cluster's loop */
    dlv_cluster_stop(d->d_cluster);
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
    dlv_cluster_free(d->d_cluster);
    cfg_unref(d->d_cfg);
    free(d);
}

json_object *dlv_cluster_json(dlv_t *d)
{
    return cl_json(d != NULL ? d->d_cluster : NULL);
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
    shp_conf_t *sc = NULL;
    if (shp_conf_load(cfg ? cfg->c_dlv_shaping : NULL, &sc, err, errlen) != 0)
        return SL_ECONFIG;
    dlv_rules_t *r = NULL;
    int rc = dlv_rules_load(cfg ? cfg->c_dlv_bounce_rules : NULL, shp_provider_lookup, sc, &r, err,
                            errlen);
    shp_conf_free(sc); /* the rules copied the patterns they use */
    if (rc != 0)
        return SL_ECONFIG;
    log_info("delivery: bounce rules %s: %d providers, %d rules", dlv_rules_name(r),
             dlv_rules_nproviders(r), dlv_rules_nrules(r));
    dlv_rules_set(r, false);
    return 0;
}

/* ------------------------------------------------------------- shaping */

json_object *dlv_shaping_json(dlv_t *d)
{
    if (d == NULL || d->d_shaping == NULL) {
        json_object *root = json_object_new_object();
        json_object_object_add(root, "providers", json_object_new_array());
        json_object_object_add(root, "virtual_mtas", json_object_new_array());
        return root;
    }
    return shp_registry_json(d->d_shaping);
}

int dlv_shaping_check(const char *path, char *err, size_t errlen)
{
    shp_conf_t *sc = NULL;
    if (shp_conf_load(path, &sc, err, errlen) != 0)
        return SL_ECONFIG;
    shp_conf_free(sc);
    return 0;
}

int dlv_shaping_reload(dlv_t *d, const char *path, bool *vmtas_changed, char *err, size_t errlen)
{
    if (d == NULL || d->d_shaping == NULL) {
        snprintf(err, errlen, "delivery is not running");
        return SL_ENOTFOUND;
    }
    shp_conf_t *sc = NULL;
    if (shp_conf_load(path, &sc, err, errlen) != 0)
        return SL_ECONFIG;
    bool changed = shp_registry_install(d->d_shaping, sc, path);
    if (vmtas_changed != NULL)
        *vmtas_changed = changed;
    return 0;
}

int dlv_shaping_suspend(dlv_t *d, const char *provider, const char *vmta, uint64_t for_s,
                        bool resume, char *err, size_t errlen)
{
    if (d == NULL || d->d_shaping == NULL) {
        snprintf(err, errlen, "delivery is not running");
        return SL_ENOTFOUND;
    }
    uint64_t until = resume ? 0 : for_s ? clock_mono_us() + for_s * 1000000ULL : UINT64_MAX;
    return shp_registry_suspend(d->d_shaping, provider, vmta, until, err, errlen);
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
        dlv_dest_enqueue(de, qd); /* by pool and job; counts de_npending */
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
    t->t_self = uv_thread_self(); /* before anything checks DLV_ASSERT_ON_LOOP */
    char name[16];
    snprintf(name, sizeof(name), "dlv%d", t->t_idx);
    log_thread_name(name);
    log_buffer(&t->t_loop); /* one write of the log a loop iteration, not one a line */
    uv_timer_start(&t->t_sweep, dlv_sweep_cb, 10000, 10000);
    uv_run(&t->t_loop, UV_RUN_DEFAULT);
    log_unbuffer(&t->t_loop);
    /* every handle is closed: free what is left */
    dlv_dest_free_all(t);
    dlv_sts_thread_free(t); /* MTA-STS policy cache */
    int rc = uv_loop_close(&t->t_loop);
    if (rc != 0)
        log_error("delivery: uv_loop_close: %s", uv_strerror(rc));
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
    dlv_dest_shutdown_all(t); /* backlogs dropped unreported, sessions QUIT or closed */
}

/* ------------------------------------------------------------- reload */

void dlv_set_config(dlv_t *d, cfg_t *cfg, bool reroute)
{
    if (d == NULL || !d->d_started || atomic_load(&d->d_stopping))
        return;
    if (d->d_shaping != NULL) /* delivery.adaptive: every queue whose limits do not say */
        shp_registry_adaptive(d->d_shaping, cfg->c_dlv_adaptive);
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
     * before QUIT when their transaction is done (dlv_dest_session_stale) */
    t->t_cfg_epoch = clock_mono_us();
    dlv_dest_reconfig_all(t);
    log_info("delivery: configuration reloaded; routes and TLS policies apply to new connections");
}

/* Every 10 s: forget destinations with nothing to do. */
static void dlv_sweep_cb(uv_timer_t *h)
{
    dlv_dest_sweep(h->data);
}
