/*
 * httpd.c - the HTTP server: h2o (libh2o, built on libuv) on its own
 * thread and loop (docs/http-api.md).
 *
 *   httpd_start / httpd_stop
 *
 *   POST /api/inject/v1          inject scope: JSON -> messages -> spool
 *   GET|POST /api/admin/v1/<verb> read or admin scope (commands.c's table):
 *                                the control socket's command and answer
 *   GET /metrics                 read scope on http.listen; no
 *                                authentication on control.http_metrics
 *
 * Why a thread of its own: rendering a 1,000-recipient request is
 * milliseconds of CPU that should not stall the control socket, the
 * signals and the reload on the main loop, and the reception threads'
 * loops belong to SMTP sessions with their own timers and limits. The
 * main thread owns what the admin API and /metrics read (the control
 * dispatcher, metrics_render), so those requests hop there and back over
 * two channels (h_tomain on the main loop, h_back on ours); an injection's
 * messages go to the queue thread together (queue_submit_batch: one hop,
 * one group commit) and come back on h_commit, like an SMTP transaction's.
 *
 * Every request passes, in order: the per-client limits (in-progress
 * requests and requests per second per IP: 429), the route (404/405),
 * authentication (401: bearer token, SHA-256 compared in constant time,
 * or basic against smtp.auth.users), the scope (403), the media type
 * (415), then its handler. Errors are {"error": {"code", "field",
 * "message"}}.
 *
 * Lifetime: h2o owns each accepted socket; hconn_t wraps its uv_tcp_t
 * and is freed in its close callback. A request's state (hreq_t) lives
 * in h2o's request pool with a dispose hook, so a client that goes away
 * leaves its injection or admin job to finish unanswered (the messages
 * are committed all the same, as for an SMTP client that disconnects
 * before the 250).
 * Thread: httpd_start/httpd_stop on the main thread; everything else on
 * the HTTP thread except tomain_cb and admin_done (main thread).
 */
#include "core/server/control_int.h"
#include "core/server/inject_int.h"
#include "core/server/smtp_int.h"
#include "core/server/suppress_int.h"

#include <h2o.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#define IP_BUCKETS 1024
#define STOP_GRACE_MS 5000
#define ENTITY_SLACK (64 * 1024)

typedef struct httpd_ip {
    struct httpd_ip *ip_next;
    char ip_addr[48];
    int ip_inflight;
    double ip_tokens;
    uint64_t ip_last_us;
} httpd_ip_t;

typedef struct hconn {
    uv_tcp_t hc_tcp; /* first: h2o's close callback gets this handle */
    struct httpd *hc_h;
    struct hconn *hc_next;
    struct hconn **hc_prevp;
} hconn_t;

typedef struct hlisten {
    uv_tcp_t hl_tcp;
    struct httpd *hl_h;
    bool hl_api; /* http.listen, else control.http_metrics */
    h2o_accept_ctx_t hl_actx;
    h2o_hostconf_t *hl_hosts[2];
    char hl_addr[128];
} hlisten_t;

typedef struct handler {
    h2o_handler_t hd_super;
    struct httpd *hd_h;
    bool hd_api;
} handler_t;

/* A trip to the main thread (admin verb or /metrics) and back. */
typedef enum { JOB_ADMIN, JOB_METRICS } job_kind_t;
typedef struct hjob {
    chan_node_t j_node;
    struct httpd *j_h;
    struct hreq *j_rq; /* NULL once the request is gone (HTTP thread) */
    job_kind_t j_kind;
    bool j_openmetrics;
    json_object *j_req; /* admin: the command object */
    buf_t j_answer;
    bool j_ok;
} hjob_t;

typedef struct inj_op inj_op_t;

typedef struct hreq {
    h2o_req_t *rq_req;
    char *rq_user; /* the smtp.auth.users name of HTTP basic (request pool), or NULL */
    struct httpd *rq_h;
    httpd_ip_t *rq_ip;
    inj_op_t *rq_op;
    hjob_t *rq_job;
} hreq_t;

struct inj_op {
    hreq_t *op_rq; /* NULL once the request is gone */
    int op_pending;
    int op_ok_rcpts;
    int op_fail_rcpts;
    int op_failed_msgs;
    json_object *op_ids;    /* message ids committed */
    json_object *op_failed; /* recipients whose message was not committed */
    json_object *op_errors;
    bool op_full; /* a failure was the spool's high water */
};

struct httpd {
    uv_loop_t h_loop;
    uv_thread_t h_thread;
    uv_async_t h_stop_async;
    uv_timer_t h_tick; /* per-IP table sweep; the stop watchdog */
    h2o_globalconf_t h_conf;
    h2o_context_t h_ctx;
    tls_ctx_t *h_tls;
    hlisten_t *h_listen[2];
    h2o_hostconf_t *h_host_api;
    h2o_hostconf_t *h_host_metrics;
    int h_nlisten;
    hconn_t *h_conns;
    int h_nconns;
    httpd_ip_t *h_ips[IP_BUCKETS];
    control_env_t h_env;
    control_t *h_ct;
    chan_t *h_tomain; /* main loop: jobs */
    chan_t *h_back;   /* our loop: jobs answered */
    chan_t *h_commit; /* our loop: messages back from the queue thread */
    pthread_mutex_t h_back_lock;
    bool h_back_open; /* under h_back_lock: the main thread may push */
    bool h_stopping;  /* HTTP thread */
    bool h_gave_up;   /* the stop watchdog closed connections h2o did not */
    uint64_t h_stop_at_us;
    uint64_t h_max_body;
    char h_hostname[256];
};

static void conn_closed_cb(uv_handle_t *h);
static int on_req(h2o_handler_t *self, h2o_req_t *req);
static void send_json(h2o_req_t *req, int status, const char *reason, const char *body, size_t len);
static void send_error(h2o_req_t *req, int status, const char *code, const char *field,
                       const char *msg);
static void back_cb(chan_t *ch, chan_node_t *first, void *arg);
static void commit_cb(chan_t *ch, chan_node_t *first, void *arg);
static void tomain_cb(chan_t *ch, chan_node_t *first, void *arg);
static void inject_start(hreq_t *rq, const cfg_t *cfg, bool tls);
static void stop_finish(struct httpd *h);

/* ------------------------------------------------------------ answers */

static const char *reason_of(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 503:
        return "Service Unavailable";
    default:
        return "Error";
    }
}

