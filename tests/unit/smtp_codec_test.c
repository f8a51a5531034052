/*
 * smtp_codec_test.c - tables of SMTP command lines, addresses, replies and
 * dot-stuffing cases against core/base/smtp.c, and the log escaping of
 * core/base/log.c (peer text on its way to a log line).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/base.h"

/* The case table leaves trailing fields out on purpose (zero = not checked). */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

typedef struct cmd_case {
    const char *name;
    const char *line;
    int rc; /* 0 or the error code */
    smtp_verb_t verb;
    const char *path; /* expected sc_path (NULL = not checked) */
    const char *arg;  /* expected sc_arg (NULL = not checked) */
    int nparams;      /* -1 = not checked */
    const char *p0key, *p0val, *p1key, *p1val;
    const char *reply; /* expected reply on error */
} cmd_case_t;

static const cmd_case_t cmd_cases[] = {
    {"ehlo", "EHLO client.example", 0, SMTP_CMD_EHLO, NULL, "client.example", 0},
    {"helo lower", "helo client", 0, SMTP_CMD_HELO, NULL, "client", 0},
    {"ehlo no arg", "EHLO", SL_EPARSE, SMTP_CMD_EHLO, NULL, NULL, -1,
     .reply = "501 5.5.4 Syntax: EHLO hostname"},
    {"ehlo literal", "EHLO [192.0.2.1]", 0, SMTP_CMD_EHLO, NULL, "[192.0.2.1]", 0},
    {"ehlo bare CR", "EHLO name\rX-Evil: 1", SL_EPARSE, SMTP_CMD_EHLO, NULL, NULL, -1,
     .reply = "501 5.5.2 Error: invalid EHLO hostname"},
    {"helo two words", "HELO a b", SL_EPARSE, SMTP_CMD_HELO, NULL, NULL, -1,
     .reply = "501 5.5.2 Error: invalid HELO hostname"},
    {"mail plain", "MAIL FROM:<a@b.example>", 0, SMTP_CMD_MAIL, "a@b.example", NULL, 0},
    {"mail lower", "mail from:<a@b.example>", 0, SMTP_CMD_MAIL, "a@b.example", NULL, 0},
    {"mail space after colon", "MAIL FROM: <a@b.example>", 0, SMTP_CMD_MAIL, "a@b.example", NULL,
     0},
    {"mail null sender", "MAIL FROM:<>", 0, SMTP_CMD_MAIL, "", NULL, 0},
    {"mail params", "MAIL FROM:<a@b> SIZE=1000 body=8bitmime SMTPUTF8", 0, SMTP_CMD_MAIL, "a@b",
     NULL, 3, "SIZE", "1000", "BODY", "8bitmime"},
    {"mail quoted local", "MAIL FROM:<\"john doe\"@b.example>", 0, SMTP_CMD_MAIL,
     "\"john doe\"@b.example", NULL, 0},
    {"mail quoted with >", "MAIL FROM:<\"a>b\"@c.example> RET=HDRS", 0, SMTP_CMD_MAIL,
     "\"a>b\"@c.example", NULL, 1, "RET", "HDRS"},
    {"mail source route", "MAIL FROM:<@relay.example,@r2.example:u@d.example>", 0, SMTP_CMD_MAIL,
     "u@d.example", NULL, 0},
    {"mail no brackets", "MAIL FROM:a@b.example", SL_EPARSE, SMTP_CMD_MAIL, NULL, NULL, -1,
     .reply = "501 5.1.7 Bad sender address syntax"},
    {"mail missing close", "MAIL FROM:<a@b.example", SL_EPARSE, SMTP_CMD_MAIL, NULL, NULL, -1,
     .reply = "501 5.1.7 Bad sender address syntax"},
    {"mail no from", "MAIL <a@b.example>", SL_EPARSE, SMTP_CMD_MAIL, NULL, NULL, -1,
     .reply = "501 5.5.4 Syntax: MAIL FROM:<address>"},
    {"mail junk after path", "MAIL FROM:<a@b>x", SL_EPARSE, SMTP_CMD_MAIL, NULL, NULL, -1,
     .reply = "501 5.5.4 Syntax: MAIL FROM:<address>"},
    {"mail bad param", "MAIL FROM:<a@b> =x", SL_EPARSE, SMTP_CMD_MAIL, NULL, NULL, -1,
     .reply = "501 5.5.4 Syntax error in parameters"},
    {"mail too many params", "MAIL FROM:<a@b> A B C D E F G H I", SL_EPARSE, SMTP_CMD_MAIL, NULL,
     NULL, -1, .reply = "501 5.5.4 Too many parameters"},
    {"rcpt plain", "RCPT TO:<u@d.example>", 0, SMTP_CMD_RCPT, "u@d.example", NULL, 0},
    {"rcpt notify orcpt", "RCPT TO:<u@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;u@d.example",
     0, SMTP_CMD_RCPT, "u@d.example", NULL, 2, "NOTIFY", "SUCCESS,FAILURE", "ORCPT",
     "rfc822;u@d.example"},
    {"rcpt empty", "RCPT TO:<>", SL_EPARSE, SMTP_CMD_RCPT, NULL, NULL, -1,
     .reply = "501 5.1.3 Bad recipient address syntax"},
    {"rcpt from keyword", "RCPT FROM:<u@d>", SL_EPARSE, SMTP_CMD_RCPT, NULL, NULL, -1,
     .reply = "501 5.5.4 Syntax: RCPT TO:<address>"},
    {"data", "DATA", 0, SMTP_CMD_DATA, NULL, "", 0},
    {"data with arg", "DATA now", SL_EPARSE, SMTP_CMD_DATA, NULL, NULL, -1,
     .reply = "501 5.5.4 Syntax error, no parameters allowed"},
    {"quit trailing space", "QUIT  ", 0, SMTP_CMD_QUIT, NULL, "", 0},
    {"noop arg", "NOOP hello", 0, SMTP_CMD_NOOP, NULL, "hello", 0},
    {"starttls", "starttls", 0, SMTP_CMD_STARTTLS, NULL, "", 0},
    {"auth plain ir", "AUTH PLAIN AGFsaWNlAHNlY3JldA==", 0, SMTP_CMD_AUTH, NULL,
     "PLAIN AGFsaWNlAHNlY3JldA==", 0},
    {"auth no mech", "AUTH", SL_EPARSE, SMTP_CMD_AUTH, NULL, NULL, -1,
     .reply = "501 5.5.4 Syntax error in parameters"},
    {"vrfy", "VRFY bob", 0, SMTP_CMD_VRFY, NULL, "bob", 0},
    {"unknown", "FOO bar", SL_EPARSE, SMTP_CMD_UNKNOWN, NULL, NULL, -1,
     .reply = "500 5.5.2 Error: command not recognized"},
    {"empty", "", SL_EPARSE, SMTP_CMD_UNKNOWN, NULL, NULL, -1,
     .reply = "500 5.5.2 Error: command not recognized"},
};

