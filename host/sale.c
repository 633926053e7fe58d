/* The sale path of one snatch request, on its loop thread. The order of the checks is the point:
 * the cheap local ones first (validation, sold-out flag, local quota), so the sold-out flood costs
 * no Redis round trip and no Lua call; then the policy; then the one atomic deduction in Redis;
 * then the order is published and the buyer gets 200 only once JetStream has it.
 *
 * A local unit is taken right before the Redis call and given back whenever Redis does not sell
 * (limit reached, sold out, error, timeout), so refusals never burn local stock. */
#include "sale.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "log.h"
#include "metrics.h"
#include "ratelimit.h"
#include "stock.h"
#include "util.h"

typedef struct sale {
    worker_t *w;
    http_request_t *req;
    stock_event_t *ev;
    int64_t qty;
    char event[SNATCH_NAME_MAX + 1];
    char user[SNATCH_NAME_MAX + 1];
    char order_id[SNATCH_ORDER_ID_MAX + 1];
    int64_t created_ms;
    bool admitted;               /* admit() already ran */
    char client[TRUST_ADDR_MAX]; /* api_client(), "" until needed (the sold-out path never is) */
} sale_t;

/* Look-ups of events this host does not know, per client address: each costs a Redis round
 * trip, and they must not spend the named buyer's bucket (anyone can name any buyer). */
#define UNKNOWN_RATE 50.0
#define UNKNOWN_BURST 100.0

static const char BODY_SOLD_OUT[] = "{\"error\":\"sold_out\"}";
static const char BODY_LIMIT[] = "{\"error\":\"limit_reached\"}";
static const char BODY_INSUFFICIENT[] = "{\"error\":\"insufficient_stock\"}";
static const char BODY_UNAVAILABLE[] = "{\"error\":\"unavailable\"}";
static const char BODY_UNKNOWN[] = "{\"error\":\"unknown_event\"}";
static const char BODY_UNKNOWN_OUTCOME[] =
    "{\"error\":\"unavailable\",\"detail\":\"Redis connection lost mid-request: the purchase may "
    "have gone through; see GET /v1/events/{event}/users/{user}/orders\"}";

/* Errors that would repeat for every request (a broken deduct script) are logged at most once a
 * second per thread, with the count of what was left out. */
static void log_limited(const char *fmt, const char *arg)
{
    static _Thread_local uint64_t last_us;
    static _Thread_local unsigned dropped;
    uint64_t now = util_mono_us();
    if (last_us != 0 && now - last_us < 1000000u) {
        dropped++;
        return;
    }
    if (dropped > 0)
        log_error("sale: (%u similar errors not logged)", dropped);
    dropped = 0;
    last_us = now;
    log_error(fmt, arg);
}

static void reply_static(http_request_t *req, int status, const char *body, size_t len)
{
    metrics_request(ROUTE_SNATCH, status, req->received_ns);
    http_respond(req, status, NULL, body, len);
}
#define REPLY(req, status, lit) reply_static((req), (status), (lit), sizeof(lit) - 1)

static int event_key(char *out, const char *event, const char *suffix)
{
    return util_event_key(out, event, strlen(event), suffix);
}

/* Ends a sale: answers, frees, and lets shutdown know one fewer is in flight. */
static void sale_finish(sale_t *s)
{
    s->w->inflight--;
    free(s);
}

static void sale_fail(sale_t *s, int status, const char *body, size_t len, metrics_outcome_t oc)
{
    stock_release(s->ev, s->qty);
    metrics_outcome(oc);
    reply_static(s->req, status, body, len);
    sale_finish(s);
}

