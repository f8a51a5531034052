/*
 * dkim/dkim.c - the DKIM signer (RFC 6376 §3.5-§3.7, §5; RFC 8463).
 *
 * dkim_signer_new() copies a dkim_conf_t into an immutable signer and
 * resolves the keys of entries that name their domain. dkim_sign() then,
 * per message: splits the header fields (msg.c), decides which signatures
 * to make (From domain from the last From field, with parent-domain
 * fallback; fixed domains), hashes the body once per body canonicalization
 * (canon.c streaming into SHA-256), and for each signature builds the
 * DKIM-Signature field with an empty b=, hashes the selected header fields
 * (bottom-most instance first, §5.4.2) plus that field, and signs the
 * digest: RSASSA-PKCS1-v1_5 with SHA-256, or PureEd25519 over the 32-byte
 * SHA-256 digest (RFC 8463 §3).
 *
 * Thread: a signer is read-only after construction; dkim_sign() runs on
 * any number of threads at once with per-call digest and key contexts.
 */
#include "dkim/dkim_int.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>
#include <openssl/rsa.h>

#define FOLD_COLS 78

typedef struct sig_entry {
    char *e_domain;   /* lowercase, or NULL = From domain */
    char *e_selector; /* or NULL = every key */
    dkim_alg_t e_alg;
    dkim_canon_t e_hcanon;
    dkim_canon_t e_bcanon;
    char **e_headers;
    size_t *e_hlens;
    size_t e_nheaders;
    char **e_oversign;
    size_t *e_olens;
    size_t e_noversign;
    bool e_timestamp;
    uint32_t e_expire;
    char *e_auid;
    bool e_qtag;
    bool e_hspaced;
    const dkim_key_t *const *e_keys; /* fixed domain: its keys in the store */
    size_t e_nkeys;
} sig_entry_t;

struct dkim_signer {
    dkim_keystore_t *s_ks;
    EVP_MD *s_md;
    sig_entry_t *s_sigs;
    size_t s_nsigs;
    uint64_t s_fixed_time;
    dkim_cache_t *s_cache; /* cache.c: signatures kept per message */
};

typedef struct sig_plan {
    const sig_entry_t *p_entry;
    const dkim_key_t *p_key;
} sig_plan_t;

/* Line folding of the DKIM-Signature field being written into a buf. */
typedef struct fold {
    buf_t *f_buf;
    size_t f_line; /* offset of the current line's first byte */
} fold_t;

static char **strv_copy(const char *const *v, size_t **lens, size_t *n, bool lower);
static void strv_free(char **v, size_t *lens, size_t n);
static void entry_free(sig_entry_t *e);
static bool key_matches(const sig_entry_t *e, const dkim_key_t *k);
static int plan_entry(const dkim_signer_t *s, const sig_entry_t *e, const char *from, size_t flen,
                      sig_plan_t *plan, int n);
static void sink_digest(void *arg, const char *p, size_t n);
static int body_hash(const dkim_signer_t *s, dkim_canon_t c, const char *body, size_t len,
                     unsigned char out[32]);
static void fold_put(fold_t *f, const char *tok, size_t n, bool space);
static void fold_put_r(fold_t *f, const char *tok, size_t n, bool space, size_t reserve);
static const dkim_hdr_t *select_hdr(const dkim_msg_t *m, unsigned char *used, const char *name,
                                    size_t nlen);
static int sign_digest(const dkim_signer_t *s, const dkim_key_t *k, const unsigned char dg[32],
                       unsigned char *sig, size_t *siglen);
static int sign_one(const dkim_signer_t *s, const dkim_msg_t *m, const sig_plan_t *p,
                    const unsigned char bh[32], uint64_t now, unsigned char *used, buf_t *hb,
                    buf_t *out);

/* ---------------------------------------------------------------- parsing */

int dkim_canon_parse(const char *s, dkim_canon_t *hc, dkim_canon_t *bc)
{
    dkim_canon_t v[2];
    const char *slash = strchr(s, '/');
    size_t n0 = slash ? (size_t)(slash - s) : strlen(s);
    const char *parts[2] = {s, slash ? slash + 1 : "simple"};
    size_t lens[2] = {n0, strlen(parts[1])};

    for (int i = 0; i < 2; i++) {
        if (lens[i] == 7 && strncasecmp(parts[i], "relaxed", 7) == 0)
            v[i] = DKIM_CANON_RELAXED;
        else if (lens[i] == 6 && strncasecmp(parts[i], "simple", 6) == 0)
            v[i] = DKIM_CANON_SIMPLE;
        else
            return SL_EPARSE;
    }
    *hc = v[0];
    *bc = v[1];
    return 0;
}

