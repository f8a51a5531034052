/*
 * dane.c - DANE for SMTP (RFC 7672): which MX hosts must be authenticated
 * by their TLSA records, and with what.
 *
 * With delivery.dnssec = "trust-ad", a destination whose MX answer was
 * secure (AD from the trusted resolver) asks, for each MX host, whether
 * the host's address answer is secure too (RFC 7672 2.2.2: a TLSA lookup
 * is only meaningful for a host name reached securely) and for the TLSA
 * records at _<port>._tcp.<host> (RFC 7672 2.2.3). The verdict per host
 * (dlv_dane_t, refcounted: every address of the host shares it):
 *   - none: insecure address or TLSA answer, no TLSA records, or records
 *     none of which is usable: the destination's other policies apply
 *     (MTA-STS, tls_policy, opportunistic);
 *   - dane: at least one usable record - DANE-TA(2) or DANE-EE(3),
 *     selector 0/1, matching type 0/1/2 with the right digest length;
 *     PKIX-TA(0) and PKIX-EE(1) are ignored for SMTP (RFC 7672 3.1.3);
 *     TLS is then mandatory and verified by OpenSSL's DANE API
 *     (tls_conn_new_dane);
 *   - failed: the TLSA lookup failed (SERVFAIL: a bogus answer from a
 *     validating resolver looks the same) or the address answer failed
 *     on a secure zone: the host is not used this time (4.7.5), the next
 *     MX is tried (RFC 7672 2.2).
 * A leaf of delivery/: it calls nothing else in the module. Also here:
 * dlv_tlsrpt_note, the TLSRPT count of one TLS session (queue/tlsrpt.c).
 *
 * Thread: the destination's delivery thread; nothing here is shared.
 */
#include "delivery/delivery_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct dane_lookup {
    dlv_thread_t *dl_t;
    char *dl_host;
    dlv_dane_done_fn dl_done;
    void *dl_arg;
    int dl_waiting;
    bool dl_cancelled;
    dns_status_t dl_addr_st;
    bool dl_addr_secure;
    dns_status_t dl_tlsa_st;
    bool dl_tlsa_secure;
    dns_tlsa_t *dl_tlsa; /* the usable records */
    int dl_ntlsa;
    int dl_ntlsa_seen; /* records in the answer */
} dane_lookup_t;

static void dane_addr_cb(void *arg, dns_status_t st, bool secure);
static void dane_tlsa_cb(void *arg, dns_status_t st, bool secure, const dns_tlsa_t *t, int n,
                         uint32_t ttl);
static void dane_finish(dane_lookup_t *dl);

void dlv_tlsrpt_note(dlv_thread_t *t, const char *domain, const char *ptype, const char *result,
                     const char *reason, const char *mx, const char *ip)
{
    DLV_ASSERT_ON_LOOP(t);
    if (t->t_cfg->c_tlsrpt_org[0] == '\0') /* reports.tlsrpt off: nothing counted */
        return;
    queue_tlsrpt_note(t->t_d->d_queue, domain, ptype, result, result ? reason : NULL, mx, ip);
}

bool dlv_dane_usable(const dns_tlsa_t *r)
{
    if (r->dt_usage != 2 && r->dt_usage != 3) /* PKIX-TA / PKIX-EE: not for SMTP */
        return false;
    if (r->dt_selector > 1)
        return false;
    switch (r->dt_mtype) {
    case 0:
        return r->dt_len > 0;
    case 1:
        return r->dt_len == 32; /* SHA2-256 */
    case 2:
        return r->dt_len == 64; /* SHA2-512 */
    default:
        return false;
    }
}

dlv_dane_t *dlv_dane_ref(dlv_dane_t *dn)
{
    if (dn != NULL)
        dn->dn_refs++;
    return dn;
}

void dlv_dane_unref(dlv_dane_t *dn)
{
    if (dn == NULL || --dn->dn_refs > 0)
        return;
    dns_tlsa_array_free(dn->dn_tlsa, dn->dn_ntlsa);
    free(dn);
}

void dlv_dane_lookup(dlv_thread_t *t, const char *host, int port, dlv_dane_done_fn done, void *arg)
{
    DLV_ASSERT_ON_LOOP(t);
    dane_lookup_t *dl = xcalloc(1, sizeof(*dl));
    dl->dl_t = t;
    dl->dl_host = xstrdup(host);
    dl->dl_done = done;
    dl->dl_arg = arg;
    dl->dl_waiting = 2;
    char name[300];
    snprintf(name, sizeof(name), "_%d._tcp.%s", port, host);
    dns_query_secure(t->t_dns, host, 1 /* A */, dane_addr_cb, dl);
    dns_query_tlsa(t->t_dns, name, dane_tlsa_cb, dl);
}

