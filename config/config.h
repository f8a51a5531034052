/*
 * config/config.h - sluice's configuration: parsing, validation, defaults,
 * and the immutable, refcounted snapshot every thread reads.
 *
 * The syntax is the UCL / nginx-like subset documented in
 * sluice.conf.example and docs/config.md (libucl itself is not packaged in
 * Debian 12: its "libucl-dev" is an unrelated compression library). Every
 * key has a default, a type and a range; an unknown key, a wrong type, a
 * value out of range, a bad address or a missing file is an error reported
 * as "file:line: what is wrong".
 *
 * A snapshot is never modified after cfg_load() returns it. Threads that
 * keep it beyond one call take a reference (cfg_ref) and drop it
 * (cfg_unref); the last unref frees it. Reload builds a new snapshot and
 * swaps the global pointer (cfg_current / cfg_set_current).
 */
#ifndef SLUICE_CONFIG_H
#define SLUICE_CONFIG_H

#include "core/base/base.h"

#include <stdarg.h>
#include <stdatomic.h>

#define CFG_MAX_LISTEN 8
#define CFG_MAX_NETS 64
#define CFG_MAX_USERS 256
#define CFG_MAX_DKIM_KEYS 256
#define CFG_MAX_DKIM_HEADERS 64
#define CFG_MAX_TOKENS 256

/* A list of listening addresses that may be empty (bounces.listen). */
typedef struct cfg_addrs {
    int ca_n;
    sockaddr_any_t ca_a[CFG_MAX_LISTEN];
} cfg_addrs_t;

/* http.tokens scopes (docs/http-api.md) */
#define CFG_SCOPE_INJECT 0x01 /* POST /api/inject/v1 */
#define CFG_SCOPE_READ 0x02   /* the admin API's read verbs, /metrics */
#define CFG_SCOPE_ADMIN 0x04  /* the admin API's changing verbs (admin implies read) */

typedef enum { CFG_SYNC_FSYNC = 0, CFG_SYNC_NONE } cfg_sync_t;
/* smtp.bare_newline: a bare LF or CR in DATA is refused, or made CRLF */
typedef enum { CFG_BARENL_REJECT = 0, CFG_BARENL_NORMALIZE } cfg_barenl_t;

typedef struct cfg_user {
    char *cu_name;
    char *cu_hash; /* crypt(3) hash: "$6$salt$..." / "$5$..." / "$y$..." */
} cfg_user_t;

/* http.tokens { platform = "inject,read:<sha256 hex>"; } */
typedef struct cfg_token {
    char *tk_name;
    unsigned char tk_hash[32]; /* SHA-256 of the token */
    unsigned tk_scopes;        /* CFG_SCOPE_* */
} cfg_token_t;
/* One webhook of events.webhooks (docs/events.md). */
#define CFG_MAX_WEBHOOKS 16
typedef struct cfg_webhook {
    char *wh_name;
    char *wh_url;                 /* https://..., or http:// to loopback */
    char *wh_secret;              /* the HMAC-SHA256 key (16 characters or more) */
    char *wh_ca_file;             /* PEM CA file for the endpoint, or NULL: the system store */
    char **wh_types;              /* record types it takes (NULL-terminated); NULL: every type */
    int wh_batch;                 /* batch = 100 records per POST at most */
    uint64_t wh_max_latency_ms;   /* max_latency = 1s: a partial batch waits no longer */
    uint64_t wh_timeout_ms;       /* timeout = 30s: one POST */
    uint64_t wh_retry_initial_ms; /* retry_initial = 1s: first retry delay, doubling ... */
    uint64_t wh_retry_max_ms;     /* retry_max = 10m: ... up to this */
} cfg_webhook_t;

/* dkim.keys { "example.com" { s1 = "/etc/sluice/dkim/example.com.pem"; } } */
typedef struct cfg_dkim_key {
    char *dk_domain;   /* "example.com", lower case */
    char *dk_selector; /* "s1" */
    char *dk_file;     /* the PEM file (exists, not readable by others) */
    int dk_line;       /* line of the entry, for errors found when the key is parsed */
} cfg_dkim_key_t;

