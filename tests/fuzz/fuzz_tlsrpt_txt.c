/*
 * tests/fuzz/fuzz_tlsrpt_txt.c - fuzz target: the TLSRPT TXT record parser
 * (q_tlsrpt_txt_parse in queue/tlsrpt_send.c, RFC 8460 3). Input: the
 * record's text (a NUL ends it, as in the TXT strings sluice keeps).
 *
 * Thread: single-threaded.
 */
#include "queue/queue_int.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536)
        return 0;
    char *s = xmalloc(size + 1);
    memcpy(s, data, size);
    s[size] = '\0';
    char **u = NULL;
    int n = -1;
    if (q_tlsrpt_txt_parse(s, &u, &n) == 0) {
        if (n < 1 || n > 8 || u == NULL)
            abort();
        for (int i = 0; i < n; i++)
            if (u[i] == NULL ||
                (strncasecmp(u[i], "mailto:", 7) != 0 && strncasecmp(u[i], "https://", 8) != 0))
                abort(); /* only the two schemes RFC 8460 3 names */
        q_tlsrpt_uris_free(u, n);
    }
    free(s);
    return 0;
}
