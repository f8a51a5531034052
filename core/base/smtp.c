/*
 * smtp.c - the SMTP codec: command lines (server side), multi-line replies
 * (client side), address syntax (RFC 5321 §4.1.2, RFC 6531 for UTF-8) and
 * dot-stuffing (RFC 5321 §4.5.2).
 *
 * Main functions: smtp_line_check, smtp_cmd_parse, smtp_addr_check,
 * smtp_addr_domain, smtp_helo_check, smtp_xtext_check, smtp_orcpt_check,
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
static size_t utf8_seq(const unsigned char *p, size_t n);

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

int smtp_line_check(const char *line, size_t len, const char **reply)
{
    if (memchr(line, '\0', len) != NULL) {
        *reply = "500 5.5.2 Error: NUL character in command";
        return SL_EPARSE;
    }
    return 0;
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
        /* the name goes into the Received header: refuse what is not one */
        if (smtp_helo_check(arg) != 0) {
            *reply = cmd->sc_verb == SMTP_CMD_EHLO ? "501 5.5.2 Error: invalid EHLO hostname"
                                                   : "501 5.5.2 Error: invalid HELO hostname";
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

/* Length of the well-formed UTF-8 sequence (2-4 bytes, no overlong form,
 * no surrogate, at most U+10FFFF) at p, 0 if there is none. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    size_t len;
    uint32_t cp;
    if (p[0] >= 0xc2 && p[0] <= 0xdf) {
        len = 2;
        cp = p[0] & 0x1f;
    } else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        len = 3;
        cp = p[0] & 0x0f;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        len = 4;
        cp = p[0] & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return len;
}

/* RFC 5321 §4.1.1.1: EHLO takes a Domain or an address-literal. Accepted:
 * labels of letters, digits, '-' and '_' (common in Windows host names)
 * and UTF-8 U-labels (RFC 6531 §3.7.1), separated by dots, or "[...]" of
 * printable ASCII without brackets or backslash. Nothing else: the name is
 * printed in the Received header, so a space, a parenthesis or a control
 * byte (a bare CR: "EHLO x\rX-Evil: 1") would change its meaning. */
int smtp_helo_check(const char *name)
{
    const unsigned char *p = (const unsigned char *)name;
    size_t len = strlen(name);
    if (len == 0 || len > 255)
        return SL_EPARSE;
    if (p[0] == '[') {
        if (len < 3 || p[len - 1] != ']')
            return SL_EPARSE;
        for (size_t i = 1; i < len - 1; i++)
            if (p[i] < 33 || p[i] > 126 || p[i] == '[' || p[i] == ']' || p[i] == '\\')
                return SL_EPARSE;
        return 0;
    }
    for (size_t i = 0; i < len;) {
        unsigned char c = p[i];
        if (isalnum(c) || c == '-' || c == '_' || c == '.') {
            i++;
            continue;
        }
        size_t n = c >= 0x80 ? utf8_seq(p + i, len - i) : 0;
        if (n == 0)
            return SL_EPARSE;
        i += n;
    }
    return 0;
}

int smtp_xtext_check(const char *v, bool utf8)
{
    const unsigned char *p = (const unsigned char *)v;
    size_t len = strlen(v);
    if (len == 0)
        return SL_EPARSE;
    for (size_t i = 0; i < len;) {
        unsigned char c = p[i];
        if (c == '+') {
            /* hexchar: two upper-case hex digits (RFC 3461 §4), of a
             * printable character once decoded */
            if (i + 2 >= len)
                return SL_EPARSE;
            unsigned ch = 0;
            for (size_t k = 1; k <= 2; k++) {
                unsigned char h = p[i + k];
                if (h >= '0' && h <= '9')
                    ch = ch * 16 + (h - '0');
                else if (h >= 'A' && h <= 'F')
                    ch = ch * 16 + (h - 'A' + 10);
                else
                    return SL_EPARSE;
            }
            if (ch < 0x20 || ch > 0x7e)
                return SL_EPARSE;
            i += 3;
        } else if (c >= 33 && c <= 126 && c != '=') {
            i++;
        } else if (c >= 0x80 && utf8) {
            size_t n = utf8_seq(p + i, len - i); /* RFC 6533 utf-8-xtext */
            if (n == 0)
                return SL_EPARSE;
            i += n;
        } else {
            return SL_EPARSE;
        }
    }
    return 0;
}

int smtp_orcpt_check(const char *v, bool utf8)
{
    const char *semi = strchr(v, ';');
    if (semi == NULL || semi == v)
        return SL_EPARSE;
    for (const char *q = v; q < semi; q++)
        if (!isalnum((unsigned char)*q) && *q != '-')
            return SL_EPARSE;
    return smtp_xtext_check(semi + 1, utf8);
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

/* Every line leaves with CRLF, whatever ended it in src: CRLF, a bare LF,
 * or a bare CR. A bare CR must not reach the wire as it is: a receiver that
 * takes it for a line end would read "text\r.\r\nMAIL FROM:..." as the end
 * of the message and a new transaction (SMTP smuggling). Treating it as a
 * line end here also dot-stuffs the line after it. */
void smtp_dot_stuff(buf_t *dst, const char *src, size_t len)
{
    buf_reserve(dst, len + len / 64 + 8);
    size_t i = 0;
    while (i < len) {
        const char *lf = memchr(src + i, '\n', len - i);
        size_t end = lf ? (size_t)(lf - src) : len;
        /* [i, stop): the line(s) before the LF and its CR, if any */
        size_t stop = (lf != NULL && end > i && src[end - 1] == '\r') ? end - 1 : end;
        for (;;) {
            const char *cr = memchr(src + i, '\r', stop - i); /* a bare CR */
            size_t e = cr ? (size_t)(cr - src) : stop;
            if (e > i && src[i] == '.')
                buf_append(dst, ".", 1);
            buf_append(dst, src + i, e - i);
            buf_append(dst, "\r\n", 2);
            if (cr == NULL)
                break;
            i = e + 1;
            if (i == stop && lf == NULL)
                break; /* the bare CR ended the text */
        }
        i = lf ? end + 1 : len;
    }
    buf_append(dst, ".\r\n", 3);
}
