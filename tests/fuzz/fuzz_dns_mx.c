/*
 * tests/fuzz/fuzz_dns_mx.c - fuzz target: our own MX answer parser
 * (dns_parse_mx in core/base/dns.c; c-ares only expands names for it).
 * Input: a raw DNS answer packet.
 *
 * Thread: single-threaded.
 */
#include "core/base/base.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65535)
        return 0;
    dns_mx_t *mx = NULL;
    int n = -1;
    uint32_t ttl = 0;
    if (dns_parse_mx(data, (int)size, &mx, &n, &ttl) == 0) {
        if (n < 0 || (n > 0 && mx == NULL))
            abort();
        for (int i = 0; i < n; i++) {
            if (mx[i].dm_host == NULL)
                abort();
            if (i > 0 && mx[i].dm_pref < mx[i - 1].dm_pref)
                abort(); /* sorted by preference */
        }
        (void)dns_mx_is_null(mx, n);
        dns_mx_array_free(mx, n);
    }
    return 0;
}
