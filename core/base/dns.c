/*
 * dns.c - asynchronous DNS for one libuv loop, on c-ares.
 *
 * c-ares tells us which sockets it wants watched through its socket state
 * callback; each gets a uv_poll_t, and one uv_timer_t follows
 * ares_timeout(). Queries: dns_query_mx() (ares_query type MX, parsed here
 * so that we get the TTL and can recognise the RFC 7505 null MX),
 * dns_query_txt() (type TXT, parsed here too: the strings of one record
 * are joined, as RFC 8461 3.1 and RFC 7208 3.3 read them) and
 * dns_query_addr() (ares_getaddrinfo, A and AAAA, CNAMEs followed),
 * dns_query_tlsa() (type TLSA, RFC 6698, for DANE) and dns_query_secure()
 * (whether an answer of some type is DNSSEC-secure).
 *
 * DNSSEC (RFC 7672 2.1): sluice validates nothing itself. With
 * dns_resolver_set_dnssec() every MX, TXT, TLSA and "secure" query goes
 * out with EDNS0 and the DO bit, and the AD bit of the answer is read as
 * "validated" - which only means something for a validating resolver the
 * operator runs and declared trusted (delivery.dnssec = "trust-ad"). The
 * c-ares of Debian 12 (1.18) cannot set DO through ares_query (its
 * ARES_FLAG_EDNS adds an OPT record with DO clear) and its ares_query
 * callback hides the header, so those queries are built with
 * ares_create_query, the DO bit set in the OPT record by hand, and sent
 * with ares_send, whose callback gets the raw answer.
 *
 * Callbacks never run inside the call that started the query: c-ares may
 * answer at once (numeric names, hosts file, bad names), so such results
 * are parked and delivered from a zero timer.
 *
 * Thread: a resolver belongs to its loop's thread; nothing here is shared.
 */
#include "core/base/base.h"

#include <ares.h>
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct dns_poll {
    uv_poll_t dp_poll;
    ares_socket_t dp_fd;
    dns_resolver_t *dp_r;
    struct dns_poll *dp_next;
} dns_poll_t;

enum { DNSQ_MX = 1, DNSQ_ADDR, DNSQ_TXT, DNSQ_TLSA, DNSQ_SECURE };

typedef struct dns_query {
    dns_resolver_t *dq_r;
    int dq_kind;
    dns_mx_cb dq_mx_cb;
    dns_addr_cb dq_addr_cb;
    dns_txt_cb dq_txt_cb;
    dns_tlsa_cb dq_tlsa_cb;
    dns_secure_cb dq_secure_cb;
    void *dq_arg;
    int dq_port;
    bool dq_starting; /* still inside dns_query_*: park the answer */
    dns_status_t dq_st;
    dns_mx_t *dq_mx;
    char **dq_txt;
    dns_tlsa_t *dq_tlsa;
    bool dq_ad; /* the answer's AD bit, read only when the resolver trusts it */
    sockaddr_any_t *dq_addrs;
    int dq_n;
    uint32_t dq_ttl;
    struct dns_query *dq_next; /* parked list */
} dns_query_t;

struct dns_resolver {
    uv_loop_t *r_loop;
    ares_channel r_chan;
    uv_timer_t r_timer; /* ares timeouts */
    uv_timer_t r_defer; /* parked answers */
    dns_poll_t *r_polls;
    dns_query_t *r_parked;
    dns_query_t *r_parked_tail;
    uint64_t r_queries;
    bool r_closing;
    bool r_dnssec; /* DO on queries, AD read in answers (dns_resolver_set_dnssec) */
    int r_open_handles;
};

static void dns_sock_state_cb(void *data, ares_socket_t fd, int readable, int writable);
static void dns_poll_cb(uv_poll_t *h, int status, int events);
static void dns_timer_cb(uv_timer_t *t);
static void dns_defer_cb(uv_timer_t *t);
static void dns_rearm(dns_resolver_t *r);
static void dns_complete(dns_query_t *q);
static void dns_fire(dns_query_t *q);
static void dns_query_clear(dns_query_t *q);

