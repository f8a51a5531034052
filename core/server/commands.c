/*
 * core/server/commands.c - the control socket's commands (docs/operations.md):
 * one handler per command, in the table ctl_cmds below (add a row to add a
 * command), and the answers of the commands the queue thread answers.
 *
 *   status, metrics, providers, shutdown   answered here, at once
 *   list, inspect, check, log-rotate       QREQ_* requests to the queue thread
 *   queues, queue, suspend, resume, suspended, retry, bounce
 *                                          operator requests to the queue
 *                                          thread (queue/admin.c, holds.c), or
 *                                          to traffic shaping for a provider or
 *                                          a virtual MTA
 *   reload                                 reload.c
 *
 * A handler never touches the socket: it answers in resp, or prepares a
 * queue request that control.c sends and, when it comes back, hands to
 * ctl_queue_answer(). So control.c calls here and nothing here calls
 * control.c.
 * Thread: main thread only.
 */
#include "core/server/control_int.h"
#include "delivery/delivery.h"

#include <ctype.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int cmd_status(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                      char *err, size_t errlen);
static int cmd_list(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                    char *err, size_t errlen);
static int cmd_inspect(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                       char *err, size_t errlen);
static int cmd_check(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                     char *err, size_t errlen);
static int cmd_shutdown(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                        char *err, size_t errlen);
static int cmd_log_rotate(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                          char *err, size_t errlen);
static int cmd_queues(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                      char *err, size_t errlen);
static int cmd_queue(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                     char *err, size_t errlen);
static int cmd_suspend(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                       char *err, size_t errlen);
static int cmd_resume(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                      char *err, size_t errlen);
static int cmd_suspended(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                         char *err, size_t errlen);
static int cmd_retry(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                     char *err, size_t errlen);
static int cmd_bounce(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                      char *err, size_t errlen);
static int cmd_reload(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                      char *err, size_t errlen);
static int cmd_metrics(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                       char *err, size_t errlen);
static int cmd_providers(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                         char *err, size_t errlen);
static int cmd_cluster(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                       char *err, size_t errlen);
static int cmd_events(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                      char *err, size_t errlen);
static int cmd_tlsrpt(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                      char *err, size_t errlen);
static json_object *log_rotate_response(queue_req_t *r);
static bool resume_missed(queue_req_t *r);

/* The verbs. scope is what the HTTP admin API asks of a token
 * (/api/admin/v1/<verb>, docs/http-api.md): CTL_READ for verbs that only
 * look, CTL_ADMIN (the default when a line leaves it out) for verbs that
 * change something. One line per verb, formatted one per line so that a
 * new verb is a one-line change. */
static const struct ctl_cmd {
    const char *name;
    ctl_handler_fn fn;
    ctl_scope_t scope;
} ctl_cmds[] = {
    {"status", cmd_status, CTL_READ},          {"list", cmd_list, CTL_READ},
    {"inspect", cmd_inspect, CTL_READ},        {"check", cmd_check, CTL_READ},
    {"shutdown", cmd_shutdown, CTL_ADMIN},     {"log-rotate", cmd_log_rotate, CTL_ADMIN},
    {"queues", cmd_queues, CTL_READ},          {"queue", cmd_queue, CTL_READ},
    {"suspend", cmd_suspend, CTL_ADMIN},       {"resume", cmd_resume, CTL_ADMIN},
    {"suspended", cmd_suspended, CTL_READ},    {"retry", cmd_retry, CTL_ADMIN},
    {"bounce", cmd_bounce, CTL_ADMIN},         {"reload", cmd_reload, CTL_ADMIN},
    {"metrics", cmd_metrics, CTL_READ},        {"providers", cmd_providers, CTL_READ},
    {"events", cmd_events, CTL_ADMIN},         /* admin: "unpark" changes the stream */
    {"suppress", ctl_cmd_suppress, CTL_ADMIN}, /* admin: add, remove, import */
    {"tlsrpt", cmd_tlsrpt, CTL_ADMIN},         /* admin: "send --now" sends reports */
    {"cluster", cmd_cluster, CTL_READ},
};

ctl_handler_fn ctl_cmd_find(const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(ctl_cmds); i++)
        if (strcmp(ctl_cmds[i].name, name) == 0)
            return ctl_cmds[i].fn;
    return NULL;
}

ctl_scope_t ctl_cmd_scope(const char *name)
{
    for (size_t i = 0; i < ARRAY_SIZE(ctl_cmds); i++)
        if (strcmp(ctl_cmds[i].name, name) == 0)
            return ctl_cmds[i].scope;
    return CTL_ADMIN;
}

/* ------------------------------------------------------------ helpers */

static uint64_t u64_load(const atomic_uint_fast64_t *a)
{
    return (uint64_t)atomic_load_explicit(a, memory_order_relaxed);
}

static void add_u64(json_object *o, const char *key, uint64_t v)
{
    json_object_object_add(o, key, json_object_new_uint64(v));
}

