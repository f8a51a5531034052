/*
 * delivery_classify_test.c - bounce classification (RFC 3463 first, then
 * text), reply code -> outcome, and enhanced status derivation; the
 * built-in table (classify.c) on its own, as it serves local failures and
 * the replies an operator's rules file does not cover.
 */
#include "delivery/delivery.h"
#include "delivery/rules_int.h"

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
    /* statuses known to mislead: the text decides (docs/bounce-rules.md) */
    {"4.2.1 rate limit", 450, "4.2.1", "Recipient address rejected: exceeded message rate limit",
     "quota-issues"},
    {"421 mailbox status", 421, "4.1.1", "mx.example.net Service not available, try later",
     "no-answer-from-host"},
    {"421 refused", 421, "4.2.1", "Service refused, please try later", "policy-related"},
    {"4.3.2 connections", 452, "4.3.2", "Connection rate limit exceeded.", "bad-connection"},
    {"5.4.316 expired", 550, "5.4.316", "Message expired, connection refused", "message-expired"},
};

/* The built-in table alone: the same precedence as the shipped rules,
 * without providers. */
static const class_case_t builtin_cases[] = {
    {"user unknown", 550, "5.1.1", "User unknown", "bad-mailbox"},
    {"disabled", 550, "5.2.1", "Mailbox disabled", "inactive-mailbox"},
    {"4.2.1 rate limit", 450, "4.2.1", "exceeded message rate limit, try again later",
     "quota-issues"},
    {"5.2.122 receive limit", 554, "5.2.122",
     "The recipient has exceeded their limit for the number of messages they can receive per hour.",
     "quota-issues"},
    {"4.2.1 receiving rate", 450, "4.2.1",
     "The user you are trying to contact is receiving mail at a rate that prevents additional "
     "messages from being delivered.",
     "quota-issues"},
    {"5.4.316 expired", 550, "5.4.316", "Message expired, connection refused", "message-expired"},
    {"4.4.316 refused", 451, "4.4.316", "Connection refused [Message=Socket error code 10061]",
     "routing-errors"},
    {"4.3.2 connections", 452, "4.3.2", "Connection rate limit exceeded.", "bad-connection"},
    {"4.3.2 not accepting", 421, "4.3.2", "Service not available, closing transmission channel",
     "no-answer-from-host"},
    {"4.4.5 concurrency", 421, "4.4.5", "Service unavailable, concurrency limit reached",
     "bad-connection"},
    {"421 4.1.1 try later", 421, "4.1.1", "try later", "no-answer-from-host"},
    {"421 4.2.1 refused", 421, "4.2.1", "Service refused, please try later", "policy-related"},
    {"450 4.1.1 stays", 450, "4.1.1", "try later", "bad-mailbox"},
    {"connections before config", 421, "",
     "Too many connections, check your configuration or policy", "bad-connection"},
    {"connection refused", 451, "", "connection refused", "no-answer-from-host"},
    {"expired", 451, "", "Message expired after 5 days", "message-expired"},
    {"spam 5.7.1", 550, "5.7.1", "Message rejected as spam", "spam-related"},
    {"local dns", 0, "4.4.3", "DNS lookup failed", "routing-errors"},
    {"local connection lost", 0, "4.4.2", "connection lost during DATA", "no-answer-from-host"},
};

static void test_builtin_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(builtin_cases) / sizeof(builtin_cases[0]); i++) {
        const class_case_t *c = &builtin_cases[i];
        const char *got = dlv_classify_builtin(c->code, c->status, c->text);
        if (strcmp(got, c->want) != 0)
            fail_msg("case \"%s\": got %s, want %s", c->name, got, c->want);
    }
}

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
        cmocka_unit_test(test_builtin_table),
        cmocka_unit_test(test_result_for_code),
        cmocka_unit_test(test_status_for_reply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
