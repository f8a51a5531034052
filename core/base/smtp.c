/*
 * smtp.c - the SMTP codec: command lines (server side), multi-line replies
 * (client side), address syntax (RFC 5321 §4.1.2, RFC 6531 for UTF-8) and
 * dot-stuffing (RFC 5321 §4.5.2).
 *
 * Main functions: smtp_cmd_parse, smtp_addr_check, smtp_addr_domain,
 * smtp_reply_feed/reset/free, smtp_dot_stuff.
 *
 * Everything here is pure and reentrant: any thread. Parsed commands borrow
 * from the caller's line, which smtp_cmd_parse modifies in place.
 */
#include "core/base/base.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

/* RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with CRLF. */
#define SMTP_CMD_MAX 510

static bool parse_path(char **pp, const char **path);
static int parse_params(char *p, smtp_cmd_t *cmd, const char **reply);
static bool is_atext(unsigned char c);

static const struct {
    const char *name;
    smtp_verb_t verb;
} smtp_verbs[] = {
    {"EHLO", SMTP_CMD_EHLO},         {"HELO", SMTP_CMD_HELO}, {"MAIL", SMTP_CMD_MAIL},
    {"RCPT", SMTP_CMD_RCPT},         {"DATA", SMTP_CMD_DATA}, {"BDAT", SMTP_CMD_BDAT},
    {"RSET", SMTP_CMD_RSET},         {"NOOP", SMTP_CMD_NOOP}, {"QUIT", SMTP_CMD_QUIT},
    {"VRFY", SMTP_CMD_VRFY},         {"EXPN", SMTP_CMD_EXPN}, {"HELP", SMTP_CMD_HELP},
    {"STARTTLS", SMTP_CMD_STARTTLS}, {"AUTH", SMTP_CMD_AUTH},
};

static bool is_atext(unsigned char c)
{
    if (isalnum(c) || c >= 0x80)
        return true;
    return strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL && c != '\0';
}

/* Parse "<...>" at *pp (leading spaces already skipped). On success *path
 * points at the NUL-terminated address (source route dropped, RFC 5321
 * §4.1.1.3) and *pp past the '>'. */
static bool parse_path(char **pp, const char **path)
{
    char *p = *pp;
    if (*p != '<')
        return false;
    char *start = ++p;
    bool quoted = false;
    for (; *p; p++) {
        if (quoted) {
            if (*p == '\\' && p[1] != '\0')
                p++;
            else if (*p == '"')
                quoted = false;
        } else if (*p == '"') {
            quoted = true;
        } else if (*p == '>') {
            break;
        } else if (*p == '<') {
            return false;
        }
    }
    if (*p != '>')
        return false;
    *p++ = '\0';
    /* "@a,@b:user@c" -> "user@c" */
    if (*start == '@') {
        char *colon = strchr(start, ':');
        if (colon == NULL)
            return false;
        start = colon + 1;
    }
    *path = start;
    *pp = p;
    return true;
}

/* ESMTP parameters: "KEY[=VALUE]" separated by spaces. Keys are upper-cased
 * in place. */
static int parse_params(char *p, smtp_cmd_t *cmd, const char **reply)
{
    cmd->sc_nparams = 0;
    for (;;) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '\0')
            return 0;
        if (*p == '=') {
            *reply = "501 5.5.4 Syntax error in parameters";
            return SL_EPARSE;
        }
        if (cmd->sc_nparams == SMTP_MAX_PARAMS) {
            *reply = "501 5.5.4 Too many parameters";
            return SL_EPARSE;
        }
        char *key = p;
        char *val = NULL;
        while (*p && *p != ' ' && *p != '\t') {
            if (*p == '=' && val == NULL) {
                *p = '\0';
                val = p + 1;
            } else if (val == NULL) {
                unsigned char c = (unsigned char)*p;
                if (!isalnum(c) && c != '-') {
                    *reply = "501 5.5.4 Syntax error in parameters";
                    return SL_EPARSE;
                }
                *p = (char)toupper(c);
            }
            p++;
        }
        if (*p)
            *p++ = '\0';
        cmd->sc_pkey[cmd->sc_nparams] = key;
        cmd->sc_pval[cmd->sc_nparams] = val;
        cmd->sc_nparams++;
    }
}

