/* The sale path of one snatch request, on its loop thread. The order of the checks is the point:
 * the cheap local ones first (validation, sold-out flag, local quota), so the sold-out flood costs
 * no Redis round trip and no Lua call; then the policy; then the one atomic deduction in Redis;
 * then the order is published and the buyer gets 200 only once JetStream has it.
 *
 * A local unit is taken right before the Redis call and given back whenever Redis does not sell
 * (limit reached, sold out, error, timeout), so refusals never burn local stock. */
#include "sale.h"

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
#include "stallwatch.h"
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
    int64_t hold_until;                /* 0: paid at once */
    bool admitted;                     /* admit() already ran */
    bool reserved;                     /* holds qty units of the local quota */
    bool acked;                        /* JetStream acknowledged the order */
    pending_batch_t *batch;            /* its {event}:pending entry, held until the publish ended */
    char key[DEDUCT_IDEM_KEY_MAX + 1]; /* Idempotency-Key, "" when none */
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

static void real_deduct(worker_t *w, const char *event, const char *user, int64_t qty,
                        const char *key, deduct_fn cb, void *data)
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
    const script_settings_t *set = script_settings(w->script);
    deduct_batcher_set_life(w->deduct, set->hold_ms, set->hold_keeps_limit,
                            set->idempotency_window_ms);
    deduct_submit_key(w->deduct, event, user, qty, key, cb, data);
}

static int real_publish(worker_t *w, const char *event, const char *order_id, const char *payload,
                        size_t len, int64_t hold_until, bool replay, orders_ack_fn cb, void *data)
{
    char until[UTIL_I64_LEN + 1];
    const char *hdr[2] = {ORDERS_HDR_HOLD_UNTIL, until};
    if (!replay)
        return orders_publish(w->orders, event, order_id, hold_until, payload, len, cb, data);
    until[util_i64(until, hold_until)] = '\0';
    return orders_publish_hdr(w->orders, event, order_id, payload, len, hdr, hold_until > 0, cb,
                              data);
}

