/* The loop-stall watchdog (stallwatch.h). The loop threads only write their own slot (a stamp
 * per turn, what they run around the policy's calls); the watchdog thread reads them and alone
 * writes the verdicts that /healthz and /metrics read. */
#include "stallwatch.h"

#include <stdalign.h>
#include <stdio.h>
#include <unistd.h>

#include "log.h"

typedef struct stall_slot {
    alignas(64) _Atomic uint64_t stamp_ms; /* loop thread: its last turn; 0: not watched */
    _Atomic unsigned char doing;           /* loop thread: a stall_doing_t */
    _Atomic bool stalled;                  /* watchdog: judged stalled now */
    stall_judge_t judge;                   /* watchdog only */
    uv_prepare_t prepare;                  /* loop thread only */
    uv_timer_t heartbeat;
} stall_slot_t;

static stall_slot_t slots[STALLWATCH_MAX_THREADS];
static _Atomic uint64_t stalls_total;
static _Atomic int stalled_now;

_Thread_local _Atomic unsigned char *stallwatch_doing_slot;

static const char *const doing_names[STALL_DOING__COUNT] = {
    [STALL_DOING_LOOP] = "outside the policy",
    [STALL_DOING_ADMIT] = "in the policy's admit()",
    [STALL_DOING_ORDER] = "in the policy's order()",
    [STALL_DOING_ALLOCATE] = "in the policy's allocate()",
    [STALL_DOING_RELOAD] = "loading the policy (reload)",
};

stall_verdict_t stall_judge(stall_judge_t *j, uint64_t stamp_ms, uint64_t now_ms,
                            uint64_t resumed_ms, uint64_t threshold_ms, uint64_t exit_ms)
{
    /* A turn is not counted as running while the whole process was not (stopped, starved): a
     * thread seen stalled before keeps its real age. */
    uint64_t from = !j->stalled && resumed_ms > stamp_ms ? resumed_ms : stamp_ms;
    uint64_t age = stamp_ms != 0 && now_ms > from ? now_ms - from : 0;
    /* A new stamp means the stalled turn ended, even if the next one is already long: that one
     * is a stall of its own, reported at the next look. */
    if (j->stalled && (stamp_ms != j->stamp || age < threshold_ms)) {
        j->stalled = false;
        return STALL_ENDED;
    }
    if (stamp_ms == 0)
        return STALL_NONE;
    if (exit_ms > 0 && age >= exit_ms)
        return STALL_EXIT;
    if (j->stalled || age < threshold_ms)
        return STALL_NONE;
    j->stalled = true;
    j->stamp = stamp_ms;
    return STALL_BEGAN;
}

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000 + 1; /* never 0: 0 means "not watched" */
}

static const char *doing_name(stall_slot_t *s)
{
    unsigned d = atomic_load_explicit(&s->doing, memory_order_relaxed);
    return d < STALL_DOING__COUNT ? doing_names[d] : "?";
}

/* ---- loop threads ---- */

/* The loop's cached time (no clock read): libuv set it at the top of this turn, from the same
 * monotonic clock as uv_hrtime(). The stamp is the turn's start; what follows it, the wait for
 * I/O (at most a heartbeat) and the callbacks, counts as the turn. */
static void on_prepare(uv_prepare_t *p)
{
    stall_slot_t *s = p->data;
    atomic_store_explicit(&s->stamp_ms, uv_now(p->loop) + 1, memory_order_relaxed);
}

static void on_heartbeat(uv_timer_t *t)
{
    (void)t; /* only there to make an idle loop turn (and stamp) */
}

void stallwatch_attach(uv_loop_t *loop, int thread)
{
    if (thread < 0 || thread >= STALLWATCH_MAX_THREADS)
        return;
    stall_slot_t *s = &slots[thread];
    atomic_store_explicit(&s->doing, STALL_DOING_LOOP, memory_order_relaxed);
    stallwatch_doing_slot = &s->doing;
    uv_prepare_init(loop, &s->prepare);
    s->prepare.data = s;
    uv_prepare_start(&s->prepare, on_prepare);
    uv_unref((uv_handle_t *)&s->prepare);
    uv_timer_init(loop, &s->heartbeat);
    uv_timer_start(&s->heartbeat, on_heartbeat, STALL_HEARTBEAT_MS, STALL_HEARTBEAT_MS);
    uv_unref((uv_handle_t *)&s->heartbeat);
    atomic_store_explicit(&s->stamp_ms, now_ms(), memory_order_relaxed);
}

