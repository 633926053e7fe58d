/* host/server/redis.c (the router) against a real Redis Cluster: 6 redis-servers (3 masters with
 * a replica each, cluster-node-timeout 1000) on free loopback ports, formed by redis-cli
 * --cluster create once for the whole file and killed by PID at the end. Keys spread over the
 * masters, MOVED after a slot changed owner, ASK and TRYAGAIN during a migration, WAIT counting
 * replicas, and last (it leaves the cluster degraded) kill -9 of a master: commands fail fast
 * until its replica is promoted, then run there (NOSCRIPT handled); the owner-change callback
 * reports each of these moves. Every wait is bounded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "cluster_slots.h"
#include "cluster_sync.h"
#include "deduct_batch.h"
#include "loop_wait.h"
#include "metrics_sample.h"
#include "redis.h"
#include "redis_server.h"

#define INCR_SCRIPT "return redis.call('INCR', KEYS[1])"

static uv_loop_t loop;
static test_cluster_t cluster;
/* The client of the running test: closed by the teardown when an assertion cut the test short,
 * so the next test starts on an empty loop. */
static redis_client_t *current;

/* ---- loop helpers ---- */

static bool is_ready(void *arg)
{
    return redis_client_ready(arg);
}

/* ---- results ---- */

typedef struct {
    int calls;
    const char *err;
    int type;
    long long integer;
    char str[256];
    size_t elements;
} result_t;

static void on_result(redisReply *r, const char *err, void *data)
{
    result_t *res = data;
    res->calls++;
    res->err = err;
    res->type = r != NULL ? r->type : -1;
    res->str[0] = '\0';
    if (r == NULL)
        return;
    res->integer = r->integer;
    res->elements = r->elements;
    if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS ||
        r->type == REDIS_REPLY_ERROR)
        snprintf(res->str, sizeof(res->str), "%s", r->str);
}

typedef struct {
    int calls;
    int64_t replicas;
    const char *err;
} waited_t;

static void on_waited(int64_t replicas, const char *err, void *data)
{
    waited_t *w = data;
    w->calls++;
    w->replicas = replicas;
    w->err = err;
}

typedef struct {
    int calls;
    unsigned first, last;
    char old_id[CLUSTER_ID_MAX], new_id[CLUSTER_ID_MAX];
} owners_t;

static void on_owner(unsigned first, unsigned last, const char *old_id, const char *new_id,
                     void *arg)
{
    owners_t *o = arg;
    o->calls++;
    o->first = first;
    o->last = last;
    snprintf(o->old_id, sizeof(o->old_id), "%s", old_id);
    snprintf(o->new_id, sizeof(o->new_id), "%s", new_id);
}

static void cmd(redis_client_t *c, result_t *res, const char *a0, const char *a1, const char *a2)
{
    const char *argv[] = {a0, a1, a2};
    int argc = a2 ? 3 : a1 ? 2 : 1;
    redis_command(c, on_result, res, argc, argv, NULL);
}

static void eval_incr(redis_client_t *c, result_t *res, const char *key)
{
    const char *argv[] = {key};
    redis_eval(c, on_result, res, 1, 1, argv, NULL);
}

static redis_client_t *start_client_with(const char *script, uint64_t timeout_ms)
{
    redis_client_t *c = NULL;
    assert_int_equal(
        redis_client_start_seeds(&c, &loop, cluster.seeds, script, timeout_ms, NULL, NULL), 0);
    current = c;
    assert_true(test_run_until(&loop, is_ready, c, 10000));
    assert_true(redis_client_is_cluster(c));
    return c;
}

