/* The policy engine: one LuaJIT state running lua/policy.lua. A script_t is created, used and
 * closed by a single loop thread (reload = open a new one, swap, close the old one), so nothing
 * here locks. admit() runs for nearly every request (tens of thousands per second per thread),
 * so the hot path reuses one request table and one order table per state, reaches the entry
 * points through registry refs resolved once at load, and never formats strings unless the
 * script fails. Script errors are logged at a bounded rate: a broken policy must not turn
 * stderr into the bottleneck.
 *
 * The state only gets the libraries a pure policy needs (base, table, string, math, bit, jit):
 * no io/os/ffi/debug/package, and base without dofile/loadfile/load/loadstring, so a policy can
 * neither touch the file system nor load bytecode (which LuaJIT does not verify). */
#include "script.h"

#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>
#include <lualib.h>
#include <math.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ratelimit.h"
#include "util.h"

#define DEFAULT_MAX_QTY 10
#define MAX_QTY_CAP 1000000
#define ERRORS_LOGGED_PER_SEC 5
#define LOG_LINE_MAX 1024

/* The fields of admit()'s request table: their names are made once per state and kept in the
 * registry, so a call sets them without interning the names again. */
enum { K_EVENT, K_USER, K_QTY, K_CLIENT, K_NOW_MS, K_HEADER, K__COUNT };
static const char *const admit_keys[K__COUNT] = {"event",  "user",   "qty",
                                                 "client", "now_ms", "header"};

struct script {
    lua_State *L;
    int ref_key[K__COUNT];
    int ref_traceback;
    int ref_allocate;
    int ref_admit;
    int ref_order;
    int ref_req;    /* the request table handed to every admit() call */
    int ref_header; /* req.header, put back into the request table at every call */
    /* The request admit() is running for, NULL outside it: req.header reads it, so a function
     * kept by the script and called later finds nothing rather than a freed request. */
    const script_admit_req_t *cur;
    int ref_ord; /* the order table handed to every order() call */
    script_settings_t settings;
    bool quiet; /* script_check: errors go to err only */
    /* Bounded states only (script_check's, script_open_bounded's): every call runs under the
     * instruction budget; what runs ("allocate()"...), and the one-line complaint once the
     * budget is spent (empty until then). */
    bool bounded;
    const char *path;
    const char *phase;
    char spent[256];
    int64_t log_window_ms;
    unsigned logged;
    unsigned long suppressed;
    char err[1024]; /* the last script error, for script_check */
};

/* Writes "policy: <prefix><msg>" as one line with one write(2), so lines from several threads
 * never interleave. Control characters (tracebacks have newlines and tabs) become spaces. */
static void log_line(const char *prefix, const char *msg, size_t len)
{
    char line[LOG_LINE_MAX];
    int n = snprintf(line, sizeof(line) - 1, "policy: %s", prefix);
    size_t pos = n < 0 ? 0 : ((size_t)n < sizeof(line) - 1 ? (size_t)n : sizeof(line) - 2);

    for (size_t i = 0; i < len && pos < sizeof(line) - 1; i++) {
        unsigned char c = (unsigned char)msg[i];
        line[pos++] = c < 0x20 || c == 0x7f ? ' ' : (char)c;
    }
    line[pos++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, pos);
    (void)w;
}

/* Where host.counter() and the policy_errors count go (the host's metrics); NULL: nowhere. */
static script_counter_fn _Atomic counter_fn;

void script_set_counter(script_counter_fn fn)
{
    atomic_store(&counter_fn, fn);
}

static void count(const char *name, size_t len, double inc)
{
    script_counter_fn fn = atomic_load(&counter_fn);
    if (fn != NULL)
        fn(name, len, inc);
}

/* Keeps the error for script_check and logs it, at most ERRORS_LOGGED_PER_SEC a second per
 * state; the others are only counted and reported once the window has passed. */
static void report(script_t *s, const char *what, const char *msg)
{
    snprintf(s->err, sizeof(s->err), "%s: %s", what, msg ? msg : "(no message)");
    if (s->quiet)
        return;
    count("policy_errors", strlen("policy_errors"), 1);
    int64_t now = util_now_ms();
    if (now - s->log_window_ms >= 1000) {
        if (s->suppressed > 0) {
            char note[64];
            snprintf(note, sizeof(note), "%lu more errors not logged", s->suppressed);
            log_line("", note, strlen(note));
        }
        s->log_window_ms = now;
        s->logged = 0;
        s->suppressed = 0;
    }
    if (s->logged >= ERRORS_LOGGED_PER_SEC) {
        s->suppressed++;
        return;
    }
    s->logged++;
    log_line("", s->err, strlen(s->err));
}

/* ---- the host module ------------------------------------------------------------------- */

/* Stack: [msg] -> [msg .. traceback]. The pcall message handler. */
static int on_error(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg)
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* An unprotected error (out of memory outside pcall) leaves no sane way on. */
static int on_panic(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);
    log_line("unprotected error: ", msg ? msg : "?", msg ? strlen(msg) : 1);
    abort();
    return 0;
}

