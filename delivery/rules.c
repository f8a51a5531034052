/*
 * rules.c - the one rule engine: the matcher that the bounce rules and the
 * traffic shaping's response rules share, and the bounce rules themselves.
 *
 * The matcher (rules_int.h, first half):
 *   - host patterns ("gmail.com", "*.google.com", globs): compiled once,
 *     lower case behind a kind byte, so that the common shapes match
 *     without fnmatch; the providers of both engines are made of them;
 *   - regexes: PCRE2, caseless, JIT where available, compiled through one
 *     process-wide cache (the same pattern is compiled once, however many
 *     rule sets and reloads use it) and matched under one match limit;
 *   - reply tests: code patterns, RFC 3463 status patterns and a regex on
 *     the text or on the "CODE STATUS TEXT" line, cheapest first.
 *
 * The bounce rules: providers and ordered rules read from a rules file
 * (config syntax, docs/bounce-rules.md), compiled into an immutable set
 * that every delivery thread matches replies against:
 *
 *   providers { gmail { domains = ["gmail.com"]; mx = ["*.google.com"]; } }
 *   rule { provider = gmail; code = 4xx; status = "4.2.2";
 *          text = 'out of storage'; category = quota-issues; action = bounce; }
 *
 * A rule's provider the file does not define is one of the traffic
 * shaping's, looked up through the caller's dlv_rules_lookup_fn (this file
 * calls nothing of the shaping: the shaping calls it).
 *
 * Main functions: rules_hosts_*, rules_re_*, rules_test_* (the matcher);
 * dlv_rules_parse/load/free, dlv_rules_match, dlv_rules_set/active.
 *
 * Thread: any. A set owns its strings and holds references on its
 * regexes. The active set is published with an atomic pointer; a replaced
 * set is kept on a list until dlv_rules_shutdown(), because other threads
 * may still hold it. The regex cache has its own mutex (compile time only).
 */
#include "delivery/rules_int.h"

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
#define RULES_MAX_TEXT 4096      /* bytes of reply text the bounce regexes see */
#define RULES_MATCH_LIMIT 200000 /* PCRE2 match limit: a bad pattern cannot spin */
#define RULES_MAX_FILE (4 << 20)

#define ST_ANY (-1)

typedef struct rules_rule {
    int ru_provider; /* index into rs_providers, -1 = any */
    rules_test_t ru_test;
    const char *ru_category; /* static (dlv_category_lookup) */
    bool ru_bounce;
    char *ru_where; /* "file:line" */
} rules_rule_t;

struct dlv_rules {
    char *rs_name;
    rules_provider_t *rs_providers;
    int rs_nproviders;
    rules_rule_t *rs_rules;
    int rs_nrules;
    struct dlv_rules *rs_next; /* retired list */
    /* while parsing: where a provider not defined in the file is found */
    dlv_rules_lookup_fn rs_lookup;
    void *rs_lookup_arg;
};

struct rules_re {
    struct rules_re *re_next; /* the cache's list */
    pcre2_code *re_code;
    int re_flags;
    int re_refs; /* re_lock */
    char re_pat[];
};

/* The process-wide active set and the sets it replaced. */
static _Atomic(dlv_rules_t *) rules_active;
static dlv_rules_t *rules_retired;
static pthread_mutex_t rules_lock = PTHREAD_MUTEX_INITIALIZER;

/* The regex cache and the match context every match uses (read-only once
 * made: shared). */
static struct rules_re *re_cache;
static size_t re_ncached;
static pthread_mutex_t re_lock = PTHREAD_MUTEX_INITIALIZER;
static pcre2_match_context *re_mctx;
static pthread_once_t re_mctx_once = PTHREAD_ONCE_INIT;

/* The shipped config/bounce-rules.conf, embedded at build time (generated
 * by delivery/embed_text.cmake). */
extern const char dlv_rules_builtin_text[];

static int rules_strings(const cfg_node_t *n, const char *name, const char *what, char ***out,
                         int *nout, char *err, size_t errlen);
static int rules_providers(dlv_rules_t *rs, const cfg_node_t *sec, char *err, size_t errlen);
static int rules_rule(dlv_rules_t *rs, const cfg_node_t *sec, char *err, size_t errlen);
static uint64_t rules_provider_mask(const dlv_rules_t *rs, const char *domain, const char *mx);

