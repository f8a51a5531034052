/*
 * mime7bit.c - 8-bit to 7-bit conversion for a server without 8BITMIME
 * (RFC 6152 3: the client converts or bounces, never sends 8-bit raw).
 *
 * mime7_convert() walks the MIME structure (RFC 2045, 2046): an entity
 * whose header and body are 7-bit is copied byte for byte; an 8-bit leaf
 * goes to quoted-printable (RFC 2045 6.7), with its
 * Content-Transfer-Encoding field rewritten in place; multipart and
 * message/rfc822 entities are converted part by part. Whatever cannot be
 * converted without changing what the reader sees (8-bit header fields,
 * message/global, 8-bit data inside base64 or binary parts) fails with a
 * reason, and the session bounces 5.6.3. The session signs (DKIM) and
 * measures (SIZE) the converted copy.
 *
 * Thread: pure functions, any thread.
 */
#include "delivery/mime7bit_int.h"

#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

/* One header field of an entity: name and the whole field (continuation
 * lines and line break included). */
typedef struct mime7_field {
    const char *f_start;
    size_t f_len;
    size_t f_name_len;
} mime7_field_t;

typedef struct mime7 {
    buf_t *m_out;
    char *m_why;
    size_t m_whylen;
} mime7_t;

typedef enum { CTE_NONE = 0, CTE_7BIT, CTE_8BIT, CTE_BINARY, CTE_QP, CTE_BASE64, CTE_OTHER } cte_t;

static int mime7_entity(mime7_t *m, const char *p, size_t n, int depth, bool top, bool digest);
static int mime7_fail(mime7_t *m, const char *fmt, const char *arg);

/* Every message is scanned once per delivery (dlv_msg_prepare), so this
 * is on the relay's hot path: 32 bytes per step (four 8-byte words OR'ed,
 * one test of their high bits), bytes for the tail. */
bool mime7_has_8bit(const char *p, size_t n)
{
    const uint64_t high = 0x8080808080808080ull;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        uint64_t w[4];
        memcpy(w, p + i, sizeof(w));
        if ((w[0] | w[1] | w[2] | w[3]) & high)
            return true;
    }
    for (; i < n; i++)
        if ((unsigned char)p[i] >= 0x80)
            return true;
    return false;
}

size_t mime7_header_len(const char *msg, size_t len)
{
    size_t pos = 0;
    while (pos < len) {
        const char *nl = memchr(msg + pos, '\n', len - pos);
        if (nl == NULL)
            return len;
        size_t le = (size_t)(nl - msg) + 1;
        size_t ce = le - 1;
        if (ce > pos && msg[ce - 1] == '\r')
            ce--;
        if (ce == pos) /* the empty line */
            return le;
        pos = le;
    }
    return len;
}

static int mime7_fail(mime7_t *m, const char *fmt, const char *arg)
{
    snprintf(m->m_why, m->m_whylen, fmt, arg);
    return SL_EPARSE;
}

/* The next header field of h[0..n) at *pos: false at the end. */
static bool mime7_next_field(const char *h, size_t n, size_t *pos, mime7_field_t *f)
{
    size_t start = *pos;
    if (start >= n)
        return false;
    size_t i = start;
    do { /* a line, then its continuation lines (starting with SP or HT) */
        const char *nl = memchr(h + i, '\n', n - i);
        i = nl ? (size_t)(nl - h) + 1 : n;
    } while (i < n && (h[i] == ' ' || h[i] == '\t'));
    f->f_start = h + start;
    f->f_len = i - start;
    const char *colon = memchr(f->f_start, ':', f->f_len);
    f->f_name_len = colon ? (size_t)(colon - f->f_start) : 0;
    while (f->f_name_len > 0 &&
           (f->f_start[f->f_name_len - 1] == ' ' || f->f_start[f->f_name_len - 1] == '\t'))
        f->f_name_len--;
    *pos = i;
    return true;
}

static bool mime7_field_is(const mime7_field_t *f, const char *name)
{
    size_t n = strlen(name);
    return f->f_name_len == n && strncasecmp(f->f_start, name, n) == 0;
}

/* The field's value unfolded (CR and LF dropped) into dst[cap]. */
static void mime7_field_value(const mime7_field_t *f, char *dst, size_t cap)
{
    size_t k = 0;
    for (size_t i = f->f_name_len + 1; i < f->f_len && k + 1 < cap; i++) {
        char c = f->f_start[i];
        if (c != '\r' && c != '\n')
            dst[k++] = c;
    }
    dst[k] = '\0';
}

