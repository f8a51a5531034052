/*
 * metrics.c - the metrics exposition of sluiced's counters, in the
 * Prometheus text format (0.0.4) or in OpenMetrics 1.0: queue and spool
 * (queue_stats), reception (smtp_server_stats), delivery (dlv_stats),
 * outcomes by type, the time in queue of delivered recipients as a
 * histogram, and per provider and virtual MTA the traffic shaping counters
 * (dlv_shaping_json). Served by the `metrics` control command and by the
 * HTTP server (httpd.c, via the main thread). docs/operations.md lists every family.
 *
 *   metrics_render   append the whole exposition to a buffer
 *
 * Names: a counter's samples end in _total and no gauge is named like a
 * counter without it (OpenMetrics parsers put "x" and "x_total" in one
 * family); the open connection gauges are *_open.
 *
 * Every global value is a relaxed atomic load; the shaping series take the
 * provider registry's lock once (as `sluicectl providers` does). Values of
 * one scrape are not a snapshot of one instant (each counter is monotonic
 * on its own).
 * Thread: main thread.
 */
#include "core/server/ops_int.h"
#include "delivery/delivery.h"
#include <json-c/json.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Providers named in the shaping series; the rest count as "other". */
#define MET_MAX_PROVIDERS 200

typedef struct met {
    buf_t *m_out;
    bool m_om; /* OpenMetrics */
} met_t;

static uint64_t ld(const atomic_uint_fast64_t *a)
{
    return (uint64_t)atomic_load_explicit(a, memory_order_relaxed);
}

/* "# HELP" and "# TYPE" lines of one family. name is the sample name; an
 * OpenMetrics counter's family is named without its _total. */
static void family(met_t *m, const char *name, const char *type, const char *help)
{
    size_t n = strlen(name);
    if (m->m_om && strcmp(type, "counter") == 0 && n > 6 && strcmp(name + n - 6, "_total") == 0)
        n -= 6;
    buf_printf(m->m_out, "# HELP %.*s %s\n# TYPE %.*s %s\n", (int)n, name, help, (int)n, name,
               type);
}

/* A family with one unlabelled sample. */
static void one(met_t *m, const char *name, const char *type, const char *help, uint64_t v)
{
    family(m, name, type, help);
    buf_printf(m->m_out, "%s %" PRIu64 "\n", name, v);
}

/* A label value, escaped as both formats want (\\, \", \n). */
static void label_value(buf_t *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            buf_printf(b, "\\%c", *s);
        else if (*s == '\n')
            buf_append(b, "\\n", 2);
        else
            buf_append(b, s, 1);
    }
}

static void labelled(met_t *m, const char *name, const char *label, const char *value, uint64_t v)
{
    buf_printf(m->m_out, "%s{%s=\"", name, label);
    label_value(m->m_out, value);
    buf_printf(m->m_out, "\"} %" PRIu64 "\n", v);
}

/* A histogram bound in seconds as OpenMetrics wants it canonical ("1.0",
 * "0.25", "86400.0"); the text format reads the same. */
static void le_value(char *dst, size_t len, double s)
{
    snprintf(dst, len, "%.9g", s);
    if (strpbrk(dst, ".e") == NULL)
        snprintf(dst + strlen(dst), len - strlen(dst), ".0");
}

