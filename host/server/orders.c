/* JetStream publishing of orders for snatch-host.
 *
 * Threads: orders_publisher_* runs its own background thread (connect, make sure stream ORDERS
 * exists, re-check it after every reconnect); cnats runs its I/O and delivery threads; each
 * orders_lane_t belongs to one loop thread. Acknowledgements arrive on a cnats delivery thread:
 * the ack handler only copies (order id, status) into the lane's queue under a mutex and wakes
 * the loop with a uv_async_t; pending publishes, callbacks and the ack timeout all live on the
 * loop, so callbacks never run concurrently with the loop.
 *
 * Lifetime: the ack handler's closure is a slot owned by the publisher, never the lane itself, so
 * a late ack arriving after orders_lane_close finds the slot empty and is dropped; slots are
 * freed with the publisher. cnats also gets a MaxWait per attempt so that its own table of
 * pending messages empties even when an ack is lost (a stream without a leader answers none);
 * cnats gets no MaxPending, which would make js_PublishMsgAsync wait on the loop thread.
 *
 * Leader changes on a JetStream cluster: an attempt answered "no responders" or not at all is
 * published again (same Nats-Msg-Id) until the sale's ack deadline, so a leadership handed over
 * in milliseconds (SIGTERM of the leader) costs no sale a 202; and such an answer makes the
 * publisher check the stream, new sales answering 503 until it has a leader again. */
#include "orders.h"

#include <errno.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "keyspace.h"
#include "log.h"
#include "metrics.h"
#include "nats_servers.h"
#include "util.h"

#define MAX_LANES 256
#define RECONNECT_WAIT_MS 250
#define ENSURE_BACKOFF_MIN_MS 100
#define ENSURE_BACKOFF_MAX_MS 2000
/* The stream check's JetStream request: while the stream has no leader it goes unanswered, and
 * the check is repeated every ENSURE_LEADERLESS_MS on top, so sales resume within about
 * ENSURE_WAIT_MS + ENSURE_LEADERLESS_MS of the election. A creation slower than ENSURE_WAIT_MS
 * is only seen by the next check. */
#define ENSURE_WAIT_MS 500
/* The longest wait for one publish attempt's answer before it is made again (see
 * attempt_wait). */
#define ATTEMPT_MAX_MS 1000
/* The grid attempt deadlines are shortened onto (see attempt_wait). */
#define ATTEMPT_GRID_MS 32
#define ENSURE_LEADERLESS_MS 100
#define RESYNC_MS 1000
#define REOPEN_BACKOFF_MIN_MS 500
#define REOPEN_BACKOFF_MAX_MS 5000
/* How long one write to the NATS socket may wait for room (cnats's write deadline). A write
 * only waits once the socket buffers (megabytes) are full, the server that far behind, and
 * gives up when it frees no room for this long: cnats then drops the connection and reconnects,
 * and the publishes are made again (see send_msg). Without it the loop thread's write to a
 * server that stopped reading (SIGSTOP, hung, swapping) blocks until it reads again. */
#define WRITE_DEADLINE_MS 250
/* A batch message's caps: far below NATS's max_payload (1 MB by default), and a bound on what
 * one lost message costs in 202s. A full batch leaves at once. */
#define BATCH_MAX_RECORDS 256
#define BATCH_MAX_BYTES (64 * 1024)
/* (event, hold_until) pairs a lane keeps open in one loop turn; one more flushes the oldest. */
#define OPEN_BATCHES 8

struct conn_state;

typedef struct lane_slot {
    uv_mutex_t mu;
    orders_lane_t *lane; /* NULL once the lane closed: late acks are dropped */
    bool used;
    struct conn_state *cs; /* the publisher's: a publish nobody answered asks for a recheck */
} lane_slot_t;

/* What cnats's connection callbacks touch. cnats runs them on its own thread, possibly after
 * natsConnection_Close returned, so this lives apart from the publisher, shared by the
 * publisher's successive connections, and freed by the last of its owners to let go. */
typedef struct conn_state {
    _Atomic bool connected;
    _Atomic bool stream_ok;
    _Atomic bool recheck; /* a (re)connect happened: verify the stream before accepting */
    _Atomic bool stopping;
    _Atomic uint64_t err_logged_ms;     /* rate limit of on_error's log line */
    _Atomic uint64_t closed_logged_ms;  /* and of on_closed's */
    _Atomic bool stream_lost;           /* a publish went unanswered: said once per outage */
    _Atomic uint64_t refused_logged_ms; /* rate limit of a refused publish's log line */
    /* cnats closed the connection by itself (it does after an authorization violation or a
     * failed TLS handshake) and will not reconnect it: the publisher makes a new one. */
    _Atomic bool given_up;
    /* Owners: the publisher, plus each connection until its closed callback ran (cnats runs it
     * once per connection, on a close of ours or on its own). The last to let go frees. */
    _Atomic int refs;
} conn_state_t;

static void conn_state_release(conn_state_t *cs)
{
    if (atomic_fetch_sub(&cs->refs, 1) == 1)
        free(cs);
}

struct orders_publisher {
    char *url;
    natsOptions *opts;
    natsConnection *nc; /* written by the thread under nc_mu, read after `have_nc` is seen */
    conn_state_t *cs;
    _Atomic bool have_nc;
    uv_thread_t thread;
    uv_mutex_t mu;
    uv_cond_t cond;
    bool stop; /* under mu */
    lane_slot_t slots[MAX_LANES];
    const auth_config_t *auth; /* NULL: none; read only while the options are built */
    /* A connection cnats gave up is replaced: lanes take nc under nc_mu (their jsCtx keeps it
     * alive) and compare nc_gen to see that theirs is stale. */
    uv_mutex_t nc_mu;
    _Atomic uint64_t nc_gen;
};

/* Who waits for one order's ack. */
typedef struct waiter {
    orders_ack_fn cb;
    void *data;
} waiter_t;

/* Orders published in this loop turn for one (event, hold_until), leaving as one message when
 * the turn ends (on_check) or the batch is full. */
typedef struct batch {
    char event[SNATCH_NAME_MAX + 1];
    int64_t hold_until;
    char first[KEYSPACE_ORDER_ID_MAX + 1];
    char *body; /* the records, one a line; reused from message to message */
    size_t len, cap;
    waiter_t *w; /* n waiters, handed to the message's pending entry */
    unsigned n, wcap;
} batch_t;

