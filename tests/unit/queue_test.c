/*
 * tests/unit/queue_test.c - the queue module on a real LMDB spool in a
 * mkdtemp directory: group commit, restart, LIST/INSPECT/CHECK, map growth
 * and map full, the accounting log and its rotation, the scheduler
 * (dispatch, outcomes, retry schedule, expiry, DSN, active window), and a
 * small commit-batching benchmark (printed, not asserted).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "queue/queue.h"

#include <dirent.h>
#include <json-c/json.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------ helpers */

static char tmpdir[256];

static void rm_rf(const char *path)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);
    assert_int_equal(system(cmd), 0);
}

static int setup_dir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/queue_test.XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    return 0;
}

static int teardown_dir(void **state)
{
    (void)state;
    rm_rf(tmpdir);
    return 0;
}

static cfg_t *mkcfg(void)
{
    cfg_t *c;
    char err[256];
    assert_int_equal(cfg_default(&c, err, sizeof(err)), 0);
    free(c->c_spool_path);
    c->c_spool_path = xasprintf("%s/spool", tmpdir);
    free(c->c_acct_dir);
    c->c_acct_dir = xasprintf("%s/log", tmpdir);
    c->c_scan_interval_ms = 50;
    c->c_retry_jitter = 0;
    return c;
}

static queue_t *open_q(cfg_t *c)
{
    queue_t *q = NULL;
    char err[256] = "";
    int rc = queue_open(c, &q, err, sizeof(err));
    if (rc != 0)
        fail_msg("queue_open: %s", err);
    return q;
}

/* One message with nrcpt recipients rcpt<i>@<domain>, body of bodylen. */
static queue_msg_in_t *mkmsg(int nrcpt, const char *domain, size_t bodylen, uint64_t arrival)
{
    queue_msg_in_t *m = xcalloc(1, sizeof(*m));
    m->qm_id = queue_msgid_new();
    m->qm_arrival = arrival ? arrival : clock_now_s();
    m->qm_sender = xstrdup("sender@example.com");
    m->qm_job = xstrdup("job-\"7\"");
    m->qm_auth_user = xstrdup("alice");
    snprintf(m->qm_client_ip, sizeof(m->qm_client_ip), "127.0.0.1");
    m->qm_nrcpt = nrcpt;
    m->qm_rcpts = xcalloc((size_t)nrcpt, sizeof(queue_rcpt_in_t));
    for (int i = 0; i < nrcpt; i++)
        m->qm_rcpts[i].qr_addr = xasprintf("rcpt%d@%s", i, domain);
    buf_init(&m->qm_body, 0);
    buf_append_str(&m->qm_body, "From: sender@example.com\r\nTo: rcpt0@x\r\n"
                                "Subject: test\r\nMessage-ID: <t@example.com>\r\n\r\n");
    while (m->qm_body.b_len < bodylen)
        buf_append_str(&m->qm_body, "body line 0123456789 abcdefghijklmnopqrstuvwxyz\r\n");
    return m;
}

/* Replies come back on a channel of the test's own loop. */
typedef struct waiter {
    uv_loop_t loop;
    chan_t *ch;
    int want, back, ok, efull, espool;
    uint64_t *ids; /* committed ids, in reply order */
    int nids;
} waiter_t;

static void waiter_cb(chan_t *ch, chan_node_t *first, void *arg)
{
    waiter_t *w = arg;
    (void)ch;
    while (first) {
        chan_node_t *next = first->cn_next;
        queue_msg_in_t *m = (queue_msg_in_t *)first;
        w->back++;
        if (m->qm_status == 0) {
            w->ok++;
            if (w->ids)
                w->ids[w->nids++] = m->qm_id;
        } else if (m->qm_status == SL_EFULL) {
            w->efull++;
        } else if (m->qm_status == SL_ESPOOL) {
            w->espool++;
        }
        queue_msg_in_free(m);
        first = next;
    }
    if (w->back >= w->want && w->ch) {
        chan_close(w->ch);
        w->ch = NULL;
    }
}

typedef struct producer {
    queue_t *q;
    waiter_t *w;
    int n, nrcpt;
    size_t bodylen;
    const char *domain;
    uint64_t arrival;
} producer_t;

static void *producer_main(void *arg)
{
    producer_t *p = arg;
    for (int i = 0; i < p->n; i++) {
        queue_msg_in_t *m = mkmsg(p->nrcpt, p->domain, p->bodylen, p->arrival);
        m->qm_reply = p->w->ch;
        queue_submit(p->q, m);
    }
    return NULL;
}

/* Submit n messages from another thread and wait for every reply. */
static void submit_n(queue_t *q, waiter_t *w, int n, int nrcpt, const char *domain, size_t bodylen,
                     uint64_t arrival)
{
    memset(w, 0, sizeof(*w));
    w->ids = xcalloc((size_t)n + 1, sizeof(uint64_t));
    assert_int_equal(uv_loop_init(&w->loop), 0);
    w->want = n;
    w->ch = chan_new(&w->loop, waiter_cb, w);
    producer_t p = {q, w, n, nrcpt, bodylen, domain, arrival};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, producer_main, &p), 0);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    pthread_join(t, NULL);
    assert_int_equal(uv_loop_close(&w->loop), 0);
    assert_int_equal(w->back, n);
}

typedef struct req_waiter {
    uv_loop_t loop;
    chan_t *ch;
} req_waiter_t;

static void req_cb(chan_t *ch, chan_node_t *first, void *arg)
{
    req_waiter_t *rw = arg;
    (void)first;
    chan_close(ch);
    rw->ch = NULL;
}

/* A control request, synchronously; returns the result (caller puts) or
 * NULL with err set. */
static json_object *request(queue_t *q, queue_req_type_t type, uint64_t id, size_t limit, char *err)
{
    req_waiter_t rw;
    queue_req_t r;
    memset(&r, 0, sizeof(r));
    assert_int_equal(uv_loop_init(&rw.loop), 0);
    rw.ch = chan_new(&rw.loop, req_cb, &rw);
    r.qq_type = type;
    r.qq_msgid = id;
    r.qq_limit = limit;
    r.qq_reply = rw.ch;
    queue_request(q, &r);
    uv_run(&rw.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&rw.loop), 0);
    if (err)
        snprintf(err, 256, "%s", r.qq_error);
    return r.qq_result;
}

static int64_t jint(json_object *o, const char *key)
{
    json_object *v;
    assert_true(json_object_object_get_ex(o, key, &v));
    return json_object_get_int64(v);
}

