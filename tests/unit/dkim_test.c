/*
 * tests/unit/dkim_test.c - dkim/: canonicalization golden files, From-domain
 * parsing, key loading rules, the RFC 8463 Appendix A vector, signature
 * selection (From domain, parent domain, ESP domain), header folding,
 * over-signing and concurrent signing.
 *
 * Golden files live in $SLUICE_SRC/tests/unit/dkim (references written by
 * dkimpy, see gen_refs.py). Keys are made with the openssl CLI in a
 * temporary directory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "dkim/dkim.h"
#include "dkim/dkim_int.h"

static char tmpdir[256];
static char key_rsa[300], key_rsa1024[300], key_rsa512[300], key_ed[300], key_ec[300], key_rfc[300],
    key_open[300], key_enc[300];

/* ---------------------------------------------------------------- helpers */

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    buf_t b;
    buf_init(&b, 4096);
    char tmp[4096];
    size_t n;
    while ((n = fread(tmp, 1, sizeof(tmp), f)) > 0)
        buf_append(&b, tmp, n);
    fclose(f);
    return buf_steal(&b, len);
}

static void sink_buf(void *arg, const char *p, size_t n)
{
    buf_append((buf_t *)arg, p, n);
}

static void run(const char *cmd)
{
    int rc = system(cmd);
    if (rc != 0)
        fail_msg("command failed (%d): %s", rc, cmd);
}

static void mkkey(char *path, const char *name, const char *genargs, mode_t mode)
{
    snprintf(path, 300, "%s/%s", tmpdir, name);
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "openssl genpkey %s -out %s 2>/dev/null", genargs, path);
    run(cmd);
    chmod(path, mode);
}

/* The RFC 8463 Appendix A.2 Ed25519 key as PKCS#8 PEM. */
static void write_rfc_key(void)
{
    static const unsigned char prefix[] = {0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06,
                                           0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20};
    unsigned char seed[48], der[64], pem[128];
    int n = EVP_DecodeBlock(
        seed, (const unsigned char *)"nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=", 44);
    assert_int_equal(n, 33); /* 32 bytes + 1 for the '=' padding */
    memcpy(der, prefix, sizeof(prefix));
    memcpy(der + sizeof(prefix), seed, 32);
    EVP_EncodeBlock(pem, der, 48);
    snprintf(key_rfc, sizeof(key_rfc), "%s/rfc8463.pem", tmpdir);
    FILE *f = fopen(key_rfc, "w");
    assert_non_null(f);
    fprintf(f, "-----BEGIN PRIVATE KEY-----\n%s\n-----END PRIVATE KEY-----\n", pem);
    fclose(f);
    chmod(key_rfc, 0600);
}

static int group_setup(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/dkim_test.XXXXXX");
    if (!mkdtemp(tmpdir))
        return -1;
    mkkey(key_rsa, "rsa2048.pem", "-algorithm RSA -pkeyopt rsa_keygen_bits:2048", 0600);
    mkkey(key_rsa1024, "rsa1024.pem", "-algorithm RSA -pkeyopt rsa_keygen_bits:1024", 0640);
    mkkey(key_rsa512, "rsa512.pem", "-algorithm RSA -pkeyopt rsa_keygen_bits:512", 0600);
    mkkey(key_ed, "ed25519.pem", "-algorithm ED25519", 0600);
    mkkey(key_ec, "ec.pem", "-algorithm EC -pkeyopt ec_paramgen_curve:P-256", 0600);
    mkkey(key_open, "open.pem", "-algorithm ED25519", 0644);
    mkkey(key_enc, "enc.pem", "-algorithm ED25519 -aes-128-cbc -pass pass:secret", 0600);
    write_rfc_key();
    return 0;
}

