/*
 * core/server/control_int.h - private to core/server: the three parts of
 * the control socket (docs/operations.md).
 *
 *   control.c   the socket, its connections, one request line -> one
 *               handler -> one answer line; the queue requests in flight
 *   commands.c  the handlers (ctl_cmd_find) and the answers of the queue
 *               requests (ctl_queue_answer)
 *   reload.c    reload and SIGHUP (ctl_reload)
 *
 * The calls go control.c -> commands.c -> reload.c and never back: a
 * handler answers in resp, or prepares a queue request that control.c
 * sends and answers.
 * Thread: main thread only, for everything here.
 */
#ifndef SLUICE_CONTROL_INT_H
#define SLUICE_CONTROL_INT_H

#include "core/server/ops_int.h"

#include <json-c/json.h>

/* What a handler sees of the control socket. */
typedef struct ctl_ctx {
    const control_env_t *cx_env;
    const char *cx_hostname;
} ctl_ctx_t;

/* A handler's result: CTL_REPLY, resp is the answer ("ok":true is in it
 * already); CTL_REPLY_SHUTDOWN, the same, then the daemon shuts down once
 * it is written; CTL_ASYNC, *qr is a queue request for control.c to send
 * (its answer is ctl_queue_answer's); negative, an error, its message in
 * err (or sl_strerror of the code). */
enum { CTL_REPLY = 0, CTL_ASYNC = 1, CTL_REPLY_SHUTDOWN = 2 };
typedef int (*ctl_handler_fn)(const ctl_ctx_t *x, json_object *req, json_object *resp,
                              queue_req_t **qr, char *err, size_t errlen);

/* The handler of command name, or NULL for an unknown command. */
ctl_handler_fn ctl_cmd_find(const char *name);
/* What the HTTP admin API asks of a caller for command name: CTL_READ or
 * CTL_ADMIN (also for an unknown name). Any thread (a constant table). */
ctl_scope_t ctl_cmd_scope(const char *name);
/* The answer line's object for a request the queue thread has answered
 * (caller puts); it may set r->qq_error. */
json_object *ctl_queue_answer(const control_env_t *env, queue_req_t *r);
/* Free a queue request a handler made (its result too). NULL is fine. */
void ctl_queue_req_free(queue_req_t *r);

/* `suppress` (suppress_ctl.c): the suppression list's requests, sent to
 * the queue thread as QREQ_SUPPRESS (docs/bounces-in.md). */
int ctl_cmd_suppress(const ctl_ctx_t *x, json_object *req, json_object *resp, queue_req_t **qr,
                     char *err, size_t errlen);

/* Re-read the configuration (ops_int.h's control_reload, for a control
 * env). */
int ctl_reload(const control_env_t *env, json_object *resp, char *err, size_t errlen);

#endif /* SLUICE_CONTROL_INT_H */
