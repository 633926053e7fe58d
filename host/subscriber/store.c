/* SQLite side of order persistence. Orders arrive in batches; each batch is one transaction
 * (the difference between ~50k and ~600k rows/s), inserted through one prepared statement that
 * ignores an order id already stored, so redelivery and republishing are harmless. Order ids
 * increase with time, so the primary key B-tree is appended to, not split at random.
 * Runs on the thread that opened it (snatch-subscriber's main thread, or snatch-reconcile). */
#include "store.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS orders ("
    " order_id TEXT PRIMARY KEY, event TEXT NOT NULL, user TEXT NOT NULL,"
    " qty INTEGER NOT NULL, host TEXT, created_at INTEGER, payload TEXT NOT NULL) STRICT;"
    "CREATE INDEX IF NOT EXISTS orders_event_user ON orders(event, user);"
    "CREATE TABLE IF NOT EXISTS dead_letters ("
    " id INTEGER PRIMARY KEY, received_at INTEGER, subject TEXT, reason TEXT, data BLOB) STRICT;"
    "CREATE TABLE IF NOT EXISTS order_history ("
    " order_id TEXT NOT NULL, state TEXT NOT NULL, at INTEGER, payload TEXT NOT NULL,"
    " PRIMARY KEY(order_id, state)) STRICT, WITHOUT ROWID;";

/* A database made before the order life gets its columns (an order stored then was paid). */
static const char MIGRATE_STATUS[] =
    "ALTER TABLE orders ADD COLUMN status TEXT NOT NULL DEFAULT 'paid';"
    "ALTER TABLE orders ADD COLUMN hold_until INTEGER;";

struct store {
    sqlite3 *db;
    sqlite3_stmt *insert;
    sqlite3_stmt *insert_held; /* an order sold with a hold, and its "held" history row */
    sqlite3_stmt *held_history;
    sqlite3_stmt *transition;
    sqlite3_stmt *settle; /* a held order's status after a transition */
    sqlite3_stmt *dead;
    sqlite3_stmt *has;
    sqlite3_stmt *totals;
    sqlite3_stmt *begin;
    sqlite3_stmt *commit;
};

static int prepare(store_t *s, sqlite3_stmt **st, const char *sql)
{
    return sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, st, NULL) == SQLITE_OK
               ? 0
               : -1;
}

static int has_status_column(sqlite3 *db)
{
    sqlite3_stmt *st = NULL;
    int found = 0;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM pragma_table_info('orders') WHERE name = 'status'",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        found = 1;
    else if (rc != SQLITE_DONE)
        found = -1;
    sqlite3_finalize(st);
    return found;
}

