/*
 * delivery/shaping_int.h - private to delivery/: traffic shaping, in two
 * modules.
 *
 * The rule set (shaping_conf.c, with vmta.c for virtual MTAs and pools):
 * the shipped config/providers.conf (compiled in: shp_builtin_text) with the
 * operator's delivery.shaping file laid over it (docs/shaping.md), parsed
 * into one immutable shp_conf_t: defaults, global limits, providers (their
 * host patterns, limits, response rules, per_domain rules), virtual MTAs,
 * pools. Nothing in it changes once parsed; a reload parses a new one.
 *
 * The provider registry (providers.c, dlv_shaping_t): the state that the
 * rule set drives, shared by every delivery thread whose domains roll up
 * to a provider: token buckets, connection counts, each (provider, virtual
 * MTA) queue's mode (backoff and gradual recovery), suspensions, counters,
 * the JSON for `sluicectl providers`, and the installation of a new rule
 * set on reload. Hot-path fields are atomics (token buckets: one CAS on a
 * 64-bit theoretical arrival time; connection counts: atomic inc/dec). A
 * per-queue mutex guards only mode changes (backoff, recovery steps, rule
 * thresholds), which are rare. The registry's mutex (sh_lock) is taken
 * when a destination is created or first routed, on a 4xx/5xx reply, by
 * dlv_shaping_json() and by a reload; never per message.
 *
 * Limits and reload: a reload installs a new rule set (sh_conf) and
 * rewrites each provider's limits (pv_lim) under sh_lock. Nothing reads
 * pv_lim without it: each queue keeps a copy under its own mutex (q_lim,
 * set in the same critical section), each destination a copy it takes
 * under sh_lock when it notices the new generation (sh_gen). A replaced
 * rule set is kept until the registry is freed (threads may still point
 * into it). Virtual MTAs and pools stay those of the start-up rule set
 * (sh_vm): they need a restart.
 *
 * The per-destination backlog and hand-off to sessions that use them are
 * the destination's (dest.c).
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
    bool l_adaptive;        /* adaptive: learn the queue's capacity (adaptive.c); unset:
                             * delivery.adaptive decides */
} shp_limits_t;

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
    L_ADAPTIVE = 1 << 15,
};

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
    SHP_A_CAPACITY,    /* a capacity reply (r_capacity): adaptive mode decreases that limit;
                        * otherwise it is a backoff */
} shp_action_t;

/* What a capacity reply says was passed (rule key "limit"). */
typedef enum {
    SHP_CAP_NONE = 0,
    SHP_CAP_CONN, /* too many connections (at the greeting, EHLO) */
    SHP_CAP_MSGS, /* too many messages on this connection */
    SHP_CAP_RATE, /* too many messages per unit of time */
} shp_capacity_t;

typedef struct shp_rule {
    rules_test_t r_test; /* code = "421" / "4xx"; match = regex on "CODE STATUS TEXT" */
    shp_action_t r_action;
    uint64_t r_duration_us;
    int r_count;               /* threshold: r_count hits ... */
    uint64_t r_window_us;      /* ... within this window; 1 = immediate */
    shp_capacity_t r_capacity; /* SHP_A_CAPACITY: which limit */
    char *r_where;             /* "file:line" */
    char *r_src;               /* the pattern, for logs */
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
    int vm_verp;          /* verp = true (1) / false (-1); 0 = the pool's, else bounces.verp */
} shp_vmta_t;

typedef struct shp_pool {
    char *po_name;
    int po_n;
    int po_members[SHP_MAX_VMTAS]; /* vmta indexes */
    int po_weight[SHP_MAX_VMTAS];
    int po_verp; /* verp = true (1) / false (-1); 0 = bounces.verp */
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
    bool pr_shared; /* shared = true: limits held across nodes (cluster.c, docs/cluster.md) */
} shp_prule_t;

