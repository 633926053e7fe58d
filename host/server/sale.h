/* One snatch request's flow, on its loop thread:
 *   validate -> event known? -> local stock -> policy admit -> Redis deduct (EVALSHA) ->
 *   policy order -> JetStream publish -> wait for the ack -> 200.
 * Every refusal after the local reservation gives the unit back; nothing is deducted when Redis
 * or NATS is unreachable (503, fail closed). */
#ifndef SNATCH_SALE_H
#define SNATCH_SALE_H

#include "http.h"
#include "worker.h"

/* POST /v1/events/{event}/snatch. Answers req (now or later). */
void sale_snatch(worker_t *w, http_request_t *req, const char *event, size_t event_len);

#endif
