/*
 * delivery/mime7bit_int.h - 8-bit to 7-bit conversion of a message for a
 * server that does not offer 8BITMIME (RFC 6152 3: convert or bounce), and
 * the 8-bit tests the SMTP client needs (SMTPUTF8 downgrade, BODY=).
 * Shared by session.c, its unit test (tests/unit/delivery_mime7bit_test.c)
 * and its fuzz target (tests/fuzz/fuzz_mime7bit.c). Never included from
 * outside delivery/ (tests aside).
 *
 * Thread: every function here is pure (any thread).
 */
#ifndef SLUICE_MIME7BIT_INT_H
#define SLUICE_MIME7BIT_INT_H

#include "core/base/base.h"

#define MIME7_MAX_DEPTH 32 /* MIME nesting converted; deeper 8-bit content fails */

/* True when p[0..n) holds a byte >= 0x80. */
bool mime7_has_8bit(const char *p, size_t n);

/* The length of msg's header section: up to and including the empty line
 * that ends it (CRLF or LF), or len when there is none. */
size_t mime7_header_len(const char *msg, size_t len);

/* Convert msg (a whole message, header and body, as stored: CRLF lines,
 * not dot-stuffed) to 7-bit:
 *   - an entity whose header and body are 7-bit is copied byte for byte;
 *   - a leaf part (text/... or any other type) with 8-bit content and a
 *     Content-Transfer-Encoding of 7bit, 8bit or none gets its body in
 *     quoted-printable (RFC 2045 6.7) and "Content-Transfer-Encoding:
 *     quoted-printable" (the first such field replaced in place, the
 *     others dropped, or one added); the top level gets "MIME-Version: 1.0"
 *     when it has none;
 *   - multipart/... and message/rfc822 are converted part by part (to
 *     MIME7_MAX_DEPTH levels); their own 8bit or binary encoding becomes 7bit.
 * Decoding the quoted-printable gives back the original bytes (line ends
 * as CRLF). Returns 1 with the copy appended to out, 0 when msg is 7-bit
 * already (out untouched), or SL_EPARSE when it cannot be converted, with
 * the reason in why: 8-bit in a header field, in a message/... part other
 * than rfc822 (message/global), in a part encoded binary, base64 or
 * quoted-printable (malformed), in a multipart preamble or epilogue, a
 * multipart without a boundary, or nesting deeper than MIME7_MAX_DEPTH. The
 * caller bounces 5.6.3. On failure out may hold a partial copy. */
int mime7_convert(const char *msg, size_t len, buf_t *out, char *why, size_t whylen);

#endif /* SLUICE_MIME7BIT_INT_H */
