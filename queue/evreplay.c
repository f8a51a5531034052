/*
 * queue/evreplay.c - `sluicectl events replay NAME --since TIME [--until
 * TIME]`: the records of the accounting files (sluice's rotated
 * acct-*.jsonl, oldest first, then acct.jsonl) whose time is in the range
 * and whose type the webhook takes, POSTed to it again as a stream of
 * their own (docs/events.md): batches of `batch` records, signed as the
 * stream's are, marked `X-Sluice-Replay: 1`, one POST at a time beside the
 * live stream's. Best effort: the webhook's cursor never moves, nothing of
 * it is kept in the spool (a restart ends it), a 5xx or an error is
 * retried with the webhook's backoff, a 4xx other than 408/429 ends it.
 *
 *   ev_replay_new / ev_replay_start / ev_replay_stop / ev_replay_free
 *   ev_replay_running / ev_replay_json      (progress, under the lock)
 *
 * Also the pieces the live stream (events.c) shares with it: a record
 * line's type, a webhook's `types`, the signature (q_ev_line_type,
 * q_ev_type_taken, q_ev_sign).
 *
 * Thread: the webhook thread (events.c), except the progress fields,
 * read by the control thread under the events lock.
 */
#include "queue/events_int.h"

#include <dirent.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define RP_SCAN_MAX 5000 /* lines read per loop turn, at most: the live stream goes on */

enum { RP_NONE, RP_RUNNING, RP_DONE, RP_FAILED };
static const char *const rp_state_name[] = {"none", "running", "done", "failed"};

struct ev_replay {
    uv_loop_t *r_loop;
    http_client_t *r_http;
    const cfg_webhook_t *r_cfg;
    char r_dir[1024];
    pthread_mutex_t *r_lock;
    /* shared, under r_lock */
    int r_state;
    uint64_t r_since, r_until; /* unix us */
    uint64_t r_sent, r_batches, r_started, r_ended;
    int r_nfiles, r_file; /* files to read, the one being read (0-based) */
    char r_error[256];
    /* webhook thread */
    uv_timer_t r_timer;
    char **r_files;
    FILE *r_fp;
    char *r_line;
    size_t r_linecap;
    buf_t r_body; /* the batch (a JSON array) being sent */
    int r_n;      /* its records */
    uint32_t r_fails;
    http_request_t *r_req;
};

static void rp_step(ev_replay_t *r);

/* ------------------------------------------------------------ shared with events.c */

/* The type of a record line ({"type":"delivery",...}): every record
 * starts so (acct.c, outcome.c, queue.c, json-c with "type" added first). */
size_t q_ev_line_type(const char *line, size_t len, const char **type)
{
    static const char pre[] = "{\"type\":\"";
    if (len < sizeof(pre) || memcmp(line, pre, sizeof(pre) - 1) != 0)
        return 0;
    const char *t = line + sizeof(pre) - 1;
    const char *e = memchr(t, '"', len - (sizeof(pre) - 1));
    if (e == NULL || e - t > 32)
        return 0;
    *type = t;
    return (size_t)(e - t);
}

bool q_ev_type_taken(const cfg_webhook_t *w, const char *type, size_t tl)
{
    if (w->wh_types == NULL)
        return true;
    for (char **t = w->wh_types; *t != NULL; t++)
        if (strlen(*t) == tl && memcmp(*t, type, tl) == 0)
            return true;
    return false;
}

static void ev_hex(const unsigned char *in, size_t n, char *out)
{
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[in[i] >> 4];
        out[2 * i + 1] = hx[in[i] & 15];
    }
    out[2 * n] = '\0';
}

void q_ev_sign(const cfg_webhook_t *w, const char *body, size_t len, char ts[24],
               char sig[EV_SIG_MAX])
{
    snprintf(ts, 24, "%llu", (unsigned long long)time(NULL));
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    buf_t signed_text;
    buf_init(&signed_text, len + 32);
    buf_append_str(&signed_text, ts);
    buf_append(&signed_text, ".", 1);
    buf_append(&signed_text, body, len);
    const char *key = w->wh_secret;
    HMAC(EVP_sha256(), key, (int)strlen(key), (const unsigned char *)signed_text.b_data,
         signed_text.b_len, mac, &maclen);
    buf_free(&signed_text);
    ev_hex(mac, maclen, sig);
}

/* ------------------------------------------------------------ the replay */

