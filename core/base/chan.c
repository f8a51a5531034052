/*
 * chan.c - MPSC channels between threads, woken by uv_async_send().
 *
 * Producers (any thread) link a node under a short mutex; the consumer's
 * async callback swaps the whole list out and hands it, in push order, to
 * the channel's callback. uv_async_send() coalesces, so a burst costs one
 * wake-up. Thread: chan_new/chan_close on the consumer's loop thread.
 */
#include "core/base/base.h"

#include <pthread.h>
#include <stdlib.h>

struct chan {
    uv_async_t ch_async;
    pthread_mutex_t ch_lock;
    chan_node_t *ch_head;
    chan_node_t *ch_tail;
    size_t ch_count;
    chan_cb ch_cb;
    void *ch_arg;
};

static void chan_drain(chan_t *ch)
{
    pthread_mutex_lock(&ch->ch_lock);
    chan_node_t *first = ch->ch_head;
    ch->ch_head = ch->ch_tail = NULL;
    ch->ch_count = 0;
    pthread_mutex_unlock(&ch->ch_lock);
    if (first != NULL)
        ch->ch_cb(ch, first, ch->ch_arg);
}

static void chan_async_cb(uv_async_t *h)
{
    chan_drain(h->data);
}

chan_t *chan_new(uv_loop_t *loop, chan_cb cb, void *arg)
{
    chan_t *ch = xcalloc(1, sizeof(*ch));
    pthread_mutex_init(&ch->ch_lock, NULL);
    ch->ch_cb = cb;
    ch->ch_arg = arg;
    if (uv_async_init(loop, &ch->ch_async, chan_async_cb) != 0)
        abort();
    ch->ch_async.data = ch;
    return ch;
}

size_t chan_push(chan_t *ch, chan_node_t *n)
{
    n->cn_next = NULL;
    pthread_mutex_lock(&ch->ch_lock);
    if (ch->ch_tail)
        ch->ch_tail->cn_next = n;
    else
        ch->ch_head = n;
    ch->ch_tail = n;
    size_t count = ++ch->ch_count;
    pthread_mutex_unlock(&ch->ch_lock);
    uv_async_send(&ch->ch_async);
    return count;
}

size_t chan_push_list(chan_t *ch, chan_node_t *first, chan_node_t *last, size_t n)
{
    last->cn_next = NULL;
    pthread_mutex_lock(&ch->ch_lock);
    if (ch->ch_tail)
        ch->ch_tail->cn_next = first;
    else
        ch->ch_head = first;
    ch->ch_tail = last;
    ch->ch_count += n;
    size_t count = ch->ch_count;
    pthread_mutex_unlock(&ch->ch_lock);
    uv_async_send(&ch->ch_async);
    return count;
}

static void chan_closed_cb(uv_handle_t *h)
{
    chan_t *ch = h->data;
    pthread_mutex_destroy(&ch->ch_lock);
    free(ch);
}

void chan_close(chan_t *ch)
{
    if (ch == NULL)
        return;
    chan_drain(ch);
    uv_close((uv_handle_t *)&ch->ch_async, chan_closed_cb);
}
