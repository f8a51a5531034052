/*
 * inject_req.c - POST /api/inject/v1's body, from JSON to a checked
 * inj_req_t (inject_int.h).
 *
 *   inj_parse / inj_req_free
 *
 * Every field is checked before anything is rendered or queued, so a bad
 * request queues nothing: a body that is not JSON is 400 bad_json; a
 * missing field, a wrong type, an unknown field (the objects are closed,
 * a typo is not ignored), a bad address or more recipients than allowed is
 * 422 with the path of the field at fault ("recipients[2].email"). The
 * field names are KumoMTA's; docs/http-api.md lists the differences.
 *
 * Thread: any thread (pure).
 */
#include "core/server/inject_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int check_closed(json_object *o, const char *const *known, const char *path, inj_err_t *e);
static int get_string(json_object *o, const char *key, const char *path, bool required,
                      const char **out, inj_err_t *e);
static int check_subst(json_object *o, const char *path, inj_err_t *e);
static int check_address(const char *addr, const char *field, bool *utf8, inj_err_t *e);
static int check_rcpt(inj_req_t *r, inj_rcpt_t *rc, json_object *o, const char *path, inj_err_t *e);
static int parse_recipients(inj_req_t *r, json_object *arr, const inj_limits_t *lim, inj_err_t *e);
static int parse_content(inj_req_t *r, json_object *c, inj_err_t *e);
static int check_builder(json_object *b, inj_err_t *e);

int inj_err_set(inj_err_t *e, int status, const char *code, const char *field, const char *fmt, ...)
{
    e->ie_status = status;
    e->ie_code = code;
    snprintf(e->ie_field, sizeof(e->ie_field), "%s", field ? field : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->ie_message, sizeof(e->ie_message), fmt, ap);
    va_end(ap);
    return -1;
}

static const char *type_name(json_object *o)
{
    switch (json_object_get_type(o)) {
    case json_type_null:
        return "null";
    case json_type_boolean:
        return "boolean";
    case json_type_double:
    case json_type_int:
        return "number";
    case json_type_object:
        return "object";
    case json_type_array:
        return "array";
    case json_type_string:
        return "string";
    }
    return "value";
}

/* An object that may hold only the keys in known (NULL-terminated). */
static int check_closed(json_object *o, const char *const *known, const char *path, inj_err_t *e)
{
    json_object_object_foreach(o, key, val)
    {
        (void)val;
        bool ok = false;
        for (int i = 0; known[i] != NULL && !ok; i++)
            ok = strcmp(key, known[i]) == 0;
        if (!ok) {
            char f[160];
            snprintf(f, sizeof(f), "%s%s%.100s", path, path[0] ? "." : "", key);
            return inj_err_set(e, 422, "unknown_field", f, "unknown field \"%.100s\"", key);
        }
    }
    return 0;
}

/* o[key] as a string; absent or null is NULL unless required. The
 * field's path is formatted only for an error (this runs a few times per
 * recipient). */
static int get_string(json_object *o, const char *key, const char *path, bool required,
                      const char **out, inj_err_t *e)
{
    char f[160];
    json_object *v = NULL;
    *out = NULL;
    if (!json_object_object_get_ex(o, key, &v) || v == NULL) {
        if (!required)
            return 0;
        snprintf(f, sizeof(f), "%s%s%s", path, path[0] ? "." : "", key);
        return inj_err_set(e, 422, "missing_field", f, "%s is required", f);
    }
    if (!json_object_is_type(v, json_type_string)) {
        snprintf(f, sizeof(f), "%s%s%s", path, path[0] ? "." : "", key);
        return inj_err_set(e, 422, "wrong_type", f, "%s must be a string, not a %s", f,
                           type_name(v));
    }
    const char *s = json_object_get_string(v);
    if (strlen(s) != (size_t)json_object_get_string_len(v)) {
        snprintf(f, sizeof(f), "%s%s%s", path, path[0] ? "." : "", key);
        return inj_err_set(e, 422, "bad_value", f, "%s contains a NUL character", f);
    }
    *out = s;
    return 0;
}

