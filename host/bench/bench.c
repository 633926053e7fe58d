/* snatch-bench: the flash-sale load generator with a correctness oracle.
 *
 * HTTP/1.1 keep-alive load over -c connections spread on -t threads, each thread one libuv loop
 * owning its connections (no locks on the hot path; the only shared state is a few atomic
 * counters: the request budget of -n and the next new buyer id). Closed loop by default (each
 * answer triggers the next request on its connection); with --rate an open loop where a 1 ms
 * tick schedules requests at a constant rate and latency counts from the scheduled time, so a
 * stalled server is charged for the requests it kept waiting (no coordinated omission).
 *
 * The request is formatted once as a template around the buyer id; each connection owns one
 * buffer for its pipelined requests and sends a whole batch with one write. Reads land in one
 * buffer per thread and are parsed by http-parser in response mode; bodies are only kept when
 * needed (the "error" of non-2xx answers, the order of a 200 under --check).
 *
 * The main thread parses options, starts the load threads, prints progress, merges the
 * per-thread histograms, counters and oracle logs, and reports (text, and JSON with --json). */
#include <errno.h>
#include <getopt.h>
#include <http_parser.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "cli.h"
#include "hist.h"
#include "oracle.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define container_of(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))

#define READ_BUF (64 * 1024)
#define BODY_CAP 1024 /* enough for an order or an error body; longer ones are cut */
#define MAX_CODES 64  /* distinct error codes counted per thread */
#define CODE_LEN 48
#define SWEEP_MS 20
#define TICK_NS 200000 /* open-loop scheduling step: adds at most this to measured latency */
#define RECONNECT_BACKOFF_NS (100 * 1000000ull)

/* ---- configuration --------------------------------------------------------------------- */

typedef struct config {
    unsigned connections, threads, pipeline;
    uint64_t requests; /* -n; 0 when running for a duration */
    double duration_s; /* -d */
    uint64_t users;    /* 0: every request a new buyer */
    uint64_t user_offset;
    double rate; /* --rate; 0 = closed loop */
    const char *method;
    const char *body;
    char headers[8192]; /* extra -H lines, each ending in CRLF */
    size_t headers_len;
    bool user_header, no_user, quiet, check;
    unsigned src_lo, src_hi; /* --source; 0 = no binding */
    uint64_t timeout_ms;
    const char *json_path;
    long per_user_limit;
    const char *event_url, *db_path, *event;
    double wait_db_s;
    const char *url;
    struct sockaddr_in addr;
    /* The request around the buyer id: pre + <id> + post (pre ends in "u"). */
    char *pre, *post;
    size_t pre_len, post_len, max_req;
} config_t;

static config_t cfg = {
    .connections = 100,
    .threads = 2,
    .pipeline = 1,
    .method = "GET",
    .timeout_ms = 10000,
    .per_user_limit = 1,
};

/* ---- shared counters --------------------------------------------------------------------- */

static atomic_uint_fast64_t g_claimed;   /* requests taken from the -n budget */
static atomic_uint_fast64_t g_next_user; /* next new buyer id (--users 0) */
static atomic_uint_fast64_t g_connect_fail_streak;
static atomic_int g_stop; /* SIGINT or a hopeless run: stop now */
static atomic_int g_threads_done;
static atomic_int g_aborted;
static uint64_t g_start_ns;

/* ---- per-thread state -------------------------------------------------------------------- */

typedef struct code_count {
    char code[CODE_LEN];
    uint64_t n;
} code_count_t;

typedef struct stats {
    uint64_t sent, answered, retried, unanswered, unsent;
    uint64_t status[600];
    code_count_t codes[MAX_CODES];
    unsigned ncodes;
    uint64_t connect_errors, resets, closed, parse_errors, write_errors, timeouts;
    uint64_t last_answer_ns;
} stats_t;

typedef struct slot {
    uint64_t sched_ns; /* latency counts from here */
    uint64_t sent_ns;  /* timeouts count from here */
    uint64_t user;
    bool retry; /* already sent once (the server closed before answering it) */
} slot_t;

enum { C_IDLE, C_CONNECTING, C_OPEN, C_CLOSING };

struct worker;

typedef struct conn {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    http_parser parser;
    struct worker *w;
    unsigned gidx; /* global index: picks the source address */
    int state;
    bool writing, in_ready, close_after;
    bool write_failed; /* the peer went away: read what it still sent, then close */
    uint64_t connect_ns, reconnect_at;
    slot_t *slots; /* ring of pipeline entries: inflight (written) then pending */
    unsigned head, inflight, pending;
    char *wbuf;
    char *body; /* BODY_CAP bytes, allocated on first need */
    size_t body_len;
    bool keep_body;
    struct conn *next_ready;
} conn_t;

typedef struct worker {
    uv_loop_t loop;
    uv_timer_t sweep;
    uv_poll_t tick; /* on a timerfd: libuv timers only have millisecond steps */
    int tick_fd;
    uv_thread_t thread;
    unsigned id;
    bool loop_ok;
    conn_t *conns;
    unsigned nconns;
    stats_t st;
    hist_t *hist;
    oracle_t *oracle;
    uint64_t rng;
    uint64_t outstanding; /* requests in conn rings */
    bool stopping, shutting_down;
    uint64_t stop_ns, end_ns;
    /* open loop */
    double rate;
    uint64_t scheduled;
    uint64_t *backlog;
    size_t bl_head, bl_len, bl_cap;
    conn_t *ready;
    atomic_uint_fast64_t prog_sent, prog_answered;
    char rbuf[READ_BUF];
} worker_t;

static const http_parser_settings parser_settings;

/* ---- small helpers ----------------------------------------------------------------------- */

