/*
 * dest.c - destinations: a recipient domain's route, its backlog and its
 * sessions, on the delivery thread that owns the domain.
 *
 * A dispatch joins its destination's backlog (dlv_dest_enqueue): by pool,
 * and within a pool one FIFO per job (qd_job) served round robin, so that a
 * small transactional job goes out next to a bulk job instead of behind it.
 * dlv_dest_kick() resolves the route (static route, MX + A/AAAA, implicit
 * MX, null MX; MTA-STS beside it), applies a route failure, a dead-site
 * verdict or the MTA-STS gate to everything pending, hands work to idle
 * sessions and opens new ones where they would serve the backlog sooner
 * than the open ones (dest_open_pays): slow start up to
 * c_dlv_max_conn_per_dest, and within the throttles of the destination's
 * provider (the registry's token buckets and connection caps, checked in
 * order: the queue (provider, vmta), the provider (total_*), the global
 * section, a per_domain rule; a token taken at one level is given back
 * when a later one says wait, and a uv timer kicks the destination when
 * the next token is due).
 *
 * Sessions (session.c) ask their destination for the next dispatch
 * (dlv_dest_next), report connection failures and successes, and hand the
 * destination's part of a verdict's shaping signal to dlv_dest_signal.
 * Outcomes of what never reached a session are judged (trouble.c) and
 * reported here (dlv_dest_fail_pending).
 *
 * Main functions: dlv_dest_get / enqueue / kick / next / fail_pending,
 * dlv_dest_conn_ok / conn_failed, dlv_dest_sweep / free_all /
 * shutdown_all / reconfig_all (delivery.c).
 *
 * Thread: everything here runs on the destination's delivery thread; the
 * provider state it reads is the registry's (providers.c: atomics, or
 * copies taken under its lock).
 */
#include "delivery/delivery_int.h"
#include "delivery/shaping_int.h"
#include "delivery/cluster_int.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SHP_BLOCKED_POLL_MS 200 /* blocked on another thread's connections: look again */
#define SHP_OP_POLL_MS 500      /* held by an operator's suspend: look again */
#define DLV_EWMA_DIV 4          /* dest_ewma: weight 1/4 to each new measurement */

typedef struct shp_job {
    struct shp_job *j_next;
    char *j_name; /* NULL: no job */
    queue_dispatch_t *j_head, *j_tail;
    int j_n;
} shp_job_t;

typedef struct shp_poolq {
    shp_job_t *pq_jobs;
    shp_job_t *pq_cur; /* next job served */
    int pq_n;
    int pq_cw[SHP_MAX_VMTAS]; /* smooth weighted round robin state */
} shp_poolq_t;

struct shp_dest {
    dlv_dest_t *sd_de;
    dlv_shaping_t *sd_sh;
    shp_provider_t *sd_pv;
    bool sd_final;   /* provider decided (domain pattern, or MX after the route) */
    uint32_t sd_gen; /* sh_gen the provider and limits were taken at */
    bool sd_reroute; /* a reload happened while connections were open: match again */
    /* copies taken under sh_lock at sd_gen (a reload rewrites pv_lim) */
    shp_limits_t sd_lim;        /* its domain rule's limits, else its provider's */
    shp_limits_t sd_pvlim;      /* its provider's (provider-wide caps) */
    const shp_limits_t *sd_own; /* per_domain rule's own keys, or NULL (rule arrays are
                                 * never changed in place: no copy) */
    int sd_dom_nconn;
    shp_bucket_t sd_dom_msg;
    shp_bucket_t sd_dom_cr;
    shp_poolq_t sd_pq[SHP_MAX_POOLS];
    int sd_pool_rr;
    uv_timer_t *sd_timer;             /* freed in its close callback */
    uint64_t sd_timer_due;            /* monotonic us, 0 = not armed */
    int sd_cl_conn[SHP_MAX_VMTAS][3]; /* connections holding a shared slot (queue, provider,
                                       * global) */
};

static void dlv_dest_free(dlv_dest_t *de);
static void dlv_route_start(dlv_dest_t *de);
static void dlv_route_fail(dlv_dest_t *de, int code, const char *status, const char *text,
                           uint32_t ttl);
static void dlv_mx_cb(void *arg, dns_status_t st, bool secure, const dns_mx_t *mx, int n,
                      uint32_t ttl);
static void dlv_mx_dane_start(dlv_dest_t *de, bool secure);
static void dlv_mx_done(dlv_dest_t *de, bool implicit);
static void dlv_addr_cb(void *arg, dns_status_t st, const sockaddr_any_t *addrs, int n,
                        uint32_t ttl);
static void shp_dest_init(dlv_dest_t *de);
static void shp_dest_free(dlv_dest_t *de);
static void shp_dest_stop(dlv_dest_t *de);
static void shp_route_ready(dlv_dest_t *de);
static queue_dispatch_t *shp_pop_any(dlv_dest_t *de);
static void shp_kick(dlv_dest_t *de);
static void shp_dest_timer(shp_dest_t *sd, uint64_t wait_us);

static uint64_t shp_now_ns(void)
{
    return clock_mono_us() * 1000ULL;
}

/* ------------------------------------------------------------- destinations */

dlv_dest_t *dlv_dest_get(dlv_thread_t *t, const char *domain)
{
    DLV_ASSERT_ON_LOOP(t);
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
    de->de_last_used = clock_mono_us();
    shp_dest_init(de);
    de->de_hnext = t->t_dests[b];
    t->t_dests[b] = de;
    t->t_ndests++;
    return de;
}

static void dlv_addrs_free(dlv_addr_t *a, int n)
{
    if (a == NULL)
        return;
    for (int i = 0; i < n; i++) {
        free(a[i].da_host);
        dlv_dane_unref(a[i].da_dane);
    }
    free(a);
}

