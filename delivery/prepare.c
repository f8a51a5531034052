/*
 * prepare.c - a dispatch's message as one server gets it, made when a
 * session takes the dispatch, before MAIL FROM (so that SIZE= counts what
 * is sent and a failure never opens a transaction):
 *
 *   - SMTPUTF8 (RFC 6531 3.4): addresses are never downgraded; the copy
 *     needs SMTPUTF8 only when its envelope or header fields are not ASCII
 *     (Postfix's rule, dlv_msg_utf8_need);
 *   - 8BITMIME (RFC 6152 3): 8-bit content to a server without it goes as
 *     a 7-bit copy (mime7bit.c), or bounces 5.6.3 when none can be made;
 *   - DKIM at delivery: the message is signed once, whatever its number
 *     of destination domains and attempts (dkim_sign_once: the signer of
 *     the config snapshot keeps the fields per message), over what is sent
 *     (the 7-bit copy when there is one, signed once as its own variant,
 *     so that the signature verifies at the receiver); a signing failure
 *     defers 4.3.0, never sends unsigned;
 *   - SIZE (RFC 1870 6.1): a message larger than the server takes bounces
 *     5.3.4 without a transaction.
 * The session keeps the DKIM-Signature fields for every transaction of
 * the dispatch (more than max_rcpt_per_transaction recipients) and puts
 * them in front of the body before dot-stuffing.
 *
 * Thread: the delivery thread that owns the session.
 */
#include "delivery/delivery_int.h"
#include "delivery/mime7bit_int.h"
#include "dkim/dkim.h"

#include <stdio.h>
#include <string.h>

const char *dlv_msg_utf8_need(const queue_dispatch_t *qd)
{
    if (mime7_has_8bit(qd->qd_sender, strlen(qd->qd_sender)))
        return "sender address";
    if (mime7_has_8bit(qd->qd_body, mime7_header_len(qd->qd_body, qd->qd_body_len)))
        return "header fields";
    return NULL;
}

bool dlv_msg_rcpt_utf8(const queue_dispatch_t *qd, int i)
{
    const char *a = qd->qd_rcpts[i].qo_addr;
    return mime7_has_8bit(a, strlen(a));
}

/* Sign what is sent with cfg's DKIM signer: m_dkim gets the
 * DKIM-Signature fields (empty when nothing signs). */
static int msg_dkim(const cfg_t *cfg, const queue_dispatch_t *qd, dlv_msg_t *m, char *why,
                    size_t whylen)
{
    const dkim_signer_t *signer = dkim_cfg_signer(cfg);
    buf_reset(&m->m_dkim);
    if (signer == NULL)
        return 0;
    /* once per message: its other domains and retries get the same fields */
    unsigned variant = m->m_msg != qd->qd_body; /* 1: the 7-bit copy */
    int rc = dkim_sign_once(signer, qd->qd_msgid, variant, m->m_msg, m->m_len, &m->m_dkim);
    if (rc >= 0)
        return rc;
    char ids[17];
    queue_msgid_fmt(qd->qd_msgid, ids);
    snprintf(why, whylen, "DKIM signing failed (%s)", dkim_strerror(rc));
    log_error("%s dkim=failed domain=%s error=\"%s\": %d recipient(s) deferred, not sent unsigned",
              ids, qd->qd_domain, dkim_strerror(rc), qd->qd_nrcpt);
    buf_reset(&m->m_dkim);
    return rc;
}

int dlv_msg_prepare(const cfg_t *cfg, const queue_dispatch_t *qd, const dlv_ehlo_t *x,
                    const char *host, const char *ip, dlv_msg_t *m, char status[16], char *text,
                    size_t textlen)
{
    m->m_msg = qd->qd_body;
    m->m_len = qd->qd_body_len;
    m->m_8bit = mime7_has_8bit(qd->qd_body, qd->qd_body_len);
    if (m->m_8bit && !x->x_8bitmime) {
        char why[200];
        buf_reset(&m->m_copy);
        if (mime7_convert(qd->qd_body, qd->qd_body_len, &m->m_copy, why, sizeof(why)) < 0) {
            buf_free(&m->m_copy);
            snprintf(status, 16, "5.6.3");
            snprintf(text, textlen,
                     "8-bit message cannot be converted to 7-bit for %s[%s], which does not offer "
                     "8BITMIME: %s",
                     host, ip, why);
            return -1;
        }
        m->m_msg = m->m_copy.b_data;
        m->m_len = m->m_copy.b_len;
        if (log_level_current <= LOG_DEBUG) {
            char ids[17];
            queue_msgid_fmt(qd->qd_msgid, ids);
            log_debug("%s converted to 7-bit for %s[%s] (%zu -> %zu bytes)", ids, host, ip,
                      qd->qd_body_len, m->m_len);
        }
    }
    if (msg_dkim(cfg, qd, m, text, textlen) < 0) {
        snprintf(status, 16, "4.3.0"); /* never unsigned */
        return -1;
    }
    size_t size = dlv_msg_size(m);
    if (x->x_size_max > 0 && size > x->x_size_max) {
        /* RFC 1870 6.1: not worth a transaction the server will refuse */
        snprintf(status, 16, "5.3.4");
        snprintf(text, textlen, "message size %zu exceeds size limit %llu of server %s[%s]", size,
                 (unsigned long long)x->x_size_max, host, ip);
        return -1;
    }
    return 0;
}

size_t dlv_msg_size(const dlv_msg_t *m)
{
    return m->m_dkim.b_len + m->m_len;
}

void dlv_msg_done(dlv_msg_t *m)
{
    buf_reset(&m->m_dkim);
    buf_free(&m->m_copy); /* may be large: not kept for the next message */
    m->m_msg = NULL;
    m->m_len = 0;
}
