/* Group commit of deductions (see deduct_batch.h). Per event: a FIFO of buyers waiting and at
 * most DEDUCT_MAX_INFLIGHT batches in flight. A batch is capped in buyers and bytes so that the
 * script's run (which blocks Redis) and its reply stay short. */
#include "deduct_batch.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keyspace.h"
#include "metrics.h"
#include "util.h"

/* One batch in flight per event and thread: every buyer who arrives meanwhile goes with the next
 * one. More in flight would split the same buyers into smaller batches (overridable at build
 * time for measurements). */
#ifndef DEDUCT_MAX_INFLIGHT
#define DEDUCT_MAX_INFLIGHT 1
#endif
#define BATCH_MAX 256         /* buyers per batch */
#define BATCH_BYTES_MAX 32768 /* user names and quantities per batch */
#define ACKS_RIDE_MAX 512     /* acknowledged entries per batch */
#define EVENT_BUCKETS 256
/* Buyer records kept for reuse: a buyer costs no malloc in steady state. */
#define SPARE_MAX 1024
#define QTY_LEN 24
#define ID_CAP (KEYSPACE_ORDER_ID_MAX + 1)
/* deduct.lua's ARGV before the buyers: event, host_id, deadline_ms, n, hold_ms, keep,
 * idem_window_ms; then (user, qty, idempotency key) per buyer. */
#define ARGS_HEAD 7
#define ARGS_BUYER 3
#define ARGC_MAX (KEYSPACE__COUNT + ARGS_HEAD + ARGS_BUYER * BATCH_MAX + ACKS_RIDE_MAX)

const char deduct_err_closing[] = "closing";
const char deduct_err_nomem[] = "out of memory";
const char deduct_err_script[] = "deduct script error";
const char deduct_err_bad_reply[] = "unexpected deduct reply";

typedef struct buyer {
    struct buyer *next;
    deduct_fn cb;
    void *data;
    deduct_result_t res; /* decoded from the reply; answered once WAIT said how safe it is */
    char id[ID_CAP];
    char host[SNATCH_NAME_MAX + 1]; /* a replayed order's selling host (res.host) */
    char verdict[24];
    size_t user_len;
    char qty[QTY_LEN];
    size_t qty_len;
    char user[SNATCH_NAME_MAX + 1];
    size_t key_len;
    char key[DEDUCT_IDEM_KEY_MAX + 1];
} buyer_t;

typedef struct ev_state {
    struct ev_state *next; /* hash chain */
    buyer_t *head, *tail;
    size_t queued;
    int inflight;
    size_t len;
    char name[SNATCH_NAME_MAX + 1];
} ev_state_t;

struct deduct_batcher {
    redis_client_t *redis;
    pending_t *pending;
    char host_id[SNATCH_NAME_MAX + 1];
    uint64_t timeout_ms;
    char hold_ms[24], window_ms[24];
    int64_t hold, window; /* what hold_ms and window_ms say */
    bool keep;
    int replicas;    /* deduct_batcher_set_replicas */
    int outstanding; /* batches whose reply is still to come */
    bool closing;
    ev_state_t *buckets[EVENT_BUCKETS];
    buyer_t *spare; /* free buyer records, linked by next */
    size_t n_spare;
    /* send_batch's argument vectors, reused: redis_eval copies what it sends, so they are free
     * again as soon as it returns (~60 KiB that would otherwise be allocated per batch). */
    const char *argv[ARGC_MAX];
    size_t lens[ARGC_MAX];
    char acks[ACKS_RIDE_MAX][ID_CAP];
};

typedef struct batch {
    deduct_batcher_t *b;
    ev_state_t *ev;
    buyer_t *head;
    size_t n;
    int replicas; /* WAIT for this many after the reply; 0: none */
} batch_t;

static void send_batch(deduct_batcher_t *b, ev_state_t *ev);

static size_t hash_name(const char *s, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h % EVENT_BUCKETS;
}

