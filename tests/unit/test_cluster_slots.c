/* host/common/cluster_slots.c: the spec's CRC16 and hash tag vectors, CLUSTER SLOTS replies
 * (well formed and not, fed as RESP through hiredis's reader), the owner diff, and the error
 * replies a cluster sends. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cluster_slots.h"
#include "keyspace.h"

static unsigned slot_of(const char *key)
{
    return cluster_key_slot(key, strlen(key));
}

static void test_crc16_vectors(void **state)
{
    (void)state;
    assert_int_equal(cluster_crc16("123456789", 9), 0x31C3);
    assert_int_equal(cluster_crc16("", 0), 0);
    /* Slots Redis itself reports (CLUSTER KEYSLOT). */
    assert_int_equal(slot_of("foo"), 12182);
    assert_int_equal(slot_of("bar"), 5061);
    assert_int_equal(slot_of("snatch:events"), cluster_crc16("snatch:events", 13) % 16384);
}

static void test_hash_tags(void **state)
{
    (void)state;
    assert_int_equal(slot_of("{user1000}.following"), slot_of("{user1000}.followers"));
    assert_int_equal(slot_of("{user1000}.following"), slot_of("user1000"));
    assert_int_equal(slot_of("foo{}{bar}"), cluster_crc16("foo{}{bar}", 10) & 16383);
    assert_int_equal(slot_of("foo{{bar}}zap"), slot_of("{bar"));
    assert_int_equal(slot_of("foo{{bar}}zap"), cluster_crc16("{bar", 4) & 16383);
    assert_int_equal(slot_of("foo{bar}{zap}"), slot_of("bar"));
    assert_int_equal(slot_of("foo{bar"), cluster_crc16("foo{bar", 7) & 16383); /* no close */
    assert_int_equal(slot_of("foo}bar{"), cluster_crc16("foo}bar{", 8) & 16383);
    /* Every key of an event shares its slot; the index has its own. */
    char key[KEYSPACE_KEY_MAX];
    for (int i = 0; i < KEYSPACE__COUNT; i++) {
        int n = keyspace_key(key, "concert", 7, (keyspace_key_t)i);
        assert_int_equal(cluster_key_slot(key, (size_t)n), slot_of("concert"));
    }
}

/* Parses RESP text into a reply (caller frees). */
static redisReply *resp(const char *text)
{
    redisReader *r = redisReaderCreate();
    void *reply = NULL;
    assert_int_equal(redisReaderFeed(r, text, strlen(text)), REDIS_OK);
    assert_int_equal(redisReaderGetReply(r, &reply), REDIS_OK);
    assert_non_null(reply);
    redisReaderFree(r);
    return reply;
}

#define ID_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define ID_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define ID_C "cccccccccccccccccccccccccccccccccccccccc"
#define ID_R "rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr"

/* Three masters; A owns 0-5460 and 16000-16383 (two entries), B 5461-10922 with a replica, C
 * 10923-15999 with none. */
static const char THREE[] =
    "*4\r\n"
    "*3\r\n:0\r\n:5460\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$40\r\n" ID_A "\r\n"
    "*4\r\n:5461\r\n:10922\r\n*3\r\n$9\r\n127.0.0.1\r\n:7002\r\n$40\r\n" ID_B "\r\n"
    "*3\r\n$9\r\n127.0.0.1\r\n:7005\r\n$40\r\n" ID_R "\r\n"
    "*3\r\n:10923\r\n:15999\r\n*3\r\n$0\r\n\r\n:7003\r\n$40\r\n" ID_C "\r\n"
    "*3\r\n:16000\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$40\r\n" ID_A "\r\n";

