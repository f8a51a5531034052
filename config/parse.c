/*
 * config/parse.c - lexer and parser for sluice's configuration syntax, a
 * small UCL / nginx-like subset, into a tree of cfg_node_t (config.h).
 *
 *   key = value;   key value;   key: value      (separators ; , or newline)
 *   name { ... }   key = [a, b, c]              (sections, lists of strings)
 *   "double \"quoted\" \\ \n"   'single quoted'   bareword   # or / * * /
 *
 * Nothing here knows any key: config.c walks the tree against its schema.
 * Main function: cfg_tree_parse(). Any thread; no global state. The tree
 * owns its strings and is freed with cfg_tree_free().
 */
#include "config/config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
    TK_EOF = 0,
    TK_WORD,   /* bareword */
    TK_STRING, /* quoted string */
    TK_LBRACE,
    TK_RBRACE,
    TK_LBRACK,
    TK_RBRACK,
    TK_ASSIGN, /* = or : */
    TK_SEP,    /* ; or , */
} tk_type_t;

typedef struct token {
    tk_type_t t_type;
    char *t_text; /* TK_WORD / TK_STRING: owned until taken */
    int t_line;
    int t_end_line; /* line of the token's last character */
} token_t;

typedef struct parser {
    const char *ps_name;
    const char *ps_p, *ps_end;
    int ps_line;
    char *ps_err;
    size_t ps_errlen;
    bool ps_failed;
    token_t ps_back; /* one token of push-back */
    bool ps_have_back;
    int ps_depth;
} parser_t;

#define CFG_MAX_DEPTH 16

static void ps_error(parser_t *ps, int line, const char *fmt, ...) PRINTF_LIKE(3, 4);
static int lex(parser_t *ps, token_t *t);
static int lex_string(parser_t *ps, token_t *t, char quote);
static int tok_next(parser_t *ps, token_t *t);
static void tok_push_back(parser_t *ps, token_t *t);
static const char *tok_desc(const token_t *t, char *dst, size_t len);
static int parse_body(parser_t *ps, cfg_node_t **head, bool top, int open_line, const char *name);
static int parse_entry(parser_t *ps, token_t *key, cfg_node_t **out);
static int parse_list(parser_t *ps, cfg_node_t *list, const char *key);

static void ps_error(parser_t *ps, int line, const char *fmt, ...)
{
    if (ps->ps_failed)
        return;
    ps->ps_failed = true;
    va_list ap;
    va_start(ap, fmt);
    cfg_verror(ps->ps_err, ps->ps_errlen, ps->ps_name, line, fmt, ap);
    va_end(ap);
}

int cfg_verror(char *err, size_t errlen, const char *name, int line, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    snprintf(err, errlen, "%s:%d: %s", name, line, msg);
    return SL_ECONFIG;
}

int cfg_error(char *err, size_t errlen, const char *name, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cfg_verror(err, errlen, name, line, fmt, ap);
    va_end(ap);
    return SL_ECONFIG;
}

/* A bareword runs until white space or one of these. ':' is part of a
 * bareword ("127.0.0.1:25", "::1"); "key:" is split by the parser. */
static bool is_word_char(unsigned char c)
{
    if (c <= ' ' || c == 0x7f)
        return false;
    return strchr(";,{}[]=\"'#", c) == NULL;
}

/* Skip white space and comments. 0, or SL_EPARSE on an unterminated one. */
static int skip_space(parser_t *ps)
{
    while (ps->ps_p < ps->ps_end) {
        char c = *ps->ps_p;
        if (c == '\n') {
            ps->ps_line++;
            ps->ps_p++;
        } else if (c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v') {
            ps->ps_p++;
        } else if (c == '#') {
            while (ps->ps_p < ps->ps_end && *ps->ps_p != '\n')
                ps->ps_p++;
        } else if (c == '/' && ps->ps_p + 1 < ps->ps_end && ps->ps_p[1] == '*') {
            int start = ps->ps_line;
            ps->ps_p += 2;
            for (;;) {
                if (ps->ps_p + 1 >= ps->ps_end) {
                    ps_error(ps, start, "unterminated comment");
                    return SL_EPARSE;
                }
                if (ps->ps_p[0] == '*' && ps->ps_p[1] == '/')
                    break;
                if (*ps->ps_p == '\n')
                    ps->ps_line++;
                ps->ps_p++;
            }
            ps->ps_p += 2;
        } else {
            break;
        }
    }
    return 0;
}

