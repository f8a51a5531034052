/*
 * core/server/inbound_int.h - the reports that come back to the bounce
 * domain (inbound.c, docs/bounces-in.md), as reception uses them.
 */
#ifndef SLUICE_INBOUND_INT_H
#define SLUICE_INBOUND_INT_H

#include "core/base/base.h"
#include "config/config.h"
#include "queue/queue.h"

typedef enum {
    INBOUND_NO = 0,  /* not the bounce domain (or bounces.inbound off): usual rules */
    INBOUND_YES,     /* a report address: accept from anyone, never relay */
    INBOUND_REFUSED, /* a VERP address whose token is forged or expired: reply given */
} inbound_rcpt_t;

/* RCPT: is addr a report address? For INBOUND_REFUSED the reply (550
 * 5.7.1) is written to reply. Reception thread. */
inbound_rcpt_t inbound_rcpt_check(const cfg_t *cfg, const char *addr, char *reply, size_t rlen);

/* One report transaction from client ip against
 * bounces.max_messages_per_minute (a token bucket per address: a minute's
 * worth at once, then one every 60/max seconds): true when it may go on
 * (and is counted), false when the client is over the limit. Any thread. */
bool inbound_rate_take(const cfg_t *cfg, const char *ip, uint64_t now_us);

typedef struct inbound_msg {
    uint64_t im_id;        /* the reception's message id */
    const char *im_rcpt;   /* the (first) report address it came to */
    const char *im_sender; /* envelope sender ("" for <>) */
    const char *im_body;   /* the whole message, our Received first */
    size_t im_len;
    const char *im_client_ip;
} inbound_msg_t;

/* A report received (after the final dot): parse, match, write its record
 * (remote_bounce, complaint or inbound_unmatched), feed the suppression
 * list, keep an unmatched one in the quarantine. Returns what it was, for
 * the 250 reply. Reception thread. */
const char *inbound_process(queue_t *q, const cfg_t *cfg, const inbound_msg_t *m);

#endif /* SLUICE_INBOUND_INT_H */