/* host.now_ms() -> wall clock ms. Stack: [] -> [ms] */
static int host_now_ms(lua_State *L)
{
    lua_pushnumber(L, (lua_Number)util_now_ms());
    return 1;
}

/* host.log(...): the arguments, space separated, as one line. Stack: unchanged. */
static int host_log(lua_State *L)
{
    char buf[LOG_LINE_MAX];
    size_t pos = 0;
    int n = lua_gettop(L);

    for (int i = 1; i <= n && pos < sizeof(buf); i++) {
        char num[32];
        size_t len;
        const char *p;
        int t = lua_type(L, i);
        if (t == LUA_TSTRING) {
            p = lua_tolstring(L, i, &len);
        } else if (t == LUA_TNUMBER) {
            snprintf(num, sizeof(num), "%.14g", lua_tonumber(L, i));
            p = num;
            len = strlen(p);
        } else {
            p = t == LUA_TBOOLEAN ? (lua_toboolean(L, i) ? "true" : "false") : luaL_typename(L, i);
            len = strlen(p);
        }
        if (i > 1)
            buf[pos++] = ' ';
        size_t room = sizeof(buf) - pos;
        size_t take = len < room ? len : room;
        memcpy(buf + pos, p, take);
        pos += take;
    }
    log_line("", buf, pos);
    return 0;
}

/* host.counter(name[, inc]). Stack: [name, inc?] -> [] */
static int host_counter(lua_State *L)
{
    size_t len;
    const char *name = luaL_checklstring(L, 1, &len);
    double inc = luaL_optnumber(L, 2, 1);
    luaL_argcheck(L, isfinite(inc), 2, "increment must be a finite number");
    count(name, len, inc);
    return 0;
}

/* host.limit(key, rate, burst[, cost]) -> allowed. Stack: [key, rate, burst, cost?] -> [bool] */
static int host_limit(lua_State *L)
{
    size_t len;
    const char *key = luaL_checklstring(L, 1, &len);
    double rate = luaL_checknumber(L, 2);
    double burst = luaL_checknumber(L, 3);
    double cost = luaL_optnumber(L, 4, 1);

    luaL_argcheck(L, rate >= 0 && isfinite(rate), 2, "rate must be a finite number >= 0");
    luaL_argcheck(L, burst > 0 && isfinite(burst), 3, "burst must be a finite number > 0");
    luaL_argcheck(L, cost >= 0 && isfinite(cost), 4, "cost must be a finite number >= 0");
    lua_pushboolean(L, ratelimit_take(key, len, rate, burst, cost, util_mono_us()));
    return 1;
}

/* host.hmac_sha256(key, msg[, "raw"]) -> HMAC-SHA-256 of msg under key (OpenSSL libcrypto):
 * 64 lower-case hex digits, or the 32 bytes with "raw". Stack: [key, msg, fmt?] -> [mac] */
static int host_hmac_sha256(lua_State *L)
{
    size_t klen, mlen;
    const char *key = luaL_checklstring(L, 1, &klen);
    const char *msg = luaL_checklstring(L, 2, &mlen);
    const char *fmt = luaL_optstring(L, 3, "hex");
    bool raw = strcmp(fmt, "raw") == 0;
    luaL_argcheck(L, raw || strcmp(fmt, "hex") == 0, 3, "\"hex\" or \"raw\"");
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    /* An empty key is valid HMAC; OpenSSL wants a non-NULL pointer for it. */
    if (HMAC(EVP_sha256(), klen ? key : "", (int)klen, (const unsigned char *)msg, mlen, mac, &n) ==
        NULL)
        return luaL_error(L, "hmac_sha256: libcrypto failed");
    if (raw) {
        lua_pushlstring(L, (const char *)mac, n);
        return 1;
    }
    static const char digits[] = "0123456789abcdef";
    char hex[2 * EVP_MAX_MD_SIZE];
    for (unsigned int i = 0; i < n; i++) {
        hex[2 * i] = digits[mac[i] >> 4];
        hex[2 * i + 1] = digits[mac[i] & 15];
    }
    lua_pushlstring(L, hex, 2 * (size_t)n);
    return 1;
}

/* host.ct_equal(a, b) -> whether two strings are equal, in time that depends on their length
 * only (CRYPTO_memcmp), never on where they differ: for comparing a MAC a client sent with the
 * right one. Strings of different lengths are unequal at once (lengths are not secret: a hex MAC
 * has 64 digits). Stack: [a, b] -> [bool] */
static int host_ct_equal(lua_State *L)
{
    size_t alen, blen;
    const char *a = luaL_checklstring(L, 1, &alen);
    const char *b = luaL_checklstring(L, 2, &blen);
    lua_pushboolean(L, alen == blen && CRYPTO_memcmp(a, b, alen) == 0);
    return 1;
}

static const luaL_Reg host_funcs[] = {
    {"now_ms", host_now_ms},
    {"log", host_log},
    {"counter", host_counter},
    {"limit", host_limit},
    {"hmac_sha256", host_hmac_sha256},
    {"ct_equal", host_ct_equal},
    {NULL, NULL},
};