typedef struct cfg {
    atomic_int c_refs;
    char *c_file; /* the file it was loaded from, or "(default)" */

    /* top level */
    char *c_hostname; /* default: gethostname() */
    char *c_user;     /* user = "": started as root, switch to this user after binding */

    /* log { } */
    log_level_t c_log_level;  /* level = "info" */
    char *c_log_file;         /* file = ""  (stderr) */
    char *c_acct_dir;         /* accounting_dir = "./var/log" */
    uint64_t c_acct_max_size; /* accounting_max_size = 256M: rotate when bigger */
    char *c_acct_format;      /* accounting_format = "jsonl" | "pmta-csv" | "both" */
    char **c_acct_headers;    /* header_fields = [] (NULL-terminated, lower case): header
                                 fields copied into every outcome record */

    /* spool { } */
    char *c_spool_path;        /* path = "./var/spool" */
    cfg_sync_t c_spool_sync;   /* sync = "fsync" | "none" (unsafe, for comparison) */
    uint64_t c_spool_map_size; /* map_size = 1G: initial LMDB map size */
    uint64_t c_spool_max_size; /* max_size = 64G: the map grows up to this */
    int c_spool_high_water;    /* high_water = 90 (percent of max_size): 452 4.3.1 above */
    int c_spool_batch;         /* commit_batch = 1024: max operations per write txn */

    /* control { } */
    char *c_ctl_socket; /* socket = "./var/sluiced.sock" */
    int c_ctl_mode;     /* mode = 0600 */
    char *c_ctl_http;   /* http_metrics = "" (off) or "127.0.0.1:9090" (ip:port): GET /metrics */

    /* http { } : the HTTP API (core/server/httpd.c, docs/http-api.md) */
    char *c_http_listen;            /* listen = "" (off) or "127.0.0.1:8025" */
    bool c_http_tls;                /* tls = false: HTTPS with smtp.tls's certificate */
    uint64_t c_http_max_body;       /* max_body = 32M: larger request bodies get 413 */
    int c_http_max_recipients;      /* max_recipients = 10000 per injection request */
    int c_http_max_requests_per_ip; /* max_requests_per_ip = 16 at once */
    int c_http_rate_per_ip;         /* rate_per_ip = 100 requests/s (burst as many) */
    uint64_t c_http_timeout;        /* timeout = 30s: request head and body */
    bool c_http_basic_auth;         /* basic_auth = true: smtp.auth.users may inject */
    int c_http_ntokens;
    cfg_token_t c_http_tokens[CFG_MAX_TOKENS]; /* tokens { name = "scopes:sha256"; } */

    /* smtp { } : reception */
    int c_smtp_nlisten;
    sockaddr_any_t c_smtp_listen[CFG_MAX_LISTEN]; /* listen = "127.0.0.1:2525" or a list */
    int c_smtp_threads;                           /* threads = 1 */
    uint64_t c_smtp_max_message_size;             /* max_message_size = 50M */
    int c_smtp_max_recipients;                    /* max_recipients = 1000 */
    int c_smtp_max_line;                 /* max_line_length = 1000 (DATA lines; 998+CRLF) */
    int c_smtp_max_connections;          /* max_connections = 2000 */
    int c_smtp_max_conn_per_ip;          /* max_connections_per_ip = 200 */
    int c_smtp_max_commands_before_mail; /* max_commands_before_mail = 20 */
    int c_smtp_max_errors;               /* max_errors = 10: then 421 and close */
    uint64_t c_smtp_idle_timeout;        /* idle_timeout = 5m (seconds) */
    uint64_t c_smtp_data_timeout;        /* data_timeout = 10m (seconds) */
    int c_smtp_max_pending;              /* max_pending = 5000: queued inserts not yet
                                            committed; above it new MAIL gets 421 4.3.2 */
    cfg_barenl_t c_smtp_bare_newline;    /* bare_newline = reject | normalize */
    uint64_t c_smtp_max_memory;          /* max_memory = 512M: message bytes all sessions hold
                                            in memory together (DATA until the commit);
                                            above it 452 4.3.1 */
    int c_smtp_nrelay;
    net_cidr_t c_smtp_relay[CFG_MAX_NETS]; /* relay_networks = ["127.0.0.0/8", "::1/128"] */

    /* smtp { tls { } } */
    char *c_tls_dir;     /* dir = "" (= <parent of spool.path>/tls, "./var/tls") */
    char *c_tls_cert;    /* cert = "" (= <tls dir>/cert.pem) */
    char *c_tls_key;     /* key  = "" (= <tls dir>/key.pem) */
    bool c_tls_generate; /* generate = true: make a self-signed pair if both are missing */

    /* smtp { auth { } } */
    bool c_auth_plaintext_loopback; /* plaintext_loopback = true: offer AUTH without TLS to
                                       loopback clients */
    uint64_t c_auth_fail_delay;     /* fail_delay = 1s (milliseconds stored) */
    int c_auth_lockout_failures;    /* lockout_failures = 5 */
    uint64_t c_auth_lockout_window; /* lockout_window = 10m (seconds) */
    uint64_t c_auth_lockout_time;   /* lockout_time = 15m (seconds) */
    int c_nusers;
    cfg_user_t c_users[CFG_MAX_USERS]; /* users { alice = "$6$..."; } */

    /* queue { } : scheduling (queue thread) */
    int c_retry_n;               /* retry = "" (default: exponential) or "5m,10m,30m,1h,2h,4h" */
    uint64_t c_retry[32];        /* explicit schedule, seconds; the last repeats */
    uint64_t c_retry_initial;    /* retry_initial = 5m: first retry of the exponential default */
    uint64_t c_retry_max;        /* retry_max = 4h: clamp of the exponential default */
    int c_retry_jitter;          /* retry_jitter = 20 (percent, +/-) */
    uint64_t c_max_age;          /* max_age = 5d: then expire (bounce message-expired) */
    bool c_dsn;                  /* dsn = true: RFC 3464 bounces to the envelope sender */
    uint64_t c_dsn_max_delay;    /* dsn_max_delay = 60s: a DSN waits for its round no longer */
    int c_active_window;         /* active_window = 2000: recipients in flight per destination */
    int c_active_total;          /* active_total = 100000: recipients in flight in all */
    uint64_t c_active_size;      /* active_size = 256M: message bytes handed to delivery
                                    threads at once (one message always goes) */
    uint64_t c_scan_interval_ms; /* scan_interval = 1s (ms stored): due-index scan period */

    /* delivery { } */
    int c_dlv_threads;     /* threads = 0 (= number of cores) */
    int c_dlv_port;        /* port = 25 */
    char *c_dlv_resolvers; /* resolvers = "" (system /etc/resolv.conf) or
                              "127.0.0.1:5353,..." */
    char *c_dlv_smarthost; /* smarthost = "" or "host[:port]" for every domain */
    int c_dlv_nroutes;
    struct cfg_route {
        char *r_domain; /* routes { "example.org" = "127.0.0.1:2526"; } */
        char *r_host;   /* host or address */
        int r_port;     /* 0 = c_dlv_port */
    } c_dlv_routes[256];
    int c_dlv_tls_default; /* tls = "opportunistic" | "disabled" | "required" | "verify" */
    int c_dlv_ntls;
    struct cfg_tls_policy {
        char *tp_domain; /* tls_policy { "bank.example" = "verify"; } */
        int tp_policy;
    } c_dlv_tls[256];
    char *c_dlv_ca_file;            /* ca_file = "" (system store): for "verify" */
    char *c_dlv_helo;               /* helo_name = "" (= hostname) */
    char *c_dlv_bounce_rules;       /* bounce_rules = "" (built-in config/bounce-rules.conf) */
    char *c_dlv_shaping;            /* shaping = "": traffic shaping file (docs/shaping.md) */
    bool c_dlv_adaptive;            /* adaptive = false: adaptive mode where the shaping file does
                                     * not say (docs/shaping.md) */
    int c_dlv_max_rcpt_per_txn;     /* max_rcpt_per_transaction = 100 */
    int c_dlv_max_conn_per_dest;    /* max_connections_per_destination = 20 */
    int c_dlv_max_msgs_per_conn;    /* max_messages_per_connection = 1000 */
    uint64_t c_dlv_conn_reuse_time; /* connection_reuse_time = 300s */
    uint64_t c_dlv_idle_time;       /* idle_time = 2s: keep an idle connection this long */
    uint64_t c_dlv_dns_cache_max;   /* dns_cache_max_ttl = 1h */
    int c_dlv_dead_after;           /* dead_after_failures = 5 connection failures in a row */
    uint64_t c_dlv_dead_time;       /* dead_time = 5m: destination marked down */
    bool c_dlv_mta_sts;             /* mta_sts = true: honor MTA-STS policies (RFC 8461) of
                                       domains delivered by MX (delivery/mta_sts.c) */
    int c_dlv_mta_sts_port;         /* mta_sts_port = 443: HTTPS port of the policy hosts */
    char *c_dlv_dnssec_text;        /* dnssec = "off" | "trust-ad" (as written) */
    bool c_dlv_dnssec_force;        /* dnssec_force = false: allow a non-loopback resolver */
    /* reports { tlsrpt { } } (RFC 8460, docs/tlsrpt.md): on when organization is set */
    char *c_tlsrpt_org;     /* organization = "": organization-name of the reports */
    char *c_tlsrpt_contact; /* contact = "": contact-info of the reports */
    char *c_tlsrpt_sender;  /* sender = "": From of mailed reports ("" = tlsrpt@hostname) */
    /* timeouts (seconds), RFC 5321 4.5.3.2 */
    uint64_t c_to_connect;    /* connect_timeout = 30s */
    uint64_t c_to_greeting;   /* greeting_timeout = 5m */
    uint64_t c_to_ehlo;       /* ehlo_timeout = 5m */
    uint64_t c_to_starttls;   /* starttls_timeout = 2m */
    uint64_t c_to_mail;       /* mail_timeout = 5m */
    uint64_t c_to_rcpt;       /* rcpt_timeout = 5m */
    uint64_t c_to_data;       /* data_timeout = 2m (DATA initiation) */
    uint64_t c_to_data_block; /* data_block_timeout = 3m */
    uint64_t c_to_data_done;  /* data_done_timeout = 10m (final ".") */
    uint64_t c_to_quit;       /* quit_timeout = 10s */

    /* delivery.smarthost parsed: r_domain "*", r_host NULL when no smarthost
     * (cfg_route_for returns it after the exact routes). */
    struct cfg_route c_dlv_smart;

    /* dkim { } : plain data only (config does not include dkim/); the
     * daemon builds the signer from it with dkim_cfg_attach() (dkim.h). */
    bool c_dkim_sign_from;   /* sign_from_domain = true: sign with the From domain's keys */
    char *c_dkim_esp_domain; /* esp_domain = "": also sign with this domain's keys */
    char *c_dkim_canon;      /* canonicalization = "relaxed/relaxed" (validated) */
    char *c_dkim_alg;        /* algorithm = "any" | "rsa-sha256" | "ed25519-sha256" */
    char **c_dkim_headers;   /* headers = [...] (NULL-terminated, lower case; has "from") */
    char **c_dkim_oversign;  /* oversign = ["from"] (NULL-terminated, lower case) */
    bool c_dkim_timestamp;   /* timestamp = true: t= */
    uint64_t c_dkim_expire;  /* expire = 0 (seconds; x= = t= + expire; 0 = no x=) */
    int c_dkim_nkeys;
    cfg_dkim_key_t *c_dkim_keys; /* keys { }: owned array of c_dkim_nkeys */

    /* events { webhooks { NAME { ... } } } (config/webhooks.c, docs/events.md) */
    int c_nwebhooks;
    cfg_webhook_t *c_webhooks;     /* owned array of c_nwebhooks */
    int c_ev_max_backlog;          /* max_backlog = 0: records kept per webhook (0: no bound) */
    uint64_t c_ev_max_backlog_age; /* max_backlog_age = 0: seconds (0: no bound) */
    /* bounces { } : VERP return paths (core/base/verp.c) */
    bool c_verp;                      /* verp = false: MAIL FROM:<bounces+TOKEN@domain> */
    char **c_verp_jobs;               /* verp_jobs = []: jobs sent with VERP whatever else says */
    char *c_bounce_domain;            /* domain = "": the bounce domain */
    char *c_verp_key_file;            /* verp_key_file = "": 32 random bytes (or 64 hex) */
    uint64_t c_verp_max_age;          /* verp_max_age = 30d: a token is good this long */
    uint8_t c_verp_key[VERP_KEY_LEN]; /* read from verp_key_file at load */
    bool c_verp_key_loaded;
    bool c_bounce_inbound;        /* inbound = false: accept reports for the bounce domain */
    char *c_bounce_quarantine;    /* quarantine_dir = "./var/quarantine" */
    int c_bounce_quarantine_max;  /* quarantine_max = 1000 files */
    cfg_addrs_t c_bounce_listen;  /* listen = []: a listener of its own for reports */
    uint64_t c_bounce_max_size;   /* max_message_size = 10M: a report's size limit */
    int c_bounce_max_conn_per_ip; /* max_connections_per_ip = 10 (the reports listener) */
    int c_bounce_rate;            /* max_messages_per_minute = 600 reports per client IP */

    /* suppression { } : the suppression list (queue/suppress.c) */
    bool c_supp_enabled;            /* enabled = false: enforce at RCPT, feed from bounces */
    char *c_supp_action;            /* action = "reject" (550 5.7.1) | "drop" (250, no delivery) */
    char **c_supp_categories;       /* categories = bad-mailbox, bad-domain, inactive-mailbox */
    bool c_supp_complaints;         /* complaints = true: every ARF complaint suppresses */
    char *c_supp_scope;             /* scope = "global" | "auth_user" */
    char *c_supp_scope_header;      /* scope_header = "": a header naming the tenant's list */
    char **c_supp_fold_domains;     /* fold_domains = []: dots and +tags folded (Gmail) */
    char **c_supp_case_domains;     /* case_domains = []: local part kept case-sensitive */
    uint64_t c_supp_expire_bounces; /* expire_bounces = 0 (seconds, 0 = never) */
    uint64_t c_supp_expire_complaints; /* expire_complaints = 0 */

    /* cluster { } : limits shared through Redis (delivery/cluster.c) */
    char *c_cl_redis;           /* redis = ["redis://ip:port"] ("" = one node, nothing shared) */
    char *c_cl_node;            /* node = "" (= hostname): this node's name in Redis */
    char *c_cl_prefix;          /* prefix = "sluice": of every Redis key */
    uint64_t c_cl_lease_ttl_ms; /* lease_ttl = 10s: connection slot leases */
    uint64_t c_cl_timeout_ms;   /* timeout = 200ms: a Redis call slower than this = down */

    /* Objects other modules build from this snapshot (config cannot include
     * them): see cfg_ext_set(). */
    void *c_ext[4];
    void (*c_ext_free[4])(void *);
} cfg_t;

