/*
 * config/config.c - the schema, validation and defaults of sluice's
 * configuration, and the refcounted snapshot every thread reads.
 *
 * cfg_load() / cfg_load_string() parse text into a tree (parse.c), set every
 * key of a fresh cfg_t from its default, then walk the tree against the
 * schema table below (path, type, range, default): an unknown key, a wrong
 * type, a value out of range, a bad address or a missing file is reported as
 * "file:line: message" and nothing is returned. The helpers cfg_parse_*,
 * cfg_route_for and cfg_tls_policy_for serve the other modules.
 *
 * Threads: loading is pure (any thread). A snapshot is immutable once
 * returned; its refcount is atomic; the process-wide current pointer is
 * guarded by a mutex (the only mutable global sluice has).
 */
#include "config/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <grp.h>
#include <pthread.h>
#include <pwd.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

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
    K_CIDRS,     /* c_smtp_relay / c_smtp_nrelay */
    K_RETRY,     /* c_retry / c_retry_n */
    K_RESOLVERS, /* char *, "ip[:port],..." */
    K_HOSTPORT,  /* char *, "host[:port]" (also fills c_dlv_smart) */
    K_IPPORT,    /* char *, "" or "ip:port" with a port (an address, not a host name) */
    K_ROUTES,    /* section: "domain" = "host[:port]" */
    K_TLSMAP,    /* section: "domain" = "policy" */
    K_USERS,     /* section: name = "crypt(3) hash" */
    K_HDRLIST,   /* char ** (NULL-terminated): header field names, lower case */
    K_DKIMKEYS,  /* section: "domain" { selector = "key.pem"; } */
} kind_t;

typedef struct key_def {
    const char *k_path;
    kind_t k_kind;
    size_t k_off;
    uint64_t k_min, k_max;
    const char *k_default; /* as written in a file; NULL for sections */
} key_def_t;

#define OFF(f) offsetof(cfg_t, f)
#define KEY(p, kind, f, def)                                                                       \
    {                                                                                              \
        p, kind, OFF(f), 0, 0, def                                                                 \
    }
#define KEYR(p, kind, f, lo, hi, def)                                                              \
    {                                                                                              \
        p, kind, OFF(f), lo, hi, def                                                               \
    }
#define SEC(p, kind)                                                                               \
    {                                                                                              \
        p, kind, 0, 0, 0, NULL                                                                     \
    }
#define KB 1024ULL
#define MB (1024ULL * KB)
#define GB (1024ULL * MB)
#define TB (1024ULL * GB)
#define MIN_S 60ULL
#define HOUR (60ULL * MIN_S)
#define DAY (24ULL * HOUR)

/* Every key sluice knows: the single source of types, ranges and defaults.
 * config.h's comments and sluice.conf.example repeat these defaults; the
 * unit test checks the example names every key. The paths of the installed
 * layout are in layout_defaults below; the manual, sluice.conf(5), lists
 * every key with its installed default (tests/unit/manpage_test.c). */
static const key_def_t keys[] = {
    KEY("hostname", K_HOSTNAME, c_hostname, ""),
    KEY("user", K_STR, c_user, ""),

    KEY("log.level", K_LEVEL, c_log_level, "info"),
    KEY("log.file", K_STR, c_log_file, ""),
    KEY("log.accounting_dir", K_PATH, c_acct_dir, "./var/log"),
    KEYR("log.accounting_max_size", K_SIZE, c_acct_max_size, MB, TB, "256M"),

    KEY("spool.path", K_PATH, c_spool_path, "./var/spool"),
    KEY("spool.sync", K_SYNC, c_spool_sync, "fsync"),
    KEYR("spool.map_size", K_SIZE, c_spool_map_size, 16 * MB, 64 * TB, "1G"),
    KEYR("spool.max_size", K_SIZE, c_spool_max_size, 16 * MB, 64 * TB, "64G"),
    KEYR("spool.high_water", K_INT, c_spool_high_water, 1, 100, "90"),
    KEYR("spool.commit_batch", K_INT, c_spool_batch, 1, 1000000, "1024"),

    KEY("control.socket", K_SOCKET, c_ctl_socket, "./var/sluiced.sock"),
    KEYR("control.mode", K_MODE, c_ctl_mode, 0, 0777, "0600"),
    KEY("control.http_metrics", K_IPPORT, c_ctl_http, ""),

    KEY("smtp.listen", K_LISTEN, c_smtp_listen, "127.0.0.1:2525"),
    KEYR("smtp.threads", K_INT, c_smtp_threads, 1, 64, "1"),
    KEYR("smtp.max_message_size", K_SIZE, c_smtp_max_message_size, KB, 4 * GB, "50M"),
    KEYR("smtp.max_recipients", K_INT, c_smtp_max_recipients, 1, 100000, "1000"),
    KEYR("smtp.max_line_length", K_INT, c_smtp_max_line, 1000, 1048576, "1000"),
    KEYR("smtp.max_connections", K_INT, c_smtp_max_connections, 1, 1000000, "2000"),
    KEYR("smtp.max_connections_per_ip", K_INT, c_smtp_max_conn_per_ip, 1, 1000000, "200"),
    KEYR("smtp.max_commands_before_mail", K_INT, c_smtp_max_commands_before_mail, 1, 100000, "20"),
    KEYR("smtp.max_errors", K_INT, c_smtp_max_errors, 1, 100000, "10"),
    KEYR("smtp.idle_timeout", K_DUR, c_smtp_idle_timeout, 1, DAY, "5m"),
    KEYR("smtp.data_timeout", K_DUR, c_smtp_data_timeout, 1, DAY, "10m"),
    KEYR("smtp.max_pending", K_INT, c_smtp_max_pending, 1, 10000000, "5000"),
    KEYR("smtp.max_memory", K_SIZE, c_smtp_max_memory, MB, TB, "512M"),
    KEY("smtp.bare_newline", K_BARENL, c_smtp_bare_newline, "reject"),
    KEY("smtp.relay_networks", K_CIDRS, c_smtp_relay, "127.0.0.0/8, ::1/128"),

    KEY("smtp.tls.dir", K_STR, c_tls_dir, ""),
    KEY("smtp.tls.cert", K_STR, c_tls_cert, ""),
    KEY("smtp.tls.key", K_STR, c_tls_key, ""),
    KEY("smtp.tls.generate", K_BOOL, c_tls_generate, "true"),

    KEY("smtp.auth.plaintext_loopback", K_BOOL, c_auth_plaintext_loopback, "true"),
    KEYR("smtp.auth.fail_delay", K_DUR_MS, c_auth_fail_delay, 0, 60000, "1s"),
    KEYR("smtp.auth.lockout_failures", K_INT, c_auth_lockout_failures, 1, 1000000, "5"),
    KEYR("smtp.auth.lockout_window", K_DUR, c_auth_lockout_window, 1, 7 * DAY, "10m"),
    KEYR("smtp.auth.lockout_time", K_DUR, c_auth_lockout_time, 1, 7 * DAY, "15m"),
    SEC("smtp.auth.users", K_USERS),

    KEY("queue.retry", K_RETRY, c_retry, ""),
    KEYR("queue.retry_initial", K_DUR, c_retry_initial, 1, 30 * DAY, "5m"),
    KEYR("queue.retry_max", K_DUR, c_retry_max, 1, 30 * DAY, "4h"),
    KEYR("queue.retry_jitter", K_INT, c_retry_jitter, 0, 100, "20"),
    KEYR("queue.max_age", K_DUR, c_max_age, MIN_S, 365 * DAY, "5d"),
    KEY("queue.dsn", K_BOOL, c_dsn, "true"),
    KEYR("queue.active_window", K_INT, c_active_window, 1, 10000000, "2000"),
    KEYR("queue.active_total", K_INT, c_active_total, 1, 100000000, "100000"),
    KEYR("queue.active_size", K_SIZE, c_active_size, MB, TB, "256M"),
    KEYR("queue.scan_interval", K_DUR_MS, c_scan_interval_ms, 10, HOUR * 1000, "1s"),

    KEYR("delivery.threads", K_INT, c_dlv_threads, 0, 256, "0"),
    KEYR("delivery.port", K_INT, c_dlv_port, 1, 65535, "25"),
    KEY("delivery.resolvers", K_RESOLVERS, c_dlv_resolvers, ""),
    KEY("delivery.smarthost", K_HOSTPORT, c_dlv_smarthost, ""),
    SEC("delivery.routes", K_ROUTES),
    KEY("delivery.tls", K_TLSPOL, c_dlv_tls_default, "opportunistic"),
    SEC("delivery.tls_policy", K_TLSMAP),
    KEY("delivery.ca_file", K_STR, c_dlv_ca_file, ""),
    KEY("delivery.helo_name", K_HOSTNAME, c_dlv_helo, ""),
    KEY("delivery.bounce_rules", K_STR, c_dlv_bounce_rules, ""),
    KEY("delivery.shaping", K_STR, c_dlv_shaping, ""),
    KEYR("delivery.max_rcpt_per_transaction", K_INT, c_dlv_max_rcpt_per_txn, 1, 100000, "100"),
    KEYR("delivery.max_connections_per_destination", K_INT, c_dlv_max_conn_per_dest, 1, 100000,
         "20"),
    KEYR("delivery.max_messages_per_connection", K_INT, c_dlv_max_msgs_per_conn, 1, 100000000,
         "1000"),
    KEYR("delivery.connection_reuse_time", K_DUR, c_dlv_conn_reuse_time, 0, DAY, "300s"),
    KEYR("delivery.idle_time", K_DUR, c_dlv_idle_time, 0, HOUR, "2s"),
    KEYR("delivery.dns_cache_max_ttl", K_DUR, c_dlv_dns_cache_max, 0, 7 * DAY, "1h"),
    KEYR("delivery.dead_after_failures", K_INT, c_dlv_dead_after, 1, 100000, "5"),
    KEYR("delivery.dead_time", K_DUR, c_dlv_dead_time, 1, 7 * DAY, "5m"),
    KEY("delivery.mta_sts", K_BOOL, c_dlv_mta_sts, "true"),
    KEYR("delivery.mta_sts_port", K_INT, c_dlv_mta_sts_port, 1, 65535, "443"),
    KEYR("delivery.connect_timeout", K_DUR, c_to_connect, 1, HOUR, "30s"),
    KEYR("delivery.greeting_timeout", K_DUR, c_to_greeting, 1, HOUR, "5m"),
    KEYR("delivery.ehlo_timeout", K_DUR, c_to_ehlo, 1, HOUR, "5m"),
    KEYR("delivery.starttls_timeout", K_DUR, c_to_starttls, 1, HOUR, "2m"),
    KEYR("delivery.mail_timeout", K_DUR, c_to_mail, 1, HOUR, "5m"),
    KEYR("delivery.rcpt_timeout", K_DUR, c_to_rcpt, 1, HOUR, "5m"),
    KEYR("delivery.data_timeout", K_DUR, c_to_data, 1, HOUR, "2m"),
    KEYR("delivery.data_block_timeout", K_DUR, c_to_data_block, 1, HOUR, "3m"),
    KEYR("delivery.data_done_timeout", K_DUR, c_to_data_done, 1, HOUR, "10m"),
    KEYR("delivery.quit_timeout", K_DUR, c_to_quit, 1, HOUR, "10s"),

    KEY("dkim.sign_from_domain", K_BOOL, c_dkim_sign_from, "true"),
    KEY("dkim.esp_domain", K_HOSTNAME, c_dkim_esp_domain, ""),
    KEY("dkim.canonicalization", K_STR, c_dkim_canon, "relaxed/relaxed"),
    KEY("dkim.algorithm", K_STR, c_dkim_alg, "any"),
    KEY("dkim.headers", K_HDRLIST, c_dkim_headers,
        "from, to, subject, date, message-id, mime-version, content-type, list-unsubscribe, "
        "list-unsubscribe-post, reply-to, cc, in-reply-to, references, feedback-id"),
    KEY("dkim.oversign", K_HDRLIST, c_dkim_oversign, "from"),
    KEY("dkim.timestamp", K_BOOL, c_dkim_timestamp, "true"),
    KEYR("dkim.expire", K_DUR, c_dkim_expire, 0, 365 * DAY, "0"),
    SEC("dkim.keys", K_DKIMKEYS),
};