#define HEADER_NAME_MAX 256

/* req.header(name) -> the header's value (lines of a repeated header joined with ", ", as RFC
 * 9110 combines them), or nil. Case-insensitive; reads the request in place, so only a call
 * costs anything. Also callable as req:header(name). Upvalue 1: the script_t.
 * Stack: [name] or [req, name] -> [value or nil] */
static int req_header(lua_State *L)
{
    script_t *s = lua_touserdata(L, lua_upvalueindex(1));
    int arg = lua_type(L, 1) == LUA_TTABLE ? 2 : 1;
    size_t nlen;
    const char *name = luaL_checklstring(L, arg, &nlen);
    luaL_argcheck(L, nlen > 0 && nlen <= HEADER_NAME_MAX, arg, "a header name (1..256 bytes)");
    const script_admit_req_t *r = s->cur;
    size_t iter = 0, vlen;
    const char *v;
    if (r == NULL || r->header == NULL ||
        (v = r->header(r->header_ctx, name, nlen, &iter, &vlen)) == NULL) {
        lua_pushnil(L);
        return 1;
    }
    size_t vlen2;
    const char *v2 = r->header(r->header_ctx, name, nlen, &iter, &vlen2);
    if (v2 == NULL) {
        lua_pushlstring(L, v, vlen);
        return 1;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, v, vlen);
    do {
        luaL_addlstring(&b, ", ", 2);
        luaL_addlstring(&b, v2, vlen2);
    } while ((v2 = r->header(r->header_ctx, name, nlen, &iter, &vlen2)) != NULL);
    luaL_pushresult(&b);
    return 1;
}

static const luaL_Reg safe_libs[] = {
    {"", luaopen_base},
    {LUA_TABLIBNAME, luaopen_table},
    {LUA_STRLIBNAME, luaopen_string},
    {LUA_MATHLIBNAME, luaopen_math},
    {LUA_BITLIBNAME, luaopen_bit},
    {LUA_JITLIBNAME, luaopen_jit},
    {NULL, NULL},
};

static const char *const unsafe_globals[] = {"dofile", "loadfile", "load", "loadstring"};

/* Runs under lua_cpcall so that running out of memory here is an error, not a panic.
 * Stack: [env (light userdata)] -> [] ; globals gain the safe libraries and `host`. */
static int setup_state(lua_State *L)
{
    const script_env_t *env = lua_touserdata(L, 1);

    for (const luaL_Reg *lib = safe_libs; lib->func; lib++) {
        lua_pushcfunction(L, lib->func);
        lua_pushstring(L, lib->name);
        lua_call(L, 1, 0);
    }
    for (size_t i = 0; i < ARRAY_SIZE(unsafe_globals); i++) {
        lua_pushnil(L);
        lua_setglobal(L, unsafe_globals[i]);
    }
    /* print would go to stdout, which is not a log; route it like host.log. */
    lua_pushcfunction(L, host_log);
    lua_setglobal(L, "print");

    lua_newtable(L); /* [env, host] */
    luaL_setfuncs(L, host_funcs, 0);
    lua_pushstring(L, env->host_id ? env->host_id : "");
    lua_setfield(L, -2, "id");
    lua_pushinteger(L, env->hosts);
    lua_setfield(L, -2, "hosts");
    lua_setglobal(L, "host"); /* [env] */
    return 0;
}

/* ---- the instruction budget of bounded states ------------------------------------------ */

/* script_check runs the policy on the main thread (at start, `--test`, every SIGHUP), where a
 * call that never returns would wedge the host for good: no reload, no SIGTERM is handled
 * again. So the check's own state runs interpreted (LuaJIT calls no hooks in compiled code;
 * the workers' states keep the JIT) under a count hook, and each step (the chunk, allocate(),
 * admit(), order()) may run SCRIPT_CHECK_BUDGET bytecode instructions. Counted with a count
 * hook of 1 and the check's sample inputs: lua/policy.lua's chunk runs 23 instructions and its
 * calls at most 22; the examples' chunks at most 117 (opens_at.lua) and their calls at most 39.
 * The budget leaves a policy that builds big tables at load some 10^6 times that (a chunk
 * filling a 10^6-entry table runs 3*10^6), yet is spent in about 0.12 s (interpreted,
 * ~1.2 ns per instruction on the development machine), so a looping policy is refused quickly. Not
 * counted: time inside one C function (a huge string.rep, a pattern match that backtracks) and __gc
 * finalizers (LuaJIT runs those without hooks). The reconciliation threads (the host's, and
 * snatch-reconcile) run order() the same way, per call (script_open_bounded): they call it
 * rarely, and a loop there must not stop republishing for good. */
static const char budget_key; /* registry[&budget_key]: the script_t under the budget */

/* The count hook fires: the budget is spent. From now on every instruction fails (count 1), so
 * a policy that catches the error (pcall in a loop) cannot go on either. */