int dkim_alg_parse(const char *s, dkim_alg_t *alg)
{
    if (strcasecmp(s, "rsa-sha256") == 0)
        *alg = DKIM_ALG_RSA_SHA256;
    else if (strcasecmp(s, "ed25519-sha256") == 0)
        *alg = DKIM_ALG_ED25519_SHA256;
    else if (strcasecmp(s, "any") == 0)
        *alg = DKIM_ALG_ANY;
    else
        return SL_EPARSE; /* rsa-sha1 included: RFC 8301 */
    return 0;
}

const char *dkim_alg_name(dkim_alg_t alg)
{
    switch (alg) {
    case DKIM_ALG_RSA_SHA256:
        return "rsa-sha256";
    case DKIM_ALG_ED25519_SHA256:
        return "ed25519-sha256";
    default:
        return "any";
    }
}

const char *dkim_strerror(int err)
{
    switch (err) {
    case DKIM_EKEY:
        return "unusable DKIM key";
    case DKIM_ESIGN:
        return "DKIM signing failed";
    default:
        return sl_strerror(err);
    }
}

/* ---------------------------------------------------------------- signer */

static char **strv_copy(const char *const *v, size_t **lens, size_t *n, bool lower)
{
    size_t c = 0;
    while (v[c])
        c++;
    char **out = xcalloc(c + 1, sizeof(*out));
    *lens = xcalloc(c + 1, sizeof(**lens));
    for (size_t i = 0; i < c; i++) {
        out[i] = xstrdup(v[i]);
        (*lens)[i] = strlen(v[i]);
        for (char *p = out[i]; lower && *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p + 32);
    }
    *n = c;
    return out;
}

static void strv_free(char **v, size_t *lens, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        free(v[i]);
    free(v);
    free(lens);
}

static void entry_free(sig_entry_t *e)
{
    free(e->e_domain);
    free(e->e_selector);
    free(e->e_auid);
    strv_free(e->e_headers, e->e_hlens, e->e_nheaders);
    strv_free(e->e_oversign, e->e_olens, e->e_noversign);
}

static bool key_matches(const sig_entry_t *e, const dkim_key_t *k)
{
    if (e->e_selector && strcmp(e->e_selector, k->k_selector) != 0)
        return false;
    return e->e_alg == DKIM_ALG_ANY || e->e_alg == k->k_alg;
}

static bool name_ok(const char *n)
{
    if (!*n || strlen(n) > 200)
        return false;
    for (; *n; n++) /* RFC 5322 ftext: printable, no colon */
        if ((unsigned char)*n <= 32 || (unsigned char)*n >= 127 || *n == ':')
            return false;
    return true;
}

