/* Small helpers every module of the host needs: clocks, JSON string escaping, strict integer
 * parsing, name validation. Thread-safe, allocation-free. */
#ifndef SNATCH_UTIL_H
#define SNATCH_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Longest event name and buyer id the host ever accepts, whatever the policy says; the policy
 * may only lower these. Bounded so keys, order ids and log lines have a known size. */
#define SNATCH_NAME_MAX 64

/* Wall clock in milliseconds since the epoch, and a monotonic clock in microseconds. */
int64_t util_now_ms(void);
uint64_t util_mono_us(void);

/* Parses a whole decimal integer in [min, max]; rejects sign tricks, spaces and overflow.
 * Returns 0 and stores *out, or -1. */
int util_parse_i64(const char *s, size_t len, int64_t min, int64_t max, int64_t *out);

/* Splits "HOST:PORT" (the last ':' separates; HOST may be empty) into host (cap bytes,
 * NUL-terminated) and *port, a decimal in [min_port, 65535]. The one parser of every program's
 * address flags. Returns 0, or -1 (no ':', host too long, bad port). */
int util_parse_hostport(const char *s, char *host, size_t cap, int min_port, int *port);

/* True when s (len bytes) is a name snatch accepts as an event name or buyer id: 1..max_len bytes
 * of [A-Za-z0-9_.:@-], not starting or ending with '.', no "..". The one name rule: a name that
 * passes is a valid Redis hash tag, a valid NATS subject token sequence (orders.<event>: no empty
 * token, no wildcard, no whitespace), an SQLite text value and a JSON string without escapes.
 * Nothing else reaches Redis, NATS or SQL. Inline so that snatch-reconcile (which does not link
 * the host's code) applies the very same rule. */
/* A character names may hold (deduct.lua's plain(): a JSON string without escapes). */
static inline bool util_name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == ':' || c == '@' || c == '-';
}

static inline bool util_valid_name(const char *s, size_t len, size_t max_len)
{
    if (s == NULL || len == 0 || len > max_len || len > SNATCH_NAME_MAX)
        return false;
    if (s[0] == '.' || s[len - 1] == '.')
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!util_name_char(c) || (c == '.' && i + 1 < len && s[i + 1] == '.'))
            return false;
    }
    return true;
}

/* True when s[0..n) are all decimal digits (n 0: true). */
static inline bool util_all_digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

/* Writes v in decimal at dst (room for UTIL_I64_LEN bytes), no NUL; returns the length. The hot
 * paths' replacement for snprintf("%" PRId64). */
#define UTIL_I64_LEN 20
size_t util_i64(char *dst, int64_t v);

/* Appends s as a JSON string literal (quotes included) to buf at *pos, never past cap.
 * Returns 0, or -1 when it does not fit (*pos then unspecified). */
int util_json_str(char *buf, size_t cap, size_t *pos, const char *s, size_t len);

/* Finds key=value in a URL query string (not decoded: snatch's values need no decoding since
 * they must be plain names or integers). Returns a pointer into query and sets *len, or NULL. */
const char *util_query_get(const char *query, size_t qlen, const char *key, size_t *len);

/* Constant-time comparison for secrets (admin token): time depends only on the lengths. */
bool util_secret_equal(const char *a, size_t alen, const char *b, size_t blen);

/* Reads a whole file into a malloc'd NUL-terminated buffer. Caller frees. NULL on error (errno). */
char *util_read_file(const char *path, size_t *len);

#endif
