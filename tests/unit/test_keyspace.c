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

static const char *pending_id(const keyspace_pending_t *e, int64_t i, char *buf, size_t cap)
{
    return keyspace_pending_id(e, i, buf, cap) < 0 ? "" : buf;
}

/* {E}:pending entries: "<ms> <n>" names the batch's n consecutive orders; "<ms>" (the previous
 * version's entry of one order) is one. */
static void test_pending_entry(void **state)
{
    (void)state;
    static const char f[] = "1700000000000-0000000042-concert";
    char id[KEYSPACE_ORDER_ID_MAX + 1];
    keyspace_pending_t e;
    assert_int_equal(keyspace_pending_parse(f, strlen(f), "1700000000123 3", 15, &e), 0);
    assert_int_equal(e.ms, 1700000000123LL);
    assert_int_equal(e.n, 3);
    assert_int_equal(e.elen, 7);
    assert_memory_equal(e.event, "concert", 7);
    assert_string_equal(pending_id(&e, 0, id, sizeof(id)), f);
    assert_string_equal(pending_id(&e, 2, id, sizeof(id)), "1700000000000-0000000044-concert");
    assert_int_equal(keyspace_pending_id(&e, 3, id, sizeof(id)), -1);
    assert_int_equal(keyspace_pending_id(&e, -1, id, sizeof(id)), -1);

    assert_int_equal(keyspace_pending_parse(f, strlen(f), "1700000000000", 13, &e), 0);
    assert_int_equal(e.n, 1);
    assert_int_equal(e.ms, 1700000000000LL);
    assert_string_equal(pending_id(&e, 0, id, sizeof(id)), f);

    /* The last seq an id can hold ends the entry. */
    static const char top[] = "1700000000000-9999999998-e";
    assert_int_equal(keyspace_pending_parse(top, strlen(top), "5 2", 3, &e), 0);
    assert_string_equal(pending_id(&e, 1, id, sizeof(id)), "1700000000000-9999999999-e");
    assert_int_equal(keyspace_pending_parse(top, strlen(top), "5 3", 3, &e), -1);

    static const char *bad_values[] = {
        "",
        " ",
        "12 ",
        " 3",
        "12 0",
        "12 03",
        "12 -1",
        "12 1 1",
        "12  1",
        "x",
        "1x",
        "12 x",
        "-5",
        "12 65537",
        "1234567890123456789",
        "12 99999999999",
    };
    for (size_t i = 0; i < sizeof(bad_values) / sizeof(bad_values[0]); i++) {
        e.n = 77;
        assert_int_equal(
            keyspace_pending_parse(f, strlen(f), bad_values[i], strlen(bad_values[i]), &e), -1);
        assert_int_equal(e.n, 77);
    }
    assert_int_equal(keyspace_pending_parse(f, strlen(f), "12 65536", 8, &e), 0);
    static const char *bad_fields[] = {"", "x", "1700000000000-0000000042-", "1700000000000-42-e",
                                       "1700000000000-0000000042-a b"};
    for (size_t i = 0; i < sizeof(bad_fields) / sizeof(bad_fields[0]); i++)
        assert_int_equal(
            keyspace_pending_parse(bad_fields[i], strlen(bad_fields[i]), "12 1", 4, &e), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_order_id_round_trip),
        cmocka_unit_test(test_order_event_refuses),
        cmocka_unit_test(test_pending_entry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
