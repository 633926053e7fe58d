/* Tests of host/server/redis.c against a real redis-server started per test on a free loopback port
 * (killed by PID in teardown, and by the kernel if this process dies: PR_SET_PDEATHSIG). Each
 * test drives its own libuv loop on this thread; every wait is bounded in time. Setup and
 * inspection of Redis go through a separate blocking hiredis connection ("admin"). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <uv.h>

#include "deduct_batch.h"
#include "keyspace.h"
#include "loop_wait.h"
#include "metrics_sample.h"
#include "pending.h"
#include "redis.h"
#include "redis_conn.h"
#include "redis_server.h"

/* Round trips redis.c reported to metrics.c. */
static int rtt_samples(void)
{
    return (int)metrics_sample("snatch_redis_rtt_seconds_count");
}

/* Batches deduct_batch.c reported to metrics.c, and the buyers they carried. */
static int batches_sent(void)
{
    return (int)metrics_sample("snatch_deduct_batch_size_count");
}

static int buyers_batched(void)
{
    return (int)metrics_sample("snatch_deduct_batch_size_sum");
}

#define INCR_SCRIPT "return {tonumber(ARGV[1]), redis.call('INCR', KEYS[1])}"

static uv_loop_t loop;
/* Started per test, DEBUG enabled (admin_sleep); after test_redis_kill9, test_redis_start_args
 * starts it again on the same port, as a restarted Redis. */
static test_redis_t redis = {.pid = -1};
static const char *const redis_args[] = {"--enable-debug-command", "yes", NULL};

static void at_exit_kill(void)
{
    test_redis_kill9(&redis);
}

/* Runs one command on a fresh admin connection; returns the reply (caller frees) or NULL. */
static redisReply *admin(const char *fmt, ...)
{
    redisContext *a = test_redis_connect(&redis);
    if (a == NULL)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(a, fmt, ap);
    va_end(ap);
    redisFree(a);
    return r;
}