static pthread_once_t dns_lib_once = PTHREAD_ONCE_INIT;
static int dns_lib_status;

static void dns_lib_init(void)
{
    dns_lib_status = ares_library_init(ARES_LIB_INIT_ALL);
}

const char *dns_status_str(dns_status_t st)
{
    switch (st) {
    case DNS_OK:
        return "ok";
    case DNS_NODATA:
        return "no data";
    case DNS_NXDOMAIN:
        return "domain not found";
    case DNS_TEMPFAIL:
        return "temporary failure";
    case DNS_CANCELLED:
        return "cancelled";
    }
    return "?";
}

static dns_status_t dns_map_status(int st)
{
    switch (st) {
    case ARES_SUCCESS:
        return DNS_OK;
    case ARES_ENODATA:
        return DNS_NODATA;
    case ARES_ENOTFOUND:
    case ARES_ENONAME:
    case ARES_EBADNAME:
        return DNS_NXDOMAIN;
    case ARES_EDESTRUCTION:
    case ARES_ECANCELLED:
        return DNS_CANCELLED;
    default:
        return DNS_TEMPFAIL;
    }
}

int dns_resolver_new(uv_loop_t *loop, const char *servers, unsigned timeout_ms, int tries,
                     dns_resolver_t **out, char *err, size_t errlen)
{
    pthread_once(&dns_lib_once, dns_lib_init);
    if (dns_lib_status != ARES_SUCCESS) {
        snprintf(err, errlen, "c-ares init: %s", ares_strerror(dns_lib_status));
        return SL_ECONFIG;
    }
    dns_resolver_t *r = xcalloc(1, sizeof(*r));
    r->r_loop = loop;
    struct ares_options opt;
    memset(&opt, 0, sizeof(opt));
    int mask = ARES_OPT_SOCK_STATE_CB;
    opt.sock_state_cb = dns_sock_state_cb;
    opt.sock_state_cb_data = r;
    if (timeout_ms > 0) {
        opt.timeout = (int)timeout_ms;
        mask |= ARES_OPT_TIMEOUTMS;
    }
    if (tries > 0) {
        opt.tries = tries;
        mask |= ARES_OPT_TRIES;
    }
    /* Mail domains and MX hosts are absolute names: no search list from
     * resolv.conf (a "search corp.example" would turn an MX host that does
     * not exist into a question about mx.example.org.corp.example). */
    opt.domains = NULL;
    opt.ndomains = 0;
    mask |= ARES_OPT_DOMAINS;
    int st = ares_init_options(&r->r_chan, &opt, mask);
    if (st != ARES_SUCCESS) {
        snprintf(err, errlen, "c-ares init: %s", ares_strerror(st));
        goto fail;
    }
    if (servers != NULL && servers[0] != '\0') {
        st = ares_set_servers_ports_csv(r->r_chan, servers);
        if (st != ARES_SUCCESS) {
            snprintf(err, errlen, "resolvers \"%s\": %s", servers, ares_strerror(st));
            ares_destroy(r->r_chan);
            goto fail;
        }
    }
    uv_timer_init(loop, &r->r_timer);
    uv_timer_init(loop, &r->r_defer);
    r->r_timer.data = r;
    r->r_defer.data = r;
    r->r_open_handles = 2;
    *out = r;
    return 0;
fail:
    free(r);
    return SL_ECONFIG;
}

static void dns_resolver_release(dns_resolver_t *r)
{
    if (--r->r_open_handles == 0)
        free(r);
}

static void dns_handle_closed_cb(uv_handle_t *h)
{
    dns_resolver_release(h->data);
}

static void dns_poll_closed_cb(uv_handle_t *h)
{
    dns_poll_t *p = h->data;
    dns_resolver_t *r = p->dp_r;
    free(p);
    dns_resolver_release(r);
}

static void dns_poll_close(dns_resolver_t *r, dns_poll_t *p)
{
    uv_poll_stop(&p->dp_poll);
    uv_close((uv_handle_t *)&p->dp_poll, dns_poll_closed_cb);
    UNUSED(r);
}

