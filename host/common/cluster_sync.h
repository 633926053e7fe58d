/* The blocking Redis client of the reconciliation side (the host's reconciler thread and
 * snatch-reconcile; never a loop thread): a standalone server, or a Redis Cluster through its
 * slot map (cluster_slots.h), with one hiredis connection per master, made when first needed.
 *
 * It does not follow redirections itself: the map is read when opened and again by
 * rsync_refresh (the host's reconciler does it at each pass); a command sent on a stale map gets
 * MOVED or CLUSTERDOWN as an error reply, which fails that event's step for this pass. Callers
 * walk the events index on its own master (rsync_ctx(KEYSPACE_EVENTS)), then each event on its
 * master (rsync_ctx of one of its keys): no command ever spans two slots. One thread at a time. */
#ifndef SNATCH_CLUSTER_SYNC_H
#define SNATCH_CLUSTER_SYNC_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>

#include "auth.h"

typedef struct rsync rsync_t;

/* Connects to the first of seeds ("HOST:PORT[,HOST:PORT...]", numeric) that answers, with AUTH
 * when auth has a password (auth may be NULL), and decides standalone or cluster (CLUSTER SLOTS).
 * timeout_ms bounds connecting and each command. NULL with the reason in err. */
rsync_t *rsync_open(const char *seeds, const auth_config_t *auth, int timeout_ms, char *err,
                    size_t errlen);

/* Reads the cluster map again (from a master already connected, else the seeds). 0 (also on a
 * standalone server), or -1 with err. */
int rsync_refresh(rsync_t *rs, char *err, size_t errlen);

/* The connection to the master serving key (standalone: the server), made when needed and made
 * anew when the last one broke. NULL with err (no master for the slot, cannot connect). Valid
 * until the next rsync_* call that may reconnect (rsync_ctx, rsync_refresh, rsync_close). */
redisContext *rsync_ctx(rsync_t *rs, const char *key, size_t keylen, char *err, size_t errlen);

bool rsync_is_cluster(const rsync_t *rs);
/* Masters in the map (1 on a standalone server). */
size_t rsync_masters(const rsync_t *rs);

void rsync_close(rsync_t *rs);

#endif
