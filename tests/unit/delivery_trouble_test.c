/*
 * delivery_trouble_test.c - the reply judge (delivery/trouble.c): a table
 * of (provider, stage, reply) rows, each judged against a fresh provider
 * registry built from the shipped providers.conf (and a small provider of
 * the test's own), checking what follows from the reply: the recipient's
 * fate (or "not an outcome"), the code, status and text as recorded, the
 * bounce category, the retry time (the schedule's, backoff.retry, or the
 * end of a suspension) and the shaping signal; then what the provider's
 * queue counted.
 */
#include "delivery/delivery_int.h"
#include "delivery/rules_int.h"
#include "delivery/shaping_int.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

/* A provider of the test's own, laid over the shipped ones. */
static const char own_conf[] =
    "providers { p {\n"
    "  domains = [\"p.example\"];\n"
    "  backoff { retry = 10m; }\n"
    "  rule { match = '^452 .*gone for good'; action = bounce-recipient; }\n"
    "  rule { match = '^421 .*slow down'; action = backoff; }\n"
    "  rule { match = '^451 .*defer all'; action = defer-queue; }\n"
    "  rule { match = '^421 .*go away'; action = suspend; duration = 2m; }\n"
    "  rule { match = '^550 .*listed'; action = disable-source; duration = 1h; }\n"
    "} }\n";

#define BACKOFF_RETRY UINT64_MAX /* want: now + the provider's backoff.retry */

typedef struct {
    const char *name;
    const char *domain; /* the provider is this domain's */
    bool in_backoff;    /* the queue is put in backoff before the reply */
    dlv_stage_t stage;
    int code;
    const char *status, *text;
    int accepted;
    bool mail_refused;
    uint64_t retry_hint; /* DEST: rp_retry_at */
    /* want */
    dlv_fate_t fate;
    int rec_code;
    const char *rec_status; /* NULL: not checked (not an outcome) */
    const char *category;   /* NULL: none */
    uint64_t retry;         /* 0, BACKOFF_RETRY or an exact time */
    int signal;
    const char *text_has; /* the recorded text holds this */
    int counted;    /* the queue counted the reply: 0 no, 4 deferred, 5 bounced, 2 delivered */
    const char *mx; /* the host that answered; NULL: "mx.test" */
} row_t;

