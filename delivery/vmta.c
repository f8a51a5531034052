/*
 * vmta.c - virtual MTAs and pools: a virtual MTA is a source address plus
 * an EHLO name; a pool is a set of them used round robin (smooth weighted
 * round robin with weights = [...]). A message picks its pool by its
 * X-Sluice-Pool header (removed before delivery, so before DKIM signing),
 * else by the SMTP AUTH user who submitted it (pool_users), else the
 * default pool. Virtual MTAs and pools are part of the shaping rule set
 * (shaping_conf.c calls shp_vmta_config); the registry keeps the start-up
 * set's (a reload does not change them).
 *
 *   virtual_mtas { mta1 { source = "192.0.2.10"; ehlo = "mta1.example.net"; } }
 *   pools { bulk { members = ["mta1", "mta2"]; weights = [3, 1]; } }
 *   default_pool = bulk;
 *   pool_users { alice = bulk; }
 *
 * Thread: shp_vmta_config at load (any thread); shp_pool_for changes the
 * dispatch (the header goes), on its destination's thread (dest.c checks
 * it); shp_pool_pick's state is the destination's; shp_vmta_bind any.
 */
#include "delivery/shaping_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int vm_find(const shp_conf_t *c, const char *name)
{
    for (int i = 0; i < c->sc_nvmtas; i++)
        if (strcasecmp(c->sc_vmtas[i].vm_name, name) == 0)
            return i;
    return -1;
}

static int pool_find(const shp_conf_t *c, const char *name)
{
    for (int i = 0; i < c->sc_npools; i++)
        if (strcasecmp(c->sc_pools[i].po_name, name) == 0)
            return i;
    return -1;
}

/* "true" 1, "false" -1, else 0. */
static int vm_bool(const char *s)
{
    return strcmp(s, "true") == 0 ? 1 : strcmp(s, "false") == 0 ? -1 : 0;
}

static int vm_parse_vmtas(shp_conf_t *c, const cfg_node_t *sec, const char *name, char *err,
                          size_t errlen)
{
    if (sec->n_type != CFG_NODE_SECTION)
        return cfg_error(err, errlen, name, sec->n_line, "virtual_mtas: expected a section");
    for (const cfg_node_t *v = sec->n_child; v != NULL; v = v->n_next) {
        if (v->n_type != CFG_NODE_SECTION)
            return cfg_error(err, errlen, name, v->n_line,
                             "virtual_mtas.%s: expected a section { source = \"ip\"; ehlo = "
                             "\"name\"; }",
                             v->n_key);
        if (vm_find(c, v->n_key) >= 0)
            return cfg_error(err, errlen, name, v->n_key_line, "virtual_mtas.%s: defined twice",
                             v->n_key);
        if (c->sc_nvmtas == SHP_MAX_VMTAS)
            return cfg_error(err, errlen, name, v->n_key_line, "too many virtual MTAs (at most %d)",
                             SHP_MAX_VMTAS);
        shp_vmta_t *vm = &c->sc_vmtas[c->sc_nvmtas++];
        vm->vm_name = xstrdup(v->n_key);
        for (const cfg_node_t *e = v->n_child; e != NULL; e = e->n_next) {
            if (e->n_type != CFG_NODE_STR)
                return cfg_error(err, errlen, name, e->n_line,
                                 "virtual_mtas.%s.%s: expected a string", v->n_key, e->n_key);
            if (strcmp(e->n_key, "source") == 0) {
                if (net_parse_hostport(e->n_str, 0, &vm->vm_sa) != 0)
                    return cfg_error(
                        err, errlen, name, e->n_line,
                        "virtual_mtas.%s.source: expected an IP address, got \"%.60s\"", v->n_key,
                        e->n_str);
                free(vm->vm_source);
                vm->vm_source = xstrdup(e->n_str);
            } else if (strcmp(e->n_key, "ehlo") == 0) {
                free(vm->vm_ehlo);
                vm->vm_ehlo = e->n_str[0] ? xstrdup(e->n_str) : NULL;
            } else if (strcmp(e->n_key, "verp") == 0) {
                if ((vm->vm_verp = vm_bool(e->n_str)) == 0)
                    return cfg_error(err, errlen, name, e->n_line,
                                     "virtual_mtas.%s.verp: expected true or false", v->n_key);
            } else {
                return cfg_error(err, errlen, name, e->n_key_line,
                                 "unknown key \"virtual_mtas.%s.%s\" (source, ehlo, verp)",
                                 v->n_key, e->n_key);
            }
        }
    }
    return 0;
}

