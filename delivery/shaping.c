/*
 * shaping.c - traffic shaping: providers (MX rollup), throttles shared by
 * every delivery thread, backoff response rules with gradual recovery, and
 * the per-destination backlog with per-job fair share.
 *
 * Configuration: dlv_shaping_new() parses the shipped providers text and
 * the operator's file (config syntax, docs/shaping.md) into one immutable
 * rule set plus the shared state objects that go with it.
 *
 * Throttles, checked in this order, each a shared token bucket or counter:
 * the queue (provider, vmta), the provider (total_*), the global section,
 * and a per_domain rule of the provider. A token taken from one level is
 * given back when a later level says wait. When a throttle says wait the
 * destination arms a uv timer for the moment the next token is due.
 *
 * Backoff: a reply matching a rule whose trigger fires (immediately or "N
 * in window") puts the queue in backoff: its backoff limits are in force
 * and deferrals get the longer backoff.retry. After recover_after
 * deliveries, or recover_quiet without a new trigger, the rate climbs one
 * step (x recover_factor) and so on up to the normal rate (slow start);
 * every mode change is one log line and one accounting record (type
 * "shaping").
 *
 * Fair share: a destination keeps its backlog per pool, and within a pool
 * one FIFO per job (qd_job) served round robin: a small transactional job
 * goes out next to a bulk job instead of behind it.
 *
 * Thread: dlv_shaping_* any thread as noted; dlv_shp_* (delivery_int.h) on
 * the destination's delivery thread.
 */
#include "delivery/shaping_int.h"

#include <ctype.h>
#include <errno.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* l_set bits */
enum {
    L_MAX_CONN = 1 << 0,
    L_MAX_MSGS = 1 << 1,
    L_MAX_RCPT = 1 << 2,
    L_MSG_RATE = 1 << 3,
    L_CONN_RATE = 1 << 4,
    L_TOTAL_CONN = 1 << 5,
    L_TOTAL_MSG = 1 << 6,
    L_TOTAL_CR = 1 << 7,
    L_BO_MAX_CONN = 1 << 8,
    L_BO_MSG = 1 << 9,
    L_BO_CR = 1 << 10,
    L_BO_RETRY = 1 << 11,
    L_REC_AFTER = 1 << 12,
    L_REC_QUIET = 1 << 13,
    L_REC_FACTOR = 1 << 14,
};

#define SHP_BLOCKED_POLL_MS 200 /* blocked on another thread's connections: look again */
#define SHP_OP_POLL_MS 500      /* held by an operator's suspend: look again */
#define SHP_MAX_FILE (4 << 20)

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
    uv_timer_t *sd_timer;  /* freed in its close callback */
    uint64_t sd_timer_due; /* monotonic us, 0 = not armed */
};

/* Rule arrays replaced by a reload: a thread may still hold a pointer into
 * them (a provider's rule, a destination's limits) until its next decision,
 * so they live as long as the dlv_shaping_t. A reload is rare. */
struct shp_retired {
    struct shp_retired *rt_next;
    shp_prule_t *rt_prules;
    int rt_nprules;
    shp_rule_t *rt_rules;
    int rt_nrules;
};

static int shp_load_tree(dlv_shaping_t *sh, const cfg_node_t *root, const char *name, bool builtin,
                         char *err, size_t errlen);
static int shp_limits_parse(const cfg_node_t *sec, const char *name, shp_limits_t *l,
                            bool allow_backoff, char *err, size_t errlen);
static int shp_rule_parse(const cfg_node_t *sec, const char *name, shp_rule_t *r, char *err,
                          size_t errlen);
static int shp_read_file(const char *path, char **text, char *err, size_t errlen);
static void shp_rule_free(shp_rule_t *r);
static void shp_prule_free(shp_prule_t *p);
static void shp_queue_apply(shp_queue_t *q, double rate, int conns);
static double shp_queue_top(const shp_queue_t *q);
static void shp_event(shp_queue_t *q, shp_provider_t *pv, const char *event, const char *detail,
                      const char *response);
static void shp_dest_timer(shp_dest_t *sd, uint64_t wait_us);

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

static json_object *shp_json_rate(double per_s);
static json_object *shp_json_limit(int n);

/* An operator's suspension (until_us) is in force at now. */
static bool shp_op_suspended(uint64_t until_us, uint64_t now_us)
{
    return until_us != 0 && until_us > now_us;
}