static void dlv_mx_scratch_free(dlv_dest_t *de)
{
    for (int i = 0; i < DLV_MAX_MX; i++) {
        dlv_addrs_free(de->de_mx_addrs[i], de->de_mx_naddr[i]);
        de->de_mx_addrs[i] = NULL;
        de->de_mx_naddr[i] = 0;
        dlv_dane_unref(de->de_mx_dane[i]);
        de->de_mx_dane[i] = NULL;
    }
    dns_mx_array_free(de->de_mx, de->de_nmx);
    de->de_mx = NULL;
    de->de_nmx = 0;
}

static void dlv_dest_free(dlv_dest_t *de)
{
    shp_dest_free(de);     /* and the backlog */
    dlv_sts_dest_free(de); /* MTA-STS state */
    dlv_addrs_free(de->de_addrs, de->de_naddr);
    dlv_mx_scratch_free(de);
    free(de->de_fail_text);
    dlv_dest_tls_drop(de);
    free(de->de_domain);
    free(de);
}

queue_dispatch_t *dlv_dest_pop(dlv_dest_t *de)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    return shp_pop_any(de);
}

const char *dlv_dest_tls_policy(const dlv_dest_t *de)
{
    if (dlv_sts_enforced(de))
        return "mta-sts";
    switch (de->de_policy) {
    case CFG_TLS_VERIFY:
        return "verify";
    case CFG_TLS_REQUIRED:
        return "required";
    case CFG_TLS_DISABLED:
        return "none";
    default:
        return "opportunistic";
    }
}

void dlv_dest_fail_pending(dlv_dest_t *de, const dlv_verdict_t *v)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    dlv_where_t w = {.w_mta_sts = dlv_sts_mode(de), /* e.g. 4.7.5 no MX matches */
                     .w_tls_policy = v->v_tls_policy ? v->v_tls_policy : dlv_dest_tls_policy(de),
                     .w_tls_failure = v->v_tls_failure};
    queue_dispatch_t *qd;
    while ((qd = dlv_dest_pop(de)) != NULL) {
        dlv_dest_names(de, qd, -1, &w);
        for (int i = 0; i < qd->qd_nrcpt; i++)
            dlv_report(de->de_t, qd, i, &v->v_res, v->v_text, &w);
        queue_dispatch_free(qd);
    }
}

void dlv_dest_fail_pending_with(dlv_dest_t *de, int code, const char *status, const char *text,
                                uint64_t retry_at)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
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
    DLV_ASSERT_ON_LOOP(de->de_t);
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
        uint64_t now = clock_mono_us();
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
        const char *why = NULL;
        dlv_sts_gate_t g = dlv_sts_gate(de, &why);
        if (g == DLV_STS_DEFER)
            dlv_dest_fail_pending_with(de, 0, "4.7.5", why, 0);
        if (g != DLV_STS_GO)
            continue; /* to the rekick test */
        /* work for idle connections, then new ones gradually, within the
         * throttles (shp_kick) */
        shp_kick(de);
    } while (de->de_rekick);
    de->de_kicking = false;
}

/* a smoothed measurement: the first sample as it is, then 1/DLV_EWMA_DIV
 * of each new one (as TCP's SRTT, RFC 6298, with a faster gain: a
 * destination shows few connection setups) */
static void dest_ewma(uint64_t *avg, uint64_t sample)
{
    sample = MAX(sample, 1); /* 0 means "not measured" */
    *avg = *avg == 0 ? sample : (*avg * (DLV_EWMA_DIV - 1) + sample) / DLV_EWMA_DIV;
}

void dlv_dest_conn_ok(dlv_dest_t *de, uint64_t setup_us)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    const cfg_t *cfg = de->de_t->t_cfg;
    de->de_failures = 0;
    if (de->de_limit < cfg->c_dlv_max_conn_per_dest)
        de->de_limit++;
    dest_ewma(&de->de_setup_us, setup_us);
}

void dlv_dest_txn_done(dlv_dest_t *de, uint64_t us)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    dest_ewma(&de->de_txn_us, us);
}

/*
 * Whether another connection gets the backlog out sooner than the open
 * connections would (docs/delivery.md, "When another connection is
 * opened"): the last of the de_npending waiting dispatches waits about
 * npending x txn / open on the `open` connections there are (ready or
 * still connecting), a new connection is ready after setup. Over a WAN a
 * setup is 5-7 round trips and a TLS handshake, a transaction on a busy
 * connection about two: opening at every backlog spent handshakes (CPU)
 * and was slower. Nothing measured yet (a new destination): open, as the
 * slow start always did; never fewer than one connection.
 */
static bool dest_open_pays(const dlv_dest_t *de, int open)
{
    if (open == 0 || de->de_setup_us == 0 || de->de_txn_us == 0)
        return true;
    return (uint64_t)de->de_npending * de->de_txn_us > (uint64_t)open * de->de_setup_us;
}

void dlv_dest_conn_failed(dlv_dest_t *de, const dlv_verdict_t *v)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    dlv_thread_t *t = de->de_t;
    const cfg_t *cfg = t->t_cfg;
    atomic_fetch_add_explicit(&t->t_d->d_stats.ds_conn_failed, 1, memory_order_relaxed);
    de->de_failures++;
    de->de_limit = MAX(1, MIN(de->de_limit, DLV_START_CONNS));
    if (t->t_stopping)
        return;
    if (cfg->c_dlv_dead_after > 0 && de->de_failures >= cfg->c_dlv_dead_after) {
        de->de_dead_until = clock_mono_us() + cfg->c_dlv_dead_time * 1000000ULL;
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
    de->de_rexpire = clock_mono_us() + (uint64_t)ttl * 1000000ULL;
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
    de->de_rexpire = clock_mono_us() + (uint64_t)MAX(ttl, 1) * 1000000ULL;
    shp_route_ready(de); /* the provider by MX host name */
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
    dlv_sts_route_start(de, dlv_dest_kick); /* MTA-STS: the _mta-sts TXT lookup beside the MX one */
    atomic_fetch_add_explicit(&t->t_d->d_stats.ds_dns_lookups, 1, memory_order_relaxed);
    dns_query_mx(t->t_dns, de->de_domain, dlv_mx_cb, de);
}