static int group_teardown(void **state)
{
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---------------------------------------------------------------- golden */

static const char *const golden_cases[] = {
    "empty_body",       "no_final_crlf",    "trailing_ws_lines", "trailing_empty_lines",
    "folded_headers",   "repeated_headers", "wsp_runs",          "eightbit",
    "lf_bare_newlines", "bare_cr",
};

static char *golden_path(const char *name, const char *ext)
{
    const char *src = getenv("SLUICE_SRC");
    return xasprintf("%s/tests/unit/dkim/%s.%s", src ? src : ".", name, ext);
}

static void check_equal_bytes(const char *what, const char *got, size_t glen, const char *want,
                              size_t wlen)
{
    if (glen != wlen || memcmp(got, want, glen) != 0)
        fail_msg("%s: got %zu bytes \"%.*s\", want %zu bytes \"%.*s\"", what, glen, (int)glen, got,
                 wlen, (int)wlen, want);
}

static void test_golden_canon(void **state)
{
    static const size_t chunks[] = {1, 2, 3, 7, 64, SIZE_MAX};
    for (size_t c = 0; c < ARRAY_SIZE(golden_cases); c++) {
        const char *name = golden_cases[c];
        char *p = golden_path(name, "in");
        size_t len;
        char *msg = read_file(p, &len);
        if (!msg)
            fail_msg("missing golden file %s (set SLUICE_SRC)", p);
        free(p);
        dkim_msg_t m;
        dkim_msg_parse(&m, msg, len);

        for (int canon = 0; canon < 2; canon++) {
            dkim_canon_t cn = canon ? DKIM_CANON_SIMPLE : DKIM_CANON_RELAXED;
            const char *cname = canon ? "simple" : "relaxed";
            char ext[32], what[128];
            size_t rlen;

            /* headers, each canonicalized, in message order */
            snprintf(ext, sizeof(ext), "h%s.ref", cname);
            p = golden_path(name, ext);
            char *ref = read_file(p, &rlen);
            assert_non_null(ref);
            free(p);
            buf_t got;
            buf_init(&got, 256);
            for (size_t i = 0; i < m.m_nhdrs; i++)
                dkim_header_canon(&got, cn, m.m_hdrs[i].h_name, m.m_hdrs[i].h_len, true);
            snprintf(what, sizeof(what), "%s headers %s", name, cname);
            check_equal_bytes(what, got.b_data, got.b_len, ref, rlen);
            free(ref);

            /* body, fed in chunks of several sizes */
            snprintf(ext, sizeof(ext), "b%s.ref", cname);
            p = golden_path(name, ext);
            ref = read_file(p, &rlen);
            assert_non_null(ref);
            free(p);
            for (size_t k = 0; k < ARRAY_SIZE(chunks); k++) {
                dkim_bodycanon_t *bc = xmalloc(sizeof(*bc));
                buf_reset(&got);
                dkim_body_init(bc, cn, sink_buf, &got);
                for (size_t off = 0; off < m.m_bodylen;) {
                    size_t n = MIN(chunks[k], m.m_bodylen - off);
                    dkim_body_update(bc, m.m_body + off, n);
                    off += n;
                }
                dkim_body_final(bc);
                free(bc);
                snprintf(what, sizeof(what), "%s body %s chunk %zu", name, cname, chunks[k]);
                check_equal_bytes(what, got.b_data ? got.b_data : "", got.b_len, ref, rlen);
            }
            free(ref);
            buf_free(&got);
        }
        dkim_msg_free(&m);
        free(msg);
    }
}

static void test_header_canon_cases(void **state)
{
    static const struct {
        const char *in;
        dkim_canon_t c;
        const char *want;
    } cases[] = {
        {"Subject : x  y \r\n", DKIM_CANON_RELAXED, "subject:x y\r\n"},
        {"SUBJECT:\r\n\tfolded\r\n", DKIM_CANON_RELAXED, "subject:folded\r\n"},
        {"X-A: a\r\n b", DKIM_CANON_RELAXED, "x-a:a b\r\n"},
        {"X-A: a\n b\n", DKIM_CANON_SIMPLE, "X-A: a\r\n b\r\n"},
        {"X-A:  keep  \r\n", DKIM_CANON_SIMPLE, "X-A:  keep  \r\n"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        buf_t b;
        buf_init(&b, 64);
        dkim_header_canon(&b, cases[i].c, cases[i].in, strlen(cases[i].in), true);
        check_equal_bytes(cases[i].in, b.b_data, b.b_len, cases[i].want, strlen(cases[i].want));
        buf_free(&b);
    }
}

/* ---------------------------------------------------------------- From */

static void test_from_domain(void **state)
{
    static const struct {
        const char *value;
        const char *want; /* NULL = no domain */
    } cases[] = {
        {" Joe SixPack <joe@football.example.com>", "football.example.com"},
        {" joe@Example.COM", "example.com"},
        {" joe@example.com (Joe <x@evil.example>)", "example.com"},
        {" \"Joe <joe@quoted.example>\" <real@sender.example>", "sender.example"},
        {" \"a@b\" <c@d.example>", "d.example"},
        {" (comment <x@y.example>) plain@plain.example", "plain.example"},
        {" a@one.example, b@two.example", "one.example"},
        {" <\"odd@local\"@weird.example>", "weird.example"},
        {" =?utf-8?q?J=C3=B6rg?= <j@example.org.>", "example.org"},
        {" undisclosed", NULL},
        {" <joe@[192.0.2.1]>", NULL},
        {" <joe@b\xc3\xbcro.example>", NULL},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char out[256] = "";
        int rc = dkim_from_domain(cases[i].value, strlen(cases[i].value), out, sizeof(out));
        if (cases[i].want) {
            if (rc != 0 || strcmp(out, cases[i].want) != 0)
                fail_msg("From:%s -> rc %d \"%s\", want \"%s\"", cases[i].value, rc, out,
                         cases[i].want);
        } else if (rc == 0) {
            fail_msg("From:%s -> \"%s\", want no domain", cases[i].value, out);
        }
    }
}

/* ---------------------------------------------------------------- keys */

static void test_key_rules(void **state)
{
    dkim_keystore_t *ks = dkim_keystore_new();
    char err[512], want[512];

    assert_int_equal(dkim_keystore_load(ks, "example.com", "rsa", key_rsa, err, sizeof(err)), 0);
    assert_int_equal(dkim_keystore_load(ks, "Example.COM", "old", key_rsa1024, err, sizeof(err)),
                     0); /* 1024 bits and group-readable: accepted */
    assert_int_equal(dkim_keystore_load(ks, "example.com", "ed", key_ed, err, sizeof(err)), 0);

    assert_int_equal(dkim_keystore_load(ks, "example.com", "open", key_open, err, sizeof(err)),
                     DKIM_EKEY);
    snprintf(want, sizeof(want), "key %s: is readable by others (chmod 600)", key_open);
    assert_string_equal(err, want);

    assert_int_equal(dkim_keystore_load(ks, "example.com", "small", key_rsa512, err, sizeof(err)),
                     DKIM_EKEY);
    assert_non_null(strstr(err, "512 bits is too small"));
    assert_int_equal(dkim_keystore_load(ks, "example.com", "ec", key_ec, err, sizeof(err)),
                     DKIM_EKEY);
    assert_non_null(strstr(err, "RSA or Ed25519 only"));
    assert_int_equal(dkim_keystore_load(ks, "example.com", "enc", key_enc, err, sizeof(err)),
                     DKIM_EKEY);
    assert_int_equal(
        dkim_keystore_load(ks, "example.com", "none", "/nonexistent/k.pem", err, sizeof(err)),
        -ENOENT);
    assert_non_null(strstr(err, "/nonexistent/k.pem"));
    assert_int_equal(dkim_keystore_load(ks, "example.com", "rsa", key_ed, err, sizeof(err)),
                     SL_ECONFIG); /* duplicate (domain, selector) */
    assert_int_equal(dkim_keystore_count(ks), 3);

    dkim_conf_t conf = {0};
    dkim_signer_t *s;
    assert_int_equal(dkim_signer_new(&conf, ks, &s, err, sizeof(err)), 0);
    const dkim_key_t *k = dkim_keystore_find(ks, "EXAMPLE.com.", "old");
    assert_non_null(k);
    assert_int_equal(dkim_key_bits(k), 1024);
    assert_int_equal(dkim_key_alg(k), DKIM_ALG_RSA_SHA256);
    k = dkim_keystore_find(ks, "example.com", "ed");
    assert_non_null(k);
    assert_int_equal(dkim_key_alg(k), DKIM_ALG_ED25519_SHA256);
    assert_null(dkim_keystore_find(ks, "example.org", "ed"));

    /* No more loading once a signer uses the store. */
    assert_int_equal(dkim_keystore_load(ks, "example.org", "x", key_ed, err, sizeof(err)),
                     SL_ECONFIG);
    dkim_signer_free(s);
    dkim_keystore_free(ks);
}

static void test_parse_helpers(void **state)
{
    dkim_canon_t h, b;
    dkim_alg_t a;
    assert_int_equal(dkim_canon_parse("relaxed/simple", &h, &b), 0);
    assert_int_equal(h, DKIM_CANON_RELAXED);
    assert_int_equal(b, DKIM_CANON_SIMPLE);
    assert_int_equal(dkim_canon_parse("relaxed", &h, &b), 0); /* RFC 6376: body = simple */
    assert_int_equal(b, DKIM_CANON_SIMPLE);
    assert_int_equal(dkim_canon_parse("loose/simple", &h, &b), SL_EPARSE);
    assert_int_equal(dkim_alg_parse("ed25519-sha256", &a), 0);
    assert_int_equal(a, DKIM_ALG_ED25519_SHA256);
    assert_int_equal(dkim_alg_parse("rsa-sha1", &a), SL_EPARSE); /* RFC 8301 */
}

/* ---------------------------------------------------------------- signing */

static const char rfc_msg[] = "From: Joe SixPack <joe@football.example.com>\r\n"
                              "To: Suzie Q <suzie@shopping.example.net>\r\n"
                              "Subject: Is dinner ready?\r\n"
                              "Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
                              "Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
                              "\r\n"
                              "Hi.\r\n"
                              "\r\n"
                              "We lost the game.  Are you hungry yet?\r\n"
                              "\r\n"
                              "Joe.\r\n";

/* The value of tag t in a DKIM-Signature field, with FWS removed. */
static char *tag_value(const char *hdr, size_t len, const char *t)
{
    buf_t flat;
    buf_init(&flat, len + 1);
    for (size_t i = 0; i < len; i++)
        if (hdr[i] != '\r' && hdr[i] != '\n' && hdr[i] != '\t' && hdr[i] != ' ')
            buf_append(&flat, hdr + i, 1);
    buf_append(&flat, "", 1);
    char pat[16];
    snprintf(pat, sizeof(pat), ";%s=", t);
    char *p = strstr(flat.b_data, pat);
    char *res = NULL;
    if (p) {
        p += strlen(pat);
        res = xstrndup(p, strcspn(p, ";"));
    }
    buf_free(&flat);
    return res;
}

static void test_rfc8463_vector(void **state)
{
    static const char *const hdrs[] = {"from", "to", "subject", "date", "message-id", NULL};
    static const char *const over[] = {"from", "subject", "date", NULL};
    dkim_keystore_t *ks = dkim_keystore_new();
    char err[512];

    assert_int_equal(
        dkim_keystore_load(ks, "football.example.com", "brisbane", key_rfc, err, sizeof(err)), 0);
    dkim_sig_conf_t sc = {
        .sc_domain = "football.example.com",
        .sc_selector = "brisbane",
        .sc_headers = hdrs,
        .sc_oversign = over,
        .sc_auid = "@football.example.com",
        .sc_qtag = true,
        .sc_hspaced = true,
    };
    dkim_conf_t conf = {.dc_sigs = &sc, .dc_nsigs = 1, .dc_fixed_time = 1528637909};
    dkim_signer_t *s;
    assert_int_equal(dkim_signer_new(&conf, ks, &s, err, sizeof(err)), 0);

    buf_t b;
    buf_init(&b, 1024);
    assert_int_equal(dkim_sign(s, rfc_msg, sizeof(rfc_msg) - 1, &b), 1);

    buf_t rec;
    buf_init(&rec, 128);
    dkim_key_dns_record(dkim_keystore_find(ks, "football.example.com", "brisbane"), &rec);
    check_equal_bytes("public key", rec.b_data, rec.b_len,
                      "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=", 66);

    char *v = tag_value(b.b_data, b.b_len, "bh");
    assert_string_equal(v, "2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=");
    free(v);
    v = tag_value(b.b_data, b.b_len, "h");
    assert_string_equal(v, "from:to:subject:date:message-id:from:subject:date");
    free(v);
    v = tag_value(b.b_data, b.b_len, "b");
    assert_string_equal(v, "/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus"
                           "Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==");
    free(v);
    buf_free(&rec);
    buf_free(&b);
    dkim_signer_free(s);
    dkim_keystore_free(ks);
}

static dkim_keystore_t *store_std(void)
{
    dkim_keystore_t *ks = dkim_keystore_new();
    char err[512];
    assert_int_equal(dkim_keystore_load(ks, "example.com", "rsa", key_rsa, err, sizeof(err)), 0);
    assert_int_equal(dkim_keystore_load(ks, "example.com", "ed", key_ed, err, sizeof(err)), 0);
    assert_int_equal(dkim_keystore_load(ks, "esp.example", "esp", key_ed, err, sizeof(err)), 0);
    return ks;
}

/* Split a block of DKIM-Signature fields; returns the count. */
static int split_sigs(const buf_t *b, const char **starts, size_t *lens, int max)
{
    int n = 0;
    const char *p = b->b_data, *end = b->b_data + b->b_len;
    while (p < end && n < max) {
        assert_memory_equal(p, "DKIM-Signature:", 15);
        const char *q = p;
        for (;;) { /* a field ends at a CRLF not followed by WSP */
            const char *nl = memchr(q, '\n', (size_t)(end - q));
            assert_non_null(nl);
            q = nl + 1;
            if (q == end || (*q != '\t' && *q != ' '))
                break;
        }
        starts[n] = p;
        lens[n] = (size_t)(q - p);
        n++;
        p = q;
    }
    return n;
}

static void test_sign_domains(void **state)
{
    dkim_keystore_t *ks = store_std();
    dkim_sig_conf_t sc[2] = {{0}, {.sc_domain = "esp.example"}};
    dkim_conf_t conf = {.dc_sigs = sc, .dc_nsigs = 2, .dc_fixed_time = 1700000000};
    dkim_signer_t *s;
    char err[512];
    assert_int_equal(dkim_signer_new(&conf, ks, &s, err, sizeof(err)), 0);
    dkim_keystore_free(ks); /* the signer keeps its reference */

    const char *starts[8];
    size_t lens[8];
    buf_t b;
    buf_init(&b, 1024);

    /* From example.com: both of its keys (ed, rsa: sorted by selector), then the ESP. */
    static const char m1[] = "Received: x\r\nFrom: Other <o@other.example>\r\nTo: t@x.example\r\n"
                             "From: A <a@Example.com>\r\nSubject: s\r\n\r\nbody\r\n";
    assert_int_equal(dkim_sign(s, m1, sizeof(m1) - 1, &b), 3);
    assert_int_equal(split_sigs(&b, starts, lens, 8), 3);
    static const char *const want_d[] = {"example.com", "example.com", "esp.example"};
    static const char *const want_s[] = {"ed", "rsa", "esp"};
    static const char *const want_a[] = {"ed25519-sha256", "rsa-sha256", "ed25519-sha256"};
    char *bh0 = NULL;
    for (int i = 0; i < 3; i++) {
        char *v = tag_value(starts[i], lens[i], "d");
        assert_string_equal(v, want_d[i]);
        free(v);
        v = tag_value(starts[i], lens[i], "s");
        assert_string_equal(v, want_s[i]);
        free(v);
        v = tag_value(starts[i], lens[i], "a");
        assert_string_equal(v, want_a[i]);
        free(v);
        v = tag_value(starts[i], lens[i], "h"); /* two From fields + over-signed From */
        assert_string_equal(v, "from:from:to:subject:from");
        free(v);
        v = tag_value(starts[i], lens[i], "t");
        assert_string_equal(v, "1700000000");
        free(v);
        assert_null(tag_value(starts[i], lens[i], "x"));
        assert_null(tag_value(starts[i], lens[i], "l")); /* l= is never emitted */
        v = tag_value(starts[i], lens[i], "bh");
        if (bh0)
            assert_string_equal(v, bh0);
        free(bh0);
        bh0 = v;
        /* Lines of at most 78 characters; continuations start with TAB. */
        const char *p = starts[i], *end = starts[i] + lens[i];
        while (p < end) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            assert_non_null(nl);
            assert_true(nl > p && nl[-1] == '\r');
            assert_true(nl - 1 - p <= 78);
            p = nl + 1;
            if (p < end)
                assert_int_equal(*p, '\t');
        }
    }
    free(bh0);

    /* A subdomain of example.com is signed with example.com's keys. */
    static const char m2[] = "From: n@news.mail.example.com\r\n\r\n";
    buf_reset(&b);
    assert_int_equal(dkim_sign(s, m2, sizeof(m2) - 1, &b), 3);
    char *v = tag_value(b.b_data, b.b_len, "d");
    assert_string_equal(v, "example.com");
    free(v);

    /* No key for the From domain: only the ESP signature. */
    static const char m3[] = "From: u@nokey.example\r\nSubject: s\r\n\r\n";
    buf_reset(&b);
    assert_int_equal(dkim_sign(s, m3, sizeof(m3) - 1, &b), 1);
    v = tag_value(b.b_data, b.b_len, "d");
    assert_string_equal(v, "esp.example");
    free(v);
    /* No From at all: only the ESP signature. */
    static const char m4[] = "Subject: no from\r\n\r\nbody";
    buf_reset(&b);
    assert_int_equal(dkim_sign(s, m4, sizeof(m4) - 1, &b), 1);

    buf_free(&b);
    dkim_signer_free(s);
}

static void test_sign_options(void **state)
{
    dkim_keystore_t *ks = store_std();
    static const char *const none[] = {NULL};
    dkim_sig_conf_t sc = {.sc_alg = DKIM_ALG_RSA_SHA256,
                          .sc_expire = 86400,
                          .sc_hcanon = DKIM_CANON_SIMPLE,
                          .sc_bcanon = DKIM_CANON_SIMPLE,
                          .sc_oversign = none};
    dkim_conf_t conf = {.dc_sigs = &sc, .dc_nsigs = 1, .dc_fixed_time = 1700000000};
    dkim_signer_t *s;
    char err[512];
    assert_int_equal(dkim_signer_new(&conf, ks, &s, err, sizeof(err)), 0);

    static const char m[] = "From: a@example.com\r\nList-Unsubscribe: <https://u.example/x>\r\n"
                            "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nb\r\n";
    buf_t b;
    buf_init(&b, 16); /* grows */
    buf_append_str(&b, "keep:");
    assert_int_equal(dkim_sign(s, m, sizeof(m) - 1, &b), 1);
    assert_memory_equal(b.b_data, "keep:", 5); /* appended, not overwritten */
    char *v = tag_value(b.b_data + 5, b.b_len - 5, "x");
    assert_string_equal(v, "1700086400");
    free(v);
    v = tag_value(b.b_data + 5, b.b_len - 5, "a");
    assert_string_equal(v, "rsa-sha256");
    free(v);
    v = tag_value(b.b_data + 5, b.b_len - 5, "c");
    assert_string_equal(v, "simple/simple");
    free(v);
    v = tag_value(b.b_data + 5, b.b_len - 5, "h"); /* RFC 8058 headers signed */
    assert_string_equal(v, "from:list-unsubscribe:list-unsubscribe-post");
    free(v);
    buf_free(&b);
    dkim_signer_free(s);

    /* Config errors. */
    static const char *const nofrom[] = {"to", "subject", NULL};
    dkim_sig_conf_t bad1 = {.sc_headers = nofrom};
    conf.dc_sigs = &bad1;
    assert_int_equal(dkim_signer_new(&conf, ks, &s, err, sizeof(err)), SL_ECONFIG);
    assert_non_null(strstr(err, "from"));
    dkim_sig_conf_t bad2 = {.sc_domain = "unknown.example"};
    conf.dc_sigs = &bad2;
    assert_int_equal(dkim_signer_new(&conf, ks, &s, err, sizeof(err)), SL_ECONFIG);
    assert_non_null(strstr(err, "unknown.example"));
    dkim_sig_conf_t bad3 = {.sc_domain = "esp.example", .sc_alg = DKIM_ALG_RSA_SHA256};
    conf.dc_sigs = &bad3;
    assert_int_equal(dkim_signer_new(&conf, ks, &s, err, sizeof(err)), SL_ECONFIG);
    dkim_keystore_free(ks);
}

/* ---------------------------------------------------------------- threads */

typedef struct {
    const dkim_signer_t *s;
    const char *msg;
    size_t len;
    buf_t first;
    int mismatches;
} thr_arg_t;

static void *thr_sign(void *p)
{
    thr_arg_t *a = p;
    buf_t b;
    buf_init(&b, 2048);
    for (int i = 0; i < 200; i++) {
        buf_reset(&b);
        if (dkim_sign(a->s, a->msg, a->len, &b) != 2 || b.b_len != a->first.b_len ||
            memcmp(b.b_data, a->first.b_data, b.b_len) != 0)
            a->mismatches++;
    }
    buf_free(&b);
    return NULL;
}

static void test_concurrent_signing(void **state)
{
    dkim_keystore_t *ks = store_std();
    dkim_sig_conf_t sc = {0};
    dkim_conf_t conf = {.dc_sigs = &sc, .dc_nsigs = 1, .dc_fixed_time = 1700000000};
    dkim_signer_t *s;
    char err[512];
    assert_int_equal(dkim_signer_new(&conf, ks, &s, err, sizeof(err)), 0);
    dkim_keystore_free(ks);

    buf_t msg;
    buf_init(&msg, 8192);
    buf_append_str(&msg, "From: a@example.com\r\nSubject: threads\r\n\r\n");
    for (int i = 0; i < 100; i++)
        buf_printf(&msg, "line %d  with\t\tspace \r\n", i);

    thr_arg_t a[3];
    pthread_t t[3];
    for (int i = 0; i < 3; i++) {
        a[i] = (thr_arg_t){.s = s, .msg = msg.b_data, .len = msg.b_len};
        buf_init(&a[i].first, 2048);
        /* Ed25519 and RSA PKCS#1 v1.5 are deterministic: all outputs equal. */
        assert_int_equal(dkim_sign(s, msg.b_data, msg.b_len, &a[i].first), 2);
    }
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&t[i], NULL, thr_sign, &a[i]), 0);
    for (int i = 0; i < 3; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(a[i].mismatches, 0);
        buf_free(&a[i].first);
    }
    buf_free(&msg);
    dkim_signer_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_canon),       cmocka_unit_test(test_header_canon_cases),
        cmocka_unit_test(test_from_domain),        cmocka_unit_test(test_key_rules),
        cmocka_unit_test(test_parse_helpers),      cmocka_unit_test(test_rfc8463_vector),
        cmocka_unit_test(test_sign_domains),       cmocka_unit_test(test_sign_options),
        cmocka_unit_test(test_concurrent_signing),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
