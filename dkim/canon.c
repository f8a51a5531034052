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

#include <stdint.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

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

void dkim_body_update_bytewise(dkim_bodycanon_t *bc, const char *p, size_t n)
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

/* ------------------------------------------------ the line-at-a-time path */

#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

static inline uint64_t load64(const unsigned char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

/* 0x80 in each byte of v that is zero, exactly (no false positives). */
static inline uint64_t zero_bytes(uint64_t v)
{
    const uint64_t m = ~HIGHS;
    return ~(((v & m) + m) | v | m);
}

/*
 * The first byte of [p, t) where the relaxed body canonicalization may
 * change something: a control byte (< 0x20: HTAB, CR, and the rare others,
 * which are data) or a SP right after a SP (inside a WSP run; the caller
 * backs up to the run's start). t if none. p[-1] is not a SP. Eight bytes
 * at a time: "bytes < 0x20" by the borrow trick (its lowest flag is exact,
 * which is all ctz needs), SP pairs from an exact SP mask and its shift,
 * with the last byte's SP carried into the next word.
 */
static const unsigned char *relaxed_scan(const unsigned char *p, const unsigned char *t)
{
    const unsigned char *p0 = p;
#if defined(__SSE2__)
    /* the same, 16 bytes at a time: controls are the bytes v with
     * min(v, 0x1f) == v */
    const __m128i vsp = _mm_set1_epi8(' '), v1f = _mm_set1_epi8(0x1f);
    unsigned carry16 = 0;
    while (t - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p);
        unsigned sp = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, vsp));
        unsigned ctl = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_min_epu8(v, v1f), v));
        unsigned m = ctl | (sp & ((sp << 1) | carry16));
        if (m)
            return p + __builtin_ctz(m);
        carry16 = sp >> 15;
        p += 16;
    }
    if (p > p0 && p < t && p[-1] == ' ' && *p == ' ')
        return p;
#endif
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t carry =
        p > p0 && p[-1] == ' ' ? 0x80 : 0; /* 0x80: the previous word's last byte is a SP */
    while (t - p >= 8) {
        uint64_t w = load64(p);
        uint64_t ctl = (w - ONES * 0x20) & ~w & HIGHS;
        uint64_t sp = zero_bytes(w ^ (ONES * ' '));
        uint64_t m = ctl | (sp & ((sp << 8) | carry));
        if (m)
            return p + (__builtin_ctzll(m) >> 3);
        carry = sp >> 56;
        p += 8;
    }
#endif
    for (; p < t; p++)
        if (*p < 0x20 || (*p == ' ' && p > p0 && p[-1] == ' '))
            return p;
    return t;
}

/* One relaxed line [s, t) without its trailing WSP and without CR, to the
 * stage with its WSP runs as one SP, then CRLF. Memory copies between the
 * runs. */
static void relaxed_fix(dkim_bodycanon_t *bc, const unsigned char *s, const unsigned char *t)
{
    const unsigned char *p = s;
    while (p < t) {
        const unsigned char *q = relaxed_scan(p, t);
        if (q == t) {
            stage_put(bc, (const char *)p, (size_t)(t - p));
            break;
        }
        if (IS_WSP(*q)) {
            const unsigned char *r = q;
            while (r > p && r[-1] == ' ')
                r--;
            stage_put(bc, (const char *)p, (size_t)(r - p));
            stage_put(bc, " ", 1);
            while (q < t && IS_WSP(*q))
                q++;
            p = q;
        } else { /* another control byte: data */
            stage_put(bc, (const char *)p, (size_t)(q + 1 - p));
            p = q + 1;
        }
    }
    stage_put(bc, "\r\n", 2);
}

/* Bytes [run, s) that canonicalize to themselves, straight from the input
 * to the sink (after what the stage holds, which comes before them). */
static void send_run(dkim_bodycanon_t *bc, const unsigned char *run, const unsigned char *s)
{
    size_t n = (size_t)(s - run);
    if (n == 0)
        return;
    bc->bc_any = true;
    if (bc->bc_nstage && n <= DKIM_STAGE_SIZE / 4) {
        /* a short run between rewritten lines: copied, so that the hash
         * gets a few large pieces rather than many small ones */
        stage_put(bc, (const char *)run, n);
        return;
    }
    stage_flush(bc);
    bc->bc_sink(bc->bc_arg, (const char *)run, n);
}