static void dlv_mx_cb(void *arg, dns_status_t st, bool secure, const dns_mx_t *mx, int n,
                      uint32_t ttl)
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
        de->de_mx_implicit = true;
        de->de_mx_ttl = ttl;
        dlv_lookup_t *lk = xcalloc(1, sizeof(*lk));
        lk->lk_dest = de;
        lk->lk_slot = -2;
        atomic_fetch_add_explicit(&t->t_d->d_stats.ds_dns_lookups, 1, memory_order_relaxed);
        dns_query_addr(t->t_dns, de->de_domain, de->de_port, dlv_addr_cb, lk);
        dlv_mx_dane_start(de, secure); /* RFC 7672 2.2.1: the implicit MX too */
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
    de->de_mx_implicit = false;
    for (int i = 0; i < k; i++) {
        de->de_mx_st[i] = DNS_TEMPFAIL;
        dlv_lookup_t *lk = xcalloc(1, sizeof(*lk));
        lk->lk_dest = de;
        lk->lk_slot = i;
        atomic_fetch_add_explicit(&t->t_d->d_stats.ds_dns_lookups, 1, memory_order_relaxed);
        dns_query_addr(t->t_dns, de->de_mx[i].dm_host, de->de_port, dlv_addr_cb, lk);
    }
    dlv_mx_dane_start(de, secure);
}

/* DANE (dane.c): with a trusted validating resolver and a secure MX answer,
 * the TLSA verdict of each MX host joins the lookups the route waits for.
 * An explicit tls_policy entry for the domain wins over DANE, as it does
 * over MTA-STS (docs/delivery.md). */
static void dlv_mx_dane_cb(void *arg, dlv_dane_t *dn)
{
    dlv_lookup_t *lk = arg;
    dlv_dest_t *de = lk->lk_dest;
    int i = lk->lk_slot;
    free(lk);
    if (dn == NULL || de->de_t->t_stopping) {
        dlv_dane_unref(dn);
        de->de_rstate = DLV_RT_NONE;
        return;
    }
    dlv_dane_unref(de->de_mx_dane[i]);
    de->de_mx_dane[i] = dn;
    if (--de->de_mx_waiting == 0)
        dlv_mx_done(de, de->de_mx_implicit);
}

