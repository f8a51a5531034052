/*
 * delivery_dns_test.c - core/base/dns.c against a real UDP DNS responder
 * on 127.0.0.1 (a thread in this test answering from a small table):
 * MX order, null MX, NXDOMAIN, NODATA, SERVFAIL, A/AAAA, a dead server,
 * cancellation at free, and uv_loop_close() == 0 afterwards.
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

/* ------------------------------------------------------------ responder */

static int resp_fd = -1;
static int resp_port;
static volatile int resp_stop;
static pthread_t resp_tid;

static size_t put_name(uint8_t *p, const char *name)
{
    size_t n = 0;
    while (*name) {
        const char *dot = strchr(name, '.');
        size_t l = dot ? (size_t)(dot - name) : strlen(name);
        p[n++] = (uint8_t)l;
        memcpy(p + n, name, l);
        n += l;
        name += l;
        if (*name == '.')
            name++;
    }
    p[n++] = 0;
    return n;
}

static size_t put_rr_head(uint8_t *p, int type, uint32_t ttl)
{
    p[0] = 0xc0; /* pointer to the question name */
    p[1] = 12;
    p[2] = 0;
    p[3] = (uint8_t)type;
    p[4] = 0;
    p[5] = 1;
    p[6] = (uint8_t)(ttl >> 24);
    p[7] = (uint8_t)(ttl >> 16);
    p[8] = (uint8_t)(ttl >> 8);
    p[9] = (uint8_t)ttl;
    return 10; /* rdlength follows */
}

static size_t put_mx(uint8_t *p, uint16_t pref, const char *host, uint32_t ttl)
{
    size_t n = put_rr_head(p, 15, ttl);
    uint8_t rd[300];
    rd[0] = (uint8_t)(pref >> 8);
    rd[1] = (uint8_t)pref;
    size_t rl = 2 + put_name(rd + 2, host);
    p[n++] = (uint8_t)(rl >> 8);
    p[n++] = (uint8_t)rl;
    memcpy(p + n, rd, rl);
    return n + rl;
}

static size_t put_addr(uint8_t *p, int type, const char *ip, uint32_t ttl)
{
    size_t n = put_rr_head(p, type, ttl);
    size_t l = type == 1 ? 4 : 16;
    p[n++] = 0;
    p[n++] = (uint8_t)l;
    inet_pton(type == 1 ? AF_INET : AF_INET6, ip, p + n);
    return n + l;
}

/* Build the answer for (name, type) into out; returns its length. */
static size_t answer(const uint8_t *q, size_t qlen, uint8_t *out)
{
    char name[256];
    size_t i = 12, k = 0;
    while (i < qlen && q[i] != 0) {
        size_t l = q[i++];
        if (k)
            name[k++] = '.';
        for (size_t j = 0; j < l && i < qlen && k < 250; j++)
            name[k++] = (char)(q[i++] | 0x20);
    }
    name[k] = '\0';
    size_t qend = i + 5; /* zero label + type + class */
    int type = (q[i + 1] << 8) | q[i + 2];
    memcpy(out, q, qend);
    out[2] = 0x84 | (q[2] & 0x01); /* QR, AA, RD copied */
    out[3] = 0x80;                 /* RA, rcode 0 */
    out[6] = out[7] = out[8] = out[9] = out[10] = out[11] = 0;
    size_t n = qend;
    int an = 0;
    if (strcmp(name, "fail.test") == 0) {
        out[3] |= 2; /* SERVFAIL */
    } else if (strcmp(name, "nx.test") == 0 || strcmp(name, "gone.test") == 0) {
        out[3] |= 3; /* NXDOMAIN */
    } else if (strcmp(name, "mx.test") == 0 && type == 15) {
        n += put_mx(out + n, 20, "b1.mx.test", 300);
        n += put_mx(out + n, 5, "first.mx.test", 100);
        n += put_mx(out + n, 20, "b2.mx.test", 300);
        an = 3;
    } else if (strcmp(name, "null.test") == 0 && type == 15) {
        n += put_mx(out + n, 0, "", 3600);
        an = 1;
    } else if (strcmp(name, "host.test") == 0 && type == 1) {
        n += put_addr(out + n, 1, "127.0.0.5", 120);
        an = 1;
    } else if (strcmp(name, "host.test") == 0 && type == 28) {
        n += put_addr(out + n, 28, "::1", 120);
        an = 1;
    }
    /* anything else: NOERROR, no answer (NODATA) */
    out[7] = (uint8_t)an;
    return n;
}