int smtp_cmd_parse(char *line, smtp_cmd_t *cmd, const char **reply)
{
    memset(cmd, 0, sizeof(*cmd));
    cmd->sc_arg = "";
    size_t len = strlen(line);
    if (len > SMTP_CMD_MAX) {
        *reply = "500 5.5.2 Line too long";
        return SL_ETOOLONG;
    }
    /* Trailing white space is common from hand-typed sessions. */
    while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t' || line[len - 1] == '\r'))
        line[--len] = '\0';

    char *p = line;
    while (*p == ' ')
        p++;
    char *verb = p;
    while (*p && *p != ' ' && *p != '\t')
        p++;
    size_t vlen = (size_t)(p - verb);
    while (*p == ' ' || *p == '\t')
        p++;
    char *arg = p;

    cmd->sc_verb = SMTP_CMD_UNKNOWN;
    for (size_t i = 0; i < ARRAY_SIZE(smtp_verbs); i++) {
        if (strlen(smtp_verbs[i].name) == vlen &&
            strncasecmp(verb, smtp_verbs[i].name, vlen) == 0) {
            cmd->sc_verb = smtp_verbs[i].verb;
            break;
        }
    }
    cmd->sc_arg = arg;

    switch (cmd->sc_verb) {
    case SMTP_CMD_UNKNOWN:
        *reply = "500 5.5.2 Error: command not recognized";
        return SL_EPARSE;
    case SMTP_CMD_HELO:
    case SMTP_CMD_EHLO:
        if (*arg == '\0') {
            *reply = cmd->sc_verb == SMTP_CMD_EHLO ? "501 5.5.4 Syntax: EHLO hostname"
                                                   : "501 5.5.4 Syntax: HELO hostname";
            return SL_EPARSE;
        }
        return 0;
    case SMTP_CMD_MAIL:
    case SMTP_CMD_RCPT: {
        bool mail = cmd->sc_verb == SMTP_CMD_MAIL;
        const char *kw = mail ? "FROM:" : "TO:";
        size_t kl = strlen(kw);
        const char *syn =
            mail ? "501 5.5.4 Syntax: MAIL FROM:<address>" : "501 5.5.4 Syntax: RCPT TO:<address>";
        if (strncasecmp(arg, kw, kl) != 0) {
            *reply = syn;
            return SL_EPARSE;
        }
        p = arg + kl;
        while (*p == ' ') /* "MAIL FROM: <a>" is common; accept it */
            p++;
        if (!parse_path(&p, &cmd->sc_path)) {
            *reply = mail ? "501 5.1.7 Bad sender address syntax"
                          : "501 5.1.3 Bad recipient address syntax";
            return SL_EPARSE;
        }
        if (*p != '\0' && *p != ' ') {
            *reply = syn;
            return SL_EPARSE;
        }
        if (!mail && cmd->sc_path[0] == '\0') {
            *reply = "501 5.1.3 Bad recipient address syntax";
            return SL_EPARSE;
        }
        return parse_params(p, cmd, reply);
    }
    case SMTP_CMD_DATA:
    case SMTP_CMD_RSET:
    case SMTP_CMD_QUIT:
    case SMTP_CMD_STARTTLS:
        if (*arg != '\0') {
            *reply = "501 5.5.4 Syntax error, no parameters allowed";
            return SL_EPARSE;
        }
        return 0;
    case SMTP_CMD_VRFY:
    case SMTP_CMD_EXPN:
    case SMTP_CMD_AUTH:
    case SMTP_CMD_BDAT:
        if (*arg == '\0') {
            *reply = "501 5.5.4 Syntax error in parameters";
            return SL_EPARSE;
        }
        return 0;
    case SMTP_CMD_NOOP:
    case SMTP_CMD_HELP:
        return 0;
    }
    return 0;
}

/* RFC 5321 §4.1.2 Mailbox = Local-part "@" ( Domain / address-literal ).
 * UTF-8 bytes are accepted in atoms and labels (RFC 6531) and flagged. */
int smtp_addr_check(const char *addr, bool *is_utf8)
{
    bool utf8 = false;
    const char *p = addr;
    const char *at = NULL;
    size_t total = strlen(addr);
    if (total == 0 || total > 254)
        return SL_EPARSE;

    /* local part */
    if (*p == '"') {
        p++;
        for (;; p++) {
            unsigned char c = (unsigned char)*p;
            if (c == '\0')
                return SL_EPARSE;
            if (c == '"')
                break;
            if (c == '\\') {
                p++;
                if (*p == '\0' || (unsigned char)*p < 32)
                    return SL_EPARSE;
                continue;
            }
            if (c < 32 || c == 127)
                return SL_EPARSE;
            if (c >= 0x80)
                utf8 = true;
        }
        p++;
        if (*p != '@')
            return SL_EPARSE;
        at = p;
    } else {
        bool dot_ok = false;
        for (; *p && *p != '@'; p++) {
            unsigned char c = (unsigned char)*p;
            if (c == '.') {
                if (!dot_ok)
                    return SL_EPARSE;
                dot_ok = false;
            } else if (is_atext(c)) {
                if (c >= 0x80)
                    utf8 = true;
                dot_ok = true;
            } else {
                return SL_EPARSE;
            }
        }
        if (*p != '@' || !dot_ok)
            return SL_EPARSE;
        at = p;
    }
    if (at - addr > 64 + (addr[0] == '"' ? 2 : 0))
        return SL_EPARSE;

    /* domain */
    const char *d = at + 1;
    size_t dlen = strlen(d);
    if (dlen == 0 || dlen > 255)
        return SL_EPARSE;
    if (*d == '[') {
        if (d[dlen - 1] != ']' || dlen < 3)
            return SL_EPARSE;
        for (const char *q = d + 1; q < d + dlen - 1; q++) {
            unsigned char c = (unsigned char)*q;
            if (!isalnum(c) && c != '.' && c != ':' && c != '-')
                return SL_EPARSE;
        }
    } else {
        size_t label = 0;
        char prev = '.';
        for (const char *q = d; *q; q++) {
            unsigned char c = (unsigned char)*q;
            if (c == '.') {
                if (label == 0 || prev == '-')
                    return SL_EPARSE;
                label = 0;
            } else if (isalnum(c) || c >= 0x80 || (c == '-' && label > 0)) {
                if (c >= 0x80)
                    utf8 = true;
                if (++label > 63)
                    return SL_EPARSE;
            } else {
                return SL_EPARSE;
            }
            prev = (char)c;
        }
        if (label == 0 || prev == '-')
            return SL_EPARSE;
    }
    if (is_utf8)
        *is_utf8 = utf8;
    return 0;
}

