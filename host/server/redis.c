/* The Redis router (see redis.h). Standalone: every call goes straight to the one connection,
 * with no copy and no record of ours (the selling path costs what it did before clusters).
 * Cluster: a request record owns a copy of the command (the caller may reuse its vectors as soon
 * as the call returns, and a MOVED, ASK or TRYAGAIN resends it), and lives until its caller has
 * been answered.
 *
 * The map: slot -> node (one connection per master). It is read with CLUSTER SLOTS when the
 * mode is decided, every REFRESH_EVERY_MS after, and soon after any sign of a change (MOVED,
 * CLUSTERDOWN, a master unreachable or lost); refreshes that fail back off up to
 * REFRESH_BACKOFF_MAX_MS. A MOVED updates its slot at once, before the refresh confirms it. A
 * node the map no longer names is closed once its last request came back.
 *
 * A request that provably never ran (refused with CLUSTERDOWN "The cluster is down", MOVED/ASK past
 * REDIS_MAX_REDIRECTS, or not sent: its node is down or the map names none) while the cluster is
 * in transition (a node lost, a MOVED or a map that moved slots within the last timeout_ms)
 * waits and goes again (backoff up to HOLD_BACKOFF_MAX_MS, sooner when the map moves or a node
 * connects) until its deadline, then fails: the nodes' views of a failover or a TAKEOVER take a
 * moment to agree. Out of a transition (a long outage) it fails at once, as a held one would
 * at its deadline anyway, and the callers' queues stay short.
 *
 * When no master of the map can be asked (every one of them gone at once: a lost rack, replicas
 * promoted by CLUSTER FAILOVER TAKEOVER), or those that can failed REFRESH_FAILS_FALLBACK times
 * in a row (a master restarted empty, out of the cluster), the map is asked of other addresses: the
 * --redis seeds, then the replicas the last map listed. Connections to them are opened then, used
 * for CLUSTER SLOTS only (never a caller's command: a slot's master is only ever taken from a map
 * or a MOVED; like every new connection they SCRIPT LOAD the script, and a SIGHUP's script while
 * its round is open, which a replica takes harmlessly and a closing one has no say in), asked
 * with backoff up to REFRESH_BACKOFF_MAX_MS, and closed once a master of the map answers again.
 *
 * Runs on its loop's thread only. */
#include "redis.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cluster_slots.h"
#include "log.h"
#include "util.h"

#define REFRESH_EVERY_MS 5000
#define REFRESH_SOON_MS 20
#define REFRESH_BACKOFF_MAX_MS 1000
#define RETRY_EVERY_MS 10       /* TRYAGAIN, or a node whose connection is still being made */
#define HOLD_BACKOFF_MAX_MS 160 /* a never-ran request in a transition (see the top) */
#define SEED_PROBE_MS 200       /* mode undecided: look for a ready seed this often */
/* Maps refused in a row by the masters that are reachable before other nodes are asked too. */
#define REFRESH_FAILS_FALLBACK 3
/* Seeds plus the replicas of a map of up to 16 masters with 3 replicas each. */
#define FALLBACK_MAX (REDIS_SEEDS_MAX + 48)

const char redis_err_cluster_down[] = "cluster cannot serve the slot";

typedef enum { MODE_UNKNOWN, MODE_STANDALONE, MODE_CLUSTER } mode_t_;

typedef struct node {
    redis_client_t *c;
    char host[CLUSTER_HOST_MAX];
    int port;
    char id[CLUSTER_ID_MAX];
    redis_conn_t *conn;
    int inflight;   /* our requests (and CLUSTER SLOTS) whose reply is still to come */
    bool retired;   /* no longer in the map: closed when inflight reaches 0 */
    bool was_ready; /* a failure of a node that never answered yet is "not yet", not "down" */
    uint64_t born_ns;
    uint64_t down_ns;       /* was ready, and is not since then; 0: ready or never was */
    struct node *next_dead; /* closed nodes stay allocated until the client is freed */
} node_t;

typedef struct rreq rreq_t;
struct rreq {
    rreq_t *next; /* retry list */
    redis_client_t *c;
    bool eval;
    int numkeys;
    int argc; /* eval: keys then args; command: the whole command */
    const char **argv;
    size_t *argvlen;
    bool routed; /* has a slot */
    unsigned slot;
    uint64_t deadline_ns;
    uint64_t due_ns; /* on the retry list: routed again from then on */
    int holds;       /* waits for a transition to settle (see the top) */
    int redirects;
    bool asking, asked;
    cluster_redirect_t ask;
    node_t *node;       /* where it was sent (cluster) */
    redis_conn_t *conn; /* where it was sent */
    redis_reply_fn fn;
    redis_wait_fn wait_fn; /* NULL: no WAIT */
    int replicas;
    uint64_t wait_ms;
    void *data;
};

struct redis_client {
    uv_loop_t *loop;
    char *script;
    uint64_t timeout_ms;
    char *user, *password;
    mode_t_ mode;
    bool closing;

    redis_conn_t *single; /* standalone */

    int n_seeds;
    cluster_seed_t seeds[REDIS_SEEDS_MAX];
    redis_conn_t *seed_conn[REDIS_SEEDS_MAX]; /* while undecided */
    bool probe_inflight;

    node_t **nodes;
    size_t n_nodes;
    node_t *slot_owner[CLUSTER_SLOTS];
    node_t *dead;       /* closed: replies of their requests may still arrive (deferred frees) */
    cluster_map_t *map; /* the last map read (owner diff) */
    bool masters_have_replicas;
    bool refresh_inflight;
    uint64_t refresh_backoff_ms;
    size_t refresh_rr; /* which node asks next */
    int refresh_fails; /* in a row, from the map's masters */

    /* No master of the map answers: where else the map is asked (see the top). */
    cluster_seed_t fallback[FALLBACK_MAX];
    redis_conn_t *fallback_conn[FALLBACK_MAX];
    int n_fallback;
    int fallback_rr;
    uint64_t fallback_backoff_ms;
    uint64_t fallback_due_ns; /* not asked again before */

