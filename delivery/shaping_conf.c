/*
 * shaping_conf.c - the traffic shaping's rule set: the shaping-file parser.
 *
 * shp_conf_parse() reads the shipped providers text (config/providers.conf,
 * compiled in) and the operator's delivery.shaping file over it (config
 * syntax, docs/shaping.md) into one immutable shp_conf_t: the defaults'
 * limits and response rules, the global limits, the providers (host
 * patterns, limits, response rules, per_domain rules; the operator's
 * first, a shipped one of the same name replaced) and, through vmta.c, the
 * virtual MTAs and pools. Host patterns and response rules are the one
 * rule engine's (rules.c): the same matcher and regex cache as the bounce
 * rules, which look the providers up here (shp_provider_lookup).
 *
 * Nothing here has state: the provider registry (providers.c) installs a
 * rule set and keeps it as long as anything may point into it.
 *
 * Thread: any; a rule set is read-only once parsed.
 */
#include "delivery/shaping_int.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define SHP_MAX_FILE (4 << 20)

static int shp_load_tree(shp_conf_t *sc, const cfg_node_t *root, const char *name, bool builtin,
                         char *err, size_t errlen);
static int shp_limits_parse(const cfg_node_t *sec, const char *name, shp_limits_t *l,
                            bool allow_backoff, char *err, size_t errlen);
static int shp_rule_parse(const cfg_node_t *sec, const char *name, shp_rule_t *r, char *err,
                          size_t errlen);
static int shp_read_file(const char *path, char **text, char *err, size_t errlen);
static void shp_rule_free(shp_rule_t *r);
static void shp_prule_free(shp_prule_t *p);

/* ------------------------------------------------------------ parsing */

int shp_rate_parse(const char *s, shp_rate_t *out)
{
    while (*s == ' ')
        s++;
    if (*s == '\0' || strcmp(s, "0") == 0 || strcasecmp(s, "unlimited") == 0) {
        out->r_n = 0;
        out->r_period_us = 1000000;
        return 0;
    }
    char *end;
    unsigned long long n = strtoull(s, &end, 10);
    if (end == s || n == 0)
        return SL_EPARSE;
    while (*end == ' ')
        end++;
    if (*end != '/')
        return SL_EPARSE;
    end++;
    while (*end == ' ')
        end++;
    char per[32];
    if (strlen(end) + 2 > sizeof(per) || *end == '\0')
        return SL_EPARSE;
    /* "10/s", "3600/h": a bare unit is one of it */
    snprintf(per, sizeof(per), "%s%s", (*end >= '0' && *end <= '9') ? "" : "1", end);
    uint64_t sec = 0;
    if (cfg_parse_duration(per, &sec) != 0 || sec == 0)
        return SL_EPARSE;
    out->r_n = n;
    out->r_period_us = sec * 1000000ULL;
    return 0;
}

double shp_rate_per_sec(const shp_rate_t *r)
{
    return r->r_n == 0 ? 0.0 : (double)r->r_n * 1e6 / (double)r->r_period_us;
}

int shp_trigger_parse(const char *s, int *count, uint64_t *window_us)
{
    if (strcasecmp(s, "immediate") == 0 || strcmp(s, "1") == 0 || s[0] == '\0') {
        *count = 1;
        *window_us = 1;
        return 0;
    }
    char *end;
    long n = strtol(s, &end, 10);
    if (end == s || n < 1 || n > SHP_MAX_HITS)
        return SL_EPARSE;
    while (*end == ' ')
        end++;
    if (strncasecmp(end, "in", 2) != 0)
        return SL_EPARSE;
    end += 2;
    while (*end == ' ')
        end++;
    uint64_t sec;
    if (cfg_parse_duration(end, &sec) != 0 || sec == 0)
        return SL_EPARSE;
    *count = (int)n;
    *window_us = sec * 1000000ULL;
    return 0;
}

void shp_limits_overlay(shp_limits_t *dst, const shp_limits_t *src)
{
#define OV(bit, f)                                                                                 \
    if (src->l_set & (bit))                                                                        \
    dst->f = src->f
    OV(L_MAX_CONN, l_max_conn);
    OV(L_MAX_MSGS, l_max_msgs);
    OV(L_MAX_RCPT, l_max_rcpt);
    OV(L_MSG_RATE, l_msg_rate);
    OV(L_CONN_RATE, l_conn_rate);
    OV(L_TOTAL_CONN, l_total_conn);
    OV(L_TOTAL_MSG, l_total_msg);
    OV(L_TOTAL_CR, l_total_cr);
    OV(L_BO_MAX_CONN, l_bo_max_conn);
    OV(L_BO_MSG, l_bo_msg);
    OV(L_BO_CR, l_bo_cr);
    OV(L_BO_RETRY, l_bo_retry);
    OV(L_REC_AFTER, l_rec_after);
    OV(L_REC_QUIET, l_rec_quiet);
    OV(L_REC_FACTOR, l_rec_factor);
    OV(L_ADAPTIVE, l_adaptive);
#undef OV
    dst->l_set |= src->l_set;
}

