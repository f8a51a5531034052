/*
 * delivery_rules_test.c - the bounce classification rules engine
 * (delivery/rules.c) and the shipped rules (config/bounce-rules.conf).
 *
 * The golden file $SLUICE_SRC/tests/unit/rules/bounce-golden.txt gives real
 * provider replies their category and hard/soft outcome; a failure names its
 * line. Also: the compiled-in default is the shipped file, malformed rules
 * files fail with file:line, provider matching by domain and MX, the
 * "bounce" action on 4xx, installing a rules file, concurrent use.
 */
#include "delivery/delivery_int.h" /* dlv_classify_reply: the judge's classification */
#include "delivery/rules_int.h"
#include "delivery/shaping_int.h" /* the shipped providers */

#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

static const char *src_dir(void)
{
    const char *s = getenv("SLUICE_SRC");
    return s && s[0] ? s : ".";
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        fail_msg("cannot open %s", path);
    buf_t b;
    buf_init(&b, 65536);
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        buf_append(&b, chunk, n);
    fclose(f);
    buf_append(&b, "", 1);
    *len = b.b_len - 1;
    return buf_steal(&b, NULL);
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        s[--n] = '\0';
    return s;
}

/* ------------------------------------------------------------ golden file */

static const char *const categories[] = {
    "bad-configuration",   "bad-connection",
    "bad-domain",          "bad-mailbox",
    "content-related",     "inactive-mailbox",
    "invalid-sender",      "message-expired",
    "no-answer-from-host", "other",
    "policy-related",      "protocol-errors",
    "quota-issues",        "relaying-issues",
    "routing-errors",      "spam-related",
    "virus-related",
};

/* The line numbers of the shipped file's rules (where their "rule" key
 * is: the line a verdict's v_rule names), in file order; their count. */
static int shipped_rule_lines(int **out)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/config/bounce-rules.conf", src_dir());
    FILE *fp = fopen(path, "r");
    if (fp == NULL)
        fail_msg("cannot open %s", path);
    int *v = NULL, n = 0, lineno = 0;
    char line[4096];
    while (fgets(line, sizeof(line), fp) != NULL) {
        lineno++;
        char *l = trim(line);
        if (strncmp(l, "rule", 4) == 0 && (l[4] == ' ' || l[4] == '{' || l[4] == '\0')) {
            v = realloc(v, (size_t)(n + 1) * sizeof(*v));
            v[n++] = lineno;
        }
    }
    fclose(fp);
    *out = v;
    return n;
}

/* The line a verdict's rule is on ("name:LINE"), 0 for the built-in table. */
static int verdict_line(const dlv_rule_hit_t *v)
{
    const char *colon = v->h_rule ? strrchr(v->h_rule, ':') : NULL;
    return colon ? atoi(colon + 1) : 0;
}

/* One golden line: "code | status | text | category | hard/soft | domain [| mx]".
 * Returns false (and says why, naming path:lineno) when it does not hold;
 * *rule_line is the line of the rule that decided (0: none). */