    uv_timer_t refresh_timer;
    uv_timer_t retry_timer;
    rreq_t *retry_head, *retry_tail;
    uint64_t changed_ns; /* the last sign of a transition (see the top); 0: none yet */
    int open_handles;
    int live; /* request records and set_script rounds not yet finished */

    redis_owner_fn owner_fn;
    void *owner_arg;

    struct script_round *round; /* the newest script replacement not finished yet */
    uint64_t rounds;            /* replacements so far */
    uint64_t script_round;      /* the one that gave script (0: the first script) */
};

static void route(rreq_t *r);
static void on_retry_timer(uv_timer_t *t);
static void wake_retries(redis_client_t *c);
static void schedule_refresh(redis_client_t *c, uint64_t ms);
static void on_node_ready(redis_conn_t *conn, void *arg);

/* ---- lifetime ---- */

static void client_free(redis_client_t *c)
{
    while (c->dead != NULL) {
        node_t *n = c->dead;
        c->dead = n->next_dead;
        free(n);
    }
    free(c->nodes);
    if (c->map != NULL)
        cluster_map_free(c->map);
    free(c->map);
    free(c->script);
    free(c->user);
    free(c->password);
    free(c);
}

static void maybe_free_client(redis_client_t *c)
{
    if (c->closing && c->open_handles == 0 && c->live == 0)
        client_free(c);
}

static void on_handle_closed(uv_handle_t *h)
{
    redis_client_t *c = h->data;
    c->open_handles--;
    maybe_free_client(c);
}

static void round_join(redis_client_t *c, redis_conn_t *conn);

static redis_conn_t *new_conn(redis_client_t *c, const char *host, int port)
{
    redis_conn_t *conn = NULL;
    if (redis_conn_start_auth(&conn, c->loop, host, port, c->script, c->timeout_ms, c->user,
                              c->password) != 0)
        return NULL;
    round_join(c, conn);
    return conn;
}

/* ---- nodes ---- */

static void node_close(redis_client_t *c, size_t i)
{
    node_t *n = c->nodes[i];
    c->nodes[i] = c->nodes[--c->n_nodes];
    n->retired = true;
    n->next_dead = c->dead;
    c->dead = n;
    redis_conn_on_ready(n->conn, NULL, NULL);
    redis_conn_close(n->conn);
}

static void maybe_close_retired(node_t *n)
{
    redis_client_t *c = n->c;
    if (!n->retired || n->inflight > 0)
        return;
    for (size_t i = 0; i < c->n_nodes; i++)
        if (c->nodes[i] == n) {
            node_close(c, i);
            return;
        }
}

static node_t *node_find(const redis_client_t *c, const char *host, int port)
{
    for (size_t i = 0; i < c->n_nodes; i++)
        if (c->nodes[i]->port == port && strcmp(c->nodes[i]->host, host) == 0)
            return c->nodes[i];
    return NULL;
}

/* The node at host:port, made (with its connection, or adopting conn) when unknown. */
static node_t *node_get(redis_client_t *c, const char *host, int port, redis_conn_t *conn)
{
    node_t *n = node_find(c, host, port);
    if (n != NULL) {
        n->retired = false;
        return n;
    }
    node_t **grown = realloc(c->nodes, (c->n_nodes + 1) * sizeof(*grown));
    if (grown == NULL)
        return NULL;
    c->nodes = grown;
    n = calloc(1, sizeof(*n));
    if (n == NULL)
        return NULL;
    n->conn = conn != NULL ? conn : new_conn(c, host, port);
    if (n->conn == NULL) {
        free(n);
        return NULL;
    }
    n->c = c;
    snprintf(n->host, sizeof(n->host), "%s", host);
    n->port = port;
    n->born_ns = uv_hrtime();
    n->was_ready = redis_conn_ready(n->conn);
    redis_conn_on_ready(n->conn, on_node_ready, n);
    c->nodes[c->n_nodes++] = n;
    return n;
}

static node_t *any_ready_node(redis_client_t *c)
{
    for (size_t k = 0; k < c->n_nodes; k++) {
        node_t *n = c->nodes[(c->refresh_rr + k) % c->n_nodes];
        if (!n->retired && redis_conn_ready(n->conn)) {
            c->refresh_rr = (c->refresh_rr + k + 1) % c->n_nodes;
            return n;
        }
    }
    return NULL;
}

/* ---- the map ---- */

static void owner_changed(unsigned first, unsigned last, const char *old_id, const char *new_id,
                          void *arg)
{
    redis_client_t *c = arg;
    c->changed_ns = uv_hrtime();
    log_info("redis: slots %u-%u moved from master %.12s to %.12s", first, last,
             old_id[0] ? old_id : "(none)", new_id[0] ? new_id : "(none)");
    if (c->owner_fn != NULL)
        c->owner_fn(first, last, old_id, new_id, c->owner_arg);
}

/* Takes m (heap) as the map: nodes made for its masters, the others retired. */
static void install_map(redis_client_t *c, cluster_map_t *m)
{
    node_t *of[m->n_nodes > 0 ? m->n_nodes : 1];
    for (size_t i = 0; i < c->n_nodes; i++)
        c->nodes[i]->retired = true;
    for (size_t i = 0; i < m->n_nodes; i++) {
        of[i] = node_get(c, m->nodes[i].host, m->nodes[i].port, NULL);
        if (of[i] != NULL)
            snprintf(of[i]->id, sizeof(of[i]->id), "%s", m->nodes[i].id);
    }
    for (size_t s = 0; s < CLUSTER_SLOTS; s++)
        c->slot_owner[s] = m->slot_node[s] == CLUSTER_NO_NODE ? NULL : of[m->slot_node[s]];
    c->masters_have_replicas = m->masters_have_replicas;
    cluster_map_t *old = c->map;
    c->map = m;
    if (old != NULL) {
        uint64_t changed = c->changed_ns;
        cluster_map_diff(old, m, owner_changed, c);
        cluster_map_free(old);
        free(old);
        if (c->changed_ns != changed)
            wake_retries(c); /* held requests may have a route now */
    } else {
        log_info("redis: cluster of %zu masters%s", m->n_nodes,
                 m->masters_have_replicas ? ", each with a replica" : "");
    }
    if (!m->covered)
        log_warn("redis: the cluster map leaves slots without a master");
    for (size_t i = c->n_nodes; i-- > 0;)
        if (c->nodes[i]->retired && c->nodes[i]->inflight == 0)
            node_close(c, i);
}

