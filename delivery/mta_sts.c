/*
 * mta_sts.c - SMTP MTA Strict Transport Security (RFC 8461) for
 * destinations delivered by MX: the policy cache and the gate in front of
 * a destination.
 *
 * When dest.c resolves a route by MX it calls dlv_sts_route_start(): a
 * TXT lookup of _mta-sts.<domain> runs beside the MX lookup. A valid
 * record (exactly one "v=STSv1; id=..." record) whose id differs from the
 * cached policy's, or whose cached policy has expired, starts a fetch
 * (sts_fetch.c: HTTPS on the thread's loop). Until the lookup and the
 * fetch end the destination holds its recipients (dlv_sts_gate says
 * hold), and is kicked through the function it gave when they end. A
 * failed fetch, a missing record or a DNS failure keeps a cached policy
 * that has not expired (RFC 8461 5.1); without one the domain is
 * delivered as if it had no policy.
 *
 * dlv_sts_gate() applies the policy once per resolved route: enforce keeps
 * only the MX hosts that match a pattern (none: the gate says defer, and
 * the destination defers its recipients 4.7.5) and turns the
 * destination's TLS policy into "verify" (session.c then requires STARTTLS
 * and checks the certificate against the MX host name); testing only logs
 * what enforce would have refused; none is no policy. An explicit
 * tls_policy { } entry for the domain wins: no lookup at all.
 *
 * The parsers are sts_parse.c's (pure, fuzzed); this file calls nothing of
 * the destination but the kick function it is given.
 *
 * Thread: everything belongs to one delivery thread: its cache (t_sts, a
 * hash table by domain; domains are sharded to threads, so no locks), its
 * destinations' states (de_sts) and its fetches.
 */
#include "delivery/delivery_int.h"
#include "delivery/mta_sts_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define STS_CACHE_MAX 65536  /* policies cached per delivery thread */
#define STS_FAIL_HOLDOFF 300 /* s: no new fetch for an id whose fetch failed */

typedef struct sts_entry sts_entry_t;
typedef struct sts_txtq sts_txtq_t;

/* Where a destination is in its policy discovery: IDLE (nothing looked
 * up yet, or cancelled at stop), OFF (MTA-STS does not apply: static
 * route, tls_policy entry, feature off), TXT (the _mta-sts lookup), FETCH
 * (waiting for the HTTPS fetch), READY (the policy in force is known). */
typedef enum { SD_IDLE = 0, SD_OFF, SD_TXT, SD_FETCH, SD_READY } sts_dstate_t;

static const char *const sts_dstate_names[] = {"IDLE", "OFF", "TXT", "FETCH", "READY"};

/* One domain's cached policy (the thread's cache). */
struct sts_entry {
    sts_entry_t *e_next;
    dlv_thread_t *e_t;
    char *e_domain;
    char e_id[STS_ID_MAX + 1]; /* id of e_pol */
    sts_policy_t *e_pol;       /* NULL: none cached */
    uint64_t e_fetched;        /* unix s */
    uint64_t e_expires;        /* monotonic us: fetched + max_age */
    sts_fetch_t *e_fetch;      /* in flight */
    char e_fetch_id[STS_ID_MAX + 1];
    char e_fail_id[STS_ID_MAX + 1]; /* the id whose fetch failed last */
    uint64_t e_fail_until;          /* monotonic us: until then, no new fetch for it */
    dlv_sts_dest_t *e_waiter;       /* the destination held for the fetch */
};

struct dlv_sts_cache {
    sts_entry_t **sc_tab;
    size_t sc_cap; /* power of two */
    size_t sc_n;
};

/* A destination's MTA-STS state (de_sts). */
struct dlv_sts_dest {
    dlv_dest_t *sd_de;
    void (*sd_kick)(dlv_dest_t *de); /* the destination's: the policy in force is known */
    sts_dstate_t sd_state;
    bool sd_applied;                    /* the policy was applied to the current route */
    bool sd_nomatch;                    /* enforce and no MX host of the route matches */
    sts_mode_t sd_mode;                 /* applied to the current route */
    sts_policy_t *sd_pol;               /* in force (NULL: none); a reference */
    char sd_id[STS_ID_MAX + 1];         /* id of sd_pol */
    char sd_applied_id[STS_ID_MAX + 1]; /* id of the policy last applied */
    uint64_t sd_epoch;                  /* monotonic us of the last change of policy */
    uint64_t sd_txt_until;              /* monotonic us: the last TXT answer holds till then */
    sts_txtq_t *sd_txtq;                /* TXT lookup in flight */
    sts_entry_t *sd_entry;              /* waiting for this entry's fetch */
    char sd_why[512];                   /* sd_nomatch: the deferral text */
};

