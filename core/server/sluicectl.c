/*
 * sluicectl.c - the operator's client for sluiced's control socket.
 *
 *   sluicectl [-s SOCKET] [--json] COMMAND [ARGS]
 *
 * Sends one JSON request line, reads one JSON response line and prints it
 * as a human table (default) or as-is (--json). Commands: status, list
 * [--limit N], inspect ID, check, shutdown, log-rotate, raw JSON; any other
 * word is sent as {"cmd":WORD[,"args":[...]]} so that newer daemon
 * commands work before this client knows how to print them.
 *
 * Exit codes: 0 ok, 1 the daemon answered ok:false, 2 usage error,
 * 3 cannot connect or talk to the daemon, or the process listening on the
 * socket is not root, the invoking user or --owner (peer_trusted).
 *
 * What comes back may hold a remote server's bytes (replies, job names):
 * the human forms print from tty_clean()'s copy, where every string went
 * through tty_str_append; --json prints the line through
 * json_text_sanitize (core/base/jsontext.c, docs/records.md).
 *
 * Plain blocking sockets with a 30 s timeout; links only sluice_base.
 * Built twice, as sluiced is (main.c): the build tree's sluicectl looks for
 * ./var/sluiced.sock, the installed one (SLUICE_LAYOUT_FHS) for
 * /run/sluice/sluiced.sock and also trusts the package's `sluice` user,
 * which the systemd unit runs sluiced as.
 * Thread: single-threaded program.
 */
#include "core/base/base.h"
#include "config/config.h" /* the layouts' paths: macros only, nothing linked */
#include "core/server/sluicectl_int.h"

#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define EXIT_OK 0
#define EXIT_REFUSED 1
#define EXIT_USAGE 2
#define EXIT_CONNECT 3

#ifdef SLUICE_LAYOUT_FHS
#define CTL_DEFAULT_SOCKET CFG_FHS_SOCKET
#define CTL_DEFAULT_OWNER CFG_FHS_USER /* trusted when that user exists */
#define CTL_OWNER_HELP ", and " CFG_FHS_USER
#else
#define CTL_DEFAULT_SOCKET CFG_BUILD_SOCKET
#define CTL_DEFAULT_OWNER ""
#define CTL_OWNER_HELP ""
#endif
#define CTL_TIMEOUT_S 30
#define CTL_MAX_RESPONSE (1024u * 1024u * 1024u)

static void usage(FILE *f);
static int talk(const char *path, const char *line, uid_t owner, buf_t *resp);
static int peer_trusted(int fd, const char *path, uid_t owner);
static json_object *tty_clean(json_object *v);
static char *tty_strdup(const char *s, size_t len, bool keep_newlines);
static uint64_t get_time(json_object *o, const char *key);
static int utf8_cut(const char *s, int max);
static void print_status(json_object *r);
static void print_list(json_object *r);
static void print_inspect(json_object *r);
static int print_check(json_object *r);
static int build_request(const char *const *pos, int npos, const char *limit, char **line);
static int build_ops_request(const char *const *pos, int npos, const char *limit,
                             json_object **out);
static bool print_ops(const char *cmd, json_object *r);
static char *fmt_response(json_object *d);

static void usage(FILE *f)
{
    fputs("usage: sluicectl [-s SOCKET] [--json] COMMAND [ARGS]\n"
          "\n"
          "commands:\n"
          "  status               daemon, queue and reception counters\n"
          "  list [--limit N]     messages in the queue, oldest first\n"
          "  inspect ID           one message and its recipients\n"
          "  check                spool integrity check\n"
          "  shutdown             graceful shutdown of sluiced\n"
          "  log-rotate           reopen the log and accounting files\n"
          "  queues [--limit N]   destinations by queued recipients (default top 20)\n"
          "  queue DOMAIN         one destination: counts, oldest, last response, hold\n"
          "  suspend DOMAIN|--job JOB|--all [--for DURATION]\n"
          "                       hold delivery (kept across restarts; --for: expires)\n"
          "  suspend --provider NAME|--vmta NAME [--for DURATION]\n"
          "                       stop sending to a provider / from a virtual MTA (traffic\n"
          "                       shaping; until resumed or restarted)\n"
          "  resume DOMAIN|--job JOB|--all|--provider NAME|--vmta NAME\n"
          "                       end a hold (--all: every hold) or a suspension\n"
          "  suspended            the holds in force\n"
          "  retry DOMAIN|--all   make deferred recipients due now\n"
          "  bounce [--domain D] [--job J] [--sender S] [--older-than DURATION] [--yes]\n"
          "                       remove and bounce the matching recipients (no filter:\n"
          "                       every recipient, only with --yes)\n"
          "  reload               re-read the configuration file (as SIGHUP)\n"
          "  metrics [--openmetrics]\n"
          "                       every counter and gauge: Prometheus text format, or\n"
          "                       OpenMetrics 1.0\n"
          "  providers            traffic shaping: providers, queues per virtual MTA, mode, rate\n"
          "  cluster              nodes sharing limits through Redis: nodes, leases, state\n"
          "  events [unpark NAME] the event stream's webhooks: cursor, lag, in flight, parked,\n"
          "                       last error; unpark: send NAME's parked batches again\n"
          "  events replay NAME --since TIME [--until TIME]\n"
          "                       send NAME the accounting files' records of that time again\n"
          "  suppress add ADDR... [--scope S] [--reason R] [--expires DURATION]\n"
          "  suppress remove ADDR... [--scope S]\n"
          "  suppress check ADDR | list [--scope S] [--reason R] [--limit N]\n"
          "  suppress import FILE [--scope S] [--reason R] | export [--scope S] [--reason R]\n"
          "                       the suppression list (CSV: address,reason,time,scope)\n"
          "  tlsrpt [YYYY-MM-DD]  TLSRPT counters (RFC 8460) of today (UTC) or of that day\n"
          "  tlsrpt send --now    send the pending TLSRPT reports, today's included\n"
          "  raw 'JSON'           send one raw request line, print the answer\n"
          "\n"
          "options:\n"
          "  -s, --socket PATH    control socket (default $SLUICE_SOCKET or " CTL_DEFAULT_SOCKET
          ")\n"
          "  --json               print the daemon's JSON answer (strings as valid UTF-8,\n"
          "                       control characters escaped)\n"
          "  --owner USER         also trust a socket served by USER (default: only root\n"
          "                       and yourself" CTL_OWNER_HELP "; or $SLUICE_SOCKET_OWNER)\n"
          "  -V, --version        print the version and exit\n"
          "  -h, --help           this help\n"
          "\n"
          "exit codes: 0 ok, 1 the daemon refused the command, 2 usage error,\n"
          "            3 cannot connect to the daemon (or it runs as an untrusted user)\n",
          f);
}