/* A request of one of the queue.c kinds (list, inspect, check, log-rotate)
 * for control.c to send: CTL_ASYNC, or SL_EBUSY without a queue. */
static int queue_req_start(const ctl_ctx_t *x, queue_req_t **qr, queue_req_type_t type,
                           uint64_t msgid, size_t limit, char *err, size_t errlen)
{
    if (x->cx_env->ce_queue == NULL) {
        snprintf(err, errlen, "the queue is not running");
        return SL_EBUSY;
    }
    queue_req_t *r = xcalloc(1, sizeof(*r));
    r->qq_type = type;
    r->qq_msgid = msgid;
    r->qq_limit = limit;
    *qr = r;
    return CTL_ASYNC;
}

/* ------------------------------------------------------------ commands */

static int cmd_status(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                      char *err, size_t errlen)
{
    const control_env_t *env = x->cx_env;
    /* ce_start_us is expected from clock_now_us(); accept a monotonic one. */
    uint64_t now = env->ce_start_us > 1000000000000000ull ? clock_now_us() : clock_mono_us();
    uint64_t up = now > env->ce_start_us ? (now - env->ce_start_us) / 1000000u : 0;

    json_object_object_add(resp, "version", json_object_new_string(SLUICE_VERSION));
    json_object_object_add(resp, "pid", json_object_new_int64((int64_t)getpid()));
    add_u64(resp, "uptime_s", up);
    json_object_object_add(resp, "hostname", json_object_new_string(x->cx_hostname));

    if (env->ce_queue != NULL) {
        const queue_stats_t *qs = queue_stats(env->ce_queue);
        json_object *q = json_object_new_object();
        add_u64(q, "messages", u64_load(&qs->qs_msgs));
        add_u64(q, "recipients", u64_load(&qs->qs_rcpts));
        add_u64(q, "pending_commits", u64_load(&qs->qs_pending));
        add_u64(q, "spool_used_bytes", u64_load(&qs->qs_used));
        add_u64(q, "spool_map_bytes", u64_load(&qs->qs_map_size));
        add_u64(q, "spool_max_bytes", u64_load(&qs->qs_max_size));
        json_object_object_add(
            q, "spool_fill_pct",
            json_object_new_int(atomic_load_explicit(&qs->qs_fill_pct, memory_order_relaxed)));
        add_u64(q, "commits", u64_load(&qs->qs_commits));
        add_u64(q, "received", u64_load(&qs->qs_received));
        add_u64(q, "commit_errors", u64_load(&qs->qs_errors));
        add_u64(q, "active_bytes", u64_load(&qs->qs_active_bytes));
        add_u64(q, "active_limit_bytes", u64_load(&qs->qs_active_limit));
        json_object_object_add(resp, "queue", q);
    }
    if (env->ce_smtp != NULL) {
        const smtp_server_stats_t *ss = smtp_server_stats(env->ce_smtp);
        json_object *s = json_object_new_object();
        add_u64(s, "connections_current", u64_load(&ss->ss_conn_current));
        add_u64(s, "connections_total", u64_load(&ss->ss_conn_total));
        add_u64(s, "connections_refused", u64_load(&ss->ss_conn_refused));
        add_u64(s, "messages_accepted", u64_load(&ss->ss_msgs_accepted));
        add_u64(s, "messages_rejected", u64_load(&ss->ss_msgs_rejected));
        add_u64(s, "recipients_accepted", u64_load(&ss->ss_rcpts_accepted));
        add_u64(s, "recipients_rejected", u64_load(&ss->ss_rcpts_rejected));
        add_u64(s, "auth_ok", u64_load(&ss->ss_auth_ok));
        add_u64(s, "auth_failed", u64_load(&ss->ss_auth_failed));
        add_u64(s, "tls_sessions", u64_load(&ss->ss_tls_sessions));
        add_u64(s, "bytes_received", u64_load(&ss->ss_bytes_received));
        add_u64(s, "memory_bytes", u64_load(&ss->ss_mem_used));
        add_u64(s, "memory_limit_bytes", u64_load(&ss->ss_mem_limit));
        add_u64(s, "memory_refused", u64_load(&ss->ss_mem_refused));
        json_object_object_add(resp, "smtp", s);
    }
    if (env->ce_dlv != NULL) {
        const dlv_stats_t *ds = dlv_stats(env->ce_dlv);
        json_object *o = json_object_new_object();
        add_u64(o, "connections_current", u64_load(&ds->ds_conn_open));
        add_u64(o, "connections_total", u64_load(&ds->ds_conn_total));
        add_u64(o, "connections_failed", u64_load(&ds->ds_conn_failed));
        add_u64(o, "transactions", u64_load(&ds->ds_transactions));
        add_u64(o, "delivered", u64_load(&ds->ds_delivered));
        add_u64(o, "deferred", u64_load(&ds->ds_deferred));
        add_u64(o, "bounced", u64_load(&ds->ds_bounced));
        add_u64(o, "tls_sessions", u64_load(&ds->ds_tls_sessions));
        add_u64(o, "tls_resumed", u64_load(&ds->ds_tls_resumed));
        add_u64(o, "dns_lookups", u64_load(&ds->ds_dns_lookups));
        add_u64(o, "dns_cache_hits", u64_load(&ds->ds_dns_cache_hits));
        add_u64(o, "destinations_down", u64_load(&ds->ds_dests_down));
        json_object_object_add(resp, "delivery", o);
    }
    /* shared limits (delivery/cluster.c): null when one node */
    json_object *cl = env->ce_dlv ? dlv_cluster_json(env->ce_dlv) : NULL, *v;
    json_object *c = NULL;
    if (cl != NULL && json_object_get_boolean(json_object_object_get(cl, "enabled"))) {
        c = json_object_new_object();
        const char *keep[] = {"node", "redis", "redis_up", "node_count", "reason"};
        for (size_t i = 0; i < ARRAY_SIZE(keep); i++)
            json_object_object_add(
                c, keep[i], json_object_object_get_ex(cl, keep[i], &v) ? json_object_get(v) : NULL);
    }
    json_object_put(cl);
    json_object_object_add(resp, "cluster", c);
    return CTL_REPLY;
}

