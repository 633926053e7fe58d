/* Order life endpoints and the expiry sweeper (see life.h). Redis decides (lua/order.lua, one
 * EVALSHA per request or per batch of expired holds); this file publishes what was decided and
 * answers only once JetStream has it, as the sale does. */
#include "life.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "caller.h"
#include "keyspace.h"
#include "log.h"
#include "metrics.h"
#include "order_msg.h"
#include "orders.h"
#include "ratelimit.h"
#include "reply.h"
#include "token_gate.h"
#include "util.h"

/* order.lua's KEYS, in its order. */
static const keyspace_key_t life_keys[] = {KEYSPACE_META,  KEYSPACE_USERS, KEYSPACE_ORDERS,
                                           KEYSPACE_HOLDS, KEYSPACE_STATE, KEYSPACE_TPENDING};
#define LIFE_NKEYS ((int)ARRAY_SIZE(life_keys))
#define LIFE_ARGS_MAX 4

/* An order.lua call in flight. It goes as EVALSHA: the script's ~6 KB would otherwise be sent,
 * and hashed by Redis, at every call (every GET /v1/orders/{id}, every sweep). A node that does
 * not know the script yet (restarted, flushed, a new master) answers NOSCRIPT; the call then goes
 * once more as EVAL, which also teaches it the script. */
typedef struct life_call {
    worker_t *w;
    redis_reply_fn fn;
    void *data;
    bool as_eval;
    int argc;
    const char *argv[3 + LIFE_NKEYS + LIFE_ARGS_MAX];
    size_t lens[3 + LIFE_NKEYS + LIFE_ARGS_MAX];
    char keys[LIFE_NKEYS][KEYSPACE_KEY_MAX];
    char nkeys[8];
    char args[LIFE_ARGS_MAX][KEYSPACE_ORDER_ID_MAX + 1]; /* op, event, a1, a2: copied */
} life_call_t;

