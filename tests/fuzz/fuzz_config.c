/*
 * tests/fuzz/fuzz_config.c - fuzz target: the configuration parser and
 * validator (cfg_load_string). Input: a configuration text. A failure must
 * leave *out untouched and say why; a success must give a snapshot that
 * frees cleanly.
 *
 * Thread: single-threaded.
 */
#include "config/config.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536)
        return 0;
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    cfg_t *c = (cfg_t *)0x1;
    char err[1024] = "";
    int rc = cfg_load_string("fuzz.conf", text, &c, err, sizeof(err));
    if (rc == 0) {
        if (c == NULL || c == (cfg_t *)0x1)
            abort();
        (void)cfg_route_for(c, "example.org");
        (void)cfg_tls_policy_for(c, "a.example.org");
        cfg_unref(c);
    } else if (c != (cfg_t *)0x1 || err[0] == '\0') {
        abort(); /* *out set on failure, or no message */
    }
    free(text);
    return 0;
}
