/*
 * trouble.c - the reply judge, after Postfix's smtp_trouble.c: every reply
 * of a receiving server, and every failure decided without one (a route,
 * a dead site, a TLS policy, a message the server cannot take), comes
 * here, and dlv_judge() says everything that follows from it:
 *
 *   - the recipient's fate: delivered, deferred, bounced, or "not an
 *     outcome" for a reply that decides nothing (a 220, a 250 to RCPT, a
 *     354, a reply in a transaction nobody was accepted in, STARTTLS, RSET,
 *     QUIT) and "next transaction" for a "too many recipients" RCPT reply;
 *   - the code, enhanced status and text as recorded (a 552 "too many
 *     recipients" to RCPT is a temporary 452, RFC 5321 4.5.3.1.10, any
 *     other 552 to RCPT the recipient's refusal; a bare 552 to MAIL, DATA or the
 *     final dot is 5.3.4, RFC 1870 6; a refusal of the connection names its
 *     host and phase; a DATA answered other than 354 is a protocol error);
 *   - the bounce category (the bounce rules of rules.c, then the built-in
 *     table of classify.c) and the rules' "bounce" action on a 4xx;
 *   - the shaping signal: the replies that decide a fate go to the
 *     (provider, vmta) queue's response rules (providers' counters,
 *     backoff, suspend, disable-source, bounce-recipient, defer-queue, and
 *     capacity: "too many connections", "too many messages on this
 *     connection", a rate reply, which adaptive mode learns from and
 *     v_capacity names), a 2xx to the final dot counts towards recovery
 *     and adaptive mode's increase;
 *   - the retry time: a deferral in a transaction while its queue is in
 *     backoff waits backoff.retry; a held provider's backlog waits for the
 *     end of its suspension; everything else takes the queue's schedule.
 *
 * dlv_report() then acts on one recipient's result: the one delivery log
 * line (one format, one line per recipient, Postfix's: "<id> to=<a>
 * relay=host[ip]:port tls=... dsn=... status=sent (250 ...)"), the
 * counters and the outcome handed to the queue.
 *
 * Main functions: dlv_judge, dlv_report (delivery thread);
 * dlv_classify_reply, dlv_result_for_verdict, dlv_classify (any thread).
 *
 * Thread: dlv_judge runs on the delivery thread that owns the reply; the
 * queue it shapes is shared (providers.c takes its locks); dlv_judge itself
 * checks no thread (the unit test calls it alone). No state here.
 */
#include "delivery/delivery_int.h"
#include "delivery/rules_int.h"
#include "delivery/shaping_int.h"

#include <stdio.h>
#include <string.h>

/* Does a 552 to RCPT say "too many recipients"? Its enhanced status
 * 5.5.3, or no status and those words. RFC 5321 4.5.3.1.10 makes only
 * that 552 temporary (RFC 821 used 552 for it); a 552 with a mailbox
 * status ("5.2.2 over quota", "5.1.1") refuses the recipient, as Postfix
 * keeps it (its smtp_proto.c leaves 552 alone so that "too much mail data"
 * is not a recoverable error). */
static bool dlv_too_many_rcpts(const char *status, const char *text)
{
    if (status[0] != '\0')
        return strcmp(status, "5.5.3") == 0;
    return text != NULL && strcasestr(text, "too many recipients") != NULL;
}

static bool trouble_conn_stage(dlv_stage_t st)
{
    return st == DLV_STAGE_GREETING || st == DLV_STAGE_EHLO || st == DLV_STAGE_EHLO_TLS ||
           st == DLV_STAGE_HELO;
}

static bool trouble_txn_stage(dlv_stage_t st)
{
    return st == DLV_STAGE_MAIL || st == DLV_STAGE_RCPT || st == DLV_STAGE_DATA ||
           st == DLV_STAGE_DOT;
}

