/*
 * jsontext.c - text that came from a peer, made safe for the places an
 * operator or a program reads it: JSON strings (the accounting log, the
 * control socket's answers) and a terminal (sluicectl's tables).
 *
 *   json_str_append     a JSON string literal of any bytes
 *   json_text_sanitize  copy a serialised JSON text, fixing its strings
 *   tty_str_append      text for a terminal, control characters made visible
 *   time_fmt_rfc3339    the one form of a point in time in our JSON, and
 *   time_parse_rfc3339  its reader (sluicectl, tests)
 *
 * A remote server's reply, a HELO name or an X-Sluice-Job header is any
 * bytes: Latin-1, broken UTF-8, escape sequences. Every JSON parser rejects
 * invalid UTF-8 and raw control bytes, and a terminal obeys ESC, CSI (C1)
 * and OSC sequences. The rules, the same everywhere (docs/records.md):
 *   - valid UTF-8 passes, except that C0 controls, DEL, C1 controls and the
 *     line/paragraph separators and bidirectional overrides are escaped
 *     (\u00XX, \u2028 ... in JSON; \xNN, \u202e on a terminal);
 *   - each byte that is not part of a valid UTF-8 sequence (RFC 3629)
 *     becomes U+FFFD in JSON (the original byte cannot be represented in a
 *     JSON string) and \xNN on a terminal.
 *
 * Thread: pure functions on caller-owned buffers; any thread.
 */
#include "core/base/base.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

static size_t utf8_seq(const unsigned char *p, size_t n, uint32_t *cp);
static bool cp_needs_escape(uint32_t cp);
static void json_chars_append(buf_t *b, const char *s, size_t len);

/* The length of the valid UTF-8 sequence at p (1-4) and its code point,
 * or 0 when p[0] does not start one (overlong forms, surrogates and code
 * points above U+10FFFF are invalid, RFC 3629 section 4). */
static size_t utf8_seq(const unsigned char *p, size_t n, uint32_t *cp)
{
    unsigned char c = p[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        *cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        *cp = c & 0x0f;
        if (c == 0xe0)
            lo = 0xa0; /* overlong */
        else if (c == 0xed)
            hi = 0x9f; /* surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        *cp = c & 0x07;
        if (c == 0xf0)
            lo = 0x90; /* overlong */
        else if (c == 0xf4)
            hi = 0x8f; /* above U+10FFFF */
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        unsigned char x = p[i];
        if (x < (i == 1 ? lo : 0x80) || x > (i == 1 ? hi : 0xbf))
            return 0;
        *cp = *cp << 6 | (x & 0x3f);
    }
    return len;
}

/* Code points shown escaped even though they are valid: controls (C0, DEL,
 * C1: a terminal acts on them), U+2028/U+2029 (line breaks to JavaScript
 * and some viewers) and the bidirectional embeddings, overrides and
 * isolates (U+202A-U+202E, U+2066-U+2069), which reorder what is shown. */
static bool cp_needs_escape(uint32_t cp)
{
    return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || (cp >= 0x2028 && cp <= 0x202e) ||
           (cp >= 0x2066 && cp <= 0x2069);
}

/* The inside of a JSON string: s[0..len) with every rule above. */
static void json_chars_append(buf_t *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t run = 0; /* start of the bytes copied as they are */
    buf_reserve(b, len);
    for (size_t i = 0; i < len;) {
        uint32_t cp = 0;
        size_t n = utf8_seq(p + i, len - i, &cp);
        if (n > 0 && !cp_needs_escape(cp) && cp != '"' && cp != '\\') {
            i += n;
            continue;
        }
        buf_append(b, s + run, i - run);
        char e[8];
        if (n == 0) {
            buf_append(b, "\\ufffd", 6);
            n = 1;
        } else if (cp == '"' || cp == '\\') {
            e[0] = '\\';
            e[1] = (char)cp;
            buf_append(b, e, 2);
        } else if (cp == '\n') {
            buf_append(b, "\\n", 2);
        } else if (cp == '\r') {
            buf_append(b, "\\r", 2);
        } else if (cp == '\t') {
            buf_append(b, "\\t", 2);
        } else {
            e[0] = '\\';
            e[1] = 'u';
            e[2] = hex[cp >> 12 & 15];
            e[3] = hex[cp >> 8 & 15];
            e[4] = hex[cp >> 4 & 15];
            e[5] = hex[cp & 15];
            buf_append(b, e, 6);
        }
        i += n;
        run = i;
    }
    buf_append(b, s + run, len - run);
}

void json_str_append(buf_t *b, const char *s, size_t len)
{
    buf_append(b, "\"", 1);
    json_chars_append(b, s, len);
    buf_append(b, "\"", 1);
}

void json_text_sanitize(buf_t *out, const char *in, size_t len)
{
    buf_reserve(out, len);
    size_t i = 0;
    while (i < len) {
        /* outside a string: structure, numbers, literals (ASCII) */
        const char *q = memchr(in + i, '"', len - i);
        size_t end = q ? (size_t)(q - in) + 1 : len;
        buf_append(out, in + i, end - i);
        i = end;
        if (q == NULL)
            break;
        /* inside: up to the closing quote, escapes kept as they are */
        size_t start = i;
        while (i < len && in[i] != '"') {
            if (in[i] == '\\' && i + 1 < len) {
                json_chars_append(out, in + start, i - start);
                buf_append(out, in + i, 2);
                i += 2;
                start = i;
            } else {
                i++;
            }
        }
        json_chars_append(out, in + start, i - start);
        if (i < len) {
            buf_append(out, "\"", 1);
            i++;
        }
    }
}

void tty_str_append(buf_t *b, const char *s, size_t len, bool keep_newlines)
{
    const unsigned char *p = (const unsigned char *)s;
    buf_reserve(b, len);
    for (size_t i = 0; i < len;) {
        uint32_t cp = 0;
        size_t n = utf8_seq(p + i, len - i, &cp);
        if (n > 0 && (!cp_needs_escape(cp) || (cp == '\n' && keep_newlines))) {
            buf_append(b, s + i, n);
            i += n;
            continue;
        }
        if (n == 0) {
            buf_printf(b, "\\x%02x", p[i]);
            n = 1;
        } else if (cp == '\n') {
            buf_append(b, "\\n", 2);
        } else if (cp == '\r') {
            buf_append(b, "\\r", 2);
        } else if (cp == '\t') {
            buf_append(b, "\\t", 2);
        } else if (cp <= 0xff) {
            buf_printf(b, "\\x%02x", (unsigned)cp);
        } else {
            buf_printf(b, "\\u%04x", (unsigned)cp);
        }
        i += n;
    }
}

/* ------------------------------------------------------------ time */

char *time_fmt_rfc3339(uint64_t unix_us, char *dst, size_t len)
{
    time_t s = (time_t)(unix_us / 1000000);
    struct tm tm;
    gmtime_r(&s, &tm);
    snprintf(dst, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(unix_us % 1000000 / 1000));
    return dst;
}

int time_parse_rfc3339(const char *s, uint64_t *unix_us)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (p == NULL)
        return SL_EPARSE;
    uint64_t frac = 0, scale = 1000000;
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9')
            return SL_EPARSE;
        for (; *p >= '0' && *p <= '9'; p++) {
            if (scale > 1) {
                scale /= 10;
                frac += (uint64_t)(*p - '0') * scale;
            }
        }
    }
    if (strcmp(p, "Z") != 0)
        return SL_EPARSE;
    time_t t = timegm(&tm);
    if (t < 0)
        return SL_EPARSE;
    *unix_us = (uint64_t)t * 1000000 + frac;
    return 0;
}
