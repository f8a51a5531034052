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

#endif /* SLUICE_SLUICECTL_INT_H */
