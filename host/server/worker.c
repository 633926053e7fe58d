/* A loop thread: owns its loop, listener, Redis connection, policy state and order lane, and
 * reacts to other threads only through its uv_async_t (reload, stop). Shutdown order matters:
 * stop accepting and reading (each connection closes once its pending answers are written), let
 * in-flight sales finish (their orders get acknowledged), then close the lane and Redis, and let
 * the loop run dry. */
#include "worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "deduct_batch.h"
#include "events.h"
#include "life.h"
#include "log.h"
#include "metrics.h"
#include "pending.h"
#include "stallwatch.h"
#include "util.h"

#define REFRESH_MS 500
#define DRAIN_TICK_MS 20
#define DRAIN_MAX_MS 10000
#define DRAIN_ACKS_MS 2000

static uv_sem_t *start_sem; /* signalled by each worker once its listener is up (or failed) */

static void on_closed_handle(uv_handle_t *h)
{
    (void)h;
}

/* Second to last step of a stop: HTTP is closed and no sale is in flight (or the deadline
 * passed): the order lane goes (failing, 202, what still waits for an ack) and the batch of
 * acknowledged orders is sent to Redis, whose replies the drain timer then waits for. */
static void close_lane(worker_t *w)
{
    if (w->orders) {
        orders_lane_close(w->orders);
        w->orders = NULL;
    }
    pending_flush(w->pending);
    w->lane_closed = true;
    w->drain_deadline = uv_now(&w->loop) + DRAIN_ACKS_MS;
}

/* Last step: Redis and the timers go, and the loop runs dry. */
static void finish_stop(worker_t *w)
{
    uv_timer_stop(&w->drain);
    deduct_batcher_close(w->deduct);
    w->deduct = NULL;
    pending_close(w->pending);
    w->pending = NULL;
    if (w->redis) {
        redis_client_close(w->redis);
        w->redis = NULL;
    }
    uv_close((uv_handle_t *)&w->wakeup, on_closed_handle);
    uv_close((uv_handle_t *)&w->refresh, on_closed_handle);
    uv_close((uv_handle_t *)&w->drain, on_closed_handle);
}

static void on_http_closed(void *arg)
{
    worker_t *w = arg;
    w->http = NULL;
    w->http_closed = --w->http_open == 0;
}

static void on_admin_http_closed(void *arg)
{
    worker_t *w = arg;
    w->admin_http = NULL;
    w->http_closed = --w->http_open == 0;
}

static void on_drain_tick(uv_timer_t *t)
{
    worker_t *w = container_of(t, worker_t, drain);
    bool timed_out = uv_now(&w->loop) >= w->drain_deadline;
    if (!w->lane_closed) {
        if ((w->inflight > 0 || !w->http_closed) && !timed_out)
            return;
        if (w->inflight > 0)
            log_warn("worker %d: %d sales still in flight at the shutdown deadline", w->id,
                     w->inflight);
        close_lane(w);
    }
    if (pending_inflight(w->pending) > 0 && uv_now(&w->loop) < w->drain_deadline)
        return;
    finish_stop(w);
}

/* Stop: no new connections, no new requests on open ones (http_server_close stops reading and
 * closes each connection once its pending answers are out), while sales already in flight keep
 * Redis and the order lane until they are answered. */
static void begin_stop(worker_t *w)
{
    if (w->stopping)
        return;
    w->stopping = true;
    uv_timer_stop(&w->refresh);
    life_sweeper_stop(w->sweeper);
    w->sweeper = NULL;
    w->drain_deadline = uv_now(&w->loop) + DRAIN_MAX_MS;
    uv_timer_start(&w->drain, on_drain_tick, DRAIN_TICK_MS, DRAIN_TICK_MS);
    w->http_open = 1 + (w->admin_http != NULL);
    http_server_close(w->http, on_http_closed, w);
    http_server_close(w->admin_http, on_admin_http_closed, w);
}

static void on_script_loaded(int ok, const char *err, void *arg)
{
    worker_t *w = arg;
    w->deduct_unanswered--;
    metrics_deduct_script_pending(-1);
    if (err == redis_err_superseded || err == redis_err_closing)
        return; /* a later reload's script, or the stop: nothing to tell */
    if (!ok) {
        log_error("worker %d: Redis refused the new deduct script, keeping the old: %s", w->id,
                  err ? err : "?");
    } else if (w->deduct_parked_logged && w->deduct_unanswered == 0) {
        log_info("worker %d: deduct script loaded by Redis (a reload that waited for it)", w->id);
    }
    if (w->deduct_unanswered == 0)
        w->deduct_parked_logged = false;
}

/* The script goes to every connection; one that cannot take it now keeps it and loads it first
 * thing once Redis is back (redis_client_set_script): the SIGHUP is not lost to an outage. */
