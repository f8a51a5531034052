/*
 * delivery_mta_sts_test.c - MTA-STS (RFC 8461) pieces without a loop
 * (delivery/mta_sts_int.h): the _mta-sts TXT record and the choice among
 * several, the policy file parser, MX pattern matching, the checks on the
 * HTTP response (libcurl reads the HTTP itself: core/base/http_client.c,
 * tests/unit/http_client_test.c), and the TXT answer parser of
 * core/base/dns.c. Each a table of small named cases.
 */
#include "delivery/mta_sts_int.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* ------------------------------------------------------------ TXT record */

typedef struct {
    const char *name;
    const char *rec;
    int want;       /* 1, 0, SL_EPARSE */
    const char *id; /* want == 1 */
} txt_case_t;

static const txt_case_t txt_cases[] = {
    {"RFC example", "v=STSv1; id=20160831085700Z;", 1, "20160831085700Z"},
    {"no space, no trailing ;", "v=STSv1;id=abc123", 1, "abc123"},
    {"space before ;", "v=STSv1 ; id=x", 1, "x"},
    {"tabs", "v=STSv1;\tid=x\t", 1, "x"},
    {"extension field ignored", "v=STSv1; ext_1=a.b-c; id=z9", 1, "z9"},
    {"first id wins", "v=STSv1; id=first; id=second", 1, "first"},
    {"32-char id", "v=STSv1; id=0123456789abcdef0123456789ABCDEF", 1,
     "0123456789abcdef0123456789ABCDEF"},
    {"33-char id", "v=STSv1; id=0123456789abcdef0123456789ABCDEFx", SL_EPARSE, NULL},
    {"id with punctuation", "v=STSv1; id=2016-08-31", SL_EPARSE, NULL},
    {"empty id", "v=STSv1; id=", SL_EPARSE, NULL},
    {"no id", "v=STSv1;", SL_EPARSE, NULL},
    {"version alone", "v=STSv1", SL_EPARSE, NULL},
    {"field without =", "v=STSv1; id=x; junk", SL_EPARSE, NULL},
    {"no ; between fields", "v=STSv1 id=x", SL_EPARSE, NULL},
    {"not ours: SPF", "v=spf1 -all", 0, NULL},
    {"not ours: STSv10", "v=STSv10; id=x", 0, NULL},
    {"not ours: leading space", " v=STSv1; id=x", 0, NULL},
    {"not ours: lower case", "v=stsv1; id=x", 0, NULL},
    {"empty", "", 0, NULL},
};

static void test_txt_record(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(txt_cases) / sizeof(txt_cases[0]); i++) {
        const txt_case_t *c = &txt_cases[i];
        char id[STS_ID_MAX + 1] = "";
        int rc = sts_txt_record_parse(c->rec, id);
        if (rc != c->want)
            fail_msg("%s: \"%s\" gave %d, want %d", c->name, c->rec, rc, c->want);
        if (c->want == 1 && strcmp(id, c->id) != 0)
            fail_msg("%s: id \"%s\", want \"%s\"", c->name, id, c->id);
    }
}

static void test_txt_select(void **state)
{
    (void)state;
    char id[STS_ID_MAX + 1] = "", why[128];
    const char *one[] = {"v=spf1 -all", "v=STSv1; id=abc", "google-site-verification=x"};
    assert_int_equal(sts_txt_select(one, 3, id, why, sizeof(why)), 1);
    assert_string_equal(id, "abc");
    const char *two[] = {"v=STSv1; id=abc", "v=STSv1; id=def"};
    assert_int_equal(sts_txt_select(two, 2, id, why, sizeof(why)), 0);
    assert_non_null(strstr(why, "2 v=STSv1 records"));
    const char *valid_and_invalid[] = {"v=STSv1; id=abc", "v=STSv1; id=!"};
    assert_int_equal(sts_txt_select(valid_and_invalid, 2, id, why, sizeof(why)), 0);
    const char *invalid[] = {"v=STSv1"};
    assert_int_equal(sts_txt_select(invalid, 1, id, why, sizeof(why)), 0);
    assert_non_null(strstr(why, "invalid"));
    const char *none[] = {"v=spf1 -all"};
    assert_int_equal(sts_txt_select(none, 1, id, why, sizeof(why)), 0);
    assert_int_equal(sts_txt_select(NULL, 0, id, why, sizeof(why)), 0);
}

/* ------------------------------------------------------------ policy */

typedef struct {
    const char *name;
    const char *text;
    bool ok;
    sts_mode_t mode;
    uint32_t max_age;
    const char *mx;  /* patterns joined by "," */
    const char *why; /* !ok: part of the reason */
} pol_case_t;

