/* Redis Cluster, the pure part (no I/O): a key's slot (CRC16 of its {hash tag}, as the Redis
 * Cluster specification defines it), the slot map read from a CLUSTER SLOTS reply, and the error
 * replies a cluster answers instead of running a command (MOVED, ASK, TRYAGAIN, CLUSTERDOWN) or
 * that a promoted replica gives a script (NOSCRIPT). Shared by snatch-host's async router
 * (host/server/redis.c) and the blocking one (cluster_sync.c). */
#ifndef SNATCH_CLUSTER_SLOTS_H
#define SNATCH_CLUSTER_SLOTS_H

#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CLUSTER_SLOTS 16384
/* Longest numeric address, NUL included (an IPv6 address). */
#define CLUSTER_HOST_MAX INET6_ADDRSTRLEN
/* A node id is 40 hex characters. */
#define CLUSTER_ID_MAX 41
/* slot_node[] of a slot no master serves. */
#define CLUSTER_NO_NODE 0xFFFFu

/* CRC16-CCITT (XMODEM: polynomial 0x1021, initial value 0), the one the spec names. */
uint16_t cluster_crc16(const char *buf, size_t len);

/* The slot of key: CRC16 mod 16384 of the part between the first '{' and the first '}' after
 * it when that part is not empty, else of the whole key. */
unsigned cluster_key_slot(const char *key, size_t len);

/* A node's address: a seed, or a replica a map listed. */
typedef struct cluster_seed {
    char host[CLUSTER_HOST_MAX];
    int port;
} cluster_seed_t;

typedef struct cluster_node {
    char host[CLUSTER_HOST_MAX]; /* numeric address */
    int port;
    char id[CLUSTER_ID_MAX]; /* "" when the reply gave none */
    int replicas;            /* replicas CLUSTER SLOTS listed for this master */
} cluster_node_t;

typedef struct cluster_map {
    cluster_node_t *nodes; /* the masters, each once */
    size_t n_nodes;
    uint16_t slot_node[CLUSTER_SLOTS]; /* index into nodes, or CLUSTER_NO_NODE */
    bool covered;                      /* every slot has a master */
    bool masters_have_replicas;        /* every master has at least one replica */
    cluster_seed_t *replicas;          /* every replica listed, each once */
    size_t n_replicas;
} cluster_map_t;

/* Reads a CLUSTER SLOTS reply into m (whose previous content is not freed: start from zeroes
 * or after cluster_map_free). A node listed with an empty address is the node that answered:
 * asked_host (may be NULL: then an empty address is an error). Returns 0, or -1 with the reason
 * in err (m then holds nothing to free). Hostnames are refused (connecting to one would mean a
 * blocking resolution). */
int cluster_map_parse(cluster_map_t *m, const redisReply *r, const char *asked_host, char *err,
                      size_t errlen);
void cluster_map_free(cluster_map_t *m);

/* The master serving slot, or NULL. */
const cluster_node_t *cluster_map_node(const cluster_map_t *m, unsigned slot);
/* Index of the master at host:port in m->nodes, or -1. */
int cluster_map_find(const cluster_map_t *m, const char *host, int port);

/* Calls fn for each maximal range of slots [first, last] whose master's node id differs between
 * old and new (a slot served in one map and not the other counts, with "" for the missing id).
 * Slots whose masters have no id in either map are compared by address. */
typedef void (*cluster_owner_fn)(unsigned first, unsigned last, const char *old_id,
                                 const char *new_id, void *arg);
void cluster_map_diff(const cluster_map_t *old, const cluster_map_t *m, cluster_owner_fn fn,
                      void *arg);

typedef enum {
    CLUSTER_ERR_NONE,        /* not an error reply, or one the cluster logic has no part in */
    CLUSTER_ERR_MOVED,       /* the slot lives elsewhere now: update the map, resend there */
    CLUSTER_ERR_ASK,         /* mid-migration: ASKING then the command, once, on that node */
    CLUSTER_ERR_TRYAGAIN,    /* keys split by a migration: resend shortly */
    CLUSTER_ERR_CLUSTERDOWN, /* the cluster cannot serve the slot now */
    CLUSTER_ERR_NOSCRIPT,    /* script cache empty (a restart or a promoted replica) */
    CLUSTER_ERR_DISABLED,    /* CLUSTER SLOTS on a standalone server */
    CLUSTER_ERR_MALFORMED,   /* MOVED/ASK that cannot be read */
} cluster_err_t;

typedef struct cluster_redirect {
    unsigned slot;
    char host[CLUSTER_HOST_MAX];
    int port;
} cluster_redirect_t;

/* Classifies an error reply's text (len bytes). For MOVED and ASK, fills *to; an empty host in
 * the reply (a node that does not know its address) is left empty for the caller to fill. */
cluster_err_t cluster_parse_error(const char *str, size_t len, cluster_redirect_t *to);
/* The same for a reply: CLUSTER_ERR_NONE unless it is an error reply. */
cluster_err_t cluster_reply_error(const redisReply *r, cluster_redirect_t *to);

/* Parses "HOST:PORT[,HOST:PORT...]" (numeric addresses; an IPv6 address's port follows its last
 * colon) into out. Returns how many, or -1 (empty element, no port, a port out of range, a name
 * instead of an address, more than max). */
int cluster_parse_seeds(const char *seeds, cluster_seed_t *out, int max);

/* Where to look for the cluster when none of m's masters gives a map (all of them gone at once):
 * the seeds, then the replicas m listed (m may be NULL), each address once and none of m's
 * masters (those are asked already). Fills out with at most max; returns how many. */
int cluster_fallback_addrs(const cluster_seed_t *seeds, int n_seeds, const cluster_map_t *m,
                           cluster_seed_t *out, int max);

#endif
