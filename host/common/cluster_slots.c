/* Redis Cluster's slot function, slot map and redirections (see cluster_slots.h). */
#include "cluster_slots.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint16_t cluster_crc16(const char *buf, size_t len)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)((uint8_t)buf[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

unsigned cluster_key_slot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (open != NULL) {
        size_t from = (size_t)(open - key) + 1;
        const char *close = memchr(key + from, '}', len - from);
        if (close != NULL && close > key + from)
            return cluster_crc16(key + from, (size_t)(close - (key + from))) & (CLUSTER_SLOTS - 1);
    }
    return cluster_crc16(key, len) & (CLUSTER_SLOTS - 1);
}

/* ---- CLUSTER SLOTS ---- */

static bool numeric_host(const char *s)
{
    unsigned char addr[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, s, addr) == 1 || inet_pton(AF_INET6, s, addr) == 1;
}

/* Reads [host, port, id?, ...] of one node. Returns 0 or -1 (err filled). */
static int read_node(const redisReply *e, const char *asked, cluster_node_t *n, char *err,
                     size_t errlen)
{
    memset(n, 0, sizeof(*n));
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 ||
        e->element[0]->type != REDIS_REPLY_STRING || e->element[1]->type != REDIS_REPLY_INTEGER) {
        snprintf(err, errlen, "CLUSTER SLOTS: a node is not [host, port, ...]");
        return -1;
    }
    const redisReply *h = e->element[0];
    const char *host = h->len > 0 ? h->str : asked;
    if (host == NULL || strlen(host) >= sizeof(n->host) || !numeric_host(host)) {
        snprintf(err, errlen, "CLUSTER SLOTS: node address '%.*s' is not a numeric address",
                 (int)(h->len > 64 ? 64 : h->len), h->str);
        return -1;
    }
    if (e->element[1]->integer <= 0 || e->element[1]->integer > 65535) {
        snprintf(err, errlen, "CLUSTER SLOTS: bad port %lld", e->element[1]->integer);
        return -1;
    }
    snprintf(n->host, sizeof(n->host), "%s", host);
    n->port = (int)e->element[1]->integer;
    if (e->elements >= 3 && e->element[2]->type == REDIS_REPLY_STRING) {
        const redisReply *id = e->element[2];
        if (id->len >= sizeof(n->id)) {
            snprintf(err, errlen, "CLUSTER SLOTS: node id too long");
            return -1;
        }
        memcpy(n->id, id->str, id->len);
        n->id[id->len] = '\0';
    }
    return 0;
}

static int find_node(const cluster_map_t *m, const cluster_node_t *n)
{
    for (size_t i = 0; i < m->n_nodes; i++) {
        const cluster_node_t *o = &m->nodes[i];
        if (n->id[0] != '\0' && o->id[0] != '\0' ? strcmp(n->id, o->id) == 0
                                                 : o->port == n->port && !strcmp(o->host, n->host))
            return (int)i;
    }
    return -1;
}

/* The master of one [start, end, master, replicas...] entry, added to m unless known. Returns
 * its index or -1. */