/* Skip white space and (nested) comments (RFC 822 CFWS). */
static const char *mime7_skip_cfws(const char *s)
{
    for (;;) {
        while (*s == ' ' || *s == '\t')
            s++;
        if (*s != '(')
            return s;
        int depth = 0;
        do {
            if (*s == '\\' && s[1] != '\0')
                s++;
            else if (*s == '(')
                depth++;
            else if (*s == ')')
                depth--;
            s++;
        } while (*s != '\0' && depth > 0);
    }
}

/* A token (RFC 2045 5.1) at *s into dst (lower case); advances *s. */
static void mime7_token(const char **s, char *dst, size_t cap)
{
    const char *p = mime7_skip_cfws(*s);
    size_t k = 0;
    while (*p != '\0' && *p > ' ' && *p < 127 && strchr("()<>@,;:\\\"/[]?=", *p) == NULL) {
        if (k + 1 < cap)
            dst[k++] = (char)((*p >= 'A' && *p <= 'Z') ? *p + 32 : *p);
        p++;
    }
    dst[k] = '\0';
    *s = p;
}

/* Content-Type "type/subtype; boundary=..." -> type, subtype (lower case)
 * and the boundary parameter (as written, quotes removed; "" if none). */
static void mime7_content_type(const char *v, char *type, char *sub, size_t cap, char *bnd,
                               size_t bcap)
{
    bnd[0] = '\0';
    mime7_token(&v, type, cap);
    v = mime7_skip_cfws(v);
    sub[0] = '\0';
    if (*v == '/') {
        v++;
        mime7_token(&v, sub, cap);
    }
    for (;;) {
        v = mime7_skip_cfws(v);
        if (*v != ';')
            return;
        v++;
        char name[64];
        mime7_token(&v, name, sizeof(name));
        v = mime7_skip_cfws(v);
        if (*v != '=')
            continue;
        v = mime7_skip_cfws(v + 1);
        char val[256];
        size_t k = 0;
        if (*v == '"') {
            for (v++; *v != '\0' && *v != '"'; v++) {
                if (*v == '\\' && v[1] != '\0')
                    v++;
                if (k + 1 < sizeof(val))
                    val[k++] = *v;
            }
            if (*v == '"')
                v++;
        } else {
            while (*v != '\0' && *v > ' ' && *v != ';' && *v != '(') {
                if (k + 1 < sizeof(val))
                    val[k++] = *v;
                v++;
            }
        }
        val[k] = '\0';
        if (strcmp(name, "boundary") == 0 && bnd[0] == '\0')
            snprintf(bnd, bcap, "%s", val);
    }
}

static cte_t mime7_cte(const char *v)
{
    char t[64];
    mime7_token(&v, t, sizeof(t));
    if (t[0] == '\0')
        return CTE_NONE;
    if (strcmp(t, "7bit") == 0)
        return CTE_7BIT;
    if (strcmp(t, "8bit") == 0)
        return CTE_8BIT;
    if (strcmp(t, "binary") == 0)
        return CTE_BINARY;
    if (strcmp(t, "quoted-printable") == 0)
        return CTE_QP;
    if (strcmp(t, "base64") == 0)
        return CTE_BASE64;
    return CTE_OTHER;
}

/* The header section h[0..n) (the empty line included) to out, with the
 * Content-Transfer-Encoding field set to cte (the first one replaced in
 * place, the others dropped, or one added) and, for the top level,
 * "MIME-Version: 1.0" added when missing. */
static void mime7_write_header(mime7_t *m, const char *h, size_t n, const char *cte, bool top)
{
    size_t pos = 0, blank = n;
    mime7_field_t f;
    bool cte_done = false, mime_version = false;
    const char *eol = "\r\n";
    for (;;) {
        size_t at = pos;
        if (at < n && (h[at] == '\n' || (h[at] == '\r' && at + 1 < n && h[at + 1] == '\n'))) {
            blank = at; /* the empty line */
            eol = h[at] == '\n' ? "\n" : "\r\n";
            break;
        }
        if (!mime7_next_field(h, n, &pos, &f))
            break;
        if (mime7_field_is(&f, "MIME-Version"))
            mime_version = true;
        if (mime7_field_is(&f, "Content-Transfer-Encoding")) {
            if (!cte_done)
                buf_printf(m->m_out, "Content-Transfer-Encoding: %s\r\n", cte);
            cte_done = true;
            continue;
        }
        buf_append(m->m_out, f.f_start, f.f_len);
        if (f.f_len > 0 && f.f_start[f.f_len - 1] != '\n')
            buf_append(m->m_out, "\r\n", 2); /* a last field without a line end */
    }
    if (top && !mime_version)
        buf_append_str(m->m_out, "MIME-Version: 1.0\r\n");
    if (!cte_done)
        buf_printf(m->m_out, "Content-Transfer-Encoding: %s\r\n", cte);
    if (blank < n)
        buf_append(m->m_out, h + blank, n - blank);
    else
        buf_append_str(m->m_out, eol);
}