static int migrate(sqlite3 *db)
{
    int has = has_status_column(db);
    if (has != 0)
        return has < 0 ? -1 : 0;
    return sqlite3_exec(db, MIGRATE_STATUS, NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

int store_open(store_t **out, const char *path, store_sync_t sync, char *err, size_t errlen)
{
    store_t *s = calloc(1, sizeof(*s));
    const char *pragmas = sync == STORE_SYNC_FULL
                              ? "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                              : "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;";
    *out = NULL;
    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    /* NOMUTEX: a store_t belongs to one thread, so SQLite's per-call connection and B-tree
     * mutexes only cost (a lock and an unlock per step, per page fetch). */
    if (sqlite3_open_v2(path, &s->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK)
        goto fail;
    /* The subscriber writes while reconcile and the load tool's oracle read: wait, do not fail. */
    sqlite3_busy_timeout(s->db, 10000);
    if (sqlite3_exec(s->db, pragmas, NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(s->db, SCHEMA, NULL, NULL, NULL) != SQLITE_OK || migrate(s->db) != 0)
        goto fail;
    if (prepare(s, &s->insert,
                "INSERT INTO orders(order_id, event, user, qty, host, created_at, payload)"
                " VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT(order_id) DO NOTHING") != 0 ||
        prepare(s, &s->insert_held,
                "INSERT INTO orders(order_id, event, user, qty, host, created_at, payload, status,"
                " hold_until) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, coalesce((SELECT state FROM"
                " order_history WHERE order_id = ?1 AND state <> 'held'), 'held'), ?8)"
                " ON CONFLICT(order_id) DO NOTHING") != 0 ||
        prepare(s, &s->held_history,
                "INSERT INTO order_history(order_id, state, at, payload) VALUES(?1, 'held', ?2, ?3)"
                " ON CONFLICT DO NOTHING") != 0 ||
        prepare(s, &s->transition,
                "INSERT INTO order_history(order_id, state, at, payload) VALUES(?1, ?2, ?3, ?4)"
                " ON CONFLICT DO NOTHING") != 0 ||
        prepare(s, &s->settle,
                "UPDATE orders SET status = ?2 WHERE order_id = ?1 AND status = 'held'") != 0 ||
        prepare(s, &s->dead,
                "INSERT INTO dead_letters(received_at, subject, reason, data)"
                " VALUES(?1, ?2, ?3, ?4)") != 0 ||
        prepare(s, &s->has, "SELECT 1 FROM orders WHERE order_id = ?1") != 0 ||
        prepare(s, &s->totals,
                "SELECT count(*), coalesce(sum(CASE WHEN status IN ('held', 'paid') THEN qty"
                " ELSE 0 END), 0) FROM orders WHERE event = ?1") != 0 ||
        prepare(s, &s->begin, "BEGIN IMMEDIATE") != 0 || prepare(s, &s->commit, "COMMIT") != 0)
        goto fail;
    *out = s;
    return 0;
fail:
    snprintf(err, errlen, "%s: %s", path, s->db ? sqlite3_errmsg(s->db) : "cannot open");
    store_close(s);
    return -1;
}

void store_close(store_t *s)
{
    if (s == NULL)
        return;
    sqlite3_finalize(s->insert);
    sqlite3_finalize(s->insert_held);
    sqlite3_finalize(s->held_history);
    sqlite3_finalize(s->transition);
    sqlite3_finalize(s->settle);
    sqlite3_finalize(s->dead);
    sqlite3_finalize(s->has);
    sqlite3_finalize(s->totals);
    sqlite3_finalize(s->begin);
    sqlite3_finalize(s->commit);
    sqlite3_close(s->db);
    free(s);
}

const char *store_errmsg(store_t *s)
{
    return sqlite3_errmsg(s->db);
}

static int step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

int store_begin(store_t *s)
{
    return step_done(s->begin);
}

int store_commit(store_t *s)
{
    return step_done(s->commit);
}

void store_rollback(store_t *s)
{
    if (!sqlite3_get_autocommit(s->db))
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
}

/* As order_msg.c reads an order's strings (a transition's order_id and state). */
static const char *nonempty_string(json_t *doc, const char *key)
{
    json_t *v = json_object_get(doc, key);
    const char *str = json_is_string(v) ? json_string_value(v) : NULL;
    /* Embedded NULs would make SQLite's copy differ from what JSON said. */
    if (str == NULL || str[0] == '\0' || strlen(str) != json_string_length(v))
        return NULL;
    return str;
}

/* The "held" history row of an order sold with a hold (its created_at is when the hold began). */
static int insert_held_history(store_t *s, const store_order_t *o)
{
    sqlite3_stmt *st = s->held_history;
    sqlite3_bind_text(st, 1, o->order_id, -1, SQLITE_STATIC);
    if (o->created_at >= 0)
        sqlite3_bind_int64(st, 2, o->created_at);
    else
        sqlite3_bind_null(st, 2);
    sqlite3_bind_text(st, 3, o->payload, (int)o->payload_len, SQLITE_STATIC);
    return step_done(st);
}

int store_insert_order(store_t *s, const store_order_t *o)
{
    bool held = o->hold_until > 0;
    sqlite3_stmt *st = held ? s->insert_held : s->insert;
    int rc;
    sqlite3_bind_text(st, 1, o->order_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, o->event, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, o->user, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, o->qty);
    if (o->host != NULL)
        sqlite3_bind_text(st, 5, o->host, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 5);
    if (o->created_at >= 0)
        sqlite3_bind_int64(st, 6, o->created_at);
    else
        sqlite3_bind_null(st, 6);
    sqlite3_bind_text(st, 7, o->payload, (int)o->payload_len, SQLITE_STATIC);
    if (held)
        sqlite3_bind_int64(st, 8, o->hold_until);
    /* No sqlite3_clear_bindings: every parameter is bound again before the next step. */
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return -1;
    int inserted = sqlite3_changes(s->db) > 0;
    if (held && insert_held_history(s, o) != 0)
        return -1;
    return inserted ? 1 : 0;
}

int store_insert_transition(store_t *s, const char *state, const char *data, size_t len,
                            char *reason, size_t reasonlen)
{
    json_t *d = json_loadb(data, len, JSON_REJECT_DUPLICATES, NULL);
    const char *id = d != NULL ? nonempty_string(d, "order_id") : NULL;
    const char *said = d != NULL ? nonempty_string(d, "state") : NULL;
    json_t *at = d != NULL ? json_object_get(d, "at") : NULL;
    int rc = 2;
    if (strcmp(state, "paid") != 0 && strcmp(state, "expired") != 0 &&
        strcmp(state, "cancelled") != 0) {
        snprintf(reason, reasonlen, "unknown transition '%s'", state);
        goto out;
    }
    if (id == NULL || said == NULL || strcmp(said, state) != 0 || !json_is_integer(at)) {
        snprintf(reason, reasonlen, "a transition needs order_id, state (its header's) and at");
        goto out;
    }
    sqlite3_stmt *st = s->transition;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, state, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, json_integer_value(at));
    sqlite3_bind_text(st, 4, data, (int)len, SQLITE_STATIC);
    rc = -1;
    if (step_done(st) != 0)
        goto out;
    rc = sqlite3_changes(s->db) > 0 ? 1 : 0;
    /* Whatever the order of arrival, one terminal state wins in Redis; a held row takes it. */
    sqlite3_bind_text(s->settle, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s->settle, 2, state, -1, SQLITE_STATIC);
    if (step_done(s->settle) != 0)
        rc = -1;
out:
    json_decref(d);
    return rc;
}

int store_dead_letter(store_t *s, const char *subject, const char *reason, const void *data,
                      size_t len)
{
    sqlite3_stmt *st = s->dead;
    sqlite3_bind_int64(st, 1, (int64_t)time(NULL) * 1000);
    sqlite3_bind_text(st, 2, subject ? subject : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, reason, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 4, data ? data : "", (int)len, SQLITE_STATIC);
    int rc = step_done(st);
    sqlite3_clear_bindings(st);
    return rc;
}

int store_has_order(store_t *s, const char *order_id)
{
    sqlite3_stmt *st = s->has;
    sqlite3_bind_text(st, 1, order_id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}

int store_event_totals(store_t *s, const char *event, int64_t *rows, int64_t *units)
{
    sqlite3_stmt *st = s->totals;
    int ok;
    sqlite3_bind_text(st, 1, event, -1, SQLITE_STATIC);
    ok = sqlite3_step(st) == SQLITE_ROW;
    if (ok) {
        *rows = sqlite3_column_int64(st, 0);
        *units = sqlite3_column_int64(st, 1);
    }
    sqlite3_reset(st);
    return ok ? 0 : -1;
}

int store_count(store_t *s, const char *table, int64_t *n)
{
    sqlite3_stmt *st = NULL;
    const char *sql = strcmp(table, "orders") == 0         ? "SELECT count(*) FROM orders"
                      : strcmp(table, "dead_letters") == 0 ? "SELECT count(*) FROM dead_letters"
                                                           : NULL;
    int ok;
    if (sql == NULL || sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        return -1;
    ok = sqlite3_step(st) == SQLITE_ROW;
    if (ok)
        *n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return ok ? 0 : -1;
}