/* Slots of cfg_t.c_ext. */
typedef enum { CFG_EXT_DKIM = 0, CFG_EXT_MAX = 4 } cfg_ext_t;

/* TLS policies (delivery). */
enum { CFG_TLS_OPPORTUNISTIC = 0, CFG_TLS_DISABLED, CFG_TLS_REQUIRED, CFG_TLS_VERIFY };

/* Load and validate a file. On success returns 0 and *out (refs = 1). On
 * failure returns SL_ECONFIG and writes "file:line: message" into err.
 * Any thread. */
int cfg_load(const char *path, cfg_t **out, char *err, size_t errlen);
/* Parse from a string (used for the embedded default and by tests); name is
 * used in error messages. */
int cfg_load_string(const char *name, const char *text, cfg_t **out, char *err, size_t errlen);
/* The embedded default configuration of the layout (cfg_set_layout): what
 * `sluiced` runs with no -c in the build tree. */
int cfg_default(cfg_t **out, char *err, size_t errlen);
/* The layout's default text, for `sluiced --print-default-config`: the
 * build tree's embedded default, or the /etc/sluice/sluice.conf an
 * installed sluice ships. */
const char *cfg_default_text(void);

/*
 * Compiled-in default paths come in two layouts (docs/operations.md,
 * "Deploying"). CFG_LAYOUT_BUILD: everything under ./var, for `make run`
 * and the tests; `sluiced` with no -c runs on the embedded default.
 * CFG_LAYOUT_FHS: the paths of an installed sluiced (the binaries that
 * `cmake --install` and the Debian package install); `sluiced` with no -c
 * reads CFG_FHS_CONFIG. The layout changes the defaults of spool.path,
 * log.accounting_dir, control.socket, smtp.tls.dir and
 * bounces.quarantine_dir, and the default
 * text; sluicectl (which does not link config/) takes its socket from
 * the same macros. The systemd unit, the logrotate file and the package's
 * scripts (config/systemd, config/logrotate, config/debian) name the same
 * paths; tests/e2e/test_install.py checks that they agree.
 */