static uint64_t ns_now(void)
{
    return uv_hrtime();
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static size_t utoa(char *out, uint64_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

static slot_t *slot_at(conn_t *c, unsigned i)
{
    return &c->slots[(c->head + i) % cfg.pipeline];
}

/* Finds the "error" value of a JSON error body without a JSON library: this runs for every
 * sold-out answer, the hot path of a flash sale. Codes are plain identifiers. */
static void error_code(const char *b, size_t len, char *out)
{
    static const char key[] = "\"error\"";
    strcpy(out, "none");
    const char *p = memmem(b, len, key, sizeof(key) - 1);
    if (!p)
        return;
    const char *end = b + len;
    p += sizeof(key) - 1;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    if (p >= end || *p++ != ':')
        return;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
        p++;
    if (p >= end || *p++ != '"')
        return;
    size_t n = 0;
    while (p < end && *p != '"' && n < CODE_LEN - 1) {
        char ch = *p++;
        out[n++] = (ch >= 0x21 && ch < 0x7f && ch != '\\') ? ch : '_';
    }
    out[n] = '\0';
    if (n == 0)
        strcpy(out, "none");
}

static void count_code(stats_t *st, const char *code, uint64_t n)
{
    for (unsigned i = 0; i < st->ncodes; i++) {
        if (strcmp(st->codes[i].code, code) == 0) {
            st->codes[i].n += n;
            return;
        }
    }
    /* The last entry is kept for "other", so a flood of odd codes cannot grow the table. */
    if (st->ncodes == MAX_CODES - 1 && strcmp(code, "other") != 0) {
        count_code(st, "other", n);
        return;
    }
    snprintf(st->codes[st->ncodes].code, CODE_LEN, "%s", code);
    st->codes[st->ncodes++].n = n;
}

/* ---- claiming work ----------------------------------------------------------------------- */

/* Stops taking new work. At the end of a duration the open loop's backlog is dropped too (an
 * open loop stops on time, it does not catch up); at the end of -n it is still sent. */
static void set_stopping(worker_t *w, uint64_t now, bool drop_backlog)
{
    if (drop_backlog) {
        w->st.unsent += w->bl_len;
        w->bl_len = 0;
    }
    if (w->stopping)
        return;
    w->stopping = true;
    w->stop_ns = now;
}

static bool budget_take(worker_t *w, uint64_t now)
{
    if (w->stopping)
        return false;
    if (cfg.duration_s > 0 && now >= w->end_ns) {
        set_stopping(w, now, true);
        return false;
    }
    if (cfg.requests && atomic_fetch_add(&g_claimed, 1) >= cfg.requests) {
        set_stopping(w, now, false);
        return false;
    }
    return true;
}

static uint64_t next_user(worker_t *w)
{
    if (cfg.users == 0)
        return cfg.user_offset + atomic_fetch_add_explicit(&g_next_user, 1, memory_order_relaxed);
    return cfg.user_offset + xorshift(&w->rng) % cfg.users;
}

static void push_slot(conn_t *c, uint64_t sched)
{
    slot_t *s = slot_at(c, c->inflight + c->pending);
    s->sched_ns = sched;
    s->sent_ns = 0;
    s->user = next_user(c->w);
    s->retry = false;
    c->pending++;
    c->w->outstanding++;
}

static bool backlog_pop(worker_t *w, uint64_t *sched)
{
    if (w->bl_len == 0)
        return false;
    *sched = w->backlog[w->bl_head];
    w->bl_head = (w->bl_head + 1) % w->bl_cap;
    w->bl_len--;
    return true;
}

static int backlog_push(worker_t *w, uint64_t sched)
{
    if (w->bl_len == w->bl_cap) {
        size_t cap = w->bl_cap ? w->bl_cap * 2 : 4096;
        uint64_t *b = malloc(cap * sizeof(*b));
        if (!b)
            return -ENOMEM;
        for (size_t i = 0; i < w->bl_len; i++)
            b[i] = w->backlog[(w->bl_head + i) % w->bl_cap];
        free(w->backlog);
        w->backlog = b;
        w->bl_cap = cap;
        w->bl_head = 0;
    }
    w->backlog[(w->bl_head + w->bl_len) % w->bl_cap] = sched;
    w->bl_len++;
    return 0;
}

/* Gives the connection as many new requests as its pipeline has room for. */
static void fill(conn_t *c, uint64_t now)
{
    worker_t *w = c->w;
    if (c->state != C_OPEN || c->close_after)
        return;
    if (cfg.rate <= 0) {
        while (c->inflight + c->pending < cfg.pipeline && budget_take(w, now))
            push_slot(c, now);
        return;
    }
    uint64_t sched;
    while (c->inflight + c->pending < cfg.pipeline && backlog_pop(w, &sched))
        push_slot(c, sched);
    if (c->inflight + c->pending < cfg.pipeline && !c->in_ready) {
        c->in_ready = true;
        c->next_ready = w->ready;
        w->ready = c;
    }
}

/* ---- connections --------------------------------------------------------------------------- */

static void conn_connect(conn_t *c);
static void worker_shutdown(worker_t *w);

static void maybe_finish(worker_t *w)
{
    if ((w->stopping || atomic_load(&g_stop)) && w->outstanding == 0 && w->bl_len == 0)
        worker_shutdown(w);
}

static void on_close(uv_handle_t *h)
{
    conn_t *c = container_of(h, conn_t, tcp);
    worker_t *w = c->w;
    bool backoff = c->reconnect_at != 0;
    c->state = C_IDLE;
    if (w->shutting_down)
        return;
    if (backoff) {
        c->reconnect_at = ns_now() + RECONNECT_BACKOFF_NS;
        return;
    }
    if (w->stopping && c->pending == 0) {
        maybe_finish(w);
        return;
    }
    conn_connect(c);
}

/* Closes the connection; with backoff the sweep reconnects it later, else on_close does. */
static void conn_close(conn_t *c, bool backoff)
{
    if (c->state == C_CLOSING || c->state == C_IDLE)
        return;
    c->state = C_CLOSING;
    c->reconnect_at = backoff ? 1 : 0;
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

/* Written requests that will never be answered: counted, and forgotten. */
static void drop_inflight(conn_t *c)
{
    c->w->st.unanswered += c->inflight;
    c->w->outstanding -= c->inflight;
    c->head = (c->head + c->inflight) % cfg.pipeline;
    c->inflight = 0;
}

/* The server announced the close: requests after the last answer were not processed, so they
 * are sent again on the next connection. */
static void requeue_inflight(conn_t *c)
{
    for (unsigned i = 0; i < c->inflight; i++)
        slot_at(c, i)->retry = true;
    c->w->st.retried += c->inflight;
    c->pending += c->inflight;
    c->inflight = 0;
}

static void on_write(uv_write_t *req, int status);

/* A write fails when the server closed first, often right after answering with "Connection:
 * close" - answers still queued for reading. So the verdict waits for the read side: the
 * announced close requeues, EOF or reset without it counts (on_read), a silent peer times out. */
static void write_failed(conn_t *c)
{
    c->write_failed = true;
    if (c->inflight == 0)
        conn_close(c, false);
}

/* Formats every pending request into the connection's buffer and writes them at once. */
static void flush(conn_t *c)
{
    if (c->state != C_OPEN || c->writing || c->write_failed || c->pending == 0)
        return;
    uint64_t now = ns_now();
    size_t len = 0;
    for (unsigned i = 0; i < c->pending; i++) {
        slot_t *s = slot_at(c, c->inflight + i);
        memcpy(c->wbuf + len, cfg.pre, cfg.pre_len);
        len += cfg.pre_len;
        if (!cfg.no_user)
            len += utoa(c->wbuf + len, s->user);
        memcpy(c->wbuf + len, cfg.post, cfg.post_len);
        len += cfg.post_len;
        s->sent_ns = now;
        if (!s->retry)
            c->w->st.sent++;
    }
    c->inflight += c->pending;
    c->pending = 0;
    uv_buf_t b = uv_buf_init(c->wbuf, (unsigned)len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n == (int)len)
        return;
    if (n < 0 && n != UV_EAGAIN)
        goto fail;
    if (n > 0) {
        b.base += n;
        b.len -= (size_t)n;
    }
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write) < 0)
        goto fail;
    c->writing = true;
    return;
fail:
    write_failed(c);
}

static void on_write(uv_write_t *req, int status)
{
    conn_t *c = container_of(req, conn_t, wreq);
    c->writing = false;
    if (status < 0) {
        if (status != UV_ECANCELED && c->state == C_OPEN)
            write_failed(c);
        return;
    }
    flush(c);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    conn_t *c = container_of(h, conn_t, tcp);
    *buf = uv_buf_init(c->w->rbuf, READ_BUF);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = container_of(s, conn_t, tcp);
    worker_t *w = c->w;
    if (nread == 0)
        return;
    if (nread < 0) {
        /* EOF may end a response delimited by the close. */
        if (nread == UV_EOF)
            http_parser_execute(&c->parser, &parser_settings, NULL, 0);
        if (c->close_after) {
            requeue_inflight(c);
        } else if (c->inflight > 0) {
            if (c->write_failed)
                w->st.write_errors++;
            else if (nread == UV_EOF)
                w->st.closed++;
            else
                w->st.resets++;
            drop_inflight(c);
        }
        conn_close(c, false);
        goto done;
    }
    size_t used = http_parser_execute(&c->parser, &parser_settings, buf->base, (size_t)nread);
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (c->close_after) {
        requeue_inflight(c);
        conn_close(c, false);
        goto done;
    }
    if (e != HPE_OK || used != (size_t)nread) {
        w->st.parse_errors++;
        drop_inflight(c);
        conn_close(c, false);
        goto done;
    }
    fill(c, ns_now());
    flush(c);
done:
    atomic_store_explicit(&w->prog_answered, w->st.answered, memory_order_relaxed);
    atomic_store_explicit(&w->prog_sent, w->st.sent, memory_order_relaxed);
    maybe_finish(w);
}

static void on_connect(uv_connect_t *req, int status)
{
    conn_t *c = container_of(req, conn_t, creq);
    worker_t *w = c->w;
    if (status < 0) {
        if (status == UV_ECANCELED)
            return;
        w->st.connect_errors++;
        atomic_fetch_add(&g_connect_fail_streak, 1);
        conn_close(c, true);
        return;
    }
    atomic_store(&g_connect_fail_streak, 0);
    c->state = C_OPEN;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0) {
        w->st.connect_errors++;
        conn_close(c, true);
        return;
    }
    fill(c, ns_now());
    flush(c);
}

