/* One snatch request's flow, on its loop thread:
 *   validate -> event known? -> local stock -> policy admit -> Redis deduct (EVALSHA) ->
 *   policy order -> JetStream publish -> wait for the ack -> 200.
 * Every refusal after the local reservation gives the unit back; nothing is deducted when Redis
 * or NATS is unreachable (503, fail closed). */
#ifndef SNATCH_SALE_H
#define SNATCH_SALE_H

#include "deduct_batch.h"
#include "http.h"
#include "worker.h"

/* POST /v1/events/{event}/snatch. Answers req (now or later). */
void sale_snatch(worker_t *w, http_request_t *req, const char *event, size_t event_len);

/* What the sale needs of Redis and JetStream, replaceable so that the unit test can drive the
 * state machine with fakes (sale_set_backend(NULL): the real ones). */
typedef struct sale_backend {
    bool (*ready)(worker_t *w); /* Redis and NATS usable; false: 503, nothing deducted */
    /* Deducts qty units for user in Redis (deduct_batch.h: the real one submits to the
     * thread's batcher); key: the request's Idempotency-Key or NULL. cb exactly once. */
    void (*deduct)(worker_t *w, const char *event, const char *user, int64_t qty, const char *key,
                   deduct_fn cb, void *data);
    /* Publishes the order (hold_until > 0: sold held until then, said in a header); cb(status)
     * once JetStream acknowledged it (0) or not. 0 or -1. replay: published before (an
     * Idempotency-Key's repeat), so in a message of its own (orders_publish). */
    int (*publish)(worker_t *w, const char *event, const char *order_id, const char *payload,
                   size_t len, int64_t hold_until, bool replay, orders_ack_fn cb, void *data);
    /* Every order of a deduction batch was acknowledged: {event}:pending may forget the batch's
     * entry (key: its field, the batch's first order id). */
    void (*acked)(worker_t *w, const char *key);
} sale_backend_t;
void sale_set_backend(const sale_backend_t *b);

#endif