static void on_budget_spent(lua_State *L, lua_Debug *ar)
{
    lua_sethook(L, on_budget_spent, LUA_MASKCOUNT, 1);
    lua_pushlightuserdata(L, (void *)&budget_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    script_t *s = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (s->spent[0] == '\0') {
        char at[128] = "";
        if (lua_getinfo(L, "Sl", ar) && ar->currentline > 0)
            snprintf(at, sizeof(at), ", at %s:%d", ar->short_src, ar->currentline);
        snprintf(s->spent, sizeof(s->spent),
                 "%s: %s ran past %d Lua instructions%s (an endless loop?%s)", s->path, s->phase,
                 SCRIPT_CHECK_BUDGET, s->quiet ? " in the check" : "", at);
    }
    lua_pushstring(L, s->spent);
    lua_error(L);
}

/* Gives the next step (phase names it in the complaint) a fresh budget; a no-op for a state
 * that is not bounded. */
static void budget_start(script_t *s, const char *phase)
{
    if (!s->bounded)
        return;
    s->phase = phase;
    s->spent[0] = '\0';
    lua_sethook(s->L, on_budget_spent, LUA_MASKCOUNT, SCRIPT_CHECK_BUDGET);
}

static int jit_on_ignored(lua_State *L)
{
    (void)L;
    return 0;
}

/* Runs under lua_cpcall. Stack: [s (light userdata)] -> []. Registers s for the hook and makes
 * jit.on() do nothing: the policy must not switch the JIT back on under the budget. */
static int setup_budget(lua_State *L)
{
    lua_pushlightuserdata(L, (void *)&budget_key);
    lua_pushvalue(L, 1);
    lua_rawset(L, LUA_REGISTRYINDEX);
    lua_getglobal(L, LUA_JITLIBNAME); /* [s, jit] */
    lua_pushcfunction(L, jit_on_ignored);
    lua_setfield(L, -2, "on");
    return 0;
}

/* ---- loading --------------------------------------------------------------------------- */

/* Stack: [.., module] -> [.., module]; refs module[name] when it is a function. An optional one
 * may be absent (nil): *ref is then LUA_NOREF. */
static int resolve_function(script_t *s, const char *path, const char *name, bool optional,
                            int *ref, char *err, size_t errlen)
{
    lua_State *L = s->L;
    lua_pushstring(L, name);
    lua_rawget(L, -2); /* [.., module, fn] */
    if (optional && lua_isnil(L, -1)) {
        lua_pop(L, 1);
        *ref = LUA_NOREF;
        return 0;
    }
    if (!lua_isfunction(L, -1)) {
        snprintf(err, errlen, "%s: the returned table has no function '%s' (found %s)", path, name,
                 luaL_typename(L, -1));
        lua_pop(L, 1);
        return -1;
    }
    *ref = luaL_ref(L, LUA_REGISTRYINDEX); /* [.., module] */
    return 0;
}

/* Stack: [.., module] -> [.., module]; reads an optional positive integer setting. */
static int read_setting(script_t *s, const char *path, const char *name, int64_t max,
                        int64_t *value, char *err, size_t errlen)
{
    lua_State *L = s->L;
    int rc = 0;
    lua_pushstring(L, name);
    lua_rawget(L, -2); /* [.., module, value] */
    if (lua_isnil(L, -1))
        goto out;
    double d = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : NAN;
    if (!(d >= 1) || d != floor(d)) {
        snprintf(err, errlen, "%s: setting '%s' must be a positive integer", path, name);
        rc = -1;
        goto out;
    }
    *value = d > (double)max ? max : (int64_t)d;
out:
    lua_pop(L, 1); /* [.., module] */
    return rc;
}

/* Stack: [.., module] -> [.., module]; reads an optional boolean setting. */
static int read_flag(script_t *s, const char *path, const char *name, bool *value, char *err,
                     size_t errlen)
{
    lua_State *L = s->L;
    int rc = 0;
    lua_pushstring(L, name);
    lua_rawget(L, -2); /* [.., module, value] */
    if (lua_isboolean(L, -1)) {
        *value = lua_toboolean(L, -1);
    } else if (!lua_isnil(L, -1)) {
        snprintf(err, errlen, "%s: setting '%s' must be true or false", path, name);
        rc = -1;
    }
    lua_pop(L, 1); /* [.., module] */
    return rc;
}

/* Stack: [.., module] -> [.., module]; reads an optional integer setting in 0..max. */
static int read_ms(script_t *s, const char *path, const char *name, int64_t max, int64_t *value,
                   char *err, size_t errlen)
{
    lua_State *L = s->L;
    int rc = 0;
    lua_pushstring(L, name);
    lua_rawget(L, -2); /* [.., module, value] */
    if (lua_isnil(L, -1))
        goto out;
    double d = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : NAN;
    if (!(d >= 0) || d != floor(d) || d > (double)max) {
        snprintf(err, errlen, "%s: setting '%s' must be an integer from 0 to %lld", path, name,
                 (long long)max);
        rc = -1;
        goto out;
    }
    *value = (int64_t)d;
out:
    lua_pop(L, 1); /* [.., module] */
    return rc;
}

static int read_settings(script_t *s, const char *path, char *err, size_t errlen)
{
    bool refill = true, keeps = false;
    int64_t user = SNATCH_NAME_MAX, event = SNATCH_NAME_MAX, qty = DEFAULT_MAX_QTY;
    int64_t hold = 0, window = SCRIPT_IDEMPOTENCY_WINDOW_DEFAULT_MS;

    if (read_setting(s, path, "user_max_len", SNATCH_NAME_MAX, &user, err, errlen) < 0 ||
        read_setting(s, path, "event_max_len", SNATCH_NAME_MAX, &event, err, errlen) < 0 ||
        read_setting(s, path, "max_qty", MAX_QTY_CAP, &qty, err, errlen) < 0 ||
        read_flag(s, path, "refill", &refill, err, errlen) < 0 ||
        read_ms(s, path, "hold_ms", SCRIPT_HOLD_MS_MAX, &hold, err, errlen) < 0 ||
        read_flag(s, path, "hold_keeps_limit", &keeps, err, errlen) < 0 ||
        read_ms(s, path, "idempotency_window_ms", SCRIPT_IDEMPOTENCY_WINDOW_MAX_MS, &window, err,
                errlen) < 0)
        return -1;
    if (window < 1000) {
        snprintf(err, errlen, "%s: setting 'idempotency_window_ms' must be at least 1000", path);
        return -1;
    }
    s->settings.refill = refill;
    s->settings.hold_ms = hold;
    s->settings.hold_keeps_limit = keeps;
    s->settings.idempotency_window_ms = window;
    s->settings.user_max_len = (size_t)user;
    s->settings.event_max_len = (size_t)event;
    s->settings.max_qty = qty;
    return 0;
}

/* Stack: [] -> [] ; on success the entry points, settings and reusable tables are resolved. */
static int load_policy(script_t *s, const char *path, char *err, size_t errlen)
{
    lua_State *L = s->L;

    lua_pushcfunction(L, on_error); /* [handler] */
    if (luaL_loadfilex(L, path, "t") != 0) {
        /* [handler, msg]: "cannot open <path>", "<path>:<line>: <syntax error>", or for a
         * binary chunk a message without the path. */
        const char *msg = lua_tostring(L, -1);
        if (strstr(msg, path))
            snprintf(err, errlen, "%s", msg);
        else
            snprintf(err, errlen, "%s: %s (policies are loaded as text only)", path, msg);
        return -1;
    }                                 /* [handler, chunk] */
    if (lua_pcall(L, 0, 1, 1) != 0) { /* [handler, msg+traceback] */
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        return -1;
    } /* [handler, module] */
    if (!lua_istable(L, -1)) {
        snprintf(err, errlen, "%s: must return a table of functions (returned %s)", path,
                 luaL_typename(L, -1));
        return -1;
    }
    if (resolve_function(s, path, "allocate", false, &s->ref_allocate, err, errlen) < 0 ||
        resolve_function(s, path, "admit", false, &s->ref_admit, err, errlen) < 0 ||
        resolve_function(s, path, "order", true, &s->ref_order, err, errlen) < 0 ||
        read_settings(s, path, err, errlen) < 0)
        return -1;
    lua_pop(L, 1);                                     /* [handler] */
    s->ref_traceback = luaL_ref(L, LUA_REGISTRYINDEX); /* [] */
    lua_createtable(L, 0, 6);
    s->ref_req = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushlightuserdata(L, s);
    lua_pushcclosure(L, req_header, 1);
    s->ref_header = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_createtable(L, 0, 6);
    s->ref_ord = luaL_ref(L, LUA_REGISTRYINDEX);
    for (int i = 0; i < K__COUNT; i++) {
        lua_pushstring(L, admit_keys[i]);
        s->ref_key[i] = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    return 0;
}

/* Sets req[key] (key: a name kept in the registry, so not interned again per call) in the table
 * at index t. */
static void req_set_str(lua_State *L, int t, int key_ref, const char *v)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, key_ref);
    lua_pushstring(L, v ? v : "");
    lua_rawset(L, t);
}

