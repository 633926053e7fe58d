/* Blocking Redis for reconciliation, standalone or cluster (see cluster_sync.h). */
#include "cluster_sync.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluster_slots.h"

#define SEEDS_MAX 16
/* A slot moves once per migration or failover: more hops than this is a loop. */
#define REDIRECTS_MAX 5
/* TRYAGAIN lasts while a migration splits a multi-key command's keys: ~1 s in all. */
#define TRYAGAIN_MAX 20
#define TRYAGAIN_MS 50

typedef struct link {
    char host[CLUSTER_HOST_MAX];
    int port;
    redisContext *ctx; /* NULL until needed, or after it broke */
} link_t;

struct rsync {
    cluster_seed_t seeds[SEEDS_MAX];
    int n_seeds;
    const auth_config_t *auth;
    struct timeval tv;
    bool cluster;
    /* Standalone: one, the server. Cluster: the masters of the last map read, then nodes a
     * MOVED or ASK named since (a promoted replica, a node the map did not list yet). */
    link_t *links;
    size_t n_links;
    size_t n_masters;
    uint16_t slot_link[CLUSTER_SLOTS]; /* index into links, or CLUSTER_NO_NODE */
    /* The replicas of the last map: asked for the map after the seeds when no master answers. */
    cluster_seed_t *replicas;
    size_t n_replicas;
    unsigned long redirects;
};

static redisContext *dial(const rsync_t *rs, const char *host, int port, char *err, size_t errlen)
{
    redisContext *c = redisConnectWithTimeout(host, port, rs->tv);
    if (c == NULL || c->err) {
        snprintf(err, errlen, "%s:%d: %s", host, port, c ? c->errstr : "out of memory");
        if (c != NULL)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, rs->tv);
    char why[256];
    if (rs->auth != NULL && auth_redis_sync(c, rs->auth, why, sizeof(why)) != 0) {
        snprintf(err, errlen, "%s:%d: %s", host, port, why);
        redisFree(c);
        return NULL;
    }
    return c;
}

static void drop_links(link_t *links, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (links[i].ctx != NULL)
            redisFree(links[i].ctx);
    free(links);
}

/* Index of host:port in links, or -1. */
static int find_link(const link_t *links, size_t n, const char *host, int port)
{
    for (size_t i = 0; i < n; i++)
        if (links[i].port == port && strcmp(links[i].host, host) == 0)
            return (int)i;
    return -1;
}

/* Index of the link to host:port, added (not connected) when new; -1 when out of memory. */
static int link_to(rsync_t *rs, const char *host, int port)
{
    int i = find_link(rs->links, rs->n_links, host, port);
    if (i >= 0)
        return i;
    if (rs->n_links >= CLUSTER_NO_NODE)
        return -1;
    link_t *grown = realloc(rs->links, (rs->n_links + 1) * sizeof(*grown));
    if (grown == NULL)
        return -1;
    rs->links = grown;
    link_t *l = &rs->links[rs->n_links];
    snprintf(l->host, sizeof(l->host), "%s", host);
    l->port = port;
    l->ctx = NULL;
    return (int)rs->n_links++;
}

/* Takes m's masters and slots (m is freed): a link per master, keeping the connections of those
 * already known; links only a redirection had named go. */
static int adopt_map(rsync_t *rs, cluster_map_t *m, char *err, size_t errlen)
{
    link_t *links = calloc(m->n_nodes > 0 ? m->n_nodes : 1, sizeof(*links));
    if (links == NULL) {
        snprintf(err, errlen, "out of memory");
        cluster_map_free(m);
        return -1;
    }
    for (size_t i = 0; i < m->n_nodes; i++) {
        snprintf(links[i].host, sizeof(links[i].host), "%s", m->nodes[i].host);
        links[i].port = m->nodes[i].port;
        int k = find_link(rs->links, rs->n_links, links[i].host, links[i].port);
        if (k >= 0) {
            links[i].ctx = rs->links[k].ctx;
            rs->links[k].ctx = NULL;
        }
    }
    drop_links(rs->links, rs->n_links);
    rs->links = links;
    rs->n_links = m->n_nodes;
    rs->n_masters = m->n_nodes;
    memcpy(rs->slot_link, m->slot_node, sizeof(rs->slot_link));
    free(rs->replicas);
    rs->replicas = m->replicas;
    rs->n_replicas = m->n_replicas;
    m->replicas = NULL;
    m->n_replicas = 0;
    cluster_map_free(m);
    return 0;
}

