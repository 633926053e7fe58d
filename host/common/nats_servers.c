/* See nats_servers.h. */
#include "nats_servers.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define URL_MAX 1024

static bool valid_port(const char *s, size_t n)
{
    long v = 0;
    if (n == 0 || n > 5)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    return v >= 1 && v <= 65535;
}

/* One item: s[0..n), no comma inside. */
static const char *check_one(const char *s, size_t n)
{
    if (n == 0)
        return "an empty item (two commas, or one at an end)";
    if (n > URL_MAX)
        return "a URL longer than 1024 bytes";
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= ' ' || s[i] == 0x7f)
            return "a blank or control character (write nats://a:4222,nats://b:4222)";
    const char *p = s, *end = s + n;
    const char *sep = memmem(s, n, "://", 3);
    if (sep != NULL) {
        size_t sl = (size_t)(sep - s);
        if (!(sl == 4 && memcmp(s, "nats", 4) == 0) && !(sl == 3 && memcmp(s, "tls", 3) == 0))
            return "a scheme other than nats:// or tls://";
        p = sep + 3;
    }
    /* Credentials end at the last '@' (a password may hold one). */
    for (const char *q = end; q > p; q--)
        if (q[-1] == '@') {
            p = q;
            break;
        }
    const char *host_end = end;
    if (p < end && *p == '[') { /* [v6]:port */
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (rb == NULL || rb == p + 1)
            return "a bad [IPv6] address";
        host_end = rb + 1;
        if (host_end < end && *host_end != ':')
            return "text after an [IPv6] address";
    } else {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        if (colon != NULL)
            host_end = colon;
        if (memchr(p, '/', (size_t)(host_end - p)) != NULL)
            return "a path in a URL";
    }
    if (host_end == p)
        return "a URL without a host";
    if (host_end < end && !valid_port(host_end + 1, (size_t)(end - host_end - 1)))
        return "a port that is not 1..65535";
    return NULL;
}

int nats_servers_check(const char *list, char *err, size_t errlen)
{
    int n = 0;
    const char *s = list;
    if (list == NULL || *list == '\0') {
        snprintf(err, errlen, "--nats wants a URL or a comma list of URLs");
        return -1;
    }
    for (;;) {
        const char *comma = strchr(s, ',');
        size_t len = comma != NULL ? (size_t)(comma - s) : strlen(s);
        const char *why = check_one(s, len);
        n++;
        if (why == NULL && n > NATS_SERVERS_MAX)
            why = "more than 16 URLs";
        if (why != NULL) {
            snprintf(err, errlen, "--nats: item %d has %s", n, why);
            return -1;
        }
        if (comma == NULL)
            return 0;
        s = comma + 1;
    }
}

natsStatus nats_servers_apply(natsOptions *o, const char *list)
{
    char err[128];
    const char *urls[NATS_SERVERS_MAX];
    int n = 0;
    if (nats_servers_check(list, err, sizeof(err)) != 0)
        return NATS_INVALID_ARG;
    char *copy = strdup(list);
    if (copy == NULL)
        return NATS_NO_MEMORY;
    for (char *save = NULL, *tok = strtok_r(copy, ",", &save); tok != NULL && n < NATS_SERVERS_MAX;
         tok = strtok_r(NULL, ",", &save))
        urls[n++] = tok;
    natsStatus s = natsOptions_SetServers(o, urls, n); /* it copies the strings */
    free(copy);
    return s;
}

const char *nats_servers_connected(natsConnection *nc, char *buf, size_t len)
{
    char url[URL_MAX + 1];
    if (nc == NULL || natsConnection_GetConnectedUrl(nc, url, sizeof(url)) != NATS_OK ||
        url[0] == '\0') {
        snprintf(buf, len, "none");
        return buf;
    }
    const char *scheme = strstr(url, "://");
    const char *host = scheme != NULL ? scheme + 3 : url;
    const char *at = strrchr(host, '@');
    snprintf(buf, len, "%.*s%s", scheme != NULL ? (int)(host - url) : 0, url,
             at != NULL ? at + 1 : host);
    return buf;
}