static void admin_ok(const char *fmt, ...)
{
    redisContext *a = test_redis_connect(&redis);
    assert_non_null(a);
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(a, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
    freeReplyObject(r);
    redisFree(a);
}

/* Makes the server sleep for sec seconds, without waiting: returns the connection that carries
 * the DEBUG SLEEP (free it when done). */
static redisContext *admin_sleep(int sec)
{
    redisContext *a = test_redis_connect(&redis);
    assert_non_null(a);
    assert_int_equal(redisAppendCommand(a, "DEBUG SLEEP %d", sec), REDIS_OK);
    int done = 0;
    for (int i = 0; i < 100 && !done; i++)
        assert_int_equal(redisBufferWrite(a, &done), REDIS_OK);
    assert_true(done);
    usleep(20 * 1000); /* let the server start sleeping before our client sends */
    return a;
}

/* calls of the command name in INFO commandstats, e.g. "eval", "script|load"; 0 if none. */
static long long cmd_calls(const char *name)
{
    redisReply *r = admin("INFO commandstats");
    assert_non_null(r);
    char key[64];
    snprintf(key, sizeof(key), "cmdstat_%s:calls=", name);
    const char *p = strstr(r->str, key);
    long long n = p ? atoll(p + strlen(key)) : 0;
    freeReplyObject(r);
    return n;
}

/* ---- loop helpers ---- */

static bool is_ready(void *arg)
{
    return redis_client_ready(arg);
}

static bool is_not_ready(void *arg)
{
    return !redis_client_ready(arg);
}

/* Closes the client and runs the loop until every handle is gone (bounded). */
static void close_and_drain(redis_client_t *c)
{
    redis_client_close(c);
    assert_true(test_loop_drain(&loop, 1000));
}

static redis_client_t *start_client(const char *script, uint64_t timeout_ms)
{
    redis_client_t *c = NULL;
    assert_int_equal(redis_client_start(&c, &loop, "127.0.0.1", redis.port, script, timeout_ms), 0);
    assert_non_null(c);
    assert_true(test_run_until(&loop, is_ready, c, 5000));
    return c;
}

/* ---- reply capture ---- */

typedef struct {
    int calls;
    bool null_reply;
    int type;
    long long integer;
    char str[256];
    char err[64];
    size_t elements;
    char el[6][96];
    /* for ordering checks */
    int index;
    int *order_counter;
    bool in_order;
} result_t;

static void copy_str(char *dst, size_t cap, const redisReply *r)
{
    if (r->type == REDIS_REPLY_INTEGER)
        snprintf(dst, cap, "%lld", r->integer);
    else if (r->str != NULL)
        snprintf(dst, cap, "%.*s", (int)r->len, r->str);
    else
        dst[0] = '\0';
}

static void on_result(redisReply *r, const char *err, void *data)
{
    result_t *res = data;
    res->calls++;
    if (res->order_counter != NULL) {
        res->in_order = *res->order_counter == res->index;
        (*res->order_counter)++;
    }
    if (r == NULL) {
        res->null_reply = true;
        assert_non_null(err);
        snprintf(res->err, sizeof(res->err), "%s", err);
        return;
    }
    res->type = r->type;
    res->integer = r->integer;
    copy_str(res->str, sizeof(res->str), r);
    res->elements = r->type == REDIS_REPLY_ARRAY ? r->elements : 0;
    for (size_t i = 0; i < res->elements && i < 6; i++)
        copy_str(res->el[i], sizeof(res->el[i]), r->element[i]);
}

static void cmd(redis_client_t *c, result_t *res, const char *a0, const char *a1, const char *a2)
{
    const char *argv[3] = {a0, a1, a2};
    int argc = a2 ? 3 : a1 ? 2 : 1;
    redis_command(c, on_result, res, argc, argv, NULL);
}

static void eval_incr(redis_client_t *c, result_t *res, const char *key, int n)
{
    char num[16];
    snprintf(num, sizeof(num), "%d", n);
    const char *argv[2] = {key, num};
    const size_t len[2] = {strlen(key), strlen(num)};
    redis_eval(c, on_result, res, 1, 2, argv, len);
}

/* ---- fixtures ---- */

static int setup(void **state)
{
    (void)state;
    if (uv_loop_init(&loop) != 0)
        return -1;
    return test_redis_start_args(&redis, redis_args);
}

static int teardown(void **state)
{
    (void)state;
    test_redis_stop(&redis);
    /* A failed test may leave handles behind: drain what can be drained, then close. */
    test_loop_drain(&loop, 100);
    uv_loop_close(&loop);
    return 0;
}

/* ---- tests ---- */

static void test_roundtrip(void **state)
{
    (void)state;
    redis_client_t *c = NULL;
    assert_int_equal(redis_client_start(&c, &loop, "127.0.0.1", redis.port, INCR_SCRIPT, 1000), 0);
    /* Not yet connected: fails at once, before returning, instead of queueing. */
    result_t early = {0};
    cmd(c, &early, "PING", NULL, NULL);
    assert_int_equal(early.calls, 1);
    assert_true(early.null_reply);
    assert_string_equal(early.err, "not connected");
    assert_false(redis_client_ready(c));
    assert_true(test_run_until(&loop, is_ready, c, 5000));

    result_t set = {0}, get = {0}, bad = {0}, sub = {0};
    int rtt_before = rtt_samples();
    cmd(c, &set, "SET", "k", "v1");
    cmd(c, &get, "GET", "k", NULL);
    cmd(c, &bad, "NOSUCHCOMMAND", NULL, NULL);
    cmd(c, &sub, "SUBSCRIBE", "ch", NULL); /* would break the reply order: refused */
    assert_int_equal(sub.calls, 1);
    assert_string_equal(sub.err, "unsupported command");
    assert_true(test_wait_count(&loop, &bad.calls, 1, 3000));
    assert_int_equal(set.calls, 1);
    assert_int_equal(set.type, REDIS_REPLY_STATUS);
    assert_string_equal(set.str, "OK");
    assert_int_equal(get.calls, 1);
    assert_int_equal(get.type, REDIS_REPLY_STRING);
    assert_string_equal(get.str, "v1");
    /* A Redis error is a reply, not a failure. */
    assert_false(bad.null_reply);
    assert_int_equal(bad.type, REDIS_REPLY_ERROR);
    assert_true(rtt_samples() - rtt_before >= 3);

    /* Binary-safe arguments. */
    const char *argv[] = {"SET", "bin", "a\0b"};
    const size_t len[] = {3, 3, 3};
    result_t bs = {0}, strlen_res = {0};
    redis_command(c, on_result, &bs, 3, argv, len);
    cmd(c, &strlen_res, "STRLEN", "bin", NULL);
    assert_true(test_wait_count(&loop, &strlen_res.calls, 1, 3000));
    assert_int_equal(strlen_res.integer, 3);
    close_and_drain(c);
}

static void test_eval_many_in_order(void **state)
{
    (void)state;
    enum { N = 1000 };
    redis_client_t *c = start_client(INCR_SCRIPT, 5000);
    static result_t res[N];
    memset(res, 0, sizeof(res));
    int order = 0, done = 0;
    for (int i = 0; i < N; i++) {
        res[i].index = i;
        res[i].order_counter = &order;
        eval_incr(c, &res[i], "counter", i);
    }
    assert_true(test_wait_count(&loop, &order, N, 10000));
    for (int i = 0; i < N; i++) {
        assert_int_equal(res[i].calls, 1);
        assert_true(res[i].in_order);
        assert_false(res[i].null_reply);
        assert_int_equal(res[i].type, REDIS_REPLY_ARRAY);
        assert_int_equal(res[i].elements, 2);
        assert_int_equal(atoi(res[i].el[0]), i);
        assert_int_equal(atoll(res[i].el[1]), i + 1);
        done++;
    }
    assert_int_equal(done, N);
    close_and_drain(c);
}

/* Commands of every size on one connection, several loop iterations in a row: small ones
 * formatted in the connection's reused buffer, one larger than what it keeps, and an output
 * buffer larger than the socket takes at once (partial writes, EPOLLOUT). Every reply comes back
 * in order with the right bytes. */
static void test_large_and_small_commands(void **state)
{
    (void)state;
    enum { BIG = 3 * 1024 * 1024, ROUNDS = 3, SMALL = 50 };
    redis_client_t *c = start_client(INCR_SCRIPT, 10000);
    char *big = malloc(BIG);
    assert_non_null(big);
    for (size_t i = 0; i < BIG; i++)
        big[i] = (char)('a' + i % 26);
    for (int round = 0; round < ROUNDS; round++) {
        static result_t small[SMALL];
        result_t set = {0}, len = {0}, range = {0};
        memset(small, 0, sizeof(small));
        int order = 0;
        for (int i = 0; i < SMALL; i++) {
            small[i].index = i;
            small[i].order_counter = &order;
            eval_incr(c, &small[i], "counter", i);
        }
        const char *argv[] = {"SET", "big", big};
        const size_t lens[] = {3, 3, (size_t)BIG - (size_t)round};
        redis_command(c, on_result, &set, 3, argv, lens);
        cmd(c, &len, "STRLEN", "big", NULL);
        cmd(c, &range, "GETRANGE", "big", "1000");
        assert_true(test_wait_count(&loop, &order, SMALL, 10000));
        assert_true(test_wait_count(&loop, &range.calls, 1, 10000));
        for (int i = 0; i < SMALL; i++) {
            assert_true(small[i].in_order);
            assert_int_equal(atoi(small[i].el[0]), i);
        }
        assert_string_equal(set.str, "OK");
        assert_int_equal(len.integer, BIG - round);
        /* GETRANGE big 1000 (no end): an error; the reply order held. */
        assert_int_equal(range.type, REDIS_REPLY_ERROR);
    }
    free(big);
    close_and_drain(c);
}

static void test_noscript_recovery(void **state)
{
    (void)state;
    enum { N = 10 };
    redis_client_t *c = start_client(INCR_SCRIPT, 5000);
    result_t first = {0};
    eval_incr(c, &first, "n", 0);
    assert_true(test_wait_count(&loop, &first.calls, 1, 3000));
    assert_int_equal(atoll(first.el[1]), 1);

    admin_ok("CONFIG RESETSTAT");
    admin_ok("SCRIPT FLUSH");
    result_t res[N] = {0};
    int calls = 0, order = 0;
    for (int i = 0; i < N; i++) {
        res[i].index = i;
        res[i].order_counter = &order;
        eval_incr(c, &res[i], "n", i);
    }
    assert_true(test_wait_count(&loop, &order, N, 5000));
    for (int i = 0; i < N; i++) {
        calls += res[i].calls;
        assert_false(res[i].null_reply);
        assert_int_equal(res[i].type, REDIS_REPLY_ARRAY);
        assert_int_equal(atoll(res[i].el[1]), i + 2);
    }
    assert_int_equal(calls, N);
    long long evals = cmd_calls("eval");
    assert_true(evals >= 1 && evals <= N);
    assert_int_equal(cmd_calls("script|load"), 1);

    /* The reload took: later calls are plain EVALSHA again. */
    result_t again[N] = {0};
    order = 0;
    for (int i = 0; i < N; i++) {
        again[i].index = i;
        again[i].order_counter = &order;
        eval_incr(c, &again[i], "n", i);
    }
    assert_true(test_wait_count(&loop, &order, N, 5000));
    assert_int_equal(atoll(again[N - 1].el[1]), 2 * N + 1);
    assert_int_equal(cmd_calls("eval"), evals);
    close_and_drain(c);
}

static char *read_source(const char *rel)
{
    const char *dir = getenv("SNATCH_SOURCE_DIR");
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", dir ? dir : SNATCH_SOURCE_DIR, rel);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

/* deduct.lua answers a batch with one reply per buyer, then, when someone bought, the batch's
 * {gen, created_ms, hold_until, first_seq}: a batch of one is unwrapped here; a sale becomes str
 * "ok", the units left in integer and the batch's element in el[]. */
static void on_batch_of_one(redisReply *r, const char *err, void *data)
{
    result_t *res = data;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        on_result(r, err, data);
        return;
    }
    if (r->elements == 2 && r->element[0]->type == REDIS_REPLY_INTEGER) {
        on_result(r->element[1], err, data);
        res->integer = r->element[0]->integer;
        snprintf(res->str, sizeof(res->str), "ok");
        return;
    }
    assert_int_equal(r->elements, 1);
    on_result(r->element[0], err, data);
}

static void deduct(redis_client_t *c, result_t *res, const char *ev, const char *user,
                   const char *qty)
{
    char keys[5][80];
    static const char *const suffix[5] = {"meta", "users", "orders", "uorders", "pending"};
    const char *argv[15];
    for (int i = 0; i < 5; i++) {
        snprintf(keys[i], sizeof(keys[i]), "{%s}:%s", ev, suffix[i]);
        argv[i] = keys[i];
    }
    argv[5] = ev;
    argv[6] = "h1";
    argv[7] = "0";      /* no deadline */
    argv[8] = "1";      /* one buyer */
    argv[9] = "0";      /* no hold */
    argv[10] = "0";     /* keep */
    argv[11] = "60000"; /* idempotency window */
    argv[12] = user;
    argv[13] = qty;
    argv[14] = ""; /* no idempotency key */
    redis_eval(c, on_batch_of_one, res, 5, 15, argv, NULL);
}

static void test_deduct_script(void **state)
{
    (void)state;
    redis_client_t *c = start_client(read_source("lua/deduct.lua"), 5000);
    admin_ok("HSET {e}:meta stock 3 sold 0 limit 1 gen 1");
    result_t res[5] = {0};
    const char *users[5] = {"u1", "u2", "u3", "u4", "u5"};
    for (int i = 0; i < 5; i++)
        deduct(c, &res[i], "e", users[i], "1");
    assert_true(test_wait_count(&loop, &res[4].calls, 1, 5000));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(res[i].type, REDIS_REPLY_ARRAY);
        assert_string_equal(res[i].str, "ok");
        assert_int_equal(res[i].integer, 2 - i);
        assert_string_equal(res[i].el[0], "1"); /* gen */
        assert_int_equal(strlen(res[i].el[1]), 13);
        assert_string_equal(res[i].el[2], "0");      /* paid at once */
        assert_int_equal(atoi(res[i].el[3]), i + 1); /* the order's seq */
        /* The id the host builds from them is the one Redis keeps. */
        char id[64];
        assert_true(keyspace_order_id(id, sizeof(id), atoll(res[i].el[1]), i + 1, "e", 1) > 0);
        redisReply *has = admin("HEXISTS {e}:orders %s", id);
        assert_non_null(has);
        assert_int_equal(has->integer, 1);
        freeReplyObject(has);
    }
    for (int i = 3; i < 5; i++) {
        assert_string_equal(res[i].el[0], "sold_out");
        assert_int_equal(atoi(res[i].el[1]), 0);
    }
    redisReply *sold = admin("HGET {e}:meta sold");
    assert_non_null(sold);
    assert_string_equal(sold->str, "3");
    freeReplyObject(sold);
    redisReply *pending = admin("HLEN {e}:pending");
    assert_non_null(pending);
    assert_int_equal(pending->integer, 3);
    freeReplyObject(pending);

    admin_ok("HSET {f}:meta stock 3 sold 0 limit 1 gen 1");
    result_t twice[2] = {0}, badqty = {0}, unknown = {0};
    deduct(c, &twice[0], "f", "u1", "1");
    deduct(c, &twice[1], "f", "u1", "1");
    deduct(c, &badqty, "f", "u2", "0");
    deduct(c, &unknown, "nosuch", "u1", "1");
    assert_true(test_wait_count(&loop, &unknown.calls, 1, 5000));
    assert_string_equal(twice[0].str, "ok");
    assert_string_equal(twice[1].el[0], "limit_reached");
    assert_int_equal(atoi(twice[1].el[1]), 1);
    assert_false(badqty.null_reply);
    assert_int_equal(badqty.type, REDIS_REPLY_ERROR);
    assert_string_equal(unknown.el[0], "unknown_event");
    close_and_drain(c);
}

