/*
 * tls.c - TLS on memory BIOs (OpenSSL 3), for libuv stream owners.
 *
 * The owner of a socket feeds the ciphertext it reads (tls_feed), drives
 * the handshake (tls_handshake), reads and writes plaintext (tls_read,
 * tls_write) and sends whatever tls_pending_out() hands it. No file
 * descriptor is ever given to OpenSSL, so the same code serves the
 * reception server (STARTTLS on an accepted stream) and the delivery
 * client. Also: server/client contexts, client session resumption, and a
 * self-signed certificate generator for first start.
 *
 * Thread: contexts may be shared by any threads (OpenSSL contexts are
 * thread safe once built); a tls_conn_t belongs to one thread at a time.
 */
#include "core/base/base.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <arpa/inet.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#if defined(__SANITIZE_THREAD__) /* gcc; clang: __has_feature(thread_sanitizer) */
#define TLS_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TLS_TSAN 1
#endif
#endif

#ifdef TLS_TSAN
/* The TSan build's built-in suppressions (read by the TSan runtime at
 * start, before TSAN_OPTIONS' suppressions= file), so that the e2e suite
 * is clean without options. Third-party false positives only; keep in step
 * with tests/soak/tsan.supp.
 *
 * OPENSSL_DIR_end: OpenSSL 3's "file:" store loader (behind the default
 * verify paths) scans the CA directory with opendir/closedir during a
 * handshake on a delivery thread. glibc's opendir opens the descriptor
 * inside libc and libuv closes sockets with syscall(SYS_close), and TSan
 * sees neither, so the closedir of a reused fd number looks like a write
 * racing with the last use of the socket that had that number on another
 * thread (the kernel orders close and reuse). */
const char *__tsan_default_suppressions(void);
const char *__tsan_default_suppressions(void)
{
    return "race:OPENSSL_DIR_end\n";
}
#endif

struct tls_conn {
    SSL *tc_ssl;
    BIO *tc_in;  /* network -> OpenSSL */
    BIO *tc_out; /* OpenSSL -> network */
    bool tc_server;
    bool tc_failed; /* a fatal TLS error: the session must not be resumed */
    char tc_err[256];
};

static void ssl_err_text(char *dst, size_t len, const char *what);
static int mkdir_parents(const char *file);
static tls_conn_t *conn_new(SSL_CTX *ctx, bool server);

/* tls_ctx_t and tls_session_t are OpenSSL's SSL_CTX and SSL_SESSION under
 * names of our own: base.h stays free of OpenSSL's headers, and a caller
 * can no longer pass one for the other (both were void * once). The
 * conversions are here and nowhere else. */
static SSL_CTX *ssl_ctx(tls_ctx_t *c)
{
    return (SSL_CTX *)(void *)c;
}

static tls_ctx_t *our_ctx(SSL_CTX *c)
{
    return (tls_ctx_t *)(void *)c;
}

static SSL_SESSION *ssl_session(tls_session_t *s)
{
    return (SSL_SESSION *)(void *)s;
}

/* The newest queued OpenSSL error as "what: reason"; clears the queue. */
static void ssl_err_text(char *dst, size_t len, const char *what)
{
    unsigned long e = ERR_peek_last_error();
    char reason[200];
    if (e != 0)
        ERR_error_string_n(e, reason, sizeof(reason));
    else
        snprintf(reason, sizeof(reason), "%s", errno ? strerror(errno) : "unknown error");
    if (dst != NULL && len > 0)
        snprintf(dst, len, "%s: %s", what, reason);
    ERR_clear_error();
}