/* A TXT lookup in flight: detached (q_sd = NULL) if the destination goes. */
struct sts_txtq {
    dlv_sts_dest_t *q_sd;
};

static void sts_dest_enter_state(dlv_sts_dest_t *sd, sts_dstate_t st);
static void sts_txt_cb(void *arg, dns_status_t st, const char *const *txt, int n, uint32_t ttl);
static void sts_resolve(dlv_sts_dest_t *sd, sts_policy_t *pol, const char *id);
static void sts_apply(dlv_dest_t *de);
static sts_entry_t *sts_cache_find(dlv_thread_t *t, const char *domain);
static sts_entry_t *sts_cache_get(dlv_thread_t *t, const char *domain);
static sts_policy_t *sts_entry_live(sts_entry_t *e);
static void sts_fetch_done(void *arg, sts_policy_t *pol, const char *why);

/* ================================================================ cache */

static uint64_t sts_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)tolower((unsigned char)*s);
        h *= 1099511628211ULL;
    }
    return h;
}

static sts_entry_t *sts_cache_find(dlv_thread_t *t, const char *domain)
{
    dlv_sts_cache_t *c = t->t_sts;
    if (c == NULL)
        return NULL;
    for (sts_entry_t *e = c->sc_tab[sts_hash(domain) & (c->sc_cap - 1)]; e; e = e->e_next)
        if (strcasecmp(e->e_domain, domain) == 0)
            return e;
    return NULL;
}

static void sts_entry_free(sts_entry_t *e)
{
    sts_policy_unref(e->e_pol);
    free(e->e_domain);
    free(e);
}

/* Make room for one more entry: drop expired policies, then (a full cache
 * of live ones) any entry nothing waits for. */
static void sts_cache_evict(dlv_sts_cache_t *c)
{
    uint64_t now = clock_mono_us();
    for (int pass = 0; pass < 2 && c->sc_n >= STS_CACHE_MAX; pass++) {
        for (size_t b = 0; b < c->sc_cap && c->sc_n >= STS_CACHE_MAX; b++) {
            sts_entry_t **pp = &c->sc_tab[b];
            while (*pp != NULL) {
                sts_entry_t *e = *pp;
                bool busy = e->e_fetch != NULL || e->e_waiter != NULL;
                if (!busy && (pass == 1 || e->e_pol == NULL || e->e_expires <= now)) {
                    *pp = e->e_next;
                    c->sc_n--;
                    sts_entry_free(e);
                    continue;
                }
                pp = &e->e_next;
            }
        }
    }
}

static sts_entry_t *sts_cache_get(dlv_thread_t *t, const char *domain)
{
    sts_entry_t *e = sts_cache_find(t, domain);
    if (e != NULL)
        return e;
    dlv_sts_cache_t *c = t->t_sts;
    if (c == NULL) {
        c = t->t_sts = xcalloc(1, sizeof(*c));
        c->sc_cap = 256;
        c->sc_tab = xcalloc(c->sc_cap, sizeof(*c->sc_tab));
    }
    if (c->sc_n >= STS_CACHE_MAX)
        sts_cache_evict(c);
    if (c->sc_n >= c->sc_cap && c->sc_cap < STS_CACHE_MAX) { /* grow: rehash */
        size_t cap = c->sc_cap * 2;
        sts_entry_t **nt = xcalloc(cap, sizeof(*nt));
        for (size_t i = 0; i < c->sc_cap; i++) {
            while (c->sc_tab[i] != NULL) {
                sts_entry_t *x = c->sc_tab[i];
                c->sc_tab[i] = x->e_next;
                size_t nb = sts_hash(x->e_domain) & (cap - 1);
                x->e_next = nt[nb];
                nt[nb] = x;
            }
        }
        free(c->sc_tab);
        c->sc_tab = nt;
        c->sc_cap = cap;
    }
    e = xcalloc(1, sizeof(*e));
    e->e_t = t;
    e->e_domain = xstrdup(domain);
    size_t b = sts_hash(domain) & (c->sc_cap - 1);
    e->e_next = c->sc_tab[b];
    c->sc_tab[b] = e;
    c->sc_n++;
    return e;
}

