/*
 * delivery/shaping_int.h - private to delivery/: traffic shaping. Providers
 * (MX rollup), virtual MTAs and pools, throttles shared across delivery
 * threads (token buckets, connection counts), backoff response rules with
 * gradual recovery, per-job fair share of a destination's backlog.
 *
 * Configuration (docs/shaping.md): the shipped config/providers.conf
 * (compiled in: shp_builtin_text) with the operator's delivery.shaping file
 * laid over it. dlv_new() compiles both into one dlv_shaping_t, which lives
 * as long as the dlv_t (one per configuration snapshot).
 *
 * Sharing: a provider's state (shp_provider_t) and its queues (one per
 * virtual MTA: PowerMTA's domain/vmta pairs) are shared by every delivery
 * thread whose domains roll up to that provider. Hot-path fields are
 * atomics (token buckets: one CAS on a 64-bit theoretical arrival time;
 * connection counts: atomic inc/dec). A per-queue mutex guards only mode
 * changes (backoff, recovery steps, rule thresholds), which are rare. The
 * provider registry (name -> provider) has a mutex taken when a destination
 * is created or first routed, and by dlv_shaping_json(); never per message.
 * Per-destination state (shp_dest_t: the pending backlog by pool and job, a
 * timer for the next token) belongs to the destination's thread.
 *
 * Limits and reload: a reload (dlv_shaping_reload) rewrites a provider's
 * limits (pv_lim) under the registry mutex. Nothing reads pv_lim without
 * it: each queue keeps a copy under its own mutex (q_lim, set in the same
 * critical section), each destination a copy it takes under the registry
 * mutex when it notices the new generation (sh_gen). Rule arrays are never
 * written in place: a reload installs new ones and keeps the old.
 */
#ifndef SLUICE_DELIVERY_SHAPING_INT_H
#define SLUICE_DELIVERY_SHAPING_INT_H

#include "delivery/delivery_int.h"
#include "delivery/rules_int.h" /* the one rule engine: host patterns, reply tests */

#define SHP_MAX_VMTAS 64
#define SHP_MAX_POOLS 64
#define SHP_MAX_RULES 64
#define SHP_MAX_HITS 32 /* threshold window: the last hits remembered per rule */

/* ------------------------------------------------------------ token bucket */

/* A smooth token bucket (GCRA): tokens refill continuously, one every
 * b_interval ns, with a tolerance of b_burst tokens. The whole state is the
 * theoretical arrival time b_tat, updated with one CAS; b_interval may be
 * changed at any time (backoff) by any thread. interval 0 = unlimited. */
typedef struct shp_bucket {
    _Atomic uint64_t b_tat;      /* ns, monotonic clock */
    _Atomic uint64_t b_interval; /* ns per token; 0 = unlimited */
    _Atomic uint32_t b_burst;    /* tokens that may go back to back (>= 1) */
} shp_bucket_t;

/* Set the rate: n tokens per period_us (n == 0: unlimited). Any thread. */
void shp_bucket_set(shp_bucket_t *b, uint64_t n, uint64_t period_us);
/* Take one token at now_ns: 0 when taken, else the ns to wait (nothing
 * taken). Any thread. */
uint64_t shp_bucket_take(shp_bucket_t *b, uint64_t now_ns);
/* The ns to wait for a token, without taking it. Any thread. */
uint64_t shp_bucket_peek(shp_bucket_t *b, uint64_t now_ns);
/* Give back a token taken with shp_bucket_take (a later level said no). */
void shp_bucket_refund(shp_bucket_t *b);

/* ------------------------------------------------------------ limits */

typedef struct shp_rate {
    uint64_t r_n;         /* tokens ... */
    uint64_t r_period_us; /* ... per period; r_n == 0 = unlimited */
} shp_rate_t;

/* Parse "100/1m", "10/s", "3600/h", "5/30s"; "" or "0" = unlimited.
 * 0 or SL_EPARSE. */
int shp_rate_parse(const char *s, shp_rate_t *out);
/* Tokens per second (0 = unlimited). */
double shp_rate_per_sec(const shp_rate_t *r);

/* Limits of one level. Every field has a bit in l_set: a key a level does
 * not set is inherited from its parent (defaults -> provider -> domain). */
