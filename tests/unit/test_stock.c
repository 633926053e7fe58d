/* host/server/stock.c: the local quota under concurrent threads, resets by generation, the sold-out
 * flag; and host/common/util.c's input checks (everything that decides what reaches Redis). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <uv.h>

#include <cmocka.h>

#include "stock.h"
#include "util.h"

/* The event's fields as the other modules see them. */
static stock_view_t view_of(const stock_event_t *ev)
{
    stock_view_t v;
    stock_view(ev, &v);
    return v;
}

#define THREADS 4
#define QUOTA 100000

typedef struct {
    stock_event_t *ev;
    int64_t got;
    int64_t attempts;
} racer_t;

static void race(void *arg)
{
    racer_t *r = arg;
    for (int64_t i = 0; i < r->attempts; i++) {
        if (stock_reserve(r->ev, 1) == 0) {
            r->got++;
            /* Every 7th sale is refused by "Redis" and its unit given back. */
            if (i % 7 == 0) {
                stock_release(r->ev, 1);
                r->got--;
            }
        }
    }
}

static void test_concurrent_reserve_never_exceeds_quota(void **state)
{
    (void)state;
    stock_init();
    stock_event_t *ev = stock_install("race", 4, QUOTA * 2, 1, QUOTA, 1, false);
    assert_non_null(ev);
    racer_t r[THREADS];
    uv_thread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) {
        r[i] = (racer_t){.ev = ev, .attempts = QUOTA};
        assert_int_equal(uv_thread_create(&t[i], race, &r[i]), 0);
    }
    int64_t total = 0;
    for (int i = 0; i < THREADS; i++) {
        uv_thread_join(&t[i]);
        total += r[i].got;
    }
    /* 4 x QUOTA attempts for QUOTA units: all of it sold, not one unit more. */
    assert_int_equal(total, QUOTA);
    assert_int_equal(view_of(ev).left, 0);
    assert_int_equal(stock_reserve(ev, 1), -1);
    stock_shutdown();
}

static void test_reserve_qty_and_release(void **state)
{
    (void)state;
    stock_init();
    stock_event_t *ev = stock_install("q", 1, 10, 4, 5, 1, false);
    assert_int_equal(stock_reserve(ev, 3), 0);
    assert_int_equal(stock_reserve(ev, 3), -1); /* only 2 left: nothing taken */
    assert_int_equal(view_of(ev).left, 2);
    stock_release(ev, 3);
    assert_int_equal(view_of(ev).left, 5);
    stock_shutdown();
}

static void test_sold_out_flag_and_generation_reset(void **state)
{
    (void)state;
    stock_init();
    stock_event_t *ev = stock_install("g", 1, 10, 1, 10, 1, false);
    assert_ptr_equal(stock_find("g", 1), ev);
    assert_null(stock_find("h", 1));
    stock_mark_sold_out(ev);
    assert_int_equal(stock_reserve(ev, 1), -1);
    /* Same generation: the flag stays. */
    assert_ptr_equal(stock_install("g", 1, 10, 1, 10, 1, false), ev);
    assert_int_equal(stock_reserve(ev, 1), -1);
    /* Admin reset (new generation): fresh quota, flag cleared. */
    assert_ptr_equal(stock_install("g", 1, 20, 2, 7, 2, false), ev);
    assert_int_equal(view_of(ev).left, 7);
    assert_int_equal(stock_reserve(ev, 1), 0);
    assert_int_equal(view_of(ev).per_user_limit, 2);
    stock_shutdown();
}

static void test_quota_change_moves_what_is_left(void **state)
{
    (void)state;
    stock_init();
    stock_event_t *ev = stock_install("p", 1, 100, 1, 50, 1, false);
    for (int i = 0; i < 45; i++)
        assert_int_equal(stock_reserve(ev, 1), 0);
    /* Policy reload raises the quota to 60: 15 left. */
    stock_install("p", 1, 100, 1, 60, 1, false);
    assert_int_equal(view_of(ev).left, 15);
    /* Lowered below what was taken: never negative. */
    stock_install("p", 1, 100, 1, 10, 1, false);
    assert_int_equal(view_of(ev).left, 0);
    stock_shutdown();
}

static void test_refill_only_when_spent(void **state)
{
    (void)state;
    stock_init();
    stock_event_t *ev = stock_install("r", 1, 100, 1, 2, 1, false);
    assert_false(stock_refill(ev, 5)); /* 2 still left: nothing granted */
    assert_int_equal(stock_reserve(ev, 2), 0);
    assert_true(stock_refill(ev, 5));
    assert_int_equal(view_of(ev).left, 5);
    assert_false(stock_refill(ev, 5)); /* a second refresh does not stack */
    assert_int_equal(stock_reserve(ev, 5), 0);
    stock_mark_sold_out(ev);
    assert_false(stock_refill(ev, 5)); /* Redis said sold out: nothing to top up */
    assert_false(stock_refill(ev, 0));
    stock_shutdown();
}

static void test_many_events(void **state)
{
    (void)state;
    stock_init();
    char name[32];
    for (int i = 0; i < 1000; i++) {
        int n = snprintf(name, sizeof(name), "ev%d", i);
        assert_non_null(stock_install(name, (size_t)n, i, 1, i, 1, false));
    }
    for (int i = 0; i < 1000; i++) {
        int n = snprintf(name, sizeof(name), "ev%d", i);
        stock_event_t *ev = stock_find(name, (size_t)n);
        assert_non_null(ev);
        assert_int_equal(view_of(ev).quota, i);
    }
    stock_shutdown();
}

