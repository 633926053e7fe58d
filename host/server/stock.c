/* Local stock: an open-addressing table of events, sized once at start-up (--max-events).
 * Readers (every request, every thread) never lock: slots are published with a release store and
 * never change or go away afterwards, so a pointer a reader holds can never dangle and nothing
 * needs epochs or hazard pointers. Writers (installing a new event, rare) serialise on one mutex.
 * The table has twice as many slots as events it accepts, so probes stay short and an install
 * never finds it full: the event count, not the slots, is the limit. */
#include "stock.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct stock_event {
    char name[SNATCH_NAME_MAX + 1];
    size_t name_len;
    /* Changed together under the table lock by stock_install(); read racily for display. */
    _Atomic int64_t total;          /* stock of the sale, from Redis */
    _Atomic int64_t per_user_limit; /* from Redis */
    _Atomic int64_t quota;          /* this host's allocation, from the policy */
    _Atomic uint64_t generation;    /* Redis "gen": bumped by every admin reset */
    /* Hot path. */
    _Atomic int64_t local_left; /* units of the quota not yet reserved */
    _Atomic bool sold_out;      /* Redis said there is nothing left */
    _Atomic bool paused;        /* Redis said the sale is paused */
};

static _Atomic(stock_event_t *) *table; /* slots entries; set before any reader starts */
static size_t slots;                    /* power of two, >= 2 * max_events */
static size_t max_events;
static size_t count; /* events installed (install_lock) */
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;

