/*
 * tests/fuzz/fuzz_ctlproto.c - fuzz target: the control-socket protocol
 * (ctl_line_next framing, then ctl_request_parse on each line), the way
 * core/server/control.c reads a connection's buffer. Each answer is also
 * formatted back with ctl_response_append / ctl_error_append.
 *
 * Thread: single-threaded.
 */
#include "core/base/base.h"

#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* small limit on odd first bytes so the SL_ETOOLONG path is reached */
    size_t max = size > 0 && (data[0] & 1) ? 32 : CTL_MAX_LINE;
    const char *p = (const char *)data;
    size_t left = size;
    buf_t out;
    buf_init(&out, 256);
    for (;;) {
        size_t line_len = 0, used = 0;
        int rc = ctl_line_next(p, left, max, &line_len, &used);
        if (rc <= 0)
            break;
        if (used == 0 || used > left || line_len >= used)
            abort();
        struct json_object *req = NULL;
        const char *cmd = NULL;
        char err[256] = "";
        if (ctl_request_parse(p, line_len, &req, &cmd, err, sizeof(err)) == 0) {
            if (req == NULL || cmd == NULL)
                abort();
            ctl_response_append(&out, req);
            json_object_put(req);
        } else {
            if (err[0] == '\0')
                abort();
            ctl_error_append(&out, err);
        }
        buf_reset(&out);
        p += used;
        left -= used;
    }
    buf_free(&out);
    return 0;
}
