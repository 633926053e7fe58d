/* host/server/sale.c: one snatch request's state machine, driven with fake Redis and JetStream
 * backends (sale_set_backend) and answers captured from reply.c (reply_set_sink). Each deduct
 * verdict must give its status and body, and give the local unit back exactly when Redis did
 * not sell. The policy is the real lua/policy.lua. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "host_fixture.h"
#include "redis.h"
#include "sale.h"

#define QUOTA 10

static stock_event_t *ev;

/* The fake backends: what the sale asked for, and the callbacks to complete it with. */
static struct {
    bool ready;
    int deducts;
    char argv[10][128];
    redis_reply_fn deduct_fn;
    void *deduct_data;
    int publish_rc;
    int publishes;
    char payload[1024];
    orders_ack_fn ack_fn;
    void *ack_data;
    int acked;
    char acked_id[128];
} fake;

static bool fake_ready(worker_t *wk)
{
    (void)wk;
    return fake.ready;
}

static void fake_deduct(worker_t *wk, redis_reply_fn fn, void *data, int argc, const char **argv,
                        const size_t *lens)
{
    (void)wk;
    assert_int_equal(argc, 10);
    for (int i = 0; i < argc; i++)
        snprintf(fake.argv[i], sizeof(fake.argv[i]), "%.*s", (int)lens[i], argv[i]);
    fake.deducts++;
    fake.deduct_fn = fn;
    fake.deduct_data = data;
}

static int fake_publish(worker_t *wk, const char *event, const char *order_id, const char *payload,
                        size_t len, orders_ack_fn cb, void *data)
{
    (void)wk;
    (void)event;
    (void)order_id;
    fake.publishes++;
    snprintf(fake.payload, sizeof(fake.payload), "%.*s", (int)len, payload);
    fake.ack_fn = cb;
    fake.ack_data = data;
    return fake.publish_rc;
}

static void fake_acked(worker_t *wk, const char *order_id)
{
    (void)wk;
    fake.acked++;
    snprintf(fake.acked_id, sizeof(fake.acked_id), "%s", order_id);
}

static const sale_backend_t fakes = {
    .ready = fake_ready, .deduct = fake_deduct, .publish = fake_publish, .acked = fake_acked};

/* A redisReply array of strings, as deduct.lua's replies arrive. */
typedef struct {
    redisReply top;
    redisReply el[5];
    redisReply *ptrs[5];
} reply_t;

static redisReply *strings(reply_t *r, int n, ...)
{
    va_list ap;
    memset(r, 0, sizeof(*r));
    r->top.type = REDIS_REPLY_ARRAY;
    r->top.elements = (size_t)n;
    r->top.element = r->ptrs;
    va_start(ap, n);
    for (int i = 0; i < n; i++) {
        char *s = va_arg(ap, char *);
        r->el[i].type = REDIS_REPLY_STRING;
        r->el[i].str = s;
        r->el[i].len = strlen(s);
        r->ptrs[i] = &r->el[i];
    }
    va_end(ap);
    return &r->top;
}

static int64_t local_left(void)
{
    return atomic_load(&ev->local_left);
}

static void fresh_event(uint64_t gen)
{
    ev = stock_install("ev", 2, 100, 1, QUOTA, gen, false);
    assert_non_null(ev);
    assert_int_equal(local_left(), QUOTA);
}

static int setup(void **state)
{
    (void)state;
    static uint64_t gen = 1;
    memset(&fake, 0, sizeof(fake));
    fake.ready = true;
    fixture_forget_answers();
    fresh_event(++gen);
    return 0;
}

/* Sends POST /v1/events/<event>/snatch?<query> (the request lives until the test's end). */
static http_request_t *snatch(const char *event, const char *query)
{
    static http_request_t reqs[64];
    static size_t next;
    http_request_t *req = &reqs[next++ % 64];
    memset(req, 0, sizeof(*req));
    req->method = HTTP_M_POST;
    req->path = "/";
    req->path_len = 1;
    req->query = query;
    req->query_len = strlen(query);
    req->body = "";
    req->peer = "127.0.0.1";
    req->server_data = &w;
    sale_snatch(&w, req, event, strlen(event));
    return req;
}