static int add_master(cluster_map_t *m, const redisReply *e, const char *asked, char *err,
                      size_t errlen)
{
    cluster_node_t n;
    if (read_node(e->element[2], asked, &n, err, errlen) != 0)
        return -1;
    n.replicas = (int)(e->elements - 3);
    int i = find_node(m, &n);
    if (i >= 0) {
        if (n.replicas > m->nodes[i].replicas)
            m->nodes[i].replicas = n.replicas;
        return i;
    }
    if (m->n_nodes >= CLUSTER_NO_NODE) {
        snprintf(err, errlen, "CLUSTER SLOTS: too many masters");
        return -1;
    }
    cluster_node_t *nn = realloc(m->nodes, (m->n_nodes + 1) * sizeof(*nn));
    if (nn == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    m->nodes = nn;
    m->nodes[m->n_nodes] = n;
    return (int)m->n_nodes++;
}

static bool addr_in(const cluster_seed_t *list, size_t n, const char *host, int port)
{
    for (size_t i = 0; i < n; i++)
        if (list[i].port == port && strcmp(list[i].host, host) == 0)
            return true;
    return false;
}

/* Remembered as a place to find the cluster again if every master goes (see
 * cluster_fallback_addrs). Returns 0 or -1. */
static int add_replica(cluster_map_t *m, const cluster_node_t *n, char *err, size_t errlen)
{
    if (addr_in(m->replicas, m->n_replicas, n->host, n->port))
        return 0;
    cluster_seed_t *grown = realloc(m->replicas, (m->n_replicas + 1) * sizeof(*grown));
    if (grown == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    m->replicas = grown;
    snprintf(grown[m->n_replicas].host, sizeof(grown[0].host), "%s", n->host);
    grown[m->n_replicas++].port = n->port;
    return 0;
}

static int read_entry(cluster_map_t *m, const redisReply *e, const char *asked, char *err,
                      size_t errlen)
{
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
        e->element[0]->type != REDIS_REPLY_INTEGER || e->element[1]->type != REDIS_REPLY_INTEGER) {
        snprintf(err, errlen, "CLUSTER SLOTS: an entry is not [start, end, master, ...]");
        return -1;
    }
    long long first = e->element[0]->integer, last = e->element[1]->integer;
    if (first < 0 || last < first || last >= CLUSTER_SLOTS) {
        snprintf(err, errlen, "CLUSTER SLOTS: bad slot range %lld-%lld", first, last);
        return -1;
    }
    for (size_t i = 3; i < e->elements; i++) {
        cluster_node_t replica;
        if (read_node(e->element[i], asked, &replica, err, errlen) != 0 ||
            add_replica(m, &replica, err, errlen) != 0)
            return -1;
    }
    int idx = add_master(m, e, asked, err, errlen);
    if (idx < 0)
        return -1;
    for (long long s = first; s <= last; s++)
        m->slot_node[s] = (uint16_t)idx;
    return 0;
}

int cluster_map_parse(cluster_map_t *m, const redisReply *r, const char *asked_host, char *err,
                      size_t errlen)
{
    m->nodes = NULL;
    m->n_nodes = 0;
    m->replicas = NULL;
    m->n_replicas = 0;
    for (size_t s = 0; s < CLUSTER_SLOTS; s++)
        m->slot_node[s] = CLUSTER_NO_NODE;
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        snprintf(err, errlen, "CLUSTER SLOTS: %s",
                 r != NULL && r->type == REDIS_REPLY_ERROR ? r->str : "not an array");
        return -1;
    }
    for (size_t i = 0; i < r->elements; i++)
        if (read_entry(m, r->element[i], asked_host, err, errlen) != 0) {
            cluster_map_free(m);
            return -1;
        }
    if (m->n_nodes == 0) {
        snprintf(err, errlen, "CLUSTER SLOTS: no slot is served");
        cluster_map_free(m);
        return -1;
    }
    m->covered = true;
    for (size_t s = 0; s < CLUSTER_SLOTS; s++)
        if (m->slot_node[s] == CLUSTER_NO_NODE)
            m->covered = false;
    m->masters_have_replicas = true;
    for (size_t i = 0; i < m->n_nodes; i++)
        if (m->nodes[i].replicas < 1)
            m->masters_have_replicas = false;
    return 0;
}

void cluster_map_free(cluster_map_t *m)
{
    free(m->nodes);
    m->nodes = NULL;
    m->n_nodes = 0;
    free(m->replicas);
    m->replicas = NULL;
    m->n_replicas = 0;
    for (size_t s = 0; s < CLUSTER_SLOTS; s++)
        m->slot_node[s] = CLUSTER_NO_NODE;
}

const cluster_node_t *cluster_map_node(const cluster_map_t *m, unsigned slot)
{
    if (slot >= CLUSTER_SLOTS || m->slot_node[slot] == CLUSTER_NO_NODE)
        return NULL;
    return &m->nodes[m->slot_node[slot]];
}

int cluster_map_find(const cluster_map_t *m, const char *host, int port)
{
    for (size_t i = 0; i < m->n_nodes; i++)
        if (m->nodes[i].port == port && strcmp(m->nodes[i].host, host) == 0)
            return (int)i;
    return -1;
}

/* What identifies a slot's owner for the diff: the node id, else its address. */
static void owner_of(const cluster_map_t *m, unsigned slot, char *out, size_t cap)
{
    const cluster_node_t *n = cluster_map_node(m, slot);
    if (n == NULL)
        out[0] = '\0';
    else if (n->id[0] != '\0')
        snprintf(out, cap, "%s", n->id);
    else
        snprintf(out, cap, "%s:%d", n->host, n->port);
}

void cluster_map_diff(const cluster_map_t *old, const cluster_map_t *m, cluster_owner_fn fn,
                      void *arg)
{
    enum { CAP = CLUSTER_HOST_MAX + 8 };
    char run_old[CAP], run_new[CAP];
    long first = -1;
    for (unsigned s = 0; s <= CLUSTER_SLOTS; s++) {
        char o[CAP] = "", n[CAP] = "";
        bool differs = false;
        if (s < CLUSTER_SLOTS) {
            owner_of(old, s, o, CAP);
            owner_of(m, s, n, CAP);
            differs = strcmp(o, n) != 0;
        }
        bool same_run = first >= 0 && differs && !strcmp(o, run_old) && !strcmp(n, run_new);
        if (first >= 0 && !same_run) {
            fn((unsigned)first, s - 1, run_old, run_new, arg);
            first = -1;
        }
        if (differs && first < 0) {
            first = s;
            memcpy(run_old, o, CAP);
            memcpy(run_new, n, CAP);
        }
    }
}

