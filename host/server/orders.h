/* Host side of the order pipeline: each sold ticket becomes a JetStream message on stream ORDERS,
 * subject orders.<event>, header Nats-Msg-Id = order id (JetStream drops duplicates inside its
 * window, so republishing is always safe); the orders of one loop turn share a message (a batch,
 * see orders_publish).
 *
 * orders_publisher_t owns the one NATS connection of the process (cnats runs its own I/O threads;
 * the connection is thread-safe). It connects and makes sure the stream exists on a background
 * thread, retrying, so no loop thread ever blocks on NATS. Each loop thread gets an orders_lane_t:
 * publishes go out with js_PublishMsgAsync (never blocking: the library gets no MaxPending, which
 * would make it wait; the lane bounds its in-flight count), and acknowledgements, which cnats
 * delivers on its own thread, are handed back to the lane's loop through a uv_async_t, so the
 * callback runs on the loop. */
#ifndef SNATCH_ORDERS_H
#define SNATCH_ORDERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "orders_stream.h" /* ORDERS_STREAM, ORDERS_SUBJECT_PREFIX, the window */

typedef struct orders_publisher orders_publisher_t;
typedef struct orders_lane orders_lane_t;

/* Starts connecting to url (one URL or a comma list of a cluster's nodes) in the background (never
 * blocks for long). Returns 0 or -1 (bad url, out of memory) with err filled. */
int orders_publisher_start(orders_publisher_t **out, const char *url, char *err, size_t errlen);
/* The same with credentials and TLS for NATS (auth may be NULL; read only during the call). */
typedef struct auth_config auth_config_t;
int orders_publisher_start_auth(orders_publisher_t **out, const char *url,
                                const auth_config_t *auth, char *err, size_t errlen);

/* Connected, the stream exists and, as far as the last publishes and checks tell, has a leader:
 * a publish now has a chance to be acknowledged. A publish answered "no responders" or not at
 * all makes it false until the publisher thread sees the stream led again. */
bool orders_publisher_ready(const orders_publisher_t *p);

/* Closes the connection (after waiting up to timeout_ms for in-flight acks) and frees p. */
void orders_publisher_stop(orders_publisher_t *p, int64_t timeout_ms);

/* status: 0 acknowledged (stored or a duplicate of a stored message); -1 failed or timed out (the
 * order stays pending in Redis, reconciliation republishes it). Runs on the lane's loop thread. */
typedef void (*orders_ack_fn)(int status, void *data);

/* A lane for one loop; max_inflight bounds its unanswered orders (counted one by one, however
 * many share a message); ack_timeout_ms bounds the wait for each message's acknowledgement (an
 * unanswered attempt is made again within it). */
int orders_lane_start(orders_lane_t **out, orders_publisher_t *p, uv_loop_t *loop,
                      unsigned max_inflight, uint64_t ack_timeout_ms);

/* Publishes one order (hold_until > 0: sold held until then, header Snatch-Hold-Until). The
 * orders a loop turn publishes for the same (event, hold_until) leave together, as one message
 * (a batch: README "The ORDERS stream"), when the turn ends or the batch is full; a lone order
 * leaves alone at the end of its turn, no timer. Every order of a message gets the message's
 * answer. Call it once per order id: a batch's Nats-Msg-Id is "<first order id>+<n>", so a second
 * batch starting with the same order could be taken for the first one's duplicate; a publish of
 * an order again (an idempotent replay) goes through orders_publish_hdr. Returns 0 when the order
 * was taken (cb will run exactly once, later; -1 too when NATS refuses the message at the end of
 * the turn), or -1 when it was not (no connection made yet, lane full or closing): cb is not
 * called then. Call on the lane's loop. */
int orders_publish(orders_lane_t *lane, const char *event, const char *order_id, int64_t hold_until,
                   const char *payload, size_t len, orders_ack_fn cb, void *data);

/* One message of its own, sent now, with headers: hdrs holds nhdr (name, value) pairs. msg_id
 * may be a transition's ("<order id>:<state>", at most KEYSPACE_MSG_ID_MAX bytes). */
int orders_publish_hdr(orders_lane_t *lane, const char *event, const char *msg_id,
                       const char *payload, size_t len, const char *const *hdrs, int nhdr,
                       orders_ack_fn cb, void *data);

/* Orders taken and not answered yet (in open batches too): max_inflight bounds this count. */
unsigned orders_lane_inflight(const orders_lane_t *lane);

/* Fails (status -1) every publish still waiting, then frees the lane once its handles close.
 * Call on the lane's loop. */
void orders_lane_close(orders_lane_t *lane);

#endif
