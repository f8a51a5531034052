/*
 * inject_mime.c - one injected message, rendered (inject_int.h).
 *
 *   inj_expand  {{ name }} and {{ name | default("text") }}
 *   inj_render  the builder's MIME tree, or the raw message with its
 *               placeholders filled
 *
 * What the builder writes (RFC 5322, RFC 2045-2047, RFC 2231):
 *   - text only or html only: one part; both: multipart/alternative (text
 *     first: the last part is the preferred one); attachments: the above
 *     inside multipart/mixed, each attachment base64 in 76-column lines
 *   - a body is 7bit when it is ASCII with lines under 999 bytes, else
 *     quoted-printable (UTF-8), so no line of the message passes 998 bytes
 *     and nothing needs 8BITMIME
 *   - header values with non-ASCII text become RFC 2047 encoded words
 *     (UTF-8, B), folded under 78 columns; a non-ASCII file name is an
 *     RFC 2231 filename* parameter
 *   - Message-ID <queue id.seq@hostname> and Date, unless the request's
 *     headers give their own
 * The boundaries contain "=_", which neither quoted-printable nor base64
 * can produce, and a 7bit body that contains one is quoted-printable.
 * Every part ends with its own CRLF and the delimiter brings another
 * (RFC 2046 §5.1.1: the CRLF before "--" belongs to the delimiter), so a
 * body's last line break survives the parse.
 *
 * Thread: any thread (pure).
 */
#include "core/server/inject_int.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define LINE_MAX_SOFT 78  /* RFC 5322 §2.1.1: SHOULD */
#define LINE_MAX_HARD 998 /* RFC 5322 §2.1.1: MUST */

typedef struct rnd {
    const inj_req_t *r;
    int ri;
    const inj_ctx_t *cx;
    inj_err_t *e;
    int nboundary;
    const char *date; /* ic_now as an RFC 5322 date */
} rnd_t;

static int expand_one(const inj_req_t *r, int ri, const char *name, size_t nlen, const char *def,
                      size_t dlen, bool html, buf_t *out, const char *field, inj_err_t *e);
static void header_encode(buf_t *out, const char *name, const char *value, size_t len);
static void qp_encode(buf_t *out, const char *s, size_t len);
static void b64_lines(buf_t *out, const unsigned char *p, size_t len);
static int b64_decode(const char *s, buf_t *out);

/* ------------------------------------------------------------ small pieces */

/* Append the strings up to a NULL: the per-recipient headers without
 * printf (whose two passes per buf_printf showed in the profile). */
static void cat(buf_t *out, ...)
{
    va_list ap;
    va_start(ap, out);
    for (const char *s = va_arg(ap, const char *); s != NULL; s = va_arg(ap, const char *))
        buf_append(out, s, strlen(s));
    va_end(ap);
}

/* v as 16 upper-case hex digits (the queue id's form in Received:). */
static const char *hex16(char d[17], uint64_t v)
{
    static const char hex[] = "0123456789ABCDEF";
    for (int i = 15; i >= 0; i--, v >>= 4)
        d[i] = hex[v & 15];
    d[16] = '\0';
    return d;
}

/* ------------------------------------------------------------ templates */

/* The first "ab" in [s, s+len), or NULL. memchr is vectorised; glibc's
 * memmem walks a two-byte needle byte by byte (a tenth of an injection's
 * CPU in bench/run-http's profile). */
static const char *find2(const char *s, size_t len, char a, char b)
{
    const char *end = s + len;
    while (s < end) {
        const char *p = memchr(s, a, (size_t)(end - s));
        if (p == NULL || p + 1 >= end)
            return NULL;
        if (p[1] == b)
            return p;
        s = p + 1;
    }
    return NULL;
}

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    return p;
}

static void html_escape(buf_t *out, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        switch (s[i]) {
        case '&':
            buf_append_str(out, "&amp;");
            break;
        case '<':
            buf_append_str(out, "&lt;");
            break;
        case '>':
            buf_append_str(out, "&gt;");
            break;
        case '"':
            buf_append_str(out, "&quot;");
            break;
        case '\'':
            buf_append_str(out, "&#39;");
            break;
        default:
            buf_append(out, &s[i], 1);
        }
    }
}