void dns_resolver_free(dns_resolver_t *r)
{
    if (r == NULL || r->r_closing)
        return;
    r->r_closing = true;
    ares_destroy(r->r_chan); /* pending callbacks run now with EDESTRUCTION */
    while (r->r_parked != NULL) {
        dns_query_t *q = r->r_parked;
        r->r_parked = q->dq_next;
        dns_query_clear(q);
        q->dq_st = DNS_CANCELLED;
        dns_fire(q);
    }
    r->r_parked_tail = NULL;
    while (r->r_polls != NULL) {
        dns_poll_t *p = r->r_polls;
        r->r_polls = p->dp_next;
        dns_poll_close(r, p);
    }
    uv_timer_stop(&r->r_timer);
    uv_timer_stop(&r->r_defer);
    uv_close((uv_handle_t *)&r->r_timer, dns_handle_closed_cb);
    uv_close((uv_handle_t *)&r->r_defer, dns_handle_closed_cb);
}

uint64_t dns_resolver_queries(const dns_resolver_t *r)
{
    return r->r_queries;
}

/* c-ares: start, change or stop watching a socket. */
static void dns_sock_state_cb(void *data, ares_socket_t fd, int readable, int writable)
{
    dns_resolver_t *r = data;
    dns_poll_t **pp = &r->r_polls, *p;
    while ((p = *pp) != NULL && p->dp_fd != fd)
        pp = &p->dp_next;
    if (!readable && !writable) {
        if (p != NULL) {
            *pp = p->dp_next;
            dns_poll_close(r, p);
        }
        return;
    }
    if (r->r_closing)
        return;
    if (p == NULL) {
        p = xcalloc(1, sizeof(*p));
        p->dp_fd = fd;
        p->dp_r = r;
        if (uv_poll_init_socket(r->r_loop, &p->dp_poll, fd) != 0) {
            free(p);
            return;
        }
        p->dp_poll.data = p;
        p->dp_next = r->r_polls;
        r->r_polls = p;
        r->r_open_handles++;
    }
    int events = (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0);
    uv_poll_start(&p->dp_poll, events, dns_poll_cb);
}

static void dns_poll_cb(uv_poll_t *h, int status, int events)
{
    dns_poll_t *p = h->data;
    dns_resolver_t *r = p->dp_r;
    ares_socket_t fd = p->dp_fd;
    if (status < 0) /* let c-ares find the error itself */
        ares_process_fd(r->r_chan, fd, fd);
    else
        ares_process_fd(r->r_chan, (events & UV_READABLE) ? fd : ARES_SOCKET_BAD,
                        (events & UV_WRITABLE) ? fd : ARES_SOCKET_BAD);
    /* p may be freed now */
    dns_rearm(r);
}

