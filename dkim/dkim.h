/*
 * dkim/dkim.h - DKIM signing (RFC 6376, RFC 8301, RFC 8463).
 *
 * Design
 *   A key store holds parsed private keys (EVP_PKEY), keyed by (signing
 *   domain, selector); PEM files are read once at start-up or reload, never
 *   per message. A signer is built from a dkim_conf_t and a frozen key store;
 *   it is immutable afterwards and used from several delivery threads at
 *   once (the keys are shared read-only; every call makes its own digest and
 *   signing contexts). dkim_sign() takes the stored message ("headers CRLF
 *   CRLF body", not dot-stuffed; bare LF is treated as CRLF because
 *   smtp_dot_stuff() sends it as CRLF) and appends the DKIM-Signature
 *   header(s) to prepend. The body is canonicalized in place, streaming into
 *   SHA-256 (no copy of a large body), once per body canonicalization even
 *   when several signatures are made (Ed25519 + RSA, customer + ESP domain).
 *
 * Which domain signs
 *   A signature entry names a domain, or NULL for "the From domain" (the
 *   address of the last From header). For the From domain the store is
 *   searched for the domain itself, then for its parent domains (so a key
 *   for example.com signs news.example.com, which DMARC relaxed alignment
 *   accepts). No key for the From domain: that entry makes no signature,
 *   which is not an error; the other entries (the ESP domain) still sign.
 *   A selector of NULL means "every key of that domain" (filtered by the
 *   entry's algorithm unless DKIM_ALG_ANY).
 *
 * Config (docs/config.md; config/ parses and validates, dkim/ builds):
 *   dkim {
 *     sign_from_domain = true;          # entry { domain = NULL }
 *     esp_domain = "esp.example";       # entry { domain = "esp.example" }
 *     keys {                            # domain { selector = "PEM file"; }
 *       "example.com" { s1 = "/etc/sluice/dkim/example.com.pem";
 *                       e1 = "/etc/sluice/dkim/example.com.ed.pem"; }
 *       "esp.example" { esp = "/etc/sluice/dkim/esp.pem"; }
 *     }
 *     headers = [ "from", "to", "subject", ... ];   # default: DKIM_DEFAULT_HEADERS
 *     oversign = [ "from" ];            # h= lists these once more
 *     canonicalization = "relaxed/relaxed";   # or simple/simple, relaxed/simple...
 *     algorithm = "any";                # any | rsa-sha256 | ed25519-sha256
 *     timestamp = true;                 # t=
 *     expire = 0;                       # x= = t= + expire seconds, 0 = none
 *   }
 *
 * Where the signer lives: in the config snapshot. The dependency order is
 * core/base <- config <- dkim, so config/ keeps only plain data (cfg_t's
 * c_dkim_* fields: key paths, selectors, options; it checks the files exist
 * and are not readable by others). sluiced registers dkim_cfg_attach() with
 * cfg_set_attach(), so every load (start-up, --check-config, reload) runs it
 * on the new snapshot before anyone sees it: it parses every PEM file once,
 * builds the signer and attaches it to the snapshot (cfg_ext_set, slot
 * CFG_EXT_DKIM), so it is freed with the snapshot's last reference. A key
 * that fails to load makes the whole load fail ("file:line:
 * dkim.keys.D.S: key /path: ..."): sluiced does not start and a reload
 * keeps the old snapshot. Delivery threads sign with
 * dkim_cfg_signer() of the snapshot they hold: no PEM parsing, no lock and
 * no allocation of keys per message; a new snapshot brings its own keys.
 *
 * Errors: 0 / a count on success, a negative code (SL_* from base.h or
 * DKIM_E* below) on failure; dkim_strerror() names both. A run-time key
 * failure is an error: the caller defers the message, it never sends it
 * unsigned.
 */
#ifndef SLUICE_DKIM_H
#define SLUICE_DKIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "core/base/base.h"

/* DKIM's own codes, beside base.h's SL_* codes. */
#define DKIM_EKEY (-10101)  /* key file unusable (permissions, type, size) */
#define DKIM_ESIGN (-10102) /* the crypto library failed to sign */

