/* The host's own reconciliation: a background thread that, every interval, republishes orders
 * deducted in Redis whose JetStream ack never came ({event}:pending entries older than a grace
 * period: a host died between deduction and ack, or NATS lost the message). Every host may run
 * it; republishing is idempotent (Nats-Msg-Id = order id, SQLite primary key).
 *
 * Blocking by design (sync hiredis, blocking cnats): it has its own thread and its own
 * connections, and never touches a loop. */
#ifndef SNATCH_RECONCILER_H
#define SNATCH_RECONCILER_H

#include <stdint.h>

typedef struct reconciler reconciler_t;

/* Starts the thread. interval_ms between passes; older_than_ms: the grace period before a
 * pending order counts as lost (must exceed the host's ack timeout). policy_path: the host's
 * policy, opened by the thread itself (its own lua_State): a republished order gets the payload
 * of its order(), as the host publishes it. Returns 0 or -1. */
typedef struct auth_config auth_config_t;
/* auth (may be NULL) and policy_path must outlive the reconciler. */
/* redis_seeds: --redis (a standalone server or cluster seeds: cluster_sync.h). */
int reconciler_start(reconciler_t **out, const char *redis_seeds, const char *nats_url,
                     uint64_t interval_ms, int64_t older_than_ms, const auth_config_t *auth,
                     const char *policy_path, const char *host_id, int hosts);

/* SIGHUP: the thread reopens the policy before its next pass (a broken one is refused and the
 * old one kept, as the loop threads do). Any thread. */
void reconciler_post_reload(reconciler_t *r);

/* Stops the thread (waits for a pass in progress) and frees r. r may be NULL. */
void reconciler_stop(reconciler_t *r);

#endif
