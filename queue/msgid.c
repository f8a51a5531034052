/*
 * queue/msgid.c - message ids: unique across threads and restarts.
 *
 *   queue_msgid_new     a new id: microseconds since the epoch at arrival,
 *                       bumped past the last one handed out
 *   q_msgid_seen        queue_open: never below what the spool holds
 *   queue_msgid_fmt / queue_msgid_parse   the 16-hex-digit form
 *
 * The last id handed out is one process-wide atomic (msgid_last): reception
 * threads and the queue thread (DSNs, operator jobs) take ids from it
 * without a lock. Ids are time-based, so sorting by id sorts by arrival and
 * the scheduler's cursor walks messages oldest first.
 * Thread: any thread.
 */
#include "queue/queue_int.h"

static atomic_uint_fast64_t msgid_last;

uint64_t queue_msgid_new(void)
{
    uint64_t now = clock_now_us();
    uint64_t old = atomic_load_explicit(&msgid_last, memory_order_relaxed);
    uint64_t id;
    do {
        id = MAX(old + 1, now);
    } while (!atomic_compare_exchange_weak(&msgid_last, &old, id));
    return id;
}

void q_msgid_seen(uint64_t id)
{
    uint64_t old = atomic_load(&msgid_last);
    while (old < id && !atomic_compare_exchange_weak(&msgid_last, &old, id))
        ;
}

char *queue_msgid_fmt(uint64_t id, char *dst)
{
    static const char hex[] = "0123456789ABCDEF";
    for (int i = 15; i >= 0; i--) {
        dst[i] = hex[id & 15];
        id >>= 4;
    }
    dst[16] = '\0';
    return dst;
}

int queue_msgid_parse(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    if (s == NULL)
        return SL_EPARSE;
    for (int i = 0; i < 16; i++) {
        char c = s[i];
        int d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else
            return SL_EPARSE;
        v = v << 4 | (uint64_t)d;
    }
    if (s[16] != '\0')
        return SL_EPARSE;
    *out = v;
    return 0;
}