/* Substitutions: an object of strings, numbers and booleans. */
static int check_subst(json_object *o, const char *path, inj_err_t *e)
{
    if (!json_object_is_type(o, json_type_object))
        return inj_err_set(e, 422, "wrong_type", path, "%s must be an object, not a %s", path,
                           type_name(o));
    json_object_object_foreach(o, key, val)
    {
        char f[160];
        json_type t = json_object_get_type(val);
        if (val == NULL || t == json_type_object || t == json_type_array || t == json_type_null) {
            snprintf(f, sizeof(f), "%s.%.100s", path, key);
            return inj_err_set(e, 422, "wrong_type", f,
                               "%s must be a string, a number or a boolean, not a %s", f,
                               val ? type_name(val) : "null");
        }
        if (t == json_type_string &&
            strlen(json_object_get_string(val)) != (size_t)json_object_get_string_len(val)) {
            snprintf(f, sizeof(f), "%s.%.100s", path, key);
            return inj_err_set(e, 422, "bad_value", f, "%s contains a NUL character", f);
        }
    }
    return 0;
}

/* An envelope address: local@domain, RFC 5321 syntax (UTF-8 allowed, then
 * the message needs SMTPUTF8). */
static int check_address(const char *addr, const char *field, bool *utf8, inj_err_t *e)
{
    *utf8 = false;
    const char *at = strrchr(addr, '@');
    if (addr[0] == '\0' || at == NULL || at == addr || at[1] == '\0' ||
        smtp_addr_check(addr, utf8) != 0)
        return inj_err_set(e, 422, "bad_address", field, "%s: \"%.100s\" is not an address", field,
                           addr);
    return 0;
}

/* A display name: one line of text (it goes into a header). */
static int check_phrase(const char *s, const char *field, inj_err_t *e)
{
    if (strpbrk(s, "\r\n") != NULL || strlen(s) > 500)
        return inj_err_set(e, 422, "bad_value", field, "%s must be one line of at most 500 bytes",
                           field);
    return 0;
}

/* Check recipients[i] into rc. path: "recipients[i]" for the error's
 * field, or "" on the first pass (no path formatted: this runs once per
 * recipient, and its snprintf calls showed in the profile); the caller
 * runs it again with the path when it fails. */
static int check_rcpt(inj_req_t *r, inj_rcpt_t *rc, json_object *o, const char *path, inj_err_t *e)
{
    static const char *const known[] = {"email", "name", "substitutions", NULL};
    char f[80] = "";
    bool named = path[0] != '\0';
    if (o == NULL || !json_object_is_type(o, json_type_object))
        return inj_err_set(e, 422, "wrong_type", path, "%s must be an object, not a %s", path,
                           o ? type_name(o) : "null");
    if (check_closed(o, known, path, e) < 0 ||
        get_string(o, "email", path, true, &rc->ir_email, e) < 0 ||
        get_string(o, "name", path, false, &rc->ir_name, e) < 0)
        return -1;
    if (named)
        snprintf(f, sizeof(f), "%s.email", path);
    if (check_address(rc->ir_email, f, &rc->ir_utf8, e) < 0)
        return -1;
    if (named)
        snprintf(f, sizeof(f), "%s.name", path);
    if (rc->ir_name != NULL && check_phrase(rc->ir_name, f, e) < 0)
        return -1;
    json_object *s = NULL;
    if (json_object_object_get_ex(o, "substitutions", &s) && s != NULL) {
        if (named)
            snprintf(f, sizeof(f), "%s.substitutions", path);
        if (check_subst(s, f, e) < 0)
            return -1;
        if (json_object_object_length(s) > 0) {
            rc->ir_subst = s;
            r->ir_personal = true;
        }
    }
    if (rc->ir_name != NULL)
        r->ir_personal = true;
    return 0;
}

static int parse_recipients(inj_req_t *r, json_object *arr, const inj_limits_t *lim, inj_err_t *e)
{
    if (!json_object_is_type(arr, json_type_array))
        return inj_err_set(e, 422, "wrong_type", "recipients",
                           "recipients must be an array, not a %s", type_name(arr));
    size_t n = json_object_array_length(arr);
    if (n == 0)
        return inj_err_set(e, 422, "missing_field", "recipients", "recipients is empty");
    if (n > (size_t)lim->il_max_rcpts)
        return inj_err_set(e, 422, "too_many_recipients", "recipients",
                           "%zu recipients, at most %d in one request (http.max_recipients)", n,
                           lim->il_max_rcpts);
    r->ir_rcpts = xcalloc(n, sizeof(*r->ir_rcpts));
    r->ir_nrcpt = (int)n;
    for (size_t i = 0; i < n; i++) {
        json_object *o = json_object_array_get_idx(arr, i);
        if (check_rcpt(r, &r->ir_rcpts[i], o, "", e) < 0) {
            char path[64];
            snprintf(path, sizeof(path), "recipients[%zu]", i);
            check_rcpt(r, &r->ir_rcpts[i], o, path, e); /* the same failure, with its field */
            return -1;
        }
    }
    return 0;
}

