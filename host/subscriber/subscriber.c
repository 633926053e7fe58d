/* snatch-subscriber: persists the ORDERS stream into SQLite.
 *
 * One thread (plus cnats's own): fetch a batch from a durable pull consumer, write it in ONE
 * transaction, commit, then acknowledge every message. A crash before the commit loses nothing
 * (the messages are redelivered); a crash between commit and acks redelivers messages that the
 * insert then ignores (ON CONFLICT DO NOTHING), so each order lands exactly once.
 *
 * Acknowledgement policy: explicit, one ack per message. AckAll would be one ack per batch, but
 * it acknowledges every earlier delivered message too: after a crash, the consumer hands out new
 * messages before redelivering the unacknowledged ones (those wait for AckWait), and acking the
 * new batch would silently acknowledge the old, never committed one. Explicit acks are cheap
 * (fire-and-forget publishes) and keep any interleaving safe, also with several subscribers on
 * one durable.
 *
 * A message that is not an order goes to dead_letters (same transaction) and is acknowledged:
 * it never blocks the stream.
 *
 * Two threads of ours: a fetcher that only pulls batches from JetStream, and the main thread
 * that writes, commits and acknowledges them, so that the server delivers the next batch while
 * SQLite works and waits for fsync (done one after the other, each side idled half the time).
 * Between them a queue of at most QUEUE_DEPTH batches; a batch leaves it only once acknowledged,
 * so the queue being empty means that nothing fetched is waiting for an ack. On stop the fetcher
 * ends after its current fetch and the main thread still writes what was fetched: every
 * delivered message is committed and acknowledged before exit (none waits for AckWait).
 *
 * With --metrics-listen, a third thread answers GET /metrics (metrics_http.c): counters below are
 * relaxed atomics written by the main thread, and the stream lag is asked from the server by that
 * thread, never by the writer. */
#include <errno.h>
#include <getopt.h>
#include <nats/nats.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "cli.h"
#include "fetch.h"
#include "log.h"
#include "metrics_http.h"
#include "nats_servers.h"
#include "orders_stream.h"
#include "promtext.h"
#include "store.h"
#include "util.h"

#define FETCH_TIMEOUT_MS 200
#define PROGRESS_EVERY_MS 5000
#define ACK_WAIT_NS (30LL * 1000 * 1000 * 1000)
#define RESUBSCRIBE_AFTER_ERRORS 10
/* Measured with scripts/bench_subscriber.sh: 2000 and 4000 beat 1000 (half the fsyncs and pull
 * requests); a batch is still only a few ms of SQLite work. */
#define DEFAULT_BATCH 2000
/* Measured with scripts/benchmark_sell.sh: see the --linger text in usage(). */
#define DEFAULT_LINGER_MS 20
#define QUEUE_DEPTH 2      /* batches fetched and not yet acknowledged: one written, one ahead */
#define SCRATCH_BYTES 1024 /* room for one order's strings; bigger orders take the slow path */

typedef struct config {
    const char *url;
    const char *db;
    const char *durable;
    const char *stream;
    int batch;
    int linger_ms;
    store_sync_t sync;
    auth_config_t auth;
    const char *metrics_listen;
    log_format_t log_format;
} config_t;

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL); /* a signal cuts it short, which is what we want */
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: snatch-subscriber --nats URL[,URL...] --db PATH [options]\n"
            "Persists JetStream stream ORDERS into SQLite, exactly once per order id.\n"
            "  --nats URL[,URL...]  NATS server (e.g. nats://127.0.0.1:4222), or the\n"
            "                    nodes of a cluster, comma separated\n"
            "  --db PATH         SQLite database (created with its schema when missing)\n"
            "  --batch N         messages per fetch and per transaction (default %d)\n"
            "  --linger MS       after a fetch that did not fill the batch, let messages\n"
            "                    gather this long before the next (default %d; 0: fetch\n"
            "                    again at once); a persisted order is that much later\n"
            "  --durable NAME    durable consumer name (default snatch-subscriber)\n"
            "  --stream NAME     stream to consume (default ORDERS)\n"
            "  --metrics-listen ADDR:PORT  serve Prometheus metrics at GET /metrics\n"
            "  --log-format text|json  log lines on stderr (default text)\n"
            "  --sync full|normal  SQLite synchronous mode (default full: a commit, and\n"
            "                    so the ack that follows it, survives a power loss;\n"
            "                    normal is faster but a power loss may drop acked orders,\n"
            "                    which only reconciliation from Redis can then restore)\n"
            "  --version         print the version and exit\n"
            "  -h, --help        this text\n" AUTH_NATS_USAGE
            "SIGTERM/SIGINT: finishes the batches already fetched (commit + acks) and exits 0.\n",
            DEFAULT_BATCH, DEFAULT_LINGER_MS);
}

