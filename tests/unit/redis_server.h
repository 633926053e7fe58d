/* Test helper: starts a real redis-server (no persistence, temp dir) on a free loopback port,
 * killed by PID (and by the kernel if the test dies: PR_SET_PDEATHSIG), and a blocking hiredis
 * connection to set up and inspect it. Header-only so each test binary stays one source file. */
#ifndef SNATCH_TEST_REDIS_SERVER_H
#define SNATCH_TEST_REDIS_SERVER_H

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "free_port.h"

typedef struct test_redis {
    pid_t pid;
    int port;
    char dir[64];
} test_redis_t;

static redisContext *test_redis_connect(const test_redis_t *r)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", r->port, tv);
    if (c != NULL && c->err) {
        redisFree(c);
        return NULL;
    }
    return c;
}

/* Runs one command on a fresh connection; the reply (caller frees) or NULL. */
static redisReply *test_redis_cmd(const test_redis_t *r, const char *fmt, ...)
{
    redisContext *c = test_redis_connect(r);
    if (c == NULL)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *reply = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    return reply;
}

/* Runs one command; 0 when Redis answered something other than an error. */
static int test_redis_do(const test_redis_t *r, const char *fmt, ...)
{
    redisContext *c = test_redis_connect(r);
    if (c == NULL)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    redisReply *reply = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    int rc = reply != NULL && reply->type != REDIS_REPLY_ERROR ? 0 : -1;
    freeReplyObject(reply);
    return rc;
}

static void test_redis_stop(test_redis_t *r)
{
    if (r->pid > 0) {
        kill(r->pid, SIGKILL);
        waitpid(r->pid, NULL, 0);
        r->pid = -1;
    }
    if (r->dir[0] != '\0') {
        rmdir(r->dir);
        r->dir[0] = '\0';
    }
}

/* Starts the server. Returns 0 once it answers PING (within ~10 s), else -1 (stopped). */
static int test_redis_start(test_redis_t *r)
{
    char port[16];
    snprintf(r->dir, sizeof(r->dir), "/tmp/snatch-redis-XXXXXX");
    if (mkdtemp(r->dir) == NULL || (r->port = test_free_port()) <= 0)
        return -1;
    snprintf(port, sizeof(port), "%d", r->port);
    r->pid = fork();
    if (r->pid < 0)
        return -1;
    if (r->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) {
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--daemonize", "no", "--dir", r->dir, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        redisReply *reply = test_redis_cmd(r, "PING");
        int ok = reply != NULL && reply->type == REDIS_REPLY_STATUS;
        freeReplyObject(reply);
        if (ok)
            return 0;
        usleep(50 * 1000);
    }
    test_redis_stop(r);
    return -1;
}

#endif
