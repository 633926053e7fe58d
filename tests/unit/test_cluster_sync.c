/* host/common/cluster_sync.c's redirection bounds, against a scripted fake node (a unit test of
 * one module: the real cluster is test_redis_cluster's). The fake is a one-master cluster that
 * answers a GET with a chosen number of TRYAGAIN, then MOVED (to itself), then the value, so
 * the counts the client follows are exact, whatever the machine's load: TRYAGAIN retries must
 * not use up the redirections (a migration that ends after 5 TRYAGAIN then answers MOVED once
 * is followed), and MOVED/ASK stay bounded however many TRYAGAIN came first. */
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
#include <sys/socket.h>
#include <unistd.h>

#include "cluster_sync.h"
#include "free_port.h"

#define MOVED_FOREVER 1000 /* more MOVED than any bounded client follows */

typedef struct {
    int lfd, port;
    _Atomic int tryagain, moved; /* still to answer before the value */
    _Atomic int gets;            /* GETs seen */
    _Atomic int stop;
    pthread_t th;
} fake_t;

static int reply(int fd, const char *s)
{
    size_t len = strlen(s);
    return write(fd, s, len) == (ssize_t)len ? 0 : -1;
}

/* The command's first two words (name and first argument), from one RESP array in buf. */
static int parse(const char *buf, size_t len, char *name, size_t nlen, char *arg, size_t alen)
{
    const char *p = buf, *end = buf + len;
    name[0] = arg[0] = '\0';
    if (p >= end || *p != '*')
        return -1;
    int argc = atoi(p + 1);
    p = memchr(p, '\n', (size_t)(end - p));
    for (int i = 0; i < argc && i < 2 && p != NULL; i++) {
        p++;
        if (p >= end || *p != '$')
            return -1;
        int n = atoi(p + 1);
        p = memchr(p, '\n', (size_t)(end - p));
        if (p == NULL || p + 1 + n > end)
            return -1;
        char *out = i == 0 ? name : arg;
        size_t cap = i == 0 ? nlen : alen;
        snprintf(out, cap, "%.*s", n, p + 1);
        p = memchr(p + 1 + n, '\n', (size_t)(end - (p + 1 + n)));
    }
    return 0;
}

static void answer(fake_t *f, int fd, const char *name, const char *arg)
{
    char out[256];
    if (strcasecmp(name, "CLUSTER") == 0 && strcasecmp(arg, "SLOTS") == 0) {
        snprintf(out, sizeof(out),
                 "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:%d\r\n$40\r\n"
                 "0123456789012345678901234567890123456789\r\n",
                 f->port);
        reply(fd, out);
    } else if (strcasecmp(name, "ASKING") == 0) {
        reply(fd, "+OK\r\n");
    } else if (strcasecmp(name, "GET") == 0) {
        f->gets++;
        if (f->tryagain > 0) {
            f->tryagain--;
            reply(fd, "-TRYAGAIN Multiple keys request during rehashing of slot\r\n");
        } else if (f->moved > 0) {
            f->moved--;
            snprintf(out, sizeof(out), "-MOVED 12182 127.0.0.1:%d\r\n", f->port);
            reply(fd, out);
        } else {
            reply(fd, "$5\r\nvalue\r\n");
        }
    } else {
        reply(fd, "-ERR unknown command\r\n");
    }
}

/* One command per read: the client sends one at a time and waits for its answer. */
static void *serve(void *arg)
{
    fake_t *f = arg;
    struct pollfd fds[8];
    int n = 1;
    fds[0] = (struct pollfd){.fd = f->lfd, .events = POLLIN};
    while (!f->stop) {
        if (poll(fds, (nfds_t)n, 50) <= 0)
            continue;
        if ((fds[0].revents & POLLIN) && n < 8) {
            int c = accept(f->lfd, NULL, NULL);
            if (c >= 0)
                fds[n++] = (struct pollfd){.fd = c, .events = POLLIN};
        }
        for (int i = 1; i < n; i++) {
            if (!(fds[i].revents & (POLLIN | POLLHUP)))
                continue;
            char buf[4096], name[32], word[32];
            ssize_t got = read(fds[i].fd, buf, sizeof(buf));
            if (got <= 0) {
                close(fds[i].fd);
                fds[i--] = fds[--n];
                continue;
            }
            if (parse(buf, (size_t)got, name, sizeof(name), word, sizeof(word)) == 0)
                answer(f, fds[i].fd, name, word);
        }
    }
    for (int i = 1; i < n; i++)
        close(fds[i].fd);
    return NULL;
}

