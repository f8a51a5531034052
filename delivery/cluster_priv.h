/*
 * delivery/cluster_priv.h - private to cluster.c and cluster_supp.c: the
 * cluster client's state (docs/cluster.md). Everything here but the
 * atomics and what cl_lock guards is the cluster thread's.
 */
#ifndef SLUICE_DELIVERY_CLUSTER_PRIV_H
#define SLUICE_DELIVERY_CLUSTER_PRIV_H

#include "delivery/cluster_int.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <json-c/json.h>

#define CL_MAX_OUT 256 /* events kept while Redis is away */
/* suppression entries of this node kept while Redis is away (then a log
 * line and cl_supp_unshared count what was not shared) */
#define CL_MAX_SUPP_OUT 100000

enum { S_RATE, S_CONN, S_NODES, S_ADAPT, S_N };

struct cl_lim {
    cl_lim_t *l_next;
    dlv_cluster_t *l_cl;
    int l_kind;
    char *l_name;
    char *l_key;
    _Atomic int64_t l_tokens;    /* rate: lease left; conn: slots held and not in use */
    _Atomic uint64_t l_interval; /* rate in force, ns per token (0 = none) */
    _Atomic int l_cap;           /* conn cap in force (0 = none) */
    _Atomic uint64_t l_want_us;  /* mono us a taker last found nothing */
    _Atomic uint64_t l_used_us;  /* mono us of the last take */
    _Atomic uint64_t l_granted;  /* tokens / slots granted so far */
    _Atomic int l_held_pub;      /* l_held, for cl_json */
    /* the cluster thread's */
    bool l_busy;     /* a take / give-back call in flight */
    int l_held;      /* conn: slots held */
    uint64_t *l_ids; /* conn: the held slots' ids */
    int l_ids_cap;
    double l_accum;     /* fallback: fractional local tokens */
    uint64_t l_last_us; /* fallback: last local refill */
};

typedef struct cl_req {
    struct cl_req *r_next; /* in flight, oldest first */
    dlv_cluster_t *r_cl;
    cl_lim_t *r_lim;
    cl_adapt_t *r_adapt; /* R_ADAPT: the queue's learned values */
    int r_what;          /* R_* */
    int r_script;
    uint64_t r_sent_us;
    int64_t r_n; /* rate: asked for (> 0) or given back (< 0); conn: slot id */
    int r_argc;
    char **r_argv;
    size_t *r_lens;
} cl_req_t;

/* R_RATE .. R_ADAPT are scripts (EVALSHA); the others plain commands */
enum { R_RATE, R_CONN_TAKE, R_CONN_OTHER, R_NODES, R_ADAPT, R_PUB, R_SYNC };

/* An adaptive queue's learned values shared (cluster_adapt.c). */
struct cl_adapt {
    cl_adapt_t *a_next;
    dlv_cluster_t *a_cl;
    char *a_name; /* provider/vmta */
    char *a_key;  /* P:adapt:NAME */
    cl_lim_t *a_conn;
    const cl_adapt_ops_t *a_ops;
    void *a_arg;
    _Atomic uint32_t a_count; /* deliveries not yet counted in Redis */
    _Atomic int a_full;       /* a delivery saw every allowed connection open */
    _Atomic int a_shared;     /* the cluster's values in force (Redis up, answered) */
    _Atomic uint64_t a_ver;   /* Redis' version of the values in force here */
    /* cl_lock */
    unsigned a_dec_want;    /* decreases to send: CL_ADAPT_* bits */
    cl_adapt_vals_t a_dec;  /* their values */
    cl_adapt_vals_t a_vals; /* the last values from Redis (cl_json) */
    bool a_known;           /* a_vals set */
    /* the cluster thread's */
    bool a_busy;        /* a call in flight */
    uint64_t a_sent_at; /* mono us of the last count (0: read the values now) */
};

typedef enum { CL_DOWN = 0, CL_CONNECTING, CL_UP } cl_state_t;

