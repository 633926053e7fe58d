/* The HTTP API of snatch-host: routing, and every endpoint but the sale itself (sale.c).
 * Runs on the loop thread of the connection. Look-ups go to Redis asynchronously; bodies are
 * built into small stack buffers or static strings. */
#include "api.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_events.h"
#include "caller.h"
#include "events.h"
#include "keyspace.h"
#include "life.h"
#include "log.h"
#include "metrics.h"
#include "order_msg.h"
#include "ratelimit.h"
#include "repair.h"
#include "reply.h"
#include "sale.h"
#include "stallwatch.h"
#include "stock.h"
#include "token_gate.h"
#include "util.h"
#include "worker.h"

/* PUT /admin/events/E is two scripts, because on a Redis Cluster the events index and the
 * event's keys live on different slots (one script over both is refused with CROSSSLOT). The
 * index first (INDEX_SCRIPT): a new event is refused when the sale already has --max-events
 * events (ARGV[2]): every host started with the same flag can then hold every event, so none is
 * created that some host would answer 404 for; and an event is never sold without being in the
 * index that reconciliation walks. Then RESET_SCRIPT creates or, with ?reset=1, resets. If the
 * second step fails, the index names an event with no {E}:meta (reconciliation and the hosts
 * take it as unknown; it counts against --max-events until the PUT is repeated). */
static const char INDEX_SCRIPT[] = "if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 and\n"
                                   "   redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then\n"
                                   "  return redis.error_reply('FULL')\n"
                                   "end\n"
                                   "redis.call('SADD', KEYS[1], ARGV[1])\n"
                                   "return 1\n";
/* Creates an event, or with ARGV[4] = "1" resets it (PUT ?reset=1); an existing event without
 * it is refused (EXISTS), decided here so two admins racing cannot both create. A reset starts a
 * new generation: stock and limit as given, sold 0, the buyers' counts cleared (each may buy
 * again), the paused flag kept. What earlier generations sold stays: their order records
 * ({E}:orders, {E}:uorders) so that their ids keep answering, their units in sold_before so that
 * reconciliation compares SQLite with every unit ever sold; and seq, so order ids never repeat
 * (base records it, so a repair never restores the orders of the sale before the reset).
 * Refused while orders or order transitions wait to be published (PENDING), so a reset always
 * starts after everything sold before it reached JetStream; while orders are held (HELD): a hold
 * released after the reset would give its units to the new generation's sold (lua/order.lua), so
 * holds are paid, cancelled or expired first; {E}:state keeps the states of earlier generations'
 * orders, as {E}:orders keeps their records. And while the event waits for its repair on this node
 * (REPAIRING; repair.h: its owner is another node). On a cluster (or with --redis-repair,
 * ARGV[3]) the node that runs this becomes the event's owner: a new sale has no persisted orders
 * to verify. Returns {gen, paused}. */
static const char RESET_SCRIPT[] =
    "local m = redis.call('HMGET', KEYS[1], 'stock', 'owner', 'seq', 'sold', 'sold_before',\n"
    "                     'paused')\n"
    "if m[1] and ARGV[4] ~= '1' then return redis.error_reply('EXISTS') end\n"
    "local tag = string.sub(KEYS[1], 1, -5)\n"
    "if redis.call('HLEN', KEYS[5]) > 0 or redis.call('HLEN', tag .. 'tpending') > 0 then\n"
    "  return redis.error_reply('PENDING')\n"
    "end\n"
    "if redis.call('ZCARD', tag .. 'holds') > 0 then return redis.error_reply('HELD') end\n"
    "local me\n"
    "if string.find(redis.call('INFO', 'cluster'), 'cluster_enabled:1', 1, true) then\n"
    "  me = redis.call('CLUSTER', 'MYID')\n"
    "elseif m[2] or ARGV[3] == '1' then\n"
    "  me = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')\n"
    "end\n"
    "if m[1] and me and m[2] ~= me then return redis.error_reply('REPAIRING') end\n"
    "local before = (tonumber(m[4]) or 0) + (tonumber(m[5]) or 0)\n"
    "redis.call('DEL', KEYS[2])\n"
    "local gen = redis.call('HINCRBY', KEYS[1], 'gen', 1)\n"
    "redis.call('HSET', KEYS[1], 'stock', ARGV[1], 'sold', 0, 'limit', ARGV[2],\n"
    "           'sold_before', before, 'base', m[3] or '0')\n"
    "if me then redis.call('HSET', KEYS[1], 'owner', me) end\n"
    "return {gen, m[6] == '1' and 1 or 0}\n";

