/*
 * delivery/rules_int.h - private to delivery/: the bounce classification
 * rules engine (rules.c) and the built-in table it falls back to
 * (classify.c).
 *
 * A rules file (docs/bounce-rules.md; shipped default config/bounce-rules.conf,
 * compiled into the binary) is an ordered list of rules; a rule's provider
 * is one of the traffic shaping's providers (config/providers.conf and the
 * delivery.shaping file: recipient-domain and MX-host patterns, defined
 * once for both), or one the file defines in providers { }. A rule tests, in this order, its
 * provider (the reply came from that provider's MX hosts, or, when the
 * host is not known, is for its domains), the reply code, the RFC 3463
 * enhanced status, then one PCRE2
 * regex (case-insensitive) on the reply text; the first rule whose tests all
 * pass gives the category and the action ("bounce": a 4xx is a hard failure
 * too). Replies no rule matches, and local failures (code 0), get the
 * built-in table's category.
 *
 * A dlv_rules_t is immutable once loaded and shared by every thread. The
 * process-wide active set is the built-in default until dlv_rules_install()
 * replaces it; replaced sets are kept until dlv_rules_shutdown(), so a
 * pointer taken from dlv_rules_active() (and every string in a verdict) stays
 * valid until then.
 */
#ifndef SLUICE_DELIVERY_RULES_INT_H
#define SLUICE_DELIVERY_RULES_INT_H

#include "delivery/delivery.h"

typedef struct dlv_rules dlv_rules_t;

/* What the rules say about one reply. */
typedef struct dlv_rule_hit {
    const char *h_category; /* one of the 17 categories; a static string */
    bool h_bounce;          /* the rule's action is "bounce": fail a 4xx now */
    const char *h_rule;     /* "file:line" of the matching rule, NULL = built-in table */
    const char *h_provider; /* the matching rule's provider, or NULL */
} dlv_rule_hit_t;

/* Parse and compile rules from text (len bytes; name is used in messages).
 * 0 and *out, or SL_ECONFIG with "name:line: what" in err. Any thread. */
int dlv_rules_parse(const char *name, const char *text, size_t len, dlv_rules_t **out, char *err,
                    size_t errlen);
/* Load a rules file; NULL or "" = the built-in default. Same returns as
 * dlv_rules_parse (a file that cannot be read: "path: strerror"). Any thread. */
int dlv_rules_load(const char *path, dlv_rules_t **out, char *err, size_t errlen);
/* The same, where a rule's provider that the text does not define is one
 * of the traffic shaping's providers (config/providers.conf with the file
 * at shaping_path over it; NULL / "" = the shipped ones only): its domain
 * and MX patterns. dlv_rules_parse / dlv_rules_load use the shipped ones. A
 * shaping file that does not load fails with its "file:line: what". */
int dlv_rules_parse_with(const char *name, const char *text, size_t len, const char *shaping_path,
                         dlv_rules_t **out, char *err, size_t errlen);
int dlv_rules_load_with(const char *path, const char *shaping_path, dlv_rules_t **out, char *err,
                        size_t errlen);
/* Free a set no thread uses any more (NULL is fine). Any thread. */
void dlv_rules_free(dlv_rules_t *r);
/* Number of providers / rules in a set (for logs and tests). Any thread. */
int dlv_rules_nproviders(const dlv_rules_t *r);
int dlv_rules_nrules(const dlv_rules_t *r);
/* The built-in default rules text (config/bounce-rules.conf at build time). */
const char *dlv_rules_default_text(void);

/* Match a reply against one set. domain (recipient domain) and mx (MX host
 * name, trailing dot allowed) pick the provider; either may be NULL. A
 * provider's rules apply to its own servers' replies: the MX host decides
 * when it is given and the provider has mx patterns, else the domain. status
 * may be NULL or "" (then x.0.0 of the code's class). Returns true and fills
 * *out when a rule matched; false (and *out untouched) otherwise, and always
 * for codes outside 400..599. Any thread; no allocation unless a regex runs. */
bool dlv_rules_match(const dlv_rules_t *r, int code, const char *status, const char *text,
                     const char *domain, const char *mx, dlv_rule_hit_t *out);

/* dlv_rules_install() (delivery.h) loads the rules file cfg names
 * (delivery.bounce_rules; "" = built-in) and makes it the active set. */
/* The active set (the built-in default unless installed). Any thread. */
const dlv_rules_t *dlv_rules_active(void);
/* Free the active and every replaced set; the next dlv_rules_active() builds
 * the default again. Only when no thread classifies (tests, exit). */
void dlv_rules_shutdown(void);

/* The host of a connection-level failure's text, "host[ip]:port phase: ..."
 * (session.c writes it for a refused greeting, EHLO or HELO): its length,
 * 0 when text does not start so. Any thread. */
size_t dlv_rules_text_host(const char *text, char out[256]);

/* classify.c: the built-in table (status first, then fixed words). A static
 * string. Any thread. */
const char *dlv_classify_builtin(int code, const char *status, const char *text);
/* The static string for a category name, or NULL when name is none of the
 * 17 categories. Any thread. */
const char *dlv_category_lookup(const char *name);

#endif /* SLUICE_DELIVERY_RULES_INT_H */