static bool golden_line(const char *path, int lineno, char *l, int per_cat[], int *rule_line)
{
    char *f[8];
    int nf = 0;
    for (char *p = l; nf < 8;) {
        char *bar = strchr(p, '|');
        f[nf++] = p;
        if (bar == NULL)
            break;
        *bar = '\0';
        p = bar + 1;
    }
    if (nf != 6 && nf != 7)
        fail_msg("%s:%d: expected 6 or 7 fields separated by '|', got %d", path, lineno, nf);
    for (int i = 0; i < nf; i++)
        f[i] = trim(f[i]);
    int code = atoi(f[0]);
    const char *status = strcmp(f[1], "-") == 0 ? "" : f[1];
    const char *domain = strcmp(f[5], "-") == 0 ? NULL : f[5];
    const char *mx = nf == 7 && strcmp(f[6], "-") != 0 ? f[6] : NULL;
    bool want_hard = strcmp(f[4], "hard") == 0;
    if (!want_hard && strcmp(f[4], "soft") != 0)
        fail_msg("%s:%d: hard or soft, got \"%s\"", path, lineno, f[4]);
    size_t ci;
    for (ci = 0; ci < ARRAY_SIZE(categories); ci++)
        if (strcmp(categories[ci], f[3]) == 0)
            break;
    if (ci == ARRAY_SIZE(categories))
        fail_msg("%s:%d: \"%s\" is not a category", path, lineno, f[3]);
    per_cat[ci]++;

    /* what delivery records: the reply's own status when it has one */
    char st[16];
    if (code != 0)
        dlv_status_for_reply(code, status, st);
    else
        snprintf(st, sizeof(st), "%s", status);
    dlv_rule_hit_t v;
    dlv_classify_reply(code, st, f[2], domain, mx, &v);
    *rule_line = verdict_line(&v);
    bool hard = dlv_result_for_verdict(code, &v) == Q_OUT_BOUNCED;
    if (strcmp(v.h_category, f[3]) != 0 || hard != want_hard) {
        print_error("%s:%d: got %s/%s, want %s/%s (rule %s)\n", path, lineno, v.h_category,
                    hard ? "hard" : "soft", f[3], f[4], v.h_rule ? v.h_rule : "built-in");
        return false;
    }
    /* dlv_classify (no provider known) agrees when no provider rule decided */
    if (v.h_provider == NULL && strcmp(dlv_classify(code, st, f[2]), v.h_category) != 0) {
        print_error("%s:%d: dlv_classify disagrees\n", path, lineno);
        return false;
    }
    return true;
}

static void test_golden(void **state)
{
    (void)state;
    char path[1024];
    snprintf(path, sizeof(path), "%s/tests/unit/rules/bounce-golden.txt", src_dir());
    FILE *fp = fopen(path, "r");
    if (fp == NULL)
        fail_msg("cannot open %s", path);
    int per_cat[ARRAY_SIZE(categories)] = {0};
    int *rules = NULL;
    int nrules = shipped_rule_lines(&rules);
    int *hits = calloc((size_t)nrules + 1, sizeof(*hits));
    char line[4096];
    int lineno = 0, cases = 0, failures = 0;
    while (fgets(line, sizeof(line), fp) != NULL) {
        lineno++;
        char *l = trim(line);
        if (l[0] == '\0' || l[0] == '#')
            continue;
        cases++;
        int rl = 0;
        if (!golden_line(path, lineno, l, per_cat, &rl))
            failures++;
        for (int i = 0; i < nrules; i++)
            if (rules[i] == rl)
                hits[i]++;
    }
    fclose(fp);
    /* every shipped rule decides at least one real reply: a rule nothing
     * reaches is either dead (a rule above it wins) or untested */
    int unreached = 0;
    for (int i = 0; i < nrules; i++) {
        if (hits[i] == 0) {
            print_error("config/bounce-rules.conf:%d: no golden line reaches this rule\n",
                        rules[i]);
            unreached++;
        }
    }
    assert_int_equal(nrules, dlv_rules_nrules(dlv_rules_in_force())); /* the scan saw them all */
    free(rules);
    free(hits);
    if (failures > 0)
        fail_msg("%d of %d golden cases failed (lines above)", failures, cases);
    if (unreached > 0)
        fail_msg("%d of %d shipped rules have no golden line (lines above)", unreached, nrules);
    for (size_t i = 0; i < ARRAY_SIZE(categories); i++)
        if (per_cat[i] < 3)
            fail_msg("%s: category %s has %d examples, want at least 3", path, categories[i],
                     per_cat[i]);
    assert_true(cases >= 100);
}

/* ---------------------------------------------------------- the default */

