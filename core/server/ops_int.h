/*
 * core/server/ops_int.h - private to core/server: the operator's side
 * channels next to the control socket: Prometheus metrics (metrics.c), the
 * HTTP server (httpd.c: the HTTP API and /metrics) and configuration reload
 * (control_reload in control.c, the work in reload.c). See
 * docs/operations.md.
 *
 * Thread: main thread (the main loop) for everything here (httpd.c's own
 * thread is its business).
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

/* Which token scope the HTTP admin API asks for a command (commands.c's
 * table): CTL_ADMIN is the default, so a verb nobody classified is not
 * open to read-only tokens. */
typedef enum { CTL_ADMIN = 0, CTL_READ = 1 } ctl_scope_t;

/* Run one control command for the HTTP admin API: req is the same object
 * a control socket line holds ({"cmd": ..., ...}; borrowed). done gets the
 * same answer object ({"ok": true, ...} or {"ok": false, "error": ...};
 * borrowed for the call) on the main thread, at once or when the queue
 * thread has answered. Main thread. */
typedef void (*control_done_fn)(void *arg, struct json_object *resp);
void control_call(control_t *ct, struct json_object *req, control_done_fn done, void *arg);

typedef struct httpd httpd_t;

/* The HTTP request metrics (http_stats.c): count one answered request
 * (its path, status, and microseconds from its start), and render the
 * families sluice_http_requests_total{path,code} and
 * sluice_http_request_duration_seconds{path}. Any thread. */
void http_stats_count(const char *path, size_t plen, int status, uint64_t us);
void http_stats_render(buf_t *out, bool openmetrics);

/* The HTTP server (httpd.c, docs/http-api.md): binds http.listen (the API:
 * injection, admin, /metrics with a token) and control.http_metrics (GET
 * /metrics only, no authentication) here, so that a port in use is a
 * start-up error, then runs h2o on its own thread and loop. Either
 * address may be "" (off); with both off *out is NULL. Main thread. */
int httpd_start(const cfg_t *cfg, const control_env_t *env, control_t *ct, httpd_t **out, char *err,
                size_t errlen);
/* Stop accepting, answer what is in flight, close every connection, join
 * the thread and free. Call after queue_stop (every injection then has
 * its answer) and right after control_stop (which hands the admin
 * answers still owed to this thread; ct is freed only once the main loop
 * runs again). NULL is fine. Main thread. */
void httpd_stop(httpd_t *h);

/* Re-read the configuration file the daemon was started with. A file
 * that does not load keeps the running configuration: returns SL_ECONFIG
 * with err = "reload refused: file:line: ...". Otherwise the new snapshot
 * becomes current (cfg_set_current, smtp_server_set_config) with the keys
 * that cannot change at run time kept at their old values; resp (may be
 * NULL) gets "file", "applied":[keys] and "needs_restart":[keys]. Used by
 * the `reload` command and SIGHUP. */
int control_reload(control_t *ct, struct json_object *resp, char *err, size_t errlen);

#endif /* SLUICE_OPS_INT_H */
