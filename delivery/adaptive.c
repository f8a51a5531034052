/*
 * adaptive.c - adaptive mode of the traffic shaping: each queue (provider,
 * virtual MTA) finds the provider's allowance by itself, the way TCP finds
 * a path's capacity (AIMD), instead of limits copied from forums.
 *
 *   - Increase, per interval of ADAPT_INTERVAL_US with deliveries and no
 *     capacity reply: while the rate in force was used (the queue delivered
 *     at least ADAPT_USED of it), the rate doubles until the first rate
 *     reply (slow start), then grows by a_step (additive). While the rate
 *     was not used but every allowed connection was open, one connection
 *     more (doubling until the first "too many connections"; after it, one
 *     per ADAPT_CONN_PROBE_US).
 *   - Decrease, on a capacity reply as the judge classifies it (a shaping
 *     rule with action = capacity, trouble.c -> shp_queue_reply): "rate"
 *     multiplies the rate by ADAPT_BETA (leaving slow start: back to the
 *     last rate that was clean), at most once per ADAPT_HOLD_US (the
 *     replies of one overload are one signal); "connections" sets the cap
 *     to the connections open when the server refused one, minus that one
 *     (a count the server just told, every refusal lowers it further);
 *     "messages_per_connection" sets the per-connection limit to the
 *     messages the connection carried before the refusal.
 *   - Never above the operator's maximum (the queue's message_rate and
 *     max_connections, when set), never below ADAPT_FLOOR_RATE and one
 *     connection. Reputation replies stay backoff rules (providers.c).
 *
 * The learned values are in `sluicectl providers`, in `shaping` records
 * (event "adapt") and in the spool directory's ADAPT_FILE, written
 * atomically after a decrease, with the periodic increase records and at
 * shutdown, and read back at start (the next run starts where this one
 * stopped instead of in slow start).
 *
 * Across nodes (a shared provider with cluster { redis }: docs/cluster.md,
 * "Adaptive mode across nodes"), the learned values are the cluster's:
 * deliveries are counted in Redis (cluster_adapt.c), the node that ends
 * the cluster's interval takes the increase step (shp_adapt_cl_step, the
 * same rule on the cluster's rate and deliveries), a decrease is sent to
 * Redis and comes back to every node (shp_adapt_cl_set). While Redis is
 * down the values stay as they were (no increase; decreases apply here
 * and go to Redis when it is back) and the shared leases hold this node
 * to its share of them.
 *
 * Main functions: shp_adapt_init, shp_adapt_success, shp_adapt_signal,
 * shp_adapt_save / open / close, shp_adapt_cl_get / set / step.
 *
 * Thread: any delivery thread; a queue's learned values are under its
 * q_lock, the hot path (a delivery) is two atomics unless an interval
 * ends; the store's file writes are serialised by its own mutex (never
 * taken with q_lock held: sh_lock -> q_lock, then the file).
 */
#include "delivery/cluster_int.h" /* the cluster's learned values */
#include "delivery/shaping_int.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define ADAPT_INTERVAL_US 1000000ULL    /* one increase step per second with traffic */
#define ADAPT_HOLD_US 1000000ULL        /* one rate decrease per second */
#define ADAPT_CONN_PROBE_US 30000000ULL /* after "too many connections": +1 per 30 s */
#define ADAPT_REC_US 10000000ULL        /* an "adapt" record for increases every 10 s */
#define ADAPT_SAVE_US 1000000ULL        /* the file at most once per second (but at exit) */
#define ADAPT_START_RATE 10.0           /* msgs/s, a queue's first rate */
#define ADAPT_START_CONN 2
#define ADAPT_FLOOR_RATE 1.0     /* msgs/s: never below */
#define ADAPT_CEIL_RATE 100000.0 /* with no operator maximum */
#define ADAPT_CEIL_CONN 10000    /* delivery.max_connections_per_destination applies too */
#define ADAPT_BETA 0.85          /* the multiplicative decrease of the rate */
#define ADAPT_USED 0.8           /* "the rate was used": delivered >= 80% of it */
#define ADAPT_STEP_DIV 40.0      /* additive step: the rate after a decrease / 40 */
#define ADAPT_FILE "adaptive.json"

struct shp_adapt_store {
    char *st_path;                /* dir/adaptive.json */
    json_object *st_saved;        /* what the previous run kept: {"queues": [...]}, read-only */
    _Atomic uint64_t st_saved_at; /* monotonic us of the last write */
    uv_mutex_t st_lock;           /* one writer at a time */
};

