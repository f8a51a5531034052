/*
 * main.c - sluiced: start-up, signals and orderly shutdown.
 *
 * Start-up order: umask 027 -> config, checked as --check-config checks it
 * (daemon_check_config) -> log -> the directories sluiced writes, created
 * for `user` (daemon_make_dirs) -> the spool lock (one daemon per spool)
 * -> spool (queue_open) -> SMTP listeners bound (smtp_server_new) ->
 * delivery threads created (dlv_new) -> control socket -> privileges
 * dropped (`user`, when started as root) and what the daemon must still
 * read and write checked as that user (daemon_check_reread, _dirs) -> threads
 * started (queue, delivery, reception) -> main loop.
 * Every start-up failure (bad config, port taken, spool not writable or in
 * use by another sluiced, control socket in use) is one clear line on
 * stderr and exit status 1 (2 for a configuration error), before any
 * thread runs. docs/operations.md has the file layout for `user`.
 * Under systemd (Type=notify) it says READY=1 once all of that is done,
 * RELOADING=1 ... READY=1 around a reload, STOPPING=1 at shutdown
 * (notify.c).
 *
 * The compiled-in layout (config.h): this file is built twice, as the build
 * tree's sluiced (./var, the embedded default with no -c) and, with
 * SLUICE_LAYOUT_FHS, as the installed one (no -c reads CFG_FHS_CONFIG).
 *
 * Shutdown (SIGTERM/SIGINT or `sluicectl shutdown`): reception stops
 * accepting and lets sessions in DATA finish (bounded grace), delivery
 * stops, the queue thread commits what it holds, then the process exits 0.
 *
 * Thread: everything here runs on the main thread.
 */
#include "core/server/notify_int.h"
#include "delivery/delivery.h"
#include "dkim/dkim.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define SHUTDOWN_GRACE_MS 10000

#ifdef SLUICE_LAYOUT_FHS
#define DAEMON_LAYOUT CFG_LAYOUT_FHS
#define DAEMON_CONF_HELP "default: " CFG_FHS_CONFIG
#else
#define DAEMON_LAYOUT CFG_LAYOUT_BUILD
#define DAEMON_CONF_HELP "default: the embedded default"
#endif

typedef struct daemon_state {
    uv_loop_t *d_loop;
    cfg_t *d_cfg;
    queue_t *d_queue;
    smtp_server_t *d_smtp;
    dlv_t *d_dlv;
    control_t *d_ctl;
    httpd_t *d_httpd; /* the HTTP server, or NULL */
    uv_signal_t d_sigterm;
    uv_signal_t d_sigint;
    uv_signal_t d_sighup; /* reload, as `sluicectl reload` */
    uv_idle_t d_stop_idle;
    bool d_stopping;
} daemon_state_t;

/* The `user` sluiced runs as (resolved once, before anything is created). */
typedef struct daemon_user {
    bool du_switch; /* started as root with `user` set: create for it, then switch */
    uid_t du_uid;
    gid_t du_gid;
} daemon_user_t;

/* --hash-token: 32 random bytes as 64 hex digits (the token) and the
 * http.tokens line that admits it (its SHA-256), docs/http-api.md. */
static int hash_token(const char *scopes)
{
    unsigned char raw[32], md[SHA256_DIGEST_LENGTH], chk[32];
    char tok[65], hex[65];
    unsigned sc;
    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        fprintf(stderr, "sluiced: --hash-token: no random bytes\n");
        return 1;
    }
    for (int i = 0; i < 32; i++)
        snprintf(tok + 2 * i, 3, "%02x", raw[i]);
    SHA256((const unsigned char *)tok, 64, md);
    for (int i = 0; i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    char *val = xasprintf("%s:%s", scopes, hex);
    if (cfg_parse_token(val, chk, &sc) != 0) {
        fprintf(stderr, "sluiced: --hash-token: scopes are a list of inject, read, admin "
                        "(e.g. \"inject,read\")\n");
        free(val);
        return 2;
    }
    printf("token: %s\nhttp.tokens entry: name = \"%s\";\n", tok, val);
    free(val);
    return 0;
}