static redis_client_t *start_client(uint64_t timeout_ms)
{
    return start_client_with(INCR_SCRIPT, timeout_ms);
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

static void close_and_drain(redis_client_t *c)
{
    current = NULL;
    redis_client_close(c);
    assert_true(test_loop_drain(&loop, 2000));
}

/* The first name "<prefix><n>" whose tag lives on want (NULL: any master): a prefix per test
 * keeps the tests' keys apart. Its master's id goes to id (41 bytes) unless NULL. */
static test_redis_t *name_on_master(const char *prefix, char *out, size_t cap, test_redis_t *want,
                                    char *id)
{
    for (int i = 0; i < 100000; i++) {
        snprintf(out, cap, "%s%d", prefix, i);
        test_redis_t *m = test_cluster_master_of(&cluster, cluster_key_slot(out, strlen(out)), id);
        if (want == NULL || m == want)
            return m;
    }
    return NULL;
}

static int node_do(test_redis_t *n, const char *fmt, ...)
{
    redisContext *ctx = test_redis_connect(n);
    if (ctx == NULL)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(ctx, fmt, ap);
    va_end(ap);
    redisFree(ctx);
    int rc = r != NULL && r->type != REDIS_REPLY_ERROR ? 0 : -1;
    if (rc != 0)
        fprintf(stderr, "node %d: %s: %s\n", n->port, fmt, r ? r->str : "no reply");
    freeReplyObject(r);
    return rc;
}

/* The distinct masters now, with their ids. */
static int masters(test_redis_t **out, char (*ids)[41])
{
    int n = 0;
    for (unsigned slot = 0; slot < CLUSTER_SLOTS && n < 3; slot += 997) {
        char id[41];
        test_redis_t *m = test_cluster_master_of(&cluster, slot, id);
        bool seen = false;
        for (int k = 0; k < n; k++)
            seen = seen || out[k] == m;
        if (m != NULL && !seen) {
            out[n] = m;
            snprintf(ids[n++], 41, "%s", id);
        }
    }
    return n;
}

/* ---- tests ---- */

/* Each event's keys go to the master of its tag; key-less commands go anywhere. */
static void test_spread(void **state)
{
    (void)state;
    redis_client_t *c = start_client(2000);
    assert_true(redis_client_masters_have_replicas(c));
    test_redis_t *ms[3];
    char ids[3][41];
    assert_int_equal(masters(ms, ids), 3);
    for (int i = 0; i < 3; i++) {
        char name[32], id[41], key[64], nkey[64];
        assert_ptr_equal(name_on_master("sp", name, sizeof(name), ms[i], id), ms[i]);
        snprintf(key, sizeof(key), "{%s}:meta", name);
        snprintf(nkey, sizeof(nkey), "{%s}:n", name);
        result_t set = {0}, inc = {0};
        cmd(c, &set, "SET", key, name);
        eval_incr(c, &inc, nkey);
        assert_true(test_wait_count(&loop, &set.calls, 1, 3000));
        assert_true(test_wait_count(&loop, &inc.calls, 1, 3000));
        assert_string_equal(set.str, "OK");
        assert_int_equal(inc.type, REDIS_REPLY_INTEGER);
        assert_int_equal(inc.integer, 1);
        redisReply *r = test_redis_cmd(ms[i], "GET %s", key); /* no MOVED: it lives there */
        assert_non_null(r);
        assert_int_equal(r->type, REDIS_REPLY_STRING);
        assert_string_equal(r->str, name);
        freeReplyObject(r);
        const char *nid = redis_node_id(c, key, strlen(key));
        assert_non_null(nid);
        assert_string_equal(nid, ids[i]);
    }
    result_t ping = {0};
    redis_command_at(c, NULL, 0, on_result, &ping, 1, (const char *[]){"PING"}, NULL);
    assert_true(test_wait_count(&loop, &ping.calls, 1, 3000));
    assert_string_equal(ping.str, "PONG");
    /* Two tags in one script: the cluster refuses it, nothing runs (why api.c splits). */
    result_t cross = {0};
    const char *argv[] = {"EVAL", "return 1", "2", "{a}:x", "{b}:x"};
    redis_command(c, on_result, &cross, 5, argv, NULL);
    assert_true(test_wait_count(&loop, &cross.calls, 1, 3000));
    assert_int_equal(cross.type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(cross.str, "CROSSSLOT"));
    close_and_drain(c);
}

/* Moves an empty slot from one master to another the documented way (IMPORTING, MIGRATING,
 * then NODE on every master). Keys listed are migrated in between. */
static void move_slot(unsigned slot, test_redis_t *from, const char *from_id, test_redis_t *to,
                      const char *to_id, test_redis_t **all, const char *key)
{
    assert_int_equal(node_do(to, "CLUSTER SETSLOT %u IMPORTING %s", slot, from_id), 0);
    assert_int_equal(node_do(from, "CLUSTER SETSLOT %u MIGRATING %s", slot, to_id), 0);
    if (key != NULL)
        assert_int_equal(node_do(from, "MIGRATE 127.0.0.1 %d %s 0 5000", to->port, key), 0);
    assert_int_equal(node_do(to, "CLUSTER SETSLOT %u NODE %s", slot, to_id), 0);
    assert_int_equal(node_do(from, "CLUSTER SETSLOT %u NODE %s", slot, to_id), 0);
    for (int i = 0; i < 3; i++)
        if (all[i] != from && all[i] != to)
            assert_int_equal(node_do(all[i], "CLUSTER SETSLOT %u NODE %s", slot, to_id), 0);
}

/* A slot that changed owner: the first try answers MOVED, the router resends to the new owner
 * at once, and its next map read reports the move. */
static void test_moved(void **state)
{
    (void)state;
    redis_client_t *c = start_client(2000);
    owners_t own = {0};
    redis_client_on_owner_change(c, on_owner, &own);
    test_redis_t *ms[3];
    char ids[3][41];
    assert_int_equal(masters(ms, ids), 3);
    char name[32], key[64];
    assert_non_null(name_on_master("mv", name, sizeof(name), ms[0], NULL));
    snprintf(key, sizeof(key), "{%s}:meta", name);
    unsigned slot = cluster_key_slot(key, strlen(key));
    assert_string_equal(redis_node_id(c, key, strlen(key)), ids[0]);
    move_slot(slot, ms[0], ids[0], ms[1], ids[1], ms, NULL);

    result_t set = {0};
    cmd(c, &set, "SET", key, "moved");
    assert_true(test_wait_count(&loop, &set.calls, 1, 3000));
    assert_string_equal(set.str, "OK");
    redisReply *r = test_redis_cmd(ms[1], "GET %s", key);
    assert_non_null(r);
    assert_string_equal(r->str, "moved");
    freeReplyObject(r);
    assert_string_equal(redis_node_id(c, key, strlen(key)), ids[1]); /* from the MOVED */
    assert_true(test_wait_count(&loop, &own.calls, 1, 3000));
    assert_int_equal(own.first, slot);
    assert_int_equal(own.last, slot);
    assert_string_equal(own.old_id, ids[0]);
    assert_string_equal(own.new_id, ids[1]);
    close_and_drain(c);
}

/* Mid-migration: a key not on the old owner any more is answered ASK, and goes (ASKING first)
 * to the importing node; keys split between the two give TRYAGAIN, retried until the migration
 * ends, then MOVED to the new owner. */
static void test_ask_and_tryagain(void **state)
{
    (void)state;
    redis_client_t *c = start_client(3000);
    test_redis_t *ms[3];
    char ids[3][41];
    assert_int_equal(masters(ms, ids), 3);
    char name[32], old[64], fresh[64], missing[64], counter[64];
    assert_non_null(name_on_master("ask", name, sizeof(name), ms[2], NULL));
    snprintf(old, sizeof(old), "{%s}:old", name);
    snprintf(fresh, sizeof(fresh), "{%s}:fresh", name);
    snprintf(missing, sizeof(missing), "{%s}:missing", name);
    snprintf(counter, sizeof(counter), "{%s}:n", name);
    unsigned slot = cluster_key_slot(old, strlen(old));
    assert_int_equal(node_do(ms[2], "SET %s here", old), 0);
    assert_int_equal(node_do(ms[0], "CLUSTER SETSLOT %u IMPORTING %s", slot, ids[2]), 0);
    assert_int_equal(node_do(ms[2], "CLUSTER SETSLOT %u MIGRATING %s", slot, ids[0]), 0);

    result_t set = {0}, inc = {0};
    cmd(c, &set, "SET", fresh, "asked");
    eval_incr(c, &inc, counter);
    assert_true(test_wait_count(&loop, &set.calls, 1, 3000));
    assert_true(test_wait_count(&loop, &inc.calls, 1, 3000));
    if (set.err != NULL || inc.err != NULL)
        fprintf(stderr, "set: %s, incr: %s\n", set.err ? set.err : "", inc.err ? inc.err : "");
    assert_string_equal(set.str, "OK");
    assert_int_equal(inc.integer, 1);
    redisReply *r = test_redis_cmd(ms[0], "CLUSTER COUNTKEYSINSLOT %u", slot);
    assert_int_equal(r->integer, 2); /* fresh and counter were written on the importing node */
    freeReplyObject(r);

    result_t mget = {0};
    cmd(c, &mget, "MGET", old, missing);
    test_run_for(&loop, 100);
    assert_int_equal(mget.calls, 0); /* TRYAGAIN, retried */
    assert_int_equal(node_do(ms[2], "MIGRATE 127.0.0.1 %d %s 0 5000", ms[0]->port, old), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(node_do(ms[i], "CLUSTER SETSLOT %u NODE %s", slot, ids[0]), 0);
    assert_true(test_wait_count(&loop, &mget.calls, 1, 3000));
    assert_null(mget.err);
    assert_int_equal(mget.type, REDIS_REPLY_ARRAY);
    assert_int_equal(mget.elements, 2);
    close_and_drain(c);
}

typedef struct {
    result_t res; /* first: on_result gets the same pointer */
    waited_t w;
} both_t;

static void on_both_waited(int64_t replicas, const char *err, void *data)
{
    on_waited(replicas, err, &((both_t *)data)->w);
}

static void eval_wait(redis_client_t *c, both_t *b, const char *key, int replicas, uint64_t ms)
{
    const char *argv[] = {key};
    redis_eval_wait(c, on_result, on_both_waited, b, replicas, ms, 1, 1, argv, NULL);
}

/* WAIT after a script, on the connection that ran it: every master has one replica. */
static void test_wait(void **state)
{
    (void)state;
    redis_client_t *c = start_client(2000);
    char name[32], key[64];
    assert_non_null(name_on_master("wait", name, sizeof(name), NULL, NULL));
    snprintf(key, sizeof(key), "{%s}:w", name);
    both_t one = {0};
    eval_wait(c, &one, key, 1, 500);
    assert_true(test_wait_count(&loop, &one.w.calls, 1, 3000));
    assert_int_equal(one.res.calls, 1);
    assert_int_equal(one.res.integer, 1);
    assert_int_equal(one.w.replicas, 1);
    assert_null(one.w.err);
    /* Two asked, one exists: WAIT gives up after its timeout and says 1. */
    both_t two = {0};
    eval_wait(c, &two, key, 2, 100);
    assert_true(test_wait_count(&loop, &two.w.calls, 1, 3000));
    assert_int_equal(two.res.integer, 2);
    assert_int_equal(two.w.replicas, 1);
    /* An error reply: nothing to wait for, wait_fn is not called. */
    char hash[64];
    snprintf(hash, sizeof(hash), "{%s}:h", name);
    result_t hs = {0};
    redis_command(c, on_result, &hs, 4, (const char *[]){"HSET", hash, "f", "v"}, NULL);
    assert_true(test_wait_count(&loop, &hs.calls, 1, 3000));
    both_t err = {0};
    eval_wait(c, &err, hash, 1, 100);
    assert_true(test_wait_count(&loop, &err.res.calls, 1, 3000));
    assert_int_equal(err.res.type, REDIS_REPLY_ERROR);
    test_run_for(&loop, 200);
    assert_int_equal(err.w.calls, 0);
    close_and_drain(c);
}

typedef struct {
    int calls;
    deduct_verdict_t verdict;
    bool unreplicated;
} buyer_t;

static void on_buyer(const deduct_result_t *r, void *data)
{
    buyer_t *b = data;
    b->calls++;
    b->verdict = r->verdict;
    b->unreplicated = r->unreplicated;
}

/* The batcher WAITs after each batch: on a cluster whose masters have a replica it asks for one
 * by default and the sale is confirmed; asked for two, the batch is short: the sale is made but
 * flagged unreplicated (sale.c answers 202 and does not publish), and counted. */
static void test_deduct_wait(void **state)
{
    (void)state;
    redis_client_t *c = start_client_with(read_source("lua/deduct.lua"), 2000);
    char name[32], id[41];
    test_redis_t *m = name_on_master("dw", name, sizeof(name), NULL, id);
    assert_non_null(m);
    /* owner: deduct.lua sells on a cluster only on the node that verified the event (repair.h) */
    assert_int_equal(node_do(m, "HSET {%s}:meta stock 10 sold 0 limit 1 gen 1 owner %s", name, id),
                     0);
    deduct_batcher_t *b = deduct_batcher_new(c, NULL, "h1", 2000);
    assert_non_null(b);
    double short0 = metrics_sample("snatch_deduct_unreplicated_batches_total");
    buyer_t one = {0};
    deduct_submit(b, name, "u1", 1, on_buyer, &one);
    assert_true(test_wait_count(&loop, &one.calls, 1, 3000));
    assert_int_equal(one.verdict, DEDUCT_OK);
    assert_false(one.unreplicated);
    assert_true(metrics_sample("snatch_deduct_unreplicated_batches_total") == short0);

    deduct_batcher_set_replicas(b, 2);
    buyer_t two = {0}, refused = {0};
    deduct_submit(b, name, "u2", 1, on_buyer, &two);
    assert_true(test_wait_count(&loop, &two.calls, 1, 3000));
    assert_int_equal(two.verdict, DEDUCT_OK);
    assert_true(two.unreplicated);
    assert_true(metrics_sample("snatch_deduct_unreplicated_batches_total") == short0 + 1);
    /* A refusal is a refusal, whatever WAIT says. */
    deduct_submit(b, name, "u2", 1, on_buyer, &refused);
    assert_true(test_wait_count(&loop, &refused.calls, 1, 3000));
    assert_int_equal(refused.verdict, DEDUCT_LIMIT_REACHED);
    assert_false(refused.unreplicated);
    redisReply *r = test_redis_cmd(m, "HGET {%s}:meta sold", name);
    assert_string_equal(r->str, "2");
    freeReplyObject(r);
    deduct_batcher_close(b);
    close_and_drain(c);
}

/* GET key through the blocking client: the reply's string, or "" (caller's buffer). */
static const char *sync_get(rsync_t *rs, const char *key, char *out, size_t cap)
{
    char err[256];
    out[0] = '\0';
    redisReply *r = rsync_command(rs, key, err, sizeof(err), "GET %s", key);
    if (r == NULL)
        fprintf(stderr, "GET %s: %s\n", key, err);
    if (r != NULL && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_ERROR))
        snprintf(out, cap, "%s", r->str);
    freeReplyObject(r);
    return out;
}

/* The blocking client (reconciliation): each key read on its master, no MOVED; a seed list
 * whose first node is dead still opens. */
static void test_sync(void **state)
{
    (void)state;
    test_redis_t *ms[3];
    char ids[3][41], err[256], buf[64];
    assert_int_equal(masters(ms, ids), 3);
    char seeds[300];
    snprintf(seeds, sizeof(seeds), "127.0.0.1:1,%s", cluster.seeds);
    rsync_t *rs = rsync_open(seeds, NULL, 2000, err, sizeof(err));
    assert_non_null(rs);
    assert_true(rsync_is_cluster(rs));
    assert_int_equal(rsync_masters(rs), 3);
    for (int i = 0; i < 3; i++) {
        char name[32], key[64];
        assert_non_null(name_on_master("sy", name, sizeof(name), ms[i], NULL));
        snprintf(key, sizeof(key), "{%s}:v", name);
        assert_int_equal(node_do(ms[i], "SET %s %s", key, name), 0);
        assert_string_equal(sync_get(rs, key, buf, sizeof(buf)), name);
    }
    assert_int_equal(rsync_refresh(rs, err, sizeof(err)), 0);
    rsync_close(rs);
    assert_null(rsync_open("127.0.0.1:1", NULL, 500, err, sizeof(err)));
    assert_null(rsync_open("localhost:6379", NULL, 500, err, sizeof(err)));
}

typedef struct {
    test_redis_t *from, *to, **all;
    const char *to_id, *key;
    unsigned slot;
    int rc;
} finish_t;

/* Ends a migration 200 ms from now, from another thread, while the test's command waits out
 * TRYAGAIN: the last key goes, then every master learns the new owner, the importing node first
 * (the documented order: else it answers MOVED back to the old owner, which answers MOVED to
 * it, until the redirection limit). */
static void *finish_migration(void *arg)
{
    finish_t *f = arg;
    struct timespec ts = {0, 200 * 1000000L};
    nanosleep(&ts, NULL);
    f->rc = node_do(f->from, "MIGRATE 127.0.0.1 %d %s 0 5000", f->to->port, f->key);
    if (f->rc == 0)
        f->rc = node_do(f->to, "CLUSTER SETSLOT %u NODE %s", f->slot, f->to_id);
    for (int i = 0; i < 3 && f->rc == 0; i++)
        if (f->all[i] != f->to)
            f->rc = node_do(f->all[i], "CLUSTER SETSLOT %u NODE %s", f->slot, f->to_id);
    return NULL;
}

/* The blocking client after its map went stale: a slot moved (with its key) after the map was
 * read answers MOVED, followed and remembered; mid-migration a key already gone answers ASK
 * (ASKING then the command on the importing node, the map unchanged), and keys split between
 * the two nodes answer TRYAGAIN until the migration ends, then MOVED. */
static void test_sync_redirects(void **state)
{
    (void)state;
    test_redis_t *ms[3];
    char ids[3][41], err[256], buf[64], name[32], key[64];
    assert_int_equal(masters(ms, ids), 3);
    rsync_t *rs = rsync_open(cluster.seeds, NULL, 2000, err, sizeof(err));
    assert_non_null(rs);

    assert_non_null(name_on_master("sm", name, sizeof(name), ms[0], NULL));
    snprintf(key, sizeof(key), "{%s}:pending", name);
    unsigned slot = cluster_key_slot(key, strlen(key));
    assert_int_equal(node_do(ms[0], "HSET %s o1 1 o2 2", key), 0);
    redisReply *r = rsync_command(rs, key, err, sizeof(err), "HLEN %s", key);
    assert_non_null(r);
    assert_int_equal(r->integer, 2);
    freeReplyObject(r);
    move_slot(slot, ms[0], ids[0], ms[1], ids[1], ms, key);
    r = rsync_command(rs, key, err, sizeof(err), "HDEL %s o1", key); /* MOVED, followed */
    assert_non_null(r);
    if (r->type == REDIS_REPLY_ERROR)
        fprintf(stderr, "HDEL: %s\n", r->str);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    assert_int_equal(rsync_redirects(rs), 1);
    r = test_redis_cmd(ms[1], "HLEN %s", key);
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    r = rsync_command(rs, key, err, sizeof(err), "HDEL %s o2", key);
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    assert_int_equal(rsync_redirects(rs), 1); /* the map learned the move */

    char old[64], stay[64];
    assert_non_null(name_on_master("sa", name, sizeof(name), ms[1], NULL));
    snprintf(old, sizeof(old), "{%s}:old", name);
    snprintf(stay, sizeof(stay), "{%s}:stay", name);
    slot = cluster_key_slot(old, strlen(old));
    assert_int_equal(node_do(ms[1], "SET %s gone", old), 0);
    assert_int_equal(node_do(ms[1], "SET %s here", stay), 0);
    assert_string_equal(sync_get(rs, old, buf, sizeof(buf)), "gone");
    assert_int_equal(node_do(ms[2], "CLUSTER SETSLOT %u IMPORTING %s", slot, ids[1]), 0);
    assert_int_equal(node_do(ms[1], "CLUSTER SETSLOT %u MIGRATING %s", slot, ids[2]), 0);
    assert_int_equal(node_do(ms[1], "MIGRATE 127.0.0.1 %d %s 0 5000", ms[2]->port, old), 0);
    unsigned long before = rsync_redirects(rs);
    assert_string_equal(sync_get(rs, old, buf, sizeof(buf)), "gone");  /* ASK */
    assert_string_equal(sync_get(rs, stay, buf, sizeof(buf)), "here"); /* still on ms[1] */
    assert_int_equal(rsync_redirects(rs), before + 1);
    assert_string_equal(sync_get(rs, old, buf, sizeof(buf)), "gone"); /* ASK again: no MOVED */
    assert_int_equal(rsync_redirects(rs), before + 2);

    finish_t f = {
        .from = ms[1], .to = ms[2], .all = ms, .to_id = ids[2], .key = stay, .slot = slot};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, finish_migration, &f), 0);
    r = rsync_command(rs, old, err, sizeof(err), "MGET %s %s", old, stay); /* TRYAGAIN, MOVED */
    pthread_join(th, NULL);
    assert_int_equal(f.rc, 0);
    assert_non_null(r);
    if (r->type == REDIS_REPLY_ERROR)
        fprintf(stderr, "MGET: %s\n", r->str);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->elements, 2);
    assert_string_equal(r->element[0]->str, "gone");
    assert_string_equal(r->element[1]->str, "here");
    freeReplyObject(r);
    rsync_close(rs);
}

