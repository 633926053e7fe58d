/* See order_msg.h. */
#include "order_msg.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

static const char *nonempty_string(json_t *doc, const char *key)
{
    json_t *v = json_object_get(doc, key);
    const char *str = json_is_string(v) ? json_string_value(v) : NULL;
    /* Embedded NULs would make SQLite's copy differ from what JSON said. */
    if (str == NULL || str[0] == '\0' || strlen(str) != json_string_length(v))
        return NULL;
    return str;
}

int store_parse_order(const char *data, size_t len, store_order_t *o, json_t **doc, char *reason,
                      size_t reasonlen)
{
    json_error_t jerr;
    json_t *d = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr), *v;
    *doc = NULL;
    memset(o, 0, sizeof(*o));
    if (d == NULL) {
        snprintf(reason, reasonlen, "not JSON: %s", jerr.text);
        return -1;
    }
    if (!json_is_object(d)) {
        snprintf(reason, reasonlen, "not a JSON object");
        goto fail;
    }
    if ((o->order_id = nonempty_string(d, "order_id")) == NULL ||
        (o->event = nonempty_string(d, "event")) == NULL ||
        (o->user = nonempty_string(d, "user")) == NULL) {
        snprintf(reason, reasonlen, "order_id, event and user must be non-empty strings");
        goto fail;
    }
    v = json_object_get(d, "qty");
    if (!json_is_integer(v) || json_integer_value(v) < 1) {
        snprintf(reason, reasonlen, "qty must be an integer >= 1");
        goto fail;
    }
    o->qty = json_integer_value(v);
    v = json_object_get(d, "host");
    if (v != NULL && !json_is_null(v) && (o->host = nonempty_string(d, "host")) == NULL) {
        snprintf(reason, reasonlen, "host must be a string");
        goto fail;
    }
    v = json_object_get(d, "created_at");
    o->created_at = -1;
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_integer(v)) {
            snprintf(reason, reasonlen, "created_at must be an integer");
            goto fail;
        }
        o->created_at = json_integer_value(v);
    }
    o->payload = data;
    o->payload_len = len;
    *doc = d;
    return 0;
fail:
    json_decref(d);
    memset(o, 0, sizeof(*o));
    return -1;
}

/* The fast scanner. Nearly every message is the host's own flat object, and a general JSON
 * parser spends most of its time building a document (one allocation per value) that is thrown
 * away at once. This one only reads what store_parse_order would, and gives up (returns 0) at
 * the first thing it is not sure about, so that jansson remains the judge of every odd case. */

enum { F_ORDER_ID, F_EVENT, F_USER, F_HOST, F_QTY, F_CREATED_AT, F_STRINGS = F_QTY };

static const struct {
    const char *name;
    size_t len;
} FIELDS[] = {
    [F_ORDER_ID] = {"order_id", 8}, [F_EVENT] = {"event", 5}, [F_USER] = {"user", 4},
    [F_HOST] = {"host", 4},         [F_QTY] = {"qty", 3},     [F_CREATED_AT] = {"created_at", 10},
};

/* Other keys (a policy may add fields): kept only to refuse a repeated one, as jansson does. */
#define SCAN_MAX_OTHER 8
#define SCAN_MAX_DIGITS 18 /* always fits an int64_t; longer numbers go to jansson */

typedef struct span {
    const char *p;
    size_t n;
} span_t;

typedef struct scan {
    const char *p;
    const char *end;
} scan_t;

