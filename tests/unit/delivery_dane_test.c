/*
 * tests/unit/delivery_dane_test.c - DANE's pure parts: the TLSA answer
 * parser (dns_parse_tlsa, core/base/dns.c) and which records RFC 7672
 * lets count (dlv_dane_usable, delivery/dane.c).
 */
#include "delivery/delivery_int.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

/* An answer for "_25._tcp.mx.test" TLSA with the given RDATAs. */
static size_t tlsa_answer(uint8_t *out, const uint8_t *const *rd, const size_t *rdlen, int n)
{
    static const uint8_t head[] = {0x12, 0x34, 0x84, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
    static const uint8_t qname[] = "\x03_25\x04_tcp\x02mx\x04test";
    size_t k = 0;
    memcpy(out, head, sizeof(head));
    out[7] = (uint8_t)n;
    k = sizeof(head);
    memcpy(out + k, qname, sizeof(qname)); /* the terminating NUL is the root label */
    k += sizeof(qname);
    out[k++] = 0;
    out[k++] = 52; /* TLSA */
    out[k++] = 0;
    out[k++] = 1;
    for (int i = 0; i < n; i++) {
        uint8_t rr[] = {0xc0, 12, 0, 52, 0, 1, 0, 0, 0x0e, 0x10, 0, (uint8_t)rdlen[i]};
        memcpy(out + k, rr, sizeof(rr));
        k += sizeof(rr);
        memcpy(out + k, rd[i], rdlen[i]);
        k += rdlen[i];
    }
    return k;
}

static void test_parse_tlsa(void **state)
{
    (void)state;
    uint8_t ee[35] = {3, 1, 1}, ta[67] = {2, 0, 2};
    memset(ee + 3, 0xab, 32);
    memset(ta + 3, 0xcd, 64);
    const uint8_t *rd[] = {ee, ta};
    size_t rl[] = {sizeof(ee), sizeof(ta)};
    uint8_t pkt[512];
    size_t len = tlsa_answer(pkt, rd, rl, 2);
    dns_tlsa_t *t = NULL;
    int n = 0;
    uint32_t ttl = 0;
    assert_int_equal(dns_parse_tlsa(pkt, (int)len, &t, &n, &ttl), 0);
    assert_int_equal(n, 2);
    assert_int_equal(ttl, 3600);
    assert_int_equal(t[0].dt_usage, 3);
    assert_int_equal(t[0].dt_selector, 1);
    assert_int_equal(t[0].dt_mtype, 1);
    assert_int_equal(t[0].dt_len, 32);
    assert_int_equal(t[0].dt_data[31], 0xab);
    assert_int_equal(t[1].dt_usage, 2);
    assert_int_equal(t[1].dt_len, 64);
    dns_tlsa_array_free(t, n);

    /* an RDATA too short for usage, selector and matching type */
    uint8_t shortrd[2] = {3, 1};
    const uint8_t *rd2[] = {shortrd};
    size_t rl2[] = {2};
    len = tlsa_answer(pkt, rd2, rl2, 1);
    assert_int_equal(dns_parse_tlsa(pkt, (int)len, &t, &n, &ttl), SL_EPARSE);
    /* truncated in the middle of a record */
    len = tlsa_answer(pkt, rd, rl, 2);
    assert_int_equal(dns_parse_tlsa(pkt, (int)len - 10, &t, &n, &ttl), SL_EPARSE);
    /* no answer records: parsed, none */
    len = tlsa_answer(pkt, rd, rl, 0);
    assert_int_equal(dns_parse_tlsa(pkt, (int)len, &t, &n, &ttl), 0);
    assert_int_equal(n, 0);
}

static void test_usable(void **state)
{
    (void)state;
    static const struct {
        uint8_t u, s, m;
        size_t len;
        bool usable;
    } cases[] = {
        {3, 1, 1, 32, true},                        /* DANE-EE SPKI SHA2-256 */
        {3, 0, 0, 300, true},                       /* DANE-EE full certificate */
        {2, 0, 2, 64, true},                        /* DANE-TA certificate SHA2-512 */
        {2, 1, 1, 32, true},  {1, 1, 1, 32, false}, /* PKIX-EE: not for SMTP (RFC 7672 3.1.3) */
        {0, 0, 1, 32, false},                       /* PKIX-TA */
        {4, 1, 1, 32, false},                       /* unknown usage */
        {3, 2, 1, 32, false},                       /* unknown selector */
        {3, 1, 3, 32, false},                       /* unknown matching type */
        {3, 1, 1, 31, false},                       /* SHA2-256 of the wrong length */
        {3, 1, 2, 32, false},                       /* SHA2-512 of the wrong length */
        {3, 1, 0, 0, false},                        /* empty exact data */
    };
    uint8_t data[300] = {0};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        dns_tlsa_t r = {cases[i].u, cases[i].s, cases[i].m, cases[i].len, data};
        if (dlv_dane_usable(&r) != cases[i].usable)
            fail_msg("case %zu: %u %u %u len %zu", i, cases[i].u, cases[i].s, cases[i].m,
                     cases[i].len);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_tlsa),
        cmocka_unit_test(test_usable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