static json_object *subst_get(json_object *o, const char *name, size_t nlen)
{
    char key[128];
    json_object *v = NULL;
    if (o == NULL || nlen >= sizeof(key))
        return NULL;
    memcpy(key, name, nlen);
    key[nlen] = '\0';
    return json_object_object_get_ex(o, key, &v) ? v : NULL;
}

static int expand_one(const inj_req_t *r, int ri, const char *name, size_t nlen, const char *def,
                      size_t dlen, bool html, buf_t *out, const char *field, inj_err_t *e)
{
    const inj_rcpt_t *rc = ri >= 0 ? &r->ir_rcpts[ri] : NULL;
    json_object *v = rc ? subst_get(rc->ir_subst, name, nlen) : NULL;
    if (v == NULL)
        v = subst_get(r->ir_subst, name, nlen);
    const char *s = NULL;
    size_t slen = 0;
    if (v != NULL) {
        s = json_object_get_string(v);
        slen = json_object_is_type(v, json_type_string) ? (size_t)json_object_get_string_len(v)
                                                        : strlen(s);
    } else if (nlen == 5 && memcmp(name, "email", 5) == 0) {
        if (rc == NULL)
            return INJ_PERSONAL;
        s = rc->ir_email;
        slen = strlen(s);
    } else if (nlen == 4 && memcmp(name, "name", 4) == 0) {
        if (rc == NULL)
            return INJ_PERSONAL;
        s = rc->ir_name ? rc->ir_name : "";
        slen = strlen(s);
    } else if (def != NULL) {
        s = def;
        slen = dlen;
    } else {
        char who[48] = "";
        if (ri >= 0)
            snprintf(who, sizeof(who), " for recipients[%d]", ri);
        return inj_err_set(e, 422, "undefined_placeholder", field,
                           "{{ %.*s }} in %s has no value%s (give it in substitutions, or "
                           "{{ %.*s | default(\"...\") }})",
                           (int)MIN(nlen, 64), name, field, who, (int)MIN(nlen, 64), name);
    }
    if (html)
        html_escape(out, s, slen);
    else
        buf_append(out, s, slen);
    return 0;
}

int inj_expand(const inj_req_t *r, int ri, const char *tpl, size_t len, bool html, buf_t *out,
               const char *field, inj_err_t *e)
{
    const char *p = tpl, *end = tpl + len;
    while (p < end) {
        const char *open = find2(p, (size_t)(end - p), '{', '{');
        if (open == NULL) {
            buf_append(out, p, (size_t)(end - p));
            break;
        }
        buf_append(out, p, (size_t)(open - p));
        const char *q = skip_ws(open + 2, end), *name = q;
        while (q < end && (isalnum((unsigned char)*q) || *q == '_' || *q == '.' || *q == '-'))
            q++;
        size_t nlen = (size_t)(q - name);
        q = skip_ws(q, end);
        const char *def = NULL;
        size_t dlen = 0;
        if (q < end && *q == '|') {
            q = skip_ws(q + 1, end);
            if ((size_t)(end - q) > 8 && memcmp(q, "default(", 8) == 0) {
                q = skip_ws(q + 8, end);
                if (q < end && *q == '"') {
                    def = ++q;
                    while (q < end && *q != '"')
                        q++;
                    dlen = (size_t)(q - def);
                    q = skip_ws(q < end ? q + 1 : q, end);
                    if (q < end && *q == ')')
                        q = skip_ws(q + 1, end);
                    else
                        def = NULL, nlen = 0; /* malformed */
                } else {
                    nlen = 0;
                }
            } else {
                nlen = 0;
            }
        }
        if (nlen == 0 || (size_t)(end - q) < 2 || q[0] != '}' || q[1] != '}')
            return inj_err_set(e, 422, "bad_template", field,
                               "%s: a placeholder must be {{ name }} or {{ name | "
                               "default(\"text\") }}",
                               field);
        int rc = expand_one(r, ri, name, nlen, def, dlen, html, out, field, e);
        if (rc != 0)
            return rc;
        p = q + 2;
    }
    return 0;
}