/* A quoted string. Strings do not span lines: a missing quote is then
 * reported on its own line rather than at the end of the file. */
static int lex_string(parser_t *ps, token_t *t, char quote)
{
    buf_t b;
    buf_init(&b, 32);
    ps->ps_p++; /* opening quote */
    for (;;) {
        if (ps->ps_p >= ps->ps_end || *ps->ps_p == '\n') {
            ps_error(ps, t->t_line, "unterminated string");
            goto fail;
        }
        char c = *ps->ps_p++;
        if (c == quote)
            break;
        if (c == '\0') {
            ps_error(ps, t->t_line, "NUL byte in a string");
            goto fail;
        }
        if (c == '\\' && quote == '"') {
            if (ps->ps_p >= ps->ps_end || *ps->ps_p == '\n') {
                ps_error(ps, t->t_line, "unterminated string");
                goto fail;
            }
            char e = *ps->ps_p++;
            switch (e) {
            case '"':
            case '\\':
            case '/':
            case '\'':
                c = e;
                break;
            case 'n':
                c = '\n';
                break;
            case 't':
                c = '\t';
                break;
            case 'r':
                c = '\r';
                break;
            default:
                ps_error(ps, t->t_line,
                         "bad escape \"\\%c\" in a string (use \\\\ for a backslash)", e);
                goto fail;
            }
        } else if (c == '\\' && quote == '\'' && ps->ps_p < ps->ps_end && *ps->ps_p == '\'') {
            c = *ps->ps_p++;
        }
        buf_append(&b, &c, 1);
    }
    buf_append(&b, "", 1);
    t->t_type = TK_STRING;
    t->t_text = buf_steal(&b, NULL);
    return 0;
fail:
    buf_free(&b);
    return SL_EPARSE;
}

/* The next token from the text. */
static int lex(parser_t *ps, token_t *t)
{
    memset(t, 0, sizeof(*t));
    if (skip_space(ps) < 0)
        return SL_EPARSE;
    t->t_line = ps->ps_line;
    t->t_end_line = ps->ps_line;
    if (ps->ps_p >= ps->ps_end) {
        t->t_type = TK_EOF;
        return 0;
    }
    unsigned char c = (unsigned char)*ps->ps_p;
    switch (c) {
    case '{':
        t->t_type = TK_LBRACE;
        break;
    case '}':
        t->t_type = TK_RBRACE;
        break;
    case '[':
        t->t_type = TK_LBRACK;
        break;
    case ']':
        t->t_type = TK_RBRACK;
        break;
    case '=':
        t->t_type = TK_ASSIGN;
        break;
    case ';':
    case ',':
        t->t_type = TK_SEP;
        break;
    case '"':
    case '\'':
        return lex_string(ps, t, (char)c);
    case ':':
        /* "::1" is a bareword; any other ':' at a token start assigns. */
        if (ps->ps_p + 1 < ps->ps_end && ps->ps_p[1] == ':')
            goto word;
        t->t_type = TK_ASSIGN;
        break;
    default:
        if (!is_word_char(c)) {
            ps_error(ps, ps->ps_line, "unexpected character 0x%02x", c);
            return SL_EPARSE;
        }
        goto word;
    }
    ps->ps_p++;
    return 0;
word : {
    const char *s = ps->ps_p;
    while (ps->ps_p < ps->ps_end && is_word_char((unsigned char)*ps->ps_p))
        ps->ps_p++;
    t->t_type = TK_WORD;
    t->t_text = xstrndup(s, (size_t)(ps->ps_p - s));
    return 0;
}
}

