/* --nats: one NATS URL or a comma list of a cluster's nodes, for every program that talks to
 * NATS (snatch-host's publisher and reconciler, snatch-subscriber, snatch-reconcile). cnats
 * connects to one of them (in random order, so hosts spread over the nodes) and, when that node
 * goes, reconnects to another; it also learns the other nodes the cluster announces, but the
 * list is what works when the node first tried is down. */
#ifndef SNATCH_NATS_SERVERS_H
#define SNATCH_NATS_SERVERS_H

#include <nats/nats.h>
#include <stddef.h>

#define NATS_SERVERS_MAX 16

/* Checks the flag's value: 1..NATS_SERVERS_MAX comma-separated URLs, each
 * [nats://|tls://][user[:password]@]HOST[:PORT] with no empty item and no blank. Returns 0, or
 * -1 with the reason in err (the URL is not repeated there: it may hold a password). */
int nats_servers_check(const char *list, char *err, size_t errlen);

/* natsOptions_SetServers with the list's URLs (checked first: NATS_INVALID_ARG when it is bad). */
natsStatus nats_servers_apply(natsOptions *o, const char *list);

/* The URL of the node nc is connected to, without credentials, in buf ("none" when it is not
 * connected): for log lines that say which node a process is on. */
const char *nats_servers_connected(natsConnection *nc, char *buf, size_t len);

#endif