/* The entry's policy if it has one that has not expired, else NULL. */
static sts_policy_t *sts_entry_live(sts_entry_t *e)
{
    if (e == NULL || e->e_pol == NULL || e->e_expires <= clock_mono_us())
        return NULL;
    return e->e_pol;
}

void dlv_sts_thread_stop(dlv_thread_t *t)
{
    DLV_ASSERT_ON_LOOP(t);
    dlv_sts_cache_t *c = t->t_sts;
    for (size_t b = 0; c != NULL && b < c->sc_cap; b++) {
        for (sts_entry_t *e = c->sc_tab[b]; e; e = e->e_next) {
            if (e->e_fetch != NULL) { /* nobody waits any more: not reported */
                sts_fetch_cancel(e->e_fetch);
                e->e_fetch = NULL;
            }
        }
    }
    sts_fetch_thread_stop(t);
}

void dlv_sts_thread_free(dlv_thread_t *t)
{
    dlv_sts_cache_t *c = t->t_sts;
    if (c == NULL)
        return;
    for (size_t b = 0; b < c->sc_cap; b++) {
        while (c->sc_tab[b] != NULL) {
            sts_entry_t *e = c->sc_tab[b];
            c->sc_tab[b] = e->e_next;
            sts_entry_free(e);
        }
    }
    free(c->sc_tab);
    free(c);
    t->t_sts = NULL;
}

/* ================================================================ destinations */

static void sts_dest_enter_state(dlv_sts_dest_t *sd, sts_dstate_t st)
{
    log_debug("delivery: %s: MTA-STS %s -> %s", sd->sd_de->de_domain,
              sts_dstate_names[sd->sd_state], sts_dstate_names[st]);
    sd->sd_state = st;
}

void dlv_sts_route_start(dlv_dest_t *de, void (*kick)(dlv_dest_t *de))
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    dlv_thread_t *t = de->de_t;
    const cfg_t *cfg = t->t_cfg;
    dlv_sts_dest_t *sd = de->de_sts;
    const char *dom = de->de_domain;
    size_t dl = strlen(dom);
    if (dl > 0 && dom[dl - 1] == '.')
        dl--;
    /* an explicit tls_policy entry wins over MTA-STS; an address literal
     * or an overlong name has no policy host */
    if (!cfg->c_dlv_mta_sts || cfg_tls_policy_explicit(cfg, dom) || dl == 0 || dl > 230 ||
        dom[0] == '[') {
        if (sd != NULL && sd->sd_state != SD_TXT && sd->sd_state != SD_FETCH) {
            sts_dest_enter_state(sd, SD_OFF);
            sd->sd_mode = STS_MODE_NONE;
            de->de_policy = cfg_tls_policy_for(cfg, dom);
        }
        return;
    }
    if (sd == NULL) {
        sd = de->de_sts = xcalloc(1, sizeof(*sd));
        sd->sd_de = de;
    }
    sd->sd_kick = kick;
    sd->sd_applied = false; /* the new route gets the policy applied */
    if (sd->sd_state == SD_TXT || sd->sd_state == SD_FETCH)
        return; /* already on its way: it kicks de when it ends */
    if (sd->sd_state == SD_READY && clock_mono_us() < sd->sd_txt_until)
        return; /* the last TXT answer (or failure) still holds */
    sts_dest_enter_state(sd, SD_TXT);
    sts_txtq_t *q = xcalloc(1, sizeof(*q));
    q->q_sd = sd;
    sd->sd_txtq = q;
    char name[300];
    snprintf(name, sizeof(name), "_mta-sts.%.*s", (int)dl, dom);
    atomic_fetch_add_explicit(&t->t_d->d_stats.ds_dns_lookups, 1, memory_order_relaxed);
    dns_query_txt(t->t_dns, name, sts_txt_cb, q);
}