static void test_map_parse(void **state)
{
    (void)state;
    static cluster_map_t m;
    char err[128];
    redisReply *r = resp(THREE);
    assert_int_equal(cluster_map_parse(&m, r, "127.0.0.9", err, sizeof(err)), 0);
    assert_int_equal(m.n_nodes, 3);
    assert_true(m.covered);
    assert_false(m.masters_have_replicas); /* C has none */
    assert_string_equal(cluster_map_node(&m, 0)->id, ID_A);
    assert_int_equal(cluster_map_node(&m, 5460)->port, 7001);
    assert_int_equal(cluster_map_node(&m, 5461)->port, 7002);
    assert_int_equal(cluster_map_node(&m, 5461)->replicas, 1);
    assert_string_equal(cluster_map_node(&m, 12000)->host, "127.0.0.9"); /* empty: who answered */
    assert_ptr_equal(cluster_map_node(&m, 16383), cluster_map_node(&m, 0));
    assert_null(cluster_map_node(&m, 16384));
    assert_int_equal(cluster_map_find(&m, "127.0.0.1", 7002), 1);
    assert_int_equal(cluster_map_find(&m, "127.0.0.1", 7009), -1);
    assert_int_equal(m.n_replicas, 1);
    assert_string_equal(m.replicas[0].host, "127.0.0.1");
    assert_int_equal(m.replicas[0].port, 7005);
    cluster_map_free(&m);
    assert_null(m.replicas);
    /* Without an address for the empty host, the reply cannot be used. */
    assert_int_equal(cluster_map_parse(&m, r, NULL, err, sizeof(err)), -1);
    freeReplyObject(r);

    /* A slot no master serves. */
    r = resp("*1\r\n*3\r\n:0\r\n:100\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$40\r\n" ID_A "\r\n");
    assert_int_equal(cluster_map_parse(&m, r, NULL, err, sizeof(err)), 0);
    assert_false(m.covered);
    assert_null(cluster_map_node(&m, 101));
    cluster_map_free(&m);
    freeReplyObject(r);
}

static void test_map_malformed(void **state)
{
    (void)state;
    static cluster_map_t m;
    char err[128];
    static const char *bad[] = {
        "-ERR This instance has cluster support disabled\r\n",
        ":1\r\n",
        "*0\r\n",                                                           /* nothing served */
        "*1\r\n:5\r\n",                                                     /* entry not an array */
        "*1\r\n*2\r\n:0\r\n:10\r\n",                                        /* no master */
        "*1\r\n*3\r\n:10\r\n:0\r\n*2\r\n$9\r\n127.0.0.1\r\n:7001\r\n",      /* start > end */
        "*1\r\n*3\r\n:0\r\n:16384\r\n*2\r\n$9\r\n127.0.0.1\r\n:7001\r\n",   /* past the last */
        "*1\r\n*3\r\n:0\r\n:10\r\n*2\r\n$9\r\n127.0.0.1\r\n:0\r\n",         /* port 0 */
        "*1\r\n*3\r\n:0\r\n:10\r\n*2\r\n$9\r\nredis.lan\r\n:7001\r\n",      /* hostname */
        "*1\r\n*3\r\n:0\r\n:10\r\n*1\r\n$9\r\n127.0.0.1\r\n",               /* no port */
        "*1\r\n*3\r\n$1\r\n0\r\n:10\r\n*2\r\n$9\r\n127.0.0.1\r\n:7001\r\n", /* slot as string */
        "*1\r\n*4\r\n:0\r\n:10\r\n*2\r\n$9\r\n127.0.0.1\r\n:7001\r\n:3\r\n", /* bad replica */
        /* a replica read, then a bad entry: what was read is freed */
        "*2\r\n*4\r\n:0\r\n:10\r\n*2\r\n$9\r\n127.0.0.1\r\n:7001\r\n"
        "*2\r\n$9\r\n127.0.0.1\r\n:7004\r\n:5\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        redisReply *r = resp(bad[i]);
        err[0] = '\0';
        assert_int_equal(cluster_map_parse(&m, r, "127.0.0.1", err, sizeof(err)), -1);
        assert_true(err[0] != '\0');
        assert_null(m.nodes);
        assert_null(m.replicas);
        freeReplyObject(r);
    }
    assert_int_equal(cluster_map_parse(&m, NULL, NULL, err, sizeof(err)), -1);
}

typedef struct {
    unsigned first[8], last[8];
    char old_id[8][48], new_id[8][48];
    int n;
} changes_t;

static void record(unsigned first, unsigned last, const char *old_id, const char *new_id, void *arg)
{
    changes_t *c = arg;
    assert_true(c->n < 8);
    c->first[c->n] = first;
    c->last[c->n] = last;
    snprintf(c->old_id[c->n], 48, "%s", old_id);
    snprintf(c->new_id[c->n], 48, "%s", new_id);
    c->n++;
}

