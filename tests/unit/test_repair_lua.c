/* lua/repair.lua and the owner gate of lua/deduct.lua, run by a real redis-server
 * (tests/unit/redis_server.h, standalone: a node's identity is its run id there). Each test
 * starts from an empty database. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "redis_server.h"
#include "util.h"

static test_redis_t redis = {.pid = -1};
static redisContext *rc;
static char *repair_src, *deduct_src;
static char run_id[64];

#define TOKEN "h1:1:1"
#define TTL "30000"

static redisReply *cmdv(int argc, const char **argv)
{
    size_t lens[64];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    redisReply *r = redisCommandArgv(rc, argc, argv, lens);
    assert_non_null(r);
    return r;
}

/* EVAL repair.lua on event ev with args (NULL-terminated). */
static redisReply *repairv(const char *ev, const char *const *args)
{
    char keys[5][96];
    const char *sfx[5] = {"meta", "users", "orders", "uorders", "repair"};
    const char *argv[64] = {"EVAL", repair_src, "5"};
    int argc = 3;
    for (int i = 0; i < 5; i++) {
        snprintf(keys[i], sizeof(keys[i]), "{%s}:%s", ev, sfx[i]);
        argv[argc++] = keys[i];
    }
    for (; *args != NULL && argc < 64; args++)
        argv[argc++] = *args;
    return cmdv(argc, argv);
}

static redisReply *repair(const char *ev, ...)
{
    const char *args[48];
    int n = 0;
    va_list ap;
    va_start(ap, ev);
    for (const char *a; n < 47 && (a = va_arg(ap, const char *)) != NULL;)
        args[n++] = a;
    va_end(ap);
    args[n] = NULL;
    return repairv(ev, args);
}

/* deduct.lua, one buyer of one unit. */
static redisReply *deduct(const char *ev, const char *user)
{
    char keys[5][96];
    const char *sfx[5] = {"meta", "users", "orders", "uorders", "pending"};
    const char *argv[24] = {"EVAL", deduct_src, "5"};
    int argc = 3;
    for (int i = 0; i < 5; i++) {
        snprintf(keys[i], sizeof(keys[i]), "{%s}:%s", ev, sfx[i]);
        argv[argc++] = keys[i];
    }
    /* event, host, deadline, n, hold_ms, keep, idempotency window; user, qty, key */
    const char *args[] = {ev, "h1", "0", "1", "0", "0", "3600000", user, "1", ""};
    for (int i = 0; i < 10; i++)
        argv[argc++] = args[i];
    return cmdv(argc, argv);
}

static void run(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
    freeReplyObject(r);
}

static long long hget_int(const char *key, const char *field)
{
    redisReply *r = redisCommand(rc, "HGET %s %s", key, field);
    long long v = r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10) : -1;
    freeReplyObject(r);
    return v;
}

static void hget_str(const char *key, const char *field, char *out, size_t cap)
{
    redisReply *r = redisCommand(rc, "HGET %s %s", key, field);
    snprintf(out, cap, "%s", r->type == REDIS_REPLY_STRING ? r->str : "(nil)");
    freeReplyObject(r);
}

static void expect_verdict(redisReply *r, const char *v)
{
    if (r->type == REDIS_REPLY_ERROR)
        fail_msg("error reply: %s", r->str);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_string_equal(r->element[0]->str, v);
}

/* deduct.lua's reply to one buyer who bought: the units left, then the batch's element. */
static void expect_sold(redisReply *r)
{
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->elements, 2);
    assert_int_equal(r->element[0]->type, REDIS_REPLY_INTEGER);
    assert_int_equal(r->element[1]->type, REDIS_REPLY_ARRAY);
}

static long long elem(redisReply *r, size_t i)
{
    assert_true(r->elements > i);
    return r->element[i]->type == REDIS_REPLY_INTEGER ? r->element[i]->integer
                                                      : strtoll(r->element[i]->str, NULL, 10);
}

/* An event "e" of stock 10, limit 5, with two orders sold (seq 1 and 2) and base 0. */
#define ID(seq) "1700000000000-000000000" #seq "-e"
static void two_sold(void)
{
    run("HSET {e}:meta stock 10 sold 2 limit 5 gen 1 seq 2 base 0");
    run("HSET {e}:orders %s {} %s {}", ID(1), ID(2));
    run("HSET {e}:users u1 1 u2 1");
    run("HSET {e}:uorders u1 %s u2 %s", ID(1), ID(2));
}

