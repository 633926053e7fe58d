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

struct pending {
    uv_timer_t flush;
    redis_client_t *const *redis; /* the worker's client, read at each flush */
    int inflight;
    bool closed; /* the timer is closed: p goes once no HDEL reply is to come */
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

/* One HDEL per event of the batch. */
void pending_flush(pending_t *p)
{
    if (p == NULL || p->n == 0)
        return;
    const char *argv[ACK_BATCH_MAX + 2];
    size_t lens[ACK_BATCH_MAX + 2];
    char key[KEYSPACE_KEY_MAX];
    bool done[ACK_BATCH_MAX] = {false};
    redis_client_t *redis = *p->redis;
    for (size_t i = 0; i < p->n; i++) {
        if (done[i])
            continue;
        size_t elen;
        const char *ev = keyspace_order_event(p->ids[i], strlen(p->ids[i]), &elen);
        int argc = 0;
        argv[argc] = "HDEL";
        lens[argc++] = 4;
        argv[argc] = key;
        lens[argc++] = (size_t)keyspace_key(key, ev, elen, KEYSPACE_PENDING);
        for (size_t j = i; j < p->n; j++) {
            if (done[j] || strcmp(p->ids[j] + KEYSPACE_ID_EVENT_AT, ev) != 0)
                continue;
            done[j] = true;
            argv[argc] = p->ids[j];
            lens[argc++] = strlen(p->ids[j]);
        }
        if (redis != NULL) {
            p->inflight++;
            redis_command(redis, on_deleted, p, argc, argv, lens);
        }
    }
    p->n = 0;
}

static void on_flush(uv_timer_t *t)
{
    pending_flush(container_of(t, pending_t, flush));
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
    size_t elen;
    if (p == NULL || keyspace_order_event(order_id, strlen(order_id), &elen) == NULL)
        return; /* reconciliation will clean the entry up */
    if (p->n == ACK_BATCH_MAX)
        pending_flush(p);
    snprintf(p->ids[p->n++], sizeof(p->ids[0]), "%s", order_id);
    if (!uv_is_active((uv_handle_t *)&p->flush))
        uv_timer_start(&p->flush, on_flush, 1, 0);
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
