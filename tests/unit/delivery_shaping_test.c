/*
 * delivery_shaping_test.c - traffic shaping (delivery/shaping.c, vmta.c):
 * the token bucket over simulated time, limits inheritance, provider
 * matching by domain and MX host name, response rules and thresholds,
 * gradual recovery from backoff, pools (weighted round robin, the
 * X-Sluice-Pool header), and the shipped providers.conf compiled in.
 */
#include "delivery/shaping_int.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* A registry for the shipped providers with text over them. */
static dlv_shaping_t *load(const char *text)
{
    char err[512] = "";
    shp_conf_t *c = NULL;
    int rc = shp_conf_parse(NULL, "test.conf", text, &c, err, sizeof(err));
    if (rc != 0)
        fail_msg("load: %s", err);
    return dlv_shaping_new(c, NULL);
}

/* A reload of sh with text: 0 and *vm (virtual MTAs changed), or the
 * parser's error. */
static int reload(dlv_shaping_t *sh, const char *name, const char *text, bool *vm, char *err,
                  size_t errlen)
{
    shp_conf_t *c = NULL;
    if (shp_conf_parse(NULL, name, text, &c, err, errlen) != 0)
        return SL_ECONFIG;
    *vm = shp_registry_install(sh, c, name);
    return 0;
}

static void load_fails(const char *text, const char *want)
{
    char err[512] = "";
    shp_conf_t *c = NULL;
    assert_int_equal(shp_conf_parse(NULL, "bad.conf", text, &c, err, sizeof(err)), SL_ECONFIG);
    if (strstr(err, want) == NULL)
        fail_msg("error \"%s\" does not say \"%s\"", err, want);
}

/* The compiled-in copy of config/providers.conf is the file's, and loads. */
static void test_builtin_equals_file(void **state)
{
    (void)state;
    const char *src = getenv("SLUICE_SRC");
    char path[1024];
    snprintf(path, sizeof(path), "%s/config/providers.conf", src ? src : ".");
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    static char text[1 << 20];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    if (strcmp(text, shp_builtin_text) != 0)
        fail_msg("the compiled-in providers differ from config/providers.conf: rebuild (the "
                 "build embeds it, delivery/embed_text.cmake)");
    dlv_shaping_t *sh = load(NULL);
    assert_true(sh->sh_conf->sc_nprules >= 10);
    assert_int_equal(sh->sh_nvmtas, 1);
    assert_int_equal(sh->sh_vm->sc_npools, 1);
    dlv_shaping_free(sh);
}

static void test_rate_parse(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int rc;
        uint64_t n, per;
    } cases[] = {
        {"100/1m", 0, 100, 60000000}, {"10/s", 0, 10, 1000000},    {"3600/h", 0, 3600, 3600000000},
        {"5/30s", 0, 5, 30000000},    {"", 0, 0, 1000000},         {"0", 0, 0, 1000000},
        {"abc", SL_EPARSE, 0, 0},     {"10", SL_EPARSE, 0, 0},     {"10/", SL_EPARSE, 0, 0},
        {"0/1s", SL_EPARSE, 0, 0},    {"10/xyz", SL_EPARSE, 0, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        shp_rate_t r = {0};
        int rc = shp_rate_parse(cases[i].s, &r);
        if (rc != cases[i].rc)
            fail_msg("\"%s\": rc %d, want %d", cases[i].s, rc, cases[i].rc);
        if (rc == 0 && (r.r_n != cases[i].n || (r.r_n && r.r_period_us != cases[i].per)))
            fail_msg("\"%s\": %llu per %llu us", cases[i].s, (unsigned long long)r.r_n,
                     (unsigned long long)r.r_period_us);
    }
    int c;
    uint64_t w;
    assert_int_equal(shp_trigger_parse("3 in 5m", &c, &w), 0);
    assert_int_equal(c, 3);
    assert_int_equal(w, 300000000ULL);
    assert_int_equal(shp_trigger_parse("immediate", &c, &w), 0);
    assert_int_equal(c, 1);
    assert_int_equal(shp_trigger_parse("3 within", &c, &w), SL_EPARSE);
}

/* 10/s, asked every millisecond for 10 simulated seconds from two
 * "threads": 10 tokens in every second, none bunched at a boundary. */
