/* An order message as JetStream carries it (the host's publish, a republish): parsing and
 * validation, shared by snatch-subscriber (what it stores or dead-letters) and the host's Redis
 * repair (what it restores), so that both read the same orders by the same rules. Pure: no I/O;
 * the fast scanner allocates nothing. (Names kept from the subscriber, where this began.) */
#ifndef SNATCH_ORDER_MSG_H
#define SNATCH_ORDER_MSG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* An order as it is stored. Strings point into the parsed JSON document (see
 * store_parse_order) or the caller's memory; host may be NULL; created_at < 0 when absent. */
typedef struct store_order {
    const char *order_id;
    const char *event;
    const char *user;
    const char *host;
    int64_t qty;
    int64_t created_at;
    const char *payload; /* the message as received, stored verbatim */
    size_t payload_len;
    int64_t hold_until; /* > 0: sold held until then (header Snatch-Hold-Until); else paid */
} store_order_t;

/* Parses data as an order: a JSON object with string order_id, event, user (non-empty), integer
 * qty >= 1, optional string host and integer created_at. On success returns 0, *doc holds the
 * document the strings in o point into (caller json_decref's it). On failure returns -1 with a
 * reason, *doc NULL. */
int store_parse_order(const char *data, size_t len, store_order_t *o, json_t **doc, char *reason,
                      size_t reasonlen);

/* The fast path in front of store_parse_order: a strict scanner for the flat shape the host
 * publishes (an object whose values are plain ASCII strings without escapes or integers, no
 * repeated key). Returns 1 when data is such an object and a valid order: o is filled, its
 * strings are NUL-terminated copies in scratch (which must outlive o), o->payload is data.
 * Returns 0 for anything else, valid or not (escapes, UTF-8, nesting, floats, missing fields,
 * scratch too small...): the caller then calls store_parse_order, which decides and gives the
 * dead-letter reason. It never accepts what store_parse_order would reject, and stores the same
 * values for what both accept. Allocates nothing. */
int store_scan_order(const char *data, size_t len, store_order_t *o, char *scratch,
                     size_t scratchlen);

/* The records of one message body (README "The ORDERS stream"). A message with header
 * Snatch-Orders: <n> (a batch) holds n records separated by one '\n' (a trailing '\n' is
 * allowed); without it the whole body is one record, as every message was before batches (a
 * policy's order() may hold a newline, and such an order is never batched). Every consumer reads
 * bodies through this, record by record, then judges each one with store_scan_order /
 * store_parse_order: a bad record does not spoil its neighbours. Allocates nothing. */
typedef struct order_body {
    const char *p, *end;
    bool batch, done;
    int64_t declared; /* Snatch-Orders; 1 without it; -1 when it is not a count >= 1 */
    int64_t seen;     /* records returned so far */
} order_body_t;

/* count_hdr: the value of Snatch-Orders, NULL when absent. */
void order_body_init(order_body_t *b, const char *data, size_t len, const char *count_hdr);
/* The next record (not NUL-terminated, may be empty: a bad record then), false after the last. */
bool order_body_next(order_body_t *b, const char **rec, size_t *len);
/* After the last record: the header announced another count than the body held (a broken
 * message: its good records are still orders, the mismatch is the consumer's to report). */
bool order_body_mismatch(const order_body_t *b);

/* An {E}:orders value (host/common/keyspace.h, lua/deduct.lua): the compact "<qty> <host> <user>"
 * deduct.lua stores when every name is plain ([A-Za-z0-9_.:@-], which every name the host
 * accepts is), or, starting with '{', the order's JSON itself (a record of an earlier version,
 * one restored by lua/repair.lua, a name that needs escaping). The id (field) gives the rest. */
#define ORDER_RECORD_JSON_MAX 512

/* The order's JSON, exactly the bytes deduct.lua stored before records were compact:
 * {"event":E,"host":H,"created_at":<the id's ms>,"order_id":id,"qty":Q,"user":U}. A JSON value is
 * used as it is (*json = val, nothing copied); a compact one is written into buf (cap bytes;
 * ORDER_RECORD_JSON_MAX holds every order of names the host accepts) and *json = buf. Returns the
 * JSON's length, or -1 (val is neither form, id is not "<13 digits>-<10 digits>-<plain event>"
 * (more digits are read too: a seq past 10 digits), or it does not fit). Every reader of {E}:orders
 * goes through this. Allocates nothing. */
int order_record_json(const char *id, size_t idlen, const char *val, size_t vlen, char *buf,
                      size_t cap, const char **json);

#endif
