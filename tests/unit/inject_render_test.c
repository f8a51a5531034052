/*
 * tests/unit/inject_render_test.c - the HTTP injection builder's text
 * parts (core/server/inject_mime.c) byte for byte: every kind of line end
 * becomes CRLF, and a body is 7bit only when it is ASCII, has no "=_" (the
 * boundaries' mark), no NUL and no line over 998 bytes - else
 * quoted-printable. The table pins the rendering that bench/run-http's
 * fast path (runs copied whole, memchr scans) must keep.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "core/server/inject_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Render {"text_body": text} for one recipient; the part's
 * Content-Transfer-Encoding and body (after the blank line that ends the
 * part's header) into cte / body. */
static void render_text(const char *text, char *cte, size_t ctelen, buf_t *body)
{
    json_object *root = json_object_new_object();
    json_object *rc = json_object_new_array(), *one = json_object_new_object();
    json_object_object_add(one, "email", json_object_new_string("r@x.test"));
    json_object_object_add(one, "substitutions", json_object_new_object());
    json_object_object_add(json_object_object_get(one, "substitutions"), "v",
                           json_object_new_string("V\nW"));
    json_object_array_add(rc, one);
    json_object *c = json_object_new_object(), *from = json_object_new_object();
    json_object_object_add(from, "email", json_object_new_string("f@x.test"));
    json_object_object_add(c, "from", from);
    json_object_object_add(c, "text_body", json_object_new_string(text));
    json_object_object_add(root, "envelope_sender", json_object_new_string("s@x.test"));
    json_object_object_add(root, "recipients", rc);
    json_object_object_add(root, "content", c);
    const char *js = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN);
    inj_limits_t lim = {.il_max_rcpts = 10, .il_max_msg = 1 << 20, .il_max_depth = 16};
    inj_err_t e = {0};
    inj_req_t *r = NULL;
    assert_int_equal(inj_parse(js, strlen(js), &lim, &r, &e), 0);
    inj_ctx_t cx = {.ic_hostname = "h.test",
                    .ic_client_ip = "127.0.0.1",
                    .ic_proto = "HTTP",
                    .ic_msgid = 1,
                    .ic_now = 1700000000};
    buf_t out;
    buf_init(&out, 0);
    bool eb = true;
    assert_int_equal(inj_render(r, 0, &cx, &out, &eb, &e), 0);
    assert_false(eb);
    buf_append(&out, "", 1);
    const char *t = strstr(out.b_data, "Content-Transfer-Encoding: ");
    assert_non_null(t);
    snprintf(cte, ctelen, "%.*s", (int)strcspn(t + 27, "\r"), t + 27);
    const char *b = strstr(t, "\r\n\r\n");
    assert_non_null(b);
    buf_reset(body);
    buf_append(body, b + 4, out.b_len - 1 - (size_t)(b + 4 - out.b_data));
    buf_free(&out);
    inj_req_free(r);
    json_object_put(root);
}

static void test_line_ends(void **state)
{
    (void)state;
    static const struct {
        const char *name, *in, *cte, *body;
    } cases[] = {
        {"lf", "a\nb\n", "7bit", "a\r\nb\r\n"},
        {"crlf", "a\r\nb\r\n", "7bit", "a\r\nb\r\n"},
        {"lone cr", "a\rb\r", "7bit", "a\r\nb\r\n"},
        {"mixed", "a\r\r\nb\n\rc", "7bit", "a\r\n\r\nb\r\n\r\nc\r\n"},
        {"no last line end", "abc", "7bit", "abc\r\n"},
        {"empty lines", "\n\n", "7bit", "\r\n\r\n"},
        {"blank only", "", "7bit", "\r\n"},
        {"value with lf", "<{{ v }}>\n", "7bit", "<V\r\nW>\r\n"},
        {"boundary mark", "x=_y\n", "quoted-printable", "x=3D_y\r\n"},
        {"lone brace", "a{b}c{\n", "7bit", "a{b}c{\r\n"},
        {"eight-bit", "caf\xc3\xa9\n", "quoted-printable", "caf=C3=A9\r\n"},
        {"trailing space", "a \xc3\xa9 \n", "quoted-printable", "a =C3=A9=20\r\n"},
        /* 60 escaped bytes: soft breaks after 25 escapes (75 columns) */
        {"soft breaks",
         "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
         "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"
         "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\n",
         "quoted-printable",
         "=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=\r\n=A9=C3="
         "A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=C3=A9=\r\n=C3=A9=C3=A9=C3="
         "A9=C3=A9=C3=A9\r\n"},
    };
    buf_t body;
    buf_init(&body, 0);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char cte[64];
        render_text(cases[i].in, cte, sizeof(cte), &body);
        buf_append(&body, "", 1);
        if (strcmp(cte, cases[i].cte) != 0 || strcmp(body.b_data, cases[i].body) != 0)
            fail_msg("%s: %s [%s], want %s [%s]", cases[i].name, cte, body.b_data, cases[i].cte,
                     cases[i].body);
    }
    buf_free(&body);
}

/* 998 bytes is a line 7bit may carry (RFC 5322 §2.1.1), 999 is not; the
 * long line anywhere in the body (first, middle, last without CRLF). */
static void test_line_length(void **state)
{
    (void)state;
    static const char *const shapes[] = {"%s\nshort\n", "short\n%s\nshort\n", "short\r\n%s"};
    buf_t body;
    buf_init(&body, 0);
    for (int len = 998; len <= 999; len++) {
        char line[1000], text[1100], cte[64];
        memset(line, 'x', (size_t)len);
        line[len] = '\0';
        for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
            snprintf(text, sizeof(text), shapes[s], line);
            render_text(text, cte, sizeof(cte), &body);
            if (strcmp(cte, len == 998 ? "7bit" : "quoted-printable") != 0)
                fail_msg("shape %zu, a line of %d: %s", s, len, cte);
            if (len == 998) { /* the line itself, intact */
                buf_append(&body, "", 1);
                assert_non_null(strstr(body.b_data, line));
            }
        }
    }
    buf_free(&body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_line_ends),
        cmocka_unit_test(test_line_length),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
