/*
 * config/config.c - the schema of sluice's configuration and the load.
 *
 * cfg_load() / cfg_load_string() parse text into a tree (parse.c), set every
 * key of a fresh cfg_t from its default, then walk the tree against the
 * schema table below (path, reload column, type, range, default): an unknown
 * key, a wrong type, a value out of range, a bad address or a missing file
 * is reported as "file:line: message" and nothing is returned. The other
 * files of config/: values.c (one value: parsers, checks, lookups),
 * dkimkeys.c (the dkim { } section), snapshot.c (references and the current
 * snapshot), diff.c (the reload column: what changed, what is kept).
 *
 * Threads: loading is pure (any thread). A snapshot is immutable once
 * returned (refcounts and the current pointer: snapshot.c). Two process-wide
 * variables live here: attach_fn, written once at start-up before any other
 * thread runs, and the schema table, read-only (docs/architecture.md lists
 * every mutable global of the daemon).
 */
#include "config/config_int.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pwd.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* The reload column: LIVE, the running daemon takes a new value at once
 * (every reader looks at the current snapshot, or takes the new one when
 * reload hands it over); RESTART, the value is read at start-up only, so
 * reload keeps the running one in the new snapshot and says so
 * (needs_restart). */
#define LIVE CFG_APPLY_LIVE
#define RESTART CFG_APPLY_RESTART
#define OFF(f) offsetof(cfg_t, f)
#define KEY(p, apply, kind, f, def)                                                                \
    {                                                                                              \
        p, apply, kind, OFF(f), 0, 0, def                                                          \
    }
#define KEYR(p, apply, kind, f, lo, hi, def)                                                       \
    {                                                                                              \
        p, apply, kind, OFF(f), lo, hi, def                                                        \
    }
#define SEC(p, apply, kind)                                                                        \
    {                                                                                              \
        p, apply, kind, 0, 0, 0, NULL                                                              \
    }

/* Every key sluice knows: the single source of paths, reload behaviour,
 * types, ranges and defaults. config.h's comments and sluice.conf.example
 * repeat these defaults; the unit test checks the example names every key
 * and that every key says how reload treats it. The paths of the installed
 * layout are in layout_defaults below; the manual, sluice.conf(5), lists
 * every key with its installed default (tests/unit/layout_test.c). */