static ev_state_t *find_event(const deduct_batcher_t *b, const char *name, size_t len)
{
    for (ev_state_t *e = b->buckets[hash_name(name, len)]; e != NULL; e = e->next)
        if (e->len == len && memcmp(e->name, name, len) == 0)
            return e;
    return NULL;
}

static ev_state_t *event_state(deduct_batcher_t *b, const char *name, size_t len)
{
    ev_state_t *e = find_event(b, name, len);
    if (e != NULL || len > SNATCH_NAME_MAX)
        return e;
    if ((e = calloc(1, sizeof(*e))) == NULL)
        return NULL;
    memcpy(e->name, name, len);
    e->len = len;
    size_t h = hash_name(name, len);
    e->next = b->buckets[h];
    b->buckets[h] = e;
    return e;
}

/* pending.c's carrier: while the event sells (a batch in flight or buyers queued), its next
 * batch takes the acknowledged ids along; an HDEL of their own waits until it goes quiet. Under
 * load the buyers who will make that batch are often still on their way when pending.c looks,
 * and asking for queued buyers too cost an HDEL per batch. */
static bool will_send(void *arg, const char *event, size_t len)
{
    const ev_state_t *ev = find_event(arg, event, len);
    return ev != NULL && (ev->inflight > 0 || ev->queued > 0);
}

static buyer_t *buyer_get(deduct_batcher_t *b)
{
    buyer_t *by = b->spare;
    if (by == NULL)
        return malloc(sizeof(*by));
    b->spare = by->next;
    b->n_spare--;
    return by;
}

static void buyer_put(deduct_batcher_t *b, buyer_t *by)
{
    if (b->n_spare >= SPARE_MAX) {
        free(by);
        return;
    }
    by->next = b->spare;
    b->spare = by;
    b->n_spare++;
}

static void maybe_free(deduct_batcher_t *b)
{
    if (!b->closing || b->outstanding > 0)
        return;
    while (b->spare != NULL) {
        buyer_t *by = b->spare;
        b->spare = by->next;
        free(by);
    }
    for (size_t i = 0; i < EVENT_BUCKETS; i++) {
        ev_state_t *e = b->buckets[i];
        while (e != NULL) {
            ev_state_t *next = e->next;
            free(e);
            e = next;
        }
    }
    free(b);
}

deduct_batcher_t *deduct_batcher_new(redis_client_t *redis, pending_t *pending, const char *host_id,
                                     uint64_t timeout_ms)
{
    deduct_batcher_t *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    b->redis = redis;
    b->pending = pending;
    snprintf(b->host_id, sizeof(b->host_id), "%s", host_id);
    b->timeout_ms = timeout_ms;
    b->hold = -1;
    deduct_batcher_set_life(b, 0, false, 3600 * 1000);
    b->replicas = -1;
    pending_set_carrier(pending, will_send, b);
    return b;
}

void deduct_batcher_set_life(deduct_batcher_t *b, int64_t hold_ms, bool keep, int64_t window_ms)
{
    b->keep = keep;
    if (b->hold == hold_ms && b->window == window_ms)
        return; /* called per buyer: the text is made only when a reload changed it */
    b->hold = hold_ms;
    b->window = window_ms;
    snprintf(b->hold_ms, sizeof(b->hold_ms), "%" PRId64, hold_ms);
    snprintf(b->window_ms, sizeof(b->window_ms), "%" PRId64, window_ms);
}

void deduct_batcher_set_replicas(deduct_batcher_t *b, int replicas)
{
    b->replicas = replicas;
}

static int replicas_now(const deduct_batcher_t *b)
{
    if (b->replicas >= 0)
        return b->replicas;
    return redis_client_masters_have_replicas(b->redis) ? 1 : 0;
}

static void fail_one(deduct_fn cb, void *data, deduct_verdict_t v, const char *err,
                     const char *detail)
{
    deduct_result_t r = {.verdict = v, .remaining = -1, .gen = -1, .err = err, .detail = detail};
    cb(&r, data);
}

