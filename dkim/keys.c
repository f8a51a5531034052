/*
 * dkim/keys.c - the DKIM key store.
 *
 * Keys are PEM files parsed once into EVP_PKEYs (at config load), checked
 * for permissions, type and size (RFC 8301), and kept in an array sorted by
 * (domain, selector) once the store is frozen, so a per-message lookup is a
 * binary search with no allocation. The store is refcounted: each signer
 * built from it holds a reference.
 *
 * Thread: load on one thread; after dkim_keystore_freeze() (done by
 * dkim_signer_new) everything is read-only and any thread may look up and
 * sign with the keys (OpenSSL 3 EVP_PKEYs are safe to share read-only).
 */
#include "dkim/dkim_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>

struct dkim_keystore {
    atomic_int ks_refs;
    bool ks_frozen;
    dkim_key_t **ks_keys;
    size_t ks_n;
    size_t ks_cap;
};

static int no_passphrase_cb(char *buf, int size, int rwflag, void *u);
static void key_free(dkim_key_t *k);
static int key_cmp(const void *a, const void *b);
static void lower_copy(char *dst, const char *src, size_t n);

const char *const DKIM_DEFAULT_HEADERS[] = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "reply-to",
    "cc",
    "in-reply-to",
    "references",
    "feedback-id",
    NULL,
};

const char *const DKIM_DEFAULT_OVERSIGN[] = {"from", NULL};

/* Never prompt on a terminal for an encrypted key: refuse it. */
static int no_passphrase_cb(char *buf, int size, int rwflag, void *u)
{
    return 0;
}

static void lower_copy(char *dst, const char *src, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)src[i];
        dst[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    dst[n] = '\0';
}

dkim_keystore_t *dkim_keystore_new(void)
{
    dkim_keystore_t *ks = xcalloc(1, sizeof(*ks));
    atomic_init(&ks->ks_refs, 1);
    return ks;
}

static void key_free(dkim_key_t *k)
{
    if (!k)
        return;
    EVP_PKEY_free(k->k_pkey);
    free(k->k_domain);
    free(k->k_selector);
    free(k->k_path);
    free(k);
}

int dkim_keystore_load(dkim_keystore_t *ks, const char *domain, const char *selector,
                       const char *path, char *err, size_t errlen)
{
    int rc = DKIM_EKEY;
    int fd = -1;
    FILE *fp = NULL;
    EVP_PKEY *pkey = NULL;
    struct stat st;

    if (ks->ks_frozen) {
        snprintf(err, errlen, "key %s: key store already in use", path);
        return SL_ECONFIG;
    }
    if (!domain || !*domain || !selector || !*selector || strlen(domain) > 253) {
        snprintf(err, errlen, "key %s: a domain and a selector are required", path);
        return SL_ECONFIG;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "key %s: %s", path, strerror(errno));
        goto fail;
    }
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "key %s: not a regular file", path);
        goto fail;
    }
    if (st.st_mode & (S_IROTH | S_IWOTH)) {
        snprintf(err, errlen, "key %s: is readable by others (chmod 600)", path);
        goto fail;
    }
    fp = fdopen(fd, "r");
    if (!fp) {
        rc = -errno;
        snprintf(err, errlen, "key %s: %s", path, strerror(errno));
        goto fail;
    }
    fd = -1;
    ERR_clear_error();
    pkey = PEM_read_PrivateKey(fp, NULL, no_passphrase_cb, NULL);
    if (!pkey) {
        snprintf(err, errlen, "key %s: not a PEM private key, or an encrypted one (%s)", path,
                 ERR_reason_error_string(ERR_peek_last_error())
                     ? ERR_reason_error_string(ERR_peek_last_error())
                     : "no key found");
        ERR_clear_error();
        goto fail;
    }

    dkim_alg_t alg;
    int bits = EVP_PKEY_get_bits(pkey);
    if (EVP_PKEY_get_id(pkey) == EVP_PKEY_RSA) {
        alg = DKIM_ALG_RSA_SHA256;
        if (bits < 1024) {
            snprintf(err, errlen,
                     "key %s: RSA key of %d bits is too small (RFC 8301: at least 1024)", path,
                     bits);
            goto fail;
        }
        if (bits > 4096) {
            snprintf(err, errlen, "key %s: RSA key of %d bits is too large (at most 4096)", path,
                     bits);
            goto fail;
        }
    } else if (EVP_PKEY_get_id(pkey) == EVP_PKEY_ED25519) {
        alg = DKIM_ALG_ED25519_SHA256;
    } else {
        snprintf(err, errlen, "key %s: unsupported key type %s (RSA or Ed25519 only)", path,
                 OBJ_nid2sn(EVP_PKEY_get_id(pkey)));
        goto fail;
    }

    dkim_key_t *k = xcalloc(1, sizeof(*k));
    size_t dlen = strlen(domain);
    if (dlen && domain[dlen - 1] == '.')
        dlen--;
    k->k_domain = xmalloc(dlen + 1);
    lower_copy(k->k_domain, domain, dlen);
    k->k_selector = xstrdup(selector);
    k->k_path = xstrdup(path);
    k->k_pkey = pkey;
    k->k_alg = alg;
    k->k_bits = bits;
    for (size_t i = 0; i < ks->ks_n; i++) {
        if (strcmp(ks->ks_keys[i]->k_domain, k->k_domain) == 0 &&
            strcmp(ks->ks_keys[i]->k_selector, k->k_selector) == 0) {
            snprintf(err, errlen, "key %s: %s selector %s already has a key (%s)", path,
                     k->k_domain, selector, ks->ks_keys[i]->k_path);
            key_free(k);
            fclose(fp);
            return SL_ECONFIG;
        }
    }
    if (ks->ks_n == ks->ks_cap) {
        ks->ks_cap = ks->ks_cap ? ks->ks_cap * 2 : 8;
        ks->ks_keys = xrealloc(ks->ks_keys, ks->ks_cap * sizeof(*ks->ks_keys));
    }
    ks->ks_keys[ks->ks_n++] = k;
    fclose(fp);
    return 0;