/* The TXT answer decides: cached policy, a fetch, or none (RFC 8461 5.1). */
static void sts_txt_cb(void *arg, dns_status_t st, const char *const *txt, int n, uint32_t ttl)
{
    sts_txtq_t *q = arg;
    dlv_sts_dest_t *sd = q->q_sd;
    free(q);
    if (sd == NULL)
        return; /* the destination is gone */
    sd->sd_txtq = NULL;
    dlv_dest_t *de = sd->sd_de;
    dlv_thread_t *t = de->de_t;
    if (st == DNS_CANCELLED || t->t_stopping) {
        sts_dest_enter_state(sd, SD_IDLE);
        return;
    }
    /* the answer holds for its TTL (at least 1 s, at most dns_cache_max_ttl);
     * a failure for a minute: a resolver that drops TXT queries must not
     * hold the destination at every route refresh */
    uint64_t hold = st == DNS_TEMPFAIL ? 60 : MAX(ttl, 1);
    hold = MIN(hold, MAX(t->t_cfg->c_dlv_dns_cache_max, 1));
    sd->sd_txt_until = clock_mono_us() + hold * 1000000ULL;
    sts_entry_t *e = sts_cache_find(t, de->de_domain);
    sts_policy_t *live = sts_entry_live(e);
    char id[STS_ID_MAX + 1] = "", why[160] = "";
    int rc = st == DNS_OK ? sts_txt_select(txt, n, id, why, sizeof(why)) : 0;
    if (rc == 1) {
        if (live != NULL && strcmp(e->e_id, id) == 0) {
            sts_resolve(sd, live, e->e_id); /* the cached policy is current */
            return;
        }
        if (e != NULL && e->e_fail_until > clock_mono_us() && strcmp(e->e_fail_id, id) == 0) {
            /* its fetch failed a moment ago: not again at every route
             * refresh (each would hold the destination) */
            log_debug("delivery: %s: MTA-STS id=%s: last fetch failed, not retried yet",
                      de->de_domain, id);
            sts_resolve(sd, live, live ? e->e_id : "");
            return;
        }
        e = sts_cache_get(t, de->de_domain);
        sts_dest_enter_state(sd, SD_FETCH);
        sd->sd_entry = e;
        e->e_waiter = sd;
        if (e->e_fetch == NULL || strcmp(e->e_fetch_id, id) != 0) {
            if (e->e_fetch != NULL) /* an older id's fetch: its answer is stale */
                sts_fetch_cancel(e->e_fetch);
            snprintf(e->e_fetch_id, sizeof(e->e_fetch_id), "%s", id);
            log_debug("delivery: %s: MTA-STS id=%s: fetching the policy", e->e_domain, id);
            e->e_fetch = sts_fetch_start(t, e->e_domain, sts_fetch_done, e);
        }
        return;
    }
    if (st == DNS_OK && why[0] && strcmp(why, "no v=STSv1 record") != 0)
        log_info("delivery: %s: MTA-STS record ignored: %s", de->de_domain, why);
    if (live != NULL) {
        /* no live record (removed, invalid, DNS failure): a cached policy
         * that has not expired still applies (RFC 8461 5.1) */
        log_info("delivery: %s: MTA-STS: %s; using the cached policy id=%s (fetched %llus ago)",
                 de->de_domain, st == DNS_OK ? why : dns_status_str(st), e->e_id,
                 (unsigned long long)(clock_now_s() - MIN(e->e_fetched, clock_now_s())));
        sts_resolve(sd, live, e->e_id);
        return;
    }
    if (st == DNS_TEMPFAIL)
        log_info("delivery: %s: MTA-STS TXT lookup failed (%s): delivering without a policy",
                 de->de_domain, dns_status_str(st));
    sts_resolve(sd, NULL, "");
}

/* The policy in force for de's next route is known: apply it at the next
 * kick. */
static void sts_resolve(dlv_sts_dest_t *sd, sts_policy_t *pol, const char *id)
{
    if (pol != NULL) { /* not used past its max_age without a new TXT lookup */
        sts_entry_t *e = sts_cache_find(sd->sd_de->de_t, sd->sd_de->de_domain);
        uint64_t exp = e != NULL && e->e_pol == pol ? e->e_expires : 0;
        sd->sd_txt_until = MIN(sd->sd_txt_until, exp);
    }
    sts_policy_ref(pol);
    sts_policy_unref(sd->sd_pol);
    sd->sd_pol = pol;
    snprintf(sd->sd_id, sizeof(sd->sd_id), "%s", id);
    sts_dest_enter_state(sd, SD_READY);
    sd->sd_applied = false;
    sd->sd_entry = NULL;
    sd->sd_kick(sd->sd_de);
}

dlv_sts_gate_t dlv_sts_gate(dlv_dest_t *de, const char **why)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    dlv_sts_dest_t *sd = de->de_sts;
    if (sd == NULL || sd->sd_state == SD_OFF)
        return DLV_STS_GO;
    if (sd->sd_state != SD_READY)
        return DLV_STS_HOLD; /* the lookup kicks de when it ends */
    if (!sd->sd_applied)
        sts_apply(de);
    if (sd->sd_nomatch) {
        *why = sd->sd_why;
        return DLV_STS_DEFER;
    }
    return DLV_STS_GO;
}