static worker_t *worker_of(http_request_t *req)
{
    return req->server_data;
}

/* ---- who is asking ---- */

/* Read endpoints, per client address and per buyer. Generous next to the sale's own limits
 * (policy.lua): a buyer polls their order, nobody needs more. */
#define READ_ADDR_RATE 100.0
#define READ_ADDR_BURST 200.0
#define READ_USER_RATE 5.0
#define READ_USER_BURST 20.0

/* Takes a token of key prefix+name. cost < 0 gives tokens back. */
static bool take(const char *prefix, const char *name, size_t nlen, double rate, double burst,
                 double cost)
{
    char key[32 + TRUST_ADDR_MAX + SNATCH_NAME_MAX];
    int n = snprintf(key, sizeof(key), "%s%.*s", prefix, (int)nlen, name);
    if (n < 0 || (size_t)n >= sizeof(key))
        return true;
    return ratelimit_take(key, (size_t)n, rate, burst, cost, util_mono_us());
}

/* Answers 429 and returns true when this read is over the client's or the buyer's rate. */
static bool read_limited(http_request_t *req, int route, const char *user, size_t ulen)
{
    char client[TRUST_ADDR_MAX];
    caller_client(req, client);
    if ((!caller_client_is_proxy(req, client) &&
         !take("snatch.read.ip:", client, strlen(client), READ_ADDR_RATE, READ_ADDR_BURST, 1)) ||
        (user != NULL && !take("snatch.read.u:", user, ulen, READ_USER_RATE, READ_USER_BURST, 1))) {
        reply_error(req, route, 429, "rate_limited", "too many reads; slow down");
        return true;
    }
    return false;
}

static bool redis_usable(worker_t *w)
{
    return w->redis != NULL && redis_client_ready(w->redis);
}

/* ---- GET /v1/events/{e} ---- */

typedef struct event_view {
    http_request_t *req;
    worker_t *w;
    size_t len;
    char event[SNATCH_NAME_MAX + 1];
} event_view_t;

static int64_t elem_int(const redisReply *r, size_t i)
{
    int64_t v = 0;
    if (r->elements > i && r->element[i]->type == REDIS_REPLY_STRING)
        util_parse_i64(r->element[i]->str, r->element[i]->len, INT64_MIN + 1, INT64_MAX, &v);
    return v;
}

static void on_event_meta(redisReply *r, const char *err, void *data)
{
    event_view_t *v = data;
    (void)err;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 4) {
        reply_error(v->req, ROUTE_EVENT, 503, "unavailable", NULL);
        goto out;
    }
    if (r->element[0]->type != REDIS_REPLY_STRING) {
        reply_error(v->req, ROUTE_EVENT, 404, "unknown_event", NULL);
        goto out;
    }
    int64_t stock = elem_int(r, 0), sold = elem_int(r, 1), limit = elem_int(r, 2);
    int64_t gen = elem_int(r, 3);
    bool paused = elem_int(r, 4) == 1;
    int64_t remaining = stock - sold > 0 ? stock - sold : 0;
    stock_event_t *ev = stock_find(v->event, v->len);
    stock_view_t sv = {0};
    if (ev != NULL)
        stock_view(ev, &sv);
    int64_t quota = sv.quota, left = sv.left;
    char body[512];
    size_t pos = 0;
    memcpy(body, "{\"event\":", 9);
    pos = 9;
    util_json_str(body, sizeof(body), &pos, v->event, v->len);
    pos += (size_t)snprintf(body + pos, sizeof(body) - pos,
                            ",\"stock\":%" PRId64 ",\"sold\":%" PRId64 ",\"remaining\":%" PRId64
                            ",\"per_user_limit\":%" PRId64 ",\"generation\":%" PRId64
                            ",\"local_quota\":%" PRId64 ",\"local_left\":%" PRId64
                            ",\"status\":\"%s\"}",
                            stock, sold, remaining, limit, gen, quota, left < 0 ? 0 : left,
                            paused          ? "paused"
                            : remaining > 0 ? "open"
                                            : "sold_out");
    reply_json(v->req, ROUTE_EVENT, 200, body, pos);
