/* A worker of snatch-host without Redis, NATS or listener, for the unit tests of the API and the
 * sale path: the real lua/policy.lua, metrics and stock table, and every answer captured
 * through reply_set_sink (the last one in answered_status / answered_body). */
#ifndef SNATCH_TEST_HOST_FIXTURE_H
#define SNATCH_TEST_HOST_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>

#include "metrics.h"
#include "reply.h"
#include "stock.h"
#include "worker.h"

static host_t host;
static worker_t w;

static int answered_status;
static char answered_body[1024];
static int answers;

static void fixture_sink(http_request_t *req, int status, const char *body, size_t len)
{
    (void)req;
    answered_status = status;
    snprintf(answered_body, sizeof(answered_body), "%.*s", (int)len, body);
    answers++;
}

static inline void fixture_forget_answers(void)
{
    answers = 0;
    answered_status = 0;
    answered_body[0] = '\0';
}

/* Host h1 of 1; set host.cfg before requests for other flags. */
static inline void fixture_open(void)
{
    char err[2048], path[1024];
    const char *src = getenv("SNATCH_SOURCE_DIR");
    snprintf(path, sizeof(path), "%s/lua/policy.lua", src && *src ? src : SNATCH_SOURCE_DIR);
    metrics_init();
    metrics_thread_register();
    stock_init();
    host.cfg.host_id = "h1";
    host.cfg.hosts = 1;
    host.cfg.redis_timeout_ms = 1000;
    w.host = &host;
    script_env_t env = {.host_id = "h1", .hosts = 1};
    if (script_open(&w.script, path, &env, err, sizeof(err)) != 0)
        fail_msg("policy: %s", err);
    reply_set_sink(fixture_sink);
}

static inline void fixture_close(void)
{
    reply_set_sink(NULL);
    script_close(w.script);
    w.script = NULL;
    stock_shutdown();
}

#endif