/* The rule set: immutable once parsed (shaping_conf.c, vmta.c). */
typedef struct shp_conf {
    shp_vmta_t sc_vmtas[SHP_MAX_VMTAS];
    int sc_nvmtas; /* >= 1: an implicit "default" when none is configured */
    shp_pool_t sc_pools[SHP_MAX_POOLS];
    int sc_npools; /* >= 1 */
    int sc_default_pool;
    char **sc_pool_users; /* pairs: user, pool name; NULL-terminated */
    int *sc_pool_user_idx;
    int sc_npool_users;
    shp_limits_t sc_defaults; /* resolved, every key set */
    shp_rule_t *sc_rules;     /* defaults' rules: after a provider's own */
    int sc_nrules;
    shp_prule_t *sc_prules; /* operator's first, then the shipped ones */
    int sc_nprules;
    shp_limits_t sc_global;   /* global { }: l_max_conn, l_msg_rate, l_conn_rate (l_set) */
    bool sc_global_shared;    /* global { shared = true; }: across nodes (cluster.c) */
    struct shp_conf *sc_next; /* the registry's list of replaced rule sets */
} shp_conf_t;

/* Parse the shaping configuration: the shipped text (builtin NULL: the
 * compiled-in providers.conf), then text over it (name for messages; NULL:
 * none). 0 and *out (caller frees with shp_conf_free), or SL_ECONFIG with
 * "file:line: what". Any thread. */
int shp_conf_parse(const char *builtin, const char *name, const char *text, shp_conf_t **out,
                   char *err, size_t errlen);
/* The same with the operator's file at path (NULL / "": the shipped
 * providers only). */
int shp_conf_load(const char *path, shp_conf_t **out, char *err, size_t errlen);
void shp_conf_free(shp_conf_t *c);
/* The shipped providers.conf alone, parsed once (the built-in bounce
 * rules' providers). Never freed. Any thread. */
const shp_conf_t *shp_conf_shipped(void);
/* The shipped config/providers.conf, compiled in (the build embeds it). */
extern const char shp_builtin_text[];
/* The providers of a rule set as the bounce rules look them up (a
 * dlv_rules_lookup_fn; arg: the shp_conf_t): their host patterns by name,
 * or NULL. */
const rules_provider_t *shp_provider_lookup(void *arg, const char *name);
/* Provider rule for a recipient domain (domain patterns), or NULL. */
const shp_prule_t *shp_match_domain(const shp_conf_t *c, const char *domain);
/* Provider rule for an MX host name (trailing dot allowed), or NULL. */
const shp_prule_t *shp_match_mx(const shp_conf_t *c, const char *mx);
/* Do a and b have the same virtual MTAs, pools and pool choice? */
bool shp_conf_vmtas_same(const shp_conf_t *a, const shp_conf_t *b);

/* ------------------------------------------------------------ registry */

typedef struct shp_provider shp_provider_t;
typedef struct shp_adapt_store shp_adapt_store_t; /* adaptive.c: the learned values' file */

struct dlv_shaping {
    queue_t *sh_queue;         /* accounting records; NULL in unit tests */
    const shp_conf_t *sh_vm;   /* the start-up rule set: virtual MTAs and pools */
    int sh_nvmtas;             /* sh_vm's */
    const shp_conf_t *sh_conf; /* the rules and limits in force (sh_lock; a reload replaces it) */
    shp_conf_t *sh_confs;      /* every rule set it had (sc_next): freed with the registry */
    /* global limits */
    _Atomic int sh_global_conn; /* a reload stores it; read lock-free */
    _Atomic int sh_global_nconn;
    shp_bucket_t sh_global_msg;
    shp_bucket_t sh_global_cr;
    /* reload (dlv_shaping_reload): the generation destinations compare against */
    _Atomic uint32_t sh_gen;
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
    struct dlv_cluster *sh_cluster;        /* shared limits (cluster.c); NULL: one node */
    struct cl_lim *sh_cl_msg, *sh_cl_conn; /* global { shared = true; } (cluster.c), or NULL */
    /* adaptive mode (adaptive.c): delivery.adaptive, for queues whose
     * limits do not say; the learned values kept in the spool */
    bool sh_adaptive;
    shp_adapt_store_t *sh_store;
};

