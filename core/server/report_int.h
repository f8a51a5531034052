/*
 * core/server/report_int.h - the parser of the reports that come back
 * (report_parse.c): delivery status notifications (RFC 3464 in RFC 6522
 * multipart/report) and complaints (RFC 5965 ARF), and the status of a
 * non-standard bounce found in its text. Pure: no I/O, no allocation
 * beyond the result, any thread; fuzzed alone (tests/fuzz/fuzz_report.c).
 */
#ifndef SLUICE_REPORT_INT_H
#define SLUICE_REPORT_INT_H

#include <stdbool.h>
#include <stddef.h>

typedef enum {
    REPORT_NONE = 0, /* no status found: not a report we can read */
    REPORT_DSN,      /* multipart/report; report-type=delivery-status */
    REPORT_ARF,      /* multipart/report; report-type=feedback-report */
    REPORT_TEXT,     /* no report part: a status code found in the text */
} report_kind_t;

#define REPORT_FIELD 256

/* Every string is NUL-terminated, printable ASCII (anything else became
 * '?'), "" when absent, cut at REPORT_FIELD - 1 bytes. */
typedef struct report {
    report_kind_t rp_kind;
    int rp_nrcpt; /* DSN: per-recipient blocks seen */
    /* DSN: the first recipient whose action is "failed" (else the first) */
    char rp_final_rcpt[REPORT_FIELD]; /* Final-Recipient without "rfc822;" */
    char rp_orig_rcpt[REPORT_FIELD];  /* Original-Recipient, or ARF Original-Rcpt-To */
    char rp_action[32];               /* failed, delayed, delivered, relayed, expanded */
    char rp_status[16];               /* 5.1.1 */
    char rp_diag[REPORT_FIELD];       /* Diagnostic-Code without "smtp;", or the text's line */
    char rp_remote_mta[REPORT_FIELD];
    char rp_reporting_mta[REPORT_FIELD];
    /* ARF */
    char rp_feedback_type[32]; /* abuse, fraud, virus, other, not-spam, ... */
    char rp_user_agent[REPORT_FIELD];
    char rp_orig_mail_from[REPORT_FIELD];
    /* the returned message's headers (message/rfc822, text/rfc822-headers) */
    char rp_message_id[REPORT_FIELD];
    char rp_sluice_id[32]; /* X-Sluice-Id */
} report_t;

/* Parse msg[0..len) (a whole message, CRLF or LF lines). Always fills r
 * (rp_kind REPORT_NONE when nothing was found); never reads outside msg.
 * Multipart nesting is followed 4 levels deep, 64 parts per level. */
void report_parse(const char *msg, size_t len, report_t *r);

/* "delivery-status" etc. */
const char *report_kind_name(report_kind_t k);

#endif /* SLUICE_REPORT_INT_H */