int life_script_sha(const char *src, char out[41])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_Digest(src, strlen(src), md, &n, EVP_sha1(), NULL) != 1 || n != 20)
        return -1;
    for (unsigned i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

/* Compiles without running: a syntax error is all a scratch state can find (redis.call and
 * KEYS exist only inside Redis). */
static int life_script_compiles(const char *path, const char *src, size_t len, char *err,
                                size_t errlen)
{
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    /* An empty chunk name: the message starts ":LINE: ", so it reads "PATH:LINE: ...". */
    int rc = luaL_loadbuffer(L, src, len, "=") == 0 ? 0 : -1;
    if (rc != 0)
        snprintf(err, errlen, "%s%s", path, lua_tostring(L, -1) ? lua_tostring(L, -1) : ": ?");
    lua_close(L);
    return rc;
}

int life_script_read(const char *path, char **src, char sha[41], char *err, size_t errlen)
{
    size_t len;
    *src = util_read_file(path, &len);
    if (*src == NULL) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    if (strlen(*src) != len) {
        snprintf(err, errlen, "%s holds a NUL byte", path);
        goto fail;
    }
    if (life_script_compiles(path, *src, len, err, errlen) != 0)
        goto fail;
    if (life_script_sha(*src, sha) != 0) {
        snprintf(err, errlen, "cannot hash %s", path);
        goto fail;
    }
    return 0;
fail:
    free(*src);
    *src = NULL;
    return -1;
}

static bool noscript(const redisReply *r)
{
    return r != NULL && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

static void life_send(life_call_t *c);

static void on_life_reply(redisReply *r, const char *err, void *data)
{
    life_call_t *c = data;
    if (noscript(r) && !c->as_eval) {
        c->as_eval = true;
        life_send(c);
        return;
    }
    c->fn(r, err, c->data);
    free(c);
}

static void life_send(life_call_t *c)
{
    /* The worker's current copy (a SIGHUP may have replaced it since a NOSCRIPT retry's first
     * try): redis_command copies the arguments, so no call holds a pointer into it. */
    const worker_t *w = c->w;
    c->argv[0] = c->as_eval ? "EVAL" : "EVALSHA";
    c->lens[0] = strlen(c->argv[0]);
    c->argv[1] = c->as_eval ? w->life_src : w->life_sha;
    c->lens[1] = strlen(c->argv[1]);
    redis_command(c->w->redis, on_life_reply, c, c->argc, c->argv, c->lens);
}

/* Copies a into the call's next argument. False when it does not fit (no valid argument is that
 * long: the caller validated ids, names and numbers). */
static bool life_arg(life_call_t *c, int i, const char *a, size_t len)
{
    if (len >= sizeof(c->args[i]))
        return false;
    memcpy(c->args[i], a, len);
    c->args[i][len] = '\0';
    c->argv[c->argc] = c->args[i];
    c->lens[c->argc++] = len;
    return true;
}

/* order.lua: op, event, then up to LIFE_ARGS_MAX - 2 more arguments. The first key is the
 * event's {E}:meta, so a Redis Cluster router sends it to the event's slot. fn gets a NULL reply
 * with "nomem" when the call could not be made. */
static void life_eval(worker_t *w, const char *op, const char *event, size_t elen, const char *a1,
                      const char *a2, redis_reply_fn fn, void *data)
{
    life_call_t *c = malloc(sizeof(*c));
    if (c == NULL) {
        fn(NULL, "nomem", data);
        return;
    }
    c->w = w;
    c->fn = fn;
    c->data = data;
    c->as_eval = false;
    c->argc = 2;
    c->lens[c->argc] = (size_t)snprintf(c->nkeys, sizeof(c->nkeys), "%d", LIFE_NKEYS);
    c->argv[c->argc++] = c->nkeys;
    for (int i = 0; i < LIFE_NKEYS; i++) {
        c->lens[c->argc] = (size_t)keyspace_key(c->keys[i], event, elen, life_keys[i]);
        c->argv[c->argc++] = c->keys[i];
    }
    if (!life_arg(c, 0, op, strlen(op)) || !life_arg(c, 1, event, elen) ||
        (a1 != NULL && !life_arg(c, 2, a1, strlen(a1))) ||
        (a2 != NULL && !life_arg(c, 3, a2, strlen(a2)))) {
        free(c);
        fn(NULL, "too long", data);
        return;
    }
    life_send(c);
}

static void ignore_reply(redisReply *r, const char *err, void *data)
{
    (void)r;
    (void)err;
    (void)data;
}

/* JetStream has the transition: its {E}:tpending entry may go (if this fails, reconciliation
 * republishes a duplicate that JetStream and SQLite both drop). */
static void tpending_done(worker_t *w, const char *event, size_t elen, const char *id)
{
    if (w->redis == NULL)
        return;
    char key[KEYSPACE_KEY_MAX];
    int n = keyspace_key(key, event, elen, KEYSPACE_TPENDING);
    const char *argv[] = {"HDEL", key, id};
    size_t lens[] = {4, (size_t)n, strlen(id)};
    redis_command(w->redis, ignore_reply, NULL, 3, argv, lens);
}

/* Publishes a transition: subject orders.<event>, Nats-Msg-Id "<id>:<state>". 0 or -1 (cb is
 * then not called). */
static int publish_transition(worker_t *w, const char *event, const char *id, const char *state,
                              const char *payload, size_t len, orders_ack_fn cb, void *data)
{
    char msgid[KEYSPACE_MSG_ID_MAX + 1];
    int n = snprintf(msgid, sizeof(msgid), "%s:%s", id, state);
    if (n < 0 || (size_t)n >= sizeof(msgid) || w->orders == NULL)
        return -1;
    const char *hdr[2] = {ORDERS_HDR_TRANSITION, state};
    return orders_publish_hdr(w->orders, event, msgid, payload, len, hdr, 1, cb, data);
}

/* ---- POST /v1/orders/{id}/pay, DELETE /v1/orders/{id} ---- */

typedef struct life_op {
    worker_t *w;
    http_request_t *req;
    bool pay;
    char id[KEYSPACE_ORDER_ID_MAX + 1];
    char event[SNATCH_NAME_MAX + 1];
    size_t elen;
    char verdict[16], state[16];
    int64_t at, until;
} life_op_t;

static void op_finish(life_op_t *op)
{
    op->w->inflight--;
    free(op);
}

/* durable: JetStream has the transition this answer speaks of (else 202: reconciliation will
 * publish it from {E}:tpending). */
static void op_answer(life_op_t *op, bool durable)
{
    http_request_t *req = op->req;
    if (strcmp(op->verdict, "ok") == 0 || strcmp(op->verdict, "done") == 0) {
        char body[256];
        size_t pos = 0;
        memcpy(body, "{\"order_id\":", 12);
        pos = 12;
        util_json_str(body, sizeof(body), &pos, op->id, strlen(op->id));
        pos += (size_t)snprintf(body + pos, sizeof(body) - pos, ",\"status\":\"%s\"", op->state);
        if (op->at > 0)
            pos += (size_t)snprintf(body + pos, sizeof(body) - pos, ",\"at\":%" PRId64, op->at);
        body[pos++] = '}';
        reply_json(req, ROUTE_ORDER, durable ? 200 : 202, body, pos);
    } else if (strcmp(op->verdict, "conflict") == 0) {
        char reason[32], detail[96];
        snprintf(reason, sizeof(reason), "order_%s", op->state);
        snprintf(detail, sizeof(detail), "the order is %s", op->state);
        reply_error(req, ROUTE_ORDER, 409, reason, detail);
    } else if (strcmp(op->verdict, "forbidden") == 0) {
        reply_error(req, ROUTE_ORDER, 403, "forbidden", "only the buyer holding it may cancel");
    } else if (strcmp(op->verdict, "unknown") == 0) {
        reply_error(req, ROUTE_ORDER, 404, "unknown_order", NULL);
    } else {
        reply_error(req, ROUTE_ORDER, 503, "unavailable", NULL);
    }
    op_finish(op);
}

static void on_op_acked(int status, void *data)
{
    life_op_t *op = data;
    if (status == 0)
        tpending_done(op->w, op->event, op->elen, op->id);
    op_answer(op, status == 0);
}

static void on_op_decided(redisReply *r, const char *err, void *data)
{
    life_op_t *op = data;
    (void)err;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        redis_reply_str(r, 0, op->verdict, sizeof(op->verdict)) != 0) {
        if (r != NULL && r->type == REDIS_REPLY_ERROR)
            log_error("life: order script error: %s", r->str);
        snprintf(op->verdict, sizeof(op->verdict), "error");
        op_answer(op, false);
        return;
    }
    if (r->elements >= 4) {
        if (redis_reply_str(r, 1, op->state, sizeof(op->state)) != 0)
            op->state[0] = '\0';
        op->at = redis_reply_int(r, 2);
        op->until = redis_reply_int(r, 3);
    }
    /* A transition this call decided (or found decided and not yet acknowledged): told to
     * nobody before JetStream has it. */
    if (r->elements >= 5 && r->element[4]->type == REDIS_REPLY_STRING) {
        const redisReply *p = r->element[4];
        if (publish_transition(op->w, op->event, op->id, op->state, p->str, p->len, on_op_acked,
                               op) == 0)
            return;
        op_answer(op, false);
        return;
    }
    op_answer(op, true);
}

/* Validates id and starts the op. buyer: the cancelling buyer (NULL for a payment). */
static void op_start(worker_t *w, http_request_t *req, const char *id, size_t len, bool pay,
                     const char *buyer)
{
    const char *event;
    size_t elen;
    if ((event = keyspace_order_event(id, len, &elen)) == NULL) {
        reply_error(req, ROUTE_ORDER, 400, "bad_request", "invalid order id");
        return;
    }
    if (w->redis == NULL || !redis_client_ready(w->redis) || w->life_src == NULL) {
        reply_error(req, ROUTE_ORDER, 503, "unavailable", NULL);
        return;
    }
    life_op_t *op = calloc(1, sizeof(*op));
    if (op == NULL) {
        reply_error(req, ROUTE_ORDER, 503, "unavailable", NULL);
        return;
    }
    op->w = w;
    op->req = req;
    op->pay = pay;
    memcpy(op->id, id, len);
    memcpy(op->event, event, elen);
    op->elen = elen;
    w->inflight++;
    life_eval(w, pay ? "pay" : "cancel", op->event, elen, op->id, buyer, on_op_decided, op);
}

void life_pay(worker_t *w, http_request_t *req, const char *id, size_t len)
{
    if (w->host->cfg.payment_token_len == 0) {
        reply_error(req, ROUTE_ORDER, 403, "forbidden",
                    "payments disabled: no --payment-token-file");
        return;
    }
    if (!token_gate_check(req, ROUTE_ORDER, "snatch.payauth:", w->host->cfg.payment_token,
                          w->host->cfg.payment_token_len, "the payment token is required"))
        return;
    op_start(w, req, id, len, true, NULL);
}

void life_cancel(worker_t *w, http_request_t *req, const char *id, size_t len)
{
    const char *user;
    size_t ulen;
    char buyer[SNATCH_NAME_MAX + 1];
    caller_buyer_t bv = caller_buyer(req, &user, &ulen);
    if (bv == CALLER_BUYER_QUERY_REFUSED) {
        caller_buyer_error(req, ROUTE_ORDER, bv);
        return;
    }
    if (bv == CALLER_BUYER_NONE || !util_valid_name(user, ulen, SNATCH_NAME_MAX)) {
        reply_error(req, ROUTE_ORDER, 403, "forbidden", "only the buyer holding it may cancel");
        return;
    }
    memcpy(buyer, user, ulen);
    buyer[ulen] = '\0';
    op_start(w, req, id, len, false, buyer);
}

/* ---- GET /v1/orders/{id} ---- */

typedef struct life_view {
    http_request_t *req;
    char buyer[SNATCH_NAME_MAX + 1]; /* "" for the admin token */
    char id[KEYSPACE_ORDER_ID_MAX + 1];
} life_view_t;

/* True when the order's JSON ("user" field) belongs to buyer. */
static bool record_of(const char *rec, size_t len, const char *buyer)
{
    json_t *root = json_loadb(rec, len, 0, NULL);
    const char *u = json_string_value(json_object_get(root, "user"));
    bool mine = u != NULL && strcmp(u, buyer) == 0;
    json_decref(root);
    return mine;
}

/* The order's JSON with the state's fields added before its closing brace. state: order.lua's
 * "held <until> ..." or "<state> <at> <until>". */
static void reply_with_state(http_request_t *req, const char *rec, size_t len, const redisReply *st)
{
    char name[16] = "";
    long long a = 0, b = 0;
    char extra[160];
    int n;
    if (sscanf(st->str, "%15s %lld %lld", name, &a, &b) < 2) {
        reply_json(req, ROUTE_ORDER, 200, rec, len);
        return;
    }
    if (strcmp(name, "held") == 0)
        n = snprintf(extra, sizeof(extra), ",\"status\":\"held\",\"hold_until\":%lld}", a);
    else if (b > 0)
        n = snprintf(extra, sizeof(extra),
                     ",\"status\":\"%s\",\"status_at\":%lld,\"hold_until\":%lld}", name, a, b);
    else
        n = snprintf(extra, sizeof(extra), ",\"status\":\"%s\",\"status_at\":%lld}", name, a);
    size_t cut = len;
    while (cut > 0 && rec[cut - 1] != '}')
        cut--;
    char *body = malloc(len + (size_t)n + 1);
    if (cut == 0 || body == NULL) {
        free(body);
        reply_json(req, ROUTE_ORDER, 200, rec, len);
        return;
    }
    memcpy(body, rec, cut - 1);
    memcpy(body + cut - 1, extra, (size_t)n);
    reply_json(req, ROUTE_ORDER, 200, body, cut - 1 + (size_t)n);
    free(body);
}

static void on_view(redisReply *r, const char *err, void *data)
{
    life_view_t *v = data;
    (void)err;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
        reply_error(v->req, ROUTE_ORDER, 503, "unavailable", NULL);
        goto out;
    }
    const redisReply *rec = r->element[0], *st = r->element[1];
    char buf[ORDER_RECORD_JSON_MAX];
    const char *json = NULL;
    int len = -1;
    if (rec->type == REDIS_REPLY_STRING &&
        (len = order_record_json(v->id, strlen(v->id), rec->str, rec->len, buf, sizeof(buf),
                                 &json)) < 0) {
        /* Nobody's order then: the admin token is told it is broken. */
        log_warn("life: order %s: unreadable record in Redis", v->id);
        if (v->buyer[0] == '\0') {
            reply_error(v->req, ROUTE_ORDER, 500, "internal", "the order record is unreadable");
            goto out;
        }
    }
    /* Someone else's order is answered exactly like a missing one: ids are sequential, and a
     * 403 would confirm to a prober that the neighbouring id exists. */
    if (len < 0 || (v->buyer[0] != '\0' && !record_of(json, (size_t)len, v->buyer)))
        reply_error(v->req, ROUTE_ORDER, 404, "unknown_order", NULL);
    else if (st->type != REDIS_REPLY_STRING) /* paid at once: the record as it always was */
        reply_json(v->req, ROUTE_ORDER, 200, json, (size_t)len);
    else
        reply_with_state(v->req, json, (size_t)len, st);
out:
    free(v);
}

