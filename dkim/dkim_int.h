/*
 * dkim/dkim_int.h - dkim/'s private interfaces: canonicalization (canon.c),
 * header splitting and From-domain parsing (msg.c), key internals (keys.c).
 * Included only from dkim/ and its unit test.
 */
#ifndef SLUICE_DKIM_INT_H
#define SLUICE_DKIM_INT_H

#include <openssl/evp.h>

#include "dkim/dkim.h"

/* ---------------------------------------------------------------- canon */

/* Where canonical bytes go: a SHA-256 context or (tests) a buffer. */
typedef void (*dkim_sink_cb)(void *arg, const char *p, size_t n);

#define DKIM_STAGE_SIZE 8192

/*
 * Streaming body canonicalizer (RFC 6376 §3.4.3/§3.4.4). Feed the body in
 * any chunks; output is staged and flushed to the sink in large pieces.
 * Trailing empty lines are held as a count and dropped at the end. A final
 * line without CRLF is treated as terminated, as SMTP transport will add
 * the CRLF. Bare LF counts as CRLF; bare CR is data.
 */
typedef struct dkim_bodycanon {
    dkim_canon_t bc_canon;
    dkim_sink_cb bc_sink;
    void *bc_arg;
    size_t bc_pend_crlf; /* empty lines not yet emitted */
    bool bc_pend_cr;     /* last byte was CR: maybe a CRLF */
    bool bc_pend_wsp;    /* relaxed: WSP seen, not yet emitted */
    bool bc_line_data;   /* current line has emitted content */
    bool bc_any;         /* anything emitted at all */
    size_t bc_nstage;
    char bc_stage[DKIM_STAGE_SIZE];
} dkim_bodycanon_t;

void dkim_body_init(dkim_bodycanon_t *bc, dkim_canon_t canon, dkim_sink_cb sink, void *arg);
/* Whole lines at memory speed (runs of lines that are their own canonical
 * form go to the sink from p, without a copy); a partial or odd line
 * through the byte-wise machine below. */
void dkim_body_update(dkim_bodycanon_t *bc, const char *p, size_t n);
/* The byte-wise state machine alone: the reference the unit test compares
 * dkim_body_update with, and its fallback for the rare lines. */
void dkim_body_update_bytewise(dkim_bodycanon_t *bc, const char *p, size_t n);
void dkim_body_final(dkim_bodycanon_t *bc);

/* Append one canonicalized header field to out. field/len: the raw field,
 * name to end, with or without its line terminator. crlf: end with CRLF
 * (false for the DKIM-Signature field itself, RFC 6376 §3.7). */
void dkim_header_canon(buf_t *out, dkim_canon_t canon, const char *field, size_t len, bool crlf);

/* ---------------------------------------------------------------- message */

typedef struct dkim_hdr {
    const char *h_name; /* start of the field */
    size_t h_namelen;   /* name without trailing WSP */
    size_t h_len;       /* the whole field without its final line terminator */
} dkim_hdr_t;

typedef struct dkim_msg {
    dkim_hdr_t *m_hdrs;
    size_t m_nhdrs;
    size_t m_cap;
    const char *m_body;
    size_t m_bodylen;
    dkim_hdr_t m_inline[64];
} dkim_msg_t;

/* Split msg into header fields and body. Borrowed pointers. */
void dkim_msg_parse(dkim_msg_t *m, const char *msg, size_t len);
void dkim_msg_free(dkim_msg_t *m);

/* The domain of the first address of a From field value (the part after
 * the colon), lowercased into out. 0, or SL_EPARSE when none is found. */
int dkim_from_domain(const char *value, size_t len, char *out, size_t outlen);

/* ---------------------------------------------------------------- signing */

/* The body hashes of one message, per body canonicalization (relaxed,
 * simple): filled by the first signature that needs each, reused by the
 * others and, through the cache, by later signings of the same message. */
typedef struct dkim_bh {
    unsigned char bh_hash[2][32];
    bool bh_have[2];
} dkim_bh_t;

/* dkim_sign() with the body hashes in bh: those bh_have says are used as
 * they are, the others computed and stored there. Any thread. */
int dkim_sign_bh(const dkim_signer_t *s, const char *msg, size_t len, dkim_bh_t *bh, buf_t *out);

/* ---------------------------------------------------------------- cache */

/* Slots of a signer's signature cache (cache.c): a message's signatures
 * stay while its slot is not taken by a later message, 8,192 messages
 * here, about 3 s of signing at the esp-throughput rate (~4 MiB of fields
 * for RSA-2048 + Ed25519 at most). */
#define DKIM_CACHE_SLOTS 8192

typedef struct dkim_cache dkim_cache_t;

/* A cache of nslots (a power of two) entries; reuse_s: the longest a
 * signature is reused after it was made (0 = while it is cached; set from
 * the smallest x= lifetime / 2). Main thread (signer construction). */
dkim_cache_t *dkim_cache_new(size_t nslots, uint32_t reuse_s);
void dkim_cache_free(dkim_cache_t *c);
/* dkim_sign_once(): the cached fields of (id, variant, len), or a new
 * signing (with the cached body hashes when the fields are too old),
 * stored for the next call. Any thread, concurrently (a mutex held only to
 * look up and store, never while signing). */
int dkim_cache_sign(dkim_cache_t *c, const dkim_signer_t *s, uint64_t id, unsigned variant,
                    const char *msg, size_t len, buf_t *out);

/* ---------------------------------------------------------------- keys */

struct dkim_key {
    char *k_domain; /* lowercase */
    char *k_selector;
    char *k_path;
    EVP_PKEY *k_pkey;
    dkim_alg_t k_alg;
    int k_bits;
};

/* Freeze (sort) the store; after this it is read-only. Idempotent. */
int dkim_keystore_freeze(dkim_keystore_t *ks, char *err, size_t errlen);
/* Every key of domain (exact, case-insensitive): *first and *n. */
void dkim_keystore_domain(dkim_keystore_t *ks, const char *domain, size_t dlen,
                          const dkim_key_t *const **first, size_t *n);

#endif /* SLUICE_DKIM_INT_H */