/* A time of an answer (RFC 3339, docs/records.md) as unix seconds. */
static uint64_t jtime(json_object *o, const char *key)
{
    json_object *v;
    uint64_t us = 0;
    assert_true(json_object_object_get_ex(o, key, &v));
    assert_int_equal(time_parse_rfc3339(json_object_get_string(v), &us), 0);
    return us / 1000000;
}

static const char *jstr(json_object *o, const char *key)
{
    json_object *v;
    assert_true(json_object_object_get_ex(o, key, &v));
    return json_object_get_string(v);
}

static void assert_check_ok(queue_t *q, int64_t msgs, int64_t rcpts)
{
    json_object *res = request(q, QREQ_CHECK, 0, 0, NULL);
    assert_non_null(res);
    json_object *ok;
    assert_true(json_object_object_get_ex(res, "ok", &ok));
    if (!json_object_get_boolean(ok))
        fail_msg("check: %s", json_object_to_json_string(res));
    if (msgs >= 0)
        assert_int_equal(jint(res, "msgs"), msgs);
    if (rcpts >= 0) {
        assert_int_equal(jint(res, "rcpts"), rcpts);
        assert_int_equal(jint(res, "due"), rcpts);
    }
    json_object_put(res);
}

/* Read every line of every acct*.jsonl in dir; count lines of a type and
 * check that each is valid JSON. */
static int acct_count(const char *type, int *nfiles)
{
    char dir[300];
    snprintf(dir, sizeof(dir), "%s/log", tmpdir);
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    int count = 0, files = 0;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, "acct", 4) != 0)
            continue;
        files++;
        char path[600];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "r");
        assert_non_null(f);
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        while ((n = getline(&line, &cap, f)) > 0) {
            assert_int_equal(line[n - 1], '\n');
            json_object *o = json_tokener_parse(line);
            if (o == NULL)
                fail_msg("bad JSON line in %s: %s", e->d_name, line);
            if (type == NULL || strcmp(jstr(o, "type"), type) == 0)
                count++;
            json_object_put(o);
        }
        free(line);
        fclose(f);
    }
    closedir(d);
    if (nfiles)
        *nfiles = files;
    return count;
}

/* ------------------------------------------------------------ Part A */

static void test_msgid(void **state)
{
    (void)state;
    char buf[17];
    uint64_t a = queue_msgid_new(), b = queue_msgid_new(), v = 0;
    assert_true(b > a);
    assert_string_equal(queue_msgid_fmt(0x0123456789ABCDEFULL, buf), "0123456789ABCDEF");
    assert_int_equal(queue_msgid_parse("0123456789ABCDEF", &v), 0);
    assert_true(v == 0x0123456789ABCDEFULL);
    assert_int_equal(queue_msgid_parse("0123456789abcdef", &v), 0);
    assert_int_equal(queue_msgid_parse("0123456789ABCDE", &v), SL_EPARSE);
    assert_int_equal(queue_msgid_parse("0123456789ABCDEF0", &v), SL_EPARSE);
    assert_int_equal(queue_msgid_parse("0123456789ABCDEG", &v), SL_EPARSE);
    assert_true(queue_msgid_new() > b);
}

static void test_open_errors(void **state)
{
    (void)state;
    cfg_t *c = mkcfg();
    queue_t *q = NULL;
    char err[256] = "";
    /* a file where the spool directory should be */
    free(c->c_spool_path);
    c->c_spool_path = xasprintf("%s/file", tmpdir);
    FILE *f = fopen(c->c_spool_path, "w");
    fclose(f);
    assert_int_equal(queue_open(c, &q, err, sizeof(err)), SL_ESPOOL);
    assert_null(q);
    assert_non_null(strstr(err, "spool "));
    assert_non_null(strstr(err, "/file"));
    /* below a file: cannot create */
    free(c->c_spool_path);
    c->c_spool_path = xasprintf("%s/file/spool", tmpdir);
    assert_int_equal(queue_open(c, &q, err, sizeof(err)), SL_ESPOOL);
    assert_non_null(strstr(err, "cannot create"));
    cfg_unref(c);
}

static void test_submit_restart_requests(void **state)
{
    (void)state;
    cfg_t *c = mkcfg();
    queue_t *q = open_q(c);
    assert_int_equal(queue_start(q), 0);
    waiter_t w;
    const int n = 2000;
    submit_n(q, &w, n, 3, "example.org", 300, 0);
    assert_int_equal(w.ok, n);
    const queue_stats_t *st = queue_stats(q);
    assert_int_equal(atomic_load(&st->qs_received), n);
    assert_int_equal(atomic_load(&st->qs_msgs), n);
    assert_int_equal(atomic_load(&st->qs_rcpts), 3 * n);
    assert_int_equal(queue_pending(q), 0);
    assert_true(atomic_load(&st->qs_commits) >= 1);
    assert_true(atomic_load(&st->qs_commits) < (uint64_t)n); /* group commit happened */
    assert_true(atomic_load(&st->qs_used) > 0);
    assert_false(queue_over_high_water(q));
    printf("   2000 msgs in %llu commits\n", (unsigned long long)atomic_load(&st->qs_commits));

    /* accounting: one received record per message, after the commit */
    assert_int_equal(acct_count("received", NULL), n);
    queue_stop(q);
    queue_free(q);

    /* restart finds the queue */
    size_t nm = 0, nr = 0;
    assert_int_equal(queue_check_offline(c->c_spool_path, &nm, &nr), 0);
    assert_int_equal(nm, n);
    assert_int_equal(nr, 3 * n);
    q = open_q(c);
    st = queue_stats(q);
    assert_int_equal(atomic_load(&st->qs_msgs), n);
    assert_int_equal(atomic_load(&st->qs_rcpts), 3 * n);
    /* ids stay unique across restarts */
    uint64_t maxid = 0;
    for (int i = 0; i < w.nids; i++)
        maxid = MAX(maxid, w.ids[i]);
    assert_true(queue_msgid_new() > maxid);
    assert_int_equal(queue_start(q), 0);

    char err[256];
    json_object *res = request(q, QREQ_LIST, 0, 10, err);
    assert_non_null(res);
    assert_int_equal(jint(res, "total"), n);
    json_object *arr = json_object_object_get(res, "messages");
    assert_int_equal(json_object_array_length(arr), 10);
    uint64_t prev = 0, first = 0;
    for (size_t i = 0; i < 10; i++) {
        json_object *m = json_object_array_get_idx(arr, i);
        uint64_t id;
        assert_int_equal(queue_msgid_parse(jstr(m, "id"), &id), 0);
        assert_true(id > prev); /* oldest first */
        if (i == 0)
            first = id;
        prev = id;
        assert_string_equal(jstr(m, "sender"), "sender@example.com");
        assert_string_equal(jstr(m, "job"), "job-\"7\"");
        assert_true(jint(m, "size") >= 300);
        json_object *rc = json_object_object_get(m, "recipients");
        assert_int_equal(json_object_array_length(rc), 3);
        assert_string_equal(jstr(json_object_array_get_idx(rc, 2), "addr"), "rcpt2@example.org");
        assert_int_equal(jint(json_object_array_get_idx(rc, 0), "attempts"), 0);
    }
    json_object_put(res);
    /* the smallest committed id is the first listed */
    uint64_t minid = UINT64_MAX;
    for (int i = 0; i < w.nids; i++)
        minid = MIN(minid, w.ids[i]);
    assert_true(first == minid);

    res = request(q, QREQ_INSPECT, first, 0, err);
    assert_non_null(res);
    assert_string_equal(jstr(res, "client_ip"), "127.0.0.1");
    assert_string_equal(jstr(res, "auth_user"), "alice");
    assert_int_equal(jint(res, "pending"), 3);
    json_object_put(res);
    res = request(q, QREQ_INSPECT, 42, 0, err);
    assert_null(res);
    assert_non_null(strstr(err, "not found"));

    assert_check_ok(q, n, 3 * n);
    queue_stop(q);

    /* after stop: late submissions come back with SL_ESPOOL */
    waiter_t w2;
    submit_n(q, &w2, 3, 1, "example.org", 10, 0);
    assert_int_equal(w2.espool, 3);
    free(w2.ids);
    queue_free(q);
    free(w.ids);
    cfg_unref(c);
}

