/*
 * mta_sts.c - SMTP MTA Strict Transport Security (RFC 8461) for
 * destinations delivered by MX.
 *
 * When delivery.c resolves a route by MX it calls dlv_sts_route_start():
 * a TXT lookup of _mta-sts.<domain> runs beside the MX lookup. A valid
 * record (exactly one "v=STSv1; id=..." record) whose id differs from the
 * cached policy's, or whose cached policy has expired, starts a fetch of
 * https://mta-sts.<domain>/.well-known/mta-sts.txt on the thread's loop:
 * address lookup with the thread's resolver, TCP, TLS through
 * core/base/tls.c's memory BIOs with the thread's client context (PKIX
 * with delivery.ca_file or the system store, SNI and the name
 * mta-sts.<domain> checked), HTTP/1.1 GET with Connection: close, 200 and
 * text/plain only, no redirects, 64 KiB at most, 10 s in all. Until the
 * lookup and the fetch end the destination holds its recipients
 * (dlv_sts_gate). A failed fetch, a missing record or a DNS failure keeps
 * a cached policy that has not expired (RFC 8461 5.1); without one the
 * domain is delivered as if it had no policy.
 *
 * dlv_sts_gate() applies the policy once per resolved route: enforce keeps
 * only the MX hosts that match a pattern (none: recipients deferred 4.7.5)
 * and turns the destination's TLS policy into "verify" (session.c then
 * requires STARTTLS and checks the certificate against the MX host name);
 * testing only logs what enforce would have refused; none is no policy.
 * An explicit tls_policy { } entry for the domain wins: no lookup at all.
 *
 * The parsers (TXT record, policy, HTTP response) and MX pattern matching
 * are pure functions (mta_sts_int.h) with a unit test and a fuzz target.
 *
 * Thread: everything belongs to one delivery thread: its cache (t_sts, a
 * hash table by domain; domains are sharded to threads, so no locks), its
 * destinations' states (de_sts) and its fetches (their handles are on the
 * thread's loop; a fetch is freed in its last close callback).
 */
#include "delivery/delivery_int.h"
#include "delivery/mta_sts_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define STS_FETCH_TIMEOUT_MS 10000 /* the whole fetch: lookup, connect, TLS, HTTP */
#define STS_CACHE_MAX 65536        /* policies cached per delivery thread */
#define STS_FAIL_HOLDOFF 300       /* s: no new fetch for an id whose fetch failed */
#define STS_RESP_MAX (STS_HEAD_MAX + 2 * STS_BODY_MAX) /* raw response bound (chunked) */

typedef struct sts_entry sts_entry_t;
typedef struct sts_fetch sts_fetch_t;
typedef struct sts_txtq sts_txtq_t;

/* Where a destination is in its policy discovery: IDLE (nothing looked
 * up yet, or cancelled at stop), OFF (MTA-STS does not apply: static
 * route, tls_policy entry, feature off), TXT (the _mta-sts lookup), FETCH
 * (waiting for the HTTPS fetch), READY (the policy in force is known). */
typedef enum { SD_IDLE = 0, SD_OFF, SD_TXT, SD_FETCH, SD_READY } sts_dstate_t;

static const char *const sts_dstate_names[] = {"IDLE", "OFF", "TXT", "FETCH", "READY"};

/* One domain's cached policy (the thread's cache). */
struct sts_entry {
    sts_entry_t *e_next;
    char *e_domain;
    char e_id[STS_ID_MAX + 1]; /* id of e_pol */
    sts_policy_t *e_pol;       /* NULL: none cached */
    uint64_t e_fetched;        /* unix s */
    uint64_t e_expires;        /* monotonic us: fetched + max_age */
    sts_fetch_t *e_fetch;      /* in flight */
    char e_fetch_id[STS_ID_MAX + 1];
    char e_fail_id[STS_ID_MAX + 1]; /* the id whose fetch failed last */
    uint64_t e_fail_until;          /* monotonic us: until then, no new fetch for it */
    dlv_sts_dest_t *e_waiter;       /* the destination held for the fetch */
};

struct dlv_sts_cache {
    sts_entry_t **sc_tab;
    size_t sc_cap; /* power of two */
    size_t sc_n;
};

/* A destination's MTA-STS state (de_sts). */
struct dlv_sts_dest {
    dlv_dest_t *sd_de;
    sts_dstate_t sd_state;
    bool sd_applied;                    /* the policy was applied to the current route */
    bool sd_nomatch;                    /* enforce and no MX host of the route matches */
    sts_mode_t sd_mode;                 /* applied to the current route */
    sts_policy_t *sd_pol;               /* in force (NULL: none); a reference */
    char sd_id[STS_ID_MAX + 1];         /* id of sd_pol */
    char sd_applied_id[STS_ID_MAX + 1]; /* id of the policy last applied */
    uint64_t sd_epoch;                  /* monotonic us of the last change of policy */
    uint64_t sd_txt_until;              /* monotonic us: the last TXT answer holds till then */
    sts_txtq_t *sd_txtq;                /* TXT lookup in flight */
    sts_entry_t *sd_entry;              /* waiting for this entry's fetch */
    char sd_why[512];                   /* sd_nomatch: the deferral text */
};

/* A TXT lookup in flight: detached (q_sd = NULL) if the destination goes. */
struct sts_txtq {
    dlv_sts_dest_t *q_sd;
};

/* One policy fetch. Owns its handles; freed when the last one closed and
 * the address lookup has answered (f_refs). */
struct sts_fetch {
    dlv_thread_t *f_t;
    sts_entry_t *f_entry; /* NULL once it has reported */
    char f_host[300];     /* mta-sts.<domain> */
    int f_port;
    int f_refs; /* open handles + the lookup in flight */
    bool f_done;
    uv_timer_t f_timer;
    uv_tcp_t f_tcp;
    uv_connect_t f_creq;
    bool f_tcp_open;
    bool f_tcp_closing;
    sockaddr_any_t *f_addrs;
    int f_naddr;
    int f_ai;
    tls_conn_t *f_tls;
    bool f_hs_done;
    buf_t f_resp;  /* decrypted response */
    buf_t f_chunk; /* chunked body, decoded */
    char f_rbuf[16384];
};

static void sts_dest_enter_state(dlv_sts_dest_t *sd, sts_dstate_t st);
static void sts_txt_cb(void *arg, dns_status_t st, const char *const *txt, int n, uint32_t ttl);
static void sts_resolve(dlv_sts_dest_t *sd, sts_policy_t *pol, const char *id);
static void sts_apply(dlv_dest_t *de);
static sts_entry_t *sts_cache_find(dlv_thread_t *t, const char *domain);
static sts_entry_t *sts_cache_get(dlv_thread_t *t, const char *domain);
static sts_policy_t *sts_entry_live(sts_entry_t *e);
static void sts_fetch_start(dlv_thread_t *t, sts_entry_t *e, const char *id);
static void sts_fetch_finish(sts_fetch_t *f, sts_policy_t *pol, const char *why);
static void sts_fetch_release(sts_fetch_t *f);
static void sts_fetch_addr_cb(void *arg, dns_status_t st, const sockaddr_any_t *addrs, int n,
                              uint32_t ttl);