static void reply_order(sale_t *s, int status)
{
    char body[512];
    size_t pos = 0;
    const char *head = status == 200 ? "{\"order_id\":" : "{\"status\":\"pending\",\"order_id\":";
    size_t hl = strlen(head);
    memcpy(body, head, hl);
    pos = hl;
    util_json_str(body, sizeof(body), &pos, s->order_id, strlen(s->order_id));
    memcpy(body + pos, ",\"event\":", 9);
    pos += 9;
    util_json_str(body, sizeof(body), &pos, s->event, strlen(s->event));
    memcpy(body + pos, ",\"user\":", 8);
    pos += 8;
    util_json_str(body, sizeof(body), &pos, s->user, strlen(s->user));
    pos += (size_t)snprintf(body + pos, sizeof(body) - pos, ",\"qty\":%" PRId64 "}", s->qty);
    metrics_outcome(status == 200 ? OUTCOME_SOLD : OUTCOME_PENDING);
    metrics_request(ROUTE_SNATCH, status, s->req->received_ns);
    http_respond(s->req, status, NULL, body, pos);
}

static void on_pending_deleted(redisReply *reply, const char *err, void *data)
{
    /* Best effort: a pending entry left behind only makes reconciliation republish a message
     * that JetStream and SQLite both de-duplicate. Counted so that shutdown can wait for it. */
    worker_t *w = data;
    w->hdel_inflight--;
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        metrics_backend_error(METRICS_REDIS_PENDING_HDEL);
        log_limited("sale: deleting acknowledged orders from pending failed (%s): left to "
                    "reconciliation\n",
                    reply != NULL ? reply->str : err);
    }
}

/* Acknowledged orders leave {event}:pending in batches: one HDEL per event per loop turn
 * instead of one per sale, which halves the Redis commands of the selling path. */
#define ACK_BATCH_MAX 512

struct sale_acks {
    uv_timer_t flush;
    worker_t *owner;
    size_t n;
    char ids[ACK_BATCH_MAX][SNATCH_ORDER_ID_MAX + 1];
};

static void flush_acks(worker_t *w)
{
    sale_acks_t *a = w->acks;
    if (a == NULL || a->n == 0)
        return;
    const char *argv[ACK_BATCH_MAX + 2];
    size_t lens[ACK_BATCH_MAX + 2];
    char key[UTIL_KEY_MAX];
    bool done[ACK_BATCH_MAX] = {false};
    for (size_t i = 0; i < a->n; i++) {
        if (done[i])
            continue;
        /* The id ends with its event ("<ms>-<seq>-<event>"): group the batch by event. */
        const char *ev = a->ids[i] + 25;
        event_key(key, ev, "pending");
        int argc = 0;
        argv[argc] = "HDEL";
        lens[argc++] = 4;
        argv[argc] = key;
        lens[argc++] = strlen(key);
        for (size_t j = i; j < a->n; j++) {
            if (done[j] || strcmp(a->ids[j] + 25, ev) != 0)
                continue;
            done[j] = true;
            argv[argc] = a->ids[j];
            lens[argc++] = strlen(a->ids[j]);
        }
        if (w->redis != NULL) {
            w->hdel_inflight++;
            redis_command(w->redis, on_pending_deleted, w, argc, argv, lens);
        }
    }
    a->n = 0;
}

static void on_flush_acks(uv_timer_t *t)
{
    flush_acks(((sale_acks_t *)container_of(t, sale_acks_t, flush))->owner);
}

static void queue_ack(worker_t *w, const char *order_id)
{
    sale_acks_t *a = w->acks;
    if (a == NULL) {
        a = calloc(1, sizeof(*a));
        if (a == NULL)
            return; /* reconciliation will clean the entry up */
        a->owner = w;
        uv_timer_init(&w->loop, &a->flush);
        w->acks = a;
    }
    if (strlen(order_id) < 26)
        return;
    if (a->n == ACK_BATCH_MAX)
        flush_acks(w);
    snprintf(a->ids[a->n++], sizeof(a->ids[0]), "%s", order_id);
    if (!uv_is_active((uv_handle_t *)&a->flush))
        uv_timer_start(&a->flush, on_flush_acks, 1, 0);
}

static void on_acks_closed(uv_handle_t *h)
{
    free(container_of((uv_timer_t *)h, sale_acks_t, flush));
}