static void test_map_growth(void **state)
{
    (void)state;
    cfg_t *c = mkcfg();
    c->c_spool_map_size = 1 << 20;
    c->c_spool_max_size = 256 << 20;
    queue_t *q = open_q(c);
    assert_int_equal(queue_start(q), 0);
    waiter_t w;
    submit_n(q, &w, 600, 2, "example.org", 10000, 0); /* ~6 MB */
    assert_int_equal(w.ok, 600);
    assert_true(atomic_load(&queue_stats(q)->qs_map_size) > (1u << 20));
    assert_int_equal(atomic_load(&queue_stats(q)->qs_errors), 0);
    assert_check_ok(q, 600, 1200);
    queue_stop(q);
    queue_free(q);
    /* reopen with the small configured map: the data file size wins */
    q = open_q(c);
    assert_int_equal(atomic_load(&queue_stats(q)->qs_msgs), 600);
    queue_free(q);
    free(w.ids);
    cfg_unref(c);
}

static void test_map_full(void **state)
{
    (void)state;
    cfg_t *c = mkcfg();
    c->c_spool_map_size = 1 << 20;
    c->c_spool_max_size = 2 << 20;
    c->c_spool_high_water = 50;
    queue_t *q = open_q(c);
    assert_int_equal(queue_start(q), 0);
    waiter_t w1, w2;
    submit_n(q, &w1, 20, 1, "example.org", 1000, 0);
    assert_int_equal(w1.ok, 20);
    submit_n(q, &w2, 100, 1, "example.org", 60000, 0); /* 6 MB > 2 MB */
    assert_true(w2.efull > 0);
    assert_int_equal(w2.ok + w2.efull, 100);
    assert_true(queue_over_high_water(q));
    /* nothing corrupted, the first messages are still there */
    assert_check_ok(q, 20 + w2.ok, 20 + w2.ok);
    for (int i = 0; i < w1.nids; i++) {
        json_object *res = request(q, QREQ_INSPECT, w1.ids[i], 0, NULL);
        assert_non_null(res);
        json_object_put(res);
    }
    queue_stop(q);
    queue_free(q);
    free(w1.ids);
    free(w2.ids);
    cfg_unref(c);
}

static void test_acct_rotation(void **state)
{
    (void)state;
    cfg_t *c = mkcfg();
    c->c_acct_max_size = 20000;
    queue_t *q = open_q(c);
    assert_int_equal(queue_start(q), 0);
    waiter_t w;
    submit_n(q, &w, 500, 2, "example.org", 100, 0);
    free(w.ids);
    queue_acct_rotate(q);
    submit_n(q, &w, 500, 2, "example.org", 100, 0);
    free(w.ids);
    queue_acct_rotate(q);
    queue_stop(q);
    int nfiles = 0;
    assert_int_equal(acct_count("received", &nfiles), 1000); /* no record lost */
    assert_true(nfiles >= 3);

    /* the fields of one record */
    char path[400];
    snprintf(path, sizeof(path), "%s/log/acct.jsonl", tmpdir);
    queue_free(q);
    q = open_q(c);
    assert_int_equal(queue_start(q), 0);
    queue_msg_in_t *m = mkmsg(2, "example.net", 50, 0);
    uint64_t id = m->qm_id;
    waiter_t w1;
    memset(&w1, 0, sizeof(w1));
    assert_int_equal(uv_loop_init(&w1.loop), 0);
    w1.want = 1;
    w1.ch = chan_new(&w1.loop, waiter_cb, &w1);
    m->qm_reply = w1.ch;
    queue_submit(q, m);
    uv_run(&w1.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&w1.loop), 0);
    queue_stop(q);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[4096] = "", last[4096] = "";
    while (fgets(line, sizeof(line), f))
        memcpy(last, line, sizeof(line));
    fclose(f);
    json_object *o = json_tokener_parse(last);
    assert_non_null(o);
    char idbuf[17];
    assert_string_equal(jstr(o, "type"), "received");
    assert_string_equal(jstr(o, "msgid"), queue_msgid_fmt(id, idbuf));
    assert_string_equal(jstr(o, "job"), "job-\"7\"");
    assert_string_equal(jstr(o, "sender"), "sender@example.com");
    assert_int_equal(jint(o, "recipients"), 2);
    assert_string_equal(jstr(o, "client_ip"), "127.0.0.1");
    assert_string_equal(jstr(o, "auth_user"), "alice");
    assert_true(strlen(jstr(o, "time")) == 24 && jstr(o, "time")[23] == 'Z');
    json_object_put(o);
    queue_free(q);
    cfg_unref(c);
}

/* ------------------------------------------------------------ Part B */

/* Test dispatcher: dispatches go to a locked list the test thread drains. */
typedef struct tdisp {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    queue_dispatch_t **items;
    int n, cap;
    int in_flight, max_in_flight, total_dispatched;
} tdisp_t;