static int usage_error(const char *fmt, const char *arg)
{
    fputs("sluicectl: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs("\n", stderr);
    usage(stderr);
    return EXIT_USAGE;
}

/* ------------------------------------------------------------ transport */

/* Connect, send line + "\n", read one answer line into resp. Returns 0 or
 * EXIT_CONNECT after printing why. */
/* Is the process listening on the connected socket fd one to trust? A
 * socket in a world-writable folder can belong to anyone: its listener
 * would read the command and could answer anything. The kernel recorded
 * the listener's credentials at listen() (SO_PEERCRED), so this holds
 * whatever happens to the path: trusted are root, the invoking user and
 * owner (--owner; (uid_t)-1 = none). 0, or EXIT_CONNECT after saying why. */
static int peer_trusted(int fd, const char *path, uid_t owner)
{
    struct ucred cr;
    socklen_t len = sizeof(cr);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) != 0) {
        fprintf(stderr, "sluicectl: %s: cannot tell who listens on it: %s\n", path,
                strerror(errno));
        return EXIT_CONNECT;
    }
    if (cr.uid == 0 || cr.uid == geteuid() || (owner != (uid_t)-1 && cr.uid == owner))
        return 0;
    struct passwd *pw = getpwuid(cr.uid);
    char name[64];
    if (pw != NULL)
        snprintf(name, sizeof(name), "%s", pw->pw_name);
    else
        snprintf(name, sizeof(name), "%u", (unsigned)cr.uid);
    fprintf(stderr,
            "sluicectl: refusing to talk to %s: the process listening on it (pid %d) runs as "
            "%s (uid %u), neither root nor you; if that is sluiced's user, say so with "
            "--owner %s\n",
            path, (int)cr.pid, name, (unsigned)cr.uid, name);
    return EXIT_CONNECT;
}

static int talk(const char *path, const char *line, uid_t owner, buf_t *resp)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sun.sun_path)) {
        fprintf(stderr, "sluicectl: socket path too long: %s\n", path);
        return EXIT_CONNECT;
    }
    memcpy(sun.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "sluicectl: socket: %s\n", strerror(errno));
        return EXIT_CONNECT;
    }
    struct timeval tv = {.tv_sec = CTL_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
        int e = errno;
        if (e == EACCES || e == EPERM)
            fprintf(stderr,
                    "sluicectl: permission denied on %s (the control socket is owner-only; "
                    "run as the user sluiced runs as)\n",
                    path);
        else
            fprintf(stderr, "sluicectl: cannot connect to %s: %s (is sluiced running?)\n", path,
                    strerror(e));
        close(fd);
        return EXIT_CONNECT;
    }
    if (peer_trusted(fd, path, owner) != 0) {
        close(fd);
        return EXIT_CONNECT;
    }

    size_t len = strlen(line);
    char *out = xmalloc(len + 1);
    memcpy(out, line, len);
    out[len++] = '\n';
    for (size_t off = 0; off < len;) {
        ssize_t n = send(fd, out + off, len - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "sluicectl: sending to %s: %s\n", path,
                    errno == EAGAIN ? "timed out" : strerror(errno));
            free(out);
            close(fd);
            return EXIT_CONNECT;
        }
        off += (size_t)n;
    }
    free(out);

    for (;;) {
        char *nl = resp->b_len ? memchr(resp->b_data, '\n', resp->b_len) : NULL;
        if (nl != NULL) {
            resp->b_len = (size_t)(nl - resp->b_data);
            resp->b_data[resp->b_len] = '\0';
            break;
        }
        if (resp->b_len > CTL_MAX_RESPONSE) {
            fprintf(stderr, "sluicectl: answer from %s is too big\n", path);
            close(fd);
            return EXIT_CONNECT;
        }
        buf_reserve(resp, 65536);
        ssize_t n = recv(fd, resp->b_data + resp->b_len, resp->b_cap - resp->b_len - 1, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            fprintf(stderr, "sluicectl: no answer from %s within %d s\n", path, CTL_TIMEOUT_S);
            close(fd);
            return EXIT_CONNECT;
        }
        if (n < 0) {
            fprintf(stderr, "sluicectl: reading from %s: %s\n", path, strerror(errno));
            close(fd);
            return EXIT_CONNECT;
        }
        if (n == 0) {
            fprintf(stderr, "sluicectl: %s closed the connection without an answer\n", path);
            close(fd);
            return EXIT_CONNECT;
        }
        resp->b_len += (size_t)n;
    }
    close(fd);
    return 0;
}

int sctl_talk(const char *path, const char *line, uid_t owner, buf_t *resp)
{
    return talk(path, line, owner, resp);
}

/* ------------------------------------------------------------ formatting */

static json_object *get(json_object *o, const char *key)
{
    json_object *v = NULL;
    if (o == NULL || !json_object_object_get_ex(o, key, &v))
        return NULL;
    return v;
}

static uint64_t get_u64(json_object *o, const char *key)
{
    json_object *v = get(o, key);
    return v ? json_object_get_uint64(v) : 0;
}

static const char *get_str(json_object *o, const char *key)
{
    json_object *v = get(o, key);
    return v && !json_object_is_type(v, json_type_null) ? json_object_get_string(v) : NULL;
}

/* The same accessors for sluicectl's other files (sluicectl_int.h). */
json_object *sctl_get(json_object *o, const char *key)
{
    return get(o, key);
}

uint64_t sctl_get_u64(json_object *o, const char *key)
{
    return get_u64(o, key);
}

const char *sctl_get_str(json_object *o, const char *key)
{
    return get_str(o, key);
}

/* A point in time of the answer as unix seconds: an RFC 3339 string (the
 * daemon's form, docs/records.md), or a number from an older daemon; 0
 * for null or absent. */
static uint64_t time_value(json_object *v)
{
    uint64_t us;
    if (v != NULL && json_object_is_type(v, json_type_string))
        return time_parse_rfc3339(json_object_get_string(v), &us) == 0 ? us / 1000000 : 0;
    if (v != NULL && json_object_is_type(v, json_type_int))
        return json_object_get_uint64(v);
    return 0;
}

static uint64_t get_time(json_object *o, const char *key)
{
    return time_value(get(o, key));
}

/* s made safe for a terminal (jsontext.c): caller frees. */
static char *tty_strdup(const char *s, size_t len, bool keep_newlines)
{
    buf_t b;
    buf_init(&b, len + 1);
    tty_str_append(&b, s, len, keep_newlines);
    buf_append(&b, "", 1);
    return buf_steal(&b, NULL);
}

/* A copy of v with every string and key made safe for a terminal: the
 * human forms print only from it, so no byte a remote server or a client
 * chose (replies, job names) reaches the terminal as a control character.
 * Caller puts it. */
static json_object *tty_clean(json_object *v)
{
    if (json_object_is_type(v, json_type_string)) {
        char *t =
            tty_strdup(json_object_get_string(v), (size_t)json_object_get_string_len(v), false);
        json_object *o = json_object_new_string(t);
        free(t);
        return o;
    }
    if (json_object_is_type(v, json_type_array)) {
        size_t n = json_object_array_length(v);
        json_object *a = json_object_new_array_ext((int)n);
        for (size_t i = 0; i < n; i++)
            json_object_array_add(a, tty_clean(json_object_array_get_idx(v, i)));
        return a;
    }
    if (json_object_is_type(v, json_type_object)) {
        json_object *o = json_object_new_object();
        json_object_object_foreach(v, key, val)
        {
            char *k = tty_strdup(key, strlen(key), false);
            json_object_object_add(o, k, tty_clean(val));
            free(k);
        }
        return o;
    }
    return json_object_get(v); /* numbers, booleans, null: nothing to show */
}

