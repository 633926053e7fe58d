/* Prometheus text helpers; see promtext.h. */
#include "promtext.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

void prom_init(prom_buf_t *o)
{
    *o = (prom_buf_t){.cap = 16384};
    o->buf = malloc(o->cap);
    if (o->buf == NULL)
        o->failed = 1;
}

void prom_printf(prom_buf_t *o, const char *fmt, ...)
{
    if (o->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->failed = 1;
            return;
        }
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t ncap = (o->cap + (size_t)n) * 2;
        char *nb = realloc(o->buf, ncap);
        if (nb == NULL) {
            o->failed = 1;
            return;
        }
        o->buf = nb;
        o->cap = ncap;
    }
}

void prom_family(prom_buf_t *o, const char *name, const char *type, const char *help)
{
    prom_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void histogram(prom_buf_t *o, const char *name, const char *labels, const uint64_t *bounds,
                      size_t n, const uint64_t *counts, double scale, uint64_t sum)
{
    const char *sep = labels[0] ? "," : "";
    uint64_t cum = 0;
    for (size_t i = 0; i <= n; i++) {
        cum += counts[i];
        if (i < n)
            prom_printf(o, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep,
                        (double)bounds[i] / scale, (unsigned long long)cum);
        else
            prom_printf(o, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
                        (unsigned long long)cum);
    }
    const char *open = labels[0] ? "{" : "", *close = labels[0] ? "}" : "";
    prom_printf(o, "%s_sum%s%s%s %.9g\n", name, open, labels, close, (double)sum / scale);
    prom_printf(o, "%s_count%s%s%s %llu\n", name, open, labels, close, (unsigned long long)cum);
}

void prom_histogram_ns(prom_buf_t *o, const char *name, const char *labels,
                       const uint64_t *bounds_ns, size_t n, const uint64_t *counts, uint64_t sum_ns)
{
    histogram(o, name, labels, bounds_ns, n, counts, 1e9, sum_ns);
}

void prom_histogram(prom_buf_t *o, const char *name, const char *labels, const uint64_t *bounds,
                    size_t n, const uint64_t *counts, uint64_t sum)
{
    histogram(o, name, labels, bounds, n, counts, 1.0, sum);
}

char *prom_finish(prom_buf_t *o, size_t *len)
{
    if (o->failed) {
        free(o->buf);
        o->buf = NULL;
        return NULL;
    }
    *len = o->len;
    return o->buf;
}
