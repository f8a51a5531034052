/*
 * delivery/cluster_int.h - private to delivery/: several nodes sharing one
 * set of limits through Redis (cluster.c, docs/cluster.md).
 *
 * One cluster thread per node runs its own libuv loop with two hiredis
 * async contexts (commands, and the pub/sub subscription). Delivery
 * threads never talk to Redis: a shared limit is a cl_lim_t whose lease
 * (tokens of a rate, or connection slots held in Redis) is a few atomics
 * they spend; the cluster thread refills and returns leases, renews slot
 * leases and publishes and applies state changes (backoff, recovery steps,
 * suspensions). When Redis is down or slow, the cluster thread refills
 * the same leases locally at the shared limit / the last known node count.
 *
 * Ownership: the cluster owns every cl_lim_t (found by name, kept until
 * dlv_cluster_free); providers hold borrowed pointers.
 */
#ifndef SLUICE_DELIVERY_CLUSTER_INT_H
#define SLUICE_DELIVERY_CLUSTER_INT_H

#include "delivery/delivery_int.h"

typedef struct dlv_cluster dlv_cluster_t;
typedef struct cl_lim cl_lim_t;

enum { CL_RATE = 1, CL_CONN = 2 };

#define CL_WAIT_US 10000 /* a rate lease is empty: look again (the refill is asked for) */

/* How the cluster applies another node's state change to the registry
 * (shp_registry_apply below: passed in by delivery.c, so that cluster.c and
 * providers.c do not call each other). */
typedef int (*cl_apply_fn)(dlv_shaping_t *sh, const char *provider, const char *vmta,
                           const char *event, double level, uint64_t for_us, bool by_operator,
                           const char *why);

/* The cluster client for cfg's cluster { } (NULL in *out when
 * cluster.redis is empty), driving registry sh's shared state with apply.
 * 0 or SL_ECONFIG with err. Main thread. */
int dlv_cluster_new(const cfg_t *cfg, dlv_shaping_t *sh, cl_apply_fn apply, dlv_cluster_t **out,
                    char *err, size_t errlen);
/* Share q's suppression list: its new entries go to the other nodes, and
 * theirs come here (queue_supp_set_hook, queue_supp_remote). Main thread,
 * before queue_start. */
void dlv_cluster_share_suppression(dlv_cluster_t *cl, queue_t *q);
/* Start / stop its thread (stop: leases given back, node removed, best
 * effort within cluster.timeout). Free after dlv_cluster_stop and after the
 * delivery threads are joined (they wake the cluster's loop). NULL allowed.
 * Main thread. */
int dlv_cluster_start(dlv_cluster_t *cl);
void dlv_cluster_stop(dlv_cluster_t *cl);
void dlv_cluster_free(dlv_cluster_t *cl);

/* The shared limit of kind CL_RATE / CL_CONN named name ("yahoo",
 * "yahoo/mta1"): found or created, owned by cl. Any thread. */
cl_lim_t *cl_lim_get(dlv_cluster_t *cl, int kind, const char *name);

/* Take a token of rate lease l at the rate in force (interval_ns per
 * token; 0 = no limit): 1 taken, 0 nothing needed (no lease or no limit),
 * -1 the lease is empty (a refill is asked for: look again after
 * CL_WAIT_US). Any thread. */
int cl_rate_take(cl_lim_t *l, uint64_t interval_ns);
/* Give back a token cl_rate_take returned 1 for (a later level said no). */
void cl_rate_refund(cl_lim_t *l);
/* A connection slot of l for cap (0 = no limit): 1 taken, 0 nothing
 * needed, -1 none free (asked for). Any thread. */
int cl_conn_take(cl_lim_t *l, int cap);
/* A connection that took a slot (1) closed. Any thread. */
void cl_conn_release(cl_lim_t *l);

/* A state change of a queue (vmta != NULL) or provider on this node, to
 * publish to the others: event backoff | recover-step | normal | suspend |
 * resume; level (recover-step), for_us (suspend: 0 = until resumed),
 * by_operator (suspend / resume). Any thread. */
