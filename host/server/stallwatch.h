/* The loop-stall watchdog, in the manner of HAProxy's thread watchdog. LuaJIT runs no hooks in
 * compiled code, so a policy call that never returns (an endless loop) wedges its loop thread
 * for good, and nothing on that thread can notice: its buyers' connections hang, and the kernel
 * keeps handing it 1/N of the new ones (SO_REUSEPORT).
 *
 * Each loop thread stamps the start of every turn (one relaxed store of the loop's cached time,
 * in a uv_prepare handle, right before the loop waits for I/O), and a heartbeat timer makes an idle
 * loop turn at least every STALL_HEARTBEAT_MS. A thread of its own reads the stamps every
 * STALL_TICK_MS. A turn running past STALL_THRESHOLD_MS is a stall: logged once, shown by
 * /metrics and /healthz (answered by the threads still running); past --stall-exit-ms the
 * process exits with STALL_EXIT_STATUS so that its supervisor restarts it: a kill -9 in effect,
 * which reconciliation makes safe. The thread itself cannot be interrupted. */
#ifndef SNATCH_STALLWATCH_H
#define SNATCH_STALLWATCH_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "promtext.h"

/* A healthy turn takes microseconds to milliseconds; the longest legitimate one known is a
 * NATS publish waiting for one reconnect attempt (cnats's connect timeout, 2 s), see README. */
#define STALL_THRESHOLD_MS 1000
#define STALL_HEARTBEAT_MS 250
#define STALL_TICK_MS 100
/* A gap this long between two looks of the watchdog means the process was not running. */
#define STALL_PAUSE_MS 500
/* EX_SOFTWARE (sysexits.h): an internal error; systemd's Restart=on-failure restarts on it. */
#define STALL_EXIT_STATUS 70
/* 5x the longest legitimate turn, and short enough that a wedged thread's share of the buyers
 * is not left hanging for long. */
#define STALL_EXIT_DEFAULT_MS 10000
#define STALLWATCH_MAX_THREADS 64

/* What a loop thread is running, when cheaply known (the policy's calls). */
typedef enum {
    STALL_DOING_LOOP, /* anything else: HTTP, Redis and NATS callbacks, timers */
    STALL_DOING_ADMIT,
    STALL_DOING_ORDER,
    STALL_DOING_ALLOCATE,
    STALL_DOING_RELOAD, /* loading a new policy (its top-level chunk runs) */
    STALL_DOING__COUNT
} stall_doing_t;

/* ---- detection (pure; the watchdog thread keeps one per loop thread) ---- */

typedef struct stall_judge {
    uint64_t stamp; /* the turn stamp this stall was reported for */
    bool stalled;
} stall_judge_t;

typedef enum {
    STALL_NONE,  /* nothing new */
    STALL_BEGAN, /* a turn ran past the threshold: report it (once) */
    STALL_ENDED, /* the stalled turn ended (or the thread left) */
    STALL_EXIT,  /* a turn ran past exit_ms (> 0): exit the process */
} stall_verdict_t;

/* One look at a thread: stamp_ms is its last turn's time (0: not watched), now_ms the same
 * clock now, resumed_ms when the process last ran again after a pause (0: never): a turn not
 * yet judged stalled counts from the later of the two. exit_ms 0: never STALL_EXIT. */
stall_verdict_t stall_judge(stall_judge_t *j, uint64_t stamp_ms, uint64_t now_ms,
                            uint64_t resumed_ms, uint64_t threshold_ms, uint64_t exit_ms);

/* ---- the watchdog ---- */

/* Main thread, before the loop threads start; exit_ms 0: never exit. Returns 0 or -1 (logged). */
int stallwatch_start(uint64_t exit_ms);
/* Main thread, once the loop threads were joined. */
void stallwatch_stop(void);

/* On loop thread `thread` (0..STALLWATCH_MAX_THREADS-1), before its loop runs: its handles are
 * unreferenced, so they never keep the loop alive. */
void stallwatch_attach(uv_loop_t *loop, int thread);
/* On the same thread once its loop returned: closes the handles (runs the loop until they are
 * closed) and stops watching it. */
void stallwatch_detach(uv_loop_t *loop, int thread);

extern _Thread_local _Atomic unsigned char *stallwatch_doing_slot;

/* Around the policy's calls: two relaxed stores to the thread's own line. A no-op on threads
 * that are not watched (the reconciler, unit tests). */
static inline void stallwatch_doing(stall_doing_t what)
{
    _Atomic unsigned char *slot = stallwatch_doing_slot;
    if (slot != NULL)
        atomic_store_explicit(slot, (unsigned char)what, memory_order_relaxed);
}

/* Loop threads stalled now (as last judged by the watchdog); when any, writes a sentence on the
 * first of them into buf (plain ASCII without '"' or '\\': JSON-safe). */
int stallwatch_describe(char *buf, size_t cap);

/* snatch_loop_stalled and snatch_loop_stalls_total. */
void stallwatch_render(prom_buf_t *o);

#endif