tls_ctx_t *tls_server_ctx_new(const char *cert_file, const char *key_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        ssl_err_text(err, errlen, "SSL_CTX_new");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_RENEGOTIATION);
    /* Many idle sessions: give the read/write buffers back between records. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"sluice", 6);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        char what[600];
        snprintf(what, sizeof(what), "certificate %s", cert_file);
        ssl_err_text(err, errlen, what);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        char what[600];
        snprintf(what, sizeof(what), "key %s", key_file);
        ssl_err_text(err, errlen, what);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ssl_err_text(err, errlen, "key does not match certificate");
        goto fail;
    }
    return our_ctx(ctx);
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

tls_ctx_t *tls_client_ctx_new(const char *ca_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        ssl_err_text(err, errlen, "SSL_CTX_new");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    /* The caller keeps sessions per destination (tls_conn_get_session);
     * OpenSSL's internal client cache is not looked up by itself. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    /* Opportunistic by default; tls_conn_new_client(verify=true) enforces. */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    /* DANE (RFC 7671): the digests TLSA matching types 1 and 2 name; a
     * connection uses it only after SSL_dane_enable (tls_conn_new_dane) */
    if (SSL_CTX_dane_enable(ctx) <= 0) {
        ssl_err_text(err, errlen, "SSL_CTX_dane_enable");
        SSL_CTX_free(ctx);
        return NULL;
    }
    int ok = (ca_file != NULL && ca_file[0] != '\0')
                 ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                 : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        char what[600];
        snprintf(what, sizeof(what), "CA file %s", ca_file ? ca_file : "(system)");
        ssl_err_text(err, errlen, what);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return our_ctx(ctx);
}

void *tls_ctx_ssl(tls_ctx_t *ctx)
{
    return ssl_ctx(ctx);
}

void tls_ctx_free(tls_ctx_t *ctx)
{
    SSL_CTX_free(ssl_ctx(ctx));
}

/* mkdir -p of the directory holding file, each new directory 0755 whatever
 * the umask: it holds a public certificate and a key that is 0600 itself. */
static int mkdir_parents(const char *file)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s", file);
    char *slash = strrchr(path, '/');
    if (slash == NULL || slash == path)
        return 0;
    *slash = '\0';
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        if (mkdir(path, 0755) == 0) {
            if (chmod(path, 0755) != 0)
                return -errno;
        } else if (errno != EEXIST) {
            return -errno;
        }
        *p = c;
        if (c == '\0')
            return 0;
    }
}