#define NKEYS ((int)ARRAY_SIZE(keys))
#define MAX_KEYS 128
_Static_assert(ARRAY_SIZE(keys) <= MAX_KEYS, "raise MAX_KEYS");
#define MAX_ITEMS 64
#define MAX_RESOLVERS 16

/* One load in progress. */
typedef struct loader {
    const char *l_name;
    cfg_t *l_cfg;
    char *l_err;
    size_t l_errlen;
    bool l_failed;
    int l_line[MAX_KEYS]; /* line where each key was set; 0 = default */
} loader_t;

/* One item of a list value ("a, b" or ["a", "b"]). */
typedef struct item {
    char i_s[256];
    int i_line;
} item_t;

static void ld_error(loader_t *ld, int line, const char *fmt, ...) PRINTF_LIKE(3, 4);
static int load_text(const char *name, const char *text, size_t len, int file_mode, cfg_t **out,
                     char *err, size_t errlen);
static int walk_section(loader_t *ld, const cfg_node_t *sec, const char *prefix);
static int set_value(loader_t *ld, const key_def_t *k, const cfg_node_t *n);
static int set_map(loader_t *ld, const key_def_t *k, const cfg_node_t *sec);
static int set_hdrlist(loader_t *ld, const key_def_t *k, const cfg_node_t *n);
static int set_dkim_keys(loader_t *ld, const key_def_t *k, const cfg_node_t *sec);
static int finish_dkim(loader_t *ld);
static int finish(loader_t *ld, int file_mode);
static void cfg_free(cfg_t *c);
static int parse_dur_ms(const char *s, uint64_t *ms);
static int parse_dest(const char *s, char **host, int *port);
static char *dir_of(const char *path);
static int finish_paths(loader_t *ld);
static const char *key_mode_problem(const cfg_t *c, const struct stat *st, char *buf, size_t len);
static const char *key_default(const key_def_t *k);

/* cfg_set_attach(), cfg_set_layout(): written once at start-up, before
 * any thread runs. */
static cfg_attach_fn attach_fn;
static cfg_layout_t layout = CFG_LAYOUT_BUILD;

void cfg_set_attach(cfg_attach_fn fn)
{
    attach_fn = fn;
}

/* ------------------------------------------------------------ the default */

static const char default_conf[] =
    "# sluice's embedded default configuration: what `sluiced` runs with no -c.\n"
    "# Everything lives under ./var; SMTP on loopback only, relaying for loopback\n"
    "# clients. Every other key keeps the default listed in sluice.conf.example.\n"
    "\n"
    "spool {\n"
    "    path = \"./var/spool\";\n"
    "}\n"
    "\n"
    "smtp {\n"
    "    listen = \"127.0.0.1:2525\";\n"
    "    relay_networks = [\"127.0.0.0/8\", \"::1/128\"];\n"
    "    tls {\n"
    "        # cert and key: ./var/tls/cert.pem and key.pem, beside the spool\n"
    "        generate = true;   # self-signed pair on first start\n"
    "    }\n"
    "}\n"
    "\n"
    "control {\n"
    "    socket = \"./var/sluiced.sock\";\n"
    "}\n"
    "\n"
    "log {\n"
    "    accounting_dir = \"./var/log\";\n"
    "}\n";

/* The installed layout's /etc/sluice/sluice.conf (the build writes it from
 * `sluiced --print-default-config` of the installed binary, so the shipped
 * file and this text are one). It restates the layout's paths so that an
 * operator reads them in the file, and sets what a service differs in:
 * port 25 and the `sluice` user. */
static const char fhs_conf[] =
    "# " CFG_FHS_CONFIG " - the configuration of sluiced, see sluice.conf(5).\n"
    "#\n"
    "# A key not set here keeps its default: sluice.conf(5) lists every key, and\n"
    "# /usr/share/doc/sluice/examples/sluice.conf.example sets each one to its\n"
    "# default with a comment. Check a change with `sluiced --check-config` and\n"
    "# apply it with `systemctl reload sluiced` (the answer lists what needs a\n"
    "# restart). `sluiced --print-default-config` prints this file as shipped.\n"
    "\n"
    "# The user sluiced runs as: the systemd unit starts it as this user; started\n"
    "# as root by hand, it switches to it once its ports are bound.\n"
    "user = \"" CFG_FHS_USER "\";\n"
    "\n"
    "spool {\n"
    "    path = \"" CFG_FHS_SPOOL "\";\n"
    "}\n"
    "\n"
    "smtp {\n"
    "    # Where your own systems inject mail: loopback only until you add the\n"
    "    # address they reach and the networks that may relay.\n"
    "    listen = \"127.0.0.1:25\";\n"
    "    relay_networks = [\"127.0.0.0/8\", \"::1/128\"];\n"
    "    tls {\n"
    "        dir = \"" CFG_FHS_TLS_DIR "\";\n"
    "        generate = true;   # self-signed cert.pem and key.pem there at first start\n"
    "    }\n"
    "}\n"
    "\n"
    "control {\n"
    "    socket = \"" CFG_FHS_SOCKET "\";   # sluicectl's default\n"
    "}\n"
    "\n"
    "log {\n"
    "    # The operational log goes to stderr, the journal under systemd\n"
    "    # (journalctl -u sluiced); /etc/logrotate.d/sluice also rotates this file:\n"
    "    # file = \"" CFG_FHS_LOG_DIR "/sluiced.log\";\n"
    "    accounting_dir = \"" CFG_FHS_LOG_DIR "\";\n"
    "}\n";

