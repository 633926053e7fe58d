/* Routes HTTP requests to their handlers and implements the non-sale endpoints:
 * GET /v1/events/{e}, PUT /admin/events/{e}, GET /v1/orders/{id},
 * GET /v1/events/{e}/users/{u}/orders, GET /metrics, GET /healthz. */
#ifndef SNATCH_API_H
#define SNATCH_API_H

#include "http.h"

/* The http_handler_fn of every worker (req->server_data is the worker_t). */
void api_handle(http_request_t *req);

/* Answers with a JSON error body {"error":reason[,"detail":detail]} and counts it. */
void api_error(http_request_t *req, int route, int status, const char *reason, const char *detail);

#endif