int tls_selfsigned_create(const char *cert_file, const char *key_file, const char *hostname,
                          char *err, size_t errlen)
{
    EVP_PKEY *pkey = NULL;
    X509 *x = NULL;
    FILE *f = NULL;
    int rc = SL_ETLS;

    if (mkdir_parents(cert_file) != 0 || mkdir_parents(key_file) != 0) {
        snprintf(err, errlen, "cannot create directory for %s: %s", cert_file, strerror(errno));
        return -errno;
    }
    pkey = EVP_EC_gen("P-256");
    if (pkey == NULL) {
        ssl_err_text(err, errlen, "EC key generation");
        goto fail;
    }
    x = X509_new();
    if (x == NULL)
        goto ssl_fail;
    X509_set_version(x, 2); /* v3 */
    unsigned char serial[16];
    if (RAND_bytes(serial, sizeof(serial)) != 1)
        goto ssl_fail;
    serial[0] &= 0x7f;
    BIGNUM *bn = BN_bin2bn(serial, sizeof(serial), NULL);
    if (bn == NULL || BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) == NULL) {
        BN_free(bn);
        goto ssl_fail;
    }
    BN_free(bn);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 10L * 365 * 24 * 3600);
    X509_NAME *name = X509_get_subject_name(x);
    if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)hostname, -1,
                                   -1, 0) != 1)
        goto ssl_fail;
    X509_set_issuer_name(x, name);
    X509_set_pubkey(x, pkey);

    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    char san[600];
    struct in6_addr tmp;
    if (inet_pton(AF_INET, hostname, &tmp) == 1 || inet_pton(AF_INET6, hostname, &tmp) == 1)
        snprintf(san, sizeof(san), "IP:%s", hostname);
    else
        snprintf(san, sizeof(san), "DNS:%s", hostname);
    const struct {
        int nid;
        const char *val;
    } exts[] = {
        {NID_subject_alt_name, san},
        {NID_basic_constraints, "critical,CA:FALSE"},
        {NID_key_usage, "critical,digitalSignature,keyEncipherment"},
        {NID_ext_key_usage, "serverAuth,clientAuth"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(exts); i++) {
        X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, exts[i].nid, exts[i].val);
        if (ext == NULL)
            goto ssl_fail;
        X509_add_ext(x, ext, -1);
        X509_EXTENSION_free(ext);
    }
    if (X509_sign(x, pkey, EVP_sha256()) == 0)
        goto ssl_fail;

    /* Explicit modes, whatever the umask: the key is created 0600 and never
     * readable by anyone else, the certificate (public) 0644. */
    int fd = open(key_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || (f = fdopen(fd, "w")) == NULL) {
        rc = -errno;
        if (fd >= 0)
            close(fd);
        snprintf(err, errlen, "%s: %s", key_file, strerror(-rc));
        goto fail;
    }
    fchmod(fd, 0600);
    bool wrote = PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL) == 1;
    if (fclose(f) != 0) /* closed either way: f must not be closed again below */
        wrote = false;
    f = NULL;
    if (!wrote) {
        snprintf(err, errlen, "%s: write failed", key_file);
        goto fail;
    }
    fd = open(cert_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || fchmod(fd, 0644) != 0 || (f = fdopen(fd, "w")) == NULL) {
        rc = -errno;
        if (fd >= 0)
            close(fd);
        snprintf(err, errlen, "%s: %s", cert_file, strerror(-rc));
        goto fail;
    }
    wrote = PEM_write_X509(f, x) == 1;
    if (fclose(f) != 0)
        wrote = false;
    f = NULL;
    if (!wrote) {
        snprintf(err, errlen, "%s: write failed", cert_file);
        goto fail;
    }
    X509_free(x);
    EVP_PKEY_free(pkey);
    return 0;

ssl_fail:
    ssl_err_text(err, errlen, "self-signed certificate");
fail:
    if (f != NULL)
        fclose(f);
    X509_free(x);
    EVP_PKEY_free(pkey);
    return rc;
}

static tls_conn_t *conn_new(SSL_CTX *ctx, bool server)
{
    tls_conn_t *t = xcalloc(1, sizeof(*t));
    t->tc_ssl = SSL_new(ctx);
    t->tc_in = BIO_new(BIO_s_mem());
    t->tc_out = BIO_new(BIO_s_mem());
    if (t->tc_ssl == NULL || t->tc_in == NULL || t->tc_out == NULL) {
        BIO_free(t->tc_in);
        BIO_free(t->tc_out);
        SSL_free(t->tc_ssl);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    /* An empty memory BIO reports "retry" rather than EOF. */
    BIO_set_mem_eof_return(t->tc_in, -1);
    BIO_set_mem_eof_return(t->tc_out, -1);
    SSL_set_bio(t->tc_ssl, t->tc_in, t->tc_out); /* the SSL owns both now */
    t->tc_server = server;
    if (server)
        SSL_set_accept_state(t->tc_ssl);
    else
        SSL_set_connect_state(t->tc_ssl);
    return t;
}

tls_conn_t *tls_conn_new_server(tls_ctx_t *ctx)
{
    return conn_new(ssl_ctx(ctx), true);
}

tls_conn_t *tls_conn_new_client(tls_ctx_t *ctx, const char *sni, bool verify)
{
    tls_conn_t *t = conn_new(ssl_ctx(ctx), false);
    if (t == NULL)
        return NULL;
    if (sni != NULL && sni[0] != '\0') {
        struct in6_addr tmp;
        bool literal = inet_pton(AF_INET, sni, &tmp) == 1 || inet_pton(AF_INET6, sni, &tmp) == 1;
        if (!literal)
            SSL_set_tlsext_host_name(t->tc_ssl, sni);
        if (verify) {
            if (literal)
                X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->tc_ssl), sni);
            else
                SSL_set1_host(t->tc_ssl, sni);
        }
    }
    if (verify)
        SSL_set_verify(t->tc_ssl, SSL_VERIFY_PEER, NULL);
    return t;
}