/* ------------------------------------------------------------ encodings */

/* Eight bytes at a time, no early exit: a 5 KiB body is read once per
 * recipient (the byte loop was the largest part of a text part's cost). */
static bool is_ascii(const char *s, size_t len)
{
    uint64_t acc = 0, w;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        memcpy(&w, s + i, 8);
        acc |= w;
    }
    for (; i < len; i++)
        acc |= (unsigned char)s[i];
    return (acc & 0x8080808080808080ull) == 0;
}

/* An RFC 2047 encoded-word sequence for value, B encoding: each word at
 * most 75 characters, split between UTF-8 characters, one per folded line,
 * each line within 76 columns (RFC 2047 §2); col is the column the first
 * word starts at (after "Subject: "). */
static void words_encode(buf_t *out, const char *value, size_t len, size_t col)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i = 0;
    bool first = true;
    if (col + 12 + 8 > 76) { /* no room for a word of a 4-byte character */
        buf_append_str(out, "\r\n ");
        col = 1;
    }
    while (i < len || first) {
        /* 12 characters of "=?UTF-8?B?" "?=", 4 of base64 per 3 bytes */
        size_t room = 3 * ((76 - col - 12) / 4);
        size_t n = MIN(len - i, MIN(room, 45));
        while (n > 0 && i + n < len && ((unsigned char)value[i + n] & 0xC0) == 0x80)
            n--; /* do not split a UTF-8 sequence */
        if (n == 0 && i < len)
            n = MIN(len - i, 3);
        if (!first)
            buf_append_str(out, "\r\n ");
        buf_append_str(out, "=?UTF-8?B?");
        const unsigned char *p = (const unsigned char *)value + i;
        for (size_t k = 0; k < n; k += 3) {
            uint32_t v = (uint32_t)p[k] << 16;
            if (k + 1 < n)
                v |= (uint32_t)p[k + 1] << 8;
            if (k + 2 < n)
                v |= p[k + 2];
            char q[4] = {tab[(v >> 18) & 63], tab[(v >> 12) & 63],
                         k + 1 < n ? tab[(v >> 6) & 63] : '=', k + 2 < n ? tab[v & 63] : '='};
            buf_append(out, q, 4);
        }
        buf_append_str(out, "?=");
        i += n;
        first = false;
        col = 1;
    }
}

/* "Name: value\r\n": ASCII folded at spaces under 78 columns where it can
 * be; non-ASCII, or a word that would not fit in 998, as encoded words. */
static void header_encode(buf_t *out, const char *name, const char *value, size_t len)
{
    size_t col = strlen(name) + 2;
    cat(out, name, ": ", NULL);
    bool plain = is_ascii(value, len);
    for (size_t i = 0, w = 0; plain && i <= len; i++) {
        if (i == len || value[i] == ' ') {
            if (i - w + col > LINE_MAX_HARD - 2)
                plain = false;
            w = i;
        }
    }
    if (!plain) {
        words_encode(out, value, len, col);
        buf_append_str(out, "\r\n");
        return;
    }
    size_t i = 0;
    while (i < len) {
        size_t j = i + 1;
        while (j < len && value[j] != ' ')
            j++;
        /* fold before this word (RFC 5322 §2.2.3: the space stays) */
        if (i > 0 && col + (j - i) > LINE_MAX_SOFT) {
            buf_append_str(out, "\r\n");
            col = 0;
        }
        buf_append(out, value + i, j - i);
        col += j - i;
        i = j;
    }
    buf_append_str(out, "\r\n");
}