/* Parses a CLUSTER SLOTS reply from host into a heap map; NULL (logged) when unusable. */
static cluster_map_t *read_map(const redisReply *reply, const char *host)
{
    cluster_map_t *m = malloc(sizeof(*m));
    char err[160];
    if (m == NULL)
        return NULL;
    if (cluster_map_parse(m, reply, host, err, sizeof(err)) != 0) {
        log_warn("redis: cannot read the cluster map: %s", err);
        free(m);
        return NULL;
    }
    return m;
}

static void refresh_failed(redis_client_t *c)
{
    schedule_refresh(c, c->refresh_backoff_ms);
    c->refresh_backoff_ms *= 2;
    if (c->refresh_backoff_ms > REFRESH_BACKOFF_MAX_MS)
        c->refresh_backoff_ms = REFRESH_BACKOFF_MAX_MS;
}

/* ---- no master of the map answers: the seeds and replicas ---- */

typedef struct {
    redis_client_t *c;
    char host[CLUSTER_HOST_MAX];
    int port;
} fallback_ask_t;

static void close_fallback(redis_client_t *c)
{
    for (int i = 0; i < c->n_fallback; i++) {
        redis_conn_t *f = c->fallback_conn[i];
        c->fallback_conn[i] = NULL;
        if (f == NULL)
            continue;
        redis_conn_on_ready(f, NULL, NULL);
        redis_conn_close(f);
    }
    c->n_fallback = 0;
    c->fallback_backoff_ms = REFRESH_SOON_MS;
    c->fallback_due_ns = 0;
}

static void on_fallback_ready(redis_conn_t *conn, void *arg)
{
    if (redis_conn_usable(conn))
        schedule_refresh(arg, 0);
}

/* Connections to the seeds and the last map's replicas, unless open already. */
static void open_fallback(redis_client_t *c)
{
    if (c->n_fallback > 0)
        return;
    cluster_seed_t addrs[FALLBACK_MAX];
    int n = cluster_fallback_addrs(c->seeds, c->n_seeds, c->map, addrs, FALLBACK_MAX);
    for (int i = 0; i < n; i++) {
        if (node_find(c, addrs[i].host, addrs[i].port) != NULL)
            continue; /* a node already: asked as such */
        redis_conn_t *conn = new_conn(c, addrs[i].host, addrs[i].port);
        if (conn == NULL)
            continue;
        redis_conn_on_ready(conn, on_fallback_ready, c);
        c->fallback[c->n_fallback] = addrs[i];
        c->fallback_conn[c->n_fallback++] = conn;
    }
    if (c->n_fallback > 0)
        log_warn("redis: no master of the cluster map answers: asking %d other nodes (seeds, "
                 "replicas) for the map",
                 c->n_fallback);
}

static void on_fallback_slots(redisReply *reply, const char *err, void *data)
{
    fallback_ask_t *a = data;
    redis_client_t *c = a->c;
    c->refresh_inflight = false;
    c->live--;
    cluster_map_t *m = NULL;
    if (!c->closing && reply != NULL)
        m = read_map(reply, a->host);
    (void)err;
    if (m != NULL)
        log_info("redis: cluster map read from %s:%d", a->host, a->port);
    free(a);
    if (c->closing) {
        if (m != NULL) {
            cluster_map_free(m);
            free(m);
        }
        maybe_free_client(c);
        return;
    }
    if (m != NULL) {
        install_map(c, m);
        c->refresh_fails = 0; /* the next refresh asks its masters first */
    }
    /* Asked again with backoff, until one of the map's masters answers (the map may still name
     * the masters that are gone: the node asked has not seen the failover yet). */
    refresh_failed(c);
}

/* Asks one usable fallback connection for the map, at most every fallback_backoff_ms. False
 * when none was asked (none usable, or not yet due). */
static bool ask_fallback(redis_client_t *c)
{
    open_fallback(c);
    uint64_t now = uv_hrtime();
    if (now < c->fallback_due_ns)
        return false;
    for (int k = 0; k < c->n_fallback; k++) {
        int i = (c->fallback_rr + k) % c->n_fallback;
        redis_conn_t *f = c->fallback_conn[i];
        if (!redis_conn_usable(f))
            continue;
        fallback_ask_t *a = malloc(sizeof(*a));
        if (a == NULL)
            break;
        c->fallback_rr = i + 1;
        c->fallback_due_ns = now + c->fallback_backoff_ms * 1000000u;
        c->fallback_backoff_ms *= 2;
        if (c->fallback_backoff_ms > REFRESH_BACKOFF_MAX_MS)
            c->fallback_backoff_ms = REFRESH_BACKOFF_MAX_MS;
        a->c = c;
        snprintf(a->host, sizeof(a->host), "%s", c->fallback[i].host);
        a->port = c->fallback[i].port;
        static const char *argv[] = {"CLUSTER", "SLOTS"};
        static const size_t lens[] = {7, 5};
        c->refresh_inflight = true;
        c->live++;
        redis_conn_command(f, on_fallback_slots, a, 2, argv, lens);
        return true;
    }
    return false;
}

static void on_slots(redisReply *reply, const char *err, void *data)
{
    node_t *n = data;
    redis_client_t *c = n->c;
    n->inflight--;
    c->refresh_inflight = false;
    cluster_map_t *m = NULL;
    if (!c->closing && reply != NULL)
        m = read_map(reply, n->host);
    (void)err;
    maybe_close_retired(n);
    if (c->closing)
        return;
    if (m == NULL) {
        c->refresh_fails++;
        refresh_failed(c);
        return;
    }
    c->refresh_fails = 0;
    c->refresh_backoff_ms = REFRESH_SOON_MS;
    if (c->n_fallback > 0)
        log_info("redis: %s:%d, a master of the cluster map, answers again", n->host, n->port);
    close_fallback(c);
    install_map(c, m);
    schedule_refresh(c, REFRESH_EVERY_MS);
}

