/*
 * queue/tlsrpt_send.c - TLSRPT reports (RFC 8460): the report of one policy
 * domain and day built from the counters (tlsrpt.c), gzipped, and sent to
 * the URIs of the domain's `_smtp._tls` TXT record: `https:` by POST
 * (core/base/http_client.c), `mailto:` as a multipart/report message put
 * into the spool like any other (delivered, and DKIM-signed by the From
 * domain's key when there is one, by the delivery threads).
 *
 *   q_tlsrpt_txt_parse   the TXT record (pure; fuzzed)
 *   q_tlsrpt_report      the report JSON of (day, domain) (pure on a txn)
 *   q_tlsrpt_send        every pending report (days before today; with
 *                        now, today's too): the counters go, the lookups
 *                        and the sends start
 *   q_tlsrpt_send_stop   at stop: resolver and HTTP client closed
 *
 * A report's counters leave the spool when the report is built: a report
 * that then finds no TXT record, or whose POST fails, is logged and lost
 * (RFC 8460 5.1 makes retries optional); counts made later the same day
 * go in another report with another report-id.
 *
 * Thread: queue thread only (its loop runs the resolver and the client).
 */
#include "queue/queue_int.h"

#include <ctype.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <zlib.h>

#define TR_MAX_URIS 8

typedef struct tr_job {
    struct tr_job *tj_next;
    queue_t *tj_q;
    char tj_domain[256];
    char tj_id[400];   /* report-id */
    char tj_file[600]; /* file name of the gzipped report (RFC 8460 5.1) */
    buf_t tj_gz;       /* the gzipped report */
    int tj_pending;    /* lookups and POSTs in flight */
} tr_job_t;

struct q_tlsrpt_send {
    dns_resolver_t *ts_dns;
    http_client_t *ts_http;
    tr_job_t *ts_jobs;
    char ts_last_day[11]; /* the day whose earlier days were reported */
};

static void tr_txt_cb(void *arg, dns_status_t st, const char *const *txt, int n, uint32_t ttl);
static void tr_post_cb(void *arg, const http_response_t *r);
static void tr_job_done(tr_job_t *j);

/* ------------------------------------------------------------ the TXT record */

void q_tlsrpt_uris_free(char **u, int n)
{
    for (int i = 0; i < n; i++)
        free(u[i]);
    free(u);
}

static const char *tr_skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

int q_tlsrpt_txt_parse(const char *txt, char ***out, int *nout)
{
    /* RFC 8460 3: tlsrpt-record = "v=TLSRPTv1" *WSP ";" *WSP "rua=" uris
     * [*WSP ";" ext]; the version first, exactly */
    if (strncmp(txt, "v=TLSRPTv1", 10) != 0)
        return SL_EPARSE;
    const char *p = tr_skip_ws(txt + 10);
    if (*p != ';')
        return SL_EPARSE;
    char **u = NULL;
    int n = 0;
    bool seen = false;
    while (*p == ';') {
        p = tr_skip_ws(p + 1);
        size_t l = strcspn(p, ";");
        if (l >= 4 && strncmp(p, "rua=", 4) == 0 && !seen) {
            seen = true;
            const char *v = p + 4, *end = p + l;
            while (v < end) {
                const char *c = memchr(v, ',', (size_t)(end - v));
                if (c == NULL)
                    c = end;
                const char *a = v, *b = c;
                while (a < b && (*a == ' ' || *a == '\t'))
                    a++;
                while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
                    b--;
                size_t ul = (size_t)(b - a);
                bool mail = ul > 7 && strncasecmp(a, "mailto:", 7) == 0;
                bool web = ul > 8 && strncasecmp(a, "https://", 8) == 0;
                bool clean = true;
                for (const char *k = a; k < b; k++)
                    clean &= (unsigned char)*k > ' ' && (unsigned char)*k < 0x7f;
                if ((mail || web) && clean && ul < 1000 && n < TR_MAX_URIS) {
                    u = xrealloc(u, sizeof(*u) * (size_t)(n + 1));
                    u[n++] = xstrndup(a, ul);
                }
                v = c + 1;
            }
        }
        p += l;
    }
    if (*p != '\0' || n == 0) {
        q_tlsrpt_uris_free(u, n);
        return SL_EPARSE;
    }
    *out = u;
    *nout = n;
    return 0;
}

