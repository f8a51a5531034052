/*
 * sts_parse.c - the parts of MTA-STS (RFC 8461) that need no loop: the
 * _mta-sts TXT record (3.1), the policy file (3.2), MX pattern matching
 * (4.1) and the checks on the HTTP response that carries a policy (3.3:
 * 200 only, text/plain). Pure functions, each with a unit test
 * (tests/unit/delivery_mta_sts_test.c) and fuzzed on its own
 * (tests/fuzz/fuzz_mta_sts.c).
 *
 * Thread: any; a policy belongs to one delivery thread (its refcount is
 * not atomic).
 */
#include "delivery/mta_sts_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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

int sts_response_check(int status, const char *content_type, char *why, size_t whylen)
{
    if (status != 200) {
        snprintf(why, whylen, "HTTP status %d%s", status,
                 status / 100 == 3 ? " (redirects are not followed, RFC 8461 3.3)" : "");
        return SL_EPARSE;
    }
    if (content_type == NULL) {
        snprintf(why, whylen, "no Content-Type (text/plain wanted)");
        return SL_EPARSE;
    }
    /* the media type, before any parameter ("text/plain; charset=utf-8") */
    size_t vl = strlen(content_type), t = 0;
    while (t < vl && content_type[t] != ';' && !sts_wsp(content_type[t]))
        t++;
    if (t != 10 || strncasecmp(content_type, "text/plain", 10) != 0) {
        snprintf(why, whylen, "Content-Type \"%.*s\" is not text/plain", (int)MIN(vl, 60),
                 content_type);
        return SL_EPARSE;
    }
    return 0;
}