/* The optional "limit" member of a request: 0 (and *limit, 0 when absent)
 * or SL_EPARSE with err set. */
static int req_limit(json_object *req, size_t *limit, char *err, size_t errlen)
{
    json_object *lim;
    *limit = 0;
    if (!json_object_object_get_ex(req, "limit", &lim))
        return 0;
    int64_t v = json_object_get_int64(lim);
    if (!json_object_is_type(lim, json_type_int) || v < 0) {
        snprintf(err, errlen, "\"limit\" must be a non-negative integer");
        return SL_EPARSE;
    }
    *limit = (size_t)v;
    return 0;
}

static int cmd_list(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                    char *err, size_t errlen)
{
    size_t limit = 0;
    if (req_limit(req, &limit, err, errlen) != 0)
        return SL_EPARSE;
    return queue_req_start(x, qr, QREQ_LIST, 0, limit, err, errlen);
}

static int cmd_inspect(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                       char *err, size_t errlen)
{
    json_object *id;
    uint64_t msgid;
    if (!json_object_object_get_ex(req, "id", &id) || !json_object_is_type(id, json_type_string)) {
        snprintf(err, errlen, "inspect needs \"id\": a message id");
        return SL_EPARSE;
    }
    if (queue_msgid_parse(json_object_get_string(id), &msgid) != 0) {
        snprintf(err, errlen, "invalid message id \"%.64s\" (16 hex digits expected)",
                 json_object_get_string(id));
        return SL_EPARSE;
    }
    return queue_req_start(x, qr, QREQ_INSPECT, msgid, 0, err, errlen);
}

static int cmd_check(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                     char *err, size_t errlen)
{
    return queue_req_start(x, qr, QREQ_CHECK, 0, 0, err, errlen);
}

static int cmd_shutdown(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                        char *err, size_t errlen)
{
    /* ce_shutdown runs once the answer is written (conn_write_cb), so the
     * client sees it before the daemon closes the socket. */
    return CTL_REPLY_SHUTDOWN;
}

static int cmd_log_rotate(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                          char *err, size_t errlen)
{
    /* The accounting log first, on the queue thread; the operational log
     * when its answer is back (log_rotate_response), so that one answer
     * reports both and comes only once both are done: logrotate's
     * postrotate may compress the old files right after it. */
    return queue_req_start(x, qr, QREQ_ROTATE, 0, 0, err, errlen);
}

/* The answer to log-rotate: the queue thread's accounting outcome, then
 * the operational log reopened here. ok:false when either failed. */
static json_object *log_rotate_response(queue_req_t *r)
{
    json_object *resp = json_object_new_object();
    char lerr[512] = "", lpath[256] = "";
    cfg_t *cfg = cfg_current(); /* log.file needs a restart: the one log_init opened */
    if (cfg != NULL && cfg->c_log_file != NULL)
        snprintf(lpath, sizeof(lpath), "%s", cfg->c_log_file);
    cfg_unref(cfg);
    int rc = log_reopen();
    if (rc < 0)
        snprintf(lerr, sizeof(lerr), "log file %s: reopen: %s", lpath, sl_strerror(rc));
    bool ok = r->qq_error[0] == '\0' && r->qq_result != NULL && rc >= 0;
    json_object_object_add(resp, "ok", json_object_new_boolean(ok));
    if (!ok) {
        char e[1024];
        snprintf(e, sizeof(e), "%s%s%s", r->qq_error, r->qq_error[0] && lerr[0] ? "; " : "", lerr);
        json_object_object_add(resp, "error", json_object_new_string(e));
    }
    json_object *acct = r->qq_result ? json_object_object_get(r->qq_result, "accounting") : NULL;
    if (acct != NULL)
        json_object_object_add(resp, "accounting", json_object_get(acct));
    if (rc >= 0)
        json_object_object_add(resp, "log",
                               json_object_new_string(lpath[0] ? "reopened" : "stderr"));
    if (ok)
        log_info("control: log files rotated");
    return resp;
}