static void test_map_diff(void **state)
{
    (void)state;
    static cluster_map_t a, b;
    char err[128];
    redisReply *r = resp(THREE);
    assert_int_equal(cluster_map_parse(&a, r, "127.0.0.1", err, sizeof(err)), 0);
    freeReplyObject(r);
    /* B's replica R took over B's slots; slot 100 moved from A to C; 16000-16383 unserved. */
    r = resp("*5\r\n"
             "*3\r\n:0\r\n:99\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$40\r\n" ID_A "\r\n"
             "*3\r\n:100\r\n:100\r\n*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$40\r\n" ID_C "\r\n"
             "*3\r\n:101\r\n:5460\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$40\r\n" ID_A "\r\n"
             "*3\r\n:5461\r\n:10922\r\n*3\r\n$9\r\n127.0.0.1\r\n:7005\r\n$40\r\n" ID_R "\r\n"
             "*3\r\n:10923\r\n:15999\r\n*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$40\r\n" ID_C "\r\n");
    assert_int_equal(cluster_map_parse(&b, r, NULL, err, sizeof(err)), 0);
    freeReplyObject(r);
    changes_t c = {0};
    cluster_map_diff(&a, &b, record, &c);
    assert_int_equal(c.n, 3);
    assert_int_equal(c.first[0], 100);
    assert_int_equal(c.last[0], 100);
    assert_string_equal(c.old_id[0], ID_A);
    assert_string_equal(c.new_id[0], ID_C);
    assert_int_equal(c.first[1], 5461);
    assert_int_equal(c.last[1], 10922);
    assert_string_equal(c.old_id[1], ID_B);
    assert_string_equal(c.new_id[1], ID_R);
    assert_int_equal(c.first[2], 16000);
    assert_int_equal(c.last[2], 16383);
    assert_string_equal(c.new_id[2], "");
    changes_t none = {0};
    cluster_map_diff(&a, &a, record, &none);
    assert_int_equal(none.n, 0);
    cluster_map_free(&a);
    cluster_map_free(&b);
}

/* Where a router looks once every master it knew is gone: the seeds, then the replicas the
 * last map listed, each once, never a master of that map (asked already). */
static void test_fallback_addrs(void **state)
{
    (void)state;
    static cluster_map_t m;
    char err[128];
    cluster_seed_t seeds[4], out[8];
    assert_int_equal(cluster_parse_seeds("127.0.0.1:7001,127.0.0.1:7009,127.0.0.1:7005,"
                                         "127.0.0.1:7009",
                                         seeds, 4),
                     4);
    assert_int_equal(cluster_fallback_addrs(seeds, 4, NULL, out, 8), 3);
    assert_int_equal(out[2].port, 7005);
    redisReply *r = resp(THREE);
    assert_int_equal(cluster_map_parse(&m, r, "127.0.0.1", err, sizeof(err)), 0);
    freeReplyObject(r);
    assert_int_equal(cluster_fallback_addrs(seeds, 4, &m, out, 8), 2); /* 7001: a master */
    assert_int_equal(out[0].port, 7009);
    assert_int_equal(out[1].port, 7005);
    assert_int_equal(cluster_fallback_addrs(seeds, 1, &m, out, 8), 1); /* the replica alone */
    assert_int_equal(out[0].port, 7005);
    assert_int_equal(cluster_fallback_addrs(seeds, 4, &m, out, 1), 1); /* at most max */
    assert_int_equal(out[0].port, 7009);
    cluster_map_free(&m);
}

