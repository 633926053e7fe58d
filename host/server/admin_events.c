/* Live administration of events: PATCH /admin/events/{e} (stock, per_user_limit),
 * POST /admin/events/{e}/pause and /resume, GET /admin/events. Each change is one script in
 * Redis, so it is ordered with every deduction (deduct.lua): a stock cut can never fall below
 * what a concurrent batch just sold, and a pause stops the very next batch on every host. This
 * host applies the answer to its local view at once; the others follow at their next refresh
 * (events.c, every 0.5 s): a stock increase or a resume lifts their sold-out or paused flag. */
#include "admin_events.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "events.h"
#include "keyspace.h"
#include "log.h"
#include "metrics.h"
#include "reply.h"
#include "stock.h"
#include "token_gate.h"
#include "util.h"

#define STOCK_MAX 1000000000000LL
#define LIMIT_MAX 1000000

/* ARGV: stock, per_user_limit, paused ("" = unchanged). "Taken" is every unit the sale has given
 * out and not got back: sold counts them all, paid and held alike (deduct.lua counts a held order
 * in sold, lua/order.lua takes a released one out), so a cut below it would oversell. Returns the
 * event's meta after the change. */
static const char UPDATE_SCRIPT[] =
    "if redis.call('HEXISTS', KEYS[1], 'stock') == 0 then return redis.error_reply('UNKNOWN') "
    "end\n"
    "if ARGV[1] ~= '' then\n"
    "  local taken = tonumber(redis.call('HGET', KEYS[1], 'sold')) or 0\n"
    "  if tonumber(ARGV[1]) < taken then return redis.error_reply('BELOW ' .. taken) end\n"
    "  redis.call('HSET', KEYS[1], 'stock', ARGV[1])\n"
    "end\n"
    "if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'limit', ARGV[2]) end\n"
    "if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'paused', ARGV[3]) end\n"
    "return redis.call('HMGET', KEYS[1], 'stock', 'sold', 'limit', 'gen', 'paused', "
    "'sold_before')\n";

static worker_t *worker_of(http_request_t *req)
{
    return req->server_data;
}

static bool redis_usable(worker_t *w)
{
    return w->redis != NULL && redis_client_ready(w->redis);
}

/* One event's counters as {E}:meta holds them. */
typedef struct meta {
    int64_t stock, sold, limit, gen, sold_before;
    bool paused;
} meta_t;

/* r: HMGET stock sold limit gen paused sold_before. Returns false when the event has no meta. */
static bool meta_read(const redisReply *r, meta_t *m)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 6 ||
        r->element[0]->type != REDIS_REPLY_STRING)
        return false;
    m->stock = redis_reply_int(r, 0);
    m->sold = redis_reply_int(r, 1);
    m->limit = redis_reply_int(r, 2);
    m->gen = redis_reply_int(r, 3);
    m->paused = redis_reply_int(r, 4) == 1;
    m->sold_before = redis_reply_int(r, 5);
    if (m->sold < 0)
        m->sold = 0;
    if (m->sold_before < 0)
        m->sold_before = 0;
    if (m->gen < 0)
        m->gen = 0;
    if (m->limit < 1)
        m->limit = 1;
    return m->stock >= 0;
}

/* Appends {"event":..,counters..} to buf (cap bytes, room checked by the caller: 512 bytes per
 * event is more than one takes). local: this host's view too. */
static void meta_json(char *buf, size_t cap, size_t *pos, const char *event, size_t len,
                      const meta_t *m, bool local)
{
    int64_t remaining = m->stock - m->sold > 0 ? m->stock - m->sold : 0;
    memcpy(buf + *pos, "{\"event\":", 9);
    *pos += 9;
    util_json_str(buf, cap, pos, event, len);
    *pos += (size_t)snprintf(buf + *pos, cap - *pos,
                             ",\"stock\":%" PRId64 ",\"sold\":%" PRId64 ",\"remaining\":%" PRId64
                             ",\"per_user_limit\":%" PRId64 ",\"paused\":%s,\"generation\":%" PRId64
                             ",\"sold_before\":%" PRId64,
                             m->stock, m->sold, remaining, m->limit, m->paused ? "true" : "false",
                             m->gen, m->sold_before);
    if (local) {
        stock_event_t *ev = stock_find(event, len);
        stock_view_t v = {0};
        if (ev != NULL)
            stock_view(ev, &v);
        *pos += (size_t)snprintf(buf + *pos, cap - *pos,
                                 ",\"local_quota\":%" PRId64 ",\"local_left\":%" PRId64, v.quota,
                                 v.left < 0 ? 0 : v.left);
    }
    buf[(*pos)++] = '}';
}

