/*
 * core/server/smtp_int.h - private helpers of the SMTP reception server:
 * AUTH credential checks, the per-IP AUTH failure table and the per-IP
 * connection counter (both shared by all reception threads).
 */
#ifndef SLUICE_SMTP_INT_H
#define SLUICE_SMTP_INT_H

#include "core/base/base.h"
#include "config/config.h"

/* Decode base64 (RFC 4648, padding optional) into dst (NUL-terminated;
 * dst must hold at least len*3/4+1 bytes). Returns the decoded length or
 * SL_EPARSE. Any thread. */
int smtp_b64_decode(const char *src, size_t len, char *dst, size_t dstlen);

/* Check user/pass against cfg->c_users with crypt_r(3). A missing user
 * costs about as much as a wrong password. Returns true on a match.
 * Blocks for the hash's cost (AUTH is not a hot path). Any thread. */
bool smtp_auth_verify(const cfg_t *cfg, const char *user, const char *pass);

/* Per client address AUTH failure tracking (a small mutex-protected table
 * shared by all reception threads). Any thread. */
bool smtp_auth_locked(const cfg_t *cfg, const char *ip);
void smtp_auth_failed(const cfg_t *cfg, const char *ip);

/* Per client address connection count (mutex-protected, shared). Returns
 * false (and counts nothing) when the address already has max. */
bool smtp_ipconn_acquire(const char *ip, int max);
void smtp_ipconn_release(const char *ip);

#endif /* SLUICE_SMTP_INT_H */
