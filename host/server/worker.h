/* A loop thread of snatch-host: one libuv loop, its HTTP listener (SO_REUSEPORT on the shared
 * port), its own Redis connection, its own policy lua_State and its own order-publishing lane.
 * Other threads talk to a worker only through worker_post_* (a uv_async_t wake-up). */
#ifndef SNATCH_WORKER_H
#define SNATCH_WORKER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "auth.h"
#include "http.h"
#include "orders.h"
#include "redis.h"
#include "script.h"
#include "trust.h"

/* Process-wide settings and shared services, set up by main before the workers start. */
typedef struct host_config {
    const char *listen_addr;
    int listen_port;
    int threads;
    const char *redis_host; /* the first of redis_seeds */
    int redis_port;
    const char *redis_seeds; /* --redis: HOST:PORT[,HOST:PORT...] */
    int redis_replicas;      /* --redis-replicas; -1: 1 on a cluster whose masters have replicas */
    uint64_t redis_timeout_ms;
    const char *nats_url;
    const char *host_id;
    int hosts;
    const char *policy_path;
    const char *deduct_path;
    char admin_token[256]; /* empty: admin endpoints disabled (403) */
    size_t admin_token_len;
    uint64_t ack_timeout_ms;
    unsigned max_inflight; /* per worker */
    http_config_t http;
    /* Peers whose X-User-Id and X-Forwarded-For are believed (--trusted-proxy). */
    trust_list_t trusted_proxies;
    bool allow_query_user;         /* ?user= names the buyer (--allow-query-user), for load tools */
    const char *admin_listen_addr; /* NULL: admin API and /metrics on the public listener */
    int admin_listen_port;
    auth_config_t auth;      /* Redis and NATS credentials (auth.h) */
    char payment_token[256]; /* --payment-token-file; empty: POST .../pay answers 403 */
    size_t payment_token_len;
    uint64_t expire_interval_ms; /* the expiry sweeper's period (worker 0); 0: off */
} host_config_t;

typedef struct pending pending_t;
typedef struct deduct_batcher deduct_batcher_t;

typedef struct life_sweeper life_sweeper_t;

typedef struct host {
    host_config_t cfg;
    /* lua/order.lua as last handed to the workers (life_script_read): read at start, replaced
     * by main on SIGHUP after the workers took their own copies at setup. */
    char *life_src;
    char life_sha[41]; /* its SHA1, hex: what EVALSHA names it by (life_script_sha) */
    orders_publisher_t *orders;
    _Atomic bool stopping;
} host_t;

typedef struct worker {
    int id;
    host_t *host;
    uv_thread_t thread;
    uv_loop_t loop;
    uv_async_t wakeup;
    uv_timer_t refresh; /* re-reads known events from Redis (admin resets, sold-out) */
    http_server_t *http;
    redis_client_t *redis;
    script_t *script;
    char *life_src;    /* this thread's copy of order.lua (life.c), replaced on reload */
    char life_sha[41]; /* its SHA1 */
    orders_lane_t *orders;
    pending_t *pending;       /* acknowledged orders leaving {event}:pending (pending.h) */
    deduct_batcher_t *deduct; /* group commit of deductions (deduct_batch.h) */
    life_sweeper_t *sweeper;  /* releases expired holds (life.h); worker 0 only */
    uv_timer_t drain;         /* shutdown: waits for in-flight sales */
    uint64_t drain_deadline;
    int inflight;     /* sales between admit and answer (loop thread only) */
    bool lane_closed; /* shutdown: the order lane is gone, the acks flushed */
    bool stopping;    /* loop thread only */
    bool http_closed; /* every connection closed (loop thread only) */
    /* Deduct script replacements Redis has not answered yet, and whether this thread logged
     * one as waiting for Redis (loop thread only). */
    int deduct_unanswered;
    bool deduct_parked_logged;
    /* Set by other threads, consumed on wakeup. */
    _Atomic int reload_pending;
    _Atomic int stop_pending;
    char *pending_deduct; /* new Redis script source, handed over under reload_lock */
    char *pending_life;   /* new order.lua source and its SHA1, idem */
    char pending_life_sha[41];
    uv_mutex_t reload_lock;
    _Atomic int ready;         /* 1 listener up, -1 setup failed */
    http_server_t *admin_http; /* --admin-listen, on worker 0 only */
    int http_open;             /* servers not yet closed during a stop */
} worker_t;

/* Starts the worker's thread: loop, Redis, policy, lane, listener. Returns 0 once the listener
 * is bound, or a negative error (message logged). */
int worker_start(worker_t *w, host_t *host, int id);

/* Asks the worker to reload the policy, and to take the deduct script source and order.lua's
 * source with its SHA1 (copied; each may be NULL: the worker keeps the one it has). */
void worker_post_reload(worker_t *w, const char *deduct_source, const char *life_src,
                        const char *life_sha);

/* Asks the worker to stop accepting, finish in-flight requests, close everything and return. */
void worker_post_stop(worker_t *w);

void worker_join(worker_t *w);

#endif
