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
#include <string.h>
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

static inline redisContext *test_redis_connect(const test_redis_t *r)
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
static inline redisReply *test_redis_cmd(const test_redis_t *r, const char *fmt, ...)
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
static inline int test_redis_do(const test_redis_t *r, const char *fmt, ...)
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

/* kill -9 of the server alone (its directory stays). */
static inline void test_redis_kill9(test_redis_t *r)
{
    if (r->pid > 0) {
        kill(r->pid, SIGKILL);
        waitpid(r->pid, NULL, 0);
        r->pid = -1;
    }
}

static inline void test_redis_stop(test_redis_t *r)
{
    test_redis_kill9(r);
    if (r->dir[0] != '\0') {
        char path[128];
        snprintf(path, sizeof(path), "%s/nodes.conf", r->dir); /* a cluster node's */
        unlink(path);
        rmdir(r->dir);
        r->dir[0] = '\0';
    }
}

/* Starts the server with extra arguments (NULL-terminated list, or NULL); one that
 * test_redis_kill9 stopped starts again on its port and in its directory. Returns 0 once it
 * answers PING (within ~10 s), else -1 (stopped, its directory removed). */
static inline int test_redis_start_args(test_redis_t *r, const char *const *extra)
{
    char port[16];
    if (r->dir[0] == '\0') {
        snprintf(r->dir, sizeof(r->dir), "/tmp/snatch-redis-XXXXXX");
        if (mkdtemp(r->dir) == NULL || (r->port = test_free_port()) <= 0) {
            test_redis_stop(r);
            return -1;
        }
    }
    snprintf(port, sizeof(port), "%d", r->port);
    const char *argv[40] = {"redis-server", "--port", port,           "--bind", "127.0.0.1",
                            "--save",       "",       "--appendonly", "no",     "--daemonize",
                            "no",           "--dir",  r->dir};
    int argc = 13;
    for (int i = 0; extra != NULL && extra[i] != NULL && argc < 39; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;
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
        execvp("redis-server", (char *const *)argv);
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

/* Starts (or restarts) the server without extra arguments. */
static inline int test_redis_start(test_redis_t *r)
{
    return test_redis_start_args(r, NULL);
}

/* ---- a Redis Cluster: 3 masters, each with one replica ---- */

#define TEST_CLUSTER_NODES 6

typedef struct test_cluster {
    test_redis_t nodes[TEST_CLUSTER_NODES];
    char seeds[256];
} test_cluster_t;

static inline void test_cluster_stop(test_cluster_t *c)
{
    for (int i = 0; i < TEST_CLUSTER_NODES; i++)
        test_redis_stop(&c->nodes[i]);
}

/* Runs argv (NULL-terminated) with output discarded; its exit status, or -1. */
static inline int test_run(const char *const *argv)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) {
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    int st;
    if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}

/* True when node answers CLUSTER INFO with cluster_state:ok. */
static inline int test_cluster_node_ok(const test_redis_t *n)
{
    redisReply *r = test_redis_cmd(n, "CLUSTER INFO");
    int ok = r != NULL && r->type == REDIS_REPLY_STRING && strstr(r->str, "cluster_state:ok");
    freeReplyObject(r);
    return ok;
}

/* Waits (up to timeout_ms) until every live node says ok and CLUSTER SLOTS of the first live
 * node lists want_replicas replicas per master. Returns 0 or -1. */
static inline int test_cluster_wait_ok(test_cluster_t *c, int want_replicas, int timeout_ms)
{
    for (int waited = 0; waited < timeout_ms; waited += 100) {
        int ok = 1;
        const test_redis_t *live = NULL;
        for (int i = 0; i < TEST_CLUSTER_NODES && ok; i++) {
            if (c->nodes[i].pid <= 0)
                continue;
            live = live ? live : &c->nodes[i];
            ok = test_cluster_node_ok(&c->nodes[i]);
        }
        redisReply *r = ok && live ? test_redis_cmd(live, "CLUSTER SLOTS") : NULL;
        ok = r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements > 0;
        for (size_t i = 0; ok && i < r->elements; i++)
            ok = (int)r->element[i]->elements - 3 >= want_replicas;
        freeReplyObject(r);
        if (ok)
            return 0;
        usleep(100 * 1000);
    }
    return -1;
}

/* Six nodes on free loopback ports, then redis-cli --cluster create with one replica each.
 * Returns 0 once the cluster is ok with its replicas listed, else -1 (stopped). */
static inline int test_cluster_start(test_cluster_t *c)
{
    memset(c, 0, sizeof(*c));
    char bus[TEST_CLUSTER_NODES][16];
    char addr[TEST_CLUSTER_NODES][24];
    const char *create[16] = {"redis-cli", "--cluster", "create"};
    int n = 3;
    for (int i = 0; i < TEST_CLUSTER_NODES; i++) {
        int bp = test_free_port();
        snprintf(bus[i], sizeof(bus[i]), "%d", bp);
        /* The bus port is set: port + 10000 may be above 65535 or taken. A replica is listed by
         * CLUSTER SLOTS only once its offset moved: the master pings it every second, not 10. */
        const char *extra[] = {"--cluster-enabled",
                               "yes",
                               "--cluster-config-file",
                               "nodes.conf",
                               "--cluster-node-timeout",
                               "1000",
                               "--cluster-port",
                               bus[i],
                               "--repl-diskless-sync-delay",
                               "0",
                               "--repl-ping-replica-period",
                               "1",
                               NULL};
        if (bp <= 0 || test_redis_start_args(&c->nodes[i], extra) != 0)
            goto fail;
        snprintf(addr[i], sizeof(addr[i]), "127.0.0.1:%d", c->nodes[i].port);
        create[n++] = addr[i];
        size_t len = strlen(c->seeds);
        snprintf(c->seeds + len, sizeof(c->seeds) - len, "%s%s", i ? "," : "", addr[i]);
    }
    create[n++] = "--cluster-replicas";
    create[n++] = "1";
    create[n++] = "--cluster-yes";
    create[n] = NULL;
    if (test_run(create) != 0 || test_cluster_wait_ok(c, 1, 30000) != 0)
        goto fail;
    return 0;
fail:
    test_cluster_stop(c);
    return -1;
}

/* The node whose port is port, or NULL. */
static inline test_redis_t *test_cluster_node(test_cluster_t *c, int port)
{
    for (int i = 0; i < TEST_CLUSTER_NODES; i++)
        if (c->nodes[i].port == port)
            return &c->nodes[i];
    return NULL;
}

/* The master serving slot now (as the first live node sees it): its node, and its id in id
 * (41 bytes). NULL when none. */
static inline test_redis_t *test_cluster_master_of(test_cluster_t *c, unsigned slot, char *id)
{
    for (int i = 0; i < TEST_CLUSTER_NODES; i++) {
        if (c->nodes[i].pid <= 0)
            continue;
        redisReply *r = test_redis_cmd(&c->nodes[i], "CLUSTER SLOTS");
        test_redis_t *found = NULL;
        for (size_t k = 0; r != NULL && r->type == REDIS_REPLY_ARRAY && k < r->elements; k++) {
            redisReply *e = r->element[k];
            if (slot < (unsigned)e->element[0]->integer || slot > (unsigned)e->element[1]->integer)
                continue;
            found = test_cluster_node(c, (int)e->element[2]->element[1]->integer);
            if (id != NULL)
                snprintf(id, 41, "%s", e->element[2]->element[2]->str);
        }
        freeReplyObject(r);
        return found;
    }
    return NULL;
}

#endif