static int vm_parse_pools(shp_conf_t *c, const cfg_node_t *sec, const char *name, char *err,
                          size_t errlen)
{
    if (sec->n_type != CFG_NODE_SECTION)
        return cfg_error(err, errlen, name, sec->n_line, "pools: expected a section");
    for (const cfg_node_t *p = sec->n_child; p != NULL; p = p->n_next) {
        if (p->n_type != CFG_NODE_SECTION)
            return cfg_error(err, errlen, name, p->n_line,
                             "pools.%s: expected a section { members = [...]; }", p->n_key);
        if (pool_find(c, p->n_key) >= 0)
            return cfg_error(err, errlen, name, p->n_key_line, "pools.%s: defined twice", p->n_key);
        if (c->sc_npools == SHP_MAX_POOLS)
            return cfg_error(err, errlen, name, p->n_key_line, "too many pools (at most %d)",
                             SHP_MAX_POOLS);
        shp_pool_t *po = &c->sc_pools[c->sc_npools++];
        po->po_name = xstrdup(p->n_key);
        int nweights = 0;
        for (const cfg_node_t *e = p->n_child; e != NULL; e = e->n_next) {
            bool members = strcmp(e->n_key, "members") == 0;
            if (strcmp(e->n_key, "verp") == 0) {
                if (e->n_type != CFG_NODE_STR || (po->po_verp = vm_bool(e->n_str)) == 0)
                    return cfg_error(err, errlen, name, e->n_line,
                                     "pools.%s.verp: expected true or false", p->n_key);
                continue;
            }
            if (!members && strcmp(e->n_key, "weights") != 0)
                return cfg_error(err, errlen, name, e->n_key_line,
                                 "unknown key \"pools.%s.%s\" (members, weights, verp)", p->n_key,
                                 e->n_key);
            if (e->n_type == CFG_NODE_SECTION)
                return cfg_error(err, errlen, name, e->n_line, "pools.%s.%s: expected a list",
                                 p->n_key, e->n_key);
            const cfg_node_t *first = e->n_type == CFG_NODE_LIST ? e->n_child : e;
            int k = 0;
            for (const cfg_node_t *it = first; it != NULL;
                 it = e->n_type == CFG_NODE_LIST ? it->n_next : NULL, k++) {
                if (k == SHP_MAX_VMTAS)
                    return cfg_error(err, errlen, name, e->n_line, "pools.%s: too many members",
                                     p->n_key);
                if (members) {
                    int v = vm_find(c, it->n_str);
                    if (v < 0)
                        return cfg_error(err, errlen, name, e->n_line,
                                         "pools.%s: no virtual MTA \"%.60s\" in virtual_mtas",
                                         p->n_key, it->n_str);
                    po->po_members[k] = v;
                    po->po_weight[k] = 1;
                } else {
                    char *end;
                    long w = strtol(it->n_str, &end, 10);
                    if (end == it->n_str || *end != '\0' || w < 1 || w > 1000)
                        return cfg_error(err, errlen, name, e->n_line,
                                         "pools.%s.weights: expected integers [1..1000]", p->n_key);
                    po->po_weight[k] = (int)w;
                }
            }
            if (members)
                po->po_n = k;
            else
                nweights = k;
        }
        if (po->po_n == 0)
            return cfg_error(err, errlen, name, p->n_line, "pools.%s: needs members = [...]",
                             p->n_key);
        if (nweights != 0 && nweights != po->po_n)
            return cfg_error(err, errlen, name, p->n_line, "pools.%s: %d weights for %d members",
                             p->n_key, nweights, po->po_n);
    }
    return 0;
}

