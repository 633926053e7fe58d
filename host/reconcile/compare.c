/* snatch-reconcile's comparison of one event: Redis ({E}:meta, {E}:orders, {E}:pending) against
 * SQLite (what snatch-subscriber persisted), republishing what is missing. Blocking, on
 * snatch-reconcile's main thread; the host never links it (no SQLite in snatch-host). */
#include "compare.h"

#include "keyspace.h"
#include "log.h"
#include "orders_stream.h"
#include "republish.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Order ids republished since the last forget_singles: their entries are read in one HMGET. */
#define FORGET_BATCH 256

typedef struct event_scan {
    rsync_t *rs;
    jsCtx *js;
    const reconcile_render_t *render;
    store_t *st;
    const char *event;
    char pending_key[KEYSPACE_KEY_MAX];
    reconcile_row_t *row;
    const char *why;
    size_t nforget;
    char forget[FORGET_BATCH][KEYSPACE_ORDER_ID_MAX + 1];
} event_scan_t;

/* The orders on_order republished: the {E}:pending entry of each goes when it names that order
 * alone. An entry of several orders stays (the others may be missing still): the next pass, or
 * the host's reconciler, removes it once SQLite or JetStream has them all. Only a batch's first
 * order names its entry, so the others find nothing: one HMGET for all of them, one HDEL. */
static int forget_singles(event_scan_t *e)
{
    const char *argv[FORGET_BATCH + 2];
    char err[256];
    size_t n = e->nforget, k = 0;
    int rc = 0;
    e->nforget = 0;
    if (n == 0)
        return 0;
    argv[1] = e->pending_key;
    for (size_t i = 0; i < n; i++)
        argv[i + 2] = e->forget[i];
    argv[0] = "HMGET";
    size_t keylen = strlen(e->pending_key);
    redisReply *r =
        rsync_command_argv(e->rs, e->pending_key, keylen, (int)n + 2, argv, NULL, err, sizeof(err));
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != n) {
        rc = -1;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        const redisReply *v = r->element[i];
        keyspace_pending_t p;
        if (v->type == REDIS_REPLY_STRING &&
            keyspace_pending_parse(e->forget[i], strlen(e->forget[i]), v->str, v->len, &p) == 0 &&
            p.n == 1)
            argv[2 + k++] = e->forget[i];
    }
    freeReplyObject(r);
    r = NULL;
    if (k == 0)
        goto out;
    argv[0] = "HDEL";
    r = rsync_command_argv(e->rs, e->pending_key, keylen, (int)k + 2, argv, NULL, err, sizeof(err));
    rc = r != NULL && r->type == REDIS_REPLY_INTEGER ? 0 : -1;
out:
    if (rc != 0)
        log_warn("reconcile: %s: %s", e->pending_key,
                 r == NULL                      ? err
                 : r->type == REDIS_REPLY_ERROR ? r->str
                                                : "bad reply");
    if (r != NULL)
        freeReplyObject(r);
    return rc;
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
    snprintf(e->forget[e->nforget++], sizeof(e->forget[0]), "%s", id);
    if (e->nforget == FORGET_BATCH && forget_singles(e) != 0) {
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
    int scanned = reconcile_hscan(rs, orders_key, on_order, &e, why, sizeof(why));
    /* Also after a failed scan: what was republished before it loses its entry as it did. */
    if (forget_singles(&e) != 0 && scanned == 0) {
        e.why = "Redis HDEL failed";
        goto fail;
    }
    if (scanned != 0)
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
