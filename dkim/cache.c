/*
 * dkim/cache.c - sign a message once: the DKIM-Signature fields made for a
 * message are kept, with its body hashes, in a direct-mapped table of the
 * signer, keyed by (queue id, variant, length).
 *
 * Why in memory and not in the spool: a message is signed when a delivery
 * thread first takes one of its dispatches; its other domains are
 * dispatched within the same scheduler pass (or a few seconds later for a
 * retry soon after), so a table of the last 8,192 messages serves them.
 * Storing the fields in the spool would cost a write transaction per
 * message on the delivery path (an LMDB commit costs more than the 5 KiB
 * body hash it would save: bench/run-dkim), and after a restart or a long
 * retry a fresh signature is as good (t= is informational without x=).
 *
 * Thread: any number of delivery threads at once. The mutex is held to look
 * up a slot and to store one, never while signing: two threads signing the
 * same message at the same moment both sign, the last one stays.
 */
#include "dkim/dkim_int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct cache_ent {
    uint64_t ce_id;
    size_t ce_len;
    unsigned ce_variant;
    bool ce_used;
    uint64_t ce_made; /* clock_now_s() when the fields were made */
    dkim_bh_t ce_bh;
    int ce_nsigs;
    char *ce_fields; /* the DKIM-Signature fields, as dkim_sign() appends them */
    size_t ce_flen;
} cache_ent_t;

struct dkim_cache {
    pthread_mutex_t c_mu;
    size_t c_mask;
    uint32_t c_reuse_s;
    cache_ent_t *c_ents;
};

dkim_cache_t *dkim_cache_new(size_t nslots, uint32_t reuse_s)
{
    dkim_cache_t *c = xcalloc(1, sizeof(*c));
    pthread_mutex_init(&c->c_mu, NULL);
    c->c_mask = nslots - 1;
    c->c_reuse_s = reuse_s;
    c->c_ents = xcalloc(nslots, sizeof(*c->c_ents));
    return c;
}

void dkim_cache_free(dkim_cache_t *c)
{
    if (!c)
        return;
    for (size_t i = 0; i <= c->c_mask; i++)
        free(c->c_ents[i].ce_fields);
    free(c->c_ents);
    pthread_mutex_destroy(&c->c_mu);
    free(c);
}

static size_t slot_of(const dkim_cache_t *c, uint64_t id, unsigned variant)
{
    /* queue ids are time-ordered: mix them so neighbours spread */
    uint64_t h = (id ^ ((uint64_t)variant << 63)) * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 32) & c->c_mask;
}

int dkim_cache_sign(dkim_cache_t *c, const dkim_signer_t *s, uint64_t id, unsigned variant,
                    const char *msg, size_t len, buf_t *out)
{
    size_t i = slot_of(c, id, variant);
    uint64_t now = clock_now_s();
    dkim_bh_t bh = {0};
    cache_ent_t *e = &c->c_ents[i];

    pthread_mutex_lock(&c->c_mu);
    if (e->ce_used && e->ce_id == id && e->ce_variant == variant && e->ce_len == len) {
        if (c->c_reuse_s == 0 || now < e->ce_made + c->c_reuse_s) {
            int n = e->ce_nsigs;
            buf_append(out, e->ce_fields, e->ce_flen);
            pthread_mutex_unlock(&c->c_mu);
            return n;
        }
        bh = e->ce_bh; /* too old to reuse: sign afresh over the same body hash */
    }
    pthread_mutex_unlock(&c->c_mu);

    size_t mark = out->b_len;
    int n = dkim_sign_bh(s, msg, len, &bh, out);
    if (n < 0)
        return n;

    char *fields = out->b_len > mark ? xmalloc(out->b_len - mark) : NULL;
    if (fields)
        memcpy(fields, out->b_data + mark, out->b_len - mark);
    pthread_mutex_lock(&c->c_mu);
    char *old = e->ce_fields;
    e->ce_used = true;
    e->ce_id = id;
    e->ce_variant = variant;
    e->ce_len = len;
    e->ce_made = now;
    e->ce_bh = bh;
    e->ce_nsigs = n;
    e->ce_fields = fields;
    e->ce_flen = out->b_len - mark;
    pthread_mutex_unlock(&c->c_mu);
    free(old);
    return n;
}
