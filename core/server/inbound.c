/*
 * core/server/inbound.c - the reports that come back (docs/bounces-in.md):
 * with bounces.inbound, the SMTP listener accepts mail for the bounce
 * domain from anyone, never relays it, and reads it here: a DSN becomes a
 * `remote_bounce` record, an ARF complaint a `complaint` record, each
 * matched to the message and recipient by the VERP token, and feeds the
 * suppression list; what cannot be read or matched becomes an
 * `inbound_unmatched` record and is kept in bounces.quarantine_dir.
 *
 *   inbound_rcpt_check   RCPT: is it the bounce domain, is its token good
 *   inbound_process      after the final dot: parse, match, record, feed
 *   inbound_rate_take    bounces.max_messages_per_minute, per client IP
 *
 * Matching: the VERP token first (signed: a report can only name a
 * message sluice sent); else the returned X-Sluice-Id or Message-ID,
 * which anyone could make up, so it counts only when the report's
 * recipient was one of that message's (queue_sent_match, the sent
 * index). Anything else is recorded as unmatched (with what it says).
 * A matched report feeds the list of the message's tenant (the scope the
 * sent index noted at reception, as a hard bounce of it would), else the
 * global one.
 * Thread: the session's reception thread; queue_acct_event and
 * queue_supp_report hand the records and the list's writes to the queue
 * thread.
 */
#include "core/server/inbound_int.h"
#include "core/server/report_int.h"
#include "delivery/delivery.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

static bool is_bounce_domain(const cfg_t *cfg, const char *addr)
{
    const char *at = strrchr(addr, '@');
    return at != NULL && cfg->c_bounce_domain[0] != '\0' &&
           strcasecmp(at + 1, cfg->c_bounce_domain) == 0;
}

inbound_rcpt_t inbound_rcpt_check(const cfg_t *cfg, const char *addr, char *reply, size_t rlen)
{
    if (!cfg->c_bounce_inbound || !is_bounce_domain(cfg, addr))
        return INBOUND_NO;
    const char *tok;
    size_t len;
    if (verp_address_token(addr, cfg->c_bounce_domain, &tok, &len) != 0)
        return INBOUND_YES; /* fbl@, postmaster@, a bare address: read, matched or not */
    uint64_t id, made;
    uint32_t idx;
    if (!cfg->c_verp_key_loaded || verp_token_check(cfg->c_verp_key, tok, len, clock_now_s(),
                                                    cfg->c_verp_max_age, &id, &idx, &made) != 0) {
        snprintf(reply, rlen, "550 5.7.1 <%s>: invalid or expired bounce address", log_esc(addr));
        return INBOUND_REFUSED;
    }
    return INBOUND_YES;
}

/* The per-IP report rate: a token bucket per client address (it holds
 * bounces.max_messages_per_minute tokens and gains one every 60/max
 * seconds, so a burst of a minute's worth passes and then one per
 * interval, with no reset at a minute's edge), in a bounded table
 * (RATE_SETS sets of RATE_WAYS entries, shared by every reception thread
 * under one mutex, touched once per report transaction). An address that
 * does not fit takes the entry used least recently: a flood of addresses
 * can only make the limit forget someone, never refuse an address that
 * sent nothing. */
#define RATE_SETS 1024
#define RATE_WAYS 4

typedef struct rate_slot {
    char rs_ip[48];
    uint64_t rs_last_us; /* the last refill */
    double rs_tokens;
} rate_slot_t;

static pthread_mutex_t rate_lock = PTHREAD_MUTEX_INITIALIZER;
static rate_slot_t rate_table[RATE_SETS][RATE_WAYS];

bool inbound_rate_take(const cfg_t *cfg, const char *ip, uint64_t now_us)
{
    int max = cfg->c_bounce_rate;
    if (max <= 0)
        return true;
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const char *p = ip; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    bool ok;
    pthread_mutex_lock(&rate_lock);
    rate_slot_t *set = rate_table[h % RATE_SETS], *e = NULL, *old = &set[0];
    for (int i = 0; i < RATE_WAYS && e == NULL; i++) {
        if (strcmp(set[i].rs_ip, ip) == 0)
            e = &set[i];
        else if (set[i].rs_last_us < old->rs_last_us)
            old = &set[i];
    }
    if (e == NULL) {
        e = old;
        snprintf(e->rs_ip, sizeof(e->rs_ip), "%s", ip);
        e->rs_tokens = max;
        e->rs_last_us = now_us;
    }
    if (now_us > e->rs_last_us) {
        e->rs_tokens += (double)(now_us - e->rs_last_us) * max / 60e6;
        e->rs_tokens = MIN(e->rs_tokens, (double)max); /* a reload may lower max */
        e->rs_last_us = now_us;
    }
    ok = e->rs_tokens >= 1.0;
    if (ok)
        e->rs_tokens -= 1.0;
    pthread_mutex_unlock(&rate_lock);
    return ok;
}

