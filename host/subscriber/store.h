/* SQLite persistence of orders (snatch-subscriber's side): schema (orders are parsed and
 * validated by host/common/order_msg.h), batched idempotent inserts, dead letters, and the look-ups
 * reconciliation needs.
 *
 * One store_t per thread (it owns a sqlite3 connection and prepared statements). Blocking: never
 * use it on an event loop thread.
 *
 * Schema (STRICT tables):
 *   orders(order_id TEXT PRIMARY KEY, event TEXT NOT NULL, user TEXT NOT NULL,
 *          qty INTEGER NOT NULL, host TEXT, created_at INTEGER, payload TEXT NOT NULL)
 *   index orders_event_user ON orders(event, user)
 *   dead_letters(id INTEGER PRIMARY KEY, received_at INTEGER, subject TEXT, reason TEXT,
 *                data BLOB)
 * There is no separate index on (event) alone: (event, user) serves every query on event as
 * its leftmost column, and each extra index costs a B-tree insert per order. */
#ifndef SNATCH_STORE_H
#define SNATCH_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "order_msg.h"

typedef struct store store_t;

typedef enum {
    STORE_SYNC_NORMAL, /* WAL + synchronous=NORMAL: a power loss may drop the last commits */
    STORE_SYNC_FULL,   /* WAL + synchronous=FULL: a commit is on disk when it returns */
} store_sync_t;

/* Opens (creating the file and schema when needed) the database at path, in WAL mode.
 * Returns 0, or -1 with err filled. */
int store_open(store_t **out, const char *path, store_sync_t sync, char *err, size_t errlen);
void store_close(store_t *s);

/* One transaction around a batch. Return 0 or -1 (message logged by store_errmsg). */
int store_begin(store_t *s);
int store_commit(store_t *s);
void store_rollback(store_t *s);
const char *store_errmsg(store_t *s);

/* INSERT ... ON CONFLICT(order_id) DO NOTHING. Returns 1 inserted, 0 already stored, -1 error. */
int store_insert_order(store_t *s, const store_order_t *o);

/* Keeps a message that is not an order, with why. Returns 0 or -1. */
int store_dead_letter(store_t *s, const char *subject, const char *reason, const void *data,
                      size_t len);

/* Reconciliation look-ups. */
int store_has_order(store_t *s, const char *order_id); /* 1, 0 or -1 */
int store_event_totals(store_t *s, const char *event, int64_t *rows, int64_t *units);
int store_count(store_t *s, const char *table, int64_t *n); /* "orders" or "dead_letters" */

#endif
