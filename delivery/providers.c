/*
 * providers.c - the provider registry: the state the traffic shaping's
 * rule set (shaping_conf.c) drives, shared by every delivery thread.
 *
 * Providers (MX rollup) and their queues, one per virtual MTA (PowerMTA's
 * domain/vmta pairs), live in a registry by name. Each queue has its token
 * buckets, its connection count and its mode: a reply matching a response
 * rule whose trigger fires (immediately or "N in window", shp_queue_reply;
 * the judge in trouble.c is the only caller) puts it in backoff, where its
 * backoff limits are in force and deferrals get the longer backoff.retry;
 * after recover_after deliveries, or recover_quiet without a new trigger,
 * the rate climbs one step (x recover_factor) up to the normal rate (slow
 * start). Every mode change is one log line and one accounting record
 * (type "shaping"). Rules also suspend a provider or disable a source;
 * the operator suspends providers and virtual MTAs.
 *
 * Throttles are smooth token buckets (GCRA): one CAS on a 64-bit
 * theoretical arrival time, shared by every thread; the per-destination
 * checks that take tokens are the destination's (dest.c).
 *
 * A reload installs a new rule set (shp_registry_install): the providers'
 * state stays, their limits become the new ones.
 *
 * Main functions: dlv_shaping_new/free, shp_provider_get/put,
 * shp_queue_reply/success/backoff/normal, shp_registry_install/suspend/json.
 *
 * Thread: any; sh_lock guards the registry and the rule set in force, a
 * queue's q_lock its mode; hot paths use atomics only.
 */
#include "delivery/shaping_int.h"

#include "delivery/cluster_int.h"

#include <ctype.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static double shp_queue_top(const shp_queue_t *q);
static void shp_queue_apply(shp_queue_t *q, double rate, int conns);
static void shp_event(shp_queue_t *q, shp_provider_t *pv, const char *event, const char *detail,
                      const char *response);
static void shp_registry_global(dlv_shaping_t *sh, const shp_limits_t *g);
static json_object *shp_json_rate(double per_s);
static json_object *shp_json_limit(int n);
static void shp_provider_free(shp_provider_t *pv);
static void shp_cluster_attach(dlv_shaping_t *sh, shp_provider_t *pv);
static void shp_cluster_note(shp_queue_t *q, shp_provider_t *pv, const char *event,
                             const char *why);

/* libm-free rounding (the module does not link libm) */
static uint64_t shp_round(double x)
{
    return x <= 0.0 ? 0 : (uint64_t)(x + 0.5);
}

static double shp_ceil(double x)
{
    double t = (double)(int64_t)x;
    return t < x ? t + 1.0 : t;
}

/* ------------------------------------------------------------ token bucket */

void shp_bucket_set(shp_bucket_t *b, uint64_t n, uint64_t period_us)
{
    uint64_t iv = n == 0 ? 0 : (period_us * 1000ULL) / n;
    if (n > 0 && iv == 0)
        iv = 1;
    /* Tolerance of two tokens: a timer that fires a little late, or two
     * threads that ask at the same instant, do not lose a token; the rate
     * stays smooth (no period-boundary bursts). */
    atomic_store(&b->b_burst, 2);
    atomic_store(&b->b_interval, iv);
}

uint64_t shp_bucket_peek(shp_bucket_t *b, uint64_t now_ns)
{
    uint64_t iv = atomic_load_explicit(&b->b_interval, memory_order_relaxed);
    if (iv == 0)
        return 0;
    uint64_t tau = iv * (atomic_load_explicit(&b->b_burst, memory_order_relaxed) - 1);
    uint64_t tat = atomic_load_explicit(&b->b_tat, memory_order_relaxed);
    uint64_t base = MAX(tat, now_ns);
    return base - now_ns > tau ? base - tau - now_ns : 0;
}

uint64_t shp_bucket_take(shp_bucket_t *b, uint64_t now_ns)
{
    uint64_t iv = atomic_load_explicit(&b->b_interval, memory_order_relaxed);
    if (iv == 0)
        return 0;
    uint64_t tau = iv * (atomic_load_explicit(&b->b_burst, memory_order_relaxed) - 1);
    uint64_t tat = atomic_load_explicit(&b->b_tat, memory_order_relaxed);
    for (;;) {
        uint64_t base = MAX(tat, now_ns);
        if (base - now_ns > tau)
            return base - tau - now_ns;
        if (atomic_compare_exchange_weak_explicit(&b->b_tat, &tat, base + iv, memory_order_relaxed,
                                                  memory_order_relaxed))
            return 0;
    }
}

void shp_bucket_refund(shp_bucket_t *b)
{
    uint64_t iv = atomic_load_explicit(&b->b_interval, memory_order_relaxed);
    if (iv != 0)
        atomic_fetch_sub_explicit(&b->b_tat, iv, memory_order_relaxed);
}

void shp_bucket_rate(shp_bucket_t *b, const shp_rate_t *r)
{
    shp_bucket_set(b, r->r_n, r->r_period_us);
}

/* ------------------------------------------------------------ providers */

static size_t shp_hash(const char *s)
{
    size_t h = 5381;
    for (; *s; s++)
        h = h * 33 + (unsigned char)tolower((unsigned char)*s);
    return h;
}

static void shp_queue_apply(shp_queue_t *q, double rate, int conns)
{
    if (rate <= 0.0) {
        shp_bucket_set(&q->q_msg, 0, 1);
    } else { /* n per period with enough precision: tokens per 1000 s */
        uint64_t n = shp_round(rate * 1000.0);
        shp_bucket_set(&q->q_msg, n > 0 ? n : 1, 1000ULL * 1000000ULL);
    }
    atomic_store(&q->q_max_conn, conns);
}

