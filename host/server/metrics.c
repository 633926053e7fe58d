/* Metrics: per-thread slots of relaxed atomic counters (a thread writes only its own slot, so the
 * cache line never bounces; atomics only so that the renderer and an unregistered thread sharing
 * slot 0 read and write safely). Rendered on demand in Prometheus text format, every family with
 * HELP and TYPE and its lines together. */
#include "metrics.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "promtext.h"
#include "stallwatch.h"
#include "stock.h"

#define METRICS_SLOTS 64
#define LUA_COUNTERS 64

static const int status_codes[] = {200, 202, 400, 401, 403, 404, 405, 408, 409,
                                   413, 422, 425, 429, 431, 500, 503, 505};
#define N_STATUS (ARRAY_SIZE(status_codes) + 1) /* last: any other */

/* Latency buckets (request, Redis round trip, JetStream ack), nanoseconds: from the sold-out
 * path's microseconds to the ack timeout's seconds. */
static const uint64_t lat_bounds[] = {10000,      25000,      50000,     100000,    250000,
                                      500000,     1000000,    2500000,   5000000,   10000000,
                                      25000000,   50000000,   100000000, 250000000, 500000000,
                                      1000000000, 2500000000, 5000000000};
#define N_LAT ARRAY_SIZE(lat_bounds)

typedef struct hist {
    _Atomic uint64_t b[N_LAT + 1];
    _Atomic uint64_t sum_ns;
} hist_t;

typedef struct slot {
    _Atomic uint64_t requests[ROUTE__COUNT][N_STATUS];
    hist_t latency[ROUTE__COUNT];
    _Atomic uint64_t outcomes[OUTCOME__COUNT];
    hist_t rtt;
    hist_t ack;
    _Atomic uint64_t ack_failed;
    _Atomic uint64_t http_errors[N_STATUS];
} __attribute__((aligned(64))) slot_t;

static slot_t slots[METRICS_SLOTS];
static _Atomic int next_slot = 1; /* slot 0: threads that never registered */
static _Thread_local int my_slot;

static _Atomic uint64_t reloads_ok, reloads_failed;
static _Atomic int64_t deduct_pending;
static _Atomic int64_t orders_inflight;
static _Atomic int64_t connections[METRICS_SLOTS];
static _Atomic uint64_t rec_passes_ok, rec_passes_failed, rec_stale_seen, rec_republished;
static _Atomic uint64_t rec_malformed_seen;
static _Atomic uint64_t repairs_ok, repairs_failed, repair_restored, repair_gated, repair_oversold;
static _Atomic int64_t rec_stale_last, rec_malformed_last;

static pthread_mutex_t lua_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    char name[48];
    double value;
} lua_counters[LUA_COUNTERS];
static int n_lua_counters;

static const char *route_names[ROUTE__COUNT] = {"snatch",      "event",   "admin_event", "order",
                                                "user_orders", "metrics", "healthz",     "other"};
static const char *outcome_names[OUTCOME__COUNT] = {
    "sold",     "pending",     "sold_out_local", "sold_out_redis", "limit_reached",
    "rejected", "bad_request", "unavailable",    "paused"};

void metrics_init(void)
{
    memset(slots, 0, sizeof(slots));
}

void metrics_thread_register(void)
{
    int s = atomic_fetch_add(&next_slot, 1);
    my_slot = s < METRICS_SLOTS ? s : 0;
}

static size_t status_index(int status)
{
    for (size_t i = 0; i < ARRAY_SIZE(status_codes); i++)
        if (status_codes[i] == status)
            return i;
    return N_STATUS - 1;
}

#define BUMP(field) atomic_fetch_add_explicit(&(field), 1, memory_order_relaxed)

static void observe(hist_t *h, uint64_t ns)
{
    BUMP(h->b[prom_bucket(lat_bounds, N_LAT, ns)]);
    atomic_fetch_add_explicit(&h->sum_ns, ns, memory_order_relaxed);
}

void metrics_request(metrics_route_t route, int status, uint64_t received_ns)
{
    if ((unsigned)route >= ROUTE__COUNT)
        route = ROUTE_OTHER;
    slot_t *s = &slots[my_slot];
    BUMP(s->requests[route][status_index(status)]);
    if (received_ns != 0)
        observe(&s->latency[route], uv_hrtime() - received_ns);
}

