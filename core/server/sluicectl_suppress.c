/*
 * core/server/sluicectl_suppress.c - `sluicectl suppress ...`: the
 * suppression list from the operator's side (docs/bounces-in.md).
 *
 *   add ADDR... [--scope S] [--reason R] [--expires D]   up to 1000 per request
 *   remove ADDR... [--scope S]                           no scope: every scope
 *   check ADDR                                           every entry in force
 *   list [--scope S] [--reason R] [--limit N]            a table (default 100)
 *   import FILE [--scope S] [--reason R]                 CSV, read by the daemon
 *   export [--scope S] [--reason R]                      CSV on stdout
 *
 * import and export are streams: the daemon reads the file in requests of
 * up to 200,000 lines (each committed in transactions of 10,000), and
 * export asks for pages of 10,000 with the cursor of the last, so neither
 * side holds the list in memory. CSV columns: address,reason,time,scope
 * (RFC 4180 quoting; time RFC 3339 or unix seconds; scope empty = global).
 * Thread: single-threaded program.
 */
#include "core/server/sluicectl_int.h"

#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT_PAGE 10000
#define LIST_DEFAULT 100

typedef struct sopts {
    const char *scope, *reason, *expires, *limit;
    const char *words[1000];
    int nwords;
} sopts_t;

/* s made safe for a terminal: control characters (C0, DEL, C1) as \xNN,
 * the rest as it is. One of 8 rotating buffers, as log_esc. */
static const char *tty(const char *s)
{
    static char bufs[8][1024];
    static int next;
    char *d = bufs[next++ & 7];
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p && o + 9 < 1024; p++) {
        bool c1 = p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f;
        if (*p < 0x20 || *p == 0x7f || c1) {
            o += (size_t)snprintf(d + o, 1024 - o, "\\x%02X", *p);
            if (c1)
                o += (size_t)snprintf(d + o, 1024 - o, "\\x%02X", *++p);
        } else {
            d[o++] = (char)*p;
        }
    }
    d[o] = '\0';
    return d;
}

static int usage(const char *why)
{
    fprintf(stderr,
            "sluicectl: %s\n"
            "usage: sluicectl suppress add ADDR... [--scope S] [--reason R] [--expires DURATION]\n"
            "       sluicectl suppress remove ADDR... [--scope S]\n"
            "       sluicectl suppress check ADDR\n"
            "       sluicectl suppress list [--scope S] [--reason R] [--limit N]\n"
            "       sluicectl suppress import FILE [--scope S] [--reason R]\n"
            "       sluicectl suppress export [--scope S] [--reason R]\n",
            why);
    return SCTL_EXIT_USAGE;
}

static int parse(const char *const *args, int nargs, sopts_t *o)
{
    for (int i = 0; i < nargs; i++) {
        const char *a = args[i], **dst = NULL;
        if (strcmp(a, "--scope") == 0)
            dst = &o->scope;
        else if (strcmp(a, "--reason") == 0)
            dst = &o->reason;
        else if (strcmp(a, "--expires") == 0)
            dst = &o->expires;
        else if (strcmp(a, "--limit") == 0 || strcmp(a, "-n") == 0)
            dst = &o->limit;
        if (dst != NULL) {
            if (++i >= nargs)
                return usage("an option needs a value");
            *dst = args[i];
        } else if (a[0] == '-' && a[1] == '-') {
            return usage("unknown option");
        } else if (o->nwords == (int)ARRAY_SIZE(o->words)) {
            return usage("too many addresses (1000 at most per command)");
        } else {
            o->words[o->nwords++] = a;
        }
    }
    return 0;
}

/* Send req, parse the answer: 0 and *out (caller puts), or an exit code
 * (said on stderr). With json, the answer line is printed as it came. */
