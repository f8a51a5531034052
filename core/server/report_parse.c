/*
 * core/server/report_parse.c - what a bounce or a complaint that came back
 * says (report_int.h): RFC 6522 multipart/report with an RFC 3464
 * message/delivery-status part (per-message fields, then one block per
 * recipient) or an RFC 5965 message/feedback-report part, the returned
 * message's headers (Message-ID, X-Sluice-Id), and for a bounce that is
 * not a report, the first enhanced status code (RFC 3463) in its text.
 *
 * Why our own parser rather than GMime: the fields are a handful of
 * header-like lines in at most three MIME parts, and the input is hostile
 * by definition. This walks the bytes once, with explicit bounds, no
 * allocation and a nesting limit, and a libFuzzer target runs it alone.
 * GMime was not measured against hostile input for this issue.
 *
 * Thread: pure functions, any thread.
 */
#include "core/server/report_int.h"
#include "core/base/base.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

#define MAX_DEPTH 4
#define MAX_PARTS 64

typedef struct span {
    const char *p;
    size_t n;
} span_t;

static void part_parse(span_t m, report_t *r, int depth);

/* ------------------------------------------------------------ small helpers */

/* Copy s into dst (cap bytes) as printable ASCII, spaces squeezed, trimmed. */
static void put(char *dst, size_t cap, const char *s, size_t n)
{
    size_t o = 0;
    while (n > 0 && isspace((unsigned char)*s)) {
        s++;
        n--;
    }
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    bool sp = false;
    for (size_t i = 0; i < n && o + 1 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\r' || c == '\n' || c == '\t' || c == ' ') {
            sp = true;
            continue;
        }
        if (sp && o > 0 && o + 2 < cap)
            dst[o++] = ' ';
        sp = false;
        dst[o++] = c >= 0x21 && c < 0x7f ? (char)c : '?';
    }
    dst[o] = '\0';
}

/* The next line of m from *off (without its CRLF / LF); false at the end. */
static bool next_line(span_t m, size_t *off, span_t *line)
{
    if (*off >= m.n)
        return false;
    const char *s = m.p + *off;
    const char *nl = memchr(s, '\n', m.n - *off);
    size_t n = nl ? (size_t)(nl - s) : m.n - *off;
    *off += n + (nl != NULL);
    if (n > 0 && s[n - 1] == '\r')
        n--;
    *line = (span_t){s, n};
    return true;
}

/* Header-like fields from *off up to a blank line (folded lines joined);
 * fn gets each (name, value). *off ends after the blank line. Bounded:
 * at most 200 fields, each value cut at 1000 bytes. */
typedef void (*field_fn)(void *arg, const char *name, size_t nlen, const char *val, size_t vlen);

static void fields(span_t m, size_t *off, field_fn fn, void *arg)
{
    char val[1000];
    char name[64];
    size_t vl = 0, nl = 0;
    bool have = false;
    int count = 0;
    span_t line;
    for (;;) {
        bool more = next_line(m, off, &line);
        bool cont = more && line.n > 0 && (line.p[0] == ' ' || line.p[0] == '\t');
        if (cont && have) {
            size_t k = MIN(line.n, sizeof(val) - 1 - vl);
            memcpy(val + vl, line.p, k);
            vl += k;
            continue;
        }
        if (have && count++ < 200)
            fn(arg, name, nl, val, vl);
        have = false;
        if (!more || line.n == 0)
            return;
        const char *colon = memchr(line.p, ':', line.n);
        if (colon == NULL || colon == line.p || (size_t)(colon - line.p) >= sizeof(name))
            continue; /* not a field (an mbox "From " line, junk): skipped */
        nl = (size_t)(colon - line.p);
        memcpy(name, line.p, nl);
        vl = MIN(line.n - nl - 1, sizeof(val) - 1);
        memcpy(val, colon + 1, vl);
        have = true;
    }
}

static bool is(const char *name, size_t n, const char *want)
{
    return strlen(want) == n && strncasecmp(name, want, n) == 0;
}

