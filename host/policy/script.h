/* The business policy: lua/policy.lua run in LuaJIT. One script_t (one lua_State) per loop
 * thread, never shared. The script returns a table of functions the host calls:
 *   allocate(event, cluster) -> local quota for this host
 *   admit(req)               -> true, or false/nil, status, reason[, detail]
 *   order(o)                 -> the order's JSON payload (string)
 * and optional settings (user_max_len, event_max_len, max_qty, refill). The host gives the
 * script a `host` module: host.now_ms(), host.log(msg), host.counter(name, inc),
 * host.limit(key, rate, burst[, cost]) (a token bucket in C shared by all threads),
 * host.hmac_sha256(key, msg[, "raw"]), host.ct_equal(a, b), host.id, host.hosts; admit()'s req
 * has req.header(name). docs/POLICY.md is the reference.
 *
 * Loading is text only, into a fresh state; a script that fails to load or validate is refused
 * and the caller keeps its old state (reload = open new, then swap). */
#ifndef SNATCH_SCRIPT_H
#define SNATCH_SCRIPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct script script_t;

typedef struct script_env {
    const char *host_id;
    int hosts;
} script_env_t;

/* Loads and validates path. On failure returns -1 and writes why into err. */
int script_open(script_t **out, const char *path, const script_env_t *env, char *err,
                size_t errlen);
/* script_open for a thread that calls the policy rarely and must never wedge on it (the
 * reconciliation threads: order() for republished orders): the state runs interpreted, each
 * call under SCRIPT_CHECK_BUDGET instructions; a call that spends it fails as one that raised
 * an error does (order(): the built-in payload), logged as "PATH: order() ran past N Lua
 * instructions (an endless loop?, at FILE:LINE)". path must outlive the state. */
int script_open_bounded(script_t **out, const char *path, const script_env_t *env, char *err,
                        size_t errlen);
void script_close(script_t *s);

typedef struct script_settings {
    size_t user_max_len;   /* <= SNATCH_NAME_MAX */
    size_t event_max_len;  /* <= SNATCH_NAME_MAX */
    int64_t max_qty;       /* qty above this is a 400 before admit() */
    bool refill;           /* top up a spent local quota while Redis still has stock (default) */
    int64_t hold_ms;       /* M.hold_ms: an order is held this long for payment; 0: paid at once */
    bool hold_keeps_limit; /* M.hold_keeps_limit: a released hold does not give the count back */
    int64_t idempotency_window_ms; /* M.idempotency_window_ms: how long a key's answer is kept */
} script_settings_t;

#define SCRIPT_HOLD_MS_MAX (7LL * 24 * 3600 * 1000)
#define SCRIPT_IDEMPOTENCY_WINDOW_DEFAULT_MS (3600LL * 1000)
#define SCRIPT_IDEMPOTENCY_WINDOW_MAX_MS (7LL * 24 * 3600 * 1000)

const script_settings_t *script_settings(const script_t *s);

typedef struct script_cluster {
    int64_t stock;
    int64_t per_user_limit;
    int hosts;
    const char *host_id;
} script_cluster_t;

/* allocate(): the local quota, clamped to [0, stock]. On a script error logs it and returns
 * stock (over-allocation is safe: Redis still prevents oversell). */
int64_t script_allocate(script_t *s, const char *event, const script_cluster_t *cluster);

/* How admit()'s req.header(name) reads the request: the next value of header name (nlen
 * bytes, any case) after *iter, or NULL (http_header() has this shape). */
typedef const char *(*script_header_fn)(const void *ctx, const char *name, size_t nlen,
                                        size_t *iter, size_t *vlen);

typedef struct script_admit_req {
    const char *event;
    const char *user;
    int64_t qty;
    const char *client; /* peer address */
    int64_t now_ms;
    script_header_fn header; /* NULL: the request has no headers (req.header answers nil) */
    const void *header_ctx;
} script_admit_req_t;

/* reason holds only [A-Za-z0-9_] and detail only printable ASCII without '"' or '\\' (other
 * bytes become '_'), so both may be written into JSON as they are. */
typedef struct script_verdict {
    int status;       /* 0: admitted; else the HTTP status to answer (4xx) */
    char reason[48];  /* JSON "error" value, e.g. "rate_limited" */
    char detail[160]; /* optional JSON "detail" value ("" when none) */
} script_verdict_t;

/* admit(): fills v. A script error admits nothing: v->status = 500, reason "policy_error". */
void script_admit(script_t *s, const script_admit_req_t *req, script_verdict_t *v);

typedef struct script_order {
    const char *order_id;
    const char *event;
    const char *user;
    int64_t qty;
    const char *host_id;
    int64_t created_ms;
} script_order_t;

/* order(): writes the JSON payload into out (cap bytes, NUL-terminated). Returns its length, or
 * -1 on a script error or overflow; the caller then uses a built-in format (the order must not
 * be lost). */
int script_order(script_t *s, const script_order_t *o, char *out, size_t cap);

/* Writes the built-in order payload (what the default policy produces), NUL-terminated:
 * {"order_id":..,"event":..,"user":..,"qty":N,"host":..,"created_at":ms}. Returns length or -1. */
int script_order_default(const script_order_t *o, char *out, size_t cap);

/* The payload of an order known by its Redis record (the facts deduct.lua stored:
 * {"order_id","event","user","qty","host","created_at"}): order() of s, or the built-in format
 * when s is NULL or order() fails - exactly what the host publishes for it. This is how every
 * republish (reconciliation) renders an order, so the persisted row does not depend on the path
 * that delivered it. Returns the length, or -1 (not an order record, or it does not fit). */
int script_order_from_record(script_t *s, const char *record, size_t len, char *out, size_t cap);

/* host.counter(name, inc) and the policy_errors count go to fn (the host's metrics), from
 * whatever thread runs a policy. Unset: not counted (snatch-reconcile). */
typedef void (*script_counter_fn)(const char *name, size_t len, double inc);
void script_set_counter(script_counter_fn fn);

/* Bytecode instructions each step of script_check may run (script.c says why this many). */
#define SCRIPT_CHECK_BUDGET 100000000

/* For `snatch-host --test` (and every start and SIGHUP): opens path, then calls allocate, admit
 * and order once each with sample inputs (stock 1000 on 3 hosts; buyer "check_user"; order()
 * must return a JSON object), and closes it. Returns 0, or -1 with "file:line: error" (and a
 * traceback) in err. Its own state runs with the JIT off, and each step (the chunk and each
 * call) at most SCRIPT_CHECK_BUDGET instructions: beyond, the policy is refused with the
 * one-line "path: admit() ran past N Lua instructions in the check (an endless loop?, at
 * file:line)". Takes tokens from the shared rate limiter under the sample keys. */
int script_check(const char *path, const script_env_t *env, char *err, size_t errlen);

#endif