static dlv_fate_t trouble_fate(queue_result_t r)
{
    return r == Q_OUT_DELIVERED ? DLV_FATE_DELIVERED
           : r == Q_OUT_BOUNCED ? DLV_FATE_BOUNCED
                                : DLV_FATE_DEFERRED;
}

/* ------------------------------------------------------- classification */

const dlv_rules_t *dlv_rules_in_force(void)
{
    const dlv_rules_t *r = dlv_rules_active();
    if (LIKELY(r != NULL))
        return r;
    /* the built-in rules with the shipped providers, until
     * dlv_rules_install sets the configured ones */
    dlv_rules_t *nr = NULL;
    char err[512];
    if (dlv_rules_load(NULL, shp_provider_lookup, (void *)shp_conf_shipped(), &nr, err,
                       sizeof(err)) != 0) /* the shipped file is checked by the unit tests: a bug */
        sl_assert_fail(err, __FILE__, __LINE__, __func__);
    dlv_rules_set(nr, true);
    return dlv_rules_active();
}

void dlv_classify_reply(int code, const char *status, const char *text, const char *domain,
                        const char *mx, dlv_rule_hit_t *out)
{
    char host[256];
    if ((mx == NULL || mx[0] == '\0') && dlv_rules_text_host(text, host) > 0)
        mx = host; /* a refused greeting or EHLO names the host that refused */
    if (code >= 400 && code <= 599 &&
        dlv_rules_match(dlv_rules_in_force(), code, status, text, domain, mx, out))
        return;
    out->h_category = dlv_classify_builtin(code, status, text);
    out->h_bounce = false;
    out->h_rule = NULL;
    out->h_provider = NULL;
}

queue_result_t dlv_result_for_verdict(int code, const dlv_rule_hit_t *h)
{
    if (code >= 400 && code <= 499 && h != NULL && h->h_bounce)
        return Q_OUT_BOUNCED;
    return dlv_result_for_code(code);
}

const char *dlv_classify(int code, const char *status, const char *text)
{
    dlv_rule_hit_t h;
    dlv_classify_reply(code, status, text, NULL, NULL, &h);
    return h.h_category;
}

/* ------------------------------------------------------------ the judge */

/* Does r decide a fate? Fills v's text when the recorded text is not the
 * reply's own, rewrites *code and status for the replies recorded as
 * something else; false: not an outcome (v_fate already set). */
