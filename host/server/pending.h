/* {event}:pending bookkeeping of one loop thread: entries (one per deduction batch) whose orders
 * JetStream all acknowledged leave the hash in batches: as extra arguments of the next deduction
 * batch of their event (deduct_batch.h, no round trip of their own), else by one HDEL per event
 * on the next loop turn, never one per sale. Best effort: an entry left behind only makes
 * reconciliation republish messages that JetStream and SQLite both de-duplicate. Loop thread
 * only. */
#ifndef SNATCH_PENDING_H
#define SNATCH_PENDING_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "keyspace.h"
#include "redis.h"

typedef struct pending pending_t;

/* Batches sent through *redis (read at each send: the worker's client, NULL once closed, when a
 * batch is dropped). NULL when out of memory: acknowledged ids are then left to reconciliation. */
pending_t *pending_new(uv_loop_t *loop, redis_client_t *const *redis);

/* Queues an entry's field (its batch's first order id: pending_batch_release) for deletion from
 * its event's {event}:pending; taken by the next deduction batch of its event, or sent on the
 * next loop turn (at once when the queue is full). p NULL: nothing. */
void pending_ack(pending_t *p, const char *order_id);

/* Sends the batch now, every event. */
void pending_flush(pending_t *p);

/* Group commit (deduct_batch.h): the acknowledged ids of an event ride, as its HDEL, on the next
 * deduction batch of that event. pending_take moves up to max of event's queued ids into out
 * and returns how many. A carrier tells the loop-turn flush which events have a batch about to
 * leave (their ids wait for it instead of costing an HDEL); fn NULL: none. */
typedef bool (*pending_carrier_fn)(void *arg, const char *event, size_t elen);
void pending_set_carrier(pending_t *p, pending_carrier_fn fn, void *arg);
size_t pending_take(pending_t *p, const char *event, size_t elen,
                    char (*out)[KEYSPACE_ORDER_ID_MAX + 1], size_t max);

/* The {event}:pending entry of one deduction batch (lua/deduct.lua writes one per batch that
 * sold: field its first order id): it may go only once JetStream acknowledged every order it
 * names. Created by the batcher (one reference, its own) for the batch's orders; each sale that
 * publishes one of them holds a reference and releases it when its publish ended, acknowledged
 * or not (every path: 200, 202, shutdown). An order whose sale held none never counts as
 * acknowledged: the entry then stays for reconciliation, which republishes the whole batch. */
typedef struct pending_batch pending_batch_t;
/* NULL when out of memory (the entry is then left to reconciliation). */
pending_batch_t *pending_batch_new(const char *key, int orders);
void pending_batch_hold(pending_batch_t *pb);
/* Drops a reference; acked: the holder's order was acknowledged. The last one frees pb; it
 * returns true when every order was acknowledged, the entry's field copied into key (to be
 * queued with pending_ack). pb NULL: false. */
bool pending_batch_release(pending_batch_t *pb, bool acked, char key[KEYSPACE_ORDER_ID_MAX + 1]);

/* HDELs sent whose replies are still to come (shutdown waits for them). */
int pending_inflight(const pending_t *p);

/* Flushes, then closes the timer; p is freed once libuv let go of it and the last HDEL reply
 * came. Call before closing the Redis client. NULL: nothing. */
void pending_close(pending_t *p);

#endif