/* kill -9 of the master of an event: commands for it fail (nothing ran; at their deadline in
 * the first timeout after the loss, at once after it) until the replica is promoted; then they
 * run there, the script loaded on the new master, and the move is reported. */
static void test_failover(void **state)
{
    (void)state;
    redis_client_t *c = start_client(1000);
    owners_t own = {0};
    redis_client_on_owner_change(c, on_owner, &own);
    char name[32], key[64], old_id[41];
    test_redis_t *m = name_on_master("fo", name, sizeof(name), NULL, old_id);
    assert_non_null(m);
    snprintf(key, sizeof(key), "{%s}:failover", name);
    result_t first = {0};
    eval_incr(c, &first, key);
    assert_true(test_wait_count(&loop, &first.calls, 1, 3000));
    assert_int_equal(first.integer, 1);
    test_run_for(&loop, 300); /* the replica has it */

    test_redis_kill9(m);
    int down = 0, other = 0;
    result_t res = {0};
    for (int i = 0; i < 200; i++) {
        res = (result_t){0};
        eval_incr(c, &res, key);
        assert_true(test_wait_count(&loop, &res.calls, 1, 3000));
        if (res.type == REDIS_REPLY_INTEGER)
            break;
        if (res.err == redis_err_cluster_down)
            down++;
        else
            other++;
        test_run_for(&loop, 50);
    }
    assert_int_equal(res.type, REDIS_REPLY_INTEGER);
    assert_int_equal(res.integer, 2); /* the promoted replica had the first INCR */
    assert_true(down > 0);
    const char *now = redis_node_id(c, key, strlen(key));
    assert_non_null(now);
    assert_string_not_equal(now, old_id);
    assert_true(test_wait_count(&loop, &own.calls, 1, 3000));
    assert_string_equal(own.old_id, old_id);
    assert_string_equal(own.new_id, now);

    /* The new master lost its script cache: NOSCRIPT, loaded, retried. */
    char id[41];
    test_redis_t *nm = test_cluster_master_of(&cluster, cluster_key_slot(key, strlen(key)), id);
    assert_non_null(nm);
    assert_int_equal(node_do(nm, "SCRIPT FLUSH"), 0);
    res = (result_t){0};
    eval_incr(c, &res, key);
    assert_true(test_wait_count(&loop, &res.calls, 1, 3000));
    assert_int_equal(res.integer, 3);
    /* The promoted replica has no replica of its own: WAIT 1 finds none. */
    both_t alone = {0};
    eval_wait(c, &alone, key, 1, 100);
    assert_true(test_wait_count(&loop, &alone.w.calls, 1, 3000));
    assert_int_equal(alone.res.integer, 4);
    assert_int_equal(alone.w.replicas, 0);
    close_and_drain(c);

    /* The blocking client follows the failover once it reads the map again. */
    char err[256];
    rsync_t *rs = rsync_open(cluster.seeds, NULL, 2000, err, sizeof(err));
    assert_non_null(rs);
    redisReply *r = rsync_command(rs, key, err, sizeof(err), "GET %s", key);
    assert_non_null(r);
    assert_string_equal(r->str, "4");
    freeReplyObject(r);
    assert_int_equal(rsync_refresh(rs, err, sizeof(err)), 0);
    rsync_close(rs);
}