static const key_def_t keys[] = {
    KEY("hostname", RESTART, K_HOSTNAME, c_hostname, ""),
    KEY("user", RESTART, K_STR, c_user, ""),

    KEY("log.level", LIVE, K_LEVEL, c_log_level, "info"),
    KEY("log.file", RESTART, K_STR, c_log_file, ""),
    KEY("log.accounting_dir", RESTART, K_PATH, c_acct_dir, "./var/log"),
    KEYR("log.accounting_max_size", RESTART, K_SIZE, c_acct_max_size, MB, TB, "256M"),
    KEY("log.header_fields", LIVE, K_HDRLIST, c_acct_headers, ""),
    KEY("log.accounting_format", RESTART, K_STR, c_acct_format, "jsonl"),

    KEY("spool.path", RESTART, K_PATH, c_spool_path, "./var/spool"),
    KEY("spool.sync", RESTART, K_SYNC, c_spool_sync, "fsync"),
    KEYR("spool.map_size", RESTART, K_SIZE, c_spool_map_size, 16 * MB, 64 * TB, "1G"),
    KEYR("spool.max_size", RESTART, K_SIZE, c_spool_max_size, 16 * MB, 64 * TB, "64G"),
    KEYR("spool.high_water", LIVE, K_INT, c_spool_high_water, 1, 100, "90"),
    KEYR("spool.commit_batch", LIVE, K_INT, c_spool_batch, 1, 1000000, "1024"),

    KEY("control.socket", RESTART, K_SOCKET, c_ctl_socket, "./var/sluiced.sock"),
    KEYR("control.mode", RESTART, K_MODE, c_ctl_mode, 0, 0777, "0600"),
    KEY("control.http_metrics", RESTART, K_IPPORT, c_ctl_http, ""),

    KEY("http.listen", RESTART, K_IPPORT, c_http_listen, ""),
    KEY("http.tls", RESTART, K_BOOL, c_http_tls, "false"),
    KEYR("http.max_body", RESTART, K_SIZE, c_http_max_body, KB, 4 * GB, "32M"),
    KEYR("http.max_recipients", LIVE, K_INT, c_http_max_recipients, 1, 1000000, "10000"),
    KEYR("http.max_requests_per_ip", LIVE, K_INT, c_http_max_requests_per_ip, 1, 100000, "16"),
    KEYR("http.rate_per_ip", LIVE, K_INT, c_http_rate_per_ip, 1, 10000000, "100"),
    KEYR("http.timeout", RESTART, K_DUR, c_http_timeout, 1, HOUR, "30s"),
    KEY("http.basic_auth", LIVE, K_BOOL, c_http_basic_auth, "true"),
    SEC("http.tokens", LIVE, K_TOKENS),

    KEY("smtp.listen", RESTART, K_LISTEN, c_smtp_listen, "127.0.0.1:2525"),
    KEYR("smtp.threads", RESTART, K_INT, c_smtp_threads, 1, 64, "1"),
    KEYR("smtp.max_message_size", LIVE, K_SIZE, c_smtp_max_message_size, KB, 4 * GB, "50M"),
    KEYR("smtp.max_recipients", LIVE, K_INT, c_smtp_max_recipients, 1, 100000, "1000"),
    KEYR("smtp.max_line_length", LIVE, K_INT, c_smtp_max_line, 1000, 1048576, "1000"),
    KEYR("smtp.max_connections", LIVE, K_INT, c_smtp_max_connections, 1, 1000000, "2000"),
    KEYR("smtp.max_connections_per_ip", LIVE, K_INT, c_smtp_max_conn_per_ip, 1, 1000000, "200"),
    KEYR("smtp.max_commands_before_mail", LIVE, K_INT, c_smtp_max_commands_before_mail, 1, 100000,
         "20"),
    KEYR("smtp.max_errors", LIVE, K_INT, c_smtp_max_errors, 1, 100000, "10"),
    KEYR("smtp.idle_timeout", LIVE, K_DUR, c_smtp_idle_timeout, 1, DAY, "5m"),
    KEYR("smtp.data_timeout", LIVE, K_DUR, c_smtp_data_timeout, 1, DAY, "10m"),
    KEYR("smtp.max_pending", LIVE, K_INT, c_smtp_max_pending, 1, 10000000, "5000"),
    KEYR("smtp.max_memory", LIVE, K_SIZE, c_smtp_max_memory, MB, TB, "512M"),
    KEY("smtp.bare_newline", LIVE, K_BARENL, c_smtp_bare_newline, "reject"),
    KEY("smtp.relay_networks", LIVE, K_CIDRS, c_smtp_relay, "127.0.0.0/8, ::1/128"),

    KEY("smtp.tls.dir", RESTART, K_STR, c_tls_dir, ""),
    KEY("smtp.tls.cert", RESTART, K_STR, c_tls_cert, ""),
    KEY("smtp.tls.key", RESTART, K_STR, c_tls_key, ""),
    KEY("smtp.tls.generate", RESTART, K_BOOL, c_tls_generate, "true"),

    KEY("smtp.auth.plaintext_loopback", LIVE, K_BOOL, c_auth_plaintext_loopback, "true"),
    KEYR("smtp.auth.fail_delay", LIVE, K_DUR_MS, c_auth_fail_delay, 0, 60000, "1s"),
    KEYR("smtp.auth.lockout_failures", LIVE, K_INT, c_auth_lockout_failures, 1, 1000000, "5"),
    KEYR("smtp.auth.lockout_window", LIVE, K_DUR, c_auth_lockout_window, 1, 7 * DAY, "10m"),
    KEYR("smtp.auth.lockout_time", LIVE, K_DUR, c_auth_lockout_time, 1, 7 * DAY, "15m"),
    SEC("smtp.auth.users", LIVE, K_USERS),

    KEY("queue.retry", LIVE, K_RETRY, c_retry, ""),
    KEYR("queue.retry_initial", LIVE, K_DUR, c_retry_initial, 1, 30 * DAY, "5m"),
    KEYR("queue.retry_max", LIVE, K_DUR, c_retry_max, 1, 30 * DAY, "4h"),
    KEYR("queue.retry_jitter", LIVE, K_INT, c_retry_jitter, 0, 100, "20"),
    KEYR("queue.max_age", LIVE, K_DUR, c_max_age, MIN_S, 365 * DAY, "5d"),
    KEY("queue.dsn", LIVE, K_BOOL, c_dsn, "true"),
    KEYR("queue.dsn_max_delay", LIVE, K_DUR, c_dsn_max_delay, 1, DAY, "60s"),
    KEYR("queue.active_window", LIVE, K_INT, c_active_window, 1, 10000000, "2000"),
    KEYR("queue.active_total", LIVE, K_INT, c_active_total, 1, 100000000, "100000"),
    KEYR("queue.active_size", LIVE, K_SIZE, c_active_size, MB, TB, "256M"),
    KEYR("queue.scan_interval", LIVE, K_DUR_MS, c_scan_interval_ms, 10, HOUR * 1000, "1s"),

    KEYR("delivery.threads", RESTART, K_INT, c_dlv_threads, 0, 256, "0"),
    KEYR("delivery.port", LIVE, K_INT, c_dlv_port, 1, 65535, "25"),
    KEY("delivery.resolvers", RESTART, K_RESOLVERS, c_dlv_resolvers, ""),
    KEY("delivery.smarthost", LIVE, K_HOSTPORT, c_dlv_smarthost, ""),
    SEC("delivery.routes", LIVE, K_ROUTES),
    KEY("delivery.tls", LIVE, K_TLSPOL, c_dlv_tls_default, "opportunistic"),
    SEC("delivery.tls_policy", LIVE, K_TLSMAP),
    KEY("delivery.ca_file", RESTART, K_STR, c_dlv_ca_file, ""),
    KEY("delivery.helo_name", RESTART, K_HOSTNAME, c_dlv_helo, ""),
    KEY("delivery.bounce_rules", LIVE, K_STR, c_dlv_bounce_rules, ""),
    KEY("delivery.shaping", LIVE, K_STR, c_dlv_shaping, ""),
    KEY("delivery.adaptive", LIVE, K_BOOL, c_dlv_adaptive, "false"),
    KEYR("delivery.max_rcpt_per_transaction", LIVE, K_INT, c_dlv_max_rcpt_per_txn, 1, 100000,
         "100"),
    KEYR("delivery.max_connections_per_destination", LIVE, K_INT, c_dlv_max_conn_per_dest, 1,
         100000, "20"),
    KEYR("delivery.max_messages_per_connection", LIVE, K_INT, c_dlv_max_msgs_per_conn, 1, 100000000,
         "1000"),
    KEYR("delivery.connection_reuse_time", LIVE, K_DUR, c_dlv_conn_reuse_time, 0, DAY, "300s"),
    KEYR("delivery.idle_time", LIVE, K_DUR, c_dlv_idle_time, 0, HOUR, "2s"),
    KEYR("delivery.dns_cache_max_ttl", LIVE, K_DUR, c_dlv_dns_cache_max, 0, 7 * DAY, "1h"),
    KEYR("delivery.dead_after_failures", LIVE, K_INT, c_dlv_dead_after, 1, 100000, "5"),
    KEYR("delivery.dead_time", LIVE, K_DUR, c_dlv_dead_time, 1, 7 * DAY, "5m"),
    KEY("delivery.mta_sts", RESTART, K_BOOL, c_dlv_mta_sts, "true"),
    KEYR("delivery.mta_sts_port", RESTART, K_INT, c_dlv_mta_sts_port, 1, 65535, "443"),
    KEY("delivery.dnssec", RESTART, K_STR, c_dlv_dnssec_text, "off"),
    KEY("delivery.dnssec_force", RESTART, K_BOOL, c_dlv_dnssec_force, "false"),
    KEYR("delivery.connect_timeout", LIVE, K_DUR, c_to_connect, 1, HOUR, "30s"),
    KEYR("delivery.greeting_timeout", LIVE, K_DUR, c_to_greeting, 1, HOUR, "5m"),
    KEYR("delivery.ehlo_timeout", LIVE, K_DUR, c_to_ehlo, 1, HOUR, "5m"),
    KEYR("delivery.starttls_timeout", LIVE, K_DUR, c_to_starttls, 1, HOUR, "2m"),
    KEYR("delivery.mail_timeout", LIVE, K_DUR, c_to_mail, 1, HOUR, "5m"),
    KEYR("delivery.rcpt_timeout", LIVE, K_DUR, c_to_rcpt, 1, HOUR, "5m"),
    KEYR("delivery.data_timeout", LIVE, K_DUR, c_to_data, 1, HOUR, "2m"),
    KEYR("delivery.data_block_timeout", LIVE, K_DUR, c_to_data_block, 1, HOUR, "3m"),
    KEYR("delivery.data_done_timeout", LIVE, K_DUR, c_to_data_done, 1, HOUR, "10m"),
    KEYR("delivery.quit_timeout", LIVE, K_DUR, c_to_quit, 1, HOUR, "10s"),

    KEY("reports.tlsrpt.organization", LIVE, K_STR, c_tlsrpt_org, ""),
    KEY("reports.tlsrpt.contact", LIVE, K_STR, c_tlsrpt_contact, ""),
    KEY("reports.tlsrpt.sender", LIVE, K_STR, c_tlsrpt_sender, ""),

    KEY("dkim.sign_from_domain", LIVE, K_BOOL, c_dkim_sign_from, "true"),
    KEY("dkim.esp_domain", LIVE, K_HOSTNAME, c_dkim_esp_domain, ""),
    KEY("dkim.canonicalization", LIVE, K_STR, c_dkim_canon, "relaxed/relaxed"),
    KEY("dkim.algorithm", LIVE, K_STR, c_dkim_alg, "any"),
    KEY("dkim.headers", LIVE, K_HDRLIST, c_dkim_headers,
        "from, to, subject, date, message-id, mime-version, content-type, list-unsubscribe, "
        "list-unsubscribe-post, reply-to, cc, in-reply-to, references, feedback-id"),
    KEY("dkim.oversign", LIVE, K_HDRLIST, c_dkim_oversign, "from"),
    KEY("dkim.timestamp", LIVE, K_BOOL, c_dkim_timestamp, "true"),
    KEYR("dkim.expire", LIVE, K_DUR, c_dkim_expire, 0, 365 * DAY, "0"),
    SEC("dkim.keys", LIVE, K_DKIMKEYS),

    SEC("events.webhooks", RESTART, K_WEBHOOKS),
    /* the backlog bound of the event stream (queue/events.c, docs/events.md) */
    KEYR("events.max_backlog", LIVE, K_INT, c_ev_max_backlog, 0, 1000000000, "0"),
    KEYR("events.max_backlog_age", LIVE, K_DUR, c_ev_max_backlog_age, 0, 365 * DAY, "0"),
    /* VERP return paths (core/base/verp.c, delivery/session.c, docs/bounces-in.md) */
    KEY("bounces.verp", LIVE, K_BOOL, c_verp, "false"),
    KEY("bounces.verp_jobs", LIVE, K_HDRLIST, c_verp_jobs, ""),
    KEY("bounces.domain", LIVE, K_HOSTNAME, c_bounce_domain, ""),
    KEY("bounces.verp_key_file", LIVE, K_STR, c_verp_key_file, ""),
    KEYR("bounces.verp_max_age", LIVE, K_DUR, c_verp_max_age, DAY, 3650 * DAY, "30d"),
    KEY("bounces.inbound", LIVE, K_BOOL, c_bounce_inbound, "false"),
    KEY("bounces.quarantine_dir", LIVE, K_PATH, c_bounce_quarantine, "./var/quarantine"),
    KEYR("bounces.quarantine_max", LIVE, K_INT, c_bounce_quarantine_max, 0, 1000000, "1000"),
    KEY("bounces.listen", RESTART, K_ADDRS, c_bounce_listen, ""),
    KEYR("bounces.max_message_size", LIVE, K_SIZE, c_bounce_max_size, KB, 4 * GB, "10M"),
    KEYR("bounces.max_connections_per_ip", LIVE, K_INT, c_bounce_max_conn_per_ip, 1, 1000000, "10"),
    KEYR("bounces.max_messages_per_minute", LIVE, K_INT, c_bounce_rate, 0, 10000000, "600"),

    /* the suppression list (queue/suppress.c, docs/bounces-in.md) */
    KEY("suppression.enabled", LIVE, K_BOOL, c_supp_enabled, "false"),
    KEY("suppression.action", LIVE, K_STR, c_supp_action, "reject"),
    KEY("suppression.categories", LIVE, K_HDRLIST, c_supp_categories,
        "bad-mailbox, bad-domain, inactive-mailbox"),
    KEY("suppression.complaints", LIVE, K_BOOL, c_supp_complaints, "true"),
    KEY("suppression.scope", LIVE, K_STR, c_supp_scope, "global"),
    KEY("suppression.scope_header", LIVE, K_STR, c_supp_scope_header, ""),
    KEY("suppression.fold_domains", RESTART, K_HDRLIST, c_supp_fold_domains, ""),
    KEY("suppression.case_domains", RESTART, K_HDRLIST, c_supp_case_domains, ""),
    KEYR("suppression.expire_bounces", LIVE, K_DUR, c_supp_expire_bounces, 0, 3650 * DAY, "0"),
    KEYR("suppression.expire_complaints", LIVE, K_DUR, c_supp_expire_complaints, 0, 3650 * DAY,
         "0"),

    /* several nodes sharing limits through Redis (delivery/cluster.c, docs/cluster.md) */
    KEY("cluster.redis", RESTART, K_REDIS, c_cl_redis, ""),
    KEY("cluster.node", RESTART, K_STR, c_cl_node, ""),
    KEY("cluster.prefix", RESTART, K_STR, c_cl_prefix, "sluice"),
    KEYR("cluster.lease_ttl", RESTART, K_DUR_MS, c_cl_lease_ttl_ms, 500, HOUR * 1000, "10s"),
    KEYR("cluster.timeout", RESTART, K_DUR_MS, c_cl_timeout_ms, 10, 60000, "200ms"),
};

