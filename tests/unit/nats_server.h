/* Test helper: starts a real nats-server (JetStream, file storage in a temp dir) on a free
 * loopback port and stops it by PID. Header-only so each test binary stays one source file. */
#ifndef SNATCH_TEST_NATS_SERVER_H
#define SNATCH_TEST_NATS_SERVER_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "free_port.h"

typedef struct test_nats {
    pid_t pid;
    int port;
    char dir[64];
    char url[64];
} test_nats_t;

static void test_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int test_port_open(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* Starts (or restarts, keeping dir and port) the server. Returns 0 once it accepts. */
static int test_nats_start(test_nats_t *n)
{
    char port[16];
    if (n->dir[0] == '\0') {
        snprintf(n->dir, sizeof(n->dir), "/tmp/snatch-nats-XXXXXX");
        if (mkdtemp(n->dir) == NULL)
            return -1;
        n->port = test_free_port();
        snprintf(n->url, sizeof(n->url), "nats://127.0.0.1:%d", n->port);
    }
    snprintf(port, sizeof(port), "%d", n->port);
    n->pid = fork();
    if (n->pid < 0)
        return -1;
    if (n->pid == 0) {
        int fd = open("/dev/null", 1);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execlp("nats-server", "nats-server", "-js", "-sd", n->dir, "-a", "127.0.0.1", "-p", port,
               (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) { /* up to 10 s */
        if (test_port_open(n->port))
            return 0;
        test_sleep_ms(50);
    }
    return -1;
}

static void test_nats_stop(test_nats_t *n)
{
    if (n->pid <= 0)
        return;
    kill(n->pid, SIGKILL);
    waitpid(n->pid, NULL, 0);
    n->pid = 0;
}

static void test_nats_cleanup(test_nats_t *n)
{
    char cmd[128];
    test_nats_stop(n);
    if (n->dir[0] != '\0' && strncmp(n->dir, "/tmp/snatch-nats-", 17) == 0) {
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", n->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "cannot remove %s\n", n->dir);
    }
}

#endif
