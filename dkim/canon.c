/*
 * dkim/canon.c - DKIM canonicalization (RFC 6376 §3.4).
 *
 * dkim_body_*: a streaming body canonicalizer (simple or relaxed) that
 * stages its output and flushes it to a sink (SHA-256 in production, a
 * buffer in tests), so a large body is hashed in place without a copy.
 * dkim_header_canon: one header field, simple or relaxed.
 *
 * Line endings: the stored message may hold bare LF, which smtp_dot_stuff()
 * turns into CRLF on the wire, so bare LF is canonicalized as CRLF. A bare
 * CR is data. Thread: any; the state is the caller's.
 */
#include "dkim/dkim_int.h"

#include <string.h>

static void stage_flush(dkim_bodycanon_t *bc);
static void stage_put(dkim_bodycanon_t *bc, const char *p, size_t n);
static void body_data(dkim_bodycanon_t *bc, const char *p, size_t n);
static void body_eol(dkim_bodycanon_t *bc);

#define IS_WSP(c) ((c) == ' ' || (c) == '\t')

/* Bytes that stop a run: CR, LF, and (relaxed) SP and HTAB. */
static const unsigned char stop_simple[256] = {['\r'] = 1, ['\n'] = 1};
static const unsigned char stop_relaxed[256] = {['\r'] = 1, ['\n'] = 1, [' '] = 1, ['\t'] = 1};

static void stage_flush(dkim_bodycanon_t *bc)
{
    if (bc->bc_nstage) {
        bc->bc_sink(bc->bc_arg, bc->bc_stage, bc->bc_nstage);
        bc->bc_nstage = 0;
    }
}

static void stage_put(dkim_bodycanon_t *bc, const char *p, size_t n)
{
    if (n > DKIM_STAGE_SIZE - bc->bc_nstage) {
        stage_flush(bc);
        if (n >= DKIM_STAGE_SIZE / 2) {
            bc->bc_sink(bc->bc_arg, p, n); /* large run: straight to the sink */
            return;
        }
    }
    memcpy(bc->bc_stage + bc->bc_nstage, p, n);
    bc->bc_nstage += n;
}

void dkim_body_init(dkim_bodycanon_t *bc, dkim_canon_t canon, dkim_sink_cb sink, void *arg)
{
    bc->bc_canon = canon;
    bc->bc_sink = sink;
    bc->bc_arg = arg;
    bc->bc_pend_crlf = 0;
    bc->bc_pend_cr = false;
    bc->bc_pend_wsp = false;
    bc->bc_line_data = false;
    bc->bc_any = false;
    bc->bc_nstage = 0;
}

/* Content bytes of the current line (no CR, LF; relaxed: no WSP). */
static void body_data(dkim_bodycanon_t *bc, const char *p, size_t n)
{
    while (bc->bc_pend_crlf) { /* the empty lines were not trailing after all */
        stage_put(bc, "\r\n", 2);
        bc->bc_pend_crlf--;
    }
    if (bc->bc_pend_wsp) {
        stage_put(bc, " ", 1);
        bc->bc_pend_wsp = false;
    }
    stage_put(bc, p, n);
    bc->bc_line_data = true;
    bc->bc_any = true;
}

static void body_eol(dkim_bodycanon_t *bc)
{
    bc->bc_pend_wsp = false; /* relaxed: WSP at the end of a line is ignored */
    if (bc->bc_line_data) {
        stage_put(bc, "\r\n", 2);
        bc->bc_line_data = false;
    } else {
        bc->bc_pend_crlf++;
    }
}

