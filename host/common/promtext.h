/* Prometheus text exposition helpers shared by snatch-host and snatch-subscriber: a growable
 * buffer, family headers (HELP and TYPE) and histograms. Used by renderers only, never on a hot
 * path. */
#ifndef SNATCH_PROMTEXT_H
#define SNATCH_PROMTEXT_H

#include <stddef.h>
#include <stdint.h>

#ifndef SNATCH_VERSION
#define SNATCH_VERSION "0.1.0"
#endif

typedef struct prom_buf {
    char *buf;
    size_t len, cap;
    int failed; /* out of memory: the rest is dropped, prom_finish returns NULL */
} prom_buf_t;

void prom_init(prom_buf_t *o);
void prom_printf(prom_buf_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "# HELP name help" and "# TYPE name type". */
void prom_family(prom_buf_t *o, const char *name, const char *type, const char *help);
/* One histogram series: counts[i] observations <= bounds_ns[i] (not cumulative; counts[n] above
 * the last bound), sum_ns their sum. Rendered in seconds. labels: "" or `route="x"`. */
void prom_histogram_ns(prom_buf_t *o, const char *name, const char *labels,
                       const uint64_t *bounds_ns, size_t n, const uint64_t *counts,
                       uint64_t sum_ns);
/* The same with unitless bounds (batch sizes). */
void prom_histogram(prom_buf_t *o, const char *name, const char *labels, const uint64_t *bounds,
                    size_t n, const uint64_t *counts, uint64_t sum);
/* The text (malloc'd, caller frees) and its length, or NULL when something failed. */
char *prom_finish(prom_buf_t *o, size_t *len);

/* Index of the first bound >= v (n when above all): the bucket of an observation. */
static inline size_t prom_bucket(const uint64_t *bounds, size_t n, uint64_t v)
{
    size_t i = 0;
    while (i < n && v > bounds[i])
        i++;
    return i;
}

#endif