shp_provider_t *shp_provider_get_locked(dlv_shaping_t *sh, const shp_prule_t *rule,
                                        const char *domain)
{
    const char *name = rule ? rule->pr_hosts.pv_name : domain;
    size_t b = shp_hash(name) & (sh->sh_reg_cap - 1);
    shp_provider_t *pv;
    for (pv = sh->sh_reg[b]; pv; pv = pv->pv_next)
        if (pv->pv_rule == rule && strcasecmp(pv->pv_name, name) == 0)
            break;
    if (pv == NULL) {
        pv = xcalloc(1, sizeof(*pv));
        pv->pv_sh = sh;
        pv->pv_name = xstrdup(name);
        pv->pv_rule = rule;
        pv->pv_lim = rule ? rule->pr_lim : sh->sh_conf->sc_defaults;
        shp_bucket_rate(&pv->pv_msg, &pv->pv_lim.l_total_msg);
        shp_bucket_rate(&pv->pv_cr, &pv->pv_lim.l_total_cr);
        pv->pv_q = xcalloc((size_t)sh->sh_nvmtas, sizeof(*pv->pv_q));
        for (int i = 0; i < sh->sh_nvmtas; i++) {
            shp_queue_t *q = &pv->pv_q[i];
            q->q_pv = pv;
            q->q_vmta = i;
            uv_mutex_init(&q->q_lock);
            q->q_lim = pv->pv_lim;
            shp_adapt_init(q, clock_mono_us()); /* before the top: it may be the learned rate */
            q->q_level = shp_queue_top(q);
            if (q->q_ad.a_on)
                shp_queue_apply(q, shp_adapt_rate(q), shp_adapt_conns(q));
            else
                shp_queue_apply(q, shp_rate_per_sec(&pv->pv_lim.l_msg_rate), pv->pv_lim.l_max_conn);
            shp_bucket_rate(&q->q_cr, &pv->pv_lim.l_conn_rate);
        }
        if (sh->sh_reg_n >= sh->sh_reg_cap * 2) { /* grow: rehash under the lock */
            size_t cap = sh->sh_reg_cap * 4;
            shp_provider_t **nt = xcalloc(cap, sizeof(*nt));
            for (size_t i = 0; i < sh->sh_reg_cap; i++) {
                while (sh->sh_reg[i] != NULL) {
                    shp_provider_t *p = sh->sh_reg[i];
                    sh->sh_reg[i] = p->pv_next;
                    size_t nb = shp_hash(p->pv_name) & (cap - 1);
                    p->pv_next = nt[nb];
                    nt[nb] = p;
                }
            }
            free(sh->sh_reg);
            sh->sh_reg = nt;
            sh->sh_reg_cap = cap;
            b = shp_hash(name) & (cap - 1);
        }
        shp_cluster_attach(sh, pv);
        pv->pv_next = sh->sh_reg[b];
        sh->sh_reg[b] = pv;
        sh->sh_reg_n++;
    }
    atomic_fetch_add(&pv->pv_refs, 1);
    return pv;
}

shp_provider_t *shp_provider_get(dlv_shaping_t *sh, const shp_prule_t *rule, const char *domain)
{
    uv_mutex_lock(&sh->sh_lock);
    shp_provider_t *pv = shp_provider_get_locked(sh, rule, domain);
    uv_mutex_unlock(&sh->sh_lock);
    return pv;
}

/* A provider of its own (an unmatched domain) is forgotten with its last
 * destination unless a queue is in backoff or adaptive (what it learned) or
 * the provider is suspended: then it stays until dlv_shaping_free.
 * Configured ones always stay. */
void shp_provider_put(shp_provider_t *pv)
{
    if (pv == NULL)
        return;
    dlv_shaping_t *sh = pv->pv_sh;
    uv_mutex_lock(&sh->sh_lock);
    if (atomic_fetch_sub(&pv->pv_refs, 1) == 1 && pv->pv_rule == NULL &&
        atomic_load(&pv->pv_suspend_until) <= clock_mono_us() &&
        atomic_load(&pv->pv_op_until) == 0) {
        bool quiet = true;
        for (int i = 0; i < sh->sh_nvmtas; i++)
            quiet &= atomic_load(&pv->pv_q[i].q_mode) == SHP_NORMAL &&
                     atomic_load(&pv->pv_q[i].q_disabled_until) <= clock_mono_us() &&
                     !atomic_load(&pv->pv_q[i].q_ad.a_on); /* its learned values stay */
        if (quiet) {
            for (int i = 0; i < sh->sh_nvmtas; i++) { /* kept in the per-vmta totals */
                atomic_fetch_add(&sh->sh_gone[i][0], atomic_load(&pv->pv_q[i].q_delivered));
                atomic_fetch_add(&sh->sh_gone[i][1], atomic_load(&pv->pv_q[i].q_deferred));
                atomic_fetch_add(&sh->sh_gone[i][2], atomic_load(&pv->pv_q[i].q_bounced));
            }
            size_t b = shp_hash(pv->pv_name) & (sh->sh_reg_cap - 1);
            for (shp_provider_t **pp = &sh->sh_reg[b]; *pp; pp = &(*pp)->pv_next) {
                if (*pp == pv) {
                    *pp = pv->pv_next;
                    sh->sh_reg_n--;
                    shp_provider_free(pv);
                    break;
                }
            }
        }
    }
    uv_mutex_unlock(&sh->sh_lock);
}

const shp_limits_t *shp_limits_for(const shp_provider_t *pv, const char *domain,
                                   const shp_limits_t **own)
{
    *own = NULL;
    if (pv->pv_rule != NULL)
        for (int i = 0; i < pv->pv_rule->pr_ndoms; i++)
            if (strcasecmp(pv->pv_rule->pr_doms[i].dr_domain, domain) == 0) {
                *own = &pv->pv_rule->pr_doms[i].dr_own;
                return &pv->pv_rule->pr_doms[i].dr_lim;
            }
    return &pv->pv_lim;
}

/* ------------------------------------------------------------ modes */

static const char *shp_mode_name(int m)
{
    return m == SHP_BACKOFF ? "backoff" : m == SHP_RECOVERING ? "recovering" : "normal";
}

static const char *shp_vmta_name(const shp_queue_t *q)
{
    return shp_vmta(q->q_pv->pv_sh, q->q_vmta)->vm_name;
}

uint64_t shp_queue_retry_at(shp_queue_t *q)
{
    if (atomic_load_explicit(&q->q_mode, memory_order_relaxed) == SHP_NORMAL)
        return 0;
    uv_mutex_lock(&q->q_lock);
    uint64_t r = q->q_lim.l_bo_retry;
    uv_mutex_unlock(&q->q_lock);
    return r == 0 ? 0 : clock_now_s() + r;
}

double shp_queue_rate(shp_queue_t *q)
{
    uint64_t iv = atomic_load(&q->q_msg.b_interval);
    return iv == 0 ? 0.0 : 1e9 / (double)iv;
}

/* The multiple of the backoff rate at which recovery is complete: the
 * normal rate, or 16x the backoff rate when the normal rate has no limit.
 * q_lock held. */
