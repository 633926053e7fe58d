/* Unit tests for host/policy/script.c: the default policy (lua/policy.lua), the example policies
 * (examples/), refusal of broken scripts with a useful message, script errors at run time, and
 * reload (two states side by side). Fixtures are written to a fresh temp directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ratelimit.h"
#include "script.h"
#include "util.h"

/* The host sends host.counter() to its metrics; here it is recorded (script_set_counter). */
static char last_counter[64];
static double counter_total;

static void count_lua(const char *name, size_t len, double inc)
{
    snprintf(last_counter, sizeof(last_counter), "%.*s", (int)len, name);
    counter_total += inc;
}

static char tmpdir[] = "/tmp/snatch-test-script-XXXXXX";
static const script_env_t env = {.host_id = "h1", .hosts = 3};

static const char *source_dir(void)
{
    const char *dir = getenv("SNATCH_SOURCE_DIR");
    return dir && *dir ? dir : SNATCH_SOURCE_DIR;
}

static void source_path(char *out, size_t cap, const char *rel)
{
    int n = snprintf(out, cap, "%s/%s", source_dir(), rel);
    assert_true(n > 0 && (size_t)n < cap);
}

static void fixture(char *path, size_t cap, const char *name, const char *text)
{
    int n = snprintf(path, cap, "%s/%s", tmpdir, name);
    assert_true(n > 0 && (size_t)n < cap);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

/* A minimal valid policy body to build broken variants from. */
#define OK_ORDER "function M.order(o) return '{\"order_id\":\"' .. o.order_id .. '\"}' end\n"
#define OK_ADMIT "function M.admit(req) return true end\n"
#define OK_ALLOCATE "function M.allocate(e, c) return c.stock end\n"

static script_t *open_ok(const char *path)
{
    char err[2048] = "";
    script_t *s = NULL;
    if (script_open(&s, path, &env, err, sizeof(err)) != 0)
        fail_msg("cannot open %s: %s", path, err);
    return s;
}

static script_t *open_default(void)
{
    char path[1024];
    source_path(path, sizeof(path), "lua/policy.lua");
    return open_ok(path);
}

static void admit(script_t *s, const char *user, int64_t qty, script_verdict_t *v)
{
    script_admit_req_t req = {
        .event = "ev1", .user = user, .qty = qty, .client = "10.0.0.1", .now_ms = util_now_ms()};
    memset(v, 0x5a, sizeof(*v));
    script_admit(s, &req, v);
}

static int setup(void **state)
{
    (void)state;
    if (!mkdtemp(tmpdir))
        return -1;
    return ratelimit_init(4096);
}

static int teardown(void **state)
{
    (void)state;
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    ratelimit_shutdown();
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- the default policy ---------------------------------------------------------------- */

static void test_default_settings(void **state)
{
    (void)state;
    script_t *s = open_default();
    const script_settings_t *st = script_settings(s);
    assert_int_equal(st->max_qty, 4);
    assert_int_equal(st->user_max_len, 64);
    assert_int_equal(st->event_max_len, 64);
    script_close(s);
}

static void test_default_allocate(void **state)
{
    (void)state;
    static const struct {
        int hosts;
        int64_t stock, want;
    } cases[] = {
        {1, 100, 100}, /* alone: no tolerance, everything */
        {2, 100, 100}, /* survives one dead host: the other can sell it all */
        {3, 100, 50},  {4, 10, 4}, {3, 1, 1}, {5, 0, 0}, {0, 7, 7}, {11, 1000000, 100000},
    };
    script_t *s = open_default();
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        script_cluster_t c = {
            .stock = cases[i].stock, .per_user_limit = 1, .hosts = cases[i].hosts, .host_id = "h1"};
        int64_t got = script_allocate(s, "ev1", &c);
        if (got != cases[i].want)
            fail_msg("hosts %d stock %lld: got %lld, want %lld", cases[i].hosts,
                     (long long)cases[i].stock, (long long)got, (long long)cases[i].want);
    }
    script_close(s);
}

static void test_default_admit_qty(void **state)
{
    (void)state;
    script_verdict_t v;
    script_t *s = open_default();

    admit(s, "qty_user", 1, &v);
    assert_int_equal(v.status, 0);
    admit(s, "qty_user", 4, &v);
    assert_int_equal(v.status, 0);
    admit(s, "qty_user", 0, &v);
    assert_int_equal(v.status, 400);
    assert_string_equal(v.reason, "bad_qty");
    assert_non_null(strstr(v.detail, "between 1 and 4"));
    admit(s, "qty_user", 5, &v);
    assert_int_equal(v.status, 400);
    script_close(s);
}

static void test_default_admit_rate_limited(void **state)
{
    (void)state;
    script_verdict_t v;
    script_t *s = open_default();
    int admitted = 0, limited = 0;

    /* burst 10 at 5/s: the 20 calls take far less than the 200 ms one more token needs, but
     * a slow machine may earn one. */
    for (int i = 0; i < 20; i++) {
        admit(s, "burst_user", 1, &v);
        if (v.status == 0) {
            admitted++;
        } else {
            assert_int_equal(v.status, 429);
            assert_string_equal(v.reason, "rate_limited");
            limited++;
        }
    }
    assert_in_range(admitted, 10, 11);
    assert_int_equal(admitted + limited, 20);
    /* Another buyer is not affected. */
    admit(s, "other_user", 1, &v);
    assert_int_equal(v.status, 0);
    script_close(s);
}

/* Per client address: 2000/s with a burst of 4000, loopback exempt. Distinct buyers, so the
 * per-buyer limit never interferes. */
static void test_default_admit_client_limit(void **state)
{
    (void)state;
    char user[32];
    script_verdict_t v;
    script_t *s = open_default();
    int admitted = 0, limited = 0;

    for (int i = 0; i < 6000; i++) {
        snprintf(user, sizeof(user), "c%d", i);
        script_admit_req_t req = {
            .event = "ev1", .user = user, .qty = 1, .client = "10.9.9.9", .now_ms = 0};
        script_admit(s, &req, &v);
        if (v.status == 0) {
            admitted++;
            continue;
        }
        assert_int_equal(v.status, 429);
        assert_non_null(strstr(v.detail, "address"));
        limited++;
    }
    /* 4000 of burst, plus what 2000/s earned while the loop ran. */
    assert_true(admitted >= 4000 && limited > 0);
    for (int i = 0; i < 6000; i++) {
        snprintf(user, sizeof(user), "l%d", i);
        script_admit_req_t req = {.event = "ev1",
                                  .user = user,
                                  .qty = 1,
                                  .client = i % 2 ? "127.0.0.1" : "::1",
                                  .now_ms = 0};
        script_admit(s, &req, &v);
        assert_int_equal(v.status, 0);
    }
    script_close(s);
}

/* The order() the default policy had before it left the payload to the host: what the
 * built-in format must keep producing byte for byte. */
static const char LUA_ORDER[] =
    "local escapes = { ['\"'] = '\\\\\"', ['\\\\'] = '\\\\\\\\' }\n"
    "local function json_str(s)\n"
    "  return '\"' .. s:gsub('[%z\\1-\\31\"\\\\]', function(c)\n"
    "    return escapes[c] or string.format('\\\\u%04x', c:byte())\n"
    "  end) .. '\"'\n"
    "end\n"
    "function M.order(o)\n"
    "  return '{\"order_id\":' .. json_str(o.order_id) ..\n"
    "    ',\"event\":' .. json_str(o.event) ..\n"
    "    ',\"user\":' .. json_str(o.user) ..\n"
    "    ',\"qty\":' .. string.format('%d', o.qty) ..\n"
    "    ',\"host\":' .. json_str(o.host) ..\n"
    "    ',\"created_at\":' .. string.format('%d', o.created_at) .. '}'\n"
    "end\n";

static void test_default_order(void **state)
{
    (void)state;
    char out[512], builtin[512], path[512];
    script_order_t o = {.order_id = "1700000000123-0000000042-ev1",
                        .event = "ev1",
                        .user = "alice@x.io",
                        .qty = 3,
                        .host_id = "h1",
                        .created_ms = 1700000000123};
    /* The default policy defines no order(): the host's built-in format, exactly. */
    script_t *s = open_default();
    int n = script_order(s, &o, out, sizeof(out));
    assert_string_equal(out, "{\"order_id\":\"1700000000123-0000000042-ev1\",\"event\":\"ev1\","
                             "\"user\":\"alice@x.io\",\"qty\":3,\"host\":\"h1\","
                             "\"created_at\":1700000000123}");
    assert_int_equal((size_t)n, strlen(out));
    /* Too small a buffer is an error, never a truncated payload. */
    assert_int_equal(script_order(s, &o, out, 20), -1);
    assert_int_equal(script_order(s, &o, out, (size_t)n), -1);
    assert_int_equal(script_order(s, &o, out, (size_t)n + 1), n);
    script_close(s);

    /* The Lua order() the default policy used to have gives the same bytes, even for bytes the
     * host never lets through and for extreme numbers. */
    char text[2048];
    snprintf(text, sizeof(text), "local M = {}\n" OK_ALLOCATE OK_ADMIT "%sreturn M\n", LUA_ORDER);
    fixture(path, sizeof(path), "old_order.lua", text);
    s = open_ok(path);
    static const char *const users[] = {"alice@x.io", "q\"b\\s\n\x01\x1f\x7f\xc3\xa9"};
    static const int64_t nums[] = {0, 1, -7, 4, 1700000000123, 9007199254740992};
    for (size_t u = 0; u < ARRAY_SIZE(users); u++) {
        for (size_t i = 0; i < ARRAY_SIZE(nums); i++) {
            o.user = users[u];
            o.qty = nums[i];
            o.created_ms = nums[ARRAY_SIZE(nums) - 1 - i];
            n = script_order(s, &o, out, sizeof(out));
            assert_true(n > 0);
            assert_int_equal(script_order_default(&o, builtin, sizeof(builtin)), n);
            assert_string_equal(out, builtin);
        }
    }
    json_error_t jerr;
    json_t *doc = json_loads(out, 0, &jerr);
    assert_non_null(doc);
    assert_string_equal(json_string_value(json_object_get(doc, "user")), o.user);
    json_decref(doc);
    script_close(s);
}

static void test_order_default_escapes(void **state)
{
    (void)state;
    char buf[256];
    script_order_t o = {.order_id = "id",
                        .event = "e",
                        .user = "a\"b\\c\n",
                        .qty = 1,
                        .host_id = "h",
                        .created_ms = 5};
    int n = script_order_default(&o, buf, sizeof(buf));
    assert_true(n > 0);
    json_t *doc = json_loads(buf, 0, NULL);
    assert_non_null(doc);
    assert_string_equal(json_string_value(json_object_get(doc, "user")), "a\"b\\c\n");
    json_decref(doc);
    assert_int_equal(script_order_default(&o, buf, (size_t)n), -1);
    assert_int_equal(script_order_default(&o, buf, 10), -1);
}

/* ---- refusing broken scripts ----------------------------------------------------------- */

static void expect_open_fails(const char *name, const char *text, const char *want1,
                              const char *want2)
{
    char path[512], err[2048] = "";
    script_t *s = (script_t *)1;
    fixture(path, sizeof(path), name, text);
    assert_int_equal(script_open(&s, path, &env, err, sizeof(err)), -1);
    assert_null(s);
    if (!strstr(err, want1) || (want2 && !strstr(err, want2)))
        fail_msg("%s: message '%s' lacks '%s' / '%s'", name, err, want1, want2 ? want2 : "");
    /* script_check refuses it the same way. */
    char err2[2048] = "";
    assert_int_equal(script_check(path, &env, err2, sizeof(err2)), -1);
    assert_string_equal(err, err2);
}

static void test_refuses_broken_scripts(void **state)
{
    (void)state;
    expect_open_fails("syntax.lua", "local M = {}\n\nfunction M.admit(req\n  return true\nend\n",
                      "syntax.lua:4:", NULL);
    expect_open_fails("number.lua", "return 42\n", "number.lua: must return a table",
                      "returned number");
    expect_open_fails("nothing.lua", "local x = 1\n", "must return a table", "nil");
    expect_open_fails("noadmit.lua", "local M = {}\n" OK_ALLOCATE OK_ORDER "return M\n",
                      "noadmit.lua: the returned table has no function 'admit'", NULL);
    expect_open_fails("notfn.lua",
                      "local M = {}\n" OK_ALLOCATE OK_ADMIT "M.order = 'x'\nreturn M\n",
                      "no function 'order' (found string)", NULL);
    expect_open_fails("mainerr.lua", "local M = {}\nerror('boom at load')\nreturn M\n",
                      "mainerr.lua:2: boom at load", "stack traceback");
    expect_open_fails("setting.lua",
                      "local M = {}\n" OK_ALLOCATE OK_ADMIT OK_ORDER "M.max_qty = 1.5\nreturn M\n",
                      "setting 'max_qty' must be a positive integer", NULL);
    expect_open_fails("setting2.lua",
                      "local M = {}\n" OK_ALLOCATE OK_ADMIT OK_ORDER
                      "M.user_max_len = 'long'\nreturn M\n",
                      "setting 'user_max_len'", NULL);
    expect_open_fails("binary.lua", "\x1bLJ\x02\x00garbage", "binary.lua", NULL);

    char err[512] = "";
    script_t *s = NULL;
    char missing[512];
    snprintf(missing, sizeof(missing), "%s/does-not-exist.lua", tmpdir);
    assert_int_equal(script_open(&s, missing, &env, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "does-not-exist.lua"));
}

static void expect_check_fails(const char *name, const char *text, const char *want1,
                               const char *want2)
{
    char path[512], err[2048] = "";
    fixture(path, sizeof(path), name, text);
    script_t *s = open_ok(path); /* loads fine: the error is only at run time */
    script_close(s);
    assert_int_equal(script_check(path, &env, err, sizeof(err)), -1);
    if (!strstr(err, want1) || (want2 && !strstr(err, want2)))
        fail_msg("%s: message '%s' lacks '%s' / '%s'", name, err, want1, want2 ? want2 : "");
}

static void test_check_catches_runtime_errors(void **state)
{
    (void)state;
    expect_check_fails(
        "allocerr.lua",
        "local M = {}\n"
        "function M.allocate(e, c)\n  return c.stock / c.nothing.x\nend\n" OK_ADMIT OK_ORDER
        "return M\n",
        "allocate(): ", "allocerr.lua:3:");
    expect_check_fails("allocstr.lua",
                       "local M = {}\nfunction M.allocate() return 'lots' end\n" OK_ADMIT OK_ORDER
                       "return M\n",
                       "allocate(): must return a number", NULL);
    expect_check_fails("admiterr.lua",
                       "local M = {}\n" OK_ALLOCATE
                       "function M.admit(req)\n  return req.qty + nil\nend\n" OK_ORDER "return M\n",
                       "admit(): ", "admiterr.lua:4:");
    expect_check_fails("admit200.lua",
                       "local M = {}\n" OK_ALLOCATE
                       "function M.admit() return false, 200, 'ok' end\n" OK_ORDER "return M\n",
                       "4xx status", NULL);
    expect_check_fails("sandbox.lua",
                       "local M = {}\n" OK_ALLOCATE
                       "function M.admit() return io.open('/etc/passwd') end\n" OK_ORDER
                       "return M\n",
                       "sandbox.lua:3:", "io");
    expect_check_fails("ordernum.lua",
                       "local M = {}\n" OK_ALLOCATE OK_ADMIT
                       "function M.order() return 12 end\nreturn M\n",
                       "order(): must return a string", NULL);
    expect_check_fails("ordernotjson.lua",
                       "local M = {}\n" OK_ALLOCATE OK_ADMIT
                       "function M.order(o) return '{order_id=' .. o.order_id end\nreturn M\n",
                       "not a JSON object", NULL);
}

static void test_check_accepts_good_policies(void **state)
{
    (void)state;
    static const char *const files[] = {"lua/policy.lua", "examples/max4_per_buyer.lua",
                                        "examples/opens_at.lua", "examples/suspicious_ids.lua"};
    for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
        char path[1024], err[2048] = "";
        source_path(path, sizeof(path), files[i]);
        if (script_check(path, &env, err, sizeof(err)) != 0)
            fail_msg("%s: %s", files[i], err);
    }
}

