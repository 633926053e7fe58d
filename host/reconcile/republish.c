/* Republishing from Redis to JetStream. Blocking, on the caller's thread (the host's
 * reconciliation thread or snatch-reconcile's main thread).
 *
 * Redis is read with HSCAN so that a large {E}:orders hash never blocks Redis for long. Each
 * republish waits for its JetStream ack before the {E}:pending entry goes: a crash in between
 * leaves the entry, and the next pass republishes it again, which is harmless. */
#include "republish.h"

#include "keyspace.h"
#include "log.h"
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

int reconcile_list_events(redisContext *rc, char ***events, size_t *n)
{
    redisReply *r = redisCommand(rc, "SMEMBERS %s", KEYSPACE_EVENTS);
    char **v = NULL;
    size_t k = 0;
    *events = NULL;
    *n = 0;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY)
        goto fail;
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

int reconcile_hscan(redisContext *rc, const char *key, reconcile_scan_fn fn, void *data)
{
    char cursor[32] = "0";
    do {
        redisReply *r = redisCommand(rc, "HSCAN %s %s COUNT " SCAN_COUNT, key, cursor);
        if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY) {
            if (r != NULL)
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

int reconcile_publish(jsCtx *js, const reconcile_render_t *render, const char *event,
                      const char *id, const char *record, size_t len)
{
    char subject[256], payload[ORDERS_PAYLOAD_MAX];
    const char *body = record;
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
    if (s == NATS_OK)
        s = js_PublishMsg(&pa, js, m, &po, NULL);
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(m);
    return s == NATS_OK ? 0 : -1;
}

int reconcile_hdel(redisContext *rc, const char *key, const char *field)
{
    redisReply *r = redisCommand(rc, "HDEL %s %s", key, field);
    int ok = r != NULL && r->type == REDIS_REPLY_INTEGER;
    if (r != NULL)
        freeReplyObject(r);
    return ok ? 0 : -1;
}

typedef struct pending_scan {
    redisContext *rc;
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
} pending_scan_t;

static int on_pending(const char *id, size_t idlen, const char *ms, size_t mslen, void *data)
{
    pending_scan_t *p = data;
    redisReply *r;
    (void)idlen;
    (void)mslen;
    if (strtoll(ms, NULL, 10) > p->cutoff)
        return 0; /* young: the host is probably still waiting for its ack */
    if (p->max > 0 && p->done >= p->max)
        return 1;
    p->stale++;
    r = redisCommand(p->rc, "HGET %s %s", p->orders_key, id);
    if (r == NULL)
        return -1;
    if (r->type != REDIS_REPLY_STRING) {
        /* No record to publish: nothing reconciliation can do but report it. */
        log_warn("reconcile: pending %s has no record in %s", id, p->orders_key);
        freeReplyObject(r);
        return 0;
    }
    int ok = reconcile_publish(p->js, p->render, p->event, id, r->str, r->len) == 0;
    freeReplyObject(r);
    if (!ok) {
        /* This order (or the whole event) cannot be published now: the next event may be fine.
         * If NATS itself is gone, every event fails the same way and the pass ends there. */
        reconcile_skip("%s: pending order %s: JetStream publish failed", p->event, id);
        p->publish_failed = true;
        return 2;
    }
    if (reconcile_hdel(p->rc, p->pending_key, id) != 0)
        return -1;
    p->done++;
    return 0;
}

int reconcile_pending(rsync_t *rs, natsConnection *nc, const reconcile_render_t *render,
                      int64_t older_than_ms, int64_t max_orders, int64_t *stale)
{
    char **events = NULL;
    size_t n = 0;
    jsCtx *js = NULL;
    int64_t total = 0, seen = 0;
    int result = -1;
    bool unreachable = false;
    char err[256];
    if (stale != NULL)
        *stale = 0;
    redisContext *index = rsync_ctx(rs, KEYSPACE_EVENTS, strlen(KEYSPACE_EVENTS), err, sizeof(err));
    if (index == NULL) {
        log_warn("reconcile: %s: %s", KEYSPACE_EVENTS, err);
        return -1;
    }
    if (reconcile_list_events(index, &events, &n) != 0)
        return -1;
    if (natsConnection_JetStream(&js, nc, NULL) != NATS_OK || reconcile_ensure_stream(js) != 0)
        goto out;
    for (size_t i = 0; i < n; i++) {
        pending_scan_t p = {.js = js,
                            .render = render,
                            .event = events[i],
                            .cutoff = reconcile_wall_ms() - older_than_ms,
                            .max = max_orders > 0 ? max_orders - total : 0};
        keyspace_key(p.orders_key, events[i], strlen(events[i]), KEYSPACE_ORDERS);
        keyspace_key(p.pending_key, events[i], strlen(events[i]), KEYSPACE_PENDING);
        /* Each event on its own master: one that is down does not stop the others. */
        p.rc = rsync_ctx(rs, p.pending_key, strlen(p.pending_key), err, sizeof(err));
        if (p.rc == NULL) {
            reconcile_skip("%s: Redis: %s", events[i], err);
            unreachable = true;
            continue;
        }
        int rc2 = reconcile_hscan(p.rc, p.pending_key, on_pending, &p);
        total += p.done;
        seen += p.stale;
        if (rc2 < 0 && !rsync_is_cluster(rs))
            goto out;
        if (rc2 < 0) {
            reconcile_skip("%s: Redis: %s", events[i], p.rc->err ? p.rc->errstr : "scan failed");
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
    if (result < 0 && total > 0)
        log_warn("reconcile: republished %lld pending orders before failing", (long long)total);
    return result;
}
