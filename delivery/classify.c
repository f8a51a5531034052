/*
 * classify.c - what an SMTP reply means for a recipient: delivered,
 * deferred or bounced, and into which PowerMTA-style bounce category it
 * falls. The one place that interprets reply codes (STYLE.md: Postfix's
 * smtp_trouble.c).
 *
 * First pass: the RFC 3463 enhanced status code, matched against an ordered
 * table (first match wins), with a few text tests where the code alone is
 * ambiguous (5.7.1 spam vs policy, 5.7.x relaying). Replies without an
 * enhanced code are classified by ordered case-insensitive text rules.
 *
 * dlv_classify() asks the loaded rules first (rules.c: enhanced status,
 * then PCRE2 regexes, per provider) and uses this built-in table for what
 * no rule matches and for local failures (code 0).
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
    {0, 1, 1, "bad-mailbox"},      /* bad destination mailbox address */
    {0, 1, 0, "bad-mailbox"},      /* other address status */
    {0, 1, 6, "bad-mailbox"},      /* mailbox has moved */
    {0, 1, 2, "bad-domain"},       /* bad destination system address */
    {0, 1, 10, "bad-domain"},      /* RFC 7505 null MX */
    {0, 1, 7, "invalid-sender"},   /* bad sender's mailbox address syntax */
    {0, 1, 8, "invalid-sender"},   /* bad sender's system address */
    {0, 1, ANY, "bad-mailbox"},    /* other address problems */
    {0, 2, 1, "inactive-mailbox"}, /* mailbox disabled */
    {0, 2, 2, "quota-issues"},     /* mailbox full */
    {0, 2, 3, "content-related"},  /* message length exceeds administrative limit */
    {0, 2, ANY, "bad-mailbox"},    /* other mailbox status */
    {0, 3, 4, "content-related"},  /* message too big for system */
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

/* Text rules for replies without an enhanced status code. */
static const struct {
    const char *tr_word;
    const char *tr_category;
} dlv_text_rules[] = {
    {"user unknown", "bad-mailbox"},
    {"unknown user", "bad-mailbox"},
    {"no such user", "bad-mailbox"},
    {"mailbox unavailable", "bad-mailbox"},
    {"does not exist", "bad-mailbox"},
    {"mailbox full", "quota-issues"},
    {"over quota", "quota-issues"},
    {"quota exceeded", "quota-issues"},
    {"disabled", "inactive-mailbox"},
    {"relay", "relaying-issues"},
    {"virus", "virus-related"},
    {"spam", "spam-related"},
    {"blocked", "spam-related"},
    {"blacklist", "spam-related"},
    {"reputation", "spam-related"},
    {"policy", "policy-related"},
    {"too many connections", "no-answer-from-host"},
    {"timed out", "no-answer-from-host"},
    {"connection lost", "no-answer-from-host"},
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

const char *dlv_classify_builtin(int code, const char *status, const char *text)
{
    int cls, subj, det;
    if (!dlv_status_parse(status, &cls, &subj, &det) || (subj == 0 && det == 0))
        return dlv_classify_text(text);
    if (cls == 2)
        return "other";
    UNUSED(code);
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

const char *dlv_classify(int code, const char *status, const char *text)
{
    dlv_verdict_t v;
    dlv_classify_reply(code, status, text, NULL, NULL, &v);
    return v.v_category;
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
