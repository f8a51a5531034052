/*
 * config/diff.c - the schema's reload column at work: which keys differ
 * between two snapshots (cfg_key_changed), how reload treats each
 * (cfg_key_apply), and the running values a new snapshot keeps for the keys
 * that need a restart (cfg_keep_restart). core/server/reload.c builds its
 * answer from these. Calls config.c (cfg_schema) only.
 * Thread: any thread.
 */
#include "config/config_int.h"

#include <stdlib.h>
#include <string.h>

cfg_apply_t cfg_key_apply(int i)
{
    int n;
    const key_def_t *keys = cfg_schema(&n);
    return i >= 0 && i < n ? keys[i].k_apply : CFG_APPLY_UNSET;
}

static bool str_ne(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") != 0;
}

static bool strv_ne(char *const *a, char *const *b)
{
    for (; a != NULL && b != NULL && *a != NULL && *b != NULL; a++, b++)
        if (strcmp(*a, *b) != 0)
            return true;
    return (a != NULL && *a != NULL) != (b != NULL && *b != NULL);
}

/* The sections and lists: one field each, compared entry by entry. */
static bool section_changed(kind_t kind, const cfg_t *a, const cfg_t *b)
{
    switch (kind) {
    case K_LISTEN:
        return a->c_smtp_nlisten != b->c_smtp_nlisten ||
               memcmp(a->c_smtp_listen, b->c_smtp_listen,
                      (size_t)b->c_smtp_nlisten * sizeof(b->c_smtp_listen[0])) != 0;
    case K_CIDRS:
        return a->c_smtp_nrelay != b->c_smtp_nrelay ||
               memcmp(a->c_smtp_relay, b->c_smtp_relay,
                      (size_t)b->c_smtp_nrelay * sizeof(b->c_smtp_relay[0])) != 0;
    case K_RETRY:
        return a->c_retry_n != b->c_retry_n ||
               memcmp(a->c_retry, b->c_retry, (size_t)b->c_retry_n * sizeof(b->c_retry[0])) != 0;
    case K_USERS:
        if (a->c_nusers != b->c_nusers)
            return true;
        for (int i = 0; i < b->c_nusers; i++)
            if (strcmp(a->c_users[i].cu_name, b->c_users[i].cu_name) != 0 ||
                strcmp(a->c_users[i].cu_hash, b->c_users[i].cu_hash) != 0)
                return true;
        return false;
    case K_TOKENS:
        if (a->c_http_ntokens != b->c_http_ntokens)
            return true;
        for (int i = 0; i < b->c_http_ntokens; i++)
            if (strcmp(a->c_http_tokens[i].tk_name, b->c_http_tokens[i].tk_name) != 0 ||
                memcmp(a->c_http_tokens[i].tk_hash, b->c_http_tokens[i].tk_hash, 32) != 0 ||
                a->c_http_tokens[i].tk_scopes != b->c_http_tokens[i].tk_scopes)
                return true;
        return false;
    case K_ROUTES:
        if (a->c_dlv_nroutes != b->c_dlv_nroutes)
            return true;
        for (int i = 0; i < b->c_dlv_nroutes; i++) {
            const struct cfg_route *x = &a->c_dlv_routes[i], *y = &b->c_dlv_routes[i];
            if (strcmp(x->r_domain, y->r_domain) != 0 || x->r_port != y->r_port ||
                str_ne(x->r_host, y->r_host))
                return true;
        }
        return false;
    case K_TLSMAP:
        if (a->c_dlv_ntls != b->c_dlv_ntls)
            return true;
        for (int i = 0; i < b->c_dlv_ntls; i++)
            if (strcmp(a->c_dlv_tls[i].tp_domain, b->c_dlv_tls[i].tp_domain) != 0 ||
                a->c_dlv_tls[i].tp_policy != b->c_dlv_tls[i].tp_policy)
                return true;
        return false;
    case K_DKIMKEYS:
        if (a->c_dkim_nkeys != b->c_dkim_nkeys)
            return true;
        for (int i = 0; i < b->c_dkim_nkeys; i++) {
            const cfg_dkim_key_t *x = &a->c_dkim_keys[i], *y = &b->c_dkim_keys[i];
            if (strcmp(x->dk_domain, y->dk_domain) != 0 ||
                strcmp(x->dk_selector, y->dk_selector) != 0 || strcmp(x->dk_file, y->dk_file) != 0)
                return true;
        }
        return false;
    case K_WEBHOOKS:
        return cfg_webhooks_differ(a, b);
    default:
        abort(); /* not a section: a bug in the caller */
    }
}

