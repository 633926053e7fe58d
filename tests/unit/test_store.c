/* host/subscriber/store.c: the fast order scanner must never accept what the JSON parser
 * rejects and must store the same values (checked on hand-written cases and on 50 000 seeded
 * mutations of a real order); inserts are idempotent per order id; dead letters are kept. The
 * body parser (order_msg.h) splits a batch into its records and checks Snatch-Orders. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "store.h"

static const char ORDER[] =
    "{\"order_id\":\"1795596636082-0000000001-e1\",\"event\":\"e1\","
    "\"user\":\"u1\",\"qty\":1,\"host\":\"h1\",\"created_at\":1795596636082}";

static int same_str(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

/* Returns 1 when the scanner accepted (and then agrees with the parser), 0 when it declined. */
static int check_agreement(const char *data, size_t len)
{
    store_order_t fast, slow;
    char scratch[1024];
    int scanned = store_scan_order(data, len, &fast, scratch, sizeof(scratch));
    if (!scanned)
        return 0;
    json_t *doc = NULL;
    char reason[256];
    int parsed = store_parse_order(data, len, &slow, &doc, reason, sizeof(reason));
    if (parsed != 0) {
        fprintf(stderr, "scanner accepted what the parser rejects (%s): %.*s\n", reason, (int)len,
                data);
        fail();
    }
    assert_true(same_str(fast.order_id, slow.order_id));
    assert_true(same_str(fast.event, slow.event));
    assert_true(same_str(fast.user, slow.user));
    assert_true(same_str(fast.host, slow.host));
    assert_int_equal(fast.qty, slow.qty);
    assert_int_equal(fast.created_at, slow.created_at);
    json_decref(doc);
    return 1;
}

static void test_scanner_accepts_the_host_format(void **state)
{
    (void)state;
    assert_int_equal(check_agreement(ORDER, strlen(ORDER)), 1);
}