static void req_set_num(lua_State *L, int t, int key_ref, lua_Number v)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, key_ref);
    lua_pushnumber(L, v);
    lua_rawset(L, t);
}

typedef enum {
    OPEN_JIT,     /* the loop threads' */
    OPEN_BOUNDED, /* interpreted, each call under the instruction budget */
    OPEN_CHECK,   /* OPEN_BOUNDED, errors to err only: script_check's */
} open_mode_t;

static int open_script(script_t **out, const char *path, const script_env_t *env, open_mode_t mode,
                       char *err, size_t errlen)
{
    script_env_t dflt = {.host_id = "", .hosts = 1};
    script_t *s = calloc(1, sizeof(*s));

    *out = NULL;
    if (!env)
        env = &dflt;
    if (!s) {
        snprintf(err, errlen, "%s: out of memory", path);
        return -1;
    }
    s->L = luaL_newstate();
    if (!s->L) {
        snprintf(err, errlen, "%s: cannot create a Lua state", path);
        goto fail;
    }
    lua_atpanic(s->L, on_panic);
    if (lua_cpcall(s->L, setup_state, (void *)env) != 0) {
        snprintf(err, errlen, "%s: cannot set up the Lua state: %s", path, lua_tostring(s->L, -1));
        goto fail;
    }
    if (mode != OPEN_JIT) {
        s->bounded = true;
        s->path = path;
        s->quiet = mode == OPEN_CHECK;
        luaJIT_setmode(s->L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
        if (lua_cpcall(s->L, setup_budget, s) != 0) {
            snprintf(err, errlen, "%s: cannot set up the Lua state: %s", path,
                     lua_tostring(s->L, -1));
            goto fail;
        }
        budget_start(s, "the top-level chunk");
    }
    if (load_policy(s, path, err, errlen) < 0) {
        if (s->spent[0] != '\0')
            snprintf(err, errlen, "%s", s->spent);
        goto fail;
    }
    lua_settop(s->L, 0);
    *out = s;
    return 0;
fail:
    script_close(s);
    return -1;
}

int script_open(script_t **out, const char *path, const script_env_t *env, char *err, size_t errlen)
{
    return open_script(out, path, env, OPEN_JIT, err, errlen);
}

int script_open_bounded(script_t **out, const char *path, const script_env_t *env, char *err,
                        size_t errlen)
{
    return open_script(out, path, env, OPEN_BOUNDED, err, errlen);
}

void script_close(script_t *s)
{
    if (!s)
        return;
    if (s->L)
        lua_close(s->L);
    free(s);
}

const script_settings_t *script_settings(const script_t *s)
{
    return &s->settings;
}

/* ---- calls ----------------------------------------------------------------------------- */

/* Stack: [..] -> [.., handler, fn] ; returns the handler's index for lua_pcall. */
static int push_call(lua_State *L, int ref_traceback, int ref_fn)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref_traceback);
    int handler = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref_fn);
    return handler;
}

