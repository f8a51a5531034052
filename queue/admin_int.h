/*
 * queue/admin_int.h - private to queue/: the hooks between the queue thread
 * (queue.c, sched.c) and the operator requests in admin.c.
 *
 * Thread: every function here runs on the queue thread.
 */
#ifndef SLUICE_QUEUE_ADMIN_INT_H
#define SLUICE_QUEUE_ADMIN_INT_H

#include "queue/queue_int.h"

/* Take an operator request (QREQ_QUEUES and after). Returns false for the
 * other types (queue.c answers them). When it returns true, admin.c owns
 * the request until it pushes it back onto qq_reply (at once for the short
 * ones, after the last chunk for QUEUES / RETRY / BOUNCE). */
bool q_admin_request(queue_t *q, queue_req_t *r);
/* The queue is stopping: answer every request still in progress with
 * "queue is stopping", close admin.c's handle and free its state. Called
 * after the request channel has been drained. */
void q_admin_stop(queue_t *q);

/* Scheduler checks. q_admin_hold_all: true while `suspend --all` holds
 * every delivery (loads the persisted holds on first use). q_admin_held:
 * true when the recipient's domain (after the last '@' of addr) or the
 * message's job is suspended. Both cost one thread-local load and a
 * compare when nothing is suspended. */
bool q_admin_hold_all(queue_t *q);
bool q_admin_held(queue_t *q, const char *addr, size_t addr_len, const char *job, size_t job_len);

/* Count one applied outcome for metrics: type is the accounting record
 * type ("delivery", "transient", "bounce", "expired", "admin_bounce");
 * queued_us the message's time in queue in microseconds (histogram for
 * deliveries: sub-second times count). */
void q_admin_outcome_note(queue_t *q, const char *type, uint64_t queued_us);

/* sched.c: true while (msgid, idx) is in flight (dispatched, no outcome
 * yet). */
bool q_sched_in_flight(queue_t *q, uint64_t id, uint32_t idx);

#endif /* SLUICE_QUEUE_ADMIN_INT_H */