static char *fmt_time(uint64_t t, char *dst, size_t len)
{
    if (t == 0) {
        snprintf(dst, len, "-");
        return dst;
    }
    time_t tt = (time_t)t;
    struct tm tm;
    localtime_r(&tt, &tm);
    strftime(dst, len, "%Y-%m-%d %H:%M:%S", &tm);
    return dst;
}

/* A two-column table, aligned on the widest label of all sections. */
typedef struct row {
    char *label; /* NULL: a section title in value */
    char *value;
} row_t;

typedef struct table {
    row_t *rows;
    size_t n, cap;
} table_t;

static void table_add(table_t *t, const char *label, char *value)
{
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 32;
        t->rows = xrealloc(t->rows, t->cap * sizeof(*t->rows));
    }
    t->rows[t->n].label = label ? xstrdup(label) : NULL;
    t->rows[t->n].value = value;
    t->n++;
}

static void table_print(table_t *t)
{
    int w = 0;
    for (size_t i = 0; i < t->n; i++)
        if (t->rows[i].label && (int)strlen(t->rows[i].label) > w)
            w = (int)strlen(t->rows[i].label);
    for (size_t i = 0; i < t->n; i++) {
        if (t->rows[i].label == NULL)
            printf("%s\n", t->rows[i].value);
        else
            printf("  %-*s  %s\n", w, t->rows[i].label, t->rows[i].value);
        free(t->rows[i].label);
        free(t->rows[i].value);
    }
    free(t->rows);
}

enum { K_NUM, K_BYTES, K_DUR, K_STR };

typedef struct field {
    const char *key;
    const char *label;
    int kind;
} field_t;

static char *fmt_value(json_object *v, int kind)
{
    char tmp[64];
    if (v == NULL)
        return xstrdup("-");
    switch (kind) {
    case K_BYTES:
        return xstrdup(ctl_fmt_bytes(json_object_get_uint64(v), tmp, sizeof(tmp)));
    case K_DUR:
        return xstrdup(ctl_fmt_duration(json_object_get_uint64(v), tmp, sizeof(tmp)));
    case K_NUM:
        if (json_object_is_type(v, json_type_int))
            return xasprintf("%" PRIu64, json_object_get_uint64(v));
        /* fall through */
    default:
        if (json_object_is_type(v, json_type_string))
            return xstrdup(json_object_get_string(v));
        return xstrdup(json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN));
    }
}

static bool field_known(const field_t *f, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(f[i].key, key) == 0)
            return true;
    return false;
}

/* Rows for the known fields of obj, then for any it does not know yet. */
static void table_section(table_t *t, const char *title, json_object *obj, const field_t *f,
                          size_t n, const char *const *skip)
{
    table_add(t, NULL, xstrdup(title));
    for (size_t i = 0; i < n; i++) {
        json_object *v = get(obj, f[i].key);
        if (v != NULL)
            table_add(t, f[i].label, fmt_value(v, f[i].kind));
    }
    json_object_object_foreach(obj, key, val)
    {
        bool skipped = false;
        for (size_t i = 0; skip && skip[i]; i++)
            skipped |= strcmp(skip[i], key) == 0;
        if (skipped || field_known(f, n, key) || json_object_is_type(val, json_type_object) ||
            json_object_is_type(val, json_type_array))
            continue;
        char *label = xstrdup(key);
        for (char *p = label; *p; p++)
            if (*p == '_')
                *p = ' ';
        table_add(t, label, fmt_value(val, K_NUM));
        free(label);
    }
}

static void print_status(json_object *r)
{
    static const field_t daemon[] = {
        {"version", "version", K_STR},
        {"pid", "pid", K_NUM},
        {"uptime_s", "uptime", K_DUR},
        {"hostname", "hostname", K_STR},
    };
    static const field_t queue[] = {
        {"messages", "messages", K_NUM},
        {"recipients", "recipients", K_NUM},
        {"pending_commits", "pending commits", K_NUM},
        {"spool_used_bytes", "spool used", K_BYTES},
        {"spool_map_bytes", "spool map size", K_BYTES},
        {"spool_max_bytes", "spool max size", K_BYTES},
        {"commits", "commits", K_NUM},
        {"received", "received", K_NUM},
        {"commit_errors", "commit errors", K_NUM},
        {"active_bytes", "bytes in delivery", K_BYTES},
        {"active_limit_bytes", "bytes in delivery max", K_BYTES},
    };
    static const field_t smtp[] = {
        {"connections_current", "connections now", K_NUM},
        {"connections_total", "connections total", K_NUM},
        {"connections_refused", "connections refused", K_NUM},
        {"messages_accepted", "messages accepted", K_NUM},
        {"messages_rejected", "messages rejected", K_NUM},
        {"recipients_accepted", "recipients accepted", K_NUM},
        {"recipients_rejected", "recipients rejected", K_NUM},
        {"auth_ok", "auth ok", K_NUM},
        {"auth_failed", "auth failed", K_NUM},
        {"tls_sessions", "TLS sessions", K_NUM},
        {"bytes_received", "bytes received", K_BYTES},
        {"memory_bytes", "message memory", K_BYTES},
        {"memory_limit_bytes", "message memory max", K_BYTES},
        {"memory_refused", "refused for memory", K_NUM},
    };
    static const field_t dlv[] = {
        {"connections_current", "connections now", K_NUM},
        {"connections_total", "connections total", K_NUM},
        {"connections_failed", "connections failed", K_NUM},
        {"transactions", "transactions", K_NUM},
        {"delivered", "recipients delivered", K_NUM},
        {"deferred", "recipients deferred", K_NUM},
        {"bounced", "recipients bounced", K_NUM},
        {"tls_sessions", "TLS sessions", K_NUM},
        {"tls_resumed", "TLS resumed", K_NUM},
        {"dns_lookups", "DNS lookups", K_NUM},
        {"dns_cache_hits", "DNS cache hits", K_NUM},
        {"destinations_down", "destinations down", K_NUM},
    };
    static const char *const daemon_skip[] = {"ok", NULL};
    static const char *const queue_skip[] = {"spool_fill_pct", NULL};
    table_t t = {0};

    table_section(&t, "Daemon", r, daemon, ARRAY_SIZE(daemon), daemon_skip);
    json_object *q = get(r, "queue");
    if (q != NULL) {
        table_section(&t, "Queue", q, queue, ARRAY_SIZE(queue), queue_skip);
        /* "spool used  1.2 MiB (3% of 64.0 GiB)" reads better than 3 rows. */
        for (size_t i = 0; i < t.n; i++) {
            if (t.rows[i].label && strcmp(t.rows[i].label, "spool used") == 0) {
                char max[32];
                char *v = xasprintf("%s (%" PRIu64 "%% of %s)", t.rows[i].value,
                                    get_u64(q, "spool_fill_pct"),
                                    ctl_fmt_bytes(get_u64(q, "spool_max_bytes"), max, sizeof(max)));
                free(t.rows[i].value);
                t.rows[i].value = v;
            }
        }
    }
    json_object *s = get(r, "smtp");
    if (s != NULL)
        table_section(&t, "SMTP reception", s, smtp, ARRAY_SIZE(smtp), NULL);
    json_object *dl = get(r, "delivery");
    if (dl != NULL)
        table_section(&t, "Delivery", dl, dlv, ARRAY_SIZE(dlv), NULL);
    /* Sections a newer daemon adds. */
    json_object_object_foreach(r, key, val)
    {
        if (json_object_is_type(val, json_type_object) && strcmp(key, "queue") != 0 &&
            strcmp(key, "smtp") != 0 && strcmp(key, "delivery") != 0 && strcmp(key, "cluster") != 0)
            table_section(&t, key, val, NULL, 0, NULL);
    }
    table_print(&t);
    sctl_print_status_cluster(get(r, "cluster"));
}