/* rawset, not setfield: a script that gave the reused tables a metatable must not get to run
 * code (and raise errors) outside the protected call. Stack: [.., t, ..] -> unchanged. */
static void set_str(lua_State *L, int t, const char *key, const char *value)
{
    lua_pushstring(L, key);
    lua_pushstring(L, value ? value : "");
    lua_rawset(L, t);
}

static void set_num(lua_State *L, int t, const char *key, lua_Number value)
{
    lua_pushstring(L, key);
    lua_pushnumber(L, value);
    lua_rawset(L, t);
}

/* Calls allocate(event, cluster). Returns 0 and the clamped quota, or -1 on a script error. */
static int call_allocate(script_t *s, const char *event, const script_cluster_t *c, int64_t *quota)
{
    lua_State *L = s->L;
    int top = lua_gettop(L);
    int handler = push_call(L, s->ref_traceback, s->ref_allocate); /* [handler, allocate] */
    int rc = -1;

    lua_pushstring(L, event);
    lua_createtable(L, 0, 4); /* [handler, allocate, event, cluster]: rare, not reused */
    budget_start(s, "allocate()");
    int t = lua_gettop(L);
    set_num(L, t, "stock", (lua_Number)c->stock);
    set_num(L, t, "per_user_limit", (lua_Number)c->per_user_limit);
    set_num(L, t, "hosts", c->hosts);
    set_str(L, t, "host_id", c->host_id);
    if (lua_pcall(L, 2, 1, handler) != 0) { /* [handler, msg] */
        report(s, "allocate()", lua_tostring(L, -1));
        goto out;
    } /* [handler, quota] */
    double d = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : NAN;
    if (isnan(d)) {
        const char *got = lua_type(L, -1) == LUA_TNUMBER ? "nan" : luaL_typename(L, -1);
        report(s, "allocate()", lua_pushfstring(L, "must return a number, returned %s", got));
        goto out;
    }
    d = floor(d);
    *quota = d <= 0 ? 0 : d >= (double)c->stock ? c->stock : (int64_t)d;
    rc = 0;
out:
    lua_settop(L, top);
    return rc;
}

int64_t script_allocate(script_t *s, const char *event, const script_cluster_t *cluster)
{
    int64_t quota;
    if (call_allocate(s, event, cluster, &quota) < 0)
        return cluster->stock < 0 ? 0 : cluster->stock;
    return quota;
}

/* Copies a script's string keeping only [A-Za-z0-9_] (name_only) or printable ASCII other than
 * '"' and '\\'; other bytes become '_', so callers may put it in JSON without escaping. */
static void copy_clean(char *dst, size_t cap, const char *src, size_t len, bool name_only)
{
    size_t n = len < cap - 1 ? len : cap - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)src[i];
        bool ok = name_only ? (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                                  (c >= '0' && c <= '9') || c == '_'
                            : c >= 0x20 && c < 0x7f && c != '"' && c != '\\';
        dst[i] = ok ? (char)c : '_';
    }
    dst[n] = '\0';
}

/* Stack: [handler, ok, status, reason, detail] at base = index of ok. Fills v, or returns -1
 * with the complaint pushed for report(). */
