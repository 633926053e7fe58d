/* host/server/caller.c: who a request speaks for and where it comes from, as the host's flags
 * allow. Requests are built by hand (no listener); the 400s of caller_buyer_error are captured
 * through reply_set_sink. Linked from snatch_server as snatch-host links it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "caller.h"
#include "metrics.h"
#include "reply.h"
#include "worker.h"

static host_t host;
static worker_t w;

static int answered_status;
static char answered_body[512];

static void sink(http_request_t *req, int status, const char *body, size_t len)
{
    (void)req;
    answered_status = status;
    snprintf(answered_body, sizeof(answered_body), "%.*s", (int)len, body);
}

/* A request from peer with X-User-Id user_id (NULL: none), query and X-Forwarded-For xff (NULL:
 * none). */
static http_request_t request(const char *peer, const char *user_id, const char *query,
                              const char *xff)
{
    http_request_t req;
    memset(&req, 0, sizeof(req));
    req.method = HTTP_M_POST;
    req.path = "/";
    req.path_len = 1;
    req.query = query;
    req.query_len = strlen(query);
    req.body = "";
    req.user_id = user_id;
    req.user_id_len = user_id != NULL ? strlen(user_id) : 0;
    req.forwarded_for = xff;
    req.forwarded_for_len = xff != NULL ? strlen(xff) : 0;
    req.peer = peer;
    req.server_data = &w;
    return req;
}

/* The buyer as a string, or the verdict when there is none. */
static caller_buyer_t buyer(const char *peer, const char *user_id, const char *query, char *out)
{
    http_request_t req = request(peer, user_id, query, NULL);
    const char *user = NULL;
    size_t len = 0;
    caller_buyer_t v = caller_buyer(&req, &user, &len);
    out[0] = '\0';
    if (v == CALLER_BUYER_OK)
        snprintf(out, 64, "%.*s", (int)len, user);
    return v;
}

static void client(const char *peer, const char *xff, char *out)
{
    http_request_t req = request(peer, NULL, "", xff);
    caller_client(&req, out);
}

static int setup(void **state)
{
    (void)state;
    memset(&host, 0, sizeof(host));
    host.cfg.host_id = "h1";
    host.cfg.hosts = 1;
    w.host = &host;
    if (trust_parse(&host.cfg.trusted_proxies, "10.0.0.0/8,fd00::/8") != 0)
        return -1;
    answered_status = 0;
    answered_body[0] = '\0';
    return 0;
}

static void test_peer_trusted(void **state)
{
    (void)state;
    http_request_t req = request("10.1.2.3", NULL, "", NULL);
    assert_true(caller_peer_trusted(&req));
    req = request("192.0.2.1", NULL, "", NULL);
    assert_false(caller_peer_trusted(&req));
    req = request("fd00::7", NULL, "", NULL);
    assert_true(caller_peer_trusted(&req));
    req = request("2001:db8::1", NULL, "", NULL);
    assert_false(caller_peer_trusted(&req));
    /* The loopback default does not apply once --trusted-proxy names other ranges. */
    req = request("127.0.0.1", NULL, "", NULL);
    assert_false(caller_peer_trusted(&req));
}

/* X-User-Id counts only from a trusted peer. */
static void test_header_from_trusted_peer(void **state)
{
    (void)state;
    char u[64];
    assert_int_equal(buyer("10.0.0.9", "alice", "", u), CALLER_BUYER_OK);
    assert_string_equal(u, "alice");
    assert_int_equal(buyer("fd00::1", "bob", "", u), CALLER_BUYER_OK);
    assert_string_equal(u, "bob");
    /* The same header from anyone else names nobody. */
    assert_int_equal(buyer("192.0.2.1", "alice", "", u), CALLER_BUYER_NONE);
    assert_int_equal(buyer("2001:db8::1", "alice", "", u), CALLER_BUYER_NONE);
}

static void test_query_user(void **state)
{
    (void)state;
    char u[64];
    /* Without --allow-query-user, ?user= is refused, whoever sends it and with any header. */
    assert_int_equal(buyer("192.0.2.1", NULL, "user=carol", u), CALLER_BUYER_QUERY_REFUSED);
    assert_int_equal(buyer("10.0.0.9", "alice", "qty=1&user=carol", u), CALLER_BUYER_QUERY_REFUSED);
    /* Other parameters are no buyer, and no refusal. */
    assert_int_equal(buyer("192.0.2.1", NULL, "qty=2", u), CALLER_BUYER_NONE);
    assert_int_equal(buyer("192.0.2.1", NULL, "username=carol", u), CALLER_BUYER_NONE);

    host.cfg.allow_query_user = true;
    assert_int_equal(buyer("192.0.2.1", NULL, "qty=2&user=carol", u), CALLER_BUYER_OK);
    assert_string_equal(u, "carol");
    /* The trusted header wins over the query. */
    assert_int_equal(buyer("10.0.0.9", "alice", "user=carol", u), CALLER_BUYER_OK);
    assert_string_equal(u, "alice");
    /* An untrusted peer's header is ignored: the query names the buyer. */
    assert_int_equal(buyer("192.0.2.1", "mallory", "user=carol", u), CALLER_BUYER_OK);
    assert_string_equal(u, "carol");
    assert_int_equal(buyer("192.0.2.1", "mallory", "", u), CALLER_BUYER_NONE);
}