static bool trouble_decides(const dlv_reply_t *r, dlv_verdict_t *v, int *code, char status[16])
{
    int c = *code;
    const char *phase = NULL;
    switch (r->rp_stage) {
    case DLV_STAGE_GREETING:
        phase = "greeting";
        break;
    case DLV_STAGE_EHLO: /* a 5xx: HELO next, not a refusal yet */
        if (c / 100 == 5)
            return false;
        phase = "EHLO";
        break;
    case DLV_STAGE_EHLO_TLS:
        phase = "EHLO";
        break;
    case DLV_STAGE_HELO:
        phase = "HELO";
        break;
    case DLV_STAGE_STARTTLS: /* 220 or not, TLS or a TLS failure decides */
    case DLV_STAGE_OTHER:
        return false;
    case DLV_STAGE_MAIL:
        return c / 100 != 2;
    case DLV_STAGE_RCPT:
        if (r->rp_mail_refused || c / 100 == 2)
            return false; /* MAIL's reply decided; an accepted recipient waits for the dot */
        if ((c == 452 || c == 552) && r->rp_accepted > 0) {
            /* the server's per-transaction limit (RFC 5321 4.5.3.1.10; 552
             * is RFC 821's code for it): the next transaction */
            v->v_res.rs_fate = DLV_FATE_NEXT_TXN;
            return false;
        }
        if (c == 552 && dlv_too_many_rcpts(status, r->rp_text)) {
            /* "too many recipients" (RFC 821's 552) is temporary, RFC 5321
             * 4.5.3.1.10: recorded as 452 within the reply's 1 KiB line */
            const char *t = r->rp_text ? r->rp_text : "";
            size_t n = strnlen(t, 1023);
            memcpy(v->v_text, t, n);
            v->v_text[n] = '\0';
            if (snprintf(v->v_text + n, 1024 - n, " (552%s%s at RCPT: temporary)",
                         status[0] ? " " : "", status) >= (int)(1024 - n))
                log_debug("delivery: a 552 to RCPT: its text was cut");
            if (status[0] == '5')
                status[0] = '4';
            *code = 452;
        }
        return true;
    case DLV_STAGE_DATA:
        if (c == 354 || r->rp_accepted == 0 || r->rp_mail_refused)
            return false;
        if (c < 400) {
            /* RFC 5321 4.3.2: only 354 may answer DATA. A 250 here once
             * counted as delivered with no body sent: defer, and leave a
             * server that lost track of the dialogue. */
            snprintf(v->v_text, sizeof(v->v_text),
                     "protocol error: %s[%s] answered DATA with %d %.400s (expected 354)",
                     r->rp_mx ? r->rp_mx : "", r->rp_mx_ip ? r->rp_mx_ip : "", c,
                     r->rp_text ? r->rp_text : "");
            v->v_abort = true;
            *code = 0;
            snprintf(status, 16, "4.5.0");
        }
        return true;
    case DLV_STAGE_DOT:
        return r->rp_accepted > 0;
    case DLV_STAGE_DEST:
    case DLV_STAGE_CONNECT:
    case DLV_STAGE_LOCAL:
        return true;
    }
    if (c / 100 == 2)
        return false; /* the connection goes on */
    /* a refusal of the connection: the reply, with where it came from */
    snprintf(v->v_text, sizeof(v->v_text), "%s[%s]:%d %s: %d %.400s", r->rp_mx ? r->rp_mx : "",
             r->rp_mx_ip ? r->rp_mx_ip : "", r->rp_port, phase, c, r->rp_text ? r->rp_text : "");
    return true;
}

