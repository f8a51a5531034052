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

/* `events`: one line per webhook. */
void sctl_print_events(json_object *r)
{
    json_object *whs = sctl_get(r, "webhooks");
    size_t n = whs ? json_object_array_length(whs) : 0;
    if (sctl_get(r, "unparked") != NULL)
        printf("unparked: %" PRIu64 " batches sent again\n", sctl_get_u64(r, "unparked"));
    printf("stream head: %" PRIu64 "\n", sctl_get_u64(r, "head"));
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
           ", max_messages_per_connection %s, %" PRIu64 " capacity replies\n",
           "", r ? json_object_get_double(r) : 0.0,
           json_object_get_boolean(sctl_get(a, "slow_start")) ? " (slow start)" : "",
           sctl_get_u64(a, "max_connections"), m, sctl_get_u64(a, "signals"));
}