static int bind_source(conn_t *c)
{
    unsigned n = cfg.src_hi - cfg.src_lo + 1;
    unsigned last = cfg.src_lo + c->gidx % n;
    uv_os_fd_t fd;
    int one = 1;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl((127u << 24) | last);
    return uv_tcp_bind(&c->tcp, (const struct sockaddr *)&a, 0);
}

static void conn_connect(conn_t *c)
{
    worker_t *w = c->w;
    int r =
        cfg.src_lo ? uv_tcp_init_ex(&w->loop, &c->tcp, AF_INET) : uv_tcp_init(&w->loop, &c->tcp);
    if (r < 0) {
        w->st.connect_errors++;
        c->reconnect_at = ns_now() + RECONNECT_BACKOFF_NS;
        return;
    }
    c->state = C_CONNECTING;
    c->connect_ns = ns_now();
    c->reconnect_at = 0;
    c->writing = false;
    c->write_failed = false;
    c->close_after = false;
    http_parser_init(&c->parser, HTTP_RESPONSE);
    c->parser.data = c;
    uv_tcp_nodelay(&c->tcp, 1);
    if (cfg.src_lo && (r = bind_source(c)) < 0)
        goto fail;
    r = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&cfg.addr, on_connect);
    if (r < 0)
        goto fail;
    return;
fail:
    w->st.connect_errors++;
    atomic_fetch_add(&g_connect_fail_streak, 1);
    conn_close(c, true);
}

/* ---- response parsing -------------------------------------------------------------------- */

static int on_headers_complete(http_parser *p)
{
    conn_t *c = p->data;
    c->body_len = 0;
    unsigned st = p->status_code;
    c->keep_body = (st < 200 || st > 299) || (st == 200 && cfg.check);
    if (c->keep_body && !c->body && !(c->body = malloc(BODY_CAP)))
        c->keep_body = false;
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    if (!c->keep_body)
        return 0;
    size_t room = BODY_CAP - c->body_len;
    if (len > room)
        len = room;
    memcpy(c->body + c->body_len, at, len);
    c->body_len += len;
    return 0;
}

