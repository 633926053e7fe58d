/* HTTP/1.1 server for one libuv loop: the host's hot path. Every function here runs on the thread
 * of the loop the server was started on; several loops listen on the same port (SO_REUSEPORT)
 * and the kernel spreads connections between them.
 *
 * Input is parsed straight out of one 64 KiB read buffer shared by all connections of the server
 * (reads are processed synchronously, so it is never in use twice). http-parser is incremental, so
 * nothing is kept between reads except the fields a request needs, which are appended to that
 * request's own storage. Only when a connection pauses (too many unanswered requests, or the
 * client does not read its answers) are the unparsed bytes of the buffer stashed.
 *
 * Each connection keeps a FIFO of dispatched requests. Answers arrive in any order; the head's
 * answer (and every answered one after it) is appended to the connection's output buffer, later
 * ones wait in their request. Output is flushed once per read (all answers produced while parsing
 * one read go out in one write) or, for answers given later (after a Redis reply), from an idle
 * handle at the next loop turn, which batches the answers of one poll phase.
 *
 * Timeouts use one sweep timer per server and three deadline-sorted lists (idle, request
 * reception, lingering close): a connection's list position is refreshed in O(1), the sweep pops
 * only expired entries, and no connection carries a timer handle of its own. */
#include "http.h"

#include <errno.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "util.h"

#define READ_BUF_SIZE (64 * 1024)
#define LISTEN_BACKLOG 4096
/* Pause reading while this much written output is still queued: a client that pipelines without
 * reading its answers must not make us buffer without bound. */
#define WRITE_QUEUE_MAX (256 * 1024)
/* Answers built while parsing one read before parsing pauses and the loop serves others: cheap
 * pipelined requests (GET /metrics) must neither buffer without bound nor hold the thread. */
#define OUT_SLICE_MAX (64 * 1024)
#define CLIENT_BUCKETS 4096
/* How long a closing connection keeps discarding input after our FIN, so that unread request
 * bytes do not make the kernel reset the connection and destroy the last answer in flight. */
#define LINGER_MS 2000
/* Bytes the request line costs beyond its URL (method, spaces, version, CRLF), and each header
 * beyond its name and value (": " and CRLF): the head size is counted from the parser callbacks. */
#define REQ_LINE_OVERHEAD 16
#define HEADER_OVERHEAD 4
#define HNAME_MAX 24
#define REQ_INLINE 200
/* Request records and output buffers kept per server for reuse: a request costs no malloc in
 * steady state (glibc's per-thread cache holds 7 chunks per size, fewer than the requests one
 * Redis round trip answers). Bounded, so a burst leaves no lasting memory behind. */
#define REQ_POOL_MAX 1024
#define OUT_POOL_MAX 256
#define OUT_POOL_CAP_MAX 4096

typedef struct conn conn_t;

enum field {
    FIELD_NONE,
    FIELD_URL,
    FIELD_UID,
    FIELD_AUTH,
    FIELD_TE,
    FIELD_BODY,
    FIELD_OTHER, /* a header kept only for http_header() (the policy's req.header) */
    FIELD_XFF,
    FIELD_IDEM
};
/* Each header is kept in the request's storage as a record: u32 name length, u32 value length,
 * the name in lower case, the value (OWS trimmed), NUL. The records of one head are contiguous
 * (http_request_t.headers), so http_header() walks them without any index. */
#define HREC_HEAD 8
enum hstate { HS_URL, HS_NAME, HS_VALUE, HS_BODY };
enum tlist_id { TL_NONE, TL_IDLE, TL_HEAD, TL_LINGER, TL__COUNT };

typedef struct req {
    http_request_t pub;
    conn_t *conn;     /* NULL once the connection is gone: http_respond then only frees */
    struct req *next; /* the connection's FIFO */
    char *resp;       /* an answer waiting for earlier requests' answers */
    size_t resp_len;
    bool answered;
    bool keep_alive;
    bool http10;
    bool is_head;
    /* Fields as offsets into buf (which moves when it grows), NUL-terminated. */
    size_t url_off, url_len, uid_off, uid_len, auth_off, auth_len, body_off, body_len, peer_off;
    bool has_uid, has_auth, has_body;
    size_t xff_off, xff_len;
    bool has_xff;
    size_t idem_off, idem_len;
    bool has_idem;
    bool has_hdrs;
    size_t hdr_start, hdr_end; /* the header records */
    size_t hrec;               /* the record being received */
    char *buf;
    size_t len, cap;
    char inline_buf[REQ_INLINE];
} req_t;

struct conn {
    uv_tcp_t tcp;
    http_parser parser;
    http_server_t *srv;
    conn_t *prev, *next;   /* server's list of connections */
    conn_t *tprev, *tnext; /* timeout list */
    conn_t *dnext;         /* server's dirty list */
    uint64_t deadline;
    uint64_t req_start; /* loop time when the request being received began */
    req_t *head, *tail; /* dispatched requests, oldest first */
    req_t *cur;         /* request being received */
    unsigned nfifo;
    unsigned writes; /* uv_write requests in flight */
    char *out;       /* answers not yet handed to the kernel or to a uv_write */
    size_t out_len, out_cap;
    char *stash; /* unparsed input while paused */
    size_t stash_len;
    /* Input being parsed, and whether a header value reached its end (so may go on at the start
     * of the next input): any other further piece of the same value is an obs-fold. */
    const char *feed_start, *feed_end;
    bool vopen_now, vopen_next;
    size_t head_bytes;
    size_t body_bytes;
    int err_status; /* error answer to send once earlier answers are out, then close */
    uint8_t tl;
    uint8_t hstate;
    uint8_t field;
    uint8_t hname_len;
    uint8_t n_cl, n_te;
    bool te_ok;
    bool in_feed;
    bool dirty;
    bool paused;
    bool no_more; /* no further requests are read: close once the FIFO is answered */
    bool err_sent;
    bool shutting;
    bool lingering;
    bool closing;
    char hname[HNAME_MAX];
    char peer[INET6_ADDRSTRLEN];
    /* Raw head check ahead of the parser (see head_scan): bytes of this head, of its current
     * line, lines ended, and whether the last byte was CR. */
    size_t sc_bytes;
    size_t sc_line;
    unsigned sc_lines;
    bool sc_active;
    bool sc_cr;
    bool counted;        /* holds a slot of srv->cfg.limits */
    bool client_counted; /* holds a slot of its client address */
};

typedef struct client_count {
    struct client_count *next;
    unsigned n;
    char addr[INET6_ADDRSTRLEN];
} client_count_t;

struct http_limits {
    atomic_size_t conns;
    size_t max_conns;
    atomic_uint servers; /* servers sharing the caps: each holds an equal share of max_conns */
    unsigned per_client;
    uv_mutex_t lock; /* guards buckets */
    client_count_t *buckets[CLIENT_BUCKETS];
};

