/*
 * core/base/http_client.c - an HTTP(S) client on a libuv loop: libcurl's
 * multi interface driven by the loop (curl_multi_socket_action), as
 * curl's docs/examples/multi-uv.c does it: CURLMOPT_SOCKETFUNCTION opens,
 * changes and closes a uv_poll_t per socket curl wants watched, and
 * CURLMOPT_TIMERFUNCTION arms one uv_timer_t. Nothing blocks the loop:
 * names are resolved by the caller (the loop's c-ares resolver) and pinned
 * with CURLOPT_RESOLVE, or left to curl's asynchronous resolver.
 *
 * One client per loop (the MTA-STS policy fetch of a delivery thread; the
 * webhook and TLSRPT threads will have theirs). A request is a GET with
 * limits (body size, total time), TLS verification (PKIX and the host
 * name, with the CA file given or the system store), no redirects, no
 * proxy, and one completion callback.
 *
 * Main functions: http_client_new/free, http_get, http_request_cancel.
 *
 * Thread: a client and its requests belong to its loop's thread. Memory:
 * a request is freed after its callback returns (or at cancel); the client
 * when its last handle has closed after http_client_free (the loop must
 * run again).
 */
#include "core/base/base.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct http_sock {
    struct http_sock *hs_next; /* the client's list */
    uv_poll_t hs_poll;
    curl_socket_t hs_fd;
    http_client_t *hs_c;
    bool hs_closing;
} http_sock_t;

struct http_request {
    http_request_t *r_next;
    http_request_t **r_pprev;
    http_client_t *r_c;
    CURL *r_easy;
    struct curl_slist *r_resolve;
    struct curl_slist *r_headers;
    buf_t r_body;
    size_t r_max;
    bool r_too_big;
    http_done_cb r_cb;
    void *r_arg;
    char r_errbuf[CURL_ERROR_SIZE];
};

struct http_client {
    uv_loop_t *c_loop;
    CURLM *c_multi;
    uv_timer_t c_timer;
    int c_handles;          /* open uv handles: the timer and the polls */
    bool c_freeing;         /* http_client_free was called: free at the last close */
    http_request_t *c_reqs; /* in flight */
    http_sock_t *c_socks;   /* watched sockets (closing ones leave at their close) */
};

static pthread_once_t http_once = PTHREAD_ONCE_INIT;
static CURLcode http_init_rc;