void deduct_submit(deduct_batcher_t *b, const char *event, const char *user, int64_t qty,
                   deduct_fn cb, void *data)
{
    deduct_submit_key(b, event, user, qty, NULL, cb, data);
}

void deduct_submit_key(deduct_batcher_t *b, const char *event, const char *user, int64_t qty,
                       const char *key, deduct_fn cb, void *data)
{
    size_t ulen = strlen(user), klen = key != NULL ? strlen(key) : 0;
    ev_state_t *ev = b->closing ? NULL : event_state(b, event, strlen(event));
    buyer_t *by =
        ev != NULL && ulen <= SNATCH_NAME_MAX && klen <= DEDUCT_IDEM_KEY_MAX ? buyer_get(b) : NULL;
    if (by == NULL) {
        fail_one(cb, data, DEDUCT_ERROR, b->closing ? deduct_err_closing : deduct_err_nomem, NULL);
        return;
    }
    by->next = NULL;
    by->cb = cb;
    by->data = data;
    by->user_len = ulen;
    memcpy(by->user, user, ulen + 1);
    by->key_len = klen;
    memcpy(by->key, klen > 0 ? key : "", klen + 1);
    by->qty_len = util_i64(by->qty, qty);
    if (ev->tail != NULL)
        ev->tail->next = by;
    else
        ev->head = by;
    ev->tail = by;
    ev->queued++;
    if (ev->inflight < DEDUCT_MAX_INFLIGHT)
        send_batch(b, ev);
}

/* ---- replies ---- */

static const struct {
    const char *name;
    deduct_verdict_t v;
} verdicts[] = {{"ok", DEDUCT_OK},
                {"sold_out", DEDUCT_SOLD_OUT},
                {"insufficient", DEDUCT_INSUFFICIENT},
                {"limit_reached", DEDUCT_LIMIT_REACHED},
                {"unknown_event", DEDUCT_UNKNOWN_EVENT},
                {"expired", DEDUCT_EXPIRED},
                {"repairing", DEDUCT_REPAIRING},
                {"paused", DEDUCT_PAUSED},
                {"replay", DEDUCT_OK},
                {"key_reused", DEDUCT_KEY_REUSED}};

/* A refusal replayed for an idempotency key carries "replay" after its fields. */
static bool replayed(const redisReply *r, size_t at)
{
    char tag[8];
    return redis_reply_str(r, at, tag, sizeof(tag)) == 0 && strcmp(tag, "replay") == 0;
}

/* One buyer's reply (an element of the batch's array) into a result; id holds the order id,
 * host the selling host of a replayed order, verdict the verdict's text (the detail of a bad
 * reply). */
static void decode_one(const redisReply *r, deduct_result_t *res, char *id, char *host,
                       char *verdict, size_t vcap)
{
    *res = (deduct_result_t){
        .verdict = DEDUCT_ERROR, .remaining = -1, .gen = -1, .err = deduct_err_bad_reply};
    if (redis_reply_str(r, 0, verdict, vcap) != 0)
        return;
    res->detail = verdict;
    for (size_t i = 0; i < ARRAY_SIZE(verdicts); i++) {
        if (strcmp(verdict, verdicts[i].name) != 0)
            continue;
        *res = (deduct_result_t){.verdict = verdicts[i].v, .remaining = -1, .gen = -1};
        break;
    }
    switch (res->verdict) {
    case DEDUCT_OK:
        if (redis_reply_str(r, 1, id, ID_CAP) != 0) {
            *res = (deduct_result_t){.verdict = DEDUCT_ERROR,
                                     .remaining = -1,
                                     .gen = -1,
                                     .err = deduct_err_bad_reply,
                                     .detail = verdict};
            return;
        }
        res->order_id = id;
        res->remaining = redis_reply_int(r, 2);
        res->gen = redis_reply_int(r, 3);
        res->created_ms = redis_reply_int(r, 4);
        res->hold_until = redis_reply_int(r, 5);
        if (res->hold_until < 0)
            res->hold_until = 0;
        if (strcmp(verdict, "replay") == 0) {
            res->replay = true;
            res->host = redis_reply_str(r, 6, host, SNATCH_NAME_MAX + 1) == 0 ? host : "";
        }
        return;
    case DEDUCT_SOLD_OUT:
    case DEDUCT_INSUFFICIENT:
        res->remaining = redis_reply_int(r, 1);
        res->gen = redis_reply_int(r, 2);
        res->replay = replayed(r, 3);
        return;
    case DEDUCT_LIMIT_REACHED:
        res->held = redis_reply_int(r, 1);
        res->gen = redis_reply_int(r, 2);
        res->replay = replayed(r, 3);
        return;
    case DEDUCT_KEY_REUSED:
        res->held = redis_reply_int(r, 1);
        return;
    case DEDUCT_PAUSED:
        res->gen = redis_reply_int(r, 1);
        return;
    default:
        return;
    }
}

