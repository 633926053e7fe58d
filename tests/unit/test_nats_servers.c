/* host/common/nats_servers.c: the --nats list every program parses, and what cnats is given. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "nats_servers.h"

static int check(const char *list)
{
    char err[256];
    return nats_servers_check(list, err, sizeof(err));
}

static void test_accepted(void **state)
{
    (void)state;
    static const char *ok[] = {
        "nats://127.0.0.1:4222",
        "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224",
        "tls://nats.example:4443",
        "127.0.0.1:4222",
        "localhost",
        "nats://user:p@ss:w0rd@127.0.0.1:4222", /* credentials end at the last '@' */
        "nats://[::1]:4222,nats://[::1]",
        "nats://a:1,nats://b:65535",
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        if (check(ok[i]) != 0)
            fail_msg("refused: %s", ok[i]);
    }
}

static void test_refused(void **state)
{
    (void)state;
    static const char *bad[] = {
        "",
        ",",
        "nats://a:4222,",
        ",nats://a:4222",
        "nats://a:4222,,nats://b:4222",
        "nats://a:4222, nats://b:4222", /* a blank: probably a shell-quoted list gone wrong */
        "http://a:4222",
        "nats://:4222",
        "nats://a:0",
        "nats://a:65536",
        "nats://a:42x",
        "nats://a:",
        "nats://a/path",
        "nats://[::1",
        "nats://[::1]x",
        "nats://user@",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (check(bad[i]) == 0)
            fail_msg("accepted: '%s'", bad[i]);
    }
    assert_int_not_equal(check(NULL), 0);
}

static void test_count(void **state)
{
    (void)state;
    char list[NATS_SERVERS_MAX * 24 + 32] = "";
    for (int i = 0; i < NATS_SERVERS_MAX; i++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%snats://h%d:4222",
                 i ? "," : "", i);
    assert_int_equal(check(list), 0);
    strcat(list, ",nats://one-too-many:4222");
    assert_int_not_equal(check(list), 0);
}

static void test_error_names_item_not_url(void **state)
{
    (void)state;
    char err[256];
    assert_int_not_equal(nats_servers_check("nats://a:1,nats://u:secret@b:99999", err, sizeof(err)),
                         0);
    assert_non_null(strstr(err, "item 2"));
    assert_null(strstr(err, "secret")); /* a password never reaches the message */
}

static void test_apply(void **state)
{
    (void)state;
    natsOptions *o = NULL;
    assert_int_equal(natsOptions_Create(&o), NATS_OK);
    assert_int_equal(nats_servers_apply(o, "nats://127.0.0.1:1,nats://127.0.0.1:2"), NATS_OK);
    assert_int_equal(nats_servers_apply(o, "nats://127.0.0.1:1,,x"), NATS_INVALID_ARG);
    natsOptions_Destroy(o);
    /* Not connected: "none", never a URL. */
    char buf[64];
    assert_string_equal(nats_servers_connected(NULL, buf, sizeof(buf)), "none");
    nats_Close();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepted), cmocka_unit_test(test_refused),
        cmocka_unit_test(test_count),    cmocka_unit_test(test_error_names_item_not_url),
        cmocka_unit_test(test_apply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