/* ---- PATCH /admin/events/{e}, POST /admin/events/{e}/pause|resume ---- */

/* One rule for both bodies. put: stock is required and an absent per_user_limit means 1;
 * otherwise (PATCH) either may be absent (-1), not both. Outputs are written on success only. */
const char *admin_parse_event_fields(const char *body, size_t len, bool put, int64_t *stock,
                                     int64_t *limit)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    const char *why = NULL;
    if (root == NULL)
        return "body is not valid JSON";
    if (!json_is_object(root)) {
        why = "body must be a JSON object";
        goto out;
    }
    json_t *s = json_object_get(root, "stock");
    json_t *l = json_object_get(root, "per_user_limit");
    if ((put || s != NULL) &&
        (!json_is_integer(s) || json_integer_value(s) < 0 || json_integer_value(s) > STOCK_MAX)) {
        why = "stock must be an integer from 0 to 10^12";
        goto out;
    }
    if (l != NULL &&
        (!json_is_integer(l) || json_integer_value(l) < 1 || json_integer_value(l) > LIMIT_MAX)) {
        why = "per_user_limit must be an integer from 1 to 10^6";
        goto out;
    }
    if (s == NULL && l == NULL) {
        why = "nothing to change: give stock, per_user_limit or both";
        goto out;
    }
    if (json_object_size(root) != (size_t)(s != NULL) + (size_t)(l != NULL)) {
        why = "unknown field: only stock and per_user_limit";
        goto out;
    }
    *stock = s != NULL ? json_integer_value(s) : -1;
    *limit = l != NULL ? json_integer_value(l) : (put ? 1 : -1);
out:
    json_decref(root);
    return why;
}

const char *admin_parse_patch_body(const char *body, size_t len, int64_t *stock, int64_t *limit)
{
    const char *why = admin_parse_event_fields(body, len, false, stock, limit);
    if (why != NULL)
        *stock = *limit = -1;
    return why;
}

typedef struct update {
    http_request_t *req;
    worker_t *w;
    size_t len;
    char event[SNATCH_NAME_MAX + 1];
    char what[48]; /* for the log line */
} update_t;

static void on_updated(redisReply *r, const char *err, void *data)
{
    update_t *u = data;
    (void)err;
    meta_t m;
    if (r == NULL) {
        reply_error(u->req, ROUTE_ADMIN_EVENT, 503, "unavailable", NULL);
        goto out;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        /* Redis may put "ERR " in front of a script's error. */
        const char *below = strstr(r->str, "BELOW ");
        if (strstr(r->str, "UNKNOWN") != NULL) {
            reply_error(u->req, ROUTE_ADMIN_EVENT, 404, "unknown_event", NULL);
        } else if (below != NULL) {
            char detail[96];
            snprintf(detail, sizeof(detail),
                     "stock cannot go below the %.24s units already sold or held", below + 6);
            reply_error(u->req, ROUTE_ADMIN_EVENT, 409, "stock_below_sold", detail);
        } else {
            reply_error(u->req, ROUTE_ADMIN_EVENT, 503, "unavailable", r->str);
        }
        goto out;
    }
    if (!meta_read(r, &m)) {
        reply_error(u->req, ROUTE_ADMIN_EVENT, 503, "unavailable", "unexpected reply");
        goto out;
    }
    /* This host follows at once; the others at their next refresh. */
    events_apply_meta(u->w, u->event, u->len, m.stock, m.sold, m.limit, m.gen, m.paused);
    log_info("admin: event %s %s: stock %" PRId64 ", sold %" PRId64 ", per_user_limit %" PRId64
             ", paused %d",
             u->event, u->what, m.stock, m.sold, m.limit, m.paused);
    char body[512];
    size_t pos = 0;
    meta_json(body, sizeof(body), &pos, u->event, u->len, &m, false);
    reply_json(u->req, ROUTE_ADMIN_EVENT, 200, body, pos);
out:
    free(u);
}

