/* See loop_wait.h. */
#include "loop_wait.h"

#include <stdint.h>

static void on_guard(uv_timer_t *t)
{
    (void)t; /* only keeps uv_run from sleeping longer than a tick */
}

bool test_run_until(uv_loop_t *loop, test_cond_fn cond, void *arg, int ms)
{
    uv_timer_t guard;
    uv_timer_init(loop, &guard);
    uv_timer_start(&guard, on_guard, 5, 5);
    uint64_t end = uv_hrtime() + (uint64_t)ms * 1000000u;
    while (!(cond != NULL && cond(arg)) && uv_hrtime() < end)
        uv_run(loop, UV_RUN_ONCE);
    /* The guard lives on this stack: its close must be done before returning. */
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return cond != NULL && cond(arg);
}

void test_run_for(uv_loop_t *loop, int ms)
{
    test_run_until(loop, NULL, NULL, ms);
}

typedef struct {
    const int *have;
    int want;
} count_t;

static bool count_reached(void *arg)
{
    const count_t *c = arg;
    return *c->have >= c->want;
}

bool test_wait_count(uv_loop_t *loop, const int *have, int want, int ms)
{
    count_t c = {have, want};
    return test_run_until(loop, count_reached, &c, ms);
}

bool test_loop_drain(uv_loop_t *loop, int turns)
{
    for (int i = 0; i < turns && uv_loop_alive(loop); i++)
        uv_run(loop, UV_RUN_NOWAIT);
    return !uv_loop_alive(loop);
}
