/* host/common/order_msg.c order_record_json: an {E}:orders value (compact "<qty> <host> <user>"
 * or JSON) read back as the order's JSON, byte for byte what deduct.lua stored before records
 * were compact. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "order_msg.h"
#include "util.h"

static int expand(const char *id, const char *val, char *buf, size_t cap, const char **json)
{
    return order_record_json(id, strlen(id), val, strlen(val), buf, cap, json);
}

/* The JSON deduct.lua built by concatenation before (its field order, created_at unpadded). */
static void old_json(char *out, size_t cap, const char *event, const char *host, long long ms,
                     const char *id, const char *qty, const char *user)
{
    snprintf(out, cap,
             "{\"event\":\"%s\",\"host\":\"%s\",\"created_at\":%lld,\"order_id\":\"%s\","
             "\"qty\":%s,\"user\":\"%s\"}",
             event, host, ms, id, qty, user);
}

static void test_compact_expands_to_the_old_json(void **state)
{
    (void)state;
    static const struct {
        const char *id, *val, *event, *host, *qty, *user;
        long long ms;
    } c[] = {
        {"1764530000123-0000000042-concert", "1 h1 alice", "concert", "h1", "1", "alice",
         1764530000123LL},
        {"1764530000123-0000000001-a.b:c@d_e-f", "12 web-3.eu:1 U_x.y@z-9:0", "a.b:c@d_e-f",
         "web-3.eu:1", "12", "U_x.y@z-9:0", 1764530000123LL},
        /* An ms below 13 digits is zero-padded in the id, not in created_at. */
        {"0000000001234-9999999999-e", "3 h u", "e", "h", "3", "u", 1234LL},
        {"0000000000000-0000000000-e", "1 h u", "e", "h", "1", "u", 0LL},
        /* A seq past 10 digits (deduct.lua's %010d grows), an event with digits and '-'. */
        {"1764530000123-10000000002-2024-final", "1 h u", "2024-final", "h", "1", "u",
         1764530000123LL},
    };
    for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
        char want[ORDER_RECORD_JSON_MAX], buf[ORDER_RECORD_JSON_MAX];
        const char *json = NULL;
        old_json(want, sizeof(want), c[i].event, c[i].host, c[i].ms, c[i].id, c[i].qty, c[i].user);
        int n = expand(c[i].id, c[i].val, buf, sizeof(buf), &json);
        assert_int_equal(n, (int)strlen(want));
        assert_ptr_equal(json, buf);
        assert_memory_equal(json, want, (size_t)n);
    }
}

/* What the subscriber and the renderer read from it: the same order. */
static void test_expanded_is_the_order(void **state)
{
    (void)state;
    char buf[ORDER_RECORD_JSON_MAX], scratch[1024];
    const char *json;
    const char *id = "1764530000123-0000000042-concert";
    int n = expand(id, "2 h1 alice", buf, sizeof(buf), &json);
    assert_true(n > 0);
    store_order_t o;
    assert_int_equal(store_scan_order(json, (size_t)n, &o, scratch, sizeof(scratch)), 1);
    assert_string_equal(o.order_id, id);
    assert_string_equal(o.event, "concert");
    assert_string_equal(o.user, "alice");
    assert_string_equal(o.host, "h1");
    assert_int_equal(o.qty, 2);
    assert_int_equal(o.created_at, 1764530000123LL);
}

/* The longest names the host accepts fit ORDER_RECORD_JSON_MAX; one byte less than the JSON
 * is refused, never cut. */
static void test_longest_names_fit(void **state)
{
    (void)state;
    char name[SNATCH_NAME_MAX + 1], id[128], val[256], want[ORDER_RECORD_JSON_MAX];
    char buf[ORDER_RECORD_JSON_MAX];
    const char *json;
    memset(name, 'n', SNATCH_NAME_MAX);
    name[SNATCH_NAME_MAX] = '\0';
    snprintf(id, sizeof(id), "9999999999999-9999999999-%s", name);
    snprintf(val, sizeof(val), "9223372036854775807 %s %s", name, name);
    old_json(want, sizeof(want), name, name, 9999999999999LL, id, "9223372036854775807", name);
    int n = expand(id, val, buf, sizeof(buf), &json);
    assert_int_equal(n, (int)strlen(want));
    assert_memory_equal(json, want, (size_t)n);
    assert_int_equal(expand(id, val, buf, (size_t)n, &json), n);
    assert_int_equal(expand(id, val, buf, (size_t)n - 1, &json), -1);
}

/* A value starting with '{' is the JSON already (an earlier version's record, repair.lua's, a
 * name that needs escaping): used as it is, not copied. */
static void test_json_passes_through(void **state)
{
    (void)state;
    static const char *vals[] = {
        "{\"event\":\"concert\",\"host\":\"h1\",\"created_at\":1764530000123,\"order_id\":"
        "\"1764530000123-0000000042-concert\",\"qty\":1,\"user\":\"alice\"}",
        "{\"user\":\"q\\\"x\",\"qty\":1}",
        "{",
    };
    char buf[8];
    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++) {
        const char *json = NULL;
        /* Not even a valid id is needed, nor room in buf. */
        assert_int_equal(expand("x", vals[i], buf, sizeof(buf), &json), (int)strlen(vals[i]));
        assert_ptr_equal(json, vals[i]);
    }
}