static void test_default_is_shipped_file(void **state)
{
    (void)state;
    char path[1024];
    snprintf(path, sizeof(path), "%s/config/bounce-rules.conf", src_dir());
    size_t len;
    char *text = read_all(path, &len);
    const char *builtin = dlv_rules_default_text();
    if (strlen(builtin) != len || memcmp(builtin, text, len) != 0)
        fail_msg("the compiled-in rules differ from %s: rebuild (the build embeds it)", path);
    free(text);

    /* it loads, and loading the file by path gives the same set */
    char err[512] = "";
    dlv_rules_t *a = NULL, *b = NULL;
    void *shipped = (void *)shp_conf_shipped();
    assert_int_equal(dlv_rules_load(NULL, shp_provider_lookup, shipped, &a, err, sizeof(err)), 0);
    assert_int_equal(dlv_rules_load(path, shp_provider_lookup, shipped, &b, err, sizeof(err)), 0);
    assert_int_equal(dlv_rules_nrules(a), dlv_rules_nrules(b));
    assert_int_equal(dlv_rules_nproviders(a), 8);
    assert_true(dlv_rules_nrules(a) > 60);
    dlv_rules_free(a);
    dlv_rules_free(b);
}

/* -------------------------------------------------------- malformed files */

typedef struct {
    const char *name;
    const char *text;
    const char *want; /* prefix of the error */
} bad_case_t;

static const bad_case_t bad_cases[] = {
    {"syntax", "rule { category = other;\n", "r.conf:1: section \"rule\": \"{\" is never closed"},
    {"unknown top key", "\n\nrules { }", "r.conf:3: unknown key \"rules\""},
    {"unknown rule key", "rule {\n  category = other;\n  txt = 'x';\n}",
     "r.conf:3: rule: unknown key \"txt\""},
    {"no category", "\nrule { text = 'x'; }", "r.conf:2: rule: no category"},
    {"bad category", "rule {\n category = hard-bounce; }",
     "r.conf:2: rule: category: \"hard-bounce\" is not a bounce category"},
    {"bad regex", "rule {\n text = [\n 'ok',\n 'user (unknown' ];\n category = other; }",
     "r.conf:4: rule: text: bad regex 'user (unknown' at offset 13: missing closing parenthesis"},
    {"bad code", "rule { code = 250; category = other; }",
     "r.conf:1: rule: code: expected \"550\", \"55x\" or \"5xx\""},
    {"bad status", "\nrule { status = \"5.1\"; category = other; }",
     "r.conf:2: rule: status: expected an enhanced status"},
    {"bad status class", "rule { status = \"2.0.0\"; category = other; }",
     "r.conf:1: rule: status: expected an enhanced status"},
    {"bad action", "rule { category = other;\n action = drop; }",
     "r.conf:2: rule: action: expected \"bounce\" or \"default\", got \"drop\""},
    {"undefined provider", "rule {\n provider = gmail; category = other; }",
     "r.conf:2: rule: provider \"gmail\" is not defined"},
    {"twice", "rule { category = other;\n category = other; }",
     "r.conf:2: rule: \"category\" given twice"},
    {"provider no patterns", "providers {\n  p { }\n}", "r.conf:2: provider \"p\": needs domains"},
    {"provider bad key", "providers { p {\n domain = x; } }",
     "r.conf:2: provider \"p\": unknown key \"domain\""},
    {"provider twice", "providers { p { mx = a; }\n p { mx = b; } }",
     "r.conf:2: provider \"p\" is defined twice"},
    {"provider empty pattern", "providers { p {\n mx = [\"\"]; } }",
     "r.conf:2: provider \"p\": mx: empty pattern"},
};

static void test_malformed(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(bad_cases); i++) {
        const bad_case_t *c = &bad_cases[i];
        char err[512] = "";
        dlv_rules_t *r = NULL;
        int rc =
            dlv_rules_parse("r.conf", c->text, strlen(c->text), NULL, NULL, &r, err, sizeof(err));
        if (rc != SL_ECONFIG || r != NULL)
            fail_msg("case \"%s\": accepted", c->name);
        if (strncmp(err, c->want, strlen(c->want)) != 0)
            fail_msg("case \"%s\": error \"%s\", want \"%s...\"", c->name, err, c->want);
    }
    /* a file that is not there */
    char err[512] = "";
    dlv_rules_t *r = NULL;
    assert_int_equal(dlv_rules_load("/nonexistent/rules.conf", NULL, NULL, &r, err, sizeof(err)),
                     SL_ECONFIG);
    assert_string_equal(err, "/nonexistent/rules.conf: No such file or directory");
    assert_null(r);
}