out:
    free(v);
}

static void get_event(http_request_t *req, const char *event, size_t len)
{
    worker_t *w = worker_of(req);
    if (!util_valid_name(event, len, SNATCH_NAME_MAX)) {
        reply_error(req, ROUTE_EVENT, 400, "bad_request", "invalid event name");
        return;
    }
    if (read_limited(req, ROUTE_EVENT, NULL, 0))
        return;
    if (!redis_usable(w)) {
        reply_error(req, ROUTE_EVENT, 503, "unavailable", NULL);
        return;
    }
    event_view_t *v = malloc(sizeof(*v));
    if (v == NULL) {
        reply_error(req, ROUTE_EVENT, 503, "unavailable", NULL);
        return;
    }
    v->req = req;
    v->w = w;
    v->len = len;
    memcpy(v->event, event, len);
    v->event[len] = '\0';
    events_read_meta(w, v->event, len, on_event_meta, v);
}

/* ---- PUT /admin/events/{e} ---- */

typedef struct admin_put {
    http_request_t *req;
    worker_t *w;
    int64_t stock, limit;
    size_t len;
    char event[SNATCH_NAME_MAX + 1];
    bool reserved; /* holds room in the local table (stock_reserve_room) */
    bool reset;    /* ?reset=1 */
} admin_put_t;

static void reset_repairing(admin_put_t *a)
{
    repair_request(a->event, a->len);
    reply_error(a->req, ROUTE_ADMIN_EVENT, 503, "repairing",
                "the event is being checked against its persisted orders after a Redis failover; "
                "retry");
}

static void on_event_reset(redisReply *r, const char *err, void *data)
{
    admin_put_t *a = data;
    (void)err;
    if (r == NULL) {
        reply_error(a->req, ROUTE_ADMIN_EVENT, 503, "unavailable", NULL);
        goto out;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        if (strstr(r->str, "EXISTS") != NULL)
            reply_error(a->req, ROUTE_ADMIN_EVENT, 409, "event_exists",
                        "the event exists; PUT ?reset=1 starts a new generation, PATCH changes "
                        "stock or per_user_limit");
        else if (strstr(r->str, "FULL") != NULL)
            reply_error(a->req, ROUTE_ADMIN_EVENT, 409, "too_many_events",
                        "the sale already has --max-events events");
        else if (strstr(r->str, "REPAIRING") != NULL)
            reset_repairing(a);
        else if (strstr(r->str, "PENDING") != NULL)
            reply_error(a->req, ROUTE_ADMIN_EVENT, 409, "orders_pending",
                        "orders of this event are not yet published; run snatch-reconcile first");
        else if (strstr(r->str, "HELD") != NULL)
            reply_error(a->req, ROUTE_ADMIN_EVENT, 409, "orders_held",
                        "orders of this event are held for payment; a reset waits until each is "
                        "paid, cancelled or expired");
        else
            reply_error(a->req, ROUTE_ADMIN_EVENT, 503, "unavailable", r->str);
        goto out;
    }
    int64_t gen = -1, paused = 0;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[0]->type == REDIS_REPLY_INTEGER && r->element[1]->type == REDIS_REPLY_INTEGER) {
        gen = r->element[0]->integer;
        paused = r->element[1]->integer;
    }
    if (gen < 0) {
        reply_error(a->req, ROUTE_ADMIN_EVENT, 503, "unavailable", "unexpected reply");
        goto out;
    }
    int64_t quota;
    stock_event_t *ev = events_install(a->w, a->event, a->len, a->stock, a->limit, (uint64_t)gen, 0,
                                       a->reserved, &quota);
    a->reserved = false;
    if (ev != NULL)
        stock_follow(ev, a->stock == 0, paused == 1);
    log_info("admin: event %s %s: stock %" PRId64 ", per_user_limit %" PRId64
             ", generation %" PRId64 ", local quota %" PRId64 "",
             a->event, a->reset ? "reset" : "created", a->stock, a->limit, gen, quota);
    char body[384];
    size_t pos = 0;
    memcpy(body, "{\"event\":", 9);
    pos = 9;
    util_json_str(body, sizeof(body), &pos, a->event, a->len);
    pos +=
        (size_t)snprintf(body + pos, sizeof(body) - pos,
                         ",\"stock\":%" PRId64 ",\"per_user_limit\":%" PRId64
                         ",\"generation\":%" PRId64 ",\"local_quota\":%" PRId64 ",\"paused\":%s}",
                         a->stock, a->limit, gen, quota, paused == 1 ? "true" : "false");
    reply_json(a->req, ROUTE_ADMIN_EVENT, 200, body, pos);