/* The bytes of s to print to show at most max bytes without cutting a
 * UTF-8 sequence in two (s is valid UTF-8: tty_clean made it so). */
static int utf8_cut(const char *s, int max)
{
    int n = (int)strnlen(s, (size_t)max + 1);
    if (n <= max)
        return n;
    n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
        n--; /* s[n] continues a sequence that starts before it */
    return n;
}

int sctl_utf8_cut(const char *str, int max)
{
    return utf8_cut(str, max);
}

/* A grid of n rows of ncol owned cells (row-major) under a header line,
 * columns as wide as their widest cell (the last one is not padded, and
 * cut at last_max bytes unless 0); bit j of right aligns column j right.
 * Nothing is printed for no rows. Frees the cells and the array. */
static void grid_print(const char *const *hdr, int ncol, char **cells, size_t n, unsigned right,
                       int last_max)
{
    int w[16];
    SL_ASSERT(ncol <= (int)ARRAY_SIZE(w));
    for (int j = 0; j < ncol; j++)
        w[j] = (int)strlen(hdr[j]);
    for (size_t i = 0; i < n * (size_t)ncol; i++)
        if ((int)strlen(cells[i]) > w[i % (size_t)ncol])
            w[i % (size_t)ncol] = (int)strlen(cells[i]);
    for (size_t i = 0; n > 0 && i <= n; i++) { /* i == 0: the header */
        for (int j = 0; j < ncol; j++) {
            const char *c = i == 0 ? hdr[j] : cells[(i - 1) * (size_t)ncol + (size_t)j];
            if (j + 1 == ncol)
                printf("%.*s\n", last_max > 0 && i > 0 ? utf8_cut(c, last_max) : INT_MAX, c);
            else
                printf(i > 0 && (right >> j & 1u) ? "%*s  " : "%-*s  ", w[j], c);
        }
    }
    for (size_t i = 0; i < n * (size_t)ncol; i++)
        free(cells[i]);
    free(cells);
}

static void print_list(json_object *r)
{
    static const char *const hdr[] = {"ID", "ARRIVAL", "SIZE", "RCPTS", "SENDER", "JOB"};
    enum { NCOL = 6 };
    json_object *msgs = get(r, "messages");
    size_t n =
        msgs && json_object_is_type(msgs, json_type_array) ? json_object_array_length(msgs) : 0;
    char **cells = xcalloc(n * NCOL + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        json_object *m = json_object_array_get_idx(msgs, i);
        char tmp[64];
        char **row = cells + i * NCOL;
        const char *id = get_str(m, "id");
        const char *sender = get_str(m, "sender");
        const char *job = get_str(m, "job");
        json_object *rc = get(m, "recipients");
        uint64_t nrcpt = rc && json_object_is_type(rc, json_type_array)
                             ? json_object_array_length(rc)
                             : get_u64(m, "rcpts");
        row[0] = xstrdup(id ? id : "?");
        row[1] = xstrdup(fmt_time(get_time(m, "arrival"), tmp, sizeof(tmp)));
        row[2] = xstrdup(ctl_fmt_bytes(get_u64(m, "size"), tmp, sizeof(tmp)));
        row[3] = xasprintf("%" PRIu64, nrcpt);
        row[4] = sender == NULL || sender[0] == '\0' ? xstrdup("<>") : xstrdup(sender);
        row[5] = xstrdup(job && job[0] ? job : "-");
    }
    grid_print(hdr, NCOL, cells, n, 1u << 2 | 1u << 3, 0); /* SIZE, RCPTS right-aligned */
    uint64_t total = get(r, "total") ? get_u64(r, "total") : n;
    if (total > n)
        printf("%" PRIu64 " messages (%zu shown; use --limit N)\n", total, n);
    else
        printf("%" PRIu64 " message%s\n", total, total == 1 ? "" : "s");
}

static bool is_time_key(const char *k)
{
    size_t n = strlen(k);
    return strcmp(k, "arrival") == 0 || strcmp(k, "next_attempt") == 0 ||
           (n > 3 && strcmp(k + n - 3, "_at") == 0) || (n > 5 && strcmp(k + n - 5, "_time") == 0);
}

static char *fmt_field(const char *key, json_object *v)
{
    char tmp[64];
    if (is_time_key(key) &&
        (json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_string)))
        return xstrdup(fmt_time(time_value(v), tmp, sizeof(tmp)));
    if (json_object_is_type(v, json_type_int) && strcmp(key, "size") == 0)
        return xasprintf("%" PRIu64 " (%s)", json_object_get_uint64(v),
                         ctl_fmt_bytes(json_object_get_uint64(v), tmp, sizeof(tmp)));
    return fmt_value(v, K_NUM);
}

static void print_inspect(json_object *r)
{
    json_object *m = get(r, "message");
    if (m == NULL)
        m = r;
    table_t t = {0};
    int w = 0;
    json_object_object_foreach(m, k1, v1)
    {
        if (strcmp(k1, "ok") == 0 || json_object_is_type(v1, json_type_array) ||
            json_object_is_type(v1, json_type_object))
            continue;
        table_add(&t, k1, fmt_field(k1, v1));
        if ((int)strlen(k1) > w)
            w = (int)strlen(k1);
    }
    for (size_t i = 0; i < t.n; i++) {
        printf("%s:%*s %s\n", t.rows[i].label, w - (int)strlen(t.rows[i].label), "",
               t.rows[i].value);
        free(t.rows[i].label);
        free(t.rows[i].value);
    }
    free(t.rows);
    json_object *rc = get(m, "recipients");
    if (rc == NULL || !json_object_is_type(rc, json_type_array))
        return;
    size_t n = json_object_array_length(rc);
    printf("recipients (%zu):\n", n);
    for (size_t i = 0; i < n; i++) {
        json_object *x = json_object_array_get_idx(rc, i);
        const char *addr = get_str(x, "addr");
        printf("  %s", addr ? addr : "?");
        json_object_object_foreach(x, k, v)
        {
            if (strcmp(k, "addr") == 0 || strncmp(k, "last_", 5) == 0 ||
                json_object_is_type(v, json_type_null))
                continue;
            char *s = fmt_field(k, v);
            printf("  %s=%s", k, s);
            free(s);
        }
        printf("\n");
        if (get_str(x, "last_text") != NULL || get_u64(x, "last_code") != 0) {
            char *resp = fmt_response(x); /* "451 4.7.1 try later" */
            printf("      last response: %s\n", resp);
            free(resp);
        }
    }
}

