/*
 * bench/dkim-bench.c - DKIM micro-benchmark and signing tool.
 *
 *   dkim-bench sign [options] [FILE|-]   sign a message, print the signed message
 *   dkim-bench dns -k D:S:KEY            print the DNS TXT record of a key
 *   dkim-bench bench [-s SECS] -k D:S:KEY...
 *                                        signatures/s on one core, 5 KiB and
 *                                        100 KiB messages, per key
 *   dkim-bench bodyhash [-s SECS]        MB/s of the relaxed body
 *                                        canonicalization into SHA-256 (and
 *                                        of the byte-wise machine), 100 KiB
 *                                        bodies: plain text, text with SP
 *                                        runs on every line
 *
 * sign options:
 *   -k DOMAIN:SELECTOR:KEYFILE   load a key (repeatable)
 *   -e ENTRY                     a signature to make (repeatable):
 *                                DOMAIN|@from[:SELECTOR|*[:ALG]]; default "@from"
 *   -c CANON                     relaxed/relaxed (default), simple/simple, ...
 *   -H h1,h2,...                 signed header list (default: dkim's default)
 *   -O o1,o2,... | -O ""         over-signed headers (default: from)
 *   -T TIME                      fixed t= (default: now)
 *   -x SECS                      x= expiry after t=
 *   -n                           no t=
 *   -i AUID -q -S                i= tag, q=dns/txt, h= separated by " : "
 *
 * Single-threaded; exits 0 on success, 1 on a signing error, 2 on usage or
 * configuration errors. `sign` and the operator's `sluiced -c FILE
 * --dkim-sign MSG` both go through dkim_sign_file(); sluiced signs with the
 * keys of its configuration, `sign` with the keys given here.
 */
#include "dkim/dkim_int.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_KEYS 16
#define MAX_LIST 64

static void usage(void);
static int load_key(dkim_keystore_t *ks, char *spec, char *d, char *sel);
static const char **split_list(char *s);
static int cmd_sign(int argc, char **argv);
static int cmd_dns(int argc, char **argv);
static int cmd_bench(int argc, char **argv);
static int cmd_bodyhash(int argc, char **argv);

static void usage(void)
{
    fprintf(stderr, "usage: dkim-bench sign [-k D:S:KEY]... [-e ENTRY]... [-c CANON] [-H LIST]"
                    " [-O LIST] [-T TIME] [-x SECS] [-n] [-i AUID] [-q] [-S] [FILE|-]\n"
                    "       dkim-bench dns -k D:S:KEY\n"
                    "       dkim-bench bench [-s SECS] -k D:S:KEY...\n"
                    "       dkim-bench bodyhash [-s SECS]\n");
    exit(2);
}

/* "domain:selector:path" -> loaded into ks; d and sel receive the names. */
static int load_key(dkim_keystore_t *ks, char *spec, char *d, char *sel)
{
    char err[512];
    char *c1 = strchr(spec, ':');
    char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (!c2) {
        fprintf(stderr, "dkim-bench: -k wants DOMAIN:SELECTOR:KEYFILE\n");
        return -1;
    }
    snprintf(d, 256, "%.*s", (int)(c1 - spec), spec);
    snprintf(sel, 64, "%.*s", (int)(c2 - c1 - 1), c1 + 1);
    if (dkim_keystore_load(ks, d, sel, c2 + 1, err, sizeof(err)) < 0) {
        fprintf(stderr, "dkim-bench: %s\n", err);
        return -1;
    }
    return 0;
}

static const char **split_list(char *s)
{
    const char **v = calloc(MAX_LIST + 1, sizeof(*v));
    int n = 0;
    for (char *tok = strtok(s, ", "); tok && n < MAX_LIST; tok = strtok(NULL, ", "))
        v[n++] = tok;
    return v;
}

