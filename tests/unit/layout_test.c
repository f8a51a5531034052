/*
 * tests/unit/layout_test.c - the two layouts of compiled-in default paths
 * (config.h, CFG_LAYOUT_*) and the manual that lists every key.
 *
 * - the build tree's layout keeps ./var (make run, the tests);
 * - the installed layout changes exactly the four paths, its default text
 *   (the shipped /etc/sluice/sluice.conf) loads and states them;
 * - docs/man/sluice.conf.5 has an entry for every key of the schema with
 *   the installed default as the schema writes it and what reload does with
 *   it (the schema's reload column, cfg_key_apply), and no entry for a key
 *   the schema does not have: the manual cannot drift from config.c.
 *
 * Data: $SLUICE_SRC/docs/man/sluice.conf.5.
 */
#include "config/config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static char errbuf[1024];

static const char *src_path(const char *rel)
{
    static char p[4096];
    const char *src = getenv("SLUICE_SRC");
    snprintf(p, sizeof(p), "%s/%s", src ? src : ".", rel);
    return p;
}

static cfg_t *load_ok(const char *text)
{
    cfg_t *c = NULL;
    if (cfg_load_string("t.conf", text, &c, errbuf, sizeof(errbuf)) != 0)
        fail_msg("unexpected error: %s\n--- text:\n%s", errbuf, text);
    return c;
}

static int reset_layout(void **state)
{
    cfg_set_layout(CFG_LAYOUT_BUILD);
    return 0;
}

static void test_build_layout(void **state)
{
    cfg_t *c = load_ok("");
    assert_string_equal(c->c_spool_path, "./var/spool");
    assert_string_equal(c->c_acct_dir, "./var/log");
    assert_string_equal(c->c_ctl_socket, CFG_BUILD_SOCKET);
    assert_string_equal(c->c_tls_dir, "./var/tls");
    assert_string_equal(c->c_tls_key, "./var/tls/key.pem");
    cfg_unref(c);
    assert_non_null(strstr(cfg_default_text(), "./var/spool"));
    assert_null(strstr(cfg_default_text(), "/etc/sluice"));
}

static void test_fhs_layout(void **state)
{
    cfg_set_layout(CFG_LAYOUT_FHS);
    cfg_t *c = load_ok("");
    assert_string_equal(c->c_spool_path, "/var/spool/sluice");
    assert_string_equal(c->c_acct_dir, "/var/log/sluice");
    assert_string_equal(c->c_ctl_socket, "/run/sluice/sluiced.sock");
    assert_string_equal(c->c_tls_dir, "/var/lib/sluice/tls");
    assert_string_equal(c->c_tls_cert, "/var/lib/sluice/tls/cert.pem");
    assert_string_equal(c->c_user, ""); /* the layout is paths only */
    cfg_unref(c);
    /* a file still wins over the layout */
    c = load_ok("spool { path = \"/srv/spool\"; }");
    assert_string_equal(c->c_spool_path, "/srv/spool");
    assert_string_equal(c->c_tls_dir, "/var/lib/sluice/tls");
    cfg_unref(c);

    /* the shipped /etc/sluice/sluice.conf: loads, and says what it sets */
    const char *text = cfg_default_text();
    assert_non_null(strstr(text, "path = \"/var/spool/sluice\";"));
    assert_non_null(strstr(text, "socket = \"/run/sluice/sluiced.sock\";"));
    assert_non_null(strstr(text, "accounting_dir = \"/var/log/sluice\";"));
    assert_non_null(strstr(text, "dir = \"/var/lib/sluice/tls\";"));
    assert_null(strstr(text, "./var"));
    /* The user it names exists where the package made it; here the load
     * would stop at "no such user", so it is taken out. */
    const char *user = "user = \"sluice\";";
    const char *u = strstr(text, user);
    assert_non_null(u);
    char copy[8192];
    assert_true(strlen(text) < sizeof(copy));
    snprintf(copy, sizeof(copy), "%.*s%s", (int)(u - text), text, u + strlen(user));
    c = load_ok(copy);
    assert_string_equal(c->c_spool_path, "/var/spool/sluice");
    char a[64];
    net_ntop((const struct sockaddr *)&c->c_smtp_listen[0], a, sizeof(a));
    assert_string_equal(a, "127.0.0.1");
    assert_int_equal(ntohs(((const struct sockaddr_in *)&c->c_smtp_listen[0])->sin_port), 25);
    cfg_unref(c);

    /* cfg_key_name reports the layout's defaults */
    const char *def = NULL;
    for (int i = 0; cfg_key_name(i, &def) != NULL; i++)
        if (strcmp(cfg_key_name(i, NULL), "control.socket") == 0)
            assert_string_equal(def, CFG_FHS_SOCKET);
}

