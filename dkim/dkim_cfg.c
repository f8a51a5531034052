/*
 * dkim/dkim_cfg.c - the signer of a config snapshot: dkim_cfg_attach()
 * turns cfg_t's plain dkim data (config/ cannot include dkim/) into a key
 * store and a signer, and hangs the signer on the snapshot (CFG_EXT_DKIM)
 * so that it lives exactly as long as the snapshot; dkim_cfg_signer() gives
 * it back to the delivery threads.
 *
 * Entries made: one for the From domain (sign_from_domain) and one for the
 * ESP domain (esp_domain), both with every key of their domain that matches
 * dkim.algorithm, so a domain with an RSA and an Ed25519 key gets both
 * signatures (RFC 8463 §4 asks for the RSA one beside Ed25519).
 *
 * Thread: dkim_cfg_attach on the thread that loaded the snapshot, before
 * it is shared; dkim_cfg_signer on any thread.
 */
#include "dkim/dkim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void signer_free_cb(void *p);

static void signer_free_cb(void *p)
{
    dkim_signer_free(p);
}

int dkim_cfg_attach(cfg_t *c, char *err, size_t errlen)
{
    char kerr[768];
    dkim_keystore_t *ks = NULL;
    dkim_signer_t *signer = NULL;
    dkim_sig_conf_t sigs[2];
    size_t nsigs = 0;
    dkim_canon_t hc, bc;
    dkim_alg_t alg;
    int rc;

    if (c->c_dkim_nkeys == 0)
        return 0;
    /* config/ validated both; a failure here is a schema bug, still reported */
    if (dkim_canon_parse(c->c_dkim_canon, &hc, &bc) < 0 ||
        dkim_alg_parse(c->c_dkim_alg, &alg) < 0) {
        snprintf(err, errlen, "%s: dkim: bad canonicalization or algorithm", c->c_file);
        return SL_ECONFIG;
    }
    ks = dkim_keystore_new();
    for (int i = 0; i < c->c_dkim_nkeys; i++) {
        const struct cfg_dkim_key *dk = &c->c_dkim_keys[i];
        rc =
            dkim_keystore_load(ks, dk->dk_domain, dk->dk_selector, dk->dk_file, kerr, sizeof(kerr));
        if (rc < 0) {
            snprintf(err, errlen, "%s:%d: dkim.keys.%s.%s: %s", c->c_file, dk->dk_line,
                     dk->dk_domain, dk->dk_selector, kerr);
            goto fail;
        }
    }
    memset(sigs, 0, sizeof(sigs));
    for (int i = 0; i < 2; i++) {
        dkim_sig_conf_t *sc = &sigs[nsigs];
        if (i == 0 && !c->c_dkim_sign_from)
            continue;
        if (i == 1 && c->c_dkim_esp_domain[0] == '\0')
            continue;
        sc->sc_domain = i == 0 ? NULL : c->c_dkim_esp_domain;
        sc->sc_alg = alg;
        sc->sc_hcanon = hc;
        sc->sc_bcanon = bc;
        sc->sc_headers = (const char *const *)c->c_dkim_headers;
        sc->sc_oversign = (const char *const *)c->c_dkim_oversign;
        sc->sc_no_timestamp = !c->c_dkim_timestamp;
        sc->sc_expire = (uint32_t)c->c_dkim_expire;
        nsigs++;
    }
    dkim_conf_t conf = {.dc_sigs = sigs, .dc_nsigs = nsigs};
    rc = dkim_signer_new(&conf, ks, &signer, kerr, sizeof(kerr));
    if (rc < 0) {
        snprintf(err, errlen, "%s: %s", c->c_file, kerr);
        goto fail;
    }
    dkim_keystore_free(ks); /* the signer holds its own reference */
    cfg_ext_set(c, CFG_EXT_DKIM, signer, signer_free_cb);
    return 0;
fail:
    dkim_keystore_free(ks);
    return rc;
}

const dkim_signer_t *dkim_cfg_signer(const cfg_t *c)
{
    return cfg_ext_get(c, CFG_EXT_DKIM);
}
