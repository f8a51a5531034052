/*
 * http.c - the optional HTTP listener for Prometheus scrapes
 * (control.http_metrics = "127.0.0.1:9090"; off by default).
 *
 *   http_metrics_start / http_metrics_stop
 *
 * A deliberately small HTTP/1.1 server on the main loop: it reads one
 * request head (at most HTTP_MAX_HEAD bytes, within HTTP_TIMEOUT_MS),
 * answers GET (or HEAD) /metrics with metrics_render() (OpenMetrics 1.0
 * when the Accept header names it, else the text format 0.0.4), 404 for any other
 * path, 405 for any other method, 400 for a malformed head, and closes the
 * connection after the answer (Connection: close; no keep-alive, no
 * request bodies, no chunked encoding). At most HTTP_MAX_CONNS
 * connections at once. There is no authentication: bind it to loopback or
 * a management network.
 *
 * Lifetime: the listener, a sweep timer and every connection each hold a
 * reference on the http_metrics_t; the last close callback frees it.
 * Thread: main thread only.
 */
#include "core/server/ops_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HTTP_MAX_HEAD 8192
#define HTTP_MAX_CONNS 64
#define HTTP_TIMEOUT_MS 10000

typedef struct http_conn http_conn_t;

struct http_metrics {
    uv_tcp_t hm_server;
    uv_timer_t hm_sweep;
    control_env_t hm_env;
    http_conn_t *hm_conns;
    int hm_nconns;
    int hm_refs;
    bool hm_stopping;
    char hm_addr[128];
};

struct http_conn {
    uv_tcp_t hc_tcp;
    http_metrics_t *hc_hm;
    http_conn_t *hc_next;
    http_conn_t **hc_prevp;
    uint64_t hc_start_us;
    size_t hc_len;
    bool hc_closing;
    bool hc_answered;
    uv_write_t hc_wreq;
    buf_t hc_out;
    char hc_in[HTTP_MAX_HEAD + 1]; /* + NUL */
};

static void hm_unref(http_metrics_t *hm);
static void conn_close(http_conn_t *c);
static void conn_answer(http_conn_t *c, int status, const char *reason, const char *ctype,
                        const buf_t *body, bool head_only);
static void conn_request(http_conn_t *c);
static bool http_accepts_openmetrics(const char *head);

/* ------------------------------------------------------------ connections */

static void conn_closed_cb(uv_handle_t *h)
{
    http_conn_t *c = h->data;
    http_metrics_t *hm = c->hc_hm;
    *c->hc_prevp = c->hc_next;
    if (c->hc_next)
        c->hc_next->hc_prevp = c->hc_prevp;
    hm->hm_nconns--;
    buf_free(&c->hc_out);
    free(c);
    hm_unref(hm);
}

static void conn_close(http_conn_t *c)
{
    if (c->hc_closing)
        return;
    c->hc_closing = true;
    uv_close((uv_handle_t *)&c->hc_tcp, conn_closed_cb);
}

static void conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    http_conn_t *c = h->data;
    b->base = c->hc_in + c->hc_len;
    b->len = HTTP_MAX_HEAD - c->hc_len;
}

static void conn_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    SL_ASSERT_MAIN_THREAD();
    http_conn_t *c = s->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (c->hc_answered)
        return; /* a client sending more after its request: ignored */
    c->hc_len += (size_t)nread;
    c->hc_in[c->hc_len] = '\0';
    if (memmem(c->hc_in, c->hc_len, "\r\n\r\n", 4) != NULL ||
        memmem(c->hc_in, c->hc_len, "\n\n", 2) != NULL) {
        conn_request(c);
    } else if (c->hc_len == HTTP_MAX_HEAD) {
        conn_answer(c, 431, "Request Header Fields Too Large", "text/plain", NULL, false);
    }
}

static void conn_write_cb(uv_write_t *req, int status)
{
    http_conn_t *c = req->data;
    conn_close(c);
}