struct dlv_cluster {
    dlv_shaping_t *cl_sh;
    cl_apply_fn cl_apply;
    char *cl_addr;       /* redis://ip:port or unix:/path (the password as ***: logged, shown) */
    char *cl_user;       /* AUTH user (an ACL user), or NULL: "default" */
    char *cl_pass;       /* AUTH password, or NULL: no AUTH */
    bool cl_auth_failed; /* AUTH refused on this connection: cl_why says why */
    char *cl_host;
    int cl_port;
    char *cl_node;
    char *cl_prefix;
    uint64_t cl_ttl_ms;
    uint64_t cl_timeout_us;
    char cl_sha[S_N][41];
    uv_loop_t cl_loop;
    uv_thread_t cl_tid;
    bool cl_started;
    uv_timer_t cl_tick;
    uv_async_t cl_wake;
    uv_async_t cl_stop;
    bool cl_stopping;
    /* the cluster thread's */
    redisAsyncContext *cl_ac;  /* commands */
    redisAsyncContext *cl_sub; /* SUBSCRIBE P:events */
    cl_state_t cl_state;
    bool cl_broken; /* a callback saw the connection fail: the tick tears down */
    bool cl_resync; /* the next heartbeat applies the shared state (after a (re)connect) */
    bool cl_first;  /* no heartbeat yet since start (own entries of P:state apply too) */
    uint64_t cl_retry_us, cl_retry_at;
    uint64_t cl_beat_at;
    uint64_t cl_renew_at;
    uint64_t cl_seq;
    cl_req_t *cl_fly, **cl_fly_tail;
    /* shared with other threads */
    uv_mutex_t cl_lock;
    cl_lim_t *cl_lims;        /* cl_lock for the list; never freed before the cluster */
    cl_adapt_t *cl_adapts;    /* cl_lock for the list; the same (cluster_adapt.c) */
    char *cl_out[CL_MAX_OUT]; /* cl_lock: events to publish */
    int cl_nout;
    json_object *cl_nodes_json;   /* cl_lock: the last heartbeat's nodes */
    json_object *cl_state_json;   /* cl_lock: the last heartbeat's P:state */
    _Atomic int cl_up;            /* Redis answers (sluice_cluster_redis_up) */
    _Atomic int cl_nnodes;        /* last known node count (>= 1) */
    _Atomic uint64_t cl_since_us; /* wall us of the last up/down change */
    _Atomic uint64_t cl_downs;    /* times Redis was lost */
    _Atomic uint64_t cl_applied;  /* events of other nodes applied here */
    _Atomic uint64_t cl_published;
    queue_t *cl_queue; /* suppression list shared, or NULL */
    char **cl_sout;    /* cl_lock: suppression entries to publish (CL_MAX_SUPP_OUT at most) */
    int cl_nsout, cl_sout_cap;
    _Atomic uint64_t cl_supp_unshared; /* entries dropped: CL_MAX_SUPP_OUT were waiting */
    bool cl_supp_full;                 /* cl_lock: logged for this outage */
    /* the sync of the suppression list on (re)connect (cluster_supp.c) */
    bool cl_subscribed; /* P:events and P:supp subscribed (the sync waits for it) */
    bool cl_sync_want;  /* a (re)connect: read the shared hashes */
    bool cl_sync_busy;  /* a SCAN / HSCAN in flight */
    bool cl_sync_on;    /* a sync under way: the next chunk at the next tick */
    char *cl_sync_cur;  /* SCAN cursor ("0": no more keys after cl_sync_keys) */
    char **cl_sync_keys;
    size_t cl_sync_nkeys, cl_sync_ki;
    char *cl_sync_hcur; /* HSCAN cursor of cl_sync_keys[cl_sync_ki] */
    uint64_t cl_sync_read;
    _Atomic uint64_t cl_syncs;
    char cl_why[160]; /* cl_lock: why Redis is down */
};

/* cluster_supp.c (it builds requests; cluster.c sends them, so that the
 * two files do not call each other) */
/* The HSET and PUBLISH of this node's waiting entries (when up), a list
 * through r_next, in order; NULL when none. */
cl_req_t *cl_flush_supp(dlv_cluster_t *cl);
/* Another node's entry (JSON text of P:supp or a hash) into the local
 * list; sync: only if absent here, and not when expired. */
void cl_supp_apply(dlv_cluster_t *cl, const char *text, bool sync);
/* The sync's next step (the tick): start it after a (re)connect once up
 * and subscribed, or read its next chunk: the request to send, or NULL. */
cl_req_t *cl_sync_tick(dlv_cluster_t *cl);
/* A SCAN / HSCAN answer (NULL: none, the sync stops until the next
 * connect). */
void cl_sync_reply(dlv_cluster_t *cl, const redisReply *rp);
/* Forget a sync under way (connection lost, freeing). */
void cl_sync_reset(dlv_cluster_t *cl);

/* cluster_adapt.c (requests built there, sent by cluster.c, as above) */
extern const char cl_lua_adapt[];
/* The calls of this tick: each adaptive queue's decreases, or its count
 * every CL_ADAPT_REPORT_US (at once after a (re)connect); a list through
 * r_next, or NULL. Redis down: counts dropped, the queues keep the last
 * values. Cluster thread. */
cl_req_t *cl_adapt_tick(dlv_cluster_t *cl, uint64_t now);
/* The answer to an R_ADAPT call (rp NULL: none): the values applied, and
 * the increase to send when this node ended the cluster's interval (or
 * NULL). Cluster thread. */
cl_req_t *cl_adapt_reply(dlv_cluster_t *cl, cl_req_t *r, const struct redisReply *rp);
/* An "adapt" event of P:events (another node's change): applied; false
 * when text is not one. Cluster thread. */
bool cl_adapt_msg(dlv_cluster_t *cl, const char *text);
/* Redis lost or (re)connected: every queue reads the values again. */
void cl_adapt_reset(dlv_cluster_t *cl);
/* The "adaptive" array of cl_json (cl_lock held). */
struct json_object *cl_adapt_json(dlv_cluster_t *cl);
void cl_adapt_free_all(dlv_cluster_t *cl);

#endif /* SLUICE_DELIVERY_CLUSTER_PRIV_H */
