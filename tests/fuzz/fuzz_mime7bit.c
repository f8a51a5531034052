/*
 * tests/fuzz/fuzz_mime7bit.c - fuzz target: the 8-bit to 7-bit conversion
 * (delivery/mime7bit.c, mime7_convert) on any message. Checks what every
 * conversion promises: success leaves no 8-bit byte and converting its
 * output again changes nothing; a 7-bit input is left alone; a failure
 * gives a reason.
 *
 * Thread: single-threaded.
 */
#include "delivery/mime7bit_int.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exact-size copy: reading past the message is caught by ASan */
    char *msg = malloc(size ? size : 1);
    memcpy(msg, data, size);
    buf_t out;
    buf_init(&out, 0);
    char why[200] = "";
    int rc = mime7_convert(msg, size, &out, why, sizeof(why));
    if (rc == 0 && (out.b_len != 0 || mime7_has_8bit(msg, size)))
        abort();
    if (rc < 0 && why[0] == '\0')
        abort();
    if (rc == 1) {
        if (mime7_has_8bit(out.b_data, out.b_len))
            abort();
        buf_t again;
        buf_init(&again, 0);
        if (mime7_convert(out.b_data, out.b_len, &again, why, sizeof(why)) != 0)
            abort();
        buf_free(&again);
    }
    (void)mime7_header_len(msg, size);
    buf_free(&out);
    free(msg);
    return 0;
}