/* ------------------------------------------------------------ the report */

static void tr_time(char *dst, size_t len, uint64_t unix_s)
{
    time_t t = (time_t)unix_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(dst, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static uint64_t tr_day_start(const char *day)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    if (sscanf(day, "%4d-%2d-%2d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday) != 3)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (uint64_t)timegm(&tm);
}

json_object *q_tlsrpt_report(queue_t *q, MDB_txn *txn, const char *day, const char *domain,
                             uint64_t end_s, const char *report_id)
{
    const cfg_t *cfg = q->q_cfg;
    json_object *doms = q_tlsrpt_json(q, txn, day, domain);
    json_object *r = json_object_new_object();
    char t0[32], t1[32];
    uint64_t start = tr_day_start(day);
    tr_time(t0, sizeof(t0), start);
    tr_time(t1, sizeof(t1), end_s);
    json_object_object_add(r, "organization-name", json_object_new_string(cfg->c_tlsrpt_org));
    json_object *dr = json_object_new_object();
    json_object_object_add(dr, "start-datetime", json_object_new_string(t0));
    json_object_object_add(dr, "end-datetime", json_object_new_string(t1));
    json_object_object_add(r, "date-range", dr);
    json_object_object_add(r, "contact-info", json_object_new_string(cfg->c_tlsrpt_contact));
    json_object_object_add(r, "report-id", json_object_new_string(report_id));
    json_object *pols = json_object_new_array();
    json_object *d = json_object_array_length(doms) ? json_object_array_get_idx(doms, 0) : NULL;
    json_object *in = d ? json_object_object_get(d, "policies") : NULL;
    for (size_t i = 0; in && i < json_object_array_length(in); i++) {
        json_object *p = json_object_array_get_idx(in, i), *o = json_object_new_object();
        json_object *pol = json_object_new_object();
        json_object_object_add(pol, "policy-type",
                               json_object_get(json_object_object_get(p, "policy_type")));
        json_object_object_add(pol, "policy-domain", json_object_new_string(domain));
        json_object_object_add(o, "policy", pol);
        json_object *sum = json_object_new_object();
        json_object_object_add(sum, "total-successful-session-count",
                               json_object_get(json_object_object_get(p, "successful")));
        json_object_object_add(sum, "total-failure-session-count",
                               json_object_get(json_object_object_get(p, "failed")));
        json_object_object_add(o, "summary", sum);
        json_object *fs = json_object_object_get(p, "failures"), *fd = json_object_new_array();
        for (size_t k = 0; k < json_object_array_length(fs); k++) {
            json_object *f = json_object_array_get_idx(fs, k), *x = json_object_new_object(), *v;
            json_object_object_add(x, "result-type",
                                   json_object_get(json_object_object_get(f, "result_type")));
            if ((v = json_object_object_get(f, "receiving_mx_hostname")) != NULL)
                json_object_object_add(x, "receiving-mx-hostname", json_object_get(v));
            if ((v = json_object_object_get(f, "receiving_ip")) != NULL)
                json_object_object_add(x, "receiving-ip", json_object_get(v));
            if ((v = json_object_object_get(f, "failure_reason")) != NULL)
                json_object_object_add(x, "failure-reason-code", json_object_get(v));
            json_object_object_add(x, "failed-session-count",
                                   json_object_get(json_object_object_get(f, "count")));
            json_object_array_add(fd, x);
        }
        if (json_object_array_length(fd) > 0)
            json_object_object_add(o, "failure-details", fd);
        else
            json_object_put(fd);
        json_object_array_add(pols, o);
    }
    json_object_object_add(r, "policies", pols);
    json_object_put(doms);
    return r;
}

/* gzip (RFC 1952) of len bytes into out. 0 or SL_ENOMEM-like failure. */
static int tr_gzip(const char *in, size_t len, buf_t *out)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (deflateInit2(&z, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return SL_EPARSE;
    size_t cap = deflateBound(&z, (uLong)len) + 32;
    buf_reset(out);
    buf_append(out, NULL, 0);
    unsigned char *dst = xmalloc(cap);
    z.next_in = (Bytef *)(uintptr_t)in;
    z.avail_in = (uInt)len;
    z.next_out = dst;
    z.avail_out = (uInt)cap;
    int rc = deflate(&z, Z_FINISH);
    if (rc == Z_STREAM_END)
        buf_append(out, dst, cap - z.avail_out);
    deflateEnd(&z);
    free(dst);
    return rc == Z_STREAM_END ? 0 : SL_EPARSE;
}

static void tr_base64(buf_t *b, const unsigned char *p, size_t n)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t col = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);
        char o[4] = {t[v >> 18 & 63], t[v >> 12 & 63], i + 1 < n ? t[v >> 6 & 63] : '=',
                     i + 2 < n ? t[v & 63] : '='};
        buf_append(b, o, 4);
        if ((col += 4) == 76) {
            buf_append(b, "\r\n", 2);
            col = 0;
        }
    }
    if (col)
        buf_append(b, "\r\n", 2);
}

/* ------------------------------------------------------------ sending */

static struct q_tlsrpt_send *tr_state(queue_t *q)
{
    if (q->q_tlsrpt_send == NULL)
        q->q_tlsrpt_send = xcalloc(1, sizeof(*q->q_tlsrpt_send));
    return q->q_tlsrpt_send;
}

/* mailto: the report as a message in the spool (RFC 8460 5.3). */
static void tr_mail(tr_job_t *j, const char *uri)
{
    queue_t *q = j->tj_q;
    const cfg_t *cfg = q->q_cfg;
    char rcpt[1000], from[600], date[64], idb[17];
    size_t l = strcspn(uri + 7, "?");
    snprintf(rcpt, sizeof(rcpt), "%.*s", (int)l, uri + 7);
    if (strchr(rcpt, '@') == NULL || strpbrk(rcpt, "<>\"\\ ") != NULL) {
        log_warn("tlsrpt: %s: rua %s is not an address", j->tj_domain, uri);
        return;
    }
    if (cfg->c_tlsrpt_sender[0])
        snprintf(from, sizeof(from), "%s", cfg->c_tlsrpt_sender);
    else
        snprintf(from, sizeof(from), "tlsrpt@%s", cfg->c_hostname);
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S +0000", &tm);
    queue_msg_in_t m;
    memset(&m, 0, sizeof(m));
    m.qm_id = queue_msgid_new();
    m.qm_arrival = (uint64_t)now;
    m.qm_sender = from;
    queue_rcpt_in_t r = {.qr_addr = rcpt, .qr_notify = 0};
    m.qm_nrcpt = 1;
    m.qm_rcpts = &r;
    buf_t *b = &m.qm_body;
    buf_init(b, j->tj_gz.b_len * 2 + 2048);
    buf_printf(b,
               "Received: by %s (sluice) id %s; %s\r\n"
               "From: <%s>\r\nTo: <%s>\r\nDate: %s\r\n"
               "Subject: Report Domain: %s Submitter: %s Report-ID: <%s>\r\n"
               "TLS-Report-Domain: %s\r\nTLS-Report-Submitter: %s\r\n"
               "Message-ID: <%s.tlsrpt@%s>\r\nMIME-Version: 1.0\r\n"
               "Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n"
               "\tboundary=\"tlsrpt-%s\"\r\n\r\n"
               "--tlsrpt-%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
               "This is an aggregate TLS report (RFC 8460) from %s for %s.\r\n\r\n"
               "--tlsrpt-%s\r\nContent-Type: application/tlsrpt+gzip\r\n"
               "Content-Transfer-Encoding: base64\r\n"
               "Content-Disposition: attachment;\r\n\tfilename=\"%s\"\r\n\r\n",
               cfg->c_hostname, queue_msgid_fmt(m.qm_id, idb), date, from, rcpt, date, j->tj_domain,
               cfg->c_hostname, j->tj_id, j->tj_domain, cfg->c_hostname, idb, cfg->c_hostname, idb,
               idb, cfg->c_tlsrpt_org, j->tj_domain, idb, j->tj_file);
    tr_base64(b, (const unsigned char *)j->tj_gz.b_data, j->tj_gz.b_len);
    buf_printf(b, "\r\n--tlsrpt-%s--\r\n", idb);
    MDB_txn *txn = NULL;
    int rc = mdb_txn_begin(q->q_env, NULL, 0, &txn);
    if (rc == 0) {
        rc = q_insert_msg(q, txn, &m);
        if (rc == 0)
            rc = mdb_txn_commit(txn); /* frees txn either way */
        else
            mdb_txn_abort(txn);
    }
    buf_free(b);
    if (rc != 0) {
        log_warn("tlsrpt: %s: report %s by mail to <%s> not queued: %s", j->tj_domain, j->tj_id,
                 rcpt, rc > 0 ? mdb_strerror(rc) : sl_strerror(rc));
        return;
    }
    atomic_fetch_add_explicit(&q->q_stats.qs_msgs, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&q->q_stats.qs_rcpts, 1, memory_order_relaxed);
    q_sched_kick(q);
    log_info("tlsrpt: %s: report %s queued as %s to <%s>", j->tj_domain, j->tj_id, idb, rcpt);
}

static void tr_post(tr_job_t *j, const char *uri)
{
    struct q_tlsrpt_send *ts = tr_state(j->tj_q);
    char err[256];
    if (ts->ts_http == NULL && http_client_new(&j->tj_q->q_loop, &ts->ts_http, err, sizeof(err))) {
        log_warn("tlsrpt: %s: no HTTP client: %s", j->tj_domain, err);
        return;
    }
    const cfg_t *cfg = j->tj_q->q_cfg;
    http_get_opts_t o = {.hg_url = uri,
                         .hg_ca_file = cfg->c_dlv_ca_file,
                         .hg_max_body = 65536,
                         .hg_timeout_ms = 30000,
                         .hg_post = j->tj_gz.b_data,
                         .hg_post_len = j->tj_gz.b_len,
                         .hg_content_type = "application/tlsrpt+gzip"};
    if (http_get(ts->ts_http, &o, tr_post_cb, j) == NULL) { /* cancelled only by the free */
        log_warn("tlsrpt: %s: POST %s could not start", j->tj_domain, uri);
        return;
    }
    j->tj_pending++;
}

static void tr_post_cb(void *arg, const http_response_t *r)
{
    tr_job_t *j = arg;
    if (r->hr_error == NULL && r->hr_status >= 200 && r->hr_status < 300)
        log_info("tlsrpt: %s: report %s posted (HTTP %d)", j->tj_domain, j->tj_id, r->hr_status);
    else
        log_warn("tlsrpt: %s: report %s: POST failed: %s%d", j->tj_domain, j->tj_id,
                 r->hr_error ? r->hr_error : "HTTP ", r->hr_error ? 0 : r->hr_status);
    if (--j->tj_pending == 0)
        tr_job_done(j);
}

static void tr_txt_cb(void *arg, dns_status_t st, const char *const *txt, int n, uint32_t ttl)
{
    tr_job_t *j = arg;
    UNUSED(ttl);
    char **uris = NULL;
    int nu = 0, found = 0;
    /* RFC 8460 3: records not starting with v=TLSRPTv1 are discarded;
     * other than exactly one left: no TLSRPT */
    for (int i = 0; st == DNS_OK && i < n; i++)
        if (strncmp(txt[i], "v=TLSRPTv1", 10) == 0 && found++ == 0 &&
            q_tlsrpt_txt_parse(txt[i], &uris, &nu) != 0)
            nu = 0;
    j->tj_pending--;
    if (st == DNS_CANCELLED) {
        q_tlsrpt_uris_free(uris, nu);
        tr_job_done(j);
        return;
    }
    if (found != 1 || nu == 0) {
        log_info("tlsrpt: %s: no usable _smtp._tls record (%s, %d record(s)): report %s dropped",
                 j->tj_domain, dns_status_str(st), found, j->tj_id);
        q_tlsrpt_uris_free(uris, nu);
        tr_job_done(j);
        return;
    }
    for (int i = 0; i < nu; i++) {
        if (strncasecmp(uris[i], "mailto:", 7) == 0)
            tr_mail(j, uris[i]);
        else
            tr_post(j, uris[i]);
    }
    q_tlsrpt_uris_free(uris, nu);
    if (j->tj_pending == 0)
        tr_job_done(j);
}

static void tr_job_done(tr_job_t *j)
{
    struct q_tlsrpt_send *ts = tr_state(j->tj_q);
    for (tr_job_t **pp = &ts->ts_jobs; *pp; pp = &(*pp)->tj_next)
        if (*pp == j) {
            *pp = j->tj_next;
            break;
        }
    buf_free(&j->tj_gz);
    free(j);
}

/* Build, gzip and remove the counters of (day, domain), then start its
 * TXT lookup. */
static void tr_start(queue_t *q, const char *day, const char *domain, uint64_t end_s)
{
    struct q_tlsrpt_send *ts = tr_state(q);
    const cfg_t *cfg = q->q_cfg;
    tr_job_t *j = xcalloc(1, sizeof(*j));
    j->tj_q = q;
    snprintf(j->tj_domain, sizeof(j->tj_domain), "%s", domain);
    char t0[32], t1[32];
    tr_time(t0, sizeof(t0), tr_day_start(day));
    tr_time(t1, sizeof(t1), end_s);
    snprintf(j->tj_id, sizeof(j->tj_id), "%s_%s_%016llx", t0, domain,
             (unsigned long long)queue_msgid_new());
    snprintf(j->tj_file, sizeof(j->tj_file), "%s!%s!%llu!%llu!%s.json.gz", cfg->c_hostname, domain,
             (unsigned long long)tr_day_start(day), (unsigned long long)end_s,
             j->tj_id + strlen(j->tj_id) - 16);
    MDB_txn *txn;
    int rc = mdb_txn_begin(q->q_env, NULL, 0, &txn);
    if (rc != 0) {
        free(j);
        return;
    }
    json_object *rep = q_tlsrpt_report(q, txn, day, domain, end_s, j->tj_id);
    const char *text = json_object_to_json_string_ext(rep, JSON_C_TO_STRING_PLAIN);
    buf_init(&j->tj_gz, 1024);
    if (tr_gzip(text, strlen(text), &j->tj_gz) != 0) {
        log_warn("tlsrpt: %s: gzip failed", domain);
        json_object_put(rep);
        mdb_txn_abort(txn);
        buf_free(&j->tj_gz);
        free(j);
        return;
    }
    json_object_put(rep);
    /* its counters go with it (a later count that day makes another report) */
    MDB_cursor *c;
    char key[12];
    snprintf(key, sizeof(key), "%s", day);
    MDB_val k = {strlen(key), key}, v;
    if (mdb_cursor_open(txn, q->q_dbi_tlsrpt, &c) == 0) {
        for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0;
             rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
            const char *p[Q_TLSRPT_PARTS];
            size_t l[Q_TLSRPT_PARTS];
            if (!q_tlsrpt_split(&k, p, l) || l[0] != 10 || memcmp(p[0], day, 10) != 0)
                break;
            if (l[1] == strlen(domain) && memcmp(p[1], domain, l[1]) == 0)
                mdb_cursor_del(c, 0);
        }
        mdb_cursor_close(c);
    }
    if ((rc = mdb_txn_commit(txn)) != 0) {
        log_warn("tlsrpt: %s: counters not removed: %s", domain, mdb_strerror(rc));
        buf_free(&j->tj_gz);
        free(j);
        return;
    }
    j->tj_next = ts->ts_jobs;
    ts->ts_jobs = j;
    char err[256], name[300];
    if (ts->ts_dns == NULL && dns_resolver_new(&q->q_loop, cfg->c_dlv_resolvers, 3000, 2,
                                               &ts->ts_dns, err, sizeof(err)) != 0) {
        log_warn("tlsrpt: no resolver: %s", err);
        tr_job_done(j);
        return;
    }
    snprintf(name, sizeof(name), "_smtp._tls.%s", domain);
    j->tj_pending = 1;
    dns_query_txt(ts->ts_dns, name, tr_txt_cb, j);
}