/* Every answer passes here or through job_answer: the request metrics. */
static void count_answer(h2o_req_t *req, int status)
{
    struct timeval now, b = req->timestamps.request_begin_at;
    gettimeofday(&now, NULL);
    int64_t us = ((int64_t)now.tv_sec - b.tv_sec) * 1000000 + (now.tv_usec - b.tv_usec);
    http_stats_count(req->path_normalized.base, req->path_normalized.len, status,
                     b.tv_sec != 0 && us > 0 ? (uint64_t)us : 0);
}

static void send_json(h2o_req_t *req, int status, const char *reason, const char *body, size_t len)
{
    count_answer(req, status);
    req->res.status = status;
    req->res.reason = reason ? reason : reason_of(status);
    req->res.content_length = len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
                   H2O_STRLIT("application/json"));
    h2o_send_inline(req, body, len);
}

static void send_error(h2o_req_t *req, int status, const char *code, const char *field,
                       const char *msg)
{
    buf_t b;
    buf_init(&b, 256);
    buf_append_str(&b, "{\"error\":{\"code\":");
    json_str_append(&b, code, strlen(code));
    buf_append_str(&b, ",\"field\":");
    if (field && field[0])
        json_str_append(&b, field, strlen(field));
    else
        buf_append_str(&b, "null");
    buf_append_str(&b, ",\"message\":");
    json_str_append(&b, msg, strlen(msg));
    buf_append_str(&b, "}}\n");
    send_json(req, status, NULL, b.b_data, b.b_len);
    buf_free(&b);
}

static void add_retry_after(h2o_req_t *req, int seconds)
{
    char *v = h2o_mem_alloc_pool(&req->pool, 16);
    int n = snprintf(v, 16, "%d", seconds);
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL, v, (size_t)n);
}

/* ------------------------------------------------------------ per-client limits */

static httpd_ip_t *ip_get(struct httpd *h, const char *addr, int rate)
{
    unsigned hv = 5381;
    for (const char *p = addr; *p; p++)
        hv = hv * 33 + (unsigned char)*p;
    httpd_ip_t **b = &h->h_ips[hv % IP_BUCKETS];
    for (httpd_ip_t *e = *b; e; e = e->ip_next)
        if (strcmp(e->ip_addr, addr) == 0)
            return e;
    httpd_ip_t *e = xcalloc(1, sizeof(*e));
    snprintf(e->ip_addr, sizeof(e->ip_addr), "%s", addr);
    e->ip_tokens = rate;
    e->ip_last_us = clock_mono_us();
    e->ip_next = *b;
    *b = e;
    return e;
}

/* A token bucket of rate requests per second, burst rate. */
static bool ip_take(httpd_ip_t *e, int rate)
{
    uint64_t now = clock_mono_us();
    e->ip_tokens += (double)(now - e->ip_last_us) * rate / 1e6;
    if (e->ip_tokens > rate)
        e->ip_tokens = rate;
    e->ip_last_us = now;
    if (e->ip_tokens < 1.0)
        return false;
    e->ip_tokens -= 1.0;
    return true;
}

/* Forget addresses idle for a minute with nothing in progress. */
static void ip_sweep(struct httpd *h)
{
    uint64_t now = clock_mono_us();
    for (int i = 0; i < IP_BUCKETS; i++) {
        for (httpd_ip_t **pp = &h->h_ips[i]; *pp;) {
            httpd_ip_t *e = *pp;
            if (e->ip_inflight == 0 && now - e->ip_last_us > 60000000ull) {
                *pp = e->ip_next;
                free(e);
            } else {
                pp = &e->ip_next;
            }
        }
    }
}

/* ------------------------------------------------------------ authentication */

/* The scopes the request's Authorization grants (0: none, *why says why). */
static unsigned auth_scopes(hreq_t *rq, const cfg_t *cfg, const char *ip, const char **why)
{
    h2o_req_t *req = rq->rq_req;
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
    *why = "an Authorization header is required (Bearer token or Basic)";
    if (i < 0)
        return 0;
    h2o_iovec_t v = req->headers.entries[i].value;
    if (v.len > 7 && strncasecmp(v.base, "Bearer ", 7) == 0) {
        unsigned char md[SHA256_DIGEST_LENGTH];
        const char *t = v.base + 7;
        size_t tl = v.len - 7;
        while (tl > 0 && *t == ' ')
            t++, tl--;
        SHA256((const unsigned char *)t, tl, md);
        unsigned sc = 0;
        /* every entry is compared, so the time says nothing of which matched */
        for (int k = 0; k < cfg->c_http_ntokens; k++)
            if (CRYPTO_memcmp(md, cfg->c_http_tokens[k].tk_hash, sizeof(md)) == 0)
                sc |= cfg->c_http_tokens[k].tk_scopes;
        *why = "unknown token";
        return sc;
    }
    if (v.len > 6 && strncasecmp(v.base, "Basic ", 6) == 0) {
        *why = "HTTP basic authentication is off (http.basic_auth)";
        if (!cfg->c_http_basic_auth)
            return 0;
        *why = "too many failed logins from this address; try again later";
        if (smtp_auth_locked(cfg, ip))
            return 0;
        char dec[512];
        int n = v.len - 6 < 600 ? smtp_b64_decode(v.base + 6, v.len - 6, dec, sizeof(dec)) : -1;
        char *colon = n > 0 ? memchr(dec, ':', (size_t)n) : NULL;
        *why = "bad user name or password";
        if (colon == NULL)
            return 0;
        *colon = '\0';
        if (!smtp_auth_verify(cfg, dec, colon + 1)) {
            smtp_auth_failed(cfg, ip);
            log_warn("http client=%s basic auth failed user=%s", ip, log_esc(dec));
            return 0;
        }
        rq->rq_user = h2o_mem_alloc_pool(&req->pool, strlen(dec) + 1);
        memcpy(rq->rq_user, dec, strlen(dec) + 1);
        return CFG_SCOPE_INJECT;
    }
    *why = "unsupported authorization scheme (Bearer or Basic)";
    return 0;
}

/* ------------------------------------------------------------ requests */

static void hreq_dispose(void *p)
{
    hreq_t *rq = p;
    if (rq->rq_ip)
        rq->rq_ip->ip_inflight--;
    if (rq->rq_op)
        rq->rq_op->op_rq = NULL;
    if (rq->rq_job)
        rq->rq_job->j_rq = NULL;
}

static bool method_is(h2o_req_t *req, const char *m)
{
    return h2o_memis(req->method.base, req->method.len, m, strlen(m));
}

static bool path_is(h2o_req_t *req, const char *p)
{
    return h2o_memis(req->path_normalized.base, req->path_normalized.len, p, strlen(p));
}

