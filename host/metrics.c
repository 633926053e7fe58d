/* Metrics: per-thread slots of relaxed atomic counters (a thread writes only its own slot, so the
 * cache line never bounces; atomics only so that the renderer and an unregistered thread sharing
 * slot 0 read and write safely). Rendered on demand in Prometheus text format. */
#include "metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stock.h"

#define METRICS_SLOTS 64
#define LUA_COUNTERS 64

static const int status_codes[] = {200, 202, 400, 401, 403, 404, 405, 408,
                                   409, 413, 425, 429, 431, 500, 503, 505};
#define N_STATUS (ARRAY_SIZE(status_codes) + 1) /* last: any other */

/* Redis round trip buckets, microseconds. */
static const uint64_t rtt_bounds[] = {100,   250,   500,   1000,   2500,   5000,
                                      10000, 25000, 50000, 100000, 250000, 1000000};
#define N_RTT (ARRAY_SIZE(rtt_bounds) + 1)

typedef struct slot {
    _Atomic uint64_t requests[ROUTE__COUNT][N_STATUS];
    _Atomic uint64_t outcomes[OUTCOME__COUNT];
    _Atomic uint64_t rtt[N_RTT];
    _Atomic uint64_t rtt_sum_us;
    _Atomic uint64_t http_errors[N_STATUS];
} __attribute__((aligned(64))) slot_t;

static slot_t slots[METRICS_SLOTS];
static _Atomic int next_slot = 1; /* slot 0: threads that never registered */
static _Thread_local int my_slot;

static _Atomic uint64_t reloads_ok, reloads_failed;
static _Atomic int64_t orders_inflight;
static _Atomic int64_t connections[METRICS_SLOTS];

static pthread_mutex_t lua_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    char name[48];
    double value;
} lua_counters[LUA_COUNTERS];
static int n_lua_counters;

static const char *route_names[ROUTE__COUNT] = {"snatch",      "event",   "admin_event", "order",
                                                "user_orders", "metrics", "healthz",     "other"};
static const char *outcome_names[OUTCOME__COUNT] = {
    "sold",          "pending",  "sold_out_local", "sold_out_redis",
    "limit_reached", "rejected", "bad_request",    "unavailable"};

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

void metrics_request(metrics_route_t route, int status)
{
    if ((unsigned)route >= ROUTE__COUNT)
        route = ROUTE_OTHER;
    BUMP(slots[my_slot].requests[route][status_index(status)]);
}

void metrics_outcome(metrics_outcome_t outcome)
{
    if ((unsigned)outcome < OUTCOME__COUNT)
        BUMP(slots[my_slot].outcomes[outcome]);
}

void metrics_redis_rtt(uint64_t usec)
{
    size_t i = 0;
    while (i < ARRAY_SIZE(rtt_bounds) && usec > rtt_bounds[i])
        i++;
    BUMP(slots[my_slot].rtt[i]);
    atomic_fetch_add_explicit(&slots[my_slot].rtt_sum_us, usec, memory_order_relaxed);
}

void metrics_policy_reload(int ok)
{
    atomic_fetch_add(ok ? &reloads_ok : &reloads_failed, 1);
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

/* A growable text buffer for the renderer (not the hot path). */
typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} out_t;

static void out_printf(out_t *o, const char *fmt, ...)
{
    if (o->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->failed = 1;
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t ncap = (o->cap + (size_t)n) * 2;
        char *nb = realloc(o->buf, ncap);
        if (nb == NULL) {
            o->failed = 1;
            return;
        }
        o->buf = nb;
        o->cap = ncap;
    }
}

static uint64_t sum_field(size_t offset)
{
    uint64_t total = 0;
    for (int s = 0; s < METRICS_SLOTS; s++)
        total += atomic_load_explicit((_Atomic uint64_t *)((char *)&slots[s] + offset),
                                      memory_order_relaxed);
    return total;
}

#define SUM(member) sum_field(offsetof(slot_t, member))

