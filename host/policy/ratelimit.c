/* Token buckets shared by every loop thread (policy scripts call them through host.limit on
 * nearly every request). The table is allocated once: 64 stripes, each with its own mutex, a
 * chained hash index and an LRU list over a fixed array of buckets. A lock is held for a few
 * hundred nanoseconds and never across anything that blocks, so loop threads may take it.
 *
 * A bucket that has refilled completely is indistinguishable from a new one, so it is "stale":
 * every call frees up to two stale buckets from the cold end of its stripe's LRU list. When a
 * stripe is full of live buckets anyway (more distinct active keys than capacity), its least
 * recently used bucket is reused; that key then starts again with a full bucket. Memory stays
 * bounded whatever keys an attacker invents.
 *
 * Keys longer than KEY_MAX keep their first bytes plus two independent 64-bit seeded hashes of
 * the whole key, and are flagged, so they never collide with a short key by construction. */
#include "ratelimit.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define STRIPES 64
#define STRIPE_SHIFT 58 /* the top 6 bits of a hash pick the stripe */
#define KEY_MAX 128
#define KEY_PREFIX (KEY_MAX - 16)
#define DEFAULT_CAPACITY 65536
#define RECLAIM_PER_CALL 2
#define NONE (-1)

typedef struct bucket {
    uint64_t hash;
    uint64_t last_us;
    double tokens;
    double rate; /* as last used: needed to tell whether the bucket is stale */
    double burst;
    int32_t next;         /* hash chain */
    int32_t newer, older; /* LRU list */
    uint8_t keylen;
    bool hashed;
    char key[KEY_MAX];
} bucket_t;

typedef struct stripe {
    _Alignas(64) pthread_mutex_t lock;
    bucket_t *buckets;
    int32_t *heads;
    uint32_t mask;
    int32_t free; /* free list, linked through next */
    int32_t newest, oldest;
} stripe_t;

static stripe_t stripes[STRIPES];
static uint64_t seed;
static atomic_bool ready;
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;

static uint64_t mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* FNV-1a over the bytes, seeded and finished with a strong mixer so that the stripe (top bits)
 * and chain (low bits) are both well spread. */
static uint64_t hash_bytes(const char *p, size_t len, uint64_t s)
{
    uint64_t h = 0xcbf29ce484222325ULL ^ s;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)p[i];
        h *= 0x100000001b3ULL;
    }
    return mix(h ^ len);
}

static void free_stripes(size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(stripes[i].buckets);
        free(stripes[i].heads);
        pthread_mutex_destroy(&stripes[i].lock);
        memset(&stripes[i], 0, sizeof(stripes[i]));
    }
}

static int init_stripe(stripe_t *st, size_t per_stripe)
{
    uint32_t heads = 1;
    while (heads < per_stripe)
        heads <<= 1;
    st->buckets = calloc(per_stripe, sizeof(bucket_t));
    st->heads = malloc(heads * sizeof(int32_t));
    if (!st->buckets || !st->heads || pthread_mutex_init(&st->lock, NULL) != 0) {
        free(st->buckets);
        free(st->heads);
        return -ENOMEM;
    }
    st->mask = heads - 1;
    for (uint32_t i = 0; i < heads; i++)
        st->heads[i] = NONE;
    for (size_t i = 0; i < per_stripe; i++)
        st->buckets[i].next = i + 1 < per_stripe ? (int32_t)(i + 1) : NONE;
    st->free = 0;
    st->newest = st->oldest = NONE;
    return 0;
}

static int init_locked(size_t capacity)
{
    size_t per_stripe = (capacity + STRIPES - 1) / STRIPES;

    if (atomic_load(&ready))
        return -EALREADY;
    if (capacity == 0 || per_stripe > (1u << 28))
        return -EINVAL;
    if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != sizeof(seed)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = mix((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uintptr_t)&ts);
    }
    for (size_t i = 0; i < STRIPES; i++) {
        if (init_stripe(&stripes[i], per_stripe) < 0) {
            free_stripes(i);
            return -ENOMEM;
        }
    }
    atomic_store(&ready, true);
    return 0;
}

int ratelimit_init(size_t capacity)
{
    pthread_mutex_lock(&init_lock);
    int rc = init_locked(capacity);
    pthread_mutex_unlock(&init_lock);
    return rc;
}

/* Only once every thread that takes tokens has stopped. */
void ratelimit_shutdown(void)
{
    pthread_mutex_lock(&init_lock);
    if (atomic_load(&ready)) {
        atomic_store(&ready, false);
        free_stripes(STRIPES);
    }
    pthread_mutex_unlock(&init_lock);
}

/* ---- one stripe, lock held ------------------------------------------------------------- */

static void lru_unlink(stripe_t *st, int32_t i)
{
    bucket_t *b = &st->buckets[i];
    if (b->newer != NONE)
        st->buckets[b->newer].older = b->older;
    else
        st->newest = b->older;
    if (b->older != NONE)
        st->buckets[b->older].newer = b->newer;
    else
        st->oldest = b->newer;
}