/* One message waiting for its ack. Linked in publish order (oldest first, which is also deadline
 * order since every publish gets the same timeout) and in a hash chain keyed by order id. */
typedef struct pending {
    char id[KEYSPACE_MSG_ID_MAX + 1];
    waiter_t one;   /* a message of one order */
    waiter_t *many; /* a batch's n waiters (owned) */
    unsigned n;     /* orders of the message */
    uint64_t deadline;
    uint64_t sent_ns; /* uv_hrtime() at publish: ack latency */
    /* The message of an attempt nobody answered, handed back by cnats, or one held while the
     * connection is down (send_msg): published again on the next tick while the deadline allows
     * (same Nats-Msg-Id: stored once whatever happened). */
    natsMsg *retry;
    int prev, next; /* publish order; next doubles as the free list link */
    int hnext;
    bool used;
} pending_t;

typedef struct completion {
    char id[KEYSPACE_MSG_ID_MAX + 1];
    int status;
    natsMsg *retry; /* the attempt went unanswered: its message, to publish again */
} completion_t;

struct orders_lane {
    orders_publisher_t *p;
    lane_slot_t *slot;
    uv_loop_t *loop;
    jsCtx *js; /* created on the first publish once the publisher is ready */
    unsigned max_inflight;
    uint64_t ack_timeout_ms;
    unsigned inflight; /* orders published and not answered yet, in open batches too */
    unsigned retries;  /* entries holding a message to publish again */
    pending_t *pend;
    int free_head, oldest, newest;
    int *buckets;
    unsigned nbuckets; /* power of two */
    /* Filled by cnats threads under qmu, drained on the loop. */
    uv_mutex_t qmu;
    completion_t *queue;
    size_t qlen, qcap;
    completion_t *drain; /* the loop's copy, swapped with queue */
    size_t dcap;
    uv_async_t async;
    uv_timer_t timer;
    /* The open batches leave at the end of the loop turn: on_check flushes them; the idle
     * handle, active while one is open, keeps the loop from blocking in poll before that. */
    batch_t batches[OPEN_BATCHES];
    unsigned open; /* batches holding orders */
    uv_check_t check;
    uv_idle_t idle;
    int open_handles;
    bool closing;
    uint64_t js_gen; /* the publisher's nc_gen when js was made */
};

/* ---- publisher ---------------------------------------------------------------------------- */

static void set_connected(conn_state_t *cs)
{
    atomic_store(&cs->connected, true);
    atomic_store(&cs->recheck, true);
}

static void on_connected(natsConnection *nc, void *closure)
{
    char url[256];
    log_info("orders: connected to NATS at %s", nats_servers_connected(nc, url, sizeof(url)));
    set_connected(closure);
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    (void)nc;
    conn_state_t *cs = closure;
    atomic_store(&cs->connected, false);
    if (!atomic_load(&cs->stopping))
        log_warn("orders: disconnected from NATS");
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    /* The server may have come back with empty storage: the stream is checked again before
     * publishes are accepted, so none is lost to "no responders". */
    conn_state_t *cs = closure;
    char url[256];
    atomic_store(&cs->stream_ok, false);
    log_info("orders: reconnected to NATS at %s", nats_servers_connected(nc, url, sizeof(url)));
    set_connected(cs);
}

/* Asynchronous errors (a refused password while reconnecting, a TLS failure): counted, logged at
 * most every 5 s. cnats never puts credentials in these texts. */
static void on_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    (void)sub;
    conn_state_t *cs = closure;
    metrics_backend_error(METRICS_NATS_CONNECT);
    uint64_t now = (uint64_t)nats_Now();
    uint64_t last = atomic_load(&cs->err_logged_ms);
    if (last != 0 && now - last < 5000)
        return;
    atomic_store(&cs->err_logged_ms, now);
    const char *txt = NULL;
    natsConnection_GetLastError(nc, &txt);
    log_warn("orders: NATS error: %s%s%s", natsStatus_GetText(err), txt != NULL && *txt ? ": " : "",
             txt != NULL ? txt : "");
}

static void on_closed(natsConnection *nc, void *closure)
{
    conn_state_t *cs = closure;
    if (!atomic_load(&cs->stopping)) {
        atomic_store(&cs->connected, false);
        atomic_store(&cs->given_up, true);
        metrics_backend_error(METRICS_NATS_CONNECT);
        uint64_t now = (uint64_t)nats_Now();
        uint64_t last = atomic_load(&cs->closed_logged_ms);
        if (last == 0 || now - last >= 30000) {
            atomic_store(&cs->closed_logged_ms, now);
            const char *txt = NULL;
            natsConnection_GetLastError(nc, &txt);
            log_warn("orders: NATS closed the connection%s%s; sales answer 503 while a new one is "
                     "tried every %d s at most (logged every 30 s)\n",
                     txt != NULL && *txt ? ": " : "", txt != NULL ? txt : "",
                     REOPEN_BACKOFF_MAX_MS / 1000);
        }
    }
    conn_state_release(cs);
}

/* cnats delivery thread: a publish got "no responders" or no answer at all, which is what a
 * stream without a leader gives (on a cluster, for the seconds of an election). New sales answer
 * 503 (nothing sold) until the publisher thread sees the stream led again; the publishes in
 * flight end as they will (200 or 202). */
static void stream_unanswered(conn_state_t *cs, natsStatus why)
{
    atomic_store(&cs->stream_ok, false);
    atomic_store(&cs->recheck, true);
    if (atomic_exchange(&cs->stream_lost, true) || atomic_load(&cs->stopping))
        return;
    log_warn("orders: stream %s did not acknowledge a publish (%s): no leader? Sales answer 503 "
             "until it has one again",
             ORDERS_STREAM, natsStatus_GetText(why));
}

/* cnats delivery thread: JetStream answered a publish with an error (the sale answers 202).
 * Logged at most every 5 s. */