static int on_message_complete(http_parser *p)
{
    conn_t *c = p->data;
    worker_t *w = c->w;
    unsigned status = p->status_code;
    if (status < 200)
        return 0; /* interim answer: the real one follows */
    if (c->inflight == 0)
        return -1; /* an answer to nothing: a parse error for on_read */
    slot_t *s = slot_at(c, 0);
    c->head = (c->head + 1) % cfg.pipeline;
    c->inflight--;
    w->outstanding--;
    uint64_t now = ns_now();
    hist_record(w->hist, (now - s->sched_ns) / 1000);
    w->st.answered++;
    w->st.last_answer_ns = now;
    w->st.status[status < 600 ? status : 0]++;
    if (status < 200 || status > 299) {
        char code[CODE_LEN];
        error_code(c->keep_body ? c->body : "", c->keep_body ? c->body_len : 0, code);
        count_code(&w->st, code, 1);
    } else if (status == 200 && cfg.check) {
        oracle_add_body(w->oracle, c->body ? c->body : "", c->keep_body ? c->body_len : 0);
    }
    if (!http_should_keep_alive(p)) {
        c->close_after = true;
        http_parser_pause(p, 1);
    }
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- worker timers and lifetime ----------------------------------------------------------- */

static void on_timer_closed(uv_handle_t *h)
{
    (void)h;
}

static void worker_shutdown(worker_t *w)
{
    if (w->shutting_down)
        return;
    w->shutting_down = true;
    w->stopping = true;
    w->st.unanswered += w->outstanding;
    w->st.unsent += w->bl_len;
    w->bl_len = 0;
    uv_close((uv_handle_t *)&w->sweep, on_timer_closed);
    if (cfg.rate > 0)
        uv_close((uv_handle_t *)&w->tick, on_timer_closed);
    for (unsigned i = 0; i < w->nconns; i++) {
        conn_t *c = &w->conns[i];
        if (c->state != C_IDLE && !uv_is_closing((uv_handle_t *)&c->tcp))
            uv_close((uv_handle_t *)&c->tcp, on_close);
    }
}

static void sweep_conn(conn_t *c, uint64_t now, uint64_t tmo)
{
    worker_t *w = c->w;
    switch (c->state) {
    case C_OPEN:
        if (c->inflight > 0 && now - slot_at(c, 0)->sent_ns > tmo) {
            w->st.timeouts += c->inflight;
            drop_inflight(c);
            conn_close(c, false);
        }
        break;
    case C_CONNECTING:
        if (now - c->connect_ns > tmo) {
            w->st.connect_errors++;
            conn_close(c, true);
        }
        break;
    case C_IDLE:
        if (c->reconnect_at && now >= c->reconnect_at && (!w->stopping || c->pending > 0))
            conn_connect(c);
        break;
    default:
        break;
    }
}

static void on_sweep(uv_timer_t *t)
{
    worker_t *w = container_of(t, worker_t, sweep);
    uint64_t now = ns_now();
    uint64_t tmo = cfg.timeout_ms * 1000000ull;
    uint64_t streak_max = 3ull * cfg.connections + 10;
    if (atomic_load(&g_connect_fail_streak) > streak_max) {
        atomic_store(&g_aborted, 1);
        atomic_store(&g_stop, 1);
    }
    if (atomic_load(&g_stop)) {
        worker_shutdown(w);
        return;
    }
    if (cfg.duration_s > 0 && now >= w->end_ns)
        set_stopping(w, now, true);
    /* A drain that does not end (a server gone quiet) is cut after the request timeout. */
    if (w->stopping && now - w->stop_ns > tmo + 1000000000ull) {
        worker_shutdown(w);
        return;
    }
    for (unsigned i = 0; i < w->nconns; i++)
        sweep_conn(&w->conns[i], now, tmo);
    maybe_finish(w);
}

/* Open loop: schedules every request whose time has come, then hands them to free conns. */
static void on_tick(uv_poll_t *t, int status, int events)
{
    (void)status;
    (void)events;
    worker_t *w = container_of(t, worker_t, tick);
    uint64_t expirations;
    if (read(w->tick_fd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
        return;
    uint64_t now = ns_now();
    if (cfg.duration_s > 0 && now >= w->end_ns)
        set_stopping(w, now, true);
    if (!w->stopping) {
        /* Request k is due at start + k / rate: at time t, floor(t * rate) + 1 are due. */
        uint64_t due = (uint64_t)((double)(now - g_start_ns) * w->rate / 1e9) + 1;
        while (w->scheduled < due) {
            if (cfg.requests && atomic_fetch_add(&g_claimed, 1) >= cfg.requests) {
                set_stopping(w, now, false);
                break;
            }
            uint64_t sched = g_start_ns + (uint64_t)((double)w->scheduled * 1e9 / w->rate);
            if (backlog_push(w, sched) < 0)
                w->st.unsent++;
            w->scheduled++;
        }
    }
    while (w->bl_len > 0 && w->ready) {
        conn_t *c = w->ready;
        w->ready = c->next_ready;
        c->in_ready = false;
        fill(c, now);
        flush(c);
    }
    maybe_finish(w);
}

static void worker_main(void *arg)
{
    worker_t *w = arg;
    w->end_ns = g_start_ns + (uint64_t)(cfg.duration_s * 1e9);
    uv_timer_init(&w->loop, &w->sweep);
    uv_timer_start(&w->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
    if (cfg.rate > 0) {
        struct itimerspec its = {{0, TICK_NS}, {0, TICK_NS}};
        timerfd_settime(w->tick_fd, 0, &its, NULL);
        uv_poll_init(&w->loop, &w->tick, w->tick_fd);
        uv_poll_start(&w->tick, UV_READABLE, on_tick);
    }
    for (unsigned i = 0; i < w->nconns; i++)
        conn_connect(&w->conns[i]);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    atomic_fetch_add(&g_threads_done, 1);
}

static int worker_init(worker_t *w, unsigned id, unsigned first, unsigned n)
{
    w->id = id;
    w->nconns = n;
    w->rng = 0x9e3779b97f4a7c15ull ^ ((uint64_t)id * 0x100000001b3ull) ^ (uint64_t)time(NULL);
    if (!w->rng)
        w->rng = 1;
    w->rate = cfg.rate / cfg.threads;
    w->tick_fd = -1;
    if (cfg.rate > 0 && (w->tick_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK)) < 0)
        return -errno;
    if (uv_loop_init(&w->loop) < 0)
        return -ENOMEM;
    w->loop_ok = true;
    w->hist = hist_new();
    w->oracle = oracle_new();
    w->conns = calloc(n, sizeof(conn_t));
    if (!w->hist || !w->oracle || !w->conns)
        return -ENOMEM;
    for (unsigned i = 0; i < n; i++) {
        conn_t *c = &w->conns[i];
        c->w = w;
        c->gidx = first + i;
        c->slots = calloc(cfg.pipeline, sizeof(slot_t));
        c->wbuf = malloc(cfg.pipeline * cfg.max_req);
        if (!c->slots || !c->wbuf)
            return -ENOMEM;
    }
    return 0;
}

static void worker_free(worker_t *w)
{
    for (unsigned i = 0; w->conns && i < w->nconns; i++) {
        free(w->conns[i].slots);
        free(w->conns[i].wbuf);
        free(w->conns[i].body);
    }
    free(w->conns);
    free(w->backlog);
    hist_free(w->hist);
    oracle_free(w->oracle);
    if (w->loop_ok)
        uv_loop_close(&w->loop);
    if (w->tick_fd >= 0)
        close(w->tick_fd);
}

/* ---- URLs and the request template ------------------------------------------------------- */

typedef struct url {
    char host[256];
    char port[8];
    char path[4096]; /* path with query, "/" at least */
    bool has_query;
} url_t;

static int url_parse(const char *s, url_t *u)
{
    struct http_parser_url pu;
    http_parser_url_init(&pu);
    if (strncmp(s, "http://", 7) != 0 || http_parser_parse_url(s, strlen(s), 0, &pu) != 0)
        return -EINVAL;
    if (!(pu.field_set & (1 << UF_HOST)) || pu.field_data[UF_HOST].len >= sizeof(u->host))
        return -EINVAL;
    memcpy(u->host, s + pu.field_data[UF_HOST].off, pu.field_data[UF_HOST].len);
    u->host[pu.field_data[UF_HOST].len] = '\0';
    snprintf(u->port, sizeof(u->port), "%u", (pu.field_set & (1 << UF_PORT)) ? pu.port : 80u);
    const char *path = "/";
    size_t plen = 1;
    u->has_query = false;
    if (pu.field_set & (1 << UF_PATH)) {
        path = s + pu.field_data[UF_PATH].off;
        plen = pu.field_data[UF_PATH].len;
        /* The query stays in the path: the buyer is appended after it. */
        if (pu.field_set & (1 << UF_QUERY)) {
            u->has_query = true;
            plen = (size_t)(pu.field_data[UF_QUERY].off + pu.field_data[UF_QUERY].len) -
                   pu.field_data[UF_PATH].off;
        }
    }
    if (plen >= sizeof(u->path))
        return -EINVAL;
    memcpy(u->path, path, plen);
    u->path[plen] = '\0';
    return 0;
}

static int resolve(const url_t *u, struct sockaddr_in *out)
{
    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo(u->host, u->port, &hints, &res) != 0 || !res)
        return -EINVAL;
    memcpy(out, res->ai_addr, sizeof(*out));
    freeaddrinfo(res);
    return 0;
}

/* Builds pre and post: everything before and after the buyer id. */
static int build_template(const url_t *u)
{
    size_t body_len = cfg.body ? strlen(cfg.body) : 0;
    bool len_hdr = cfg.body || strcmp(cfg.method, "POST") == 0 || strcmp(cfg.method, "PUT") == 0;
    size_t cap = strlen(u->path) + strlen(u->host) + cfg.headers_len + body_len + 512;
    char *pre = malloc(cap), *post = malloc(cap);
    if (!pre || !post)
        goto fail;
    char clen[64] = "";
    if (len_hdr)
        snprintf(clen, sizeof(clen), "Content-Length: %zu\r\n", body_len);
    const char *hostport = strcmp(u->port, "80") == 0 ? "" : ":";
    const char *portstr = strcmp(u->port, "80") == 0 ? "" : u->port;
    int n;
    if (cfg.no_user) {
        n = snprintf(pre, cap, "%s %s HTTP/1.1\r\nHost: %s%s%s\r\n%.*s%s\r\n%s", cfg.method,
                     u->path, u->host, hostport, portstr, (int)cfg.headers_len, cfg.headers, clen,
                     cfg.body ? cfg.body : "");
        post[0] = '\0';
    } else if (cfg.user_header) {
        n = snprintf(pre, cap, "%s %s HTTP/1.1\r\nHost: %s%s%s\r\nX-User-Id: u", cfg.method,
                     u->path, u->host, hostport, portstr);
        snprintf(post, cap, "\r\n%.*s%s\r\n%s", (int)cfg.headers_len, cfg.headers, clen,
                 cfg.body ? cfg.body : "");
    } else {
        n = snprintf(pre, cap, "%s %s%suser=u", cfg.method, u->path, u->has_query ? "&" : "?");
        snprintf(post, cap, " HTTP/1.1\r\nHost: %s%s%s\r\n%.*s%s\r\n%s", u->host, hostport, portstr,
                 (int)cfg.headers_len, cfg.headers, clen, cfg.body ? cfg.body : "");
    }
    if (n < 0)
        goto fail;
    cfg.pre = pre;
    cfg.post = post;
    cfg.pre_len = strlen(pre);
    cfg.post_len = strlen(post);
    cfg.max_req = cfg.pre_len + cfg.post_len + 24;
    return 0;
fail:
    free(pre);
    free(post);
    return -ENOMEM;
}

/* ---- the event's counters (blocking; main thread only) ------------------------------------ */

typedef struct getbuf {
    char *data;
    size_t len, cap;
    bool done;
} getbuf_t;

static int get_on_body(http_parser *p, const char *at, size_t len)
{
    getbuf_t *g = p->data;
    if (g->len + len + 1 > g->cap) {
        size_t cap = (g->len + len + 1) * 2;
        char *d = realloc(g->data, cap);
        if (!d)
            return -1;
        g->data = d;
        g->cap = cap;
    }
    memcpy(g->data + g->len, at, len);
    g->len += len;
    g->data[g->len] = '\0';
    return 0;
}

static int get_on_complete(http_parser *p)
{
    ((getbuf_t *)p->data)->done = true;
    http_parser_pause(p, 1);
    return 0;
}

/* GETs url and parses its body as JSON. Returns a new reference or NULL. */
static json_t *http_get_json(const char *url)
{
    url_t u;
    struct sockaddr_in a;
    if (url_parse(url, &u) < 0 || resolve(&u, &a) < 0)
        return NULL;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return NULL;
    json_t *j = NULL;
    getbuf_t g = {0};
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
        goto out;
    char req[4600];
    int n =
        snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n",
                 u.path, u.host, u.port);
    if (n < 0 || (size_t)n >= sizeof(req) || send(fd, req, (size_t)n, MSG_NOSIGNAL) != n)
        goto out;
    http_parser p;
    http_parser_init(&p, HTTP_RESPONSE);
    p.data = &g;
    http_parser_settings s = {.on_body = get_on_body, .on_message_complete = get_on_complete};
    char buf[8192];
    for (int i = 0; i < 10000 && !g.done; i++) {
        ssize_t r = recv(fd, buf, sizeof(buf), 0);
        if (r < 0)
            goto out;
        http_parser_execute(&p, &s, buf, (size_t)r);
        if (r == 0 || (HTTP_PARSER_ERRNO(&p) != HPE_OK && HTTP_PARSER_ERRNO(&p) != HPE_PAUSED))
            break;
    }
    if (g.done && p.status_code == 200 && g.data)
        j = json_loadb(g.data, g.len, 0, NULL);
out:
    free(g.data);
    close(fd);
    return j;
}

static int event_counters(long long *stock, long long *sold)
{
    json_t *j = http_get_json(cfg.event_url);
    json_t *st = json_object_get(j, "stock"), *so = json_object_get(j, "sold");
    int rc = -1;
    if (json_is_integer(st) && json_is_integer(so)) {
        *stock = json_integer_value(st);
        *sold = json_integer_value(so);
        rc = 0;
    }
    json_decref(j);
    return rc;
}

/* ---- options --------------------------------------------------------------------------------- */

static void usage(FILE *out)
{
    fprintf(
        out,
        "usage: snatch-bench [options] URL\n"
        "HTTP/1.1 keep-alive load generator for flash sales, with a correctness oracle.\n"
        "\n"
        "Load:\n"
        "  -c, --connections N   connections (default 100)\n"
        "  -n, --requests N      total requests (one of -n / -d; default -d 10)\n"
        "  -d, --duration S      run for S seconds\n"
        "  -t, --threads N       load threads, one event loop each (default 2)\n"
        "      --pipeline K      requests in flight per connection (default 1)\n"
        "      --rate R          open loop: R requests/s in total, latency measured from the\n"
        "                        scheduled send time (no coordinated omission)\n"
        "      --timeout MS      per request and per connect (default 10000)\n"
        "      --source A-B      bind connections to 127.0.0.A..127.0.0.B (beyond 64k\n"
        "                        connections per destination)\n"
        "Request:\n"
        "  -m, --method M        GET (default), POST for a snatch\n"
        "  -H, --header 'N: v'   extra header (repeatable)\n"
        "      --body STRING     request body (Content-Length is set)\n"
        "      --users N         buyers: 0 (default) = every request a new buyer u<k>, k from a\n"
        "                        global counter; N > 0 = random among N buyers (repeats: retries,\n"
        "                        bots)\n"
        "      --user-offset K   first buyer number (default 0)\n"
        "      --user-header     send the buyer as X-User-Id instead of ?user= / &user=\n"
        "      --no-user         send the URL as it is, no buyer at all\n"
        "Oracle:\n"
        "      --check           check every 200's order: unique ids, per-buyer limit\n"
        "      --per-user-limit N  units a buyer may hold (default 1)\n"
        "      --event-url URL   GET before and after: sold <= stock, sold during the run equals\n"
        "                        the 200s\n"
        "      --db PATH         subscriber's SQLite file: each 200 is a row, rows <= stock\n"
        "      --wait-db S       poll the database up to S seconds for the rows (default 0)\n"
        "      --event NAME      event of the rows (default: the one named by the orders)\n"
        "Output:\n"
        "      --json FILE       all figures as JSON (requests, status, errors, conn_errors,\n"
        "                        duration_s, rps, latency_us{p50,p90,p99,p999,max}, oracle)\n"
        "      --quiet           no progress line, only the summary\n"
        "      --version         print the version and exit\n"
        "  -h, --help            this text\n"
        "\n"
        "A progress line goes to stderr once a second when stderr is a terminal.\n"
        "Exit status: 0 ok; 1 an oracle check failed or nothing was answered; 2 usage or setup\n"
        "error. Oracle lines read \"oracle: ok <what>\" or \"oracle: FAIL <what>: <count>\".\n");
}

enum {
    O_VERSION = 255,
    O_USERS = 256,
    O_OFFSET,
    O_PIPELINE,
    O_RATE,
    O_BODY,
    O_USER_HEADER,
    O_NO_USER,
    O_SOURCE,
    O_TIMEOUT,
    O_JSON,
    O_QUIET,
    O_CHECK,
    O_LIMIT,
    O_EVENT_URL,
    O_DB,
    O_WAIT_DB,
    O_EVENT,
};

static const struct option long_opts[] = {
    {"connections", required_argument, NULL, 'c'},
    {"requests", required_argument, NULL, 'n'},
    {"duration", required_argument, NULL, 'd'},
    {"threads", required_argument, NULL, 't'},
    {"method", required_argument, NULL, 'm'},
    {"header", required_argument, NULL, 'H'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, O_VERSION},
    {"users", required_argument, NULL, O_USERS},
    {"user-offset", required_argument, NULL, O_OFFSET},
    {"pipeline", required_argument, NULL, O_PIPELINE},
    {"rate", required_argument, NULL, O_RATE},
    {"body", required_argument, NULL, O_BODY},
    {"user-header", no_argument, NULL, O_USER_HEADER},
    {"no-user", no_argument, NULL, O_NO_USER},
    {"source", required_argument, NULL, O_SOURCE},
    {"timeout", required_argument, NULL, O_TIMEOUT},
    {"json", required_argument, NULL, O_JSON},
    {"quiet", no_argument, NULL, O_QUIET},
    {"check", no_argument, NULL, O_CHECK},
    {"per-user-limit", required_argument, NULL, O_LIMIT},
    {"event-url", required_argument, NULL, O_EVENT_URL},
    {"db", required_argument, NULL, O_DB},
    {"wait-db", required_argument, NULL, O_WAIT_DB},
    {"event", required_argument, NULL, O_EVENT},
    {NULL, 0, NULL, 0},
};

static int num(const char *s, const char *what, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "snatch-bench: bad %s: %s\n", what, s);
        return -1;
    }
    *out = v;
    return 0;
}

