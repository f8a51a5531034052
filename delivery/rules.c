/*
 * rules.c - the bounce classification rules engine: providers and ordered
 * rules read from a rules file (config syntax, docs/bounce-rules.md),
 * compiled once (PCRE2, JIT where available) into an immutable set that
 * every delivery thread matches replies against.
 *
 *   providers { gmail { domains = ["gmail.com"]; mx = ["*.google.com"]; } }
 *   rule { provider = gmail; code = 4xx; status = "4.2.2";
 *          text = 'out of storage'; category = quota-issues; action = bounce; }
 *
 * A rule's tests run cheapest first (provider, code, enhanced status, then
 * the regex); the first rule whose tests all pass wins. Patterns are
 * compiled once at load; a match allocates only its PCRE2 match data.
 *
 * Main functions: dlv_rules_parse/load/free (any thread), dlv_rules_match
 * (any thread), dlv_rules_install (main thread) / dlv_rules_active (any
 * thread). The judge (trouble.c) is what asks them about a reply.
 *
 * Ownership: a set owns its strings and compiled patterns. The active set
 * is published with an atomic pointer; a replaced set is kept on a list
 * until dlv_rules_shutdown(), because other threads may still hold it.
 */
#include "delivery/rules_int.h"
#include "delivery/shaping_int.h" /* the shaping providers, by name */

/* The rules file uses the config syntax (config.h's cfg_tree_parse) and
 * gets its "file:line" errors for free. */

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <ctype.h>
#include <errno.h>
#include <fnmatch.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define RULES_MAX_PROVIDERS 64   /* a provider set is a uint64_t bit mask */
#define RULES_MAX_CODES 8        /* code = [...] entries per rule */
#define RULES_MAX_STATUS 16      /* status = [...] entries per rule */
#define RULES_MAX_TEXT 4096      /* bytes of reply text the regexes see */
#define RULES_MATCH_LIMIT 200000 /* PCRE2 match limit: a bad pattern cannot spin */
#define RULES_MAX_FILE (4 << 20)

#define ST_ANY (-1)

typedef struct rules_provider {
    char *pv_name;
    char **pv_domains; /* lower-case glob patterns (rules_host_match) */
    int pv_ndomains;
    char **pv_mx;
    int pv_nmx;
} rules_provider_t;

typedef struct rules_rule {
    int ru_provider; /* index into rs_providers, -1 = any */
    int ru_ncodes;
    char ru_codes[RULES_MAX_CODES][4]; /* "550", "5xx", "45x" */
    int ru_nstatus;
    short ru_status[RULES_MAX_STATUS][3]; /* class, subject, detail; ST_ANY */
    pcre2_code *ru_re;                    /* NULL = any text */
    const char *ru_category;              /* static (dlv_category_lookup) */
    bool ru_bounce;
    char *ru_where; /* "file:line" */
} rules_rule_t;

struct dlv_rules {
    char *rs_name;
    rules_provider_t *rs_providers;
    int rs_nproviders;
    rules_rule_t *rs_rules;
    int rs_nrules;
    pcre2_match_context *rs_mctx; /* read-only while matching: shared */
    struct dlv_rules *rs_next;    /* retired list */
    /* while parsing: the traffic shaping's providers, where a rule's
     * provider not defined in the file is looked up (NULL: none yet; built
     * from rs_shaping_path on first need) */
    dlv_shaping_t *rs_defs;
    const char *rs_shaping_path;
    bool rs_defs_tried;
};

/* The process-wide active set and the sets it replaced. */
static _Atomic(dlv_rules_t *) rules_active;
static dlv_rules_t *rules_retired;
static pthread_mutex_t rules_lock = PTHREAD_MUTEX_INITIALIZER;

/* The shipped config/bounce-rules.conf, embedded at build time (generated
 * by delivery/embed_rules.cmake). */
extern const char dlv_rules_builtin_text[];

static int rules_strings(const cfg_node_t *n, const char *name, const char *what, char ***out,
                         int *nout, char *err, size_t errlen);
static int rules_providers(dlv_rules_t *rs, const cfg_node_t *sec, char *err, size_t errlen);
static int rules_rule(dlv_rules_t *rs, const cfg_node_t *sec, char *err, size_t errlen);
static int rules_code(const cfg_node_t *n, rules_rule_t *ru, const char *name, char *err,
                      size_t errlen);
static int rules_status(const cfg_node_t *n, rules_rule_t *ru, const char *name, char *err,
                        size_t errlen);