/* Write the answer, then close (Connection: close). */
static void conn_answer(http_conn_t *c, int status, const char *reason, const char *ctype,
                        const buf_t *body, bool head_only)
{
    if (c->hc_answered || c->hc_closing)
        return;
    c->hc_answered = true;
    uv_read_stop((uv_stream_t *)&c->hc_tcp);
    char msg[64];
    size_t blen =
        body ? body->b_len : (size_t)snprintf(msg, sizeof(msg), "%d %s\n", status, reason);
    buf_printf(&c->hc_out,
               "HTTP/1.1 %d %s\r\n"
               "Content-Type: %s\r\n"
               "Content-Length: %zu\r\n"
               "Connection: close\r\n"
               "%s"
               "\r\n",
               status, reason, ctype, blen, status == 405 ? "Allow: GET, HEAD\r\n" : "");
    if (!head_only) {
        if (body)
            buf_append(&c->hc_out, body->b_data, body->b_len);
        else
            buf_append(&c->hc_out, msg, blen);
    }
    uv_buf_t ub = uv_buf_init(c->hc_out.b_data, (unsigned)c->hc_out.b_len);
    c->hc_wreq.data = c;
    if (uv_write(&c->hc_wreq, (uv_stream_t *)&c->hc_tcp, &ub, 1, conn_write_cb) != 0)
        conn_close(c);
}

/* Does the request head (NUL-terminated) have an Accept header naming
 * application/openmetrics-text? */
static bool http_accepts_openmetrics(const char *head)
{
    for (const char *l = strchr(head, '\n'); l != NULL; l = strchr(l, '\n')) {
        l++;
        size_t n = strcspn(l, "\r\n");
        if (n > 7 && strncasecmp(l, "accept:", 7) == 0 &&
            memmem(l, n, "application/openmetrics-text", 28) != NULL)
            return true;
    }
    return false;
}

/* One request head is in hc_in: "METHOD SP target SP HTTP/1.x". */
static void conn_request(http_conn_t *c)
{
    size_t ll = strcspn(c->hc_in, "\r\n");
    char line[1024];
    if (ll >= sizeof(line) || ll >= c->hc_len) {
        conn_answer(c, 400, "Bad Request", "text/plain", NULL, false);
        return;
    }
    memcpy(line, c->hc_in, ll);
    line[ll] = '\0';
    char *sp1 = strchr(line, ' ');
    char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    if (sp1 == NULL || sp2 == NULL || strncmp(sp2 + 1, "HTTP/1.", 7) != 0) {
        conn_answer(c, 400, "Bad Request", "text/plain", NULL, false);
        return;
    }
    *sp1 = '\0';
    *sp2 = '\0';
    const char *method = line, *target = sp1 + 1;
    bool head = strcmp(method, "HEAD") == 0;
    if (strcmp(method, "GET") != 0 && !head) {
        conn_answer(c, 405, "Method Not Allowed", "text/plain", NULL, false);
        return;
    }
    size_t pl = strcspn(target, "?#");
    if (pl != 8 || strncmp(target, "/metrics", 8) != 0) {
        conn_answer(c, 404, "Not Found", "text/plain", NULL, head);
        return;
    }
    /* OpenMetrics when the scraper asks for it (Prometheus sends
     * "Accept: application/openmetrics-text;version=1.0.0,...;q=0.5,
     * text/plain;version=0.0.4;q=0.4"), else the text format */
    bool om = http_accepts_openmetrics(c->hc_in);
    buf_t body;
    buf_init(&body, 8192);
    metrics_render(&c->hc_hm->hm_env, &body, om);
    conn_answer(c, 200, "OK",
                om ? "application/openmetrics-text; version=1.0.0; charset=utf-8"
                   : "text/plain; version=0.0.4; charset=utf-8",
                &body, head);
    buf_free(&body);
}

