/* See repair.h. Blocking; one repair_t per thread. */
#include "repair.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "cluster_sync.h"
#include "keyspace.h"
#include "log.h"
#include "metrics.h"
#include "order_msg.h"
#include "orders_stream.h"
#include "util.h"

#define CONNECT_TIMEOUT_MS 2000
#define MAX_SEEDS 16
#define REQUESTS_MAX 64

/* ---- configuration and requests (process-wide) ---- */

static char *script_src; /* written once before threads start, as seed_src */
static char *seed_src;
static bool claim_standalone;

static pthread_mutex_t req_lock = PTHREAD_MUTEX_INITIALIZER;
static char requests[REQUESTS_MAX][SNATCH_NAME_MAX + 1];
static int n_requests;
static void (*waker)(void *);
static void *waker_arg;

int repair_configure(const char *script, bool claim, const char *seed_list)
{
    cluster_seed_t seeds[MAX_SEEDS];
    free(script_src);
    free(seed_src);
    script_src = seed_src = NULL;
    if (script == NULL || cluster_parse_seeds(seed_list, seeds, MAX_SEEDS) < 1 ||
        (seed_src = strdup(seed_list)) == NULL || (script_src = strdup(script)) == NULL)
        return -1;
    claim_standalone = claim;
    return 0;
}

bool repair_claims_standalone(void)
{
    return script_src != NULL && claim_standalone;
}

bool repair_configured(void)
{
    return script_src != NULL;
}

void repair_set_waker(void (*fn)(void *arg), void *arg)
{
    pthread_mutex_lock(&req_lock);
    waker = fn;
    waker_arg = arg;
    pthread_mutex_unlock(&req_lock);
}

void repair_request(const char *event, size_t len)
{
    bool fresh = true;
    if (len > SNATCH_NAME_MAX)
        return;
    pthread_mutex_lock(&req_lock);
    for (int i = 0; i < n_requests && fresh; i++)
        fresh = strlen(requests[i]) != len || memcmp(requests[i], event, len) != 0;
    if (fresh && n_requests < REQUESTS_MAX) {
        memcpy(requests[n_requests], event, len);
        requests[n_requests++][len] = '\0';
    }
    if (fresh && waker != NULL)
        waker(waker_arg);
    pthread_mutex_unlock(&req_lock);
}

bool repair_next_request(char *out)
{
    pthread_mutex_lock(&req_lock);
    bool got = n_requests > 0;
    if (got) {
        strcpy(out, requests[0]);
        memmove(requests[0], requests[1], (size_t)(n_requests - 1) * sizeof(requests[0]));
        n_requests--;
    }
    pthread_mutex_unlock(&req_lock);
    return got;
}

/* ---- Redis, routed by cluster_sync (MOVED, ASK, TRYAGAIN followed there) ---- */

struct repair {
    rsync_t *rs; /* opened at the first command, again after it failed to open */
    bool stale;  /* a command got no reply: read the map again before the next */
    const auth_config_t *auth;
    char sha[41];
    char token[128]; /* this process's lock token: a retry by the same host re-enters */
};