static uint64_t shp_now_ns(void)
{
    return clock_mono_us() * 1000ULL;
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

static void shp_bucket_rate(shp_bucket_t *b, const shp_rate_t *r)
{
    shp_bucket_set(b, r->r_n, r->r_period_us);
}

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
                        {"defer-queue", SHP_A_DEFER_QUEUE}, {"disable-source", SHP_A_DISABLE_SRC}};
            for (size_t i = 0; i < ARRAY_SIZE(acts); i++)
                if (strcasecmp(v, acts[i].n) == 0)
                    r->r_action = acts[i].a;
            if (r->r_action == 0)
                return cfg_error(
                    err, errlen, name, n->n_line,
                    "rule.action: expected backoff, normal, suspend, bounce-recipient, "
                    "defer-queue or disable-source, got \"%.40s\"",
                    v);
            have_action = true;
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
        } else if (n->n_type == CFG_NODE_STR && !shp_limit_key(k)) {
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

static int shp_load_tree(dlv_shaping_t *sh, const cfg_node_t *root, const char *name, bool builtin,
                         char *err, size_t errlen)
{
    int rc;
    if (!builtin && (rc = shp_vmta_config(sh, root, name, err, errlen)) != 0)
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
            shp_limits_overlay(&sh->sh_defaults, &l);
            for (const cfg_node_t *c = n->n_child; c != NULL; c = c->n_next) {
                if (strcmp(c->n_key, "rule") == 0) {
                    if ((rc = shp_rules_add(c, name, &sh->sh_rules, &sh->sh_nrules, err, errlen)) !=
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
            if (l.l_set & L_MAX_CONN)
                atomic_store(&sh->sh_global_conn, l.l_max_conn);
            if (l.l_set & L_MSG_RATE)
                shp_bucket_rate(&sh->sh_global_msg, &l.l_msg_rate);
            if (l.l_set & L_CONN_RATE)
                shp_bucket_rate(&sh->sh_global_cr, &l.l_conn_rate);
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
    for (int i = 0; i < sh->sh_nprules; i++) {
        bool replaced = false;
        for (int j = 0; j < nmine; j++)
            replaced |=
                strcasecmp(mine[j].pr_hosts.pv_name, sh->sh_prules[i].pr_hosts.pv_name) == 0;
        if (replaced) {
            shp_prule_free(&sh->sh_prules[i]);
            continue;
        }
        mine = xrealloc(mine, (size_t)(nmine + 1) * sizeof(*mine));
        mine[nmine++] = sh->sh_prules[i];
    }
    free(sh->sh_prules);
    sh->sh_prules = mine;
    sh->sh_nprules = nmine;
    return 0;
fail:
    for (int i = 0; i < nmine; i++)
        shp_prule_free(&mine[i]);
    free(mine);
    return rc;
}

static void shp_resolve(dlv_shaping_t *sh)
{
    for (int i = 0; i < sh->sh_nprules; i++) {
        shp_prule_t *p = &sh->sh_prules[i];
        p->pr_lim = sh->sh_defaults;
        shp_limits_overlay(&p->pr_lim, &p->pr_own);
        for (int j = 0; j < p->pr_ndoms; j++) {
            p->pr_doms[j].dr_lim = p->pr_lim;
            shp_limits_overlay(&p->pr_doms[j].dr_lim, &p->pr_doms[j].dr_own);
        }
    }
}

static int shp_parse_text(dlv_shaping_t *sh, const char *name, const char *text, bool builtin,
                          char *err, size_t errlen)
{
    cfg_node_t *root = NULL;
    int rc = cfg_tree_parse(name, text, strlen(text), &root, err, errlen);
    if (rc != 0)
        return SL_ECONFIG;
    rc = shp_load_tree(sh, root, name, builtin, err, errlen);
    cfg_tree_free(root);
    return rc;
}

static dlv_shaping_t *shp_alloc(queue_t *q)
{
    dlv_shaping_t *sh = xcalloc(1, sizeof(*sh));
    sh->sh_queue = q;
    uv_mutex_init(&sh->sh_lock);
    sh->sh_reg_cap = 256;
    sh->sh_reg = xcalloc(sh->sh_reg_cap, sizeof(*sh->sh_reg));
    shp_limits_t *d = &sh->sh_defaults; /* the base under the shipped defaults */
    d->l_bo_max_conn = 2;
    d->l_bo_msg = (shp_rate_t){60, 60000000};
    d->l_rec_after = 20;
    d->l_rec_quiet = 300;
    d->l_rec_factor = 1.5;
    d->l_set = ~0u;
    sh->sh_default_pool = -1;
    return sh;
}

int dlv_shaping_new_text(const char *builtin, const char *name, const char *text, queue_t *q,
                         dlv_shaping_t **out, char *err, size_t errlen)
{
    dlv_shaping_t *sh = shp_alloc(q);
    int rc = shp_parse_text(sh, "providers.conf (built-in)", builtin ? builtin : shp_builtin_text,
                            true, err, errlen);
    if (rc == 0 && text != NULL)
        rc = shp_parse_text(sh, name, text, false, err, errlen);
    if (rc == 0 && sh->sh_nvmtas == 0) { /* one implicit vmta: the system's source address */
        sh->sh_vmtas[0].vm_name = xstrdup("default");
        sh->sh_nvmtas = 1;
    }
    if (rc == 0 && sh->sh_npools == 0) {
        shp_pool_t *p = &sh->sh_pools[0];
        p->po_name = xstrdup("default");
        for (int i = 0; i < sh->sh_nvmtas; i++) {
            p->po_members[i] = i;
            p->po_weight[i] = 1;
        }
        p->po_n = sh->sh_nvmtas;
        sh->sh_npools = 1;
    }
    if (sh->sh_default_pool < 0)
        sh->sh_default_pool = 0;
    if (rc != 0) {
        dlv_shaping_free(sh);
        return SL_ECONFIG;
    }
    shp_resolve(sh);
    *out = sh;
    return 0;
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

int dlv_shaping_new(const char *path, const char *helo, queue_t *q, dlv_shaping_t **out, char *err,
                    size_t errlen)
{
    char *text = NULL;
    if (shp_read_file(path, &text, err, errlen) != 0)
        return SL_ECONFIG;
    int rc = dlv_shaping_new_text(NULL, path, text, q, out, err, errlen);
    free(text);
    if (rc == 0) {
        (*out)->sh_helo = helo;
        log_info("shaping: %d provider rule(s), %d virtual MTA(s), %d pool(s)%s%s",
                 (*out)->sh_nprules, (*out)->sh_nvmtas, (*out)->sh_npools,
                 path && path[0] ? " from " : "", path && path[0] ? path : "");
    }
    return rc;
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

void dlv_shaping_free(dlv_shaping_t *sh)
{
    if (sh == NULL)
        return;
    for (size_t i = 0; i < sh->sh_reg_cap; i++) {
        while (sh->sh_reg[i] != NULL) {
            shp_provider_t *pv = sh->sh_reg[i];
            sh->sh_reg[i] = pv->pv_next;
            shp_provider_free(pv);
        }
    }
    free(sh->sh_reg);
    uv_mutex_destroy(&sh->sh_lock);
    while (sh->sh_retired != NULL) {
        struct shp_retired *rt = sh->sh_retired;
        sh->sh_retired = rt->rt_next;
        for (int i = 0; i < rt->rt_nprules; i++)
            shp_prule_free(&rt->rt_prules[i]);
        free(rt->rt_prules);
        for (int i = 0; i < rt->rt_nrules; i++)
            shp_rule_free(&rt->rt_rules[i]);
        free(rt->rt_rules);
        free(rt);
    }
    for (int i = 0; i < sh->sh_nprules; i++)
        shp_prule_free(&sh->sh_prules[i]);
    free(sh->sh_prules);
    for (int i = 0; i < sh->sh_nrules; i++)
        shp_rule_free(&sh->sh_rules[i]);
    free(sh->sh_rules);
    for (int i = 0; i < sh->sh_nvmtas; i++) {
        free(sh->sh_vmtas[i].vm_name);
        free(sh->sh_vmtas[i].vm_source);
        free(sh->sh_vmtas[i].vm_ehlo);
    }
    for (int i = 0; i < sh->sh_npools; i++)
        free(sh->sh_pools[i].po_name);
    for (int i = 0; i < 2 * sh->sh_npool_users; i++)
        free(sh->sh_pool_users[i]);
    free(sh->sh_pool_users);
    free(sh->sh_pool_user_idx);
    free(sh);
}

/* ------------------------------------------------------------ matching */

const rules_provider_t *shp_provider_lookup(void *arg, const char *name)
{
    const dlv_shaping_t *sh = arg;
    for (int i = 0; i < sh->sh_nprules; i++)
        if (strcasecmp(sh->sh_prules[i].pr_hosts.pv_name, name) == 0)
            return &sh->sh_prules[i].pr_hosts;
    return NULL;
}

static dlv_shaping_t *shp_shipped_sh;
static pthread_once_t shp_shipped_once = PTHREAD_ONCE_INIT;

static void shp_shipped_make(void)
{
    char err[512];
    if (dlv_shaping_new_text(NULL, NULL, NULL, NULL, &shp_shipped_sh, err, sizeof(err)) != 0)
        sl_assert_fail(err, __FILE__, __LINE__, __func__); /* the unit tests load it: a bug */
}

const dlv_shaping_t *shp_shipped(void)
{
    pthread_once(&shp_shipped_once, shp_shipped_make);
    return shp_shipped_sh;
}

const shp_prule_t *shp_match_domain(const dlv_shaping_t *sh, const char *domain)
{
    char d[256];
    size_t len = rules_host_norm(domain, d);
    for (int i = 0; i < sh->sh_nprules; i++)
        if (rules_hosts_match(&sh->sh_prules[i].pr_hosts.pv_domains, d, len))
            return &sh->sh_prules[i];
    return NULL;
}

const shp_prule_t *shp_match_mx(const dlv_shaping_t *sh, const char *mx)
{
    char m[256];
    size_t len = rules_host_norm(mx, m);
    for (int i = 0; i < sh->sh_nprules; i++)
        if (rules_hosts_match(&sh->sh_prules[i].pr_hosts.pv_mx, m, len))
            return &sh->sh_prules[i];
    return NULL;
}

bool shp_rule_match(const shp_rule_t *r, int code, const char *status, const char *text)
{
    rules_reply_t rep;
    rules_reply_init(&rep, code, status, text, SIZE_MAX);
    return rules_test_match(&r->r_test, &rep);
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

/* shp_provider_get with sh_lock held. */
static shp_provider_t *shp_provider_get_locked(dlv_shaping_t *sh, const shp_prule_t *rule,
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
        pv->pv_lim = rule ? rule->pr_lim : sh->sh_defaults;
        shp_bucket_rate(&pv->pv_msg, &pv->pv_lim.l_total_msg);
        shp_bucket_rate(&pv->pv_cr, &pv->pv_lim.l_total_cr);
        pv->pv_q = xcalloc((size_t)sh->sh_nvmtas, sizeof(*pv->pv_q));
        for (int i = 0; i < sh->sh_nvmtas; i++) {
            shp_queue_t *q = &pv->pv_q[i];
            q->q_pv = pv;
            q->q_vmta = i;
            uv_mutex_init(&q->q_lock);
            q->q_lim = pv->pv_lim;
            q->q_level = shp_queue_top(q);
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
 * destination unless a queue is in backoff or the provider is suspended:
 * then it stays until dlv_shaping_free. Configured ones always stay. */
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
                     atomic_load(&pv->pv_q[i].q_disabled_until) <= clock_mono_us();
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
    return q->q_pv->pv_sh->sh_vmtas[q->q_vmta].vm_name;
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
    double normal = shp_rate_per_sec(&l->l_msg_rate);
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

void shp_queue_success(shp_queue_t *q, uint64_t now_us)
{
    atomic_fetch_add_explicit(&q->q_delivered, 1, memory_order_relaxed);
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
                    const char *text, uint64_t now_us)
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
    const shp_rule_t *drules = sh->sh_rules;
    int ndr = sh->sh_nrules;
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
    uv_mutex_lock(&q->q_lock);
    snprintf(q->q_last, sizeof(q->q_last), "%s", resp);
    bool fire = hit != NULL && shp_queue_hit(q, hit_i, hit, now_us);
    uv_mutex_unlock(&q->q_lock);
    if (!fire)
        return 0;
    char why[400];
    snprintf(why, sizeof(why), "%s (rule %s)", resp, hit->r_where);
    char d[200];
    switch (hit->r_action) {
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
            snprintf(d, sizeof(d), "source %s disabled for %llus",
                     sh->sh_vmtas[q->q_vmta].vm_source ? sh->sh_vmtas[q->q_vmta].vm_source : "-",
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
    const shp_vmta_t *vm = q ? &sh->sh_vmtas[q->q_vmta] : NULL;
    log_info("shaping: provider=%s vmta=%s event=%s %s (%s)", pv->pv_name, vm ? vm->vm_name : "*",
             event, detail, log_esc(response)); /* a peer's reply */
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
    json_object_object_add(o, "detail", json_object_new_string(detail));
    json_object_object_add(o, "response",
                           response && response[0] ? json_object_new_string(response) : NULL);
    queue_acct_event(sh->sh_queue, json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
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
    json_object_object_add(o, "vmta", json_object_new_string(sh->sh_vmtas[q->q_vmta].vm_name));
    const char *src = sh->sh_vmtas[q->q_vmta].vm_source;
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
    uv_mutex_unlock(&q->q_lock);
    return o;
}

json_object *dlv_shaping_json(dlv_t *d)
{
    dlv_shaping_t *sh = d ? d->d_shaping : NULL;
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
        json_object_object_add(o, "name", json_object_new_string(sh->sh_vmtas[v].vm_name));
        const char *src = sh->sh_vmtas[v].vm_source;
        json_object_object_add(o, "source_ip", src ? json_object_new_string(src) : NULL);
        const char *ehlo = sh->sh_vmtas[v].vm_ehlo;
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

/* ------------------------------------------------------------ reload */

static bool shp_str_eq(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

/* Do a and b have the same virtual MTAs, pools and pool choice? */
static bool shp_vmtas_same(const dlv_shaping_t *a, const dlv_shaping_t *b)
{
    if (a->sh_nvmtas != b->sh_nvmtas || a->sh_npools != b->sh_npools ||
        a->sh_default_pool != b->sh_default_pool || a->sh_npool_users != b->sh_npool_users)
        return false;
    for (int i = 0; i < a->sh_nvmtas; i++)
        if (!shp_str_eq(a->sh_vmtas[i].vm_name, b->sh_vmtas[i].vm_name) ||
            !shp_str_eq(a->sh_vmtas[i].vm_source, b->sh_vmtas[i].vm_source) ||
            !shp_str_eq(a->sh_vmtas[i].vm_ehlo, b->sh_vmtas[i].vm_ehlo))
            return false;
    for (int i = 0; i < a->sh_npools; i++) {
        const shp_pool_t *x = &a->sh_pools[i], *y = &b->sh_pools[i];
        if (!shp_str_eq(x->po_name, y->po_name) || x->po_n != y->po_n ||
            memcmp(x->po_members, y->po_members, (size_t)x->po_n * sizeof(int)) != 0 ||
            memcmp(x->po_weight, y->po_weight, (size_t)x->po_n * sizeof(int)) != 0)
            return false;
    }
    for (int i = 0; i < 2 * a->sh_npool_users; i++)
        if (!shp_str_eq(a->sh_pool_users[i], b->sh_pool_users[i]))
            return false;
    return true;
}

/* Install nsh's rules and limits in sh (sh_lock held); nsh keeps nothing
 * of them. */
static void shp_install_locked(dlv_shaping_t *sh, dlv_shaping_t *nsh)
{
    struct shp_retired *rt = xcalloc(1, sizeof(*rt));
    rt->rt_prules = sh->sh_prules;
    rt->rt_nprules = sh->sh_nprules;
    rt->rt_rules = sh->sh_rules;
    rt->rt_nrules = sh->sh_nrules;
    rt->rt_next = sh->sh_retired;
    sh->sh_retired = rt;
    sh->sh_prules = nsh->sh_prules;
    sh->sh_nprules = nsh->sh_nprules;
    sh->sh_rules = nsh->sh_rules;
    sh->sh_nrules = nsh->sh_nrules;
    nsh->sh_prules = NULL;
    nsh->sh_nprules = 0;
    nsh->sh_rules = NULL;
    nsh->sh_nrules = 0;
    sh->sh_defaults = nsh->sh_defaults;
    atomic_store(&sh->sh_global_conn, atomic_load(&nsh->sh_global_conn));
    atomic_store(&sh->sh_global_msg.b_interval, atomic_load(&nsh->sh_global_msg.b_interval));
    atomic_store(&sh->sh_global_msg.b_burst, atomic_load(&nsh->sh_global_msg.b_burst));
    atomic_store(&sh->sh_global_cr.b_interval, atomic_load(&nsh->sh_global_cr.b_interval));
    atomic_store(&sh->sh_global_cr.b_burst, atomic_load(&nsh->sh_global_cr.b_burst));
    /* every provider: its rule in the new set (by name) and its limits */
    for (size_t i = 0; i < sh->sh_reg_cap; i++) {
        for (shp_provider_t *pv = sh->sh_reg[i]; pv; pv = pv->pv_next) {
            const shp_prule_t *rule = NULL;
            for (int k = 0; pv->pv_rule != NULL && k < sh->sh_nprules; k++)
                if (strcasecmp(sh->sh_prules[k].pr_hosts.pv_name, pv->pv_name) == 0)
                    rule = &sh->sh_prules[k];
            pv->pv_rule = rule; /* a provider no longer configured: defaults */
            pv->pv_lim = rule ? rule->pr_lim : sh->sh_defaults;
            shp_bucket_rate(&pv->pv_msg, &pv->pv_lim.l_total_msg);
            shp_bucket_rate(&pv->pv_cr, &pv->pv_lim.l_total_cr);
            for (int v = 0; v < sh->sh_nvmtas; v++) {
                shp_queue_t *q = &pv->pv_q[v];
                uv_mutex_lock(&q->q_lock);
                q->q_lim = pv->pv_lim;
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

int dlv_shaping_reload_text(dlv_shaping_t *sh, const char *builtin, const char *name,
                            const char *text, bool *vmtas_changed, char *err, size_t errlen)
{
    dlv_shaping_t *nsh = NULL;
    if (dlv_shaping_new_text(builtin, name, text, NULL, &nsh, err, errlen) != 0)
        return SL_ECONFIG;
    bool same = shp_vmtas_same(sh, nsh);
    if (vmtas_changed != NULL)
        *vmtas_changed = !same;
    uv_mutex_lock(&sh->sh_lock);
    shp_install_locked(sh, nsh);
    uv_mutex_unlock(&sh->sh_lock);
    log_info("shaping: reloaded: %d provider rule(s)%s%s%s", sh->sh_nprules,
             name && text ? " from " : "", name && text ? name : "",
             same ? "" : " (virtual_mtas/pools changed: kept until a restart)");
    dlv_shaping_free(nsh);
    return 0;
}

int dlv_shaping_reload_sh(dlv_shaping_t *sh, const char *path, bool *vmtas_changed, char *err,
                          size_t errlen)
{
    char *text = NULL;
    if (shp_read_file(path, &text, err, errlen) != 0)
        return SL_ECONFIG;
    int rc = dlv_shaping_reload_text(sh, NULL, path, text, vmtas_changed, err, errlen);
    free(text);
    return rc;
}

int dlv_shaping_check(const char *path, char *err, size_t errlen)
{
    dlv_shaping_t *sh = NULL;
    if (dlv_shaping_new(path, NULL, NULL, &sh, err, errlen) != 0)
        return SL_ECONFIG;
    dlv_shaping_free(sh);
    return 0;
}

int dlv_shaping_reload(dlv_t *d, const char *path, bool *vmtas_changed, char *err, size_t errlen)
{
    if (d == NULL || d->d_shaping == NULL) {
        snprintf(err, errlen, "delivery is not running");
        return SL_ENOTFOUND;
    }
    return dlv_shaping_reload_sh(d->d_shaping, path, vmtas_changed, err, errlen);
}

/* ------------------------------------------------------------ suspend */

int dlv_shaping_suspend_sh(dlv_shaping_t *sh, const char *provider, const char *vmta,
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
            if (strcasecmp(sh->sh_vmtas[v].vm_name, vmta) == 0) {
                uint64_t was = atomic_load(&sh->sh_vmta_suspend[v]);
                if (until_us == 0 && !shp_op_suspended(was, clock_mono_us())) {
                    /* resume of what is not suspended: refused, as for a domain */
                    snprintf(err, errlen, "virtual MTA \"%s\" is not suspended", vmta);
                    return SL_ENOTFOUND;
                }
                atomic_store(&sh->sh_vmta_suspend[v], until_us);
                log_info("shaping: provider=* vmta=%s event=%s %s", sh->sh_vmtas[v].vm_name,
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
        for (int k = 0; k < sh->sh_nprules && rule == NULL; k++)
            if (strcasecmp(sh->sh_prules[k].pr_hosts.pv_name, provider) == 0)
                rule = &sh->sh_prules[k];
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

int dlv_shaping_suspend(dlv_t *d, const char *provider, const char *vmta, uint64_t for_s,
                        bool resume, char *err, size_t errlen)
{
    if (d == NULL || d->d_shaping == NULL) {
        snprintf(err, errlen, "delivery is not running");
        return SL_ENOTFOUND;
    }
    uint64_t until = resume ? 0 : for_s ? clock_mono_us() + for_s * 1000000ULL : UINT64_MAX;
    return dlv_shaping_suspend_sh(d->d_shaping, provider, vmta, until, err, errlen);
}

/* ================================================== destinations (thread) */

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
    const shp_prule_t *rule = shp_match_domain(sh, de->de_domain);
    sd->sd_final = rule != NULL;
    for (int i = 0; mx && rule == NULL && i < de->de_naddr; i++)
        rule = shp_match_mx(sh, de->de_addrs[i].da_host);
    sd->sd_final |= mx;
    sd->sd_pv = shp_provider_get_locked(sh, rule, de->de_domain);
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

void dlv_shp_dest_init(dlv_dest_t *de)
{
    dlv_shaping_t *sh = de->de_t->t_d->d_shaping;
    shp_dest_t *sd = xcalloc(1, sizeof(*sd));
    sd->sd_de = de;
    sd->sd_sh = sh;
    de->de_shp = sd;
    shp_dest_route(sd, false);
}

void dlv_shp_route_ready(dlv_dest_t *de)
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

void dlv_shp_dest_stop(dlv_dest_t *de)
{
    shp_dest_t *sd = de->de_shp;
    if (sd != NULL && sd->sd_timer != NULL) {
        sd->sd_timer->data = NULL;
        uv_close((uv_handle_t *)sd->sd_timer, shp_timer_closed_cb);
        sd->sd_timer = NULL;
    }
}

void dlv_shp_dest_free(dlv_dest_t *de)
{
    shp_dest_t *sd = de->de_shp;
    if (sd == NULL)
        return;
    dlv_shp_dest_stop(de);
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
    if (sd->sd_de->de_t->t_stopping) /* the timer is closed (dlv_shp_dest_stop) */
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

void dlv_shp_enqueue(dlv_dest_t *de, queue_dispatch_t *qd)
{
    shp_dest_t *sd = de->de_shp;
    int p = shp_pool_for(sd->sd_sh, qd);
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

queue_dispatch_t *dlv_shp_pop_any(dlv_dest_t *de)
{
    shp_dest_t *sd = de->de_shp;
    if (sd == NULL || de->de_npending == 0)
        return NULL;
    for (int p = 0; p < sd->sd_sh->sh_npools; p++)
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
    /* counted now; a race past a cap by another thread is undone */
    int a = atomic_fetch_add(&q->q_nconn, 1) + 1;
    int bb = atomic_fetch_add(&pv->pv_nconn, 1) + 1;
    int c = atomic_fetch_add(&sh->sh_global_nconn, 1) + 1;
    if ((qmax > 0 && a > qmax) || (pvmax > 0 && bb > pvmax) || (gmax > 0 && c > gmax)) {
        atomic_fetch_sub(&q->q_nconn, 1);
        atomic_fetch_sub(&pv->pv_nconn, 1);
        atomic_fetch_sub(&sh->sh_global_nconn, 1);
        return UINT64_MAX;
    }
    sd->sd_dom_nconn++;
    return 0;
}

void dlv_shp_conn_release(dlv_dest_t *de, int vmta)
{
    shp_dest_t *sd = de->de_shp;
    atomic_fetch_sub(&shp_q(sd, vmta)->q_nconn, 1);
    atomic_fetch_sub(&sd->sd_pv->pv_nconn, 1);
    atomic_fetch_sub(&sd->sd_sh->sh_global_nconn, 1);
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
    dlv_where_t w = {.w_mta_sts = dlv_sts_mode(de)};
    for (int i = 0; i < sd->sd_sh->sh_npools; i++) {
        if (p >= 0 && i != p)
            continue;
        queue_dispatch_t *qd;
        while ((qd = shp_pool_pop(de, &sd->sd_pq[i])) != NULL) {
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
    int np = sh->sh_npools;
    for (int k = 0; k < np; k++) {
        int p = (sd->sd_pool_rr + k) % np;
        if (sd->sd_pq[p].pq_n == 0 || !shp_pool_has(&sh->sh_pools[p], v))
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

void dlv_shp_kick(dlv_dest_t *de)
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
    for (int p = 0; p < sh->sh_npools; p++) {
        if (sd->sd_pq[p].pq_n == 0)
            continue;
        uint64_t until = UINT64_MAX;
        bool any = false;
        for (int i = 0; i < sh->sh_pools[p].po_n; i++) {
            int v = sh->sh_pools[p].po_members[i];
            any |= allowed[v];
            until = MIN(until, atomic_load(&shp_q(sd, v)->q_disabled_until));
        }
        bool held = false; /* a source the operator suspended: hold, do not defer */
        for (int i = 0; !any && i < sh->sh_pools[p].po_n; i++)
            held |= shp_op_suspended(
                atomic_load(&sh->sh_vmta_suspend[sh->sh_pools[p].po_members[i]]), now);
        if (!any && held) {
            shp_dest_timer(sd, SHP_OP_POLL_MS * 1000ULL);
        } else if (!any) {
            char text[200];
            snprintf(text, sizeof(text), "every source of pool %s is disabled for provider %s",
                     sh->sh_pools[p].po_name, sd->sd_pv->pv_name);
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
    /* then open new ones gradually while a backlog waits */
    int connecting = 0;
    for (dlv_session_t *s = de->de_sessions; s; s = dlv_session_next(s))
        if (dlv_session_connecting(s))
            connecting++;
    int max = MAX(1, cfg->c_dlv_max_conn_per_dest);
    bool blocked = false;
    while (de->de_npending > connecting && de->de_nconn < MIN(de->de_limit, max)) {
        /* the pool to serve: round robin among those with a backlog */
        int np = sh->sh_npools, p = -1;
        for (int k = 0; k < np && p < 0; k++)
            if (sd->sd_pq[(sd->sd_pool_rr + k) % np].pq_n > 0)
                p = (sd->sd_pool_rr + k) % np;
        if (p < 0)
            break;
        bool ok[SHP_MAX_VMTAS];
        memcpy(ok, allowed, sizeof(ok));
        int v = -1;
        for (;;) {
            int c = shp_pool_pick(&sh->sh_pools[p], sd->sd_pq[p].pq_cw, ok);
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
            dlv_shp_conn_release(de, v);
            break;
        }
        connecting++;
    }
    if (de->de_npending > 0 && blocked) /* caps held by other threads' connections too */
        wait = MIN(wait, SHP_BLOCKED_POLL_MS * 1000ULL);
    if (wait != UINT64_MAX && de->de_npending > 0)
        shp_dest_timer(sd, wait);
}

queue_dispatch_t *dlv_shp_next(dlv_dest_t *de, int vmta, bool *quit)
{
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

int dlv_shp_max_msgs(dlv_dest_t *de, int vmta)
{
    UNUSED(vmta);
    shp_dest_check(de->de_shp); /* a reload's max_messages_per_connection: now */
    int n = shp_lim(de)->l_max_msgs;
    return n > 0 ? n : de->de_t->t_cfg->c_dlv_max_msgs_per_conn;
}

int dlv_shp_max_rcpt(dlv_dest_t *de, int vmta)
{
    UNUSED(vmta);
    int n = shp_lim(de)->l_max_rcpt;
    return n > 0 ? n : de->de_t->t_cfg->c_dlv_max_rcpt_per_txn;
}

const char *dlv_shp_helo(dlv_dest_t *de, int vmta)
{
    const char *h = de->de_shp->sd_sh->sh_vmtas[vmta].vm_ehlo;
    return h ? h : de->de_t->t_helo;
}

int dlv_shp_bind(dlv_dest_t *de, int vmta, uv_tcp_t *tcp)
{
    return shp_vmta_bind(de->de_shp->sd_sh, vmta, tcp);
}

shp_queue_t *dlv_shp_queue(dlv_dest_t *de, int vmta)
{
    return shp_q(de->de_shp, vmta);
}

void dlv_shp_signal(dlv_dest_t *de, int signal)
{
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

const char *dlv_shp_provider(const dlv_dest_t *de)
{
    return de->de_shp && de->de_shp->sd_pv ? de->de_shp->sd_pv->pv_name : NULL;
}
