/*
 * tests/unit/dkim_cache_test.c - dkim_sign_once(): a message is signed
 * once. With the clock (no fixed t=), a later call for the same message
 * gives the same fields byte for byte after the second has changed (a new
 * signing would have a later t=); another length, another variant or
 * another message is signed afresh; with x= the fields are reused for
 * half the lifetime, then made again with a new t= and x= over the same
 * body hash (bh=).
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

#include "dkim/dkim_int.h"

static char tmpdir[64], key_ed[300];

static const char MSG[] = "From: Joe <joe@example.com>\r\nTo: <ann@a.example>\r\n"
                          "Subject: once\r\n\r\nHello  there.\r\n";

static int group_setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/dkim_cache_test.XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(key_ed, sizeof(key_ed), "%s/ed.pem", tmpdir);
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "openssl genpkey -algorithm ED25519 -out %s 2>/dev/null", key_ed);
    if (system(cmd) != 0)
        return -1;
    chmod(key_ed, 0600);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static dkim_signer_t *signer(uint32_t expire)
{
    char err[300];
    dkim_keystore_t *ks = dkim_keystore_new();
    assert_int_equal(dkim_keystore_load(ks, "example.com", "ed", key_ed, err, sizeof(err)), 0);
    dkim_sig_conf_t sc = {.sc_expire = expire};
    dkim_conf_t conf = {.dc_sigs = &sc, .dc_nsigs = 1};
    dkim_signer_t *s = NULL;
    assert_int_equal(dkim_signer_new(&conf, ks, &s, err, sizeof(err)), 0);
    dkim_keystore_free(ks);
    return s;
}

static char *sign(const dkim_signer_t *s, uint64_t id, unsigned variant, size_t len)
{
    buf_t b;
    buf_init(&b, 512);
    assert_int_equal(dkim_sign_once(s, id, variant, MSG, len, &b), 1);
    buf_append(&b, "", 1);
    return buf_steal(&b, NULL);
}

/* A tag's value, folding removed, into out. */
static void tag(const char *f, const char *name, char *out, size_t outlen)
{
    char flat[2048];
    size_t n = 0;
    for (const char *p = f; *p && n + 1 < sizeof(flat); p++)
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
            flat[n++] = *p;
    flat[n] = '\0';
    char key[16];
    snprintf(key, sizeof(key), ";%s=", name);
    const char *t = strstr(flat, key);
    assert_non_null(t);
    t += strlen(key);
    size_t k = strcspn(t, ";");
    snprintf(out, outlen, "%.*s", (int)k, t);
}

static void next_second(void)
{
    uint64_t t0 = clock_now_s();
    for (int i = 0; i < 300 && clock_now_s() == t0; i++)
        usleep(10000);
    assert_true(clock_now_s() > t0);
}

static void test_same_message_same_fields(void **state)
{
    (void)state;
    dkim_signer_t *s = signer(0);
    char *a = sign(s, 42, 0, sizeof(MSG) - 1);
    next_second();
    char *b = sign(s, 42, 0, sizeof(MSG) - 1);
    assert_string_equal(a, b); /* same t=: not signed again */
    char *c = sign(s, 43, 0, sizeof(MSG) - 1);
    char *d = sign(s, 42, 1, sizeof(MSG) - 1);
    char *e = sign(s, 42, 0, sizeof(MSG) - 4); /* another length: afresh */
    char ta[32], tc[32], td[32], te[32], bha[64], bhe[64];
    tag(a, "t", ta, sizeof(ta));
    tag(c, "t", tc, sizeof(tc));
    tag(d, "t", td, sizeof(td));
    tag(e, "t", te, sizeof(te));
    assert_string_not_equal(ta, tc);
    assert_string_not_equal(ta, td);
    assert_string_not_equal(ta, te);
    tag(a, "bh", bha, sizeof(bha));
    tag(e, "bh", bhe, sizeof(bhe));
    assert_string_not_equal(bha, bhe); /* its own body hash */
    free(a);
    free(b);
    free(c);
    free(d);
    free(e);
    dkim_signer_free(s);
}

static void test_expiry_signs_again_same_body_hash(void **state)
{
    (void)state;
    dkim_signer_t *s = signer(2); /* x= t+2: reused for 1 s */
    char *a = sign(s, 7, 0, sizeof(MSG) - 1);
    char *b = sign(s, 7, 0, sizeof(MSG) - 1);
    assert_string_equal(a, b);
    next_second();
    next_second(); /* at least one full second after the first signing */
    char *c = sign(s, 7, 0, sizeof(MSG) - 1);
    char ta[32], tc[32], xa[32], xc[32], bha[64], bhc[64];
    tag(a, "t", ta, sizeof(ta));
    tag(c, "t", tc, sizeof(tc));
    tag(a, "x", xa, sizeof(xa));
    tag(c, "x", xc, sizeof(xc));
    tag(a, "bh", bha, sizeof(bha));
    tag(c, "bh", bhc, sizeof(bhc));
    assert_true(strtoull(tc, NULL, 10) > strtoull(ta, NULL, 10));
    assert_true(strtoull(xc, NULL, 10) > strtoull(xa, NULL, 10));
    assert_string_equal(bha, bhc);
    free(a);
    free(b);
    free(c);
    dkim_signer_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_message_same_fields),
        cmocka_unit_test(test_expiry_signs_again_same_body_hash),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