static int parse_args(int argc, char **argv, config_t *c)
{
    static const struct option opts[] = {
        {"nats", required_argument, NULL, 'n'},
        {"db", required_argument, NULL, 'd'},
        {"batch", required_argument, NULL, 'b'},
        {"linger", required_argument, NULL, 'g'},
        {"durable", required_argument, NULL, 'u'},
        {"stream", required_argument, NULL, 's'},
        {"sync", required_argument, NULL, 'y'},
        {"metrics-listen", required_argument, NULL, 'm'},
        {"log-format", required_argument, NULL, 'l'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        AUTH_NATS_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    int ch;
    int64_t v;
    char err[256];
    *c = (config_t){.durable = "snatch-subscriber",
                    .stream = ORDERS_STREAM,
                    .batch = DEFAULT_BATCH,
                    .linger_ms = DEFAULT_LINGER_MS,
                    .sync = STORE_SYNC_FULL};
    cli_init();
    while ((ch = getopt_long(argc, argv, CLI_OPTSTRING "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'n':
            if (nats_servers_check(optarg, err, sizeof(err)) != 0) {
                cli_usage_error("snatch-subscriber", "%s", err);
                return -1;
            }
            c->url = optarg;
            break;
        case 'd':
            c->db = optarg;
            break;
        case 'u':
            c->durable = optarg;
            break;
        case 's':
            c->stream = optarg;
            break;
        case 'm':
            c->metrics_listen = optarg;
            break;
        case 'l':
            if (log_parse_format(optarg, &c->log_format) != 0) {
                fprintf(stderr, "subscriber: --log-format must be text or json\n");
                return -1;
            }
            break;
        case 'b':
            if (cli_int_opt("snatch-subscriber", "--batch", optarg, 1, 100000, &v) != 0)
                return -1;
            c->batch = (int)v;
            break;
        case 'g':
            if (cli_int_opt("snatch-subscriber", "--linger", optarg, 0, 1000, &v) != 0)
                return -1;
            c->linger_ms = (int)v;
            break;
        case 'y':
            if (strcmp(optarg, "full") == 0)
                c->sync = STORE_SYNC_FULL;
            else if (strcmp(optarg, "normal") == 0)
                c->sync = STORE_SYNC_NORMAL;
            else {
                fprintf(stderr, "subscriber: --sync must be full or normal\n");
                return -1;
            }
            break;
        case 'V':
            cli_print_version("snatch-subscriber");
            exit(0);
        case 'h':
            usage(stdout);
            exit(0);
        default:
            switch (auth_parse_opt(&c->auth, ch, optarg, "snatch-subscriber")) {
            case 0:
                break;
            case 1:
                cli_bad_option("snatch-subscriber", ch, argv);
                return -1;
            default:
                return -1;
            }
            break;
        }
    }
    if (auth_check(&c->auth, "subscriber") != 0)
        return -1;
    if (c->url == NULL || c->db == NULL) {
        cli_usage_error("snatch-subscriber", "missing %s", c->url == NULL ? "--nats" : "--db");
        return -1;
    }
    if (optind != argc) {
        cli_usage_error("snatch-subscriber", "unexpected argument %s", argv[optind]);
        return -1;
    }
    return 0;
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    (void)nc;
    (void)closure;
    if (!stop_requested)
        log_warn("subscriber: disconnected from NATS");
}

/* cnats's thread: says which node of a cluster the subscriber went on with. */
static void on_reconnected(natsConnection *nc, void *closure)
{
    char url[256];
    (void)closure;
    log_info("subscriber: reconnected to %s", nats_servers_connected(nc, url, sizeof(url)));
}

/* Blocks (retrying) until connected; NULL only when a stop was requested. */
static natsConnection *connect_nats(const char *url, const auth_config_t *auth)
{
    natsOptions *o = NULL;
    natsConnection *nc = NULL;
    bool logged = false;
    /* Before cnats's first use: its locks would otherwise spin before sleeping, burning the time
     * the holder (the writer, cnats's own threads, on a few shared cores) needs to finish. */
    nats_Open(0);
    if (natsOptions_Create(&o) != NATS_OK || nats_servers_apply(o, url) != NATS_OK ||
        natsOptions_SetMaxReconnect(o, -1) != NATS_OK ||
        natsOptions_SetReconnectWait(o, 250) != NATS_OK ||
        natsOptions_SetDisconnectedCB(o, on_disconnected, NULL) != NATS_OK ||
        natsOptions_SetReconnectedCB(o, on_reconnected, NULL) != NATS_OK ||
        auth_nats_apply(o, auth) != NATS_OK) {
        log_error("subscriber: bad NATS url or options %s: %s", url, nats_GetLastError(NULL));
        natsOptions_Destroy(o);
        return NULL;
    }
    while (!stop_requested) {
        natsStatus s = natsConnection_Connect(&nc, o);
        if (s == NATS_OK)
            break;
        if (!logged)
            log_warn("subscriber: waiting for NATS at %s (%s: %s)", url, natsStatus_GetText(s),
                     nats_GetLastError(NULL));
        logged = true;
        sleep_ms(500);
    }
    natsOptions_Destroy(o);
    if (nc != NULL) {
        char at[256];
        log_info("subscriber: connected to %s", nats_servers_connected(nc, at, sizeof(at)));
    }
    return nc;
}

/* Blocks (retrying) until the stream exists and the durable consumer is bound. */
static natsSubscription *subscribe(jsCtx *js, const config_t *c)
{
    jsSubOptions so;
    natsSubscription *sub = NULL;
    bool logged = false;
    jsSubOptions_Init(&so);
    so.Stream = c->stream;
    so.Config.Durable = c->durable;
    so.Config.AckPolicy = js_AckExplicit;
    so.Config.AckWait = ACK_WAIT_NS;
    so.Config.DeliverPolicy = js_DeliverAll;
    /* Room for a full batch plus the previous one's acks still in flight. */
    so.Config.MaxAckPending = c->batch * 4 > 20000 ? c->batch * 4 : 20000;
    while (!stop_requested) {
        jsErrCode jerr = 0;
        natsStatus s = js_PullSubscribe(&sub, js, ORDERS_SUBJECTS, c->durable, NULL, &so, &jerr);
        if (s == NATS_OK)
            return sub;
        if (!logged)
            log_warn("subscriber: waiting for stream %s: %s (%d)", c->stream, natsStatus_GetText(s),
                     (int)jerr);
        logged = true;
        sleep_ms(500);
    }
    return NULL;
}

typedef struct stats {
    int64_t persisted;  /* rows inserted */
    int64_t duplicates; /* already stored: redelivery or republish */
    int64_t dead;       /* dead letters */
} stats_t;

/* ---- metrics (--metrics-listen) ---- */

static const uint64_t commit_bounds_ns[] = {100000,    250000,    500000,     1000000,   2500000,
                                            5000000,   10000000,  25000000,   50000000,  100000000,
                                            250000000, 500000000, 1000000000, 2500000000};
#define N_COMMIT (sizeof(commit_bounds_ns) / sizeof(commit_bounds_ns[0]))
static const uint64_t batch_bounds[] = {1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000};
#define N_BATCH (sizeof(batch_bounds) / sizeof(batch_bounds[0]))

/* Written by the writer thread (and lag by the metrics thread), read by the renderer. */
static struct {
    _Atomic uint64_t persisted, duplicates, dead, sqlite_errors;
    _Atomic uint64_t commit[N_COMMIT + 1], commit_sum_ns;
    _Atomic uint64_t batch[N_BATCH + 1], batch_sum;
    _Atomic int64_t lag, ack_pending; /* -1: not known yet */
    _Atomic uint64_t lag_errors;
} m = {.lag = -1, .ack_pending = -1};

typedef struct metrics_ctx {
    _Atomic(jsCtx *) js; /* NULL until connected */
    const config_t *c;
} metrics_ctx_t;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void count_batch(const stats_t *d, int msgs, int64_t commit_ns)
{
    atomic_fetch_add_explicit(&m.persisted, (uint64_t)d->persisted, memory_order_relaxed);
    atomic_fetch_add_explicit(&m.duplicates, (uint64_t)d->duplicates, memory_order_relaxed);
    atomic_fetch_add_explicit(&m.dead, (uint64_t)d->dead, memory_order_relaxed);
    atomic_fetch_add_explicit(&m.batch[prom_bucket(batch_bounds, N_BATCH, (uint64_t)msgs)], 1,
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&m.batch_sum, (uint64_t)msgs, memory_order_relaxed);
    atomic_fetch_add_explicit(
        &m.commit[prom_bucket(commit_bounds_ns, N_COMMIT, (uint64_t)commit_ns)], 1,
        memory_order_relaxed);
    atomic_fetch_add_explicit(&m.commit_sum_ns, (uint64_t)commit_ns, memory_order_relaxed);
}

/* Metrics thread: the consumer's lag, asked from the server (a request with a short timeout). */
static void metrics_tick(void *arg)
{
    metrics_ctx_t *x = arg;
    jsCtx *js = atomic_load(&x->js);
    jsOptions o;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    if (js == NULL)
        return;
    jsOptions_Init(&o);
    o.Wait = 1000;
    if (js_GetConsumerInfo(&ci, js, x->c->stream, x->c->durable, &o, &jerr) != NATS_OK) {
        atomic_fetch_add(&m.lag_errors, 1);
        return;
    }
    atomic_store(&m.lag, (int64_t)ci->NumPending);
    atomic_store(&m.ack_pending, ci->NumAckPending);
    jsConsumerInfo_Destroy(ci);
}

static void render_counter(prom_buf_t *o, const char *name, const char *help, uint64_t v)
{
    prom_family(o, name, "counter", help);
    prom_printf(o, "%s %llu\n", name, (unsigned long long)v);
}

static char *metrics_render(size_t *len, void *arg)
{
    (void)arg;
    prom_buf_t o;
    uint64_t counts[N_COMMIT + 1];
    prom_init(&o);
    prom_family(&o, "snatch_build_info", "gauge", "Always 1; the version as a label.");
    prom_printf(&o, "snatch_build_info{program=\"snatch-subscriber\",version=\"%s\"} 1\n",
                SNATCH_VERSION);
    render_counter(&o, "snatch_subscriber_rows_persisted_total", "Orders inserted into SQLite.",
                   atomic_load(&m.persisted));
    render_counter(&o, "snatch_subscriber_duplicates_total",
                   "Orders already in SQLite (redelivered or republished), ignored.",
                   atomic_load(&m.duplicates));
    render_counter(&o, "snatch_subscriber_dead_letters_total",
                   "Messages that are not orders, kept in table dead_letters.",
                   atomic_load(&m.dead));
    render_counter(&o, "snatch_subscriber_sqlite_errors_total",
                   "Batches whose SQLite transaction failed (retried).",
                   atomic_load(&m.sqlite_errors));
    prom_family(&o, "snatch_subscriber_batch_size_messages", "histogram",
                "Messages per fetched batch (one transaction each).");
    for (size_t i = 0; i <= N_BATCH; i++)
        counts[i] = atomic_load(&m.batch[i]);
    prom_histogram(&o, "snatch_subscriber_batch_size_messages", "", batch_bounds, N_BATCH, counts,
                   atomic_load(&m.batch_sum));
    prom_family(&o, "snatch_subscriber_commit_duration_seconds", "histogram",
                "Writing and committing one batch in SQLite.");
    for (size_t i = 0; i <= N_COMMIT; i++)
        counts[i] = atomic_load(&m.commit[i]);
    prom_histogram_ns(&o, "snatch_subscriber_commit_duration_seconds", "", commit_bounds_ns,
                      N_COMMIT, counts, atomic_load(&m.commit_sum_ns));
    int64_t lag = atomic_load(&m.lag), ackp = atomic_load(&m.ack_pending);
    /* Unknown until the first answer: no sample rather than a false 0. */
    prom_family(&o, "snatch_subscriber_lag_messages", "gauge",
                "Messages of the stream not yet delivered to the consumer (num_pending).");
    if (lag >= 0)
        prom_printf(&o, "snatch_subscriber_lag_messages %lld\n", (long long)lag);
    prom_family(&o, "snatch_subscriber_ack_pending_messages", "gauge",
                "Messages delivered and not yet acknowledged (num_ack_pending).");
    if (ackp >= 0)
        prom_printf(&o, "snatch_subscriber_ack_pending_messages %lld\n", (long long)ackp);
    render_counter(&o, "snatch_subscriber_lag_errors_total",
                   "Failed requests for the consumer's lag.", atomic_load(&m.lag_errors));
    return prom_finish(&o, len);
}

/* Fetched batches on their way from the fetcher thread to the main thread. */
typedef struct queue {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* signalled on every change below */
    natsMsgList lists[QUEUE_DEPTH];
    int head;     /* lists[head] is the oldest batch, being written */
    int count;    /* batches fetched and not yet acknowledged */
    bool done;    /* the fetcher has ended: nothing more comes */
    bool aborted; /* the writer gave up: the fetcher must not wait for room */
} queue_t;

typedef struct fetcher {
    queue_t q;
    natsSubscription *sub; /* replaced only when q is empty: no message of the old one is held */
    jsCtx *js;
    const config_t *c;
} fetcher_t;

/* The header's value as a positive integer (Snatch-Hold-Until), 0 when absent or not one. */
static int64_t header_ms(natsMsg *m, const char *name)
{
    const char *v = NULL;
    int64_t ms = 0;
    if (natsMsgHeader_Get(m, name, &v) != NATS_OK || v == NULL ||
        util_parse_i64(v, strlen(v), 1, INT64_MAX, &ms) != 0)
        return 0;
    return ms;
}

static int dead_letter(store_t *st, natsMsg *m, const char *reason, const char *data, size_t len)
{
    if (store_dead_letter(st, natsMsg_GetSubject(m), reason, data, len) != 0)
        return -1;
    log_warn("subscriber: dead letter on %s: %s", natsMsg_GetSubject(m), reason);
    return 2;
}

/* Persists one record of an order message: 1 inserted, 0 duplicate, 2 dead letter (the record
 * alone), -1 SQLite error. */
static int write_record(store_t *st, natsMsg *m, const char *data, size_t len, int64_t hold_until)
{
    char scratch[SCRATCH_BYTES], reason[256];
    store_order_t o;
    json_t *doc = NULL;
    if (store_scan_order(data, len, &o, scratch, sizeof(scratch)) == 1) {
        o.hold_until = hold_until;
        return store_insert_order(st, &o);
    }
    if (store_parse_order(data, len, &o, &doc, reason, sizeof(reason)) != 0)
        return dead_letter(st, m, reason, data, len);
    o.hold_until = hold_until;
    int rc = store_insert_order(st, &o);
    json_decref(doc);
    return rc;
}

static int tally(stats_t *d, int rc)
{
    if (rc == 0)
        d->duplicates++;
    else if (rc == 1)
        d->persisted++;
    else if (rc == 2)
        d->dead++;
    return rc < 0 ? -1 : 0;
}

/* Persists one message inside the open transaction, record by record (a batch holds several:
 * order_msg.h), counting each record's outcome in d; -1 SQLite error. A bad record is
 * dead-lettered alone and its good neighbours stored; a batch whose Snatch-Orders differs from
 * the records its body holds keeps its good records too, and the whole message goes to
 * dead_letters besides, so the mismatch is seen. A message with header Snatch-Transition is an
 * order's transition. */
static int write_msg(store_t *st, natsMsg *m, stats_t *d)
{
    const char *data = natsMsg_GetData(m);
    size_t len = (size_t)natsMsg_GetDataLength(m);
    char reason[256];
    const char *transition = NULL, *count = NULL, *rec;
    size_t rlen;
    order_body_t b;
    if (natsMsgHeader_Get(m, ORDERS_HDR_TRANSITION, &transition) == NATS_OK && transition != NULL) {
        int rc = store_insert_transition(st, transition, data, len, reason, sizeof(reason));
        return tally(d, rc != 2 ? rc : dead_letter(st, m, reason, data, len));
    }
    if (natsMsgHeader_Get(m, ORDERS_HDR_COUNT, &count) != NATS_OK)
        count = NULL;
    int64_t hold_until = header_ms(m, ORDERS_HDR_HOLD_UNTIL);
    order_body_init(&b, data, len, count);
    while (order_body_next(&b, &rec, &rlen))
        if (tally(d, write_record(st, m, rec, rlen, hold_until)) != 0)
            return -1;
    if (!order_body_mismatch(&b))
        return 0;
    snprintf(reason, sizeof(reason), "%s: %s, the body holds %lld records (good ones stored)",
             ORDERS_HDR_COUNT, count != NULL ? count : "absent", (long long)b.seen);
    return tally(d, dead_letter(st, m, reason, data, len));
}

static int write_batch(store_t *st, natsMsgList *list, stats_t *t)
{
    stats_t d = {0};
    int64_t t0 = now_ns();
    if (store_begin(st) != 0)
        goto fail;
    for (int i = 0; i < list->Count; i++)
        if (write_msg(st, list->Msgs[i], &d) != 0)
            goto fail;
    if (store_commit(st) != 0)
        goto fail;
    t->persisted += d.persisted;
    t->duplicates += d.duplicates;
    t->dead += d.dead;
    count_batch(&d, list->Count, now_ns() - t0);
    return 0;
fail:
    atomic_fetch_add(&m.sqlite_errors, 1);
    log_error("subscriber: SQLite: %s", store_errmsg(st));
    store_rollback(st);
    return -1;
}

/* Commits the batch (retrying while SQLite fails, e.g. disk full) then acknowledges it.
 * Returns -1 when a stop interrupted the retries: nothing acked, the stream redelivers. */
static int persist_batch(store_t *st, natsMsgList *list, stats_t *t)
{
    int delay = 100;
    while (write_batch(st, list, t) != 0) {
        if (stop_requested)
            return -1;
        sleep_ms(delay);
        delay = delay < 5000 ? delay * 2 : 5000;
    }
    /* Each ack is an asynchronous publish into the connection's buffer (flushed by cnats's
     * flusher thread), not a round trip. Lost acks only mean harmless redelivery. */
    for (int i = 0; i < list->Count; i++)
        natsMsg_Ack(list->Msgs[i], NULL);
    return 0;
}

static void progress(const stats_t *t, int64_t *last_n, int64_t *last_ms, bool force)
{
    int64_t now = now_ms();
    int64_t n = t->persisted + t->duplicates + t->dead;
    if (!force && now - *last_ms < PROGRESS_EVERY_MS)
        return;
    if (n != *last_n) {
        double secs = (double)(now - *last_ms) / 1000.0;
        log_info("subscriber: persisted %lld (+%.0f/s), duplicates %lld, dead letters %lld",
                 (long long)t->persisted, secs > 0 ? (double)(n - *last_n) / secs : 0.0,
                 (long long)t->duplicates, (long long)t->dead);
    }
    *last_n = n;
    *last_ms = now;
}

static int queue_init(queue_t *q)
{
    pthread_condattr_t ca;
    int rc;
    memset(q, 0, sizeof(*q));
    if (pthread_condattr_init(&ca) != 0)
        return -1;
    /* Monotonic: the writer's periodic wake-up must not jump with the wall clock. */
    rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 && pthread_cond_init(&q->cv, &ca) == 0
             ? 0
             : -1;
    pthread_condattr_destroy(&ca);
    if (rc == 0 && pthread_mutex_init(&q->mu, NULL) != 0) {
        pthread_cond_destroy(&q->cv);
        rc = -1;
    }
    return rc;
}

/* Frees the batches still queued (after an abort: unacknowledged, so redelivered later). */
static void queue_destroy(queue_t *q)
{
    for (; q->count > 0; q->count--, q->head = (q->head + 1) % QUEUE_DEPTH)
        natsMsgList_Destroy(&q->lists[q->head]);
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
}

/* Fetcher side: hands a batch over, waiting for room. Takes ownership of list. */
static void queue_push(queue_t *q, natsMsgList *list)
{
    pthread_mutex_lock(&q->mu);
    while (q->count == QUEUE_DEPTH && !q->aborted)
        pthread_cond_wait(&q->cv, &q->mu);
    if (q->aborted) {
        pthread_mutex_unlock(&q->mu);
        natsMsgList_Destroy(list);
        return;
    }
    q->lists[(q->head + q->count) % QUEUE_DEPTH] = *list;
    q->count++;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    memset(list, 0, sizeof(*list));
}

/* Fetcher side: waits until every batch handed over is acknowledged (before resubscribing). */
static void queue_drain(queue_t *q)
{
    pthread_mutex_lock(&q->mu);
    while (q->count > 0 && !q->aborted)
        pthread_cond_wait(&q->cv, &q->mu);
    pthread_mutex_unlock(&q->mu);
}

static void queue_finish(queue_t *q)
{
    pthread_mutex_lock(&q->mu);
    q->done = true;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

/* Writer side: the oldest batch (still queued: it leaves with queue_pop once acknowledged), or
 * NULL after up to FETCH_TIMEOUT_MS without one; *done is set when none will ever come. */
static natsMsgList *queue_peek(queue_t *q, bool *done)
{
    struct timespec until;
    natsMsgList *list = NULL;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_nsec += FETCH_TIMEOUT_MS * 1000000L;
    until.tv_sec += until.tv_nsec / 1000000000L;
    until.tv_nsec %= 1000000000L;
    pthread_mutex_lock(&q->mu);
    while (q->count == 0 && !q->done)
        if (pthread_cond_timedwait(&q->cv, &q->mu, &until) != 0)
            break;
    if (q->count > 0)
        list = &q->lists[q->head];
    *done = q->count == 0 && q->done;
    pthread_mutex_unlock(&q->mu);
    return list;
}

static void queue_pop(queue_t *q)
{
    natsMsgList done;
    pthread_mutex_lock(&q->mu);
    done = q->lists[q->head];
    q->head = (q->head + 1) % QUEUE_DEPTH;
    q->count--;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    natsMsgList_Destroy(&done); /* outside the lock: a thousand frees */
}

static void queue_abort(queue_t *q)
{
    pthread_mutex_lock(&q->mu);
    q->aborted = true;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

static bool queue_aborted(queue_t *q)
{
    bool aborted;
    pthread_mutex_lock(&q->mu);
    aborted = q->aborted;
    pthread_mutex_unlock(&q->mu);
    return aborted;
}

/* After repeated fetch errors the consumer may be gone (server restarted on empty storage):
 * bind again, once nothing of the old subscription is held. False when a stop came first. */
static bool resubscribe(fetcher_t *f)
{
    queue_drain(&f->q);
    natsSubscription_Destroy(f->sub);
    f->sub = subscribe(f->js, f->c);
    return f->sub != NULL;
}

/* After a fetch that did not fill the batch, messages gather on the server for linger_ms, so
 * that the next fetch takes them in one burst: per message, nats-server's consumer and our
 * socket wake up once per fetch rather than once per message or two, and SQLite commits (one
 * fsync, the B-trees' last pages rewritten) a few times a second rather than after every couple
 * of messages. Also spaces out the fetches answered at once without a message (a 408 "Requests
 * Pending" while an older request of ours is still open on the server). */
static void linger(const config_t *c, int fetched)
{
    if (fetched < c->batch && c->linger_ms > 0 && !stop_requested)
        sleep_ms(c->linger_ms);
}

/* The fetcher thread: pulls batches until a stop, then ends the queue. */
static void *fetch_main(void *arg)
{
    fetcher_t *f = arg;
    int errors = 0;
    while (!stop_requested && !queue_aborted(&f->q)) {
        natsMsgList list = {0};
        jsErrCode jerr = 0;
        natsStatus s = fetch_batch(&list, f->sub, f->c->batch, FETCH_TIMEOUT_MS, &jerr);
        int n = s == NATS_OK ? list.Count : 0;
        if (n > 0) {
            if (errors > 0)
                log_info("subscriber: fetching again after %d failed fetches", errors);
            errors = 0;
            queue_push(&f->q, &list); /* even when stopping: the writer still persists it */
        } else
            natsMsgList_Destroy(&list);
        if (s == NATS_OK || s == NATS_TIMEOUT) {
            linger(f->c, n);
            continue;
        }
        /* On a cluster: while the consumer's leader is elected again (seconds), then the
         * fetches go on; a run of failures binds the consumer again (resubscribe). */
        if (errors++ == 0)
            log_warn("subscriber: fetch: %s (%d): %s; retrying", natsStatus_GetText(s), (int)jerr,
                     nats_GetLastError(NULL));
        sleep_ms(FETCH_TIMEOUT_MS);
        if (errors >= RESUBSCRIBE_AFTER_ERRORS) {
            if (!resubscribe(f))
                break;
            errors = 0;
        }
    }
    queue_finish(&f->q);
    nats_ReleaseThreadMemory();
    return NULL;
}

/* The main thread's side: writes and acknowledges batches until the fetcher has ended and the
 * queue is empty. Returns -1 when a stop interrupted SQLite retries. */
static int consume(fetcher_t *f, store_t *st, stats_t *t)
{
    int64_t last_n = 0, last_ms = now_ms();
    for (;;) {
        bool done = false;
        natsMsgList *list = queue_peek(&f->q, &done);
        if (done)
            break;
        if (list != NULL) {
            if (persist_batch(st, list, t) != 0) {
                queue_abort(&f->q);
                return -1;
            }
            queue_pop(&f->q);
        }
        progress(t, &last_n, &last_ms, false);
    }
    progress(t, &last_n, &last_ms, true);
    return 0;
}

/* Runs the fetcher thread next to consume(). */
static int run(natsSubscription **sub, jsCtx *js, store_t *st, const config_t *c, stats_t *t)
{
    fetcher_t f = {.sub = *sub, .js = js, .c = c};
    pthread_t tid;
    int rc;
    if (queue_init(&f.q) != 0) {
        log_error("subscriber: cannot create the batch queue");
        return -1;
    }
    if (pthread_create(&tid, NULL, fetch_main, &f) != 0) {
        log_error("subscriber: cannot start the fetcher thread");
        queue_destroy(&f.q);
        return -1;
    }
    rc = consume(&f, st, t);
    pthread_join(tid, NULL);
    queue_destroy(&f.q);
    *sub = f.sub; /* the fetcher may have bound a new one (or NULL after a stop) */
    return rc;
}

int main(int argc, char **argv)
{
    config_t c;
    store_t *st = NULL;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsSubscription *sub = NULL;
    stats_t t = {0};
    metrics_http_t *mh = NULL;
    metrics_ctx_t mctx = {.c = &c};
    char err[512];
    int rc = 1;
    struct sigaction sa;

    log_init("snatch-subscriber", LOG_FORMAT_TEXT);
    if (parse_args(argc, argv, &c) != 0)
        return 2;
    log_init("snatch-subscriber", c.log_format);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal; /* no SA_RESTART: sleeps and waits return early */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* Before SQLite initialises: no global mutex around every SQLite allocation to keep counts
     * nobody reads. */
    sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    if (store_open(&st, c.db, c.sync, err, sizeof(err)) != 0) {
        log_error("subscriber: %s", err);
        auth_free(&c.auth);
        return 1;
    }
    /* Served from the start, so that a subscriber waiting for NATS is seen (no lag sample yet)
     * and a taken port is an error now, not after connecting. */
    if (c.metrics_listen != NULL) {
        if (metrics_http_start(&mh, c.metrics_listen, metrics_render, metrics_tick, &mctx, err,
                               sizeof(err)) != 0) {
            log_error("subscriber: metrics: %s", err);
            goto out;
        }
        log_info("subscriber: metrics on %s", c.metrics_listen);
    }
    if ((nc = connect_nats(c.url, &c.auth)) == NULL) {
        rc = stop_requested ? 0 : 1;
        goto out;
    }
    if (natsConnection_JetStream(&js, nc, NULL) != NATS_OK)
        goto out;
    atomic_store(&mctx.js, js);
    if ((sub = subscribe(js, &c)) == NULL) {
        rc = stop_requested ? 0 : 1;
        goto out;
    }
    log_info("subscriber: consuming %s as durable %s, batch %d, linger %d ms, db %s (sync %s)",
             c.stream, c.durable, c.batch, c.linger_ms, c.db,
             c.sync == STORE_SYNC_FULL ? "full" : "normal");
    rc = run(&sub, js, st, &c, &t) == 0 ? 0 : 1;
    /* Push the last acks out before closing, or they are redelivered (harmlessly) later. */
    natsConnection_FlushTimeout(nc, 2000);
    log_info("subscriber: stopped, persisted %lld", (long long)t.persisted);
out:
    metrics_http_stop(mh);         /* before js goes: its thread uses it */
    natsSubscription_Destroy(sub); /* not Unsubscribe: that would delete the durable */
    jsCtx_Destroy(js);
    natsConnection_Close(nc);
    natsConnection_Destroy(nc);
    store_close(st);
    nats_CloseAndWait(2000);
    auth_free(&c.auth);
    return rc;
}
