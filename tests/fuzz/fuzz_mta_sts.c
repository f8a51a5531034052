/*
 * tests/fuzz/fuzz_mta_sts.c - fuzz target: the MTA-STS parsers that read
 * the network (delivery/sts_parse.c, core/base/dns.c), linked with them
 * alone. The first input byte picks one: 0 the TXT answer packet
 * (dns_parse_txt, then every record through sts_txt_select), 1 the policy
 * file (sts_policy_parse and MX matching), 2 the response checks
 * (sts_response_check on a Content-Type; libcurl reads the HTTP itself),
 * 3 MX pattern matching (pattern NUL host), 4 one TXT record
 * (sts_txt_record_parse). The rest is the input.
 *
 * Thread: single-threaded.
 */
#include "delivery/mta_sts_int.h"

#include <stdlib.h>
#include <strings.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void policy(const char *p, size_t n)
{
    sts_policy_t *pol = NULL;
    char why[200];
    if (sts_policy_parse(p, n, &pol, why, sizeof(why)) != 0)
        return;
    if (pol->sp_mode != STS_MODE_NONE && pol->sp_nmx == 0)
        abort();
    if (pol->sp_max_age > STS_MAX_AGE_MAX)
        abort();
    for (int i = 0; i < pol->sp_nmx; i++)
        if (pol->sp_mx[i][0] != '*' && !sts_mx_pattern_match(pol->sp_mx[i], pol->sp_mx[i]))
            abort(); /* an exact pattern matches itself */
    (void)sts_policy_mx_match(pol, "mx.example.com");
    sts_policy_unref(pol);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 200000)
        return 0;
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    switch (data[0] % 5) {
    case 0: {
        char **txt = NULL;
        int cnt = -1;
        uint32_t ttl;
        if (n > 65535 || dns_parse_txt(p, (int)n, &txt, &cnt, &ttl) != 0)
            return 0;
        if (cnt < 0 || (cnt > 0 && txt == NULL))
            abort();
        char id[STS_ID_MAX + 1], why[128];
        if (sts_txt_select((const char *const *)txt, cnt, id, why, sizeof(why)) == 1 &&
            strlen(id) > STS_ID_MAX)
            abort();
        dns_txt_array_free(txt, cnt);
        return 0;
    }
    case 1:
        policy((const char *)p, n);
        return 0;
    case 2: {
        char *ct = malloc(n + 1); /* a C string, as libcurl gives it */
        memcpy(ct, p, n);
        ct[n] = '\0';
        char why[200];
        if (sts_response_check(200, ct, why, sizeof(why)) == 0 && strncasecmp(ct, "text/plain", 10))
            abort();
        free(ct);
        return 0;
    }
    case 3: { /* "pattern" NUL "host" */
        char *buf = malloc(n + 2);
        memcpy(buf, p, n);
        buf[n] = buf[n + 1] = '\0';
        const char *host = buf + strlen(buf) + 1; /* "" when there is no NUL */
        (void)sts_mx_pattern_match(buf, host);
        free(buf);
        return 0;
    }
    default: {
        char *rec = malloc(n + 1); /* a C string, as dns_parse_txt gives */
        memcpy(rec, p, n);
        rec[n] = '\0';
        char id[STS_ID_MAX + 1];
        if (sts_txt_record_parse(rec, id) == 1 && strlen(id) > STS_ID_MAX)
            abort();
        free(rec);
        return 0;
    }
    }
}
