/*
 * control_proto_test.c - the control protocol helpers (core/base/ctlproto.c):
 * line framing with the 64 KiB limit, request parsing and its error texts,
 * response serialisation, and sluicectl's human sizes and durations.
 */
#include "core/base/base.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ framing */

static void test_line_next_cases(void **state)
{
    static const struct {
        const char *name;
        const char *in;
        size_t max;
        int rc;
        size_t line_len, used;
    } cases[] = {
        {"complete line", "{\"cmd\":\"status\"}\nrest", 100, 1, 16, 17},
        {"CRLF drops the CR", "abc\r\n", 100, 1, 3, 5},
        {"empty line", "\n", 100, 1, 0, 1},
        {"no newline yet", "abc", 100, 0, 0, 0},
        {"nothing", "", 100, 0, 0, 0},
        {"partial line over the limit", "abcdefg", 5, SL_ETOOLONG, 0, 0},
        {"partial line with room for its CR waits", "abcde\r", 5, 0, 0, 0},
        {"complete line over the limit", "abcdef\n", 5, SL_ETOOLONG, 0, 0},
        {"line exactly at the limit", "abcde\n", 5, 1, 5, 6},
        {"at the limit with CRLF", "abcde\r\n", 5, 1, 5, 7},
        {"partial line at the limit waits", "abcde", 5, 0, 0, 0},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        size_t ll = 0, used = 0;
        int rc = ctl_line_next(cases[i].in, strlen(cases[i].in), cases[i].max, &ll, &used);
        if (rc != cases[i].rc || (rc == 1 && (ll != cases[i].line_len || used != cases[i].used)))
            fail_msg("%s: rc=%d len=%zu used=%zu", cases[i].name, rc, ll, used);
    }
}

static void test_line_next_real_limit(void **state)
{
    size_t n = CTL_MAX_LINE + 10; /* no newline: over the limit */
    char *big = malloc(n);
    memset(big, 'x', n);
    size_t ll, used;
    assert_int_equal(ctl_line_next(big, n, CTL_MAX_LINE, &ll, &used), SL_ETOOLONG);
    big[CTL_MAX_LINE] = '\n';
    assert_int_equal(ctl_line_next(big, n, CTL_MAX_LINE, &ll, &used), 1);
    assert_int_equal(ll, CTL_MAX_LINE);
    assert_int_equal(used, CTL_MAX_LINE + 1);
    free(big);
}

/* ------------------------------------------------------------ requests */

static void test_request_parse_ok(void **state)
{
    static const char *const lines[] = {
        "{\"cmd\":\"status\"}",
        "  {\"cmd\":\"status\"}  ",
        "{\"cmd\":\"status\",\"extra\":[1,2,{\"a\":null}]}",
        "{\"limit\":5,\"cmd\":\"status\"}\r",
    };
    for (size_t i = 0; i < ARRAY_SIZE(lines); i++) {
        json_object *req = NULL;
        const char *cmd = NULL;
        char err[256] = "";
        int rc = ctl_request_parse(lines[i], strlen(lines[i]), &req, &cmd, err, sizeof(err));
        if (rc != 0)
            fail_msg("%s: %s", lines[i], err);
        assert_string_equal(cmd, "status");
        json_object_put(req);
    }
}

static void test_request_parse_errors(void **state)
{
    static const struct {
        const char *line;
        const char *error; /* a substring of the message */
    } cases[] = {
        {"{\"cmd\": nope}", "malformed JSON"},
        {"{\"cmd\":\"status\"", "unexpected end of data"},
        {"", "unexpected end of data"},
        {"[1,2]", "must be a JSON object"},
        {"\"status\"", "must be a JSON object"},
        {"{}", "missing \"cmd\""},
        {"{\"cmd\":5}", "missing \"cmd\""},
        {"{\"cmd\":\"status\"} junk", "trailing data"},
        {"{\"cmd\":\"a\"}{\"cmd\":\"b\"}", "trailing data"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        json_object *req = (json_object *)0x1;
        const char *cmd = NULL;
        char err[256] = "";
        int rc =
            ctl_request_parse(cases[i].line, strlen(cases[i].line), &req, &cmd, err, sizeof(err));
        if (rc != SL_EPARSE || strstr(err, cases[i].error) == NULL)
            fail_msg("%s: rc=%d err=\"%s\", wanted \"%s\"", cases[i].line, rc, err, cases[i].error);
        assert_ptr_equal(req, (json_object *)0x1); /* untouched on failure */
    }
}

/* Only the given length is read: a NUL-free buffer without terminator. */
static void test_request_parse_length_bounded(void **state)
{
    const char buf[] = "{\"cmd\":\"list\"}GARBAGE";
    json_object *req;
    const char *cmd;
    char err[128];
    assert_int_equal(ctl_request_parse(buf, 14, &req, &cmd, err, sizeof(err)), 0);
    assert_string_equal(cmd, "list");
    json_object_put(req);
}

/* ------------------------------------------------------------ responses */

static void test_response_lines(void **state)
{
    buf_t b;
    buf_init(&b, 0);
    ctl_error_append(&b, "unknown command \"foo\"");
    json_object *o = json_object_new_object();
    json_object_object_add(o, "ok", json_object_new_boolean(1));
    json_object_object_add(o, "path", json_object_new_string("/var/run/x.sock"));
    ctl_response_append(&b, o);
    json_object_put(o);
    buf_append(&b, "", 1);
    assert_string_equal(b.b_data, "{\"ok\":false,\"error\":\"unknown command \\\"foo\\\"\"}\n"
                                  "{\"ok\":true,\"path\":\"/var/run/x.sock\"}\n");
    buf_free(&b);
}

/* ------------------------------------------------------------ human forms */

static void test_fmt_bytes(void **state)
{
    static const struct {
        uint64_t n;
        const char *want;
    } cases[] = {
        {0, "0 B"},
        {1023, "1023 B"},
        {1024, "1.0 KiB"},
        {1536, "1.5 KiB"},
        {1048575, "1.0 MiB"}, /* not "1024.0 KiB" */
        {1300000, "1.2 MiB"},
        {(uint64_t)1288490189, "1.2 GiB"},
        {64ull << 30, "64.0 GiB"},
        {UINT64_MAX, "16.0 EiB"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char dst[32];
        ctl_fmt_bytes(cases[i].n, dst, sizeof(dst));
        if (strcmp(dst, cases[i].want) != 0)
            fail_msg("%llu: got \"%s\", wanted \"%s\"", (unsigned long long)cases[i].n, dst,
                     cases[i].want);
    }
}

static void test_fmt_duration(void **state)
{
    static const struct {
        uint64_t s;
        const char *want;
    } cases[] = {
        {0, "0s"},       {45, "45s"},      {60, "1m 0s"},     {302, "5m 2s"},
        {3723, "1h 2m"}, {86400, "1d 0h"}, {183600, "2d 3h"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char dst[32];
        ctl_fmt_duration(cases[i].s, dst, sizeof(dst));
        if (strcmp(dst, cases[i].want) != 0)
            fail_msg("%llu: got \"%s\", wanted \"%s\"", (unsigned long long)cases[i].s, dst,
                     cases[i].want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_line_next_cases),
        cmocka_unit_test(test_line_next_real_limit),
        cmocka_unit_test(test_request_parse_ok),
        cmocka_unit_test(test_request_parse_errors),
        cmocka_unit_test(test_request_parse_length_bounded),
        cmocka_unit_test(test_response_lines),
        cmocka_unit_test(test_fmt_bytes),
        cmocka_unit_test(test_fmt_duration),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