void life_get(worker_t *w, http_request_t *req, const char *id, size_t len, const char *buyer)
{
    size_t elen;
    const char *event = keyspace_order_event(id, len, &elen);
    life_view_t *v = event != NULL && w->life_src != NULL ? malloc(sizeof(*v)) : NULL;
    if (v == NULL) {
        reply_error(req, ROUTE_ORDER, 503, "unavailable", NULL);
        return;
    }
    v->req = req;
    snprintf(v->buyer, sizeof(v->buyer), "%s", buyer);
    memcpy(v->id, id, len);
    v->id[len] = '\0';
    life_eval(w, "get", event, elen, v->id, NULL, on_view, v);
}

/* ---- the expiry sweeper ---- */

struct life_sweeper {
    worker_t *w;
    uv_timer_t timer;
    uint64_t interval_ms;
    char **events; /* this round's events (SMEMBERS snatch:events) */
    size_t n, next;
    int outstanding; /* Redis replies and acks still to come */
    bool busy;       /* a round is under way */
    bool stopping;
    bool timer_closed;
};

typedef struct expired {
    life_sweeper_t *s;
    size_t elen;
    char event[SNATCH_NAME_MAX + 1];
    char id[KEYSPACE_ORDER_ID_MAX + 1];
} expired_t;

