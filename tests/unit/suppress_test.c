/*
 * tests/unit/suppress_test.c - the suppression list (queue/suppress.c) on a
 * real spool in a mkdtemp directory: normalization, add / lookup / scope /
 * expiry / remove through the queue thread's requests, the CSV import,
 * lookups from other threads while the map grows, and a benchmark (lookup
 * cost with N entries, import of N lines) printed, not asserted:
 * SUPP_BENCH_N=10000000 for the figures of docs/benchmarks.md
 * (bench/run-suppress).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "queue/queue.h"

#include <json-c/json.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char tmpdir[256];

static int setup_dir(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/suppress_test.XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    return 0;
}

static int teardown_dir(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    assert_int_equal(system(cmd), 0);
    return 0;
}

static char **fold_domains, **case_domains; /* for the next start_q: moved into its config */
static bool sent_tenants; /* for the next start_q: bounces.inbound, tenants by header and AUTH */

static queue_t *start_q(uint64_t map_size)
{
    cfg_t *c;
    char err[256];
    assert_int_equal(cfg_default(&c, err, sizeof(err)), 0);
    if (fold_domains != NULL) {
        char **old[] = {c->c_supp_fold_domains, c->c_supp_case_domains};
        for (size_t k = 0; k < 2; k++) { /* the defaults: empty lists */
            for (size_t i = 0; old[k] != NULL && old[k][i] != NULL; i++)
                free(old[k][i]);
            free(old[k]);
        }
        c->c_supp_fold_domains = fold_domains;
        c->c_supp_case_domains = case_domains;
        fold_domains = case_domains = NULL;
    }
    free(c->c_spool_path);
    c->c_spool_path = xasprintf("%s/spool", tmpdir);
    free(c->c_acct_dir);
    c->c_acct_dir = xasprintf("%s/log", tmpdir);
    c->c_spool_map_size = map_size;
    c->c_spool_sync = CFG_SYNC_NONE; /* speed; durability is queue_test's */
    c->c_supp_enabled = true;
    if (sent_tenants) {
        c->c_bounce_inbound = true;
        free(c->c_supp_scope);
        c->c_supp_scope = xstrdup("auth_user");
        free(c->c_supp_scope_header);
        c->c_supp_scope_header = xstrdup("X-Customer");
        sent_tenants = false;
    }
    queue_t *q = NULL;
    if (queue_open(c, &q, err, sizeof(err)) != 0)
        fail_msg("queue_open: %s", err);
    cfg_unref(c);
    assert_int_equal(queue_start(q), 0);
    return q;
}

typedef struct req_waiter {
    uv_loop_t loop;
    chan_t *ch;
} req_waiter_t;

static void req_cb(chan_t *ch, chan_node_t *first, void *arg)
{
    (void)first;
    (void)arg;
    chan_close(ch);
}

/* One QREQ_SUPPRESS, synchronously (sr is freed); the result (caller puts)
 * or NULL with err. */
static json_object *supp(queue_t *q, queue_supp_req_t *sr, char *err)
{
    req_waiter_t rw;
    queue_req_t r;
    memset(&r, 0, sizeof(r));
    assert_int_equal(uv_loop_init(&rw.loop), 0);
    rw.ch = chan_new(&rw.loop, req_cb, &rw);
    r.qq_type = QREQ_SUPPRESS;
    r.qq_supp = sr;
    r.qq_reply = rw.ch;
    queue_request(q, &r);
    uv_run(&rw.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&rw.loop), 0);
    snprintf(err, 256, "%s", r.qq_error);
    queue_supp_req_free(sr);
    return r.qq_result;
}

static queue_supp_req_t *sreq(queue_supp_op_t op, const char *addr, const char *scope,
                              const char *reason, uint64_t expires)
{
    queue_supp_req_t *sr = xcalloc(1, sizeof(*sr));
    sr->sr_op = op;
    if (addr) {
        sr->sr_addrs = xcalloc(1, sizeof(char *));
        sr->sr_addrs[0] = xstrdup(addr);
        sr->sr_naddrs = 1;
    }
    sr->sr_scope = scope ? xstrdup(scope) : NULL;
    sr->sr_reason = reason ? xstrdup(reason) : NULL;
    sr->sr_expires = expires;
    return sr;
}