static void sts_fetch_connect(sts_fetch_t *f);
static void sts_fetch_connect_cb(uv_connect_t *req, int status);
static void sts_fetch_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void sts_fetch_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);
static void sts_fetch_write_cb(uv_write_t *req, int status);
static void sts_fetch_timer_cb(uv_timer_t *h);
static void sts_fetch_step(sts_fetch_t *f, bool eof);
static void sts_fetch_flush(sts_fetch_t *f);

/* ================================================================ parsers */

const char *sts_mode_name(sts_mode_t m)
{
    switch (m) {
    case STS_MODE_ENFORCE:
        return "enforce";
    case STS_MODE_TESTING:
        return "testing";
    case STS_MODE_NONE:
        break;
    }
    return "none";
}

static bool sts_wsp(char c)
{
    return c == ' ' || c == '\t';
}

int sts_txt_record_parse(const char *rec, char id[STS_ID_MAX + 1])
{
    static const char ver[] = "v=STSv1";
    if (strncmp(rec, ver, sizeof(ver) - 1) != 0)
        return 0;
    const char *p = rec + sizeof(ver) - 1;
    if (*p != '\0' && *p != ';' && !sts_wsp(*p))
        return 0; /* "v=STSv10": not ours */
    bool have_id = false;
    for (;;) {
        /* sts-field-delim = *WSP ";" *WSP, then a field (or the end) */
        while (sts_wsp(*p))
            p++;
        if (*p == '\0')
            break;
        if (*p != ';')
            return SL_EPARSE;
        p++;
        while (sts_wsp(*p))
            p++;
        if (*p == '\0')
            break; /* a trailing ";" */
        const char *name = p;
        while (isalnum((unsigned char)*p) || *p == '_' || *p == '-' || *p == '.')
            p++;
        size_t nlen = (size_t)(p - name);
        if (nlen == 0 || nlen > 32 || *p != '=')
            return SL_EPARSE;
        p++;
        const char *val = p;
        /* sts-ext-value: %x21-3A / %x3C / %x3E-7E */
        while (*p > 0x20 && *p < 0x7f && *p != ';' && *p != '=')
            p++;
        size_t vlen = (size_t)(p - val);
        if (vlen == 0)
            return SL_EPARSE;
        if (nlen == 2 && memcmp(name, "id", 2) == 0) {
            if (vlen > STS_ID_MAX)
                return SL_EPARSE;
            for (size_t i = 0; i < vlen; i++)
                if (!isalnum((unsigned char)val[i]))
                    return SL_EPARSE;
            if (!have_id) { /* the first one counts */
                memcpy(id, val, vlen);
                id[vlen] = '\0';
                have_id = true;
            }
        }
    }
    return have_id ? 1 : SL_EPARSE;
}

int sts_txt_select(const char *const *txt, int n, char id[STS_ID_MAX + 1], char *why, size_t whylen)
{
    int found = 0, valid = 0;
    char tmp[STS_ID_MAX + 1];
    for (int i = 0; i < n; i++) {
        int rc = sts_txt_record_parse(txt[i], tmp);
        if (rc == 0)
            continue;
        found++;
        if (rc == 1) {
            valid++;
            memcpy(id, tmp, sizeof(tmp));
        }
    }
    if (found == 1 && valid == 1)
        return 1;
    if (found == 0)
        snprintf(why, whylen, "no v=STSv1 record");
    else if (found > 1)
        snprintf(why, whylen, "%d v=STSv1 records (RFC 8461 3.1 wants one)", found);
    else
        snprintf(why, whylen, "invalid v=STSv1 record");
    return 0;
}

sts_policy_t *sts_policy_ref(sts_policy_t *p)
{
    if (p != NULL)
        p->sp_refs++;
    return p;
}

void sts_policy_unref(sts_policy_t *p)
{
    if (p == NULL || --p->sp_refs > 0)
        return;
    for (int i = 0; i < p->sp_nmx; i++)
        free(p->sp_mx[i]);
    free(p->sp_mx);
    free(p);
}

/* An mx pattern: ["*."] Domain (letters, digits, "-", "_" in labels of 1..63,
 * 253 in all); stored lower case without a trailing dot. NULL if invalid. */
static char *sts_pattern_norm(const char *v, size_t len)
{
    if (len > 0 && v[len - 1] == '.')
        len--;
    size_t start = 0;
    if (len >= 2 && v[0] == '*' && v[1] == '.')
        start = 2;
    if (len == start || len > 253)
        return NULL;
    size_t label = 0;
    for (size_t i = start; i < len; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == '.') {
            if (label == 0)
                return NULL;
            label = 0;
            continue;
        }
        if (!isalnum(c) && c != '-' && c != '_')
            return NULL;
        if (++label > 63)
            return NULL;
    }
    if (label == 0)
        return NULL;
    char *out = xstrndup(v, len);
    for (char *q = out; *q; q++)
        *q = (char)tolower((unsigned char)*q);
    return out;
}

int sts_policy_parse(const char *text, size_t len, sts_policy_t **out, char *why, size_t whylen)
{
    sts_policy_t *p = xcalloc(1, sizeof(*p));
    p->sp_refs = 1;
    bool have_ver = false, have_mode = false, have_age = false;
    int lineno = 0;
    size_t i = 0;
    while (i < len) {
        const char *line = text + i;
        const char *nl = memchr(line, '\n', len - i);
        size_t ll = nl ? (size_t)(nl - line) : len - i;
        i += ll + (nl ? 1 : 0);
        lineno++;
        if (ll > 0 && line[ll - 1] == '\r')
            ll--;
        while (ll > 0 && sts_wsp(line[ll - 1])) /* sts-policy-field *WSP */
            ll--;
        if (ll == 0)
            continue; /* blank lines: tolerated */
        const char *colon = memchr(line, ':', ll);
        size_t nlen = colon ? (size_t)(colon - line) : 0;
        if (colon == NULL || nlen == 0) {
            snprintf(why, whylen, "line %d: not \"key: value\"", lineno);
            goto fail;
        }
        for (size_t k = 0; k < nlen; k++) {
            char c = line[k];
            if (!isalnum((unsigned char)c) && c != '_' && c != '-' && c != '.') {
                snprintf(why, whylen, "line %d: bad key", lineno);
                goto fail;
            }
        }
        const char *v = colon + 1;
        size_t vlen = ll - nlen - 1;
        while (vlen > 0 && sts_wsp(*v)) /* sts-policy-field-delim = ":" *WSP */
            v++, vlen--;
#define KEY_IS(k) (nlen == sizeof(k) - 1 && memcmp(line, k, nlen) == 0)
        if (KEY_IS("version")) {
            if (have_ver)
                continue;
            if (vlen != 5 || memcmp(v, "STSv1", 5) != 0) {
                snprintf(why, whylen, "line %d: version is not STSv1", lineno);
                goto fail;
            }
            have_ver = true;
        } else if (KEY_IS("mode")) {
            if (have_mode)
                continue;
            if (vlen == 7 && memcmp(v, "enforce", 7) == 0)
                p->sp_mode = STS_MODE_ENFORCE;
            else if (vlen == 7 && memcmp(v, "testing", 7) == 0)
                p->sp_mode = STS_MODE_TESTING;
            else if (vlen == 4 && memcmp(v, "none", 4) == 0)
                p->sp_mode = STS_MODE_NONE;
            else {
                snprintf(why, whylen, "line %d: unknown mode \"%.*s\"", lineno, (int)MIN(vlen, 40),
                         v);
                goto fail;
            }
            have_mode = true;
        } else if (KEY_IS("max_age")) {
            if (have_age)
                continue;
            uint64_t age = 0;
            if (vlen == 0 || vlen > 10) {
                snprintf(why, whylen, "line %d: bad max_age", lineno);
                goto fail;
            }
            for (size_t k = 0; k < vlen; k++) {
                if (!isdigit((unsigned char)v[k])) {
                    snprintf(why, whylen, "line %d: bad max_age", lineno);
                    goto fail;
                }
                age = age * 10 + (uint64_t)(v[k] - '0');
            }
            if (age > STS_MAX_AGE_MAX) {
                snprintf(why, whylen, "line %d: max_age %llu above %u", lineno,
                         (unsigned long long)age, STS_MAX_AGE_MAX);
                goto fail;
            }
            p->sp_max_age = (uint32_t)age;
            have_age = true;
        } else if (KEY_IS("mx")) {
            char *pat = sts_pattern_norm(v, vlen);
            if (pat == NULL) {
                snprintf(why, whylen, "line %d: bad mx pattern \"%.*s\"", lineno,
                         (int)MIN(vlen, 80), v);
                goto fail;
            }
            p->sp_mx = xrealloc(p->sp_mx, sizeof(char *) * (size_t)(p->sp_nmx + 1));
            p->sp_mx[p->sp_nmx++] = pat;
        }
        /* other keys: extensions, ignored (RFC 8461 3.2) */
#undef KEY_IS
    }
    if (!have_ver || !have_mode || !have_age) {
        snprintf(why, whylen, "missing %s",
                 !have_ver    ? "version"
                 : !have_mode ? "mode"
                              : "max_age");
        goto fail;
    }
    if (p->sp_nmx == 0 && p->sp_mode != STS_MODE_NONE) {
        snprintf(why, whylen, "no mx pattern");
        goto fail;
    }
    *out = p;
    return 0;
fail:
    sts_policy_unref(p);
    return SL_EPARSE;
}

