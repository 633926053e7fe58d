/* Unit tests of host/server/http.c. A real server runs on a loop thread; the test thread is the
 * client, with plain blocking sockets (receive timeout 5 s, so nothing hangs). Most cases are data:
 * raw request bytes in, expected statuses and bodies out. The handler answers at once, or after a
 * uv_timer for paths /delay/<ms>, to check that pipelined answers keep request order.
 *
 * Links snatch_server; parse errors are read back from metrics.c (metrics_sample.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "http.h"
#include "metrics_sample.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Parse-level errors as metrics.c counted them. */
static int http_errors(int status)
{
    char name[64];
    snprintf(name, sizeof(name), "snatch_http_errors_total{status=\"%d\"}", status);
    return (int)metrics_sample(name);
}

/* ---- server fixture on its own loop thread ---- */

typedef struct {
    uv_loop_t loop;
    uv_async_t async;
    uv_thread_t thread;
    uv_sem_t ready;
    uv_sem_t call_done;
    void (*call_fn)(void *fx, void *arg);
    void *call_arg;
    http_server_t *srv;
    http_config_t cfg;
    int port;
    int start_rc;
    atomic_int closed_called;
} fixture_t;

typedef struct {
    uv_timer_t timer;
    http_request_t *req;
} delayed_t;

static void on_delayed_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_delay(uv_timer_t *t)
{
    delayed_t *d = t->data;
    http_respond(d->req, 200, "text/plain", d->req->path, d->req->path_len);
    uv_close((uv_handle_t *)t, on_delayed_closed);
}

static const char *or_null(const char *s)
{
    return s ? s : "(null)";
}

static void handler(http_request_t *req)
{
    fixture_t *fx = req->server_data;
    if (strncmp(req->path, "/delay/", 7) == 0) {
        delayed_t *d = calloc(1, sizeof(*d));
        d->req = req;
        d->timer.data = d;
        uv_timer_init(&fx->loop, &d->timer);
        uv_timer_start(&d->timer, on_delay, strtoull(req->path + 7, NULL, 10), 0);
        return;
    }
    if (strcmp(req->path, "/echo") == 0) {
        /* %s on every field checks that each is NUL-terminated at its length. */
        bool terminated =
            strlen(req->path) == req->path_len && strlen(req->query) == req->query_len &&
            (!req->user_id || strlen(req->user_id) == req->user_id_len) &&
            (!req->authorization || strlen(req->authorization) == req->authorization_len) &&
            req->body[req->body_len] == '\0';
        char buf[2048];
        int n = snprintf(buf, sizeof(buf), "m=%d|p=%s|q=%s|u=%s|a=%s|b=%.*s|peer=%s",
                         (int)req->method, req->path, req->query, or_null(req->user_id),
                         or_null(req->authorization), (int)req->body_len, req->body, req->peer);
        http_respond(req, terminated ? 200 : 500, "text/plain", buf, (size_t)n);
        return;
    }
    if (strcmp(req->path, "/hdr") == 0) {
        /* The query names headers (comma separated): answers name=[value][value].. for each,
         * every line of a repeated header in order, through http_header(). */
        char buf[2048];
        size_t pos = 0;
        const char *q = req->query;
        while (*q != '\0') {
            size_t nlen = strcspn(q, ",");
            pos += (size_t)snprintf(buf + pos, sizeof(buf) - pos, "%.*s=", (int)nlen, q);
            size_t iter = 0, vlen;
            const char *v;
            while ((v = http_header(req, q, nlen, &iter, &vlen)) != NULL)
                pos += (size_t)snprintf(buf + pos, sizeof(buf) - pos, "[%.*s]%s", (int)vlen, v,
                                        v[vlen] == '\0' ? "" : "(not terminated)");
            q += nlen + (q[nlen] == ',');
        }
        http_respond(req, 200, "text/plain", buf, pos);
        return;
    }
    if (strcmp(req->path, "/big") == 0) {
        size_t len = req->query_len ? strtoull(req->query, NULL, 10) : 200000;
        char *body = malloc(len);
        for (size_t i = 0; i < len; i++)
            body[i] = (char)('a' + i % 26);
        http_respond(req, 200, "text/plain", body, len);
        free(body);
        return;
    }
    http_respond(req, 200, "text/plain", req->path, req->path_len);
}

static void on_async(uv_async_t *a)
{
    fixture_t *fx = a->data;
    if (!fx->call_fn)
        return;
    fx->call_fn(fx, fx->call_arg);
    fx->call_fn = NULL;
    uv_sem_post(&fx->call_done);
}

static void loop_thread(void *arg)
{
    fixture_t *fx = arg;
    fx->start_rc = http_server_start(&fx->srv, &fx->loop, "127.0.0.1", 0, &fx->cfg, handler, fx);
    fx->port = http_server_port(fx->srv);
    uv_sem_post(&fx->ready);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
}

/* Runs fn on the loop thread and waits for it. */
static void on_loop(fixture_t *fx, void (*fn)(void *, void *), void *arg)
{
    fx->call_arg = arg;
    fx->call_fn = fn;
    uv_async_send(&fx->async);
    uv_sem_wait(&fx->call_done);
}

static fixture_t *fixture_start(const http_config_t *cfg)
{
    fixture_t *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    fx->cfg = *cfg;
    assert_int_equal(uv_loop_init(&fx->loop), 0);
    assert_int_equal(uv_async_init(&fx->loop, &fx->async, on_async), 0);
    fx->async.data = fx;
    uv_sem_init(&fx->ready, 0);
    uv_sem_init(&fx->call_done, 0);
    assert_int_equal(uv_thread_create(&fx->thread, loop_thread, fx), 0);
    uv_sem_wait(&fx->ready);
    assert_int_equal(fx->start_rc, 0);
    assert_true(fx->port > 0);
    return fx;
}