/* ---- deduct_batch.c (with pending.c's acknowledged ids) over a real Redis ---- */

typedef struct {
    int calls;
    int order; /* position among all callbacks */
    deduct_verdict_t verdict;
    char id[96];
    int64_t remaining, held;
    const char *err;
    pending_batch_t *batch; /* on_buyer_keep: held, as a sale holds it until its publish ended */
} buyer_res_t;

static int buyer_calls;

static void on_buyer(const deduct_result_t *r, void *data)
{
    buyer_res_t *b = data;
    b->calls++;
    b->order = buyer_calls++;
    b->verdict = r->verdict;
    snprintf(b->id, sizeof(b->id), "%s", r->order_id != NULL ? r->order_id : "");
    b->remaining = r->remaining;
    b->held = r->held;
    b->err = r->err;
}

static void on_buyer_keep(const deduct_result_t *r, void *data)
{
    buyer_res_t *b = data;
    on_buyer(r, data);
    b->batch = r->batch;
    pending_batch_hold(b->batch);
}

static long long admin_int(const char *fmt, const char *arg)
{
    redisReply *r = admin(fmt, arg);
    assert_non_null(r);
    long long v = r->type == REDIS_REPLY_INTEGER  ? r->integer
                  : r->type == REDIS_REPLY_STRING ? atoll(r->str)
                                                  : -1;
    freeReplyObject(r);
    return v;
}

/* Until pending's HDELs are answered (bounded). */
static void wait_hdels(pending_t *p)
{
    for (int i = 0; i < 500 && pending_inflight(p) > 0; i++)
        test_run_for(&loop, 10);
}

/* The batcher, then pending (its HDEL replies drained), then the client. */
static void close_batcher_and_drain(deduct_batcher_t *b, pending_t *p, redis_client_t *c)
{
    deduct_batcher_close(b);
    wait_hdels(p);
    pending_close(p);
    close_and_drain(c);
}

/* A lone buyer goes out at once; those who arrive while its batch is in flight go together as
 * the next one, each with its own outcome, in order, the same buyer twice included. */