fail:
    EVP_PKEY_free(pkey);
    if (fp)
        fclose(fp);
    if (fd >= 0)
        close(fd);
    return rc;
}

size_t dkim_keystore_count(const dkim_keystore_t *ks)
{
    return ks->ks_n;
}

static int key_cmp(const void *a, const void *b)
{
    const dkim_key_t *ka = *(const dkim_key_t *const *)a;
    const dkim_key_t *kb = *(const dkim_key_t *const *)b;
    int c = strcmp(ka->k_domain, kb->k_domain);
    return c ? c : strcmp(ka->k_selector, kb->k_selector);
}

int dkim_keystore_freeze(dkim_keystore_t *ks, char *err, size_t errlen)
{
    if (ks->ks_frozen)
        return 0;
    if (ks->ks_n > 1)
        qsort(ks->ks_keys, ks->ks_n, sizeof(*ks->ks_keys), key_cmp);
    ks->ks_frozen = true;
    return 0;
}

/* Compare a stored domain with (d, dlen): <0, 0, >0 like strcmp. */
static int dom_cmp(const char *stored, const char *d, size_t dlen)
{
    int c = strncmp(stored, d, dlen);
    if (c)
        return c;
    return stored[dlen] ? 1 : 0;
}

void dkim_keystore_domain(dkim_keystore_t *ks, const char *domain, size_t dlen,
                          const dkim_key_t *const **first, size_t *n)
{
    size_t lo = 0, hi = ks->ks_n;

    if (!ks->ks_frozen) {
        /* A bug: lookups are for frozen stores only. */
        fprintf(stderr, "dkim: lookup in a key store that is not frozen\n");
        abort();
    }
    while (lo < hi) { /* lower bound */
        size_t mid = lo + (hi - lo) / 2;
        if (dom_cmp(ks->ks_keys[mid]->k_domain, domain, dlen) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t e = lo;
    while (e < ks->ks_n && dom_cmp(ks->ks_keys[e]->k_domain, domain, dlen) == 0)
        e++;
    *first = (const dkim_key_t *const *)ks->ks_keys + lo;
    *n = e - lo;
}

const dkim_key_t *dkim_keystore_find(dkim_keystore_t *ks, const char *domain, const char *selector)
{
    char d[256];
    size_t dlen = strlen(domain);
    if (dlen && domain[dlen - 1] == '.')
        dlen--;
    if (dlen >= sizeof(d))
        return NULL;
    lower_copy(d, domain, dlen);

    const dkim_key_t *const *keys;
    size_t n;
    dkim_keystore_domain(ks, d, dlen, &keys, &n);
    for (size_t i = 0; i < n; i++)
        if (strcmp(keys[i]->k_selector, selector) == 0)
            return keys[i];
    return NULL;
}

dkim_keystore_t *dkim_keystore_ref(dkim_keystore_t *ks)
{
    atomic_fetch_add(&ks->ks_refs, 1);
    return ks;
}

void dkim_keystore_free(dkim_keystore_t *ks)
{
    if (!ks || atomic_fetch_sub(&ks->ks_refs, 1) != 1)
        return;
    for (size_t i = 0; i < ks->ks_n; i++)
        key_free(ks->ks_keys[i]);
    free(ks->ks_keys);
    free(ks);
}

dkim_alg_t dkim_key_alg(const dkim_key_t *k)
{
    return k->k_alg;
}

int dkim_key_bits(const dkim_key_t *k)
{
    return k->k_bits;
}

void dkim_key_dns_record(const dkim_key_t *k, buf_t *out)
{
    unsigned char raw[1200];
    size_t rawlen = 0;

    if (k->k_alg == DKIM_ALG_ED25519_SHA256) {
        rawlen = sizeof(raw);
        if (EVP_PKEY_get_raw_public_key(k->k_pkey, raw, &rawlen) != 1)
            rawlen = 0;
    } else {
        int n = i2d_PUBKEY(k->k_pkey, NULL);
        if (n > 0 && (size_t)n <= sizeof(raw)) {
            unsigned char *p = raw;
            rawlen = (size_t)i2d_PUBKEY(k->k_pkey, &p);
        }
    }
    buf_printf(out, "v=DKIM1; k=%s; p=", k->k_alg == DKIM_ALG_ED25519_SHA256 ? "ed25519" : "rsa");
    buf_reserve(out, 4 * ((rawlen + 2) / 3) + 1);
    int n = EVP_EncodeBlock((unsigned char *)out->b_data + out->b_len, raw, (int)rawlen);
    out->b_len += (size_t)n;
}