static int rules_regex(const dlv_rules_t *rs, const cfg_node_t *n, rules_rule_t *ru, char *err,
                       size_t errlen);
static uint64_t rules_provider_mask(const dlv_rules_t *rs, const char *domain, const char *mx);
static char *rules_host_pattern(const char *pat);

/* ---------------------------------------------------------------- loading */

/* A string or a list of strings into an owned array. */
static int rules_strings(const cfg_node_t *n, const char *name, const char *what, char ***out,
                         int *nout, char *err, size_t errlen)
{
    if (n->n_type == CFG_NODE_SECTION)
        return cfg_error(err, errlen, name, n->n_line, "%s: expected a string or a list", what);
    int cnt = 0;
    if (n->n_type == CFG_NODE_STR) {
        cnt = 1;
    } else {
        for (const cfg_node_t *c = n->n_child; c != NULL; c = c->n_next)
            cnt++;
    }
    if (cnt == 0)
        return cfg_error(err, errlen, name, n->n_line, "%s: empty list", what);
    char **v = xcalloc((size_t)cnt, sizeof(*v));
    int i = 0;
    if (n->n_type == CFG_NODE_STR) {
        v[i++] = xstrdup(n->n_str);
    } else {
        for (const cfg_node_t *c = n->n_child; c != NULL; c = c->n_next)
            v[i++] = xstrdup(c->n_str);
    }
    for (i = 0; i < cnt; i++) {
        if (v[i][0] == '\0') {
            for (int j = 0; j < cnt; j++)
                free(v[j]);
            free(v);
            return cfg_error(err, errlen, name, n->n_line, "%s: empty pattern", what);
        }
    }
    *out = v;
    *nout = cnt;
    return 0;
}

/* providers { name { domains = [...]; mx = [...]; } ... } */
static int rules_providers(dlv_rules_t *rs, const cfg_node_t *sec, char *err, size_t errlen)
{
    const char *name = rs->rs_name;
    if (sec->n_type != CFG_NODE_SECTION)
        return cfg_error(err, errlen, name, sec->n_line, "providers: expected a section");
    for (const cfg_node_t *p = sec->n_child; p != NULL; p = p->n_next) {
        if (p->n_type != CFG_NODE_SECTION)
            return cfg_error(err, errlen, name, p->n_key_line,
                             "provider \"%s\": expected a section { domains = [...]; mx = "
                             "[...]; }",
                             p->n_key);
        for (int i = 0; i < rs->rs_nproviders; i++)
            if (strcasecmp(rs->rs_providers[i].pv_name, p->n_key) == 0)
                return cfg_error(err, errlen, name, p->n_key_line,
                                 "provider \"%s\" is defined twice", p->n_key);
        if (rs->rs_nproviders >= RULES_MAX_PROVIDERS)
            return cfg_error(err, errlen, name, p->n_key_line, "more than %d providers",
                             RULES_MAX_PROVIDERS);
        rs->rs_providers =
            xrealloc(rs->rs_providers, (size_t)(rs->rs_nproviders + 1) * sizeof(*rs->rs_providers));
        rules_provider_t *pv = &rs->rs_providers[rs->rs_nproviders++];
        memset(pv, 0, sizeof(*pv));
        pv->pv_name = xstrdup(p->n_key);
        for (const cfg_node_t *k = p->n_child; k != NULL; k = k->n_next) {
            char what[160];
            snprintf(what, sizeof(what), "provider \"%s\": %s", p->n_key, k->n_key);
            char ***dst;
            int *ndst;
            if (strcmp(k->n_key, "domains") == 0) {
                dst = &pv->pv_domains;
                ndst = &pv->pv_ndomains;
            } else if (strcmp(k->n_key, "mx") == 0) {
                dst = &pv->pv_mx;
                ndst = &pv->pv_nmx;
            } else {
                return cfg_error(err, errlen, name, k->n_key_line,
                                 "provider \"%s\": unknown key \"%s\" (domains, mx)", p->n_key,
                                 k->n_key);
            }
            if (*dst != NULL)
                return cfg_error(err, errlen, name, k->n_key_line, "%s: given twice", what);
            if (rules_strings(k, name, what, dst, ndst, err, errlen) < 0)
                return SL_ECONFIG;
            for (int j = 0; j < *ndst; j++) {
                char *pat = rules_host_pattern((*dst)[j]);
                free((*dst)[j]);
                (*dst)[j] = pat;
            }
        }
        if (pv->pv_ndomains == 0 && pv->pv_nmx == 0)
            return cfg_error(err, errlen, name, p->n_line,
                             "provider \"%s\": needs domains or mx patterns", p->n_key);
    }
    return 0;
}