static void render_queue(met_t *m, const queue_stats_t *qs)
{
    one(m, "sluice_queue_messages", "gauge", "Messages in the spool.", ld(&qs->qs_msgs));
    one(m, "sluice_queue_recipients", "gauge", "Recipients in the spool.", ld(&qs->qs_rcpts));
    one(m, "sluice_queue_pending_commits", "gauge", "Messages submitted and not yet committed.",
        ld(&qs->qs_pending));
    one(m, "sluice_queue_received_messages_total", "counter",
        "Messages committed to the spool since start.", ld(&qs->qs_received));
    one(m, "sluice_spool_commits_total", "counter", "Spool write transactions committed.",
        ld(&qs->qs_commits));
    one(m, "sluice_spool_commit_errors_total", "counter", "Spool write transactions that failed.",
        ld(&qs->qs_errors));
    one(m, "sluice_spool_used_bytes", "gauge", "Bytes of the spool map in use.", ld(&qs->qs_used));
    one(m, "sluice_spool_map_bytes", "gauge", "Current size of the spool map.",
        ld(&qs->qs_map_size));
    one(m, "sluice_spool_max_bytes", "gauge", "spool.max_size.", ld(&qs->qs_max_size));
    one(m, "sluice_queue_active_bytes", "gauge",
        "Message bytes handed to delivery threads and not yet answered.", ld(&qs->qs_active_bytes));
    one(m, "sluice_queue_active_limit_bytes", "gauge",
        "queue.active_size in force (capped under ulimit -v).", ld(&qs->qs_active_limit));

    const char *n = "sluice_queue_outcomes_total";
    family(m, n, "counter",
           "Recipient outcomes committed by the queue, by accounting record type.");
    labelled(m, n, "type", "delivery", ld(&qs->qs_out_delivered));
    labelled(m, n, "type", "transient", ld(&qs->qs_out_transient));
    labelled(m, n, "type", "bounce", ld(&qs->qs_out_bounced));
    labelled(m, n, "type", "expired", ld(&qs->qs_out_expired));
    labelled(m, n, "type", "admin_bounce", ld(&qs->qs_out_admin_bounced));

    /* bounds and sum are kept in microseconds; shown in seconds */
    n = "sluice_delivered_time_in_queue_seconds";
    family(m, n, "histogram", "Time from reception to delivery of delivered recipients.");
    uint64_t cum = 0;
    for (int i = 0; i < Q_LAT_NBUCKETS; i++) {
        char le[32];
        cum += ld(&qs->qs_lat_bucket[i]);
        if (queue_lat_bounds[i] == UINT64_MAX)
            snprintf(le, sizeof(le), "+Inf");
        else
            le_value(le, sizeof(le), (double)queue_lat_bounds[i] / 1e6);
        buf_printf(m->m_out, "%s_bucket{le=\"%s\"} %" PRIu64 "\n", n, le, cum);
    }
    uint64_t sum = ld(&qs->qs_lat_sum);
    buf_printf(m->m_out, "%s_sum %" PRIu64 ".%06" PRIu64 "\n%s_count %" PRIu64 "\n", n,
               sum / 1000000, sum % 1000000, n, cum);
}

static void render_smtp(met_t *m, const smtp_server_stats_t *ss)
{
    one(m, "sluice_smtp_connections_open", "gauge", "Open reception sessions.",
        ld(&ss->ss_conn_current));
    one(m, "sluice_smtp_connections_total", "counter", "Reception connections accepted.",
        ld(&ss->ss_conn_total));
    one(m, "sluice_smtp_connections_refused_total", "counter",
        "Reception connections refused by limits.", ld(&ss->ss_conn_refused));
    const char *n = "sluice_smtp_messages_total";
    family(m, n, "counter", "Messages answered after DATA (or refused for backpressure).");
    labelled(m, n, "result", "accepted", ld(&ss->ss_msgs_accepted));
    labelled(m, n, "result", "rejected", ld(&ss->ss_msgs_rejected));
    n = "sluice_smtp_recipients_total";
    family(m, n, "counter", "RCPT TO commands answered.");
    labelled(m, n, "result", "accepted", ld(&ss->ss_rcpts_accepted));
    labelled(m, n, "result", "rejected", ld(&ss->ss_rcpts_rejected));
    n = "sluice_smtp_auth_total";
    family(m, n, "counter", "SMTP AUTH attempts.");
    labelled(m, n, "result", "ok", ld(&ss->ss_auth_ok));
    labelled(m, n, "result", "failed", ld(&ss->ss_auth_failed));
    one(m, "sluice_smtp_tls_sessions_total", "counter", "STARTTLS handshakes completed.",
        ld(&ss->ss_tls_sessions));
    one(m, "sluice_smtp_received_bytes_total", "counter", "Message bytes accepted.",
        ld(&ss->ss_bytes_received));
    one(m, "sluice_smtp_memory_bytes", "gauge",
        "Message bytes reception sessions hold in memory (DATA until the commit).",
        ld(&ss->ss_mem_used));
    one(m, "sluice_smtp_memory_limit_bytes", "gauge",
        "smtp.max_memory in force (capped under ulimit -v).", ld(&ss->ss_mem_limit));
    one(m, "sluice_smtp_memory_refused_total", "counter",
        "Transactions refused with 452 4.3.1 because message memory was full.",
        ld(&ss->ss_mem_refused));
}