/* The result of every buyer of a batch that got no usable array: nothing deducted, unless the
 * connection died after sending (then it may have run). */
static deduct_result_t batch_failure(const redisReply *reply, const char *err)
{
    deduct_result_t res = {.verdict = DEDUCT_ERROR, .remaining = -1, .gen = -1};
    if (reply == NULL) {
        res.err = err;
        if (err == redis_err_lost)
            res.verdict = DEDUCT_UNKNOWN_OUTCOME;
    } else if (reply->type == REDIS_REPLY_ERROR) {
        res.err = deduct_err_script;
        res.detail = reply->str;
    } else {
        res.err = deduct_err_bad_reply;
    }
    return res;
}

static bool minted(const buyer_t *by)
{
    return by->res.verdict == DEDUCT_OK && !by->res.replay;
}

/* The batch's {E}:pending entry, shared by the orders it sold (deduct.lua minted them in buyer
 * order: the first one names the entry). NULL when it sold nothing, or when a buyer's reply was
 * not understood: the orders counted here might then be fewer than the entry names, and
 * deleting it would lose the others, so it stays for reconciliation. */
static pending_batch_t *batch_entry(const batch_t *bt)
{
    const char *first = NULL;
    int orders = 0;
    for (const buyer_t *by = bt->head; by != NULL; by = by->next) {
        if (by->res.err == deduct_err_bad_reply)
            return NULL;
        if (minted(by) && orders++ == 0)
            first = by->id;
    }
    pending_batch_t *pb = orders > 0 ? pending_batch_new(first, orders) : NULL;
    for (buyer_t *by = bt->head; by != NULL; by = by->next)
        if (minted(by))
            by->res.batch = pb;
    return pb;
}

/* Answers the batch's buyers with their decoded results, then lets the next batch go. */
static void finish_batch(batch_t *bt)
{
    deduct_batcher_t *b = bt->b;
    ev_state_t *ev = bt->ev;
    pending_batch_t *pb = batch_entry(bt);
    for (buyer_t *by = bt->head; by != NULL;) {
        buyer_t *next = by->next;
        by->cb(&by->res, by->data);
        buyer_put(b, by);
        by = next;
    }
    char key[ID_CAP];
    if (pending_batch_release(pb, false, key)) /* every sale already acknowledged */
        pending_ack(b->pending, key);
    free(bt);
    ev->inflight--;
    b->outstanding--;
    if (ev->queued > 0 && !b->closing)
        send_batch(b, ev);
    maybe_free(b);
}

/* What deduct.lua's last element says of every buyer of the batch who bought. */
typedef struct sold_batch {
    int64_t gen, created_ms, hold_until, seq; /* seq: the next buyer's */
} sold_batch_t;

/* The batch's last element, {gen, created_ms, hold_until, first_seq}; false when absent or
 * malformed. */
