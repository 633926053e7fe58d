/* snatch-reconcile's comparison of one event: Redis ({E}:meta, {E}:orders, {E}:pending) against
 * SQLite (what snatch-subscriber persisted), republishing what is missing. Blocking, on
 * snatch-reconcile's main thread; the host never links it (no SQLite in snatch-host). */
#include "compare.h"

#include "keyspace.h"
#include "orders_stream.h"
#include "republish.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct event_scan {
    rsync_t *rs;
    jsCtx *js;
    const reconcile_render_t *render;
    store_t *st;
    const char *event;
    char pending_key[KEYSPACE_KEY_MAX];
    reconcile_row_t *row;
    const char *why;
} event_scan_t;

/* After on_order republished the order id: its {E}:pending entry goes when it names that order
 * alone. An entry of several orders stays (the others may be missing still): the next pass, or
 * the host's reconciler, removes it once SQLite or JetStream has them all. */
static int forget_single(event_scan_t *e, const char *id)
{
    char err[256];
    redisReply *r =
        rsync_command(e->rs, e->pending_key, err, sizeof(err), "HGET %s %s", e->pending_key, id);
    if (r == NULL)
        return -1;
    keyspace_pending_t p;
    bool single = r->type == REDIS_REPLY_STRING &&
                  keyspace_pending_parse(id, strlen(id), r->str, r->len, &p) == 0 && p.n == 1;
    freeReplyObject(r);
    return single ? reconcile_hdel(e->rs, e->pending_key, id) : 0;
}

static int on_order(const char *id, size_t idlen, const char *rec, size_t reclen, void *data)
{
    event_scan_t *e = data;
    int has;
    (void)idlen;
    e->row->redis_orders++;
    if ((has = store_has_order(e->st, id)) < 0) {
        e->why = "SQLite lookup failed";
        return -1;
    }
    if (has)
        return 0;
    e->row->missing++;
    if (e->js == NULL)
        return 0;
    if (reconcile_publish(e->js, e->render, e->event, id, rec, reclen,
                          reconcile_hold_until(e->rs, e->event, id)) != 0) {
        reconcile_skip("%s: order %s: JetStream publish failed", e->event, id);
        return 0; /* still counted as missing */
    }
    e->row->republished++;
    if (forget_single(e, id) != 0) {
        e->why = "Redis HDEL failed";
        return -1;
    }
    return 0;
}

/* A pending entry whose orders SQLite all holds already: the host died between the acks and the
 * HDEL. A malformed entry is left (the host's reconciler logs it). */
static int on_pending_stored(const char *field, size_t flen, const char *value, size_t vlen,
                             void *data)
{
    event_scan_t *e = data;
    keyspace_pending_t p;
    if (keyspace_pending_parse(field, flen, value, vlen, &p) != 0)
        return 0;
    for (int64_t i = 0; i < p.n; i++) {
        char id[KEYSPACE_ORDER_ID_MAX + 1];
        keyspace_pending_id(&p, i, id, sizeof(id));
        int has = store_has_order(e->st, id);
        if (has < 0) {
            e->why = "SQLite lookup failed";
            return -1;
        }
        if (!has)
            return 0;
    }
    if (reconcile_hdel(e->rs, e->pending_key, field) != 0) {
        e->why = "Redis HDEL failed";
        return -1;
    }
    return 0;
}

int reconcile_forget_stored(rsync_t *rs, store_t *st, const char *event, char *err, size_t errlen)
{
    char why[256] = "Redis scan failed";
    event_scan_t e = {.rs = rs, .st = st, .event = event};
    keyspace_key(e.pending_key, event, strlen(event), KEYSPACE_PENDING);
    if (reconcile_hscan(rs, e.pending_key, on_pending_stored, &e, why, sizeof(why)) == 0)
        return 0;
    snprintf(err, errlen, "%s: %s", event, e.why ? e.why : why);
    return -1;
}

static int read_meta(rsync_t *rs, const char *event, reconcile_row_t *row, char *err, size_t errlen)
{
    char key[KEYSPACE_KEY_MAX];
    keyspace_key(key, event, strlen(event), KEYSPACE_META);
    /* sold_before: what the generations before the last reset sold. Their order records stay in
     * {E}:orders and their rows in SQLite, so every unit ever sold is what SQLite is held to. */
    redisReply *r = rsync_command(rs, key, err, errlen, "HMGET %s stock sold sold_before", key);
    int ok = r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 3;
    if (r != NULL && !ok)
        snprintf(err, errlen, "%s", r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
    if (ok) {
        redisReply *stock = r->element[0], *sold = r->element[1], *before = r->element[2];
        row->stock = stock->type == REDIS_REPLY_STRING ? strtoll(stock->str, NULL, 10) : -1;
        row->sold = sold->type == REDIS_REPLY_STRING ? strtoll(sold->str, NULL, 10) : 0;
        if (before->type == REDIS_REPLY_STRING)
            row->sold += strtoll(before->str, NULL, 10);
    }
    if (r != NULL)
        freeReplyObject(r);
    return ok ? 0 : -1;
}

int reconcile_event(rsync_t *rs, natsConnection *nc, const reconcile_render_t *render, store_t *st,
                    const char *event, reconcile_row_t *row, char *err, size_t errlen)
{
    char orders_key[KEYSPACE_KEY_MAX], why[256] = "Redis scan failed";
    event_scan_t e = {.rs = rs, .render = render, .st = st, .event = event, .row = row};
    int rc2 = -1;
    memset(row, 0, sizeof(*row));
    snprintf(row->event, sizeof(row->event), "%s", event);
    keyspace_key(orders_key, event, strlen(event), KEYSPACE_ORDERS);
    keyspace_key(e.pending_key, event, strlen(event), KEYSPACE_PENDING);
    if (nc != NULL && (natsConnection_JetStream(&e.js, nc, NULL) != NATS_OK ||
                       reconcile_ensure_stream(e.js) != 0)) {
        snprintf(err, errlen, "%s: JetStream stream %s unavailable", event, ORDERS_STREAM);
        jsCtx_Destroy(e.js);
        return -1;
    }
    if (read_meta(rs, event, row, why, sizeof(why)) != 0) {
        snprintf(err, errlen, "%s: Redis: %s", event, why);
        goto out;
    }
    if (e.js != NULL &&
        reconcile_hscan(rs, e.pending_key, on_pending_stored, &e, why, sizeof(why)) != 0)
        goto fail;
    /* Every transition not yet acknowledged: before the totals, which count held and paid. */
    if (e.js != NULL && reconcile_transitions(rs, e.js, event, INT64_MAX) < 0)
        goto fail;
    if (reconcile_hscan(rs, orders_key, on_order, &e, why, sizeof(why)) != 0)
        goto fail;
    if (store_event_totals(st, event, &row->sqlite_rows, &row->sqlite_units) != 0) {
        e.why = "SQLite totals failed";
        goto fail;
    }
    /* Rows that matched a Redis order are (orders - missing); the rest exist only in SQLite. */
    row->extra = row->sqlite_rows - (row->redis_orders - row->missing);
    rc2 = 0;
    goto out;
fail:
    snprintf(err, errlen, "%s: %s", event, e.why ? e.why : why);
out:
    jsCtx_Destroy(e.js);
    return rc2;
}