/* ------------------------------------------------------------ operator commands */

/* An optional string argument: 0 absent (or null), 1 present (*out borrowed),
 * SL_EPARSE with err set when it is not a string or too long. */
static int arg_str(json_object *req, const char *key, size_t max, const char **out, char *err,
                   size_t errlen)
{
    json_object *v;
    *out = NULL;
    if (!json_object_object_get_ex(req, key, &v) || json_object_is_type(v, json_type_null))
        return 0;
    if (!json_object_is_type(v, json_type_string) || (size_t)json_object_get_string_len(v) > max) {
        snprintf(err, errlen, "\"%s\" must be a string of at most %zu bytes", key, max);
        return SL_EPARSE;
    }
    *out = json_object_get_string(v);
    return 1;
}

static bool arg_bool(json_object *req, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(req, key, &v) && json_object_get_boolean(v);
}

/* A duration: seconds as an integer or "30s" / "5m" / "2h" / "1d". 0 absent. */
static int arg_duration(json_object *req, const char *key, uint64_t *out, char *err, size_t errlen)
{
    json_object *v;
    *out = 0;
    if (!json_object_object_get_ex(req, key, &v) || json_object_is_type(v, json_type_null))
        return 0;
    if (json_object_is_type(v, json_type_int) && json_object_get_int64(v) > 0) {
        *out = (uint64_t)json_object_get_int64(v);
        return 1;
    }
    if (json_object_is_type(v, json_type_string) &&
        cfg_parse_duration(json_object_get_string(v), out) == 0 && *out > 0)
        return 1;
    snprintf(err, errlen, "\"%s\" must be a duration such as 90, \"30m\", \"2h\" or \"1d\"", key);
    return SL_EPARSE;
}

/* A recipient domain, lower-cased, without a trailing dot. Caller frees. */
static char *domain_norm(const char *s, char *err, size_t errlen)
{
    size_t n = strlen(s);
    if (n > 0 && s[n - 1] == '.')
        n--;
    if (n == 0 || n > 253 || s[0] == '@' || s[0] == '.') {
        snprintf(err, errlen, "invalid domain \"%.100s\"", s);
        return NULL;
    }
    char *d = xstrndup(s, n);
    for (char *p = d; *p; p++) {
        if ((unsigned char)*p <= ' ' || *p == '@' || *p == '/' || *p == '"') {
            snprintf(err, errlen, "invalid domain \"%.100s\"", s);
            free(d);
            return NULL;
        }
        *p = (char)tolower((unsigned char)*p);
    }
    return d;
}

static queue_req_t *admin_req_new(const ctl_ctx_t *x, queue_req_type_t type, char *err,
                                  size_t errlen)
{
    if (x->cx_env->ce_queue == NULL) {
        snprintf(err, errlen, "the queue is not running");
        return NULL;
    }
    queue_req_t *r = xcalloc(1, sizeof(*r));
    r->qq_type = type;
    return r;
}

/* Hand r (filled by the caller) to control.c, which sends it to the queue
 * thread and answers with ctl_queue_answer() when it comes back. */
static int admin_req_send(queue_req_t **qr, queue_req_t *r)
{
    *qr = r;
    return CTL_ASYNC;
}

/* The target of suspend / resume / retry: "domain", "job" or "all":true
 * (exactly one; job only where allow_job). */
static int admin_target(queue_req_t *r, json_object *req, bool allow_job, const char *what,
                        char *err, size_t errlen)
{
    const char *dom, *job;
    int rc;
    if ((rc = arg_str(req, "domain", 255, &dom, err, errlen)) < 0 ||
        (rc = arg_str(req, "job", 200, &job, err, errlen)) < 0)
        return rc;
    bool all = arg_bool(req, "all");
    if ((dom != NULL) + (job != NULL) + all != 1 || (job != NULL && !allow_job)) {
        snprintf(err, errlen, "%s needs exactly one of \"domain\"%s or \"all\":true", what,
                 allow_job ? ", \"job\"" : "");
        return SL_EPARSE;
    }
    if (dom != NULL && (r->qq_domain = domain_norm(dom, err, errlen)) == NULL)
        return SL_EPARSE;
    if (job != NULL && job[0] == '\0') {
        snprintf(err, errlen, "\"job\" must not be empty");
        return SL_EPARSE;
    }
    r->qq_job = job ? xstrdup(job) : NULL;
    r->qq_all = all;
    return 0;
}

/* A request of this type aimed by admin_target(), or NULL with *rc set. */
static queue_req_t *admin_target_req(const ctl_ctx_t *x, queue_req_type_t type, json_object *req,
                                     bool allow_job, const char *what, int *rc, char *err,
                                     size_t errlen)
{
    queue_req_t *r = admin_req_new(x, type, err, errlen);
    if (r == NULL) {
        *rc = SL_EBUSY;
        return NULL;
    }
    if ((*rc = admin_target(r, req, allow_job, what, err, errlen)) < 0) {
        ctl_queue_req_free(r);
        return NULL;
    }
    return r;
}

