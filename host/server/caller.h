/* Who a request speaks for (the buyer) and where it comes from (the client address), as the
 * host's flags allow: X-User-Id counts only from a --trusted-proxy peer, ?user= only with
 * --allow-query-user, X-Forwarded-For only from trusted proxies. Loop thread of the request
 * (req->server_data is its worker_t). */
#ifndef SNATCH_CALLER_H
#define SNATCH_CALLER_H

#include <stdbool.h>
#include <stddef.h>

#include "http.h"
#include "trust.h"

typedef enum {
    CALLER_BUYER_OK = 0,
    CALLER_BUYER_NONE,          /* no buyer given (or only by an untrusted peer's header) */
    CALLER_BUYER_QUERY_REFUSED, /* ?user= without --allow-query-user */
} caller_buyer_t;

/* The buyer of req (*user points into req; the name is not validated here). */
caller_buyer_t caller_buyer(http_request_t *req, const char **user, size_t *len);

/* Answers the 400 matching a buyer verdict other than CALLER_BUYER_OK. */
void caller_buyer_error(http_request_t *req, int route, caller_buyer_t verdict);

/* The client address of req (TRUST_ADDR_MAX bytes): the peer, or from a trusted proxy the
 * nearest untrusted X-Forwarded-For hop. What per-address limits are keyed on. */
void caller_client(http_request_t *req, char *out);

/* True when the client address is itself a trusted proxy (a local balancer or load tool
 * speaking without X-Forwarded-For): per-address limits would throttle everyone behind it. */
bool caller_client_is_proxy(http_request_t *req, const char *client);

/* True when req's peer is a --trusted-proxy. */
bool caller_peer_trusted(http_request_t *req);

#endif
