/* orders-fill: test and benchmark helper that fills stream ORDERS (creating it like the host
 * does when missing) with orders shaped like the host's, published asynchronously with a deep
 * window. Ids are deterministic ("<ms>-<seq>-<event>" with a fixed ms), so running it twice
 * republishes the same orders: JetStream's dedup and the subscriber's upsert must absorb that.
 *
 *   orders-fill --nats URL[,URL...] [--count N] [--first SEQ] [--event E] [--raw DATA]
 *               [--no-msg-id] [--orders-replicas N]
 *
 * --no-msg-id publishes without Nats-Msg-Id, so JetStream stores repeats (the subscriber's
 * upsert must absorb them). --raw publishes DATA once on orders.<event> (no Nats-Msg-Id): a
 * malformed message. */
#include <getopt.h>
#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "orders_stream.h"

#define FILL_MS 1795596636082LL

static volatile int pub_errors; /* written by one cnats thread, read after completion */

/* An AckHandler rather than an ErrHandler: the message is freed here, before cnats counts the
 * publish as complete, so nothing is left in flight when js_PublishAsyncComplete returns. */
static void on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js;
    (void)closure;
    if (pa == NULL && pub_errors++ == 0)
        fprintf(stderr, "orders-fill: publish failed: %s\n",
                pae && pae->ErrText ? pae->ErrText : "?");
    natsMsg_Destroy(msg);
}

static int ensure_stream(jsCtx *js)
{
    return orders_stream_ensure(js, NULL, NULL) == NATS_OK ? 0 : -1;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"nats", required_argument, NULL, 'n'},
        {"count", required_argument, NULL, 'c'},
        {"first", required_argument, NULL, 'f'},
        {"event", required_argument, NULL, 'e'},
        {"raw", required_argument, NULL, 'r'},
        {"no-msg-id", no_argument, NULL, 'x'},
        {ORDERS_REPLICAS_FLAG, required_argument, NULL, 'R'},
        {NULL, 0, NULL, 0},
    };
    const char *url = NULL, *event = "e1", *raw = NULL;
    long long count = 0, first = 1;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    jsOptions jo;
    jsPubOptions po;
    char subject[128], id[128], payload[512], err[128];
    int ch, rc = 1;
    bool msg_id = true;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'n':
            url = optarg;
            break;
        case 'c':
            count = atoll(optarg);
            break;
        case 'f':
            first = atoll(optarg);
            break;
        case 'e':
            event = optarg;
            break;
        case 'r':
            raw = optarg;
            break;
        case 'x':
            msg_id = false;
            break;
        case 'R':
            if (orders_stream_set_replicas(optarg, err, sizeof(err)) != 0) {
                fprintf(stderr, "orders-fill: %s\n", err);
                return 2;
            }
            break;
        default:
            return 2;
        }
    }
    if (url == NULL)
        return 2;
    snprintf(subject, sizeof(subject), "orders.%s", event);
    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = 4096;
    jo.PublishAsync.StallWait = 5000;
    jo.PublishAsync.AckHandler = on_pub_ack;
    if (natsConnection_ConnectTo(&nc, url) != NATS_OK ||
        natsConnection_JetStream(&js, nc, &jo) != NATS_OK || ensure_stream(js) != 0) {
        fprintf(stderr, "orders-fill: cannot reach JetStream at %s: %s\n", url,
                nats_GetLastError(NULL));
        goto out;
    }
    if (raw != NULL && js_Publish(NULL, js, subject, raw, (int)strlen(raw), NULL, NULL) != NATS_OK)
        goto out;
    for (long long i = first; i < first + count; i++) {
        natsMsg *m = NULL;
        int len;
        snprintf(id, sizeof(id), "%013lld-%010lld-%s", FILL_MS, i, event);
        len = snprintf(payload, sizeof(payload),
                       "{\"order_id\":\"%s\",\"event\":\"%s\",\"user\":\"u%lld\",\"qty\":1,"
                       "\"host\":\"fill\",\"created_at\":%lld}",
                       id, event, i, FILL_MS);
        jsPubOptions_Init(&po);
        po.MsgId = msg_id ? id : NULL;
        if (natsMsg_Create(&m, subject, NULL, payload, len) != NATS_OK ||
            js_PublishMsgAsync(js, &m, &po) != NATS_OK) {
            natsMsg_Destroy(m);
            fprintf(stderr, "orders-fill: publish: %s\n", nats_GetLastError(NULL));
            goto out;
        }
    }
    jsPubOptions_Init(&po);
    po.MaxWait = 60000;
    if (js_PublishAsyncComplete(js, &po) != NATS_OK || pub_errors > 0) {
        fprintf(stderr, "orders-fill: acks missing\n");
        goto out;
    }
    rc = 0;
    /* cnats frees the last ack message on its delivery thread after it lets
     * js_PublishAsyncComplete return; that detached thread is not joined by nats_CloseAndWait,
     * so give it a moment or LeakSanitizer reports the message. */
    nanosleep(&(struct timespec){0, 100 * 1000000L}, NULL);
out:
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    nats_CloseAndWait(2000);
    return rc;
}
