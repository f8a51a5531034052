/*
 * core/server/inject_int.h - private to core/server: the HTTP injection
 * API's request (POST /api/inject/v1, docs/http-api.md) from JSON to
 * RFC 5322 messages.
 *
 *   inject_req.c   inj_parse: the JSON body, checked field by field into
 *                  an inj_req_t (or one error naming the field at fault)
 *   inject_mime.c  inj_render: one message (a recipient's, or the one
 *                  shared by every recipient): {{ placeholders }} filled,
 *                  the builder's MIME tree or the raw message, headers
 *                  encoded (RFC 2047) and folded, bodies quoted-printable
 *                  or base64 as needed, Message-ID and Date
 *
 * Both are pure (no loop, no globals): the fuzz target
 * (tests/fuzz/fuzz_inject.c) and the unit test drive them directly.
 * Thread: any thread; an inj_req_t belongs to one thread at a time.
 */
#ifndef SLUICE_INJECT_INT_H
#define SLUICE_INJECT_INT_H

#include "core/base/base.h"

#include <json-c/json.h>

/* One error, the JSON answer's {"error": {code, field, message}}. */
typedef struct inj_err {
    int ie_status;        /* HTTP status: 400, 413, 422 */
    const char *ie_code;  /* stable code (docs/http-api.md lists them) */
    char ie_field[160];   /* "recipients[3].email", "" when no field is at fault */
    char ie_message[320]; /* for a human */
} inj_err_t;

/* Fill e (status, code, field, printf message); returns -1. */
int inj_err_set(inj_err_t *e, int status, const char *code, const char *field, const char *fmt, ...)
    PRINTF_LIKE(5, 6);

typedef struct inj_limits {
    int il_max_rcpts;    /* recipients per request */
    size_t il_max_msg;   /* bytes of one rendered message (smtp.max_message_size) */
    size_t il_max_depth; /* JSON nesting */
    uint64_t il_now_s;   /* the time deferred_until is measured from */
    uint64_t il_max_age; /* queue.max_age: deferred_until at most this far ahead */
} inj_limits_t;

typedef struct inj_rcpt {
    const char *ir_email;  /* borrowed from the request's JSON */
    const char *ir_name;   /* or NULL */
    json_object *ir_subst; /* an object, or NULL */
    bool ir_utf8;          /* non-ASCII address: SMTPUTF8 */
} inj_rcpt_t;

/* A checked request. Every string is borrowed from ir_root. */
typedef struct inj_req {
    json_object *ir_root;
    const char *ir_sender;
    bool ir_sender_utf8;
    int ir_nrcpt;
    inj_rcpt_t *ir_rcpts;
    json_object *ir_subst; /* shared substitutions (object) or NULL */
    const char *ir_raw;    /* content as a complete message, or NULL */
    size_t ir_raw_len;
    json_object *ir_builder; /* content as a builder object, or NULL */
    const char *ir_job;      /* or NULL: the message's job (X-Sluice-Job) */
    const char *ir_pool;     /* or NULL: X-Sluice-Pool */
    bool ir_personal;        /* some recipient has a name or substitutions */
    uint64_t ir_first;       /* unix s of the first attempt (deferred_until, priority); 0 = now */
} inj_req_t;

/* Parse and check a request body. 0 and *out (free with inj_req_free),
 * or -1 with e filled. */
int inj_parse(const char *body, size_t len, const inj_limits_t *lim, inj_req_t **out, inj_err_t *e);
void inj_req_free(inj_req_t *r);

/* What a rendered message needs besides the request. */
typedef struct inj_ctx {
    const char *ic_hostname;  /* Received: by, Message-ID's right side */
    const char *ic_client_ip; /* Received: from */
    const char *ic_proto;     /* "HTTP" or "HTTPS" */
    uint64_t ic_msgid;        /* the queue id, in Received: and Message-ID */
    uint64_t ic_now;          /* unix seconds: Date */
    const char *ic_date;      /* ic_now by inj_date (once per request), or NULL */
    buf_t *ic_scratch;        /* NULL, or two buffers inj_render reuses from one call to
                                 the next (the caller inits and frees them) */
} inj_ctx_t;

/* now as an RFC 5322 date ("Thu, 03 Dec 2026 06:30:00 +0000") into dst;
 * returns dst. */
const char *inj_date(uint64_t now, char *dst, size_t len);

/* The result of inj_render beyond 0 and -1: the shared message refers to
 * a recipient's own {{ email }} or {{ name }}, so each recipient needs its
 * own message. */
#define INJ_PERSONAL 1

/* Render the message of recipient ri (0 .. ir_nrcpt-1), or with ri = -1
 * the message shared by every recipient (To: from the builder's headers,
 * else "undisclosed-recipients:;"), into out (appended): CRLF line ends,
 * no line over 998 bytes, not dot-stuffed; *eightbit says whether the body
 * has 8-bit bytes (a raw message's). 0, INJ_PERSONAL (ri = -1 only), or -1
 * with e filled (nothing useful in out). */
int inj_render(const inj_req_t *r, int ri, const inj_ctx_t *cx, buf_t *out, bool *eightbit,
               inj_err_t *e);

/* Template expansion, exposed for the unit test: {{ name }} and
 * {{ name | default("text") }}; html escapes the values. Looks names up
 * in the recipient's substitutions, then the shared ones, then the
 * recipient's email and name (ri >= 0). 0, INJ_PERSONAL or -1. */
int inj_expand(const inj_req_t *r, int ri, const char *tpl, size_t len, bool html, buf_t *out,
               const char *field, inj_err_t *e);

#endif /* SLUICE_INJECT_INT_H */