static void tdisp_fn(void *arg, queue_dispatch_t *d)
{
    tdisp_t *t = arg;
    pthread_mutex_lock(&t->lock);
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 64;
        t->items = xrealloc(t->items, (size_t)t->cap * sizeof(*t->items));
    }
    t->items[t->n++] = d;
    t->in_flight += d->qd_nrcpt;
    t->total_dispatched += d->qd_nrcpt;
    if (t->in_flight > t->max_in_flight)
        t->max_in_flight = t->in_flight;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
}

/* Next dispatch, waiting up to ms; NULL on timeout. */
static queue_dispatch_t *tdisp_pop(tdisp_t *t, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&t->lock);
    while (t->n == 0)
        if (pthread_cond_timedwait(&t->cond, &t->lock, &ts) != 0)
            break;
    queue_dispatch_t *d = NULL;
    if (t->n > 0) {
        d = t->items[0];
        memmove(t->items, t->items + 1, (size_t)(t->n - 1) * sizeof(*t->items));
        t->n--;
    }
    pthread_mutex_unlock(&t->lock);
    return d;
}

static queue_outcome_t *mkout(uint64_t id, uint32_t idx, queue_result_t r, int code,
                              const char *status, const char *text)
{
    queue_outcome_t *o = xcalloc(1, sizeof(*o));
    o->qo_msgid = id;
    o->qo_idx = idx;
    o->qo_result = r;
    o->qo_code = code;
    snprintf(o->qo_status, sizeof(o->qo_status), "%s", status);
    o->qo_text = xstrdup(text);
    o->qo_mx = xstrdup("mx.example.org");
    snprintf(o->qo_mx_ip, sizeof(o->qo_mx_ip), "127.0.0.2");
    snprintf(o->qo_tls, sizeof(o->qo_tls), "TLSv1.3");
    if (r == Q_OUT_BOUNCED)
        o->qo_category = xstrdup("bad-mailbox");
    return o;
}

/* Answer one dispatch's recipients with r, after marking them done. */
static void answer(queue_t *q, tdisp_t *t, queue_dispatch_t *d, queue_result_t r)
{
    pthread_mutex_lock(&t->lock);
    t->in_flight -= d->qd_nrcpt;
    pthread_mutex_unlock(&t->lock);
    for (int i = 0; i < d->qd_nrcpt; i++) {
        if (r == Q_OUT_DELIVERED)
            queue_outcome_submit(
                q, mkout(d->qd_msgid, d->qd_rcpts[i].qo_idx, r, 250, "2.0.0", "ok queued as X"));
        else if (r == Q_OUT_BOUNCED)
            queue_outcome_submit(q, mkout(d->qd_msgid, d->qd_rcpts[i].qo_idx, r, 550, "5.1.1",
                                          "user unknown\r\nreally"));
        else
            queue_outcome_submit(
                q, mkout(d->qd_msgid, d->qd_rcpts[i].qo_idx, r, 451, "4.3.0", "try later"));
    }
    queue_dispatch_free(d);
}

static void wait_rcpts(queue_t *q, uint64_t want)
{
    for (int i = 0; i < 1000 && atomic_load(&queue_stats(q)->qs_rcpts) != want; i++)
        usleep(10000);
    assert_int_equal(atomic_load(&queue_stats(q)->qs_rcpts), want);
}

static void tdisp_init(tdisp_t *t)
{
    memset(t, 0, sizeof(*t));
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->cond, NULL);
}

static void tdisp_destroy(tdisp_t *t)
{
    for (int i = 0; i < t->n; i++)
        queue_dispatch_free(t->items[i]);
    free(t->items);
    pthread_mutex_destroy(&t->lock);
    pthread_cond_destroy(&t->cond);
}

static void test_deliver_removes(void **state)
{
    (void)state;
    cfg_t *c = mkcfg();
    queue_t *q = open_q(c);
    tdisp_t t;
    tdisp_init(&t);
    queue_set_dispatcher(q, tdisp_fn, &t);
    assert_int_equal(queue_start(q), 0);
    waiter_t w;
    submit_n(q, &w, 50, 2, "Example.ORG", 500, 0);
    int got = 0;
    queue_dispatch_t *d;
    while (got < 100 && (d = tdisp_pop(&t, 3000)) != NULL) {
        assert_string_equal(d->qd_domain, "example.org");
        assert_string_equal(d->qd_sender, "sender@example.com");
        assert_true(d->qd_body_len >= 500);
        assert_non_null(strstr(d->qd_body, "Subject: test\r\n"));
        assert_int_equal(d->qd_rcpts[0].qo_attempts, 0);
        got += d->qd_nrcpt;
        answer(q, &t, d, Q_OUT_DELIVERED);
    }
    assert_int_equal(got, 100);
    wait_rcpts(q, 0);
    assert_int_equal(atomic_load(&queue_stats(q)->qs_msgs), 0);
    assert_check_ok(q, 0, 0);
    queue_stop(q);
    assert_int_equal(acct_count("delivery", NULL), 100);
    assert_int_equal(t.total_dispatched, 100); /* each recipient once */
    queue_free(q);
    tdisp_destroy(&t);
    free(w.ids);
    cfg_unref(c);
}

static void test_defer_schedule(void **state)
{
    (void)state;
    cfg_t *c = mkcfg();
    c->c_retry_n = 2;
    c->c_retry[0] = 600;
    c->c_retry[1] = 3600;
    queue_t *q = open_q(c);
    assert_int_equal(queue_start(q), 0); /* no dispatcher: outcomes by hand */
    waiter_t w;
    submit_n(q, &w, 1, 1, "example.org", 100, 0);
    uint64_t id = w.ids[0];
    uint64_t expect[3] = {600, 3600, 3600}; /* the last value repeats */
    for (int a = 0; a < 3; a++) {
        uint64_t now = clock_now_s();
        queue_outcome_submit(q, mkout(id, 0, Q_OUT_DEFERRED, 451, "4.3.0", "later"));
        json_object *res = NULL;
        for (int i = 0; i < 300; i++) {
            res = request(q, QREQ_INSPECT, id, 0, NULL);
            json_object *r0 =
                json_object_array_get_idx(json_object_object_get(res, "recipients"), 0);
            if (jint(r0, "attempts") == a + 1)
                break;
            json_object_put(res);
            res = NULL;
            usleep(10000);
        }
        assert_non_null(res);
        json_object *r0 = json_object_array_get_idx(json_object_object_get(res, "recipients"), 0);
        uint64_t next = jtime(r0, "next_attempt");
        assert_true(next >= now + expect[a] && next <= clock_now_s() + expect[a]);
        assert_int_equal(jint(r0, "last_code"), 451);
        assert_string_equal(jstr(r0, "last_text"), "later");
        json_object_put(res);
    }
    /* retry_at later than the schedule wins */
    uint64_t later = clock_now_s() + 86400;
    queue_outcome_t *o = mkout(id, 0, Q_OUT_DEFERRED, 421, "4.7.0", "rate limited");
    o->qo_retry_at = later;
    queue_outcome_submit(q, o);
    for (int i = 0; i < 300; i++) {
        json_object *res = request(q, QREQ_INSPECT, id, 0, NULL);
        json_object *r0 = json_object_array_get_idx(json_object_object_get(res, "recipients"), 0);
        int64_t att = jint(r0, "attempts"), next = (int64_t)jtime(r0, "next_attempt");
        json_object_put(res);
        if (att == 4) {
            assert_int_equal(next, (int64_t)later);
            break;
        }
        assert_true(i < 299);
        usleep(10000);
    }
    assert_check_ok(q, 1, 1);
    queue_stop(q);
    assert_int_equal(acct_count("transient", NULL), 4);
    queue_free(q);
    free(w.ids);
    cfg_unref(c);
}

