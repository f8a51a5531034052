/*
 * tests/fuzz/fuzz_dkim.c - fuzz target: DKIM header parsing and
 * canonicalization through the public signer (dkim_sign): header split,
 * From-domain extraction, relaxed and simple header and body
 * canonicalization, h= selection. Input: a stored message ("headers CRLF
 * CRLF body", bare LF allowed). The key is an Ed25519 key made once at
 * start-up (cheap to sign), for example.com: one From-domain entry
 * (relaxed/relaxed) and one fixed-domain entry (simple/simple) per input.
 *
 * Thread: single-threaded.
 */
#include "dkim/dkim.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static dkim_signer_t *signer;

/* A fresh Ed25519 key in a 0600 temp file, loaded, then the file removed. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char path[] = "/tmp/sluice-fuzz-dkim-XXXXXX";
    char err[512] = "";
    int fd = mkstemp(path);
    if (fd < 0)
        abort();
    fchmod(fd, 0600);
    FILE *f = fdopen(fd, "w");
    EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    if (f == NULL || pk == NULL || !PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL))
        abort();
    fclose(f);
    EVP_PKEY_free(pk);
    dkim_keystore_t *ks = dkim_keystore_new();
    if (dkim_keystore_load(ks, "example.com", "s1", path, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_dkim: %s\n", err);
        abort();
    }
    unlink(path);
    static const dkim_sig_conf_t sigs[2] = {
        {.sc_domain = NULL, .sc_hcanon = DKIM_CANON_RELAXED, .sc_bcanon = DKIM_CANON_RELAXED},
        {.sc_domain = "example.com",
         .sc_selector = "s1",
         .sc_hcanon = DKIM_CANON_SIMPLE,
         .sc_bcanon = DKIM_CANON_SIMPLE,
         .sc_expire = 3600},
    };
    dkim_conf_t conf = {.dc_sigs = sigs, .dc_nsigs = 2, .dc_fixed_time = 1700000000};
    if (dkim_signer_new(&conf, ks, &signer, err, sizeof(err)) != 0) {
        fprintf(stderr, "fuzz_dkim: %s\n", err);
        abort();
    }
    dkim_keystore_free(ks); /* the signer holds its own reference */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > (1 << 20))
        return 0;
    buf_t out;
    buf_init(&out, 1024);
    int n = dkim_sign(signer, (const char *)data, size, &out);
    if (n > DKIM_MAX_SIGS)
        abort();
    if (n > 0 && (out.b_len < 20 || memcmp(out.b_data, "DKIM-Signature:", 15) != 0))
        abort();
    if (n < 0 && out.b_len != 0)
        abort(); /* on error out is unchanged */
    buf_free(&out);
    return 0;
}