static void reload_deduct(worker_t *w, const char *deduct)
{
    w->deduct_unanswered++;
    metrics_deduct_script_pending(1);
    redis_client_set_script(w->redis, deduct, on_script_loaded, w);
    if (w->deduct_unanswered == 0 || !redis_client_script_parked(w->redis))
        return;
    log_warn("worker %d: deduct script pending: Redis (or a master) is not reachable; the new "
             "script is loaded there first thing once it is back",
             w->id);
    w->deduct_parked_logged = true;
}

static void do_reload(worker_t *w)
{
    char err[512];
    script_env_t env = {.host_id = w->host->cfg.host_id, .hosts = w->host->cfg.hosts};
    script_t *fresh = NULL;
    stallwatch_doing(STALL_DOING_RELOAD);
    int rc = script_open(&fresh, w->host->cfg.policy_path, &env, err, sizeof(err));
    stallwatch_doing(STALL_DOING_LOOP);
    if (rc != 0) {
        /* main validated the file, so this is a race with an edit: keep serving the old one. */
        log_error("worker %d: policy reload refused, old policy keeps serving: %s", w->id, err);
        metrics_policy_reload(0);
    } else {
        script_close(w->script);
        w->script = fresh;
        metrics_policy_reload(1);
    }
    uv_mutex_lock(&w->reload_lock);
    char *deduct = w->pending_deduct;
    w->pending_deduct = NULL;
    char *life = w->pending_life;
    w->pending_life = NULL;
    char life_sha[41];
    memcpy(life_sha, w->pending_life_sha, sizeof(life_sha));
    uv_mutex_unlock(&w->reload_lock);
    if (deduct != NULL && w->redis != NULL)
        reload_deduct(w, deduct);
    free(deduct);
    /* No SCRIPT LOAD: the first EVALSHA of the new SHA1 answers NOSCRIPT and goes again as EVAL,
     * on every node that is asked (a cluster's masters learn it lazily). */
    if (life != NULL) {
        free(w->life_src);
        w->life_src = life;
        memcpy(w->life_sha, life_sha, sizeof(w->life_sha));
    }
}

static void on_wakeup(uv_async_t *a)
{
    worker_t *w = container_of(a, worker_t, wakeup);
    if (atomic_exchange(&w->reload_pending, 0) && !w->stopping)
        do_reload(w);
    if (atomic_exchange(&w->stop_pending, 0))
        begin_stop(w);
}

static void on_refresh(uv_timer_t *t)
{
    worker_t *w = container_of(t, worker_t, refresh);
    metrics_set_connections(w->id, (int64_t)(http_server_connections(w->http) +
                                             http_server_connections(w->admin_http)));
    events_refresh(w);
}

/* The admin listener is one server on worker 0's loop: operators' traffic is light, and the
 * public connection caps do not apply to it, so a flood of buyers cannot lock the operator out. */
static int start_admin(worker_t *w)
{
    host_config_t *cfg = &w->host->cfg;
    if (!cfg->admin_listen_addr)
        return 0;
    http_config_t acfg = cfg->http;
    acfg.admin_listener = true;
    acfg.limits = NULL;
    int rc = http_server_start(&w->admin_http, &w->loop, cfg->admin_listen_addr,
                               cfg->admin_listen_port, &acfg, api_handle, w);
    if (rc == 0)
        return 0;
    log_error("worker %d: admin listen %s:%d: %s", w->id, cfg->admin_listen_addr,
              cfg->admin_listen_port, uv_strerror(rc));
    http_server_close(w->http, NULL, NULL);
    w->http = NULL;
    return -1;
}

static int setup(worker_t *w)
{
    host_config_t *cfg = &w->host->cfg;
    char err[512];
    int rc;
    script_env_t env = {.host_id = cfg->host_id, .hosts = cfg->hosts};
    if (script_open(&w->script, cfg->policy_path, &env, err, sizeof(err)) != 0) {
        log_error("worker %d: policy: %s", w->id, err);
        return -1;
    }
    if (w->host->life_src != NULL) {
        w->life_src = strdup(w->host->life_src);
        if (w->life_src == NULL) {
            log_error("worker %d: out of memory", w->id);
            return -1;
        }
        memcpy(w->life_sha, w->host->life_sha, sizeof(w->life_sha));
    }
    char *deduct = util_read_file(cfg->deduct_path, NULL);
    if (deduct == NULL) {
        log_error("worker %d: cannot read %s", w->id, cfg->deduct_path);
        return -1;
    }
    rc = redis_client_start_seeds(&w->redis, &w->loop, cfg->redis_seeds, deduct,
                                  cfg->redis_timeout_ms, cfg->auth.redis_user,
                                  cfg->auth.redis_password);
    free(deduct);
    if (rc != 0) {
        log_error("worker %d: redis client: %s", w->id, uv_strerror(rc));
        return -1;
    }
    redis_client_on_owner_change(w->redis, events_owner_changed, w);
    rc = orders_lane_start(&w->orders, w->host->orders, &w->loop, cfg->max_inflight,
                           cfg->ack_timeout_ms);
    if (rc != 0) {
        log_error("worker %d: cannot start the order lane", w->id);
        return -1;
    }
    uv_async_init(&w->loop, &w->wakeup, on_wakeup);
    uv_timer_init(&w->loop, &w->refresh);
    uv_timer_init(&w->loop, &w->drain);
    rc = http_server_start(&w->http, &w->loop, cfg->listen_addr, cfg->listen_port, &cfg->http,
                           api_handle, w);
    if (rc != 0) {
        log_error("worker %d: listen %s:%d: %s", w->id, cfg->listen_addr, cfg->listen_port,
                  uv_strerror(rc));
        return -1;
    }
    if (w->id == 0 && start_admin(w) != 0)
        return -1;
    /* One sweeper per host is enough: the others would find what it already released. */
    if (w->id == 0)
        w->sweeper = life_sweeper_start(w, cfg->expire_interval_ms);
    /* Every worker refreshes its view; staggered so Redis sees an even trickle. */
    uv_timer_start(&w->refresh, on_refresh, REFRESH_MS + (uint64_t)w->id * 37, REFRESH_MS);
    return 0;
}