/* The defaults the layout changes; every other key has one default. */
static const struct {
    const char *ld_key, *ld_fhs;
} layout_defaults[] = {
    {"log.accounting_dir", CFG_FHS_LOG_DIR},
    {"spool.path", CFG_FHS_SPOOL},
    {"control.socket", CFG_FHS_SOCKET},
    {"smtp.tls.dir", CFG_FHS_TLS_DIR},
};

void cfg_set_layout(cfg_layout_t l)
{
    layout = l;
}

cfg_layout_t cfg_layout(void)
{
    return layout;
}

static const char *key_default(const key_def_t *k)
{
    if (layout == CFG_LAYOUT_FHS)
        for (size_t i = 0; i < ARRAY_SIZE(layout_defaults); i++)
            if (strcmp(layout_defaults[i].ld_key, k->k_path) == 0)
                return layout_defaults[i].ld_fhs;
    return k->k_default;
}

const char *cfg_default_text(void)
{
    return layout == CFG_LAYOUT_FHS ? fhs_conf : default_conf;
}

int cfg_default(cfg_t **out, char *err, size_t errlen)
{
    const char *text = cfg_default_text();
    return load_text("(default)", text, strlen(text), -1, out, err, errlen);
}

/* ------------------------------------------------------------ small helpers */

static void ld_error(loader_t *ld, int line, const char *fmt, ...)
{
    if (ld->l_failed)
        return;
    ld->l_failed = true;
    va_list ap;
    va_start(ap, fmt);
    cfg_verror(ld->l_err, ld->l_errlen, ld->l_name, line, fmt, ap);
    va_end(ap);
}

static void set_str(char **slot, const char *v)
{
    free(*slot);
    *slot = xstrdup(v);
}

static void *field(cfg_t *c, const key_def_t *k)
{
    return (char *)c + k->k_off;
}

static const key_def_t *find_key(const char *path)
{
    for (int i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].k_path, path) == 0)
            return &keys[i];
    return NULL;
}

/* True when some key lives under path ("smtp", "smtp.tls"). */
static bool is_section_path(const char *path)
{
    size_t n = strlen(path);
    for (int i = 0; i < NKEYS; i++)
        if (strncmp(keys[i].k_path, path, n) == 0 && keys[i].k_path[n] == '.')
            return true;
    return false;
}

static bool is_map(const key_def_t *k)
{
    return k->k_kind == K_ROUTES || k->k_kind == K_TLSMAP || k->k_kind == K_USERS ||
           k->k_kind == K_DKIMKEYS;
}

/* "50M" for 52428800, "1000" for 1000: the largest unit that divides. */
static const char *fmt_size(uint64_t v, char *dst, size_t len)
{
    static const char units[] = "TGMK";
    for (int i = 0; i < 4; i++) {
        uint64_t u = 1ULL << (10 * (4 - i));
        if (v != 0 && v % u == 0) {
            snprintf(dst, len, "%" PRIu64 "%c", v / u, units[i]);
            return dst;
        }
    }
    snprintf(dst, len, "%" PRIu64, v);
    return dst;
}

static const char *fmt_dur_ms(uint64_t ms, char *dst, size_t len)
{
    static const struct {
        uint64_t u;
        const char *name;
    } units[] = {{DAY * 1000, "d"}, {HOUR * 1000, "h"}, {60000, "m"}, {1000, "s"}};
    for (size_t i = 0; i < ARRAY_SIZE(units); i++) {
        if (ms != 0 && ms % units[i].u == 0) {
            snprintf(dst, len, "%" PRIu64 "%s", ms / units[i].u, units[i].name);
            return dst;
        }
    }
    snprintf(dst, len, "%" PRIu64 "%s", ms, ms == 0 ? "s" : "ms");
    return dst;
}

/* What a key expects, for "expected ..., got ..." messages. */
static const char *kind_desc(const key_def_t *k, char *dst, size_t len)
{
    char a[32], b[32];
    switch (k->k_kind) {
    case K_INT:
        snprintf(dst, len, "an integer between %" PRIu64 " and %" PRIu64, k->k_min, k->k_max);
        break;
    case K_SIZE:
        snprintf(dst, len, "a size between %s and %s (e.g. 512K, 50M, 2G)",
                 fmt_size(k->k_min, a, sizeof(a)), fmt_size(k->k_max, b, sizeof(b)));
        break;
    case K_DUR:
        snprintf(dst, len, "a duration between %s and %s (e.g. 90s, 5m, 1h, 4d12h)",
                 fmt_dur_ms(k->k_min * 1000, a, sizeof(a)),
                 fmt_dur_ms(k->k_max * 1000, b, sizeof(b)));
        break;
    case K_DUR_MS:
        snprintf(dst, len, "a duration between %s and %s (e.g. 500ms, 1s)",
                 fmt_dur_ms(k->k_min, a, sizeof(a)), fmt_dur_ms(k->k_max, b, sizeof(b)));
        break;
    case K_BOOL:
        snprintf(dst, len, "true or false");
        break;
    case K_MODE:
        snprintf(dst, len, "an octal file mode such as 0600");
        break;
    case K_LEVEL:
        snprintf(dst, len, "one of debug, info, warn, error");
        break;
    case K_SYNC:
        snprintf(dst, len, "one of fsync, none");
        break;
    case K_BARENL:
        snprintf(dst, len, "one of reject, normalize");
        break;
    case K_TLSPOL:
        snprintf(dst, len, "one of opportunistic, disabled, required, verify");
        break;
    case K_LISTEN:
        snprintf(dst, len, "an address \"ip:port\" or a list of them");
        break;
    case K_CIDRS:
        snprintf(dst, len, "a list of networks such as [\"10.0.0.0/8\", \"::1/128\"]");
        break;
    case K_RETRY:
        snprintf(dst, len, "a list of durations such as \"5m,10m,1h\"");
        break;
    case K_RESOLVERS:
        snprintf(dst, len, "a list of addresses \"ip[:port]\"");
        break;
    case K_HOSTPORT:
        snprintf(dst, len, "\"host[:port]\"");
        break;
    case K_IPPORT:
        snprintf(dst, len, "\"ip:port\" (an IP address, not a host name; \"\" = off)");
        break;
    case K_HDRLIST:
        snprintf(dst, len, "a list of header field names such as [\"from\", \"to\"]");
        break;
    case K_ROUTES:
    case K_TLSMAP:
    case K_USERS:
    case K_DKIMKEYS:
        snprintf(dst, len, "a section { ... }");
        break;
    default:
        snprintf(dst, len, "a string");
        break;
    }
    return dst;
}

static int expect_error(loader_t *ld, const key_def_t *k, const cfg_node_t *n)
{
    char d[160];
    kind_desc(k, d, sizeof(d));
    if (n->n_type == CFG_NODE_LIST)
        ld_error(ld, n->n_line, "%s: expected %s, got a list", k->k_path, d);
    else if (n->n_type == CFG_NODE_SECTION)
        ld_error(ld, n->n_line, "%s: expected %s, got a section", k->k_path, d);
    else
        ld_error(ld, n->n_line, "%s: expected %s, got \"%.80s\"", k->k_path, d, n->n_str);
    return SL_ECONFIG;
}

/* Decimal, no sign, no spaces: "1000". */
static int parse_uint(const char *s, uint64_t *out)
{
    if (!isdigit((unsigned char)s[0]))
        return SL_EPARSE;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return SL_EPARSE;
    *out = v;
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *yes[] = {"true", "yes", "on"}, *no[] = {"false", "no", "off"};
    for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return SL_EPARSE;
}