int q_tlsrpt_send(queue_t *q, bool now)
{
    Q_ASSERT_QUEUE_THREAD(q);
    if (q->q_cfg->c_tlsrpt_org[0] == '\0')
        return 0;
    struct q_tlsrpt_send *ts = tr_state(q);
    uint64_t now_s = clock_now_us() / 1000000;
    char today[11];
    q_tlsrpt_day(now_s, today);
    if (!now && strcmp(ts->ts_last_day, today) == 0)
        return 0; /* the days before today are done */
    snprintf(ts->ts_last_day, sizeof(ts->ts_last_day), "%s", today);
    q_tlsrpt_flush(q);
    /* the (day, domain) pairs to report, read first: tr_start writes */
    char(*pairs)[11 + 254] = NULL;
    int np = 0;
    MDB_txn *txn;
    if (mdb_txn_begin(q->q_env, NULL, MDB_RDONLY, &txn) != 0)
        return 0;
    MDB_cursor *c;
    if (mdb_cursor_open(txn, q->q_dbi_tlsrpt, &c) == 0) {
        MDB_val k, v;
        for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0 && np < 10000;
             rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
            const char *p[Q_TLSRPT_PARTS];
            size_t l[Q_TLSRPT_PARTS];
            if (!q_tlsrpt_split(&k, p, l) || l[0] != 10 || l[1] == 0 || l[1] > 253)
                continue;
            if (!now && memcmp(p[0], today, 10) >= 0)
                continue; /* today is not over */
            char pair[11 + 254];
            memcpy(pair, p[0], 10);
            pair[10] = '\0';
            memcpy(pair + 11, p[1], l[1]);
            pair[11 + l[1]] = '\0';
            if (np > 0 && memcmp(pairs[np - 1], pair, 11 + l[1] + 1) == 0)
                continue;
            pairs = xrealloc(pairs, sizeof(*pairs) * (size_t)(np + 1));
            memcpy(pairs[np++], pair, sizeof(pair));
        }
        mdb_cursor_close(c);
    }
    mdb_txn_abort(txn);
    for (int i = 0; i < np; i++) {
        const char *day = pairs[i];
        uint64_t end = strcmp(day, today) == 0 ? now_s : tr_day_start(day) + 86399;
        tr_start(q, day, pairs[i] + 11, end);
    }
    free(pairs);
    return np;
}

void q_tlsrpt_send_stop(queue_t *q)
{
    struct q_tlsrpt_send *ts = q->q_tlsrpt_send;
    if (ts == NULL)
        return;
    http_client_free(ts->ts_http); /* POSTs in flight: their callbacks never run */
    ts->ts_http = NULL;
    dns_resolver_free(ts->ts_dns); /* lookups: cancelled, their jobs freed */
    ts->ts_dns = NULL;
    while (ts->ts_jobs != NULL)
        tr_job_done(ts->ts_jobs);
}

void q_tlsrpt_send_free(queue_t *q)
{
    free(q->q_tlsrpt_send);
    q->q_tlsrpt_send = NULL;
}