void dkim_body_update(dkim_bodycanon_t *bc, const char *p, size_t n)
{
    const unsigned char *stop = bc->bc_canon == DKIM_CANON_RELAXED ? stop_relaxed : stop_simple;
    const unsigned char *s = (const unsigned char *)p, *end = s + n;
    char *d = bc->bc_stage + bc->bc_nstage;
    char *const dend = bc->bc_stage + DKIM_STAGE_SIZE - 8; /* room for a few bytes */
    bool pend_cr = bc->bc_pend_cr, pend_wsp = bc->bc_pend_wsp, line_data = bc->bc_line_data;
    bool any = bc->bc_any;
    size_t pend_crlf = bc->bc_pend_crlf;

#define FLUSH()                                                                                    \
    do {                                                                                           \
        bc->bc_nstage = (size_t)(d - bc->bc_stage);                                                \
        stage_flush(bc);                                                                           \
        d = bc->bc_stage;                                                                          \
    } while (0)
    /* Before content: the held empty lines were not trailing, and a held
     * WSP run becomes one SP (relaxed). */
#define CONTENT_START()                                                                            \
    do {                                                                                           \
        while (pend_crlf) {                                                                        \
            if (d >= dend)                                                                         \
                FLUSH();                                                                           \
            *d++ = '\r';                                                                           \
            *d++ = '\n';                                                                           \
            pend_crlf--;                                                                           \
        }                                                                                          \
        if (pend_wsp) {                                                                            \
            *d++ = ' ';                                                                            \
            pend_wsp = false;                                                                      \
        }                                                                                          \
        line_data = any = true;                                                                    \
    } while (0)
#define END_OF_LINE()                                                                              \
    do {                                                                                           \
        pend_wsp = false; /* relaxed: WSP at the end of a line is ignored */                       \
        if (line_data) {                                                                           \
            *d++ = '\r';                                                                           \
            *d++ = '\n';                                                                           \
            line_data = false;                                                                     \
        } else {                                                                                   \
            pend_crlf++;                                                                           \
        }                                                                                          \
    } while (0)

    while (s < end) {
        if (d >= dend)
            FLUSH();
        unsigned char c = *s;
        if (LIKELY(!stop[c] && !pend_cr)) {
            CONTENT_START();
            /* The hot loop: plain content bytes straight into the stage. */
            size_t room = (size_t)(dend - d), left = (size_t)(end - s);
            const unsigned char *lim = s + (room < left ? room : left);
            while (s < lim && !stop[*s])
                *d++ = (char)*s++;
            continue;
        }
        s++;
        if (pend_cr) {
            pend_cr = false;
            if (c == '\n') {
                END_OF_LINE();
                continue;
            }
            CONTENT_START(); /* bare CR is data */
            *d++ = '\r';
            s--; /* and c is looked at again */
            continue;
        }
        if (c == '\r')
            pend_cr = true;
        else if (c == '\n')
            END_OF_LINE(); /* bare LF: sent as CRLF */
        else
            pend_wsp = true; /* relaxed WSP */
    }
#undef FLUSH
#undef CONTENT_START
#undef END_OF_LINE
    bc->bc_nstage = (size_t)(d - bc->bc_stage);
    bc->bc_pend_cr = pend_cr;
    bc->bc_pend_wsp = pend_wsp;
    bc->bc_line_data = line_data;
    bc->bc_any = any;
    bc->bc_pend_crlf = pend_crlf;
}

void dkim_body_final(dkim_bodycanon_t *bc)
{
    if (bc->bc_pend_cr) {
        bc->bc_pend_cr = false;
        body_data(bc, "\r", 1);
    }
    if (bc->bc_line_data) /* a last line without CRLF: the transport adds one */
        body_eol(bc);
    bc->bc_pend_crlf = 0; /* trailing empty lines are ignored */
    if (!bc->bc_any && bc->bc_canon == DKIM_CANON_SIMPLE)
        stage_put(bc, "\r\n", 2); /* simple: an empty body is one CRLF */
    stage_flush(bc);
}

void dkim_header_canon(buf_t *out, dkim_canon_t canon, const char *field, size_t len, bool crlf)
{
    const char *p = field, *end = field + len;

    /* Drop the field's own final line terminator, if the caller kept it. */
    if (end > p && end[-1] == '\n') {
        end--;
        if (end > p && end[-1] == '\r')
            end--;
    }
    buf_reserve(out, (size_t)(end - p) + 8);

    if (canon == DKIM_CANON_SIMPLE) {
        /* Unchanged, except that a bare LF inside goes out as CRLF. */
        const char *run = p;
        for (; p < end; p++) {
            if (*p == '\n' && (p == field || p[-1] != '\r')) {
                buf_append(out, run, (size_t)(p - run));
                buf_append(out, "\r\n", 2);
                run = p + 1;
            }
        }
        buf_append(out, run, (size_t)(end - run));
    } else {
        /* Name: lowercased, WSP before the colon removed. */
        const char *colon = memchr(p, ':', (size_t)(end - p));
        const char *nend = colon ? colon : end;
        const char *ne = nend;
        while (ne > p && IS_WSP(ne[-1]))
            ne--;
        buf_reserve(out, (size_t)(end - p) + 8);
        char *d = out->b_data + out->b_len;
        for (const char *q = p; q < ne; q++) {
            unsigned char c = (unsigned char)*q;
            *d++ = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
        }
        *d++ = ':';
        /* Value: unfolded, WSP runs to one SP, no WSP at either end. */
        bool wsp = false, started = false;
        for (const char *q = colon ? colon + 1 : end; q < end; q++) {
            char c = *q;
            if (c == '\n' || (c == '\r' && q + 1 < end && q[1] == '\n'))
                continue; /* unfold: the line break goes, the WSP after it stays */
            if (IS_WSP(c)) {
                wsp = true;
                continue;
            }
            if (wsp && started)
                *d++ = ' ';
            wsp = false;
            started = true;
            *d++ = c;
        }
        out->b_len = (size_t)(d - out->b_data);
    }
    if (crlf)
        buf_append(out, "\r\n", 2);
}