static void publish_refused(conn_state_t *cs, const jsPubAckErr *pae)
{
    uint64_t now = (uint64_t)nats_Now();
    uint64_t last = atomic_load(&cs->refused_logged_ms);
    if (last != 0 && now - last < 5000)
        return;
    atomic_store(&cs->refused_logged_ms, now);
    log_warn("orders: stream %s refused a publish: %s (%d%s%s)", ORDERS_STREAM,
             pae != NULL ? natsStatus_GetText(pae->Err) : "?", pae != NULL ? (int)pae->ErrCode : 0,
             pae != NULL && pae->ErrText != NULL ? ": " : "",
             pae != NULL && pae->ErrText != NULL ? pae->ErrText : "");
}

/* Blocking: the publisher thread only. 0: the stream is there and led; 1: it has no leader (or
 * JetStream did not answer); -1 another failure. */
static int ensure_stream(orders_publisher_t *p)
{
    jsCtx *js = NULL;
    jsErrCode jerr = 0;
    jsOptions o;
    int created = 0;
    jsOptions_Init(&o);
    o.Wait = ENSURE_WAIT_MS;
    natsStatus s = natsConnection_JetStream(&js, p->nc, &o);
    if (s != NATS_OK)
        return -1;
    s = orders_stream_ensure(js, &jerr, &created);
    jsCtx_Destroy(js);
    if (created)
        log_info("orders: created stream %s", ORDERS_STREAM);
    bool leaderless = s == NATS_NO_RESPONDERS || s == NATS_TIMEOUT;
    if (s == NATS_OK) {
        if (atomic_exchange(&p->cs->stream_lost, false))
            log_info("orders: stream %s answers again: selling", ORDERS_STREAM);
        return 0;
    }
    metrics_backend_error(METRICS_NATS_STREAM);
    /* Said once per outage; an election repeats this check every ENSURE_LEADERLESS_MS. */
    const char *why = leaderless ? ", no leader (an election under way?)"
                      : jerr == JSStreamReplicasNotSupportedErr
                          ? ": a standalone nats-server, --" ORDERS_REPLICAS_FLAG " must be 1"
                      : jerr == JSClusterNoPeersErr
                          ? ": fewer JetStream nodes up than --" ORDERS_REPLICAS_FLAG "?"
                          : "";
    if (!atomic_exchange(&p->cs->stream_lost, true))
        log_warn("orders: stream %s not ready: %s (%d)%s; retrying", ORDERS_STREAM,
                 natsStatus_GetText(s), (int)jerr, why);
    return leaderless ? 1 : -1;
}

/* Sleeps up to ms, less when a stop is requested or a reconnect asks for a stream check (the
 * callbacks cannot signal us: they must not touch the publisher, so we poll their flag). */
static void wait_ms(orders_publisher_t *p, uint64_t ms)
{
    for (uint64_t waited = 0; waited < ms && !atomic_load(&p->cs->recheck); waited += 50) {
        uv_mutex_lock(&p->mu);
        if (!p->stop)
            uv_cond_timedwait(&p->cond, &p->mu, 50 * 1000000ULL);
        bool stop = p->stop;
        uv_mutex_unlock(&p->mu);
        if (stop)
            return;
    }
}

/* Makes the publisher's connection: the first one, or a new one after cnats gave the last one
 * up. Returns 0, or -1 when cnats refused at once (bad options). */
static int open_connection(orders_publisher_t *p, bool first)
{
    conn_state_t *cs = p->cs;
    natsConnection *nc = NULL;
    atomic_store(&cs->given_up, false);
    atomic_fetch_add(&cs->refs, 1); /* the new connection's closed callback lets go of it */
    natsStatus s = natsConnection_Connect(&nc, p->opts);
    if (s != NATS_OK && s != NATS_NOT_YET_CONNECTED) {
        conn_state_release(cs); /* no connection: no callback */
        atomic_store(&cs->given_up, true);
        metrics_backend_error(METRICS_NATS_CONNECT);
        if (first)
            log_warn("orders: cannot connect to %s: %s (%s); retrying", p->url,
                     natsStatus_GetText(s), nats_GetLastError(NULL));
        return -1;
    }
    if (s == NATS_OK) {
        char url[256];
        log_info("orders: connected to NATS at %s", nats_servers_connected(nc, url, sizeof(url)));
    }
    if (s == NATS_NOT_YET_CONNECTED && first) {
        /* Said at once: until it connects every sale answers 503. */
        metrics_backend_error(METRICS_NATS_CONNECT);
        log_warn("orders: cannot reach NATS at %s yet; retrying in the background", p->url);
    }
    natsConnection *old = p->nc;
    uv_mutex_lock(&p->nc_mu);
    p->nc = nc;
    atomic_fetch_add(&p->nc_gen, 1);
    uv_mutex_unlock(&p->nc_mu);
    atomic_store(&cs->stream_ok, false);
    if (old != NULL)
        natsConnection_Destroy(old); /* closed already; lanes' jsCtx may still hold it */
    atomic_store(&p->have_nc, true);
    return 0;
}

static void publisher_thread(void *arg)
{
    orders_publisher_t *p = arg;
    conn_state_t *cs = p->cs;
    uint64_t backoff = ENSURE_BACKOFF_MIN_MS;
    uint64_t reopen = REOPEN_BACKOFF_MIN_MS;
    bool first = true;
    while (!atomic_load(&cs->stopping)) {
        if (p->nc == NULL || atomic_load(&cs->given_up)) {
            if (!first) {
                atomic_store(&cs->recheck, false); /* else wait_ms would not wait */
                wait_ms(p, reopen);
                reopen = reopen * 2 > REOPEN_BACKOFF_MAX_MS ? REOPEN_BACKOFF_MAX_MS : reopen * 2;
                if (atomic_load(&cs->stopping))
                    break;
            }
            int rc = open_connection(p, first);
            first = false;
            if (rc != 0)
                continue;
        }
        atomic_store(&cs->recheck, false);
        /* Callbacks can race with the initial connect: the library's status is the truth. */
        atomic_store(&cs->connected, natsConnection_Status(p->nc) == NATS_CONN_STATUS_CONNECTED);
        if (atomic_load(&cs->connected) && !atomic_load(&cs->stream_ok)) {
            int rc = ensure_stream(p);
            if (rc == 1) {
                atomic_store(&cs->recheck, false); /* else wait_ms would not wait */
                wait_ms(p, ENSURE_LEADERLESS_MS);
                continue;
            }
            if (rc != 0) {
                wait_ms(p, backoff);
                backoff = backoff * 2 > ENSURE_BACKOFF_MAX_MS ? ENSURE_BACKOFF_MAX_MS : backoff * 2;
                continue;
            }
            atomic_store(&cs->stream_ok, true);
            backoff = ENSURE_BACKOFF_MIN_MS;
            reopen = REOPEN_BACKOFF_MIN_MS;
        }
        wait_ms(p, RESYNC_MS);
    }
    nats_ReleaseThreadMemory();
}