typedef struct {
    uv_write_t w;
    conn_t *conn;
    char data[];
} wreq_t;

typedef struct {
    conn_t *first, *last;
} tlist_t;

/* A pooled output buffer: the link lives in the buffer itself. */
typedef struct out_buf {
    struct out_buf *next;
    size_t cap;
} out_buf_t;

struct http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_timer_t sweep;
    uv_idle_t idle;
    http_config_t cfg;
    http_handler_fn handler;
    void *data;
    conn_t *conns;
    size_t nconns;
    size_t counted; /* connections holding a slot of cfg.limits */
    conn_t *dirty;
    tlist_t tl[TL__COUNT];
    int port;
    int handles; /* listener, sweep and idle handles not yet closed */
    bool accepting;
    bool closing;
    bool finishing;
    bool emfile_logged;
    bool limit_logged;
    void (*on_closed)(void *arg);
    void *closed_arg;
    req_t *req_pool; /* free request records, linked by next */
    size_t req_pooled;
    out_buf_t *out_pool;
    size_t out_pooled;
    char rbuf[READ_BUF_SIZE];
};

static const char ERR_400[] = "{\"error\":\"bad_request\",\"detail\":\"malformed request\"}";
static const char ERR_408[] = "{\"error\":\"timeout\"}";
static const char ERR_413[] = "{\"error\":\"body_too_large\"}";
static const char ERR_431[] = "{\"error\":\"header_too_large\"}";
static const char ERR_500[] = "{\"error\":\"internal\"}";
static const char ERR_505[] = "{\"error\":\"http_version_not_supported\"}";

static void conn_close(conn_t *c);
static void conn_settle(conn_t *c);
static void conn_feed(conn_t *c, const char *data, size_t len);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void on_idle(uv_idle_t *h);
static void limits_release(conn_t *c);