static void usage(FILE *f);
static void daemon_shutdown(void *arg);
static void daemon_stop_now(uv_idle_t *h);
static void signal_cb(uv_signal_t *h, int signum);
static void sighup_cb(uv_signal_t *h, int signum);
static void close_walk_cb(uv_handle_t *h, void *arg);
static int dkim_sign_tool(cfg_t *cfg, const char *path);
static int chown_dir(const char *path, uid_t uid, gid_t gid, char *err, size_t errlen);
static int daemon_check_config(const cfg_t *cfg, char *err, size_t errlen);
static int daemon_user(const cfg_t *cfg, daemon_user_t *u, char *err, size_t errlen);
static int mkdir_owned(const char *what, const char *path, mode_t mode, const daemon_user_t *u,
                       char *err, size_t errlen);
static int daemon_make_dirs(const cfg_t *cfg, const daemon_user_t *u, char *err, size_t errlen);
static int daemon_drop_privileges(const cfg_t *cfg, const daemon_user_t *u, char *err,
                                  size_t errlen);
static int daemon_check_reread(const cfg_t *cfg, char *err, size_t errlen);
static int daemon_check_dirs(const cfg_t *cfg, char *err, size_t errlen);
static int check_config_as_user(const cfg_t *cfg, const daemon_user_t *u, char *err, size_t errlen);
static int daemon_fd_budget(daemon_state_t *d, char *err, size_t errlen);

static void usage(FILE *f)
{
    fprintf(f, "usage: sluiced [-c FILE] [--check-config] [--check-spool] "
               "[--print-default-config] [--version]\n"
               "  -c FILE                 configuration file (" DAEMON_CONF_HELP ")\n"
               "  --check-config          validate the configuration as start-up does and exit\n"
               "  --check-spool           check the spool's integrity (daemon stopped) and exit\n"
               "  --dkim-sign FILE        sign the message in FILE (- = stdin) with the\n"
               "                          configured DKIM keys, print it signed and exit\n"
               "  --print-default-config  print the default configuration (the embedded\n"
               "                          one, or the installed file as shipped)\n"
               "  --hash-token [SCOPES]   print a new HTTP API token and its http.tokens\n"
               "                          value (SCOPES: inject, read, admin; default inject)\n"
               "  -V, --version           print the version and exit\n"
               "  -h, --help              this help\n"
               "exit status: 0 ok, 1 start-up or spool check failed, 2 configuration or\n"
               "usage error\n");
}

/* Ask for shutdown from a callback: the real work runs from an idle
 * handle, outside the control socket's own callback. */
static void daemon_shutdown(void *arg)
{
    daemon_state_t *d = arg;
    if (d->d_stopping)
        return;
    d->d_stopping = true;
    uv_idle_start(&d->d_stop_idle, daemon_stop_now);
}

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void daemon_stop_now(uv_idle_t *h)
{
    daemon_state_t *d = h->data;
    uv_idle_stop(h);
    log_info("shutting down: reception stops accepting");
    srv_notify_stopping();
    uint64_t t0 = clock_mono_us();
    smtp_server_stop(d->d_smtp, SHUTDOWN_GRACE_MS);
    dlv_stop(d->d_dlv);
    queue_stop(d->d_queue);
    control_stop(d->d_ctl);
    d->d_ctl = NULL;
    httpd_stop(d->d_httpd); /* after control_stop: see ops_int.h */
    d->d_httpd = NULL;
    log_info("shutdown complete in %llu ms", (unsigned long long)(clock_mono_us() - t0) / 1000);
    uv_walk(d->d_loop, close_walk_cb, NULL);
}

static void sighup_cb(uv_signal_t *h, int signum)
{
    daemon_state_t *d = h->data;
    char err[1024];
    log_info("signal %d (SIGHUP): reloading the configuration", signum);
    if (d->d_ctl != NULL && !d->d_stopping)
        control_reload(d->d_ctl, NULL, err, sizeof(err)); /* logs the outcome */
}

static void signal_cb(uv_signal_t *h, int signum)
{
    log_info("signal %d (%s) received", signum, strsignal(signum));
    daemon_shutdown(h->data);
}

/* chown a directory and the entries directly in it (the spool's LMDB files,
 * the accounting log files), or one file; symbolic links are not followed. */
static int chown_dir(const char *path, uid_t uid, gid_t gid, char *err, size_t errlen)
{
    if (lchown(path, uid, gid) != 0) {
        snprintf(err, errlen, "chown %s: %s", path, strerror(errno));
        return -errno;
    }
    DIR *dir = opendir(path);
    if (dir == NULL)
        return 0; /* a file, not a directory */
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(dir)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *p = xasprintf("%s/%s", path, e->d_name);
        if (lchown(p, uid, gid) != 0 && rc == 0) {
            snprintf(err, errlen, "chown %s: %s", p, strerror(errno));
            rc = -errno;
        }
        free(p);
    }
    closedir(dir);
    return rc;
}

