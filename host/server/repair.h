/* Repair of an event's Redis state after the node serving it changed, before it sells again.
 *
 * Why: Redis replication is asynchronous, so a failover (or a restart, or a replica promoted by
 * hand) can lose deductions that JetStream already persisted. Selling on would sell those units
 * twice and could mint their order ids again. So each event's {E}:meta names its owner, the node
 * that last verified it, and lua/deduct.lua sells only on that node (on a cluster always; on a
 * standalone server once a repair claimed the event). Anywhere else it answers "repairing" (the
 * host: 503 {"error":"repairing"}, nothing deducted) and the host asks for a repair, which runs
 * here, on the reconciler's thread (blocking by design: sync hiredis, blocking cnats):
 *   1. lua/repair.lua 'begin' on the event's node: 'current' (nothing to do) or a lock;
 *   2. replay of the event's orders from the ORDERS stream (subject orders.<E>, an ordered
 *      consumer from the first message up to the last one there was when the replay began),
 *      each parsed by the subscriber's rules (order_msg.h);
 *   3. 'chunk' calls: every persisted order missing from {E}:orders is restored with its
 *      buyer's count, the buyer's order list, sold and seq;
 *   4. 'finish': seq raised past every persisted id (plus REPAIR_SEQ_GAP), owner = this node.
 * Each step is idempotent; hosts repairing at once take turns on the lock. Persisted orders that
 * exceed the stock leave sold > stock: the event answers sold out, and it is logged and counted
 * (snatch_repair_oversold_units_total), never hidden.
 *
 * Redis routing: the event's node is found by following MOVED from the seed (a cluster) or is
 * the seed (standalone). */
#ifndef SNATCH_REPAIR_H
#define SNATCH_REPAIR_H

#include <hiredis/hiredis.h>
#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cluster_slots.h"

/* Orders sent to Redis per repair.lua call: a call holds Redis for well under a millisecond. */
#define REPAIR_CHUNK 500
/* How far past the largest persisted seq a repair moves seq. An order minted by the old node
 * and published after the replay read the stream (held in a host's buffer) must not share its
 * id with a new one; this is far more ids than a node mints in the seconds a failover takes. */
#define REPAIR_SEQ_GAP 100000
/* The lock's lifetime, renewed at each call: a repairer that died holds nobody up for long
 * (one that failed releases it at once). Above REPAIR_REPLAY_WAIT_MS, the longest wait between
 * two renewals. */
#define REPAIR_LOCK_TTL_MS 10000
/* The longest wait for the next message of a replay before the repair gives up (retried). */
#define REPAIR_REPLAY_WAIT_MS 5000

typedef struct auth_config auth_config_t;
typedef struct repair repair_t;

/* Set once before the threads start (main): the source of lua/repair.lua, whether events on a
 * standalone server are claimed (--redis-repair), and --redis's seed list. Returns -1 (nothing
 * is repaired then) when script is NULL or the list does not parse. */
int repair_configure(const char *script, bool claim_standalone, const char *seeds);
bool repair_configured(void);
/* --redis-repair: events on a standalone server get an owner too (PUT /admin/events, repairs). */
bool repair_claims_standalone(void);

/* A repairer for one thread: credentials (may be NULL, must outlive it); host_id names its lock
 * token. NULL when out of memory or not configured. */
repair_t *repair_new(const auth_config_t *auth, const char *host_id);
void repair_free(repair_t *rp);

typedef enum {
    REPAIR_CURRENT, /* this node already verified the event */
    REPAIR_DONE,    /* repaired: the event sells again */
    REPAIR_BUSY,    /* another repairer holds the lock: try again later */
    REPAIR_SKIPPED, /* no such event, or unclaimed on a standalone server without --redis-repair */
    REPAIR_FAILED,  /* Redis or NATS failed, or the node changed meanwhile: try again later */
} repair_result_t;

typedef struct repair_report {
    int64_t replayed;    /* messages of the event read from the stream */
    int64_t restored;    /* orders restored */
    int64_t units;       /* units restored */
    int64_t skipped;     /* messages that are neither orders nor transitions of this event */
    int64_t transitions; /* transitions (Snatch-Transition) of the event's held orders */
    int64_t settled;     /* of which this node still had the order held: applied */
    int64_t sold;        /* after the repair */
    int64_t stock;
    char node[CLUSTER_ID_MAX];
} repair_report_t;

/* Checks the event and repairs it when its node is not its owner. Blocking. */
repair_result_t repair_event(repair_t *rp, jsCtx *js, const char *event, repair_report_t *rep);

/* Checks every event of snatch:events, repairing those that need it. Returns how many were
 * repaired, or -1 when the list could not be read. Blocking. */
int repair_all(repair_t *rp, jsCtx *js);

/* Loop threads: a sale was refused with "repairing"; asks the reconciler's thread to repair the
 * event now rather than at its next pass. Cheap, any thread; a full queue drops the request (the
 * next pass checks every event anyway). */
void repair_request(const char *event, size_t len);
/* The reconciler's side: takes the next requested event into out (SNATCH_NAME_MAX + 1 bytes).
 * Returns false when none is waiting. */
bool repair_next_request(char *out);
/* The reconciler's wake-up, called (from any thread) when a request arrives. */
void repair_set_waker(void (*fn)(void *arg), void *arg);

#endif