/* Quoted-printable (RFC 2045 6.7): lines of at most 76 characters, line
 * breaks kept as CRLF, a soft break "=" where a line is cut, white space
 * at the end of a line encoded. */
static void mime7_qp(buf_t *out, const char *p, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t pos = 0;
    while (pos < n) {
        const char *nl = memchr(p + pos, '\n', n - pos);
        size_t le = nl ? (size_t)(nl - p) + 1 : n;
        size_t ce = nl ? le - 1 : n;
        if (nl != NULL && ce > pos && p[ce - 1] == '\r')
            ce--;
        size_t col = 0;
        for (size_t i = pos; i < ce; i++) {
            unsigned char c = (unsigned char)p[i];
            bool lit = (c >= 33 && c <= 126 && c != '=') ||
                       ((c == ' ' || c == '\t') && i + 1 < ce); /* not at the end */
            size_t w = lit ? 1 : 3;
            if (col + w > 75) {
                buf_append(out, "=\r\n", 3);
                col = 0;
            }
            if (lit) {
                buf_append(out, (const char *)&c, 1);
            } else {
                char e[3] = {'=', hex[c >> 4], hex[c & 15]};
                buf_append(out, e, 3);
            }
            col += w;
        }
        if (nl != NULL)
            buf_append(out, "\r\n", 2);
        pos = le;
    }
}

/* 0 when the line l[0..n) is not a boundary delimiter of bnd, 1 when it
 * is one, 2 when it is the close delimiter (RFC 2046 5.1.1). */
static int mime7_delim(const char *l, size_t n, const char *bnd, size_t blen)
{
    if (n < blen + 2 || l[0] != '-' || l[1] != '-' || memcmp(l + 2, bnd, blen) != 0)
        return 0;
    size_t i = blen + 2;
    int kind = 1;
    if (i + 2 <= n && l[i] == '-' && l[i + 1] == '-') {
        kind = 2;
        i += 2;
    }
    for (; i < n; i++)
        if (l[i] != ' ' && l[i] != '\t')
            return 0;
    return kind;
}

/* The body p[0..n) of a multipart entity: the parts converted, the
 * delimiters as they are. */
static int mime7_multipart(mime7_t *m, const char *p, size_t n, const char *bnd, int depth,
                           bool digest)
{
    size_t blen = strlen(bnd), pos = 0, seg = 0;
    bool preamble = true, closed = false;
    while (pos < n && !closed) {
        size_t ls = pos;
        const char *nl = memchr(p + ls, '\n', n - ls);
        size_t le = nl ? (size_t)(nl - p) + 1 : n;
        size_t ce = nl ? le - 1 : n;
        if (nl != NULL && ce > ls && p[ce - 1] == '\r')
            ce--;
        pos = le;
        int kind = mime7_delim(p + ls, ce - ls, bnd, blen);
        if (kind == 0)
            continue;
        /* the line break before a delimiter belongs to it (RFC 2046 5.1.1) */
        size_t brk = ls;
        if (brk > seg && p[brk - 1] == '\n') {
            brk--;
            if (brk > seg && p[brk - 1] == '\r')
                brk--;
        }
        if (preamble) {
            if (mime7_has_8bit(p + seg, brk - seg))
                return mime7_fail(m, "8-bit characters in a multipart preamble%s", "");
            buf_append(m->m_out, p + seg, brk - seg);
        } else {
            int rc = mime7_entity(m, p + seg, brk - seg, depth + 1, false, digest);
            if (rc < 0)
                return rc;
        }
        buf_append(m->m_out, p + brk, le - brk);
        seg = le;
        preamble = false;
        closed = kind == 2;
    }
    if (closed || preamble) { /* the epilogue, or no delimiter at all */
        if (mime7_has_8bit(p + seg, n - seg))
            return mime7_fail(m, "8-bit characters in a multipart %s",
                              closed ? "epilogue" : "body without its boundary");
        buf_append(m->m_out, p + seg, n - seg);
        return 0;
    }
    return mime7_entity(m, p + seg, n - seg, depth + 1, false, digest); /* not closed */
}

