/* Republishing from Redis to JetStream. Blocking, on the caller's thread (the host's
 * reconciliation thread or snatch-reconcile's main thread).
 *
 * Redis is read with HSCAN so that a large {E}:orders hash never blocks Redis for long. Each
 * republish waits for its JetStream ack, and a {E}:pending entry (a deduction batch's orders)
 * goes once all of its orders were acknowledged: a crash in between leaves the entry, and the
 * next pass republishes them again, which is harmless. */
#include "republish.h"

#include "keyspace.h"
#include "log.h"
#include "order_msg.h"
#include "orders_stream.h"
#include "util.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define SCAN_COUNT "1000"
#define PUBLISH_WAIT_MS 5000

int64_t reconcile_wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static _Atomic uint64_t skipped;

uint64_t reconcile_skipped(void)
{
    return atomic_load(&skipped);
}

/* One bad order or event must not stop the others: it is skipped, counted and logged, at most
 * one line per 10 s (with how many were left out), so a poisoned entry cannot flood the log. */
void reconcile_skip(const char *fmt, ...)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static int64_t last_ms;
    static uint64_t quiet;
    atomic_fetch_add(&skipped, 1);
    pthread_mutex_lock(&lock);
    int64_t now = reconcile_wall_ms();
    if (last_ms != 0 && now - last_ms < 10000) {
        quiet++;
        pthread_mutex_unlock(&lock);
        return;
    }
    if (quiet > 0)
        log_warn("reconcile: (%llu more skipped, not logged)", (unsigned long long)quiet);
    quiet = 0;
    last_ms = now;
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    log_warn("reconcile: skipped: %s", what);
    pthread_mutex_unlock(&lock);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int reconcile_list_events(rsync_t *rs, char ***events, size_t *n)
{
    char err[256];
    redisReply *r =
        rsync_command(rs, KEYSPACE_EVENTS, err, sizeof(err), "SMEMBERS %s", KEYSPACE_EVENTS);
    char **v = NULL;
    size_t k = 0;
    *events = NULL;
    *n = 0;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        log_warn("reconcile: %s: %s", KEYSPACE_EVENTS,
                 r == NULL                      ? err
                 : r->type == REDIS_REPLY_ERROR ? r->str
                                                : "bad reply");
        goto fail;
    }
    if (r->elements > 0 && (v = calloc(r->elements, sizeof(*v))) == NULL)
        goto fail;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        /* A name the host would refuse today (written before the name rule was tightened, or by
         * hand) cannot be a NATS subject: skipped, never fatal to the whole pass. */
        if (e->type != REDIS_REPLY_STRING || !util_valid_name(e->str, e->len, SNATCH_NAME_MAX)) {
            reconcile_skip("event name %.*s is not valid",
                           e->type == REDIS_REPLY_STRING ? (int)e->len : 0,
                           e->type == REDIS_REPLY_STRING ? e->str : "");
            continue;
        }
        if ((v[k] = strdup(e->str)) == NULL)
            goto fail;
        k++;
    }
    if (k > 0)
        qsort(v, k, sizeof(*v), cmp_str);
    freeReplyObject(r);
    *events = v;
    *n = k;
    return 0;
fail:
    reconcile_free_events(v, k);
    if (r != NULL)
        freeReplyObject(r);
    return -1;
}

void reconcile_free_events(char **events, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(events[i]);
    free(events);
}