out:
    if (a->reserved)
        stock_unreserve();
    free(a);
}

/* Step two of PUT /admin/events/E: the event's own keys. */
static void on_event_indexed(redisReply *r, const char *err, void *data)
{
    admin_put_t *a = data;
    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        on_event_reset(r, err, a);
        return;
    }
    char keys[KEYSPACE__COUNT][KEYSPACE_KEY_MAX], sstock[24], slimit[24];
    const char *argv[3 + KEYSPACE__COUNT + 4];
    size_t lens[3 + KEYSPACE__COUNT + 4];
    argv[0] = "EVAL";
    lens[0] = 4;
    argv[1] = RESET_SCRIPT;
    lens[1] = sizeof(RESET_SCRIPT) - 1;
    argv[2] = "5";
    lens[2] = 1;
    for (int i = 0; i < KEYSPACE__COUNT; i++) {
        lens[3 + i] = (size_t)keyspace_key(keys[i], a->event, a->len, (keyspace_key_t)i);
        argv[3 + i] = keys[i];
    }
    lens[8] = (size_t)snprintf(sstock, sizeof(sstock), "%" PRId64, a->stock);
    argv[8] = sstock;
    lens[9] = (size_t)snprintf(slimit, sizeof(slimit), "%" PRId64, a->limit);
    argv[9] = slimit;
    argv[10] = repair_claims_standalone() ? "1" : "0";
    lens[10] = 1;
    argv[11] = a->reset ? "1" : "0";
    lens[11] = 1;
    redis_command(a->w->redis, on_event_reset, a, 12, argv, lens);
}

/* Parses {"stock":N,"per_user_limit":K}: both integers, nothing else accepted. Returns NULL on
 * success or the reason. */
const char *api_parse_event_body(const char *body, size_t len, int64_t *stock, int64_t *limit)
{
    return admin_parse_event_fields(body, len, true, stock, limit);
}

static void put_event(http_request_t *req, const char *event, size_t len)
{
    worker_t *w = worker_of(req);
    if (!token_gate_admin(req, ROUTE_ADMIN_EVENT))
        return;
    if (!util_valid_name(event, len, SNATCH_NAME_MAX)) {
        reply_error(req, ROUTE_ADMIN_EVENT, 400, "bad_request", "invalid event name");
        return;
    }
    int64_t stock, limit;
    const char *why = api_parse_event_body(req->body, req->body_len, &stock, &limit);
    if (why != NULL) {
        reply_error(req, ROUTE_ADMIN_EVENT, 400, "bad_request", why);
        return;
    }
    size_t rlen;
    const char *rv = util_query_get(req->query, req->query_len, "reset", &rlen);
    if (rv != NULL && !(rlen == 1 && (rv[0] == '0' || rv[0] == '1'))) {
        reply_error(req, ROUTE_ADMIN_EVENT, 400, "bad_request", "reset must be 0 or 1");
        return;
    }
    bool reset = rv != NULL && rv[0] == '1';
    if (!redis_usable(w)) {
        reply_error(req, ROUTE_ADMIN_EVENT, 503, "unavailable", NULL);
        return;
    }
    /* Room first: an event this host could not hold is refused before Redis knows it. */
    int room = stock_reserve_room(event, len);
    if (room < 0) {
        reply_error(req, ROUTE_ADMIN_EVENT, 409, "too_many_events",
                    "this host holds no more events (--max-events)");
        return;
    }
    admin_put_t *a = malloc(sizeof(*a));
    if (a == NULL) {
        if (room > 0)
            stock_unreserve();
        reply_error(req, ROUTE_ADMIN_EVENT, 503, "unavailable", NULL);
        return;
    }
    a->reserved = room > 0;
    a->reset = reset;
    a->req = req;
    a->w = w;
    a->stock = stock;
    a->limit = limit;
    a->len = len;
    memcpy(a->event, event, len);
    a->event[len] = '\0';
    char smax[24];
    const char *argv[] = {"EVAL", INDEX_SCRIPT, "1", KEYSPACE_EVENTS, a->event, smax};
    size_t lens[] = {4, sizeof(INDEX_SCRIPT) - 1, 1, strlen(KEYSPACE_EVENTS), len, 0};
    lens[5] = (size_t)snprintf(smax, sizeof(smax), "%zu", stock_max_events());
    redis_command(w->redis, on_event_indexed, a, 6, argv, lens);
}