static int add_header(const char *h)
{
    size_t len = strlen(h);
    if (!strchr(h, ':') || strpbrk(h, "\r\n") || cfg.headers_len + len + 3 > sizeof(cfg.headers)) {
        fprintf(stderr, "snatch-bench: bad header: %s\n", h);
        return -1;
    }
    memcpy(cfg.headers + cfg.headers_len, h, len);
    memcpy(cfg.headers + cfg.headers_len + len, "\r\n", 2);
    cfg.headers_len += len + 2;
    return 0;
}

/* Returns 0, 1 after --help or --version, -1 on a usage error. */
static int parse_args(int argc, char **argv)
{
    int o;
    double v;
    bool have_n = false, have_d = false;
    cli_init();
    while ((o = getopt_long(argc, argv, CLI_OPTSTRING "c:n:d:t:m:H:h", long_opts, NULL)) != -1) {
        int rc = 0;
        switch (o) {
        case 'c':
            rc = num(optarg, "-c", 1, 10000000, &v);
            cfg.connections = (unsigned)v;
            break;
        case 'n':
            rc = num(optarg, "-n", 1, 1e15, &v);
            cfg.requests = (uint64_t)v;
            have_n = true;
            break;
        case 'd':
            rc = num(optarg, "-d", 0.001, 1e7, &v);
            cfg.duration_s = v;
            have_d = true;
            break;
        case 't':
            rc = num(optarg, "-t", 1, 1024, &v);
            cfg.threads = (unsigned)v;
            break;
        case 'm':
            cfg.method = optarg;
            break;
        case 'H':
            rc = add_header(optarg);
            break;
        case 'h':
            usage(stdout);
            return 1;
        case O_VERSION:
            cli_print_version("snatch-bench");
            return 1;
        case O_USERS:
            rc = num(optarg, "--users", 0, 1e15, &v);
            cfg.users = (uint64_t)v;
            break;
        case O_OFFSET:
            rc = num(optarg, "--user-offset", 0, 1e18, &v);
            cfg.user_offset = (uint64_t)v;
            break;
        case O_PIPELINE:
            rc = num(optarg, "--pipeline", 1, 4096, &v);
            cfg.pipeline = (unsigned)v;
            break;
        case O_RATE:
            rc = num(optarg, "--rate", 0.001, 1e9, &v);
            cfg.rate = v;
            break;
        case O_BODY:
            cfg.body = optarg;
            break;
        case O_USER_HEADER:
            cfg.user_header = true;
            break;
        case O_NO_USER:
            cfg.no_user = true;
            break;
        case O_SOURCE: {
            unsigned a, b;
            if (sscanf(optarg, "%u-%u", &a, &b) != 2 || a < 1 || b > 254 || a > b) {
                fprintf(stderr, "snatch-bench: bad --source (want A-B in 1..254): %s\n", optarg);
                rc = -1;
            }
            cfg.src_lo = a;
            cfg.src_hi = b;
            break;
        }
        case O_TIMEOUT:
            rc = num(optarg, "--timeout", 1, 1e9, &v);
            cfg.timeout_ms = (uint64_t)v;
            break;
        case O_JSON:
            cfg.json_path = optarg;
            break;
        case O_QUIET:
            cfg.quiet = true;
            break;
        case O_CHECK:
            cfg.check = true;
            break;
        case O_LIMIT:
            rc = num(optarg, "--per-user-limit", 1, 1e9, &v);
            cfg.per_user_limit = (long)v;
            break;
        case O_EVENT_URL:
            cfg.event_url = optarg;
            cfg.check = true;
            break;
        case O_DB:
            cfg.db_path = optarg;
            cfg.check = true;
            break;
        case O_WAIT_DB:
            rc = num(optarg, "--wait-db", 0, 86400, &v);
            cfg.wait_db_s = v;
            break;
        case O_EVENT:
            cfg.event = optarg;
            break;
        default:
            cli_bad_option("snatch-bench", o, argv);
            return -1;
        }
        if (rc < 0)
            return -1;
    }
    if (optind != argc - 1) {
        if (optind == argc)
            cli_usage_error("snatch-bench", "missing URL");
        else
            cli_usage_error("snatch-bench", "one URL expected, got %d", argc - optind);
        return -1;
    }
    if (have_n && have_d) {
        fprintf(stderr, "snatch-bench: give -n or -d, not both\n");
        return -1;
    }
    if (!have_n && !have_d)
        cfg.duration_s = 10;
    if (cfg.threads > cfg.connections)
        cfg.threads = cfg.connections;
    cfg.url = argv[optind];
    return 0;
}

