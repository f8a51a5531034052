/*
 * sts_fetch.c - the HTTPS fetch of an MTA-STS policy (RFC 8461 3.3) on a
 * delivery thread's loop.
 *
 * sts_fetch_start(): the address of mta-sts.<domain> from the thread's
 * resolver (delivery.resolvers, as every other name delivery looks up),
 * then GET https://mta-sts.<domain>[:port]/.well-known/mta-sts.txt through
 * the thread's HTTP client (core/base/http_client.c, libcurl on the loop)
 * with the addresses pinned: PKIX with delivery.ca_file or the system
 * store, SNI and the certificate name mta-sts.<domain>, no redirects, at
 * most 64 KiB; then 200 and text/plain only (sts_response_check) and a
 * policy that parses. 10 s for the whole fetch, lookup included. The
 * result goes to the caller's callback (mta_sts.c's cache): a policy, or
 * why not.
 *
 * Thread: a fetch belongs to its delivery thread; the HTTP client
 * (t_http) is made at the first fetch and freed when the thread stops.
 * A fetch is freed when it is over and neither its lookup nor its timer
 * is still out (f_refs).
 */
#include "delivery/delivery_int.h"
#include "delivery/mta_sts_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STS_FETCH_TIMEOUT_MS 10000 /* the whole fetch: lookup, connect, TLS, HTTP */

struct sts_fetch {
    dlv_thread_t *f_t;
    char f_host[300]; /* mta-sts.<domain> */
    char f_url[400];
    int f_port;
    sts_fetch_cb f_cb; /* NULL once cancelled */
    void *f_arg;
    int f_refs; /* the timer, the lookup in flight */
    bool f_done;
    uv_timer_t f_timer;
    http_request_t *f_req;
    char f_why[600]; /* a failure to report from the timer (start failed) */
};

static void sts_fetch_finish(sts_fetch_t *f, sts_policy_t *pol, const char *why);

static void sts_fetch_release(sts_fetch_t *f)
{
    if (--f->f_refs == 0)
        free(f);
}

static void sts_fetch_closed_cb(uv_handle_t *h)
{
    sts_fetch_release(h->data);
}

/* The fetch is over: the callback (unless cancelled), then the handles. */
static void sts_fetch_finish(sts_fetch_t *f, sts_policy_t *pol, const char *why)
{
    if (f->f_done) {
        sts_policy_unref(pol);
        return;
    }
    f->f_done = true;
    http_request_cancel(f->f_req); /* NULL when it has answered */
    f->f_req = NULL;
    uv_timer_stop(&f->f_timer);
    uv_close((uv_handle_t *)&f->f_timer, sts_fetch_closed_cb);
    if (f->f_cb != NULL)
        f->f_cb(f->f_arg, pol, pol != NULL ? NULL : why ? why : "failed");
    else
        sts_policy_unref(pol);
}

static void sts_fetch_timer_cb(uv_timer_t *h)
{
    sts_fetch_t *f = h->data;
    sts_fetch_finish(f, NULL, f->f_why[0] ? f->f_why : "timed out");
}

/* The server answered (or the request failed). */
static void sts_fetch_done_cb(void *arg, const http_response_t *r)
{
    sts_fetch_t *f = arg;
    f->f_req = NULL; /* freed by the client after this call */
    char why[700], pwhy[200] = "";
    if (r->hr_error != NULL) {
        snprintf(why, sizeof(why), "%s: %s", f->f_url, r->hr_error);
        sts_fetch_finish(f, NULL, why);
        return;
    }
    if (sts_response_check(r->hr_status, r->hr_content_type, pwhy, sizeof(pwhy)) != 0) {
        snprintf(why, sizeof(why), "%s: %s", f->f_url, pwhy);
        sts_fetch_finish(f, NULL, why);
        return;
    }
    sts_policy_t *pol = NULL;
    if (sts_policy_parse(r->hr_body, r->hr_len, &pol, pwhy, sizeof(pwhy)) != 0) {
        snprintf(why, sizeof(why), "invalid policy at %s: %s", f->f_url, pwhy);
        sts_fetch_finish(f, NULL, why);
        return;
    }
    sts_fetch_finish(f, pol, NULL);
}