static int parse_tls_policy(const char *s, int *out)
{
    static const char *names[] = {"opportunistic", "disabled", "required", "verify"};
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        if (strcasecmp(s, names[i]) == 0) {
            *out = (int)i;
            return 0;
        }
    }
    return SL_EPARSE;
}

/* Letters, digits, '-' and '.', as host names and domains are written. */
static bool valid_hostname(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 253 || s[0] == '.' || s[0] == '-' || strstr(s, "..") != NULL)
        return false;
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.' && *p != '_')
            return false;
    return true;
}

static void lower(char *s)
{
    for (; *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

/* The items of a list-like value: a list node, or a string split on ','. */
static int collect_items(loader_t *ld, const key_def_t *k, const cfg_node_t *n, item_t *items,
                         int max, int *count)
{
    int cnt = 0;
    if (n->n_type == CFG_NODE_SECTION)
        return expect_error(ld, k, n);
    const cfg_node_t *it = n->n_type == CFG_NODE_LIST ? n->n_child : n;
    for (; it != NULL; it = it->n_next) {
        const char *s = it->n_str;
        bool whole = n->n_type == CFG_NODE_LIST;
        if (!whole && s[strspn(s, " \t")] == '\0')
            break; /* "" : no items */
        for (;;) {
            size_t len = whole ? strlen(s) : strcspn(s, ",");
            const char *b = s, *e = s + len;
            while (b < e && isspace((unsigned char)*b))
                b++;
            while (e > b && isspace((unsigned char)e[-1]))
                e--;
            if (b == e) {
                ld_error(ld, it->n_line, "%s: empty item in the list", k->k_path);
                return SL_ECONFIG;
            }
            if (cnt == max) {
                ld_error(ld, it->n_line, "%s: too many values (at most %d)", k->k_path, max);
                return SL_ECONFIG;
            }
            if ((size_t)(e - b) >= sizeof(items[cnt].i_s)) {
                ld_error(ld, it->n_line, "%s: value too long", k->k_path);
                return SL_ECONFIG;
            }
            memcpy(items[cnt].i_s, b, (size_t)(e - b));
            items[cnt].i_s[e - b] = '\0';
            items[cnt].i_line = it->n_line;
            cnt++;
            if (whole || s[len] == '\0')
                break;
            s += len + 1;
        }
        if (n->n_type == CFG_NODE_STR)
            break;
    }
    *count = cnt;
    return 0;
}

/* ------------------------------------------------------------ setters */

static int set_list(loader_t *ld, const key_def_t *k, const cfg_node_t *n)
{
    cfg_t *c = ld->l_cfg;
    item_t items[MAX_ITEMS];
    int cnt = 0, max = MAX_ITEMS;
    if (k->k_kind == K_LISTEN)
        max = CFG_MAX_LISTEN;
    else if (k->k_kind == K_CIDRS)
        max = CFG_MAX_NETS;
    else if (k->k_kind == K_RETRY)
        max = (int)ARRAY_SIZE(c->c_retry);
    else if (k->k_kind == K_RESOLVERS)
        max = MAX_RESOLVERS;
    if (collect_items(ld, k, n, items, max, &cnt) < 0)
        return SL_ECONFIG;

    switch (k->k_kind) {
    case K_LISTEN:
        if (cnt == 0) {
            ld_error(ld, n->n_line, "%s: needs at least one address", k->k_path);
            return SL_ECONFIG;
        }
        for (int i = 0; i < cnt; i++) {
            if (net_parse_hostport(items[i].i_s, 25, &c->c_smtp_listen[i]) < 0) {
                ld_error(ld, items[i].i_line,
                         "%s: bad address \"%s\" (want ip:port, e.g. \"127.0.0.1:2525\" or "
                         "\"[::1]:2525\")",
                         k->k_path, items[i].i_s);
                return SL_ECONFIG;
            }
        }
        c->c_smtp_nlisten = cnt;
        return 0;
    case K_CIDRS:
        for (int i = 0; i < cnt; i++) {
            if (net_cidr_parse(items[i].i_s, &c->c_smtp_relay[i]) < 0) {
                ld_error(ld, items[i].i_line, "%s: bad CIDR \"%s\" (e.g. \"10.0.0.0/8\")",
                         k->k_path, items[i].i_s);
                return SL_ECONFIG;
            }
        }
        c->c_smtp_nrelay = cnt;
        return 0;
    case K_RETRY:
        for (int i = 0; i < cnt; i++) {
            uint64_t s;
            if (cfg_parse_duration(items[i].i_s, &s) < 0 || s == 0) {
                ld_error(ld, items[i].i_line,
                         "%s: expected durations such as \"5m,10m,1h\", got \"%s\"", k->k_path,
                         items[i].i_s);
                return SL_ECONFIG;
            }
            c->c_retry[i] = s;
        }
        c->c_retry_n = cnt;
        return 0;
    case K_RESOLVERS: {
        buf_t b;
        buf_init(&b, 64);
        for (int i = 0; i < cnt; i++) {
            sockaddr_any_t sa;
            if (net_parse_hostport(items[i].i_s, 53, &sa) < 0) {
                ld_error(ld, items[i].i_line, "%s: bad address \"%s\" (want ip[:port])", k->k_path,
                         items[i].i_s);
                buf_free(&b);
                return SL_ECONFIG;
            }
            buf_printf(&b, "%s%s", i ? "," : "", items[i].i_s);
        }
        buf_append(&b, "", 1);
        char **slot = field(c, k);
        free(*slot);
        *slot = buf_steal(&b, NULL);
        return 0;
    }
    default:
        abort(); /* not a list kind: a bug in the schema */
    }
}

static int set_value(loader_t *ld, const key_def_t *k, const cfg_node_t *n)
{
    cfg_t *c = ld->l_cfg;
    void *f = field(c, k);
    uint64_t v;

    if (is_map(k)) {
        if (n->n_type != CFG_NODE_SECTION)
            return expect_error(ld, k, n);
        if (k->k_kind == K_DKIMKEYS)
            return set_dkim_keys(ld, k, n);
        return set_map(ld, k, n);
    }
    if (k->k_kind == K_HDRLIST)
        return set_hdrlist(ld, k, n);
    if (k->k_kind == K_LISTEN || k->k_kind == K_CIDRS || k->k_kind == K_RETRY ||
        k->k_kind == K_RESOLVERS)
        return set_list(ld, k, n);
    if (n->n_type != CFG_NODE_STR)
        return expect_error(ld, k, n);

    const char *s = n->n_str;
    switch (k->k_kind) {
    case K_STR:
        set_str(f, s);
        return 0;
    case K_PATH:
        if (s[0] == '\0') {
            ld_error(ld, n->n_line, "%s: expected a path, got \"\"", k->k_path);
            return SL_ECONFIG;
        }
        set_str(f, s);
        return 0;
    case K_SOCKET:
        if (s[0] == '\0' || strlen(s) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
            ld_error(ld, n->n_line, "%s: expected a socket path of 1 to %zu bytes, got \"%.80s\"",
                     k->k_path, sizeof(((struct sockaddr_un *)0)->sun_path) - 1, s);
            return SL_ECONFIG;
        }
        set_str(f, s);
        return 0;
    case K_HOSTNAME:
        if (s[0] != '\0' && !valid_hostname(s)) {
            ld_error(ld, n->n_line, "%s: bad host name \"%.80s\"", k->k_path, s);
            return SL_ECONFIG;
        }
        set_str(f, s);
        return 0;
    case K_INT:
        if (parse_uint(s, &v) < 0 || v < k->k_min || v > k->k_max)
            return expect_error(ld, k, n);
        *(int *)f = (int)v;
        return 0;
    case K_SIZE:
        if (cfg_parse_size(s, &v) < 0 || v < k->k_min || v > k->k_max)
            return expect_error(ld, k, n);
        *(uint64_t *)f = v;
        return 0;
    case K_DUR:
        if (cfg_parse_duration(s, &v) < 0 || v < k->k_min || v > k->k_max)
            return expect_error(ld, k, n);
        *(uint64_t *)f = v;
        return 0;
    case K_DUR_MS:
        if (parse_dur_ms(s, &v) < 0 || v < k->k_min || v > k->k_max)
            return expect_error(ld, k, n);
        *(uint64_t *)f = v;
        return 0;
    case K_BOOL:
        if (parse_bool(s, f) < 0)
            return expect_error(ld, k, n);
        return 0;
    case K_MODE: {
        char *end;
        errno = 0;
        long m = strtol(s, &end, 8);
        if (!isdigit((unsigned char)s[0]) || *end != '\0' || errno != 0 || m < (long)k->k_min ||
            m > (long)k->k_max)
            return expect_error(ld, k, n);
        *(int *)f = (int)m;
        return 0;
    }
    case K_LEVEL:
        if (strcasecmp(s, "warning") == 0)
            s = "warn";
        if (log_level_parse(s, f) < 0)
            return expect_error(ld, k, n);
        return 0;
    case K_SYNC:
        if (strcasecmp(s, "fsync") == 0)
            *(cfg_sync_t *)f = CFG_SYNC_FSYNC;
        else if (strcasecmp(s, "none") == 0)
            *(cfg_sync_t *)f = CFG_SYNC_NONE;
        else
            return expect_error(ld, k, n);
        return 0;
    case K_BARENL:
        if (strcasecmp(s, "reject") == 0)
            *(cfg_barenl_t *)f = CFG_BARENL_REJECT;
        else if (strcasecmp(s, "normalize") == 0)
            *(cfg_barenl_t *)f = CFG_BARENL_NORMALIZE;
        else
            return expect_error(ld, k, n);
        return 0;
    case K_TLSPOL:
        if (parse_tls_policy(s, f) < 0)
            return expect_error(ld, k, n);
        return 0;
    case K_IPPORT: {
        sockaddr_any_t sa;
        /* sin_port and sin6_port sit at the same offset */
        if (s[0] != '\0' &&
            (net_parse_hostport(s, 0, &sa) != 0 || ((struct sockaddr_in *)&sa)->sin_port == 0))
            return expect_error(ld, k, n);
        set_str(f, s);
        return 0;
    }
    case K_HOSTPORT: {
        char *host = NULL;
        int port = 0;
        if (s[0] != '\0' && parse_dest(s, &host, &port) < 0) {
            ld_error(ld, n->n_line, "%s: bad destination \"%.80s\" (want host[:port])", k->k_path,
                     s);
            return SL_ECONFIG;
        }
        set_str(f, s);
        free(c->c_dlv_smart.r_host);
        c->c_dlv_smart.r_host = host;
        c->c_dlv_smart.r_port = port;
        return 0;
    }
    default:
        abort(); /* handled above: a bug in the schema */
    }
}

/* A crypt(3) hash of a scheme glibc's crypt() knows and that is not weak. */
static bool looks_like_crypt(const char *h)
{
    static const char *schemes[] = {"$6$", "$5$", "$y$", "$2b$", "$2y$"};
    bool known = false;
    for (size_t i = 0; i < ARRAY_SIZE(schemes); i++)
        if (strncmp(h, schemes[i], strlen(schemes[i])) == 0)
            known = true;
    int dollars = 0;
    for (const char *p = h; *p; p++) {
        if (*p == '$')
            dollars++;
        else if (!isalnum((unsigned char)*p) && *p != '.' && *p != '/' && *p != '=')
            return false;
    }
    return known && dollars >= 3 && strlen(h) >= 20;
}

/* routes { }, tls_policy { }, users { }: a section of name = "value". */
static int set_map(loader_t *ld, const key_def_t *k, const cfg_node_t *sec)
{
    cfg_t *c = ld->l_cfg;
    for (const cfg_node_t *e = sec->n_child; e != NULL; e = e->n_next) {
        for (const cfg_node_t *p = sec->n_child; p != e; p = p->n_next) {
            if (strcasecmp(p->n_key, e->n_key) == 0) {
                ld_error(ld, e->n_key_line, "duplicate key \"%s.%s\" (also on line %d)", k->k_path,
                         e->n_key, p->n_key_line);
                return SL_ECONFIG;
            }
        }
        if (e->n_type != CFG_NODE_STR) {
            ld_error(ld, e->n_line, "%s.%s: expected a string, got a %s", k->k_path, e->n_key,
                     e->n_type == CFG_NODE_LIST ? "list" : "section");
            return SL_ECONFIG;
        }
        const char *key = e->n_key, *val = e->n_str;
        if (k->k_kind == K_USERS) {
            if (c->c_nusers == CFG_MAX_USERS) {
                ld_error(ld, e->n_key_line, "%s: too many users (at most %d)", k->k_path,
                         CFG_MAX_USERS);
                return SL_ECONFIG;
            }
            if (!looks_like_crypt(val)) {
                ld_error(ld, e->n_line,
                         "%s.%s: not a crypt(3) hash; make one with `openssl passwd -6`", k->k_path,
                         key);
                return SL_ECONFIG;
            }
            cfg_user_t *u = &c->c_users[c->c_nusers++];
            u->cu_name = xstrdup(key);
            u->cu_hash = xstrdup(val);
            continue;
        }
        /* domains: "example.org", or ".example.org" (subdomains) in tls_policy */
        const char *dom = key;
        if (k->k_kind == K_TLSMAP && dom[0] == '.')
            dom++;
        if (!valid_hostname(dom)) {
            ld_error(ld, e->n_key_line, "%s: bad domain \"%.80s\"", k->k_path, key);
            return SL_ECONFIG;
        }
        if (k->k_kind == K_ROUTES) {
            if (c->c_dlv_nroutes == (int)ARRAY_SIZE(c->c_dlv_routes)) {
                ld_error(ld, e->n_key_line, "%s: too many routes (at most %zu)", k->k_path,
                         ARRAY_SIZE(c->c_dlv_routes));
                return SL_ECONFIG;
            }
            char *host;
            int port;
            if (parse_dest(val, &host, &port) < 0) {
                ld_error(ld, e->n_line, "%s.%s: bad destination \"%.80s\" (want host[:port])",
                         k->k_path, key, val);
                return SL_ECONFIG;
            }
            struct cfg_route *r = &c->c_dlv_routes[c->c_dlv_nroutes++];
            r->r_domain = xstrdup(key);
            lower(r->r_domain);
            r->r_host = host;
            r->r_port = port;
        } else {
            if (c->c_dlv_ntls == (int)ARRAY_SIZE(c->c_dlv_tls)) {
                ld_error(ld, e->n_key_line, "%s: too many entries (at most %zu)", k->k_path,
                         ARRAY_SIZE(c->c_dlv_tls));
                return SL_ECONFIG;
            }
            int pol;
            if (parse_tls_policy(val, &pol) < 0) {
                ld_error(ld, e->n_line,
                         "%s.%s: expected one of opportunistic, disabled, required, verify, got "
                         "\"%.80s\"",
                         k->k_path, key, val);
                return SL_ECONFIG;
            }
            struct cfg_tls_policy *t = &c->c_dlv_tls[c->c_dlv_ntls++];
            t->tp_domain = xstrdup(key);
            lower(t->tp_domain);
            t->tp_policy = pol;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ dkim { } */

static void strv_free(char **v)
{
    for (char **p = v; p != NULL && *p != NULL; p++)
        free(*p);
    free(v);
}

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
static int set_hdrlist(loader_t *ld, const key_def_t *k, const cfg_node_t *n)
{
    item_t items[MAX_ITEMS];
    int cnt = 0;
    if (collect_items(ld, k, n, items, CFG_MAX_DKIM_HEADERS, &cnt) < 0)
        return SL_ECONFIG;
    char **v = xcalloc((size_t)cnt + 1, sizeof(*v));
    for (int i = 0; i < cnt; i++) {
        if (!valid_field_name(items[i].i_s)) {
            ld_error(ld, items[i].i_line, "%s: bad header field name \"%s\"", k->k_path,
                     items[i].i_s);
            strv_free(v);
            return SL_ECONFIG;
        }
        v[i] = xstrdup(items[i].i_s);
        lower(v[i]);
    }
    char ***slot = field(ld->l_cfg, k);
    strv_free(*slot);
    *slot = v;
    return 0;
}

/* dkim.keys { "example.com" { s1 = "/etc/sluice/dkim/example.com.pem"; } }:
 * domain -> selector -> PEM file. The files are checked in finish_dkim();
 * dkim_cfg_attach() (dkim/) parses them. */
static int set_dkim_keys(loader_t *ld, const key_def_t *k, const cfg_node_t *sec)
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
        if (!valid_hostname(d->n_key)) {
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
            lower(dk->dk_domain);
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
static const char *key_mode_problem(const cfg_t *c, const struct stat *st, char *buf, size_t len)
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
static int finish_dkim(loader_t *ld)
{
    cfg_t *c = ld->l_cfg;
#define LINE(f) (ld->l_line[find_key(f) - keys])
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
        lower(c->c_dkim_esp_domain);
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
        const char *bad = key_mode_problem(c, &st, why, sizeof(why));
        if (bad != NULL) {
            ld_error(ld, dk->dk_line, "dkim.keys.%s.%s: key %s: %s", dk->dk_domain, dk->dk_selector,
                     dk->dk_file, bad);
            return SL_ECONFIG;
        }
    }
#undef LINE
    return 0;
}

/* "host", "host:port", "1.2.3.4:25", "[::1]:25", "::1". */
static int parse_dest(const char *s, char **host, int *port)
{
    char h[256];
    const char *ps = NULL;
    if (s[0] == '[') {
        const char *e = strchr(s, ']');
        if (e == NULL || (size_t)(e - s - 1) >= sizeof(h))
            return SL_EPARSE;
        memcpy(h, s + 1, (size_t)(e - s - 1));
        h[e - s - 1] = '\0';
        struct in6_addr a6;
        if (inet_pton(AF_INET6, h, &a6) != 1)
            return SL_EPARSE;
        if (e[1] == ':')
            ps = e + 2;
        else if (e[1] != '\0')
            return SL_EPARSE;
    } else {
        const char *colon = strchr(s, ':');
        if (colon != NULL && strchr(colon + 1, ':') != NULL) {
            struct in6_addr a6; /* a bare IPv6 address */
            if (strlen(s) >= sizeof(h) || inet_pton(AF_INET6, s, &a6) != 1)
                return SL_EPARSE;
            strcpy(h, s);
        } else {
            size_t hl = colon ? (size_t)(colon - s) : strlen(s);
            if (hl >= sizeof(h))
                return SL_EPARSE;
            memcpy(h, s, hl);
            h[hl] = '\0';
            if (!valid_hostname(h))
                return SL_EPARSE;
            if (colon)
                ps = colon + 1;
        }
    }
    uint64_t p = 0;
    if (ps != NULL && (parse_uint(ps, &p) < 0 || p < 1 || p > 65535))
        return SL_EPARSE;
    *host = xstrdup(h);
    *port = (int)p;
    return 0;
}

/* ------------------------------------------------------------ the walk */

static int lev_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63)
        return 99;
    int row[64];
    for (size_t j = 0; j <= lb; j++)
        row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int prev = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int cur = row[j];
            int cost = a[i - 1] == b[j - 1] ? 0 : 1;
            row[j] = MIN(MIN(row[j] + 1, row[j - 1] + 1), prev + cost);
            prev = cur;
        }
    }
    return row[lb];
}

/* A name close to name among the keys and sections under prefix, else the
 * full path of a key or section called name elsewhere; "" when none. */
static const char *suggest(const char *prefix, const char *name, char *dst, size_t len)
{
    size_t pl = strlen(prefix);
    size_t nl = strlen(name);
    int thr = nl <= 4 ? 1 : nl <= 10 ? 2 : 3, best = thr + 1;
    dst[0] = '\0';
    for (int i = 0; i < NKEYS; i++) {
        const char *p = keys[i].k_path;
        if (pl > 0 && (strncmp(p, prefix, pl) != 0 || p[pl] != '.'))
            continue;
        const char *comp = pl > 0 ? p + pl + 1 : p;
        char c[64];
        size_t cl = strcspn(comp, ".");
        if (cl >= sizeof(c))
            continue;
        memcpy(c, comp, cl);
        c[cl] = '\0';
        int d = lev_distance(name, c);
        if (d < best) {
            best = d;
            snprintf(dst, len, "%s", c);
        }
    }
    if (dst[0] != '\0')
        return dst;
    for (int i = 0; i < NKEYS; i++) { /* right name, wrong section */
        const char *p = keys[i].k_path;
        for (const char *s = p; s != NULL; s = strchr(s, '.') ? strchr(s, '.') + 1 : NULL) {
            if (strncmp(s, name, nl) == 0 && (s[nl] == '\0' || s[nl] == '.')) {
                snprintf(dst, len, "%.*s", (int)(s - p + (ptrdiff_t)nl), p);
                return dst;
            }
        }
    }
    return dst;
}

static int walk_section(loader_t *ld, const cfg_node_t *sec, const char *prefix)
{
    char path[256], hint[128];
    for (const cfg_node_t *e = sec->n_child; e != NULL; e = e->n_next) {
        for (const cfg_node_t *p = sec->n_child; p != e; p = p->n_next) {
            if (strcmp(p->n_key, e->n_key) == 0) {
                ld_error(ld, e->n_key_line, "duplicate key \"%s%s%s\" (also on line %d)", prefix,
                         prefix[0] ? "." : "", e->n_key, p->n_key_line);
                return SL_ECONFIG;
            }
        }
        snprintf(path, sizeof(path), "%s%s%s", prefix, prefix[0] ? "." : "", e->n_key);
        const key_def_t *k = find_key(path);
        if (k != NULL) {
            if (set_value(ld, k, e) < 0)
                return SL_ECONFIG;
            ld->l_line[k - keys] = e->n_line;
            continue;
        }
        if (is_section_path(path)) {
            if (e->n_type != CFG_NODE_SECTION) {
                ld_error(ld, e->n_key_line, "\"%s\" is a section: write %s { ... }", path,
                         e->n_key);
                return SL_ECONFIG;
            }
            if (walk_section(ld, e, path) < 0)
                return SL_ECONFIG;
            continue;
        }
        suggest(prefix, e->n_key, hint, sizeof(hint));
        ld_error(ld, e->n_key_line, "unknown %s \"%s\"%s%s%s",
                 e->n_type == CFG_NODE_SECTION ? "section" : "key", path,
                 hint[0] ? " (did you mean \"" : "", hint, hint[0] ? "\"?)" : "");
        return SL_ECONFIG;
    }
    return 0;
}

/* The directory part of path ("." when it has none); caller frees. */
static char *dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (slash == NULL)
        return xstrdup(".");
    if (slash == path)
        return xstrdup("/");
    return xstrndup(path, (size_t)(slash - path));
}