static double shp_queue_top(const shp_queue_t *q)
{
    const shp_limits_t *l = &q->q_lim;
    /* adaptive: the learned rate is the normal one */
    double normal = q->q_ad.a_on ? shp_adapt_rate(q) : shp_rate_per_sec(&l->l_msg_rate);
    double bo = shp_rate_per_sec(&l->l_bo_msg);
    if (normal > 0.0 && bo > 0.0)
        return MAX(1.0, normal / bo);
    return 16.0;
}

/* Put the limits for multiple m of the backoff limits in force (m >= top:
 * the normal limits). q_lock held. */
static void shp_queue_set_mult(shp_queue_t *q, double m)
{
    const shp_limits_t *l = &q->q_lim;
    double top = shp_queue_top(q);
    q->q_level = MIN(m, top);
    if (m >= top) {
        if (q->q_ad.a_on)
            shp_queue_apply(q, shp_adapt_rate(q), shp_adapt_conns(q));
        else
            shp_queue_apply(q, shp_rate_per_sec(&l->l_msg_rate), l->l_max_conn);
        shp_bucket_rate(&q->q_cr, &l->l_conn_rate);
        return;
    }
    int maxc = l->l_max_conn > 0 ? l->l_max_conn : 1000000;
    int conns = (int)MIN((double)maxc, shp_ceil((double)l->l_bo_max_conn * m - 1e-9));
    shp_queue_apply(q, shp_rate_per_sec(&l->l_bo_msg) * m, MAX(1, conns));
    if (l->l_bo_cr.r_n > 0)
        shp_bucket_set(&q->q_cr, shp_round((double)l->l_bo_cr.r_n * m * 1000.0),
                       l->l_bo_cr.r_period_us * 1000ULL);
}

static void shp_queue_change(shp_queue_t *q, int mode, double m, const char *event, const char *why,
                             uint64_t now_us)
{
    int old = atomic_load(&q->q_mode);
    q->q_step_at = now_us;
    atomic_store(&q->q_succ, 0);
    atomic_store(&q->q_mode, mode);
    shp_queue_set_mult(q, m);
    char d[200];
    snprintf(d, sizeof(d), "%s -> %s rate=%.3g/s max_connections=%d", shp_mode_name(old),
             shp_mode_name(mode), shp_queue_rate(q), atomic_load(&q->q_max_conn));
    uv_mutex_unlock(&q->q_lock);
    shp_event(q, q->q_pv, event, d, why);
}

void shp_queue_backoff(shp_queue_t *q, const char *why, uint64_t now_us)
{
    uv_mutex_lock(&q->q_lock);
    if (atomic_load(&q->q_mode) == SHP_BACKOFF) { /* again: the climb starts later */
        q->q_step_at = now_us;
        atomic_store(&q->q_succ, 0);
        uv_mutex_unlock(&q->q_lock);
        return;
    }
    q->q_backoffs++;
    shp_queue_change(q, SHP_BACKOFF, 1.0, "backoff", why, now_us);
}

void shp_queue_normal(shp_queue_t *q, const char *why, uint64_t now_us)
{
    uv_mutex_lock(&q->q_lock);
    if (atomic_load(&q->q_mode) == SHP_NORMAL) {
        uv_mutex_unlock(&q->q_lock);
        return;
    }
    shp_queue_change(q, SHP_NORMAL, shp_queue_top(q), "normal", why, now_us);
}

/* Adaptive mode changed q's learned limits: in force now (in normal mode;
 * backoff and recovery climb to them), one record, the spool's copy. */
static void shp_adapt_changed(shp_queue_t *q, const shp_adapt_change_t *ch, const char *why)
{
    uv_mutex_lock(&q->q_lock);
    if (atomic_load(&q->q_mode) == SHP_NORMAL)
        shp_queue_apply(q, shp_adapt_rate(q), shp_adapt_conns(q));
    uv_mutex_unlock(&q->q_lock);
    if (!ch->ch_record) {
        log_debug("shaping: provider=%s vmta=%s %s", q->q_pv->pv_name, shp_vmta_name(q),
                  ch->ch_detail);
        return;
    }
    shp_event(q, q->q_pv, "adapt", ch->ch_detail, why);
    shp_adapt_save(q->q_pv->pv_sh, false);
}

void shp_queue_success(shp_queue_t *q, uint64_t now_us)
{
    atomic_fetch_add_explicit(&q->q_delivered, 1, memory_order_relaxed);
    shp_adapt_change_t ch;
    if (shp_adapt_success(q, now_us, &ch)) /* adaptive mode's increase */
        shp_adapt_changed(q, &ch, NULL);
    if (atomic_load_explicit(&q->q_mode, memory_order_relaxed) == SHP_NORMAL)
        return;
    const shp_limits_t *l = &q->q_lim; /* q_lock */
    uint32_t n = atomic_fetch_add(&q->q_succ, 1) + 1;
    uv_mutex_lock(&q->q_lock);
    bool quiet_due = now_us - q->q_step_at >= l->l_rec_quiet * 1000000ULL;
    if (atomic_load(&q->q_mode) == SHP_NORMAL ||
        (!quiet_due && atomic_load(&q->q_succ) < (uint32_t)l->l_rec_after)) {
        uv_mutex_unlock(&q->q_lock);
        return;
    }
    /* one step up: rate (and connections) times recover_factor */
    char why[96];
    if (quiet_due)
        snprintf(why, sizeof(why), "no trigger for %llus", (unsigned long long)l->l_rec_quiet);
    else
        snprintf(why, sizeof(why), "%u deliveries", n);
    double m = q->q_level * l->l_rec_factor;
    bool done = m >= shp_queue_top(q);
    shp_queue_change(q, done ? SHP_NORMAL : SHP_RECOVERING, m, done ? "normal" : "recover-step",
                     why, now_us);
}

/* Record a hit of rule i at now: true when its trigger fires. q_lock held. */
static bool shp_queue_hit(shp_queue_t *q, int i, const shp_rule_t *r, uint64_t now_us)
{
    if (r->r_count <= 1)
        return true;
    int nr = SHP_MAX_RULES * 2;
    if (q->q_hits == NULL) {
        q->q_hits = xcalloc((size_t)nr * SHP_MAX_HITS, sizeof(uint64_t));
        q->q_hitpos = xcalloc((size_t)nr, sizeof(int));
    }
    uint64_t *ring = &q->q_hits[(size_t)i * SHP_MAX_HITS];
    ring[q->q_hitpos[i]] = now_us;
    q->q_hitpos[i] = (q->q_hitpos[i] + 1) % SHP_MAX_HITS;
    int in = 0;
    for (int k = 0; k < SHP_MAX_HITS; k++)
        if (ring[k] != 0 && now_us - ring[k] < r->r_window_us)
            in++;
    if (in < r->r_count)
        return false;
    memset(ring, 0, SHP_MAX_HITS * sizeof(uint64_t)); /* the next firing needs as many again */
    return true;
}

