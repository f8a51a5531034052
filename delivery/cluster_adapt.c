/*
 * delivery/cluster_adapt.c - adaptive mode across nodes: an adaptive queue
 * of a shared provider learns one allowance for the whole cluster
 * (docs/cluster.md, "Adaptive mode across nodes").
 *
 * Redis keeps each queue's learned values in the hash P:adapt:NAME and
 * runs the cluster's interval there: every node adds its deliveries to
 * one count; the node whose count ends the interval (one second) gets the
 * cluster's total and takes the additive step (adaptive.c's rule, on the
 * cluster's rate), written back only if no other change came in between
 * (a version). A decrease one node learns is merged (the lower value wins,
 * a rate decrease at most once per hold for the whole cluster) and
 * published on P:events: every node applies it at once.
 *
 * Main functions: cl_adapt_get / count / propose (delivery threads: a
 * queue's hooks), cl_adapt_tick / reply / msg (the cluster thread: the
 * requests are built here and sent by cluster.c, as cluster_supp.c's).
 *
 * Thread: the list and a queue's pending decreases and last values are
 * under cl_lock; a_busy and a_sent_at are the cluster thread's; the
 * delivery threads touch a_count, a_full and a_shared only.
 */
#include "delivery/cluster_priv.h"

#include <hiredis/hiredis.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#define CL_ADAPT_REPORT_US 250000 /* a node adds its deliveries to the cluster's count */
#define CL_ADAPT_INTERVAL_MS 1000 /* the cluster's increase interval (ADAPT_INTERVAL_US) */
#define CL_ADAPT_HOLD_MS 1000     /* one rate decrease per second, all nodes (ADAPT_HOLD_US) */
#define CL_ADAPT_NARGS 16

/* KEYS[1] P:adapt:NAME; ARGV op (count | inc | dec), node, channel, name,
 * interval ms, hold ms, rate, clean, step, ss, conn, cl, msgs, then count:
 * deliveries, full; inc: -, -, the version the step was made on; dec: the
 * kinds (r, c, m). Seeds the hash with the caller's values when absent.
 * Returns {ended, n, elapsed ms, full, rate, clean, step, ss, conn, cl,
 * msgs, version}. */
