/*
 * config/dkimkeys.c - the dkim { } section: header lists, the keys table
 * (domain -> selector -> PEM file) and the checks across its keys and on
 * the file system (a key readable by others is refused). Parsing the keys
 * themselves is dkim/'s business (dkim_cfg_attach), which config does not
 * include. Calls values.c only.
 * Thread: any thread (a load in progress).
 */
#include "config/config_int.h"

#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* A header field name (RFC 5322 ftext: printable US-ASCII but ':'). */
static bool valid_field_name(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s; s++)
        if ((unsigned char)*s < 33 || (unsigned char)*s > 126 || *s == ':')
            return false;
    return true;
}

/* A DKIM selector: DNS labels (letters, digits, '-', '_', '.'). */
static bool valid_selector(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63 || s[0] == '.' || s[n - 1] == '.' || strstr(s, "..") != NULL)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '-' && *s != '_' && *s != '.')
            return false;
    return true;
}

/* dkim.headers / dkim.oversign: a list of field names, stored lower case as
 * a NULL-terminated array. */
int ld_set_hdrlist(loader_t *ld, const key_def_t *k, const cfg_node_t *n)
{
    item_t items[MAX_ITEMS];
    int cnt = 0;
    if (ld_collect_items(ld, k, n, items, CFG_MAX_DKIM_HEADERS, &cnt) < 0)
        return SL_ECONFIG;
    char **v = xcalloc((size_t)cnt + 1, sizeof(*v));
    for (int i = 0; i < cnt; i++) {
        if (!valid_field_name(items[i].i_s)) {
            ld_error(ld, items[i].i_line, "%s: bad header field name \"%s\"", k->k_path,
                     items[i].i_s);
            cfg_strv_free(v);
            return SL_ECONFIG;
        }
        v[i] = xstrdup(items[i].i_s);
        cfg_lower(v[i]);
    }
    char ***slot = ld_field(ld->l_cfg, k);
    cfg_strv_free(*slot);
    *slot = v;
    return 0;
}

/* dkim.keys { "example.com" { s1 = "/etc/sluice/dkim/example.com.pem"; } }:
 * domain -> selector -> PEM file. The files are checked in ld_finish_dkim();
 * dkim_cfg_attach() (dkim/) parses them. */
int ld_set_dkim_keys(loader_t *ld, const key_def_t *k, const cfg_node_t *sec)
{
    cfg_t *c = ld->l_cfg;
    for (const cfg_node_t *d = sec->n_child; d != NULL; d = d->n_next) {
        for (const cfg_node_t *p = sec->n_child; p != d; p = p->n_next) {
            if (strcasecmp(p->n_key, d->n_key) == 0) {
                ld_error(ld, d->n_key_line, "duplicate key \"%s.%s\" (also on line %d)", k->k_path,
                         d->n_key, p->n_key_line);
                return SL_ECONFIG;
            }
        }
        if (!cfg_hostname_valid(d->n_key)) {
            ld_error(ld, d->n_key_line, "%s: bad domain \"%.80s\"", k->k_path, d->n_key);
            return SL_ECONFIG;
        }
        if (d->n_type != CFG_NODE_SECTION) {
            ld_error(ld, d->n_line,
                     "%s.%s: expected a section { selector = \"/path/key.pem\"; }, got %s",
                     k->k_path, d->n_key, d->n_type == CFG_NODE_LIST ? "a list" : "a string");
            return SL_ECONFIG;
        }
        if (d->n_child == NULL) {
            ld_error(ld, d->n_line, "%s.%s: no key (write selector = \"/path/key.pem\";)",
                     k->k_path, d->n_key);
            return SL_ECONFIG;
        }
        for (const cfg_node_t *e = d->n_child; e != NULL; e = e->n_next) {
            for (const cfg_node_t *p = d->n_child; p != e; p = p->n_next) {
                if (strcasecmp(p->n_key, e->n_key) == 0) {
                    ld_error(ld, e->n_key_line, "duplicate key \"%s.%s.%s\" (also on line %d)",
                             k->k_path, d->n_key, e->n_key, p->n_key_line);
                    return SL_ECONFIG;
                }
            }
            if (!valid_selector(e->n_key)) {
                ld_error(ld, e->n_key_line, "%s.%s: bad selector \"%.80s\"", k->k_path, d->n_key,
                         e->n_key);
                return SL_ECONFIG;
            }
            if (e->n_type != CFG_NODE_STR || e->n_str[0] == '\0') {
                ld_error(ld, e->n_line, "%s.%s.%s: expected the path of a PEM private key",
                         k->k_path, d->n_key, e->n_key);
                return SL_ECONFIG;
            }
            if (c->c_dkim_nkeys == CFG_MAX_DKIM_KEYS) {
                ld_error(ld, e->n_key_line, "%s: too many keys (at most %d)", k->k_path,
                         CFG_MAX_DKIM_KEYS);
                return SL_ECONFIG;
            }
            if (c->c_dkim_keys == NULL)
                c->c_dkim_keys = xcalloc(CFG_MAX_DKIM_KEYS, sizeof(*c->c_dkim_keys));
            struct cfg_dkim_key *dk = &c->c_dkim_keys[c->c_dkim_nkeys++];
            dk->dk_domain = xstrdup(d->n_key);
            cfg_lower(dk->dk_domain);
            dk->dk_selector = xstrdup(e->n_key);
            dk->dk_file = xstrdup(e->n_str);
            dk->dk_line = e->n_line;
        }
    }
    return 0;
}

/*
 * What is wrong with a private key file's mode (TLS, DKIM), or NULL. Never
 * readable or writable by others; readable by its group only when that is
 * the daemon's own group (`user`'s, else the one it runs as), since
 * root:<that group> 0640 is how a daemon that switched user reads its keys
 * again at reload (docs/operations.md); never writable by a group.
 */
