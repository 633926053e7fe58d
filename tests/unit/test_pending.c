/* host/server/pending.c: acknowledged order ids leaving {E}:pending, against a real redis-server
 * (tests/unit/redis_server.h) through the worker's own Redis client (host/server/redis.c) on a
 * libuv loop driven here. HDELs are counted by Redis itself (INFO commandstats), entries read
 * back with HLEN/HEXISTS, the failure counter through metrics_render. Every wait is bounded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <hiredis/hiredis.h>
#include <signal.h>
#include <uv.h>

#include "keyspace.h"
#include "loop_wait.h"
#include "metrics_sample.h"
#include "pending.h"
#include "redis.h"
#include "redis_server.h"

#define HDEL_ERRORS "snatch_backend_errors_total{backend=\"redis\",step=\"pending_hdel\"}"

typedef char order_id_t[KEYSPACE_ORDER_ID_MAX + 1];

static test_redis_t redis = {.pid = -1};
static uv_loop_t loop;
static redis_client_t *client;
static pending_t *p;

static bool client_ready(void *arg)
{
    (void)arg;
    return redis_client_ready(client);
}

static long long admin_int(const char *fmt, const char *a, const char *b)
{
    redisReply *r = test_redis_cmd(&redis, fmt, a, b);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

static long long hlen(const char *event)
{
    return admin_int("HLEN {%s}:pending%s", event, "");
}

static bool present(const char *event, const char *id)
{
    return admin_int("HEXISTS {%s}:pending %s", event, id) == 1;
}

/* HDELs Redis executed since the last CONFIG RESETSTAT. */
static long long hdel_calls(void)
{
    redisReply *r = test_redis_cmd(&redis, "INFO commandstats");
    assert_non_null(r);
    const char *at = strstr(r->str, "cmdstat_hdel:calls=");
    long long n = at != NULL ? atoll(at + strlen("cmdstat_hdel:calls=")) : 0;
    freeReplyObject(r);
    return n;
}

/* An order id of event with sequence seq, its {event}:pending entry written. */
static void seed(order_id_t id, const char *event, int64_t seq)
{
    assert_true(
        keyspace_order_id(id, sizeof(order_id_t), 1700000000000, seq, event, strlen(event)) > 0);
    assert_int_equal(test_redis_do(&redis, "HSET {%s}:pending %s x", event, id), 0);
}

typedef struct {
    const char *events[4];
} empty_t;

/* Every listed event's {E}:pending empty and no HDEL reply outstanding. */
static bool all_gone(void *arg)
{
    const empty_t *e = arg;
    for (int i = 0; i < 4 && e->events[i] != NULL; i++)
        if (hlen(e->events[i]) != 0)
            return false;
    return pending_inflight(p) == 0;
}

typedef struct {
    const char *event;
    long long len;
} hlen_is_t;

/* {E}:pending holds len entries and no HDEL reply is outstanding. */
static bool hlen_is(void *arg)
{
    const hlen_is_t *h = arg;
    return hlen(h->event) == h->len && pending_inflight(p) == 0;
}

static bool no_inflight(void *arg)
{
    (void)arg;
    return pending_inflight(p) == 0;
}

/* Each test starts from a fresh pending_t, empty Redis and zeroed command counts, so that one
 * failing test leaves nothing queued for the next. */
static int fresh(void **state)
{
    (void)state;
    pending_set_carrier(p, NULL, NULL); /* a failed test may have left its own on the stack */
    pending_close(p);
    p = NULL;
    test_run_for(&loop, 20); /* the close's HDEL replies, then p is freed */
    if (test_redis_do(&redis, "FLUSHALL") != 0 || test_redis_do(&redis, "CONFIG RESETSTAT") != 0)
        return -1;
    p = pending_new(&loop, &client);
    return p != NULL ? 0 : -1;
}