static void *resp_main(void *arg)
{
    (void)arg;
    uint8_t q[512], out[1024];
    while (!resp_stop) {
        struct pollfd pfd = {resp_fd, POLLIN, 0};
        if (poll(&pfd, 1, 50) <= 0)
            continue;
        struct sockaddr_storage from;
        socklen_t fl = sizeof(from);
        ssize_t n = recvfrom(resp_fd, q, sizeof(q), 0, (struct sockaddr *)&from, &fl);
        if (n < 17)
            continue;
        size_t l = answer(q, (size_t)n, out);
        sendto(resp_fd, out, l, 0, (struct sockaddr *)&from, fl);
    }
    return NULL;
}

static int resp_setup(void **state)
{
    (void)state;
    resp_fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(resp_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    socklen_t l = sizeof(sa);
    getsockname(resp_fd, (struct sockaddr *)&sa, &l);
    resp_port = ntohs(sa.sin_port);
    resp_stop = 0;
    pthread_create(&resp_tid, NULL, resp_main, NULL);
    return 0;
}

static int resp_teardown(void **state)
{
    (void)state;
    resp_stop = 1;
    pthread_join(resp_tid, NULL);
    close(resp_fd);
    return 0;
}

/* ------------------------------------------------------------ client side */

typedef struct {
    int done;
    dns_status_t st;
    int n;
    char hosts[8][64];
    int prefs[8];
    char addrs[8][64];
    int ports[8];
    uint32_t ttl;
} result_t;

static void mx_cb(void *arg, dns_status_t st, bool secure, const dns_mx_t *mx, int n, uint32_t ttl)
{
    result_t *r = arg;
    UNUSED(secure);
    r->done++;
    r->st = st;
    r->n = n;
    r->ttl = ttl;
    for (int i = 0; i < n && i < 8; i++) {
        snprintf(r->hosts[i], sizeof(r->hosts[i]), "%s", mx[i].dm_host);
        r->prefs[i] = mx[i].dm_pref;
    }
    if (st == DNS_OK)
        r->prefs[7] = dns_mx_is_null(mx, n);
}

static void addr_cb(void *arg, dns_status_t st, const sockaddr_any_t *a, int n, uint32_t ttl)
{
    result_t *r = arg;
    r->done++;
    r->st = st;
    r->n = n;
    r->ttl = ttl;
    for (int i = 0; i < n && i < 8; i++) {
        net_ntop((const struct sockaddr *)&a[i], r->addrs[i], sizeof(r->addrs[i]));
        r->ports[i] =
            ntohs(a[i].ss_family == AF_INET ? ((const struct sockaddr_in *)&a[i])->sin_port
                                            : ((const struct sockaddr_in6 *)&a[i])->sin6_port);
    }
}

static dns_resolver_t *new_resolver(uv_loop_t *loop, int port)
{
    char servers[64], err[256];
    snprintf(servers, sizeof(servers), "127.0.0.1:%d", port);
    dns_resolver_t *r = NULL;
    int rc = dns_resolver_new(loop, servers, 300, 1, &r, err, sizeof(err));
    if (rc != 0)
        fail_msg("dns_resolver_new: %s", err);
    return r;
}

static void run_until(uv_loop_t *loop, result_t *res, int nres)
{
    uint64_t deadline = clock_mono_us() + 5000000;
    for (;;) {
        int all = 1;
        for (int i = 0; i < nres; i++)
            if (!res[i].done)
                all = 0;
        if (all || clock_mono_us() > deadline)
            break;
        uv_run(loop, UV_RUN_ONCE);
    }
}

static void finish(uv_loop_t *loop, dns_resolver_t *r)
{
    dns_resolver_free(r);
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(loop), 0);
}

static void test_mx_order_and_ttl(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    dns_resolver_t *r = new_resolver(&loop, resp_port);
    result_t res = {0};
    dns_query_mx(r, "mx.test", mx_cb, &res);
    assert_int_equal(res.done, 0); /* never answered inside the call */
    run_until(&loop, &res, 1);
    assert_int_equal(res.done, 1);
    assert_int_equal(res.st, DNS_OK);
    assert_int_equal(res.n, 3);
    assert_string_equal(res.hosts[0], "first.mx.test");
    assert_int_equal(res.prefs[0], 5);
    assert_int_equal(res.prefs[1], 20);
    assert_int_equal(res.prefs[2], 20);
    /* the two preference-20 hosts, in either order */
    assert_true(
        (strcmp(res.hosts[1], "b1.mx.test") == 0 && strcmp(res.hosts[2], "b2.mx.test") == 0) ||
        (strcmp(res.hosts[1], "b2.mx.test") == 0 && strcmp(res.hosts[2], "b1.mx.test") == 0));
    assert_int_equal(res.ttl, 100);
    assert_int_equal(res.prefs[7], 0); /* not a null MX */
    finish(&loop, r);
}

