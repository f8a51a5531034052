/*
 * core/server/suppress_int.h - the suppression list where reception meets
 * it (suppress_rcpt.c): the check at RCPT and the "suppressed" records of
 * the recipients dropped (docs/bounces-in.md).
 */
#ifndef SLUICE_SUPPRESS_INT_H
#define SLUICE_SUPPRESS_INT_H

#include "core/base/base.h"
#include "config/config.h"
#include "queue/queue.h"

/* The recipients a transaction accepted and dropped (suppression.action =
 * drop), for their records once the message is accepted. Owned by the
 * session; smtp_drops_free accepts NULL. */
typedef struct smtp_drops smtp_drops_t;

typedef enum {
    SMTP_SUPP_PASS = 0, /* not suppressed (or not checked): go on */
    SMTP_SUPP_REJECT,   /* answer 550 5.7.1 (reply in the buffer given) */
    SMTP_SUPP_DROP,     /* answer 250, remembered in *drops, never delivered */
} smtp_supp_t;

/* Is rcpt suppressed for this sender and client (suppression.enabled; never
 * for the null sender or a postmaster recipient)? The global list, and the
 * AUTH user's with suppression.scope = auth_user. For SMTP_SUPP_REJECT the
 * reply is written to reply. Reception thread. */
smtp_supp_t smtp_supp_check(queue_t *q, const cfg_t *cfg, const char *sender, const char *rcpt,
                            const char *auth_user, smtp_drops_t **drops, char *reply, size_t rlen);
/* The entry that stops rcpt for this sender and client, in *e: the same
 * rules as smtp_supp_check (enabled, not the null sender, not postmaster,
 * the global list and the AUTH user's with scope auth_user). false when
 * mail may go, or the lookup failed (the list is advice). Any thread. */
bool supp_stops(queue_t *q, const cfg_t *cfg, const char *sender, const char *rcpt,
                const char *auth_user, queue_supp_entry_t *e);
/* suppression.scope_header, after the final dot (the header is known only
 * then): the recipients the header's tenant list stops are taken out of
 * rcpts (*nrcpt lowered, their strings freed) into *drops, whatever
 * suppression.action says (the message has one reply, not one per
 * recipient). Same exceptions as at RCPT. Returns how many. Reception
 * thread. */
int smtp_supp_scope_check(queue_t *q, const cfg_t *cfg, const char *sender, const char *msg,
                          size_t len, queue_rcpt_in_t *rcpts, int *nrcpt, smtp_drops_t **drops);
/* How many recipients were dropped. */
int smtp_drops_count(const smtp_drops_t *d);
/* The message msgid was accepted: one "suppressed" accounting record per
 * dropped recipient. Reception thread. */
void smtp_drops_record(queue_t *q, const smtp_drops_t *d, uint64_t msgid, const char *sender,
                       const char *job, const char *client_ip, const char *auth_user);
void smtp_drops_free(smtp_drops_t *d);

#endif /* SLUICE_SUPPRESS_INT_H */