static bool media_json(h2o_req_t *req)
{
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_CONTENT_TYPE, -1);
    if (i < 0)
        return false;
    h2o_iovec_t v = req->headers.entries[i].value;
    return v.len >= 16 && strncasecmp(v.base, "application/json", 16) == 0 &&
           (v.len == 16 || v.base[16] == ';' || v.base[16] == ' ');
}

static bool accepts_openmetrics(h2o_req_t *req)
{
    for (ssize_t i = -1; (i = h2o_find_header(&req->headers, H2O_TOKEN_ACCEPT, i)) >= 0;) {
        h2o_iovec_t v = req->headers.entries[i].value;
        if (memmem(v.base, v.len, "application/openmetrics-text", 28) != NULL)
            return true;
    }
    return false;
}

static void method_not_allowed(h2o_req_t *req, const char *allow)
{
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, allow, strlen(allow));
    send_error(req, 405, "method_not_allowed", NULL, "method not allowed here");
}

static void job_send(hreq_t *rq, hjob_t *j)
{
    j->j_h = rq->rq_h;
    j->j_rq = rq;
    buf_init(&j->j_answer, 0);
    rq->rq_job = j;
    chan_push(rq->rq_h->h_tomain, &j->j_node);
}

/* /api/admin/v1/<verb>: the body (optional, a JSON object) is the
 * control socket's request without "cmd". */
static void admin_start(hreq_t *rq, const char *verb, size_t vlen, unsigned scopes)
{
    h2o_req_t *req = rq->rq_req;
    char name[64];
    if (vlen == 0 || vlen >= sizeof(name) || memchr(verb, '/', vlen)) {
        send_error(req, 404, "not_found", NULL, "no such verb; see docs/http-api.md");
        return;
    }
    memcpy(name, verb, vlen);
    name[vlen] = '\0';
    unsigned need = ctl_cmd_scope(name) == CTL_READ ? CFG_SCOPE_READ : CFG_SCOPE_ADMIN;
    if (!(scopes & need)) {
        char msg[128];
        snprintf(msg, sizeof(msg), "\"%s\" needs a token with the %s scope", name,
                 need == CFG_SCOPE_READ ? "read" : "admin");
        send_error(req, 403, "forbidden", NULL, msg);
        return;
    }
    if (ctl_cmd_find(name) == NULL) {
        send_error(req, 404, "unknown_verb", NULL, "no such verb; see docs/http-api.md");
        return;
    }
    json_object *o;
    if (req->entity.base != NULL && req->entity.len > 0) {
        if (!media_json(req)) {
            send_error(req, 415, "unsupported_media_type", NULL,
                       "the body must be application/json");
            return;
        }
        json_tokener *tok = json_tokener_new_ex(16);
        o = json_tokener_parse_ex(tok, req->entity.base, (int)req->entity.len);
        bool bad = json_tokener_get_error(tok) != json_tokener_success;
        json_tokener_free(tok);
        if (o == NULL || bad || !json_object_is_type(o, json_type_object)) {
            json_object_put(o);
            send_error(req, 400, "bad_json", NULL, "the body must be a JSON object");
            return;
        }
    } else {
        o = json_object_new_object();
    }
    json_object_object_add(o, "cmd", json_object_new_string(name));
    hjob_t *j = xcalloc(1, sizeof(*j));
    j->j_kind = JOB_ADMIN;
    j->j_req = o;
    job_send(rq, j);
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    handler_t *hd = (handler_t *)self;
    struct httpd *h = hd->hd_h;
    struct sockaddr_storage ss;
    char ip[48] = "?";
    if (req->conn->callbacks->get_peername(req->conn, (struct sockaddr *)&ss) > 0)
        net_ntop((struct sockaddr *)&ss, ip, sizeof(ip));
    hreq_t *rq = h2o_mem_alloc_shared(&req->pool, sizeof(*rq), hreq_dispose);
    memset(rq, 0, sizeof(*rq));
    rq->rq_req = req;
    rq->rq_h = h;
    if (h->h_stopping) {
        req->http1_is_persistent = 0;
        send_error(req, 503, "shutting_down", NULL, "the server is shutting down");
        return 0;
    }
    if (!hd->hd_api) {                /* control.http_metrics: /metrics only, no authentication */
        req->http1_is_persistent = 0; /* Connection: close, as this listener always did */
        if (!path_is(req, "/metrics")) {
            send_error(req, 404, "not_found", NULL, "only /metrics here");
        } else if (!method_is(req, "GET") && !method_is(req, "HEAD")) {
            method_not_allowed(req, "GET, HEAD");
        } else {
            hjob_t *j = xcalloc(1, sizeof(*j));
            j->j_kind = JOB_METRICS;
            j->j_openmetrics = accepts_openmetrics(req);
            job_send(rq, j);
        }
        return 0;
    }
    cfg_t *cfg = cfg_current();
    rq->rq_ip = ip_get(h, ip, cfg->c_http_rate_per_ip);
    rq->rq_ip->ip_inflight++;
    if (rq->rq_ip->ip_inflight > cfg->c_http_max_requests_per_ip ||
        !ip_take(rq->rq_ip, cfg->c_http_rate_per_ip)) {
        add_retry_after(req, 1);
        send_error(req, 429, "rate_limited", NULL,
                   "too many requests from this address (http.max_requests_per_ip, "
                   "http.rate_per_ip)");
        goto out;
    }
    const char *path = req->path_normalized.base;
    size_t plen = req->path_normalized.len;
    static const char admin_pfx[] = "/api/admin/v1/";
    bool inject = path_is(req, "/api/inject/v1"), metrics = path_is(req, "/metrics");
    bool admin =
        plen > sizeof(admin_pfx) - 1 && memcmp(path, admin_pfx, sizeof(admin_pfx) - 1) == 0;
    if (!inject && !metrics && !admin) {
        send_error(req, 404, "not_found", NULL, "no such endpoint; see docs/http-api.md");
        goto out;
    }
    if (inject && !method_is(req, "POST")) {
        method_not_allowed(req, "POST");
        goto out;
    }
    if ((metrics && !method_is(req, "GET") && !method_is(req, "HEAD")) ||
        (admin && !method_is(req, "GET") && !method_is(req, "POST"))) {
        method_not_allowed(req, metrics ? "GET, HEAD" : "GET, POST");
        goto out;
    }
    const char *why;
    unsigned scopes = auth_scopes(rq, cfg, ip, &why);
    if (scopes == 0) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE, NULL,
                       H2O_STRLIT("Bearer realm=\"sluice\""));
        send_error(req, 401, "unauthorized", NULL, why);
        goto out;
    }
    if (req->entity.base != NULL && req->entity.len > h->h_max_body) {
        req->http1_is_persistent = 0;
        send_error(req, 413, "body_too_large", NULL, "the body is larger than http.max_body");
        goto out;
    }
    if (metrics) {
        if (!(scopes & CFG_SCOPE_READ)) {
            send_error(req, 403, "forbidden", NULL, "/metrics needs a token with the read scope");
            goto out;
        }
        hjob_t *j = xcalloc(1, sizeof(*j));
        j->j_kind = JOB_METRICS;
        j->j_openmetrics = accepts_openmetrics(req);
        job_send(rq, j);
    } else if (admin) {
        admin_start(rq, path + sizeof(admin_pfx) - 1, plen - (sizeof(admin_pfx) - 1), scopes);
    } else if (!(scopes & CFG_SCOPE_INJECT)) {
        send_error(req, 403, "forbidden", NULL, "injection needs a token with the inject scope");
    } else if (!media_json(req)) {
        send_error(req, 415, "unsupported_media_type", NULL, "the body must be application/json");
    } else {
        inject_start(rq, cfg, h->h_tls != NULL);
    }