static uint32_t hash_name(const char *s, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a: names are short, validated, not attacker-chosen keys */
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

int stock_init_max(size_t max)
{
    if (max == 0 || max > STOCK_EVENTS_LIMIT)
        return -1;
    size_t n = 2;
    while (n < 2 * max)
        n *= 2;
    table = calloc(n, sizeof(*table));
    if (table == NULL)
        return -1;
    for (size_t i = 0; i < n; i++)
        atomic_store(&table[i], NULL);
    slots = n;
    max_events = max;
    count = 0;
    return 0;
}

void stock_init(void)
{
    if (stock_init_max(STOCK_EVENTS_DEFAULT) != 0)
        abort(); /* 64 KiB at start-up: nothing sensible to do without it */
}

void stock_shutdown(void)
{
    for (size_t i = 0; i < slots; i++)
        free(atomic_load(&table[i]));
    free(table);
    table = NULL;
    slots = max_events = count = 0;
}

size_t stock_max_events(void)
{
    return max_events;
}

static stock_event_t *find_slot(const char *name, size_t len, size_t *slot)
{
    uint32_t h = hash_name(name, len);
    for (size_t i = 0; i < slots; i++) {
        size_t s = (h + i) & (slots - 1);
        stock_event_t *ev = atomic_load_explicit(&table[s], memory_order_acquire);
        if (ev == NULL) {
            *slot = s;
            return NULL;
        }
        if (ev->name_len == len && memcmp(ev->name, name, len) == 0) {
            *slot = s;
            return ev;
        }
    }
    *slot = slots;
    return NULL;
}

stock_event_t *stock_find(const char *name, size_t len)
{
    size_t slot;
    if (len > SNATCH_NAME_MAX)
        return NULL;
    return find_slot(name, len, &slot);
}

static void reset_event(stock_event_t *ev, int64_t total, int64_t limit, int64_t quota,
                        uint64_t gen, bool sold_out)
{
    atomic_store(&ev->total, total);
    atomic_store(&ev->per_user_limit, limit);
    atomic_store(&ev->quota, quota);
    atomic_store(&ev->local_left, quota);
    atomic_store(&ev->sold_out, sold_out);
    atomic_store(&ev->generation, gen);
}

static stock_event_t *install_locked(const char *name, size_t len, int64_t total,
                                     int64_t per_user_limit, int64_t quota, uint64_t generation,
                                     bool sold_out)
{
    size_t slot;
    stock_event_t *ev = find_slot(name, len, &slot);
    if (ev == NULL) {
        if (slot == slots || count >= max_events || (ev = calloc(1, sizeof(*ev))) == NULL)
            return NULL;
        memcpy(ev->name, name, len);
        ev->name_len = len;
        reset_event(ev, total, per_user_limit, quota, generation, sold_out);
        atomic_store_explicit(&table[slot], ev, memory_order_release);
        count++;
    } else if (atomic_load(&ev->generation) != generation) {
        reset_event(ev, total, per_user_limit, quota, generation, sold_out);
    } else {
        int64_t old = atomic_exchange(&ev->quota, quota);
        if (old != quota) {
            /* Policy reload changed the allocation mid-sale: move what is left by the difference.
             */
            int64_t left = atomic_fetch_add(&ev->local_left, quota - old) + quota - old;
            if (left < 0)
                atomic_fetch_add(&ev->local_left, -left);
        }
        atomic_store(&ev->total, total);
        atomic_store(&ev->per_user_limit, per_user_limit);
        if (sold_out)
            atomic_store(&ev->sold_out, true);
    }
    return ev;
}

stock_event_t *stock_install(const char *name, size_t len, int64_t total, int64_t per_user_limit,
                             int64_t quota, uint64_t generation, bool sold_out)
{
    if (len == 0 || len > SNATCH_NAME_MAX)
        return NULL;
    pthread_mutex_lock(&install_lock);
    stock_event_t *ev =
        install_locked(name, len, total, per_user_limit, quota, generation, sold_out);
    pthread_mutex_unlock(&install_lock);
    return ev;
}

stock_event_t *stock_install_reserved(const char *name, size_t len, int64_t total,
                                      int64_t per_user_limit, int64_t quota, uint64_t generation,
                                      bool sold_out)
{
    pthread_mutex_lock(&install_lock);
    count--; /* the reservation becomes the event (or went to a concurrent install of it) */
    stock_event_t *ev =
        install_locked(name, len, total, per_user_limit, quota, generation, sold_out);
    pthread_mutex_unlock(&install_lock);
    return ev;
}

stock_verdict_t stock_check(const stock_event_t *ev, int64_t qty)
{
    if (atomic_load_explicit(&ev->paused, memory_order_relaxed))
        return STOCK_PAUSED;
    if (atomic_load_explicit(&ev->sold_out, memory_order_relaxed))
        return STOCK_SOLD_OUT;
    int64_t left = atomic_load_explicit(&ev->local_left, memory_order_relaxed);
    if (left >= qty)
        return STOCK_OK;
    return left > 0 ? STOCK_INSUFFICIENT : STOCK_SOLD_OUT;
}

int stock_reserve(stock_event_t *ev, int64_t qty)
{
    if (atomic_load_explicit(&ev->sold_out, memory_order_relaxed) ||
        atomic_load_explicit(&ev->paused, memory_order_relaxed))
        return -1;
    int64_t left = atomic_load_explicit(&ev->local_left, memory_order_relaxed);
    while (left >= qty) {
        if (atomic_compare_exchange_weak(&ev->local_left, &left, left - qty))
            return 0;
    }
    return -1;
}

void stock_release(stock_event_t *ev, int64_t qty)
{
    atomic_fetch_add(&ev->local_left, qty);
}

bool stock_refill(stock_event_t *ev, int64_t units)
{
    int64_t zero = 0;
    if (units <= 0 || atomic_load(&ev->sold_out))
        return false;
    return atomic_compare_exchange_strong(&ev->local_left, &zero, units);
}

void stock_mark_sold_out(stock_event_t *ev)
{
    atomic_store(&ev->sold_out, true);
}

void stock_mark_paused(stock_event_t *ev)
{
    atomic_store(&ev->paused, true);
}

void stock_follow(stock_event_t *ev, bool sold_out, bool paused)
{
    atomic_store(&ev->sold_out, sold_out);
    atomic_store(&ev->paused, paused);
}

int stock_reserve_room(const char *name, size_t len)
{
    if (len == 0 || len > SNATCH_NAME_MAX)
        return -1;
    pthread_mutex_lock(&install_lock);
    size_t slot;
    int rc = -1;
    if (find_slot(name, len, &slot) != NULL) {
        rc = 0; /* known already: a reset needs no room */
    } else if (slot != slots && count < max_events) {
        count++; /* held until stock_install_reserved() or stock_unreserve() */
        rc = 1;
    }
    pthread_mutex_unlock(&install_lock);
    return rc;
}

void stock_unreserve(void)
{
    pthread_mutex_lock(&install_lock);
    count--;
    pthread_mutex_unlock(&install_lock);
}

void stock_foreach(void (*fn)(stock_event_t *ev, void *arg), void *arg)
{
    for (size_t i = 0; i < slots; i++) {
        stock_event_t *ev = atomic_load_explicit(&table[i], memory_order_acquire);
        if (ev != NULL)
            fn(ev, arg);
    }
}

void stock_view(const stock_event_t *ev, stock_view_t *out)
{
    out->name = ev->name;
    out->name_len = ev->name_len;
    out->total = atomic_load_explicit(&ev->total, memory_order_relaxed);
    out->per_user_limit = atomic_load_explicit(&ev->per_user_limit, memory_order_relaxed);
    out->quota = atomic_load_explicit(&ev->quota, memory_order_relaxed);
    out->generation = atomic_load_explicit(&ev->generation, memory_order_relaxed);
    out->left = atomic_load_explicit(&ev->local_left, memory_order_relaxed);
    out->sold_out = atomic_load_explicit(&ev->sold_out, memory_order_relaxed);
    out->paused = atomic_load_explicit(&ev->paused, memory_order_relaxed);
}