/* The most signatures one message gets. */
#define DKIM_MAX_SIGS 8

typedef enum {
    DKIM_ALG_ANY = 0, /* entries only: the key's own algorithm */
    DKIM_ALG_RSA_SHA256,
    DKIM_ALG_ED25519_SHA256,
} dkim_alg_t;

typedef enum {
    DKIM_CANON_RELAXED = 0,
    DKIM_CANON_SIMPLE,
} dkim_canon_t;

/* The default h= list (NULL-terminated); from is always signed. */
extern const char *const DKIM_DEFAULT_HEADERS[];
/* The default over-signed list: { "from", NULL }. */
extern const char *const DKIM_DEFAULT_OVERSIGN[];

/* ---------------------------------------------------------------- keys */

typedef struct dkim_key dkim_key_t;
typedef struct dkim_keystore dkim_keystore_t;

/* An empty store (refcount 1). Any thread. */
dkim_keystore_t *dkim_keystore_new(void);
/*
 * Load a PEM private key file (PKCS#8 or traditional RSA) for (domain,
 * selector). Refused with DKIM_EKEY and a message in err: a file readable by
 * others ("key /path: is readable by others (chmod 600)"), an encrypted key,
 * RSA under 1024 or over 4096 bits (RFC 8301), any type but RSA and Ed25519.
 * A (domain, selector) pair loaded twice is SL_ECONFIG. Not after the store
 * was given to a signer. Thread: the thread building the store.
 */
int dkim_keystore_load(dkim_keystore_t *ks, const char *domain, const char *selector,
                       const char *path, char *err, size_t errlen);
/* Number of keys loaded. Any thread. */
size_t dkim_keystore_count(const dkim_keystore_t *ks);
/* Exact lookup (domain case-insensitive), or NULL. Borrowed, valid while the
 * store is. Any thread once frozen (dkim_signer_new freezes the store). */
const dkim_key_t *dkim_keystore_find(dkim_keystore_t *ks, const char *domain, const char *selector);
/* Refcounting: the signer holds a reference. Any thread; NULL accepted. */
dkim_keystore_t *dkim_keystore_ref(dkim_keystore_t *ks);
void dkim_keystore_free(dkim_keystore_t *ks);

dkim_alg_t dkim_key_alg(const dkim_key_t *k);
int dkim_key_bits(const dkim_key_t *k);
/* The DNS TXT record to publish at <selector>._domainkey.<domain>:
 * "v=DKIM1; k=rsa; p=..." or "v=DKIM1; k=ed25519; p=...". Appends to out. */
void dkim_key_dns_record(const dkim_key_t *k, buf_t *out);

/* ---------------------------------------------------------------- signer */

/* One signature to make per message. A zeroed struct is a useful default:
 * From domain, every key of it, relaxed/relaxed, default headers, From
 * over-signed, t= on, no x=. */
typedef struct dkim_sig_conf {
    const char *sc_domain;   /* d=; NULL = the From domain */
    const char *sc_selector; /* s=; NULL = every key of d= (of sc_alg) */
    dkim_alg_t sc_alg;       /* DKIM_ALG_ANY = the key's algorithm */
    dkim_canon_t sc_hcanon;
    dkim_canon_t sc_bcanon;
    const char *const *sc_headers;  /* NULL-terminated; NULL = DKIM_DEFAULT_HEADERS */
    const char *const *sc_oversign; /* NULL-terminated; NULL = DKIM_DEFAULT_OVERSIGN */
    bool sc_no_timestamp;           /* omit t= (on by default) */
    uint32_t sc_expire;             /* x= = t= + sc_expire; 0 = no x= */
    /* Rarely needed tags (RFC 8463's example uses them): */
    const char *sc_auid; /* i= value, e.g. "@example.com"; NULL = none */
    bool sc_qtag;        /* emit q=dns/txt */
    bool sc_hspaced;     /* h= separated by " : " instead of ":" */
} dkim_sig_conf_t;

