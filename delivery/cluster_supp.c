/*
 * delivery/cluster_supp.c - the suppression list shared through Redis
 * (docs/cluster.md, "Suppression"): this node's new entries published on
 * P:supp and kept in the hashes P:supp:SCOPE (also those written while
 * Redis was away, up to CL_MAX_SUPP_OUT), the other nodes' entries written
 * to the local list, and the sync on each (re)connect that reads the
 * hashes in chunks and adds the entries this node lacks.
 *
 * Thread: the cluster thread, but cl_supp_hook (the queue thread, under
 * cl_lock).
 */
#include "delivery/cluster_priv.h"

#include <json-c/json.h>
#include <string.h>

#define CL_SYNC_KEYS "100"    /* SCAN COUNT: scopes read per step */
#define CL_SYNC_FIELDS "1000" /* HSCAN COUNT: entries read per tick (50 ms) */
#define CL_SUPP_FLUSH 1000    /* own entries sent per tick */

/* queue_supp_hook_fn (the queue thread): an entry written here, for the
 * other nodes. */
static void cl_supp_hook(void *arg, const char *addr, const char *scope, const char *reason,
                         uint64_t expires)
{
    dlv_cluster_t *cl = arg;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "node", json_object_new_string(cl->cl_node));
    json_object_object_add(o, "address", json_object_new_string(addr));
    json_object_object_add(o, "scope", json_object_new_string(scope));
    json_object_object_add(o, "reason", json_object_new_string(reason));
    json_object_object_add(o, "expires", json_object_new_int64((int64_t)expires));
    char *s = xstrdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
    json_object_put(o);
    bool first_lost = false;
    uv_mutex_lock(&cl->cl_lock);
    if (cl->cl_nsout < CL_MAX_SUPP_OUT) {
        if (cl->cl_nsout == cl->cl_sout_cap) {
            cl->cl_sout_cap = cl->cl_sout_cap ? cl->cl_sout_cap * 2 : 64;
            cl->cl_sout = xrealloc(cl->cl_sout, (size_t)cl->cl_sout_cap * sizeof(char *));
        }
        cl->cl_sout[cl->cl_nsout++] = s;
        s = NULL;
    } else {
        first_lost = !cl->cl_supp_full;
        cl->cl_supp_full = true;
    }
    uv_mutex_unlock(&cl->cl_lock);
    if (s != NULL) {
        /* kept in the local list all the same; only the other nodes miss it */
        atomic_fetch_add(&cl->cl_supp_unshared, 1);
        if (first_lost)
            log_warn("cluster: %d suppression entries waiting for redis: later ones (first <%s>) "
                     "stay on this node only (counted in sluicectl cluster's supp_unshared)",
                     CL_MAX_SUPP_OUT, log_esc(addr));
        free(s);
    }
    uv_async_send(&cl->cl_wake);
}

void dlv_cluster_share_suppression(dlv_cluster_t *cl, queue_t *q)
{
    cl->cl_queue = q;
    queue_supp_set_hook(q, cl_supp_hook, cl);
}

/* PUBLISH each waiting entry on P:supp and keep it in P:supp:SCOPE (scope
 * "global" for the global list): the list's copy in Redis. */