/* ---- report -------------------------------------------------------------------------------- */

typedef struct totals {
    stats_t st;
    hist_t *hist;
    double duration_s, rps;
    uint64_t conn_errors;
} totals_t;

static void merge_stats(stats_t *dst, const stats_t *src)
{
    dst->sent += src->sent;
    dst->answered += src->answered;
    dst->retried += src->retried;
    dst->unanswered += src->unanswered;
    dst->unsent += src->unsent;
    for (unsigned i = 0; i < 600; i++)
        dst->status[i] += src->status[i];
    for (unsigned i = 0; i < src->ncodes; i++)
        count_code(dst, src->codes[i].code, src->codes[i].n);
    dst->connect_errors += src->connect_errors;
    dst->resets += src->resets;
    dst->closed += src->closed;
    dst->parse_errors += src->parse_errors;
    dst->write_errors += src->write_errors;
    dst->timeouts += src->timeouts;
    if (src->last_answer_ns > dst->last_answer_ns)
        dst->last_answer_ns = src->last_answer_ns;
}

static void print_report(const totals_t *t)
{
    const stats_t *st = &t->st;
    printf("snatch-bench %s: %u connections, %u threads, pipeline %u%s\n", cfg.url, cfg.connections,
           cfg.threads, cfg.pipeline, cfg.rate > 0 ? ", open loop" : "");
    printf("requests: %llu sent, %llu answered in %.3f s: %.1f answers/s\n",
           (unsigned long long)st->sent, (unsigned long long)st->answered, t->duration_s, t->rps);
    for (unsigned i = 0; i < 600; i++)
        if (st->status[i])
            printf("status %u: %llu\n", i, (unsigned long long)st->status[i]);
    for (unsigned i = 0; i < st->ncodes; i++)
        printf("error %s: %llu\n", st->codes[i].code, (unsigned long long)st->codes[i].n);
    printf("connection errors: %llu (connect %llu, reset %llu, closed %llu, parse %llu, "
           "write %llu); timeouts %llu; unanswered %llu; resent %llu; unsent %llu\n",
           (unsigned long long)t->conn_errors, (unsigned long long)st->connect_errors,
           (unsigned long long)st->resets, (unsigned long long)st->closed,
           (unsigned long long)st->parse_errors, (unsigned long long)st->write_errors,
           (unsigned long long)st->timeouts, (unsigned long long)st->unanswered,
           (unsigned long long)st->retried, (unsigned long long)st->unsent);
    const hist_t *h = t->hist;
    printf("latency us: p50 %llu, p90 %llu, p99 %llu, p99.9 %llu, max %llu (mean %.0f)\n",
           (unsigned long long)hist_percentile(h, 50), (unsigned long long)hist_percentile(h, 90),
           (unsigned long long)hist_percentile(h, 99), (unsigned long long)hist_percentile(h, 99.9),
           (unsigned long long)hist_max(h), hist_mean(h));
    if (atomic_load(&g_aborted))
        printf("aborted: the server could not be reached\n");
}