static void answer_deduct(redisReply *r, const char *err)
{
    assert_int_equal(fake.deducts, 1);
    assert_int_equal(answers, 0); /* nothing answered while Redis is asked */
    fake.deduct_fn(r, err, fake.deduct_data);
}

static void test_sold_and_acknowledged(void **state)
{
    (void)state;
    reply_t r;
    snatch("ev", "user=u1");
    /* deduct.lua gets the keyspace's keys in order, then event, user, qty, host, deadline. */
    assert_string_equal(fake.argv[0], "{ev}:meta");
    assert_string_equal(fake.argv[4], "{ev}:pending");
    assert_string_equal(fake.argv[5], "ev");
    assert_string_equal(fake.argv[6], "u1");
    assert_string_equal(fake.argv[7], "1");
    assert_string_equal(fake.argv[8], "h1");
    assert_int_equal(local_left(), QUOTA - 1); /* reserved before Redis is asked */
    answer_deduct(strings(&r, 5, "ok", "1700000000000-0000000001-ev", "99", "2", "1700000000000"),
                  NULL);
    assert_int_equal(fake.publishes, 1);
    assert_non_null(strstr(fake.payload, "\"order_id\":\"1700000000000-0000000001-ev\""));
    assert_int_equal(answers, 0); /* 200 only once JetStream has it */
    fake.ack_fn(0, fake.ack_data);
    assert_int_equal(answered_status, 200);
    assert_string_equal(answered_body, "{\"order_id\":\"1700000000000-0000000001-ev\","
                                       "\"event\":\"ev\",\"user\":\"u1\",\"qty\":1}");
    assert_int_equal(fake.acked, 1);
    assert_string_equal(fake.acked_id, "1700000000000-0000000001-ev");
    assert_int_equal(local_left(), QUOTA - 1);
    assert_int_equal(w.inflight, 0);
}

static void test_sold_not_acknowledged_is_202(void **state)
{
    (void)state;
    reply_t r;
    snatch("ev", "user=u2");
    answer_deduct(strings(&r, 5, "ok", "1700000000000-0000000002-ev", "98", "2", "1700000000000"),
                  NULL);
    fake.ack_fn(-1, fake.ack_data);
    assert_int_equal(answered_status, 202);
    assert_non_null(strstr(answered_body, "\"status\":\"pending\""));
    assert_int_equal(fake.acked, 0); /* stays in {ev}:pending for reconciliation */
    assert_int_equal(local_left(), QUOTA - 1);
    assert_int_equal(w.inflight, 0);
}

static void test_publish_refused_is_202(void **state)
{
    (void)state;
    reply_t r;
    fake.publish_rc = -1;
    snatch("ev", "user=u3");
    answer_deduct(strings(&r, 5, "ok", "1700000000000-0000000003-ev", "97", "2", "1700000000000"),
                  NULL);
    assert_int_equal(answered_status, 202);
    assert_int_equal(local_left(), QUOTA - 1);
    assert_int_equal(w.inflight, 0);
}

/* Every way Redis does not sell: the status and body, and the local unit given back. */
static void test_refusals_give_the_unit_back(void **state)
{
    (void)state;
    static const struct {
        const char *verdict;
        int status;
        const char *body;
    } cases[] = {
        {"insufficient", 409, "{\"error\":\"insufficient_stock\"}"},
        {"limit_reached", 409, "{\"error\":\"limit_reached\"}"},
        {"expired", 503, "{\"error\":\"unavailable\"}"},
        {"unknown_event", 404, "{\"error\":\"unknown_event\"}"},
        {"something_new", 503, "{\"error\":\"unavailable\"}"},
        {"sold_out", 409, "{\"error\":\"sold_out\"}"}, /* last: it marks the event sold out */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char user[32];
        reply_t r;
        snprintf(user, sizeof(user), "user=r%zu", i);
        fake.deducts = 0;
        fixture_forget_answers();
        snatch("ev", user);
        answer_deduct(strings(&r, 3, cases[i].verdict, "0", "2"), NULL);
        assert_int_equal(answered_status, cases[i].status);
        assert_string_equal(answered_body, cases[i].body);
        assert_int_equal(local_left(), QUOTA);
        assert_int_equal(fake.publishes, 0);
        assert_int_equal(w.inflight, 0);
    }
    assert_int_equal(stock_check(ev, 1), STOCK_SOLD_OUT);
}