/*
 * Paths worked out from others, and paths start-up would trip on. The TLS
 * pair lives in smtp.tls.dir, by default beside the spool
 * (<parent of spool.path>/tls), so that a configuration whose paths are
 * all absolute never writes into the directory sluiced was started in.
 * The log file's directory must exist: sluiced creates the directories of
 * its spool, accounting log and control socket, but a log file goes where
 * the operator's log tree is (log_init would fail on a missing one).
 */
static int finish_paths(loader_t *ld)
{
    cfg_t *c = ld->l_cfg;
#define LINE(f) (ld->l_line[find_key(f) - keys])
    if (c->c_tls_dir[0] == '\0') {
        char *parent = dir_of(c->c_spool_path);
        free(c->c_tls_dir);
        c->c_tls_dir = strcmp(parent, "/") == 0 ? xstrdup("/tls") : xasprintf("%s/tls", parent);
        free(parent);
    }
    if (c->c_tls_cert[0] == '\0') {
        free(c->c_tls_cert);
        c->c_tls_cert = xasprintf("%s/cert.pem", c->c_tls_dir);
    }
    if (c->c_tls_key[0] == '\0') {
        free(c->c_tls_key);
        c->c_tls_key = xasprintf("%s/key.pem", c->c_tls_dir);
    }
    if (c->c_log_file[0] != '\0') {
        struct stat st;
        char *dir = dir_of(c->c_log_file);
        bool dir_ok = stat(dir, &st) == 0 && S_ISDIR(st.st_mode);
        if (!dir_ok)
            ld_error(ld, LINE("log.file"), "log.file: directory \"%s\" does not exist (create it)",
                     dir);
        free(dir);
        if (!dir_ok)
            return SL_ECONFIG;
        if (stat(c->c_log_file, &st) == 0 && !S_ISREG(st.st_mode)) {
            ld_error(ld, LINE("log.file"), "log.file: \"%s\" is not a regular file", c->c_log_file);
            return SL_ECONFIG;
        }
    }
#undef LINE
    return 0;
}

