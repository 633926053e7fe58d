/* The blocking Redis client of the reconciliation side (the host's reconciler thread and
 * snatch-reconcile; never a loop thread): a standalone server, or a Redis Cluster through its
 * slot map (cluster_slots.h), with one hiredis connection per master, made when first needed.
 *
 * The map is read when opened and again by rsync_refresh (the host's reconciler does it at each
 * pass). Between two reads a slot may move (a failover, a resharding): a command then follows
 * MOVED (the slot's entry is updated, the command resent to the named node), ASK (ASKING then
 * the command, on the importing node, the map unchanged) and TRYAGAIN (resent after 50 ms),
 * each a bounded number of times; CLUSTERDOWN comes back as the error reply it is. Blocking:
 * the TRYAGAIN sleep is allowed on the reconciliation threads, never on a loop thread. Every
 * command names the key whose slot routes it: no command ever spans two slots. One thread at a
 * time. */
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

/* Reads the cluster map again: from a master of the last map, else a seed, else a replica the last
 * map listed (every master gone at once). 0 (also on a standalone server), or -1 with err. */
int rsync_refresh(rsync_t *rs, char *err, size_t errlen);

/* Runs the command (hiredis format) on the master serving key (standalone: the server),
 * following redirections. The reply (the caller frees it; it may be an error reply: CLUSTERDOWN,
 * a redirection still unresolved after 5 hops, WRONGTYPE...), or NULL with err when no reply came
 * (no master for the slot, cannot connect, the connection broke or timed out: it is dropped and
 * made anew by the next command). */
redisReply *rsync_command(rsync_t *rs, const char *key, char *err, size_t errlen, const char *fmt,
                          ...);
/* The same with an argument vector (lens may be NULL), routed by key (keylen bytes). */
redisReply *rsync_command_argv(rsync_t *rs, const char *key, size_t keylen, int argc,
                               const char **argv, const size_t *lens, char *err, size_t errlen);

/* How many MOVED and ASK this client followed: a cursor (HSCAN) is only good on the node that
 * gave it, so a scan that saw this change while it went on must start over or give up. */
unsigned long rsync_redirects(const rsync_t *rs);

bool rsync_is_cluster(const rsync_t *rs);
/* Masters in the map (1 on a standalone server). */
size_t rsync_masters(const rsync_t *rs);

void rsync_close(rsync_t *rs);

#endif