int shp_queue_reply(shp_queue_t *q, const char *domain, int code, const char *status,
                    const char *text, int conn_msgs, shp_capacity_t *cap, uint64_t now_us)
{
    shp_provider_t *pv = q->q_pv;
    dlv_shaping_t *sh = pv->pv_sh;
    UNUSED(domain);
    char resp[256];
    snprintf(resp, sizeof(resp), "%d %s%s%.200s", code, status ? status : "",
             status && status[0] ? " " : "", text ? text : "");
    /* one refusal reply (session.c calls this only for replies that
     * decide recipients' fates): 4xx defers, 5xx bounces */
    atomic_fetch_add_explicit(code >= 500 ? &q->q_bounced : &q->q_deferred, 1,
                              memory_order_relaxed);
    /* the rule arrays as one consistent set (a reload swaps them under
     * sh_lock; replaced arrays stay valid): only on a 4xx/5xx reply */
    uv_mutex_lock(&sh->sh_lock);
    const shp_prule_t *pr = pv->pv_rule;
    const shp_rule_t *drules = sh->sh_conf->sc_rules;
    int ndr = sh->sh_conf->sc_nrules;
    uv_mutex_unlock(&sh->sh_lock);
    int npr = pr ? pr->pr_nrules : 0;
    const shp_rule_t *hit = NULL;
    int hit_i = -1;
    rules_reply_t rep; /* its "CODE STATUS TEXT" line is built once, for the first regex */
    rules_reply_init(&rep, code, status, text, SIZE_MAX);
    for (int i = 0; i < npr + ndr && hit == NULL; i++) {
        const shp_rule_t *r = i < npr ? &pr->pr_rules[i] : &drules[i - npr];
        if (rules_test_match(&r->r_test, &rep)) {
            hit = r;
            hit_i = i;
        }
    }
    *cap = SHP_CAP_NONE;
    uv_mutex_lock(&q->q_lock);
    snprintf(q->q_last, sizeof(q->q_last), "%s", resp);
    /* adaptive: every capacity reply counts (the decrease has its own
     * hold-off); otherwise a capacity rule is a backoff rule */
    bool adapt = hit != NULL && hit->r_action == SHP_A_CAPACITY && q->q_ad.a_on;
    bool fire = hit != NULL && (adapt || shp_queue_hit(q, hit_i, hit, now_us));
    uv_mutex_unlock(&q->q_lock);
    if (!fire)
        return 0;
    char why[400];
    snprintf(why, sizeof(why), "%s (rule %s)", resp, hit->r_where);
    char d[200];
    switch (hit->r_action) {
    case SHP_A_CAPACITY:
        *cap = hit->r_capacity;
        if (adapt) {
            shp_adapt_change_t ch;
            if (shp_adapt_signal(q, hit->r_capacity, conn_msgs, now_us, &ch))
                shp_adapt_changed(q, &ch, why);
        } else
            shp_queue_backoff(q, why, now_us);
        break;
    case SHP_A_BACKOFF:
        shp_queue_backoff(q, why, now_us);
        break;
    case SHP_A_NORMAL:
        shp_queue_normal(q, why, now_us);
        break;
    case SHP_A_SUSPEND: {
        uint64_t until = now_us + hit->r_duration_us;
        if (atomic_exchange(&pv->pv_suspend_until, until) <= now_us) {
            snprintf(d, sizeof(d), "provider suspended for %llus",
                     (unsigned long long)(hit->r_duration_us / 1000000));
            shp_event(NULL, pv, "suspend", d, why);
        }
        break;
    }
    case SHP_A_DISABLE_SRC: {
        uint64_t until = now_us + hit->r_duration_us;
        if (atomic_exchange(&q->q_disabled_until, until) <= now_us) {
            const char *src = shp_vmta(sh, q->q_vmta)->vm_source;
            snprintf(d, sizeof(d), "source %s disabled for %llus", src ? src : "-",
                     (unsigned long long)(hit->r_duration_us / 1000000));
            shp_event(q, pv, "disable-source", d, why);
        }
        break;
    }
    case SHP_A_BOUNCE_RCPT:
    case SHP_A_DEFER_QUEUE:
        log_info("shaping: provider=%s vmta=%s %s: %s", pv->pv_name, shp_vmta_name(q),
                 hit->r_action == SHP_A_BOUNCE_RCPT ? "bounce-recipient" : "defer-queue",
                 log_esc(why));
        break;
    }
    return hit->r_action;
}

/* One log line and one accounting record for a state change. q may be NULL
 * (provider-wide). */