static void sts_fetch_addr_cb(void *arg, dns_status_t st, const sockaddr_any_t *addrs, int n,
                              uint32_t ttl)
{
    sts_fetch_t *f = arg;
    UNUSED(ttl);
    if (!f->f_done) {
        char why[600];
        if (st != DNS_OK || n == 0) {
            snprintf(why, sizeof(why), "%.260s: %s", f->f_host, dns_status_str(st));
            sts_fetch_finish(f, NULL, why);
        } else {
            dlv_thread_t *t = f->f_t;
            const cfg_t *cfg = t->t_cfg;
            http_get_opts_t o = {
                .hg_url = f->f_url,
                .hg_ca_file = cfg->c_dlv_ca_file,
                .hg_host = f->f_host,
                .hg_port = f->f_port,
                .hg_addrs = addrs,
                .hg_naddrs = MIN(n, DLV_MAX_TRIES),
                .hg_max_body = STS_BODY_MAX,
                .hg_timeout_ms = STS_FETCH_TIMEOUT_MS + 1000, /* our timer ends it first */
                .hg_accept = "text/plain",
            };
            f->f_req = t->t_http ? http_get(t->t_http, &o, sts_fetch_done_cb, f) : NULL;
            if (f->f_req == NULL) {
                snprintf(why, sizeof(why), "%.260s: cannot start an HTTPS request", f->f_host);
                sts_fetch_finish(f, NULL, why);
            }
        }
    }
    sts_fetch_release(f); /* the lookup's reference */
}

sts_fetch_t *sts_fetch_start(dlv_thread_t *t, const char *domain, sts_fetch_cb cb, void *arg)
{
    DLV_ASSERT_ON_LOOP(t);
    sts_fetch_t *f = xcalloc(1, sizeof(*f));
    f->f_t = t;
    f->f_cb = cb;
    f->f_arg = arg;
    f->f_port = t->t_cfg->c_dlv_mta_sts_port;
    snprintf(f->f_host, sizeof(f->f_host), "mta-sts.%s", domain);
    size_t hl = strlen(f->f_host);
    if (hl > 0 && f->f_host[hl - 1] == '.')
        f->f_host[hl - 1] = '\0';
    if (f->f_port == 443)
        snprintf(f->f_url, sizeof(f->f_url), "https://%s/.well-known/mta-sts.txt", f->f_host);
    else
        snprintf(f->f_url, sizeof(f->f_url), "https://%s:%d/.well-known/mta-sts.txt", f->f_host,
                 f->f_port);
    log_debug("delivery: %s: MTA-STS: fetching %s", domain, f->f_url);
    uv_timer_init(&t->t_loop, &f->f_timer);
    f->f_timer.data = f;
    f->f_refs = 1; /* the timer */
    if (t->t_http == NULL) {
        char err[256];
        if (http_client_new(&t->t_loop, &t->t_http, err, sizeof(err)) != 0) {
            /* reported from the loop, never inside this call */
            snprintf(f->f_why, sizeof(f->f_why), "%s", err);
            uv_timer_start(&f->f_timer, sts_fetch_timer_cb, 0, 0);
            return f;
        }
    }
    uv_timer_start(&f->f_timer, sts_fetch_timer_cb, STS_FETCH_TIMEOUT_MS, 0);
    f->f_refs++; /* the lookup */
    atomic_fetch_add_explicit(&t->t_d->d_stats.ds_dns_lookups, 1, memory_order_relaxed);
    dns_query_addr(t->t_dns, f->f_host, f->f_port, sts_fetch_addr_cb, f);
    return f;
}

void sts_fetch_cancel(sts_fetch_t *f)
{
    if (f != NULL)
        DLV_ASSERT_ON_LOOP(f->f_t);
    if (f == NULL)
        return;
    f->f_cb = NULL;
    sts_fetch_finish(f, NULL, "cancelled");
}

void sts_fetch_thread_stop(dlv_thread_t *t)
{
    DLV_ASSERT_ON_LOOP(t);
    http_client_free(t->t_http); /* its handles close on the loop's last turns */
    t->t_http = NULL;
}
