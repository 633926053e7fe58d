/* One asynchronous Redis connection (hiredis 0.14 async API on libuv); redis.c routes over
 * these, one per loop thread on a standalone server, one per master and loop thread on a
 * cluster.
 * It sits on the hot path: every snatch that passes the local stock check is one EVALSHA here,
 * ~100k/s per process, all pipelined by hiredis on one connection. So a command costs no malloc
 * of ours in steady state (request records come from a per-client free list and keep their
 * buffers) and no syscall beyond hiredis's own reads and writes.
 *
 * What hiredis 0.14 lacks is added here:
 *  - timeouts: replies arrive in send order, so the requests in flight form a FIFO and one
 *    repeating timer walks it from the oldest. A command past its deadline is answered
 *    "timeout" at once and its late reply, if any, swallowed; the connection stays, so younger
 *    commands keep their own deadlines (see on_tick). When Redis stops answering altogether the
 *    connection is freed once every command has been answered (hiredis then calls the pending
 *    callbacks with NULL) and a new one is made. redisAsyncDisconnect would not do: in 0.14 it
 *    waits for the pending replies, which is what a timeout cannot do.
 *  - reconnection with exponential backoff, logging once per state change rather than per try;
 *  - the script: SCRIPT LOAD on every (re)connection, EVALSHA, and on NOSCRIPT (Redis restarted
 *    or flushed its cache) one transparent EVAL retry plus a new SCRIPT LOAD. A new script
 *    (SIGHUP) that cannot be offered now (not connected, connection lost before the answer,
 *    LOADING or BUSY) is parked and offered first at the next chance: the old one keeps the
 *    connection until Redis accepted the new one, so no EVALSHA names a script Redis lacks.
 * While not connected every command fails at once: nothing is queued while Redis is away.
 *
 * hiredis's own libuv adapter is not used: it ignores a poll error status, so a connection reset
 * by a killed Redis (EPOLLERR) was never reported to hiredis and requests hung until their
 * timeout. Our hooks also coalesce writes: commands issued during one loop iteration are written
 * by one write() just before the loop polls again (a uv_prepare), instead of arming EPOLLOUT
 * and disarming it again for every batch; EPOLLOUT is used only while connecting or when the
 * socket buffer is full.
 *
 * Runs on its loop's thread only; every callback runs there. */
#include "redis_conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <hiredis/async.h>
#include <hiredis/sds.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "util.h"

#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 2000
/* Connection failures logged in a row before going quiet until the next success. */
#define CONNECT_FAILS_LOGGED 3
#define TICK_MIN_MS 5
/* Connect deadline when commands have no timeout. */
#define CONNECT_TIMEOUT_MS 1000
/* Records kept for reuse beyond this many are freed: bounds memory after a burst. */
#define FREE_LIST_MAX 8192
/* Formatting and output buffers up to this size are kept for the next commands. */
#define FMT_KEEP_MAX (256 * 1024)
/* Retries of a setup command (AUTH, SCRIPT LOAD) refused on a live connection, e.g. LOADING while
 * Redis reads its AOF or BUSY while a script runs: short, because the first success after the
 * load decides when the host sells again. */
#define SETUP_BACKOFF_MIN_MS 50
#define SETUP_BACKOFF_MAX_MS 500
/* Refused setup commands are logged at most this often per client. */
#define SETUP_LOG_EVERY_US 5000000u

const char redis_err_not_connected[] = "not connected";
const char redis_err_timeout[] = "timeout";
const char redis_err_lost[] = "connection lost";
const char redis_err_closing[] = "closing";
const char redis_err_no_script[] = "script not loaded";
const char redis_err_bad_args[] = "bad arguments";
const char redis_err_unsupported[] = "unsupported command";
const char redis_err_nomem[] = "out of memory";
const char redis_err_not_ready[] = "not authenticated";
const char redis_err_superseded[] = "superseded by a newer script";

typedef enum {
    REQ_COMMAND,    /* the caller's command, reply passed through */
    REQ_EVAL,       /* EVALSHA; argv kept for the EVAL retry on NOSCRIPT */
    REQ_LOAD,       /* our SCRIPT LOAD of the current source (connect, NOSCRIPT) */
    REQ_SET_SCRIPT, /* SCRIPT LOAD of a candidate source (redis_conn_set_script) */
    REQ_AUTH,       /* AUTH [user] password, the first command of every connection */
} req_kind_t;

typedef struct req req_t;
struct req {
    req_t *next, *prev; /* FIFO of requests in flight; next also links the free list */
    redis_conn_t *c;
    req_kind_t kind;
    bool timed_out;
    bool retried;
    bool answered; /* the caller already got "timeout": the late reply is swallowed */
    uint64_t sent_ns;
    redis_reply_fn fn;
    void *data;
    /* REQ_EVAL: argv = EVALSHA sha numkeys keys... args..., laid out in buf (reused). */
    int argc;
    const char **argv;
    size_t *argvlen;
    char *buf;
    size_t cap;
    char numkeys[UTIL_I64_LEN];
    /* REQ_LOAD: which source it loads, so a late reply cannot clobber a newer sha. */
    uint64_t script_gen;
    /* REQ_SET_SCRIPT: the candidate (owned until adopted), its place in the order of
     * redis_conn_set_script calls, and whom to tell. */
    char *new_script;
    uint64_t script_seq;
    void (*on_done)(int ok, const char *err, void *arg);
    void *arg;
};

struct redis_conn {
    uv_loop_t *loop;
    char host[INET6_ADDRSTRLEN];
    int port;
    uint64_t timeout_ms;

    redisAsyncContext *ac; /* NULL between connections */
    bool connected;        /* onConnect OK and no error seen since */
    bool sha_ok;           /* SCRIPT LOAD answered on this connection */
    bool load_inflight;    /* a REQ_LOAD is out: do not send another */
    bool was_ready;        /* for logging state changes only */
    bool closing;
    bool stalled; /* oldest command far past its deadline: take no new ones, then drop */
    int connect_fails;
    uint64_t backoff_ms;

    char *script;
    uint64_t script_gen;
    char sha[41];
    uint64_t script_seq; /* set_script call that gave script (0: the first one) */
    uint64_t last_seq;   /* set_script calls so far */

