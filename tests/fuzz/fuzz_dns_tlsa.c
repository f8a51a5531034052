/*
 * tests/fuzz/fuzz_dns_tlsa.c - fuzz target: the TLSA answer parser
 * (dns_parse_tlsa in core/base/dns.c) and the usability test of each
 * record (dlv_dane_usable, delivery/dane.c). Input: a raw DNS answer.
 *
 * Thread: single-threaded.
 */
#include "delivery/delivery_int.h"

#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65535)
        return 0;
    dns_tlsa_t *t = NULL;
    int n = -1;
    uint32_t ttl = 0;
    if (dns_parse_tlsa(data, (int)size, &t, &n, &ttl) == 0) {
        if (n < 0 || n > DNS_TLSA_MAX || (n > 0 && t == NULL))
            abort();
        for (int i = 0; i < n; i++) {
            if (t[i].dt_data == NULL || t[i].dt_len > size)
                abort();
            (void)dlv_dane_usable(&t[i]);
        }
        dns_tlsa_array_free(t, n);
    }
    return 0;
}