/* "550", "5xx", "45x": three characters, digits or x, class 4 or 5. */
static int rules_code(const cfg_node_t *n, rules_rule_t *ru, const char *name, char *err,
                      size_t errlen)
{
    char **v = NULL;
    int nv = 0;
    if (rules_strings(n, name, "rule: code", &v, &nv, err, errlen) < 0)
        return SL_ECONFIG;
    int rc = 0;
    if (nv > RULES_MAX_CODES) {
        rc = cfg_error(err, errlen, name, n->n_line, "rule: code: more than %d codes",
                       RULES_MAX_CODES);
        goto out;
    }
    for (int i = 0; i < nv; i++) {
        const char *s = v[i];
        bool ok = strlen(s) == 3 && (s[0] == '4' || s[0] == '5');
        for (int j = 1; ok && j < 3; j++)
            ok = (s[j] >= '0' && s[j] <= '9') || s[j] == 'x' || s[j] == 'X';
        if (!ok) {
            rc = cfg_error(err, errlen, name, n->n_line,
                           "rule: code: expected \"550\", \"55x\" or \"5xx\" (4xx or 5xx), "
                           "got \"%.40s\"",
                           s);
            goto out;
        }
        for (int j = 0; j < 3; j++)
            ru->ru_codes[i][j] = (s[j] == 'X') ? 'x' : s[j];
        ru->ru_codes[i][3] = '\0';
    }
    ru->ru_ncodes = nv;
out:
    for (int i = 0; i < nv; i++)
        free(v[i]);
    free(v);
    return rc;
}

/* One part of an enhanced status pattern: 0..999 or "x" / "*". */
static bool rules_status_part(const char *s, size_t len, short *out)
{
    if (len == 1 && (s[0] == 'x' || s[0] == 'X' || s[0] == '*')) {
        *out = ST_ANY;
        return true;
    }
    if (len == 0 || len > 3)
        return false;
    int v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = (short)v;
    return true;
}

/* "5.1.1", "x.1.1", "5.7.x", "x.0.0": RFC 3463 class.subject.detail. */
static int rules_status(const cfg_node_t *n, rules_rule_t *ru, const char *name, char *err,
                        size_t errlen)
{
    char **v = NULL;
    int nv = 0;
    if (rules_strings(n, name, "rule: status", &v, &nv, err, errlen) < 0)
        return SL_ECONFIG;
    int rc = 0;
    if (nv > RULES_MAX_STATUS) {
        rc = cfg_error(err, errlen, name, n->n_line, "rule: status: more than %d patterns",
                       RULES_MAX_STATUS);
        goto out;
    }
    for (int i = 0; i < nv; i++) {
        const char *s = v[i];
        const char *d1 = strchr(s, '.');
        const char *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
        short *st = ru->ru_status[i];
        bool ok = d2 != NULL && rules_status_part(s, (size_t)(d1 - s), &st[0]) &&
                  rules_status_part(d1 + 1, (size_t)(d2 - d1 - 1), &st[1]) &&
                  rules_status_part(d2 + 1, strlen(d2 + 1), &st[2]) &&
                  (st[0] == ST_ANY || st[0] == 4 || st[0] == 5);
        if (!ok) {
            rc = cfg_error(err, errlen, name, n->n_line,
                           "rule: status: expected an enhanced status like \"5.1.1\", "
                           "\"x.1.1\" or \"5.7.x\", got \"%.40s\"",
                           s);
            goto out;
        }
    }
    ru->ru_nstatus = nv;
out:
    for (int i = 0; i < nv; i++)
        free(v[i]);
    free(v);
    return rc;
}

/* text = 're' or ['re1', 're2']: each is checked on its own (so an error
 * names it), then all are compiled as one alternation. */
