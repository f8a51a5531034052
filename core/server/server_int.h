/*
 * core/server/server_int.h - private interfaces between the parts of the
 * top floor: the SMTP reception listener, the control socket and main.
 * Nothing outside core/server includes this.
 */
#ifndef SLUICE_SERVER_INT_H
#define SLUICE_SERVER_INT_H

#include "core/base/base.h"
#include "config/config.h"
#include "queue/queue.h"

#include <stdatomic.h>

/* ------------------------------------------------------------ reception */

typedef struct smtp_server smtp_server_t;

typedef struct smtp_server_stats {
    atomic_uint_fast64_t ss_conn_total;    /* connections accepted since start */
    atomic_uint_fast64_t ss_conn_current;  /* open sessions */
    atomic_uint_fast64_t ss_conn_refused;  /* refused: limits */
    atomic_uint_fast64_t ss_msgs_accepted; /* 250 after DATA */
    atomic_uint_fast64_t ss_msgs_rejected; /* 4xx/5xx after DATA or at MAIL for backpressure */
    atomic_uint_fast64_t ss_rcpts_accepted;
    atomic_uint_fast64_t ss_rcpts_rejected; /* relay denied, too many, syntax */
    atomic_uint_fast64_t ss_auth_ok;
    atomic_uint_fast64_t ss_auth_failed;
    atomic_uint_fast64_t ss_tls_sessions;   /* STARTTLS handshakes completed */
    atomic_uint_fast64_t ss_bytes_received; /* message bytes accepted */
    atomic_uint_fast64_t ss_mem_used;       /* message buffers held now (smtp.max_memory) */
    atomic_uint_fast64_t ss_mem_limit;      /* smtp.max_memory in force (ulimit -v may cap it) */
    atomic_uint_fast64_t ss_mem_refused;    /* transactions refused 452 4.3.1 for memory */
} smtp_server_stats_t;

/* Create the reception threads' loops and bind every listener in
 * cfg->c_smtp_listen, in the calling thread, so that a port already taken
 * is reported here ("listen 127.0.0.1:2525: address already in use").
 * Loads or (if configured and missing) generates the TLS certificate.
 * Does not start the threads. Main thread. */
int smtp_server_new(cfg_t *cfg, queue_t *q, smtp_server_t **out, char *err, size_t errlen);
/* Start the reception threads. Main thread. */
int smtp_server_start(smtp_server_t *s);
/* Graceful stop: stop accepting at once; sessions in DATA (or waiting for
 * their commit) may finish within grace_ms; other sessions get
 * "421 4.3.2 Service shutting down" and are closed. Returns when every
 * reception thread has exited. Main thread. */
void smtp_server_stop(smtp_server_t *s, uint64_t grace_ms);
void smtp_server_free(smtp_server_t *s);
const smtp_server_stats_t *smtp_server_stats(const smtp_server_t *s);
/* At most cap sessions at once (0 = no cap): what the open files limit
 * (nofile, for the log line) leaves room for, worked out by main.c at
 * start-up. Past it a new connection gets "421 4.3.2 Too many connections,
 * try again later". Any thread. */
void smtp_server_set_conn_cap(smtp_server_t *s, int cap, uint64_t nofile);
/* Swap the config snapshot used for new sessions (reload). Main thread. */
void smtp_server_set_config(smtp_server_t *s, cfg_t *cfg);

/* ------------------------------------------------------------ control */

typedef struct control control_t;

/* What the control socket needs from the daemon. */
typedef struct control_env {
    uv_loop_t *ce_loop; /* the main loop */
    queue_t *ce_queue;
    smtp_server_t *ce_smtp;
    struct dlv *ce_dlv;             /* the delivery threads (delivery.h's dlv_t) */
    uint64_t ce_start_us;           /* start time, for uptime */
    void (*ce_shutdown)(void *arg); /* ask the daemon to shut down */
    void *ce_arg;
} control_env_t;

/* Listen on cfg->c_ctl_socket (mode cfg->c_ctl_mode; a stale socket file
 * is replaced, a live daemon's is not: "control socket ... in use").
 * Main thread. */
int control_start(cfg_t *cfg, const control_env_t *env, control_t **out, char *err, size_t errlen);
void control_stop(control_t *c);

#endif /* SLUICE_SERVER_INT_H */