typedef struct shp_limits {
    uint32_t l_set;
    int l_max_conn;         /* max_connections: per queue (provider, vmta); 0 = no limit */
    int l_max_msgs;         /* max_messages_per_connection */
    int l_max_rcpt;         /* max_recipients_per_transaction */
    shp_rate_t l_msg_rate;  /* message_rate: per queue */
    shp_rate_t l_conn_rate; /* connection_rate: per queue */
    int l_total_conn;       /* total_max_connections: per provider, all vmtas */
    shp_rate_t l_total_msg; /* total_message_rate */
    shp_rate_t l_total_cr;  /* total_connection_rate */
    int l_bo_max_conn;      /* backoff.max_connections */
    shp_rate_t l_bo_msg;    /* backoff.message_rate */
    shp_rate_t l_bo_cr;     /* backoff.connection_rate */
    uint64_t l_bo_retry;    /* backoff.retry (s): earliest retry of deferrals in backoff */
    int l_rec_after;        /* recover_after: successes per recovery step */
    uint64_t l_rec_quiet;   /* recover_quiet (s): or this long without a new trigger */
    double l_rec_factor;    /* recover_factor: rate multiplier per step (> 1) */
} shp_limits_t;

/* dst gets every key src sets (src over dst). */
void shp_limits_overlay(shp_limits_t *dst, const shp_limits_t *src);

/* ------------------------------------------------------------ rules */

typedef enum {
    SHP_A_BACKOFF = 1,
    SHP_A_NORMAL,
    SHP_A_SUSPEND,     /* the whole provider, for r_duration */
    SHP_A_BOUNCE_RCPT, /* this recipient bounces (a 4xx that means "never") */
    SHP_A_DEFER_QUEUE, /* defer this destination's backlog now */
    SHP_A_DISABLE_SRC, /* skip this vmta for the provider for r_duration */
} shp_action_t;

typedef struct shp_rule {
    rules_test_t r_test; /* code = "421" / "4xx"; match = regex on "CODE STATUS TEXT" */
    shp_action_t r_action;
    uint64_t r_duration_us;
    int r_count;          /* threshold: r_count hits ... */
    uint64_t r_window_us; /* ... within this window; 1 = immediate */
    char *r_where;        /* "file:line" */
    char *r_src;          /* the pattern, for logs */
} shp_rule_t;

/* Parse "3 in 5m" / "immediate". 0 or SL_EPARSE. */
int shp_trigger_parse(const char *s, int *count, uint64_t *window_us);
/* Does rule r match a reply? status may be "" or NULL. */
bool shp_rule_match(const shp_rule_t *r, int code, const char *status, const char *text);

/* ------------------------------------------------------------ config */

typedef struct shp_vmta {
    char *vm_name;
    char *vm_source;      /* source address or NULL (the system's choice) */
    sockaddr_any_t vm_sa; /* port 0 */
    char *vm_ehlo;        /* NULL = delivery.helo_name */
} shp_vmta_t;

typedef struct shp_pool {
    char *po_name;
    int po_n;
    int po_members[SHP_MAX_VMTAS]; /* vmta indexes */
    int po_weight[SHP_MAX_VMTAS];
} shp_pool_t;

typedef struct shp_domrule {
    char *dr_domain;
    shp_limits_t dr_lim; /* resolved: provider's limits with the domain's keys over them */
    shp_limits_t dr_own; /* only what the domain rule sets (enforced per destination) */
} shp_domrule_t;

typedef struct shp_prule {
    rules_provider_t pr_hosts; /* name, domains and "*.google.com" MX patterns (rules.c) */
    shp_limits_t pr_own;       /* keys the provider sets */
    shp_limits_t pr_lim;       /* resolved over the defaults */
    shp_rule_t *pr_rules;
    int pr_nrules;
    shp_domrule_t *pr_doms;
    int pr_ndoms;
} shp_prule_t;

typedef struct shp_provider shp_provider_t;

struct dlv_shaping {
    queue_t *sh_queue; /* accounting records; NULL in unit tests */
    const char *sh_helo;
    shp_vmta_t sh_vmtas[SHP_MAX_VMTAS];
    int sh_nvmtas; /* >= 1: an implicit "default" when none is configured */
    shp_pool_t sh_pools[SHP_MAX_POOLS];
    int sh_npools; /* >= 1 */
    int sh_default_pool;
    char **sh_pool_users; /* pairs: user, pool name; NULL-terminated */
    int *sh_pool_user_idx;
    int sh_npool_users;
    shp_limits_t sh_defaults; /* resolved, every key set */
    shp_rule_t *sh_rules;     /* defaults' rules: after a provider's own */
    int sh_nrules;
    shp_prule_t *sh_prules; /* operator's first, then the shipped ones */
    int sh_nprules;
    /* global limits */
    _Atomic int sh_global_conn; /* a reload stores it; read lock-free */
    _Atomic int sh_global_nconn;
    shp_bucket_t sh_global_msg;
    shp_bucket_t sh_global_cr;
    /* reload (dlv_shaping_reload): the generation destinations compare
     * against, and the rule arrays replaced by earlier reloads (a thread may
     * still read them; freed with the dlv_shaping_t) */
    _Atomic uint32_t sh_gen;
    struct shp_retired *sh_retired;
    /* operator suspensions of a virtual MTA (all providers): monotonic us */
    _Atomic uint64_t sh_vmta_suspend[SHP_MAX_VMTAS];
    /* the counters (delivered, deferred, bounced) of providers freed by
     * shp_provider_put, per vmta, so that the per-vmta totals of
     * dlv_shaping_json (and the metrics made from them) never go down */
    _Atomic uint64_t sh_gone[SHP_MAX_VMTAS][3];
    /* provider registry */
    uv_mutex_t sh_lock;
    shp_provider_t **sh_reg;
    size_t sh_reg_cap; /* power of two */
    size_t sh_reg_n;
};

