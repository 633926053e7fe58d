/* HTTP/1.1 server on one libuv loop: accepting (SO_REUSEPORT, so every loop thread listens on
 * the same port), parsing (Debian's http-parser), keep-alive, pipelining, timeouts and ordered,
 * batched writes. Everything here runs on the loop's own thread.
 *
 * Contract with the handler: every request handed to it must be answered exactly once with
 * http_respond(), now or later (after a Redis reply, say). The request stays valid until then, even
 * when the peer has gone away; answers to pipelined requests are written in request order. */
#ifndef SNATCH_HTTP_H
#define SNATCH_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef enum {
    HTTP_M_OTHER = 0,
    HTTP_M_GET,
    HTTP_M_HEAD,
    HTTP_M_POST,
    HTTP_M_PUT,
    HTTP_M_DELETE,
    HTTP_M_PATCH,
} http_method_t;

typedef struct http_request {
    http_method_t method;
    /* NUL-terminated, owned by the request. path excludes the query; query excludes '?'. */
    const char *path;
    size_t path_len;
    const char *query; /* "" when absent */
    size_t query_len;
    const char *user_id; /* X-User-Id header, NULL when absent */
    size_t user_id_len;
    const char *authorization; /* Authorization header, NULL when absent */
    size_t authorization_len;
    const char *body; /* "" when absent */
    size_t body_len;
    const char *peer;   /* client IP address as text */
    void *server_data;  /* the data given to http_server_start */
    void *handler_data; /* free for the handler's use */
    /* X-Forwarded-For header, NULL when absent (a second one is a 400). */
    const char *forwarded_for;
    size_t forwarded_for_len;
    /* Every header of the head, for http_header() (NULL and 0: none); opaque records. */
    const char *headers;
    size_t headers_len;
    bool admin_listener;  /* arrived on a server started with http_config_t.admin_listener */
    uint64_t received_ns; /* uv_hrtime() when handed to the handler (request latency) */
} http_request_t;

typedef void (*http_handler_fn)(http_request_t *req);

typedef struct http_config {
    size_t max_head_bytes;      /* request line + headers; beyond: 431 and close (default 8 KiB) */
    size_t max_body_bytes;      /* beyond: 413 and close (default 64 KiB) */
    uint64_t header_timeout_ms; /* a started request (body too) must arrive in time: 408 (10 s) */
    uint64_t idle_timeout_ms;   /* keep-alive connection with nothing pending: close (60 s) */
    unsigned max_pipeline;      /* unanswered requests per connection before reading pauses (64) */
    bool admin_listener;        /* copied into every request's admin_listener */
    /* Connection caps shared by every server of the process; NULL: no cap. */
    struct http_limits *limits;
} http_config_t;

/* Connection caps, shared by the servers of all loop threads (the counts are atomic or under a
 * mutex, touched on accept and close only). max_conns: open connections of the process; near it
 * the accepting server closes its longest-idle keep-alive connection to make room, and when it
 * has none the new connection gets a 503 and is closed. per_client: open connections of one
 * client address (0: no cap); beyond it the new connection gets the 503. */
typedef struct http_limits http_limits_t;
http_limits_t *http_limits_new(size_t max_conns, unsigned per_client);
void http_limits_free(http_limits_t *l);

typedef struct http_server http_server_t;

/* Binds addr:port with SO_REUSEPORT on loop and starts accepting. cfg may be NULL for defaults;
 * zero fields take defaults. Returns 0 or a negative libuv error. */
int http_server_start(http_server_t **out, uv_loop_t *loop, const char *addr, int port,
                      const http_config_t *cfg, http_handler_fn handler, void *data);

/* Whether addr:port is free for a new server: binds a socket without SO_REUSEPORT (which
 * http_server_start sets, so a second process would otherwise silently share the port) and closes
 * it. Returns 0, or a negative libuv error (UV_EADDRINUSE when something listens there). Not for
 * a loop thread: it makes blocking system calls. */
int http_probe_port(const char *addr, int port);

/* Stops accepting new connections; open ones keep being served. */
void http_server_stop_accepting(http_server_t *srv);

/* Closes idle connections now, and every other one as soon as its pending answers are written
 * (Connection: close on the last). on_closed runs on the loop when all handles are closed and
 * srv is freed. srv may be NULL (on_closed is still not called then). */
void http_server_close(http_server_t *srv, void (*on_closed)(void *arg), void *arg);

/* Open connections on this server (for metrics and the shutdown wait). */
size_t http_server_connections(const http_server_t *srv);

/* The port srv listens on (useful after binding port 0), or -1 when srv is NULL. */
int http_server_port(const http_server_t *srv);

/* Answers req. body is copied; content_type NULL means application/json. Frees req once queued
 * (never touch it afterwards). Safe to call for a request whose connection already closed. */
void http_respond(http_request_t *req, int status, const char *content_type, const char *body,
                  size_t len);

/* The value of header name (nlen bytes, any case) in req: the first one found after *iter
 * (start with *iter = 0; each call moves it past the header returned, so a loop reads every
 * line of a repeated header, in order). Returns the value (vlen bytes, OWS trimmed, followed by
 * a NUL, valid as long as req) or NULL when there is no further one. Reads only what the
 * request already holds: nothing is copied. */
const char *http_header(const http_request_t *req, const char *name, size_t nlen, size_t *iter,
                        size_t *vlen);

/* Reason phrase for a status code ("OK", "Conflict", ...). */
const char *http_status_text(int status);

#endif