void sale_flush(worker_t *w)
{
    flush_acks(w);
}

void sale_close(worker_t *w)
{
    if (w->acks == NULL)
        return;
    flush_acks(w);
    uv_close((uv_handle_t *)&w->acks->flush, on_acks_closed);
    w->acks = NULL;
}

static void on_order_acked(int status, void *data)
{
    sale_t *s = data;
    if (status == 0) {
        queue_ack(s->w, s->order_id);
        reply_order(s, 200);
    } else {
        /* Deducted and recorded in Redis, not (yet) in JetStream: reconciliation republishes it
         * from {event}:pending. The buyer holds the ticket; 202 says it is not durable yet. */
        reply_order(s, 202);
    }
    sale_finish(s);
}

static void publish_order(sale_t *s)
{
    worker_t *w = s->w;
    char payload[1024];
    script_order_t o = {.order_id = s->order_id,
                        .event = s->event,
                        .user = s->user,
                        .qty = s->qty,
                        .host_id = w->host->cfg.host_id,
                        .created_ms = s->created_ms};
    int len = script_order(w->script, &o, payload, sizeof(payload));
    if (len < 0)
        len = script_order_default(&o, payload, sizeof(payload));
    if (len < 0 || orders_publish(w->orders, s->event, s->order_id, payload, (size_t)len,
                                  on_order_acked, s) != 0) {
        reply_order(s, 202);
        sale_finish(s);
    }
}

static int reply_str(const redisReply *r, size_t i, char *out, size_t cap)
{
    if (r->elements <= i)
        return -1;
    const redisReply *e = r->element[i];
    if (e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS) {
        if (e->len >= cap)
            return -1;
        memcpy(out, e->str, e->len);
        out[e->len] = '\0';
        return 0;
    }
    if (e->type == REDIS_REPLY_INTEGER) {
        snprintf(out, cap, "%lld", e->integer);
        return 0;
    }
    return -1;
}

static int64_t reply_int(const redisReply *r, size_t i)
{
    char buf[32];
    int64_t v = -1;
    if (reply_str(r, i, buf, sizeof(buf)) == 0)
        util_parse_i64(buf, strlen(buf), INT64_MIN + 1, INT64_MAX, &v);
    return v;
}

static void on_deducted(redisReply *r, const char *err, void *data)
{
    sale_t *s = data;
    if (r == NULL && err != NULL && strcmp(err, "connection lost") == 0) {
        /* The script may have run and its reply died with the connection: the sale may exist.
         * If it does, it is pending in Redis and reconciliation persists it. */
        sale_fail(s, 503, BODY_UNKNOWN_OUTCOME, sizeof(BODY_UNKNOWN_OUTCOME) - 1,
                  OUTCOME_UNAVAILABLE);
        return;
    }
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 1) {
        if (r != NULL && r->type == REDIS_REPLY_ERROR)
            log_limited("sale: deduct script error: %s\n", r->str);
        sale_fail(s, 503, BODY_UNAVAILABLE, sizeof(BODY_UNAVAILABLE) - 1, OUTCOME_UNAVAILABLE);
        return;
    }
    char verdict[24];
    if (reply_str(r, 0, verdict, sizeof(verdict)) != 0) {
        sale_fail(s, 503, BODY_UNAVAILABLE, sizeof(BODY_UNAVAILABLE) - 1, OUTCOME_UNAVAILABLE);
        return;
    }
    if (strcmp(verdict, "ok") == 0) {
        if (reply_str(r, 1, s->order_id, sizeof(s->order_id)) != 0) {
            sale_fail(s, 503, BODY_UNAVAILABLE, sizeof(BODY_UNAVAILABLE) - 1, OUTCOME_UNAVAILABLE);
            return;
        }
        atomic_store(&s->ev->remaining_hint, reply_int(r, 2));
        s->created_ms = reply_int(r, 4);
        publish_order(s);
        return;
    }
    if (strcmp(verdict, "sold_out") == 0) {
        stock_mark_sold_out(s->ev);
        sale_fail(s, 409, BODY_SOLD_OUT, sizeof(BODY_SOLD_OUT) - 1, OUTCOME_SOLD_OUT_REDIS);
    } else if (strcmp(verdict, "insufficient") == 0) {
        atomic_store(&s->ev->remaining_hint, reply_int(r, 1));
        sale_fail(s, 409, BODY_INSUFFICIENT, sizeof(BODY_INSUFFICIENT) - 1, OUTCOME_SOLD_OUT_REDIS);
    } else if (strcmp(verdict, "limit_reached") == 0) {
        sale_fail(s, 409, BODY_LIMIT, sizeof(BODY_LIMIT) - 1, OUTCOME_LIMIT_REACHED);
    } else if (strcmp(verdict, "expired") == 0) {
        sale_fail(s, 503, BODY_UNAVAILABLE, sizeof(BODY_UNAVAILABLE) - 1, OUTCOME_UNAVAILABLE);
    } else if (strcmp(verdict, "unknown_event") == 0) {
        sale_fail(s, 404, BODY_UNKNOWN, sizeof(BODY_UNKNOWN) - 1, OUTCOME_BAD_REQUEST);
    } else {
        log_limited("sale: unexpected deduct verdict '%s'\n", verdict);
        sale_fail(s, 503, BODY_UNAVAILABLE, sizeof(BODY_UNAVAILABLE) - 1, OUTCOME_UNAVAILABLE);
    }
}

