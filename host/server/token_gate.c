#include "token_gate.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "caller.h"
#include "ratelimit.h"
#include "reply.h"
#include "util.h"
#include "worker.h"

#define AUTH_FAIL_RATE 0.2
#define AUTH_FAIL_BURST 10.0

/* cost < 0 gives tokens back. An over-long key is never limited (the address is bounded). */
static bool take(const char *prefix, const char *client, double cost)
{
    char key[32 + TRUST_ADDR_MAX];
    int n = snprintf(key, sizeof(key), "%s%s", prefix, client);
    if (n < 0 || (size_t)n >= sizeof(key))
        return true;
    return ratelimit_take(key, (size_t)n, AUTH_FAIL_RATE, AUTH_FAIL_BURST, cost, util_mono_us());
}

static bool bearer_matches(const http_request_t *req, const char *token, size_t token_len)
{
    static const char bearer[] = "Bearer ";
    const size_t blen = sizeof(bearer) - 1;
    if (req->authorization == NULL || req->authorization_len < blen ||
        strncasecmp(req->authorization, bearer, blen) != 0)
        return false;
    return util_secret_equal(req->authorization + blen, req->authorization_len - blen, token,
                             token_len);
}

bool token_gate_check(http_request_t *req, int route, const char *prefix, const char *token,
                      size_t token_len, const char *detail)
{
    char client[TRUST_ADDR_MAX];
    caller_client(req, client);
    if (!take(prefix, client, 1)) {
        reply_error(req, route, 429, "rate_limited",
                    "too many failed authentications from this address; retry later");
        return false;
    }
    if (bearer_matches(req, token, token_len)) {
        take(prefix, client, -1);
        return true;
    }
    reply_error(req, route, 401, "unauthorized", detail);
    return false;
}

bool token_gate_admin(http_request_t *req, int route)
{
    const worker_t *w = req->server_data;
    const host_config_t *cfg = &w->host->cfg;
    if (cfg->admin_token_len == 0) {
        reply_error(req, route, 403, "forbidden", "admin disabled: no --admin-token-file");
        return false;
    }
    return token_gate_check(req, route, "snatch.auth:", cfg->admin_token, cfg->admin_token_len,
                            NULL);
}
