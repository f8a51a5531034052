/*
 * tests/unit/report_parse_test.c - the report parser (core/server/
 * report_parse.c) on the real-shaped samples of the fuzz seed corpus
 * (tests/fuzz/corpus/report/: a Postfix DSN, Microsoft JMRP, Yahoo CFL,
 * the RFC 5965 example, a plain-text bounce, a truncated nested one):
 * what each yields, and every prefix of each sample parsed without a read
 * outside it (ASan).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/base/base.h"
#include "core/server/report_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *load(const char *name, size_t *len)
{
    const char *src = getenv("SLUICE_SRC");
    char path[1024];
    snprintf(path, sizeof(path), "%s/tests/fuzz/corpus/report/%s", src ? src : ".", name);
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        fail_msg("%s: cannot open", path);
    char *buf = xmalloc(1 << 20);
    *len = fread(buf, 1, 1 << 20, f);
    fclose(f);
    return buf;
}

static void parse_file(const char *name, report_t *r)
{
    size_t n;
    char *m = load(name, &n);
    report_parse(m, n, r);
    free(m);
}

static void test_dsn(void **state)
{
    (void)state;
    report_t r;
    parse_file("dsn_postfix.eml", &r);
    assert_int_equal(r.rp_kind, REPORT_DSN);
    assert_int_equal(r.rp_nrcpt, 2);
    /* the failed recipient, not the delivered one before it */
    assert_string_equal(r.rp_final_rcpt, "gone@a.test");
    assert_string_equal(r.rp_orig_rcpt, "Gone@a.test");
    assert_string_equal(r.rp_action, "failed");
    assert_string_equal(r.rp_status, "5.1.1");
    assert_string_equal(r.rp_diag, "550 5.1.1 <gone@a.test>: Recipient address rejected: User "
                                   "unknown in local recipient table");
    assert_string_equal(r.rp_remote_mta, "mailstore.a.test");
    assert_string_equal(r.rp_reporting_mta, "mx.a.test");
    assert_string_equal(r.rp_message_id, "<m1@s.test>");
    assert_string_equal(r.rp_sluice_id, "18A2B3C4D5E6F708");
}

static void test_arf(void **state)
{
    (void)state;
    static const struct {
        const char *file, *type, *agent, *rcpt, *msgid, *sid;
    } cases[] = {
        {"arf_microsoft_jmrp.eml", "abuse", "Microsoft JMRP/1.0", "victim@hotmail.com",
         "<m2@s.test>", "18A2B3C4D5E6F709"},
        {"arf_yahoo_cfl.eml", "abuse", "Yahoo!-Mail-Feedback/2.0", "reader@yahoo.com",
         "<m3@s.test>", ""},
        {"arf_generic_rfc5965.eml", "abuse", "SomeGenerator/1.0", "user@example.com",
         "8787KJKJ3K4J3K4J3K4J3.mail@example.net", ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        report_t r;
        parse_file(cases[i].file, &r);
        assert_int_equal(r.rp_kind, REPORT_ARF);
        assert_string_equal(r.rp_feedback_type, cases[i].type);
        assert_string_equal(r.rp_user_agent, cases[i].agent);
        assert_string_equal(r.rp_orig_rcpt, cases[i].rcpt);
        assert_string_equal(r.rp_message_id, cases[i].msgid);
        assert_string_equal(r.rp_sluice_id, cases[i].sid);
    }
}

static void test_text_and_junk(void **state)
{
    (void)state;
    report_t r;
    parse_file("text_bounce.eml", &r);
    assert_int_equal(r.rp_kind, REPORT_TEXT);
    assert_string_equal(r.rp_status, "5.2.1");
    assert_string_equal(r.rp_diag, "Remote server said: 550-5.2.1 The email account that you "
                                   "tried to reach is disabled.");
    parse_file("nested_truncated.eml", &r);
    assert_int_equal(r.rp_kind, REPORT_NONE);
    static const char *junk[] = {"", "\r\n\r\n", "Subject: hi\r\n\r\nversion 1.2.3 and 10.0.0.1",
                                 "Content-Type: multipart/report; boundary=\"\"\r\n\r\n--\r\n",
                                 "Content-Type: multipart/report; boundary=b\r\n\r\n--b--\r\n"};
    for (size_t i = 0; i < sizeof(junk) / sizeof(junk[0]); i++) {
        report_parse(junk[i], strlen(junk[i]), &r);
        assert_int_equal(r.rp_kind, REPORT_NONE);
    }
    /* 8-bit and control bytes never reach a field as they are */
    const char *bin = "Subject: x\r\n\r\nfailed: 5.1.1 \x1b[31mred\xff\r\n";
    report_parse(bin, strlen(bin), &r);
    assert_int_equal(r.rp_kind, REPORT_TEXT);
    assert_string_equal(r.rp_diag, "failed: 5.1.1 ?[31mred?");
}

/* Every prefix of every sample, in an exact-size copy: ASan sees any read
 * past the end. */
static void test_prefixes(void **state)
{
    (void)state;
    static const char *files[] = {"dsn_postfix.eml",   "arf_microsoft_jmrp.eml",
                                  "arf_yahoo_cfl.eml", "arf_generic_rfc5965.eml",
                                  "text_bounce.eml",   "nested_truncated.eml"};
    for (size_t f = 0; f < sizeof(files) / sizeof(files[0]); f++) {
        size_t n;
        char *m = load(files[f], &n);
        for (size_t k = 0; k <= n; k++) {
            char *c = xmalloc(k ? k : 1);
            memcpy(c, m, k);
            report_t r;
            report_parse(c, k, &r);
            free(c);
        }
        free(m);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dsn),
        cmocka_unit_test(test_arf),
        cmocka_unit_test(test_text_and_junk),
        cmocka_unit_test(test_prefixes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
