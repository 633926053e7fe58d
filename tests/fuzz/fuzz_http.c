/* libFuzzer target for host/http.c: each input is sent to a real server over loopback, in pieces
 * whose size the first byte chooses, then the client half-closes and reads every answer. The
 * server runs on a loop driven from this thread between client steps. Requests whose path has an
 * odd length are answered from a 0 ms timer, the others at once, so that out-of-order answering
 * and pipelining are exercised. Findings: crashes and sanitizer reports, answers that do not parse
 * as HTTP/1.1, and connections that never close (abort after 5 s).
 *
 * Build: cmake -DFUZZ=ON -DCMAKE_C_COMPILER=clang; run: fuzz_http tests/fuzz/corpus_http */
#include <errno.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "http.h"

void metrics_http_error(int status)
{
    (void)status;
}

static uv_loop_t loop;
static http_server_t *srv;
static int port;

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
    http_respond(d->req, 409, NULL, d->req->body, d->req->body_len);
    uv_close((uv_handle_t *)t, on_delayed_closed);
}

static void handler(http_request_t *req)
{
    if (req->path_len % 2 == 0) {
        http_respond(req, 200, "text/plain", req->path, req->path_len);
        return;
    }
    delayed_t *d = calloc(1, sizeof(*d));
    if (!d)
        abort();
    d->req = req;
    d->timer.data = d;
    uv_timer_init(&loop, &d->timer);
    uv_timer_start(&d->timer, on_delay, 0, 0);
}

static int setup(void)
{
    static const http_config_t cfg = {
        .max_head_bytes = 1024,
        .max_body_bytes = 1024,
        .header_timeout_ms = 2000,
        .idle_timeout_ms = 2000,
        .max_pipeline = 3,
    };
    signal(SIGPIPE, SIG_IGN);
    if (uv_loop_init(&loop) != 0)
        return -1;
    if (http_server_start(&srv, &loop, "127.0.0.1", 0, &cfg, handler, NULL) != 0)
        return -1;
    port = http_server_port(srv);
    return 0;
}

/* The answers must form a valid HTTP/1.1 response stream. */
static int on_resp_complete(http_parser *p)
{
    (void)p;
    return 0;
}

static const http_parser_settings resp_settings = {.on_message_complete = on_resp_complete};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!srv && setup() != 0)
        abort();
    if (size < 1)
        return 0;
    size_t piece = (size_t)(data[0] % 32) + 1;
    data++;
    size--;

    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0)
        abort();
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 && errno != EINPROGRESS)
        abort();

    http_parser rp;
    http_parser_init(&rp, HTTP_RESPONSE);
    size_t sent = 0;
    bool half_closed = false, eof = false;
    uint64_t start = uv_hrtime();
    while (!eof) {
        if (uv_hrtime() - start > 5000000000ull) {
            fprintf(stderr, "fuzz_http: connection never closed\n");
            abort();
        }
        uv_run(&loop, UV_RUN_NOWAIT);
        if (sent < size) {
            size_t n = size - sent < piece ? size - sent : piece;
            ssize_t w = send(fd, data + sent, n, MSG_NOSIGNAL);
            if (w > 0)
                sent += (size_t)w;
            else if (w < 0 && errno != EAGAIN && errno != ENOTCONN)
                sent = size; /* the server has closed: stop sending */
        } else if (!half_closed) {
            shutdown(fd, SHUT_WR);
            half_closed = true;
        }
        char buf[16384];
        ssize_t r = recv(fd, buf, sizeof(buf), 0);
        if (r > 0) {
            size_t n = http_parser_execute(&rp, &resp_settings, buf, (size_t)r);
            if (HTTP_PARSER_ERRNO(&rp) != HPE_OK || n != (size_t)r) {
                fprintf(stderr, "fuzz_http: invalid answer: %s\n",
                        http_errno_name(HTTP_PARSER_ERRNO(&rp)));
                abort();
            }
        } else if (r == 0 || (errno != EAGAIN && errno != ENOTCONN)) {
            eof = true;
        } else {
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            poll(&pfd, 1, 1);
        }
    }
    close(fd);
    /* Let the server release the connection and any timer of a delayed answer. */
    start = uv_hrtime();
    while (http_server_connections(srv) > 0 && uv_hrtime() - start < 5000000000ull) {
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(100);
    }
    if (http_server_connections(srv) > 0) {
        fprintf(stderr, "fuzz_http: connection leaked\n");
        abort();
    }
    return 0;
}