/* ---- GET /v1/orders/{id} and GET /v1/events/{e}/users/{u}/orders ---- */

typedef struct order_view {
    http_request_t *req;
    worker_t *w;
    metrics_route_t route;
    char event[SNATCH_NAME_MAX + 1];
    char user[SNATCH_NAME_MAX + 1]; /* GET /v1/orders/{id}: the buyer asking ("" for admin) */
    char *ids; /* the user's order ids, comma separated: the fields of the records asked for */
} order_view_t;

static void view_free(order_view_t *v)
{
    free(v->ids);
    free(v);
}

/* Order data answers only to its buyer or the admin token. Sets *admin and fills buyer (the
 * validated buyer id, NUL-terminated) or answers (400, 401, 403, 429) and returns false. */
static bool order_reader(http_request_t *req, int route, bool *admin, char *buyer)
{
    const host_config_t *cfg = &worker_of(req)->host->cfg;
    *admin = false;
    buyer[0] = '\0';
    if (req->authorization != NULL && cfg->admin_token_len > 0) {
        if (!token_gate_check(req, route, "snatch.auth:", cfg->admin_token, cfg->admin_token_len,
                              NULL))
            return false;
        *admin = true;
        return !read_limited(req, route, NULL, 0);
    }
    const char *user;
    size_t ulen;
    caller_buyer_t bv = caller_buyer(req, &user, &ulen);
    if (bv == CALLER_BUYER_QUERY_REFUSED) {
        caller_buyer_error(req, route, bv);
        return false;
    }
    if (bv == CALLER_BUYER_NONE) {
        reply_error(req, route, 403, "forbidden",
                    "orders answer only to their buyer (X-User-Id from a trusted proxy) or the "
                    "admin token");
        return false;
    }
    if (!util_valid_name(user, ulen, SNATCH_NAME_MAX)) {
        reply_error(req, route, 400, "bad_request", "invalid buyer id");
        return false;
    }
    if (read_limited(req, route, user, ulen))
        return false;
    memcpy(buyer, user, ulen);
    buyer[ulen] = '\0';
    return true;
}

static void get_order(http_request_t *req, const char *id, size_t len)
{
    worker_t *w = worker_of(req);
    const char *event;
    size_t elen;
    if ((event = keyspace_order_event(id, len, &elen)) == NULL) {
        reply_error(req, ROUTE_ORDER, 400, "bad_request", "invalid order id");
        return;
    }
    bool admin;
    char buyer[SNATCH_NAME_MAX + 1];
    if (!order_reader(req, ROUTE_ORDER, &admin, buyer))
        return;
    if (!redis_usable(w)) {
        reply_error(req, ROUTE_ORDER, 503, "unavailable", NULL);
        return;
    }
    life_get(w, req, id, len, admin ? "" : buyer);
}