static void test_batch_group_commit(void **state)
{
    (void)state;
    redis_client_t *c = start_client(read_source("lua/deduct.lua"), 5000);
    admin_ok("HSET {g}:meta stock 5 sold 0 limit 1 gen 3");
    pending_t *p = pending_new(&loop, &c);
    assert_non_null(p);
    deduct_batcher_t *b = deduct_batcher_new(c, p, "h1", 5000);
    assert_non_null(b);
    int batches0 = batches_sent(), buyers0 = buyers_batched();
    buyer_calls = 0;
    static const char *users[] = {"a", "b", "c", "c", "d", "e", "f", "g"};
    enum { N = sizeof(users) / sizeof(users[0]) };
    buyer_res_t res[N];
    memset(res, 0, sizeof(res));
    for (int i = 0; i < N; i++)
        deduct_submit(b, "g", users[i], 1, on_buyer, &res[i]);
    /* "a" left alone, at once; the rest wait for its reply */
    assert_int_equal(batches_sent() - batches0, 1);
    assert_int_equal(buyers_batched() - buyers0, 1);
    assert_true(test_wait_count(&loop, &buyer_calls, N, 5000));
    assert_int_equal(batches_sent() - batches0, 2);
    assert_int_equal(buyers_batched() - buyers0, N);
    static const deduct_verdict_t want[N] = {
        DEDUCT_OK, DEDUCT_OK, DEDUCT_OK,       DEDUCT_LIMIT_REACHED,
        DEDUCT_OK, DEDUCT_OK, DEDUCT_SOLD_OUT, DEDUCT_SOLD_OUT};
    for (int i = 0; i < N; i++) {
        assert_int_equal(res[i].calls, 1);
        assert_int_equal(res[i].order, i);
        assert_int_equal(res[i].verdict, want[i]);
    }
    assert_int_equal(res[3].held, 1);
    assert_int_equal(res[5].remaining, 0);
    assert_string_not_equal(res[1].id, res[2].id);
    assert_int_equal(admin_int("HGET {g}:meta %s", "sold"), 5);
    /* One {E}:pending entry per batch that sold, named by its first order: a's, and b's for
     * b, c, d, e. */
    assert_int_equal(admin_int("HLEN {g}:pending%s", ""), 2);
    char want_val[64];
    snprintf(want_val, sizeof(want_val), "%.13s 4", res[1].id);
    redisReply *v = admin("HGET {g}:pending %s", res[1].id);
    assert_int_equal(v->type, REDIS_REPLY_STRING);
    assert_string_equal(v->str, want_val);
    freeReplyObject(v);

    /* Acknowledged entries ride on the next batch of their event... */
    pending_ack(p, res[0].id);
    buyer_res_t late = {0};
    deduct_submit(b, "g", "h", 1, on_buyer, &late);
    assert_true(test_wait_count(&loop, &late.calls, 1, 5000));
    assert_int_equal(late.verdict, DEDUCT_SOLD_OUT);
    assert_int_equal(admin_int("HLEN {g}:pending%s", ""), 1);
    test_run_for(&loop, 20); /* pending's loop-turn flush found nothing left to send */
    assert_int_equal(pending_inflight(p), 0);
    assert_int_equal(admin_int("HLEN {g}:pending%s", ""), 1);
    /* ...or, with no batch about to go, leave by an HDEL of their own on the next loop turn. */
    pending_ack(p, res[1].id);
    test_run_for(&loop, 20);
    wait_hdels(p);
    assert_int_equal(admin_int("HLEN {g}:pending%s", ""), 0);
    close_batcher_and_drain(b, p, c);
}

/* A batch's {E}:pending entry goes only once every order it sold was acknowledged: the batcher
 * hands its sales a pending_batch_t, and the last release of an all-acknowledged batch queues the
 * entry's HDEL. One order not acknowledged: the entry stays (reconciliation's). */
static void test_batch_entry_needs_every_ack(void **state)
{
    (void)state;
    redis_client_t *c = start_client(read_source("lua/deduct.lua"), 5000);
    admin_ok("HSET {q}:meta stock 10 sold 0 limit 1 gen 1");
    pending_t *p = pending_new(&loop, &c);
    deduct_batcher_t *b = deduct_batcher_new(c, p, "h1", 5000);
    char key[KEYSPACE_ORDER_ID_MAX + 1];
    for (int round = 0; round < 2; round++) {
        buyer_calls = 0;
        buyer_res_t res[4];
        memset(res, 0, sizeof(res));
        redisContext *sleeper = admin_sleep(1);
        static const char *users[2][4] = {{"a", "b", "b", "c"}, {"d", "e", "f", "e"}};
        for (int i = 0; i < 4; i++)
            deduct_submit(b, "q", users[round][i], 1, on_buyer_keep, &res[i]);
        assert_true(test_wait_count(&loop, &buyer_calls, 4, 5000));
        redisFree(sleeper);
        /* users[0] alone, then a batch of three buyers, two of whom bought */
        assert_int_equal(res[2].verdict, round == 0 ? DEDUCT_LIMIT_REACHED : DEDUCT_OK);
        assert_null(res[round == 0 ? 2 : 3].batch);
        assert_ptr_equal(res[1].batch, res[round == 0 ? 3 : 2].batch);
        assert_ptr_not_equal(res[0].batch, res[1].batch);
        assert_int_equal(admin_int("HLEN {q}:pending%s", ""), round == 0 ? 2 : 3);
        /* users[0]'s batch: acknowledged, its entry goes */
        assert_true(pending_batch_release(res[0].batch, true, key));
        assert_string_equal(key, res[0].id);
        pending_ack(p, key);
        /* the batch of two: one acknowledged, the other not (round 0) or both (round 1) */
        buyer_res_t *second = &res[round == 0 ? 3 : 2];
        assert_false(pending_batch_release(res[1].batch, true, key));
        bool all = pending_batch_release(second->batch, round == 1, key);
        assert_int_equal(all, round == 1);
        if (all) {
            assert_string_equal(key, res[1].id);
            pending_ack(p, key);
        }
        test_run_for(&loop, 20);
        wait_hdels(p);
        /* round 0 leaves the entry of b, c; round 1 removes both of its own */
        assert_int_equal(admin_int("HLEN {q}:pending%s", ""), 1);
    }
    close_batcher_and_drain(b, p, c);
}

/* A batch whose reply is not all understood: the buyers who bought still learn it, but none
 * holds the batch's {E}:pending entry, since the orders counted could be fewer than the entry
 * names and deleting it would lose the others (reconciliation keeps them). The script answers
 * its first buyer a sale and every other one a verdict deduct.lua never gives. */
static const char HALF_KNOWN_SCRIPT[] = "local n = tonumber(ARGV[4])\n"
                                        "local out = {1}\n"
                                        "for i = 2, n do out[i] = {'bogus'} end\n"
                                        "out[n + 1] = {'1', '1700000000000', '0', 7}\n"
                                        "return out\n";