static int cmd_queues(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                      char *err, size_t errlen)
{
    size_t limit = 0;
    if (req_limit(req, &limit, err, errlen) != 0)
        return SL_EPARSE;
    queue_req_t *r = admin_req_new(x, QREQ_QUEUES, err, errlen);
    if (r == NULL)
        return SL_EBUSY;
    r->qq_limit = limit;
    return admin_req_send(qr, r);
}

static int cmd_queue(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                     char *err, size_t errlen)
{
    const char *dom;
    int rc = arg_str(req, "domain", 255, &dom, err, errlen);
    if (rc <= 0) {
        if (rc == 0)
            snprintf(err, errlen, "queue needs \"domain\"");
        return SL_EPARSE;
    }
    char *d = domain_norm(dom, err, errlen);
    if (d == NULL)
        return SL_EPARSE;
    queue_req_t *r = admin_req_new(x, QREQ_QUEUES, err, errlen);
    if (r == NULL) {
        free(d);
        return SL_EBUSY;
    }
    r->qq_domain = d;
    return admin_req_send(qr, r);
}

/* suspend / resume of a provider or a virtual MTA: in the delivery's
 * traffic shaping, not the queue: *handled, and CTL_REPLY or an error; not
 * *handled when req names neither. */
static int shaping_suspend(const ctl_ctx_t *x, json_object *req, json_object *resp, bool resume,
                           bool *handled, char *err, size_t errlen)
{
    *handled = true;
    const char *pv, *vm;
    uint64_t dur = 0;
    int rc;
    if ((rc = arg_str(req, "provider", 255, &pv, err, errlen)) < 0 ||
        (rc = arg_str(req, "vmta", 255, &vm, err, errlen)) < 0 ||
        (!resume && (rc = arg_duration(req, "for", &dur, err, errlen)) < 0))
        return rc;
    if (pv == NULL && vm == NULL) {
        *handled = false;
        return 0;
    }
    const char *what = resume ? "resume" : "suspend";
    if ((pv != NULL) + (vm != NULL) != 1 || json_object_object_get_ex(req, "domain", NULL) ||
        json_object_object_get_ex(req, "job", NULL) || arg_bool(req, "all")) {
        snprintf(err, errlen, "%s needs exactly one of \"provider\" or \"vmta\"", what);
        return SL_EPARSE;
    }
    if ((pv != NULL && pv[0] == '\0') || (vm != NULL && vm[0] == '\0')) {
        snprintf(err, errlen, "%s: the name must not be empty", what);
        return SL_EPARSE;
    }
    struct dlv *dlv = x->cx_env->ce_dlv;
    if (dlv != NULL) {
        if ((rc = dlv_shaping_suspend(dlv, pv, vm, dur, resume, err, errlen)) != 0)
            return rc;
        log_info("control: %s %s=%s%s", what, pv ? "provider" : "vmta", pv ? pv : vm,
                 dur ? " (with a duration)" : "");
        /* both keys always there, the one not named null (docs/records.md) */
        json_object_object_add(resp, "provider", pv ? json_object_new_string(pv) : NULL);
        json_object_object_add(resp, "vmta", vm ? json_object_new_string(vm) : NULL);
        json_object_object_add(resp, resume ? "resumed" : "suspended", json_object_new_boolean(1));
        if (!resume) /* seconds; null: until resumed */
            json_object_object_add(resp, "for", dur ? json_object_new_int64((int64_t)dur) : NULL);
        return CTL_REPLY;
    }
    snprintf(err, errlen, "delivery is not running");
    return SL_ENOTFOUND;
}

static int cmd_suspend(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                       char *err, size_t errlen)
{
    uint64_t dur;
    int rc;
    bool handled;
    if ((rc = shaping_suspend(x, req, resp, false, &handled, err, errlen)) < 0 || handled)
        return rc;
    queue_req_t *r = admin_target_req(x, QREQ_SUSPEND, req, true, "suspend", &rc, err, errlen);
    if (r == NULL)
        return rc;
    if ((rc = arg_duration(req, "for", &dur, err, errlen)) < 0) {
        ctl_queue_req_free(r);
        return rc;
    }
    r->qq_until = dur ? clock_now_s() + dur : 0;
    return admin_req_send(qr, r);
}

/* resume of a domain or job that holds nothing: refused with qq_error set
 * (exit 1 in sluicectl), as a provider's or a virtual MTA's resume is, so
 * that a misspelt name never passes for a resumed one. resume --all is
 * "make sure nothing is held": fine with nothing held. */
static bool resume_missed(queue_req_t *r)
{
    if (r->qq_type != QREQ_RESUME || r->qq_all || r->qq_error[0] != '\0' || r->qq_result == NULL)
        return false;
    json_object *n = json_object_object_get(r->qq_result, "resumed");
    if (n == NULL || json_object_get_int64(n) > 0)
        return false;
    snprintf(r->qq_error, sizeof(r->qq_error), "%s \"%.200s\" is not suspended",
             r->qq_domain ? "domain" : "job", r->qq_domain ? r->qq_domain : r->qq_job);
    return true;
}

