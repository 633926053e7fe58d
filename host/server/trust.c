/* --trusted-proxy ranges and X-Forwarded-For. See trust.h. */
#include "trust.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "util.h"

/* Parses an address text (len bytes, no NUL needed) into family + 16 bytes; IPv4-mapped IPv6
 * addresses become IPv4, so a dual-stack listener's peers match IPv4 ranges. */
static int parse_addr(const char *s, size_t len, int *family, uint8_t addr[16])
{
    char buf[TRUST_ADDR_MAX + 1];
    if (len == 0 || len > TRUST_ADDR_MAX)
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    memset(addr, 0, 16);
    if (inet_pton(AF_INET, buf, addr) == 1) {
        *family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, buf, addr) != 1)
        return -1;
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(addr, mapped, 12) == 0) {
        memmove(addr, addr + 12, 4);
        memset(addr + 4, 0, 12);
        *family = AF_INET;
        return 0;
    }
    *family = AF_INET6;
    return 0;
}

static int parse_cidr(const char *s, size_t len, trust_cidr_t *c)
{
    const char *slash = memchr(s, '/', len);
    size_t alen = slash ? (size_t)(slash - s) : len;
    if (parse_addr(s, alen, &c->family, c->addr) != 0)
        return -1;
    unsigned max = c->family == AF_INET ? 32 : 128;
    c->prefix = max;
    if (slash != NULL) {
        int64_t p;
        if (util_parse_i64(slash + 1, len - alen - 1, 0, max, &p) != 0)
            return -1;
        c->prefix = (unsigned)p;
    }
    /* Host bits set (10.0.0.1/8) are almost always a typo for something else: refuse. */
    for (unsigned bit = c->prefix; bit < max; bit++)
        if (c->addr[bit / 8] & (0x80u >> (bit % 8)))
            return -1;
    return 0;
}

static bool is_space(char ch)
{
    return ch == ' ' || ch == '\t';
}

int trust_parse(trust_list_t *l, const char *spec)
{
    size_t len = strlen(spec), i = 0;
    if (len == 0)
        return -1;
    while (i <= len) {
        size_t end = i;
        while (end < len && spec[end] != ',')
            end++;
        size_t a = i, b = end;
        while (a < b && is_space(spec[a]))
            a++;
        while (b > a && is_space(spec[b - 1]))
            b--;
        if (a == b || l->n == TRUST_MAX || parse_cidr(spec + a, b - a, &l->v[l->n]) != 0)
            return -1;
        l->n++;
        i = end + 1;
    }
    return 0;
}

void trust_default(trust_list_t *l)
{
    l->n = 0;
    trust_parse(l, "127.0.0.0/8,::1");
}

static bool in_range(const trust_cidr_t *c, int family, const uint8_t addr[16])
{
    if (c->family != family)
        return false;
    unsigned full = c->prefix / 8, rest = c->prefix % 8;
    if (memcmp(c->addr, addr, full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xffu << (8 - rest));
    return (c->addr[full] & mask) == (addr[full] & mask);
}

static bool contains_parsed(const trust_list_t *l, int family, const uint8_t addr[16])
{
    for (size_t i = 0; i < l->n; i++)
        if (in_range(&l->v[i], family, addr))
            return true;
    return false;
}

bool trust_contains(const trust_list_t *l, const char *addr, size_t len)
{
    int family;
    uint8_t a[16];
    if (parse_addr(addr, len, &family, a) != 0)
        return false;
    return contains_parsed(l, family, a);
}

static void format_addr(int family, const uint8_t addr[16], char *out)
{
    if (family == AF_INET) {
        /* What inet_ntop writes, without its sprintf: this runs for nearly every sale. */
        for (int i = 0; i < 4; i++) {
            unsigned v = addr[i];
            if (v >= 100)
                *out++ = (char)('0' + v / 100);
            if (v >= 10)
                *out++ = (char)('0' + v / 10 % 10);
            *out++ = (char)('0' + v % 10);
            *out++ = i < 3 ? '.' : '\0';
        }
        return;
    }
    if (inet_ntop(family, addr, out, TRUST_ADDR_MAX) == NULL)
        out[0] = '\0';
}

/* An X-Forwarded-For entry: an address, or as some proxies write it, "1.2.3.4:port" or
 * "[2001:db8::1]:port" (the port says nothing about who the client is). */
static int parse_hop(const char *s, size_t len, int *family, uint8_t addr[16])
{
    if (len > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (close == NULL)
            return -1;
        size_t rest = len - (size_t)(close - s) - 1;
        if (rest > 0 && close[1] != ':')
            return -1;
        return parse_addr(s + 1, (size_t)(close - s) - 1, family, addr);
    }
    const char *colon = memchr(s, ':', len);
    if (colon != NULL && memchr(colon + 1, ':', len - (size_t)(colon - s) - 1) == NULL)
        len = (size_t)(colon - s); /* one colon: IPv4 with a port (IPv6 has at least two) */
    return parse_addr(s, len, family, addr);
}

void trust_client(const trust_list_t *l, const char *peer, const char *xff, size_t xff_len,
                  char *out)
{
    int family;
    uint8_t a[16];
    if (parse_addr(peer, strlen(peer), &family, a) != 0) {
        snprintf(out, TRUST_ADDR_MAX, "%s", peer);
        return;
    }
    format_addr(family, a, out);
    if (xff == NULL || !contains_parsed(l, family, a))
        return;
    /* Walk right to left; out always holds the last hop believed so far. */
    size_t end = xff_len;
    for (;;) {
        size_t start = end;
        while (start > 0 && xff[start - 1] != ',')
            start--;
        size_t s = start, e = end;
        while (s < e && is_space(xff[s]))
            s++;
        while (e > s && is_space(xff[e - 1]))
            e--;
        if (parse_hop(xff + s, e - s, &family, a) != 0)
            return;
        format_addr(family, a, out);
        if (!contains_parsed(l, family, a) || start == 0)
            return;
        end = start - 1;
    }
}
