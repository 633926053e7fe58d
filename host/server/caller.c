#include "caller.h"

#include <string.h>

#include "reply.h"
#include "util.h"
#include "worker.h"

static const trust_list_t *trusted(http_request_t *req)
{
    const worker_t *w = req->server_data;
    return &w->host->cfg.trusted_proxies;
}

bool caller_peer_trusted(http_request_t *req)
{
    return trust_contains(trusted(req), req->peer, strlen(req->peer));
}

caller_buyer_t caller_buyer(http_request_t *req, const char **user, size_t *len)
{
    const worker_t *w = req->server_data;
    size_t qlen;
    const char *q = util_query_get(req->query, req->query_len, "user", &qlen);
    if (q != NULL && !w->host->cfg.allow_query_user)
        return CALLER_BUYER_QUERY_REFUSED;
    if (req->user_id != NULL && caller_peer_trusted(req)) {
        *user = req->user_id;
        *len = req->user_id_len;
        return CALLER_BUYER_OK;
    }
    if (q == NULL)
        return CALLER_BUYER_NONE;
    *user = q;
    *len = qlen;
    return CALLER_BUYER_OK;
}

void caller_buyer_error(http_request_t *req, int route, caller_buyer_t verdict)
{
    if (verdict == CALLER_BUYER_QUERY_REFUSED)
        reply_error(req, route, 400, "bad_request",
                    "?user= is not accepted by this host (start it with --allow-query-user for "
                    "load tools); send X-User-Id through a trusted proxy");
    else
        reply_error(req, route, 400, "bad_request",
                    "missing buyer: X-User-Id (from a --trusted-proxy peer) or user=");
}

void caller_client(http_request_t *req, char *out)
{
    trust_client(trusted(req), req->peer, req->forwarded_for, req->forwarded_for_len, out);
}

bool caller_client_is_proxy(http_request_t *req, const char *client)
{
    return trust_contains(trusted(req), client, strlen(client));
}
