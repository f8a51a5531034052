/*
 * config/values.c - one value at a time: the parsers and checks of the
 * value kinds (durations, sizes, booleans, TLS policies, host names,
 * destinations, lists), the loader's "file:line: what" error, and the
 * lookups other modules make in a snapshot (cfg_route_for,
 * cfg_tls_policy_for). The lowest file of config/: it calls none of the
 * others.
 * Thread: any thread; no state of its own.
 */
#include "config/config_int.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *fmt_size(uint64_t v, char *dst, size_t len);
static const char *fmt_dur_ms(uint64_t ms, char *dst, size_t len);
static const char *kind_desc(const key_def_t *k, char *dst, size_t len);

int ld_line(const loader_t *ld, const char *path)
{
    for (int i = 0; i < ld->l_nkeys; i++)
        if (strcmp(ld->l_keys[i].k_path, path) == 0)
            return ld->l_line[i];
    abort(); /* not a key of the schema: a bug in the caller */
}

void ld_error(loader_t *ld, int line, const char *fmt, ...)
{
    if (ld->l_failed)
        return;
    ld->l_failed = true;
    va_list ap;
    va_start(ap, fmt);
    cfg_verror(ld->l_err, ld->l_errlen, ld->l_name, line, fmt, ap);
    va_end(ap);
}

void ld_set_str(char **slot, const char *v)
{
    free(*slot);
    *slot = xstrdup(v);
}

void *ld_field(cfg_t *c, const key_def_t *k)
{
    return (char *)c + k->k_off;
}

/* "50M" for 52428800, "1000" for 1000: the largest unit that divides. */
static const char *fmt_size(uint64_t v, char *dst, size_t len)
{
    static const char units[] = "TGMK";
    for (int i = 0; i < 4; i++) {
        uint64_t u = 1ULL << (10 * (4 - i));
        if (v != 0 && v % u == 0) {
            snprintf(dst, len, "%" PRIu64 "%c", v / u, units[i]);
            return dst;
        }
    }
    snprintf(dst, len, "%" PRIu64, v);
    return dst;
}

static const char *fmt_dur_ms(uint64_t ms, char *dst, size_t len)
{
    static const struct {
        uint64_t u;
        const char *name;
    } units[] = {{DAY * 1000, "d"}, {HOUR * 1000, "h"}, {60000, "m"}, {1000, "s"}};
    for (size_t i = 0; i < ARRAY_SIZE(units); i++) {
        if (ms != 0 && ms % units[i].u == 0) {
            snprintf(dst, len, "%" PRIu64 "%s", ms / units[i].u, units[i].name);
            return dst;
        }
    }
    snprintf(dst, len, "%" PRIu64 "%s", ms, ms == 0 ? "s" : "ms");
    return dst;
}

/* What a key expects, for "expected ..., got ..." messages. */
static const char *kind_desc(const key_def_t *k, char *dst, size_t len)
{
    char a[32], b[32];
    switch (k->k_kind) {
    case K_INT:
        snprintf(dst, len, "an integer between %" PRIu64 " and %" PRIu64, k->k_min, k->k_max);
        break;
    case K_SIZE:
        snprintf(dst, len, "a size between %s and %s (e.g. 512K, 50M, 2G)",
                 fmt_size(k->k_min, a, sizeof(a)), fmt_size(k->k_max, b, sizeof(b)));
        break;
    case K_DUR:
        snprintf(dst, len, "a duration between %s and %s (e.g. 90s, 5m, 1h, 4d12h)",
                 fmt_dur_ms(k->k_min * 1000, a, sizeof(a)),
                 fmt_dur_ms(k->k_max * 1000, b, sizeof(b)));
        break;
    case K_DUR_MS:
        snprintf(dst, len, "a duration between %s and %s (e.g. 500ms, 1s)",
                 fmt_dur_ms(k->k_min, a, sizeof(a)), fmt_dur_ms(k->k_max, b, sizeof(b)));
        break;
    case K_BOOL:
        snprintf(dst, len, "true or false");
        break;
    case K_MODE:
        snprintf(dst, len, "an octal file mode such as 0600");
        break;
    case K_LEVEL:
        snprintf(dst, len, "one of debug, info, warn, error");
        break;
    case K_SYNC:
        snprintf(dst, len, "one of fsync, none");
        break;
    case K_BARENL:
        snprintf(dst, len, "one of reject, normalize");
        break;
    case K_TLSPOL:
        snprintf(dst, len, "one of opportunistic, disabled, required, verify");
        break;
    case K_LISTEN:
        snprintf(dst, len, "an address \"ip:port\" or a list of them");
        break;
    case K_ADDRS:
        snprintf(dst, len, "a list of addresses \"ip:port\" (may be empty: [])");
        break;
    case K_CIDRS:
        snprintf(dst, len, "a list of networks such as [\"10.0.0.0/8\", \"::1/128\"]");
        break;
    case K_RETRY:
        snprintf(dst, len, "a list of durations such as \"5m,10m,1h\"");
        break;
    case K_RESOLVERS:
        snprintf(dst, len, "a list of addresses \"ip[:port]\"");
        break;
    case K_REDIS:
        snprintf(dst, len, "[\"redis://ip:port\"] or [\"unix:/path\"] (one server)");
        break;
    case K_HOSTPORT:
        snprintf(dst, len, "\"host[:port]\"");
        break;
    case K_IPPORT:
        snprintf(dst, len, "\"ip:port\" (an IP address, not a host name; \"\" = off)");
        break;
    case K_HDRLIST:
        snprintf(dst, len, "a list of header field names such as [\"from\", \"to\"]");
        break;
    case K_ROUTES:
    case K_TLSMAP:
    case K_USERS:
    case K_TOKENS:
    case K_DKIMKEYS:
    case K_WEBHOOKS:
        snprintf(dst, len, "a section { ... }");
        break;
    default:
        snprintf(dst, len, "a string");
        break;
    }
    return dst;
}

