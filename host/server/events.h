/* Event discovery on one loop thread: what PUT /admin/events did on any host becomes known here.
 * An event's {E}:meta is read from Redis when a request names an event this host does not know,
 * and every known event is re-read by the worker's refresh timer (resets, sold out, quota
 * refill). Installing an event (with the policy's quota) is done here for the admin reset too. */
#ifndef SNATCH_EVENTS_H
#define SNATCH_EVENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "redis.h"
#include "stock.h"
#include "worker.h"

/* Installs (or resets) an event with the quota the policy allocates this host: stock units,
 * per-user limit, Redis generation gen, sold units so far. room_held: the admin path holds room
 * in the table (stock_reserve_room) that this install spends. *quota (may be NULL) gets the
 * quota. Returns the event, or NULL when the table is full. */
stock_event_t *events_install(worker_t *w, const char *event, size_t len, int64_t stock,
                              int64_t limit, uint64_t gen, int64_t sold, bool room_held,
                              int64_t *quota);

/* HMGET {event}:meta stock sold limit gen paused: what an event is, as Redis knows it. */
void events_read_meta(worker_t *w, const char *event, size_t len, redis_reply_fn fn, void *data);

/* Installs an event as {E}:meta describes it (a refresh, or the answer of an admin change on
 * this host): quota from the policy, sold-out and paused flags followed both ways, a spent quota
 * refilled when the policy allows. Returns the event, or NULL (bad meta, table full). */
stock_event_t *events_apply_meta(worker_t *w, const char *event, size_t len, int64_t stock,
                                 int64_t sold, int64_t limit, int64_t gen, bool paused);

/* Makes sure the event is known locally: reads {event}:meta from Redis and installs it, then
 * calls cb(ev, err, data) on the loop thread: ev NULL with err 0 when Redis has no such event,
 * with err -1 when Redis could not be asked. */
typedef void (*events_fn)(stock_event_t *ev, int err, void *data);
void events_lookup(worker_t *w, const char *event, size_t len, events_fn cb, void *data);

/* Timer body: re-reads every known event's meta (generation, stock, sold) and reinstalls. */
void events_refresh(worker_t *w);

/* The Redis router's owner-change callback (redis_owner_fn): slots [first, last] moved to
 * another master (a failover). The known events there cannot sell until repaired (deduct.lua
 * answers "repairing" on a node that is not their owner); asking for their repair now, rather
 * than at the first buyer's 503, shortens that. */
void events_owner_changed(unsigned first, unsigned last, const char *old_id, const char *new_id,
                          void *arg);

#endif
