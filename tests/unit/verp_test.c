/*
 * tests/unit/verp_test.c - VERP tokens (core/base/verp.c): a table of
 * make/check cases (round trip, case, forged, expired, malformed), the
 * address helpers and the key file forms.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/base/base.h"

#include <string.h>

static const uint8_t key[VERP_KEY_LEN] = "0123456789abcdef0123456789abcdef";
static const uint8_t key2[VERP_KEY_LEN] = "0123456789abcdef0123456789abcdeF";
#define NOW 1796000000ull /* 2026-11-28 */
#define DAY 86400ull

static void test_round_trip(void **state)
{
    (void)state;
    static const struct {
        uint64_t id;
        uint32_t idx;
    } cases[] = {{0, 0}, {1, 1}, {0x18A2B3C4D5E6F708ull, 7}, {UINT64_MAX, UINT32_MAX}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char tok[VERP_TOKEN_LEN + 1];
        verp_token_make(key, cases[i].id, cases[i].idx, NOW, tok);
        assert_int_equal(strlen(tok), VERP_TOKEN_LEN);
        assert_int_equal(strspn(tok, "abcdefghijklmnopqrstuvwxyz234567"), VERP_TOKEN_LEN);
        uint64_t id = 0, made = 0;
        uint32_t idx = 0;
        assert_int_equal(verp_token_check(key, tok, strlen(tok), NOW, 30 * DAY, &id, &idx, &made),
                         VERP_OK);
        assert_true(id == cases[i].id);
        assert_int_equal(idx, cases[i].idx);
        assert_true(made <= NOW && NOW - made < DAY);
        /* a mail system may change the case of a local part */
        for (char *p = tok; *p; p++)
            *p = (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
        assert_int_equal(verp_token_check(key, tok, strlen(tok), NOW, 30 * DAY, &id, &idx, &made),
                         VERP_OK);
    }
}

static void test_refused(void **state)
{
    (void)state;
    char tok[VERP_TOKEN_LEN + 1], bad[VERP_TOKEN_LEN + 1];
    uint64_t id, made;
    uint32_t idx;
    verp_token_make(key, 42, 3, NOW, tok);
    /* another key */
    assert_int_equal(verp_token_check(key2, tok, VERP_TOKEN_LEN, NOW, 0, &id, &idx, &made),
                     VERP_FORGED);
    /* every single character changed: never accepted */
    for (size_t i = 0; i < VERP_TOKEN_LEN; i++) {
        memcpy(bad, tok, sizeof(bad));
        bad[i] = bad[i] == 'a' ? 'b' : 'a';
        int rc = verp_token_check(key, bad, VERP_TOKEN_LEN, NOW, 0, &id, &idx, &made);
        assert_true(rc == VERP_FORGED || rc == VERP_MALFORMED);
    }
    /* age: good through its day + max_age, refused after; a future day too */
    assert_int_equal(
        verp_token_check(key, tok, VERP_TOKEN_LEN, NOW + 30 * DAY, 30 * DAY, &id, &idx, &made),
        VERP_OK);
    assert_int_equal(
        verp_token_check(key, tok, VERP_TOKEN_LEN, NOW + 32 * DAY, 30 * DAY, &id, &idx, &made),
        VERP_EXPIRED);
    assert_int_equal(
        verp_token_check(key, tok, VERP_TOKEN_LEN, NOW - 3 * DAY, 30 * DAY, &id, &idx, &made),
        VERP_EXPIRED);
    /* malformed: length, alphabet, trailing bits */
    assert_int_equal(verp_token_check(key, tok, VERP_TOKEN_LEN - 1, NOW, 0, &id, &idx, &made),
                     VERP_MALFORMED);
    assert_int_equal(verp_token_check(key, "", 0, NOW, 0, &id, &idx, &made), VERP_MALFORMED);
    memcpy(bad, tok, sizeof(bad));
    bad[5] = '1';
    assert_int_equal(verp_token_check(key, bad, VERP_TOKEN_LEN, NOW, 0, &id, &idx, &made),
                     VERP_MALFORMED);
}

static void test_address(void **state)
{
    (void)state;
    char a[128];
    size_t n = verp_address(key, 9, 1, NOW, "bounce.example", a, sizeof(a));
    assert_int_equal(n, strlen(a));
    assert_int_equal(strncmp(a, "bounces+", 8), 0);
    assert_non_null(strstr(a, "@bounce.example"));
    assert_int_equal(verp_address(key, 9, 1, NOW, "bounce.example", a, 20), 0);
    n = verp_address(key, 9, 1, NOW, "bounce.example", a, sizeof(a));
    const char *tok;
    size_t len;
    assert_int_equal(verp_address_token(a, "BOUNCE.example", &tok, &len), 0);
    assert_int_equal(len, VERP_TOKEN_LEN);
    assert_int_equal(verp_address_token(a, "other.example", &tok, &len), VERP_MALFORMED);
    assert_int_equal(verp_address_token("someone@bounce.example", "bounce.example", &tok, &len),
                     VERP_MALFORMED);
}

static void test_key_parse(void **state)
{
    (void)state;
    uint8_t k[VERP_KEY_LEN];
    const char *hex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1F\n";
    assert_int_equal(verp_key_parse((const uint8_t *)hex, strlen(hex), k), 0);
    for (int i = 0; i < VERP_KEY_LEN; i++)
        assert_int_equal(k[i], i);
    assert_int_equal(verp_key_parse(key, VERP_KEY_LEN, k), 0);
    assert_memory_equal(k, key, VERP_KEY_LEN);
    assert_int_equal(verp_key_parse((const uint8_t *)"short\n", 6, k), SL_EPARSE);
    const char *badhex = "zz0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    assert_int_equal(verp_key_parse((const uint8_t *)badhex, strlen(badhex), k), SL_EPARSE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_address),
        cmocka_unit_test(test_key_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