void dlv_judge(const dlv_reply_t *r, dlv_verdict_t *v)
{
    memset(&v->v_res, 0, sizeof(v->v_res));
    v->v_text[0] = '\0';
    v->v_rule = NULL;
    v->v_signal = 0;
    v->v_capacity = 0;
    v->v_abort = false;
    v->v_tls_policy = NULL;
    v->v_tls_failure = NULL;
    dlv_stage_t stage = r->rp_stage;
    int code = r->rp_code;
    char status[16]; /* the reply's own, rewritten where it is recorded as another */
    snprintf(status, sizeof(status), "%s", r->rp_status ? r->rp_status : "");
    if (!trouble_decides(r, v, &code, status))
        return;
    if (v->v_text[0] == '\0')
        snprintf(v->v_text, sizeof(v->v_text), "%s", r->rp_text ? r->rp_text : "");
    bool conn = trouble_conn_stage(stage), txn = trouble_txn_stage(stage);
    /* RFC 1870 6.1, 6.2: a bare 552 to MAIL or to the data is "too big" */
    if (txn && code == 552 && status[0] == '\0')
        snprintf(status, sizeof(status), "5.3.4");

    /* shaping: only the provider's verdicts on our mail (v_abort is ours),
     * on the reply as the server wrote it (a refusal's recorded text adds
     * where it came from) */
    if ((conn || txn) && r->rp_q != NULL && !v->v_abort) {
        uint64_t now = clock_mono_us();
        const char *said = conn ? (r->rp_text ? r->rp_text : "") : v->v_text;
        shp_capacity_t cap = SHP_CAP_NONE;
        if (code >= 400)
            v->v_signal = shp_queue_reply(r->rp_q, r->rp_domain, code, status, said,
                                          r->rp_conn_msgs, &cap, now);
        else if (stage == DLV_STAGE_DOT && code / 100 == 2)
            shp_queue_success(r->rp_q, now);
        v->v_capacity = (int)cap;
    }

    /* the fate: a refused connection defers whatever its code (the next
     * session or the next round may get through) */
    dlv_result_t *res = &v->v_res;
    if (conn || stage == DLV_STAGE_CONNECT)
        res->rs_fate = DLV_FATE_DEFERRED;
    else if (code != 0)
        res->rs_fate = trouble_fate(dlv_result_for_code(code));
    else
        res->rs_fate = status[0] == '5' ? DLV_FATE_BOUNCED : DLV_FATE_DEFERRED;
    if (txn && v->v_signal == SHP_A_BOUNCE_RCPT && res->rs_fate == DLV_FATE_DEFERRED)
        res->rs_fate = DLV_FATE_BOUNCED; /* a 4xx the provider's rule says means "never" */

    res->rs_code = code;
    if (code != 0)
        dlv_status_for_reply(code, status, res->rs_status);
    else if (status[0] != '\0')
        snprintf(res->rs_status, sizeof(res->rs_status), "%s", status);
    else
        snprintf(res->rs_status, sizeof(res->rs_status), "%s",
                 res->rs_fate == DLV_FATE_BOUNCED ? "5.0.0" : "4.0.0");
    if (res->rs_fate == DLV_FATE_DELIVERED)
        return;

    /* the category, and the rules' "bounce" for a 4xx that names a
     * permanent failure (some providers' "user unknown"). The MX host picks
     * the provider's rules when one answered in a transaction; else the
     * text names it ("host[ip]:port greeting: ...") or the domain decides. */
    dlv_rule_hit_t h;
    dlv_classify_reply(code, res->rs_status, v->v_text, r->rp_domain,
                       txn || stage == DLV_STAGE_LOCAL ? r->rp_mx : NULL, &h);
    if (h.h_bounce && res->rs_fate == DLV_FATE_DEFERRED && code >= 400 && code < 500)
        res->rs_fate = DLV_FATE_BOUNCED;
    res->rs_category = h.h_category;
    v->v_rule = h.h_rule;
    if (res->rs_fate != DLV_FATE_DEFERRED)
        return;
    if (stage == DLV_STAGE_DEST)
        res->rs_retry_at = r->rp_retry_at;
    else if ((txn || stage == DLV_STAGE_LOCAL) && r->rp_q != NULL)
        res->rs_retry_at = shp_queue_retry_at(r->rp_q); /* later in backoff */
}

/* ------------------------------------------------------------ reporting */

static const char *trouble_fate_word(dlv_fate_t f)
{
    return f == DLV_FATE_DELIVERED ? "sent" : f == DLV_FATE_BOUNCED ? "bounced" : "deferred";
}

/* The delivery log line: one per recipient, one form (docs/delivery.md,
 * "Outcomes"). The reply's text is the peer's: escaped. */
static void trouble_log(const queue_dispatch_t *qd, int i, const dlv_result_t *res,
                        const char *text, const dlv_where_t *w)
{
    if (log_level_current > LOG_INFO)
        return;
    char ids[17], relay[400], code[16] = "";
    queue_msgid_fmt(qd->qd_msgid, ids);
    if (w != NULL && w->w_mx != NULL)
        snprintf(relay, sizeof(relay), "%s[%s]:%d", w->w_mx, w->w_mx_ip ? w->w_mx_ip : "",
                 w->w_port);
    else
        snprintf(relay, sizeof(relay), "none");
    if (res->rs_code != 0)
        snprintf(code, sizeof(code), "%d ", res->rs_code);
    const char *tls = w != NULL && w->w_tls != NULL && w->w_tls[0] ? w->w_tls : "none";
    const char *sts = w != NULL ? w->w_mta_sts : NULL;
    const char *dane = w != NULL && w->w_tls_policy && strcmp(w->w_tls_policy, "dane") == 0
                           ? " tls_policy=dane"
                           : "";
    log_info("%s to=<%s> relay=%s tls=%s%s%s%s dsn=%s status=%s (%s%s)", ids,
             qd->qd_rcpts[i].qo_addr, relay, tls, sts ? " mta_sts=" : "", sts ? sts : "", dane,
             res->rs_status, trouble_fate_word(res->rs_fate), code, log_esc(text));
}