/* A display name and address: "Name" <a@b>, or =?UTF-8?B?...?= <a@b>. */
static void addr_format(buf_t *out, const char *name, size_t len, const char *email, size_t col)
{
    if (name == NULL || len == 0) {
        buf_append_str(out, email);
        return;
    }
    if (is_ascii(name, len) && len < 200) {
        buf_append_str(out, "\"");
        for (size_t i = 0; i < len; i++) {
            if (name[i] == '"' || name[i] == '\\')
                buf_append_str(out, "\\");
            buf_append(out, &name[i], 1);
        }
        buf_append_str(out, "\"");
    } else {
        words_encode(out, name, len, col);
    }
    cat(out, " <", email, ">", NULL);
}

/* Quoted-printable (RFC 2045 §6.7) of text with CRLF line ends: lines of
 * at most 76 characters with soft breaks, trailing white space encoded. */
static void qp_encode(buf_t *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    /* written in place (no append per byte): at most 3 bytes per input
     * byte, and a soft break "=\r\n" at most every 25 input bytes */
    buf_reserve(out, len * 3 + (len / 24 + 1) * 3);
    char *d = out->b_data + out->b_len;
    size_t col = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\r' && i + 1 < len && s[i + 1] == '\n') {
            *d++ = '\r';
            *d++ = '\n';
            col = 0;
            i++;
            continue;
        }
        bool eol = i + 1 == len || (s[i + 1] == '\r' && i + 2 < len && s[i + 2] == '\n');
        bool lit = (c >= 33 && c <= 126 && c != '=') || ((c == ' ' || c == '\t') && !eol);
        size_t w = lit ? 1 : 3;
        if (col + w > 75) {
            *d++ = '=';
            *d++ = '\r';
            *d++ = '\n';
            col = 0;
        }
        if (lit) {
            *d++ = (char)c;
        } else {
            *d++ = '=';
            *d++ = hex[c >> 4];
            *d++ = hex[c & 15];
        }
        col += w;
    }
    out->b_len = (size_t)(d - out->b_data);
}

static void b64_lines(buf_t *out, const unsigned char *p, size_t len)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t col = 0;
    /* written in place: 4 bytes per 3, a CRLF per 76 columns, the last */
    buf_reserve(out, (len + 2) / 3 * 4 + ((len + 2) / 3 / 19 + 1) * 2);
    char *d = out->b_data + out->b_len;
    for (size_t k = 0; k < len; k += 3) {
        uint32_t v = (uint32_t)p[k] << 16;
        if (k + 1 < len)
            v |= (uint32_t)p[k + 1] << 8;
        if (k + 2 < len)
            v |= p[k + 2];
        d[0] = tab[(v >> 18) & 63];
        d[1] = tab[(v >> 12) & 63];
        d[2] = k + 1 < len ? tab[(v >> 6) & 63] : '=';
        d[3] = k + 2 < len ? tab[v & 63] : '=';
        d += 4;
        col += 4;
        if (col == 76 && k + 3 < len) {
            *d++ = '\r';
            *d++ = '\n';
            col = 0;
        }
    }
    *d++ = '\r';
    *d++ = '\n';
    out->b_len = (size_t)(d - out->b_data);
}

/* Standard base64 with optional padding; white space is skipped. */
static int b64_decode(const char *s, buf_t *out)
{
    uint32_t acc = 0;
    int bits = 0, pad = 0;
    for (const char *p = s; *p; p++) {
        int c = (unsigned char)*p, v;
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
            continue;
        if (c == '=') {
            pad++;
            continue;
        }
        if (pad > 0)
            return -1; /* data after padding */
        if (c >= 'A' && c <= 'Z')
            v = c - 'A';
        else if (c >= 'a' && c <= 'z')
            v = c - 'a' + 26;
        else if (c >= '0' && c <= '9')
            v = c - '0' + 52;
        else if (c == '+')
            v = 62;
        else if (c == '/')
            v = 63;
        else
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            unsigned char b = (unsigned char)(acc >> bits);
            buf_append(out, &b, 1);
        }
    }
    if (pad > 2 || bits >= 6)
        return -1; /* a lone sextet cannot be a byte */
    return 0;
}

