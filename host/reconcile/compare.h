/* snatch-reconcile's comparison: Redis (the source of truth for what was sold: {E}:meta,
 * {E}:orders, {E}:pending) against SQLite (what snatch-subscriber persisted), republishing to
 * JetStream what is missing. Blocking: snatch-reconcile's main thread only. */
#ifndef SNATCH_COMPARE_H
#define SNATCH_COMPARE_H

#include <hiredis/hiredis.h>
#include <nats/nats.h>
#include <stddef.h>
#include <stdint.h>

#include "republish.h"
#include "store.h"

typedef struct reconcile_row {
    char event[128];
    int64_t stock;        /* {E}:meta stock, -1 when the event has no meta */
    int64_t sold;         /* {E}:meta sold + sold_before: units of every generation */
    int64_t redis_orders; /* entries in {E}:orders */
    int64_t sqlite_rows;  /* rows of the event in SQLite */
    int64_t sqlite_units; /* sum(qty) of those rows */
    int64_t missing;      /* in Redis, not in SQLite */
    int64_t republished;  /* of the missing, acknowledged by JetStream */
    int64_t extra;        /* in SQLite, not in Redis */
} reconcile_row_t;

/* Compares one event. With nc != NULL, republishes every order missing from SQLite (subject
 * orders.<event>, Nats-Msg-Id = order id, payload = the Redis record rendered by render) and
 * deletes its {E}:pending entry once acknowledged when the entry names that order alone; pending
 * entries whose orders SQLite all holds are deleted too (reconcile_forget_stored). Returns 0
 * (row filled) or -1 with err filled (Redis, SQLite or NATS failure). */
int reconcile_event(rsync_t *rs, natsConnection *nc, const reconcile_render_t *render, store_t *st,
                    const char *event, reconcile_row_t *row, char *err, size_t errlen);

/* Deletes event's {E}:pending entries whose orders SQLite all holds (the host died between the
 * acks and the HDEL, or reconcile_event republished them and the subscriber caught up). 0, or
 * -1 with err filled. */
int reconcile_forget_stored(rsync_t *rs, store_t *st, const char *event, char *err, size_t errlen);

#endif
