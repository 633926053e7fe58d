/* Who may speak for a buyer: the --trusted-proxy address ranges, and the client address of a
 * request as the nearest untrusted hop of X-Forwarded-For. Pure functions over text addresses;
 * the list is built once at start-up and only read afterwards (any thread). */
#ifndef SNATCH_TRUST_H
#define SNATCH_TRUST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TRUST_MAX 64
/* Longest address text we produce: an IPv6 address (INET6_ADDRSTRLEN). */
#define TRUST_ADDR_MAX 46

typedef struct trust_cidr {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    unsigned prefix;
} trust_cidr_t;

typedef struct trust_list {
    size_t n;
    trust_cidr_t v[TRUST_MAX];
} trust_list_t;

/* Appends the comma-separated CIDRs (or bare addresses: /32, /128) of spec to l. Returns 0, or
 * -1 on a malformed entry or more than TRUST_MAX in all (l then unspecified). */
int trust_parse(trust_list_t *l, const char *spec);

/* The default: loopback only (127.0.0.0/8 and ::1). */
void trust_default(trust_list_t *l);

/* True when the address text (IPv4, IPv6, or IPv4-mapped IPv6) lies in one of l's ranges. */
bool trust_contains(const trust_list_t *l, const char *addr, size_t len);

/* The client address of a request whose TCP peer is peer: peer itself unless peer is trusted;
 * from a trusted peer, X-Forwarded-For (xff, may be NULL) is read from the right and the first
 * address that is not trusted is the client (each proxy appends the address it received from,
 * so only the part appended by trusted proxies can be believed). An entry that is not an
 * address ends the walk at the hop before it; when every entry is trusted, the leftmost one is
 * the client. Entries may carry a port ("1.2.3.4:80", "[::1]:80"), which is dropped. Writes the
 * normalised text into out (TRUST_ADDR_MAX bytes). */
void trust_client(const trust_list_t *l, const char *peer, const char *xff, size_t xff_len,
                  char *out);

#endif