/*
 * Everything start-up checks in a configuration before it creates, binds or
 * opens anything: `--check-config` runs exactly this, and start-up runs it
 * first, so a file the check passes fails at start only for a reason of
 * the moment (a port taken, the spool in use, a directory not writable).
 * cfg_load has already checked syntax, types, ranges, files that must
 * exist, the log file's directory and the DKIM keys; here are the parts it
 * cannot reach: the TLS pair (loaded when both files exist; with neither
 * and `generate`, start-up makes one), the bounce rules and the traffic
 * shaping file (compiled, as dlv_new and reload compile them).
 */
static int daemon_check_config(const cfg_t *cfg, char *err, size_t errlen)
{
    char e[768];
    bool hc = access(cfg->c_tls_cert, F_OK) == 0, hk = access(cfg->c_tls_key, F_OK) == 0;
    if (hc && hk) {
        tls_ctx_t *ctx = tls_server_ctx_new(cfg->c_tls_cert, cfg->c_tls_key, e, sizeof(e));
        if (ctx == NULL) {
            snprintf(err, errlen, "%s: smtp.tls: %s", cfg->c_file, e);
            return SL_ECONFIG;
        }
        tls_ctx_free(ctx);
    }
    /* the rules' "loaded" line belongs to start-up, not to every check */
    int lvl = log_level_current;
    log_level_current = MAX(lvl, LOG_WARN);
    int rc = dlv_shaping_check(cfg->c_dlv_shaping, e, sizeof(e));
    if (rc == 0)
        rc = dlv_rules_install(cfg, e, sizeof(e));
    log_level_current = lvl;
    if (rc != 0) {
        snprintf(err, errlen, "%s", e);
        return SL_ECONFIG;
    }
    return 0;
}

/* Resolve `user`. Started as root: sluiced creates its directories for that
 * user and switches to it. Started as that user: nothing to switch. As any
 * other user: an error, since nothing it writes would belong to `user`. */
static int daemon_user(const cfg_t *cfg, daemon_user_t *u, char *err, size_t errlen)
{
    memset(u, 0, sizeof(*u));
    if (cfg->c_user[0] == '\0')
        return 0;
    struct passwd *pw = getpwnam(cfg->c_user);
    if (pw == NULL) {
        snprintf(err, errlen, "user \"%s\": no such user", cfg->c_user);
        return -ENOENT;
    }
    if (geteuid() != 0) {
        if (geteuid() == pw->pw_uid)
            return 0;
        snprintf(err, errlen, "user \"%s\": cannot switch user, not started as root", cfg->c_user);
        return -EPERM;
    }
    u->du_switch = true;
    u->du_uid = pw->pw_uid;
    u->du_gid = pw->pw_gid;
    return 0;
}

/* mkdir -p with explicit modes, whatever the umask: the directories on the
 * way are made 0755 (root's, and searchable, so that the user can reach
 * what lies below), the last one `mode` and, when it is new and there is a
 * user to switch to, that user's. An existing directory is left as it is. */
static int mkdir_owned(const char *what, const char *path, mode_t mode, const daemon_user_t *u,
                       char *err, size_t errlen)
{
    char *p = xstrdup(path);
    int rc = 0;
    for (char *s = p + 1; *s != '\0'; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0755) == 0)
            rc = chmod(p, 0755) != 0 ? -errno : 0;
        else if (errno != EEXIST)
            rc = -errno;
        *s = '/';
        if (rc != 0)
            goto out;
    }
    if (mkdir(p, mode) == 0) {
        if (chmod(p, mode) != 0 || (u->du_switch && chown(p, u->du_uid, u->du_gid) != 0))
            rc = -errno;
    } else if (errno != EEXIST) {
        rc = -errno;
    }
out:
    if (rc != 0)
        snprintf(err, errlen, "%s %s: cannot create %s: %s", what, path, p, strerror(-rc));
    free(p);
    return rc;
}

/*
 * The directories sluiced writes in, made before anything is opened: the
 * spool (0700: its lock is taken before it is opened), and with a user to
 * switch to, for that user, the accounting log (0750) and the control
 * socket's directory (0750, where the socket is created and removed).
 * Shortest path first, so that one which holds another (./var, the
 * socket's directory, holds ./var/spool) is made with its owner before the
 * other is made in it. Without a switch the modules make the other two
 * (with the same modes) as they open them.
 */