static void shp_event(shp_queue_t *q, shp_provider_t *pv, const char *event, const char *detail,
                      const char *response)
{
    dlv_shaping_t *sh = pv->pv_sh;
    const shp_vmta_t *vm = q ? shp_vmta(sh, q->q_vmta) : NULL;
    log_info("shaping: provider=%s vmta=%s event=%s %s (%s)", pv->pv_name, vm ? vm->vm_name : "*",
             event, detail, log_esc(response)); /* a peer's reply */
    shp_cluster_note(q, pv, event, response);
    if (sh->sh_queue == NULL)
        return;
    /* every key always there; null: provider-wide, unlimited, no reply
     * (docs/records.md) */
    json_object *o = json_object_new_object();
    char ts[32];
    json_object_object_add(o, "type", json_object_new_string("shaping"));
    json_object_object_add(
        o, "time", json_object_new_string(time_fmt_rfc3339(clock_now_us(), ts, sizeof(ts))));
    json_object_object_add(o, "event", json_object_new_string(event));
    json_object_object_add(o, "provider", json_object_new_string(pv->pv_name));
    json_object_object_add(o, "vmta", vm ? json_object_new_string(vm->vm_name) : NULL);
    json_object_object_add(o, "source_ip",
                           vm && vm->vm_source ? json_object_new_string(vm->vm_source) : NULL);
    json_object_object_add(
        o, "mode", q ? json_object_new_string(shp_mode_name(atomic_load(&q->q_mode))) : NULL);
    json_object_object_add(o, "rate", q ? shp_json_rate(shp_queue_rate(q)) : NULL);
    json_object_object_add(o, "max_connections",
                           q ? shp_json_limit(atomic_load(&q->q_max_conn)) : NULL);
    /* adaptive mode's learned limit (null: none learned, or not adaptive) */
    json_object_object_add(o, "max_messages_per_connection",
                           q ? shp_json_limit(shp_adapt_max_msgs(q)) : NULL);
    json_object_object_add(o, "detail", json_object_new_string(detail));
    json_object_object_add(o, "response",
                           response && response[0] ? json_object_new_string(response) : NULL);
    queue_acct_event(sh->sh_queue, json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
}

/* Install rule set c in sh (sh_lock held). It joins sh_confs, where the
 * ones it replaces stay until the registry goes: threads may still point
 * into them (a provider's rule, a destination's per_domain limits). */
static void shp_install_locked(dlv_shaping_t *sh, shp_conf_t *c)
{
    c->sc_next = sh->sh_confs;
    sh->sh_confs = c;
    sh->sh_conf = c;
    shp_registry_global(sh, &c->sc_global);
    /* every provider: its rule in the new set (by name) and its limits */
    for (size_t i = 0; i < sh->sh_reg_cap; i++) {
        for (shp_provider_t *pv = sh->sh_reg[i]; pv; pv = pv->pv_next) {
            const shp_prule_t *rule = NULL;
            for (int k = 0; pv->pv_rule != NULL && k < c->sc_nprules; k++)
                if (strcasecmp(c->sc_prules[k].pr_hosts.pv_name, pv->pv_name) == 0)
                    rule = &c->sc_prules[k];
            pv->pv_rule = rule; /* a provider no longer configured: defaults */
            pv->pv_lim = rule ? rule->pr_lim : sh->sh_conf->sc_defaults;
            shp_bucket_rate(&pv->pv_msg, &pv->pv_lim.l_total_msg);
            shp_bucket_rate(&pv->pv_cr, &pv->pv_lim.l_total_cr);
            for (int v = 0; v < sh->sh_nvmtas; v++) {
                shp_queue_t *q = &pv->pv_q[v];
                uv_mutex_lock(&q->q_lock);
                q->q_lim = pv->pv_lim;
                shp_adapt_init(q, clock_mono_us()); /* adaptive on or off by the new limits */
                double top = shp_queue_top(q);
                /* normal: the new normal limits; backoff / recovering: the
                 * same level of the new backoff limits */
                shp_queue_set_mult(q, atomic_load(&q->q_mode) == SHP_NORMAL ? top
                                                                            : MIN(q->q_level, top));
                uv_mutex_unlock(&q->q_lock);
            }
        }
    }
    atomic_fetch_add_explicit(&sh->sh_gen, 1, memory_order_release);
}

void shp_registry_adaptive(dlv_shaping_t *sh, bool on)
{
    uv_mutex_lock(&sh->sh_lock);
    bool was = sh->sh_adaptive;
    sh->sh_adaptive = on;
    for (size_t i = 0; was != on && i < sh->sh_reg_cap; i++) {
        for (shp_provider_t *pv = sh->sh_reg[i]; pv; pv = pv->pv_next) {
            for (int v = 0; v < sh->sh_nvmtas; v++) {
                shp_queue_t *q = &pv->pv_q[v];
                uv_mutex_lock(&q->q_lock);
                shp_adapt_init(q, clock_mono_us());
                double top = shp_queue_top(q);
                shp_queue_set_mult(q, atomic_load(&q->q_mode) == SHP_NORMAL ? top
                                                                            : MIN(q->q_level, top));
                uv_mutex_unlock(&q->q_lock);
            }
        }
    }
    uv_mutex_unlock(&sh->sh_lock);
}

/* ------------------------------------------------------------ suspend */

int shp_registry_suspend(dlv_shaping_t *sh, const char *provider, const char *vmta,
                         uint64_t until_us, char *err, size_t errlen)
{
    const char *what = until_us ? "suspend" : "resume";
    char d[160];
    if (until_us == UINT64_MAX)
        snprintf(d, sizeof(d), "%s by the operator until resumed", what);
    else if (until_us != 0)
        snprintf(
            d, sizeof(d), "%s by the operator for %llus", what,
            (unsigned long long)((until_us - MIN(until_us, clock_mono_us()) + 999999) / 1000000));
    else
        snprintf(d, sizeof(d), "resume by the operator");
    if (vmta != NULL) {
        for (int v = 0; v < sh->sh_nvmtas; v++) {
            if (strcasecmp(shp_vmta(sh, v)->vm_name, vmta) == 0) {
                uint64_t was = atomic_load(&sh->sh_vmta_suspend[v]);
                if (until_us == 0 && !shp_op_suspended(was, clock_mono_us())) {
                    /* resume of what is not suspended: refused, as for a domain */
                    snprintf(err, errlen, "virtual MTA \"%s\" is not suspended", vmta);
                    return SL_ENOTFOUND;
                }
                atomic_store(&sh->sh_vmta_suspend[v], until_us);
                log_info("shaping: provider=* vmta=%s event=%s %s", shp_vmta(sh, v)->vm_name,
                         until_us ? "suspend" : "resume", d);
                return 0;
            }
        }
        snprintf(err, errlen, "no virtual MTA named \"%s\"", vmta);
        return SL_ENOTFOUND;
    }
    uv_mutex_lock(&sh->sh_lock);
    shp_provider_t *pv = NULL;
    for (size_t i = 0; pv == NULL && i < sh->sh_reg_cap; i++)
        for (shp_provider_t *p = sh->sh_reg[i]; p && pv == NULL; p = p->pv_next)
            if (strcasecmp(p->pv_name, provider) == 0)
                pv = p;
    if (pv == NULL && until_us != 0) {
        /* not routed yet: a configured provider, or a domain of its own
         * (kept in the registry while suspended) */
        const shp_prule_t *rule = NULL;
        for (int k = 0; k < sh->sh_conf->sc_nprules && rule == NULL; k++)
            if (strcasecmp(sh->sh_conf->sc_prules[k].pr_hosts.pv_name, provider) == 0)
                rule = &sh->sh_conf->sc_prules[k];
        if (rule == NULL && strchr(provider, '.') == NULL) {
            uv_mutex_unlock(&sh->sh_lock);
            snprintf(err, errlen, "no provider named \"%s\" (a configured provider, or a domain)",
                     provider);
            return SL_ENOTFOUND;
        }
        pv = shp_provider_get_locked(sh, rule, provider);
        atomic_fetch_sub(&pv->pv_refs, 1); /* held by the registry, not a destination */
    }
    uint64_t was = pv != NULL ? atomic_load(&pv->pv_op_until) : 0;
    if (pv == NULL || (until_us == 0 && !shp_op_suspended(was, clock_mono_us()))) {
        /* resume of what is not suspended: refused, as for a domain */
        uv_mutex_unlock(&sh->sh_lock);
        snprintf(err, errlen, "provider \"%s\" is not suspended", provider);
        return SL_ENOTFOUND;
    }
    atomic_store(&pv->pv_op_until, until_us);
    uv_mutex_unlock(&sh->sh_lock);
    shp_event(NULL, pv, until_us ? "suspend" : "resume", d, "operator");
    return 0;
}

/* ------------------------------------------------------------ JSON */

/* The forms of docs/records.md: a rate or a limit of 0 means none (null);
 * a monotonic deadline is shown as the wall-clock time it falls at. */
static json_object *shp_json_rate(double per_s)
{
    return per_s > 0 ? json_object_new_double(per_s) : NULL;
}

static json_object *shp_json_limit(int n)
{
    return n > 0 ? json_object_new_int(n) : NULL;
}

/* until_mono (monotonic us) as an RFC 3339 time, or null when it has passed
 * or is "until resumed" (UINT64_MAX). */
static json_object *shp_json_until(uint64_t until_mono, uint64_t now_mono, uint64_t now_wall)
{
    char t[32];
    if (until_mono <= now_mono || until_mono == UINT64_MAX)
        return NULL;
    return json_object_new_string(
        time_fmt_rfc3339(now_wall + (until_mono - now_mono), t, sizeof(t)));
}

static json_object *shp_queue_json(shp_queue_t *q, uint64_t now, uint64_t wall)
{
    dlv_shaping_t *sh = q->q_pv->pv_sh;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "vmta", json_object_new_string(shp_vmta(sh, q->q_vmta)->vm_name));
    const char *src = shp_vmta(sh, q->q_vmta)->vm_source;
    json_object_object_add(o, "source_ip", src ? json_object_new_string(src) : NULL);
    json_object_object_add(o, "mode",
                           json_object_new_string(shp_mode_name(atomic_load(&q->q_mode))));
    json_object_object_add(o, "rate", shp_json_rate(shp_queue_rate(q)));
    json_object_object_add(o, "connections", json_object_new_int(atomic_load(&q->q_nconn)));
    json_object_object_add(o, "max_connections", shp_json_limit(atomic_load(&q->q_max_conn)));
    /* a rule's disable-source on this (provider, vmta) */
    json_object_object_add(o, "disabled_until",
                           shp_json_until(atomic_load(&q->q_disabled_until), now, wall));
    uint64_t vs = atomic_load(&sh->sh_vmta_suspend[q->q_vmta]);
    json_object_object_add(o, "suspended", json_object_new_boolean(shp_op_suspended(vs, now)));
    json_object_object_add(o, "delivered", json_object_new_int64((int64_t)q->q_delivered));
    json_object_object_add(o, "deferred", json_object_new_int64((int64_t)q->q_deferred));
    json_object_object_add(o, "bounced", json_object_new_int64((int64_t)q->q_bounced));
    uv_mutex_lock(&q->q_lock);
    json_object_object_add(o, "backoffs", json_object_new_int64((int64_t)q->q_backoffs));
    json_object_object_add(o, "last_response",
                           q->q_last[0] ? json_object_new_string(q->q_last) : NULL);
    json_object_object_add(o, "adaptive", shp_adapt_json(q));
    uv_mutex_unlock(&q->q_lock);
    return o;
}

