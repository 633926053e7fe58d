/* host/common/keyspace.c: key names, and the order id built and parsed back (the layout
 * deduct.lua mints and GET /v1/orders/{id} reads). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "keyspace.h"

static void test_keys(void **state)
{
    (void)state;
    static const char *want[KEYSPACE__COUNT] = {"{ev1}:meta", "{ev1}:users", "{ev1}:orders",
                                                "{ev1}:uorders", "{ev1}:pending"};
    char key[KEYSPACE_KEY_MAX];
    for (int i = 0; i < KEYSPACE__COUNT; i++) {
        int n = keyspace_key(key, "ev1xyz", 3, (keyspace_key_t)i);
        assert_string_equal(key, want[i]);
        assert_int_equal(n, (int)strlen(want[i]));
    }
    char longest[SNATCH_NAME_MAX + 1];
    memset(longest, 'a', SNATCH_NAME_MAX);
    longest[SNATCH_NAME_MAX] = '\0';
    int n = keyspace_key(key, longest, SNATCH_NAME_MAX, KEYSPACE_UORDERS);
    assert_true(n < KEYSPACE_KEY_MAX);
    assert_string_equal(KEYSPACE_EVENTS, "snatch:events");
}

static void test_order_id_round_trip(void **state)
{
    (void)state;
    char id[KEYSPACE_ORDER_ID_MAX + 1];
    int n = keyspace_order_id(id, sizeof(id), 1700000000000LL, 42, "concert", 7);
    assert_int_equal(n, 32);
    assert_string_equal(id, "1700000000000-0000000042-concert");
    size_t elen = 0;
    const char *ev = keyspace_order_event(id, (size_t)n, &elen);
    assert_non_null(ev);
    assert_int_equal(elen, 7);
    assert_memory_equal(ev, "concert", 7);

    char longest[SNATCH_NAME_MAX + 1];
    memset(longest, 'b', SNATCH_NAME_MAX);
    n = keyspace_order_id(id, sizeof(id), 9999999999999LL, 9999999999LL, longest, SNATCH_NAME_MAX);
    assert_int_equal(n, KEYSPACE_ORDER_ID_MAX);
    assert_non_null(keyspace_order_event(id, (size_t)n, &elen));
    assert_int_equal(elen, SNATCH_NAME_MAX);

    assert_int_equal(keyspace_order_id(id, sizeof(id), -1, 1, "e", 1), -1);
    assert_int_equal(keyspace_order_id(id, sizeof(id), 1, 10000000000LL, "e", 1), -1);
    assert_int_equal(keyspace_order_id(id, sizeof(id), 1, 1, "a b", 3), -1);
    assert_int_equal(keyspace_order_id(id, 10, 1, 1, "e", 1), -1);
}

static void test_order_event_refuses(void **state)
{
    (void)state;
    static const char *bad[] = {
        "",
        "1700000000000-0000000042-",        /* no event */
        "1700000000000-0000000042",         /* no separator, no event */
        "170000000000-00000000042-concert", /* separators moved */
        "1700000000000_0000000042-concert",
        "1700000000000-0000000042_concert",
        "17000000x0000-0000000042-concert", /* not digits */
        "1700000000000-00000x0042-concert",
        "1700000000000-0000000042-con cert", /* event name rule */
        "1700000000000-0000000042-..",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t elen = 99;
        assert_null(keyspace_order_event(bad[i], strlen(bad[i]), &elen));
        assert_int_equal(elen, 99);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_order_id_round_trip),
        cmocka_unit_test(test_order_event_refuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
