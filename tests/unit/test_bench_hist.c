/* Unit tests of the snatch-bench latency histogram (host/bench/hist.c): percentiles within the
 * relative error bound against exact order statistics, exact min/max, merging. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "hist.h"

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The exact value at percentile p with the same rank rule as hist_percentile. */
static uint64_t exact(const uint64_t *sorted, size_t n, double p)
{
    size_t rank = (size_t)((p / 100.0) * (double)n + 0.999999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return sorted[rank - 1];
}

static void assert_close(uint64_t got, uint64_t want)
{
    double err = (double)(got > want ? got - want : want - got) / (double)want;
    if (err > hist_relative_error() + 1e-9)
        fail_msg("got %llu want %llu (error %.5f > %.5f)", (unsigned long long)got,
                 (unsigned long long)want, err, hist_relative_error());
}

static void test_empty(void **state)
{
    (void)state;
    hist_t *h = hist_new();
    assert_non_null(h);
    assert_int_equal(hist_count(h), 0);
    assert_int_equal(hist_percentile(h, 99), 0);
    assert_int_equal(hist_min(h), 0);
    assert_int_equal(hist_max(h), 0);
    hist_free(h);
    hist_free(NULL);
}

static void test_small_values_exact(void **state)
{
    (void)state;
    hist_t *h = hist_new();
    for (uint64_t v = 1; v <= 100; v++)
        hist_record(h, v);
    assert_int_equal(hist_percentile(h, 50), 50);
    assert_int_equal(hist_percentile(h, 90), 90);
    assert_int_equal(hist_percentile(h, 99), 99);
    assert_int_equal(hist_percentile(h, 100), 100);
    assert_int_equal(hist_percentile(h, 0), 1);
    assert_int_equal(hist_min(h), 1);
    assert_int_equal(hist_max(h), 100);
    hist_free(h);
}

/* Log-uniform values from 1 us to 60 s: every percentile within the bound. */
static void test_percentiles_within_bound(void **state)
{
    (void)state;
    enum { N = 200000 };
    uint64_t *v = malloc(N * sizeof(*v));
    hist_t *h = hist_new();
    assert_non_null(v);
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < N; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        int bits = (int)(x % 26);
        v[i] = 1 + (x >> 20) % (1ull << bits);
        hist_record(h, v[i]);
    }
    qsort(v, N, sizeof(*v), cmp_u64);
    static const double ps[] = {1, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 100};
    for (size_t i = 0; i < sizeof(ps) / sizeof(ps[0]); i++)
        assert_close(hist_percentile(h, ps[i]), exact(v, N, ps[i]));
    assert_int_equal(hist_min(h), v[0]);
    assert_int_equal(hist_max(h), v[N - 1]);
    assert_int_equal(hist_count(h), N);
    free(v);
    hist_free(h);
}

static void test_clamps(void **state)
{
    (void)state;
    hist_t *h = hist_new();
    hist_record(h, 0);
    hist_record(h, 120000000ull);     /* 120 s: counted in the last bucket, max stays exact */
    assert_int_equal(hist_min(h), 1); /* 0 counts as 1 us: the clock's resolution here */
    assert_int_equal(hist_max(h), 120000000ull);
    assert_true(hist_percentile(h, 100) >= HIST_MAX_US * (1 - hist_relative_error()));
    assert_int_equal(hist_percentile(h, 50), 1);
    hist_free(h);
}

static void test_merge(void **state)
{
    (void)state;
    hist_t *a = hist_new(), *b = hist_new(), *all = hist_new();
    for (uint64_t i = 1; i <= 1000; i++) {
        hist_record(i % 2 ? a : b, i * 37);
        hist_record(all, i * 37);
    }
    hist_t *empty = hist_new();
    hist_merge(a, empty);
    hist_merge(a, b);
    assert_int_equal(hist_count(a), 1000);
    assert_int_equal(hist_min(a), 37);
    assert_int_equal(hist_max(a), 37000);
    for (double p = 0; p <= 100; p += 0.5)
        assert_int_equal(hist_percentile(a, p), hist_percentile(all, p));
    assert_close(hist_percentile(a, 50), 500 * 37);
    hist_merge(empty, a); /* into an empty one: min comes across */
    assert_int_equal(hist_min(empty), 37);
    hist_free(a);
    hist_free(b);
    hist_free(all);
    hist_free(empty);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_small_values_exact),
        cmocka_unit_test(test_percentiles_within_bound),
        cmocka_unit_test(test_clamps),
        cmocka_unit_test(test_merge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