typedef enum { SHP_NORMAL = 0, SHP_BACKOFF, SHP_RECOVERING } shp_mode_t;

/* A queue's learned capacity (adaptive.c). a_on, a_rate, a_conn under
 * q_lock; the hot path reads a_msgs and counts deliveries with atomics. */
typedef struct shp_adapt {
    _Atomic bool a_on;  /* adaptive mode for this queue (its limits, else delivery.adaptive) */
    bool a_ss;          /* slow start: no rate signal yet, the rate doubles per interval */
    double a_rate;      /* learned message rate (per second) */
    double a_clean;     /* the rate of the last interval that was clean and used it whole */
    double a_step;      /* additive increase per interval (msgs/s) */
    int a_conn;         /* learned max connections */
    _Atomic int a_msgs; /* learned max messages per connection; 0 = none learned */
    _Atomic uint64_t a_tick_at; /* monotonic us: start of the interval */
    _Atomic uint32_t a_count;   /* deliveries in the interval */
    uint64_t a_dec_at[4];       /* monotonic us: last decrease per shp_capacity_t */
    uint64_t a_conn_at;         /* last change of a_conn by a signal or a probe */
    bool a_conn_learned;        /* a "too many connections" was seen: probe slowly */
    uint64_t a_rec_at;          /* last "adapt" record of an increase */
    uint64_t a_signals;         /* capacity replies counted */
} shp_adapt_t;

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
    struct cl_lim *q_cl_msg, *q_cl_conn; /* shared across nodes (cluster.c), or NULL */
    shp_adapt_t q_ad;                    /* adaptive mode (adaptive.c) */
    struct cl_adapt *q_cl_adapt;         /* its learned values the cluster's (cluster_adapt.c) */
} shp_queue_t;

struct shp_provider {
    shp_provider_t *pv_next; /* registry chain */
    dlv_shaping_t *pv_sh;
    char *pv_name;
    const shp_prule_t *pv_rule;            /* NULL: a destination of its own (defaults); sh_lock */
    shp_limits_t pv_lim;                   /* sh_lock (a reload rewrites it): threads read copies */
    _Atomic int pv_refs;                   /* destinations using it */
    _Atomic int pv_nconn;                  /* all vmtas */
    shp_bucket_t pv_msg;                   /* total_message_rate */
    shp_bucket_t pv_cr;                    /* total_connection_rate */
    _Atomic uint64_t pv_suspend_until;     /* monotonic us: a "suspend" rule */
    _Atomic uint64_t pv_op_until;          /* operator's suspend: monotonic us, UINT64_MAX = until
                                            * resumed, 0 = none (the backlog is held, not deferred) */
    shp_queue_t *pv_q;                     /* [sh_nvmtas] */
    struct cl_lim *pv_cl_msg, *pv_cl_conn; /* total_* shared across nodes (cluster.c), or NULL */
};

/* A registry for rule set c (ownership passes; it is also the start-up
 * rule set: virtual MTAs and pools). q: accounting records (NULL in unit
 * tests). Any thread. */
dlv_shaping_t *dlv_shaping_new(shp_conf_t *c, queue_t *q);
void dlv_shaping_free(dlv_shaping_t *sh);
/* The start-up rule set's virtual MTA v (the same for the registry's life). */
static inline const shp_vmta_t *shp_vmta(const dlv_shaping_t *sh, int v)
{
    return &sh->sh_vm->sc_vmtas[v];
}
/* VERP as the shaping file sets it for virtual MTA v and the pool a
 * message was queued in (-1: none): 1 on, -1 off, 0 not said (then
 * bounces.verp). The virtual MTA's setting wins over its pool's. Any
 * delivery thread. */
int shp_verp(const dlv_shaping_t *sh, int v, int pool);

