/*
 * classify.c - the built-in bounce classification table: the PowerMTA
 * categories, reply code -> result, and the enhanced status an outcome
 * records. A leaf: it calls nothing of delivery/.
 *
 * The judge (trouble.c, the one place that interprets a reply) asks the
 * loaded rules first (rules.c; the shipped config/bounce-rules.conf unless
 * delivery.bounce_rules names another file) and uses this table for what
 * no rule matches and for local failures (code 0). The precedence, most
 * specific first, is the same in both (docs/bounce-rules.md, "Order"):
 *
 *   1. provider rules, for replies from that provider's MX hosts (the MX
 *      host that answered decides when it is known, else the recipient
 *      domain): a provider's wording and codes win over everything below;
 *   2. signals that win over any status: viruses, Exchange's RESOLVER
 *      codes, 45x replies that name an unknown user (bounced at once);
 *   3. statuses known to mislead, where the text decides: rate limits
 *      under a mailbox status x.2.x (the recipient's rate: quota-issues,
 *      not a disabled mailbox), connection limits under x.3.2 / x.4.5,
 *      expiry under x.4.x, a 421 with a mailbox status (the host, never
 *      the mailbox);
 *   4. text rules for statuses that say little (x.0.0, x.1.0, x.2.0,
 *      x.3.0, x.4.0, x.5.0, x.7.x, none), specific words before generic;
 *   5. the RFC 3463 status table below, first match wins;
 *   6. other.
 *
 * This file holds 3 to 6 in their simplest form, without providers: the
 * misleading statuses, the table (x.7.x: the text decides between spam,
 * relaying and policy) and a few words for replies without a status.
 *
 * Thread: any; no state.
 */
#include "delivery/rules_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* A table row: class 0 = any of 4/5, subject, detail -1 = any. */
typedef struct dlv_class_rule {
    int cr_class;
    int cr_subject;
    int cr_detail;
    const char *cr_category;
} dlv_class_rule_t;

#define ANY -1

static const dlv_class_rule_t dlv_class_table[] = {
    {0, 1, 1, "bad-mailbox"},         /* bad destination mailbox address */
    {0, 1, 0, "bad-mailbox"},         /* other address status */
    {0, 1, 6, "bad-mailbox"},         /* mailbox has moved */
    {0, 1, 2, "bad-domain"},          /* bad destination system address */
    {0, 1, 10, "bad-domain"},         /* RFC 7505 null MX */
    {0, 1, 7, "invalid-sender"},      /* bad sender's mailbox address syntax */
    {0, 1, 8, "invalid-sender"},      /* bad sender's system address */
    {0, 1, ANY, "bad-mailbox"},       /* other address problems */
    {0, 2, 1, "inactive-mailbox"},    /* mailbox disabled */
    {0, 2, 2, "quota-issues"},        /* mailbox full */
    {0, 2, 3, "content-related"},     /* message length exceeds administrative limit */
    {0, 2, ANY, "bad-mailbox"},       /* other mailbox status */
    {0, 3, 1, "quota-issues"},        /* mail system full */
    {0, 3, 2, "no-answer-from-host"}, /* system not accepting network messages */
    {0, 3, 4, "content-related"},     /* message too big for system */
    {0, 3, ANY, "bad-configuration"}, {0, 4, 1, "no-answer-from-host"},
    {0, 4, 2, "no-answer-from-host"}, /* bad connection */
    {0, 4, 4, "bad-domain"},          /* unable to route */
    {0, 4, 7, "message-expired"},     /* delivery time expired */
    {0, 4, ANY, "routing-errors"},    {0, 5, ANY, "protocol-errors"},
    {0, 6, ANY, "content-related"},
    /* subject 7 is handled in code: text decides between spam, relaying
     * and policy */
};

static const char *const dlv_spam_words[] = {
    "spam", "blocked", "blacklist", "blocklist", "reputation", "unsolicited", "rbl", "listed",
};

/* Text rules for replies without an enhanced status code, specific words
 * before the generic ones many replies carry in passing ("Too many
 * connections, check your configuration or policy" is a connection limit). */
static const struct {
    const char *tr_word;
    const char *tr_category;
} dlv_text_rules[] = {
    {"virus", "virus-related"},
    {"message expired", "message-expired"},
    {"too many connections", "bad-connection"},
    {"timed out", "no-answer-from-host"},
    {"connection lost", "no-answer-from-host"},
    {"user unknown", "bad-mailbox"},
    {"unknown user", "bad-mailbox"},
    {"no such user", "bad-mailbox"},
    {"mailbox full", "quota-issues"},
    {"over quota", "quota-issues"},
    {"quota exceeded", "quota-issues"},
    {"disabled", "inactive-mailbox"},
    {"mailbox unavailable", "bad-mailbox"},
    {"does not exist", "bad-mailbox"},
    {"relay", "relaying-issues"},
    {"spam", "spam-related"},
    {"blocked", "spam-related"},
    {"blacklist", "spam-related"},
    {"reputation", "spam-related"},
    {"connection refused", "no-answer-from-host"},
    {"policy", "policy-related"},
    {"refused", "policy-related"},
};

/* Words of a rate limit, for a mailbox status that is really the
 * recipient's receiving rate (Gmail's 4.2.1, Microsoft's 5.2.122). */
