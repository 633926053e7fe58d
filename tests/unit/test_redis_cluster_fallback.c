/* host/server/redis.c (the router) when every master it knows is gone at once: a real 6-node
 * Redis Cluster (3 masters with a replica each, tests/unit/redis_server.h), two clients that
 * learned its map, then kill -9 of all three masters and CLUSTER FAILOVER TAKEOVER on their
 * replicas (what an operator does when a whole rack of masters is lost: with no master left, no
 * replica can win an election by itself). Until the takeover every command fails without running
 * (503 for a buyer); after it, both clients find the cluster again without a restart: the one
 * started with every node as a seed through its seeds, the one whose only seed was a master that
 * is gone through the replicas its last map listed. Each key's command then runs once on its new
 * master, which holds what the old one had. The blocking client of reconciliation, opened with
 * that one master as its seed, reads the map again from those replicas too. Every wait is
 * bounded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "cluster_slots.h"
#include "cluster_sync.h"
#include "loop_wait.h"
#include "redis.h"
#include "redis_server.h"

#define INCR_SCRIPT "return redis.call('INCR', KEYS[1])"
#define N_MASTERS 3
/* The failover itself takes about a second (cluster-node-timeout 1000); then each client needs
 * at most one fallback round (backoff <= 1 s). */
#define FIND_AGAIN_MS 15000

static uv_loop_t loop;
static test_cluster_t cluster;
static redis_client_t *clients[2];
static rsync_t *blocking; /* the reconciler's client */

static bool is_ready(void *arg)
{
    return redis_client_ready(arg);
}

typedef struct {
    int calls;
    const char *err;
    int type;
    long long integer;
    int waits;
    int64_t replicas;
} result_t;

static bool answered(void *arg)
{
    result_t *r = arg;
    return r->calls > 0 && (r->type != REDIS_REPLY_INTEGER || r->waits > 0);
}

static void on_result(redisReply *r, const char *err, void *data)
{
    result_t *res = data;
    res->calls++;
    res->err = err;
    res->type = r != NULL ? r->type : -1;
    res->integer = r != NULL ? r->integer : 0;
}

static void on_waited(int64_t replicas, const char *err, void *data)
{
    result_t *res = data;
    (void)err;
    res->waits++;
    res->replicas = replicas;
}

/* INCR key through c (with WAIT replicas when replicas > 0); the outcome, within 3 s. */
static result_t incr(redis_client_t *c, const char *key, int replicas)
{
    result_t res = {0};
    const char *argv[] = {key};
    redis_eval_wait(c, on_result, replicas > 0 ? on_waited : NULL, &res, replicas, 1000, 1, 1, argv,
                    NULL);
    if (replicas == 0)
        res.waits = 1;
    assert_true(test_run_until(&loop, answered, &res, 3000));
    return res;
}

static redis_client_t *start_client(int slot, const char *seeds)
{
    redis_client_t *c = NULL;
    assert_int_equal(redis_client_start_seeds(&c, &loop, seeds, INCR_SCRIPT, 1000, NULL, NULL), 0);
    clients[slot] = c;
    assert_true(test_run_until(&loop, is_ready, c, 10000));
    assert_true(redis_client_is_cluster(c));
    return c;
}

static int takeover(test_redis_t *n)
{
    redisReply *r = test_redis_cmd(n, "CLUSTER FAILOVER TAKEOVER");
    int rc = r != NULL && r->type != REDIS_REPLY_ERROR ? 0 : -1;
    if (rc != 0)
        fprintf(stderr, "node %d: TAKEOVER: %s\n", n->port, r ? r->str : "no reply");
    freeReplyObject(r);
    return rc;
}

/* The three masters now, their ids, and a key ("{fb<n>}:n") served by each. */
static void find_masters(test_redis_t **ms, char (*ids)[41], char (*keys)[32])
{
    int n = 0;
    for (unsigned i = 0; i < 100000 && n < N_MASTERS; i++) {
        char key[32], id[41];
        snprintf(key, sizeof(key), "{fb%u}:n", i);
        test_redis_t *m = test_cluster_master_of(&cluster, cluster_key_slot(key, strlen(key)), id);
        bool seen = m == NULL;
        for (int k = 0; k < n && !seen; k++)
            seen = ms[k] == m;
        if (seen)
            continue;
        ms[n] = m;
        snprintf(ids[n], 41, "%s", id);
        snprintf(keys[n++], 32, "%s", key);
    }
    assert_int_equal(n, N_MASTERS);
}