/* host is an item of the ", "-separated list in b (not NUL-terminated). */
static bool sts_list_has(const buf_t *b, const char *host)
{
    size_t hl = strlen(host), i = 0;
    while (i < b->b_len) {
        const char *item = b->b_data + i;
        const char *sep = memchr(item, ',', b->b_len - i);
        size_t il = sep ? (size_t)(sep - item) : b->b_len - i;
        if (il == hl && strncasecmp(item, host, hl) == 0)
            return true;
        i += il + 2; /* ", " */
    }
    return false;
}

/* Apply the policy in force to the route just resolved. */
static void sts_apply(dlv_dest_t *de)
{
    dlv_sts_dest_t *sd = de->de_sts;
    const cfg_t *cfg = de->de_t->t_cfg;
    sts_policy_t *p = sd->sd_pol;
    sts_mode_t mode = p ? p->sp_mode : STS_MODE_NONE;
    sd->sd_applied = true;
    sd->sd_nomatch = false;
    /* sessions of another policy QUIT (dlv_sts_session_stale) */
    if (mode != sd->sd_mode || strcmp(sd->sd_id, sd->sd_applied_id) != 0)
        sd->sd_epoch = clock_mono_us();
    sd->sd_mode = mode;
    memcpy(sd->sd_applied_id, sd->sd_id, sizeof(sd->sd_id));
    int want = mode == STS_MODE_ENFORCE ? CFG_TLS_VERIFY : cfg_tls_policy_for(cfg, de->de_domain);
    if (want != de->de_policy) {
        de->de_policy = want;
        /* a session resumed from an unverified handshake would skip the
         * certificate check */
        dlv_dest_tls_drop(de);
        sd->sd_epoch = clock_mono_us();
    }
    if (mode == STS_MODE_NONE)
        return;
    int match = 0, total = de->de_naddr;
    buf_t bad;
    buf_init(&bad, 128);
    for (int i = 0; i < de->de_naddr; i++) {
        const char *h = de->de_addrs[i].da_host;
        if (sts_policy_mx_match(p, h))
            match++;
        else if (!sts_list_has(&bad, h) && bad.b_len < 300) /* each host once */
            buf_printf(&bad, "%s%s", bad.b_len ? ", " : "", h);
    }
    buf_append(&bad, "", 1);
    if (mode == STS_MODE_ENFORCE && match > 0 && match < total) {
        /* only the matching hosts, in MX order (RFC 8461 4.1) */
        int kept = 0;
        for (int i = 0; i < de->de_naddr; i++) {
            dlv_addr_t *a = &de->de_addrs[i];
            if (sts_policy_mx_match(p, a->da_host))
                de->de_addrs[kept++] = *a;
            else {
                free(a->da_host);
                dlv_dane_unref(a->da_dane);
            }
        }
        de->de_naddr = kept;
    }
    if (mode == STS_MODE_ENFORCE) {
        /* none matches: the addresses stay (sessions of the previous
         * route may still reconnect) but the gate defers everything */
        if (match == 0) {
            sd->sd_nomatch = true;
            snprintf(sd->sd_why, sizeof(sd->sd_why),
                     "MTA-STS: no MX host matches the policy of %s (MX: %s)", de->de_domain,
                     bad.b_data);
            log_warn("delivery: %s: MTA-STS enforce id=%s: no MX host matches the policy (MX: %s)",
                     de->de_domain, sd->sd_id, bad.b_data);
        } else if (bad.b_data[0]) {
            log_info("delivery: %s: MTA-STS enforce id=%s: skipping MX %s (not in the policy)",
                     de->de_domain, sd->sd_id, bad.b_data);
        }
    } else if (bad.b_data[0]) {
        log_warn("delivery: %s: MTA-STS testing id=%s: MX %s not in the policy (enforce mode "
                 "would %s)",
                 de->de_domain, sd->sd_id, bad.b_data,
                 match == 0 ? "defer: no MX host matches" : "skip it");
    }
    log_debug("delivery: %s: MTA-STS mode=%s id=%s: %d of %d addresses kept", de->de_domain,
              sts_mode_name(mode), sd->sd_id, de->de_naddr, total);
    buf_free(&bad);
}