out:
    cfg_unref(cfg);
    return 0;
}

/* ------------------------------------------------------------ injection */

static void op_answer(inj_op_t *op)
{
    hreq_t *rq = op->op_rq;
    if (rq == NULL)
        return;
    rq->rq_op = NULL;
    h2o_req_t *req = rq->rq_req;
    if (op->op_ok_rcpts == 0) {
        add_retry_after(req, op->op_full ? 60 : 10);
        send_error(req, 503, op->op_full ? "spool_full" : "spool_error", NULL,
                   op->op_full ? "insufficient system storage; nothing was queued"
                               : "temporary spool failure; nothing was queued");
        return;
    }
    json_object *o = json_object_new_object();
    json_object_object_add(o, "success_count", json_object_new_int(op->op_ok_rcpts));
    json_object_object_add(o, "fail_count", json_object_new_int(op->op_fail_rcpts));
    json_object_object_add(o, "failed_recipients", json_object_get(op->op_failed));
    json_object_object_add(o, "errors", json_object_get(op->op_errors));
    json_object_object_add(o, "message_ids", json_object_get(op->op_ids));
    buf_t b;
    buf_init(&b, 256);
    ctl_response_append(&b, o);
    json_object_put(o);
    send_json(req, 200, NULL, b.b_data, b.b_len);
    buf_free(&b);
}

static void op_free(inj_op_t *op)
{
    json_object_put(op->op_ids);
    json_object_put(op->op_failed);
    json_object_put(op->op_errors);
    free(op);
}

/* A message is back from the queue thread (HTTP thread). */
static void inject_committed(struct httpd *h, queue_msg_in_t *m)
{
    inj_op_t *op = m->qm_ctx;
    char id[17];
    queue_msgid_fmt(m->qm_id, id);
    if (m->qm_status == 0) {
        op->op_ok_rcpts += m->qm_nrcpt;
        json_object_array_add(op->op_ids, json_object_new_string(id));
        log_info("%s from=<%s> nrcpt=%d size=%zu client=%s proto=http%s%s", id,
                 log_esc(m->qm_sender), m->qm_nrcpt, m->qm_body.b_len, m->qm_client_ip,
                 m->qm_job ? " job=" : "", m->qm_job ? log_esc(m->qm_job) : "");
    } else {
        op->op_fail_rcpts += m->qm_nrcpt;
        op->op_failed_msgs++;
        op->op_full |= m->qm_status == SL_EFULL;
        for (int i = 0; i < m->qm_nrcpt; i++)
            json_object_array_add(op->op_failed, json_object_new_string(m->qm_rcpts[i].qr_addr));
        char *e = xasprintf("%s: not queued: %s", id, sl_strerror(m->qm_status));
        json_object_array_add(op->op_errors, json_object_new_string(e));
        free(e);
        log_warn("%s reject: spool %s from=<%s> client=%s proto=http", id,
                 sl_strerror(m->qm_status), log_esc(m->qm_sender), m->qm_client_ip);
    }
    queue_msg_in_free(m);
    if (--op->op_pending == 0) {
        op_answer(op);
        op_free(op);
    }
    (void)h;
}

/* The same refusals as SMTP's MAIL FROM: the spool over high water or
 * the message memory full (452 4.3.1 there) is 503, too many inserts
 * waiting for their commit (421 4.3.2) is 429; both with Retry-After. */
static bool inject_backpressure(hreq_t *rq, const cfg_t *cfg)
{
    struct httpd *h = rq->rq_h;
    h2o_req_t *req = rq->rq_req;
    const smtp_server_stats_t *st = h->h_env.ce_smtp ? smtp_server_stats(h->h_env.ce_smtp) : NULL;
    if (queue_over_high_water(h->h_env.ce_queue)) {
        add_retry_after(req, 60);
        send_error(req, 503, "spool_full", NULL,
                   "insufficient system storage (spool over spool.high_water)");
        return true;
    }
    if (st != NULL && atomic_load(&st->ss_mem_limit) > 0 &&
        atomic_load(&st->ss_mem_used) + req->entity.len > atomic_load(&st->ss_mem_limit)) {
        add_retry_after(req, 10);
        send_error(req, 503, "memory_full", NULL, "message memory full (smtp.max_memory)");
        return true;
    }
    if (cfg->c_smtp_max_pending > 0 &&
        queue_pending(h->h_env.ce_queue) > (uint64_t)cfg->c_smtp_max_pending) {
        add_retry_after(req, 1);
        send_error(req, 429, "busy", NULL, "system busy (smtp.max_pending inserts waiting)");
        return true;
    }
    return false;
}

static queue_msg_in_t *msg_new(hreq_t *rq, const inj_req_t *r, uint64_t id, const char *ip,
                               buf_t *body, bool eightbit)
{
    struct httpd *h = rq->rq_h;
    queue_msg_in_t *m = xcalloc(1, sizeof(*m));
    m->qm_auth_user = rq->rq_user ? xstrdup(rq->rq_user) : NULL; /* as SMTP AUTH's */
    m->qm_id = id;
    m->qm_arrival = clock_now_s();
    m->qm_sender = xstrdup(r->ir_sender);
    m->qm_job = r->ir_job ? xstrdup(r->ir_job) : NULL;
    m->qm_first = r->ir_first;
    snprintf(m->qm_client_ip, sizeof(m->qm_client_ip), "%s", ip);
    m->qm_flags = (eightbit ? Q_F_8BITMIME : 0) | (r->ir_sender_utf8 ? Q_F_SMTPUTF8 : 0);
    m->qm_body = *body;
    memset(body, 0, sizeof(*body));
    m->qm_reply = h->h_commit;
    return m;
}

