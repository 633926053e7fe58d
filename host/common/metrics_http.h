/* A minimal blocking HTTP responder for GET /metrics in programs without an event loop
 * (snatch-subscriber): one thread, one request per connection, a bounded read with a timeout,
 * Connection: close. Not for traffic: a scraper every few seconds. */
#ifndef SNATCH_METRICS_HTTP_H
#define SNATCH_METRICS_HTTP_H

#include <stddef.h>

typedef struct metrics_http metrics_http_t;

/* Renders the exposition text (malloc'd, caller frees; NULL: 503). Runs on the server thread. */
typedef char *(*metrics_http_render_fn)(size_t *len, void *arg);
/* Called about once a second on the server thread, between requests: slow work that must stay
 * off the caller's hot path (e.g. asking the server for a consumer's lag). May be NULL. */
typedef void (*metrics_http_tick_fn)(void *arg);

/* Listens on addr ("ADDR:PORT", port 0 picks one) and starts the thread. Returns 0, or -1 with
 * err filled. */
int metrics_http_start(metrics_http_t **out, const char *addr, metrics_http_render_fn render,
                       metrics_http_tick_fn tick, void *arg, char *err, size_t errlen);
/* The bound port. */
int metrics_http_port(const metrics_http_t *m);
/* Stops the thread (within about a second) and frees m. m may be NULL. */
void metrics_http_stop(metrics_http_t *m);

#endif
