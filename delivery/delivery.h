/*
 * delivery/delivery.h - delivering mail: delivery threads, MX routing,
 * connection pools, the SMTP client and bounce classification.
 *
 * N delivery threads (cfg c_dlv_threads, 0 = number of cores), each a
 * libuv loop with its own channel, c-ares resolver, destinations,
 * connections and TLS session cache. The queue thread hands over due
 * recipients through the dispatcher that dlv_new() registers with
 * queue_set_dispatcher(); a dispatch goes to the thread owning its domain
 * (hash of qd_domain), so every domain is driven by one loop without locks.
 * Every dispatched recipient comes back to the queue as exactly one
 * queue_outcome_t (queue_outcome_submit), except those still in flight
 * when dlv_stop() runs: they are not reported and are retried after the
 * next start (at-least-once).
 *
 * Life cycle (main thread): dlv_new() after queue_open() and before
 * queue_start(); dlv_start() after queue_start(); dlv_stop() before
 * queue_stop(); dlv_free() after queue_stop().
 */
#ifndef SLUICE_DELIVERY_H
#define SLUICE_DELIVERY_H

#include "core/base/base.h"
#include "config/config.h"
#include "queue/queue.h"

#include <stdatomic.h>

typedef struct dlv dlv_t;

/* Counters for `sluicectl status`. Written by the delivery threads with
 * relaxed atomics; read by any thread. Message counters count recipients
 * (one outcome each). */
typedef struct dlv_stats {
    atomic_uint_fast64_t ds_conn_open;      /* SMTP connections open now */
    atomic_uint_fast64_t ds_conn_total;     /* connections established since start */
    atomic_uint_fast64_t ds_conn_failed;    /* connect / greeting failures */
    atomic_uint_fast64_t ds_delivered;      /* recipients delivered (2xx) */
    atomic_uint_fast64_t ds_deferred;       /* recipients deferred (4xx, local temp errors) */
    atomic_uint_fast64_t ds_bounced;        /* recipients bounced (5xx, null MX, NXDOMAIN) */
    atomic_uint_fast64_t ds_transactions;   /* MAIL transactions completed */
    atomic_uint_fast64_t ds_tls_sessions;   /* STARTTLS handshakes completed */
    atomic_uint_fast64_t ds_tls_resumed;    /* of which resumed a cached session */
    atomic_uint_fast64_t ds_dns_lookups;    /* MX and address queries sent */
    atomic_uint_fast64_t ds_dns_cache_hits; /* routes served from the per-thread cache */
    atomic_uint_fast64_t ds_dispatches;     /* dispatches received from the queue */
    atomic_uint_fast64_t ds_dests_down;     /* destinations marked down (dead-site) */
} dlv_stats_t;

/* Create the delivery threads' loops, resolvers and TLS context (not the
 * threads) and register the dispatcher with queue_set_dispatcher(). Keeps
 * a reference to cfg. 0, or SL_ECONFIG with err set ("resolvers ...").
 * Main thread, before queue_start(). */
int dlv_new(cfg_t *cfg, queue_t *q, dlv_t **out, char *err, size_t errlen);
/* Start the threads. 0 or a negative errno. Main thread. */
int dlv_start(dlv_t *d);
/* Stop taking dispatches (later ones are freed unreported), QUIT idle
 * connections with a short deadline, close the rest, close every handle
 * and join the threads. Main thread, before queue_stop(). */
void dlv_stop(dlv_t *d);
/* Free (after dlv_stop, or if dlv_start was never called). NULL allowed.
 * Main thread. */
void dlv_free(dlv_t *d);
/* Any thread. */
const dlv_stats_t *dlv_stats(const dlv_t *d);
/* A reloaded configuration (each thread takes a reference at its next
 * wake-up; main thread). Timeouts, connection limits, reuse and idle
 * times, dead-site settings, DNS cache TTL and MTA-STS settings apply to
 * the next decision. With reroute (routes, smarthost, port, TLS policy
 * changed), every destination resolves its route again at its next use
 * and connections opened before QUIT once their current transaction is
 * done. threads, resolvers, ca_file and helo_name keep their start-up
 * values (the caller keeps them in cfg). */