int dkim_signer_new(const dkim_conf_t *conf, dkim_keystore_t *ks, dkim_signer_t **out, char *err,
                    size_t errlen)
{
    dkim_signer_t *s = xcalloc(1, sizeof(*s));
    int rc;

    s->s_ks = dkim_keystore_ref(ks);
    s->s_fixed_time = conf->dc_fixed_time;
    if ((rc = dkim_keystore_freeze(ks, err, errlen)) < 0)
        goto fail;
    s->s_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (!s->s_md) {
        snprintf(err, errlen, "dkim: SHA-256 is not available from OpenSSL");
        rc = DKIM_ESIGN;
        goto fail;
    }
    s->s_sigs = xcalloc(conf->dc_nsigs ? conf->dc_nsigs : 1, sizeof(*s->s_sigs));
    for (size_t i = 0; i < conf->dc_nsigs; i++) {
        const dkim_sig_conf_t *c = &conf->dc_sigs[i];
        sig_entry_t *e = &s->s_sigs[i];
        s->s_nsigs = i + 1;
        if (c->sc_domain) {
            size_t dl = strlen(c->sc_domain);
            e->e_domain = xstrdup(c->sc_domain);
            if (dl && e->e_domain[dl - 1] == '.')
                e->e_domain[dl - 1] = '\0';
            for (char *p = e->e_domain; *p; p++)
                if (*p >= 'A' && *p <= 'Z')
                    *p = (char)(*p + 32);
        }
        e->e_selector = c->sc_selector ? xstrdup(c->sc_selector) : NULL;
        if (c->sc_selector && (!*c->sc_selector || strlen(c->sc_selector) > 63 ||
                               strpbrk(c->sc_selector, " \t;:=\r\n"))) {
            snprintf(err, errlen, "dkim: bad selector \"%s\"", c->sc_selector);
            rc = SL_ECONFIG;
            goto fail;
        }
        if (c->sc_auid && (strlen(c->sc_auid) > 300 || strpbrk(c->sc_auid, " \t;\r\n"))) {
            snprintf(err, errlen, "dkim: bad identity (i=) \"%s\"", c->sc_auid);
            rc = SL_ECONFIG;
            goto fail;
        }
        e->e_alg = c->sc_alg;
        e->e_hcanon = c->sc_hcanon;
        e->e_bcanon = c->sc_bcanon;
        e->e_headers = strv_copy(c->sc_headers ? c->sc_headers : DKIM_DEFAULT_HEADERS, &e->e_hlens,
                                 &e->e_nheaders, true);
        e->e_oversign = strv_copy(c->sc_oversign ? c->sc_oversign : DKIM_DEFAULT_OVERSIGN,
                                  &e->e_olens, &e->e_noversign, true);
        e->e_timestamp = !c->sc_no_timestamp;
        e->e_expire = c->sc_expire;
        e->e_auid = c->sc_auid ? xstrdup(c->sc_auid) : NULL;
        e->e_qtag = c->sc_qtag;
        e->e_hspaced = c->sc_hspaced;

        bool has_from = false;
        for (size_t j = 0; j < e->e_nheaders; j++) {
            if (!name_ok(e->e_headers[j])) {
                snprintf(err, errlen, "dkim: bad header name \"%s\"", e->e_headers[j]);
                rc = SL_ECONFIG;
                goto fail;
            }
            has_from |= strcmp(e->e_headers[j], "from") == 0;
        }
        for (size_t j = 0; j < e->e_noversign; j++) {
            if (!name_ok(e->e_oversign[j])) {
                snprintf(err, errlen, "dkim: bad header name \"%s\"", e->e_oversign[j]);
                rc = SL_ECONFIG;
                goto fail;
            }
        }
        if (!has_from) { /* RFC 6376 §5.4: From MUST be signed */
            snprintf(err, errlen, "dkim: the signed headers must include from");
            rc = SL_ECONFIG;
            goto fail;
        }
        if (e->e_timestamp == false && e->e_expire) {
            snprintf(err, errlen, "dkim: expire needs the timestamp (t=)");
            rc = SL_ECONFIG;
            goto fail;
        }
        if (e->e_domain) {
            const dkim_key_t *const *keys;
            size_t n, found = 0;
            dkim_keystore_domain(ks, e->e_domain, strlen(e->e_domain), &keys, &n);
            for (size_t j = 0; j < n; j++) {
                if (key_matches(e, keys[j])) {
                    if (!found)
                        e->e_keys = keys + j;
                    found++;
                }
            }
            /* keys of one domain are contiguous and sorted by selector */
            e->e_nkeys = found ? (size_t)(keys + n - e->e_keys) : 0;
            if (!found) {
                snprintf(err, errlen, "dkim: no %s key for domain %s%s%s",
                         e->e_alg == DKIM_ALG_ANY ? "" : dkim_alg_name(e->e_alg), e->e_domain,
                         e->e_selector ? " selector " : "", e->e_selector ? e->e_selector : "");
                rc = SL_ECONFIG;
                goto fail;
            }
        }
    }
    uint32_t reuse = 0; /* reuse a signature for half its x= lifetime at most */
    for (size_t i = 0; i < s->s_nsigs; i++)
        if (s->s_sigs[i].e_expire && (reuse == 0 || s->s_sigs[i].e_expire / 2 < reuse))
            reuse = MAX(s->s_sigs[i].e_expire / 2, 1);
    s->s_cache = dkim_cache_new(DKIM_CACHE_SLOTS, reuse);
    *out = s;
    return 0;

fail:
    dkim_signer_free(s);
    return rc;
}