static void msg_add_rcpt(queue_msg_in_t *m, const inj_rcpt_t *rc)
{
    m->qm_rcpts = xrealloc(m->qm_rcpts, (size_t)(m->qm_nrcpt + 1) * sizeof(*m->qm_rcpts));
    queue_rcpt_in_t *q = &m->qm_rcpts[m->qm_nrcpt++];
    memset(q, 0, sizeof(*q));
    q->qr_addr = xstrdup(rc->ir_email);
    if (rc->ir_utf8)
        m->qm_flags |= Q_F_SMTPUTF8;
}

/* The suppression list (docs/bounces-in.md), as SMTP's RCPT checks it:
 * the recipients it stops leave r (whatever suppression.action says: an
 * HTTP client gets no silent drop, it is told) and are named in *failed,
 * with a line each in *errors (both new arrays, NULL when none). How many
 * left. HTTP thread. */
static int inject_suppressed(hreq_t *rq, const cfg_t *cfg, inj_req_t *r, json_object **failed,
                             json_object **errors)
{
    queue_t *q = rq->rq_h->h_env.ce_queue;
    int kept = 0, n = 0;
    *failed = *errors = NULL;
    for (int i = 0; i < r->ir_nrcpt; i++) {
        queue_supp_entry_t e;
        if (!supp_stops(q, cfg, r->ir_sender, r->ir_rcpts[i].ir_email, rq->rq_user, &e)) {
            r->ir_rcpts[kept++] = r->ir_rcpts[i];
            continue;
        }
        if (*failed == NULL) {
            *failed = json_object_new_array();
            *errors = json_object_new_array();
        }
        json_object_array_add(*failed, json_object_new_string(r->ir_rcpts[i].ir_email));
        char *t = xasprintf("%s: recipient address suppressed (%s)", r->ir_rcpts[i].ir_email,
                            e.se_reason);
        json_object_array_add(*errors, json_object_new_string(t));
        free(t);
        log_info("http reject <%s>: suppressed reason=%s", log_esc(r->ir_rcpts[i].ir_email),
                 e.se_reason);
        n++;
    }
    r->ir_nrcpt = kept;
    return n;
}

/* One suppressed recipient into the answer's failed_recipients / errors
 * (created on first use). */
static void supp_fail(json_object **failed, json_object **errors, const char *addr,
                      const queue_supp_entry_t *e)
{
    if (*failed == NULL) {
        *failed = json_object_new_array();
        *errors = json_object_new_array();
    }
    json_object_array_add(*failed, json_object_new_string(addr));
    char *t = xasprintf("%s: recipient address suppressed (%s%s%s)", addr, e->se_reason,
                        e->se_scope[0] ? ", scope " : "", e->se_scope);
    json_object_array_add(*errors, json_object_new_string(t));
    free(t);
}

/* suppression.scope_header (docs/bounces-in.md): the header is known once
 * a message is rendered; its recipients on that tenant's list leave it
 * (named in the answer like the others), and a message left with none is
 * not queued. How many recipients left; *built may shrink. HTTP thread. */
static int inject_scope_suppressed(hreq_t *rq, const cfg_t *cfg, const inj_req_t *r,
                                   queue_msg_in_t **msgs, int *built, json_object **failed,
                                   json_object **errors)
{
    queue_t *q = rq->rq_h->h_env.ce_queue;
    char scope[QUEUE_SUPP_SCOPE_MAX + 1];
    int n = 0, kept_msgs = 0;
    for (int i = 0; i < *built; i++) {
        queue_msg_in_t *m = msgs[i];
        int kept = 0;
        bool scoped =
            cfg->c_supp_enabled && r->ir_sender[0] != '\0' &&
            queue_supp_header_scope(cfg, m->qm_body.b_data, m->qm_body.b_len, scope, sizeof(scope));
        for (int k = 0; k < m->qm_nrcpt; k++) {
            queue_supp_entry_t e;
            const char *a = m->qm_rcpts[k].qr_addr;
            if (scoped && strncasecmp(a, "postmaster@", 11) != 0 &&
                queue_supp_lookup(q, a, scope, &e) == 1) {
                supp_fail(failed, errors, a, &e);
                log_info("http reject <%s>: suppressed reason=%s scope=%s", log_esc(a), e.se_reason,
                         e.se_scope[0] ? log_esc(e.se_scope) : "global");
                free(m->qm_rcpts[k].qr_addr);
                free(m->qm_rcpts[k].qr_orcpt);
                n++;
                continue;
            }
            m->qm_rcpts[kept++] = m->qm_rcpts[k];
        }
        m->qm_nrcpt = kept;
        if (kept == 0)
            queue_msg_in_free(m);
        else
            msgs[kept_msgs++] = m;
    }
    *built = kept_msgs;
    return n;
}

/* Parse, render every message (so that an error queues nothing), then
 * submit them all; the answer goes when the last is back. */