static bool decode_sold(const redisReply *r, sold_batch_t *sb)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 4)
        return false;
    *sb = (sold_batch_t){.gen = redis_reply_int(r, 0),
                         .created_ms = redis_reply_int(r, 1),
                         .hold_until = redis_reply_int(r, 2),
                         .seq = redis_reply_int(r, 3)};
    return sb->gen >= 0 && sb->created_ms >= 0 && sb->seq > 0;
}

/* A buyer who bought: deduct.lua answers the units left; the rest is the batch's. */
static void decode_bought(const redisReply *r, sold_batch_t *sb, const ev_state_t *ev, buyer_t *by)
{
    by->res = (deduct_result_t){
        .verdict = DEDUCT_ERROR, .remaining = -1, .gen = -1, .err = deduct_err_bad_reply};
    if (sb == NULL ||
        keyspace_order_id(by->id, ID_CAP, sb->created_ms, sb->seq, ev->name, ev->len) < 0) {
        by->res.detail = "ok without its batch";
        return;
    }
    sb->seq++;
    by->res = (deduct_result_t){.verdict = DEDUCT_OK,
                                .order_id = by->id,
                                .remaining = r->integer,
                                .gen = sb->gen,
                                .created_ms = sb->created_ms,
                                .hold_until = sb->hold_until > 0 ? sb->hold_until : 0};
}

static void on_batch_reply(redisReply *reply, const char *err, void *data)
{
    batch_t *bt = data;
    bool whole = reply != NULL && reply->type == REDIS_REPLY_ARRAY &&
                 (reply->elements == bt->n || reply->elements == bt->n + 1);
    sold_batch_t sold, *sb = NULL;
    if (whole && reply->elements == bt->n + 1 && decode_sold(reply->element[bt->n], &sold))
        sb = &sold;
    size_t i = 0;
    for (buyer_t *by = bt->head; by != NULL; by = by->next, i++) {
        if (!whole)
            by->res = batch_failure(reply, err);
        else if (reply->element[i]->type == REDIS_REPLY_INTEGER)
            decode_bought(reply->element[i], sb, bt->ev, by);
        else
            decode_one(reply->element[i], &by->res, by->id, by->host, by->verdict,
                       sizeof(by->verdict));
    }
    /* redis_eval_wait's rule: WAIT follows a reply that is not an error. */
    if (bt->replicas > 0 && reply != NULL && reply->type != REDIS_REPLY_ERROR)
        return;
    finish_batch(bt);
}

/* WAIT's answer: a batch fewer replicas hold than asked is not confirmed to its buyers. */
static void on_batch_waited(int64_t replicas, const char *err, void *data)
{
    batch_t *bt = data;
    (void)err;
    if (replicas < bt->replicas) {
        metrics_deduct_unreplicated();
        for (buyer_t *by = bt->head; by != NULL; by = by->next)
            if (by->res.verdict == DEDUCT_OK)
                by->res.unreplicated = true;
    }
    finish_batch(bt);
}

/* Takes the first n queued buyers of ev into a batch. */
static batch_t *take_buyers(deduct_batcher_t *b, ev_state_t *ev, size_t n)
{
    batch_t *bt = malloc(sizeof(*bt));
    if (bt == NULL)
        return NULL;
    *bt = (batch_t){.b = b, .ev = ev, .head = ev->head, .n = n, .replicas = replicas_now(b)};
    buyer_t *last = NULL, *by = ev->head;
    for (size_t i = 0; i < n; i++, last = by, by = by->next)
        ;
    last->next = NULL;
    ev->head = by;
    if (by == NULL)
        ev->tail = NULL;
    ev->queued -= n;
    return bt;
}

/* Nothing sent: the first buyer gets the error, the others wait for the next chance. */
static void fail_first(ev_state_t *ev)
{
    buyer_t *by = ev->head;
    ev->head = by->next;
    if (ev->head == NULL)
        ev->tail = NULL;
    ev->queued--;
    fail_one(by->cb, by->data, DEDUCT_ERROR, deduct_err_nomem, NULL);
    free(by);
}