void metrics_outcome(metrics_outcome_t outcome)
{
    if ((unsigned)outcome < OUTCOME__COUNT)
        BUMP(slots[my_slot].outcomes[outcome]);
}

void metrics_redis_rtt(uint64_t usec)
{
    observe(&slots[my_slot].rtt, usec * 1000);
}

void metrics_orders_ack(int ok, uint64_t sent_ns)
{
    if (ok)
        observe(&slots[my_slot].ack, uv_hrtime() - sent_ns);
    else
        BUMP(slots[my_slot].ack_failed);
}

void metrics_reconcile_pass(int ok, int64_t stale, int64_t republished, int64_t malformed)
{
    atomic_fetch_add(ok ? &rec_passes_ok : &rec_passes_failed, 1);
    if (stale > 0)
        atomic_fetch_add(&rec_stale_seen, (uint64_t)stale);
    if (republished > 0)
        atomic_fetch_add(&rec_republished, (uint64_t)republished);
    if (malformed > 0)
        atomic_fetch_add(&rec_malformed_seen, (uint64_t)malformed);
    if (!ok)
        return; /* a failed pass saw only part of the backlog: keep the last full counts */
    atomic_store(&rec_stale_last, stale);
    atomic_store(&rec_malformed_last, malformed);
}

void metrics_repair(int ok, int64_t restored, int64_t oversold)
{
    atomic_fetch_add(ok ? &repairs_ok : &repairs_failed, 1);
    if (restored > 0)
        atomic_fetch_add(&repair_restored, (uint64_t)restored);
    if (oversold > 0)
        atomic_fetch_add(&repair_oversold, (uint64_t)oversold);
}

void metrics_repair_gated(void)
{
    atomic_fetch_add(&repair_gated, 1);
}

void metrics_policy_reload(int ok)
{
    atomic_fetch_add(ok ? &reloads_ok : &reloads_failed, 1);
}

void metrics_deduct_script_pending(int delta)
{
    atomic_fetch_add(&deduct_pending, delta);
}

void metrics_http_error(int status)
{
    BUMP(slots[my_slot].http_errors[status_index(status)]);
}

void metrics_lua_counter(const char *name, size_t len, double inc)
{
    if (len == 0 || len >= sizeof(lua_counters[0].name))
        return;
    pthread_mutex_lock(&lua_lock);
    int i;
    for (i = 0; i < n_lua_counters; i++)
        if (strlen(lua_counters[i].name) == len && memcmp(lua_counters[i].name, name, len) == 0)
            break;
    if (i == n_lua_counters && n_lua_counters < LUA_COUNTERS) {
        /* Only metric-name-safe characters: the name is printed verbatim as a label value. */
        for (size_t k = 0; k < len; k++) {
            char c = name[k];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_')) {
                pthread_mutex_unlock(&lua_lock);
                return;
            }
        }
        memcpy(lua_counters[i].name, name, len);
        lua_counters[i].name[len] = '\0';
        n_lua_counters++;
    }
    if (i < n_lua_counters)
        lua_counters[i].value += inc;
    pthread_mutex_unlock(&lua_lock);
}

void metrics_set_connections(int worker, int64_t n)
{
    if (worker >= 0 && worker < METRICS_SLOTS)
        atomic_store(&connections[worker], n);
}

void metrics_orders_inflight(int64_t delta)
{
    atomic_fetch_add(&orders_inflight, delta);
}

/* ---- rendering (not the hot path) ---- */

static uint64_t sum_field(size_t offset)
{
    uint64_t total = 0;
    for (int s = 0; s < METRICS_SLOTS; s++)
        total += atomic_load_explicit((_Atomic uint64_t *)((char *)&slots[s] + offset),
                                      memory_order_relaxed);
    return total;
}

#define SUM(member) sum_field(offsetof(slot_t, member))

