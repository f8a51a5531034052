/*
 * tests/unit/config_test.c - the config module: good files, a table of bad
 * files and strings with the exact error and line, the duration and size
 * parsers, routes and TLS policies, defaults, and snapshot refcounting.
 *
 * Data files live in $SLUICE_SRC/tests/unit/config/; the shipped example is
 * $SLUICE_SRC/config/sluice.conf.example.
 */
#include "config/config.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#define HASH6                                                                                      \
    "$6$abcdefgh$ltjgWl6579NluT/Vi1nwEvcil.G5Nbc4NiXZaNGStk8PSwGfQv72N2CKPPrVACtLtip/cZ/"          \
    "1GM/O6IND4WQhG."

static char errbuf[1024];

static const char *src_path(const char *rel)
{
    static char p[4096];
    const char *src = getenv("SLUICE_SRC");
    snprintf(p, sizeof(p), "%s/%s", src ? src : ".", rel);
    return p;
}

static const char *data_path(const char *name)
{
    static char p[4096];
    snprintf(p, sizeof(p), "%s", src_path("tests/unit/config/"));
    strncat(p, name, sizeof(p) - strlen(p) - 1);
    return p;
}

static cfg_t *load_ok_file(const char *path)
{
    cfg_t *c = NULL;
    errbuf[0] = '\0';
    int rc = cfg_load(path, &c, errbuf, sizeof(errbuf));
    if (rc != 0)
        fail_msg("%s: unexpected error: %s", path, errbuf);
    assert_non_null(c);
    return c;
}

static cfg_t *load_ok(const char *text)
{
    cfg_t *c = NULL;
    errbuf[0] = '\0';
    if (cfg_load_string("t.conf", text, &c, errbuf, sizeof(errbuf)) != 0)
        fail_msg("unexpected error: %s\n--- text:\n%s", errbuf, text);
    assert_non_null(c);
    return c;
}

static const char *addr_str(const sockaddr_any_t *sa, char *dst, size_t len)
{
    char ip[64];
    net_ntop((const struct sockaddr *)sa, ip, sizeof(ip));
    int port = sa->ss_family == AF_INET ? ntohs(((const struct sockaddr_in *)sa)->sin_port)
                                        : ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    snprintf(dst, len, sa->ss_family == AF_INET6 ? "[%s]:%d" : "%s:%d", ip, port);
    return dst;
}

/* Every default as written in config.h's comments. */
static void check_defaults(const cfg_t *c)
{
    char a[80], host[256] = "";
    gethostname(host, sizeof(host));
    assert_string_equal(c->c_hostname, host);
    assert_string_equal(c->c_user, "");
    assert_int_equal(c->c_log_level, LOG_INFO);
    assert_string_equal(c->c_log_file, "");
    assert_string_equal(c->c_acct_dir, "./var/log");
    assert_int_equal(c->c_acct_max_size, 256ULL << 20);
    assert_string_equal(c->c_spool_path, "./var/spool");
    assert_int_equal(c->c_spool_sync, CFG_SYNC_FSYNC);
    assert_int_equal(c->c_spool_map_size, 1ULL << 30);
    assert_int_equal(c->c_spool_max_size, 64ULL << 30);
    assert_int_equal(c->c_spool_high_water, 90);
    assert_int_equal(c->c_spool_batch, 1024);
    assert_string_equal(c->c_ctl_socket, "./var/sluiced.sock");
    assert_int_equal(c->c_ctl_mode, 0600);
    assert_int_equal(c->c_smtp_nlisten, 1);
    assert_string_equal(addr_str(&c->c_smtp_listen[0], a, sizeof(a)), "127.0.0.1:2525");
    assert_int_equal(c->c_smtp_threads, 1);
    assert_int_equal(c->c_smtp_max_message_size, 50ULL << 20);
    assert_int_equal(c->c_smtp_max_recipients, 1000);
    assert_int_equal(c->c_smtp_max_line, 1000);
    assert_int_equal(c->c_smtp_max_connections, 2000);
    assert_int_equal(c->c_smtp_max_conn_per_ip, 200);
    assert_int_equal(c->c_smtp_max_commands_before_mail, 20);
    assert_int_equal(c->c_smtp_max_errors, 10);
    assert_int_equal(c->c_smtp_idle_timeout, 300);
    assert_int_equal(c->c_smtp_data_timeout, 600);
    assert_int_equal(c->c_smtp_max_pending, 5000);
    assert_int_equal(c->c_smtp_nrelay, 2);
    assert_int_equal(c->c_smtp_relay[0].nc_family, AF_INET);
    assert_int_equal(c->c_smtp_relay[0].nc_prefix, 8);
    assert_int_equal(c->c_smtp_relay[1].nc_family, AF_INET6);
    assert_int_equal(c->c_smtp_relay[1].nc_prefix, 128);
    assert_string_equal(c->c_tls_cert, "./var/tls/cert.pem");
    assert_string_equal(c->c_tls_key, "./var/tls/key.pem");
    assert_true(c->c_tls_generate);
    assert_true(c->c_auth_plaintext_loopback);
    assert_int_equal(c->c_auth_fail_delay, 1000);
    assert_int_equal(c->c_auth_lockout_failures, 5);
    assert_int_equal(c->c_auth_lockout_window, 600);
    assert_int_equal(c->c_auth_lockout_time, 900);
    assert_int_equal(c->c_nusers, 0);
    assert_int_equal(c->c_retry_n, 0);
    assert_int_equal(c->c_retry_initial, 300);
    assert_int_equal(c->c_retry_max, 4 * 3600);
    assert_int_equal(c->c_retry_jitter, 20);
    assert_int_equal(c->c_max_age, 5 * 86400);
    assert_true(c->c_dsn);
    assert_int_equal(c->c_active_window, 2000);
    assert_int_equal(c->c_active_total, 100000);
    assert_int_equal(c->c_scan_interval_ms, 1000);
    assert_int_equal(c->c_dlv_threads, 0);
    assert_int_equal(c->c_dlv_port, 25);
    assert_string_equal(c->c_dlv_resolvers, "");
    assert_string_equal(c->c_dlv_smarthost, "");
    assert_int_equal(c->c_dlv_nroutes, 0);
    assert_int_equal(c->c_dlv_tls_default, CFG_TLS_OPPORTUNISTIC);
    assert_int_equal(c->c_dlv_ntls, 0);
    assert_string_equal(c->c_dlv_ca_file, "");
    assert_string_equal(c->c_dlv_helo, host);
    assert_int_equal(c->c_dlv_max_rcpt_per_txn, 100);
    assert_int_equal(c->c_dlv_max_conn_per_dest, 20);
    assert_int_equal(c->c_dlv_max_msgs_per_conn, 1000);
    assert_int_equal(c->c_dlv_conn_reuse_time, 300);
    assert_int_equal(c->c_dlv_idle_time, 2);
    assert_int_equal(c->c_dlv_dns_cache_max, 3600);
    assert_int_equal(c->c_dlv_dead_after, 5);
    assert_int_equal(c->c_dlv_dead_time, 300);
    assert_int_equal(c->c_to_connect, 30);
    assert_int_equal(c->c_to_greeting, 300);
    assert_int_equal(c->c_to_ehlo, 300);
    assert_int_equal(c->c_to_starttls, 120);
    assert_int_equal(c->c_to_mail, 300);
    assert_int_equal(c->c_to_rcpt, 300);
    assert_int_equal(c->c_to_data, 120);
    assert_int_equal(c->c_to_data_block, 180);
    assert_int_equal(c->c_to_data_done, 600);
    assert_int_equal(c->c_to_quit, 10);
    assert_null(cfg_route_for(c, "example.org"));
}

