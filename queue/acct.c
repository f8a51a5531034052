/*
 * queue/acct.c - the accounting log: JSON lines in <acct_dir>/acct.jsonl.
 *
 * The queue thread builds the records of one committed transaction in one
 * buffer (q_acct_buf) and writes them with one write(2) (q_acct_flush),
 * after the commit that made the events durable.
 *
 * Rotation, between two writes so that no record is lost or cut, two ways:
 * - our own: when the file passes max_size, or on request (`sluicectl
 *   log-rotate`) while acct.jsonl is still the file we write, it is renamed
 *   to acct-YYYYmmddTHHMMSS[-N].jsonl and a fresh one is opened. An empty
 *   file is not rotated (no empty rotated files).
 * - logrotate's: the file was moved away (or replaced by logrotate's
 *   `create`); on request we notice that acct.jsonl is no longer the file
 *   we write (device and inode) and just reopen the path. Records written
 *   before the request are in the moved file, later ones in the new one.
 * A rotation that fails is reported to the requester (log-rotate answers
 * ok:false) and, when it was size-triggered, tried again a minute later
 * rather than at every write.
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
    const char *a_ext; /* "jsonl" or "csv": the file name's and rotated names' suffix */
    int a_fd;          /* -1: this file is not written (log.accounting_format) */
    uint64_t a_size;
    uint64_t a_max;
    uint64_t a_retry_us; /* a failed size rotation: not again before (mono us) */
    buf_t a_buf;
    struct q_acct *a_csv; /* the PowerMTA CSV file beside it (pmtacsv.c's rows), or NULL */
    char **a_hdrs;        /* the CSV's header_* columns (log.header_fields at start) */
};

#define ACCT_RETRY_US (60ULL * 1000000) /* a failed size rotation is retried after */

static int mkdir_p(const char *path, mode_t mode);
static int acct_reopen(q_acct_t *a);
static void acct_write(q_acct_t *a);
static int acct_rename_free(const char *from, const char *dir, const char *ext, char *dst,
                            size_t dstlen);

/* mkdir -p with explicit modes, whatever the umask: the directories on the
 * way 0755 (searchable, so that a daemon that switched user still reaches
 * what lies below), the last one mode. Existing ones are left alone. */
static int mkdir_p(const char *path, mode_t mode)
{
    char tmp[1024];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        mode_t m = c == '\0' ? mode : 0755;
        *p = '\0';
        if (mkdir(tmp, m) == 0) {
            if (chmod(tmp, m) != 0)
                return -errno;
        } else if (errno != EEXIST) {
            return -errno;
        }
        *p = c;
        if (c == '\0')
            return 0;
    }
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
    if (a->a_size == 0 && strcmp(a->a_ext, "csv") == 0) {
        /* a new CSV file starts with its header line (importers key on it) */
        buf_t h;
        buf_init(&h, 512);
        q_pmta_csv_header(&h, a->a_hdrs);
        ssize_t w = write(fd, h.b_data, h.b_len);
        if (w > 0)
            a->a_size = (uint64_t)w;
        buf_free(&h);
    }
    return 0;
}

static q_acct_t *acct_new(const char *dir, const char *ext, uint64_t max_size)
{
    q_acct_t *a = xcalloc(1, sizeof(*a));
    a->a_fd = -1;
    a->a_max = max_size;
    a->a_ext = ext;
    snprintf(a->a_dir, sizeof(a->a_dir), "%s", dir && *dir ? dir : ".");
    snprintf(a->a_path, sizeof(a->a_path), "%s/acct.%s", a->a_dir, ext);
    buf_init(&a->a_buf, 4096);
    return a;
}