/* Find a MIME part's body by its Content-Type line. */
static const char *part(const char *msg, const char *ctype)
{
    const char *p = strstr(msg, ctype);
    if (p == NULL)
        return NULL;
    p = strstr(p, "\r\n\r\n");
    return p ? p + 4 : NULL;
}

static void test_bounce_expire_dsn(void **state)
{
    (void)state;
    cfg_t *c = mkcfg();
    c->c_max_age = 3600;
    free(c->c_hostname);
    c->c_hostname = xstrdup("mta.test");
    queue_t *q = open_q(c);
    tdisp_t t;
    tdisp_init(&t);
    queue_set_dispatcher(q, tdisp_fn, &t);
    assert_int_equal(queue_start(q), 0);

    /* a message with 3 recipients: 2 bounce (one DSN for both), 1 delivered */
    waiter_t w;
    submit_n(q, &w, 1, 3, "example.org", 200, 0);
    uint64_t id = w.ids[0];
    free(w.ids);
    queue_dispatch_t *d = tdisp_pop(&t, 3000);
    assert_non_null(d);
    assert_int_equal(d->qd_nrcpt, 3);
    pthread_mutex_lock(&t.lock);
    t.in_flight -= 3;
    pthread_mutex_unlock(&t.lock);
    queue_outcome_submit(q, mkout(id, 0, Q_OUT_BOUNCED, 550, "5.1.1", "no such user"));
    queue_outcome_submit(q, mkout(id, 1, Q_OUT_DELIVERED, 250, "2.0.0", "ok"));
    queue_outcome_submit(q, mkout(id, 2, Q_OUT_BOUNCED, 550, "5.1.1", "no such user"));
    queue_dispatch_free(d);

    /* the DSN is a new message from <> to the sender, dispatched like any */
    queue_dispatch_t *dsn = tdisp_pop(&t, 5000);
    assert_non_null(dsn);
    assert_string_equal(dsn->qd_sender, "");
    assert_int_equal(dsn->qd_nrcpt, 1);
    assert_string_equal(dsn->qd_rcpts[0].qo_addr, "sender@example.com");
    assert_string_equal(dsn->qd_domain, "example.com");
    const char *b = dsn->qd_body;
    assert_non_null(strstr(b, "From: Mail Delivery System <MAILER-DAEMON@mta.test>\r\n"));
    assert_non_null(strstr(b, "To: <sender@example.com>\r\n"));
    assert_non_null(strstr(b, "Content-Type: multipart/report; report-type=delivery-status;"));
    const char *ds = part(b, "Content-Type: message/delivery-status");
    assert_non_null(ds);
    assert_true(strncmp(ds, "Reporting-MTA: dns; mta.test\r\n", 30) == 0);
    assert_non_null(strstr(ds, "Arrival-Date: "));
    assert_non_null(strstr(ds, "Final-Recipient: rfc822; rcpt0@example.org\r\n"));
    /* rcpt2 shares it: one DSN per message per delivery round, however
     * the outcomes were batched */
    assert_non_null(strstr(ds, "Final-Recipient: rfc822; rcpt2@example.org\r\n"));
    assert_null(strstr(ds, "rcpt1@example.org")); /* delivered: not reported */
    assert_non_null(strstr(ds, "Action: failed\r\nStatus: 5.1.1\r\n"));
    assert_non_null(strstr(ds, "Remote-MTA: dns; mx.example.org\r\n"));
    assert_non_null(strstr(ds, "Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"));
    assert_non_null(strstr(ds, "Last-Attempt-Date: "));
    const char *hdrs = part(b, "Content-Type: text/rfc822-headers");
    assert_non_null(hdrs);
    assert_true(strncmp(hdrs, "From: sender@example.com\r\n", 26) == 0);
    assert_null(strstr(hdrs, "body line")); /* RET=HDRS default: no body */
    /* every boundary line is the declared one, and the last closes */
    const char *bd = strstr(b, "boundary=\"");
    assert_non_null(bd);
    bd += 10;
    char boundary[128], closing[140];
    snprintf(boundary, sizeof(boundary), "%.*s", (int)(strchr(bd, '"') - bd), bd);
    snprintf(closing, sizeof(closing), "\r\n--%s--\r\n", boundary);
    assert_non_null(strstr(b, closing));
    /* a bounce of the DSN itself makes no second DSN (null sender) */
    pthread_mutex_lock(&t.lock);
    t.in_flight -= 1;
    pthread_mutex_unlock(&t.lock);
    queue_outcome_submit(q, mkout(dsn->qd_msgid, 0, Q_OUT_BOUNCED, 550, "5.1.1", "gone"));
    queue_dispatch_free(dsn);
    wait_rcpts(q, 0);
    assert_null(tdisp_pop(&t, 300));

    /* expiry: arrival older than max_age; a deferral expires it */
    submit_n(q, &w, 1, 1, "example.org", 200, clock_now_s() - 7200);
    free(w.ids);
    d = tdisp_pop(&t, 3000);
    assert_non_null(d);
    answer(q, &t, d, Q_OUT_DEFERRED);
    dsn = tdisp_pop(&t, 5000);
    assert_non_null(dsn);
    ds = part(dsn->qd_body, "Content-Type: message/delivery-status");
    assert_non_null(ds);
    assert_non_null(strstr(ds, "Status: 4.4.7\r\n"));
    assert_non_null(strstr(ds, "Action: failed\r\n"));
    /* the reply as the server gave it, not with the expiry's status */
    assert_non_null(strstr(ds, "Diagnostic-Code: smtp; 451 4.3.0 try later\r\n"));
    answer(q, &t, dsn, Q_OUT_DELIVERED);
    wait_rcpts(q, 0);
    assert_check_ok(q, 0, 0);
    queue_stop(q);
    assert_int_equal(acct_count("bounce", NULL), 2 + 1);
    assert_int_equal(acct_count("expired", NULL), 1);
    assert_int_equal(acct_count("delivery", NULL), 2);
    queue_free(q);
    tdisp_destroy(&t);
    cfg_unref(c);
}

