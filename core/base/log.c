/*
 * log.c - the operational log: one line per event, "time level [thread] text".
 * log_write() formats into a stack buffer and writes it with one write(2),
 * so lines from several threads never interleave. Any thread. A loop
 * thread may hold its info and debug lines (log_buffer) and write those of
 * one loop iteration together: one write(2) for many lines, each whole
 * (at most PIPE_BUF bytes a write, so not even a pipe cuts into them).
 *
 * log_esc()/log_escn()/log_esc_buf() make text a peer chose (a HELO name,
 * an AUTH identity, a header value, a remote server's reply) safe to print
 * in a line: a peer must not be able to start a line of its own, nor send
 * control sequences to the terminal of the operator who reads the log.
 *
 * sl_assert_fail() (SL_ASSERT) and sl_main_thread() (SL_ASSERT_MAIN_THREAD)
 * live here too: base.h's assertions.
 */
#include "core/base/base.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

int log_level_current = LOG_INFO;

static int log_fd = 2;
static char log_path[4096];
static _Thread_local char log_tname[16] = "main";

static const char *const level_names[] = {"debug", "info", "warn", "error"};

/* log_buffer: what this thread holds. PIPE_BUF bytes at most, so that a
 * flush to stderr as a pipe is one atomic write. */
#define LOG_HOLD_MAX 4096
static _Thread_local char log_hold[LOG_HOLD_MAX];
static _Thread_local size_t log_hold_len;
static _Thread_local bool log_holding;
static _Thread_local uv_prepare_t log_prep;

#define ESC_RING 8    /* log_esc() results usable in one log line */
#define ESC_SIZE 1024 /* each, NUL included */
static _Thread_local char esc_ring[ESC_RING][ESC_SIZE];
static _Thread_local unsigned esc_next;

int log_level_parse(const char *s, log_level_t *out)
{
    for (size_t i = 0; i < ARRAY_SIZE(level_names); i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (log_level_t)i;
            return 0;
        }
    }
    return SL_EPARSE;
}

int log_init(log_level_t level, const char *path)
{
    log_level_current = level;
    if (path == NULL || path[0] == '\0') {
        log_path[0] = '\0';
        log_fd = 2;
        return 0;
    }
    snprintf(log_path, sizeof(log_path), "%s", path);
    return log_reopen();
}

int log_reopen(void)
{
    if (log_path[0] == '\0')
        return 0;
    int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0)
        return -errno;
    int old = log_fd;
    log_fd = fd;
    if (old > 2)
        close(old);
    return 0;
}

void log_thread_name(const char *name)
{
    snprintf(log_tname, sizeof(log_tname), "%s", name);
    uv_thread_t self = uv_thread_self();
    if (!uv_thread_equal(&self, sl_main_thread())) /* the process keeps its own name */
        pthread_setname_np(pthread_self(), log_tname);
}

static void log_out(const char *p, size_t len)
{
    while (len > 0) {
        ssize_t w = write(log_fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* nowhere to say so: the log is where it would go */
        p += w;
        len -= (size_t)w;
    }
}

void log_flush(void)
{
    if (log_hold_len == 0)
        return;
    log_out(log_hold, log_hold_len);
    log_hold_len = 0;
}

static void log_prep_cb(uv_prepare_t *h)
{
    UNUSED(h);
    log_flush();
}

void log_buffer(uv_loop_t *loop)
{
    if (log_holding)
        return;
    uv_prepare_init(loop, &log_prep);
    uv_prepare_start(&log_prep, log_prep_cb);
    uv_unref((uv_handle_t *)&log_prep); /* it never keeps the loop running */
    log_holding = true;
}

void log_unbuffer(uv_loop_t *loop)
{
    if (!log_holding)
        return;
    log_flush();
    log_holding = false;
    uv_close((uv_handle_t *)&log_prep, NULL);
    uv_run(loop, UV_RUN_NOWAIT); /* the close completes: uv_loop_close finds no handle */
}

void log_write(log_level_t lvl, const char *fmt, ...)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s [%s] ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, level_names[lvl], log_tname);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : MIN((size_t)m, sizeof(line) - (size_t)n - 2));
    line[len++] = '\n';
    if (!log_holding) {
        log_out(line, len);
        return;
    }
    if (log_hold_len + len > LOG_HOLD_MAX)
        log_flush();
    memcpy(log_hold + log_hold_len, line, len); /* a line is < 2048 bytes: it fits */
    log_hold_len += len;
    if (lvl >= LOG_WARN) /* what went wrong is never held back */
        log_flush();
}

/* Escape one byte into out (4 bytes at most); returns the length. Printable
 * ASCII stays as it is, except the backslash (doubled, so that the escaping
 * can be read back) and the double quote (some lines quote values). */
static size_t esc_byte(unsigned char c, char *out)
{
    static const char hex[] = "0123456789abcdef";
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '"') {
        out[0] = (char)c;
        return 1;
    }
    out[0] = '\\';
    switch (c) {
    case '\\':
    case '"':
        out[1] = (char)c;
        return 2;
    case '\n':
        out[1] = 'n';
        return 2;
    case '\r':
        out[1] = 'r';
        return 2;
    case '\t':
        out[1] = 't';
        return 2;
    default:
        out[1] = 'x';
        out[2] = hex[c >> 4];
        out[3] = hex[c & 15];
        return 4;
    }
}

const char *log_esc_buf(char *dst, size_t dstlen, const char *src, size_t len)
{
    if (dstlen == 0)
        return dst;
    size_t o = 0;
    bool cut = false;
    for (size_t i = 0; i < len; i++) {
        char e[4];
        size_t n = esc_byte((unsigned char)src[i], e);
        if (o + n + 1 > dstlen) {
            cut = true;
            break;
        }
        memcpy(dst + o, e, n);
        o += n;
    }
    if (cut && dstlen >= 4) { /* say that something is missing */
        o = MIN(o, dstlen - 4);
        memcpy(dst + o, "...", 3);
        o += 3;
    }
    dst[o] = '\0';
    return dst;
}

const char *log_escn(const char *s, size_t len)
{
    if (s == NULL)
        return "";
    char *dst = esc_ring[esc_next++ % ESC_RING];
    return log_esc_buf(dst, ESC_SIZE, s, len);
}

const char *log_esc(const char *s)
{
    return s == NULL ? "" : log_escn(s, strlen(s));
}

void sl_assert_fail(const char *expr, const char *file, int line, const char *func)
{
    log_write(LOG_ERROR, "assertion failed: %s (%s:%d, %s)", expr, file, line, func);
    abort();
}

/* Written once, by the loader's constructor pass on the thread that will
 * run main(), before any other thread exists; read-only afterwards. It sits
 * here, beside sl_assert_fail, so that every program that can assert links
 * it (a static library keeps only the objects whose symbols are used). */
static uv_thread_t sl_main_tid;

__attribute__((constructor)) static void sl_main_tid_init(void)
{
    sl_main_tid = uv_thread_self();
}

const uv_thread_t *sl_main_thread(void)
{
    return &sl_main_tid;
}