static int daemon_make_dirs(const cfg_t *cfg, const daemon_user_t *u, char *err, size_t errlen)
{
    if (!u->du_switch)
        return mkdir_owned("spool", cfg->c_spool_path, 0700, u, err, errlen);
    typedef struct {
        const char *what;
        char *path;
        mode_t mode;
    } dir_t;
    dir_t dirs[3];
    int n = 0;
    dirs[n++] = (dir_t){"spool", xstrdup(cfg->c_spool_path), 0700};
    dirs[n++] = (dir_t){"accounting log", xstrdup(cfg->c_acct_dir), 0750};
    const char *slash = strrchr(cfg->c_ctl_socket, '/');
    if (slash != NULL && slash != cfg->c_ctl_socket)
        dirs[n++] = (dir_t){"control socket",
                            xstrndup(cfg->c_ctl_socket, (size_t)(slash - cfg->c_ctl_socket)), 0750};
    for (int i = 1; i < n; i++) /* insertion sort by length: three entries */
        for (int j = i; j > 0 && strlen(dirs[j].path) < strlen(dirs[j - 1].path); j--) {
            dir_t t = dirs[j];
            dirs[j] = dirs[j - 1];
            dirs[j - 1] = t;
        }
    int rc = 0;
    for (int i = 0; i < n; i++) {
        if (rc == 0)
            rc = mkdir_owned(dirs[i].what, dirs[i].path, dirs[i].mode, u, err, errlen);
        free(dirs[i].path);
    }
    return rc;
}

/* With `user` set and started as root: once the ports are bound and the
 * files opened, hand the spool, the accounting directory, the control
 * socket and the log file to that user, then switch to it for good
 * (groups, gid, uid: in this order, since setgid needs root). Runs before
 * any thread starts, so every thread runs as the user. */
static int daemon_drop_privileges(const cfg_t *cfg, const daemon_user_t *u, char *err,
                                  size_t errlen)
{
    if (!u->du_switch)
        return 0;
    uid_t uid = u->du_uid;
    gid_t gid = u->du_gid;
    if (chown_dir(cfg->c_spool_path, uid, gid, err, errlen) != 0 ||
        chown_dir(cfg->c_acct_dir, uid, gid, err, errlen) != 0 ||
        chown_dir(cfg->c_ctl_socket, uid, gid, err, errlen) != 0 ||
        (cfg->c_log_file[0] != '\0' && chown_dir(cfg->c_log_file, uid, gid, err, errlen) != 0))
        return -EPERM;
    if (initgroups(cfg->c_user, gid) != 0 || setgid(gid) != 0 || setuid(uid) != 0) {
        snprintf(err, errlen, "user \"%s\": cannot switch: %s", cfg->c_user, strerror(errno));
        return -EPERM;
    }
    if (uid != 0 && setuid(0) == 0) {
        snprintf(err, errlen, "user \"%s\": root could be regained", cfg->c_user);
        return -EPERM;
    }
    log_info("running as user %s (uid %u, gid %u)", cfg->c_user, (unsigned)uid, (unsigned)gid);
    return 0;
}

/*
 * Right after the switch, as the user: what the daemon will need later is
 * tried now, so that a layout that cannot work stops start-up with the
 * file to fix rather than failing a reload or a rotation hours later.
 * daemon_check_reread: reading the files a reload reads again (the
 * configuration, DKIM keys, bounce rules, shaping file: root:<group> 0640
 * is the layout, docs/operations.md); a configuration error (exit 2), which
 * --check-config finds too (check_config_as_user).
 * daemon_check_dirs: writing the spool and the accounting directory (an
 * error), the control socket's directory (else the socket stays behind at
 * shutdown; the next start replaces it) and the log file's (else a log
 * moved away cannot be reopened): warnings.
 */
static int daemon_check_reread(const cfg_t *cfg, char *err, size_t errlen)
{
    const char *reread[4 + CFG_MAX_DKIM_KEYS];
    int n = 0;
    if (strcmp(cfg->c_file, "(default)") != 0)
        reread[n++] = cfg->c_file;
    for (int i = 0; i < cfg->c_dkim_nkeys && n < (int)ARRAY_SIZE(reread) - 2; i++)
        reread[n++] = cfg->c_dkim_keys[i].dk_file;
    if (cfg->c_dlv_bounce_rules[0] != '\0')
        reread[n++] = cfg->c_dlv_bounce_rules;
    if (cfg->c_dlv_shaping[0] != '\0')
        reread[n++] = cfg->c_dlv_shaping;
    for (int i = 0; i < n; i++) {
        if (access(reread[i], R_OK) != 0) {
            snprintf(err, errlen,
                     "user \"%s\" cannot read %s (%s), which a reload reads again: make it "
                     "root:<the user's group> 0640",
                     cfg->c_user, reread[i], strerror(errno));
            return -EACCES;
        }
    }
    return 0;
}