static void test_cmd_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(cmd_cases); i++) {
        const cmd_case_t *tc = &cmd_cases[i];
        char line[1024];
        snprintf(line, sizeof(line), "%s", tc->line);
        smtp_cmd_t c;
        const char *reply = NULL;
        int rc = smtp_cmd_parse(line, &c, &reply);
        print_message("case: %s\n", tc->name);
        assert_int_equal(rc, tc->rc);
        assert_int_equal(c.sc_verb, tc->verb);
        if (rc != 0) {
            assert_non_null(reply);
            assert_string_equal(reply, tc->reply);
            continue;
        }
        if (tc->path)
            assert_string_equal(c.sc_path, tc->path);
        if (tc->arg)
            assert_string_equal(c.sc_arg, tc->arg);
        if (tc->nparams >= 0)
            assert_int_equal(c.sc_nparams, tc->nparams);
        if (tc->p0key) {
            assert_string_equal(c.sc_pkey[0], tc->p0key);
            assert_string_equal(c.sc_pval[0], tc->p0val);
        }
        if (tc->p1key) {
            assert_string_equal(c.sc_pkey[1], tc->p1key);
            assert_string_equal(c.sc_pval[1], tc->p1val);
        }
    }
}

static void test_cmd_too_long(void **state)
{
    (void)state;
    char line[700];
    memcpy(line, "MAIL FROM:<", 11);
    memset(line + 11, 'a', 600);
    strcpy(line + 611, "@b>");
    smtp_cmd_t c;
    const char *reply = NULL;
    assert_int_equal(smtp_cmd_parse(line, &c, &reply), SL_ETOOLONG);
    assert_string_equal(reply, "500 5.5.2 Line too long");
    /* a value-less keyword: SMTPUTF8 */
    char l2[] = "MAIL FROM:<a@b> SMTPUTF8";
    assert_int_equal(smtp_cmd_parse(l2, &c, &reply), 0);
    assert_int_equal(c.sc_nparams, 1);
    assert_string_equal(c.sc_pkey[0], "SMTPUTF8");
    assert_null(c.sc_pval[0]);
}