const char *cfg_key_mode_problem(const cfg_t *c, const struct stat *st, char *buf, size_t len)
{
    if (st->st_mode & (S_IROTH | S_IWOTH))
        return "is readable by others (chmod 600)";
    if (st->st_mode & S_IWGRP)
        return "is writable by its group (chmod g-w)";
    if (!(st->st_mode & S_IRGRP))
        return NULL;
    struct passwd *pw = c->c_user[0] != '\0' ? getpwnam(c->c_user) : NULL;
    gid_t mine = pw != NULL ? pw->pw_gid : getegid();
    if (st->st_gid == mine)
        return NULL;
    char g1[64], g2[64]; /* getgrgid's answer lives until the next call */
    struct group *gr = getgrgid(st->st_gid);
    if (gr != NULL)
        snprintf(g1, sizeof(g1), "%s", gr->gr_name);
    else
        snprintf(g1, sizeof(g1), "%u", (unsigned)st->st_gid);
    if ((gr = getgrgid(mine)) != NULL)
        snprintf(g2, sizeof(g2), "%s", gr->gr_name);
    else
        snprintf(g2, sizeof(g2), "%u", (unsigned)mine);
    snprintf(buf, len, "is readable by group %s, which is not sluiced's (chgrp %s, or chmod 600)",
             g1, g2);
    return buf;
}

/* The dkim section's checks across keys and on the file system. The key
 * files' contents are dkim/'s business (dkim_cfg_attach). */
int ld_finish_dkim(loader_t *ld)
{
    cfg_t *c = ld->l_cfg;
#define LINE(f) ld_line(ld, f)
    static const char *const canons[] = {"relaxed/relaxed", "relaxed/simple", "simple/relaxed",
                                         "simple/simple",   "relaxed",        "simple"};
    static const char *const algs[] = {"any", "rsa-sha256", "ed25519-sha256"};
    bool ok = false;
    for (size_t i = 0; i < ARRAY_SIZE(canons); i++)
        ok |= strcasecmp(c->c_dkim_canon, canons[i]) == 0;
    if (!ok) {
        ld_error(ld, LINE("dkim.canonicalization"),
                 "dkim.canonicalization: expected relaxed/relaxed, relaxed/simple, "
                 "simple/relaxed or simple/simple, got \"%.80s\"",
                 c->c_dkim_canon);
        return SL_ECONFIG;
    }
    ok = false;
    for (size_t i = 0; i < ARRAY_SIZE(algs); i++)
        ok |= strcasecmp(c->c_dkim_alg, algs[i]) == 0;
    if (!ok) {
        ld_error(ld, LINE("dkim.algorithm"),
                 "dkim.algorithm: expected one of any, rsa-sha256, ed25519-sha256, got \"%.80s\"",
                 c->c_dkim_alg);
        return SL_ECONFIG;
    }
    ok = false;
    for (char **h = c->c_dkim_headers; *h != NULL; h++)
        ok |= strcmp(*h, "from") == 0;
    if (!ok) { /* RFC 6376 5.4 */
        ld_error(ld, LINE("dkim.headers"), "dkim.headers: must include \"from\" (RFC 6376 5.4)");
        return SL_ECONFIG;
    }
    if (c->c_dkim_expire > 0 && !c->c_dkim_timestamp) {
        ld_error(ld, MAX(LINE("dkim.expire"), LINE("dkim.timestamp")),
                 "dkim.expire needs dkim.timestamp = true (x= counts from t=)");
        return SL_ECONFIG;
    }
    if (c->c_dkim_esp_domain[0] != '\0') {
        cfg_lower(c->c_dkim_esp_domain);
        ok = false;
        for (int i = 0; i < c->c_dkim_nkeys; i++)
            ok |= strcmp(c->c_dkim_keys[i].dk_domain, c->c_dkim_esp_domain) == 0;
        if (!ok) {
            ld_error(ld, LINE("dkim.esp_domain"),
                     "dkim.esp_domain: no key for \"%s\" in dkim.keys (add \"%s\" { selector = "
                     "\"/path/key.pem\"; })",
                     c->c_dkim_esp_domain, c->c_dkim_esp_domain);
            return SL_ECONFIG;
        }
    }
    if (c->c_dkim_nkeys > 0 && !c->c_dkim_sign_from && c->c_dkim_esp_domain[0] == '\0') {
        ld_error(ld, LINE("dkim.sign_from_domain"),
                 "dkim: keys are configured but nothing signs (set sign_from_domain = true or "
                 "esp_domain)");
        return SL_ECONFIG;
    }
    for (int i = 0; i < c->c_dkim_nkeys; i++) {
        const struct cfg_dkim_key *dk = &c->c_dkim_keys[i];
        struct stat st;
        if (stat(dk->dk_file, &st) != 0) {
            ld_error(ld, dk->dk_line, "dkim.keys.%s.%s: key %s: %s", dk->dk_domain, dk->dk_selector,
                     dk->dk_file, strerror(errno));
            return SL_ECONFIG;
        }
        if (!S_ISREG(st.st_mode)) {
            ld_error(ld, dk->dk_line, "dkim.keys.%s.%s: key %s: not a regular file", dk->dk_domain,
                     dk->dk_selector, dk->dk_file);
            return SL_ECONFIG;
        }
        char why[256];
        const char *bad = cfg_key_mode_problem(c, &st, why, sizeof(why));
        if (bad != NULL) {
            ld_error(ld, dk->dk_line, "dkim.keys.%s.%s: key %s: %s", dk->dk_domain, dk->dk_selector,
                     dk->dk_file, bad);
            return SL_ECONFIG;
        }
    }
#undef LINE
    return 0;
}