/* Find or create a provider's shared state (name of the rule, or the
 * domain when rule is NULL) and take a reference. With _locked: sh_lock
 * held (rule from sh_conf, matched under the same lock). Any thread. */
shp_provider_t *shp_provider_get(dlv_shaping_t *sh, const shp_prule_t *rule, const char *domain);
shp_provider_t *shp_provider_get_locked(dlv_shaping_t *sh, const shp_prule_t *rule,
                                        const char *domain);
void shp_provider_put(shp_provider_t *pv);
/* The limits in force for a domain of pv: its domain rule's, else pv's.
 * sh_lock held (or one thread): borrowed, pv's may change once it is
 * released, so callers on delivery threads copy them. */
const shp_limits_t *shp_limits_for(const shp_provider_t *pv, const char *domain,
                                   const shp_limits_t **own);
/* Set a bucket to rate r. Any thread. */
void shp_bucket_rate(shp_bucket_t *b, const shp_rate_t *r);
/* An operator's suspension (until_us, monotonic) is in force at now. */
static inline bool shp_op_suspended(uint64_t until_us, uint64_t now_us)
{
    return until_us != 0 && until_us > now_us;
}

/* A reply (code >= 400) on queue q: the first matching rule (provider's,
 * then defaults') whose trigger fires is applied. Returns its action, or 0;
 * *cap: the capacity a SHP_A_CAPACITY rule names. conn_msgs: messages
 * completed on the connection before this reply (a per-connection limit's
 * measure). now_us is monotonic. Any thread. */
int shp_queue_reply(shp_queue_t *q, const char *domain, int code, const char *status,
                    const char *text, int conn_msgs, shp_capacity_t *cap, uint64_t now_us);
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

/* ------------------------------------------------------------ adaptive.c */

/* Adaptive mode (docs/shaping.md, "Adaptive mode"): AIMD on each queue's
 * message rate and connections, driven by the capacity replies the judge
 * classifies (SHP_A_CAPACITY rules) and by clean deliveries. */

/* Is q adaptive under its limits? q_lock held. */
bool shp_adapt_wanted(const shp_queue_t *q);
/* A queue's adaptive state from its limits (and a value kept in the spool):
 * at creation and after a reload. q_lock held. */
void shp_adapt_init(shp_queue_t *q, uint64_t now_us);
/* The normal limits of an adaptive queue: the learned rate and connections
 * within the operator's maxima. q_lock held. */
double shp_adapt_rate(const shp_queue_t *q);
int shp_adapt_conns(const shp_queue_t *q);
/* What a step changed: the caller (providers.c) puts the new limits in
 * force and writes the record. */
typedef struct shp_adapt_change {
    bool ch_record; /* worth an "adapt" record (else a debug line) */
    char ch_detail[240];
} shp_adapt_change_t;
/* A delivery on an adaptive queue (the additive increase): true when the
 * learned limits changed (*ch says how). Any thread; no lock held. */
bool shp_adapt_success(shp_queue_t *q, uint64_t now_us, shp_adapt_change_t *ch);
/* A capacity reply on an adaptive queue (the decrease): true when the
 * learned limits changed. Any thread; no lock held. */
bool shp_adapt_signal(shp_queue_t *q, shp_capacity_t cap, int conn_msgs, uint64_t now_us,
                      shp_adapt_change_t *ch);
/* The learned max messages per connection of q (0: none). Any thread. */
static inline int shp_adapt_max_msgs(shp_queue_t *q)
{
    return atomic_load_explicit(&q->q_ad.a_on, memory_order_relaxed)
               ? atomic_load_explicit(&q->q_ad.a_msgs, memory_order_relaxed)
               : 0;
}
/* The JSON of q's learned values (null when q is not adaptive). */
struct json_object *shp_adapt_json(shp_queue_t *q);
/* Adaptive mode across nodes (cluster_int.h's cl_adapt_ops_t, wired by
 * providers.c): q's values (arg: the queue) for Redis; the cluster's
 * values v in force on q (node: who changed them, NULL: read back) - true
 * when they changed what q had, with the record in *ch; the increase step
 * on the cluster's deliveries. Cluster thread. */