/* Checks that involve several keys or the file system. */
static int finish(loader_t *ld, int file_mode)
{
    cfg_t *c = ld->l_cfg;
#define LINE(f) (ld->l_line[find_key(f) - keys])

    if (c->c_hostname[0] == '\0') {
        char h[256];
        if (gethostname(h, sizeof(h)) != 0 || h[0] == '\0')
            snprintf(h, sizeof(h), "localhost");
        h[sizeof(h) - 1] = '\0';
        set_str(&c->c_hostname, h);
    }
    if (c->c_dlv_helo[0] == '\0')
        set_str(&c->c_dlv_helo, c->c_hostname);
    if (finish_paths(ld) < 0)
        return SL_ECONFIG;

    /* generate = true makes a pair only when both files are missing */
    bool has_cert = access(c->c_tls_cert, F_OK) == 0;
    bool has_key = access(c->c_tls_key, F_OK) == 0;
    if (!c->c_tls_generate || has_cert != has_key) {
        const char *name = has_cert ? "smtp.tls.key" : "smtp.tls.cert";
        const char *file = has_cert ? c->c_tls_key : c->c_tls_cert;
        int line = LINE(name) ? LINE(name) : LINE("smtp.tls.generate");
        if (!has_cert || !has_key) {
            ld_error(ld, line, "%s: file not found \"%s\"%s", name, file,
                     c->c_tls_generate ? " (generate makes a pair only when both are missing)"
                                       : " (or set smtp.tls.generate = true)");
            return SL_ECONFIG;
        }
    }
    struct stat kst; /* a private key others can read is no longer private */
    char why[256];
    const char *bad;
    if (has_key && stat(c->c_tls_key, &kst) == 0 &&
        (bad = key_mode_problem(c, &kst, why, sizeof(why))) != NULL) {
        ld_error(ld, LINE("smtp.tls.key"), "smtp.tls.key: \"%s\" %s", c->c_tls_key, bad);
        return SL_ECONFIG;
    }
    if (c->c_dlv_ca_file[0] != '\0' && access(c->c_dlv_ca_file, R_OK) != 0) {
        ld_error(ld, LINE("delivery.ca_file"), "delivery.ca_file: file not found \"%s\"",
                 c->c_dlv_ca_file);
        return SL_ECONFIG;
    }
    if (c->c_dlv_bounce_rules[0] != '\0' && access(c->c_dlv_bounce_rules, R_OK) != 0) {
        ld_error(ld, LINE("delivery.bounce_rules"), "delivery.bounce_rules: file not found \"%s\"",
                 c->c_dlv_bounce_rules);
        return SL_ECONFIG;
    }
    if (c->c_dlv_shaping[0] != '\0' && access(c->c_dlv_shaping, R_OK) != 0) {
        ld_error(ld, LINE("delivery.shaping"), "delivery.shaping: file not found \"%s\"",
                 c->c_dlv_shaping);
        return SL_ECONFIG;
    }
    if (c->c_retry_initial > c->c_retry_max) {
        ld_error(ld, MAX(LINE("queue.retry_initial"), LINE("queue.retry_max")),
                 "queue.retry_initial (%" PRIu64 "s) is above queue.retry_max (%" PRIu64 "s)",
                 c->c_retry_initial, c->c_retry_max);
        return SL_ECONFIG;
    }
    if (c->c_spool_map_size > c->c_spool_max_size) {
        ld_error(ld, MAX(LINE("spool.map_size"), LINE("spool.max_size")),
                 "spool.map_size is above spool.max_size");
        return SL_ECONFIG;
    }
    if (c->c_user[0] != '\0' && getpwnam(c->c_user) == NULL) {
        ld_error(ld, LINE("user"), "user: no such user \"%s\"", c->c_user);
        return SL_ECONFIG;
    }
    if (c->c_nusers > 0 && file_mode >= 0 && (file_mode & 0004)) {
        ld_error(ld, 0, "holds password hashes and is world-readable (chmod o-r)");
        return SL_ECONFIG;
    }
    if (finish_dkim(ld) < 0)
        return SL_ECONFIG;
#undef LINE
    return 0;
}