/* ========================================================== host patterns */

/* A host pattern is stored lower-case behind one kind byte, so that the
 * common shapes match without fnmatch: 'e' "gmail.com" (exact), 's'
 * "*.google.com" (any subdomain), 'g' anything else (fnmatch). */
void rules_hosts_add(rules_hosts_t *h, const char *pat)
{
    size_t n = strlen(pat);
    char *p = xmalloc(n + 2);
    for (size_t i = 0; i <= n; i++)
        p[i + 1] = (char)tolower((unsigned char)pat[i]);
    bool glob = strpbrk(pat, "*?[\\") != NULL;
    p[0] = !glob ? 'e' : (pat[0] == '*' && pat[1] == '.' && !strpbrk(pat + 1, "*?[\\")) ? 's' : 'g';
    h->rh_pats = xrealloc(h->rh_pats, (size_t)(h->rh_n + 1) * sizeof(char *));
    h->rh_pats[h->rh_n++] = p;
}

void rules_hosts_copy(rules_hosts_t *dst, const rules_hosts_t *src)
{
    dst->rh_n = src->rh_n;
    dst->rh_pats = src->rh_n ? xcalloc((size_t)src->rh_n, sizeof(char *)) : NULL;
    for (int i = 0; i < src->rh_n; i++)
        dst->rh_pats[i] = xstrdup(src->rh_pats[i]);
}

void rules_hosts_free(rules_hosts_t *h)
{
    for (int i = 0; i < h->rh_n; i++)
        free(h->rh_pats[i]);
    free(h->rh_pats);
    h->rh_pats = NULL;
    h->rh_n = 0;
}

size_t rules_host_norm(const char *host, char out[256])
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

bool rules_hosts_match(const rules_hosts_t *hs, const char *h, size_t len)
{
    if (len == 0)
        return false;
    for (int i = 0; i < hs->rh_n; i++) {
        const char *p = hs->rh_pats[i];
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

void rules_provider_copy(rules_provider_t *dst, const rules_provider_t *src)
{
    dst->pv_name = xstrdup(src->pv_name);
    rules_hosts_copy(&dst->pv_domains, &src->pv_domains);
    rules_hosts_copy(&dst->pv_mx, &src->pv_mx);
}

void rules_provider_free(rules_provider_t *pv)
{
    free(pv->pv_name);
    pv->pv_name = NULL;
    rules_hosts_free(&pv->pv_domains);
    rules_hosts_free(&pv->pv_mx);
}

/* ========================================================== regexes */

static void rules_mctx_make(void)
{
    re_mctx = pcre2_match_context_create(NULL);
    pcre2_set_match_limit(re_mctx, RULES_MATCH_LIMIT);
}

static uint32_t rules_re_options(int flags)
{
    return PCRE2_CASELESS | ((flags & RULES_RE_UTF) ? PCRE2_UTF : 0);
}

/* Compile without the cache; NULL with why. */
static pcre2_code *rules_re_compile(const char *pattern, int flags, char *why, size_t whylen)
{
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                                   rules_re_options(flags), &ec, &eo, NULL);
    if (re == NULL) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof(msg));
        snprintf(why, whylen, "at offset %zu: %s", (size_t)eo, (const char *)msg);
    }
    return re;
}