/* Submit one message built by the caller and wait for its commit. */
static void submit_one(queue_t *q, queue_msg_in_t *m)
{
    waiter_t w;
    memset(&w, 0, sizeof(w));
    assert_int_equal(uv_loop_init(&w.loop), 0);
    w.want = 1;
    w.ch = chan_new(&w.loop, waiter_cb, &w);
    m->qm_reply = w.ch;
    queue_submit(q, m);
    uv_run(&w.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&w.loop), 0);
    assert_int_equal(w.ok, 1);
}

/* The last accounting record of type (caller puts), or NULL. */
static json_object *acct_last(const char *type)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/log/acct.jsonl", tmpdir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0;
    json_object *found = NULL;
    while (getline(&line, &cap, f) > 0) {
        json_object *o = json_tokener_parse(line), *v;
        if (o && json_object_object_get_ex(o, "type", &v) &&
            strcmp(json_object_get_string(v), type) == 0) {
            json_object_put(found);
            found = o;
        } else {
            json_object_put(o);
        }
    }
    free(line);
    fclose(f);
    return found;
}

static int count_str(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* Outcomes of one message that come back in many batches, some while
 * others are still out, make one DSN, written when the last comes back
 * (its delivery round ends); its accounting records name the message
 * and the job they report on. */
static void test_dsn_one_per_round(void **state)
{
    (void)state;
    cfg_t *c = mkcfg();
    free(c->c_hostname);
    c->c_hostname = xstrdup("mta.test");
    queue_t *q = open_q(c);
    tdisp_t t;
    tdisp_init(&t);
    queue_set_dispatcher(q, tdisp_fn, &t);
    assert_int_equal(queue_start(q), 0);
    waiter_t w;
    submit_n(q, &w, 1, 40, "example.org", 200, 0);
    uint64_t id = w.ids[0];
    free(w.ids);
    queue_dispatch_t *d = tdisp_pop(&t, 3000);
    assert_non_null(d);
    assert_int_equal(d->qd_nrcpt, 40);
    pthread_mutex_lock(&t.lock);
    t.in_flight -= 40;
    pthread_mutex_unlock(&t.lock);
    /* 30 bounce, 5 are delivered, 5 deferred; one at a time, with pauses
     * so that they land in many outcome batches */
    for (int i = 0; i < 40; i++) {
        queue_result_t r = i < 30 ? Q_OUT_BOUNCED : i < 35 ? Q_OUT_DELIVERED : Q_OUT_DEFERRED;
        queue_outcome_submit(
            q, r == Q_OUT_BOUNCED     ? mkout(id, (uint32_t)i, r, 550, "5.1.1", "no such user")
               : r == Q_OUT_DELIVERED ? mkout(id, (uint32_t)i, r, 250, "2.0.0", "ok")
                                      : mkout(id, (uint32_t)i, r, 451, "4.3.0", "later"));
        if (i % 4 == 0)
            usleep(20000);
        if (i == 20) { /* the round is not over: no DSN yet, but the bounces are
                          applied at once, their records written (a durable mark each) */
            for (int k = 0; k < 300 && acct_count("bounce", NULL) < 21; k++)
                usleep(10000);
            assert_int_equal(acct_count("bounce", NULL), 21);
            assert_null(tdisp_pop(&t, 100));
        }
    }
    queue_dispatch_free(d);
    queue_dispatch_t *dsn = tdisp_pop(&t, 5000);
    assert_non_null(dsn);
    assert_string_equal(dsn->qd_sender, "");
    assert_int_equal(count_str(dsn->qd_body, "Final-Recipient: "), 30);
    assert_int_equal(count_str(dsn->qd_body, "Action: failed\r\n"), 30);
    assert_null(strstr(dsn->qd_body, "rcpt35@"));              /* deferred: not reported */
    assert_non_null(strstr(dsn->qd_body, "Undelivered Mail")); /* the subject */
    assert_int_equal(acct_count("bounce", NULL), 30);
    /* the DSN's own records: linked to what it reports */
    answer(q, &t, dsn, Q_OUT_DELIVERED);
    assert_null(tdisp_pop(&t, 300)); /* one DSN, not one per batch */
    for (int i = 0; i < 200 && acct_count("delivery", NULL) < 6; i++)
        usleep(10000);
    queue_stop(q);
    json_object *o = acct_last("delivery");
    assert_non_null(o);
    json_object *df;
    assert_true(json_object_object_get_ex(o, "dsn_for", &df));
    char idbuf[17];
    assert_string_equal(jstr(df, "msgid"), queue_msgid_fmt(id, idbuf));
    assert_string_equal(jstr(df, "job"), "job-\"7\"");
    assert_string_equal(jstr(o, "sender"), "");
    json_object_put(o);
    queue_free(q);
    tdisp_destroy(&t);
    cfg_unref(c);
}

/* The fields of a DSN: ENVID and ORCPT decoded from xtext (and left
 * encoded when decoding would put a line break in a header), "relayed"
 * for NOTIFY=SUCCESS to a next hop without DSN and nothing when it has
 * DSN, a local failure without "host ... said" nor Remote-MTA, and at
 * expiry the last reply a server gave, not the last local deferral. */
static void test_dsn_fields(void **state)
{
    (void)state;
    cfg_t *c = mkcfg();
    c->c_max_age = 3600;
    free(c->c_hostname);
    c->c_hostname = xstrdup("mta.test");
    queue_t *q = open_q(c);
    tdisp_t t;
    tdisp_init(&t);
    queue_set_dispatcher(q, tdisp_fn, &t);
    assert_int_equal(queue_start(q), 0);

    queue_msg_in_t *m = mkmsg(5, "example.org", 200, 0);
    uint64_t id = m->qm_id;
    m->qm_envid = xstrdup("QQ+2B1+3Dx");
    m->qm_rcpts[0].qr_orcpt = xstrdup("rfc822;a+2Bb@example.org");
    m->qm_rcpts[0].qr_notify = Q_NOTIFY_FAILURE;
    m->qm_rcpts[1].qr_orcpt = xstrdup("rfc822;evil+0D+0AX-Injected:+20yes@example.org");
    m->qm_rcpts[2].qr_notify = Q_NOTIFY_SUCCESS; /* next hop without DSN: relayed */
    m->qm_rcpts[3].qr_notify = Q_NOTIFY_SUCCESS; /* next hop with DSN: its own report */
    m->qm_rcpts[4].qr_notify = Q_NOTIFY_NEVER;   /* bounces silently */
    submit_one(q, m);
    queue_dispatch_t *d = tdisp_pop(&t, 3000);
    assert_non_null(d);
    assert_int_equal(d->qd_nrcpt, 5);
    pthread_mutex_lock(&t.lock);
    t.in_flight -= 5;
    pthread_mutex_unlock(&t.lock);
    queue_outcome_submit(q, mkout(id, 0, Q_OUT_BOUNCED, 550, "5.1.1", "no such user"));
    queue_outcome_t *lo = mkout(id, 1, Q_OUT_BOUNCED, 0, "5.6.7", "SMTPUTF8 required");
    lo->qo_code = 0; /* decided here: no server said it */
    queue_outcome_submit(q, lo);
    queue_outcome_submit(q, mkout(id, 2, Q_OUT_DELIVERED, 250, "2.0.0", "ok"));
    queue_outcome_t *po = mkout(id, 3, Q_OUT_DELIVERED, 250, "2.0.0", "ok");
    po->qo_peer_dsn = true;
    queue_outcome_submit(q, po);
    queue_outcome_submit(q, mkout(id, 4, Q_OUT_BOUNCED, 550, "5.1.1", "no such user"));
    queue_dispatch_free(d);
    queue_dispatch_t *dsn = tdisp_pop(&t, 5000);
    assert_non_null(dsn);
    const char *b = dsn->qd_body;
    const char *ds = part(b, "Content-Type: message/delivery-status");
    assert_non_null(ds);
    assert_true(
        strncmp(ds, "Original-Envelope-Id: QQ+1=x\r\nReporting-MTA: dns; mta.test\r\n", 59) == 0);
    assert_non_null(strstr(ds, "Original-Recipient: rfc822; a+b@example.org\r\n"
                               "Final-Recipient: rfc822; rcpt0@example.org\r\n"));
    /* a CR LF inside would start a header field: kept as sent */
    assert_non_null(strstr(ds, "Original-Recipient: rfc822; "
                               "evil+0D+0AX-Injected:+20yes@example.org\r\n"));
    assert_null(strstr(b, "\r\nX-Injected"));
    /* the local failure: sluice's words, no remote MTA */
    const char *r1 = strstr(ds, "Final-Recipient: rfc822; rcpt1@example.org\r\n");
    assert_non_null(r1);
    const char *r1end = strstr(r1, "\r\n\r\n");
    assert_non_null(r1end);
    assert_non_null(strstr(r1, "Diagnostic-Code: X-Sluice; SMTPUTF8 required\r\n"));
    const char *rm = strstr(r1, "Remote-MTA:");
    assert_true(rm == NULL || rm > r1end);
    assert_non_null(strstr(b, "<rcpt1@example.org>: SMTPUTF8 required\r\n"));
    assert_non_null(strstr(b, "<rcpt0@example.org>: host mx.example.org said: 550 5.1.1 no such "
                              "user\r\n"));
    /* relayed (no DSN at the next hop), and nothing for the one with DSN
     * or with NOTIFY=NEVER */
    assert_non_null(strstr(ds, "Final-Recipient: rfc822; rcpt2@example.org\r\n"
                               "Action: relayed\r\nStatus: 2.0.0\r\n"
                               "Remote-MTA: dns; mx.example.org\r\n"));
    assert_null(strstr(ds, "rcpt3@"));
    assert_null(strstr(ds, "rcpt4@"));
    answer(q, &t, dsn, Q_OUT_DELIVERED);
    assert_null(tdisp_pop(&t, 300));

    /* expiry: a server's 451, then local deferrals, then the deadline */
    queue_msg_in_t *m2 = mkmsg(1, "example.org", 200, clock_now_s() - 3600 + 2);
    uint64_t id2 = m2->qm_id;
    submit_one(q, m2);
    d = tdisp_pop(&t, 3000);
    assert_non_null(d);
    answer(q, &t, d, Q_OUT_DEFERRED); /* 451 4.3.0 try later, from mx.example.org */
    d = tdisp_pop(&t, 6000);          /* at the deadline, one last try */
    assert_non_null(d);
    assert_int_equal(d->qd_msgid, id2);
    pthread_mutex_lock(&t.lock);
    t.in_flight -= 1;
    pthread_mutex_unlock(&t.lock);
    queue_outcome_t *down = mkout(id2, 0, Q_OUT_DEFERRED, 0, "4.4.1", "destination marked down");
    free(down->qo_mx);
    down->qo_mx = NULL;
    queue_outcome_submit(q, down);
    queue_dispatch_free(d);
    dsn = tdisp_pop(&t, 5000);
    assert_non_null(dsn);
    ds = part(dsn->qd_body, "Content-Type: message/delivery-status");
    assert_non_null(ds);
    assert_non_null(strstr(ds, "Action: failed\r\nStatus: 4.4.7\r\n"
                               "Remote-MTA: dns; mx.example.org\r\n"
                               "Diagnostic-Code: smtp; 451 4.3.0 try later\r\n"));
    assert_non_null(strstr(dsn->qd_body, "(last attempt: destination marked down)"));
    answer(q, &t, dsn, Q_OUT_DELIVERED);
    wait_rcpts(q, 0);
    assert_check_ok(q, 0, 0);
    queue_stop(q);
    queue_free(q);
    tdisp_destroy(&t);
    cfg_unref(c);
}

static void test_active_window(void **state)
{
    (void)state;
    cfg_t *c = mkcfg();
    c->c_active_window = 100;
    c->c_active_total = 150;
    queue_t *q = open_q(c);
    tdisp_t t;
    tdisp_init(&t);
    queue_set_dispatcher(q, tdisp_fn, &t);
    waiter_t w;
    assert_int_equal(queue_start(q), 0);
    /* 10,000 recipients for one domain (100 messages x 100) and 50 for another */
    submit_n(q, &w, 100, 100, "big.example", 100, 0);
    free(w.ids);
    submit_n(q, &w, 50, 1, "small.example", 100, 0);
    free(w.ids);
    int done = 0, small = 0;
    queue_dispatch_t *d;
    while (done < 10050 && (d = tdisp_pop(&t, 5000)) != NULL) {
        if (strcmp(d->qd_domain, "small.example") == 0)
            small += d->qd_nrcpt;
        done += d->qd_nrcpt;
        answer(q, &t, d, Q_OUT_DELIVERED);
    }
    assert_int_equal(done, 10050);
    assert_int_equal(small, 50);
    wait_rcpts(q, 0);
    printf("   max in flight %d (window 100, total 150)\n", t.max_in_flight);
    assert_true(t.max_in_flight <= 150);
    assert_true(t.max_in_flight >= 100);
    assert_int_equal(t.total_dispatched, 10050);
    queue_stop(q);
    queue_free(q);
    tdisp_destroy(&t);
    cfg_unref(c);
}

static void test_restart_redispatch(void **state)
{
    (void)state;
    cfg_t *c = mkcfg();
    queue_t *q = open_q(c);
    tdisp_t t;
    tdisp_init(&t);
    queue_set_dispatcher(q, tdisp_fn, &t);
    assert_int_equal(queue_start(q), 0);
    waiter_t w;
    submit_n(q, &w, 5, 1, "example.org", 100, 0);
    free(w.ids);
    int got = 0;
    queue_dispatch_t *d;
    while (got < 5 && (d = tdisp_pop(&t, 3000)) != NULL) {
        got += d->qd_nrcpt;
        queue_dispatch_free(d); /* never answered: lost with the "crash" */
    }
    assert_int_equal(got, 5);
    queue_stop(q);
    queue_free(q);
    tdisp_destroy(&t);
    /* after a restart nothing is in flight: all five are dispatched again */
    tdisp_init(&t);
    q = open_q(c);
    queue_set_dispatcher(q, tdisp_fn, &t);
    assert_int_equal(queue_start(q), 0);
    got = 0;
    while (got < 5 && (d = tdisp_pop(&t, 3000)) != NULL) {
        got += d->qd_nrcpt;
        answer(q, &t, d, Q_OUT_DELIVERED);
    }
    assert_int_equal(got, 5);
    wait_rcpts(q, 0);
    queue_stop(q);
    queue_free(q);
    tdisp_destroy(&t);
    cfg_unref(c);
}

/* queue_submit_batch (HTTP injection): batches larger than a commit
 * transaction, with both sync modes: every message comes back committed,
 * in submission order, each with its "received" record, and the spool
 * has them all after a restart. */
static void test_submit_batch(void **state)
{
    (void)state;
    for (int s = 0; s < 2; s++) {
        cfg_t *c = mkcfg();
        c->c_spool_batch = 7; /* a batch of 25 spans four transactions */
        c->c_spool_sync = s == 0 ? CFG_SYNC_FSYNC : CFG_SYNC_NONE;
        queue_t *q = open_q(c);
        assert_int_equal(queue_start(q), 0);
        enum { NB = 3, BN = 25 };
        uint64_t sent[NB * BN];
        waiter_t w;
        memset(&w, 0, sizeof(w));
        w.ids = xcalloc(NB * BN, sizeof(uint64_t));
        w.want = NB * BN;
        assert_int_equal(uv_loop_init(&w.loop), 0);
        w.ch = chan_new(&w.loop, waiter_cb, &w);
        for (int b = 0; b < NB; b++) {
            queue_msg_in_t *msgs[BN];
            for (int i = 0; i < BN; i++) {
                msgs[i] = mkmsg(2, "example.org", 600, 0);
                msgs[i]->qm_reply = w.ch;
                sent[b * BN + i] = msgs[i]->qm_id;
            }
            queue_submit_batch(q, msgs, BN);
        }
        uv_run(&w.loop, UV_RUN_DEFAULT);
        assert_int_equal(uv_loop_close(&w.loop), 0);
        assert_int_equal(w.ok, NB * BN);
        for (int i = 0; i < NB * BN; i++)
            assert_true(w.ids[i] == sent[i]);
        assert_int_equal(queue_pending(q), 0);
        assert_true(atomic_load(&queue_stats(q)->qs_commits) >= (NB * BN + 6) / 7);
        assert_int_equal(acct_count("received", NULL), (s + 1) * NB * BN);
        queue_stop(q);
        queue_free(q);
        size_t nm = 0, nr = 0;
        assert_int_equal(queue_check_offline(c->c_spool_path, &nm, &nr), 0);
        assert_int_equal(nm, (size_t)(s + 1) * NB * BN);
        assert_int_equal(nr, (size_t)(s + 1) * NB * BN * 2);
        free(w.ids);
        cfg_unref(c);
    }
}

/* ------------------------------------------------------------ benchmark */

static double bench_one(int batch, cfg_sync_t sync, int n, size_t size)
{
    cfg_t *c = mkcfg();
    c->c_spool_batch = batch;
    c->c_spool_sync = sync;
    queue_t *q = open_q(c);
    assert_int_equal(queue_start(q), 0);
    waiter_t w;
    uint64_t t0 = clock_mono_us();
    submit_n(q, &w, n, 1, "example.org", size, 0);
    uint64_t t1 = clock_mono_us();
    assert_int_equal(w.ok, n);
    uint64_t commits = atomic_load(&queue_stats(q)->qs_commits);
    queue_stop(q);
    queue_free(q);
    free(w.ids);
    free(c->c_spool_path);
    c->c_spool_path = NULL;
    cfg_unref(c);
    char p[300];
    snprintf(p, sizeof(p), "%s/spool", tmpdir);
    rm_rf(p);
    double rate = n * 1e6 / (double)(t1 - t0);
    printf("   bench batch=%-4d sync=%-5s size=%-5zu: %6d msgs %5llu commits %8.0f msgs/s\n", batch,
           sync == CFG_SYNC_FSYNC ? "fsync" : "none", size, n, (unsigned long long)commits, rate);
    return rate;
}

static void test_bench_group_commit(void **state)
{
    (void)state;
    double one = bench_one(1, CFG_SYNC_FSYNC, 500, 5000);
    double many = bench_one(1024, CFG_SYNC_FSYNC, 20000, 5000);
    bench_one(1024, CFG_SYNC_NONE, 20000, 5000);
    bench_one(1024, CFG_SYNC_FSYNC, 20000, 200);
    assert_true(many > one); /* group commit must pay off */
}

int main(void)
{
    log_init(LOG_WARN, NULL);
    if (getenv("QUEUE_TEST_FILTER")) /* e.g. "test_map*" */
        cmocka_set_test_filter(getenv("QUEUE_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_msgid),
        cmocka_unit_test_setup_teardown(test_open_errors, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_submit_restart_requests, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_submit_batch, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_map_growth, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_map_full, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_acct_rotation, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_deliver_removes, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_defer_schedule, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_bounce_expire_dsn, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_dsn_one_per_round, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_dsn_fields, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_active_window, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_restart_redispatch, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_bench_group_commit, setup_dir, teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
