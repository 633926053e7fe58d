/* host/server/redis.c's decision on a request that never ran, against a scripted fake node (a
 * unit test of one module: the real cluster is test_redis_cluster's). The fake is a one-master
 * cluster that answers SCRIPT LOAD, CLUSTER SLOTS (itself, every slot) and a GET with a chosen
 * number of MOVED (to itself), then of CLUSTERDOWN, then the value; the counts of GETs it saw
 * are exact whatever the machine's load. In a transition (here: a MOVED just seen) a request
 * refused with CLUSTERDOWN, or sent around past REDIS_MAX_REDIRECTS, waits and goes again until
 * it runs (the router once answered "cluster cannot serve the slot", a 503, at once); one that
 * is hopeless fails at its deadline and is never sent again; with no sign of a transition (a
 * long outage), or refused as "Hash slot not served", it still fails at once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "cluster_slots.h"
#include "free_port.h"
#include "redis.h"

#define FOREVER 1000000 /* more refusals than any request's deadline lets it see */
#define FAKE_CONNS 16

typedef struct {
    int lfd, port;
    _Atomic int moved, down; /* still to answer before the value */
    _Atomic bool unserved;   /* CLUSTERDOWN says "Hash slot not served" */
    _Atomic int gets;        /* GETs seen */
    _Atomic int stop;
    pthread_t th;
} fake_t;

typedef struct {
    int fd;
    size_t len;
    char buf[8192];
} fconn_t;

static uv_loop_t loop;
static fake_t fake;
static redis_client_t *current;

static void say(int fd, const char *s)
{
    size_t len = strlen(s);
    if (write(fd, s, len) != (ssize_t)len)
        fprintf(stderr, "fake: short write\n");
}

/* One whole RESP command at buf: its first two words, and the bytes it takes (0: incomplete). */
static size_t parse(const char *buf, size_t len, char *name, size_t nlen, char *arg, size_t alen)
{
    const char *p = buf, *end = buf + len;
    name[0] = arg[0] = '\0';
    const char *nl = memchr(p, '\n', len);
    if (len == 0 || *p != '*' || nl == NULL)
        return 0;
    int argc = atoi(p + 1);
    p = nl + 1;
    for (int i = 0; i < argc; i++) {
        nl = p < end ? memchr(p, '\n', (size_t)(end - p)) : NULL;
        if (nl == NULL || *p != '$')
            return 0;
        size_t n = (size_t)atoi(p + 1);
        p = nl + 1;
        if ((size_t)(end - p) < n + 2)
            return 0;
        if (i < 2)
            snprintf(i == 0 ? name : arg, i == 0 ? nlen : alen, "%.*s", (int)n, p);
        p += n + 2;
    }
    return (size_t)(p - buf);
}

static void answer(fake_t *f, int fd, const char *name, const char *arg)
{
    char out[256];
    if (strcasecmp(name, "CLUSTER") == 0 && strcasecmp(arg, "SLOTS") == 0) {
        snprintf(out, sizeof(out),
                 "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:%d\r\n$40\r\n"
                 "0123456789012345678901234567890123456789\r\n",
                 f->port);
        say(fd, out);
    } else if (strcasecmp(name, "SCRIPT") == 0) {
        say(fd, "$40\r\n89abcdef0123456789abcdef0123456789abcdef\r\n");
    } else if (strcasecmp(name, "GET") == 0) {
        f->gets++;
        if (f->moved > 0) {
            f->moved--;
            snprintf(out, sizeof(out), "-MOVED %u 127.0.0.1:%d\r\n", cluster_key_slot("k", 1),
                     f->port);
            say(fd, out);
        } else if (f->down > 0) {
            f->down--;
            say(fd, f->unserved ? "-CLUSTERDOWN Hash slot not served\r\n"
                                : "-CLUSTERDOWN The cluster is down\r\n");
        } else {
            say(fd, "$5\r\nvalue\r\n");
        }
    } else {
        say(fd, "-ERR unknown command\r\n");
    }
}

static void serve_conn(fake_t *f, fconn_t *c)
{
    char name[32], word[32];
    size_t used;
    while ((used = parse(c->buf, c->len, name, sizeof(name), word, sizeof(word))) > 0) {
        answer(f, c->fd, name, word);
        memmove(c->buf, c->buf + used, c->len - used);
        c->len -= used;
    }
}