bool sts_mx_pattern_match(const char *pattern, const char *host)
{
    size_t hl = strlen(host);
    if (hl > 0 && host[hl - 1] == '.')
        hl--;
    if (pattern[0] == '*' && pattern[1] == '.') {
        /* exactly one label in front of the rest: "*.example.com" matches
         * "mx.example.com", not "example.com" nor "a.b.example.com" */
        const char *dot = memchr(host, '.', hl);
        if (dot == NULL || dot == host)
            return false;
        size_t rl = hl - (size_t)(dot + 1 - host);
        return strlen(pattern + 2) == rl && strncasecmp(dot + 1, pattern + 2, rl) == 0;
    }
    return strlen(pattern) == hl && strncasecmp(host, pattern, hl) == 0;
}

bool sts_policy_mx_match(const sts_policy_t *p, const char *host)
{
    for (int i = 0; i < p->sp_nmx; i++)
        if (sts_mx_pattern_match(p->sp_mx[i], host))
            return true;
    return false;
}

/* The value of a header line "Name: value" if its name is name (trimmed). */
static bool sts_header(const char *line, size_t len, const char *name, const char **val,
                       size_t *vlen)
{
    size_t n = strlen(name);
    if (len <= n || line[n] != ':' || strncasecmp(line, name, n) != 0)
        return false;
    const char *v = line + n + 1, *e = line + len;
    while (v < e && sts_wsp(*v))
        v++;
    while (e > v && sts_wsp(e[-1]))
        e--;
    *val = v;
    *vlen = (size_t)(e - v);
    return true;
}

/* Decode a chunked body (RFC 9112 7.1) from p[0, len) into out: 1 done, 0
 * incomplete, SL_EPARSE (why) on a bad or too large body. */
static int sts_unchunk(const char *p, size_t len, buf_t *out, char *why, size_t whylen)
{
    size_t i = 0;
    buf_reset(out);
    for (;;) {
        const char *nl = memchr(p + i, '\n', len - i);
        if (nl == NULL)
            return len - i > 1024 ? (snprintf(why, whylen, "bad chunk size line"), SL_EPARSE) : 0;
        size_t size = 0, k = i;
        int digits = 0;
        while (k < len && isxdigit((unsigned char)p[k])) {
            int c = tolower((unsigned char)p[k]);
            size = size * 16 + (size_t)(isdigit(c) ? c - '0' : c - 'a' + 10);
            if (++digits > 8) {
                snprintf(why, whylen, "chunk too large");
                return SL_EPARSE;
            }
            k++;
        }
        if (digits == 0) {
            snprintf(why, whylen, "bad chunk size line");
            return SL_EPARSE;
        }
        i = (size_t)(nl - p) + 1; /* chunk extensions ignored */
        if (size == 0) {
            /* trailers up to an empty line */
            for (;;) {
                const char *e = memchr(p + i, '\n', len - i);
                if (e == NULL)
                    return 0;
                size_t ll = (size_t)(e - (p + i));
                i += ll + 1;
                if (ll == 0 || (ll == 1 && p[i - 2] == '\r'))
                    return 1;
            }
        }
        if (out->b_len + size > STS_BODY_MAX) {
            snprintf(why, whylen, "policy larger than %d bytes", STS_BODY_MAX);
            return SL_EPARSE;
        }
        if (len - i < size + 1)
            return 0;
        buf_append(out, p + i, size);
        i += size;
        if (p[i] == '\r') {
            if (len - i < 2)
                return 0;
            i++;
        }
        if (p[i] != '\n') {
            snprintf(why, whylen, "bad chunk end");
            return SL_EPARSE;
        }
        i++;
    }
}