static const pol_case_t pol_cases[] = {
    {"RFC example, CRLF",
     "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
     "mx: backupmx.example.com\r\nmax_age: 604800\r\n",
     true, STS_MODE_ENFORCE, 604800, "mail.example.com,*.example.net,backupmx.example.com", NULL},
    {"LF, no final newline", "version: STSv1\nmode: testing\nmx: mx.a.test\nmax_age: 86400", true,
     STS_MODE_TESTING, 86400, "mx.a.test", NULL},
    {"any order, no space after :", "max_age:1\nmx:MX.A.Test.\nmode:enforce\nversion:STSv1\n", true,
     STS_MODE_ENFORCE, 1, "mx.a.test", NULL},
    {"trailing white space", "version: STSv1 \nmode: enforce\t\nmx: mx.a.test  \nmax_age: 60 \n",
     true, STS_MODE_ENFORCE, 60, "mx.a.test", NULL},
    {"none without mx", "version: STSv1\nmode: none\nmax_age: 86400\n", true, STS_MODE_NONE, 86400,
     "", NULL},
    {"unknown key ignored", "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 5\nfoo: bar\n",
     true, STS_MODE_ENFORCE, 5, "a.test", NULL},
    {"first mode wins", "version: STSv1\nmode: testing\nmode: enforce\nmx: a.test\nmax_age: 5\n",
     true, STS_MODE_TESTING, 5, "a.test", NULL},
    {"max_age at the limit", "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 31557600\n", true,
     STS_MODE_ENFORCE, 31557600, "a.test", NULL},
    {"max_age 0", "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 0\n", true, STS_MODE_ENFORCE,
     0, "a.test", NULL},
    {"blank lines tolerated", "\nversion: STSv1\n\r\nmode: enforce\nmx: a.test\nmax_age: 5\n\n",
     true, STS_MODE_ENFORCE, 5, "a.test", NULL},
    {"max_age above a year", "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 31557601\n",
     false, 0, 0, NULL, "max_age"},
    {"max_age not a number", "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 1d\n", false, 0,
     0, NULL, "max_age"},
    {"max_age 11 digits", "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 00000000001\n",
     false, 0, 0, NULL, "max_age"},
    {"missing max_age", "version: STSv1\nmode: enforce\nmx: a.test\n", false, 0, 0, NULL,
     "missing max_age"},
    {"missing version", "mode: enforce\nmx: a.test\nmax_age: 5\n", false, 0, 0, NULL,
     "missing version"},
    {"wrong version", "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 5\n", false, 0, 0, NULL,
     "STSv1"},
    {"missing mode", "version: STSv1\nmx: a.test\nmax_age: 5\n", false, 0, 0, NULL, "missing mode"},
    {"unknown mode", "version: STSv1\nmode: Enforce\nmx: a.test\nmax_age: 5\n", false, 0, 0, NULL,
     "unknown mode"},
    {"enforce without mx", "version: STSv1\nmode: enforce\nmax_age: 5\n", false, 0, 0, NULL,
     "no mx"},
    {"testing without mx", "version: STSv1\nmode: testing\nmax_age: 5\n", false, 0, 0, NULL,
     "no mx"},
    {"two wildcards", "version: STSv1\nmode: enforce\nmx: *.*.a.test\nmax_age: 5\n", false, 0, 0,
     NULL, "mx pattern"},
    {"wildcard inside", "version: STSv1\nmode: enforce\nmx: mail.*.test\nmax_age: 5\n", false, 0, 0,
     NULL, "mx pattern"},
    {"empty label", "version: STSv1\nmode: enforce\nmx: a..test\nmax_age: 5\n", false, 0, 0, NULL,
     "mx pattern"},
    {"bare wildcard", "version: STSv1\nmode: enforce\nmx: *.\nmax_age: 5\n", false, 0, 0, NULL,
     "mx pattern"},
    {"empty mx", "version: STSv1\nmode: enforce\nmx:\nmax_age: 5\n", false, 0, 0, NULL,
     "mx pattern"},
    {"an HTML page", "<html><body>Not here</body></html>\n", false, 0, 0, NULL, "key: value"},
    {"empty", "", false, 0, 0, NULL, "missing version"},
};

static void test_policy_parse(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(pol_cases) / sizeof(pol_cases[0]); i++) {
        const pol_case_t *c = &pol_cases[i];
        sts_policy_t *p = NULL;
        char why[200] = "";
        int rc = sts_policy_parse(c->text, strlen(c->text), &p, why, sizeof(why));
        if (!c->ok) {
            if (rc != SL_EPARSE)
                fail_msg("%s: accepted", c->name);
            if (strstr(why, c->why) == NULL)
                fail_msg("%s: reason \"%s\" does not say \"%s\"", c->name, why, c->why);
            continue;
        }
        if (rc != 0)
            fail_msg("%s: refused: %s", c->name, why);
        if (p->sp_mode != c->mode || p->sp_max_age != c->max_age)
            fail_msg("%s: mode %d max_age %u", c->name, p->sp_mode, p->sp_max_age);
        char mx[512] = "";
        for (int k = 0; k < p->sp_nmx; k++)
            snprintf(mx + strlen(mx), sizeof(mx) - strlen(mx), "%s%s", k ? "," : "", p->sp_mx[k]);
        if (strcmp(mx, c->mx) != 0)
            fail_msg("%s: mx \"%s\", want \"%s\"", c->name, mx, c->mx);
        sts_policy_unref(p);
    }
}