static void dns_timer_cb(uv_timer_t *t)
{
    dns_resolver_t *r = t->data;
    ares_process_fd(r->r_chan, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    dns_rearm(r);
}

static void dns_rearm(dns_resolver_t *r)
{
    if (r->r_closing)
        return;
    struct timeval tv, *tvp = ares_timeout(r->r_chan, NULL, &tv);
    if (tvp == NULL) {
        uv_timer_stop(&r->r_timer);
        return;
    }
    uint64_t ms = (uint64_t)tvp->tv_sec * 1000 + (uint64_t)(tvp->tv_usec + 999) / 1000;
    uv_timer_start(&r->r_timer, dns_timer_cb, ms, 0);
}

static void dns_defer_cb(uv_timer_t *t)
{
    dns_resolver_t *r = t->data;
    dns_query_t *q = r->r_parked;
    r->r_parked = r->r_parked_tail = NULL;
    while (q != NULL) {
        dns_query_t *next = q->dq_next;
        dns_fire(q);
        q = next;
    }
}

/* Drop a query's answer (its owner gets none). */
static void dns_query_clear(dns_query_t *q)
{
    if (q->dq_kind == DNSQ_MX)
        dns_mx_array_free(q->dq_mx, q->dq_n);
    else if (q->dq_kind == DNSQ_TXT)
        dns_txt_array_free(q->dq_txt, q->dq_n);
    else if (q->dq_kind == DNSQ_TLSA)
        dns_tlsa_array_free(q->dq_tlsa, q->dq_n);
    free(q->dq_addrs);
    q->dq_mx = NULL;
    q->dq_txt = NULL;
    q->dq_tlsa = NULL;
    q->dq_addrs = NULL;
    q->dq_n = 0;
}

/* Deliver a finished query to its owner and free it. */
static void dns_fire(dns_query_t *q)
{
    if (q->dq_kind == DNSQ_MX)
        q->dq_mx_cb(q->dq_arg, q->dq_st, q->dq_ad, q->dq_mx, q->dq_n, q->dq_ttl);
    else if (q->dq_kind == DNSQ_TLSA)
        q->dq_tlsa_cb(q->dq_arg, q->dq_st, q->dq_ad, q->dq_tlsa, q->dq_n, q->dq_ttl);
    else if (q->dq_kind == DNSQ_SECURE)
        q->dq_secure_cb(q->dq_arg, q->dq_st, q->dq_ad);
    else if (q->dq_kind == DNSQ_TXT)
        q->dq_txt_cb(q->dq_arg, q->dq_st, (const char *const *)q->dq_txt, q->dq_n, q->dq_ttl);
    else
        q->dq_addr_cb(q->dq_arg, q->dq_st, q->dq_addrs, q->dq_n, q->dq_ttl);
    dns_query_clear(q);
    free(q);
}

static void dns_complete(dns_query_t *q)
{
    dns_resolver_t *r = q->dq_r;
    if (r->r_closing) { /* whatever c-ares says while being destroyed */
        dns_query_clear(q);
        q->dq_st = DNS_CANCELLED;
        dns_fire(q);
        return;
    }
    if (!q->dq_starting) {
        dns_fire(q);
        return;
    }
    q->dq_next = NULL;
    if (r->r_parked_tail)
        r->r_parked_tail->dq_next = q;
    else
        r->r_parked = q;
    r->r_parked_tail = q;
    uv_timer_start(&r->r_defer, dns_defer_cb, 0, 0);
}

/* ------------------------------------------------------------------ MX */

void dns_mx_array_free(dns_mx_t *mx, int n)
{
    if (mx == NULL)
        return;
    for (int i = 0; i < n; i++)
        free(mx[i].dm_host);
    free(mx);
}

bool dns_mx_is_null(const dns_mx_t *mx, int n)
{
    return n == 1 && mx[0].dm_host[0] == '\0';
}

static int dns_mx_cmp(const void *a, const void *b)
{
    const dns_mx_t *x = a, *y = b;
    return (int)x->dm_pref - (int)y->dm_pref;
}

static uint16_t get16(const unsigned char *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t get32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* ------------------------------------------------------------ raw queries */

void dns_resolver_set_dnssec(dns_resolver_t *r, bool on)
{
    r->r_dnssec = on;
}

/* The status of a raw answer (ares_send does not look at the RCODE the way
 * ares_query does), and its AD bit when the resolver is trusted. */
static dns_status_t dns_raw_status(dns_query_t *q, int status, const unsigned char *abuf, int alen)
{
    dns_status_t st = dns_map_status(status);
    q->dq_ad = false;
    if (st != DNS_OK)
        return st;
    if (abuf == NULL || alen < HFIXEDSZ)
        return DNS_TEMPFAIL;
    int rcode = abuf[3] & 0x0f;
    if (rcode == 3) /* NXDOMAIN */
        st = DNS_NXDOMAIN;
    else if (rcode != 0)
        return DNS_TEMPFAIL;
    /* RFC 4035 3.2.3 / RFC 6840 5.8: AD is the validating resolver's word
     * that every record of the answer (or the denial) is secure */
    q->dq_ad = q->dq_r->r_dnssec && (abuf[3] & 0x20) != 0;
    return st;
}

/* Send a query for name/type with ares_send: EDNS0 with the DO bit when
 * the resolver does DNSSEC (RFC 3225), so that a validating resolver sets
 * AD in its answer. */
static void dns_send(dns_query_t *q, const char *name, int type, ares_callback cb)
{
    dns_resolver_t *r = q->dq_r;
    unsigned char *qbuf = NULL;
    int qlen = 0;
    int st = ares_create_query(name, C_IN, type, 0, 1, &qbuf, &qlen, r->r_dnssec ? 1232 : 0);
    if (st != ARES_SUCCESS) {
        cb(q, st, 0, NULL, 0);
        return;
    }
    /* the OPT RR is last: root name, TYPE 41, CLASS (UDP size), TTL
     * (ext-rcode, version, flags: DO is the top bit), RDLEN 0 */
    if (r->r_dnssec && qlen >= HFIXEDSZ + 11 && qbuf[qlen - 11] == 0 &&
        get16(qbuf + qlen - 10) == 41)
        qbuf[qlen - 4] |= 0x80;
    ares_send(r->r_chan, qbuf, qlen, cb, q);
    ares_free_string(qbuf);
}

static dns_query_t *dns_query_new(dns_resolver_t *r, int kind, void *arg)
{
    dns_query_t *q = xcalloc(1, sizeof(*q));
    q->dq_r = r;
    q->dq_kind = kind;
    q->dq_arg = arg;
    q->dq_starting = true;
    r->r_queries++;
    return q;
}

static void dns_query_started(dns_query_t *q, dns_resolver_t *r)
{
    q->dq_starting = false;
    dns_rearm(r);
}

/* One answer record of a reply: its type, class, TTL and RDATA (inside
 * abuf, for ares_expand_name). 0 to go on, SL_EPARSE to give up. */
typedef int (*dns_rr_fn)(const unsigned char *abuf, int alen, int type, int cls, uint32_t ttl,
                         const unsigned char *rdata, int rdlen, void *arg);

/* Skip the question section of a reply and hand every answer record to
 * fn. Bounds-checked: SL_EPARSE on a truncated or malformed reply. */
static int dns_walk_answers(const unsigned char *abuf, int alen, dns_rr_fn fn, void *arg)
{
    if (alen < HFIXEDSZ)
        return SL_EPARSE;
    int qd = get16(abuf + 4), an = get16(abuf + 6);
    const unsigned char *p = abuf + HFIXEDSZ, *end = abuf + alen;
    char *name;
    long enclen;
    for (int i = 0; i < qd; i++) {
        if (ares_expand_name(p, abuf, alen, &name, &enclen) != ARES_SUCCESS)
            return SL_EPARSE;
        ares_free_string(name);
        p += enclen + QFIXEDSZ;
        if (p > end)
            return SL_EPARSE;
    }
    for (int i = 0; i < an; i++) {
        if (ares_expand_name(p, abuf, alen, &name, &enclen) != ARES_SUCCESS)
            return SL_EPARSE;
        ares_free_string(name);
        p += enclen;
        if (p + RRFIXEDSZ > end)
            return SL_EPARSE;
        int type = get16(p), cls = get16(p + 2);
        uint32_t rttl = get32(p + 4);
        int rdlen = get16(p + 8);
        p += RRFIXEDSZ;
        if (p + rdlen > end)
            return SL_EPARSE;
        int rc = fn(abuf, alen, type, cls, rttl, p, rdlen, arg);
        if (rc != 0)
            return rc;
        p += rdlen;
    }
    return 0;
}

typedef struct mx_parse {
    dns_mx_t *mx;
    int n;
    uint32_t minttl; /* of every answer record (a CNAME's too) */
} mx_parse_t;

static int mx_rr(const unsigned char *abuf, int alen, int type, int cls, uint32_t ttl,
                 const unsigned char *p, int rdlen, void *arg)
{
    mx_parse_t *m = arg;
    char *name;
    long enclen;
    if (ttl < m->minttl)
        m->minttl = ttl;
    if (type != T_MX || cls != C_IN || rdlen < 3)
        return 0;
    if (ares_expand_name(p + 2, abuf, alen, &name, &enclen) != ARES_SUCCESS)
        return SL_EPARSE;
    m->mx = xrealloc(m->mx, sizeof(*m->mx) * (size_t)(m->n + 1));
    m->mx[m->n].dm_pref = get16(p);
    /* the root is "" from c-ares; strip a trailing dot otherwise */
    size_t l = strlen(name);
    if (l > 0 && name[l - 1] == '.')
        name[--l] = '\0';
    m->mx[m->n].dm_host = xstrdup(name);
    ares_free_string(name);
    m->n++;
    return 0;
}

int dns_parse_mx(const unsigned char *abuf, int alen, dns_mx_t **out, int *nout, uint32_t *ttl)
{
    mx_parse_t m = {NULL, 0, UINT32_MAX};
    if (dns_walk_answers(abuf, alen, mx_rr, &m) != 0) {
        dns_mx_array_free(m.mx, m.n);
        return SL_EPARSE;
    }
    dns_mx_t *mx = m.mx;
    int n = m.n;
    if (n > 1) {
        qsort(mx, (size_t)n, sizeof(*mx), dns_mx_cmp);
        /* shuffle runs of equal preference (RFC 5321 5.1) */
        for (int i = 0; i < n;) {
            int j = i + 1;
            while (j < n && mx[j].dm_pref == mx[i].dm_pref)
                j++;
            for (int k = j - 1; k > i; k--) {
                int r = i + (int)((unsigned)random() % (unsigned)(k - i + 1));
                dns_mx_t tmp = mx[k];
                mx[k] = mx[r];
                mx[r] = tmp;
            }
            i = j;
        }
    }
    *out = mx;
    *nout = n;
    *ttl = m.minttl == UINT32_MAX ? 60 : m.minttl;
    return 0;
}

static void dns_mx_done_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    dns_query_t *q = arg;
    UNUSED(timeouts);
    q->dq_st = dns_raw_status(q, status, abuf, alen);
    q->dq_ttl = 60;
    if (q->dq_st == DNS_OK) {
        if (abuf == NULL || dns_parse_mx(abuf, alen, &q->dq_mx, &q->dq_n, &q->dq_ttl) != 0)
            q->dq_st = DNS_TEMPFAIL;
        else if (q->dq_n == 0)
            q->dq_st = DNS_NODATA; /* e.g. only a CNAME without MX behind it */
    }
    dns_complete(q);
}

void dns_query_mx(dns_resolver_t *r, const char *name, dns_mx_cb cb, void *arg)
{
    dns_query_t *q = dns_query_new(r, DNSQ_MX, arg);
    q->dq_mx_cb = cb;
    dns_send(q, name, T_MX, dns_mx_done_cb);
    dns_query_started(q, r);
}

/* ------------------------------------------------------------------ TXT */

void dns_txt_array_free(char **txt, int n)
{
    if (txt == NULL)
        return;
    for (int i = 0; i < n; i++)
        free(txt[i]);
    free(txt);
}

typedef struct txt_parse {
    char **txt;
    int n;
    uint32_t minttl; /* of the TXT records kept */
} txt_parse_t;

static int txt_rr(const unsigned char *abuf, int alen, int type, int cls, uint32_t ttl,
                  const unsigned char *p, int rdlen, void *arg)
{
    txt_parse_t *t = arg;
    UNUSED(abuf);
    UNUSED(alen);
    if (type != T_TXT || cls != C_IN)
        return 0;
    /* one record = one or more <character-string>s, joined */
    const unsigned char *s = p, *e = p + rdlen;
    buf_t b;
    buf_init(&b, (size_t)rdlen + 1);
    while (s < e) {
        size_t l = *s++;
        if (s + l > e) {
            buf_free(&b);
            return SL_EPARSE;
        }
        buf_append(&b, s, l);
        s += l;
    }
    if (memchr(b.b_data, '\0', b.b_len) != NULL) {
        /* a NUL inside cannot be told from the end of a C string: such a
         * record is no text we could use */
        buf_free(&b);
        return 0;
    }
    buf_append(&b, "", 1);
    t->txt = xrealloc(t->txt, sizeof(*t->txt) * (size_t)(t->n + 1));
    t->txt[t->n++] = buf_steal(&b, NULL);
    if (ttl < t->minttl)
        t->minttl = ttl;
    return 0;
}

int dns_parse_txt(const unsigned char *abuf, int alen, char ***out, int *nout, uint32_t *ttl)
{
    txt_parse_t t = {NULL, 0, UINT32_MAX};
    if (dns_walk_answers(abuf, alen, txt_rr, &t) != 0) {
        dns_txt_array_free(t.txt, t.n);
        return SL_EPARSE;
    }
    *out = t.txt;
    *nout = t.n;
    *ttl = t.minttl == UINT32_MAX ? 60 : t.minttl;
    return 0;
}

static void dns_txt_done_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    dns_query_t *q = arg;
    UNUSED(timeouts);
    q->dq_st = dns_raw_status(q, status, abuf, alen);
    q->dq_ttl = 60;
    if (q->dq_st == DNS_OK) {
        if (abuf == NULL || dns_parse_txt(abuf, alen, &q->dq_txt, &q->dq_n, &q->dq_ttl) != 0)
            q->dq_st = DNS_TEMPFAIL;
        else if (q->dq_n == 0)
            q->dq_st = DNS_NODATA;
    }
    dns_complete(q);
}

