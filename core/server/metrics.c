/*
 * metrics.c - the Prometheus text exposition (format 0.0.4) of sluiced's
 * counters: queue and spool (queue_stats), reception (smtp_server_stats),
 * delivery (dlv_stats), outcomes by type and the time in queue of delivered
 * recipients as a histogram. Served by the `metrics` control command and by
 * the optional HTTP listener (http.c). docs/operations.md lists the names.
 *
 *   metrics_render   append the whole exposition to a buffer
 *
 * Every value is a relaxed atomic load: a scrape never blocks a thread and
 * costs a few microseconds; values of one scrape are not a snapshot of one
 * instant (each counter is monotonic on its own).
 * Thread: main thread (any thread would do: it only reads atomics).
 */
#include "core/server/ops_int.h"
#ifdef SLUICE_HAVE_DELIVERY
#include "delivery/delivery.h"
#endif

#include <inttypes.h>
#include <stdio.h>
#include <unistd.h>

static uint64_t ld(const atomic_uint_fast64_t *a)
{
    return (uint64_t)atomic_load_explicit(a, memory_order_relaxed);
}

/* "# HELP" and "# TYPE" lines of one metric family. */
static void family(buf_t *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A family with one unlabelled sample. */
static void one(buf_t *b, const char *name, const char *type, const char *help, uint64_t v)
{
    family(b, name, type, help);
    buf_printf(b, "%s %" PRIu64 "\n", name, v);
}

static void labelled(buf_t *b, const char *name, const char *label, const char *value, uint64_t v)
{
    buf_printf(b, "%s{%s=\"%s\"} %" PRIu64 "\n", name, label, value, v);
}

static void render_queue(buf_t *b, const queue_stats_t *qs)
{
    one(b, "sluice_queue_messages", "gauge", "Messages in the spool.", ld(&qs->qs_msgs));
    one(b, "sluice_queue_recipients", "gauge", "Recipients in the spool.", ld(&qs->qs_rcpts));
    one(b, "sluice_queue_pending_commits", "gauge", "Messages submitted and not yet committed.",
        ld(&qs->qs_pending));
    one(b, "sluice_queue_received_messages_total", "counter",
        "Messages committed to the spool since start.", ld(&qs->qs_received));
    one(b, "sluice_spool_commits_total", "counter", "Spool write transactions committed.",
        ld(&qs->qs_commits));
    one(b, "sluice_spool_commit_errors_total", "counter", "Spool write transactions that failed.",
        ld(&qs->qs_errors));
    one(b, "sluice_spool_used_bytes", "gauge", "Bytes of the spool map in use.", ld(&qs->qs_used));
    one(b, "sluice_spool_map_bytes", "gauge", "Current size of the spool map.",
        ld(&qs->qs_map_size));
    one(b, "sluice_spool_max_bytes", "gauge", "spool.max_size.", ld(&qs->qs_max_size));
    one(b, "sluice_queue_active_bytes", "gauge",
        "Message bytes handed to delivery threads and not yet answered.", ld(&qs->qs_active_bytes));
    one(b, "sluice_queue_active_limit_bytes", "gauge",
        "queue.active_size in force (capped under ulimit -v).", ld(&qs->qs_active_limit));

    const char *n = "sluice_queue_outcomes_total";
    family(b, n, "counter",
           "Recipient outcomes committed by the queue, by accounting record type.");
    labelled(b, n, "type", "delivery", ld(&qs->qs_out_delivered));
    labelled(b, n, "type", "transient", ld(&qs->qs_out_transient));
    labelled(b, n, "type", "bounce", ld(&qs->qs_out_bounced));
    labelled(b, n, "type", "expired", ld(&qs->qs_out_expired));
    labelled(b, n, "type", "admin_bounce", ld(&qs->qs_out_admin_bounced));

    n = "sluice_delivered_time_in_queue_seconds";
    family(b, n, "histogram", "Time from reception to delivery of delivered recipients.");
    uint64_t cum = 0;
    for (int i = 0; i < Q_LAT_NBUCKETS; i++) {
        cum += ld(&qs->qs_lat_bucket[i]);
        if (queue_lat_bounds[i] == UINT64_MAX)
            buf_printf(b, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", n, cum);
        else
            buf_printf(b, "%s_bucket{le=\"%" PRIu64 "\"} %" PRIu64 "\n", n, queue_lat_bounds[i],
                       cum);
    }
    buf_printf(b, "%s_sum %" PRIu64 "\n%s_count %" PRIu64 "\n", n, ld(&qs->qs_lat_sum), n,
               ld(&qs->qs_lat_count));
}

static void render_smtp(buf_t *b, const smtp_server_stats_t *ss)
{
    one(b, "sluice_smtp_connections", "gauge", "Open reception sessions.",
        ld(&ss->ss_conn_current));
    one(b, "sluice_smtp_connections_total", "counter", "Reception connections accepted.",
        ld(&ss->ss_conn_total));
    one(b, "sluice_smtp_connections_refused_total", "counter",
        "Reception connections refused by limits.", ld(&ss->ss_conn_refused));
    const char *n = "sluice_smtp_messages_total";
    family(b, n, "counter", "Messages answered after DATA (or refused for backpressure).");
    labelled(b, n, "result", "accepted", ld(&ss->ss_msgs_accepted));
    labelled(b, n, "result", "rejected", ld(&ss->ss_msgs_rejected));
    n = "sluice_smtp_recipients_total";
    family(b, n, "counter", "RCPT TO commands answered.");
    labelled(b, n, "result", "accepted", ld(&ss->ss_rcpts_accepted));
    labelled(b, n, "result", "rejected", ld(&ss->ss_rcpts_rejected));
    n = "sluice_smtp_auth_total";
    family(b, n, "counter", "SMTP AUTH attempts.");
    labelled(b, n, "result", "ok", ld(&ss->ss_auth_ok));
    labelled(b, n, "result", "failed", ld(&ss->ss_auth_failed));
    one(b, "sluice_smtp_tls_sessions_total", "counter", "STARTTLS handshakes completed.",
        ld(&ss->ss_tls_sessions));
    one(b, "sluice_smtp_received_bytes_total", "counter", "Message bytes accepted.",
        ld(&ss->ss_bytes_received));
    one(b, "sluice_smtp_memory_bytes", "gauge",
        "Message bytes reception sessions hold in memory (DATA until the commit).",
        ld(&ss->ss_mem_used));
    one(b, "sluice_smtp_memory_limit_bytes", "gauge",
        "smtp.max_memory in force (capped under ulimit -v).", ld(&ss->ss_mem_limit));
    one(b, "sluice_smtp_memory_refused_total", "counter",
        "Transactions refused with 452 4.3.1 because message memory was full.",
        ld(&ss->ss_mem_refused));
}

#ifdef SLUICE_HAVE_DELIVERY
static void render_dlv(buf_t *b, const dlv_stats_t *ds)
{
    one(b, "sluice_delivery_connections", "gauge", "Open outbound SMTP connections.",
        ld(&ds->ds_conn_open));
    one(b, "sluice_delivery_connections_total", "counter", "Outbound connections established.",
        ld(&ds->ds_conn_total));
    one(b, "sluice_delivery_connection_failures_total", "counter",
        "Outbound connect or greeting failures.", ld(&ds->ds_conn_failed));
    const char *n = "sluice_delivery_recipients_total";
    family(b, n, "counter", "Delivery attempts by outcome (one per recipient attempt).");
    labelled(b, n, "outcome", "delivered", ld(&ds->ds_delivered));
    labelled(b, n, "outcome", "deferred", ld(&ds->ds_deferred));
    labelled(b, n, "outcome", "bounced", ld(&ds->ds_bounced));
    one(b, "sluice_delivery_transactions_total", "counter", "MAIL transactions completed.",
        ld(&ds->ds_transactions));
    one(b, "sluice_delivery_dispatches_total", "counter", "Dispatches received from the queue.",
        ld(&ds->ds_dispatches));
    one(b, "sluice_delivery_tls_sessions_total", "counter", "Outbound TLS handshakes completed.",
        ld(&ds->ds_tls_sessions));
    one(b, "sluice_delivery_tls_resumed_total", "counter", "Outbound TLS sessions resumed.",
        ld(&ds->ds_tls_resumed));
    one(b, "sluice_delivery_dns_lookups_total", "counter", "DNS queries sent.",
        ld(&ds->ds_dns_lookups));
    one(b, "sluice_delivery_dns_cache_hits_total", "counter", "Routes served from the cache.",
        ld(&ds->ds_dns_cache_hits));
    one(b, "sluice_delivery_destinations_down", "gauge",
        "Destinations marked down after repeated connection failures.", ld(&ds->ds_dests_down));
}
#endif

void metrics_render(const control_env_t *env, buf_t *out)
{
    uint64_t now = env->ce_start_us > 1000000000000000ull ? clock_now_us() : clock_mono_us();
    family(out, "sluice_build_info", "gauge", "sluiced version.");
    buf_printf(out, "sluice_build_info{version=\"%s\"} 1\n", SLUICE_VERSION);
    one(out, "sluice_uptime_seconds", "gauge", "Seconds since sluiced started.",
        now > env->ce_start_us ? (now - env->ce_start_us) / 1000000u : 0);
    if (env->ce_queue != NULL)
        render_queue(out, queue_stats(env->ce_queue));
    if (env->ce_smtp != NULL)
        render_smtp(out, smtp_server_stats(env->ce_smtp));
#ifdef SLUICE_HAVE_DELIVERY
    if (env->ce_dlv != NULL)
        render_dlv(out, dlv_stats(env->ce_dlv));
#endif
}
