/*
 * tls_test.c - core/base/tls.c end to end in memory: a self-signed pair in
 * a temporary directory, a server and a client tls_conn_t pumping records
 * to each other, data both ways, verification, session resumption.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/base/base.h"

typedef struct fixture {
    char dir[64];
    char cert[128];
    char key[128];
    tls_ctx_t *sctx;
    tls_ctx_t *cctx;
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/sluice-tls-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    /* a nested directory that does not exist yet: created by the generator */
    snprintf(f->cert, sizeof(f->cert), "%s/a/b/cert.pem", f->dir);
    snprintf(f->key, sizeof(f->key), "%s/a/b/key.pem", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    tls_ctx_free(f->sctx);
    tls_ctx_free(f->cctx);
    unlink(f->cert);
    unlink(f->key);
    char p[160];
    snprintf(p, sizeof(p), "%s/a/b", f->dir);
    rmdir(p);
    snprintf(p, sizeof(p), "%s/a", f->dir);
    rmdir(p);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* Move records between the two ends until neither has anything to say.
 * Returns the number of rounds, or -1 on a handshake failure. */
static int pump(tls_conn_t *c, tls_conn_t *s, bool handshake)
{
    buf_t b;
    buf_init(&b, 0);
    int rounds = 0;
    for (; rounds < 20; rounds++) {
        int hc = 1, hs = 1;
        if (handshake) {
            hc = tls_handshake(c);
            hs = tls_handshake(s);
            if (hc < 0 || hs < 0) {
                buf_free(&b);
                return -1;
            }
        }
        size_t moved = 0;
        buf_reset(&b);
        moved += tls_pending_out(c, &b);
        if (b.b_len)
            assert_int_equal(tls_feed(s, b.b_data, b.b_len), 0);
        buf_reset(&b);
        moved += tls_pending_out(s, &b);
        if (b.b_len)
            assert_int_equal(tls_feed(c, b.b_data, b.b_len), 0);
        if (moved == 0 && hc == 1 && hs == 1)
            break;
    }
    buf_free(&b);
    return rounds;
}

static void read_all(tls_conn_t *t, char *dst, size_t cap, size_t *len)
{
    *len = 0;
    for (;;) {
        int n = tls_read(t, dst + *len, cap - *len);
        if (n <= 0)
            break;
        *len += (size_t)n;
    }
}

static void test_selfsigned(void **state)
{
    fixture_t *f = *state;
    char err[256] = "";
    assert_int_equal(tls_selfsigned_create(f->cert, f->key, "mx.test.example", err, sizeof(err)),
                     0);
    struct stat st;
    assert_int_equal(stat(f->key, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(f->cert, &st), 0);
    f->sctx = tls_server_ctx_new(f->cert, f->key, err, sizeof(err));
    assert_non_null(f->sctx);

    /* a missing file is a clear error */
    char bad[160];
    snprintf(bad, sizeof(bad), "%s/nope.pem", f->dir);
    tls_ctx_t *x = tls_server_ctx_new(bad, f->key, err, sizeof(err));
    assert_null(x);
    assert_non_null(strstr(err, "nope.pem"));
}

static void test_handshake_data_resume(void **state)
{
    fixture_t *f = *state;
    char err[256] = "";
    if (f->sctx == NULL) {
        assert_int_equal(
            tls_selfsigned_create(f->cert, f->key, "mx.test.example", err, sizeof(err)), 0);
        f->sctx = tls_server_ctx_new(f->cert, f->key, err, sizeof(err));
    }
    /* trust our own certificate, and verify the name */
    f->cctx = tls_client_ctx_new(f->cert, err, sizeof(err));
    assert_non_null(f->cctx);

    tls_conn_t *c = tls_conn_new_client(f->cctx, "mx.test.example", true);
    tls_conn_t *s = tls_conn_new_server(f->sctx);
    assert_non_null(c);
    assert_non_null(s);
    assert_true(pump(c, s, true) >= 0);
    assert_int_equal(tls_handshake(c), 1);
    assert_int_equal(tls_handshake(s), 1);
    assert_string_equal(tls_version(c), "TLSv1.3");
    assert_string_equal(tls_version(s), "TLSv1.3");
    assert_true(strlen(tls_cipher(c)) > 0);
    assert_int_equal(tls_verify_result(c), 0);
    assert_false(tls_conn_resumed(c));

    /* data both ways */
    const char *req = "EHLO client.example\r\n";
    assert_int_equal(tls_write(c, req, strlen(req)), (int)strlen(req));
    pump(c, s, false);
    char got[70000];
    size_t n;
    read_all(s, got, sizeof(got), &n);
    assert_int_equal(n, strlen(req));
    assert_memory_equal(got, req, n);

    static char big[65536];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (char)('a' + i % 26);
    assert_int_equal(tls_write(s, big, sizeof(big)), (int)sizeof(big));
    pump(c, s, false);
    read_all(c, got, sizeof(got), &n);
    assert_int_equal(n, sizeof(big));
    assert_memory_equal(got, big, n);

    /* TLS 1.3 tickets arrive after the handshake: reading made the client
     * process them, so the session is resumable now */
    tls_session_t *sess = tls_conn_get_session(c);
    assert_non_null(sess);
    tls_conn_free(c);
    tls_conn_free(s);

    c = tls_conn_new_client(f->cctx, "mx.test.example", true);
    s = tls_conn_new_server(f->sctx);
    tls_conn_set_session(c, sess);
    assert_true(pump(c, s, true) >= 0);
    assert_int_equal(tls_handshake(c), 1);
    assert_true(tls_conn_resumed(c));
    assert_true(tls_conn_resumed(s));
    tls_session_free(sess);
    tls_conn_free(c);
    tls_conn_free(s);
}

static void test_verify_failures(void **state)
{
    fixture_t *f = *state;
    char err[256] = "";
    if (f->cctx == NULL) {
        assert_int_equal(
            tls_selfsigned_create(f->cert, f->key, "mx.test.example", err, sizeof(err)), 0);
        f->sctx = tls_server_ctx_new(f->cert, f->key, err, sizeof(err));
        f->cctx = tls_client_ctx_new(f->cert, err, sizeof(err));
    }
    /* wrong name with verify: the handshake fails */
    tls_conn_t *c = tls_conn_new_client(f->cctx, "other.example", true);
    tls_conn_t *s = tls_conn_new_server(f->sctx);
    assert_int_equal(pump(c, s, true), -1);
    assert_non_null(strstr(tls_last_error(c), "certificate verify failed"));
    tls_conn_free(c);
    tls_conn_free(s);

    /* opportunistic (no verify) against an untrusted certificate: the
     * handshake succeeds and the result says why it would not verify */
    tls_ctx_t *sys = tls_client_ctx_new(NULL, err, sizeof(err));
    assert_non_null(sys);
    c = tls_conn_new_client(sys, "mx.test.example", false);
    s = tls_conn_new_server(f->sctx);
    assert_true(pump(c, s, true) >= 0);
    assert_int_equal(tls_handshake(c), 1);
    assert_int_not_equal(tls_verify_result(c), 0);
    assert_non_null(strstr(tls_last_error(c), "self-signed"));
    tls_conn_free(c);
    tls_conn_free(s);
    tls_ctx_free(sys);

    /* garbage instead of a ClientHello */
    s = tls_conn_new_server(f->sctx);
    const char junk[] = "EHLO not tls at all\r\n";
    assert_int_equal(tls_feed(s, junk, sizeof(junk) - 1), 0);
    assert_true(tls_handshake(s) < 0);
    tls_conn_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_selfsigned),
        cmocka_unit_test(test_handshake_data_resume),
        cmocka_unit_test(test_verify_failures),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