static void render_stock(stock_event_t *ev, void *arg)
{
    out_t *o = arg;
    out_printf(o, "snatch_local_stock_left{event=\"%s\"} %lld\n", ev->name,
               (long long)atomic_load(&ev->local_left));
    out_printf(o, "snatch_local_quota{event=\"%s\"} %lld\n", ev->name,
               (long long)atomic_load(&ev->quota));
    out_printf(o, "snatch_event_sold_out{event=\"%s\"} %d\n", ev->name,
               atomic_load(&ev->sold_out) ? 1 : 0);
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

static void render_backend_errors(out_t *o)
{
    out_printf(o, "# HELP snatch_backend_errors_total Failed attempts to set up or use a Redis "
                  "or NATS connection, each retried.\n");
    out_printf(o, "# TYPE snatch_backend_errors_total counter\n");
    for (int i = 0; i < METRICS_BACKEND__COUNT; i++)
        out_printf(o, "snatch_backend_errors_total{backend=\"%s\",step=\"%s\"} %llu\n",
                   backend_steps[i].backend, backend_steps[i].step,
                   (unsigned long long)atomic_load(&backend_errors[i]));
}

char *metrics_render(size_t *len)
{
    out_t o = {.cap = 16384};
    o.buf = malloc(o.cap);
    if (o.buf == NULL)
        return NULL;
    out_printf(&o, "# TYPE snatch_http_requests_total counter\n");
    for (int r = 0; r < ROUTE__COUNT; r++)
        for (size_t s = 0; s < N_STATUS; s++) {
            uint64_t v = SUM(requests[r][s]);
            if (v == 0)
                continue;
            if (s < ARRAY_SIZE(status_codes))
                out_printf(&o, "snatch_http_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                           route_names[r], status_codes[s], (unsigned long long)v);
            else
                out_printf(&o, "snatch_http_requests_total{route=\"%s\",status=\"other\"} %llu\n",
                           route_names[r], (unsigned long long)v);
        }
    out_printf(&o, "# TYPE snatch_http_errors_total counter\n");
    for (size_t s = 0; s < ARRAY_SIZE(status_codes); s++) {
        uint64_t v = SUM(http_errors[s]);
        if (v)
            out_printf(&o, "snatch_http_errors_total{status=\"%d\"} %llu\n", status_codes[s],
                       (unsigned long long)v);
    }
    out_printf(&o, "# TYPE snatch_snatch_outcomes_total counter\n");
    for (int i = 0; i < OUTCOME__COUNT; i++)
        out_printf(&o, "snatch_snatch_outcomes_total{outcome=\"%s\"} %llu\n", outcome_names[i],
                   (unsigned long long)SUM(outcomes[i]));
    out_printf(&o, "# TYPE snatch_redis_rtt_seconds histogram\n");
    uint64_t cum = 0;
    for (size_t i = 0; i < N_RTT; i++) {
        cum += SUM(rtt[i]);
        if (i < ARRAY_SIZE(rtt_bounds))
            out_printf(&o, "snatch_redis_rtt_seconds_bucket{le=\"%g\"} %llu\n", rtt_bounds[i] / 1e6,
                       (unsigned long long)cum);
        else
            out_printf(&o, "snatch_redis_rtt_seconds_bucket{le=\"+Inf\"} %llu\n",
                       (unsigned long long)cum);
    }
    out_printf(&o, "snatch_redis_rtt_seconds_sum %g\n", SUM(rtt_sum_us) / 1e6);
    out_printf(&o, "snatch_redis_rtt_seconds_count %llu\n", (unsigned long long)cum);
    out_printf(&o, "# TYPE snatch_policy_reloads_total counter\n");
    out_printf(&o, "snatch_policy_reloads_total{result=\"ok\"} %llu\n",
               (unsigned long long)atomic_load(&reloads_ok));
    out_printf(&o, "snatch_policy_reloads_total{result=\"error\"} %llu\n",
               (unsigned long long)atomic_load(&reloads_failed));
    int64_t conns = 0;
    for (int i = 0; i < METRICS_SLOTS; i++)
        conns += atomic_load(&connections[i]);
    out_printf(&o, "# TYPE snatch_connections gauge\nsnatch_connections %lld\n", (long long)conns);
    out_printf(&o, "# TYPE snatch_orders_inflight gauge\nsnatch_orders_inflight %lld\n",
               (long long)atomic_load(&orders_inflight));
    out_printf(&o, "# TYPE snatch_local_stock_left gauge\n");
    stock_foreach(render_stock, &o);
    pthread_mutex_lock(&lua_lock);
    if (n_lua_counters)
        out_printf(&o, "# TYPE snatch_policy_counter_total counter\n");
    for (int i = 0; i < n_lua_counters; i++)
        out_printf(&o, "snatch_policy_counter_total{name=\"%s\"} %g\n", lua_counters[i].name,
                   lua_counters[i].value);
    pthread_mutex_unlock(&lua_lock);
    render_backend_errors(&o);
    if (o.failed) {
        free(o.buf);
        return NULL;
    }
    *len = o.len;
    return o.buf;
}