typedef enum { CFG_LAYOUT_BUILD = 0, CFG_LAYOUT_FHS } cfg_layout_t;
#define CFG_BUILD_SOCKET "./var/sluiced.sock"
#define CFG_FHS_CONFIG "/etc/sluice/sluice.conf"
#define CFG_FHS_SPOOL "/var/spool/sluice"
#define CFG_FHS_LOG_DIR "/var/log/sluice"
#define CFG_FHS_SOCKET "/run/sluice/sluiced.sock"
#define CFG_FHS_TLS_DIR "/var/lib/sluice/tls"
#define CFG_FHS_QUARANTINE "/var/lib/sluice/quarantine"
#define CFG_FHS_USER "sluice" /* the system user the package creates */
/* Choose the layout of every later load (default CFG_LAYOUT_BUILD). Main
 * thread, once, before any load and before any other thread runs. */
void cfg_set_layout(cfg_layout_t layout);
cfg_layout_t cfg_layout(void);

/* Attach an object built from c by a module config cannot depend on (the
 * DKIM signer, built from c's dkim section): freed with free_fn when the
 * snapshot is freed. Only while c is not shared yet (refcount 1, before
 * cfg_set_current or any thread sees it) and once per slot: the snapshot
 * stays immutable once shared. Thread: the thread that loaded c. */