/* CLUSTER SLOTS on c (at host). 1: standalone, 0: cluster map read into m, -1: err. */
static int ask_slots(redisContext *c, const char *host, cluster_map_t *m, char *err, size_t errlen)
{
    redisReply *r = redisCommand(c, "CLUSTER SLOTS");
    if (r == NULL) {
        snprintf(err, errlen, "CLUSTER SLOTS: %s", c->errstr);
        return -1;
    }
    int rc;
    if (cluster_reply_error(r, NULL) == CLUSTER_ERR_DISABLED)
        rc = 1;
    else
        rc = cluster_map_parse(m, r, host, err, errlen);
    freeReplyObject(r);
    return rc;
}

rsync_t *rsync_open(const char *seeds, const auth_config_t *auth, int timeout_ms, char *err,
                    size_t errlen)
{
    rsync_t *rs = calloc(1, sizeof(*rs));
    if (rs == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    rs->n_seeds = cluster_parse_seeds(seeds, rs->seeds, SEEDS_MAX);
    if (rs->n_seeds < 1) {
        snprintf(err, errlen, "'%s' is not HOST:PORT[,HOST:PORT...] (numeric addresses)",
                 seeds ? seeds : "");
        free(rs);
        return NULL;
    }
    rs->auth = auth;
    rs->tv = (struct timeval){timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    for (size_t s = 0; s < CLUSTER_SLOTS; s++)
        rs->slot_link[s] = CLUSTER_NO_NODE;
    for (int i = 0; i < rs->n_seeds; i++) {
        const cluster_seed_t *sd = &rs->seeds[i];
        redisContext *c = dial(rs, sd->host, sd->port, err, errlen);
        if (c == NULL)
            continue;
        cluster_map_t m;
        int kind = ask_slots(c, sd->host, &m, err, errlen);
        if (kind < 0) {
            redisFree(c);
            continue;
        }
        if (kind == 1) {
            rs->links = calloc(1, sizeof(*rs->links));
            if (rs->links == NULL) {
                redisFree(c);
                break;
            }
            snprintf(rs->links[0].host, sizeof(rs->links[0].host), "%s", sd->host);
            rs->links[0].port = sd->port;
            rs->links[0].ctx = c;
            rs->n_links = 1;
            rs->n_masters = 1;
            return rs;
        }
        rs->cluster = true;
        redisFree(c);
        if (adopt_map(rs, &m, err, errlen) == 0)
            return rs;
        break;
    }
    rsync_close(rs);
    return NULL;
}

/* The i-th address asked for the map after the masters: a seed, then a replica of the last map. */
static const cluster_seed_t *other_addr(const rsync_t *rs, size_t i)
{
    size_t n_seeds = (size_t)rs->n_seeds;
    return i < n_seeds ? &rs->seeds[i] : &rs->replicas[i - n_seeds];
}

int rsync_refresh(rsync_t *rs, char *err, size_t errlen)
{
    if (!rs->cluster)
        return 0;
    snprintf(err, errlen, "no cluster node answers");
    /* The masters first, then every seed, then the last map's replicas: every master gone at
     * once (replicas taken over) still finds the cluster when no seed is left. */
    size_t n_others = (size_t)rs->n_seeds + rs->n_replicas;
    for (size_t i = 0; i < rs->n_links + n_others; i++) {
        bool known = i < rs->n_links;
        const cluster_seed_t *other = known ? NULL : other_addr(rs, i - rs->n_links);
        const char *host = known ? rs->links[i].host : other->host;
        int port = known ? rs->links[i].port : other->port;
        if (!known && find_link(rs->links, rs->n_links, host, port) >= 0)
            continue; /* asked as a master already */
        redisContext *c = known ? rs->links[i].ctx : NULL;
        bool own = c == NULL || c->err;
        if (own && (c = dial(rs, host, port, err, errlen)) == NULL)
            continue;
        cluster_map_t m;
        int kind = ask_slots(c, host, &m, err, errlen);
        if (own)
            redisFree(c);
        if (kind == 0)
            return adopt_map(rs, &m, err, errlen);
        if (kind == 1)
            snprintf(err, errlen, "%s:%d is not a cluster node any more", host, port);
    }
    return -1;
}

/* The link's connection, made when needed and made anew when the last one broke. */
static redisContext *link_ctx(rsync_t *rs, link_t *l, char *err, size_t errlen)
{
    if (l->ctx != NULL && l->ctx->err) {
        redisFree(l->ctx);
        l->ctx = NULL;
    }
    if (l->ctx == NULL)
        l->ctx = dial(rs, l->host, l->port, err, errlen);
    return l->ctx;
}

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* One round trip of the formatted command on link li, after ASKING when asking (both pipelined
 * on the same connection, as ASK requires). NULL with err when the connection failed (it is
 * dropped: the next call reconnects). */
static redisReply *round_trip(rsync_t *rs, int li, bool asking, const char *cmd, size_t len,
                              char *err, size_t errlen)
{
    link_t *l = &rs->links[li];
    redisContext *c = link_ctx(rs, l, err, errlen);
    if (c == NULL)
        return NULL;
    redisReply *r = NULL;
    if (asking && redisAppendCommand(c, "ASKING") != REDIS_OK)
        goto fail;
    if (redisAppendFormattedCommand(c, cmd, len) != REDIS_OK)
        goto fail;
    if (asking) {
        if (redisGetReply(c, (void **)&r) != REDIS_OK)
            goto fail;
        freeReplyObject(r);
        r = NULL;
    }
    if (redisGetReply(c, (void **)&r) != REDIS_OK)
        goto fail;
    return r;
fail:
    snprintf(err, errlen, "%s:%d: %s", l->host, l->port, c->err ? c->errstr : "out of memory");
    redisFree(c);
    l->ctx = NULL;
    return NULL;
}

/* Sends the formatted command to the master of slot, following MOVED (the slot's link is
 * updated), ASK (ASKING then the command on the named node, the map unchanged) and TRYAGAIN
 * (resent after a short sleep), each a bounded number of times. */
static redisReply *route(rsync_t *rs, unsigned slot, const char *cmd, size_t len, char *err,
                         size_t errlen)
{
    int li = 0, tries = 0, hops = 0; /* TRYAGAIN retries are not redirections: counted apart */
    bool asking = false;
    if (rs->cluster) {
        if (rs->slot_link[slot] == CLUSTER_NO_NODE) {
            snprintf(err, errlen, "no master serves slot %u", slot);
            return NULL;
        }
        li = rs->slot_link[slot];
    }
    for (;;) {
        redisReply *r = round_trip(rs, li, asking, cmd, len, err, errlen);
        cluster_redirect_t to;
        cluster_err_t ce =
            r != NULL && rs->cluster ? cluster_reply_error(r, &to) : CLUSTER_ERR_NONE;
        if (ce == CLUSTER_ERR_TRYAGAIN && tries < TRYAGAIN_MAX) {
            freeReplyObject(r);
            tries++;
            nap_ms(TRYAGAIN_MS);
            li = rs->slot_link[slot];
            asking = false;
            continue;
        }
        if ((ce != CLUSTER_ERR_MOVED && ce != CLUSTER_ERR_ASK) || hops++ == REDIRECTS_MAX)
            return r;
        if (to.host[0] == '\0')
            snprintf(to.host, sizeof(to.host), "%s", rs->links[li].host);
        int next = link_to(rs, to.host, to.port);
        if (next < 0)
            return r; /* out of memory: the caller sees the redirection as an error */
        freeReplyObject(r);
        rs->redirects++;
        asking = ce == CLUSTER_ERR_ASK;
        if (!asking)
            rs->slot_link[to.slot < CLUSTER_SLOTS ? to.slot : slot] = (uint16_t)next;
        li = next;
    }
}

redisReply *rsync_command(rsync_t *rs, const char *key, char *err, size_t errlen, const char *fmt,
                          ...)
{
    char *cmd = NULL;
    va_list ap;
    va_start(ap, fmt);
    int len = redisvFormatCommand(&cmd, fmt, ap);
    va_end(ap);
    if (len < 0) {
        snprintf(err, errlen, "cannot format %s", fmt);
        return NULL;
    }
    redisReply *r = route(rs, cluster_key_slot(key, strlen(key)), cmd, (size_t)len, err, errlen);
    redisFreeCommand(cmd);
    return r;
}

redisReply *rsync_command_argv(rsync_t *rs, const char *key, size_t keylen, int argc,
                               const char **argv, const size_t *lens, char *err, size_t errlen)
{
    char *cmd = NULL;
    long long len = redisFormatCommandArgv(&cmd, argc, argv, lens);
    if (len < 0) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    redisReply *r = route(rs, cluster_key_slot(key, keylen), cmd, (size_t)len, err, errlen);
    redisFreeCommand(cmd);
    return r;
}

unsigned long rsync_redirects(const rsync_t *rs)
{
    return rs->redirects;
}

bool rsync_is_cluster(const rsync_t *rs)
{
    return rs->cluster;
}

size_t rsync_masters(const rsync_t *rs)
{
    return rs->n_masters;
}

void rsync_close(rsync_t *rs)
{
    if (rs == NULL)
        return;
    drop_links(rs->links, rs->n_links);
    free(rs->replicas);
    free(rs);
}