int sts_http_parse(const char *resp, size_t len, bool eof, buf_t *scratch, const char **body,
                   size_t *blen, char *why, size_t whylen)
{
    /* the head ends at the first empty line (CRLF or bare LF) */
    size_t hend = 0, bstart = 0;
    for (size_t i = 0; i < len && i < STS_HEAD_MAX; i++) {
        if (resp[i] != '\n')
            continue;
        if (i + 1 < len && resp[i + 1] == '\n') {
            hend = i + 1, bstart = i + 2;
            break;
        }
        if (i + 2 < len && resp[i + 1] == '\r' && resp[i + 2] == '\n') {
            hend = i + 1, bstart = i + 3;
            break;
        }
    }
    if (bstart == 0) {
        if (len >= STS_HEAD_MAX) {
            snprintf(why, whylen, "HTTP header too long");
            return SL_EPARSE;
        }
        if (eof) {
            snprintf(why, whylen, len ? "truncated HTTP header" : "empty HTTP response");
            return SL_EPARSE;
        }
        return 0;
    }
    /* status line: HTTP/1.x 200 ... */
    const char *nl = memchr(resp, '\n', hend);
    size_t sl = (size_t)(nl - resp);
    if (sl < 12 || strncmp(resp, "HTTP/1.", 7) != 0 || !isdigit((unsigned char)resp[7]) ||
        resp[8] != ' ' || !isdigit((unsigned char)resp[9]) || !isdigit((unsigned char)resp[10]) ||
        !isdigit((unsigned char)resp[11])) {
        snprintf(why, whylen, "not an HTTP/1.x response");
        return SL_EPARSE;
    }
    int status = (resp[9] - '0') * 100 + (resp[10] - '0') * 10 + (resp[11] - '0');
    if (status != 200) {
        snprintf(why, whylen, "HTTP status %d%s", status,
                 status / 100 == 3 ? " (redirects are not followed, RFC 8461 3.3)" : "");
        return SL_EPARSE;
    }
    bool chunked = false, have_cl = false, have_ct = false;
    size_t cl = 0;
    for (size_t i = sl + 1; i < hend;) {
        const char *line = resp + i;
        const char *e = memchr(line, '\n', hend - i);
        size_t ll = (size_t)(e - line);
        i += ll + 1;
        if (ll > 0 && line[ll - 1] == '\r')
            ll--;
        const char *v;
        size_t vl;
        if (sts_header(line, ll, "Content-Type", &v, &vl)) {
            size_t t = 0;
            while (t < vl && v[t] != ';' && !sts_wsp(v[t]))
                t++;
            if (t != 10 || strncasecmp(v, "text/plain", 10) != 0) {
                snprintf(why, whylen, "Content-Type \"%.*s\" is not text/plain", (int)MIN(vl, 60),
                         v);
                return SL_EPARSE;
            }
            have_ct = true;
        } else if (sts_header(line, ll, "Transfer-Encoding", &v, &vl)) {
            if (vl != 7 || strncasecmp(v, "chunked", 7) != 0) {
                snprintf(why, whylen, "Transfer-Encoding \"%.*s\" not supported", (int)MIN(vl, 60),
                         v);
                return SL_EPARSE;
            }
            chunked = true;
        } else if (sts_header(line, ll, "Content-Length", &v, &vl)) {
            size_t n = 0;
            if (vl == 0 || vl > 10) {
                snprintf(why, whylen, "bad Content-Length");
                return SL_EPARSE;
            }
            for (size_t k = 0; k < vl; k++) {
                if (!isdigit((unsigned char)v[k])) {
                    snprintf(why, whylen, "bad Content-Length");
                    return SL_EPARSE;
                }
                n = n * 10 + (size_t)(v[k] - '0');
            }
            if (have_cl && n != cl) {
                snprintf(why, whylen, "conflicting Content-Length");
                return SL_EPARSE;
            }
            cl = n;
            have_cl = true;
        }
    }
    if (!have_ct) {
        snprintf(why, whylen, "no Content-Type (text/plain wanted)");
        return SL_EPARSE;
    }
    const char *b = resp + bstart;
    size_t avail = len - bstart;
    if (chunked) { /* wins over Content-Length (RFC 9112 6.3) */
        int rc = sts_unchunk(b, avail, scratch, why, whylen);
        if (rc == 0 && eof) {
            snprintf(why, whylen, "truncated chunked body");
            return SL_EPARSE;
        }
        if (rc != 1)
            return rc;
        *body = scratch->b_data ? scratch->b_data : "";
        *blen = scratch->b_len;
        return 1;
    }
    if (have_cl) {
        if (cl > STS_BODY_MAX) {
            snprintf(why, whylen, "policy larger than %d bytes", STS_BODY_MAX);
            return SL_EPARSE;
        }
        if (avail < cl) {
            if (eof) {
                snprintf(why, whylen, "truncated body (%zu of %zu bytes)", avail, cl);
                return SL_EPARSE;
            }
            return 0;
        }
        *body = b;
        *blen = cl;
        return 1;
    }
    if (avail > STS_BODY_MAX) {
        snprintf(why, whylen, "policy larger than %d bytes", STS_BODY_MAX);
        return SL_EPARSE;
    }
    if (!eof)
        return 0; /* the body ends with the connection */
    *body = b;
    *blen = avail;
    return 1;
}

/* ================================================================ cache */

static uint64_t sts_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)tolower((unsigned char)*s);
        h *= 1099511628211ULL;
    }
    return h;
}

static sts_entry_t *sts_cache_find(dlv_thread_t *t, const char *domain)
{
    dlv_sts_cache_t *c = t->t_sts;
    if (c == NULL)
        return NULL;
    for (sts_entry_t *e = c->sc_tab[sts_hash(domain) & (c->sc_cap - 1)]; e; e = e->e_next)
        if (strcasecmp(e->e_domain, domain) == 0)
            return e;
    return NULL;
}

static void sts_entry_free(sts_entry_t *e)
{
    sts_policy_unref(e->e_pol);
    free(e->e_domain);
    free(e);
}

/* Make room for one more entry: drop expired policies, then (a full cache
 * of live ones) any entry nothing waits for. */
static void sts_cache_evict(dlv_sts_cache_t *c)
{
    uint64_t now = clock_mono_us();
    for (int pass = 0; pass < 2 && c->sc_n >= STS_CACHE_MAX; pass++) {
        for (size_t b = 0; b < c->sc_cap && c->sc_n >= STS_CACHE_MAX; b++) {
            sts_entry_t **pp = &c->sc_tab[b];
            while (*pp != NULL) {
                sts_entry_t *e = *pp;
                bool busy = e->e_fetch != NULL || e->e_waiter != NULL;
                if (!busy && (pass == 1 || e->e_pol == NULL || e->e_expires <= now)) {
                    *pp = e->e_next;
                    c->sc_n--;
                    sts_entry_free(e);
                    continue;
                }
                pp = &e->e_next;
            }
        }
    }
}

static sts_entry_t *sts_cache_get(dlv_thread_t *t, const char *domain)
{
    sts_entry_t *e = sts_cache_find(t, domain);
    if (e != NULL)
        return e;
    dlv_sts_cache_t *c = t->t_sts;
    if (c == NULL) {
        c = t->t_sts = xcalloc(1, sizeof(*c));
        c->sc_cap = 256;
        c->sc_tab = xcalloc(c->sc_cap, sizeof(*c->sc_tab));
    }
    if (c->sc_n >= STS_CACHE_MAX)
        sts_cache_evict(c);
    if (c->sc_n >= c->sc_cap && c->sc_cap < STS_CACHE_MAX) { /* grow: rehash */
        size_t cap = c->sc_cap * 2;
        sts_entry_t **nt = xcalloc(cap, sizeof(*nt));
        for (size_t i = 0; i < c->sc_cap; i++) {
            while (c->sc_tab[i] != NULL) {
                sts_entry_t *x = c->sc_tab[i];
                c->sc_tab[i] = x->e_next;
                size_t nb = sts_hash(x->e_domain) & (cap - 1);
                x->e_next = nt[nb];
                nt[nb] = x;
            }
        }
        free(c->sc_tab);
        c->sc_tab = nt;
        c->sc_cap = cap;
    }
    e = xcalloc(1, sizeof(*e));
    e->e_domain = xstrdup(domain);
    size_t b = sts_hash(domain) & (c->sc_cap - 1);
    e->e_next = c->sc_tab[b];
    c->sc_tab[b] = e;
    c->sc_n++;
    return e;
}