void dlv_report(dlv_thread_t *t, const queue_dispatch_t *qd, int i, const dlv_result_t *res,
                const char *text, const dlv_where_t *w)
{
    DLV_ASSERT_ON_LOOP(t);
    SL_ASSERT(res->rs_fate == DLV_FATE_DELIVERED || res->rs_fate == DLV_FATE_DEFERRED ||
              res->rs_fate == DLV_FATE_BOUNCED);
    dlv_stats_t *st = &t->t_d->d_stats;
    queue_outcome_t *o = xcalloc(1, sizeof(*o));
    o->qo_msgid = qd->qd_msgid;
    o->qo_idx = qd->qd_rcpts[i].qo_idx;
    o->qo_code = res->rs_code;
    snprintf(o->qo_status, sizeof(o->qo_status), "%s", res->rs_status);
    o->qo_text = text ? xstrdup(text) : NULL;
    switch (res->rs_fate) {
    case DLV_FATE_DELIVERED:
        o->qo_result = Q_OUT_DELIVERED;
        atomic_fetch_add_explicit(&st->ds_delivered, 1, memory_order_relaxed);
        break;
    case DLV_FATE_BOUNCED:
        o->qo_result = Q_OUT_BOUNCED;
        atomic_fetch_add_explicit(&st->ds_bounced, 1, memory_order_relaxed);
        break;
    default:
        o->qo_result = Q_OUT_DEFERRED;
        o->qo_retry_at = res->rs_retry_at;
        atomic_fetch_add_explicit(&st->ds_deferred, 1, memory_order_relaxed);
        break;
    }
    if (res->rs_fate != DLV_FATE_DELIVERED)
        o->qo_category = xstrdup(res->rs_category ? res->rs_category : "other");
    if (w != NULL) {
        o->qo_mx = w->w_mx ? xstrdup(w->w_mx) : NULL;
        snprintf(o->qo_mx_ip, sizeof(o->qo_mx_ip), "%s", w->w_mx_ip ? w->w_mx_ip : "");
        snprintf(o->qo_src_ip, sizeof(o->qo_src_ip), "%s", w->w_src_ip ? w->w_src_ip : "");
        snprintf(o->qo_tls, sizeof(o->qo_tls), "%s", w->w_tls ? w->w_tls : "");
        snprintf(o->qo_cipher, sizeof(o->qo_cipher), "%s", w->w_cipher ? w->w_cipher : "");
        snprintf(o->qo_mta_sts, sizeof(o->qo_mta_sts), "%s", w->w_mta_sts ? w->w_mta_sts : "");
        snprintf(o->qo_tls_policy, sizeof(o->qo_tls_policy), "%s",
                 w->w_tls_policy ? w->w_tls_policy : "");
        snprintf(o->qo_tls_failure, sizeof(o->qo_tls_failure), "%s",
                 w->w_tls_failure ? w->w_tls_failure : "");
        o->qo_peer_dsn = w->w_peer_dsn; /* a success DSN is then the next hop's to send */
        snprintf(o->qo_vmta, sizeof(o->qo_vmta), "%s", w->w_vmta ? w->w_vmta : "");
        snprintf(o->qo_pool, sizeof(o->qo_pool), "%s", w->w_pool ? w->w_pool : "");
        snprintf(o->qo_provider, sizeof(o->qo_provider), "%s", w->w_provider ? w->w_provider : "");
        o->qo_txn_rcpts = w->w_txn_rcpts > 0 ? (uint32_t)w->w_txn_rcpts : 0;
    }
    trouble_log(qd, i, res, text, w);
    queue_outcome_submit(t->t_d->d_queue, o);
}