static int daemon_check_dirs(const cfg_t *cfg, char *err, size_t errlen)
{
    const char *user = cfg->c_user;
    const char *write[] = {cfg->c_spool_path, cfg->c_acct_dir};
    for (size_t i = 0; i < ARRAY_SIZE(write); i++) {
        if (access(write[i], W_OK | X_OK) != 0) {
            snprintf(err, errlen,
                     "user \"%s\" cannot write in %s (%s): every directory above it must be "
                     "searchable by that user",
                     user, write[i], strerror(errno));
            return -EACCES;
        }
    }
    const char *files[] = {cfg->c_ctl_socket, cfg->c_log_file};
    const char *what[] = {"the control socket stays behind at shutdown",
                          "a log file moved away by logrotate cannot be reopened"};
    for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
        if (files[i][0] == '\0')
            continue;
        const char *slash = strrchr(files[i], '/');
        char *dir = slash == NULL       ? xstrdup(".")
                    : slash == files[i] ? xstrdup("/")
                                        : xstrndup(files[i], (size_t)(slash - files[i]));
        if (access(dir, W_OK | X_OK) != 0)
            log_warn("user \"%s\" cannot write in %s (%s): %s", user, dir, strerror(errno),
                     what[i]);
        free(dir);
    }
    return 0;
}

/* --check-config as root with `user`: daemon_check_reread, as start-up
 * runs it after the switch, in a child that switches (the parent stays
 * root and switches nothing). The child's message comes back on a pipe. */
