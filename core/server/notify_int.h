/*
 * core/server/notify_int.h - private to core/server: telling the service
 * manager (systemd, Type=notify) what state sluiced is in.
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
/* RELOADING=1 with MONOTONIC_USEC (which systemd 253 wants): a reload
 * begins; READY=1 (srv_notify_ready) says it is over. reload.c's
 * ctl_reload sends both, for SIGHUP and `sluicectl reload` alike. */
void srv_notify_reloading(void);

#endif /* SLUICE_NOTIFY_INT_H */