static const char *const dlv_rate_words[] = {
    "rate limit",    "ratelimit",   "receiving mail at a rate",
    "receive limit", "too quickly", "messages they can receive",
};

static bool text_has(const char *text, const char *word)
{
    return text != NULL && strcasestr(text, word) != NULL;
}

/* "5.1.10" -> 5, 1, 10. false when it is not an enhanced status. */
static bool dlv_status_parse(const char *s, int *cls, int *subj, int *det)
{
    if (s == NULL || s[0] == '\0')
        return false;
    char *end;
    long c = strtol(s, &end, 10);
    if (end == s || *end != '.' || (c != 2 && c != 4 && c != 5))
        return false;
    const char *p = end + 1;
    long sub = strtol(p, &end, 10);
    if (end == p || *end != '.' || sub < 0 || sub > 999)
        return false;
    p = end + 1;
    long d = strtol(p, &end, 10);
    if (end == p || *end != '\0' || d < 0 || d > 999)
        return false;
    *cls = (int)c;
    *subj = (int)sub;
    *det = (int)d;
    return true;
}

queue_result_t dlv_result_for_code(int code)
{
    if (code >= 200 && code < 300)
        return Q_OUT_DELIVERED;
    if (code >= 500 && code < 600)
        return Q_OUT_BOUNCED;
    return Q_OUT_DEFERRED;
}

void dlv_status_for_reply(int code, const char *status, char out[16])
{
    int cls, subj, det;
    if (dlv_status_parse(status, &cls, &subj, &det) && cls == code / 100) {
        /* cls is one digit (2, 4, 5): written as a char so that GCC's
         * -Wformat-truncation sees the output fits in 16 bytes at -O3 */
        snprintf(out, 16, "%c.%d.%d", '0' + cls, subj, det);
        return;
    }
    int c = code / 100;
    if (c != 2 && c != 5)
        c = 4; /* no reply, 1xx/3xx where they make no sense: temporary */
    snprintf(out, 16, "%d.0.0", c);
}

static const char *dlv_classify_text(const char *text)
{
    for (size_t i = 0; i < ARRAY_SIZE(dlv_text_rules); i++)
        if (text_has(text, dlv_text_rules[i].tr_word))
            return dlv_text_rules[i].tr_category;
    return "other";
}

/* Precedence 3: a status known to mislead, where the text decides; NULL
 * when this one does not. */
static const char *dlv_classify_misleading(int code, int subj, int det, const char *text)
{
    if (subj == 2)
        for (size_t i = 0; i < ARRAY_SIZE(dlv_rate_words); i++)
            if (text_has(text, dlv_rate_words[i]))
                return "quota-issues";
    if (subj == 4 && text_has(text, "expired"))
        return "message-expired";
    if (((subj == 3 && det == 2) || (subj == 4 && det == 5)) &&
        (text_has(text, "too many connections") || text_has(text, "connection limit") ||
         text_has(text, "connection rate limit") || text_has(text, "concurrency limit")))
        return "bad-connection";
    /* RFC 5321 3.8: a 421 closes the session; it speaks for the host */
    if (code == 421 && (subj == 1 || subj == 2)) {
        const char *c = dlv_classify_text(text);
        return strcmp(c, "policy-related") == 0 || strcmp(c, "spam-related") == 0
                   ? c
                   : "no-answer-from-host";
    }
    return NULL;
}

const char *dlv_classify_builtin(int code, const char *status, const char *text)
{
    int cls, subj, det;
    if (!dlv_status_parse(status, &cls, &subj, &det) || (subj == 0 && det == 0))
        return dlv_classify_text(text);
    if (cls == 2)
        return "other";
    const char *m = dlv_classify_misleading(code, subj, det, text);
    if (m != NULL)
        return m;
    if (subj == 7) {
        if (det == 1 || det == 0) {
            for (size_t i = 0; i < ARRAY_SIZE(dlv_spam_words); i++)
                if (text_has(text, dlv_spam_words[i]))
                    return "spam-related";
        }
        if (text_has(text, "relay"))
            return "relaying-issues";
        return "policy-related";
    }
    for (size_t i = 0; i < ARRAY_SIZE(dlv_class_table); i++) {
        const dlv_class_rule_t *r = &dlv_class_table[i];
        if ((r->cr_class == 0 || r->cr_class == cls) && r->cr_subject == subj &&
            (r->cr_detail == ANY || r->cr_detail == det))
            return r->cr_category;
    }
    return dlv_classify_text(text);
}

/* PowerMTA's 17 bounce categories (STANDARDS.md), the only names a rule may
 * give. */
static const char *const dlv_categories[] = {
    "bad-configuration",   "bad-connection",
    "bad-domain",          "bad-mailbox",
    "content-related",     "inactive-mailbox",
    "invalid-sender",      "message-expired",
    "no-answer-from-host", "other",
    "policy-related",      "protocol-errors",
    "quota-issues",        "relaying-issues",
    "routing-errors",      "spam-related",
    "virus-related",
};

const char *dlv_category_lookup(const char *name)
{
    if (name == NULL)
        return NULL;
    for (size_t i = 0; i < ARRAY_SIZE(dlv_categories); i++)
        if (strcmp(dlv_categories[i], name) == 0)
            return dlv_categories[i];
    return NULL;
}