static void on_srv_closed(void *arg)
{
    fixture_t *fx = arg;
    atomic_store(&fx->closed_called, 1);
    fx->srv = NULL;
    uv_close((uv_handle_t *)&fx->async, NULL);
}

static void do_close(void *fxp, void *arg)
{
    (void)arg;
    fixture_t *fx = fxp;
    http_server_close(fx->srv, on_srv_closed, fx);
}

static void do_count(void *fxp, void *arg)
{
    fixture_t *fx = fxp;
    *(size_t *)arg = http_server_connections(fx->srv);
}

static size_t connections(fixture_t *fx)
{
    size_t n = 0;
    on_loop(fx, do_count, &n);
    return n;
}

/* Closes the server; the loop then ends once every handle is gone, so uv_loop_close succeeding
 * proves nothing was left open. */
static void fixture_stop(fixture_t *fx)
{
    on_loop(fx, do_close, NULL);
    uv_thread_join(&fx->thread);
    assert_int_equal(atomic_load(&fx->closed_called), 1);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    uv_sem_destroy(&fx->ready);
    uv_sem_destroy(&fx->call_done);
    free(fx);
}

/* ---- client side ---- */

typedef struct {
    int fd;
    size_t len;
    char buf[1 << 20];
} client_t;

typedef struct {
    int status;
    bool close;
    char head[1024];
    char *body;
    size_t body_len;
} response_t;

/* rcvbuf > 0 fixes the socket's receive buffer (set before connect, so the window is small from
 * the start): a client that does not read then holds the server's answer in its write queue. */