repair_t *repair_new(const auth_config_t *auth, const char *host_id)
{
    if (script_src == NULL)
        return NULL;
    repair_t *rp = calloc(1, sizeof(*rp));
    if (rp == NULL)
        return NULL;
    rp->auth = auth;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(rp->token, sizeof(rp->token), "%s:%d:%lld", host_id != NULL ? host_id : "",
             (int)getpid(), (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    return rp;
}

void repair_free(repair_t *rp)
{
    if (rp == NULL)
        return;
    rsync_close(rp->rs);
    free(rp);
}

/* Sends argv to the master serving key's slot. The reply (caller frees), or NULL when no node
 * could be asked or a connection failed: a master that died leaves the map stale until its
 * replica is promoted, so the next command reads the map again first. */
static redisReply *cmd(repair_t *rp, const char *key, size_t keylen, int argc, const char **argv,
                       const size_t *lens)
{
    char err[256];
    if (rp->rs == NULL) {
        rp->rs = rsync_open(seed_src, rp->auth, CONNECT_TIMEOUT_MS, err, sizeof(err));
        if (rp->rs == NULL) {
            log_warn("repair: redis %s: %s", seed_src, err);
            return NULL;
        }
        rp->stale = false;
    }
    if (rp->stale && rsync_refresh(rp->rs, err, sizeof(err)) != 0) {
        log_warn("repair: redis cluster map: %s", err);
        return NULL;
    }
    rp->stale = false;
    redisReply *r = rsync_command_argv(rp->rs, key, keylen, argc, argv, lens, err, sizeof(err));
    if (r == NULL) {
        log_warn("repair: redis %s: %s", argv[0], err);
        rp->stale = true;
    }
    return r;
}

static bool is_noscript(const redisReply *r)
{
    return r != NULL && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

/* EVALSHA of repair.lua on the event's keys (KEYS: meta users orders uorders repair) with args;
 * loads the script where a node does not have it (a restart, a promoted replica). */
static redisReply *eval(repair_t *rp, const char *event, int nargs, const char **args,
                        const size_t *alens)
{
    enum { NKEYS = 5 };
    char keys[NKEYS][KEYSPACE_KEY_MAX];
    const keyspace_key_t which[4] = {KEYSPACE_META, KEYSPACE_USERS, KEYSPACE_ORDERS,
                                     KEYSPACE_UORDERS};
    int argc = 3 + NKEYS + nargs;
    const char **argv = malloc(sizeof(*argv) * (size_t)argc);
    size_t *lens = malloc(sizeof(*lens) * (size_t)argc);
    redisReply *r = NULL;
    if (argv == NULL || lens == NULL)
        goto out;
    size_t elen = strlen(event);
    for (int i = 0; i < 4; i++)
        lens[3 + i] = (size_t)keyspace_key(keys[i], event, elen, which[i]);
    lens[3 + 4] = (size_t)snprintf(keys[4], sizeof(keys[4]), "{%s}:repair", event);
    for (int i = 0; i < NKEYS; i++)
        argv[3 + i] = keys[i];
    argv[0] = "EVALSHA";
    lens[0] = 7;
    argv[2] = "5";
    lens[2] = 1;
    memcpy(argv + 3 + NKEYS, args, sizeof(*args) * (size_t)nargs);
    memcpy(lens + 3 + NKEYS, alens, sizeof(*alens) * (size_t)nargs);
    for (int attempt = 0; attempt < 2; attempt++) {
        if (rp->sha[0] == '\0' || attempt > 0) {
            const char *la[] = {"SCRIPT", "LOAD", script_src};
            size_t ll[] = {6, 4, strlen(script_src)};
            redisReply *l = cmd(rp, keys[0], lens[3], 3, la, ll);
            bool ok = l != NULL && l->type == REDIS_REPLY_STRING && l->len == 40;
            if (ok)
                memcpy(rp->sha, l->str, 41);
            else if (l != NULL)
                log_warn("repair: SCRIPT LOAD: %s",
                         l->type == REDIS_REPLY_ERROR ? l->str : "unexpected reply");
            freeReplyObject(l);
            if (!ok)
                goto out;
        }
        argv[1] = rp->sha;
        lens[1] = 40;
        freeReplyObject(r);
        r = cmd(rp, keys[0], lens[3], argc, argv, lens);
        if (!is_noscript(r))
            break;
    }
out:
    free(argv);
    free(lens);
    return r;
}

/* The verdict of a repair.lua reply (element 0), or "" (an error reply: logged). */
static const char *verdict(const redisReply *r, const char *event)
{
    if (r == NULL)
        return "";
    if (r->type == REDIS_REPLY_ERROR) {
        log_warn("repair: %s: %s", event, r->str);
        return "";
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != REDIS_REPLY_STRING)
        return "";
    return r->element[0]->str;
}

static int64_t elem_int(const redisReply *r, size_t i)
{
    if (r->elements <= i)
        return -1;
    const redisReply *e = r->element[i];
    if (e->type == REDIS_REPLY_INTEGER)
        return e->integer;
    if (e->type == REDIS_REPLY_STRING)
        return strtoll(e->str, NULL, 10);
    return -1;
}

/* ---- one repair ---- */

/* An order sold with a hold (header Snatch-Hold-Until): kept until the replay ends, when its
 * transitions, which may come later in the stream, say what it became. Strings owned. */
typedef struct held {
    char *id, *user, *host;
    int64_t qty, created, until;
} held_t;

/* A transition message (header Snatch-Transition): not an order. id owned. */
typedef struct trans {
    char *id;
    char state[12];
    int64_t at;
} trans_t;

typedef struct job {
    repair_t *rp;
    uint64_t started_ms;
    const char *event;
    char node[CLUSTER_ID_MAX];
    char ttl[24];
    int64_t seq_max;
    repair_report_t *rep;
    held_t *held;
    size_t n_held, cap_held;
    trans_t *tr;
    size_t n_tr, cap_tr;
    /* The chunk being filled: f strings per order (5 'chunk', 6 'held'), owned. */
    int n, f;
    char *args[6 + 6 * REPAIR_CHUNK];
    size_t lens[6 + 6 * REPAIR_CHUNK];
} job_t;

static void chunk_clear(job_t *j)
{
    for (int i = 0; i < j->f * j->n; i++)
        free(j->args[6 + i]);
    j->n = 0;
}

static void life_clear(job_t *j)
{
    for (size_t i = 0; i < j->n_held; i++) {
        free(j->held[i].id);
        free(j->held[i].user);
        free(j->held[i].host);
    }
    for (size_t i = 0; i < j->n_tr; i++)
        free(j->tr[i].id);
    free(j->held);
    free(j->tr);
}

static int flush(job_t *j)
{
    if (j->n == 0)
        return 0;
    char n[16];
    const char *head[6] = {
        j->f == 6 ? "held" : "chunk", j->event, j->rp->token, j->ttl, j->node, n};
    snprintf(n, sizeof(n), "%d", j->n);
    int nargs = 6 + j->f * j->n;
    for (int i = 0; i < 6; i++) {
        j->args[i] = (char *)head[i];
        j->lens[i] = strlen(head[i]);
    }
    redisReply *r = eval(j->rp, j->event, nargs, (const char **)j->args, j->lens);
    int rc = -1;
    const char *v = verdict(r, j->event);
    if (strcmp(v, "ok") == 0) {
        j->rep->restored += elem_int(r, 1);
        j->rep->units += elem_int(r, 2);
        j->rep->skipped += elem_int(r, 3);
        rc = 0;
    } else if (v[0] != '\0') {
        log_warn("repair: %s: chunk refused (%s): starting again later", j->event, v);
    }
    freeReplyObject(r);
    chunk_clear(j);
    return rc;
}

static char *dup_n(const char *s, size_t *len)
{
    *len = strlen(s);
    char *d = malloc(*len + 1);
    if (d != NULL)
        memcpy(d, s, *len + 1);
    return d;
}

/* Adds one parsed order of the event to the chunk (flushing a full one). life NULL: an order
 * paid at once ('chunk'); else what the stream says of a held one ('held'). */
static int add_order(job_t *j, const store_order_t *o, const char *life)
{
    char qty[24], created[24];
    int f = life != NULL ? 6 : 5;
    if (j->n > 0 && j->f != f && flush(j) != 0)
        return -1;
    j->f = f;
    snprintf(qty, sizeof(qty), "%" PRId64, o->qty);
    created[0] = '\0';
    if (o->created_at >= 0)
        snprintf(created, sizeof(created), "%" PRId64, o->created_at);
    const char *fv[6] = {o->order_id, o->user, qty, o->host != NULL ? o->host : "", created, life};
    int at = 6 + f * j->n;
    for (int i = 0; i < f; i++) {
        if ((j->args[at + i] = dup_n(fv[i], &j->lens[at + i])) == NULL) {
            for (int k = 0; k < i; k++)
                free(j->args[at + k]);
            return -1;
        }
    }
    j->n++;
    return j->n == REPAIR_CHUNK ? flush(j) : 0;
}

/* The seq of an order id of this event, or -1. */
static int64_t id_seq(const char *id, const char *event)
{
    size_t elen;
    const char *ev = keyspace_order_event(id, strlen(id), &elen);
    if (ev == NULL || elen != strlen(event) || memcmp(ev, event, elen) != 0)
        return -1;
    return strtoll(id + KEYSPACE_ID_MS_DIGITS + 1, NULL, 10);
}

static void *grow(void *p, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return p;
    size_t c = *cap ? *cap * 2 : 64;
    void *q = realloc(p, c * size);
    if (q != NULL)
        *cap = c;
    return q;
}

/* A transition of an order of this event: kept for the end of the replay. */
static int take_transition(job_t *j, const char *state, const char *data, size_t len)
{
    json_t *d = json_loadb(data, len, 0, NULL);
    json_t *id = json_object_get(d, "order_id"), *at = json_object_get(d, "at");
    int rc = 0;
    if (!json_is_string(id) || !json_is_integer(at) ||
        id_seq(json_string_value(id), j->event) < 0 ||
        (strcmp(state, "paid") != 0 && strcmp(state, "expired") != 0 &&
         strcmp(state, "cancelled") != 0)) {
        j->rep->skipped++;
        goto out;
    }
    trans_t *tr = grow(j->tr, &j->cap_tr, j->n_tr, sizeof(*tr));
    char *copy = strdup(json_string_value(id));
    if (tr == NULL || copy == NULL) {
        if (tr != NULL)
            j->tr = tr;
        free(copy);
        rc = -1;
        goto out;
    }
    j->tr = tr;
    tr[j->n_tr] = (trans_t){.id = copy, .at = json_integer_value(at)};
    snprintf(tr[j->n_tr].state, sizeof(tr[j->n_tr].state), "%s", state);
    j->n_tr++;
    j->rep->transitions++;
out:
    json_decref(d);
    return rc;
}

/* An order sold with a hold: kept for the end of the replay. */
static int keep_held(job_t *j, const store_order_t *o, int64_t until)
{
    held_t *h = grow(j->held, &j->cap_held, j->n_held, sizeof(*h));
    if (h == NULL)
        return -1;
    j->held = h;
    held_t x = {.id = strdup(o->order_id),
                .user = strdup(o->user),
                .host = o->host != NULL ? strdup(o->host) : NULL,
                .qty = o->qty,
                .created = o->created_at,
                .until = until};
    if (x.id == NULL || x.user == NULL || (o->host != NULL && x.host == NULL)) {
        free(x.id);
        free(x.user);
        free(x.host);
        return -1;
    }
    h[j->n_held++] = x;
    return 0;
}

static int trans_cmp(const void *a, const void *b)
{
    return strcmp(((const trans_t *)a)->id, ((const trans_t *)b)->id);
}

/* The held orders, once every transition is known: restored as what they became. */
static int restore_held(job_t *j)
{
    if (j->n_tr > 1)
        qsort(j->tr, j->n_tr, sizeof(*j->tr), trans_cmp);
    for (size_t i = 0; i < j->n_held; i++) {
        const held_t *h = &j->held[i];
        trans_t key = {.id = h->id};
        const trans_t *t =
            j->n_tr > 0 ? bsearch(&key, j->tr, j->n_tr, sizeof(*j->tr), trans_cmp) : NULL;
        char life[64];
        if (t != NULL)
            snprintf(life, sizeof(life), "%s %" PRId64 " %" PRId64, t->state, t->at, h->until);
        else
            snprintf(life, sizeof(life), "held %" PRId64, h->until);
        store_order_t o = {.order_id = h->id,
                           .user = h->user,
                           .host = h->host,
                           .qty = h->qty,
                           .created_at = h->created};
        if (add_order(j, &o, life) != 0)
            return -1;
    }
    return flush(j);
}

/* Transitions this node may have lost while it still has their orders held. */
static int settle(job_t *j)
{
    for (size_t at = 0; at < j->n_tr; at += REPAIR_CHUNK) {
        size_t n = j->n_tr - at < REPAIR_CHUNK ? j->n_tr - at : REPAIR_CHUNK;
        char count[16], ats[REPAIR_CHUNK][24];
        snprintf(count, sizeof(count), "%zu", n);
        const char *head[6] = {"settle", j->event, j->rp->token, j->ttl, j->node, count};
        const char **args = (const char **)j->args;
        for (int i = 0; i < 6; i++) {
            args[i] = head[i];
            j->lens[i] = strlen(head[i]);
        }
        for (size_t i = 0; i < n; i++) {
            const trans_t *t = &j->tr[at + i];
            snprintf(ats[i], sizeof(ats[i]), "%" PRId64, t->at);
            const char *f[3] = {t->id, t->state, ats[i]};
            for (int k = 0; k < 3; k++) {
                args[6 + 3 * i + (size_t)k] = f[k];
                j->lens[6 + 3 * i + (size_t)k] = strlen(f[k]);
            }
        }
        redisReply *r = eval(j->rp, j->event, (int)(6 + 3 * n), args, j->lens);
        const char *v = verdict(r, j->event);
        int ok = strcmp(v, "ok") == 0;
        if (ok)
            j->rep->settled += elem_int(r, 1);
        else if (v[0] != '\0')
            log_warn("repair: %s: settle refused (%s): starting again later", j->event, v);
        freeReplyObject(r);
        if (!ok)
            return -1;
    }
    return 0;
}

/* One record of an order message (order_msg.h): a bad one or another event's is skipped. */
static int take_record(job_t *j, const char *data, size_t len, int64_t until)
{
    char scratch[4 * ORDERS_PAYLOAD_MAX], reason[256];
    store_order_t o;
    json_t *doc = NULL;
    int rc = 0;
    if (store_scan_order(data, len, &o, scratch, sizeof(scratch)) != 1 &&
        store_parse_order(data, len, &o, &doc, reason, sizeof(reason)) != 0) {
        j->rep->skipped++; /* the subscriber dead-letters it: not an order */
        return 0;
    }
    int64_t seq = id_seq(o.order_id, j->event);
    if (seq < 0 || strcmp(o.event, j->event) != 0) {
        j->rep->skipped++;
    } else {
        if (seq > j->seq_max)
            j->seq_max = seq;
        rc = until > 0 ? keep_held(j, &o, until) : add_order(j, &o, NULL);
    }
    json_decref(doc);
    return rc;
}

/* Every record of a batch is restored (repair.lua counts an order id once, however many
 * messages hold it: a batch and the single republishes of its orders). A count mismatch only
 * costs a log line: the good records are orders all the same. */
static int take_msg(job_t *j, natsMsg *m)
{
    const char *data = natsMsg_GetData(m);
    size_t len = (size_t)natsMsg_GetDataLength(m);
    const char *count = NULL, *hold = NULL, *rec;
    size_t rlen;
    order_body_t b;
    j->rep->replayed++;
    /* Transitions share the stream (Nats-Msg-Id "<id>:<state>"): never an order of their own. */
    const char *state = NULL;
    if (natsMsgHeader_Get(m, ORDERS_HDR_TRANSITION, &state) == NATS_OK && state != NULL)
        return take_transition(j, state, data, len);
    int64_t until = 0;
    if (natsMsgHeader_Get(m, ORDERS_HDR_HOLD_UNTIL, &hold) == NATS_OK && hold != NULL)
        until = strtoll(hold, NULL, 10);
    if (natsMsgHeader_Get(m, ORDERS_HDR_COUNT, &count) != NATS_OK)
        count = NULL;
    order_body_init(&b, data, len, count);
    while (order_body_next(&b, &rec, &rlen))
        if (take_record(j, rec, rlen, until) != 0)
            return -1;
    if (order_body_mismatch(&b))
        log_warn("repair: %s: a message says %s: %s and holds %lld records", j->event,
                 ORDERS_HDR_COUNT, count != NULL ? count : "-", (long long)b.seen);
    return 0;
}

/* Reads orders.<event> from the first message to the last one the stream had when this began. */
static int replay(job_t *j, jsCtx *js)
{
    char subject[sizeof(ORDERS_SUBJECT_PREFIX) + SNATCH_NAME_MAX];
    snprintf(subject, sizeof(subject), ORDERS_SUBJECT_PREFIX "%s", j->event);
    natsMsg *last = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetLastMsg(&last, js, ORDERS_STREAM, subject, NULL, &jerr);
    if (s == NATS_NOT_FOUND)
        return 0; /* nothing was ever persisted for it */
    if (s != NATS_OK) {
        log_warn("repair: %s: last message: %s (%d)", j->event, natsStatus_GetText(s), (int)jerr);
        return -1;
    }
    uint64_t end = natsMsg_GetSequence(last);
    natsMsg_Destroy(last);
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = ORDERS_STREAM;
    so.Ordered = true;
    so.Config.DeliverPolicy = js_DeliverAll;
    natsSubscription *sub = NULL;
    s = js_SubscribeSync(&sub, js, subject, NULL, &so, &jerr);
    if (s != NATS_OK) {
        log_warn("repair: %s: subscribe: %s (%d)", j->event, natsStatus_GetText(s), (int)jerr);
        return -1;
    }
    int rc = 0;
    for (;;) {
        natsMsg *m = NULL;
        s = natsSubscription_NextMsg(&m, sub, REPAIR_REPLAY_WAIT_MS);
        if (s != NATS_OK) {
            log_warn("repair: %s: replay stopped: %s", j->event, natsStatus_GetText(s));
            rc = -1;
            break;
        }
        jsMsgMetaData *meta = NULL;
        uint64_t seq = 0;
        if (natsMsg_GetMetaData(&meta, m) == NATS_OK) {
            seq = meta->Sequence.Stream;
            jsMsgMetaData_Destroy(meta);
        }
        rc = take_msg(j, m);
        natsMsg_Destroy(m);
        if (rc != 0 || seq >= end)
            break;
    }
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    return rc;
}

static repair_result_t begin(job_t *j)
{
    const char *args[6] = {"begin", j->event, j->rp->token,
                           j->ttl,  "",       claim_standalone ? "1" : "0"};
    size_t lens[6];
    for (int i = 0; i < 6; i++)
        lens[i] = strlen(args[i]);
    redisReply *r = eval(j->rp, j->event, 6, args, lens);
    const char *v = verdict(r, j->event);
    repair_result_t res = REPAIR_FAILED;
    if (strcmp(v, "current") == 0)
        res = REPAIR_CURRENT;
    else if (strcmp(v, "busy") == 0)
        res = REPAIR_BUSY;
    else if (strcmp(v, "unknown_event") == 0 || strcmp(v, "unclaimed") == 0)
        res = REPAIR_SKIPPED;
    else if (strcmp(v, "started") == 0 && r->elements >= 3 &&
             r->element[1]->type == REDIS_REPLY_STRING && r->element[1]->len < CLUSTER_ID_MAX) {
        snprintf(j->node, sizeof(j->node), "%s", r->element[1]->str);
        res = REPAIR_DONE; /* so far: started */
    }
    if (res == REPAIR_CURRENT && r->elements >= 2 && r->element[1]->type == REDIS_REPLY_STRING)
        snprintf(j->rep->node, sizeof(j->rep->node), "%.*s", CLUSTER_ID_MAX - 1,
                 r->element[1]->str);
    freeReplyObject(r);
    return res;
}

static int finish(job_t *j)
{
    char seq[24], gap[24];
    snprintf(seq, sizeof(seq), "%" PRId64, j->seq_max);
    snprintf(gap, sizeof(gap), "%d", REPAIR_SEQ_GAP);
    const char *args[7] = {"finish", j->event, j->rp->token, j->ttl, j->node, seq, gap};
    size_t lens[7];
    for (int i = 0; i < 7; i++)
        lens[i] = strlen(args[i]);
    redisReply *r = eval(j->rp, j->event, 7, args, lens);
    const char *v = verdict(r, j->event);
    int rc = -1;
    if (strcmp(v, "done") == 0) {
        j->rep->sold = elem_int(r, 1);
        j->rep->stock = elem_int(r, 2);
        rc = 0;
    } else if (v[0] != '\0') {
        log_warn("repair: %s: finish refused (%s): starting again later", j->event, v);
    }
    freeReplyObject(r);
    return rc;
}

/* Best effort: Redis may be what failed. The lock's ttl is the fallback. */
static void release(job_t *j)
{
    const char *args[5] = {"release", j->event, j->rp->token, j->ttl, j->node};
    size_t lens[5];
    for (int i = 0; i < 5; i++)
        lens[i] = strlen(args[i]);
    freeReplyObject(eval(j->rp, j->event, 5, args, lens));
}

static void report(const job_t *j)
{
    const repair_report_t *p = j->rep;
    int64_t over = p->sold > p->stock ? p->sold - p->stock : 0;
    metrics_repair(1, p->restored, over);
    log_warn("repair: %s: verified on node %s in %llu ms: %" PRId64 " orders replayed, %" PRId64
             " restored (%" PRId64 " units), %" PRId64 " skipped, %" PRId64 " transitions (%" PRId64
             " settled here); sold %" PRId64 " of %" PRId64,
             j->event, j->node, (unsigned long long)(util_mono_us() / 1000 - j->started_ms),
             p->replayed, p->restored, p->units, p->skipped, p->transitions, p->settled, p->sold,
             p->stock);
    if (over > 0)
        log_error("repair: %s: persisted orders exceed the stock by %" PRId64
                  " units (Redis lost more than its replicas kept): the event answers sold out",
                  j->event, over);
}

repair_result_t repair_event(repair_t *rp, jsCtx *js, const char *event, repair_report_t *rep)
{
    memset(rep, 0, sizeof(*rep));
    job_t *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return REPAIR_FAILED;
    j->rp = rp;
    j->started_ms = util_mono_us() / 1000;
    j->event = event;
    j->rep = rep;
    snprintf(j->ttl, sizeof(j->ttl), "%d", REPAIR_LOCK_TTL_MS);
    repair_result_t res = begin(j);
    if (res != REPAIR_DONE)
        goto out;
    snprintf(rep->node, sizeof(rep->node), "%s", j->node);
    if (replay(j, js) != 0 || flush(j) != 0 || restore_held(j) != 0 || settle(j) != 0 ||
        finish(j) != 0) {
        res = REPAIR_FAILED;
        metrics_repair(0, 0, 0);
        release(j);
        goto out;
    }
    report(j);
out:
    chunk_clear(j);
    life_clear(j);
    free(j);
    return res;
}

int repair_all(repair_t *rp, jsCtx *js)
{
    const char *argv[] = {"SMEMBERS", KEYSPACE_EVENTS};
    size_t lens[] = {8, strlen(KEYSPACE_EVENTS)};
    redisReply *r = cmd(rp, KEYSPACE_EVENTS, lens[1], 2, argv, lens);
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(r);
        return -1;
    }
    int done = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_STRING || !util_valid_name(e->str, e->len, SNATCH_NAME_MAX))
            continue;
        repair_report_t rep;
        done += repair_event(rp, js, e->str, &rep) == REPAIR_DONE;
    }
    freeReplyObject(r);
    return done;
}
