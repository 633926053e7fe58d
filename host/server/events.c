#include "events.h"

#include <stdlib.h>
#include <string.h>

#include "keyspace.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "repair.h"
#include "script.h"
#include "stallwatch.h"

typedef struct lookup {
    worker_t *w;
    events_fn cb;
    void *data;
    size_t len;
    char event[SNATCH_NAME_MAX + 1];
} lookup_t;

stock_event_t *events_install(worker_t *w, const char *event, size_t len, int64_t stock,
                              int64_t limit, uint64_t gen, int64_t sold, bool room_held,
                              int64_t *quota)
{
    script_cluster_t cl = {.stock = stock,
                           .per_user_limit = limit,
                           .hosts = w->host->cfg.hosts,
                           .host_id = w->host->cfg.host_id};
    stallwatch_doing(STALL_DOING_ALLOCATE);
    int64_t q = script_allocate(w->script, event, &cl);
    stallwatch_doing(STALL_DOING_LOOP);
    if (quota != NULL)
        *quota = q;
    if (room_held)
        return stock_install_reserved(event, len, stock, limit, q, gen, sold >= stock);
    return stock_install(event, len, stock, limit, q, gen, sold >= stock);
}

void events_read_meta(worker_t *w, const char *event, size_t len, redis_reply_fn fn, void *data)
{
    char key[KEYSPACE_KEY_MAX];
    int n = keyspace_key(key, event, len, KEYSPACE_META);
    const char *argv[] = {"HMGET", key, "stock", "sold", "limit", "gen", "paused"};
    size_t lens[] = {5, (size_t)n, 5, 4, 5, 3, 6};
    redis_command(w->redis, fn, data, 7, argv, lens);
}

static stock_event_t *install_from_meta(worker_t *w, const char *event, size_t len,
                                        const redisReply *r)
{
    /* r: HMGET {E}:meta stock sold limit gen paused */
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 5 ||
        r->element[0]->type != REDIS_REPLY_STRING)
        return NULL;
    return events_apply_meta(w, event, len, redis_reply_int(r, 0), redis_reply_int(r, 1),
                             redis_reply_int(r, 2), redis_reply_int(r, 3),
                             redis_reply_int(r, 4) == 1);
}

stock_event_t *events_apply_meta(worker_t *w, const char *event, size_t len, int64_t stock,
                                 int64_t sold, int64_t limit, int64_t gen, bool paused)
{
    if (stock < 0)
        return NULL;
    if (sold < 0)
        sold = 0;
    if (limit < 1)
        limit = 1;
    int64_t quota;
    stock_event_t *ev = events_install(w, event, len, stock, limit, (uint64_t)(gen < 0 ? 0 : gen),
                                       sold, false, &quota);
    if (ev == NULL)
        return NULL;
    /* Both ways: released holds (sold goes down) or a PATCH give a sold-out sale units back. */
    stock_follow(ev, sold >= stock, paused);
    /* Quotas are sized to survive `tolerate` dead hosts; past that, or with uneven traffic, a
     * host can spend its quota while Redis still has stock. Topping it up (at most what Redis
     * has left, at most one quota, once per refresh) means the sale still sells out: Redis
     * keeps it from overselling, and the sold-out flood is still stopped by the sold_out flag. */
    int64_t remaining = stock - sold;
    int64_t grant = remaining < quota ? remaining : quota;
    if (script_settings(w->script)->refill && remaining > 0 && !paused && stock_refill(ev, grant))
        log_info("stock: %s: local quota spent while Redis has %lld left: refilled %lld", event,
                 (long long)remaining, (long long)grant);
    return ev;
}

static void on_meta(redisReply *r, const char *err, void *data)
{
    lookup_t *l = data;
    (void)err;
    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        l->cb(NULL, -1, l->data);
    } else {
        stock_event_t *ev = install_from_meta(l->w, l->event, l->len, r);
        l->cb(ev, 0, l->data);
    }
    free(l);
}

void events_lookup(worker_t *w, const char *event, size_t len, events_fn cb, void *data)
{
    if (w->redis == NULL) {
        cb(NULL, -1, data);
        return;
    }
    lookup_t *l = malloc(sizeof(*l));
    if (l == NULL) {
        cb(NULL, -1, data);
        return;
    }
    l->w = w;
    l->cb = cb;
    l->data = data;
    l->len = len;
    memcpy(l->event, event, len);
    l->event[len] = '\0';
    events_read_meta(w, l->event, len, on_meta, l);
}

/* A failed refresh is tried again at the next tick of the worker's repeating refresh timer. */
static void on_refreshed(stock_event_t *ev, int err, void *data)
{
    (void)ev;
    (void)data;
    if (err != 0)
        metrics_backend_error(METRICS_REDIS_EVENT_REFRESH);
}

static void refresh_one(stock_event_t *ev, void *arg)
{
    worker_t *w = arg;
    stock_view_t v;
    stock_view(ev, &v);
    events_lookup(w, v.name, v.name_len, on_refreshed, NULL);
}

typedef struct moved {
    unsigned first, last;
} moved_t;

static void request_if_moved(stock_event_t *ev, void *arg)
{
    const moved_t *m = arg;
    stock_view_t v;
    stock_view(ev, &v);
    unsigned slot = cluster_key_slot(v.name, v.name_len);
    if (slot >= m->first && slot <= m->last)
        repair_request(v.name, v.name_len);
}

void events_owner_changed(unsigned first, unsigned last, const char *old_id, const char *new_id,
                          void *arg)
{
    moved_t m = {first, last};
    (void)arg;
    if (old_id[0] == '\0' || new_id[0] == '\0')
        return; /* the first map, or slots nobody serves now: nothing can sell there anyway */
    log_warn("redis: slots %u-%u moved from node %.12s to %.12s: their events are repaired "
             "before they sell again",
             first, last, old_id, new_id);
    stock_foreach(request_if_moved, &m);
}

void events_refresh(worker_t *w)
{
    if (w->redis == NULL || !redis_client_ready(w->redis))
        return;
    stock_foreach(refresh_one, w);
}