ev_replay_t *ev_replay_new(uv_loop_t *loop, http_client_t *http, const cfg_webhook_t *w,
                           const char *acct_dir, pthread_mutex_t *lock)
{
    ev_replay_t *r = xcalloc(1, sizeof(*r));
    r->r_loop = loop;
    r->r_http = http;
    r->r_cfg = w;
    r->r_lock = lock;
    snprintf(r->r_dir, sizeof(r->r_dir), "%s", acct_dir && *acct_dir ? acct_dir : ".");
    buf_init(&r->r_body, 4096);
    uv_timer_init(loop, &r->r_timer);
    r->r_timer.data = r;
    return r;
}

static void rp_close_files(ev_replay_t *r)
{
    if (r->r_fp != NULL)
        fclose(r->r_fp);
    r->r_fp = NULL;
    for (int i = 0; r->r_files != NULL && r->r_files[i] != NULL; i++)
        free(r->r_files[i]);
    free(r->r_files);
    r->r_files = NULL;
}

static void rp_finish(ev_replay_t *r, int state, const char *error)
{
    rp_close_files(r);
    buf_reset(&r->r_body);
    r->r_n = 0;
    pthread_mutex_lock(r->r_lock);
    r->r_state = state;
    r->r_ended = clock_now_us();
    if (error != NULL)
        snprintf(r->r_error, sizeof(r->r_error), "%s", error);
    pthread_mutex_unlock(r->r_lock);
    if (state == RP_FAILED)
        log_error("events: webhook %s: replay: %s", r->r_cfg->wh_name, error ? error : "failed");
    else
        log_info("events: webhook %s: replay done: %llu records sent", r->r_cfg->wh_name,
                 (unsigned long long)r->r_sent);
}

typedef struct rp_file {
    char *name;
    uint64_t mtime; /* ns */
    bool current;
} rp_file_t;

static int rp_file_cmp(const void *a, const void *b)
{
    const rp_file_t *x = a, *y = b;
    if (x->current != y->current)
        return x->current ? 1 : -1; /* acct.jsonl is the newest */
    if (x->mtime != y->mtime)
        return x->mtime < y->mtime ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* The files to read, oldest first: rotated ones last written before
 * `since` cannot hold a record of the range. 0 or -errno. */
static int rp_list_files(ev_replay_t *r)
{
    DIR *d = opendir(r->r_dir);
    if (d == NULL)
        return -errno;
    rp_file_t *v = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        bool current = strcmp(e->d_name, "acct.jsonl") == 0;
        if (!current && (strncmp(e->d_name, "acct-", 5) != 0 || l < 11 ||
                         strcmp(e->d_name + l - 6, ".jsonl") != 0))
            continue;
        char path[1400];
        struct stat sb;
        snprintf(path, sizeof(path), "%s/%s", r->r_dir, e->d_name);
        if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
            continue;
        uint64_t mt = (uint64_t)sb.st_mtim.tv_sec * 1000000000u + (uint64_t)sb.st_mtim.tv_nsec;
        if (!current && mt / 1000 < r->r_since)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            v = xrealloc(v, cap * sizeof(*v));
        }
        v[n++] = (rp_file_t){xstrdup(path), mt, current};
    }
    closedir(d);
    if (n > 0)
        qsort(v, n, sizeof(*v), rp_file_cmp);
    r->r_files = xcalloc(n + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++)
        r->r_files[i] = v[i].name;
    free(v);
    pthread_mutex_lock(r->r_lock);
    r->r_nfiles = (int)n;
    r->r_file = 0;
    pthread_mutex_unlock(r->r_lock);
    return 0;
}

/* Does this record line belong to the replay (its type, its time)? */
static bool rp_wanted(const ev_replay_t *r, const char *line, size_t len)
{
    const char *type;
    size_t tl = q_ev_line_type(line, len, &type);
    if (tl == 0 || !q_ev_type_taken(r->r_cfg, type, tl))
        return false;
    json_object *o = json_tokener_parse(line), *t;
    uint64_t us = 0;
    bool ok = o != NULL && json_object_object_get_ex(o, "time", &t) &&
              json_object_is_type(t, json_type_string) &&
              time_parse_rfc3339(json_object_get_string(t), &us) == 0 && us >= r->r_since &&
              us <= r->r_until;
    json_object_put(o);
    return ok;
}