void dkim_signer_free(dkim_signer_t *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->s_nsigs; i++)
        entry_free(&s->s_sigs[i]);
    free(s->s_sigs);
    dkim_cache_free(s->s_cache);
    EVP_MD_free(s->s_md);
    dkim_keystore_free(s->s_ks);
    free(s);
}

/* ---------------------------------------------------------------- signing */

/* Add the signatures one entry makes to plan[n..]; returns the new n. */
static int plan_entry(const dkim_signer_t *s, const sig_entry_t *e, const char *from, size_t flen,
                      sig_plan_t *plan, int n)
{
    const dkim_key_t *const *keys = e->e_keys;
    size_t nk = e->e_nkeys;

    if (!e->e_domain) {
        if (!from)
            return n;
        /* The From domain, then its parents while two labels remain. */
        const char *d = from;
        size_t dl = flen;
        for (;;) {
            size_t i, cnt;
            dkim_keystore_domain(s->s_ks, d, dl, &keys, &cnt);
            nk = cnt;
            for (i = 0; i < cnt && !key_matches(e, keys[i]); i++)
                ;
            if (i < cnt)
                break;
            const char *dot = memchr(d, '.', dl);
            if (!dot || !memchr(dot + 1, '.', dl - (size_t)(dot + 1 - d))) {
                nk = 0;
                break;
            }
            dl -= (size_t)(dot + 1 - d);
            d = dot + 1;
        }
    }
    for (size_t i = 0; i < nk && n < DKIM_MAX_SIGS; i++) {
        if (!key_matches(e, keys[i]))
            continue;
        /* one signature per key: the From domain may be the ESP domain */
        int j = 0;
        while (j < n && plan[j].p_key != keys[i])
            j++;
        if (j < n)
            continue;
        plan[n].p_entry = e;
        plan[n].p_key = keys[i];
        n++;
    }
    return n;
}

static void sink_digest(void *arg, const char *p, size_t n)
{
    EVP_DigestUpdate((EVP_MD_CTX *)arg, p, n);
}

static int body_hash(const dkim_signer_t *s, dkim_canon_t c, const char *body, size_t len,
                     unsigned char out[32])
{
    dkim_bodycanon_t bc;
    unsigned int olen = 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int rc = DKIM_ESIGN;

    if (!md || EVP_DigestInit_ex(md, s->s_md, NULL) != 1)
        goto fail;
    dkim_body_init(&bc, c, sink_digest, md);
    dkim_body_update(&bc, body, len);
    dkim_body_final(&bc);
    if (EVP_DigestFinal_ex(md, out, &olen) != 1 || olen != 32)
        goto fail;
    rc = 0;
fail:
    EVP_MD_CTX_free(md);
    return rc;
}

/* Append a token, folding before it (CRLF TAB) when the line would pass
 * FOLD_COLS; otherwise a space first when asked. */
static void fold_put(fold_t *f, const char *tok, size_t n, bool space)
{
    fold_put_r(f, tok, n, space, 0);
}

/* fold_put, keeping room for reserve more bytes (a ':' or ';' to follow). */
static void fold_put_r(fold_t *f, const char *tok, size_t n, bool space, size_t reserve)
{
    buf_t *b = f->f_buf;
    size_t col = b->b_len - f->f_line;
    if (col > 1 && col + (space ? 1 : 0) + n + reserve > FOLD_COLS) {
        buf_append(b, "\r\n\t", 3);
        f->f_line = b->b_len - 1;
    } else if (space) {
        buf_append(b, " ", 1);
    }
    buf_append(b, tok, n);
}

/* The bottom-most not yet used field called name (RFC 6376 §5.4.2). */
static const dkim_hdr_t *select_hdr(const dkim_msg_t *m, unsigned char *used, const char *name,
                                    size_t nlen)
{
    for (size_t i = m->m_nhdrs; i-- > 0;) {
        const dkim_hdr_t *h = &m->m_hdrs[i];
        if (!used[i] && h->h_namelen == nlen && strncasecmp(h->h_name, name, nlen) == 0) {
            used[i] = 1;
            return h;
        }
    }
    return NULL;
}

/*
 * Signing contexts kept per thread and key: setting one up (the provider's
 * key import, EVP_DigestSignInit) cost as much as an Ed25519 signature of
 * a 5 KiB message (bench/run-dkim), so each thread keeps the contexts of
 * the last few keys it signed with, as `openssl speed` does. Each holds a
 * reference on its EVP_PKEY, so a key freed by a reload stays valid (and
 * its address unused) until its context is evicted; the thread's exit
 * frees them (sign_ctx_key's destructor).
 */