/* Runs UPDATE_SCRIPT; stock, limit < 0 and paused < 0 mean unchanged. */
static void update(http_request_t *req, const char *event, size_t len, int64_t stock, int64_t limit,
                   int paused, const char *what)
{
    worker_t *w = worker_of(req);
    if (!redis_usable(w)) {
        reply_error(req, ROUTE_ADMIN_EVENT, 503, "unavailable", NULL);
        return;
    }
    update_t *u = malloc(sizeof(*u));
    if (u == NULL) {
        reply_error(req, ROUTE_ADMIN_EVENT, 503, "unavailable", NULL);
        return;
    }
    u->req = req;
    u->w = w;
    u->len = len;
    memcpy(u->event, event, len);
    u->event[len] = '\0';
    snprintf(u->what, sizeof(u->what), "%s", what);
    char key[KEYSPACE_KEY_MAX], s[24] = "", l[24] = "", p[2] = "";
    if (stock >= 0)
        snprintf(s, sizeof(s), "%" PRId64, stock);
    if (limit >= 0)
        snprintf(l, sizeof(l), "%" PRId64, limit);
    if (paused >= 0)
        p[0] = paused ? '1' : '0';
    int kn = keyspace_key(key, event, len, KEYSPACE_META);
    const char *argv[] = {"EVAL", UPDATE_SCRIPT, "1", key, s, l, p};
    size_t lens[] = {4, sizeof(UPDATE_SCRIPT) - 1, 1, (size_t)kn, strlen(s), strlen(l), strlen(p)};
    redis_command(w->redis, on_updated, u, 7, argv, lens);
}

void admin_patch_event(http_request_t *req, const char *event, size_t len)
{
    if (!token_gate_admin(req, ROUTE_ADMIN_EVENT))
        return;
    if (!util_valid_name(event, len, SNATCH_NAME_MAX)) {
        reply_error(req, ROUTE_ADMIN_EVENT, 400, "bad_request", "invalid event name");
        return;
    }
    int64_t stock, limit;
    const char *why = admin_parse_patch_body(req->body, req->body_len, &stock, &limit);
    if (why != NULL) {
        reply_error(req, ROUTE_ADMIN_EVENT, 400, "bad_request", why);
        return;
    }
    update(req, event, len, stock, limit, -1, "changed");
}

void admin_pause_event(http_request_t *req, const char *event, size_t len, bool pause)
{
    if (!token_gate_admin(req, ROUTE_ADMIN_EVENT))
        return;
    if (!util_valid_name(event, len, SNATCH_NAME_MAX)) {
        reply_error(req, ROUTE_ADMIN_EVENT, 400, "bad_request", "invalid event name");
        return;
    }
    update(req, event, len, -1, -1, pause ? 1 : 0, pause ? "paused" : "resumed");
}

/* ---- GET /admin/events ---- */

typedef struct listing {
    http_request_t *req;
    worker_t *w;
    size_t n, waiting;
    bool failed;
    char **names;  /* n, sorted */
    meta_t *metas; /* n */
    bool *known;   /* n: the meta exists (an index entry without meta is left out) */
} listing_t;

typedef struct list_item {
    listing_t *l;
    size_t i;
} list_item_t;

static void listing_free(listing_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->names[i]);
    free(l->names);
    free(l->metas);
    free(l->known);
    free(l);
}