static void deduct(sale_t *s)
{
    char keys[5][UTIL_KEY_MAX];
    static const char *suffix[5] = {"meta", "users", "orders", "uorders", "pending"};
    char qty[24], deadline[24];
    const char *argv[10];
    size_t lens[10];
    for (int i = 0; i < 5; i++) {
        int n = event_key(keys[i], s->event, suffix[i]);
        argv[i] = keys[i];
        lens[i] = (size_t)n;
    }
    int qn = snprintf(qty, sizeof(qty), "%" PRId64, s->qty);
    const char *host_id = s->w->host->cfg.host_id;
    argv[5] = s->event;
    lens[5] = strlen(s->event);
    argv[6] = s->user;
    lens[6] = strlen(s->user);
    argv[7] = qty;
    lens[7] = (size_t)qn;
    argv[8] = host_id;
    lens[8] = strlen(host_id);
    /* After this instant the host has answered 503 "nothing deducted": the script must not sell. */
    int64_t until = util_now_ms() + (int64_t)s->w->host->cfg.redis_timeout_ms;
    argv[9] = deadline;
    lens[9] = (size_t)snprintf(deadline, sizeof(deadline), "%" PRId64, until);
    redis_eval(s->w->redis, on_deducted, s, 5, 10, argv, lens);
}

static const char *sale_client(sale_t *s)
{
    if (s->client[0] == '\0')
        api_client(s->req, s->client);
    return s->client;
}

/* The policy's admit(): 0 admitted, or -1 when it refused (answered and finished then). */
static int admit(sale_t *s)
{
    script_admit_req_t ar = {.event = s->event,
                             .user = s->user,
                             .qty = s->qty,
                             .client = sale_client(s),
                             .now_ms = util_now_ms()};
    script_verdict_t v;
    script_admit(s->w->script, &ar, &v);
    s->admitted = true;
    if (v.status == 0)
        return 0;
    metrics_outcome(OUTCOME_REJECTED);
    api_error(s->req, ROUTE_SNATCH, v.status, v.reason, v.detail[0] != '\0' ? v.detail : NULL);
    sale_finish(s);
    return -1;
}

