/* host/server/trust.c: --trusted-proxy CIDR parsing and the X-Forwarded-For client address. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>

#include "trust.h"

static bool has(const trust_list_t *l, const char *a)
{
    return trust_contains(l, a, strlen(a));
}

static void test_parse_and_contains(void **state)
{
    (void)state;
    trust_list_t l = {0};
    assert_int_equal(trust_parse(&l, "10.0.0.0/8, 192.168.1.7,fd00::/8"), 0);
    assert_int_equal(l.n, 3);
    assert_int_equal(trust_parse(&l, "::1"), 0); /* repeatable: appends */
    assert_int_equal(l.n, 4);
    assert_true(has(&l, "10.255.1.2"));
    assert_true(has(&l, "192.168.1.7"));
    assert_false(has(&l, "192.168.1.8"));
    assert_false(has(&l, "11.0.0.1"));
    assert_true(has(&l, "fd12::5"));
    assert_false(has(&l, "fe80::1"));
    assert_true(has(&l, "::1"));
    assert_true(has(&l, "::ffff:10.1.2.3")); /* a dual-stack listener's view of an IPv4 peer */
    assert_false(has(&l, "not-an-address"));
    assert_false(has(&l, ""));

    static const char *bad[] = {"",         "10.0.0.0/33", "10.0.0.1/8", "10.0.0.0/",
                                "10.0.0/8", "10.0.0.0/-1", "::1/129",    "a.b.c.d",
                                ",",        "10.0.0.0/8,", "1.2.3.4 5"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        trust_list_t b = {0};
        assert_int_equal(trust_parse(&b, bad[i]), -1);
    }
    trust_list_t full = {0};
    for (int i = 0; i < TRUST_MAX; i++)
        assert_int_equal(trust_parse(&full, "10.0.0.0/8"), 0);
    assert_int_equal(trust_parse(&full, "10.0.0.0/8"), -1);

    trust_list_t zero = {0};
    assert_int_equal(trust_parse(&zero, "0.0.0.0/0"), 0);
    assert_true(has(&zero, "203.0.113.9"));
    assert_false(has(&zero, "2001:db8::1"));
}

static void test_default_is_loopback(void **state)
{
    (void)state;
    trust_list_t l;
    trust_default(&l);
    assert_true(has(&l, "127.0.0.1"));
    assert_true(has(&l, "127.9.9.9"));
    assert_true(has(&l, "::1"));
    assert_false(has(&l, "10.0.0.1"));
    assert_false(has(&l, "::2"));
}

static const char *client(const trust_list_t *l, const char *peer, const char *xff, char *out)
{
    trust_client(l, peer, xff, xff ? strlen(xff) : 0, out);
    return out;
}

static void test_forwarded_for(void **state)
{
    (void)state;
    trust_list_t l = {0};
    char out[TRUST_ADDR_MAX];
    assert_int_equal(trust_parse(&l, "127.0.0.0/8,10.0.0.0/8"), 0);
    /* An untrusted peer's header is ignored. */
    assert_string_equal(client(&l, "203.0.113.1", "198.51.100.7", out), "203.0.113.1");
    /* No header, or an empty one: the peer. */
    assert_string_equal(client(&l, "127.0.0.1", NULL, out), "127.0.0.1");
    assert_string_equal(client(&l, "127.0.0.1", "", out), "127.0.0.1");
    /* The rightmost untrusted hop, whatever the client put on the left. */
    assert_string_equal(client(&l, "127.0.0.1", "1.1.1.1, 198.51.100.7, 10.0.0.5", out),
                        "198.51.100.7");
    assert_string_equal(client(&l, "127.0.0.1", "198.51.100.7", out), "198.51.100.7");
    /* Every hop trusted: the leftmost one. */
    assert_string_equal(client(&l, "127.0.0.1", "10.1.1.1,10.2.2.2", out), "10.1.1.1");
    /* Garbage stops the walk at the last hop believed. */
    assert_string_equal(client(&l, "127.0.0.1", "198.51.100.7, garbage, 10.0.0.5", out),
                        "10.0.0.5");
    assert_string_equal(client(&l, "127.0.0.1", "unknown", out), "127.0.0.1");
    assert_string_equal(client(&l, "127.0.0.1", "1.2.3.4,", out), "127.0.0.1");
    /* Normalised text: one bucket per address, however it was spelt. */
    assert_string_equal(client(&l, "127.0.0.1", " 2001:DB8:0:0::1 ", out), "2001:db8::1");
    assert_string_equal(client(&l, "::ffff:127.0.0.1", "::ffff:198.51.100.7", out), "198.51.100.7");
    /* Ports, as some proxies write them, are dropped; anything else odd stops the walk. */
    assert_string_equal(client(&l, "127.0.0.1", "198.51.100.7:5555", out), "198.51.100.7");
    assert_string_equal(client(&l, "127.0.0.1", "[2001:db8::7]:443", out), "2001:db8::7");
    assert_string_equal(client(&l, "127.0.0.1", "[2001:db8::7]", out), "2001:db8::7");
    assert_string_equal(client(&l, "127.0.0.1", "198.51.100.7, 10.0.0.5:80", out), "198.51.100.7");
    assert_string_equal(client(&l, "127.0.0.1", "[2001:db8::7", out), "127.0.0.1");
    assert_string_equal(client(&l, "127.0.0.1", "[2001:db8::7]x", out), "127.0.0.1");
    assert_string_equal(client(&l, "127.0.0.1", "1.2.3.4:5:6", out), "127.0.0.1");
    assert_string_equal(client(&l, "127.0.0.1", "fe80::1%eth0", out), "127.0.0.1");
    /* Longest address text fits. */
    assert_string_equal(
        client(&l, "127.0.0.1", "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", out),
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
}

/* IPv4 addresses come out exactly as inet_ntop writes them, for every octet value in every
 * position, from a direct peer, a mapped IPv6 peer and an X-Forwarded-For hop. */
static void test_ipv4_text(void **state)
{
    (void)state;
    trust_list_t l = {0};
    assert_int_equal(trust_parse(&l, "127.0.0.1"), 0);
    for (unsigned v = 0; v < 256; v++) {
        uint8_t a[4] = {(uint8_t)v, (uint8_t)(255 - v), (uint8_t)(v / 3), (uint8_t)(v * 7)};
        for (int rot = 0; rot < 4; rot++) {
            uint8_t b[4] = {a[rot % 4], a[(rot + 1) % 4], a[(rot + 2) % 4], a[(rot + 3) % 4]};
            char want[INET_ADDRSTRLEN], mapped[64], out[TRUST_ADDR_MAX];
            assert_non_null(inet_ntop(AF_INET, b, want, sizeof(want)));
            trust_client(&l, want, NULL, 0, out);
            assert_string_equal(out, want);
            snprintf(mapped, sizeof(mapped), "::ffff:%s", want);
            trust_client(&l, mapped, NULL, 0, out);
            assert_string_equal(out, want);
            trust_client(&l, "127.0.0.1", want, strlen(want), out);
            assert_string_equal(out, want);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_and_contains),
        cmocka_unit_test(test_default_is_loopback),
        cmocka_unit_test(test_forwarded_for),
        cmocka_unit_test(test_ipv4_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