static int64_t jint(json_object *o, const char *k)
{
    return json_object_get_int64(json_object_object_get(o, k));
}

/* ------------------------------------------------------------ cases */

static void test_normalize(void **state)
{
    (void)state;
    queue_t *q = start_q(16u << 20);
    static const struct {
        const char *in, *out;
    } ok[] = {
        {"User@Example.COM", "user@example.com"},
        {"a.b+tag@gmail.com", "a.b+tag@gmail.com"}, /* no Gmail folding */
        {"x@example.com.", "x@example.com"},
        {"\"q,u\"@d.test", "\"q,u\"@d.test"},
        {"a@b@c.test", "a@b@c.test"}, /* the last '@' splits */
    };
    static const char *bad[] = {"", "noat", "@d.test", "a@", "a b@d.test", "a\x01@d.test"};
    char out[QUEUE_SUPP_ADDR_MAX + 1];
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        assert_int_equal(queue_supp_normalize(q, ok[i].in, out, sizeof(out)), 0);
        assert_string_equal(out, ok[i].out);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(queue_supp_normalize(q, bad[i], out, sizeof(out)), SL_EPARSE);
    char longaddr[400];
    memset(longaddr, 'a', sizeof(longaddr));
    memcpy(longaddr + 390, "@d.test", 8);
    assert_int_equal(queue_supp_normalize(q, longaddr, out, sizeof(out)), SL_EPARSE);
    queue_stop(q);
    queue_free(q);
}

static char **strv2(const char *a, const char *b)
{
    char **v = xcalloc(3, sizeof(*v));
    v[0] = xstrdup(a);
    v[1] = b ? xstrdup(b) : NULL;
    return v;
}

/* suppression.fold_domains / case_domains: the same key at insertion and
 * lookup. */
static void test_normalize_domains(void **state)
{
    (void)state;
    fold_domains = strv2("gmail.com", "googlemail.com");
    case_domains = strv2("case.test", NULL);
    queue_t *q = start_q(16u << 20);
    static const struct {
        const char *in, *out;
    } ok[] = {
        {"John.Doe+news@Gmail.COM", "johndoe@gmail.com"},
        {"j.o.h.n.d.o.e@gmail.com.", "johndoe@gmail.com"},
        {"a+b+c@googlemail.com", "a@googlemail.com"},
        {"a.b+tag@other.test", "a.b+tag@other.test"}, /* not folded elsewhere */
        {"Bob.X@CASE.test", "Bob.X@case.test"},       /* case kept, domain lower-cased */
        {"Bob@other.test", "bob@other.test"},
    };
    static const char *bad[] = {"+tag@gmail.com", "...@gmail.com"};
    char out[QUEUE_SUPP_ADDR_MAX + 1], err[256];
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        assert_int_equal(queue_supp_normalize(q, ok[i].in, out, sizeof(out)), 0);
        assert_string_equal(out, ok[i].out);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(queue_supp_normalize(q, bad[i], out, sizeof(out)), SL_EPARSE);
    json_object *r = supp(q, sreq(QSUPP_ADD, "JohnDoe+x@gmail.com", NULL, "operator", 0), err);
    assert_non_null(r);
    json_object_put(r);
    assert_true(queue_suppressed(q, "john.doe@gmail.com", NULL));
    assert_true(queue_suppressed(q, "J.OHNDOE+other@GMAIL.com", NULL));
    assert_false(queue_suppressed(q, "john.doe@other.test", NULL));
    r = supp(q, sreq(QSUPP_ADD, "Bob@case.test", NULL, "operator", 0), err);
    assert_non_null(r);
    json_object_put(r);
    assert_true(queue_suppressed(q, "Bob@CASE.test", NULL));
    assert_false(queue_suppressed(q, "bob@case.test", NULL));
    queue_stop(q);
    queue_free(q);
}