static void http_global_init(void)
{
    /* once per process, before any handle (not thread-safe in every
     * libcurl; pthread_once makes it so) */
    http_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void http_handle_closed_cb(uv_handle_t *h)
{
    http_client_t *c = h->data; /* the timer's */
    if (h->type == UV_POLL) {
        http_sock_t *hs = h->data; /* a poll's */
        c = hs->hs_c;
        for (http_sock_t **pp = &c->c_socks; *pp != NULL; pp = &(*pp)->hs_next) {
            if (*pp == hs) {
                *pp = hs->hs_next;
                break;
            }
        }
        free(hs);
    }
    if (--c->c_handles == 0 && c->c_freeing)
        free(c);
}

static void http_sock_close(http_sock_t *hs)
{
    if (hs->hs_closing)
        return;
    hs->hs_closing = true;
    uv_close((uv_handle_t *)&hs->hs_poll, http_handle_closed_cb); /* unwatched now, freed later */
}

/* A request is over: its callback, then its memory. */
static void http_finish(http_request_t *r, CURLcode rc)
{
    http_client_t *c = r->r_c;
    http_response_t resp;
    memset(&resp, 0, sizeof(resp));
    long status = 0;
    char *ct = NULL;
    curl_easy_getinfo(r->r_easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(r->r_easy, CURLINFO_CONTENT_TYPE, &ct);
    char why[CURL_ERROR_SIZE + 64];
    if (r->r_too_big || rc == CURLE_FILESIZE_EXCEEDED) /* by Content-Length, or as it came */
        snprintf(why, sizeof(why), "response body larger than %zu bytes", r->r_max);
    else if (rc == CURLE_OPERATION_TIMEDOUT)
        snprintf(why, sizeof(why), "timed out");
    else if (rc != CURLE_OK)
        snprintf(why, sizeof(why), "%s", r->r_errbuf[0] ? r->r_errbuf : curl_easy_strerror(rc));
    resp.hr_status = (int)status;
    resp.hr_content_type = ct;
    buf_append(&r->r_body, "", 1); /* NUL-terminated for the caller */
    resp.hr_body = r->r_body.b_data;
    resp.hr_len = r->r_body.b_len - 1;
    resp.hr_error = rc == CURLE_OK ? NULL : why;
    struct curl_header *ra = NULL;
    if (status > 0 &&
        curl_easy_header(r->r_easy, "Retry-After", 0, CURLH_HEADER, -1, &ra) == CURLHE_OK) {
        char *end = NULL;
        unsigned long long secs = strtoull(ra->value, &end, 10);
        if (end != ra->value && *end == '\0') {
            resp.hr_retry_after = secs;
        } else { /* an HTTP-date */
            time_t when = curl_getdate(ra->value, NULL);
            time_t now = time(NULL);
            resp.hr_retry_after = when > now ? (uint64_t)(when - now) : 0;
        }
    }
    *r->r_pprev = r->r_next;
    if (r->r_next)
        r->r_next->r_pprev = r->r_pprev;
    curl_multi_remove_handle(c->c_multi, r->r_easy);
    r->r_cb(r->r_arg, &resp);
    curl_easy_cleanup(r->r_easy);
    curl_slist_free_all(r->r_resolve);
    curl_slist_free_all(r->r_headers);
    buf_free(&r->r_body);
    free(r);
}

static void http_check_done(http_client_t *c)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(c->c_multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        http_request_t *r = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        http_finish(r, m->data.result);
    }
}

static void http_poll_cb(uv_poll_t *p, int status, int events)
{
    http_sock_t *hs = p->data;
    http_client_t *c = hs->hs_c;
    int flags = status < 0 ? CURL_CSELECT_ERR : 0;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    int running;
    curl_multi_socket_action(c->c_multi, hs->hs_fd, flags, &running);
    http_check_done(c);
}

static void http_timer_cb(uv_timer_t *t)
{
    http_client_t *c = t->data;
    int running;
    curl_multi_socket_action(c->c_multi, CURL_SOCKET_TIMEOUT, 0, &running);
    http_check_done(c);
}

/* CURLMOPT_SOCKETFUNCTION: watch s for what curl wants. */
static int http_socket_fn(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    http_client_t *c = userp;
    http_sock_t *hs = socketp;
    UNUSED(easy);
    if (what == CURL_POLL_REMOVE) {
        if (hs != NULL) {
            curl_multi_assign(c->c_multi, s, NULL);
            http_sock_close(hs);
        }
        return 0;
    }
    if (hs == NULL) {
        hs = xcalloc(1, sizeof(*hs));
        hs->hs_fd = s;
        hs->hs_c = c;
        if (uv_poll_init_socket(c->c_loop, &hs->hs_poll, s) != 0) {
            free(hs);
            return -1; /* curl fails the transfer */
        }
        hs->hs_poll.data = hs;
        hs->hs_next = c->c_socks;
        c->c_socks = hs;
        c->c_handles++;
        curl_multi_assign(c->c_multi, s, hs);
    }
    int ev = ((what & CURL_POLL_IN) ? UV_READABLE : 0) | ((what & CURL_POLL_OUT) ? UV_WRITABLE : 0);
    uv_poll_start(&hs->hs_poll, ev, http_poll_cb);
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: call curl back in timeout_ms (-1: no timer). A
 * timeout of 0 runs at the next loop iteration, never from inside curl. */
static int http_timer_fn(CURLM *multi, long timeout_ms, void *userp)
{
    http_client_t *c = userp;
    UNUSED(multi);
    if (c->c_freeing)
        return 0;
    if (timeout_ms < 0)
        uv_timer_stop(&c->c_timer);
    else
        uv_timer_start(&c->c_timer, http_timer_cb, (uint64_t)timeout_ms, 0);
    return 0;
}

int http_client_new(uv_loop_t *loop, http_client_t **out, char *err, size_t errlen)
{
    pthread_once(&http_once, http_global_init);
    if (http_init_rc != CURLE_OK) {
        snprintf(err, errlen, "libcurl: %s", curl_easy_strerror(http_init_rc));
        return SL_ECONFIG;
    }
    http_client_t *c = xcalloc(1, sizeof(*c));
    c->c_multi = curl_multi_init();
    if (c->c_multi == NULL) {
        free(c);
        snprintf(err, errlen, "libcurl: curl_multi_init failed");
        return SL_ECONFIG;
    }
    c->c_loop = loop;
    uv_timer_init(loop, &c->c_timer);
    c->c_timer.data = c;
    c->c_handles = 1;
    curl_multi_setopt(c->c_multi, CURLMOPT_SOCKETFUNCTION, http_socket_fn);
    curl_multi_setopt(c->c_multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->c_multi, CURLMOPT_TIMERFUNCTION, http_timer_fn);
    curl_multi_setopt(c->c_multi, CURLMOPT_TIMERDATA, c);
    *out = c;
    return 0;
}

void http_client_free(http_client_t *c)
{
    if (c == NULL)
        return;
    while (c->c_reqs != NULL) /* never reported: the callbacks do not run */
        http_request_cancel(c->c_reqs);
    curl_multi_cleanup(c->c_multi); /* closes the cached connections: their polls close */
    c->c_multi = NULL;
    c->c_freeing = true;
    for (http_sock_t *hs = c->c_socks; hs != NULL; hs = hs->hs_next)
        http_sock_close(hs);
    uv_timer_stop(&c->c_timer);
    uv_close((uv_handle_t *)&c->c_timer, http_handle_closed_cb);
}

static size_t http_write_cb(char *p, size_t size, size_t n, void *ud)
{
    http_request_t *r = ud;
    size_t len = size * n;
    if (r->r_max > 0 && r->r_body.b_len + len > r->r_max) {
        r->r_too_big = true;
        return 0; /* CURLE_WRITE_ERROR: the transfer stops */
    }
    buf_append(&r->r_body, p, len);
    return len;
}

/* "host:port:addr,addr" for CURLOPT_RESOLVE (IPv6 in brackets). */
static struct curl_slist *http_resolve_list(const http_get_opts_t *o)
{
    buf_t b;
    buf_init(&b, 128);
    buf_printf(&b, "%s:%d:", o->hg_host, o->hg_port);
    for (int i = 0; i < o->hg_naddrs; i++) {
        char ip[64];
        const struct sockaddr *sa = (const struct sockaddr *)&o->hg_addrs[i];
        net_ntop(sa, ip, sizeof(ip));
        buf_printf(&b, sa->sa_family == AF_INET6 ? "%s[%s]" : "%s%s", i ? "," : "", ip);
    }
    buf_append(&b, "", 1);
    struct curl_slist *l = curl_slist_append(NULL, b.b_data);
    buf_free(&b);
    return l;
}

http_request_t *http_get(http_client_t *c, const http_get_opts_t *o, http_done_cb cb, void *arg)
{
    SL_ASSERT(!c->c_freeing && cb != NULL);
    http_request_t *r = xcalloc(1, sizeof(*r));
    r->r_easy = curl_easy_init();
    if (r->r_easy == NULL) {
        free(r);
        return NULL;
    }
    r->r_c = c;
    r->r_cb = cb;
    r->r_arg = arg;
    r->r_max = o->hg_max_body;
    buf_init(&r->r_body, 0);
    CURL *e = r->r_easy;
    curl_easy_setopt(e, CURLOPT_URL, o->hg_url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->r_errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, http_write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, o->hg_allow_http ? "http,https" : "https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L); /* a redirect is an answer of its own */
    curl_easy_setopt(e, CURLOPT_PROXY, "");          /* never the environment's proxy */
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (o->hg_ca_file != NULL && o->hg_ca_file[0] != '\0')
        curl_easy_setopt(e, CURLOPT_CAINFO, o->hg_ca_file);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "sluice/" SLUICE_VERSION);
    if (o->hg_timeout_ms > 0)
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)o->hg_timeout_ms);
    if (o->hg_max_body > 0) /* a Content-Length above it fails before the body */
        curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)o->hg_max_body);
    if (o->hg_post != NULL) { /* TLSRPT reports (RFC 8460 5.2): POST, the body copied */
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->hg_post_len);
        curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, o->hg_post);
        if (o->hg_content_type != NULL) {
            char h[200];
            snprintf(h, sizeof(h), "Content-Type: %s", o->hg_content_type);
            r->r_headers = curl_slist_append(r->r_headers, h);
        }
    }
    if (o->hg_accept != NULL) {
        char h[256];
        snprintf(h, sizeof(h), "Accept: %s", o->hg_accept);
        r->r_headers = curl_slist_append(r->r_headers, h);
    }
    for (const char *const *h = o->hg_headers; h != NULL && *h != NULL; h++)
        r->r_headers = curl_slist_append(r->r_headers, *h);
    if (r->r_headers != NULL)
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->r_headers);
    if (o->hg_host != NULL && o->hg_naddrs > 0) {
        r->r_resolve = http_resolve_list(o);
        curl_easy_setopt(e, CURLOPT_RESOLVE, r->r_resolve);
    }
    r->r_next = c->c_reqs;
    r->r_pprev = &c->c_reqs;
    if (c->c_reqs)
        c->c_reqs->r_pprev = &r->r_next;
    c->c_reqs = r;
    /* curl arms the timer (0 ms): the transfer starts on the next loop
     * iteration, so cb never runs inside this call */
    if (curl_multi_add_handle(c->c_multi, e) != CURLM_OK) {
        c->c_reqs = r->r_next;
        if (r->r_next)
            r->r_next->r_pprev = &c->c_reqs;
        curl_easy_cleanup(e);
        curl_slist_free_all(r->r_resolve);
        curl_slist_free_all(r->r_headers);
        free(r);
        return NULL;
    }
    return r;
}

void http_request_cancel(http_request_t *r)
{
    if (r == NULL)
        return;
    http_client_t *c = r->r_c;
    *r->r_pprev = r->r_next;
    if (r->r_next)
        r->r_next->r_pprev = r->r_pprev;
    curl_multi_remove_handle(c->c_multi, r->r_easy);
    curl_easy_cleanup(r->r_easy);
    curl_slist_free_all(r->r_resolve);
    curl_slist_free_all(r->r_headers);
    buf_free(&r->r_body);
    free(r);
}
