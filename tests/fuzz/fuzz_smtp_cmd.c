/*
 * tests/fuzz/fuzz_smtp_cmd.c - fuzz target: the server-side SMTP command
 * parser (smtp_cmd_parse) and the address checks it feeds (smtp_addr_check,
 * smtp_addr_domain). Input: one command line, without CRLF (a NUL inside
 * ends it, as the reception code NUL-terminates lines).
 *
 * Thread: single-threaded.
 */
#include "core/base/base.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536)
        return 0;
    char *line = malloc(size + 1);
    memcpy(line, data, size);
    line[size] = '\0';
    smtp_cmd_t cmd;
    const char *reply = NULL;
    if (smtp_cmd_parse(line, &cmd, &reply) == 0) {
        if (cmd.sc_nparams < 0 || cmd.sc_nparams > SMTP_MAX_PARAMS)
            abort();
        size_t total = 0;
        if (cmd.sc_arg != NULL)
            total += strlen(cmd.sc_arg);
        for (int i = 0; i < cmd.sc_nparams; i++) {
            total += strlen(cmd.sc_pkey[i]);
            if (cmd.sc_pval[i] != NULL)
                total += strlen(cmd.sc_pval[i]);
        }
        if (cmd.sc_path != NULL) {
            bool utf8 = false;
            total += strlen(cmd.sc_path);
            if (smtp_addr_check(cmd.sc_path, &utf8) == 0)
                total += strlen(smtp_addr_domain(cmd.sc_path));
        }
        if (total > 1000000)
            abort(); /* unreachable: ASan checks each strlen stays in the line */
    } else if (reply == NULL || strlen(reply) < 4) {
        abort(); /* every refusal names its reply */
    }
    free(line);
    return 0;
}