static void on_user_records(redisReply *r, const char *err, void *data)
{
    order_view_t *v = data;
    (void)err;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        reply_error(v->req, ROUTE_USER_ORDERS, 503, "unavailable", NULL);
        view_free(v);
        return;
    }
    /* The head with both names (escaped, at most 6 bytes a character), then per record at most
     * ORDER_RECORD_JSON_MAX bytes of JSON from a compact one, or the stored JSON's length. */
    size_t cap = 64 + 12 * SNATCH_NAME_MAX + r->elements * (256 + ORDER_RECORD_JSON_MAX);
    for (size_t i = 0; i < r->elements; i++)
        if (r->element[i]->type == REDIS_REPLY_STRING)
            cap += r->element[i]->len;
    char *body = malloc(cap);
    if (body == NULL) {
        reply_error(v->req, ROUTE_USER_ORDERS, 503, "unavailable", NULL);
        view_free(v);
        return;
    }
    size_t pos = 0;
    memcpy(body, "{\"event\":", 9);
    pos = 9;
    util_json_str(body, cap, &pos, v->event, strlen(v->event));
    memcpy(body + pos, ",\"user\":", 8);
    pos += 8;
    util_json_str(body, cap, &pos, v->user, strlen(v->user));
    memcpy(body + pos, ",\"orders\":[", 11);
    pos += 11;
    size_t n = 0;
    const char *id = v->ids;
    for (size_t i = 0; i < r->elements; i++) {
        size_t idlen = strcspn(id, ",");
        const char *next = id[idlen] == ',' ? id + idlen + 1 : id + idlen;
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING) {
            id = next;
            continue;
        }
        size_t at = pos + (n > 0);
        const char *json;
        int len = order_record_json(id, idlen, e->str, e->len, body + at, cap - at - 2, &json);
        if (len < 0) {
            /* Left out of the list rather than breaking its JSON; the order is still there. */
            log_warn("api: order %.*s: unreadable record in Redis", (int)idlen, id);
            id = next;
            continue;
        }
        if (n++)
            body[pos++] = ',';
        if (json != body + pos)
            memcpy(body + pos, json, (size_t)len);
        pos += (size_t)len;
        id = next;
    }
    memcpy(body + pos, "]}", 2);
    pos += 2;
    reply_json(v->req, ROUTE_USER_ORDERS, 200, body, pos);
    free(body);
    view_free(v);
}

static void on_user_ids(redisReply *r, const char *err, void *data)
{
    order_view_t *v = data;
    (void)err;
    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        reply_error(v->req, ROUTE_USER_ORDERS, 503, "unavailable", NULL);
        free(v);
        return;
    }
    if (r->type != REDIS_REPLY_STRING || r->len == 0) {
        static const char none[] = "[]}";
        char body[256];
        size_t pos = 0;
        memcpy(body, "{\"event\":", 9);
        pos = 9;
        util_json_str(body, sizeof(body), &pos, v->event, strlen(v->event));
        memcpy(body + pos, ",\"user\":", 8);
        pos += 8;
        util_json_str(body, sizeof(body), &pos, v->user, strlen(v->user));
        memcpy(body + pos, ",\"orders\":", 10);
        pos += 10;
        memcpy(body + pos, none, sizeof(none) - 1);
        pos += sizeof(none) - 1;
        reply_json(v->req, ROUTE_USER_ORDERS, 200, body, pos);
        free(v);
        return;
    }
    /* ids are comma separated; per_user_limit bounds how many there are. */
    size_t count = 1;
    for (size_t i = 0; i < r->len; i++)
        count += r->str[i] == ',';
    const char **argv = malloc((count + 2) * sizeof(*argv));
    size_t *lens = malloc((count + 2) * sizeof(*lens));
    char key[KEYSPACE_KEY_MAX];
    if (argv == NULL || lens == NULL) {
        free(argv);
        free(lens);
        reply_error(v->req, ROUTE_USER_ORDERS, 503, "unavailable", NULL);
        free(v);
        return;
    }
    argv[0] = "HMGET";
    lens[0] = 5;
    lens[1] = (size_t)keyspace_key(key, v->event, strlen(v->event), KEYSPACE_ORDERS);
    /* The reply has the records only: their ids are needed to read them. */
    if ((v->ids = strndup(r->str, r->len)) == NULL) {
        free(argv);
        free(lens);
        reply_error(v->req, ROUTE_USER_ORDERS, 503, "unavailable", NULL);
        free(v);
        return;
    }
    argv[1] = key;
    size_t n = 2, start = 0;
    for (size_t i = 0; i <= r->len; i++) {
        if (i == r->len || r->str[i] == ',') {
            argv[n] = r->str + start;
            lens[n] = i - start;
            n++;
            start = i + 1;
        }
    }
    redis_command(v->w->redis, on_user_records, v, (int)n, argv, lens);
    free(argv);
    free(lens);
}