cl_req_t *cl_flush_supp(dlv_cluster_t *cl)
{
    cl_req_t *head = NULL, **tail = &head;
    if (cl->cl_state != CL_UP)
        return NULL;
    /* a chunk per tick: 100,000 kept while Redis was down must not all be
     * in flight at once (the oldest would pass cluster.timeout) */
    uv_mutex_lock(&cl->cl_lock);
    int n = MIN(cl->cl_nsout, CL_SUPP_FLUSH);
    if (n == 0) {
        uv_mutex_unlock(&cl->cl_lock);
        return NULL;
    }
    char **out = xcalloc((size_t)n, sizeof(char *));
    memcpy(out, cl->cl_sout, (size_t)n * sizeof(char *));
    memmove(cl->cl_sout, cl->cl_sout + n, (size_t)(cl->cl_nsout - n) * sizeof(char *));
    cl->cl_nsout -= n;
    if (cl->cl_nsout == 0) {
        free(cl->cl_sout);
        cl->cl_sout = NULL;
        cl->cl_sout_cap = 0;
        cl->cl_supp_full = false;
    }
    uv_mutex_unlock(&cl->cl_lock);
    for (int i = 0; i < n; i++) {
        json_object *o = json_tokener_parse(out[i]), *a = NULL, *sc = NULL;
        json_object_object_get_ex(o, "address", &a);
        json_object_object_get_ex(o, "scope", &sc);
        const char *scope = sc ? json_object_get_string(sc) : "";
        /* HSET first: a node whose subscription starts after this PUBLISH
         * starts its sync later still, and finds the entry in the hash */
        cl_req_t *r = xcalloc(1, sizeof(*r));
        r->r_what = R_PUB;
        r->r_argc = 4;
        r->r_argv = xcalloc(4, sizeof(char *));
        r->r_argv[0] = xstrdup("HSET");
        r->r_argv[1] = xasprintf("%s:supp:%s", cl->cl_prefix, scope[0] ? scope : "global");
        r->r_argv[2] = xstrdup(a ? json_object_get_string(a) : "");
        r->r_argv[3] = xstrdup(out[i]);
        *tail = r;
        tail = &r->r_next;
        r = xcalloc(1, sizeof(*r));
        r->r_what = R_PUB;
        r->r_argc = 3;
        r->r_argv = xcalloc(3, sizeof(char *));
        r->r_argv[0] = xstrdup("PUBLISH");
        r->r_argv[1] = xasprintf("%s:supp", cl->cl_prefix);
        r->r_argv[2] = xstrdup(out[i]);
        *tail = r;
        tail = &r->r_next;
        json_object_put(o);
        atomic_fetch_add(&cl->cl_published, 1);
        free(out[i]);
    }
    free(out);
    return head;
}

/* Another node's suppression entry: into the local list (the spool). */
void cl_supp_apply(dlv_cluster_t *cl, const char *text, bool sync)
{
    json_object *o = json_tokener_parse(text), *v;
    if (o == NULL || cl->cl_queue == NULL) {
        json_object_put(o);
        return;
    }
    const char *node = json_object_object_get_ex(o, "node", &v) ? json_object_get_string(v) : "";
    const char *addr =
        json_object_object_get_ex(o, "address", &v) ? json_object_get_string(v) : NULL;
    const char *scope = json_object_object_get_ex(o, "scope", &v) ? json_object_get_string(v) : "";
    const char *reason =
        json_object_object_get_ex(o, "reason", &v) ? json_object_get_string(v) : NULL;
    int64_t exp = json_object_object_get_ex(o, "expires", &v) ? json_object_get_int64(v) : 0;
    /* own entries are in this node's spool already (a sync must not turn
     * them into cluster:SELF); an expired one is not worth a write */
    bool live = !sync || exp <= 0 || (uint64_t)exp > clock_now_s();
    if (addr != NULL && reason != NULL && node[0] != '\0' && strcmp(node, cl->cl_node) != 0 &&
        live) {
        queue_supp_remote(cl->cl_queue, addr, scope, reason, (uint64_t)MAX(0, exp), node, sync);
        if (!sync)
            atomic_fetch_add(&cl->cl_applied, 1);
    }
    json_object_put(o);
}

/* ------------------------------------------------------------ sync on connect */

/* The sync reads every P:supp:* hash with SCAN and HSCAN, one chunk per
 * tick, so that a list of a million entries neither blocks this thread
 * nor floods the queue thread; it starts once the subscription is active
 * (an entry published after that comes through P:supp, one HSET before
 * comes through the hash). Entries this node has are left as they are. */

void cl_sync_reset(dlv_cluster_t *cl)
{
    for (size_t i = 0; i < cl->cl_sync_nkeys; i++)
        free(cl->cl_sync_keys[i]);
    free(cl->cl_sync_keys);
    cl->cl_sync_keys = NULL;
    cl->cl_sync_nkeys = cl->cl_sync_ki = 0;
    free(cl->cl_sync_cur);
    free(cl->cl_sync_hcur);
    cl->cl_sync_cur = cl->cl_sync_hcur = NULL;
    cl->cl_sync_busy = cl->cl_sync_on = false;
}

static cl_req_t *cl_sync_req(dlv_cluster_t *cl, int argc, const char *const *argv)
{
    cl_req_t *r = xcalloc(1, sizeof(*r));
    r->r_what = R_SYNC;
    r->r_argc = argc;
    r->r_argv = xcalloc((size_t)argc, sizeof(char *));
    for (int i = 0; i < argc; i++)
        r->r_argv[i] = xstrdup(argv[i]);
    cl->cl_sync_busy = true;
    return r;
}