static json_t *report_json(const totals_t *t, json_t *oracle)
{
    const stats_t *st = &t->st;
    const hist_t *h = t->hist;
    json_t *status = json_object(), *errors = json_object();
    char key[16];
    for (unsigned i = 0; i < 600; i++) {
        if (!st->status[i])
            continue;
        snprintf(key, sizeof(key), "%u", i);
        json_object_set_new(status, key, json_integer((json_int_t)st->status[i]));
    }
    for (unsigned i = 0; i < st->ncodes; i++)
        json_object_set_new(errors, st->codes[i].code, json_integer((json_int_t)st->codes[i].n));
    json_t *lat =
        json_pack("{sI sI sI sI sI sI sf}", "p50", (json_int_t)hist_percentile(h, 50), "p90",
                  (json_int_t)hist_percentile(h, 90), "p99", (json_int_t)hist_percentile(h, 99),
                  "p999", (json_int_t)hist_percentile(h, 99.9), "max", (json_int_t)hist_max(h),
                  "min", (json_int_t)hist_min(h), "mean", hist_mean(h));
    json_t *j = json_pack(
        "{ss sI sI sI so so sI sI sI sI sI sI sI sI sI sI sf sf so sI sI sI sf sb}", "url", cfg.url,
        "requests", (json_int_t)st->sent, "answers", (json_int_t)st->answered, "resent",
        (json_int_t)st->retried, "status", status, "errors", errors, "conn_errors",
        (json_int_t)t->conn_errors, "connect_errors", (json_int_t)st->connect_errors, "resets",
        (json_int_t)st->resets, "closed", (json_int_t)st->closed, "parse_errors",
        (json_int_t)st->parse_errors, "write_errors", (json_int_t)st->write_errors, "timeouts",
        (json_int_t)st->timeouts, "unanswered", (json_int_t)st->unanswered, "unsent",
        (json_int_t)st->unsent, "users", (json_int_t)cfg.users, "duration_s", t->duration_s, "rps",
        t->rps, "latency_us", lat, "connections", (json_int_t)cfg.connections, "threads",
        (json_int_t)cfg.threads, "pipeline", (json_int_t)cfg.pipeline, "rate", cfg.rate, "aborted",
        atomic_load(&g_aborted) != 0);
    if (j && oracle)
        json_object_set_new(j, "oracle", oracle);
    else
        json_decref(oracle);
    return j;
}