#define NKEYS ((int)ARRAY_SIZE(keys))
_Static_assert(ARRAY_SIZE(keys) <= MAX_KEYS, "raise MAX_KEYS");

static int load_text(const char *name, const char *text, size_t len, int file_mode, cfg_t **out,
                     char *err, size_t errlen);
static int walk_section(loader_t *ld, const cfg_node_t *sec, const char *prefix);
static int set_value(loader_t *ld, const key_def_t *k, const cfg_node_t *n);
static int set_text(loader_t *ld, const key_def_t *k, const cfg_node_t *n);
static int set_map(loader_t *ld, const key_def_t *k, const cfg_node_t *sec);
static int finish(loader_t *ld, int file_mode);
static char *dir_of(const char *path);
static int finish_paths(loader_t *ld);
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
    {"bounces.quarantine_dir", CFG_FHS_QUARANTINE},
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

/* ------------------------------------------------------------ the schema */

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
           k->k_kind == K_TOKENS || k->k_kind == K_DKIMKEYS || k->k_kind == K_WEBHOOKS;
}

/* ------------------------------------------------------------ setters */

static int set_list(loader_t *ld, const key_def_t *k, const cfg_node_t *n)
{
    cfg_t *c = ld->l_cfg;
    item_t items[MAX_ITEMS];
    int cnt = 0, max = MAX_ITEMS;
    if (k->k_kind == K_LISTEN || k->k_kind == K_ADDRS)
        max = CFG_MAX_LISTEN;
    else if (k->k_kind == K_CIDRS)
        max = CFG_MAX_NETS;
    else if (k->k_kind == K_RETRY)
        max = (int)ARRAY_SIZE(c->c_retry);
    else if (k->k_kind == K_RESOLVERS)
        max = MAX_RESOLVERS;
    else if (k->k_kind == K_REDIS)
        max = 1; /* one server: no Sentinel or Redis Cluster yet (docs/cluster.md) */
    if (ld_collect_items(ld, k, n, items, max, &cnt) < 0)
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
    case K_ADDRS: {
        cfg_addrs_t *l = (cfg_addrs_t *)((char *)c + k->k_off);
        for (int i = 0; i < cnt; i++) {
            if (net_parse_hostport(items[i].i_s, 25, &l->ca_a[i]) < 0) {
                ld_error(ld, items[i].i_line,
                         "%s: bad address \"%s\" (want ip:port, e.g. \"0.0.0.0:25\")", k->k_path,
                         items[i].i_s);
                return SL_ECONFIG;
            }
        }
        l->ca_n = cnt;
        return 0;
    }
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
        char **slot = ld_field(c, k);
        free(*slot);
        *slot = buf_steal(&b, NULL);
        return 0;
    }
    case K_REDIS: {
        /* redis://[[user:]password@]host:port or unix:/path (the one server
         * every node uses); the password is delivery/cluster.c's */
        const char *a = cnt > 0 ? items[0].i_s : "";
        const char *at = strncmp(a, "redis://", 8) == 0 ? strrchr(a + 8, '@') : NULL;
        sockaddr_any_t sa;
        bool ok = a[0] == '\0' || (strncmp(a, "unix:", 5) == 0 && a[5] == '/') ||
                  (strncmp(a, "redis://", 8) == 0 && (at == NULL || at > a + 8) &&
                   net_parse_hostport(at ? at + 1 : a + 8, 6379, &sa) == 0);
        if (!ok) {
            ld_error(ld, items[0].i_line,
                     "%s: bad address \"%s\" (want \"redis://ip:port\" or \"unix:/path\"; "
                     "Sentinel and Redis Cluster are not supported)",
                     k->k_path, a);
            return SL_ECONFIG;
        }
        char **slot = ld_field(c, k);
        free(*slot);
        *slot = xstrdup(a);
        return 0;
    }
    default:
        abort(); /* not a list kind: a bug in the schema */
    }
}

