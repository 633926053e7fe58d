#include "keyspace.h"

#include <inttypes.h>
#include <stdio.h>

static const char *const suffixes[KEYSPACE__ALL] = {
    [KEYSPACE_META] = "meta",       [KEYSPACE_USERS] = "users",       [KEYSPACE_ORDERS] = "orders",
    [KEYSPACE_UORDERS] = "uorders", [KEYSPACE_PENDING] = "pending",   [KEYSPACE_HOLDS] = "holds",
    [KEYSPACE_STATE] = "state",     [KEYSPACE_TPENDING] = "tpending",
};

int keyspace_key(char *out, const char *event, size_t len, keyspace_key_t which)
{
    return snprintf(out, KEYSPACE_KEY_MAX, "{%.*s}:%s", (int)len, event, suffixes[which]);
}

int keyspace_order_id(char *out, size_t cap, int64_t ms, int64_t seq, const char *event, size_t len)
{
    if (ms < 0 || ms > 9999999999999LL || seq < 0 || seq > 9999999999LL ||
        !util_valid_name(event, len, SNATCH_NAME_MAX))
        return -1;
    int n = snprintf(out, cap, "%0*" PRId64 "-%0*" PRId64 "-%.*s", KEYSPACE_ID_MS_DIGITS, ms,
                     KEYSPACE_ID_SEQ_DIGITS, seq, (int)len, event);
    return n < 0 || (size_t)n >= cap ? -1 : n;
}

static int all_digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

const char *keyspace_order_event(const char *id, size_t len, size_t *elen)
{
    if (len <= KEYSPACE_ID_EVENT_AT)
        return NULL;
    const char *seq = id + KEYSPACE_ID_MS_DIGITS + 1;
    if (id[KEYSPACE_ID_MS_DIGITS] != '-' || seq[KEYSPACE_ID_SEQ_DIGITS] != '-' ||
        !all_digits(id, KEYSPACE_ID_MS_DIGITS) || !all_digits(seq, KEYSPACE_ID_SEQ_DIGITS))
        return NULL;
    const char *event = id + KEYSPACE_ID_EVENT_AT;
    if (!util_valid_name(event, len - KEYSPACE_ID_EVENT_AT, SNATCH_NAME_MAX))
        return NULL;
    *elen = len - KEYSPACE_ID_EVENT_AT;
    return event;
}