void dlv_set_config(dlv_t *d, cfg_t *cfg, bool reroute);

/* Traffic shaping state for `sluicectl providers` (delivery/providers.c,
 * docs/shaping.md; the schema is in docs/records.md): a new json-c object
 * the caller puts,
 *   {"providers":[{"provider", "configured", "destinations", "connections",
 *     "suspended", "suspended_by" ("operator" | "rule" | null),
 *     "suspended_until" (time | null), "queues":[{"vmta", "source_ip",
 *     "mode" ("normal" | "backoff" | "recovering"), "rate" (msgs/s in
 *     force, null = no limit), "connections", "max_connections" (null = no
 *     limit), "disabled_until" (time | null), "suspended", "delivered",
 *     "deferred" (4xx replies that decided
 *     recipients' fates), "bounced" (5xx ones), "backoffs", "last_response"}]}],
 *    "virtual_mtas":[{"name", "source_ip", "ehlo", "suspended",
 *     "suspended_until", "delivered", "deferred", "bounced" (every
 *     provider since start, those no longer listed included)}]}
 * Times are RFC 3339 UTC strings. Providers appear once a destination of
 * theirs has been seen. Any thread (takes the provider registry's lock
 * briefly). */
struct json_object *dlv_shaping_json(dlv_t *d);
/* The cluster's state for `sluicectl cluster` (delivery/cluster.c; the
 * "cluster answer" of docs/records.md): {"enabled", "node", "redis",
 * "redis_up", "since", "reason", "node_count", "nodes", "leases", "state",
 * "applied", "published", "redis_downs"}; a new reference. Any thread. */
struct json_object *dlv_cluster_json(dlv_t *d);

/* ------------------------------------------------------- classification */

/* The bounce category for a reply (RFC 3463 enhanced status first, then
 * the text): "bad-mailbox", "spam-related", ... Never NULL; a static
 * string. status may be "" or NULL (then derived from code). Any thread. */
const char *dlv_classify(int code, const char *status, const char *text);
/* The outcome a reply code means for a recipient: 2xx delivered, 5xx
 * bounced, anything else deferred. Any thread. */
queue_result_t dlv_result_for_code(int code);
/* Fill out[16] with the enhanced status of a reply: its own when it has
 * one whose class matches the code, else derived ("4.0.0" / "5.0.0" /
 * "2.0.0"). Any thread. */
void dlv_status_for_reply(int code, const char *status, char out[16]);

/* Operator control of traffic shaping and classification (main thread,
 * for `sluicectl reload`, `suspend --provider/--vmta`).
 * dlv_shaping_check: compile the shaping file only (0 or SL_ECONFIG).
 * dlv_shaping_reload: re-read the shaping file (path; "" = the shipped
 * providers only) and apply its limits and rules at once, keeping the
 * providers' state; 0, or SL_ECONFIG with "file:line: what" and the old
 * shaping unchanged; *vmtas_changed: virtual MTAs/pools differ (they need a
 * restart). dlv_shaping_suspend: suspend (for_s seconds, 0 = until resumed)
 * or resume one provider (by name, or a domain of its own) or one virtual
 * MTA (vmta != NULL); 0 or SL_ENOTFOUND with err.
 * dlv_rules_install: load cfg's bounce rules file (delivery.bounce_rules;
 * "" = built-in) with the providers of cfg's delivery.shaping, and make it
 * the active set; 0 or SL_ECONFIG with "file:line: what", the active set
 * unchanged. */
int dlv_shaping_check(const char *path, char *err, size_t errlen);
int dlv_shaping_reload(dlv_t *d, const char *path, bool *vmtas_changed, char *err, size_t errlen);
int dlv_shaping_suspend(dlv_t *d, const char *provider, const char *vmta, uint64_t for_s,
                        bool resume, char *err, size_t errlen);
int dlv_rules_install(const cfg_t *cfg, char *err, size_t errlen);

#endif /* SLUICE_DELIVERY_H */