static void send_refresh(redis_client_t *c)
{
    if (c->refresh_inflight || c->closing)
        return;
    node_t *n = any_ready_node(c);
    if ((n == NULL || c->refresh_fails >= REFRESH_FAILS_FALLBACK) && ask_fallback(c))
        return;
    if (n == NULL) {
        refresh_failed(c);
        return;
    }
    static const char *argv[] = {"CLUSTER", "SLOTS"};
    static const size_t lens[] = {7, 5};
    c->refresh_inflight = true;
    n->inflight++;
    redis_conn_command(n->conn, on_slots, n, 2, argv, lens);
}

/* ---- deciding the mode ---- */

static void close_seeds(redis_client_t *c, const redis_conn_t *keep)
{
    for (int i = 0; i < c->n_seeds; i++) {
        redis_conn_t *s = c->seed_conn[i];
        c->seed_conn[i] = NULL;
        if (s == NULL || s == keep)
            continue;
        redis_conn_on_ready(s, NULL, NULL);
        redis_conn_close(s);
    }
}

typedef struct {
    redis_client_t *c;
    int seed;
} probe_t;

static void on_probe(redisReply *reply, const char *err, void *data)
{
    probe_t *p = data;
    redis_client_t *c = p->c;
    int i = p->seed;
    free(p);
    c->probe_inflight = false;
    c->live--;
    if (c->closing) {
        maybe_free_client(c);
        return;
    }
    redis_conn_t *conn = c->seed_conn[i];
    if (reply == NULL || conn == NULL) {
        (void)err;
        return; /* the probe timer tries again */
    }
    cluster_redirect_t unused;
    if (cluster_reply_error(reply, &unused) == CLUSTER_ERR_DISABLED) {
        c->mode = MODE_STANDALONE;
        c->single = conn;
        redis_conn_on_ready(conn, NULL, NULL);
        close_seeds(c, conn);
        uv_timer_stop(&c->refresh_timer);
        return;
    }
    /* "Not now" rather than "no cluster here": the mode is not decided on it. */
    if (reply->type == REDIS_REPLY_ERROR && redis_err_transient(reply->str)) {
        return; /* asked again by the probe timer */
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        log_warn("redis: CLUSTER SLOTS refused on %s:%d (%s): taken as a standalone server",
                 c->seeds[i].host, c->seeds[i].port, reply->str);
        c->mode = MODE_STANDALONE;
        c->single = conn;
        redis_conn_on_ready(conn, NULL, NULL);
        close_seeds(c, conn);
        uv_timer_stop(&c->refresh_timer);
        return;
    }
    cluster_map_t *m = read_map(reply, c->seeds[i].host);
    if (m == NULL)
        return;
    c->mode = MODE_CLUSTER;
    /* A seed that is a master keeps its connection as that master's. */
    for (int k = 0; k < c->n_seeds; k++) {
        if (c->seed_conn[k] == NULL || cluster_map_find(m, c->seeds[k].host, c->seeds[k].port) < 0)
            continue;
        redis_conn_t *adopt = c->seed_conn[k];
        c->seed_conn[k] = NULL;
        if (node_get(c, c->seeds[k].host, c->seeds[k].port, adopt) == NULL) {
            redis_conn_on_ready(adopt, NULL, NULL);
            redis_conn_close(adopt);
        }
    }
    close_seeds(c, NULL);
    install_map(c, m);
    schedule_refresh(c, REFRESH_EVERY_MS);
}

static void probe(redis_client_t *c)
{
    if (c->mode != MODE_UNKNOWN || c->probe_inflight || c->closing)
        return;
    for (int i = 0; i < c->n_seeds; i++) {
        if (c->seed_conn[i] == NULL || !redis_conn_usable(c->seed_conn[i]))
            continue;
        probe_t *p = malloc(sizeof(*p));
        if (p == NULL)
            return;
        p->c = c;
        p->seed = i;
        c->probe_inflight = true;
        c->live++;
        static const char *argv[] = {"CLUSTER", "SLOTS"};
        static const size_t lens[] = {7, 5};
        redis_conn_command(c->seed_conn[i], on_probe, p, 2, argv, lens);
        return;
    }
}

static void on_seed_ready(redis_conn_t *conn, void *arg)
{
    (void)conn;
    probe(arg);
}

static void on_refresh_timer(uv_timer_t *t)
{
    redis_client_t *c = t->data;
    if (c->mode == MODE_UNKNOWN) {
        probe(c);
        uv_timer_start(&c->refresh_timer, on_refresh_timer, SEED_PROBE_MS, 0);
        return;
    }
    if (c->mode == MODE_CLUSTER)
        send_refresh(c);
}

/* Reads the map again in ms at the latest. */
static void schedule_refresh(redis_client_t *c, uint64_t ms)
{
    if (c->closing || c->mode != MODE_CLUSTER)
        return;
    if (uv_is_active((uv_handle_t *)&c->refresh_timer) &&
        uv_timer_get_due_in(&c->refresh_timer) <= ms)
        return;
    uv_timer_start(&c->refresh_timer, on_refresh_timer, ms, 0);
}

void redis_client_refresh(redis_client_t *c)
{
    schedule_refresh(c, 0);
}

/* ---- requests (cluster, and WAIT) ---- */

static void rreq_free(rreq_t *r)
{
    redis_client_t *c = r->c;
    free(r);
    c->live--;
    maybe_free_client(c);
}

/* Ends r without a reply. */
static void rreq_fail(rreq_t *r, const char *err)
{
    r->fn(NULL, err, r->data);
    rreq_free(r);
}