static void test_redis_failures(void **state)
{
    (void)state;
    redisReply error = {.type = REDIS_REPLY_ERROR, .str = "ERR boom", .len = 8};
    /* Lost mid-request: the purchase may exist, and the answer says so. */
    snatch("ev", "user=f1");
    answer_deduct(NULL, redis_err_lost);
    assert_int_equal(answered_status, 503);
    assert_non_null(strstr(answered_body, "may have gone through"));
    assert_int_equal(local_left(), QUOTA);
    /* Any other failure: nothing was deducted. */
    const char *errs[] = {redis_err_timeout, redis_err_not_connected};
    for (size_t i = 0; i < 2; i++) {
        fake.deducts = 0;
        fixture_forget_answers();
        snatch("ev", i == 0 ? "user=f2" : "user=f3");
        answer_deduct(NULL, errs[i]);
        assert_int_equal(answered_status, 503);
        assert_string_equal(answered_body, "{\"error\":\"unavailable\"}");
        assert_int_equal(local_left(), QUOTA);
    }
    fake.deducts = 0;
    fixture_forget_answers();
    snatch("ev", "user=f4");
    answer_deduct(&error, NULL);
    assert_int_equal(answered_status, 503);
    assert_int_equal(local_left(), QUOTA);
    assert_int_equal(w.inflight, 0);
}

/* Answered before Redis: nothing deducted, nothing reserved. */
static void test_answered_locally(void **state)
{
    (void)state;
    fake.ready = false;
    snatch("ev", "user=l1");
    assert_int_equal(answered_status, 503);
    assert_string_equal(answered_body, "{\"error\":\"unavailable\"}");
    fake.ready = true;

    snatch("bad name", "user=l2");
    assert_int_equal(answered_status, 400);
    snatch("ev", "");
    assert_int_equal(answered_status, 400);
    assert_non_null(strstr(answered_body, "missing buyer"));
    snatch("ev", "user=l3&qty=0");
    assert_int_equal(answered_status, 400);
    snatch("ev", "user=l4&qty=5"); /* over the policy's max_qty */
    assert_int_equal(answered_status, 400);

    stock_mark_sold_out(ev);
    snatch("ev", "user=l5");
    assert_int_equal(answered_status, 409);
    assert_string_equal(answered_body, "{\"error\":\"sold_out\"}");
    assert_int_equal(fake.deducts, 0);
    assert_int_equal(local_left(), QUOTA);
    assert_int_equal(w.inflight, 0);
}

/* Fewer units left locally than asked: insufficient, not sold out, from the same check. */
static void test_local_insufficient(void **state)
{
    (void)state;
    assert_int_equal(stock_reserve(ev, QUOTA - 1), 0);
    snatch("ev", "user=i1&qty=2");
    assert_int_equal(answered_status, 409);
    assert_string_equal(answered_body, "{\"error\":\"insufficient_stock\"}");
    assert_int_equal(fake.deducts, 0);
    assert_int_equal(local_left(), 1);
}

static int group_setup(void **state)
{
    (void)state;
    fixture_open();
    host.cfg.allow_query_user = true;
    sale_set_backend(&fakes);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    sale_set_backend(NULL);
    fixture_close();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_sold_and_acknowledged, setup),
        cmocka_unit_test_setup(test_sold_not_acknowledged_is_202, setup),
        cmocka_unit_test_setup(test_publish_refused_is_202, setup),
        cmocka_unit_test_setup(test_refusals_give_the_unit_back, setup),
        cmocka_unit_test_setup(test_redis_failures, setup),
        cmocka_unit_test_setup(test_answered_locally, setup),
        cmocka_unit_test_setup(test_local_insufficient, setup),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