/* Drop "type;" in front of a typed value ("rfc822; a@b", "smtp; 550 ..."). */
static void untype(const char **v, size_t *n)
{
    const char *semi = memchr(*v, ';', *n);
    if (semi != NULL && semi - *v < 16) {
        *n -= (size_t)(semi + 1 - *v);
        *v = semi + 1;
    }
}

/* The address inside "<...>" when there is one. */
static void unangle(const char **v, size_t *n)
{
    const char *lt = memchr(*v, '<', *n);
    const char *gt = lt ? memchr(lt, '>', *n - (size_t)(lt - *v)) : NULL;
    if (lt != NULL && gt != NULL) {
        *n = (size_t)(gt - lt - 1);
        *v = lt + 1;
    }
}

/* ------------------------------------------------------------ Content-Type */

typedef struct ctype {
    char type[64];     /* lower case "multipart/report" */
    char boundary[72]; /* RFC 2046: at most 70 */
    char report[32];   /* report-type, lower case */
} ctype_t;

static void lower(char *s)
{
    for (; *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

/* One parameter's value after "name=" at p (quoted or a token). */
static void param_value(const char *p, const char *end, char *dst, size_t cap)
{
    size_t o = 0;
    if (p < end && *p == '"') {
        for (p++; p < end && *p != '"' && o + 1 < cap; p++) {
            if (*p == '\\' && p + 1 < end)
                p++;
            dst[o++] = *p;
        }
    } else {
        for (; p < end && *p != ';' && !isspace((unsigned char)*p) && o + 1 < cap; p++)
            dst[o++] = *p;
    }
    dst[o] = '\0';
}

static void ctype_parse(const char *v, size_t n, ctype_t *ct)
{
    const char *end = v + n, *p = v;
    while (p < end && isspace((unsigned char)*p))
        p++;
    size_t o = 0;
    for (; p < end && *p != ';' && !isspace((unsigned char)*p) && o + 1 < sizeof(ct->type); p++)
        ct->type[o++] = (char)tolower((unsigned char)*p);
    ct->type[o] = '\0';
    while (p < end) {
        const char *semi = memchr(p, ';', (size_t)(end - p));
        if (semi == NULL)
            break;
        p = semi + 1;
        while (p < end && isspace((unsigned char)*p))
            p++;
        const char *eq = memchr(p, '=', (size_t)(end - p));
        if (eq == NULL)
            break;
        size_t kl = (size_t)(eq - p);
        while (kl > 0 && isspace((unsigned char)p[kl - 1]))
            kl--;
        const char *val = eq + 1;
        while (val < end && isspace((unsigned char)*val))
            val++;
        if (kl == 8 && strncasecmp(p, "boundary", 8) == 0)
            param_value(val, end, ct->boundary, sizeof(ct->boundary));
        else if (kl == 11 && strncasecmp(p, "report-type", 11) == 0) {
            param_value(val, end, ct->report, sizeof(ct->report));
            lower(ct->report);
        }
        p = val;
    }
}

/* ------------------------------------------------------------ the parts */

typedef struct part_hdr {
    ctype_t ct;
} part_hdr_t;

static void part_hdr_fn(void *arg, const char *name, size_t nlen, const char *val, size_t vlen)
{
    part_hdr_t *h = arg;
    if (is(name, nlen, "content-type"))
        ctype_parse(val, vlen, &h->ct);
}

/* The per-recipient block being read, kept when it is the one to report. */
typedef struct dsn_rcpt {
    report_t *r;
    char final[REPORT_FIELD], orig[REPORT_FIELD], action[32], status[16];
    char diag[REPORT_FIELD], remote[REPORT_FIELD];
    int nfields;
} dsn_rcpt_t;

static void dsn_fn(void *arg, const char *name, size_t nlen, const char *val, size_t vlen)
{
    dsn_rcpt_t *d = arg;
    d->nfields++;
    if (is(name, nlen, "reporting-mta")) {
        untype(&val, &vlen);
        put(d->r->rp_reporting_mta, sizeof(d->r->rp_reporting_mta), val, vlen);
    } else if (is(name, nlen, "final-recipient")) {
        untype(&val, &vlen);
        put(d->final, sizeof(d->final), val, vlen);
    } else if (is(name, nlen, "original-recipient")) {
        untype(&val, &vlen);
        put(d->orig, sizeof(d->orig), val, vlen);
    } else if (is(name, nlen, "action")) {
        put(d->action, sizeof(d->action), val, vlen);
        lower(d->action);
    } else if (is(name, nlen, "status")) {
        put(d->status, sizeof(d->status), val, vlen);
    } else if (is(name, nlen, "diagnostic-code")) {
        untype(&val, &vlen);
        put(d->diag, sizeof(d->diag), val, vlen);
    } else if (is(name, nlen, "remote-mta")) {
        untype(&val, &vlen);
        put(d->remote, sizeof(d->remote), val, vlen);
    }
}

static void dsn_parse(span_t body, report_t *r)
{
    size_t off = 0;
    bool have = false;
    while (off < body.n && r->rp_nrcpt < 1000) {
        dsn_rcpt_t d = {.r = r};
        size_t before = off;
        fields(body, &off, dsn_fn, &d);
        if (off == before)
            break;
        if (d.final[0] == '\0')
            continue; /* the per-message block, or blank lines */
        r->rp_nrcpt++;
        bool failed = strcmp(d.action, "failed") == 0;
        if (have && !(failed && strcmp(r->rp_action, "failed") != 0))
            continue;
        have = true;
        memcpy(r->rp_final_rcpt, d.final, sizeof(d.final));
        memcpy(r->rp_orig_rcpt, d.orig, sizeof(d.orig));
        memcpy(r->rp_action, d.action, sizeof(d.action));
        memcpy(r->rp_status, d.status, sizeof(d.status));
        memcpy(r->rp_diag, d.diag, sizeof(d.diag));
        memcpy(r->rp_remote_mta, d.remote, sizeof(d.remote));
    }
    if (have)
        r->rp_kind = REPORT_DSN;
}

static void arf_fn(void *arg, const char *name, size_t nlen, const char *val, size_t vlen)
{
    report_t *r = arg;
    if (is(name, nlen, "feedback-type")) {
        put(r->rp_feedback_type, sizeof(r->rp_feedback_type), val, vlen);
        lower(r->rp_feedback_type);
    } else if (is(name, nlen, "user-agent")) {
        put(r->rp_user_agent, sizeof(r->rp_user_agent), val, vlen);
    } else if (is(name, nlen, "original-rcpt-to")) {
        unangle(&val, &vlen);
        put(r->rp_orig_rcpt, sizeof(r->rp_orig_rcpt), val, vlen);
    } else if (is(name, nlen, "original-mail-from")) {
        unangle(&val, &vlen);
        put(r->rp_orig_mail_from, sizeof(r->rp_orig_mail_from), val, vlen);
    } else if (is(name, nlen, "reporting-mta")) {
        untype(&val, &vlen);
        put(r->rp_reporting_mta, sizeof(r->rp_reporting_mta), val, vlen);
    }
}

static void arf_parse(span_t body, report_t *r)
{
    size_t off = 0;
    fields(body, &off, arf_fn, r);
    if (r->rp_feedback_type[0] != '\0')
        r->rp_kind = REPORT_ARF;
}

static void returned_fn(void *arg, const char *name, size_t nlen, const char *val, size_t vlen)
{
    report_t *r = arg;
    if (is(name, nlen, "message-id") && r->rp_message_id[0] == '\0')
        put(r->rp_message_id, sizeof(r->rp_message_id), val, vlen);
    else if (is(name, nlen, "x-sluice-id") && r->rp_sluice_id[0] == '\0')
        put(r->rp_sluice_id, sizeof(r->rp_sluice_id), val, vlen);
    else if (is(name, nlen, "to") && r->rp_orig_rcpt[0] == '\0' && r->rp_kind == REPORT_ARF) {
        /* ARF without Original-Rcpt-To: the returned message's To */
        unangle(&val, &vlen);
        put(r->rp_orig_rcpt, sizeof(r->rp_orig_rcpt), val, vlen);
    }
}

/* The parts of a multipart body between "--boundary" lines. */
static void multipart_parse(span_t body, const char *boundary, report_t *r, int depth)
{
    size_t bl = strlen(boundary), off = 0, start = 0;
    bool in = false;
    int parts = 0;
    span_t line;
    while (parts < MAX_PARTS) {
        size_t here = off;
        bool more = next_line(body, &off, &line);
        bool delim = more && line.n >= bl + 2 && line.p[0] == '-' && line.p[1] == '-' &&
                     memcmp(line.p + 2, boundary, bl) == 0;
        if (!more || delim) {
            if (in) {
                span_t part = {body.p + start, here - start};
                part_parse(part, r, depth + 1);
                parts++;
            }
            if (!more || (line.n >= bl + 4 && line.p[bl + 2] == '-' && line.p[bl + 3] == '-'))
                return;
            in = true;
            start = off;
        }
    }
}

/* One entity: its headers, then its body by type. */
static void part_parse(span_t m, report_t *r, int depth)
{
    if (depth > MAX_DEPTH)
        return;
    part_hdr_t h;
    memset(&h, 0, sizeof(h));
    size_t off = 0;
    fields(m, &off, part_hdr_fn, &h);
    span_t body = {m.p + off, m.n - off};
    const char *t = h.ct.type;
    if (strncmp(t, "multipart/", 10) == 0 && h.ct.boundary[0] != '\0') {
        multipart_parse(body, h.ct.boundary, r, depth);
    } else if (strcmp(t, "message/delivery-status") == 0 ||
               strcmp(t, "message/global-delivery-status") == 0) {
        dsn_parse(body, r);
    } else if (strcmp(t, "message/feedback-report") == 0) {
        arf_parse(body, r);
    } else if (strcmp(t, "message/rfc822") == 0 || strcmp(t, "text/rfc822-headers") == 0 ||
               strcmp(t, "message/rfc822-headers") == 0 || strcmp(t, "message/global") == 0 ||
               strcmp(t, "message/global-headers") == 0) {
        size_t o2 = 0;
        fields(body, &o2, returned_fn, r);
    }
}

/* ------------------------------------------------------------ plain bounces */

/* The first "[245].d{1,3}.d{1,3}" standing alone in the text, with its
 * line as the diagnostic. */
static void text_status(span_t m, report_t *r)
{
    size_t off = 0;
    span_t line;
    int lines = 0;
    while (next_line(m, &off, &line) && lines++ < 5000) {
        for (size_t i = 0; i + 5 <= line.n; i++) {
            const char *p = line.p + i;
            if ((p[0] != '4' && p[0] != '5') || p[1] != '.' ||
                (i > 0 && (isalnum((unsigned char)p[-1]) || p[-1] == '.')))
                continue;
            size_t k = 2, d1 = 0, d2 = 0;
            while (i + k < line.n && isdigit((unsigned char)p[k]) && d1 < 3) {
                k++;
                d1++;
            }
            if (d1 == 0 || i + k >= line.n || p[k] != '.')
                continue;
            k++;
            while (i + k < line.n && isdigit((unsigned char)p[k]) && d2 < 3) {
                k++;
                d2++;
            }
            if (d2 == 0 || (i + k < line.n && (isalnum((unsigned char)p[k]) || p[k] == '.')))
                continue;
            put(r->rp_status, sizeof(r->rp_status), p, k);
            put(r->rp_diag, sizeof(r->rp_diag), line.p, line.n);
            r->rp_kind = REPORT_TEXT;
            return;
        }
    }
}

void report_parse(const char *msg, size_t len, report_t *r)
{
    memset(r, 0, sizeof(*r));
    span_t m = {msg, len};
    part_parse(m, r, 0);
    if (r->rp_kind == REPORT_NONE) {
        size_t off = 0;
        part_hdr_t h;
        memset(&h, 0, sizeof(h));
        fields(m, &off, part_hdr_fn, &h);
        text_status((span_t){msg + off, len - off}, r);
    }
}

const char *report_kind_name(report_kind_t k)
{
    switch (k) {
    case REPORT_DSN:
        return "delivery-status";
    case REPORT_ARF:
        return "feedback-report";
    case REPORT_TEXT:
        return "text";
    default:
        return "none";
    }
}