static const row_t rows[] = {
    /* replies that decide nothing: never an outcome, never counted */
    {"greeting 220", "gmail.com", false, DLV_STAGE_GREETING, 220, "", "mx.google.com ESMTP", 0,
     false, 0, DLV_FATE_NONE, 0, NULL, NULL, 0, 0, NULL, 0, NULL},
    {"EHLO 550: HELO next", "gmail.com", false, DLV_STAGE_EHLO, 550, "", "no EHLO here", 0, false,
     0, DLV_FATE_NONE, 0, NULL, NULL, 0, 0, NULL, 0, NULL},
    {"STARTTLS 454", "gmail.com", false, DLV_STAGE_STARTTLS, 454, "4.7.0", "TLS not available", 0,
     false, 0, DLV_FATE_NONE, 0, NULL, NULL, 0, 0, NULL, 0, NULL},
    {"MAIL 250", "gmail.com", false, DLV_STAGE_MAIL, 250, "2.1.0", "OK", 0, false, 0, DLV_FATE_NONE,
     0, NULL, NULL, 0, 0, NULL, 0, NULL},
    {"RCPT 250", "gmail.com", false, DLV_STAGE_RCPT, 250, "2.1.5", "OK", 0, false, 0, DLV_FATE_NONE,
     0, NULL, NULL, 0, 0, NULL, 0, NULL},
    {"RCPT after a refused MAIL", "p.example", false, DLV_STAGE_RCPT, 421, "", "slow down", 0, true,
     0, DLV_FATE_NONE, 0, NULL, NULL, 0, 0, NULL, 0, NULL},
    {"DATA 354", "gmail.com", false, DLV_STAGE_DATA, 354, "", "go ahead", 1, false, 0,
     DLV_FATE_NONE, 0, NULL, NULL, 0, 0, NULL, 0, NULL},
    {"DATA 554, nobody accepted", "p.example", false, DLV_STAGE_DATA, 554, "5.5.1",
     "no valid recipients", 0, false, 0, DLV_FATE_NONE, 0, NULL, NULL, 0, 0, NULL, 0, NULL},
    {"dot, nobody accepted", "p.example", false, DLV_STAGE_DOT, 421, "", "slow down", 0, false, 0,
     DLV_FATE_NONE, 0, NULL, NULL, 0, 0, NULL, 0, NULL},
    {"RSET 421", "p.example", false, DLV_STAGE_OTHER, 421, "", "slow down", 0, false, 0,
     DLV_FATE_NONE, 0, NULL, NULL, 0, 0, NULL, 0, NULL},
    {"RCPT 452 too many", "gmail.com", false, DLV_STAGE_RCPT, 452, "4.5.3", "Too many recipients",
     3, false, 0, DLV_FATE_NEXT_TXN, 0, NULL, NULL, 0, 0, NULL, 0, NULL},
    {"RCPT 552 too many (RFC 821)", "gmail.com", false, DLV_STAGE_RCPT, 552, "",
     "Too many recipients", 1, false, 0, DLV_FATE_NEXT_TXN, 0, NULL, NULL, 0, 0, NULL, 0, NULL},

    /* delivered */
    {"dot 250", "gmail.com", false, DLV_STAGE_DOT, 250, "2.0.0", "OK 1234 - gsmtp", 2, false, 0,
     DLV_FATE_DELIVERED, 250, "2.0.0", NULL, 0, 0, "gsmtp", 2, NULL},
    {"dot 250 without status", "example.org", false, DLV_STAGE_DOT, 250, "", "queued", 1, false, 0,
     DLV_FATE_DELIVERED, 250, "2.0.0", NULL, 0, 0, "queued", 2, NULL},

    /* the code and the status, then the rules and the table */
    {"Gmail 550 5.1.1", "gmail.com", false, DLV_STAGE_RCPT, 550, "5.1.1",
     "The email account that you tried to reach does not exist", 0, false, 0, DLV_FATE_BOUNCED, 550,
     "5.1.1", "bad-mailbox", 0, 0, "does not exist", 5, NULL},
    {"45x user unknown: the rules bounce it", "example.org", false, DLV_STAGE_RCPT, 450, "4.1.1",
     "<x@example.org>: Recipient address rejected: User unknown", 0, false, 0, DLV_FATE_BOUNCED,
     450, "4.1.1", "bad-mailbox", 0, 0, "User unknown", 4, NULL},
    {"MAIL 451 defers", "example.org", false, DLV_STAGE_MAIL, 451, "4.3.0", "try again later", 0,
     false, 0, DLV_FATE_DEFERRED, 451, "4.3.0", "bad-configuration", 0, 0, "try again", 4, NULL},
    {"a status whose class is not the code's", "example.org", false, DLV_STAGE_RCPT, 450, "5.1.1",
     "try later", 0, false, 0, DLV_FATE_DEFERRED, 450, "4.0.0", "other", 0, 0, "try later", 4,
     NULL},
    {"RCPT 552 5.5.3 alone: temporary 452", "example.org", false, DLV_STAGE_RCPT, 552, "5.5.3",
     "Too many recipients", 0, false, 0, DLV_FATE_DEFERRED, 452, "4.5.3", "protocol-errors", 0, 0,
     "Too many recipients (552 5.5.3 at RCPT: temporary)", 4, NULL},
    {"RCPT 552 over quota: the recipient's refusal", "example.org", false, DLV_STAGE_RCPT, 552,
     "5.2.2", "Mailbox full", 0, false, 0, DLV_FATE_BOUNCED, 552, "5.2.2", "quota-issues", 0, 0,
     "Mailbox full", 5, NULL},
    {"dot 552 bare: too big", "example.org", false, DLV_STAGE_DOT, 552, "", "Message too large", 1,
     false, 0, DLV_FATE_BOUNCED, 552, "5.3.4", "content-related", 0, 0, "too large", 5, NULL},
    {"DATA 250: a protocol error", "example.org", false, DLV_STAGE_DATA, 250, "2.0.0", "OK", 2,
     false, 0, DLV_FATE_DEFERRED, 0, "4.5.0", "protocol-errors", 0, 0,
     "protocol error: mx.test[127.0.0.9] answered DATA with 250 OK (expected 354)", 0, NULL},

    /* the shaping signal, the fate it changes and the retry time */
    {"Yahoo TSS04: backoff, later retry", "yahoo.com", false, DLV_STAGE_RCPT, 421, "4.7.0",
     "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user "
     "complaints",
     0, false, 0, DLV_FATE_DEFERRED, 421, "4.7.0", "spam-related", BACKOFF_RETRY, SHP_A_BACKOFF,
     "TSS04", 4, NULL},
    {"own: backoff", "p.example", false, DLV_STAGE_DOT, 421, "", "please slow down", 1, false, 0,
     DLV_FATE_DEFERRED, 421, "4.0.0", "other", BACKOFF_RETRY, SHP_A_BACKOFF, "slow down", 4, NULL},
    {"own: bounce-recipient", "p.example", false, DLV_STAGE_RCPT, 452, "4.2.2",
     "mailbox gone for good", 0, false, 0, DLV_FATE_BOUNCED, 452, "4.2.2", "quota-issues", 0,
     SHP_A_BOUNCE_RCPT, "gone for good", 4, NULL},
    {"own: defer-queue", "p.example", false, DLV_STAGE_MAIL, 451, "", "defer all of it", 0, false,
     0, DLV_FATE_DEFERRED, 451, "4.0.0", "other", 0, SHP_A_DEFER_QUEUE, "defer all", 4, NULL},
    {"own: suspend", "p.example", false, DLV_STAGE_RCPT, 421, "4.7.0", "go away", 0, false, 0,
     DLV_FATE_DEFERRED, 421, "4.7.0", "policy-related", 0, SHP_A_SUSPEND, "go away", 4, NULL},
    {"own: disable-source", "p.example", false, DLV_STAGE_DOT, 550, "5.7.1", "IP listed at x", 1,
     false, 0, DLV_FATE_BOUNCED, 550, "5.7.1", "spam-related", 0, SHP_A_DISABLE_SRC, "listed", 5,
     NULL},
    {"deferred in backoff waits backoff.retry", "p.example", true, DLV_STAGE_RCPT, 450, "4.2.1",
     "mailbox busy", 0, false, 0, DLV_FATE_DEFERRED, 450, "4.2.1", "inactive-mailbox",
     BACKOFF_RETRY, 0, "busy", 4, NULL},
    {"a bounce in backoff is a bounce", "p.example", true, DLV_STAGE_RCPT, 550, "5.1.1",
     "no such user", 0, false, 0, DLV_FATE_BOUNCED, 550, "5.1.1", "bad-mailbox", 0, 0, "no such", 5,
     NULL},

    /* a refusal of the connection: deferred, with where it came from, on
     * the schedule even when it puts the queue in backoff */
    {"Yahoo greeting TSS04", "yahoo.com", false, DLV_STAGE_GREETING, 421, "4.7.0",
     "[TSS04] Messages from 192.0.2.1 temporarily deferred", 0, false, 0, DLV_FATE_DEFERRED, 421,
     "4.7.0", "spam-related", 0, SHP_A_BACKOFF,
     "mta5.am0.yahoodns.net[127.0.0.9]:25 greeting: 421 [TSS04]", 4, "mta5.am0.yahoodns.net"},
    {"greeting TSS04 from a host not Yahoo's", "yahoo.com", false, DLV_STAGE_GREETING, 421, "4.7.0",
     "[TSS04] Messages from 192.0.2.1 temporarily deferred", 0, false, 0, DLV_FATE_DEFERRED, 421,
     "4.7.0", "policy-related", 0, SHP_A_BACKOFF, "mx.test[127.0.0.9]:25 greeting: 421 [TSS04]", 4,
     NULL},
    {"greeting 554 defers", "example.org", false, DLV_STAGE_GREETING, 554, "", "no service", 0,
     false, 0, DLV_FATE_DEFERRED, 554, "5.0.0", "other", 0, 0,
     "mx.test[127.0.0.9]:25 greeting: 554 no service", 5, NULL},
    {"EHLO after STARTTLS 550", "example.org", false, DLV_STAGE_EHLO_TLS, 550, "5.7.0", "go away",
     0, false, 0, DLV_FATE_DEFERRED, 550, "5.7.0", "policy-related", 0, 0,
     "mx.test[127.0.0.9]:25 EHLO: 550 go away", 5, NULL},
    {"HELO 501", "example.org", false, DLV_STAGE_HELO, 501, "5.5.4", "bad HELO", 0, false, 0,
     DLV_FATE_DEFERRED, 501, "5.5.4", "protocol-errors", 0, 0, "HELO: 501 bad HELO", 5, NULL},
    {"connect refused", "example.org", false, DLV_STAGE_CONNECT, 0, "4.4.1",
     "connect to mx.test[127.0.0.9]:25: connection refused", 0, false, 0, DLV_FATE_DEFERRED, 0,
     "4.4.1", "no-answer-from-host", 0, 0, "connection refused", 0, NULL},

    /* failures decided here */
    {"SMTPUTF8 not offered", "example.org", false, DLV_STAGE_LOCAL, 0, "5.6.7",
     "SMTPUTF8 required (non-ASCII sender address) but not offered by mx[ip]", 0, false, 0,
     DLV_FATE_BOUNCED, 0, "5.6.7", "content-related", 0, 0, "SMTPUTF8", 0, NULL},
    {"DKIM failure in backoff", "p.example", true, DLV_STAGE_LOCAL, 0, "4.3.0",
     "DKIM signing failed (key)", 0, false, 0, DLV_FATE_DEFERRED, 0, "4.3.0", "bad-configuration",
     BACKOFF_RETRY, 0, "DKIM", 0, NULL},
    {"null MX", "example.org", false, DLV_STAGE_DEST, 556, "5.1.10",
     "Domain example.org does not accept mail (null MX, RFC 7505)", 0, false, 0, DLV_FATE_BOUNCED,
     556, "5.1.10", "bad-domain", 0, 0, "null MX", 0, NULL},
    {"DNS temporary failure", "example.org", false, DLV_STAGE_DEST, 0, "4.4.3",
     "DNS lookup of MX for example.org failed: SERVFAIL", 0, false, 0, DLV_FATE_DEFERRED, 0,
     "4.4.3", "routing-errors", 0, 0, "SERVFAIL", 0, NULL},
    {"NXDOMAIN", "example.org", false, DLV_STAGE_DEST, 0, "5.1.2", "Host or domain name not found",
     0, false, 0, DLV_FATE_BOUNCED, 0, "5.1.2", "bad-domain", 0, 0, "not found", 0, NULL},
    {"a suspended provider's backlog", "p.example", true, DLV_STAGE_DEST, 0, "4.7.0",
     "provider p suspended by shaping rule", 0, false, 0, DLV_FATE_DEFERRED, 0, "4.7.0",
     "policy-related", 1893456000, 0, "suspended", 0, NULL},
    {"MTA-STS: no MX matches", "example.org", false, DLV_STAGE_DEST, 0, "4.7.5",
     "MTA-STS: no MX host matches the policy of example.org (MX: mx.test)", 0, false, 0,
     DLV_FATE_DEFERRED, 0, "4.7.5", "policy-related", 0, 0, "MTA-STS", 0, NULL},
};

