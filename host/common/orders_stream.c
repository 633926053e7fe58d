/* See orders_stream.h. */
#include "orders_stream.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

/* Written once at start-up (before threads), read by the thread that creates the stream. */
static int64_t max_age_ms = ORDERS_DEFAULT_MAX_AGE_MS;
static int64_t max_bytes = ORDERS_DEFAULT_MAX_BYTES;
static int64_t replicas = 1;

static int parse_limit(const char *flag, const char *value, int64_t min, int64_t *out, char *err,
                       size_t errlen)
{
    int64_t v;
    if (util_parse_i64(value, strlen(value), 0, INT64_MAX, &v) != 0 || (v > 0 && v < min)) {
        snprintf(err, errlen, "--%s must be 0 (unlimited) or an integer >= %lld", flag,
                 (long long)min);
        return -1;
    }
    *out = v;
    return 0;
}

int orders_stream_set_max_age_ms(const char *value, char *err, size_t errlen)
{
    /* Above ~292 years the nanoseconds JetStream wants overflow int64. */
    int64_t v;
    if (parse_limit(ORDERS_MAX_AGE_FLAG, value, ORDERS_DUPLICATES_WINDOW_MS, &v, err, errlen))
        return -1;
    if (v > INT64_MAX / 1000000) {
        snprintf(err, errlen, "--%s is too large", ORDERS_MAX_AGE_FLAG);
        return -1;
    }
    max_age_ms = v;
    return 0;
}

int orders_stream_set_max_bytes(const char *value, char *err, size_t errlen)
{
    return parse_limit(ORDERS_MAX_BYTES_FLAG, value, 1 << 20, &max_bytes, err, errlen);
}

int orders_stream_set_replicas(const char *value, char *err, size_t errlen)
{
    int64_t v;
    if (util_parse_i64(value, strlen(value), 1, ORDERS_REPLICAS_MAX, &v) != 0) {
        snprintf(err, errlen, "--%s must be an integer from 1 to %d", ORDERS_REPLICAS_FLAG,
                 ORDERS_REPLICAS_MAX);
        return -1;
    }
    replicas = v;
    return 0;
}

/* An existing stream's replica count is not changed: JetStream would let us (a stream update
 * scales it), but two hosts started with different flags would then rescale the stream back
 * and forth during a sale, and each change moves the stream's data between nodes. */
static void warn_replicas(const jsStreamConfig *cfg)
{
    int64_t have = cfg->Replicas > 0 ? cfg->Replicas : 1;
    if (have == replicas)
        return;
    log_warn("orders: stream %s exists with %lld replica(s), this process asked for %lld: the "
             "stream is left as it is (%s)",
             ORDERS_STREAM, (long long)have, (long long)replicas,
             have < replicas ? "it survives fewer node losses than asked"
                             : "--" ORDERS_REPLICAS_FLAG " only applies when creating it");
}

/* JetStream reports "unlimited" as -1 (bytes) or 0 (age). Said once per process: the host checks
 * the stream again after every reconnect and every unanswered publish. */
static void warn_if_different(const jsStreamInfo *si)
{
    static _Atomic bool warned;
    if (si == NULL || si->Config == NULL || atomic_exchange(&warned, true))
        return;
    warn_replicas(si->Config);
    int64_t have_age_ms = si->Config->MaxAge / 1000000;
    int64_t have_bytes = si->Config->MaxBytes < 0 ? 0 : si->Config->MaxBytes;
    if (have_age_ms == max_age_ms && have_bytes == max_bytes)
        return;
    log_warn("orders: stream %s exists with max age %lld ms, max bytes %lld (0: unlimited); "
             "this process asked for %lld ms, %lld: the stream is left as it is",
             ORDERS_STREAM, (long long)have_age_ms, (long long)have_bytes, (long long)max_age_ms,
             (long long)max_bytes);
}

natsStatus orders_stream_ensure(jsCtx *js, jsErrCode *jerr, int *created)
{
    jsStreamInfo *si = NULL;
    jsErrCode code = 0;
    if (created)
        *created = 0;
    natsStatus s = js_GetStreamInfo(&si, js, ORDERS_STREAM, NULL, &code);
    if (s == NATS_OK)
        warn_if_different(si);
    /* On a cluster, between the death of the stream's leader and the election of the next. */
    if (s == NATS_OK && si->Cluster != NULL &&
        (si->Cluster->Leader == NULL || si->Cluster->Leader[0] == '\0'))
        s = NATS_NO_RESPONDERS;
    if (s == NATS_NOT_FOUND) {
        jsStreamConfig cfg;
        const char *subjects[] = {ORDERS_SUBJECTS};
        jsStreamConfig_Init(&cfg);
        cfg.Name = ORDERS_STREAM;
        cfg.Subjects = subjects;
        cfg.SubjectsLen = 1;
        cfg.Storage = js_FileStorage;
        cfg.Duplicates = (int64_t)ORDERS_DUPLICATES_WINDOW_MS * 1000000;
        cfg.MaxAge = max_age_ms * 1000000;
        cfg.MaxBytes = max_bytes > 0 ? max_bytes : -1;
        cfg.Replicas = replicas;
        s = js_AddStream(&si, js, &cfg, NULL, &code);
        if (s == NATS_OK && created)
            *created = 1;
        else if (s != NATS_OK && code == JSStreamNameExistErr)
            s = NATS_OK; /* someone else created it meanwhile */
    }
    jsStreamInfo_Destroy(si);
    if (jerr)
        *jerr = code;
    return s;
}