void dns_query_txt(dns_resolver_t *r, const char *name, dns_txt_cb cb, void *arg)
{
    dns_query_t *q = dns_query_new(r, DNSQ_TXT, arg);
    q->dq_txt_cb = cb;
    dns_send(q, name, T_TXT, dns_txt_done_cb);
    dns_query_started(q, r);
}

/* ------------------------------------------------------------------ TLSA */

#ifndef T_TLSA
#define T_TLSA 52
#endif

void dns_tlsa_array_free(dns_tlsa_t *t, int n)
{
    if (t == NULL)
        return;
    for (int i = 0; i < n; i++)
        free(t[i].dt_data);
    free(t);
}

typedef struct tlsa_parse {
    dns_tlsa_t *t;
    int n;
    uint32_t minttl;
} tlsa_parse_t;

static int tlsa_rr(const unsigned char *abuf, int alen, int type, int cls, uint32_t ttl,
                   const unsigned char *p, int rdlen, void *arg)
{
    tlsa_parse_t *t = arg;
    UNUSED(abuf);
    UNUSED(alen);
    if (type != T_TLSA || cls != C_IN)
        return 0;
    if (rdlen < 3) /* usage, selector, matching type, then the data */
        return SL_EPARSE;
    if (t->n >= DNS_TLSA_MAX)
        return 0;
    t->t = xrealloc(t->t, sizeof(*t->t) * (size_t)(t->n + 1));
    dns_tlsa_t *r = &t->t[t->n++];
    r->dt_usage = p[0];
    r->dt_selector = p[1];
    r->dt_mtype = p[2];
    r->dt_len = (size_t)rdlen - 3;
    r->dt_data = xmalloc(r->dt_len ? r->dt_len : 1);
    memcpy(r->dt_data, p + 3, r->dt_len);
    if (ttl < t->minttl)
        t->minttl = ttl;
    return 0;
}