/* ----------------------------------------------- providers and "bounce" */

static const char custom_rules[] =
    "providers {\n"
    "  acme { domains = [\"acme.example\", \"*.acme.example\"]; mx = [\"*.acmemx.net\"]; }\n"
    "}\n"
    "rule { provider = acme; code = 4xx; status = \"4.7.x\"; text = 'no such (user|person)';\n"
    "       category = bad-mailbox; action = bounce; }\n"
    "rule { code = [\"45x\", \"421\"]; text = '\\bfull\\b'; category = quota-issues; }\n"
    "rule { status = [\"x.1.1\"]; category = bad-mailbox; }\n";

static void test_provider_and_bounce(void **state)
{
    (void)state;
    char err[512] = "";
    dlv_rules_t *r = NULL;
    assert_int_equal(dlv_rules_parse("c.conf", custom_rules, strlen(custom_rules), NULL, NULL, &r,
                                     err, sizeof(err)),
                     0);
    assert_int_equal(dlv_rules_nproviders(r), 1);
    assert_int_equal(dlv_rules_nrules(r), 3);
    dlv_rule_hit_t v;
    memset(&v, 0, sizeof(v));

    /* by recipient domain (any case), by subdomain glob, by MX (trailing dot) */
    assert_true(dlv_rules_match(r, 451, "4.7.1", "No Such User here", "ACME.example", NULL, &v));
    assert_string_equal(v.h_category, "bad-mailbox");
    assert_true(v.h_bounce);
    assert_string_equal(v.h_provider, "acme");
    assert_string_equal(v.h_rule, "c.conf:4");
    assert_int_equal(dlv_result_for_verdict(451, &v), Q_OUT_BOUNCED);
    assert_true(dlv_rules_match(r, 450, "4.7.0", "no such person", "eu.acme.example", NULL, &v));
    assert_true(v.h_bounce);
    assert_true(dlv_rules_match(r, 450, "4.7.0", "no such person", "hosted.example",
                                "mx1.AcmeMX.net.", &v));
    assert_true(v.h_bounce);

    /* the MX host decides when it is known: acme's domain reached through
     * another host (a smart host, a static route) is not acme's reply */
    memset(&v, 0, sizeof(v));
    assert_false(dlv_rules_match(r, 451, "4.7.1", "no such user", "acme.example",
                                 "smarthost.example.net", &v));
    assert_null(v.h_category);

    /* another provider's reply: not this rule, so a 4xx stays soft */
    memset(&v, 0, sizeof(v));
    assert_false(
        dlv_rules_match(r, 451, "4.7.1", "no such user", "other.example", "mx.other.net", &v));
    assert_null(v.h_category);
    /* wrong status for the rule */
    assert_false(dlv_rules_match(r, 451, "4.2.0", "no such user", "acme.example", NULL, &v));
    /* a status whose class contradicts the code counts as x.0.0 */
    assert_false(dlv_rules_match(r, 451, "5.7.1", "no such user", "acme.example", NULL, &v));

    /* code patterns: 45x and 421 but not 552 */
    assert_true(dlv_rules_match(r, 452, NULL, "mailbox FULL", NULL, NULL, &v));
    assert_string_equal(v.h_category, "quota-issues");
    assert_false(v.h_bounce);
    assert_null(v.h_provider);
    assert_int_equal(dlv_result_for_verdict(452, &v), Q_OUT_DEFERRED);
    assert_true(dlv_rules_match(r, 421, "", "inbox full", NULL, NULL, &v));
    assert_false(dlv_rules_match(r, 552, "", "inbox full", NULL, NULL, &v));
    assert_false(dlv_rules_match(r, 452, "", "fullness", NULL, NULL, &v)); /* \b */

    /* status-only rule; never for 2xx or local failures */
    assert_true(dlv_rules_match(r, 550, "5.1.1", NULL, NULL, NULL, &v));
    assert_true(dlv_rules_match(r, 450, "4.1.1", "", NULL, NULL, &v));
    assert_false(dlv_rules_match(r, 250, "2.1.1", "ok", NULL, NULL, &v));
    assert_false(dlv_rules_match(r, 0, "4.1.1", "", NULL, NULL, &v));

    /* the decision: bounce only turns 4xx hard; 5xx and 2xx as the code says */
    dlv_rule_hit_t hard = {.h_category = "bad-mailbox", .h_bounce = true};
    dlv_rule_hit_t soft = {.h_category = "other", .h_bounce = false};
    assert_int_equal(dlv_result_for_verdict(450, &hard), Q_OUT_BOUNCED);
    assert_int_equal(dlv_result_for_verdict(421, &hard), Q_OUT_BOUNCED);
    assert_int_equal(dlv_result_for_verdict(450, &soft), Q_OUT_DEFERRED);
    assert_int_equal(dlv_result_for_verdict(550, &soft), Q_OUT_BOUNCED);
    assert_int_equal(dlv_result_for_verdict(250, &hard), Q_OUT_DELIVERED);
    assert_int_equal(dlv_result_for_verdict(0, &hard), Q_OUT_DEFERRED);
    assert_int_equal(dlv_result_for_verdict(450, NULL), Q_OUT_DEFERRED);
    dlv_rules_free(r);
}

