/* Credentials for Redis and NATS, shared by snatch-host, snatch-subscriber and snatch-reconcile:
 * the same flags mean the same thing everywhere, and secrets come from files (never from the
 * command line, where any local user can read them) and are never logged. */
#ifndef SNATCH_AUTH_H
#define SNATCH_AUTH_H

#include <nats/nats.h>
#include <stddef.h>

#include <hiredis/hiredis.h>

typedef struct auth_config {
    const char *redis_user; /* --redis-user: ACL user (NULL: default user) */
    char *redis_password;   /* from --redis-password-file; NULL: no AUTH */
    const char *nats_user;  /* --nats-user */
    char *nats_password;    /* from --nats-password-file */
    char *nats_token;       /* from --nats-token-file */
    const char *nats_creds; /* --nats-creds: a .creds file (JWT + NKey seed) */
    const char *nats_ca;    /* --nats-ca-file: TLS to NATS trusting this CA */
} auth_config_t;

/* getopt_long entries for the flags above, values from AUTH_OPT_BASE up; callers append them at
 * the end of their own table (the subscriber only the NATS ones). AUTH_*_USAGE: the help text. */
#define AUTH_OPT_BASE 0x4100
#define AUTH_REDIS_OPTIONS                                                                         \
    {"redis-password-file", required_argument, NULL, AUTH_OPT_BASE + 0},                           \
    {                                                                                              \
        "redis-user", required_argument, NULL, AUTH_OPT_BASE + 1                                   \
    }
#define AUTH_NATS_OPTIONS                                                                          \
    {"nats-user", required_argument, NULL, AUTH_OPT_BASE + 2},                                     \
        {"nats-password-file", required_argument, NULL, AUTH_OPT_BASE + 3},                        \
        {"nats-token-file", required_argument, NULL, AUTH_OPT_BASE + 4},                           \
        {"nats-creds", required_argument, NULL, AUTH_OPT_BASE + 5},                                \
    {                                                                                              \
        "nats-ca-file", required_argument, NULL, AUTH_OPT_BASE + 6                                 \
    }
#define AUTH_REDIS_USAGE                                                                           \
    "  --redis-password-file PATH  AUTH to Redis with the password in PATH\n"                      \
    "  --redis-user NAME         Redis ACL user for AUTH (default: the default user)\n"
#define AUTH_NATS_USAGE                                                                            \
    "  --nats-user NAME          NATS user (with --nats-password-file)\n"                          \
    "  --nats-password-file PATH NATS password\n"                                                  \
    "  --nats-token-file PATH    NATS token\n"                                                     \
    "  --nats-creds PATH         NATS .creds file (JWT and NKey seed)\n"                           \
    "  --nats-ca-file PATH       TLS to NATS, trusting this CA (use a tls:// URL)\n"

/* Handles an AUTH_OPT_BASE.. option (reads secret files). Returns 1 when opt is not an auth
 * option, 0 when handled, -1 on error (message printed with prog as prefix). */
int auth_parse_opt(auth_config_t *a, int opt, const char *arg, const char *prog);

/* Checks combinations (a password without a user...). Returns 0 or -1 (message printed). */
int auth_check(const auth_config_t *a, const char *prog);

/* Adds the NATS credentials and TLS settings to o. */
natsStatus auth_nats_apply(natsOptions *o, const auth_config_t *a);

/* Synchronous AUTH on a fresh hiredis connection, when a password is configured. Returns 0, or
 * -1 with the server's answer (never the password) in err. */
int auth_redis_sync(redisContext *rc, const auth_config_t *a, char *err, size_t errlen);

void auth_free(auth_config_t *a);

#endif