static const char *node_desc(const cfg_node_t *n)
{
    return n->n_type == CFG_NODE_LIST      ? "a list"
           : n->n_type == CFG_NODE_SECTION ? "a section"
                                           : "a string";
}

static int shp_int(const cfg_node_t *n, const char *name, const char *path, int lo, int hi,
                   int *out, char *err, size_t errlen)
{
    char *end;
    long v = n->n_type == CFG_NODE_STR ? strtol(n->n_str, &end, 10) : 0;
    if (n->n_type != CFG_NODE_STR || end == n->n_str || *end != '\0' || v < lo || v > hi)
        return cfg_error(err, errlen, name, n->n_line, "%s: expected an integer [%d..%d]", path, lo,
                         hi);
    *out = (int)v;
    return 0;
}

static const char *const shp_limit_keys[] = {
    "max_connections",
    "max_messages_per_connection",
    "max_recipients_per_transaction",
    "message_rate",
    "connection_rate",
    "total_max_connections",
    "total_message_rate",
    "total_connection_rate",
    "recover_after",
    "recover_quiet",
    "recover_factor",
    "adaptive",
};

static bool shp_limit_key(const char *k)
{
    for (size_t i = 0; i < ARRAY_SIZE(shp_limit_keys); i++)
        if (strcmp(k, shp_limit_keys[i]) == 0)
            return true;
    return false;
}

