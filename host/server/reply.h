/* Answers of the HTTP API that every endpoint shares: JSON errors {"error":reason[,"detail":..]}
 * and the fixed bodies of the sale path, each counted in metrics under its route. Loop thread. */
#ifndef SNATCH_REPLY_H
#define SNATCH_REPLY_H

#include <stddef.h>

#include "http.h"

/* Where answers go: http_respond by default; the unit tests of the API and the sale path
 * capture them instead (NULL: back to http_respond). */
typedef void (*reply_sink_fn)(http_request_t *req, int status, const char *body, size_t len);
void reply_set_sink(reply_sink_fn fn);

/* Answers with a JSON body built by the caller, and counts it. route: metrics_route_t. */
void reply_json(http_request_t *req, int route, int status, const char *body, size_t len);

/* Answers with a body of another type (content_type), and counts it. */
void reply_text(http_request_t *req, int route, int status, const char *content_type,
                const char *body, size_t len);

/* Answers with a JSON error body {"error":reason[,"detail":detail]} and counts it. */
void reply_error(http_request_t *req, int route, int status, const char *reason,
                 const char *detail);

/* Fixed answers: their bodies are constants, built once. */
typedef enum {
    REPLY_SOLD_OUT,           /* {"error":"sold_out"} */
    REPLY_LIMIT_REACHED,      /* {"error":"limit_reached"} */
    REPLY_INSUFFICIENT_STOCK, /* {"error":"insufficient_stock"} */
    REPLY_UNAVAILABLE,        /* {"error":"unavailable"} */
    REPLY_UNKNOWN_EVENT,      /* {"error":"unknown_event"} */
    REPLY_UNKNOWN_OUTCOME,    /* 503 after the Redis connection died mid-deduction */
    REPLY_REPAIRING,          /* {"error":"repairing"}: 503 while Redis is repaired (repair.h) */
    REPLY_PAUSED,             /* {"error":"paused","detail":..}: POST .../pause */
    REPLY__COUNT
} reply_fixed_t;
void reply_fixed(http_request_t *req, int route, int status, reply_fixed_t which);

#endif