static void teardown_failed(worker_t *w)
{
    /* Setup failed part-way: release what exists; handles are closed by running the loop. */
    if (w->orders)
        orders_lane_close(w->orders);
    if (w->redis)
        redis_client_close(w->redis);
    w->orders = NULL;
    w->redis = NULL;
    if (uv_is_active((uv_handle_t *)&w->wakeup) || w->wakeup.loop == &w->loop)
        uv_close((uv_handle_t *)&w->wakeup, on_closed_handle);
    if (w->refresh.loop == &w->loop)
        uv_close((uv_handle_t *)&w->refresh, on_closed_handle);
    if (w->drain.loop == &w->loop)
        uv_close((uv_handle_t *)&w->drain, on_closed_handle);
    uv_run(&w->loop, UV_RUN_DEFAULT);
}

static void worker_main(void *arg)
{
    worker_t *w = arg;
    metrics_thread_register();
    stallwatch_attach(&w->loop, w->id);
    if (setup(w) != 0) {
        atomic_store(&w->ready, -1);
        uv_sem_post(start_sem);
        teardown_failed(w);
        goto out;
    }
    atomic_store(&w->ready, 1);
    uv_sem_post(start_sem);
    uv_run(&w->loop, UV_RUN_DEFAULT);
out:
    stallwatch_detach(&w->loop, w->id);
    script_close(w->script);
    w->script = NULL;
    free(w->life_src);
    w->life_src = NULL;
    if (uv_loop_close(&w->loop) != 0)
        log_warn("worker %d: loop closed with handles still open", w->id);
}

int worker_start(worker_t *w, host_t *host, int id)
{
    static uv_sem_t sem;
    static int sem_ready;
    if (!sem_ready) {
        uv_sem_init(&sem, 0);
        sem_ready = 1;
        start_sem = &sem;
    }
    memset(w, 0, sizeof(*w));
    w->id = id;
    w->host = host;
    uv_mutex_init(&w->reload_lock);
    int rc = uv_loop_init(&w->loop);
    if (rc != 0)
        return rc;
    rc = uv_thread_create(&w->thread, worker_main, w);
    if (rc != 0) {
        uv_loop_close(&w->loop);
        return rc;
    }
    uv_sem_wait(start_sem);
    return atomic_load(&w->ready) == 1 ? 0 : -1;
}

void worker_post_reload(worker_t *w, const char *deduct_source, const char *life_src,
                        const char *life_sha)
{
    char *copy = deduct_source ? strdup(deduct_source) : NULL;
    char *life = life_src && life_sha ? strdup(life_src) : NULL;
    if ((deduct_source && copy == NULL) || (life_src && life_sha && life == NULL))
        log_error("worker %d: out of memory: a script of this reload is not handed over", w->id);
    uv_mutex_lock(&w->reload_lock);
    free(w->pending_deduct);
    w->pending_deduct = copy;
    if (life != NULL) {
        free(w->pending_life);
        w->pending_life = life;
        snprintf(w->pending_life_sha, sizeof(w->pending_life_sha), "%s", life_sha);
    }
    uv_mutex_unlock(&w->reload_lock);
    atomic_store(&w->reload_pending, 1);
    uv_async_send(&w->wakeup);
}

void worker_post_stop(worker_t *w)
{
    atomic_store(&w->stop_pending, 1);
    uv_async_send(&w->wakeup);
}

void worker_join(worker_t *w)
{
    uv_thread_join(&w->thread);
    free(w->pending_deduct);
    w->pending_deduct = NULL;
    free(w->pending_life);
    w->pending_life = NULL;
    uv_mutex_destroy(&w->reload_lock);
}
