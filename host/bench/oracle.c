/* The correctness oracle (see oracle.h). Records live in one growing array of entries whose
 * strings sit in one growing arena, so recording costs no allocation per order in the common
 * case and merging thread logs is two appends. The checks sort pointers into the arena.
 * Recording runs on a load thread (one oracle per thread); merge and checks on the main thread,
 * after the load; the database is opened read-only and only polled, never written. */
#include "oracle.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct entry {
    size_t id; /* offsets of NUL-terminated strings in the arena */
    size_t user;
    size_t event; /* SIZE_MAX when unknown */
    long qty;
} entry_t;

struct oracle {
    entry_t *v;
    size_t n, cap;
    char *arena;
    size_t used, size;
    long long bad_bodies;
};

oracle_t *oracle_new(void)
{
    return calloc(1, sizeof(oracle_t));
}

void oracle_free(oracle_t *o)
{
    if (!o)
        return;
    free(o->v);
    free(o->arena);
    free(o);
}

static int reserve(oracle_t *o, size_t entries, size_t bytes)
{
    if (o->n + entries > o->cap) {
        size_t cap = o->cap ? o->cap : 1024;
        while (cap < o->n + entries)
            cap *= 2;
        entry_t *v = realloc(o->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        o->v = v;
        o->cap = cap;
    }
    if (o->used + bytes > o->size) {
        size_t size = o->size ? o->size : 64 * 1024;
        while (size < o->used + bytes)
            size *= 2;
        char *a = realloc(o->arena, size);
        if (!a)
            return -ENOMEM;
        o->arena = a;
        o->size = size;
    }
    return 0;
}

static size_t put(oracle_t *o, const char *s, size_t len)
{
    size_t off = o->used;
    memcpy(o->arena + off, s, len);
    o->arena[off + len] = '\0';
    o->used += len + 1;
    return off;
}

int oracle_add(oracle_t *o, const char *order_id, const char *user, const char *event, long qty)
{
    size_t il = strlen(order_id), ul = strlen(user), el = event ? strlen(event) : 0;
    if (reserve(o, 1, il + ul + el + 3) < 0)
        return -ENOMEM;
    entry_t *e = &o->v[o->n++];
    e->id = put(o, order_id, il);
    e->user = put(o, user, ul);
    e->event = event ? put(o, event, el) : SIZE_MAX;
    e->qty = qty;
    return 0;
}

int oracle_add_body(oracle_t *o, const char *body, size_t len)
{
    json_t *j = json_loadb(body, len, 0, NULL);
    const char *id = json_string_value(json_object_get(j, "order_id"));
    const char *user = json_string_value(json_object_get(j, "user"));
    const char *event = json_string_value(json_object_get(j, "event"));
    json_t *q = json_object_get(j, "qty");
    int rc = -EINVAL;
    if (id && *id && user && json_is_integer(q) && json_integer_value(q) > 0)
        rc = oracle_add(o, id, user, event, (long)json_integer_value(q));
    if (rc == -EINVAL)
        o->bad_bodies++;
    json_decref(j);
    return rc;
}

int oracle_merge(oracle_t *dst, oracle_t *src)
{
    if (reserve(dst, src->n, src->used) < 0)
        return -ENOMEM;
    size_t base = dst->used;
    if (src->used > 0) /* an empty recorder has no arena: memcpy(NULL) is undefined */
        memcpy(dst->arena + base, src->arena, src->used);
    dst->used += src->used;
    for (size_t i = 0; i < src->n; i++) {
        entry_t e = src->v[i];
        e.id += base;
        e.user += base;
        if (e.event != SIZE_MAX)
            e.event += base;
        dst->v[dst->n++] = e;
    }
    dst->bad_bodies += src->bad_bodies;
    src->n = 0;
    src->used = 0;
    src->bad_bodies = 0;
    return 0;
}

/* qsort has no context argument in C11: the arena being sorted is parked here (main thread). */
static const char *sort_arena;

static int by_id(const void *a, const void *b)
{
    return strcmp(sort_arena + ((const entry_t *)a)->id, sort_arena + ((const entry_t *)b)->id);
}

static int by_user(const void *a, const void *b)
{
    return strcmp(sort_arena + ((const entry_t *)a)->user, sort_arena + ((const entry_t *)b)->user);
}

static void check_ids(oracle_t *o, oracle_report_t *r)
{
    sort_arena = o->arena;
    qsort(o->v, o->n, sizeof(entry_t), by_id);
    for (size_t i = 0; i < o->n; i++) {
        if (i > 0 && strcmp(o->arena + o->v[i].id, o->arena + o->v[i - 1].id) == 0)
            r->duplicate_ids++;
        else
            r->distinct_ids++;
    }
}

static void check_users(oracle_t *o, long limit, oracle_report_t *r)
{
    sort_arena = o->arena;
    qsort(o->v, o->n, sizeof(entry_t), by_user);
    long long sum = 0;
    for (size_t i = 0; i < o->n; i++) {
        if (i > 0 && strcmp(o->arena + o->v[i].user, o->arena + o->v[i - 1].user) != 0)
            sum = 0;
        sum += o->v[i].qty;
        if (sum > r->max_user_units)
            r->max_user_units = sum;
        int last =
            i + 1 == o->n || strcmp(o->arena + o->v[i].user, o->arena + o->v[i + 1].user) != 0;
        if (last && sum > limit)
            r->over_limit_users++;
    }
}

static void check_event(const oracle_opts_t *opts, oracle_report_t *r)
{
    r->event_checked = 1;
    r->stock = opts->stock;
    r->sold = opts->sold_after;
    r->sold_delta = opts->sold_after - opts->sold_before;
    r->oversell = opts->sold_after > opts->stock;
    if (r->sold_delta < r->units)
        r->lost_sales = r->units - r->sold_delta;
    if (r->sold_delta > r->units + opts->unanswered)
        r->unconfirmed_sales = r->sold_delta - r->units - opts->unanswered;
}

/* The event all records name, or NULL when none does or they disagree. */
static const char *records_event(const oracle_t *o)
{
    const char *ev = NULL;
    for (size_t i = 0; i < o->n; i++) {
        if (o->v[i].event == SIZE_MAX)
            continue;
        const char *e = o->arena + o->v[i].event;
        if (ev && strcmp(ev, e) != 0)
            return NULL;
        ev = e;
    }
    return ev;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Counts the event's rows and units; -1 when the database cannot be read (yet). */
static int count_rows(const char *path, const char *event, long long *rows, long long *units)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        goto out;
    sqlite3_busy_timeout(db, 2000);
    if (sqlite3_prepare_v2(db, "SELECT count(*), coalesce(sum(qty),0) FROM orders WHERE event=?1",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(st, 1, event, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_ROW)
        goto out;
    *rows = sqlite3_column_int64(st, 0);
    *units = sqlite3_column_int64(st, 1);
    rc = 0;
out:
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc;
}

/* Polls until the rows of the event hold the expected units or the wait is over. */
static void wait_rows(const oracle_opts_t *opts, const char *event, long long want)
{
    double end = now_s() + opts->wait_db_s;
    for (int i = 0; i < 100000 && now_s() < end; i++) {
        long long rows = 0, units = 0;
        if (count_rows(opts->db_path, event, &rows, &units) == 0 && units >= want)
            return;
        sleep_ms(100);
    }
}

/* Walks the sorted distinct ids of the records against the sorted ids of the rows. */
static int compare_rows(oracle_t *o, sqlite3 *db, const char *event, oracle_report_t *r)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "SELECT order_id, qty FROM orders WHERE event=?1 ORDER BY order_id",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_text(st, 1, event, -1, SQLITE_STATIC);
    sort_arena = o->arena;
    qsort(o->v, o->n, sizeof(entry_t), by_id);
    size_t i = 0;
    int s;
    /* SQLite's ORDER BY on TEXT uses memcmp order (BINARY collation), like strcmp. */
    while ((s = sqlite3_step(st)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(st, 0);
        r->db_rows++;
        r->db_units += sqlite3_column_int64(st, 1);
        if (!id)
            continue;
        while (i < o->n && strcmp(o->arena + o->v[i].id, id) < 0) {
            if (i == 0 || strcmp(o->arena + o->v[i].id, o->arena + o->v[i - 1].id) != 0)
                r->db_missing++;
            i++;
        }
        if (i < o->n && strcmp(o->arena + o->v[i].id, id) == 0) {
            while (i < o->n && strcmp(o->arena + o->v[i].id, id) == 0)
                i++;
        } else {
            r->db_extra++;
        }
    }
    for (; i < o->n; i++)
        if (i == 0 || strcmp(o->arena + o->v[i].id, o->arena + o->v[i - 1].id) != 0)
            r->db_missing++;
    sqlite3_finalize(st);
    return s == SQLITE_DONE ? 0 : -1;
}

static void check_db(oracle_t *o, const oracle_opts_t *opts, oracle_report_t *r)
{
    r->db_checked = 1;
    const char *event = opts->event ? opts->event : records_event(o);
    if (!event) {
        r->db_error = 1;
        return;
    }
    long long want = opts->have_event ? opts->sold_after : r->units;
    if (opts->wait_db_s > 0)
        wait_rows(opts, event, want);
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(opts->db_path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        r->db_error = 1;
        sqlite3_close(db);
        return;
    }
    sqlite3_busy_timeout(db, 2000);
    if (compare_rows(o, db, event, r) < 0)
        r->db_error = 1;
    sqlite3_close(db);
    if (opts->have_event) {
        r->db_oversell = r->db_units > opts->stock;
        /* Rows of earlier sales and of unanswered requests are explained; more are not. */
        r->db_extra_checked = 1;
    }
}

int oracle_check(oracle_t *o, const oracle_opts_t *opts, oracle_report_t *r)
{
    memset(r, 0, sizeof(*r));
    long limit = opts->per_user_limit > 0 ? opts->per_user_limit : 1;
    r->ok = (long long)o->n + o->bad_bodies;
    r->bad_bodies = o->bad_bodies;
    for (size_t i = 0; i < o->n; i++)
        r->units += o->v[i].qty;
    check_ids(o, r);
    check_users(o, limit, r);
    if (opts->have_event)
        check_event(opts, r);
    if (opts->db_path)
        check_db(o, opts, r);
    long long extra_allowed = opts->sold_before + opts->unanswered;
    r->failures = (r->bad_bodies > 0) + (r->duplicate_ids > 0) + (r->over_limit_users > 0) +
                  r->oversell + (r->lost_sales > 0) + (r->unconfirmed_sales > 0) + r->db_error +
                  (r->db_missing > 0) + r->db_oversell +
                  (r->db_extra_checked && r->db_extra > extra_allowed);
    if (r->db_extra_checked && r->db_extra <= extra_allowed)
        r->db_extra_checked = 2; /* explained: reported, not a failure */
    return r->failures;
}

static void line(FILE *out, int fail, const char *what, long long n)
{
    if (fail)
        fprintf(out, "oracle: FAIL %s: %lld\n", what, n);
    else
        fprintf(out, "oracle: ok %s\n", what);
}

void oracle_print(const oracle_report_t *r, FILE *out)
{
    fprintf(out,
            "oracle: 200s %lld, units %lld, distinct order ids %lld, max units per buyer %lld\n",
            r->ok, r->units, r->distinct_ids, r->max_user_units);
    line(out, r->bad_bodies > 0, "order bodies", r->bad_bodies);
    line(out, r->duplicate_ids > 0, "duplicate order ids", r->duplicate_ids);
    line(out, r->over_limit_users > 0, "buyers over limit", r->over_limit_users);
    if (r->event_checked) {
        fprintf(out, "oracle: event stock %lld, sold %lld (%lld during the run)\n", r->stock,
                r->sold, r->sold_delta);
        line(out, r->oversell, "oversell (sold > stock)", r->sold - r->stock);
        line(out, r->lost_sales > 0, "sold below 200s", r->lost_sales);
        line(out, r->unconfirmed_sales > 0, "sold without 200", r->unconfirmed_sales);
    }
    if (r->db_checked) {
        if (r->db_error) {
            line(out, 1, "database readable", 1);
            return;
        }
        fprintf(out, "oracle: db rows %lld, units %lld, rows not from this run's 200s %lld\n",
                r->db_rows, r->db_units, r->db_extra);
        line(out, r->db_missing > 0, "db missing orders", r->db_missing);
        if (r->event_checked)
            line(out, r->db_oversell, "db oversell (units > stock)", r->db_units - r->stock);
        if (r->db_extra_checked)
            line(out, r->db_extra_checked == 1, "db unexplained rows", r->db_extra);
    }
}

json_t *oracle_report_json(const oracle_report_t *r)
{
    json_t *j =
        json_pack("{sI sI sI sI sI sI sI sb}", "ok", (json_int_t)r->ok, "units",
                  (json_int_t)r->units, "bad_bodies", (json_int_t)r->bad_bodies, "distinct_ids",
                  (json_int_t)r->distinct_ids, "duplicate_ids", (json_int_t)r->duplicate_ids,
                  "over_limit_users", (json_int_t)r->over_limit_users, "failures",
                  (json_int_t)r->failures, "passed", r->failures == 0);
    if (!j)
        return NULL;
    if (r->event_checked)
        json_object_set_new(j, "event",
                            json_pack("{sI sI sI sb sI sI}", "stock", (json_int_t)r->stock, "sold",
                                      (json_int_t)r->sold, "sold_delta", (json_int_t)r->sold_delta,
                                      "oversell", r->oversell, "lost_sales",
                                      (json_int_t)r->lost_sales, "unconfirmed_sales",
                                      (json_int_t)r->unconfirmed_sales));
    if (r->db_checked)
        json_object_set_new(j, "db",
                            json_pack("{sb sI sI sI sI sb}", "error", r->db_error, "rows",
                                      (json_int_t)r->db_rows, "units", (json_int_t)r->db_units,
                                      "missing", (json_int_t)r->db_missing, "extra",
                                      (json_int_t)r->db_extra, "oversell", r->db_oversell));
    return j;
}