/* ---- main ---------------------------------------------------------------------------------- */

static void on_sigint(int sig)
{
    (void)sig;
    atomic_store(&g_stop, 1);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void progress(worker_t *ws, uint64_t *last_answered, double elapsed)
{
    uint64_t sent = 0, ans = 0;
    for (unsigned i = 0; i < cfg.threads; i++) {
        sent += atomic_load_explicit(&ws[i].prog_sent, memory_order_relaxed);
        ans += atomic_load_explicit(&ws[i].prog_answered, memory_order_relaxed);
    }
    fprintf(stderr, "\r[%5.0fs] sent %llu answered %llu  %llu/s      ", elapsed,
            (unsigned long long)sent, (unsigned long long)ans,
            (unsigned long long)(ans - *last_answered));
    *last_answered = ans;
}

static int run_oracle(totals_t *t, worker_t *ws, long long stock, long long sold_before,
                      bool have_before, json_t **oj)
{
    oracle_t *all = oracle_new();
    if (!all)
        return -1;
    for (unsigned i = 0; i < cfg.threads; i++)
        if (oracle_merge(all, ws[i].oracle) < 0) {
            oracle_free(all);
            return -1;
        }
    oracle_opts_t o = {
        .per_user_limit = cfg.per_user_limit,
        .unanswered = (long long)t->st.unanswered,
        .db_path = cfg.db_path,
        .event = cfg.event,
        .wait_db_s = cfg.wait_db_s,
    };
    int extra_fail = 0;
    if (cfg.event_url) {
        long long sold_after;
        if (have_before && event_counters(&stock, &sold_after) == 0) {
            o.have_event = 1;
            o.stock = stock;
            o.sold_before = sold_before;
            o.sold_after = sold_after;
        } else {
            extra_fail = 1;
        }
    }
    oracle_report_t r;
    oracle_check(all, &o, &r);
    oracle_print(&r, stdout);
    if (extra_fail)
        printf("oracle: FAIL event counters readable: 1\n");
    *oj = oracle_report_json(&r);
    oracle_free(all);
    return r.failures + extra_fail;
}

int main(int argc, char **argv)
{
    int rc = parse_args(argc, argv);
    if (rc)
        return rc > 0 ? 0 : 2;
    url_t u;
    if (url_parse(cfg.url, &u) < 0 || resolve(&u, &cfg.addr) < 0) {
        fprintf(stderr, "snatch-bench: cannot use URL %s (want http://host[:port]/path)\n",
                cfg.url);
        return 2;
    }
    if (build_template(&u) < 0)
        return 2;
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_sigint);
    raise_nofile();

    long long stock = 0, sold_before = 0;
    bool have_before = cfg.event_url && event_counters(&stock, &sold_before) == 0;
    if (cfg.event_url && !have_before)
        fprintf(stderr, "snatch-bench: cannot read the event at %s\n", cfg.event_url);

    int status = 2;
    totals_t t = {0};
    json_t *oj = NULL;
    worker_t *ws = calloc(cfg.threads, sizeof(worker_t));
    t.hist = hist_new();
    if (!ws || !t.hist)
        goto out;
    unsigned first = 0;
    for (unsigned i = 0; i < cfg.threads; i++) {
        unsigned n = cfg.connections / cfg.threads + (i < cfg.connections % cfg.threads);
        if (worker_init(&ws[i], i, first, n) < 0) {
            fprintf(stderr, "snatch-bench: out of memory\n");
            goto out;
        }
        first += n;
    }
    g_start_ns = ns_now();
    unsigned started = 0;
    for (; started < cfg.threads; started++)
        if (uv_thread_create(&ws[started].thread, worker_main, &ws[started]) != 0)
            break;
    if (started < cfg.threads)
        atomic_store(&g_stop, 1);
    bool tty = !cfg.quiet && isatty(2);
    uint64_t last_answered = 0, next_progress = g_start_ns + 1000000000ull;
    while (atomic_load(&g_threads_done) < (int)started) {
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
        if (tty && ns_now() >= next_progress) {
            progress(ws, &last_answered, (double)(ns_now() - g_start_ns) / 1e9);
            next_progress += 1000000000ull;
        }
    }
    if (tty)
        fputc('\n', stderr);
    for (unsigned i = 0; i < started; i++)
        uv_thread_join(&ws[i].thread);
    if (started < cfg.threads)
        goto out;

    for (unsigned i = 0; i < cfg.threads; i++) {
        merge_stats(&t.st, &ws[i].st);
        hist_merge(t.hist, ws[i].hist);
    }
    uint64_t end = t.st.last_answer_ns ? t.st.last_answer_ns : ns_now();
    t.duration_s = (double)(end - g_start_ns) / 1e9;
    t.rps = t.duration_s > 0 ? (double)t.st.answered / t.duration_s : 0;
    t.conn_errors =
        t.st.connect_errors + t.st.resets + t.st.closed + t.st.parse_errors + t.st.write_errors;
    print_report(&t);
    int failures = 0;
    if (cfg.check)
        failures = run_oracle(&t, ws, stock, sold_before, have_before, &oj);
    status = failures != 0 || t.st.answered == 0 ? 1 : 0;
    if (cfg.json_path) {
        json_t *j = report_json(&t, oj);
        oj = NULL;
        if (!j || json_dump_file(j, cfg.json_path, JSON_INDENT(2) | JSON_SORT_KEYS) < 0) {
            fprintf(stderr, "snatch-bench: cannot write %s\n", cfg.json_path);
            status = 2;
        }
        json_decref(j);
    }
out:
    json_decref(oj);
    for (unsigned i = 0; ws && i < cfg.threads; i++)
        worker_free(&ws[i]);
    free(ws);
    hist_free(t.hist);
    free(cfg.pre);
    free(cfg.post);
    return status;
}