/* file_mode: the file's st_mode, or -1 when the text is not from a file. */
static int load_text(const char *name, const char *text, size_t len, int file_mode, cfg_t **out,
                     char *err, size_t errlen)
{
    cfg_node_t *root = NULL;
    loader_t ld = {.l_name = name, .l_err = err, .l_errlen = errlen};
    cfg_t *c = xcalloc(1, sizeof(*c));
    atomic_init(&c->c_refs, 1);
    c->c_file = xstrdup(name);
    c->c_dlv_smart.r_domain = xstrdup("*");
    ld.l_cfg = c;

    for (int i = 0; i < NKEYS; i++) {
        if (keys[i].k_default == NULL)
            continue;
        cfg_node_t d = {.n_type = CFG_NODE_STR, .n_str = (char *)key_default(&keys[i])};
        if (set_value(&ld, &keys[i], &d) < 0)
            goto fail; /* a bad default: the unit test catches it */
    }
    if (cfg_tree_parse(name, text, len, &root, err, errlen) < 0)
        goto fail;
    if (walk_section(&ld, root, "") < 0)
        goto fail;
    if (finish(&ld, file_mode) < 0)
        goto fail;
    if (attach_fn != NULL && attach_fn(c, err, errlen) != 0)
        goto fail; /* e.g. a DKIM key that does not parse: the load fails */
    cfg_tree_free(root);
    *out = c;
    return 0;
fail:
    cfg_tree_free(root);
    cfg_free(c);
    return SL_ECONFIG;
}

int cfg_load_string(const char *name, const char *text, cfg_t **out, char *err, size_t errlen)
{
    return load_text(name, text, strlen(text), -1, out, err, errlen);
}

int cfg_load(const char *path, cfg_t **out, char *err, size_t errlen)
{
    buf_t b;
    struct stat st;
    int rc = SL_ECONFIG;
    buf_init(&b, 4096);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        goto out;
    }
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: cannot read: %s", path,
                 S_ISDIR(st.st_mode) ? strerror(EISDIR) : "not a regular file");
        goto out;
    }
    for (;;) {
        buf_reserve(&b, 4096);
        ssize_t n = read(fd, b.b_data + b.b_len, b.b_cap - b.b_len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        b.b_len += (size_t)n;
        if (b.b_len > 16 * MB) {
            snprintf(err, errlen, "%s: cannot read: larger than 16M", path);
            goto out;
        }
    }
    rc = load_text(path, b.b_data, b.b_len, (int)(st.st_mode & 07777), out, err, errlen);
out:
    if (fd >= 0)
        close(fd);
    buf_free(&b);
    return rc;
}

/* ------------------------------------------------------------ snapshots */

static void cfg_free(cfg_t *c)
{
    if (c == NULL)
        return;
    char **strs[] = {&c->c_file,          &c->c_hostname,         &c->c_log_file,    &c->c_acct_dir,
                     &c->c_spool_path,    &c->c_ctl_socket,       &c->c_tls_cert,    &c->c_tls_key,
                     &c->c_dlv_resolvers, &c->c_dlv_smarthost,    &c->c_dlv_ca_file, &c->c_dlv_helo,
                     &c->c_user,          &c->c_dlv_bounce_rules, &c->c_dlv_shaping};
    for (size_t i = 0; i < ARRAY_SIZE(strs); i++)
        free(*strs[i]);
    free(c->c_ctl_http);
    free(c->c_tls_dir);
    for (int i = 0; i < c->c_nusers; i++) {
        free(c->c_users[i].cu_name);
        free(c->c_users[i].cu_hash);
    }
    for (int i = 0; i < c->c_dlv_nroutes; i++) {
        free(c->c_dlv_routes[i].r_domain);
        free(c->c_dlv_routes[i].r_host);
    }
    for (int i = 0; i < c->c_dlv_ntls; i++)
        free(c->c_dlv_tls[i].tp_domain);
    free(c->c_dlv_smart.r_domain);
    free(c->c_dlv_smart.r_host);
    for (int i = CFG_EXT_MAX - 1; i >= 0; i--)
        if (c->c_ext[i] != NULL && c->c_ext_free[i] != NULL)
            c->c_ext_free[i](c->c_ext[i]);
    free(c->c_dkim_esp_domain);
    free(c->c_dkim_canon);
    free(c->c_dkim_alg);
    strv_free(c->c_dkim_headers);
    strv_free(c->c_dkim_oversign);
    for (int i = 0; i < c->c_dkim_nkeys; i++) {
        free(c->c_dkim_keys[i].dk_domain);
        free(c->c_dkim_keys[i].dk_selector);
        free(c->c_dkim_keys[i].dk_file);
    }
    free(c->c_dkim_keys);
    free(c);
}