/* A header field name: printable ASCII without ':' (RFC 5322 §3.6.8). */
static bool header_name_ok(const char *s)
{
    if (s[0] == '\0' || strlen(s) > 76)
        return false;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 33 || *p > 126 || *p == ':')
            return false;
    return true;
}

/* type/subtype, tokens only (RFC 2045 §5.1). */
static bool content_type_ok(const char *s)
{
    const char *slash = strchr(s, '/');
    if (slash == NULL || slash == s || slash[1] == '\0' || strlen(s) > 200)
        return false;
    for (const char *p = s; *p; p++) {
        if (p == slash)
            continue;
        if (*p <= ' ' || *p >= 127 || strchr("()<>@,;:\\\"/[]?=", *p) != NULL)
            return false;
    }
    return true;
}

static int check_attachments(json_object *arr, inj_err_t *e)
{
    static const char *const known[] = {"content_type", "file_name", "base64", NULL};
    if (!json_object_is_type(arr, json_type_array))
        return inj_err_set(e, 422, "wrong_type", "content.attachments",
                           "content.attachments must be an array, not a %s", type_name(arr));
    size_t n = json_object_array_length(arr);
    for (size_t i = 0; i < n; i++) {
        char path[64], f[96];
        snprintf(path, sizeof(path), "content.attachments[%zu]", i);
        json_object *a = json_object_array_get_idx(arr, i);
        const char *ct, *fn, *b64;
        if (a == NULL || !json_object_is_type(a, json_type_object))
            return inj_err_set(e, 422, "wrong_type", path, "%s must be an object", path);
        if (check_closed(a, known, path, e) < 0 ||
            get_string(a, "content_type", path, true, &ct, e) < 0 ||
            get_string(a, "file_name", path, false, &fn, e) < 0 ||
            get_string(a, "base64", path, true, &b64, e) < 0)
            return -1;
        snprintf(f, sizeof(f), "%s.content_type", path);
        if (!content_type_ok(ct))
            return inj_err_set(e, 422, "bad_value", f,
                               "%s: \"%.100s\" is not a type/subtype such as application/pdf", f,
                               ct);
        snprintf(f, sizeof(f), "%s.file_name", path);
        if (fn != NULL && (fn[0] == '\0' || strlen(fn) > 255 || strpbrk(fn, "\r\n\"\\") != NULL))
            return inj_err_set(e, 422, "bad_value", f,
                               "%s: empty, over 255 bytes, or with a quote, backslash or line "
                               "break",
                               f);
        /* base64 is checked when decoded (inject_mime.c): the same code */
    }
    return 0;
}

