/*
 * core/server/reload.c - `sluicectl reload` and SIGHUP: re-read the file the
 * daemon was started with and hand the new snapshot to every thread
 * (docs/operations.md, "reload and SIGHUP").
 *
 * What changed, and whether it applies now or needs a restart, comes from
 * the schema's reload column (config.h: cfg_key_apply, cfg_key_changed,
 * cfg_keep_restart); the shaping file and the bounce rules are checked
 * before anything changes and read again every time.
 * Thread: main thread only.
 */
#include "core/server/control_int.h"
#include "core/server/notify_int.h"
#include "delivery/delivery.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Add name to arr (and to the log line) unless it is there already. */
static void diff_add(json_object *arr, buf_t *log, const char *name)
{
    for (size_t i = 0; i < json_object_array_length(arr); i++)
        if (strcmp(json_object_get_string(json_object_array_get_idx(arr, i)), name) == 0)
            return;
    json_object_array_add(arr, json_object_new_string(name));
    buf_printf(log, "%s%s", log->b_len ? "," : "", name);
}

/* Did the key at path change between a and b? */
static bool key_changed(const char *path, const cfg_t *a, const cfg_t *b)
{
    const char *name;
    for (int i = 0; (name = cfg_key_name(i, NULL)) != NULL; i++)
        if (strcmp(name, path) == 0)
            return cfg_key_changed(i, a, b);
    abort(); /* not a key of the schema: a bug here */
}

static int reload_run(const control_env_t *env, json_object *resp, char *err, size_t errlen)
{
    char lerr[1024];
    cfg_t *old = cfg_current(), *nc = NULL;
    if (old == NULL) {
        snprintf(err, errlen, "reload: no configuration in force");
        return SL_ECONFIG;
    }
    const char *file = old->c_file;
    int rc = strcmp(file, "(default)") == 0 ? cfg_default(&nc, lerr, sizeof(lerr))
                                            : cfg_load(file, &nc, lerr, sizeof(lerr));
    if (rc != 0) {
        snprintf(err, errlen, "reload refused, the running configuration is unchanged: %s", lerr);
        log_warn("%s", err);
        cfg_unref(old);
        return SL_ECONFIG;
    }
    /* traffic shaping and bounce rules: checked before anything changes */
    struct dlv *dlv = env->ce_dlv;
    if (dlv != NULL && (dlv_shaping_check(nc->c_dlv_shaping, lerr, sizeof(lerr)) != 0 ||
                        dlv_rules_install(nc, lerr, sizeof(lerr)) != 0)) {
        snprintf(err, errlen, "reload refused, the running configuration is unchanged: %s", lerr);
        log_warn("%s", err);
        cfg_unref(nc);
        cfg_unref(old);
        return SL_ECONFIG;
    }
    /* every key whose value changed, by the schema's reload column */
    json_object *applied = json_object_new_array(), *restart = json_object_new_array();
    buf_t la, lr;
    buf_init(&la, 256);
    buf_init(&lr, 256);
    const char *name;
    for (int i = 0; (name = cfg_key_name(i, NULL)) != NULL; i++) {
        if (!cfg_key_changed(i, old, nc))
            continue;
        bool live = cfg_key_apply(i) == CFG_APPLY_LIVE;
        diff_add(live ? applied : restart, live ? &la : &lr, name);
    }
    /* delivery threads: destinations resolve their route again */
    bool reroute = key_changed("delivery.routes", old, nc) ||
                   key_changed("delivery.tls_policy", old, nc) ||
                   key_changed("delivery.port", old, nc) || key_changed("delivery.tls", old, nc) ||
                   key_changed("delivery.smarthost", old, nc);

    if (dlv != NULL) { /* the files are read again even when their names did not change */
        bool vm = false;
        if (dlv_shaping_reload(dlv, nc->c_dlv_shaping, &vm, lerr, sizeof(lerr)) != 0)
            log_warn("reload: shaping: %s", lerr); /* changed since the check: old one kept */
        diff_add(applied, &la, "delivery.shaping");
        diff_add(applied, &la, "delivery.bounce_rules");
        if (vm)
            diff_add(restart, &lr, "delivery.shaping virtual_mtas/pools");
    }
    cfg_keep_restart(nc, old); /* nothing half-applies */
    if (nc->c_log_level != old->c_log_level)
        __atomic_store_n(&log_level_current, (int)nc->c_log_level, __ATOMIC_RELAXED);
    if (env->ce_smtp != NULL)
        smtp_server_set_config(env->ce_smtp, nc);
    if (env->ce_queue != NULL)
        queue_set_config(env->ce_queue, nc);
    (void)reroute;
    if (dlv != NULL)
        dlv_set_config(dlv, nc, reroute);
    log_info("config reloaded from %s: applied=[%.*s] needs_restart=[%.*s]", file, (int)la.b_len,
             la.b_data, (int)lr.b_len, lr.b_data);
    if (resp != NULL) {
        json_object_object_add(resp, "file", json_object_new_string(file));
        json_object_object_add(resp, "applied", applied);
        json_object_object_add(resp, "needs_restart", restart);
    } else {
        json_object_put(applied);
        json_object_put(restart);
    }
    buf_free(&la);
    buf_free(&lr);
    cfg_set_current(nc); /* takes over our reference */
    cfg_unref(old);
    return CTL_REPLY;
}

/* Under systemd (Type=notify) the reload is bracketed by RELOADING=1 and
 * READY=1, so that `systemctl reload` waits for its end whichever way it was
 * asked for (the unit's ExecReload, SIGHUP, `sluicectl reload`). */
int ctl_reload(const control_env_t *env, json_object *resp, char *err, size_t errlen)
{
    SL_ASSERT_MAIN_THREAD();
    srv_notify_reloading();
    int rc = reload_run(env, resp, err, errlen);
    srv_notify_ready(rc == CTL_REPLY ? "running; configuration reloaded"
                                     : "running; reload refused, the configuration is unchanged");
    return rc;
}
