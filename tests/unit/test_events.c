/* host/server/events.c: event discovery, refresh and quota refill against a real redis-server
 * (tests/unit/redis_server.h), read through the worker's own Redis client (host/server/redis.c)
 * on a libuv loop driven here; the quota comes from the real lua/policy.lua for host h1 of 3
 * (tolerates one dead host: quota = ceil(stock / 2)). Every wait is bounded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <uv.h>

#include "events.h"
#include "host_fixture.h"
#include "loop_wait.h"
#include "metrics_sample.h"
#include "redis_server.h"

/* The event's fields as the other modules see them. */
static stock_view_t view_of(const stock_event_t *ev)
{
    stock_view_t v;
    stock_view(ev, &v);
    return v;
}

#define REFRESH_ERRORS "snatch_backend_errors_total{backend=\"redis\",step=\"event_refresh\"}"

static test_redis_t redis = {.pid = -1};
static uv_loop_t loop;

typedef struct {
    int calls;
    stock_event_t *ev;
    int err;
} got_t;

static void on_lookup(stock_event_t *ev, int err, void *data)
{
    got_t *g = data;
    g->calls++;
    g->ev = ev;
    g->err = err;
}

static bool called(void *arg)
{
    return ((got_t *)arg)->calls > 0;
}

static bool client_ready(void *arg)
{
    return redis_client_ready(arg);
}

/* events_lookup, waited for: exactly one callback. */
static got_t lookup(const char *event)
{
    got_t g = {0};
    events_lookup(&w, event, strlen(event), on_lookup, &g);
    assert_true(test_run_until(&loop, called, &g, 5000));
    assert_int_equal(g.calls, 1);
    return g;
}

/* Writes {event}:meta as PUT /admin/events and the deduct script leave it. */
static void meta(const char *event, int stock, int sold, int limit, int gen)
{
    assert_int_equal(test_redis_do(&redis, "HSET {%s}:meta stock %d sold %d limit %d gen %d", event,
                                   stock, sold, limit, gen),
                     0);
}

static int64_t left(const stock_event_t *ev)
{
    return view_of(ev).left;
}

static bool sold_out(const stock_event_t *ev)
{
    return view_of(ev).sold_out;
}

static void test_unknown_event(void **state)
{
    (void)state;
    got_t g = lookup("nope");
    assert_null(g.ev);
    assert_int_equal(g.err, 0);
    assert_null(stock_find("nope", 4));

    /* A meta whose stock is no count is no event either. */
    assert_int_equal(test_redis_do(&redis, "HSET {e0}:meta stock x sold 0 limit 1 gen 1"), 0);
    g = lookup("e0");
    assert_null(g.ev);
    assert_int_equal(g.err, 0);
    assert_null(stock_find("e0", 2));
}

static void test_installed_with_policy_quota(void **state)
{
    (void)state;
    meta("e1", 10, 0, 2, 1);
    got_t g = lookup("e1");
    assert_int_equal(g.err, 0);
    assert_non_null(g.ev);
    assert_ptr_equal(g.ev, stock_find("e1", 2));
    assert_int_equal(view_of(g.ev).total, 10);
    assert_int_equal(view_of(g.ev).per_user_limit, 2);
    assert_int_equal(view_of(g.ev).quota, 5);
    assert_int_equal(left(g.ev), 5);
    assert_int_equal(view_of(g.ev).generation, 1);
    assert_false(sold_out(g.ev));

    /* Sold out in Redis already: known as sold out at once. */
    meta("e1done", 4, 4, 1, 3);
    g = lookup("e1done");
    assert_non_null(g.ev);
    assert_true(sold_out(g.ev));

    /* Fields missing: nothing sold yet, a limit of 1. */
    assert_int_equal(test_redis_do(&redis, "HSET {e1bare}:meta stock 4 gen 1"), 0);
    g = lookup("e1bare");
    assert_non_null(g.ev);
    assert_int_equal(view_of(g.ev).per_user_limit, 1);
    assert_int_equal(left(g.ev), 2);
    assert_false(sold_out(g.ev));
    assert_int_equal(test_redis_do(&redis, "HSET {e1zero}:meta stock 0 gen 1"), 0);
    g = lookup("e1zero");
    assert_non_null(g.ev);
    assert_true(sold_out(g.ev)); /* nothing to sell, nothing sold: sold out */

    /* The quota follows the policy and the host count. */
    int64_t q = 0;
    host.cfg.hosts = 1;
    assert_non_null(events_install(&w, "e1one", 5, 7, 1, 1, 0, false, &q));
    assert_int_equal(q, 7);
    host.cfg.hosts = 3;
    assert_non_null(events_install(&w, "e1three", 7, 7, 1, 1, 0, false, &q));
    assert_int_equal(q, 4);
}