static void begin_claim(const char *ev)
{
    redisReply *r = repair(ev, "begin", ev, TOKEN, TTL, "", "1", NULL);
    expect_verdict(r, "started");
    assert_string_equal(r->element[1]->str, run_id);
    freeReplyObject(r);
}

static void test_unknown_and_unclaimed(void **state)
{
    (void)state;
    redisReply *r = repair("e", "begin", "e", TOKEN, TTL, "", "1", NULL);
    expect_verdict(r, "unknown_event");
    freeReplyObject(r);
    two_sold();
    r = repair("e", "begin", "e", TOKEN, TTL, "", "0", NULL);
    expect_verdict(r, "unclaimed"); /* standalone, no owner, no --redis-repair: untouched */
    freeReplyObject(r);
    /* Nothing gates an unclaimed event on a standalone server: it sells as before. */
    r = deduct("e", "u9");
    expect_sold(r);
    freeReplyObject(r);
}

static void test_restore_idempotent_then_current(void **state)
{
    (void)state;
    two_sold();
    begin_claim("e");
    /* 1 and 2 are there; 3 and 5 are lost; 3 twice; one order of another event; qty 0. */
    const char *chunk[] = {"chunk",
                           "e",
                           TOKEN,
                           TTL,
                           run_id,
                           "6",
                           ID(1),
                           "u1",
                           "1",
                           "h1",
                           "1700000000000",
                           ID(2),
                           "u2",
                           "1",
                           "h1",
                           "",
                           ID(3),
                           "u1",
                           "2",
                           "h2",
                           "1700000000001",
                           ID(5),
                           "u3",
                           "1",
                           "",
                           "",
                           ID(3),
                           "u1",
                           "2",
                           "h2",
                           "1700000000001",
                           "1700000000000-0000000004-f",
                           "u4",
                           "1",
                           "",
                           "",
                           NULL};
    const char *bad[] = {"chunk", "e", TOKEN, TTL, run_id, "1", ID(4), "u4", "0", "", "", NULL};
    for (int round = 0; round < 2; round++) {
        redisReply *r = repairv("e", chunk);
        expect_verdict(r, "ok");
        assert_int_equal(elem(r, 1), round == 0 ? 2 : 0); /* restored orders */
        assert_int_equal(elem(r, 2), round == 0 ? 3 : 0); /* restored units */
        assert_int_equal(elem(r, 3), 1);                  /* the other event's */
        freeReplyObject(r);
    }
    redisReply *r = repairv("e", bad);
    expect_verdict(r, "ok");
    assert_int_equal(elem(r, 1), 0);
    assert_int_equal(elem(r, 3), 1);
    freeReplyObject(r);
    assert_int_equal(hget_int("{e}:meta", "sold"), 5);
    assert_int_equal(hget_int("{e}:meta", "seq"), 5);
    assert_int_equal(hget_int("{e}:users", "u1"), 3);
    assert_int_equal(hget_int("{e}:users", "u3"), 1);
    char s[512];
    hget_str("{e}:uorders", "u1", s, sizeof(s));
    assert_string_equal(s, ID(1) "," ID(3));
    hget_str("{e}:orders", ID(3), s, sizeof(s));
    assert_non_null(strstr(s, "\"user\":\"u1\""));
    assert_non_null(strstr(s, "\"qty\":2"));
    assert_non_null(strstr(s, "\"host\":\"h2\""));
    assert_non_null(strstr(s, "\"created_at\":1700000000001"));
    r = repair("e", "finish", "e", TOKEN, TTL, run_id, "7", "100", NULL);
    expect_verdict(r, "done");
    assert_int_equal(elem(r, 1), 5);
    assert_int_equal(elem(r, 2), 10);
    freeReplyObject(r);
    hget_str("{e}:meta", "owner", s, sizeof(s));
    assert_string_equal(s, run_id);
    assert_int_equal(hget_int("{e}:meta", "seq"), 107); /* past seq_max 7, plus the gap */
    r = redisCommand(rc, "EXISTS {e}:repair");
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);
    r = repair("e", "begin", "e", TOKEN, TTL, "", "1", NULL);
    expect_verdict(r, "current");
    freeReplyObject(r);
    /* The next sale mints an id past every persisted one. */
    r = deduct("e", "u9");
    expect_sold(r);
    assert_int_equal(elem(r->element[1], 3), 108); /* first_seq */
    freeReplyObject(r);
}