static void test_one_hdel_per_event(void **state)
{
    (void)state;
    order_id_t a[3], b[2], c[1];
    for (int i = 0; i < 3; i++)
        seed(a[i], "a", i + 1);
    for (int i = 0; i < 2; i++)
        seed(b[i], "b", i + 1);
    seed(c[0], "c", 1);
    assert_int_equal(test_redis_do(&redis, "HSET {a}:pending other x"), 0);

    /* Interleaved, as acks arrive from JetStream. */
    pending_ack(p, a[0]);
    pending_ack(p, b[0]);
    pending_ack(p, a[1]);
    pending_ack(p, c[0]);
    pending_ack(p, b[1]);
    pending_ack(p, a[2]);
    pending_ack(p, "not-an-order-id"); /* ignored: left to reconciliation */
    assert_int_equal(hdel_calls(), 0); /* nothing before the loop turns */

    empty_t e = {{"b", "c"}};
    assert_true(test_run_until(&loop, all_gone, &e, 5000));
    assert_int_equal(hlen("a"), 1); /* only the entry nobody acknowledged */
    assert_true(present("a", "other"));
    assert_int_equal(hdel_calls(), 3);

    /* Nothing queued: further turns send nothing. */
    test_run_for(&loop, 20);
    assert_int_equal(hdel_calls(), 3);
}

static void test_take_at_most_n_of_one_event(void **state)
{
    (void)state;
    order_id_t a[3], ab[1], b[1], out[4];
    for (int i = 0; i < 3; i++)
        seed(a[i], "a", i + 1);
    seed(ab[0], "ab", 1); /* "a" is a prefix of it: not the same event */
    seed(b[0], "b", 1);
    pending_ack(p, a[0]);
    pending_ack(p, ab[0]);
    pending_ack(p, b[0]);
    pending_ack(p, a[1]);
    pending_ack(p, a[2]);

    memset(out, 0, sizeof(out));
    assert_int_equal(pending_take(p, "a", 1, out, 2), 2);
    assert_string_equal(out[0], a[0]);
    assert_string_equal(out[1], a[1]);
    assert_string_equal(out[2], "");
    assert_int_equal(pending_take(p, "zz", 2, out, 4), 0);

    /* What was not taken leaves by HDEL: a[2], ab, b; the taken ones are the batch's now. */
    empty_t e = {{"ab", "b"}};
    assert_true(test_run_until(&loop, all_gone, &e, 5000));
    assert_int_equal(hlen("a"), 2);
    assert_true(present("a", a[0]));
    assert_true(present("a", a[1]));
    assert_false(present("a", a[2]));
    assert_int_equal(hdel_calls(), 3);
    assert_int_equal(pending_take(p, "a", 1, out, 4), 0);
}

typedef struct {
    const char *event;
    int asked;
} carrier_t;

static bool carrier(void *arg, const char *event, size_t elen)
{
    carrier_t *c = arg;
    c->asked++;
    return c->event != NULL && strlen(c->event) == elen && memcmp(c->event, event, elen) == 0;
}

static void test_carrier_holds_its_event(void **state)
{
    (void)state;
    order_id_t h[2], f[1], out[4];
    carrier_t c = {.event = "held"};
    pending_set_carrier(p, carrier, &c);
    seed(h[0], "held", 1);
    seed(f[0], "free", 1);
    seed(h[1], "held", 2);
    pending_ack(p, h[0]);
    pending_ack(p, f[0]);
    pending_ack(p, h[1]);

    empty_t e = {{"free"}};
    assert_true(test_run_until(&loop, all_gone, &e, 5000));
    test_run_for(&loop, 20); /* a few more turns: still held for the batch */
    assert_true(c.asked > 0);
    assert_int_equal(hlen("held"), 2);
    assert_int_equal(hdel_calls(), 1);

    /* The batch takes them. */
    assert_int_equal(pending_take(p, "held", 4, out, 4), 2);
    assert_string_equal(out[0], h[0]);
    assert_string_equal(out[1], h[1]);

    /* Held, then no batch leaves after all: it goes by HDEL on a later turn. */
    order_id_t late, forced;
    seed(late, "held", 3);
    pending_ack(p, late);
    test_run_for(&loop, 20);
    assert_true(present("held", late));
    c.event = NULL;
    hlen_is_t h2 = {"held", 2}; /* h[0], h[1]: taken by the batch, not deleted here */
    assert_true(test_run_until(&loop, hlen_is, &h2, 5000));
    assert_false(present("held", late));
    assert_int_equal(hdel_calls(), 2);

    /* A forced flush does not ask: it sends. */
    c.event = "held";
    seed(forced, "held", 4);
    pending_ack(p, forced);
    pending_flush(p);
    assert_true(test_run_until(&loop, no_inflight, NULL, 5000));
    assert_false(present("held", forced));
    assert_int_equal(hdel_calls(), 3);
}