static void test_add_lookup_scope_expiry(void **state)
{
    (void)state;
    queue_t *q = start_q(16u << 20);
    char err[256];
    assert_false(queue_suppressed(q, "a@x.test", NULL));
    json_object *r = supp(q, sreq(QSUPP_ADD, "A@X.test", NULL, "operator", 0), err);
    assert_non_null(r);
    assert_int_equal(jint(r, "added"), 1);
    json_object_put(r);
    r = supp(q, sreq(QSUPP_ADD, "b@x.test", "t1", "complaint", 0), err);
    json_object_put(r);
    /* expired at once: there, and not in force */
    r = supp(q, sreq(QSUPP_ADD, "c@x.test", NULL, "import", (uint64_t)time(NULL) - 1), err);
    json_object_put(r);

    queue_supp_entry_t e;
    assert_true(queue_suppressed(q, "a@x.TEST", NULL));
    assert_true(queue_suppressed(q, "a@x.test", "t1")); /* the global list applies to all */
    assert_false(queue_suppressed(q, "b@x.test", NULL));
    assert_false(queue_suppressed(q, "b@x.test", "t2"));
    assert_int_equal(queue_supp_lookup(q, "B@x.test", "t1", &e), 1);
    assert_string_equal(e.se_reason, "complaint");
    assert_string_equal(e.se_scope, "t1");
    assert_string_equal(e.se_source, "operator");
    assert_false(queue_suppressed(q, "c@x.test", NULL));
    assert_false(queue_suppressed(q, "not an address", NULL));
    uint64_t entries, hits;
    queue_supp_stats(q, &entries, &hits);
    assert_int_equal(entries, 3);
    assert_int_equal(hits, 3);

    /* a bad reason and a bad address are refused, nothing written */
    assert_null(supp(q, sreq(QSUPP_ADD, "d@x.test", NULL, "Bad Reason", 0), err));
    assert_non_null(strstr(err, "invalid reason"));
    assert_null(supp(q, sreq(QSUPP_ADD, "nope", NULL, "operator", 0), err));
    assert_non_null(strstr(err, "invalid address"));

    /* remove without a scope takes every scope of the address */
    r = supp(q, sreq(QSUPP_ADD, "b@x.test", NULL, "operator", 0), err);
    json_object_put(r);
    r = supp(q, sreq(QSUPP_REMOVE, "b@x.test", NULL, NULL, 0), err);
    assert_int_equal(jint(r, "removed"), 2);
    json_object_put(r);
    assert_false(queue_suppressed(q, "b@x.test", "t1"));
    queue_stop(q);
    queue_free(q);
}

