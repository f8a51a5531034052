/*
 * buf.c - growable byte buffers. The owner frees with buf_free().
 * Not thread safe: a buffer belongs to one thread at a time.
 */
#include "core/base/base.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void buf_init(buf_t *b, size_t cap)
{
    b->b_data = cap ? xmalloc(cap) : NULL;
    b->b_len = 0;
    b->b_cap = cap;
}

void buf_free(buf_t *b)
{
    if (b == NULL)
        return;
    free(b->b_data);
    b->b_data = NULL;
    b->b_len = b->b_cap = 0;
}

void buf_reserve(buf_t *b, size_t extra)
{
    if (b->b_len + extra <= b->b_cap)
        return;
    size_t cap = b->b_cap ? b->b_cap : 256;
    while (cap < b->b_len + extra)
        cap *= 2;
    b->b_data = xrealloc(b->b_data, cap);
    b->b_cap = cap;
}

void buf_append(buf_t *b, const void *p, size_t n)
{
    if (n == 0)
        return;
    buf_reserve(b, n);
    memcpy(b->b_data + b->b_len, p, n);
    b->b_len += n;
}

void buf_append_str(buf_t *b, const char *s)
{
    buf_append(b, s, strlen(s));
}

void buf_printf(buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n <= 0)
        return;
    buf_reserve(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(b->b_data + b->b_len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->b_len += (size_t)n;
}

void buf_consume(buf_t *b, size_t n)
{
    if (n >= b->b_len) {
        b->b_len = 0;
        return;
    }
    memmove(b->b_data, b->b_data + n, b->b_len - n);
    b->b_len -= n;
}

void buf_reset(buf_t *b)
{
    b->b_len = 0;
}

char *buf_steal(buf_t *b, size_t *len)
{
    char *p = b->b_data;
    if (len)
        *len = b->b_len;
    b->b_data = NULL;
    b->b_len = b->b_cap = 0;
    return p;
}