/* A master that still has a replica (an earlier test may have promoted one that has none). */
static test_redis_t *master_with_replica(void)
{
    for (unsigned slot = 0; slot < CLUSTER_SLOTS; slot += 997) {
        test_redis_t *m = test_cluster_master_of(&cluster, slot, NULL);
        redisReply *r = m ? test_redis_cmd(m, "CLUSTER SLOTS") : NULL;
        bool found = false;
        for (size_t k = 0; r != NULL && r->type == REDIS_REPLY_ARRAY && k < r->elements; k++) {
            redisReply *e = r->element[k];
            found = found || ((unsigned)e->element[0]->integer <= slot &&
                              slot <= (unsigned)e->element[1]->integer && e->elements > 3);
        }
        freeReplyObject(r);
        if (found)
            return m;
    }
    return NULL;
}

typedef struct {
    int calls;
    int ok;
    const char *err;
} done_t;

static void on_script_done(int ok, const char *err, void *arg)
{
    done_t *d = arg;
    d->calls++;
    d->ok = ok;
    d->err = err;
}

/* A script reload while a master is down (killed, its replica promoted later): the master's
 * connection keeps the script, the promoted replica's new connection loads it before its first
 * EVALSHA, and the reload ends accepted (the dead master has no say). */
static void test_set_script_master_down(void **state)
{
    (void)state;
    redis_client_t *c = start_client_with("return 'A'", 1000);
    char name[32], other[32];
    test_redis_t *m = master_with_replica();
    assert_non_null(m);
    assert_non_null(name_on_master("sd", name, sizeof(name), m, NULL));
    test_redis_t *o = NULL;
    for (int i = 0; o == NULL || o == m; i++) {
        snprintf(other, sizeof(other), "sdo%d", i);
        o = test_cluster_master_of(&cluster, cluster_key_slot(other, strlen(other)), NULL);
    }
    result_t a = {0};
    eval_incr(c, &a, name);
    assert_true(test_wait_count(&loop, &a.calls, 1, 3000));
    assert_string_equal(a.str, "A");

    test_redis_kill9(m);
    test_run_for(&loop, 200); /* the connection sees it */
    done_t done = {0};
    redis_client_set_script(c, "return 'B'", on_script_done, &done);
    assert_true(redis_client_script_parked(c));
    test_run_for(&loop,
                 200); /* the live masters answer (an EVALSHA sent before that names the old one) */
    result_t b = {0};
    eval_incr(c, &b, other);
    assert_true(test_wait_count(&loop, &b.calls, 1, 3000));
    assert_string_equal(b.str, "B"); /* a master that was up took it at once */
    assert_int_equal(done.calls, 0); /* waits for the dead master's shard */

    result_t res = {0};
    for (int i = 0; i < 200; i++) {
        res = (result_t){0};
        eval_incr(c, &res, name);
        assert_true(test_wait_count(&loop, &res.calls, 1, 3000));
        if (res.type == REDIS_REPLY_STRING)
            break;
        test_run_for(&loop, 50);
    }
    assert_string_equal(res.str, "B");
    assert_true(test_wait_count(&loop, &done.calls, 1, 5000));
    assert_int_equal(done.ok, 1);
    assert_false(redis_client_script_parked(c));
    close_and_drain(c);
}

static int teardown(void **state)
{
    (void)state;
    if (current != NULL) {
        redis_client_close(current);
        current = NULL;
    }
    test_loop_drain(&loop, 2000);
    return 0;
}

static int group_setup(void **state)
{
    (void)state;
    if (uv_loop_init(&loop) != 0)
        return -1;
    return test_cluster_start(&cluster);
}

static int group_teardown(void **state)
{
    (void)state;
    test_cluster_stop(&cluster);
    uv_loop_close(&loop);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_spread, teardown),
        cmocka_unit_test_teardown(test_moved, teardown),
        cmocka_unit_test_teardown(test_ask_and_tryagain, teardown),
        cmocka_unit_test_teardown(test_wait, teardown),
        cmocka_unit_test_teardown(test_deduct_wait, teardown),
        cmocka_unit_test_teardown(test_sync, teardown),
        cmocka_unit_test_teardown(test_sync_redirects, teardown),
        cmocka_unit_test_teardown(test_failover, teardown),
        cmocka_unit_test_teardown(test_set_script_master_down, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