static client_t *client_open_rcvbuf(int port, int rcvbuf)
{
    client_t *cl = calloc(1, sizeof(*cl));
    assert_non_null(cl);
    cl->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(cl->fd >= 0);
    if (rcvbuf > 0)
        assert_int_equal(setsockopt(cl->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)), 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(cl->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(cl->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int one = 1;
    setsockopt(cl->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(cl->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return cl;
}

static client_t *client_open(int port)
{
    return client_open_rcvbuf(port, 0);
}

static void client_close(client_t *cl)
{
    if (cl->fd >= 0)
        close(cl->fd);
    free(cl);
}

static void send_all(client_t *cl, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(cl->fd, p, n, MSG_NOSIGNAL);
        assert_true(w > 0);
        p += w;
        n -= (size_t)w;
    }
}

static void send_bytewise(client_t *cl, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        send_all(cl, p + i, 1);
        if (i % 8 == 0)
            usleep(1000); /* lets the server see many small reads */
    }
}

/* Reads more input; returns bytes read, 0 on EOF, -1 on error or timeout. */
static ssize_t client_fill(client_t *cl)
{
    if (cl->len == sizeof(cl->buf))
        return -1;
    ssize_t n = recv(cl->fd, cl->buf + cl->len, sizeof(cl->buf) - cl->len, 0);
    if (n > 0)
        cl->len += (size_t)n;
    return n;
}

static void client_consume(client_t *cl, size_t n)
{
    memmove(cl->buf, cl->buf + n, cl->len - n);
    cl->len -= n;
}

/* Reads one response (no body when no_body, as for HEAD). Returns 0, or -1 on EOF/timeout. */
static int read_response(client_t *cl, response_t *r, bool no_body)
{
    char *end;
    memset(r, 0, sizeof(*r));
    while (!(end = memmem(cl->buf, cl->len, "\r\n\r\n", 4))) {
        if (client_fill(cl) <= 0)
            return -1;
    }
    size_t hlen = (size_t)(end - cl->buf) + 4;
    assert_true(hlen < sizeof(r->head));
    memcpy(r->head, cl->buf, hlen);
    r->head[hlen] = '\0';
    assert_int_equal(strncmp(r->head, "HTTP/1.1 ", 9), 0);
    r->status = atoi(r->head + 9);
    r->close = strstr(r->head, "\r\nConnection: close\r\n") != NULL;
    const char *cl_hdr = strstr(r->head, "\r\nContent-Length: ");
    assert_non_null(cl_hdr);
    size_t blen = no_body ? 0 : strtoull(cl_hdr + 18, NULL, 10);
    while (cl->len < hlen + blen) {
        if (client_fill(cl) <= 0)
            return -1;
    }
    r->body = malloc(blen + 1);
    memcpy(r->body, cl->buf + hlen, blen);
    r->body[blen] = '\0';
    r->body_len = blen;
    client_consume(cl, hlen + blen);
    return 0;
}

/* True when the server closes the connection cleanly with no further bytes. */
static bool sees_eof(client_t *cl)
{
    if (cl->len)
        return false;
    char b[256];
    ssize_t n = recv(cl->fd, b, sizeof(b), 0);
    return n == 0;
}

/* Asserts that the server closed `shed` to make room for a new connection, and says what was seen
 * instead when it did not: whether `kept` (which must stay open) was closed in its place. */
static void assert_shed(client_t *shed, client_t *kept)
{
    char b[256];
    ssize_t n = shed->len ? (ssize_t)shed->len : recv(shed->fd, b, sizeof(b), 0);
    if (n == 0)
        return;
    int err = errno;
    ssize_t k = recv(kept->fd, b, sizeof(b), MSG_PEEK | MSG_DONTWAIT);
    fail_msg("connection to shed not closed: %s; the one to keep %s",
             n > 0           ? "bytes received"
             : err == EAGAIN ? "no EOF within 5 s"
                             : strerror(err),
             k == 0  ? "was closed instead"
             : k > 0 ? "received bytes"
                     : "is open");
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* Waits (bounded: the clients closed their ends, so the server only has to notice) until the
 * server holds n connections. */
static void wait_connections(fixture_t *fx, size_t n)
{
    double deadline = now_ms() + 10000;
    while (connections(fx) != n && now_ms() < deadline)
        usleep(5000);
    assert_int_equal(connections(fx), n);
}

/* ---- cases as data ---- */

typedef struct {
    int status;
    const char *body;   /* exact body, NULL to skip */
    const char *header; /* a substring the head must hold, NULL to skip */
    bool no_body;
} expect_t;

typedef struct {
    const char *name;
    const char *request;
    bool bytewise;
    bool closes; /* the server must close after the last expected answer */
    int metric;  /* status counted by metrics_http_error, 0 for none */
    expect_t resp[6];
} http_case_t;

/* The case table leaves trailing fields out when they are empty. */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

#define D10 "0123456789"
#define D100 D10 D10 D10 D10 D10 D10 D10 D10 D10 D10
#define S10 "          "
#define S100 S10 S10 S10 S10 S10 S10 S10 S10 S10 S10
#define ECHO_PEER "|peer=127.0.0.1"

static const http_case_t cases[] = {
    {"simple GET",
     "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n",
     false,
     false,
     0,
     {{200, "/hello", "Content-Type: text/plain\r\nContent-Length: 6\r\n\r\n"}}},
    {"leading CRLF", "\r\nGET /lf HTTP/1.1\r\nHost: x\r\n\r\n", false, false, 0, {{200, "/lf"}}},
    {"pipelined, delayed answers first",
     "GET /delay/150 HTTP/1.1\r\n\r\nGET /a HTTP/1.1\r\n\r\n"
     "GET /delay/40 HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /delay/1 HTTP/1.1\r\n\r\n",
     false,
     false,
     0,
     {{200, "/delay/150"}, {200, "/a"}, {200, "/delay/40"}, {200, "/b"}, {200, "/delay/1"}}},
    {"byte by byte",
     "POST /echo?x=1&y=2 HTTP/1.1\r\nX-User-Id: u-17\r\nAuthorization: Bearer t\r\n"
     "Content-Length: 5\r\n\r\nhello",
     true,
     false,
     0,
     {{200, "m=3|p=/echo|q=x=1&y=2|u=u-17|a=Bearer t|b=hello" ECHO_PEER}}},
    {"fields, case-insensitive names, trailing spaces",
     "PUT /echo HTTP/1.1\r\nx-USER-id:   bob  \r\nAUTHORIZATION:Basic YQ==\r\nContent-Length: 3"
     "\r\n\r\nabc",
     false,
     false,
     0,
     {{200, "m=4|p=/echo|q=|u=bob|a=Basic YQ==|b=abc" ECHO_PEER}}},
    {"every header readable by name, any case, in order, trimmed",
     "GET /hdr?x-code,X-USER-ID,host,x-none,x-empty,x-two,transfer-encoding HTTP/1.1\r\n"
     "Host: h1\r\nX-Code:  abc def \r\nX-User-Id: u1\r\nx-empty:\r\nX-Two: a\r\n"
     "X-TWO: b\r\n\r\n",
     false,
     false,
     0,
     {{200, "x-code=[abc def]X-USER-ID=[u1]host=[h1]x-none=x-empty=[]x-two=[a][b]"
            "transfer-encoding="}}},
    {"headers of a chunked request, trailers left out",
     "POST /hdr?x-a,transfer-encoding,x-trailer HTTP/1.1\r\nX-A: 1\r\n"
     "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n",
     false,
     false,
     0,
     {{200, "x-a=[1]transfer-encoding=[chunked]x-trailer="}}},
    {"absent fields",
     "GET /echo HTTP/1.1\r\n\r\n",
     false,
     false,
     0,
     {{200, "m=1|p=/echo|q=|u=(null)|a=(null)|b=" ECHO_PEER}}},
    {"empty query and fragment",
     "DELETE /echo?#frag HTTP/1.1\r\n\r\n",
     false,
     false,
     0,
     {{200, "m=5|p=/echo|q=|u=(null)|a=(null)|b=" ECHO_PEER}}},
    {"chunked body",
     "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
     "2\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n",
     false,
     false,
     0,
     {{200, "m=3|p=/echo|q=|u=(null)|a=(null)|b=abcde" ECHO_PEER}}},
    {"HEAD has no body",
     "HEAD /xyz HTTP/1.1\r\n\r\nGET /after HTTP/1.1\r\n\r\n",
     false,
     false,
     0,
     {{200, NULL, "Content-Length: 4\r\n", true}, {200, "/after"}}},
    {"other method",
     "OPTIONS /echo HTTP/1.1\r\n\r\n",
     false,
     false,
     0,
     {{200, "m=0|p=/echo|q=|u=(null)|a=(null)|b=" ECHO_PEER}}},
    {"HTTP/1.0 closes",
     "GET /x HTTP/1.0\r\n\r\nGET /never HTTP/1.0\r\n\r\n",
     false,
     true,
     0,
     {{200, "/x", "Connection: close"}}},
    {"HTTP/1.0 keep-alive",
     "GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
     "GET /y HTTP/1.0\r\n\r\n",
     false,
     true,
     0,
     {{200, "/x", "Connection: keep-alive"}, {200, "/y", "Connection: close"}}},
    {"Connection: close",
     "GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
     false,
     true,
     0,
     {{200, "/a", "Connection: close"}}},
    {"pipelined then garbage",
     "GET /delay/30 HTTP/1.1\r\n\r\nGET /a HTTP/1.1\r\n\r\n\x01garbage",
     false,
     true,
     400,
     {{200, "/delay/30"}, {200, "/a"}, {400, NULL, "Connection: close"}}},
    {"garbage",
     "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
     false,
     true,
     400,
     {{400, "{\"error\":\"bad_request\",\"detail\":\"malformed request\"}"}}},
    {"unknown method", "FROB / HTTP/1.1\r\n\r\n", false, true, 400, {{400, NULL}}},
    {"bad version syntax", "GET / HTTP/1.x\r\n\r\n", false, true, 400, {{400, NULL}}},
    {"431 long header",
     "GET / HTTP/1.1\r\nX-Long: "
     "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567"
     "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567"
     "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567"
     "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567"
     "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567"
     "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567"
     "\r\n\r\n",
     false,
     true,
     431,
     {{431, "{\"error\":\"header_too_large\"}"}}},
    {"413 content-length",
     "POST /echo HTTP/1.1\r\nContent-Length: 1000\r\n\r\n",
     false,
     true,
     413,
     {{413, "{\"error\":\"body_too_large\"}"}}},
    {"413 chunked",
     "POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nc8\r\n" D100 D100 "\r\n64\r\n" D100
     "\r\n0\r\n\r\n",
     false,
     true,
     413,
     {{413, NULL}}},
    {"chunked at the limit",
     "POST /delay/1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nc8\r\n" D100 D100
     "\r\n38\r\n" D10 D10 D10 D10 D10 "012345\r\n0\r\n\r\n",
     false,
     false,
     0,
     {{200, "/delay/1"}}},
    {"body at the limit",
     "POST /echo HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
     false,
     false,
     0,
     {{200, "m=3|p=/echo|q=|u=(null)|a=(null)|b=" ECHO_PEER}}},
    {"CL + TE",
     "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
     "0\r\n\r\n",
     false,
     true,
     400,
     {{400, NULL}}},
    {"TE + CL",
     "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
     "0\r\n\r\n",
     false,
     true,
     400,
     {{400, NULL}}},
    {"two Content-Lengths",
     "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
     "ab",
     false,
     true,
     400,
     {{400, NULL}}},
    {"two equal Content-Lengths",
     "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n"
     "\r\na",
     false,
     true,
     400,
     {{400, NULL}}},
    {"two Transfer-Encodings",
     "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
     "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     false,
     true,
     400,
     {{400, NULL}}},
    {"TE not plain chunked",
     "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
     "0\r\n\r\n",
     false,
     true,
     400,
     {{400, NULL}}},
    {"TE identity",
     "POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
     false,
     true,
     400,
     {{400, NULL}}},
    {"space before colon",
     "POST / HTTP/1.1\r\nContent-Length : 1\r\n\r\na",
     false,
     true,
     400,
     {{400, NULL}}},
    {"obs-fold", "GET / HTTP/1.1\r\nX-User-Id: a\r\n b\r\n\r\n", false, true, 400, {{400, NULL}}},
    /* RFC 9112 lets a server refuse these; http-parser 2.9 reads them, a proxy may not. */
    {"obs-fold after an empty TE",
     "POST / HTTP/1.1\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
     false,
     true,
     400,
     {{400, NULL}}},
    {"obs-fold after an empty user id",
     "GET / HTTP/1.1\r\nX-User-Id:\r\n victim\r\n\r\n",
     false,
     true,
     400,
     {{400, NULL}}},
    {"obs-fold after an empty Content-Length",
     "POST / HTTP/1.1\r\nContent-Length:\r\n 5\r\n\r\nhello",
     false,
     true,
     400,
     {{400, NULL}}},
    {"obs-fold by a tab",
     "GET / HTTP/1.1\r\nX-Foo: a\r\n\tb\r\n\r\n",
     false,
     true,
     400,
     {{400, NULL}}},
    {"bare LF ends a header",
     "POST / HTTP/1.1\r\nX-Foo: a\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     false,
     true,
     400,
     {{400, NULL}}},
    {"bare LF after the request line",
     "GET /lf HTTP/1.1\nHost: x\r\n\r\n",
     false,
     true,
     400,
     {{400, NULL}}},
    {"bare LF ends the head", "GET /lf HTTP/1.1\r\nHost: x\r\n\n", false, true, 400, {{400, NULL}}},
    {"bare CR in a header",
     "GET / HTTP/1.1\r\nX-Foo: a\rb\r\n\r\n",
     false,
     true,
     400,
     {{400, NULL}}},
    {"bare LF in the second pipelined request",
     "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\nX: y\r\n\r\n",
     false,
     true,
     400,
     {{200, "/a"}, {400, NULL}}},
    {"leading whitespace of a value counts against max-head",
     "GET / HTTP/1.1\r\nX-Pad: " S100 S100 S100 S100 S100 "x\r\n\r\n",
     false,
     true,
     431,
     {{431, NULL}}},
    {"two user ids",
     "GET / HTTP/1.1\r\nX-User-Id: a\r\nX-User-Id: b\r\n\r\n",
     false,
     true,
     400,
     {{400, NULL}}},
    {"negative Content-Length",
     "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
     false,
     true,
     400,
     {{400, NULL}}},
    {"HTTP/2.0",
     "GET / HTTP/2.0\r\n\r\n",
     false,
     true,
     505,
     {{505, "{\"error\":\"http_version_not_supported\"}"}}},
    {"HTTP/1.2", "GET / HTTP/1.2\r\n\r\n", false, true, 505, {{505, NULL}}},
    {"HTTP/0.9", "GET / HTTP/0.9\r\n\r\n", false, true, 505, {{505, NULL}}},
    {"upgrade answered, then closed",
     "GET /up HTTP/1.1\r\nUpgrade: websocket\r\n"
     "Connection: Upgrade\r\n\r\nGET /never HTTP/1.1\r\n\r\n",
     false,
     true,
     0,
     {{200, "/up", "Connection: close"}}},
};

/* Sends the request whole, byte by byte, or (split > 0) in two writes cut at split. */
static void run_case_split(fixture_t *fx, const http_case_t *tc, size_t split)
{
    int before = tc->metric ? http_errors(tc->metric) : 0;
    client_t *cl = client_open(fx->port);
    size_t len = strlen(tc->request);
    if (tc->bytewise) {
        send_bytewise(cl, tc->request, len);
    } else if (split > 0 && split < len) {
        send_all(cl, tc->request, split);
        usleep(2000);
        send_all(cl, tc->request + split, len - split);
    } else {
        send_all(cl, tc->request, len);
    }
    for (size_t i = 0; i < ARRAY_LEN(tc->resp) && tc->resp[i].status; i++) {
        const expect_t *e = &tc->resp[i];
        response_t r;
        if (read_response(cl, &r, e->no_body) != 0)
            fail_msg("%s: answer %zu missing", tc->name, i);
        if (r.status != e->status)
            fail_msg("%s: answer %zu: status %d, want %d", tc->name, i, r.status, e->status);
        if (e->body && strcmp(r.body, e->body) != 0)
            fail_msg("%s: answer %zu: body '%s', want '%s'", tc->name, i, r.body, e->body);
        if (e->header && !strstr(r.head, e->header))
            fail_msg("%s: answer %zu: head lacks '%s':\n%s", tc->name, i, e->header, r.head);
        free(r.body);
    }
    if (tc->closes) {
        if (!sees_eof(cl))
            fail_msg("%s: connection not closed cleanly", tc->name);
    } else {
        /* Still usable afterwards. */
        send_all(cl, "GET /again HTTP/1.1\r\n\r\n", 23);
        response_t r;
        assert_int_equal(read_response(cl, &r, false), 0);
        assert_string_equal(r.body, "/again");
        free(r.body);
    }
    if (tc->metric && http_errors(tc->metric) != before + 1)
        fail_msg("%s: metrics_http_error(%d) not counted once", tc->name, tc->metric);
    client_close(cl);
}

static void run_case(fixture_t *fx, const http_case_t *tc)
{
    run_case_split(fx, tc, 0);
}

/* The timeouts are far beyond any stall of a loaded machine: only the timeout tests (timeout_cfg)
 * may see a connection time out, or a slow client would get a 408 or lose its idle connection. */
static const http_config_t test_cfg = {
    .max_head_bytes = 512,
    .max_body_bytes = 256,
    .header_timeout_ms = 60000,
    .idle_timeout_ms = 60000,
    .max_pipeline = 4,
};

static const http_config_t timeout_cfg = {
    .max_head_bytes = 512,
    .max_body_bytes = 256,
    .header_timeout_ms = 300,
    .idle_timeout_ms = 1500,
    .max_pipeline = 4,
};

static int setup(void **state)
{
    *state = fixture_start(&test_cfg);
    return 0;
}

static int setup_timeouts(void **state)
{
    *state = fixture_start(&timeout_cfg);
    return 0;
}

static int teardown(void **state)
{
    fixture_stop(*state);
    return 0;
}

static void test_cases(void **state)
{
    fixture_t *fx = *state;
    for (size_t i = 0; i < ARRAY_LEN(cases); i++)
        run_case(fx, &cases[i]);
}

/* The same cases again, with every request split byte by byte. */
static void test_cases_bytewise(void **state)
{
    fixture_t *fx = *state;
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        http_case_t tc = cases[i];
        tc.bytewise = true;
        run_case(fx, &tc);
    }
}

/* Every case without delayed answers, cut in two at every position. */
static void test_cases_split_everywhere(void **state)
{
    fixture_t *fx = *state;
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        size_t len = strlen(cases[i].request);
        if (strstr(cases[i].request, "/delay/") || len > 300)
            continue;
        for (size_t split = 1; split < len; split++)
            run_case_split(fx, &cases[i], split);
    }
}

static void test_keep_alive_many(void **state)
{
    fixture_t *fx = *state;
    client_t *cl = client_open(fx->port);
    for (int i = 0; i < 500; i++) {
        char req[64], want[32];
        int n = snprintf(req, sizeof(req), "GET /k%d HTTP/1.1\r\n\r\n", i);
        snprintf(want, sizeof(want), "/k%d", i);
        send_all(cl, req, (size_t)n);
        response_t r;
        assert_int_equal(read_response(cl, &r, false), 0);
        assert_int_equal(r.status, 200);
        assert_string_equal(r.body, want);
        assert_false(r.close);
        free(r.body);
    }
    client_close(cl);
}

/* Far more pipelined requests than max_pipeline (4), delayed and immediate mixed, in one write:
 * reading pauses and resumes, and every answer comes back in request order. */
static void test_pipeline_deep(void **state)
{
    fixture_t *fx = *state;
    enum { N = 300 };
    size_t cap = (size_t)N * 48, len = 0;
    char *buf = malloc(cap);
    for (int i = 0; i < N; i++) {
        if (i % 7 == 0)
            len += (size_t)snprintf(buf + len, cap - len, "GET /delay/%d HTTP/1.1\r\n\r\n", i % 5);
        else
            len += (size_t)snprintf(buf + len, cap - len, "GET /p%d HTTP/1.1\r\n\r\n", i);
    }
    client_t *cl = client_open(fx->port);
    send_all(cl, buf, len);
    for (int i = 0; i < N; i++) {
        char want[32];
        if (i % 7 == 0)
            snprintf(want, sizeof(want), "/delay/%d", i % 5);
        else
            snprintf(want, sizeof(want), "/p%d", i);
        response_t r;
        assert_int_equal(read_response(cl, &r, false), 0);
        assert_string_equal(r.body, want);
        free(r.body);
    }
    free(buf);
    client_close(cl);
}

/* A client that pipelines big answers without reading: the server must stop reading (bounded
 * memory), then deliver everything once the client reads. */
static void test_write_backpressure(void **state)
{
    fixture_t *fx = *state;
    enum { N = 120, BIG = 100000 };
    const char *req = "GET /big?100000 HTTP/1.1\r\n\r\n";
    size_t rlen = strlen(req);
    client_t *cl = client_open(fx->port);
    int sent = 0, got = 0;
    double deadline = now_ms() + 20000;
    size_t partial = 0;
    while (got < N && now_ms() < deadline) {
        struct pollfd pfd = {.fd = cl->fd, .events = POLLIN | (sent < N ? POLLOUT : 0)};
        assert_true(poll(&pfd, 1, 1000) >= 0);
        if ((pfd.revents & POLLOUT) && sent < N) {
            ssize_t w = send(cl->fd, req + partial, rlen - partial, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (w > 0) {
                partial += (size_t)w;
                if (partial == rlen) {
                    partial = 0;
                    sent++;
                }
            }
            continue;
        }
        /* Read only after everything is sent, so the server sees a client that does not read. */
        if (sent < N && !(pfd.revents & POLLIN))
            continue;
        if (sent < N)
            usleep(20000);
        response_t r;
        assert_int_equal(read_response(cl, &r, false), 0);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.body_len, BIG);
        assert_int_equal(r.body[BIG - 1], 'a' + (BIG - 1) % 26);
        free(r.body);
        got++;
    }
    assert_int_equal(got, N);
    client_close(cl);
}

static void test_header_timeout(void **state)
{
    fixture_t *fx = *state;
    int before = http_errors(408);
    client_t *cl = client_open(fx->port);
    double t0 = now_ms();
    /* Slowloris: a byte now and then never completes the head in time. */
    const char *part = "GET / HTTP/1.1\r\nX-Slow: ";
    send_all(cl, part, strlen(part));
    for (int i = 0; i < 3; i++) {
        usleep(50000);
        send_all(cl, "a", 1);
    }
    response_t r;
    assert_int_equal(read_response(cl, &r, false), 0);
    double waited = now_ms() - t0;
    assert_int_equal(r.status, 408);
    assert_string_equal(r.body, "{\"error\":\"timeout\"}");
    assert_true(r.close);
    assert_true(waited >= 250 && waited < 3000);
    free(r.body);
    assert_true(sees_eof(cl));
    assert_int_equal(http_errors(408), before + 1);
    client_close(cl);
}

static void test_idle_timeout(void **state)
{
    fixture_t *fx = *state;
    client_t *cl = client_open(fx->port);
    send_all(cl, "GET /a HTTP/1.1\r\n\r\n", 19);
    response_t r;
    assert_int_equal(read_response(cl, &r, false), 0);
    free(r.body);
    double t0 = now_ms();
    assert_true(sees_eof(cl)); /* silently closed */
    double waited = now_ms() - t0;
    assert_true(waited >= 1000 && waited < 4500);
    client_close(cl);

    /* A connection that never sends anything goes the same way. */
    cl = client_open(fx->port);
    assert_true(sees_eof(cl));
    client_close(cl);
}

/* The peer goes away while its requests are with the handler: the late http_respond calls must
 * only free them (ASan checks this), and the connection must be released. */
static void test_peer_closes_pending(void **state)
{
    fixture_t *fx = *state;
    const char *reqs = "GET /delay/100 HTTP/1.1\r\n\r\nGET /delay/50 HTTP/1.1\r\n\r\n"
                       "GET /x HTTP/1.1\r\n\r\nGET /par";
    client_t *cl = client_open(fx->port);
    send_all(cl, reqs, strlen(reqs));
    usleep(20000);
    client_close(cl);

    /* The same with a reset instead of a FIN. */
    cl = client_open(fx->port);
    send_all(cl, reqs, strlen(reqs));
    usleep(20000);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(cl->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    client_close(cl);

    /* Half-close: the peer has sent everything and still wants its answers. */
    cl = client_open(fx->port);
    send_all(cl, "GET /delay/50 HTTP/1.1\r\n\r\nGET /h HTTP/1.1\r\n\r\n", 45);
    shutdown(cl->fd, SHUT_WR);
    response_t r;
    assert_int_equal(read_response(cl, &r, false), 0);
    assert_string_equal(r.body, "/delay/50");
    free(r.body);
    assert_int_equal(read_response(cl, &r, false), 0);
    assert_string_equal(r.body, "/h");
    free(r.body);
    assert_true(sees_eof(cl));
    client_close(cl);

    wait_connections(fx, 0);
}

static void test_big_response(void **state)
{
    fixture_t *fx = *state;
    client_t *cl = client_open(fx->port);
    send_all(cl, "GET /big?900000 HTTP/1.1\r\n\r\nGET /after HTTP/1.1\r\n\r\n", 52);
    response_t r;
    assert_int_equal(read_response(cl, &r, false), 0);
    assert_int_equal(r.body_len, 900000);
    for (size_t i = 0; i < r.body_len; i++)
        assert_int_equal(r.body[i], 'a' + i % 26);
    free(r.body);
    assert_int_equal(read_response(cl, &r, false), 0);
    assert_string_equal(r.body, "/after");
    free(r.body);
    client_close(cl);
}

static void test_many_connections(void **state)
{
    fixture_t *fx = *state;
    enum { N = 200 };
    client_t **cls = calloc(N, sizeof(*cls));
    for (int i = 0; i < N; i++) {
        cls[i] = client_open(fx->port);
        send_all(cls[i], "GET /delay/20 HTTP/1.1\r\n\r\n", 26);
    }
    for (int i = 0; i < N; i++) {
        response_t r;
        assert_int_equal(read_response(cls[i], &r, false), 0);
        assert_string_equal(r.body, "/delay/20");
        free(r.body);
    }
    assert_int_equal(connections(fx), N);
    for (int i = 0; i < N; i++)
        client_close(cls[i]);
    free(cls);
}

/* Sends a request and half of the next head in one write; returns once the first is answered. */
static void busy_with_half_head(client_t *cl)
{
    const char *reqs = "GET /busy HTTP/1.1\r\n\r\nGET /half HTTP/1.1\r\n";
    send_all(cl, reqs, strlen(reqs));
    response_t r;
    assert_int_equal(read_response(cl, &r, false), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "/busy");
    free(r.body);
}

/* http_server_close with a busy and an idle connection: the idle one is closed at once, the busy
 * one gets its answer with Connection: close, then on_closed runs and the loop ends. */
static void test_server_close_drains(void **state)
{
    (void)state;
    fixture_t *fx = fixture_start(&test_cfg);
    client_t *idle = client_open(fx->port);
    client_t *busy = client_open(fx->port);
    client_t *partial = client_open(fx->port);
    /* Each first answer proves that the server has read what follows it in the same write: a
     * request still with the handler, and a half head. The delay outlasts any stall before the
     * close. */
    const char *reqs = "GET /first HTTP/1.1\r\n\r\nGET /delay/1000 HTTP/1.1\r\n\r\n";
    send_all(busy, reqs, strlen(reqs));
    busy_with_half_head(partial);
    response_t r;
    assert_int_equal(read_response(busy, &r, false), 0);
    assert_string_equal(r.body, "/first");
    free(r.body);
    wait_connections(fx, 3);
    on_loop(fx, do_close, NULL);
    assert_true(sees_eof(idle));
    assert_true(sees_eof(partial));
    assert_int_equal(read_response(busy, &r, false), 0);
    assert_string_equal(r.body, "/delay/1000");
    assert_true(r.close);
    free(r.body);
    assert_true(sees_eof(busy));
    uv_thread_join(&fx->thread);
    assert_int_equal(atomic_load(&fx->closed_called), 1);
    assert_int_equal(uv_loop_close(&fx->loop), 0);
    client_close(idle);
    client_close(busy);
    client_close(partial);
    uv_sem_destroy(&fx->ready);
    uv_sem_destroy(&fx->call_done);
    free(fx);
}

static void roundtrip(client_t *cl, const char *path)
{
    char req[128];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\n\r\n", path);
    send_all(cl, req, (size_t)n);
    response_t r;
    assert_int_equal(read_response(cl, &r, false), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, path);
    free(r.body);
}

/* A new connection is answered 503 and closed at once. */
static void assert_refused(int port)
{
    client_t *cl = client_open(port);
    response_t r;
    assert_int_equal(read_response(cl, &r, false), 0);
    assert_int_equal(r.status, 503);
    assert_true(r.close);
    free(r.body);
    assert_true(sees_eof(cl));
    client_close(cl);
}

/* At the cap an idle keep-alive connection makes room for a new one; with only busy ones (a head
 * half received) the new one is refused at once. */
static void test_connection_cap(void **state)
{
    (void)state;
    http_config_t cfg = test_cfg;
    cfg.limits = http_limits_new(2, 0);
    fixture_t *fx = fixture_start(&cfg);
    client_t *idle1 = client_open(fx->port);
    client_t *idle2 = client_open(fx->port);
    roundtrip(idle1, "/a");
    roundtrip(idle2, "/b");
    /* No wait needed: the server files a connection as idle in the callback that writes its
     * answer, before it can accept the buyer (an answer left to a uv_write is re-filed by on_write,
     * which libuv runs before it polls again); idle1 and idle2 filed in the same millisecond keep
     * their order (tl_put). */
    client_t *buyer = client_open(fx->port);
    roundtrip(buyer, "/buy");
    assert_shed(idle1, idle2); /* the longest idle went */
    roundtrip(idle2, "/still");
    /* A complete request and a half head in one write arrive in one read, so the first answer
     * proves that the server holds the half head: both connections are busy. */
    busy_with_half_head(buyer);
    busy_with_half_head(idle2);
    int before = http_errors(503);
    assert_refused(fx->port);
    assert_int_equal(http_errors(503), before + 1);
    client_close(idle1);
    client_close(idle2);
    client_close(buyer);
    wait_connections(fx, 0);
    client_t *after = client_open(fx->port);
    roundtrip(after, "/after");
    client_close(after);
    fixture_stop(fx);
    http_limits_free(cfg.limits);
}

/* Reads one 200 answer whose body is body_len bytes without keeping it. */
static void drain_response(client_t *cl, size_t body_len)
{
    char *end;
    while (!(end = memmem(cl->buf, cl->len, "\r\n\r\n", 4)))
        assert_true(client_fill(cl) > 0);
    size_t hlen = (size_t)(end - cl->buf) + 4;
    assert_int_equal(strncmp(cl->buf, "HTTP/1.1 200 ", 13), 0);
    char want[64];
    snprintf(want, sizeof(want), "\r\nContent-Length: %zu\r\n", body_len);
    assert_non_null(memmem(cl->buf, hlen, want, strlen(want)));
    client_consume(cl, hlen);
    for (size_t left = body_len; left > 0;) {
        if (cl->len == 0)
            assert_true(client_fill(cl) > 0);
        size_t n = cl->len < left ? cl->len : left;
        client_consume(cl, n);
        left -= n;
    }
}

/* More than the kernel buffers of one connection can hold: the server's send buffer grows up to
 * tcp_wmem's max (4 MiB on Debian); the client's receive buffer is fixed small. */
static size_t beyond_socket_buffers(void)
{
    long lo = 0, def = 0, max = 4L << 20;
    FILE *f = fopen("/proc/sys/net/ipv4/tcp_wmem", "r");
    if (f) {
        if (fscanf(f, "%ld %ld %ld", &lo, &def, &max) != 3)
            max = 4L << 20;
        fclose(f);
    }
    return (size_t)max * 2 + (1 << 20);
}

/* A connection is idle from when its last answer has left, not from when it was asked: while its
 * client has not read a big answer (the rest waits in a uv_write), it is busy, and once the client
 * has read it, it is the connection idle for the shortest time, so a new one sheds the other. */
static void test_connection_cap_idle_since_answer(void **state)
{
    (void)state;
    size_t big = beyond_socket_buffers();
    http_config_t cfg = test_cfg;
    cfg.limits = http_limits_new(2, 0);
    fixture_t *fx = fixture_start(&cfg);
    client_t *slow = client_open_rcvbuf(fx->port, 65536);
    client_t *quick = client_open(fx->port);
    char req[64];
    int n = snprintf(req, sizeof(req), "GET /big?%zu HTTP/1.1\r\n\r\n", big);
    send_all(slow, req, (size_t)n);
    assert_true(client_fill(slow) > 0); /* the answer is being written */
    roundtrip(quick, "/quick");
    drain_response(slow, big);
    client_t *buyer = client_open(fx->port);
    roundtrip(buyer, "/buy");
    assert_shed(quick, slow);
    roundtrip(slow, "/still");
    client_close(slow);
    client_close(quick);
    client_close(buyer);
    fixture_stop(fx);
    http_limits_free(cfg.limits);
}

static void test_connection_cap_per_client(void **state)
{
    (void)state;
    http_config_t cfg = test_cfg;
    cfg.limits = http_limits_new(100, 2);
    fixture_t *fx = fixture_start(&cfg);
    client_t *a = client_open(fx->port);
    client_t *b = client_open(fx->port);
    roundtrip(a, "/a");
    roundtrip(b, "/b");
    assert_refused(fx->port);
    client_close(a);
    wait_connections(fx, 1);
    client_t *c = client_open(fx->port);
    roundtrip(c, "/c");
    client_close(b);
    client_close(c);
    fixture_stop(fx);
    http_limits_free(cfg.limits);
}

/* Several servers on one port (one per loop thread, as the host runs them). */
static void test_reuseport(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    http_server_t *a = NULL, *b = NULL;
    assert_int_equal(http_server_start(&a, &loop, "127.0.0.1", 0, NULL, handler, NULL), 0);
    int port = http_server_port(a);
    assert_int_equal(http_server_start(&b, &loop, "127.0.0.1", port, NULL, handler, NULL), 0);
    assert_int_equal(http_server_port(b), port);
    /* A second process would share it silently: the probe says it is taken. */
    assert_int_equal(http_probe_port("127.0.0.1", port), UV_EADDRINUSE);
    http_server_t *c = NULL;
    assert_int_equal(http_server_start(&c, &loop, "not an address", 0, NULL, handler, NULL),
                     UV_EINVAL);
    assert_null(c);
    http_server_close(a, NULL, NULL);
    http_server_close(b, NULL, NULL);
    http_server_close(NULL, NULL, NULL);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_status_text(void **state)
{
    (void)state;
    assert_string_equal(http_status_text(200), "OK");
    assert_string_equal(http_status_text(409), "Conflict");
    assert_string_equal(http_status_text(431), "Request Header Fields Too Large");
    assert_string_equal(http_status_text(799), "Unknown");
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    metrics_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_text),
        cmocka_unit_test(test_reuseport),
        cmocka_unit_test_setup_teardown(test_cases, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cases_bytewise, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cases_split_everywhere, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keep_alive_many, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipeline_deep, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_header_timeout, setup_timeouts, teardown),
        cmocka_unit_test_setup_teardown(test_idle_timeout, setup_timeouts, teardown),
        cmocka_unit_test_setup_teardown(test_peer_closes_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_big_response, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_connections, setup, teardown),
        cmocka_unit_test(test_server_close_drains),
        cmocka_unit_test(test_connection_cap),
        cmocka_unit_test(test_connection_cap_idle_since_answer),
        cmocka_unit_test(test_connection_cap_per_client),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
