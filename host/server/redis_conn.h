/* One asynchronous Redis connection on one libuv loop (hiredis 0.14 async): concurrent requests
 * are pipelined on it by hiredis. redis.h routes over these (one per node, or the only one on a
 * standalone server); nothing else uses them directly. Adds what
 * hiredis 0.14 lacks: a per-command timeout (replies come back in order, so one timer watches the
 * oldest outstanding command; on expiry the connection is dropped and every pending callback gets
 * an error), reconnection with backoff, and the server-side script (EVALSHA, with EVAL and a
 * SCRIPT LOAD when Redis answers NOSCRIPT, e.g. after a restart).
 *
 * Runs on its loop's thread only. Callbacks run on that thread. */
#ifndef SNATCH_REDIS_CONN_H
#define SNATCH_REDIS_CONN_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct redis_conn redis_conn_t;

/* reply: valid only during the callback; NULL when the command failed: err is then one of the
 * redis_err_* below (compare by pointer). A Redis error reply is a reply of type
 * REDIS_REPLY_ERROR, not NULL. */
typedef void (*redis_reply_fn)(redisReply *reply, const char *err, void *data);

/* Why a command got no reply. */
extern const char redis_err_not_connected[]; /* never sent: nothing happened */
extern const char redis_err_timeout[];       /* no reply in time: the connection is dropped */
/* Sent, and the connection died before the reply: the command may have run. */
extern const char redis_err_lost[];
extern const char redis_err_closing[];   /* the client is closing */
extern const char redis_err_no_script[]; /* redis_conn_eval before the script was loaded */
extern const char redis_err_bad_args[];
extern const char redis_err_unsupported[];
extern const char redis_err_nomem[];
extern const char redis_err_not_ready[];  /* connected, not yet authenticated */
extern const char redis_err_superseded[]; /* set_script: a later call's script replaced it */

/* A Redis error that says "not now" (loading its data, busy with a script, cut from its master,
 * a cluster in flux) rather than "no". */
bool redis_err_transient(const char *err);

/* Element i of an array reply as a NUL-terminated string in out (cap bytes; integers are
 * printed). Returns 0, or -1 (not an array, no such element, other type, too long). */
int redis_reply_str(const redisReply *r, size_t i, char *out, size_t cap);
/* Element i of an array reply as an integer; -1 when it is none. */
int64_t redis_reply_int(const redisReply *r, size_t i);

/* The reply builders every connection's reader uses: the same redisReply trees as hiredis's
 * own, from a per-thread cache of nodes (freeObject returns them). Exposed for tests. */
redisReplyObjectFunctions *redis_conn_reply_fns(void);

/* Starts connecting to host:port (numeric address) on loop. script is the source of the Lua
 * script run by redis_conn_eval (copied). timeout_ms bounds every command. Returns 0 or -errno. */
int redis_conn_start(redis_conn_t **out, uv_loop_t *loop, const char *host, int port,
                     const char *script, uint64_t timeout_ms);

/* Like redis_conn_start, and every connection first sends AUTH [user] password (password NULL:
 * no AUTH; user NULL: the default user). A refused AUTH or SCRIPT LOAD (wrong password, LOADING,
 * BUSY) is retried on the same connection with backoff, counted and logged (rate-limited). */
int redis_conn_start_auth(redis_conn_t **out, uv_loop_t *loop, const char *host, int port,
                          const char *script, uint64_t timeout_ms, const char *user,
                          const char *password);

/* Connected, authenticated and the script loaded: commands have a chance to succeed. */
bool redis_conn_ready(const redis_conn_t *c);

/* Sends a command given as argv. Always calls fn exactly once (possibly before returning, with
 * NULL, when not connected). */
void redis_conn_command(redis_conn_t *c, redis_reply_fn fn, void *data, int argc, const char **argv,
                        const size_t *argvlen);

/* EVALSHA of the client's script with numkeys keys then args (argv holds keys then args).
 * Handles NOSCRIPT transparently. Always calls fn exactly once. */
void redis_conn_eval(redis_conn_t *c, redis_reply_fn fn, void *data, int numkeys, int argc,
                     const char **argv, const size_t *argvlen);

/* Replaces the script (SIGHUP). The new source is sent with SCRIPT LOAD; only when Redis accepts
 * it does redis_conn_eval switch to it. Not connected (or lost before the answer, or LOADING /
 * BUSY), it is parked and sent first when the connection can take it; a later call's script
 * replaces a parked one. on_done(ok, err, arg) reports the outcome on the loop thread, once:
 * accepted, refused, superseded, or closing. */
void redis_conn_set_script(redis_conn_t *c, const char *script,
                           void (*on_done)(int ok, const char *err, void *arg), void *arg);

/* A new script waits for this connection (see redis_conn_set_script). */
bool redis_conn_script_parked(const redis_conn_t *c);

/* Connected and authenticated: commands (not evals) can be sent. */
bool redis_conn_usable(const redis_conn_t *c);

/* fn(c, arg) is called on the loop thread each time c becomes usable, and again when it becomes
 * ready (script loaded), from inside a libuv or reply callback: it may send commands. fn NULL:
 * none. */
void redis_conn_on_ready(redis_conn_t *c, void (*fn)(redis_conn_t *c, void *arg), void *arg);

/* Fails every pending command, closes the connection, frees c when its handles are closed. */
void redis_conn_close(redis_conn_t *c);

#endif