/* A pathological pattern cannot hang a delivery thread: the match limit
 * turns it into "no match". */
static void test_match_limit(void **state)
{
    (void)state;
    const char *t = "rule { text = '^(a+)+$'; category = spam-related; }\n"
                    "rule { category = other; }\n";
    char err[512] = "";
    dlv_rules_t *r = NULL;
    assert_int_equal(dlv_rules_parse("m.conf", t, strlen(t), NULL, NULL, &r, err, sizeof(err)), 0);
    char text[64];
    memset(text, 'a', 40);
    text[40] = 'b';
    text[41] = '\0';
    dlv_rule_hit_t v;
    assert_true(dlv_rules_match(r, 550, "", text, NULL, NULL, &v));
    assert_string_equal(v.h_category, "other");
    dlv_rules_free(r);
}

/* ------------------------------------------------------------ installing */

static void test_install(void **state)
{
    (void)state;
    char path[] = "/tmp/sluice-rules-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *t = "rule { code = 5xx; text = 'custom words'; category = virus-related; }\n";
    assert_int_equal(write(fd, t, strlen(t)), (ssize_t)strlen(t));
    close(fd);

    cfg_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.c_dlv_bounce_rules = path;
    char err[512] = "";
    const dlv_rules_t *before = dlv_rules_in_force();
    assert_string_equal(dlv_classify(550, "5.1.1", "custom words"), "bad-mailbox");
    assert_int_equal(dlv_rules_install(&cfg, err, sizeof(err)), 0);
    assert_ptr_not_equal(dlv_rules_active(), before);
    assert_string_equal(dlv_classify(550, "5.1.1", "custom words"), "virus-related");
    /* what the custom file does not cover: the built-in table */
    dlv_rule_hit_t v;
    dlv_classify_reply(550, "5.1.1", "User unknown", NULL, NULL, &v);
    assert_string_equal(v.h_category, "bad-mailbox");
    assert_null(v.h_rule);

    /* a broken file: error with file:line, the active set stays */
    const dlv_rules_t *active = dlv_rules_active();
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("# broken\nrule { category = nonsense; }\n", f);
    fclose(f);
    assert_int_equal(dlv_rules_install(&cfg, err, sizeof(err)), SL_ECONFIG);
    char want[600];
    snprintf(want, sizeof(want), "%s:2: rule: category: \"nonsense\"", path);
    assert_true(strncmp(err, want, strlen(want)) == 0);
    assert_ptr_equal(dlv_rules_active(), active);
    unlink(path);

    /* "" = the built-in default again */
    cfg.c_dlv_bounce_rules = "";
    assert_int_equal(dlv_rules_install(&cfg, err, sizeof(err)), 0);
    assert_string_equal(dlv_classify(550, "5.1.1", "custom words"), "bad-mailbox");
    dlv_rules_shutdown();
    /* after shutdown the default comes back on demand */
    assert_string_equal(dlv_classify(550, "5.7.1", "Relay access denied"), "relaying-issues");
}