static void inject_start(hreq_t *rq, const cfg_t *cfg, bool tls)
{
    struct httpd *h = rq->rq_h;
    h2o_req_t *req = rq->rq_req;
    if (inject_backpressure(rq, cfg))
        return;
    inj_limits_t lim = {.il_max_rcpts = cfg->c_http_max_recipients,
                        .il_max_age = cfg->c_max_age,
                        .il_max_msg = cfg->c_smtp_max_message_size,
                        .il_max_depth = 16};
    inj_err_t e = {0};
    inj_req_t *r = NULL;
    char ip[48];
    snprintf(ip, sizeof(ip), "%s", rq->rq_ip ? rq->rq_ip->ip_addr : "?");
    if (inj_parse(req->entity.base ? req->entity.base : "", req->entity.len, &lim, &r, &e) < 0) {
        send_error(req, e.ie_status, e.ie_code, e.ie_field, e.ie_message);
        return;
    }
    json_object *supp_failed, *supp_errors;
    int nsupp = inject_suppressed(rq, cfg, r, &supp_failed, &supp_errors);
    if (nsupp > 0 && r->ir_nrcpt == 0) {
        json_object_put(supp_failed);
        json_object_put(supp_errors);
        inj_req_free(r);
        send_error(req, 422, "suppressed", "recipients",
                   "every recipient is on the suppression list; nothing was queued");
        return;
    }
    int n = r->ir_personal ? r->ir_nrcpt : 1;
    queue_msg_in_t **msgs = xcalloc((size_t)n, sizeof(*msgs));
    inj_ctx_t cx = {.ic_hostname = h->h_hostname,
                    .ic_client_ip = ip,
                    .ic_proto = tls ? "HTTPS" : "HTTP",
                    .ic_now = clock_now_s()};
    char date[64];
    cx.ic_date = inj_date(cx.ic_now, date, sizeof(date)); /* once for the request's messages */
    buf_t scratch[2]; /* the text parts' work buffers, reused by every message */
    buf_init(&scratch[0], 0);
    buf_init(&scratch[1], 0);
    cx.ic_scratch = scratch;
    int built = 0, rc = 0;
    buf_t body;
    buf_init(&body, 0);
    if (!r->ir_personal) {
        cx.ic_msgid = queue_msgid_new();
        bool eb;
        buf_init(&body, 4096);
        rc = inj_render(r, -1, &cx, &body, &eb, &e);
        if (rc == INJ_PERSONAL) {
            r->ir_personal = true; /* the template names {{ email }} or {{ name }} */
            n = r->ir_nrcpt;
            msgs = xrealloc(msgs, (size_t)n * sizeof(*msgs));
            buf_free(&body);
            rc = 0;
        } else if (rc == 0) {
            msgs[0] = msg_new(rq, r, cx.ic_msgid, ip, &body, eb);
            for (int i = 0; i < r->ir_nrcpt; i++)
                msg_add_rcpt(msgs[0], &r->ir_rcpts[i]);
            built = 1;
        }
    }
    size_t hint = 4096; /* the last message's size: one allocation, no regrowth */
    for (int i = 0; rc == 0 && r->ir_personal && i < n; i++) {
        cx.ic_msgid = queue_msgid_new();
        bool eb;
        buf_init(&body, hint);
        if ((rc = inj_render(r, i, &cx, &body, &eb, &e)) != 0)
            break;
        hint = body.b_len + 512;
        msgs[i] = msg_new(rq, r, cx.ic_msgid, ip, &body, eb);
        msg_add_rcpt(msgs[i], &r->ir_rcpts[i]);
        built++;
    }
    for (int i = 0; rc == 0 && i < built; i++)
        if (msgs[i]->qm_body.b_len > lim.il_max_msg)
            rc = inj_err_set(&e, 422, "message_too_big", "content",
                             "a rendered message is %zu bytes, over smtp.max_message_size",
                             msgs[i]->qm_body.b_len);
    buf_free(&body);
    buf_free(&scratch[0]);
    buf_free(&scratch[1]);
    if (rc == 0)
        nsupp += inject_scope_suppressed(rq, cfg, r, msgs, &built, &supp_failed, &supp_errors);
    if (rc == 0 && built == 0)
        rc = inj_err_set(&e, 422, "suppressed", "recipients",
                         "every recipient is on the suppression list; nothing was queued");
    if (rc != 0) {
        for (int i = 0; i < built; i++)
            queue_msg_in_free(msgs[i]);
        free(msgs);
        inj_req_free(r);
        json_object_put(supp_failed);
        json_object_put(supp_errors);
        send_error(req, e.ie_status, e.ie_code, e.ie_field, e.ie_message);
        return;
    }
    inj_op_t *op = xcalloc(1, sizeof(*op));
    op->op_rq = rq;
    op->op_pending = built;
    op->op_ids = json_object_new_array();
    op->op_failed = supp_failed ? supp_failed : json_object_new_array();
    op->op_errors = supp_errors ? supp_errors : json_object_new_array();
    op->op_fail_rcpts = nsupp;
    rq->rq_op = op;
    for (int i = 0; i < built; i++)
        msgs[i]->qm_ctx = op;
    queue_submit_batch(h->h_env.ce_queue, msgs, (size_t)built); /* one hop, one group commit */
    free(msgs);
    inj_req_free(r);
}

/* ------------------------------------------------------------ the main thread's side */

static void back_push(struct httpd *h, hjob_t *j)
{
    pthread_mutex_lock(&h->h_back_lock);
    bool open = h->h_back_open;
    if (open)
        chan_push(h->h_back, &j->j_node);
    pthread_mutex_unlock(&h->h_back_lock);
    if (!open) { /* the HTTP thread is gone: nobody to answer */
        json_object_put(j->j_req);
        buf_free(&j->j_answer);
        free(j);
    }
}

static void admin_done(void *arg, json_object *resp)
{
    hjob_t *j = arg;
    json_object *ok = NULL;
    j->j_ok = json_object_object_get_ex(resp, "ok", &ok) && json_object_get_boolean(ok);
    ctl_response_append(&j->j_answer, resp);
    back_push(j->j_h, j);
}

static void tomain_cb(chan_t *ch, chan_node_t *first, void *arg)
{
    SL_ASSERT_MAIN_THREAD();
    struct httpd *h = arg;
    for (chan_node_t *n = first, *next; n != NULL; n = next) {
        next = n->cn_next;
        hjob_t *j = (hjob_t *)n;
        if (j->j_kind == JOB_METRICS) {
            metrics_render(&h->h_env, &j->j_answer, j->j_openmetrics);
            j->j_ok = true;
            back_push(h, j);
        } else {
            control_call(h->h_ct, j->j_req, admin_done, j);
        }
    }
}

/* ------------------------------------------------------------ the HTTP thread's side */

static void job_answer(hjob_t *j)
{
    hreq_t *rq = j->j_rq;
    if (rq != NULL) {
        rq->rq_job = NULL;
        h2o_req_t *req = rq->rq_req;
        if (j->j_kind == JOB_METRICS) {
            req->res.status = 200;
            req->res.reason = "OK";
            const char *ct = j->j_openmetrics
                                 ? "application/openmetrics-text; version=1.0.0; charset=utf-8"
                                 : "text/plain; version=0.0.4; charset=utf-8";
            h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, ct,
                           strlen(ct));
            req->res.content_length = j->j_answer.b_len;
            count_answer(req, 200);
            h2o_send_inline(req, j->j_answer.b_data, j->j_answer.b_len);
        } else {
            send_json(req, j->j_ok ? 200 : 422, NULL, j->j_answer.b_data, j->j_answer.b_len);
        }
    }
    json_object_put(j->j_req);
    buf_free(&j->j_answer);
    free(j);
}

static void back_cb(chan_t *ch, chan_node_t *first, void *arg)
{
    for (chan_node_t *n = first, *next; n != NULL; n = next) {
        next = n->cn_next;
        job_answer((hjob_t *)n);
    }
}

static void commit_cb(chan_t *ch, chan_node_t *first, void *arg)
{
    struct httpd *h = arg;
    for (chan_node_t *n = first, *next; n != NULL; n = next) {
        next = n->cn_next;
        inject_committed(h, (queue_msg_in_t *)n);
    }
}

