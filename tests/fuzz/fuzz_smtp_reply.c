/*
 * tests/fuzz/fuzz_smtp_reply.c - fuzz target: the client-side reply parser
 * (smtp_reply_feed), multi-line replies included. Input: bytes split at LF
 * (a CR before the LF is dropped) into lines fed one by one; a complete
 * reply starts the next one, as the delivery session does. The first byte
 * picks the length limit, so the SL_ETOOBIG path is reached.
 *
 * Thread: single-threaded.
 */
#include "core/base/base.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t max_len = data[0] & 1 ? 64 : 65536;
    data++;
    size--;
    smtp_reply_t r;
    memset(&r, 0, sizeof(r));
    smtp_reply_reset(&r);
    size_t start = 0;
    for (size_t i = 0; i <= size; i++) {
        if (i < size && data[i] != '\n')
            continue;
        size_t len = i - start;
        if (len > 0 && data[start + len - 1] == '\r')
            len--;
        /* an exact-size copy: reading past the line is caught by ASan */
        char *line = malloc(len + 1);
        memcpy(line, data + start, len);
        line[len] = '\0';
        int rc = smtp_reply_feed(&r, line, len, max_len);
        free(line);
        if (rc == 1) {
            if (r.sr_code < 200 || r.sr_code > 599 || !r.sr_done)
                abort();
            if (r.sr_text.b_len > max_len + 1024)
                abort();
            smtp_reply_reset(&r);
        } else if (rc < 0) {
            smtp_reply_reset(&r);
        }
        start = i + 1;
    }
    smtp_reply_free(&r);
    return 0;
}
