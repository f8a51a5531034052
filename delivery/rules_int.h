/*
 * delivery/rules_int.h - private to delivery/: the one rule engine
 * (rules.c) and the built-in classification table it falls back to
 * (classify.c).
 *
 * The engine has two layers:
 *
 * - The matcher, shared by the bounce rules and the traffic shaping's
 *   response rules and providers: host patterns (rules_hosts_t: a
 *   provider's domains and MX hosts), regexes compiled once through one
 *   process-wide cache (rules_re_t: PCRE2, caseless, JIT, a match limit),
 *   and reply tests (rules_test_t: codes "421" / "4xx", RFC 3463 statuses
 *   "5.1.1" / "x.7.x", and a regex on the reply's text or on its
 *   "CODE STATUS TEXT" line).
 *
 * - The bounce rules: a rules file (docs/bounce-rules.md; shipped default
 *   config/bounce-rules.conf, compiled into the binary) is an ordered list
 *   of rules; a rule's provider is one of the traffic shaping's providers
 *   (config/providers.conf and the delivery.shaping file, defined once for
 *   both and handed over by the caller, dlv_rules_lookup_fn), or one the
 *   file defines in providers { }. A rule tests, in this order, its
 *   provider (the reply came from that provider's MX hosts, or, when the
 *   host is not known, is for its domains), the reply code, the enhanced
 *   status, then its regex on the reply text; the first rule whose tests
 *   all pass gives the category and the action ("bounce": a 4xx is a hard
 *   failure too). Replies no rule matches, and local failures (code 0), get
 *   the built-in table's category. The judge (trouble.c) is what asks.
 *
 * A dlv_rules_t is immutable once loaded and shared by every thread. The
 * process-wide active set is the built-in default until dlv_rules_set()
 * replaces it; replaced sets are kept until dlv_rules_shutdown(), so a
 * pointer taken from dlv_rules_active() (and every string in a hit) stays
 * valid until then.
 *
 * Thread: every function here is any thread (the regex cache and the
 * active set take a mutex briefly; matching takes none).
 */
#ifndef SLUICE_DELIVERY_RULES_INT_H
#define SLUICE_DELIVERY_RULES_INT_H

#include "delivery/delivery.h"

/* ------------------------------------------------------------ host patterns */

/* Host name patterns ("gmail.com", "*.google.com", fnmatch globs), matched
 * case-insensitively against a name without its trailing dot. Owned. */
typedef struct rules_hosts {
    char **rh_pats; /* one kind byte, then the lower-case pattern */
    int rh_n;
} rules_hosts_t;

/* Add a pattern (copied). */
void rules_hosts_add(rules_hosts_t *h, const char *pattern);
void rules_hosts_copy(rules_hosts_t *dst, const rules_hosts_t *src);
void rules_hosts_free(rules_hosts_t *h);
/* A host name lower-cased without its trailing dots into out: its length,
 * 0 when there is none (or it is too long to be one). */
size_t rules_host_norm(const char *host, char out[256]);
/* Does the normalised name h (rules_host_norm, len bytes) match one of h's
 * patterns? */
bool rules_hosts_match(const rules_hosts_t *hs, const char *h, size_t len);

/* A provider's host patterns: what the shaping's providers and the bounce
 * rules' providers are made of. */
typedef struct rules_provider {
    char *pv_name;
    rules_hosts_t pv_domains; /* recipient domains */
    rules_hosts_t pv_mx;      /* MX host names (MX rollup) */
} rules_provider_t;

void rules_provider_copy(rules_provider_t *dst, const rules_provider_t *src);
void rules_provider_free(rules_provider_t *pv);

/* ------------------------------------------------------------ regexes */

typedef struct rules_re rules_re_t;

/* The pattern and the subject are UTF-8 (a subject that is not: no match). */
#define RULES_RE_UTF 1

/* Compile pattern (caseless) through the process-wide cache: the same
 * pattern with the same flags is compiled once and shared (refcounted).
 * 0 and *out, or SL_EPARSE with the PCRE2 message and offset in why. */
int rules_re_get(const char *pattern, int flags, rules_re_t **out, char *why, size_t whylen);
/* Drop a reference; the last frees. NULL allowed. */
void rules_re_put(rules_re_t *re);
/* Does re match subject[0, len)? Bounded by a match limit: a pattern that
 * needs more steps does not match (it cannot hang a delivery thread). */
bool rules_re_match(const rules_re_t *re, const char *subject, size_t len);
/* Entries in the cache (tests). */
size_t rules_re_cached(void);

/* ------------------------------------------------------------ reply tests */

#define RULES_MAX_CODES 8   /* code = [...] entries per test */
#define RULES_MAX_STATUS 16 /* status = [...] entries per test */

/* The tests of one rule: all given ones must pass. */
typedef struct rules_test {
    int t_ncodes;
    char t_codes[RULES_MAX_CODES][4]; /* "550", "5xx", "45x" (lower-case x) */
    int t_nstatus;
    short t_status[RULES_MAX_STATUS][3]; /* class, subject, detail; -1 = any */
    rules_re_t *t_re;                    /* NULL = any text */
    bool t_re_line;                      /* t_re runs on "CODE STATUS TEXT", else on the text */
} rules_test_t;