int dns_parse_tlsa(const unsigned char *abuf, int alen, dns_tlsa_t **out, int *nout, uint32_t *ttl)
{
    tlsa_parse_t t = {NULL, 0, UINT32_MAX};
    if (dns_walk_answers(abuf, alen, tlsa_rr, &t) != 0) {
        dns_tlsa_array_free(t.t, t.n);
        return SL_EPARSE;
    }
    *out = t.t;
    *nout = t.n;
    *ttl = t.minttl == UINT32_MAX ? 60 : t.minttl;
    return 0;
}

static void dns_tlsa_done_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    dns_query_t *q = arg;
    UNUSED(timeouts);
    q->dq_st = dns_raw_status(q, status, abuf, alen);
    q->dq_ttl = 60;
    if (q->dq_st == DNS_OK) {
        if (dns_parse_tlsa(abuf, alen, &q->dq_tlsa, &q->dq_n, &q->dq_ttl) != 0)
            q->dq_st = DNS_TEMPFAIL; /* a malformed answer is no answer */
        else if (q->dq_n == 0)
            q->dq_st = DNS_NODATA;
    }
    dns_complete(q);
}

void dns_query_tlsa(dns_resolver_t *r, const char *name, dns_tlsa_cb cb, void *arg)
{
    dns_query_t *q = dns_query_new(r, DNSQ_TLSA, arg);
    q->dq_tlsa_cb = cb;
    dns_send(q, name, T_TLSA, dns_tlsa_done_cb);
    dns_query_started(q, r);
}