/* ------------------------------------------------------------ concurrency */

static void *classify_thread(void *arg)
{
    long *bad = arg;
    for (int i = 0; i < 3000; i++) {
        dlv_rule_hit_t v;
        dlv_classify_reply(i % 2 ? 550 : 421, i % 2 ? "5.5.0" : "4.7.0",
                           i % 2 ? "Requested action not taken: mailbox unavailable (S2017062302)"
                                 : "[TSS04] Messages from 192.0.2.1 temporarily deferred",
                           i % 2 ? "hotmail.com" : "yahoo.com", NULL, &v);
        if (strcmp(v.h_category, i % 2 ? "bad-mailbox" : "spam-related") != 0)
            (*bad)++;
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    dlv_rules_shutdown(); /* the first use races to build the default */
    pthread_t th[4];
    long bad[4] = {0};
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, classify_thread, &bad[i]), 0);
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(bad[i], 0);
    }
    dlv_rules_shutdown();
}

/* A rule's provider from the traffic shaping definitions: the shipped
 * providers.conf (google, by domain and by MX) and an operator's
 * delivery.shaping file (its own provider, and its google replacing the
 * shipped one), looked up in the shaping's own rule set; a broken shaping
 * file fails dlv_rules_install with its file:line. */
static void test_shaping_providers(void **state)
{
    (void)state;
    char err[512] = "";
    static const char rules[] =
        "rule { provider = google; text = 'shared def'; "
        "category = spam-related; }\n"
        "rule { provider = acme; text = 'acme words'; category = other; }\n";
    dlv_rules_t *r = NULL;
    /* shipped only: acme is unknown */
    void *shipped = (void *)shp_conf_shipped();
    assert_int_not_equal(dlv_rules_parse("r.conf", rules, strlen(rules), shp_provider_lookup,
                                         shipped, &r, err, sizeof(err)),
                         0);
    assert_non_null(strstr(err, "r.conf:2: rule: provider \"acme\" is not defined"));
    char path[] = "/tmp/rules-shaping-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    static const char shp[] = "providers {\n"
                              "  acme { domains = [\"acme.example\"]; mx = [\"*.acmemx.net\"]; }\n"
                              "  google { domains = [\"gmail.com\"]; }\n"
                              "}\n";
    assert_int_equal(write(fd, shp, strlen(shp)), (ssize_t)strlen(shp));
    close(fd);
    shp_conf_t *sc = NULL;
    assert_int_equal(shp_conf_load(path, &sc, err, sizeof(err)), 0);
    assert_int_equal(dlv_rules_parse("r.conf", rules, strlen(rules), shp_provider_lookup, sc, &r,
                                     err, sizeof(err)),
                     0);
    shp_conf_free(sc); /* the rules copied what they use */
    assert_int_equal(dlv_rules_nproviders(r), 2);
    dlv_rule_hit_t v;
    assert_true(dlv_rules_match(r, 550, "5.7.1", "acme words", NULL, "mx2.acmemx.net.", &v));
    assert_string_equal(v.h_provider, "acme");
    assert_true(dlv_rules_match(r, 550, "5.7.1", "shared def", "gmail.com", NULL, &v));
    assert_string_equal(v.h_provider, "google");
    /* the operator's google has no mx patterns: the shipped ones are gone */
    assert_false(dlv_rules_match(r, 550, "5.7.1", "shared def", "x.example", "a.l.google.com", &v));
    dlv_rules_free(r);
    /* shipped google: by MX too */
    assert_int_equal(dlv_rules_parse("r.conf", rules,
                                     strstr(rules, "rule { provider = acme") - rules,
                                     shp_provider_lookup, shipped, &r, err, sizeof(err)),
                     0);
    assert_true(dlv_rules_match(r, 550, "5.7.1", "shared def", "x.example", "a.l.google.com", &v));
    dlv_rules_free(r);
    /* through dlv_rules_install: the shaping file cfg names; a broken one
     * fails with its file:line and the active set stays */
    char rpath[] = "/tmp/rules-rules-XXXXXX";
    fd = mkstemp(rpath);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, rules, strlen(rules)), (ssize_t)strlen(rules));
    close(fd);
    cfg_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.c_dlv_bounce_rules = rpath;
    cfg.c_dlv_shaping = path;
    assert_int_equal(dlv_rules_install(&cfg, err, sizeof(err)), 0);
    dlv_rule_hit_t h;
    dlv_classify_reply(550, "5.7.1", "acme words", "acme.example", NULL, &h);
    assert_string_equal(h.h_category, "other");
    assert_string_equal(h.h_provider, "acme");
    const dlv_rules_t *active = dlv_rules_active();
    FILE *f = fopen(path, "w");
    fputs("providers {\n  acme { message_rate = \"x\"; }\n}\n", f);
    fclose(f);
    assert_int_not_equal(dlv_rules_install(&cfg, err, sizeof(err)), 0);
    char want[64];
    snprintf(want, sizeof(want), "%s:2", path);
    assert_non_null(strstr(err, want));
    assert_ptr_equal(dlv_rules_active(), active);
    unlink(path);
    unlink(rpath);
    dlv_rules_shutdown();
}