typedef enum { SHP_NORMAL = 0, SHP_BACKOFF, SHP_RECOVERING } shp_mode_t;

/* A queue: (provider, vmta). */
typedef struct shp_queue {
    shp_provider_t *q_pv;
    int q_vmta;
    _Atomic int q_nconn;
    _Atomic int q_max_conn; /* in force now (mode-dependent); 0 = no limit */
    shp_bucket_t q_msg;
    shp_bucket_t q_cr;
    _Atomic int q_mode;                /* shp_mode_t */
    _Atomic uint64_t q_disabled_until; /* monotonic us: disable-source */
    _Atomic uint32_t q_succ;           /* successes since the last step */
    _Atomic uint64_t q_delivered, q_deferred, q_bounced;
    uv_mutex_t q_lock;  /* the fields below */
    shp_limits_t q_lim; /* the provider's limits: a copy of pv_lim (a reload rewrites both) */
    double q_level;     /* fraction of the normal rate in force (backoff..1) */
    uint64_t q_step_at; /* monotonic us of the last mode change */
    uint64_t q_backoffs;
    char q_last[256]; /* last non-2xx response */
    uint64_t *q_hits; /* [rules][SHP_MAX_HITS] ring of hit times, lazily */
    int *q_hitpos;
} shp_queue_t;

struct shp_provider {
    shp_provider_t *pv_next; /* registry chain */
    dlv_shaping_t *pv_sh;
    char *pv_name;
    const shp_prule_t *pv_rule;        /* NULL: a destination of its own (defaults); sh_lock */
    shp_limits_t pv_lim;               /* sh_lock (a reload rewrites it): threads read copies */
    _Atomic int pv_refs;               /* destinations using it */
    _Atomic int pv_nconn;              /* all vmtas */
    shp_bucket_t pv_msg;               /* total_message_rate */
    shp_bucket_t pv_cr;                /* total_connection_rate */
    _Atomic uint64_t pv_suspend_until; /* monotonic us: a "suspend" rule */
    _Atomic uint64_t pv_op_until;      /* operator's suspend: monotonic us, UINT64_MAX = until
                                        * resumed, 0 = none (the backlog is held, not deferred) */
    shp_queue_t *pv_q;                 /* [sh_nvmtas] */
};

/* Compile the shaping configuration: the shipped text, then the file at
 * path over it (NULL / "" = none). 0, or SL_ECONFIG with "file:line: what".
 * Any thread. */
int dlv_shaping_new(const char *path, const char *helo, queue_t *q, dlv_shaping_t **out, char *err,
                    size_t errlen);
/* Same from text (tests): builtin may be NULL (then the shipped text). */
int dlv_shaping_new_text(const char *builtin, const char *name, const char *text, queue_t *q,
                         dlv_shaping_t **out, char *err, size_t errlen);
void dlv_shaping_free(dlv_shaping_t *sh);
/* The shipped config/providers.conf (a copy kept equal by the unit test). */
extern const char shp_builtin_text[];

/* The providers of sh as the bounce rules look them up (a
 * dlv_rules_lookup_fn; arg: the dlv_shaping_t): their host patterns by
 * name, or NULL. Any thread (sh not shared, or its rule set not replaced
 * meanwhile). */
const rules_provider_t *shp_provider_lookup(void *arg, const char *name);
/* The shipped providers.conf alone, compiled once (the built-in bounce
 * rules' providers). Never freed. Any thread. */
const dlv_shaping_t *shp_shipped(void);

/* Provider rule for a recipient domain (domain patterns), or NULL. */
const shp_prule_t *shp_match_domain(const dlv_shaping_t *sh, const char *domain);
/* Provider rule for an MX host name (trailing dot allowed), or NULL. */
const shp_prule_t *shp_match_mx(const dlv_shaping_t *sh, const char *mx);
/* Find or create a provider's shared state (name of the rule, or the
 * domain when rule is NULL) and take a reference. Any thread. */
shp_provider_t *shp_provider_get(dlv_shaping_t *sh, const shp_prule_t *rule, const char *domain);
void shp_provider_put(shp_provider_t *pv);
/* The limits in force for a domain of pv: its domain rule's, else pv's.
 * sh_lock held (or one thread): borrowed, pv's may change once it is
 * released, so callers on delivery threads copy them. */
