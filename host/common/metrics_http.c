/* GET /metrics responder; see metrics_http.h. Every socket call is bounded: poll with a timeout
 * for accept (so stop is seen), SO_RCVTIMEO/SO_SNDTIMEO on the connection (so a silent or
 * non-reading peer costs at most a few seconds). */
#include "metrics_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

#define MAX_REQUEST 4096
#define IO_TIMEOUT_S 2
#define TICK_MS 1000

struct metrics_http {
    int fd;
    int port;
    pthread_t thread;
    atomic_bool stop;
    metrics_http_render_fn render;
    metrics_http_tick_fn tick;
    void *arg;
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* peer gone or timed out: nothing more to do for it */
        p += n;
        len -= (size_t)n;
    }
}

static void reply(int fd, int status, const char *reason, const char *type, const char *body,
                  size_t len)
{
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     status, reason, type, len);
    write_all(fd, head, (size_t)n);
    write_all(fd, body, len);
}

/* Reads the request head (bounded) and answers it. */
static void serve(metrics_http_t *m, int fd)
{
    char req[MAX_REQUEST + 1];
    size_t got = 0;
    struct timeval tv = {IO_TIMEOUT_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    while (got < MAX_REQUEST) {
        ssize_t n = recv(fd, req + got, MAX_REQUEST - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return;
        got += (size_t)n;
        req[got] = '\0';
        if (strstr(req, "\r\n\r\n") != NULL || strstr(req, "\n\n") != NULL)
            break;
    }
    req[got] = '\0';
    static const char not_found[] = "not found\n";
    if (strncmp(req, "GET /metrics ", 13) != 0 && strncmp(req, "GET /metrics?", 13) != 0) {
        reply(fd, 404, "Not Found", "text/plain", not_found, sizeof(not_found) - 1);
        return;
    }
    size_t len = 0;
    char *text = m->render(&len, m->arg);
    if (text == NULL) {
        static const char busy[] = "unavailable\n";
        reply(fd, 503, "Service Unavailable", "text/plain", busy, sizeof(busy) - 1);
        return;
    }
    reply(fd, 200, "OK", "text/plain; version=0.0.4", text, len);
    free(text);
}

static void *run(void *arg)
{
    metrics_http_t *m = arg;
    int64_t next_tick = 0;
    while (!atomic_load(&m->stop)) {
        int64_t now = mono_ms();
        if (m->tick != NULL && now >= next_tick) {
            m->tick(m->arg);
            next_tick = mono_ms() + TICK_MS;
        }
        struct pollfd p = {.fd = m->fd, .events = POLLIN};
        if (poll(&p, 1, 200) <= 0)
            continue;
        int c = accept4(m->fd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0)
            continue;
        serve(m, c);
        close(c);
    }
    return NULL;
}

static int parse_addr(const char *addr, struct sockaddr_in *sa)
{
    char host[64];
    int port;
    if (util_parse_hostport(addr, host, sizeof(host), 0, &port) != 0)
        return -1;
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, host[0] ? host : "0.0.0.0", &sa->sin_addr) == 1 ? 0 : -1;
}

int metrics_http_start(metrics_http_t **out, const char *addr, metrics_http_render_fn render,
                       metrics_http_tick_fn tick, void *arg, char *err, size_t errlen)
{
    struct sockaddr_in sa;
    socklen_t salen = sizeof(sa);
    int one = 1;
    if (parse_addr(addr, &sa) != 0) {
        snprintf(err, errlen, "bad address %s (want IPv4ADDR:PORT)", addr);
        return -1;
    }
    metrics_http_t *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    m->render = render;
    m->tick = tick;
    m->arg = arg;
    /* Non-blocking: a connection reset between poll and accept must not block the thread (and
     * so stop); accepted sockets are blocking, bounded by their timeouts. */
    m->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (m->fd < 0)
        goto fail;
    /* No SO_REUSEPORT: a second process on the same port must fail, not share it. */
    setsockopt(m->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(m->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(m->fd, 16) != 0 ||
        getsockname(m->fd, (struct sockaddr *)&sa, &salen) != 0)
        goto fail;
    m->port = ntohs(sa.sin_port);
    if (pthread_create(&m->thread, NULL, run, m) != 0)
        goto fail;
    *out = m;
    return 0;
fail:
    snprintf(err, errlen, "cannot listen on %s: %s", addr, strerror(errno));
    if (m->fd >= 0)
        close(m->fd);
    free(m);
    return -1;
}

int metrics_http_port(const metrics_http_t *m)
{
    return m->port;
}

void metrics_http_stop(metrics_http_t *m)
{
    if (m == NULL)
        return;
    atomic_store(&m->stop, true);
    pthread_join(m->thread, NULL);
    close(m->fd);
    free(m);
}