static int read_verdict(lua_State *L, int base, script_verdict_t *v)
{
    int t = lua_type(L, base);
    if (t == LUA_TBOOLEAN && lua_toboolean(L, base)) {
        v->status = 0;
        v->reason[0] = '\0';
        v->detail[0] = '\0';
        return 0;
    }
    if (t != LUA_TNIL && t != LUA_TBOOLEAN) {
        lua_pushfstring(L, "must return true, or false/nil and a status (returned %s)",
                        luaL_typename(L, base));
        return -1;
    }
    double status = lua_type(L, base + 1) == LUA_TNUMBER ? lua_tonumber(L, base + 1) : 0;
    if (!(status >= 400 && status <= 499) || status != floor(status)) {
        lua_pushstring(L, "a refusal needs a 4xx status as its second value");
        return -1;
    }
    size_t len;
    const char *reason = "rejected";
    len = strlen(reason);
    if (lua_type(L, base + 2) == LUA_TSTRING) {
        reason = lua_tolstring(L, base + 2, &len);
    } else if (!lua_isnil(L, base + 2)) {
        lua_pushstring(L, "the reason (third value) must be a string");
        return -1;
    }
    v->status = (int)status;
    copy_clean(v->reason, sizeof(v->reason), reason, len, true);
    v->detail[0] = '\0';
    int dt = lua_type(L, base + 3);
    if (dt == LUA_TSTRING || dt == LUA_TNUMBER) {
        const char *detail = lua_tolstring(L, base + 3, &len);
        copy_clean(v->detail, sizeof(v->detail), detail, len, false);
    }
    return 0;
}

static void policy_error(script_verdict_t *v)
{
    v->status = 500;
    snprintf(v->reason, sizeof(v->reason), "policy_error");
    v->detail[0] = '\0';
}

/* Returns 0 with v filled, or -1 on a script error (v then says 500 policy_error). */
static int call_admit(script_t *s, const script_admit_req_t *r, script_verdict_t *v)
{
    lua_State *L = s->L;
    int top = lua_gettop(L);
    int handler = push_call(L, s->ref_traceback, s->ref_admit); /* [handler, admit] */
    int rc = -1;

    lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref_req); /* [handler, admit, req] */
    int t = handler + 2;
    const int *k = s->ref_key;
    req_set_str(L, t, k[K_EVENT], r->event);
    req_set_str(L, t, k[K_USER], r->user);
    req_set_num(L, t, k[K_QTY], (lua_Number)r->qty);
    req_set_str(L, t, k[K_CLIENT], r->client);
    req_set_num(L, t, k[K_NOW_MS], (lua_Number)r->now_ms);
    lua_rawgeti(L, LUA_REGISTRYINDEX, k[K_HEADER]);
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref_header);
    lua_rawset(L, t);
    s->cur = r;
    budget_start(s, "admit()");
    int failed = lua_pcall(L, 1, 4, handler);
    s->cur = NULL;
    if (failed) { /* [handler, msg] */
        report(s, "admit()", lua_tostring(L, -1));
        policy_error(v);
        goto out;
    }                                          /* [handler, ok, status, reason, detail] */
    if (read_verdict(L, handler + 1, v) < 0) { /* [handler, ok, status, reason, detail, why] */
        report(s, "admit()", lua_tostring(L, -1));
        policy_error(v);
        goto out;
    }
    rc = 0;
out:
    lua_settop(L, top);
    return rc;
}

void script_admit(script_t *s, const script_admit_req_t *req, script_verdict_t *v)
{
    call_admit(s, req, v);
}

int script_order(script_t *s, const script_order_t *o, char *out, size_t cap)
{
    /* Without order() the payload is the built-in format, and no Lua runs per sold ticket. */
    if (s->ref_order == LUA_NOREF)
        return script_order_default(o, out, cap);
    lua_State *L = s->L;
    int top = lua_gettop(L);
    int handler = push_call(L, s->ref_traceback, s->ref_order); /* [handler, order] */
    int rc = -1;

    lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref_ord); /* [handler, order, o] */
    int t = handler + 2;
    set_str(L, t, "order_id", o->order_id);
    set_str(L, t, "event", o->event);
    set_str(L, t, "user", o->user);
    set_num(L, t, "qty", (lua_Number)o->qty);
    set_str(L, t, "host", o->host_id);
    set_num(L, t, "created_at", (lua_Number)o->created_ms);
    budget_start(s, "order()");
    if (lua_pcall(L, 1, 1, handler) != 0) { /* [handler, msg] */
        report(s, "order()", lua_tostring(L, -1));
        goto out;
    } /* [handler, payload] */
    if (lua_type(L, -1) != LUA_TSTRING) {
        report(s, "order()",
               lua_pushfstring(L, "must return a string, returned %s", luaL_typename(L, -1)));
        goto out;
    }
    size_t len;
    const char *p = lua_tolstring(L, -1, &len);
    if (len >= cap) {
        report(s, "order()",
               lua_pushfstring(L, "payload of %d bytes does not fit in %d", (int)len, (int)cap));
        goto out;
    }
    memcpy(out, p, len);
    out[len] = '\0';
    rc = (int)len;