static void test_scanner_declines_or_agrees_on_edge_cases(void **state)
{
    (void)state;
    static const char *cases[] = {
        "{}",
        "[]",
        "",
        "{\"order_id\":\"a\",\"event\":\"e\",\"user\":\"u\",\"qty\":0}",
        "{\"order_id\":\"a\",\"event\":\"e\",\"user\":\"u\",\"qty\":-1}",
        "{\"order_id\":\"a\",\"event\":\"e\",\"user\":\"u\",\"qty\":1.0}",
        "{\"order_id\":\"a\",\"event\":\"e\",\"user\":\"u\",\"qty\":1e0}",
        "{\"order_id\":\"a\",\"event\":\"e\",\"user\":\"u\",\"qty\":01}",
        "{\"order_id\":\"a\",\"event\":\"e\",\"user\":\"\",\"qty\":1}",
        "{\"order_id\":\"a\",\"order_id\":\"b\",\"event\":\"e\",\"user\":\"u\",\"qty\":1}",
        "{\"order_id\":\"a\",\"event\":\"e\",\"user\":\"u\",\"qty\":1,}",
        "{\"order_id\":\"a\",\"event\":\"e\",\"user\":\"u\",\"qty\":1} x",
        "{\"order_id\":\"a\\u0000b\",\"event\":\"e\",\"user\":\"u\",\"qty\":1}",
        "{\"order_id\":\"a\",\"event\":\"e\",\"user\":\"u\",\"qty\":99999999999999999999}",
        "{\"order_id\":\"a\",\"event\":\"e\",\"user\":\"u\",\"qty\":1,\"host\":null}",
        "{\"order_id\":\"a\",\"event\":\"e\",\"user\":\"u\",\"qty\":1,\"created_at\":-5}",
        "{\"order_id\":1,\"event\":\"e\",\"user\":\"u\",\"qty\":1}",
        " {\"order_id\":\"a\" , \"event\":\"e\",\"user\":\"u\",\"qty\":2 } ",
        "{\"order_id\":\"a\",\"event\":\"e\",\"user\":\"u\",\"qty\":1,\"extra\":{\"x\":[1,2]}}",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        check_agreement(cases[i], strlen(cases[i]));
}

static void test_scanner_agrees_on_mutations(void **state)
{
    (void)state;
    static const char alphabet[] = "{}[]\":,0123456789-+.eE \\u\tabcxyz_qtyorder_idhost";
    char buf[sizeof(ORDER) + 8];
    unsigned seed = 12345;
    int accepted = 0;
    for (int i = 0; i < 50000; i++) {
        memcpy(buf, ORDER, sizeof(ORDER));
        size_t len = sizeof(ORDER) - 1;
        int edits = 1 + (int)(rand_r(&seed) % 3);
        for (int e = 0; e < edits; e++) {
            size_t at = (size_t)rand_r(&seed) % len;
            int op = (int)(rand_r(&seed) % 3);
            char c = alphabet[(size_t)rand_r(&seed) % (sizeof(alphabet) - 1)];
            if (op == 0) {
                buf[at] = c; /* replace */
            } else if (op == 1 && len > 1) {
                memmove(buf + at, buf + at + 1, len - at - 1); /* delete */
                len--;
            } else if (len + 1 < sizeof(buf)) {
                memmove(buf + at + 1, buf + at, len - at); /* insert */
                buf[at] = c;
                len++;
            }
        }
        accepted += check_agreement(buf, len);
    }
    /* Some mutations keep a valid order (a digit for a digit): the comparison did run. */
    assert_true(accepted > 100);
}

static void test_insert_is_idempotent_and_dead_letters_kept(void **state)
{
    (void)state;
    char dir[] = "/tmp/snatch-store-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof(path), "%s/orders.db", dir);
    store_t *st = NULL;
    char err[256];
    assert_int_equal(store_open(&st, path, STORE_SYNC_FULL, err, sizeof(err)), 0);
    store_order_t o;
    char scratch[512];
    assert_int_equal(store_scan_order(ORDER, strlen(ORDER), &o, scratch, sizeof(scratch)), 1);
    assert_int_equal(store_begin(st), 0);
    assert_int_equal(store_insert_order(st, &o), 1);
    assert_int_equal(store_insert_order(st, &o), 0);
    assert_int_equal(store_dead_letter(st, "orders.e1", "not json", "xx", 2), 0);
    assert_int_equal(store_commit(st), 0);
    int64_t n = -1, rows = -1, units = -1;
    assert_int_equal(store_count(st, "orders", &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(store_count(st, "dead_letters", &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(store_event_totals(st, "e1", &rows, &units), 0);
    assert_int_equal(rows, 1);
    assert_int_equal(units, 1);
    assert_int_equal(store_has_order(st, "1795596636082-0000000001-e1"), 1);
    assert_int_equal(store_has_order(st, "nope"), 0);
    store_close(st);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* A transition may come before its order, twice, or for an order sold without a hold: the
 * row ends in the state Redis decided, each history row once, a released hold's units out of
 * the event's totals. A second open of an old-schema database adds the columns. */
/* Records of a body: at most 8 kept, each as "<len>:<record>". */
typedef struct records {
    int n;
    char rec[8][256];
    int mismatch;
} records_t;

static void split(const char *body, const char *count, records_t *r)
{
    order_body_t b;
    const char *rec;
    size_t len;
    memset(r, 0, sizeof(*r));
    order_body_init(&b, body, strlen(body), count);
    while (order_body_next(&b, &rec, &len)) {
        assert_true(r->n < 8);
        snprintf(r->rec[r->n++], sizeof(r->rec[0]), "%.*s", (int)len, rec);
    }
    assert_false(order_body_next(&b, &rec, &len)); /* stays at the end */
    r->mismatch = order_body_mismatch(&b);
}

static int good(const char *rec)
{
    char scratch[512];
    store_order_t o;
    return store_scan_order(rec, strlen(rec), &o, scratch, sizeof(scratch));
}

static void test_body_records(void **state)
{
    (void)state;
    records_t r;
    char body[2048];
    const char *o2 = "{\"order_id\":\"1795596636082-0000000002-e1\",\"event\":\"e1\","
                     "\"user\":\"u2\",\"qty\":2}";
    /* One record, no header: today's message, whole (a newline inside stays inside). */
    split(ORDER, NULL, &r);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.rec[0], ORDER);
    assert_false(r.mismatch);
    snprintf(body, sizeof(body), "%s\n", ORDER);
    split(body, NULL, &r);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.rec[0], body);
    assert_true(good(r.rec[0])); /* trailing white space of one JSON object */
    /* n records with the header, with or without a trailing newline. */
    snprintf(body, sizeof(body), "%s\n%s\n%s", ORDER, o2, ORDER);
    split(body, "3", &r);
    assert_int_equal(r.n, 3);
    assert_string_equal(r.rec[0], ORDER);
    assert_string_equal(r.rec[1], o2);
    assert_string_equal(r.rec[2], ORDER);
    assert_false(r.mismatch);
    strcat(body, "\n");
    split(body, "3", &r);
    assert_int_equal(r.n, 3);
    assert_string_equal(r.rec[2], ORDER);
    assert_false(r.mismatch);
    /* Snatch-Orders disagreeing with the body, or not a count: every record still returned. */
    split(body, "4", &r);
    assert_int_equal(r.n, 3);
    assert_true(r.mismatch);
    split(body, "2", &r);
    assert_int_equal(r.n, 3);
    assert_true(r.mismatch);
    split(body, "x3", &r);
    assert_int_equal(r.n, 3);
    assert_true(r.mismatch);
    split(body, "0", &r);
    assert_true(r.mismatch);
    /* A bad record among good ones: returned as it is, for the caller to judge (dead letter);
     * its neighbours are good. An empty line is a record too (a bad one). */
    snprintf(body, sizeof(body), "%s\n{\"order_id\":1}\n\n%s", ORDER, o2);
    split(body, "4", &r);
    assert_int_equal(r.n, 4);
    assert_false(r.mismatch);
    assert_true(good(r.rec[0]));
    assert_false(good(r.rec[1]));
    assert_string_equal(r.rec[2], "");
    assert_true(good(r.rec[3]));
    /* Empty bodies: one empty (bad) record, never none. */
    split("", NULL, &r);
    assert_int_equal(r.n, 1);
    split("", "1", &r);
    assert_int_equal(r.n, 1);
    assert_false(r.mismatch);
    order_body_t b;
    const char *rec;
    size_t len;
    order_body_init(&b, NULL, 0, NULL); /* cnats's empty body */
    assert_true(order_body_next(&b, &rec, &len));
    assert_int_equal(len, 0);
}

static void test_transitions_in_any_order(void **state)
{
    (void)state;
    static const char PAID[] = "{\"order_id\":\"1795596636082-0000000001-e1\",\"event\":\"e1\","
                               "\"user\":\"u1\",\"qty\":1,\"state\":\"paid\",\"at\":5}";
    static const char ORDER2[] =
        "{\"order_id\":\"1795596636082-0000000002-e1\",\"event\":\"e1\","
        "\"user\":\"u2\",\"qty\":2,\"host\":\"h1\",\"created_at\":1795596636082}";
    static const char EXPIRED2[] = "{\"order_id\":\"1795596636082-0000000002-e1\",\"event\":"
                                   "\"e1\",\"user\":\"u2\",\"qty\":2,\"state\":\"expired\","
                                   "\"at\":9}";
    char dir[] = "/tmp/snatch-store-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256], err[256], reason[128], scratch[512];
    snprintf(path, sizeof(path), "%s/orders.db", dir);
    store_t *st = NULL;
    assert_int_equal(store_open(&st, path, STORE_SYNC_FULL, err, sizeof(err)), 0);
    store_order_t o;
    assert_int_equal(store_begin(st), 0);
    /* paid arrives before its held order */
    assert_int_equal(store_insert_transition(st, "paid", PAID, strlen(PAID), reason, 128), 1);
    assert_int_equal(store_scan_order(ORDER, strlen(ORDER), &o, scratch, sizeof(scratch)), 1);
    o.hold_until = 99;
    assert_int_equal(store_insert_order(st, &o), 1);
    assert_int_equal(store_insert_transition(st, "paid", PAID, strlen(PAID), reason, 128), 0);
    /* in order: held, then expired, then the expiry again */
    assert_int_equal(store_scan_order(ORDER2, strlen(ORDER2), &o, scratch, sizeof(scratch)), 1);
    o.hold_until = 99;
    assert_int_equal(store_insert_order(st, &o), 1);
    assert_int_equal(
        store_insert_transition(st, "expired", EXPIRED2, strlen(EXPIRED2), reason, 128), 1);
    assert_int_equal(
        store_insert_transition(st, "expired", EXPIRED2, strlen(EXPIRED2), reason, 128), 0);
    /* a state the header does not match, an unknown state: not transitions */
    assert_int_equal(store_insert_transition(st, "cancelled", PAID, strlen(PAID), reason, 128), 2);
    assert_int_equal(store_insert_transition(st, "refunded", PAID, strlen(PAID), reason, 128), 2);
    assert_int_equal(store_commit(st), 0);
    int64_t rows = -1, units = -1;
    assert_int_equal(store_event_totals(st, "e1", &rows, &units), 0);
    assert_int_equal(rows, 2);
    assert_int_equal(units, 1); /* the expired order's 2 units went back */
    store_close(st);
    /* reopening (the migration sees the columns) keeps everything */
    assert_int_equal(store_open(&st, path, STORE_SYNC_FULL, err, sizeof(err)), 0);
    assert_int_equal(store_event_totals(st, "e1", &rows, &units), 0);
    assert_int_equal(units, 1);
    store_close(st);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scanner_accepts_the_host_format),
        cmocka_unit_test(test_scanner_declines_or_agrees_on_edge_cases),
        cmocka_unit_test(test_scanner_agrees_on_mutations),
        cmocka_unit_test(test_insert_is_idempotent_and_dead_letters_kept),
        cmocka_unit_test(test_transitions_in_any_order),
        cmocka_unit_test(test_body_records),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
