/*
 * smtp_auth.c - AUTH (RFC 4954) credential checks for the reception server,
 * the per-IP failure/lockout table and the per-IP connection counter.
 *
 * Both tables are process-wide, protected by one mutex each: they are
 * touched once per connection or per AUTH attempt, never per message.
 * Thread: any.
 */
#include "core/server/smtp_int.h"

#include <crypt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#define AUTH_TABLE_SIZE 1024
#define IPCONN_BUCKETS 1024

typedef struct auth_fail {
    char af_ip[48];
    uint64_t af_window_start; /* unix s */
    int af_count;
    uint64_t af_locked_until; /* unix s */
    uint64_t af_last;         /* for eviction */
} auth_fail_t;

static pthread_mutex_t auth_lock = PTHREAD_MUTEX_INITIALIZER;
static auth_fail_t auth_table[AUTH_TABLE_SIZE];

typedef struct ipconn {
    struct ipconn *ic_next;
    int ic_count;
    char ic_ip[48];
} ipconn_t;

static pthread_mutex_t ipconn_lock = PTHREAD_MUTEX_INITIALIZER;
static ipconn_t *ipconn_buckets[IPCONN_BUCKETS];

static int b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int smtp_b64_decode(const char *src, size_t len, char *dst, size_t dstlen)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    size_t i = 0;
    for (; i < len && src[i] != '='; i++) {
        int v = b64_val((unsigned char)src[i]);
        if (v < 0)
            return SL_EPARSE;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o + 1 >= dstlen)
                return SL_EPARSE;
            dst[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    for (; i < len; i++)
        if (src[i] != '=')
            return SL_EPARSE;
    if (bits >= 6) /* a lone trailing character carries no whole byte */
        return SL_EPARSE;
    dst[o] = '\0';
    return (int)o;
}

bool smtp_auth_verify(const cfg_t *cfg, const char *user, const char *pass)
{
    /* Same work for unknown users: hash against a fixed SHA-512 setting. */
    const char *hash = "$6$sluiceNoSuchUs$";
    bool known = false;
    for (int i = 0; i < cfg->c_nusers; i++) {
        if (strcmp(cfg->c_users[i].cu_name, user) == 0) {
            hash = cfg->c_users[i].cu_hash;
            known = true;
            break;
        }
    }
    struct crypt_data *cd = xcalloc(1, sizeof(*cd));
    const char *out = crypt_r(pass, hash, cd);
    bool ok = false;
    if (known && out != NULL && out[0] != '*') {
        size_t hl = strlen(hash);
        ok = strlen(out) == hl && CRYPTO_memcmp(out, hash, hl) == 0;
    }
    free(cd);
    return ok;
}

bool smtp_auth_locked(const cfg_t *cfg, const char *ip)
{
    uint64_t now = clock_now_s();
    bool locked = false;
    pthread_mutex_lock(&auth_lock);
    for (size_t i = 0; i < AUTH_TABLE_SIZE; i++) {
        if (strcmp(auth_table[i].af_ip, ip) == 0) {
            locked = auth_table[i].af_locked_until > now;
            break;
        }
    }
    pthread_mutex_unlock(&auth_lock);
    return locked;
}

void smtp_auth_failed(const cfg_t *cfg, const char *ip)
{
    uint64_t now = clock_now_s();
    pthread_mutex_lock(&auth_lock);
    auth_fail_t *e = NULL, *victim = &auth_table[0];
    for (size_t i = 0; i < AUTH_TABLE_SIZE; i++) {
        auth_fail_t *a = &auth_table[i];
        if (strcmp(a->af_ip, ip) == 0) {
            e = a;
            break;
        }
        if (a->af_last < victim->af_last)
            victim = a;
    }
    if (e == NULL) {
        e = victim; /* empty slots have af_last == 0 and go first */
        memset(e, 0, sizeof(*e));
        snprintf(e->af_ip, sizeof(e->af_ip), "%s", ip);
    }
    if (now - e->af_window_start > cfg->c_auth_lockout_window) {
        e->af_window_start = now;
        e->af_count = 0;
    }
    e->af_count++;
    e->af_last = now;
    if (cfg->c_auth_lockout_failures > 0 && e->af_count >= cfg->c_auth_lockout_failures) {
        e->af_locked_until = now + cfg->c_auth_lockout_time;
        e->af_count = 0;
        e->af_window_start = now;
        log_warn("auth lockout client=%s for=%llus", ip,
                 (unsigned long long)cfg->c_auth_lockout_time);
    }
    pthread_mutex_unlock(&auth_lock);
}

static size_t ip_hash(const char *ip)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *ip; ip++)
        h = (h ^ (uint8_t)*ip) * 16777619u;
    return h % IPCONN_BUCKETS;
}

bool smtp_ipconn_acquire(const char *ip, int max)
{
    size_t b = ip_hash(ip);
    bool ok = true;
    pthread_mutex_lock(&ipconn_lock);
    ipconn_t *e = ipconn_buckets[b];
    while (e != NULL && strcmp(e->ic_ip, ip) != 0)
        e = e->ic_next;
    if (e == NULL) {
        e = xcalloc(1, sizeof(*e));
        snprintf(e->ic_ip, sizeof(e->ic_ip), "%s", ip);
        e->ic_next = ipconn_buckets[b];
        ipconn_buckets[b] = e;
    }
    if (max > 0 && e->ic_count >= max)
        ok = false;
    else
        e->ic_count++;
    pthread_mutex_unlock(&ipconn_lock);
    return ok;
}

void smtp_ipconn_release(const char *ip)
{
    size_t b = ip_hash(ip);
    pthread_mutex_lock(&ipconn_lock);
    ipconn_t **pp = &ipconn_buckets[b];
    while (*pp != NULL && strcmp((*pp)->ic_ip, ip) != 0)
        pp = &(*pp)->ic_next;
    ipconn_t *e = *pp;
    if (e != NULL && --e->ic_count <= 0) {
        *pp = e->ic_next;
        free(e);
    }
    pthread_mutex_unlock(&ipconn_lock);
}
