/* Group commit of deductions, per loop thread. Buyers of one event that arrive while that
 * event's EVALSHA is in flight wait, and leave together as the next batch (lua/deduct.lua's
 * batch form) as soon as its reply comes: no timer, so a lone buyer on an idle host goes out at
 * once, and under load each round trip carries whatever queued during the previous one (a
 * database's group commit). Each buyer is still checked and deducted atomically, with its own
 * outcome. A batch that sold leaves one {event}:pending entry (its orders' pending_batch_t);
 * the entries whose orders were all acknowledged, queued in pending.c, ride on the next batch of
 * their event as its HDEL (pending_take); pending.c's loop-turn flush sends those no batch
 * is about to carry.
 *
 * Runs on its loop thread only; callbacks run there. */
#ifndef SNATCH_DEDUCT_BATCH_H
#define SNATCH_DEDUCT_BATCH_H

#include <stdbool.h>
#include <stdint.h>

#include "pending.h"
#include "redis.h"

typedef struct deduct_batcher deduct_batcher_t;

typedef enum {
    DEDUCT_OK,
    DEDUCT_SOLD_OUT,
    DEDUCT_INSUFFICIENT,
    DEDUCT_LIMIT_REACHED,
    DEDUCT_UNKNOWN_EVENT,
    DEDUCT_EXPIRED,
    DEDUCT_REPAIRING,       /* the node serving the event has not verified it yet: no change */
    DEDUCT_PAUSED,          /* the sale is paused (POST /admin/events/E/pause): no change */
    DEDUCT_ERROR,           /* nothing deducted: not sent, timeout, error reply, bad reply */
    DEDUCT_UNKNOWN_OUTCOME, /* the connection died after the batch was sent: it may have run */
    DEDUCT_KEY_REUSED       /* the idempotency key was first used with another qty (held) */
} deduct_verdict_t;

/* Longest Idempotency-Key accepted (bytes). */
#define DEDUCT_IDEM_KEY_MAX 128

/* Why a buyer got DEDUCT_ERROR, besides the redis_err_* of a batch that got no reply. */
extern const char deduct_err_closing[];   /* the batcher is closing: not sent */
extern const char deduct_err_nomem[];     /* not sent */
extern const char deduct_err_script[];    /* deduct.lua answered an error (detail: its text) */
extern const char deduct_err_bad_reply[]; /* a reply deduct.lua does not give (detail: verdict) */

typedef struct deduct_result {
    deduct_verdict_t verdict;
    const char *order_id; /* DEDUCT_OK; valid during the callback */
    int64_t remaining;    /* OK, SOLD_OUT, INSUFFICIENT; -1 when unknown */
    int64_t held;         /* LIMIT_REACHED */
    int64_t gen;          /* -1 when unknown */
    int64_t created_ms;   /* OK */
    const char *err;      /* ERROR, UNKNOWN_OUTCOME: deduct_err_* or redis_err_* (by pointer) */
    const char *detail;   /* deduct_err_script, deduct_err_bad_reply: for logs; else NULL */
    int64_t hold_until;   /* OK: the hold's deadline (ms), 0 when paid at once */
    /* The answer an earlier request with the same idempotency key got: nothing was taken now.
     * OK: host is the host that sold it (valid during the callback). */
    bool replay;
    const char *host;
    /* OK, but fewer replicas than asked (deduct_batcher_set_replicas) acknowledged the batch:
     * a failover may lose the sale. Not to be confirmed: the order stays in {E}:pending, and
     * reconciliation publishes it if Redis keeps it. */
    bool unreplicated;
    /* OK, not a replay: the {E}:pending entry of the batch that sold it, valid during the
     * callback; a sale that publishes its order holds it (pending_batch_hold) and releases it
     * once JetStream answered. NULL when out of memory. */
    pending_batch_t *batch;
} deduct_result_t;

typedef void (*deduct_fn)(const deduct_result_t *r, void *data);

/* Batches over redis (not owned; close the batcher before it). pending (may be NULL) is where
 * acknowledged ids wait; the batcher becomes its carrier until closed. Returns NULL when out of
 * memory. */
deduct_batcher_t *deduct_batcher_new(redis_client_t *redis, pending_t *pending, const char *host_id,
                                     uint64_t timeout_ms);

/* After each batch's reply, WAIT until replicas replicas hold it (at most half the deduction
 * deadline) before answering its buyers; fewer: their sales come back DEDUCT_OK with
 * unreplicated set. replicas < 0: 1 on a cluster whose masters have replicas, else 0 (decided per
 * batch, as the client learns the topology). 0: no WAIT. The default is -1. */
void deduct_batcher_set_replicas(deduct_batcher_t *b, int replicas);

/* Deducts qty units for user. cb is called exactly once, possibly before this returns (error). */
void deduct_submit(deduct_batcher_t *b, const char *event, const char *user, int64_t qty,
                   deduct_fn cb, void *data);
/* The same with an idempotency key (NULL or "": none; at most DEDUCT_IDEM_KEY_MAX bytes). */
void deduct_submit_key(deduct_batcher_t *b, const char *event, const char *user, int64_t qty,
                       const char *key, deduct_fn cb, void *data);

/* The policy's order-life settings, sent with every batch from now on (script.h): hold_ms (0:
 * paid at once), keep (a released hold keeps the buyer's count), window_ms (idempotency keys). */
void deduct_batcher_set_life(deduct_batcher_t *b, int64_t hold_ms, bool keep, int64_t window_ms);

/* Stops carrying pending's ids, fails the buyers still queued (DEDUCT_ERROR, not sent) and frees
 * b once the batches in flight have been answered. NULL: nothing. */
void deduct_batcher_close(deduct_batcher_t *b);

#endif