static void render_dlv(met_t *m, const dlv_stats_t *ds)
{
    one(m, "sluice_delivery_connections_open", "gauge", "Open outbound SMTP connections.",
        ld(&ds->ds_conn_open));
    one(m, "sluice_delivery_connections_total", "counter", "Outbound connections established.",
        ld(&ds->ds_conn_total));
    one(m, "sluice_delivery_connection_failures_total", "counter",
        "Outbound connect or greeting failures.", ld(&ds->ds_conn_failed));
    const char *n = "sluice_delivery_recipients_total";
    family(m, n, "counter", "Delivery attempts by outcome (one per recipient attempt).");
    labelled(m, n, "outcome", "delivered", ld(&ds->ds_delivered));
    labelled(m, n, "outcome", "deferred", ld(&ds->ds_deferred));
    labelled(m, n, "outcome", "bounced", ld(&ds->ds_bounced));
    one(m, "sluice_delivery_transactions_total", "counter", "MAIL transactions completed.",
        ld(&ds->ds_transactions));
    one(m, "sluice_delivery_dispatches_total", "counter", "Dispatches received from the queue.",
        ld(&ds->ds_dispatches));
    one(m, "sluice_delivery_tls_sessions_total", "counter", "Outbound TLS handshakes completed.",
        ld(&ds->ds_tls_sessions));
    one(m, "sluice_delivery_tls_resumed_total", "counter", "Outbound TLS sessions resumed.",
        ld(&ds->ds_tls_resumed));
    one(m, "sluice_delivery_dns_lookups_total", "counter", "DNS queries sent.",
        ld(&ds->ds_dns_lookups));
    one(m, "sluice_delivery_dns_cache_hits_total", "counter", "Routes served from the cache.",
        ld(&ds->ds_dns_cache_hits));
    one(m, "sluice_delivery_destinations_down", "gauge",
        "Destinations marked down after repeated connection failures.", ld(&ds->ds_dests_down));
}

static uint64_t jv(json_object *o, const char *key);

/* Several nodes (delivery/cluster.c, docs/cluster.md): always exported,
 * as a single node's values without cluster { redis }. */
static void render_cluster(met_t *m, struct dlv *dlv)
{
    json_object *c = dlv_cluster_json(dlv), *leases = json_object_object_get(c, "leases");
    bool on = json_object_get_boolean(json_object_object_get(c, "enabled"));
    uint64_t granted = 0;
    for (size_t i = 0; leases != NULL && i < json_object_array_length(leases); i++)
        granted += jv(json_object_array_get_idx(leases, i), "granted");
    one(m, "sluice_cluster_redis_up", "gauge",
        "1 while Redis answers (shared limits), 0 when down or not configured.",
        on && json_object_get_boolean(json_object_object_get(c, "redis_up")));
    one(m, "sluice_cluster_nodes", "gauge",
        "Nodes sharing limits, as last seen (1 without a cluster).", on ? jv(c, "node_count") : 1);
    one(m, "sluice_cluster_lease_granted_total", "counter",
        "Tokens and connection slots of shared limits granted to this node.", granted);
    one(m, "sluice_cluster_redis_down_total", "counter", "Times Redis was lost.",
        jv(c, "redis_downs"));
    const char *n = "sluice_cluster_events_total";
    family(m, n, "counter", "Shared state changes published by this node and applied from others.");
    labelled(m, n, "direction", "published", jv(c, "published"));
    labelled(m, n, "direction", "applied", jv(c, "applied"));
    json_object_put(c);
}

/* ------------------------------------------------------------ per provider and vmta */

enum { SH_DELIVERED, SH_DEFERRED, SH_BOUNCED, SH_CONN, SH_BACKOFF, SH_NVAL };