static void test_malformed_refused(void **state)
{
    (void)state;
    static const char *id = "1764530000123-0000000042-concert";
    static const char *bad_vals[] = {
        "",
        "1",
        "1 h1",
        "1 h1 ",
        "1  alice",
        " h1 alice",
        "0 h1 alice",
        "01 h1 alice",
        "-1 h1 alice",
        "+1 h1 alice",
        "1x h1 alice",
        "x h1 alice",
        "1 h1 al ice",
        "1 h1 alice ",
        "1 h\"1 alice",
        "1 h1 ali\\ce",
        "1 h1 al\"ice",
        "1 h1 al\nice",
        "1 h1 al/ce",
        "1 h1 ali\xc3\xa9",
        "1\th1\talice",
        "123456789012345678901 h1 alice", /* more digits than any int64 */
        "[1 h1 alice]",
    };
    static const char *bad_ids[] = {
        "",
        "1764530000123",                     /* ms only */
        "1764530000123-",                    /* ms only */
        "1764530000123-0000000042-",         /* no event */
        "1764530000123-000000042-concert",   /* 9-digit seq */
        "1764530000123-0000000042",          /* no event, no separator */
        "176453000012-00000000042-concert",  /* separators moved */
        "1764530000123_0000000042-concert",  /* separator */
        "1764530000123-0000000042_concert",  /* separator */
        "17645300x0123-0000000042-concert",  /* not digits */
        "1764530000123-00000x0042-concert",  /* not digits */
        "1764530000123-0000000042-con cert", /* an event that is not plain */
        "1764530000123-0000000042-con\"cert",
    };
    char buf[ORDER_RECORD_JSON_MAX];
    const char *json = NULL;
    for (size_t i = 0; i < sizeof(bad_vals) / sizeof(bad_vals[0]); i++) {
        json = NULL;
        if (expand(id, bad_vals[i], buf, sizeof(buf), &json) != -1)
            fail_msg("value \"%s\" was accepted", bad_vals[i]);
        assert_null(json);
    }
    for (size_t i = 0; i < sizeof(bad_ids) / sizeof(bad_ids[0]); i++) {
        json = NULL;
        if (expand(bad_ids[i], "1 h1 alice", buf, sizeof(buf), &json) != -1)
            fail_msg("id \"%s\" was accepted", bad_ids[i]);
        assert_null(json);
    }
    /* A NUL inside the value is not a name character either. */
    assert_int_equal(order_record_json(id, strlen(id), "1 h1 al\0ce", 10, buf, sizeof(buf), &json),
                     -1);
}

/* Random values over an alphabet of the characters that matter: whatever is accepted is an
 * order whose fields are the value's words, and it is JSON that the subscriber's parser takes
 * (no escape was needed). Deterministic (a fixed seed), under ASan too. */
static uint32_t next_rand(uint32_t *seed)
{
    *seed = *seed * 1103515245u + 12345u;
    return *seed >> 16;
}

/* Random values, mostly near the compact form (words of name characters, spaces), with the
 * characters that must be refused mixed in: whatever is accepted is an order whose fields are
 * the value's words, and JSON that the subscriber's parser takes (no escape was needed).
 * Deterministic (a fixed seed), under ASan too. */
static void test_random_values(void **state)
{
    (void)state;
    static const char good[] = "0123456789aZz_.:@-", bad[] = " {\"\\/\x80\t\n";
    const char *id = "1764530000123-0000000042-concert";
    uint32_t seed = 12345;
    int accepted = 0;
    for (int i = 0; i < 50000; i++) {
        char val[40], buf[ORDER_RECORD_JSON_MAX];
        size_t len = 0;
        int words = 1 + (int)(next_rand(&seed) % 4);
        for (int w = 0; w < words; w++) {
            if (w > 0)
                val[len++] = ' ';
            size_t wl = next_rand(&seed) % 6;
            for (size_t k = 0; k < wl; k++)
                val[len++] = next_rand(&seed) % 20 == 0
                                 ? bad[next_rand(&seed) % (sizeof(bad) - 1)]
                                 : good[next_rand(&seed) % (sizeof(good) - 1)];
        }
        const char *json = NULL;
        int n = order_record_json(id, strlen(id), val, len, buf, sizeof(buf), &json);
        if (n < 0 || (len > 0 && val[0] == '{'))
            continue;
        accepted++;
        store_order_t o;
        json_t *doc = NULL;
        char reason[128], w0[16], w1[16], w2[16], copy[sizeof(val) + 1];
        assert_int_equal(store_parse_order(json, (size_t)n, &o, &doc, reason, sizeof(reason)), 0);
        memcpy(copy, val, len);
        copy[len] = '\0';
        assert_int_equal(sscanf(copy, "%15s %15s %15s", w0, w1, w2), 3);
        char qty[24];
        snprintf(qty, sizeof(qty), "%lld", (long long)o.qty);
        assert_string_equal(qty, w0);
        assert_string_equal(o.host, w1);
        assert_string_equal(o.user, w2);
        assert_string_equal(o.order_id, id);
        json_decref(doc);
    }
    assert_true(accepted > 1000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compact_expands_to_the_old_json),
        cmocka_unit_test(test_expanded_is_the_order),
        cmocka_unit_test(test_longest_names_fit),
        cmocka_unit_test(test_json_passes_through),
        cmocka_unit_test(test_malformed_refused),
        cmocka_unit_test(test_random_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