static void test_full_queue_flushes(void **state)
{
    (void)state;
    enum { MAX = 5000 };
    order_id_t *ids = calloc(MAX, sizeof(*ids));
    assert_non_null(ids);
    redisContext *rc = test_redis_connect(&redis);
    assert_non_null(rc);
    for (int i = 0; i < MAX; i++) {
        assert_true(keyspace_order_id(ids[i], sizeof(ids[i]), 1700000000000, i + 1, "full", 4) > 0);
        redisAppendCommand(rc, "HSET {full}:pending %s x", ids[i]);
    }
    for (int i = 0; i < MAX; i++) {
        void *r = NULL;
        assert_int_equal(redisGetReply(rc, &r), REDIS_OK);
        freeReplyObject(r);
    }
    redisFree(rc);

    /* No loop turn in between: the ack that finds the queue full sends it at once. */
    int k = 0;
    while (k < MAX && pending_inflight(p) == 0)
        pending_ack(p, ids[k++]);
    assert_int_equal(pending_inflight(p), 1);
    assert_true(k > 1);
    /* The one that found it full is queued, not lost: it leaves by an HDEL of its own. */
    hlen_is_t rest = {"full", MAX - k};
    assert_true(test_run_until(&loop, hlen_is, &rest, 5000));
    assert_false(present("full", ids[k - 1]));
    assert_true(present("full", ids[k]));
    assert_int_equal(hdel_calls(), 2);
    free(ids);
}

static void test_failed_hdel_counted(void **state)
{
    (void)state;
    order_id_t bad, ok;
    /* {bad}:pending is no hash: its HDEL fails (WRONGTYPE); the other event's still works. */
    assert_true(keyspace_order_id(bad, sizeof(bad), 1700000000000, 1, "bad", 3) > 0);
    assert_int_equal(test_redis_do(&redis, "SET {bad}:pending str"), 0);
    seed(ok, "ok", 1);
    double before = metrics_sample(HDEL_ERRORS);
    pending_ack(p, bad);
    pending_ack(p, ok);
    empty_t e = {{"ok"}};
    assert_true(test_run_until(&loop, all_gone, &e, 5000));
    assert_int_equal(hdel_calls(), 2);
    assert_true(metrics_sample(HDEL_ERRORS) == before + 1);

    /* No client (closed, or not yet): the batch is dropped, nothing sent, nothing counted. */
    redis_client_t *saved = client;
    client = NULL;
    seed(ok, "ok", 2);
    pending_ack(p, ok);
    test_run_for(&loop, 20);
    client = saved;
    assert_int_equal(pending_inflight(p), 0);
    assert_true(present("ok", ok));
    assert_int_equal(hdel_calls(), 2);
    assert_true(metrics_sample(HDEL_ERRORS) == before + 1);
}

static void test_close_flushes(void **state)
{
    (void)state;
    order_id_t a[2], b[1];
    seed(a[0], "a", 1);
    seed(a[1], "a", 2);
    seed(b[0], "b", 1);
    pending_ack(p, a[0]);
    pending_ack(p, b[0]);
    pending_ack(p, a[1]);
    pending_close(p); /* before any loop turn: the queue goes now, p once its replies came */
    p = NULL;
    empty_t e = {{"a", "b"}};
    assert_true(test_run_until(&loop, all_gone, &e, 5000));
    assert_int_equal(hdel_calls(), 2);
}

static int group_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    metrics_init();
    metrics_thread_register();
    if (test_redis_start(&redis) != 0 || uv_loop_init(&loop) != 0)
        return -1;
    if (redis_client_start(&client, &loop, "127.0.0.1", redis.port, "return 1", 2000) != 0)
        return -1;
    return test_run_until(&loop, client_ready, NULL, 5000) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    pending_set_carrier(p, NULL, NULL); /* a failed test may have left its own on the stack */
    pending_close(p);
    p = NULL;
    test_run_for(&loop, 50); /* the close's HDEL replies, if any, then p is freed */
    redis_client_close(client);
    client = NULL;
    test_loop_drain(&loop, 1000);
    uv_loop_close(&loop);
    test_redis_stop(&redis);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_one_hdel_per_event, fresh),
        cmocka_unit_test_setup(test_take_at_most_n_of_one_event, fresh),
        cmocka_unit_test_setup(test_carrier_holds_its_event, fresh),
        cmocka_unit_test_setup(test_full_queue_flushes, fresh),
        cmocka_unit_test_setup(test_failed_hdel_counted, fresh),
        cmocka_unit_test_setup(test_close_flushes, fresh),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
