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
    if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK)
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

static const char *nonempty_string(json_t *doc, const char *key)
{
    json_t *v = json_object_get(doc, key);
    const char *str = json_is_string(v) ? json_string_value(v) : NULL;
    /* Embedded NULs would make SQLite's copy differ from what JSON said. */
    if (str == NULL || str[0] == '\0' || strlen(str) != json_string_length(v))
        return NULL;
    return str;
}

int store_parse_order(const char *data, size_t len, store_order_t *o, json_t **doc, char *reason,
                      size_t reasonlen)
{
    json_error_t jerr;
    json_t *d = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr), *v;
    *doc = NULL;
    memset(o, 0, sizeof(*o));
    if (d == NULL) {
        snprintf(reason, reasonlen, "not JSON: %s", jerr.text);
        return -1;
    }
    if (!json_is_object(d)) {
        snprintf(reason, reasonlen, "not a JSON object");
        goto fail;
    }
    if ((o->order_id = nonempty_string(d, "order_id")) == NULL ||
        (o->event = nonempty_string(d, "event")) == NULL ||
        (o->user = nonempty_string(d, "user")) == NULL) {
        snprintf(reason, reasonlen, "order_id, event and user must be non-empty strings");
        goto fail;
    }
    v = json_object_get(d, "qty");
    if (!json_is_integer(v) || json_integer_value(v) < 1) {
        snprintf(reason, reasonlen, "qty must be an integer >= 1");
        goto fail;
    }
    o->qty = json_integer_value(v);
    v = json_object_get(d, "host");
    if (v != NULL && !json_is_null(v) && (o->host = nonempty_string(d, "host")) == NULL) {
        snprintf(reason, reasonlen, "host must be a string");
        goto fail;
    }
    v = json_object_get(d, "created_at");
    o->created_at = -1;
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_integer(v)) {
            snprintf(reason, reasonlen, "created_at must be an integer");
            goto fail;
        }
        o->created_at = json_integer_value(v);
    }
    o->payload = data;
    o->payload_len = len;
    *doc = d;
    return 0;
fail:
    json_decref(d);
    memset(o, 0, sizeof(*o));
    return -1;
}

/* The fast scanner. Nearly every message is the host's own flat object, and a general JSON
 * parser spends most of its time building a document (one allocation per value) that is thrown
 * away at once. This one only reads what store_parse_order would, and gives up (returns 0) at
 * the first thing it is not sure about, so that jansson remains the judge of every odd case. */

enum { F_ORDER_ID, F_EVENT, F_USER, F_HOST, F_QTY, F_CREATED_AT, F_STRINGS = F_QTY };

static const struct {
    const char *name;
    size_t len;
} FIELDS[] = {
    [F_ORDER_ID] = {"order_id", 8}, [F_EVENT] = {"event", 5}, [F_USER] = {"user", 4},
    [F_HOST] = {"host", 4},         [F_QTY] = {"qty", 3},     [F_CREATED_AT] = {"created_at", 10},
};

/* Other keys (a policy may add fields): kept only to refuse a repeated one, as jansson does. */
#define SCAN_MAX_OTHER 8
#define SCAN_MAX_DIGITS 18 /* always fits an int64_t; longer numbers go to jansson */

typedef struct span {
    const char *p;
    size_t n;
} span_t;

typedef struct scan {
    const char *p;
    const char *end;
} scan_t;