/* Text with any line ends (CRLF, LF or a lone CR), as CRLF. The runs
 * between line ends are copied whole (a per-byte append was most of an
 * injection's CPU in bench/run-http's profile), and a text without CR
 * (the usual JSON body) is cut at LFs alone. Returns the longest line's
 * length, line end excluded. */
static size_t crlf_append(buf_t *out, const char *s, size_t len)
{
    const char *p = s, *end = s + len;
    bool any_cr = len > 0 && memchr(s, '\r', len) != NULL;
    size_t longest = 0;
    buf_reserve(out, 2 * len + 2); /* at worst every byte a line end, each two bytes */
    char *d = out->b_data + out->b_len;
    while (p < end) {
        const char *le = memchr(p, '\n', (size_t)(end - p));
        const char *cr = any_cr ? memchr(p, '\r', (size_t)((le ? le : end) - p)) : NULL;
        if (cr != NULL)
            le = cr;
        const char *stop = le ? le : end;
        longest = MAX(longest, (size_t)(stop - p));
        memcpy(d, p, (size_t)(stop - p));
        d += stop - p;
        if (le == NULL)
            break;
        *d++ = '\r';
        *d++ = '\n';
        p = le + 1;
        if (*le == '\r' && p < end && *p == '\n')
            p++;
    }
    out->b_len = (size_t)(d - out->b_data);
    return longest;
}

/* ------------------------------------------------------------ the builder */

static const char *bget(json_object *o, const char *key)
{
    json_object *v;
    if (o == NULL || !json_object_object_get_ex(o, key, &v) || v == NULL)
        return NULL;
    return json_object_get_string(v);
}

/* Expand field's template; nothing but 0 or the error/INJ_PERSONAL. */
static int expand_to(rnd_t *x, const char *tpl, bool html, buf_t *out, const char *field)
{
    return inj_expand(x->r, x->ri, tpl, strlen(tpl), html, out, field, x->e);
}

/* A header from a template: one line of text after expansion. */
static int header_tpl(rnd_t *x, buf_t *out, const char *name, const char *tpl, const char *field)
{
    buf_t v;
    buf_init(&v, 128);
    int rc = expand_to(x, tpl, false, &v, field);
    if (rc == 0 && (memchr(v.b_data, '\r', v.b_len) || memchr(v.b_data, '\n', v.b_len) ||
                    memchr(v.b_data, '\0', v.b_len)))
        rc = inj_err_set(x->e, 422, "bad_header", field, "%s has a line break", field);
    if (rc == 0)
        header_encode(out, name, v.b_data ? v.b_data : "", v.b_len);
    buf_free(&v);
    return rc;
}

/* One text part: headers + blank line + body (7bit or quoted-printable). */
static int text_part(rnd_t *x, buf_t *out, const char *tpl, bool html, const char *field,
                     const char *boundary)
{
    buf_t own[2], *sc = x->cx->ic_scratch ? x->cx->ic_scratch : own;
    buf_t *raw = &sc[0], *body = &sc[1];
    if (sc == own) {
        buf_init(raw, 1024);
        buf_init(body, 0);
    }
    buf_reset(raw);
    buf_reset(body);
    int rc = expand_to(x, tpl, html, raw, field);
    if (rc != 0)
        goto out;
    size_t longest = crlf_append(body, raw->b_data ? raw->b_data : "", raw->b_len);
    bool seven = longest <= LINE_MAX_HARD && is_ascii(body->b_data, body->b_len) &&
                 find2(body->b_data, body->b_len, '=', '_') == NULL &&
                 memchr(body->b_data, '\0', body->b_len) == NULL;
    cat(out, "Content-Type: text/", html ? "html" : "plain",
        "; charset=utf-8\r\nContent-Transfer-Encoding: ", seven ? "7bit" : "quoted-printable",
        "\r\n\r\n", NULL);
    if (seven)
        buf_append(out, body->b_data, body->b_len);
    else
        qp_encode(out, body->b_data, body->b_len);
    if (body->b_len < 2 || memcmp(body->b_data + body->b_len - 2, "\r\n", 2) != 0)
        buf_append_str(out, "\r\n");
    (void)boundary;
out:
    if (sc == own) {
        buf_free(raw);
        buf_free(body);
    }
    return rc;
}