/* The entry's policy if it has one that has not expired, else NULL. */
static sts_policy_t *sts_entry_live(sts_entry_t *e)
{
    if (e == NULL || e->e_pol == NULL || e->e_expires <= clock_mono_us())
        return NULL;
    return e->e_pol;
}

void dlv_sts_thread_stop(dlv_thread_t *t)
{
    dlv_sts_cache_t *c = t->t_sts;
    if (c == NULL)
        return;
    for (size_t b = 0; b < c->sc_cap; b++)
        for (sts_entry_t *e = c->sc_tab[b]; e; e = e->e_next)
            if (e->e_fetch != NULL)
                sts_fetch_finish(e->e_fetch, NULL, "delivery stopping");
}

void dlv_sts_thread_free(dlv_thread_t *t)
{
    dlv_sts_cache_t *c = t->t_sts;
    if (c == NULL)
        return;
    for (size_t b = 0; b < c->sc_cap; b++) {
        while (c->sc_tab[b] != NULL) {
            sts_entry_t *e = c->sc_tab[b];
            c->sc_tab[b] = e->e_next;
            sts_entry_free(e);
        }
    }
    free(c->sc_tab);
    free(c);
    t->t_sts = NULL;
}

/* ================================================================ destinations */

static void sts_dest_enter_state(dlv_sts_dest_t *sd, sts_dstate_t st)
{
    log_debug("delivery: %s: MTA-STS %s -> %s", sd->sd_de->de_domain,
              sts_dstate_names[sd->sd_state], sts_dstate_names[st]);
    sd->sd_state = st;
}

void dlv_sts_route_start(dlv_dest_t *de)
{
    dlv_thread_t *t = de->de_t;
    const cfg_t *cfg = t->t_cfg;
    dlv_sts_dest_t *sd = de->de_sts;
    const char *dom = de->de_domain;
    size_t dl = strlen(dom);
    if (dl > 0 && dom[dl - 1] == '.')
        dl--;
    /* an explicit tls_policy entry wins over MTA-STS; an address literal
     * or an overlong name has no policy host */
    if (!cfg->c_dlv_mta_sts || cfg_tls_policy_explicit(cfg, dom) || dl == 0 || dl > 230 ||
        dom[0] == '[') {
        if (sd != NULL && sd->sd_state != SD_TXT && sd->sd_state != SD_FETCH) {
            sts_dest_enter_state(sd, SD_OFF);
            sd->sd_mode = STS_MODE_NONE;
            de->de_policy = cfg_tls_policy_for(cfg, dom);
        }
        return;
    }
    if (sd == NULL) {
        sd = de->de_sts = xcalloc(1, sizeof(*sd));
        sd->sd_de = de;
    }
    sd->sd_applied = false; /* the new route gets the policy applied */
    if (sd->sd_state == SD_TXT || sd->sd_state == SD_FETCH)
        return; /* already on its way: it kicks de when it ends */
    if (sd->sd_state == SD_READY && clock_mono_us() < sd->sd_txt_until)
        return; /* the last TXT answer (or failure) still holds */
    sts_dest_enter_state(sd, SD_TXT);
    sts_txtq_t *q = xcalloc(1, sizeof(*q));
    q->q_sd = sd;
    sd->sd_txtq = q;
    char name[300];
    snprintf(name, sizeof(name), "_mta-sts.%.*s", (int)dl, dom);
    atomic_fetch_add_explicit(&t->t_d->d_stats.ds_dns_lookups, 1, memory_order_relaxed);
    dns_query_txt(t->t_dns, name, sts_txt_cb, q);
}

/* The TXT answer decides: cached policy, a fetch, or none (RFC 8461 5.1). */
static void sts_txt_cb(void *arg, dns_status_t st, const char *const *txt, int n, uint32_t ttl)
{
    sts_txtq_t *q = arg;
    dlv_sts_dest_t *sd = q->q_sd;
    free(q);
    if (sd == NULL)
        return; /* the destination is gone */
    sd->sd_txtq = NULL;
    dlv_dest_t *de = sd->sd_de;
    dlv_thread_t *t = de->de_t;
    if (st == DNS_CANCELLED || t->t_stopping) {
        sts_dest_enter_state(sd, SD_IDLE);
        return;
    }
    /* the answer holds for its TTL (at least 1 s, at most dns_cache_max_ttl);
     * a failure for a minute: a resolver that drops TXT queries must not
     * hold the destination at every route refresh */
    uint64_t hold = st == DNS_TEMPFAIL ? 60 : MAX(ttl, 1);
    hold = MIN(hold, MAX(t->t_cfg->c_dlv_dns_cache_max, 1));
    sd->sd_txt_until = clock_mono_us() + hold * 1000000ULL;
    sts_entry_t *e = sts_cache_find(t, de->de_domain);
    sts_policy_t *live = sts_entry_live(e);
    char id[STS_ID_MAX + 1] = "", why[160] = "";
    int rc = st == DNS_OK ? sts_txt_select(txt, n, id, why, sizeof(why)) : 0;
    if (rc == 1) {
        if (live != NULL && strcmp(e->e_id, id) == 0) {
            sts_resolve(sd, live, e->e_id); /* the cached policy is current */
            return;
        }
        if (e != NULL && e->e_fail_until > clock_mono_us() && strcmp(e->e_fail_id, id) == 0) {
            /* its fetch failed a moment ago: not again at every route
             * refresh (each would hold the destination) */
            log_debug("delivery: %s: MTA-STS id=%s: last fetch failed, not retried yet",
                      de->de_domain, id);
            sts_resolve(sd, live, live ? e->e_id : "");
            return;
        }
        e = sts_cache_get(t, de->de_domain);
        sts_dest_enter_state(sd, SD_FETCH);
        sd->sd_entry = e;
        e->e_waiter = sd;
        if (e->e_fetch == NULL || strcmp(e->e_fetch_id, id) != 0) {
            if (e->e_fetch != NULL) /* an older id's fetch: its answer is stale */
                sts_fetch_finish(e->e_fetch, NULL, "superseded");
            sts_fetch_start(t, e, id);
        }
        return;
    }
    if (st == DNS_OK && why[0] && strcmp(why, "no v=STSv1 record") != 0)
        log_info("delivery: %s: MTA-STS record ignored: %s", de->de_domain, why);
    if (live != NULL) {
        /* no live record (removed, invalid, DNS failure): a cached policy
         * that has not expired still applies (RFC 8461 5.1) */
        log_info("delivery: %s: MTA-STS: %s; using the cached policy id=%s (fetched %llus ago)",
                 de->de_domain, st == DNS_OK ? why : dns_status_str(st), e->e_id,
                 (unsigned long long)(clock_now_s() - MIN(e->e_fetched, clock_now_s())));
        sts_resolve(sd, live, e->e_id);
        return;
    }
    if (st == DNS_TEMPFAIL)
        log_info("delivery: %s: MTA-STS TXT lookup failed (%s): delivering without a policy",
                 de->de_domain, dns_status_str(st));
    sts_resolve(sd, NULL, "");
}

/* The policy in force for de's next route is known: apply it at the next
 * kick. */