static void skip_ws(scan_t *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

/* Reads one character c (after white space). */
static bool eat(scan_t *s, char c)
{
    skip_ws(s);
    if (s->p >= s->end || *s->p != c)
        return false;
    s->p++;
    return true;
}

/* A string of printable ASCII without escapes; anything else is left to jansson (escapes,
 * UTF-8 it validates, control characters it rejects). */
static bool scan_string(scan_t *s, span_t *out)
{
    const char *q;
    if (!eat(s, '"'))
        return false;
    for (q = s->p; q < s->end && *q != '"'; q++) {
        unsigned char c = (unsigned char)*q;
        if (c < 0x20 || c > 0x7e || c == '\\')
            return false;
    }
    if (q >= s->end)
        return false;
    out->p = s->p;
    out->n = (size_t)(q - s->p);
    s->p = q + 1;
    return true;
}

/* An integer as JSON writes it (no leading zero, no fraction, no exponent). */
static bool scan_int(scan_t *s, int64_t *out)
{
    bool neg;
    int64_t v = 0;
    int digits = 0;
    skip_ws(s);
    neg = s->p < s->end && *s->p == '-';
    s->p += neg;
    for (; s->p < s->end && *s->p >= '0' && *s->p <= '9'; s->p++, digits++) {
        if (digits == SCAN_MAX_DIGITS || (digits == 1 && v == 0))
            return false;
        v = v * 10 + (*s->p - '0');
    }
    if (digits == 0 || (s->p < s->end && (*s->p == '.' || *s->p == 'e' || *s->p == 'E')))
        return false;
    *out = neg ? -v : v;
    return true;
}

static int field_of(span_t key)
{
    for (int f = 0; f < (int)(sizeof(FIELDS) / sizeof(FIELDS[0])); f++)
        if (key.n == FIELDS[f].len && memcmp(key.p, FIELDS[f].name, key.n) == 0)
            return f;
    return -1;
}

/* A key that is not an order field: its value may be a string or an integer, once. */
static bool scan_other(scan_t *s, span_t key, span_t *other, int *nother)
{
    span_t str;
    int64_t num;
    for (int i = 0; i < *nother; i++)
        if (other[i].n == key.n && memcmp(other[i].p, key.p, key.n) == 0)
            return false;
    if (*nother == SCAN_MAX_OTHER)
        return false;
    other[(*nother)++] = key;
    skip_ws(s);
    return s->p < s->end && *s->p == '"' ? scan_string(s, &str) : scan_int(s, &num);
}

/* Copies the strings into scratch, NUL-terminated, as SQLite binds them. */
static bool copy_strings(store_order_t *o, const span_t *str, unsigned seen, char *scratch,
                         size_t scratchlen)
{
    const char **dst[F_STRINGS] = {&o->order_id, &o->event, &o->user, &o->host};
    size_t used = 0;
    for (int f = 0; f < F_STRINGS; f++) {
        if (!(seen & (1u << f)))
            continue;
        if (str[f].n + 1 > scratchlen - used)
            return false;
        memcpy(scratch + used, str[f].p, str[f].n);
        scratch[used + str[f].n] = '\0';
        *dst[f] = scratch + used;
        used += str[f].n + 1;
    }
    return true;
}

int store_scan_order(const char *data, size_t len, store_order_t *o, char *scratch,
                     size_t scratchlen)
{
    scan_t s = {data, data + len};
    span_t str[F_STRINGS] = {{0}}, other[SCAN_MAX_OTHER], key;
    int64_t num[2] = {0, -1}; /* qty, created_at */
    unsigned seen = 0;
    int nother = 0;
    const unsigned required = 1u << F_ORDER_ID | 1u << F_EVENT | 1u << F_USER | 1u << F_QTY;

    memset(o, 0, sizeof(*o));
    if (!eat(&s, '{'))
        return 0;
    do {
        int f;
        if (!scan_string(&s, &key) || !eat(&s, ':'))
            return 0;
        f = field_of(key);
        if (f < 0) {
            if (!scan_other(&s, key, other, &nother))
                return 0;
            continue;
        }
        if (seen & (1u << f))
            return 0;
        seen |= 1u << f;
        if (f < F_STRINGS ? !scan_string(&s, &str[f]) || str[f].n == 0
                          : !scan_int(&s, &num[f - F_QTY]))
            return 0;
    } while (eat(&s, ','));
    if (!eat(&s, '}'))
        return 0;
    skip_ws(&s);
    if (s.p != s.end || (seen & required) != required || num[0] < 1)
        return 0;
    if (!copy_strings(o, str, seen, scratch, scratchlen)) {
        memset(o, 0, sizeof(*o));
        return 0;
    }
    o->qty = num[0];
    o->created_at = num[1];
    o->payload = data;
    o->payload_len = len;
    return 1;
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