int ld_expect_error(loader_t *ld, const key_def_t *k, const cfg_node_t *n)
{
    char d[160];
    kind_desc(k, d, sizeof(d));
    if (n->n_type == CFG_NODE_LIST)
        ld_error(ld, n->n_line, "%s: expected %s, got a list", k->k_path, d);
    else if (n->n_type == CFG_NODE_SECTION)
        ld_error(ld, n->n_line, "%s: expected %s, got a section", k->k_path, d);
    else
        ld_error(ld, n->n_line, "%s: expected %s, got \"%.80s\"", k->k_path, d, n->n_str);
    return SL_ECONFIG;
}

/* The items of a list-like value: a list node, or a string split on ','. */
int ld_collect_items(loader_t *ld, const key_def_t *k, const cfg_node_t *n, item_t *items, int max,
                     int *count)
{
    int cnt = 0;
    if (n->n_type == CFG_NODE_SECTION)
        return ld_expect_error(ld, k, n);
    const cfg_node_t *it = n->n_type == CFG_NODE_LIST ? n->n_child : n;
    for (; it != NULL; it = it->n_next) {
        const char *s = it->n_str;
        bool whole = n->n_type == CFG_NODE_LIST;
        if (!whole && s[strspn(s, " \t")] == '\0')
            break; /* "" : no items */
        for (;;) {
            size_t len = whole ? strlen(s) : strcspn(s, ",");
            const char *b = s, *e = s + len;
            while (b < e && isspace((unsigned char)*b))
                b++;
            while (e > b && isspace((unsigned char)e[-1]))
                e--;
            if (b == e) {
                ld_error(ld, it->n_line, "%s: empty item in the list", k->k_path);
                return SL_ECONFIG;
            }
            if (cnt == max) {
                ld_error(ld, it->n_line, "%s: too many values (at most %d)", k->k_path, max);
                return SL_ECONFIG;
            }
            if ((size_t)(e - b) >= sizeof(items[cnt].i_s)) {
                ld_error(ld, it->n_line, "%s: value too long", k->k_path);
                return SL_ECONFIG;
            }
            memcpy(items[cnt].i_s, b, (size_t)(e - b));
            items[cnt].i_s[e - b] = '\0';
            items[cnt].i_line = it->n_line;
            cnt++;
            if (whole || s[len] == '\0')
                break;
            s += len + 1;
        }
        if (n->n_type == CFG_NODE_STR)
            break;
    }
    *count = cnt;
    return 0;
}

/* Decimal, no sign, no spaces: "1000". */
int cfg_parse_uint(const char *s, uint64_t *out)
{
    if (!isdigit((unsigned char)s[0]))
        return SL_EPARSE;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return SL_EPARSE;
    *out = v;
    return 0;
}

int cfg_parse_bool(const char *s, bool *out)
{
    static const char *yes[] = {"true", "yes", "on"}, *no[] = {"false", "no", "off"};
    for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return SL_EPARSE;
}

int cfg_parse_tls_policy(const char *s, int *out)
{
    static const char *names[] = {"opportunistic", "disabled", "required", "verify"};
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        if (strcasecmp(s, names[i]) == 0) {
            *out = (int)i;
            return 0;
        }
    }
    return SL_EPARSE;
}

/* Letters, digits, '-' and '.', as host names and domains are written. */
bool cfg_hostname_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253 || s[0] == '.' || s[0] == '-' || strstr(s, "..") != NULL)
        return false;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.' && *p != '_')
            return false;
    return true;
}