/* Returns the exit code: 1 when the spool has problems. */
static int print_check(json_object *r)
{
    json_object *c = get(r, "consistent");
    bool ok = c == NULL || json_object_get_boolean(c);
    json_object *probs = get(r, "problems");
    size_t np =
        probs && json_object_is_type(probs, json_type_array) ? json_object_array_length(probs) : 0;
    printf("spool %s: %" PRIu64 " messages, %" PRIu64 " recipients, %" PRIu64 " due entries\n",
           ok ? "consistent" : "INCONSISTENT", get_u64(r, "msgs"), get_u64(r, "rcpts"),
           get_u64(r, "due"));
    for (size_t i = 0; i < np; i++) {
        json_object *p = json_object_array_get_idx(probs, i);
        printf("  problem: %s\n", json_object_is_type(p, json_type_string)
                                      ? json_object_get_string(p)
                                      : json_object_to_json_string(p));
    }
    if (!ok) {
        fprintf(stderr, "sluicectl: spool check found %zu problem%s\n", np, np == 1 ? "" : "s");
        return EXIT_REFUSED;
    }
    return EXIT_OK;
}

/* ------------------------------------------------------------ operator commands */

static bool is_opt(const char *a, const char *name)
{
    return strcmp(a, name) == 0;
}

/* The request for an operator command (queues, queue, suspend, resume,
 * suspended, retry, bounce, reload, metrics): 1 and *out, 0 when cmd is not
 * one of them, -1 after printing a usage error.
 * Long: one branch per command, each next to its arguments as the usage
 * text lists them; split up they would only be read side by side. */
static int build_ops_request(const char *const *pos, int npos, const char *limit, json_object **out)
{
    const char *cmd = pos[0];
    static const char *const ops[] = {"queues",    "queue",     "suspend", "resume",
                                      "suspended", "retry",     "bounce",  "reload",
                                      "metrics",   "providers", "cluster"};
    bool known = false;
    for (size_t i = 0; i < ARRAY_SIZE(ops); i++)
        known |= strcmp(cmd, ops[i]) == 0;
    if (!known)
        return 0;
    if (limit != NULL && strcmp(cmd, "queues") != 0) {
        usage_error("--limit is an option of list and queues, not of %s", cmd);
        return -1;
    }
    json_object *req = json_object_new_object();
    json_object_object_add(req, "cmd", json_object_new_string(cmd));
    const char *domain = NULL, *job = NULL, *sender = NULL, *dur = NULL, *older = NULL;
    const char *provider = NULL, *vmta = NULL;
    bool all = false, yes = false, om = false;
    for (int i = 1; i < npos; i++) {
        const char *a = pos[i];
        const char **slot = NULL;
        if (is_opt(a, "--job"))
            slot = &job;
        else if (is_opt(a, "--domain"))
            slot = &domain;
        else if (is_opt(a, "--sender"))
            slot = &sender;
        else if (is_opt(a, "--for"))
            slot = &dur;
        else if (is_opt(a, "--provider"))
            slot = &provider;
        else if (is_opt(a, "--vmta"))
            slot = &vmta;
        else if (is_opt(a, "--older-than"))
            slot = &older;
        else if (is_opt(a, "--all"))
            all = true;
        else if (is_opt(a, "--yes") || is_opt(a, "-y"))
            yes = true;
        else if (is_opt(a, "--openmetrics") && strcmp(cmd, "metrics") == 0)
            om = true;
        else if (a[0] == '-' && a[1] != '\0') {
            usage_error("unknown option %s", a);
            goto fail;
        } else if (domain == NULL)
            domain = a;
        else {
            usage_error("unexpected argument %s", a);
            goto fail;
        }
        if (slot != NULL) {
            if (++i >= npos) {
                usage_error("%s needs a value", a);
                goto fail;
            }
            *slot = pos[i];
        }
    }
    bool noargs = strcmp(cmd, "suspended") == 0 || strcmp(cmd, "reload") == 0 ||
                  strcmp(cmd, "metrics") == 0 || strcmp(cmd, "queues") == 0 ||
                  strcmp(cmd, "providers") == 0 || strcmp(cmd, "cluster") == 0;
    bool susp = strcmp(cmd, "suspend") == 0 || strcmp(cmd, "resume") == 0;
    if ((provider || vmta) && !susp) {
        usage_error("--provider and --vmta are options of suspend and resume, not of %s", cmd);
        goto fail;
    }
    if (noargs && (domain || job || sender || dur || older || all || yes)) {
        usage_error("%s takes no arguments", cmd);
        goto fail;
    }
    if (strcmp(cmd, "queues") == 0 && limit != NULL) {
        char *end;
        errno = 0;
        long long lim = strtoll(limit, &end, 10);
        if (errno != 0 || *end != '\0' || end == limit || lim < 0) {
            usage_error("--limit: not a non-negative number: %s", limit);
            goto fail;
        }
        json_object_object_add(req, "limit", json_object_new_int64(lim));
    } else if (strcmp(cmd, "queue") == 0) {
        if (domain == NULL || job || sender || dur || older || all || yes) {
            usage_error("usage: queue DOMAIN%s", "");
            goto fail;
        }
    } else if (susp && (provider || vmta)) {
        if (domain || job || all || sender || older || yes || (provider && vmta) ||
            (dur && strcmp(cmd, "suspend") != 0)) {
            usage_error(strcmp(cmd, "suspend") == 0
                            ? "usage: %s --provider NAME|--vmta NAME [--for DURATION]"
                            : "usage: %s --provider NAME|--vmta NAME",
                        cmd);
            goto fail;
        }
        json_object_object_add(req, provider ? "provider" : "vmta",
                               json_object_new_string(provider ? provider : vmta));
        if (dur)
            json_object_object_add(req, "for", json_object_new_string(dur));
    } else if (strcmp(cmd, "suspend") == 0 || strcmp(cmd, "resume") == 0 ||
               strcmp(cmd, "retry") == 0) {
        bool is_retry = strcmp(cmd, "retry") == 0;
        int n = (domain != NULL) + (job != NULL) + all;
        if (n != 1 || sender || older || yes || (dur && strcmp(cmd, "suspend") != 0) ||
            (job && is_retry)) {
            usage_error(is_retry ? "usage: %s DOMAIN|--all"
                        : strcmp(cmd, "suspend") == 0
                            ? "usage: %s DOMAIN|--job JOB|--all [--for DURATION]"
                            : "usage: %s DOMAIN|--job JOB|--all",
                        cmd);
            goto fail;
        }
        if (all)
            json_object_object_add(req, "all", json_object_new_boolean(1));
        if (dur)
            json_object_object_add(req, "for", json_object_new_string(dur));
    } else if (strcmp(cmd, "bounce") == 0) {
        if (dur || all) {
            usage_error("usage: bounce [--domain D] [--job J] [--sender S] [--older-than "
                        "DURATION] [--yes]%s",
                        "");
            goto fail;
        }
        if (sender)
            json_object_object_add(req, "sender", json_object_new_string(sender));
        if (older)
            json_object_object_add(req, "older_than", json_object_new_string(older));
        if (yes)
            json_object_object_add(req, "yes", json_object_new_boolean(1));
    }
    if (om)
        json_object_object_add(req, "format", json_object_new_string("openmetrics"));
    if (domain)
        json_object_object_add(req, "domain", json_object_new_string(domain));
    if (job)
        json_object_object_add(req, "job", json_object_new_string(job));
    *out = req;
    return 1;
fail:
    json_object_put(req);
    return -1;
}