static void get_user_orders(http_request_t *req, const char *event, size_t elen, const char *user,
                            size_t ulen)
{
    worker_t *w = worker_of(req);
    if (!util_valid_name(event, elen, SNATCH_NAME_MAX) ||
        !util_valid_name(user, ulen, SNATCH_NAME_MAX)) {
        reply_error(req, ROUTE_USER_ORDERS, 400, "bad_request", "invalid event or user");
        return;
    }
    bool admin;
    char buyer[SNATCH_NAME_MAX + 1];
    if (!order_reader(req, ROUTE_USER_ORDERS, &admin, buyer))
        return;
    if (!admin && (strlen(buyer) != ulen || memcmp(buyer, user, ulen) != 0)) {
        /* The path names the buyer, so refusing tells a prober nothing it did not send. */
        reply_error(req, ROUTE_USER_ORDERS, 403, "forbidden", "orders answer only to their buyer");
        return;
    }
    if (!redis_usable(w)) {
        reply_error(req, ROUTE_USER_ORDERS, 503, "unavailable", NULL);
        return;
    }
    order_view_t *v = calloc(1, sizeof(*v));
    if (v == NULL) {
        reply_error(req, ROUTE_USER_ORDERS, 503, "unavailable", NULL);
        return;
    }
    v->req = req;
    v->w = w;
    memcpy(v->event, event, elen);
    memcpy(v->user, user, ulen);
    char key[KEYSPACE_KEY_MAX];
    int n = keyspace_key(key, event, elen, KEYSPACE_UORDERS);
    const char *argv[] = {"HGET", key, v->user};
    size_t lens[] = {4, (size_t)n, ulen};
    redis_command(w->redis, on_user_ids, v, 3, argv, lens);
}

/* ---- /metrics, /healthz ---- */

static void get_metrics(http_request_t *req)
{
    size_t len;
    char *text = metrics_render(&len);
    if (text == NULL) {
        reply_error(req, ROUTE_METRICS, 503, "unavailable", NULL);
        return;
    }
    reply_text(req, ROUTE_METRICS, 200, "text/plain; version=0.0.4", text, len);
    free(text);
}

/* A stalled loop thread (stallwatch.h) makes the host unhealthy whatever Redis and NATS say:
 * the threads still running answer for it, so a balancer can take the host out. */
static void get_health(http_request_t *req)
{
    worker_t *w = worker_of(req);
    bool redis_ok = redis_usable(w);
    bool nats_ok = orders_publisher_ready(w->host->orders);
    char stall[192], detail[224] = "", body[384];
    bool ok = redis_ok && nats_ok;
    const char *status = ok ? "ok" : "degraded";
    if (stallwatch_describe(stall, sizeof(stall)) > 0) {
        ok = false;
        status = "stalled";
        snprintf(detail, sizeof(detail), ",\"detail\":\"%s\"", stall);
    }
    int n = snprintf(body, sizeof(body), "{\"status\":\"%s\",\"redis\":%s,\"nats\":%s%s}", status,
                     redis_ok ? "true" : "false", nats_ok ? "true" : "false", detail);
    reply_json(req, ROUTE_HEALTH, ok ? 200 : 503, body, (size_t)n);
}

/* ---- routing ---- */

/* Splits path (after a prefix) into '/'-separated segments; returns how many (at most max). */
static int split_path(const char *p, size_t len, const char **seg, size_t *seglen, int max)
{
    int n = 0;
    size_t i = 0;
    while (i < len) {
        if (p[i] != '/')
            return -1;
        size_t start = ++i;
        while (i < len && p[i] != '/')
            i++;
        if (n == max)
            return -1;
        seg[n] = p + start;
        seglen[n] = i - start;
        if (seglen[n] == 0)
            return -1;
        n++;
    }
    return n;
}

static bool seg_is(const char *s, size_t len, const char *lit)
{
    return strlen(lit) == len && memcmp(s, lit, len) == 0;
}

static void method_not_allowed(http_request_t *req, metrics_route_t route)
{
    reply_error(req, route, 405, "method_not_allowed", NULL);
}

