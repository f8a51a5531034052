/*
 * tests/unit/delivery_mime7bit_test.c - delivery/mime7bit.c: the 8-bit to
 * 7-bit conversion for servers without 8BITMIME.
 *
 * Golden files live in $SLUICE_SRC/tests/unit/mime7bit: NAME.in is a
 * message as stored, NAME.ref what mime7_convert() makes of it (checked by
 * hand, and by Python's email package in tests/e2e/test_peers_mime.py).
 * MIME7_WRITE_REFS=1 rewrites the references from the current code (then
 * read the diff). Beside them: cases that must fail (5.6.3), the
 * quoted-printable round trip against a decoder written here, and
 * properties every conversion has (7-bit output, a second conversion
 * changes nothing).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "delivery/mime7bit_int.h"

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    buf_t b;
    buf_init(&b, 4096);
    char tmp[4096];
    size_t n;
    while ((n = fread(tmp, 1, sizeof(tmp), f)) > 0)
        buf_append(&b, tmp, n);
    fclose(f);
    return buf_steal(&b, len);
}

static char *golden_path(const char *name, const char *ext)
{
    const char *src = getenv("SLUICE_SRC");
    return xasprintf("%s/tests/unit/mime7bit/%s.%s", src ? src : ".", name, ext);
}

static void check_equal_bytes(const char *what, const char *got, size_t glen, const char *want,
                              size_t wlen)
{
    if (glen != wlen || memcmp(got, want, glen) != 0)
        fail_msg("%s: got %zu bytes \"%.*s\", want %zu bytes \"%.*s\"", what, glen, (int)glen, got,
                 wlen, (int)wlen, want);
}

/* Properties of any successful conversion: nothing 8-bit left, no line
 * longer than 998 characters, and converting again changes nothing. */
static void check_properties(const char *what, const char *out, size_t len)
{
    if (mime7_has_8bit(out, len))
        fail_msg("%s: 8-bit byte left in the output", what);
    size_t col = 0;
    for (size_t i = 0; i < len; i++) {
        col = out[i] == '\n' ? 0 : col + 1;
        if (col > 998)
            fail_msg("%s: a line longer than 998 characters", what);
    }
    buf_t again;
    buf_init(&again, 0);
    char why[200];
    assert_int_equal(mime7_convert(out, len, &again, why, sizeof(why)), 0);
    assert_int_equal(again.b_len, 0);
    buf_free(&again);
}

/* ---------------------------------------------------------------- golden */

static const char *const golden_ok[] = {
    "plain_no_mime",         "text_8bit_in_place", "long_lines",
    "multipart_alternative", "nested_rfc822",      "digest",
};

static void test_golden(void **state)
{
    (void)state;
    bool write = getenv("MIME7_WRITE_REFS") && strcmp(getenv("MIME7_WRITE_REFS"), "1") == 0;
    for (size_t c = 0; c < ARRAY_SIZE(golden_ok); c++) {
        const char *name = golden_ok[c];
        char *p = golden_path(name, "in");
        size_t len;
        char *msg = read_file(p, &len);
        if (!msg)
            fail_msg("missing golden file %s (set SLUICE_SRC)", p);
        free(p);
        buf_t out;
        buf_init(&out, 0);
        char why[200] = "";
        int rc = mime7_convert(msg, len, &out, why, sizeof(why));
        if (rc != 1)
            fail_msg("%s: mime7_convert returned %d (%s)", name, rc, why);
        p = golden_path(name, "ref");
        if (write) {
            FILE *f = fopen(p, "wb");
            assert_non_null(f);
            assert_int_equal(fwrite(out.b_data, 1, out.b_len, f), out.b_len);
            fclose(f);
        }
        size_t rlen;
        char *ref = read_file(p, &rlen);
        if (!ref)
            fail_msg("missing golden file %s", p);
        free(p);
        check_equal_bytes(name, out.b_data, out.b_len, ref, rlen);
        check_properties(name, out.b_data, out.b_len);
        free(ref);
        buf_free(&out);
        free(msg);
    }
}