static void dlv_mx_dane_start(dlv_dest_t *de, bool secure)
{
    dlv_thread_t *t = de->de_t;
    const cfg_t *cfg = t->t_cfg;
    if (!secure || !cfg_dnssec_trust_ad(cfg) || cfg_tls_policy_explicit(cfg, de->de_domain))
        return;
    de->de_mx_waiting += de->de_nmx;
    for (int i = 0; i < de->de_nmx; i++) {
        dlv_lookup_t *lk = xcalloc(1, sizeof(*lk));
        lk->lk_dest = de;
        lk->lk_slot = i;
        dlv_dane_lookup(t, de->de_mx[i].dm_host, de->de_port, dlv_mx_dane_cb, lk);
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
            a[k].da_dane = dlv_dane_ref(de->de_mx_dane[i]);
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

/* ------------------------------------------------------------- provider and throttles */

static shp_queue_t *shp_q(shp_dest_t *sd, int v)
{
    return &sd->sd_pv->pv_q[v];
}

/* The destination's limits (its domain rule's, else its provider's) and
 * its per-domain buckets. sh_lock held (the rule arrays, pv_lim): copies,
 * since a reload rewrites pv_lim while this thread reads them. */
static void shp_dest_limits_locked(shp_dest_t *sd)
{
    sd->sd_lim = *shp_limits_for(sd->sd_pv, sd->sd_de->de_domain, &sd->sd_own);
    sd->sd_pvlim = sd->sd_pv->pv_lim;
    if (sd->sd_own != NULL) {
        shp_bucket_rate(&sd->sd_dom_msg, &sd->sd_own->l_msg_rate);
        shp_bucket_rate(&sd->sd_dom_cr, &sd->sd_own->l_conn_rate);
    }
}

/* The name of a destination's provider of its own (no rule matched): its
 * domain; in adaptive mode, once routed, its first route's host (and port
 * when not 25), so that the domains one receiving host serves learn one
 * allowance together (MX rollup without a configured provider: the host
 * counts our connections and messages, not the domains). sh_lock held. */
static const char *shp_dest_own_name(shp_dest_t *sd, const shp_prule_t *rule, bool mx, char *buf,
                                     size_t len)
{
    dlv_dest_t *de = sd->sd_de;
    const shp_limits_t *d = &sd->sd_sh->sh_conf->sc_defaults;
    bool adaptive = (d->l_set & L_ADAPTIVE) ? d->l_adaptive : sd->sd_sh->sh_adaptive;
    if (rule != NULL || !mx || de->de_naddr == 0 || !adaptive || de->de_addrs[0].da_host == NULL)
        return de->de_domain;
    const struct sockaddr *sa = (const struct sockaddr *)&de->de_addrs[0].da_sa;
    int port = sa->sa_family == AF_INET    ? ntohs(((const struct sockaddr_in *)sa)->sin_port)
               : sa->sa_family == AF_INET6 ? ntohs(((const struct sockaddr_in6 *)sa)->sin6_port)
                                           : 25;
    if (port == 25 || port == 0)
        snprintf(buf, len, "%s", de->de_addrs[0].da_host);
    else
        snprintf(buf, len, "%s:%d", de->de_addrs[0].da_host, port);
    return buf;
}

/* Match the destination's provider (domain patterns; with mx, the MX host
 * names of its route too) and take it, under sh_lock so that a reload
 * cannot swap the rules between the match and the registry. */
static void shp_dest_route(shp_dest_t *sd, bool mx)
{
    dlv_dest_t *de = sd->sd_de;
    dlv_shaping_t *sh = sd->sd_sh;
    shp_provider_t *old = sd->sd_pv;
    uv_mutex_lock(&sh->sh_lock);
    sd->sd_gen = atomic_load(&sh->sh_gen);
    const shp_prule_t *rule = shp_match_domain(sh->sh_conf, de->de_domain);
    sd->sd_final = rule != NULL;
    for (int i = 0; mx && rule == NULL && i < de->de_naddr; i++)
        rule = shp_match_mx(sh->sh_conf, de->de_addrs[i].da_host);
    sd->sd_final |= mx;
    char byhost[300];
    const char *name = shp_dest_own_name(sd, rule, mx, byhost, sizeof(byhost));
    sd->sd_pv = shp_provider_get_locked(sh, rule, name);
    shp_dest_limits_locked(sd);
    uv_mutex_unlock(&sh->sh_lock);
    shp_provider_put(old);
    log_debug("shaping: %s -> provider %s", de->de_domain, sd->sd_pv->pv_name);
}

/* A reload happened (sh_gen moved): new limits now; a new provider match
 * once no connection of the destination is open (a session's connection
 * is counted on its provider's queue). Destination's thread. */
static void shp_dest_refresh(shp_dest_t *sd)
{
    dlv_dest_t *de = sd->sd_de;
    if (de->de_sessions == NULL) {
        sd->sd_reroute = false;
        shp_dest_route(sd, de->de_naddr > 0);
        return;
    }
    uv_mutex_lock(&sd->sd_sh->sh_lock);
    sd->sd_gen = atomic_load(&sd->sd_sh->sh_gen);
    shp_dest_limits_locked(sd);
    uv_mutex_unlock(&sd->sd_sh->sh_lock);
    sd->sd_reroute = true;
}

static inline void shp_dest_check(shp_dest_t *sd)
{
    if (UNLIKELY(sd->sd_gen != atomic_load_explicit(&sd->sd_sh->sh_gen, memory_order_acquire) ||
                 (sd->sd_reroute && sd->sd_de->de_sessions == NULL)))
        shp_dest_refresh(sd);
}

static void shp_dest_init(dlv_dest_t *de)
{
    dlv_shaping_t *sh = de->de_t->t_d->d_shaping;
    shp_dest_t *sd = xcalloc(1, sizeof(*sd));
    sd->sd_de = de;
    sd->sd_sh = sh;
    de->de_shp = sd;
    shp_dest_route(sd, false);
}

static void shp_route_ready(dlv_dest_t *de)
{
    shp_dest_t *sd = de->de_shp;
    if (sd->sd_final)
        return;
    /* the first route decides (MX rollup) */
    if (de->de_sessions == NULL) {
        shp_dest_route(sd, true);
        return;
    }
    sd->sd_final = true;
}

static void shp_timer_closed_cb(uv_handle_t *h)
{
    free(h);
}

static void shp_dest_stop(dlv_dest_t *de)
{
    shp_dest_t *sd = de->de_shp;
    if (sd != NULL && sd->sd_timer != NULL) {
        sd->sd_timer->data = NULL;
        uv_close((uv_handle_t *)sd->sd_timer, shp_timer_closed_cb);
        sd->sd_timer = NULL;
    }
}

static void shp_dest_free(dlv_dest_t *de)
{
    shp_dest_t *sd = de->de_shp;
    if (sd == NULL)
        return;
    shp_dest_stop(de);
    for (int p = 0; p < SHP_MAX_POOLS; p++) {
        shp_job_t *j = sd->sd_pq[p].pq_jobs;
        while (j != NULL) {
            shp_job_t *next = j->j_next;
            while (j->j_head != NULL) {
                queue_dispatch_t *qd = j->j_head;
                j->j_head = (queue_dispatch_t *)qd->qd_node.cn_next;
                queue_dispatch_free(qd);
            }
            free(j->j_name);
            free(j);
            j = next;
        }
    }
    shp_provider_put(sd->sd_pv);
    free(sd);
    de->de_shp = NULL;
}

static void shp_timer_cb(uv_timer_t *h)
{
    shp_dest_t *sd = h->data;
    if (sd == NULL)
        return;
    sd->sd_timer_due = 0;
    dlv_dest_kick(sd->sd_de);
}

/* Kick the destination again in wait_us (the earliest of the asks wins). */
static void shp_dest_timer(shp_dest_t *sd, uint64_t wait_us)
{
    if (sd->sd_de->de_t->t_stopping) /* the timer is closed (shp_dest_stop) */
        return;
    uint64_t due = clock_mono_us() + wait_us;
    if (sd->sd_timer_due != 0 && sd->sd_timer_due <= due)
        return;
    if (sd->sd_timer == NULL) {
        sd->sd_timer = xcalloc(1, sizeof(uv_timer_t));
        uv_timer_init(&sd->sd_de->de_t->t_loop, sd->sd_timer);
        sd->sd_timer->data = sd;
    }
    sd->sd_timer_due = due;
    uv_timer_start(sd->sd_timer, shp_timer_cb, MAX(1, (wait_us + 999) / 1000), 0);
}

/* ------------------------------------------------------------ backlog */

static bool shp_job_eq(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

void dlv_dest_enqueue(dlv_dest_t *de, queue_dispatch_t *qd)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    shp_dest_t *sd = de->de_shp;
    int p = shp_pool_for(sd->sd_sh->sh_vm, qd);
    qd->qd_pool = p; /* for its records: the pool header is gone from the body now */
    shp_poolq_t *pq = &sd->sd_pq[p];
    shp_job_t *j;
    for (j = pq->pq_jobs; j; j = j->j_next)
        if (shp_job_eq(j->j_name, qd->qd_job))
            break;
    if (j == NULL) {
        j = xcalloc(1, sizeof(*j));
        j->j_name = qd->qd_job ? xstrdup(qd->qd_job) : NULL;
        j->j_next = pq->pq_jobs; /* new jobs are served next */
        pq->pq_jobs = j;
        pq->pq_cur = j;
    }
    qd->qd_node.cn_next = NULL;
    if (j->j_tail)
        j->j_tail->qd_node.cn_next = &qd->qd_node;
    else
        j->j_head = qd;
    j->j_tail = qd;
    j->j_n++;
    pq->pq_n++;
    de->de_npending++;
}

/* The next dispatch of pool p: jobs in turn (fair share). */
static queue_dispatch_t *shp_pool_pop(dlv_dest_t *de, shp_poolq_t *pq)
{
    if (pq->pq_n == 0)
        return NULL;
    shp_job_t *j = pq->pq_cur ? pq->pq_cur : pq->pq_jobs;
    while (j->j_head == NULL) /* cannot loop forever: pq_n > 0 */
        j = j->j_next ? j->j_next : pq->pq_jobs;
    queue_dispatch_t *qd = j->j_head;
    j->j_head = (queue_dispatch_t *)qd->qd_node.cn_next;
    if (j->j_head == NULL)
        j->j_tail = NULL;
    qd->qd_node.cn_next = NULL;
    j->j_n--;
    pq->pq_n--;
    de->de_npending--;
    pq->pq_cur = j->j_next ? j->j_next : pq->pq_jobs;
    if (j->j_n == 0) { /* unlink the empty job */
        shp_job_t **pp = &pq->pq_jobs;
        while (*pp != j)
            pp = &(*pp)->j_next;
        *pp = j->j_next;
        if (pq->pq_cur == j)
            pq->pq_cur = pq->pq_jobs;
        free(j->j_name);
        free(j);
    }
    return qd;
}

static queue_dispatch_t *shp_pop_any(dlv_dest_t *de)
{
    shp_dest_t *sd = de->de_shp;
    if (sd == NULL || de->de_npending == 0)
        return NULL;
    for (int p = 0; p < sd->sd_sh->sh_vm->sc_npools; p++)
        if (sd->sd_pq[p].pq_n > 0)
            return shp_pool_pop(de, &sd->sd_pq[p]);
    return NULL;
}

static bool shp_pool_has(const shp_pool_t *p, int v)
{
    for (int i = 0; i < p->po_n; i++)
        if (p->po_members[i] == v)
            return true;
    return false;
}

/* vmta v may send for the provider now */
static bool shp_vmta_ok(shp_dest_t *sd, int v, uint64_t now_us)
{
    return atomic_load_explicit(&shp_q(sd, v)->q_disabled_until, memory_order_relaxed) <= now_us &&
           atomic_load_explicit(&sd->sd_sh->sh_vmta_suspend[v], memory_order_relaxed) <= now_us;
}

/* ------------------------------------------------------------ cluster hooks */

/* A token of each shared rate lease (cluster.c) of vmta v's queue and of
 * its provider, at the rates in force: 0, or nonzero (nothing taken). */
static int shp_cluster_msg(shp_dest_t *sd, int v)
{
    shp_queue_t *q = shp_q(sd, v);
    shp_provider_t *pv = sd->sd_pv;
    int a = cl_rate_take(q->q_cl_msg, atomic_load(&q->q_msg.b_interval));
    if (a < 0)
        return -1;
    int b = cl_rate_take(pv->pv_cl_msg, atomic_load(&pv->pv_msg.b_interval));
    if (b < 0) {
        if (a > 0)
            cl_rate_refund(q->q_cl_msg);
        return -1;
    }
    dlv_shaping_t *sh = sd->sd_sh;
    if (cl_rate_take(sh->sh_cl_msg, atomic_load(&sh->sh_global_msg.b_interval)) < 0) {
        if (a > 0)
            cl_rate_refund(q->q_cl_msg);
        if (b > 0)
            cl_rate_refund(pv->pv_cl_msg);
        return -1;
    }
    return 0;
}

/* A shared connection slot of each cap of vmta v's queue and provider
 * (cluster.c): 0, or nonzero (nothing taken). sd_cl_conn counts the
 * connections holding them, for dlv_dest_conn_release. */
static int shp_cluster_conn(shp_dest_t *sd, int v)
{
    shp_queue_t *q = shp_q(sd, v);
    int a = cl_conn_take(q->q_cl_conn, atomic_load(&q->q_max_conn));
    if (a < 0)
        return -1;
    int b = cl_conn_take(sd->sd_pv->pv_cl_conn, sd->sd_pvlim.l_total_conn);
    if (b < 0) {
        if (a > 0)
            cl_conn_release(q->q_cl_conn);
        return -1;
    }
    dlv_shaping_t *sh = sd->sd_sh;
    int g = cl_conn_take(sh->sh_cl_conn, atomic_load(&sh->sh_global_conn));
    if (g < 0) {
        if (a > 0)
            cl_conn_release(q->q_cl_conn);
        if (b > 0)
            cl_conn_release(sd->sd_pv->pv_cl_conn);
        return -1;
    }
    sd->sd_cl_conn[v][0] += a;
    sd->sd_cl_conn[v][1] += b;
    sd->sd_cl_conn[v][2] += g;
    return 0;
}

static void shp_cluster_conn_release(shp_dest_t *sd, int v)
{
    if (sd->sd_cl_conn[v][0] > 0) {
        sd->sd_cl_conn[v][0]--;
        cl_conn_release(shp_q(sd, v)->q_cl_conn);
    }
    if (sd->sd_cl_conn[v][1] > 0) {
        sd->sd_cl_conn[v][1]--;
        cl_conn_release(sd->sd_pv->pv_cl_conn);
    }
    if (sd->sd_cl_conn[v][2] > 0) {
        sd->sd_cl_conn[v][2]--;
        cl_conn_release(sd->sd_sh->sh_cl_conn);
    }
}

/* A message token at every level for vmta v: 0, or the us to wait. */
static uint64_t shp_take_msg(shp_dest_t *sd, int v)
{
    uint64_t now = shp_now_ns();
    shp_bucket_t *b[4] = {&shp_q(sd, v)->q_msg, &sd->sd_pv->pv_msg, &sd->sd_sh->sh_global_msg,
                          &sd->sd_dom_msg};
    for (int i = 0; i < 4; i++) {
        uint64_t w = shp_bucket_take(b[i], now);
        if (w != 0) {
            while (--i >= 0)
                shp_bucket_refund(b[i]);
            return MAX(1, w / 1000);
        }
    }
    if (shp_cluster_msg(sd, v) != 0) {
        for (int i = 0; i < 4; i++)
            shp_bucket_refund(b[i]);
        return CL_WAIT_US;
    }
    return 0;
}

/* A connection slot and a connection token for vmta v: 0; UINT64_MAX when a
 * connection cap is full; else the us to wait for a token. */
static uint64_t shp_conn_acquire(shp_dest_t *sd, int v)
{
    shp_queue_t *q = shp_q(sd, v);
    shp_provider_t *pv = sd->sd_pv;
    dlv_shaping_t *sh = sd->sd_sh;
    int qmax = atomic_load(&q->q_max_conn);
    if (qmax > 0 && atomic_load(&q->q_nconn) >= qmax)
        return UINT64_MAX;
    int pvmax = sd->sd_pvlim.l_total_conn;
    int gmax = atomic_load_explicit(&sh->sh_global_conn, memory_order_relaxed);
    if (pvmax > 0 && atomic_load(&pv->pv_nconn) >= pvmax)
        return UINT64_MAX;
    if (gmax > 0 && atomic_load(&sh->sh_global_nconn) >= gmax)
        return UINT64_MAX;
    if (sd->sd_own && (sd->sd_own->l_set & L_MAX_CONN) && sd->sd_own->l_max_conn > 0 &&
        sd->sd_dom_nconn >= sd->sd_own->l_max_conn)
        return UINT64_MAX;
    uint64_t now = shp_now_ns();
    shp_bucket_t *b[4] = {&q->q_cr, &pv->pv_cr, &sh->sh_global_cr, &sd->sd_dom_cr};
    for (int i = 0; i < 4; i++) {
        uint64_t w = shp_bucket_take(b[i], now);
        if (w != 0) {
            while (--i >= 0)
                shp_bucket_refund(b[i]);
            return MAX(1, w / 1000);
        }
    }
    if (shp_cluster_conn(sd, v) != 0) {
        for (int i = 0; i < 4; i++)
            shp_bucket_refund(b[i]);
        return UINT64_MAX;
    }
    /* counted now; a race past a cap by another thread is undone */
    int a = atomic_fetch_add(&q->q_nconn, 1) + 1;
    int bb = atomic_fetch_add(&pv->pv_nconn, 1) + 1;
    int c = atomic_fetch_add(&sh->sh_global_nconn, 1) + 1;
    if ((qmax > 0 && a > qmax) || (pvmax > 0 && bb > pvmax) || (gmax > 0 && c > gmax)) {
        atomic_fetch_sub(&q->q_nconn, 1);
        atomic_fetch_sub(&pv->pv_nconn, 1);
        atomic_fetch_sub(&sh->sh_global_nconn, 1);
        shp_cluster_conn_release(sd, v);
        return UINT64_MAX;
    }
    sd->sd_dom_nconn++;
    return 0;
}

void dlv_dest_conn_release(dlv_dest_t *de, int vmta)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    shp_dest_t *sd = de->de_shp;
    atomic_fetch_sub(&shp_q(sd, vmta)->q_nconn, 1);
    atomic_fetch_sub(&sd->sd_pv->pv_nconn, 1);
    atomic_fetch_sub(&sd->sd_sh->sh_global_nconn, 1);
    shp_cluster_conn_release(sd, vmta);
    sd->sd_dom_nconn--;
    /* a slot is free: a backlog held back by a connection cap moves on */
    if (de->de_npending > 0)
        shp_dest_timer(sd, 1000);
}

/* Defer every dispatch of pool p (all pools when p < 0) with a retry time
 * (the judge's verdict on a held backlog). */
static void shp_defer_pool(dlv_dest_t *de, int p, uint64_t retry_at, const char *status,
                           const char *text)
{
    shp_dest_t *sd = de->de_shp;
    dlv_reply_t r = {.rp_stage = DLV_STAGE_DEST,
                     .rp_status = status,
                     .rp_text = text,
                     .rp_domain = de->de_domain,
                     .rp_retry_at = retry_at};
    dlv_verdict_t v;
    dlv_judge(&r, &v);
    dlv_where_t w = {.w_mta_sts = dlv_sts_mode(de), .w_tls_policy = dlv_dest_tls_policy(de)};
    for (int i = 0; i < sd->sd_sh->sh_vm->sc_npools; i++) {
        if (p >= 0 && i != p)
            continue;
        queue_dispatch_t *qd;
        while ((qd = shp_pool_pop(de, &sd->sd_pq[i])) != NULL) {
            dlv_dest_names(de, qd, -1, &w);
            for (int k = 0; k < qd->qd_nrcpt; k++)
                dlv_report(de->de_t, qd, k, &v.v_res, v.v_text, &w);
            queue_dispatch_free(qd);
        }
    }
}

static uint64_t shp_unix_at(uint64_t mono_us)
{
    uint64_t now = clock_mono_us();
    return clock_now_s() + (mono_us > now ? (mono_us - now + 999999) / 1000000 : 0);
}

/* A dispatch for an idle session of vmta v: NULL when none is due (a
 * timer is armed when a throttle says wait). */
static queue_dispatch_t *shp_next_for(shp_dest_t *sd, int v, uint64_t *wait)
{
    dlv_shaping_t *sh = sd->sd_sh;
    int np = sh->sh_vm->sc_npools;
    for (int k = 0; k < np; k++) {
        int p = (sd->sd_pool_rr + k) % np;
        if (sd->sd_pq[p].pq_n == 0 || !shp_pool_has(&sh->sh_vm->sc_pools[p], v))
            continue;
        uint64_t w = shp_take_msg(sd, v);
        if (w != 0) {
            *wait = MIN(*wait, w);
            return NULL;
        }
        sd->sd_pool_rr = (p + 1) % np;
        return shp_pool_pop(sd->sd_de, &sd->sd_pq[p]);
    }
    return NULL;
}

static void shp_kick(dlv_dest_t *de)
{
    shp_dest_t *sd = de->de_shp;
    dlv_shaping_t *sh = sd->sd_sh;
    const cfg_t *cfg = de->de_t->t_cfg;
    uint64_t now = clock_mono_us();
    shp_dest_check(sd);
    if (shp_op_suspended(atomic_load(&sd->sd_pv->pv_op_until), now)) {
        /* the operator's suspend holds the backlog here (nothing is
         * deferred): looked at again until resumed */
        if (de->de_npending > 0)
            shp_dest_timer(sd, SHP_OP_POLL_MS * 1000ULL);
        return;
    }
    uint64_t su = atomic_load(&sd->sd_pv->pv_suspend_until);
    if (su > now) {
        char text[200];
        snprintf(text, sizeof(text), "provider %s suspended by shaping rule", sd->sd_pv->pv_name);
        shp_defer_pool(de, -1, shp_unix_at(su), "4.7.0", text);
        return;
    }
    bool allowed[SHP_MAX_VMTAS];
    for (int v = 0; v < sh->sh_nvmtas; v++)
        allowed[v] = shp_vmta_ok(sd, v, now);
    /* a pool whose every source is disabled for this provider waits */
    for (int p = 0; p < sh->sh_vm->sc_npools; p++) {
        if (sd->sd_pq[p].pq_n == 0)
            continue;
        uint64_t until = UINT64_MAX;
        bool any = false;
        for (int i = 0; i < sh->sh_vm->sc_pools[p].po_n; i++) {
            int v = sh->sh_vm->sc_pools[p].po_members[i];
            any |= allowed[v];
            until = MIN(until, atomic_load(&shp_q(sd, v)->q_disabled_until));
        }
        bool held = false; /* a source the operator suspended: hold, do not defer */
        for (int i = 0; !any && i < sh->sh_vm->sc_pools[p].po_n; i++)
            held |= shp_op_suspended(
                atomic_load(&sh->sh_vmta_suspend[sh->sh_vm->sc_pools[p].po_members[i]]), now);
        if (!any && held) {
            shp_dest_timer(sd, SHP_OP_POLL_MS * 1000ULL);
        } else if (!any) {
            char text[200];
            snprintf(text, sizeof(text), "every source of pool %s is disabled for provider %s",
                     sh->sh_vm->sc_pools[p].po_name, sd->sd_pv->pv_name);
            shp_defer_pool(de, p, shp_unix_at(until), "4.7.0", text);
        }
    }
    uint64_t wait = UINT64_MAX;
    /* work for idle connections first */
    for (dlv_session_t *s = de->de_sessions; s && de->de_npending > 0; s = dlv_session_next(s)) {
        if (!dlv_session_idle(s))
            continue;
        int v = dlv_session_vmta(s);
        if (!allowed[v])
            continue;
        queue_dispatch_t *qd = shp_next_for(sd, v, &wait);
        if (qd != NULL)
            dlv_session_take(s, qd);
    }
    /* then open new ones gradually while a backlog waits, and only where
     * they would serve it sooner than the open ones (dest_open_pays) */
    int connecting = 0, open = 0;
    for (dlv_session_t *s = de->de_sessions; s; s = dlv_session_next(s)) {
        connecting += dlv_session_connecting(s);
        open += !dlv_session_closing(s);
    }
    int max = MAX(1, cfg->c_dlv_max_conn_per_dest);
    bool blocked = false;
    while (de->de_npending > connecting && de->de_nconn < MIN(de->de_limit, max) &&
           dest_open_pays(de, open)) {
        /* the pool to serve: round robin among those with a backlog */
        int np = sh->sh_vm->sc_npools, p = -1;
        for (int k = 0; k < np && p < 0; k++)
            if (sd->sd_pq[(sd->sd_pool_rr + k) % np].pq_n > 0)
                p = (sd->sd_pool_rr + k) % np;
        if (p < 0)
            break;
        bool ok[SHP_MAX_VMTAS];
        memcpy(ok, allowed, sizeof(ok));
        int v = -1;
        for (;;) {
            int c = shp_pool_pick(&sh->sh_vm->sc_pools[p], sd->sd_pq[p].pq_cw, ok);
            if (c < 0)
                break;
            uint64_t w = shp_conn_acquire(sd, c);
            if (w == 0) {
                v = c;
                break;
            }
            if (w == UINT64_MAX)
                blocked = true;
            else
                wait = MIN(wait, w);
            ok[c] = false;
        }
        if (v < 0)
            break;
        if (dlv_session_new(de, v) == NULL) {
            dlv_dest_conn_release(de, v);
            break;
        }
        connecting++;
        open++;
    }
    if (de->de_npending > 0 && blocked) /* caps held by other threads' connections too */
        wait = MIN(wait, SHP_BLOCKED_POLL_MS * 1000ULL);
    if (wait != UINT64_MAX && de->de_npending > 0)
        shp_dest_timer(sd, wait);
}

queue_dispatch_t *dlv_dest_next(dlv_dest_t *de, int vmta, bool *quit)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    shp_dest_t *sd = de->de_shp;
    uint64_t now = clock_mono_us();
    shp_queue_t *q = shp_q(sd, vmta);
    *quit = false;
    shp_dest_check(sd);
    q = shp_q(sd, vmta); /* the provider may have changed (no open session then) */
    int qmax = atomic_load(&q->q_max_conn);
    if (atomic_load(&sd->sd_pv->pv_suspend_until) > now ||
        shp_op_suspended(atomic_load(&sd->sd_pv->pv_op_until), now) ||
        !shp_vmta_ok(sd, vmta, now) || (qmax > 0 && atomic_load(&q->q_nconn) > qmax)) {
        /* backoff lowered the cap, a suspension or a disabled source: this
         * connection goes; the backlog is looked at again right away */
        *quit = true;
        if (de->de_npending > 0)
            shp_dest_timer(sd, 1000);
        return NULL;
    }
    uint64_t wait = UINT64_MAX;
    queue_dispatch_t *qd = shp_next_for(sd, vmta, &wait);
    if (qd == NULL && wait != UINT64_MAX)
        shp_dest_timer(sd, wait);
    return qd;
}

