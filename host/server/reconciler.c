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
#include "repair.h"
#include "republish.h"
#include "script.h"
#include "util.h"

#define CONNECT_TIMEOUT_MS 2000
#define MAX_PER_PASS 10000
#define REPAIR_RETRY_MS 250u

struct reconciler {
    uv_thread_t thread;
    uv_mutex_t mu;
    uv_cond_t cond;
    bool stop;
    char *redis_seeds;
    char *nats_url;
    uint64_t interval_ms;
    int64_t older_than_ms;
    rsync_t *rs;
    natsConnection *nc;
    const auth_config_t *auth; /* the host's, lives as long as the process */
    const char *policy_path;   /* the host's, idem */
    script_env_t env;
    script_t *script;            /* the thread's own; NULL: the built-in payload */
    _Atomic bool reload_pending; /* SIGHUP: reopen the policy before the next pass */
    bool failing;                /* the last pass failed: log the next failure only on change */
    bool repair_wanted;          /* a loop thread asked for a repair (repair_request) */
    const char *host_id;         /* the host's, lives as long as the process */
    repair_t *repair;            /* NULL until first needed, or when repairs are off */
};

static void drop_connections(reconciler_t *r)
{
    rsync_close(r->rs);
    r->rs = NULL;
    if (r->nc != NULL) {
        natsConnection_Close(r->nc);
        natsConnection_Destroy(r->nc);
    }
    r->nc = NULL;
}

/* Failures are logged when a run of them starts (r->failing says one is under way). */
static int connect_nats(reconciler_t *r)
{
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

/* Redis (the first seed) and NATS. */
static int connect_all(reconciler_t *r)
{
    char err[256];
    if (r->rs == NULL) {
        r->rs = rsync_open(r->redis_seeds, r->auth, CONNECT_TIMEOUT_MS, err, sizeof(err));
        if (r->rs == NULL) {
            if (!r->failing)
                log_warn("reconciler: redis %s: %s", r->redis_seeds, err);
            return -1;
        }
    } else if (rsync_refresh(r->rs, err, sizeof(err)) != 0) {
        /* A failover since the last pass moved slots: each event is read on its master. */
        if (!r->failing)
            log_warn("reconciler: redis cluster map: %s", err);
        return -1;
    }
    return connect_nats(r);
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
    if (script_open_bounded(&fresh, r->policy_path, &r->env, err, sizeof(err)) != 0) {
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
    int64_t stale = 0, malformed = 0;
    if (atomic_exchange(&r->reload_pending, false))
        open_policy(r);
    reconcile_render_t rr = {.fn = render, .ctx = r->script};
    if (connect_all(r) != 0) {
        r->failing = true;
        drop_connections(r);
        metrics_reconcile_pass(0, 0, 0, 0);
        return;
    }
    int n =
        reconcile_pending(r->rs, r->nc, &rr, r->older_than_ms, MAX_PER_PASS, &stale, &malformed);
    metrics_reconcile_pass(n >= 0, stale, n, malformed);
    r->failing = n < 0;
    if (n < 0) {
        log_warn("reconciler: pass failed (Redis or NATS); retrying next interval");
        drop_connections(r);
    } else if (n > 0) {
        log_warn("reconciler: republished %d pending orders older than %lld ms", n,
                 (long long)r->older_than_ms);
    }
}

/* Repairs (repair.h): the events loop threads asked for, and with all, every event. Before the
 * pending pass: an event that cannot sell is the more urgent. */
static bool repairs(reconciler_t *r, bool all)
{
    char event[SNATCH_NAME_MAX + 1];
    jsCtx *js = NULL;
    bool again = false;
    if (!repair_configured())
        return false;
    if (r->repair == NULL && (r->repair = repair_new(r->auth, r->host_id)) == NULL)
        return true;
    /* NATS only: the repairer finds the event's node from every seed, the first may be dead. */
    if (connect_nats(r) != 0 || natsConnection_JetStream(&js, r->nc, NULL) != NATS_OK) {
        if (r->nc != NULL) {
            natsConnection_Close(r->nc);
            natsConnection_Destroy(r->nc);
        }
        r->nc = NULL;
        return true;
    }
    while (repair_next_request(event)) {
        repair_report_t rep;
        repair_result_t res = repair_event(r->repair, js, event, &rep);
        again |= res == REPAIR_BUSY || res == REPAIR_FAILED;
    }
    if (all && repair_all(r->repair, js) < 0)
        log_warn("repair: cannot list the events; retrying next interval");
    jsCtx_Destroy(js);
    return again;
}

static void wake(void *arg)
{
    reconciler_t *r = arg;
    uv_mutex_lock(&r->mu);
    r->repair_wanted = true;
    uv_cond_signal(&r->cond);
    uv_mutex_unlock(&r->mu);
}

static void run(void *arg)
{
    reconciler_t *r = arg;
    open_policy(r);
    uint64_t next = uv_hrtime() + r->interval_ms * 1000000u;
    uint64_t retry_at = 0; /* requests wait until then after a repair was busy or failed */
    uv_mutex_lock(&r->mu);
    while (!r->stop) {
        uint64_t now = uv_hrtime();
        uint64_t until = r->repair_wanted && retry_at < next ? retry_at : next;
        if (now < until)
            uv_cond_timedwait(&r->cond, &r->mu, until - now);
        if (r->stop)
            break;
        now = uv_hrtime();
        bool all = now >= next, want = r->repair_wanted && now >= retry_at;
        if (!all && !want)
            continue;
        r->repair_wanted = false;
        uv_mutex_unlock(&r->mu);
        /* Buyers keep asking while an event is gated: a repair another host holds, or one that
         * failed, is not tried again at their pace. */
        if (repairs(r, all))
            retry_at = uv_hrtime() + REPAIR_RETRY_MS * 1000000u;
        if (all) {
            pass(r);
            next = uv_hrtime() + r->interval_ms * 1000000u;
        }
        uv_mutex_lock(&r->mu);
    }
    uv_mutex_unlock(&r->mu);
    repair_set_waker(NULL, NULL);
    repair_free(r->repair);
    r->repair = NULL;
    drop_connections(r);
    script_close(r->script);
    r->script = NULL;
    nats_ReleaseThreadMemory();
}

int reconciler_start(reconciler_t **out, const char *redis_seeds, const char *nats_url,
                     uint64_t interval_ms, int64_t older_than_ms, const auth_config_t *auth,
                     const char *policy_path, const char *host_id, int hosts)
{
    reconciler_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return -1;
    r->auth = auth;
    r->policy_path = policy_path;
    r->env = (script_env_t){.host_id = host_id, .hosts = hosts};
    r->host_id = host_id;
    r->redis_seeds = strdup(redis_seeds);
    r->nats_url = strdup(nats_url);
    r->interval_ms = interval_ms;
    r->older_than_ms = older_than_ms;
    if (r->redis_seeds == NULL || r->nats_url == NULL)
        goto fail;
    if (uv_mutex_init(&r->mu) != 0)
        goto fail;
    if (uv_cond_init(&r->cond) != 0) {
        uv_mutex_destroy(&r->mu);
        goto fail;
    }
    repair_set_waker(wake, r);
    if (uv_thread_create(&r->thread, run, r) != 0) {
        repair_set_waker(NULL, NULL);
        uv_cond_destroy(&r->cond);
        uv_mutex_destroy(&r->mu);
        goto fail;
    }
    *out = r;
    return 0;
fail:
    free(r->redis_seeds);
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
    free(r->redis_seeds);
    free(r->nats_url);
    free(r);
}
