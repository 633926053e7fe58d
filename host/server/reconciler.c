/* Periodic pending-order republisher of snatch-host; see reconciler.h. One thread, woken by its
 * interval or by stop; connections are made lazily and dropped on any error, so an outage of
 * Redis or NATS costs one failed pass, not a stuck thread. */
#include "reconciler.h"

#include <hiredis/hiredis.h>
#include <nats/nats.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "auth.h"
#include "log.h"
#include "metrics.h"
#include "nats_servers.h"
#include "republish.h"
#include "script.h"

#define CONNECT_TIMEOUT_MS 2000
#define MAX_PER_PASS 10000

struct reconciler {
    uv_thread_t thread;
    uv_mutex_t mu;
    uv_cond_t cond;
    bool stop;
    char *redis_host;
    int redis_port;
    char *nats_url;
    uint64_t interval_ms;
    int64_t older_than_ms;
    redisContext *rc;
    natsConnection *nc;
    const auth_config_t *auth; /* the host's, lives as long as the process */
    const char *policy_path;   /* the host's, idem */
    script_env_t env;
    script_t *script;            /* the thread's own; NULL: the built-in payload */
    _Atomic bool reload_pending; /* SIGHUP: reopen the policy before the next pass */
    bool failing;                /* the last pass failed: log the next failure only on change */
};

static void drop_connections(reconciler_t *r)
{
    if (r->rc != NULL)
        redisFree(r->rc);
    r->rc = NULL;
    if (r->nc != NULL) {
        natsConnection_Close(r->nc);
        natsConnection_Destroy(r->nc);
    }
    r->nc = NULL;
}

/* Failures are logged when a run of them starts (r->failing says one is under way). */
static int connect_all(reconciler_t *r)
{
    if (r->rc == NULL) {
        struct timeval tv = {CONNECT_TIMEOUT_MS / 1000, (CONNECT_TIMEOUT_MS % 1000) * 1000};
        r->rc = redisConnectWithTimeout(r->redis_host, r->redis_port, tv);
        if (r->rc == NULL || r->rc->err) {
            if (!r->failing)
                log_warn("reconciler: cannot connect to redis %s:%d: %s", r->redis_host,
                         r->redis_port, r->rc ? r->rc->errstr : "out of memory");
            if (r->rc)
                redisFree(r->rc);
            r->rc = NULL;
            return -1;
        }
        redisSetTimeout(r->rc, tv);
        char err[256];
        if (auth_redis_sync(r->rc, r->auth, err, sizeof(err)) != 0) {
            if (!r->failing)
                log_warn("reconciler: redis %s:%d: %s", r->redis_host, r->redis_port, err);
            redisFree(r->rc);
            r->rc = NULL;
            return -1;
        }
    }
    if (r->nc == NULL) {
        natsOptions *opts = NULL;
        natsStatus s = natsOptions_Create(&opts);
        if (s == NATS_OK)
            s = nats_servers_apply(opts, r->nats_url);
        if (s == NATS_OK)
            s = natsOptions_SetTimeout(opts, CONNECT_TIMEOUT_MS);
        if (s == NATS_OK)
            s = natsOptions_SetAllowReconnect(opts, false);
        if (s == NATS_OK && r->auth != NULL)
            s = auth_nats_apply(opts, r->auth);
        if (s == NATS_OK)
            s = natsConnection_Connect(&r->nc, opts);
        if (s != NATS_OK && !r->failing)
            log_warn("reconciler: nats %s: %s (%s)", r->nats_url, natsStatus_GetText(s),
                     nats_GetLastError(NULL));
        natsOptions_Destroy(opts);
        if (s != NATS_OK) {
            r->nc = NULL;
            return -1;
        }
    }
    return 0;
}

static int render(void *ctx, const char *record, size_t len, char *out, size_t cap)
{
    return script_order_from_record(ctx, record, len, out, cap);
}

/* On the reconciler's thread: a lua_State belongs to the thread that runs it. */
static void open_policy(reconciler_t *r)
{
    char err[2048];
    script_t *fresh = NULL;
    if (script_open(&fresh, r->policy_path, &r->env, err, sizeof(err)) != 0) {
        log_error("reconciler: policy %s: %s (%s)", r->policy_path, err,
                  r->script != NULL ? "keeping the previous one"
                                    : "republishing the built-in payload");
        return;
    }
    script_close(r->script);
    r->script = fresh;
}

static void pass(reconciler_t *r)
{
    int64_t stale = 0;
    if (atomic_exchange(&r->reload_pending, false))
        open_policy(r);
    reconcile_render_t rr = {.fn = render, .ctx = r->script};
    if (connect_all(r) != 0) {
        r->failing = true;
        drop_connections(r);
        metrics_reconcile_pass(0, 0, 0);
        return;
    }
    int n = reconcile_pending(r->rc, r->nc, &rr, r->older_than_ms, MAX_PER_PASS, &stale);
    metrics_reconcile_pass(n >= 0, stale, n);
    r->failing = n < 0;
    if (n < 0) {
        log_warn("reconciler: pass failed (Redis or NATS); retrying next interval");
        drop_connections(r);
    } else if (n > 0) {
        log_warn("reconciler: republished %d pending orders older than %lld ms", n,
                 (long long)r->older_than_ms);
    }
}

static void run(void *arg)
{
    reconciler_t *r = arg;
    open_policy(r);
    uv_mutex_lock(&r->mu);
    while (!r->stop) {
        uv_cond_timedwait(&r->cond, &r->mu, r->interval_ms * 1000000u);
        if (r->stop)
            break;
        uv_mutex_unlock(&r->mu);
        pass(r);
        uv_mutex_lock(&r->mu);
    }
    uv_mutex_unlock(&r->mu);
    drop_connections(r);
    script_close(r->script);
    r->script = NULL;
    nats_ReleaseThreadMemory();
}

int reconciler_start(reconciler_t **out, const char *redis_host, int redis_port,
                     const char *nats_url, uint64_t interval_ms, int64_t older_than_ms,
                     const auth_config_t *auth, const char *policy_path, const char *host_id,
                     int hosts)
{
    reconciler_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -1;
    r->auth = auth;
    r->policy_path = policy_path;
    r->env = (script_env_t){.host_id = host_id, .hosts = hosts};
    r->redis_host = strdup(redis_host);
    r->nats_url = strdup(nats_url);
    r->redis_port = redis_port;
    r->interval_ms = interval_ms;
    r->older_than_ms = older_than_ms;
    if (r->redis_host == NULL || r->nats_url == NULL)
        goto fail;
    if (uv_mutex_init(&r->mu) != 0)
        goto fail;
    if (uv_cond_init(&r->cond) != 0) {
        uv_mutex_destroy(&r->mu);
        goto fail;
    }
    if (uv_thread_create(&r->thread, run, r) != 0) {
        uv_cond_destroy(&r->cond);
        uv_mutex_destroy(&r->mu);
        goto fail;
    }
    *out = r;
    return 0;
fail:
    free(r->redis_host);
    free(r->nats_url);
    free(r);
    return -1;
}

void reconciler_post_reload(reconciler_t *r)
{
    if (r != NULL)
        atomic_store(&r->reload_pending, true);
}

void reconciler_stop(reconciler_t *r)
{
    if (r == NULL)
        return;
    uv_mutex_lock(&r->mu);
    r->stop = true;
    uv_cond_signal(&r->cond);
    uv_mutex_unlock(&r->mu);
    uv_thread_join(&r->thread);
    uv_cond_destroy(&r->cond);
    uv_mutex_destroy(&r->mu);
    free(r->redis_host);
    free(r->nats_url);
    free(r);
}