static void put_held_lines(dkim_bodycanon_t *bc)
{
    for (; bc->bc_pend_crlf; bc->bc_pend_crlf--)
        stage_put(bc, "\r\n", 2);
}

/*
 * One line [s, lf] (lf: its LF) that is not its own canonical form, after
 * the bytes before it were sent: an empty line (relaxed: only WSP) is held,
 * since it may be trailing; a relaxed line with WSP to fold or a bare-LF
 * line is rewritten by memory copies (relaxed_fix); the rare line with a CR
 * inside goes through the byte-wise machine, which starts and ends at a
 * line start.
 */
static void odd_line(dkim_bodycanon_t *bc, const unsigned char *s, const unsigned char *lf)
{
    const bool relaxed = bc->bc_canon == DKIM_CANON_RELAXED;
    const unsigned char *e = lf, *t;
    bool crlf = e > s && e[-1] == '\r';
    if (crlf)
        e--;
    t = e;
    if (relaxed)
        while (t > s && IS_WSP(t[-1]))
            t--;
    if (t == s) {
        bc->bc_pend_crlf++;
    } else if (relaxed && !memchr(s, '\r', (size_t)(e - s))) {
        put_held_lines(bc);
        relaxed_fix(bc, s, t);
        bc->bc_any = true;
    } else if (!relaxed && !crlf) { /* simple, bare LF: sent as CRLF */
        put_held_lines(bc);
        stage_put(bc, (const char *)s, (size_t)(e - s));
        stage_put(bc, "\r\n", 2);
        bc->bc_any = true;
    } else {
        dkim_body_update_bytewise(bc, (const char *)s, (size_t)(lf + 1 - s));
    }
}

/*
 * Whole lines from s (a line start, nothing held but empty lines) up to
 * the last complete line before end; returns where it stopped (a line
 * start). A line that is its own canonical form is not copied: runs of
 * such lines go to the sink straight from the input, so a clean body is
 * hashed in a few large pieces. Relaxed: one scan over the body
 * (relaxed_scan) stops only at control bytes and SP pairs; a stop at a
 * CRLF after a non-WSP byte ends a clean line and the scan goes on, any
 * other stop makes the line odd (odd_line). Simple: a non-empty
 * CRLF-terminated line is its own form.
 */
static const unsigned char *body_lines(dkim_bodycanon_t *bc, const unsigned char *s,
                                       const unsigned char *end)
{
    const bool relaxed = bc->bc_canon == DKIM_CANON_RELAXED;
    const unsigned char *run = s; /* not yet sent bytes that are their own form */
    const unsigned char *line = s, *p = s;

    while (p < end) {
        const unsigned char *q, *lf;
        if (relaxed) {
            q = relaxed_scan(p, end);
            if (q + 1 >= end)
                break; /* no stop, or a CR that may start a CRLF: the rest later */
            if (q[0] == '\r' && q[1] == '\n' && q > line && !IS_WSP(q[-1])) {
                put_held_lines(bc); /* if any, run == line: they go first */
                p = line = q + 2;
                continue;
            }
            lf = memchr(q, '\n', (size_t)(end - q));
        } else {
            lf = memchr(p, '\n', (size_t)(end - p));
            if (lf && lf > line + 1 && lf[-1] == '\r') {
                put_held_lines(bc);
                p = line = lf + 1;
                continue;
            }
        }
        if (!lf)
            break;
        send_run(bc, run, line);
        odd_line(bc, line, lf);
        p = line = run = lf + 1;
    }
    send_run(bc, run, line);
    return line;
}

void dkim_body_update(dkim_bodycanon_t *bc, const char *p, size_t n)
{
    const unsigned char *s = (const unsigned char *)p, *end = s + n;

    if (bc->bc_pend_cr || bc->bc_pend_wsp || bc->bc_line_data) {
        /* in the middle of a line: finish it byte-wise */
        const unsigned char *lf = memchr(s, '\n', n);
        if (!lf) {
            dkim_body_update_bytewise(bc, p, n);
            return;
        }
        dkim_body_update_bytewise(bc, p, (size_t)(lf + 1 - s));
        s = lf + 1;
    }
    s = body_lines(bc, s, end);
    if (s < end)
        dkim_body_update_bytewise(bc, (const char *)s, (size_t)(end - s));
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
