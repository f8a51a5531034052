/*
 * queue/events_int.h - private to the event stream's two files: events.c
 * (the stream, the webhook thread) and evreplay.c (`events replay`: the
 * accounting files sent again to a webhook, docs/events.md).
 */
#ifndef SLUICE_QUEUE_EVENTS_INT_H
#define SLUICE_QUEUE_EVENTS_INT_H

#include "queue/queue_int.h"

#include <json-c/json.h>
#include <openssl/evp.h>
#include <pthread.h>

#define EV_SIG_MAX (2 * EVP_MAX_MD_SIZE + 1)

/* evreplay.c (shared with events.c). The signature of body for w: ts gets the unix seconds (text),
 * sig the hex HMAC-SHA256 over "ts.body" (docs/events.md). Any thread. */
void q_ev_sign(const cfg_webhook_t *w, const char *body, size_t len, char ts[24],
               char sig[EV_SIG_MAX]);
/* The type of a record line ({"type":"delivery",...}): its length (0: none). */
size_t q_ev_line_type(const char *line, size_t len, const char **type);
/* Does w take records of this type (its `types`)? */
bool q_ev_type_taken(const cfg_webhook_t *w, const char *type, size_t tl);

/* evreplay.c: one webhook's replay, a best-effort stream of its own (its
 * own POSTs, marked X-Sluice-Replay: 1; the cursor never moves). Made and
 * run on the webhook thread; its progress is shared under *lock. */
typedef struct ev_replay ev_replay_t;
ev_replay_t *ev_replay_new(uv_loop_t *loop, http_client_t *http, const cfg_webhook_t *w,
                           const char *acct_dir, pthread_mutex_t *lock);
/* Start sending the records of [since, until] (unix us). Webhook thread. */
void ev_replay_start(ev_replay_t *r, uint64_t since_us, uint64_t until_us);
/* A replay is running. *lock held. */
bool ev_replay_running(const ev_replay_t *r);
/* Its progress (docs/records.md, ctl/events "replay"); NULL before any.
 * *lock held. */
struct json_object *ev_replay_json(const ev_replay_t *r);
/* At the thread's stop, before http_client_free: the timer closes, a POST
 * in flight is forgotten. Webhook thread. */
void ev_replay_stop(ev_replay_t *r);
/* After the loop closed. NULL allowed. */
void ev_replay_free(ev_replay_t *r);

#endif /* SLUICE_QUEUE_EVENTS_INT_H */