/* "3m ago" style age of a unix time. */
static char *fmt_age(uint64_t t, char *dst, size_t len)
{
    uint64_t now = (uint64_t)time(NULL);
    if (t == 0) {
        snprintf(dst, len, "-");
        return dst;
    }
    ctl_fmt_duration(now > t ? now - t : 0, dst, len);
    return dst;
}

static char *fmt_response(json_object *d)
{
    const char *st = get_str(d, "last_status"), *tx = get_str(d, "last_text");
    uint64_t code = get_u64(d, "last_code");
    if (tx == NULL && st == NULL)
        return xstrdup("-");
    char cbuf[24] = "";
    if (code)
        snprintf(cbuf, sizeof(cbuf), "%" PRIu64 " ", code);
    return xasprintf("%s%s%s%s", cbuf, st && st[0] ? st : "", st && st[0] ? " " : "", tx ? tx : "");
}

static void print_holds(json_object *holds)
{
    size_t n =
        holds && json_object_is_type(holds, json_type_array) ? json_object_array_length(holds) : 0;
    if (n == 0) {
        printf("no delivery is suspended\n");
        return;
    }
    printf("suspended:\n");
    /* "  domain a.example until resumed", "  provider gmail until
     * 2026-12-02 15:00:00 (in 9m 58s)", "  source ip2 for provider yahoo
     * until ... (by a rule)" */
    for (size_t i = 0; i < n; i++) {
        json_object *h = json_object_array_get_idx(holds, i);
        const char *type = get_str(h, "type"), *name = get_str(h, "name");
        const char *prov = get_str(h, "provider"), *by = get_str(h, "by");
        uint64_t until = get_time(h, "until");
        char tb[64], left[64] = "", ab[48];
        if (until) {
            uint64_t now = (uint64_t)time(NULL);
            fmt_time(until, tb, sizeof(tb));
            snprintf(left, sizeof(left), " (in %s)",
                     ctl_fmt_duration(until > now ? until - now : 0, ab, sizeof(ab)));
        } else {
            snprintf(tb, sizeof(tb), "resumed");
        }
        printf("  %-6s %s%s%s until %s%s%s\n", type ? type : "?", name ? name : "(all delivery)",
               prov ? " for provider " : "", prov ? prov : "", tb, left,
               by && strcmp(by, "rule") == 0 ? " (by a rule)" : "");
    }
}

static void print_queues(json_object *r)
{
    static const char *const hdr[] = {"DOMAIN",   "QUEUED", "MSGS", "IN-FLIGHT",
                                      "DEFERRED", "OLDEST", "HOLD", "LAST RESPONSE"};
    enum { NCOL = 8 };
    json_object *doms = get(r, "domains");
    size_t n =
        doms && json_object_is_type(doms, json_type_array) ? json_object_array_length(doms) : 0;
    char **cells = xcalloc(n * NCOL + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        json_object *d = json_object_array_get_idx(doms, i);
        char **row = cells + i * NCOL;
        char tmp[64];
        const char *name = get_str(d, "domain");
        row[0] = xstrdup(name ? name : "?");
        row[1] = xasprintf("%" PRIu64, get_u64(d, "queued"));
        row[2] = xasprintf("%" PRIu64, get_u64(d, "messages"));
        row[3] = xasprintf("%" PRIu64, get_u64(d, "in_flight"));
        row[4] = xasprintf("%" PRIu64, get_u64(d, "deferred"));
        row[5] = xstrdup(fmt_age(get_time(d, "oldest"), tmp, sizeof(tmp)));
        json_object *s = get(d, "suspended");
        row[6] = xstrdup(s && json_object_get_boolean(s) ? "yes" : "-");
        row[7] = fmt_response(d);
    }
    grid_print(hdr, NCOL, cells, n, 0x1eu, 100); /* the counts (columns 1-4) right-aligned */
    uint64_t nd = get_u64(r, "total_domains"), nr = get_u64(r, "total_recipients");
    printf("%" PRIu64 " domain%s, %" PRIu64 " recipient%s queued", nd, nd == 1 ? "" : "s", nr,
           nr == 1 ? "" : "s");
    if (nd > n)
        printf(" (top %zu shown; use --limit N)", n);
    printf("\n");
    json_object *holds = get(r, "holds");
    if (holds && json_object_array_length(holds) > 0)
        print_holds(holds);
}

static void print_queue(json_object *r)
{
    json_object *d = get(r, "domain");
    char tmp[64], tmp2[64];
    if (d == NULL)
        return;
    const char *name = get_str(d, "domain");
    printf("domain:        %s\n", name ? name : "?");
    printf("queued:        %" PRIu64 " recipients in %" PRIu64 " messages\n", get_u64(d, "queued"),
           get_u64(d, "messages"));
    printf("in flight:     %" PRIu64 "\n", get_u64(d, "in_flight"));
    printf("deferred:      %" PRIu64 "\n", get_u64(d, "deferred"));
    uint64_t oldest = get_time(d, "oldest");
    if (oldest)
        printf("oldest:        %s (%s ago)\n", fmt_time(oldest, tmp, sizeof(tmp)),
               fmt_age(oldest, tmp2, sizeof(tmp2)));
    else
        printf("oldest:        -\n");
    printf("next attempt:  %s\n", fmt_time(get_time(d, "next_attempt"), tmp, sizeof(tmp)));
    char *resp = fmt_response(d);
    printf("last response: %s\n", resp);
    free(resp);
    json_object *s = get(d, "suspended");
    uint64_t until = get_time(d, "suspended_until");
    if (s && json_object_get_boolean(s))
        printf("suspended:     yes, until %s\n",
               until ? fmt_time(until, tmp, sizeof(tmp)) : "resumed");
    else
        printf("suspended:     no\n");
}

/* `providers`: one line per (provider, virtual MTA) queue. */
static void print_providers(json_object *r)
{
    json_object *provs = get(r, "providers");
    size_t n =
        provs && json_object_is_type(provs, json_type_array) ? json_object_array_length(provs) : 0;
    printf("%-20s %-12s %-15s %-10s %8s %9s %9s %9s %9s  %s\n", "PROVIDER", "VMTA", "SOURCE",
           "MODE", "RATE/s", "CONNS", "DELIVERED", "DEFERRED", "BOUNCED", "LAST RESPONSE");
    for (size_t i = 0; i < n; i++) {
        json_object *p = json_object_array_get_idx(provs, i);
        const char *pname = get_str(p, "provider");
        json_object *qs = get(p, "queues");
        size_t nq =
            qs && json_object_is_type(qs, json_type_array) ? json_object_array_length(qs) : 0;
        for (size_t j = 0; j < nq; j++) {
            json_object *q = json_object_array_get_idx(qs, j);
            const char *vmta = get_str(q, "vmta"), *src = get_str(q, "source_ip");
            const char *mode = get_str(q, "mode"), *last = get_str(q, "last_response");
            const char *by = get_str(p, "suspended_by");
            if (by != NULL) /* the provider is suspended: by a rule or the operator */
                mode = strcmp(by, "operator") == 0 ? "SUSPENDED" : "suspended";
            else if (json_object_get_boolean(get(q, "suspended")))
                mode = "vmta-susp"; /* the operator suspended this virtual MTA */
            else if (get_str(q, "disabled_until") != NULL)
                mode = "disabled"; /* a rule disabled this source for the provider */
            json_object *rate = get(q, "rate");
            char rbuf[32], cbuf[32];
            double rv = rate ? json_object_get_double(rate) : 0;
            if (rv > 0)
                snprintf(rbuf, sizeof(rbuf), "%.1f", rv);
            else
                snprintf(rbuf, sizeof(rbuf), "-");
            uint64_t mc = get_u64(q, "max_connections");
            if (mc)
                snprintf(cbuf, sizeof(cbuf), "%" PRIu64 "/%" PRIu64, get_u64(q, "connections"), mc);
            else
                snprintf(cbuf, sizeof(cbuf), "%" PRIu64, get_u64(q, "connections"));
            printf("%-20s %-12s %-15s %-10s %8s %9s %9" PRIu64 " %9" PRIu64 " %9" PRIu64 "  %.*s\n",
                   pname ? pname : "?", vmta ? vmta : "-", src && *src ? src : "-",
                   mode ? mode : "?", rbuf, cbuf, get_u64(q, "delivered"), get_u64(q, "deferred"),
                   get_u64(q, "bounced"), utf8_cut(last ? last : "", 60), last ? last : "");
            sctl_print_adaptive(q);
        }
    }
    if (n == 0)
        printf("no provider has had traffic yet\n");
}