static void render_hist(prom_buf_t *o, const char *name, const char *labels, size_t offset)
{
    uint64_t counts[N_LAT + 1];
    for (size_t i = 0; i <= N_LAT; i++)
        counts[i] = sum_field(offset + offsetof(hist_t, b) + i * sizeof(_Atomic uint64_t));
    prom_histogram_ns(o, name, labels, lat_bounds, N_LAT, counts,
                      sum_field(offset + offsetof(hist_t, sum_ns)));
}

/* Backend setup errors: rare, written from loop threads and the NATS and reconciler threads. */
static _Atomic uint64_t backend_errors[METRICS_BACKEND__COUNT];
static const struct {
    const char *backend, *step;
} backend_steps[METRICS_BACKEND__COUNT] = {{"redis", "connect"},      {"redis", "auth"},
                                           {"redis", "script_load"},  {"redis", "event_refresh"},
                                           {"redis", "pending_hdel"}, {"nats", "connect"},
                                           {"nats", "stream"}};

void metrics_backend_error(metrics_backend_step_t step)
{
    if ((unsigned)step < METRICS_BACKEND__COUNT)
        atomic_fetch_add_explicit(&backend_errors[step], 1, memory_order_relaxed);
}

static void render_backend_errors(prom_buf_t *o)
{
    prom_family(o, "snatch_backend_errors_total", "counter",
                "Failed attempts to set up or use a Redis or NATS connection, each retried.");
    for (int i = 0; i < METRICS_BACKEND__COUNT; i++)
        prom_printf(o, "snatch_backend_errors_total{backend=\"%s\",step=\"%s\"} %llu\n",
                    backend_steps[i].backend, backend_steps[i].step,
                    (unsigned long long)atomic_load(&backend_errors[i]));
}

static void render_requests(prom_buf_t *o)
{
    prom_family(o, "snatch_http_requests_total", "counter",
                "HTTP requests answered, by route and status.");
    for (int r = 0; r < ROUTE__COUNT; r++)
        for (size_t s = 0; s < N_STATUS; s++) {
            uint64_t v = SUM(requests[r][s]);
            if (v == 0)
                continue;
            if (s < ARRAY_SIZE(status_codes))
                prom_printf(o, "snatch_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                            route_names[r], status_codes[s], (unsigned long long)v);
            else
                prom_printf(o, "snatch_http_requests_total{route=\"%s\",status=\"other\"} %llu\n",
                            route_names[r], (unsigned long long)v);
        }
    prom_family(o, "snatch_http_request_duration_seconds", "histogram",
                "Time from a complete request to its answer, by route.");
    for (int r = 0; r < ROUTE__COUNT; r++) {
        char labels[64];
        snprintf(labels, sizeof(labels), "route=\"%s\"", route_names[r]);
        render_hist(o, "snatch_http_request_duration_seconds", labels,
                    offsetof(slot_t, latency) + (size_t)r * sizeof(hist_t));
    }
    prom_family(o, "snatch_http_errors_total", "counter",
                "Requests refused while parsing (400, 408, 413, 431), by status.");
    for (size_t s = 0; s < ARRAY_SIZE(status_codes); s++) {
        uint64_t v = SUM(http_errors[s]);
        if (v)
            prom_printf(o, "snatch_http_errors_total{status=\"%d\"} %llu\n", status_codes[s],
                        (unsigned long long)v);
    }
    int64_t conns = 0;
    for (int i = 0; i < METRICS_SLOTS; i++)
        conns += atomic_load(&connections[i]);
    prom_family(o, "snatch_connections", "gauge", "Open HTTP connections.");
    prom_printf(o, "snatch_connections %lld\n", (long long)conns);
}

/* Buyers per deduction batch (deduct_batch.c): one observation per EVALSHA, not per sale. */
static const uint64_t batch_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};
#define N_BATCH ARRAY_SIZE(batch_bounds)
static _Atomic uint64_t batch_counts[N_BATCH + 1], batch_sum;

void metrics_deduct_batch(size_t buyers)
{
    atomic_fetch_add_explicit(&batch_counts[prom_bucket(batch_bounds, N_BATCH, buyers)], 1,
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&batch_sum, buyers, memory_order_relaxed);
}

static _Atomic uint64_t unreplicated_batches;

void metrics_deduct_unreplicated(void)
{
    atomic_fetch_add_explicit(&unreplicated_batches, 1, memory_order_relaxed);
}