/* The kinds whose value is kept as text, after their check. */
static int set_text(loader_t *ld, const key_def_t *k, const cfg_node_t *n)
{
    cfg_t *c = ld->l_cfg;
    void *f = ld_field(c, k);
    const char *s = n->n_str;
    switch (k->k_kind) {
    case K_STR:
        ld_set_str(f, s);
        return 0;
    case K_PATH:
        if (s[0] == '\0') {
            ld_error(ld, n->n_line, "%s: expected a path, got \"\"", k->k_path);
            return SL_ECONFIG;
        }
        ld_set_str(f, s);
        return 0;
    case K_SOCKET:
        if (s[0] == '\0' || strlen(s) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
            ld_error(ld, n->n_line, "%s: expected a socket path of 1 to %zu bytes, got \"%.80s\"",
                     k->k_path, sizeof(((struct sockaddr_un *)0)->sun_path) - 1, s);
            return SL_ECONFIG;
        }
        ld_set_str(f, s);
        return 0;
    case K_HOSTNAME:
        if (s[0] != '\0' && !cfg_hostname_valid(s)) {
            ld_error(ld, n->n_line, "%s: bad host name \"%.80s\"", k->k_path, s);
            return SL_ECONFIG;
        }
        ld_set_str(f, s);
        return 0;
    case K_IPPORT: {
        sockaddr_any_t sa;
        /* sin_port and sin6_port sit at the same offset */
        if (s[0] != '\0' &&
            (net_parse_hostport(s, 0, &sa) != 0 || ((struct sockaddr_in *)&sa)->sin_port == 0))
            return ld_expect_error(ld, k, n);
        ld_set_str(f, s);
        return 0;
    }
    case K_HOSTPORT: {
        char *host = NULL;
        int port = 0;
        if (s[0] != '\0' && cfg_parse_dest(s, &host, &port) < 0) {
            ld_error(ld, n->n_line, "%s: bad destination \"%.80s\" (want host[:port])", k->k_path,
                     s);
            return SL_ECONFIG;
        }
        ld_set_str(f, s);
        free(c->c_dlv_smart.r_host);
        c->c_dlv_smart.r_host = host;
        c->c_dlv_smart.r_port = port;
        return 0;
    }
    default:
        abort(); /* not a text kind: a bug in set_value */
    }
}