static int rules_regex(const dlv_rules_t *rs, const cfg_node_t *n, rules_rule_t *ru, char *err,
                       size_t errlen)
{
    const char *name = rs->rs_name;
    char **v = NULL;
    int nv = 0;
    if (rules_strings(n, name, "rule: text", &v, &nv, err, errlen) < 0)
        return SL_ECONFIG;
    const uint32_t opts = PCRE2_CASELESS | PCRE2_NO_UTF_CHECK;
    int rc = 0;
    buf_t all;
    buf_init(&all, 256);
    const cfg_node_t *item = n->n_type == CFG_NODE_LIST ? n->n_child : n;
    for (int i = 0; i < nv; i++, item = item ? item->n_next : NULL) {
        int ec;
        PCRE2_SIZE eo;
        pcre2_code *re =
            pcre2_compile((PCRE2_SPTR)v[i], PCRE2_ZERO_TERMINATED, opts, &ec, &eo, NULL);
        if (re == NULL) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(ec, msg, sizeof(msg));
            rc = cfg_error(err, errlen, name, item ? item->n_line : n->n_line,
                           "rule: text: bad regex '%.60s' at offset %zu: %s", v[i], (size_t)eo,
                           (const char *)msg);
            goto out;
        }
        pcre2_code_free(re);
        buf_printf(&all, "%s(?:%s)", i ? "|" : "", v[i]);
    }
    buf_append(&all, "", 1);
    int ec;
    PCRE2_SIZE eo;
    ru->ru_re = pcre2_compile((PCRE2_SPTR)all.b_data, PCRE2_ZERO_TERMINATED, opts, &ec, &eo, NULL);
    if (ru->ru_re == NULL) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof(msg));
        rc = cfg_error(err, errlen, name, n->n_line, "rule: text: %s", (const char *)msg);
        goto out;
    }
    /* JIT where the platform has it; pcre2_match() uses it by itself, and
     * falls back to the interpreter when it failed. */
    (void)pcre2_jit_compile(ru->ru_re, PCRE2_JIT_COMPLETE);
out:
    buf_free(&all);
    for (int i = 0; i < nv; i++)
        free(v[i]);
    free(v);
    return rc;
}

/* A provider of the traffic shaping named name, copied into rs (its
 * domain and MX patterns): 0 (also when there is none), or SL_ECONFIG when
 * the shaping file does not load. */
static int rules_shaping_provider(dlv_rules_t *rs, const char *pname, char *err, size_t errlen)
{
    if (!rs->rs_defs_tried) {
        rs->rs_defs_tried = true;
        if (dlv_shaping_new(rs->rs_shaping_path, NULL, NULL, &rs->rs_defs, err, errlen) != 0)
            return SL_ECONFIG;
    }
    if (rs->rs_defs == NULL)
        return 0;
    const shp_prule_t *pr = NULL;
    for (int i = 0; i < rs->rs_defs->sh_nprules && pr == NULL; i++)
        if (strcasecmp(rs->rs_defs->sh_prules[i].pr_name, pname) == 0)
            pr = &rs->rs_defs->sh_prules[i];
    if (pr == NULL || (pr->pr_ndomains == 0 && pr->pr_nmx == 0))
        return 0;
    if (rs->rs_nproviders >= RULES_MAX_PROVIDERS)
        return cfg_error(err, errlen, rs->rs_name, 0, "more than %d providers",
                         RULES_MAX_PROVIDERS);
    rs->rs_providers =
        xrealloc(rs->rs_providers, (size_t)(rs->rs_nproviders + 1) * sizeof(*rs->rs_providers));
    rules_provider_t *pv = &rs->rs_providers[rs->rs_nproviders++];
    memset(pv, 0, sizeof(*pv));
    pv->pv_name = xstrdup(pr->pr_name);
    pv->pv_ndomains = pr->pr_ndomains;
    pv->pv_domains = xcalloc((size_t)pr->pr_ndomains + 1, sizeof(char *));
    for (int j = 0; j < pr->pr_ndomains; j++)
        pv->pv_domains[j] = rules_host_pattern(pr->pr_domains[j]);
    pv->pv_nmx = pr->pr_nmx;
    pv->pv_mx = xcalloc((size_t)pr->pr_nmx + 1, sizeof(char *));
    for (int j = 0; j < pr->pr_nmx; j++)
        pv->pv_mx[j] = rules_host_pattern(pr->pr_mx[j]);
    return 0;
}