void cfg_ext_set(cfg_t *c, cfg_ext_t slot, void *obj, void (*free_fn)(void *));
/* The object in slot, or NULL. Borrowed: valid while the caller holds c.
 * Any thread. */
void *cfg_ext_get(const cfg_t *c, cfg_ext_t slot);
/* A function every load (cfg_load, cfg_load_string, cfg_default) runs on
 * the validated snapshot before returning it, to attach what other modules
 * build from it (sluiced registers dkim_cfg_attach, so start-up,
 * --check-config and reload all parse the DKIM keys). Its failure (non-zero,
 * message in err) is the load's failure. NULL = none. Main thread, once,
 * before any other thread runs. */
typedef int (*cfg_attach_fn)(cfg_t *c, char *err, size_t errlen);
void cfg_set_attach(cfg_attach_fn fn);

/* Take / drop a reference; the last cfg_unref frees the snapshot (NULL is
 * fine). Any thread. */
cfg_t *cfg_ref(cfg_t *c);
void cfg_unref(cfg_t *c);

/* The process-wide current snapshot. cfg_current() returns a new reference
 * (caller unrefs). cfg_set_current() takes over the caller's reference and
 * drops the old one. Any thread. */
cfg_t *cfg_current(void);
void cfg_set_current(cfg_t *c);