/* --max-events: the count is the limit; room held for an admin PUT is counted until spent. */
static void test_max_events_and_reserved_room(void **state)
{
    (void)state;
    assert_int_equal(stock_init_max(0), -1);
    assert_int_equal(stock_init_max(3), 0);
    assert_int_equal(stock_max_events(), 3);
    assert_non_null(stock_install("a", 1, 1, 1, 1, 1, false));
    assert_int_equal(stock_reserve_room("a", 1), 0); /* known: no room needed */
    assert_int_equal(stock_reserve_room("b", 1), 1);
    assert_int_equal(stock_reserve_room("c", 1), 1);
    assert_int_equal(stock_reserve_room("d", 1), -1); /* a, and room held for b and c */
    assert_null(stock_install("d", 1, 1, 1, 1, 1, false));
    stock_unreserve(); /* c's creation failed in Redis: its room comes back */
    assert_non_null(stock_install_reserved("b", 1, 5, 1, 5, 1, false));
    assert_non_null(stock_install("d", 1, 1, 1, 1, 1, false));
    assert_null(stock_install("e", 1, 1, 1, 1, 1, false));
    assert_int_equal(view_of(stock_find("b", 1)).left, 5);
    assert_non_null(stock_install("a", 1, 9, 1, 9, 2, false)); /* a reset still works */
    stock_shutdown();
}

static void test_util_parse_i64(void **state)
{
    (void)state;
    int64_t v;
    assert_int_equal(util_parse_i64("42", 2, 1, 100, &v), 0);
    assert_int_equal(v, 42);
    static const char *bad[] = {
        "", "+1", " 1", "1 ", "1e3", "0x10", "--1", "-", "99999999999999999999", "101", "0"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        assert_int_equal(util_parse_i64(bad[i], strlen(bad[i]), 1, 100, &v), -1);
    assert_int_equal(util_parse_i64("-5", 2, -10, 10, &v), 0);
    assert_int_equal(v, -5);
    /* 19 digits: INT64_MAX is read, anything above it refused rather than wrapped. */
    assert_int_equal(util_parse_i64("9223372036854775807", 19, 0, INT64_MAX, &v), 0);
    assert_true(v == INT64_MAX);
    assert_int_equal(util_parse_i64("9223372036854775808", 19, 0, INT64_MAX, &v), -1);
    assert_int_equal(util_parse_i64("9999999999999999999", 19, 0, INT64_MAX, &v), -1);
}

static void test_util_valid_name(void **state)
{
    (void)state;
    assert_true(util_valid_name("user-1_a.b:c@d", 14, 64));
    assert_false(util_valid_name("", 0, 64));
    assert_false(util_valid_name("a b", 3, 64));
    assert_false(util_valid_name("a'b", 3, 64));
    assert_false(util_valid_name("a{b}", 4, 64)); /* would break the {event} hash tag */
    assert_false(util_valid_name("a\0b", 3, 64));
    assert_false(util_valid_name("abcdef", 6, 5));
    char long_name[80];
    memset(long_name, 'x', sizeof(long_name));
    assert_false(util_valid_name(long_name, 65, 1000)); /* never past SNATCH_NAME_MAX */
    assert_true(util_valid_name(long_name, 64, 64));
}

/* orders.<event> must be a NATS subject: no empty token, no wildcard, no whitespace. */
static void test_util_valid_name_nats_edges(void **state)
{
    (void)state;
    static const char *bad[] = {"a..b", ".a", "a.",   ".",   "..",   "a...b", "a.*", "a.>",
                                "*",    ">",  "a\tb", "a\r", "a\nb", "a/b",   "a,b"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        assert_false(util_valid_name(bad[i], strlen(bad[i]), 64));
    static const char *good[] = {"a.b", "a.b.c", "_a", "a_", "-a", "a-",         ":a",
                                 "a:",  "@a",    "a@", "0",  "9z", "A.B-c:d@e_f"};
    for (size_t i = 0; i < ARRAY_SIZE(good); i++)
        assert_true(util_valid_name(good[i], strlen(good[i]), 64));
    /* The length check covers the whole name: a dot at byte 65 of a longer buffer is not read. */
    assert_true(util_valid_name("ab.", 2, 64));
}

static void test_util_json_and_query(void **state)
{
    (void)state;
    char buf[32];
    size_t pos = 0;
    assert_int_equal(util_json_str(buf, sizeof(buf), &pos, "a\"b\\c\n", 6), 0);
    assert_memory_equal(buf, "\"a\\\"b\\\\c\\u000a\"", pos);
    pos = 0;
    assert_int_equal(util_json_str(buf, 4, &pos, "abcdef", 6), -1);
    size_t len;
    const char *q = "user=u1&qty=3&x";
    const char *v = util_query_get(q, strlen(q), "qty", &len);
    assert_non_null(v);
    assert_int_equal(len, 1);
    assert_int_equal(v[0], '3');
    assert_null(util_query_get(q, strlen(q), "x", &len));
    assert_null(util_query_get(q, strlen(q), "us", &len));
    assert_true(util_secret_equal("tok", 3, "tok", 3));
    assert_false(util_secret_equal("tok", 3, "toke", 4));
    assert_false(util_secret_equal("", 0, "", 0));
    assert_false(util_secret_equal("tak", 3, "tok", 3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_reserve_never_exceeds_quota),
        cmocka_unit_test(test_reserve_qty_and_release),
        cmocka_unit_test(test_sold_out_flag_and_generation_reset),
        cmocka_unit_test(test_quota_change_moves_what_is_left),
        cmocka_unit_test(test_refill_only_when_spent),
        cmocka_unit_test(test_many_events),
        cmocka_unit_test(test_max_events_and_reserved_room),
        cmocka_unit_test(test_util_parse_i64),
        cmocka_unit_test(test_util_valid_name),
        cmocka_unit_test(test_util_valid_name_nats_edges),
        cmocka_unit_test(test_util_json_and_query),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