/* The event is known: local checks, policy, then Redis. */
static void sale_continue(sale_t *s)
{
    worker_t *w = s->w;
    stock_event_t *ev = s->ev;
    if (atomic_load_explicit(&ev->sold_out, memory_order_relaxed) ||
        atomic_load_explicit(&ev->local_left, memory_order_relaxed) < s->qty) {
        bool any_left = !atomic_load(&ev->sold_out) && atomic_load(&ev->local_left) > 0;
        metrics_outcome(OUTCOME_SOLD_OUT_LOCAL);
        if (any_left)
            REPLY(s->req, 409, BODY_INSUFFICIENT);
        else
            REPLY(s->req, 409, BODY_SOLD_OUT);
        sale_finish(s);
        return;
    }
    if (!s->admitted && admit(s) != 0)
        return;
    /* Fail closed: without Redis nothing can be deducted, without NATS nothing could be made
     * durable, so nobody is sold anything. */
    if (w->redis == NULL || !redis_client_ready(w->redis) || w->orders == NULL ||
        !orders_publisher_ready(w->host->orders)) {
        metrics_outcome(OUTCOME_UNAVAILABLE);
        REPLY(s->req, 503, BODY_UNAVAILABLE);
        sale_finish(s);
        return;
    }
    if (stock_reserve(ev, s->qty) != 0) {
        metrics_outcome(OUTCOME_SOLD_OUT_LOCAL);
        REPLY(s->req, 409, BODY_SOLD_OUT);
        sale_finish(s);
        return;
    }
    deduct(s);
}

static void on_event_found(stock_event_t *ev, int err, void *data)
{
    sale_t *s = data;
    if (ev == NULL) {
        if (err != 0) {
            metrics_outcome(OUTCOME_UNAVAILABLE);
            REPLY(s->req, 503, BODY_UNAVAILABLE);
        } else {
            metrics_outcome(OUTCOME_BAD_REQUEST);
            REPLY(s->req, 404, BODY_UNKNOWN);
        }
        sale_finish(s);
        return;
    }
    s->ev = ev;
    sale_continue(s);
}

void sale_snatch(worker_t *w, http_request_t *req, const char *event, size_t event_len)
{
    const script_settings_t *set = script_settings(w->script);
    if (!util_valid_name(event, event_len, set->event_max_len)) {
        metrics_outcome(OUTCOME_BAD_REQUEST);
        api_error(req, ROUTE_SNATCH, 400, "bad_request", "invalid event name");
        return;
    }
    const char *user = NULL;
    size_t user_len = 0;
    api_buyer_t bv = api_buyer(req, &user, &user_len);
    if (bv != API_BUYER_OK) {
        metrics_outcome(OUTCOME_BAD_REQUEST);
        api_buyer_error(req, ROUTE_SNATCH, bv);
        return;
    }
    if (!util_valid_name(user, user_len, set->user_max_len)) {
        metrics_outcome(OUTCOME_BAD_REQUEST);
        api_error(req, ROUTE_SNATCH, 400, "bad_request", "invalid buyer id");
        return;
    }
    int64_t qty = 1;
    size_t qlen;
    const char *q = util_query_get(req->query, req->query_len, "qty", &qlen);
    if (q != NULL && util_parse_i64(q, qlen, 1, set->max_qty, &qty) != 0) {
        metrics_outcome(OUTCOME_BAD_REQUEST);
        api_error(req, ROUTE_SNATCH, 400, "bad_request",
                  "qty must be an integer from 1 to max_qty");
        return;
    }
    sale_t *s = malloc(sizeof(*s));
    if (s == NULL) {
        REPLY(req, 503, BODY_UNAVAILABLE);
        return;
    }
    s->w = w;
    s->req = req;
    s->qty = qty;
    s->ev = NULL;
    s->order_id[0] = '\0';
    s->created_ms = 0;
    memcpy(s->event, event, event_len);
    s->event[event_len] = '\0';
    memcpy(s->user, user, user_len);
    s->user[user_len] = '\0';
    s->admitted = false;
    s->client[0] = '\0';
    w->inflight++;
    stock_event_t *ev = stock_find(event, event_len);
    if (ev != NULL) {
        on_event_found(ev, 0, s);
        return;
    }
    /* An event this host does not know costs a Redis look-up: throttled per client address
     * before it, by a bucket of its own, so made-up names never spend a buyer's bucket. The
     * policy's admit() runs once the event is known to exist (sale_continue). A trusted proxy
     * speaking for everyone without X-Forwarded-For is exempt, as from every per-address limit:
     * the opening wave of a sale another host announced arrives here as "unknown" too. */
    char key[32 + TRUST_ADDR_MAX];
    const char *client = sale_client(s);
    int kn = snprintf(key, sizeof(key), "snatch.unknown:%s", client);
    if (!api_client_is_proxy(req, client) &&
        !ratelimit_take(key, (size_t)kn, UNKNOWN_RATE, UNKNOWN_BURST, 1, util_mono_us())) {
        metrics_outcome(OUTCOME_REJECTED);
        api_error(req, ROUTE_SNATCH, 429, "rate_limited",
                  "too many requests for events this host does not know, from this address");
        sale_finish(s);
        return;
    }
    sale_lookup_event(w, s->event, event_len, on_event_found, s);
}

