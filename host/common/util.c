/* Helpers shared by every module of the host. No state, no allocation except util_read_file. */
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int64_t util_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t util_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int util_parse_hostport(const char *s, char *host, size_t cap, int min_port, int *port)
{
    const char *colon = strrchr(s, ':');
    int64_t p;
    if (colon == NULL || (size_t)(colon - s) >= cap ||
        util_parse_i64(colon + 1, strlen(colon + 1), min_port, 65535, &p) != 0)
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    *port = (int)p;
    return 0;
}

int util_parse_i64(const char *s, size_t len, int64_t min, int64_t max, int64_t *out)
{
    /* No strtoll: it accepts spaces, '+' and partial input, all of which we refuse. */
    if (len == 0 || len > 19)
        return -1;
    bool neg = false;
    size_t i = 0;
    if (s[0] == '-') {
        neg = true;
        i = 1;
        if (len == 1)
            return -1;
    }
    int64_t v = 0;
    for (; i < len; i++) {
        if (s[i] < '0' || s[i] > '9' || v > (INT64_MAX - (s[i] - '0')) / 10)
            return -1; /* 19 digits can exceed INT64_MAX: refused, never wrapped */
        v = v * 10 + (s[i] - '0');
    }
    if (neg)
        v = -v;
    if (v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

size_t util_i64(char *dst, int64_t v)
{
    char tmp[UTIL_I64_LEN];
    size_t i = sizeof(tmp), n = 0;
    /* In unsigned arithmetic, so that INT64_MIN has a magnitude. */
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        dst[n++] = '-';
    memcpy(dst + n, tmp + i, sizeof(tmp) - i);
    return n + sizeof(tmp) - i;
}

int util_json_str(char *buf, size_t cap, size_t *pos, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t p = *pos;
    if (p + 2 > cap)
        return -1;
    buf[p++] = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            if (p + 2 > cap)
                return -1;
            buf[p++] = '\\';
            buf[p++] = (char)c;
        } else if (c < 0x20) {
            if (p + 6 > cap)
                return -1;
            memcpy(buf + p, "\\u00", 4);
            buf[p + 4] = hex[c >> 4];
            buf[p + 5] = hex[c & 15];
            p += 6;
        } else {
            if (p + 1 > cap)
                return -1;
            buf[p++] = (char)c;
        }
    }
    if (p + 1 > cap)
        return -1;
    buf[p++] = '"';
    *pos = p;
    return 0;
}

const char *util_query_get(const char *query, size_t qlen, const char *key, size_t *len)
{
    size_t klen = strlen(key);
    size_t i = 0;
    while (i < qlen) {
        size_t end = i;
        while (end < qlen && query[end] != '&')
            end++;
        if (end - i > klen && memcmp(query + i, key, klen) == 0 && query[i + klen] == '=') {
            *len = end - i - klen - 1;
            return query + i + klen + 1;
        }
        i = end + 1;
    }
    return NULL;
}

bool util_secret_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    /* Compare over b's length whatever a is, so timing says nothing about the prefix matched. */
    unsigned char diff = (unsigned char)(alen != blen);
    for (size_t i = 0; i < blen; i++) {
        unsigned char ca = i < alen ? (unsigned char)a[i] : 0;
        diff |= ca ^ (unsigned char)b[i];
    }
    return blen > 0 && diff == 0;
}

char *util_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            size_t ncap = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, ncap);
            if (nb == NULL)
                goto fail;
            buf = nb;
            cap = ncap;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    if (ferror(f))
        goto fail;
    fclose(f);
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
fail:
    free(buf);
    fclose(f);
    errno = errno ? errno : EIO;
    return NULL;
}
