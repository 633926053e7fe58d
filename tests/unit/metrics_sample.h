/* For unit tests of modules that count into the host's metrics (metrics.c): one sample of
 * metrics_render(), the real counters rather than a stand-in. */
#ifndef SNATCH_TEST_METRICS_SAMPLE_H
#define SNATCH_TEST_METRICS_SAMPLE_H

#include <stdlib.h>
#include <string.h>

#include "metrics.h"

/* The value of the sample named name_and_labels (e.g. snatch_http_errors_total{status="408"}),
 * 0 when absent (counters at 0 are not always rendered). */
static inline double metrics_sample(const char *name_and_labels)
{
    size_t len, n = strlen(name_and_labels);
    double v = 0;
    char *text = metrics_render(&len);
    for (const char *p = text; p != NULL && *p != '\0';) {
        if (strncmp(p, name_and_labels, n) == 0 && p[n] == ' ') {
            v = strtod(p + n + 1, NULL);
            break;
        }
        p = strchr(p, '\n');
        p = p != NULL ? p + 1 : NULL;
    }
    free(text);
    return v;
}

#endif