static void dane_addr_cb(void *arg, dns_status_t st, bool secure)
{
    dane_lookup_t *dl = arg;
    dl->dl_addr_st = st;
    dl->dl_addr_secure = secure;
    if (st == DNS_CANCELLED)
        dl->dl_cancelled = true;
    if (--dl->dl_waiting == 0)
        dane_finish(dl);
}

static void dane_tlsa_cb(void *arg, dns_status_t st, bool secure, const dns_tlsa_t *t, int n,
                         uint32_t ttl)
{
    dane_lookup_t *dl = arg;
    UNUSED(ttl);
    dl->dl_tlsa_st = st;
    dl->dl_tlsa_secure = secure;
    if (st == DNS_CANCELLED)
        dl->dl_cancelled = true;
    /* keep the usable records only (RFC 7672 2.2: the others do not count) */
    for (int i = 0; i < n; i++) {
        if (!dlv_dane_usable(&t[i]))
            continue;
        dl->dl_tlsa = xrealloc(dl->dl_tlsa, sizeof(*dl->dl_tlsa) * (size_t)(dl->dl_ntlsa + 1));
        dns_tlsa_t *c = &dl->dl_tlsa[dl->dl_ntlsa++];
        *c = t[i];
        c->dt_data = xmalloc(t[i].dt_len ? t[i].dt_len : 1);
        memcpy(c->dt_data, t[i].dt_data, t[i].dt_len);
    }
    dl->dl_ntlsa_seen = n;
    if (--dl->dl_waiting == 0)
        dane_finish(dl);
}

/* Both answers are in: the host's verdict. */
static void dane_finish(dane_lookup_t *dl)
{
    dlv_dane_t *dn = NULL;
    if (!dl->dl_cancelled) {
        dn = xcalloc(1, sizeof(*dn));
        dn->dn_refs = 1;
        bool addr_ok = dl->dl_addr_st == DNS_OK || dl->dl_addr_st == DNS_NODATA;
        if (dl->dl_addr_st == DNS_TEMPFAIL) {
            dn->dn_state = DLV_DANE_FAILED;
            dn->dn_failure = "dnssec-invalid";
            snprintf(dn->dn_why, sizeof(dn->dn_why),
                     "DANE: address lookup of %s failed in a signed zone", dl->dl_host);
        } else if (!addr_ok || !dl->dl_addr_secure) {
            dn->dn_state = DLV_DANE_NONE; /* RFC 7672 2.2.2: insecure host name, no DANE */
        } else if (dl->dl_tlsa_st == DNS_TEMPFAIL) {
            dn->dn_state = DLV_DANE_FAILED;
            dn->dn_failure = "dnssec-invalid";
            snprintf(dn->dn_why, sizeof(dn->dn_why),
                     "DANE: TLSA lookup for %s failed (SERVFAIL or bogus)", dl->dl_host);
        } else if (dl->dl_tlsa_st != DNS_OK || !dl->dl_tlsa_secure) {
            dn->dn_state = DLV_DANE_NONE; /* no records, or insecure ones */
        } else if (dl->dl_ntlsa == 0) {
            /* RFC 7672 2.2: an RRset with no usable record is as none;
             * TLSRPT still hears of it (tlsa-invalid) */
            dn->dn_state = DLV_DANE_NONE;
            dn->dn_failure = "tlsa-invalid";
            snprintf(dn->dn_why, sizeof(dn->dn_why), "DANE: no usable TLSA record for %s (%d)",
                     dl->dl_host, dl->dl_ntlsa_seen);
        } else {
            dn->dn_state = DLV_DANE_ON;
            dn->dn_tlsa = dl->dl_tlsa;
            dn->dn_ntlsa = dl->dl_ntlsa;
            dl->dl_tlsa = NULL;
            dl->dl_ntlsa = 0;
        }
        log_debug("delivery: DANE %s: %s%s%s", dl->dl_host,
                  dn->dn_state == DLV_DANE_ON       ? "TLSA usable"
                  : dn->dn_state == DLV_DANE_FAILED ? "failed"
                                                    : "not used",
                  dn->dn_why[0] ? ": " : "", dn->dn_why);
    }
    dl->dl_done(dl->dl_arg, dn);
    dns_tlsa_array_free(dl->dl_tlsa, dl->dl_ntlsa);
    free(dl->dl_host);
    free(dl);
}