out:
    lua_settop(L, top);
    return rc;
}

static int append(char *buf, size_t cap, size_t *pos, const char *s, size_t len)
{
    if (len > cap - *pos)
        return -1;
    memcpy(buf + *pos, s, len);
    *pos += len;
    return 0;
}

#define APPEND_LIT(buf, cap, pos, lit) append((buf), (cap), (pos), (lit), sizeof(lit) - 1)

static int append_str(char *buf, size_t cap, size_t *pos, const char *s)
{
    s = s ? s : "";
    return util_json_str(buf, cap, pos, s, strlen(s));
}

static int append_i64(char *buf, size_t cap, size_t *pos, int64_t v)
{
    char num[UTIL_I64_LEN];
    return append(buf, cap, pos, num, util_i64(num, v));
}

int script_order_default(const script_order_t *o, char *out, size_t cap)
{
    size_t pos = 0;

    if (cap == 0)
        return -1;
    if (APPEND_LIT(out, cap, &pos, "{\"order_id\":") < 0 ||
        append_str(out, cap, &pos, o->order_id) < 0 ||
        APPEND_LIT(out, cap, &pos, ",\"event\":") < 0 || append_str(out, cap, &pos, o->event) < 0 ||
        APPEND_LIT(out, cap, &pos, ",\"user\":") < 0 || append_str(out, cap, &pos, o->user) < 0 ||
        APPEND_LIT(out, cap, &pos, ",\"qty\":") < 0 || append_i64(out, cap, &pos, o->qty) < 0 ||
        APPEND_LIT(out, cap, &pos, ",\"host\":") < 0 ||
        append_str(out, cap, &pos, o->host_id) < 0 ||
        APPEND_LIT(out, cap, &pos, ",\"created_at\":") < 0 ||
        append_i64(out, cap, &pos, o->created_ms) < 0 || APPEND_LIT(out, cap, &pos, "}") < 0 ||
        pos >= cap)
        return -1;
    out[pos] = '\0';
    return (int)pos;
}

int script_order_from_record(script_t *s, const char *record, size_t len, char *out, size_t cap)
{
    json_error_t jerr;
    json_t *doc = json_loadb(record, len, 0, &jerr);
    script_order_t o = {0};
    json_int_t qty = 0, created = 0;
    int rc = -1;
    if (doc == NULL || json_unpack_ex(doc, &jerr, 0, "{s:s, s:s, s:s, s:I, s:s, s:I}", "order_id",
                                      &o.order_id, "event", &o.event, "user", &o.user, "qty", &qty,
                                      "host", &o.host_id, "created_at", &created) != 0)
        goto out;
    o.qty = qty;
    o.created_ms = created;
    rc = s != NULL ? script_order(s, &o, out, cap) : -1;
    if (rc < 0)
        rc = script_order_default(&o, out, cap);
out:
    json_decref(doc);
    return rc;
}

/* ---- snatch-host --test ---------------------------------------------------------------- */

/* After a failed step: the complaint, one line when the budget was spent. */
static void check_failed(script_t *s, char *err, size_t errlen)
{
    snprintf(err, errlen, "%s", s->spent[0] != '\0' ? s->spent : s->err);
}

static int check_order(script_t *s, char *err, size_t errlen)
{
    char payload[4096];
    script_order_t o = {
        .order_id = "1700000000000-0000000001-check",
        .event = "check",
        .user = "check_user",
        .qty = 1,
        .host_id = "check-host",
        .created_ms = 1700000000000,
    };
    if (script_order(s, &o, payload, sizeof(payload)) < 0) {
        check_failed(s, err, errlen);
        return -1;
    }
    json_error_t jerr;
    json_t *doc = json_loads(payload, JSON_REJECT_DUPLICATES, &jerr);
    bool object = doc && json_is_object(doc);
    json_decref(doc);
    if (!object) {
        snprintf(err, errlen, "order(): the payload is not a JSON object (%s): %.200s",
                 doc ? "not an object" : jerr.text, payload);
        return -1;
    }
    return 0;
}

int script_check(const char *path, const script_env_t *env, char *err, size_t errlen)
{
    script_t *s = NULL;
    int rc = -1;

    if (open_script(&s, path, env, OPEN_CHECK, err, errlen) < 0)
        return -1;

    script_cluster_t cluster = {.stock = 1000,
                                .per_user_limit = 1,
                                .hosts = 3,
                                .host_id = env && env->host_id ? env->host_id : ""};
    int64_t quota;
    if (call_allocate(s, "check", &cluster, &quota) < 0) {
        check_failed(s, err, errlen);
        goto out;
    }
    script_admit_req_t req = {.event = "check",
                              .user = "check_user",
                              .qty = 1,
                              .client = "127.0.0.1",
                              .now_ms = util_now_ms()};
    script_verdict_t v;
    if (call_admit(s, &req, &v) < 0) {
        check_failed(s, err, errlen);
        goto out;
    }
    if (check_order(s, err, errlen) < 0)
        goto out;
    rc = 0;
out:
    script_close(s);
    return rc;
}