static bool is_eval_name(const char *s, size_t len)
{
    return (len == 4 && strncasecmp(s, "EVAL", 4) == 0) ||
           (len == 7 && strncasecmp(s, "EVALSHA", 7) == 0);
}

/* A record with a copy of argv (one allocation). */
static rreq_t *rreq_new(redis_client_t *c, int argc, const char **argv, const size_t *argvlen)
{
    size_t data = 0;
    for (int i = 0; i < argc; i++)
        data += argvlen ? argvlen[i] : strlen(argv[i]);
    size_t n = (size_t)argc;
    rreq_t *r = malloc(sizeof(*r) + n * (sizeof(char *) + sizeof(size_t)) + data);
    if (r == NULL)
        return NULL;
    memset(r, 0, sizeof(*r));
    r->c = c;
    r->argc = argc;
    r->argv = (const char **)(void *)(r + 1);
    r->argvlen = (size_t *)(void *)(r->argv + n);
    char *p = (char *)(r->argvlen + n);
    for (int i = 0; i < argc; i++) {
        size_t len = argvlen ? argvlen[i] : strlen(argv[i]);
        memcpy(p, argv[i], len);
        r->argv[i] = p;
        r->argvlen[i] = len;
        p += len;
    }
    r->deadline_ns = uv_hrtime() + c->timeout_ms * 1000000u;
    c->live++;
    return r;
}

/* Puts r on the retry list, routed again at r->due_ns. */
static void enqueue_retry(rreq_t *r)
{
    redis_client_t *c = r->c;
    r->next = NULL;
    if (c->retry_tail != NULL)
        c->retry_tail->next = r;
    else
        c->retry_head = r;
    c->retry_tail = r;
    uint64_t now = uv_hrtime();
    uint64_t ms = r->due_ns > now ? (r->due_ns - now + 999999u) / 1000000u : 0;
    if (uv_is_active((uv_handle_t *)&c->retry_timer) && uv_timer_get_due_in(&c->retry_timer) <= ms)
        return;
    uv_timer_start(&c->retry_timer, on_retry_timer, ms, 0);
}

/* Routes r again in ms, or at its deadline if that comes first (where route fails it). */
static void retry_in(rreq_t *r, uint64_t ms)
{
    if (r->c->closing) { /* the retry timer is closed or closing */
        rreq_fail(r, redis_err_closing);
        return;
    }
    uint64_t due = uv_hrtime() + ms * 1000000u;
    r->due_ns = due < r->deadline_ns ? due : r->deadline_ns;
    enqueue_retry(r);
}

static void retry_later(rreq_t *r)
{
    retry_in(r, RETRY_EVERY_MS);
}

static void wake_retries(redis_client_t *c)
{
    if (c->retry_head == NULL)
        return;
    for (rreq_t *r = c->retry_head; r != NULL; r = r->next)
        r->due_ns = 0;
    uv_timer_start(&c->retry_timer, on_retry_timer, 0, 0);
}

static void on_retry_timer(uv_timer_t *t)
{
    redis_client_t *c = t->data;
    rreq_t *r = c->retry_head;
    c->retry_head = c->retry_tail = NULL;
    /* The loop's clock, which fired the timer, may lag uv_hrtime by up to a millisecond. */
    uint64_t now = uv_hrtime() + 1000000u;
    while (r != NULL) {
        rreq_t *next = r->next;
        if (r->due_ns <= now)
            route(r);
        else
            enqueue_retry(r);
        r = next;
    }
}

static bool in_transition(const redis_client_t *c)
{
    return c->changed_ns != 0 && uv_hrtime() - c->changed_ns < c->timeout_ms * 1000000u;
}

/* r never ran. In a transition, or already waiting for one to settle, it goes again after a
 * backoff (never past its deadline); otherwise it fails now (see the top). */
static void hold_or_fail(rreq_t *r)
{
    redis_client_t *c = r->c;
    schedule_refresh(c, REFRESH_SOON_MS);
    if (r->holds == 0 && !in_transition(c)) {
        rreq_fail(r, redis_err_cluster_down);
        return;
    }
    uint64_t ms = (uint64_t)RETRY_EVERY_MS << (r->holds < 5 ? r->holds : 5);
    r->holds++;
    retry_in(r, ms < HOLD_BACKOFF_MAX_MS ? ms : HOLD_BACKOFF_MAX_MS);
}

static void on_wait_reply(redisReply *reply, const char *err, void *data)
{
    rreq_t *r = data;
    if (r->node != NULL) {
        r->node->inflight--;
        maybe_close_retired(r->node);
    }
    if (reply != NULL && reply->type == REDIS_REPLY_INTEGER)
        r->wait_fn(reply->integer, NULL, r->data);
    else
        r->wait_fn(-1, reply != NULL ? redis_err_unsupported : err, r->data);
    rreq_free(r);
}

/* The caller has its reply; now WAIT on the connection that gave it. */
static void send_wait(rreq_t *r)
{
    char n[16], ms[24];
    const char *argv[] = {"WAIT", n, ms};
    size_t lens[3] = {4};
    lens[1] = (size_t)snprintf(n, sizeof(n), "%d", r->replicas);
    lens[2] = (size_t)snprintf(ms, sizeof(ms), "%" PRIu64, r->wait_ms > 0 ? r->wait_ms : 1);
    if (r->c->closing) {
        r->wait_fn(-1, redis_err_closing, r->data);
        rreq_free(r);
        return;
    }
    if (r->node != NULL)
        r->node->inflight++;
    redis_conn_command(r->conn, on_wait_reply, r, 3, argv, lens);
}

/* The reply goes to the caller (then WAIT when asked). */
static void deliver(rreq_t *r, redisReply *reply, const char *err)
{
    r->fn(reply, err, r->data);
    if (r->wait_fn != NULL && r->replicas > 0 && reply != NULL &&
        reply->type != REDIS_REPLY_ERROR) {
        send_wait(r);
        return;
    }
    rreq_free(r);
}

static const char *host_or(const char *host, const node_t *n)
{
    return host[0] != '\0' || n == NULL ? host : n->host;
}

