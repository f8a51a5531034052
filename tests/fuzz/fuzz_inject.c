/*
 * tests/fuzz/fuzz_inject.c - fuzz target: the HTTP injection API's
 * JSON-to-message path (core/server/inject_req.c, inject_mime.c), as
 * httpd.c drives it: inj_parse on the body, then inj_render of the shared
 * message and of each recipient's (the first 64).
 *
 * Beyond the sanitizers, every rendered message must keep the promises
 * of docs/http-api.md: CRLF line ends only (no bare CR or LF, no NUL), no
 * line over 998 bytes, a header section ending in an empty line; a
 * refusal must say which code and status.
 *
 * Thread: single-threaded.
 */
#include "core/server/inject_int.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_message(const buf_t *b)
{
    const char *p = b->b_data, *end = b->b_data + b->b_len;
    bool blank = false;
    if (b->b_len < 2 || memcmp(end - 2, "\r\n", 2) != 0)
        abort();
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (nl == NULL || nl == p || nl[-1] != '\r')
            abort(); /* a bare LF, or a last line without CRLF */
        size_t ll = (size_t)(nl - 1 - p);
        if (ll > 998 || memchr(p, '\r', ll) != NULL || memchr(p, '\0', ll) != NULL)
            abort();
        blank |= ll == 0;
        p = nl + 1;
    }
    if (!blank)
        abort(); /* no end of the header section */
}

static void check_err(const inj_err_t *e)
{
    if (e->ie_code == NULL || e->ie_status < 400 || e->ie_status > 499 || e->ie_message[0] == 0)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    inj_limits_t lim = {.il_max_rcpts = 1000, .il_max_msg = 1 << 20, .il_max_depth = 16};
    inj_err_t e = {0};
    inj_req_t *r = NULL;
    if (inj_parse((const char *)data, size, &lim, &r, &e) != 0) {
        check_err(&e);
        return 0;
    }
    inj_ctx_t cx = {.ic_hostname = "fuzz.example",
                    .ic_client_ip = "127.0.0.1",
                    .ic_proto = "HTTP",
                    .ic_msgid = 0x0123456789ABCDEFull,
                    .ic_now = 1700000000};
    for (int ri = -1; ri < r->ir_nrcpt && ri < 64; ri++) {
        buf_t out;
        bool eightbit;
        buf_init(&out, 1024);
        memset(&e, 0, sizeof(e));
        int rc = inj_render(r, ri, &cx, &out, &eightbit, &e);
        if (rc == 0)
            check_message(&out);
        else if (rc == INJ_PERSONAL && ri != -1)
            abort(); /* a recipient's own message has every name it needs */
        else if (rc < 0)
            check_err(&e);
        buf_free(&out);
    }
    inj_req_free(r);
    return 0;
}
