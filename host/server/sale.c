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

#include "caller.h"
#include "events.h"
#include "keyspace.h"
#include "log.h"
#include "metrics.h"
#include "orders_stream.h"
#include "pending.h"
#include "ratelimit.h"
#include "repair.h"
#include "reply.h"
#include "stock.h"
#include "util.h"

typedef struct sale {
    worker_t *w;
    http_request_t *req;
    stock_event_t *ev;
    int64_t qty;
    char event[SNATCH_NAME_MAX + 1];
    char user[SNATCH_NAME_MAX + 1];
    char order_id[KEYSPACE_ORDER_ID_MAX + 1];
    int64_t created_ms;
    bool admitted;               /* admit() already ran */
    char client[TRUST_ADDR_MAX]; /* caller_client(), "" until needed (the sold-out path never is) */
} sale_t;

/* Look-ups of events this host does not know, per client address: each costs a Redis round
 * trip, and they must not spend the named buyer's bucket (anyone can name any buyer). */
#define UNKNOWN_RATE 50.0
#define UNKNOWN_BURST 100.0

/* The backends as the host runs them. */
static bool real_ready(worker_t *w)
{
    return w->redis != NULL && redis_client_ready(w->redis) && w->orders != NULL &&
           orders_publisher_ready(w->host->orders);
}

static pending_t *pending(worker_t *w)
{
    if (w->pending == NULL)
        w->pending = pending_new(&w->loop, &w->redis);
    return w->pending;
}

static void real_deduct(worker_t *w, const char *event, const char *user, int64_t qty, deduct_fn cb,
                        void *data)
{
    if (w->deduct == NULL) {
        w->deduct = deduct_batcher_new(w->redis, pending(w), w->host->cfg.host_id,
                                       w->host->cfg.redis_timeout_ms);
        if (w->deduct != NULL)
            deduct_batcher_set_replicas(w->deduct, w->host->cfg.redis_replicas);
    }
    if (w->deduct == NULL) {
        deduct_result_t r = {
            .verdict = DEDUCT_ERROR, .remaining = -1, .gen = -1, .err = deduct_err_nomem};
        cb(&r, data);
        return;
    }
    deduct_submit(w->deduct, event, user, qty, cb, data);
}

static int real_publish(worker_t *w, const char *event, const char *order_id, const char *payload,
                        size_t len, orders_ack_fn cb, void *data)
{
    return orders_publish(w->orders, event, order_id, payload, len, cb, data);
}

static void real_acked(worker_t *w, const char *order_id)
{
    pending_ack(pending(w), order_id);
}

static const sale_backend_t real_backend = {
    .ready = real_ready, .deduct = real_deduct, .publish = real_publish, .acked = real_acked};
static const sale_backend_t *backend = &real_backend;

void sale_set_backend(const sale_backend_t *b)
{
    backend = b != NULL ? b : &real_backend;
}

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

/* Ends a sale: answers, frees, and lets shutdown know one fewer is in flight. */
static void sale_finish(sale_t *s)
{
    s->w->inflight--;
    free(s);
}

/* Answers a refusal known without Redis (nothing reserved yet) and ends the sale. */
static void sale_refuse(sale_t *s, int status, reply_fixed_t body, metrics_outcome_t oc)
{
    metrics_outcome(oc);
    reply_fixed(s->req, ROUTE_SNATCH, status, body);
    sale_finish(s);
}

/* Redis did not sell: the local unit goes back. */
static void sale_fail(sale_t *s, int status, reply_fixed_t body, metrics_outcome_t oc)
{
    stock_release(s->ev, s->qty);
    sale_refuse(s, status, body, oc);
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
    reply_json(s->req, ROUTE_SNATCH, status, body, pos);
}

