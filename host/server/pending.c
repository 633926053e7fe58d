#include "pending.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keyspace.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#define ACK_BATCH_MAX 512
/* How soon ids left for a batch are looked at again. While their event sells, every batch takes
 * what has piled up; a check each millisecond found the gaps between batches instead and sent
 * an HDEL of their own in many of them. */
#define RECHECK_MS 10

struct pending {
    uv_timer_t flush;
    redis_client_t *const *redis; /* the worker's client, read at each flush */
    int inflight;
    bool closed; /* the timer is closed: p goes once no HDEL reply is to come */
    pending_carrier_fn carrier;
    void *carrier_arg;
    size_t n;
    char ids[ACK_BATCH_MAX][KEYSPACE_ORDER_ID_MAX + 1];
};

/* A failing Redis would fail every batch: logged at most once a second per thread. */
static void log_failed(const char *why)
{
    static _Thread_local uint64_t last_us;
    uint64_t now = util_mono_us();
    if (last_us != 0 && now - last_us < 1000000u)
        return;
    last_us = now;
    log_error("sale: deleting acknowledged orders from pending failed (%s): left to "
              "reconciliation",
              why);
}

static void on_deleted(redisReply *reply, const char *err, void *data)
{
    pending_t *p = data;
    p->inflight--;
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        metrics_backend_error(METRICS_REDIS_PENDING_HDEL);
        log_failed(reply != NULL ? reply->str : err);
    }
    if (p->closed && p->inflight == 0)
        free(p);
}

enum { ID_QUEUED, ID_SENT, ID_KEPT };

/* Drops the ids marked ID_SENT, keeping the others in order. */
static void compact(pending_t *p, const unsigned char *st)
{
    size_t k = 0;
    for (size_t i = 0; i < p->n; i++) {
        if (st[i] == ID_SENT)
            continue;
        if (k != i)
            memcpy(p->ids[k], p->ids[i], sizeof(p->ids[i]));
        k++;
    }
    p->n = k;
}

/* One HDEL per event of the batch, except (unless forced) the events whose next deduction batch
 * is about to carry their ids: those stay. */
static void flush(pending_t *p, bool force)
{
    if (p == NULL || p->n == 0)
        return;
    const char *argv[ACK_BATCH_MAX + 2];
    size_t lens[ACK_BATCH_MAX + 2];
    char key[KEYSPACE_KEY_MAX];
    unsigned char st[ACK_BATCH_MAX] = {ID_QUEUED};
    redis_client_t *redis = *p->redis;
    for (size_t i = 0; i < p->n; i++) {
        if (st[i] != ID_QUEUED)
            continue;
        size_t elen;
        const char *ev = keyspace_order_event(p->ids[i], strlen(p->ids[i]), &elen);
        unsigned char mark = !force && p->carrier != NULL && p->carrier(p->carrier_arg, ev, elen)
                                 ? ID_KEPT
                                 : ID_SENT;
        int argc = 0;
        argv[argc] = "HDEL";
        lens[argc++] = 4;
        argv[argc] = key;
        lens[argc++] = (size_t)keyspace_key(key, ev, elen, KEYSPACE_PENDING);
        for (size_t j = i; j < p->n; j++) {
            if (st[j] != ID_QUEUED || strcmp(p->ids[j] + KEYSPACE_ID_EVENT_AT, ev) != 0)
                continue;
            st[j] = mark;
            argv[argc] = p->ids[j];
            lens[argc++] = strlen(p->ids[j]);
        }
        if (mark == ID_SENT && redis != NULL) {
            p->inflight++;
            redis_command(redis, on_deleted, p, argc, argv, lens);
        }
    }
    compact(p, st);
}

void pending_flush(pending_t *p)
{
    flush(p, true);
}

static void on_flush(uv_timer_t *t)
{
    pending_t *p = container_of(t, pending_t, flush);
    flush(p, false);
    /* What stayed for a batch is looked at again: it goes by HDEL if no batch took it. */
    if (p->n > 0)
        uv_timer_start(&p->flush, on_flush, RECHECK_MS, 0);
}

size_t pending_take(pending_t *p, const char *event, size_t elen,
                    char (*out)[KEYSPACE_ORDER_ID_MAX + 1], size_t max)
{
    if (p == NULL || p->n == 0)
        return 0;
    unsigned char st[ACK_BATCH_MAX] = {ID_QUEUED};
    size_t k = 0;
    for (size_t i = 0; i < p->n && k < max; i++) {
        if (strncmp(p->ids[i] + KEYSPACE_ID_EVENT_AT, event, elen) != 0 ||
            p->ids[i][KEYSPACE_ID_EVENT_AT + elen] != '\0')
            continue;
        memcpy(out[k++], p->ids[i], sizeof(p->ids[i]));
        st[i] = ID_SENT;
    }
    compact(p, st);
    return k;
}

void pending_set_carrier(pending_t *p, pending_carrier_fn fn, void *arg)
{
    if (p == NULL)
        return;
    p->carrier = fn;
    p->carrier_arg = arg;
}

pending_t *pending_new(uv_loop_t *loop, redis_client_t *const *redis)
{
    pending_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->redis = redis;
    uv_timer_init(loop, &p->flush);
    return p;
}

void pending_ack(pending_t *p, const char *order_id)
{
    size_t elen, len = p != NULL ? strlen(order_id) : 0;
    if (p == NULL || len >= sizeof(p->ids[0]) || keyspace_order_event(order_id, len, &elen) == NULL)
        return; /* reconciliation will clean the entry up */
    if (p->n == ACK_BATCH_MAX)
        pending_flush(p);
    memcpy(p->ids[p->n++], order_id, len + 1);
    if (!uv_is_active((uv_handle_t *)&p->flush))
        uv_timer_start(&p->flush, on_flush, 1, 0);
}

struct pending_batch {
    int refs;
    int unacked; /* orders of the batch not acknowledged yet */
    char key[KEYSPACE_ORDER_ID_MAX + 1];
};

pending_batch_t *pending_batch_new(const char *key, int orders)
{
    size_t len = strlen(key);
    if (len >= KEYSPACE_ORDER_ID_MAX + 1 || orders < 1)
        return NULL;
    pending_batch_t *pb = malloc(sizeof(*pb));
    if (pb == NULL)
        return NULL;
    pb->refs = 1;
    pb->unacked = orders;
    memcpy(pb->key, key, len + 1);
    return pb;
}

void pending_batch_hold(pending_batch_t *pb)
{
    if (pb != NULL)
        pb->refs++;
}

bool pending_batch_release(pending_batch_t *pb, bool acked, char key[KEYSPACE_ORDER_ID_MAX + 1])
{
    if (pb == NULL)
        return false;
    if (acked)
        pb->unacked--;
    if (--pb->refs > 0)
        return false;
    bool all = pb->unacked == 0;
    if (all)
        memcpy(key, pb->key, sizeof(pb->key));
    free(pb);
    return all;
}

int pending_inflight(const pending_t *p)
{
    return p != NULL ? p->inflight : 0;
}

static void on_closed(uv_handle_t *h)
{
    pending_t *p = container_of((uv_timer_t *)h, pending_t, flush);
    p->closed = true;
    if (p->inflight == 0)
        free(p);
}

void pending_close(pending_t *p)
{
    if (p == NULL)
        return;
    pending_flush(p);
    uv_close((uv_handle_t *)&p->flush, on_closed);
}