/* The KEYS section of the manual: ".It Cm KEY ..." starts an entry, which
 * ends at the next ".It" or ".El"; "Default:\~VALUE" in it is the default
 * as the schema writes it ("" for an empty string). */
static char *read_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        fail_msg("%s: cannot open", path);
    static char text[256 * 1024];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    assert_true(n < sizeof(text) - 1);
    text[n] = '\0';
    return text;
}

/* The entry of key (a pointer to its ".It" line in keys_sec), or NULL. */
static const char *man_entry(const char *keys_sec, const char *key)
{
    char want[256];
    int n = snprintf(want, sizeof(want), "\n.It Cm %s", key);
    for (const char *p = keys_sec; (p = strstr(p, want)) != NULL; p++)
        if (p[n] == ' ' || p[n] == '\n')
            return p + 1;
    return NULL;
}

static void test_manual_lists_every_key(void **state)
{
    cfg_set_layout(CFG_LAYOUT_FHS); /* the manual describes the installed sluiced */
    char *text = read_file(src_path("docs/man/sluice.conf.5"));
    char *keys_sec = strstr(text, "\n.Sh KEYS\n");
    assert_non_null(keys_sec);
    char *end = strstr(keys_sec + 1, "\n.Sh ");
    assert_non_null(end);
    *end = '\0';

    const char *def;
    int nkeys = 0;
    for (int i = 0; cfg_key_name(i, &def) != NULL; i++, nkeys++) {
        const char *key = cfg_key_name(i, NULL);
        const char *e = man_entry(keys_sec, key);
        if (e == NULL)
            fail_msg("sluice.conf.5 has no entry for \"%s\" (.It Cm %s)", key, key);
        const char *next = e + 1;
        const char *n1 = strstr(next, "\n.It "), *n2 = strstr(next, "\n.El");
        const char *stop = n1 == NULL ? n2 : n2 == NULL ? n1 : n1 < n2 ? n1 : n2;
        assert_non_null(stop);
        /* how reload treats it, as the schema's reload column says */
        const char *want_reload = cfg_key_apply(i) == CFG_APPLY_LIVE
                                      ? "\nReload:\\~applied at once\n"
                                      : "\nReload:\\~needs a restart\n";
        const char *r = strstr(next, "\nReload:\\~");
        if (r == NULL || r > stop)
            fail_msg("sluice.conf.5: \"%s\" has no \"Reload:\\~\" line", key);
        if (strncmp(r, want_reload, strlen(want_reload)) != 0)
            fail_msg("sluice.conf.5: \"%s\": the manual says %.*s, the schema's reload column %s",
                     key, (int)strcspn(r + 1, "\n"), r + 1, want_reload + 1);
        const char *d = strstr(next, "\nDefault:\\~");
        if (def == NULL) { /* a section: no single default */
            if (d != NULL && d < stop)
                fail_msg("sluice.conf.5: \"%s\" is a section, it has no default", key);
            continue;
        }
        if (d == NULL || d > stop)
            fail_msg("sluice.conf.5: \"%s\" has no \"Default:\\~\" line", key);
        d += strlen("\nDefault:\\~");
        size_t len = strcspn(d, "\n");
        const char *want = def[0] == '\0' ? "\"\"" : def;
        if (len != strlen(want) || strncmp(d, want, len) != 0)
            fail_msg("sluice.conf.5: \"%s\": the manual says %.*s, the schema %s", key, (int)len, d,
                     want);
    }
    assert_true(nkeys > 60);

    /* and nothing the schema does not know */
    for (const char *p = keys_sec; (p = strstr(p, "\n.It Cm ")) != NULL; p++) {
        char key[128];
        const char *k = p + strlen("\n.It Cm ");
        size_t len = strcspn(k, " \n");
        assert_true(len < sizeof(key));
        memcpy(key, k, len);
        key[len] = '\0';
        bool known = false;
        for (int i = 0; cfg_key_name(i, NULL) != NULL; i++)
            known = known || strcmp(cfg_key_name(i, NULL), key) == 0;
        if (!known)
            fail_msg("sluice.conf.5 documents \"%s\", which the schema does not have", key);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_build_layout, reset_layout),
        cmocka_unit_test_teardown(test_fhs_layout, reset_layout),
        cmocka_unit_test_teardown(test_manual_lists_every_key, reset_layout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
