/*
 * tests/unit/queue_tlsrpt_test.c - the TLSRPT TXT record parser
 * (q_tlsrpt_txt_parse, queue/tlsrpt_send.c; RFC 8460 3), as a table.
 */
#include "queue/queue_int.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static void test_txt(void **state)
{
    (void)state;
    static const struct {
        const char *txt;
        int n;             /* URIs kept, -1: refused */
        const char *first; /* the first URI kept */
    } cases[] = {
        {"v=TLSRPTv1; rua=mailto:reports@example.com,https://r.example.com/v1", 2,
         "mailto:reports@example.com"},
        {"v=TLSRPTv1;rua=mailto:a@b.example", 1, "mailto:a@b.example"},
        {"v=TLSRPTv1; rua=https://r.example/x ; ext=value", 1, "https://r.example/x"},
        {"v=TLSRPTv1; rua= mailto:a@b.example , ftp://x.example/", 1, "mailto:a@b.example"},
        {"v=TLSRPTv1; rua=ftp://x.example/", -1, NULL},     /* no scheme of RFC 8460 */
        {"v=TLSRPTv1; rua=http://x.example/", -1, NULL},    /* https only */
        {"v=TLSRPTv1;", -1, NULL},                          /* no rua */
        {"v=TLSRPTv1", -1, NULL},                           /* no field at all */
        {"v=TLSRPTv2; rua=mailto:a@b.example", -1, NULL},   /* another version */
        {"rua=mailto:a@b.example; v=TLSRPTv1", -1, NULL},   /* the version first */
        {"v=tlsrptv1; rua=mailto:a@b.example", -1, NULL},   /* case-sensitive */
        {"v=TLSRPTv1; rua=mailto:a b@c.example", -1, NULL}, /* a space in a URI */
        {"", -1, NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char **u = NULL;
        int n = 0;
        int rc = q_tlsrpt_txt_parse(cases[i].txt, &u, &n);
        if (cases[i].n < 0) {
            if (rc != SL_EPARSE)
                fail_msg("case %zu \"%s\": accepted", i, cases[i].txt);
            continue;
        }
        if (rc != 0 || n != cases[i].n || strcmp(u[0], cases[i].first) != 0)
            fail_msg("case %zu \"%s\": rc %d n %d", i, cases[i].txt, rc, n);
        q_tlsrpt_uris_free(u, n);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_txt),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
