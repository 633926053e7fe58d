/* The Redis keyspace of snatch, in one place: every key name, the events index and the order
 * id's layout. lua/deduct.lua (which mints order ids and writes these keys) follows it; a change
 * here is a change there, and a change of what is stored in Redis for running sales.
 *
 * Keys of one event share the hash tag {event}, so Redis Cluster keeps them on one slot:
 *   {E}:meta     hash  stock, sold, limit, gen, seq   (PUT /admin/events/E)
 *   {E}:users    hash  user -> units bought
 *   {E}:orders   hash  order id -> order record: "<qty> <host> <user>" (plain names, which
 *                      every name the host accepts is), or the order's JSON (starts with '{':
 *                      written by earlier versions, by lua/repair.lua, or for names that need
 *                      escaping). order_record_json() (order_msg.h) gives the JSON of either.
 *   {E}:uorders  hash  user -> order ids, comma separated
 *   {E}:pending  hash  one entry per deduction batch that sold: its first order id ->
 *                      "<ms> <n>" (its n orders, consecutive seqs); deleted once JetStream
 *                      acknowledged every one of them. An entry of the previous version, one
 *                      per order, "<ms>", is read as n = 1 (keyspace_pending_parse).
 * Order life (lua/order.lua; deduct.lua writes the first two for an order sold with a hold):
 *   {E}:holds    zset  order id by hold deadline (ms): orders held, not yet paid
 *   {E}:state    hash  order id -> "held <until> <keep> <qty> <user>" | "<state> <at> <until>"
 *                      (no entry: paid at once)
 *   {E}:tpending hash  order id -> "<at> <state> <payload>": a transition not yet acknowledged
 *                      by JetStream (what reconciliation republishes)
 *   {E}:idem:<user>|<key>  string, expires: an idempotency key's first decision (deduct.lua)
 *   snatch:events  set of every event name (what reconciliation walks) */
#ifndef SNATCH_KEYSPACE_H
#define SNATCH_KEYSPACE_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

#define KEYSPACE_EVENTS "snatch:events"

/* In the order of deduct.lua's KEYS[1..5] (KEYSPACE__COUNT of them); then the keys of an
 * order's life, which deduct.lua derives from KEYS[1]. */
typedef enum {
    KEYSPACE_META,
    KEYSPACE_USERS,
    KEYSPACE_ORDERS,
    KEYSPACE_UORDERS,
    KEYSPACE_PENDING,
    KEYSPACE__COUNT,
    KEYSPACE_HOLDS = KEYSPACE__COUNT,
    KEYSPACE_STATE,
    KEYSPACE_TPENDING,
    KEYSPACE__ALL
} keyspace_key_t;

/* A transition's JetStream message id: "<order id>:<state>", so that each transition of an
 * order is its own message, de-duplicated exactly. */
#define KEYSPACE_MSG_ID_MAX (KEYSPACE_ORDER_ID_MAX + 10)

/* Longest key of an event, NUL included. */
#define KEYSPACE_KEY_MAX (SNATCH_NAME_MAX + 16)
/* Writes "{event}:<which>" into out (KEYSPACE_KEY_MAX bytes). Returns the key's length. */
int keyspace_key(char *out, const char *event, size_t len, keyspace_key_t which);

/* Order id: "<13-digit ms>-<10-digit seq>-<event>", minted by deduct.lua. The event at its end
 * names the keys to read, so GET /v1/orders/{id} needs no index. */
#define KEYSPACE_ID_MS_DIGITS 13
#define KEYSPACE_ID_SEQ_DIGITS 10
#define KEYSPACE_ID_EVENT_AT (KEYSPACE_ID_MS_DIGITS + 1 + KEYSPACE_ID_SEQ_DIGITS + 1)
#define KEYSPACE_ORDER_ID_MAX (KEYSPACE_ID_EVENT_AT + SNATCH_NAME_MAX)

/* Writes the order id of (ms, seq, event) into out (cap bytes, KEYSPACE_ORDER_ID_MAX + 1 is
 * enough). Returns its length, or -1 when a part is out of range or it does not fit. */
int keyspace_order_id(char *out, size_t cap, int64_t ms, int64_t seq, const char *event,
                      size_t len);
/* The event an order id names (a pointer into id, *elen bytes), or NULL when id is not an
 * order id (layout, digits, or the event name rule). */
const char *keyspace_order_event(const char *id, size_t len, size_t *elen);

/* A {E}:pending entry: the orders of one deduction batch. Their ids differ only in seq: seq ..
 * seq + n - 1 after the field's ms, same event. ms is the value's (when they were sold). */
typedef struct keyspace_pending {
    int64_t ms;
    int64_t n;
    int64_t id_ms, seq;
    const char *event; /* into the field */
    size_t elen;
} keyspace_pending_t;
/* More orders than a batch can hold (deduct_batch.c sends at most 256 buyers) is malformed. */
#define KEYSPACE_PENDING_N_MAX 65536
/* Parses an entry (field, value): value "<ms> <n>", or "<ms>" (n = 1, the previous version's
 * entry of one order). Returns 0, or -1 when malformed: field not an order id, a value of
 * another form, n out of 1..KEYSPACE_PENDING_N_MAX, or seqs past the id's digits. */
int keyspace_pending_parse(const char *field, size_t flen, const char *value, size_t vlen,
                           keyspace_pending_t *out);
/* Writes the i-th order id (0 <= i < e->n) of a parsed entry into out (cap bytes). Returns its
 * length, or -1. */
int keyspace_pending_id(const keyspace_pending_t *e, int64_t i, char *out, size_t cap);

#endif