static int ask(const char *sock, uid_t owner, json_object *req, bool json, json_object **out)
{
    buf_t resp;
    buf_init(&resp, 65536);
    int rc =
        sctl_talk(sock, json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN), owner, &resp);
    if (rc != 0) {
        buf_free(&resp);
        return rc;
    }
    json_object *r = json_tokener_parse(resp.b_data);
    if (json) {
        buf_t o;
        buf_init(&o, resp.b_len + 2);
        json_text_sanitize(&o, resp.b_data, resp.b_len);
        buf_append(&o, "\n", 1);
        fwrite(o.b_data, 1, o.b_len, stdout);
        buf_free(&o);
    }
    buf_free(&resp);
    if (r == NULL || !json_object_is_type(r, json_type_object)) {
        fprintf(stderr, "sluicectl: malformed answer from %s\n", sock);
        json_object_put(r);
        return SCTL_EXIT_CONNECT;
    }
    json_object *ok;
    if (!json_object_object_get_ex(r, "ok", &ok) || !json_object_get_boolean(ok)) {
        json_object *e = json_object_object_get(r, "error");
        fprintf(stderr, "sluicectl: %s\n", tty(e ? json_object_get_string(e) : "refused"));
        json_object_put(r);
        return SCTL_EXIT_REFUSED;
    }
    *out = r;
    return 0;
}

static json_object *req_new(const char *op, const sopts_t *o)
{
    json_object *req = json_object_new_object();
    json_object_object_add(req, "cmd", json_object_new_string("suppress"));
    json_object_object_add(req, "op", json_object_new_string(op));
    if (o->scope)
        json_object_object_add(req, "scope", json_object_new_string(o->scope));
    if (o->reason)
        json_object_object_add(req, "reason", json_object_new_string(o->reason));
    if (o->expires)
        json_object_object_add(req, "expires", json_object_new_string(o->expires));
    return req;
}