static void test_buyer_errors(void **state)
{
    (void)state;
    http_request_t req = request("192.0.2.1", NULL, "", NULL);
    metrics_init();
    metrics_thread_register();
    reply_set_sink(sink);
    caller_buyer_error(&req, ROUTE_SNATCH, CALLER_BUYER_QUERY_REFUSED);
    assert_int_equal(answered_status, 400);
    assert_non_null(strstr(answered_body, "\"error\":\"bad_request\""));
    assert_non_null(strstr(answered_body, "--allow-query-user"));
    caller_buyer_error(&req, ROUTE_SNATCH, CALLER_BUYER_NONE);
    assert_int_equal(answered_status, 400);
    assert_non_null(strstr(answered_body, "missing buyer"));
    reply_set_sink(NULL);
}

static void test_client_address(void **state)
{
    (void)state;
    char c[TRUST_ADDR_MAX];
    /* An untrusted peer is the client, whatever it forwards. */
    client("192.0.2.1", NULL, c);
    assert_string_equal(c, "192.0.2.1");
    client("192.0.2.1", "198.51.100.7", c);
    assert_string_equal(c, "192.0.2.1");
    /* A trusted peer without X-Forwarded-For: the proxy itself. */
    client("10.0.0.9", NULL, c);
    assert_string_equal(c, "10.0.0.9");
    /* From a trusted peer: the nearest untrusted hop, walking right past chained proxies. */
    client("10.0.0.9", "198.51.100.7", c);
    assert_string_equal(c, "198.51.100.7");
    client("10.0.0.9", "203.0.113.5, 198.51.100.7, 10.2.2.2, 10.3.3.3", c);
    assert_string_equal(c, "198.51.100.7");
    /* Every hop trusted: the leftmost. */
    client("10.0.0.9", "10.4.4.4, 10.5.5.5", c);
    assert_string_equal(c, "10.4.4.4");
    /* A garbage entry ends the walk at the hop before it. */
    client("10.0.0.9", "198.51.100.7, not-an-ip, 10.2.2.2", c);
    assert_string_equal(c, "10.2.2.2");
    client("10.0.0.9", "bogus", c);
    assert_string_equal(c, "10.0.0.9");
    /* IPv6 peers and hops, with ports dropped. */
    client("fd00::1", "[2001:db8::5]:443, fd00::2", c);
    assert_string_equal(c, "2001:db8::5");
    client("2001:db8::9", "198.51.100.7", c);
    assert_string_equal(c, "2001:db8::9");
}

/* A client that is itself a trusted proxy is exempt from per-address limits. */
static void test_client_is_proxy(void **state)
{
    (void)state;
    http_request_t req = request("10.0.0.9", NULL, "", NULL);
    assert_true(caller_client_is_proxy(&req, "10.0.0.9"));
    assert_true(caller_client_is_proxy(&req, "fd00::3"));
    assert_false(caller_client_is_proxy(&req, "198.51.100.7"));
    assert_false(caller_client_is_proxy(&req, "2001:db8::5"));
    assert_false(caller_client_is_proxy(&req, ""));
    /* The defaults (loopback only) when no --trusted-proxy is given. */
    trust_list_t saved = host.cfg.trusted_proxies;
    trust_default(&host.cfg.trusted_proxies);
    assert_true(caller_client_is_proxy(&req, "127.0.0.1"));
    assert_true(caller_client_is_proxy(&req, "::1"));
    assert_false(caller_client_is_proxy(&req, "10.0.0.9"));
    host.cfg.trusted_proxies = saved;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_peer_trusted, setup),
        cmocka_unit_test_setup(test_header_from_trusted_peer, setup),
        cmocka_unit_test_setup(test_query_user, setup),
        cmocka_unit_test_setup(test_buyer_errors, setup),
        cmocka_unit_test_setup(test_client_address, setup),
        cmocka_unit_test_setup(test_client_is_proxy, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