int rules_re_get(const char *pattern, int flags, rules_re_t **out, char *why, size_t whylen)
{
    pthread_mutex_lock(&re_lock);
    for (rules_re_t *e = re_cache; e != NULL; e = e->re_next) {
        if (e->re_flags == flags && strcmp(e->re_pat, pattern) == 0) {
            e->re_refs++;
            pthread_mutex_unlock(&re_lock);
            *out = e;
            return 0;
        }
    }
    pthread_mutex_unlock(&re_lock);
    pcre2_code *code = rules_re_compile(pattern, flags, why, whylen);
    if (code == NULL)
        return SL_EPARSE;
    /* JIT where the platform has it; pcre2_match() uses it by itself, and
     * falls back to the interpreter when it failed. */
    (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    size_t n = strlen(pattern);
    rules_re_t *e = xmalloc(sizeof(*e) + n + 1);
    memcpy(e->re_pat, pattern, n + 1);
    e->re_code = code;
    e->re_flags = flags;
    e->re_refs = 1;
    pthread_mutex_lock(&re_lock);
    /* another thread may have compiled it meanwhile: both stay, the list
     * takes the newer, the older is freed with its last reference */
    e->re_next = re_cache;
    re_cache = e;
    re_ncached++;
    pthread_mutex_unlock(&re_lock);
    *out = e;
    return 0;
}

void rules_re_put(rules_re_t *re)
{
    if (re == NULL)
        return;
    pthread_mutex_lock(&re_lock);
    if (--re->re_refs > 0) {
        pthread_mutex_unlock(&re_lock);
        return;
    }
    for (rules_re_t **pp = &re_cache; *pp != NULL; pp = &(*pp)->re_next) {
        if (*pp == re) {
            *pp = re->re_next;
            re_ncached--;
            break;
        }
    }
    pthread_mutex_unlock(&re_lock);
    pcre2_code_free(re->re_code);
    free(re);
}

size_t rules_re_cached(void)
{
    pthread_mutex_lock(&re_lock);
    size_t n = re_ncached;
    pthread_mutex_unlock(&re_lock);
    return n;
}

bool rules_re_match(const rules_re_t *re, const char *subject, size_t len)
{
    pthread_once(&re_mctx_once, rules_mctx_make);
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    /* >= 0 is a match (0: the ovector was too small, which is fine); no
     * match and errors (the match limit, a subject that is not UTF-8 for a
     * UTF pattern) alike mean "no" */
    int rc = pcre2_match(re->re_code, (PCRE2_SPTR)subject, len, 0, 0, md, re_mctx);
    pcre2_match_data_free(md);
    return rc >= 0;
}

/* ========================================================== reply tests */

int rules_test_code(rules_test_t *t, const char *s)
{
    if (t->t_ncodes >= RULES_MAX_CODES)
        return SL_ETOOBIG;
    bool ok = strlen(s) == 3 && (s[0] == '4' || s[0] == '5');
    for (int j = 1; ok && j < 3; j++)
        ok = (s[j] >= '0' && s[j] <= '9') || s[j] == 'x' || s[j] == 'X';
    if (!ok)
        return SL_EPARSE;
    char *c = t->t_codes[t->t_ncodes++];
    for (int j = 0; j < 3; j++)
        c[j] = (s[j] == 'X') ? 'x' : s[j];
    c[3] = '\0';
    return 0;
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

int rules_test_status(rules_test_t *t, const char *s)
{
    if (t->t_nstatus >= RULES_MAX_STATUS)
        return SL_ETOOBIG;
    const char *d1 = strchr(s, '.');
    const char *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    short *st = t->t_status[t->t_nstatus];
    bool ok = d2 != NULL && rules_status_part(s, (size_t)(d1 - s), &st[0]) &&
              rules_status_part(d1 + 1, (size_t)(d2 - d1 - 1), &st[1]) &&
              rules_status_part(d2 + 1, strlen(d2 + 1), &st[2]) &&
              (st[0] == ST_ANY || st[0] == 4 || st[0] == 5);
    if (!ok)
        return SL_EPARSE;
    t->t_nstatus++;
    return 0;
}

void rules_test_free(rules_test_t *t)
{
    rules_re_put(t->t_re);
    t->t_re = NULL;
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

void rules_reply_init(rules_reply_t *r, int code, const char *status, const char *text,
                      size_t text_max)
{
    r->rr_code = code;
    int c = code < 0 ? 0 : code % 1000;
    r->rr_codes[0] = (char)('0' + c / 100);
    r->rr_codes[1] = (char)('0' + c / 10 % 10);
    r->rr_codes[2] = (char)('0' + c % 10);
    r->rr_codes[3] = '\0';
    /* the status the outcome carries (dlv_status_for_reply): its own when
     * its class agrees with the code, else x.0.0 */
    r->rr_st[0] = code / 100;
    if (!rules_status_parse(status, code / 100, r->rr_st)) {
        r->rr_st[1] = 0;
        r->rr_st[2] = 0;
    }
    r->rr_status = status ? status : "";
    r->rr_text = text ? text : "";
    r->rr_tlen = strnlen(r->rr_text, text_max);
    r->rr_line_len = 0;
}

static bool rules_code_match(const rules_test_t *t, const char code[4])
{
    for (int i = 0; i < t->t_ncodes; i++) {
        const char *p = t->t_codes[i];
        if ((p[0] == code[0]) && (p[1] == 'x' || p[1] == code[1]) &&
            (p[2] == 'x' || p[2] == code[2]))
            return true;
    }
    return false;
}

static bool rules_status_match(const rules_test_t *t, const int st[3])
{
    for (int i = 0; i < t->t_nstatus; i++) {
        const short *p = t->t_status[i];
        if ((p[0] == ST_ANY || p[0] == st[0]) && (p[1] == ST_ANY || p[1] == st[1]) &&
            (p[2] == ST_ANY || p[2] == st[2]))
            return true;
    }
    return false;
}

bool rules_test_match(const rules_test_t *t, rules_reply_t *r)
{
    if (t->t_ncodes > 0 && !rules_code_match(t, r->rr_codes))
        return false;
    if (t->t_nstatus > 0 && !rules_status_match(t, r->rr_st))
        return false;
    if (t->t_re == NULL)
        return true;
    if (!t->t_re_line)
        return rules_re_match(t->t_re, r->rr_text, r->rr_tlen);
    if (r->rr_line_len == 0) {
        int n = snprintf(r->rr_line, sizeof(r->rr_line), "%s %s%s%s", r->rr_codes, r->rr_status,
                         r->rr_status[0] ? " " : "", r->rr_text);
        r->rr_line_len = n < 0 ? 0 : MIN((size_t)n, sizeof(r->rr_line) - 1);
    }
    return rules_re_match(t->t_re, r->rr_line, r->rr_line_len);
}

/* ========================================================== bounce rules */

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

static void rules_strings_free(char **v, int n)
{
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
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
        bool seen_dom = false, seen_mx = false;
        for (const cfg_node_t *k = p->n_child; k != NULL; k = k->n_next) {
            char what[160];
            snprintf(what, sizeof(what), "provider \"%s\": %s", p->n_key, k->n_key);
            rules_hosts_t *dst;
            bool *seen;
            if (strcmp(k->n_key, "domains") == 0) {
                dst = &pv->pv_domains;
                seen = &seen_dom;
            } else if (strcmp(k->n_key, "mx") == 0) {
                dst = &pv->pv_mx;
                seen = &seen_mx;
            } else {
                return cfg_error(err, errlen, name, k->n_key_line,
                                 "provider \"%s\": unknown key \"%s\" (domains, mx)", p->n_key,
                                 k->n_key);
            }
            if (*seen)
                return cfg_error(err, errlen, name, k->n_key_line, "%s: given twice", what);
            *seen = true;
            char **v = NULL;
            int nv = 0;
            if (rules_strings(k, name, what, &v, &nv, err, errlen) < 0)
                return SL_ECONFIG;
            for (int j = 0; j < nv; j++)
                rules_hosts_add(dst, v[j]);
            rules_strings_free(v, nv);
        }
        if (pv->pv_domains.rh_n == 0 && pv->pv_mx.rh_n == 0)
            return cfg_error(err, errlen, name, p->n_line,
                             "provider \"%s\": needs domains or mx patterns", p->n_key);
    }
    return 0;
}

/* code = "550" / "5xx" / "45x" or a list of them. */
static int rules_code(const cfg_node_t *n, rules_rule_t *ru, const char *name, char *err,
                      size_t errlen)
{
    char **v = NULL;
    int nv = 0;
    if (rules_strings(n, name, "rule: code", &v, &nv, err, errlen) < 0)
        return SL_ECONFIG;
    int rc = 0;
    for (int i = 0; i < nv && rc == 0; i++) {
        int r = rules_test_code(&ru->ru_test, v[i]);
        if (r == SL_ETOOBIG)
            rc = cfg_error(err, errlen, name, n->n_line, "rule: code: more than %d codes",
                           RULES_MAX_CODES);
        else if (r != 0)
            rc = cfg_error(err, errlen, name, n->n_line,
                           "rule: code: expected \"550\", \"55x\" or \"5xx\" (4xx or 5xx), "
                           "got \"%.40s\"",
                           v[i]);
    }
    rules_strings_free(v, nv);
    return rc;
}

/* status = "5.1.1" / "x.1.1" / "5.7.x" or a list: RFC 3463 class.subject.detail. */
static int rules_status(const cfg_node_t *n, rules_rule_t *ru, const char *name, char *err,
                        size_t errlen)
{
    char **v = NULL;
    int nv = 0;
    if (rules_strings(n, name, "rule: status", &v, &nv, err, errlen) < 0)
        return SL_ECONFIG;
    int rc = 0;
    for (int i = 0; i < nv && rc == 0; i++) {
        int r = rules_test_status(&ru->ru_test, v[i]);
        if (r == SL_ETOOBIG)
            rc = cfg_error(err, errlen, name, n->n_line, "rule: status: more than %d patterns",
                           RULES_MAX_STATUS);
        else if (r != 0)
            rc = cfg_error(err, errlen, name, n->n_line,
                           "rule: status: expected an enhanced status like \"5.1.1\", "
                           "\"x.1.1\" or \"5.7.x\", got \"%.40s\"",
                           v[i]);
    }
    rules_strings_free(v, nv);
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
    int rc = 0;
    char why[300];
    buf_t all;
    buf_init(&all, 256);
    const cfg_node_t *item = n->n_type == CFG_NODE_LIST ? n->n_child : n;
    for (int i = 0; i < nv; i++, item = item ? item->n_next : NULL) {
        pcre2_code *re = rules_re_compile(v[i], 0, why, sizeof(why));
        if (re == NULL) {
            rc = cfg_error(err, errlen, name, item ? item->n_line : n->n_line,
                           "rule: text: bad regex '%.60s' %s", v[i], why);
            goto out;
        }
        pcre2_code_free(re);
        buf_printf(&all, "%s(?:%s)", i ? "|" : "", v[i]);
    }
    buf_append(&all, "", 1);
    if (rules_re_get(all.b_data, 0, &ru->ru_test.t_re, why, sizeof(why)) != 0)
        rc = cfg_error(err, errlen, name, n->n_line, "rule: text: %s", why);
out:
    buf_free(&all);
    rules_strings_free(v, nv);
    return rc;
}

/* A provider the file does not define, from the caller's lookup (the
 * traffic shaping's): copied into rs. 0 (also when there is none). */
static int rules_ext_provider(dlv_rules_t *rs, const char *pname, char *err, size_t errlen)
{
    const rules_provider_t *pr = rs->rs_lookup ? rs->rs_lookup(rs->rs_lookup_arg, pname) : NULL;
    if (pr == NULL || (pr->pv_domains.rh_n == 0 && pr->pv_mx.rh_n == 0))
        return 0;
    if (rs->rs_nproviders >= RULES_MAX_PROVIDERS)
        return cfg_error(err, errlen, rs->rs_name, 0, "more than %d providers",
                         RULES_MAX_PROVIDERS);
    rs->rs_providers =
        xrealloc(rs->rs_providers, (size_t)(rs->rs_nproviders + 1) * sizeof(*rs->rs_providers));
    rules_provider_copy(&rs->rs_providers[rs->rs_nproviders++], pr);
    return 0;
}

static int rules_find_provider(const dlv_rules_t *rs, const char *pname)
{
    for (int i = 0; i < rs->rs_nproviders; i++)
        if (strcasecmp(rs->rs_providers[i].pv_name, pname) == 0)
            return i;
    return -1;
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
        ru->ru_provider = rules_find_provider(rs, k->n_str);
        if (ru->ru_provider < 0) {
            if (rules_ext_provider(rs, k->n_str, err, errlen) < 0)
                return SL_ECONFIG;
            ru->ru_provider = rules_find_provider(rs, k->n_str);
        }
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

int dlv_rules_parse(const char *name, const char *text, size_t len, dlv_rules_lookup_fn lookup,
                    void *arg, dlv_rules_t **out, char *err, size_t errlen)
{
    cfg_node_t *root = NULL;
    dlv_rules_t *rs = xcalloc(1, sizeof(*rs));
    rs->rs_name = xstrdup(name);
    rs->rs_lookup = lookup;
    rs->rs_lookup_arg = arg;
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
    cfg_tree_free(root);
    rs->rs_lookup = NULL;
    rs->rs_lookup_arg = NULL;
    *out = rs;
    return 0;
fail:
    cfg_tree_free(root);
    dlv_rules_free(rs);
    return SL_ECONFIG;
}

int dlv_rules_load(const char *path, dlv_rules_lookup_fn lookup, void *arg, dlv_rules_t **out,
                   char *err, size_t errlen)
{
    if (path == NULL || path[0] == '\0') {
        const char *t = dlv_rules_default_text();
        return dlv_rules_parse("bounce-rules.conf (built-in)", t, strlen(t), lookup, arg, out, err,
                               errlen);
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
    int rc =
        dlv_rules_parse(path, b.b_data ? b.b_data : "", b.b_len, lookup, arg, out, err, errlen);
    buf_free(&b);
    return rc;
}

void dlv_rules_free(dlv_rules_t *r)
{
    if (r == NULL)
        return;
    for (int i = 0; i < r->rs_nproviders; i++)
        rules_provider_free(&r->rs_providers[i]);
    for (int i = 0; i < r->rs_nrules; i++) {
        rules_test_free(&r->rs_rules[i].ru_test);
        free(r->rs_rules[i].ru_where);
    }
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

const char *dlv_rules_name(const dlv_rules_t *r)
{
    return r->rs_name;
}

const char *dlv_rules_default_text(void)
{
    return dlv_rules_builtin_text;
}

/* --------------------------------------------------------------- matching */

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
    size_t dlen = rules_host_norm(domain, d);
    size_t mlen = rules_host_norm(mx, m);
    uint64_t mask = 0;
    for (int i = 0; i < rs->rs_nproviders; i++) {
        const rules_provider_t *pv = &rs->rs_providers[i];
        bool hit = mlen > 0 && pv->pv_mx.rh_n > 0 ? rules_hosts_match(&pv->pv_mx, m, mlen)
                                                  : rules_hosts_match(&pv->pv_domains, d, dlen);
        if (hit)
            mask |= (uint64_t)1 << i;
    }
    return mask;
}

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

bool dlv_rules_match(const dlv_rules_t *r, int code, const char *status, const char *text,
                     const char *domain, const char *mx, dlv_rule_hit_t *out)
{
    if (r == NULL || code < 400 || code > 599)
        return false;
    rules_reply_t rep;
    rules_reply_init(&rep, code, status, text, RULES_MAX_TEXT);
    uint64_t pmask = 0;
    bool pmask_done = false;
    for (int i = 0; i < r->rs_nrules; i++) {
        const rules_rule_t *ru = &r->rs_rules[i];
        if (ru->ru_provider >= 0) {
            if (!pmask_done) {
                pmask = rules_provider_mask(r, domain, mx);
                pmask_done = true;
            }
            if (!(pmask & ((uint64_t)1 << ru->ru_provider)))
                continue;
        }
        if (!rules_test_match(&ru->ru_test, &rep))
            continue;
        out->h_category = ru->ru_category;
        out->h_bounce = ru->ru_bounce;
        out->h_rule = ru->ru_where;
        out->h_provider = ru->ru_provider >= 0 ? r->rs_providers[ru->ru_provider].pv_name : NULL;
        return true;
    }
    return false;
}

/* ------------------------------------------------------------ active set */

const dlv_rules_t *dlv_rules_active(void)
{
    return atomic_load_explicit(&rules_active, memory_order_acquire);
}

void dlv_rules_set(dlv_rules_t *r, bool only_first)
{
    pthread_mutex_lock(&rules_lock);
    dlv_rules_t *old = atomic_load_explicit(&rules_active, memory_order_relaxed);
    if (only_first && old != NULL) {
        pthread_mutex_unlock(&rules_lock);
        dlv_rules_free(r); /* never published */
        return;
    }
    atomic_store_explicit(&rules_active, r, memory_order_release);
    if (old != NULL) {
        old->rs_next = rules_retired;
        rules_retired = old;
    }
    pthread_mutex_unlock(&rules_lock);
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
