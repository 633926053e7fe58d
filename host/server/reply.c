#include "reply.h"

#include <string.h>

#include "metrics.h"
#include "util.h"

#define BODY(lit)                                                                                  \
    {                                                                                              \
        lit, sizeof(lit) - 1                                                                       \
    }

static const struct {
    const char *body;
    size_t len;
} fixed[REPLY__COUNT] = {
    [REPLY_SOLD_OUT] = BODY("{\"error\":\"sold_out\"}"),
    [REPLY_LIMIT_REACHED] = BODY("{\"error\":\"limit_reached\"}"),
    [REPLY_INSUFFICIENT_STOCK] = BODY("{\"error\":\"insufficient_stock\"}"),
    [REPLY_UNAVAILABLE] = BODY("{\"error\":\"unavailable\"}"),
    [REPLY_UNKNOWN_EVENT] = BODY("{\"error\":\"unknown_event\"}"),
    [REPLY_REPAIRING] = BODY("{\"error\":\"repairing\",\"detail\":\"the event is being checked "
                             "against its persisted orders after a Redis failover; nothing was "
                             "bought: retry\"}"),
    [REPLY_PAUSED] = BODY("{\"error\":\"paused\",\"detail\":\"the sale of this event is paused; "
                          "retry later\"}"),
    [REPLY_UNKNOWN_OUTCOME] =
        BODY("{\"error\":\"unavailable\",\"detail\":\"Redis connection lost mid-request: the "
             "purchase may have gone through; see GET /v1/events/{event}/users/{user}/orders\"}"),
};

static reply_sink_fn sink;

void reply_set_sink(reply_sink_fn fn)
{
    sink = fn;
}

void reply_text(http_request_t *req, int route, int status, const char *content_type,
                const char *body, size_t len)
{
    metrics_request((metrics_route_t)route, status, req->received_ns);
    if (sink != NULL)
        sink(req, status, body, len);
    else
        http_respond(req, status, content_type, body, len);
}

void reply_json(http_request_t *req, int route, int status, const char *body, size_t len)
{
    reply_text(req, route, status, NULL, body, len);
}

void reply_fixed(http_request_t *req, int route, int status, reply_fixed_t which)
{
    reply_json(req, route, status, fixed[which].body, fixed[which].len);
}

void reply_error(http_request_t *req, int route, int status, const char *reason, const char *detail)
{
    char body[512];
    size_t pos = 0;
    memcpy(body, "{\"error\":", 9);
    pos = 9;
    util_json_str(body, sizeof(body) - 1, &pos, reason, strlen(reason));
    if (detail != NULL) {
        size_t save = pos;
        memcpy(body + pos, ",\"detail\":", 10);
        pos += 10;
        if (util_json_str(body, sizeof(body) - 1, &pos, detail, strlen(detail)) != 0)
            pos = save;
    }
    body[pos++] = '}';
    reply_json(req, route, status, body, pos);
}