/* Read the next batch into r_body: true when every file was read. */
static bool rp_fill(ev_replay_t *r)
{
    for (int scanned = 0; scanned < RP_SCAN_MAX && r->r_n < r->r_cfg->wh_batch;) {
        if (r->r_fp == NULL) {
            pthread_mutex_lock(r->r_lock);
            int i = r->r_file;
            pthread_mutex_unlock(r->r_lock);
            if (r->r_files[i] == NULL)
                return true;
            r->r_fp = fopen(r->r_files[i], "r");
            if (r->r_fp == NULL) /* rotated away meanwhile: it was read or is gone */
                log_warn("events: webhook %s: replay: %s: %s", r->r_cfg->wh_name, r->r_files[i],
                         strerror(errno));
        }
        ssize_t l = r->r_fp ? getline(&r->r_line, &r->r_linecap, r->r_fp) : -1;
        if (l <= 0 || r->r_line[l - 1] != '\n') { /* the end (a line being written is not one) */
            if (r->r_fp != NULL)
                fclose(r->r_fp);
            r->r_fp = NULL;
            pthread_mutex_lock(r->r_lock);
            r->r_file++;
            pthread_mutex_unlock(r->r_lock);
            continue;
        }
        scanned++;
        r->r_line[--l] = '\0';
        if (!rp_wanted(r, r->r_line, (size_t)l))
            continue;
        buf_append(&r->r_body, r->r_n == 0 ? "[" : ",", 1);
        buf_append(&r->r_body, r->r_line, (size_t)l);
        r->r_n++;
    }
    return false;
}

static void rp_timer_cb(uv_timer_t *t)
{
    rp_step(t->data);
}

static void rp_done_cb(void *arg, const http_response_t *h)
{
    ev_replay_t *r = arg;
    r->r_req = NULL;
    int st = h->hr_status;
    if (h->hr_error == NULL && st >= 200 && st <= 299) {
        pthread_mutex_lock(r->r_lock);
        r->r_sent += (uint64_t)r->r_n;
        r->r_batches++;
        pthread_mutex_unlock(r->r_lock);
        buf_reset(&r->r_body);
        r->r_n = 0;
        r->r_fails = 0;
        rp_step(r);
        return;
    }
    char why[256];
    if (h->hr_error != NULL)
        snprintf(why, sizeof(why), "%s", h->hr_error);
    else
        snprintf(why, sizeof(why), "HTTP %d: %.200s", st, h->hr_body ? h->hr_body : "");
    if (h->hr_error == NULL && st >= 400 && st <= 499 && st != 408 && st != 429) {
        rp_finish(r, RP_FAILED, why); /* refused: sending it again would not change its mind */
        return;
    }
    /* the stream's backoff: doubling from retry_initial to retry_max, at
     * least Retry-After */
    uint64_t d = r->r_cfg->wh_retry_initial_ms;
    for (uint32_t i = 0; i < r->r_fails && d < r->r_cfg->wh_retry_max_ms; i++)
        d *= 2;
    d = MIN(d, r->r_cfg->wh_retry_max_ms);
    if (h->hr_retry_after > 0)
        d = MAX(d, MIN(h->hr_retry_after, 86400) * 1000);
    r->r_fails++;
    pthread_mutex_lock(r->r_lock);
    snprintf(r->r_error, sizeof(r->r_error), "%s", why);
    pthread_mutex_unlock(r->r_lock);
    log_warn("events: webhook %s: replay: %s: again in %llu ms", r->r_cfg->wh_name, why,
             (unsigned long long)d);
    uv_timer_start(&r->r_timer, rp_timer_cb, d, 0);
}

static void rp_post(ev_replay_t *r)
{
    char ts[24], sig[EV_SIG_MAX];
    q_ev_sign(r->r_cfg, r->r_body.b_data, r->r_body.b_len, ts, sig);
    char h_ts[64], h_sig[EV_SIG_MAX + 40], h_name[120];
    snprintf(h_ts, sizeof(h_ts), "X-Sluice-Timestamp: %s", ts);
    snprintf(h_sig, sizeof(h_sig), "X-Sluice-Signature: v1=%s", sig);
    snprintf(h_name, sizeof(h_name), "X-Sluice-Webhook: %s", r->r_cfg->wh_name);
    const char *hdrs[] = {"Content-Type: application/json",
                          h_ts,
                          h_sig,
                          h_name,
                          "X-Sluice-Replay: 1",
                          "Expect:",
                          NULL};
    http_get_opts_t o = {
        .hg_url = r->r_cfg->wh_url,
        .hg_ca_file = r->r_cfg->wh_ca_file,
        .hg_max_body = 4096,
        .hg_timeout_ms = r->r_cfg->wh_timeout_ms,
        .hg_allow_http = true, /* the config allows http:// to loopback only */
        .hg_post = r->r_body.b_data,
        .hg_post_len = r->r_body.b_len,
        .hg_headers = hdrs,
    };
    r->r_req = http_get(r->r_http, &o, rp_done_cb, r);
    if (r->r_req == NULL)
        rp_finish(r, RP_FAILED, "libcurl could not start a request");
}