static void test_batch_entry_not_kept_on_a_bad_reply(void **state)
{
    (void)state;
    redis_client_t *c = start_client(HALF_KNOWN_SCRIPT, 5000);
    pending_t *p = pending_new(&loop, &c);
    deduct_batcher_t *b = deduct_batcher_new(c, p, "h1", 5000);
    buyer_calls = 0;
    buyer_res_t res[3];
    memset(res, 0, sizeof(res));
    redisContext *sleeper = admin_sleep(1);
    deduct_submit(b, "hk", "a", 1, on_buyer_keep, &res[0]); /* alone: understood */
    deduct_submit(b, "hk", "b", 1, on_buyer_keep, &res[1]); /* these two: one batch */
    deduct_submit(b, "hk", "c", 1, on_buyer_keep, &res[2]);
    assert_true(test_wait_count(&loop, &buyer_calls, 3, 5000));
    redisFree(sleeper);
    assert_int_equal(res[0].verdict, DEDUCT_OK);
    assert_non_null(res[0].batch);
    assert_int_equal(res[1].verdict, DEDUCT_OK);
    assert_string_equal(res[1].id, "1700000000000-0000000007-hk");
    assert_ptr_equal(res[2].err, deduct_err_bad_reply);
    assert_null(res[1].batch);
    char key[KEYSPACE_ORDER_ID_MAX + 1];
    assert_true(pending_batch_release(res[0].batch, true, key));
    close_batcher_and_drain(b, p, c);
}

/* While a batch is in flight with buyers queued behind it, acknowledged ids of its event wait
 * for the next batch instead of costing an HDEL; those of other events go by HDEL. */
static void test_batch_carries_acks(void **state)
{
    (void)state;
    redis_client_t *c = start_client(read_source("lua/deduct.lua"), 5000);
    admin_ok("HSET {m}:meta stock 5 sold 0 limit 5 gen 1");
    admin_ok("HSET {m}:pending 1700000000000-0000000001-m 1 1700000000000-0000000002-m 1");
    admin_ok("HSET {o}:pending 1700000000000-0000000001-o 1");
    pending_t *p = pending_new(&loop, &c);
    deduct_batcher_t *b = deduct_batcher_new(c, p, "h1", 5000);
    redisContext *sleeper = admin_sleep(1);
    buyer_calls = 0;
    buyer_res_t res[2];
    memset(res, 0, sizeof(res));
    deduct_submit(b, "m", "x", 1, on_buyer, &res[0]);
    deduct_submit(b, "m", "y", 1, on_buyer, &res[1]);
    pending_ack(p, "1700000000000-0000000001-m");
    pending_ack(p, "1700000000000-0000000002-m");
    pending_ack(p, "1700000000000-0000000001-o");
    test_run_for(&loop, 50);                  /* Redis asleep: x's batch in flight, y queued */
    assert_int_equal(pending_inflight(p), 1); /* the HDEL of {o}:pending only */
    assert_true(test_wait_count(&loop, &buyer_calls, 2, 5000));
    redisFree(sleeper);
    wait_hdels(p);
    assert_int_equal(res[0].verdict, DEDUCT_OK);
    assert_int_equal(res[1].verdict, DEDUCT_OK);
    /* x's and y's batches are new entries; the two acknowledged ones went with y's batch. */
    assert_int_equal(admin_int("HLEN {m}:pending%s", ""), 2);
    assert_int_equal(admin_int("HEXISTS {m}:pending %s", "1700000000000-0000000001-m"), 0);
    assert_int_equal(admin_int("HLEN {o}:pending%s", ""), 0);
    close_batcher_and_drain(b, p, c);
}

/* The connection dies with a batch sent: its buyers may have bought (unknown outcome); the
 * buyers queued behind it were never sent (an error: nothing deducted). */
static void test_batch_connection_lost(void **state)
{
    (void)state;
    redis_client_t *c = start_client(read_source("lua/deduct.lua"), 5000);
    admin_ok("HSET {k}:meta stock 5 sold 0 limit 1 gen 1");
    deduct_batcher_t *b = deduct_batcher_new(c, NULL, "h1", 5000);
    assert_non_null(b);
    redisContext *sleeper = admin_sleep(2);
    buyer_calls = 0;
    buyer_res_t sent = {0}, queued[2];
    memset(queued, 0, sizeof(queued));
    deduct_submit(b, "k", "x", 1, on_buyer, &sent);
    deduct_submit(b, "k", "y", 1, on_buyer, &queued[0]);
    deduct_submit(b, "k", "z", 1, on_buyer, &queued[1]);
    test_run_for(&loop, 100); /* the batch of x is written, Redis asleep */
    assert_int_equal(buyer_calls, 0);
    test_redis_kill9(&redis);
    redisFree(sleeper);
    assert_true(test_wait_count(&loop, &buyer_calls, 3, 3000));
    assert_int_equal(sent.verdict, DEDUCT_UNKNOWN_OUTCOME);
    assert_ptr_equal(sent.err, redis_err_lost);
    assert_int_equal(queued[0].verdict, DEDUCT_ERROR);
    assert_int_equal(queued[1].verdict, DEDUCT_ERROR);
    assert_true(queued[0].order < queued[1].order);
    close_batcher_and_drain(b, NULL, c);
}

static void test_timeout_then_recovers(void **state)
{
    (void)state;
    redis_client_t *c = start_client(INCR_SCRIPT, 100);
    redisContext *sleeper = admin_sleep(1);
    result_t a = {0}, b = {0};
    cmd(c, &a, "PING", NULL, NULL);
    eval_incr(c, &b, "t", 0);
    assert_true(test_wait_count(&loop, &b.calls, 1, 3000));
    assert_int_equal(a.calls, 1);
    assert_true(a.null_reply);
    assert_string_equal(a.err, "timeout");
    assert_true(b.null_reply);
    /* Each command times out at its own deadline; none is cut short as "connection lost". */
    assert_string_equal(b.err, "timeout");

    /* Redis still asleep: after STALL_FACTOR deadlines the client takes no new commands. */
    assert_true(test_run_until(&loop, is_not_ready, c, 2000));
    result_t fast = {0};
    cmd(c, &fast, "PING", NULL, NULL);
    assert_int_equal(fast.calls, 1);
    assert_true(fast.null_reply);

    /* Reconnects by itself once Redis answers again. */
    assert_true(test_run_until(&loop, is_ready, c, 10000));
    result_t ok = {0}, ev = {0};
    cmd(c, &ok, "PING", NULL, NULL);
    eval_incr(c, &ev, "t", 7);
    assert_true(test_wait_count(&loop, &ev.calls, 1, 3000));
    assert_string_equal(ok.str, "PONG");
    assert_int_equal(atoi(ev.el[0]), 7);
    redisFree(sleeper);
    close_and_drain(c);
}