static int set_value(loader_t *ld, const key_def_t *k, const cfg_node_t *n)
{
    cfg_t *c = ld->l_cfg;
    void *f = ld_field(c, k);
    uint64_t v;

    if (is_map(k)) {
        if (n->n_type != CFG_NODE_SECTION)
            return ld_expect_error(ld, k, n);
        if (k->k_kind == K_DKIMKEYS)
            return ld_set_dkim_keys(ld, k, n);
        if (k->k_kind == K_WEBHOOKS)
            return ld_set_webhooks(ld, k, n);
        return set_map(ld, k, n);
    }
    if (k->k_kind == K_HDRLIST)
        return ld_set_hdrlist(ld, k, n);
    if (k->k_kind == K_LISTEN || k->k_kind == K_ADDRS || k->k_kind == K_CIDRS ||
        k->k_kind == K_RETRY || k->k_kind == K_RESOLVERS || k->k_kind == K_REDIS)
        return set_list(ld, k, n);
    if (n->n_type != CFG_NODE_STR)
        return ld_expect_error(ld, k, n);

    const char *s = n->n_str;
    switch (k->k_kind) {
    case K_STR:
    case K_PATH:
    case K_SOCKET:
    case K_HOSTNAME:
    case K_IPPORT:
    case K_HOSTPORT:
        return set_text(ld, k, n);
    case K_INT:
        if (cfg_parse_uint(s, &v) < 0 || v < k->k_min || v > k->k_max)
            return ld_expect_error(ld, k, n);
        *(int *)f = (int)v;
        return 0;
    case K_SIZE:
        if (cfg_parse_size(s, &v) < 0 || v < k->k_min || v > k->k_max)
            return ld_expect_error(ld, k, n);
        *(uint64_t *)f = v;
        return 0;
    case K_DUR:
        if (cfg_parse_duration(s, &v) < 0 || v < k->k_min || v > k->k_max)
            return ld_expect_error(ld, k, n);
        *(uint64_t *)f = v;
        return 0;
    case K_DUR_MS:
        if (cfg_parse_dur_ms(s, &v) < 0 || v < k->k_min || v > k->k_max)
            return ld_expect_error(ld, k, n);
        *(uint64_t *)f = v;
        return 0;
    case K_BOOL:
        if (cfg_parse_bool(s, f) < 0)
            return ld_expect_error(ld, k, n);
        return 0;
    case K_MODE: {
        char *end;
        errno = 0;
        long m = strtol(s, &end, 8);
        if (!isdigit((unsigned char)s[0]) || *end != '\0' || errno != 0 || m < (long)k->k_min ||
            m > (long)k->k_max)
            return ld_expect_error(ld, k, n);
        *(int *)f = (int)m;
        return 0;
    }
    case K_LEVEL:
        if (strcasecmp(s, "warning") == 0)
            s = "warn";
        if (log_level_parse(s, f) < 0)
            return ld_expect_error(ld, k, n);
        return 0;
    case K_SYNC:
        if (strcasecmp(s, "fsync") == 0)
            *(cfg_sync_t *)f = CFG_SYNC_FSYNC;
        else if (strcasecmp(s, "none") == 0)
            *(cfg_sync_t *)f = CFG_SYNC_NONE;
        else
            return ld_expect_error(ld, k, n);
        return 0;
    case K_BARENL:
        if (strcasecmp(s, "reject") == 0)
            *(cfg_barenl_t *)f = CFG_BARENL_REJECT;
        else if (strcasecmp(s, "normalize") == 0)
            *(cfg_barenl_t *)f = CFG_BARENL_NORMALIZE;
        else
            return ld_expect_error(ld, k, n);
        return 0;
    case K_TLSPOL:
        if (cfg_parse_tls_policy(s, f) < 0)
            return ld_expect_error(ld, k, n);
        return 0;
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
        if (k->k_kind == K_TOKENS) {
            if (c->c_http_ntokens == CFG_MAX_TOKENS) {
                ld_error(ld, e->n_key_line, "%s: too many tokens (at most %d)", k->k_path,
                         CFG_MAX_TOKENS);
                return SL_ECONFIG;
            }
            cfg_token_t *t = &c->c_http_tokens[c->c_http_ntokens];
            if (cfg_parse_token(val, t->tk_hash, &t->tk_scopes) < 0) {
                ld_error(ld, e->n_line,
                         "%s.%s: expected \"scopes:sha256 hex\" such as \"inject,read:9f86...\" "
                         "(scopes inject, read, admin; make one with `sluiced --hash-token`)",
                         k->k_path, key);
                return SL_ECONFIG;
            }
            t->tk_name = xstrdup(key);
            c->c_http_ntokens++;
            continue;
        }
        /* domains: "example.org", or ".example.org" (subdomains) in tls_policy */
        const char *dom = key;
        if (k->k_kind == K_TLSMAP && dom[0] == '.')
            dom++;
        if (!cfg_hostname_valid(dom)) {
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
            if (cfg_parse_dest(val, &host, &port) < 0) {
                ld_error(ld, e->n_line, "%s.%s: bad destination \"%.80s\" (want host[:port])",
                         k->k_path, key, val);
                return SL_ECONFIG;
            }
            struct cfg_route *r = &c->c_dlv_routes[c->c_dlv_nroutes++];
            r->r_domain = xstrdup(key);
            cfg_lower(r->r_domain);
            r->r_host = host;
            r->r_port = port;
        } else {
            if (c->c_dlv_ntls == (int)ARRAY_SIZE(c->c_dlv_tls)) {
                ld_error(ld, e->n_key_line, "%s: too many entries (at most %zu)", k->k_path,
                         ARRAY_SIZE(c->c_dlv_tls));
                return SL_ECONFIG;
            }
            int pol;
            if (cfg_parse_tls_policy(val, &pol) < 0) {
                ld_error(ld, e->n_line,
                         "%s.%s: expected one of opportunistic, disabled, required, verify, got "
                         "\"%.80s\"",
                         k->k_path, key, val);
                return SL_ECONFIG;
            }
            struct cfg_tls_policy *t = &c->c_dlv_tls[c->c_dlv_ntls++];
            t->tp_domain = xstrdup(key);
            cfg_lower(t->tp_domain);
            t->tp_policy = pol;
        }
    }
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
#define LINE(f) ld_line(ld, f)
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

/* bounces { }: the VERP key is read here, so that start-up, reload and
 * --check-config refuse a missing, unreadable, malformed or world-readable
 * key the way they refuse a DKIM key. */
static int finish_verp(loader_t *ld)
{
    cfg_t *c = ld->l_cfg;
#define LINE(f) ld_line(ld, f)
    if (c->c_verp_key_file[0] != '\0') {
        const char *f = c->c_verp_key_file;
        struct stat st;
        char why[256], buf[256];
        const char *bad;
        FILE *fp = fopen(f, "re");
        if (fp == NULL || fstat(fileno(fp), &st) != 0) {
            ld_error(ld, LINE("bounces.verp_key_file"), "bounces.verp_key_file: \"%s\": %s", f,
                     strerror(errno));
            if (fp)
                fclose(fp);
            return SL_ECONFIG;
        }
        size_t n = fread(buf, 1, sizeof(buf), fp);
        fclose(fp);
        if ((bad = cfg_key_mode_problem(c, &st, why, sizeof(why))) != NULL) {
            ld_error(ld, LINE("bounces.verp_key_file"), "bounces.verp_key_file: \"%s\" %s", f, bad);
            return SL_ECONFIG;
        }
        if (verp_key_parse((const uint8_t *)buf, n, c->c_verp_key) != 0) {
            ld_error(ld, LINE("bounces.verp_key_file"),
                     "bounces.verp_key_file: \"%s\" must hold 32 random bytes, raw or as 64 hex "
                     "digits (openssl rand -hex 32)",
                     f);
            return SL_ECONFIG;
        }
        c->c_verp_key_loaded = true;
    }
    if (c->c_bounce_inbound && c->c_bounce_domain[0] == '\0') {
        ld_error(ld, LINE("bounces.inbound"), "bounces.inbound needs bounces.domain");
        return SL_ECONFIG;
    }
    if (c->c_bounce_listen.ca_n > 0 && !c->c_bounce_inbound) {
        ld_error(ld, LINE("bounces.listen"), "bounces.listen needs bounces.inbound = true");
        return SL_ECONFIG;
    }
    for (int i = 0; i < c->c_bounce_listen.ca_n; i++)
        for (int j = 0; j < c->c_smtp_nlisten; j++)
            if (memcmp(&c->c_bounce_listen.ca_a[i], &c->c_smtp_listen[j],
                       sizeof(c->c_smtp_listen[j])) == 0) {
                ld_error(ld, LINE("bounces.listen"),
                         "bounces.listen: an address of smtp.listen cannot be the reports "
                         "listener too (leave bounces.listen empty to take reports there)");
                return SL_ECONFIG;
            }
    if (c->c_verp_jobs != NULL && c->c_verp_jobs[0] != NULL &&
        (c->c_bounce_domain[0] == '\0' || !c->c_verp_key_loaded)) {
        ld_error(ld, LINE("bounces.verp_jobs"),
                 "bounces.verp_jobs needs bounces.domain and bounces.verp_key_file");
        return SL_ECONFIG;
    }
    if (c->c_verp && (c->c_bounce_domain[0] == '\0' || !c->c_verp_key_loaded)) {
        ld_error(ld, LINE("bounces.verp"),
                 "bounces.verp needs bounces.domain and "
                 "bounces.verp_key_file");
        return SL_ECONFIG;
    }
#undef LINE
    return 0;
}

/* delivery.dnssec: the AD bit means "validated" only when it comes from a
 * validating resolver on this machine; from anywhere else it can be set by
 * anyone on the path (RFC 6698 A.3, RFC 7672 2.1). So "trust-ad" wants
 * delivery.resolvers to name loopback addresses only, unless the operator
 * forces it (a resolver on a trusted link, or the system's resolv.conf). */
static int finish_dnssec(loader_t *ld)
{
    cfg_t *c = ld->l_cfg;
    const char *v = c->c_dlv_dnssec_text;
    int line = ld_line(ld, "delivery.dnssec");
    if (strcmp(v, "off") != 0 && strcmp(v, "trust-ad") != 0) {
        ld_error(ld, line, "delivery.dnssec: expected \"off\" or \"trust-ad\", got \"%s\"", v);
        return SL_ECONFIG;
    }
    if (!cfg_dnssec_trust_ad(c) || c->c_dlv_dnssec_force)
        return 0;
    const char *r = c->c_dlv_resolvers;
    if (r[0] == '\0') {
        ld_error(ld, line,
                 "delivery.dnssec = \"trust-ad\" needs delivery.resolvers naming the validating "
                 "resolver on loopback (e.g. \"127.0.0.1\"), or delivery.dnssec_force = true");
        return SL_ECONFIG;
    }
    char item[128];
    for (const char *p = r; *p != '\0';) {
        size_t l = strcspn(p, ",");
        snprintf(item, sizeof(item), "%.*s", (int)MIN(l, sizeof(item) - 1), p);
        sockaddr_any_t sa;
        bool loop = net_parse_hostport(item, 53, &sa) == 0 &&
                    ((sa.ss_family == AF_INET &&
                      (ntohl(((struct sockaddr_in *)&sa)->sin_addr.s_addr) >> 24) == 127) ||
                     (sa.ss_family == AF_INET6 &&
                      IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&sa)->sin6_addr)));
        if (!loop) {
            ld_error(ld, line,
                     "delivery.dnssec = \"trust-ad\": resolver \"%s\" is not on loopback; an AD "
                     "bit from another host can be forged on the way (set delivery.dnssec_force "
                     "= true if that resolver is on a link you trust)",
                     item);
            return SL_ECONFIG;
        }
        p += l;
        if (*p == ',')
            p++;
    }
    return 0;
}