void cfg_lower(char *s)
{
    for (; *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

void cfg_strv_free(char **v)
{
    for (char **p = v; p != NULL && *p != NULL; p++)
        free(*p);
    free(v);
}

/* "90" (seconds), "500ms", "30s", "5m", "1h", "2d", "1w", "4d12h". */
int cfg_parse_dur_ms(const char *s, uint64_t *ms)
{
    uint64_t total = 0, v;
    const char *p = s;
    if (*p == '\0')
        return SL_EPARSE;
    if (cfg_parse_uint(s, &v) == 0) {
        if (v > UINT64_MAX / 1000)
            return SL_EPARSE;
        *ms = v * 1000;
        return 0;
    }
    while (*p != '\0') {
        if (!isdigit((unsigned char)*p))
            return SL_EPARSE;
        v = 0;
        while (isdigit((unsigned char)*p)) {
            if (v > (UINT64_MAX - 9) / 10)
                return SL_EPARSE;
            v = v * 10 + (uint64_t)(*p++ - '0');
        }
        uint64_t unit;
        if (strncasecmp(p, "ms", 2) == 0) {
            unit = 1;
            p += 2;
        } else {
            switch (tolower((unsigned char)*p)) {
            case 's':
                unit = 1000;
                break;
            case 'm':
                unit = 60 * 1000;
                break;
            case 'h':
                unit = HOUR * 1000;
                break;
            case 'd':
                unit = DAY * 1000;
                break;
            case 'w':
                unit = 7 * DAY * 1000;
                break;
            default:
                return SL_EPARSE; /* a number without a unit after another part */
            }
            p++;
        }
        if (v > (UINT64_MAX - total) / unit)
            return SL_EPARSE;
        total += v * unit;
    }
    *ms = total;
    return 0;
}

int cfg_parse_duration(const char *s, uint64_t *seconds)
{
    uint64_t ms;
    if (cfg_parse_dur_ms(s, &ms) < 0 || ms % 1000 != 0)
        return SL_EPARSE;
    *seconds = ms / 1000;
    return 0;
}

int cfg_parse_token(const char *s, unsigned char hash[32], unsigned *scopes)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL || strlen(colon + 1) != 64)
        return SL_EPARSE;
    unsigned sc = 0;
    for (const char *p = s; p < colon;) {
        size_t n = strcspn(p, ",:");
        if (n == 6 && strncmp(p, "inject", 6) == 0)
            sc |= CFG_SCOPE_INJECT;
        else if (n == 4 && strncmp(p, "read", 4) == 0)
            sc |= CFG_SCOPE_READ;
        else if (n == 5 && strncmp(p, "admin", 5) == 0)
            sc |= CFG_SCOPE_ADMIN | CFG_SCOPE_READ;
        else
            return SL_EPARSE;
        p += n;
        if (*p == ',')
            p++;
    }
    if (sc == 0)
        return SL_EPARSE;
    for (int i = 0; i < 32; i++) {
        int v = 0;
        for (int k = 0; k < 2; k++) {
            char c = colon[1 + 2 * i + k];
            int d = c >= '0' && c <= '9'   ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
            if (d < 0)
                return SL_EPARSE;
            v = v * 16 + d;
        }
        hash[i] = (unsigned char)v;
    }
    *scopes = sc;
    return 0;
}

/* "512", "64K", "64KB", "64KiB", "50M", "16G", "1T"; binary units, any case. */
int cfg_parse_size(const char *s, uint64_t *bytes)
{
    static const struct {
        const char *u;
        int shift;
    } units[] = {{"", 0},     {"b", 0},   {"k", 10},   {"kb", 10}, {"kib", 10},
                 {"m", 20},   {"mb", 20}, {"mib", 20}, {"g", 30},  {"gb", 30},
                 {"gib", 30}, {"t", 40},  {"tb", 40},  {"tib", 40}};
    const char *p = s;
    uint64_t v = 0;
    if (!isdigit((unsigned char)*p))
        return SL_EPARSE;
    while (isdigit((unsigned char)*p)) {
        if (v > (UINT64_MAX - 9) / 10)
            return SL_EPARSE;
        v = v * 10 + (uint64_t)(*p++ - '0');
    }
    for (size_t i = 0; i < ARRAY_SIZE(units); i++) {
        if (strcasecmp(p, units[i].u) == 0) {
            if (v > (UINT64_MAX >> units[i].shift))
                return SL_EPARSE;
            *bytes = v << units[i].shift;
            return 0;
        }
    }
    return SL_EPARSE;
}