int q_acct_open(const char *dir, uint64_t max_size, const char *format, char **hdrs, q_acct_t **out,
                char *err, size_t errlen)
{
    q_acct_t *a = acct_new(dir, "jsonl", max_size);
    bool jsonl = format == NULL || *format == '\0' || strcmp(format, "jsonl") == 0 ||
                 strcmp(format, "both") == 0;
    bool csv = format != NULL && (strcmp(format, "pmta-csv") == 0 || strcmp(format, "both") == 0);
    int rc;
    if (!jsonl && !csv) {
        snprintf(err, errlen,
                 "log.accounting_format: expected \"jsonl\", \"pmta-csv\" or "
                 "\"both\", got \"%.60s\"",
                 format);
        goto fail;
    }
    rc = mkdir_p(a->a_dir, 0750);
    if (rc != 0) {
        snprintf(err, errlen, "accounting log %s: cannot create: %s", a->a_dir, strerror(-rc));
        goto fail;
    }
    if (jsonl && (rc = acct_reopen(a)) != 0) {
        snprintf(err, errlen, "accounting log %s: %s", a->a_path, strerror(-rc));
        goto fail;
    }
    if (csv) {
        a->a_csv = acct_new(dir, "csv", max_size);
        size_t nh = 0;
        while (hdrs != NULL && hdrs[nh] != NULL)
            nh++;
        a->a_csv->a_hdrs = xcalloc(nh + 1, sizeof(char *)); /* the columns stay the start's */
        for (size_t i = 0; i < nh; i++)
            a->a_csv->a_hdrs[i] = xstrdup(hdrs[i]);
        if ((rc = acct_reopen(a->a_csv)) != 0) {
            snprintf(err, errlen, "accounting log %s: %s", a->a_csv->a_path, strerror(-rc));
            goto fail;
        }
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
    q_acct_close(a->a_csv);
    for (char **h = a->a_hdrs; h != NULL && *h != NULL; h++)
        free(*h);
    free(a->a_hdrs);
    if (a->a_fd >= 0)
        close(a->a_fd);
    buf_free(&a->a_buf);
    free(a);
}

buf_t *q_acct_buf(q_acct_t *a)
{
    return &a->a_buf;
}

/* One write(2) of every record built since the last one (and the CSV
 * rows made of them). */
static void acct_write(q_acct_t *a)
{
    if (a->a_csv != NULL && a->a_buf.b_len > 0) {
        q_pmta_csv_rows(&a->a_csv->a_buf, a->a_buf.b_data, a->a_buf.b_len, a->a_csv->a_hdrs);
        acct_write(a->a_csv);
    }
    if (a->a_fd < 0)
        buf_reset(&a->a_buf); /* log.accounting_format = "pmta-csv": no JSON file */
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
    if (a->a_max == 0 ||
        (a->a_size < a->a_max && (a->a_csv == NULL || a->a_csv->a_size < a->a_max)))
        return;
    uint64_t now = clock_mono_us();
    if (now < a->a_retry_us)
        return; /* failed a moment ago: one error line a minute, not one per write */
    char msg[1400];
    if (q_acct_rotate(a, msg, sizeof(msg)) != 0) {
        log_error("acct: %s (size rotation tried again in %llu s)", msg,
                  (unsigned long long)(ACCT_RETRY_US / 1000000));
        a->a_retry_us = now + ACCT_RETRY_US;
        return;
    }
    a->a_retry_us = 0;
    log_info("acct: %s", msg);
}

/* rename(2) from to dir/acct-STAMP[-N].jsonl, a name nobody has taken:
 * RENAME_NOREPLACE, so that two rotations in one second never overwrite
 * each other's file. The name used in dst. 0 or -errno. */
static int acct_rename_free(const char *from, const char *dir, const char *ext, char *dst,
                            size_t dstlen)
{
    char stamp[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%S", &tm);
    for (int n = 0; n < 10000; n++) {
        if (n == 0)
            snprintf(dst, dstlen, "%s/acct-%s.%s", dir, stamp, ext);
        else
            snprintf(dst, dstlen, "%s/acct-%s-%d.%s", dir, stamp, n, ext);
        int rc = renameat2(AT_FDCWD, from, AT_FDCWD, dst, RENAME_NOREPLACE);
        if (rc != 0 && errno == EINVAL) { /* a file system without it */
            if (access(dst, F_OK) == 0)
                continue;
            rc = rename(from, dst);
        }
        if (rc == 0)
            return 0;
        if (errno != EEXIST)
            return -errno;
    }
    return -EEXIST;
}

/* q_acct_rotate of one file. */
static int acct_rotate_one(q_acct_t *a, char *msg, size_t msglen);

int q_acct_rotate(q_acct_t *a, char *msg, size_t msglen)
{
    acct_write(a);
    int rc = 0;
    msg[0] = '\0';
    if (a->a_fd >= 0)
        rc = acct_rotate_one(a, msg, msglen);
    if (a->a_csv != NULL) {
        size_t n = strlen(msg);
        if (n > 0 && n + 2 < msglen) {
            msg[n++] = ';';
            msg[n++] = ' ';
        }
        int crc = acct_rotate_one(a->a_csv, msg + n, msglen - n);
        if (rc == 0)
            rc = crc;
    }
    return rc;
}

static int acct_rotate_one(q_acct_t *a, char *msg, size_t msglen)
{
    struct stat cur, disk;
    bool have_cur = a->a_fd >= 0 && fstat(a->a_fd, &cur) == 0;
    bool same = have_cur && stat(a->a_path, &disk) == 0 && disk.st_dev == cur.st_dev &&
                disk.st_ino == cur.st_ino;
    if (!same) {
        /* Moved away (logrotate, mv) or replaced (logrotate's `create`):
         * what we wrote so far is in the moved file; go on in a new one. */
        int rc = acct_reopen(a);
        if (rc != 0) {
            snprintf(msg, msglen, "reopen %s: %s (still writing to the file it was)", a->a_path,
                     strerror(-rc));
            return rc;
        }
        snprintf(msg, msglen, "%s was moved away: reopened", a->a_path);
        return 0;
    }
    if (cur.st_size == 0) {
        snprintf(msg, msglen, "%s is empty: not rotated", a->a_path);
        return 0;
    }
    char dst[1200];
    int rc = acct_rename_free(a->a_path, a->a_dir, a->a_ext, dst, sizeof(dst));
    if (rc != 0) {
        snprintf(msg, msglen, "rotate %s: %s", a->a_path, strerror(-rc));
        return rc;
    }
    rc = acct_reopen(a);
    if (rc != 0) {
        /* The records keep going to the renamed file: nothing is lost, and
         * the next rotation sees the path free and reopens it. */
        snprintf(msg, msglen, "rotated to %s, but reopening %s failed: %s", dst, a->a_path,
                 strerror(-rc));
        return rc;
    }
    snprintf(msg, msglen, "rotated to %s", dst);
    return 0;
}

void q_acct_rotate_req(q_acct_t *a, queue_req_t *r)
{
    char msg[1400];
    r->qq_result = NULL;
    r->qq_error[0] = '\0';
    int rc = q_acct_rotate(a, msg, sizeof(msg));
    if (rc != 0) {
        log_error("acct: %s", msg);
        snprintf(r->qq_error, sizeof(r->qq_error), "accounting log: %.*s",
                 (int)sizeof(r->qq_error) - 17, msg);
        return;
    }
    log_info("acct: %s", msg);
    a->a_retry_us = 0;
    r->qq_result = json_object_new_object();
    json_object_object_add(r->qq_result, "accounting", json_object_new_string(msg));
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
