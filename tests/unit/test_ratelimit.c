/* Unit tests for host/policy/ratelimit.c: refill arithmetic with an explicit clock, long keys,
 * bounded capacity (eviction), and several threads taking from shared and private buckets. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ratelimit.h"

#define SEC 1000000ULL

static bool take(const char *key, double rate, double burst, double cost, uint64_t now)
{
    return ratelimit_take(key, strlen(key), rate, burst, cost, now);
}

static int count(const char *key, double rate, double burst, uint64_t now, int tries)
{
    int n = 0;
    for (int i = 0; i < tries; i++)
        n += take(key, rate, burst, 1, now);
    return n;
}

static int setup(void **state)
{
    (void)state;
    return ratelimit_init(4096);
}

static int teardown(void **state)
{
    (void)state;
    ratelimit_shutdown();
    return 0;
}

static void test_init_twice(void **state)
{
    (void)state;
    assert_int_equal(ratelimit_init(10), -EALREADY);
}

static void test_refill(void **state)
{
    (void)state;
    uint64_t t = 1000 * SEC;

    /* A new key starts full: burst 5, then nothing. */
    assert_int_equal(count("refill", 10, 5, t, 20), 5);
    /* 10 tokens/s: 100 ms earns one, 250 ms two (the half token stays). */
    assert_int_equal(count("refill", 10, 5, t + SEC / 10, 20), 1);
    assert_int_equal(count("refill", 10, 5, t + SEC / 10 + SEC / 4, 20), 2);
    assert_int_equal(count("refill", 10, 5, t + SEC / 10 + SEC / 4 + SEC / 20, 20), 1);
    /* A long pause fills the bucket only up to burst. */
    t += 100 * SEC;
    assert_int_equal(count("refill", 10, 5, t, 20), 5);
    /* A clock reading a little behind (another thread's) earns nothing and breaks nothing. */
    assert_int_equal(count("refill", 10, 5, t - SEC, 20), 0);
    assert_int_equal(count("refill", 10, 5, t + SEC / 10, 20), 1);
}

static void test_cost(void **state)
{
    (void)state;
    uint64_t t = 5000 * SEC;

    assert_true(take("cost", 4, 8, 4, t));
    assert_true(take("cost", 4, 8, 4, t));
    assert_false(take("cost", 4, 8, 4, t));
    assert_false(take("cost", 4, 8, 1, t));
    /* Half a second earns 2 tokens: enough for 2, not for 3. */
    assert_false(take("cost", 4, 8, 3, t + SEC / 2));
    assert_true(take("cost", 4, 8, 2, t + SEC / 2));
    /* A cost above burst can never be paid; cost 0 always can. */
    assert_false(take("cost_big", 4, 8, 9, t));
    assert_true(take("cost_zero", 4, 8, 0, t));
    /* rate 0: the burst, then never again. */
    assert_int_equal(count("no_refill", 0, 3, t, 10), 3);
    assert_int_equal(count("no_refill", 0, 3, t + 1000 * SEC, 10), 0);
}

static void test_keys_are_exact(void **state)
{
    (void)state;
    char a[300], b[300];
    uint64_t t = 9000 * SEC;

    /* Keys of every length up to past the stored size: prefixes are different keys. */
    memset(a, 'k', sizeof(a));
    for (size_t len = 1; len < sizeof(a); len += 7)
        assert_true(ratelimit_take(a, len, 0, 1, 1, t));
    for (size_t len = 1; len < sizeof(a); len += 7)
        assert_false(ratelimit_take(a, len, 0, 1, 1, t));

    /* Long keys that share their first 290 bytes are still told apart... */
    memset(b, 'k', sizeof(b));
    b[sizeof(b) - 1] = 'x';
    assert_true(ratelimit_take(b, sizeof(b), 0, 1, 1, t));
    assert_false(ratelimit_take(b, sizeof(b), 0, 1, 1, t));
    /* ... and a long key matches itself only. */
    a[sizeof(a) - 1] = 'y';
    assert_true(ratelimit_take(a, sizeof(a), 0, 1, 1, t));
    assert_false(ratelimit_take(a, sizeof(a), 0, 1, 1, t));
    /* Embedded NUL bytes are part of the key. */
    assert_true(ratelimit_take("nul\0a", 5, 0, 1, 1, t));
    assert_true(ratelimit_take("nul\0b", 5, 0, 1, 1, t));
    assert_false(ratelimit_take("nul\0a", 5, 0, 1, 1, t));
}