    /* A new script waiting for a connection that can take it (see the top). */
    char *parked;
    uint64_t parked_seq;
    void (*parked_done)(int ok, const char *err, void *arg);
    void *parked_arg;

    req_t *head, *tail; /* in flight, oldest first */
    char *fmt;          /* format_command's buffer */
    size_t fmt_cap;
    req_t *free_list;
    size_t n_free;
    size_t n_live; /* records handed out: the client is freed only when they are all back */

    uv_timer_t reconnect_timer;
    uv_timer_t tick_timer;
    uv_prepare_t flush; /* writes what the iteration's commands queued in hiredis */
    int open_handles;

    char *user;     /* ACL user, NULL: "default" */
    char *password; /* NULL: no AUTH */
    bool authed;    /* AUTH accepted on this connection (or none needed) */
    bool auth_inflight;
    uv_timer_t setup_timer; /* retries a refused AUTH or SCRIPT LOAD on the same connection */
    uint64_t setup_backoff_ms;
    uint64_t setup_logged_us;
    unsigned setup_unlogged;

    void (*on_ready)(redis_conn_t *c, void *arg);
    void *ready_arg;
};

static void on_reply(redisAsyncContext *ac, void *r, void *privdata);
static void on_flush(uv_prepare_t *h);
static void on_poll(uv_poll_t *h, int status, int events);
static void on_tick(uv_timer_t *t);
static void on_reconnect_timer(uv_timer_t *t);
static void on_connect_timeout(uv_timer_t *t);
static void on_setup_timer(uv_timer_t *t);

/* Tells the router that c took a step towards ready (usable, then ready). */
static void notify(redis_conn_t *c)
{
    if (c->on_ready != NULL && !c->closing)
        c->on_ready(c, c->ready_arg);
}

/* ---- request records ---- */

static req_t *req_get(redis_conn_t *c, req_kind_t kind)
{
    req_t *r = c->free_list;
    if (r != NULL) {
        c->free_list = r->next;
        c->n_free--;
    } else {
        r = calloc(1, sizeof(*r));
        if (r == NULL)
            return NULL;
    }
    r->next = r->prev = NULL;
    r->c = c;
    r->kind = kind;
    r->timed_out = r->retried = r->answered = false;
    r->fn = NULL;
    r->data = NULL;
    r->new_script = NULL;
    r->on_done = NULL;
    c->n_live++;
    return r;
}

static void client_free(redis_conn_t *c)
{
    while (c->free_list != NULL) {
        req_t *r = c->free_list;
        c->free_list = r->next;
        free(r->buf);
        free(r);
    }
    free(c->fmt);
    free(c->script);
    free(c->parked);
    free(c->user);
    free(c->password);
    free(c);
}

static void maybe_free_client(redis_conn_t *c)
{
    if (c->closing && c->open_handles == 0 && c->n_live == 0 && c->ac == NULL)
        client_free(c);
}

/* Returns r to the free list. May free the client itself (last record after close): callers
 * must not touch c afterwards. */
static void req_put(redis_conn_t *c, req_t *r)
{
    free(r->new_script);
    r->new_script = NULL;
    c->n_live--;
    if (c->n_free >= FREE_LIST_MAX) {
        free(r->buf);
        free(r);
    } else {
        r->next = c->free_list;
        c->free_list = r;
        c->n_free++;
    }
    maybe_free_client(c);
}

static void fifo_push(redis_conn_t *c, req_t *r)
{
    r->next = NULL;
    r->prev = c->tail;
    if (c->tail != NULL)
        c->tail->next = r;
    else
        c->head = r;
    c->tail = r;
}

static void fifo_remove(redis_conn_t *c, req_t *r)
{
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        c->head = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    else
        c->tail = r->prev;
    r->next = r->prev = NULL;
}

/* ---- sending ---- */

static void arm_tick(redis_conn_t *c)
{
    if (c->timeout_ms == 0 || uv_is_active((uv_handle_t *)&c->tick_timer))
        return;
    uint64_t every = c->timeout_ms / 4;
    if (every < TICK_MIN_MS)
        every = TICK_MIN_MS;
    uv_timer_start(&c->tick_timer, on_tick, every, every);
}