static int cmd_sign(int argc, char **argv)
{
    dkim_keystore_t *ks = dkim_keystore_new();
    dkim_sig_conf_t ent[DKIM_MAX_SIGS];
    dkim_sig_conf_t tmpl = {0};
    char *entries[DKIM_MAX_SIGS];
    int nent = 0, opt;
    dkim_conf_t conf = {0};
    char d[256], sel[64], err[512];
    char *specs[DKIM_MAX_SIGS] = {0};
    int rc = 2;

    while ((opt = getopt(argc, argv, "k:e:c:H:O:T:x:ni:qS")) != -1) {
        switch (opt) {
        case 'k':
            if (load_key(ks, optarg, d, sel) < 0)
                goto out;
            break;
        case 'e':
            if (nent == DKIM_MAX_SIGS)
                usage();
            entries[nent++] = optarg;
            break;
        case 'c':
            if (dkim_canon_parse(optarg, &tmpl.sc_hcanon, &tmpl.sc_bcanon) < 0)
                usage();
            break;
        case 'H':
            tmpl.sc_headers = split_list(optarg);
            break;
        case 'O':
            tmpl.sc_oversign = split_list(optarg);
            break;
        case 'T':
            conf.dc_fixed_time = strtoull(optarg, NULL, 10);
            break;
        case 'x':
            tmpl.sc_expire = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'n':
            tmpl.sc_no_timestamp = true;
            break;
        case 'i':
            tmpl.sc_auid = optarg;
            break;
        case 'q':
            tmpl.sc_qtag = true;
            break;
        case 'S':
            tmpl.sc_hspaced = true;
            break;
        default:
            usage();
        }
    }
    if (nent == 0)
        entries[nent++] = "@from";
    for (int i = 0; i < nent; i++) {
        ent[i] = tmpl;
        char *spec = specs[i] = strdup(entries[i]);
        char *dom = strtok(spec, ":");
        char *s = strtok(NULL, ":");
        char *alg = strtok(NULL, ":");
        ent[i].sc_domain = (dom && strcmp(dom, "@from") != 0) ? dom : NULL;
        ent[i].sc_selector = (s && strcmp(s, "*") != 0) ? s : NULL;
        if (alg && dkim_alg_parse(alg, &ent[i].sc_alg) < 0)
            usage();
    }
    conf.dc_sigs = ent;
    conf.dc_nsigs = (size_t)nent;
    dkim_signer_t *signer;
    if (dkim_signer_new(&conf, ks, &signer, err, sizeof(err)) < 0) {
        fprintf(stderr, "dkim-bench: %s\n", err);
        goto out;
    }
    rc = dkim_sign_file(signer, optind < argc ? argv[optind] : "-", 1, err, sizeof(err));
    dkim_signer_free(signer);
    if (rc < 0) {
        fprintf(stderr, "dkim-bench: %s\n", err);
        rc = 1;
    } else {
        fprintf(stderr, "dkim-bench: %d signature(s)\n", rc);
        rc = 0;
    }
out:
    dkim_keystore_free(ks);
    for (int i = 0; i < DKIM_MAX_SIGS; i++)
        free(specs[i]);
    free((void *)tmpl.sc_headers);
    free((void *)tmpl.sc_oversign);
    return rc;
}

static int cmd_dns(int argc, char **argv)
{
    dkim_keystore_t *ks = dkim_keystore_new();
    char d[256], sel[64], err[512];
    int opt;
    bool have = false;

    while ((opt = getopt(argc, argv, "k:")) != -1) {
        if (opt != 'k' || have)
            usage();
        if (load_key(ks, optarg, d, sel) < 0) {
            dkim_keystore_free(ks);
            return 2;
        }
        have = true;
    }
    if (!have)
        usage();
    dkim_conf_t conf = {0};
    dkim_signer_t *signer; /* freezes the store */
    if (dkim_signer_new(&conf, ks, &signer, err, sizeof(err)) < 0)
        return 2;
    buf_t b;
    buf_init(&b, 1024);
    dkim_key_dns_record(dkim_keystore_find(ks, d, sel), &b);
    printf("%.*s\n", (int)b.b_len, b.b_data);
    buf_free(&b);
    dkim_signer_free(signer);
    dkim_keystore_free(ks);
    return 0;
}