/* capacity 64 = one bucket per stripe: endless keys reuse buckets instead of growing. */
static void test_capacity_eviction(void **state)
{
    (void)state;
    char key[32];
    uint64_t t = 20000 * SEC;

    ratelimit_shutdown();
    assert_int_equal(ratelimit_init(64), 0);
    /* rate 0: the bucket never refills, so only eviction can give "victim" a token back. */
    assert_true(take("victim", 0, 1, 1, t));
    assert_false(take("victim", 0, 1, 1, t));
    for (int i = 0; i < 10000; i++) {
        snprintf(key, sizeof(key), "attacker-%d", i);
        assert_true(take(key, 0, 1, 1, t));
    }
    assert_true(take("victim", 0, 1, 1, t));
    ratelimit_shutdown();

    /* With room to spare, the same traffic evicts nothing. */
    assert_int_equal(ratelimit_init(1 << 16), 0);
    assert_true(take("victim", 0, 1, 1, t));
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "attacker-%d", i);
        take(key, 0, 1, 1, t);
    }
    assert_false(take("victim", 0, 1, 1, t));
    ratelimit_shutdown();
    assert_int_equal(ratelimit_init(4096), 0);
}

/* Smoke test of reclaiming: rounds of short-lived keys that refill (go stale) between rounds
 * pass through a small table, which keeps serving correctly. */
static void test_stale_reclaimed(void **state)
{
    (void)state;
    char key[32];
    uint64_t t = 30000 * SEC;

    ratelimit_shutdown();
    assert_int_equal(ratelimit_init(64 * 4), 0);
    for (int round = 0; round < 50; round++) {
        for (int i = 0; i < 200; i++) {
            snprintf(key, sizeof(key), "r%d-%d", round, i);
            assert_true(take(key, 1000, 1, 1, t));
        }
        t += SEC; /* every bucket of the round refilled: all stale now */
    }
    assert_int_equal(count("after", 1, 2, t, 5), 2);
    ratelimit_shutdown();
    assert_int_equal(ratelimit_init(4096), 0);
}

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * SEC + (uint64_t)ts.tv_nsec / 1000;
}

#define THREADS 4
#define TRIES 50000
#define RATE 2000.0
#define BURST 100.0

typedef struct worker {
    pthread_t tid;
    int index;
    int shared_ok;
    int own_ok;
    int churn_ok;
} worker_t;

static void *hammer(void *arg)
{
    worker_t *w = arg;
    char own[32], churn[32];
    snprintf(own, sizeof(own), "own-%d", w->index);
    for (int i = 0; i < TRIES; i++) {
        w->shared_ok += take("shared", RATE, BURST, 1, mono_us());
        w->own_ok += take(own, RATE, BURST, 1, mono_us());
        /* Distinct keys from all threads at once, to make buckets move between keys. */
        snprintf(churn, sizeof(churn), "churn-%d-%d", w->index, i % 5000);
        w->churn_ok += take(churn, 0, 1, 1, mono_us());
    }
    return NULL;
}

static void run_workers(worker_t *w)
{
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker_t){.index = i};
        assert_int_equal(pthread_create(&w[i].tid, NULL, hammer, &w[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(w[i].tid, NULL), 0);
}

/* Room for every key (20 000 churn keys, 65 536 buckets): nothing is evicted, so the counts
 * are exact or bounded by what the clock allowed. */
static void test_threads(void **state)
{
    (void)state;
    worker_t w[THREADS];
    int shared = 0;

    ratelimit_shutdown();
    assert_int_equal(ratelimit_init(1 << 16), 0);
    uint64_t start = mono_us();
    run_workers(w);
    double elapsed = (double)(mono_us() - start) / 1e6;
    double bound = BURST + RATE * elapsed + 1;

    for (int i = 0; i < THREADS; i++) {
        shared += w[i].shared_ok;
        if (w[i].own_ok < BURST || w[i].own_ok > bound)
            fail_msg("thread %d: %d allowed on its own key, bound %.0f", i, w[i].own_ok, bound);
        /* 5000 never-refilling keys, each taken TRIES / 5000 times: once each. */
        assert_int_equal(w[i].churn_ok, 5000);
    }
    if (shared < BURST || shared > bound)
        fail_msg("%d allowed on the shared key in %.3f s, bound %.0f", shared, elapsed, bound);
    ratelimit_shutdown();
    assert_int_equal(ratelimit_init(4096), 0);
}

/* A table far too small for the keys in use: buckets are reused between threads all the time.
 * Nothing may break, and a key never gets fewer tokens than a new bucket would have had. */
static void test_threads_overloaded(void **state)
{
    (void)state;
    worker_t w[THREADS];

    ratelimit_shutdown();
    assert_int_equal(ratelimit_init(256), 0);
    run_workers(w);
    for (int i = 0; i < THREADS; i++) {
        assert_true(w[i].own_ok >= BURST);
        assert_true(w[i].churn_ok >= 5000);
    }
    ratelimit_shutdown();
    assert_int_equal(ratelimit_init(4096), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_twice),
        cmocka_unit_test(test_refill),
        cmocka_unit_test(test_cost),
        cmocka_unit_test(test_keys_are_exact),
        cmocka_unit_test(test_capacity_eviction),
        cmocka_unit_test(test_stale_reclaimed),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_threads_overloaded),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