static int cmd_resume(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                      char *err, size_t errlen)
{
    bool handled;
    int src = shaping_suspend(x, req, resp, true, &handled, err, errlen);
    if (src < 0 || handled)
        return src;
    int rc;
    queue_req_t *r = admin_target_req(x, QREQ_RESUME, req, true, "resume", &rc, err, errlen);
    return r ? admin_req_send(qr, r) : rc;
}

static int cmd_suspended(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                         char *err, size_t errlen)
{
    queue_req_t *r = admin_req_new(x, QREQ_HOLDS, err, errlen);
    return r ? admin_req_send(qr, r) : SL_EBUSY;
}

static int cmd_retry(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                     char *err, size_t errlen)
{
    int rc;
    queue_req_t *r = admin_target_req(x, QREQ_RETRY, req, false, "retry", &rc, err, errlen);
    return r ? admin_req_send(qr, r) : rc;
}

static int cmd_bounce(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                      char *err, size_t errlen)
{
    const char *dom, *job, *sender;
    uint64_t older;
    int rc;
    if ((rc = arg_str(req, "domain", 255, &dom, err, errlen)) < 0 ||
        (rc = arg_str(req, "job", 200, &job, err, errlen)) < 0 ||
        (rc = arg_str(req, "sender", 320, &sender, err, errlen)) < 0 ||
        (rc = arg_duration(req, "older_than", &older, err, errlen)) < 0)
        return rc;
    if (dom == NULL && job == NULL && sender == NULL && older == 0 && !arg_bool(req, "yes")) {
        snprintf(err, errlen,
                 "bounce without a filter (domain, job, sender, older_than) removes every "
                 "recipient in the queue: confirm with \"yes\":true (sluicectl bounce --yes)");
        return SL_EPARSE;
    }
    queue_req_t *r = admin_req_new(x, QREQ_BOUNCE, err, errlen);
    if (r == NULL)
        return SL_EBUSY;
    if (dom != NULL && (r->qq_domain = domain_norm(dom, err, errlen)) == NULL) {
        ctl_queue_req_free(r);
        return SL_EPARSE;
    }
    r->qq_job = job ? xstrdup(job) : NULL;
    /* "<>" names the null sender */
    r->qq_sender = sender ? xstrdup(strcmp(sender, "<>") == 0 ? "" : sender) : NULL;
    r->qq_older_than = older;
    log_info("control: bounce requested domain=%s job=%s sender=%s older_than=%llu",
             r->qq_domain ? r->qq_domain : "*", job ? job : "*", sender ? sender : "*",
             (unsigned long long)older);
    return admin_req_send(qr, r);
}

/* "format": "prometheus" (text 0.0.4, the default) or "openmetrics". */
static int cmd_metrics(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                       char *err, size_t errlen)
{
    const char *fmt;
    if (arg_str(req, "format", 32, &fmt, err, errlen) < 0)
        return SL_EPARSE;
    if (fmt != NULL && strcmp(fmt, "prometheus") != 0 && strcmp(fmt, "openmetrics") != 0) {
        snprintf(err, errlen, "\"format\" must be \"prometheus\" or \"openmetrics\"");
        return SL_EPARSE;
    }
    buf_t b;
    buf_init(&b, 8192);
    metrics_render(x->cx_env, &b, fmt != NULL && strcmp(fmt, "openmetrics") == 0);
    json_object_object_add(resp, "metrics", json_object_new_string_len(b.b_data, (int)b.b_len));
    buf_free(&b);
    return CTL_REPLY;
}

/* A point in time of `events replay`: RFC 3339 in UTC (the records' form)
 * or unix seconds. */
static int events_time(json_object *req, const char *key, uint64_t *us, char *err, size_t errlen)
{
    const char *v;
    int rc = arg_str(req, key, 64, &v, err, errlen);
    if (rc <= 0)
        return rc;
    char *end;
    unsigned long long sec = strtoull(v, &end, 10);
    if (*v >= '0' && *v <= '9' && *end == '\0' && sec < 1ull << 40) {
        *us = (uint64_t)sec * 1000000;
        return 1;
    }
    if (time_parse_rfc3339(v, us) == 0)
        return 1;
    snprintf(err, errlen,
             "\"%s\": expected a time as 2026-12-02T17:00:00Z or unix seconds, got \"%s\"", key, v);
    return SL_EPARSE;
}

