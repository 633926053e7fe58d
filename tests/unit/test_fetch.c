/* host/subscriber/fetch.c against a real nats-server: messages already waiting in the pull
 * subscription (delivered for a pull request still open on the server) while more arrive during
 * the fetch. cnats 3.4.1's natsSubscription_Fetch stores those past the end of its array (heap
 * overflow, and a Count above the batch); fetch_batch must return at most batch messages, each
 * message once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <fcntl.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdbool.h>

#include "fetch.h"
#include "nats_server.h"

static test_nats_t srv;
static natsConnection *nc;
static jsCtx *js;
static natsSubscription *sub;
static char subject[32], next[96]; /* each case on a stream of its own: no request of another */

static void publish(int n)
{
    for (int i = 0; i < n; i++)
        assert_int_equal(js_Publish(NULL, js, subject, "m", 1, NULL, NULL), NATS_OK);
}

/* A pull request of our own on the subscription's inbox, as an earlier fetch leaves open; with
 * no_wait on an empty stream the server answers a 404 status message instead. */
static void pull_request(int batch, bool no_wait)
{
    char req[96];
    int n = no_wait ? snprintf(req, sizeof(req), "{\"batch\":%d,\"no_wait\":true}", batch)
                    : snprintf(req, sizeof(req), "{\"batch\":%d,\"expires\":%lld}", batch,
                               5000000000LL);
    assert_int_equal(
        natsConnection_PublishRequest(nc, next, natsSubscription_GetSubject(sub), req, n), NATS_OK);
    assert_int_equal(natsConnection_Flush(nc), NATS_OK);
}

static void wait_waiting(int n)
{
    int got = 0;
    for (int i = 0; i < 500 && got < n; i++) { /* up to 5 s */
        assert_int_equal(natsSubscription_GetPending(sub, &got, NULL), NATS_OK);
        if (got < n)
            test_sleep_ms(10);
    }
    assert_int_equal(got, n);
}

static void *publish_later(void *arg)
{
    test_sleep_ms(100); /* the fetch below is under way by then */
    publish(*(int *)arg);
    return NULL;
}

static int setup(void **state)
{
    (void)state;
    if (test_nats_start(&srv) != 0 || natsConnection_ConnectTo(&nc, srv.url) != NATS_OK ||
        natsConnection_JetStream(&js, nc, NULL) != NATS_OK)
        return -1;
    return 0;
}

/* Stream FT<n> on subjects ft<n>.>, and a pull subscription on its durable "d". */
static void subscribe(int n)
{
    jsStreamConfig sc;
    jsSubOptions so;
    char name[16], filter[16];
    const char *subjects[] = {filter};
    snprintf(name, sizeof(name), "FT%d", n);
    snprintf(filter, sizeof(filter), "ft%d.>", n);
    snprintf(subject, sizeof(subject), "ft%d.x", n);
    snprintf(next, sizeof(next), "$JS.API.CONSUMER.MSG.NEXT.%s.d", name);
    jsStreamConfig_Init(&sc);
    sc.Name = name;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_MemoryStorage;
    assert_int_equal(js_AddStream(NULL, js, &sc, NULL, NULL), NATS_OK);
    jsSubOptions_Init(&so);
    so.Stream = name;
    so.Config.AckPolicy = js_AckExplicit;
    natsSubscription_Destroy(sub);
    sub = NULL;
    assert_int_equal(js_PullSubscribe(&sub, js, filter, "d", NULL, &so, NULL), NATS_OK);
}

static int teardown(void **state)
{
    (void)state;
    natsSubscription_Destroy(sub);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    test_nats_cleanup(&srv);
    nats_CloseAndWait(2000);
    return 0;
}

/* 3 messages wait in the subscription (3 >= batch / 2), behind them a status message when
 * with_status, and a pull request for 10 more is open on the server while the stream is empty:
 * they come while the next fetch is under way. Every fetch must return at most batch messages,
 * and all 13 must come, once. */
