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

#include "fetch.h"
#include "nats_server.h"

#define STREAM "FETCHT"
#define DURABLE "d"
#define NEXT "$JS.API.CONSUMER.MSG.NEXT." STREAM "." DURABLE

static test_nats_t srv;
static natsConnection *nc;
static jsCtx *js;
static natsSubscription *sub;

static void publish(int n)
{
    for (int i = 0; i < n; i++)
        assert_int_equal(js_Publish(NULL, js, "ft.x", "m", 1, NULL, NULL), NATS_OK);
}

/* A pull request of our own on the subscription's inbox, as an earlier fetch leaves open. */
static void pull_request(int batch)
{
    char req[96];
    int n = snprintf(req, sizeof(req), "{\"batch\":%d,\"expires\":%lld}", batch, 5000000000LL);
    assert_int_equal(
        natsConnection_PublishRequest(nc, NEXT, natsSubscription_GetSubject(sub), req, n), NATS_OK);
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
    jsStreamConfig sc;
    jsSubOptions so;
    const char *subjects[] = {"ft.>"};
    (void)state;
    if (test_nats_start(&srv) != 0 || natsConnection_ConnectTo(&nc, srv.url) != NATS_OK ||
        natsConnection_JetStream(&js, nc, NULL) != NATS_OK)
        return -1;
    jsStreamConfig_Init(&sc);
    sc.Name = STREAM;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_MemoryStorage;
    if (js_AddStream(NULL, js, &sc, NULL, NULL) != NATS_OK)
        return -1;
    jsSubOptions_Init(&so);
    so.Stream = STREAM;
    so.Config.AckPolicy = js_AckExplicit;
    return js_PullSubscribe(&sub, js, "ft.>", DURABLE, NULL, &so, NULL) == NATS_OK ? 0 : -1;
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

static void never_more_than_batch_with_messages_waiting(void **state)
{
    const int batch = 4, late = 10, total = 3 + late;
    int got = 0, later = late;
    pthread_t tid;
    (void)state;
    /* 3 messages wait in the subscription (3 >= batch / 2), and a pull request for 10 more is
     * open on the server while the stream is empty. */
    publish(3);
    pull_request(3);
    wait_waiting(3);
    pull_request(late);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(never_more_than_batch_with_messages_waiting),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
