/*
 * delivery/cluster.c - several nodes, one set of limits: shared rates,
 * connection caps, backoff and suspensions through Redis (hiredis on a
 * libuv loop of its own). docs/cluster.md describes the behaviour.
 *
 * Main functions: dlv_cluster_new/start/stop/free (main thread),
 * cl_rate_take / cl_conn_take and their give-backs (delivery threads: a
 * few atomics, never Redis), cl_publish (any thread), cl_json.
 *
 * Thread: the cluster thread owns both redisAsyncContexts, the leases'
 * refill state and the node list; delivery threads touch only the atomics
 * of a cl_lim_t and wake the loop with cl_wake. cl_lock guards the list of
 * limits, the outgoing events and the JSON cache.
 *
 * Keys (prefix = cluster.prefix): P:rate:NAME (a GCRA theoretical arrival
 * time, us), P:conn:NAME (ZSET of slot leases, score = expiry ms),
 * P:nodes (ZSET node -> heartbeat expiry ms), P:state (HASH "provider/vmta"
 * -> the last event as JSON), channel P:events. Times come from Redis'
 * TIME, so the nodes' clocks do not matter.
 */
#include "delivery/cluster_priv.h"

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <json-c/json.h>
#include <openssl/sha.h>
#include <stdarg.h>

#define CL_TICK_MS 50           /* refill / return / renew / timeouts */
#define CL_HEARTBEAT_US 1000000 /* node heartbeat (nodes seen, the shared state) */
#define CL_NODE_TTL_MS 3000     /* a node not heard from for this long is gone */
#define CL_IDLE_US 1000000      /* a lease unused this long is given back */
#define CL_RETRY_MIN_US 250000  /* reconnect backoff: 250 ms doubling ... */
#define CL_RETRY_MAX_US 2000000 /* ... up to 2 s */

/* GCRA lease: KEYS[1] the TAT (us); ARGV interval (us), tolerance (us),
 * n: > 0 take up to n tokens, < 0 give -n back. Returns the tokens taken. */
static const char cl_lua_rate[] = "local t = redis.call('TIME')\n"
                                  "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
                                  "local iv = tonumber(ARGV[1])\n"
                                  "local n = tonumber(ARGV[3])\n"
                                  "local tat = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
                                  "if tat < now then tat = now end\n"
                                  "local k = n\n"
                                  "if n > 0 then\n"
                                  "  k = math.floor((now + tonumber(ARGV[2]) - tat) / iv)\n"
                                  "  if k > n then k = n end\n"
                                  "  if k < 0 then k = 0 end\n"
                                  "end\n"
                                  "tat = tat + k * iv\n"
                                  "if tat < now then tat = now end\n"
                                  "redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX',\n"
                                  "           math.floor((tat - now) / 1000) + 60000)\n"
                                  "return k\n";

/* Connection slots: KEYS[1] the ZSET; ARGV op (take | renew | free), ttl
 * (ms), cap, members. take: 1 when a slot was free; renew: the count. */
