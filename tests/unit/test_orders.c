/* host/server/orders.c against a real nats-server: a lane on a libuv loop (this thread) publishes
 * and gets acknowledgements back on the loop; the orders of one loop turn leave as one batch
 * message; duplicates are stored once; a dead server yields -1 (refused or timed out), never a
 * hang; closing a lane fails what is pending. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <fcntl.h>
#include <nats/nats.h>
#include <stdatomic.h>
#include <uv.h>

#include "metrics_sample.h"
#include "nats_server.h"
#include "order_msg.h"
#include "orders.h"

/* The in-flight gauge as metrics.c holds it: back to 0 once every publish ended. */
static int64_t inflight_gauge(void)
{
    return (int64_t)metrics_sample("snatch_orders_inflight");
}

static test_nats_t srv;

typedef struct driver {
    orders_lane_t *lane;
    int total, sent, acked, failed, refused;
    unsigned window;
} driver_t;

static void drive(driver_t *d);

static void on_ack(int status, void *data)
{
    driver_t *d = data;
    if (status == 0)
        d->acked++;
    else
        d->failed++;
    drive(d);
}

static void drive(driver_t *d)
{
    char id[64], payload[160];
    while (d->sent < d->total && orders_lane_inflight(d->lane) < d->window) {
        int n = snprintf(id, sizeof(id), "1795596636082-%010d-e1", d->sent + 1);
        int len = snprintf(payload, sizeof(payload),
                           "{\"order_id\":\"%s\",\"event\":\"e1\",\"user\":\"u%d\",\"qty\":1}", id,
                           d->sent);
        (void)n;
        if (orders_publish(d->lane, "e1", id, 0, payload, (size_t)len, on_ack, d) != 0) {
            d->refused++;
            return;
        }
        d->sent++;
    }
}

static uint64_t stream_msgs(const char *url)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsStreamInfo *si = NULL;
    uint64_t n = UINT64_MAX;
    if (natsConnection_ConnectTo(&nc, url) != NATS_OK)
        return n;
    if (natsConnection_JetStream(&js, nc, NULL) == NATS_OK &&
        js_GetStreamInfo(&si, js, ORDERS_STREAM, NULL, NULL) == NATS_OK)
        n = si->State.Msgs;
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return n;
}

/* What the stream holds on subject (a few messages: tests only): messages, records in them,
 * and the headers of the last message. */
typedef struct seen {
    int msgs, records;
    char msg_id[128], count[16], hold[32];
    int last_records;
} seen_t;

static void stream_read(const char *url, const char *subject, seen_t *out)
{
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsSubscription *sub = NULL;
    jsSubOptions so;
    memset(out, 0, sizeof(*out));
    assert_int_equal(natsConnection_ConnectTo(&nc, url), NATS_OK);
    assert_int_equal(natsConnection_JetStream(&js, nc, NULL), NATS_OK);
    jsSubOptions_Init(&so);
    so.Stream = ORDERS_STREAM;
    so.Ordered = true;
    so.Config.DeliverPolicy = js_DeliverAll;
    assert_int_equal(js_SubscribeSync(&sub, js, subject, NULL, &so, NULL), NATS_OK);
    for (;;) {
        natsMsg *m = NULL;
        if (natsSubscription_NextMsg(&m, sub, 500) != NATS_OK)
            break;
        const char *v = NULL, *rec;
        size_t rlen;
        order_body_t b;
        out->msgs++;
        natsMsgHeader_Get(m, "Nats-Msg-Id", &v);
        snprintf(out->msg_id, sizeof(out->msg_id), "%s", v != NULL ? v : "");
        v = NULL;
        natsMsgHeader_Get(m, ORDERS_HDR_COUNT, &v);
        snprintf(out->count, sizeof(out->count), "%s", v != NULL ? v : "");
        const char *count = v;
        v = NULL;
        natsMsgHeader_Get(m, ORDERS_HDR_HOLD_UNTIL, &v);
        snprintf(out->hold, sizeof(out->hold), "%s", v != NULL ? v : "");
        order_body_init(&b, natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), count);
        out->last_records = 0;
        while (order_body_next(&b, &rec, &rlen))
            out->last_records++;
        assert_false(order_body_mismatch(&b));
        out->records += out->last_records;
        natsMsg_Destroy(m);
    }
    natsSubscription_Destroy(sub);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
}

static void wait_ready(orders_publisher_t *p, bool want)
{
    for (int i = 0; i < 400 && orders_publisher_ready(p) != want; i++)
        test_sleep_ms(25);
    assert_int_equal(orders_publisher_ready(p), want);
}