static void render_batches(prom_buf_t *o)
{
    uint64_t counts[N_BATCH + 1];
    for (size_t i = 0; i <= N_BATCH; i++)
        counts[i] = atomic_load(&batch_counts[i]);
    prom_family(o, "snatch_deduct_batch_size", "histogram",
                "Buyers per deduction batch (one EVALSHA of deduct.lua).");
    prom_histogram(o, "snatch_deduct_batch_size", "", batch_bounds, N_BATCH, counts,
                   atomic_load(&batch_sum));
    prom_family(o, "snatch_deduct_unreplicated_batches_total", "counter",
                "Deduction batches fewer than --redis-replicas replicas acknowledged (WAIT): "
                "their sales were answered 202 and not published.");
    prom_printf(o, "snatch_deduct_unreplicated_batches_total %llu\n",
                (unsigned long long)atomic_load(&unreplicated_batches));
}

static void render_orders(prom_buf_t *o)
{
    render_batches(o);
    prom_family(o, "snatch_snatch_outcomes_total", "counter", "POST /snatch results, by outcome.");
    for (int i = 0; i < OUTCOME__COUNT; i++)
        prom_printf(o, "snatch_snatch_outcomes_total{outcome=\"%s\"} %llu\n", outcome_names[i],
                    (unsigned long long)SUM(outcomes[i]));
    prom_family(o, "snatch_redis_rtt_seconds", "histogram", "Redis command round trip.");
    render_hist(o, "snatch_redis_rtt_seconds", "", offsetof(slot_t, rtt));
    prom_family(o, "snatch_jetstream_ack_duration_seconds", "histogram",
                "Order publish to its JetStream acknowledgement.");
    render_hist(o, "snatch_jetstream_ack_duration_seconds", "", offsetof(slot_t, ack));
    prom_family(o, "snatch_jetstream_publish_failures_total", "counter",
                "Order publishes not acknowledged in time (left to reconciliation).");
    prom_printf(o, "snatch_jetstream_publish_failures_total %llu\n",
                (unsigned long long)SUM(ack_failed));
    prom_family(o, "snatch_orders_inflight", "gauge", "Order publishes waiting for their ack.");
    prom_printf(o, "snatch_orders_inflight %lld\n", (long long)atomic_load(&orders_inflight));
    prom_family(o, "snatch_reconciler_passes_total", "counter",
                "Passes of the pending-order reconciler, by result.");
    prom_printf(o, "snatch_reconciler_passes_total{result=\"ok\"} %llu\n",
                (unsigned long long)atomic_load(&rec_passes_ok));
    prom_printf(o, "snatch_reconciler_passes_total{result=\"error\"} %llu\n",
                (unsigned long long)atomic_load(&rec_passes_failed));
    prom_family(o, "snatch_reconciler_pending_seen_total", "counter",
                "Pending orders older than the grace period found by the reconciler.");
    prom_printf(o, "snatch_reconciler_pending_seen_total %llu\n",
                (unsigned long long)atomic_load(&rec_stale_seen));
    prom_family(o, "snatch_reconciler_republished_total", "counter",
                "Pending orders the reconciler republished and JetStream acknowledged.");
    prom_printf(o, "snatch_reconciler_republished_total %llu\n",
                (unsigned long long)atomic_load(&rec_republished));
    prom_family(o, "snatch_reconciler_pending_orders", "gauge",
                "Pending orders older than the grace period found by the last pass.");
    prom_printf(o, "snatch_reconciler_pending_orders %lld\n",
                (long long)atomic_load(&rec_stale_last));
    prom_family(o, "snatch_reconciler_malformed_pending_total", "counter",
                "Malformed pending entries found by the reconciler's passes (left in Redis).");
    prom_printf(o, "snatch_reconciler_malformed_pending_total %llu\n",
                (unsigned long long)atomic_load(&rec_malformed_seen));
    prom_family(o, "snatch_reconciler_malformed_pending", "gauge",
                "Malformed pending entries found by the last pass.");
    prom_printf(o, "snatch_reconciler_malformed_pending %lld\n",
                (long long)atomic_load(&rec_malformed_last));
    prom_family(o, "snatch_repairs_total", "counter",
                "Repairs of an event's Redis state from the persisted orders, by result.");
    prom_printf(o, "snatch_repairs_total{result=\"ok\"} %llu\n",
                (unsigned long long)atomic_load(&repairs_ok));
    prom_printf(o, "snatch_repairs_total{result=\"error\"} %llu\n",
                (unsigned long long)atomic_load(&repairs_failed));
    prom_family(o, "snatch_repair_orders_restored_total", "counter",
                "Persisted orders a repair found missing in Redis and restored.");
    prom_printf(o, "snatch_repair_orders_restored_total %llu\n",
                (unsigned long long)atomic_load(&repair_restored));
    prom_family(o, "snatch_repair_gated_total", "counter",
                "Sales answered 503 repairing: the event's Redis node had not verified it yet.");
    prom_printf(o, "snatch_repair_gated_total %llu\n",
                (unsigned long long)atomic_load(&repair_gated));
    prom_family(o, "snatch_repair_oversold_units_total", "counter",
                "Units by which persisted orders exceeded an event's stock after a repair.");
    prom_printf(o, "snatch_repair_oversold_units_total %llu\n",
                (unsigned long long)atomic_load(&repair_oversold));
}