static void test_gate(void **state)
{
    (void)state;
    two_sold();
    run("HSET {e}:meta owner 0123456789abcdef"); /* verified by another node */
    redisReply *r = deduct("e", "u9");
    assert_string_equal(r->element[0]->element[0]->str, "repairing");
    freeReplyObject(r);
    assert_int_equal(hget_int("{e}:meta", "sold"), 2);
    assert_int_equal(hget_int("{e}:meta", "seq"), 2);
    begin_claim("e");
    r = repair("e", "finish", "e", TOKEN, TTL, run_id, "0", "0", NULL);
    expect_verdict(r, "done");
    freeReplyObject(r);
    r = deduct("e", "u9");
    expect_sold(r);
    freeReplyObject(r);
}

static void test_lock_and_node(void **state)
{
    (void)state;
    two_sold();
    begin_claim("e");
    redisReply *r = repair("e", "begin", "e", "other", TTL, "", "1", NULL);
    expect_verdict(r, "busy");
    freeReplyObject(r);
    r = repair("e", "chunk", "e", "other", TTL, run_id, "0", NULL);
    expect_verdict(r, "lost_lock");
    freeReplyObject(r);
    r = repair("e", "finish", "e", TOKEN, TTL, "not-this-node", "0", "0", NULL);
    expect_verdict(r, "moved");
    freeReplyObject(r);
    /* The same token re-enters (a retry by the same host). */
    begin_claim("e");
    r = redisCommand(rc, "PTTL {e}:repair");
    assert_true(r->integer > 0 && r->integer <= 30000);
    freeReplyObject(r);
    r = repair("e", "chunk", "e", TOKEN, TTL, run_id, "2", ID(3), "u1", NULL);
    assert_int_equal(r->type, REDIS_REPLY_ERROR); /* a malformed chunk changes nothing */
    freeReplyObject(r);
    assert_int_equal(hget_int("{e}:meta", "sold"), 2);
    /* A failed repair gives the lock back; another token's release leaves it alone. */
    r = repair("e", "release", "e", "other", TTL, run_id, NULL);
    expect_verdict(r, "not_held");
    freeReplyObject(r);
    r = repair("e", "release", "e", TOKEN, TTL, run_id, NULL);
    expect_verdict(r, "released");
    freeReplyObject(r);
    r = repair("e", "begin", "e", "other", TTL, "", "1", NULL);
    expect_verdict(r, "started");
    freeReplyObject(r);
}

/* Orders of the sale before a reset (seq <= base) are never restored. An event without base
 * (created before repairs) takes this node's seq at its first begin. */
static void test_base(void **state)
{
    (void)state;
    run("HSET {e}:meta stock 10 sold 0 limit 5 gen 2 seq 4 base 4");
    begin_claim("e");
    redisReply *r = repair("e", "chunk", "e", TOKEN, TTL, run_id, "2", ID(3), "u1", "1", "", "",
                           ID(5), "u2", "1", "", "", NULL);
    expect_verdict(r, "ok");
    assert_int_equal(elem(r, 1), 1);
    freeReplyObject(r);
    assert_int_equal(hget_int("{e}:users", "u1"), -1);
    assert_int_equal(hget_int("{e}:users", "u2"), 1);
    run("HSET {f}:meta stock 10 sold 3 limit 5 gen 1 seq 3");
    begin_claim("f");
    assert_int_equal(hget_int("{f}:meta", "base"), 3);
}

/* Persisted orders beyond the stock: sold > stock is kept (never hidden), the event is sold
 * out. */
static void test_oversold_is_kept(void **state)
{
    (void)state;
    run("HSET {e}:meta stock 2 sold 2 limit 5 gen 1 seq 2 base 0");
    begin_claim("e");
    redisReply *r =
        repair("e", "chunk", "e", TOKEN, TTL, run_id, "1", ID(7), "u7", "1", "", "", NULL);
    expect_verdict(r, "ok");
    freeReplyObject(r);
    r = repair("e", "finish", "e", TOKEN, TTL, run_id, "7", "10", NULL);
    expect_verdict(r, "done");
    assert_int_equal(elem(r, 1), 3);
    assert_int_equal(elem(r, 2), 2);
    freeReplyObject(r);
    r = deduct("e", "u9");
    assert_string_equal(r->element[0]->element[0]->str, "sold_out");
    freeReplyObject(r);
}
/* Held orders (lua/order.lua) restored as the stream says they ended: held (back in {E}:holds)
 * and paid count in sold, released ones only keep their record and state. Then a persisted
 * transition of an order this node still has held is applied ('settle'). */