/* `events replay NAME --since T [--until T]` (docs/events.md). */
static int events_replay(queue_t *q, const char *name, json_object *req, json_object *resp,
                         char *err, size_t errlen)
{
    uint64_t since = 0, until = clock_now_us();
    int rc = events_time(req, "since", &since, err, errlen);
    if (rc == 0) {
        snprintf(err, errlen, "events replay: --since TIME is required");
        return SL_EPARSE;
    }
    if (rc < 0 || events_time(req, "until", &until, err, errlen) < 0)
        return SL_EPARSE;
    if (until < since) {
        snprintf(err, errlen, "events replay: --until is before --since");
        return SL_EPARSE;
    }
    if ((rc = queue_events_replay(q, name, since, until, err, errlen)) != 0)
        return rc;
    json_object *o = json_object_new_object();
    char t[40];
    json_object_object_add(o, "webhook", json_object_new_string(name));
    json_object_object_add(o, "since", json_object_new_string(time_fmt_rfc3339(since, t, 40)));
    json_object_object_add(o, "until", json_object_new_string(time_fmt_rfc3339(until, t, 40)));
    json_object_object_add(resp, "replay_started", o);
    return 0;
}

/* The event stream and its webhooks (docs/events.md); with "unpark":
 * NAME, that webhook's parked batches are sent again first; with
 * "replay": NAME, its records since "since" are sent again. */
static int cmd_events(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                      char *err, size_t errlen)
{
    queue_t *q = x->cx_env->ce_queue;
    if (q == NULL) {
        snprintf(err, errlen, "the queue is not running");
        return SL_EBUSY;
    }
    const char *name, *rname;
    if (arg_str(req, "unpark", 64, &name, err, errlen) < 0 ||
        arg_str(req, "replay", 64, &rname, err, errlen) < 0)
        return SL_EPARSE;
    json_object_object_add(resp, "replay_started", NULL);
    if (rname != NULL) {
        int rc = events_replay(q, rname, req, resp, err, errlen);
        if (rc != 0)
            return rc;
    }
    if (name != NULL) {
        int n = 0;
        if (queue_events_unpark(q, name, &n) != 0) {
            snprintf(err, errlen, "no webhook \"%s\"", name);
            return SL_ENOTFOUND;
        }
        json_object_object_add(resp, "unparked", json_object_new_int(n));
    } else {
        json_object_object_add(resp, "unparked", NULL);
    }
    json_object *o = queue_events_json(q);
    json_object_object_foreach(o, k, v)
    {
        json_object_object_add(resp, k, json_object_get(v));
    }
    json_object_put(o);
    return CTL_REPLY;
}

static int cmd_reload(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                      char *err, size_t errlen)
{
    return ctl_reload(x->cx_env, resp, err, errlen);
}

/* Traffic shaping state: providers, their queues (provider, virtual MTA)
 * with mode, rate and connections, and the virtual MTAs. */
static int cmd_providers(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                         char *err, size_t errlen)
{
    UNUSED(req);
    struct dlv *dlv = x->cx_env->ce_dlv;
    if (dlv != NULL) {
        json_object *o = dlv_shaping_json(dlv);
        json_object_object_foreach(o, key, val)
        {
            json_object_object_add(resp, key, json_object_get(val));
        }
        json_object_put(o);
        return CTL_REPLY;
    }
    snprintf(err, errlen, "delivery is not running");
    return -1;
}

/* Several nodes (delivery/cluster.c): the nodes seen, this node's leases,
 * the shared state (docs/records.md, "cluster answer"). */
static int cmd_cluster(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                       char *err, size_t errlen)
{
    UNUSED(req);
    UNUSED(qr);
    struct dlv *dlv = x->cx_env->ce_dlv;
    if (dlv == NULL) {
        snprintf(err, errlen, "delivery is not running");
        return -1;
    }
    json_object *o = dlv_cluster_json(dlv);
    json_object_object_foreach(o, key, val)
    {
        json_object_object_add(resp, key, json_object_get(val));
    }
    json_object_put(o);
    return CTL_REPLY;
}

/* ------------------------------------------------------------ answers */

/* One entry of "holds"; name, provider and until are borrowed from another
 * object (a reference is taken) or NULL. */
static json_object *hold_new(const char *type, json_object *name, json_object *provider,
                             const char *by, json_object *until)
{
    json_object *h = json_object_new_object();
    json_object_object_add(h, "type", json_object_new_string(type));
    json_object_object_add(h, "name", json_object_get(name));
    json_object_object_add(h, "provider", json_object_get(provider));
    json_object_object_add(h, "by", json_object_new_string(by));
    json_object_object_add(h, "until", json_object_get(until));
    json_object_object_add(h, "persistent", json_object_new_boolean(0)); /* in memory only */
    return h;
}

/* `sluicectl tlsrpt [DAY]`: the TLSRPT counters (queue/tlsrpt.c) of today
 * (UTC) or of DAY ("YYYY-MM-DD"), given as {"day": ...} or as the one
 * word of "args". */