static void sts_resolve(dlv_sts_dest_t *sd, sts_policy_t *pol, const char *id)
{
    if (pol != NULL) { /* not used past its max_age without a new TXT lookup */
        sts_entry_t *e = sts_cache_find(sd->sd_de->de_t, sd->sd_de->de_domain);
        uint64_t exp = e != NULL && e->e_pol == pol ? e->e_expires : 0;
        sd->sd_txt_until = MIN(sd->sd_txt_until, exp);
    }
    sts_policy_ref(pol);
    sts_policy_unref(sd->sd_pol);
    sd->sd_pol = pol;
    snprintf(sd->sd_id, sizeof(sd->sd_id), "%s", id);
    sts_dest_enter_state(sd, SD_READY);
    sd->sd_applied = false;
    sd->sd_entry = NULL;
    dlv_dest_kick(sd->sd_de);
}

bool dlv_sts_gate(dlv_dest_t *de)
{
    dlv_sts_dest_t *sd = de->de_sts;
    if (sd == NULL || sd->sd_state == SD_OFF)
        return true;
    if (sd->sd_state != SD_READY)
        return false; /* held: the lookup kicks de when it ends */
    if (!sd->sd_applied)
        sts_apply(de);
    if (sd->sd_nomatch) {
        dlv_dest_fail_pending_with(de, 0, "4.7.5", sd->sd_why, 0);
        return false;
    }
    return true;
}

/* host is an item of the ", "-separated list in b (not NUL-terminated). */
static bool sts_list_has(const buf_t *b, const char *host)
{
    size_t hl = strlen(host), i = 0;
    while (i < b->b_len) {
        const char *item = b->b_data + i;
        const char *sep = memchr(item, ',', b->b_len - i);
        size_t il = sep ? (size_t)(sep - item) : b->b_len - i;
        if (il == hl && strncasecmp(item, host, hl) == 0)
            return true;
        i += il + 2; /* ", " */
    }
    return false;
}

/* Apply the policy in force to the route just resolved. */
static void sts_apply(dlv_dest_t *de)
{
    dlv_sts_dest_t *sd = de->de_sts;
    const cfg_t *cfg = de->de_t->t_cfg;
    sts_policy_t *p = sd->sd_pol;
    sts_mode_t mode = p ? p->sp_mode : STS_MODE_NONE;
    sd->sd_applied = true;
    sd->sd_nomatch = false;
    /* sessions of another policy QUIT (dlv_sts_session_stale) */
    if (mode != sd->sd_mode || strcmp(sd->sd_id, sd->sd_applied_id) != 0)
        sd->sd_epoch = clock_mono_us();
    sd->sd_mode = mode;
    memcpy(sd->sd_applied_id, sd->sd_id, sizeof(sd->sd_id));
    int want = mode == STS_MODE_ENFORCE ? CFG_TLS_VERIFY : cfg_tls_policy_for(cfg, de->de_domain);
    if (want != de->de_policy) {
        de->de_policy = want;
        /* a session resumed from an unverified handshake would skip the
         * certificate check */
        if (de->de_tls_session != NULL) {
            tls_session_free(de->de_tls_session);
            de->de_tls_session = NULL;
        }
        sd->sd_epoch = clock_mono_us();
    }
    if (mode == STS_MODE_NONE)
        return;
    int match = 0, total = de->de_naddr;
    buf_t bad;
    buf_init(&bad, 128);
    for (int i = 0; i < de->de_naddr; i++) {
        const char *h = de->de_addrs[i].da_host;
        if (sts_policy_mx_match(p, h))
            match++;
        else if (!sts_list_has(&bad, h) && bad.b_len < 300) /* each host once */
            buf_printf(&bad, "%s%s", bad.b_len ? ", " : "", h);
    }
    buf_append(&bad, "", 1);
    if (mode == STS_MODE_ENFORCE && match > 0 && match < total) {
        /* only the matching hosts, in MX order (RFC 8461 4.1) */
        int kept = 0;
        for (int i = 0; i < de->de_naddr; i++) {
            dlv_addr_t *a = &de->de_addrs[i];
            if (sts_policy_mx_match(p, a->da_host))
                de->de_addrs[kept++] = *a;
            else
                free(a->da_host);
        }
        de->de_naddr = kept;
    }
    if (mode == STS_MODE_ENFORCE) {
        /* none matches: the addresses stay (sessions of the previous
         * route may still reconnect) but the gate defers everything */
        if (match == 0) {
            sd->sd_nomatch = true;
            snprintf(sd->sd_why, sizeof(sd->sd_why),
                     "MTA-STS: no MX host matches the policy of %s (MX: %s)", de->de_domain,
                     bad.b_data);
            log_warn("delivery: %s: MTA-STS enforce id=%s: no MX host matches the policy (MX: %s)",
                     de->de_domain, sd->sd_id, bad.b_data);
        } else if (bad.b_data[0]) {
            log_info("delivery: %s: MTA-STS enforce id=%s: skipping MX %s (not in the policy)",
                     de->de_domain, sd->sd_id, bad.b_data);
        }
    } else if (bad.b_data[0]) {
        log_warn("delivery: %s: MTA-STS testing id=%s: MX %s not in the policy (enforce mode "
                 "would %s)",
                 de->de_domain, sd->sd_id, bad.b_data,
                 match == 0 ? "defer: no MX host matches" : "skip it");
    }
    log_debug("delivery: %s: MTA-STS mode=%s id=%s: %d of %d addresses kept", de->de_domain,
              sts_mode_name(mode), sd->sd_id, de->de_naddr, total);
    buf_free(&bad);
}

void dlv_sts_dest_free(dlv_dest_t *de)
{
    dlv_sts_dest_t *sd = de->de_sts;
    if (sd == NULL)
        return;
    if (sd->sd_txtq != NULL)
        sd->sd_txtq->q_sd = NULL; /* its answer goes nowhere */
    if (sd->sd_entry != NULL && sd->sd_entry->e_waiter == sd)
        sd->sd_entry->e_waiter = NULL; /* the fetch still fills the cache */
    sts_policy_unref(sd->sd_pol);
    free(sd);
    de->de_sts = NULL;
}

const char *dlv_sts_mode(const dlv_dest_t *de)
{
    const dlv_sts_dest_t *sd = de->de_sts;
    if (sd == NULL || sd->sd_state == SD_OFF || sd->sd_mode == STS_MODE_NONE)
        return NULL;
    return sts_mode_name(sd->sd_mode);
}

bool dlv_sts_enforced(const dlv_dest_t *de)
{
    const dlv_sts_dest_t *sd = de->de_sts;
    return sd != NULL && sd->sd_state != SD_OFF && sd->sd_mode == STS_MODE_ENFORCE &&
           de->de_policy == CFG_TLS_VERIFY;
}

void dlv_sts_testing_failure(const dlv_dest_t *de, const char *host, const char *what)
{
    const dlv_sts_dest_t *sd = de->de_sts;
    if (sd == NULL || sd->sd_state == SD_OFF || sd->sd_mode != STS_MODE_TESTING)
        return;
    log_warn("delivery: %s: MTA-STS testing id=%s: %s: %s (enforce mode would defer)",
             de->de_domain, sd->sd_id, host, what);
}

