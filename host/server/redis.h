/* The host's Redis client for one libuv loop: a router over redis_conn.h connections. On a
 * standalone server it is that one connection and adds nothing (calls go straight through). On a
 * Redis Cluster it holds the slot map (CLUSTER SLOTS), one connection per master (made when the
 * map names it), and routes each command to the master of its key's slot; it follows MOVED
 * (map updated, refresh scheduled, resent; at most REDIS_MAX_REDIRECTS times within the command's
 * deadline), ASK (ASKING then the command back to back on the named node, once), TRYAGAIN
 * (resent shortly, within the deadline), and fails CLUSTERDOWN, a redirection loop, an
 * unroutable slot or an unreachable master with redis_err_cluster_down (nothing ran: callers
 * answer 503) while the map is read again from any reachable master, with backoff (from the
 * seeds and the last map's replicas when no master answers: every master gone at once): at its
 * deadline while the cluster is in transition (resent meanwhile, see redis.c), at once outside. A
 * promoted replica's NOSCRIPT is the connection's (script loaded, EVAL retried). Each of these
 * resends is safe: the command did not run. A connection lost after sending stays redis_err_lost
 * (the command may have run).
 *
 * Standalone or cluster is decided once, when the first seed answers: CLUSTER SLOTS answers
 * "ERR This instance has cluster support disabled" on a standalone server. Until then the client
 * is not ready.
 *
 * Runs on its loop's thread only. Callbacks run on that thread. */
#ifndef SNATCH_REDIS_H
#define SNATCH_REDIS_H

#include "cluster_slots.h"
#include "redis_conn.h"

typedef struct redis_client redis_client_t;

/* The cluster cannot run the command now (CLUSTERDOWN, no master for the slot, the master not
 * reachable, too many redirections): never ran. */
extern const char redis_err_cluster_down[];

#define REDIS_MAX_REDIRECTS 5
/* Seeds in a --redis list. */
#define REDIS_SEEDS_MAX 16

/* Starts connecting to host:port (numeric address) on loop. script is the source of the Lua
 * script run by redis_eval (copied). timeout_ms bounds every command. Returns 0 or -errno. */
int redis_client_start(redis_client_t **out, uv_loop_t *loop, const char *host, int port,
                       const char *script, uint64_t timeout_ms);

/* Like redis_client_start, and every connection first sends AUTH [user] password (password NULL:
 * no AUTH; user NULL: the default user). A refused AUTH or SCRIPT LOAD (wrong password, LOADING,
 * BUSY) is retried on the same connection with backoff, counted and logged (rate-limited). */
int redis_client_start_auth(redis_client_t **out, uv_loop_t *loop, const char *host, int port,
                            const char *script, uint64_t timeout_ms, const char *user,
                            const char *password);

/* Like redis_client_start_auth with seeds "HOST:PORT[,HOST:PORT...]" (numeric addresses): on a
 * standalone server the first seed that answers is the server; on a cluster any node will do to
 * read the map. -EINVAL when the list does not parse. */
int redis_client_start_seeds(redis_client_t **out, uv_loop_t *loop, const char *seeds,
                             const char *script, uint64_t timeout_ms, const char *user,
                             const char *password);

/* Standalone: connected, authenticated and the script loaded. Cluster: the map is known and at
 * least one master's connection is ready (a command for a master that is not gets
 * redis_err_cluster_down). */
bool redis_client_ready(const redis_client_t *c);
/* True on a Redis Cluster (false until decided). */
bool redis_client_is_cluster(const redis_client_t *c);
/* Cluster: every master has at least one replica (CLUSTER SLOTS listed one). */
bool redis_client_masters_have_replicas(const redis_client_t *c);

/* Sends a command given as argv, routed by its key: argv[1], or for EVAL/EVALSHA the first key
 * (argv[3], when numkeys > 0). Always calls fn exactly once (possibly before returning). */
void redis_command(redis_client_t *c, redis_reply_fn fn, void *data, int argc, const char **argv,
                   const size_t *argvlen);
/* The same, routed by key (a command with no key, or whose key is not argv[1]). key NULL: any
 * node (standalone: the server). */
void redis_command_at(redis_client_t *c, const char *key, size_t keylen, redis_reply_fn fn,
                      void *data, int argc, const char **argv, const size_t *argvlen);

/* EVALSHA of the client's script with numkeys keys then args (argv holds keys then args), routed
 * by the first key. Handles NOSCRIPT transparently. Always calls fn exactly once. */
void redis_eval(redis_client_t *c, redis_reply_fn fn, void *data, int numkeys, int argc,
                const char **argv, const size_t *argvlen);

/* replicas: how many replicas acknowledged the writes (WAIT's answer), or -1 with err. */
typedef void (*redis_wait_fn)(int64_t replicas, const char *err, void *data);

/* redis_eval, then, when the script answered something other than an error reply and
 * replicas > 0, WAIT replicas wait_ms on the connection that answered, before anything else is
 * sent on it by this call's caller: fn(reply) first (reply valid during fn only), then
 * wait_fn(acknowledged or -1, err, data) exactly once. When fn got NULL or an error reply, or
 * replicas <= 0, wait_fn is not called. wait_ms >= 1 (WAIT 0 would block for ever). */
void redis_eval_wait(redis_client_t *c, redis_reply_fn fn, redis_wait_fn wait_fn, void *data,
                     int replicas, uint64_t wait_ms, int numkeys, int argc, const char **argv,
                     const size_t *argvlen);

/* Replaces the script (SIGHUP) on every connection. A connection that cannot take it now (Redis
 * or a master unreachable, LOADING) keeps it parked and loads it before anything else once it
 * can: on_done(ok, err, arg) is called once, on the loop thread, when every connection answered
 * (connections closed meanwhile have no say; ones made meanwhile are asked too): ok when all
 * accepted it. A later call's script replaces one still parked (err redis_err_superseded). */
void redis_client_set_script(redis_client_t *c, const char *script,
                             void (*on_done)(int ok, const char *err, void *arg), void *arg);

/* A script given to redis_client_set_script waits for a connection that cannot take it yet. */
bool redis_client_script_parked(const redis_client_t *c);

/* Cluster: the node id of the master that serves key's slot now (valid until the next map
 * change, i.e. until control returns to the loop), or NULL (standalone, unknown slot). */
const char *redis_node_id(const redis_client_t *c, const char *key, size_t keylen);

/* Called on the loop thread when a fresh map gives slots [first, last] another master than the
 * map before it (old_id "" when nobody served them before, new_id "" when nobody does now). The
 * first map read calls nothing. fn NULL: none. */
typedef void (*redis_owner_fn)(unsigned first, unsigned last, const char *old_id,
                               const char *new_id, void *arg);
void redis_client_on_owner_change(redis_client_t *c, redis_owner_fn fn, void *arg);

/* Reads the map again soon (cluster; nothing on standalone). Tests, and callers that saw a sign
 * of a change. */
void redis_client_refresh(redis_client_t *c);

/* Fails every pending command, closes the connections, frees c when their handles are closed. */
void redis_client_close(redis_client_t *c);

#endif