static void sweep_next(life_sweeper_t *s);

static void drop_events(life_sweeper_t *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->events[i]);
    free(s->events);
    s->events = NULL;
    s->n = s->next = 0;
}

static void maybe_free(life_sweeper_t *s)
{
    if (!s->stopping || !s->timer_closed || s->outstanding > 0)
        return;
    drop_events(s);
    free(s);
}

static void on_expiry_acked(int status, void *data)
{
    expired_t *e = data;
    life_sweeper_t *s = e->s;
    if (status == 0)
        tpending_done(s->w, e->event, e->elen, e->id);
    s->outstanding--;
    free(e);
    maybe_free(s);
}

static void publish_expiry(life_sweeper_t *s, const char *event, const redisReply *id,
                           const redisReply *payload)
{
    expired_t *e = calloc(1, sizeof(*e));
    if (e == NULL || id->type != REDIS_REPLY_STRING || payload->type != REDIS_REPLY_STRING ||
        id->len > KEYSPACE_ORDER_ID_MAX) {
        free(e);
        return; /* left in {E}:tpending for reconciliation */
    }
    e->s = s;
    e->elen = strlen(event);
    memcpy(e->event, event, e->elen);
    memcpy(e->id, id->str, id->len);
    if (publish_transition(s->w, event, e->id, "expired", payload->str, payload->len,
                           on_expiry_acked, e) != 0) {
        free(e);
        return;
    }
    s->outstanding++;
}