bool dlv_sts_session_stale(const dlv_dest_t *de, uint64_t born)
{
    const dlv_sts_dest_t *sd = de->de_sts;
    return sd != NULL && born < sd->sd_epoch;
}

/* ================================================================ fetch */

static void sts_fetch_start(dlv_thread_t *t, sts_entry_t *e, const char *id)
{
    sts_fetch_t *f = xcalloc(1, sizeof(*f));
    f->f_t = t;
    f->f_entry = e;
    f->f_port = t->t_cfg->c_dlv_mta_sts_port;
    snprintf(f->f_host, sizeof(f->f_host), "mta-sts.%s", e->e_domain);
    size_t hl = strlen(f->f_host);
    if (hl > 0 && f->f_host[hl - 1] == '.')
        f->f_host[hl - 1] = '\0';
    buf_init(&f->f_resp, 0);
    buf_init(&f->f_chunk, 0);
    e->e_fetch = f;
    snprintf(e->e_fetch_id, sizeof(e->e_fetch_id), "%s", id);
    log_debug("delivery: %s: MTA-STS id=%s: fetching https://%s:%d/.well-known/mta-sts.txt",
              e->e_domain, id, f->f_host, f->f_port);
    uv_timer_init(&t->t_loop, &f->f_timer);
    f->f_timer.data = f;
    f->f_refs = 2; /* the timer, the lookup */
    uv_timer_start(&f->f_timer, sts_fetch_timer_cb, STS_FETCH_TIMEOUT_MS, 0);
    atomic_fetch_add_explicit(&t->t_d->d_stats.ds_dns_lookups, 1, memory_order_relaxed);
    dns_query_addr(t->t_dns, f->f_host, f->f_port, sts_fetch_addr_cb, f);
}

static void sts_fetch_release(sts_fetch_t *f)
{
    if (--f->f_refs > 0)
        return;
    tls_conn_free(f->f_tls);
    free(f->f_addrs);
    buf_free(&f->f_resp);
    buf_free(&f->f_chunk);
    free(f);
}

static void sts_fetch_closed_cb(uv_handle_t *h)
{
    sts_fetch_t *f = h->data;
    if (h == (uv_handle_t *)&f->f_tcp) {
        f->f_tcp_open = false;
        f->f_tcp_closing = false;
        if (!f->f_done) { /* connect failed: the next address */
            f->f_ai++;
            sts_fetch_connect(f); /* before the release: f must outlive the call */
            sts_fetch_release(f);
            return;
        }
    }
    sts_fetch_release(f);
}

/* The fetch is over: report to the cache entry (pol: a new reference, or
 * NULL with why) and close the handles. */
static void sts_fetch_finish(sts_fetch_t *f, sts_policy_t *pol, const char *why)
{
    if (f->f_done) {
        sts_policy_unref(pol);
        return;
    }
    if (pol == NULL && why == NULL) /* never: every failure names itself */
        why = "failed";
    f->f_done = true;
    uv_timer_stop(&f->f_timer);
    uv_close((uv_handle_t *)&f->f_timer, sts_fetch_closed_cb);
    if (f->f_tcp_open && !f->f_tcp_closing) {
        f->f_tcp_closing = true;
        uv_close((uv_handle_t *)&f->f_tcp, sts_fetch_closed_cb);
    }
    sts_entry_t *e = f->f_entry;
    f->f_entry = NULL;
    if (e == NULL) {
        sts_policy_unref(pol);
        return;
    }
    e->e_fetch = NULL;
    dlv_thread_t *t = f->f_t;
    if (pol != NULL) {
        sts_policy_unref(e->e_pol);
        e->e_pol = pol;
        snprintf(e->e_id, sizeof(e->e_id), "%s", e->e_fetch_id);
        e->e_fetched = clock_now_s();
        e->e_expires = clock_mono_us() + (uint64_t)pol->sp_max_age * 1000000ULL;
        if (log_level_current <= LOG_INFO) {
            buf_t mx;
            buf_init(&mx, 128);
            for (int i = 0; i < pol->sp_nmx && mx.b_len < 400; i++)
                buf_printf(&mx, "%s%s", i ? "," : "", pol->sp_mx[i]);
            buf_append(&mx, "", 1);
            log_info("delivery: %s: MTA-STS policy id=%s mode=%s max_age=%u mx=%s", e->e_domain,
                     e->e_id, sts_mode_name(pol->sp_mode), pol->sp_max_age, mx.b_data);
            buf_free(&mx);
        }
    } else if (!t->t_stopping && strcmp(why, "superseded") != 0) {
        snprintf(e->e_fail_id, sizeof(e->e_fail_id), "%s", e->e_fetch_id);
        e->e_fail_until = clock_mono_us() + STS_FAIL_HOLDOFF * 1000000ULL;
        sts_policy_t *live = sts_entry_live(e);
        if (live != NULL)
            log_warn("delivery: %s: MTA-STS policy fetch (id=%s) failed: %s; keeping the cached "
                     "policy id=%s",
                     e->e_domain, e->e_fetch_id, why, e->e_id);
        else
            log_warn("delivery: %s: MTA-STS policy fetch (id=%s) failed: %s; delivering without a "
                     "policy",
                     e->e_domain, e->e_fetch_id, why);
    }
    dlv_sts_dest_t *sd = e->e_waiter;
    if (sd == NULL || t->t_stopping || strcmp(why ? why : "", "superseded") == 0)
        return;
    e->e_waiter = NULL;
    /* the new policy serves this delivery even with max_age 0 (not cached) */
    sts_policy_t *use = pol != NULL ? pol : sts_entry_live(e);
    sts_resolve(sd, use, use ? e->e_id : "");
}

static void sts_fetch_timer_cb(uv_timer_t *h)
{
    sts_fetch_finish(h->data, NULL, "timed out");
}

static void sts_fetch_addr_cb(void *arg, dns_status_t st, const sockaddr_any_t *addrs, int n,
                              uint32_t ttl)
{
    sts_fetch_t *f = arg;
    UNUSED(ttl);
    if (!f->f_done) {
        if (st != DNS_OK || n == 0) {
            char why[600];
            snprintf(why, sizeof(why), "%.260s: %s", f->f_host, dns_status_str(st));
            sts_fetch_finish(f, NULL, why);
        } else {
            f->f_addrs = xcalloc((size_t)n, sizeof(*addrs));
            memcpy(f->f_addrs, addrs, (size_t)n * sizeof(*addrs));
            f->f_naddr = MIN(n, DLV_MAX_TRIES);
            f->f_ai = 0;
            sts_fetch_connect(f);
        }
    }
    sts_fetch_release(f); /* the lookup's reference */
}

static void sts_fetch_connect(sts_fetch_t *f)
{
    if (f->f_done)
        return;
    if (f->f_ai >= f->f_naddr) {
        char why[600];
        snprintf(why, sizeof(why), "cannot connect to %.260s port %d", f->f_host, f->f_port);
        sts_fetch_finish(f, NULL, why);
        return;
    }
    uv_tcp_init(&f->f_t->t_loop, &f->f_tcp);
    f->f_tcp.data = f;
    f->f_tcp_open = true;
    f->f_refs++;
    f->f_creq.data = f;
    int rc = uv_tcp_connect(&f->f_creq, &f->f_tcp, (const struct sockaddr *)&f->f_addrs[f->f_ai],
                            sts_fetch_connect_cb);
    if (rc != 0) {
        f->f_tcp_closing = true;
        uv_close((uv_handle_t *)&f->f_tcp, sts_fetch_closed_cb); /* then the next address */
    }
}