static void test_redis_killed_and_restarted(void **state)
{
    (void)state;
    enum { N = 10 };
    redis_client_t *c = start_client(INCR_SCRIPT, 5000);
    redisContext *sleeper = admin_sleep(2);
    result_t res[N] = {0};
    int done = 0;
    for (int i = 0; i < N; i++)
        cmd(c, &res[i], "PING", NULL, NULL);
    test_run_for(&loop, 100); /* written, waiting for replies */
    test_redis_kill9(&redis);
    redisFree(sleeper);
    assert_true(test_wait_count(&loop, &res[N - 1].calls, 1, 3000));
    for (int i = 0; i < N; i++) {
        assert_int_equal(res[i].calls, 1);
        assert_true(res[i].null_reply);
        assert_string_equal(res[i].err, "connection lost");
        done++;
    }
    assert_int_equal(done, N);

    result_t fast = {0}, fast_eval = {0};
    cmd(c, &fast, "PING", NULL, NULL);
    eval_incr(c, &fast_eval, "x", 1);
    assert_int_equal(fast.calls, 1);
    assert_string_equal(fast.err, "not connected");
    assert_int_equal(fast_eval.calls, 1);
    assert_true(fast_eval.null_reply);
    test_run_for(&loop, 300); /* a few refused reconnection attempts */
    assert_false(redis_client_ready(c));

    assert_int_equal(test_redis_start_args(&redis, redis_args), 0);
    assert_true(test_run_until(&loop, is_ready, c, 10000));
    result_t ev = {0};
    eval_incr(c, &ev, "x", 5);
    assert_true(test_wait_count(&loop, &ev.calls, 1, 3000));
    assert_false(ev.null_reply);
    assert_int_equal(atoi(ev.el[0]), 5);
    assert_int_equal(atoi(ev.el[1]), 1);
    /* The new server got the script by SCRIPT LOAD, not by a NOSCRIPT fallback. */
    assert_int_equal(cmd_calls("eval"), 0);
    assert_int_equal(cmd_calls("script|load"), 1);
    close_and_drain(c);
}

typedef struct {
    int calls;
    int ok;
    char err[256];
} done_t;

static void on_script_done(int ok, const char *err, void *arg)
{
    done_t *d = arg;
    d->calls++;
    d->ok = ok;
    snprintf(d->err, sizeof(d->err), "%s", err ? err : "");
}

static void eval_plain(redis_client_t *c, result_t *res)
{
    redis_eval(c, on_result, res, 0, 0, NULL, NULL);
}

static void test_set_script(void **state)
{
    (void)state;
    redis_client_t *c = start_client("return 'A'", 5000);
    done_t broken = {0};
    redis_client_set_script(c, "return (", on_script_done, &broken);
    assert_true(test_wait_count(&loop, &broken.calls, 1, 3000));
    assert_int_equal(broken.ok, 0);
    assert_true(strlen(broken.err) > 0);
    result_t a = {0};
    eval_plain(c, &a);
    assert_true(test_wait_count(&loop, &a.calls, 1, 3000));
    assert_string_equal(a.str, "A");

    done_t good = {0};
    redis_client_set_script(c, "return 'B'", on_script_done, &good);
    assert_true(test_wait_count(&loop, &good.calls, 1, 3000));
    assert_int_equal(good.ok, 1);
    result_t b = {0};
    eval_plain(c, &b);
    assert_true(test_wait_count(&loop, &b.calls, 1, 3000));
    assert_string_equal(b.str, "B");

    /* NOSCRIPT falls back to the new source too. */
    admin_ok("SCRIPT FLUSH");
    result_t b2 = {0};
    eval_plain(c, &b2);
    assert_true(test_wait_count(&loop, &b2.calls, 1, 3000));
    assert_string_equal(b2.str, "B");
    close_and_drain(c);

    /* Not connected: kept for the connection (test_set_script_while_down), until the close. */
    redis_client_t *d = NULL;
    assert_int_equal(redis_client_start(&d, &loop, "127.0.0.1", test_free_port(), "return 1", 100),
                     0);
    done_t nc = {0};
    redis_client_set_script(d, "return 2", on_script_done, &nc);
    test_run_for(&loop, 100);
    assert_int_equal(nc.calls, 0);
    assert_true(redis_client_script_parked(d));
    close_and_drain(d);
    assert_int_equal(nc.calls, 1);
    assert_int_equal(nc.ok, 0);
    assert_string_equal(nc.err, "closing");
}

/* A new script given while Redis is down is what the connection loads once Redis is back (the
 * reload is not lost); of two given meanwhile the later wins; one Redis refuses when it is back
 * leaves the old one serving. */
static void test_set_script_while_down(void **state)
{
    (void)state;
    redis_client_t *c = start_client("return 'A'", 5000);
    test_redis_kill9(&redis);
    assert_true(test_run_until(&loop, is_not_ready, c, 3000));
    done_t b = {0}, cc = {0};
    redis_client_set_script(c, "return 'B'", on_script_done, &b);
    redis_client_set_script(c, "return 'C'", on_script_done, &cc);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.ok, 0);
    assert_string_equal(b.err, "superseded by a newer script");
    assert_int_equal(cc.calls, 0);
    assert_true(redis_client_script_parked(c));
    assert_int_equal(test_redis_start_args(&redis, redis_args), 0);
    assert_true(test_run_until(&loop, is_ready, c, 10000));
    assert_int_equal(cc.calls, 1);
    assert_int_equal(cc.ok, 1);
    assert_false(redis_client_script_parked(c));
    result_t r = {0};
    eval_plain(c, &r);
    assert_true(test_wait_count(&loop, &r.calls, 1, 3000));
    assert_string_equal(r.str, "C");
    /* Only the new script went to the new server, and by SCRIPT LOAD. */
    assert_int_equal(cmd_calls("script|load"), 1);
    assert_int_equal(cmd_calls("eval"), 0);

    test_redis_kill9(&redis);
    assert_true(test_run_until(&loop, is_not_ready, c, 3000));
    done_t broken = {0};
    redis_client_set_script(c, "return (", on_script_done, &broken);
    assert_int_equal(test_redis_start_args(&redis, redis_args), 0);
    assert_true(test_run_until(&loop, is_ready, c, 10000));
    assert_int_equal(broken.calls, 1);
    assert_int_equal(broken.ok, 0);
    result_t r2 = {0};
    eval_plain(c, &r2);
    assert_true(test_wait_count(&loop, &r2.calls, 1, 3000));
    assert_string_equal(r2.str, "C");
    close_and_drain(c);
}

