#include "keyspace.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

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

const char *keyspace_order_event(const char *id, size_t len, size_t *elen)
{
    if (len <= KEYSPACE_ID_EVENT_AT)
        return NULL;
    const char *seq = id + KEYSPACE_ID_MS_DIGITS + 1;
    if (id[KEYSPACE_ID_MS_DIGITS] != '-' || seq[KEYSPACE_ID_SEQ_DIGITS] != '-' ||
        !util_all_digits(id, KEYSPACE_ID_MS_DIGITS) ||
        !util_all_digits(seq, KEYSPACE_ID_SEQ_DIGITS))
        return NULL;
    const char *event = id + KEYSPACE_ID_EVENT_AT;
    if (!util_valid_name(event, len - KEYSPACE_ID_EVENT_AT, SNATCH_NAME_MAX))
        return NULL;
    *elen = len - KEYSPACE_ID_EVENT_AT;
    return event;
}

/* A decimal of 1..digits digits into *v. 0 or -1. */
static int parse_num(const char *s, size_t n, size_t digits, int64_t *v)
{
    if (n == 0 || n > digits || !util_all_digits(s, n))
        return -1;
    int64_t x = 0;
    for (size_t i = 0; i < n; i++)
        x = x * 10 + (s[i] - '0');
    *v = x;
    return 0;
}

int keyspace_pending_parse(const char *field, size_t flen, const char *value, size_t vlen,
                           keyspace_pending_t *out)
{
    keyspace_pending_t e = {.n = 1};
    if ((e.event = keyspace_order_event(field, flen, &e.elen)) == NULL)
        return -1;
    /* keyspace_order_event checked the digits: these cannot fail. */
    parse_num(field, KEYSPACE_ID_MS_DIGITS, KEYSPACE_ID_MS_DIGITS, &e.id_ms);
    parse_num(field + KEYSPACE_ID_MS_DIGITS + 1, KEYSPACE_ID_SEQ_DIGITS, KEYSPACE_ID_SEQ_DIGITS,
              &e.seq);
    const char *sp = memchr(value, ' ', vlen);
    size_t mlen = sp != NULL ? (size_t)(sp - value) : vlen;
    if (parse_num(value, mlen, 18, &e.ms) != 0)
        return -1;
    if (sp != NULL) {
        size_t nlen = vlen - mlen - 1;
        if (parse_num(sp + 1, nlen, 10, &e.n) != 0 || sp[1] == '0' || e.n < 1 ||
            e.n > KEYSPACE_PENDING_N_MAX)
            return -1;
    }
    if (e.seq + e.n - 1 > 9999999999LL)
        return -1;
    *out = e;
    return 0;
}

int keyspace_pending_id(const keyspace_pending_t *e, int64_t i, char *out, size_t cap)
{
    if (i < 0 || i >= e->n)
        return -1;
    return keyspace_order_id(out, cap, e->id_ms, e->seq + i, e->event, e->elen);
}