const char *http_status_text(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 413:
        return "Payload Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

/* ---- timeout lists ---- */

static void tl_unlink(http_server_t *srv, conn_t *c)
{
    if (c->tl == TL_NONE)
        return;
    tlist_t *l = &srv->tl[c->tl];
    if (c->tprev)
        c->tprev->tnext = c->tnext;
    else
        l->first = c->tnext;
    if (c->tnext)
        c->tnext->tprev = c->tprev;
    else
        l->last = c->tprev;
    c->tprev = c->tnext = NULL;
    c->tl = TL_NONE;
}

/* Keeps the list sorted by deadline; deadlines mostly grow, so the walk from the tail stops at
 * once. */
static void tl_put(http_server_t *srv, conn_t *c, uint8_t id, uint64_t deadline)
{
    /* Same list, same deadline: the position stands, except that an idle connection settled
     * again (it just did something) goes behind the others idle since the same millisecond,
     * so that the first of the idle list is the longest idle one (shed_candidate). */
    if (c->tl == id && c->deadline == deadline &&
        (id != TL_IDLE || c->tnext == NULL || c->tnext->deadline != deadline))
        return;
    tl_unlink(srv, c);
    if (id == TL_NONE)
        return;
    tlist_t *l = &srv->tl[id];
    conn_t *after = l->last;
    while (after && after->deadline > deadline)
        after = after->tprev;
    c->tl = id;
    c->deadline = deadline;
    c->tprev = after;
    c->tnext = after ? after->tnext : l->first;
    if (c->tnext)
        c->tnext->tprev = c;
    else
        l->last = c;
    if (after)
        after->tnext = c;
    else
        l->first = c;
}

/* ---- per-request storage ---- */

static req_t *req_new(conn_t *c)
{
    http_server_t *srv = c->srv;
    req_t *r = srv->req_pool;
    if (r) {
        srv->req_pool = r->next;
        srv->req_pooled--;
    } else if (!(r = malloc(sizeof(*r)))) {
        return NULL;
    }
    memset(r, 0, offsetof(req_t, inline_buf));
    r->conn = c;
    r->buf = r->inline_buf;
    r->cap = sizeof(r->inline_buf);
    r->pub.server_data = c->srv->data;
    r->pub.admin_listener = c->srv->cfg.admin_listener;
    return r;
}

/* A detached request (conn NULL) may outlive its server: only one still attached is pooled. */
static void req_free(req_t *r)
{
    if (!r)
        return;
    if (r->buf != r->inline_buf)
        free(r->buf);
    free(r->resp);
    http_server_t *srv = r->conn ? r->conn->srv : NULL;
    if (!srv || srv->req_pooled >= REQ_POOL_MAX) {
        free(r);
        return;
    }
    r->next = srv->req_pool;
    srv->req_pool = r;
    srv->req_pooled++;
}

/* Hands c's output buffer back: to the server's pool when it is of a common size. */
static void out_release(conn_t *c)
{
    http_server_t *srv = c->srv;
    if (c->out && c->out_cap <= OUT_POOL_CAP_MAX && srv->out_pooled < OUT_POOL_MAX) {
        out_buf_t *b = (out_buf_t *)(void *)c->out;
        b->next = srv->out_pool;
        b->cap = c->out_cap;
        srv->out_pool = b;
        srv->out_pooled++;
    } else {
        free(c->out);
    }
    c->out = NULL;
    c->out_len = c->out_cap = 0;
}

static void srv_pools_free(http_server_t *srv)
{
    while (srv->req_pool) {
        req_t *r = srv->req_pool;
        srv->req_pool = r->next;
        free(r);
    }
    while (srv->out_pool) {
        out_buf_t *b = srv->out_pool;
        srv->out_pool = b->next;
        free(b);
    }
    srv->req_pooled = srv->out_pooled = 0;
}

static int req_append(req_t *r, const char *p, size_t n)
{
    if (r->len + n > r->cap) {
        size_t cap = r->cap * 2;
        while (cap < r->len + n)
            cap *= 2;
        char *b = malloc(cap);
        if (!b)
            return -1;
        memcpy(b, r->buf, r->len);
        if (r->buf != r->inline_buf)
            free(r->buf);
        r->buf = b;
        r->cap = cap;
    }
    memcpy(r->buf + r->len, p, n);
    r->len += n;
    return 0;
}

/* Points the public fields into buf once it no longer moves. */
static void req_finish(req_t *r)
{
    static const char empty[] = "";
    http_request_t *q = &r->pub;
    char *url = r->buf + r->url_off;
    size_t plen = r->url_len;
    char *mark = memchr(url, '?', r->url_len);
    char *hash = memchr(url, '#', r->url_len);
    if (hash && (!mark || hash < mark))
        mark = NULL;
    if (hash)
        *hash = '\0';
    q->query = empty;
    if (mark) {
        *mark = '\0';
        plen = (size_t)(mark - url);
        q->query = mark + 1;
        q->query_len = (hash ? (size_t)(hash - mark) : r->url_len - plen) - 1;
    } else if (hash) {
        plen = (size_t)(hash - url);
    }
    q->path = url;
    q->path_len = plen;
    q->user_id = r->has_uid ? r->buf + r->uid_off : NULL;
    q->user_id_len = r->uid_len;
    q->authorization = r->has_auth ? r->buf + r->auth_off : NULL;
    q->authorization_len = r->auth_len;
    q->body = r->has_body ? r->buf + r->body_off : empty;
    q->body_len = r->body_len;
    q->peer = r->buf + r->peer_off;
    q->forwarded_for = r->has_xff ? r->buf + r->xff_off : NULL;
    q->forwarded_for_len = r->xff_len;
    q->idempotency_key = r->has_idem ? r->buf + r->idem_off : NULL;
    q->idempotency_key_len = r->idem_len;
    q->headers = r->has_hdrs ? r->buf + r->hdr_start : NULL;
    q->headers_len = r->has_hdrs ? r->hdr_end - r->hdr_start : 0;
}

static uint32_t rec_u32(const char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static void rec_set_u32(char *p, size_t v)
{
    uint32_t u = (uint32_t)v;
    memcpy(p, &u, sizeof(u));
}

const char *http_header(const http_request_t *req, const char *name, size_t nlen, size_t *iter,
                        size_t *vlen)
{
    const char *p = req->headers;
    size_t i = *iter;
    while (p != NULL && i + HREC_HEAD <= req->headers_len) {
        uint32_t nl = rec_u32(p + i), vl = rec_u32(p + i + 4);
        const char *n = p + i + HREC_HEAD;
        i += HREC_HEAD + nl + vl + 1;
        if (nl != nlen)
            continue;
        size_t k = 0;
        while (k < nlen && n[k] == (name[k] >= 'A' && name[k] <= 'Z' ? name[k] + 32 : name[k]))
            k++;
        if (k == nlen) {
            *iter = i;
            *vlen = vl;
            return n + nl;
        }
    }
    *iter = req->headers_len;
    return NULL;
}

/* ---- output ---- */

static int out_reserve(conn_t *c, size_t n)
{
    if (c->out_len + n <= c->out_cap)
        return 0;
    http_server_t *srv = c->srv;
    if (!c->out && srv->out_pool) {
        out_buf_t *b = srv->out_pool;
        srv->out_pool = b->next;
        srv->out_pooled--;
        c->out = (char *)b;
        c->out_cap = b->cap;
        if (n <= c->out_cap)
            return 0;
    }
    size_t cap = c->out_cap ? c->out_cap * 2 : 512;
    while (cap < c->out_len + n)
        cap *= 2;
    char *b = realloc(c->out, cap);
    if (!b)
        return -1;
    c->out = b;
    c->out_cap = cap;
    return 0;
}

static char *put_str(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

static char *put_uint(char *p, size_t v)
{
    char tmp[24];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return put_str(p, tmp + i, sizeof(tmp) - i);
}

#define PUT_LIT(p, s) put_str((p), (s), sizeof(s) - 1)

/* Upper bound of a response's size, for one allocation without a formatting pass. */
static size_t resp_size(const char *ctype, const char *text, size_t body_len)
{
    return 64 + strlen(text) + strlen(ctype) + 24 + 32 + body_len;
}

/* Writes a whole response at dst (sized with resp_size); returns its length. */
static size_t resp_build(char *dst, int status, const char *text, const char *ctype,
                         const char *body, size_t len, bool head, bool close, bool http10_ka)
{
    char *p = PUT_LIT(dst, "HTTP/1.1 ");
    *p++ = (char)('0' + status / 100 % 10);
    *p++ = (char)('0' + status / 10 % 10);
    *p++ = (char)('0' + status % 10);
    *p++ = ' ';
    p = put_str(p, text, strlen(text));
    p = PUT_LIT(p, "\r\nContent-Type: ");
    p = put_str(p, ctype, strlen(ctype));
    p = PUT_LIT(p, "\r\nContent-Length: ");
    p = put_uint(p, len);
    if (close)
        p = PUT_LIT(p, "\r\nConnection: close");
    else if (http10_ka)
        p = PUT_LIT(p, "\r\nConnection: keep-alive");
    p = PUT_LIT(p, "\r\n\r\n");
    if (!head && len)
        p = put_str(p, body, len);
    return (size_t)(p - dst);
}

/* Moves every answered request at the FIFO's head into the output buffer. */
static void fifo_drain(conn_t *c)
{
    while (c->head && c->head->answered) {
        req_t *r = c->head;
        if (out_reserve(c, r->resp_len) == 0) {
            memcpy(c->out + c->out_len, r->resp, r->resp_len);
            c->out_len += r->resp_len;
        } else {
            c->err_status = -1; /* out of memory: drop the connection */
        }
        c->head = r->next;
        if (!c->head)
            c->tail = NULL;
        c->nfifo--;
        req_free(r);
    }
}

static bool conn_is_last(const conn_t *c, const req_t *r)
{
    return r->next == NULL && (c->no_more || c->srv->closing) && c->err_status == 0;
}

static void mark_dirty(conn_t *c)
{
    if (c->dirty || c->closing)
        return;
    c->dirty = true;
    c->dnext = c->srv->dirty;
    c->srv->dirty = c;
    if (!uv_is_active((uv_handle_t *)&c->srv->idle))
        uv_idle_start(&c->srv->idle, on_idle);
}

void http_respond(http_request_t *req, int status, const char *content_type, const char *body,
                  size_t len)
{
    req_t *r = container_of(req, req_t, pub);
    conn_t *c = r->conn;
    if (!c) {
        req_free(r);
        return;
    }
    if (status < 100 || status > 999)
        status = 500;
    if (!content_type)
        content_type = "application/json";
    if (!body)
        len = 0;
    const char *text = http_status_text(status);
    bool close = !r->keep_alive || conn_is_last(c, r);
    bool ka10 = r->http10 && !close;
    size_t cap = resp_size(content_type, text, r->is_head ? 0 : len);
    if (r == c->head) {
        /* The common case: no earlier answer outstanding, so build in place. */
        if (out_reserve(c, cap) != 0) {
            c->err_status = -1;
        } else {
            c->out_len += resp_build(c->out + c->out_len, status, text, content_type, body, len,
                                     r->is_head, close, ka10);
        }
        c->head = r->next;
        if (!c->head)
            c->tail = NULL;
        c->nfifo--;
        req_free(r);
        fifo_drain(c);
    } else {
        r->resp = malloc(cap);
        if (!r->resp) {
            c->err_status = -1;
        } else {
            r->resp_len =
                resp_build(r->resp, status, text, content_type, body, len, r->is_head, close, ka10);
        }
        r->answered = true;
    }
    if (!c->in_feed)
        mark_dirty(c);
}

static void on_write(uv_write_t *w, int status)
{
    wreq_t *wr = container_of(w, wreq_t, w);
    conn_t *c = wr->conn;
    free(wr);
    c->writes--;
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    conn_settle(c);
}

/* Hands the output buffer to the kernel: uv_try_write first (usually all of it goes, with no
 * allocation), the rest through a uv_write that owns a copy. Returns -1 when the connection must
 * be dropped. */
static int conn_flush(conn_t *c)
{
    if (!c->head && c->err_status > 0 && !c->err_sent) {
        const char *body = ERR_400;
        size_t len = sizeof(ERR_400) - 1;
        switch (c->err_status) {
        case 408:
            body = ERR_408, len = sizeof(ERR_408) - 1;
            break;
        case 413:
            body = ERR_413, len = sizeof(ERR_413) - 1;
            break;
        case 431:
            body = ERR_431, len = sizeof(ERR_431) - 1;
            break;
        case 500:
            body = ERR_500, len = sizeof(ERR_500) - 1;
            break;
        case 505:
            body = ERR_505, len = sizeof(ERR_505) - 1;
            break;
        }
        const char *text = http_status_text(c->err_status);
        if (out_reserve(c, resp_size("application/json", text, len)) != 0)
            return -1;
        c->out_len += resp_build(c->out + c->out_len, c->err_status, text, "application/json", body,
                                 len, false, true, false);
        c->err_sent = true;
    }
    if (c->out_len == 0)
        return 0;
    size_t off = 0;
    if (c->writes == 0) {
        uv_buf_t b = uv_buf_init(c->out, (unsigned)c->out_len);
        int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (n < 0 && n != UV_EAGAIN)
            return -1;
        if (n > 0)
            off = (size_t)n;
    }
    if (off < c->out_len) {
        size_t rest = c->out_len - off;
        wreq_t *wr = malloc(sizeof(*wr) + rest);
        if (!wr)
            return -1;
        memcpy(wr->data, c->out + off, rest);
        wr->conn = c;
        uv_buf_t b = uv_buf_init(wr->data, (unsigned)rest);
        if (uv_write(&wr->w, (uv_stream_t *)&c->tcp, &b, 1, on_write) != 0) {
            free(wr);
            return -1;
        }
        c->writes++;
    }
    /* Idle keep-alive connections must stay small: the buffer goes with its contents. */
    out_release(c);
    return 0;
}

/* ---- closing ---- */

static void srv_maybe_finish(http_server_t *srv);

static void on_conn_closed(uv_handle_t *h)
{
    conn_t *c = container_of(h, conn_t, tcp);
    http_server_t *srv = c->srv;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->nconns--;
    if (srv->cfg.limits)
        limits_release(c);
    free(c);
    srv_maybe_finish(srv);
}

/* Drops the connection now. Requests still with the handler are detached, not freed: their
 * http_respond frees them. */
static void conn_close(conn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    tl_unlink(c->srv, c);
    /* The dirty list is short (answers of one loop turn): unlinking by walking it is cheap. */
    if (c->dirty) {
        conn_t **pp = &c->srv->dirty;
        while (*pp && *pp != c)
            pp = &(*pp)->dnext;
        if (*pp)
            *pp = c->dnext;
        c->dirty = false;
    }
    for (req_t *r = c->head, *next; r; r = next) {
        next = r->next;
        if (r->answered) {
            req_free(r);
        } else {
            r->conn = NULL;
            r->next = NULL;
        }
    }
    c->head = c->tail = NULL;
    c->nfifo = 0;
    req_free(c->cur);
    c->cur = NULL;
    free(c->out);
    c->out = NULL;
    c->out_len = c->out_cap = 0;
    free(c->stash);
    c->stash = NULL;
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void on_linger_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    if (nread < 0)
        conn_close(container_of(s, conn_t, tcp));
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    conn_t *c = container_of(h, conn_t, tcp);
    *buf = uv_buf_init(c->srv->rbuf, READ_BUF_SIZE);
}

static void on_shutdown(uv_shutdown_t *sh, int status)
{
    conn_t *c = container_of(sh->handle, conn_t, tcp);
    free(sh);
    if (c->closing)
        return;
    if (status < 0 || uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_linger_read) != 0) {
        conn_close(c);
        return;
    }
    c->lingering = true;
    tl_put(c->srv, c, TL_LINGER, uv_now(c->srv->loop) + LINGER_MS);
}

/* Sends FIN after the queued writes, then discards input until EOF or the linger timeout. */
static void conn_shutdown(conn_t *c)
{
    if (c->shutting)
        return;
    c->shutting = true;
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_shutdown_t *sh = malloc(sizeof(*sh));
    if (!sh || uv_shutdown(sh, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        free(sh);
        conn_close(c);
        return;
    }
    tl_put(c->srv, c, TL_LINGER, uv_now(c->srv->loop) + LINGER_MS);
}

/* Stops taking requests on c: answers to dispatched ones still go out, then the connection
 * closes. status > 0 queues that error answer after them. */
static void conn_fail(conn_t *c, int status)
{
    if (status > 0 && !c->no_more)
        metrics_http_error(status);
    if (status > 0 && c->err_status == 0)
        c->err_status = status;
    c->no_more = true;
    c->paused = false;
    req_free(c->cur);
    c->cur = NULL;
    free(c->stash);
    c->stash = NULL;
    c->stash_len = 0;
    uv_read_stop((uv_stream_t *)&c->tcp);
}

static bool must_pause(const conn_t *c)
{
    return c->nfifo >= c->srv->cfg.max_pipeline || c->out_len >= OUT_SLICE_MAX ||
           uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp) > WRITE_QUEUE_MAX;
}

/* Brings c up to date after anything happened to it: flushes answers, closes when its last
 * answer is out, asks for a resume when it paused and may read again, and files it under the
 * right timeout. Never called while c's input is being parsed. */
static void conn_settle(conn_t *c)
{
    if (c->closing || c->in_feed)
        return;
    if (c->err_status < 0 || conn_flush(c) != 0) {
        conn_close(c);
        return;
    }
    if (c->shutting)
        return;
    http_server_t *srv = c->srv;
    if (srv->closing && !c->no_more && !c->head && c->writes == 0) {
        conn_close(c);
        return;
    }
    if (c->no_more && !c->head && (!c->err_status || c->err_sent)) {
        conn_shutdown(c);
        return;
    }
    if (c->paused && !must_pause(c))
        mark_dirty(c);
    uint64_t now = uv_now(srv->loop);
    if (c->head && !c->paused)
        tl_put(srv, c, TL_NONE, 0);
    else if (c->cur)
        tl_put(srv, c, TL_HEAD, c->req_start + srv->cfg.header_timeout_ms);
    else if (!c->head)
        tl_put(srv, c, TL_IDLE, now + srv->cfg.idle_timeout_ms);
    else
        tl_put(srv, c, TL_NONE, 0);
}

/* Continues a paused connection: parses the stash, then reads again. */
static void conn_resume(conn_t *c)
{
    if (c->closing || !c->paused || must_pause(c)) {
        conn_settle(c);
        return;
    }
    c->paused = false;
    char *stash = c->stash;
    size_t n = c->stash_len;
    c->stash = NULL;
    c->stash_len = 0;
    if (stash) {
        conn_feed(c, stash, n);
        free(stash);
    } else {
        conn_settle(c);
    }
    if (!c->closing && !c->paused && !c->no_more && !c->shutting &&
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
        conn_close(c);
}

/* ---- parser callbacks ---- */

static int head_add(conn_t *c, size_t n)
{
    c->head_bytes += n;
    if (c->head_bytes > c->srv->cfg.max_head_bytes) {
        c->err_status = 431;
        return -1;
    }
    return 0;
}

static int bad(conn_t *c)
{
    c->err_status = 400;
    return -1;
}

static int on_message_begin(http_parser *p)
{
    conn_t *c = p->data;
    req_t *r = req_new(c);
    if (!r) {
        c->err_status = 500;
        return -1;
    }
    c->cur = r;
    c->req_start = uv_now(c->srv->loop);
    c->head_bytes = REQ_LINE_OVERHEAD;
    c->body_bytes = 0;
    c->hstate = HS_URL;
    c->field = FIELD_URL;
    c->n_cl = c->n_te = 0;
    c->te_ok = true;
    r->peer_off = 0;
    size_t plen = strlen(c->peer);
    if (req_append(r, c->peer, plen + 1) != 0) {
        c->err_status = 500;
        return -1;
    }
    r->url_off = r->len;
    return 0;
}

static bool is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* Ends the URL or header value being received: records its length and NUL-terminates it. */
static int close_field(conn_t *c)
{
    req_t *r = c->cur;
    uint8_t f = c->field;
    c->field = FIELD_NONE;
    switch (f) {
    case FIELD_URL:
        r->url_len = r->len - r->url_off;
        break;
    case FIELD_UID:
    case FIELD_AUTH:
    case FIELD_TE:
    case FIELD_OTHER:
    case FIELD_XFF:
    case FIELD_IDEM: {
        size_t off = r->hrec + HREC_HEAD + rec_u32(r->buf + r->hrec);
        while (r->len > off && is_ows(r->buf[r->len - 1]))
            r->len--;
        size_t n = r->len - off;
        rec_set_u32(r->buf + r->hrec + 4, n);
        if (f == FIELD_TE)
            /* Only plain chunked: anything else is a body we cannot frame the way a proxy in
             * front of us might. */
            c->te_ok = n == 7 && strncasecmp(r->buf + off, "chunked", 7) == 0;
        else if (f == FIELD_UID)
            r->uid_len = n;
        else if (f == FIELD_XFF)
            r->xff_len = n;
        else if (f == FIELD_IDEM)
            r->idem_len = n;
        else if (f == FIELD_AUTH)
            r->auth_len = n;
        break;
    }
    default:
        return 0;
    }
    if (req_append(r, "", 1) != 0) {
        c->err_status = 500;
        return -1;
    }
    return 0;
}

static bool name_is(const conn_t *c, const char *lower, size_t n)
{
    return c->hname_len == n && memcmp(c->hname, lower, n) == 0;
}

/* A header name is complete: decides what its value is for. */
static int resolve_name(conn_t *c)
{
    req_t *r = c->cur;
    rec_set_u32(r->buf + r->hrec, r->len - r->hrec - HREC_HEAD); /* the name is complete */
    c->field = FIELD_OTHER;
    if (name_is(c, "x-user-id", 9)) {
        if (r->has_uid)
            return bad(c); /* two identities: which one would a proxy have checked? */
        r->has_uid = true;
        r->uid_off = r->len;
        c->field = FIELD_UID;
    } else if (name_is(c, "authorization", 13)) {
        if (r->has_auth)
            return bad(c);
        r->has_auth = true;
        r->auth_off = r->len;
        c->field = FIELD_AUTH;
    } else if (name_is(c, "x-forwarded-for", 15)) {
        /* One list, as proxies append to it: two would leave us guessing which hop wrote which. */
        if (r->has_xff)
            return bad(c);
        r->has_xff = true;
        r->xff_off = r->len;
        c->field = FIELD_XFF;
    } else if (name_is(c, "idempotency-key", 15)) {
        /* Two keys would leave us guessing which one the client retries with. */
        if (r->has_idem)
            return bad(c);
        r->has_idem = true;
        r->idem_off = r->len;
        c->field = FIELD_IDEM;
    } else if (name_is(c, "content-length", 14)) {
        c->n_cl++;
    } else if (name_is(c, "transfer-encoding", 17)) {
        c->n_te++;
        c->field = FIELD_TE;
    }
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    if (head_add(c, len) != 0)
        return -1;
    if (req_append(c->cur, at, len) != 0) {
        c->err_status = 500;
        return -1;
    }
    return 0;
}

static int body_add(conn_t *c, size_t n)
{
    c->body_bytes += n;
    if (c->body_bytes > c->srv->cfg.max_body_bytes) {
        c->err_status = 413;
        return -1;
    }
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    if (c->hstate == HS_BODY)
        return body_add(c, len); /* chunked trailers: counted, ignored */
    if (c->hstate != HS_NAME) {
        if (c->hstate == HS_VALUE || c->hstate == HS_URL) {
            if (close_field(c) != 0)
                return -1;
        }
        c->hstate = HS_NAME;
        c->hname_len = 0;
        if (head_add(c, HEADER_OVERHEAD) != 0)
            return -1;
        req_t *r = c->cur;
        static const char zero[HREC_HEAD];
        if (!r->has_hdrs) {
            r->has_hdrs = true;
            r->hdr_start = r->len;
        }
        r->hrec = r->len;
        if (req_append(r, zero, HREC_HEAD) != 0) {
            c->err_status = 500;
            return -1;
        }
    }
    if (head_add(c, len) != 0)
        return -1;
    req_t *r = c->cur;
    size_t at_off = r->len;
    if (req_append(r, at, len) != 0) {
        c->err_status = 500;
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        char ch = at[i];
        if (is_ows(ch))
            return bad(c); /* "Content-Length : 5" is a smuggling shape */
        ch = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
        r->buf[at_off + i] = ch;
        if (c->hname_len < HNAME_MAX)
            c->hname[c->hname_len] = ch;
        if (c->hname_len <= HNAME_MAX)
            c->hname_len++;
    }
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    if (c->hstate == HS_BODY)
        return body_add(c, len);
    if (c->hstate == HS_NAME) {
        if (resolve_name(c) != 0)
            return -1;
        c->hstate = HS_VALUE;
    } else if (!c->vopen_now || at != c->feed_start) {
        return bad(c); /* obsolete line folding: refused, as RFC 9112 allows */
    }
    c->vopen_now = false;
    c->vopen_next = at + len == c->feed_end;
    if (head_add(c, len) != 0)
        return -1;
    if (req_append(c->cur, at, len) != 0) {
        c->err_status = 500;
        return -1;
    }
    return 0;
}

static http_method_t map_method(unsigned m)
{
    switch (m) {
    case HTTP_GET:
        return HTTP_M_GET;
    case HTTP_HEAD:
        return HTTP_M_HEAD;
    case HTTP_POST:
        return HTTP_M_POST;
    case HTTP_PUT:
        return HTTP_M_PUT;
    case HTTP_DELETE:
        return HTTP_M_DELETE;
    case HTTP_PATCH:
        return HTTP_M_PATCH;
    default:
        return HTTP_M_OTHER;
    }
}

static int on_headers_complete(http_parser *p)
{
    conn_t *c = p->data;
    req_t *r = c->cur;
    if (c->hstate == HS_NAME && resolve_name(c) != 0)
        return -1;
    if (close_field(c) != 0)
        return -1;
    r->hdr_end = r->len;
    if (p->http_major != 1 || p->http_minor > 1) {
        c->err_status = 505;
        return -1;
    }
    /* http-parser already refuses two Content-Lengths and Content-Length with chunked; several
     * Transfer-Encodings or one that is not plain chunked are refused here. */
    if (c->n_cl > 1 || c->n_te > 1 || (c->n_te && (c->n_cl || !c->te_ok)))
        return bad(c);
    if ((p->flags & F_CONTENTLENGTH) && p->content_length > c->srv->cfg.max_body_bytes) {
        c->err_status = 413;
        return -1;
    }
    r->pub.method = map_method(p->method);
    r->is_head = p->method == HTTP_HEAD;
    r->http10 = p->http_minor == 0;
    r->keep_alive = http_should_keep_alive(p) != 0;
    c->hstate = HS_BODY;
    c->field = FIELD_BODY;
    r->body_off = r->len;
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    if (body_add(c, len) != 0)
        return -1;
    if (req_append(c->cur, at, len) != 0) {
        c->err_status = 500;
        return -1;
    }
    c->cur->has_body = true;
    return 0;
}

static int on_message_complete(http_parser *p)
{
    conn_t *c = p->data;
    req_t *r = c->cur;
    r->body_len = r->len - r->body_off;
    if (req_append(r, "", 1) != 0) {
        c->err_status = 500;
        return -1;
    }
    r->keep_alive = r->keep_alive && http_should_keep_alive(p) != 0;
    req_finish(r);
    c->sc_active = true;
    c->sc_bytes = c->sc_line = 0;
    c->sc_lines = 0;
    c->sc_cr = false;
    /* Dispatch happens outside the parser, one request at a time, so that the handler may do
     * anything (even close the server) and reading can pause between requests. */
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- input ---- */

static void dispatch(conn_t *c)
{
    req_t *r = c->cur;
    c->cur = NULL;
    if (c->tail)
        c->tail->next = r;
    else
        c->head = r;
    c->tail = r;
    c->nfifo++;
    r->pub.received_ns = uv_hrtime();
    if (!r->keep_alive || c->parser.upgrade || c->srv->closing) {
        /* Last request (or an upgrade we do not speak): what follows is not read. */
        c->no_more = true;
        uv_read_stop((uv_stream_t *)&c->tcp);
    }
    c->srv->handler(&r->pub);
}

static void stash(conn_t *c, const char *data, size_t len)
{
    c->stash = malloc(len);
    if (!c->stash) {
        c->err_status = -1;
        return;
    }
    memcpy(c->stash, data, len);
    c->stash_len = len;
    c->paused = true;
    uv_read_stop((uv_stream_t *)&c->tcp);
}

/* Checks the raw bytes of a head before the parser sees them, because Debian's http-parser 2.9
 * accepts what RFC 9112 lets a server refuse and a proxy in front may read differently: a line
 * starting with SP/HT (obs-fold, even after an empty value) continues the previous header, and a
 * bare LF ends a line. Both are 400 here, and so is a bare CR. The whole head counts against
 * max_head_bytes, including the whitespace the parser skips. Stops at the head's blank line (the
 * body is the parser's); incremental across reads. Returns 0 or the status to fail with. */
static int head_scan(conn_t *c, const char *p, size_t len)
{
    size_t max = c->srv->cfg.max_head_bytes;
    const char *end = p + len;
    /* Line by line with memchr: this runs on every request of the hot path. */
    while (p < end && c->sc_active) {
        size_t line;
        if (c->sc_cr) { /* the previous input ended in CR */
            if (*p != '\n')
                return 400;
            c->sc_cr = false;
            line = c->sc_line;
            p++;
            if (++c->sc_bytes > max)
                return 431;
        } else {
            if (c->sc_line == 0 && c->sc_lines > 0 && is_ows(*p))
                return 400;
            const char *lf = memchr(p, '\n', (size_t)(end - p));
            const char *stop = lf ? lf : end;
            size_t n = (size_t)(stop - p);
            c->sc_bytes += n + (lf != NULL);
            if (c->sc_bytes > max)
                return 431;
            const char *cr = memchr(p, '\r', n);
            if (cr && cr != stop - 1)
                return 400; /* a CR not followed by LF */
            p = lf ? lf + 1 : end;
            if (!lf) {
                c->sc_cr = cr != NULL;
                c->sc_line += n - (cr != NULL);
                continue;
            }
            if (!cr)
                return 400; /* bare LF */
            line = c->sc_line + n - 1;
        }
        c->sc_line = 0;
        if (line > 0)
            c->sc_lines++;
        else if (c->sc_lines > 0)
            c->sc_active = false; /* blank line: the head is complete */
        /* else an empty line before the request line, which RFC 9112 lets us skip */
    }
    return 0;
}

/* Parses input, dispatching every complete request in order, then settles the connection: all
 * answers given meanwhile leave in one write. */
static void conn_feed(conn_t *c, const char *data, size_t len)
{
    c->in_feed = true;
    while (len > 0 && !c->no_more && c->err_status >= 0) {
        if (must_pause(c)) {
            stash(c, data, len);
            break;
        }
        int bad_head = c->sc_active ? head_scan(c, data, len) : 0;
        if (bad_head) {
            conn_fail(c, bad_head);
            break;
        }
        c->feed_start = data;
        c->feed_end = data + len;
        c->vopen_now = c->vopen_next;
        c->vopen_next = false;
        size_t n = http_parser_execute(&c->parser, &parser_settings, data, len);
        data += n;
        len -= n;
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        if (e == HPE_PAUSED) {
            http_parser_pause(&c->parser, 0);
            dispatch(c);
            continue;
        }
        if (e != HPE_OK) {
            int status = c->err_status ? c->err_status : e == HPE_HEADER_OVERFLOW ? 431 : 400;
            c->err_status = 0;
            conn_fail(c, status);
            break;
        }
        if (n == 0)
            break;
    }
    c->in_feed = false;
    conn_settle(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = container_of(s, conn_t, tcp);
    if (nread > 0) {
        conn_feed(c, buf->base, (size_t)nread);
        return;
    }
    if (nread == 0)
        return;
    if (nread == UV_EOF && (c->head || c->writes)) {
        /* The peer has sent all it will: answer what it asked, then close. */
        conn_fail(c, 0);
        conn_settle(c);
        return;
    }
    conn_close(c);
}

static void on_idle(uv_idle_t *h)
{
    http_server_t *srv = container_of(h, http_server_t, idle);
    conn_t *list = srv->dirty;
    srv->dirty = NULL;
    uv_idle_stop(h);
    while (list) {
        conn_t *c = list;
        list = c->dnext;
        c->dnext = NULL;
        c->dirty = false;
        conn_resume(c);
    }
}

static void on_sweep(uv_timer_t *t)
{
    http_server_t *srv = container_of(t, http_server_t, sweep);
    uint64_t now = uv_now(srv->loop);
    conn_t *c;
    while ((c = srv->tl[TL_IDLE].first) && c->deadline <= now)
        conn_close(c);
    while ((c = srv->tl[TL_LINGER].first) && c->deadline <= now)
        conn_close(c);
    while ((c = srv->tl[TL_HEAD].first) && c->deadline <= now) {
        tl_unlink(srv, c);
        conn_fail(c, 408);
        conn_settle(c);
    }
}

/* ---- connection caps ---- */

http_limits_t *http_limits_new(size_t max_conns, unsigned per_client)
{
    http_limits_t *l = calloc(1, sizeof(*l));
    if (!l)
        return NULL;
    if (uv_mutex_init(&l->lock) != 0) {
        free(l);
        return NULL;
    }
    atomic_init(&l->conns, 0);
    atomic_init(&l->servers, 0);
    l->max_conns = max_conns;
    l->per_client = per_client;
    return l;
}

void http_limits_free(http_limits_t *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < CLIENT_BUCKETS; i++) {
        for (client_count_t *e = l->buckets[i], *next; e; e = next) {
            next = e->next;
            free(e);
        }
    }
    uv_mutex_destroy(&l->lock);
    free(l);
}

static client_count_t **client_slot(http_limits_t *l, const char *addr)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const char *p = addr; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    client_count_t **pp = &l->buckets[h % CLIENT_BUCKETS];
    while (*pp && strcmp((*pp)->addr, addr) != 0)
        pp = &(*pp)->next;
    return pp;
}

/* Takes a slot for c's client address; false when the client is at its cap. */
static bool client_take(http_limits_t *l, const conn_t *c)
{
    bool ok = true;
    uv_mutex_lock(&l->lock);
    client_count_t **pp = client_slot(l, c->peer);
    if (!*pp) {
        client_count_t *e = calloc(1, sizeof(*e));
        if (e) {
            memcpy(e->addr, c->peer, sizeof(e->addr));
            *pp = e;
        }
    }
    if (!*pp || (*pp)->n >= l->per_client)
        ok = false;
    else
        (*pp)->n++;
    uv_mutex_unlock(&l->lock);
    return ok;
}

static void client_release(http_limits_t *l, const conn_t *c)
{
    uv_mutex_lock(&l->lock);
    client_count_t **pp = client_slot(l, c->peer);
    client_count_t *e = *pp;
    if (e && --e->n == 0) {
        *pp = e->next;
        free(e);
    }
    uv_mutex_unlock(&l->lock);
}

static void limits_release(conn_t *c)
{
    http_limits_t *l = c->srv->cfg.limits;
    if (c->counted) {
        atomic_fetch_sub(&l->conns, 1);
        c->srv->counted--;
    }
    if (c->client_counted)
        client_release(l, c);
    c->counted = c->client_counted = false;
}

/* The longest-idle connection with nothing in flight: one whose last answers still wait in the
 * kernel's queue is passed over, since closing it could destroy them. The walk is bounded. */
static conn_t *shed_candidate(http_server_t *srv)
{
    int budget = 64;
    for (conn_t *c = srv->tl[TL_IDLE].first; c && budget-- > 0; c = c->tnext) {
        if (c->writes == 0 && c->out_len == 0 && !c->dirty && !c->in_feed)
            return c;
    }
    return NULL;
}

/* Takes c's slots under the caps. The process cap is split in equal shares between the servers
 * (one per loop thread): a thread's connections are the only ones it may close, so a thread over
 * its share makes room by closing its own longest-idle keep-alive connection, and a new buyer is
 * refused only when that thread has nothing idle, never because idle connections pile up on
 * another thread. The kernel spreads connections evenly over SO_REUSEPORT listeners, so the
 * shares add up to the cap. Over the client's cap the new connection is refused. */
static bool limits_admit(conn_t *c)
{
    http_limits_t *l = c->srv->cfg.limits;
    atomic_fetch_add(&l->conns, 1);
    c->counted = true;
    c->srv->counted++;
    if (l->per_client) {
        if (!client_take(l, c))
            return false;
        c->client_counted = true;
    }
    unsigned servers = atomic_load(&l->servers);
    size_t share = servers > 1 ? (l->max_conns + servers - 1) / servers : l->max_conns;
    if (c->srv->counted <= share)
        return true;
    conn_t *idle = shed_candidate(c->srv);
    if (!idle)
        return false;
    conn_close(idle);
    return true;
}

static void refuse(conn_t *c)
{
    static const char resp[] = "HTTP/1.1 503 Service Unavailable\r\n"
                               "Content-Type: application/json\r\n"
                               "Content-Length: 32\r\n"
                               "Connection: close\r\n\r\n"
                               "{\"error\":\"too_many_connections\"}";
    if (!c->srv->limit_logged) {
        log_warn("http: connection cap reached, refusing connections (logged once)");
        c->srv->limit_logged = true;
    }
    metrics_http_error(503);
    uv_buf_t b = uv_buf_init((char *)resp, sizeof(resp) - 1);
    (void)uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    conn_close(c);
}

/* ---- accepting ---- */

static void on_connection(uv_stream_t *l, int status)
{
    http_server_t *srv = container_of(l, http_server_t, listener);
    if (status < 0) {
        /* EMFILE and friends: libuv already drops the pending connection; say it once. */
        if (!srv->emfile_logged) {
            log_error("http: accept failed: %s (further failures not logged)", uv_strerror(status));
            srv->emfile_logged = true;
        }
        return;
    }
    conn_t *c = calloc(1, sizeof(*c));
    if (!c) {
        log_error("http: out of memory accepting a connection");
        return;
    }
    c->srv = srv;
    uv_tcp_init(srv->loop, &c->tcp);
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    srv->nconns++;
    if (uv_accept(l, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)&ss, c->peer, sizeof(c->peer));
        else
            uv_ip4_name((struct sockaddr_in *)&ss, c->peer, sizeof(c->peer));
    }
    if (srv->cfg.limits && !limits_admit(c)) {
        refuse(c);
        return;
    }
    c->sc_active = true;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        conn_close(c);
        return;
    }
    conn_settle(c);
}

/* ---- server ---- */

static void on_srv_handle_closed(uv_handle_t *h)
{
    http_server_t *srv = h->data;
    if (--srv->handles > 0 || !srv->finishing)
        return;
    void (*cb)(void *) = srv->on_closed;
    void *arg = srv->closed_arg;
    srv_pools_free(srv);
    free(srv);
    if (cb)
        cb(arg);
}

static void on_start_failed(uv_handle_t *h)
{
    free(h->data);
}

static void srv_maybe_finish(http_server_t *srv)
{
    if (!srv->closing || srv->finishing || srv->nconns > 0)
        return;
    srv->finishing = true;
    uv_close((uv_handle_t *)&srv->sweep, on_srv_handle_closed);
    uv_close((uv_handle_t *)&srv->idle, on_srv_handle_closed);
}

static void apply_defaults(http_config_t *cfg)
{
    if (!cfg->max_head_bytes)
        cfg->max_head_bytes = 8192;
    if (!cfg->max_body_bytes)
        cfg->max_body_bytes = 65536;
    if (!cfg->header_timeout_ms)
        cfg->header_timeout_ms = 10000;
    if (!cfg->idle_timeout_ms)
        cfg->idle_timeout_ms = 60000;
    if (!cfg->max_pipeline)
        cfg->max_pipeline = 64;
}

static int srv_listen(http_server_t *srv, const struct sockaddr *sa)
{
    uv_os_fd_t fd;
    int rc = uv_fileno((uv_handle_t *)&srv->listener, &fd);
    if (rc != 0)
        return rc;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0)
        return -errno; /* libuv's codes are negated errno values on Unix */
    rc = uv_tcp_bind(&srv->listener, sa, 0);
    if (rc != 0)
        return rc;
    rc = uv_listen((uv_stream_t *)&srv->listener, LISTEN_BACKLOG, on_connection);
    if (rc != 0)
        return rc;
    struct sockaddr_storage ss;
    int sl = sizeof(ss);
    rc = uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &sl);
    if (rc != 0)
        return rc;
    srv->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                               : ((struct sockaddr_in *)&ss)->sin_port);
    return 0;
}