static void fake_start(fake_t *f)
{
    memset(f, 0, sizeof(*f));
    f->lfd = test_listen_loopback(8, &f->port);
    assert_true(f->lfd >= 0);
    assert_int_equal(pthread_create(&f->th, NULL, serve, f), 0);
}

static void fake_stop(fake_t *f)
{
    f->stop = 1;
    pthread_join(f->th, NULL);
    close(f->lfd);
}

/* GET through a client of the fake after `tryagain` TRYAGAIN and `moved` MOVED. */
static redisReply *get_after(fake_t *f, int tryagain, int moved, unsigned long *redirects)
{
    char seeds[64], err[256];
    snprintf(seeds, sizeof(seeds), "127.0.0.1:%d", f->port);
    rsync_t *rs = rsync_open(seeds, NULL, 2000, err, sizeof(err));
    assert_non_null(rs);
    assert_true(rsync_is_cluster(rs));
    f->tryagain = tryagain;
    f->moved = moved;
    redisReply *r = rsync_command(rs, "k", err, sizeof(err), "GET %s", "k");
    assert_non_null(r);
    *redirects = rsync_redirects(rs);
    rsync_close(rs);
    return r;
}

/* A migration that outlasts 5 TRYAGAIN then answers MOVED: followed, the value comes back (the
 * client once counted TRYAGAIN retries as redirections: a MOVED right after the 5th came back
 * as an error, CI's test_redis_cluster test_sync_redirects under load). */
static void test_moved_after_tryagain_is_followed(void **state)
{
    (void)state;
    fake_t f;
    fake_start(&f);
    for (int t = 0; t <= 8; t++) {
        unsigned long redirects = 0;
        redisReply *r = get_after(&f, t, 1, &redirects);
        if (r->type != REDIS_REPLY_STRING)
            fprintf(stderr, "after %d TRYAGAIN: %s\n", t, r->str ? r->str : "?");
        assert_int_equal(r->type, REDIS_REPLY_STRING);
        assert_string_equal(r->str, "value");
        assert_int_equal(redirects, 1);
        freeReplyObject(r);
    }
    fake_stop(&f);
}

/* Redirections stay bounded (5 followed, the 6th comes back) whatever TRYAGAIN came first. */
static void test_redirections_bounded_after_tryagain(void **state)
{
    (void)state;
    fake_t f;
    fake_start(&f);
    for (int t = 0; t <= 8; t += 4) {
        unsigned long redirects = 0;
        f.gets = 0;
        redisReply *r = get_after(&f, t, MOVED_FOREVER, &redirects);
        assert_int_equal(r->type, REDIS_REPLY_ERROR);
        assert_non_null(strstr(r->str, "MOVED"));
        assert_int_equal(redirects, 5);
        assert_int_equal(f.gets, t + 6);
        freeReplyObject(r);
    }
    fake_stop(&f);
}

/* TRYAGAIN itself is bounded: the error comes back after about a second. */
static void test_tryagain_bounded(void **state)
{
    (void)state;
    fake_t f;
    fake_start(&f);
    unsigned long redirects = 0;
    redisReply *r = get_after(&f, MOVED_FOREVER, 0, &redirects);
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    assert_non_null(strstr(r->str, "TRYAGAIN"));
    assert_int_equal(redirects, 0);
    freeReplyObject(r);
    fake_stop(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_moved_after_tryagain_is_followed),
        cmocka_unit_test(test_redirections_bounded_after_tryagain),
        cmocka_unit_test(test_tryagain_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