int reconcile_hscan(rsync_t *rs, const char *key, reconcile_scan_fn fn, void *data, char *err,
                    size_t errlen)
{
    char cursor[32] = "0";
    do {
        unsigned long moves = rsync_redirects(rs);
        redisReply *r =
            rsync_command(rs, key, err, errlen, "HSCAN %s %s COUNT " SCAN_COUNT, key, cursor);
        if (r == NULL)
            return -1;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY) {
            snprintf(err, errlen, "HSCAN %s: %s", key,
                     r->type == REDIS_REPLY_ERROR ? r->str : "bad reply");
            freeReplyObject(r);
            return -1;
        }
        if (strcmp(cursor, "0") != 0 && rsync_redirects(rs) != moves) {
            snprintf(err, errlen, "HSCAN %s: its slot moved during the scan", key);
            freeReplyObject(r);
            return -1;
        }
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        redisReply *kv = r->element[1];
        for (size_t i = 0; i + 1 < kv->elements; i += 2) {
            redisReply *f = kv->element[i], *v = kv->element[i + 1];
            int rc2 = fn(f->str, f->len, v->str, v->len, data);
            if (rc2 != 0) {
                freeReplyObject(r);
                return rc2;
            }
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    return 0;
}

int reconcile_ensure_stream(jsCtx *js)
{
    return orders_stream_ensure(js, NULL, NULL) == NATS_OK ? 0 : -1;
}

int64_t reconcile_hold_until(rsync_t *rs, const char *event, const char *id)
{
    char key[KEYSPACE_KEY_MAX], name[16], err[256];
    long long a = 0, b = 0;
    int64_t until = 0;
    keyspace_key(key, event, strlen(event), KEYSPACE_STATE);
    redisReply *r = rsync_command(rs, key, err, sizeof(err), "HGET %s %s", key, id);
    /* "held <until> ..." or "<state> <at> <until>" (lua/order.lua) */
    if (r != NULL && r->type == REDIS_REPLY_STRING &&
        sscanf(r->str, "%15s %lld %lld", name, &a, &b) >= 2)
        until = strcmp(name, "held") == 0 ? a : b;
    if (r != NULL)
        freeReplyObject(r);
    return until;
}

int reconcile_publish(jsCtx *js, const reconcile_render_t *render, const char *event,
                      const char *id, const char *record, size_t len, int64_t hold_until)
{
    char subject[256], payload[ORDERS_PAYLOAD_MAX], json[ORDER_RECORD_JSON_MAX];
    const char *body = record;
    /* Renderer and message see the order's JSON, whichever form Redis holds. */
    int jl = order_record_json(id, strlen(id), record, len, json, sizeof(json), &body);
    if (jl < 0) {
        reconcile_skip("%s: order %s: unreadable record in Redis", event, id);
        return -1;
    }
    record = body;
    len = (size_t)jl;
    if (render != NULL && render->fn != NULL) {
        int n = render->fn(render->ctx, record, len, payload, sizeof(payload));
        if (n < 0)
            return -1;
        body = payload;
        len = (size_t)n;
    }
    natsMsg *m = NULL;
    jsPubAck *pa = NULL;
    jsPubOptions po;
    natsStatus s;
    if (snprintf(subject, sizeof(subject), ORDERS_SUBJECT_PREFIX "%s", event) >=
        (int)sizeof(subject))
        return -1;
    jsPubOptions_Init(&po);
    po.MsgId = id;
    po.MaxWait = PUBLISH_WAIT_MS;
    s = natsMsg_Create(&m, subject, NULL, body, (int)len);
    if (s == NATS_OK && hold_until > 0) {
        char until[24];
        snprintf(until, sizeof(until), "%lld", (long long)hold_until);
        s = natsMsgHeader_Set(m, ORDERS_HDR_HOLD_UNTIL, until);
    }
    if (s == NATS_OK)
        s = js_PublishMsg(&pa, js, m, &po, NULL);
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(m);
    return s == NATS_OK ? 0 : -1;
}

int reconcile_publish_transition(jsCtx *js, const char *event, const char *id, const char *entry,
                                 size_t len)
{
    char subject[256], msgid[KEYSPACE_MSG_ID_MAX + 1], state[16];
    const char *sp1 = memchr(entry, ' ', len);
    const char *sp2 = sp1 != NULL ? memchr(sp1 + 1, ' ', len - (size_t)(sp1 + 1 - entry)) : NULL;
    if (sp2 == NULL || (size_t)(sp2 - sp1 - 1) >= sizeof(state)) {
        reconcile_skip("%s: transition of %s: malformed entry", event, id);
        return -1;
    }
    memcpy(state, sp1 + 1, (size_t)(sp2 - sp1 - 1));
    state[sp2 - sp1 - 1] = '\0';
    const char *payload = sp2 + 1;
    size_t plen = len - (size_t)(payload - entry);
    if (snprintf(subject, sizeof(subject), ORDERS_SUBJECT_PREFIX "%s", event) >=
            (int)sizeof(subject) ||
        snprintf(msgid, sizeof(msgid), "%s:%s", id, state) >= (int)sizeof(msgid))
        return -1;
    natsMsg *m = NULL;
    jsPubAck *pa = NULL;
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = msgid;
    po.MaxWait = PUBLISH_WAIT_MS;
    natsStatus s = natsMsg_Create(&m, subject, NULL, payload, (int)plen);
    if (s == NATS_OK)
        s = natsMsgHeader_Set(m, ORDERS_HDR_TRANSITION, state);
    if (s == NATS_OK)
        s = js_PublishMsg(&pa, js, m, &po, NULL);
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(m);
    return s == NATS_OK ? 0 : -1;
}

typedef struct tscan {
    rsync_t *rs;
    jsCtx *js;
    const char *event;
    char key[KEYSPACE_KEY_MAX];
    int64_t cutoff;
    int done;
} tscan_t;

static int on_transition(const char *id, size_t idlen, const char *entry, size_t len, void *data)
{
    tscan_t *t = data;
    (void)idlen;
    if (strtoll(entry, NULL, 10) > t->cutoff)
        return 0; /* young: its host is probably still waiting for the ack */
    if (reconcile_publish_transition(t->js, t->event, id, entry, len) != 0)
        return 0; /* counted and logged; the next pass tries again */
    if (reconcile_hdel(t->rs, t->key, id) != 0)
        return -1;
    t->done++;
    return 0;
}

int reconcile_transitions(rsync_t *rs, jsCtx *js, const char *event, int64_t cutoff_ms)
{
    tscan_t t = {.rs = rs, .js = js, .event = event, .cutoff = cutoff_ms};
    char err[256];
    keyspace_key(t.key, event, strlen(event), KEYSPACE_TPENDING);
    if (reconcile_hscan(rs, t.key, on_transition, &t, err, sizeof(err)) != 0) {
        log_warn("reconcile: %s: transitions: %s", event, err);
        return -1;
    }
    return t.done;
}

int reconcile_hdel(rsync_t *rs, const char *key, const char *field)
{
    char err[256];
    redisReply *r = rsync_command(rs, key, err, sizeof(err), "HDEL %s %s", key, field);
    int ok = r != NULL && r->type == REDIS_REPLY_INTEGER;
    if (!ok)
        log_warn("reconcile: HDEL %s %s: %s", key, field,
                 r == NULL                      ? err
                 : r->type == REDIS_REPLY_ERROR ? r->str
                                                : "bad reply");
    if (r != NULL)
        freeReplyObject(r);
    return ok ? 0 : -1;
}

typedef struct pending_scan {
    rsync_t *rs;
    jsCtx *js;
    const reconcile_render_t *render;
    const char *event;
    char orders_key[KEYSPACE_KEY_MAX];
    char pending_key[KEYSPACE_KEY_MAX];
    int64_t cutoff;
    int64_t max;
    int64_t done;
    bool publish_failed;
    int64_t stale;
    int64_t malformed;
} pending_scan_t;

/* A malformed {E}:pending entry stays for an operator (which orders it names is unknown, so it
 * is never deleted) and is found again at every pass: it is logged the first time and then once
 * per MALFORMED_RELOG_MS while it stays, not at every pass. The entries logged are remembered as
 * hashes in a fixed table; when MALFORMED_SLOTS entries were logged within the period, the
 * others are only counted (reconcile_pending's *malformed) until a slot is free again. */
#define MALFORMED_SLOTS 64
#define MALFORMED_RELOG_MS (10 * 60 * 1000)

static uint64_t fnv1a(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
    return (h ^ 0xff) * 0x100000001b3ULL; /* ends each part: "ab","c" differs from "a","bc" */
}

static bool malformed_log_due(const char *key, const char *field, size_t flen, const char *value,
                              size_t vlen)
{
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    static struct {
        uint64_t hash;
        int64_t logged_ms; /* 0: free */
    } seen[MALFORMED_SLOTS];
    uint64_t h =
        fnv1a(fnv1a(fnv1a(0xcbf29ce484222325ULL, key, strlen(key)), field, flen), value, vlen);
    int64_t now = reconcile_wall_ms();
    int slot = -1;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MALFORMED_SLOTS; i++) {
        bool fresh = seen[i].logged_ms != 0 && now - seen[i].logged_ms < MALFORMED_RELOG_MS;
        if (fresh && seen[i].hash == h) {
            slot = -1;
            break;
        }
        if (!fresh && slot < 0)
            slot = i;
    }
    if (slot >= 0) {
        seen[slot].hash = h;
        seen[slot].logged_ms = now;
    }
    pthread_mutex_unlock(&lock);
    return slot >= 0;
}