int http_server_start(http_server_t **out, uv_loop_t *loop, const char *addr, int port,
                      const http_config_t *cfg, http_handler_fn handler, void *data)
{
    struct sockaddr_storage ss;
    int family = AF_INET;
    *out = NULL;
    if (uv_ip4_addr(addr, port, (struct sockaddr_in *)&ss) != 0) {
        if (uv_ip6_addr(addr, port, (struct sockaddr_in6 *)&ss) != 0)
            return UV_EINVAL;
        family = AF_INET6;
    }
    http_server_t *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return UV_ENOMEM;
    if (cfg)
        srv->cfg = *cfg;
    apply_defaults(&srv->cfg);
    srv->loop = loop;
    srv->handler = handler;
    srv->data = data;
    int rc = uv_tcp_init_ex(loop, &srv->listener, family);
    if (rc != 0) {
        free(srv);
        return rc;
    }
    srv->listener.data = srv;
    rc = srv_listen(srv, (const struct sockaddr *)&ss);
    if (rc != 0) {
        /* The handle is initialised: it (and srv with it) can only go in its close callback. */
        uv_close((uv_handle_t *)&srv->listener, on_start_failed);
        return rc;
    }
    uv_timer_init(loop, &srv->sweep);
    uv_idle_init(loop, &srv->idle);
    srv->sweep.data = srv;
    srv->idle.data = srv;
    uint64_t tick = srv->cfg.header_timeout_ms < srv->cfg.idle_timeout_ms
                        ? srv->cfg.header_timeout_ms
                        : srv->cfg.idle_timeout_ms;
    tick /= 4;
    tick = tick < 10 ? 10 : tick > 1000 ? 1000 : tick;
    uv_timer_start(&srv->sweep, on_sweep, tick, tick);
    srv->handles = 3;
    srv->accepting = true;
    if (srv->cfg.limits)
        atomic_fetch_add(&srv->cfg.limits->servers, 1);
    *out = srv;
    return 0;
}

