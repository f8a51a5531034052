/*
 * tests/fuzz/fuzz_report.c - fuzz target: the parser of the bounces and
 * complaints that come back (core/server/report_parse.c): the input is a
 * whole message. Seeds: corpus/report/ (a DSN, Microsoft JMRP, Yahoo CFL,
 * the RFC 5965 example, a plain-text bounce, a truncated nested report).
 * Every field must come out NUL-terminated printable ASCII.
 *
 * Thread: single-threaded.
 */
#include "core/base/base.h"
#include "core/server/report_int.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const char *s, size_t cap)
{
    size_t n = strnlen(s, cap);
    if (n == cap)
        abort();
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
            abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exact-size copy: reading past the message is caught by ASan */
    char *m = malloc(size ? size : 1);
    memcpy(m, data, size);
    report_t r;
    report_parse(m, size, &r);
    free(m);
    check(r.rp_final_rcpt, sizeof(r.rp_final_rcpt));
    check(r.rp_orig_rcpt, sizeof(r.rp_orig_rcpt));
    check(r.rp_action, sizeof(r.rp_action));
    check(r.rp_status, sizeof(r.rp_status));
    check(r.rp_diag, sizeof(r.rp_diag));
    check(r.rp_remote_mta, sizeof(r.rp_remote_mta));
    check(r.rp_reporting_mta, sizeof(r.rp_reporting_mta));
    check(r.rp_feedback_type, sizeof(r.rp_feedback_type));
    check(r.rp_user_agent, sizeof(r.rp_user_agent));
    check(r.rp_orig_mail_from, sizeof(r.rp_orig_mail_from));
    check(r.rp_message_id, sizeof(r.rp_message_id));
    check(r.rp_sluice_id, sizeof(r.rp_sluice_id));
    if (r.rp_kind == REPORT_NONE && r.rp_status[0] != '\0')
        abort();
    return 0;
}