static void on_routed_reply(redisReply *reply, const char *err, void *data)
{
    rreq_t *r = data;
    redis_client_t *c = r->c;
    node_t *n = r->node;
    n->inflight--;
    if (reply == NULL) {
        maybe_close_retired(n);
        if (err == redis_err_not_connected || err == redis_err_not_ready) {
            hold_or_fail(r); /* never sent */
            return;
        }
        if (err == redis_err_no_script) {
            schedule_refresh(c, REFRESH_SOON_MS);
            rreq_fail(r, redis_err_cluster_down); /* never sent */
            return;
        }
        if (err == redis_err_lost) {
            if (n->down_ns == 0)
                n->down_ns = c->changed_ns = uv_hrtime();
            schedule_refresh(c, REFRESH_SOON_MS);
        }
        rreq_fail(r, err);
        return;
    }
    cluster_redirect_t to;
    switch (cluster_reply_error(reply, &to)) {
    case CLUSTER_ERR_MOVED:
        c->changed_ns = uv_hrtime();
        schedule_refresh(c, REFRESH_SOON_MS);
        if (++r->redirects > REDIS_MAX_REDIRECTS) {
            maybe_close_retired(n);
            hold_or_fail(r); /* nodes naming each other: their views differ for now */
            return;
        }
        node_t *dest = node_get(c, host_or(to.host, n), to.port, NULL);
        if (dest == NULL)
            break;
        c->slot_owner[to.slot] = dest;
        maybe_close_retired(n);
        r->asking = false;
        route(r);
        return;
    case CLUSTER_ERR_ASK:
        if (r->asked || ++r->redirects > REDIS_MAX_REDIRECTS) {
            maybe_close_retired(n);
            hold_or_fail(r); /* next time from the slot's owner */
            return;
        }
        if (to.host[0] == '\0')
            snprintf(to.host, sizeof(to.host), "%s", n->host);
        r->ask = to;
        r->asking = true;
        maybe_close_retired(n);
        route(r);
        return;
    case CLUSTER_ERR_TRYAGAIN:
        maybe_close_retired(n);
        retry_later(r);
        return;
    case CLUSTER_ERR_CLUSTERDOWN:
        maybe_close_retired(n);
        /* "Hash slot not served": the node knows no owner of the slot (it is out of the
         * cluster, or the slot was never given): an outage, not a moment of a failover. */
        if (strstr(reply->str, "not served") != NULL) {
            schedule_refresh(c, REFRESH_SOON_MS);
            rreq_fail(r, redis_err_cluster_down);
            return;
        }
        hold_or_fail(r);
        return;
    default:
        maybe_close_retired(n);
        deliver(r, reply, NULL);
        return;
    }
    maybe_close_retired(n);
    rreq_fail(r, redis_err_cluster_down);
}

static void ignore_reply(redisReply *reply, const char *err, void *data)
{
    (void)reply;
    (void)err;
    (void)data;
}

static void route(rreq_t *r)
{
    redis_client_t *c = r->c;
    if (c->closing) {
        rreq_fail(r, redis_err_closing);
        return;
    }
    if (uv_hrtime() >= r->deadline_ns) {
        rreq_fail(r, redis_err_cluster_down); /* waited for a node that never came */
        return;
    }
    node_t *n;
    if (r->asking)
        n = node_get(c, r->ask.host, r->ask.port, NULL);
    else if (r->routed)
        n = c->slot_owner[r->slot];
    else
        n = any_ready_node(c);
    if (n == NULL) {
        hold_or_fail(r);
        return;
    }
    if (!redis_conn_ready(n->conn)) {
        /* A node met a moment ago is still connecting: wait for it, within the deadline. One
         * that was up is down: the map will tell where its slots went; until then the request
         * waits in a transition, and fails now (503) in a long outage. */
        if (!n->was_ready && uv_hrtime() - n->born_ns < c->timeout_ms * 1000000u) {
            retry_later(r);
            return;
        }
        if (n->was_ready && n->down_ns == 0)
            n->down_ns = c->changed_ns = uv_hrtime(); /* just lost (nothing was in flight) */
        hold_or_fail(r);
        return;
    }
    r->node = n;
    r->conn = n->conn;
    n->inflight++;
    if (r->asking) {
        static const char *asking[] = {"ASKING"};
        static const size_t len[] = {6};
        r->asking = false;
        r->asked = true;
        redis_conn_command(n->conn, ignore_reply, NULL, 1, asking, len);
    }
    if (r->eval)
        redis_conn_eval(n->conn, on_routed_reply, r, r->numkeys, r->argc, r->argv, r->argvlen);
    else
        redis_conn_command(n->conn, on_routed_reply, r, r->argc, r->argv, r->argvlen);
}

static void on_node_ready(redis_conn_t *conn, void *arg)
{
    node_t *n = arg;
    /* Called when usable too: a node whose script is still loading is not up yet. */
    if (redis_conn_ready(conn)) {
        n->was_ready = true;
        n->down_ns = 0;
    }
    wake_retries(n->c);
}

/* ---- standalone WAIT ---- */

static void on_single_eval(redisReply *reply, const char *err, void *data)
{
    deliver(data, reply, err);
}

/* ---- public API ---- */

static void client_abort(redis_client_t *c)
{
    for (int i = 0; i < c->n_seeds; i++)
        if (c->seed_conn[i] != NULL)
            redis_conn_close(c->seed_conn[i]);
    free(c->script);
    free(c->user);
    free(c->password);
    free(c);
}