static double adapt_max_rate(const shp_queue_t *q)
{
    double r = shp_rate_per_sec(&q->q_lim.l_msg_rate);
    return r > 0 ? r : ADAPT_CEIL_RATE;
}

static int adapt_max_conn(const shp_queue_t *q)
{
    return q->q_lim.l_max_conn > 0 ? q->q_lim.l_max_conn : ADAPT_CEIL_CONN;
}

bool shp_adapt_wanted(const shp_queue_t *q)
{
    if (q->q_lim.l_set & L_ADAPTIVE)
        return q->q_lim.l_adaptive;
    return q->q_pv->pv_sh->sh_adaptive;
}

double shp_adapt_rate(const shp_queue_t *q)
{
    return MIN(q->q_ad.a_rate, adapt_max_rate(q));
}

int shp_adapt_conns(const shp_queue_t *q)
{
    return MIN(q->q_ad.a_conn, adapt_max_conn(q));
}

/* The values a previous run kept for q, if any. */
static json_object *adapt_saved(const shp_queue_t *q)
{
    shp_adapt_store_t *st = q->q_pv->pv_sh->sh_store;
    json_object *arr = st && st->st_saved ? json_object_object_get(st->st_saved, "queues") : NULL;
    size_t n = arr && json_object_is_type(arr, json_type_array) ? json_object_array_length(arr) : 0;
    const char *vm = shp_vmta(q->q_pv->pv_sh, q->q_vmta)->vm_name;
    for (size_t i = 0; i < n; i++) {
        json_object *e = json_object_array_get_idx(arr, i);
        const char *p = json_object_get_string(json_object_object_get(e, "provider"));
        const char *v = json_object_get_string(json_object_object_get(e, "vmta"));
        if (p && v && strcasecmp(p, q->q_pv->pv_name) == 0 && strcasecmp(v, vm) == 0)
            return e;
    }
    return NULL;
}

void shp_adapt_init(shp_queue_t *q, uint64_t now_us)
{
    shp_adapt_t *a = &q->q_ad;
    bool on = shp_adapt_wanted(q);
    if (on && a->a_rate <= 0.0) { /* first time on: slow start, or what was kept */
        a->a_ss = true;
        a->a_rate = MIN(ADAPT_START_RATE, adapt_max_rate(q));
        a->a_clean = a->a_rate;
        a->a_conn = MIN(ADAPT_START_CONN, adapt_max_conn(q));
        a->a_step = 1.0;
        json_object *e = adapt_saved(q);
        double r = e ? json_object_get_double(json_object_object_get(e, "rate")) : 0.0;
        if (r >= ADAPT_FLOOR_RATE) {
            a->a_rate = r;
            a->a_clean = r;
            a->a_step = MAX(1.0, r / ADAPT_STEP_DIV);
            a->a_ss = json_object_get_boolean(json_object_object_get(e, "slow_start"));
            int c = json_object_get_int(json_object_object_get(e, "max_connections"));
            a->a_conn = c >= 1 ? c : a->a_conn;
            a->a_conn_learned = json_object_get_boolean(json_object_object_get(e, "conn_learned"));
            a->a_conn_at = now_us; /* the next probe is a probe period away, as after a signal */
            int m = json_object_get_int(json_object_object_get(e, "max_messages_per_connection"));
            atomic_store(&a->a_msgs, m >= 1 ? m : 0);
            log_info("shaping: provider=%s vmta=%s adaptive: kept values rate=%.3g/s "
                     "max_connections=%d max_messages_per_connection=%d",
                     q->q_pv->pv_name, shp_vmta(q->q_pv->pv_sh, q->q_vmta)->vm_name, a->a_rate,
                     a->a_conn, m);
        }
        atomic_store(&a->a_tick_at, now_us);
        atomic_store(&a->a_count, 0);
    }
    atomic_store(&a->a_on, on);
}

/* "rate 10/s -> 20/s max_connections 2 -> 4" into d. */
static void adapt_detail(char *d, size_t n, double r0, double r1, int c0, int c1, int m0, int m1,
                         const char *why)
{
    size_t k = (size_t)snprintf(d, n, "adaptive:");
    if (r0 != r1 && k < n)
        k += (size_t)snprintf(d + k, n - k, " rate %.4g/s -> %.4g/s", r0, r1);
    if (c0 != c1 && k < n)
        k += (size_t)snprintf(d + k, n - k, " max_connections %d -> %d", c0, c1);
    if (m0 != m1 && k < n)
        k += (size_t)snprintf(d + k, n - k, " max_messages_per_connection %d -> %d", m0, m1);
    if (k < n)
        snprintf(d + k, n - k, " (%s)", why);
}