static const struct {
    const char *addr;
    int rc;
    bool utf8;
} addr_cases[] = {
    {"user@example.com", 0, false},
    {"first.last+tag@sub.example.co.uk", 0, false},
    {"\"john doe\"@example.com", 0, false},
    {"\"a\\\"b\"@example.com", 0, false},
    {"user@[192.0.2.1]", 0, false},
    {"user@[IPv6:2001:db8::1]", 0, false},
    {"j\xc3\xb6rg@example.de", 0, true},
    {"user@b\xc3\xbc"
     "cher.example",
     0, true},
    {"", SL_EPARSE, false},
    {"user", SL_EPARSE, false},
    {"@example.com", SL_EPARSE, false},
    {"user@", SL_EPARSE, false},
    {".user@example.com", SL_EPARSE, false},
    {"user.@example.com", SL_EPARSE, false},
    {"us..er@example.com", SL_EPARSE, false},
    {"us er@example.com", SL_EPARSE, false},
    {"user@exa mple.com", SL_EPARSE, false},
    {"user@-example.com", SL_EPARSE, false},
    {"user@example-.com", SL_EPARSE, false},
    {"user@example..com", SL_EPARSE, false},
    {"user@example.com.", SL_EPARSE, false},
    {"\"unterminated@example.com", SL_EPARSE, false},
    {"a@b@c", SL_EPARSE, false},
};

static void test_addr_check(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_SIZE(addr_cases); i++) {
        bool utf8 = !addr_cases[i].utf8;
        print_message("addr: %s\n", addr_cases[i].addr);
        assert_int_equal(smtp_addr_check(addr_cases[i].addr, &utf8), addr_cases[i].rc);
        if (addr_cases[i].rc == 0)
            assert_int_equal(utf8, addr_cases[i].utf8);
    }
    /* length limits: local part 64, whole address 254 */
    char a[300];
    memset(a, 'x', 65);
    strcpy(a + 65, "@example.com");
    assert_int_equal(smtp_addr_check(a, NULL), SL_EPARSE);
    memset(a, 'x', 64);
    strcpy(a + 64, "@example.com");
    assert_int_equal(smtp_addr_check(a, NULL), 0);
    assert_string_equal(smtp_addr_domain("u@d.example"), "d.example");
    assert_string_equal(smtp_addr_domain("\"a@b\"@c.example"), "c.example");
    assert_string_equal(smtp_addr_domain("nodomain"), "");
}

static int feed(smtp_reply_t *r, const char *line, size_t max)
{
    return smtp_reply_feed(r, line, strlen(line), max);
}

static void test_reply_feed(void **state)
{
    (void)state;
    smtp_reply_t r;
    memset(&r, 0, sizeof(r));
    assert_int_equal(feed(&r, "250-mx.example Hello", 4096), 0);
    assert_int_equal(feed(&r, "250-PIPELINING", 4096), 0);
    assert_int_equal(feed(&r, "250 SIZE 1000", 4096), 1);
    assert_true(r.sr_done);
    assert_int_equal(r.sr_code, 250);
    assert_string_equal(r.sr_status, "");
    assert_string_equal(r.sr_text.b_data, "mx.example Hello\nPIPELINING\nSIZE 1000");

    /* enhanced status codes are split off every line; the next feed after
     * a complete reply starts a new one */
    assert_int_equal(feed(&r, "550-5.1.1 No such user\r\n", 4096), 0);
    assert_int_equal(feed(&r, "550 5.1.1 see https://x", 4096), 1);
    assert_int_equal(r.sr_code, 550);
    assert_string_equal(r.sr_status, "5.1.1");
    assert_string_equal(r.sr_text.b_data, "No such user\nsee https://x");

    /* a status of the wrong class is text, not a status */
    smtp_reply_reset(&r);
    assert_int_equal(feed(&r, "451 5.0.0 odd", 4096), 1);
    assert_string_equal(r.sr_status, "");
    assert_string_equal(r.sr_text.b_data, "5.0.0 odd");

    /* bare code */
    smtp_reply_reset(&r);
    assert_int_equal(feed(&r, "354", 4096), 1);
    assert_int_equal(r.sr_code, 354);

    /* mismatched codes, malformed lines */
    smtp_reply_reset(&r);
    assert_int_equal(feed(&r, "250-a", 4096), 0);
    assert_int_equal(feed(&r, "251 b", 4096), SL_EPARSE);
    smtp_reply_reset(&r);
    assert_int_equal(feed(&r, "25", 4096), SL_EPARSE);
    assert_int_equal(feed(&r, "hello", 4096), SL_EPARSE);
    assert_int_equal(feed(&r, "250x", 4096), SL_EPARSE);
    assert_int_equal(feed(&r, "650 no", 4096), SL_EPARSE);

    /* too long */
    smtp_reply_reset(&r);
    assert_int_equal(feed(&r, "250-0123456789", 16), 0);
    assert_int_equal(feed(&r, "250 0123456789", 16), SL_ETOOBIG);
    smtp_reply_free(&r);
}