static void skip_ws(scan_t *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

/* Reads one character c (after white space). */
static bool eat(scan_t *s, char c)
{
    skip_ws(s);
    if (s->p >= s->end || *s->p != c)
        return false;
    s->p++;
    return true;
}

/* A string of printable ASCII without escapes; anything else is left to jansson (escapes,
 * UTF-8 it validates, control characters it rejects). */
static bool scan_string(scan_t *s, span_t *out)
{
    const char *q;
    if (!eat(s, '"'))
        return false;
    for (q = s->p; q < s->end && *q != '"'; q++) {
        unsigned char c = (unsigned char)*q;
        if (c < 0x20 || c > 0x7e || c == '\\')
            return false;
    }
    if (q >= s->end)
        return false;
    out->p = s->p;
    out->n = (size_t)(q - s->p);
    s->p = q + 1;
    return true;
}

/* An integer as JSON writes it (no leading zero, no fraction, no exponent). */
static bool scan_int(scan_t *s, int64_t *out)
{
    bool neg;
    int64_t v = 0;
    int digits = 0;
    skip_ws(s);
    neg = s->p < s->end && *s->p == '-';
    s->p += neg;
    for (; s->p < s->end && *s->p >= '0' && *s->p <= '9'; s->p++, digits++) {
        if (digits == SCAN_MAX_DIGITS || (digits == 1 && v == 0))
            return false;
        v = v * 10 + (*s->p - '0');
    }
    if (digits == 0 || (s->p < s->end && (*s->p == '.' || *s->p == 'e' || *s->p == 'E')))
        return false;
    *out = neg ? -v : v;
    return true;
}

static int field_of(span_t key)
{
    for (int f = 0; f < (int)(sizeof(FIELDS) / sizeof(FIELDS[0])); f++)
        if (key.n == FIELDS[f].len && memcmp(key.p, FIELDS[f].name, key.n) == 0)
            return f;
    return -1;
}

/* A key that is not an order field: its value may be a string or an integer, once. */
static bool scan_other(scan_t *s, span_t key, span_t *other, int *nother)
{
    span_t str;
    int64_t num;
    for (int i = 0; i < *nother; i++)
        if (other[i].n == key.n && memcmp(other[i].p, key.p, key.n) == 0)
            return false;
    if (*nother == SCAN_MAX_OTHER)
        return false;
    other[(*nother)++] = key;
    skip_ws(s);
    return s->p < s->end && *s->p == '"' ? scan_string(s, &str) : scan_int(s, &num);
}

/* Copies the strings into scratch, NUL-terminated, as SQLite binds them. */
static bool copy_strings(store_order_t *o, const span_t *str, unsigned seen, char *scratch,
                         size_t scratchlen)
{
    const char **dst[F_STRINGS] = {&o->order_id, &o->event, &o->user, &o->host};
    size_t used = 0;
    for (int f = 0; f < F_STRINGS; f++) {
        if (!(seen & (1u << f)))
            continue;
        if (str[f].n + 1 > scratchlen - used)
            return false;
        memcpy(scratch + used, str[f].p, str[f].n);
        scratch[used + str[f].n] = '\0';
        *dst[f] = scratch + used;
        used += str[f].n + 1;
    }
    return true;
}

int store_scan_order(const char *data, size_t len, store_order_t *o, char *scratch,
                     size_t scratchlen)
{
    scan_t s = {data, data + len};
    span_t str[F_STRINGS] = {{0}}, other[SCAN_MAX_OTHER], key;
    int64_t num[2] = {0, -1}; /* qty, created_at */
    unsigned seen = 0;
    int nother = 0;
    const unsigned required = 1u << F_ORDER_ID | 1u << F_EVENT | 1u << F_USER | 1u << F_QTY;

    memset(o, 0, sizeof(*o));
    if (!eat(&s, '{'))
        return 0;
    do {
        int f;
        if (!scan_string(&s, &key) || !eat(&s, ':'))
            return 0;
        f = field_of(key);
        if (f < 0) {
            if (!scan_other(&s, key, other, &nother))
                return 0;
            continue;
        }
        if (seen & (1u << f))
            return 0;
        seen |= 1u << f;
        if (f < F_STRINGS ? !scan_string(&s, &str[f]) || str[f].n == 0
                          : !scan_int(&s, &num[f - F_QTY]))
            return 0;
    } while (eat(&s, ','));
    if (!eat(&s, '}'))
        return 0;
    skip_ws(&s);
    if (s.p != s.end || (seen & required) != required || num[0] < 1)
        return 0;
    if (!copy_strings(o, str, seen, scratch, scratchlen)) {
        memset(o, 0, sizeof(*o));
        return 0;
    }
    o->qty = num[0];
    o->created_at = num[1];
    o->payload = data;
    o->payload_len = len;
    return 1;
}

/* ---- the records of a body ---- */

void order_body_init(order_body_t *b, const char *data, size_t len, const char *count_hdr)
{
    int64_t n = 0;
    if (data == NULL) /* cnats's empty body */
        data = "", len = 0;
    b->p = data;
    b->end = data + len;
    b->seen = 0;
    b->batch = count_hdr != NULL;
    b->done = false;
    b->declared = 1;
    if (count_hdr == NULL)
        return;
    b->declared = -1;
    for (const char *c = count_hdr; *c != '\0'; c++) {
        if (*c < '0' || *c > '9' || n > 100000000)
            return;
        n = n * 10 + (*c - '0');
    }
    if (count_hdr[0] != '\0' && n >= 1)
        b->declared = n;
}

bool order_body_next(order_body_t *b, const char **rec, size_t *len)
{
    if (b->done)
        return false;
    if (!b->batch) {
        *rec = b->p;
        *len = (size_t)(b->end - b->p);
        b->done = true;
        b->seen++;
        return true;
    }
    /* The last piece after a trailing '\n' is no record; an empty body is one (bad) record. */
    if (b->p == b->end && b->seen > 0) {
        b->done = true;
        return false;
    }
    const char *nl = memchr(b->p, '\n', (size_t)(b->end - b->p));
    *rec = b->p;
    *len = nl != NULL ? (size_t)(nl - b->p) : (size_t)(b->end - b->p);
    if (nl != NULL)
        b->p = nl + 1;
    else
        b->done = true;
    b->seen++;
    return true;
}

bool order_body_mismatch(const order_body_t *b)
{
    return b->seen != b->declared;
}

/* ---- {E}:orders values ---- */

/* deduct.lua's plain(): a name that is a JSON string without escapes. */
static bool plain_name(const char *s, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!util_name_char((unsigned char)s[i]))
            return false;
    return true;
}