typedef struct dkim_conf {
    const dkim_sig_conf_t *dc_sigs; /* copied by dkim_signer_new */
    size_t dc_nsigs;
    uint64_t dc_fixed_time; /* tests and tools: t= value; 0 = the clock */
} dkim_conf_t;

typedef struct dkim_signer dkim_signer_t;

/* Parse "relaxed/simple", "simple" (= simple/simple), ... 0 or SL_EPARSE. */
int dkim_canon_parse(const char *s, dkim_canon_t *hc, dkim_canon_t *bc);
/* Parse "rsa-sha256", "ed25519-sha256", "any". 0 or SL_EPARSE. */
int dkim_alg_parse(const char *s, dkim_alg_t *alg);
const char *dkim_alg_name(dkim_alg_t alg);

/*
 * Build a signer. Entries naming a domain must find their key now (else
 * SL_ECONFIG with a message in err); From-domain entries are resolved per
 * message. Takes a reference on ks and freezes it. Main thread (config
 * load); the result is used from any thread.
 */
int dkim_signer_new(const dkim_conf_t *conf, dkim_keystore_t *ks, dkim_signer_t **out, char *err,
                    size_t errlen);
void dkim_signer_free(dkim_signer_t *s);

/*
 * Sign one message: msg/len is the stored message (headers, empty line,
 * body). Appends the DKIM-Signature header fields (CRLF-terminated, folded
 * at 78 columns) to out, in entry order; the caller prepends out's bytes to
 * the message and owns out. Returns the number of signatures made (0 when no
 * entry applies, e.g. no key for the From domain and no ESP domain), or a
 * negative code (DKIM_ESIGN: defer the message); on error out is unchanged.
 * Any thread, concurrently.
 */
int dkim_sign(const dkim_signer_t *s, const char *msg, size_t len, buf_t *out);

/*
 * dkim_sign() once per message: the fields made for (id, variant) are
 * kept in the signer's cache (DKIM_CACHE_SLOTS messages, dkim_int.h) and
 * given again, byte for byte, to every later call for the same message:
 * its other destination domains, its retries, its other transactions. id
 * is the message's queue id, variant tells copies of one message apart
 * (0: the stored bytes, 1: the 7-bit copy), and len must match too (a
 * different len is signed afresh). When a signature has x=, it is reused
 * for at most half its lifetime; after that the message is signed again
 * with a fresh t= but the body hash kept from the first signing (no new
 * pass over the body). A reload makes a new signer with an empty cache
 * (new keys sign from then on). Same returns as dkim_sign(). Any thread,
 * concurrently.
 */
int dkim_sign_once(const dkim_signer_t *s, uint64_t id, unsigned variant, const char *msg,
                   size_t len, buf_t *out);

/*
 * The operator tool behind `sluiced -c FILE --dkim-sign MSG` (and
 * dkim-bench's `sign`): read the message file at
 * in_path (or stdin for "-"), sign it and write the signed message (the
 * signatures then the message) to out_fd. Returns dkim_sign()'s count or a
 * negative code with a message in err. Any thread.
 */
int dkim_sign_file(const dkim_signer_t *s, const char *in_path, int out_fd, char *err,
                   size_t errlen);

/* ---------------------------------------------------------------- config */

/*
 * Build the signer described by c's dkim section (load every key file of
 * dkim.keys) and attach it to c (see "Where the signer lives"). No keys: 0
 * and nothing attached. On failure SL_ECONFIG / DKIM_EKEY / -errno with
 * "file:line: dkim.keys.DOMAIN.SELECTOR: key /path: why" in err; c is
 * unchanged. Thread: the thread that loaded c, before c is shared.
 */
int dkim_cfg_attach(cfg_t *c, char *err, size_t errlen);
/* c's signer, or NULL when nothing is signed. Borrowed: valid while the
 * caller holds c. Any thread. */
const dkim_signer_t *dkim_cfg_signer(const cfg_t *c);

/* A static string for DKIM_E* and base.h codes. Any thread. */
const char *dkim_strerror(int err);

#endif /* SLUICE_DKIM_H */
