/*
 * config/snapshot.c - the life of a snapshot: references (cfg_ref,
 * cfg_unref; the last one frees it), the objects other modules attach to it
 * (cfg_ext_set), and the process-wide current one (cfg_current,
 * cfg_set_current). Calls values.c only.
 * Thread: any thread. The refcount is atomic; the current pointer is
 * guarded by current_lock.
 */
#include "config/config_int.h"

#include <openssl/crypto.h>

#include <pthread.h>
#include <stdlib.h>

_Static_assert(CFG_EXT_MAX == ARRAY_SIZE(((cfg_t *)0)->c_ext), "cfg_t.c_ext size");

/* The process-wide current snapshot (reload swaps it): one of the mutable
 * globals docs/architecture.md lists. */
static pthread_mutex_t current_lock = PTHREAD_MUTEX_INITIALIZER;
static cfg_t *current;

void cfg_free(cfg_t *c)
{
    if (c == NULL)
        return;
    char **strs[] = {&c->c_file,          &c->c_hostname,         &c->c_log_file,    &c->c_acct_dir,
                     &c->c_spool_path,    &c->c_ctl_socket,       &c->c_tls_cert,    &c->c_tls_key,
                     &c->c_dlv_resolvers, &c->c_dlv_smarthost,    &c->c_dlv_ca_file, &c->c_dlv_helo,
                     &c->c_user,          &c->c_dlv_bounce_rules, &c->c_dlv_shaping};
    for (size_t i = 0; i < ARRAY_SIZE(strs); i++)
        free(*strs[i]);
    free(c->c_ctl_http);
    free(c->c_http_listen);
    free(c->c_cl_redis);
    free(c->c_cl_node);
    free(c->c_cl_prefix);
    for (int i = 0; i < c->c_http_ntokens; i++)
        free(c->c_http_tokens[i].tk_name);
    free(c->c_acct_format);
    free(c->c_dlv_dnssec_text);
    free(c->c_tlsrpt_org);
    free(c->c_tlsrpt_contact);
    free(c->c_tlsrpt_sender);
    free(c->c_tls_dir);
    for (int i = 0; i < c->c_nusers; i++) {
        free(c->c_users[i].cu_name);
        free(c->c_users[i].cu_hash);
    }
    for (int i = 0; i < c->c_dlv_nroutes; i++) {
        free(c->c_dlv_routes[i].r_domain);
        free(c->c_dlv_routes[i].r_host);
    }
    for (int i = 0; i < c->c_dlv_ntls; i++)
        free(c->c_dlv_tls[i].tp_domain);
    free(c->c_dlv_smart.r_domain);
    free(c->c_dlv_smart.r_host);
    for (int i = CFG_EXT_MAX - 1; i >= 0; i--)
        if (c->c_ext[i] != NULL && c->c_ext_free[i] != NULL)
            c->c_ext_free[i](c->c_ext[i]);
    free(c->c_dkim_esp_domain);
    free(c->c_dkim_canon);
    free(c->c_dkim_alg);
    cfg_strv_free(c->c_dkim_headers);
    cfg_strv_free(c->c_acct_headers);
    cfg_strv_free(c->c_dkim_oversign);
    free(c->c_supp_action);
    free(c->c_bounce_domain);
    free(c->c_verp_key_file);
    free(c->c_bounce_quarantine);
    OPENSSL_cleanse(c->c_verp_key, sizeof(c->c_verp_key));
    free(c->c_supp_scope);
    free(c->c_supp_scope_header);
    cfg_strv_free(c->c_supp_categories);
    cfg_strv_free(c->c_verp_jobs);
    cfg_strv_free(c->c_supp_fold_domains);
    cfg_strv_free(c->c_supp_case_domains);
    for (int i = 0; i < c->c_dkim_nkeys; i++) {
        free(c->c_dkim_keys[i].dk_domain);
        free(c->c_dkim_keys[i].dk_selector);
        free(c->c_dkim_keys[i].dk_file);
    }
    free(c->c_dkim_keys);
    cfg_webhooks_free(c->c_webhooks, c->c_nwebhooks);
    free(c);
}

void cfg_ext_set(cfg_t *c, cfg_ext_t slot, void *obj, void (*free_fn)(void *))
{
    /* Attaching to a shared snapshot would break its immutability. */
    if ((int)slot < 0 || slot >= CFG_EXT_MAX || c->c_ext[slot] != NULL ||
        atomic_load(&c->c_refs) != 1)
        abort();
    c->c_ext[slot] = obj;
    c->c_ext_free[slot] = free_fn;
}

void *cfg_ext_get(const cfg_t *c, cfg_ext_t slot)
{
    return c != NULL && slot < CFG_EXT_MAX ? c->c_ext[slot] : NULL;
}

cfg_t *cfg_ref(cfg_t *c)
{
    if (c != NULL)
        atomic_fetch_add_explicit(&c->c_refs, 1, memory_order_relaxed);
    return c;
}

void cfg_unref(cfg_t *c)
{
    if (c == NULL)
        return;
    int old = atomic_fetch_sub_explicit(&c->c_refs, 1, memory_order_acq_rel);
    if (old <= 0)
        abort(); /* unref of a freed snapshot */
    if (old == 1)
        cfg_free(c);
}

cfg_t *cfg_current(void)
{
    pthread_mutex_lock(&current_lock);
    cfg_t *c = cfg_ref(current);
    pthread_mutex_unlock(&current_lock);
    return c;
}

void cfg_set_current(cfg_t *c)
{
    pthread_mutex_lock(&current_lock);
    cfg_t *old = current;
    current = c;
    pthread_mutex_unlock(&current_lock);
    cfg_unref(old);
}