static int cmd_tlsrpt(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                      char *err, size_t errlen)
{
    UNUSED(resp);
    json_object *v = NULL, *args;
    if (json_object_object_get_ex(req, "args", &args) &&
        json_object_is_type(args, json_type_array)) {
        size_t na = json_object_array_length(args);
        const char *a0 = na ? json_object_get_string(json_object_array_get_idx(args, 0)) : "";
        if (na == 2 && strcmp(a0, "send") == 0 &&
            strcmp(json_object_get_string(json_object_array_get_idx(args, 1)), "--now") == 0) {
            queue_req_t *r = admin_req_new(x, QREQ_TLSRPT_SEND, err, errlen);
            if (r == NULL)
                return SL_EBUSY;
            return admin_req_send(qr, r);
        }
        if (na != 1 || strcmp(a0, "send") == 0) {
            snprintf(err, errlen, "usage: tlsrpt [YYYY-MM-DD] | tlsrpt send --now");
            return SL_EPARSE;
        }
        v = json_object_array_get_idx(args, 0);
    } else {
        json_object_object_get_ex(req, "day", &v);
    }
    const char *day = v ? json_object_get_string(v) : NULL;
    if (day != NULL) {
        int y, m, d;
        char tail;
        if (strlen(day) != 10 || sscanf(day, "%4d-%2d-%2d%c", &y, &m, &d, &tail) != 3 || m < 1 ||
            m > 12 || d < 1 || d > 31) {
            snprintf(err, errlen, "tlsrpt: a day is YYYY-MM-DD, not \"%.40s\"", day);
            return SL_EPARSE;
        }
    }
    queue_req_t *r = admin_req_new(x, QREQ_TLSRPT, err, errlen);
    if (r == NULL)
        return SL_EBUSY;
    r->qq_domain = day ? xstrdup(day) : NULL;
    return admin_req_send(qr, r);
}

/* The answer to a request the queue thread answered, as the queue put it. */
static json_object *queue_req_response(queue_req_t *r)
{
    if (r->qq_type == QREQ_ROTATE)
        return log_rotate_response(r);
    json_object *resp = json_object_new_object();
    if (r->qq_error[0] != '\0' || r->qq_result == NULL || resume_missed(r)) {
        json_object_object_add(resp, "ok", json_object_new_boolean(0));
        json_object_object_add(resp, "error",
                               json_object_new_string(r->qq_error[0] ? r->qq_error : "no answer"));
        return resp;
    }
    json_object_object_add(resp, "ok", json_object_new_boolean(1));
    if (r->qq_type == QREQ_INSPECT) {
        json_object_object_add(resp, "message", json_object_get(r->qq_result));
        return resp;
    }
    json_object_object_foreach(r->qq_result, key, val)
    {
        /* check's own "ok" means "consistent": "ok" here means "answered". */
        const char *k = strcmp(key, "ok") == 0 ? "consistent" : key;
        json_object_object_add(resp, k, json_object_get(val));
    }
    return resp;
}

/* The suspensions traffic shaping holds in memory (operator and rules),
 * in the form of the queue's holds (docs/records.md), appended to holds. */
static void shaping_holds_append(const control_env_t *env, json_object *holds)
{
    struct dlv *dlv = env->ce_dlv;
    if (dlv == NULL || holds == NULL || !json_object_is_type(holds, json_type_array))
        return;
    json_object *sh = dlv_shaping_json(dlv), *v;
    json_object *provs = json_object_object_get(sh, "providers");
    for (size_t i = 0; i < json_object_array_length(provs); i++) {
        json_object *p = json_object_array_get_idx(provs, i);
        json_object *name = json_object_object_get(p, "provider");
        if (json_object_get_boolean(json_object_object_get(p, "suspended")))
            json_object_array_add(
                holds, hold_new("provider", name, NULL,
                                json_object_get_string(json_object_object_get(p, "suspended_by")),
                                json_object_object_get(p, "suspended_until")));
        json_object *qs = json_object_object_get(p, "queues");
        for (size_t j = 0; j < json_object_array_length(qs); j++) {
            json_object *q = json_object_array_get_idx(qs, j);
            /* a rule's disable-source: this vmta skipped for this provider */
            if ((v = json_object_object_get(q, "disabled_until")) != NULL)
                json_object_array_add(
                    holds, hold_new("source", json_object_object_get(q, "vmta"), name, "rule", v));
        }
    }
    json_object *vms = json_object_object_get(sh, "virtual_mtas");
    for (size_t i = 0; i < json_object_array_length(vms); i++) {
        json_object *m = json_object_array_get_idx(vms, i);
        if (json_object_get_boolean(json_object_object_get(m, "suspended")))
            json_object_array_add(holds, hold_new("vmta", json_object_object_get(m, "name"), NULL,
                                                  "operator",
                                                  json_object_object_get(m, "suspended_until")));
    }
    json_object_put(sh);
}

json_object *ctl_queue_answer(const control_env_t *env, queue_req_t *r)
{
    json_object *resp = queue_req_response(r);
    /* every kind of suspension where holds are listed */
    shaping_holds_append(env, json_object_object_get(resp, "holds"));
    return resp;
}

void ctl_queue_req_free(queue_req_t *r)
{
    if (r == NULL)
        return;
    json_object_put(r->qq_result);
    free(r->qq_domain);
    free(r->qq_job);
    free(r->qq_sender);
    queue_supp_req_free(r->qq_supp);
    free(r);
}