const char cl_lua_adapt[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local k = KEYS[1]\n"
    "local op = ARGV[1]\n"
    "if redis.call('EXISTS', k) == 0 then\n"
    "  redis.call('HSET', k, 'rate', ARGV[7], 'clean', ARGV[8], 'step', ARGV[9], 'ss', ARGV[10],\n"
    "             'conn', ARGV[11], 'cl', ARGV[12], 'msgs', ARGV[13], 'ver', '1',\n"
    "             'tick', tostring(now), 'n', '0', 'full', '0', 'dec', '0', 'decr', '0')\n"
    "end\n"
    "local ended, n, el, full = 0, 0, 0, 0\n"
    "local ch = false\n"
    "if op == 'count' then\n"
    "  n = redis.call('HINCRBY', k, 'n', ARGV[14])\n"
    "  if ARGV[15] == '1' then redis.call('HSET', k, 'full', '1') end\n"
    "  local tick = tonumber(redis.call('HGET', k, 'tick'))\n"
    "  if now - tick >= tonumber(ARGV[5]) then\n"
    "    full = tonumber(redis.call('HGET', k, 'full'))\n"
    "    el = now - tick\n"
    "    if tonumber(redis.call('HGET', k, 'dec')) < tick and n > 0 then ended = 1 end\n"
    "    redis.call('HSET', k, 'tick', tostring(now), 'n', '0', 'full', '0')\n"
    "  end\n"
    "elseif op == 'inc' then\n"
    "  if redis.call('HGET', k, 'ver') == ARGV[16] then\n"
    "    redis.call('HSET', k, 'rate', ARGV[7], 'clean', ARGV[8], 'step', ARGV[9],\n"
    "               'ss', ARGV[10], 'conn', ARGV[11], 'cl', ARGV[12])\n"
    "    ch = true\n"
    "  end\n"
    "else\n"
    "  local c = redis.call('HMGET', k, 'rate', 'conn', 'cl', 'msgs', 'decr')\n"
    "  if string.find(ARGV[16], 'r') and tonumber(ARGV[7]) < tonumber(c[1]) and\n"
    "     now - tonumber(c[5]) >= tonumber(ARGV[6]) then\n"
    "    redis.call('HSET', k, 'rate', ARGV[7], 'clean', ARGV[8], 'step', ARGV[9],\n"
    "               'ss', ARGV[10], 'decr', tostring(now))\n"
    "    ch = true\n"
    "  end\n"
    "  if string.find(ARGV[16], 'c') and (tonumber(ARGV[11]) < tonumber(c[2]) or\n"
    "     c[3] == '0') then\n"
    "    redis.call('HSET', k, 'conn', ARGV[11], 'cl', '1')\n"
    "    ch = true\n"
    "  end\n"
    "  local m = tonumber(ARGV[13])\n"
    "  if string.find(ARGV[16], 'm') and m > 0 and (c[4] == '0' or m < tonumber(c[4])) then\n"
    "    redis.call('HSET', k, 'msgs', ARGV[13])\n"
    "    ch = true\n"
    "  end\n"
    "  if ch then redis.call('HSET', k, 'dec', tostring(now)) end\n"
    "end\n"
    "local v = redis.call('HMGET', k, 'rate', 'clean', 'step', 'ss', 'conn', 'cl', 'msgs', 'ver')\n"
    "if ch then\n"
    "  v[8] = tostring(redis.call('HINCRBY', k, 'ver', 1))\n"
    "  redis.call('PUBLISH', ARGV[3], cjson.encode({node = ARGV[2], event = 'adapt',\n"
    "    name = ARGV[4], rate = v[1], clean = v[2], step = v[3], ss = v[4], conn = v[5],\n"
    "    cl = v[6], msgs = v[7], ver = v[8]}))\n"
    "end\n"
    "return {ended, n, el, full, v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]}\n";

cl_adapt_t *cl_adapt_get(dlv_cluster_t *cl, const char *name, cl_lim_t *conn,
                         const cl_adapt_ops_t *ops, void *arg)
{
    if (cl == NULL)
        return NULL;
    uv_mutex_lock(&cl->cl_lock);
    cl_adapt_t *a;
    for (a = cl->cl_adapts; a != NULL; a = a->a_next)
        if (strcmp(a->a_name, name) == 0)
            break;
    if (a == NULL) {
        a = xcalloc(1, sizeof(*a));
        a->a_cl = cl;
        a->a_name = xstrdup(name);
        a->a_key = xasprintf("%s:adapt:%s", cl->cl_prefix, name);
        a->a_next = cl->cl_adapts;
        cl->cl_adapts = a;
    }
    a->a_conn = conn;
    a->a_ops = ops;
    a->a_arg = arg;
    uv_mutex_unlock(&cl->cl_lock);
    uv_async_send(&cl->cl_wake); /* read the cluster's values now */
    return a;
}

bool cl_adapt_shared(const cl_adapt_t *a)
{
    return a != NULL && atomic_load_explicit(&a->a_shared, memory_order_relaxed) &&
           atomic_load_explicit(&a->a_cl->cl_up, memory_order_relaxed);
}

void cl_adapt_count(cl_adapt_t *a, bool full)
{
    atomic_fetch_add_explicit(&a->a_count, 1, memory_order_relaxed);
    if (full)
        atomic_store_explicit(&a->a_full, 1, memory_order_relaxed);
}

void cl_adapt_propose(cl_adapt_t *a, const cl_adapt_vals_t *v, unsigned kinds)
{
    dlv_cluster_t *cl = a->a_cl;
    uv_mutex_lock(&cl->cl_lock);
    /* several before the next tick: the lowest of each */
    if (kinds & CL_ADAPT_RATE) {
        if (!(a->a_dec_want & CL_ADAPT_RATE) || v->av_rate < a->a_dec.av_rate) {
            a->a_dec.av_rate = v->av_rate;
            a->a_dec.av_clean = v->av_clean;
            a->a_dec.av_step = v->av_step;
            a->a_dec.av_ss = v->av_ss;
        }
        a->a_dec_want |= CL_ADAPT_RATE;
    }
    if ((kinds & CL_ADAPT_CONN) &&
        (!(a->a_dec_want & CL_ADAPT_CONN) || v->av_conn < a->a_dec.av_conn)) {
        a->a_dec.av_conn = v->av_conn;
        a->a_dec.av_conn_learned = true;
        a->a_dec_want |= CL_ADAPT_CONN;
    }
    if ((kinds & CL_ADAPT_MSGS) && v->av_msgs > 0 &&
        (!(a->a_dec_want & CL_ADAPT_MSGS) || v->av_msgs < a->a_dec.av_msgs)) {
        a->a_dec.av_msgs = v->av_msgs;
        a->a_dec_want |= CL_ADAPT_MSGS;
    }
    uv_mutex_unlock(&cl->cl_lock);
    uv_async_send(&cl->cl_wake);
}

/* An R_ADAPT call of op for a with values v (the 14th.. arguments: x14,
 * x15, x16). */
static cl_req_t *ca_req(dlv_cluster_t *cl, cl_adapt_t *a, const char *op, const cl_adapt_vals_t *v,
                        char *x14, char *x15, char *x16)
{
    cl_req_t *r = xcalloc(1, sizeof(*r));
    r->r_adapt = a;
    r->r_what = R_ADAPT;
    r->r_script = S_ADAPT;
    r->r_argc = 4 + CL_ADAPT_NARGS;
    r->r_argv = xcalloc((size_t)r->r_argc, sizeof(char *));
    char **g = r->r_argv + 3;
    g[0] = xstrdup(a->a_key);
    g[1] = xstrdup(op);
    g[2] = xstrdup(cl->cl_node);
    g[3] = xasprintf("%s:events", cl->cl_prefix);
    g[4] = xstrdup(a->a_name);
    g[5] = xasprintf("%d", CL_ADAPT_INTERVAL_MS);
    g[6] = xasprintf("%d", CL_ADAPT_HOLD_MS);
    g[7] = xasprintf("%.17g", v->av_rate);
    g[8] = xasprintf("%.17g", v->av_clean);
    g[9] = xasprintf("%.17g", v->av_step);
    g[10] = xstrdup(v->av_ss ? "1" : "0");
    g[11] = xasprintf("%d", v->av_conn);
    g[12] = xstrdup(v->av_conn_learned ? "1" : "0");
    g[13] = xasprintf("%d", v->av_msgs);
    g[14] = x14;
    g[15] = x15;
    g[16] = x16;
    a->a_busy = true;
    return r;
}

cl_req_t *cl_adapt_tick(dlv_cluster_t *cl, uint64_t now)
{
    cl_req_t *head = NULL, **tail = &head;
    uv_mutex_lock(&cl->cl_lock);
    cl_adapt_t *list = cl->cl_adapts; /* the list only grows at its head */
    uv_mutex_unlock(&cl->cl_lock);
    for (cl_adapt_t *a = list; a != NULL; a = a->a_next) {
        if (a->a_ops == NULL)
            continue;
        if (cl->cl_state != CL_UP) {
            /* the last values stay; what was delivered meanwhile is not
             * the cluster's interval */
            atomic_store(&a->a_shared, 0);
            atomic_store(&a->a_count, 0);
            continue;
        }
        if (a->a_busy)
            continue;
        cl_adapt_vals_t v;
        a->a_ops->ao_get(a->a_arg, &v);
        uv_mutex_lock(&cl->cl_lock);
        unsigned want = a->a_dec_want;
        if (want != 0) {
            cl_adapt_vals_t d = a->a_dec;
            a->a_dec_want = 0;
            uv_mutex_unlock(&cl->cl_lock);
            if (want & CL_ADAPT_RATE) {
                v.av_rate = d.av_rate;
                v.av_clean = d.av_clean;
                v.av_step = d.av_step;
                v.av_ss = d.av_ss;
            }
            if (want & CL_ADAPT_CONN)
                v.av_conn = d.av_conn;
            if (want & CL_ADAPT_MSGS)
                v.av_msgs = d.av_msgs;
            *tail =
                ca_req(cl, a, "dec", &v, xstrdup("0"), xstrdup("0"),
                       xasprintf("%s%s%s", want & CL_ADAPT_RATE ? "r" : "",
                                 want & CL_ADAPT_CONN ? "c" : "", want & CL_ADAPT_MSGS ? "m" : ""));
            tail = &(*tail)->r_next;
            continue;
        }
        uv_mutex_unlock(&cl->cl_lock);
        if (a->a_sent_at != 0 && now - a->a_sent_at < CL_ADAPT_REPORT_US)
            continue;
        a->a_sent_at = now;
        uint32_t n = atomic_exchange(&a->a_count, 0);
        bool full = atomic_exchange(&a->a_full, 0) != 0;
        /* the shared cap said no to a connection lately: every allowed
         * connection of the cluster is open */
        if (a->a_conn != NULL && now - atomic_load(&a->a_conn->l_want_us) < CL_ADAPT_REPORT_US * 2)
            full = true;
        *tail =
            ca_req(cl, a, "count", &v, xasprintf("%u", n), xstrdup(full ? "1" : "0"), xstrdup("0"));
        tail = &(*tail)->r_next;
    }
    return head;
}

/* The values of an answer (elements 4..11) or of an event (JSON). */
static bool ca_vals_reply(const redisReply *rp, cl_adapt_vals_t *v, uint64_t *ver)
{
    const char *s[8];
    for (int i = 0; i < 8; i++) {
        const redisReply *e = rp->element[4 + i];
        if (e->type != REDIS_REPLY_STRING)
            return false;
        s[i] = e->str;
    }
    v->av_rate = strtod(s[0], NULL);
    v->av_clean = strtod(s[1], NULL);
    v->av_step = strtod(s[2], NULL);
    v->av_ss = strcmp(s[3], "1") == 0;
    v->av_conn = atoi(s[4]);
    v->av_conn_learned = strcmp(s[5], "1") == 0;
    v->av_msgs = atoi(s[6]);
    *ver = strtoull(s[7], NULL, 10);
    return v->av_rate > 0 && v->av_conn >= 1;
}

/* The cluster's values v (version ver, changed by node or read back) in
 * force for a. */
static void ca_apply(dlv_cluster_t *cl, cl_adapt_t *a, const cl_adapt_vals_t *v, uint64_t ver,
                     const char *node)
{
    uv_mutex_lock(&cl->cl_lock);
    bool same = a->a_known && atomic_load(&a->a_ver) == ver;
    a->a_vals = *v;
    a->a_known = true;
    uv_mutex_unlock(&cl->cl_lock);
    atomic_store(&a->a_ver, ver);
    atomic_store(&a->a_shared, 1);
    if (!same)
        a->a_ops->ao_apply(a->a_arg, v, node);
}

static long long ca_int(const redisReply *e)
{
    return e->type == REDIS_REPLY_INTEGER  ? e->integer
           : e->type == REDIS_REPLY_STRING ? atoll(e->str)
                                           : 0;
}

cl_req_t *cl_adapt_reply(dlv_cluster_t *cl, cl_req_t *r, const redisReply *rp)
{
    cl_adapt_t *a = r->r_adapt;
    a->a_busy = false;
    if (rp == NULL || rp->type != REDIS_REPLY_ARRAY || rp->elements < 12)
        return NULL;
    cl_adapt_vals_t v;
    uint64_t ver;
    if (!ca_vals_reply(rp, &v, &ver))
        return NULL;
    /* a count reads the values back; inc / dec: this node's own change */
    ca_apply(cl, a, &v, ver, strcmp(r->r_argv[4], "count") == 0 ? NULL : cl->cl_node);
    if (ca_int(rp->element[0]) != 1 || cl->cl_state != CL_UP)
        return NULL;
    /* this node ended the cluster's interval: the increase is its */
    uint32_t n = (uint32_t)ca_int(rp->element[1]);
    uint64_t el_us = (uint64_t)ca_int(rp->element[2]) * 1000;
    bool full = ca_int(rp->element[3]) == 1;
    if (el_us == 0 || !a->a_ops->ao_step(a->a_arg, n, el_us, full, &v))
        return NULL;
    return ca_req(cl, a, "inc", &v, xstrdup("0"), xstrdup("0"),
                  xasprintf("%llu", (unsigned long long)ver));
}

bool cl_adapt_msg(dlv_cluster_t *cl, const char *text)
{
    json_object *o = json_tokener_parse(text), *x;
    if (o == NULL)
        return false;
    if (!json_object_object_get_ex(o, "event", &x) ||
        strcmp(json_object_get_string(x), "adapt") != 0) {
        json_object_put(o);
        return false;
    }
    const char *name = json_object_object_get_ex(o, "name", &x) ? json_object_get_string(x) : "";
    const char *node = json_object_object_get_ex(o, "node", &x) ? json_object_get_string(x) : "";
    uv_mutex_lock(&cl->cl_lock);
    cl_adapt_t *a = cl->cl_adapts;
    while (a != NULL && strcmp(a->a_name, name) != 0)
        a = a->a_next;
    uv_mutex_unlock(&cl->cl_lock);
    /* this node's own change comes back in its call's answer */
    if (a != NULL && a->a_ops != NULL && strcmp(node, cl->cl_node) != 0) {
        const char *k[8] = {"rate", "clean", "step", "ss", "conn", "cl", "msgs", "ver"};
        const char *s[8];
        bool ok = true;
        for (int i = 0; i < 8 && ok; i++) {
            ok = json_object_object_get_ex(o, k[i], &x) && x != NULL;
            s[i] = ok ? json_object_get_string(x) : NULL;
        }
        cl_adapt_vals_t v;
        uint64_t ver = ok ? strtoull(s[7], NULL, 10) : 0;
        if (ok && ver > atomic_load(&a->a_ver)) { /* not one older than an answer applied */
            v.av_rate = strtod(s[0], NULL);
            v.av_clean = strtod(s[1], NULL);
            v.av_step = strtod(s[2], NULL);
            v.av_ss = strcmp(s[3], "1") == 0;
            v.av_conn = atoi(s[4]);
            v.av_conn_learned = strcmp(s[5], "1") == 0;
            v.av_msgs = atoi(s[6]);
            if (v.av_rate > 0 && v.av_conn >= 1) {
                ca_apply(cl, a, &v, ver, node);
                atomic_fetch_add(&cl->cl_applied, 1);
            }
        }
    }
    json_object_put(o);
    return true;
}

void cl_adapt_reset(dlv_cluster_t *cl)
{
    uv_mutex_lock(&cl->cl_lock);
    for (cl_adapt_t *a = cl->cl_adapts; a != NULL; a = a->a_next) {
        a->a_sent_at = 0;
        atomic_store(&a->a_shared, 0);
        atomic_store(&a->a_ver, 0); /* Redis may have restarted: its versions too */
    }
    uv_mutex_unlock(&cl->cl_lock);
}

json_object *cl_adapt_json(dlv_cluster_t *cl)
{
    json_object *arr = json_object_new_array();
    for (cl_adapt_t *a = cl->cl_adapts; a != NULL; a = a->a_next) {
        json_object *e = json_object_new_object();
        const cl_adapt_vals_t *v = &a->a_vals;
        json_object_object_add(e, "name", json_object_new_string(a->a_name));
        json_object_object_add(e, "shared", json_object_new_boolean(cl_adapt_shared(a)));
        json_object_object_add(e, "rate", a->a_known ? json_object_new_double(v->av_rate) : NULL);
        json_object_object_add(e, "max_connections",
                               a->a_known ? json_object_new_int(v->av_conn) : NULL);
        json_object_object_add(e, "max_messages_per_connection",
                               a->a_known && v->av_msgs > 0 ? json_object_new_int(v->av_msgs)
                                                            : NULL);
        json_object_object_add(e, "version",
                               json_object_new_int64((int64_t)atomic_load(&a->a_ver)));
        json_object_array_add(arr, e);
    }
    return arr;
}

void cl_adapt_free_all(dlv_cluster_t *cl)
{
    while (cl->cl_adapts != NULL) {
        cl_adapt_t *a = cl->cl_adapts;
        cl->cl_adapts = a->a_next;
        free(a->a_name);
        free(a->a_key);
        free(a);
    }
}