static bool is_master(test_redis_t *n, test_redis_t **ms)
{
    for (int k = 0; k < N_MASTERS; k++)
        if (ms[k] == n)
            return true;
    return false;
}

static void test_all_masters_gone(void **state)
{
    (void)state;
    test_redis_t *ms[N_MASTERS];
    char ids[N_MASTERS][41], keys[N_MASTERS][32], one_master[32];
    find_masters(ms, ids, keys);
    snprintf(one_master, sizeof(one_master), "127.0.0.1:%d", ms[0]->port);
    redis_client_t *every = start_client(0, cluster.seeds);
    redis_client_t *single = start_client(1, one_master);
    char err[256];
    blocking = rsync_open(one_master, NULL, 1000, err, sizeof(err));
    assert_non_null(blocking);

    for (int i = 0; i < N_MASTERS; i++) {
        result_t a = incr(every, keys[i], 1), b = incr(single, keys[i], 1);
        assert_int_equal(a.integer, 1);
        assert_int_equal(b.integer, 2);
        assert_true(a.replicas >= 1 && b.replicas >= 1); /* the replica holds both */
    }

    for (int i = 0; i < N_MASTERS; i++)
        test_redis_kill9(ms[i]);
    for (int i = 0; i < N_MASTERS; i++) {
        result_t a = incr(every, keys[i], 0), b = incr(single, keys[i], 0);
        assert_int_equal(a.type, -1); /* no route: never ran */
        assert_int_equal(b.type, -1);
    }
    for (int i = 0; i < TEST_CLUSTER_NODES; i++)
        if (cluster.nodes[i].pid > 0 && !is_master(&cluster.nodes[i], ms))
            assert_int_equal(takeover(&cluster.nodes[i]), 0);
    assert_int_equal(test_cluster_wait_ok(&cluster, 0, 20000), 0);

    uint64_t end = uv_hrtime() + FIND_AGAIN_MS * 1000000ull;
    for (int k = 0; k < 2; k++) {
        redis_client_t *c = clients[k];
        for (int i = 0; i < N_MASTERS; i++) {
            result_t r = {0};
            int failed = 0;
            while (uv_hrtime() < end) {
                r = incr(c, keys[i], 0);
                if (r.type != -1)
                    break;
                failed++;
                test_run_for(&loop, 100);
            }
            if (r.type != REDIS_REPLY_INTEGER)
                fprintf(stderr, "client %d, %s: no reply after %d tries (%s)\n", k, keys[i], failed,
                        r.err ? r.err : "?");
            assert_int_equal(r.type, REDIS_REPLY_INTEGER);
            assert_int_equal(r.integer, 3 + k); /* once each, on what the replica had */
            char id[41];
            test_redis_t *now =
                test_cluster_master_of(&cluster, cluster_key_slot(keys[i], strlen(keys[i])), id);
            assert_non_null(now);
            assert_false(is_master(now, ms));
            const char *routed = redis_node_id(c, keys[i], strlen(keys[i]));
            assert_non_null(routed);
            assert_string_equal(routed, id);
            assert_string_not_equal(routed, ids[i]);
        }
    }
    assert_true(redis_client_ready(every));
    assert_true(redis_client_ready(single));

    if (rsync_refresh(blocking, err, sizeof(err)) != 0)
        fprintf(stderr, "rsync_refresh: %s\n", err);
    assert_int_equal(rsync_masters(blocking), N_MASTERS);
    unsigned long redirects = rsync_redirects(blocking);
    for (int i = 0; i < N_MASTERS; i++) {
        redisReply *r = rsync_command(blocking, keys[i], err, sizeof(err), "GET %s", keys[i]);
        assert_non_null(r);
        assert_int_equal(r->type, REDIS_REPLY_STRING);
        assert_string_equal(r->str, "4");
        freeReplyObject(r);
    }
    assert_int_equal(rsync_redirects(blocking), redirects); /* read from the new map, no MOVED */
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < 2; i++) {
        redis_client_close(clients[i]);
        clients[i] = NULL;
    }
    rsync_close(blocking);
    blocking = NULL;
    assert_true(test_loop_drain(&loop, 2000));
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
        cmocka_unit_test_teardown(test_all_masters_gone, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
