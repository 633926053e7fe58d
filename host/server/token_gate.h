/* The bearer tokens of snatch-host: the admin token (--admin-token-file) and the payment side's
 * (--payment-token-file). One rule for both: compared in constant time, never logged, and
 * failures slowed down per client address (each attempt takes a token of the address's bucket,
 * a success gives it back, so only failures stay counted and a guesser gets 429, without the
 * token being compared, once the bucket is empty: 10 at once, then one per 5 s). Loop thread of
 * the request (req->server_data is its worker_t). */
#ifndef SNATCH_TOKEN_GATE_H
#define SNATCH_TOKEN_GATE_H

#include <stdbool.h>
#include <stddef.h>

#include "http.h"

/* Checks req's "Authorization: Bearer <token>" against token (token_len > 0), failures counted
 * in the bucket named by prefix + client address. Returns true, or false once req is answered
 * (429, or 401 with detail, which may be NULL). */
bool token_gate_check(http_request_t *req, int route, const char *prefix, const char *token,
                      size_t token_len, const char *detail);

/* The checks every /admin route makes: admin enabled (403 without --admin-token-file), then
 * token_gate_check with the admin token. Returns true, or false once req is answered. */
bool token_gate_admin(http_request_t *req, int route);

#endif
