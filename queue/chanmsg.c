/*
 * queue/chanmsg.c - destructors of the messages that cross the queue's
 * channels (queue.h): submissions from reception (queue_msg_in_t),
 * dispatches to delivery (queue_dispatch_t) and outcomes back from it
 * (queue_outcome_t). A leaf of queue/: every other file may free them,
 * this one calls none of them.
 * Thread: any thread (whoever owns the message frees it).
 */
#include "queue/queue_int.h"

#include <stdlib.h>

void queue_msg_in_free(queue_msg_in_t *m)
{
    if (m == NULL)
        return;
    free(m->qm_sender);
    free(m->qm_job);
    free(m->qm_envid);
    free(m->qm_dsn_job);
    free(m->qm_auth_user);
    for (int i = 0; i < m->qm_nrcpt; i++) {
        free(m->qm_rcpts[i].qr_addr);
        free(m->qm_rcpts[i].qr_orcpt);
    }
    free(m->qm_rcpts);
    buf_free(&m->qm_body);
    free(m);
}

void queue_dispatch_free(queue_dispatch_t *d)
{
    if (d == NULL)
        return;
    for (int i = 0; i < d->qd_nrcpt; i++) {
        free(d->qd_rcpts[i].qo_addr);
        free(d->qd_rcpts[i].qo_orcpt);
    }
    free(d->qd_rcpts);
    free(d->qd_domain);
    free(d->qd_sender);
    free(d->qd_job);
    free(d->qd_envid);
    free(d->qd_auth_user);
    free(d->qd_body);
    free(d);
}

void queue_outcome_free(queue_outcome_t *o)
{
    if (o == NULL)
        return;
    free(o->qo_text);
    free(o->qo_category);
    free(o->qo_mx);
    free(o);
}
