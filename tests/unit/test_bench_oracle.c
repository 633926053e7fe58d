/* Unit tests of the snatch-bench correctness oracle (host/bench/oracle.c): planted double sale,
 * duplicate order id, oversell, a missing row in a SQLite file the test writes, clean data. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "oracle.h"

static const char *body(int i, const char *user)
{
    static char b[256];
    snprintf(b, sizeof(b),
             "{\"order_id\":\"%013d-%010d-e1\",\"event\":\"e1\",\"user\":\"%s\",\"qty\":1}", i, i,
             user);
    return b;
}

/* Ten clean orders, spread over two thread logs and merged. */
static oracle_t *clean_orders(void)
{
    oracle_t *all = oracle_new(), *t2 = oracle_new();
    char user[32];
    for (int i = 0; i < 10; i++) {
        snprintf(user, sizeof(user), "u%d", i);
        const char *b = body(i, user);
        assert_int_equal(oracle_add_body(i % 2 ? t2 : all, b, strlen(b)), 0);
    }
    assert_int_equal(oracle_merge(all, t2), 0);
    oracle_free(t2);
    return all;
}

static void test_clean(void **state)
{
    (void)state;
    oracle_t *o = clean_orders();
    oracle_opts_t opts = {
        .per_user_limit = 1, .have_event = 1, .stock = 10, .sold_before = 0, .sold_after = 10};
    oracle_report_t r;
    assert_int_equal(oracle_check(o, &opts, &r), 0);
    assert_int_equal(r.ok, 10);
    assert_int_equal(r.distinct_ids, 10);
    assert_int_equal(r.duplicate_ids, 0);
    assert_int_equal(r.over_limit_users, 0);
    json_t *j = oracle_report_json(&r);
    assert_true(json_is_true(json_object_get(j, "passed")));
    json_decref(j);
    oracle_free(o);
}

static void test_double_sale(void **state)
{
    (void)state;
    oracle_t *o = clean_orders();
    const char *b = body(100, "u3"); /* u3 buys a second time, new order id */
    assert_int_equal(oracle_add_body(o, b, strlen(b)), 0);
    oracle_opts_t opts = {.per_user_limit = 1};
    oracle_report_t r;
    assert_int_equal(oracle_check(o, &opts, &r), 1);
    assert_int_equal(r.over_limit_users, 1);
    assert_int_equal(r.max_user_units, 2);
    assert_int_equal(r.duplicate_ids, 0);
    /* The same with a limit of 2 is fine. */
    opts.per_user_limit = 2;
    assert_int_equal(oracle_check(o, &opts, &r), 0);
    oracle_free(o);
}

static void test_duplicate_id(void **state)
{
    (void)state;
    oracle_t *o = clean_orders();
    const char *b = body(4, "u77"); /* order id of u4 given again */
    assert_int_equal(oracle_add_body(o, b, strlen(b)), 0);
    oracle_opts_t opts = {0};
    oracle_report_t r;
    assert_int_equal(oracle_check(o, &opts, &r), 1);
    assert_int_equal(r.duplicate_ids, 1);
    assert_int_equal(r.distinct_ids, 10);
    oracle_free(o);
}

static void test_bad_body_and_oversell(void **state)
{
    (void)state;
    oracle_t *o = clean_orders();
    assert_int_equal(oracle_add_body(o, "{\"order_id\":1}", 14), -EINVAL);
    assert_int_equal(oracle_add_body(o, "not json", 8), -EINVAL);
    oracle_opts_t opts = {.have_event = 1, .stock = 9, .sold_after = 10};
    oracle_report_t r;
    assert_int_equal(oracle_check(o, &opts, &r), 2);
    assert_int_equal(r.bad_bodies, 2);
    assert_true(r.oversell);
    /* Sold more than confirmed, beyond the unanswered requests: a sale without a 200. */
    opts = (oracle_opts_t){.have_event = 1, .stock = 100, .sold_after = 15, .unanswered = 2};
    oracle_check(o, &opts, &r);
    assert_int_equal(r.unconfirmed_sales, 3);
    assert_int_equal(r.lost_sales, 0);
    opts.sold_after = 8; /* fewer sold than confirmed */
    oracle_check(o, &opts, &r);
    assert_int_equal(r.lost_sales, 2);
    oracle_free(o);
}

/* Writes the subscriber's table with the orders 0..9 except skip (-1: none), plus extra rows. */
static void make_db(const char *path, int skip, int extra)
{
    sqlite3 *db;
    unlink(path);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db,
                                  "CREATE TABLE orders(order_id TEXT PRIMARY KEY, event TEXT, "
                                  "user TEXT, qty INTEGER, host TEXT, created_at INTEGER, "
                                  "payload TEXT)",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    char sql[512];
    for (int i = 0; i < 10 + extra; i++) {
        if (i == skip)
            continue;
        snprintf(sql, sizeof(sql),
                 "INSERT INTO orders VALUES('%013d-%010d-e1','e1','u%d',1,'h1',0,'{}')", i, i, i);
        assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    }
    /* A row of another event is not ours to count. */
    assert_int_equal(sqlite3_exec(db, "INSERT INTO orders VALUES('x-e2','e2','u1',1,'h1',0,'{}')",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
}

static void test_db(void **state)
{
    (void)state;
    char dir[] = "/tmp/snatch-oracle-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof(path), "%s/orders.db", dir);
    oracle_t *o = clean_orders();
    oracle_report_t r;

    make_db(path, -1, 0);
    oracle_opts_t opts = {.db_path = path, .have_event = 1, .stock = 10, .sold_after = 10};
    assert_int_equal(oracle_check(o, &opts, &r), 0);
    assert_int_equal(r.db_rows, 10);
    assert_int_equal(r.db_missing, 0);
    assert_int_equal(r.db_extra, 0);

    make_db(path, 6, 0);  /* order 6 was confirmed but never persisted */
    opts.wait_db_s = 0.3; /* the wait gives up, the check still runs */
    assert_int_equal(oracle_check(o, &opts, &r), 1);
    assert_int_equal(r.db_missing, 1);
    assert_int_equal(r.db_rows, 9);

    make_db(path, -1, 2); /* two rows nobody was told about, beyond the stock */
    opts.wait_db_s = 0;
    opts.event = "e1";
    assert_int_equal(oracle_check(o, &opts, &r), 2);
    assert_int_equal(r.db_extra, 2);
    assert_true(r.db_oversell);

    opts.db_path = "/nonexistent/orders.db";
    assert_int_equal(oracle_check(o, &opts, &r), 1);
    assert_true(r.db_error);

    oracle_free(o);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clean),        cmocka_unit_test(test_double_sale),
        cmocka_unit_test(test_duplicate_id), cmocka_unit_test(test_bad_body_and_oversell),
        cmocka_unit_test(test_db),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