int redis_client_start_seeds(redis_client_t **out, uv_loop_t *loop, const char *seeds,
                             const char *script, uint64_t timeout_ms, const char *user,
                             const char *password)
{
    *out = NULL;
    if (loop == NULL || script == NULL)
        return -EINVAL;
    redis_client_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return -ENOMEM;
    c->n_seeds = cluster_parse_seeds(seeds, c->seeds, REDIS_SEEDS_MAX);
    if (c->n_seeds < 1) {
        free(c);
        return -EINVAL;
    }
    c->loop = loop;
    c->timeout_ms = timeout_ms;
    c->refresh_backoff_ms = REFRESH_SOON_MS;
    c->fallback_backoff_ms = REFRESH_SOON_MS;
    c->script = strdup(script);
    c->user = user != NULL ? strdup(user) : NULL;
    c->password = password != NULL ? strdup(password) : NULL;
    if (c->script == NULL || (user != NULL && c->user == NULL) ||
        (password != NULL && c->password == NULL)) {
        client_abort(c);
        return -ENOMEM;
    }
    for (int i = 0; i < c->n_seeds; i++) {
        int rc = redis_conn_start_auth(&c->seed_conn[i], loop, c->seeds[i].host, c->seeds[i].port,
                                       script, timeout_ms, user, password);
        if (rc != 0) {
            client_abort(c);
            return rc;
        }
        redis_conn_on_ready(c->seed_conn[i], on_seed_ready, c);
    }
    uv_timer_init(loop, &c->refresh_timer);
    uv_timer_init(loop, &c->retry_timer);
    c->refresh_timer.data = c;
    c->retry_timer.data = c;
    c->open_handles = 2;
    uv_timer_start(&c->refresh_timer, on_refresh_timer, SEED_PROBE_MS, 0);
    *out = c;
    return 0;
}

int redis_client_start_auth(redis_client_t **out, uv_loop_t *loop, const char *host, int port,
                            const char *script, uint64_t timeout_ms, const char *user,
                            const char *password)
{
    char seed[CLUSTER_HOST_MAX + 16];
    *out = NULL;
    if (host == NULL || port <= 0 || port > 65535)
        return -EINVAL;
    snprintf(seed, sizeof(seed), "%s:%d", host, port);
    return redis_client_start_seeds(out, loop, seed, script, timeout_ms, user, password);
}

int redis_client_start(redis_client_t **out, uv_loop_t *loop, const char *host, int port,
                       const char *script, uint64_t timeout_ms)
{
    return redis_client_start_auth(out, loop, host, port, script, timeout_ms, NULL, NULL);
}

bool redis_client_ready(const redis_client_t *c)
{
    if (c == NULL || c->closing)
        return false;
    if (c->mode == MODE_STANDALONE)
        return redis_conn_ready(c->single);
    if (c->mode != MODE_CLUSTER)
        return false;
    for (size_t i = 0; i < c->n_nodes; i++)
        if (!c->nodes[i]->retired && redis_conn_ready(c->nodes[i]->conn))
            return true;
    return false;
}

bool redis_client_is_cluster(const redis_client_t *c)
{
    return c != NULL && c->mode == MODE_CLUSTER;
}

bool redis_client_masters_have_replicas(const redis_client_t *c)
{
    return redis_client_is_cluster(c) && c->masters_have_replicas;
}

/* Why nothing can be sent while the mode is undecided (or the client closes), or NULL. */
static const char *not_routable(const redis_client_t *c)
{
    if (c->closing)
        return redis_err_closing;
    if (c->mode == MODE_UNKNOWN)
        return redis_err_not_connected;
    return NULL;
}

void redis_command_at(redis_client_t *c, const char *key, size_t keylen, redis_reply_fn fn,
                      void *data, int argc, const char **argv, const size_t *argvlen)
{
    const char *why = not_routable(c);
    if (why != NULL) {
        fn(NULL, why, data);
        return;
    }
    if (c->mode == MODE_STANDALONE) {
        redis_conn_command(c->single, fn, data, argc, argv, argvlen);
        return;
    }
    if (argc < 1 || argv == NULL) {
        fn(NULL, redis_err_bad_args, data);
        return;
    }
    rreq_t *r = rreq_new(c, argc, argv, argvlen);
    if (r == NULL) {
        fn(NULL, redis_err_nomem, data);
        return;
    }
    r->fn = fn;
    r->data = data;
    r->routed = key != NULL;
    r->slot = key != NULL ? cluster_key_slot(key, keylen) : 0;
    route(r);
}

void redis_command(redis_client_t *c, redis_reply_fn fn, void *data, int argc, const char **argv,
                   const size_t *argvlen)
{
    if (c->mode == MODE_STANDALONE || argc < 2 || argv == NULL) {
        redis_command_at(c, NULL, 0, fn, data, argc, argv, argvlen);
        return;
    }
#define LEN(i) (argvlen ? argvlen[i] : strlen(argv[i]))
    int k = 1;
    if (is_eval_name(argv[0], LEN(0))) {
        int64_t nk = 0;
        if (argc < 3 || util_parse_i64(argv[2], LEN(2), 0, argc - 3, &nk) != 0) {
            fn(NULL, redis_err_bad_args, data);
            return;
        }
        if (nk == 0) {
            redis_command_at(c, NULL, 0, fn, data, argc, argv, argvlen);
            return;
        }
        k = 3;
    }
    redis_command_at(c, argv[k], LEN(k), fn, data, argc, argv, argvlen);
#undef LEN
}

void redis_eval_wait(redis_client_t *c, redis_reply_fn fn, redis_wait_fn wait_fn, void *data,
                     int replicas, uint64_t wait_ms, int numkeys, int argc, const char **argv,
                     const size_t *argvlen)
{
    const char *why = not_routable(c);
    if (why != NULL) {
        fn(NULL, why, data);
        return;
    }
    bool wait = wait_fn != NULL && replicas > 0;
    if (c->mode == MODE_STANDALONE && !wait) {
        redis_conn_eval(c->single, fn, data, numkeys, argc, argv, argvlen);
        return;
    }
    if (numkeys < 0 || argc < numkeys || (argc > 0 && argv == NULL)) {
        fn(NULL, redis_err_bad_args, data);
        return;
    }
    /* Standalone needs no copy: the connection copies, and nothing is resent by us. */
    rreq_t *r =
        c->mode == MODE_STANDALONE ? rreq_new(c, 0, NULL, NULL) : rreq_new(c, argc, argv, argvlen);
    if (r == NULL) {
        fn(NULL, redis_err_nomem, data);
        return;
    }
    r->fn = fn;
    r->data = data;
    r->eval = true;
    r->numkeys = numkeys;
    r->wait_fn = wait ? wait_fn : NULL;
    r->replicas = replicas;
    r->wait_ms = wait_ms;
    if (c->mode == MODE_STANDALONE) {
        r->conn = c->single;
        redis_conn_eval(c->single, on_single_eval, r, numkeys, argc, argv, argvlen);
        return;
    }
    r->routed = numkeys > 0;
    r->slot = numkeys > 0 ? cluster_key_slot(r->argv[0], r->argvlen[0]) : 0;
    route(r);
}

