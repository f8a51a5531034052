/*
 * config/config_int.h - private to config/: the schema's types, the load in
 * progress, and the interfaces between config/'s files. A file calls only
 * the files below it, never back (tests/arch/layers.py checks it):
 *     diff.c                 the reload column (reads config.c's schema)
 *     config.c               the schema table, the walk, the load
 *     dkimkeys.c, snapshot.c the dkim { } section; references, current
 *     values.c               one value: parsers, checks, lookups, errors
 *     parse.c                the syntax (config.h's cfg_tree_*)
 * Nothing outside config/ includes this.
 */
#ifndef SLUICE_CONFIG_INT_H
#define SLUICE_CONFIG_INT_H

#include "config/config.h"

#include <stddef.h>
#include <sys/stat.h>

/* Value kinds of the schema. */
typedef enum {
    K_STR,       /* char *, may be "" */
    K_PATH,      /* char *, not "" */
    K_SOCKET,    /* char *, fits in sun_path */
    K_HOSTNAME,  /* char *, "" or a host name */
    K_INT,       /* int in [min, max] */
    K_SIZE,      /* uint64_t bytes in [min, max] */
    K_DUR,       /* uint64_t seconds in [min, max] */
    K_DUR_MS,    /* uint64_t milliseconds in [min, max] */
    K_BOOL,      /* bool */
    K_MODE,      /* int, octal file mode */
    K_LEVEL,     /* log_level_t */
    K_SYNC,      /* cfg_sync_t */
    K_BARENL,    /* cfg_barenl_t */
    K_TLSPOL,    /* int CFG_TLS_* */
    K_LISTEN,    /* c_smtp_listen / c_smtp_nlisten */
    K_ADDRS,     /* cfg_addrs_t: "ip:port" list, may be empty */
    K_CIDRS,     /* c_smtp_relay / c_smtp_nrelay */
    K_RETRY,     /* c_retry / c_retry_n */
    K_RESOLVERS, /* char *, "ip[:port],..." */
    K_REDIS,     /* char *, "" or "redis://ip:port" or "unix:/path" (a list of one) */
    K_HOSTPORT,  /* char *, "host[:port]" (also fills c_dlv_smart) */
    K_IPPORT,    /* char *, "" or "ip:port" with a port (an address, not a host name) */
    K_ROUTES,    /* section: "domain" = "host[:port]" */
    K_TLSMAP,    /* section: "domain" = "policy" */
    K_USERS,     /* section: name = "crypt(3) hash" */
    K_TOKENS,    /* section: name = "scope,scope:sha256 hex" */
    K_HDRLIST,   /* char ** (NULL-terminated): header field names, lower case */
    K_DKIMKEYS,  /* section: "domain" { selector = "key.pem"; } */
    K_WEBHOOKS,  /* section: name { url = ...; secret = ...; ... } (webhooks.c) */
} kind_t;

typedef struct key_def {
    const char *k_path;
    cfg_apply_t k_apply; /* reload: applies at once, or needs a restart */
    kind_t k_kind;
    size_t k_off;
    uint64_t k_min, k_max;
    const char *k_default; /* as written in a file; NULL for sections */
} key_def_t;

/* Units of the schema's ranges and of the parsers. */
#define KB 1024ULL
#define MB (1024ULL * KB)
#define GB (1024ULL * MB)
#define TB (1024ULL * GB)
#define MIN_S 60ULL
#define HOUR (60ULL * MIN_S)
#define DAY (24ULL * HOUR)

#define MAX_KEYS 160
#define MAX_ITEMS 64
#define MAX_RESOLVERS 16

/* One load in progress. */
typedef struct loader {
    const char *l_name;
    cfg_t *l_cfg;
    char *l_err;
    size_t l_errlen;
    bool l_failed;
    const struct key_def *l_keys; /* the schema (config.c) */
    int l_nkeys;
    int l_line[MAX_KEYS]; /* line where each key was set; 0 = default */
} loader_t;

/* One item of a list value ("a, b" or ["a", "b"]). */
typedef struct item {
    char i_s[256];
    int i_line;
} item_t;

/* ------------------------------------------------------------ config.c */

/* The schema table: *n keys. Read-only. */
const key_def_t *cfg_schema(int *n);

/* ------------------------------------------------------------ snapshot.c */

/* Free a snapshot whose last reference went (or that never got out of a
 * failed load). NULL is fine. */
void cfg_free(cfg_t *c);

/* ------------------------------------------------------------ dkimkeys.c */

/* dkim.headers / dkim.oversign: a list of field names, stored lower case
 * as a NULL-terminated array. 0 or SL_ECONFIG (the error in ld). */
int ld_set_hdrlist(loader_t *ld, const key_def_t *k, const cfg_node_t *n);
/* dkim.keys { domain { selector = "file"; } }. 0 or SL_ECONFIG. */
int ld_set_dkim_keys(loader_t *ld, const key_def_t *k, const cfg_node_t *sec);
/* The dkim section's checks across keys and on the file system. */
int ld_finish_dkim(loader_t *ld);
/* webhooks.c: events.webhooks; compare, copy and free the array. */
int ld_set_webhooks(loader_t *ld, const key_def_t *k, const cfg_node_t *sec);
bool cfg_webhooks_differ(const cfg_t *a, const cfg_t *b);
cfg_webhook_t *cfg_webhooks_dup(const cfg_webhook_t *v, int n);
void cfg_webhooks_free(cfg_webhook_t *v, int n);
/* What is wrong with a private key file's mode (TLS, DKIM), or NULL; buf
 * may hold the text. */
const char *cfg_key_mode_problem(const cfg_t *c, const struct stat *st, char *buf, size_t len);

/* ------------------------------------------------------------ values.c */

/* The load's error, "name:line: what" (the first one only). */
void ld_error(loader_t *ld, int line, const char *fmt, ...) PRINTF_LIKE(3, 4);
/* The line where the key at path was set in this load, 0 for its default. */
int ld_line(const loader_t *ld, const char *path);
/* "path: expected <what the kind takes>, got ..." for n; SL_ECONFIG. */
int ld_expect_error(loader_t *ld, const key_def_t *k, const cfg_node_t *n);
/* The items of a list value (a string "a, b" or a list [a, b]), at most
 * max, into items; 0 or SL_ECONFIG. */
int ld_collect_items(loader_t *ld, const key_def_t *k, const cfg_node_t *n, item_t *items, int max,
                     int *count);
/* The key's field in c; replace a string field with a copy of v. */
void *ld_field(cfg_t *c, const key_def_t *k);
void ld_set_str(char **slot, const char *v);

/* Values: 0 or SL_EPARSE (cfg_parse_duration and co. are config.h's). */
int cfg_parse_uint(const char *s, uint64_t *out);
int cfg_parse_bool(const char *s, bool *out);
int cfg_parse_tls_policy(const char *s, int *out);
int cfg_parse_dur_ms(const char *s, uint64_t *ms);
/* "host", "host:port", "1.2.3.4:25", "[::1]:25", "::1": *host owned. */
int cfg_parse_dest(const char *s, char **host, int *port);
bool cfg_hostname_valid(const char *s);
void cfg_lower(char *s);
/* Free a NULL-terminated string array (NULL is fine). */
void cfg_strv_free(char **v);

#endif /* SLUICE_CONFIG_INT_H */
