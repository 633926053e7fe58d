/* host/server/stallwatch.c: the verdicts of stall_judge (pure), then the watchdog thread on a
 * real libuv loop whose timer callback blocks (as an endless policy loop would) until the
 * watchdog reports it: the description names what the thread was running, the metrics count
 * it, and the report ends once the turn ends. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include <cmocka.h>

#include "stallwatch.h"

#define T 1000 /* threshold */
#define X 5000 /* exit after */

static void judge_reports_a_stall_once_then_its_end(void **state)
{
    (void)state;
    stall_judge_t j = {0};
    assert_int_equal(stall_judge(&j, 100, 100, 0, T, X), STALL_NONE);
    assert_int_equal(stall_judge(&j, 100, 100 + T - 1, 0, T, X), STALL_NONE);
    assert_int_equal(stall_judge(&j, 100, 100 + T, 0, T, X), STALL_BEGAN);
    /* Still the same turn: nothing new, however often it is looked at. */
    assert_int_equal(stall_judge(&j, 100, 100 + T + 1, 0, T, X), STALL_NONE);
    assert_int_equal(stall_judge(&j, 100, 100 + X - 1, 0, T, X), STALL_NONE);
    /* The turn ended (a new stamp). */
    assert_int_equal(stall_judge(&j, 100 + X, 100 + X, 0, T, X), STALL_ENDED);
    assert_int_equal(stall_judge(&j, 100 + X, 100 + X + 10, 0, T, X), STALL_NONE);
}

static void judge_exits_past_exit_ms_only_when_asked(void **state)
{
    (void)state;
    stall_judge_t j = {0};
    assert_int_equal(stall_judge(&j, 100, 100 + T, 0, T, X), STALL_BEGAN);
    assert_int_equal(stall_judge(&j, 100, 100 + X, 0, T, X), STALL_EXIT);
    stall_judge_t never = {0};
    assert_int_equal(stall_judge(&never, 100, 100 + T, 0, T, 0), STALL_BEGAN);
    assert_int_equal(stall_judge(&never, 100, 100 + 1000 * X, 0, T, 0), STALL_NONE);
    /* A turn first seen already past exit_ms (the watchdog was late) exits at once. */
    stall_judge_t late = {0};
    assert_int_equal(stall_judge(&late, 100, 100 + X + 1, 0, T, X), STALL_EXIT);
}

static void judge_a_new_long_turn_is_a_new_stall(void **state)
{
    (void)state;
    stall_judge_t j = {0};
    assert_int_equal(stall_judge(&j, 100, 100 + T, 0, T, 0), STALL_BEGAN);
    /* The stalled turn ended and the next one is long already: first the end, then the new. */
    assert_int_equal(stall_judge(&j, 200 + T, 200 + 3 * T, 0, T, 0), STALL_ENDED);
    assert_int_equal(stall_judge(&j, 200 + T, 200 + 3 * T, 0, T, 0), STALL_BEGAN);
}

static void judge_ignores_threads_not_watched(void **state)
{
    (void)state;
    stall_judge_t j = {0};
    assert_int_equal(stall_judge(&j, 0, 1000000, 0, T, X), STALL_NONE);
    /* A stalled thread that leaves (stamp 0: detached) ends its stall. */
    assert_int_equal(stall_judge(&j, 100, 100 + T, 0, T, X), STALL_BEGAN);
    assert_int_equal(stall_judge(&j, 0, 200 + T, 0, T, X), STALL_ENDED);
    /* A clock read before the stamp (another CPU's view) is no age. */
    assert_int_equal(stall_judge(&j, 5000, 4000, 0, T, X), STALL_NONE);
}

static void judge_counts_a_turn_from_a_resume(void **state)
{
    (void)state;
    /* The process was stopped for 10 X (SIGSTOP, then SIGCONT) in the middle of a turn that
     * began at 100: once it runs again (resumed at R), the turn is not a stall, nor an exit,
     * until it has really run for the threshold. */
    const uint64_t R = 100 + 10 * X;
    stall_judge_t j = {0};
    assert_int_equal(stall_judge(&j, 100, R, R, T, X), STALL_NONE);
    assert_int_equal(stall_judge(&j, 100, R + T - 1, R, T, X), STALL_NONE);
    assert_int_equal(stall_judge(&j, 100, R + T, R, T, X), STALL_BEGAN);
    /* Seen stalled, the turn keeps its real age: a later pause does not hide it. */
    assert_int_equal(stall_judge(&j, 100, R + T + 1, R + T + 1, T, X), STALL_EXIT);
}

/* ---- the watchdog on a real loop ---- */

typedef struct {
    uv_loop_t loop;
    uv_timer_t block;
    char seen[256];
    int stalled_seen;
    int close_rc;
} looper_t;

/* Blocks the loop like a policy call that never returns, but only until the watchdog saw it
 * (at most 20 s: the test must end by itself). */