static void test_bucket_smooth(void **state)
{
    (void)state;
    shp_bucket_t b = {0};
    shp_bucket_set(&b, 10, 1000000);
    uint64_t t0 = 5000000000ULL; /* ns */
    int per_sec[10] = {0};
    uint64_t last = 0;
    uint64_t min_gap = UINT64_MAX;
    int total = 0;
    for (uint64_t ms = 0; ms < 10000; ms++) {
        uint64_t now = t0 + ms * 1000000ULL;
        for (int th = 0; th < 2; th++) {
            uint64_t w = shp_bucket_take(&b, now);
            if (w == 0) {
                per_sec[ms / 1000]++;
                total++;
                if (last != 0 && now - last < min_gap)
                    min_gap = now - last;
                last = now;
            } else {
                assert_true(w <= 100000000ULL); /* never more than one interval */
            }
        }
    }
    /* the tolerance of 2 lets the first two go together, then one per
     * 100 ms: 10 +- 1 per second */
    for (int i = 0; i < 10; i++)
        if (per_sec[i] < 9 || per_sec[i] > 11)
            fail_msg("second %d: %d tokens", i, per_sec[i]);
    assert_in_range(total, 100, 102);
    /* after the start, tokens are spaced by the interval */
    int bunched = 0;
    shp_bucket_t c = {0};
    shp_bucket_set(&c, 10, 1000000);
    last = 0;
    for (uint64_t ms = 0; ms < 5000; ms++) {
        uint64_t now = t0 + ms * 1000000ULL;
        if (shp_bucket_take(&c, now) == 0) {
            if (last != 0 && ms > 200 && now - last < 99000000ULL)
                bunched++;
            last = now;
        }
    }
    assert_int_equal(bunched, 0);
    /* the wait it gives is when the next token is due */
    shp_bucket_t d = {0};
    shp_bucket_set(&d, 1, 1000000); /* 1/s */
    assert_int_equal(shp_bucket_take(&d, t0), 0);
    assert_int_equal(shp_bucket_take(&d, t0), 0); /* tolerance: 2 */
    uint64_t w = shp_bucket_take(&d, t0);
    assert_int_equal(w, 1000000000ULL);
    assert_int_equal(shp_bucket_take(&d, t0 + w), 0);
    /* refund gives the token back; unlimited never waits */
    assert_true(shp_bucket_peek(&d, t0 + w) > 0);
    shp_bucket_refund(&d);
    assert_int_equal(shp_bucket_peek(&d, t0 + w), 0);
    shp_bucket_t u = {0};
    for (int i = 0; i < 1000; i++)
        assert_int_equal(shp_bucket_take(&u, t0), 0);
}

/* A rate changed at run time (backoff) takes effect on the next token. */
static void test_bucket_rate_change(void **state)
{
    (void)state;
    shp_bucket_t b = {0};
    shp_bucket_set(&b, 100, 1000000);
    uint64_t t = 1000000000ULL;
    int n = 0;
    for (int ms = 0; ms < 1000; ms++)
        n += shp_bucket_take(&b, t + (uint64_t)ms * 1000000ULL) == 0;
    assert_in_range(n, 99, 102);
    shp_bucket_set(&b, 5, 1000000);
    n = 0;
    for (int ms = 1000; ms < 3000; ms++)
        n += shp_bucket_take(&b, t + (uint64_t)ms * 1000000ULL) == 0;
    assert_in_range(n, 9, 12);
}

static const char hier_conf[] = "defaults { max_connections = 7; message_rate = \"100/1m\"; "
                                "backoff { max_connections = 1; } }\n"
                                "providers {\n"
                                "  big {\n"
                                "    domains = [\"big.example\", \"*.big.example\"];\n"
                                "    mx = [\"*.mx.big.example\"];\n"
                                "    message_rate = \"600/1m\";\n"
                                "    per_domain { \"vip.example\" { max_connections = 2; } }\n"
                                "  }\n"
                                "  google { domains = [\"gmail.com\"]; max_connections = 3; }\n"
                                "}\n";

/* defaults -> provider -> domain: each level keeps what it sets. */
static void test_hierarchy(void **state)
{
    (void)state;
    dlv_shaping_t *sh = load(hier_conf);
    const shp_prule_t *big = shp_match_domain(sh->sh_conf, "big.example");
    assert_non_null(big);
    assert_string_equal(big->pr_hosts.pv_name, "big");
    assert_int_equal(big->pr_lim.l_max_conn, 7);       /* from defaults */
    assert_int_equal(big->pr_lim.l_msg_rate.r_n, 600); /* its own */
    assert_int_equal(big->pr_lim.l_bo_max_conn, 1);    /* defaults' backoff */
    assert_int_equal(big->pr_lim.l_bo_msg.r_n, 60);    /* the shipped defaults' backoff */
    shp_provider_t *pv = shp_provider_get(sh, big, "vip.example");
    const shp_limits_t *own;
    const shp_limits_t *l = shp_limits_for(pv, "vip.example", &own);
    assert_non_null(own);
    assert_int_equal(l->l_max_conn, 2);       /* the domain's */
    assert_int_equal(l->l_msg_rate.r_n, 600); /* the provider's */
    assert_int_equal(own->l_set & 1, 1);      /* the domain sets max_connections only */
    l = shp_limits_for(pv, "other.big.example", &own);
    assert_null(own);
    assert_int_equal(l->l_max_conn, 7);
    shp_provider_put(pv);
    /* the operator's google replaces the shipped one (its mx patterns too) */
    const shp_prule_t *g = shp_match_domain(sh->sh_conf, "gmail.com");
    assert_non_null(g);
    assert_int_equal(g->pr_lim.l_max_conn, 3);
    assert_null(shp_match_domain(sh->sh_conf, "googlemail.com"));
    assert_null(shp_match_mx(sh->sh_conf, "gmail-smtp-in.l.google.com"));
    /* an unmatched destination: a provider of its own with the defaults */
    assert_null(shp_match_domain(sh->sh_conf, "example.org"));
    shp_provider_t *own_pv = shp_provider_get(sh, NULL, "example.org");
    assert_string_equal(own_pv->pv_name, "example.org");
    assert_int_equal(own_pv->pv_lim.l_max_conn, 7);
    shp_provider_t *again = shp_provider_get(sh, NULL, "example.org");
    assert_ptr_equal(again, own_pv); /* shared by every thread's destination */
    shp_provider_put(again);
    shp_provider_put(own_pv);
    dlv_shaping_free(sh);
}