json_object *shp_registry_json(dlv_shaping_t *sh)
{
    json_object *root = json_object_new_object();
    json_object *arr = json_object_new_array();
    json_object_object_add(root, "providers", arr);
    if (sh == NULL) {
        json_object_object_add(root, "virtual_mtas", json_object_new_array());
        return root;
    }
    uint64_t now = clock_mono_us(), wall = clock_now_us();
    uint64_t tot[SHP_MAX_VMTAS][3]; /* per vmta, every provider since start */
    uv_mutex_lock(&sh->sh_lock);
    for (int v = 0; v < sh->sh_nvmtas; v++)
        for (int k = 0; k < 3; k++)
            tot[v][k] = atomic_load(&sh->sh_gone[v][k]);
    for (size_t i = 0; i < sh->sh_reg_cap; i++) {
        for (shp_provider_t *pv = sh->sh_reg[i]; pv; pv = pv->pv_next) {
            json_object *p = json_object_new_object();
            json_object_object_add(p, "provider", json_object_new_string(pv->pv_name));
            json_object_object_add(p, "configured", json_object_new_boolean(pv->pv_rule != NULL));
            json_object_object_add(p, "destinations", json_object_new_int(pv->pv_refs));
            json_object_object_add(p, "connections", json_object_new_int(pv->pv_nconn));
            uint64_t su = atomic_load(&pv->pv_suspend_until);
            uint64_t op = atomic_load(&pv->pv_op_until);
            /* the operator's suspension wins over a rule's: it is the one
             * `resume --provider` ends */
            bool by_op = shp_op_suspended(op, now), by_rule = su > now;
            json_object_object_add(p, "suspended", json_object_new_boolean(by_op || by_rule));
            json_object_object_add(p, "suspended_by",
                                   by_op     ? json_object_new_string("operator")
                                   : by_rule ? json_object_new_string("rule")
                                             : NULL);
            /* null: not suspended, or until resumed */
            json_object_object_add(p, "suspended_until",
                                   by_op     ? shp_json_until(op, now, wall)
                                   : by_rule ? shp_json_until(su, now, wall)
                                             : NULL);
            json_object *qs = json_object_new_array();
            for (int v = 0; v < sh->sh_nvmtas; v++) {
                json_object *q = shp_queue_json(&pv->pv_q[v], now, wall);
                /* the totals from the very values shown, so that a reader
                 * subtracting the providers' from them never sees < 0 */
                tot[v][0] +=
                    (uint64_t)json_object_get_int64(json_object_object_get(q, "delivered"));
                tot[v][1] += (uint64_t)json_object_get_int64(json_object_object_get(q, "deferred"));
                tot[v][2] += (uint64_t)json_object_get_int64(json_object_object_get(q, "bounced"));
                json_object_array_add(qs, q);
            }
            json_object_object_add(p, "queues", qs);
            json_object_array_add(arr, p);
        }
    }
    uv_mutex_unlock(&sh->sh_lock);
    json_object *vm = json_object_new_array();
    for (int v = 0; v < sh->sh_nvmtas; v++) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "name", json_object_new_string(shp_vmta(sh, v)->vm_name));
        const char *src = shp_vmta(sh, v)->vm_source;
        json_object_object_add(o, "source_ip", src ? json_object_new_string(src) : NULL);
        const char *ehlo = shp_vmta(sh, v)->vm_ehlo;
        json_object_object_add(o, "ehlo", ehlo ? json_object_new_string(ehlo) : NULL);
        uint64_t op = atomic_load(&sh->sh_vmta_suspend[v]);
        json_object_object_add(o, "suspended", json_object_new_boolean(shp_op_suspended(op, now)));
        json_object_object_add(o, "suspended_until", shp_json_until(op, now, wall));
        json_object_object_add(o, "delivered", json_object_new_int64((int64_t)tot[v][0]));
        json_object_object_add(o, "deferred", json_object_new_int64((int64_t)tot[v][1]));
        json_object_object_add(o, "bounced", json_object_new_int64((int64_t)tot[v][2]));
        json_object_array_add(vm, o);
    }
    json_object_object_add(root, "virtual_mtas", vm);
    return root;
}