struct cl_adapt_vals;
void shp_adapt_cl_get(void *arg, struct cl_adapt_vals *v);
bool shp_adapt_cl_set(shp_queue_t *q, const struct cl_adapt_vals *v, const char *node,
                      uint64_t now_us, shp_adapt_change_t *ch);
bool shp_adapt_cl_step(void *arg, uint32_t n, uint64_t elapsed_us, bool full,
                       struct cl_adapt_vals *v);
/* Keep the learned values in dir (the spool directory): load what a
 * previous run kept. NULL: not kept (unit tests). Main thread, before
 * traffic. */
void shp_adapt_open(dlv_shaping_t *sh, const char *dir);
/* Write every adaptive queue's learned values to the spool file now
 * (atomically: a temporary file renamed). force: even within a second of
 * the last write. No lock held. Any thread. */
void shp_adapt_save(dlv_shaping_t *sh, bool force);
void shp_adapt_close(dlv_shaping_t *sh);

/* Reload: install rule set c (ownership passes) in sh: its defaults,
 * provider rules, response rules and global limits, atomically for every
 * thread (under sh_lock). The providers' state (connections, backoff mode,
 * counters, suspensions) is kept; their limits become the new ones (a queue
 * in backoff keeps its level, capped at the new normal rate). Destinations
 * pick the change up at their next decision (their provider is matched
 * again once they have no connection). Virtual MTAs and pools are not
 * changed by a reload: returns whether c's differ (a restart applies them).
 * Any thread (the control's main thread). */
bool shp_registry_install(dlv_shaping_t *sh, shp_conf_t *c, const char *from);
/* delivery.adaptive changed (reload): every queue whose limits do not say
 * "adaptive" follows it from now on. Any thread. */
void shp_registry_adaptive(dlv_shaping_t *sh, bool on);
/* Operator suspend (until_us: monotonic; UINT64_MAX = until resumed) or
 * resume (until_us 0) of a provider (by name: a configured provider or a
 * destination domain of its own) or of a virtual MTA (by name: for every
 * provider). 0, or SL_ENOTFOUND with err set. Any thread. */
int shp_registry_suspend(dlv_shaping_t *sh, const char *provider, const char *vmta,
                         uint64_t until_us, char *err, size_t errlen);
/* The state of every provider seen so far (dlv_shaping_json's document,
 * delivery.h). Any thread. */
struct json_object *shp_registry_json(dlv_shaping_t *sh);

/* ------------------------------------------------------------ vmta.c */

/* Parse the virtual_mtas / pools / pool_users / default_pool entries of a
 * shaping file (the tree's root) into c. 0 or SL_ECONFIG. */
int shp_vmta_config(shp_conf_t *c, const void *root, const char *name, char *err, size_t errlen);
/* The pool of a dispatch: X-Sluice-Pool (the header is removed from the
 * body), else the AUTH user's pool, else the default. The destination's thread. */
int shp_pool_for(const shp_conf_t *c, queue_dispatch_t *qd);
/* Remove every "X-Sluice-Pool:" field from the header of qd's body and
 * return the first one's value in val (or "" when none). */
void shp_strip_pool_header(queue_dispatch_t *qd, char *val, size_t vallen);
/* The next vmta of pool p by smooth weighted round robin over the members
 * allowed[] says yes to; -1 when none. cw is the pool's per-member state. */
int shp_pool_pick(const shp_pool_t *p, int *cw, const bool *allowed);
/* Bind a libuv TCP handle to the vmta's source address (no-op without
 * one). 0 or a libuv error. */
int shp_vmta_bind(const shp_vmta_t *vm, uv_tcp_t *tcp);

#endif /* SLUICE_DELIVERY_SHAPING_INT_H */