static int check_config_as_user(const cfg_t *cfg, const daemon_user_t *u, char *err, size_t errlen)
{
    int fds[2];
    if (pipe(fds) != 0) {
        snprintf(err, errlen, "--check-config: pipe: %s", strerror(errno));
        return -errno;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(err, errlen, "--check-config: fork: %s", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return -EAGAIN;
    }
    if (pid == 0) {
        close(fds[0]);
        char e[1024] = "";
        int rc = 1;
        if (initgroups(cfg->c_user, u->du_gid) != 0 || setgid(u->du_gid) != 0 ||
            setuid(u->du_uid) != 0)
            snprintf(e, sizeof(e), "user \"%s\": cannot switch: %s", cfg->c_user, strerror(errno));
        else
            rc = daemon_check_reread(cfg, e, sizeof(e)) != 0;
        if (rc != 0 && write(fds[1], e, strlen(e)) < 0)
            rc = 2;
        _exit(rc);
    }
    close(fds[1]);
    size_t got = 0;
    ssize_t n;
    err[0] = '\0';
    while (got + 1 < errlen &&
           ((n = read(fds[0], err + got, errlen - got - 1)) > 0 || (n < 0 && errno == EINTR)))
        got += n > 0 ? (size_t)n : 0;
    err[got] = '\0';
    close(fds[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 0;
    if (err[0] == '\0')
        snprintf(err, errlen, "--check-config: the check as user \"%s\" failed", cfg->c_user);
    return -EACCES;
}

/* --dkim-sign: the operator's check of the dkim section. Exit 0 when the
 * message got at least one signature, 1 when none applies, 2 on error. */
/* Open files. The soft RLIMIT_NOFILE (often 1024) is raised to the hard
 * limit. Of what is left after the descriptors open now (spool, listeners,
 * loops, logs), FD_RESERVE are kept for control clients, DNS sockets, log
 * rotation and MTA-STS fetches, and a quarter of the rest for delivery's
 * connections; reception may hold the other three quarters (or
 * smtp.max_connections, if lower) and answers 421 4.3.2 beyond. Without
 * this, a flood of idle clients took the descriptors that sluicectl, DNS
 * and delivery need, and connections were dropped without a reply. */
#define FD_RESERVE 32
#define FD_MIN_SESSIONS 8

static int daemon_fd_budget(daemon_state_t *d, char *err, size_t errlen)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        snprintf(err, errlen, "getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
        return -1;
    }
    rlim_t want = rl.rlim_max;
    if (want == RLIM_INFINITY) { /* Linux refuses more than fs.nr_open */
        FILE *f = fopen("/proc/sys/fs/nr_open", "r");
        unsigned long long nr = 0;
        want = (f != NULL && fscanf(f, "%llu", &nr) == 1 && nr > 0) ? (rlim_t)nr : rl.rlim_cur;
        if (f != NULL)
            fclose(f);
    }
    if (rl.rlim_cur < want) {
        struct rlimit nrl = {.rlim_cur = want, .rlim_max = rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &nrl) == 0)
            rl.rlim_cur = want;
        else
            log_warn("open files limit: cannot raise %llu to %llu: %s",
                     (unsigned long long)rl.rlim_cur, (unsigned long long)want, strerror(errno));
    }
    long open_now = 0;
    DIR *dir = opendir("/proc/self/fd");
    if (dir != NULL) {
        for (struct dirent *e; (e = readdir(dir)) != NULL;)
            if (e->d_name[0] != '.')
                open_now++;
        closedir(dir);
        open_now--; /* the directory's own descriptor */
    }
    uint64_t limit = rl.rlim_cur;
    int64_t room = (int64_t)MIN(limit, (uint64_t)INT32_MAX) - open_now - FD_RESERVE;
    int64_t cap = room > 0 ? room * 3 / 4 : 0;
    if (cap < FD_MIN_SESSIONS) {
        snprintf(err, errlen,
                 "open files limit %llu is too low: %ld descriptors are open at start-up and %d "
                 "are kept for the control socket, DNS and logs (raise ulimit -n)",
                 (unsigned long long)limit, open_now, FD_RESERVE);
        return -1;
    }
    int max = d->d_cfg->c_smtp_max_connections;
    if (cap < max)
        log_warn("open files limit %llu: at most %lld connections (smtp.max_connections %d); %ld "
                 "descriptors open now, %lld kept for delivery, %d for control, DNS and logs",
                 (unsigned long long)limit, (long long)cap, max, open_now, (long long)(room - cap),
                 FD_RESERVE);
    else
        log_info("open files limit %llu: at most %d connections (smtp.max_connections)",
                 (unsigned long long)limit, max);
    smtp_server_set_conn_cap(d->d_smtp, (int)cap, limit);
    return 0;
}

static int dkim_sign_tool(cfg_t *cfg, const char *path)
{
    int rc = 2;
    char err[1024];
    const dkim_signer_t *signer = dkim_cfg_signer(cfg);
    if (signer == NULL) {
        fprintf(stderr, "sluiced: --dkim-sign: %s has no DKIM key (dkim.keys)\n", cfg->c_file);
        goto out;
    }
    int n = dkim_sign_file(signer, path, STDOUT_FILENO, err, sizeof(err));
    if (n < 0) {
        fprintf(stderr, "sluiced: --dkim-sign: %s\n", err);
        goto out;
    }
    fprintf(stderr, "sluiced: %d DKIM signature(s)%s\n", n,
            n == 0 ? ": no key for the From domain and no esp_domain" : "");
    rc = n > 0 ? 0 : 1;
out:
    cfg_unref(cfg);
    return rc;
}

/* Long: sluiced's life in the order it happens - options, the one-shot
 * modes, the start-up sequence of the file header, the main loop, the
 * shutdown - read top to bottom; every step is one call, the length is each
 * step's own error exit. */
int main(int argc, char **argv)
{
    enum {
        OPT_CHECK = 256,
        OPT_CHECK_SPOOL,
        OPT_PRINT_DEFAULT,
        OPT_VERSION,
        OPT_DKIM_SIGN,
        OPT_HASH_TOKEN
    };
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", no_argument, NULL, OPT_CHECK},
        {"check-spool", no_argument, NULL, OPT_CHECK_SPOOL},
        {"dkim-sign", required_argument, NULL, OPT_DKIM_SIGN},
        {"print-default-config", no_argument, NULL, OPT_PRINT_DEFAULT},
        {"hash-token", optional_argument, NULL, OPT_HASH_TOKEN},
        {"version", no_argument, NULL, OPT_VERSION},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *conf = NULL, *dkim_sign_path = NULL;
    bool check = false, check_spool = false;
    int ch;
    /* Whatever umask the service manager or shell left: no file of ours is
     * ever writable by its group or readable by others unless created so
     * (every file and directory gets an explicit mode as well). */
    umask(027);
    cfg_set_layout(DAEMON_LAYOUT);
    while ((ch = getopt_long(argc, argv, "c:hV", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            conf = optarg;
            break;
        case OPT_CHECK:
            check = true;
            break;
        case OPT_CHECK_SPOOL:
            check_spool = true;
            break;
        case OPT_DKIM_SIGN:
            dkim_sign_path = optarg;
            break;
        case OPT_PRINT_DEFAULT:
            fputs(cfg_default_text(), stdout);
            return 0;
        case OPT_HASH_TOKEN:
            return hash_token(optarg                                      ? optarg
                              : (optind < argc && argv[optind][0] != '-') ? argv[optind++]
                                                                          : "inject");
        case 'V':
        case OPT_VERSION:
            printf("sluiced %s\n", SLUICE_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }

    char err[1024] = "";
    cfg_t *cfg = NULL;
    /* every load (this one, reload) parses the DKIM keys into the snapshot:
     * a bad key stops start-up and refuses a reload */
    cfg_set_attach(dkim_cfg_attach);
    /* Installed, with no -c: the configuration file of the layout. Missing,
     * it is a configuration error like any other, said with the way out. */
    if (conf == NULL && cfg_layout() == CFG_LAYOUT_FHS)
        conf = CFG_FHS_CONFIG;
    int rc = conf ? cfg_load(conf, &cfg, err, sizeof(err)) : cfg_default(&cfg, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "sluiced: %s\n", err);
        if (cfg_layout() == CFG_LAYOUT_FHS && strcmp(conf, CFG_FHS_CONFIG) == 0 &&
            access(conf, F_OK) != 0)
            fprintf(stderr,
                    "sluiced: %s is the installed configuration: `sluiced "
                    "--print-default-config > %s` writes it as shipped, or name another with "
                    "-c FILE\n",
                    conf, conf);
        return 2;
    }
    if (dkim_sign_path != NULL)
        return dkim_sign_tool(cfg, dkim_sign_path);
    if ((check || !check_spool) && daemon_check_config(cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "sluiced: %s\n", err);
        cfg_unref(cfg);
        return 2;
    }
    if (check) {
        /* As root with `user`: also what start-up checks after the switch.
         * Not as root: start-up would refuse to switch, a matter of how it
         * is started rather than of the file. */
        daemon_user_t cu;
        if (daemon_user(cfg, &cu, err, sizeof(err)) == 0 && cu.du_switch &&
            check_config_as_user(cfg, &cu, err, sizeof(err)) != 0) {
            fprintf(stderr, "sluiced: %s\n", err);
            cfg_unref(cfg);
            return 2;
        }
        printf("%s: configuration ok\n", cfg->c_file);
        cfg_unref(cfg);
        return 0;
    }
    if (check_spool) {
        /* Never beside a running daemon: its view would be a moving one,
         * and it might find problems that are only writes in progress. */
        int lock_fd = -1;
        if (queue_spool_lock(cfg->c_spool_path, &lock_fd, err, sizeof(err)) == SL_EBUSY) {
            fprintf(stderr, "sluiced: --check-spool: %s; stop it first, or run `sluicectl check`\n",
                    err);
            cfg_unref(cfg);
            return 1;
        }
        size_t nm = 0, nr = 0;
        rc = queue_check_offline(cfg->c_spool_path, &nm, &nr);
        printf("spool %s: %s, %zu messages, %zu recipients\n", cfg->c_spool_path,
               rc == 0 ? "consistent" : "PROBLEMS FOUND", nm, nr);
        queue_spool_unlock(lock_fd);
        cfg_unref(cfg);
        return rc == 0 ? 0 : 1;
    }

    if (log_init(cfg->c_log_level, cfg->c_log_file) != 0) {
        fprintf(stderr, "sluiced: log file %s: %s\n", cfg->c_log_file, strerror(errno));
        return 1;
    }
    log_thread_name("main");
    signal(SIGPIPE, SIG_IGN);
    cfg_set_current(cfg_ref(cfg));

    daemon_state_t d;
    memset(&d, 0, sizeof(d));
    d.d_loop = xmalloc(sizeof(*d.d_loop));
    uv_loop_init(d.d_loop);
    d.d_cfg = cfg;
    rc = 1;
    daemon_user_t user;
    int lock_fd = -1;

    if (daemon_user(cfg, &user, err, sizeof(err)) != 0 ||
        daemon_make_dirs(cfg, &user, err, sizeof(err)) != 0 ||
        queue_spool_lock(cfg->c_spool_path, &lock_fd, err, sizeof(err)) != 0)
        goto fail;
    if (queue_open(cfg, &d.d_queue, err, sizeof(err)) != 0)
        goto fail;
    if (smtp_server_new(cfg, d.d_queue, &d.d_smtp, err, sizeof(err)) != 0)
        goto fail;
    if (dlv_new(cfg, d.d_queue, &d.d_dlv, err, sizeof(err)) != 0)
        goto fail;
    control_env_t env = {
        .ce_loop = d.d_loop,
        .ce_queue = d.d_queue,
        .ce_smtp = d.d_smtp,
        .ce_start_us = clock_now_us(),
        .ce_shutdown = daemon_shutdown,
        .ce_arg = &d,
        .ce_dlv = d.d_dlv,
    };
    if (control_start(cfg, &env, &d.d_ctl, err, sizeof(err)) != 0)
        goto fail;
    if (httpd_start(cfg, &env, d.d_ctl, &d.d_httpd, err, sizeof(err)) != 0)
        goto fail;
    if (daemon_drop_privileges(cfg, &user, err, sizeof(err)) != 0)
        goto fail;
    if (user.du_switch && daemon_check_reread(cfg, err, sizeof(err)) != 0) {
        rc = 2; /* the configuration names files its user cannot read */
        goto fail;
    }
    if (user.du_switch && daemon_check_dirs(cfg, err, sizeof(err)) != 0)
        goto fail;

    uv_signal_init(d.d_loop, &d.d_sigterm);
    uv_signal_init(d.d_loop, &d.d_sigint);
    d.d_sigterm.data = d.d_sigint.data = &d;
    uv_signal_start(&d.d_sigterm, signal_cb, SIGTERM);
    uv_signal_start(&d.d_sigint, signal_cb, SIGINT);
    uv_signal_init(d.d_loop, &d.d_sighup);
    d.d_sighup.data = &d;
    uv_signal_start(&d.d_sighup, sighup_cb, SIGHUP);
    uv_idle_init(d.d_loop, &d.d_stop_idle);
    d.d_stop_idle.data = &d;
    if (daemon_fd_budget(&d, err, sizeof(err)) != 0)
        goto fail;

    /* Threads start only once everything that can fail at start-up has
     * been set up, so a failure above leaves nothing running. */
    if (queue_start(d.d_queue) != 0) {
        log_error("cannot start the queue thread");
        abort();
    }
    if (dlv_start(d.d_dlv) != 0) {
        log_error("cannot start the delivery threads");
        abort();
    }
    if (smtp_server_start(d.d_smtp) != 0) {
        log_error("cannot start the reception threads");
        abort();
    }
    const queue_stats_t *qs = queue_stats(d.d_queue);
    log_info("sluiced %s ready: config=%s spool=%s messages=%llu recipients=%llu control=%s",
             SLUICE_VERSION, cfg->c_file, cfg->c_spool_path,
             (unsigned long long)atomic_load(&qs->qs_msgs),
             (unsigned long long)atomic_load(&qs->qs_rcpts), cfg->c_ctl_socket);
    char status[256];
    snprintf(status, sizeof(status), "running; %llu messages queued at start",
             (unsigned long long)atomic_load(&qs->qs_msgs));
    srv_notify_ready(status);

    uv_run(d.d_loop, UV_RUN_DEFAULT);

    rc = 0;
fail:
    if (rc != 0)
        fprintf(stderr, "sluiced: %s\n", err);
    if (d.d_ctl != NULL) {
        control_stop(d.d_ctl);
        d.d_ctl = NULL;
    }
    httpd_stop(d.d_httpd);
    d.d_httpd = NULL;
    if (uv_loop_alive(d.d_loop) || rc != 0) {
        uv_walk(d.d_loop, close_walk_cb, NULL);
        uv_run(d.d_loop, UV_RUN_DEFAULT);
    }
    int lrc = uv_loop_close(d.d_loop);
    if (lrc != 0)
        log_warn("main loop closed with handles open: %s", uv_strerror(lrc));
    free(d.d_loop);
    smtp_server_free(d.d_smtp);
    dlv_free(d.d_dlv);
    queue_free(d.d_queue);
    queue_spool_unlock(lock_fd); /* after the spool is closed */
    cfg_set_current(NULL);
    cfg_unref(cfg);
    if (rc == 0)
        log_info("sluiced exits");
    return rc;
}