static void test_close_with_pending(void **state)
{
    (void)state;
    enum { N = 40 };
    redis_client_t *c = start_client(INCR_SCRIPT, 5000);
    redisContext *sleeper = admin_sleep(1);
    result_t res[N] = {0};
    for (int i = 0; i < N; i++) {
        if (i % 2)
            cmd(c, &res[i], "PING", NULL, NULL);
        else
            eval_incr(c, &res[i], "p", i);
    }
    test_run_for(&loop, 50);
    for (int i = 0; i < N; i++)
        assert_int_equal(res[i].calls, 0);
    close_and_drain(c);
    for (int i = 0; i < N; i++) {
        assert_int_equal(res[i].calls, 1);
        assert_true(res[i].null_reply);
        assert_string_equal(res[i].err, "closing");
    }
    redisFree(sleeper);
}

static redis_client_t *closing_client;

static void on_result_then_close(redisReply *r, const char *err, void *data)
{
    on_result(r, err, data);
    redis_client_close(closing_client);
}

static void test_close_from_callback(void **state)
{
    (void)state;
    enum { N = 10 };
    closing_client = start_client(INCR_SCRIPT, 5000);
    result_t first = {0}, res[N] = {0};
    const char *ping[] = {"PING"};
    redis_command(closing_client, on_result_then_close, &first, 1, ping, NULL);
    for (int i = 0; i < N; i++)
        eval_incr(closing_client, &res[i], "q", i);
    assert_true(test_wait_count(&loop, &res[N - 1].calls, 1, 3000));
    assert_int_equal(first.calls, 1);
    assert_string_equal(first.str, "PONG");
    for (int i = 0; i < N; i++) {
        assert_int_equal(res[i].calls, 1);
        assert_true(res[i].null_reply);
        assert_string_equal(res[i].err, "closing");
    }
    assert_true(test_loop_drain(&loop, 1000));
}

static void test_no_server(void **state)
{
    (void)state;
    redis_client_t *c = NULL;
    assert_int_equal(redis_client_start(&c, &loop, "localhost", redis.port, "return 1", 100),
                     -EINVAL);
    assert_null(c);
    assert_int_equal(redis_client_start(&c, &loop, "127.0.0.1", test_free_port(), "return 1", 100),
                     0);
    test_run_for(&loop, 300);
    assert_false(redis_client_ready(c));
    result_t r = {0};
    eval_plain(c, &r);
    assert_int_equal(r.calls, 1);
    assert_string_equal(r.err, "not connected");
    close_and_drain(c);
}

/* A peer that completes the TCP handshake (kernel backlog) but never answers: the client's
 * SCRIPT LOAD times out, it retries, never becomes ready, and closes cleanly. */
static void test_silent_server(void **state)
{
    (void)state;
    int port = test_free_port();
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 16), 0);
    redis_client_t *c = NULL;
    assert_int_equal(redis_client_start(&c, &loop, "127.0.0.1", port, "return 1", 50), 0);
    test_run_for(&loop, 500);
    assert_false(redis_client_ready(c));
    result_t r = {0};
    eval_plain(c, &r);
    assert_int_equal(r.calls, 1);
    assert_true(r.null_reply);
    close_and_drain(c);
    close(fd);
}

/* A first script that does not compile leaves the client connected but not ready; a good one
 * given later through set_script makes it ready. */
static void test_broken_initial_script(void **state)
{
    (void)state;
    redis_client_t *c = NULL;
    assert_int_equal(redis_client_start(&c, &loop, "127.0.0.1", redis.port, "return (", 1000), 0);
    result_t ping = {0};
    for (int i = 0; i < 200 && ping.calls == 0; i++) {
        test_run_for(&loop, 10);
        if (!ping.calls)
            cmd(c, &ping, "PING", NULL, NULL);
        if (ping.calls && ping.null_reply)
            memset(&ping, 0, sizeof(ping)); /* not connected yet */
    }
    assert_true(test_wait_count(&loop, &ping.calls, 1, 3000));
    assert_string_equal(ping.str, "PONG");
    test_run_for(&loop, 50);
    assert_false(redis_client_ready(c));
    result_t r = {0};
    eval_plain(c, &r);
    assert_int_equal(r.calls, 1);
    assert_true(r.null_reply);
    done_t good = {0};
    redis_client_set_script(c, "return 'ok'", on_script_done, &good);
    assert_true(test_wait_count(&loop, &good.calls, 1, 3000));
    assert_int_equal(good.ok, 1);
    assert_true(redis_client_ready(c));
    result_t r2 = {0};
    eval_plain(c, &r2);
    assert_true(test_wait_count(&loop, &r2.calls, 1, 3000));
    assert_string_equal(r2.str, "ok");
    close_and_drain(c);
}

/* A refused AUTH (wrong password) is retried on the same connection: once the server accepts
 * the password, the client becomes ready by itself. */
static void test_auth_refused_then_accepted(void **state)
{
    (void)state;
    admin_ok("CONFIG SET requirepass %s", "other-secret");
    redis_client_t *c = NULL;
    assert_int_equal(redis_client_start_auth(&c, &loop, "127.0.0.1", redis.port, "return 1", 1000,
                                             NULL, "my-secret"),
                     0);
    test_run_for(&loop, 400);
    assert_false(redis_client_ready(c));
    result_t ping = {0};
    cmd(c, &ping, "PING", NULL, NULL);
    assert_int_equal(ping.calls, 1);
    assert_true(ping.null_reply); /* nothing but AUTH goes out before AUTH succeeded */
    redisContext *a = test_redis_connect(&redis);
    assert_non_null(a);
    redisReply *r = redisCommand(a, "AUTH %s", "other-secret");
    freeReplyObject(r);
    r = redisCommand(a, "CONFIG SET requirepass %s", "my-secret");
    assert_non_null(r);
    assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
    freeReplyObject(r);
    redisFree(a);
    assert_true(test_run_until(&loop, is_ready, c, 3000));
    close_and_drain(c);
}

/* SCRIPT LOAD refused with BUSY (a long script runs) is retried until the script is killed. */
static void test_busy_then_ready(void **state)
{
    (void)state;
    admin_ok("CONFIG SET busy-reply-threshold 50");
    redisContext *busy = test_redis_connect(&redis);
    assert_non_null(busy);
    redisAppendCommand(busy, "EVAL %s 0", "while true do end");
    int done = 0;
    while (!done)
        assert_int_equal(redisBufferWrite(busy, &done), REDIS_OK);
    usleep(200 * 1000); /* past busy-reply-threshold: Redis now answers BUSY */
    redis_client_t *c = NULL;
    assert_int_equal(redis_client_start(&c, &loop, "127.0.0.1", redis.port, "return 1", 1000), 0);
    test_run_for(&loop, 600);
    assert_false(redis_client_ready(c));
    admin_ok("SCRIPT KILL");
    assert_true(test_run_until(&loop, is_ready, c, 3000));
    redisFree(busy);
    close_and_drain(c);
}

