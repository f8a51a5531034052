/*
 * config/webhooks.c - the events { webhooks { NAME { ... } } } section:
 * where the event stream goes (docs/events.md). Each webhook has a URL
 * (https://, or http:// on loopback for tests and benchmarks), a secret
 * for the HMAC signature, the record types it takes, its batching and its
 * retry schedule. Calls values.c only.
 * Thread: any thread (a load in progress).
 */
#include "config/config_int.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int wh_parse(loader_t *ld, const char *path, const cfg_node_t *sec, cfg_webhook_t *w);

/* A duration in milliseconds in [lo, hi]. */
static int wh_dur(loader_t *ld, const char *path, const cfg_node_t *n, uint64_t lo, uint64_t hi,
                  uint64_t *out)
{
    uint64_t ms;
    if (n->n_type != CFG_NODE_STR || cfg_parse_dur_ms(n->n_str, &ms) < 0 || ms < lo || ms > hi) {
        ld_error(ld, n->n_line, "%s.%s: expected a duration from %llums to %llus", path, n->n_key,
                 (unsigned long long)lo, (unsigned long long)(hi / 1000));
        return SL_ECONFIG;
    }
    *out = ms;
    return 0;
}

static bool wh_url_ok(const char *u)
{
    if (strncasecmp(u, "https://", 8) == 0)
        return u[8] != '\0';
    /* plain http only to loopback: an event stream in clear text over a
     * network would carry recipients' addresses */
    return strncasecmp(u, "http://127.", 11) == 0 || strncasecmp(u, "http://[::1]", 12) == 0 ||
           strncasecmp(u, "http://localhost", 16) == 0;
}

static int wh_parse(loader_t *ld, const char *path, const cfg_node_t *sec, cfg_webhook_t *w)
{
    w->wh_batch = 100;
    w->wh_max_latency_ms = 1000;
    w->wh_timeout_ms = 30000;
    w->wh_retry_initial_ms = 1000;
    w->wh_retry_max_ms = 600000;
    for (const cfg_node_t *n = sec->n_child; n != NULL; n = n->n_next) {
        const char *k = n->n_key;
        if (strcmp(k, "types") == 0) {
            if (n->n_type != CFG_NODE_LIST) {
                ld_error(ld, n->n_line, "%s.types: expected a list of record types", path);
                return SL_ECONFIG;
            }
            int cnt = 0;
            for (const cfg_node_t *it = n->n_child; it != NULL; it = it->n_next)
                cnt++;
            cfg_strv_free(w->wh_types);
            w->wh_types = xcalloc((size_t)cnt + 1, sizeof(char *));
            int i = 0;
            for (const cfg_node_t *it = n->n_child; it != NULL; it = it->n_next) {
                for (const char *p = it->n_str; *p; p++)
                    if (!islower((unsigned char)*p) && *p != '_') {
                        ld_error(ld, it->n_line, "%s.types: \"%s\" is not a record type", path,
                                 it->n_str);
                        return SL_ECONFIG;
                    }
                w->wh_types[i++] = xstrdup(it->n_str);
            }
            continue;
        }
        if (n->n_type != CFG_NODE_STR) {
            ld_error(ld, n->n_line, "%s.%s: expected a value", path, k);
            return SL_ECONFIG;
        }
        uint64_t v;
        if (strcmp(k, "url") == 0) {
            if (!wh_url_ok(n->n_str)) {
                ld_error(
                    ld, n->n_line,
                    "%s.url: expected an https:// URL (http:// only to loopback), got \"%.80s\"",
                    path, n->n_str);
                return SL_ECONFIG;
            }
            ld_set_str(&w->wh_url, n->n_str);
        } else if (strcmp(k, "secret") == 0) {
            ld_set_str(&w->wh_secret, n->n_str);
        } else if (strcmp(k, "ca_file") == 0) {
            ld_set_str(&w->wh_ca_file, n->n_str);
        } else if (strcmp(k, "batch") == 0) {
            if (cfg_parse_uint(n->n_str, &v) < 0 || v < 1 || v > 10000) {
                ld_error(ld, n->n_line, "%s.batch: expected 1..10000 records", path);
                return SL_ECONFIG;
            }
            w->wh_batch = (int)v;
        } else if (strcmp(k, "max_latency") == 0) {
            if (wh_dur(ld, path, n, 0, 3600000, &w->wh_max_latency_ms) < 0)
                return SL_ECONFIG;
        } else if (strcmp(k, "timeout") == 0) {
            if (wh_dur(ld, path, n, 100, 3600000, &w->wh_timeout_ms) < 0)
                return SL_ECONFIG;
        } else if (strcmp(k, "retry_initial") == 0) {
            if (wh_dur(ld, path, n, 10, 86400000, &w->wh_retry_initial_ms) < 0)
                return SL_ECONFIG;
        } else if (strcmp(k, "retry_max") == 0) {
            if (wh_dur(ld, path, n, 10, 86400000, &w->wh_retry_max_ms) < 0)
                return SL_ECONFIG;
        } else {
            ld_error(ld, n->n_key_line, "unknown key \"%s.%s\"", path, k);
            return SL_ECONFIG;
        }
    }
    if (w->wh_url == NULL) {
        ld_error(ld, sec->n_line, "%s: url is required", path);
        return SL_ECONFIG;
    }
    if (w->wh_secret == NULL || strlen(w->wh_secret) < 16) {
        ld_error(ld, sec->n_line, "%s: secret is required (16 characters or more)", path);
        return SL_ECONFIG;
    }
    if (w->wh_retry_max_ms < w->wh_retry_initial_ms)
        w->wh_retry_max_ms = w->wh_retry_initial_ms;
    return 0;
}

