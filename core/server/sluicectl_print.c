/*
 * core/server/sluicectl_print.c - sluicectl's human output of `events`
 * (the webhooks' cursors, lag and parked batches, docs/events.md) and
 * `tlsrpt` (the TLSRPT counters, docs/tlsrpt.md), the learned values of
 * `providers` (adaptive mode, docs/shaping.md); `--json` prints the
 * answer as it came.
 */
#include "core/server/sluicectl_int.h"

#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

int sctl_events_request(const char *const *args, int nargs, const char *limit, char **line)
{
    json_object *req = json_object_new_object();
    json_object_object_add(req, "cmd", json_object_new_string("events"));
    bool ok = limit == NULL && (nargs == 0 || nargs == 2 || nargs == 4 || nargs == 6);
    if (ok && nargs == 2 && strcmp(args[0], "unpark") == 0) {
        json_object_object_add(req, "unpark", json_object_new_string(args[1]));
    } else if (ok && nargs >= 4 && strcmp(args[0], "replay") == 0) {
        json_object_object_add(req, "replay", json_object_new_string(args[1]));
        for (int i = 2; ok && i + 1 < nargs; i += 2) {
            const char *key = strcmp(args[i], "--since") == 0   ? "since"
                              : strcmp(args[i], "--until") == 0 ? "until"
                                                                : NULL;
            ok = key != NULL && !json_object_object_get_ex(req, key, NULL);
            if (ok)
                json_object_object_add(req, key, json_object_new_string(args[i + 1]));
        }
        ok = ok && json_object_object_get_ex(req, "since", NULL);
    } else if (nargs != 0) {
        ok = false;
    }
    if (ok)
        *line = xstrdup(json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN |
                                                                JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(req);
    return ok ? 0 : -1;
}

/* `events`: one line per webhook. */
void sctl_print_events(json_object *r)
{
    json_object *whs = sctl_get(r, "webhooks");
    size_t n = whs ? json_object_array_length(whs) : 0;
    if (sctl_get(r, "unparked") != NULL)
        printf("unparked: %" PRIu64 " batches sent again\n", sctl_get_u64(r, "unparked"));
    json_object *rs = sctl_get(r, "replay_started");
    if (rs != NULL)
        printf("replay to %s started: records from %s to %s\n", sctl_get_str(rs, "webhook"),
               sctl_get_str(rs, "since"), sctl_get_str(rs, "until"));
    printf("stream head: %" PRIu64 ", stored: %" PRIu64 "\n", sctl_get_u64(r, "head"),
           sctl_get_u64(r, "stored"));
    if (n == 0) {
        printf("no webhook is configured (events.webhooks)\n");
        return;
    }
    printf("%-16s %10s %10s %8s %9s %7s %12s  %s\n", "WEBHOOK", "CURSOR", "LAG", "LAG_S",
           "IN_FLIGHT", "PARKED", "SENT", "LAST_ERROR");
    for (size_t i = 0; i < n; i++) {
        json_object *w = json_object_array_get_idx(whs, i);
        json_object *pk = sctl_get(w, "parked");
        const char *le = sctl_get_str(w, "last_error");
        printf("%-16s %10" PRIu64 " %10" PRIu64 " %8" PRIu64 " %9" PRIu64 " %7zu %12" PRIu64
               "  %.*s\n",
               sctl_get_str(w, "name") ? sctl_get_str(w, "name") : "?", sctl_get_u64(w, "cursor"),
               sctl_get_u64(w, "lag_records"), sctl_get_u64(w, "lag_seconds"),
               sctl_get_u64(w, "in_flight"), pk ? json_object_array_length(pk) : 0,
               sctl_get_u64(w, "sent_records"), sctl_utf8_cut(le ? le : "-", 60), le ? le : "-");
        for (size_t k = 0; pk != NULL && k < json_object_array_length(pk); k++) {
            json_object *p = json_object_array_get_idx(pk, k);
            printf("  parked: records %" PRIu64 "-%" PRIu64 " (sluicectl events unpark %s)\n",
                   sctl_get_u64(p, "first"), sctl_get_u64(p, "last"), sctl_get_str(w, "name"));
        }
        json_object *rp = sctl_get(w, "replay");
        if (rp != NULL) {
            const char *e = sctl_get_str(rp, "last_error");
            printf("  replay: %s, records from %s to %s: %" PRIu64 " sent, file %" PRIu64
                   " of %" PRIu64 "%s%s\n",
                   sctl_get_str(rp, "state"), sctl_get_str(rp, "since"), sctl_get_str(rp, "until"),
                   sctl_get_u64(rp, "sent_records"), sctl_get_u64(rp, "files_read"),
                   sctl_get_u64(rp, "files"), e ? ", last error: " : "", e ? e : "");
        }
        if (sctl_get_u64(w, "dropped_records") > 0)
            printf("  dropped: %" PRIu64 " records unsent (events.max_backlog, events_dropped "
                   "records)\n",
                   sctl_get_u64(w, "dropped_records"));
    }
}

/* `tlsrpt`: one line per policy domain and type, then its failures. */
void sctl_print_tlsrpt(json_object *r)
{
    if (sctl_get(r, "reports") != NULL) { /* tlsrpt send --now */
        printf("%" PRIu64 " TLSRPT report(s) being sent\n", sctl_get_u64(r, "reports"));
        return;
    }
    json_object *doms = sctl_get(r, "domains");
    size_t nd = doms ? json_object_array_length(doms) : 0;
    printf("TLSRPT counters of %s (UTC)\n", sctl_get_str(r, "day") ? sctl_get_str(r, "day") : "?");
    if (nd == 0) {
        printf("no TLS session counted\n");
        return;
    }
    printf("%-40s %-16s %10s %10s\n", "DOMAIN", "POLICY", "SUCCESSFUL", "FAILED");
    for (size_t i = 0; i < nd; i++) {
        json_object *d = json_object_array_get_idx(doms, i), *pols = sctl_get(d, "policies");
        for (size_t j = 0; pols && j < json_object_array_length(pols); j++) {
            json_object *p = json_object_array_get_idx(pols, j), *fs = sctl_get(p, "failures");
            printf("%-40s %-16s %10" PRIu64 " %10" PRIu64 "\n", sctl_get_str(d, "domain"),
                   sctl_get_str(p, "policy_type"), sctl_get_u64(p, "successful"),
                   sctl_get_u64(p, "failed"));
            for (size_t k = 0; fs && k < json_object_array_length(fs); k++) {
                json_object *f = json_object_array_get_idx(fs, k);
                const char *mx = sctl_get_str(f, "receiving_mx_hostname");
                const char *ip = sctl_get_str(f, "receiving_ip");
                printf("    %-28s %s[%s] %" PRIu64 "\n", sctl_get_str(f, "result_type"),
                       mx ? mx : "-", ip ? ip : "-", sctl_get_u64(f, "count"));
            }
        }
    }
}

/* The status answer's "cluster": one line (nothing for a single node). */
void sctl_print_status_cluster(json_object *c)
{
    if (c == NULL || !json_object_is_type(c, json_type_object))
        return;
    const char *node = sctl_get_str(c, "node"), *redis = sctl_get_str(c, "redis");
    uint64_t n = sctl_get_u64(c, "node_count");
    if (json_object_get_boolean(sctl_get(c, "redis_up")))
        printf("\nCluster: node %s, redis %s up, %" PRIu64 " node%s sharing limits\n",
               node ? node : "?", redis ? redis : "?", n, n == 1 ? "" : "s");
    else
        printf("\nCluster: node %s, redis %s DOWN (%s): local limits = shared limit / %" PRIu64
               "\n",
               node ? node : "?", redis ? redis : "?",
               sctl_get_str(c, "reason") ? sctl_get_str(c, "reason") : "?", n);
}

/* `cluster`: this node and Redis, the nodes seen, this node's leases, the
 * shared state (each queue's last event). */
void sctl_print_cluster(json_object *r)
{
    if (!json_object_get_boolean(sctl_get(r, "enabled"))) {
        printf("one node: no cluster { redis } is configured (nothing is shared)\n");
        return;
    }
    sctl_print_status_cluster(r);
    json_object *a = sctl_get(r, "nodes");
    printf("\n%-24s %-26s\n", "NODE", "LAST_SEEN");
    for (size_t i = 0; a != NULL && i < json_object_array_length(a); i++) {
        json_object *e = json_object_array_get_idx(a, i);
        printf("%-24s %-26s%s\n", sctl_get_str(e, "node"), sctl_get_str(e, "last_seen"),
               json_object_get_boolean(sctl_get(e, "self")) ? " (this node)" : "");
    }
    a = sctl_get(r, "leases");
    printf("\n%-32s %-12s %10s %6s %10s %12s\n", "LEASE", "KIND", "LIMIT", "HELD", "AVAILABLE",
           "GRANTED");
    for (size_t i = 0; a != NULL && i < json_object_array_length(a); i++) {
        json_object *e = json_object_array_get_idx(a, i);
        char lim[32] = "-", held[16] = "-";
        if (sctl_get(e, "limit") != NULL)
            snprintf(lim, sizeof(lim), "%.6g", json_object_get_double(sctl_get(e, "limit")));
        if (sctl_get(e, "held") != NULL)
            snprintf(held, sizeof(held), "%" PRIu64, sctl_get_u64(e, "held"));
        printf("%-32s %-12s %10s %6s %10" PRIu64 " %12" PRIu64 "\n", sctl_get_str(e, "name"),
               sctl_get_str(e, "kind"), lim, held, sctl_get_u64(e, "available"),
               sctl_get_u64(e, "granted"));
    }
    a = sctl_get(r, "adaptive");
    if (a != NULL && json_object_array_length(a) > 0) {
        printf("\n%-32s %-7s %10s %6s %6s %8s\n", "ADAPTIVE", "SHARED", "RATE", "CONNS", "MSGS",
               "VERSION");
        for (size_t i = 0; i < json_object_array_length(a); i++) {
            json_object *e = json_object_array_get_idx(a, i);
            char rate[32] = "-", c[16] = "-", m[16] = "-";
            if (sctl_get(e, "rate") != NULL)
                snprintf(rate, sizeof(rate), "%.4g", json_object_get_double(sctl_get(e, "rate")));
            if (sctl_get(e, "max_connections") != NULL)
                snprintf(c, sizeof(c), "%" PRIu64, sctl_get_u64(e, "max_connections"));
            if (sctl_get(e, "max_messages_per_connection") != NULL)
                snprintf(m, sizeof(m), "%" PRIu64, sctl_get_u64(e, "max_messages_per_connection"));
            printf("%-32s %-7s %10s %6s %6s %8" PRIu64 "\n", sctl_get_str(e, "name"),
                   json_object_get_boolean(sctl_get(e, "shared")) ? "yes" : "no", rate, c, m,
                   sctl_get_u64(e, "version"));
        }
    }
    a = sctl_get(r, "state");
    printf("\n%-20s %-12s %-14s %-10s %s\n", "PROVIDER", "VMTA", "EVENT", "NODE", "TIME");
    for (size_t i = 0; a != NULL && i < json_object_array_length(a); i++) {
        json_object *e = json_object_array_get_idx(a, i);
        const char *vm = sctl_get_str(e, "vmta");
        printf("%-20s %-12s %-14s %-10s %s\n", sctl_get_str(e, "provider"), vm ? vm : "*",
               sctl_get_str(e, "event"), sctl_get_str(e, "node"), sctl_get_str(e, "time"));
    }
}

/* "  adaptive: rate 17.0/s, max_connections 3, max_messages_per_connection 5,
 * 7 capacity replies" under the queue's row of `providers`. */
void sctl_print_adaptive(json_object *q)
{
    json_object *a = sctl_get(q, "adaptive");
    if (a == NULL)
        return;
    char m[32] = "-";
    if (sctl_get(a, "max_messages_per_connection") != NULL)
        snprintf(m, sizeof(m), "%" PRIu64, sctl_get_u64(a, "max_messages_per_connection"));
    json_object *r = sctl_get(a, "rate");
    printf("%-20s adaptive: rate %.1f/s%s, max_connections %" PRIu64
           ", max_messages_per_connection %s, %" PRIu64 " capacity replies%s\n",
           "", r ? json_object_get_double(r) : 0.0,
           json_object_get_boolean(sctl_get(a, "slow_start")) ? " (slow start)" : "",
           sctl_get_u64(a, "max_connections"), m, sctl_get_u64(a, "signals"),
           json_object_get_boolean(sctl_get(a, "shared")) ? ", shared (the cluster's)" : "");
}