bool shp_adapt_success(shp_queue_t *q, uint64_t now_us, shp_adapt_change_t *ch)
{
    shp_adapt_t *a = &q->q_ad;
    if (!atomic_load_explicit(&a->a_on, memory_order_relaxed))
        return false;
    if (q->q_cl_adapt != NULL) { /* the cluster's interval, in Redis */
        cl_adapt_count(q->q_cl_adapt,
                       atomic_load_explicit(&q->q_nconn, memory_order_relaxed) >=
                           atomic_load_explicit(&q->q_max_conn, memory_order_relaxed));
        return false;
    }
    atomic_fetch_add_explicit(&a->a_count, 1, memory_order_relaxed);
    uint64_t tick = atomic_load_explicit(&a->a_tick_at, memory_order_relaxed);
    if (now_us - tick < ADAPT_INTERVAL_US ||
        !atomic_compare_exchange_strong(&a->a_tick_at, &tick, now_us))
        return false; /* the interval goes on, or another thread ends it */
    uv_mutex_lock(&q->q_lock);
    uint32_t n = atomic_exchange(&a->a_count, 0);
    double used = (double)n * 1e6 / (double)(now_us - tick);
    double r0 = shp_adapt_rate(q);
    int c0 = shp_adapt_conns(q);
    bool dec = false; /* a decrease in this interval: no increase */
    for (int k = 1; k < 4; k++)
        dec |= a->a_dec_at[k] >= tick;
    if (!a->a_on || dec || atomic_load(&q->q_mode) != SHP_NORMAL) {
        uv_mutex_unlock(&q->q_lock);
        return false;
    }
    if (used >= ADAPT_USED * r0 && r0 < adapt_max_rate(q)) {
        a->a_clean = r0;
        a->a_rate = MIN(adapt_max_rate(q), a->a_ss ? a->a_rate * 2.0 : a->a_rate + a->a_step);
    } else if (used < ADAPT_USED * r0 && atomic_load(&q->q_nconn) >= c0 && c0 < adapt_max_conn(q) &&
               (!a->a_conn_learned || now_us - a->a_conn_at >= ADAPT_CONN_PROBE_US)) {
        /* the rate was not used, every allowed connection was open: the
         * connections are the limit */
        a->a_conn = a->a_conn_learned ? c0 + 1 : MIN(adapt_max_conn(q), c0 * 2);
        a->a_conn_at = now_us;
    }
    double r1 = shp_adapt_rate(q);
    int c1 = shp_adapt_conns(q);
    bool changed = r1 != r0 || c1 != c0;
    ch->ch_record = changed && (now_us - a->a_rec_at >= ADAPT_REC_US || c1 != c0);
    if (ch->ch_record)
        a->a_rec_at = now_us;
    int m = atomic_load(&a->a_msgs);
    uv_mutex_unlock(&q->q_lock);
    if (changed) {
        char why[64];
        snprintf(why, sizeof(why), "%u deliveries, %.4g/s", n, used);
        adapt_detail(ch->ch_detail, sizeof(ch->ch_detail), r0, r1, c0, c1, m, m, why);
    }
    return changed;
}