static void boundary_make(rnd_t *x, char *dst, size_t len)
{
    snprintf(dst, len, "=_sluice_%016llx_%d", (unsigned long long)x->cx->ic_msgid, x->nboundary++);
}

/* text, html, or multipart/alternative of both. */
static int body_parts(rnd_t *x, buf_t *out)
{
    json_object *b = x->r->ir_builder;
    const char *text = bget(b, "text_body"), *html = bget(b, "html_body");
    if (text == NULL || html == NULL)
        return text ? text_part(x, out, text, false, "content.text_body", NULL)
                    : text_part(x, out, html, true, "content.html_body", NULL);
    char bd[64];
    boundary_make(x, bd, sizeof(bd));
    cat(out, "Content-Type: multipart/alternative; boundary=\"", bd, "\"\r\n\r\n--", bd, "\r\n",
        NULL);
    int rc = text_part(x, out, text, false, "content.text_body", bd);
    if (rc != 0)
        return rc;
    cat(out, "\r\n--", bd, "\r\n", NULL);
    if ((rc = text_part(x, out, html, true, "content.html_body", bd)) != 0)
        return rc;
    cat(out, "\r\n--", bd, "--\r\n", NULL);
    return 0;
}

/* filename="ascii" or filename*=utf-8''percent-encoded (RFC 2231). */
static void filename_param(buf_t *out, const char *fn)
{
    if (is_ascii(fn, strlen(fn)) && strlen(fn) < 60) {
        buf_printf(out, ";\r\n filename=\"%s\"", fn);
        return;
    }
    buf_append_str(out, ";\r\n filename*=utf-8''");
    size_t col = 20;
    for (const unsigned char *p = (const unsigned char *)fn; *p; p++) {
        if (col > 70) {
            /* RFC 2231 continuations would need numbering; one long line
             * of at most 255 * 3 bytes stays under 998 */
        }
        if (isalnum(*p) || strchr("!#$&+-.^_`|~", *p))
            buf_append(out, p, 1), col++;
        else
            buf_printf(out, "%%%02X", *p), col += 3;
    }
}

static int attachments(rnd_t *x, buf_t *out, json_object *arr, const char *bd)
{
    size_t n = json_object_array_length(arr);
    buf_t bin;
    buf_init(&bin, 0);
    for (size_t i = 0; i < n; i++) {
        json_object *a = json_object_array_get_idx(arr, i);
        const char *fn = bget(a, "file_name");
        buf_reset(&bin);
        if (b64_decode(bget(a, "base64"), &bin) != 0) {
            char f[64];
            snprintf(f, sizeof(f), "content.attachments[%zu].base64", i);
            buf_free(&bin);
            return inj_err_set(x->e, 422, "bad_base64", f, "%s is not valid base64", f);
        }
        buf_printf(out, "\r\n--%s\r\nContent-Type: %s", bd, bget(a, "content_type"));
        if (fn != NULL)
            filename_param(out, fn);
        buf_append_str(out, "\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: "
                            "attachment");
        if (fn != NULL)
            filename_param(out, fn);
        buf_append_str(out, "\r\n\r\n");
        b64_lines(out, (const unsigned char *)bin.b_data, bin.b_len);
    }
    buf_free(&bin);
    return 0;
}

static bool has_header(json_object *h, const char *name)
{
    if (h == NULL)
        return false;
    json_object_object_foreach(h, k, v)
    {
        (void)v;
        if (strcasecmp(k, name) == 0)
            return true;
    }
    return false;
}