static void test_seven_bit_unchanged(void **state)
{
    (void)state;
    char *p = golden_path("seven_bit", "in");
    size_t len;
    char *msg = read_file(p, &len);
    free(p);
    assert_non_null(msg);
    buf_t out;
    buf_init(&out, 0);
    char why[200];
    assert_int_equal(mime7_convert(msg, len, &out, why, sizeof(why)), 0);
    assert_int_equal(out.b_len, 0);
    buf_free(&out);
    free(msg);
}

/* ---------------------------------------------------------------- failures */

static const struct {
    const char *name;
    const char *why;
} golden_err[] = {
    {"err_header", "8-bit characters in a header field"},
    {"err_part_header", "8-bit characters in a header field"},
    {"err_global", "8-bit characters in a message/global part"},
    {"err_base64", "8-bit characters in a part encoded base64"},
    {"err_preamble", "8-bit characters in a multipart preamble"},
    {"err_no_boundary", "8-bit content in a multipart without a boundary"},
};

static void test_cannot_convert(void **state)
{
    (void)state;
    for (size_t c = 0; c < ARRAY_SIZE(golden_err); c++) {
        char *p = golden_path(golden_err[c].name, "in");
        size_t len;
        char *msg = read_file(p, &len);
        if (!msg)
            fail_msg("missing golden file %s (set SLUICE_SRC)", p);
        free(p);
        buf_t out;
        buf_init(&out, 0);
        char why[200] = "";
        int rc = mime7_convert(msg, len, &out, why, sizeof(why));
        if (rc != SL_EPARSE || strcmp(why, golden_err[c].why) != 0)
            fail_msg("%s: rc %d why \"%s\", want SL_EPARSE \"%s\"", golden_err[c].name, rc, why,
                     golden_err[c].why);
        buf_free(&out);
        free(msg);
    }
}

static void test_too_deep(void **state)
{
    (void)state;
    buf_t m;
    buf_init(&m, 0);
    buf_append_str(&m, "MIME-Version: 1.0\r\n");
    for (int i = 0; i < MIME7_MAX_DEPTH + 2; i++)
        buf_printf(&m, "Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n", i, i);
    buf_append_str(&m, "\r\n\xc3\xa9\r\n");
    buf_t out;
    buf_init(&out, 0);
    char why[200] = "";
    assert_int_equal(mime7_convert(m.b_data, m.b_len, &out, why, sizeof(why)), SL_EPARSE);
    assert_string_equal(why, "MIME parts nested too deeply");
    buf_free(&out);
    buf_free(&m);
}

/* ---------------------------------------------------------------- round trip */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* RFC 2045 6.7 decoding, strict: fails the test on anything an encoder
 * must not produce (lower-case hex, a line over 76, white space before a
 * line break). */
static void qp_decode(const char *p, size_t n, buf_t *out)
{
    size_t ls = 0;
    while (ls < n) {
        const char *nl = memchr(p + ls, '\n', n - ls);
        size_t le = nl ? (size_t)(nl - p) + 1 : n;
        size_t ce = nl ? le - 2 : n; /* CRLF */
        if (nl)
            assert_true(le >= 2 && p[le - 2] == '\r');
        assert_true(ce - ls <= 76);
        if (ce > ls)
            assert_false(p[ce - 1] == ' ' || p[ce - 1] == '\t');
        bool soft = ce > ls && p[ce - 1] == '=';
        for (size_t i = ls; i < (soft ? ce - 1 : ce); i++) {
            if (p[i] == '=') {
                assert_true(i + 2 < (soft ? ce - 1 : ce));
                int hi = hexval(p[i + 1]), lo = hexval(p[i + 2]);
                assert_true(hi >= 0 && lo >= 0);
                char c = (char)(hi * 16 + lo);
                buf_append(out, &c, 1);
                i += 2;
            } else {
                buf_append(out, p + i, 1);
            }
        }
        if (nl && !soft)
            buf_append(out, "\r\n", 2);
        ls = le;
    }
}