/* rule { provider; code; status; text; category; action; } */
static int rules_rule(dlv_rules_t *rs, const cfg_node_t *sec, char *err, size_t errlen)
{
    const char *name = rs->rs_name;
    if (sec->n_type != CFG_NODE_SECTION)
        return cfg_error(err, errlen, name, sec->n_line, "rule: expected a section { ... }");
    rs->rs_rules = xrealloc(rs->rs_rules, (size_t)(rs->rs_nrules + 1) * sizeof(*rs->rs_rules));
    rules_rule_t *ru = &rs->rs_rules[rs->rs_nrules++];
    memset(ru, 0, sizeof(*ru));
    ru->ru_provider = -1;
    char where[300];
    snprintf(where, sizeof(where), "%s:%d", name, sec->n_key_line);
    ru->ru_where = xstrdup(where);

    static const char *const keys[] = {"provider", "code", "status", "text", "category", "action"};
    const cfg_node_t *seen[ARRAY_SIZE(keys)] = {0};
    for (const cfg_node_t *k = sec->n_child; k != NULL; k = k->n_next) {
        size_t i;
        for (i = 0; i < ARRAY_SIZE(keys); i++)
            if (strcmp(k->n_key, keys[i]) == 0)
                break;
        if (i == ARRAY_SIZE(keys))
            return cfg_error(err, errlen, name, k->n_key_line,
                             "rule: unknown key \"%s\" (provider, code, status, text, "
                             "category, action)",
                             k->n_key);
        if (seen[i] != NULL)
            return cfg_error(err, errlen, name, k->n_key_line, "rule: \"%s\" given twice",
                             k->n_key);
        seen[i] = k;
    }
    const cfg_node_t *k;
    if ((k = seen[0]) != NULL) { /* provider */
        if (k->n_type != CFG_NODE_STR)
            return cfg_error(err, errlen, name, k->n_line, "rule: provider: expected a name");
        for (int i = 0; i < rs->rs_nproviders; i++)
            if (strcasecmp(rs->rs_providers[i].pv_name, k->n_str) == 0)
                ru->ru_provider = i;
        if (ru->ru_provider < 0 && rules_shaping_provider(rs, k->n_str, err, errlen) < 0)
            return SL_ECONFIG;
        for (int i = 0; ru->ru_provider < 0 && i < rs->rs_nproviders; i++)
            if (strcasecmp(rs->rs_providers[i].pv_name, k->n_str) == 0)
                ru->ru_provider = i;
        if (ru->ru_provider < 0)
            return cfg_error(err, errlen, name, k->n_line,
                             "rule: provider \"%.60s\" is not defined in providers { } nor "
                             "in the traffic shaping providers (config/providers.conf, "
                             "delivery.shaping)",
                             k->n_str);
    }
    if ((k = seen[1]) != NULL && rules_code(k, ru, name, err, errlen) < 0)
        return SL_ECONFIG;
    if ((k = seen[2]) != NULL && rules_status(k, ru, name, err, errlen) < 0)
        return SL_ECONFIG;
    if ((k = seen[3]) != NULL && rules_regex(rs, k, ru, err, errlen) < 0)
        return SL_ECONFIG;
    if ((k = seen[4]) == NULL)
        return cfg_error(err, errlen, name, sec->n_key_line, "rule: no category");
    if (k->n_type != CFG_NODE_STR || (ru->ru_category = dlv_category_lookup(k->n_str)) == NULL)
        return cfg_error(err, errlen, name, k->n_line,
                         "rule: category: \"%.60s\" is not a bounce category (bad-mailbox, "
                         "spam-related, ... see docs/bounce-rules.md)",
                         k->n_type == CFG_NODE_STR ? k->n_str : "");
    if ((k = seen[5]) != NULL) { /* action */
        if (k->n_type == CFG_NODE_STR && strcmp(k->n_str, "bounce") == 0)
            ru->ru_bounce = true;
        else if (k->n_type != CFG_NODE_STR || strcmp(k->n_str, "default") != 0)
            return cfg_error(err, errlen, name, k->n_line,
                             "rule: action: expected \"bounce\" or \"default\", got \"%.40s\"",
                             k->n_type == CFG_NODE_STR ? k->n_str : "");
    }
    return 0;
}

int dlv_rules_parse(const char *name, const char *text, size_t len, dlv_rules_t **out, char *err,
                    size_t errlen)
{
    return dlv_rules_parse_with(name, text, len, NULL, out, err, errlen);
}

