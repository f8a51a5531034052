/*
 * core/server/http_stats.c - the HTTP server's request metrics
 * (docs/operations.md): requests by path and status code, and the time
 * from the request's first byte to its answer as a histogram by path.
 *
 *   http_stats_count    one answered request (httpd.c, its one answer path)
 *   http_stats_render   the two families, for metrics.c
 *
 * The path label is one of a fixed set (the API's endpoints, the admin
 * verbs together, and "other"), never the requested path: a client
 * cannot grow the series. Codes are the 100-599 range.
 *
 * Why process-wide counters (the one mutable state here): the HTTP thread
 * counts and the main thread renders, and a restart of the HTTP server
 * must not reset a counter (Prometheus counters only go up). Relaxed
 * atomics: each counter is monotonic on its own.
 * Thread: any.
 */
#include "core/server/ops_int.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <string.h>

enum { HP_INJECT, HP_ADMIN, HP_METRICS, HP_OTHER, HP_N };
static const char *const hp_names[HP_N] = {"/api/inject/v1", "/api/admin/v1", "/metrics", "other"};

/* seconds; the last bucket is +Inf */
static const double hs_bounds[] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30};
#define HS_NB (sizeof(hs_bounds) / sizeof(hs_bounds[0]) + 1)

static atomic_uint_fast64_t hs_codes[HP_N][500]; /* status 100..599 */
static atomic_uint_fast64_t hs_bucket[HP_N][HS_NB];
static atomic_uint_fast64_t hs_sum_us[HP_N];

static int path_class(const char *p, size_t n)
{
    static const char admin[] = "/api/admin/v1/";
    if (n == strlen(hp_names[HP_INJECT]) && memcmp(p, hp_names[HP_INJECT], n) == 0)
        return HP_INJECT;
    if (n == strlen(hp_names[HP_METRICS]) && memcmp(p, hp_names[HP_METRICS], n) == 0)
        return HP_METRICS;
    if (n > sizeof(admin) - 1 && memcmp(p, admin, sizeof(admin) - 1) == 0)
        return HP_ADMIN;
    return HP_OTHER;
}

void http_stats_count(const char *path, size_t plen, int status, uint64_t us)
{
    int c = path_class(path ? path : "", path ? plen : 0);
    if (status >= 100 && status <= 599)
        atomic_fetch_add_explicit(&hs_codes[c][status - 100], 1, memory_order_relaxed);
    size_t b = 0;
    while (b < HS_NB - 1 && (double)us > hs_bounds[b] * 1e6)
        b++;
    atomic_fetch_add_explicit(&hs_bucket[c][b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&hs_sum_us[c], us, memory_order_relaxed);
}

void http_stats_render(buf_t *out, bool openmetrics)
{
    const char *n = "sluice_http_requests_total";
    buf_printf(out, "# HELP %.*s HTTP requests answered, by path and status code.\n",
               openmetrics ? (int)strlen(n) - 6 : (int)strlen(n), n);
    buf_printf(out, "# TYPE %.*s counter\n", openmetrics ? (int)strlen(n) - 6 : (int)strlen(n), n);
    for (int c = 0; c < HP_N; c++)
        for (int s = 0; s < 500; s++) {
            uint64_t v = atomic_load_explicit(&hs_codes[c][s], memory_order_relaxed);
            if (v > 0)
                buf_printf(out, "%s{path=\"%s\",code=\"%d\"} %" PRIu64 "\n", n, hp_names[c],
                           s + 100, v);
        }
    n = "sluice_http_request_duration_seconds";
    buf_printf(out,
               "# HELP %s Time from a request's start to its answer (an injection: to the "
               "commit), by path.\n# TYPE %s histogram\n",
               n, n);
    for (int c = 0; c < HP_N; c++) {
        uint64_t cum = 0, v[HS_NB];
        for (size_t b = 0; b < HS_NB; b++)
            cum += (v[b] = atomic_load_explicit(&hs_bucket[c][b], memory_order_relaxed));
        if (cum == 0)
            continue;
        cum = 0;
        for (size_t b = 0; b < HS_NB; b++) {
            cum += v[b];
            if (b < HS_NB - 1)
                buf_printf(out, "%s_bucket{path=\"%s\",le=\"%g\"} %" PRIu64 "\n", n, hp_names[c],
                           hs_bounds[b], cum);
            else
                buf_printf(out, "%s_bucket{path=\"%s\",le=\"+Inf\"} %" PRIu64 "\n", n, hp_names[c],
                           cum);
        }
        buf_printf(out, "%s_sum{path=\"%s\"} %.6f\n%s_count{path=\"%s\"} %" PRIu64 "\n", n,
                   hp_names[c],
                   (double)atomic_load_explicit(&hs_sum_us[c], memory_order_relaxed) / 1e6, n,
                   hp_names[c], cum);
    }
}