/* The regex cache: a pattern compiled for two rule sets is compiled once;
 * the last set to go takes it with it. */
static void test_regex_cache(void **state)
{
    (void)state;
    dlv_rules_shutdown();
    size_t base = rules_re_cached();
    const char *t = "rule { text = 'cache me (once|twice)'; category = other; }\n";
    char err[512] = "";
    dlv_rules_t *a = NULL, *b = NULL;
    assert_int_equal(dlv_rules_parse("a.conf", t, strlen(t), NULL, NULL, &a, err, sizeof(err)), 0);
    assert_int_equal(rules_re_cached(), base + 1);
    assert_int_equal(dlv_rules_parse("b.conf", t, strlen(t), NULL, NULL, &b, err, sizeof(err)), 0);
    assert_int_equal(rules_re_cached(), base + 1);
    /* a shaping rule with the same pattern: UTF-8 on its line, another entry */
    rules_re_t *re = NULL;
    assert_int_equal(rules_re_get("(?:cache me (once|twice))", RULES_RE_UTF, &re, err, sizeof(err)),
                     0);
    assert_int_equal(rules_re_cached(), base + 2);
    rules_re_put(re);
    dlv_rules_free(a);
    assert_int_equal(rules_re_cached(), base + 1);
    dlv_rule_hit_t v;
    assert_true(dlv_rules_match(b, 550, "", "Cache me TWICE", NULL, NULL, &v));
    dlv_rules_free(b);
    assert_int_equal(rules_re_cached(), base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden),
        cmocka_unit_test(test_default_is_shipped_file),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_provider_and_bounce),
        cmocka_unit_test(test_shaping_providers),
        cmocka_unit_test(test_regex_cache),
        cmocka_unit_test(test_match_limit),
        cmocka_unit_test(test_install),
        cmocka_unit_test(test_threads),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    dlv_rules_shutdown();
    return rc;
}