static int check_builder(json_object *b, inj_err_t *e)
{
    static const char *const known[] = {"from",    "subject",     "text_body", "html_body",
                                        "headers", "attachments", "reply_to",  NULL};
    static const char *const addr_known[] = {"email", "name", NULL};
    if (check_closed(b, known, "content", e) < 0)
        return -1;
    const char *s;
    json_object *v;
    for (int k = 0; k < 2; k++) {
        const char *key = k == 0 ? "from" : "reply_to";
        char path[32];
        snprintf(path, sizeof(path), "content.%s", key);
        if (!json_object_object_get_ex(b, key, &v) || v == NULL) {
            if (k == 0)
                return inj_err_set(e, 422, "missing_field", path, "%s is required", path);
            continue;
        }
        if (!json_object_is_type(v, json_type_object))
            return inj_err_set(e, 422, "wrong_type", path,
                               "%s must be an object {\"email\", \"name\"}, not a %s", path,
                               type_name(v));
        const char *em, *nm;
        bool u;
        char f[48];
        snprintf(f, sizeof(f), "%s.email", path);
        if (check_closed(v, addr_known, path, e) < 0 ||
            get_string(v, "email", path, true, &em, e) < 0 ||
            get_string(v, "name", path, false, &nm, e) < 0 || check_address(em, f, &u, e) < 0)
            return -1;
        snprintf(f, sizeof(f), "%s.name", path);
        if (nm != NULL && check_phrase(nm, f, e) < 0)
            return -1;
    }
    if (get_string(b, "subject", "content", false, &s, e) < 0 ||
        get_string(b, "text_body", "content", false, &s, e) < 0)
        return -1;
    const char *html;
    if (get_string(b, "html_body", "content", false, &html, e) < 0)
        return -1;
    if (s == NULL && html == NULL)
        return inj_err_set(e, 422, "missing_field", "content.text_body",
                           "the builder needs text_body, html_body or both");
    if (json_object_object_get_ex(b, "headers", &v) && v != NULL) {
        if (!json_object_is_type(v, json_type_object))
            return inj_err_set(e, 422, "wrong_type", "content.headers",
                               "content.headers must be an object, not a %s", type_name(v));
        json_object_object_foreach(v, name, val)
        {
            char f[160];
            snprintf(f, sizeof(f), "content.headers.%.100s", name);
            if (!header_name_ok(name))
                return inj_err_set(e, 422, "bad_header", f, "\"%.100s\" is not a header name",
                                   name);
            if (strcasecmp(name, "MIME-Version") == 0 || strcasecmp(name, "Content-Type") == 0 ||
                strcasecmp(name, "Content-Transfer-Encoding") == 0)
                return inj_err_set(e, 422, "reserved_header", f,
                                   "%s is written by the builder; send a complete message as "
                                   "content to set it",
                                   name);
            if (val == NULL || !json_object_is_type(val, json_type_string))
                return inj_err_set(e, 422, "wrong_type", f, "%s must be a string", f);
        }
    }
    if (json_object_object_get_ex(b, "attachments", &v) && v != NULL && check_attachments(v, e) < 0)
        return -1;
    return 0;
}

static int parse_content(inj_req_t *r, json_object *c, inj_err_t *e)
{
    if (json_object_is_type(c, json_type_string)) {
        r->ir_raw = json_object_get_string(c);
        r->ir_raw_len = (size_t)json_object_get_string_len(c);
        if (r->ir_raw_len == 0)
            return inj_err_set(e, 422, "missing_field", "content", "content is empty");
        if (memchr(r->ir_raw, '\0', r->ir_raw_len) != NULL)
            return inj_err_set(e, 422, "bad_value", "content", "content contains a NUL");
        return 0;
    }
    if (!json_object_is_type(c, json_type_object))
        return inj_err_set(e, 422, "wrong_type", "content",
                           "content must be a message (string) or a builder (object), not a %s",
                           type_name(c));
    r->ir_builder = c;
    return check_builder(c, e);
}

/* The pool and job names: what an operator types in a config or a
 * header, so printable ASCII without spaces. */
static int check_name(const char *s, const char *field, inj_err_t *e)
{
    size_t n = strlen(s);
    if (n == 0 || n > 200)
        return inj_err_set(e, 422, "bad_value", field, "%s must be 1 to 200 characters", field);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= ' ' || (unsigned char)s[i] >= 127)
            return inj_err_set(e, 422, "bad_value", field,
                               "%s: printable ASCII without spaces only", field);
    return 0;
}

/* deferred_until and priority (docs/http-api.md): both set the first
 * attempt time of every recipient, the queue's order (the scheduler has no
 * priority classes). null is the same as absent. *first = 0: at once. */