static const char *sget(json_object *o, const char *k)
{
    json_object *v = json_object_object_get(o, k);
    return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

static int64_t iget(json_object *o, const char *k)
{
    return json_object_get_int64(json_object_object_get(o, k));
}

/* One CSV field, quoted when it must be (RFC 4180). */
static void csv_put(const char *s, bool last)
{
    s = s ? s : "";
    if (strpbrk(s, ",\"\r\n") != NULL) {
        putchar('"');
        for (; *s; s++) {
            if (*s == '"')
                putchar('"');
            putchar(*s);
        }
        putchar('"');
    } else {
        fputs(s, stdout);
    }
    putchar(last ? '\n' : ',');
}

static void print_entry(json_object *e)
{
    const char *sc = sget(e, "scope"), *ex = sget(e, "expires"), *src = sget(e, "source");
    printf("%-40s %-18s %-21s %-16s %s%s%s\n", tty(sget(e, "address")), tty(sget(e, "reason")),
           tty(sget(e, "time")), sc ? tty(sc) : "(global)", ex ? "expires " : "", ex ? tty(ex) : "",
           src ? tty(src) : "");
}

static int do_list(const char *sock, uid_t owner, bool json, const sopts_t *o, bool csv)
{
    long want = csv ? LONG_MAX : LIST_DEFAULT;
    if (o->limit != NULL) {
        char *end;
        want = strtol(o->limit, &end, 10);
        if (*end != '\0' || want <= 0)
            return usage("--limit needs a positive number");
    }
    if (csv)
        printf("address,reason,time,scope\n");
    else if (!json)
        printf("%-40s %-18s %-21s %-16s %s\n", "ADDRESS", "REASON", "SINCE", "SCOPE", "SOURCE");
    char *after = NULL;
    long got = 0;
    int rc = 0;
    while (got < want) {
        json_object *req = req_new("list", o), *r = NULL;
        long page = want - got < EXPORT_PAGE ? want - got : EXPORT_PAGE;
        json_object_object_add(req, "limit", json_object_new_int64(page));
        if (after)
            json_object_object_add(req, "after", json_object_new_string(after));
        rc = ask(sock, owner, req, json && !csv, &r);
        json_object_put(req);
        if (rc != 0)
            break;
        json_object *arr = json_object_object_get(r, "entries");
        for (size_t i = 0; i < json_object_array_length(arr); i++, got++) {
            json_object *e = json_object_array_get_idx(arr, i);
            if (csv) {
                csv_put(sget(e, "address"), false);
                csv_put(sget(e, "reason"), false);
                csv_put(sget(e, "time"), false);
                csv_put(sget(e, "scope"), true);
            } else if (!json) {
                print_entry(e);
            }
        }
        const char *next = sget(r, "next");
        free(after);
        after = next ? xstrdup(next) : NULL;
        json_object_put(r);
        if (after == NULL || json)
            break;
    }
    free(after);
    fflush(stdout);
    return rc;
}

static int do_import(const char *sock, uid_t owner, bool json, const sopts_t *o)
{
    if (o->nwords != 1)
        return usage("import takes one FILE");
    char path[PATH_MAX];
    if (realpath(o->words[0], path) == NULL) {
        fprintf(stderr, "sluicectl: %s: %s\n", tty(o->words[0]), strerror(errno));
        return SCTL_EXIT_USAGE;
    }
    int64_t offset = 0, imported = 0, skipped = 0;
    for (;;) {
        json_object *req = req_new("import", o), *r = NULL;
        json_object_object_add(req, "file", json_object_new_string(path));
        json_object_object_add(req, "offset", json_object_new_int64(offset));
        int rc = ask(sock, owner, req, json, &r);
        json_object_put(req);
        if (rc != 0)
            return rc;
        imported += iget(r, "imported");
        skipped += iget(r, "skipped");
        json_object *errs = json_object_object_get(r, "errors");
        for (size_t i = 0; !json && i < json_object_array_length(errs); i++)
            fprintf(stderr, "sluicectl: %s: %s\n", tty(path),
                    tty(json_object_get_string(json_object_array_get_idx(errs, i))));
        bool done = json_object_get_boolean(json_object_object_get(r, "done"));
        int64_t next = iget(r, "offset");
        json_object_put(r);
        if (done)
            break;
        if (next <= offset) {
            fprintf(stderr, "sluicectl: import made no progress at byte %lld\n", (long long)offset);
            return SCTL_EXIT_REFUSED;
        }
        offset = next;
    }
    if (!json)
        printf("imported %lld addresses, skipped %lld lines\n", (long long)imported,
               (long long)skipped);
    return 0;
}

/* Long: one dispatch per operation, each a request and its human form. */
int sctl_suppress(const char *sock, uid_t owner, bool json, const char *limit,
                  const char *const *args, int nargs)
{
    if (nargs < 1)
        return usage("suppress needs an operation");
    const char *op = args[0];
    sopts_t o = {.limit = limit};
    int rc = parse(args + 1, nargs - 1, &o);
    if (rc != 0)
        return rc;
    if (strcmp(op, "list") == 0 || strcmp(op, "export") == 0) {
        if (o.nwords != 0)
            return usage("list and export take no addresses");
        return do_list(sock, owner, json, &o, strcmp(op, "export") == 0);
    }
    if (strcmp(op, "import") == 0)
        return do_import(sock, owner, json, &o);
    bool add = strcmp(op, "add") == 0, rem = strcmp(op, "remove") == 0,
         chk = strcmp(op, "check") == 0;
    if (!add && !rem && !chk)
        return usage("unknown suppress operation");
    if (o.nwords == 0 || (chk && o.nwords != 1))
        return usage(chk ? "check takes one address" : "give at least one address");
    json_object *req = req_new(op, &o), *r = NULL;
    if (chk) {
        json_object_object_add(req, "address", json_object_new_string(o.words[0]));
    } else {
        json_object *arr = json_object_new_array();
        for (int i = 0; i < o.nwords; i++)
            json_object_array_add(arr, json_object_new_string(o.words[i]));
        json_object_object_add(req, "addresses", arr);
    }
    rc = ask(sock, owner, req, json, &r);
    json_object_put(req);
    if (rc != 0 || json) {
        json_object_put(r);
        return rc;
    }
    if (add) {
        printf("added %lld\n", (long long)iget(r, "added"));
    } else if (rem) {
        printf("removed %lld\n", (long long)iget(r, "removed"));
    } else {
        json_object *arr = json_object_object_get(r, "entries");
        if (json_object_array_length(arr) == 0)
            printf("%s: not suppressed\n", tty(sget(r, "address")));
        for (size_t i = 0; i < json_object_array_length(arr); i++) {
            json_object *e = json_object_array_get_idx(arr, i);
            const char *sc = sget(e, "scope");
            printf("%s: suppressed (%s) in %s since %s\n", tty(sget(e, "address")),
                   tty(sget(e, "reason")), sc ? tty(sc) : "the global list", tty(sget(e, "time")));
        }
    }
    json_object_put(r);
    return 0;
}