static void test_errors(void **state)
{
    (void)state;
    cluster_redirect_t to;
#define E(s) cluster_parse_error(s, strlen(s), &to)
    assert_int_equal(E("MOVED 3999 127.0.0.1:6381"), CLUSTER_ERR_MOVED);
    assert_int_equal(to.slot, 3999);
    assert_string_equal(to.host, "127.0.0.1");
    assert_int_equal(to.port, 6381);
    assert_int_equal(E("ASK 16383 ::1:7000"), CLUSTER_ERR_ASK);
    assert_int_equal(to.slot, 16383);
    assert_string_equal(to.host, "::1");
    assert_int_equal(to.port, 7000);
    assert_int_equal(E("MOVED 12 :7000"), CLUSTER_ERR_MOVED); /* endpoint unknown */
    assert_string_equal(to.host, "");
    assert_int_equal(E("TRYAGAIN Multiple keys request during rehashing of slot"),
                     CLUSTER_ERR_TRYAGAIN);
    assert_int_equal(E("CLUSTERDOWN The cluster is down"), CLUSTER_ERR_CLUSTERDOWN);
    assert_int_equal(E("CLUSTERDOWN Hash slot not served"), CLUSTER_ERR_CLUSTERDOWN);
    assert_int_equal(E("NOSCRIPT No matching script. Please use EVAL."), CLUSTER_ERR_NOSCRIPT);
    assert_int_equal(E("ERR This instance has cluster support disabled"), CLUSTER_ERR_DISABLED);
    assert_int_equal(E("CROSSSLOT Keys in request don't hash to the same slot"), CLUSTER_ERR_NONE);
    assert_int_equal(E("ERR unknown command"), CLUSTER_ERR_NONE);
    assert_int_equal(E("MOVEDX 1 127.0.0.1:1"), CLUSTER_ERR_NONE);
    static const char *malformed[] = {
        "MOVED",
        "MOVED 1",
        "MOVED x 127.0.0.1:7000",
        "MOVED 16384 127.0.0.1:7000",
        "ASK 1 127.0.0.1",
        "ASK 1 127.0.0.1:",
        "ASK 1 127.0.0.1:0",
        "ASK 1 127.0.0.1:65536",
        "ASK 1 127.0.0.1:70x",
        "MOVED -1 127.0.0.1:7000",
    };
    for (size_t i = 0; i < sizeof(malformed) / sizeof(malformed[0]); i++)
        assert_int_equal(E(malformed[i]), CLUSTER_ERR_MALFORMED);
#undef E
    redisReply *r = resp("-MOVED 1 127.0.0.1:7002\r\n");
    assert_int_equal(cluster_reply_error(r, &to), CLUSTER_ERR_MOVED);
    freeReplyObject(r);
    r = resp("+MOVED 1 127.0.0.1:7002\r\n"); /* a status, not an error */
    assert_int_equal(cluster_reply_error(r, &to), CLUSTER_ERR_NONE);
    freeReplyObject(r);
    assert_int_equal(cluster_reply_error(NULL, &to), CLUSTER_ERR_NONE);
}

static void test_seeds(void **state)
{
    (void)state;
    cluster_seed_t s[4];
    assert_int_equal(cluster_parse_seeds("127.0.0.1:7000", s, 4), 1);
    assert_string_equal(s[0].host, "127.0.0.1");
    assert_int_equal(s[0].port, 7000);
    assert_int_equal(cluster_parse_seeds("127.0.0.1:7000,127.0.0.2:7001,::1:7002", s, 4), 3);
    assert_string_equal(s[1].host, "127.0.0.2");
    assert_int_equal(s[1].port, 7001);
    assert_string_equal(s[2].host, "::1");
    assert_int_equal(s[2].port, 7002);
    static const char *bad[] = {"",
                                "127.0.0.1",
                                "127.0.0.1:",
                                "127.0.0.1:0",
                                "127.0.0.1:65536",
                                "127.0.0.1:+80",
                                "127.0.0.1:80x",
                                "localhost:6379",
                                ":6379",
                                "127.0.0.1:7000,",
                                ",127.0.0.1:7000",
                                "127.0.0.1:7000,,127.0.0.1:7001",
                                "1.1.1.1:1,1.1.1.1:2,1.1.1.1:3,1.1.1.1:4,1.1.1.1:5"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(cluster_parse_seeds(bad[i], s, 4), -1);
    assert_int_equal(cluster_parse_seeds(NULL, s, 4), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc16_vectors), cmocka_unit_test(test_hash_tags),
        cmocka_unit_test(test_map_parse),     cmocka_unit_test(test_map_malformed),
        cmocka_unit_test(test_map_diff),      cmocka_unit_test(test_errors),
        cmocka_unit_test(test_seeds),         cmocka_unit_test(test_fallback_addrs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
