/* An order's life after the sale (lua/order.lua decides every transition in Redis):
 *   POST /v1/orders/{id}/pay   the payment side (bearer --payment-token-file): held -> paid
 *   DELETE /v1/orders/{id}     the buyer holding it: held -> cancelled
 *   GET /v1/orders/{id}        the order record with its state and hold deadline
 * and the expiry sweeper: held orders past their deadline are released in bounded batches by a
 * timer on one loop thread of every host (whichever host gets there first; the script makes
 * the others find nothing left to do).
 *
 * Every transition decided in Redis is published on stream ORDERS (Nats-Msg-Id "<id>:<state>")
 * before anyone is told about it; its {E}:tpending entry goes once JetStream acknowledged it,
 * and reconciliation republishes what stays. Loop thread only; Redis through redis_command
 * (EVALSHA of order.lua, EVAL when a node answers NOSCRIPT; first key {E}:meta), never
 * blocking. */
#ifndef SNATCH_LIFE_H
#define SNATCH_LIFE_H

#include <stdbool.h>
#include <stddef.h>

#include "http.h"
#include "worker.h"

/* The SHA1 (hex, NUL-terminated) of order.lua's source, by which EVALSHA names it (host_t's
 * life_sha). 0 or -1. */
int life_script_sha(const char *src, char out[41]);

/* Reads order.lua at path into *src (malloc'd, the caller's) and its SHA1 into sha, at start and
 * on SIGHUP (disk I/O: main thread only; the start checks deduct.lua with it too). A script that
 * does not compile is refused here, not at every call in Redis: it is parsed in a scratch LuaJIT
 * state (Redis runs Lua 5.1, which LuaJIT parses). 0, or -1 with err set and *src NULL. */
int life_script_read(const char *path, char **src, char sha[41], char *err, size_t errlen);

/* POST /v1/orders/{id}/pay and DELETE /v1/orders/{id}. Answer req (now or later). */
void life_pay(worker_t *w, http_request_t *req, const char *id, size_t len);
void life_cancel(worker_t *w, http_request_t *req, const char *id, size_t len);

/* GET /v1/orders/{id} once the reader is known: buyer "" for the admin token (any order),
 * else only the buyer's own order (another's answers 404, like a missing one). */
void life_get(worker_t *w, http_request_t *req, const char *id, size_t len, const char *buyer);

/* The sweeper of worker w (call on its loop): every interval_ms, every event of the sale is
 * asked for its expired holds, one EVAL (at most LIFE_SWEEP_BATCH orders) at a time. */
#define LIFE_SWEEP_BATCH 100
typedef struct life_sweeper life_sweeper_t;
life_sweeper_t *life_sweeper_start(worker_t *w, uint64_t interval_ms);
/* Stops the timer; the sweeper is freed once its Redis replies and acks are in. NULL: nothing. */
void life_sweeper_stop(life_sweeper_t *s);

#endif
