/*
 * delivery/dkim_sign.c - DKIM at delivery: dlv_dkim_prepare() signs the
 * message of a dispatch once per delivery attempt, when a session takes the
 * dispatch, before MAIL FROM (so SIZE= counts the signatures and a signing
 * failure never opens a transaction). What it signs is what the session
 * sends: the stored message, or its 7-bit copy for a server without
 * 8BITMIME (mime7bit.c), so that the signature verifies at the receiver. The session keeps the
 * returned DKIM-Signature fields for every transaction of that dispatch (more than
 * max_rcpt_per_transaction recipients) and puts them in front of the body
 * before dot-stuffing.
 *
 * The signer comes from the config snapshot the delivery thread holds
 * (dkim_cfg_signer): keys were parsed when the snapshot was loaded.
 *
 * Thread: the delivery thread that owns the session.
 */
#include "delivery/delivery_int.h"
#include "dkim/dkim.h"

#include <stdio.h>

int dlv_dkim_prepare(const cfg_t *cfg, const queue_dispatch_t *qd, const char *msg, size_t len,
                     buf_t *out, char *why, size_t whylen)
{
    const dkim_signer_t *signer = dkim_cfg_signer(cfg);
    buf_reset(out);
    if (signer == NULL)
        return 0;
    int rc = dkim_sign(signer, msg, len, out);
    if (rc >= 0)
        return rc;
    char ids[17];
    queue_msgid_fmt(qd->qd_msgid, ids);
    snprintf(why, whylen, "DKIM signing failed (%s)", dkim_strerror(rc));
    log_error("%s dkim=failed domain=%s error=\"%s\": %d recipient(s) deferred, not sent unsigned",
              ids, qd->qd_domain, dkim_strerror(rc), qd->qd_nrcpt);
    buf_reset(out);
    return rc;
}
