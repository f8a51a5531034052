/*
 * net.c - address parsing and CIDR matching. Any thread.
 */
#include "core/base/base.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int net_parse_hostport(const char *s, int default_port, sockaddr_any_t *out)
{
    char host[256];
    const char *port = NULL;
    memset(out, 0, sizeof(*out));
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (end == NULL || (size_t)(end - s - 1) >= sizeof(host))
            return SL_EPARSE;
        memcpy(host, s + 1, (size_t)(end - s - 1));
        host[end - s - 1] = '\0';
        if (end[1] == ':')
            port = end + 2;
        else if (end[1] != '\0')
            return SL_EPARSE;
    } else {
        const char *colon = strrchr(s, ':');
        if (colon != NULL && strchr(s, ':') == colon) {
            if ((size_t)(colon - s) >= sizeof(host))
                return SL_EPARSE;
            memcpy(host, s, (size_t)(colon - s));
            host[colon - s] = '\0';
            port = colon + 1;
        } else {
            if (strlen(s) >= sizeof(host))
                return SL_EPARSE;
            strcpy(host, s);
        }
    }
    long p = default_port;
    if (port != NULL) {
        char *end;
        p = strtol(port, &end, 10);
        if (*port == '\0' || *end != '\0' || p < 0 || p > 65535)
            return SL_EPARSE;
    }
    if (p < 0)
        return SL_EPARSE;
    struct sockaddr_in *in4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)p);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)p);
        return 0;
    }
    return SL_EPARSE;
}

const char *net_ntop(const struct sockaddr *sa, char *dst, size_t len)
{
    if (sa->sa_family == AF_INET)
        return inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, dst, len);
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a))
            return inet_ntop(AF_INET, &a->s6_addr[12], dst, len);
        return inet_ntop(AF_INET6, a, dst, len);
    }
    snprintf(dst, len, "unknown");
    return dst;
}

bool net_is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a))
            return a->s6_addr[12] == 127;
        return IN6_IS_ADDR_LOOPBACK(a);
    }
    return sa->sa_family == AF_UNIX;
}

int net_cidr_parse(const char *s, net_cidr_t *out)
{
    char host[64];
    const char *slash = strchr(s, '/');
    size_t hl = slash ? (size_t)(slash - s) : strlen(s);
    if (hl == 0 || hl >= sizeof(host))
        return SL_EPARSE;
    memcpy(host, s, hl);
    host[hl] = '\0';
    memset(out, 0, sizeof(*out));
    int max;
    if (inet_pton(AF_INET, host, out->nc_addr) == 1) {
        out->nc_family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, host, out->nc_addr) == 1) {
        out->nc_family = AF_INET6;
        max = 128;
    } else {
        return SL_EPARSE;
    }
    out->nc_prefix = max;
    if (slash) {
        char *end;
        long p = strtol(slash + 1, &end, 10);
        if (slash[1] == '\0' || *end != '\0' || p < 0 || p > max)
            return SL_EPARSE;
        out->nc_prefix = (int)p;
    }
    return 0;
}

static bool prefix_eq(const uint8_t *a, const uint8_t *b, int bits)
{
    int bytes = bits / 8, rem = bits % 8;
    if (memcmp(a, b, (size_t)bytes) != 0)
        return false;
    if (rem == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rem));
    return (a[bytes] & mask) == (b[bytes] & mask);
}

bool net_cidr_match(const net_cidr_t *c, const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET) {
        const uint8_t *a = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
        return c->nc_family == AF_INET && prefix_eq(c->nc_addr, a, c->nc_prefix);
    }
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6))
            return c->nc_family == AF_INET && prefix_eq(c->nc_addr, &a6->s6_addr[12], c->nc_prefix);
        return c->nc_family == AF_INET6 && prefix_eq(c->nc_addr, a6->s6_addr, c->nc_prefix);
    }
    return false;
}