static void judge_row(const row_t *w)
{
    char err[512] = "";
    shp_conf_t *c = NULL;
    if (shp_conf_parse(NULL, "own.conf", own_conf, &c, err, sizeof(err)) != 0)
        fail_msg("shaping: %s", err);
    dlv_shaping_t *sh = dlv_shaping_new(c, NULL);
    shp_provider_t *pv = shp_provider_get(sh, shp_match_domain(sh->sh_conf, w->domain), w->domain);
    shp_queue_t *q = &pv->pv_q[0];
    if (w->in_backoff)
        shp_queue_backoff(q, "test", clock_mono_us());
    dlv_reply_t r = {.rp_stage = w->stage,
                     .rp_code = w->code,
                     .rp_status = w->status,
                     .rp_text = w->text,
                     .rp_domain = w->domain,
                     .rp_mx = w->mx ? w->mx : "mx.test",
                     .rp_mx_ip = "127.0.0.9",
                     .rp_port = 25,
                     .rp_q = w->stage == DLV_STAGE_DEST ? NULL : q,
                     .rp_accepted = w->accepted,
                     .rp_mail_refused = w->mail_refused,
                     .rp_retry_at = w->retry_hint ? w->retry_hint : w->retry};
    uint64_t before = clock_now_s();
    dlv_verdict_t v;
    dlv_judge(&r, &v);
    uint64_t after = clock_now_s();
    const dlv_result_t *res = &v.v_res;
    if (res->rs_fate != w->fate)
        fail_msg("%s: fate %d, want %d", w->name, res->rs_fate, w->fate);
    if (w->rec_status != NULL) {
        if (res->rs_code != w->rec_code || strcmp(res->rs_status, w->rec_status) != 0)
            fail_msg("%s: recorded %d %s, want %d %s", w->name, res->rs_code, res->rs_status,
                     w->rec_code, w->rec_status);
    }
    if ((res->rs_category == NULL) != (w->category == NULL) ||
        (w->category && strcmp(res->rs_category, w->category) != 0))
        fail_msg("%s: category %s, want %s", w->name, res->rs_category ? res->rs_category : "none",
                 w->category ? w->category : "none");
    if (w->text_has && strstr(v.v_text, w->text_has) == NULL)
        fail_msg("%s: text \"%s\" lacks \"%s\"", w->name, v.v_text, w->text_has);
    if (w->fate == DLV_FATE_NONE && v.v_text[0] != '\0')
        fail_msg("%s: not an outcome, yet a text \"%s\"", w->name, v.v_text);
    if (v.v_signal != w->signal)
        fail_msg("%s: signal %d, want %d", w->name, v.v_signal, w->signal);
    if (w->retry == BACKOFF_RETRY) {
        uint64_t bo = q->q_lim.l_bo_retry;
        if (bo == 0 || res->rs_retry_at < before + bo || res->rs_retry_at > after + bo)
            fail_msg("%s: retry %llu, want now + %llu", w->name,
                     (unsigned long long)res->rs_retry_at, (unsigned long long)bo);
    } else if (res->rs_retry_at != w->retry) {
        fail_msg("%s: retry %llu, want %llu", w->name, (unsigned long long)res->rs_retry_at,
                 (unsigned long long)w->retry);
    }
    uint64_t dlv = atomic_load(&q->q_delivered), dfr = atomic_load(&q->q_deferred),
             bnc = atomic_load(&q->q_bounced);
    int counted = dlv ? 2 : dfr ? 4 : bnc ? 5 : 0;
    if (counted != w->counted || dlv + dfr + bnc > 1)
        fail_msg("%s: the queue counted %llu/%llu/%llu, want kind %d once", w->name,
                 (unsigned long long)dlv, (unsigned long long)dfr, (unsigned long long)bnc,
                 w->counted);
    shp_provider_put(pv);
    dlv_shaping_free(sh);
}

