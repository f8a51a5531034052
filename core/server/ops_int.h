/*
 * core/server/ops_int.h - private to core/server: the operator's side
 * channels next to the control socket: Prometheus metrics (metrics.c), the
 * optional HTTP /metrics listener (http.c) and configuration reload
 * (control_reload in control.c, the work in reload.c). See
 * docs/operations.md.
 *
 * Thread: main thread (the main loop) for everything here.
 */
#ifndef SLUICE_OPS_INT_H
#define SLUICE_OPS_INT_H

#include "core/server/server_int.h"

struct json_object;

/* Append the exposition of every counter and gauge the daemon has (queue,
 * reception, delivery, time in queue, per provider and virtual MTA) to
 * out: the Prometheus text format 0.0.4, or OpenMetrics 1.0 (with its
 * "# EOF") when openmetrics. Reads relaxed atomics and takes the shaping
 * registry's lock briefly: never waits on another thread's work. */
void metrics_render(const control_env_t *env, buf_t *out, bool openmetrics);

typedef struct http_metrics http_metrics_t;

/* Listen on addr ("127.0.0.1:9090", "[::1]:9090") on env->ce_loop and
 * answer GET /metrics with metrics_render() (HTTP/1.1, Connection: close;
 * 404 for other paths, 405 for other methods). 0, or a negative code with
 * err set ("http_metrics 127.0.0.1:9090: address already in use"). */
int http_metrics_start(const char *addr, const control_env_t *env, http_metrics_t **out, char *err,
                       size_t errlen);
/* Close the listener and every connection (their memory goes once the
 * loop runs their close callbacks). NULL is fine. */
void http_metrics_stop(http_metrics_t *h);

/* Re-read the configuration file the daemon was started with. A file
 * that does not load keeps the running configuration: returns SL_ECONFIG
 * with err = "reload refused: file:line: ...". Otherwise the new snapshot
 * becomes current (cfg_set_current, smtp_server_set_config) with the keys
 * that cannot change at run time kept at their old values; resp (may be
 * NULL) gets "file", "applied":[keys] and "needs_restart":[keys]. Used by
 * the `reload` command and SIGHUP. */
int control_reload(control_t *ct, struct json_object *resp, char *err, size_t errlen);

#endif /* SLUICE_OPS_INT_H */