static size_t digit_run(const char *s, size_t len)
{
    size_t n = 0;
    while (n < len && s[n] >= '0' && s[n] <= '9')
        n++;
    return n;
}

typedef struct out_buf {
    char *p;
    size_t cap, pos;
    bool full;
} out_buf_t;

static void put(out_buf_t *o, const char *s, size_t len)
{
    if (o->full || len > o->cap - o->pos) {
        o->full = true;
        return;
    }
    memcpy(o->p + o->pos, s, len);
    o->pos += len;
}

#define PUT_LIT(o, lit) put(o, lit, sizeof(lit) - 1)

int order_record_json(const char *id, size_t idlen, const char *val, size_t vlen, char *buf,
                      size_t cap, const char **json)
{
    if (vlen > 0 && val[0] == '{') {
        *json = val;
        return (int)vlen;
    }
    /* The id as deduct.lua mints it, "%013d-%010d-<event>": its ms is created_at, its tail the
     * event. Read by digit runs, as a seq past 10 digits still makes an order. */
    size_t ms_digits = digit_run(id, idlen);
    size_t seq_at = ms_digits + 1;
    size_t seq_digits = seq_at < idlen ? digit_run(id + seq_at, idlen - seq_at) : 0;
    size_t event_at = seq_at + seq_digits + 1;
    if (ms_digits < 13 || ms_digits > 18 || ms_digits >= idlen || id[ms_digits] != '-' ||
        seq_digits < 10 || event_at >= idlen || id[event_at - 1] != '-' ||
        !plain_name(id + event_at, idlen - event_at))
        return -1;
    const char *sp1 = memchr(val, ' ', vlen);
    const char *sp2 = sp1 != NULL ? memchr(sp1 + 1, ' ', vlen - (size_t)(sp1 + 1 - val)) : NULL;
    if (sp2 == NULL)
        return -1;
    size_t qlen = (size_t)(sp1 - val), hlen = (size_t)(sp2 - sp1 - 1);
    const char *host = sp1 + 1, *user = sp2 + 1;
    size_t ulen = vlen - (size_t)(user - val);
    /* qty as deduct.lua accepts it: no sign, no leading zero. */
    if (qlen == 0 || qlen > UTIL_I64_LEN || val[0] == '0' || !util_all_digits(val, qlen) ||
        !plain_name(host, hlen) || !plain_name(user, ulen))
        return -1;
    int64_t ms = 0;
    for (size_t i = 0; i < ms_digits; i++)
        ms = ms * 10 + (id[i] - '0');
    char msbuf[UTIL_I64_LEN];
    size_t mslen = util_i64(msbuf, ms);
    out_buf_t o = {.p = buf, .cap = cap};
    PUT_LIT(&o, "{\"event\":\"");
    put(&o, id + event_at, idlen - event_at);
    PUT_LIT(&o, "\",\"host\":\"");
    put(&o, host, hlen);
    PUT_LIT(&o, "\",\"created_at\":");
    put(&o, msbuf, mslen);
    PUT_LIT(&o, ",\"order_id\":\"");
    put(&o, id, idlen);
    PUT_LIT(&o, "\",\"qty\":");
    put(&o, val, qlen);
    PUT_LIT(&o, ",\"user\":\"");
    put(&o, user, ulen);
    PUT_LIT(&o, "\"}");
    if (o.full || o.pos > INT32_MAX)
        return -1;
    *json = buf;
    return (int)o.pos;
}