bool cfg_key_changed(int i, const cfg_t *a, const cfg_t *b)
{
    int n;
    const key_def_t *keys = cfg_schema(&n);
    if (i < 0 || i >= n)
        return false;
    const key_def_t *k = &keys[i];
    const void *fa = (const char *)a + k->k_off, *fb = (const char *)b + k->k_off;
    switch (k->k_kind) {
    case K_STR:
    case K_PATH:
    case K_SOCKET:
    case K_HOSTNAME:
    case K_RESOLVERS:
    case K_REDIS:
    case K_HOSTPORT:
    case K_IPPORT:
        return str_ne(*(char *const *)fa, *(char *const *)fb);
    case K_INT:
    case K_MODE:
    case K_TLSPOL:
        return *(const int *)fa != *(const int *)fb;
    case K_LEVEL:
        return *(const log_level_t *)fa != *(const log_level_t *)fb;
    case K_SYNC:
        return *(const cfg_sync_t *)fa != *(const cfg_sync_t *)fb;
    case K_BARENL:
        return *(const cfg_barenl_t *)fa != *(const cfg_barenl_t *)fb;
    case K_SIZE:
    case K_DUR:
    case K_DUR_MS:
        return *(const uint64_t *)fa != *(const uint64_t *)fb;
    case K_BOOL:
        return *(const bool *)fa != *(const bool *)fb;
    case K_HDRLIST:
        return strv_ne(*(char **const *)fa, *(char **const *)fb);
    case K_ADDRS: {
        const cfg_addrs_t *la = fa, *lb = fb;
        return la->ca_n != lb->ca_n ||
               memcmp(la->ca_a, lb->ca_a, (size_t)lb->ca_n * sizeof(lb->ca_a[0])) != 0;
    }
    default:
        return section_changed(k->k_kind, a, b);
    }
}

/* Keep one RESTART key's running value. The kinds below are those a
 * RESTART key may have: config_test changes every RESTART key and checks
 * that reload keeps it. */
static void keep_value(const key_def_t *k, cfg_t *nc, const cfg_t *old)
{
    void *fn = (char *)nc + k->k_off;
    const void *fo = (const char *)old + k->k_off;
    switch (k->k_kind) {
    case K_STR:
    case K_PATH:
    case K_SOCKET:
    case K_HOSTNAME:
    case K_RESOLVERS:
    case K_REDIS:
    case K_IPPORT: {
        char **dst = fn;
        const char *src = *(char *const *)fo;
        free(*dst);
        *dst = src ? xstrdup(src) : NULL;
        return;
    }
    case K_INT:
    case K_MODE:
        *(int *)fn = *(const int *)fo;
        return;
    case K_SYNC:
        *(cfg_sync_t *)fn = *(const cfg_sync_t *)fo;
        return;
    case K_SIZE:
    case K_DUR:
    case K_DUR_MS:
        *(uint64_t *)fn = *(const uint64_t *)fo;
        return;
    case K_BOOL:
        *(bool *)fn = *(const bool *)fo;
        return;
    case K_LISTEN:
        nc->c_smtp_nlisten = old->c_smtp_nlisten;
        memcpy(nc->c_smtp_listen, old->c_smtp_listen, sizeof(nc->c_smtp_listen));
        return;
    case K_ADDRS:
        memcpy(fn, fo, sizeof(cfg_addrs_t));
        return;
    case K_HDRLIST: {
        char ***dst = fn;
        char *const *src = *(char **const *)fo;
        size_t n = 0;
        while (src != NULL && src[n] != NULL)
            n++;
        cfg_strv_free(*dst);
        *dst = src ? xcalloc(n + 1, sizeof(char *)) : NULL;
        for (size_t i = 0; i < n; i++)
            (*dst)[i] = xstrdup(src[i]);
        return;
    }
    case K_WEBHOOKS:
        cfg_webhooks_free(nc->c_webhooks, nc->c_nwebhooks);
        nc->c_webhooks = cfg_webhooks_dup(old->c_webhooks, old->c_nwebhooks);
        nc->c_nwebhooks = old->c_nwebhooks;
        return;
    default:
        abort(); /* a RESTART key of a kind not kept: a bug in the schema */
    }
}

void cfg_keep_restart(cfg_t *nc, const cfg_t *old)
{
    int n;
    const key_def_t *keys = cfg_schema(&n);
    for (int i = 0; i < n; i++)
        if (keys[i].k_apply == CFG_APPLY_RESTART)
            keep_value(&keys[i], nc, old);
}