cl_req_t *cl_sync_tick(dlv_cluster_t *cl)
{
    cl_req_t *r = NULL;
    if (cl->cl_state != CL_UP || cl->cl_queue == NULL || cl->cl_sync_busy)
        return NULL;
    if (cl->cl_sync_want && cl->cl_subscribed) {
        cl_sync_reset(cl);
        cl->cl_sync_want = false;
        cl->cl_sync_on = true;
        cl->cl_sync_cur = xstrdup("0");
        cl->cl_sync_read = 0;
        char *match = xasprintf("%s:supp:*", cl->cl_prefix);
        const char *argv[] = {"SCAN", "0", "MATCH", match, "COUNT", CL_SYNC_KEYS};
        r = cl_sync_req(cl, 6, argv);
        free(match);
        return r;
    }
    if (!cl->cl_sync_on)
        return NULL;
    if (cl->cl_sync_ki < cl->cl_sync_nkeys) {
        const char *argv[] = {"HSCAN", cl->cl_sync_keys[cl->cl_sync_ki], cl->cl_sync_hcur, "COUNT",
                              CL_SYNC_FIELDS};
        r = cl_sync_req(cl, 5, argv);
    } else if (strcmp(cl->cl_sync_cur, "0") != 0) {
        char *match = xasprintf("%s:supp:*", cl->cl_prefix);
        const char *argv[] = {"SCAN", cl->cl_sync_cur, "MATCH", match, "COUNT", CL_SYNC_KEYS};
        r = cl_sync_req(cl, 6, argv);
        free(match);
    } else {
        log_info("cluster: suppression list synchronized with redis: %llu shared entries read, "
                 "those missing here added",
                 (unsigned long long)cl->cl_sync_read);
        atomic_fetch_add(&cl->cl_syncs, 1);
        cl_sync_reset(cl);
    }
    return r;
}

static bool cl_sync_page(const redisReply *rp)
{
    return rp != NULL && rp->type == REDIS_REPLY_ARRAY && rp->elements == 2 &&
           rp->element[0]->type == REDIS_REPLY_STRING && rp->element[1]->type == REDIS_REPLY_ARRAY;
}

void cl_sync_reply(dlv_cluster_t *cl, const redisReply *rp)
{
    cl->cl_sync_busy = false;
    if (!cl->cl_sync_on)
        return;
    if (!cl_sync_page(rp)) {
        /* an error is logged by cl_reply_cb; the next connect tries again */
        cl_sync_reset(cl);
        return;
    }
    const redisReply *items = rp->element[1];
    if (cl->cl_sync_ki >= cl->cl_sync_nkeys) { /* a SCAN page: its keys, then the next page */
        for (size_t i = 0; i < cl->cl_sync_nkeys; i++)
            free(cl->cl_sync_keys[i]);
        free(cl->cl_sync_keys);
        cl->cl_sync_keys = xcalloc(items->elements + 1, sizeof(char *));
        cl->cl_sync_nkeys = cl->cl_sync_ki = 0;
        for (size_t i = 0; i < items->elements; i++)
            if (items->element[i]->type == REDIS_REPLY_STRING)
                cl->cl_sync_keys[cl->cl_sync_nkeys++] = xstrdup(items->element[i]->str);
        free(cl->cl_sync_cur);
        cl->cl_sync_cur = xstrdup(rp->element[0]->str);
        free(cl->cl_sync_hcur);
        cl->cl_sync_hcur = xstrdup("0");
        return;
    }
    /* an HSCAN page of cl_sync_keys[cl_sync_ki]: field, value, ... */
    for (size_t i = 0; i + 1 < items->elements; i += 2) {
        if (items->element[i + 1]->type != REDIS_REPLY_STRING)
            continue;
        cl_supp_apply(cl, items->element[i + 1]->str, true);
        cl->cl_sync_read++;
    }
    free(cl->cl_sync_hcur);
    if (strcmp(rp->element[0]->str, "0") == 0) {
        cl->cl_sync_ki++;
        cl->cl_sync_hcur = xstrdup("0");
    } else {
        cl->cl_sync_hcur = xstrdup(rp->element[0]->str);
    }
}
