/*
 * notify.c - sd_notify(3) for sluiced under systemd (Type=notify):
 * READY=1 once it accepts mail, RELOADING=1 ... READY=1 around a reload,
 * STOPPING=1 when shutdown begins. The one place that includes libsystemd;
 * a build without it (SLUICE_HAVE_SYSTEMD unset) still runs, unnotified.
 *
 * Thread: main thread (sd_notify itself is safe from any thread).
 */
#include "core/server/notify_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#ifdef SLUICE_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

static void srv_notify(const char *state);

/* A failure to notify is logged and otherwise ignored: systemd then times
 * the start out, which says more than a daemon that refuses to run. */
static void srv_notify(const char *state)
{
#ifdef SLUICE_HAVE_SYSTEMD
    int rc = sd_notify(0, state);
    if (rc < 0)
        log_warn("sd_notify: %s", strerror(-rc));
#else
    (void)state;
#endif
}

void srv_notify_ready(const char *status)
{
    char m[512];
    snprintf(m, sizeof(m), "READY=1\nSTATUS=%s", status);
    srv_notify(m);
}

void srv_notify_stopping(void)
{
    srv_notify("STOPPING=1\nSTATUS=shutting down");
}

void srv_notify_reloading(void)
{
    char m[128];
    snprintf(m, sizeof(m), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64 "\nSTATUS=reloading",
             clock_mono_us());
    srv_notify(m);
}