tls_conn_t *tls_conn_new_dane(tls_ctx_t *ctx, const char *host, const dns_tlsa_t *tlsa, int n)
{
    tls_conn_t *t = conn_new(ssl_ctx(ctx), false);
    if (t == NULL)
        return NULL;
    /* The TLSA base domain is the MX host name: SNI, and the reference
     * identifier of the name checks DANE-TA(2) needs (RFC 7672 3.2.2). No
     * partial wildcards ("mx*.example"), as RFC 7672 3.2.3 asks. */
    if (SSL_dane_enable(t->tc_ssl, host) <= 0)
        goto fail;
    SSL_set_hostflags(t->tc_ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    /* RFC 7672 3.1.1: DANE-EE(3) binds the key itself: no name checks (and
     * OpenSSL checks no validity dates for an EE match either) */
    SSL_dane_set_flags(t->tc_ssl, DANE_FLAG_NO_DANE_EE_NAMECHECKS);
    int usable = 0;
    for (int i = 0; i < n; i++) {
        int rc = SSL_dane_tlsa_add(t->tc_ssl, tlsa[i].dt_usage, tlsa[i].dt_selector,
                                   tlsa[i].dt_mtype, tlsa[i].dt_data, tlsa[i].dt_len);
        if (rc > 0)
            usable++;
        else
            ERR_clear_error(); /* unusable (e.g. a digest of the wrong length): skipped */
    }
    if (usable == 0) {
        snprintf(t->tc_err, sizeof(t->tc_err), "no usable TLSA record");
        goto fail;
    }
    /* The handshake completes whatever the verdict; the caller reads it with
     * tls_verify_result() and says why it refuses, in its own words. */
    SSL_set_verify(t->tc_ssl, SSL_VERIFY_NONE, NULL);
    return t;
fail:
    ERR_clear_error();
    tls_conn_free(t);
    return NULL;
}

const char *tls_failure_type(long verify_result)
{
    switch (verify_result) {
    case X509_V_OK:
        return NULL;
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CERT_NOT_YET_VALID:
        return "certificate-expired";
    case X509_V_ERR_HOSTNAME_MISMATCH:
        return "certificate-host-mismatch";
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
        return "certificate-not-trusted";
    default: /* RFC 8460 4.3.1: a general failure of the chain (DANE: no TLSA match) */
        return "validation-failure";
    }
}

void tls_conn_set_session(tls_conn_t *t, tls_session_t *session)
{
    if (session != NULL)
        SSL_set_session(t->tc_ssl, ssl_session(session));
}

tls_session_t *tls_conn_get_session(tls_conn_t *t)
{
    SSL_SESSION *s = SSL_get1_session(t->tc_ssl);
    if (s != NULL && !SSL_SESSION_is_resumable(s)) {
        SSL_SESSION_free(s);
        return NULL;
    }
    return (tls_session_t *)(void *)s;
}

void tls_session_free(tls_session_t *session)
{
    SSL_SESSION_free(ssl_session(session));
}

bool tls_conn_resumed(tls_conn_t *t)
{
    return SSL_session_reused(t->tc_ssl) == 1;
}

long tls_verify_result(tls_conn_t *t)
{
    long r = SSL_get_verify_result(t->tc_ssl);
    if (r != X509_V_OK)
        snprintf(t->tc_err, sizeof(t->tc_err), "certificate verify: %s",
                 X509_verify_cert_error_string(r));
    else if (SSL_get0_peer_certificate(t->tc_ssl) == NULL) {
        snprintf(t->tc_err, sizeof(t->tc_err), "no peer certificate");
        return X509_V_ERR_UNSPECIFIED;
    }
    return r;
}

void tls_conn_free(tls_conn_t *t)
{
    if (t == NULL)
        return;
    /* SSL_free() without a shutdown marks the session "bad" and not
     * resumable. A connection that ended without a TLS error (SMTP closes
     * after QUIT, often without close_notify) keeps its session. */
    if (!t->tc_failed && SSL_is_init_finished(t->tc_ssl)) {
        SSL_set_quiet_shutdown(t->tc_ssl, 1);
        SSL_shutdown(t->tc_ssl);
    }
    ERR_clear_error();
    SSL_free(t->tc_ssl); /* frees both BIOs */
    free(t);
}

int tls_feed(tls_conn_t *t, const void *data, size_t len)
{
    while (len > 0) {
        int chunk = len > (1u << 30) ? (1 << 30) : (int)len;
        int n = BIO_write(t->tc_in, data, chunk);
        if (n <= 0) {
            ssl_err_text(t->tc_err, sizeof(t->tc_err), "BIO_write");
            return SL_ETLS;
        }
        data = (const char *)data + n;
        len -= (size_t)n;
    }
    return 0;
}

/* Map an SSL_* result: 0 = wants more input, negative = failure/close. */
static int conn_error(tls_conn_t *t, int ret, const char *what)
{
    int e = SSL_get_error(t->tc_ssl, ret);
    switch (e) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        return 0;
    case SSL_ERROR_ZERO_RETURN:
        snprintf(t->tc_err, sizeof(t->tc_err), "%s: closed by peer", what);
        return SL_ECLOSED;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_last_error() == 0) {
            snprintf(t->tc_err, sizeof(t->tc_err), "%s: unexpected EOF", what);
            return SL_ECLOSED;
        }
        /* fall through */
    default:
        t->tc_failed = true;
        ssl_err_text(t->tc_err, sizeof(t->tc_err), what);
        return SL_ETLS;
    }
}

