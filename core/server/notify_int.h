/*
 * core/server/notify_int.h - private to core/server: telling the service
 * manager (systemd, Type=notify) what state sluiced is in, and the reload
 * that both SIGHUP and `sluicectl reload` run.
 *
 * Without libsystemd at build time (SLUICE_HAVE_SYSTEMD unset) or without
 * $NOTIFY_SOCKET at run time these send nothing. docs/operations.md,
 * "Deploying", has the unit.
 *
 * Thread: main thread.
 */
#ifndef SLUICE_NOTIFY_INT_H
#define SLUICE_NOTIFY_INT_H

#include "core/server/ops_int.h"

/* READY=1 with STATUS=status: start-up is over (spool open, listeners and
 * control socket up, threads running), or a reload is over. */
void srv_notify_ready(const char *status);
/* STOPPING=1: shutdown has begun. */
void srv_notify_stopping(void);
/* control_reload() between RELOADING=1 (with MONOTONIC_USEC, which
 * systemd 253 wants) and READY=1, so that `systemctl reload` waits for its
 * end whichever way it was asked for. Same contract as control_reload. */
int srv_reload(control_t *ct, struct json_object *resp, char *err, size_t errlen);

#endif /* SLUICE_NOTIFY_INT_H */
