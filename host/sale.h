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

/* Makes sure the event is known locally: reads {event}:meta from Redis when it is not, installs
 * it with the policy's quota, then calls cb(ev or NULL when unknown, err) on the loop thread. */
struct stock_event;
typedef void (*sale_event_fn)(struct stock_event *ev, int err, void *data);
void sale_lookup_event(worker_t *w, const char *event, size_t len, sale_event_fn cb, void *data);

/* Sends what the sale path batches (acknowledged orders leaving {event}:pending) now;
 * w->hdel_inflight counts the replies still to come. */
void sale_flush(worker_t *w);

/* Flushes and closes the sale path's handles. Call on the loop thread before closing Redis. */
void sale_close(worker_t *w);

/* Timer body: re-reads every known event's meta (generation, stock, sold) and reinstalls. */
void sale_refresh_events(worker_t *w);

#endif