/* ------------------------------------------------------------ good input */

static void test_empty_is_defaults(void **state)
{
    cfg_t *c = load_ok("");
    check_defaults(c);
    assert_string_equal(c->c_file, "t.conf");
    cfg_unref(c);
    c = load_ok("# only a comment\n\n;;\n");
    check_defaults(c);
    cfg_unref(c);
}

static void test_embedded_default(void **state)
{
    cfg_t *c = NULL;
    assert_int_equal(cfg_default(&c, errbuf, sizeof(errbuf)), 0);
    check_defaults(c);
    assert_true(c->c_dkim_sign_from);
    assert_string_equal(c->c_dkim_esp_domain, "");
    assert_string_equal(c->c_dkim_canon, "relaxed/relaxed");
    assert_string_equal(c->c_dkim_alg, "any");
    assert_string_equal(c->c_dkim_headers[0], "from");
    assert_string_equal(c->c_dkim_headers[13], "feedback-id");
    assert_null(c->c_dkim_headers[14]);
    assert_string_equal(c->c_dkim_oversign[0], "from");
    assert_null(c->c_dkim_oversign[1]);
    assert_true(c->c_dkim_timestamp);
    assert_int_equal(c->c_dkim_expire, 0);
    assert_int_equal(c->c_dkim_nkeys, 0);
    assert_null(cfg_ext_get(c, CFG_EXT_DKIM));
    assert_string_equal(c->c_file, "(default)");
    assert_non_null(strstr(cfg_default_text(), "./var/spool"));
    assert_non_null(strstr(cfg_default_text(), "127.0.0.1:2525"));
    assert_non_null(strstr(cfg_default_text(), "generate = true"));
    cfg_unref(c);
}

/* The shipped example loads, equals the defaults, and names every key. */
static void test_example_file(void **state)
{
    cfg_t *c = load_ok_file(src_path("config/sluice.conf.example"));
    check_defaults(c);
    cfg_unref(c);

    /* Track "name {" / "}" / "key = ..." lines to get every full path the
     * example writes, then ask for every key of the schema. */
    FILE *f = fopen(src_path("config/sluice.conf.example"), "r");
    assert_non_null(f);
    static char seen[16384];
    char line[1024], stack[8][64];
    int depth = 0;
    seen[0] = '\n';
    seen[1] = '\0';
    while (fgets(line, sizeof(line), f) != NULL) {
        char *s = line + strspn(line, " \t");
        if (*s == '#' || *s == '\n')
            continue;
        if (*s == '}') {
            assert_true(depth > 0);
            depth--;
            continue;
        }
        char name[64];
        size_t n = strcspn(s, " \t=:{;");
        if (n == 0 || n >= sizeof(name))
            continue;
        memcpy(name, s, n);
        name[n] = '\0';
        char full[512] = "";
        for (int i = 0; i < depth; i++) {
            strcat(full, stack[i]);
            strcat(full, ".");
        }
        strcat(full, name);
        if (strlen(seen) + strlen(full) + 2 < sizeof(seen)) {
            strcat(seen, full);
            strcat(seen, "\n");
        }
        char *brace = strchr(s, '{');
        if (brace != NULL && strchr(brace, '}') == NULL) {
            assert_true(depth < 8);
            snprintf(stack[depth++], sizeof(stack[0]), "%s", name);
        }
    }
    fclose(f);
    assert_int_equal(depth, 0);
    const char *def;
    int nkeys = 0;
    for (int i = 0; cfg_key_name(i, &def) != NULL; i++, nkeys++) {
        char want[256];
        snprintf(want, sizeof(want), "\n%s\n", cfg_key_name(i, NULL));
        if (strstr(seen, want) == NULL)
            fail_msg("sluice.conf.example does not document \"%s\"", cfg_key_name(i, NULL));
    }
    assert_true(nkeys > 60);
}

static void test_good_files(void **state)
{
    char a[80];
    cfg_t *c = load_ok_file(data_path("good_minimal.conf"));
    assert_string_equal(addr_str(&c->c_smtp_listen[0], a, sizeof(a)), "127.0.0.1:2600");
    assert_int_equal(c->c_smtp_nlisten, 1);
    cfg_unref(c);

    c = load_ok_file(data_path("good_lists.conf"));
    assert_int_equal(c->c_smtp_nlisten, 3);
    assert_string_equal(addr_str(&c->c_smtp_listen[0], a, sizeof(a)), "127.0.0.1:2600");
    assert_string_equal(addr_str(&c->c_smtp_listen[1], a, sizeof(a)), "[::1]:2601");
    assert_string_equal(addr_str(&c->c_smtp_listen[2], a, sizeof(a)), "127.0.0.2:2602");
    assert_int_equal(c->c_smtp_nrelay, 3);
    assert_int_equal(c->c_smtp_relay[1].nc_prefix, 24);
    assert_int_equal(c->c_smtp_relay[2].nc_family, AF_INET6);
    assert_int_equal(c->c_retry_n, 3);
    assert_int_equal(c->c_retry[0], 300);
    assert_int_equal(c->c_retry[1], 600);
    assert_int_equal(c->c_retry[2], 3600);
    assert_string_equal(c->c_dlv_resolvers, "127.0.0.1:5353,127.0.0.2");
    cfg_unref(c);

    c = load_ok_file(data_path("good_quoted.conf"));
    assert_string_equal(c->c_hostname, "mx1.example.net");
    assert_string_equal(c->c_dlv_helo, "mx1.example.net");
    assert_int_equal(c->c_log_level, LOG_DEBUG);
    assert_string_equal(c->c_log_file, "/tmp/sluice 'test'.log");
    assert_string_equal(c->c_spool_path, "/var/spool/with \"quotes\"\tand\\slash");
    assert_int_equal(c->c_dlv_nroutes, 3);
    assert_string_equal(c->c_dlv_routes[0].r_domain, "example.org");
    assert_int_equal(c->c_dlv_tls_default, CFG_TLS_REQUIRED);
    assert_int_equal(c->c_dlv_ntls, 2);
    assert_string_equal(c->c_dlv_smarthost, "relay.example.net:587");
    cfg_unref(c);

    c = load_ok_file(data_path("good_comments.conf"));
    assert_int_equal(c->c_smtp_max_recipients, 50);
    assert_int_equal(c->c_smtp_threads, 2);
    assert_int_equal(c->c_smtp_nlisten, 1);
    cfg_unref(c);
}

static void test_syntax_forms(void **state)
{
    /* key value; key: value; key = value, no separators at line ends */
    cfg_t *c = load_ok("smtp {\n max_recipients 7;\n threads: 3\n max_errors=4\n"
                       " max_line_length: 2000, max_pending = 9 }\n"
                       "spool: { sync: none }\ncontrol{mode 0640}\nqueue{scan_interval=250ms; "
                       "retry_jitter=0}\n");
    assert_int_equal(c->c_smtp_max_recipients, 7);
    assert_int_equal(c->c_smtp_threads, 3);
    assert_int_equal(c->c_smtp_max_errors, 4);
    assert_int_equal(c->c_smtp_max_line, 2000);
    assert_int_equal(c->c_smtp_max_pending, 9);
    assert_int_equal(c->c_spool_sync, CFG_SYNC_NONE);
    assert_int_equal(c->c_ctl_mode, 0640);
    assert_int_equal(c->c_scan_interval_ms, 250);
    assert_int_equal(c->c_retry_jitter, 0);
    cfg_unref(c);

    c = load_ok("user = \"nobody\"\n");
    assert_string_equal(c->c_user, "nobody");
    cfg_unref(c);
}

