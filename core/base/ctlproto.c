/*
 * ctlproto.c - the control protocol's framing and formatting, shared by the
 * daemon's control socket (core/server/control.c) and sluicectl.
 *
 * Requests and responses are JSON lines. ctl_line_next() frames bytes into
 * lines with a length limit, ctl_request_parse() checks a request's shape,
 * ctl_response_append() serialises a response. ctl_fmt_bytes() and
 * ctl_fmt_duration() are sluicectl's human forms.
 *
 * Thread: every function is pure or works on caller-owned data; any thread.
 */
#include "core/base/base.h"

#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

int ctl_line_next(const char *data, size_t len, size_t max, size_t *line_len, size_t *used)
{
    size_t scan = MIN(len, max + 2); /* room for the line, "\r" and "\n" */
    const char *nl = memchr(data, '\n', scan);
    /* Without a newline yet, max + 1 bytes may still be a line and its "\r". */
    if (nl == NULL)
        return len > max + 1 ? SL_ETOOLONG : 0;
    size_t n = (size_t)(nl - data);
    size_t u = n + 1;
    if (n > 0 && data[n - 1] == '\r')
        n--;
    if (n > max)
        return SL_ETOOLONG;
    *line_len = n;
    *used = u;
    return 1;
}

int ctl_request_parse(const char *line, size_t len, struct json_object **req, const char **cmd,
                      char *err, size_t errlen)
{
    json_tokener *tok = json_tokener_new();
    if (tok == NULL) {
        snprintf(err, errlen, "out of memory");
        return SL_EPARSE;
    }
    json_object *obj = json_tokener_parse_ex(tok, line, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    if (obj == NULL || jerr != json_tokener_success) {
        if (jerr == json_tokener_continue)
            snprintf(err, errlen, "malformed JSON: unexpected end of data");
        else
            snprintf(err, errlen, "malformed JSON: %s", json_tokener_error_desc(jerr));
        goto fail;
    }
    /* Only whitespace may follow the object. */
    for (size_t i = json_tokener_get_parse_end(tok); i < len; i++) {
        if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r') {
            snprintf(err, errlen, "malformed JSON: trailing data after the request object");
            goto fail;
        }
    }
    if (!json_object_is_type(obj, json_type_object)) {
        snprintf(err, errlen, "request must be a JSON object");
        goto fail;
    }
    json_object *c;
    if (!json_object_object_get_ex(obj, "cmd", &c) || !json_object_is_type(c, json_type_string)) {
        snprintf(err, errlen, "missing \"cmd\" string");
        goto fail;
    }
    json_tokener_free(tok);
    *req = obj;
    *cmd = json_object_get_string(c);
    return 0;
fail:
    json_object_put(obj);
    json_tokener_free(tok);
    return SL_EPARSE;
}

void ctl_response_append(buf_t *out, struct json_object *resp)
{
    size_t n;
    const char *s = json_object_to_json_string_length(
        resp, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
    buf_reserve(out, n + 1);
    json_text_sanitize(out, s, n); /* peer text inside: valid UTF-8, no controls */
    buf_append(out, "\n", 1);
}

void ctl_error_append(buf_t *out, const char *msg)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "ok", json_object_new_boolean(0));
    json_object_object_add(o, "error", json_object_new_string(msg));
    ctl_response_append(out, o);
    json_object_put(o);
}

char *ctl_fmt_bytes(uint64_t n, char *dst, size_t len)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    if (n < 1024) {
        snprintf(dst, len, "%" PRIu64 " B", n);
        return dst;
    }
    double v = (double)n;
    size_t u = 0;
    while (v >= 1024.0 && u + 1 < ARRAY_SIZE(units)) {
        v /= 1024.0;
        u++;
    }
    /* 1023.96 KiB would print as "1024.0 KiB": carry into the next unit. */
    if (v >= 1023.95 && u + 1 < ARRAY_SIZE(units)) {
        v /= 1024.0;
        u++;
    }
    snprintf(dst, len, "%.1f %s", v, units[u]);
    return dst;
}

char *ctl_fmt_duration(uint64_t s, char *dst, size_t len)
{
    uint64_t d = s / 86400, h = s % 86400 / 3600, m = s % 3600 / 60, sec = s % 60;
    if (d > 0)
        snprintf(dst, len, "%" PRIu64 "d %" PRIu64 "h", d, h);
    else if (h > 0)
        snprintf(dst, len, "%" PRIu64 "h %" PRIu64 "m", h, m);
    else if (m > 0)
        snprintf(dst, len, "%" PRIu64 "m %" PRIu64 "s", m, sec);
    else
        snprintf(dst, len, "%" PRIu64 "s", sec);
    return dst;
}
