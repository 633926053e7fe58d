/* host/server/api.c: the routing table. Every route with every method reaches its handler (told
 * apart by the answer each gives on a worker without Redis, admin token or buyer), or 405; any
 * other path 404; with --admin-listen, admin routes and /metrics only on the admin listener.
 * Answers are captured through reply_set_sink. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "api.h"
#include "host_fixture.h"

static void request(http_method_t method, const char *path, bool admin_listener)
{
    http_request_t req = {.method = method,
                          .path = path,
                          .path_len = strlen(path),
                          .query = "",
                          .body = "",
                          .peer = "127.0.0.1",
                          .server_data = &w,
                          .admin_listener = admin_listener};
    fixture_forget_answers();
    api_handle(&req);
    assert_int_equal(answers, 1);
}

typedef struct {
    http_method_t method;
    const char *path;
    int status;
    const char *says; /* a piece of the body only that handler gives */
} route_case_t;

static const char *method_name(http_method_t m)
{
    static const char *names[] = {"OTHER", "GET", "HEAD", "POST", "PUT", "DELETE"};
    return names[m];
}

static void check(const route_case_t *c, size_t n, bool admin_listener)
{
    for (size_t i = 0; i < n; i++) {
        request(c[i].method, c[i].path, admin_listener);
        if (answered_status != c[i].status || strstr(answered_body, c[i].says) == NULL)
            fail_msg("%s %s%s: %d %s, want %d with %s", method_name(c[i].method), c[i].path,
                     admin_listener ? " (admin listener)" : "", answered_status, answered_body,
                     c[i].status, c[i].says);
    }
}

#define N(a) (sizeof(a) / sizeof((a)[0]))

static const char NOT_ALLOWED[] = "method_not_allowed";
static const char NOT_FOUND[] = "not_found";

static void test_routes(void **state)
{
    (void)state;
    static const route_case_t cases[] = {
        {HTTP_M_POST, "/v1/events/e1/snatch", 400, "missing buyer"},
        {HTTP_M_GET, "/v1/events/e1/snatch", 405, NOT_ALLOWED},
        {HTTP_M_PUT, "/v1/events/e1/snatch", 405, NOT_ALLOWED},
        {HTTP_M_DELETE, "/v1/events/e1/snatch", 405, NOT_ALLOWED},
        {HTTP_M_GET, "/v1/events/e1", 503, "unavailable"},
        {HTTP_M_HEAD, "/v1/events/e1", 503, "unavailable"},
        {HTTP_M_POST, "/v1/events/e1", 405, NOT_ALLOWED},
        {HTTP_M_DELETE, "/v1/events/e1", 405, NOT_ALLOWED},
        {HTTP_M_PUT, "/admin/events/e1", 403, "admin disabled"},
        {HTTP_M_GET, "/admin/events/e1", 405, NOT_ALLOWED},
        {HTTP_M_POST, "/admin/events/e1", 405, NOT_ALLOWED},
        {HTTP_M_PATCH, "/admin/events/e1", 403, "admin disabled"},
        {HTTP_M_POST, "/admin/events/e1/pause", 403, "admin disabled"},
        {HTTP_M_POST, "/admin/events/e1/resume", 403, "admin disabled"},
        {HTTP_M_GET, "/admin/events/e1/pause", 405, NOT_ALLOWED},
        {HTTP_M_PUT, "/admin/events/e1/resume", 405, NOT_ALLOWED},
        {HTTP_M_GET, "/admin/events", 403, "admin disabled"},
        {HTTP_M_HEAD, "/admin/events", 403, "admin disabled"},
        {HTTP_M_DELETE, "/admin/events", 405, NOT_ALLOWED},
        {HTTP_M_GET, "/v1/orders/x", 400, "invalid order id"},
        {HTTP_M_HEAD, "/v1/orders/x", 400, "invalid order id"},
        {HTTP_M_POST, "/v1/orders/x", 405, NOT_ALLOWED},
        {HTTP_M_GET, "/v1/events/e1/users/u!/orders", 400, "invalid event or user"},
        {HTTP_M_PUT, "/v1/events/e1/users/u1/orders", 405, NOT_ALLOWED},
        {HTTP_M_GET, "/metrics", 200, "snatch_"},
        {HTTP_M_POST, "/metrics", 405, NOT_ALLOWED},
        {HTTP_M_GET, "/healthz", 503, "\"status\":\"degraded\""},
        {HTTP_M_POST, "/healthz", 405, NOT_ALLOWED},
    };
    check(cases, N(cases), false);
}

static void test_unknown_paths(void **state)
{
    (void)state;
    static const route_case_t cases[] = {
        {HTTP_M_GET, "/", 404, NOT_FOUND},
        {HTTP_M_GET, "", 404, NOT_FOUND},
        {HTTP_M_GET, "/v1", 404, NOT_FOUND},
        {HTTP_M_GET, "/v1/events", 404, NOT_FOUND},
        {HTTP_M_POST, "/v1/events/e1/snatch/x", 404, NOT_FOUND},
        {HTTP_M_POST, "/v1/events//snatch", 404, NOT_FOUND},
        {HTTP_M_POST, "/v2/events/e1/snatch", 404, NOT_FOUND},
        {HTTP_M_PUT, "/admin/events", 405, NOT_ALLOWED},
        {HTTP_M_PUT, "/admin/events/e1/x", 404, NOT_FOUND},
        {HTTP_M_POST, "/admin/events/e1/stop", 404, NOT_FOUND},
        {HTTP_M_POST, "/admin/events/e1/pause/x", 404, NOT_FOUND},
        {HTTP_M_GET, "/metrics/x", 404, NOT_FOUND},
        {HTTP_M_GET, "/healthzz", 404, NOT_FOUND},
        {HTTP_M_GET, "/v1/events/e1/users/u1", 404, NOT_FOUND},
        {HTTP_M_GET, "v1/events/e1", 404, NOT_FOUND},
    };
    check(cases, N(cases), false);
}

static void test_admin_listener_split(void **state)
{
    (void)state;
    static const route_case_t public_side[] = {
        {HTTP_M_GET, "/metrics", 404, NOT_FOUND},
        {HTTP_M_PUT, "/admin/events/e1", 404, NOT_FOUND},
        {HTTP_M_PATCH, "/admin/events/e1", 404, NOT_FOUND},
        {HTTP_M_GET, "/admin/events", 404, NOT_FOUND},
        {HTTP_M_GET, "/healthz", 503, "degraded"},
        {HTTP_M_POST, "/v1/events/e1/snatch", 400, "missing buyer"},
    };
    static const route_case_t admin_side[] = {
        {HTTP_M_GET, "/metrics", 200, "snatch_"},
        {HTTP_M_PUT, "/admin/events/e1", 403, "admin disabled"},
        {HTTP_M_GET, "/healthz", 503, "degraded"},
        {HTTP_M_POST, "/v1/events/e1/snatch", 404, NOT_FOUND},
        {HTTP_M_GET, "/v1/events/e1", 404, NOT_FOUND},
    };
    host.cfg.admin_listen_addr = "127.0.0.1";
    check(public_side, N(public_side), false);
    check(admin_side, N(admin_side), true);
    host.cfg.admin_listen_addr = NULL;
}

static int group_setup(void **state)
{
    (void)state;
    fixture_open();
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    fixture_close();
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes),
        cmocka_unit_test(test_unknown_paths),
        cmocka_unit_test(test_admin_listener_split),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