const char *smtp_addr_domain(const char *addr)
{
    const char *at = strrchr(addr, '@');
    return at ? at + 1 : "";
}

void smtp_reply_reset(smtp_reply_t *r)
{
    r->sr_code = 0;
    r->sr_status[0] = '\0';
    buf_reset(&r->sr_text);
    r->sr_done = false;
}

void smtp_reply_free(smtp_reply_t *r)
{
    if (r == NULL)
        return;
    buf_free(&r->sr_text);
    r->sr_code = 0;
    r->sr_status[0] = '\0';
    r->sr_done = false;
}

/* Length of an enhanced status code "c.sss.ddd" at s (RFC 3463), 0 if none. */
static size_t esc_len(const char *s, size_t len, char cls)
{
    size_t i = 0;
    if (len < 5 || s[0] != cls || s[1] != '.')
        return 0;
    i = 2;
    size_t n = 0;
    while (i < len && isdigit((unsigned char)s[i]) && n < 3)
        i++, n++;
    if (n == 0 || i >= len || s[i] != '.')
        return 0;
    i++;
    n = 0;
    while (i < len && isdigit((unsigned char)s[i]) && n < 3)
        i++, n++;
    if (n == 0)
        return 0;
    if (i < len && s[i] != ' ')
        return 0;
    return i;
}

int smtp_reply_feed(smtp_reply_t *r, const char *line, size_t len, size_t max_len)
{
    if (r->sr_done)
        smtp_reply_reset(r);
    while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == '\n'))
        len--;
    if (len < 3 || !isdigit((unsigned char)line[0]) || !isdigit((unsigned char)line[1]) ||
        !isdigit((unsigned char)line[2]) || line[0] < '2' || line[0] > '5')
        return SL_EPARSE;
    if (len > 3 && line[3] != ' ' && line[3] != '-')
        return SL_EPARSE;
    int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    if (r->sr_code != 0 && r->sr_code != code)
        return SL_EPARSE;
    bool last = len == 3 || line[3] == ' ';
    const char *text = len > 4 ? line + 4 : "";
    size_t tlen = len > 4 ? len - 4 : 0;
    size_t el = esc_len(text, tlen, line[0]);
    if (el > 0) {
        if (r->sr_code == 0) {
            memcpy(r->sr_status, text, el);
            r->sr_status[el] = '\0';
        }
        text += el;
        tlen -= el;
        while (tlen > 0 && *text == ' ')
            text++, tlen--;
    }
    if (r->sr_code != 0)
        tlen++; /* the "\n" separator */
    if (r->sr_text.b_len + tlen > max_len)
        return SL_ETOOBIG;
    if (r->sr_code != 0) {
        buf_append(&r->sr_text, "\n", 1);
        tlen--;
    }
    r->sr_code = code;
    buf_append(&r->sr_text, text, tlen);
    buf_reserve(&r->sr_text, 1);
    r->sr_text.b_data[r->sr_text.b_len] = '\0'; /* keep it a C string */
    if (last) {
        r->sr_done = true;
        return 1;
    }
    return 0;
}

void smtp_dot_stuff(buf_t *dst, const char *src, size_t len)
{
    buf_reserve(dst, len + len / 64 + 8);
    bool bol = true;
    size_t i = 0;
    while (i < len) {
        if (bol && src[i] == '.')
            buf_append(dst, ".", 1);
        const char *nl = memchr(src + i, '\n', len - i);
        size_t end = nl ? (size_t)(nl - src) : len;
        size_t seg = end - i;
        if (nl) {
            /* copy up to (not including) LF; drop a CR right before it */
            size_t copy = seg;
            if (copy > 0 && src[end - 1] == '\r')
                copy--;
            buf_append(dst, src + i, copy);
            buf_append(dst, "\r\n", 2);
            i = end + 1;
            bol = true;
        } else {
            buf_append(dst, src + i, seg);
            buf_append(dst, "\r\n", 2);
            i = len;
            bol = true;
        }
    }
    buf_append(dst, ".\r\n", 3);
}