/* ------------------------------------------------------------ connections */

static void conn_closed_cb(uv_handle_t *hd)
{
    hconn_t *c = (hconn_t *)hd;
    struct httpd *h = c->hc_h;
    *c->hc_prevp = c->hc_next;
    if (c->hc_next)
        c->hc_next->hc_prevp = c->hc_prevp;
    h->h_nconns--;
    free(c);
    if (h->h_stopping && h->h_nconns == 0)
        stop_finish(h);
}

static void accept_cb(uv_stream_t *server, int status)
{
    hlisten_t *l = server->data;
    struct httpd *h = l->hl_h;
    if (status < 0) {
        log_warn("http %s: accept: %s", l->hl_addr, uv_strerror(status));
        return;
    }
    hconn_t *c = xcalloc(1, sizeof(*c));
    c->hc_h = h;
    uv_tcp_init(&h->h_loop, &c->hc_tcp);
    c->hc_next = h->h_conns;
    if (c->hc_next)
        c->hc_next->hc_prevp = &c->hc_next;
    c->hc_prevp = &h->h_conns;
    h->h_conns = c;
    h->h_nconns++;
    if (uv_accept(server, (uv_stream_t *)&c->hc_tcp) != 0) {
        uv_close((uv_handle_t *)&c->hc_tcp, conn_closed_cb);
        return;
    }
    uv_tcp_nodelay(&c->hc_tcp, 1);
    h2o_socket_t *sock = h2o_uv_socket_create((uv_stream_t *)&c->hc_tcp, conn_closed_cb);
    h2o_accept(&l->hl_actx, sock);
}

/* ------------------------------------------------------------ thread, start, stop */

#ifdef SLUICE_SANITIZE
/* h2o keeps freed memory-pool chunks and socket buffers in per-thread
 * recycle lists (a static __thread list in libh2o's memory.c that no API
 * empties); when the HTTP thread ends, what is on them is unreachable and
 * LeakSanitizer reports it. Those caches only, by the function that fills
 * them. LeakSanitizer calls this hook at start-up. */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void)
{
    return "leak:h2o_mem_alloc_recycle\n";
}

/* ... and without the "Suppressions used" table on stderr. */
const char *__lsan_default_options(void);
const char *__lsan_default_options(void)
{
    return "print_suppressions=0";
}
#endif

static void close_any_cb(uv_handle_t *hd, void *arg)
{
    if (!uv_is_closing(hd))
        uv_close(hd, NULL);
}

static void tick_cb(uv_timer_t *t)
{
    struct httpd *h = t->data;
    if (!h->h_stopping) {
        ip_sweep(h);
        return;
    }
    if (!h->h_gave_up && clock_mono_us() > h->h_stop_at_us) {
        /* a connection h2o did not close: close its socket under it (its
         * memory is left to the process exit) so that the thread ends */
        log_warn("http: %d connection(s) still open %d ms after shutdown; closing them",
                 h->h_nconns, STOP_GRACE_MS);
        h->h_gave_up = true;
        pthread_mutex_lock(&h->h_back_lock);
        h->h_back_open = false;
        pthread_mutex_unlock(&h->h_back_lock);
        uv_walk(&h->h_loop, close_any_cb, NULL);
    }
}

/* A moment after the stop: answers already on their way out (the queue
 * had committed everything before httpd_stop) are written; then the read
 * side of every connection is shut, so that h2o sees an idle keep-alive
 * connection end, and a busy one closes after its answer. */
static void stop_conns_cb(uv_timer_t *t)
{
    struct httpd *h = t->data;
    for (hconn_t *c = h->h_conns; c; c = c->hc_next) {
        uv_os_fd_t fd;
        if (uv_fileno((uv_handle_t *)&c->hc_tcp, &fd) == 0)
            shutdown(fd, SHUT_RD);
    }
    uv_timer_start(&h->h_tick, tick_cb, 100, 100);
}

static void listener_closed_cb(uv_handle_t *hd)
{
    free(hd->data);
}

static void stop_finish(struct httpd *h)
{
    uv_timer_stop(&h->h_tick);
    uv_close((uv_handle_t *)&h->h_tick, NULL);
    uv_close((uv_handle_t *)&h->h_stop_async, NULL);
    pthread_mutex_lock(&h->h_back_lock);
    h->h_back_open = false;
    pthread_mutex_unlock(&h->h_back_lock);
    chan_close(h->h_back); /* hands what is left to back_cb: nobody to answer */
    chan_close(h->h_commit);
    h2o_context_dispose(&h->h_ctx);
}

/* Stop (HTTP thread): no new connections, no keep-alive; idle ones are
 * shut down, which h2o sees as the client going away. */
static void stop_async_cb(uv_async_t *a)
{
    struct httpd *h = a->data;
    if (h->h_stopping)
        return;
    h->h_stopping = true;
    h->h_stop_at_us = clock_mono_us() + STOP_GRACE_MS * 1000ull;
    for (int i = 0; i < h->h_nlisten; i++)
        uv_close((uv_handle_t *)&h->h_listen[i]->hl_tcp, listener_closed_cb);
    h->h_nlisten = 0;
    /* what h2o_context_request_shutdown does for HTTP/1 (no keep-alive
     * after the answer in progress), without the HTTP/2 graceful-shutdown
     * timer it would arm: we speak HTTP/1.1 only (ALPN http/1.1) */
    h->h_ctx.shutdown_requested = 1;
    if (h->h_nconns == 0) {
        stop_finish(h);
        return;
    }
    uv_timer_stop(&h->h_tick);
    uv_timer_start(&h->h_tick, stop_conns_cb, 50, 0);
}

static void thread_main(void *arg)
{
    struct httpd *h = arg;
    log_thread_name("http");
    log_buffer(&h->h_loop); /* a line per injected message: one write a loop iteration */
    uv_run(&h->h_loop, UV_RUN_DEFAULT);
    log_unbuffer(&h->h_loop);
}

static h2o_hostconf_t *host_new(struct httpd *h, const char *name, bool api)
{
    h2o_hostconf_t *host =
        h2o_config_register_host(&h->h_conf, h2o_iovec_init(name, strlen(name)), 65535);
    h2o_pathconf_t *pc = h2o_config_register_path(host, "/", 0);
    handler_t *hd = (handler_t *)h2o_create_handler(pc, sizeof(*hd));
    hd->hd_super.on_req = on_req;
    hd->hd_h = h;
    hd->hd_api = api;
    return host;
}