static int tok_next(parser_t *ps, token_t *t)
{
    if (ps->ps_have_back) {
        *t = ps->ps_back;
        ps->ps_have_back = false;
        return 0;
    }
    return lex(ps, t);
}

/* Give a token back; the parser takes it again with the next tok_next. */
static void tok_push_back(parser_t *ps, token_t *t)
{
    ps->ps_back = *t;
    ps->ps_have_back = true;
    t->t_text = NULL;
}

static const char *tok_desc(const token_t *t, char *dst, size_t len)
{
    switch (t->t_type) {
    case TK_EOF:
        return "end of file";
    case TK_WORD:
    case TK_STRING:
        snprintf(dst, len, "\"%.60s\"", t->t_text);
        return dst;
    case TK_LBRACE:
        return "\"{\"";
    case TK_RBRACE:
        return "\"}\"";
    case TK_LBRACK:
        return "\"[\"";
    case TK_RBRACK:
        return "\"]\"";
    case TK_ASSIGN:
        return "\"=\"";
    case TK_SEP:
        return "\";\"";
    }
    return "?";
}

static cfg_node_t *node_new(cfg_node_type_t type, int line)
{
    cfg_node_t *n = xcalloc(1, sizeof(*n));
    n->n_type = type;
    n->n_line = line;
    return n;
}

/* Entries until '}' (or end of file at the top level), appended to *head. */
static int parse_body(parser_t *ps, cfg_node_t **head, bool top, int open_line, const char *name)
{
    cfg_node_t **tail = head;
    token_t t;
    char d[80];
    for (;;) {
        if (tok_next(ps, &t) < 0)
            return SL_EPARSE;
        switch (t.t_type) {
        case TK_EOF:
            if (top)
                return 0;
            ps_error(ps, open_line, "section \"%s\": \"{\" is never closed (missing \"}\")", name);
            return SL_EPARSE;
        case TK_RBRACE:
            if (!top)
                return 0;
            ps_error(ps, t.t_line, "unexpected \"}\" (no section to close)");
            return SL_EPARSE;
        case TK_SEP:
            continue;
        case TK_WORD:
        case TK_STRING: {
            cfg_node_t *n = NULL;
            int rc = parse_entry(ps, &t, &n);
            free(t.t_text);
            if (rc < 0)
                return rc;
            *tail = n;
            tail = &n->n_next;
            continue;
        }
        default:
            ps_error(ps, t.t_line, "expected a key, got %s", tok_desc(&t, d, sizeof(d)));
            return SL_EPARSE;
        }
    }
}