static void on_expired(redisReply *r, const char *err, void *data)
{
    life_sweeper_t *s = data;
    (void)err;
    s->outstanding--;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        if (r != NULL && r->type == REDIS_REPLY_ERROR)
            log_error("life: expiry script error: %s", r->str);
        s->next = s->n; /* Redis is failing: this round ends, the next tick tries again */
    } else {
        const char *event = s->events[s->next];
        for (size_t i = 0; i + 1 < r->elements && !s->stopping; i += 2)
            publish_expiry(s, event, r->element[i], r->element[i + 1]);
        if (r->elements > 0)
            log_info("life: %s: %zu held orders expired, their units back on sale", event,
                     r->elements / 2);
        /* A full batch: more may be due; the same event goes again, one bounded EVAL at a time. */
        if (r->elements < 2 * LIFE_SWEEP_BATCH)
            s->next++;
    }
    sweep_next(s);
}

static void sweep_next(life_sweeper_t *s)
{
    worker_t *w = s->w;
    if (s->stopping || s->next >= s->n || w->redis == NULL) {
        drop_events(s);
        s->busy = false;
        maybe_free(s);
        return;
    }
    const char *event = s->events[s->next];
    char max[16];
    snprintf(max, sizeof(max), "%d", LIFE_SWEEP_BATCH);
    s->outstanding++;
    life_eval(w, "expire", event, strlen(event), max, NULL, on_expired, s);
}