int tls_handshake(tls_conn_t *t)
{
    if (SSL_is_init_finished(t->tc_ssl))
        return 1;
    int r = SSL_do_handshake(t->tc_ssl);
    if (r == 1)
        return 1;
    int rc = conn_error(t, r, "handshake");
    return rc == SL_ECLOSED ? SL_ETLS : rc;
}

int tls_read(tls_conn_t *t, void *dst, size_t len)
{
    if (len > INT32_MAX)
        len = INT32_MAX;
    int r = SSL_read(t->tc_ssl, dst, (int)len);
    if (r > 0)
        return r;
    return conn_error(t, r, "read");
}

int tls_write(tls_conn_t *t, const void *data, size_t len)
{
    size_t done = 0;
    while (done < len) {
        size_t chunk = MIN(len - done, (size_t)INT32_MAX);
        int r = SSL_write(t->tc_ssl, (const char *)data + done, (int)chunk);
        if (r <= 0) {
            int rc = conn_error(t, r, "write");
            return rc == 0 ? SL_ETLS : rc;
        }
        done += (size_t)r;
    }
    return (int)MIN(len, (size_t)INT32_MAX);
}

size_t tls_pending_out(tls_conn_t *t, buf_t *out)
{
    size_t moved = 0;
    size_t pend;
    while ((pend = BIO_ctrl_pending(t->tc_out)) > 0) {
        buf_reserve(out, pend);
        int n = BIO_read(t->tc_out, out->b_data + out->b_len, (int)MIN(pend, (size_t)INT32_MAX));
        if (n <= 0)
            break;
        out->b_len += (size_t)n;
        moved += (size_t)n;
    }
    return moved;
}

const char *tls_version(tls_conn_t *t)
{
    return SSL_get_version(t->tc_ssl);
}

const char *tls_cipher(tls_conn_t *t)
{
    const char *c = SSL_get_cipher_name(t->tc_ssl);
    return c ? c : "";
}

const char *tls_last_error(tls_conn_t *t)
{
    return t->tc_err[0] ? t->tc_err : "no error";
}