static int parse_when(json_object *root, const inj_limits_t *lim, uint64_t *first, inj_err_t *e)
{
    json_object *v;
    uint64_t now = lim->il_now_s ? lim->il_now_s : clock_now_s();
    *first = 0;
    if (json_object_object_get_ex(root, "deferred_until", &v) && v != NULL) {
        uint64_t us;
        if (!json_object_is_type(v, json_type_string))
            return inj_err_set(e, 422, "wrong_type", "deferred_until",
                               "deferred_until must be a string (RFC 3339, UTC)");
        if (time_parse_rfc3339(json_object_get_string(v), &us) != 0)
            return inj_err_set(e, 422, "bad_value", "deferred_until",
                               "deferred_until: not an RFC 3339 time such as "
                               "\"2026-12-24T18:00:00Z\"");
        uint64_t s = us / 1000000u;
        if (lim->il_max_age > 0 && s > now + lim->il_max_age)
            return inj_err_set(e, 422, "bad_value", "deferred_until",
                               "deferred_until is further ahead than queue.max_age (%llus): the "
                               "message would expire before its first attempt",
                               (unsigned long long)lim->il_max_age);
        *first = s > now ? s : 0; /* the past: at once */
    }
    if (json_object_object_get_ex(root, "priority", &v) && v != NULL) {
        if (!json_object_is_type(v, json_type_int))
            return inj_err_set(e, 422, "wrong_type", "priority",
                               "priority must be an integer from 0 to 100");
        int64_t p = json_object_get_int64(v);
        if (p < 0 || p > 100)
            return inj_err_set(e, 422, "bad_value", "priority",
                               "priority must be an integer from 0 to 100");
        if (*first == 0 && p > 0) /* queued as if received p minutes earlier */
            *first = now - (uint64_t)p * 60;
    }
    return 0;
}

int inj_parse(const char *body, size_t len, const inj_limits_t *lim, inj_req_t **out, inj_err_t *e)
{
    static const char *const known[] = {
        "envelope_sender", "recipients",     "content", "substitutions", "job", "pool",
        "priority",        "deferred_until", NULL};
    json_tokener *tok = json_tokener_new_ex((int)(lim->il_max_depth ? lim->il_max_depth : 32));
    json_object *root = json_tokener_parse_ex(tok, body, (int)len);
    enum json_tokener_error jerr = json_tokener_get_error(tok);
    size_t used = json_tokener_get_parse_end(tok);
    json_tokener_free(tok);
    if (root == NULL || jerr != json_tokener_success) {
        json_object_put(root);
        return inj_err_set(e, 400, "bad_json", "", "the body is not JSON: %s",
                           jerr == json_tokener_continue ? "it ends too early"
                                                         : json_tokener_error_desc(jerr));
    }
    for (; used < len; used++) {
        if (strchr(" \t\r\n", body[used]) == NULL) {
            json_object_put(root);
            return inj_err_set(e, 400, "bad_json", "", "the body has more after its JSON value");
        }
    }
    inj_req_t *r = xcalloc(1, sizeof(*r));
    r->ir_root = root;
    json_object *v;
    if (!json_object_is_type(root, json_type_object)) {
        inj_err_set(e, 422, "wrong_type", "", "the body must be a JSON object");
        goto fail;
    }
    if (check_closed(root, known, "", e) < 0 ||
        get_string(root, "envelope_sender", "", true, &r->ir_sender, e) < 0 ||
        check_address(r->ir_sender, "envelope_sender", &r->ir_sender_utf8, e) < 0)
        goto fail;
    if (get_string(root, "job", "", false, &r->ir_job, e) < 0 ||
        (r->ir_job != NULL && check_name(r->ir_job, "job", e) < 0) ||
        get_string(root, "pool", "", false, &r->ir_pool, e) < 0 ||
        (r->ir_pool != NULL && check_name(r->ir_pool, "pool", e) < 0))
        goto fail;
    if (parse_when(root, lim, &r->ir_first, e) < 0)
        goto fail;
    if (json_object_object_get_ex(root, "substitutions", &v) && v != NULL) {
        if (check_subst(v, "substitutions", e) < 0)
            goto fail;
        r->ir_subst = v;
    }
    if (!json_object_object_get_ex(root, "recipients", &v) || v == NULL) {
        inj_err_set(e, 422, "missing_field", "recipients", "recipients is required");
        goto fail;
    }
    if (parse_recipients(r, v, lim, e) < 0)
        goto fail;
    if (!json_object_object_get_ex(root, "content", &v) || v == NULL) {
        inj_err_set(e, 422, "missing_field", "content", "content is required");
        goto fail;
    }
    if (parse_content(r, v, e) < 0)
        goto fail;
    *out = r;
    return 0;
fail:
    inj_req_free(r);
    return -1;
}

void inj_req_free(inj_req_t *r)
{
    if (r == NULL)
        return;
    json_object_put(r->ir_root);
    free(r->ir_rcpts);
    free(r);
}