static void listing_answer(listing_t *l)
{
    if (l->failed) {
        reply_error(l->req, ROUTE_ADMIN_EVENT, 503, "unavailable", NULL);
        return;
    }
    size_t cap = 32 + l->n * 512, pos = 0;
    char *body = malloc(cap);
    if (body == NULL) {
        reply_error(l->req, ROUTE_ADMIN_EVENT, 503, "unavailable", NULL);
        return;
    }
    memcpy(body, "{\"events\":[", 11);
    pos = 11;
    size_t out = 0;
    for (size_t i = 0; i < l->n; i++) {
        if (!l->known[i])
            continue;
        if (out++ > 0)
            body[pos++] = ',';
        meta_json(body, cap, &pos, l->names[i], strlen(l->names[i]), &l->metas[i], true);
    }
    memcpy(body + pos, "]}", 2);
    pos += 2;
    reply_json(l->req, ROUTE_ADMIN_EVENT, 200, body, pos);
    free(body);
}

/* One awaited reply fewer; the last one answers. */
static void list_done(listing_t *l)
{
    if (--l->waiting > 0)
        return;
    listing_answer(l);
    listing_free(l);
}

static void on_list_meta(redisReply *r, const char *err, void *data)
{
    list_item_t *it = data;
    listing_t *l = it->l;
    (void)err;
    if (r == NULL || r->type == REDIS_REPLY_ERROR)
        l->failed = true;
    else
        l->known[it->i] = meta_read(r, &l->metas[it->i]);
    free(it);
    list_done(l);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void on_list_index(redisReply *r, const char *err, void *data)
{
    listing_t *l = data;
    (void)err;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        reply_error(l->req, ROUTE_ADMIN_EVENT, 503, "unavailable", NULL);
        listing_free(l);
        return;
    }
    size_t n = r->elements;
    l->names = calloc(n + 1, sizeof(*l->names));
    l->metas = calloc(n + 1, sizeof(*l->metas));
    l->known = calloc(n + 1, sizeof(*l->known));
    if (l->names == NULL || l->metas == NULL || l->known == NULL)
        goto nomem;
    /* Only valid names: the index may hold one written by hand, and it would make a bad key. */
    for (size_t i = 0; i < n; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING || !util_valid_name(e->str, e->len, SNATCH_NAME_MAX))
            continue;
        if ((l->names[l->n] = strndup(e->str, e->len)) == NULL)
            goto nomem;
        l->n++;
    }
    if (l->n == 0) {
        listing_answer(l);
        listing_free(l);
        return;
    }
    qsort(l->names, l->n, sizeof(*l->names), by_name);
    /* One HMGET per event, all pipelined on the connection; the answer goes with the last. The
     * loop holds one count of its own: a callback may run at once (not connected), and the
     * listing must outlive the loop. */
    l->waiting = l->n + 1;
    size_t n_names = l->n;
    for (size_t i = 0; i < n_names; i++) {
        list_item_t *it = malloc(sizeof(*it));
        char key[KEYSPACE_KEY_MAX];
        size_t len = strlen(l->names[i]);
        if (it == NULL) {
            l->failed = true;
            l->waiting--;
            continue;
        }
        it->l = l;
        it->i = i;
        int kn = keyspace_key(key, l->names[i], len, KEYSPACE_META);
        const char *argv[] = {"HMGET", key,   "stock",  "sold",
                              "limit", "gen", "paused", "sold_before"};
        size_t lens[] = {5, (size_t)kn, 5, 4, 5, 3, 6, 11};
        redis_command(l->w->redis, on_list_meta, it, 8, argv, lens);
    }
    list_done(l);
    return;
nomem:
    reply_error(l->req, ROUTE_ADMIN_EVENT, 503, "unavailable", NULL);
    listing_free(l);
}

void admin_list_events(http_request_t *req)
{
    worker_t *w = worker_of(req);
    if (!token_gate_admin(req, ROUTE_ADMIN_EVENT))
        return;
    if (!redis_usable(w)) {
        reply_error(req, ROUTE_ADMIN_EVENT, 503, "unavailable", NULL);
        return;
    }
    listing_t *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        reply_error(req, ROUTE_ADMIN_EVENT, 503, "unavailable", NULL);
        return;
    }
    l->req = req;
    l->w = w;
    const char *argv[] = {"SMEMBERS", KEYSPACE_EVENTS};
    size_t lens[] = {8, strlen(KEYSPACE_EVENTS)};
    redis_command(w->redis, on_list_index, l, 2, argv, lens);
}