static const shp_limits_t *shp_lim(dlv_dest_t *de)
{
    return &de->de_shp->sd_lim;
}

int dlv_dest_max_msgs(dlv_dest_t *de, int vmta)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    shp_dest_check(de->de_shp); /* a reload's max_messages_per_connection: now */
    int n = shp_lim(de)->l_max_msgs;
    n = n > 0 ? n : de->de_t->t_cfg->c_dlv_max_msgs_per_conn;
    int learned = shp_adapt_max_msgs(shp_q(de->de_shp, vmta)); /* adaptive mode's, 0: none */
    return learned > 0 && learned < n ? learned : n;
}

int dlv_dest_max_rcpt(dlv_dest_t *de, int vmta)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    UNUSED(vmta);
    int n = shp_lim(de)->l_max_rcpt;
    return n > 0 ? n : de->de_t->t_cfg->c_dlv_max_rcpt_per_txn;
}

const char *dlv_dest_helo(dlv_dest_t *de, int vmta)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    const char *h = shp_vmta(de->de_shp->sd_sh, vmta)->vm_ehlo;
    return h ? h : de->de_t->t_helo;
}

int dlv_dest_verp(dlv_dest_t *de, int vmta, int pool)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    return shp_verp(de->de_shp->sd_sh, vmta, pool);
}