bool shp_adapt_signal(shp_queue_t *q, shp_capacity_t cap, int conn_msgs, uint64_t now_us,
                      shp_adapt_change_t *ch)
{
    shp_adapt_t *a = &q->q_ad;
    uv_mutex_lock(&q->q_lock);
    a->a_signals++;
    double r0 = shp_adapt_rate(q);
    int c0 = shp_adapt_conns(q), m0 = atomic_load(&a->a_msgs), m1 = m0;
    switch (cap) {
    case SHP_CAP_CONN: {
        /* the server counts our open connections, the refused one with
         * them: it takes one fewer */
        int open = atomic_load(&q->q_nconn);
        int c = MAX(1, MIN(c0, open - 1));
        if (c < c0 || !a->a_conn_learned) {
            a->a_conn = c;
            a->a_conn_at = now_us;
        }
        a->a_conn_learned = true;
        a->a_dec_at[cap] = now_us;
        break;
    }
    case SHP_CAP_MSGS:
        /* the messages the connection carried before the refusal: the
         * refused one is the margin */
        if (conn_msgs >= 1 && (m0 == 0 || conn_msgs < m0)) {
            m1 = conn_msgs;
            atomic_store(&a->a_msgs, m1);
        }
        a->a_dec_at[cap] = now_us;
        break;
    case SHP_CAP_RATE:
        if (now_us - a->a_dec_at[cap] < ADAPT_HOLD_US)
            break; /* the same overload */
        /* leaving slow start the rate in force overshot (it doubled):
         * from the last rate that was clean */
        a->a_rate = MAX(ADAPT_FLOOR_RATE, a->a_ss ? MIN(a->a_clean, r0) : ADAPT_BETA * r0);
        a->a_step = MAX(1.0, a->a_rate / ADAPT_STEP_DIV);
        a->a_ss = false;
        a->a_dec_at[cap] = now_us;
        break;
    default:
        break;
    }
    double r1 = shp_adapt_rate(q);
    int c1 = shp_adapt_conns(q);
    cl_adapt_vals_t v = {.av_rate = a->a_rate,
                         .av_clean = a->a_clean,
                         .av_step = a->a_step,
                         .av_conn = a->a_conn,
                         .av_msgs = m1,
                         .av_ss = a->a_ss,
                         .av_conn_learned = a->a_conn_learned};
    uv_mutex_unlock(&q->q_lock);
    bool changed = r1 != r0 || c1 != c0 || m1 != m0;
    if (changed && q->q_cl_adapt != NULL) /* the cluster learns it, every node applies it */
        cl_adapt_propose(q->q_cl_adapt, &v,
                         cap == SHP_CAP_CONN   ? CL_ADAPT_CONN
                         : cap == SHP_CAP_MSGS ? CL_ADAPT_MSGS
                                               : CL_ADAPT_RATE);
    ch->ch_record = changed;
    if (changed)
        adapt_detail(ch->ch_detail, sizeof(ch->ch_detail), r0, r1, c0, c1, m0, m1,
                     cap == SHP_CAP_CONN   ? "too many connections"
                     : cap == SHP_CAP_MSGS ? "too many messages on a connection"
                                           : "rate");
    return changed;
}

json_object *shp_adapt_json(shp_queue_t *q)
{
    const shp_adapt_t *a = &q->q_ad;
    if (!atomic_load(&a->a_on))
        return NULL;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "rate", json_object_new_double(shp_adapt_rate(q)));
    json_object_object_add(o, "max_connections", json_object_new_int(shp_adapt_conns(q)));
    int m = atomic_load(&a->a_msgs);
    json_object_object_add(o, "max_messages_per_connection", m > 0 ? json_object_new_int(m) : NULL);
    json_object_object_add(o, "slow_start", json_object_new_boolean(a->a_ss));
    json_object_object_add(o, "signals", json_object_new_int64((int64_t)a->a_signals));
    /* the cluster's values (Redis up and answered), not this node's own */
    json_object_object_add(o, "shared", json_object_new_boolean(cl_adapt_shared(q->q_cl_adapt)));
    return o;
}

/* ------------------------------------------------------------ the cluster's values */

void shp_adapt_cl_get(void *arg, cl_adapt_vals_t *v)
{
    shp_queue_t *q = arg;
    shp_adapt_t *a = &q->q_ad;
    uv_mutex_lock(&q->q_lock);
    *v = (cl_adapt_vals_t){.av_rate = a->a_rate,
                           .av_clean = a->a_clean,
                           .av_step = a->a_step,
                           .av_conn = a->a_conn,
                           .av_msgs = atomic_load(&a->a_msgs),
                           .av_ss = a->a_ss,
                           .av_conn_learned = a->a_conn_learned};
    uv_mutex_unlock(&q->q_lock);
}

