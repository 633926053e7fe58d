/* See cli.h. */
#include "cli.h"

#include <string.h>

#include "util.h"

int cli_int_opt(const char *prog, const char *name, const char *value, int64_t min, int64_t max,
                int64_t *out)
{
    if (util_parse_i64(value, strlen(value), min, max, out) == 0)
        return 0;
    cli_usage_error(prog, "%s must be an integer from %lld to %lld", name, (long long)min,
                    (long long)max);
    return -1;
}