void dlv_sts_dest_free(dlv_dest_t *de)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    dlv_sts_dest_t *sd = de->de_sts;
    if (sd == NULL)
        return;
    if (sd->sd_txtq != NULL)
        sd->sd_txtq->q_sd = NULL; /* its answer goes nowhere */
    if (sd->sd_entry != NULL && sd->sd_entry->e_waiter == sd)
        sd->sd_entry->e_waiter = NULL; /* the fetch still fills the cache */
    sts_policy_unref(sd->sd_pol);
    free(sd);
    de->de_sts = NULL;
}

const char *dlv_sts_mode(const dlv_dest_t *de)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    const dlv_sts_dest_t *sd = de->de_sts;
    if (sd == NULL || sd->sd_state == SD_OFF || sd->sd_mode == STS_MODE_NONE)
        return NULL;
    return sts_mode_name(sd->sd_mode);
}

bool dlv_sts_enforced(const dlv_dest_t *de)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    const dlv_sts_dest_t *sd = de->de_sts;
    return sd != NULL && sd->sd_state != SD_OFF && sd->sd_mode == STS_MODE_ENFORCE &&
           de->de_policy == CFG_TLS_VERIFY;
}

void dlv_sts_testing_failure(const dlv_dest_t *de, const char *host, const char *what)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    const dlv_sts_dest_t *sd = de->de_sts;
    if (sd == NULL || sd->sd_state == SD_OFF || sd->sd_mode != STS_MODE_TESTING)
        return;
    log_warn("delivery: %s: MTA-STS testing id=%s: %s: %s (enforce mode would defer)",
             de->de_domain, sd->sd_id, host, what);
}

bool dlv_sts_session_stale(const dlv_dest_t *de, uint64_t born)
{
    DLV_ASSERT_ON_LOOP(de->de_t);
    const dlv_sts_dest_t *sd = de->de_sts;
    return sd != NULL && born < sd->sd_epoch;
}

/* A fetch started for entry e is over: the cache keeps the policy (or
 * remembers the failure for STS_FAIL_HOLDOFF) and the destination that
 * waited for it goes on (RFC 8461 5.1: a failed fetch keeps a cached policy
 * that has not expired). */
static void sts_fetch_done(void *arg, sts_policy_t *pol, const char *why)
{
    sts_entry_t *e = arg;
    e->e_fetch = NULL;
    dlv_thread_t *t = e->e_t;
    if (pol != NULL) {
        sts_policy_unref(e->e_pol);
        e->e_pol = pol;
        snprintf(e->e_id, sizeof(e->e_id), "%s", e->e_fetch_id);
        e->e_fetched = clock_now_s();
        e->e_expires = clock_mono_us() + (uint64_t)pol->sp_max_age * 1000000ULL;
        if (log_level_current <= LOG_INFO) {
            buf_t mx;
            buf_init(&mx, 128);
            for (int i = 0; i < pol->sp_nmx && mx.b_len < 400; i++)
                buf_printf(&mx, "%s%s", i ? "," : "", pol->sp_mx[i]);
            buf_append(&mx, "", 1);
            log_info("delivery: %s: MTA-STS policy id=%s mode=%s max_age=%u mx=%s", e->e_domain,
                     e->e_id, sts_mode_name(pol->sp_mode), pol->sp_max_age, mx.b_data);
            buf_free(&mx);
        }
    } else if (!t->t_stopping) {
        snprintf(e->e_fail_id, sizeof(e->e_fail_id), "%s", e->e_fetch_id);
        e->e_fail_until = clock_mono_us() + STS_FAIL_HOLDOFF * 1000000ULL;
        sts_policy_t *live = sts_entry_live(e);
        if (live != NULL)
            log_warn("delivery: %s: MTA-STS policy fetch (id=%s) failed: %s; keeping the cached "
                     "policy id=%s",
                     e->e_domain, e->e_fetch_id, why, e->e_id);
        else
            log_warn("delivery: %s: MTA-STS policy fetch (id=%s) failed: %s; delivering without a "
                     "policy",
                     e->e_domain, e->e_fetch_id, why);
    }
    dlv_sts_dest_t *sd = e->e_waiter;
    if (sd == NULL || t->t_stopping)
        return;
    e->e_waiter = NULL;
    /* the new policy serves this delivery even with max_age 0 (not cached) */
    sts_policy_t *use = pol != NULL ? pol : sts_entry_live(e);
    sts_resolve(sd, use, use ? e->e_id : "");
}
