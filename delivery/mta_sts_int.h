/*
 * delivery/mta_sts_int.h - MTA-STS (RFC 8461) in three parts:
 *   - sts_parse.c: what needs no loop: the _mta-sts TXT record, the policy
 *     file, the checks on the HTTP response that carries it, MX pattern
 *     matching (pure; unit test tests/unit/delivery_mta_sts_test.c, fuzz
 *     target tests/fuzz/fuzz_mta_sts.c);
 *   - sts_fetch.c: the HTTPS fetch of a policy on a delivery thread's loop
 *     (core/base/http_client.c, libcurl);
 *   - mta_sts.c: the policy cache and the gate in front of a destination
 *     (dlv_sts_*, delivery_int.h).
 * Never included from outside delivery/ (tests aside).
 *
 * Thread: the parsers are pure (any thread); a policy belongs to one
 * delivery thread (its refcount is not atomic), and so does a fetch.
 */
#ifndef SLUICE_MTA_STS_INT_H
#define SLUICE_MTA_STS_INT_H

#include "core/base/base.h"

#define STS_ID_MAX 32             /* RFC 8461 3.1: id= 1*32(ALPHA / DIGIT) */
#define STS_MAX_AGE_MAX 31557600U /* RFC 8461 3.2: at most a year */
#define STS_BODY_MAX 65536        /* policy body bound (RFC 8461 3.3 suggests 64 KiB) */

typedef enum { STS_MODE_NONE = 0, STS_MODE_TESTING, STS_MODE_ENFORCE } sts_mode_t;

/* A parsed policy. Refcounted (sts_policy_ref / sts_policy_unref) so that
 * the cache and the destinations using it can share it. */
typedef struct sts_policy {
    int sp_refs;
    sts_mode_t sp_mode;
    uint32_t sp_max_age; /* seconds */
    int sp_nmx;
    char **sp_mx; /* lower case, "mail.example.com" or "*.example.net" */
} sts_policy_t;

/* "none" / "testing" / "enforce". */
const char *sts_mode_name(sts_mode_t m);

/* One TXT record of _mta-sts.<domain>: 1 when it is an MTA-STS record
 * ("v=STSv1" first) that is valid, with its id copied to id; 0 when it is
 * not an MTA-STS record (another TXT record, to be ignored); SL_EPARSE
 * when it starts with v=STSv1 but is invalid (no id=, bad id, bad field). */
int sts_txt_record_parse(const char *rec, char id[STS_ID_MAX + 1]);
/* All TXT records of _mta-sts.<domain> (RFC 8461 3.1): 1 and id when
 * exactly one of them is an MTA-STS record and it is valid; 0 otherwise
 * (no policy is advertised), with the reason in why. */
int sts_txt_select(const char *const *txt, int n, char id[STS_ID_MAX + 1], char *why,
                   size_t whylen);

/* Parse a policy file (RFC 8461 3.2): lines "key: value" ending in LF or
 * CRLF; version STSv1, mode, max_age (<= STS_MAX_AGE_MAX) and, unless the
 * mode is none, one or more mx patterns; unknown keys are ignored, a key
 * given twice (mx aside) keeps its first value. 0 and *out (refs = 1,
 * caller unrefs), or SL_EPARSE with the reason in why. */
int sts_policy_parse(const char *text, size_t len, sts_policy_t **out, char *why, size_t whylen);
sts_policy_t *sts_policy_ref(sts_policy_t *p);
/* Drop a reference; the last frees. NULL allowed. */
void sts_policy_unref(sts_policy_t *p);

/* RFC 8461 4.1: host matches pattern when they are equal, or the pattern
 * is "*.rest" and host is exactly one label followed by ".rest". Case
 * insensitive; a trailing dot of host is ignored. */
bool sts_mx_pattern_match(const char *pattern, const char *host);
/* host matches one of p's mx patterns. */
bool sts_policy_mx_match(const sts_policy_t *p, const char *host);

/* The response to the policy GET (RFC 8461 3.3): status 200 only (no
 * redirects), Content-Type text/plain (parameters allowed; content_type
 * NULL: none given). 0, or SL_EPARSE with why. */
int sts_response_check(int status, const char *content_type, char *why, size_t whylen);

/* ------------------------------------------------------------ sts_fetch.c */

typedef struct sts_fetch sts_fetch_t;
struct dlv_thread;

/* A fetch is over: pol is a new reference (the callee keeps or unrefs it),
 * or NULL with why ("timed out", "HTTP status 404", ...). */
typedef void (*sts_fetch_cb)(void *arg, sts_policy_t *pol, const char *why);

/* Fetch https://mta-sts.<domain>/.well-known/mta-sts.txt (port
 * delivery.mta_sts_port) on t's loop: the host's addresses from t's
 * resolver, then a GET through t's HTTP client (delivery.ca_file or the
 * system store; 64 KiB; 10 s for the whole fetch). cb runs once, later on
 * the loop, unless the fetch is cancelled. Delivery thread. */
sts_fetch_t *sts_fetch_start(struct dlv_thread *t, const char *domain, sts_fetch_cb cb, void *arg);
/* Stop a fetch in flight: its callback never runs. */
void sts_fetch_cancel(sts_fetch_t *f);
/* The thread stops: its HTTP client goes (every fetch was cancelled). */
void sts_fetch_thread_stop(struct dlv_thread *t);

#endif /* SLUICE_MTA_STS_INT_H */