/* (msgid, idx) of a VERP address in the bounce domain. */
static bool verp_match(const cfg_t *cfg, const char *addr, uint64_t *id, uint32_t *idx)
{
    const char *tok;
    size_t len;
    uint64_t made;
    return cfg->c_verp_key_loaded &&
           verp_address_token(addr, cfg->c_bounce_domain, &tok, &len) == 0 &&
           verp_token_check(cfg->c_verp_key, tok, len, clock_now_s(), cfg->c_verp_max_age, id, idx,
                            &made) == VERP_OK;
}

static void jopt(buf_t *b, const char *key, const char *v)
{
    buf_printf(b, ",\"%s\":", key);
    if (v == NULL || v[0] == '\0')
        buf_append_str(b, "null");
    else
        json_str_append(b, v, strlen(v));
}

static void rec_head(buf_t *b, const char *type, uint64_t id, bool matched, uint32_t idx)
{
    char t[40], hex[17];
    buf_printf(b, "{\"type\":\"%s\",\"time\":\"%s\"", type,
               time_fmt_rfc3339(clock_now_us(), t, sizeof(t)));
    if (matched)
        buf_printf(b, ",\"msgid\":\"%s\",\"rcpt_index\":%u", queue_msgid_fmt(id, hex), idx);
    else
        buf_append_str(b, ",\"msgid\":null,\"rcpt_index\":null");
}

/* Keep the report for the operator: bounded by bounces.quarantine_max
 * files. The file's name, or "" when it was not kept. */
static void quarantine(const cfg_t *cfg, uint64_t id, const char *body, size_t len, char *name,
                       size_t nlen)
{
    name[0] = '\0';
    const char *dir = cfg->c_bounce_quarantine;
    if (cfg->c_bounce_quarantine_max <= 0 || (mkdir(dir, 0700) != 0 && errno != EEXIST))
        return;
    DIR *d = opendir(dir);
    int n = 0;
    if (d == NULL)
        return;
    for (struct dirent *e; (e = readdir(d)) != NULL && n < cfg->c_bounce_quarantine_max;)
        n += e->d_name[0] != '.';
    closedir(d);
    if (n >= cfg->c_bounce_quarantine_max) {
        log_warn("inbound: quarantine %s full (%d files): report not kept", dir, n);
        return;
    }
    char hex[17], path[1200];
    snprintf(path, sizeof(path), "%s/%s.eml", dir, queue_msgid_fmt(id, hex));
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return;
    bool ok = true;
    for (size_t off = 0; ok && off < len;) {
        ssize_t w = write(fd, body + off, len - off);
        ok = w > 0;
        off += ok ? (size_t)w : 0;
    }
    if (close(fd) != 0 || !ok) {
        unlink(path);
        return;
    }
    snprintf(name, nlen, "%s.eml", hex);
}

/* Long: one record per kind of report, each with every key of its schema
 * (docs/records.md) written in order; splitting them would scatter the
 * schema's keys over several functions. */
