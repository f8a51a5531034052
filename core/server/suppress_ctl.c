/*
 * core/server/suppress_ctl.c - the control socket's `suppress` command
 * (docs/bounces-in.md, docs/records.md "suppress"):
 *
 *   {"cmd":"suppress","op":"add","addresses":[..],"scope":S,"reason":R,"expires":D}
 *   {"cmd":"suppress","op":"remove","addresses":[..],"scope":S}
 *   {"cmd":"suppress","op":"check","address":A}
 *   {"cmd":"suppress","op":"list","scope":S,"reason":R,"after":C,"limit":N}
 *   {"cmd":"suppress","op":"import","file":F,"offset":N,"reason":R,"scope":S}
 *
 * Each becomes one QREQ_SUPPRESS for the queue thread (the list's only
 * writer); list and import are paged so that no answer and no transaction
 * grows with the list: sluicectl asks again with "after" / "offset".
 * Thread: main thread only.
 */
#include "core/server/control_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SUPP_CTL_MAX_ADDRS 1000 /* per add / remove request */

static const struct {
    const char *name;
    queue_supp_op_t op;
} ops[] = {{"add", QSUPP_ADD},
           {"remove", QSUPP_REMOVE},
           {"check", QSUPP_CHECK},
           {"list", QSUPP_LIST},
           {"import", QSUPP_IMPORT}};

/* An optional string: 0 absent, 1 copied into *out, SL_EPARSE. */
static int opt_str(json_object *req, const char *key, size_t max, char **out, char *err,
                   size_t errlen)
{
    json_object *v;
    if (!json_object_object_get_ex(req, key, &v) || json_object_is_type(v, json_type_null))
        return 0;
    if (!json_object_is_type(v, json_type_string) || json_object_get_string_len(v) == 0 ||
        (size_t)json_object_get_string_len(v) > max) {
        snprintf(err, errlen, "\"%s\" must be a string of 1 to %zu bytes", key, max);
        return SL_EPARSE;
    }
    *out = xstrdup(json_object_get_string(v));
    return 1;
}

static int opt_u64(json_object *req, const char *key, uint64_t *out, char *err, size_t errlen)
{
    json_object *v;
    if (!json_object_object_get_ex(req, key, &v) || json_object_is_type(v, json_type_null))
        return 0;
    if (!json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 0) {
        snprintf(err, errlen, "\"%s\" must be a non-negative integer", key);
        return SL_EPARSE;
    }
    *out = (uint64_t)json_object_get_int64(v);
    return 1;
}

/* "addresses": [..] or "address": A into sr. */
static int addrs(json_object *req, queue_supp_req_t *sr, char *err, size_t errlen)
{
    json_object *v;
    if (json_object_object_get_ex(req, "address", &v) && json_object_is_type(v, json_type_string)) {
        sr->sr_addrs = xcalloc(1, sizeof(char *));
        sr->sr_addrs[sr->sr_naddrs++] = xstrdup(json_object_get_string(v));
        return 0;
    }
    if (!json_object_object_get_ex(req, "addresses", &v) ||
        !json_object_is_type(v, json_type_array) || json_object_array_length(v) == 0 ||
        json_object_array_length(v) > SUPP_CTL_MAX_ADDRS) {
        snprintf(err, errlen, "needs \"address\" or \"addresses\" (1 to %d)", SUPP_CTL_MAX_ADDRS);
        return SL_EPARSE;
    }
    size_t n = json_object_array_length(v);
    sr->sr_addrs = xcalloc(n, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        json_object *a = json_object_array_get_idx(v, i);
        if (!json_object_is_type(a, json_type_string)) {
            snprintf(err, errlen, "\"addresses\" must hold strings");
            return SL_EPARSE;
        }
        sr->sr_addrs[sr->sr_naddrs++] = xstrdup(json_object_get_string(a));
    }
    return 0;
}

/* Long: the checks of each operation's arguments, one after the other, so
 * that every error message a client can get is in this one place. */
int ctl_cmd_suppress(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                     char *err, size_t errlen)
{
    UNUSED(resp);
    json_object *opv;
    const char *opn =
        json_object_object_get_ex(req, "op", &opv) ? json_object_get_string(opv) : NULL;
    queue_supp_op_t op = 0;
    for (size_t i = 0; opn != NULL && i < ARRAY_SIZE(ops); i++)
        if (strcmp(opn, ops[i].name) == 0)
            op = ops[i].op;
    if (op == 0) {
        snprintf(err, errlen, "suppress needs \"op\": add, remove, check, list or import");
        return SL_EPARSE;
    }
    if (x->cx_env->ce_queue == NULL) {
        snprintf(err, errlen, "the queue is not running");
        return SL_EBUSY;
    }
    queue_supp_req_t *sr = xcalloc(1, sizeof(*sr));
    sr->sr_op = op;
    uint64_t lim = 0;
    char *expires = NULL;
    int rc = 0;
    if (opt_str(req, "scope", QUEUE_SUPP_SCOPE_MAX, &sr->sr_scope, err, errlen) < 0 ||
        opt_str(req, "reason", QUEUE_SUPP_REASON_MAX, &sr->sr_reason, err, errlen) < 0 ||
        opt_str(req, "after", 2 * (QUEUE_SUPP_ADDR_MAX + 1 + QUEUE_SUPP_SCOPE_MAX), &sr->sr_after,
                err, errlen) < 0 ||
        opt_str(req, "file", 4096, &sr->sr_file, err, errlen) < 0 ||
        opt_str(req, "expires", 32, &expires, err, errlen) < 0 ||
        opt_u64(req, "limit", &lim, err, errlen) < 0 ||
        opt_u64(req, "offset", &sr->sr_offset, err, errlen) < 0) {
        rc = SL_EPARSE;
        goto fail;
    }
    sr->sr_limit = (size_t)lim;
    if (expires != NULL) {
        uint64_t d;
        if (cfg_parse_duration(expires, &d) != 0 || d == 0) {
            snprintf(err, errlen, "\"expires\" must be a duration such as \"30d\"");
            rc = SL_EPARSE;
            goto fail;
        }
        sr->sr_expires = clock_now_s() + d;
    }
    if (op == QSUPP_ADD || op == QSUPP_REMOVE || op == QSUPP_CHECK) {
        if ((rc = addrs(req, sr, err, errlen)) != 0)
            goto fail;
        if (op == QSUPP_CHECK && sr->sr_naddrs != 1) {
            snprintf(err, errlen, "check takes one \"address\"");
            rc = SL_EPARSE;
            goto fail;
        }
    }
    if (op == QSUPP_ADD && sr->sr_reason == NULL)
        sr->sr_reason = xstrdup("operator");
    if (op == QSUPP_IMPORT && (sr->sr_file == NULL || sr->sr_file[0] != '/')) {
        snprintf(err, errlen, "import needs \"file\": an absolute path the daemon can read");
        rc = SL_EPARSE;
        goto fail;
    }
    free(expires);
    queue_req_t *r = xcalloc(1, sizeof(*r));
    r->qq_type = QREQ_SUPPRESS;
    r->qq_supp = sr;
    *qr = r;
    return CTL_ASYNC;
fail:
    free(expires);
    queue_supp_req_free(sr);
    return rc;
}