/* MX rollup with the shipped providers. */
static void test_mx_matching(void **state)
{
    (void)state;
    dlv_shaping_t *sh = load(NULL);
    static const struct {
        const char *mx, *provider;
    } mx[] = {
        {"gmail-smtp-in.l.google.com.", "google"},
        {"aspmx2.googlemail.com", "google"},
        {"ALT1.ASPMX.L.GOOGLE.COM", "google"},
        {"mta7.am0.yahoodns.net", "yahoo"},
        {"example-com.mail.protection.outlook.com", "microsoft"},
        {"mx01.mail.icloud.com", "apple"},
        {"mx00.emig.gmx.net", "gmx"},
        {"mxs.mail.ru", "mailru"},
        {"mx.yandex.net", "yandex"},
        {"mx.example.org", NULL},
        {"google.com.evil.example", NULL},
    };
    for (size_t i = 0; i < sizeof(mx) / sizeof(mx[0]); i++) {
        const shp_prule_t *p = shp_match_mx(sh->sh_conf, mx[i].mx);
        const char *got = p ? p->pr_hosts.pv_name : NULL;
        if ((got == NULL) != (mx[i].provider == NULL) || (got && strcmp(got, mx[i].provider) != 0))
            fail_msg("mx %s: %s, want %s", mx[i].mx, got ? got : "none",
                     mx[i].provider ? mx[i].provider : "none");
    }
    static const struct {
        const char *d, *provider;
    } dom[] = {{"gmail.com", "google"},  {"hotmail.co.uk", "microsoft"},
               {"yahoo.co.jp", "yahoo"}, {"aol.com", "yahoo"},
               {"me.com", "apple"},      {"web.de", "gmx"},
               {"example.com", NULL},    {"notgmail.com", NULL}};
    for (size_t i = 0; i < sizeof(dom) / sizeof(dom[0]); i++) {
        const shp_prule_t *p = shp_match_domain(sh->sh_conf, dom[i].d);
        const char *got = p ? p->pr_hosts.pv_name : NULL;
        if ((got == NULL) != (dom[i].provider == NULL) ||
            (got && strcmp(got, dom[i].provider) != 0))
            fail_msg("domain %s: %s, want %s", dom[i].d, got ? got : "none",
                     dom[i].provider ? dom[i].provider : "none");
    }
    dlv_shaping_free(sh);
}