/* One order of an entry, republished from its record: 0 once JetStream has it, 1 when it has no
 * record (nothing reconciliation can do but report it), 2 when the publish failed, -1 when
 * Redis did. */
static int republish_one(pending_scan_t *p, const char *id)
{
    char err[256];
    redisReply *r =
        rsync_command(p->rs, p->orders_key, err, sizeof(err), "HGET %s %s", p->orders_key, id);
    if (r == NULL) {
        log_warn("reconcile: HGET %s %s: %s", p->orders_key, id, err);
        return -1;
    }
    if (r->type != REDIS_REPLY_STRING) {
        log_warn("reconcile: pending %s has no record in %s", id, p->orders_key);
        freeReplyObject(r);
        return 1;
    }
    int ok = reconcile_publish(p->js, p->render, p->event, id, r->str, r->len,
                               reconcile_hold_until(p->rs, p->event, id)) == 0;
    freeReplyObject(r);
    if (ok)
        return 0;
    /* This order (or the whole event) cannot be published now: the next event may be fine.
     * If NATS itself is gone, every event fails the same way and the pass ends there. */
    reconcile_skip("%s: pending order %s: JetStream publish failed", p->event, id);
    p->publish_failed = true;
    return 2;
}

/* An entry names a deduction batch's orders (keyspace_pending_parse): each is republished (those
 * JetStream already has are de-duplicated by their message id), and the entry goes once all
 * are acknowledged. */
