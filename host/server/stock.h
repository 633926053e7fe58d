/* The host's view of each event: the sale's shape as last read from Redis (stock, per-user
 * limit, generation) and this host's local quota, an atomic counter shared by all loop threads.
 * The local quota is what lets a host answer "sold out" without asking Redis: once it is used up,
 * or once Redis said the event is sold out, every thread rejects at once.
 *
 * Thread-safety: all functions but init/shutdown may be called from any thread. Events are never
 * freed before stock_shutdown(), so a stock_event_t pointer stays valid for the life of the
 * process. The table holds at most stock_max_events() events (--max-events); there is no way to
 * delete an event (the API has none), so nothing is reclaimed. */
#ifndef SNATCH_STOCK_H
#define SNATCH_STOCK_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

typedef struct stock_event stock_event_t;

/* What the other modules may know of an event: a snapshot, read racily (each field atomically,
 * not all together), for display, metrics and tests. Only stock.c writes an event. */
typedef struct stock_view {
    const char *name; /* valid for the life of the process */
    size_t name_len;
    int64_t total;          /* stock of the sale, from Redis */
    int64_t per_user_limit; /* from Redis */
    int64_t quota;          /* this host's allocation, from the policy */
    uint64_t generation;    /* Redis "gen": bumped by every admin reset */
    int64_t left;           /* units of the quota not yet reserved */
    bool sold_out;          /* Redis said there is nothing left */
    bool paused;            /* Redis said the sale is paused (admin) */
} stock_view_t;

void stock_view(const stock_event_t *ev, stock_view_t *out);

#define STOCK_EVENTS_DEFAULT 4096
#define STOCK_EVENTS_LIMIT (1u << 22)

/* Sizes the table for max events (1..STOCK_EVENTS_LIMIT). Returns 0, or -1 (bad size, no
 * memory). Before any other call, once. stock_init(): the default size. */
int stock_init_max(size_t max);
void stock_init(void);
void stock_shutdown(void);
size_t stock_max_events(void);

/* Looks up an event by name. NULL when this host does not know it (yet). */
stock_event_t *stock_find(const char *name, size_t len);

/* Creates the event or, when generation differs from what the host has, resets it: local_left =
 * quota, sold_out cleared. A call with the same generation only updates quota bookkeeping when
 * the quota changed (policy reload): local_left moves by the difference, never below 0.
 * Returns the event, or NULL when the table is full. */
stock_event_t *stock_install(const char *name, size_t len, int64_t total, int64_t per_user_limit,
                             int64_t quota, uint64_t generation, bool sold_out);

typedef enum {
    STOCK_OK,           /* the local quota covers qty */
    STOCK_PAUSED,       /* the sale is paused (as last read from Redis) */
    STOCK_SOLD_OUT,     /* nothing left locally, or Redis said sold out */
    STOCK_INSUFFICIENT, /* some left, fewer than qty */
} stock_verdict_t;

/* Whether qty units could be taken now; takes nothing (the sale asks before the policy runs, so
 * the sold-out flood costs no Lua call; stock_reserve decides for real afterwards). */
stock_verdict_t stock_check(const stock_event_t *ev, int64_t qty);

/* Takes qty units of the local quota. Returns 0, or -1 when the quota cannot cover qty or the
 * event is sold out (nothing taken then). */
int stock_reserve(stock_event_t *ev, int64_t qty);

/* Gives back qty units taken by stock_reserve (Redis refused, or failed). */
void stock_release(stock_event_t *ev, int64_t qty);

/* The local quota is spent but Redis still has stock (hosts died, or traffic was uneven):
 * grants units more, only if nothing is left locally right now (so concurrent refreshes do not
 * stack). Returns true when it granted. */
bool stock_refill(stock_event_t *ev, int64_t units);

/* Redis said sold out: every thread answers 409 from now on, until a reset or a refresh that
 * finds stock again (stock_follow). */
void stock_mark_sold_out(stock_event_t *ev);

/* Redis said the sale is paused: every thread refuses at once, until stock_follow() says
 * otherwise. */
void stock_mark_paused(stock_event_t *ev);

/* The event's state as just read from Redis ({E}:meta): sold out (sold >= stock) and paused,
 * both ways, so that a stock increase (PATCH) or a resume makes a host that answered sold out or
 * paused sell again within one refresh. A read that raced a sale may clear sold_out wrongly for
 * a moment: Redis still refuses, and its answer sets the flag again. */
void stock_follow(stock_event_t *ev, bool sold_out, bool paused);

/* Holds room for one more event before it is created in Redis (admin PUT), so that an event the
 * host cannot hold is refused up front instead of half-created. Returns 1 (room held: follow with
 * exactly one stock_install_reserved() or stock_unreserve()), 0 (the event is known: nothing
 * held), or -1 (the table is full). The count is held, not a slot: nothing half-made is ever
 * visible to readers, and a refused creation leaves no trace. */
int stock_reserve_room(const char *name, size_t len);
void stock_unreserve(void);
/* stock_install() that spends the room held by stock_reserve_room() (never NULL then, unless
 * calloc fails). */
stock_event_t *stock_install_reserved(const char *name, size_t len, int64_t total,
                                      int64_t per_user_limit, int64_t quota, uint64_t generation,
                                      bool sold_out);

/* Calls fn for each known event (for metrics, the refresher). fn must not call stock_install. */
void stock_foreach(void (*fn)(stock_event_t *ev, void *arg), void *arg);

#endif
