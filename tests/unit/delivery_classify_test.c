/*
 * delivery_classify_test.c - bounce classification (RFC 3463 first, then
 * text), reply code -> outcome, and enhanced status derivation.
 */
#include "delivery/delivery.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

typedef struct {
    const char *name;
    int code;
    const char *status;
    const char *text;
    const char *want;
} class_case_t;

static const class_case_t class_cases[] = {
    {"user unknown", 550, "5.1.1", "User unknown", "bad-mailbox"},
    {"other address", 550, "5.1.0", "Address rejected", "bad-mailbox"},
    {"mailbox moved", 551, "5.1.6", "Mailbox has moved", "bad-mailbox"},
    {"bad domain", 550, "5.1.2", "Host not found", "bad-domain"},
    {"null mx", 556, "5.1.10", "does not accept mail", "bad-domain"},
    {"null mx is not 5.1.1", 556, "5.1.10", "whatever", "bad-domain"},
    {"unable to route", 550, "5.4.4", "Unable to route", "bad-domain"},
    {"disabled mailbox", 550, "5.2.1", "Mailbox disabled", "inactive-mailbox"},
    {"mailbox full", 552, "5.2.2", "Mailbox full", "quota-issues"},
    {"mailbox full temp", 452, "4.2.2", "Over quota", "quota-issues"},
    {"spam by text", 550, "5.7.1", "Message rejected as spam", "spam-related"},
    {"blocked by text", 554, "5.7.1", "Service unavailable; client host blocked using zen",
     "spam-related"},
    {"reputation", 550, "5.7.1", "Poor sender REPUTATION", "spam-related"},
    {"plain policy", 550, "5.7.1", "Delivery not authorized", "policy-related"},
    {"relay denied", 554, "5.7.1", "Relay access denied", "relaying-issues"},
    {"relay other 5.7", 550, "5.7.9", "relaying not permitted", "relaying-issues"},
    {"other 5.7", 550, "5.7.26", "DMARC failure", "policy-related"},
    {"content", 554, "5.6.0", "Message content rejected", "content-related"},
    {"utf8", 550, "5.6.7", "SMTPUTF8 required", "content-related"},
    {"routing", 550, "5.4.6", "Routing loop detected", "routing-errors"},
    {"no answer", 421, "4.4.1", "No answer", "no-answer-from-host"},
    {"connection lost", 0, "4.4.2", "connection lost during DATA", "no-answer-from-host"},
    {"dns tempfail", 0, "4.4.3", "DNS lookup failed", "routing-errors"},
    {"marked down", 0, "4.4.1", "destination marked down", "no-answer-from-host"},
    {"protocol", 500, "5.5.2", "Syntax error", "protocol-errors"},
    {"config", 554, "5.3.0", "Mail system config error", "bad-configuration"},
    {"too big", 552, "5.3.4", "Message too big", "content-related"},
    {"no status, text", 550, "", "No such user here", "bad-mailbox"},
    {"no status, nothing", 550, "", "Go away", "other"},
    {"x.0.0 uses text", 550, "5.0.0", "mailbox unavailable", "bad-mailbox"},
    {"NULL status", 450, NULL, "try later", "other"},
    {"garbage status", 550, "5.x.1", "nope", "other"},
    {"tls required", 0, "4.7.4", "TLS required but STARTTLS not offered", "policy-related"},
};

static void test_classify_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(class_cases) / sizeof(class_cases[0]); i++) {
        const class_case_t *c = &class_cases[i];
        const char *got = dlv_classify(c->code, c->status, c->text);
        if (strcmp(got, c->want) != 0)
            fail_msg("case \"%s\": got %s, want %s", c->name, got, c->want);
    }
}

static void test_result_for_code(void **state)
{
    (void)state;
    assert_int_equal(dlv_result_for_code(250), Q_OUT_DELIVERED);
    assert_int_equal(dlv_result_for_code(251), Q_OUT_DELIVERED);
    assert_int_equal(dlv_result_for_code(450), Q_OUT_DEFERRED);
    assert_int_equal(dlv_result_for_code(421), Q_OUT_DEFERRED);
    assert_int_equal(dlv_result_for_code(550), Q_OUT_BOUNCED);
    assert_int_equal(dlv_result_for_code(554), Q_OUT_BOUNCED);
    /* no reply / nonsense is never a bounce */
    assert_int_equal(dlv_result_for_code(0), Q_OUT_DEFERRED);
    assert_int_equal(dlv_result_for_code(354), Q_OUT_DEFERRED);
    assert_int_equal(dlv_result_for_code(199), Q_OUT_DEFERRED);
}

static void test_status_for_reply(void **state)
{
    (void)state;
    char st[16];
    dlv_status_for_reply(550, "5.1.1", st);
    assert_string_equal(st, "5.1.1");
    dlv_status_for_reply(556, "5.1.10", st);
    assert_string_equal(st, "5.1.10");
    dlv_status_for_reply(250, "", st);
    assert_string_equal(st, "2.0.0");
    dlv_status_for_reply(451, NULL, st);
    assert_string_equal(st, "4.0.0");
    dlv_status_for_reply(554, "junk", st);
    assert_string_equal(st, "5.0.0");
    /* a class that contradicts the code is not trusted */
    dlv_status_for_reply(450, "5.1.1", st);
    assert_string_equal(st, "4.0.0");
    dlv_status_for_reply(0, "", st);
    assert_string_equal(st, "4.0.0");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classify_table),
        cmocka_unit_test(test_result_for_code),
        cmocka_unit_test(test_status_for_reply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