static int on_pending(const char *field, size_t flen, const char *value, size_t vlen, void *data)
{
    pending_scan_t *p = data;
    keyspace_pending_t e;
    if (keyspace_pending_parse(field, flen, value, vlen, &e) != 0) {
        p->malformed++;
        if (malformed_log_due(p->pending_key, field, flen, value, vlen))
            log_warn("reconcile: %s: malformed entry %.*s = \"%.*s\" in %s, left (logged again "
                     "in %d min if it stays)",
                     p->event, (int)(flen < 128 ? flen : 128), field, (int)(vlen < 64 ? vlen : 64),
                     value, p->pending_key, MALFORMED_RELOG_MS / 60000);
        return 0;
    }
    if (e.ms > p->cutoff)
        return 0; /* young: the host is probably still waiting for its acks */
    if (p->max > 0 && p->done >= p->max)
        return 1;
    p->stale += e.n;
    bool whole = true;
    for (int64_t i = 0; i < e.n; i++) {
        char id[KEYSPACE_ORDER_ID_MAX + 1];
        keyspace_pending_id(&e, i, id, sizeof(id));
        int rc = republish_one(p, id);
        if (rc < 0 || rc == 2)
            return rc;
        whole &= rc == 0;
        p->done += rc == 0;
    }
    if (whole && reconcile_hdel(p->rs, p->pending_key, field) != 0)
        return -1;
    return 0;
}

int reconcile_pending(rsync_t *rs, natsConnection *nc, const reconcile_render_t *render,
                      int64_t older_than_ms, int64_t max_orders, int64_t *stale, int64_t *malformed)
{
    char **events = NULL;
    size_t n = 0;
    jsCtx *js = NULL;
    int64_t total = 0, seen = 0, bad = 0;
    int result = -1;
    bool unreachable = false;
    char err[256];
    if (stale != NULL)
        *stale = 0;
    if (malformed != NULL)
        *malformed = 0;
    if (reconcile_list_events(rs, &events, &n) != 0)
        return -1;
    if (natsConnection_JetStream(&js, nc, NULL) != NATS_OK || reconcile_ensure_stream(js) != 0)
        goto out;
    for (size_t i = 0; i < n; i++) {
        pending_scan_t p = {.rs = rs,
                            .js = js,
                            .render = render,
                            .event = events[i],
                            .cutoff = reconcile_wall_ms() - older_than_ms,
                            .max = max_orders > 0 ? max_orders - total : 0};
        keyspace_key(p.orders_key, events[i], strlen(events[i]), KEYSPACE_ORDERS);
        keyspace_key(p.pending_key, events[i], strlen(events[i]), KEYSPACE_PENDING);
        /* Each event on its own master: one that is down does not stop the others. */
        snprintf(err, sizeof(err), "scan failed");
        int rc2 = reconcile_hscan(rs, p.pending_key, on_pending, &p, err, sizeof(err));
        total += p.done;
        if (rc2 >= 0) {
            /* Transitions decided in Redis whose ack never came (lua/order.lua). */
            int t = reconcile_transitions(rs, js, events[i], p.cutoff);
            if (t >= 0)
                total += t;
            else
                rc2 = -1; /* the event's node failed: as for a failed scan */
        }
        seen += p.stale;
        bad += p.malformed;
        if (rc2 < 0 && !rsync_is_cluster(rs))
            goto out;
        if (rc2 < 0) {
            reconcile_skip("%s: Redis: %s", events[i], err);
            unreachable = true;
            continue;
        }
        if (rc2 == 2) {
            if (natsConnection_Status(nc) != NATS_CONN_STATUS_CONNECTED)
                goto out;
            continue; /* this event is skipped (counted, logged); the others go on */
        }
        if (rc2 > 0)
            break; /* max_orders reached */
    }
    if (!unreachable)
        result = total > INT32_MAX ? INT32_MAX : (int)total;
out:
    jsCtx_Destroy(js);
    reconcile_free_events(events, n);
    if (stale != NULL)
        *stale = seen;
    if (malformed != NULL)
        *malformed = bad;
    if (result < 0 && total > 0)
        log_warn("reconcile: republished %lld pending orders before failing", (long long)total);
    return result;
}