static void test_qp_round_trip(void **state)
{
    (void)state;
    /* every byte value but CR and LF, in lines of varied lengths, with
     * white space and '=' at the cut points */
    buf_t body;
    buf_init(&body, 0);
    unsigned seed = 12345;
    for (int line = 0; line < 300; line++) {
        int len = (int)(seed % 200);
        for (int i = 0; i < len; i++) {
            seed = seed * 1103515245 + 12345;
            unsigned char c = (unsigned char)(seed >> 16);
            if (c == '\r' || c == '\n')
                c = (i % 3) ? ' ' : '=';
            buf_append(&body, (const char *)&c, 1);
        }
        buf_append_str(&body, line % 7 == 0 ? " \r\n" : line % 5 == 0 ? "\t\r\n" : "\r\n");
        seed = seed * 1103515245 + 12345;
    }
    buf_append_str(&body, "\xc3\xa9 end without a line break ");
    buf_t msg;
    buf_init(&msg, 0);
    buf_append_str(&msg, "Subject: qp\r\nContent-Type: text/plain; charset=x-binary\r\n\r\n");
    size_t hlen = msg.b_len;
    buf_append(&msg, body.b_data, body.b_len);
    buf_t out;
    buf_init(&out, 0);
    char why[200] = "";
    assert_int_equal(mime7_convert(msg.b_data, msg.b_len, &out, why, sizeof(why)), 1);
    check_properties("qp round trip", out.b_data, out.b_len);
    const char *want_hdr =
        "Subject: qp\r\nContent-Type: text/plain; charset=x-binary\r\n"
        "MIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n";
    size_t wh = strlen(want_hdr);
    assert_true(out.b_len > wh);
    check_equal_bytes("header", out.b_data, wh, want_hdr, wh);
    buf_t dec;
    buf_init(&dec, 0);
    qp_decode(out.b_data + wh, out.b_len - wh, &dec);
    check_equal_bytes("decoded", dec.b_data, dec.b_len, msg.b_data + hlen, msg.b_len - hlen);
    buf_free(&dec);
    buf_free(&out);
    buf_free(&msg);
    buf_free(&body);
}

static void test_header_len(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        size_t want;
    } cases[] = {
        {"A: b\r\n\r\nbody", 8}, {"A: b\n\nbody", 6},        {"\r\nbody", 2},
        {"A: b\r\n c\r\n", 10},  {"A: b\r\n \r\n\r\nx", 11}, {"", 0},
        {"no blank line", 13},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
        if (mime7_header_len(cases[i].in, strlen(cases[i].in)) != cases[i].want)
            fail_msg("case %zu: got %zu, want %zu", i,
                     mime7_header_len(cases[i].in, strlen(cases[i].in)), cases[i].want);
}

/* mime7_has_8bit (word at a time) against the obvious loop: one 8-bit
 * byte at every position of every length up to 100, at every alignment */
static void test_has_8bit(void **state)
{
    (void)state;
    char buf[128];
    for (size_t off = 0; off < 8; off++) {
        for (size_t n = 0; n <= 100; n++) {
            memset(buf, 'a', sizeof(buf));
            assert_false(mime7_has_8bit(buf + off, n));
            for (size_t k = 0; k < n; k++) {
                buf[off + k] = (char)(k % 2 ? 0x80 : 0xff);
                if (!mime7_has_8bit(buf + off, n))
                    fail_msg("8-bit byte at %zu of %zu (offset %zu) not seen", k, n, off);
                buf[off + k] = 0x7f;
                assert_false(mime7_has_8bit(buf + off, n));
                buf[off + k] = 'a';
            }
            buf[off + n] = (char)0x80; /* just past the end: not looked at */
            assert_false(mime7_has_8bit(buf + off, n));
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden),         cmocka_unit_test(test_seven_bit_unchanged),
        cmocka_unit_test(test_cannot_convert), cmocka_unit_test(test_too_deep),
        cmocka_unit_test(test_qp_round_trip),  cmocka_unit_test(test_header_len),
        cmocka_unit_test(test_has_8bit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