/* The shipped patterns for the replies providers are known for. */
static void test_rule_matching(void **state)
{
    (void)state;
    dlv_shaping_t *sh = load(NULL);
    static const struct {
        const char *provider;
        int code;
        const char *status, *text;
        int action; /* of the first matching rule; 0 = none */
    } cases[] = {
        {"yahoo", 421, "4.7.0",
         "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user "
         "complaints - 4.16.55.1",
         SHP_A_BACKOFF},
        {"yahoo", 554, "5.7.9", "Message not accepted for policy reasons. [TSS09]",
         SHP_A_DISABLE_SRC},
        {"google", 421, "4.7.28",
         "Gmail has detected an unusual rate of unsolicited mail originating from your IP",
         SHP_A_BACKOFF},
        {"google", 450, "4.7.0", "... rate limited, try again later", SHP_A_BACKOFF},
        {"microsoft", 451, "4.7.500", "Server busy. Please try again later from [192.0.2.1].",
         SHP_A_BACKOFF},
        {"microsoft", 451, "4.7.650",
         "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation.",
         SHP_A_BACKOFF},
        {"google", 550, "5.1.1", "The email account that you tried to reach does not exist", 0},
        {"yahoo", 450, "4.2.1", "mailbox busy", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const shp_prule_t *p = NULL;
        for (int k = 0; k < sh->sh_conf->sc_nprules; k++)
            if (strcmp(sh->sh_conf->sc_prules[k].pr_hosts.pv_name, cases[i].provider) == 0)
                p = &sh->sh_conf->sc_prules[k];
        assert_non_null(p);
        int got = 0;
        for (int k = 0; k < p->pr_nrules + sh->sh_conf->sc_nrules && got == 0; k++) {
            const shp_rule_t *r =
                k < p->pr_nrules ? &p->pr_rules[k] : &sh->sh_conf->sc_rules[k - p->pr_nrules];
            if (shp_rule_match(r, cases[i].code, cases[i].status, cases[i].text))
                got = (int)r->r_action;
        }
        if (got != cases[i].action)
            fail_msg("case %zu (%s %d %s): action %d, want %d", i, cases[i].provider, cases[i].code,
                     cases[i].status, got, cases[i].action);
    }
    dlv_shaping_free(sh);
}

/* The shipped defaults: capacity words are capacity rules (with their
 * limit), reputation words stay backoff, whoever says them. */
static void test_capacity_rules(void **state)
{
    (void)state;
    dlv_shaping_t *sh = load(NULL);
    static const struct {
        int code;
        const char *status, *text;
        int action, cap;
    } cases[] = {
        {421, "4.7.0", "Too many concurrent connections from your IP", SHP_A_CAPACITY,
         SHP_CAP_CONN},
        {421, "4.3.2",
         "The maximum number of concurrent server connections has exceeded a limit, closing "
         "transmission channel",
         SHP_A_CAPACITY, SHP_CAP_CONN},
        {421, "4.7.0", "Too many messages on this connection, try again later", SHP_A_CAPACITY,
         SHP_CAP_MSGS},
        {421, "4.7.0", "Too many messages in this session", SHP_A_CAPACITY, SHP_CAP_MSGS},
        {451, "4.7.1", "Rate limit exceeded, try again later", SHP_A_CAPACITY, SHP_CAP_RATE},
        {421, "4.7.0", "Throttled: sending too fast", SHP_A_CAPACITY, SHP_CAP_RATE},
        {421, "4.7.0",
         "[TSS04] Messages from 192.0.2.1 temporarily deferred due to user complaints",
         SHP_A_BACKOFF, 0},
        {451, "4.7.650", "The mail server has been temporarily rate limited due to IP reputation.",
         SHP_A_BACKOFF, 0},
        {450, "4.2.1", "mailbox busy", 0, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const shp_rule_t *hit = NULL;
        for (int k = 0; k < sh->sh_conf->sc_nrules && hit == NULL; k++)
            if (shp_rule_match(&sh->sh_conf->sc_rules[k], cases[i].code, cases[i].status,
                               cases[i].text))
                hit = &sh->sh_conf->sc_rules[k];
        int act = hit ? (int)hit->r_action : 0, cap = hit ? (int)hit->r_capacity : 0;
        if (act != cases[i].action || cap != cases[i].cap)
            fail_msg("case %zu (%d %s): action %d limit %d, want %d %d", i, cases[i].code,
                     cases[i].text, act, cap, cases[i].action, cases[i].cap);
    }
    dlv_shaping_free(sh);
}

static const char adapt_conf[] =
    "defaults { adaptive = true; }\n"
    "providers { p {\n"
    "  domains = [\"p.example\"];\n"
    "  max_connections = 8; message_rate = \"100/s\";\n"
    "  rule { match = 'too many connections'; action = capacity; limit = connections; }\n"
    "  rule { match = 'too many messages on'; action = capacity; limit = messages_per_connection; "
    "}\n"
    "  rule { match = 'rate limit'; action = capacity; limit = rate; }\n"
    "}\n"
    "fixed { domains = [\"f.example\"]; adaptive = false; message_rate = \"10/s\";\n"
    "  backoff { max_connections = 1; message_rate = \"1/s\"; }\n"
    "  rule { match = 'rate limit'; action = capacity; limit = rate; }\n"
    "} }\n";

/* n deliveries on q spread over [t, t + 1 s], the last one ending the
 * interval. */
static void deliver(shp_queue_t *q, int n, uint64_t t)
{
    for (int i = 1; i <= n; i++)
        shp_queue_success(q, t + (uint64_t)i * 1000001ULL / (uint64_t)n);
}

/* Adaptive mode's steps, with their constants (docs/shaping.md). */
static void test_adaptive_aimd(void **state)
{
    (void)state;
    dlv_shaping_t *sh = load(adapt_conf);
    shp_provider_t *pv =
        shp_provider_get(sh, shp_match_domain(sh->sh_conf, "p.example"), "p.example");
    shp_queue_t *q = &pv->pv_q[0];
    shp_capacity_t cap;
    assert_true(atomic_load(&q->q_ad.a_on));
    assert_true(q->q_ad.a_ss);
    assert_true(shp_queue_rate(q) > 9.9 && shp_queue_rate(q) < 10.1); /* the start */
    assert_int_equal(atomic_load(&q->q_max_conn), 2);
    uint64_t t = atomic_load(&q->q_ad.a_tick_at);
    /* slow start: a used rate doubles, up to the operator's 100/s */
    deliver(q, 10, t);
    assert_true(shp_queue_rate(q) > 19.9 && shp_queue_rate(q) < 20.1);
    t += 1000001;
    deliver(q, 20, t);
    t += 1000001;
    deliver(q, 40, t);
    t += 1000001;
    deliver(q, 80, t);
    t += 1000001;
    assert_true(shp_queue_rate(q) > 99.9 && shp_queue_rate(q) < 100.1);
    /* a rate not used, every connection open: connections x2 */
    atomic_store(&q->q_nconn, 2);
    deliver(q, 10, t);
    t += 1000001;
    assert_int_equal(atomic_load(&q->q_max_conn), 4);
    /* the first rate reply ends slow start at the last clean rate (80/s:
     * the 100/s was never used whole); the next within 1 s is the same
     * overload */
    assert_int_equal(shp_queue_reply(q, "p.example", 421, "4.7.0", "rate limit", 3, &cap, t),
                     SHP_A_CAPACITY);
    assert_int_equal(cap, SHP_CAP_RATE);
    assert_false(q->q_ad.a_ss);
    double r = shp_queue_rate(q);
    assert_true(r > 79.9 && r < 80.1);
    shp_queue_reply(q, "p.example", 421, "4.7.0", "rate limit", 3, &cap, t + 500000);
    assert_true(shp_queue_rate(q) > 79.9 && shp_queue_rate(q) < 80.1);
    /* then x 0.85 */
    shp_queue_reply(q, "p.example", 421, "4.7.0", "rate limit", 3, &cap, t + 1500000);
    assert_true(shp_queue_rate(q) > 67.9 && shp_queue_rate(q) < 68.1);
    /* additive: + rate / 40 (1.7/s) per interval that used 80% of it;
     * none in an interval with a decrease, none when not used */
    t = atomic_load(&q->q_ad.a_tick_at);
    deliver(q, 60, t); /* the decreases were in this interval */
    assert_true(shp_queue_rate(q) > 67.9 && shp_queue_rate(q) < 68.1);
    t = atomic_load(&q->q_ad.a_tick_at);
    deliver(q, 40, t); /* not used */
    assert_true(shp_queue_rate(q) > 67.9 && shp_queue_rate(q) < 68.1);
    t = atomic_load(&q->q_ad.a_tick_at);
    deliver(q, 60, t);
    assert_true(shp_queue_rate(q) > 69.6 && shp_queue_rate(q) < 69.8);
    t = atomic_load(&q->q_ad.a_tick_at);
    /* connections: the open ones minus the refused one, every refusal */
    atomic_store(&q->q_nconn, 4);
    shp_queue_reply(q, "p.example", 421, "4.7.0", "too many connections", 0, &cap, t);
    assert_int_equal(cap, SHP_CAP_CONN);
    assert_int_equal(atomic_load(&q->q_max_conn), 3);
    atomic_store(&q->q_nconn, 0);
    shp_queue_reply(q, "p.example", 421, "4.7.0", "too many connections", 0, &cap, t);
    assert_int_equal(atomic_load(&q->q_max_conn), 1); /* never below one */
    /* messages per connection: what the connection carried; only lower */
    shp_queue_reply(q, "p.example", 421, "4.7.0", "too many messages on it", 7, &cap, t);
    assert_int_equal(cap, SHP_CAP_MSGS);
    assert_int_equal(shp_adapt_max_msgs(q), 7);
    shp_queue_reply(q, "p.example", 421, "4.7.0", "too many messages on it", 9, &cap, t);
    assert_int_equal(shp_adapt_max_msgs(q), 7);
    shp_queue_reply(q, "p.example", 421, "4.7.0", "too many messages on it", 5, &cap, t);
    assert_int_equal(shp_adapt_max_msgs(q), 5);
    assert_int_equal(atomic_load(&q->q_mode), SHP_NORMAL); /* capacity is not backoff */
    shp_provider_put(pv);
    /* a queue that is not adaptive: a capacity rule is a backoff rule */
    pv = shp_provider_get(sh, shp_match_domain(sh->sh_conf, "f.example"), "f.example");
    q = &pv->pv_q[0];
    assert_false(atomic_load(&q->q_ad.a_on));
    assert_int_equal(shp_queue_reply(q, "f.example", 421, "4.7.0", "rate limit", 3, &cap, t),
                     SHP_A_CAPACITY);
    assert_int_equal(atomic_load(&q->q_mode), SHP_BACKOFF);
    assert_true(shp_queue_rate(q) > 0.99 && shp_queue_rate(q) < 1.01);
    assert_int_equal(shp_adapt_max_msgs(q), 0);
    shp_provider_put(pv);
    dlv_shaping_free(sh);
}

static const char rec_conf[] =
    "defaults { recover_after = 5; recover_quiet = 1h; recover_factor = 1.5; }\n"
    "providers { p {\n"
    "  domains = [\"p.example\"];\n"
    "  max_connections = 8; message_rate = \"10/s\";\n"
    "  backoff { max_connections = 1; message_rate = \"1/s\"; retry = 10m; }\n"
    "  rule { match = '^421 .*slow down'; action = backoff; }\n"
    "  rule { match = '^451 .*busy'; action = backoff; trigger = \"3 in 1m\"; }\n"
    "  rule { match = '^421 .*all clear'; action = normal; }\n"
    "  rule { match = '^550 .*listed'; action = disable-source; duration = 10m; }\n"
    "  rule { match = '^452 .*gone for good'; action = bounce-recipient; }\n"
    "  rule { match = '^421 .*go away'; action = suspend; duration = 2m; }\n"
    "} }\n";

/* Immediate and threshold triggers, and every action. */
static void test_triggers_and_actions(void **state)
{
    (void)state;
    dlv_shaping_t *sh = load(rec_conf);
    shp_provider_t *pv =
        shp_provider_get(sh, shp_match_domain(sh->sh_conf, "p.example"), "p.example");
    shp_queue_t *q = &pv->pv_q[0];
    uint64_t t = 1000000000ULL;
    shp_capacity_t cap;
    assert_int_equal(atomic_load(&q->q_mode), SHP_NORMAL);
    assert_true(shp_queue_rate(q) > 9.9 && shp_queue_rate(q) < 10.1);
    /* threshold: 3 in 1m */
    assert_int_equal(shp_queue_reply(q, "p.example", 451, "4.3.2", "busy", 0, &cap, t), 0);
    assert_int_equal(shp_queue_reply(q, "p.example", 451, "4.3.2", "busy", 0, &cap, t + 10000000),
                     0);
    /* the first hit left the window: still two */
    assert_int_equal(shp_queue_reply(q, "p.example", 451, "4.3.2", "busy", 0, &cap, t + 65000000),
                     0);
    assert_int_equal(atomic_load(&q->q_mode), SHP_NORMAL);
    assert_int_equal(shp_queue_reply(q, "p.example", 451, "4.3.2", "busy", 0, &cap, t + 66000000),
                     SHP_A_BACKOFF);
    assert_int_equal(atomic_load(&q->q_mode), SHP_BACKOFF);
    assert_true(shp_queue_rate(q) > 0.99 && shp_queue_rate(q) < 1.01);
    assert_int_equal(atomic_load(&q->q_max_conn), 1);
    /* normal by rule */
    assert_int_equal(
        shp_queue_reply(q, "p.example", 421, "4.7.0", "all clear", 0, &cap, t + 70000000),
        SHP_A_NORMAL);
    assert_int_equal(atomic_load(&q->q_mode), SHP_NORMAL);
    assert_int_equal(atomic_load(&q->q_max_conn), 8);
    /* immediate */
    assert_int_equal(shp_queue_reply(q, "p.example", 421, "4.7.0", "please slow down", 0, &cap, t),
                     SHP_A_BACKOFF);
    /* disable-source, suspend, bounce-recipient */
    uint64_t t2 = t + 80000000;
    assert_int_equal(shp_queue_reply(q, "p.example", 550, "5.7.1", "IP listed at x", 0, &cap, t2),
                     SHP_A_DISABLE_SRC);
    assert_true(atomic_load(&q->q_disabled_until) == t2 + 600000000ULL);
    assert_int_equal(shp_queue_reply(q, "p.example", 421, "4.7.0", "go away", 0, &cap, t2),
                     SHP_A_SUSPEND);
    assert_true(atomic_load(&pv->pv_suspend_until) == t2 + 120000000ULL);
    assert_int_equal(shp_queue_reply(q, "p.example", 452, "4.2.2", "gone for good", 0, &cap, t2),
                     SHP_A_BOUNCE_RCPT);
    /* no rule: nothing, but the response is remembered */
    assert_int_equal(shp_queue_reply(q, "p.example", 450, "4.2.1", "mailbox busy", 0, &cap, t2), 0);
    assert_string_equal(q->q_last, "450 4.2.1 mailbox busy");
    shp_provider_put(pv);
    dlv_shaping_free(sh);
}

/* Out of backoff: x1.5 per 5 deliveries, never straight to full rate. */
static void test_recovery_steps(void **state)
{
    (void)state;
    dlv_shaping_t *sh = load(rec_conf);
    shp_provider_t *pv =
        shp_provider_get(sh, shp_match_domain(sh->sh_conf, "p.example"), "p.example");
    shp_queue_t *q = &pv->pv_q[0];
    uint64_t t = 1000000000ULL;
    shp_queue_backoff(q, "test", t);
    double want[] = {1.0, 1.5, 2.25, 3.375, 5.0625, 7.59375, 10.0};
    int conns[] = {1, 2, 3, 4, 6, 8, 8};
    int steps = 0;
    double rate = shp_queue_rate(q);
    assert_true(rate > 0.99 && rate < 1.01);
    for (int i = 0; i < 200 && atomic_load(&q->q_mode) != SHP_NORMAL; i++) {
        shp_queue_success(q, t + (uint64_t)i * 1000);
        double r = shp_queue_rate(q);
        if (r > rate + 1e-6) {
            steps++;
            if (steps >= (int)(sizeof(want) / sizeof(want[0])))
                fail_msg("too many steps");
            if (r < want[steps] * 0.99 || r > want[steps] * 1.01)
                fail_msg("step %d: rate %.4f, want %.4f", steps, r, want[steps]);
            assert_int_equal(atomic_load(&q->q_max_conn), conns[steps]);
            assert_int_equal((i + 1) % 5, 0); /* every 5 deliveries */
            rate = r;
        }
        assert_true(r <= 10.0 + 1e-6);
    }
    assert_int_equal(steps, 6);
    assert_int_equal(atomic_load(&q->q_mode), SHP_NORMAL);
    assert_int_equal(atomic_load(&q->q_max_conn), 8);
    /* a trigger while recovering goes back to the backoff rate */
    shp_queue_backoff(q, "again", t);
    for (int i = 0; i < 5; i++)
        shp_queue_success(q, t + 2000);
    assert_int_equal(atomic_load(&q->q_mode), SHP_RECOVERING);
    shp_queue_backoff(q, "again", t + 3000);
    assert_int_equal(atomic_load(&q->q_mode), SHP_BACKOFF);
    assert_true(shp_queue_rate(q) < 1.01);
    /* a quiet period counts as a step too (recover_quiet = 1h) */
    shp_queue_success(q, t + 3000 + 3600ULL * 1000000ULL);
    assert_int_equal(atomic_load(&q->q_mode), SHP_RECOVERING);
    assert_true(shp_queue_rate(q) > 1.49 && shp_queue_rate(q) < 1.51);
    shp_provider_put(pv);
    dlv_shaping_free(sh);
}

static const char pool_conf[] = "virtual_mtas {\n"
                                "  a { source = \"127.0.0.2\"; ehlo = \"a.example.net\"; }\n"
                                "  b { source = \"127.0.0.3\"; ehlo = \"b.example.net\"; }\n"
                                "  c { source = \"127.0.0.4\"; }\n"
                                "}\n"
                                "pools {\n"
                                "  bulk { members = [a, b]; }\n"
                                "  heavy { members = [a, b, c]; weights = [3, 1, 1]; }\n"
                                "}\n"
                                "default_pool = bulk;\n"
                                "pool_users { alice = heavy; }\n";

static queue_dispatch_t *mk_qd(const char *body, const char *auth)
{
    queue_dispatch_t *qd = calloc(1, sizeof(*qd));
    qd->qd_body = strdup(body);
    qd->qd_body_len = strlen(body);
    qd->qd_auth_user = auth ? strdup(auth) : NULL;
    return qd;
}

static void test_pools(void **state)
{
    (void)state;
    dlv_shaping_t *sh = load(pool_conf);
    assert_int_equal(sh->sh_nvmtas, 3);
    assert_int_equal(sh->sh_vm->sc_npools, 2);
    assert_string_equal(sh->sh_vm->sc_vmtas[1].vm_ehlo, "b.example.net");
    /* round robin */
    int cw[SHP_MAX_VMTAS] = {0};
    bool all[SHP_MAX_VMTAS];
    for (int i = 0; i < SHP_MAX_VMTAS; i++)
        all[i] = true;
    int seq[4];
    for (int i = 0; i < 4; i++)
        seq[i] = shp_pool_pick(&sh->sh_vm->sc_pools[0], cw, all);
    assert_int_equal(seq[0] + seq[1], 1);
    assert_int_equal(seq[2] + seq[3], 1);
    assert_int_not_equal(seq[0], seq[1]);
    /* weighted 3:1:1, smooth */
    int cw2[SHP_MAX_VMTAS] = {0}, cnt[3] = {0};
    for (int i = 0; i < 50; i++)
        cnt[shp_pool_pick(&sh->sh_vm->sc_pools[1], cw2, all)]++;
    assert_int_equal(cnt[0], 30);
    assert_int_equal(cnt[1], 10);
    assert_int_equal(cnt[2], 10);
    /* a disabled member is skipped; none allowed: -1 */
    all[0] = false;
    for (int i = 0; i < 5; i++)
        assert_int_equal(shp_pool_pick(&sh->sh_vm->sc_pools[0], cw, all), 1);
    all[1] = false;
    assert_int_equal(shp_pool_pick(&sh->sh_vm->sc_pools[0], cw, all), -1);
    /* pool choice: header (stripped), AUTH user, default */
    queue_dispatch_t *qd = mk_qd(
        "From: a@x\r\nX-Sluice-Pool: heavy\r\nSubject: s\r\n\r\nX-Sluice-Pool: body\r\n", "alice");
    assert_int_equal(shp_pool_for(sh->sh_vm, qd), 1);
    assert_string_equal(qd->qd_body, "From: a@x\r\nSubject: s\r\n\r\nX-Sluice-Pool: body\r\n");
    assert_int_equal(qd->qd_body_len, strlen(qd->qd_body));
    queue_dispatch_free(qd);
    qd = mk_qd("x-sluice-pool:  bulk \r\n\tfolded\r\nFrom: a@x\r\n\r\nbody\r\n", "alice");
    assert_int_equal(shp_pool_for(sh->sh_vm, qd), 0);
    assert_string_equal(qd->qd_body, "From: a@x\r\n\r\nbody\r\n");
    queue_dispatch_free(qd);
    qd = mk_qd("From: a@x\r\n\r\nbody\r\n", "alice");
    assert_int_equal(shp_pool_for(sh->sh_vm, qd), 1);
    queue_dispatch_free(qd);
    qd = mk_qd("From: a@x\r\n\r\nbody\r\n", NULL);
    assert_int_equal(shp_pool_for(sh->sh_vm, qd), 0);
    queue_dispatch_free(qd);
    qd = mk_qd("X-Sluice-Pool: nosuch\r\n\r\nbody\r\n", NULL);
    assert_int_equal(shp_pool_for(sh->sh_vm, qd), 0);
    assert_string_equal(qd->qd_body, "\r\nbody\r\n");
    queue_dispatch_free(qd);
    dlv_shaping_free(sh);
}

static void test_config_errors(void **state)
{
    (void)state;
    load_fails("providers { p { message_rate = \"10/s\"; } }", "needs domains");
    load_fails("providers { p { domains = [x]; message_rate = \"fast\"; } }", "N/period");
    load_fails("providers { p { domains = [x]; colour = red; } }", "unknown key");
    load_fails("providers { p { domains = [x]; rule { match = '('; action = backoff; } } }",
               "bad regex");
    load_fails("providers { p { domains = [x]; rule { match = 'x'; action = explode; } } }",
               "rule.action");
    load_fails("providers { p { domains = [x]; rule { match = 'x'; action = backoff; "
               "trigger = \"often\"; } } }",
               "rule.trigger");
    load_fails("pools { p { members = [nosuch]; } }", "no virtual MTA");
    load_fails("virtual_mtas { a { source = \"not-an-ip\"; } }", "expected an IP address");
    load_fails("virtual_mtas { a { } }\ndefault_pool = nosuch;", "default_pool");
    load_fails("colour = red;", "unknown key");
}

/* reload: new limits and rules in place, the providers' state kept; a
 * broken text is refused with file:line and changes nothing. */
static void test_reload(void **state)
{
    (void)state;
    char err[512] = "";
    bool vm = true;
    dlv_shaping_t *sh = load("providers { r { domains = [\"r.example\"]; message_rate = \"5/s\";\n"
                             "  max_connections = 2; } }\n");
    const shp_prule_t *rule = shp_match_domain(sh->sh_conf, "r.example");
    shp_provider_t *pv = shp_provider_get(sh, rule, "r.example");
    assert_float_equal(shp_queue_rate(&pv->pv_q[0]), 5.0, 0.01);
    atomic_store(&pv->pv_q[0].q_delivered, 42);
    uint32_t gen = atomic_load(&sh->sh_gen);
    assert_int_equal(reload(sh, "new.conf",
                            "providers { r { domains = [\"r.example\", "
                            "\"r2.example\"]; message_rate = \"20/s\"; } }\n",
                            &vm, err, sizeof(err)),
                     0);
    assert_false(vm);
    assert_int_equal(atomic_load(&sh->sh_gen), gen + 1);
    /* the same provider object, its counters kept, its limits new */
    assert_ptr_equal(pv->pv_rule, shp_match_domain(sh->sh_conf, "r2.example"));
    assert_float_equal(shp_queue_rate(&pv->pv_q[0]), 20.0, 0.01);
    assert_int_equal(atomic_load(&pv->pv_q[0].q_max_conn), pv->pv_lim.l_max_conn);
    assert_int_equal(atomic_load(&pv->pv_q[0].q_delivered), 42);
    assert_ptr_equal(shp_provider_get(sh, shp_match_domain(sh->sh_conf, "r.example"), "r.example"),
                     pv);
    shp_provider_put(pv);
    /* a queue in backoff stays in backoff, at the new backoff rate */
    shp_queue_backoff(&pv->pv_q[0], "test", 1000);
    assert_int_equal(reload(sh, "new.conf",
                            "providers { r { domains = [\"r.example\"]; message_rate = \"20/s\";\n"
                            "  backoff { message_rate = \"2/s\"; } } }\n",
                            &vm, err, sizeof(err)),
                     0);
    assert_int_equal(atomic_load(&pv->pv_q[0].q_mode), SHP_BACKOFF);
    assert_float_equal(shp_queue_rate(&pv->pv_q[0]), 2.0, 0.01);
    /* broken: refused with file:line, nothing changes */
    gen = atomic_load(&sh->sh_gen);
    assert_int_not_equal(reload(sh, "bad.conf", "providers { r {\n  message_rate = \"x\"; } }\n",
                                &vm, err, sizeof(err)),
                         0);
    assert_non_null(strstr(err, "bad.conf:2"));
    assert_int_equal(atomic_load(&sh->sh_gen), gen);
    assert_float_equal(shp_queue_rate(&pv->pv_q[0]), 2.0, 0.01);
    /* virtual MTAs: reported, not changed */
    assert_int_equal(reload(sh, "vm.conf", "virtual_mtas { x { source = \"127.0.0.2\"; } }\n", &vm,
                            err, sizeof(err)),
                     0);
    assert_true(vm);
    assert_string_equal(sh->sh_vm->sc_vmtas[0].vm_name, "default");
    shp_provider_put(pv);
    dlv_shaping_free(sh);
}

/* operator suspend / resume of a provider and of a virtual MTA */
static void test_operator_suspend(void **state)
{
    (void)state;
    char err[512] = "";
    dlv_shaping_t *sh = load("virtual_mtas { a { } b { } }\n"
                             "providers { p { domains = [\"p.example\"]; } }\n");
    assert_int_equal(shp_registry_suspend(sh, "p", NULL, UINT64_MAX, err, sizeof(err)), 0);
    shp_provider_t *pv =
        shp_provider_get(sh, shp_match_domain(sh->sh_conf, "p.example"), "p.example");
    assert_int_equal(atomic_load(&pv->pv_op_until), UINT64_MAX); /* created suspended */
    assert_int_equal(shp_registry_suspend(sh, "P", NULL, 0, err, sizeof(err)), 0);
    assert_int_equal(atomic_load(&pv->pv_op_until), 0);
    /* a domain of its own stays in the registry while suspended */
    assert_int_equal(shp_registry_suspend(sh, "own.example", NULL, UINT64_MAX, err, sizeof(err)),
                     0);
    shp_provider_t *own = shp_provider_get(sh, NULL, "own.example");
    shp_provider_put(own);
    assert_ptr_equal(shp_provider_get(sh, NULL, "own.example"), own);
    shp_provider_put(own);
    assert_int_equal(shp_registry_suspend(sh, "nosuch", NULL, UINT64_MAX, err, sizeof(err)),
                     SL_ENOTFOUND);
    assert_int_equal(shp_registry_suspend(sh, NULL, "b", 123, err, sizeof(err)), 0);
    assert_int_equal(atomic_load(&sh->sh_vmta_suspend[1]), 123);
    assert_int_equal(atomic_load(&sh->sh_vmta_suspend[0]), 0);
    assert_int_equal(shp_registry_suspend(sh, NULL, "zz", 123, err, sizeof(err)), SL_ENOTFOUND);
    shp_provider_put(pv);
    dlv_shaping_free(sh);
}

int main(void)
{
    log_init(LOG_WARN, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_builtin_equals_file), cmocka_unit_test(test_rate_parse),
        cmocka_unit_test(test_bucket_smooth),       cmocka_unit_test(test_bucket_rate_change),
        cmocka_unit_test(test_hierarchy),           cmocka_unit_test(test_mx_matching),
        cmocka_unit_test(test_rule_matching),       cmocka_unit_test(test_triggers_and_actions),
        cmocka_unit_test(test_recovery_steps),      cmocka_unit_test(test_pools),
        cmocka_unit_test(test_config_errors),       cmocka_unit_test(test_reload),
        cmocka_unit_test(test_operator_suspend),    cmocka_unit_test(test_capacity_rules),
        cmocka_unit_test(test_adaptive_aimd),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