static void test_syntax_forms2(void **state)
{
    /* "key:value" in one bareword, booleans, string and list forms */
    cfg_t *c = load_ok("queue { dsn:off; retry = \"5m, 10m,1h\" }\n"
                       "smtp { auth { fail_delay = 500ms; plaintext_loopback = NO }\n"
                       "  listen = \"127.0.0.1:0\"; relay_networks = \"\" }\n"
                       "delivery { threads = 4; resolvers = [\"127.0.0.1\"]; port = 2525 }\n");
    assert_false(c->c_dsn);
    assert_int_equal(c->c_retry_n, 3);
    assert_int_equal(c->c_retry[2], 3600);
    assert_int_equal(c->c_auth_fail_delay, 500);
    assert_false(c->c_auth_plaintext_loopback);
    assert_int_equal(c->c_smtp_nrelay, 0);
    assert_int_equal(c->c_dlv_threads, 4);
    assert_int_equal(c->c_dlv_port, 2525);
    assert_string_equal(c->c_dlv_resolvers, "127.0.0.1");
    cfg_unref(c);
}

/* A users section in a file: accepted at 0640, refused when world-readable. */
static void test_users_file_mode(void **state)
{
    char path[] = "/tmp/sluice-config-test-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "smtp {\n  auth {\n    users {\n      alice = \"" HASH6 "\";\n"
                       "      'bob' = \"$5$abcdefgh$gruCpC7VkOTspMQTTSAR8mtlO9Upms.fwqE5y16JVM.\"\n"
                       "    }\n  }\n}\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    assert_int_equal(chmod(path, 0640), 0);
    cfg_t *c = load_ok_file(path);
    assert_int_equal(c->c_nusers, 2);
    assert_string_equal(c->c_users[0].cu_name, "alice");
    assert_string_equal(c->c_users[0].cu_hash, HASH6);
    assert_string_equal(c->c_users[1].cu_name, "bob");
    cfg_unref(c);

    assert_int_equal(chmod(path, 0644), 0);
    c = NULL;
    assert_int_equal(cfg_load(path, &c, errbuf, sizeof(errbuf)), SL_ECONFIG);
    assert_null(c);
    char want[256];
    snprintf(want, sizeof(want), "%s:0: holds password hashes and is world-readable (chmod o-r)",
             path);
    assert_string_equal(errbuf, want);
    unlink(path);
}

/* dkim { }: keys parsed into plain data with their lines; key files must
 * exist and not be readable by others; extension slots are freed with the
 * snapshot. (The PEM contents are dkim/'s: tests/e2e/test_dkim_delivery.py.) */
static int ext_freed;
static void ext_free_cb(void *p)
{
    ext_freed += *(int *)p;
    free(p);
}

static int attach_calls;
static int attach_cb(cfg_t *c, char *err, size_t errlen)
{
    attach_calls++;
    if (c->c_dkim_nkeys > 0) { /* stands for a key that does not parse */
        snprintf(err, errlen, "%s:%d: dkim.keys: refused", c->c_file, c->c_dkim_keys[0].dk_line);
        return SL_ECONFIG;
    }
    int *obj = malloc(sizeof(*obj));
    *obj = 1;
    cfg_ext_set(c, CFG_EXT_DKIM, obj, ext_free_cb);
    return 0;
}

static void test_dkim(void **state)
{
    char k1[] = "/tmp/sluice-config-dkim-XXXXXX", k2[] = "/tmp/sluice-config-dkim-XXXXXX";
    int fd1 = mkstemp(k1), fd2 = mkstemp(k2);
    assert_true(fd1 >= 0 && fd2 >= 0);
    close(fd1);
    close(fd2);
    char text[1024];
    snprintf(text, sizeof(text),
             "dkim {\n"
             "  esp_domain = ESP.example\n"
             "  canonicalization = simple/relaxed\n"
             "  algorithm = ed25519-sha256\n"
             "  headers = [From, Subject, X-Campaign]\n"
             "  oversign = \"\"\n"
             "  expire = 7d\n"
             "  keys {\n"
             "    \"Example.COM\" {\n"
             "      s1 = \"%s\";\n"
             "      e1 = \"%s\";\n"
             "    }\n"
             "    esp.example { esp = \"%s\" }\n"
             "  }\n"
             "}\n",
             k1, k2, k1);
    cfg_t *c = load_ok(text);
    assert_true(c->c_dkim_sign_from);
    assert_string_equal(c->c_dkim_esp_domain, "esp.example");
    assert_string_equal(c->c_dkim_canon, "simple/relaxed");
    assert_string_equal(c->c_dkim_alg, "ed25519-sha256");
    assert_string_equal(c->c_dkim_headers[0], "from");
    assert_string_equal(c->c_dkim_headers[2], "x-campaign");
    assert_null(c->c_dkim_headers[3]);
    assert_null(c->c_dkim_oversign[0]);
    assert_int_equal(c->c_dkim_expire, 7 * 86400);
    assert_int_equal(c->c_dkim_nkeys, 3);
    assert_string_equal(c->c_dkim_keys[0].dk_domain, "example.com");
    assert_string_equal(c->c_dkim_keys[0].dk_selector, "s1");
    assert_string_equal(c->c_dkim_keys[0].dk_file, k1);
    assert_int_equal(c->c_dkim_keys[0].dk_line, 10);
    assert_string_equal(c->c_dkim_keys[1].dk_selector, "e1");
    assert_int_equal(c->c_dkim_keys[1].dk_line, 11);
    assert_string_equal(c->c_dkim_keys[2].dk_domain, "esp.example");
    assert_int_equal(c->c_dkim_keys[2].dk_line, 13);

    /* an attachment lives and dies with the snapshot */
    int *obj = malloc(sizeof(*obj));
    *obj = 5;
    ext_freed = 0;
    cfg_ext_set(c, CFG_EXT_DKIM, obj, ext_free_cb);
    assert_ptr_equal(cfg_ext_get(c, CFG_EXT_DKIM), obj);
    cfg_ref(c);
    cfg_unref(c);
    assert_int_equal(ext_freed, 0);
    cfg_unref(c);
    assert_int_equal(ext_freed, 5);

    /* keys but nothing signs */
    snprintf(text, sizeof(text),
             "dkim {\n sign_from_domain = false\n keys { a.example { s = \"%s\" } } }", k1);
    c = NULL;
    assert_int_equal(cfg_load_string("t.conf", text, &c, errbuf, sizeof(errbuf)), SL_ECONFIG);
    assert_null(c);
    assert_non_null(strstr(errbuf, "t.conf:2: dkim: keys are configured but nothing signs"));

    /* a key readable by others is refused, with its line */
    assert_int_equal(chmod(k2, 0644), 0);
    snprintf(text, sizeof(text), "dkim { keys { a.example {\n s = \"%s\"\n t = \"%s\" } } }", k1,
             k2);
    assert_int_equal(cfg_load_string("t.conf", text, &c, errbuf, sizeof(errbuf)), SL_ECONFIG);
    char want[256];
    snprintf(want, sizeof(want),
             "t.conf:3: dkim.keys.a.example.t: key %s: is readable by others (chmod 600)", k2);
    assert_string_equal(errbuf, want);

    /* the attach hook runs on every load; its failure is the load's */
    cfg_set_attach(attach_cb);
    attach_calls = ext_freed = 0;
    c = load_ok("smtp { threads = 2 }");
    assert_int_equal(attach_calls, 1);
    assert_non_null(cfg_ext_get(c, CFG_EXT_DKIM));
    cfg_unref(c);
    assert_int_equal(ext_freed, 1);
    snprintf(text, sizeof(text), "dkim { keys { a.example {\n s = \"%s\" } } }", k1);
    c = NULL;
    assert_int_equal(cfg_load_string("t.conf", text, &c, errbuf, sizeof(errbuf)), SL_ECONFIG);
    assert_null(c);
    assert_string_equal(errbuf, "t.conf:2: dkim.keys: refused");
    assert_int_equal(attach_calls, 2);
    cfg_set_attach(NULL);
    c = load_ok(text);
    assert_int_equal(attach_calls, 2);
    assert_null(cfg_ext_get(c, CFG_EXT_DKIM));
    cfg_unref(c);
    unlink(k1);
    unlink(k2);
}

/* TLS files: missing is fine with generate = true, an error without. */
static void test_tls_files(void **state)
{
    cfg_t *c = load_ok("smtp { tls { cert = \"/nonexistent/c.pem\"; key = \"/nonexistent/k.pem\" "
                       "} }");
    assert_true(c->c_tls_generate);
    cfg_unref(c);

    char cert[] = "/tmp/sluice-cert-XXXXXX", key[] = "/tmp/sluice-key-XXXXXX";
    int fd1 = mkstemp(cert), fd2 = mkstemp(key);
    assert_true(fd1 >= 0 && fd2 >= 0);
    close(fd1);
    close(fd2);
    char text[512];
    snprintf(text, sizeof(text),
             "smtp {\n tls {\n  generate = false\n  cert = \"%s\"\n  key = \"%s\"\n }\n}\n", cert,
             key);
    c = load_ok(text);
    assert_false(c->c_tls_generate);
    assert_string_equal(c->c_tls_cert, cert);
    cfg_unref(c);
    unlink(cert);
    unlink(key);
}

/* ------------------------------------------------------------ bad input */

typedef struct bad_case {
    const char *name;
    const char *text;
    const char *want; /* a substring of the error, with the line number */
} bad_case_t;

static const bad_case_t bad_cases[] = {
    /* events (#14) */
    {"accounting format", "log {\n accounting_format = csv;\n}\n",
     "t.conf:2: log.accounting_format: expected jsonl, pmta-csv or both, got \"csv\""},
    {"webhook without url", "events { webhooks { h { secret = \"0123456789abcdef\"; } } }\n",
     "t.conf:1: events.webhooks.h: url is required"},
    {"webhook short secret",
     "events { webhooks { h { url = \"https://x.example/\"; secret = \"short\"; } } }\n",
     "t.conf:1: events.webhooks.h: secret is required (16 characters or more)"},
    {"webhook plain http off loopback",
     "events { webhooks {\n h { url = \"http://x.example/\"; secret = \"0123456789abcdef\"; }\n"
     "} }\n",
     "t.conf:2: events.webhooks.h.url: expected an https:// URL (http:// only to loopback)"},
    {"webhook bad batch",
     "events { webhooks { h {\n url = \"https://x/\"; secret = \"0123456789abcdef\";\n"
     " batch = 0; } } }\n",
     "t.conf:3: events.webhooks.h.batch: expected 1..10000 records"},
    {"webhook unknown key",
     "events { webhooks { h {\n url = \"https://x/\"; secret = \"0123456789abcdef\";\n"
     " batches = 5; } } }\n",
     "t.conf:3: unknown key \"events.webhooks.h.batches\""},
    {"webhook bad type",
     "events { webhooks { h {\n url = \"https://x/\";\n"
     " secret = \"0123456789abcdef\"; types = [\"Delivery\"]; } } }\n",
     "t.conf:3: events.webhooks.h.types: \"Delivery\" is not a record type"},
    {"webhook not a section", "events { webhooks { h = \"https://x/\"; } }\n",
     "events.webhooks.h: expected a section with a new name"},
    {"unknown key with suggestion", "smtp {\n  max_mesage_size = 10M;\n}\n",
     "t.conf:2: unknown key \"smtp.max_mesage_size\" (did you mean \"max_message_size\"?)"},
    {"key in the wrong section", "\n\nmax_message_size = 10M\n",
     "t.conf:3: unknown key \"max_message_size\" (did you mean \"smtp.max_message_size\"?)"},
    {"unknown section", "smtpp {\n}\n",
     "t.conf:1: unknown section \"smtpp\" (did you mean \"smtp\"?)"},
    {"unknown key without suggestion", "log { zzzzzzzz = 1 }",
     "t.conf:1: unknown key "
     "\"log.zzzzzzzz\""},
    {"wrong type", "smtp {\n\n\n  max_recipients = lots;\n}\n",
     "t.conf:4: smtp.max_recipients: expected an integer between 1 and 100000, got \"lots\""},
    {"out of range", "smtp { max_recipients = 0 }",
     "t.conf:1: smtp.max_recipients: expected an integer between 1 and 100000, got \"0\""},
    {"out of range high", "spool {\nhigh_water = 101 }",
     "t.conf:2: spool.high_water: expected an integer between 1 and 100, got \"101\""},
    {"negative", "smtp { threads = -1 }", "smtp.threads: expected an integer between 1 and 64"},
    {"bad size", "smtp {\n max_message_size = 50Q\n}",
     "t.conf:2: smtp.max_message_size: expected a size between 1K and 4G"},
    {"size too small", "smtp { max_message_size = 512 }",
     "t.conf:1: smtp.max_message_size: expected a size between 1K and 4G"},
    {"bad duration", "queue {\n max_age = 5x }",
     "t.conf:2: queue.max_age: expected a duration between 1m and 365d"},
    {"fractional seconds", "smtp { idle_timeout = 1500ms }",
     "smtp.idle_timeout: expected a duration"},
    {"bad bool", "queue { dsn = maybe }",
     "t.conf:1: queue.dsn: expected true or false, got \"maybe\""},
    {"bad enum", "log { level = loud }",
     "t.conf:1: log.level: expected one of debug, info, warn, error, got \"loud\""},
    {"bad sync", "spool { sync = sometimes }", "spool.sync: expected one of fsync, none"},
    {"list for a scalar", "smtp {\n threads = [1, 2] }",
     "t.conf:2: smtp.threads: expected an integer between 1 and 64, got a list"},
    {"section for a scalar", "spool { path { } }", "spool.path: expected a string, got a section"},
    {"scalar for a section", "\nsmtp = 1", "t.conf:2: \"smtp\" is a section: write smtp { ... }"},
    {"bad address", "smtp {\n\n\n\n\n\n  listen = \"127.0.0.1:99999\";\n}\n",
     "t.conf:7: smtp.listen: bad address \"127.0.0.1:99999\""},
    {"bad address in a list", "smtp {\n listen = [\"127.0.0.1:25\",\n  \"localhost:25\"]\n}",
     "t.conf:3: smtp.listen: bad address \"localhost:25\""},
    {"empty listen", "smtp { listen = [] }", "t.conf:1: smtp.listen: needs at least one address"},
    {"too many listen",
     "smtp { listen = \"127.0.0.1:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4,127.0.0.1:5,"
     "127.0.0.1:6,127.0.0.1:7,127.0.0.1:8,127.0.0.1:9\" }",
     "t.conf:1: smtp.listen: too many values (at most 8)"},
    {"bad CIDR", "smtp {\n relay_networks = [\"127.0.0.0/8\", \"10.0.0.0/33\"] }",
     "t.conf:2: smtp.relay_networks: bad CIDR \"10.0.0.0/33\""},
    {"bad CIDR word", "smtp { relay_networks = \"10.0.0.0/8, lan\" }",
     "t.conf:1: smtp.relay_networks: bad CIDR \"lan\""},
    {"empty list item", "queue { retry = \"5m,,1h\" }", "t.conf:1: queue.retry: empty item"},
    {"bad retry", "queue {\n retry = \"5m, soon\" }",
     "t.conf:2: queue.retry: expected durations such as \"5m,10m,1h\", got \"soon\""},
    {"retry order", "queue {\n retry_initial = 5h\n retry_max = 1h\n}",
     "t.conf:3: queue.retry_initial (18000s) is above queue.retry_max (3600s)"},
    {"map above max", "spool { map_size = 2G; max_size = 1G }",
     "t.conf:1: spool.map_size is above spool.max_size"},
    {"unterminated string", "log {\n  level = info\n  file = \"/tmp/x\n}\n",
     "t.conf:3: unterminated string"},
    {"unterminated single quote", "log { file = 'abc }", "t.conf:1: unterminated string"},
    {"bad escape", "log {\n file = \"a\\qb\" }", "t.conf:2: bad escape \"\\q\""},
    {"unterminated comment", "smtp {}\n/* hi\n\n", "t.conf:2: unterminated comment"},
    {"unclosed brace", "\nsmtp {\n  listen = \"127.0.0.1:25\"\n",
     "t.conf:2: section \"smtp\": \"{\" is never closed (missing \"}\")"},
    {"extra brace", "smtp {\n}\n}\n", "t.conf:3: unexpected \"}\" (no section to close)"},
    {"unclosed list", "smtp { listen = [\"127.0.0.1:25\",\n",
     "t.conf:1: \"listen\": \"[\" is "
     "never closed"},
    {"section in a list", "smtp { listen = [ { } ] }",
     "t.conf:1: \"listen\": a list holds only strings, got \"{\""},
    {"duplicate key", "smtp {\n threads = 1\n threads = 2\n}",
     "t.conf:3: duplicate key \"smtp.threads\" (also on line 2)"},
    {"duplicate section", "smtp { }\n\nsmtp { }",
     "t.conf:3: duplicate key \"smtp\" (also on "
     "line 1)"},
    {"duplicate route", "delivery { routes {\n a.example = \"h\"\n A.EXAMPLE = \"h2\" } }",
     "t.conf:3: duplicate key \"delivery.routes.A.EXAMPLE\" (also on line 2)"},
    {"missing value", "smtp {\n threads = ; }",
     "t.conf:2: \"threads\": expected a value, got "
     "\";\""},
    {"two values", "smtp { threads = 1 2 }",
     "t.conf:1: \"threads\": unexpected \"2\" after the value (missing \";\"?)"},
    {"plaintext password", "smtp { auth { users {\n  alice = \"secret\";\n} } }",
     "t.conf:2: smtp.auth.users.alice: not a crypt(3) hash; make one with `openssl passwd -6`"},
    {"md5 hash refused", "smtp { auth { users { bob = \"$1$abcdefgh$abcdefghijklmnopqrstuv\" } } }",
     "t.conf:1: smtp.auth.users.bob: not a crypt(3) hash"},
    {"users not a section", "smtp { auth { users = \"alice\" } }",
     "smtp.auth.users: expected a section { ... }, got \"alice\""},
    {"bad route", "delivery {\n routes { \"example.org\" = \"host:99999\" } }",
     "t.conf:2: delivery.routes.example.org: bad destination \"host:99999\" (want host[:port])"},
    {"bad route domain", "delivery { routes { \"bad domain\" = \"h\" } }",
     "t.conf:1: delivery.routes: bad domain \"bad domain\""},
    {"bad tls policy", "delivery { tls_policy {\n \"a.example\" = \"maybe\" } }",
     "t.conf:2: delivery.tls_policy.a.example: expected one of opportunistic, disabled, "
     "required, verify, got \"maybe\""},
    {"bad default tls", "delivery { tls = always }",
     "delivery.tls: expected one of opportunistic, disabled, required, verify, got \"always\""},
    {"bad smarthost", "delivery { smarthost = \"bad host:25\" }",
     "t.conf:1: delivery.smarthost: bad destination \"bad host:25\""},
    {"bad resolvers", "delivery { resolvers = \"127.0.0.1:5353,ns.example\" }",
     "t.conf:1: delivery.resolvers: bad address \"ns.example\""},
    /* cluster (#17): one Redis, redis:// or unix: */
    {"bad redis address", "cluster { redis = [\"10.0.0.5:6379\"] }",
     "t.conf:1: cluster.redis: bad address \"10.0.0.5:6379\" (want \"redis://ip:port\" or "
     "\"unix:/path\"; Sentinel and Redis Cluster are not supported)"},
    {"two redis servers",
     "cluster { redis = [\"redis://10.0.0.5:6379\", \"redis://10.0.0.6:6379\"] }", "cluster.redis"},
    {"tls cert missing without generate",
     "smtp { tls {\n generate = false\n cert = \"/nonexistent/c.pem\"\n key = "
     "\"/nonexistent/k.pem\" } }",
     "t.conf:3: smtp.tls.cert: file not found \"/nonexistent/c.pem\""},
    {"ca_file missing", "delivery { ca_file = \"/nonexistent/ca.pem\" }",
     "t.conf:1: delivery.ca_file: file not found \"/nonexistent/ca.pem\""},
    {"bad mode", "control { mode = 0999 }", "t.conf:1: control.mode: expected an octal file mode"},
    {"socket path too long",
     "control { socket = "
     "\"/tmp/"
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock\" }",
     "t.conf:1: control.socket: expected a socket path of 1 to 107 bytes"},
    {"bad hostname", "hostname = \"mx 1\"", "t.conf:1: hostname: bad host name \"mx 1\""},
    {"unknown user", "user = \"no-such-user-x\"",
     "t.conf:1: user: no such user \"no-such-user-x\""},
    {"empty spool path", "spool { path = \"\" }", "t.conf:1: spool.path: expected a path"},
    {"dkim missing key file", "dkim { keys { \"example.com\" {\n s1 = \"/nonexistent/k.pem\" } } }",
     "t.conf:2: dkim.keys.example.com.s1: key /nonexistent/k.pem: No such file or directory"},
    {"dkim key not a file", "dkim { keys { \"example.com\" {\n s1 = \"/tmp\" } } }",
     "t.conf:2: dkim.keys.example.com.s1: key /tmp: not a regular file"},
    {"dkim bad domain", "dkim { keys {\n \"bad domain\" { s1 = \"/k.pem\" } } }",
     "t.conf:2: dkim.keys: bad domain \"bad domain\""},
    {"dkim bad selector", "dkim { keys { \"example.com\" {\n \"s 1\" = \"/k.pem\" } } }",
     "t.conf:2: dkim.keys.example.com: bad selector \"s 1\""},
    {"dkim domain not a section", "dkim { keys {\n \"example.com\" = \"/k.pem\" } }",
     "t.conf:2: dkim.keys.example.com: expected a section { selector = \"/path/key.pem\"; }"},
    {"dkim empty domain", "dkim { keys {\n \"example.com\" { } } }",
     "t.conf:2: dkim.keys.example.com: no key"},
    {"dkim duplicate domain",
     "dkim { keys {\n a.example { s = \"/k\" }\n A.EXAMPLE { t = \"/k\" } } }",
     "t.conf:3: duplicate key \"dkim.keys.A.EXAMPLE\" (also on line 2)"},
    {"dkim duplicate selector", "dkim { keys { a.example {\n s = \"/k\"\n s = \"/j\" } } }",
     "t.conf:3: duplicate key \"dkim.keys.a.example.s\" (also on line 2)"},
    {"dkim key path empty", "dkim { keys { a.example {\n s = \"\" } } }",
     "t.conf:2: dkim.keys.a.example.s: expected the path of a PEM private key"},
    {"dkim bad canonicalization", "dkim {\n canonicalization = \"relaxed/loose\" }",
     "t.conf:2: dkim.canonicalization: expected relaxed/relaxed, relaxed/simple, simple/relaxed "
     "or simple/simple, got \"relaxed/loose\""},
    {"dkim sha1 refused", "dkim {\n algorithm = rsa-sha1 }",
     "t.conf:2: dkim.algorithm: expected one of any, rsa-sha256, ed25519-sha256, got "
     "\"rsa-sha1\""},
    {"dkim headers without from", "dkim {\n headers = [\"to\", \"subject\"] }",
     "t.conf:2: dkim.headers: must include \"from\" (RFC 6376 5.4)"},
    {"dkim bad header name", "dkim {\n headers = \"from, sub:ject\" }",
     "t.conf:2: dkim.headers: bad header field name \"sub:ject\""},
    {"dkim expire without t=", "dkim {\n timestamp = false\n expire = 7d }",
     "t.conf:3: dkim.expire needs dkim.timestamp = true (x= counts from t=)"},
    {"dkim expire range", "dkim { expire = 400d }",
     "t.conf:1: dkim.expire: expected a duration between 0s and 365d"},
    {"dkim esp domain without key", "dkim {\n esp_domain = esp.example }",
     "t.conf:2: dkim.esp_domain: no key for \"esp.example\" in dkim.keys"},
    {"dkim bad esp domain", "dkim { esp_domain = \"esp example\" }",
     "t.conf:1: dkim.esp_domain: bad host name \"esp example\""},
    {"expected a key", "= 5", "t.conf:1: expected a key, got \"=\""},
    {"control character", "smtp {\x01}", "t.conf:1: unexpected character 0x01"},
};

static void test_bad_strings(void **state)
{
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const bad_case_t *b = &bad_cases[i];
        cfg_t *c = (cfg_t *)0x1;
        errbuf[0] = '\0';
        int rc = cfg_load_string("t.conf", b->text, &c, errbuf, sizeof(errbuf));
        if (rc != SL_ECONFIG)
            fail_msg("case \"%s\": loaded, wanted error \"%s\"", b->name, b->want);
        if (c != (cfg_t *)0x1)
            fail_msg("case \"%s\": *out was set on failure", b->name);
        if (strstr(errbuf, b->want) == NULL)
            fail_msg("case \"%s\":\n  got  \"%s\"\n  want \"%s\"", b->name, errbuf, b->want);
    }
}

static void test_bad_files(void **state)
{
    cfg_t *c = NULL;
    char want[4200];
    assert_int_equal(cfg_load(data_path("bad_unknown.conf"), &c, errbuf, sizeof(errbuf)),
                     SL_ECONFIG);
    snprintf(want, sizeof(want),
             "%s:12: unknown key \"smtp.max_mesage_size\" (did you mean \"max_message_size\"?)",
             data_path("bad_unknown.conf"));
    assert_string_equal(errbuf, want);

    assert_int_equal(cfg_load(data_path("bad_braces.conf"), &c, errbuf, sizeof(errbuf)),
                     SL_ECONFIG);
    snprintf(want, sizeof(want), "%s:1: section \"smtp\": \"{\" is never closed (missing \"}\")",
             data_path("bad_braces.conf"));
    assert_string_equal(errbuf, want);

    assert_int_equal(cfg_load("/nonexistent/sluice.conf", &c, errbuf, sizeof(errbuf)), SL_ECONFIG);
    assert_string_equal(errbuf, "/nonexistent/sluice.conf: cannot open: No such file or directory");

    assert_int_equal(cfg_load("/tmp", &c, errbuf, sizeof(errbuf)), SL_ECONFIG);
    assert_string_equal(errbuf, "/tmp: cannot read: Is a directory");
    assert_null(c);
}

/* ------------------------------------------------------------ parsers */

static void test_duration(void **state)
{
    static const struct {
        const char *s;
        uint64_t v;
    } good[] = {{"0", 0},        {"90", 90},     {"30s", 30},    {"5m", 300},
                {"1h", 3600},    {"2d", 172800}, {"1w", 604800}, {"4d12h", 388800},
                {"1h30m", 5400}, {"1H", 3600},   {"2000ms", 2},  {"1m30s", 90}};
    static const char *bad[] = {"",
                                "5x",
                                "m",
                                "1h30",
                                "-5",
                                "1.5h",
                                "500ms",
                                " 5m",
                                "5m ",
                                "5 m",
                                "h1",
                                "99999999999999999999",
                                "9999999999999999d"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        uint64_t v = 12345;
        if (cfg_parse_duration(good[i].s, &v) != 0 || v != good[i].v)
            fail_msg("duration \"%s\": got %llu", good[i].s, (unsigned long long)v);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t v = 12345;
        if (cfg_parse_duration(bad[i], &v) != SL_EPARSE || v != 12345)
            fail_msg("duration \"%s\" was accepted", bad[i]);
    }
}

static void test_size(void **state)
{
    static const struct {
        const char *s;
        uint64_t v;
    } good[] = {{"0", 0},
                {"512", 512},
                {"512b", 512},
                {"64K", 65536},
                {"64k", 65536},
                {"64KB", 65536},
                {"64KiB", 65536},
                {"50M", 50ULL << 20},
                {"50mb", 50ULL << 20},
                {"50MiB", 50ULL << 20},
                {"16G", 16ULL << 30},
                {"1T", 1ULL << 40}};
    static const char *bad[] = {"",
                                "K",
                                "5Q",
                                "5.5M",
                                "-1",
                                "1 M",
                                " 1M",
                                "1MM",
                                "99999999999999T",
                                "99999999999999999999"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        uint64_t v = 12345;
        if (cfg_parse_size(good[i].s, &v) != 0 || v != good[i].v)
            fail_msg("size \"%s\": got %llu", good[i].s, (unsigned long long)v);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t v = 12345;
        if (cfg_parse_size(bad[i], &v) != SL_EPARSE || v != 12345)
            fail_msg("size \"%s\" was accepted", bad[i]);
    }
    uint64_t v;
    assert_int_equal(cfg_parse_size("16777215T", &v), 0);         /* 2^64 - 2^40 */
    assert_int_equal(cfg_parse_size("16777216T", &v), SL_EPARSE); /* 2^64 overflows */
}

static void test_duration_list(void **state)
{
    uint64_t out[4] = {0};
    assert_int_equal(cfg_parse_duration_list("5m,10m,30m", out, 4), 3);
    assert_int_equal(out[0], 300);
    assert_int_equal(out[1], 600);
    assert_int_equal(out[2], 1800);
    assert_int_equal(cfg_parse_duration_list(" 5m , 1h ", out, 4), 2);
    assert_int_equal(out[1], 3600);
    assert_int_equal(cfg_parse_duration_list("", out, 4), 0);
    assert_int_equal(cfg_parse_duration_list("1,2,3,4", out, 4), 4);
    assert_int_equal(cfg_parse_duration_list("1,2,3,4,5", out, 4), SL_EPARSE);
    assert_int_equal(cfg_parse_duration_list("5m,,1h", out, 4), SL_EPARSE);
    assert_int_equal(cfg_parse_duration_list("5m,", out, 4), SL_EPARSE);
    assert_int_equal(cfg_parse_duration_list("5m,later", out, 4), SL_EPARSE);
}

/* ------------------------------------------------------------ lookups */

static void test_routes(void **state)
{
    cfg_t *c = load_ok_file(data_path("good_quoted.conf"));
    const struct cfg_route *r = cfg_route_for(c, "example.org");
    assert_non_null(r);
    assert_string_equal(r->r_domain, "example.org");
    assert_string_equal(r->r_host, "127.0.0.1");
    assert_int_equal(r->r_port, 2526);
    assert_ptr_equal(cfg_route_for(c, "EXAMPLE.Org."), r);
    r = cfg_route_for(c, "b.example");
    assert_string_equal(r->r_host, "mx.b.example");
    assert_int_equal(r->r_port, 0);
    r = cfg_route_for(c, "v6.example");
    assert_string_equal(r->r_host, "::1");
    assert_int_equal(r->r_port, 2527);
    /* no exact route: the smarthost */
    r = cfg_route_for(c, "sub.example.org");
    assert_non_null(r);
    assert_string_equal(r->r_domain, "*");
    assert_string_equal(r->r_host, "relay.example.net");
    assert_int_equal(r->r_port, 587);
    assert_ptr_equal(cfg_route_for(c, "example.orgx"), r);
    cfg_unref(c);

    c = load_ok("delivery { routes { a.example = \"10.0.0.1\" } }");
    assert_null(cfg_route_for(c, "b.example"));
    assert_null(cfg_route_for(c, "example"));
    assert_string_equal(cfg_route_for(c, "A.example")->r_host, "10.0.0.1");
    cfg_unref(c);
}

static void test_webhooks(void **state)
{
    cfg_t *c =
        load_ok("events { webhooks {\n"
                " crm { url = \"https://crm.example/hook\"; secret = \"0123456789abcdef\";\n"
                "  types = [\"delivery\", \"bounce\"]; batch = 50; max_latency = 250ms;\n"
                "  retry_initial = 2s; retry_max = 1m; }\n"
                " local { url = \"http://127.0.0.1:8080/\"; secret = \"fedcba9876543210\"; }\n"
                "} }\n");
    assert_int_equal(c->c_nwebhooks, 2);
    const cfg_webhook_t *w = &c->c_webhooks[0];
    assert_string_equal(w->wh_name, "crm");
    assert_string_equal(w->wh_types[0], "delivery");
    assert_string_equal(w->wh_types[1], "bounce");
    assert_null(w->wh_types[2]);
    assert_int_equal(w->wh_batch, 50);
    assert_int_equal(w->wh_max_latency_ms, 250);
    assert_int_equal(w->wh_retry_initial_ms, 2000);
    assert_int_equal(w->wh_retry_max_ms, 60000);
    w = &c->c_webhooks[1];
    assert_null(w->wh_types); /* every type */
    assert_int_equal(w->wh_batch, 100);
    assert_int_equal(w->wh_max_latency_ms, 1000);
    cfg_unref(c);
}

static void test_tls_policy(void **state)
{
    cfg_t *c = load_ok("delivery {\n tls = required\n tls_policy {\n"
                       "  \"Bank.Example\" = verify\n"
                       "  \".example.org\" = disabled\n"
                       "  \".deep.example.org\" = \"verify\"\n"
                       "  \"x.example.org\" = opportunistic\n"
                       " }\n}\n");
    static const struct {
        const char *d;
        int want;
    } cases[] = {
        {"bank.example", CFG_TLS_VERIFY},
        {"BANK.example.", CFG_TLS_VERIFY},
        {"sub.bank.example", CFG_TLS_REQUIRED},
        {"example.org", CFG_TLS_REQUIRED},
        {"a.example.org", CFG_TLS_DISABLED},
        {"a.b.example.org", CFG_TLS_DISABLED},
        {"a.deep.example.org", CFG_TLS_VERIFY},
        {"deep.example.org", CFG_TLS_DISABLED},
        {"x.example.org", CFG_TLS_OPPORTUNISTIC},
        {"y.x.example.org", CFG_TLS_DISABLED},
        {"other.net", CFG_TLS_REQUIRED},
        {"notexample.org", CFG_TLS_REQUIRED},
        {"", CFG_TLS_REQUIRED},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int got = cfg_tls_policy_for(c, cases[i].d);
        if (got != cases[i].want)
            fail_msg("tls policy for \"%s\": got %d, want %d", cases[i].d, got, cases[i].want);
    }
    cfg_unref(c);
}

/* ------------------------------------------------------------ snapshots */

static void test_refcount(void **state)
{
    cfg_t *c = NULL;
    assert_int_equal(cfg_default(&c, errbuf, sizeof(errbuf)), 0);
    assert_int_equal(atomic_load(&c->c_refs), 1);
    assert_ptr_equal(cfg_ref(c), c);
    assert_int_equal(atomic_load(&c->c_refs), 2);
    cfg_unref(c);
    assert_int_equal(atomic_load(&c->c_refs), 1);
    cfg_unref(NULL);

    assert_null(cfg_current());
    cfg_set_current(c); /* takes our reference */
    cfg_t *cur = cfg_current();
    assert_ptr_equal(cur, c);
    assert_int_equal(atomic_load(&c->c_refs), 2);
    cfg_t *c2 = load_ok("smtp { threads = 2 }");
    cfg_set_current(c2); /* drops current's reference to c; we still hold one */
    assert_int_equal(atomic_load(&c->c_refs), 1);
    cfg_unref(cur); /* frees c: ASan reports a leak or a double free here */
    cur = cfg_current();
    assert_int_equal(cur->c_smtp_threads, 2);
    cfg_unref(cur);
    cfg_set_current(NULL); /* frees c2 */
    assert_null(cfg_current());
}

static atomic_int reader_stop;

static void *reader(void *arg)
{
    long n = 0;
    while (!atomic_load(&reader_stop) && n < 2000000) {
        cfg_t *c = cfg_current();
        if (c != NULL) {
            if (c->c_smtp_threads < 1)
                abort();
            cfg_unref(c);
        }
        n++;
    }
    return (void *)n;
}

/* Readers take and drop references while the current snapshot is swapped. */
static void test_current_threads(void **state)
{
    pthread_t th[2];
    atomic_store(&reader_stop, 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, reader, NULL), 0);
    for (int i = 0; i < 300; i++) {
        char text[64];
        snprintf(text, sizeof(text), "smtp { threads = %d }", 1 + i % 8);
        cfg_set_current(load_ok(text));
    }
    atomic_store(&reader_stop, 1);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    cfg_t *c = cfg_current();
    assert_int_equal(atomic_load(&c->c_refs), 2);
    assert_int_equal(c->c_smtp_threads, 1 + 299 % 8);
    cfg_unref(c);
    cfg_set_current(NULL);
}

/* ------------------------------------------------------------ reload column */

/* The keys reload answers as needs_restart (docs/operations.md): those the
 * daemon reads at start-up only. Every other key applies at once. */
static const char *const restart_keys[] = {
    "hostname",
    "user",
    "log.file",
    "log.accounting_dir",
    "log.accounting_max_size",
    "log.accounting_format",
    "spool.path",
    "spool.sync",
    "spool.map_size",
    "spool.max_size",
    "control.socket",
    "control.mode",
    "control.http_metrics",
    "http.listen",
    "http.tls",
    "http.max_body",
    "http.timeout",
    "smtp.listen",
    "smtp.threads",
    "smtp.tls.dir",
    "smtp.tls.cert",
    "smtp.tls.key",
    "smtp.tls.generate",
    "delivery.threads",
    "delivery.resolvers",
    "delivery.ca_file",
    "delivery.helo_name",
    "delivery.mta_sts",
    "delivery.mta_sts_port",
    "events.webhooks",
    "delivery.dnssec",
    "delivery.dnssec_force",
    "bounces.listen",
    "suppression.fold_domains",
    "suppression.case_domains",
    "cluster.redis",
    "cluster.node",
    "cluster.prefix",
    "cluster.lease_ttl",
    "cluster.timeout",
};

static bool is_restart_key(const char *name)
{
    for (size_t i = 0; i < sizeof(restart_keys) / sizeof(restart_keys[0]); i++)
        if (strcmp(restart_keys[i], name) == 0)
            return true;
    return false;
}

/* Every key of the schema has its reload column set, and it says RESTART
 * exactly for the documented keys. */
static void test_reload_column(void **state)
{
    const char *name;
    int i;
    for (i = 0; (name = cfg_key_name(i, NULL)) != NULL; i++) {
        cfg_apply_t a = cfg_key_apply(i);
        if (a != CFG_APPLY_LIVE && a != CFG_APPLY_RESTART)
            fail_msg("%s: the schema does not say how reload treats it", name);
        if ((a == CFG_APPLY_RESTART) != is_restart_key(name))
            fail_msg("%s: reload column %s, docs/operations.md says %s", name,
                     a == CFG_APPLY_RESTART ? "RESTART" : "LIVE",
                     is_restart_key(name) ? "needs a restart" : "applied at once");
    }
    assert_true(i > 80);
    assert_int_equal(cfg_key_apply(i), CFG_APPLY_UNSET);
    assert_int_equal(cfg_key_apply(-1), CFG_APPLY_UNSET);
}

static int key_index(const char *path)
{
    const char *name;
    for (int i = 0; (name = cfg_key_name(i, NULL)) != NULL; i++)
        if (strcmp(name, path) == 0)
            return i;
    fail_msg("no key %s", path);
    return -1;
}

/* A file that changes every RESTART key (and two LIVE ones) against the
 * defaults: cfg_key_changed sees each change, and cfg_keep_restart gives
 * the new snapshot back the running value of every RESTART key, and only
 * of those. */
static void test_reload_keeps_restart_keys(void **state)
{
    char dir[] = "/tmp/sluice-reload-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char tls[600], cert[700], key[700], ca[700];
    snprintf(tls, sizeof(tls), "%s/tls", dir);
    snprintf(cert, sizeof(cert), "%s/cert.pem", tls);
    snprintf(key, sizeof(key), "%s/key.pem", tls);
    snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
    assert_int_equal(mkdir(tls, 0700), 0);
    const char *files[] = {cert, key, ca};
    for (size_t i = 0; i < 3; i++) {
        FILE *f = fopen(files[i], "w");
        assert_non_null(f);
        fputs("not parsed here\n", f);
        fclose(f);
        chmod(files[i], 0600);
    }
    char text[4096];
    snprintf(text, sizeof(text),
             "hostname = \"other.example\";\nuser = \"root\";\n"
             "log { file = \"%s/sluice.log\"; accounting_dir = \"%s/acct\";"
             " accounting_max_size = 1G; level = debug; accounting_format = both; }\n"
             "spool { path = \"%s/spool\"; sync = none; map_size = 2G; max_size = 128G; }\n"
             "control { socket = \"%s/s.sock\"; mode = 0660; http_metrics = \"127.0.0.1:9999\"; }\n"
             "http { listen = \"127.0.0.1:8025\"; tls = true; max_body = 1M; timeout = 5s; }\n"
             "smtp { listen = \"127.0.0.1:2600\"; threads = 2; max_recipients = 7;\n"
             "  tls { dir = \"%s\"; generate = false; } }\n"
             "delivery { threads = 4; resolvers = \"127.0.0.1:5353\"; ca_file = \"%s\";\n"
             "  helo_name = \"helo.example\"; mta_sts = false; mta_sts_port = 8443;\n"
             "  dnssec = trust-ad; dnssec_force = true; }\n"
             "events { webhooks { h { url = \"https://127.0.0.1/x\";"
             " secret = \"0123456789abcdef\"; } } }\n"
             "bounces { domain = \"b.example\"; inbound = true; listen = \"127.0.0.1:2601\"; }\n"
             "suppression { fold_domains = \"gmail.com\"; case_domains = \"c.example\"; }\n"
             "cluster { redis = [\"redis://127.0.0.1:6380\"]; node = \"n1\"; prefix = \"p\";"
             " lease_ttl = 3s; timeout = 50ms; }\n",
             dir, dir, dir, dir, tls, ca);
    cfg_t *old = load_ok("");
    cfg_t *nc = load_ok(text);
    const char *name;
    for (int i = 0; (name = cfg_key_name(i, NULL)) != NULL; i++)
        if (cfg_key_apply(i) == CFG_APPLY_RESTART && !cfg_key_changed(i, old, nc))
            fail_msg("%s: this test does not change it (add it to the file above)", name);
    assert_true(cfg_key_changed(key_index("smtp.max_recipients"), old, nc));
    assert_true(cfg_key_changed(key_index("log.level"), old, nc));

    cfg_keep_restart(nc, old);
    for (int i = 0; (name = cfg_key_name(i, NULL)) != NULL; i++)
        if (cfg_key_apply(i) == CFG_APPLY_RESTART && cfg_key_changed(i, old, nc))
            fail_msg("%s: reload did not keep the running value", name);
    assert_true(cfg_key_changed(key_index("smtp.max_recipients"), old, nc));
    assert_true(cfg_key_changed(key_index("log.level"), old, nc));
    assert_int_equal(nc->c_smtp_max_recipients, 7);
    assert_string_equal(nc->c_spool_path, old->c_spool_path);
    assert_int_equal(nc->c_smtp_nlisten, old->c_smtp_nlisten);
    cfg_unref(nc);
    cfg_unref(old);
    for (size_t i = 0; i < 3; i++)
        unlink(files[i]);
    rmdir(tls);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_is_defaults), cmocka_unit_test(test_embedded_default),
        cmocka_unit_test(test_example_file),      cmocka_unit_test(test_good_files),
        cmocka_unit_test(test_syntax_forms),      cmocka_unit_test(test_syntax_forms2),
        cmocka_unit_test(test_users_file_mode),   cmocka_unit_test(test_tls_files),
        cmocka_unit_test(test_bad_strings),       cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_duration),          cmocka_unit_test(test_size),
        cmocka_unit_test(test_duration_list),     cmocka_unit_test(test_routes),
        cmocka_unit_test(test_tls_policy),        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_current_threads),   cmocka_unit_test(test_dkim),
        cmocka_unit_test(test_reload_column),     cmocka_unit_test(test_reload_keeps_restart_keys),
        cmocka_unit_test(test_webhooks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