static void on_events(redisReply *r, const char *err, void *data)
{
    life_sweeper_t *s = data;
    (void)err;
    s->outstanding--;
    if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements > 0 && !s->stopping) {
        s->events = calloc(r->elements, sizeof(*s->events));
        for (size_t i = 0; s->events != NULL && i < r->elements; i++) {
            const redisReply *e = r->element[i];
            if (e->type != REDIS_REPLY_STRING || !util_valid_name(e->str, e->len, SNATCH_NAME_MAX))
                continue;
            if ((s->events[s->n] = strdup(e->str)) != NULL)
                s->n++;
        }
    }
    sweep_next(s);
}

static void on_tick(uv_timer_t *t)
{
    life_sweeper_t *s = t->data;
    worker_t *w = s->w;
    if (s->busy || s->stopping || w->redis == NULL || !redis_client_ready(w->redis))
        return;
    s->busy = true;
    s->outstanding++;
    const char *argv[] = {"SMEMBERS", KEYSPACE_EVENTS};
    size_t lens[] = {8, strlen(KEYSPACE_EVENTS)};
    redis_command(w->redis, on_events, s, 2, argv, lens);
}

life_sweeper_t *life_sweeper_start(worker_t *w, uint64_t interval_ms)
{
    if (interval_ms == 0 || w->life_src == NULL)
        return NULL;
    life_sweeper_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->w = w;
    s->interval_ms = interval_ms;
    uv_timer_init(&w->loop, &s->timer);
    s->timer.data = s;
    uv_timer_start(&s->timer, on_tick, interval_ms, interval_ms);
    return s;
}

static void on_timer_closed(uv_handle_t *h)
{
    life_sweeper_t *s = h->data;
    s->timer_closed = true;
    maybe_free(s);
}

void life_sweeper_stop(life_sweeper_t *s)
{
    if (s == NULL || s->stopping)
        return;
    s->stopping = true;
    uv_timer_stop(&s->timer);
    uv_close((uv_handle_t *)&s->timer, on_timer_closed);
}