static void test_held_and_settle(void **state)
{
    (void)state;
    run("HSET {e}:meta stock 10 sold 1 limit 5 gen 1 seq 1 base 0");
    run("HSET {e}:orders %s {}", ID(1));
    run("HSET {e}:users u1 1");
    run("HSET {e}:state %s %s", ID(1), "held 9999999999999 0 1 u1");
    run("ZADD {e}:holds 9999999999999 %s", ID(1));
    begin_claim("e");
    redisReply *r = repair("e", "held", "e", TOKEN, TTL, run_id, "3", ID(2), "u2", "1", "h1",
                           "1700000000002", "held 9999999999998", ID(3), "u3", "2", "h1", "",
                           "expired 1700000000005 1700000000009", ID(4), "u4", "1", "", "",
                           "paid 1700000000006 1700000000009", NULL);
    expect_verdict(r, "ok");
    assert_int_equal(elem(r, 1), 3); /* restored orders */
    assert_int_equal(elem(r, 2), 2); /* units in sold: the held one and the paid one */
    freeReplyObject(r);
    assert_int_equal(hget_int("{e}:meta", "sold"), 3);
    assert_int_equal(hget_int("{e}:users", "u2"), 1);
    assert_int_equal(hget_int("{e}:users", "u3"), -1);
    assert_int_equal(hget_int("{e}:users", "u4"), 1);
    char s[256];
    hget_str("{e}:state", ID(2), s, sizeof(s));
    assert_string_equal(s, "held 9999999999998 0 1 u2");
    hget_str("{e}:state", ID(3), s, sizeof(s));
    assert_string_equal(s, "expired 1700000000005 1700000000009");
    hget_str("{e}:uorders", "u3", s, sizeof(s));
    assert_string_equal(s, ID(3));
    r = redisCommand(rc, "ZRANGE {e}:holds 0 -1");
    assert_int_equal(r->elements, 2);
    assert_string_equal(r->element[0]->str, ID(2));
    assert_string_equal(r->element[1]->str, ID(1));
    freeReplyObject(r);

    /* ID(1)'s cancel was persisted but lost here; ID(4)'s payment is already applied. */
    r = repair("e", "settle", "e", TOKEN, TTL, run_id, "2", ID(1), "cancelled", "1700000000007",
               ID(4), "paid", "1700000000006", NULL);
    expect_verdict(r, "ok");
    assert_int_equal(elem(r, 1), 1);
    assert_int_equal(elem(r, 2), 1);
    freeReplyObject(r);
    assert_int_equal(hget_int("{e}:meta", "sold"), 2);
    assert_int_equal(hget_int("{e}:users", "u1"), -1);
    hget_str("{e}:state", ID(1), s, sizeof(s));
    assert_string_equal(s, "cancelled 1700000000007 9999999999999");
    r = redisCommand(rc, "ZSCORE {e}:holds %s", ID(1));
    assert_int_equal(r->type, REDIS_REPLY_NIL);
    freeReplyObject(r);
}

static int setup(void **state)
{
    (void)state;
    return test_redis_do(&redis, "FLUSHALL");
}

static char *read_lua(const char *name)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/lua/%s", SNATCH_SOURCE_DIR, name);
    return util_read_file(path, NULL);
}

static int group_setup(void **state)
{
    (void)state;
    repair_src = read_lua("repair.lua");
    deduct_src = read_lua("deduct.lua");
    if (repair_src == NULL || deduct_src == NULL || test_redis_start(&redis) != 0 ||
        (rc = test_redis_connect(&redis)) == NULL)
        return -1;
    redisReply *r = redisCommand(rc, "INFO server");
    const char *p = r != NULL && r->type == REDIS_REPLY_STRING ? strstr(r->str, "run_id:") : NULL;
    if (p != NULL)
        sscanf(p + 7, "%63[0-9a-f]", run_id);
    freeReplyObject(r);
    return run_id[0] != '\0' ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    if (rc != NULL)
        redisFree(rc);
    test_redis_stop(&redis);
    free(repair_src);
    free(deduct_src);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_unknown_and_unclaimed, setup),
        cmocka_unit_test_setup(test_restore_idempotent_then_current, setup),
        cmocka_unit_test_setup(test_gate, setup),
        cmocka_unit_test_setup(test_lock_and_node, setup),
        cmocka_unit_test_setup(test_base, setup),
        cmocka_unit_test_setup(test_oversold_is_kept, setup),
        cmocka_unit_test_setup(test_held_and_settle, setup),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
