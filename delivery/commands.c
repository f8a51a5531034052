/*
 * commands.c - the SMTP client's side of the codec: what an EHLO reply
 * advertises (RFC 5321 4.1.1.1 and the extensions sluice uses), and the
 * MAIL and RCPT command lines with their parameters (RFC 6152 BODY, RFC
 * 6531 SMTPUTF8, RFC 1870 SIZE, RFC 3461 RET/ENVID/NOTIFY/ORCPT), each
 * only when the server offered its extension. Pure functions; session.c
 * uses them.
 *
 * Thread: any; no state.
 */
#include "delivery/delivery_int.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>

/* "SIZE" [SP number] (RFC 1870 4): the number is the largest message the
 * server takes; none, 0 or not a number: no fixed limit. */
static void cmd_parse_size(dlv_ehlo_t *x, const char *p, size_t n)
{
    x->x_size = true;
    size_t i = 0;
    while (i < n && p[i] == ' ')
        i++;
    uint64_t v = 0;
    size_t digits = 0;
    for (; i < n && p[i] >= '0' && p[i] <= '9' && digits < 19; i++, digits++)
        v = v * 10 + (uint64_t)(p[i] - '0');
    x->x_size_max = i == n && digits > 0 ? v : 0;
}

void dlv_ehlo_parse(const buf_t *t, dlv_ehlo_t *x)
{
    memset(x, 0, sizeof(*x));
    size_t i = 0;
    bool first = true;
    while (i < t->b_len) {
        const char *line = t->b_data + i;
        const char *nl = memchr(line, '\n', t->b_len - i);
        size_t len = nl ? (size_t)(nl - line) : t->b_len - i;
        i += len + 1;
        if (first) { /* the server's greeting name */
            first = false;
            continue;
        }
        char kw[32];
        size_t k = 0;
        while (k < len && k + 1 < sizeof(kw) && line[k] != ' ' && line[k] != '=') {
            kw[k] = (char)toupper((unsigned char)line[k]);
            k++;
        }
        kw[k] = '\0';
        if (strcmp(kw, "PIPELINING") == 0)
            x->x_pipelining = true;
        else if (strcmp(kw, "8BITMIME") == 0)
            x->x_8bitmime = true;
        else if (strcmp(kw, "SMTPUTF8") == 0)
            x->x_smtputf8 = true;
        else if (strcmp(kw, "STARTTLS") == 0)
            x->x_starttls = true;
        else if (strcmp(kw, "DSN") == 0)
            x->x_dsn = true;
        else if (strcmp(kw, "SIZE") == 0)
            cmd_parse_size(x, line + k, len - k);
    }
}

void dlv_cmd_mail(buf_t *b, const queue_dispatch_t *qd, const char *from, const dlv_ehlo_t *x,
                  bool body_8bit, size_t size)
{
    buf_printf(b, "MAIL FROM:<%s>", from ? from : qd->qd_sender);
    /* what is sent is 8-bit, declared or not (a 7-bit copy was made for a
     * server without 8BITMIME) */
    if ((qd->qd_flags & Q_F_8BITMIME || body_8bit) && x->x_8bitmime)
        buf_append_str(b, " BODY=8BITMIME");
    if ((qd->qd_flags & Q_F_SMTPUTF8) && x->x_smtputf8)
        buf_append_str(b, " SMTPUTF8");
    if (x->x_size)
        buf_printf(b, " SIZE=%zu", size);
    if (x->x_dsn) {
        if (qd->qd_flags & Q_F_RET_FULL)
            buf_append_str(b, " RET=FULL");
        else if (qd->qd_flags & Q_F_RET_HDRS)
            buf_append_str(b, " RET=HDRS");
        if (qd->qd_envid && qd->qd_envid[0])
            buf_printf(b, " ENVID=%s", qd->qd_envid);
    }
    buf_append(b, "\r\n", 2);
}

void dlv_cmd_rcpt(buf_t *b, const queue_rcpt_out_t *r, const dlv_ehlo_t *x)
{
    buf_printf(b, "RCPT TO:<%s>", r->qo_addr);
    if (x->x_dsn) {
        if (r->qo_notify & Q_NOTIFY_NEVER) {
            buf_append_str(b, " NOTIFY=NEVER");
        } else if (r->qo_notify) {
            const char *sep = " NOTIFY=";
            if (r->qo_notify & Q_NOTIFY_SUCCESS) {
                buf_printf(b, "%sSUCCESS", sep);
                sep = ",";
            }
            if (r->qo_notify & Q_NOTIFY_FAILURE) {
                buf_printf(b, "%sFAILURE", sep);
                sep = ",";
            }
            if (r->qo_notify & Q_NOTIFY_DELAY)
                buf_printf(b, "%sDELAY", sep);
        }
        if (r->qo_orcpt && r->qo_orcpt[0])
            buf_printf(b, " ORCPT=%s%s", strchr(r->qo_orcpt, ';') ? "" : "rfc822;", r->qo_orcpt);
    }
    buf_append(b, "\r\n", 2);
}