static const char cl_lua_conn[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local ttl = tonumber(ARGV[2])\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
    "local r = 0\n"
    "if ARGV[1] == 'take' then\n"
    "  if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then\n"
    "    redis.call('ZADD', KEYS[1], now + ttl, ARGV[4])\n"
    "    r = 1\n"
    "  end\n"
    "elseif ARGV[1] == 'renew' then\n"
    "  for i = 4, #ARGV do redis.call('ZADD', KEYS[1], now + ttl, ARGV[i]) end\n"
    "  r = redis.call('ZCARD', KEYS[1])\n"
    "else\n"
    "  for i = 4, #ARGV do redis.call('ZREM', KEYS[1], ARGV[i]) end\n"
    "end\n"
    "redis.call('PEXPIRE', KEYS[1], ttl * 2)\n"
    "return r\n";

/* Heartbeat: KEYS[1] P:nodes, KEYS[2] P:state; ARGV node, ttl ms, '1' =
 * leave. Returns {nodes with scores, the state hash, now ms}. */
static const char cl_lua_nodes[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "if ARGV[3] == '1' then redis.call('ZREM', KEYS[1], ARGV[1]) return {} end\n"
    "redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
    "return {redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES'),\n"
    "        redis.call('HGETALL', KEYS[2]), tostring(now)}\n";
static const char *const cl_scripts[S_N] = {cl_lua_rate, cl_lua_conn, cl_lua_nodes, cl_lua_adapt};

static void cl_thread_main(void *arg);
static void cl_send(dlv_cluster_t *cl, cl_req_t *r);
static void cl_tick_cb(uv_timer_t *h);
static void cl_wake_cb(uv_async_t *h);
static void cl_stop_cb(uv_async_t *h);
static void cl_connect(dlv_cluster_t *cl);
static void cl_go_down(dlv_cluster_t *cl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void cl_reply_cb(redisAsyncContext *ac, void *reply, void *priv);
static void cl_sub_cb(redisAsyncContext *ac, void *reply, void *priv);
static void cl_apply_json(dlv_cluster_t *cl, const char *text, bool own_too);
static void cl_lim_tick(dlv_cluster_t *cl, cl_lim_t *l, uint64_t now);
static void cl_close_tick(dlv_cluster_t *cl);
static void cl_conn_tick(dlv_cluster_t *cl, cl_lim_t *l, uint64_t now);

/* ------------------------------------------------------------ life cycle */

int dlv_cluster_new(const cfg_t *cfg, dlv_shaping_t *sh, cl_apply_fn apply, dlv_cluster_t **out,
                    char *err, size_t errlen)
{
    *out = NULL;
    if (cfg->c_cl_redis == NULL || cfg->c_cl_redis[0] == '\0')
        return 0;
    dlv_cluster_t *cl = xcalloc(1, sizeof(*cl));
    cl->cl_sh = sh;
    cl->cl_apply = apply;
    cl->cl_addr = xstrdup(cfg->c_cl_redis);
    if (strncmp(cl->cl_addr, "unix:", 5) == 0) {
        cl->cl_host = xstrdup(cl->cl_addr + 5);
        cl->cl_port = -1;
    } else {
        /* redis://[[user:]password@]ip:port, checked by the config loader */
        const char *hp = cfg->c_cl_redis + 8, *at = strrchr(hp, '@');
        if (at != NULL) {
            const char *colon = memchr(hp, ':', (size_t)(at - hp));
            const char *pw = colon ? colon + 1 : hp;
            if (colon != NULL && colon > hp)
                cl->cl_user = xstrndup(hp, (size_t)(colon - hp));
            cl->cl_pass = xstrndup(pw, (size_t)(at - pw));
            hp = at + 1;
            free(cl->cl_addr); /* never log or show the password */
            cl->cl_addr = xasprintf("redis://%s%s***@%s", cl->cl_user ? cl->cl_user : "",
                                    cl->cl_user ? ":" : "", hp);
        }
        const char *colon = strrchr(hp, ':');
        const char *h = hp, *he = colon ? colon : hp + strlen(hp);
        if (*h == '[') {
            h++;
            if (he > h && he[-1] == ']')
                he--;
        }
        cl->cl_host = xcalloc(1, (size_t)(he - h) + 1);
        memcpy(cl->cl_host, h, (size_t)(he - h));
        cl->cl_port = colon ? atoi(colon + 1) : 6379;
    }
    const char *node = cfg->c_cl_node && cfg->c_cl_node[0] ? cfg->c_cl_node : cfg->c_hostname;
    cl->cl_node = xstrdup(node && node[0] ? node : "sluice");
    cl->cl_prefix = xstrdup(cfg->c_cl_prefix);
    cl->cl_ttl_ms = cfg->c_cl_lease_ttl_ms;
    cl->cl_timeout_us = cfg->c_cl_timeout_ms * 1000;
    for (int i = 0; i < S_N; i++) {
        unsigned char md[SHA_DIGEST_LENGTH];
        SHA1((const unsigned char *)cl_scripts[i], strlen(cl_scripts[i]), md);
        for (int k = 0; k < SHA_DIGEST_LENGTH; k++)
            snprintf(cl->cl_sha[i] + 2 * k, 3, "%02x", md[k]);
    }
    if (uv_loop_init(&cl->cl_loop) != 0) {
        snprintf(err, errlen, "cluster: uv_loop_init failed");
        goto fail;
    }
    uv_timer_init(&cl->cl_loop, &cl->cl_tick);
    cl->cl_tick.data = cl;
    uv_async_init(&cl->cl_loop, &cl->cl_wake, cl_wake_cb);
    cl->cl_wake.data = cl;
    uv_async_init(&cl->cl_loop, &cl->cl_stop, cl_stop_cb);
    cl->cl_stop.data = cl;
    uv_mutex_init(&cl->cl_lock);
    cl->cl_fly_tail = &cl->cl_fly;
    atomic_init(&cl->cl_nnodes, 1);
    atomic_init(&cl->cl_since_us, clock_now_us());
    snprintf(cl->cl_why, sizeof(cl->cl_why), "not connected yet");
    cl->cl_first = true;
    *out = cl;
    return 0;
fail:
    free(cl->cl_addr);
    free(cl->cl_host);
    free(cl->cl_node);
    free(cl->cl_prefix);
    free(cl);
    return SL_ECONFIG;
}

int dlv_cluster_start(dlv_cluster_t *cl)
{
    if (cl == NULL)
        return 0;
    int rc = uv_thread_create(&cl->cl_tid, cl_thread_main, cl);
    if (rc == 0)
        cl->cl_started = true;
    return rc;
}

void dlv_cluster_stop(dlv_cluster_t *cl)
{
    if (cl == NULL || !cl->cl_started)
        return;
    uv_async_send(&cl->cl_stop);
    uv_thread_join(&cl->cl_tid);
    cl->cl_started = false;
}

void dlv_cluster_free(dlv_cluster_t *cl)
{
    if (cl == NULL)
        return;
    dlv_cluster_stop(cl);
    if (!cl->cl_stopping) { /* never started: close the handles here */
        uv_close((uv_handle_t *)&cl->cl_tick, NULL);
        uv_close((uv_handle_t *)&cl->cl_wake, NULL);
        uv_close((uv_handle_t *)&cl->cl_stop, NULL);
        uv_run(&cl->cl_loop, UV_RUN_DEFAULT);
    }
    if (uv_loop_close(&cl->cl_loop) != 0)
        log_error("cluster: loop not closed cleanly");
    while (cl->cl_lims != NULL) {
        cl_lim_t *l = cl->cl_lims;
        cl->cl_lims = l->l_next;
        free(l->l_name);
        free(l->l_key);
        free(l->l_ids);
        free(l);
    }
    for (int i = 0; i < cl->cl_nout; i++)
        free(cl->cl_out[i]);
    for (int i = 0; i < cl->cl_nsout; i++)
        free(cl->cl_sout[i]);
    free(cl->cl_sout);
    cl_adapt_free_all(cl);
    cl_sync_reset(cl);
    json_object_put(cl->cl_nodes_json);
    json_object_put(cl->cl_state_json);
    uv_mutex_destroy(&cl->cl_lock);
    free(cl->cl_addr);
    free(cl->cl_host);
    free(cl->cl_user);
    free(cl->cl_pass);
    free(cl->cl_node);
    free(cl->cl_prefix);
    free(cl);
}

static void cl_thread_main(void *arg)
{
    dlv_cluster_t *cl = arg;
    log_thread_name("cluster");
    log_info("cluster: node %s, redis %s, prefix %s, lease ttl %llums", cl->cl_node, cl->cl_addr,
             cl->cl_prefix, (unsigned long long)cl->cl_ttl_ms);
    cl_connect(cl);
    uv_timer_start(&cl->cl_tick, cl_tick_cb, CL_TICK_MS, CL_TICK_MS);
    uv_run(&cl->cl_loop, UV_RUN_DEFAULT);
}

static void cl_close_tick(dlv_cluster_t *cl)
{
    if (!uv_is_closing((uv_handle_t *)&cl->cl_tick))
        uv_close((uv_handle_t *)&cl->cl_tick, NULL);
}

/* The last leave: slots and the node's entry given back, then the
 * connections closed once their replies are in (or cut after a timeout). */
static void cl_leave_timeout_cb(uv_timer_t *h)
{
    dlv_cluster_t *cl = h->data;
    if (cl->cl_ac != NULL) {
        redisAsyncContext *ac = cl->cl_ac;
        cl->cl_ac = NULL;
        redisAsyncFree(ac);
    }
    cl_close_tick(cl);
}

static void cl_stop_cb(uv_async_t *h)
{
    dlv_cluster_t *cl = h->data;
    cl->cl_stopping = true;
    uv_timer_stop(&cl->cl_tick);
    if (cl->cl_sub != NULL) {
        redisAsyncContext *s = cl->cl_sub;
        cl->cl_sub = NULL;
        redisAsyncFree(s);
    }
    if (cl->cl_ac != NULL && cl->cl_state == CL_UP) {
        /* give the slots back now rather than at their TTL */
        for (cl_lim_t *l = cl->cl_lims; l != NULL; l = l->l_next) {
            if (l->l_kind != CL_CONN || l->l_held == 0)
                continue;
            cl_req_t *r = xcalloc(1, sizeof(*r));
            r->r_what = R_CONN_OTHER;
            r->r_script = S_CONN;
            r->r_argc = 7 + l->l_held;
            r->r_argv = xcalloc((size_t)r->r_argc, sizeof(char *));
            r->r_argv[3] = xstrdup(l->l_key);
            r->r_argv[4] = xstrdup("free");
            r->r_argv[5] = xstrdup("0");
            r->r_argv[6] = xstrdup("0");
            for (int i = 0; i < l->l_held; i++) {
                char m[200];
                snprintf(m, sizeof(m), "%s:%llu", cl->cl_node, (unsigned long long)l->l_ids[i]);
                r->r_argv[7 + i] = xstrdup(m);
            }
            cl_send(cl, r);
        }
        char k1[256], k2[256];
        snprintf(k1, sizeof(k1), "%s:nodes", cl->cl_prefix);
        snprintf(k2, sizeof(k2), "%s:state", cl->cl_prefix);
        cl_req_t *r = xcalloc(1, sizeof(*r));
        r->r_what = R_CONN_OTHER;
        r->r_script = S_NODES;
        r->r_argc = 8;
        r->r_argv = xcalloc(8, sizeof(char *));
        r->r_argv[3] = xstrdup(k1);
        r->r_argv[4] = xstrdup(k2);
        r->r_argv[5] = xstrdup(cl->cl_node);
        r->r_argv[6] = xstrdup("0");
        r->r_argv[7] = xstrdup("1");
        cl_send(cl, r);
        /* replies first, then the close (hiredis waits for them) */
        redisAsyncDisconnect(cl->cl_ac);
    } else if (cl->cl_ac != NULL) {
        redisAsyncContext *ac = cl->cl_ac;
        cl->cl_ac = NULL;
        redisAsyncFree(ac);
    }
    /* a guard on the graceful close: the tick handle is reused as it */
    if (cl->cl_ac != NULL)
        uv_timer_start(&cl->cl_tick, cl_leave_timeout_cb, MAX(1, cl->cl_timeout_us / 1000) * 2, 0);
    else
        cl_close_tick(cl);
    uv_close((uv_handle_t *)&cl->cl_wake, NULL);
    uv_close((uv_handle_t *)&cl->cl_stop, NULL);
}

/* ------------------------------------------------------------ connection */

static void cl_disconnect_cb(const redisAsyncContext *ac, int status)
{
    dlv_cluster_t *cl = ac->data;
    (void)status;
    /* hiredis frees the context after this: forget it */
    if (ac == cl->cl_ac)
        cl->cl_ac = NULL;
    if (ac == cl->cl_sub)
        cl->cl_sub = NULL;
    if (cl->cl_stopping) {
        if (cl->cl_ac == NULL)
            cl_close_tick(cl);
        return;
    }
    cl->cl_broken = true;
}

static void cl_connect_cb(const redisAsyncContext *ac, int status)
{
    dlv_cluster_t *cl = ac->data;
    if (status != REDIS_OK) {
        /* hiredis frees a context that failed to connect */
        if (ac == cl->cl_ac)
            cl->cl_ac = NULL;
        if (ac == cl->cl_sub)
            cl->cl_sub = NULL;
        if (!cl->cl_stopping) {
            cl->cl_broken = true;
            uv_mutex_lock(&cl->cl_lock);
            snprintf(cl->cl_why, sizeof(cl->cl_why), "connect: %s", ac->errstr);
            uv_mutex_unlock(&cl->cl_lock);
        }
    }
}

/* The AUTH answer: a refusal (wrong password, no such ACL user) is a
 * connection that failed, with the server's reason in cl_why (`sluicectl
 * status`, the log line of the outage). */
static void cl_auth_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    dlv_cluster_t *cl = ac->data;
    redisReply *rp = reply;
    (void)priv;
    if (rp == NULL || rp->type != REDIS_REPLY_ERROR || cl->cl_stopping || cl->cl_auth_failed)
        return;
    cl->cl_auth_failed = true;
    cl->cl_broken = true;
    uv_mutex_lock(&cl->cl_lock);
    snprintf(cl->cl_why, sizeof(cl->cl_why), "auth: %s", rp->str);
    uv_mutex_unlock(&cl->cl_lock);
}

static redisAsyncContext *cl_open(dlv_cluster_t *cl)
{
    redisAsyncContext *ac = cl->cl_port < 0 ? redisAsyncConnectUnix(cl->cl_host)
                                            : redisAsyncConnect(cl->cl_host, cl->cl_port);
    if (ac == NULL)
        return NULL;
    if (ac->err) {
        uv_mutex_lock(&cl->cl_lock);
        snprintf(cl->cl_why, sizeof(cl->cl_why), "connect: %s", ac->errstr);
        uv_mutex_unlock(&cl->cl_lock);
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = cl;
    if (redisLibuvAttach(ac, &cl->cl_loop) != REDIS_OK) {
        redisAsyncFree(ac);
        return NULL;
    }
    redisAsyncSetConnectCallback(ac, cl_connect_cb);
    redisAsyncSetDisconnectCallback(ac, cl_disconnect_cb);
    /* the first command: the others queued behind it run authenticated */
    if (cl->cl_pass != NULL && cl->cl_user != NULL)
        redisAsyncCommand(ac, cl_auth_cb, NULL, "AUTH %s %s", cl->cl_user, cl->cl_pass);
    else if (cl->cl_pass != NULL)
        redisAsyncCommand(ac, cl_auth_cb, NULL, "AUTH %s", cl->cl_pass);
    return ac;
}

static void cl_connect(dlv_cluster_t *cl)
{
    cl->cl_broken = false;
    cl->cl_auth_failed = false;
    cl->cl_ac = cl_open(cl);
    cl->cl_sub = cl->cl_ac ? cl_open(cl) : NULL;
    if (cl->cl_ac == NULL || cl->cl_sub == NULL) {
        cl->cl_broken = true;
        return;
    }
    cl->cl_state = CL_CONNECTING;
    cl->cl_subscribed = false;
    cl_sync_reset(cl);
    cl->cl_sync_want = true; /* entries written while this node was away */
    cl_adapt_reset(cl);      /* adaptive mode: the cluster's values first */
    char ch[256], sch[256];
    snprintf(ch, sizeof(ch), "%s:events", cl->cl_prefix);
    snprintf(sch, sizeof(sch), "%s:supp", cl->cl_prefix);
    redisAsyncCommand(cl->cl_sub, cl_sub_cb, NULL, "SUBSCRIBE %s %s", ch, sch);
    cl->cl_resync = true;
    cl->cl_beat_at = 0; /* the heartbeat now: it says whether Redis answers */
}

/* Tear both connections down and look again later (backoff). Logged once
 * per outage. */
static void cl_go_down(dlv_cluster_t *cl, const char *fmt, ...)
{
    char why[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    redisAsyncContext *ac = cl->cl_ac, *sub = cl->cl_sub;
    cl->cl_ac = cl->cl_sub = NULL;
    if (ac != NULL)
        redisAsyncFree(ac); /* pending callbacks run with no reply */
    if (sub != NULL)
        redisAsyncFree(sub);
    cl_sync_reset(cl);
    cl->cl_broken = false;
    if (atomic_exchange(&cl->cl_up, 0) == 1) {
        atomic_store(&cl->cl_since_us, clock_now_us());
        atomic_fetch_add(&cl->cl_downs, 1);
        log_warn("cluster: redis %s down (%s): local limits = shared limit / %d node(s) until it "
                 "returns",
                 cl->cl_addr, why, atomic_load(&cl->cl_nnodes));
        uv_mutex_lock(&cl->cl_lock);
        snprintf(cl->cl_why, sizeof(cl->cl_why), "%s", why);
        uv_mutex_unlock(&cl->cl_lock);
    } else if (cl->cl_state != CL_DOWN && cl->cl_retry_us == 0) {
        log_warn("cluster: redis %s unreachable (%s): local limits = shared limit / %d node(s)",
                 cl->cl_addr, why, atomic_load(&cl->cl_nnodes));
    }
    cl->cl_state = CL_DOWN;
    cl->cl_retry_us =
        cl->cl_retry_us == 0 ? CL_RETRY_MIN_US : MIN(CL_RETRY_MAX_US, cl->cl_retry_us * 2);
    cl->cl_retry_at = clock_mono_us() + cl->cl_retry_us;
}

static void cl_became_up(dlv_cluster_t *cl)
{
    cl->cl_state = CL_UP;
    cl->cl_retry_us = 0;
    if (atomic_exchange(&cl->cl_up, 1) == 0) {
        atomic_store(&cl->cl_since_us, clock_now_us());
        if (atomic_load(&cl->cl_downs) > 0)
            log_info("cluster: redis %s is back: shared limits again", cl->cl_addr);
        else
            log_info("cluster: redis %s up, %d node(s)", cl->cl_addr, atomic_load(&cl->cl_nnodes));
    }
}

/* ------------------------------------------------------------ requests */

static void cl_req_free(cl_req_t *r)
{
    for (int i = 0; i < r->r_argc; i++)
        free(r->r_argv[i]);
    free(r->r_argv);
    free(r->r_lens);
    free(r);
}

/* Send r: EVALSHA (argv[0..2] are filled here: the command, the script's
 * SHA1, the number of keys) for a script, else argv as it is. */
static void cl_send(dlv_cluster_t *cl, cl_req_t *r)
{
    r->r_cl = cl;
    if (r->r_what < R_PUB) {
        int nkeys = r->r_script == S_NODES ? 2 : 1;
        free(r->r_argv[0]);
        free(r->r_argv[1]);
        free(r->r_argv[2]);
        r->r_argv[0] = xstrdup("EVALSHA");
        r->r_argv[1] = xstrdup(cl->cl_sha[r->r_script]);
        r->r_argv[2] = xstrdup(nkeys == 2 ? "2" : "1");
    }
    free(r->r_lens);
    r->r_lens = xcalloc((size_t)r->r_argc, sizeof(size_t));
    for (int i = 0; i < r->r_argc; i++)
        r->r_lens[i] = strlen(r->r_argv[i]);
    if (cl->cl_ac == NULL ||
        redisAsyncCommandArgv(cl->cl_ac, cl_reply_cb, r, r->r_argc, (const char **)r->r_argv,
                              r->r_lens) != REDIS_OK) {
        cl_reply_cb(NULL, NULL, r); /* as if Redis had not answered */
        return;
    }
    r->r_sent_us = clock_mono_us();
    r->r_next = NULL;
    *cl->cl_fly_tail = r;
    cl->cl_fly_tail = &r->r_next;
}

static void cl_fly_remove(dlv_cluster_t *cl, cl_req_t *r)
{
    for (cl_req_t **pp = &cl->cl_fly; *pp != NULL; pp = &(*pp)->r_next) {
        if (*pp == r) {
            *pp = r->r_next;
            if (*pp == NULL)
                cl->cl_fly_tail = pp;
            return;
        }
    }
}

static long long cl_int(const redisReply *rp)
{
    if (rp == NULL)
        return 0;
    if (rp->type == REDIS_REPLY_INTEGER)
        return rp->integer;
    if (rp->type == REDIS_REPLY_STRING)
        return atoll(rp->str);
    return 0;
}

static void cl_nodes_reply(dlv_cluster_t *cl, const redisReply *rp)
{
    if (rp->type != REDIS_REPLY_ARRAY || rp->elements < 3)
        return;
    const redisReply *nodes = rp->element[0], *state = rp->element[1];
    json_object *na = json_object_new_array();
    int n = 0;
    for (size_t i = 0; nodes->type == REDIS_REPLY_ARRAY && i + 1 < nodes->elements; i += 2) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "node", json_object_new_string(nodes->element[i]->str));
        long long exp = cl_int(nodes->element[i + 1]);
        /* last heartbeat: expiry - ttl, as a wall time */
        char ts[32];
        uint64_t seen_us = (uint64_t)(exp - CL_NODE_TTL_MS) * 1000;
        json_object_object_add(o, "last_seen",
                               json_object_new_string(time_fmt_rfc3339(seen_us, ts, sizeof(ts))));
        json_object_object_add(
            o, "self", json_object_new_boolean(strcmp(nodes->element[i]->str, cl->cl_node) == 0));
        json_object_array_add(na, o);
        n++;
    }
    atomic_store(&cl->cl_nnodes, MAX(1, n));
    json_object *sa = json_object_new_array();
    for (size_t i = 0; state->type == REDIS_REPLY_ARRAY && i + 1 < state->elements; i += 2) {
        json_object *e = json_tokener_parse(state->element[i + 1]->str);
        if (e != NULL)
            json_object_array_add(sa, e);
        if (cl->cl_resync)
            cl_apply_json(cl, state->element[i + 1]->str, cl->cl_first);
    }
    cl->cl_resync = false;
    cl->cl_first = false;
    uv_mutex_lock(&cl->cl_lock);
    json_object_put(cl->cl_nodes_json);
    json_object_put(cl->cl_state_json);
    cl->cl_nodes_json = na;
    cl->cl_state_json = sa;
    uv_mutex_unlock(&cl->cl_lock);
}

static void cl_reply_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    cl_req_t *r = priv;
    dlv_cluster_t *cl = r->r_cl;
    redisReply *rp = reply;
    (void)ac;
    cl_fly_remove(cl, r);
    if (rp != NULL && rp->type == REDIS_REPLY_ERROR && strncmp(rp->str, "NOSCRIPT", 8) == 0 &&
        cl->cl_ac != NULL && r->r_what < R_PUB) {
        /* not cached on this server (restarted, SCRIPT FLUSH): EVAL loads it */
        free(r->r_argv[0]);
        free(r->r_argv[1]);
        r->r_argv[0] = xstrdup("EVAL");
        r->r_argv[1] = xstrdup(cl_scripts[r->r_script]);
        r->r_lens[0] = 4;
        r->r_lens[1] = strlen(r->r_argv[1]);
        if (redisAsyncCommandArgv(cl->cl_ac, cl_reply_cb, r, r->r_argc, (const char **)r->r_argv,
                                  r->r_lens) == REDIS_OK) {
            r->r_next = NULL;
            *cl->cl_fly_tail = r;
            cl->cl_fly_tail = &r->r_next;
            return;
        }
        rp = NULL;
    }
    if (rp != NULL && rp->type == REDIS_REPLY_ERROR) {
        if (!cl->cl_auth_failed) /* NOAUTH after a refused AUTH: said once, by cl_go_down */
            log_warn("cluster: redis error: %s", log_esc(rp->str));
        rp = NULL;
    } else if (rp == NULL && !cl->cl_stopping) {
        cl->cl_broken = true;
    }
    cl_lim_t *l = r->r_lim;
    switch (r->r_what) {
    case R_RATE:
        l->l_busy = false;
        if (r->r_n > 0 && rp != NULL) {
            long long k = cl_int(rp);
            if (k > 0) {
                atomic_fetch_add(&l->l_tokens, k);
                atomic_fetch_add(&l->l_granted, (uint64_t)k);
            }
        }
        break;
    case R_CONN_TAKE:
        l->l_busy = false;
        if (rp != NULL && cl_int(rp) == 1) {
            if (l->l_held == l->l_ids_cap) {
                l->l_ids_cap = l->l_ids_cap ? l->l_ids_cap * 2 : 8;
                l->l_ids = xrealloc(l->l_ids, (size_t)l->l_ids_cap * sizeof(*l->l_ids));
            }
            l->l_ids[l->l_held++] = (uint64_t)r->r_n;
            atomic_store(&l->l_held_pub, l->l_held);
            atomic_fetch_add(&l->l_tokens, 1);
            atomic_fetch_add(&l->l_granted, 1);
            if (cl->cl_state == CL_UP) /* more wanted: ask now, not at the next tick */
                cl_conn_tick(cl, l, clock_mono_us());
        }
        break;
    case R_SYNC:
        cl_sync_reply(cl, rp);
        break;
    case R_ADAPT: {
        cl_req_t *inc = cl_adapt_reply(cl, r, rp);
        if (inc != NULL)
            cl_send(cl, inc);
        break;
    }
    case R_NODES:
        if (rp != NULL) {
            cl_became_up(cl);
            cl_nodes_reply(cl, rp);
        }
        break;
    default:
        break;
    }
    cl_req_free(r);
}

/* ------------------------------------------------------------ leases */

cl_lim_t *cl_lim_get(dlv_cluster_t *cl, int kind, const char *name)
{
    if (cl == NULL)
        return NULL;
    uv_mutex_lock(&cl->cl_lock);
    cl_lim_t *l;
    for (l = cl->cl_lims; l != NULL; l = l->l_next)
        if (l->l_kind == kind && strcmp(l->l_name, name) == 0)
            break;
    if (l == NULL) {
        l = xcalloc(1, sizeof(*l));
        l->l_cl = cl;
        l->l_kind = kind;
        l->l_name = xstrdup(name);
        char k[512];
        snprintf(k, sizeof(k), "%s:%s:%s", cl->cl_prefix, kind == CL_RATE ? "rate" : "conn", name);
        l->l_key = xstrdup(k);
        l->l_next = cl->cl_lims;
        cl->cl_lims = l;
    }
    uv_mutex_unlock(&cl->cl_lock);
    return l;
}

/* A taker found nothing: ask the cluster thread for more (a wake-up at
 * most every few ms, however many takers). */
static void cl_want(cl_lim_t *l)
{
    uint64_t now = clock_mono_us();
    uint64_t was = atomic_exchange_explicit(&l->l_want_us, now, memory_order_relaxed);
    if (now - was > 5000)
        uv_async_send(&l->l_cl->cl_wake);
}

/* One token (a message or a connection slot) of what the lease holds: 1,
 * or -1 when none is left (the cluster thread is asked for more). */
static int cl_take_one(cl_lim_t *l)
{
    int64_t t = atomic_load(&l->l_tokens);
    while (t > 0) {
        if (atomic_compare_exchange_weak(&l->l_tokens, &t, t - 1)) {
            atomic_store_explicit(&l->l_used_us, clock_mono_us(), memory_order_relaxed);
            return 1;
        }
    }
    cl_want(l);
    return -1;
}

int cl_rate_take(cl_lim_t *l, uint64_t interval_ns)
{
    if (l == NULL || interval_ns == 0)
        return 0;
    atomic_store_explicit(&l->l_interval, interval_ns, memory_order_relaxed);
    return cl_take_one(l);
}

void cl_rate_refund(cl_lim_t *l)
{
    if (l != NULL)
        atomic_fetch_add(&l->l_tokens, 1);
}

int cl_conn_take(cl_lim_t *l, int cap)
{
    if (l == NULL || cap <= 0)
        return 0;
    atomic_store_explicit(&l->l_cap, cap, memory_order_relaxed);
    return cl_take_one(l);
}

void cl_conn_release(cl_lim_t *l)
{
    if (l == NULL)
        return;
    atomic_store_explicit(&l->l_used_us, clock_mono_us(), memory_order_relaxed);
    atomic_fetch_add(&l->l_tokens, 1);
}

static cl_req_t *cl_req_script(cl_lim_t *l, int what, int script, int nargs)
{
    cl_req_t *r = xcalloc(1, sizeof(*r));
    r->r_lim = l;
    r->r_what = what;
    r->r_script = script;
    r->r_argc = 4 + nargs;
    r->r_argv = xcalloc((size_t)r->r_argc, sizeof(char *));
    r->r_argv[3] = xstrdup(l->l_key);
    return r;
}

/* Rate lease: ask for about a second's worth at this node's share when
 * the lease runs low while in use; give it back after CL_IDLE_US unused.
 * The script's tolerance (a tenth of a second of the whole rate, at least
 * one token) bounds what all nodes can take at once, so the combined rate
 * holds whatever the leases' sizes. */
static void cl_rate_tick(dlv_cluster_t *cl, cl_lim_t *l, uint64_t now)
{
    uint64_t iv = atomic_load(&l->l_interval);
    if (iv == 0)
        return;
    double rate = 1e9 / (double)iv;
    int nodes = atomic_load(&cl->cl_nnodes);
    double share = rate / nodes;
    int64_t lease = MAX(1, (int64_t)share);
    int64_t tok = atomic_load(&l->l_tokens);
    bool want = now - atomic_load(&l->l_want_us) < CL_IDLE_US;
    bool used = now - atomic_load(&l->l_used_us) < CL_IDLE_US;
    if (cl->cl_state != CL_UP) {
        /* fallback: refill locally at the shared rate / nodes, a small
         * burst at most */
        if (l->l_last_us == 0 || (!want && !used)) {
            l->l_last_us = now;
            l->l_accum = 0;
            return;
        }
        l->l_accum += share * (double)(now - l->l_last_us) / 1e6;
        l->l_last_us = now;
        int64_t cap = MAX(1, (int64_t)(share / 10));
        if (l->l_accum >= 1.0 && tok < cap) {
            int64_t add = MIN((int64_t)l->l_accum, cap - tok);
            l->l_accum -= (double)add;
            atomic_fetch_add(&l->l_tokens, add);
        }
        if (l->l_accum > (double)cap)
            l->l_accum = (double)cap;
        return;
    }
    l->l_last_us = 0;
    if (l->l_busy)
        return;
    if ((want || used) && tok * 2 < lease + 1) {
        cl_req_t *r = cl_req_script(l, R_RATE, S_RATE, 3);
        double tol = MAX((double)iv / 1000.0, rate * 0.1 * (double)iv / 1000.0);
        r->r_argv[4] = xasprintf("%.3f", (double)iv / 1000.0);
        r->r_argv[5] = xasprintf("%.3f", tol);
        r->r_argv[6] = xasprintf("%lld", (long long)(lease - tok));
        r->r_n = lease - tok;
        l->l_busy = true;
        cl_send(cl, r);
    } else if (tok > 0 && !want && !used) {
        int64_t back = atomic_exchange(&l->l_tokens, 0);
        if (back <= 0) {
            atomic_fetch_add(&l->l_tokens, back);
            return;
        }
        cl_req_t *r = cl_req_script(l, R_RATE, S_RATE, 3);
        r->r_argv[4] = xasprintf("%.3f", (double)iv / 1000.0);
        r->r_argv[5] = xstrdup("0");
        r->r_argv[6] = xasprintf("%lld", -(long long)back);
        r->r_n = -back;
        l->l_busy = true;
        cl_send(cl, r);
    }
}

static void cl_conn_free_one(dlv_cluster_t *cl, cl_lim_t *l)
{
    int64_t t = atomic_load(&l->l_tokens);
    while (t > 0 && !atomic_compare_exchange_weak(&l->l_tokens, &t, t - 1))
        ;
    if (t <= 0 || l->l_held == 0)
        return;
    uint64_t id = l->l_ids[--l->l_held];
    atomic_store(&l->l_held_pub, l->l_held);
    if (cl->cl_state != CL_UP)
        return; /* a local slot; its Redis lease (if any) runs out */
    cl_req_t *r = cl_req_script(l, R_CONN_OTHER, S_CONN, 4);
    r->r_argv[4] = xstrdup("free");
    r->r_argv[5] = xasprintf("%llu", (unsigned long long)cl->cl_ttl_ms);
    r->r_argv[6] = xstrdup("0");
    r->r_argv[7] = xasprintf("%s:%llu", cl->cl_node, (unsigned long long)id);
    cl_send(cl, r);
}

/* Renew (or, after a reconnect, re-register) every slot held, in one call. */
static void cl_conn_renew(dlv_cluster_t *cl, cl_lim_t *l)
{
    if (l->l_held == 0)
        return;
    cl_req_t *r = cl_req_script(l, R_CONN_OTHER, S_CONN, 3 + l->l_held);
    r->r_argv[4] = xstrdup("renew");
    r->r_argv[5] = xasprintf("%llu", (unsigned long long)cl->cl_ttl_ms);
    r->r_argv[6] = xstrdup("0");
    for (int i = 0; i < l->l_held; i++)
        r->r_argv[7 + i] = xasprintf("%s:%llu", cl->cl_node, (unsigned long long)l->l_ids[i]);
    cl_send(cl, r);
}

/* Connection slots: take one in Redis when a taker found none free, give
 * back one that stayed free for CL_IDLE_US (or above a lowered cap). */
static void cl_conn_tick(dlv_cluster_t *cl, cl_lim_t *l, uint64_t now)
{
    int cap = atomic_load(&l->l_cap);
    if (cap <= 0)
        return;
    int64_t tok = atomic_load(&l->l_tokens);
    bool want = now - atomic_load(&l->l_want_us) < 500000;
    bool used = now - atomic_load(&l->l_used_us) < CL_IDLE_US;
    bool idle = now - atomic_load(&l->l_want_us) > CL_IDLE_US && !used;
    /* a large cap keeps a few slots in hand while in use, so that opening
     * a connection seldom waits for Redis; a small one (what a provider
     * allows a whole cluster) takes a slot only when a connection wants it */
    int64_t reserve = cap >= 64 && (want || used) ? MIN(32, cap / 32) : 0;
    if (tok > reserve && (idle || l->l_held > cap)) {
        cl_conn_free_one(cl, l);
        return;
    }
    if (l->l_busy || l->l_held >= cap || tok > reserve || (!want && tok == reserve) ||
        (!want && reserve == 0))
        return;
    uint64_t id = ++cl->cl_seq;
    if (cl->cl_state != CL_UP) {
        /* fallback: the shared cap / nodes here, at least one */
        int local = MAX(1, cap / atomic_load(&cl->cl_nnodes));
        if (l->l_held >= local)
            return;
        if (l->l_held == l->l_ids_cap) {
            l->l_ids_cap = l->l_ids_cap ? l->l_ids_cap * 2 : 8;
            l->l_ids = xrealloc(l->l_ids, (size_t)l->l_ids_cap * sizeof(*l->l_ids));
        }
        l->l_ids[l->l_held++] = id;
        atomic_store(&l->l_held_pub, l->l_held);
        atomic_fetch_add(&l->l_tokens, 1);
        return;
    }
    cl_req_t *r = cl_req_script(l, R_CONN_TAKE, S_CONN, 4);
    r->r_argv[4] = xstrdup("take");
    r->r_argv[5] = xasprintf("%llu", (unsigned long long)cl->cl_ttl_ms);
    r->r_argv[6] = xasprintf("%d", cap);
    r->r_argv[7] = xasprintf("%s:%llu", cl->cl_node, (unsigned long long)id);
    r->r_n = (int64_t)id;
    l->l_busy = true;
    cl_send(cl, r);
}

static void cl_lim_tick(dlv_cluster_t *cl, cl_lim_t *l, uint64_t now)
{
    if (l->l_kind == CL_RATE)
        cl_rate_tick(cl, l, now);
    else
        cl_conn_tick(cl, l, now);
}

/* ------------------------------------------------------------ state */

void cl_publish(dlv_cluster_t *cl, const char *provider, const char *vmta, const char *event,
                double level, uint64_t for_us, bool by_operator)
{
    if (cl == NULL)
        return;
    json_object *o = json_object_new_object();
    char ts[32];
    json_object_object_add(o, "node", json_object_new_string(cl->cl_node));
    json_object_object_add(o, "provider", json_object_new_string(provider));
    json_object_object_add(o, "vmta", vmta ? json_object_new_string(vmta) : NULL);
    json_object_object_add(o, "event", json_object_new_string(event));
    json_object_object_add(o, "level", json_object_new_double(level));
    json_object_object_add(o, "for_s", json_object_new_int64((int64_t)(for_us / 1000000)));
    json_object_object_add(o, "by", json_object_new_string(by_operator ? "operator" : "rule"));
    json_object_object_add(
        o, "time", json_object_new_string(time_fmt_rfc3339(clock_now_us(), ts, sizeof(ts))));
    char *s = xstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
    uv_mutex_lock(&cl->cl_lock);
    if (cl->cl_nout < CL_MAX_OUT) {
        cl->cl_out[cl->cl_nout++] = s;
        s = NULL;
    }
    uv_mutex_unlock(&cl->cl_lock);
    if (s != NULL) {
        log_warn("cluster: %d state changes waiting for redis: this one is not shared", CL_MAX_OUT);
        free(s);
    }
    uv_async_send(&cl->cl_wake);
}

/* PUBLISH each waiting event and keep it as the queue's state (HSET). */
static void cl_flush_out(dlv_cluster_t *cl)
{
    if (cl->cl_state != CL_UP)
        return;
    char *out[CL_MAX_OUT];
    uv_mutex_lock(&cl->cl_lock);
    int n = cl->cl_nout;
    memcpy(out, cl->cl_out, (size_t)n * sizeof(char *));
    cl->cl_nout = 0;
    uv_mutex_unlock(&cl->cl_lock);
    for (int i = 0; i < n; i++) {
        json_object *o = json_tokener_parse(out[i]);
        json_object *pv = NULL, *vm = NULL;
        json_object_object_get_ex(o, "provider", &pv);
        json_object_object_get_ex(o, "vmta", &vm);
        char field[300];
        snprintf(field, sizeof(field), "%s/%s", json_object_get_string(pv),
                 vm ? json_object_get_string(vm) : "*");
        json_object_put(o);
        const char *argv[2][4] = {{"PUBLISH", NULL, out[i], NULL}, {"HSET", NULL, field, out[i]}};
        char ch[256], key[256];
        snprintf(ch, sizeof(ch), "%s:events", cl->cl_prefix);
        snprintf(key, sizeof(key), "%s:state", cl->cl_prefix);
        argv[0][1] = ch;
        argv[1][1] = key;
        for (int k = 0; k < 2; k++) {
            cl_req_t *r = xcalloc(1, sizeof(*r));
            r->r_what = R_PUB;
            r->r_argc = k == 0 ? 3 : 4;
            r->r_argv = xcalloc((size_t)r->r_argc, sizeof(char *));
            for (int j = 0; j < r->r_argc; j++)
                r->r_argv[j] = xstrdup(argv[k][j]);
            cl_send(cl, r);
        }
        atomic_fetch_add(&cl->cl_published, 1);
        free(out[i]);
    }
}

/* An event of another node (pub/sub, or P:state after a (re)connect):
 * applied to the local registry. own_too: this node's own entries too (a
 * restart lost them). */
static void cl_apply_json(dlv_cluster_t *cl, const char *text, bool own_too)
{
    json_object *o = json_tokener_parse(text), *v;
    if (o == NULL)
        return;
    const char *node = json_object_object_get_ex(o, "node", &v) ? json_object_get_string(v) : "";
    const char *pv = json_object_object_get_ex(o, "provider", &v) ? json_object_get_string(v) : "";
    const char *vm =
        json_object_object_get_ex(o, "vmta", &v) && v ? json_object_get_string(v) : NULL;
    const char *ev = json_object_object_get_ex(o, "event", &v) ? json_object_get_string(v) : "";
    double level = json_object_object_get_ex(o, "level", &v) ? json_object_get_double(v) : 1.0;
    int64_t for_s = json_object_object_get_ex(o, "for_s", &v) ? json_object_get_int64(v) : 0;
    const char *by = json_object_object_get_ex(o, "by", &v) ? json_object_get_string(v) : "rule";
    if (own_too || strcmp(node, cl->cl_node) != 0) {
        char why[200];
        snprintf(why, sizeof(why), "cluster: node %s", node);
        if (cl->cl_apply(cl->cl_sh, pv, vm, ev, level, (uint64_t)MAX(0, for_s) * 1000000,
                         strcmp(by, "operator") == 0, why) == 0)
            atomic_fetch_add(&cl->cl_applied, 1);
    }
    json_object_put(o);
}

static void cl_sub_cb(redisAsyncContext *ac, void *reply, void *priv)
{
    dlv_cluster_t *cl = ac->data;
    redisReply *rp = reply;
    (void)priv;
    if (rp == NULL || rp->type != REDIS_REPLY_ARRAY || rp->elements < 3)
        return;
    if (rp->element[0]->type == REDIS_REPLY_STRING &&
        strcmp(rp->element[0]->str, "subscribe") == 0 &&
        rp->element[2]->type == REDIS_REPLY_INTEGER && rp->element[2]->integer == 2) {
        cl->cl_subscribed = true; /* from now on no entry is missed: the sync may start */
        return;
    }
    if (rp->element[0]->type != REDIS_REPLY_STRING || strcmp(rp->element[0]->str, "message") != 0 ||
        rp->element[1]->type != REDIS_REPLY_STRING || rp->element[2]->type != REDIS_REPLY_STRING)
        return;
    const char *ch = rp->element[1]->str;
    size_t pl = strlen(cl->cl_prefix);
    if (strncmp(ch, cl->cl_prefix, pl) == 0 && strcmp(ch + pl, ":supp") == 0)
        cl_supp_apply(cl, rp->element[2]->str, false);
    else if (!cl_adapt_msg(cl, rp->element[2]->str)) /* adaptive mode's values, or a state */
        cl_apply_json(cl, rp->element[2]->str, false);
}

/* ------------------------------------------------------------ the tick */

static void cl_heartbeat(dlv_cluster_t *cl)
{
    cl_req_t *r = xcalloc(1, sizeof(*r));
    r->r_what = R_NODES;
    r->r_script = S_NODES;
    r->r_argc = 8;
    r->r_argv = xcalloc(8, sizeof(char *));
    r->r_argv[3] = xasprintf("%s:nodes", cl->cl_prefix);
    r->r_argv[4] = xasprintf("%s:state", cl->cl_prefix);
    r->r_argv[5] = xstrdup(cl->cl_node);
    r->r_argv[6] = xasprintf("%d", CL_NODE_TTL_MS);
    r->r_argv[7] = xstrdup("0");
    cl_send(cl, r);
}

static void cl_run(dlv_cluster_t *cl)
{
    uint64_t now = clock_mono_us();
    if (cl->cl_broken && cl->cl_auth_failed) {
        char why[sizeof(cl->cl_why)];
        uv_mutex_lock(&cl->cl_lock);
        snprintf(why, sizeof(why), "%s", cl->cl_why);
        uv_mutex_unlock(&cl->cl_lock);
        cl_go_down(cl, "%s", why);
    } else if (cl->cl_broken) {
        cl_go_down(cl, "%s", "connection lost");
    }
    if (cl->cl_fly != NULL && now - cl->cl_fly->r_sent_us > cl->cl_timeout_us)
        cl_go_down(cl, "no answer within %llums", (unsigned long long)(cl->cl_timeout_us / 1000));
    if (cl->cl_state == CL_DOWN && now >= cl->cl_retry_at)
        cl_connect(cl);
    if (cl->cl_state != CL_DOWN && cl->cl_ac != NULL && now >= cl->cl_beat_at) {
        cl->cl_beat_at = now + CL_HEARTBEAT_US;
        bool was_up = cl->cl_state == CL_UP;
        cl_heartbeat(cl);
        if (!was_up) /* the first answer makes it up: resync the slots then */
            cl->cl_renew_at = 0;
    }
    bool up = cl->cl_state == CL_UP;
    bool renew = up && now >= cl->cl_renew_at;
    if (renew)
        cl->cl_renew_at = now + cl->cl_ttl_ms * 1000 / 3;
    uv_mutex_lock(&cl->cl_lock);
    cl_lim_t *lims = cl->cl_lims; /* the list only grows at its head */
    uv_mutex_unlock(&cl->cl_lock);
    for (cl_lim_t *l = lims; l != NULL; l = l->l_next) {
        cl_lim_tick(cl, l, now);
        if (renew && l->l_kind == CL_CONN)
            cl_conn_renew(cl, l);
    }
    for (cl_req_t *r = cl_adapt_tick(cl, now), *next; r != NULL; r = next) {
        next = r->r_next;
        cl_send(cl, r);
    }
    cl_flush_out(cl);
    for (cl_req_t *r = cl_flush_supp(cl), *next; r != NULL; r = next) {
        next = r->r_next;
        cl_send(cl, r);
    }
    cl_req_t *r = cl_sync_tick(cl);
    if (r != NULL)
        cl_send(cl, r);
}

static void cl_tick_cb(uv_timer_t *h)
{
    cl_run(h->data);
}

static void cl_wake_cb(uv_async_t *h)
{
    dlv_cluster_t *cl = h->data;
    if (!cl->cl_stopping)
        cl_run(cl);
}

/* ------------------------------------------------------------ JSON */

json_object *cl_json(dlv_cluster_t *cl)
{
    json_object *o = json_object_new_object();
    char ts[32];
    json_object_object_add(o, "enabled", json_object_new_boolean(cl != NULL));
    if (cl == NULL) {
        const char *k[] = {"node", "redis", "redis_up", "since", "reason", "node_count"};
        for (size_t i = 0; i < ARRAY_SIZE(k); i++)
            json_object_object_add(o, k[i], NULL);
        json_object_object_add(o, "nodes", json_object_new_array());
        json_object_object_add(o, "leases", json_object_new_array());
        json_object_object_add(o, "state", json_object_new_array());
        json_object_object_add(o, "applied", json_object_new_int64(0));
        json_object_object_add(o, "published", json_object_new_int64(0));
        json_object_object_add(o, "redis_downs", json_object_new_int64(0));
        json_object_object_add(o, "supp_syncs", json_object_new_int64(0));
        json_object_object_add(o, "supp_unshared", json_object_new_int64(0));
        json_object_object_add(o, "adaptive", json_object_new_array());
        return o;
    }
    bool up = atomic_load(&cl->cl_up);
    json_object_object_add(o, "node", json_object_new_string(cl->cl_node));
    json_object_object_add(o, "redis", json_object_new_string(cl->cl_addr));
    json_object_object_add(o, "redis_up", json_object_new_boolean(up));
    json_object_object_add(
        o, "since",
        json_object_new_string(time_fmt_rfc3339(atomic_load(&cl->cl_since_us), ts, sizeof(ts))));
    uv_mutex_lock(&cl->cl_lock);
    json_object_object_add(o, "reason", up ? NULL : json_object_new_string(cl->cl_why));
    json_object_object_add(o, "node_count", json_object_new_int(atomic_load(&cl->cl_nnodes)));
    json_object *nodes =
        cl->cl_nodes_json ? json_object_get(cl->cl_nodes_json) : json_object_new_array();
    json_object *state =
        cl->cl_state_json ? json_object_get(cl->cl_state_json) : json_object_new_array();
    json_object *la = json_object_new_array();
    for (cl_lim_t *l = cl->cl_lims; l != NULL; l = l->l_next) {
        json_object *e = json_object_new_object();
        json_object_object_add(e, "name", json_object_new_string(l->l_name));
        json_object_object_add(
            e, "kind", json_object_new_string(l->l_kind == CL_RATE ? "rate" : "connections"));
        if (l->l_kind == CL_RATE) {
            uint64_t iv = atomic_load(&l->l_interval);
            /* to the thousandth: 30/s shows as 30, not 30.0000003 */
            double per_s = iv ? (double)(uint64_t)(1e12 / (double)iv + 0.5) / 1000.0 : 0.0;
            json_object_object_add(e, "limit", iv ? json_object_new_double(per_s) : NULL);
            json_object_object_add(e, "held", NULL);
        } else {
            int cap = atomic_load(&l->l_cap);
            json_object_object_add(e, "limit", cap > 0 ? json_object_new_double(cap) : NULL);
            json_object_object_add(e, "held", json_object_new_int(atomic_load(&l->l_held_pub)));
        }
        json_object_object_add(e, "available",
                               json_object_new_int64(MAX(0, atomic_load(&l->l_tokens))));
        json_object_object_add(e, "granted",
                               json_object_new_int64((int64_t)atomic_load(&l->l_granted)));
        json_object_array_add(la, e);
    }
    json_object *ad = cl_adapt_json(cl);
    uv_mutex_unlock(&cl->cl_lock);
    json_object_object_add(o, "nodes", nodes);
    json_object_object_add(o, "leases", la);
    json_object_object_add(o, "state", state);
    json_object_object_add(o, "applied",
                           json_object_new_int64((int64_t)atomic_load(&cl->cl_applied)));
    json_object_object_add(o, "published",
                           json_object_new_int64((int64_t)atomic_load(&cl->cl_published)));
    json_object_object_add(o, "redis_downs",
                           json_object_new_int64((int64_t)atomic_load(&cl->cl_downs)));
    json_object_object_add(o, "supp_syncs",
                           json_object_new_int64((int64_t)atomic_load(&cl->cl_syncs)));
    json_object_object_add(o, "supp_unshared",
                           json_object_new_int64((int64_t)atomic_load(&cl->cl_supp_unshared)));
    json_object_object_add(o, "adaptive", ad);
    return o;
}