_Static_assert(CFG_EXT_MAX == ARRAY_SIZE(((cfg_t *)0)->c_ext), "cfg_t.c_ext size");

void cfg_ext_set(cfg_t *c, cfg_ext_t slot, void *obj, void (*free_fn)(void *))
{
    /* Attaching to a shared snapshot would break its immutability. */
    if ((int)slot < 0 || slot >= CFG_EXT_MAX || c->c_ext[slot] != NULL ||
        atomic_load(&c->c_refs) != 1)
        abort();
    c->c_ext[slot] = obj;
    c->c_ext_free[slot] = free_fn;
}

void *cfg_ext_get(const cfg_t *c, cfg_ext_t slot)
{
    return c != NULL && slot < CFG_EXT_MAX ? c->c_ext[slot] : NULL;
}

cfg_t *cfg_ref(cfg_t *c)
{
    if (c != NULL)
        atomic_fetch_add_explicit(&c->c_refs, 1, memory_order_relaxed);
    return c;
}

void cfg_unref(cfg_t *c)
{
    if (c == NULL)
        return;
    int old = atomic_fetch_sub_explicit(&c->c_refs, 1, memory_order_acq_rel);
    if (old <= 0)
        abort(); /* unref of a freed snapshot */
    if (old == 1)
        cfg_free(c);
}

static pthread_mutex_t current_lock = PTHREAD_MUTEX_INITIALIZER;
static cfg_t *current;

cfg_t *cfg_current(void)
{
    pthread_mutex_lock(&current_lock);
    cfg_t *c = cfg_ref(current);
    pthread_mutex_unlock(&current_lock);
    return c;
}

void cfg_set_current(cfg_t *c)
{
    pthread_mutex_lock(&current_lock);
    cfg_t *old = current;
    current = c;
    pthread_mutex_unlock(&current_lock);
    cfg_unref(old);
}

/* ------------------------------------------------------------ parse helpers */

/* "90" (seconds), "500ms", "30s", "5m", "1h", "2d", "1w", "4d12h". */
static int parse_dur_ms(const char *s, uint64_t *ms)
{
    uint64_t total = 0, v;
    const char *p = s;
    if (*p == '\0')
        return SL_EPARSE;
    if (parse_uint(s, &v) == 0) {
        if (v > UINT64_MAX / 1000)
            return SL_EPARSE;
        *ms = v * 1000;
        return 0;
    }
    while (*p != '\0') {
        if (!isdigit((unsigned char)*p))
            return SL_EPARSE;
        v = 0;
        while (isdigit((unsigned char)*p)) {
            if (v > (UINT64_MAX - 9) / 10)
                return SL_EPARSE;
            v = v * 10 + (uint64_t)(*p++ - '0');
        }
        uint64_t unit;
        if (strncasecmp(p, "ms", 2) == 0) {
            unit = 1;
            p += 2;
        } else {
            switch (tolower((unsigned char)*p)) {
            case 's':
                unit = 1000;
                break;
            case 'm':
                unit = 60 * 1000;
                break;
            case 'h':
                unit = HOUR * 1000;
                break;
            case 'd':
                unit = DAY * 1000;
                break;
            case 'w':
                unit = 7 * DAY * 1000;
                break;
            default:
                return SL_EPARSE; /* a number without a unit after another part */
            }
            p++;
        }
        if (v > (UINT64_MAX - total) / unit)
            return SL_EPARSE;
        total += v * unit;
    }
    *ms = total;
    return 0;
}

int cfg_parse_duration(const char *s, uint64_t *seconds)
{
    uint64_t ms;
    if (parse_dur_ms(s, &ms) < 0 || ms % 1000 != 0)
        return SL_EPARSE;
    *seconds = ms / 1000;
    return 0;
}

/* "512", "64K", "64KB", "64KiB", "50M", "16G", "1T"; binary units, any case. */
int cfg_parse_size(const char *s, uint64_t *bytes)
{
    static const struct {
        const char *u;
        int shift;
    } units[] = {{"", 0},     {"b", 0},   {"k", 10},   {"kb", 10}, {"kib", 10},
                 {"m", 20},   {"mb", 20}, {"mib", 20}, {"g", 30},  {"gb", 30},
                 {"gib", 30}, {"t", 40},  {"tb", 40},  {"tib", 40}};
    const char *p = s;
    uint64_t v = 0;
    if (!isdigit((unsigned char)*p))
        return SL_EPARSE;
    while (isdigit((unsigned char)*p)) {
        if (v > (UINT64_MAX - 9) / 10)
            return SL_EPARSE;
        v = v * 10 + (uint64_t)(*p++ - '0');
    }
    for (size_t i = 0; i < ARRAY_SIZE(units); i++) {
        if (strcasecmp(p, units[i].u) == 0) {
            if (v > (UINT64_MAX >> units[i].shift))
                return SL_EPARSE;
            *bytes = v << units[i].shift;
            return 0;
        }
    }
    return SL_EPARSE;
}

int cfg_parse_duration_list(const char *s, uint64_t *out, int max)
{
    uint64_t tmp[64];
    int n = 0;
    if (s[strspn(s, " \t")] == '\0')
        return 0;
    for (;;) {
        size_t len = strcspn(s, ",");
        const char *b = s, *e = s + len;
        while (b < e && isspace((unsigned char)*b))
            b++;
        while (e > b && isspace((unsigned char)e[-1]))
            e--;
        char one[64];
        if (b == e || (size_t)(e - b) >= sizeof(one) || n >= max || n >= (int)ARRAY_SIZE(tmp))
            return SL_EPARSE;
        memcpy(one, b, (size_t)(e - b));
        one[e - b] = '\0';
        if (cfg_parse_duration(one, &tmp[n]) < 0)
            return SL_EPARSE;
        n++;
        if (s[len] == '\0')
            break;
        s += len + 1;
    }
    memcpy(out, tmp, (size_t)n * sizeof(*out));
    return n;
}

/* entry (lower case, from the config) equals the first dlen bytes of d */
static bool dom_eq(const char *entry, const char *d, size_t dlen)
{
    return strncasecmp(entry, d, dlen) == 0 && entry[dlen] == '\0';
}

static size_t dom_len(const char *d)
{
    size_t n = strlen(d);
    return n > 0 && d[n - 1] == '.' ? n - 1 : n; /* "example.org." */
}

/* The tls_policy { } entry for domain, or -1 when none matches. */
static int tls_policy_entry(const cfg_t *c, const char *domain)
{
    size_t n = dom_len(domain);
    for (int i = 0; i < c->c_dlv_ntls; i++)
        if (c->c_dlv_tls[i].tp_domain[0] != '.' && dom_eq(c->c_dlv_tls[i].tp_domain, domain, n))
            return c->c_dlv_tls[i].tp_policy;
    /* ".example.org" covers every subdomain; the longest suffix wins */
    for (const char *dot = memchr(domain, '.', n); dot != NULL;
         dot = memchr(dot + 1, '.', n - (size_t)(dot + 1 - domain))) {
        for (int i = 0; i < c->c_dlv_ntls; i++)
            if (c->c_dlv_tls[i].tp_domain[0] == '.' &&
                dom_eq(c->c_dlv_tls[i].tp_domain, dot, n - (size_t)(dot - domain)))
                return c->c_dlv_tls[i].tp_policy;
    }
    return -1;
}

int cfg_tls_policy_for(const cfg_t *c, const char *domain)
{
    int pol = tls_policy_entry(c, domain);
    return pol >= 0 ? pol : c->c_dlv_tls_default;
}

bool cfg_tls_policy_explicit(const cfg_t *c, const char *domain)
{
    return tls_policy_entry(c, domain) >= 0;
}

const struct cfg_route *cfg_route_for(const cfg_t *c, const char *domain)
{
    size_t n = dom_len(domain);
    for (int i = 0; i < c->c_dlv_nroutes; i++)
        if (dom_eq(c->c_dlv_routes[i].r_domain, domain, n))
            return &c->c_dlv_routes[i];
    if (c->c_dlv_smart.r_host != NULL)
        return &c->c_dlv_smart;
    return NULL;
}

const char *cfg_key_name(int i, const char **default_text)
{
    if (i < 0 || i >= NKEYS)
        return NULL;
    if (default_text != NULL)
        *default_text = keys[i].k_default != NULL ? key_default(&keys[i]) : NULL;
    return keys[i].k_path;
}