typedef struct sh_row {
    const char *r_name; /* borrowed from the shaping JSON; "other" */
    uint64_t r_suspended;
    uint64_t *r_v; /* [nvmtas][SH_NVAL] */
} sh_row_t;

static uint64_t jv(json_object *o, const char *key)
{
    json_object *v = json_object_object_get(o, key);
    return v && json_object_is_type(v, json_type_int) ? (uint64_t)json_object_get_int64(v) : 0;
}

static int sh_row_cmp(const void *a, const void *b)
{
    return strcmp(((const sh_row_t *)a)->r_name, ((const sh_row_t *)b)->r_name);
}

/* Adaptive mode's learned values (docs/shaping.md): one series per
 * adaptive queue {provider, vmta}, for the first MET_MAX_PROVIDERS
 * providers of the registry (a learned value has no meaningful sum, so no
 * "other"). */
static void render_adaptive(met_t *m, json_object *provs)
{
    static const struct {
        const char *name, *key, *help;
    } fams[] = {
        {"sluice_provider_adaptive_rate", "rate",
         "Adaptive mode: learned message rate (per second) of a queue."},
        {"sluice_provider_adaptive_max_connections", "max_connections",
         "Adaptive mode: learned connection cap of a queue."},
        {"sluice_provider_adaptive_max_messages_per_connection", "max_messages_per_connection",
         "Adaptive mode: learned messages per connection of a queue (0: none learned)."},
    };
    size_t np = MIN(json_object_array_length(provs), (size_t)MET_MAX_PROVIDERS);
    for (size_t f = 0; f < ARRAY_SIZE(fams); f++) {
        family(m, fams[f].name, "gauge", fams[f].help);
        for (size_t i = 0; i < np; i++) {
            json_object *p = json_object_array_get_idx(provs, i);
            json_object *qs = json_object_object_get(p, "queues");
            for (size_t v = 0; v < json_object_array_length(qs); v++) {
                json_object *q = json_object_array_get_idx(qs, v);
                json_object *a = json_object_object_get(q, "adaptive");
                if (a == NULL)
                    continue;
                buf_printf(m->m_out, "%s{provider=\"", fams[f].name);
                label_value(m->m_out,
                            json_object_get_string(json_object_object_get(p, "provider")));
                buf_append_str(m->m_out, "\",vmta=\"");
                label_value(m->m_out, json_object_get_string(json_object_object_get(q, "vmta")));
                json_object *x = json_object_object_get(a, fams[f].key);
                buf_printf(m->m_out, "\"} %.6g\n", x ? json_object_get_double(x) : 0.0);
            }
        }
    }
}

/* Labels {provider, vmta}: every configured provider seen so far (sorted;
 * the first MET_MAX_PROVIDERS), and "other" for the destinations that are
 * providers of their own (one per domain: unbounded) and any beyond the
 * cap. "other"'s counters are the vmta's totals minus the named providers',
 * so they keep counting after such a provider leaves the registry. */