static char *make_message_text(size_t size, size_t *len, const char *line, size_t llen);

/* A realistic message: typical ESP headers, a text body of size bytes. */
static char *make_message(size_t size, size_t *len)
{
    static const char line[] = "Lorem ipsum dolor sit amet,  consectetur adipiscing elit, sed "
                               "do eiusmod tempor\r\n";
    return make_message_text(size, len, line, sizeof(line) - 1);
}

static char *make_message_text(size_t size, size_t *len, const char *line, size_t llen)
{
    buf_t b;
    buf_init(&b, size + 2048);
    buf_append_str(&b, "Received: from app1.example.com (app1 [10.0.0.1]) by mta1.esp.example\r\n"
                       "\twith ESMTP id 4ABCDEF; Tue, 1 Oct 2024 12:00:00 +0000\r\n"
                       "From: \"Example News\" <news@example.com>\r\n"
                       "To: recipient@example.net\r\n"
                       "Subject: Your weekly digest: 12 new items\r\n"
                       "Date: Tue, 1 Oct 2024 12:00:00 +0000\r\n"
                       "Message-ID: <20241001120000.12345@example.com>\r\n"
                       "MIME-Version: 1.0\r\n"
                       "Content-Type: text/plain; charset=utf-8\r\n"
                       "List-Unsubscribe: <https://example.com/u/abcdef>, "
                       "<mailto:unsub-abcdef@example.com>\r\n"
                       "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
                       "Feedback-ID: 123:campaign42:example\r\n"
                       "\r\n");
    while (b.b_len < size)
        buf_append(&b, line, llen);
    return buf_steal(&b, len);
}

static int cmd_bench(int argc, char **argv)
{
    char specs[MAX_KEYS][2][256];
    dkim_keystore_t *ks = dkim_keystore_new();
    double secs = 3.0;
    int nkeys = 0, opt;
    char err[512];

    while ((opt = getopt(argc, argv, "k:s:")) != -1) {
        if (opt == 's') {
            secs = atof(optarg);
        } else if (opt == 'k' && nkeys < MAX_KEYS) {
            if (load_key(ks, optarg, specs[nkeys][0], specs[nkeys][1]) < 0)
                return 2;
            nkeys++;
        } else {
            usage();
        }
    }
    if (!nkeys)
        usage();
    static const size_t sizes[] = {5 * 1024, 100 * 1024};
    printf("%-16s %-6s %8s %12s %10s\n", "algorithm", "size", "bits", "sigs/s", "us/sig");
    for (int k = 0; k < nkeys; k++) {
        dkim_sig_conf_t sc = {.sc_domain = specs[k][0], .sc_selector = specs[k][1]};
        dkim_conf_t conf = {.dc_sigs = &sc, .dc_nsigs = 1};
        dkim_signer_t *signer;
        if (dkim_signer_new(&conf, ks, &signer, err, sizeof(err)) < 0) {
            fprintf(stderr, "dkim-bench: %s\n", err);
            return 2;
        }
        const dkim_key_t *key = dkim_keystore_find(ks, specs[k][0], specs[k][1]);
        for (size_t z = 0; z < ARRAY_SIZE(sizes); z++) {
            size_t len;
            char *msg = make_message(sizes[z], &len);
            buf_t out;
            buf_init(&out, 1024);
            uint64_t t0 = clock_mono_us(), t1 = t0;
            uint64_t count = 0;
            while (t1 - t0 < (uint64_t)(secs * 1e6)) {
                for (int i = 0; i < 16; i++) {
                    buf_reset(&out);
                    if (dkim_sign(signer, msg, len, &out) != 1) {
                        fprintf(stderr, "dkim-bench: signing failed\n");
                        return 1;
                    }
                }
                count += 16;
                t1 = clock_mono_us();
            }
            double el = (double)(t1 - t0) / 1e6;
            printf("%-16s %-6s %8d %12.1f %10.1f\n", dkim_alg_name(dkim_key_alg(key)),
                   sizes[z] == 5 * 1024 ? "5KiB" : "100KiB", dkim_key_bits(key), (double)count / el,
                   el * 1e6 / (double)count);
            fflush(stdout);
            buf_free(&out);
            free(msg);
        }
        dkim_signer_free(signer);
    }
    dkim_keystore_free(ks);
    return 0;
}

