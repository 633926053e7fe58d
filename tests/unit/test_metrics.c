/* host/server/metrics.c: the Prometheus text that GET /metrics answers. Every family has its
 * HELP and TYPE lines once, before its samples; what was recorded shows in the right family. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics.h"
#include "stock.h"

static char *render(void)
{
    size_t len = 0;
    char *text = metrics_render(&len);
    assert_non_null(text);
    assert_int_equal(strlen(text), len);
    return text;
}

/* The value of the sample line that starts with prefix (name and labels), or -1. */
static double sample(const char *text, const char *prefix)
{
    size_t n = strlen(prefix);
    for (const char *p = text; p != NULL && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, prefix, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return -1;
}

static void test_recorded_values(void **state)
{
    (void)state;
    metrics_request(ROUTE_SNATCH, 200, 0);
    metrics_request(ROUTE_SNATCH, 409, 0);
    metrics_request(ROUTE_SNATCH, 409, 0);
    metrics_outcome(OUTCOME_SOLD_OUT_LOCAL);
    metrics_http_error(431);
    metrics_backend_error(METRICS_REDIS_PENDING_HDEL);
    metrics_lua_counter("bots", 4, 2);
    metrics_reconcile_pass(1, 3, 2, 1);
    metrics_reconcile_pass(0, 0, 0, 1);
    metrics_deduct_batch(3);
    metrics_deduct_batch(100);
    stock_install("ev1", 3, 100, 1, 40, 1, false);
    char *t = render();
    assert_true(sample(t, "snatch_http_requests_total{route=\"snatch\",status=\"200\"}") == 1);
    assert_true(sample(t, "snatch_http_requests_total{route=\"snatch\",status=\"409\"}") == 2);
    assert_true(sample(t, "snatch_snatch_outcomes_total{outcome=\"sold_out_local\"}") == 1);
    assert_true(sample(t, "snatch_http_errors_total{status=\"431\"}") == 1);
    assert_true(sample(t, "snatch_reconciler_republished_total") == 2);
    assert_true(sample(t, "snatch_reconciler_malformed_pending_total") == 2);
    assert_true(sample(t, "snatch_reconciler_malformed_pending") == 1);
    assert_true(sample(t, "snatch_deduct_batch_size_bucket{le=\"4\"}") == 1);
    assert_true(sample(t, "snatch_deduct_batch_size_count") == 2);
    assert_true(sample(t, "snatch_deduct_batch_size_sum") == 103);
    assert_true(sample(t, "snatch_local_quota{event=\"ev1\"}") == 40);
    assert_true(sample(t, "snatch_local_stock_left{event=\"ev1\"}") == 40);
    assert_non_null(strstr(t, "bots"));
    free(t);
}

/* Each "# TYPE name" once, right after its "# HELP name", and every sample line belongs to the
 * family declared last (name, or name_bucket/_sum/_count of a histogram). */
static void test_families(void **state)
{
    (void)state;
    char *t = render();
    char family[128] = "", type[32] = "";
    int families = 0;
    for (char *line = strtok(t, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        char name[128];
        if (strncmp(line, "# HELP ", 7) == 0) {
            assert_int_equal(sscanf(line + 7, "%127s", family), 1);
            type[0] = '\0';
            families++;
            continue;
        }
        if (strncmp(line, "# TYPE ", 7) == 0) {
            assert_int_equal(sscanf(line + 7, "%127s %31s", name, type), 2);
            assert_string_equal(name, family);
            continue;
        }
        assert_true(family[0] != '\0' && type[0] != '\0');
        size_t n = strcspn(line, "{ ");
        assert_true(n < sizeof(name));
        memcpy(name, line, n);
        name[n] = '\0';
        size_t fl = strlen(family);
        bool ok = strcmp(name, family) == 0;
        if (!ok && strcmp(type, "histogram") == 0 && strncmp(name, family, fl) == 0)
            ok = strcmp(name + fl, "_bucket") == 0 || strcmp(name + fl, "_sum") == 0 ||
                 strcmp(name + fl, "_count") == 0;
        if (!ok)
            fail_msg("sample %s under family %s (%s)", line, family, type);
    }
    assert_true(families > 10);
    free(t);
}

static int group_setup(void **state)
{
    (void)state;
    metrics_init();
    metrics_thread_register();
    stock_init();
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    stock_shutdown();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_recorded_values),
        cmocka_unit_test(test_families),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