/* The next batch: read it (a turn of the loop at most), then POST it. */
static void rp_step(ev_replay_t *r)
{
    if (r->r_req != NULL || r->r_files == NULL)
        return;
    if (r->r_n == 0) {
        bool end = rp_fill(r);
        if (r->r_n == 0) {
            if (end)
                rp_finish(r, RP_DONE, NULL);
            else /* nothing in range yet: read on at the next turn */
                uv_timer_start(&r->r_timer, rp_timer_cb, 0, 0);
            return;
        }
        buf_append(&r->r_body, "]", 1);
    }
    rp_post(r);
}

void ev_replay_start(ev_replay_t *r, uint64_t since_us, uint64_t until_us)
{
    rp_close_files(r);
    buf_reset(&r->r_body);
    r->r_n = 0;
    r->r_fails = 0;
    pthread_mutex_lock(r->r_lock);
    r->r_state = RP_RUNNING;
    r->r_since = since_us;
    r->r_until = until_us;
    r->r_sent = r->r_batches = 0;
    r->r_started = clock_now_us();
    r->r_ended = 0;
    r->r_nfiles = r->r_file = 0;
    r->r_error[0] = '\0';
    pthread_mutex_unlock(r->r_lock);
    int rc = rp_list_files(r);
    if (rc != 0) {
        char why[1300];
        snprintf(why, sizeof(why), "%s: %s", r->r_dir, strerror(-rc));
        rp_finish(r, RP_FAILED, why);
        return;
    }
    log_info("events: webhook %s: replay of %d accounting file(s) started", r->r_cfg->wh_name,
             r->r_nfiles);
    rp_step(r);
}

bool ev_replay_running(const ev_replay_t *r)
{
    return r != NULL && r->r_state == RP_RUNNING;
}

struct json_object *ev_replay_json(const ev_replay_t *r)
{
    if (r == NULL || r->r_state == RP_NONE)
        return NULL;
    json_object *o = json_object_new_object();
    json_object_object_add(o, "state", json_object_new_string(rp_state_name[r->r_state]));
    char t[40];
    json_object_object_add(o, "since", json_object_new_string(time_fmt_rfc3339(r->r_since, t, 40)));
    json_object_object_add(o, "until", json_object_new_string(time_fmt_rfc3339(r->r_until, t, 40)));
    json_object_object_add(o, "files", json_object_new_int(r->r_nfiles));
    json_object_object_add(o, "files_read", json_object_new_int(MIN(r->r_file, r->r_nfiles)));
    json_object_object_add(o, "sent_records", json_object_new_int64((int64_t)r->r_sent));
    json_object_object_add(o, "sent_batches", json_object_new_int64((int64_t)r->r_batches));
    json_object_object_add(o, "started_at",
                           json_object_new_string(time_fmt_rfc3339(r->r_started, t, 40)));
    json_object *ended = NULL;
    if (r->r_ended)
        ended = json_object_new_string(time_fmt_rfc3339(r->r_ended, t, 40));
    json_object_object_add(o, "ended_at", ended);
    json_object_object_add(o, "last_error",
                           r->r_error[0] ? json_object_new_string(r->r_error) : NULL);
    return o;
}

void ev_replay_stop(ev_replay_t *r)
{
    if (r == NULL)
        return;
    r->r_req = NULL; /* http_client_free cancels it */
    uv_timer_stop(&r->r_timer);
    uv_close((uv_handle_t *)&r->r_timer, NULL);
}

void ev_replay_free(ev_replay_t *r)
{
    if (r == NULL)
        return;
    rp_close_files(r);
    free(r->r_line);
    buf_free(&r->r_body);
    free(r);
}