int dlv_rules_parse_with(const char *name, const char *text, size_t len, const char *shaping_path,
                         dlv_rules_t **out, char *err, size_t errlen)
{
    cfg_node_t *root = NULL;
    dlv_rules_t *rs = xcalloc(1, sizeof(*rs));
    rs->rs_name = xstrdup(name);
    rs->rs_shaping_path = shaping_path;
    if (cfg_tree_parse(name, text, len, &root, err, errlen) < 0)
        goto fail;
    /* providers first, wherever they are: rules refer to them by name */
    for (const cfg_node_t *n = root->n_child; n != NULL; n = n->n_next) {
        if (strcmp(n->n_key, "providers") == 0) {
            if (rules_providers(rs, n, err, errlen) < 0)
                goto fail;
        } else if (strcmp(n->n_key, "rule") != 0) {
            cfg_error(err, errlen, name, n->n_key_line,
                      "unknown key \"%s\" (a rules file holds providers { } and rule { })",
                      n->n_key);
            goto fail;
        }
    }
    for (const cfg_node_t *n = root->n_child; n != NULL; n = n->n_next)
        if (strcmp(n->n_key, "rule") == 0 && rules_rule(rs, n, err, errlen) < 0)
            goto fail;
    rs->rs_mctx = pcre2_match_context_create(NULL);
    pcre2_set_match_limit(rs->rs_mctx, RULES_MATCH_LIMIT);
    cfg_tree_free(root);
    dlv_shaping_free(rs->rs_defs);
    rs->rs_defs = NULL;
    rs->rs_shaping_path = NULL;
    *out = rs;
    return 0;
fail:
    cfg_tree_free(root);
    dlv_rules_free(rs);
    return SL_ECONFIG;
}

int dlv_rules_load(const char *path, dlv_rules_t **out, char *err, size_t errlen)
{
    return dlv_rules_load_with(path, NULL, out, err, errlen);
}

int dlv_rules_load_with(const char *path, const char *shaping_path, dlv_rules_t **out, char *err,
                        size_t errlen)
{
    if (path == NULL || path[0] == '\0') {
        const char *t = dlv_rules_default_text();
        return dlv_rules_parse_with("bounce-rules.conf (built-in)", t, strlen(t), shaping_path, out,
                                    err, errlen);
    }
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return SL_ECONFIG;
    }
    buf_t b;
    buf_init(&b, 16384);
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (b.b_len + n > RULES_MAX_FILE) {
            fclose(f);
            buf_free(&b);
            snprintf(err, errlen, "%s: larger than %d bytes", path, RULES_MAX_FILE);
            return SL_ECONFIG;
        }
        buf_append(&b, chunk, n);
    }
    bool bad = ferror(f);
    fclose(f);
    if (bad) {
        buf_free(&b);
        snprintf(err, errlen, "%s: read error", path);
        return SL_ECONFIG;
    }
    int rc = dlv_rules_parse_with(path, b.b_data ? b.b_data : "", b.b_len, shaping_path, out, err,
                                  errlen);
    buf_free(&b);
    return rc;
}

void dlv_rules_free(dlv_rules_t *r)
{
    if (r == NULL)
        return;
    dlv_shaping_free(r->rs_defs);
    for (int i = 0; i < r->rs_nproviders; i++) {
        rules_provider_t *pv = &r->rs_providers[i];
        for (int j = 0; j < pv->pv_ndomains; j++)
            free(pv->pv_domains[j]);
        for (int j = 0; j < pv->pv_nmx; j++)
            free(pv->pv_mx[j]);
        free(pv->pv_domains);
        free(pv->pv_mx);
        free(pv->pv_name);
    }
    for (int i = 0; i < r->rs_nrules; i++) {
        pcre2_code_free(r->rs_rules[i].ru_re);
        free(r->rs_rules[i].ru_where);
    }
    pcre2_match_context_free(r->rs_mctx);
    free(r->rs_providers);
    free(r->rs_rules);
    free(r->rs_name);
    free(r);
}

int dlv_rules_nproviders(const dlv_rules_t *r)
{
    return r->rs_nproviders;
}

int dlv_rules_nrules(const dlv_rules_t *r)
{
    return r->rs_nrules;
}

const char *dlv_rules_default_text(void)
{
    return dlv_rules_builtin_text;
}

/* --------------------------------------------------------------- matching */

/* A host pattern is stored lower-case behind one kind byte, so that the
 * common shapes match without fnmatch: 'e' "gmail.com" (exact), 's'
 * "*.google.com" (any subdomain), 'g' anything else (fnmatch). */
static char *rules_host_pattern(const char *pat)
{
    size_t n = strlen(pat);
    char *p = xmalloc(n + 2);
    for (size_t i = 0; i <= n; i++)
        p[i + 1] = (char)tolower((unsigned char)pat[i]);
    bool glob = strpbrk(pat, "*?[\\") != NULL;
    p[0] = !glob ? 'e' : (pat[0] == '*' && pat[1] == '.' && !strpbrk(pat + 1, "*?[\\")) ? 's' : 'g';
    return p;
}