bool shp_adapt_cl_set(shp_queue_t *q, const cl_adapt_vals_t *v, const char *node, uint64_t now_us,
                      shp_adapt_change_t *ch)
{
    shp_adapt_t *a = &q->q_ad;
    uv_mutex_lock(&q->q_lock);
    if (!a->a_on) { /* a reload turned it off: the configured limits rule */
        uv_mutex_unlock(&q->q_lock);
        return false;
    }
    double r0 = shp_adapt_rate(q);
    int c0 = shp_adapt_conns(q), m0 = atomic_load(&a->a_msgs);
    if (v->av_rate < a->a_rate)
        a->a_dec_at[SHP_CAP_RATE] = now_us; /* one decrease per hold, wherever it came from */
    if (v->av_conn != a->a_conn)
        a->a_conn_at = now_us; /* the next probe a probe period after any change */
    a->a_rate = MAX(ADAPT_FLOOR_RATE, v->av_rate);
    a->a_clean = v->av_clean > 0 ? v->av_clean : a->a_rate;
    a->a_step = MAX(1.0, v->av_step);
    a->a_ss = v->av_ss;
    a->a_conn = MAX(1, v->av_conn);
    a->a_conn_learned = v->av_conn_learned;
    atomic_store(&a->a_msgs, MAX(0, v->av_msgs));
    double r1 = shp_adapt_rate(q);
    int c1 = shp_adapt_conns(q), m1 = atomic_load(&a->a_msgs);
    bool changed = r1 != r0 || c1 != c0 || m1 != m0;
    /* a decrease and what a connection or the limit per connection says
     * are records, as on one node; the cluster's increases every 10 s */
    ch->ch_record =
        changed && (r1 < r0 || c1 != c0 || m1 != m0 || now_us - a->a_rec_at >= ADAPT_REC_US);
    if (ch->ch_record)
        a->a_rec_at = now_us;
    uv_mutex_unlock(&q->q_lock);
    if (changed) {
        char why[160];
        snprintf(why, sizeof(why), "cluster%s%s", node ? ": node " : "", node ? node : "");
        adapt_detail(ch->ch_detail, sizeof(ch->ch_detail), r0, r1, c0, c1, m0, m1, why);
    }
    return changed;
}

bool shp_adapt_cl_step(void *arg, uint32_t n, uint64_t elapsed_us, bool full, cl_adapt_vals_t *v)
{
    shp_queue_t *q = arg;
    shp_adapt_t *a = &q->q_ad;
    uint64_t now_us = clock_mono_us();
    uv_mutex_lock(&q->q_lock);
    if (!a->a_on || atomic_load(&q->q_mode) != SHP_NORMAL) {
        uv_mutex_unlock(&q->q_lock);
        return false;
    }
    /* shp_adapt_success's rule, on the cluster's deliveries and values */
    double used = (double)n * 1e6 / (double)elapsed_us;
    double maxr = adapt_max_rate(q), r0 = MIN(v->av_rate, maxr);
    int maxc = adapt_max_conn(q), c0 = MIN(v->av_conn, maxc);
    bool changed = false;
    if (used >= ADAPT_USED * r0 && r0 < maxr) {
        v->av_clean = r0;
        v->av_rate = MIN(maxr, v->av_ss ? v->av_rate * 2.0 : v->av_rate + v->av_step);
        changed = true;
    } else if (used < ADAPT_USED * r0 && full && c0 < maxc &&
               (!v->av_conn_learned || now_us - a->a_conn_at >= ADAPT_CONN_PROBE_US)) {
        v->av_conn = v->av_conn_learned ? c0 + 1 : MIN(maxc, c0 * 2);
        changed = true;
    }
    uv_mutex_unlock(&q->q_lock);
    return changed;
}

/* ------------------------------------------------------------ the spool file */

void shp_adapt_open(dlv_shaping_t *sh, const char *dir)
{
    if (dir == NULL || dir[0] == '\0')
        return;
    shp_adapt_store_t *st = xcalloc(1, sizeof(*st));
    size_t n = strlen(dir) + sizeof(ADAPT_FILE) + 2;
    st->st_path = xmalloc(n);
    snprintf(st->st_path, n, "%s/%s", dir, ADAPT_FILE);
    uv_mutex_init(&st->st_lock);
    FILE *f = fopen(st->st_path, "r");
    if (f != NULL) {
        char buf[1 << 16];
        json_tokener *tok = json_tokener_new();
        json_object *o = NULL;
        size_t k;
        while (o == NULL && (k = fread(buf, 1, sizeof(buf), f)) > 0) {
            o = json_tokener_parse_ex(tok, buf, (int)k);
            if (o == NULL && json_tokener_get_error(tok) != json_tokener_continue)
                break;
        }
        json_tokener_free(tok);
        fclose(f);
        if (o != NULL && json_object_is_type(json_object_object_get(o, "queues"), json_type_array))
            st->st_saved = o;
        else {
            /* the file is ours; a bad one costs a slow start, nothing else */
            log_warn("shaping: %s: not a file of learned values: ignored (slow start)",
                     st->st_path);
            json_object_put(o);
        }
    } else if (errno != ENOENT) {
        log_warn("shaping: %s: %s: learned values not read", st->st_path, strerror(errno));
    }
    sh->sh_store = st;
}