static void on_order_acked(int status, void *data)
{
    sale_t *s = data;
    if (status == 0) {
        backend->acked(s->w, s->order_id);
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
    char payload[ORDERS_PAYLOAD_MAX];
    script_order_t o = {.order_id = s->order_id,
                        .event = s->event,
                        .user = s->user,
                        .qty = s->qty,
                        .host_id = w->host->cfg.host_id,
                        .created_ms = s->created_ms};
    int len = script_order(w->script, &o, payload, sizeof(payload));
    if (len < 0)
        len = script_order_default(&o, payload, sizeof(payload));
    if (len < 0 ||
        backend->publish(w, s->event, s->order_id, payload, (size_t)len, on_order_acked, s) != 0) {
        reply_order(s, 202);
        sale_finish(s);
    }
}

static void on_deducted(const deduct_result_t *r, void *data)
{
    sale_t *s = data;
    switch (r->verdict) {
    case DEDUCT_OK:
        snprintf(s->order_id, sizeof(s->order_id), "%s", r->order_id);
        s->created_ms = r->created_ms;
        if (r->unreplicated) {
            /* Fewer replicas than --redis-replicas hold the sale: a failover may undo it, so it
             * is not confirmed, nor published. It stays in {event}:pending; the reconciler
             * publishes it if Redis keeps it. */
            reply_order(s, 202);
            sale_finish(s);
            return;
        }
        publish_order(s);
        return;
    case DEDUCT_UNKNOWN_OUTCOME:
        /* The script may have run and its reply died with the connection: the sale may exist.
         * If it does, it is pending in Redis and reconciliation persists it. */
        sale_fail(s, 503, REPLY_UNKNOWN_OUTCOME, OUTCOME_UNAVAILABLE);
        return;
    case DEDUCT_SOLD_OUT:
        stock_mark_sold_out(s->ev);
        sale_fail(s, 409, REPLY_SOLD_OUT, OUTCOME_SOLD_OUT_REDIS);
        return;
    case DEDUCT_INSUFFICIENT:
        sale_fail(s, 409, REPLY_INSUFFICIENT_STOCK, OUTCOME_SOLD_OUT_REDIS);
        return;
    case DEDUCT_LIMIT_REACHED:
        sale_fail(s, 409, REPLY_LIMIT_REACHED, OUTCOME_LIMIT_REACHED);
        return;
    case DEDUCT_UNKNOWN_EVENT:
        sale_fail(s, 404, REPLY_UNKNOWN_EVENT, OUTCOME_BAD_REQUEST);
        return;
    case DEDUCT_REPAIRING:
        metrics_repair_gated();
        repair_request(s->event, strlen(s->event));
        sale_fail(s, 503, REPLY_REPAIRING, OUTCOME_UNAVAILABLE);
        return;
    case DEDUCT_PAUSED:
        /* Every thread refuses locally from now on; a refresh after the resume lifts it. */
        stock_mark_paused(s->ev);
        sale_fail(s, 409, REPLY_PAUSED, OUTCOME_PAUSED);
        return;
    case DEDUCT_ERROR:
        if (r->err == deduct_err_script)
            log_limited("sale: deduct script error: %s", r->detail);
        else if (r->err == deduct_err_bad_reply)
            log_limited("sale: unexpected deduct reply '%s'", r->detail ? r->detail : "");
        break;
    case DEDUCT_EXPIRED:
        break;
    }
    sale_fail(s, 503, REPLY_UNAVAILABLE, OUTCOME_UNAVAILABLE);
}

static void deduct(sale_t *s)
{
    backend->deduct(s->w, s->event, s->user, s->qty, on_deducted, s);
}

static const char *sale_client(sale_t *s)
{
    if (s->client[0] == '\0')
        caller_client(s->req, s->client);
    return s->client;
}

static const char *sale_header(const void *req, const char *name, size_t nlen, size_t *iter,
                               size_t *vlen)
{
    return http_header(req, name, nlen, iter, vlen);
}

/* The policy's admit(): 0 admitted, or -1 when it refused (answered and finished then). */
static int admit(sale_t *s)
{
    script_admit_req_t ar = {.event = s->event,
                             .user = s->user,
                             .qty = s->qty,
                             .client = sale_client(s),
                             .now_ms = util_now_ms(),
                             .header = sale_header,
                             .header_ctx = s->req};
    script_verdict_t v;
    script_admit(s->w->script, &ar, &v);
    s->admitted = true;
    if (v.status == 0)
        return 0;
    metrics_outcome(OUTCOME_REJECTED);
    reply_error(s->req, ROUTE_SNATCH, v.status, v.reason, v.detail[0] != '\0' ? v.detail : NULL);
    sale_finish(s);
    return -1;
}

/* The event is known: local checks, policy, then Redis. */
static void sale_continue(sale_t *s)
{
    worker_t *w = s->w;
    stock_event_t *ev = s->ev;
    stock_verdict_t sv = stock_check(ev, s->qty);
    if (sv == STOCK_PAUSED) {
        sale_refuse(s, 409, REPLY_PAUSED, OUTCOME_PAUSED);
        return;
    }
    if (sv != STOCK_OK) {
        sale_refuse(s, 409, sv == STOCK_INSUFFICIENT ? REPLY_INSUFFICIENT_STOCK : REPLY_SOLD_OUT,
                    OUTCOME_SOLD_OUT_LOCAL);
        return;
    }
    if (!s->admitted && admit(s) != 0)
        return;
    /* Fail closed: without Redis nothing can be deducted, without NATS nothing could be made
     * durable, so nobody is sold anything. */
    if (!backend->ready(w)) {
        sale_refuse(s, 503, REPLY_UNAVAILABLE, OUTCOME_UNAVAILABLE);
        return;
    }
    if (stock_reserve(ev, s->qty) != 0) {
        bool paused = stock_check(ev, s->qty) == STOCK_PAUSED; /* paused while admit() ran */
        sale_refuse(s, 409, paused ? REPLY_PAUSED : REPLY_SOLD_OUT,
                    paused ? OUTCOME_PAUSED : OUTCOME_SOLD_OUT_LOCAL);
        return;
    }
    deduct(s);
}

static void on_event_found(stock_event_t *ev, int err, void *data)
{
    sale_t *s = data;
    if (ev == NULL) {
        if (err != 0)
            sale_refuse(s, 503, REPLY_UNAVAILABLE, OUTCOME_UNAVAILABLE);
        else
            sale_refuse(s, 404, REPLY_UNKNOWN_EVENT, OUTCOME_BAD_REQUEST);
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
        reply_error(req, ROUTE_SNATCH, 400, "bad_request", "invalid event name");
        return;
    }
    const char *user = NULL;
    size_t user_len = 0;
    caller_buyer_t bv = caller_buyer(req, &user, &user_len);
    if (bv != CALLER_BUYER_OK) {
        metrics_outcome(OUTCOME_BAD_REQUEST);
        caller_buyer_error(req, ROUTE_SNATCH, bv);
        return;
    }
    if (!util_valid_name(user, user_len, set->user_max_len)) {
        metrics_outcome(OUTCOME_BAD_REQUEST);
        reply_error(req, ROUTE_SNATCH, 400, "bad_request", "invalid buyer id");
        return;
    }
    int64_t qty = 1;
    size_t qlen;
    const char *q = util_query_get(req->query, req->query_len, "qty", &qlen);
    if (q != NULL && util_parse_i64(q, qlen, 1, set->max_qty, &qty) != 0) {
        metrics_outcome(OUTCOME_BAD_REQUEST);
        reply_error(req, ROUTE_SNATCH, 400, "bad_request",
                    "qty must be an integer from 1 to max_qty");
        return;
    }
    sale_t *s = malloc(sizeof(*s));
    if (s == NULL) {
        reply_fixed(req, ROUTE_SNATCH, 503, REPLY_UNAVAILABLE);
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
    if (!caller_client_is_proxy(req, client) &&
        !ratelimit_take(key, (size_t)kn, UNKNOWN_RATE, UNKNOWN_BURST, 1, util_mono_us())) {
        metrics_outcome(OUTCOME_REJECTED);
        reply_error(req, ROUTE_SNATCH, 429, "rate_limited",
                    "too many requests for events this host does not know, from this address");
        sale_finish(s);
        return;
    }
    events_lookup(w, s->event, event_len, on_event_found, s);
}