/* Checks that involve several keys or the file system. */
static int finish(loader_t *ld, int file_mode)
{
    cfg_t *c = ld->l_cfg;
#define LINE(f) ld_line(ld, f)

    if (strcmp(c->c_acct_format, "jsonl") != 0 && strcmp(c->c_acct_format, "pmta-csv") != 0 &&
        strcmp(c->c_acct_format, "both") != 0) {
        ld_error(ld, LINE("log.accounting_format"),
                 "log.accounting_format: expected jsonl, pmta-csv or both, got \"%.60s\"",
                 c->c_acct_format);
        return SL_ECONFIG;
    }

    if (c->c_hostname[0] == '\0') {
        char h[256];
        if (gethostname(h, sizeof(h)) != 0 || h[0] == '\0')
            snprintf(h, sizeof(h), "localhost");
        h[sizeof(h) - 1] = '\0';
        ld_set_str(&c->c_hostname, h);
    }
    if (c->c_dlv_helo[0] == '\0')
        ld_set_str(&c->c_dlv_helo, c->c_hostname);
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
        (bad = cfg_key_mode_problem(c, &kst, why, sizeof(why))) != NULL) {
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
    if (finish_dnssec(ld) < 0)
        return SL_ECONFIG;
    if (c->c_tlsrpt_org[0] != '\0' && c->c_tlsrpt_contact[0] == '\0') {
        ld_error(ld, LINE("reports.tlsrpt.organization"),
                 "reports.tlsrpt: organization needs contact (RFC 8460 4.4 contact-info: an "
                 "address or URI a receiving domain can write to)");
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
    if (ld_finish_dkim(ld) < 0)
        return SL_ECONFIG;
    if (finish_verp(ld) < 0)
        return SL_ECONFIG;
    if (strcmp(c->c_supp_action, "reject") != 0 && strcmp(c->c_supp_action, "drop") != 0) {
        ld_error(ld, LINE("suppression.action"),
                 "suppression.action: expected \"reject\" or \"drop\", got \"%.40s\"",
                 c->c_supp_action);
        return SL_ECONFIG;
    }
    if (strcmp(c->c_supp_scope, "global") != 0 && strcmp(c->c_supp_scope, "auth_user") != 0) {
        ld_error(ld, LINE("suppression.scope"),
                 "suppression.scope: expected \"global\" or \"auth_user\", got \"%.40s\"",
                 c->c_supp_scope);
        return SL_ECONFIG;
    }
    for (const char *p = c->c_supp_scope_header; *p; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 127 || *p == ':') {
            ld_error(ld, LINE("suppression.scope_header"),
                     "suppression.scope_header: bad header field name \"%.60s\"",
                     c->c_supp_scope_header);
            return SL_ECONFIG;
        }
#undef LINE
    return 0;
}

/* file_mode: the file's st_mode, or -1 when the text is not from a file. */
static int load_text(const char *name, const char *text, size_t len, int file_mode, cfg_t **out,
                     char *err, size_t errlen)
{
    cfg_node_t *root = NULL;
    loader_t ld = {
        .l_name = name, .l_err = err, .l_errlen = errlen, .l_keys = keys, .l_nkeys = NKEYS};
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

const key_def_t *cfg_schema(int *n)
{
    *n = NKEYS;
    return keys;
}

const char *cfg_key_name(int i, const char **default_text)
{
    if (i < 0 || i >= NKEYS)
        return NULL;
    if (default_text != NULL)
        *default_text = keys[i].k_default != NULL ? key_default(&keys[i]) : NULL;
    return keys[i].k_path;
}
