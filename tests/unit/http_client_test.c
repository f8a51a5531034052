/*
 * http_client_test.c - the HTTP client on a libuv loop
 * (core/base/http_client.c, libcurl's multi interface) against a small
 * HTTP/1.1 server on loopback run by a thread of this test: a body and
 * its Content-Type, a status that is not 200, a redirect that is not
 * followed, the body bound (by Content-Length and while it streams), the
 * total timeout against a server that never answers, an address pinned by
 * the caller (no DNS), https only unless told otherwise, a cancelled
 * request whose callback never runs, and a client freed with a request in
 * flight: every case ends with uv_loop_close() == 0.
 */
#include "core/base/base.h"

#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

/* ------------------------------------------------------------ the server */

typedef struct server {
    int fd;
    int port;
    volatile int stop;
    pthread_t th;
    int requests;
} server_t;

static void reply(int c, const char *path)
{
    char big[200];
    memset(big, 'x', sizeof(big));
    buf_t b;
    buf_init(&b, 512);
    if (strcmp(path, "/ok") == 0) {
        buf_append_str(&b, "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
                           "Content-Length: 5\r\nConnection: close\r\n\r\nhello");
    } else if (strcmp(path, "/missing") == 0) {
        buf_append_str(&b, "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\n"
                           "Content-Length: 3\r\nConnection: close\r\n\r\nnah");
    } else if (strcmp(path, "/moved") == 0) {
        buf_append_str(&b, "HTTP/1.1 301 Moved Permanently\r\nLocation: /ok\r\n"
                           "Content-Length: 0\r\nConnection: close\r\n\r\n");
    } else if (strcmp(path, "/big") == 0) {
        buf_printf(&b,
                   "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n\r\n",
                   sizeof(big));
        buf_append(&b, big, sizeof(big));
    } else if (strcmp(path, "/bigstream") == 0) { /* no length: the bound applies as it comes */
        buf_append_str(&b, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                           "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
        for (int i = 0; i < 4; i++) {
            buf_printf(&b, "%zx\r\n", sizeof(big));
            buf_append(&b, big, sizeof(big));
            buf_append_str(&b, "\r\n");
        }
        buf_append_str(&b, "0\r\n\r\n");
    } else { /* "/silent": never a word */
        buf_free(&b);
        return;
    }
    ssize_t w = write(c, b.b_data, b.b_len);
    (void)w;
    buf_free(&b);
}

static void *server_main(void *arg)
{
    server_t *s = arg;
    int held[8], nheld = 0;
    for (int rounds = 0; rounds < 3000 && !s->stop; rounds++) { /* bounded: 30 s */
        struct pollfd p = {.fd = s->fd, .events = POLLIN};
        if (poll(&p, 1, 10) <= 0)
            continue;
        int c = accept(s->fd, NULL, NULL);
        if (c < 0)
            continue;
        char req[4096] = "";
        size_t n = 0;
        while (n < sizeof(req) - 1 && strstr(req, "\r\n\r\n") == NULL) {
            struct pollfd q = {.fd = c, .events = POLLIN};
            if (poll(&q, 1, 2000) <= 0)
                break;
            ssize_t r = read(c, req + n, sizeof(req) - 1 - n);
            if (r <= 0)
                break;
            n += (size_t)r;
            req[n] = '\0';
        }
        req[n] = '\0';
        char path[256] = "";
        sscanf(req, "GET %255s", path);
        s->requests++;
        reply(c, path);
        if (strcmp(path, "/silent") == 0 && nheld < 8)
            held[nheld++] = c; /* kept open, silent, until the test ends */
        else
            close(c);
    }
    for (int i = 0; i < nheld; i++)
        close(held[i]);
    return NULL;
}

static void server_start(server_t *s)
{
    memset(s, 0, sizeof(*s));
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int one = 1;
    setsockopt(s->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    assert_int_equal(bind(s->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(s->fd, 16), 0);
    socklen_t len = sizeof(a);
    getsockname(s->fd, (struct sockaddr *)&a, &len);
    s->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&s->th, NULL, server_main, s), 0);
}

static void server_stop(server_t *s)
{
    s->stop = 1;
    pthread_join(s->th, NULL);
    close(s->fd);
}

/* ------------------------------------------------------------ the client */

typedef struct got {
    int calls;
    int status;
    char ct[128];
    char body[1024];
    size_t len;
    char error[512];
} got_t;

static void done_cb(void *arg, const http_response_t *r)
{
    got_t *g = arg;
    g->calls++;
    g->status = r->hr_status;
    snprintf(g->ct, sizeof(g->ct), "%s", r->hr_content_type ? r->hr_content_type : "");
    g->len = r->hr_len;
    snprintf(g->body, sizeof(g->body), "%s", r->hr_body);
    snprintf(g->error, sizeof(g->error), "%s", r->hr_error ? r->hr_error : "");
}

/* Run the loop until *calls reaches want, at most ms milliseconds. */
static void run_until(uv_loop_t *loop, const int *calls, int want, int ms)
{
    uint64_t end = clock_mono_us() + (uint64_t)ms * 1000;
    while (*calls < want && clock_mono_us() < end)
        uv_run(loop, UV_RUN_NOWAIT), usleep(1000);
}

static void finish(uv_loop_t *loop, http_client_t *c)
{
    http_client_free(c);
    for (int i = 0; i < 100 && uv_loop_alive(loop); i++)
        uv_run(loop, UV_RUN_NOWAIT);
    assert_int_equal(uv_loop_close(loop), 0);
}

static got_t get(server_t *s, const char *path, size_t max, uint64_t timeout_ms)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    http_client_t *c = NULL;
    char err[256];
    assert_int_equal(http_client_new(&loop, &c, err, sizeof(err)), 0);
    char url[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", s->port, path);
    http_get_opts_t o = {.hg_url = url,
                         .hg_max_body = max,
                         .hg_timeout_ms = timeout_ms,
                         .hg_accept = "text/plain",
                         .hg_allow_http = true};
    got_t g;
    memset(&g, 0, sizeof(g));
    assert_non_null(http_get(c, &o, done_cb, &g));
    assert_int_equal(g.calls, 0); /* never inside http_get */
    run_until(&loop, &g.calls, 1, 10000);
    assert_int_equal(g.calls, 1);
    finish(&loop, c);
    return g;
}

static void test_responses(void **state)
{
    (void)state;
    server_t s;
    server_start(&s);
    got_t g = get(&s, "/ok", 1024, 5000);
    assert_string_equal(g.error, "");
    assert_int_equal(g.status, 200);
    assert_string_equal(g.ct, "text/plain; charset=utf-8");
    assert_string_equal(g.body, "hello");
    assert_int_equal(g.len, 5);
    g = get(&s, "/missing", 1024, 5000);
    assert_string_equal(g.error, ""); /* a complete response, for the caller to judge */
    assert_int_equal(g.status, 404);
    g = get(&s, "/moved", 1024, 5000);
    assert_int_equal(g.status, 301); /* not followed */
    assert_string_equal(g.body, "");
    server_stop(&s);
}

static void test_limits(void **state)
{
    (void)state;
    server_t s;
    server_start(&s);
    got_t g = get(&s, "/big", 100, 5000);
    assert_string_equal(g.error, "response body larger than 100 bytes");
    g = get(&s, "/bigstream", 500, 5000);
    assert_string_equal(g.error, "response body larger than 500 bytes");
    g = get(&s, "/bigstream", 800, 5000); /* exactly 800: fits */
    assert_string_equal(g.error, "");
    assert_int_equal(g.len, 800);
    uint64_t t0 = clock_mono_us();
    g = get(&s, "/silent", 100, 300);
    assert_string_equal(g.error, "timed out");
    assert_true(clock_mono_us() - t0 >= 280000);
    server_stop(&s);
}

/* The caller's resolver found the address: curl asks no DNS for the name,
 * and still sends it (Host). Plain http only when asked for. */
static void test_pinned_and_https_only(void **state)
{
    (void)state;
    server_t s;
    server_start(&s);
    uv_loop_t loop;
    uv_loop_init(&loop);
    http_client_t *c = NULL;
    char err[256];
    assert_int_equal(http_client_new(&loop, &c, err, sizeof(err)), 0);
    sockaddr_any_t sa;
    assert_int_equal(net_parse_hostport("127.0.0.1", s.port, &sa), 0);
    char url[256];
    snprintf(url, sizeof(url), "http://policy.invalid:%d/ok", s.port);
    http_get_opts_t o = {.hg_url = url,
                         .hg_host = "policy.invalid",
                         .hg_port = s.port,
                         .hg_addrs = &sa,
                         .hg_naddrs = 1,
                         .hg_timeout_ms = 5000,
                         .hg_allow_http = true};
    got_t g;
    memset(&g, 0, sizeof(g));
    assert_non_null(http_get(c, &o, done_cb, &g));
    run_until(&loop, &g.calls, 1, 10000);
    assert_string_equal(g.error, "");
    assert_string_equal(g.body, "hello");
    /* https only by default: an http:// URL is refused before any byte */
    int before = s.requests;
    o.hg_allow_http = false;
    memset(&g, 0, sizeof(g));
    assert_non_null(http_get(c, &o, done_cb, &g));
    run_until(&loop, &g.calls, 1, 10000);
    assert_int_equal(g.calls, 1);
    assert_string_not_equal(g.error, "");
    assert_int_equal(s.requests, before);
    finish(&loop, c);
    server_stop(&s);
}

/* A cancelled request never calls back; a client freed with one in flight
 * leaves a loop that closes. */
static void test_cancel_and_free(void **state)
{
    (void)state;
    server_t s;
    server_start(&s);
    uv_loop_t loop;
    uv_loop_init(&loop);
    http_client_t *c = NULL;
    char err[256];
    assert_int_equal(http_client_new(&loop, &c, err, sizeof(err)), 0);
    char url[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/silent", s.port);
    http_get_opts_t o = {.hg_url = url, .hg_timeout_ms = 5000, .hg_allow_http = true};
    got_t a, b;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    http_request_t *ra = http_get(c, &o, done_cb, &a);
    assert_non_null(ra);
    assert_non_null(http_get(c, &o, done_cb, &b));
    int none = 0;
    run_until(&loop, &none, 1, 300); /* both connected and waiting */
    http_request_cancel(ra);
    run_until(&loop, &none, 1, 100);
    assert_int_equal(a.calls, 0);
    assert_int_equal(b.calls, 0);
    finish(&loop, c); /* b still in flight: dropped, no callback */
    assert_int_equal(b.calls, 0);
    server_stop(&s);
}

int main(void)
{
    log_init(LOG_WARN, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_responses),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_pinned_and_https_only),
        cmocka_unit_test(test_cancel_and_free),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