static void test_import_and_list_pages(void **state)
{
    (void)state;
    queue_t *q = start_q(16u << 20);
    char path[300], err[256];
    snprintf(path, sizeof(path), "%s/in.csv", tmpdir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "address,reason,time,scope\n");
    for (int i = 0; i < 25000; i++)
        fprintf(f, "u%05d@d.test,%s,%d,%s\r\n", i, i % 2 ? "bad-mailbox" : "", 1700000000 + i,
                i % 5 == 0 ? "t" : "");
    fprintf(f, "\"unbalanced@d.test\n,,\nx@d.test,UPPER,,\nx@d.test,ok,notatime,\n");
    fclose(f);
    /* two requests: 20,000 lines, then the rest */
    queue_supp_req_t *sr = sreq(QSUPP_IMPORT, NULL, NULL, NULL, 0);
    sr->sr_file = xstrdup(path);
    sr->sr_limit = 20000;
    json_object *r = supp(q, sr, err);
    assert_non_null(r);
    assert_int_equal(jint(r, "imported"), 19999); /* the header is one of the lines */
    assert_false(json_object_get_boolean(json_object_object_get(r, "done")));
    int64_t off = jint(r, "offset");
    json_object_put(r);
    sr = sreq(QSUPP_IMPORT, NULL, NULL, NULL, 0);
    sr->sr_file = xstrdup(path);
    sr->sr_offset = (uint64_t)off;
    r = supp(q, sr, err);
    assert_int_equal(jint(r, "imported"), 5001);
    assert_int_equal(jint(r, "skipped"), 4);
    assert_true(json_object_get_boolean(json_object_object_get(r, "done")));
    assert_int_equal(json_object_array_length(json_object_object_get(r, "errors")), 4);
    json_object_put(r);

    queue_supp_entry_t e;
    assert_int_equal(queue_supp_lookup(q, "u00001@d.test", NULL, &e), 1);
    assert_string_equal(e.se_reason, "bad-mailbox");
    assert_int_equal(e.se_time, 1700000001);
    assert_int_equal(queue_supp_lookup(q, "u00002@d.test", NULL, &e), 1);
    assert_string_equal(e.se_reason, "import");
    assert_int_equal(queue_supp_lookup(q, "u00005@d.test", NULL, &e), 0);
    assert_int_equal(queue_supp_lookup(q, "u00005@d.test", "t", &e), 1);

    /* pages of 10,000 by cursor cover the list once, in order */
    size_t seen = 0, pages = 0;
    char *after = NULL;
    for (;;) {
        sr = sreq(QSUPP_LIST, NULL, NULL, NULL, 0);
        sr->sr_after = after;
        r = supp(q, sr, err);
        assert_non_null(r);
        seen += json_object_array_length(json_object_object_get(r, "entries"));
        pages++;
        json_object *nx = json_object_object_get(r, "next");
        after = nx ? xstrdup(json_object_get_string(nx)) : NULL;
        json_object_put(r);
        if (after == NULL)
            break;
    }
    assert_int_equal(seen, 25000);
    assert_int_equal(pages, 3);
    /* filtered by reason */
    sr = sreq(QSUPP_LIST, NULL, NULL, "bad-mailbox", 0);
    r = supp(q, sr, err);
    assert_int_equal(json_object_array_length(json_object_object_get(r, "entries")), 10000);
    json_object_put(r);

    /* a file the daemon cannot open: a clear error */
    sr = sreq(QSUPP_IMPORT, NULL, NULL, NULL, 0);
    sr->sr_file = xstrdup("/nonexistent/list.csv");
    assert_null(supp(q, sr, err));
    assert_non_null(strstr(err, "cannot open /nonexistent/list.csv"));
    queue_stop(q);
    queue_free(q);
}

/* Lookups from other threads while the queue thread grows the map: the
 * lookups must never read the old map (q_map_lock). */
typedef struct looker {
    queue_t *q;
    atomic_int *stop;
    uint64_t n, hits;
} looker_t;

static void *looker_main(void *arg)
{
    looker_t *l = arg;
    char a[64];
    while (!atomic_load(l->stop)) {
        snprintf(a, sizeof(a), "u%05llu@d.test", (unsigned long long)(l->n % 30000));
        l->hits += queue_suppressed(l->q, a, NULL);
        l->n++;
    }
    return NULL;
}