static void send_batch(deduct_batcher_t *b, ev_state_t *ev)
{
    size_t n = 0, bytes = 0;
    for (buyer_t *by = ev->head; by != NULL && n < BATCH_MAX; by = by->next) {
        size_t need = by->user_len + by->qty_len + by->key_len;
        if (n > 0 && bytes + need > BATCH_BYTES_MAX)
            break;
        bytes += need;
        n++;
    }
    const char **argv = b->argv;
    size_t *lens = b->lens;
    char(*acks)[ID_CAP] = b->acks;
    batch_t *bt = take_buyers(b, ev, n);
    if (bt == NULL) {
        fail_first(ev);
        return;
    }
    char keys[KEYSPACE__COUNT][KEYSPACE_KEY_MAX];
    for (int i = 0; i < KEYSPACE__COUNT; i++) {
        lens[i] = (size_t)keyspace_key(keys[i], ev->name, ev->len, (keyspace_key_t)i);
        argv[i] = keys[i];
    }
    char deadline[24], count[24];
    /* After this instant the host has answered 503 "nothing deducted": the script must not sell. */
    int64_t until = util_now_ms() + (int64_t)b->timeout_ms;
    const char **args = argv + KEYSPACE__COUNT;
    size_t *alens = lens + KEYSPACE__COUNT;
    args[0] = ev->name;
    alens[0] = ev->len;
    args[1] = b->host_id;
    alens[1] = strlen(b->host_id);
    args[2] = deadline;
    alens[2] = util_i64(deadline, until);
    args[3] = count;
    alens[3] = util_i64(count, (int64_t)n);
    args[4] = b->hold_ms;
    alens[4] = strlen(b->hold_ms);
    args[5] = b->keep ? "1" : "0";
    alens[5] = 1;
    args[6] = b->window_ms;
    alens[6] = strlen(b->window_ms);
    size_t at = ARGS_HEAD;
    for (buyer_t *by = bt->head; by != NULL; by = by->next) {
        args[at] = by->user;
        alens[at++] = by->user_len;
        args[at] = by->qty;
        alens[at++] = by->qty_len;
        args[at] = by->key;
        alens[at++] = by->key_len;
    }
    size_t k = pending_take(b->pending, ev->name, ev->len, acks, ACKS_RIDE_MAX);
    for (size_t i = 0; i < k; i++, at++) {
        args[at] = acks[i];
        alens[at] = strlen(acks[i]);
    }
    ev->inflight++;
    b->outstanding++;
    metrics_deduct_batch(n);
    /* A failure may call on_batch_reply, and so send_batch, from inside redis_eval: the vectors
     * are not read after it returns, so the nested call may reuse them. */
    /* WAIT's timeout stays below the deduction deadline: the buyer's answer waits for both. */
    uint64_t wait_ms = b->timeout_ms / 2 > 0 ? b->timeout_ms / 2 : 1;
    redis_eval_wait(b->redis, on_batch_reply, on_batch_waited, bt, bt->replicas, wait_ms,
                    KEYSPACE__COUNT, (int)(KEYSPACE__COUNT + at), argv, lens);
}

void deduct_batcher_close(deduct_batcher_t *b)
{
    if (b == NULL)
        return;
    pending_set_carrier(b->pending, NULL, NULL);
    b->closing = true;
    for (size_t i = 0; i < EVENT_BUCKETS; i++)
        for (ev_state_t *ev = b->buckets[i]; ev != NULL; ev = ev->next)
            while (ev->head != NULL) {
                buyer_t *by = ev->head;
                ev->head = by->next;
                ev->queued--;
                fail_one(by->cb, by->data, DEDUCT_ERROR, deduct_err_closing, NULL);
                free(by);
            }
    maybe_free(b);
}