/* ---- the check's instruction budget ---------------------------------------------------- */

/* Seconds a check may take here before the test fails: the budget is spent in well under one
 * (about 0.12 s); a check without it never returns. */
#define CHECK_DEADLINE_S 30

/* Runs fn(path, out, cap) in a child process that SIGALRM ends after CHECK_DEADLINE_S, so a
 * call that never returns fails this test instead of hanging it (what names it). out gets what
 * the child wrote there; returns the child's exit status (fn's return). */
static int in_child(int (*fn)(const char *, char *, size_t), const char *path, const char *what,
                    char *out, size_t cap)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        alarm(CHECK_DEADLINE_S);
        char msg[2048] = "";
        int rc = fn(path, msg, sizeof(msg));
        ssize_t w = write(fds[1], msg, strlen(msg));
        (void)w;
        _exit(rc);
    }
    close(fds[1]);
    size_t n = 0;
    ssize_t r;
    while (n < cap - 1 && (r = read(fds[0], out + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    out[n] = '\0';
    close(fds[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (WIFSIGNALED(status))
        fail_msg("%s: %s still ran after %d s (signal %d)", path, what, CHECK_DEADLINE_S,
                 WTERMSIG(status));
    return WEXITSTATUS(status);
}

static int check_in_child(const char *path, char *msg, size_t cap)
{
    return script_check(path, &env, msg, cap) == 0 ? 0 : 1;
}

/* script_check in a child (in_child). Returns the check's result; err gets its message. */
static int bounded_check(const char *path, char *err, size_t errlen)
{
    return in_child(check_in_child, path, "script_check", err, errlen) == 0 ? 0 : -1;
}

/* A policy that loops where the check runs it is refused with one line naming the step and
 * the line of the loop. */
static void expect_endless(const char *name, const char *text, const char *step, int line)
{
    char path[512], err[2048], want[1536];
    fixture(path, sizeof(path), name, text);
    assert_int_equal(bounded_check(path, err, sizeof(err)), -1);
    snprintf(want, sizeof(want),
             "%s: %s ran past %d Lua instructions in the check (an endless loop?, at %s:%d)", path,
             step, SCRIPT_CHECK_BUDGET, path, line);
    assert_string_equal(err, want);
}

static void test_check_bounds_endless_loops(void **state)
{
    (void)state;
    expect_endless("loopchunk.lua",
                   "local M = {}\n" OK_ALLOCATE OK_ADMIT OK_ORDER "while true do end\nreturn M\n",
                   "the top-level chunk", 5);
    expect_endless(
        "loopalloc.lua",
        "local M = {}\nfunction M.allocate(e, c)\n  while true do end\nend\n" OK_ADMIT OK_ORDER
        "return M\n",
        "allocate()", 3);
    /* Only the sample buyer loops: the check's admit() call is what finds it. */
    expect_endless("loopadmit.lua",
                   "local M = {}\n" OK_ALLOCATE "function M.admit(req)\n"
                   "  local n = 0\n"
                   "  while req.user == 'check_user' do n = n + 1 end\n"
                   "  return true\n"
                   "end\n" OK_ORDER "return M\n",
                   "admit()", 5);
    expect_endless("looporder.lua",
                   "local M = {}\n" OK_ALLOCATE OK_ADMIT
                   "function M.order(o)\n  repeat until false\nend\nreturn M\n",
                   "order()", 5);
    /* Switching the JIT back on does not escape the budget (compiled loops run no hooks). */
    expect_endless("loopjit.lua",
                   "local M = {}\njit.on()\n" OK_ADMIT OK_ORDER
                   "function M.allocate(e, c)\n  local x = 0\n  for i = 1, 1e15 do x = x + i end\n"
                   "  return x\nend\nreturn M\n",
                   "allocate()", 7);
    /* Catching the budget's error does not either: once spent, every instruction fails. */
    expect_endless("looppcall.lua",
                   "local M = {}\n" OK_ALLOCATE OK_ORDER
                   "local function spin() while true do end end\n"
                   "function M.admit(req)\n  while true do pcall(spin) end\nend\nreturn M\n",
                   "admit()", 4);
    expect_endless("loopcoroutine.lua",
                   "local M = {}\n" OK_ALLOCATE OK_ADMIT "function M.order(o)\n"
                   "  local co = coroutine.wrap(function() while true do end end)\n"
                   "  return co()\nend\nreturn M\n",
                   "order()", 5);

    /* Ordinary policies pass as before. */
    char path[1024], err[2048];
    source_path(path, sizeof(path), "lua/policy.lua");
    assert_int_equal(bounded_check(path, err, sizeof(err)), 0);
    /* The check itself (this process) still passes a good policy after a refused one. */
    expect_endless("loopchunk2.lua", "while true do end\n", "the top-level chunk", 1);
    assert_int_equal(script_check(path, &env, err, sizeof(err)), 0);
}

/* A bounded state (the reconcilers') renders the record of buyer "wedge", whose order() loops,
 * then one of buyer "u1"; both payloads go to out, a line each. Run by in_child. */
static int orders_in_child(const char *path, char *out, size_t cap)
{
    char err[2048], a[512] = "", b[512] = "";
    script_t *s = NULL;
    if (script_open_bounded(&s, path, &env, err, sizeof(err)) != 0)
        return 2;
    const char *rec = "{\"order_id\":\"%s\",\"event\":\"e\",\"user\":\"%s\",\"qty\":1,"
                      "\"host\":\"h1\",\"created_at\":1700000000000}";
    char r1[256], r2[256];
    snprintf(r1, sizeof(r1), rec, "o1", "wedge");
    snprintf(r2, sizeof(r2), rec, "o2", "u1");
    int n1 = script_order_from_record(s, r1, strlen(r1), a, sizeof(a));
    int n2 = script_order_from_record(s, r2, strlen(r2), b, sizeof(b));
    script_close(s);
    snprintf(out, cap, "%s\n%s\n", n1 > 0 ? a : "-", n2 > 0 ? b : "-");
    return 0;
}

/* The reconcilers' state: an order() that loops for one order is cut off by the budget, that
 * order gets the built-in payload (as for any order() error), and the next call runs with a
 * fresh budget. */
static void test_bounded_state_cuts_a_looping_order(void **state)
{
    (void)state;
    char path[512], got[1024];
    fixture(path, sizeof(path), "looporder_one.lua",
            "local M = {}\n" OK_ALLOCATE OK_ADMIT "function M.order(o)\n"
            "  while o.user == 'wedge' do end\n"
            "  return '{\"mine\":\"' .. o.order_id .. '\"}'\n"
            "end\nreturn M\n");
    assert_int_equal(in_child(orders_in_child, path, "order()", got, sizeof(got)), 0);
    assert_string_equal(got, "{\"order_id\":\"o1\",\"event\":\"e\",\"user\":\"wedge\",\"qty\":1,"
                             "\"host\":\"h1\",\"created_at\":1700000000000}\n"
                             "{\"mine\":\"o2\"}\n");
}

/* The check's state runs interpreted, the states that serve keep the JIT. */
static void test_check_jit_off_workers_on(void **state)
{
    (void)state;
    char path[512], err[2048] = "";
    script_cluster_t c = {.stock = 100, .per_user_limit = 1, .hosts = 1, .host_id = "h1"};
    fixture(path, sizeof(path), "jitprobe.lua",
            "local M = {}\njit.on()\n"
            "function M.allocate(e, c)\n"
            "  if c.stock == 1000 and jit.status() then error('the JIT is on in the check') end\n"
            "  return jit.status() and 7 or 3\n"
            "end\n" OK_ADMIT OK_ORDER "return M\n");
    if (script_check(path, &env, err, sizeof(err)) != 0)
        fail_msg("check: %s", err);
    script_t *s = open_ok(path);
    assert_int_equal(script_allocate(s, "ev1", &c), 7);
    script_close(s);
}

/* The sandbox: only the safe libraries, no way to load code from files or bytecode. */
static void test_sandbox(void **state)
{
    (void)state;
    char path[512];
    script_cluster_t c = {.stock = 100, .per_user_limit = 1, .hosts = 1, .host_id = "h1"};
    fixture(path, sizeof(path), "probe.lua",
            "local M = {}\n"
            "function M.allocate()\n"
            "  local bad = io or os or debug or package or require or ffi or dofile or loadfile\n"
            "    or load or loadstring\n"
            "  local good = string and table and math and bit and jit and coroutine and pairs\n"
            "  if bad then return 1 end\n"
            "  if not good then return 2 end\n"
            "  if host.id ~= 'h1' or host.hosts ~= 3 then return 3 end\n"
            "  if type(host.now_ms()) ~= 'number' or host.now_ms() < 1.6e12 then return 4 end\n"
            "  host.log('probe', 1, true, nil)\n"
            "  print('via print')\n"
            "  host.counter('probe_counter', 2.5)\n"
            "  return 42\n"
            "end\n" OK_ADMIT OK_ORDER "return M\n");
    script_t *s = open_ok(path);
    counter_total = 0;
    assert_int_equal(script_allocate(s, "ev1", &c), 42);
    assert_string_equal(last_counter, "probe_counter");
    assert_true(counter_total == 2.5);
    script_close(s);
}

/* ---- script errors at run time --------------------------------------------------------- */

static void test_runtime_errors(void **state)
{
    (void)state;
    char path[512], buf[64];
    script_verdict_t v;
    script_cluster_t c = {.stock = 100, .per_user_limit = 1, .hosts = 2, .host_id = "h1"};
    script_order_t o = {
        .order_id = "id1", .event = "ev1", .user = "u", .qty = 1, .host_id = "h1", .created_ms = 1};
    fixture(path, sizeof(path), "errors.lua",
            "local M = {}\n"
            "local n = 0\n"
            "function M.allocate(e, c)\n"
            "  if e == 'neg' then return -5 end\n"
            "  if e == 'big' then return 1e12 end\n"
            "  if e == 'frac' then return 2.9 end\n"
            "  if e == 'nan' then return 0/0 end\n"
            "  error('no quota for ' .. e)\n"
            "end\n"
            "function M.admit(req)\n"
            "  local u = req.user\n"
            "  if u == 'err' then error('admit failed') end\n"
            "  if u == 'obj' then error({}) end\n"
            "  if u == 'num' then return 403 end\n"
            "  if u == 'ok' then return false, 418, 'teapot!\"x', 'say \"hi\"\\\\ \\1' end\n"
            "  if u == 'nores' then return false, 451 end\n"
            "  if u == 'badreason' then return false, 400, {} end\n"
            "  if u == 'yes' then return true end\n"
            "  return nil, 499.5, 'x'\n"
            "end\n"
            "function M.order(o)\n"
            "  if o.user == 'long' then return string.rep('x', 100) end\n"
            "  if o.user == 'nil' then return nil end\n"
            "  error('order broke')\n"
            "end\n"
            "return M\n");
    script_t *s = open_ok(path);

    assert_int_equal(script_allocate(s, "err", &c), 100); /* error: the whole stock */
    assert_int_equal(script_allocate(s, "neg", &c), 0);
    assert_int_equal(script_allocate(s, "big", &c), 100);
    assert_int_equal(script_allocate(s, "frac", &c), 2);
    assert_int_equal(script_allocate(s, "nan", &c), 100);

    static const char *const errors[] = {"err", "obj", "num", "badreason", "other"};
    for (size_t i = 0; i < ARRAY_SIZE(errors); i++) {
        admit(s, errors[i], 1, &v);
        assert_int_equal(v.status, 500);
        assert_string_equal(v.reason, "policy_error");
        assert_string_equal(v.detail, "");
    }
    admit(s, "ok", 1, &v);
    assert_int_equal(v.status, 418);
    assert_string_equal(v.reason, "teapot__x");
    assert_string_equal(v.detail, "say _hi__ _");
    admit(s, "nores", 1, &v);
    assert_int_equal(v.status, 451);
    assert_string_equal(v.reason, "rejected");
    assert_string_equal(v.detail, "");
    admit(s, "yes", 1, &v);
    assert_int_equal(v.status, 0);
    assert_string_equal(v.reason, "");

    assert_int_equal(script_order(s, &o, buf, sizeof(buf)), -1);
    o.user = "long";
    assert_int_equal(script_order(s, &o, buf, sizeof(buf)), -1);
    o.user = "nil";
    assert_int_equal(script_order(s, &o, buf, sizeof(buf)), -1);

    /* Many errors in a row: logging is throttled, the state stays usable. */
    for (int i = 0; i < 1000; i++)
        admit(s, "err", 1, &v);
    admit(s, "yes", 1, &v);
    assert_int_equal(v.status, 0);
    script_close(s);
}

/* A script that puts a metatable on the reused request table cannot break the host. */
static void test_reused_table_metatable(void **state)
{
    (void)state;
    char path[512];
    script_verdict_t v;
    fixture(path, sizeof(path), "meta.lua",
            "local M = {}\n" OK_ALLOCATE OK_ORDER "function M.admit(req)\n"
            "  local ok = req.user == 'a'\n"
            "  rawset(req, 'user', nil)\n"
            "  setmetatable(req, {__newindex = function() error('no') end})\n"
            "  return ok, 403, 'not_a'\n"
            "end\nreturn M\n");
    script_t *s = open_ok(path);
    admit(s, "a", 1, &v);
    assert_int_equal(v.status, 0);
    admit(s, "b", 1, &v);
    assert_int_equal(v.status, 403);
    admit(s, "a", 1, &v);
    assert_int_equal(v.status, 0);
    script_close(s);
}

/* ---- examples -------------------------------------------------------------------------- */

static script_t *open_example(const char *name)
{
    char rel[256], path[1024];
    snprintf(rel, sizeof(rel), "examples/%s", name);
    source_path(path, sizeof(path), rel);
    return open_ok(path);
}

static void test_example_max4(void **state)
{
    (void)state;
    script_verdict_t v;
    script_t *s = open_example("max4_per_buyer.lua");
    assert_int_equal(script_settings(s)->max_qty, 4);
    admit(s, "m4_user", 5, &v);
    assert_int_equal(v.status, 400);
    /* 8 tickets of burst: two requests for 4, then the buyer waits; the default policy would
     * have let 10 requests through. */
    admit(s, "m4_user", 4, &v);
    assert_int_equal(v.status, 0);
    admit(s, "m4_user", 4, &v);
    assert_int_equal(v.status, 0);
    admit(s, "m4_user", 4, &v);
    assert_int_equal(v.status, 429);
    assert_string_equal(v.reason, "rate_limited");
    script_close(s);
}

static void test_example_opens_at(void **state)
{
    (void)state;
    script_verdict_t v;
    script_t *s = open_example("opens_at.lua");
    admit(s, "early_bird", 1, &v);
    assert_int_equal(v.status, 409);
    assert_string_equal(v.reason, "not_started");
    assert_string_equal(v.detail, "opens at 2030-01-01T09:00:00Z (1893488400000)");
    script_close(s);

    /* The same policy with an opening time in the past admits. */
    char src[1024];
    source_path(src, sizeof(src), "examples/opens_at.lua");
    size_t len;
    char *text = util_read_file(src, &len);
    assert_non_null(text);
    char *at = strstr(text, "local OPENS_AT_MS = 1893488400000");
    assert_non_null(at);
    memcpy(at + strlen("local OPENS_AT_MS = "), "1000000000000", 13); /* 2001-09-09T01:46:40Z */
    char path[512];
    fixture(path, sizeof(path), "opens_past.lua", text);
    free(text);
    s = open_ok(path);
    admit(s, "late_bird", 1, &v);
    assert_int_equal(v.status, 0);
    script_admit_req_t req = {.event = "ev1",
                              .user = "time_traveller",
                              .qty = 1,
                              .client = "10.0.0.1",
                              .now_ms = 999999999999};
    script_admit(s, &req, &v);
    assert_int_equal(v.status, 409);
    assert_string_equal(v.detail, "opens at 2001-09-09T01:46:40Z (1000000000000)");
    script_close(s);
}

static void test_example_suspicious(void **state)
{
    (void)state;
    script_verdict_t v;
    script_t *s = open_example("suspicious_ids.lua");
    static const char *const bots[] = {"bot_1", "BOTany", "1234567890123"};
    for (size_t i = 0; i < ARRAY_SIZE(bots); i++) {
        counter_total = 0;
        admit(s, bots[i], 1, &v);
        assert_int_equal(v.status, 0);
        admit(s, bots[i], 1, &v);
        assert_int_equal(v.status, 429);
        assert_string_equal(last_counter, "suspicious_limited");
        assert_true(counter_total == 1);
    }
    /* 12 digits, or digits with a letter, are ordinary buyers: burst 10. */
    static const char *const humans[] = {"123456789012", "1234567890123a", "robot"};
    for (size_t i = 0; i < ARRAY_SIZE(humans); i++) {
        for (int j = 0; j < 5; j++) {
            admit(s, humans[i], 1, &v);
            assert_int_equal(v.status, 0);
        }
    }
    script_close(s);
}

/* ---- reload ---------------------------------------------------------------------------- */

/* ---- the request's headers, HMAC, constant-time compare --------------------------------- */

/* A request's headers for req.header(): name/value pairs, names matched in any case. */
typedef struct fake_headers {
    const char *pairs[8][2];
    size_t n;
} fake_headers_t;

static const char *fake_header(const void *ctx, const char *name, size_t nlen, size_t *iter,
                               size_t *vlen)
{
    const fake_headers_t *h = ctx;
    for (size_t i = *iter; i < h->n; i++) {
        if (strlen(h->pairs[i][0]) == nlen && strncasecmp(h->pairs[i][0], name, nlen) == 0) {
            *iter = i + 1;
            *vlen = strlen(h->pairs[i][1]);
            return h->pairs[i][1];
        }
    }
    *iter = h->n;
    return NULL;
}

/* admit() reads the header the buyer id names, both call forms, and answers it as the detail;
 * order() calls a req.header kept from admit(): outside admit() it finds nothing. */
static const char HEADER_POLICY[] =
    "local M = {}\n"
    "local kept\n"
    "function M.allocate(e, c) return c.stock end\n"
    "function M.admit(req)\n"
    "  kept = req.header\n"
    "  if req.user == 'noarg' then return false, 400, 'x', req.header() end\n"
    "  local v, w = req.header(req.user), req:header(string.upper(req.user))\n"
    "  if v ~= w then error('the two call forms differ') end\n"
    "  if v == nil then return false, 404, 'none' end\n"
    "  return false, 400, 'value', v\n"
    "end\n"
    "function M.order(o) return '{\"v\":\"' .. tostring(kept and kept('x-code')) .. '\"}' end\n"
    "return M\n";

static void admit_with(script_t *s, const char *user, const fake_headers_t *h, script_verdict_t *v)
{
    script_admit_req_t req = {.event = "ev1",
                              .user = user,
                              .qty = 1,
                              .client = "10.0.0.1",
                              .now_ms = util_now_ms(),
                              .header = h ? fake_header : NULL,
                              .header_ctx = h};
    memset(v, 0x5a, sizeof(*v));
    script_admit(s, &req, v);
}

static void test_request_headers(void **state)
{
    (void)state;
    char path[512];
    fixture(path, sizeof(path), "headers.lua", HEADER_POLICY);
    script_t *s = open_ok(path);
    fake_headers_t h = {.pairs = {{"host", "example"},
                                  {"x-code", "abc.123"},
                                  {"x-two", "a"},
                                  {"x-empty", ""},
                                  {"X-Two", "b"}},
                        .n = 5};
    script_verdict_t v;
    admit_with(s, "x-code", &h, &v);
    assert_int_equal(v.status, 400);
    assert_string_equal(v.detail, "abc.123");
    admit_with(s, "X-CODE", &h, &v);
    assert_string_equal(v.detail, "abc.123");
    admit_with(s, "x-two", &h, &v); /* a repeated header: its lines joined, in order */
    assert_string_equal(v.detail, "a, b");
    admit_with(s, "x-empty", &h, &v);
    assert_int_equal(v.status, 400);
    assert_string_equal(v.detail, "");
    admit_with(s, "x-none", &h, &v);
    assert_int_equal(v.status, 404);
    admit_with(s, "x-code", NULL, &v); /* a request without headers */
    assert_int_equal(v.status, 404);
    admit_with(s, "noarg", &h, &v); /* a bad call is a policy error, not a crash */
    assert_int_equal(v.status, 500);
    assert_string_equal(v.reason, "policy_error");
    char out[256];
    script_order_t o = {.order_id = "1-1-ev1", .event = "ev1", .user = "u", .qty = 1};
    assert_true(script_order(s, &o, out, sizeof(out)) > 0);
    assert_string_equal(out, "{\"v\":\"nil\"}");
    script_close(s);
}

/* RFC 4231's HMAC-SHA-256 test cases (5, a truncated MAC, left out), in hex and raw form, and
 * host.ct_equal. The policy admits buyer "vectors" only when every check holds, else says
 * which failed. */
static const char HMAC_POLICY[] =
    "local M = {}\n"
    "function M.allocate(e, c) return c.stock end\n"
    "function M.order(o) return '{}' end\n"
    "local function unhex(h) return (h:gsub('..', function(x) return "
    "string.char(tonumber(x, 16)) end)) end\n"
    "local cases = {\n"
    "  {string.rep('\\11', 20), 'Hi There',\n"
    "   'b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7'},\n"
    "  {'Jefe', 'what do ya want for nothing?',\n"
    "   '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843'},\n"
    "  {string.rep('\\170', 20), string.rep('\\221', 50),\n"
    "   '773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe'},\n"
    "  {unhex('0102030405060708090a0b0c0d0e0f10111213141516171819'), string.rep('\\205', 50),\n"
    "   '82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b'},\n"
    "  {string.rep('\\170', 131), 'Test Using Larger Than Block-Size Key - Hash Key First',\n"
    "   '60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54'},\n"
    "  {string.rep('\\170', 131), 'This is a test using a larger than block-size key and a '\n"
    "   .. 'larger than block-size data. The key needs to be hashed before being used by the '\n"
    "   .. 'HMAC algorithm.',\n"
    "   '9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2'},\n"
    "}\n"
    "function M.admit(req)\n"
    "  for i, c in ipairs(cases) do\n"
    "    local hex = host.hmac_sha256(c[1], c[2])\n"
    "    if hex ~= c[3] then return false, 400, 'vector', i .. ' ' .. hex end\n"
    "    if host.hmac_sha256(c[1], c[2], 'hex') ~= hex then return false, 400, 'hexarg', i end\n"
    "    local raw = host.hmac_sha256(c[1], c[2], 'raw')\n"
    "    if #raw ~= 32 or raw ~= unhex(c[3]) then return false, 400, 'raw', i end\n"
    "    if not host.ct_equal(hex, c[3]) then return false, 400, 'ct', i end\n"
    "  end\n"
    "  if #host.hmac_sha256('', '') ~= 64 then return false, 400, 'empty' end\n"
    "  if host.ct_equal('abc', 'abd') or host.ct_equal('abc', 'ab') or\n"
    "     host.ct_equal('', 'a') or not host.ct_equal('', '') then\n"
    "    return false, 400, 'ct_equal'\n"
    "  end\n"
    "  if req.user == 'badfmt' then host.hmac_sha256('k', 'm', 'base64') end\n"
    "  if req.user == 'badarg' then host.ct_equal('a') end\n"
    "  return true\n"
    "end\n"
    "return M\n";

static void test_hmac_and_ct_equal(void **state)
{
    (void)state;
    char path[512];
    fixture(path, sizeof(path), "hmac.lua", HMAC_POLICY);
    script_t *s = open_ok(path);
    script_verdict_t v;
    admit(s, "vectors", 1, &v);
    if (v.status != 0)
        fail_msg("%d %s %s", v.status, v.reason, v.detail);
    admit(s, "badfmt", 1, &v);
    assert_int_equal(v.status, 500);
    admit(s, "badarg", 1, &v);
    assert_int_equal(v.status, 500);
    script_close(s);
}

static void test_reload_side_by_side(void **state)
{
    (void)state;
    char path[512];
    script_verdict_t v;
    script_cluster_t c = {.stock = 90, .per_user_limit = 1, .hosts = 3, .host_id = "h1"};
    fixture(path, sizeof(path), "v1.lua",
            "local M = {}\nfunction M.allocate() return 1 end\n" OK_ADMIT OK_ORDER "return M\n");
    script_t *old = open_ok(path);
    /* The operator edits the file; the new state loads while the old one keeps serving. */
    fixture(path, sizeof(path), "v1.lua",
            "local M = {}\nfunction M.allocate() return 2 end\n"
            "function M.admit() return false, 403, 'closed' end\n" OK_ORDER
            "M.max_qty = 2\nreturn M\n");
    script_t *fresh = open_ok(path);
    assert_int_equal(script_allocate(old, "e", &c), 1);
    assert_int_equal(script_allocate(fresh, "e", &c), 2);
    admit(old, "x", 1, &v);
    assert_int_equal(v.status, 0);
    admit(fresh, "x", 1, &v);
    assert_int_equal(v.status, 403);
    assert_int_equal(script_settings(old)->max_qty, 10);
    assert_int_equal(script_settings(fresh)->max_qty, 2);

    /* A broken edit is refused and leaves the running state alone. */
    script_t *broken = (script_t *)1;
    char err[1024];
    fixture(path, sizeof(path), "v1.lua", "return {}\n");
    assert_int_equal(script_open(&broken, path, &env, err, sizeof(err)), -1);
    assert_null(broken);
    script_close(old);
    assert_int_equal(script_allocate(fresh, "e", &c), 2);
    script_close(fresh);
    script_close(NULL);
}

int main(void)
{
    script_set_counter(count_lua);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_settings),
        cmocka_unit_test(test_default_allocate),
        cmocka_unit_test(test_default_admit_qty),
        cmocka_unit_test(test_default_admit_rate_limited),
        cmocka_unit_test(test_default_admit_client_limit),
        cmocka_unit_test(test_default_order),
        cmocka_unit_test(test_order_default_escapes),
        cmocka_unit_test(test_refuses_broken_scripts),
        cmocka_unit_test(test_check_catches_runtime_errors),
        cmocka_unit_test(test_check_accepts_good_policies),
        cmocka_unit_test(test_check_bounds_endless_loops),
        cmocka_unit_test(test_check_jit_off_workers_on),
        cmocka_unit_test(test_bounded_state_cuts_a_looping_order),
        cmocka_unit_test(test_sandbox),
        cmocka_unit_test(test_runtime_errors),
        cmocka_unit_test(test_reused_table_metatable),
        cmocka_unit_test(test_example_max4),
        cmocka_unit_test(test_example_opens_at),
        cmocka_unit_test(test_example_suspicious),
        cmocka_unit_test(test_reload_side_by_side),
        cmocka_unit_test(test_request_headers),
        cmocka_unit_test(test_hmac_and_ct_equal),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