static void real_acked(worker_t *w, const char *key)
{
    pending_ack(pending(w), key);
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

/* Ends a sale: frees, and lets shutdown know one fewer is in flight. The last order of its batch
 * to end lets the batch's {event}:pending entry go if JetStream acknowledged them all. */
static void sale_finish(sale_t *s)
{
    char key[KEYSPACE_ORDER_ID_MAX + 1];
    if (pending_batch_release(s->batch, s->acked, key))
        backend->acked(s->w, key);
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

/* Redis did not sell (or replayed an earlier request's answer): the local unit goes back. */
static void sale_unreserve(sale_t *s)
{
    if (s->reserved)
        stock_release(s->ev, s->qty);
    s->reserved = false;
}

static void sale_fail(sale_t *s, int status, reply_fixed_t body, metrics_outcome_t oc)
{
    sale_unreserve(s);
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
    /* Validated names and ids: the body stays far below its 512 bytes. */
    memcpy(body + pos, ",\"qty\":", 7);
    pos += 7;
    pos += util_i64(body + pos, s->qty);
    /* Without a hold the body stays what it always was; a 202 keeps its "pending" status. */
    if (s->hold_until > 0) {
        const char *mid =
            status == 200 ? ",\"status\":\"held\",\"hold_until\":" : ",\"hold_until\":";
        size_t ml = strlen(mid);
        memcpy(body + pos, mid, ml);
        pos += ml;
        pos += util_i64(body + pos, s->hold_until);
    }
    body[pos++] = '}';
    metrics_outcome(status == 200 ? OUTCOME_SOLD : OUTCOME_PENDING);
    reply_json(s->req, ROUTE_SNATCH, status, body, pos);
}

static void on_order_acked(int status, void *data)
{
    sale_t *s = data;
    if (status == 0) {
        s->acked = true;
        reply_order(s, 200);
    } else {
        /* Deducted and recorded in Redis, not (yet) in JetStream: reconciliation republishes it
         * from {event}:pending. The buyer holds the ticket; 202 says it is not durable yet. */
        reply_order(s, 202);
    }
    sale_finish(s);
}

/* host: the host that sold it (another one's for a replayed idempotency key: the payload is
 * the one that host published, so a second publish is an exact duplicate). */
static void publish_order(sale_t *s, const char *host, bool replay)
{
    worker_t *w = s->w;
    char payload[ORDERS_PAYLOAD_MAX];
    script_order_t o = {.order_id = s->order_id,
                        .event = s->event,
                        .user = s->user,
                        .qty = s->qty,
                        .host_id = host,
                        .created_ms = s->created_ms};
    stallwatch_doing(STALL_DOING_ORDER);
    int len = script_order(w->script, &o, payload, sizeof(payload));
    stallwatch_doing(STALL_DOING_LOOP);
    if (len < 0)
        len = script_order_default(&o, payload, sizeof(payload));
    if (len < 0 || backend->publish(w, s->event, s->order_id, payload, (size_t)len, s->hold_until,
                                    replay, on_order_acked, s) != 0) {
        reply_order(s, 202);
        sale_finish(s);
    }
}

static void on_deducted(const deduct_result_t *r, void *data)
{
    sale_t *s = data;
    switch (r->verdict) {
    case DEDUCT_OK:
        s->order_id[0] = '\0';
        strncat(s->order_id, r->order_id, sizeof(s->order_id) - 1);
        s->created_ms = r->created_ms;
        s->hold_until = r->hold_until;
        s->batch = r->batch;
        pending_batch_hold(s->batch);
        /* A replay: the first request with this key sold it, here or on another host, and may
         * still be waiting for its ack; nothing was taken now. */
        if (r->replay)
            sale_unreserve(s);
        if (r->unreplicated) {
            /* Fewer replicas than --redis-replicas hold the sale: a failover may undo it, so it
             * is not confirmed, nor published. It stays in {event}:pending; the reconciler
             * publishes it if Redis keeps it. */
            reply_order(s, 202);
            sale_finish(s);
            return;
        }
        if (!r->replay) {
            publish_order(s, s->w->host->cfg.host_id, false);
            return;
        }
        /* The order is published again (the same message id, so JetStream keeps one) so that
         * this 200 too means durable. */
        publish_order(s, r->host != NULL && r->host[0] != '\0' ? r->host : s->w->host->cfg.host_id,
                      true);
        return;
    case DEDUCT_KEY_REUSED:
        sale_unreserve(s);
        metrics_outcome(OUTCOME_BAD_REQUEST);
        reply_error(s->req, ROUTE_SNATCH, 422, "idempotency_key_reused",
                    "this Idempotency-Key was first used with another qty");
        sale_finish(s);
        return;
    case DEDUCT_UNKNOWN_OUTCOME:
        /* The script may have run and its reply died with the connection: the sale may exist.
         * If it does, it is pending in Redis and reconciliation persists it. */
        sale_fail(s, 503, REPLY_UNKNOWN_OUTCOME, OUTCOME_UNAVAILABLE);
        return;
    case DEDUCT_SOLD_OUT:
        if (!r->replay) /* an old answer says nothing about the stock now */
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
    backend->deduct(s->w, s->event, s->user, s->qty, s->key[0] != '\0' ? s->key : NULL, on_deducted,
                    s);
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
    stallwatch_doing(STALL_DOING_ADMIT);
    script_admit(s->w->script, &ar, &v);
    stallwatch_doing(STALL_DOING_LOOP);
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
    bool keyed = s->key[0] != '\0';
    stock_verdict_t sv = stock_check(ev, s->qty);
    if (sv == STOCK_PAUSED) {
        sale_refuse(s, 409, REPLY_PAUSED, OUTCOME_PAUSED);
        return;
    }
    /* A request with an Idempotency-Key may be the retry of one that bought: only Redis knows,
     * so the local sold-out answer is not given to it. */
    if (sv != STOCK_OK && !keyed) {
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
    s->reserved = stock_reserve(ev, s->qty) == 0;
    bool paused = !s->reserved && stock_check(ev, s->qty) == STOCK_PAUSED; /* during admit() */
    if (paused || (!s->reserved && !keyed)) {
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

/* Visible ASCII: the key is part of a Redis key name and of no JSON. */
static bool valid_key(const char *k, size_t len)
{
    if (len == 0 || len > DEDUCT_IDEM_KEY_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (k[i] < 0x21 || k[i] > 0x7e)
            return false;
    return true;
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
    if (req->idempotency_key != NULL &&
        !valid_key(req->idempotency_key, req->idempotency_key_len)) {
        metrics_outcome(OUTCOME_BAD_REQUEST);
        reply_error(req, ROUTE_SNATCH, 400, "bad_request",
                    "Idempotency-Key must be 1 to 128 visible ASCII characters");
        return;
    }
    sale_t *s = malloc(sizeof(*s));
    if (s == NULL) {
        reply_fixed(req, ROUTE_SNATCH, 503, REPLY_UNAVAILABLE);
        return;
    }
    s->key[0] = '\0';
    if (req->idempotency_key != NULL) {
        memcpy(s->key, req->idempotency_key, req->idempotency_key_len);
        s->key[req->idempotency_key_len] = '\0';
    }
    s->hold_until = 0;
    s->reserved = false;
    s->acked = false;
    s->batch = NULL;
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
