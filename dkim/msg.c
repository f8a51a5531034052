/*
 * dkim/msg.c - split a stored message into header fields and body, and find
 * the From domain. Pointers borrow from the message. Thread: any.
 */
#include "dkim/dkim_int.h"

#include <stdlib.h>
#include <string.h>

static dkim_hdr_t *msg_add(dkim_msg_t *m);

static dkim_hdr_t *msg_add(dkim_msg_t *m)
{
    if (m->m_nhdrs == m->m_cap) {
        size_t cap = m->m_cap * 2;
        if (m->m_hdrs == m->m_inline) {
            m->m_hdrs = xmalloc(cap * sizeof(*m->m_hdrs));
            memcpy(m->m_hdrs, m->m_inline, sizeof(m->m_inline));
        } else {
            m->m_hdrs = xrealloc(m->m_hdrs, cap * sizeof(*m->m_hdrs));
        }
        m->m_cap = cap;
    }
    return &m->m_hdrs[m->m_nhdrs++];
}

void dkim_msg_parse(dkim_msg_t *m, const char *msg, size_t len)
{
    const char *p = msg, *end = msg + len;
    dkim_hdr_t *cur = NULL;

    m->m_hdrs = m->m_inline;
    m->m_nhdrs = 0;
    m->m_cap = ARRAY_SIZE(m->m_inline);
    m->m_body = end;
    m->m_bodylen = 0;

    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *next = nl ? nl + 1 : end;
        const char *ce = nl ? nl : end; /* content end */
        if (nl && ce > p && ce[-1] == '\r')
            ce--;
        if (ce == p && nl) { /* the empty line: the body follows */
            m->m_body = next;
            m->m_bodylen = (size_t)(end - next);
            break;
        }
        if ((*p == ' ' || *p == '\t') && cur) {
            cur->h_len = (size_t)(ce - cur->h_name); /* folded continuation */
        } else if (ce > p) {
            cur = msg_add(m);
            cur->h_name = p;
            const char *colon = memchr(p, ':', (size_t)(ce - p));
            const char *ne = colon ? colon : ce;
            while (ne > p && (ne[-1] == ' ' || ne[-1] == '\t'))
                ne--;
            cur->h_namelen = (size_t)(ne - p);
            cur->h_len = (size_t)(ce - p);
        }
        p = next;
    }
}

void dkim_msg_free(dkim_msg_t *m)
{
    if (m->m_hdrs != m->m_inline)
        free(m->m_hdrs);
    m->m_hdrs = NULL;
}

int dkim_from_domain(const char *value, size_t len, char *out, size_t outlen)
{
    const char *q = value, *end = value + len;
    const char *dom = NULL, *dend = NULL, *at = NULL;
    int depth = 0;
    bool inq = false;

    for (; q < end; q++) {
        char c = *q;
        if (inq || depth) {
            if (c == '\\' && q + 1 < end)
                q++;
            else if (inq && c == '"')
                inq = false;
            else if (depth && c == '(')
                depth++;
            else if (depth && c == ')')
                depth--;
            continue;
        }
        if (c == '"') {
            inq = true;
        } else if (c == '(') {
            depth = 1;
        } else if (c == '<') { /* name-addr: the address is inside <> */
            const char *gt = memchr(q, '>', (size_t)(end - q));
            const char *ae = gt ? gt : end;
            for (const char *r = ae; r > q; r--) {
                if (r[-1] == '@') {
                    dom = r;
                    dend = ae;
                    break;
                }
            }
            break;
        } else if (c == '@' && !at) {
            at = q;
        } else if (c == ',' && at) {
            break; /* end of the first mailbox */
        }
    }
    if (!dom && at) { /* addr-spec */
        dom = at + 1;
        for (dend = dom; dend < end; dend++) {
            char c = *dend;
            if (c == ' ' || c == '\t' || c == ',' || c == '(' || c == ';' || c == '>' ||
                c == '\r' || c == '\n')
                break;
        }
    }
    if (!dom)
        return SL_EPARSE;
    while (dom < dend && (*dom == ' ' || *dom == '\t'))
        dom++;
    while (dend > dom && (dend[-1] == ' ' || dend[-1] == '\t' || dend[-1] == '.'))
        dend--;
    size_t n = (size_t)(dend - dom);
    if (n == 0 || n >= outlen || n > 253)
        return SL_EPARSE;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)dom[i];
        if (c >= 'A' && c <= 'Z')
            c += 32;
        else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
                   c == '_'))
            return SL_EPARSE; /* a domain literal or a U-label: no d= for it */
        out[i] = (char)c;
    }
    out[n] = '\0';
    return 0;
}