typedef struct {
    prom_buf_t *o;
    int which;
} stock_render_t;

static void render_stock(stock_event_t *ev, void *arg)
{
    stock_render_t *sr = arg;
    stock_view_t v;
    stock_view(ev, &v);
    if (sr->which == 0)
        prom_printf(sr->o, "snatch_local_stock_left{event=\"%s\"} %lld\n", v.name,
                    (long long)v.left);
    else if (sr->which == 1)
        prom_printf(sr->o, "snatch_local_quota{event=\"%s\"} %lld\n", v.name, (long long)v.quota);
    else
        prom_printf(sr->o, "snatch_event_sold_out{event=\"%s\"} %d\n", v.name, v.sold_out ? 1 : 0);
}

static void render_stock_families(prom_buf_t *o)
{
    static const char *const fam[][2] = {
        {"snatch_local_stock_left", "Units this host may still sell from its local quota."},
        {"snatch_local_quota", "Units of the event's stock this host holds as its quota."},
        {"snatch_event_sold_out", "1 once this host knows the event is sold out."},
    };
    for (int i = 0; i < 3; i++) {
        stock_render_t sr = {o, i};
        prom_family(o, fam[i][0], "gauge", fam[i][1]);
        stock_foreach(render_stock, &sr);
    }
}

char *metrics_render(size_t *len)
{
    prom_buf_t o;
    prom_init(&o);
    prom_family(&o, "snatch_build_info", "gauge", "Always 1; the version as a label.");
    prom_printf(&o, "snatch_build_info{program=\"snatch-host\",version=\"%s\"} 1\n",
                SNATCH_VERSION);
    render_requests(&o);
    render_orders(&o);
    prom_family(&o, "snatch_policy_reloads_total", "counter", "Policy script reloads, by result.");
    prom_printf(&o, "snatch_policy_reloads_total{result=\"ok\"} %llu\n",
                (unsigned long long)atomic_load(&reloads_ok));
    prom_printf(&o, "snatch_policy_reloads_total{result=\"error\"} %llu\n",
                (unsigned long long)atomic_load(&reloads_failed));
    prom_family(&o, "snatch_deduct_script_pending", "gauge",
                "Deduct script reloads, per thread, that Redis has not answered yet.");
    prom_printf(&o, "snatch_deduct_script_pending %lld\n", (long long)atomic_load(&deduct_pending));
    render_stock_families(&o);
    pthread_mutex_lock(&lua_lock);
    prom_family(&o, "snatch_policy_counter_total", "counter",
                "Counters bumped by the policy script (host.counter), by name.");
    for (int i = 0; i < n_lua_counters; i++)
        prom_printf(&o, "snatch_policy_counter_total{name=\"%s\"} %.17g\n", lua_counters[i].name,
                    lua_counters[i].value);
    pthread_mutex_unlock(&lua_lock);
    render_backend_errors(&o);
    stallwatch_render(&o);
    return prom_finish(&o, len);
}