const shp_limits_t *shp_limits_for(const shp_provider_t *pv, const char *domain,
                                   const shp_limits_t **own);

/* A reply (code >= 400) on queue q: the first matching rule (provider's,
 * then defaults') whose trigger fires is applied. Returns its action, or 0.
 * now_us is monotonic. Any thread. */
int shp_queue_reply(shp_queue_t *q, const char *domain, int code, const char *status,
                    const char *text, uint64_t now_us);
/* A delivery on q: counts towards the next recovery step. Any thread. */
void shp_queue_success(shp_queue_t *q, uint64_t now_us);
/* Enter backoff / normal (rules and operator). Any thread. */
void shp_queue_backoff(shp_queue_t *q, const char *why, uint64_t now_us);
void shp_queue_normal(shp_queue_t *q, const char *why, uint64_t now_us);
/* Earliest retry (unix s) of a deferral on q: backoff.retry from now while
 * q is in backoff or recovering, else 0 (the schedule's). Any thread. */
uint64_t shp_queue_retry_at(shp_queue_t *q);
/* Message rate in force on q (per second, 0 = unlimited). */
double shp_queue_rate(shp_queue_t *q);

/* Reload: compile the shaping file at path (NULL / "" = only the shipped
 * text) and install its defaults, provider rules, response rules and
 * global limits in sh, atomically for every thread (under sh_lock). The
 * providers' state (connections, backoff mode, counters, suspensions) is
 * kept; their limits become the new ones (a queue in backoff keeps its
 * level, capped at the new normal rate). Destinations pick the change up
 * at their next decision (their provider is matched again once they have
 * no connection). Virtual MTAs and pools are not changed by a reload:
 * *vmtas_changed (may be NULL) says the file changed them (a restart
 * applies them). 0, or SL_ECONFIG with "file:line: what" and sh unchanged.
 * Any thread (the control's main thread). */
int dlv_shaping_reload_sh(dlv_shaping_t *sh, const char *path, bool *vmtas_changed, char *err,
                          size_t errlen);
/* Same from text (tests; builtin NULL = the shipped text). */
int dlv_shaping_reload_text(dlv_shaping_t *sh, const char *builtin, const char *name,
                            const char *text, bool *vmtas_changed, char *err, size_t errlen);
/* Operator suspend (until_us: monotonic; UINT64_MAX = until resumed) or
 * resume (until_us 0) of a provider (by name: a configured provider or a
 * destination domain of its own) or of a virtual MTA (by name: for every
 * provider). 0, or SL_ENOTFOUND-like negative code with err set. Any thread. */
int dlv_shaping_suspend_sh(dlv_shaping_t *sh, const char *provider, const char *vmta,
                           uint64_t until_us, char *err, size_t errlen);

/* The same on the running delivery's shaping (declared for core/server in
 * core/server/ops_int.h). dlv_shaping_suspend: for_s 0 = until resumed;
 * resume clears the operator's suspension. */
int dlv_shaping_reload(dlv_t *d, const char *path, bool *vmtas_changed, char *err, size_t errlen);
/* Compile the shaping file at path (as dlv_shaping_new) only to check it. */
int dlv_shaping_check(const char *path, char *err, size_t errlen);
int dlv_shaping_suspend(dlv_t *d, const char *provider, const char *vmta, uint64_t for_s,
                        bool resume, char *err, size_t errlen);

/* ------------------------------------------------------------ vmta.c */

/* Parse the virtual_mtas / pools / pool_users / default_pool entries of a
 * shaping file (the tree's root) into sh. 0 or SL_ECONFIG. */
int shp_vmta_config(dlv_shaping_t *sh, const void *root, const char *name, char *err,
                    size_t errlen);
/* The pool of a dispatch: X-Sluice-Pool (the header is removed from the
 * body), else the AUTH user's pool, else the default. Delivery thread. */
int shp_pool_for(const dlv_shaping_t *sh, queue_dispatch_t *qd);
/* Remove every "X-Sluice-Pool:" field from the header of qd's body and
 * return the first one's value in val (or "" when none). */
void shp_strip_pool_header(queue_dispatch_t *qd, char *val, size_t vallen);
/* The next vmta of pool p by smooth weighted round robin over the members
 * allowed[] says yes to; -1 when none. cw is the pool's per-member state. */
int shp_pool_pick(const shp_pool_t *p, int *cw, const bool *allowed);
/* Bind a libuv TCP handle to the vmta's source address (no-op without
 * one). 0 or a libuv error. */
int shp_vmta_bind(const dlv_shaping_t *sh, int vmta, uv_tcp_t *tcp);

/* ------------------------------------------------------------ destinations */

/* Per-destination state (delivery thread). */
typedef struct shp_dest shp_dest_t;

#endif /* SLUICE_DELIVERY_SHAPING_INT_H */