void cfg_webhooks_free(cfg_webhook_t *v, int n)
{
    for (int i = 0; i < n; i++) {
        free(v[i].wh_name);
        free(v[i].wh_url);
        free(v[i].wh_secret);
        free(v[i].wh_ca_file);
        cfg_strv_free(v[i].wh_types);
    }
    free(v);
}

int ld_set_webhooks(loader_t *ld, const key_def_t *k, const cfg_node_t *sec)
{
    cfg_t *c = ld->l_cfg;
    int n = 0;
    for (const cfg_node_t *d = sec->n_child; d != NULL; d = d->n_next)
        n++;
    if (n > CFG_MAX_WEBHOOKS) {
        ld_error(ld, sec->n_line, "%s: at most %d webhooks", k->k_path, CFG_MAX_WEBHOOKS);
        return SL_ECONFIG;
    }
    cfg_webhook_t *v = xcalloc((size_t)n + 1, sizeof(*v));
    int i = 0;
    for (const cfg_node_t *d = sec->n_child; d != NULL; d = d->n_next, i++) {
        char path[200];
        snprintf(path, sizeof(path), "%s.%s", k->k_path, d->n_key);
        bool bad = d->n_type != CFG_NODE_SECTION || d->n_key[0] == '\0' || strlen(d->n_key) > 63 ||
                   strspn(d->n_key, "abcdefghijklmnopqrstuvwxyz"
                                    "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                    "0123456789-_.") != strlen(d->n_key);
        for (int j = 0; !bad && j < i; j++)
            bad = strcmp(v[j].wh_name, d->n_key) == 0;
        if (bad) {
            ld_error(ld, d->n_key_line,
                     "%s: expected a section with a new name of letters, digits, '-', '_', '.'",
                     path);
            cfg_webhooks_free(v, i);
            return SL_ECONFIG;
        }
        v[i].wh_name = xstrdup(d->n_key);
        if (wh_parse(ld, path, d, &v[i]) != 0) {
            cfg_webhooks_free(v, i + 1);
            return SL_ECONFIG;
        }
    }
    cfg_webhooks_free(c->c_webhooks, c->c_nwebhooks);
    c->c_webhooks = v;
    c->c_nwebhooks = n;
    return 0;
}

bool cfg_webhooks_differ(const cfg_t *a, const cfg_t *b)
{
    if (a->c_nwebhooks != b->c_nwebhooks)
        return true;
    for (int i = 0; i < a->c_nwebhooks; i++) {
        const cfg_webhook_t *x = &a->c_webhooks[i], *y = &b->c_webhooks[i];
        if (strcmp(x->wh_name, y->wh_name) != 0 || strcmp(x->wh_url, y->wh_url) != 0 ||
            strcmp(x->wh_secret, y->wh_secret) != 0 || x->wh_batch != y->wh_batch ||
            x->wh_max_latency_ms != y->wh_max_latency_ms)
            return true;
    }
    return false;
}

cfg_webhook_t *cfg_webhooks_dup(const cfg_webhook_t *v, int n)
{
    cfg_webhook_t *d = xcalloc((size_t)n + 1, sizeof(*d));
    for (int i = 0; i < n; i++) {
        d[i] = v[i];
        d[i].wh_name = xstrdup(v[i].wh_name);
        d[i].wh_url = xstrdup(v[i].wh_url);
        d[i].wh_secret = xstrdup(v[i].wh_secret);
        d[i].wh_ca_file = v[i].wh_ca_file ? xstrdup(v[i].wh_ca_file) : NULL;
        d[i].wh_types = NULL;
        if (v[i].wh_types != NULL) {
            int m = 0;
            while (v[i].wh_types[m] != NULL)
                m++;
            d[i].wh_types = xcalloc((size_t)m + 1, sizeof(char *));
            for (int j = 0; j < m; j++)
                d[i].wh_types[j] = xstrdup(v[i].wh_types[j]);
        }
    }
    return d;
}
