/* Routes HTTP requests to their handlers and implements the non-sale endpoints:
 * GET /v1/events/{e}, PUT /admin/events/{e} (the other admin routes: admin_events.c),
 * GET /v1/orders/{id},
 * GET /v1/events/{e}/users/{u}/orders, GET /metrics, GET /healthz. */
#ifndef SNATCH_API_H
#define SNATCH_API_H

#include <stdbool.h>
#include <stdint.h>

#include "http.h"

/* The http_handler_fn of every worker (req->server_data is the worker_t). */
void api_handle(http_request_t *req);

/* Parses an admin PUT body {"stock":N,"per_user_limit":K} (per_user_limit optional, default 1;
 * no other field). Returns NULL and fills the outputs, or a static reason for a 400. Pure: the
 * fuzz target drives it directly. */
const char *api_parse_event_body(const char *body, size_t len, int64_t *stock, int64_t *limit);

#endif