/* A code pattern: three characters, digits or x, the first 4 or 5. 0 or
 * SL_EPARSE. */
int rules_test_code(rules_test_t *t, const char *code);
/* A status pattern: "5.1.1", "x.1.1", "5.7.x" (class 4, 5 or x). 0 or
 * SL_EPARSE. */
int rules_test_status(rules_test_t *t, const char *status);
void rules_test_free(rules_test_t *t);

/* A reply as the tests see it; rules_reply_init fills it. */
typedef struct rules_reply {
    int rr_code;
    char rr_codes[4];
    int rr_st[3];          /* the status the outcome carries: its own when its class agrees
                            * with the code, else x.0.0 */
    const char *rr_status; /* as given */
    const char *rr_text;   /* "" when none */
    size_t rr_tlen;        /* bounded */
    char rr_line[1200];    /* "CODE STATUS TEXT", built on first need */
    size_t rr_line_len;    /* 0: not built */
} rules_reply_t;

void rules_reply_init(rules_reply_t *r, int code, const char *status, const char *text,
                      size_t text_max);
/* Do t's tests pass for r? */
bool rules_test_match(const rules_test_t *t, rules_reply_t *r);

/* ------------------------------------------------------------ bounce rules */

typedef struct dlv_rules dlv_rules_t;

/* What the rules say about one reply. */
typedef struct dlv_rule_hit {
    const char *h_category; /* one of the 17 categories; a static string */
    bool h_bounce;          /* the rule's action is "bounce": fail a 4xx now */
    const char *h_rule;     /* "file:line" of the matching rule, NULL = built-in table */
    const char *h_provider; /* the matching rule's provider, or NULL */
} dlv_rule_hit_t;

/* Where a rule's provider that the file does not define is looked up: the
 * traffic shaping's providers (by name, case-insensitive; NULL: none). The
 * rules copy its patterns. */
typedef const rules_provider_t *(*dlv_rules_lookup_fn)(void *arg, const char *name);

/* Parse and compile rules from text (len bytes; name is used in messages),
 * a rule's provider the text does not define coming from lookup (NULL: no
 * other providers). 0 and *out, or SL_ECONFIG with "name:line: what" in
 * err. */
int dlv_rules_parse(const char *name, const char *text, size_t len, dlv_rules_lookup_fn lookup,
                    void *arg, dlv_rules_t **out, char *err, size_t errlen);
/* Load a rules file; NULL or "" = the built-in default. Same returns as
 * dlv_rules_parse (a file that cannot be read: "path: strerror"). */
int dlv_rules_load(const char *path, dlv_rules_lookup_fn lookup, void *arg, dlv_rules_t **out,
                   char *err, size_t errlen);
/* Free a set no thread uses any more (NULL is fine). */
void dlv_rules_free(dlv_rules_t *r);
/* Number of providers / rules in a set, its name (for logs and tests). */
int dlv_rules_nproviders(const dlv_rules_t *r);
int dlv_rules_nrules(const dlv_rules_t *r);
const char *dlv_rules_name(const dlv_rules_t *r);
/* The built-in default rules text (config/bounce-rules.conf at build time). */
const char *dlv_rules_default_text(void);

/* Match a reply against one set. domain (recipient domain) and mx (MX host
 * name, trailing dot allowed) pick the provider; either may be NULL. A
 * provider's rules apply to its own servers' replies: the MX host decides
 * when it is given and the provider has mx patterns, else the domain. status
 * may be NULL or "" (then x.0.0 of the code's class). Returns true and fills
 * *out when a rule matched; false (and *out untouched) otherwise, and always
 * for codes outside 400..599. No allocation unless a regex runs. */
bool dlv_rules_match(const dlv_rules_t *r, int code, const char *status, const char *text,
                     const char *domain, const char *mx, dlv_rule_hit_t *out);

/* The active set, or NULL before one was set (the judge sets the built-in
 * default on first need: dlv_rules_in_force, delivery_int.h). */
const dlv_rules_t *dlv_rules_active(void);
/* Make r the active set (ownership passes); the one it replaces is kept
 * until dlv_rules_shutdown. With only_first, r becomes active only when no
 * set is (else it is freed): the default built by two threads at once. */
void dlv_rules_set(dlv_rules_t *r, bool only_first);
/* Free the active and every replaced set. Only when no thread classifies
 * (tests, exit). */
void dlv_rules_shutdown(void);

/* The host of a connection-level failure's text, "host[ip]:port phase: ..."
 * (session.c writes it for a refused greeting, EHLO or HELO): its length,
 * 0 when text does not start so. */
size_t dlv_rules_text_host(const char *text, char out[256]);

/* classify.c: the built-in table (status first, then fixed words). A static
 * string. */
const char *dlv_classify_builtin(int code, const char *status, const char *text);
/* The static string for a category name, or NULL when name is none of the
 * 17 categories. */
const char *dlv_category_lookup(const char *name);

#endif /* SLUICE_DELIVERY_RULES_INT_H */
