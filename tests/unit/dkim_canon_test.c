/*
 * tests/unit/dkim_canon_test.c - the line-at-a-time body canonicalizer
 * (dkim_body_update) against the byte-wise state machine
 * (dkim_body_update_bytewise) and against a naive reference written here
 * from RFC 6376 §3.4.3/§3.4.4 (lines split at LF, a CR before the LF
 * dropped, WSP runs to one SP and trailing WSP dropped for relaxed,
 * trailing empty lines dropped, an empty simple body as one CRLF). Inputs:
 * edge cases (trailing WSP, CRLF runs, empty body, lone CR and LF, 8-bit
 * bytes, SP runs across the 8-byte words of the scan) and random bodies
 * over an alphabet heavy in SP, HTAB, CR and LF, each fed whole and in
 * random chunks.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dkim/dkim_int.h"

static void sink_buf(void *arg, const char *p, size_t n)
{
    buf_append((buf_t *)arg, p, n);
}

/* RFC 6376 §3.4.3 / §3.4.4, the obvious way. */
static void naive(const char *p, size_t n, bool relaxed, buf_t *out)
{
    buf_t line;
    size_t held = 0; /* empty lines not yet known not to be trailing */
    bool any = false;
    buf_init(&line, 64);
    for (size_t i = 0; i < n;) {
        const char *lf = memchr(p + i, '\n', n - i);
        size_t end = lf ? (size_t)(lf - p) : n;
        size_t next = lf ? end + 1 : n;
        if (lf && end > i && p[end - 1] == '\r')
            end--;
        buf_reset(&line);
        if (relaxed) {
            bool wsp = false;
            for (size_t k = i; k < end; k++) {
                if (p[k] == ' ' || p[k] == '\t') {
                    wsp = true;
                    continue;
                }
                if (wsp)
                    buf_append(&line, " ", 1);
                wsp = false;
                buf_append(&line, p + k, 1);
            }
        } else {
            buf_append(&line, p + i, end - i);
        }
        if (line.b_len == 0) {
            held++;
        } else {
            for (; held; held--)
                buf_append(out, "\r\n", 2);
            buf_append(out, line.b_data, line.b_len);
            buf_append(out, "\r\n", 2);
            any = true;
        }
        i = next;
    }
    if (!any && !relaxed)
        buf_append(out, "\r\n", 2);
    buf_free(&line);
}

static void canon(const char *p, size_t n, bool relaxed, int mode, unsigned *seed, buf_t *out)
{
    dkim_bodycanon_t *bc = malloc(sizeof(*bc));
    assert_non_null(bc);
    dkim_body_init(bc, relaxed ? DKIM_CANON_RELAXED : DKIM_CANON_SIMPLE, sink_buf, out);
    for (size_t off = 0; off < n;) {
        size_t k = n - off;
        if (mode == 2 && k > 1)
            k = 1 + (size_t)rand_r(seed) % (k < 40 ? k : 40);
        if (mode == 0)
            dkim_body_update_bytewise(bc, p + off, k);
        else
            dkim_body_update(bc, p + off, k);
        off += k;
    }
    dkim_body_final(bc);
    free(bc);
}

static void check(const char *p, size_t n, unsigned *seed)
{
    for (int r = 0; r < 2; r++) {
        buf_t want, got;
        buf_init(&want, 64);
        naive(p, n, r == 0, &want);
        for (int mode = 0; mode < 3; mode++) { /* byte-wise, whole, random chunks */
            buf_init(&got, 64);
            canon(p, n, r == 0, mode, seed, &got);
            if (got.b_len != want.b_len || memcmp(got.b_data, want.b_data, got.b_len) != 0) {
                buf_t esc;
                buf_init(&esc, 4 * n + 1);
                for (size_t i = 0; i < n && i < 300; i++) {
                    char t[8];
                    unsigned char c = (unsigned char)p[i];
                    int k = c >= 32 && c < 127 ? snprintf(t, sizeof(t), "%c", c)
                                               : snprintf(t, sizeof(t), "\\x%02x", c);
                    buf_append(&esc, t, (size_t)k);
                }
                fail_msg("%s mode %d on \"%.*s\" (%zu bytes): got %zu bytes, want %zu",
                         r == 0 ? "relaxed" : "simple", mode, (int)esc.b_len, esc.b_data, n,
                         got.b_len, want.b_len);
            }
            buf_free(&got);
        }
        buf_free(&want);
    }
}

static void test_edge_cases(void **state)
{
    (void)state;
    static const char *const cases[] = {
        "",
        "\r\n",
        "\n",
        "\r",
        "\r\n\r\n\r\n",
        "a",
        "a\r\n",
        "a \r\n",
        "a\t\r\n",
        " a\r\n",
        "  a  b\t\tc \t \r\n",
        "a\r\n\r\n\r\nb\r\n\r\n",
        "a\r\n \r\n\t\r\n",
        "a\nb\n\n",
        "a\rb\r\n",
        "a \rb \r\n",
        "a\r\r\n",
        "\r\r\n",
        "a\r\n\r",
        "a\r\n  ",
        "a \r \r\n",
        "\xc3\xa9t\xc3\xa9  \xe2\x82\xac\r\n",
        "x\x0c y\x01  z\r\n",
        "1234567 89abcdef\r\n",  /* SP at byte 7, SP at byte 8 of a word */
        "1234567  9abcdef\r\n",  /* a SP pair across two words */
        "123456789abcdef  \r\n", /* trailing WSP in the second word */
        "12345678\t9abcdefghijklmnop\r\n",
        "abcdefghijklmnopqrstuvwxyz 0123456789 abcdefghijklmnopqrstuvwxyz\r\n",
        "Lorem ipsum dolor sit amet,  consectetur adipiscing elit\r\n\r\n",
    };
    unsigned seed = 1;
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
        check(cases[i], strlen(cases[i]), &seed);
    /* every position of a SP pair and of a HTAB in a 40-byte line */
    char line[43];
    for (int pos = 0; pos < 39; pos++) {
        for (int kind = 0; kind < 3; kind++) {
            memset(line, 'x', 40);
            line[pos] = kind == 1 ? '\t' : ' ';
            if (kind != 1)
                line[pos + 1] = kind == 0 ? ' ' : '\r';
            memcpy(line + 40, "\r\n", 3);
            check(line, 42, &seed);
        }
    }
}

static void test_random_bodies(void **state)
{
    (void)state;
    static const char alpha[] = {' ', ' ', ' ', '\t', '\r',   '\r',   '\n',   '\n',
                                 'a', 'b', '.', 'z',  '\xc3', '\xa9', '\x0c', '\0'};
    unsigned seed = 18;
    char body[700];
    for (int iter = 0; iter < 6000; iter++) {
        size_t n = (size_t)rand_r(&seed) % sizeof(body);
        bool texty = iter % 3 == 0; /* mostly words and CRLF: the fast paths */
        for (size_t i = 0; i < n; i++) {
            unsigned r = (unsigned)rand_r(&seed);
            if (texty)
                body[i] = r % 9 == 0 ? ' ' : r % 31 == 0 ? '\r' : r % 29 == 0 ? '\n' : 'a';
            else
                body[i] = alpha[r % sizeof(alpha)];
            if (texty && body[i] == '\r' && i + 1 < n && r % 2)
                body[++i] = '\n';
        }
        check(body, n, &seed);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_edge_cases),
        cmocka_unit_test(test_random_bodies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