static void dns_secure_done_cb(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    dns_query_t *q = arg;
    UNUSED(timeouts);
    q->dq_st = dns_raw_status(q, status, abuf, alen);
    if (q->dq_st == DNS_OK && get16(abuf + 6) == 0)
        q->dq_st = DNS_NODATA;
    dns_complete(q);
}

void dns_query_secure(dns_resolver_t *r, const char *name, int type, dns_secure_cb cb, void *arg)
{
    dns_query_t *q = dns_query_new(r, DNSQ_SECURE, arg);
    q->dq_secure_cb = cb;
    dns_send(q, name, type, dns_secure_done_cb);
    dns_query_started(q, r);
}

/* ------------------------------------------------------------------ A/AAAA */

static void dns_addr_done_cb(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
    dns_query_t *q = arg;
    UNUSED(timeouts);
    q->dq_st = dns_map_status(status);
    q->dq_ttl = 60;
    if (q->dq_st == DNS_OK && res != NULL) {
        int n = 0;
        uint32_t minttl = UINT32_MAX;
        for (struct ares_addrinfo_node *a = res->nodes; a; a = a->ai_next)
            n++;
        q->dq_addrs = xcalloc((size_t)(n ? n : 1), sizeof(sockaddr_any_t));
        /* IPv4 first: many senders have no IPv6 route */
        for (int pass = 0; pass < 2; pass++) {
            for (struct ares_addrinfo_node *a = res->nodes; a; a = a->ai_next) {
                int fam = pass == 0 ? AF_INET : AF_INET6;
                if (a->ai_family != fam || a->ai_addr == NULL)
                    continue;
                sockaddr_any_t *sa = &q->dq_addrs[q->dq_n++];
                if (fam == AF_INET) {
                    memcpy(sa, a->ai_addr, sizeof(struct sockaddr_in));
                    ((struct sockaddr_in *)sa)->sin_port = htons((uint16_t)q->dq_port);
                } else {
                    memcpy(sa, a->ai_addr, sizeof(struct sockaddr_in6));
                    ((struct sockaddr_in6 *)sa)->sin6_port = htons((uint16_t)q->dq_port);
                }
                if (a->ai_ttl >= 0 && (uint32_t)a->ai_ttl < minttl)
                    minttl = (uint32_t)a->ai_ttl;
            }
        }
        q->dq_ttl = minttl == UINT32_MAX ? 60 : minttl;
        if (q->dq_n == 0)
            q->dq_st = DNS_NODATA;
    } else if (q->dq_st == DNS_OK) {
        q->dq_st = DNS_NODATA;
    }
    if (res != NULL)
        ares_freeaddrinfo(res);
    dns_complete(q);
}

void dns_query_addr(dns_resolver_t *r, const char *name, int port, dns_addr_cb cb, void *arg)
{
    dns_query_t *q = xcalloc(1, sizeof(*q));
    q->dq_r = r;
    q->dq_kind = DNSQ_ADDR;
    q->dq_addr_cb = cb;
    q->dq_arg = arg;
    q->dq_port = port;
    q->dq_starting = true;
    r->r_queries++;
    struct ares_addrinfo_hints hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_flags = ARES_AI_NOSORT;
    ares_getaddrinfo(r->r_chan, name, NULL, &hints, dns_addr_done_cb, q);
    q->dq_starting = false;
    dns_rearm(r);
}