void api_handle(http_request_t *req)
{
    const char *seg[6];
    size_t sl[6];
    int n = split_path(req->path, req->path_len, seg, sl, 6);
    bool get = req->method == HTTP_M_GET || req->method == HTTP_M_HEAD;
    /* With --admin-listen, the admin API and /metrics live only there, and buyers' routes only on
     * the public listener; /healthz answers on both. */
    bool admin_route =
        n >= 1 && (seg_is(seg[0], sl[0], "admin") || (n == 1 && seg_is(seg[0], sl[0], "metrics")));
    bool health = n == 1 && seg_is(seg[0], sl[0], "healthz");
    if (worker_of(req)->host->cfg.admin_listen_addr && !health &&
        admin_route != req->admin_listener)
        return reply_error(req, ROUTE_OTHER, 404, "not_found", NULL);
    if (n == 4 && seg_is(seg[0], sl[0], "v1") && seg_is(seg[1], sl[1], "events") &&
        seg_is(seg[3], sl[3], "snatch")) {
        if (req->method != HTTP_M_POST)
            return method_not_allowed(req, ROUTE_SNATCH);
        return sale_snatch(worker_of(req), req, seg[2], sl[2]);
    }
    if (n == 3 && seg_is(seg[0], sl[0], "v1") && seg_is(seg[1], sl[1], "events")) {
        if (!get)
            return method_not_allowed(req, ROUTE_EVENT);
        return get_event(req, seg[2], sl[2]);
    }
    if (n == 3 && seg_is(seg[0], sl[0], "admin") && seg_is(seg[1], sl[1], "events")) {
        if (req->method == HTTP_M_PATCH)
            return admin_patch_event(req, seg[2], sl[2]);
        if (req->method != HTTP_M_PUT)
            return method_not_allowed(req, ROUTE_ADMIN_EVENT);
        return put_event(req, seg[2], sl[2]);
    }
    if (n == 4 && seg_is(seg[0], sl[0], "admin") && seg_is(seg[1], sl[1], "events") &&
        (seg_is(seg[3], sl[3], "pause") || seg_is(seg[3], sl[3], "resume"))) {
        if (req->method != HTTP_M_POST)
            return method_not_allowed(req, ROUTE_ADMIN_EVENT);
        return admin_pause_event(req, seg[2], sl[2], seg_is(seg[3], sl[3], "pause"));
    }
    if (n == 2 && seg_is(seg[0], sl[0], "admin") && seg_is(seg[1], sl[1], "events")) {
        if (!get)
            return method_not_allowed(req, ROUTE_ADMIN_EVENT);
        return admin_list_events(req);
    }
    if (n == 3 && seg_is(seg[0], sl[0], "v1") && seg_is(seg[1], sl[1], "orders")) {
        if (req->method == HTTP_M_DELETE)
            return life_cancel(worker_of(req), req, seg[2], sl[2]);
        if (!get)
            return method_not_allowed(req, ROUTE_ORDER);
        return get_order(req, seg[2], sl[2]);
    }
    if (n == 4 && seg_is(seg[0], sl[0], "v1") && seg_is(seg[1], sl[1], "orders") &&
        seg_is(seg[3], sl[3], "pay")) {
        if (req->method != HTTP_M_POST)
            return method_not_allowed(req, ROUTE_ORDER);
        return life_pay(worker_of(req), req, seg[2], sl[2]);
    }
    if (n == 6 && seg_is(seg[0], sl[0], "v1") && seg_is(seg[1], sl[1], "events") &&
        seg_is(seg[3], sl[3], "users") && seg_is(seg[5], sl[5], "orders")) {
        if (!get)
            return method_not_allowed(req, ROUTE_USER_ORDERS);
        return get_user_orders(req, seg[2], sl[2], seg[4], sl[4]);
    }
    if (n == 1 && seg_is(seg[0], sl[0], "metrics")) {
        if (!get)
            return method_not_allowed(req, ROUTE_METRICS);
        return get_metrics(req);
    }
    if (n == 1 && seg_is(seg[0], sl[0], "healthz")) {
        if (!get)
            return method_not_allowed(req, ROUTE_HEALTH);
        return get_health(req);
    }
    reply_error(req, ROUTE_OTHER, 404, "not_found", NULL);
}