static void on_block(uv_timer_t *t)
{
    looper_t *l = t->data;
    stallwatch_doing(STALL_DOING_ADMIT);
    uint64_t deadline = uv_hrtime() + 20ULL * 1000000000ULL;
    while (uv_hrtime() < deadline) {
        l->stalled_seen = stallwatch_describe(l->seen, sizeof(l->seen));
        if (l->stalled_seen > 0)
            break;
        uv_sleep(10);
    }
    stallwatch_doing(STALL_DOING_LOOP);
    uv_close((uv_handle_t *)t, NULL);
}

/* A loop thread: its only referenced handle is the one-shot timer (no asserts here: cmocka's
 * belong to the test's thread). */
static void loop_thread(void *arg)
{
    looper_t *l = arg;
    uv_loop_init(&l->loop);
    stallwatch_attach(&l->loop, 3);
    uv_timer_init(&l->loop, &l->block);
    l->block.data = l;
    uv_timer_start(&l->block, on_block, 10, 0);
    uv_run(&l->loop, UV_RUN_DEFAULT);
    stallwatch_detach(&l->loop, 3);
    l->close_rc = uv_loop_close(&l->loop);
}

static unsigned long long stalls_total(void)
{
    prom_buf_t o;
    prom_init(&o);
    stallwatch_render(&o);
    size_t len;
    char *text = prom_finish(&o, &len);
    assert_non_null(text);
    char *line = strstr(text, "\nsnatch_loop_stalls_total ");
    assert_non_null(line);
    unsigned long long n = strtoull(line + strlen("\nsnatch_loop_stalls_total "), NULL, 10);
    assert_non_null(strstr(text, "# TYPE snatch_loop_stalled gauge\n"));
    free(text);
    return n;
}

static void watchdog_reports_a_blocked_loop_then_its_end(void **state)
{
    (void)state;
    char buf[256];
    unsigned long long before = stalls_total();
    assert_int_equal(stallwatch_start(0), 0);
    assert_int_equal(stallwatch_describe(buf, sizeof(buf)), 0);
    looper_t *l = calloc(1, sizeof(*l));
    assert_non_null(l);
    uv_thread_t th;
    assert_int_equal(uv_thread_create(&th, loop_thread, l), 0);
    uv_thread_join(&th);
    assert_int_equal(l->close_rc, 0);
    assert_int_equal(l->stalled_seen, 1);
    assert_non_null(strstr(l->seen, "loop thread 3 has run one turn for"));
    assert_non_null(strstr(l->seen, "admit()"));
    assert_int_equal(stalls_total(), before + 1);
    /* The turn ended (and the thread left): the next looks say so. */
    uint64_t deadline = uv_hrtime() + 10ULL * 1000000000ULL;
    while (stallwatch_describe(buf, sizeof(buf)) > 0 && uv_hrtime() < deadline)
        uv_sleep(10);
    assert_int_equal(stallwatch_describe(buf, sizeof(buf)), 0);
    assert_int_equal(stalls_total(), before + 1);
    stallwatch_stop();
    free(l);
}

static void on_done(uv_timer_t *t)
{
    uv_close((uv_handle_t *)t, NULL);
}

/* An idle loop whose only timer is due in 3 thresholds: without the heartbeat it would sleep in
 * epoll_wait that long, and look stalled. */
static void idle_thread(void *arg)
{
    looper_t *l = arg;
    uv_loop_init(&l->loop);
    stallwatch_attach(&l->loop, 5);
    uv_timer_init(&l->loop, &l->block);
    uv_timer_start(&l->block, on_done, 3 * STALL_THRESHOLD_MS, 0);
    uv_run(&l->loop, UV_RUN_DEFAULT);
    stallwatch_detach(&l->loop, 5);
    l->close_rc = uv_loop_close(&l->loop);
}

static void watchdog_leaves_an_idle_loop_alone(void **state)
{
    (void)state;
    char buf[256];
    unsigned long long before = stalls_total();
    assert_int_equal(stallwatch_start(0), 0);
    looper_t *l = calloc(1, sizeof(*l));
    assert_non_null(l);
    uv_thread_t th;
    assert_int_equal(uv_thread_create(&th, idle_thread, l), 0);
    uv_thread_join(&th);
    assert_int_equal(l->close_rc, 0);
    assert_int_equal(stallwatch_describe(buf, sizeof(buf)), 0);
    assert_int_equal(stalls_total(), before);
    stallwatch_stop();
    free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(judge_reports_a_stall_once_then_its_end),
        cmocka_unit_test(judge_exits_past_exit_ms_only_when_asked),
        cmocka_unit_test(judge_a_new_long_turn_is_a_new_stall),
        cmocka_unit_test(judge_ignores_threads_not_watched),
        cmocka_unit_test(judge_counts_a_turn_from_a_resume),
        cmocka_unit_test(watchdog_reports_a_blocked_loop_then_its_end),
        cmocka_unit_test(watchdog_leaves_an_idle_loop_alone),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
