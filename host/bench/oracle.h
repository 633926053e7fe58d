/* The correctness oracle of snatch-bench: it records every order confirmed by a 200 and checks
 * the invariants of a sale against them at the end of a run.
 *
 *   - order ids are unique (no duplicate sale),
 *   - no buyer got more units than the per-user limit,
 *   - with the event's counters (GET /v1/events/E): sold <= stock (no oversell) and the units
 *     sold during the run match the units confirmed by 200s (no undersell, no silent sale),
 *   - with the subscriber's SQLite file: every confirmed order is a row (nothing lost), the rows
 *     of the event hold no more units than the stock, and no row is unexplained.
 *
 * Threads: each load thread owns an oracle_t and records into it (no locking); the main thread
 * merges them with oracle_merge() and runs oracle_check() once the load has ended. */
#ifndef SNATCH_ORACLE_H
#define SNATCH_ORACLE_H

#include <jansson.h>
#include <stddef.h>
#include <stdio.h>

typedef struct oracle oracle_t;

/* Returns an empty recorder, or NULL when out of memory. */
oracle_t *oracle_new(void);
void oracle_free(oracle_t *o);

/* Records the body of one 200: {"order_id":"...","event":"...","user":"...","qty":N}. Returns 0,
 * -EINVAL when the body is not such an order (counted as a bad body, itself a violation), or
 * -ENOMEM. */
int oracle_add_body(oracle_t *o, const char *body, size_t len);

/* Records one confirmed order; the strings are copied. event may be NULL. */
int oracle_add(oracle_t *o, const char *order_id, const char *user, const char *event, long qty);

/* Moves every record of src into dst; src is left empty. Returns 0 or -ENOMEM. */
int oracle_merge(oracle_t *dst, oracle_t *src);

/* What the checks compare the records with. Zero-initialise, then fill what is known. */
typedef struct oracle_opts {
    long per_user_limit; /* units a buyer may hold; 0 means 1 */
    /* The event's counters before and after the run (from GET --event-url). */
    int have_event;
    long long stock;
    long long sold_before;
    long long sold_after;
    /* Requests that got no answer (timeouts, resets): the server may have sold for them, so
     * this many units sold without a 200 are tolerated. */
    long long unanswered;
    /* SQLite file of the subscriber; NULL skips the database checks. */
    const char *db_path;
    const char *event; /* rows to look at; NULL: the event named by the recorded orders */
    double wait_db_s;  /* poll the database this long for the rows to arrive */
} oracle_opts_t;

typedef struct oracle_report {
    long long ok;         /* 200s recorded */
    long long units;      /* sum of their qty */
    long long bad_bodies; /* 200s whose body was not an order */
    long long distinct_ids;
    long long duplicate_ids;    /* records beyond the first of each order id */
    long long over_limit_users; /* buyers holding more units than the limit */
    long long max_user_units;
    int event_checked;
    long long stock, sold, sold_delta;
    int oversell;                /* sold > stock */
    long long unconfirmed_sales; /* units sold beyond the 200s and the tolerated unanswered */
    long long lost_sales;        /* units confirmed by 200s but not counted as sold */
    int db_checked;
    int db_error; /* could not open or query the database */
    long long db_rows, db_units;
    long long db_missing; /* confirmed order ids without a row */
    long long db_extra;   /* rows of the event that no 200 of this run explains */
    int db_extra_checked; /* db_extra is a violation only when the prior sales are known */
    int db_oversell;      /* db_units > stock */
    int failures;         /* number of violated checks */
} oracle_report_t;

/* Runs every check that opts allows; sorts o's records. Returns the number of violated checks
 * (also in r->failures); r is filled in any case. */
int oracle_check(oracle_t *o, const oracle_opts_t *opts, oracle_report_t *r);

/* Prints "oracle: ok <what>" / "oracle: FAIL <what>: <count>" lines. */
void oracle_print(const oracle_report_t *r, FILE *out);

/* The report as a JSON object (new reference), or NULL when out of memory. */
json_t *oracle_report_json(const oracle_report_t *r);

#endif