/* One entity p[0..n): header and body. top: the message itself; digest:
 * a part of multipart/digest (default type message/rfc822). */
static int mime7_entity(mime7_t *m, const char *p, size_t n, int depth, bool top, bool digest)
{
    size_t hlen = mime7_header_len(p, n);
    if (mime7_has_8bit(p, hlen))
        return mime7_fail(m, "8-bit characters in a header field%s", "");
    if (!mime7_has_8bit(p + hlen, n - hlen)) {
        buf_append(m->m_out, p, n);
        return 0;
    }
    if (depth >= MIME7_MAX_DEPTH)
        return mime7_fail(m, "MIME parts nested too deeply%s", "");
    char type[64] = "", sub[64] = "", bnd[256] = "", val[1024];
    cte_t cte = CTE_NONE;
    bool have_type = false;
    size_t pos = 0;
    mime7_field_t f;
    while (mime7_next_field(p, hlen, &pos, &f)) {
        if (!have_type && mime7_field_is(&f, "Content-Type")) {
            mime7_field_value(&f, val, sizeof(val));
            mime7_content_type(val, type, sub, sizeof(type), bnd, sizeof(bnd));
            have_type = type[0] != '\0';
        } else if (cte == CTE_NONE && mime7_field_is(&f, "Content-Transfer-Encoding")) {
            mime7_field_value(&f, val, sizeof(val));
            cte = mime7_cte(val);
        }
    }
    if (!have_type) { /* RFC 2045 5.2, RFC 2046 5.1.5 */
        snprintf(type, sizeof(type), "%s", digest ? "message" : "text");
        snprintf(sub, sizeof(sub), "%s", digest ? "rfc822" : "plain");
    }
    const char *body = p + hlen;
    size_t blen = n - hlen;
    if (strcmp(type, "multipart") == 0) {
        if (bnd[0] == '\0')
            return mime7_fail(m, "8-bit content in a multipart without a boundary%s", "");
        if (cte != CTE_NONE && cte != CTE_7BIT && cte != CTE_8BIT && cte != CTE_BINARY)
            return mime7_fail(m, "a multipart with an invalid transfer encoding%s", "");
        if (cte == CTE_NONE || cte == CTE_7BIT)
            buf_append(m->m_out, p, hlen);
        else
            mime7_write_header(m, p, hlen, "7bit", top);
        return mime7_multipart(m, body, blen, bnd, depth, strcmp(sub, "digest") == 0);
    }
    if (strcmp(type, "message") == 0) {
        if (strcmp(sub, "rfc822") != 0)
            return mime7_fail(m, "8-bit characters in a message/%s part", sub);
        if (cte != CTE_NONE && cte != CTE_7BIT && cte != CTE_8BIT && cte != CTE_BINARY)
            return mime7_fail(m, "a message/rfc822 part with an invalid transfer encoding%s", "");
        if (cte == CTE_NONE || cte == CTE_7BIT)
            buf_append(m->m_out, p, hlen);
        else
            mime7_write_header(m, p, hlen, "7bit", top);
        return mime7_entity(m, body, blen, depth + 1, false, false);
    }
    switch (cte) {
    case CTE_NONE:
    case CTE_7BIT: /* mislabelled: the bytes are 8-bit all the same */
    case CTE_8BIT:
        mime7_write_header(m, p, hlen, "quoted-printable", top);
        mime7_qp(m->m_out, body, blen);
        return 0;
    case CTE_BINARY:
        return mime7_fail(m, "8-bit data in a part encoded binary%s", "");
    default:
        return mime7_fail(m, "8-bit characters in a part encoded %s",
                          cte == CTE_QP       ? "quoted-printable"
                          : cte == CTE_BASE64 ? "base64"
                                              : "with an unknown encoding");
    }
}

int mime7_convert(const char *msg, size_t len, buf_t *out, char *why, size_t whylen)
{
    if (!mime7_has_8bit(msg, len))
        return 0;
    mime7_t m = {out, why, whylen};
    int rc = mime7_entity(&m, msg, len, 0, true, false);
    return rc < 0 ? rc : 1;
}