static void check_stuff(const char *in, size_t len, const char *want, size_t wlen)
{
    buf_t b;
    buf_init(&b, 0);
    smtp_dot_stuff(&b, in, len);
    assert_int_equal(b.b_len, wlen);
    assert_memory_equal(b.b_data, want, b.b_len);
    buf_free(&b);
}

#define CHECK_STUFF(in, want) check_stuff(in, sizeof(in) - 1, want, sizeof(want) - 1)

static void test_dot_stuff(void **state)
{
    (void)state;
    CHECK_STUFF("a\r\nb\r\n", "a\r\nb\r\n.\r\n");
    CHECK_STUFF(".a\r\n..b\r\nc.\r\n", "..a\r\n...b\r\nc.\r\n.\r\n");
    CHECK_STUFF(".\r\n", "..\r\n.\r\n");
    CHECK_STUFF("a\nb\n", "a\r\nb\r\n.\r\n");  /* bare LF */
    CHECK_STUFF("a\n.b", "a\r\n..b\r\n.\r\n"); /* final line without CRLF */
    /* a bare CR ends a line too, and the line after it is dot-stuffed */
    CHECK_STUFF("x\ry\r\n", "x\r\ny\r\n.\r\n");
    CHECK_STUFF("first\r.\r\nMAIL FROM:<a@b>\r\n", "first\r\n..\r\nMAIL FROM:<a@b>\r\n.\r\n");
    CHECK_STUFF("a\r\r\n", "a\r\n\r\n.\r\n");
    CHECK_STUFF("a\r", "a\r\n.\r\n");
    CHECK_STUFF("\r.\r", "\r\n..\r\n.\r\n");
    CHECK_STUFF("a\n.\n", "a\r\n..\r\n.\r\n"); /* a bare-LF "end" is text */
    CHECK_STUFF("", ".\r\n");
    CHECK_STUFF("a\0b\n", "a\0b\r\n.\r\n");
}

static void test_line_check(void **state)
{
    (void)state;
    const char *reply = NULL;
    assert_int_equal(smtp_line_check("NOOP", 4, &reply), 0);
    assert_int_equal(smtp_line_check("RCPT TO:<a@b>\0garbage", 22, &reply), SL_EPARSE);
    assert_string_equal(reply, "500 5.5.2 Error: NUL character in command");
    assert_int_equal(smtp_line_check("\0", 1, &reply), SL_EPARSE);
}

static void test_helo_check(void **state)
{
    (void)state;
    static const char *const good[] = {
        "client.example",
        "localhost",
        "my_host-1.example.",
        "[127.0.0.1]",
        "[IPv6:::1]",
        "xn--bcher-kva.example",
        "b\xc3\xbc"
        "cher.example",
        "a",
    };
    static const char *const bad[] = {
        "",         "two words",    "(comment)",       "host\x1b[2J", "[1.2.3.4",
        "[]",       "[a]b]",        "[a\\b]",          "\xff\xfe",    "\xc3",
        "\xc0\x80", "\xed\xa0\x80", "name\rX-Evil: 1", "tab\there",   "semi;colon",
        "quote\"",
    };
    for (size_t i = 0; i < ARRAY_SIZE(good); i++)
        assert_int_equal(smtp_helo_check(good[i]), 0);
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        assert_int_equal(smtp_helo_check(bad[i]), SL_EPARSE);
    char longname[300];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(smtp_helo_check(longname), SL_EPARSE);
}