/* Human output of the operator commands; false when cmd is not one. */
static bool print_ops(const char *cmd, json_object *r)
{
    if (strcmp(cmd, "tlsrpt") == 0) {
        sctl_print_tlsrpt(r);
        return true;
    }
    if (strcmp(cmd, "events") == 0 || strcmp(cmd, "cluster") == 0) {
        (cmd[0] == 'e' ? sctl_print_events : sctl_print_cluster)(r);
    } else if (strcmp(cmd, "queues") == 0) {
        print_queues(r);
    } else if (strcmp(cmd, "providers") == 0) {
        print_providers(r);
    } else if (strcmp(cmd, "queue") == 0) {
        print_queue(r);
    } else if ((strcmp(cmd, "suspend") == 0 || strcmp(cmd, "resume") == 0) &&
               (get_str(r, "provider") || get_str(r, "vmta"))) {
        bool pv = get_str(r, "provider") != NULL;
        const char *name = get_str(r, pv ? "provider" : "vmta");
        uint64_t f = get_u64(r, "for");
        char dbuf[64] = "until resumed";
        if (f)
            ctl_fmt_duration(f, dbuf + 0, sizeof(dbuf));
        if (strcmp(cmd, "suspend") == 0)
            printf("%s %s suspended%s%s\n", pv ? "provider" : "virtual MTA", name ? name : "?",
                   f ? " for " : " ", dbuf);
        else
            printf("%s %s resumed\n", pv ? "provider" : "virtual MTA", name ? name : "?");
    } else if (strcmp(cmd, "suspend") == 0 || strcmp(cmd, "suspended") == 0) {
        print_holds(get(r, "holds"));
    } else if (strcmp(cmd, "resume") == 0) {
        uint64_t n = get_u64(r, "resumed");
        printf("%" PRIu64 " hold%s removed\n", n, n == 1 ? "" : "s");
        print_holds(get(r, "holds"));
    } else if (strcmp(cmd, "retry") == 0) {
        uint64_t n = get_u64(r, "rescheduled");
        printf("%" PRIu64 " deferred recipient%s due now\n", n, n == 1 ? "" : "s");
    } else if (strcmp(cmd, "bounce") == 0) {
        uint64_t n = get_u64(r, "bounced"), sk = get_u64(r, "skipped_in_flight");
        printf("%" PRIu64 " recipient%s bounced", n, n == 1 ? "" : "s");
        if (sk)
            printf(" (%" PRIu64 " in flight left to their delivery attempt)", sk);
        printf("\n");
    } else if (strcmp(cmd, "reload") == 0) {
        const char *file = get_str(r, "file");
        printf("configuration reloaded from %s\n", file ? file : "?");
        const char *titles[] = {"applied", "needs_restart"};
        const char *labels[] = {"applied now", "needs restart (old value kept)"};
        for (int t = 0; t < 2; t++) {
            json_object *a = get(r, titles[t]);
            size_t n =
                a && json_object_is_type(a, json_type_array) ? json_object_array_length(a) : 0;
            printf("  %s:%s", labels[t], n ? "" : " -");
            for (size_t i = 0; i < n; i++)
                printf("%s %s", i ? "," : "",
                       json_object_get_string(json_object_array_get_idx(a, i)));
            printf("\n");
        }
    } else {
        return false;
    }
    return true;
}

/* The request line for the command in pos[0..npos). Returns 0 and *line
 * (caller frees), or EXIT_USAGE after printing why. */