#define SIGN_CTX_SLOTS 4

typedef struct sign_ctx {
    EVP_PKEY *sc_pkey;
    EVP_PKEY_CTX *sc_pc; /* RSA: sign_init'ed, PKCS#1 v1.5, SHA-256 */
    EVP_MD_CTX *sc_mc;   /* Ed25519: DigestSignInit'ed */
} sign_ctx_t;

typedef struct sign_ctxs {
    sign_ctx_t c[SIGN_CTX_SLOTS];
    unsigned next;
} sign_ctxs_t;

static pthread_key_t sign_ctx_key;
static pthread_once_t sign_ctx_once = PTHREAD_ONCE_INIT;

static void sign_ctx_clear(sign_ctx_t *c)
{
    EVP_PKEY_CTX_free(c->sc_pc);
    EVP_MD_CTX_free(c->sc_mc);
    EVP_PKEY_free(c->sc_pkey);
    memset(c, 0, sizeof(*c));
}

static void sign_ctxs_free(void *arg)
{
    sign_ctxs_t *t = arg;
    for (int i = 0; i < SIGN_CTX_SLOTS; i++)
        sign_ctx_clear(&t->c[i]);
    free(t);
}

static void sign_ctx_init(void)
{
    pthread_key_create(&sign_ctx_key, sign_ctxs_free);
}

/* This thread's context for k, made on first use; NULL if it cannot be. */
static sign_ctx_t *sign_ctx_get(const dkim_signer_t *s, const dkim_key_t *k)
{
    pthread_once(&sign_ctx_once, sign_ctx_init);
    sign_ctxs_t *t = pthread_getspecific(sign_ctx_key);
    if (!t) {
        t = xcalloc(1, sizeof(*t));
        pthread_setspecific(sign_ctx_key, t);
    }
    for (int i = 0; i < SIGN_CTX_SLOTS; i++)
        if (t->c[i].sc_pkey == k->k_pkey)
            return &t->c[i];
    sign_ctx_t *c = &t->c[t->next++ % SIGN_CTX_SLOTS];
    sign_ctx_clear(c);
    bool ok;
    if (k->k_alg == DKIM_ALG_RSA_SHA256) {
        c->sc_pc = EVP_PKEY_CTX_new_from_pkey(NULL, k->k_pkey, NULL);
        ok = c->sc_pc && EVP_PKEY_sign_init(c->sc_pc) == 1 &&
             EVP_PKEY_CTX_set_rsa_padding(c->sc_pc, RSA_PKCS1_PADDING) == 1 &&
             EVP_PKEY_CTX_set_signature_md(c->sc_pc, s->s_md) == 1;
    } else {
        c->sc_mc = EVP_MD_CTX_new();
        ok = c->sc_mc &&
             EVP_DigestSignInit_ex(c->sc_mc, NULL, NULL, NULL, NULL, k->k_pkey, NULL) == 1;
    }
    if (!ok) {
        sign_ctx_clear(c);
        return NULL;
    }
    EVP_PKEY_up_ref(k->k_pkey);
    c->sc_pkey = k->k_pkey;
    return c;
}

static int sign_digest(const dkim_signer_t *s, const dkim_key_t *k, const unsigned char dg[32],
                       unsigned char *sig, size_t *siglen)
{
    int rc = DKIM_ESIGN;
    sign_ctx_t *c = sign_ctx_get(s, k);

    if (c && k->k_alg == DKIM_ALG_RSA_SHA256) {
        if (EVP_PKEY_sign(c->sc_pc, sig, siglen, dg, 32) == 1)
            rc = 0;
    } else if (c) {
        /* RFC 8463: PureEd25519 over the SHA-256 digest (no prehash mode). */
        if (EVP_DigestSign(c->sc_mc, sig, siglen, dg, 32) == 1)
            rc = 0;
    }
    if (rc < 0 && c)
        sign_ctx_clear(c); /* made afresh next time */
    if (rc < 0) {
        char e[256];
        ERR_error_string_n(ERR_peek_last_error(), e, sizeof(e));
        log_error("dkim: signing with key %s (d=%s s=%s) failed: %s", k->k_path, k->k_domain,
                  k->k_selector, e);
        ERR_clear_error();
    }
    return rc;
}