static void test_judge_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(rows); i++)
        judge_row(&rows[i]);
}

/* One reply, one count: the judge is the only door to the provider's
 * response rules, and a reply that decides nothing leaves no trace in
 * them (last_response included). */
static void test_last_response(void **state)
{
    (void)state;
    char err[512] = "";
    shp_conf_t *c = NULL;
    assert_int_equal(shp_conf_parse(NULL, "own.conf", own_conf, &c, err, sizeof(err)), 0);
    dlv_shaping_t *sh = dlv_shaping_new(c, NULL);
    shp_provider_t *pv =
        shp_provider_get(sh, shp_match_domain(sh->sh_conf, "p.example"), "p.example");
    shp_queue_t *q = &pv->pv_q[0];
    dlv_reply_t r = {.rp_stage = DLV_STAGE_DATA,
                     .rp_code = 554,
                     .rp_status = "5.5.1",
                     .rp_text = "no valid recipients",
                     .rp_domain = "p.example",
                     .rp_q = q};
    dlv_verdict_t v;
    dlv_judge(&r, &v);
    assert_string_equal(q->q_last, "");
    r.rp_stage = DLV_STAGE_GREETING;
    r.rp_code = 421;
    r.rp_status = "";
    r.rp_text = "please slow down";
    r.rp_mx = "mx.p.example";
    r.rp_mx_ip = "127.0.0.1";
    dlv_judge(&r, &v);
    /* the reply as the server said it, not the recorded text */
    assert_string_equal(q->q_last, "421 please slow down");
    assert_int_equal(atomic_load(&q->q_mode), SHP_BACKOFF);
    assert_string_equal(v.v_text, "mx.p.example[127.0.0.1]:0 greeting: 421 please slow down");
    shp_provider_put(pv);
    dlv_shaping_free(sh);
}

int main(void)
{
    log_init(LOG_WARN, NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_judge_table),
        cmocka_unit_test(test_last_response),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    dlv_rules_shutdown();
    return rc;
}