static int shp_limits_parse(const cfg_node_t *sec, const char *name, shp_limits_t *l,
                            bool allow_backoff, char *err, size_t errlen)
{
    for (const cfg_node_t *n = sec->n_child; n != NULL; n = n->n_next) {
        const char *k = n->n_key;
        if (k == NULL)
            continue;
        if (allow_backoff && strcmp(k, "backoff") == 0) {
            if (n->n_type != CFG_NODE_SECTION)
                return cfg_error(err, errlen, name, n->n_line, "backoff: expected a section");
            for (const cfg_node_t *b = n->n_child; b != NULL; b = b->n_next) {
                if (b->n_type != CFG_NODE_STR)
                    return cfg_error(err, errlen, name, b->n_line, "backoff.%s: expected a value",
                                     b->n_key);
                int rc = 0;
                if (strcmp(b->n_key, "max_connections") == 0) {
                    rc = shp_int(b, name, "backoff.max_connections", 1, 100000, &l->l_bo_max_conn,
                                 err, errlen);
                    l->l_set |= L_BO_MAX_CONN;
                } else if (strcmp(b->n_key, "message_rate") == 0) {
                    if (shp_rate_parse(b->n_str, &l->l_bo_msg) != 0 || l->l_bo_msg.r_n == 0)
                        return cfg_error(err, errlen, name, b->n_line,
                                         "backoff.message_rate: expected \"N/period\" such as "
                                         "\"60/1m\"");
                    l->l_set |= L_BO_MSG;
                } else if (strcmp(b->n_key, "connection_rate") == 0) {
                    if (shp_rate_parse(b->n_str, &l->l_bo_cr) != 0)
                        return cfg_error(err, errlen, name, b->n_line,
                                         "backoff.connection_rate: expected \"N/period\"");
                    l->l_set |= L_BO_CR;
                } else if (strcmp(b->n_key, "retry") == 0) {
                    if (cfg_parse_duration(b->n_str, &l->l_bo_retry) != 0)
                        return cfg_error(err, errlen, name, b->n_line,
                                         "backoff.retry: expected a duration");
                    l->l_set |= L_BO_RETRY;
                } else {
                    return cfg_error(err, errlen, name, b->n_key_line, "unknown key \"backoff.%s\"",
                                     b->n_key);
                }
                if (rc != 0)
                    return rc;
            }
            continue;
        }
        bool known = true;
        int rc = 0;
        if (n->n_type != CFG_NODE_STR) {
            if (shp_limit_key(k))
                return cfg_error(err, errlen, name, n->n_line, "%s: expected a value, got %s", k,
                                 node_desc(n));
            continue; /* the caller's key */
        }
        const struct {
            const char *k;
            int lo, hi;
            int *v;
            uint32_t bit;
        } ints[] = {{"max_connections", 0, 100000, &l->l_max_conn, L_MAX_CONN},
                    {"max_messages_per_connection", 0, 100000000, &l->l_max_msgs, L_MAX_MSGS},
                    {"max_recipients_per_transaction", 0, 100000, &l->l_max_rcpt, L_MAX_RCPT},
                    {"total_max_connections", 0, 1000000, &l->l_total_conn, L_TOTAL_CONN},
                    {"recover_after", 1, 1000000, &l->l_rec_after, L_REC_AFTER}};
        size_t ii = 0;
        while (ii < ARRAY_SIZE(ints) && strcmp(k, ints[ii].k) != 0)
            ii++;
        if (ii < ARRAY_SIZE(ints)) {
            rc = shp_int(n, name, k, ints[ii].lo, ints[ii].hi, ints[ii].v, err, errlen);
            l->l_set |= ints[ii].bit;
        } else if (strcmp(k, "recover_quiet") == 0) {
            if (cfg_parse_duration(n->n_str, &l->l_rec_quiet) != 0 || l->l_rec_quiet == 0)
                return cfg_error(err, errlen, name, n->n_line, "%s: expected a duration", k);
            l->l_set |= L_REC_QUIET;
        } else if (strcmp(k, "adaptive") == 0) {
            if (strcasecmp(n->n_str, "true") == 0 || strcasecmp(n->n_str, "yes") == 0)
                l->l_adaptive = true;
            else if (strcasecmp(n->n_str, "false") == 0 || strcasecmp(n->n_str, "no") == 0)
                l->l_adaptive = false;
            else
                return cfg_error(err, errlen, name, n->n_line,
                                 "%s: expected true or false, got \"%.40s\"", k, n->n_str);
            l->l_set |= L_ADAPTIVE;
        } else if (strcmp(k, "recover_factor") == 0) {
            char *end;
            l->l_rec_factor = strtod(n->n_str, &end);
            if (end == n->n_str || *end != '\0' || l->l_rec_factor <= 1.0 || l->l_rec_factor > 16.0)
                return cfg_error(err, errlen, name, n->n_line,
                                 "%s: expected a number above 1 (such as 1.5)", k);
            l->l_set |= L_REC_FACTOR;
        } else {
            struct {
                const char *k;
                uint32_t bit;
                shp_rate_t *r;
            } rates[] = {{"message_rate", L_MSG_RATE, &l->l_msg_rate},
                         {"connection_rate", L_CONN_RATE, &l->l_conn_rate},
                         {"total_message_rate", L_TOTAL_MSG, &l->l_total_msg},
                         {"total_connection_rate", L_TOTAL_CR, &l->l_total_cr}};
            known = false;
            for (size_t i = 0; i < ARRAY_SIZE(rates); i++) {
                if (strcmp(k, rates[i].k) != 0)
                    continue;
                known = true;
                if (shp_rate_parse(n->n_str, rates[i].r) != 0)
                    return cfg_error(
                        err, errlen, name, n->n_line,
                        "%s: expected \"N/period\" such as \"100/1m\", \"10/s\" or \"\" "
                        "(no limit), got \"%.60s\"",
                        k, n->n_str);
                l->l_set |= rates[i].bit;
            }
            if (!known)
                continue; /* the caller's key */
        }
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* domains / mx: a string or a list of host patterns (a key given again
 * replaces the first). */
static int shp_hosts(const cfg_node_t *n, const char *name, rules_hosts_t *out, char *err,
                     size_t errlen)
{
    if (n->n_type == CFG_NODE_SECTION)
        return cfg_error(err, errlen, name, n->n_line, "%s: expected a string or a list", n->n_key);
    rules_hosts_free(out);
    if (n->n_type == CFG_NODE_STR)
        rules_hosts_add(out, n->n_str);
    for (const cfg_node_t *c = n->n_type == CFG_NODE_LIST ? n->n_child : NULL; c; c = c->n_next)
        rules_hosts_add(out, c->n_str);
    return 0;
}

static int shp_rule_parse(const cfg_node_t *sec, const char *name, shp_rule_t *r, char *err,
                          size_t errlen)
{
    memset(r, 0, sizeof(*r));
    r->r_count = 1;
    r->r_window_us = 1;
    char where[300];
    snprintf(where, sizeof(where), "%s:%d", name, sec->n_line);
    r->r_where = xstrdup(where);
    if (sec->n_type != CFG_NODE_SECTION)
        return cfg_error(err, errlen, name, sec->n_line,
                         "rule: expected a section { match = ...; }");
    const char *match = NULL;
    bool have_action = false;
    for (const cfg_node_t *n = sec->n_child; n != NULL; n = n->n_next) {
        if (n->n_type != CFG_NODE_STR)
            return cfg_error(err, errlen, name, n->n_line, "rule.%s: expected a value", n->n_key);
        const char *k = n->n_key, *v = n->n_str;
        if (strcmp(k, "match") == 0) {
            match = v;
        } else if (strcmp(k, "code") == 0) {
            r->r_test.t_ncodes = 0; /* given again: the last one */
            if (rules_test_code(&r->r_test, v) != 0)
                return cfg_error(err, errlen, name, n->n_line,
                                 "rule.code: expected a 4xx/5xx code such as 421 or 4xx");
        } else if (strcmp(k, "action") == 0) {
            static const struct {
                const char *n;
                shp_action_t a;
            } acts[] = {{"backoff", SHP_A_BACKOFF},         {"normal", SHP_A_NORMAL},
                        {"suspend", SHP_A_SUSPEND},         {"bounce-recipient", SHP_A_BOUNCE_RCPT},
                        {"defer-queue", SHP_A_DEFER_QUEUE}, {"disable-source", SHP_A_DISABLE_SRC},
                        {"capacity", SHP_A_CAPACITY}};
            for (size_t i = 0; i < ARRAY_SIZE(acts); i++)
                if (strcasecmp(v, acts[i].n) == 0)
                    r->r_action = acts[i].a;
            if (r->r_action == 0)
                return cfg_error(
                    err, errlen, name, n->n_line,
                    "rule.action: expected backoff, normal, suspend, bounce-recipient, "
                    "defer-queue, disable-source or capacity, got \"%.40s\"",
                    v);
            have_action = true;
        } else if (strcmp(k, "limit") == 0) {
            static const struct {
                const char *n;
                shp_capacity_t c;
            } caps[] = {{"connections", SHP_CAP_CONN},
                        {"messages_per_connection", SHP_CAP_MSGS},
                        {"rate", SHP_CAP_RATE}};
            r->r_capacity = SHP_CAP_NONE;
            for (size_t i = 0; i < ARRAY_SIZE(caps); i++)
                if (strcasecmp(v, caps[i].n) == 0)
                    r->r_capacity = caps[i].c;
            if (r->r_capacity == SHP_CAP_NONE)
                return cfg_error(err, errlen, name, n->n_line,
                                 "rule.limit: expected connections, messages_per_connection or "
                                 "rate, got \"%.40s\"",
                                 v);
        } else if (strcmp(k, "duration") == 0) {
            uint64_t sec_ = 0;
            if (cfg_parse_duration(v, &sec_) != 0 || sec_ == 0)
                return cfg_error(err, errlen, name, n->n_line,
                                 "rule.duration: expected a duration");
            r->r_duration_us = sec_ * 1000000ULL;
        } else if (strcmp(k, "trigger") == 0) {
            if (shp_trigger_parse(v, &r->r_count, &r->r_window_us) != 0)
                return cfg_error(err, errlen, name, n->n_line,
                                 "rule.trigger: expected \"immediate\" or \"N in DURATION\" "
                                 "(N <= %d), got \"%.40s\"",
                                 SHP_MAX_HITS, v);
        } else {
            return cfg_error(err, errlen, name, n->n_key_line, "unknown key \"rule.%s\"", k);
        }
    }
    if (match == NULL)
        return cfg_error(err, errlen, name, sec->n_line,
                         "rule: needs match = 'regex' (on \"CODE STATUS TEXT\")");
    if (!have_action)
        return cfg_error(err, errlen, name, sec->n_line, "rule: needs an action");
    if ((r->r_action == SHP_A_CAPACITY) != (r->r_capacity != SHP_CAP_NONE))
        return cfg_error(err, errlen, name, sec->n_line,
                         r->r_capacity == SHP_CAP_NONE
                             ? "rule: action = capacity needs limit = connections, "
                               "messages_per_connection or rate"
                             : "rule: limit = ... goes with action = capacity only");
    if ((r->r_action == SHP_A_SUSPEND || r->r_action == SHP_A_DISABLE_SRC) && r->r_duration_us == 0)
        r->r_duration_us = 15 * 60 * 1000000ULL;
    char why[300];
    if (rules_re_get(match, RULES_RE_UTF, &r->r_test.t_re, why, sizeof(why)) != 0)
        return cfg_error(err, errlen, name, sec->n_line, "rule.match: bad regex %s", why);
    r->r_test.t_re_line = true;
    r->r_src = xstrdup(match);
    return 0;
}

static void shp_rule_free(shp_rule_t *r)
{
    rules_test_free(&r->r_test);
    free(r->r_where);
    free(r->r_src);
}

static void shp_prule_free(shp_prule_t *p)
{
    rules_provider_free(&p->pr_hosts);
    for (int i = 0; i < p->pr_nrules; i++)
        shp_rule_free(&p->pr_rules[i]);
    free(p->pr_rules);
    for (int i = 0; i < p->pr_ndoms; i++)
        free(p->pr_doms[i].dr_domain);
    free(p->pr_doms);
}

static int shp_rules_add(const cfg_node_t *n, const char *name, shp_rule_t **rules, int *nrules,
                         char *err, size_t errlen)
{
    if (*nrules >= SHP_MAX_RULES)
        return cfg_error(err, errlen, name, n->n_line, "too many rules (at most %d per provider)",
                         SHP_MAX_RULES);
    *rules = xrealloc(*rules, (size_t)(*nrules + 1) * sizeof(**rules));
    int rc = shp_rule_parse(n, name, &(*rules)[*nrules], err, errlen);
    (*nrules)++; /* freed with the others even when it failed half-way */
    return rc;
}

static int shp_provider_parse(const cfg_node_t *sec, const char *name, shp_prule_t *p, char *err,
                              size_t errlen)
{
    p->pr_hosts.pv_name = xstrdup(sec->n_key);
    if (sec->n_type != CFG_NODE_SECTION)
        return cfg_error(err, errlen, name, sec->n_line, "providers.%s: expected a section",
                         sec->n_key);
    int rc = shp_limits_parse(sec, name, &p->pr_own, true, err, errlen);
    if (rc != 0)
        return rc;
    for (const cfg_node_t *n = sec->n_child; n != NULL; n = n->n_next) {
        const char *k = n->n_key;
        if (strcmp(k, "domains") == 0) {
            rc = shp_hosts(n, name, &p->pr_hosts.pv_domains, err, errlen);
        } else if (strcmp(k, "mx") == 0) {
            rc = shp_hosts(n, name, &p->pr_hosts.pv_mx, err, errlen);
        } else if (strcmp(k, "rule") == 0) {
            rc = shp_rules_add(n, name, &p->pr_rules, &p->pr_nrules, err, errlen);
        } else if (strcmp(k, "shared") == 0) {
            /* cluster.c: this provider's limits hold across the nodes */
            if (n->n_type != CFG_NODE_STR ||
                (strcmp(n->n_str, "true") != 0 && strcmp(n->n_str, "false") != 0))
                return cfg_error(err, errlen, name, n->n_line,
                                 "providers.%s.shared: expected true or false", sec->n_key);
            p->pr_shared = strcmp(n->n_str, "true") == 0;
        } else if (strcmp(k, "per_domain") == 0) {
            if (n->n_type != CFG_NODE_SECTION)
                return cfg_error(err, errlen, name, n->n_line,
                                 "per_domain: expected a section { \"domain\" { ... } }");
            for (const cfg_node_t *d = n->n_child; d != NULL; d = d->n_next) {
                if (d->n_type != CFG_NODE_SECTION)
                    return cfg_error(err, errlen, name, d->n_line,
                                     "per_domain.%s: expected a section", d->n_key);
                p->pr_doms = xrealloc(p->pr_doms, (size_t)(p->pr_ndoms + 1) * sizeof(*p->pr_doms));
                shp_domrule_t *dr = &p->pr_doms[p->pr_ndoms++];
                memset(dr, 0, sizeof(*dr));
                dr->dr_domain = xstrdup(d->n_key);
                for (char *c = dr->dr_domain; *c; c++)
                    *c = (char)tolower((unsigned char)*c);
                rc = shp_limits_parse(d, name, &dr->dr_own, true, err, errlen);
                if (rc != 0)
                    return rc;
                for (const cfg_node_t *e = d->n_child; e != NULL; e = e->n_next)
                    if (e->n_type == CFG_NODE_SECTION && strcmp(e->n_key, "backoff") != 0)
                        return cfg_error(err, errlen, name, e->n_key_line,
                                         "unknown key \"per_domain.%s.%s\"", d->n_key, e->n_key);
            }
        } else if (n->n_type == CFG_NODE_SECTION && strcmp(k, "backoff") != 0) {
            return cfg_error(err, errlen, name, n->n_key_line, "unknown key \"providers.%s.%s\"",
                             sec->n_key, k);
        } else if (n->n_type == CFG_NODE_STR && !shp_limit_key(k) && strcmp(k, "shared") != 0) {
            return cfg_error(err, errlen, name, n->n_key_line, "unknown key \"providers.%s.%s\"",
                             sec->n_key, k);
        }
        if (rc != 0)
            return rc;
    }
    if (p->pr_hosts.pv_domains.rh_n == 0 && p->pr_hosts.pv_mx.rh_n == 0)
        return cfg_error(err, errlen, name, sec->n_line,
                         "providers.%s: needs domains = [...] or mx = [...] patterns", sec->n_key);
    return 0;
}

static int shp_load_tree(shp_conf_t *sc, const cfg_node_t *root, const char *name, bool builtin,
                         char *err, size_t errlen)
{
    int rc;
    if (!builtin && (rc = shp_vmta_config(sc, root, name, err, errlen)) != 0)
        return rc;
    shp_prule_t *mine = NULL;
    int nmine = 0;
    for (const cfg_node_t *n = root->n_child; n != NULL; n = n->n_next) {
        const char *k = n->n_key;
        if (strcmp(k, "defaults") == 0) {
            if (n->n_type != CFG_NODE_SECTION) {
                rc = cfg_error(err, errlen, name, n->n_line, "defaults: expected a section");
                goto fail;
            }
            shp_limits_t l = {0};
            if ((rc = shp_limits_parse(n, name, &l, true, err, errlen)) != 0)
                goto fail;
            shp_limits_overlay(&sc->sc_defaults, &l);
            for (const cfg_node_t *c = n->n_child; c != NULL; c = c->n_next) {
                if (strcmp(c->n_key, "rule") == 0) {
                    if ((rc = shp_rules_add(c, name, &sc->sc_rules, &sc->sc_nrules, err, errlen)) !=
                        0)
                        goto fail;
                } else if (c->n_type == CFG_NODE_SECTION && strcmp(c->n_key, "backoff") != 0) {
                    rc = cfg_error(err, errlen, name, c->n_key_line, "unknown key \"defaults.%s\"",
                                   c->n_key);
                    goto fail;
                }
            }
        } else if (strcmp(k, "global") == 0) {
            shp_limits_t l = {0};
            if (n->n_type != CFG_NODE_SECTION ||
                (rc = shp_limits_parse(n, name, &l, false, err, errlen)) != 0) {
                rc = n->n_type != CFG_NODE_SECTION
                         ? cfg_error(err, errlen, name, n->n_line, "global: expected a section")
                         : rc;
                goto fail;
            }
            shp_limits_overlay(&sc->sc_global, &l);
            for (const cfg_node_t *g = n->n_child; g != NULL; g = g->n_next) {
                if (g->n_key == NULL || strcmp(g->n_key, "shared") != 0)
                    continue;
                if (g->n_type != CFG_NODE_STR ||
                    (strcmp(g->n_str, "true") != 0 && strcmp(g->n_str, "false") != 0)) {
                    rc = cfg_error(err, errlen, name, g->n_line,
                                   "global.shared: expected true or false");
                    goto fail;
                }
                sc->sc_global_shared = strcmp(g->n_str, "true") == 0; /* cluster.c */
            }
        } else if (strcmp(k, "providers") == 0) {
            if (n->n_type != CFG_NODE_SECTION) {
                rc = cfg_error(err, errlen, name, n->n_line, "providers: expected a section");
                goto fail;
            }
            for (const cfg_node_t *p = n->n_child; p != NULL; p = p->n_next) {
                mine = xrealloc(mine, (size_t)(nmine + 1) * sizeof(*mine));
                memset(&mine[nmine], 0, sizeof(*mine));
                nmine++;
                if ((rc = shp_provider_parse(p, name, &mine[nmine - 1], err, errlen)) != 0)
                    goto fail;
            }
        } else if (builtin || (strcmp(k, "virtual_mtas") != 0 && strcmp(k, "pools") != 0 &&
                               strcmp(k, "default_pool") != 0 && strcmp(k, "pool_users") != 0)) {
            rc = cfg_error(err, errlen, name, n->n_key_line, "unknown key \"%s\"", k);
            goto fail;
        }
    }
    /* the operator's providers go first; a shipped one with the same name
     * is replaced */
    for (int i = 0; i < sc->sc_nprules; i++) {
        bool replaced = false;
        for (int j = 0; j < nmine; j++)
            replaced |=
                strcasecmp(mine[j].pr_hosts.pv_name, sc->sc_prules[i].pr_hosts.pv_name) == 0;
        if (replaced) {
            shp_prule_free(&sc->sc_prules[i]);
            continue;
        }
        mine = xrealloc(mine, (size_t)(nmine + 1) * sizeof(*mine));
        mine[nmine++] = sc->sc_prules[i];
    }
    free(sc->sc_prules);
    sc->sc_prules = mine;
    sc->sc_nprules = nmine;
    return 0;
fail:
    for (int i = 0; i < nmine; i++)
        shp_prule_free(&mine[i]);
    free(mine);
    return rc;
}

static void shp_resolve(shp_conf_t *sc)
{
    for (int i = 0; i < sc->sc_nprules; i++) {
        shp_prule_t *p = &sc->sc_prules[i];
        p->pr_lim = sc->sc_defaults;
        shp_limits_overlay(&p->pr_lim, &p->pr_own);
        for (int j = 0; j < p->pr_ndoms; j++) {
            p->pr_doms[j].dr_lim = p->pr_lim;
            shp_limits_overlay(&p->pr_doms[j].dr_lim, &p->pr_doms[j].dr_own);
        }
    }
}

static int shp_parse_text(shp_conf_t *sc, const char *name, const char *text, bool builtin,
                          char *err, size_t errlen)
{
    cfg_node_t *root = NULL;
    int rc = cfg_tree_parse(name, text, strlen(text), &root, err, errlen);
    if (rc != 0)
        return SL_ECONFIG;
    rc = shp_load_tree(sc, root, name, builtin, err, errlen);
    cfg_tree_free(root);
    return rc;
}

/* The operator's shaping file as a NUL-terminated string (*text = NULL
 * when path is NULL or "": the shipped providers only). 0, or SL_ECONFIG
 * with err set. */
static int shp_read_file(const char *path, char **text, char *err, size_t errlen)
{
    *text = NULL;
    if (path == NULL || path[0] == '\0')
        return 0;
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return SL_ECONFIG;
    }
    char *t = xmalloc(SHP_MAX_FILE + 1);
    size_t n = fread(t, 1, SHP_MAX_FILE + 1, f);
    fclose(f);
    if (n > SHP_MAX_FILE) {
        free(t);
        snprintf(err, errlen, "%s: bigger than %d bytes", path, SHP_MAX_FILE);
        return SL_ECONFIG;
    }
    t[n] = '\0';
    *text = t;
    return 0;
}

/* ------------------------------------------------------------ matching */

const rules_provider_t *shp_provider_lookup(void *arg, const char *name)
{
    const shp_conf_t *sc = arg;
    for (int i = 0; i < sc->sc_nprules; i++)
        if (strcasecmp(sc->sc_prules[i].pr_hosts.pv_name, name) == 0)
            return &sc->sc_prules[i].pr_hosts;
    return NULL;
}

static shp_conf_t *shp_shipped_conf;
static pthread_once_t shp_shipped_once = PTHREAD_ONCE_INIT;

static void shp_shipped_make(void)
{
    char err[512];
    if (shp_conf_parse(NULL, NULL, NULL, &shp_shipped_conf, err, sizeof(err)) != 0)
        sl_assert_fail(err, __FILE__, __LINE__, __func__); /* the unit tests load it: a bug */
}

const shp_conf_t *shp_conf_shipped(void)
{
    pthread_once(&shp_shipped_once, shp_shipped_make);
    return shp_shipped_conf;
}

const shp_prule_t *shp_match_domain(const shp_conf_t *sc, const char *domain)
{
    char d[256];
    size_t len = rules_host_norm(domain, d);
    for (int i = 0; i < sc->sc_nprules; i++)
        if (rules_hosts_match(&sc->sc_prules[i].pr_hosts.pv_domains, d, len))
            return &sc->sc_prules[i];
    return NULL;
}

const shp_prule_t *shp_match_mx(const shp_conf_t *sc, const char *mx)
{
    char m[256];
    size_t len = rules_host_norm(mx, m);
    for (int i = 0; i < sc->sc_nprules; i++)
        if (rules_hosts_match(&sc->sc_prules[i].pr_hosts.pv_mx, m, len))
            return &sc->sc_prules[i];
    return NULL;
}

bool shp_rule_match(const shp_rule_t *r, int code, const char *status, const char *text)
{
    rules_reply_t rep;
    rules_reply_init(&rep, code, status, text, SIZE_MAX);
    return rules_test_match(&r->r_test, &rep);
}

static bool shp_str_eq(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

/* Do a and b have the same virtual MTAs, pools and pool choice? */
bool shp_conf_vmtas_same(const shp_conf_t *a, const shp_conf_t *b)
{
    if (a->sc_nvmtas != b->sc_nvmtas || a->sc_npools != b->sc_npools ||
        a->sc_default_pool != b->sc_default_pool || a->sc_npool_users != b->sc_npool_users)
        return false;
    for (int i = 0; i < a->sc_nvmtas; i++)
        if (!shp_str_eq(a->sc_vmtas[i].vm_name, b->sc_vmtas[i].vm_name) ||
            !shp_str_eq(a->sc_vmtas[i].vm_source, b->sc_vmtas[i].vm_source) ||
            !shp_str_eq(a->sc_vmtas[i].vm_ehlo, b->sc_vmtas[i].vm_ehlo) ||
            a->sc_vmtas[i].vm_verp != b->sc_vmtas[i].vm_verp)
            return false;
    for (int i = 0; i < a->sc_npools; i++) {
        const shp_pool_t *x = &a->sc_pools[i], *y = &b->sc_pools[i];
        if (!shp_str_eq(x->po_name, y->po_name) || x->po_n != y->po_n || x->po_verp != y->po_verp ||
            memcmp(x->po_members, y->po_members, (size_t)x->po_n * sizeof(int)) != 0 ||
            memcmp(x->po_weight, y->po_weight, (size_t)x->po_n * sizeof(int)) != 0)
            return false;
    }
    for (int i = 0; i < 2 * a->sc_npool_users; i++)
        if (!shp_str_eq(a->sc_pool_users[i], b->sc_pool_users[i]))
            return false;
    return true;
}

/* ------------------------------------------------------------ rule sets */

static shp_conf_t *shp_conf_alloc(void)
{
    shp_conf_t *sc = xcalloc(1, sizeof(*sc));
    shp_limits_t *d = &sc->sc_defaults; /* the base under the shipped defaults */
    d->l_bo_max_conn = 2;
    d->l_bo_msg = (shp_rate_t){60, 60000000};
    d->l_rec_after = 20;
    d->l_rec_quiet = 300;
    d->l_rec_factor = 1.5;
    d->l_set = ~0u & ~(uint32_t)L_ADAPTIVE; /* unset: delivery.adaptive decides */
    sc->sc_default_pool = -1;
    return sc;
}

int shp_conf_parse(const char *builtin, const char *name, const char *text, shp_conf_t **out,
                   char *err, size_t errlen)
{
    shp_conf_t *sc = shp_conf_alloc();
    int rc = shp_parse_text(sc, "providers.conf (built-in)", builtin ? builtin : shp_builtin_text,
                            true, err, errlen);
    if (rc == 0 && text != NULL)
        rc = shp_parse_text(sc, name, text, false, err, errlen);
    if (rc == 0 && sc->sc_nvmtas == 0) { /* one implicit vmta: the system's source address */
        sc->sc_vmtas[0].vm_name = xstrdup("default");
        sc->sc_nvmtas = 1;
    }
    if (rc == 0 && sc->sc_npools == 0) {
        shp_pool_t *p = &sc->sc_pools[0];
        p->po_name = xstrdup("default");
        for (int i = 0; i < sc->sc_nvmtas; i++) {
            p->po_members[i] = i;
            p->po_weight[i] = 1;
        }
        p->po_n = sc->sc_nvmtas;
        sc->sc_npools = 1;
    }
    if (sc->sc_default_pool < 0)
        sc->sc_default_pool = 0;
    if (rc != 0) {
        shp_conf_free(sc);
        return SL_ECONFIG;
    }
    shp_resolve(sc);
    *out = sc;
    return 0;
}

int shp_conf_load(const char *path, shp_conf_t **out, char *err, size_t errlen)
{
    char *text = NULL;
    if (shp_read_file(path, &text, err, errlen) != 0)
        return SL_ECONFIG;
    int rc = shp_conf_parse(NULL, path, text, out, err, errlen);
    free(text);
    return rc;
}

void shp_conf_free(shp_conf_t *sc)
{
    if (sc == NULL)
        return;
    for (int i = 0; i < sc->sc_nprules; i++)
        shp_prule_free(&sc->sc_prules[i]);
    free(sc->sc_prules);
    for (int i = 0; i < sc->sc_nrules; i++)
        shp_rule_free(&sc->sc_rules[i]);
    free(sc->sc_rules);
    for (int i = 0; i < sc->sc_nvmtas; i++) {
        free(sc->sc_vmtas[i].vm_name);
        free(sc->sc_vmtas[i].vm_source);
        free(sc->sc_vmtas[i].vm_ehlo);
    }
    for (int i = 0; i < sc->sc_npools; i++)
        free(sc->sc_pools[i].po_name);
    for (int i = 0; i < 2 * sc->sc_npool_users; i++)
        free(sc->sc_pool_users[i]);
    free(sc->sc_pool_users);
    free(sc->sc_pool_user_idx);
    free(sc);
}