/* Build one DKIM-Signature field into out (CRLF-terminated). */
static int sign_one(const dkim_signer_t *s, const dkim_msg_t *m, const sig_plan_t *p,
                    const unsigned char bh[32], uint64_t now, unsigned char *used, buf_t *hb,
                    buf_t *out)
{
    const sig_entry_t *e = p->p_entry;
    const dkim_key_t *k = p->p_key;
    size_t start = out->b_len;
    fold_t f = {out, start};
    char tok[600];
    int n;

    buf_reset(hb);
    memset(used, 0, m->m_nhdrs);

    buf_append_str(out, "DKIM-Signature:");
    fold_put(&f, "v=1;", 4, true);
    n = snprintf(tok, sizeof(tok), "a=%s;", dkim_alg_name(k->k_alg));
    fold_put(&f, tok, (size_t)n, true);
    n = snprintf(tok, sizeof(tok), "c=%s/%s;",
                 e->e_hcanon == DKIM_CANON_RELAXED ? "relaxed" : "simple",
                 e->e_bcanon == DKIM_CANON_RELAXED ? "relaxed" : "simple");
    fold_put(&f, tok, (size_t)n, true);
    n = snprintf(tok, sizeof(tok), "d=%s;", k->k_domain);
    fold_put(&f, tok, (size_t)n, true);
    if (e->e_auid) {
        n = snprintf(tok, sizeof(tok), "i=%s;", e->e_auid);
        fold_put(&f, tok, (size_t)MIN((size_t)n, sizeof(tok) - 1), true);
    }
    if (e->e_qtag)
        fold_put(&f, "q=dns/txt;", 10, true);
    n = snprintf(tok, sizeof(tok), "s=%s;", k->k_selector);
    fold_put(&f, tok, (size_t)MIN((size_t)n, sizeof(tok) - 1), true);
    if (e->e_timestamp) {
        n = snprintf(tok, sizeof(tok), "t=%llu;", (unsigned long long)now);
        fold_put(&f, tok, (size_t)n, true);
        if (e->e_expire) {
            n = snprintf(tok, sizeof(tok), "x=%llu;", (unsigned long long)(now + e->e_expire));
            fold_put(&f, tok, (size_t)n, true);
        }
    }

    /* h=: every present instance of the listed fields, then the over-signed
     * names once more; the selected fields are canonicalized into hb. */
    size_t nh = 0;
    for (int pass = 0; pass < 2; pass++) {
        char **names = pass ? e->e_oversign : e->e_headers;
        size_t *lens = pass ? e->e_olens : e->e_hlens;
        size_t cnt = pass ? e->e_noversign : e->e_nheaders;
        for (size_t i = 0; i < cnt; i++) {
            size_t reps = 1;
            if (pass == 0) {
                reps = 0;
                for (size_t j = 0; j < m->m_nhdrs; j++)
                    reps += m->m_hdrs[j].h_namelen == lens[i] &&
                            strncasecmp(m->m_hdrs[j].h_name, names[i], lens[i]) == 0;
            }
            for (size_t r = 0; r < reps; r++) {
                const dkim_hdr_t *h = select_hdr(m, used, names[i], lens[i]);
                if (h)
                    dkim_header_canon(hb, e->e_hcanon, h->h_name, h->h_len, true);
                if (e->e_hspaced) {
                    if (nh)
                        fold_put(&f, ":", 1, true);
                    n = snprintf(tok, sizeof(tok), "%s%s", nh ? "" : "h=", names[i]);
                    fold_put(&f, tok, (size_t)n, true);
                } else {
                    if (nh) /* fold after the colon, not before it */
                        buf_append(out, ":", 1);
                    n = snprintf(tok, sizeof(tok), "%s%s", nh ? "" : "h=", names[i]);
                    fold_put_r(&f, tok, (size_t)n, nh == 0, 1);
                }
                nh++;
            }
        }
    }
    buf_append(out, ";", 1);

    char b64[700];
    memcpy(b64, "bh=", 3);
    n = EVP_EncodeBlock((unsigned char *)b64 + 3, bh, 32);
    b64[3 + n] = ';';
    fold_put(&f, b64, (size_t)n + 4, true);
    fold_put(&f, "b=", 2, true);
    if (out->b_len - f.f_line > FOLD_COLS - 8) { /* keep b='s value off a full line */
        out->b_len -= 3;
        buf_append(out, "\r\n\tb=", 5);
        f.f_line = out->b_len - 3;
    }

    /* The header hash: selected fields, then this field with b= empty and
     * no final CRLF (RFC 6376 §3.7). */
    dkim_header_canon(hb, e->e_hcanon, out->b_data + start, out->b_len - start, false);
    unsigned char dg[32], sig[512];
    unsigned int dglen = 0;
    size_t siglen = sizeof(sig);
    if (EVP_Digest(hb->b_data, hb->b_len, dg, &dglen, s->s_md, NULL) != 1)
        return DKIM_ESIGN;
    if (sign_digest(s, k, dg, sig, &siglen) < 0)
        return DKIM_ESIGN;

    /* b=: base64, folded at FOLD_COLS. */
    n = EVP_EncodeBlock((unsigned char *)b64, sig, (int)siglen);
    const char *q = b64;
    size_t left = (size_t)n;
    while (left) {
        size_t room = FOLD_COLS - (out->b_len - f.f_line);
        if (room == 0 || room > FOLD_COLS) {
            buf_append(out, "\r\n\t", 3);
            f.f_line = out->b_len - 1;
            continue;
        }
        size_t take = MIN(room, left);
        buf_append(out, q, take);
        q += take;
        left -= take;
    }
    buf_append(out, "\r\n", 2);
    return 0;
}

