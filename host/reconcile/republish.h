/* Republishing from Redis to JetStream: what the host's reconciler thread and snatch-reconcile
 * share. Redis ({E}:orders, {E}:pending, snatch:events) is the source of truth for what was sold;
 * an order still in {E}:pending after its publisher should have had its ack is published again.
 * Republishing is always safe: the message id is the order id (JetStream drops duplicates inside
 * its window) and SQLite ignores an order id it already holds.
 *
 * Blocking (sync hiredis, blocking cnats publish): run it on its own thread or in
 * snatch-reconcile, never on an event loop thread. No SQLite here (compare.h has that side). */
#ifndef SNATCH_REPUBLISH_H
#define SNATCH_REPUBLISH_H

#include <hiredis/hiredis.h>

#include "cluster_sync.h"
#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* SMEMBERS snatch:events (on the index's master) into a malloc'd array of malloc'd strings,
 * sorted. Returns 0 or -1. */
int reconcile_list_events(rsync_t *rs, char ***events, size_t *n);
void reconcile_free_events(char **events, size_t n);

/* Turns an order's Redis record (the facts deduct.lua stored) into the payload to publish: the
 * policy's order(), as the host published it (script_order_from_record), so that a row does not
 * depend on the path that delivered it. Writes at most cap bytes into out and returns the
 * length, or -1 (the order is skipped this pass). fn NULL: the record is published as it is. */
typedef int (*reconcile_render_fn)(void *ctx, const char *record, size_t len, char *out,
                                   size_t cap);
typedef struct reconcile_render {
    reconcile_render_fn fn;
    void *ctx;
} reconcile_render_t;

/* For the host's periodic reconciliation thread: republishes every order of each {E}:pending
 * entry (all events of snatch:events; an entry is a deduction batch's orders, or one order in the
 * previous version's form) older than older_than_ms (wall clock, as written by deduct.lua) - the
 * host crashed or lost an ack - and HDELs the entry once JetStream acknowledged all of them.
 * Malformed entries are left, logged once per 10 minutes each (at most 64 entries per period),
 * and counted in *malformed (may be NULL; also when failing). Stops at max_orders (<= 0: no limit;
 * checked between entries) so one pass stays short. The index is read on its master, each event's
 * entries on theirs. Returns the number republished, or -1 when Redis or NATS failed (entries
 * not yet done stay pending for the next pass; on a cluster, events on reachable masters are
 * still done). *stale (may be NULL) gets
 * the number of orders of the entries found older than older_than_ms, also when failing. */
int reconcile_pending(rsync_t *rs, natsConnection *nc, const reconcile_render_t *render,
                      int64_t older_than_ms, int64_t max_orders, int64_t *stale,
                      int64_t *malformed);

/* Orders and events skipped so far by this process (bad name, publish refused): each is logged
 * (rate-limited) and the rest of the pass goes on. */
uint64_t reconcile_skipped(void);

/* The blocks compare.c builds on. */

/* One skipped order or event: counted, logged at most once per 10 s. */
void reconcile_skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int64_t reconcile_wall_ms(void);

/* Called per field/value by reconcile_hscan; non-zero stops the scan with that value. */
typedef int (*reconcile_scan_fn)(const char *field, size_t flen, const char *value, size_t vlen,
                                 void *data);
/* HSCAN key with fn for each field/value. Returns 0, fn's value, or -1 on a Redis failure (the
 * reason in err; also when the key's slot moved during the scan: a cursor is only good on the
 * node that gave it, the next pass scans again). */
int reconcile_hscan(rsync_t *rs, const char *key, reconcile_scan_fn fn, void *data, char *err,
                    size_t errlen);
/* Creates the ORDERS stream if missing (reconciliation may run before any host did). 0 or -1. */
int reconcile_ensure_stream(jsCtx *js);
/* Blocking publish of one order given by its {E}:orders value (either form: order_record_json
 * gives the JSON that render, which may be NULL, renders; -1 for a value it cannot read);
 * hold_until > 0: it was sold held (header Snatch-Hold-Until), as the host published it.
 * 0 once JetStream acknowledged it (stored or duplicate). */
int reconcile_publish(jsCtx *js, const reconcile_render_t *render, const char *event,
                      const char *id, const char *record, size_t len, int64_t hold_until);
/* The hold deadline of order id from {E}:state (0: paid at once, or unknown). */
int64_t reconcile_hold_until(rsync_t *rs, const char *event, const char *id);
/* Blocking publish of one {E}:tpending entry of order id (value "<at> <state> <payload>", as
 * lua/order.lua wrote it): Nats-Msg-Id "<id>:<state>", header Snatch-Transition. 0 once
 * acknowledged; -1 (publish failed, or a malformed entry: skipped and logged). */
int reconcile_publish_transition(jsCtx *js, const char *event, const char *id, const char *entry,
                                 size_t len);
/* Republishes every {E}:tpending entry of event older than cutoff_ms (wall clock; INT64_MAX:
 * all) and HDELs each once acknowledged. Returns how many, or -1 on a Redis failure. */
int reconcile_transitions(rsync_t *rs, jsCtx *js, const char *event, int64_t cutoff_ms);

/* HDEL key field; 0 or -1. */
int reconcile_hdel(rsync_t *rs, const char *key, const char *field);

#endif