static int listen_on(struct httpd *h, const char *addr, bool api, char *err, size_t errlen)
{
    const char *key = api ? "http.listen" : "control.http_metrics";
    sockaddr_any_t sa;
    if (net_parse_hostport(addr, 0, &sa) != 0 || ((struct sockaddr_in *)&sa)->sin_port == 0) {
        snprintf(err, errlen, "%s: \"%s\" is not an \"ip:port\" address", key, addr);
        return SL_ECONFIG;
    }
    hlisten_t *l = xcalloc(1, sizeof(*l));
    l->hl_h = h;
    l->hl_api = api;
    snprintf(l->hl_addr, sizeof(l->hl_addr), "%s", addr);
    uv_tcp_init(&h->h_loop, &l->hl_tcp);
    l->hl_tcp.data = l;
    h->h_listen[h->h_nlisten++] = l;
    int rc = uv_tcp_bind(&l->hl_tcp, (const struct sockaddr *)&sa, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&l->hl_tcp, 128, accept_cb);
    if (rc != 0) {
        snprintf(err, errlen, "%s %s: %s", key, addr, uv_strerror(rc));
        return rc;
    }
    l->hl_hosts[0] = api ? h->h_host_api : h->h_host_metrics;
    l->hl_actx.ctx = &h->h_ctx;
    l->hl_actx.hosts = l->hl_hosts;
    l->hl_actx.ssl_ctx = api && h->h_tls ? tls_ctx_ssl(h->h_tls) : NULL;
    log_info("http listening on %s%s (%s)", addr, l->hl_actx.ssl_ctx ? " with TLS" : "",
             api ? "the HTTP API and /metrics" : "GET /metrics");
    return 0;
}

/* Undo a start that failed before the thread ran: close every handle and
 * run the loop until they are gone. */
static void start_undo(struct httpd *h)
{
    for (int i = 0; i < h->h_nlisten; i++)
        uv_close((uv_handle_t *)&h->h_listen[i]->hl_tcp, listener_closed_cb);
    uv_close((uv_handle_t *)&h->h_tick, NULL);
    uv_close((uv_handle_t *)&h->h_stop_async, NULL);
    chan_close(h->h_back);
    chan_close(h->h_commit);
    h2o_context_dispose(&h->h_ctx);
    uv_run(&h->h_loop, UV_RUN_DEFAULT);
    uv_loop_close(&h->h_loop);
    chan_close(h->h_tomain); /* the main loop frees it */
    h2o_config_dispose(&h->h_conf);
    tls_ctx_free(h->h_tls);
    pthread_mutex_destroy(&h->h_back_lock);
    free(h);
}

int httpd_start(const cfg_t *cfg, const control_env_t *env, control_t *ct, httpd_t **out, char *err,
                size_t errlen)
{
    SL_ASSERT_MAIN_THREAD();
    *out = NULL;
    bool api = cfg->c_http_listen && cfg->c_http_listen[0];
    bool met = cfg->c_ctl_http && cfg->c_ctl_http[0];
    if (!api && !met)
        return 0;
    struct httpd *h = xcalloc(1, sizeof(*h));
    h->h_env = *env;
    h->h_ct = ct;
    h->h_max_body = cfg->c_http_max_body;
    snprintf(h->h_hostname, sizeof(h->h_hostname), "%s", cfg->c_hostname);
    if (api && cfg->c_http_tls) {
        char e[512];
        h->h_tls = tls_server_ctx_new(cfg->c_tls_cert, cfg->c_tls_key, e, sizeof(e));
        if (h->h_tls == NULL) {
            snprintf(err, errlen, "http.tls: %s", e);
            free(h);
            return SL_ECONFIG;
        }
        static const h2o_iovec_t alpn[] = {{H2O_STRLIT("http/1.1")}, {NULL, 0}};
        h2o_ssl_register_alpn_protocols(tls_ctx_ssl(h->h_tls), alpn);
    }
    pthread_mutex_init(&h->h_back_lock, NULL);
    uv_loop_init(&h->h_loop);
    h2o_config_init(&h->h_conf);
    /* h2o refuses a larger body itself (a plain-text 413); below that
     * on_req answers the JSON 413 */
    h->h_conf.max_request_entity_size = cfg->c_http_max_body + ENTITY_SLACK;
    h->h_conf.http1.req_timeout = cfg->c_http_timeout * 1000;
    h->h_conf.http2.idle_timeout = cfg->c_http_timeout * 1000;
    h->h_conf.server_name = h2o_iovec_init(H2O_STRLIT("sluice"));
    /* h2o wants its hosts before the context; each listener's accept
     * context names one, so a request never reaches the other's handler */
    h->h_host_api = host_new(h, "api", true);
    h->h_host_metrics = host_new(h, "metrics", false);
    h2o_context_init(&h->h_ctx, &h->h_loop, &h->h_conf);
    uv_async_init(&h->h_loop, &h->h_stop_async, stop_async_cb);
    h->h_stop_async.data = h;
    uv_timer_init(&h->h_loop, &h->h_tick);
    h->h_tick.data = h;
    uv_timer_start(&h->h_tick, tick_cb, 10000, 10000);
    h->h_back = chan_new(&h->h_loop, back_cb, h);
    h->h_commit = chan_new(&h->h_loop, commit_cb, h);
    h->h_back_open = true;
    h->h_tomain = chan_new(env->ce_loop, tomain_cb, h);
    int rc = 0;
    if ((api && (rc = listen_on(h, cfg->c_http_listen, true, err, errlen)) != 0) ||
        (met && (rc = listen_on(h, cfg->c_ctl_http, false, err, errlen)) != 0)) {
        start_undo(h);
        return rc;
    }
    if (uv_thread_create(&h->h_thread, thread_main, h) != 0) {
        log_error("cannot start the HTTP thread");
        abort();
    }
    *out = h;
    return 0;
}

void httpd_stop(httpd_t *h)
{
    if (h == NULL)
        return;
    SL_ASSERT_MAIN_THREAD();
    /* Jobs not yet run: control_call answers "shutting down" (the control
     * is stopping) and the answers go back while the thread still runs. */
    chan_close(h->h_tomain);
    uv_async_send(&h->h_stop_async);
    uv_thread_join(&h->h_thread);
    if (uv_loop_close(&h->h_loop) != 0)
        log_warn("http: loop closed with handles open");
    for (int k = 0; k < IP_BUCKETS; k++)
        for (httpd_ip_t *e = h->h_ips[k], *n; e; e = n) {
            n = e->ip_next;
            free(e);
        }
    h2o_config_dispose(&h->h_conf);
    tls_ctx_free(h->h_tls);
    pthread_mutex_destroy(&h->h_back_lock);
    free(h);
}
