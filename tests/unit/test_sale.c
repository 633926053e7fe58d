/* host/server/sale.c: one snatch request's state machine, driven with fake Redis and JetStream
 * backends (sale_set_backend) and answers captured from reply.c (reply_set_sink). Each deduct
 * verdict must give its status and body, and give the local unit back exactly when Redis did
 * not sell. The policy is the real lua/policy.lua. */
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "host_fixture.h"
#include "keyspace.h"
#include "pending.h"
#include "redis.h"
#include "sale.h"

/* The event's fields as the other modules see them. */
static stock_view_t view_of(const stock_event_t *ev)
{
    stock_view_t v;
    stock_view(ev, &v);
    return v;
}

#define QUOTA 10

static stock_event_t *ev;

/* The fake backends: what the sale asked for, and the callbacks to complete it with. */
static struct {
    bool ready;
    int deducts;
    char event[128], user[128];
    int64_t qty;
    deduct_fn deduct_fn;
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

static void fake_deduct(worker_t *wk, const char *event, const char *user, int64_t qty,
                        const char *key, deduct_fn fn, void *data)
{
    (void)wk;
    (void)key;
    snprintf(fake.event, sizeof(fake.event), "%s", event);
    snprintf(fake.user, sizeof(fake.user), "%s", user);
    fake.qty = qty;
    fake.deducts++;
    fake.deduct_fn = fn;
    fake.deduct_data = data;
}

static int fake_publish(worker_t *wk, const char *event, const char *order_id, const char *payload,
                        size_t len, int64_t hold_until, bool replay, orders_ack_fn cb, void *data)
{
    (void)wk;
    (void)hold_until;
    (void)replay;
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

/* A sale's outcome as the batcher hands it over (deduct_batch.h). */
static deduct_result_t sold(const char *order_id)
{
    return (deduct_result_t){.verdict = DEDUCT_OK,
                             .order_id = order_id,
                             .remaining = 90,
                             .gen = 2,
                             .created_ms = 1700000000000};
}

static deduct_result_t failed(deduct_verdict_t v, const char *err, const char *detail)
{
    return (deduct_result_t){.verdict = v, .remaining = 0, .gen = 2, .err = err, .detail = detail};
}

static int64_t local_left(void)
{
    return view_of(ev).left;
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

/* What the batcher does after its callbacks: drops its reference to the batch's entry. */
static void batcher_release(pending_batch_t *pb)
{
    char key[KEYSPACE_ORDER_ID_MAX + 1];
    if (pending_batch_release(pb, false, key))
        fake_acked(&w, key);
}

/* A batch of one: a sold order comes with its batch's {E}:pending entry, as from the batcher. */
static void answer_deduct(deduct_result_t r)
{
    assert_int_equal(fake.deducts, 1);
    assert_int_equal(answers, 0); /* nothing answered while Redis is asked */
    if (r.verdict == DEDUCT_OK && !r.replay && r.batch == NULL)
        r.batch = pending_batch_new(r.order_id, 1);
    fake.deduct_fn(&r, fake.deduct_data);
    batcher_release(r.batch);
}

/* Two buyers sold in one deduction batch (one {E}:pending entry): the entry may go only once
 * both orders were acknowledged, whatever order the acks come in; one 202 keeps it. */
static void batch_of_two(bool second_acked)
{
    static const char *ids[2] = {"1700000000000-0000000007-ev", "1700000000000-0000000008-ev"};
    deduct_fn fn[2];
    void *data[2];
    orders_ack_fn ack[2];
    void *ack_data[2];
    snatch("ev", "user=b1");
    fn[0] = fake.deduct_fn;
    data[0] = fake.deduct_data;
    snatch("ev", "user=b2");
    fn[1] = fake.deduct_fn;
    data[1] = fake.deduct_data;
    pending_batch_t *pb = pending_batch_new(ids[0], 2);
    for (int i = 0; i < 2; i++) {
        deduct_result_t r = sold(ids[i]);
        r.batch = pb;
        fn[i](&r, data[i]);
        ack[i] = fake.ack_fn;
        ack_data[i] = fake.ack_data;
    }
    batcher_release(pb);
    assert_int_equal(fake.publishes, 2);
    ack[1](second_acked ? 0 : -1, ack_data[1]);
    assert_int_equal(fake.acked, 0);
    assert_int_equal(answered_status, second_acked ? 200 : 202);
    ack[0](0, ack_data[0]);
    assert_int_equal(answered_status, 200);
    assert_int_equal(fake.acked, second_acked ? 1 : 0);
    if (second_acked)
        assert_string_equal(fake.acked_id, ids[0]);
    assert_int_equal(w.inflight, 0);
}

static void test_batch_entry_goes_with_every_ack(void **state)
{
    (void)state;
    batch_of_two(true);
}

static void test_batch_entry_stays_without_every_ack(void **state)
{
    (void)state;
    batch_of_two(false);
}

static void test_sold_and_acknowledged(void **state)
{
    (void)state;
    snatch("ev", "user=u1");
    assert_string_equal(fake.event, "ev");
    assert_string_equal(fake.user, "u1");
    assert_int_equal(fake.qty, 1);
    assert_int_equal(local_left(), QUOTA - 1); /* reserved before Redis is asked */
    answer_deduct(sold("1700000000000-0000000001-ev"));
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
    snatch("ev", "user=u2");
    answer_deduct(sold("1700000000000-0000000002-ev"));
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
    fake.publish_rc = -1;
    snatch("ev", "user=u3");
    answer_deduct(sold("1700000000000-0000000003-ev"));
    assert_int_equal(answered_status, 202);
    assert_int_equal(local_left(), QUOTA - 1);
    assert_int_equal(w.inflight, 0);
}

/* Sold, but fewer replicas than --redis-replicas hold it: 202 pending, nothing published (the
 * reconciler does it if Redis keeps the order), the unit stays sold. */
static void test_unreplicated_is_202_unpublished(void **state)
{
    (void)state;
    snatch("ev", "user=u4");
    deduct_result_t r = sold("1700000000000-0000000004-ev");
    r.unreplicated = true;
    answer_deduct(r);
    assert_int_equal(answered_status, 202);
    assert_non_null(strstr(answered_body, "\"status\":\"pending\""));
    assert_non_null(strstr(answered_body, "1700000000000-0000000004-ev"));
    assert_int_equal(fake.publishes, 0);
    assert_int_equal(fake.acked, 0);
    assert_int_equal(local_left(), QUOTA - 1);
    assert_int_equal(w.inflight, 0);
}

/* Every way Redis does not sell: the status and body, and the local unit given back. */
static void test_refusals_give_the_unit_back(void **state)
{
    (void)state;
    static const struct {
        deduct_verdict_t verdict;
        const char *err;
        int status;
        const char *body;
    } cases[] = {
        {DEDUCT_INSUFFICIENT, NULL, 409, "{\"error\":\"insufficient_stock\"}"},
        {DEDUCT_LIMIT_REACHED, NULL, 409, "{\"error\":\"limit_reached\"}"},
        {DEDUCT_EXPIRED, NULL, 503, "{\"error\":\"unavailable\"}"},
        {DEDUCT_UNKNOWN_EVENT, NULL, 404, "{\"error\":\"unknown_event\"}"},
        {DEDUCT_ERROR, deduct_err_bad_reply, 503, "{\"error\":\"unavailable\"}"},
        {DEDUCT_SOLD_OUT, NULL, 409, "{\"error\":\"sold_out\"}"}, /* last: marks it sold out */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char user[32];
        snprintf(user, sizeof(user), "user=r%zu", i);
        fake.deducts = 0;
        fixture_forget_answers();
        snatch("ev", user);
        answer_deduct(failed(cases[i].verdict, cases[i].err, NULL));
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
    /* Lost mid-request: the purchase may exist, and the answer says so. */
    snatch("ev", "user=f1");
    answer_deduct(failed(DEDUCT_UNKNOWN_OUTCOME, redis_err_lost, NULL));
    assert_int_equal(answered_status, 503);
    assert_non_null(strstr(answered_body, "may have gone through"));
    assert_int_equal(local_left(), QUOTA);
    /* Any other failure: nothing was deducted. */
    const char *errs[] = {redis_err_timeout, redis_err_not_connected, deduct_err_nomem};
    for (size_t i = 0; i < 3; i++) {
        fake.deducts = 0;
        fixture_forget_answers();
        char user[32];
        snprintf(user, sizeof(user), "user=f2%zu", i);
        snatch("ev", user);
        answer_deduct(failed(DEDUCT_ERROR, errs[i], NULL));
        assert_int_equal(answered_status, 503);
        assert_string_equal(answered_body, "{\"error\":\"unavailable\"}");
        assert_int_equal(local_left(), QUOTA);
    }
    fake.deducts = 0;
    fixture_forget_answers();
    snatch("ev", "user=f4");
    answer_deduct(failed(DEDUCT_ERROR, deduct_err_script, "ERR boom"));
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

/* deduct.lua said the sale is paused: 409 paused, the unit given back, and from then on every
 * request is refused locally, without Redis, until a refresh says otherwise (stock_follow). */
static void test_paused(void **state)
{
    (void)state;
    static const char paused[] =
        "{\"error\":\"paused\",\"detail\":\"the sale of this event is paused; retry later\"}";
    snatch("ev", "user=p1");
    answer_deduct(failed(DEDUCT_PAUSED, NULL, NULL));
    assert_int_equal(answered_status, 409);
    assert_string_equal(answered_body, paused);
    assert_int_equal(local_left(), QUOTA);
    assert_true(view_of(ev).paused);
    fake.deducts = 0;
    snatch("ev", "user=p2");
    assert_int_equal(answered_status, 409);
    assert_string_equal(answered_body, paused);
    assert_int_equal(fake.deducts, 0);
    stock_follow(ev, false, false); /* a refresh after the resume */
    fixture_forget_answers();
    snatch("ev", "user=p3");
    answer_deduct(failed(DEDUCT_LIMIT_REACHED, NULL, NULL));
    assert_int_equal(answered_status, 409);
    assert_string_equal(answered_body, "{\"error\":\"limit_reached\"}");
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
        cmocka_unit_test_setup(test_batch_entry_goes_with_every_ack, setup),
        cmocka_unit_test_setup(test_batch_entry_stays_without_every_ack, setup),
        cmocka_unit_test_setup(test_publish_refused_is_202, setup),
        cmocka_unit_test_setup(test_unreplicated_is_202_unpublished, setup),
        cmocka_unit_test_setup(test_refusals_give_the_unit_back, setup),
        cmocka_unit_test_setup(test_redis_failures, setup),
        cmocka_unit_test_setup(test_answered_locally, setup),
        cmocka_unit_test_setup(test_local_insufficient, setup),
        cmocka_unit_test_setup(test_paused, setup),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