const char *inbound_process(queue_t *q, const cfg_t *cfg, const inbound_msg_t *m)
{
    report_t r;
    report_parse(m->im_body, m->im_len, &r);
    uint64_t id = 0;
    uint32_t idx = 0;
    const char *rcpt = r.rp_kind == REPORT_ARF ? r.rp_orig_rcpt
                       : r.rp_final_rcpt[0]    ? r.rp_final_rcpt
                                               : r.rp_orig_rcpt;
    /* the token of the address the report came to, else (ARF) of the
     * return path the complained-about message had, else the returned
     * message's X-Sluice-Id or Message-ID - if the report's recipient was
     * one of that message's (the trust rule, suppress_sent.c) */
    const char *by = "verp";
    char scope[QUEUE_SUPP_SCOPE_MAX + 1] = ""; /* the message's tenant: its list is fed */
    bool matched = verp_match(cfg, m->im_rcpt, &id, &idx) ||
                   (r.rp_kind == REPORT_ARF && verp_match(cfg, r.rp_orig_mail_from, &id, &idx));
    bool named = r.rp_sluice_id[0] != '\0' || r.rp_message_id[0] != '\0';
    if (matched && queue_sent_scope(q, id, scope, sizeof(scope)) != 1)
        scope[0] = '\0'; /* not in the sent index (inbound was off then): global */
    if (!matched && named && r.rp_kind != REPORT_NONE) {
        int sm = queue_sent_match(q, r.rp_sluice_id, r.rp_message_id, rcpt, &id, &idx, scope,
                                  sizeof(scope));
        matched = sm == 1 || sm == 2;
        by = sm == 1 ? "x-sluice-id" : "message-id";
    }
    buf_t b;
    buf_init(&b, 1024);
    const char *what;
    char src[64], hex[17];
    snprintf(src, sizeof(src), "%s/%u", queue_msgid_fmt(id, hex), idx);
    if (matched && r.rp_kind == REPORT_ARF) {
        rec_head(&b, "complaint", id, true, idx);
        jopt(&b, "recipient", rcpt);
        jopt(&b, "feedback_type", r.rp_feedback_type);
        jopt(&b, "user_agent", r.rp_user_agent);
        jopt(&b, "reporting_mta", r.rp_reporting_mta);
        jopt(&b, "client_ip", m->im_client_ip);
        jopt(&b, "matched_by", by);
        jopt(&b, "scope", scope);
        buf_append_str(&b, "}");
        if (rcpt[0] != '\0')
            queue_supp_report(q, rcpt, scope, "complaint", src);
        what = "complaint";
    } else if (matched && (r.rp_kind == REPORT_DSN || r.rp_kind == REPORT_TEXT) &&
               (r.rp_kind == REPORT_TEXT || strcmp(r.rp_action, "failed") == 0)) {
        int code = atoi(r.rp_diag);
        const char *cat =
            dlv_classify(code >= 400 && code < 600 ? code : 0, r.rp_status, r.rp_diag);
        rec_head(&b, "remote_bounce", id, true, idx);
        jopt(&b, "recipient", rcpt);
        jopt(&b, "kind", report_kind_name(r.rp_kind));
        jopt(&b, "status", r.rp_status);
        jopt(&b, "category", cat);
        jopt(&b, "diagnostic", r.rp_diag);
        jopt(&b, "remote_mta", r.rp_remote_mta);
        jopt(&b, "reporting_mta", r.rp_reporting_mta);
        jopt(&b, "client_ip", m->im_client_ip);
        jopt(&b, "matched_by", by);
        jopt(&b, "scope", scope);
        buf_append_str(&b, "}");
        if (rcpt[0] != '\0' && r.rp_status[0] == '5')
            queue_supp_report(q, rcpt, scope, cat, src);
        what = "remote_bounce";
    } else if (matched && r.rp_kind == REPORT_DSN) {
        buf_free(&b);
        return "delay or success notice"; /* delayed / delivered / relayed: nothing to do */
    } else {
        char file[64];
        quarantine(cfg, m->im_id, m->im_body, m->im_len, file, sizeof(file));
        rec_head(&b, "inbound_unmatched", 0, false, 0);
        jopt(&b, "reason",
             matched ? "no status in the report"
             : named ? "no valid VERP token, and the returned message was not "
                       "sent to the report's recipient"
                     : "no valid VERP token");
        jopt(&b, "kind", report_kind_name(r.rp_kind));
        jopt(&b, "rcpt", m->im_rcpt);
        jopt(&b, "sender", m->im_sender);
        jopt(&b, "recipient", rcpt);
        jopt(&b, "status", r.rp_status);
        jopt(&b, "message_id", r.rp_message_id);
        jopt(&b, "file", file);
        jopt(&b, "client_ip", m->im_client_ip);
        buf_printf(&b, ",\"size\":%zu}", m->im_len);
        what = "unmatched";
    }
    buf_append(&b, "", 1);
    queue_acct_event(q, b.b_data);
    log_info("%s inbound report from client=%s to=<%s>: %s %s", queue_msgid_fmt(m->im_id, hex),
             m->im_client_ip, log_esc(m->im_rcpt), what, log_esc(rcpt));
    buf_free(&b);
    return what;
}