/* Parse helpers, exposed for other modules' rule files and tests. */
int cfg_parse_duration(const char *s, uint64_t *seconds); /* "30s" "5m" "1h" "5d" "90" */
int cfg_parse_size(const char *s, uint64_t *bytes);       /* "512" "64K" "50M" "16G" */
/* An http.tokens value "inject,read:<64 hex digits>": the scopes
 * (CFG_SCOPE_*, admin implies read) and the SHA-256 of the token. */
int cfg_parse_token(const char *s, unsigned char hash[32], unsigned *scopes);
/* Parse "5m,10m,30m" into at most max seconds values. Returns the count or
 * SL_EPARSE. */
int cfg_parse_duration_list(const char *s, uint64_t *out, int max);
/* The TLS policy for a recipient domain (exact match, then parent domains
 * ".example.org" style entries, then c_dlv_tls_default). */
int cfg_tls_policy_for(const cfg_t *c, const char *domain);
/* True when a tls_policy { } entry (exact or parent) names the domain: it
 * then wins over the domain's MTA-STS policy (delivery/mta_sts.c). */
bool cfg_tls_policy_explicit(const cfg_t *c, const char *domain);
/* delivery.dnssec = "trust-ad": the resolver's AD bit is trusted (DANE).
 * Read from the text, which a reload keeps at its running value. */