static void render_shaping(met_t *m, struct dlv *dlv)
{
    json_object *sh = dlv_shaping_json(dlv);
    json_object *provs = json_object_object_get(sh, "providers");
    json_object *vms = json_object_object_get(sh, "virtual_mtas");
    size_t np = json_object_array_length(provs), nv = json_object_array_length(vms);
    sh_row_t *rows = xcalloc(np + 1, sizeof(*rows));
    size_t nr = 0;
    for (size_t i = 0; i < np; i++) {
        json_object *p = json_object_array_get_idx(provs, i);
        if (json_object_get_boolean(json_object_object_get(p, "configured")))
            rows[nr++].r_name = json_object_get_string(json_object_object_get(p, "provider"));
    }
    qsort(rows, nr, sizeof(*rows), sh_row_cmp);
    if (nr > MET_MAX_PROVIDERS)
        nr = MET_MAX_PROVIDERS;
    sh_row_t *other = &rows[nr];
    other->r_name = "other";
    for (size_t r = 0; r <= nr; r++)
        rows[r].r_v = xcalloc(nv * SH_NVAL + 1, sizeof(uint64_t));
    /* the vmtas' totals go to "other" first; the named ones are taken off */
    for (size_t v = 0; v < nv; v++) {
        json_object *vm = json_object_array_get_idx(vms, v);
        other->r_v[v * SH_NVAL + SH_DELIVERED] = jv(vm, "delivered");
        other->r_v[v * SH_NVAL + SH_DEFERRED] = jv(vm, "deferred");
        other->r_v[v * SH_NVAL + SH_BOUNCED] = jv(vm, "bounced");
    }
    for (size_t i = 0; i < np; i++) {
        json_object *p = json_object_array_get_idx(provs, i);
        const char *name = json_object_get_string(json_object_object_get(p, "provider"));
        sh_row_t key = {.r_name = name}, *row = NULL;
        if (json_object_get_boolean(json_object_object_get(p, "configured")))
            row = bsearch(&key, rows, nr, sizeof(*rows), sh_row_cmp);
        bool named = row != NULL;
        if (row == NULL)
            row = other;
        row->r_suspended += json_object_get_boolean(json_object_object_get(p, "suspended"));
        json_object *qs = json_object_object_get(p, "queues");
        for (size_t v = 0; v < nv && v < json_object_array_length(qs); v++) {
            json_object *q = json_object_array_get_idx(qs, v);
            uint64_t *x = row->r_v + v * SH_NVAL, *o = other->r_v + v * SH_NVAL;
            static const char *const keys[3] = {"delivered", "deferred", "bounced"};
            for (int k = 0; k < 3; k++) {
                if (named) {
                    x[k] += jv(q, keys[k]);
                    o[k] -= MIN(o[k], jv(q, keys[k]));
                }
            }
            x[SH_CONN] += jv(q, "connections");
            const char *mode = json_object_get_string(json_object_object_get(q, "mode"));
            x[SH_BACKOFF] += mode != NULL && strcmp(mode, "normal") != 0;
        }
    }

    static const struct {
        const char *name, *type, *help;
        int val;
    } fams[] = {
        {"sluice_provider_recipients_total", "counter",
         "Recipients by traffic shaping provider and virtual MTA, by outcome of the attempt.", -1},
        {"sluice_provider_connections_open", "gauge",
         "Open outbound connections by provider and virtual MTA.", SH_CONN},
        {"sluice_provider_backoff_queues", "gauge",
         "Queues (provider, virtual MTA) in backoff or recovering: 0 or 1, more for other.",
         SH_BACKOFF},
    };
    static const char *const outcome[3] = {"delivered", "deferred", "bounced"};
    buf_t *b = m->m_out;
    for (size_t f = 0; f < ARRAY_SIZE(fams); f++) {
        family(m, fams[f].name, fams[f].type, fams[f].help);
        for (size_t r = 0; r <= nr; r++) {
            for (size_t v = 0; v < nv; v++) {
                const char *vname = json_object_get_string(
                    json_object_object_get(json_object_array_get_idx(vms, v), "name"));
                for (int k = 0; k < (fams[f].val < 0 ? 3 : 1); k++) {
                    buf_printf(b, "%s{provider=\"", fams[f].name);
                    label_value(b, rows[r].r_name);
                    buf_append_str(b, "\",vmta=\"");
                    label_value(b, vname ? vname : "");
                    if (fams[f].val < 0)
                        buf_printf(b, "\",outcome=\"%s", outcome[k]);
                    buf_printf(b, "\"} %" PRIu64 "\n",
                               rows[r].r_v[v * SH_NVAL + (fams[f].val < 0 ? k : fams[f].val)]);
                }
            }
        }
    }
    family(m, "sluice_provider_suspended", "gauge",
           "Providers suspended (operator or rule): 0 or 1, more for other.");
    for (size_t r = 0; r <= nr; r++)
        labelled(m, "sluice_provider_suspended", "provider", rows[r].r_name, rows[r].r_suspended);
    render_adaptive(m, provs);
    for (size_t r = 0; r <= nr; r++)
        free(rows[r].r_v);
    free(rows);
    json_object_put(sh);
}

/* The event stream and its webhooks (queue_events_json): one series per
 * configured webhook (at most CFG_MAX_WEBHOOKS). */