static void *serve(void *arg)
{
    fake_t *f = arg;
    static fconn_t conns[FAKE_CONNS];
    struct pollfd fds[FAKE_CONNS + 1];
    int n = 0;
    while (!f->stop) {
        fds[0] = (struct pollfd){.fd = f->lfd, .events = POLLIN};
        for (int i = 0; i < n; i++)
            fds[i + 1] = (struct pollfd){.fd = conns[i].fd, .events = POLLIN};
        if (poll(fds, (nfds_t)n + 1, 20) <= 0)
            continue;
        for (int i = n; i-- > 0;) {
            if (!(fds[i + 1].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            fconn_t *c = &conns[i];
            ssize_t got = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
            if (got <= 0) {
                close(c->fd);
                conns[i] = conns[--n];
                continue;
            }
            c->len += (size_t)got;
            serve_conn(f, c);
        }
        if ((fds[0].revents & POLLIN) && n < FAKE_CONNS) {
            int fd = accept(f->lfd, NULL, NULL);
            if (fd >= 0)
                conns[n++] = (fconn_t){.fd = fd};
        }
    }
    for (int i = 0; i < n; i++)
        close(conns[i].fd);
    return NULL;
}

static void fake_start(fake_t *f)
{
    memset(f, 0, sizeof(*f));
    f->lfd = test_listen_loopback(16, &f->port);
    assert_true(f->lfd >= 0);
    assert_int_equal(pthread_create(&f->th, NULL, serve, f), 0);
}

static void fake_stop(fake_t *f)
{
    f->stop = 1;
    pthread_join(f->th, NULL);
    close(f->lfd);
}

/* ---- loop ---- */

static void on_guard(uv_timer_t *t)
{
    (void)t;
}

typedef bool (*cond_fn)(void *arg);

static bool run_until(cond_fn cond, void *arg, int ms)
{
    uv_timer_t guard;
    uv_timer_init(&loop, &guard);
    uv_timer_start(&guard, on_guard, 5, 5);
    uint64_t end = uv_hrtime() + (uint64_t)ms * 1000000u;
    while (!(cond != NULL && cond(arg)) && uv_hrtime() < end)
        uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(&loop, UV_RUN_NOWAIT);
    return cond != NULL && cond(arg);
}

static bool is_ready(void *arg)
{
    return redis_client_ready(arg);
}

typedef struct {
    int calls;
    const char *err;
    int type;
    char str[64];
} result_t;

static bool answered(void *arg)
{
    return ((result_t *)arg)->calls > 0;
}

static void on_result(redisReply *r, const char *err, void *data)
{
    result_t *res = data;
    res->calls++;
    res->err = err;
    res->type = r != NULL ? r->type : -1;
    snprintf(res->str, sizeof(res->str), "%s", r != NULL && r->str != NULL ? r->str : "");
}

static redis_client_t *start_client(uint64_t timeout_ms)
{
    char seed[32];
    snprintf(seed, sizeof(seed), "127.0.0.1:%d", fake.port);
    redis_client_t *c = NULL;
    assert_int_equal(redis_client_start_seeds(&c, &loop, seed, "return 1", timeout_ms, NULL, NULL),
                     0);
    current = c;
    assert_true(run_until(is_ready, c, 10000));
    assert_true(redis_client_is_cluster(c));
    return c;
}

/* GET k after `moved` MOVED then `down` CLUSTERDOWN; the answer in res. */
static void get_after(redis_client_t *c, int moved, int down, result_t *res, int wait_ms)
{
    fake.gets = 0;
    fake.unserved = false;
    fake.moved = moved;
    fake.down = down;
    const char *argv[] = {"GET", "k"};
    redis_command(c, on_result, res, 2, argv, NULL);
    assert_true(run_until(answered, res, wait_ms));
    assert_int_equal(res->calls, 1);
}

static void close_client(redis_client_t *c)
{
    current = NULL;
    redis_client_close(c);
    for (int i = 0; i < 2000 && uv_loop_alive(&loop); i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    assert_false(uv_loop_alive(&loop));
}

/* ---- tests ---- */

/* Nodes naming each other past REDIS_MAX_REDIRECTS (their views of a failover differ for a
 * moment): the request waits for them to agree, then runs. */
static void test_redirection_loop_waits(void **state)
{
    (void)state;
    redis_client_t *c = start_client(5000);
    result_t res = {0};
    get_after(c, REDIS_MAX_REDIRECTS + 3, 0, &res, 10000);
    if (res.err != NULL)
        fprintf(stderr, "GET failed: %s\n", res.err);
    assert_null(res.err);
    assert_int_equal(res.type, REDIS_REPLY_STRING);
    assert_string_equal(res.str, "value");
    assert_int_equal(fake.gets, REDIS_MAX_REDIRECTS + 4);
    close_client(c);
}

/* CLUSTERDOWN right after a MOVED (a promoted master whose state is not "ok" yet): it waits
 * and goes again until the node serves it. */
static void test_clusterdown_in_transition_waits(void **state)
{
    (void)state;
    redis_client_t *c = start_client(5000);
    result_t res = {0};
    get_after(c, 1, 3, &res, 10000);
    if (res.err != NULL)
        fprintf(stderr, "GET failed: %s\n", res.err);
    assert_null(res.err);
    assert_string_equal(res.str, "value");
    assert_int_equal(fake.gets, 5);
    close_client(c);
}

/* A request that can never run in a transition fails at its deadline (not before: it waited),
 * as "cluster cannot serve the slot", and is never sent again after its answer. */
static void test_hopeless_fails_at_deadline(void **state)
{
    (void)state;
    redis_client_t *c = start_client(300);
    result_t res = {0};
    uint64_t t0 = uv_hrtime();
    get_after(c, 1, FOREVER, &res, 10000);
    uint64_t took_ms = (uv_hrtime() - t0) / 1000000u;
    assert_ptr_equal(res.err, redis_err_cluster_down);
    assert_true(took_ms >= 290);
    int seen = fake.gets;
    assert_true(seen >= 3); /* the MOVED, then CLUSTERDOWN more than once */
    run_until(NULL, NULL, 300);
    assert_int_equal(fake.gets, seen);
    close_client(c);
}

/* No sign of a transition (a cluster down for longer than the timeout looks so): CLUSTERDOWN
 * fails at once, tried once. */
static void test_clusterdown_out_of_transition_fails_at_once(void **state)
{
    (void)state;
    redis_client_t *c = start_client(5000);
    result_t res = {0};
    get_after(c, 0, FOREVER, &res, 10000);
    assert_ptr_equal(res.err, redis_err_cluster_down);
    assert_int_equal(fake.gets, 1);
    run_until(NULL, NULL, 100);
    assert_int_equal(fake.gets, 1);
    close_client(c);
}

/* "Hash slot not served" (a node out of the cluster, a slot never given) is an outage, not a
 * moment of a failover: it fails at once even right after a MOVED. */
static void test_slot_not_served_fails_at_once(void **state)
{
    (void)state;
    redis_client_t *c = start_client(5000);
    result_t res = {0};
    fake.gets = 0;
    fake.unserved = true;
    fake.moved = 1;
    fake.down = FOREVER;
    const char *argv[] = {"GET", "k"};
    redis_command(c, on_result, &res, 2, argv, NULL);
    assert_true(run_until(answered, &res, 10000));
    assert_ptr_equal(res.err, redis_err_cluster_down);
    assert_int_equal(fake.gets, 2);
    close_client(c);
}

static int teardown(void **state)
{
    (void)state;
    if (current != NULL) {
        redis_client_close(current);
        current = NULL;
    }
    for (int i = 0; i < 2000 && uv_loop_alive(&loop); i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    return 0;
}

static int group_setup(void **state)
{
    (void)state;
    if (uv_loop_init(&loop) != 0)
        return -1;
    fake_start(&fake);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    fake_stop(&fake);
    uv_loop_close(&loop);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_redirection_loop_waits, teardown),
        cmocka_unit_test_teardown(test_clusterdown_in_transition_waits, teardown),
        cmocka_unit_test_teardown(test_hopeless_fails_at_deadline, teardown),
        cmocka_unit_test_teardown(test_clusterdown_out_of_transition_fails_at_once, teardown),
        cmocka_unit_test_teardown(test_slot_not_served_fails_at_once, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