/* Runs the loop until cond holds or ms passed. */
static void run_until(uv_loop_t *loop, driver_t *d, int expect_done, int ms)
{
    for (int i = 0; i < ms / 5 && d->acked + d->failed < expect_done; i++) {
        uv_run(loop, UV_RUN_NOWAIT);
        test_sleep_ms(d->acked + d->failed < expect_done ? 1 : 0);
        if (d->refused > 0 && d->sent < d->total)
            d->refused = 0, drive(d);
    }
}

static void close_lane(uv_loop_t *loop, orders_lane_t *lane)
{
    orders_lane_close(lane);
    uv_run(loop, UV_RUN_DEFAULT); /* the lane's handles close, nothing else is on the loop */
}

static void test_publish_10000(void **state)
{
    (void)state;
    uv_loop_t loop;
    orders_publisher_t *p = NULL;
    char err[256];
    driver_t d = {.total = 10000, .window = 512};
    uint64_t before;
    uv_loop_init(&loop);
    assert_int_equal(orders_publisher_start(&p, srv.url, err, sizeof(err)), 0);
    wait_ready(p, true);
    before = stream_msgs(srv.url);
    assert_int_equal(orders_lane_start(&d.lane, p, &loop, 1024, 5000), 0);
    drive(&d);
    run_until(&loop, &d, d.total, 30000);
    assert_int_equal(d.acked, 10000);
    assert_int_equal(d.failed, 0);
    assert_int_equal(orders_lane_inflight(d.lane), 0);
    assert_int_equal(inflight_gauge(), 0);
    /* A loop turn's publishes share messages: far fewer messages than orders, every order in
     * one of them. */
    uint64_t msgs = stream_msgs(srv.url) - before;
    assert_true(msgs >= 10000 / 256 && msgs < 10000);
    seen_t seen;
    stream_read(srv.url, "orders.e1", &seen);
    assert_int_equal(seen.records, 10000);
    assert_int_equal(seen.msgs, (int)msgs);

    close_lane(&loop, d.lane);
    orders_publisher_stop(p, 1000);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_same_id_twice(void **state)
{
    (void)state;
    uv_loop_t loop;
    orders_publisher_t *p = NULL;
    char err[256];
    driver_t d = {.window = 16};
    const char *id = "1795596636082-0000099999-dup";
    const char *payload = "{\"order_id\":\"1795596636082-0000099999-dup\"}";
    uint64_t before;
    uv_loop_init(&loop);
    assert_int_equal(orders_publisher_start(&p, srv.url, err, sizeof(err)), 0);
    wait_ready(p, true);
    before = stream_msgs(srv.url);
    assert_int_equal(orders_lane_start(&d.lane, p, &loop, 16, 5000), 0);
    /* Both in flight at once on one lane, as single messages (a replay's): each must get its own
     * ack. */
    assert_int_equal(
        orders_publish_hdr(d.lane, "dup", id, payload, strlen(payload), NULL, 0, on_ack, &d), 0);
    assert_int_equal(
        orders_publish_hdr(d.lane, "dup", id, payload, strlen(payload), NULL, 0, on_ack, &d), 0);
    run_until(&loop, &d, 2, 10000);
    assert_int_equal(d.acked, 2);
    assert_int_equal(stream_msgs(srv.url) - before, 1);
    close_lane(&loop, d.lane);
    orders_publisher_stop(p, 1000);
    uv_loop_close(&loop);
}

/* Counts the callbacks of each order: every order of a batch gets exactly one. */
typedef struct counted {
    int calls[8];
    int status[8];
} counted_t;

static counted_t counted;

static void on_counted(int status, void *data)
{
    int k = (int)(intptr_t)data;
    counted.calls[k]++;
    counted.status[k] = status;
}

static int counted_done(void)
{
    int n = 0;
    for (int k = 0; k < 8; k++)
        n += counted.calls[k];
    return n;
}

/* One loop turn: five orders of b1 paid at once, two of b1 held until the same time, one of b2:
 * three messages; the batch of five carries Nats-Msg-Id "<first>+5" and Snatch-Orders: 5; a lone
 * order is today's single message; the ack of a message answers each of its orders once. */
static void test_batch_coalesces(void **state)
{
    (void)state;
    uv_loop_t loop;
    orders_publisher_t *p = NULL;
    orders_lane_t *lane = NULL;
    char err[256], id[8][64], body[8][200];
    const char *ev[8] = {"b1", "b1", "b1", "b1", "b1", "b1", "b1", "b2"};
    int64_t hold[8] = {0, 0, 0, 0, 0, 1795596999000, 1795596999000, 0};
    memset(&counted, 0, sizeof(counted));
    uv_loop_init(&loop);
    assert_int_equal(orders_publisher_start(&p, srv.url, err, sizeof(err)), 0);
    wait_ready(p, true);
    assert_int_equal(orders_lane_start(&lane, p, &loop, 64, 5000), 0);
    for (int k = 0; k < 8; k++) {
        snprintf(id[k], sizeof(id[k]), "1795596636082-%010d-%s", k + 1, ev[k]);
        int len = snprintf(body[k], sizeof(body[k]),
                           "{\"order_id\":\"%s\",\"event\":\"%s\",\"user\":\"u%d\",\"qty\":1}",
                           id[k], ev[k], k);
        assert_int_equal(orders_publish(lane, ev[k], id[k], hold[k], body[k], (size_t)len,
                                        on_counted, (void *)(intptr_t)k),
                         0);
    }
    assert_int_equal(orders_lane_inflight(lane), 8);
    for (int i = 0; i < 2000 && counted_done() < 8; i++) {
        uv_run(&loop, UV_RUN_NOWAIT);
        test_sleep_ms(1);
    }
    for (int k = 0; k < 8; k++) {
        assert_int_equal(counted.calls[k], 1);
        assert_int_equal(counted.status[k], 0);
    }
    assert_int_equal(orders_lane_inflight(lane), 0);
    assert_int_equal(inflight_gauge(), 0);
    seen_t seen;
    stream_read(srv.url, "orders.b2", &seen);
    assert_int_equal(seen.msgs, 1);
    assert_string_equal(seen.msg_id, id[7]);
    assert_string_equal(seen.count, "");
    stream_read(srv.url, "orders.b1", &seen);
    assert_int_equal(seen.msgs, 2);
    assert_int_equal(seen.records, 7);
    /* Message order within a turn is the batches' order: the five, then the held two. */
    assert_int_equal(seen.last_records, 2);
    assert_string_equal(seen.hold, "1795596999000");
    assert_string_equal(seen.count, "2");
    char want[80];
    snprintf(want, sizeof(want), "%s+2", id[5]);
    assert_string_equal(seen.msg_id, want);
    close_lane(&loop, lane);
    orders_publisher_stop(p, 1000);
    uv_loop_close(&loop);
}

static void test_close_fails_pending(void **state)
{
    (void)state;
    uv_loop_t loop;
    orders_publisher_t *p = NULL;
    char err[256];
    driver_t d = {.total = 200, .window = 200};
    uv_loop_init(&loop);
    assert_int_equal(orders_publisher_start(&p, srv.url, err, sizeof(err)), 0);
    wait_ready(p, true);
    assert_int_equal(orders_lane_start(&d.lane, p, &loop, 100, 5000), 0);
    drive(&d); /* 100 accepted, the 101st refused: the lane is full */
    assert_int_equal(d.sent, 100);
    assert_int_equal(d.refused, 1);
    /* Acks cannot have been processed: they run on the loop, which has not run. */
    orders_lane_close(d.lane);
    assert_int_equal(d.failed, 100);
    assert_int_equal(d.acked, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(inflight_gauge(), 0);
    test_sleep_ms(200); /* late acks reach a detached slot and are dropped */
    orders_publisher_stop(p, 1000);
    uv_loop_close(&loop);
}

static void test_server_down(void **state)
{
    (void)state;
    uv_loop_t loop;
    orders_publisher_t *p = NULL;
    char err[256];
    driver_t d = {.total = 1000000, .window = 64};
    uv_loop_init(&loop);
    assert_int_equal(orders_publisher_start(&p, srv.url, err, sizeof(err)), 0);
    wait_ready(p, true);
    assert_int_equal(orders_lane_start(&d.lane, p, &loop, 64, 300), 0);
    drive(&d);
    test_nats_stop(&srv);
    /* Every publish handed over ends with a callback (ack or -1) within the timeout, also the
     * ones made again after "no responders" or no answer. */
    d.total = d.sent; /* stop feeding */
    run_until(&loop, &d, d.sent, 5000);
    assert_int_equal(d.acked + d.failed, d.sent);
    wait_ready(p, false);
    /* Not ready, but a sale already deducted is still taken (the lane holds it while cnats
     * reconnects): it fails within the ack timeout, the server being down. */
    int done = d.acked + d.failed;
    assert_int_equal(orders_publish(d.lane, "e1", "x-0-e1", 0, "{}", 2, on_ack, &d), 0);
    d.sent++;
    run_until(&loop, &d, done + 1, 5000);
    assert_int_equal(d.failed + d.acked, done + 1);
    assert_int_equal(orders_lane_inflight(d.lane), 0);
    /* A batch nobody answers: every one of its orders fails, once. */
    int failed = d.failed;
    for (int k = 0; k < 3; k++)
        assert_int_equal(
            orders_publish(d.lane, "e1", k ? "x-2-e1" : "x-1-e1", 0, "{}", 2, on_ack, &d), 0);
    d.sent += 3;
    run_until(&loop, &d, done + 4, 5000);
    assert_int_equal(d.failed, failed + 3);
    assert_int_equal(d.failed + d.acked, done + 4);
    assert_int_equal(orders_lane_inflight(d.lane), 0);

    /* Back up on the same storage: ready again, publishing works (a fresh lane with a generous
     * timeout: a JetStream that just restarted on a loaded machine can be slow at first). */
    close_lane(&loop, d.lane);
    assert_int_equal(test_nats_start(&srv), 0);
    wait_ready(p, true);
    assert_int_equal(orders_lane_start(&d.lane, p, &loop, 64, 10000), 0);
    d.acked = d.failed = 0;
    d.total = d.sent + 50;
    drive(&d);
    run_until(&loop, &d, 50, 20000);
    assert_int_equal(d.acked, 50);
    close_lane(&loop, d.lane);
    orders_publisher_stop(p, 1000);
    uv_loop_close(&loop);
}

/* A publish made while the connection is down is held by the lane (cnats's reconnect thread
 * holds the connection's lock through its attempts: the loop does not call in) and made once
 * reconnected: acknowledged, with the server back within the ack timeout. */
static void test_held_while_down(void **state)
{
    (void)state;
    uv_loop_t loop;
    orders_publisher_t *p = NULL;
    char err[256];
    driver_t d = {0};
    seen_t seen;
    uv_loop_init(&loop);
    assert_int_equal(orders_publisher_start(&p, srv.url, err, sizeof(err)), 0);
    wait_ready(p, true);
    assert_int_equal(orders_lane_start(&d.lane, p, &loop, 8, 20000), 0);
    test_nats_stop(&srv);
    wait_ready(p, false);
    const char *rec = "{\"order_id\":\"1795596636082-0000000001-held\"}";
    assert_int_equal(orders_publish(d.lane, "held", "1795596636082-0000000001-held", 0, rec,
                                    strlen(rec), on_ack, &d),
                     0);
    d.sent = 1;
    run_until(&loop, &d, 1, 500);
    assert_int_equal(d.acked + d.failed, 0); /* held, no answer yet */
    assert_int_equal(orders_lane_inflight(d.lane), 1);
    assert_int_equal(test_nats_start(&srv), 0);
    run_until(&loop, &d, 1, 20000);
    assert_int_equal(d.acked, 1);
    assert_int_equal(d.failed, 0);
    stream_read(srv.url, ORDERS_SUBJECT_PREFIX "held", &seen);
    assert_int_equal(seen.msgs, 1);
    assert_string_equal(seen.msg_id, "1795596636082-0000000001-held");
    close_lane(&loop, d.lane);
    orders_publisher_stop(p, 1000);
    uv_loop_close(&loop);
    assert_int_equal(inflight_gauge(), 0);
}

static void test_no_server(void **state)
{
    (void)state;
    uv_loop_t loop;
    orders_publisher_t *p = NULL;
    orders_lane_t *lane = NULL;
    char err[256];
    char url[64];
    driver_t d = {0};
    snprintf(url, sizeof(url), "nats://127.0.0.1:%d", test_free_port());
    uv_loop_init(&loop);
    assert_int_equal(orders_publisher_start(&p, url, err, sizeof(err)), 0);
    assert_int_equal(orders_lane_start(&lane, p, &loop, 8, 100), 0);
    test_sleep_ms(300);
    assert_false(orders_publisher_ready(p));
    /* Taken into the loop turn's batch, which cnats refuses (or never gets answered): the
     * order fails once, as a sale's 202. */
    int rc = orders_publish(lane, "e1", "x-1-e1", 0, "{}", 2, on_ack, &d);
    d.sent = rc == 0;
    run_until(&loop, &d, d.sent, 2000);
    close_lane(&loop, lane);
    orders_publisher_stop(p, 100);
    uv_loop_close(&loop);
    assert_int_equal(d.acked, 0);
    assert_int_equal(d.failed, d.sent);
    assert_int_equal(inflight_gauge(), 0);
}

static int setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    return test_nats_start(&srv);
}

static int teardown(void **state)
{
    (void)state;
    test_nats_cleanup(&srv);
    nats_Close();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_server),       cmocka_unit_test(test_publish_10000),
        cmocka_unit_test(test_same_id_twice),   cmocka_unit_test(test_close_fails_pending),
        cmocka_unit_test(test_batch_coalesces), cmocka_unit_test(test_server_down),
        cmocka_unit_test(test_held_while_down),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