static void test_policy_refcount(void **state)
{
    (void)state;
    const char *t = "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 5\n";
    sts_policy_t *p = NULL;
    char why[100];
    assert_int_equal(sts_policy_parse(t, strlen(t), &p, why, sizeof(why)), 0);
    assert_int_equal(p->sp_refs, 1);
    assert_ptr_equal(sts_policy_ref(p), p);
    sts_policy_unref(p);
    assert_int_equal(p->sp_refs, 1);
    sts_policy_unref(p); /* freed (ASan checks) */
    sts_policy_unref(NULL);
    assert_null(sts_policy_ref(NULL));
    assert_string_equal(sts_mode_name(STS_MODE_ENFORCE), "enforce");
    assert_string_equal(sts_mode_name(STS_MODE_TESTING), "testing");
    assert_string_equal(sts_mode_name(STS_MODE_NONE), "none");
}

/* ------------------------------------------------------------ MX patterns */

typedef struct {
    const char *pattern;
    const char *host;
    bool want;
} mx_case_t;

static const mx_case_t mx_cases[] = {
    /* RFC 8461 4.1 */
    {"mail.example.com", "mail.example.com", true},
    {"mail.example.com", "MAIL.Example.COM", true},
    {"mail.example.com", "mail.example.com.", true},
    {"mail.example.com", "mail.example.org", false},
    {"mail.example.com", "xmail.example.com", false},
    {"mail.example.com", "mail.example.co", false},
    {"*.example.com", "mx1.example.com", true},
    {"*.example.com", "MX1.EXAMPLE.COM.", true},
    {"*.example.com", "example.com", false},
    {"*.example.com", "a.b.example.com", false},
    {"*.example.com", ".example.com", false},
    {"*.example.com", "mx1.example.co", false},
    {"*.example.com", "mx1.xexample.com", false},
    {"*.example.com", "mx1example.com", false},
    {"*.a.test", "mx.a.test", true},
    {"mx.a.test", "", false},
    {"*.a.test", "", false},
};

static void test_mx_match(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(mx_cases) / sizeof(mx_cases[0]); i++) {
        const mx_case_t *c = &mx_cases[i];
        if (sts_mx_pattern_match(c->pattern, c->host) != c->want)
            fail_msg("\"%s\" vs \"%s\": want %s", c->pattern, c->host, c->want ? "match" : "none");
    }
    const char *t = "version: STSv1\nmode: enforce\nmx: mx1.a.test\nmx: *.b.test\nmax_age: 5\n";
    sts_policy_t *p = NULL;
    char why[100];
    assert_int_equal(sts_policy_parse(t, strlen(t), &p, why, sizeof(why)), 0);
    assert_true(sts_policy_mx_match(p, "mx1.a.test"));
    assert_true(sts_policy_mx_match(p, "x.b.test"));
    assert_false(sts_policy_mx_match(p, "mx2.a.test"));
    assert_false(sts_policy_mx_match(p, "b.test"));
    sts_policy_unref(p);
}

/* ------------------------------------------------------------ HTTP */

/* RFC 8461 3.3: 200 only (a redirect is not followed), text/plain with any
 * parameters. */
static const struct {
    const char *name;
    int status;
    const char *ct;
    int want;
    const char *why;
} resp_cases[] = {
    {"200 text/plain", 200, "text/plain", 0, NULL},
    {"parameters, case", 200, "TEXT/Plain; charset=utf-8", 0, NULL},
    {"a space before the parameter", 200, "text/plain ; charset=utf-8", 0, NULL},
    {"redirect", 301, "text/html", SL_EPARSE, "redirects are not followed"},
    {"not found", 404, "text/plain", SL_EPARSE, "HTTP status 404"},
    {"no response", 0, NULL, SL_EPARSE, "HTTP status 0"},
    {"text/html", 200, "text/html", SL_EPARSE, "not text/plain"},
    {"text/plainx", 200, "text/plainx", SL_EPARSE, "not text/plain"},
    {"no Content-Type", 200, NULL, SL_EPARSE, "no Content-Type"},
    {"empty Content-Type", 200, "", SL_EPARSE, "not text/plain"},
};

