/*
 * queue/pmtacsv.c - the accounting records as PowerMTA's accounting CSV
 * (log.accounting_format = "pmta-csv" or "both": dir/acct.csv), so that an
 * ESP's PowerMTA accounting importer reads it unchanged: PowerMTA's record
 * letters and its standard column names, a header line first, RFC 4180
 * quoting. docs/events.md lists the columns and where they differ.
 *
 * The rows are made from the JSON record lines (one source of truth): the
 * queue thread converts a flush's records before writing them.
 * Thread: any thread (pure).
 */
#include "queue/queue_int.h"

#include <json-c/json.h>
#include <string.h>

/* PowerMTA's standard columns, in its order (the acct-file default
 * record), then header_* for log.header_fields. */
static const char *const pmta_cols[] = {
    "type",
    "timeLogged",
    "timeQueued",
    "orig",
    "rcpt",
    "orcpt",
    "dsnAction",
    "dsnStatus",
    "dsnDiag",
    "dsnMta",
    "bounceCat",
    "srcType",
    "srcMta",
    "dlvType",
    "dlvSourceIp",
    "dlvDestinationIp",
    "dlvEsmtpAvailable",
    "dlvSize",
    "vmta",
    "jobId",
    "envId",
    "queue",
    "vmtaPool",
};

/* One field, quoted when RFC 4180 2.6 says so (comma, quote, CR, LF) and
 * when it starts with a character a spreadsheet would run (=, +, -, @). */
static void csv_field(buf_t *b, const char *s, bool first)
{
    if (!first)
        buf_append(b, ",", 1);
    if (s == NULL)
        return;
    bool q = strpbrk(s, ",\"\r\n") != NULL || strchr("=+-@", s[0]) != NULL;
    if (!q) {
        buf_append_str(b, s);
        return;
    }
    buf_append(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        if (*p == '"')
            buf_append(b, "\"", 1);
        buf_append(b, p, 1);
    }
    buf_append(b, "\"", 1);
}

void q_pmta_csv_header(buf_t *b, char **hdrs)
{
    for (size_t i = 0; i < ARRAY_SIZE(pmta_cols); i++)
        csv_field(b, pmta_cols[i], i == 0);
    for (char **h = hdrs; h != NULL && *h != NULL; h++) {
        buf_append_str(b, ",header_");
        buf_append_str(b, *h);
    }
    buf_append(b, "\r\n", 2);
}

static const char *jstr(json_object *o, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || json_object_is_type(v, json_type_null))
        return NULL;
    return json_object_get_string(v);
}

/* "2026-12-02T17:32:25.261Z" -> PowerMTA's "2026-12-02 17:32:25+0000". */
static const char *pmta_time(const char *t, char *dst, size_t len)
{
    if (t == NULL || strlen(t) < 19)
        return NULL;
    snprintf(dst, len, "%.10s %.8s+0000", t, t + 11);
    return dst;
}

/* The PowerMTA letter of a record type, or NULL: no such record there
 * (received, shaping, suspended, ... stay in the JSON log only). */
static const char *pmta_letter(const char *type)
{
    static const char *const map[][2] = {
        {"delivery", "d"},  {"bounce", "b"},         {"expired", "b"},   {"admin_bounce", "b"},
        {"transient", "t"}, {"remote_bounce", "rb"}, {"complaint", "f"},
    };
    for (size_t i = 0; type != NULL && i < ARRAY_SIZE(map); i++)
        if (strcmp(map[i][0], type) == 0)
            return map[i][1];
    return NULL;
}

/* One row. Long: one line per column, in the header's order. */
static void pmta_row(buf_t *b, json_object *o, const char *letter, char **hdrs)
{
    char t1[40], t2[40], diag[1200], mta[600], queue[400], size[24], st[40];
    const char *code = jstr(o, "code"), *status = jstr(o, "status"), *text = jstr(o, "text");
    const char *mx = jstr(o, "mx"), *mxip = jstr(o, "mx_ip"), *dom = jstr(o, "domain");
    const char *vmta = jstr(o, "vmta");
    /* dsnDiag: "smtp;550 5.1.1 text" for a reply, sluice's own text without it */
    if (code != NULL)
        snprintf(diag, sizeof(diag), "smtp;%s%s%s %s", code, status ? " " : "",
                 status ? status : "", text ? text : "");
    else
        snprintf(diag, sizeof(diag), "%s", text ? text : "");
    if (mx != NULL)
        snprintf(mta, sizeof(mta), "%s (%s)", mx, mxip ? mxip : "");
    snprintf(queue, sizeof(queue), "%s/%s", dom ? dom : "", vmta ? vmta : "");
    json_object *sz;
    size[0] = '\0';
    if (json_object_object_get_ex(o, "size", &sz) && !json_object_is_type(sz, json_type_null))
        snprintf(size, sizeof(size), "%s", json_object_get_string(sz));
    if (status != NULL)
        snprintf(st, sizeof(st), "%s", status);
    csv_field(b, letter, true);
    csv_field(b, pmta_time(jstr(o, "time"), t1, sizeof(t1)), false);
    csv_field(b, pmta_time(jstr(o, "arrival"), t2, sizeof(t2)), false);
    csv_field(b, jstr(o, "sender"), false);
    csv_field(b, jstr(o, "recipient"), false);
    csv_field(b, jstr(o, "orcpt"), false);
    csv_field(b, jstr(o, "dsn_action"), false);
    csv_field(b, status ? st : NULL, false);
    csv_field(b, diag[0] ? diag : NULL, false);
    csv_field(b, mx ? mta : NULL, false);
    csv_field(b, jstr(o, "category"), false);
    csv_field(b, "smtp", false);
    csv_field(b, NULL, false); /* srcMta: the submitting client's HELO is not kept */
    csv_field(b, "smtp", false);
    csv_field(b, jstr(o, "src_ip"), false);
    csv_field(b, mxip, false);
    csv_field(b, NULL, false); /* dlvEsmtpAvailable: not kept */
    csv_field(b, size[0] ? size : NULL, false);
    csv_field(b, vmta, false);
    csv_field(b, jstr(o, "job"), false);
    csv_field(b, jstr(o, "envid"), false);
    csv_field(b, dom || vmta ? queue : NULL, false);
    csv_field(b, jstr(o, "pool"), false);
    json_object *h = NULL;
    json_object_object_get_ex(o, "headers", &h);
    for (char **n = hdrs; n != NULL && *n != NULL; n++)
        csv_field(b, h ? jstr(h, *n) : NULL, false);
    buf_append(b, "\r\n", 2);
}

void q_pmta_csv_rows(buf_t *b, const char *lines, size_t len, char **hdrs)
{
    const char *p = lines, *end = lines + len;
    json_tokener *tok = json_tokener_new();
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        json_tokener_reset(tok);
        json_object *o = le > p ? json_tokener_parse_ex(tok, p, (int)(le - p)) : NULL;
        if (o != NULL) {
            const char *letter = pmta_letter(jstr(o, "type"));
            if (letter != NULL)
                pmta_row(b, o, letter, hdrs);
            json_object_put(o);
        }
        p = le + 1;
    }
    json_tokener_free(tok);
}
