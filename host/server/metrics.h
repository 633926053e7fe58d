/* Counters and histograms for GET /metrics (Prometheus text format). Updated from every loop
 * thread without locks: each thread writes its own slot (metrics_thread_register), and the
 * renderer sums the slots. The names are listed in README.md (Metrics). */
#ifndef SNATCH_METRICS_H
#define SNATCH_METRICS_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    ROUTE_SNATCH,
    ROUTE_EVENT,
    ROUTE_ADMIN_EVENT,
    ROUTE_ORDER,
    ROUTE_USER_ORDERS,
    ROUTE_METRICS,
    ROUTE_HEALTH,
    ROUTE_OTHER,
    ROUTE__COUNT
} metrics_route_t;

typedef enum {
    OUTCOME_SOLD,           /* 200: deducted in Redis, order acknowledged by JetStream */
    OUTCOME_PENDING,        /* 202: deducted, order publish not yet acknowledged */
    OUTCOME_SOLD_OUT_LOCAL, /* 409 answered from local stock, Redis never asked */
    OUTCOME_SOLD_OUT_REDIS, /* 409 from Redis */
    OUTCOME_LIMIT_REACHED,  /* 409 per-user limit */
    OUTCOME_REJECTED,       /* policy admit() refused (4xx) */
    OUTCOME_BAD_REQUEST,    /* 400/404 before policy */
    OUTCOME_UNAVAILABLE,    /* 503: Redis or NATS unreachable, nothing deducted */
    OUTCOME_PAUSED,         /* 409: the sale is paused (locally known or from Redis) */
    OUTCOME__COUNT
} metrics_outcome_t;

void metrics_init(void);
/* Called once by each thread that records metrics, before it records any. */
void metrics_thread_register(void);

/* An answered request; received_ns: uv_hrtime() when it reached the handler (0: unknown, no
 * latency recorded). */
void metrics_request(metrics_route_t route, int status, uint64_t received_ns);
void metrics_outcome(metrics_outcome_t outcome);
void metrics_redis_rtt(uint64_t usec);
void metrics_policy_reload(int ok);
/* Deduct script replacements (SIGHUP) not yet answered by Redis, e.g. sent during an outage. */
void metrics_deduct_script_pending(int delta);
void metrics_http_error(int status); /* parse-level errors: 400, 408, 413, 431 */
/* host.counter(name, inc) from policy scripts: at most 64 distinct names, others are dropped. */
void metrics_lua_counter(const char *name, size_t len, double inc);
void metrics_set_connections(int worker, int64_t n);
void metrics_orders_inflight(int64_t delta);
/* A deduction batch of that many buyers was sent. */
void metrics_deduct_batch(size_t buyers);
/* A deduction batch whose WAIT found fewer replicas than --redis-replicas (its sales were
 * answered 202, not published): snatch_deduct_unreplicated_batches_total. */
void metrics_deduct_unreplicated(void);
/* A JetStream publish finished: acknowledged (ok) or failed/timed out; sent_ns: uv_hrtime() at
 * publish. */
void metrics_orders_ack(int ok, uint64_t sent_ns);
/* One pass of the host's reconciler: ok, stale pending entries it found, how many of them it
 * republished, malformed pending entries it found (left in Redis). */
void metrics_reconcile_pass(int ok, int64_t stale, int64_t republished, int64_t malformed);
/* Redis repair (repair.h): a repair finished (ok) or failed, the orders it restored, and the
 * units by which the event's persisted orders exceed its stock afterwards (0 normally). */
void metrics_repair(int ok, int64_t restored, int64_t oversold);
/* A sale was refused with 503 repairing (the event is gated on its node). */
void metrics_repair_gated(void);

/* Failed attempts to set up or use a backend connection, by step: snatch_backend_errors_total. */
typedef enum {
    METRICS_REDIS_CONNECT,
    METRICS_REDIS_AUTH,
    METRICS_REDIS_SCRIPT_LOAD,
    METRICS_REDIS_EVENT_REFRESH,
    METRICS_REDIS_PENDING_HDEL,
    METRICS_NATS_CONNECT,
    METRICS_NATS_STREAM,
    METRICS_BACKEND__COUNT
} metrics_backend_step_t;
void metrics_backend_error(metrics_backend_step_t step);

/* Renders everything (plus stock gauges) into a malloc'd buffer. Caller frees. */
char *metrics_render(size_t *len);

#endif