/* Message-ID: <queue id.recipient@hostname> */
static void msgid_header(rnd_t *x, buf_t *out)
{
    char id[17], n[16];
    snprintf(n, sizeof(n), "%d", x->ri < 0 ? 0 : x->ri);
    cat(out, "Message-ID: <", hex16(id, x->cx->ic_msgid), ".", n, "@", x->cx->ic_hostname, ">\r\n",
        NULL);
}

static int render_builder(rnd_t *x, buf_t *out)
{
    json_object *b = x->r->ir_builder, *from = NULL, *h = NULL, *att = NULL, *rt = NULL;
    json_object_object_get_ex(b, "from", &from);
    json_object_object_get_ex(b, "headers", &h);
    json_object_object_get_ex(b, "attachments", &att);
    json_object_object_get_ex(b, "reply_to", &rt);
    buf_t a;
    buf_init(&a, 128);
    int rc = 0;
    if (!has_header(h, "From")) {
        buf_reset(&a);
        if ((rc = expand_to(x, bget(from, "name") ? bget(from, "name") : "", false, &a,
                            "content.from.name")) != 0)
            goto out;
        buf_append_str(out, "From: ");
        if (memchr(a.b_data ? a.b_data : "", '\n', a.b_len) ||
            memchr(a.b_data ? a.b_data : "", '\r', a.b_len)) {
            rc = inj_err_set(x->e, 422, "bad_header", "content.from.name",
                             "content.from.name has a line break");
            goto out;
        }
        addr_format(out, a.b_data, a.b_len, bget(from, "email"), 6);
        buf_append_str(out, "\r\n");
    }
    if (rt != NULL && !has_header(h, "Reply-To")) {
        buf_append_str(out, "Reply-To: ");
        const char *nm = bget(rt, "name");
        addr_format(out, nm, nm ? strlen(nm) : 0, bget(rt, "email"), 10);
        buf_append_str(out, "\r\n");
    }
    if (!has_header(h, "To")) {
        buf_append_str(out, "To: ");
        if (x->ri >= 0) {
            const inj_rcpt_t *rp = &x->r->ir_rcpts[x->ri];
            addr_format(out, rp->ir_name, rp->ir_name ? strlen(rp->ir_name) : 0, rp->ir_email, 4);
        } else
            buf_append_str(out, "undisclosed-recipients:;");
        buf_append_str(out, "\r\n");
    }
    const char *subj = bget(b, "subject");
    if (subj != NULL && !has_header(h, "Subject") &&
        (rc = header_tpl(x, out, "Subject", subj, "content.subject")) != 0)
        goto out;
    if (!has_header(h, "Date"))
        cat(out, "Date: ", x->date, "\r\n", NULL);
    if (!has_header(h, "Message-ID"))
        msgid_header(x, out);
    if (h != NULL) {
        json_object_object_foreach(h, name, val)
        {
            char f[160];
            snprintf(f, sizeof(f), "content.headers.%.100s", name);
            if ((rc = header_tpl(x, out, name, json_object_get_string(val), f)) != 0)
                goto out;
        }
    }
    buf_append_str(out, "MIME-Version: 1.0\r\n");
    if (att == NULL || json_object_array_length(att) == 0) {
        rc = body_parts(x, out);
        goto out;
    }
    char bd[64];
    boundary_make(x, bd, sizeof(bd));
    buf_printf(out, "Content-Type: multipart/mixed; boundary=\"%s\"\r\n\r\n", bd);
    buf_printf(out, "--%s\r\n", bd);
    if ((rc = body_parts(x, out)) != 0 || (rc = attachments(x, out, att, bd)) != 0)
        goto out;
    buf_printf(out, "\r\n--%s--\r\n", bd);
out:
    buf_free(&a);
    return rc;
}

/* ------------------------------------------------------------ raw content */

/* The raw message: placeholders filled, line ends made CRLF, its header
 * checked (field lines, ASCII), Message-ID and Date added when missing. */
