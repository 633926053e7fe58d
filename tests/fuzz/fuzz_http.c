/* libFuzzer target for host/server/http.c: each input is sent to a real server over loopback, in
 * pieces whose size the first byte chooses, then the client half-closes and reads every answer. The
 * server runs on a loop driven from this thread between client steps. Requests whose path has an
 * odd length are answered from a 0 ms timer, the others at once, so that out-of-order answering
 * and pipelining are exercised. Findings: crashes and sanitizer reports, answers that do not parse
 * as HTTP/1.1, a request handed to the handler whose answer never arrives, and connections that
 * never close (abort after 5 s) or that the server never releases.
 *
 * The client parses the answers knowing which requests were HEAD (their answers carry
 * Content-Length but no body): the handler records the method of every request in arrival order,
 * which is also the order of the answers. The error answer http.c may add (400, 413, ...) comes
 * after all of those and always has a body.
 *
 * Speed: the client never sleeps while it still has bytes to send (loopback delivers them before
 * send() returns, so the next loop turn sees them); once everything is sent it blocks in poll() on
 * both its socket and the loop's backend fd, for no longer than the loop's next timer. A few
 * thousand inputs a second instead of about a hundred with a fixed 1 ms nap per step.
 *
 * Build: cmake -DFUZZ=ON -DCMAKE_C_COMPILER=clang; run: fuzz_http tests/fuzz/corpus_http
 * (scripts/fuzz.sh --target http). */
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

/* Methods of the requests the handler saw during this input, oldest first; answers consume them.
 * An input of at most -max_len bytes holds far fewer requests (each takes more than 8 bytes). */
#define MAX_REQUESTS 4096
static bool was_head[MAX_REQUESTS];
static size_t n_handled, n_answered;

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

/* Every header the policy could ask for (req.header) must be readable: each value found by
 * http_header() lies inside the request's header records and is NUL-terminated, and the walk
 * ends. X-User-Id, when the request has one, is found there with the same value. */
static void check_headers(const http_request_t *req)
{
    static const char *const names[] = {"host", "X-USER-ID", "x-a", "content-length", "a"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        size_t iter = 0, vlen, found = 0;
        const char *v;
        while ((v = http_header(req, names[i], strlen(names[i]), &iter, &vlen)) != NULL) {
            if (v < req->headers || v + vlen >= req->headers + req->headers_len || v[vlen] != '\0')
                abort();
            if (++found > 1024)
                abort();
            if (i == 1 && found == 1 &&
                (req->user_id == NULL || vlen != req->user_id_len ||
                 memcmp(v, req->user_id, vlen) != 0))
                abort();
        }
    }
}

static void handler(http_request_t *req)
{
    check_headers(req);
    if (n_handled == MAX_REQUESTS) {
        fprintf(stderr, "fuzz_http: more than %d requests in one input\n", MAX_REQUESTS);
        abort();
    }
    was_head[n_handled++] = req->method == HTTP_M_HEAD;
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

/* The answers must form a valid HTTP/1.1 response stream. Returning 1 tells http-parser that
 * this response has no body whatever its headers say. */
static int on_resp_headers(http_parser *p)
{
    (void)p;
    if (n_answered == n_handled)
        return 0; /* http.c's own error answer, which has a body */
    return was_head[n_answered++] ? 1 : 0;
}

static const http_parser_settings resp_settings = {.on_headers_complete = on_resp_headers};

/* Blocks until the client socket or the server loop has something to do, for at most max_ms. */
static void wait_events(int fd, int max_ms)
{
    struct pollfd pfd[2] = {
        {.fd = fd, .events = POLLIN},
        {.fd = uv_backend_fd(&loop), .events = POLLIN},
    };
    int t = uv_backend_timeout(&loop);
    if (t < 0 || t > max_ms)
        t = max_ms;
    poll(pfd, 2, t);
}

static int connect_client(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0)
        abort();
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 && errno != EINPROGRESS)
        abort();
    return fd;
}

/* Reads what the server has sent; returns true at end of stream. */
static bool read_answers(int fd, http_parser *rp)
{
    char buf[16384];
    for (;;) {
        ssize_t r = recv(fd, buf, sizeof(buf), 0);
        if (r == 0)
            return true;
        if (r < 0)
            return errno != EAGAIN && errno != ENOTCONN;
        size_t n = http_parser_execute(rp, &resp_settings, buf, (size_t)r);
        if (HTTP_PARSER_ERRNO(rp) != HPE_OK || n != (size_t)r) {
            fprintf(stderr, "fuzz_http: invalid answer: %s\n",
                    http_errno_name(HTTP_PARSER_ERRNO(rp)));
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!srv && setup() != 0)
        abort();
    if (size < 1)
        return 0;
    size_t piece = (size_t)(data[0] % 32) + 1;
    data++;
    size--;

    n_handled = n_answered = 0;
    int fd = connect_client();
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
        bool sending = sent < size;
        if (sending) {
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
        eof = read_answers(fd, &rp);
        if (!eof && !sending)
            wait_events(fd, 5);
    }
    close(fd);
    /* End of stream inside an answer is an error for http-parser. */
    http_parser_execute(&rp, &resp_settings, NULL, 0);
    if (HTTP_PARSER_ERRNO(&rp) != HPE_OK) {
        fprintf(stderr, "fuzz_http: answer cut short: %s\n",
                http_errno_name(HTTP_PARSER_ERRNO(&rp)));
        abort();
    }
    /* Let the server release the connection and any timer of a delayed answer. */
    start = uv_hrtime();
    while (http_server_connections(srv) > 0 && uv_hrtime() - start < 5000000000ull) {
        uv_run(&loop, UV_RUN_NOWAIT);
        wait_events(-1, 1);
    }
    if (http_server_connections(srv) > 0) {
        fprintf(stderr, "fuzz_http: connection leaked\n");
        abort();
    }
    if (n_answered != n_handled) {
        fprintf(stderr, "fuzz_http: %zu requests handled, %zu answered\n", n_handled, n_answered);
        abort();
    }
    return 0;
}