static int set_options(orders_publisher_t *p)
{
    natsOptions *o = NULL;
    natsStatus s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = nats_servers_apply(o, p->url);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(o, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(o, RECONNECT_WAIT_MS);
    if (s == NATS_OK)
        s = natsOptions_SetRetryOnFailedConnect(o, true, on_connected, p->cs);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(o, on_disconnected, p->cs);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(o, on_reconnected, p->cs);
    if (s == NATS_OK)
        s = natsOptions_SetClosedCB(o, on_closed, p->cs);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(o, on_error, p->cs);
    /* cnats's flusher thread waits 1 ms "to accumulate more requests" before each write, on
     * every buyer's path to the 200. The lanes already gather a loop turn's orders into batch
     * messages, so each publish is written at once by the loop thread itself (about 0.6 ms off
     * the JetStream ack, see docs/BENCHMARKS.md). A server that stops reading blocks that write
     * once the socket buffer is full: the write deadline bounds it, and while cnats then
     * reconnects the lanes leave the connection alone (lane_linked). */
    if (s == NATS_OK)
        s = natsOptions_SetSendAsap(o, true);
    if (s == NATS_OK)
        s = natsOptions_SetWriteDeadline(o, WRITE_DEADLINE_MS);
    if (s == NATS_OK && p->auth != NULL)
        s = auth_nats_apply(o, p->auth);
    if (s != NATS_OK) {
        natsOptions_Destroy(o);
        return -1;
    }
    p->opts = o;
    return 0;
}

int orders_publisher_start(orders_publisher_t **out, const char *url, char *err, size_t errlen)
{
    return orders_publisher_start_auth(out, url, NULL, err, errlen);
}

int orders_publisher_start_auth(orders_publisher_t **out, const char *url,
                                const auth_config_t *auth, char *err, size_t errlen)
{
    orders_publisher_t *p = calloc(1, sizeof(*p));
    int slots = 0;
    *out = NULL;
    /* Before cnats's first use (later calls change nothing): its locks would otherwise spin up
     * to 2000 times before sleeping, and the threads they wait for (the loop threads, cnats's
     * own) share a few cores, so spinning only burns the time the holder needs to finish. */
    nats_Open(0);
    if (p == NULL || (p->url = strdup(url)) == NULL ||
        (p->cs = calloc(1, sizeof(*p->cs))) == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    p->auth = auth;
    atomic_store(&p->cs->refs, 1); /* the publisher's */
    if (set_options(p) != 0) {
        snprintf(err, errlen, "bad NATS url or options: %s", nats_GetLastError(NULL));
        goto fail;
    }
    uv_mutex_init(&p->mu);
    uv_mutex_init(&p->nc_mu);
    uv_cond_init(&p->cond);
    for (; slots < MAX_LANES; slots++) {
        uv_mutex_init(&p->slots[slots].mu);
        p->slots[slots].cs = p->cs;
    }
    if (uv_thread_create(&p->thread, publisher_thread, p) != 0) {
        snprintf(err, errlen, "cannot start the NATS thread");
        goto fail_sync;
    }
    *out = p;
    return 0;
fail_sync:
    while (slots > 0)
        uv_mutex_destroy(&p->slots[--slots].mu);
    uv_cond_destroy(&p->cond);
    uv_mutex_destroy(&p->nc_mu);
    uv_mutex_destroy(&p->mu);
fail:
    if (p != NULL) {
        natsOptions_Destroy(p->opts);
        free(p->url);
        free(p->cs);
    }
    free(p);
    return -1;
}

bool orders_publisher_ready(const orders_publisher_t *p)
{
    orders_publisher_t *q = (orders_publisher_t *)p;
    return p != NULL && atomic_load(&q->have_nc) && atomic_load(&q->cs->connected) &&
           atomic_load(&q->cs->stream_ok);
}

void orders_publisher_stop(orders_publisher_t *p, int64_t timeout_ms)
{
    if (p == NULL)
        return;
    atomic_store(&p->cs->stopping, true);
    uv_mutex_lock(&p->mu);
    p->stop = true;
    uv_cond_signal(&p->cond);
    uv_mutex_unlock(&p->mu);
    uv_thread_join(&p->thread);
    if (p->nc != NULL) {
        if (atomic_load(&p->cs->connected) && timeout_ms > 0)
            natsConnection_FlushTimeout(p->nc, timeout_ms);
        natsConnection_Close(p->nc);
        natsConnection_Destroy(p->nc);
    }
    conn_state_release(p->cs); /* on_closed may still run (and free it) after this */
    natsOptions_Destroy(p->opts);
    for (int i = 0; i < MAX_LANES; i++)
        uv_mutex_destroy(&p->slots[i].mu);
    uv_cond_destroy(&p->cond);
    uv_mutex_destroy(&p->nc_mu);
    uv_mutex_destroy(&p->mu);
    free(p->url);
    free(p);
    nats_ReleaseThreadMemory();
}

/* ---- lane: pending table (loop thread) ----------------------------------------------------- */

static unsigned hash_id(const char *s)
{
    unsigned h = 2166136261u; /* FNV-1a: ids differ in their last characters */
    for (; *s != '\0'; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static int pending_find(orders_lane_t *l, const char *id)
{
    for (int i = l->buckets[hash_id(id) & (l->nbuckets - 1)]; i >= 0; i = l->pend[i].hnext)
        if (strcmp(l->pend[i].id, id) == 0)
            return i;
    return -1;
}

/* A new entry for a message of n orders (counted in inflight already); its waiters are the
 * caller's to set. */
static int pending_add(orders_lane_t *l, const char *id, unsigned n)
{
    int i = l->free_head;
    pending_t *e = &l->pend[i];
    unsigned b = hash_id(id) & (l->nbuckets - 1);
    l->free_head = e->next;
    snprintf(e->id, sizeof(e->id), "%s", id);
    e->n = n;
    e->many = NULL;
    e->deadline = uv_now(l->loop) + l->ack_timeout_ms;
    e->sent_ns = uv_hrtime();
    e->retry = NULL;
    e->used = true;
    e->hnext = l->buckets[b];
    l->buckets[b] = i;
    e->next = -1;
    e->prev = l->newest;
    if (l->newest >= 0)
        l->pend[l->newest].next = i;
    else
        l->oldest = i;
    l->newest = i;
    return i;
}

static void pending_unlink(orders_lane_t *l, int i)
{
    pending_t *e = &l->pend[i];
    int *link = &l->buckets[hash_id(e->id) & (l->nbuckets - 1)];
    while (*link != i)
        link = &l->pend[*link].hnext;
    *link = e->hnext;
    if (e->prev >= 0)
        l->pend[e->prev].next = e->next;
    else
        l->oldest = e->next;
    if (e->next >= 0)
        l->pend[e->next].prev = e->prev;
    else
        l->newest = e->prev;
    if (e->retry != NULL) {
        natsMsg_Destroy(e->retry);
        e->retry = NULL;
        l->retries--;
    }
    e->used = false;
    e->next = l->free_head;
    l->free_head = i;
    l->inflight -= e->n;
}

/* Answers n waiters (taken from their owner first: a callback may publish again). sent_ns 0:
 * the message never left (no ack to count). */
static void answer(waiter_t *w, unsigned n, int status, uint64_t sent_ns)
{
    metrics_orders_inflight(-(int64_t)n);
    for (unsigned k = 0; k < n; k++) {
        if (sent_ns != 0)
            metrics_orders_ack(status == 0, sent_ns);
        w[k].cb(status, w[k].data);
    }
}

/* Unlinks entry i, then runs its orders' callbacks (which may publish again and reuse the
 * entry): every order of a message gets the message's answer. */
static void pending_finish(orders_lane_t *l, int i, int status)
{
    pending_t *e = &l->pend[i];
    waiter_t one = e->one, *many = e->many;
    unsigned n = e->n;
    uint64_t sent_ns = e->sent_ns;
    e->many = NULL;
    pending_unlink(l, i);
    answer(many != NULL ? many : &one, n, status, sent_ns);
    free(many);
}

/* ---- lane: publishing -------------------------------------------------------------------------
 */

/* Whether the lane may call into the connection now. While cnats reconnects, its reconnect
 * thread holds the connection's lock through each attempt's TCP connect and wait for the
 * server's INFO (up to the connect timeout, 2 s, again and again against a server that accepts
 * but does not answer): a publish from the loop would wait for that lock. So the lanes keep
 * what they publish meanwhile and send it once connected again (the timer's republish). The
 * flag is the callbacks' (and the publisher thread's resync), so a drop is seen a moment late:
 * a publish in that moment waits at most one connect attempt. */
static bool lane_linked(const orders_lane_t *l)
{
    return atomic_load(&l->p->cs->connected);
}

/* A publish failed for the connection's sake (not for the message's): worth making again. */
static bool link_lost(natsStatus s)
{
    return s == NATS_CONNECTION_DISCONNECTED || s == NATS_TIMEOUT || s == NATS_IO_ERROR ||
           s == NATS_CONNECTION_CLOSED || s == NATS_INSUFFICIENT_BUFFER ||
           s == NATS_NOT_YET_CONNECTED;
}

static void on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure);

/* The lane's JetStream context, made again when the publisher replaced its connection. */
static int lane_js(orders_lane_t *l)
{
    if (l->js != NULL && l->js_gen != atomic_load(&l->p->nc_gen)) {
        jsCtx_Destroy(l->js); /* of a connection cnats gave up: it lets go of that one */
        l->js = NULL;
    }
    if (l->js != NULL)
        return 0;
    jsOptions o;
    jsOptions_Init(&o);
    /* No MaxPending: past it cnats makes the publishing thread wait (StallWait), and this is a
     * loop thread. The lane's max_inflight is the bound; cnats's own table also holds attempts
     * we already gave up on, until their MaxWait drops them, so it stays below about twice the
     * lane's window even when no answer ever comes (a stream without a leader). */
    o.PublishAsync.AckHandler = on_pub_ack;
    o.PublishAsync.AckHandlerClosure = l->slot;
    uv_mutex_lock(&l->p->nc_mu);
    natsStatus s = natsConnection_JetStream(&l->js, l->p->nc, &o);
    l->js_gen = atomic_load(&l->p->nc_gen);
    uv_mutex_unlock(&l->p->nc_mu);
    return s == NATS_OK ? 0 : -1;
}

/* How long cnats waits for one attempt's answer: half the ack timeout, at most ATTEMPT_MAX_MS,
 * so that an attempt lost in a leader change (sent to a leader that stepped down) or right
 * after a reconnect (the ack's route to the new node not known yet) is made again before the
 * sale's deadline; never past the deadline. A healthy stream answers in milliseconds. */
static int64_t attempt_wait(const orders_lane_t *l, uint64_t deadline, uint64_t now)
{
    uint64_t half = l->ack_timeout_ms > 1 ? l->ack_timeout_ms / 2 : 1;
    if (half > ATTEMPT_MAX_MS)
        half = ATTEMPT_MAX_MS;
    uint64_t left = deadline > now ? deadline - now : 1;
    int64_t wait = (int64_t)(left < half ? left : half);
    /* cnats keeps a timeout for every attempt, answered or not, and its timer thread wakes at
     * each distinct deadline to deliver them (as messages the ack handler drops): deadlines
     * shortened onto a grid wake it once per ATTEMPT_GRID_MS instead of once per publish. */
    if (wait < 4 * ATTEMPT_GRID_MS)
        return wait;
    int64_t at = nats_Now() + wait;
    return wait - at % ATTEMPT_GRID_MS;
}

/* Loop thread: publishes entry i's unanswered message again. "No responders" means nothing was
 * stored; a timeout may hide a stored message, whose repeat JetStream acknowledges as a
 * duplicate (Nats-Msg-Id), so either way the order is stored once. A failure keeps the message
 * for the next tick; one failed for the connection's sake (link_lost) ends the tick's pass
 * (the connection is likely going down under it). */
static natsStatus republish(orders_lane_t *l, int i, uint64_t now)
{
    pending_t *e = &l->pend[i];
    jsPubOptions po;
    if (lane_js(l) != 0)
        return NATS_ERR;
    jsPubOptions_Init(&po);
    po.MsgId = e->id;
    po.MaxWait = attempt_wait(l, e->deadline, now);
    natsMsg *m = e->retry;
    natsStatus s = js_PublishMsgAsync(l->js, &m, &po);
    if (s != NATS_OK)
        return s;
    e->retry = NULL; /* cnats owns it again */
    l->retries--;
    return NATS_OK;
}

/* ---- lane: ack delivery ---------------------------------------------------------------------- */

/* cnats delivery thread. Copies what the loop needs and hands it over; never touches pending. */
static void on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    (void)js;
    lane_slot_t *slot = closure;
    const char *id = NULL;
    bool unanswered =
        pa == NULL && pae != NULL && (pae->Err == NATS_NO_RESPONDERS || pae->Err == NATS_TIMEOUT);
    if (unanswered)
        stream_unanswered(slot->cs, pae->Err);
    else if (pa == NULL)
        publish_refused(slot->cs, pae);
    if (natsMsgHeader_Get(msg, "Nats-Msg-Id", &id) != NATS_OK || id == NULL)
        goto out;
    uv_mutex_lock(&slot->mu);
    orders_lane_t *l = slot->lane;
    if (l != NULL) {
        uv_mutex_lock(&l->qmu);
        if (l->qlen == l->qcap) {
            size_t cap = l->qcap ? l->qcap * 2 : 64;
            completion_t *q = realloc(l->queue, cap * sizeof(*q));
            if (q != NULL) {
                l->queue = q;
                l->qcap = cap;
            }
        }
        /* Out of memory: the ack is dropped and the lane's timeout fails the publish. */
        if (l->qlen < l->qcap) {
            completion_t *c = &l->queue[l->qlen++];
            size_t idl = strnlen(id, sizeof(c->id) - 1);
            memcpy(c->id, id, idl);
            c->id[idl] = '\0';
            c->status = pa != NULL ? 0 : -1;
            c->retry = unanswered ? msg : NULL;
            if (unanswered)
                msg = NULL; /* the loop owns it now */
        }
        uv_mutex_unlock(&l->qmu);
        uv_async_send(&l->async);
    }
    uv_mutex_unlock(&slot->mu);
out:
    natsMsg_Destroy(msg); /* the AckHandler owns the original message */
}

static void on_async(uv_async_t *h)
{
    orders_lane_t *l = container_of(h, orders_lane_t, async);
    /* Swap the two buffers so the cnats thread never waits while callbacks run. */
    uv_mutex_lock(&l->qmu);
    completion_t *batch = l->queue;
    size_t n = l->qlen, cap = l->qcap;
    l->queue = l->drain;
    l->qcap = l->dcap;
    l->qlen = 0;
    l->drain = batch;
    l->dcap = cap;
    uv_mutex_unlock(&l->qmu);
    uint64_t now = uv_now(l->loop);
    for (size_t k = 0; k < n; k++) {
        completion_t *c = &batch[k];
        /* Not found: a late answer for a publish that already timed out. */
        int i = l->closing ? -1 : pending_find(l, c->id);
        if (i >= 0 && c->retry != NULL && l->pend[i].deadline > now && l->pend[i].retry == NULL) {
            l->pend[i].retry = c->retry;
            l->retries++;
            continue;
        }
        natsMsg_Destroy(c->retry);
        if (i >= 0)
            pending_finish(l, i, c->status);
    }
}

static void on_timer(uv_timer_t *t)
{
    orders_lane_t *l = container_of(t, orders_lane_t, timer);
    uint64_t now = uv_now(l->loop);
    while (!l->closing && l->oldest >= 0 && l->pend[l->oldest].deadline <= now)
        pending_finish(l, l->oldest, -1);
    if (!lane_linked(l))
        return;
    for (int i = l->oldest; i >= 0 && l->retries > 0 && !l->closing; i = l->pend[i].next)
        if (l->pend[i].retry != NULL && link_lost(republish(l, i, now)))
            break;
}

/* ---- lane: public -------------------------------------------------------------------------------
 */

static void lane_free(orders_lane_t *l)
{
    /* Answers queued after the last on_async (none come once the slot is detached). */
    for (size_t k = 0; k < l->qlen; k++)
        natsMsg_Destroy(l->queue[k].retry);
    for (unsigned k = 0; k < OPEN_BATCHES; k++) {
        free(l->batches[k].body);
        free(l->batches[k].w);
    }
    for (int i = 0; l->pend != NULL && i < (int)l->max_inflight; i++)
        free(l->pend[i].many);
    free(l->pend);
    free(l->buckets);
    free(l->queue);
    free(l->drain);
    uv_mutex_destroy(&l->qmu);
    free(l);
}

static lane_slot_t *slot_take(orders_publisher_t *p, orders_lane_t *l)
{
    for (int i = 0; i < MAX_LANES; i++) {
        lane_slot_t *s = &p->slots[i];
        uv_mutex_lock(&s->mu);
        bool taken = !s->used;
        if (taken) {
            s->used = true;
            s->lane = l;
        }
        uv_mutex_unlock(&s->mu);
        if (taken)
            return s;
    }
    return NULL;
}

int orders_lane_start(orders_lane_t **out, orders_publisher_t *p, uv_loop_t *loop,
                      unsigned max_inflight, uint64_t ack_timeout_ms)
{
    orders_lane_t *l = calloc(1, sizeof(*l));
    int rc = -ENOMEM;
    *out = NULL;
    if (l == NULL)
        return -ENOMEM;
    if (max_inflight == 0)
        max_inflight = 1;
    l->p = p;
    l->loop = loop;
    l->max_inflight = max_inflight;
    l->ack_timeout_ms = ack_timeout_ms > 0 ? ack_timeout_ms : 1;
    l->nbuckets = 16;
    while (l->nbuckets < 2 * max_inflight)
        l->nbuckets *= 2;
    l->pend = calloc(max_inflight, sizeof(*l->pend));
    l->buckets = malloc(l->nbuckets * sizeof(*l->buckets));
    uv_mutex_init(&l->qmu);
    if (l->pend == NULL || l->buckets == NULL)
        goto fail;
    memset(l->buckets, 0xff, l->nbuckets * sizeof(*l->buckets)); /* all -1 */
    for (unsigned i = 0; i < max_inflight; i++)
        l->pend[i].next = i + 1 < max_inflight ? (int)i + 1 : -1;
    l->free_head = 0;
    l->oldest = l->newest = -1;
    if ((rc = uv_async_init(loop, &l->async, on_async)) != 0)
        goto fail;
    l->async.data = l;
    l->timer.data = l;
    l->check.data = l;
    l->idle.data = l;
    l->open_handles = 4;
    uv_timer_init(loop, &l->timer); /* these cannot fail */
    uv_check_init(loop, &l->check);
    uv_idle_init(loop, &l->idle);
    /* A quarter of the timeout keeps the overshoot small without waking up too often. */
    uint64_t tick = l->ack_timeout_ms / 4 > 100 ? 100 : l->ack_timeout_ms / 4;
    uv_timer_start(&l->timer, on_timer, tick ? tick : 1, tick ? tick : 1);
    if ((l->slot = slot_take(p, l)) == NULL) {
        orders_lane_close(l);
        return -EMFILE;
    }
    *out = l;
    return 0;
fail:
    lane_free(l);
    return rc;
}

/* Publishes one message for n orders, counted in inflight already (many: a batch's n > 1
 * waiters, which the pending entry then owns). -1: not handed to NATS, nothing taken, no
 * callback run; the caller answers. */
static int send_msg(orders_lane_t *l, const char *event, const char *id, const char *body,
                    size_t len, const char *const *hdrs, int nhdr, waiter_t one, waiter_t *many,
                    unsigned n)
{
    char subject[sizeof(ORDERS_SUBJECT_PREFIX) + SNATCH_NAME_MAX + 1];
    natsMsg *msg = NULL;
    jsPubOptions po;
    bool linked = lane_linked(l); /* once: a held message needs no jsCtx, a sent one does */
    if (snprintf(subject, sizeof(subject), ORDERS_SUBJECT_PREFIX "%s", event) >=
        (int)sizeof(subject))
        return -1;
    if (linked && lane_js(l) != 0)
        return -1;
    if (natsMsg_Create(&msg, subject, NULL, body, (int)len) != NATS_OK)
        return -1;
    for (int h = 0; h < nhdr; h++) {
        if (natsMsgHeader_Set(msg, hdrs[2 * h], hdrs[2 * h + 1]) != NATS_OK) {
            natsMsg_Destroy(msg);
            return -1;
        }
    }
    jsPubOptions_Init(&po);
    po.MsgId = id;
    /* The slot is reserved before the publish: the ack may arrive before this function returns,
     * but it is only processed on this loop, after we return. */
    int i = pending_add(l, id, n);
    l->pend[i].one = one;
    l->pend[i].many = many;
    natsStatus s = NATS_CONNECTION_DISCONNECTED;
    if (linked) {
        po.MaxWait = attempt_wait(l, l->pend[i].deadline, uv_now(l->loop));
        s = js_PublishMsgAsync(l->js, &msg, &po);
    }
    if (s == NATS_OK)
        return 0;
    /* Not connected, or the connection failed under this write (the write deadline passed: cnats
     * drops it and reconnects): the message is held for the timer to publish again, same id,
     * until the deadline. */
    if (link_lost(s)) {
        l->pend[i].retry = msg;
        l->retries++;
        return 0;
    }
    natsMsg_Destroy(msg);
    l->pend[i].many = NULL; /* the caller's still */
    l->pend[i].n = 0;       /* and so is the count */
    pending_unlink(l, i);
    return -1;
}

static bool lane_accepts(const orders_lane_t *l)
{
    /* Not orders_publisher_ready(): the sale is deducted already, and a stream that went
     * without a leader since it was admitted may have one again before the deadline (the
     * attempt is made again until then); while cnats reconnects the lane holds the publish. */
    return l != NULL && !l->closing && l->inflight < l->max_inflight && atomic_load(&l->p->have_nc);
}

/* A message of its own for one order, now. */
static int publish_one(orders_lane_t *l, const char *event, const char *msg_id, const char *payload,
                       size_t len, const char *const *hdrs, int nhdr, orders_ack_fn cb, void *data)
{
    if (!lane_accepts(l) || strlen(msg_id) > KEYSPACE_MSG_ID_MAX || len > INT32_MAX)
        return -1;
    l->inflight++;
    if (send_msg(l, event, msg_id, payload, len, hdrs, nhdr, (waiter_t){cb, data}, NULL, 1) != 0) {
        l->inflight--;
        return -1;
    }
    metrics_orders_inflight(1);
    return 0;
}

int orders_publish_hdr(orders_lane_t *lane, const char *event, const char *msg_id,
                       const char *payload, size_t len, const char *const *hdrs, int nhdr,
                       orders_ack_fn cb, void *data)
{
    return publish_one(lane, event, msg_id, payload, len, hdrs, nhdr, cb, data);
}

/* ---- lane: batches ------------------------------------------------------------------------- */

/* Sends batch b as one message and empties it. Not handed to NATS: its orders are answered -1
 * at once (they stay pending in Redis; reconciliation republishes them). */
static void batch_flush(orders_lane_t *l, batch_t *b)
{
    char id[KEYSPACE_MSG_ID_MAX + 1], until[UTIL_I64_LEN + 1], count[UTIL_I64_LEN + 1];
    const char *hdrs[4];
    int nhdr = 0;
    unsigned n = b->n;
    if (n == 0)
        return;
    /* "<first>" or "<first>+<n>": first is at most KEYSPACE_ORDER_ID_MAX, n <= 256. */
    size_t fl = strlen(b->first);
    memcpy(id, b->first, fl + 1);
    if (n > 1) {
        id[fl] = '+';
        id[fl + 1 + util_i64(id + fl + 1, n)] = '\0';
    }
    if (b->hold_until > 0) {
        until[util_i64(until, b->hold_until)] = '\0';
        hdrs[2 * nhdr] = ORDERS_HDR_HOLD_UNTIL;
        hdrs[2 * nhdr++ + 1] = until;
    }
    if (n > 1) {
        count[util_i64(count, n)] = '\0';
        hdrs[2 * nhdr] = ORDERS_HDR_COUNT;
        hdrs[2 * nhdr++ + 1] = count;
    }
    waiter_t one = b->w[0], *many = NULL;
    if (n > 1) { /* the message's entry takes the array; the next batch makes another */
        many = b->w;
        b->w = NULL;
        b->wcap = 0;
    }
    size_t len = b->len;
    b->n = 0;
    b->len = 0;
    l->open--;
    /* b is empty before any callback runs (a callback may publish again). */
    if (send_msg(l, b->event, id, b->body, len, hdrs, nhdr, one, many, n) == 0)
        return;
    l->inflight -= n;
    answer(many != NULL ? many : &one, n, -1, 0);
    free(many);
}

static void flush_all(orders_lane_t *l)
{
    for (unsigned k = 0; k < OPEN_BATCHES; k++)
        batch_flush(l, &l->batches[k]);
}

/* The end of a loop turn: what this turn's callbacks published leaves now. */
static void on_check(uv_check_t *h)
{
    orders_lane_t *l = h->data;
    flush_all(l);
    if (l->open == 0) {
        uv_idle_stop(&l->idle);
        uv_check_stop(&l->check);
    }
}

static void on_idle(uv_idle_t *h)
{
    (void)h; /* only there so that poll does not block while a batch waits for on_check */
}

/* The open batch for (event, hold_until) with room for a record of len bytes: an empty one is
 * taken, a full one sent first, and with every batch taken by another pair, one is sent. NULL
 * when the lane closed meanwhile (a callback of a failed send). */
static batch_t *batch_for(orders_lane_t *l, const char *event, int64_t hold_until, size_t len)
{
    while (!l->closing) {
        batch_t *hit = NULL, *empty = NULL;
        for (unsigned k = 0; k < OPEN_BATCHES && hit == NULL; k++) {
            batch_t *b = &l->batches[k];
            if (b->n == 0)
                empty = empty != NULL ? empty : b;
            else if (b->hold_until == hold_until && strcmp(b->event, event) == 0)
                hit = b;
        }
        if (hit != NULL && hit->n < BATCH_MAX_RECORDS && hit->len + 1 + len <= BATCH_MAX_BYTES)
            return hit;
        if (hit == NULL && empty != NULL) {
            snprintf(empty->event, sizeof(empty->event), "%s", event);
            empty->hold_until = hold_until;
            return empty;
        }
        batch_flush(l, hit != NULL ? hit : &l->batches[0]);
    }
    return NULL;
}

/* Appends one record; -1 out of memory (nothing appended). */
static int batch_append(orders_lane_t *l, batch_t *b, const char *order_id, const char *payload,
                        size_t len, waiter_t w)
{
    if (b->n == b->wcap) {
        unsigned cap = b->wcap ? b->wcap * 2 : 16;
        waiter_t *nw = realloc(b->w, cap * sizeof(*nw));
        if (nw == NULL)
            return -1;
        b->w = nw;
        b->wcap = cap;
    }
    if (b->len + 1 + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + 1 + len)
            cap *= 2;
        char *body = realloc(b->body, cap);
        if (body == NULL)
            return -1;
        b->body = body;
        b->cap = cap;
    }
    if (b->n > 0)
        b->body[b->len++] = '\n';
    memcpy(b->body + b->len, payload, len);
    b->len += len;
    if (b->n == 0) {
        snprintf(b->first, sizeof(b->first), "%s", order_id);
        if (l->open++ == 0) {
            uv_idle_start(&l->idle, on_idle);
            uv_check_start(&l->check, on_check);
        }
    }
    b->w[b->n++] = w;
    return 0;
}

int orders_publish(orders_lane_t *lane, const char *event, const char *order_id, int64_t hold_until,
                   const char *payload, size_t len, orders_ack_fn cb, void *data)
{
    orders_lane_t *l = lane;
    char until[24];
    const char *hdr[2] = {ORDERS_HDR_HOLD_UNTIL, until};
    if (hold_until < 0)
        hold_until = 0;
    if (!lane_accepts(l) || strlen(event) > SNATCH_NAME_MAX ||
        strlen(order_id) > KEYSPACE_ORDER_ID_MAX)
        return -1;
    /* A record holding a newline (a policy's order()) could not be told apart from two: it
     * travels alone, as does one too big for a batch. */
    if (len >= BATCH_MAX_BYTES || memchr(payload, '\n', len) != NULL) {
        snprintf(until, sizeof(until), "%" PRId64, hold_until);
        return publish_one(l, event, order_id, payload, len, hdr, hold_until > 0, cb, data);
    }
    batch_t *b = batch_for(l, event, hold_until, len);
    if (b == NULL || batch_append(l, b, order_id, payload, len, (waiter_t){cb, data}) != 0)
        return -1;
    l->inflight++;
    metrics_orders_inflight(1);
    return 0;
}

unsigned orders_lane_inflight(const orders_lane_t *lane)
{
    return lane != NULL ? lane->inflight : 0;
}

static void on_lane_handle_closed(uv_handle_t *h)
{
    orders_lane_t *l = h->data;
    if (--l->open_handles == 0) {
        lane_free(l);
        nats_ReleaseThreadMemory();
    }
}

void orders_lane_close(orders_lane_t *lane)
{
    orders_lane_t *l = lane;
    if (l == NULL || l->closing)
        return;
    if (l->slot != NULL) {
        uv_mutex_lock(&l->slot->mu);
        l->slot->lane = NULL;
        l->slot->used = false;
        uv_mutex_unlock(&l->slot->mu);
    }
    l->closing = true; /* before the callbacks: a publish from one of them is refused */
    for (unsigned k = 0; k < OPEN_BATCHES; k++) {
        batch_t *b = &l->batches[k];
        unsigned n = b->n;
        if (n == 0)
            continue;
        waiter_t *w = b->w;
        b->w = NULL;
        b->wcap = b->n = 0;
        l->open--;
        l->inflight -= n;
        answer(w, n, -1, 0);
        free(w);
    }
    while (l->oldest >= 0)
        pending_finish(l, l->oldest, -1);
    jsCtx_Destroy(l->js);
    l->js = NULL;
    uv_close((uv_handle_t *)&l->async, on_lane_handle_closed);
    uv_close((uv_handle_t *)&l->timer, on_lane_handle_closed);
    uv_close((uv_handle_t *)&l->check, on_lane_handle_closed);
    uv_close((uv_handle_t *)&l->idle, on_lane_handle_closed);
}