static void sts_fetch_connect_cb(uv_connect_t *req, int status)
{
    sts_fetch_t *f = req->data;
    if (f->f_done || status == UV_ECANCELED)
        return;
    if (status < 0) {
        f->f_tcp_closing = true;
        uv_close((uv_handle_t *)&f->f_tcp, sts_fetch_closed_cb); /* then the next address */
        return;
    }
    if (f->f_t->t_tls_ctx == NULL) {
        char why[600];
        snprintf(why, sizeof(why), "no TLS client context (%.260s)", f->f_t->t_tls_err);
        sts_fetch_finish(f, NULL, why);
        return;
    }
    /* PKIX against mta-sts.<domain>, also the SNI (RFC 8461 3.3) */
    f->f_tls = tls_conn_new_client(f->f_t->t_tls_ctx, f->f_host, true);
    if (f->f_tls == NULL) {
        sts_fetch_finish(f, NULL, "cannot create TLS connection");
        return;
    }
    uv_read_start((uv_stream_t *)&f->f_tcp, sts_fetch_alloc_cb, sts_fetch_read_cb);
    sts_fetch_step(f, false); /* the ClientHello */
}

static void sts_fetch_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    sts_fetch_t *f = h->data;
    UNUSED(hint);
    buf->base = f->f_rbuf;
    buf->len = sizeof(f->f_rbuf);
}

static void sts_fetch_write_cb(uv_write_t *req, int status)
{
    UNUSED(status); /* a failed write shows up as a read error or the timeout */
    buf_t *b = req->data;
    buf_free(b);
    free(req);
}

/* Send whatever TLS has queued. */
static void sts_fetch_flush(sts_fetch_t *f)
{
    if (f->f_done || f->f_tcp_closing)
        return;
    buf_t out;
    buf_init(&out, 0);
    if (tls_pending_out(f->f_tls, &out) == 0) {
        buf_free(&out);
        return;
    }
    /* the request and its buffer in one allocation */
    struct {
        uv_write_t w;
        buf_t b;
    } *wr = xmalloc(sizeof(*wr));
    wr->b = out;
    wr->w.data = &wr->b;
    uv_buf_t ub = uv_buf_init(wr->b.b_data, (unsigned)wr->b.b_len);
    if (uv_write(&wr->w, (uv_stream_t *)&f->f_tcp, &ub, 1, sts_fetch_write_cb) != 0) {
        buf_free(&wr->b);
        free(wr);
        sts_fetch_finish(f, NULL, "write failed");
    }
}

static void sts_fetch_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    sts_fetch_t *f = st->data;
    if (f->f_done || f->f_tcp_closing || nread == 0)
        return;
    if (nread < 0) {
        if (!f->f_hs_done) {
            char why[600];
            snprintf(why, sizeof(why), "%.260s: TLS handshake: %s", f->f_host,
                     nread == UV_EOF ? "connection closed" : uv_strerror((int)nread));
            sts_fetch_finish(f, NULL, why);
            return;
        }
        sts_fetch_step(f, true); /* the end of the connection ends the body */
        return;
    }
    if (tls_feed(f->f_tls, buf->base, (size_t)nread) < 0) {
        sts_fetch_finish(f, NULL, "TLS input error");
        return;
    }
    sts_fetch_step(f, false);
}

/* Drive TLS and HTTP with what has arrived. */
static void sts_fetch_step(sts_fetch_t *f, bool eof)
{
    char why[600];
    if (!f->f_hs_done) {
        int rc = tls_handshake(f->f_tls);
        sts_fetch_flush(f);
        if (f->f_done)
            return;
        if (rc < 0) {
            snprintf(why, sizeof(why), "%.260s: TLS handshake failed: %s", f->f_host,
                     tls_last_error(f->f_tls));
            sts_fetch_finish(f, NULL, why);
            return;
        }
        if (rc == 0)
            return;
        if (tls_verify_result(f->f_tls) != 0) { /* SSL_VERIFY_PEER already refuses */
            snprintf(why, sizeof(why), "%.260s: %s", f->f_host, tls_last_error(f->f_tls));
            sts_fetch_finish(f, NULL, why);
            return;
        }
        f->f_hs_done = true;
        char req[512];
        char hostport[320];
        if (f->f_port == 443)
            snprintf(hostport, sizeof(hostport), "%s", f->f_host);
        else
            snprintf(hostport, sizeof(hostport), "%s:%d", f->f_host, f->f_port);
        int n = snprintf(req, sizeof(req),
                         "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: %s\r\n"
                         "User-Agent: sluice/" SLUICE_VERSION "\r\nAccept: text/plain\r\n"
                         "Connection: close\r\n\r\n",
                         hostport);
        if (tls_write(f->f_tls, req, (size_t)n) < 0) {
            sts_fetch_finish(f, NULL, "TLS write failed");
            return;
        }
        sts_fetch_flush(f);
        if (f->f_done)
            return;
    }
    char tmp[8192];
    int r;
    while ((r = tls_read(f->f_tls, tmp, sizeof(tmp))) > 0) {
        buf_append(&f->f_resp, tmp, (size_t)r);
        if (f->f_resp.b_len > STS_RESP_MAX) {
            snprintf(why, sizeof(why), "%.260s: response larger than %d bytes", f->f_host,
                     STS_RESP_MAX);
            sts_fetch_finish(f, NULL, why);
            return;
        }
    }
    sts_fetch_flush(f); /* TLS 1.3 may answer tickets/key updates */
    if (f->f_done)
        return;
    if (r < 0 && r != SL_ECLOSED) {
        snprintf(why, sizeof(why), "%.260s: %s", f->f_host, tls_last_error(f->f_tls));
        sts_fetch_finish(f, NULL, why);
        return;
    }
    if (r == SL_ECLOSED) /* close_notify, or the peer's unexpected EOF */
        eof = true;
    const char *body = NULL;
    size_t blen = 0;
    char pwhy[200] = "";
    int rc = sts_http_parse(f->f_resp.b_data ? f->f_resp.b_data : "", f->f_resp.b_len, eof,
                            &f->f_chunk, &body, &blen, pwhy, sizeof(pwhy));
    if (rc == 0)
        return; /* more to come */
    if (rc < 0) {
        snprintf(why, sizeof(why), "https://%.260s/.well-known/mta-sts.txt: %s", f->f_host, pwhy);
        sts_fetch_finish(f, NULL, why);
        return;
    }
    sts_policy_t *pol = NULL;
    if (sts_policy_parse(body, blen, &pol, pwhy, sizeof(pwhy)) != 0) {
        snprintf(why, sizeof(why), "invalid policy at https://%.260s/.well-known/mta-sts.txt: %s",
                 f->f_host, pwhy);
        sts_fetch_finish(f, NULL, why);
        return;
    }
    sts_fetch_finish(f, pol, NULL);
}