static void test_response_check(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(resp_cases) / sizeof(resp_cases[0]); i++) {
        char why[200] = "";
        int rc = sts_response_check(resp_cases[i].status, resp_cases[i].ct, why, sizeof(why));
        if (rc != resp_cases[i].want)
            fail_msg("%s: got %d (%s), want %d", resp_cases[i].name, rc, why, resp_cases[i].want);
        if (rc != 0 && strstr(why, resp_cases[i].why) == NULL)
            fail_msg("%s: reason \"%s\" does not say \"%s\"", resp_cases[i].name, why,
                     resp_cases[i].why);
    }
}

/* ------------------------------------------------------------ DNS TXT answer */

static size_t put_name(unsigned char *p, const char *name)
{
    size_t n = 0;
    while (*name) {
        const char *dot = strchr(name, '.');
        size_t l = dot ? (size_t)(dot - name) : strlen(name);
        p[n++] = (unsigned char)l;
        memcpy(p + n, name, l);
        n += l;
        name += l + (dot ? 1 : 0);
    }
    p[n++] = 0;
    return n;
}

/* An answer record at p (owner: a pointer to the question name). */
static size_t put_rr(unsigned char *p, int type, uint32_t ttl, const unsigned char *rd, size_t rdl)
{
    size_t n = 0;
    p[n++] = 0xc0;
    p[n++] = 12;
    p[n++] = (unsigned char)(type >> 8);
    p[n++] = (unsigned char)type;
    p[n++] = 0;
    p[n++] = 1; /* IN */
    p[n++] = (unsigned char)(ttl >> 24);
    p[n++] = (unsigned char)(ttl >> 16);
    p[n++] = (unsigned char)(ttl >> 8);
    p[n++] = (unsigned char)ttl;
    p[n++] = (unsigned char)(rdl >> 8);
    p[n++] = (unsigned char)rdl;
    memcpy(p + n, rd, rdl);
    return n + rdl;
}

static void test_dns_parse_txt(void **state)
{
    (void)state;
    unsigned char pkt[1024];
    memset(pkt, 0, 12);
    pkt[2] = 0x81;
    pkt[3] = 0x80;
    pkt[5] = 1; /* one question */
    pkt[7] = 4; /* four answers */
    size_t n = 12 + put_name(pkt + 12, "_mta-sts.a.test");
    pkt[n++] = 0;
    pkt[n++] = 16; /* TXT */
    pkt[n++] = 0;
    pkt[n++] = 1;
    /* 1: two character-strings, joined */
    static const unsigned char r1[] = "\x08v=STSv1;\x05id=42";
    n += put_rr(pkt + n, 16, 300, r1, sizeof(r1) - 1);
    /* 2: a CNAME in front, ignored */
    unsigned char cname[64];
    size_t cl = put_name(cname, "x.test");
    n += put_rr(pkt + n, 5, 10, cname, cl);
    /* 3: an empty string record */
    n += put_rr(pkt + n, 16, 120, (const unsigned char *)"\x00", 1);
    /* 4: a record with a NUL inside: left out */
    n += put_rr(pkt + n, 16, 60,
                (const unsigned char *)"\x03"
                                       "a\0b",
                4);
    char **txt = NULL;
    int cnt = -1;
    uint32_t ttl = 0;
    assert_int_equal(dns_parse_txt(pkt, (int)n, &txt, &cnt, &ttl), 0);
    assert_int_equal(cnt, 2);
    assert_string_equal(txt[0], "v=STSv1;id=42");
    assert_string_equal(txt[1], "");
    assert_int_equal(ttl, 120); /* the smallest TTL of the TXT records taken */
    dns_txt_array_free(txt, cnt);
    /* truncated in the middle of record 1: a parse error */
    assert_int_equal(dns_parse_txt(pkt, 12 + 21 + 14, &txt, &cnt, &ttl), SL_EPARSE);
    /* a character-string longer than its record */
    pkt[7] = 1;
    n = 12 + put_name(pkt + 12, "_mta-sts.a.test") + 4;
    n += put_rr(pkt + n, 16, 300, (const unsigned char *)"\x09short", 6);
    assert_int_equal(dns_parse_txt(pkt, (int)n, &txt, &cnt, &ttl), SL_EPARSE);
    /* no answer: 0 records, no array */
    pkt[7] = 0;
    n = 12 + put_name(pkt + 12, "_mta-sts.a.test") + 4;
    assert_int_equal(dns_parse_txt(pkt, (int)n, &txt, &cnt, &ttl), 0);
    assert_int_equal(cnt, 0);
    assert_null(txt);
    assert_int_equal(dns_parse_txt(pkt, 5, &txt, &cnt, &ttl), SL_EPARSE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_txt_record),    cmocka_unit_test(test_txt_select),
        cmocka_unit_test(test_policy_parse),  cmocka_unit_test(test_policy_refcount),
        cmocka_unit_test(test_mx_match),      cmocka_unit_test(test_response_check),
        cmocka_unit_test(test_dns_parse_txt),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