/* ---- Event discovery: what PUT /admin/events did on any host becomes known here. ---- */

typedef struct lookup {
    worker_t *w;
    sale_event_fn cb;
    void *data;
    size_t len;
    char event[SNATCH_NAME_MAX + 1];
} lookup_t;

static stock_event_t *install_from_meta(worker_t *w, const char *event, size_t len,
                                        const redisReply *r)
{
    /* r: HMGET {E}:meta stock sold limit gen */
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 4 ||
        r->element[0]->type != REDIS_REPLY_STRING)
        return NULL;
    int64_t stock = reply_int(r, 0), sold = reply_int(r, 1), limit = reply_int(r, 2);
    int64_t gen = reply_int(r, 3);
    if (stock < 0)
        return NULL;
    if (sold < 0)
        sold = 0;
    if (limit < 1)
        limit = 1;
    script_cluster_t cl = {.stock = stock,
                           .per_user_limit = limit,
                           .hosts = w->host->cfg.hosts,
                           .host_id = w->host->cfg.host_id};
    int64_t quota = script_allocate(w->script, event, &cl);
    stock_event_t *ev = stock_install(event, len, stock, limit, quota,
                                      (uint64_t)(gen < 0 ? 0 : gen), sold >= stock);
    if (ev == NULL)
        return NULL;
    atomic_store(&ev->remaining_hint, stock - sold);
    /* Quotas are sized to survive `tolerate` dead hosts; past that, or with uneven traffic, a
     * host can spend its quota while Redis still has stock. Topping it up (at most what Redis
     * has left, at most one quota, once per refresh) means the sale still sells out: Redis
     * keeps it from overselling, and the sold-out flood is still stopped by the sold_out flag. */
    int64_t remaining = stock - sold;
    int64_t grant = remaining < quota ? remaining : quota;
    if (script_settings(w->script)->refill && remaining > 0 && stock_refill(ev, grant))
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

static void read_meta(worker_t *w, const char *event, redis_reply_fn fn, void *data)
{
    char key[UTIL_KEY_MAX];
    int n = event_key(key, event, "meta");
    const char *argv[] = {"HMGET", key, "stock", "sold", "limit", "gen"};
    size_t lens[] = {5, (size_t)n, 5, 4, 5, 3};
    redis_command(w->redis, fn, data, 6, argv, lens);
}

void sale_lookup_event(worker_t *w, const char *event, size_t len, sale_event_fn cb, void *data)
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
    read_meta(w, l->event, on_meta, l);
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
    sale_lookup_event(w, ev->name, ev->name_len, on_refreshed, NULL);
}

void sale_refresh_events(worker_t *w)
{
    if (w->redis == NULL || !redis_client_ready(w->redis))
        return;
    stock_foreach(refresh_one, w);
}