static void test_xtext_check(void **state)
{
    (void)state;
    assert_int_equal(smtp_xtext_check("QQ314159", false), 0);
    assert_int_equal(smtp_xtext_check("a+2Bb+3D", false), 0);
    assert_int_equal(smtp_xtext_check("a+20b", false), 0); /* space: printable */
    assert_int_equal(smtp_xtext_check("!~", false), 0);
    assert_int_equal(smtp_xtext_check("", false), SL_EPARSE);
    assert_int_equal(smtp_xtext_check("a+0D+0AX-Evil:+201", false), SL_EPARSE);
    assert_int_equal(smtp_xtext_check("a+0a", false), SL_EPARSE); /* lower-case hex */
    assert_int_equal(smtp_xtext_check("a+7F", false), SL_EPARSE);
    assert_int_equal(smtp_xtext_check("a+zz", false), SL_EPARSE);
    assert_int_equal(smtp_xtext_check("a+4", false), SL_EPARSE);
    assert_int_equal(smtp_xtext_check("a+", false), SL_EPARSE);
    assert_int_equal(smtp_xtext_check("a=b", false), SL_EPARSE);
    assert_int_equal(smtp_xtext_check("a b", false), SL_EPARSE);
    assert_int_equal(smtp_xtext_check("a\x01", false), SL_EPARSE);
    assert_int_equal(smtp_xtext_check("j\xc3\xb6rg", false), SL_EPARSE);
    assert_int_equal(smtp_xtext_check("j\xc3\xb6rg", true), 0);
    assert_int_equal(smtp_xtext_check("j\xc3rg", true), SL_EPARSE);
    assert_int_equal(smtp_orcpt_check("rfc822;bob@example.org", false), 0);
    assert_int_equal(smtp_orcpt_check("utf-8;j\xc3\xb6rg@example.org", true), 0);
    assert_int_equal(smtp_orcpt_check("rfc822;Bob+2Bx@example.org", false), 0);
    assert_int_equal(smtp_orcpt_check("bob@example.org", false), SL_EPARSE);
    assert_int_equal(smtp_orcpt_check(";bob@example.org", false), SL_EPARSE);
    assert_int_equal(smtp_orcpt_check("rfc 822;bob", false), SL_EPARSE);
    assert_int_equal(smtp_orcpt_check("rfc822;", false), SL_EPARSE);
    assert_int_equal(smtp_orcpt_check("rfc822;bob+0D+0A", false), SL_EPARSE);
}

static void check_esc(const char *in, size_t len, const char *want)
{
    char out[64];
    assert_string_equal(log_esc_buf(out, sizeof(out), in, len), want);
    assert_string_equal(log_escn(in, len), want);
}

#define CHECK_ESC(in, want) check_esc(in, sizeof(in) - 1, want)

static void test_log_esc(void **state)
{
    (void)state;
    CHECK_ESC("plain text 123 <a@b>", "plain text 123 <a@b>");
    CHECK_ESC("a\nb\rc\td", "a\\nb\\rc\\td");
    CHECK_ESC("2026-01-01 info\n2026-01-01 forged", "2026-01-01 info\\n2026-01-01 forged");
    CHECK_ESC("\x1b[2J\x07\x7f\x00x", "\\x1b[2J\\x07\\x7f\\x00x");
    CHECK_ESC("back\\slash \"q\"", "back\\\\slash \\\"q\\\"");
    CHECK_ESC("j\xc3\xb6rg", "j\\xc3\\xb6rg");
    assert_string_equal(log_esc(NULL), "");
    /* too long: cut, and said so */
    char out[8];
    assert_string_equal(log_esc_buf(out, sizeof(out), "abcdefghij", 10), "abcd...");
    assert_string_equal(log_esc_buf(out, sizeof(out), "abcdefg", 7), "abcdefg");
    assert_string_equal(log_esc_buf(out, sizeof(out), "\n\n\n\n", 4), "\\n\\n...");
    /* the ring: eight results usable at once */
    const char *r[8];
    char in[8][4];
    for (int i = 0; i < 8; i++) {
        snprintf(in[i], sizeof(in[i]), "%d\n", i);
        r[i] = log_esc(in[i]);
    }
    for (int i = 0; i < 8; i++) {
        char want[8];
        snprintf(want, sizeof(want), "%d\\n", i);
        assert_string_equal(r[i], want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cmd_table),  cmocka_unit_test(test_cmd_too_long),
        cmocka_unit_test(test_addr_check), cmocka_unit_test(test_reply_feed),
        cmocka_unit_test(test_dot_stuff),  cmocka_unit_test(test_line_check),
        cmocka_unit_test(test_helo_check), cmocka_unit_test(test_xtext_check),
        cmocka_unit_test(test_log_esc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
