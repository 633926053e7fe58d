/* Reconciliation: compares Redis (the source of truth for what was sold: {E}:meta, {E}:orders,
 * {E}:pending) with SQLite (what snatch-subscriber persisted) and republishes to JetStream what
 * is missing. Republishing is always safe: the message id is the order id (JetStream drops
 * duplicates inside its window) and SQLite ignores an order id it already holds.
 *
 * Blocking (sync hiredis, blocking cnats publish, SQLite): run it on its own thread or in
 * snatch-reconcile, never on an event loop thread. */
#ifndef SNATCH_RECONCILE_H
#define SNATCH_RECONCILE_H

#include <hiredis/hiredis.h>
#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

#define RECONCILE_EVENTS_KEY "snatch:events"

typedef struct reconcile_row {
    char event[128];
    int64_t stock;        /* {E}:meta stock, -1 when the event has no meta */
    int64_t sold;         /* {E}:meta sold (units) */
    int64_t redis_orders; /* entries in {E}:orders */
    int64_t sqlite_rows;  /* rows of the event in SQLite */
    int64_t sqlite_units; /* sum(qty) of those rows */
    int64_t missing;      /* in Redis, not in SQLite */
    int64_t republished;  /* of the missing, acknowledged by JetStream */
    int64_t extra;        /* in SQLite, not in Redis */
} reconcile_row_t;

/* SMEMBERS snatch:events into a malloc'd array of malloc'd strings, sorted. Returns 0 or -1. */
int reconcile_list_events(redisContext *rc, char ***events, size_t *n);
void reconcile_free_events(char **events, size_t n);

/* Compares one event. With nc != NULL, republishes every order missing from SQLite (subject
 * orders.<event>, Nats-Msg-Id = order id, payload = the Redis record) and deletes its {E}:pending
 * entry once acknowledged; pending entries of orders already in SQLite are deleted too.
 * Returns 0 (row filled) or -1 with err filled (Redis, SQLite or NATS failure). */
int reconcile_event(redisContext *rc, natsConnection *nc, store_t *st, const char *event,
                    reconcile_row_t *row, char *err, size_t errlen);

/* For the host's periodic reconciliation thread: republishes every {E}:pending entry (all events
 * of snatch:events) older than older_than_ms (wall clock, as written by deduct.lua) - the host
 * crashed or lost the ack - and HDELs it once JetStream acknowledged it. Stops at max_orders
 * (<= 0: no limit) so one pass stays short. Returns the number republished, or -1 when Redis or
 * NATS failed (entries not yet done stay pending for the next pass). *stale (may be NULL) gets
 * the number of entries found older than older_than_ms, also when failing. */
int reconcile_pending(redisContext *rc, natsConnection *nc, int64_t older_than_ms,
                      int64_t max_orders, int64_t *stale);

/* Orders and events skipped so far by this process (bad name, publish refused): each is logged
 * (rate-limited) and the rest of the pass goes on. */
uint64_t reconcile_skipped(void);

#endif
