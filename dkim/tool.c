/*
 * dkim/tool.c - dkim_sign_file(), the operator's "sign this file and show
 * me" tool behind `sluiced -c FILE --dkim-sign MSG` (core/server/main.c,
 * with the keys of that configuration) and bench/dkim-bench's `sign`.
 * Thread: any.
 */
#include "dkim/dkim_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int read_all(int fd, buf_t *b);
static int write_all(int fd, const char *p, size_t n);

static int read_all(int fd, buf_t *b)
{
    for (;;) {
        buf_reserve(b, 65536);
        ssize_t r = read(fd, b->b_data + b->b_len, b->b_cap - b->b_len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            return 0;
        b->b_len += (size_t)r;
    }
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int dkim_sign_file(const dkim_signer_t *s, const char *in_path, int out_fd, char *err,
                   size_t errlen)
{
    buf_t msg, sig;
    int fd = 0, rc;

    buf_init(&msg, 65536);
    buf_init(&sig, 1024);
    if (strcmp(in_path, "-") != 0 && (fd = open(in_path, O_RDONLY | O_CLOEXEC)) < 0) {
        rc = -errno;
        snprintf(err, errlen, "%s: %s", in_path, strerror(errno));
        goto fail;
    }
    rc = read_all(fd, &msg);
    if (fd > 0)
        close(fd);
    if (rc < 0) {
        snprintf(err, errlen, "%s: %s", in_path, strerror(-rc));
        goto fail;
    }
    rc = dkim_sign(s, msg.b_data, msg.b_len, &sig);
    if (rc < 0) {
        snprintf(err, errlen, "%s: %s", in_path, dkim_strerror(rc));
        goto fail;
    }
    int wrc = write_all(out_fd, sig.b_data, sig.b_len);
    if (wrc == 0)
        wrc = write_all(out_fd, msg.b_data, msg.b_len);
    if (wrc < 0) {
        snprintf(err, errlen, "write: %s", strerror(-wrc));
        rc = wrc;
    }
fail:
    buf_free(&msg);
    buf_free(&sig);
    return rc;
}