/* ---- error replies ---- */

static bool starts(const char *s, size_t len, const char *word)
{
    size_t n = strlen(word);
    return len >= n && memcmp(s, word, n) == 0 && (len == n || s[n] == ' ');
}

/* "<slot> <host>:<port>" (the host may be empty, or an IPv6 address with colons). */
static int parse_target(const char *s, size_t len, cluster_redirect_t *to)
{
    char buf[96];
    if (len >= sizeof(buf))
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *end;
    unsigned long slot = strtoul(buf, &end, 10);
    if (end == buf || *end != ' ' || slot >= CLUSTER_SLOTS)
        return -1;
    char *addr = end + 1;
    char *colon = strrchr(addr, ':');
    if (colon == NULL || (size_t)(colon - addr) >= sizeof(to->host))
        return -1;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (end == colon + 1 || *end != '\0' || port == 0 || port > 65535)
        return -1;
    *colon = '\0';
    to->slot = (unsigned)slot;
    snprintf(to->host, sizeof(to->host), "%s", addr);
    to->port = (int)port;
    return 0;
}

cluster_err_t cluster_parse_error(const char *str, size_t len, cluster_redirect_t *to)
{
    if (str == NULL)
        return CLUSTER_ERR_NONE;
    if (starts(str, len, "MOVED") || starts(str, len, "ASK")) {
        bool moved = str[0] == 'M';
        size_t skip = moved ? 6 : 4;
        cluster_redirect_t t;
        if (len <= skip || parse_target(str + skip, len - skip, &t) != 0)
            return CLUSTER_ERR_MALFORMED;
        if (to != NULL)
            *to = t;
        return moved ? CLUSTER_ERR_MOVED : CLUSTER_ERR_ASK;
    }
    if (starts(str, len, "TRYAGAIN"))
        return CLUSTER_ERR_TRYAGAIN;
    if (starts(str, len, "CLUSTERDOWN"))
        return CLUSTER_ERR_CLUSTERDOWN;
    if (starts(str, len, "NOSCRIPT"))
        return CLUSTER_ERR_NOSCRIPT;
    static const char disabled[] = "ERR This instance has cluster support disabled";
    if (len >= sizeof(disabled) - 1 && memcmp(str, disabled, sizeof(disabled) - 1) == 0)
        return CLUSTER_ERR_DISABLED;
    return CLUSTER_ERR_NONE;
}

cluster_err_t cluster_reply_error(const redisReply *r, cluster_redirect_t *to)
{
    if (r == NULL || r->type != REDIS_REPLY_ERROR)
        return CLUSTER_ERR_NONE;
    return cluster_parse_error(r->str, r->len, to);
}

/* ---- seeds ---- */

static int parse_port(const char *s, int *port)
{
    char *end;
    if (*s < '0' || *s > '9')
        return -1;
    unsigned long p = strtoul(s, &end, 10);
    if (*end != '\0' || p == 0 || p > 65535 || end - s > 5)
        return -1;
    *port = (int)p;
    return 0;
}

int cluster_parse_seeds(const char *seeds, cluster_seed_t *out, int max)
{
    int n = 0;
    const char *p = seeds;
    if (seeds == NULL || *seeds == '\0')
        return -1;
    for (;;) {
        const char *end = strchr(p, ',');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        char item[CLUSTER_HOST_MAX + 8];
        if (len == 0 || len >= sizeof(item) || n >= max)
            return -1;
        memcpy(item, p, len);
        item[len] = '\0';
        char *colon = strrchr(item, ':');
        int port;
        if (colon == NULL || colon == item || parse_port(colon + 1, &port) != 0)
            return -1;
        *colon = '\0';
        unsigned char addr[sizeof(struct in6_addr)];
        if (inet_pton(AF_INET, item, addr) != 1 && inet_pton(AF_INET6, item, addr) != 1)
            return -1;
        if (strlen(item) >= CLUSTER_HOST_MAX)
            return -1;
        memcpy(out[n].host, item, strlen(item) + 1);
        out[n++].port = port;
        if (end == NULL)
            return n;
        p = end + 1;
    }
}

int cluster_fallback_addrs(const cluster_seed_t *seeds, int n_seeds, const cluster_map_t *m,
                           cluster_seed_t *out, int max)
{
    int n = 0;
    size_t n_replicas = m != NULL ? m->n_replicas : 0;
    for (size_t i = 0; i < (size_t)n_seeds + n_replicas && n < max; i++) {
        const cluster_seed_t *a =
            i < (size_t)n_seeds ? &seeds[i] : &m->replicas[i - (size_t)n_seeds];
        if (addr_in(out, (size_t)n, a->host, a->port) ||
            (m != NULL && cluster_map_find(m, a->host, a->port) >= 0))
            continue;
        out[n++] = *a;
    }
    return n;
}
