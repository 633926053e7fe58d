/* Credentials for Redis and NATS; see auth.h. */
#include "auth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SECRET_MAX 4096

/* Reads a secret file, trailing newlines and spaces trimmed. Returns a malloc'd string or NULL
 * (message printed, without the content). */
static char *read_secret(const char *path, const char *what, const char *prog)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "%s: cannot read %s file %s: %s\n", prog, what, path, strerror(errno));
        return NULL;
    }
    char *buf = malloc(SECRET_MAX + 1);
    size_t n = buf != NULL ? fread(buf, 1, SECRET_MAX + 1, f) : 0;
    fclose(f);
    if (buf == NULL) {
        fprintf(stderr, "%s: out of memory\n", prog);
        return NULL;
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        n--;
    if (n == 0 || n > SECRET_MAX || memchr(buf, '\0', n) != NULL) {
        fprintf(stderr, "%s: %s file %s must hold 1..%d bytes of text\n", prog, what, path,
                SECRET_MAX);
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    return buf;
}

static int set_secret(char **slot, const char *path, const char *what, const char *prog)
{
    char *s = read_secret(path, what, prog);
    if (s == NULL)
        return -1;
    free(*slot);
    *slot = s;
    return 0;
}

int auth_parse_opt(auth_config_t *a, int opt, const char *arg, const char *prog)
{
    switch (opt - AUTH_OPT_BASE) {
    case 0:
        return set_secret(&a->redis_password, arg, "Redis password", prog);
    case 1:
        a->redis_user = arg;
        return 0;
    case 2:
        a->nats_user = arg;
        return 0;
    case 3:
        return set_secret(&a->nats_password, arg, "NATS password", prog);
    case 4:
        return set_secret(&a->nats_token, arg, "NATS token", prog);
    case 5:
        a->nats_creds = arg;
        return 0;
    case 6:
        a->nats_ca = arg;
        return 0;
    default:
        return 1;
    }
}

int auth_check(const auth_config_t *a, const char *prog)
{
    if (a->redis_user != NULL && a->redis_password == NULL) {
        fprintf(stderr, "%s: --redis-user needs --redis-password-file\n", prog);
        return -1;
    }
    if ((a->nats_user != NULL) != (a->nats_password != NULL)) {
        fprintf(stderr, "%s: --nats-user and --nats-password-file go together\n", prog);
        return -1;
    }
    int kinds = (a->nats_user != NULL) + (a->nats_token != NULL) + (a->nats_creds != NULL);
    if (kinds > 1) {
        fprintf(stderr, "%s: choose one of --nats-user, --nats-token-file, --nats-creds\n", prog);
        return -1;
    }
    return 0;
}

natsStatus auth_nats_apply(natsOptions *o, const auth_config_t *a)
{
    natsStatus s = NATS_OK;
    if (a->nats_user != NULL)
        s = natsOptions_SetUserInfo(o, a->nats_user, a->nats_password);
    if (s == NATS_OK && a->nats_token != NULL)
        s = natsOptions_SetToken(o, a->nats_token);
    if (s == NATS_OK && a->nats_creds != NULL)
        s = natsOptions_SetUserCredentialsFromFiles(o, a->nats_creds, NULL);
    if (s == NATS_OK && a->nats_ca != NULL) {
        s = natsOptions_SetSecure(o, true);
        if (s == NATS_OK)
            s = natsOptions_LoadCATrustedCertificates(o, a->nats_ca);
    }
    return s;
}

int auth_redis_sync(redisContext *rc, const auth_config_t *a, char *err, size_t errlen)
{
    if (a->redis_password == NULL)
        return 0;
    redisReply *r;
    if (a->redis_user != NULL)
        r = redisCommand(rc, "AUTH %s %s", a->redis_user, a->redis_password);
    else
        r = redisCommand(rc, "AUTH %s", a->redis_password);
    if (r == NULL) {
        snprintf(err, errlen, "AUTH: %s", rc->errstr);
        return -1;
    }
    int ok = r->type != REDIS_REPLY_ERROR;
    if (!ok)
        snprintf(err, errlen, "AUTH refused: %s", r->str);
    freeReplyObject(r);
    return ok ? 0 : -1;
}

void auth_free(auth_config_t *a)
{
    free(a->redis_password);
    free(a->nats_password);
    free(a->nats_token);
    a->redis_password = a->nats_password = a->nats_token = NULL;
}