int dlv_dest_bind(dlv_dest_t *de, int vmta, uv_tcp_t *tcp)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    return shp_vmta_bind(shp_vmta(de->de_shp->sd_sh, vmta), tcp);
}

void dlv_dest_names(dlv_dest_t *de, const queue_dispatch_t *qd, int vmta, dlv_where_t *w)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    shp_dest_t *sd = de->de_shp;
    const shp_conf_t *vm = sd->sd_sh->sh_vm;
    w->w_vmta = vmta >= 0 && vmta < vm->sc_nvmtas ? shp_vmta(sd->sd_sh, vmta)->vm_name : NULL;
    w->w_pool = qd != NULL && qd->qd_pool >= 0 && qd->qd_pool < vm->sc_npools
                    ? vm->sc_pools[qd->qd_pool].po_name
                    : NULL;
    w->w_provider = sd->sd_pv != NULL ? sd->sd_pv->pv_name : NULL;
}

shp_queue_t *dlv_dest_queue(dlv_dest_t *de, int vmta)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    return shp_q(de->de_shp, vmta);
}

void dlv_dest_signal(dlv_dest_t *de, int signal)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    shp_dest_t *sd = de->de_shp;
    switch (signal) {
    case SHP_A_DEFER_QUEUE:
        shp_defer_pool(de, -1, 0, "4.7.0", "destination deferred by shaping rule");
        break;
    case SHP_A_SUSPEND:
    case SHP_A_DISABLE_SRC:
        if (de->de_npending > 0)
            shp_dest_timer(sd, 1000); /* move the backlog on (other sources) or defer it */
        break;
    default:
        break;
    }
}