/* key [= | :] value. *key is the key token (the caller frees its text). */
static int parse_entry(parser_t *ps, token_t *key, cfg_node_t **out)
{
    char d[80];
    token_t t = {0};
    cfg_node_t *n = NULL;
    char *name = key->t_text;
    bool split = false;

    /* "key:" or "key:value" written as one bareword */
    if (key->t_type == TK_WORD) {
        char *colon = strchr(name, ':');
        if (colon != NULL) {
            split = true;
            if (colon[1] != '\0') {
                t.t_type = TK_WORD;
                t.t_text = xstrdup(colon + 1);
                t.t_line = t.t_end_line = key->t_line;
            }
            *colon = '\0';
        }
    }
    if (name[0] == '\0') {
        ps_error(ps, key->t_line, "empty key");
        goto fail;
    }
    if (t.t_text == NULL) {
        if (tok_next(ps, &t) < 0)
            goto fail;
        if (t.t_type == TK_ASSIGN && !split) {
            if (tok_next(ps, &t) < 0)
                goto fail;
        }
    }
    switch (t.t_type) {
    case TK_WORD:
    case TK_STRING:
        n = node_new(CFG_NODE_STR, t.t_line);
        n->n_str = t.t_text;
        n->n_quoted = t.t_type == TK_STRING;
        t.t_text = NULL;
        break;
    case TK_LBRACE:
        if (++ps->ps_depth > CFG_MAX_DEPTH) {
            ps_error(ps, t.t_line, "sections nested too deeply");
            goto fail;
        }
        n = node_new(CFG_NODE_SECTION, t.t_line);
        if (parse_body(ps, &n->n_child, false, t.t_line, name) < 0)
            goto fail;
        ps->ps_depth--;
        break;
    case TK_LBRACK:
        n = node_new(CFG_NODE_LIST, t.t_line);
        if (parse_list(ps, n, name) < 0)
            goto fail;
        break;
    default:
        ps_error(ps, t.t_type == TK_EOF ? key->t_line : t.t_line,
                 "\"%s\": expected a value, got %s", name, tok_desc(&t, d, sizeof(d)));
        goto fail;
    }
    n->n_key = xstrdup(name);
    n->n_key_line = key->t_line;

    /* After a plain value comes a separator, a '}', the end, or a new line:
     * "key a b;" is a mistake, not two entries. */
    if (n->n_type == CFG_NODE_STR) {
        token_t nx;
        if (tok_next(ps, &nx) < 0)
            goto fail;
        if ((nx.t_type == TK_WORD || nx.t_type == TK_STRING || nx.t_type == TK_LBRACE ||
             nx.t_type == TK_LBRACK || nx.t_type == TK_ASSIGN) &&
            nx.t_line == t.t_end_line) {
            ps_error(ps, nx.t_line, "\"%s\": unexpected %s after the value (missing \";\"?)", name,
                     tok_desc(&nx, d, sizeof(d)));
            free(nx.t_text);
            goto fail;
        }
        if (nx.t_type != TK_SEP)
            tok_push_back(ps, &nx);
    }
    *out = n;
    return 0;
fail:
    free(t.t_text);
    cfg_tree_free(n);
    return SL_EPARSE;
}

/* [a, b, c]: strings only, separated by ',' ';' or new lines. */
static int parse_list(parser_t *ps, cfg_node_t *list, const char *key)
{
    cfg_node_t **tail = &list->n_child;
    char d[80];
    token_t t;
    for (;;) {
        if (tok_next(ps, &t) < 0)
            return SL_EPARSE;
        switch (t.t_type) {
        case TK_RBRACK:
            return 0;
        case TK_SEP:
            continue;
        case TK_WORD:
        case TK_STRING: {
            cfg_node_t *n = node_new(CFG_NODE_STR, t.t_line);
            n->n_str = t.t_text;
            n->n_quoted = t.t_type == TK_STRING;
            *tail = n;
            tail = &n->n_next;
            continue;
        }
        case TK_EOF:
            ps_error(ps, list->n_line, "\"%s\": \"[\" is never closed (missing \"]\")", key);
            return SL_EPARSE;
        default:
            ps_error(ps, t.t_line, "\"%s\": a list holds only strings, got %s", key,
                     tok_desc(&t, d, sizeof(d)));
            return SL_EPARSE;
        }
    }
}

int cfg_tree_parse(const char *name, const char *text, size_t len, cfg_node_t **out, char *err,
                   size_t errlen)
{
    parser_t ps = {
        .ps_name = name,
        .ps_p = text,
        .ps_end = text + len,
        .ps_line = 1,
        .ps_err = err,
        .ps_errlen = errlen,
    };
    cfg_node_t *root = node_new(CFG_NODE_SECTION, 1);
    if (parse_body(&ps, &root->n_child, true, 1, "") < 0)
        goto fail;
    *out = root;
    return 0;
fail:
    if (ps.ps_have_back)
        free(ps.ps_back.t_text);
    if (!ps.ps_failed)
        snprintf(err, errlen, "%s:%d: parse error", name, ps.ps_line);
    cfg_tree_free(root);
    return SL_EPARSE;
}

void cfg_tree_free(cfg_node_t *n)
{
    while (n != NULL) {
        cfg_node_t *next = n->n_next;
        cfg_tree_free(n->n_child);
        free(n->n_key);
        free(n->n_str);
        free(n);
        n = next;
    }
}