/* An admin reset bumps gen: the event is reinstalled, full quota, no longer sold out. Within a
 * generation the host follows Redis both ways: sold out while Redis says so, selling again once
 * released holds gave units back (sold went down; the quota untouched) or a PATCH raised the
 * stock (quota re-allocated, what is left moved by the difference), paused and resumed as
 * {E}:meta says. */
static void test_reset_reinstalls(void **state)
{
    (void)state;
    meta("e2", 10, 0, 1, 1);
    stock_event_t *ev = lookup("e2").ev;
    assert_non_null(ev);
    assert_int_equal(stock_reserve(ev, 3), 0);
    stock_mark_sold_out(ev);

    meta("e2", 10, 10, 1, 1);
    assert_ptr_equal(lookup("e2").ev, ev);
    assert_true(sold_out(ev));
    assert_int_equal(left(ev), 2);
    assert_int_equal(stock_check(ev, 1), STOCK_SOLD_OUT);

    meta("e2", 10, 9, 1, 1); /* an expired hold */
    assert_ptr_equal(lookup("e2").ev, ev);
    assert_false(sold_out(ev));
    assert_int_equal(left(ev), 2);
    meta("e2", 10, 10, 1, 1);
    assert_ptr_equal(lookup("e2").ev, ev);
    assert_true(sold_out(ev));

    meta("e2", 20, 10, 1, 1); /* PATCH stock 20 */
    assert_ptr_equal(lookup("e2").ev, ev);
    assert_false(sold_out(ev));
    assert_int_equal(view_of(ev).quota, 10);
    assert_int_equal(left(ev), 7);
    assert_int_equal(stock_check(ev, 1), STOCK_OK);

    assert_int_equal(test_redis_do(&redis, "HSET {e2}:meta paused 1"), 0);
    lookup("e2");
    assert_true(view_of(ev).paused);
    assert_int_equal(stock_check(ev, 1), STOCK_PAUSED);
    assert_int_equal(stock_reserve(ev, 1), -1);
    assert_int_equal(test_redis_do(&redis, "HSET {e2}:meta paused 0"), 0);
    lookup("e2");
    assert_false(view_of(ev).paused);
    assert_int_equal(stock_check(ev, 1), STOCK_OK);

    meta("e2", 8, 0, 1, 2);
    assert_ptr_equal(lookup("e2").ev, ev);
    assert_false(sold_out(ev));
    assert_int_equal(left(ev), 4);
    assert_int_equal(view_of(ev).total, 8);
    assert_int_equal(view_of(ev).generation, 2);
}

/* A spent local quota is topped up from what Redis has left, at most one quota; not while
 * anything is left locally, not once Redis has nothing left. */
static void test_refill(void **state)
{
    (void)state;
    meta("e3", 10, 0, 1, 1);
    stock_event_t *ev = lookup("e3").ev;
    assert_non_null(ev);
    assert_int_equal(stock_reserve(ev, 5), 0);
    meta("e3", 10, 5, 1, 1);
    lookup("e3");
    assert_int_equal(left(ev), 5); /* one quota: 5 left in Redis */

    assert_int_equal(stock_reserve(ev, 4), 0);
    meta("e3", 10, 9, 1, 1);
    lookup("e3");
    assert_int_equal(left(ev), 1); /* not spent: nothing granted */

    assert_int_equal(stock_reserve(ev, 1), 0);
    lookup("e3");
    assert_int_equal(left(ev), 1); /* what Redis has left, not a whole quota */

    assert_int_equal(stock_reserve(ev, 1), 0);
    meta("e3", 10, 10, 1, 1);
    lookup("e3");
    assert_int_equal(left(ev), 0);
    assert_true(sold_out(ev));
}

/* lua/policy.lua with `M.refill = false`, opened in place of the worker's policy. */
static script_t *policy_without_refill(void)
{
    char path[1024], err[2048], dir[] = "/tmp/snatch-events-XXXXXX";
    const char *src = getenv("SNATCH_SOURCE_DIR");
    snprintf(path, sizeof(path), "%s/lua/policy.lua", src && *src ? src : SNATCH_SOURCE_DIR);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    static char text[65536];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    text[n] = '\0';
    char *at = strstr(text, "M.refill = true");
    assert_non_null(at);
    at[0] = '\0';
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/policy.lua", dir);
    f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "%sM.refill = false%s", text, at + strlen("M.refill = true"));
    fclose(f);
    script_t *s = NULL;
    script_env_t env = {.host_id = "h1", .hosts = 3};
    int rc = script_open(&s, path, &env, err, sizeof(err));
    unlink(path);
    rmdir(dir);
    if (rc != 0)
        fail_msg("policy: %s", err);
    return s;
}