/* h: lower-case host name of len bytes. */
static bool rules_host_match(char *const *pats, int n, const char *h, size_t len)
{
    if (len == 0)
        return false;
    for (int i = 0; i < n; i++) {
        const char *p = pats[i];
        switch (p[0]) {
        case 'e':
            if (strcmp(p + 1, h) == 0)
                return true;
            break;
        case 's': {
            size_t pl = strlen(p + 2); /* ".suffix" */
            if (len > pl && memcmp(h + len - pl, p + 2, pl) == 0)
                return true;
            break;
        }
        default:
            if (fnmatch(p + 1, h, 0) == 0)
                return true;
        }
    }
    return false;
}

/* Lower-case copy of a host name without its trailing dot; its length, or
 * 0 when there is none (or it is too long to be one). */
static size_t rules_host_lower(const char *host, char out[256])
{
    size_t len = host ? strlen(host) : 0;
    while (len > 0 && host[len - 1] == '.')
        len--;
    if (len == 0 || len >= 256)
        return 0;
    for (size_t i = 0; i < len; i++)
        out[i] = (char)tolower((unsigned char)host[i]);
    out[len] = '\0';
    return len;
}

/* Bit i set: the reply is provider i's. A provider's rules describe what
 * its own servers say, so when the MX host that answered is known and the
 * provider lists MX patterns, that host decides: a gmail.com recipient
 * reached through a smart host or a static route gets the generic rules,
 * a Google Workspace domain (MX *.google.com) gets Google's. The recipient
 * domain decides when the host is unknown, or for a provider defined by
 * domains only. */
static uint64_t rules_provider_mask(const dlv_rules_t *rs, const char *domain, const char *mx)
{
    char d[256], m[256];
    size_t dlen = rules_host_lower(domain, d);
    size_t mlen = rules_host_lower(mx, m);
    uint64_t mask = 0;
    for (int i = 0; i < rs->rs_nproviders; i++) {
        const rules_provider_t *pv = &rs->rs_providers[i];
        bool hit = mlen > 0 && pv->pv_nmx > 0
                       ? rules_host_match(pv->pv_mx, pv->pv_nmx, m, mlen)
                       : rules_host_match(pv->pv_domains, pv->pv_ndomains, d, dlen);
        if (hit)
            mask |= (uint64_t)1 << i;
    }
    return mask;
}

/* The host of a connection-level failure's text, "host[ip]:port phase: ..."
 * (session.c writes it for a refused greeting, EHLO or HELO, whose caller
 * has no MX host to give): its length, 0 when text does not start so. */
size_t dlv_rules_text_host(const char *text, char out[256])
{
    if (text == NULL)
        return 0;
    size_t n = strcspn(text, "[ ");
    if (n == 0 || n >= 256 || text[n] != '[')
        return 0;
    const char *close = strchr(text + n, ']');
    if (close == NULL || close[1] != ':' || !isdigit((unsigned char)close[2]))
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)text[i];
        if (!isalnum(c) && c != '.' && c != '-' && c != '_' && c != ':')
            return 0;
    }
    memcpy(out, text, n);
    out[n] = '\0';
    return n;
}

/* "c.sss.ddd" of at most 3 digits a part, its class equal to cls. */
static bool rules_status_parse(const char *s, int cls, int st[3])
{
    if (s == NULL || s[0] != '0' + cls || s[1] != '.')
        return false;
    s += 2;
    for (int part = 1; part < 3; part++) {
        int v = 0, n = 0;
        while (*s >= '0' && *s <= '9' && n < 4) {
            v = v * 10 + (*s++ - '0');
            n++;
        }
        if (n == 0 || n > 3 || *s != (part == 1 ? '.' : '\0'))
            return false;
        st[part] = v;
        s++;
    }
    st[0] = cls;
    return true;
}

static bool rules_code_match(const rules_rule_t *ru, const char code[4])
{
    for (int i = 0; i < ru->ru_ncodes; i++) {
        const char *p = ru->ru_codes[i];
        if ((p[0] == code[0]) && (p[1] == 'x' || p[1] == code[1]) &&
            (p[2] == 'x' || p[2] == code[2]))
            return true;
    }
    return false;
}

static bool rules_status_match(const rules_rule_t *ru, const int st[3])
{
    for (int i = 0; i < ru->ru_nstatus; i++) {
        const short *p = ru->ru_status[i];
        if ((p[0] == ST_ANY || p[0] == st[0]) && (p[1] == ST_ANY || p[1] == st[1]) &&
            (p[2] == ST_ANY || p[2] == st[2]))
            return true;
    }
    return false;
}