static void shp_provider_free(shp_provider_t *pv)
{
    for (int i = 0; i < pv->pv_sh->sh_nvmtas; i++) {
        uv_mutex_destroy(&pv->pv_q[i].q_lock);
        free(pv->pv_q[i].q_hits);
        free(pv->pv_q[i].q_hitpos);
    }
    free(pv->pv_q);
    free(pv->pv_name);
    free(pv);
}

/* ------------------------------------------------------------ the registry */

/* The global { } limits of a rule set: a key it does not set has no limit. */
static void shp_registry_global(dlv_shaping_t *sh, const shp_limits_t *g)
{
    atomic_store(&sh->sh_global_conn, (g->l_set & L_MAX_CONN) ? g->l_max_conn : 0);
    if (g->l_set & L_MSG_RATE)
        shp_bucket_rate(&sh->sh_global_msg, &g->l_msg_rate);
    else
        shp_bucket_set(&sh->sh_global_msg, 0, 1);
    if (g->l_set & L_CONN_RATE)
        shp_bucket_rate(&sh->sh_global_cr, &g->l_conn_rate);
    else
        shp_bucket_set(&sh->sh_global_cr, 0, 1);
}

dlv_shaping_t *dlv_shaping_new(shp_conf_t *c, queue_t *q)
{
    dlv_shaping_t *sh = xcalloc(1, sizeof(*sh));
    sh->sh_queue = q;
    uv_mutex_init(&sh->sh_lock);
    sh->sh_reg_cap = 256;
    sh->sh_reg = xcalloc(sh->sh_reg_cap, sizeof(*sh->sh_reg));
    sh->sh_vm = c;
    sh->sh_nvmtas = c->sc_nvmtas;
    sh->sh_conf = c;
    sh->sh_confs = c;
    shp_registry_global(sh, &c->sc_global);
    return sh;
}

int shp_verp(const dlv_shaping_t *sh, int v, int pool)
{
    const shp_conf_t *c = sh->sh_vm;
    if (v >= 0 && v < c->sc_nvmtas && c->sc_vmtas[v].vm_verp != 0)
        return c->sc_vmtas[v].vm_verp;
    return pool >= 0 && pool < c->sc_npools ? c->sc_pools[pool].po_verp : 0;
}

void dlv_shaping_free(dlv_shaping_t *sh)
{
    if (sh == NULL)
        return;
    shp_adapt_close(sh); /* the learned values, kept for the next start */
    for (size_t i = 0; i < sh->sh_reg_cap; i++) {
        while (sh->sh_reg[i] != NULL) {
            shp_provider_t *pv = sh->sh_reg[i];
            sh->sh_reg[i] = pv->pv_next;
            shp_provider_free(pv);
        }
    }
    free(sh->sh_reg);
    uv_mutex_destroy(&sh->sh_lock);
    while (sh->sh_confs != NULL) {
        shp_conf_t *c = sh->sh_confs;
        sh->sh_confs = c->sc_next;
        shp_conf_free(c);
    }
    free(sh);
}

bool shp_registry_install(dlv_shaping_t *sh, shp_conf_t *c, const char *from)
{
    bool same = shp_conf_vmtas_same(sh->sh_vm, c);
    uv_mutex_lock(&sh->sh_lock);
    shp_install_locked(sh, c);
    uv_mutex_unlock(&sh->sh_lock);
    log_info("shaping: reloaded: %d provider rule(s)%s%s%s", c->sc_nprules,
             from && from[0] ? " from " : "", from && from[0] ? from : "",
             same ? "" : " (virtual_mtas/pools changed: kept until a restart)");
    return !same;
}

/* ------------------------------------------------------------ cluster hooks */

/* The cluster's learned values of an adaptive queue in force here
 * (cluster_adapt.c, on the cluster thread). */
static void shp_adapt_cl_apply(void *arg, const cl_adapt_vals_t *v, const char *node)
{
    shp_queue_t *q = arg;
    shp_adapt_change_t ch;
    char why[160];
    snprintf(why, sizeof(why), "cluster: node %s", node ? node : "(read from redis)");
    if (shp_adapt_cl_set(q, v, node, clock_mono_us(), &ch))
        shp_adapt_changed(q, &ch, why);
}

static const cl_adapt_ops_t shp_adapt_cl_ops = {shp_adapt_cl_get, shp_adapt_cl_apply,
                                                shp_adapt_cl_step};

/* A provider with shared = true gets the cluster's leases for the limits
 * it sets (docs/cluster.md): its queues' message_rate and max_connections
 * (per provider and virtual MTA name), its total_message_rate and
 * total_max_connections. An adaptive queue's learned rate and connections
 * are such limits, and its learned values are the cluster's. Decided when
 * the provider is first seen. */