static void test_no_refill_when_the_policy_says_so(void **state)
{
    (void)state;
    script_t *saved = w.script;
    w.script = policy_without_refill();
    assert_false(script_settings(w.script)->refill);
    meta("e4", 10, 0, 1, 1);
    stock_event_t *ev = lookup("e4").ev;
    assert_non_null(ev);
    assert_int_equal(stock_reserve(ev, 5), 0);
    lookup("e4");
    assert_int_equal(left(ev), 0);
    assert_false(sold_out(ev));
    script_close(w.script);
    w.script = saved;
}

static bool generation_is_2(void *arg)
{
    return view_of((stock_event_t *)arg).generation == 2;
}

static bool refresh_error_counted(void *arg)
{
    return metrics_sample(REFRESH_ERRORS) > *(double *)arg;
}

/* The timer body re-reads every known event; a failed read is counted, not fatal. */
static void test_refresh(void **state)
{
    (void)state;
    meta("e5", 6, 0, 1, 1);
    stock_event_t *ev = lookup("e5").ev;
    assert_non_null(ev);
    assert_int_equal(stock_reserve(ev, 3), 0);
    meta("e5", 6, 0, 1, 2);
    events_refresh(&w);
    assert_true(test_run_until(&loop, generation_is_2, ev, 5000));
    assert_int_equal(left(ev), 3);

    /* {e6}:meta is not a hash: HMGET fails, for the lookup and for the refresh. */
    assert_int_equal(test_redis_do(&redis, "SET {e6}:meta x"), 0);
    got_t g = lookup("e6");
    assert_null(g.ev);
    assert_int_equal(g.err, -1);
    assert_non_null(stock_install("e6", 2, 1, 1, 1, 1, false));
    double before = metrics_sample(REFRESH_ERRORS);
    events_refresh(&w);
    assert_true(test_run_until(&loop, refresh_error_counted, &before, 5000));
}

/* The admin path holds room in the table (stock_reserve_room) before it creates the event in
 * Redis; the install spends it, so a table of 3 still takes exactly 3 events. */
static void test_room_held(void **state)
{
    (void)state;
    stock_shutdown();
    assert_int_equal(stock_init_max(3), 0);
    int64_t q = 0;
    assert_int_equal(stock_reserve_room("r1", 2), 1);
    stock_event_t *ev = events_install(&w, "r1", 2, 10, 1, 1, 0, true, &q);
    assert_non_null(ev);
    assert_int_equal(q, 5);
    assert_non_null(stock_install("r2", 2, 1, 1, 1, 1, false));
    assert_non_null(stock_install("r3", 2, 1, 1, 1, 1, false));
    assert_null(stock_install("r4", 2, 1, 1, 1, 1, false));
    assert_int_equal(stock_reserve_room("r4", 2), -1);

    /* A reset of a known event holds nothing and reinstalls in place. */
    assert_int_equal(stock_reserve(ev, 5), 0);
    assert_int_equal(stock_reserve_room("r1", 2), 0);
    assert_ptr_equal(events_install(&w, "r1", 2, 20, 2, 2, 0, false, &q), ev);
    assert_int_equal(q, 10);
    assert_int_equal(left(ev), 10);
    assert_int_equal(view_of(ev).per_user_limit, 2);
    assert_null(stock_install("r4", 2, 1, 1, 1, 1, false));

    stock_shutdown();
    stock_init();
}

static void test_redis_down(void **state)
{
    (void)state;
    redis_client_t *c = w.redis;
    got_t g = {0};
    w.redis = NULL; /* no client (yet) */
    events_lookup(&w, "e1", 2, on_lookup, &g);
    assert_int_equal(g.calls, 1);
    assert_null(g.ev);
    assert_int_equal(g.err, -1);
    w.redis = c;

    meta("e7", 10, 0, 1, 1);
    test_redis_stop(&redis);
    g = lookup("e7");
    assert_null(g.ev);
    assert_int_equal(g.err, -1);
    assert_null(stock_find("e7", 2));
    events_refresh(&w); /* nothing to ask: returns */
}

static int group_setup(void **state)
{
    (void)state;
    fixture_open();
    host.cfg.hosts = 3;
    if (test_redis_start(&redis) != 0 || uv_loop_init(&loop) != 0)
        return -1;
    if (redis_client_start(&w.redis, &loop, "127.0.0.1", redis.port, "return 1", 2000) != 0)
        return -1;
    return test_run_until(&loop, client_ready, w.redis, 5000) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    redis_client_close(w.redis);
    w.redis = NULL;
    test_loop_drain(&loop, 1000);
    uv_loop_close(&loop);
    test_redis_stop(&redis);
    fixture_close();
    return 0;
}

int main(void)
{
    /* In order: the last one stops Redis. */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unknown_event),
        cmocka_unit_test(test_installed_with_policy_quota),
        cmocka_unit_test(test_reset_reinstalls),
        cmocka_unit_test(test_refill),
        cmocka_unit_test(test_no_refill_when_the_policy_says_so),
        cmocka_unit_test(test_refresh),
        cmocka_unit_test(test_room_held),
        cmocka_unit_test(test_redis_down),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