int shp_vmta_config(shp_conf_t *c, const void *rootp, const char *name, char *err, size_t errlen)
{
    const cfg_node_t *root = rootp;
    const cfg_node_t *vm = NULL, *pools = NULL, *def = NULL, *users = NULL;
    for (const cfg_node_t *n = root->n_child; n != NULL; n = n->n_next) {
        const cfg_node_t **slot = strcmp(n->n_key, "virtual_mtas") == 0   ? &vm
                                  : strcmp(n->n_key, "pools") == 0        ? &pools
                                  : strcmp(n->n_key, "default_pool") == 0 ? &def
                                  : strcmp(n->n_key, "pool_users") == 0   ? &users
                                                                          : NULL;
        if (slot == NULL)
            continue;
        if (*slot != NULL)
            return cfg_error(err, errlen, name, n->n_key_line, "duplicate key \"%s\"", n->n_key);
        *slot = n;
    }
    int rc;
    if (vm != NULL && (rc = vm_parse_vmtas(c, vm, name, err, errlen)) != 0)
        return rc;
    if (pools != NULL && (rc = vm_parse_pools(c, pools, name, err, errlen)) != 0)
        return rc;
    if (pools == NULL && c->sc_nvmtas > 0) { /* every vmta, one "default" pool */
        shp_pool_t *p = &c->sc_pools[c->sc_npools++];
        p->po_name = xstrdup("default");
        for (int i = 0; i < c->sc_nvmtas; i++) {
            p->po_members[i] = i;
            p->po_weight[i] = 1;
        }
        p->po_n = c->sc_nvmtas;
    }
    if (def != NULL) {
        if (def->n_type != CFG_NODE_STR || (c->sc_default_pool = pool_find(c, def->n_str)) < 0)
            return cfg_error(err, errlen, name, def->n_line, "default_pool: no such pool in pools");
    }
    if (users != NULL) {
        if (users->n_type != CFG_NODE_SECTION)
            return cfg_error(err, errlen, name, users->n_line,
                             "pool_users: expected a section { user = pool; }");
        int n = 0;
        for (const cfg_node_t *u = users->n_child; u != NULL; u = u->n_next)
            n++;
        c->sc_pool_users = xcalloc((size_t)(2 * n + 1), sizeof(char *));
        c->sc_pool_user_idx = xcalloc((size_t)(n + 1), sizeof(int));
        for (const cfg_node_t *u = users->n_child; u != NULL; u = u->n_next) {
            int p = u->n_type == CFG_NODE_STR ? pool_find(c, u->n_str) : -1;
            if (p < 0)
                return cfg_error(err, errlen, name, u->n_line,
                                 "pool_users.%s: expected the name of a pool in pools", u->n_key);
            int i = c->sc_npool_users++;
            c->sc_pool_users[2 * i] = xstrdup(u->n_key);
            c->sc_pool_users[2 * i + 1] = xstrdup(u->n_str);
            c->sc_pool_user_idx[i] = p;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ messages */

void shp_strip_pool_header(queue_dispatch_t *qd, char *val, size_t vallen)
{
    static const char name[] = "x-sluice-pool:";
    const size_t nl = sizeof(name) - 1;
    char *b = qd->qd_body;
    size_t len = qd->qd_body_len, i = 0;
    if (vallen > 0)
        val[0] = '\0';
    while (i < len) {
        char *line = b + i;
        char *eol = memchr(line, '\n', len - i);
        size_t ll = eol ? (size_t)(eol - line) + 1 : len - i;
        if (ll <= 2 && (line[0] == '\n' || (line[0] == '\r' && ll == 2)))
            break; /* the blank line: end of the header */
        if (ll > nl && strncasecmp(line, name, nl) == 0) {
            /* the field with its folded continuation lines */
            size_t fl = ll;
            while (i + fl < len && (b[i + fl] == ' ' || b[i + fl] == '\t')) {
                char *e2 = memchr(b + i + fl, '\n', len - i - fl);
                fl = e2 ? (size_t)(e2 - (b + i)) + 1 : len - i;
            }
            if (vallen > 0 && val[0] == '\0') {
                size_t s = nl, e = ll;
                while (s < e && (line[s] == ' ' || line[s] == '\t'))
                    s++;
                while (e > s && (line[e - 1] == '\n' || line[e - 1] == '\r' || line[e - 1] == ' ' ||
                                 line[e - 1] == '\t'))
                    e--;
                size_t n = MIN(e - s, vallen - 1);
                memcpy(val, line + s, n);
                val[n] = '\0';
            }
            memmove(line, line + fl, len - i - fl);
            len -= fl;
            b[len] = '\0';
            continue;
        }
        i += ll;
    }
    qd->qd_body_len = len;
}

int shp_pool_for(const shp_conf_t *c, queue_dispatch_t *qd)
{
    char val[128];
    shp_strip_pool_header(qd, val, sizeof(val));
    if (val[0] != '\0') {
        int p = pool_find(c, val);
        if (p >= 0)
            return p;
        char ids[17];
        log_warn("%s: X-Sluice-Pool: no pool \"%s\"; using pool %s",
                 queue_msgid_fmt(qd->qd_msgid, ids), val, c->sc_pools[c->sc_default_pool].po_name);
    } else if (qd->qd_auth_user != NULL) {
        for (int i = 0; i < c->sc_npool_users; i++)
            if (strcmp(c->sc_pool_users[2 * i], qd->qd_auth_user) == 0)
                return c->sc_pool_user_idx[i];
    }
    return c->sc_default_pool;
}

/* Smooth weighted round robin (nginx): every allowed member gains its
 * weight, the richest is picked and pays the total. Equal weights give
 * plain round robin. */
int shp_pool_pick(const shp_pool_t *p, int *cw, const bool *allowed)
{
    int best = -1, total = 0;
    for (int i = 0; i < p->po_n; i++) {
        if (!allowed[p->po_members[i]])
            continue;
        cw[i] += p->po_weight[i];
        total += p->po_weight[i];
        if (best < 0 || cw[i] > cw[best])
            best = i;
    }
    if (best < 0)
        return -1;
    cw[best] -= total;
    return p->po_members[best];
}

int shp_vmta_bind(const shp_vmta_t *vm, uv_tcp_t *tcp)
{
    if (vm->vm_source == NULL)
        return 0;
    return uv_tcp_bind(tcp, (const struct sockaddr *)&vm->vm_sa, 0);
}
