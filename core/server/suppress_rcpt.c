/*
 * core/server/suppress_rcpt.c - the suppression list at RCPT time
 * (docs/bounces-in.md): the cheapest place to stop mail to an address
 * that must not get it. `reject` answers 550 5.7.1 and the client sees
 * why; `drop` answers 250, keeps the recipient out of the message, and
 * writes a "suppressed" accounting record once the message is accepted
 * (so a platform that reads records learns it, and a transaction the
 * client abandons leaves none).
 *
 * Thread: the reception thread of the session; the lookup itself is
 * queue_suppressed's read transaction (any thread).
 */
#include "core/server/suppress_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct smtp_drop {
    char *d_addr;
    queue_supp_entry_t d_entry;
} smtp_drop_t;

struct smtp_drops {
    int ds_n, ds_cap;
    smtp_drop_t *ds_v;
};

static void drops_add(smtp_drops_t **drops, const char *rcpt, const queue_supp_entry_t *e);

/* postmaster and postmaster@anything: RFC 5321 4.5.1 wants it to work. */
static bool is_postmaster(const char *rcpt)
{
    const char *at = strrchr(rcpt, '@');
    size_t n = at ? (size_t)(at - rcpt) : strlen(rcpt);
    return n == 10 && strncasecmp(rcpt, "postmaster", 10) == 0;
}

bool supp_stops(queue_t *q, const cfg_t *cfg, const char *sender, const char *rcpt,
                const char *auth_user, queue_supp_entry_t *e)
{
    if (!cfg->c_supp_enabled || sender == NULL || sender[0] == '\0' || is_postmaster(rcpt))
        return false;
    const char *scope = strcmp(cfg->c_supp_scope, "auth_user") == 0 ? auth_user : NULL;
    /* a failed lookup lets mail through: the list is advice */
    return queue_supp_lookup(q, rcpt, scope, e) == 1;
}

smtp_supp_t smtp_supp_check(queue_t *q, const cfg_t *cfg, const char *sender, const char *rcpt,
                            const char *auth_user, smtp_drops_t **drops, char *reply, size_t rlen)
{
    queue_supp_entry_t e;
    if (!supp_stops(q, cfg, sender, rcpt, auth_user, &e))
        return SMTP_SUPP_PASS;
    if (strcmp(cfg->c_supp_action, "drop") != 0) {
        snprintf(reply, rlen, "550 5.7.1 <%s>: recipient address suppressed (%s)", e.se_addr,
                 e.se_reason);
        log_info("smtp reject RCPT <%s>: suppressed reason=%s scope=%s", log_esc(rcpt), e.se_reason,
                 e.se_scope[0] ? log_esc(e.se_scope) : "global");
        return SMTP_SUPP_REJECT;
    }
    drops_add(drops, rcpt, &e);
    return SMTP_SUPP_DROP;
}

static void drops_add(smtp_drops_t **drops, const char *rcpt, const queue_supp_entry_t *e)
{
    smtp_drops_t *d = *drops;
    if (d == NULL)
        d = *drops = xcalloc(1, sizeof(*d));
    if (d->ds_n == d->ds_cap) {
        d->ds_cap = d->ds_cap ? d->ds_cap * 2 : 4;
        d->ds_v = xrealloc(d->ds_v, (size_t)d->ds_cap * sizeof(*d->ds_v));
    }
    d->ds_v[d->ds_n].d_addr = xstrdup(rcpt);
    d->ds_v[d->ds_n].d_entry = *e;
    d->ds_n++;
}

int smtp_supp_scope_check(queue_t *q, const cfg_t *cfg, const char *sender, const char *msg,
                          size_t len, queue_rcpt_in_t *rcpts, int *nrcpt, smtp_drops_t **drops)
{
    char scope[QUEUE_SUPP_SCOPE_MAX + 1];
    if (!cfg->c_supp_enabled || sender == NULL || sender[0] == '\0' ||
        !queue_supp_header_scope(cfg, msg, len, scope, sizeof(scope)))
        return 0;
    int kept = 0, moved = 0;
    for (int i = 0; i < *nrcpt; i++) {
        queue_supp_entry_t e;
        if (!is_postmaster(rcpts[i].qr_addr) &&
            queue_supp_lookup(q, rcpts[i].qr_addr, scope, &e) == 1) {
            log_info("smtp drop <%s> after DATA: suppressed reason=%s scope=%s",
                     log_esc(rcpts[i].qr_addr), e.se_reason,
                     e.se_scope[0] ? log_esc(e.se_scope) : "global");
            drops_add(drops, rcpts[i].qr_addr, &e);
            free(rcpts[i].qr_addr);
            free(rcpts[i].qr_orcpt);
            moved++;
            continue;
        }
        rcpts[kept++] = rcpts[i];
    }
    *nrcpt = kept;
    return moved;
}

int smtp_drops_count(const smtp_drops_t *d)
{
    return d ? d->ds_n : 0;
}

static void json_opt(buf_t *b, const char *s)
{
    if (s == NULL || s[0] == '\0')
        buf_append(b, "null", 4);
    else
        json_str_append(b, s, strlen(s));
}

void smtp_drops_record(queue_t *q, const smtp_drops_t *d, uint64_t msgid, const char *sender,
                       const char *job, const char *client_ip, const char *auth_user)
{
    char id[17], t[40];
    queue_msgid_fmt(msgid, id);
    time_fmt_rfc3339(clock_now_us(), t, sizeof(t));
    for (int i = 0; d != NULL && i < d->ds_n; i++) {
        const smtp_drop_t *x = &d->ds_v[i];
        buf_t b;
        buf_init(&b, 512);
        buf_printf(&b, "{\"type\":\"suppressed\",\"time\":\"%s\",\"msgid\":\"%s\",\"job\":", t, id);
        json_opt(&b, job);
        buf_append_str(&b, ",\"sender\":");
        json_str_append(&b, sender ? sender : "", sender ? strlen(sender) : 0);
        buf_append_str(&b, ",\"recipient\":");
        json_str_append(&b, x->d_addr, strlen(x->d_addr));
        buf_append_str(&b, ",\"action\":\"drop\",\"reason\":");
        json_str_append(&b, x->d_entry.se_reason, strlen(x->d_entry.se_reason));
        buf_append_str(&b, ",\"scope\":");
        json_opt(&b, x->d_entry.se_scope);
        buf_append_str(&b, ",\"source\":");
        json_opt(&b, x->d_entry.se_source);
        buf_append_str(&b, ",\"client_ip\":");
        json_opt(&b, client_ip);
        buf_append_str(&b, ",\"auth_user\":");
        json_opt(&b, auth_user);
        buf_append(&b, "}", 2); /* with its NUL: queue_acct_event takes a C string */
        queue_acct_event(q, b.b_data);
        log_info("%s to=<%s> dropped: suppressed reason=%s", id, log_esc(x->d_addr),
                 x->d_entry.se_reason);
        buf_free(&b);
    }
}

void smtp_drops_free(smtp_drops_t *d)
{
    if (d == NULL)
        return;
    for (int i = 0; i < d->ds_n; i++)
        free(d->ds_v[i].d_addr);
    free(d->ds_v);
    free(d);
}
