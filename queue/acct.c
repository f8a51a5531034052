/*
 * queue/acct.c - the accounting log: JSON lines in <acct_dir>/acct.jsonl.
 *
 * The queue thread builds the records of one committed transaction in one
 * buffer (q_acct_buf) and writes them with one write(2) (q_acct_flush),
 * after the commit that made the events durable. When the file passes
 * max_size, or on request, it is renamed to acct-YYYYmmddTHHMMSS.jsonl and
 * a fresh one is opened, between two writes, so no record is lost or cut.
 * Thread: queue thread only (q_acct_open also from main before start).
 */
#include "queue/queue_int.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct q_acct {
    char a_dir[1024];
    char a_path[1100];
    int a_fd;
    uint64_t a_size;
    uint64_t a_max;
    buf_t a_buf;
};

static int mkdir_p(const char *path, mode_t mode);
static int acct_reopen(q_acct_t *a);
static void acct_write(q_acct_t *a);

static int mkdir_p(const char *path, mode_t mode)
{
    char tmp[1024];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, mode) != 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(tmp, mode) != 0 && errno != EEXIST)
        return -errno;
    return 0;
}

int q_mkdir_p(const char *path, mode_t mode)
{
    return mkdir_p(path, mode);
}

static int acct_reopen(q_acct_t *a)
{
    int fd = open(a->a_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0)
        return -errno;
    struct stat st;
    a->a_size = fstat(fd, &st) == 0 ? (uint64_t)st.st_size : 0;
    if (a->a_fd >= 0)
        close(a->a_fd);
    a->a_fd = fd;
    return 0;
}

int q_acct_open(const char *dir, uint64_t max_size, q_acct_t **out, char *err, size_t errlen)
{
    q_acct_t *a = xcalloc(1, sizeof(*a));
    a->a_fd = -1;
    a->a_max = max_size;
    snprintf(a->a_dir, sizeof(a->a_dir), "%s", dir && *dir ? dir : ".");
    snprintf(a->a_path, sizeof(a->a_path), "%s/acct.jsonl", a->a_dir);
    buf_init(&a->a_buf, 4096);
    int rc = mkdir_p(a->a_dir, 0750);
    if (rc != 0) {
        snprintf(err, errlen, "accounting log %s: cannot create: %s", a->a_dir, strerror(-rc));
        goto fail;
    }
    rc = acct_reopen(a);
    if (rc != 0) {
        snprintf(err, errlen, "accounting log %s: %s", a->a_path, strerror(-rc));
        goto fail;
    }
    *out = a;
    return 0;
fail:
    q_acct_close(a);
    return SL_ESPOOL;
}

void q_acct_close(q_acct_t *a)
{
    if (a == NULL)
        return;
    q_acct_flush(a);
    if (a->a_fd >= 0)
        close(a->a_fd);
    buf_free(&a->a_buf);
    free(a);
}

buf_t *q_acct_buf(q_acct_t *a)
{
    return &a->a_buf;
}

/* One write(2) of every record built since the last one. */
static void acct_write(q_acct_t *a)
{
    if (a->a_buf.b_len == 0 || a->a_fd < 0)
        return;
    const char *p = a->a_buf.b_data;
    size_t left = a->a_buf.b_len;
    while (left > 0) {
        ssize_t w = write(a->a_fd, p, left);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            log_error("acct: write %s: %s", a->a_path, strerror(errno));
            break;
        }
        p += w;
        left -= (size_t)w;
    }
    a->a_size += a->a_buf.b_len - left;
    buf_reset(&a->a_buf);
}

void q_acct_flush(q_acct_t *a)
{
    acct_write(a);
    if (a->a_max > 0 && a->a_size >= a->a_max)
        q_acct_rotate(a);
}

int q_acct_rotate(q_acct_t *a)
{
    acct_write(a);
    char stamp[32], dst[1200];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%S", &tm);
    snprintf(dst, sizeof(dst), "%s/acct-%s.jsonl", a->a_dir, stamp);
    for (int n = 1; access(dst, F_OK) == 0 && n < 10000; n++)
        snprintf(dst, sizeof(dst), "%s/acct-%s-%d.jsonl", a->a_dir, stamp, n);
    if (rename(a->a_path, dst) != 0) {
        int e = errno;
        log_error("acct: rotate %s -> %s: %s", a->a_path, dst, strerror(e));
        return -e;
    }
    int rc = acct_reopen(a);
    if (rc != 0) {
        log_error("acct: reopen %s: %s", a->a_path, strerror(-rc));
        return rc;
    }
    log_info("acct: rotated to %s", dst);
    return 0;
}

/* ------------------------------------------------------------ JSON helpers
 *
 * One form per kind of field in every record and answer (docs/records.md):
 * a string that is absent is null, never "" (the null sender, "", is a
 * value); an SMTP code is an integer or null when no reply came; a point
 * in time is an RFC 3339 UTC string with milliseconds, or null. */

/* Peer text (replies, HELO names, job names) is any bytes: jsontext.c
 * makes it a string every JSON reader accepts (docs/records.md). */
void q_json_str(buf_t *b, const char *s, size_t len)
{
    json_str_append(b, s, len);
}

void q_json_strz(buf_t *b, const char *s)
{
    if (s == NULL)
        buf_append(b, "null", 4);
    else
        q_json_str(b, s, strlen(s));
}

void q_json_opt(buf_t *b, const char *s, size_t len)
{
    if (s == NULL || len == 0)
        buf_append(b, "null", 4);
    else
        q_json_str(b, s, len);
}

void q_json_optz(buf_t *b, const char *s)
{
    q_json_opt(b, s, s ? strlen(s) : 0);
}

void q_json_code(buf_t *b, int code)
{
    if (code <= 0)
        buf_append(b, "null", 4);
    else
        buf_printf(b, "%d", code);
}

void q_json_time(buf_t *b, uint64_t us)
{
    char t[32];
    buf_printf(b, "\"%s\"", time_fmt_rfc3339(us, t, sizeof(t)));
}

void q_json_time_s(buf_t *b, uint64_t unix_s)
{
    if (unix_s == 0)
        buf_append(b, "null", 4);
    else
        q_json_time(b, unix_s * 1000000);
}

/* The same forms as json-c values, for the control answers. */

json_object *q_jstr_opt(const char *s, size_t len)
{
    return s == NULL || len == 0 ? NULL : json_object_new_string_len(s, (int)len);
}

json_object *q_jcode(int code)
{
    return code > 0 ? json_object_new_int(code) : NULL;
}

json_object *q_jtime_s(uint64_t unix_s)
{
    char t[32];
    return unix_s == 0 ? NULL
                       : json_object_new_string(time_fmt_rfc3339(unix_s * 1000000, t, sizeof(t)));
}