int dkim_sign(const dkim_signer_t *s, const char *msg, size_t len, buf_t *out)
{
    dkim_bh_t bh = {0};
    return dkim_sign_bh(s, msg, len, &bh, out);
}

int dkim_sign_bh(const dkim_signer_t *s, const char *msg, size_t len, dkim_bh_t *bh, buf_t *out)
{
    dkim_msg_t m;
    sig_plan_t plan[DKIM_MAX_SIGS];
    char from[256];
    const char *fromp = NULL;
    size_t flen = 0;
    int n = 0, rc = 0;
    size_t mark = out->b_len;
    unsigned char used_inline[256], *used = used_inline;
    buf_t hb = {0};

    dkim_msg_parse(&m, msg, len);

    /* The From domain: the last From field (RFC 6376 §5.4.2 order). */
    for (size_t i = m.m_nhdrs; i-- > 0;) {
        const dkim_hdr_t *h = &m.m_hdrs[i];
        if (h->h_namelen == 4 && strncasecmp(h->h_name, "from", 4) == 0) {
            const char *colon = memchr(h->h_name, ':', h->h_len);
            if (colon && dkim_from_domain(colon + 1, h->h_len - (size_t)(colon + 1 - h->h_name),
                                          from, sizeof(from)) == 0) {
                fromp = from;
                flen = strlen(from);
            }
            break;
        }
    }
    for (size_t i = 0; i < s->s_nsigs; i++)
        n = plan_entry(s, &s->s_sigs[i], fromp, flen, plan, n);
    if (n == 0) {
        log_debug("dkim: no signature for this message (from domain %s)", fromp ? fromp : "(none)");
        goto done;
    }

    if (m.m_nhdrs > sizeof(used_inline))
        used = xmalloc(m.m_nhdrs);
    buf_init(&hb, 2048);
    uint64_t now = s->s_fixed_time ? s->s_fixed_time : clock_now_s();
    for (int i = 0; i < n; i++) {
        dkim_canon_t bc = plan[i].p_entry->e_bcanon;
        if (!bh->bh_have[bc]) { /* once per body canonicalization, kept by the caller */
            if ((rc = body_hash(s, bc, m.m_body, m.m_bodylen, bh->bh_hash[bc])) < 0)
                goto fail;
            bh->bh_have[bc] = true;
        }
        if ((rc = sign_one(s, &m, &plan[i], bh->bh_hash[bc], now, used, &hb, out)) < 0)
            goto fail;
    }
    rc = n;
    goto done;

fail:
    out->b_len = mark;
done:
    if (used != used_inline)
        free(used);
    buf_free(&hb);
    dkim_msg_free(&m);
    return rc;
}

int dkim_sign_once(const dkim_signer_t *s, uint64_t id, unsigned variant, const char *msg,
                   size_t len, buf_t *out)
{
    return dkim_cache_sign(s->s_cache, s, id, variant, msg, len, out);
}
