/* Latency histogram for snatch-bench: log-linear buckets from 1 us to 60 s with a fixed relative
 * error (the same idea as HdrHistogram, our own code). Values below 256 us are exact; above,
 * every power of two is cut into 128 equal buckets, so a bucket is at most 1/128 (0.8 %) of its
 * lower bound wide and a reported percentile is within 0.4 % of a recorded value.
 *
 * A histogram is not thread-safe: each load thread records into its own and the main thread
 * merges them when the threads have ended. Recording is O(1), allocation-free. */
#ifndef SNATCH_HIST_H
#define SNATCH_HIST_H

#include <stdint.h>

#define HIST_MAX_US 60000000ull /* larger values are recorded as 60 s (max stays exact) */

typedef struct hist hist_t;

/* Returns a new empty histogram (about 20 KiB), or NULL when out of memory. */
hist_t *hist_new(void);
void hist_free(hist_t *h);

/* Records one value in microseconds (0 counts as 1 us, beyond HIST_MAX_US as HIST_MAX_US). */
void hist_record(hist_t *h, uint64_t us);

/* Adds every count of src into dst. */
void hist_merge(hist_t *dst, const hist_t *src);

uint64_t hist_count(const hist_t *h);
uint64_t hist_min(const hist_t *h); /* exact; 0 when empty */
uint64_t hist_max(const hist_t *h); /* exact; 0 when empty */
double hist_mean(const hist_t *h);  /* from the bucket midpoints */

/* The value at percentile p (0..100): the midpoint of the bucket holding the ceil(p% * count)-th
 * smallest value, clamped to [min, max]. 0 when empty. */
uint64_t hist_percentile(const hist_t *h, double p);

/* Relative error bound of hist_percentile against a recorded value, for tests and docs. */
double hist_relative_error(void);

#endif
