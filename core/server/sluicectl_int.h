/*
 * core/server/sluicectl_int.h - private to sluicectl: what its command
 * files share with sluicectl.c.
 */
#ifndef SLUICE_SLUICECTL_INT_H
#define SLUICE_SLUICECTL_INT_H

#include "core/base/base.h"

#include <sys/types.h>

#define SCTL_EXIT_OK 0
#define SCTL_EXIT_REFUSED 1
#define SCTL_EXIT_USAGE 2
#define SCTL_EXIT_CONNECT 3

/* One request line to the daemon, one answer line into resp (NUL-ended).
 * 0, or SCTL_EXIT_CONNECT after saying why on stderr. */
int sctl_talk(const char *path, const char *line, uid_t owner, buf_t *resp);

/* `sluicectl suppress ...` (sluicectl_suppress.c): args are the words after
 * "suppress"; returns the exit code. */
int sctl_suppress(const char *sock, uid_t owner, bool json, const char *limit,
                  const char *const *args, int nargs);

/* Fields of an answer (sluicectl.c): NULL / 0 when absent. */
struct json_object *sctl_get(struct json_object *o, const char *key);
uint64_t sctl_get_u64(struct json_object *o, const char *key);
const char *sctl_get_str(struct json_object *o, const char *key);
/* How many bytes of s fit in max columns without cutting a character. */
int sctl_utf8_cut(const char *s, int max);

/* The request of `events [unpark NAME | replay NAME --since T [--until T]]`
 * (args: the words after "events") in *line (caller frees); -1: a usage
 * error. sluicectl_print.c. */
int sctl_events_request(const char *const *args, int nargs, const char *limit, char **line);
/* Human output (sluicectl_print.c) of `events` and `tlsrpt`. */
void sctl_print_events(struct json_object *r);
void sctl_print_tlsrpt(struct json_object *r);
/* `cluster`, and the status answer's "cluster" object (NULL: one node). */
void sctl_print_cluster(struct json_object *r);
void sctl_print_status_cluster(struct json_object *c);
/* `providers`: the learned values of an adaptive queue (a line under its
 * row; nothing for a queue that is not adaptive). */
void sctl_print_adaptive(struct json_object *q);

#endif /* SLUICE_SLUICECTL_INT_H */