static void sink_md(void *arg, const char *p, size_t n)
{
    EVP_DigestUpdate((EVP_MD_CTX *)arg, p, n);
}

/* MB/s of canonicalization + SHA-256 over the body of msg, as dkim_sign()
 * does it (bytewise: the byte-wise machine alone, the old way). */
static double bodyhash_rate(const char *msg, size_t len, bool bytewise, double secs)
{
    dkim_msg_t m;
    dkim_msg_parse(&m, msg, len);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char dg[32];
    dkim_bodycanon_t *bc = xmalloc(sizeof(*bc));
    uint64_t t0 = clock_mono_us(), t1 = t0, count = 0;
    while (t1 - t0 < (uint64_t)(secs * 1e6)) {
        for (int i = 0; i < 16; i++) {
            EVP_DigestInit_ex(md, EVP_sha256(), NULL);
            dkim_body_init(bc, DKIM_CANON_RELAXED, sink_md, md);
            if (bytewise)
                dkim_body_update_bytewise(bc, m.m_body, m.m_bodylen);
            else
                dkim_body_update(bc, m.m_body, m.m_bodylen);
            dkim_body_final(bc);
            EVP_DigestFinal_ex(md, dg, NULL);
        }
        count += 16;
        t1 = clock_mono_us();
    }
    free(bc);
    EVP_MD_CTX_free(md);
    size_t blen = m.m_bodylen;
    dkim_msg_free(&m);
    return (double)count * (double)blen / ((double)(t1 - t0) / 1e6) / 1e6;
}

static int cmd_bodyhash(int argc, char **argv)
{
    double secs = 2.0;
    int opt;
    while ((opt = getopt(argc, argv, "s:")) != -1) {
        if (opt == 's')
            secs = atof(optarg);
        else
            usage();
    }
    static const char plain[] = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed "
                                "do eiusmod tempor\r\n";
    static const char runs[] = "Lorem ipsum dolor sit amet,  consectetur adipiscing elit, sed "
                               "do eiusmod tempor\r\n";
    const struct {
        const char *name, *line;
        size_t llen;
    } kinds[] = {{"plain", plain, sizeof(plain) - 1}, {"sp-runs", runs, sizeof(runs) - 1}};
    printf("%-8s %-6s %14s %14s\n", "body", "size", "fast MB/s", "bytewise MB/s");
    for (size_t k = 0; k < ARRAY_SIZE(kinds); k++) {
        size_t len;
        char *msg = make_message_text(100 * 1024, &len, kinds[k].line, kinds[k].llen);
        double fast = bodyhash_rate(msg, len, false, secs);
        double slow = bodyhash_rate(msg, len, true, secs);
        printf("%-8s %-6s %14.1f %14.1f\n", kinds[k].name, "100KiB", fast, slow);
        fflush(stdout);
        free(msg);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    const char *cmd = argv[1];
    argv[1] = argv[0];
    argc--;
    argv++;
    if (strcmp(cmd, "sign") == 0)
        return cmd_sign(argc, argv);
    if (strcmp(cmd, "dns") == 0)
        return cmd_dns(argc, argv);
    if (strcmp(cmd, "bench") == 0)
        return cmd_bench(argc, argv);
    if (strcmp(cmd, "bodyhash") == 0)
        return cmd_bodyhash(argc, argv);
    usage();
    return 2;
}