bool cfg_dnssec_trust_ad(const cfg_t *c);
/* The static route for a domain (exact match, then the smarthost), or NULL
 * when MX lookup applies. */
const struct cfg_route *cfg_route_for(const cfg_t *c, const char *domain);

/* The schema's keys, for docs and tests: the i-th key's dotted path
 * ("smtp.tls.cert") with *default_text set to its default as written in a
 * config file (in the layout in force), or NULL when i is past the last
 * key. Any thread. */
const char *cfg_key_name(int i, const char **default_text);

/* How reload treats a key (the schema's reload column, docs/operations.md):
 * LIVE, the running daemon takes the new value at once; RESTART, it is read
 * at start-up only and keeps its running value until a restart. UNSET is
 * never in the schema (the unit test checks). */
typedef enum { CFG_APPLY_UNSET = 0, CFG_APPLY_LIVE, CFG_APPLY_RESTART } cfg_apply_t;
/* The i-th key's reload column (CFG_APPLY_UNSET past the last key). Any
 * thread. */
cfg_apply_t cfg_key_apply(int i);
/* True when the i-th key has a different value in a and b. Any thread. */
bool cfg_key_changed(int i, const cfg_t *a, const cfg_t *b);
/* Reload: give nc (a snapshot nobody shares yet) old's value of every key
 * whose column is RESTART, so that no thread ever half-applies one. Any
 * thread. */
void cfg_keep_restart(cfg_t *nc, const cfg_t *old);

/* ------------------------------------------------------------ the syntax tree
 *
 * What config/parse.c builds from a file in the config syntax, for the
 * schema walk in config.c and for the delivery module's own files in the
 * same syntax (bounce rules, shaping, virtual MTAs). Every node keeps the
 * line it came from so that every error can say "file:line". The tree owns
 * all its strings; cfg_tree_free() frees it. */

typedef enum { CFG_NODE_STR = 0, CFG_NODE_LIST, CFG_NODE_SECTION } cfg_node_type_t;

typedef struct cfg_node {
    cfg_node_type_t n_type;
    char *n_key;              /* entry name (NULL for list items) */
    int n_key_line;           /* line of the key */
    char *n_str;              /* CFG_NODE_STR: the value with escapes resolved */
    bool n_quoted;            /* the value was written as a quoted string */
    int n_line;               /* line of the value, or of its '{' / '[' */
    struct cfg_node *n_child; /* LIST items or SECTION entries, in file order */
    struct cfg_node *n_next;
} cfg_node_t;

/* Parse text (len bytes, need not be NUL-terminated) into a tree whose root
 * is a SECTION. On failure returns SL_EPARSE and writes "name:line: what"
 * into err. Any thread. */
int cfg_tree_parse(const char *name, const char *text, size_t len, cfg_node_t **out, char *err,
                   size_t errlen);
/* The error of a file in the config syntax, "name:line: what", into err
 * (errlen bytes). Returns SL_ECONFIG. Any thread. */
int cfg_error(char *err, size_t errlen, const char *name, int line, const char *fmt, ...)
    PRINTF_LIKE(5, 6);
int cfg_verror(char *err, size_t errlen, const char *name, int line, const char *fmt, va_list ap);
/* Free a tree (NULL is fine). */
void cfg_tree_free(cfg_node_t *n);

#endif /* SLUICE_CONFIG_H */