/* ---- reply objects ---- */

static void assert_same_reply(const redisReply *a, const redisReply *b)
{
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(a->type, b->type);
    switch (a->type) {
    case REDIS_REPLY_ARRAY:
        assert_int_equal(a->elements, b->elements);
        for (size_t i = 0; i < a->elements; i++)
            assert_same_reply(a->element[i], b->element[i]);
        break;
    case REDIS_REPLY_INTEGER:
        assert_int_equal(a->integer, b->integer);
        break;
    case REDIS_REPLY_NIL:
        break;
    default:
        assert_int_equal(a->len, b->len);
        assert_memory_equal(a->str, b->str, a->len);
        assert_int_equal(a->str[a->len], '\0');
        break;
    }
}

/* Reads every reply of wire in pieces of `step` bytes with both readers. */
static void compare_readers(const char *wire, size_t len, size_t step, int want)
{
    redisReader *ours = redisReaderCreateWithFunctions(redis_conn_reply_fns());
    redisReader *theirs = redisReaderCreate();
    int got = 0;
    for (size_t off = 0; off < len; off += step) {
        size_t n = len - off < step ? len - off : step;
        assert_int_equal(redisReaderFeed(ours, wire + off, n), REDIS_OK);
        assert_int_equal(redisReaderFeed(theirs, wire + off, n), REDIS_OK);
        for (;;) {
            void *a = NULL, *b = NULL;
            assert_int_equal(redisReaderGetReply(ours, &a), REDIS_OK);
            assert_int_equal(redisReaderGetReply(theirs, &b), REDIS_OK);
            assert_true((a == NULL) == (b == NULL));
            if (a == NULL)
                break;
            assert_same_reply(a, b);
            redis_conn_reply_fns()->freeObject(a);
            freeReplyObject(b);
            got++;
        }
    }
    assert_int_equal(got, want);
    /* A reply cut off in the middle is freed with the reader. */
    assert_int_equal(redisReaderFeed(ours, "*3\r\n$2\r\nab\r\n*2\r\n:1\r\n", 20), REDIS_OK);
    void *a = NULL;
    assert_int_equal(redisReaderGetReply(ours, &a), REDIS_OK);
    assert_null(a);
    redisReaderFree(ours);
    redisReaderFree(theirs);
}

/* The connections' reply builders give the same trees as hiredis's own, inline and allocated
 * strings and vectors alike, whatever pieces the input arrives in. */
static void test_reply_objects(void **state)
{
    (void)state;
    char wire[8192];
    size_t len = 0;
    char long_str[200];
    memset(long_str, 'x', sizeof(long_str));
#define PUT(...) len += (size_t)snprintf(wire + len, sizeof(wire) - len, __VA_ARGS__)
    PUT("+OK\r\n-ERR something\r\n:-42\r\n$-1\r\n*-1\r\n*0\r\n$0\r\n\r\n");
    PUT("$63\r\n%.63s\r\n$64\r\n%.64s\r\n$200\r\n%.200s\r\n", long_str, long_str, long_str);
    /* A batch reply: more buyers than a node holds inline, each an array of mixed elements. */
    PUT("*20\r\n");
    for (int i = 0; i < 20; i++)
        PUT("*7\r\n$2\r\nok\r\n$31\r\n1700000000000-0000000001-ev%04d\r\n:%d\r\n:1\r\n"
            ":1700000000000\r\n:0\r\n$-1\r\n",
            i, 1000 - i);
    PUT("*9\r\n:1\r\n:2\r\n:3\r\n:4\r\n:5\r\n:6\r\n:7\r\n:8\r\n*1\r\n*1\r\n$70\r\n%.70s\r\n",
        long_str);
#undef PUT
    assert_true(len < sizeof(wire));
    compare_readers(wire, len, len, 12);
    compare_readers(wire, len, 1, 12);
    compare_readers(wire, len, 7, 12);
}

/* redis_reply_int reads integers directly: the same answers as through their decimal text (at
 * most 19 characters, so a 19-digit negative gives -1), and strings still go by their text. */
static void test_reply_int(void **state)
{
    (void)state;
    const long long ints[] = {0,
                              1,
                              -1,
                              1700000000000LL,
                              INT64_MAX,
                              -999999999999999999LL,
                              -1000000000000000000LL,
                              INT64_MIN + 1,
                              INT64_MIN};
    const int64_t want[] = {0,  1,  -1, 1700000000000LL, INT64_MAX, -999999999999999999LL,
                            -1, -1, -1};
    for (size_t k = 0; k < sizeof(ints) / sizeof(ints[0]); k++) {
        redisReply e = {.type = REDIS_REPLY_INTEGER, .integer = ints[k]};
        redisReply *el[1] = {&e};
        redisReply arr = {.type = REDIS_REPLY_ARRAY, .elements = 1, .element = el};
        assert_int_equal(redis_reply_int(&arr, 0), want[k]);
        char txt[32];
        assert_int_equal(redis_reply_str(&arr, 0, txt, sizeof(txt)), 0);
        char expect[32];
        snprintf(expect, sizeof(expect), "%lld", ints[k]);
        assert_string_equal(txt, expect);
        assert_int_equal(redis_reply_int(&arr, 1), -1); /* past the end */
    }
    char num[] = "-42", bad[] = "4x";
    redisReply s1 = {.type = REDIS_REPLY_STRING, .str = num, .len = 3};
    redisReply s2 = {.type = REDIS_REPLY_STRING, .str = bad, .len = 2};
    redisReply *el[2] = {&s1, &s2};
    redisReply arr = {.type = REDIS_REPLY_ARRAY, .elements = 2, .element = el};
    assert_int_equal(redis_reply_int(&arr, 0), -42);
    assert_int_equal(redis_reply_int(&arr, 1), -1);
    redisReply notarr = {.type = REDIS_REPLY_INTEGER, .integer = 5};
    assert_int_equal(redis_reply_int(&notarr, 0), -1);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* as the host does: hiredis writes to sockets the server closed */
    metrics_init();
    atexit(at_exit_kill);
    if (getenv("TEST_FILTER") != NULL)
        cmocka_set_test_filter(getenv("TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reply_objects),
        cmocka_unit_test(test_reply_int),
        cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eval_many_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_large_and_small_commands, setup, teardown),
        cmocka_unit_test_setup_teardown(test_noscript_recovery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deduct_script, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_group_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_carries_acks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_entry_needs_every_ack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_entry_not_kept_on_a_bad_reply, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch_connection_lost, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_then_recovers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_killed_and_restarted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_script, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_script_while_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_with_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_from_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_server, setup, teardown),
        cmocka_unit_test_setup_teardown(test_silent_server, setup, teardown),
        cmocka_unit_test_setup_teardown(test_broken_initial_script, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth_refused_then_accepted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_busy_then_ready, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