void cl_publish(dlv_cluster_t *cl, const char *provider, const char *vmta, const char *event,
                double level, uint64_t for_us, bool by_operator);

/* The cluster's state for `sluicectl cluster` (docs/records.md, "cluster
 * answer"); a new reference. cl may be NULL (not configured). Any thread. */
struct json_object *cl_json(dlv_cluster_t *cl);

/* providers.c: global { shared = true; } takes the cluster's leases for
 * the global message_rate and max_connections it sets. Main thread, once
 * sh_cluster is set. */
void shp_cluster_global(dlv_shaping_t *sh);

/* providers.c: apply a state change another node published (without
 * publishing it again). 0 or SL_ENOTFOUND (no such provider here). Any
 * thread (the cluster thread). */
int shp_registry_apply(dlv_shaping_t *sh, const char *provider, const char *vmta, const char *event,
                       double level, uint64_t for_us, bool by_operator, const char *why);

/* ------------------------------------------------------------ adaptive mode
 * (cluster_adapt.c): an adaptive queue of a shared provider learns one
 * allowance for the whole cluster, kept in Redis (docs/cluster.md,
 * "Adaptive mode across nodes"). */
typedef struct cl_adapt cl_adapt_t;

/* A queue's learned values, as Redis keeps them. */
typedef struct cl_adapt_vals {
    double av_rate, av_clean, av_step; /* msgs/s */
    int av_conn;                       /* max connections */
    int av_msgs;                       /* max messages per connection, 0 = none learned */
    bool av_ss, av_conn_learned;       /* slow start; a "too many connections" seen */
} cl_adapt_vals_t;

/* What the cluster thread asks of the queue (adaptive.c, through
 * providers.c: cluster_adapt.c and they do not call each other). Each is
 * called on the cluster thread and takes the queue's own locks. */
typedef struct cl_adapt_ops {
    /* The queue's values now (to seed Redis when it has none). */
    void (*ao_get)(void *arg, cl_adapt_vals_t *v);
    /* The cluster's values, in force here from now on; node: who changed
     * them (NULL: read back from Redis). */
    void (*ao_apply)(void *arg, const cl_adapt_vals_t *v, const char *node);
    /* The cluster's interval ended at this node: n deliveries of all
     * nodes in elapsed_us, full: some node had every allowed connection
     * open. The increase into *v (the cluster's values): true if any. */
    bool (*ao_step)(void *arg, uint32_t n, uint64_t elapsed_us, bool full, cl_adapt_vals_t *v);
} cl_adapt_ops_t;

/* The cluster's learned values of queue name ("yahoo/mta1"), driving the
 * queue arg through ops; conn: the queue's shared connection cap (its
 * takers waiting say "every allowed connection is open"), or NULL. Found
 * or created, owned by cl. Any thread. */
cl_adapt_t *cl_adapt_get(dlv_cluster_t *cl, const char *name, cl_lim_t *conn,
                         const cl_adapt_ops_t *ops, void *arg);
/* true while the cluster's values are in force: Redis answered for this
 * queue and is up (else the queue keeps the last ones it had). Any thread. */
bool cl_adapt_shared(const cl_adapt_t *a);
/* One delivery (full: every connection the queue allows here is open):
 * counted towards the cluster's interval. Any thread (two atomics). */
void cl_adapt_count(cl_adapt_t *a, bool full);
/* A decrease this node learned (a capacity reply) of the kinds CL_ADAPT_*
 * (rate: av_rate, av_clean, av_step, av_ss; conn: av_conn; msgs:
 * av_msgs): sent to Redis, which keeps the lower of its values and this
 * one and tells every node. Any thread. */
enum { CL_ADAPT_RATE = 1, CL_ADAPT_CONN = 2, CL_ADAPT_MSGS = 4 };
void cl_adapt_propose(cl_adapt_t *a, const cl_adapt_vals_t *v, unsigned kinds);

#endif /* SLUICE_DELIVERY_CLUSTER_INT_H */