void stallwatch_detach(uv_loop_t *loop, int thread)
{
    if (thread < 0 || thread >= STALLWATCH_MAX_THREADS)
        return;
    stall_slot_t *s = &slots[thread];
    atomic_store_explicit(&s->stamp_ms, 0, memory_order_relaxed);
    stallwatch_doing_slot = NULL;
    uv_close((uv_handle_t *)&s->prepare, NULL);
    uv_close((uv_handle_t *)&s->heartbeat, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
}

/* ---- the watchdog thread ---- */

static uv_thread_t watcher;
static uv_mutex_t lock;
static uv_cond_t wake;
static bool stop_requested; /* under lock */
static bool running;        /* main thread only */
static uint64_t exit_after_ms;

static void exit_process(int thread, stall_slot_t *s, uint64_t age)
{
    log_error("stall: loop thread %d has run one turn for %.1f s (%s), past --stall-exit-ms "
              "%llu: exiting with status %d so that the supervisor restarts the host (as after a "
              "kill -9: reconciliation publishes what was sold and not yet acknowledged)",
              thread, (double)age / 1000.0, doing_name(s), (unsigned long long)exit_after_ms,
              STALL_EXIT_STATUS);
    _exit(STALL_EXIT_STATUS);
}

static void report_began(int thread, stall_slot_t *s, uint64_t age)
{
    char then[160];
    if (exit_after_ms > 0)
        snprintf(then, sizeof(then),
                 "the host exits with status %d once it reaches %.1f s "
                 "(--stall-exit-ms)",
                 STALL_EXIT_STATUS, (double)exit_after_ms / 1000.0);
    else
        snprintf(then, sizeof(then),
                 "--stall-exit-ms 0: it stays wedged until the host is "
                 "restarted");
    log_error("stall: loop thread %d has run one turn for %.1f s (%s) and cannot be interrupted "
              "(its connections hang); %s",
              thread, (double)age / 1000.0, doing_name(s), then);
}

static void look(int thread, uint64_t now, uint64_t resumed)
{
    stall_slot_t *s = &slots[thread];
    uint64_t stamp = atomic_load_explicit(&s->stamp_ms, memory_order_relaxed);
    uint64_t was = s->judge.stamp;
    uint64_t age = stamp != 0 && now > stamp ? now - stamp : 0;
    switch (stall_judge(&s->judge, stamp, now, resumed, STALL_THRESHOLD_MS, exit_after_ms)) {
    case STALL_BEGAN:
        atomic_store(&s->stalled, true);
        atomic_fetch_add(&stalled_now, 1);
        atomic_fetch_add(&stalls_total, 1);
        report_began(thread, s, age);
        break;
    case STALL_ENDED:
        atomic_store(&s->stalled, false);
        atomic_fetch_sub(&stalled_now, 1);
        log_warn("stall: loop thread %d runs again (its stalled turn took about %.1f s)", thread,
                 (double)((stamp > was ? stamp : now) - was) / 1000.0);
        break;
    case STALL_EXIT:
        exit_process(thread, s, age);
        break;
    case STALL_NONE:
        break;
    }
}

static void watch(void *arg)
{
    (void)arg;
    uint64_t last = now_ms(), resumed = 0;
    uv_mutex_lock(&lock);
    while (!stop_requested) {
        uv_cond_timedwait(&wake, &lock, (uint64_t)STALL_TICK_MS * 1000000);
        if (stop_requested)
            break;
        uint64_t now = now_ms();
        /* The watchdog itself did not run for a while: the process was stopped (SIGSTOP, a
         * paused container) or starved, and so were the loop threads; their turns count from
         * now, so that a resumed host is not taken for a wedged one. */
        if (now - last > STALL_PAUSE_MS)
            resumed = now;
        last = now;
        for (int i = 0; i < STALLWATCH_MAX_THREADS; i++)
            look(i, now, resumed);
    }
    uv_mutex_unlock(&lock);
}

int stallwatch_start(uint64_t exit_ms)
{
    exit_after_ms = exit_ms;
    stop_requested = false;
    if (uv_mutex_init(&lock) != 0)
        goto fail;
    if (uv_cond_init(&wake) != 0) {
        uv_mutex_destroy(&lock);
        goto fail;
    }
    if (uv_thread_create(&watcher, watch, NULL) != 0) {
        uv_cond_destroy(&wake);
        uv_mutex_destroy(&lock);
        goto fail;
    }
    running = true;
    return 0;
fail:
    log_error("stall: cannot start the watchdog thread");
    return -1;
}

void stallwatch_stop(void)
{
    if (!running)
        return;
    uv_mutex_lock(&lock);
    stop_requested = true;
    uv_cond_signal(&wake);
    uv_mutex_unlock(&lock);
    uv_thread_join(&watcher);
    uv_cond_destroy(&wake);
    uv_mutex_destroy(&lock);
    running = false;
}

/* ---- readers: /healthz, /metrics (any thread) ---- */

int stallwatch_describe(char *buf, size_t cap)
{
    int n = atomic_load(&stalled_now);
    if (n <= 0)
        return 0;
    uint64_t now = now_ms();
    for (int i = 0; i < STALLWATCH_MAX_THREADS; i++) {
        stall_slot_t *s = &slots[i];
        if (!atomic_load(&s->stalled))
            continue;
        uint64_t stamp = atomic_load_explicit(&s->stamp_ms, memory_order_relaxed);
        uint64_t age = stamp != 0 && now > stamp ? now - stamp : 0;
        snprintf(buf, cap, "loop thread %d has run one turn for %.1f s (%s)%s", i,
                 (double)age / 1000.0, doing_name(s), n > 1 ? ", and others" : "");
        return n;
    }
    snprintf(buf, cap, "a loop thread is stalled");
    return n;
}

void stallwatch_render(prom_buf_t *o)
{
    prom_family(o, "snatch_loop_stalled", "gauge",
                "Loop threads whose current turn has run past the stall threshold (1 s).");
    prom_printf(o, "snatch_loop_stalled %d\n", atomic_load(&stalled_now));
    prom_family(o, "snatch_loop_stalls_total", "counter",
                "Loop-thread stalls detected (a turn past the stall threshold).");
    prom_printf(o, "snatch_loop_stalls_total %llu\n",
                (unsigned long long)atomic_load(&stalls_total));
}