void shp_adapt_save(dlv_shaping_t *sh, bool force)
{
    shp_adapt_store_t *st = sh->sh_store;
    if (st == NULL)
        return;
    uint64_t now = clock_mono_us(), last = atomic_load(&st->st_saved_at);
    if (!force && last != 0 && now - last < ADAPT_SAVE_US)
        return;
    atomic_store(&st->st_saved_at, now);
    json_object *root = json_object_new_object();
    json_object *arr = json_object_new_array();
    char ts[32];
    json_object_object_add(root, "version", json_object_new_int(1));
    json_object_object_add(
        root, "saved", json_object_new_string(time_fmt_rfc3339(clock_now_us(), ts, sizeof(ts))));
    json_object_object_add(root, "queues", arr);
    uv_mutex_lock(&sh->sh_lock);
    for (size_t i = 0; i < sh->sh_reg_cap; i++) {
        for (shp_provider_t *pv = sh->sh_reg[i]; pv; pv = pv->pv_next) {
            for (int v = 0; v < sh->sh_nvmtas; v++) {
                shp_queue_t *q = &pv->pv_q[v];
                uv_mutex_lock(&q->q_lock);
                if (atomic_load(&q->q_ad.a_on)) {
                    json_object *e = json_object_new_object();
                    json_object_object_add(e, "provider", json_object_new_string(pv->pv_name));
                    json_object_object_add(e, "vmta",
                                           json_object_new_string(shp_vmta(sh, v)->vm_name));
                    json_object_object_add(e, "rate", json_object_new_double(q->q_ad.a_rate));
                    json_object_object_add(e, "max_connections",
                                           json_object_new_int(q->q_ad.a_conn));
                    int m = atomic_load(&q->q_ad.a_msgs);
                    json_object_object_add(e, "max_messages_per_connection",
                                           m > 0 ? json_object_new_int(m) : NULL);
                    json_object_object_add(e, "slow_start", json_object_new_boolean(q->q_ad.a_ss));
                    json_object_object_add(e, "conn_learned",
                                           json_object_new_boolean(q->q_ad.a_conn_learned));
                    json_object_array_add(arr, e);
                }
                uv_mutex_unlock(&q->q_lock);
            }
        }
    }
    uv_mutex_unlock(&sh->sh_lock);
    /* what the previous run kept for queues not seen yet in this one */
    json_object *old = st->st_saved ? json_object_object_get(st->st_saved, "queues") : NULL;
    size_t nnew = json_object_array_length(arr);
    for (size_t i = 0; old && i < json_object_array_length(old); i++) {
        json_object *e = json_object_array_get_idx(old, i);
        const char *p = json_object_get_string(json_object_object_get(e, "provider"));
        const char *v = json_object_get_string(json_object_object_get(e, "vmta"));
        bool seen = false;
        for (size_t k = 0; k < nnew && !seen; k++) {
            json_object *x = json_object_array_get_idx(arr, k);
            seen =
                p && v &&
                strcasecmp(p, json_object_get_string(json_object_object_get(x, "provider"))) == 0 &&
                strcasecmp(v, json_object_get_string(json_object_object_get(x, "vmta"))) == 0;
        }
        if (!seen)
            json_object_array_add(arr, json_object_get(e));
    }
    const char *text = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN);
    size_t n = strlen(st->st_path) + 8;
    char *tmp = xmalloc(n);
    snprintf(tmp, n, "%s.tmp", st->st_path);
    uv_mutex_lock(&st->st_lock);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    size_t len = strlen(text);
    bool ok = fd >= 0 && write(fd, text, len) == (ssize_t)len && write(fd, "\n", 1) == 1 &&
              fsync(fd) == 0;
    if (fd >= 0 && close(fd) != 0)
        ok = false;
    if (ok && rename(tmp, st->st_path) != 0)
        ok = false;
    if (!ok) {
        /* the spool's filesystem: the learned values stay in memory */
        log_warn("shaping: %s: %s: learned values not kept", st->st_path, strerror(errno));
        (void)unlink(tmp);
    }
    uv_mutex_unlock(&st->st_lock);
    free(tmp);
    json_object_put(root);
}

void shp_adapt_close(dlv_shaping_t *sh)
{
    shp_adapt_store_t *st = sh->sh_store;
    if (st == NULL)
        return;
    shp_adapt_save(sh, true);
    sh->sh_store = NULL;
    json_object_put(st->st_saved);
    uv_mutex_destroy(&st->st_lock);
    free(st->st_path);
    free(st);
}