/* ------------------------------------------------------------- the thread's table */

void dlv_dest_sweep(dlv_thread_t *t)
{
    DLV_ASSERT_ON_LOOP(t);
    uint64_t now = clock_mono_us();
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

void dlv_dest_free_all(dlv_thread_t *t)
{
    DLV_ASSERT_ON_LOOP(t);
    for (size_t i = 0; i < t->t_dest_cap; i++) {
        while (t->t_dests[i] != NULL) {
            dlv_dest_t *de = t->t_dests[i];
            t->t_dests[i] = de->de_hnext;
            dlv_dest_free(de);
        }
    }
    t->t_ndests = 0;
}

void dlv_dest_shutdown_all(dlv_thread_t *t)
{
    DLV_ASSERT_ON_LOOP(t);
    for (size_t i = 0; i < t->t_dest_cap; i++) {
        for (dlv_dest_t *de = t->t_dests[i]; de; de = de->de_hnext) {
            while (de->de_npending > 0) {
                queue_dispatch_t *qd = dlv_dest_pop(de);
                queue_dispatch_free(qd); /* unreported: retried after restart */
            }
            shp_dest_stop(de);
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

void dlv_dest_reconfig_all(dlv_thread_t *t)
{
    DLV_ASSERT_ON_LOOP(t);
    const cfg_t *nc = t->t_cfg;
    for (size_t i = 0; i < t->t_dest_cap; i++)
        for (dlv_dest_t *de = t->t_dests[i]; de; de = de->de_hnext) {
            int want =
                dlv_sts_enforced(de) ? CFG_TLS_VERIFY : cfg_tls_policy_for(nc, de->de_domain);
            if (want != de->de_policy) {
                de->de_policy = want;
                dlv_dest_tls_drop(de); /* resumed, it would skip a now required check */
            }
            for (dlv_session_t *s = de->de_sessions, *next; s != NULL; s = next) {
                next = dlv_session_next(s); /* shutdown may unlink s */
                if (dlv_session_idle(s))
                    dlv_session_shutdown(s); /* QUIT now; busy ones after their transaction */
            }
            dlv_dest_kick(de);
        }
}

bool dlv_dest_session_stale(const dlv_dest_t *de, uint64_t born)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    return born < de->de_t->t_cfg_epoch;
}

void dlv_dest_tls_keep(dlv_dest_t *de, tls_session_t *sess)
{
    if (de->de_ntls_sessions == DLV_TLS_SESSIONS) {
        tls_session_free(de->de_tls_sessions[0]);
        memmove(de->de_tls_sessions, de->de_tls_sessions + 1,
                (DLV_TLS_SESSIONS - 1) * sizeof(de->de_tls_sessions[0]));
        de->de_ntls_sessions--;
    }
    de->de_tls_sessions[de->de_ntls_sessions++] = sess;
}

tls_session_t *dlv_dest_tls_take(dlv_dest_t *de)
{
    return de->de_ntls_sessions ? de->de_tls_sessions[--de->de_ntls_sessions] : NULL;
}