static size_t digits(size_t v)
{
    size_t n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

static char *put_count(char *p, char type, size_t v)
{
    *p++ = type;
    p += util_i64(p, (int64_t)v);
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

/* The command in the protocol's multi-bulk form, in c's reused buffer (a batch's EVALSHA is
 * kilobytes: hiredis's own formatting would allocate it per call). Returns its length, or 0
 * when out of memory; *out is c->fmt or, for a command larger than FMT_KEEP_MAX, a buffer the
 * caller frees. */
static size_t format_command(redis_conn_t *c, int argc, const char **argv, const size_t *argvlen,
                             char **out)
{
    size_t need = 1 + digits((size_t)argc) + 2;
    for (int i = 0; i < argc; i++) {
        size_t n = argvlen != NULL ? argvlen[i] : strlen(argv[i]);
        need += 1 + digits(n) + 2 + n + 2;
    }
    char *buf = c->fmt;
    if (need > FMT_KEEP_MAX) {
        buf = malloc(need);
    } else if (need > c->fmt_cap) {
        buf = realloc(c->fmt, need);
        if (buf != NULL) {
            c->fmt = buf;
            c->fmt_cap = need;
        }
    }
    if (buf == NULL)
        return 0;
    char *p = put_count(buf, '*', (size_t)argc);
    for (int i = 0; i < argc; i++) {
        size_t n = argvlen != NULL ? argvlen[i] : strlen(argv[i]);
        p = put_count(p, '$', n);
        memcpy(p, argv[i], n);
        p += n;
        *p++ = '\r';
        *p++ = '\n';
    }
    *out = buf;
    return (size_t)(p - buf);
}

/* Hands r to hiredis and tracks it. Returns 0, or -1 (r untouched, not queued). */
static int send_req(redis_conn_t *c, req_t *r, int argc, const char **argv, const size_t *argvlen)
{
    char *cmd = NULL;
    size_t len = format_command(c, argc, argv, argvlen, &cmd);
    if (len == 0)
        return -1;
    int rc = redisAsyncFormattedCommand(c->ac, on_reply, r, cmd, len);
    if (cmd != c->fmt)
        free(cmd);
    if (rc != REDIS_OK)
        return -1;
    r->sent_ns = uv_hrtime();
    fifo_push(c, r);
    arm_tick(c);
    return 0;
}

/* SCRIPT LOAD of the current source, unless one is already out. */
static void send_load(redis_conn_t *c)
{
    if (c->load_inflight || c->ac == NULL || !c->connected || !c->authed)
        return;
    req_t *r = req_get(c, REQ_LOAD);
    if (r == NULL)
        return;
    r->script_gen = c->script_gen;
    const char *argv[] = {"SCRIPT", "LOAD", c->script};
    const size_t len[] = {6, 4, strlen(c->script)};
    if (send_req(c, r, 3, argv, len) != 0) {
        req_put(c, r);
        return;
    }
    c->load_inflight = true;
}

/* SCRIPT LOAD of the parked script; its answer adopts it (set_script_done). */
static void send_parked(redis_conn_t *c)
{
    if (c->parked == NULL || c->ac == NULL || !c->connected || !c->authed)
        return;
    req_t *r = req_get(c, REQ_SET_SCRIPT);
    if (r == NULL)
        return; /* stays parked: the next setup step or reconnection tries again */
    const char *argv[] = {"SCRIPT", "LOAD", c->parked};
    const size_t len[] = {6, 4, strlen(c->parked)};
    if (send_req(c, r, 3, argv, len) != 0) {
        req_put(c, r);
        return;
    }
    r->new_script = c->parked;
    r->script_seq = c->parked_seq;
    r->on_done = c->parked_done;
    r->arg = c->parked_arg;
    c->parked = NULL;
}

/* The script step of a connection's setup: a parked new script first, so that a reload made
 * while Redis was away is what the connection serves once it is ready. */
static void send_script(redis_conn_t *c)
{
    if (c->parked != NULL)
        send_parked(c);
    else if (!c->sha_ok)
        send_load(c);
}

/* Keeps a new script for the next chance to offer it; of two, the later call wins. */
static void park(redis_conn_t *c, char *script, uint64_t seq,
                 void (*on_done)(int ok, const char *err, void *arg), void *arg)
{
    if (seq < c->script_seq || (c->parked != NULL && seq < c->parked_seq)) {
        free(script);
        on_done(0, redis_err_superseded, arg);
        return;
    }
    char *old = c->parked;
    void (*old_done)(int, const char *, void *) = c->parked_done;
    void *old_arg = c->parked_arg;
    c->parked = script;
    c->parked_seq = seq;
    c->parked_done = on_done;
    c->parked_arg = arg;
    if (old != NULL) {
        free(old);
        old_done(0, redis_err_superseded, old_arg);
    }
}

/* AUTH before anything else on a new connection; the password never reaches a log. */
static void send_auth(redis_conn_t *c)
{
    if (c->auth_inflight || c->ac == NULL || !c->connected)
        return;
    req_t *r = req_get(c, REQ_AUTH);
    if (r == NULL)
        return;
    const char *argv[3] = {"AUTH"};
    size_t len[3] = {4};
    int argc = 1;
    if (c->user != NULL) {
        argv[argc] = c->user;
        len[argc++] = strlen(c->user);
    }
    argv[argc] = c->password;
    len[argc++] = strlen(c->password);
    if (send_req(c, r, argc, argv, len) != 0) {
        req_put(c, r);
        return;
    }
    c->auth_inflight = true;
}

/* ---- reply objects ----
 *
 * hiredis 0.14 builds every reply with calloc/malloc: a batch's reply (an array of per-buyer
 * arrays of strings and integers) costs a dozen allocations per buyer, and glibc's calloc does
 * not go through its per-thread cache. These functions build the same redisReply trees from
 * nodes kept on a per-thread free list: a node holds a short string or a short element vector
 * inline, only longer ones are allocated. Every reply is built, read and freed on its
 * connection's loop thread, so the list needs no lock; a thread's nodes are freed when it ends. */

#define NODE_INLINE 64
#define NODE_CACHE_MAX 4096

typedef struct node {
    redisReply r; /* first: hiredis and our callers see a plain redisReply */
    struct node *next_free;
    union {
        char str[NODE_INLINE];
        redisReply *elem[NODE_INLINE / sizeof(redisReply *)];
    } in;
} node_t;

static _Thread_local node_t *node_cache;
static _Thread_local size_t node_cached;
static _Thread_local bool node_key_set;
static pthread_key_t node_key;
static pthread_once_t node_once = PTHREAD_ONCE_INIT;

static void node_cache_drop(void *unused)
{
    (void)unused;
    while (node_cache != NULL) {
        node_t *n = node_cache;
        node_cache = n->next_free;
        free(n);
    }
    node_cached = 0;
}

static void node_key_init(void)
{
    if (pthread_key_create(&node_key, node_cache_drop) != 0)
        abort(); /* only EAGAIN/ENOMEM at start-up */
}

static node_t *node_get(const redisReadTask *task, int type)
{
    node_t *n = node_cache;
    if (n != NULL) {
        node_cache = n->next_free;
        node_cached--;
    } else if ((n = malloc(sizeof(*n))) == NULL) {
        return NULL;
    }
    n->r = (redisReply){.type = type};
    if (task->parent != NULL) {
        redisReply *parent = task->parent->obj;
        parent->element[task->idx] = &n->r;
    }
    return n;
}

static void node_put(node_t *n)
{
    if (node_cached >= NODE_CACHE_MAX) {
        free(n);
        return;
    }
    if (!node_key_set) {
        /* The thread's first cached node: have its list freed when the thread ends. */
        pthread_once(&node_once, node_key_init);
        pthread_setspecific(node_key, &node_key);
        node_key_set = true;
    }
    n->next_free = node_cache;
    node_cache = n;
    node_cached++;
}

static void *node_string(const redisReadTask *task, char *str, size_t len)
{
    node_t *n = node_get(task, task->type);
    if (n == NULL)
        return NULL;
    char *buf = len < NODE_INLINE ? n->in.str : malloc(len + 1);
    if (buf == NULL) {
        node_put(n);
        return NULL;
    }
    memcpy(buf, str, len);
    buf[len] = '\0';
    n->r.str = buf;
    n->r.len = len;
    return n;
}

static void *node_array(const redisReadTask *task, int elements)
{
    node_t *n = node_get(task, REDIS_REPLY_ARRAY);
    if (n == NULL)
        return NULL;
    size_t k = elements > 0 ? (size_t)elements : 0;
    if (k > 0) {
        n->r.element = k <= ARRAY_SIZE(n->in.elem) ? n->in.elem : malloc(k * sizeof(redisReply *));
        if (n->r.element == NULL) {
            node_put(n);
            return NULL;
        }
        memset(n->r.element, 0, k * sizeof(redisReply *));
    }
    n->r.elements = k;
    return n;
}

static void *node_integer(const redisReadTask *task, long long value)
{
    node_t *n = node_get(task, REDIS_REPLY_INTEGER);
    if (n != NULL)
        n->r.integer = value;
    return n;
}

static void *node_nil(const redisReadTask *task)
{
    return node_get(task, REDIS_REPLY_NIL);
}

static void node_free(void *reply)
{
    node_t *n = reply;
    if (n == NULL)
        return;
    if (n->r.type == REDIS_REPLY_ARRAY && n->r.element != NULL) {
        /* A reply hiredis gave up on half-way has NULL slots. */
        for (size_t i = 0; i < n->r.elements; i++)
            node_free(n->r.element[i]);
        if (n->r.element != n->in.elem)
            free(n->r.element);
    } else if (n->r.str != NULL && n->r.str != n->in.str) {
        free(n->r.str);
    }
    node_put(n);
}

static redisReplyObjectFunctions node_fns = {
    .createString = node_string,
    .createArray = node_array,
    .createInteger = node_integer,
    .createNil = node_nil,
    .freeObject = node_free,
};

redisReplyObjectFunctions *redis_conn_reply_fns(void)
{
    return &node_fns;
}

/* ---- hiredis event hooks ---- */

/* One per connection, freed in its close callback (after hiredis has let go of it). */
typedef struct {
    uv_poll_t poll;
    redisAsyncContext *ac; /* NULL once hiredis called cleanup */
    redis_conn_t *c;
    int events;    /* what the poll handle is started with */
    bool flushing; /* inside on_flush: a write hiredis could not finish needs EPOLLOUT */
} poller_t;

static void poll_set(poller_t *p, int events)
{
    if (events == p->events)
        return;
    p->events = events;
    if (events)
        uv_poll_start(&p->poll, events, on_poll);
    else
        uv_poll_stop(&p->poll);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    poller_t *p = h->data;
    if (status < 0) {
        /* libuv stopped the handle; let hiredis find the socket error by reading/writing. */
        events = p->events ? p->events : UV_READABLE;
        p->events = 0;
    }
    if (p->ac != NULL && (events & UV_READABLE))
        redisAsyncHandleRead(p->ac);
    if (p->ac != NULL && (events & UV_WRITABLE))
        redisAsyncHandleWrite(p->ac);
}

static void hook_add_read(void *privdata)
{
    poller_t *p = privdata;
    poll_set(p, p->events | UV_READABLE);
}

static void hook_del_read(void *privdata)
{
    poller_t *p = privdata;
    poll_set(p, p->events & ~UV_READABLE);
}

static void hook_add_write(void *privdata)
{
    poller_t *p = privdata;
    if (p->events & UV_WRITABLE)
        return;
    if (p->flushing || !(p->ac->c.flags & REDIS_CONNECTED)) {
        poll_set(p, p->events | UV_WRITABLE);
        return;
    }
    uv_prepare_start(&p->c->flush, on_flush);
}

static void hook_del_write(void *privdata)
{
    poller_t *p = privdata;
    poll_set(p, p->events & ~UV_WRITABLE);
}

static void on_poller_closed(uv_handle_t *h)
{
    free(h->data);
}

static void hook_cleanup(void *privdata)
{
    poller_t *p = privdata;
    p->ac = NULL;
    uv_close((uv_handle_t *)&p->poll, on_poller_closed);
}

static int attach(redis_conn_t *c, redisAsyncContext *ac)
{
    poller_t *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return -1;
    if (uv_poll_init_socket(c->loop, &p->poll, ac->c.fd) != 0) {
        free(p);
        return -1;
    }
    p->poll.data = p;
    p->ac = ac;
    p->c = c;
    ac->ev.data = p;
    ac->ev.addRead = hook_add_read;
    ac->ev.delRead = hook_del_read;
    ac->ev.addWrite = hook_add_write;
    ac->ev.delWrite = hook_del_write;
    ac->ev.cleanup = hook_cleanup;
    return 0;
}

/* What redisAsyncHandleWrite does in the common case (the whole output buffer goes in one
 * write), except that the buffer is emptied rather than freed: hiredis would allocate a new one,
 * kilobytes per batch, at every loop iteration. Returns false when hiredis must take over (a
 * partial or failed write, an error already seen, a connection not set up): it then writes the
 * rest, waits for EPOLLOUT or reports the error, as always. */
static bool write_all(redisAsyncContext *ac, const poller_t *p)
{
    sds obuf = ac->c.obuf;
    size_t len = sdslen(obuf);
    if (ac->c.err != 0 || !(ac->c.flags & REDIS_CONNECTED) || !(p->events & UV_READABLE) ||
        (p->events & UV_WRITABLE) || sdsalloc(obuf) > FMT_KEEP_MAX)
        return false;
    if (len == 0)
        return true;
    ssize_t n = write(ac->c.fd, obuf, len);
    if (n < 0 || (size_t)n != len) {
        if (n > 0)
            sdsrange(obuf, (int)n, -1);
        return false;
    }
    sdsclear(obuf);
    return true;
}

static void on_flush(uv_prepare_t *h)
{
    redis_conn_t *c = container_of(h, redis_conn_t, flush);
    uv_prepare_stop(h);
    if (c->ac == NULL)
        return;
    poller_t *p = c->ac->ev.data; /* outlives a failed write: freed only in its close callback */
    if (write_all(c->ac, p))
        return;
    p->flushing = true;
    redisAsyncHandleWrite(c->ac);
    p->flushing = false;
}

/* ---- connection state ---- */

static void schedule_reconnect(redis_conn_t *c)
{
    if (c->closing)
        return;
    uv_timer_start(&c->reconnect_timer, on_reconnect_timer, c->backoff_ms, 0);
    c->backoff_ms *= 2;
    if (c->backoff_ms > BACKOFF_MAX_MS)
        c->backoff_ms = BACKOFF_MAX_MS;
}

static void log_lost(redis_conn_t *c, const char *why)
{
    if (c->was_ready)
        log_warn("redis: connection to %s:%d lost: %s", c->host, c->port, why);
    c->was_ready = false;
}

static void log_connect_failed(redis_conn_t *c, const char *why)
{
    c->connect_fails++;
    metrics_backend_error(METRICS_REDIS_CONNECT);
    if (c->connect_fails <= CONNECT_FAILS_LOGGED)
        log_warn("redis: cannot connect to %s:%d: %s%s", c->host, c->port, why,
                 c->connect_fails == CONNECT_FAILS_LOGGED ? " (retrying quietly)" : "");
}

/* Drops the connection now: every request in flight fails (those past their deadline with
 * "timeout"), then a reconnection is scheduled. Not to be called from inside a hiredis callback
 * of the same context (hiredis would defer the free; our callers are timers and close). */
static void drop_connection(redis_conn_t *c, const char *why)
{
    redisAsyncContext *ac = c->ac;
    if (ac == NULL)
        return;
    if (c->was_ready)
        log_lost(c, why);
    else
        log_connect_failed(c, why); /* e.g. a peer that accepts but never answers */
    c->ac = NULL;
    c->connected = false;
    c->sha_ok = false;
    c->load_inflight = false;
    c->authed = false;
    c->auth_inflight = false;
    c->stalled = false;
    uv_timer_stop(&c->setup_timer);
    redisAsyncFree(ac); /* runs on_reply(NULL) for each request; on_disconnect sees ac stale */
    schedule_reconnect(c);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    redis_conn_t *c = ac->data;
    if (c == NULL || c->ac != ac)
        return;
    uv_timer_stop(&c->reconnect_timer); /* the connect deadline */
    if (status != REDIS_OK) {
        /* hiredis frees ac right after this returns. */
        log_connect_failed(c, ac->c.errstr);
        c->ac = NULL;
        schedule_reconnect(c);
        return;
    }
    c->connected = true;
    c->authed = c->password == NULL;
    c->setup_backoff_ms = SETUP_BACKOFF_MIN_MS;
    if (c->authed) {
        send_script(c);
        notify(c);
    } else {
        send_auth(c);
    }
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    redis_conn_t *c = ac->data;
    if (c == NULL || c->ac != ac)
        return; /* we dropped it ourselves and already moved on */
    log_lost(c, status == REDIS_OK ? "closed" : ac->c.errstr);
    c->ac = NULL;
    c->connected = false;
    c->sha_ok = false;
    c->load_inflight = false;
    c->authed = false;
    c->auth_inflight = false;
    uv_timer_stop(&c->setup_timer);
    schedule_reconnect(c);
}

static void connect_now(redis_conn_t *c)
{
    if (c->closing || c->ac != NULL)
        return;
    redisAsyncContext *ac = redisAsyncConnect(c->host, c->port);
    if (ac == NULL) {
        log_connect_failed(c, "out of memory");
        schedule_reconnect(c);
        return;
    }
    if (ac->err) {
        log_connect_failed(c, ac->c.errstr);
        redisAsyncFree(ac);
        schedule_reconnect(c);
        return;
    }
    ac->data = c;
    ac->c.reader->fn = &node_fns; /* before any reply: every object is built by node_fns */
    if (attach(c, ac) != 0) {
        log_connect_failed(c, "cannot attach to the loop");
        redisAsyncFree(ac);
        schedule_reconnect(c);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    c->ac = ac;
    /* A SYN into the void would otherwise wait for the kernel's retries (minutes). */
    uint64_t deadline = c->timeout_ms ? c->timeout_ms : CONNECT_TIMEOUT_MS;
    if (deadline < TICK_MIN_MS * 20)
        deadline = TICK_MIN_MS * 20;
    uv_timer_start(&c->reconnect_timer, on_connect_timeout, deadline, 0);
}

static void on_connect_timeout(uv_timer_t *t)
{
    redis_conn_t *c = container_of(t, redis_conn_t, reconnect_timer);
    redisAsyncContext *ac = c->ac;
    if (ac == NULL || c->connected)
        return;
    log_connect_failed(c, "connect timed out");
    c->ac = NULL;
    redisAsyncFree(ac); /* nothing was sent yet: no callbacks to run */
    schedule_reconnect(c);
}

static void on_reconnect_timer(uv_timer_t *t)
{
    connect_now(container_of(t, redis_conn_t, reconnect_timer));
}

/* A command past its deadline is answered "timeout" at once, but the connection stays: if it
 * were dropped, every younger command would end as "connection lost" with an unknown outcome
 * (Redis may still run what it already received). Kept, each command times out at its own
 * deadline, which callers can make certain (deduct.lua refuses after the deadline it is given).
 * Only when the oldest command is STALL_FACTOR deadlines old does the client stop taking new
 * commands; once every outstanding one has been answered, the connection is dropped and made
 * anew. */
#define STALL_FACTOR 3

static bool user_kind(const req_t *r)
{
    return r->kind == REQ_EVAL || r->kind == REQ_COMMAND;
}

static void on_tick(uv_timer_t *t)
{
    redis_conn_t *c = container_of(t, redis_conn_t, tick_timer);
    if (c->head == NULL) {
        uv_timer_stop(t); /* re-armed by the next send: no wake-ups while idle */
        return;
    }
    uint64_t now = uv_hrtime();
    uint64_t limit = c->timeout_ms * 1000000u;
    if (now - c->head->sent_ns < limit)
        return;
    for (req_t *r = c->head; r != NULL && now - r->sent_ns >= limit; r = r->next) {
        r->timed_out = true;
        if (r->answered || !user_kind(r))
            continue;
        r->answered = true;
        r->fn(NULL, redis_err_timeout, r->data);
        if (c->closing)
            return; /* the callback closed the client: close failed the rest */
    }
    if (c->head != NULL && now - c->head->sent_ns >= STALL_FACTOR * limit)
        c->stalled = true;
    if (!c->stalled)
        return;
    for (req_t *r = c->head; r != NULL; r = r->next)
        if (user_kind(r) && !r->answered)
            return; /* younger commands still have time left: let them run out first */
    drop_connection(c, "commands timed out");
}

/* ---- replies ---- */

static const char *failure_reason(const redis_conn_t *c, const req_t *r)
{
    if (r->timed_out)
        return redis_err_timeout;
    return c->closing ? redis_err_closing : redis_err_lost;
}

static bool is_noscript(const redisReply *reply)
{
    return reply != NULL && reply->type == REDIS_REPLY_ERROR && reply->len >= 8 &&
           memcmp(reply->str, "NOSCRIPT", 8) == 0;
}

static void adopt_sha(redis_conn_t *c, const redisReply *reply)
{
    if (reply->type != REDIS_REPLY_STRING || reply->len != 40)
        return;
    memcpy(c->sha, reply->str, 40);
    c->sha[40] = '\0';
}

/* The script is in this Redis: evals may go. */
static void mark_ready(redis_conn_t *c)
{
    if (c->sha_ok)
        return;
    c->sha_ok = true;
    c->backoff_ms = BACKOFF_MIN_MS;
    c->setup_backoff_ms = SETUP_BACKOFF_MIN_MS;
    c->connect_fails = 0;
    if (!c->was_ready)
        log_info("redis: connected to %s:%d", c->host, c->port);
    c->was_ready = true;
    notify(c);
}

/* A setup command was refused on a live connection. Without a retry the connection would stay
 * up and never become ready (issue: LOADING after a restart meant 503 until SIGHUP), so it is
 * sent again on the same connection with backoff; each refusal is counted, and logged at most
 * every SETUP_LOG_EVERY_US. */
static void setup_refused(redis_conn_t *c, metrics_backend_step_t step, const char *what,
                          const redisReply *reply)
{
    metrics_backend_error(step);
    uint64_t now = uv_hrtime() / 1000;
    if (c->setup_logged_us == 0 || now - c->setup_logged_us >= SETUP_LOG_EVERY_US) {
        log_warn("redis: %s on %s:%d failed: %s (retrying; %u refusals not logged)", what, c->host,
                 c->port, reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply",
                 c->setup_unlogged);
        c->setup_logged_us = now;
        c->setup_unlogged = 0;
    } else {
        c->setup_unlogged++;
    }
    if (c->closing || !c->connected || uv_is_active((uv_handle_t *)&c->setup_timer))
        return;
    uv_timer_start(&c->setup_timer, on_setup_timer, c->setup_backoff_ms, 0);
    c->setup_backoff_ms *= 2;
    if (c->setup_backoff_ms > SETUP_BACKOFF_MAX_MS)
        c->setup_backoff_ms = SETUP_BACKOFF_MAX_MS;
}

static void on_setup_timer(uv_timer_t *t)
{
    redis_conn_t *c = container_of(t, redis_conn_t, setup_timer);
    if (c->closing || !c->connected)
        return;
    if (!c->authed)
        send_auth(c);
    else
        send_script(c);
}

static void auth_done(redis_conn_t *c, redisReply *reply)
{
    c->auth_inflight = false;
    if (reply == NULL)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        setup_refused(c, METRICS_REDIS_AUTH, "AUTH", reply);
        return;
    }
    c->authed = true;
    send_script(c);
    notify(c);
}

static void load_done(redis_conn_t *c, req_t *r, redisReply *reply)
{
    c->load_inflight = false;
    if (reply == NULL)
        return;
    if (reply->type != REDIS_REPLY_STRING) {
        setup_refused(c, METRICS_REDIS_SCRIPT_LOAD, "SCRIPT LOAD", reply);
        return;
    }
    if (r->script_gen == c->script_gen)
        adopt_sha(c, reply);
    mark_ready(c);
}

bool redis_err_transient(const char *err)
{
    static const char *const words[] = {"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN"};
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
        if (strncmp(err, words[i], strlen(words[i])) == 0)
            return true;
    return false;
}

static void set_script_done(redis_conn_t *c, req_t *r, redisReply *reply, const char *err)
{
    if (reply == NULL && c->closing) {
        r->on_done(0, err, r->arg);
        return;
    }
    if (reply == NULL || (reply->type == REDIS_REPLY_ERROR && redis_err_transient(reply->str))) {
        /* Not refused, only not taken yet: offered again on this or the next connection. */
        if (reply != NULL)
            setup_refused(c, METRICS_REDIS_SCRIPT_LOAD, "SCRIPT LOAD", reply);
        park(c, r->new_script, r->script_seq, r->on_done, r->arg);
        r->new_script = NULL;
        return;
    }
    if (reply->type != REDIS_REPLY_STRING || reply->len != 40) {
        r->on_done(0, reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply", r->arg);
        send_script(c); /* a connection that went for the new script goes back to its own */
        return;
    }
    if (r->script_seq < c->script_seq) {
        r->on_done(0, redis_err_superseded, r->arg);
        return;
    }
    free(c->script);
    c->script = r->new_script;
    r->new_script = NULL;
    c->script_gen++;
    c->script_seq = r->script_seq;
    adopt_sha(c, reply);
    mark_ready(c); /* also recovers a client whose first script did not compile */
    if (c->parked != NULL && c->parked_seq < c->script_seq) {
        void (*done)(int, const char *, void *) = c->parked_done;
        void *arg = c->parked_arg;
        free(c->parked);
        c->parked = NULL;
        done(0, redis_err_superseded, arg);
    }
    r->on_done(1, NULL, r->arg);
}

/* NOSCRIPT: resend the same arguments as EVAL <source>, and reload the script so the next
 * calls go back to EVALSHA. The retry joins the end of the FIFO with a fresh deadline. */
static int retry_as_eval(redis_conn_t *c, req_t *r)
{
    r->retried = true;
    r->argv[0] = "EVAL";
    r->argvlen[0] = 4;
    r->argv[1] = c->script;
    r->argvlen[1] = strlen(c->script);
    send_load(c);
    return send_req(c, r, r->argc, r->argv, r->argvlen);
}

static void on_reply(redisAsyncContext *ac, void *reply_, void *privdata)
{
    (void)ac;
    redisReply *reply = reply_;
    req_t *r = privdata;
    redis_conn_t *c = r->c;
    fifo_remove(c, r);
    if (r->answered) {
        /* Its caller was told "timeout" already; this late reply is dropped. */
        req_put(c, r);
        return;
    }
    const char *err = NULL;
    if (reply == NULL) {
        /* hiredis is tearing the connection down: fail new commands from callbacks at once. */
        c->connected = false;
        c->sha_ok = false;
        err = failure_reason(c, r);
    } else {
        metrics_redis_rtt((uv_hrtime() - r->sent_ns) / 1000);
    }

    switch (r->kind) {
    case REQ_LOAD:
        load_done(c, r, reply);
        break;
    case REQ_AUTH:
        auth_done(c, reply);
        break;
    case REQ_SET_SCRIPT:
        set_script_done(c, r, reply, err);
        break;
    case REQ_EVAL:
        if (is_noscript(reply) && !r->retried && c->connected) {
            if (retry_as_eval(c, r) == 0)
                return; /* r lives on in the FIFO */
            reply = NULL;
            err = redis_err_lost;
        }
        r->fn(reply, err, r->data);
        break;
    case REQ_COMMAND:
        r->fn(reply, err, r->data);
        break;
    }
    req_put(c, r);
}

/* ---- public API ---- */

int redis_conn_start(redis_conn_t **out, uv_loop_t *loop, const char *host, int port,
                     const char *script, uint64_t timeout_ms)
{
    return redis_conn_start_auth(out, loop, host, port, script, timeout_ms, NULL, NULL);
}

int redis_conn_start_auth(redis_conn_t **out, uv_loop_t *loop, const char *host, int port,
                          const char *script, uint64_t timeout_ms, const char *user,
                          const char *password)
{
    unsigned char addr[sizeof(struct in6_addr)];
    *out = NULL;
    if (loop == NULL || host == NULL || script == NULL || port <= 0 || port > 65535)
        return -EINVAL;
    /* Numeric only: a name would make hiredis resolve it with a blocking getaddrinfo. */
    if (inet_pton(AF_INET, host, addr) != 1 && inet_pton(AF_INET6, host, addr) != 1)
        return -EINVAL;
    redis_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    c->script = strdup(script);
    c->user = user != NULL ? strdup(user) : NULL;
    c->password = password != NULL ? strdup(password) : NULL;
    if (c->script == NULL || (user != NULL && c->user == NULL) ||
        (password != NULL && c->password == NULL)) {
        free(c->script);
        free(c->user);
        free(c->password);
        free(c);
        return -ENOMEM;
    }
    c->loop = loop;
    snprintf(c->host, sizeof(c->host), "%s", host);
    c->port = port;
    c->timeout_ms = timeout_ms;
    c->backoff_ms = BACKOFF_MIN_MS;
    uv_timer_init(loop, &c->reconnect_timer);
    uv_timer_init(loop, &c->tick_timer);
    uv_prepare_init(loop, &c->flush);
    uv_timer_init(loop, &c->setup_timer);
    c->open_handles = 4;
    c->setup_backoff_ms = SETUP_BACKOFF_MIN_MS;
    connect_now(c);
    *out = c;
    return 0;
}

bool redis_conn_usable(const redis_conn_t *c)
{
    return c != NULL && c->connected && c->authed && !c->stalled && !c->closing;
}

bool redis_conn_ready(const redis_conn_t *c)
{
    return c != NULL && c->connected && c->authed && c->sha_ok && !c->stalled;
}

/* Commands that change the connection's reply protocol would break the in-order FIFO. */
static bool unsupported(const char *cmd, size_t len)
{
    static const char *const names[] = {"subscribe",    "psubscribe",   "ssubscribe", "unsubscribe",
                                        "punsubscribe", "sunsubscribe", "monitor"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strlen(names[i]) == len && strncasecmp(cmd, names[i], len) == 0)
            return true;
    return false;
}

/* Why nothing can be sent now, or NULL. */
static const char *cannot_send(const redis_conn_t *c)
{
    if (c->closing)
        return redis_err_closing;
    if (!c->connected || c->ac == NULL || c->stalled)
        return redis_err_not_connected;
    return NULL;
}

void redis_conn_command(redis_conn_t *c, redis_reply_fn fn, void *data, int argc, const char **argv,
                        const size_t *argvlen)
{
    const char *why = cannot_send(c);
    if (why != NULL) {
        fn(NULL, why, data);
        return;
    }
    if (!c->authed) {
        fn(NULL, redis_err_not_ready, data);
        return;
    }
    if (argc < 1 || argv == NULL) {
        fn(NULL, redis_err_bad_args, data);
        return;
    }
    if (unsupported(argv[0], argvlen ? argvlen[0] : strlen(argv[0]))) {
        fn(NULL, redis_err_unsupported, data);
        return;
    }
    req_t *r = req_get(c, REQ_COMMAND);
    if (r == NULL) {
        fn(NULL, redis_err_nomem, data);
        return;
    }
    r->fn = fn;
    r->data = data;
    if (send_req(c, r, argc, argv, argvlen) != 0) {
        req_put(c, r);
        fn(NULL, redis_err_not_connected, data);
    }
}

/* Copies EVALSHA sha numkeys + the caller's argv into r->buf (grown only when too small, kept
 * across uses) so that a NOSCRIPT retry can resend it. Returns 0 or -1. */
static int copy_eval_args(redis_conn_t *c, req_t *r, int numkeys, int argc, const char **argv,
                          const size_t *argvlen)
{
    size_t n = (size_t)argc + 3;
    size_t data = 0;
    for (int i = 0; i < argc; i++)
        data += argvlen ? argvlen[i] : strlen(argv[i]);
    size_t need = n * (sizeof(char *) + sizeof(size_t)) + data;
    if (need > r->cap) {
        char *nb = realloc(r->buf, need);
        if (nb == NULL)
            return -1;
        r->buf = nb;
        r->cap = need;
    }
    r->argc = (int)n;
    r->argv = (const char **)(void *)r->buf;
    r->argvlen = (size_t *)(void *)(r->buf + n * sizeof(char *));
    char *p = r->buf + n * (sizeof(char *) + sizeof(size_t));
    size_t nk = util_i64(r->numkeys, numkeys);
    r->argv[0] = "EVALSHA";
    r->argvlen[0] = 7;
    r->argv[1] = c->sha;
    r->argvlen[1] = 40;
    r->argv[2] = r->numkeys;
    r->argvlen[2] = nk;
    for (int i = 0; i < argc; i++) {
        size_t len = argvlen ? argvlen[i] : strlen(argv[i]);
        memcpy(p, argv[i], len);
        r->argv[i + 3] = p;
        r->argvlen[i + 3] = len;
        p += len;
    }
    return 0;
}

void redis_conn_eval(redis_conn_t *c, redis_reply_fn fn, void *data, int numkeys, int argc,
                     const char **argv, const size_t *argvlen)
{
    const char *why = cannot_send(c);
    if (why != NULL) {
        fn(NULL, why, data);
        return;
    }
    if (!c->sha_ok) {
        fn(NULL, redis_err_no_script, data);
        return;
    }
    if (numkeys < 0 || argc < numkeys || (argc > 0 && argv == NULL)) {
        fn(NULL, redis_err_bad_args, data);
        return;
    }
    req_t *r = req_get(c, REQ_EVAL);
    if (r == NULL || copy_eval_args(c, r, numkeys, argc, argv, argvlen) != 0) {
        if (r != NULL)
            req_put(c, r);
        fn(NULL, redis_err_nomem, data);
        return;
    }
    r->fn = fn;
    r->data = data;
    if (send_req(c, r, r->argc, r->argv, r->argvlen) != 0) {
        req_put(c, r);
        fn(NULL, redis_err_not_connected, data);
    }
}

/* Not connected: the source is parked (on_done comes once a connection took or refused it, or
 * at close), so a SIGHUP during an outage is not lost. */
void redis_conn_set_script(redis_conn_t *c, const char *script,
                           void (*on_done)(int ok, const char *err, void *arg), void *arg)
{
    if (c->closing) {
        on_done(0, redis_err_closing, arg);
        return;
    }
    char *copy = strdup(script);
    if (copy == NULL) {
        on_done(0, redis_err_nomem, arg);
        return;
    }
    uint64_t seq = ++c->last_seq;
    if (!c->connected || c->ac == NULL || !c->authed) {
        park(c, copy, seq, on_done, arg);
        return;
    }
    req_t *r = req_get(c, REQ_SET_SCRIPT);
    if (r == NULL) {
        free(copy);
        on_done(0, redis_err_nomem, arg);
        return;
    }
    const char *argv[] = {"SCRIPT", "LOAD", copy};
    const size_t len[] = {6, 4, strlen(copy)};
    if (send_req(c, r, 3, argv, len) != 0) {
        req_put(c, r);
        park(c, copy, seq, on_done, arg);
        return;
    }
    r->new_script = copy;
    r->script_seq = seq;
    r->on_done = on_done;
    r->arg = arg;
}

bool redis_conn_script_parked(const redis_conn_t *c)
{
    return c != NULL && c->parked != NULL;
}

void redis_conn_on_ready(redis_conn_t *c, void (*fn)(redis_conn_t *c, void *arg), void *arg)
{
    c->on_ready = fn;
    c->ready_arg = arg;
}

static void on_handle_closed(uv_handle_t *h)
{
    redis_conn_t *c = h->data;
    c->open_handles--;
    maybe_free_client(c);
}

void redis_conn_close(redis_conn_t *c)
{
    if (c == NULL || c->closing)
        return;
    c->closing = true;
    c->connected = false;
    c->sha_ok = false;
    if (c->parked != NULL) {
        free(c->parked);
        c->parked = NULL;
        c->parked_done(0, redis_err_closing, c->parked_arg);
    }
    redisAsyncContext *ac = c->ac;
    c->ac = NULL;
    /* Called from inside one of our hiredis callbacks, hiredis defers this free until that
     * callback returns, still within the same read event: before the timers' close callbacks
     * below can run, so the client outlives every request either way. */
    if (ac != NULL)
        redisAsyncFree(ac);
    c->reconnect_timer.data = c;
    c->tick_timer.data = c;
    c->flush.data = c;
    c->setup_timer.data = c;
    uv_close((uv_handle_t *)&c->reconnect_timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->tick_timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->flush, on_handle_closed);
    uv_close((uv_handle_t *)&c->setup_timer, on_handle_closed);
}

int redis_reply_str(const redisReply *r, size_t i, char *out, size_t cap)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements <= i)
        return -1;
    const redisReply *e = r->element[i];
    if (e->type == REDIS_REPLY_STRING || e->type == REDIS_REPLY_STATUS) {
        if (e->len >= cap)
            return -1;
        memcpy(out, e->str, e->len);
        out[e->len] = '\0';
        return 0;
    }
    if (e->type == REDIS_REPLY_INTEGER) {
        snprintf(out, cap, "%lld", e->integer);
        return 0;
    }
    return -1;
}

int64_t redis_reply_int(const redisReply *r, size_t i)
{
    char buf[32];
    int64_t v = -1;
    /* An integer as such (several per sale in a deduction's reply), with the text path's
     * answer: util_parse_i64 takes at most 19 characters, so 19-digit negatives give -1. */
    if (r->type == REDIS_REPLY_ARRAY && i < r->elements &&
        r->element[i]->type == REDIS_REPLY_INTEGER) {
        long long x = r->element[i]->integer;
        return x <= -1000000000000000000LL ? -1 : (int64_t)x;
    }
    if (redis_reply_str(r, i, buf, sizeof(buf)) == 0)
        util_parse_i64(buf, strlen(buf), INT64_MIN + 1, INT64_MAX, &v);
    return v;
}