static void test_negative_answers(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    dns_resolver_t *r = new_resolver(&loop, resp_port);
    result_t res[4];
    memset(res, 0, sizeof(res));
    dns_query_mx(r, "null.test", mx_cb, &res[0]);
    dns_query_mx(r, "nx.test", mx_cb, &res[1]);
    dns_query_mx(r, "nodata.test", mx_cb, &res[2]);
    dns_query_mx(r, "fail.test", mx_cb, &res[3]);
    run_until(&loop, res, 4);
    assert_int_equal(res[0].st, DNS_OK);
    assert_int_equal(res[0].n, 1);
    assert_string_equal(res[0].hosts[0], "");
    assert_int_equal(res[0].prefs[7], 1); /* null MX */
    assert_int_equal(res[1].st, DNS_NXDOMAIN);
    assert_int_equal(res[2].st, DNS_NODATA);
    assert_int_equal(res[3].st, DNS_TEMPFAIL);
    finish(&loop, r);
}

static void test_addresses(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    dns_resolver_t *r = new_resolver(&loop, resp_port);
    result_t res[3];
    memset(res, 0, sizeof(res));
    dns_query_addr(r, "host.test", 2525, addr_cb, &res[0]);
    dns_query_addr(r, "gone.test", 25, addr_cb, &res[1]);
    dns_query_addr(r, "127.0.0.9", 26, addr_cb, &res[2]); /* numeric: answered at once */
    assert_int_equal(res[2].done, 0);                     /* ... but not inside the call */
    run_until(&loop, res, 3);
    assert_int_equal(res[0].st, DNS_OK);
    assert_int_equal(res[0].n, 2);
    assert_string_equal(res[0].addrs[0], "127.0.0.5"); /* IPv4 first */
    assert_string_equal(res[0].addrs[1], "::1");
    assert_int_equal(res[0].ports[0], 2525);
    assert_int_equal(res[0].ports[1], 2525);
    assert_true(res[0].ttl <= 120);
    assert_true(res[1].st == DNS_NXDOMAIN || res[1].st == DNS_NODATA);
    assert_int_equal(res[2].st, DNS_OK);
    assert_string_equal(res[2].addrs[0], "127.0.0.9");
    assert_int_equal(res[2].ports[0], 26);
    finish(&loop, r);
}

static void test_dead_server_tempfails(void **state)
{
    (void)state;
    /* a port where nothing listens: refused or timed out, never a bounce */
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    socklen_t l = sizeof(sa);
    getsockname(fd, (struct sockaddr *)&sa, &l);
    int port = ntohs(sa.sin_port);
    close(fd);
    uv_loop_t loop;
    uv_loop_init(&loop);
    dns_resolver_t *r = new_resolver(&loop, port);
    result_t res = {0};
    dns_query_mx(r, "mx.test", mx_cb, &res);
    run_until(&loop, &res, 1);
    assert_int_equal(res.done, 1);
    assert_int_equal(res.st, DNS_TEMPFAIL);
    finish(&loop, r);
}

static void test_free_cancels(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    dns_resolver_t *r = new_resolver(&loop, resp_port);
    result_t res[2];
    memset(res, 0, sizeof(res));
    dns_query_mx(r, "mx.test", mx_cb, &res[0]);
    dns_query_addr(r, "127.0.0.1", 25, addr_cb, &res[1]); /* parked answer */
    dns_resolver_free(r);
    assert_int_equal(res[0].done, 1);
    assert_int_equal(res[0].st, DNS_CANCELLED);
    assert_int_equal(res[1].done, 1);
    assert_int_equal(res[1].st, DNS_CANCELLED);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mx_order_and_ttl), cmocka_unit_test(test_negative_answers),
        cmocka_unit_test(test_addresses),        cmocka_unit_test(test_dead_server_tempfails),
        cmocka_unit_test(test_free_cancels),
    };
    return cmocka_run_group_tests(tests, resp_setup, resp_teardown);
}