static void shp_cluster_attach(dlv_shaping_t *sh, shp_provider_t *pv)
{
    if (sh->sh_cluster == NULL || pv->pv_rule == NULL || !pv->pv_rule->pr_shared)
        return;
    const shp_limits_t *l = &pv->pv_lim;
    char name[300];
    if (l->l_total_msg.r_n > 0)
        pv->pv_cl_msg = cl_lim_get(sh->sh_cluster, CL_RATE, pv->pv_name);
    if (l->l_total_conn > 0)
        pv->pv_cl_conn = cl_lim_get(sh->sh_cluster, CL_CONN, pv->pv_name);
    for (int i = 0; i < sh->sh_nvmtas; i++) {
        snprintf(name, sizeof(name), "%s/%s", pv->pv_name, shp_vmta(sh, i)->vm_name);
        shp_queue_t *q = &pv->pv_q[i];
        bool adapt = atomic_load(&q->q_ad.a_on);
        if (l->l_msg_rate.r_n > 0 || l->l_bo_msg.r_n > 0 || adapt)
            q->q_cl_msg = cl_lim_get(sh->sh_cluster, CL_RATE, name);
        if (l->l_max_conn > 0 || l->l_bo_max_conn > 0 || adapt)
            q->q_cl_conn = cl_lim_get(sh->sh_cluster, CL_CONN, name);
        if (adapt)
            q->q_cl_adapt = cl_adapt_get(sh->sh_cluster, name, q->q_cl_conn, &shp_adapt_cl_ops, q);
    }
}

void shp_cluster_global(dlv_shaping_t *sh)
{
    const shp_conf_t *c = sh->sh_conf;
    if (sh->sh_cluster == NULL || !c->sc_global_shared)
        return;
    if ((c->sc_global.l_set & L_MSG_RATE) && c->sc_global.l_msg_rate.r_n > 0)
        sh->sh_cl_msg = cl_lim_get(sh->sh_cluster, CL_RATE, "*");
    if ((c->sc_global.l_set & L_MAX_CONN) && c->sc_global.l_max_conn > 0)
        sh->sh_cl_conn = cl_lim_get(sh->sh_cluster, CL_CONN, "*");
}

/* A state change of a shared provider, for the other nodes; not one that
 * came from them ("cluster: ..."), nor a disabled source (an address is
 * one node's own), nor adaptive mode's (its values go through Redis:
 * cluster_adapt.c). */
static void shp_cluster_note(shp_queue_t *q, shp_provider_t *pv, const char *event, const char *why)
{
    dlv_shaping_t *sh = pv->pv_sh;
    if (sh->sh_cluster == NULL || pv->pv_rule == NULL || !pv->pv_rule->pr_shared ||
        strcmp(event, "disable-source") == 0 || strcmp(event, "adapt") == 0 ||
        (why && strncmp(why, "cluster: ", 9) == 0))
        return;
    uint64_t now = clock_mono_us(), for_us = 0;
    double level = 1.0;
    bool op = why != NULL && strcmp(why, "operator") == 0;
    if (q != NULL) {
        uv_mutex_lock(&q->q_lock);
        level = q->q_level;
        uv_mutex_unlock(&q->q_lock);
    } else if (strcmp(event, "suspend") == 0) {
        uint64_t until = op ? atomic_load(&pv->pv_op_until) : atomic_load(&pv->pv_suspend_until);
        for_us = until == UINT64_MAX ? 0 : until - MIN(until, now);
    }
    cl_publish(sh->sh_cluster, pv->pv_name, q ? shp_vmta(sh, q->q_vmta)->vm_name : NULL, event,
               level, for_us, op);
}

int shp_registry_apply(dlv_shaping_t *sh, const char *provider, const char *vmta, const char *event,
                       double level, uint64_t for_us, bool by_operator, const char *why)
{
    uv_mutex_lock(&sh->sh_lock);
    shp_provider_t *pv = NULL;
    for (size_t i = 0; pv == NULL && i < sh->sh_reg_cap; i++)
        for (shp_provider_t *p = sh->sh_reg[i]; p && pv == NULL; p = p->pv_next)
            if (p->pv_rule != NULL && strcasecmp(p->pv_name, provider) == 0)
                pv = p;
    if (pv == NULL) { /* not routed here yet: a configured provider starts in that state */
        const shp_prule_t *rule = NULL;
        for (int k = 0; k < sh->sh_conf->sc_nprules && rule == NULL; k++)
            if (strcasecmp(sh->sh_conf->sc_prules[k].pr_hosts.pv_name, provider) == 0)
                rule = &sh->sh_conf->sc_prules[k];
        if (rule == NULL || !rule->pr_shared) {
            uv_mutex_unlock(&sh->sh_lock);
            return SL_ENOTFOUND;
        }
        pv = shp_provider_get_locked(sh, rule, provider);
    } else {
        atomic_fetch_add(&pv->pv_refs, 1);
    }
    uv_mutex_unlock(&sh->sh_lock);
    int v = -1;
    for (int i = 0; vmta != NULL && i < sh->sh_nvmtas; i++)
        if (strcasecmp(shp_vmta(sh, i)->vm_name, vmta) == 0)
            v = i;
    uint64_t now = clock_mono_us();
    int rc = 0;
    char d[160];
    if (v >= 0 && strcmp(event, "backoff") == 0) {
        shp_queue_backoff(&pv->pv_q[v], why, now);
    } else if (v >= 0 && strcmp(event, "normal") == 0) {
        shp_queue_normal(&pv->pv_q[v], why, now);
    } else if (v >= 0 && strcmp(event, "recover-step") == 0) {
        shp_queue_t *q = &pv->pv_q[v];
        uv_mutex_lock(&q->q_lock);
        shp_queue_change(q, SHP_RECOVERING, MAX(1.0, level), "recover-step", why, now);
    } else if (strcmp(event, "suspend") == 0) {
        uint64_t until = for_us == 0 ? UINT64_MAX : now + for_us;
        atomic_store(by_operator ? &pv->pv_op_until : &pv->pv_suspend_until, until);
        snprintf(d, sizeof(d), "suspend by %s on another node%s",
                 by_operator ? "the operator" : "a rule", for_us == 0 ? " until resumed" : "");
        shp_event(NULL, pv, "suspend", d, why);
    } else if (strcmp(event, "resume") == 0) {
        atomic_store(&pv->pv_op_until, 0);
        shp_event(NULL, pv, "resume", "resume by the operator on another node", why);
    } else {
        rc = SL_ENOTFOUND;
    }
    shp_provider_put(pv);
    return rc;
}