static int build_request(const char *const *pos, int npos, const char *limit, char **line)
{
    const char *cmd = pos[0];
    int nargs = npos - 1;
    if (strcmp(cmd, "raw") == 0) {
        if (nargs != 1)
            return usage_error("raw needs one JSON request argument%s", "");
        if (strchr(pos[1], '\n') != NULL)
            return usage_error("raw: the request must be a single line%s", "");
        *line = xstrdup(pos[1]);
        return 0;
    }
    if (strcmp(cmd, "events") == 0) /* sluicectl_print.c */
        return sctl_events_request(pos + 1, nargs, limit, line) == 0
                   ? 0
                   : usage_error("usage: events [unpark NAME | replay NAME --since TIME "
                                 "[--until TIME]]%s",
                                 "");
    json_object *ops = NULL;
    int orc = build_ops_request(pos, npos, limit, &ops);
    if (orc < 0)
        return EXIT_USAGE;
    if (orc > 0) {
        *line = xstrdup(json_object_to_json_string_ext(ops, JSON_C_TO_STRING_PLAIN |
                                                                JSON_C_TO_STRING_NOSLASHESCAPE));
        json_object_put(ops);
        return 0;
    }
    long long lim = -1;
    if (strcmp(cmd, "list") == 0) {
        if (nargs > 1 || (nargs == 1 && limit != NULL))
            return usage_error("usage: list [--limit N]%s", "");
        if (nargs == 1)
            limit = pos[1];
        if (limit != NULL) {
            char *end;
            errno = 0;
            lim = strtoll(limit, &end, 10);
            if (errno != 0 || *end != '\0' || end == limit || lim < 0)
                return usage_error("--limit: not a non-negative number: %s", limit);
        }
    } else if (strcmp(cmd, "inspect") == 0) {
        if (nargs != 1)
            return usage_error("usage: inspect ID%s", "");
    } else if (strcmp(cmd, "status") == 0 || strcmp(cmd, "check") == 0 ||
               strcmp(cmd, "shutdown") == 0 || strcmp(cmd, "log-rotate") == 0) {
        if (nargs > 0)
            return usage_error("%s takes no arguments", cmd);
    } else if (limit != NULL) {
        return usage_error("--limit is an option of list, not of %s", cmd);
    }

    json_object *req = json_object_new_object();
    json_object_object_add(req, "cmd", json_object_new_string(cmd));
    if (strcmp(cmd, "list") == 0) {
        if (lim >= 0)
            json_object_object_add(req, "limit", json_object_new_int64(lim));
    } else if (strcmp(cmd, "inspect") == 0) {
        json_object_object_add(req, "id", json_object_new_string(pos[1]));
    } else if (nargs > 0) {
        /* A command this client does not know yet: pass the words on. */
        json_object *args = json_object_new_array();
        for (int i = 1; i < npos; i++)
            json_object_array_add(args, json_object_new_string(pos[i]));
        json_object_object_add(req, "args", args);
    }
    *line = xstrdup(json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN |
                                                            JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(req);
    return 0;
}

/* ------------------------------------------------------------ main */

/* Long: the options, then one dispatch per kind of command, each ending in
 * one of the four exit codes of the file header; kept in one place so that
 * every exit can be checked against that list at a glance. */
int main(int argc, char **argv)
{
    const char *sock = getenv("SLUICE_SOCKET");
    const char *owner_name = getenv("SLUICE_SOCKET_OWNER");
    bool json = false;
    const char *limit = NULL;
    const char *pos[64];
    int npos = 0;

    if (sock == NULL || sock[0] == '\0')
        sock = CTL_DEFAULT_SOCKET;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0 || strcmp(a, "help") == 0) {
            usage(stdout);
            return EXIT_OK;
        } else if ((strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) && npos == 0) {
            printf("sluicectl %s\n", SLUICE_VERSION);
            return EXIT_OK;
        } else if (strcmp(a, "--json") == 0 || strcmp(a, "-j") == 0) {
            json = true;
        } else if (strcmp(a, "-s") == 0 || strcmp(a, "--socket") == 0) {
            if (++i >= argc)
                return usage_error("%s needs a path", a);
            sock = argv[i];
        } else if (strncmp(a, "--socket=", 9) == 0) {
            sock = a + 9;
        } else if (strcmp(a, "--owner") == 0) {
            if (++i >= argc)
                return usage_error("%s needs a user name", a);
            owner_name = argv[i];
        } else if (strncmp(a, "--owner=", 8) == 0) {
            owner_name = a + 8;
        } else if (strcmp(a, "--limit") == 0 || strcmp(a, "-n") == 0) {
            if (++i >= argc)
                return usage_error("%s needs a number", a);
            limit = argv[i];
        } else if (strncmp(a, "--limit=", 8) == 0) {
            limit = a + 8;
        } else if (a[0] == '-' && a[1] != '\0' && npos == 0) {
            return usage_error("unknown option %s", a);
        } else {
            if (npos == (int)ARRAY_SIZE(pos))
                return usage_error("too many arguments%s", "");
            pos[npos++] = a;
        }
    }
    if (npos == 0)
        return usage_error("no command given%s", "");
    uid_t owner = (uid_t)-1;
    if ((owner_name == NULL || owner_name[0] == '\0') && CTL_DEFAULT_OWNER[0] != '\0') {
        /* The package's system user, when there is one: a system account
         * (below Debian's first user uid, 1000) is root's doing, no one a
         * local user could plant a socket as. */
        struct passwd *pw = getpwnam(CTL_DEFAULT_OWNER);
        if (pw != NULL && pw->pw_uid > 0 && pw->pw_uid < 1000)
            owner = pw->pw_uid;
    } else if (owner_name != NULL && owner_name[0] != '\0') {
        struct passwd *pw = getpwnam(owner_name);
        char *end;
        unsigned long u = strtoul(owner_name, &end, 10);
        if (pw != NULL)
            owner = pw->pw_uid;
        else if (*end == '\0' && end != owner_name)
            owner = (uid_t)u;
        else
            return usage_error("--owner: no such user: %s", owner_name);
    }

    const char *cmd = pos[0];
    if (strcmp(cmd, "suppress") == 0) /* several requests: sluicectl_suppress.c */
        return sctl_suppress(sock, owner, json, limit, pos + 1, npos - 1);
    char *line = NULL;
    int rc = build_request(pos, npos, limit, &line);
    if (rc != 0)
        return rc;

    buf_t resp;
    buf_init(&resp, 65536);
    rc = talk(sock, line, owner, &resp);
    free(line);
    if (rc != 0) {
        buf_free(&resp);
        return rc;
    }

    json_object *r = json_tokener_parse(resp.b_data);
    if (r == NULL || !json_object_is_type(r, json_type_object)) {
        char *shown = tty_strdup(resp.b_data, MIN(resp.b_len, 200), false);
        fprintf(stderr, "sluicectl: malformed answer from %s: %s\n", sock, shown);
        free(shown);
        json_object_put(r);
        buf_free(&resp);
        return EXIT_CONNECT;
    }
    /* Human forms print only from h, where every string is terminal-safe. */
    json_object *h = tty_clean(r);
    json_object *ok = get(r, "ok");
    bool is_ok = ok != NULL && json_object_get_boolean(ok);
    rc = EXIT_OK;
    if (!is_ok) {
        const char *e = get_str(h, "error");
        fprintf(stderr, "sluicectl: %s\n", e ? e : "the daemon refused the command");
        rc = EXIT_REFUSED;
    }
    if (json) {
        /* The daemon's line, with its strings as a strict JSON reader wants
         * them even if the daemon is older than that rule. */
        buf_t out;
        buf_init(&out, resp.b_len + 2);
        json_text_sanitize(&out, resp.b_data, resp.b_len);
        buf_append(&out, "\n", 1);
        fwrite(out.b_data, 1, out.b_len, stdout);
        buf_free(&out);
        json_object *cons = get(r, "consistent");
        if (is_ok && strcmp(cmd, "check") == 0 && cons != NULL && !json_object_get_boolean(cons))
            rc = EXIT_REFUSED; /* same exit code as the human form */
    } else if (!is_ok) {
        /* said on stderr */
    } else if (strcmp(cmd, "status") == 0) {
        print_status(h);
    } else if (strcmp(cmd, "list") == 0) {
        print_list(h);
    } else if (strcmp(cmd, "inspect") == 0) {
        print_inspect(h);
    } else if (strcmp(cmd, "check") == 0) {
        rc = print_check(h);
    } else if (strcmp(cmd, "shutdown") == 0) {
        printf("sluiced is shutting down\n");
    } else if (strcmp(cmd, "log-rotate") == 0) {
        printf("log files reopened\n");
    } else if (strcmp(cmd, "metrics") == 0) {
        /* the exposition's lines kept, anything else made visible */
        json_object *m = get(r, "metrics");
        if (m != NULL && json_object_is_type(m, json_type_string)) {
            char *t =
                tty_strdup(json_object_get_string(m), (size_t)json_object_get_string_len(m), true);
            fputs(t, stdout);
            free(t);
        }
    } else if (print_ops(cmd, h)) {
        /* printed */
    } else {
        buf_t out;
        buf_init(&out, 256);
        const char *pretty = json_object_to_json_string_ext(r, JSON_C_TO_STRING_PRETTY |
                                                                   JSON_C_TO_STRING_NOSLASHESCAPE);
        json_text_sanitize(&out, pretty, strlen(pretty));
        printf("%.*s\n", (int)out.b_len, out.b_data);
        buf_free(&out);
    }
    json_object_put(h);
    fflush(stdout);
    json_object_put(r);
    buf_free(&resp);
    return rc;
}