static void lru_push(stripe_t *st, int32_t i)
{
    bucket_t *b = &st->buckets[i];
    b->newer = NONE;
    b->older = st->newest;
    if (st->newest != NONE)
        st->buckets[st->newest].newer = i;
    st->newest = i;
    if (st->oldest == NONE)
        st->oldest = i;
}

static void chain_unlink(stripe_t *st, int32_t i)
{
    int32_t *link = &st->heads[st->buckets[i].hash & st->mask];
    while (*link != NONE && *link != i)
        link = &st->buckets[*link].next;
    if (*link == i)
        *link = st->buckets[i].next;
}

/* Unlinks bucket i from the index and the LRU list; the caller reuses or frees it. */
static void detach(stripe_t *st, int32_t i)
{
    chain_unlink(st, i);
    lru_unlink(st, i);
}

static double refilled(const bucket_t *b, uint64_t now_us)
{
    /* Threads read the clock before taking the lock, so now may be a little behind last. */
    double elapsed = now_us > b->last_us ? (double)(now_us - b->last_us) / 1e6 : 0;
    double t = b->tokens + elapsed * b->rate;
    return t > b->burst ? b->burst : t;
}

static void reclaim_stale(stripe_t *st, uint64_t now_us)
{
    for (int n = 0; n < RECLAIM_PER_CALL && st->oldest != NONE; n++) {
        int32_t i = st->oldest;
        if (refilled(&st->buckets[i], now_us) < st->buckets[i].burst)
            return;
        detach(st, i);
        st->buckets[i].next = st->free;
        st->free = i;
    }
}

static int32_t find(stripe_t *st, uint64_t h, const char *k, size_t klen, bool hashed)
{
    for (int32_t i = st->heads[h & st->mask]; i != NONE; i = st->buckets[i].next) {
        const bucket_t *b = &st->buckets[i];
        if (b->hash == h && b->keylen == klen && b->hashed == hashed &&
            memcmp(b->key, k, klen) == 0)
            return i;
    }
    return NONE;
}

/* A free bucket, else the least recently used one, as a fresh full bucket for the key. */
static int32_t insert(stripe_t *st, uint64_t h, const char *k, size_t klen, bool hashed,
                      double burst, uint64_t now_us)
{
    int32_t i = st->free;
    if (i != NONE) {
        st->free = st->buckets[i].next;
    } else {
        i = st->oldest;
        detach(st, i);
    }
    bucket_t *b = &st->buckets[i];
    b->hash = h;
    b->keylen = (uint8_t)klen;
    b->hashed = hashed;
    memcpy(b->key, k, klen);
    b->tokens = burst;
    b->last_us = now_us;
    b->next = st->heads[h & st->mask];
    st->heads[h & st->mask] = i;
    lru_push(st, i);
    return i;
}

static void lazy_init(void)
{
    pthread_mutex_lock(&init_lock);
    if (!atomic_load(&ready))
        init_locked(DEFAULT_CAPACITY);
    pthread_mutex_unlock(&init_lock);
}

bool ratelimit_take(const char *key, size_t len, double rate, double burst, double cost,
                    uint64_t now_us)
{
    char shortened[KEY_MAX];
    const char *k = key;
    size_t klen = len;
    bool hashed = false;

    if (!atomic_load_explicit(&ready, memory_order_acquire)) {
        lazy_init();
        if (!atomic_load(&ready))
            return true; /* out of memory at start: limiting is not worth refusing sales */
    }
    if (len > KEY_MAX) {
        uint64_t h1 = hash_bytes(key, len, seed), h2 = hash_bytes(key, len, ~seed);
        memcpy(shortened, key, KEY_PREFIX);
        memcpy(shortened + KEY_PREFIX, &h1, sizeof(h1));
        memcpy(shortened + KEY_PREFIX + 8, &h2, sizeof(h2));
        k = shortened;
        klen = KEY_MAX;
        hashed = true;
    }
    uint64_t h = hash_bytes(k, klen, seed) ^ hashed;
    stripe_t *st = &stripes[h >> STRIPE_SHIFT];

    pthread_mutex_lock(&st->lock);
    reclaim_stale(st, now_us);
    int32_t i = find(st, h, k, klen, hashed);
    if (i == NONE) {
        i = insert(st, h, k, klen, hashed, burst, now_us);
    } else {
        lru_unlink(st, i);
        lru_push(st, i);
    }
    bucket_t *b = &st->buckets[i];
    b->burst = burst; /* the policy may have changed (reload): the new numbers apply */
    b->tokens = refilled(b, now_us);
    b->rate = rate;
    if (now_us > b->last_us)
        b->last_us = now_us;
    bool allowed = b->tokens >= cost;
    if (allowed)
        b->tokens -= cost;
    pthread_mutex_unlock(&st->lock);
    return allowed;
}