static void test_lookups_during_map_growth(void **state)
{
    (void)state;
    queue_t *q = start_q(16u << 20);
    char path[300], err[256];
    snprintf(path, sizeof(path), "%s/grow.csv", tmpdir);
    atomic_int stop = 0;
    looker_t l[2] = {{q, &stop, 0, 0}, {q, &stop, 0, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, looker_main, &l[i]), 0);
    uint64_t map0 = atomic_load(&queue_stats(q)->qs_map_size);
    for (int round = 0; round < 4; round++) {
        FILE *f = fopen(path, "w");
        for (int i = 0; i < 30000; i++) /* long addresses: the map fills quickly */
            fprintf(f, "u%05d@d.test,import,,%d-%0100d\n", i, round, i);
        fclose(f);
        queue_supp_req_t *sr = sreq(QSUPP_IMPORT, NULL, NULL, NULL, 0);
        sr->sr_file = xstrdup(path);
        json_object *r = supp(q, sr, err);
        if (r == NULL)
            fail_msg("import: %s", err);
        if (jint(r, "imported") != 30000)
            fail_msg("import: %s", json_object_to_json_string(r));
        json_object_put(r);
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    assert_true(atomic_load(&queue_stats(q)->qs_map_size) > map0);
    assert_true(l[0].n > 0 && l[1].n > 0);
    queue_stop(q);
    queue_free(q);
}

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The figures: import N lines (one request per 200,000), then lookups of
 * present and absent addresses. Printed, not asserted (a shared machine). */
static void sent_back(chan_t *ch, chan_node_t *first, void *arg)
{
    (void)first;
    (void)arg;
    chan_close(ch);
}

/* One message to rcpt with header hdr (may be "") and AUTH user auth (or
 * NULL), committed through the queue thread (so into the sent index): its
 * id. */
static uint64_t sent_submit(queue_t *q, const char *rcpt, const char *hdr, const char *auth)
{
    queue_msg_in_t *m = xcalloc(1, sizeof(*m));
    m->qm_id = queue_msgid_new();
    m->qm_arrival = clock_now_s();
    m->qm_sender = xstrdup("sender@example.com");
    m->qm_auth_user = auth ? xstrdup(auth) : NULL;
    snprintf(m->qm_client_ip, sizeof(m->qm_client_ip), "127.0.0.1");
    m->qm_nrcpt = 1;
    m->qm_rcpts = xcalloc(1, sizeof(queue_rcpt_in_t));
    m->qm_rcpts[0].qr_addr = xstrdup(rcpt);
    buf_init(&m->qm_body, 0);
    buf_printf(&m->qm_body, "Received: from x\r\n\tby y\r\nMessage-ID: <s@t>\r\n%s\r\nHi.\r\n",
               hdr);
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    m->qm_reply = chan_new(&loop, sent_back, NULL);
    queue_submit(q, m);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(m->qm_status, 0);
    uint64_t id = m->qm_id;
    queue_msg_in_free(m);
    return id;
}

/* The sent index keeps each message's suppression scope for the reports
 * that come back (docs/bounces-in.md, "Scope of reports"): the header's
 * tenant (up to its 128-byte bound) over the AUTH user, the AUTH user
 * with scope = auth_user, else global; by id (a VERP token) and with a
 * match by X-Sluice-Id or Message-ID. */
static void test_sent_index_scope(void **state)
{
    (void)state;
    sent_tenants = true;
    queue_t *q = start_q(64ULL << 20);
    char big[QUEUE_SUPP_SCOPE_MAX + 1], hdr[200], scope[QUEUE_SUPP_SCOPE_MAX + 1], hex[17];
    memset(big, 'T', QUEUE_SUPP_SCOPE_MAX);
    big[QUEUE_SUPP_SCOPE_MAX] = '\0';
    snprintf(hdr, sizeof(hdr), "X-Customer:  %s \r\n", big);
    uint64_t m1 = sent_submit(q, "a@x.test", hdr, "alice");
    uint64_t m2 = sent_submit(q, "b@x.test", "X-Other: 1\r\n", "alice");
    uint64_t m3 = sent_submit(q, "c@x.test", "", NULL);

    assert_int_equal(queue_sent_scope(q, m1, scope, sizeof(scope)), 1);
    assert_string_equal(scope, big);
    assert_int_equal(queue_sent_scope(q, m2, scope, sizeof(scope)), 1);
    assert_string_equal(scope, "alice");
    assert_int_equal(queue_sent_scope(q, m3, scope, sizeof(scope)), 1);
    assert_string_equal(scope, "");
    assert_int_equal(queue_sent_scope(q, m3 + 12345, scope, sizeof(scope)), 0);
    assert_string_equal(scope, "");

    uint64_t id = 0;
    uint32_t idx = 9;
    strcpy(scope, "stale");
    assert_int_equal(queue_sent_match(q, queue_msgid_fmt(m2, hex), NULL, "B@X.test", &id, &idx,
                                      scope, sizeof(scope)),
                     1);
    assert_true(id == m2 && idx == 0);
    assert_string_equal(scope, "alice");
    /* the newest of the three with that Message-ID that had a@ */
    assert_int_equal(
        queue_sent_match(q, NULL, "<s@t>", "a@x.test", &id, &idx, scope, sizeof(scope)), 2);
    assert_true(id == m1);
    assert_string_equal(scope, big);
    queue_stop(q);
    queue_free(q);
}

static void test_bench(void **state)
{
    (void)state;
    const char *env = getenv("SUPP_BENCH_N");
    long n = env ? atol(env) : 100000;
    queue_t *q = start_q(n > 1000000 ? (uint64_t)n * 160 : 64u << 20);
    char path[300], err[256];
    snprintf(path, sizeof(path), "%s/bench.csv", tmpdir);
    FILE *f = fopen(path, "w");
    uint64_t x = 88172645463325252ull;
    for (long i = 0; i < n; i++) { /* random order, as a real list comes */
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        fprintf(f, "user%llx@dom%llu.example\n", (unsigned long long)(x & 0xffffffffffull),
                (unsigned long long)((x >> 40) % 5000));
    }
    fclose(f);
    double t0 = now_s(), c0 = cpu_s();
    uint64_t off = 0;
    long imported = 0;
    for (;;) {
        queue_supp_req_t *sr = sreq(QSUPP_IMPORT, NULL, NULL, NULL, 0);
        sr->sr_file = xstrdup(path);
        sr->sr_offset = off;
        json_object *r = supp(q, sr, err);
        assert_non_null(r);
        imported += (long)jint(r, "imported");
        off = (uint64_t)jint(r, "offset");
        bool done = json_object_get_boolean(json_object_object_get(r, "done"));
        json_object_put(r);
        if (done)
            break;
    }
    double t_imp = now_s() - t0, c_imp = cpu_s() - c0;
    /* lookups: the same generator again (hits), then a shifted one (misses) */
    long m = n < 1000000 ? n : 1000000;
    char a[96];
    x = 88172645463325252ull;
    long hits = 0;
    t0 = now_s();
    for (long i = 0; i < m; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        snprintf(a, sizeof(a), "user%llx@dom%llu.example",
                 (unsigned long long)(x & 0xffffffffffull), (unsigned long long)((x >> 40) % 5000));
        hits += queue_suppressed(q, a, NULL);
    }
    double t_hit = now_s() - t0;
    t0 = now_s();
    c0 = cpu_s();
    for (long i = 0; i < m; i++) {
        snprintf(a, sizeof(a), "nobody%ld@dom%ld.example", i, i % 5000);
        hits -= queue_suppressed(q, a, "tenant");
    }
    double t_miss = now_s() - t0, c_miss = cpu_s() - c0;
    fprintf(stderr,
            "suppression bench: %ld entries imported in %.2f s wall, %.2f s CPU (%.0f/s); "
            "lookup %.2f us (present, global), %.2f us wall / %.2f us CPU (absent, global + "
            "scope), over %ld each\n",
            imported, t_imp, c_imp, imported / t_imp, t_hit * 1e6 / (double)m,
            t_miss * 1e6 / (double)m, c_miss * 1e6 / (double)m, m);
    assert_int_equal(hits, m); /* every present one found, no absent one */
    queue_stop(q);
    queue_free(q);
}

int main(void)
{
    log_init(LOG_WARN, NULL);
    if (getenv("SUPP_BENCH_N")) /* bench/run-suppress: the figures only */
        cmocka_set_test_filter("test_bench");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_normalize, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_normalize_domains, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_add_lookup_scope_expiry, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_import_and_list_pages, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_lookups_during_map_growth, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_sent_index_scope, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_bench, setup_dir, teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
