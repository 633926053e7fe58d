/* Test support for unit tests that drive a libuv loop on their own thread (the module under test
 * runs its callbacks there): run the loop until a condition holds or a deadline passes, and
 * drain it of closing handles. Every wait is bounded. Linked as snatch_test_loop. */
#ifndef SNATCH_TEST_LOOP_WAIT_H
#define SNATCH_TEST_LOOP_WAIT_H

#include <stdbool.h>

#include <uv.h>

typedef bool (*test_cond_fn)(void *arg);

/* Runs loop until cond(arg) holds (a NULL cond never does) or ms elapse. Returns cond(arg). */
bool test_run_until(uv_loop_t *loop, test_cond_fn cond, void *arg, int ms);

/* Runs loop for ms: what is due (replies, timers, closes) happens meanwhile. */
void test_run_for(uv_loop_t *loop, int ms);

/* Runs loop until *have >= want or ms elapse. Returns *have >= want. */
bool test_wait_count(uv_loop_t *loop, const int *have, int want, int ms);

/* Runs loop without blocking, at most turns times, until no handle is left (after a close).
 * Returns true when the loop is empty. */
bool test_loop_drain(uv_loop_t *loop, int turns);

#endif
