/*
 * jsontext_test.c - peer text in JSON and on a terminal (core/base/jsontext.c):
 * a table of byte strings and what each of json_str_append, json_text_sanitize
 * and tty_str_append makes of them.
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

static const struct tcase {
    const char *name;
    const char *in; /* bytes, NUL-terminated (no case needs a NUL inside) */
    const char *json;
    const char *tty;
} cases[] = {
    {"plain ASCII", "250 2.0.0 ok", "\"250 2.0.0 ok\"", "250 2.0.0 ok"},
    {"quote and backslash", "a\"b\\c", "\"a\\\"b\\\\c\"", "a\"b\\c"},
    {"valid UTF-8 passes", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\xa7",
     "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\xa7\"", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\xa7"},
    {"Latin-1 byte", "caf\xe9 x", "\"caf\\ufffd x\"", "caf\\xe9 x"},
    {"Latin-1 byte at the end", "na\xefve\xe9", "\"na\\ufffdve\\ufffd\"", "na\\xefve\\xe9"},
    {"ESC sequence", "\x1b[31mred\x1b[0m", "\"\\u001b[31mred\\u001b[0m\"", "\\x1b[31mred\\x1b[0m"},
    {"OSC title with BEL", "\x1b]0;pwned\x07", "\"\\u001b]0;pwned\\u0007\"", "\\x1b]0;pwned\\x07"},
    {"DEL", "a\x7f", "\"a\\u007f\"", "a\\x7f"},
    {"C1 CSI encoded in UTF-8",
     "a\xc2\x9b"
     "2J",
     "\"a\\u009b2J\"", "a\\x9b2J"},
    {"raw C1 byte",
     "a\x9b"
     "2J",
     "\"a\\ufffd2J\"", "a\\x9b2J"},
    {"newline, CR and tab", "a\nb\rc\td", "\"a\\nb\\rc\\td\"", "a\\nb\\rc\\td"},
    {"bidi override", "x\xe2\x80\xaey", "\"x\\u202ey\"", "x\\u202ey"},
    {"line separator", "x\xe2\x80\xa8y", "\"x\\u2028y\"", "x\\u2028y"},
    {"overlong slash", "\xc0\xaf", "\"\\ufffd\\ufffd\"", "\\xc0\\xaf"},
    {"UTF-16 surrogate", "\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\"", "\\xed\\xa0\\x80"},
    {"above U+10FFFF", "\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\"",
     "\\xf4\\x90\\x80\\x80"},
    {"truncated sequence", "ab\xe2\x82", "\"ab\\ufffd\\ufffd\"", "ab\\xe2\\x82"},
};

static void test_json_str_append(void **state)
{
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        buf_t b;
        buf_init(&b, 0);
        json_str_append(&b, cases[i].in, strlen(cases[i].in));
        buf_append(&b, "", 1);
        if (strcmp(b.b_data, cases[i].json) != 0)
            fail_msg("%s: got %s, wanted %s", cases[i].name, b.b_data, cases[i].json);
        /* json-c reads it back (a strict parser would too: no raw controls) */
        json_object *o = json_tokener_parse(b.b_data);
        if (o == NULL || !json_object_is_type(o, json_type_string))
            fail_msg("%s: json-c cannot parse %s", cases[i].name, b.b_data);
        json_object_put(o);
        buf_free(&b);
    }
}

/* json-c's own serialisation passes bytes >= 0x80 and DEL through: the
 * sanitizer gives the same string as json_str_append. */
static void test_json_text_sanitize(void **state)
{
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "text", json_object_new_string(cases[i].in));
        json_object_object_add(o, "n", json_object_new_int(7));
        const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
                                                              JSON_C_TO_STRING_NOSLASHESCAPE);
        buf_t b;
        buf_init(&b, 0);
        json_text_sanitize(&b, s, strlen(s));
        buf_append(&b, "", 1);
        char *want = xasprintf("{\"text\":%s,\"n\":7}", cases[i].json);
        if (strcmp(b.b_data, want) != 0)
            fail_msg("%s: got %s, wanted %s", cases[i].name, b.b_data, want);
        free(want);
        buf_free(&b);
        json_object_put(o);
    }
}

static void test_json_text_sanitize_structure(void **state)
{
    /* keys, escaped quotes inside strings, nested values, \u escapes kept */
    const char *in = "{\"k\\\"\xe9\":[\"\\u00e9\",\"a\\\\\",\"\x1b\"],\"x\":null}";
    const char *want = "{\"k\\\"\\ufffd\":[\"\\u00e9\",\"a\\\\\",\"\\u001b\"],\"x\":null}";
    buf_t b;
    buf_init(&b, 0);
    json_text_sanitize(&b, in, strlen(in));
    buf_append(&b, "", 1);
    assert_string_equal(b.b_data, want);
    buf_free(&b);
}

static void test_tty_str_append(void **state)
{
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        buf_t b;
        buf_init(&b, 0);
        tty_str_append(&b, cases[i].in, strlen(cases[i].in), false);
        buf_append(&b, "", 1);
        if (strcmp(b.b_data, cases[i].tty) != 0)
            fail_msg("%s: got %s, wanted %s", cases[i].name, b.b_data, cases[i].tty);
        buf_free(&b);
    }
    buf_t b;
    buf_init(&b, 0);
    tty_str_append(&b, "a 1\nb\x1b 2\n", 9, true); /* metrics text keeps its lines */
    buf_append(&b, "", 1);
    assert_string_equal(b.b_data, "a 1\nb\\x1b 2\n");
    buf_free(&b);
}

static void test_time_rfc3339(void **state)
{
    char dst[32];
    assert_string_equal(time_fmt_rfc3339(0, dst, sizeof(dst)), "1970-01-01T00:00:00.000Z");
    assert_string_equal(time_fmt_rfc3339(1795774530123456ull, dst, sizeof(dst)),
                        "2026-11-27T10:15:30.123Z");
    uint64_t us = 0;
    assert_int_equal(time_parse_rfc3339("2026-11-27T10:15:30.123Z", &us), 0);
    assert_int_equal(us, 1795774530123000ull);
    assert_int_equal(time_parse_rfc3339("2026-11-27T10:15:30Z", &us), 0);
    assert_int_equal(us, 1795774530000000ull);
    assert_int_equal(time_parse_rfc3339("2026-11-27T10:15:30.1234567Z", &us), 0);
    assert_int_equal(us, 1795774530123456ull);
    static const char *const bad[] = {"",
                                      "2026-11-27",
                                      "2026-11-27T10:15:30",
                                      "2026-11-27T10:15:30.Z",
                                      "2026-11-27T10:15:30+01:00",
                                      "1796219990"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        if (time_parse_rfc3339(bad[i], &us) != SL_EPARSE)
            fail_msg("\"%s\" parsed", bad[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_str_append),
        cmocka_unit_test(test_json_text_sanitize),
        cmocka_unit_test(test_json_text_sanitize_structure),
        cmocka_unit_test(test_tty_str_append),
        cmocka_unit_test(test_time_rfc3339),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