static int render_raw(rnd_t *x, buf_t *out, bool *eightbit)
{
    buf_t t, m;
    buf_init(&t, x->r->ir_raw_len + 256);
    buf_init(&m, x->r->ir_raw_len + 256);
    int rc = inj_expand(x->r, x->ri, x->r->ir_raw, x->r->ir_raw_len, false, &t, "content", x->e);
    if (rc != 0)
        goto out;
    crlf_append(&m, t.b_data ? t.b_data : "", t.b_len);
    const char *p = m.b_data, *end = m.b_data + m.b_len;
    bool saw_id = false, saw_date = false, in_hdr = true, any = false;
    size_t hdr_end = m.b_len;
    while (p < end) {
        const char *nl = find2(p, (size_t)(end - p), '\r', '\n');
        size_t ll = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (ll > LINE_MAX_HARD) {
            rc = inj_err_set(x->e, 422, "line_too_long", "content",
                             "content has a line of %zu bytes (at most 998, RFC 5322 §2.1.1)", ll);
            goto out;
        }
        if (in_hdr) {
            if (ll == 0) {
                in_hdr = false;
                hdr_end = (size_t)(p - m.b_data);
            } else if (p[0] == ' ' || p[0] == '\t') {
                if (!any)
                    goto bad;
            } else {
                const char *colon = memchr(p, ':', ll);
                if (colon == NULL || colon == p)
                    goto bad;
                for (const char *c = p; c < colon; c++)
                    if ((unsigned char)*c <= 32 || (unsigned char)*c >= 127)
                        goto bad;
                size_t nlen = (size_t)(colon - p);
                saw_id |= nlen == 10 && strncasecmp(p, "Message-ID", 10) == 0;
                saw_date |= nlen == 4 && strncasecmp(p, "Date", 4) == 0;
                any = true;
            }
            if (!is_ascii(p, ll)) {
                rc = inj_err_set(x->e, 422, "non_ascii_header", "content",
                                 "content's header has 8-bit bytes: encode them (RFC 2047) or "
                                 "use the builder");
                goto out;
            }
        }
        p = nl ? nl + 2 : end;
    }
    if (!any || in_hdr) {
    bad:
        rc = inj_err_set(x->e, 422, "bad_content", "content",
                         "content must be a message: header fields, an empty line, the body");
        goto out;
    }
    *eightbit = !is_ascii(m.b_data + hdr_end, m.b_len - hdr_end);
    if (!saw_date)
        cat(out, "Date: ", x->date, "\r\n", NULL);
    if (!saw_id)
        msgid_header(x, out);
    buf_append(out, m.b_data, m.b_len);
    if (m.b_len < 2 || memcmp(end - 2, "\r\n", 2) != 0)
        buf_append_str(out, "\r\n");
out:
    buf_free(&t);
    buf_free(&m);
    return rc;
}

const char *inj_date(uint64_t now, char *dst, size_t len)
{
    time_t t = (time_t)now;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(dst, len, "%a, %d %b %Y %H:%M:%S +0000", &tm);
    return dst;
}

int inj_render(const inj_req_t *r, int ri, const inj_ctx_t *cx, buf_t *out, bool *eightbit,
               inj_err_t *e)
{
    char date[64], id[17];
    rnd_t x = {.r = r, .ri = ri, .cx = cx, .e = e, .date = cx->ic_date};
    if (x.date == NULL) {
        inj_date(cx->ic_now, date, sizeof(date));
        x.date = date;
    }
    cat(out, "Received: from [", cx->ic_client_ip, "]\r\n\tby ", cx->ic_hostname, " (sluice) with ",
        cx->ic_proto, " id ", hex16(id, cx->ic_msgid), NULL);
    if (ri >= 0 || r->ir_nrcpt == 1)
        cat(out, "\r\n\tfor <", r->ir_rcpts[ri >= 0 ? ri : 0].ir_email, ">", NULL);
    cat(out, "; ", x.date, "\r\n", NULL);
    if (r->ir_pool != NULL)
        cat(out, "X-Sluice-Pool: ", r->ir_pool, "\r\n", NULL);
    *eightbit = false;
    return r->ir_builder ? render_builder(&x, out) : render_raw(&x, out, eightbit);
}