static void accept_cb(uv_stream_t *server, int status)
{
    SL_ASSERT_MAIN_THREAD();
    http_metrics_t *hm = server->data;
    if (status < 0) {
        log_warn("http_metrics %s: accept: %s", hm->hm_addr, uv_strerror(status));
        return;
    }
    http_conn_t *c = xcalloc(1, sizeof(*c));
    c->hc_hm = hm;
    c->hc_start_us = clock_mono_us();
    buf_init(&c->hc_out, 0);
    uv_tcp_init(hm->hm_env.ce_loop, &c->hc_tcp);
    c->hc_tcp.data = c;
    c->hc_next = hm->hm_conns;
    if (c->hc_next)
        c->hc_next->hc_prevp = &c->hc_next;
    c->hc_prevp = &hm->hm_conns;
    hm->hm_conns = c;
    hm->hm_nconns++;
    hm->hm_refs++;
    if (uv_accept(server, (uv_stream_t *)&c->hc_tcp) != 0) {
        conn_close(c);
        return;
    }
    if (hm->hm_nconns > HTTP_MAX_CONNS) {
        conn_answer(c, 503, "Service Unavailable", "text/plain", NULL, false);
        return;
    }
    if (uv_read_start((uv_stream_t *)&c->hc_tcp, conn_alloc_cb, conn_read_cb) != 0)
        conn_close(c);
}

/* Close connections that did not send a request head in time. */
static void sweep_cb(uv_timer_t *t)
{
    SL_ASSERT_MAIN_THREAD();
    http_metrics_t *hm = t->data;
    uint64_t now = clock_mono_us();
    for (http_conn_t *c = hm->hm_conns; c; c = c->hc_next)
        if (!c->hc_closing && now - c->hc_start_us > HTTP_TIMEOUT_MS * 1000ull)
            conn_close(c);
}

/* ------------------------------------------------------------ start/stop */

static void hm_unref(http_metrics_t *hm)
{
    if (--hm->hm_refs == 0)
        free(hm);
}

static void hm_closed_cb(uv_handle_t *h)
{
    hm_unref(h->data);
}

int http_metrics_start(const char *addr, const control_env_t *env, http_metrics_t **out, char *err,
                       size_t errlen)
{
    SL_ASSERT_MAIN_THREAD();
    sockaddr_any_t sa;
    if (net_parse_hostport(addr, 0, &sa) != 0 ||
        ((struct sockaddr_in *)&sa)->sin_port == 0) { /* same offset for v6 */
        snprintf(err, errlen, "control.http_metrics: \"%s\" is not an \"ip:port\" address", addr);
        return SL_ECONFIG;
    }
    http_metrics_t *hm = xcalloc(1, sizeof(*hm));
    hm->hm_env = *env;
    snprintf(hm->hm_addr, sizeof(hm->hm_addr), "%s", addr);
    uv_tcp_init(env->ce_loop, &hm->hm_server);
    hm->hm_server.data = hm;
    hm->hm_refs = 1;
    int rc = uv_tcp_bind(&hm->hm_server, (const struct sockaddr *)&sa, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&hm->hm_server, 64, accept_cb);
    if (rc != 0) {
        snprintf(err, errlen, "control.http_metrics %s: %s", addr, uv_strerror(rc));
        uv_close((uv_handle_t *)&hm->hm_server, hm_closed_cb);
        return rc;
    }
    uv_timer_init(env->ce_loop, &hm->hm_sweep);
    hm->hm_sweep.data = hm;
    hm->hm_refs++;
    uv_timer_start(&hm->hm_sweep, sweep_cb, 1000, 1000);
    uv_unref((uv_handle_t *)&hm->hm_sweep); /* never keeps the loop alive by itself */
    log_info("http metrics listening on %s (GET /metrics)", addr);
    *out = hm;
    return 0;
}

void http_metrics_stop(http_metrics_t *hm)
{
    SL_ASSERT_MAIN_THREAD();
    if (hm == NULL || hm->hm_stopping)
        return;
    hm->hm_stopping = true;
    for (http_conn_t *c = hm->hm_conns; c; c = c->hc_next)
        conn_close(c);
    uv_timer_stop(&hm->hm_sweep);
    uv_close((uv_handle_t *)&hm->hm_sweep, hm_closed_cb);
    uv_close((uv_handle_t *)&hm->hm_server, hm_closed_cb);
}