int http_probe_port(const char *addr, int port)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(struct sockaddr_in);
    if (uv_ip4_addr(addr, port, (struct sockaddr_in *)&ss) != 0) {
        if (uv_ip6_addr(addr, port, (struct sockaddr_in6 *)&ss) != 0)
            return UV_EINVAL;
        len = sizeof(struct sockaddr_in6);
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    /* SO_REUSEADDR, as libuv sets on listeners: a port with connections in TIME_WAIT from a
     * previous run is free, one with a listener is not. */
    int one = 1;
    int rc = 0;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, (struct sockaddr *)&ss, len) != 0)
        rc = -errno;
    close(fd);
    return rc;
}

void http_server_stop_accepting(http_server_t *srv)
{
    if (!srv || !srv->accepting)
        return;
    srv->accepting = false;
    uv_close((uv_handle_t *)&srv->listener, on_srv_handle_closed);
}

void http_server_close(http_server_t *srv, void (*on_closed)(void *arg), void *arg)
{
    if (!srv || srv->closing)
        return;
    srv->closing = true;
    srv->on_closed = on_closed;
    srv->closed_arg = arg;
    http_server_stop_accepting(srv);
    for (conn_t *c = srv->conns, *next; c; c = next) {
        next = c->next;
        if (c->closing)
            continue;
        /* Idle only if nothing is waiting to be written either: answers built in c->out are
         * flushed by the idle handler one loop phase later, and must not be lost. */
        if (!c->head && c->writes == 0 && !c->in_feed && c->out_len == 0 && !c->dirty) {
            conn_close(c);
            continue;
        }
        if (!c->no_more)
            conn_fail(c, 0);
        conn_settle(c);
    }
    srv_maybe_finish(srv);
}

size_t http_server_connections(const http_server_t *srv)
{
    return srv ? srv->nconns : 0;
}

int http_server_port(const http_server_t *srv)
{
    return srv ? srv->port : -1;
}
