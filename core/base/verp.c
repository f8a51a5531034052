/*
 * core/base/verp.c - VERP tokens: make and verify the signed token of a
 * return path bounces+TOKEN@<bounce domain> (base.h has the layout).
 *
 * Why a MAC and a day stamp: the inbound listener suppresses the address
 * a token names; a token anyone could make would let anyone suppress
 * anyone. 80 bits of HMAC-SHA256 make a forgery a 2^-80 guess per try;
 * the day stamp bounds how long a leaked token is good for
 * (bounces.verp_max_age). The comparison is CRYPTO_memcmp (constant
 * time) so that the time to refuse says nothing about the MAC.
 * Thread: pure functions, any thread.
 */
#include "core/base/base.h"

#include <ctype.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <string.h>
#include <strings.h>

#define VERP_DATA_LEN 14 /* msgid 8 + idx 4 + day 2 */
#define VERP_MAC_LEN 10
#define VERP_RAW_LEN (VERP_DATA_LEN + VERP_MAC_LEN) /* 24 bytes = 39 base32 chars */

static const char b32[] = "abcdefghijklmnopqrstuvwxyz234567";

static void mac(const uint8_t key[VERP_KEY_LEN], const uint8_t *data, uint8_t out[VERP_MAC_LEN])
{
    uint8_t full[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    HMAC(EVP_sha256(), key, VERP_KEY_LEN, data, VERP_DATA_LEN, full, &n);
    memcpy(out, full, VERP_MAC_LEN);
}

static void b32_encode(const uint8_t *in, size_t n, char *out)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8) | in[i];
        bits += 8;
        while (bits >= 5) {
            out[o++] = b32[(acc >> (bits - 5)) & 31];
            bits -= 5;
        }
    }
    if (bits > 0)
        out[o++] = b32[(acc << (5 - bits)) & 31];
    out[o] = '\0';
}

/* Decode exactly VERP_TOKEN_LEN characters into VERP_RAW_LEN bytes; the
 * unused low bits of the last character must be 0. */
static int b32_decode(const char *in, uint8_t *out)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < VERP_TOKEN_LEN; i++) {
        int c = tolower((unsigned char)in[i]), v;
        if (c >= 'a' && c <= 'z')
            v = c - 'a';
        else if (c >= '2' && c <= '7')
            v = c - '2' + 26;
        else
            return -1;
        acc = (acc << 5) | (uint32_t)v;
        bits += 5;
        if (bits >= 8) {
            if (o == VERP_RAW_LEN)
                return -1;
            out[o++] = (uint8_t)(acc >> (bits - 8));
            bits -= 8;
        }
    }
    if (o != VERP_RAW_LEN || (acc & ((1u << bits) - 1)) != 0)
        return -1;
    return 0;
}

void verp_token_make(const uint8_t key[VERP_KEY_LEN], uint64_t msgid, uint32_t idx, uint64_t now_s,
                     char *dst)
{
    uint8_t raw[VERP_RAW_LEN];
    uint16_t day = (uint16_t)(now_s / 86400);
    for (int i = 0; i < 8; i++)
        raw[i] = (uint8_t)(msgid >> (56 - 8 * i));
    for (int i = 0; i < 4; i++)
        raw[8 + i] = (uint8_t)(idx >> (24 - 8 * i));
    raw[12] = (uint8_t)(day >> 8);
    raw[13] = (uint8_t)day;
    mac(key, raw, raw + VERP_DATA_LEN);
    b32_encode(raw, VERP_RAW_LEN, dst);
}

verp_status_t verp_token_check(const uint8_t key[VERP_KEY_LEN], const char *tok, size_t len,
                               uint64_t now_s, uint64_t max_age_s, uint64_t *msgid, uint32_t *idx,
                               uint64_t *made_s)
{
    uint8_t raw[VERP_RAW_LEN], want[VERP_MAC_LEN];
    if (len != VERP_TOKEN_LEN || b32_decode(tok, raw) != 0)
        return VERP_MALFORMED;
    mac(key, raw, want);
    if (CRYPTO_memcmp(want, raw + VERP_DATA_LEN, VERP_MAC_LEN) != 0)
        return VERP_FORGED;
    uint64_t made = (uint64_t)((raw[12] << 8) | raw[13]) * 86400;
    /* day granularity: a token is good until the end of its last day */
    if (made > now_s + 86400 || (max_age_s > 0 && now_s >= made + 86400 + max_age_s))
        return VERP_EXPIRED;
    uint64_t id = 0;
    for (int i = 0; i < 8; i++)
        id = (id << 8) | raw[i];
    *msgid = id;
    *idx = (uint32_t)raw[8] << 24 | (uint32_t)raw[9] << 16 | (uint32_t)raw[10] << 8 | raw[11];
    *made_s = made;
    return VERP_OK;
}

size_t verp_address(const uint8_t key[VERP_KEY_LEN], uint64_t msgid, uint32_t idx, uint64_t now_s,
                    const char *domain, char *dst, size_t dlen)
{
    char tok[VERP_TOKEN_LEN + 1];
    verp_token_make(key, msgid, idx, now_s, tok);
    int n = snprintf(dst, dlen, VERP_LOCAL_PREFIX "%s@%s", tok, domain);
    return n > 0 && (size_t)n < dlen ? (size_t)n : 0;
}

int verp_address_token(const char *addr, const char *domain, const char **tok, size_t *len)
{
    size_t pl = strlen(VERP_LOCAL_PREFIX);
    const char *at = strrchr(addr, '@');
    if (at == NULL || strncasecmp(addr, VERP_LOCAL_PREFIX, pl) != 0 ||
        strcasecmp(at + 1, domain) != 0)
        return VERP_MALFORMED;
    *tok = addr + pl;
    *len = (size_t)(at - addr) - pl;
    return 0;
}

int verp_key_parse(const uint8_t *data, size_t len, uint8_t key[VERP_KEY_LEN])
{
    size_t n = len;
    if (n == VERP_KEY_LEN) {
        memcpy(key, data, VERP_KEY_LEN);
        return 0;
    }
    while (n > 0 && (data[n - 1] == '\n' || data[n - 1] == '\r'))
        n--;
    if (n != 2 * VERP_KEY_LEN)
        return SL_EPARSE;
    for (size_t i = 0; i < VERP_KEY_LEN; i++) {
        int v = 0;
        for (int k = 0; k < 2; k++) {
            int c = tolower(data[2 * i + (size_t)k]);
            if (c >= '0' && c <= '9')
                v = v * 16 + (c - '0');
            else if (c >= 'a' && c <= 'f')
                v = v * 16 + (c - 'a' + 10);
            else
                return SL_EPARSE;
        }
        key[i] = (uint8_t)v;
    }
    return 0;
}