static void fetch_with_messages_waiting(bool with_status)
{
    const int batch = 4, late = 10, total = 3 + late;
    int got = 0, later = late;
    pthread_t tid;
    subscribe(with_status ? 2 : 1);
    publish(3);
    pull_request(3, false);
    wait_waiting(3);
    if (with_status) {
        pull_request(1, true);
        wait_waiting(4);
    }
    pull_request(late, false);
    assert_int_equal(pthread_create(&tid, NULL, publish_later, &later), 0);
    for (int i = 0; i < 50 && got < total; i++) {
        natsMsgList list = {0};
        natsStatus s = fetch_batch(&list, sub, batch, 1000, NULL);
        assert_true(s == NATS_OK || s == NATS_TIMEOUT);
        assert_in_range(list.Count, 0, batch);
        for (int j = 0; j < list.Count; j++)
            natsMsg_Ack(list.Msgs[j], NULL);
        got += list.Count;
        natsMsgList_Destroy(&list);
    }
    pthread_join(tid, NULL);
    assert_int_equal(got, total);
}

static void never_more_than_batch_with_messages_waiting(void **state)
{
    (void)state;
    fetch_with_messages_waiting(false);
}

/* A late status (an expired request's 408) waiting with the messages is counted by
 * natsSubscription_GetPending but is not a message to return. */
static void never_more_than_batch_with_a_status_waiting(void **state)
{
    (void)state;
    fetch_with_messages_waiting(true);
}

static void *publish_one_later(void *arg)
{
    (void)arg;
    test_sleep_ms(200); /* the fetch below waits on an empty stream by then */
    publish(1);
    return NULL;
}

/* What the subscriber's --linger builds on: the fetch does not wait for its batch to fill. On an
 * empty stream it returns with the first message that comes, long before its timeout (nats-server
 * answers natsSubscription_Fetch's no_wait request with an expiry as a one-shot request); with
 * messages in the stream it returns those at once, in one fetch; and it leaves no pull request
 * open on the server: a message published after it waits in the stream for the next fetch, so
 * that messages gather there while the subscriber lingers. */
static void returns_what_came_without_waiting_for_the_batch(void **state)
{
    (void)state;
    natsMsgList list = {0};
    pthread_t tid;
    int waiting = -1;
    subscribe(3);
    assert_int_equal(pthread_create(&tid, NULL, publish_one_later, NULL), 0);
    int64_t t0 = nats_Now();
    assert_int_equal(fetch_batch(&list, sub, 100, 20000, NULL), NATS_OK);
    int64_t took = nats_Now() - t0;
    pthread_join(tid, NULL);
    assert_int_equal(list.Count, 1);
    assert_in_range(took, 0, 10000); /* far below the 20 s asked: it did not wait for 100 */
    natsMsg_Ack(list.Msgs[0], NULL);
    natsMsgList_Destroy(&list);

    publish(30);
    assert_int_equal(fetch_batch(&list, sub, 100, 20000, NULL), NATS_OK);
    assert_int_equal(list.Count, 30);
    for (int j = 0; j < list.Count; j++)
        natsMsg_Ack(list.Msgs[j], NULL);
    natsMsgList_Destroy(&list);

    publish(1);
    test_sleep_ms(300);
    assert_int_equal(natsSubscription_GetPending(sub, &waiting, NULL), NATS_OK);
    assert_int_equal(waiting, 0);
    assert_int_equal(fetch_batch(&list, sub, 100, 20000, NULL), NATS_OK);
    assert_int_equal(list.Count, 1);
    natsMsg_Ack(list.Msgs[0], NULL);
    natsMsgList_Destroy(&list);

    /* Nothing in the stream: a timeout with no message, at the timeout. */
    assert_int_equal(fetch_batch(&list, sub, 100, 300, NULL), NATS_TIMEOUT);
    assert_int_equal(list.Count, 0);
    natsMsgList_Destroy(&list);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(never_more_than_batch_with_messages_waiting),
        cmocka_unit_test(never_more_than_batch_with_a_status_waiting),
        cmocka_unit_test(returns_what_came_without_waiting_for_the_batch),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
