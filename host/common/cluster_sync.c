/* Blocking Redis for reconciliation, standalone or cluster (see cluster_sync.h). */
#include "cluster_sync.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster_slots.h"

#define SEEDS_MAX 16

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
    link_t *links; /* standalone: one, the server; cluster: one per master in map */
    size_t n_links;
    cluster_map_t map;
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

static void drop_links(rsync_t *rs)
{
    for (size_t i = 0; i < rs->n_links; i++)
        if (rs->links[i].ctx != NULL)
            redisFree(rs->links[i].ctx);
    free(rs->links);
    rs->links = NULL;
    rs->n_links = 0;
}

/* Takes m as the map: a link per master, keeping the connections of those already known. */
static int adopt_map(rsync_t *rs, cluster_map_t *m, char *err, size_t errlen)
{
    link_t *links = calloc(m->n_nodes, sizeof(*links));
    if (links == NULL) {
        snprintf(err, errlen, "out of memory");
        cluster_map_free(m);
        return -1;
    }
    for (size_t i = 0; i < m->n_nodes; i++) {
        snprintf(links[i].host, sizeof(links[i].host), "%s", m->nodes[i].host);
        links[i].port = m->nodes[i].port;
        for (size_t k = 0; k < rs->n_links; k++)
            if (rs->links[k].ctx != NULL && rs->links[k].port == links[i].port &&
                strcmp(rs->links[k].host, links[i].host) == 0) {
                links[i].ctx = rs->links[k].ctx;
                rs->links[k].ctx = NULL;
            }
    }
    drop_links(rs);
    rs->links = links;
    rs->n_links = m->n_nodes;
    cluster_map_free(&rs->map);
    rs->map = *m;
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
        rs->map.slot_node[s] = CLUSTER_NO_NODE;
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

int rsync_refresh(rsync_t *rs, char *err, size_t errlen)
{
    if (!rs->cluster)
        return 0;
    snprintf(err, errlen, "no cluster node answers");
    /* Masters already connected first, then every seed. */
    for (size_t i = 0; i < rs->n_links + (size_t)rs->n_seeds; i++) {
        bool known = i < rs->n_links;
        const char *host = known ? rs->links[i].host : rs->seeds[i - rs->n_links].host;
        int port = known ? rs->links[i].port : rs->seeds[i - rs->n_links].port;
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

redisContext *rsync_ctx(rsync_t *rs, const char *key, size_t keylen, char *err, size_t errlen)
{
    link_t *l = NULL;
    if (!rs->cluster) {
        l = &rs->links[0];
    } else {
        unsigned slot = cluster_key_slot(key, keylen);
        if (rs->map.slot_node[slot] == CLUSTER_NO_NODE) {
            snprintf(err, errlen, "no master serves slot %u", slot);
            return NULL;
        }
        l = &rs->links[rs->map.slot_node[slot]];
    }
    if (l->ctx != NULL && l->ctx->err) {
        redisFree(l->ctx);
        l->ctx = NULL;
    }
    if (l->ctx == NULL)
        l->ctx = dial(rs, l->host, l->port, err, errlen);
    return l->ctx;
}

bool rsync_is_cluster(const rsync_t *rs)
{
    return rs->cluster;
}

size_t rsync_masters(const rsync_t *rs)
{
    return rs->n_links;
}

void rsync_close(rsync_t *rs)
{
    if (rs == NULL)
        return;
    drop_links(rs);
    cluster_map_free(&rs->map);
    free(rs);
}