bool dlv_rules_match(const dlv_rules_t *r, int code, const char *status, const char *text,
                     const char *domain, const char *mx, dlv_rule_hit_t *out)
{
    if (r == NULL || code < 400 || code > 599)
        return false;
    const char codes[4] = {(char)('0' + code / 100), (char)('0' + code / 10 % 10),
                           (char)('0' + code % 10), '\0'};
    /* the status the outcome carries (dlv_status_for_reply): its own when
     * its class agrees with the code, else x.0.0 */
    int st[3] = {code / 100, 0, 0};
    if (!rules_status_parse(status, code / 100, st)) {
        st[1] = 0;
        st[2] = 0;
    }
    if (text == NULL)
        text = "";
    size_t tlen = strnlen(text, RULES_MAX_TEXT);

    uint64_t pmask = 0;
    bool pmask_done = false;
    pcre2_match_data *md = NULL;
    bool hit = false;
    for (int i = 0; i < r->rs_nrules && !hit; i++) {
        const rules_rule_t *ru = &r->rs_rules[i];
        if (ru->ru_provider >= 0) {
            if (!pmask_done) {
                pmask = rules_provider_mask(r, domain, mx);
                pmask_done = true;
            }
            if (!(pmask & ((uint64_t)1 << ru->ru_provider)))
                continue;
        }
        if (ru->ru_ncodes > 0 && !rules_code_match(ru, codes))
            continue;
        if (ru->ru_nstatus > 0 && !rules_status_match(ru, st))
            continue;
        if (ru->ru_re != NULL) {
            if (md == NULL)
                md = pcre2_match_data_create(1, NULL);
            /* >= 0 is a match (0: the ovector was too small, which is fine);
             * no match and errors (match limit) alike mean "not this rule" */
            if (pcre2_match(ru->ru_re, (PCRE2_SPTR)text, tlen, 0, 0, md, r->rs_mctx) < 0)
                continue;
        }
        out->h_category = ru->ru_category;
        out->h_bounce = ru->ru_bounce;
        out->h_rule = ru->ru_where;
        out->h_provider = ru->ru_provider >= 0 ? r->rs_providers[ru->ru_provider].pv_name : NULL;
        hit = true;
    }
    pcre2_match_data_free(md);
    return hit;
}

/* ------------------------------------------------------------ active set */

const dlv_rules_t *dlv_rules_active(void)
{
    dlv_rules_t *r = atomic_load_explicit(&rules_active, memory_order_acquire);
    if (LIKELY(r != NULL))
        return r;
    pthread_mutex_lock(&rules_lock);
    r = atomic_load_explicit(&rules_active, memory_order_relaxed);
    if (r == NULL) {
        char err[512];
        if (dlv_rules_load(NULL, &r, err, sizeof(err)) != 0) {
            /* the shipped file is checked by the unit tests: a bug */
            log_error("delivery: built-in bounce rules: %s", err);
            abort();
        }
        atomic_store_explicit(&rules_active, r, memory_order_release);
    }
    pthread_mutex_unlock(&rules_lock);
    return r;
}

int dlv_rules_install(const cfg_t *cfg, char *err, size_t errlen)
{
    const char *path = cfg ? cfg->c_dlv_bounce_rules : NULL;
    dlv_rules_t *r = NULL;
    if (dlv_rules_load_with(path, cfg ? cfg->c_dlv_shaping : NULL, &r, err, errlen) != 0)
        return SL_ECONFIG;
    log_info("delivery: bounce rules %s: %d providers, %d rules", r->rs_name, r->rs_nproviders,
             r->rs_nrules);
    pthread_mutex_lock(&rules_lock);
    dlv_rules_t *old = atomic_exchange_explicit(&rules_active, r, memory_order_acq_rel);
    if (old != NULL) {
        old->rs_next = rules_retired;
        rules_retired = old;
    }
    pthread_mutex_unlock(&rules_lock);
    return 0;
}

void dlv_rules_shutdown(void)
{
    pthread_mutex_lock(&rules_lock);
    dlv_rules_free(atomic_exchange_explicit(&rules_active, NULL, memory_order_acq_rel));
    while (rules_retired != NULL) {
        dlv_rules_t *next = rules_retired->rs_next;
        dlv_rules_free(rules_retired);
        rules_retired = next;
    }
    pthread_mutex_unlock(&rules_lock);
}
