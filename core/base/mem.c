/*
 * mem.c - allocation that aborts on failure, error strings, the clock.
 * Any thread. The allocator itself is jemalloc in normal builds (linked
 * into the binaries) and libc malloc under sanitizers.
 */
#include "core/base/base.h"

#include <execinfo.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static void oom(size_t n)
{
    fprintf(stderr, "sluice: out of memory allocating %zu bytes\n", n);
    void *frames[32];
    int nf = backtrace(frames, 32);
    backtrace_symbols_fd(frames, nf, 2);
    abort();
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (UNLIKELY(p == NULL))
        oom(n);
    return p;
}

void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (UNLIKELY(p == NULL))
        oom(n * size);
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (UNLIKELY(q == NULL))
        oom(n);
    return q;
}

uint64_t mem_as_headroom(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return UINT64_MAX;
    unsigned long long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f != NULL) {
        if (fscanf(f, "%llu", &pages) != 1)
            pages = 0;
        fclose(f);
    }
    uint64_t used = (uint64_t)pages * (uint64_t)sysconf(_SC_PAGESIZE);
    return rl.rlim_cur > used ? (uint64_t)rl.rlim_cur - used : 0;
}

uint64_t mem_budget_cap(uint64_t want, uint64_t used)
{
    uint64_t room = mem_as_headroom();
    return room == UINT64_MAX ? want : MIN(want, (room + used) / 4);
}

char *xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *p = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

const char *sl_strerror(int err)
{
    switch (err) {
#define SL_ERR_CASE(name, val, str)                                                                \
    case name:                                                                                     \
        return str;
        SL_ERRNO_MAP(SL_ERR_CASE)
#undef SL_ERR_CASE
    default:
        break;
    }
    if (err < 0)
        return strerror(-err);
    return "success";
}

uint64_t clock_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t clock_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec;
}

uint64_t clock_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}
