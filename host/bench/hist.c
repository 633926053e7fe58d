/* Log-linear latency histogram (see hist.h). Bucket index of a value v >= 256: with m the
 * position of its highest set bit and s = m - 7 the shift that leaves 8 significant bits,
 * index = s * 128 + (v >> s), the top 8 bits lie in [128, 255], so consecutive shifts tile the
 * index space without gaps. Values below 256 use s = 0 and index v. Runs on any thread; one
 * histogram per thread. */
#include "hist.h"

#include <stdlib.h>

#define SUB_BITS 8
#define SUB_HALF (1u << (SUB_BITS - 1)) /* 128 buckets per power of two */
/* 60 s < 2^26 us: highest bit 25, shift 18, top index 18*128 + 255. */
#define NBUCKETS (18 * SUB_HALF + 2 * SUB_HALF)

struct hist {
    uint64_t count;
    uint64_t min;
    uint64_t max;
    uint64_t counts[NBUCKETS];
};

static unsigned bucket_of(uint64_t v)
{
    if (v < 2 * SUB_HALF)
        return (unsigned)v;
    unsigned shift = (unsigned)(63 - __builtin_clzll(v)) - (SUB_BITS - 1);
    return shift * SUB_HALF + (unsigned)(v >> shift);
}

static void bucket_range(unsigned i, uint64_t *lo, uint64_t *width)
{
    if (i < 2 * SUB_HALF) {
        *lo = i;
        *width = 1;
        return;
    }
    unsigned shift = i / SUB_HALF - 1;
    uint64_t top = i - shift * SUB_HALF;
    *lo = top << shift;
    *width = 1ull << shift;
}

hist_t *hist_new(void)
{
    return calloc(1, sizeof(hist_t));
}

void hist_free(hist_t *h)
{
    free(h);
}

void hist_record(hist_t *h, uint64_t us)
{
    if (us == 0)
        us = 1;
    uint64_t v = us > HIST_MAX_US ? HIST_MAX_US : us;
    h->counts[bucket_of(v)]++;
    if (h->count == 0 || us < h->min)
        h->min = us;
    if (us > h->max)
        h->max = us;
    h->count++;
}

void hist_merge(hist_t *dst, const hist_t *src)
{
    if (src->count == 0)
        return;
    for (unsigned i = 0; i < NBUCKETS; i++)
        dst->counts[i] += src->counts[i];
    if (dst->count == 0 || src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    dst->count += src->count;
}

uint64_t hist_count(const hist_t *h)
{
    return h->count;
}

uint64_t hist_min(const hist_t *h)
{
    return h->count ? h->min : 0;
}

uint64_t hist_max(const hist_t *h)
{
    return h->max;
}

static uint64_t clamp(const hist_t *h, uint64_t v)
{
    if (v < h->min)
        return h->min;
    return v > h->max ? h->max : v;
}

double hist_mean(const hist_t *h)
{
    if (h->count == 0)
        return 0;
    double sum = 0;
    for (unsigned i = 0; i < NBUCKETS; i++) {
        if (!h->counts[i])
            continue;
        uint64_t lo, w;
        bucket_range(i, &lo, &w);
        sum += (double)h->counts[i] * (double)clamp(h, lo + w / 2);
    }
    return sum / (double)h->count;
}

uint64_t hist_percentile(const hist_t *h, double p)
{
    if (h->count == 0)
        return 0;
    if (p < 0)
        p = 0;
    if (p > 100)
        p = 100;
    /* The rank of the wanted value, 1-based; p = 0 means the smallest. */
    uint64_t rank = (uint64_t)((p / 100.0) * (double)h->count + 0.999999999);
    if (rank < 1)
        rank = 1;
    if (rank > h->count)
        rank = h->count;
    uint64_t seen = 0;
    for (unsigned i = 0; i < NBUCKETS; i++) {
        seen += h->counts[i];
        if (seen < rank)
            continue;
        uint64_t lo, w;
        bucket_range(i, &lo, &w);
        return clamp(h, lo + w / 2);
    }
    return h->max;
}

double hist_relative_error(void)
{
    return 1.0 / (2.0 * SUB_HALF);
}
