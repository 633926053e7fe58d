/* Routes HTTP requests to their handlers and implements the non-sale endpoints:
 * GET /v1/events/{e}, PUT /admin/events/{e}, GET /v1/orders/{id},
 * GET /v1/events/{e}/users/{u}/orders, GET /metrics, GET /healthz. */
#ifndef SNATCH_API_H
#define SNATCH_API_H

#include <stdint.h>

#include "http.h"
#include "trust.h"

/* The http_handler_fn of every worker (req->server_data is the worker_t). */
void api_handle(http_request_t *req);

/* Answers with a JSON error body {"error":reason[,"detail":detail]} and counts it. */
void api_error(http_request_t *req, int route, int status, const char *reason, const char *detail);

/* Parses an admin PUT body {"stock":N,"per_user_limit":K} (per_user_limit optional, default 1;
 * no other field). Returns NULL and fills the outputs, or a static reason for a 400. Pure: the
 * fuzz target drives it directly. */
const char *api_parse_event_body(const char *body, size_t len, int64_t *stock, int64_t *limit);

/* Who the request speaks for. X-User-Id counts only from a --trusted-proxy peer (from anyone
 * else it is ignored); ?user= only with --allow-query-user. The name is not validated here. */
typedef enum {
    API_BUYER_OK = 0,
    API_BUYER_NONE,          /* no buyer given (or only by an untrusted peer's header) */
    API_BUYER_QUERY_REFUSED, /* ?user= without --allow-query-user */
} api_buyer_t;
api_buyer_t api_buyer(http_request_t *req, const char **user, size_t *len);

/* Answers the 400 (or 403) matching a buyer verdict other than API_BUYER_OK. */
void api_buyer_error(http_request_t *req, int route, api_buyer_t verdict);

/* The client address of req (TRUST_ADDR_MAX bytes): the peer, or from a trusted proxy the
 * nearest untrusted X-Forwarded-For hop. What per-address limits are keyed on. */
void api_client(http_request_t *req, char *out);

/* True when the client address is itself a trusted proxy (a local balancer or load tool
 * speaking without X-Forwarded-For): per-address limits would throttle everyone behind it. */
bool api_client_is_proxy(http_request_t *req, const char *client);

#endif