static void render_events(met_t *m, queue_t *q)
{
    json_object *o = queue_events_json(q);
    json_object *v, *whs = NULL;
    json_object_object_get_ex(o, "webhooks", &whs);
    size_t n = whs ? json_object_array_length(whs) : 0;
    json_object_object_get_ex(o, "head", &v);
    one(m, "sluice_events_head", "gauge", "Sequence of the last record in the event stream.",
        (uint64_t)json_object_get_int64(v));
    static const struct {
        const char *name, *type, *key, *help;
    } fams[] = {
        {"sluice_webhook_lag_records", "gauge", "lag_records",
         "Records of the stream past the webhook's cursor."},
        {"sluice_webhook_lag_seconds", "gauge", "lag_seconds",
         "Age of the oldest record past the webhook's cursor."},
        {"sluice_webhook_in_flight", "gauge", "in_flight", "Records in the POST in flight."},
        {"sluice_webhook_sent_records_total", "counter", "sent_records",
         "Records acknowledged (2xx) since start."},
        {"sluice_webhook_failures_total", "counter", "failures",
         "POSTs that failed (error, 4xx, 5xx) since start."},
        {"sluice_webhook_parked_total", "counter", "parked_batches",
         "Batches parked (a 4xx other than 408/429) since start."},
        {"sluice_webhook_parked_batches", "gauge", "parked",
         "Batches parked now, waiting for `sluicectl events unpark`."},
        {"sluice_events_dropped_total", "counter", "dropped_records",
         "Records dropped unsent by the backlog bound (events.max_backlog) since start."},
    };
    for (size_t f = 0; f < ARRAY_SIZE(fams); f++) {
        family(m, fams[f].name, fams[f].type, fams[f].help);
        for (size_t i = 0; i < n; i++) {
            json_object *w = json_object_array_get_idx(whs, i), *name = NULL, *val = NULL;
            json_object_object_get_ex(w, "name", &name);
            json_object_object_get_ex(w, fams[f].key, &val);
            uint64_t x = json_object_is_type(val, json_type_array)
                             ? json_object_array_length(val)
                             : (uint64_t)json_object_get_int64(val);
            labelled(m, fams[f].name, "webhook", json_object_get_string(name), x);
        }
    }
    json_object_put(o);
}

void metrics_render(const control_env_t *env, buf_t *out, bool openmetrics)
{
    SL_ASSERT_MAIN_THREAD();
    met_t m = {.m_out = out, .m_om = openmetrics};
    uint64_t now = env->ce_start_us > 1000000000000000ull ? clock_now_us() : clock_mono_us();
    if (openmetrics) {
        buf_append_str(out, "# HELP sluice_build sluiced version.\n# TYPE sluice_build info\n");
    } else {
        family(&m, "sluice_build_info", "gauge", "sluiced version.");
    }
    buf_printf(out, "sluice_build_info{version=\"%s\"} 1\n", SLUICE_VERSION);
    one(&m, "sluice_uptime_seconds", "gauge", "Seconds since sluiced started.",
        now > env->ce_start_us ? (now - env->ce_start_us) / 1000000u : 0);
    if (env->ce_queue != NULL) {
        render_queue(&m, queue_stats(env->ce_queue));
        render_events(&m, env->ce_queue);
        uint64_t entries, hits;
        queue_supp_stats(env->ce_queue, &entries, &hits);
        one(&m, "sluice_suppression_entries", "gauge",
            "Entries in the suppression list (expired ones until overwritten).", entries);
        one(&m, "sluice_suppression_hits_total", "counter",
            "Recipients found on the suppression list (rejected or dropped).", hits);
    }
    if (env->ce_smtp != NULL)
        render_smtp(&m, smtp_server_stats(env->ce_smtp));
    http_stats_render(out, openmetrics); /* http_stats.c */
    if (env->ce_dlv != NULL) {
        render_dlv(&m, dlv_stats(env->ce_dlv));
        render_shaping(&m, env->ce_dlv);
        render_cluster(&m, env->ce_dlv);
    }
    if (openmetrics)
        buf_append_str(out, "# EOF\n");
}