void redis_eval(redis_client_t *c, redis_reply_fn fn, void *data, int numkeys, int argc,
                const char **argv, const size_t *argvlen)
{
    redis_eval_wait(c, fn, NULL, data, 0, 0, numkeys, argc, argv, argvlen);
}

/* ---- script replacement ---- */

/* One SIGHUP's script on every connection. A connection that cannot take it now keeps it
 * parked (redis_conn_set_script), so the round ends only when every node answered; one that is
 * closed meanwhile (its node left the map, a seed once the mode is known) has no say, and a
 * connection made meanwhile is asked too. */
typedef struct script_round {
    redis_client_t *c;
    uint64_t seq;
    int waiting;
    int accepted;
    const char *err; /* the first refusal */
    char *script;
    void (*on_done)(int ok, const char *err, void *arg);
    void *arg;
} script_round_t;

static void round_step(script_round_t *s)
{
    redis_client_t *c = s->c;
    if (--s->waiting > 0)
        return;
    if (c->round == s)
        c->round = NULL;
    if (s->err == NULL && s->accepted == 0)
        s->err = redis_err_not_connected;
    if (s->err == NULL && s->seq > c->script_round) {
        free(c->script);
        c->script = s->script; /* connections made from now on load it */
        s->script = NULL;
        c->script_round = s->seq;
    }
    s->on_done(s->err == NULL, s->err, s->arg);
    free(s->script);
    free(s);
    c->live--;
    maybe_free_client(c);
}

static void on_conn_script(int ok, const char *err, void *arg)
{
    script_round_t *s = arg;
    if (ok)
        s->accepted++;
    else if (s->err == NULL && (err != redis_err_closing || s->c->closing))
        s->err = err;
    round_step(s);
}

static void round_join(redis_client_t *c, redis_conn_t *conn)
{
    if (c->round == NULL)
        return;
    c->round->waiting++;
    redis_conn_set_script(conn, c->round->script, on_conn_script, c->round);
}

bool redis_client_script_parked(const redis_client_t *c)
{
    if (c->single != NULL)
        return redis_conn_script_parked(c->single);
    for (int i = 0; i < c->n_seeds; i++)
        if (redis_conn_script_parked(c->seed_conn[i]))
            return true;
    for (size_t i = 0; i < c->n_nodes; i++)
        if (redis_conn_script_parked(c->nodes[i]->conn))
            return true;
    return false;
}

void redis_client_set_script(redis_client_t *c, const char *script,
                             void (*on_done)(int ok, const char *err, void *arg), void *arg)
{
    if (c->closing) {
        on_done(0, redis_err_closing, arg);
        return;
    }
    if (c->mode == MODE_STANDALONE) {
        redis_conn_set_script(c->single, script, on_done, arg);
        return;
    }
    /* Undecided, the seeds get it: a first script that did not compile kept them from being
     * ready, so this is what lets the mode be decided. */
    redis_conn_t *conns[REDIS_SEEDS_MAX + c->n_nodes];
    size_t n = 0;
    for (int i = 0; i < c->n_seeds; i++)
        if (c->seed_conn[i] != NULL)
            conns[n++] = c->seed_conn[i];
    for (size_t i = 0; i < c->n_nodes; i++)
        conns[n++] = c->nodes[i]->conn;
    if (n == 0) {
        on_done(0, redis_err_not_connected, arg);
        return;
    }
    script_round_t *s = calloc(1, sizeof(*s));
    if (s == NULL || (s->script = strdup(script)) == NULL) {
        free(s);
        on_done(0, redis_err_nomem, arg);
        return;
    }
    s->c = c;
    s->seq = ++c->rounds;
    s->on_done = on_done;
    s->arg = arg;
    s->waiting = (int)n + 1; /* + this call, so an early answer cannot finish it */
    c->live++;
    c->round = s;
    for (size_t i = 0; i < n; i++)
        redis_conn_set_script(conns[i], script, on_conn_script, s);
    round_step(s);
}

/* ---- the rest ---- */

const char *redis_node_id(const redis_client_t *c, const char *key, size_t keylen)
{
    if (c == NULL || c->mode != MODE_CLUSTER)
        return NULL;
    const node_t *n = c->slot_owner[cluster_key_slot(key, keylen)];
    return n != NULL && n->id[0] != '\0' ? n->id : NULL;
}

void redis_client_on_owner_change(redis_client_t *c, redis_owner_fn fn, void *arg)
{
    c->owner_fn = fn;
    c->owner_arg = arg;
}

void redis_client_close(redis_client_t *c)
{
    if (c == NULL || c->closing)
        return;
    c->closing = true;
    uv_timer_stop(&c->retry_timer);
    rreq_t *r = c->retry_head;
    c->retry_head = c->retry_tail = NULL;
    c->live++; /* not freed from inside the loops below */
    while (r != NULL) {
        rreq_t *next = r->next;
        rreq_fail(r, redis_err_closing);
        r = next;
    }
    close_seeds(c, NULL);
    close_fallback(c);
    if (c->single != NULL)
        redis_conn_close(c->single);
    c->single = NULL;
    while (c->n_nodes > 0)
        node_close(c, c->n_nodes - 1);
    uv_close((uv_handle_t *)&c->refresh_timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->retry_timer, on_handle_closed);
    c->live--;
    maybe_free_client(c);
}