int cfg_parse_duration_list(const char *s, uint64_t *out, int max)
{
    uint64_t tmp[64];
    int n = 0;
    if (s[strspn(s, " \t")] == '\0')
        return 0;
    for (;;) {
        size_t len = strcspn(s, ",");
        const char *b = s, *e = s + len;
        while (b < e && isspace((unsigned char)*b))
            b++;
        while (e > b && isspace((unsigned char)e[-1]))
            e--;
        char one[64];
        if (b == e || (size_t)(e - b) >= sizeof(one) || n >= max || n >= (int)ARRAY_SIZE(tmp))
            return SL_EPARSE;
        memcpy(one, b, (size_t)(e - b));
        one[e - b] = '\0';
        if (cfg_parse_duration(one, &tmp[n]) < 0)
            return SL_EPARSE;
        n++;
        if (s[len] == '\0')
            break;
        s += len + 1;
    }
    memcpy(out, tmp, (size_t)n * sizeof(*out));
    return n;
}

/* "host", "host:port", "1.2.3.4:25", "[::1]:25", "::1". */
int cfg_parse_dest(const char *s, char **host, int *port)
{
    char h[256];
    const char *ps = NULL;
    if (s[0] == '[') {
        const char *e = strchr(s, ']');
        if (e == NULL || (size_t)(e - s - 1) >= sizeof(h))
            return SL_EPARSE;
        memcpy(h, s + 1, (size_t)(e - s - 1));
        h[e - s - 1] = '\0';
        struct in6_addr a6;
        if (inet_pton(AF_INET6, h, &a6) != 1)
            return SL_EPARSE;
        if (e[1] == ':')
            ps = e + 2;
        else if (e[1] != '\0')
            return SL_EPARSE;
    } else {
        const char *colon = strchr(s, ':');
        if (colon != NULL && strchr(colon + 1, ':') != NULL) {
            struct in6_addr a6; /* a bare IPv6 address */
            if (strlen(s) >= sizeof(h) || inet_pton(AF_INET6, s, &a6) != 1)
                return SL_EPARSE;
            strcpy(h, s);
        } else {
            size_t hl = colon ? (size_t)(colon - s) : strlen(s);
            if (hl >= sizeof(h))
                return SL_EPARSE;
            memcpy(h, s, hl);
            h[hl] = '\0';
            if (!cfg_hostname_valid(h))
                return SL_EPARSE;
            if (colon)
                ps = colon + 1;
        }
    }
    uint64_t p = 0;
    if (ps != NULL && (cfg_parse_uint(ps, &p) < 0 || p < 1 || p > 65535))
        return SL_EPARSE;
    *host = xstrdup(h);
    *port = (int)p;
    return 0;
}

/* entry (lower case, from the config) equals the first dlen bytes of d */
static bool dom_eq(const char *entry, const char *d, size_t dlen)
{
    return strncasecmp(entry, d, dlen) == 0 && entry[dlen] == '\0';
}

static size_t dom_len(const char *d)
{
    size_t n = strlen(d);
    return n > 0 && d[n - 1] == '.' ? n - 1 : n; /* "example.org." */
}

/* The tls_policy { } entry for domain, or -1 when none matches. */
static int tls_policy_entry(const cfg_t *c, const char *domain)
{
    size_t n = dom_len(domain);
    for (int i = 0; i < c->c_dlv_ntls; i++)
        if (c->c_dlv_tls[i].tp_domain[0] != '.' && dom_eq(c->c_dlv_tls[i].tp_domain, domain, n))
            return c->c_dlv_tls[i].tp_policy;
    /* ".example.org" covers every subdomain; the longest suffix wins */
    for (const char *dot = memchr(domain, '.', n); dot != NULL;
         dot = memchr(dot + 1, '.', n - (size_t)(dot + 1 - domain))) {
        for (int i = 0; i < c->c_dlv_ntls; i++)
            if (c->c_dlv_tls[i].tp_domain[0] == '.' &&
                dom_eq(c->c_dlv_tls[i].tp_domain, dot, n - (size_t)(dot - domain)))
                return c->c_dlv_tls[i].tp_policy;
    }
    return -1;
}

int cfg_tls_policy_for(const cfg_t *c, const char *domain)
{
    int pol = tls_policy_entry(c, domain);
    return pol >= 0 ? pol : c->c_dlv_tls_default;
}

bool cfg_dnssec_trust_ad(const cfg_t *c)
{
    return strcmp(c->c_dlv_dnssec_text, "trust-ad") == 0;
}

bool cfg_tls_policy_explicit(const cfg_t *c, const char *domain)
{
    return tls_policy_entry(c, domain) >= 0;
}

const struct cfg_route *cfg_route_for(const cfg_t *c, const char *domain)
{
    size_t n = dom_len(domain);
    for (int i = 0; i < c->c_dlv_nroutes; i++)
        if (dom_eq(c->c_dlv_routes[i].r_domain, domain, n))
            return &c->c_dlv_routes[i];
    if (c->c_dlv_smart.r_host != NULL)
        return &c->c_dlv_smart;
    return NULL;
}
