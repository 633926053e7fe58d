"""Live policy reload: SIGHUP under load drops nothing and puts the new rule in force; a broken
script is refused and the old one keeps serving; snatch-host --test tells them apart."""
import hashlib
import os
import re
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Stack, Suite, binary, wait_until  # noqa: E402
from loadgen import crowd, by_status  # noqa: E402

suite = Suite()

# A policy whose admit() refuses buyers whose id starts with BLOCKED (403 blocked).
POLICY = """
local BLOCKED = %r
return {
  allocate = function(event, c) return c.stock end,
  admit = function(req)
    if BLOCKED ~= "" and req.user:sub(1, #BLOCKED) == BLOCKED then
      return false, 403, "blocked", "buyers named " .. BLOCKED .. "* are refused"
    end
    return true
  end,
  order = function(o)
    return string.format('{"order_id":"%%s","event":"%%s","user":"%%s","qty":%%d,"host":"%%s","created_at":%%d}',
      o.order_id, o.event, o.user, o.qty, o.host, o.created_at)
  end,
}
"""

BROKEN = "return { allocate = function( end }\n"


def write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # operators should swap files atomically; so do we


def policy_path(st):
    return os.path.join(st.tmp.path, "policy.lua")


def reloads_ok(h):
    _, m = h.request("GET", "/metrics")
    ok = [l for l in m.splitlines() if l.startswith('snatch_policy_reloads_total{result="ok"} ')]
    assert ok, m[-2000:]
    return int(float(ok[0].split()[-1]))


class ReloadStack(Stack):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.policy = os.path.join(self.tmp.path, "policy.lua")
        write(self.policy, POLICY % "vip")


@suite.case
def test_flag_validates():
    with ReloadStack(subscriber=False) as st:
        good = subprocess.run([binary("snatch-host"), "--test", st.policy], capture_output=True)
        assert good.returncode == 0, good
        assert b"deduct script" in good.stdout and b"order script" in good.stdout, good
        bad = os.path.join(st.tmp.path, "broken.lua")
        write(bad, BROKEN)
        p = subprocess.run([binary("snatch-host"), "--test", bad], capture_output=True)
        assert p.returncode != 0 and b"broken.lua" in p.stderr, p
        # An order script that does not compile stops the start, before any connection.
        p = subprocess.run([binary("snatch-host"), "--order-script", bad, st.policy],
                           capture_output=True, timeout=30)
        assert p.returncode != 0 and b"order script refused" in p.stderr, p
        # --test compiles both Redis scripts too, naming the file and line of the error; a
        # deduct script that does not compile stops the start as well (Redis would refuse it at
        # every connection while every sale answered 503).
        for flag, what in (("--deduct", b"deduct script refused"),
                           ("--order-script", b"order script refused")):
            p = subprocess.run([binary("snatch-host"), flag, bad, "--test", st.policy],
                               capture_output=True, timeout=30)
            assert p.returncode == 1 and what in p.stderr and b"broken.lua:1:" in p.stderr, p
        p = subprocess.run([binary("snatch-host"), "--deduct", bad, st.policy],
                           capture_output=True, timeout=30)
        assert p.returncode != 0 and b"deduct script refused" in p.stderr, p


@suite.case
def hup_under_load_switches_rule_without_failures():
    with ReloadStack(threads=2) as st:
        h = st.host
        h.create_event("r", 100000)
        s, b = h.snatch("r", "vip-1")
        assert s == 403 and b["error"] == "blocked", (s, b)
        out = {}
        stop = threading.Event()

        def load():
            # Bounded even if the reloads below hang: the crowd stops by itself after 120 s.
            out["res"] = crowd(h.port, "r", ["load%d" % i for i in range(200000)], threads=8,
                               stop_at=time.time() + 120, stop=stop)

        t = threading.Thread(target=load)
        t.start()
        try:
            time.sleep(0.5)
            done = reloads_ok(h)
            # Signals sent in quick succession coalesce (one pending SIGHUP), and so do the
            # reloads posted to a busy worker: the next SIGHUP goes only once every thread took
            # the previous one, so each of the 7 is a reload of its own.
            for i in range(7):
                write(st.policy, POLICY % ("new" if i % 2 == 0 else "vip"))
                h.hup()
                done += st.threads
                wait_until(lambda: reloads_ok(h) >= done, 30, what="reload %d on every thread" % i)
            assert t.is_alive(), "the load ended before the reloads: they were not under load"
        finally:
            stop.set()
            t.join()
        counts = by_status(out["res"])
        assert set(counts) == {200}, counts  # no failed request during 7 reloads
        assert counts[200] > 100, counts
        s, b = h.snatch("r", "new-guy")  # every thread reloaded (waited above): no retry
        assert s == 403 and b["error"] == "blocked", (s, b)
        s, b = h.snatch("r", "vip-2")
        assert s == 200, (s, b)
        assert reloads_ok(h) >= 7 * st.threads  # every thread reloaded every time


@suite.case
def broken_policy_is_refused_old_keeps_serving():
    with ReloadStack(threads=2) as st:
        h = st.host
        h.create_event("b", 1000)
        write(st.policy, BROKEN)
        h.hup()
        time.sleep(0.5)
        assert h.proc.alive()
        s, b = h.snatch("b", "vip-1")
        assert s == 403, (s, b)  # the old rule
        s, b = h.snatch("b", "plain-1")
        assert s == 200, (s, b)
        _, m = h.request("GET", "/metrics")
        err = [l for l in m.splitlines() if l.startswith('snatch_policy_reloads_total{result="error"}')]
        assert err and int(float(err[0].split()[-1])) >= 1, err
        assert "refused" in h.proc.log_text()
        # A runtime error at validation (admit is not a function) is refused too.
        write(st.policy, "return { allocate = function() return 1 end, admit = 5, order = function() return '{}' end }")
        h.hup()
        time.sleep(0.5)
        s, b = h.snatch("b", "vip-2")
        assert s == 403, (s, b)
        # And a good one after that is taken.
        write(st.policy, POLICY % "")
        h.hup()
        wait_until(lambda: h.snatch("b", "vip-3")[0] == 200, 5, what="good policy after broken")


# Loops where the check runs it: for the check's sample buyer in admit(), and at load. Served,
# the first would wedge every loop thread at the first request.
LOOPING_ADMIT = POLICY.replace("admit = function(req)\n",
                               "admit = function(req)\n    while req.user == 'check_user' do end\n")
LOOPING_CHUNK = "while true do end\n" + POLICY % ""
RAN_PAST = re.compile(r"ran past \d+ Lua instructions in the check \(an endless loop\?, at "
                      r"\S*policy\.lua:\d+\)")


@suite.case
def endless_loop_policy_is_refused_host_still_reloads_and_stops():
    """A policy that loops in the check is refused on SIGHUP like a broken one, within the
    check's instruction budget: the main thread still takes the next SIGHUP and SIGTERM (without
    the budget it never returned: no more reloads, no stop). At start and with --test it is
    refused (exit 1), and snatch-reconcile refuses it too (exit 2)."""
    assert LOOPING_ADMIT != POLICY % "vip"
    with ReloadStack(threads=2) as st:
        h = st.host
        h.create_event("loop", 1000)
        errors = 0
        for n, text in enumerate((LOOPING_ADMIT % "vip", LOOPING_CHUNK), 1):
            write(st.policy, text)
            h.hup()
            wait_until(lambda: len(RAN_PAST.findall(h.proc.log_text())) == n, 20,
                       what="the looping policy %d refused" % n)
            log = h.proc.log_text()
            assert "refused, old policy keeps serving" in log, log[-2000:]
            assert ("%s ran past" % ("admit()" if n == 1 else "the top-level chunk")) in log, log[-2000:]
            assert h.snatch("loop", "vip-%d" % n)[0] == 403  # the old rule
            assert h.snatch("loop", "plain-%d" % n)[0] == 200  # still selling
        _, m = h.request("GET", "/metrics")
        err = [l for l in m.splitlines() if l.startswith('snatch_policy_reloads_total{result="error"}')]
        assert err and int(float(err[0].split()[-1])) == 2, err
        # The main thread still reloads: a good policy is taken.
        write(st.policy, POLICY % "")
        h.hup()
        wait_until(lambda: h.snatch("loop", "vip-3")[0] == 200, 10, what="the good policy after the loops")
        # The command-line paths refuse it in bounded time, naming the step.
        for text, step in ((LOOPING_ADMIT % "vip", b"admit()"), (LOOPING_CHUNK, b"the top-level chunk")):
            bad = os.path.join(st.tmp.path, "looping-policy.lua")
            write(bad, text)
            for argv in ([binary("snatch-host"), "--test", bad], [binary("snatch-host"), bad]):
                p = subprocess.run(argv, capture_output=True, timeout=60)
                assert p.returncode == 1 and RAN_PAST.search(p.stderr.decode()), p
                assert step + b" ran past" in p.stderr, p
            rc, out = st.reconcile("--policy", bad, "--dry-run", timeout=60)
            assert rc == 2 and RAN_PAST.search(out), (rc, out)
        # SIGTERM is handled: a clean stop (status 0), not the harness's kill -9 after 15 s.
        assert h.stop() == 0


@suite.case
def broken_deduct_script_is_refused_by_redis_old_keeps_selling():
    import shutil
    from harness import SOURCE_DIR
    st = ReloadStack(threads=2)
    deduct = os.path.join(st.tmp.path, "deduct.lua")
    shutil.copy(os.path.join(SOURCE_DIR, "lua", "deduct.lua"), deduct)
    st.host_extra = ("--deduct", deduct)
    with st:
        h = st.host
        h.create_event("d", 100)
        assert h.snatch("d", "one")[0] == 200
        write(deduct, "this is not lua (\n")
        h.hup()
        wait_until(lambda: "Redis refused the new deduct script" in h.proc.log_text(), 5,
                   what="the refusal in the log")
        s, b = h.snatch("d", "two")
        assert s == 200, (s, b)  # the old script still sells
        # A good new script (here: the same with a comment) is taken and sells too.
        with open(os.path.join(SOURCE_DIR, "lua", "deduct.lua")) as f:
            write(deduct, "-- reloaded\n" + f.read())
        h.hup()
        time.sleep(0.5)
        assert h.snatch("d", "three")[0] == 200
        assert st.redis.cmd("HGET", "{d}:meta", "sold") == "3"


def sha1(text):
    return hashlib.sha1(text.encode()).hexdigest()


def script_known(st, text):
    return st.redis.cmd("SCRIPT", "EXISTS", sha1(text)) == [1]


@suite.case
def order_script_is_reloaded_and_a_broken_one_refused():
    from harness import ADMIN_TOKEN, SOURCE_DIR
    st = ReloadStack(threads=2)
    order = os.path.join(st.tmp.path, "order.lua")
    with open(os.path.join(SOURCE_DIR, "lua", "order.lua")) as f:
        orig = f.read()
    write(order, orig)
    # Worker 0's sweeper runs order.lua for every event at every tick, besides the look-ups.
    st.host_extra = ("--order-script", order, "--expire-interval-ms", "100")
    with st:
        h = st.host
        h.create_event("o", 100)
        s, b = h.snatch("o", "plain-1")
        assert s == 200, (s, b)
        oid = b["order_id"]

        def look_ups():
            # New connections: both threads get some (SO_REUSEPORT), and the sweeper ticks. As
            # the admin: a buyer's reads are rate-limited below this.
            for _ in range(12):
                s, g = h.request("GET", "/v1/orders/" + oid,
                                 headers={"Authorization": "Bearer " + ADMIN_TOKEN})
                assert s == 200 and g["order_id"] == oid, (s, g)
            time.sleep(0.3)

        def hup_and_wait():
            done = reloads_ok(h) + st.threads
            h.hup()
            wait_until(lambda: reloads_ok(h) >= done, 10, what="reload on every thread")

        look_ups()
        assert script_known(st, orig)
        # (1) A new script (here: the same with a comment, so a SHA1 of its own). Once Redis
        # forgot every script, only what the threads now run comes back (NOSCRIPT -> EVAL).
        new = "-- reloaded\n" + orig
        write(order, new)
        hup_and_wait()
        st.redis.cmd("SCRIPT", "FLUSH")
        look_ups()
        assert script_known(st, new), "the host does not run the new order script"
        assert not script_known(st, orig), "a thread still runs the old order script"
        assert "(new, serving sha1 %s)" % sha1(new) in h.proc.log_text()
        # (2) A script that does not compile is refused; the previous one keeps serving.
        write(order, "local x = (\n" + orig)
        hup_and_wait()
        refused = re.compile(r"order script refused, the old one keeps serving: %s:\d+: "
                             % re.escape(order))
        wait_until(lambda: refused.search(h.proc.log_text()), 5,
                   what="the refusal in the log, with the line")
        st.redis.cmd("SCRIPT", "FLUSH")
        look_ups()
        assert script_known(st, new) and not script_known(st, orig)
        assert h.proc.alive()
        assert h.snatch("o", "plain-2")[0] == 200


def host_log_count(h, text):
    return h.proc.log_text().count(text)


@suite.case
def scripts_reloaded_while_redis_is_down_serve_after_the_reconnect():
    """A SIGHUP while Redis is down: the new deduct script waits (pending) and is what every
    thread loads once Redis is back, without a second SIGHUP; so is the new order script."""
    import shutil
    from harness import ADMIN_TOKEN, SOURCE_DIR
    # AOF: the restarted Redis still has the event (and, like any restarted Redis, no script).
    st = ReloadStack(threads=2, subscriber=False, aof_always=True)
    deduct = os.path.join(st.tmp.path, "deduct.lua")
    order = os.path.join(st.tmp.path, "order.lua")
    shutil.copy(os.path.join(SOURCE_DIR, "lua", "deduct.lua"), deduct)
    shutil.copy(os.path.join(SOURCE_DIR, "lua", "order.lua"), order)
    with open(deduct) as f:
        old_deduct = f.read()
    with open(order) as f:
        old_order = f.read()
    st.host_extra = ("--deduct", deduct, "--order-script", order)
    with st:
        h = st.host
        h.create_event("w", 100000)
        s, b = h.snatch("w", "before")
        assert s == 200, (s, b)
        oid = b["order_id"]
        assert script_known(st, old_deduct)
        st.redis.stop()
        wait_until(lambda: host_log_count(h, "redis: connection to") >= st.threads, 10,
                   what="every thread's connection lost")
        assert h.snatch("w", "down")[0] == 503
        # Distinguishable by their SHA1 (a comment line): what Redis knows after its restart is
        # only what the host loaded into it.
        new_deduct = "-- reloaded while Redis was down\n" + old_deduct
        new_order = "-- reloaded while Redis was down\n" + old_order
        write(deduct, new_deduct)
        write(order, new_order)
        done = reloads_ok(h) + st.threads
        h.hup()
        wait_until(lambda: reloads_ok(h) >= done, 10, what="the reload on every thread")
        time.sleep(0.3)  # a few refused reconnections with the reload taken
        st.redis.start()
        # Each thread sells again once its connection has a script loaded (one try at most every
        # 2 s while Redis was away): 8 buyers in a row sold, on new connections (SO_REUSEPORT
        # spreads them over both threads).
        buyers = iter("after-%d" % i for i in range(100000))
        wait_until(lambda: all(h.snatch("w", next(buyers))[0] == 200 for _ in range(8)), 15,
                   what="sales again after the restart")
        assert script_known(st, new_deduct), "the new deduct script is not in Redis"
        assert not script_known(st, old_deduct), "a thread still serves the old deduct script"
        s, g = h.request("GET", "/v1/orders/" + oid,
                         headers={"Authorization": "Bearer " + ADMIN_TOKEN})
        assert s == 200 and g["order_id"] == oid, (s, g)
        assert script_known(st, new_order) and not script_known(st, old_order)
        # Observable: pending at the reload, then loaded, on each thread; counted on the way.
        wait_until(lambda: host_log_count(h, "deduct script loaded by Redis") == st.threads, 10,
                   what="each thread's 'loaded' line")
        assert host_log_count(h, "deduct script pending") == st.threads, h.proc.log_text()[-3000:]
        assert "Redis refused the new deduct script" not in h.proc.log_text()
        _, m = h.request("GET", "/metrics")
        assert "\nsnatch_deduct_script_pending 0\n" in m, m[-3000:]


@suite.case
def deduct_script_reloaded_while_a_cluster_master_is_down():
    """On a Redis Cluster: a SIGHUP while the event's master is killed. The other masters take
    the new deduct script at once; the promoted replica gets it before its first sale, and the
    reload ends accepted (the dead master has no say)."""
    import shutil
    from harness import SOURCE_DIR
    st = ReloadStack(threads=2, subscriber=False, redis_cluster={})
    deduct = os.path.join(st.tmp.path, "deduct.lua")
    shutil.copy(os.path.join(SOURCE_DIR, "lua", "deduct.lua"), deduct)
    with open(deduct) as f:
        old = f.read()
    st.host_extra = ("--deduct", deduct)
    with st:
        h = st.host
        ev = st.redis.keys_for_masters("rl")[0]
        h.create_event(ev, 100000)
        assert h.snatch(ev, "before")[0] == 200
        m = st.redis.master_for_key("{%s}:meta" % ev)
        others = [n for n in st.redis.masters() if n.port != m.port]
        # The host's seed connections loaded the old script on every node, replicas too: forget
        # it there, so that what the promoted replica knows is what the host loaded since.
        for r in st.redis.replicas_of(m):
            r.cmd("SCRIPT", "FLUSH")
        m.kill9()
        lost = "redis: connection to 127.0.0.1:%d lost" % m.port
        wait_until(lambda: host_log_count(h, lost) >= st.threads, 10,
                   what="every thread's connection to the killed master lost")
        new = "-- reloaded while a master was down\n" + old
        write(deduct, new)
        done = reloads_ok(h) + st.threads
        h.hup()
        wait_until(lambda: reloads_ok(h) >= done, 10, what="the reload on every thread")
        wait_until(lambda: all(n.cmd("SCRIPT", "EXISTS", sha1(new)) == [1] for n in others), 10,
                   what="the live masters took the new script")
        # Failover, then the event's repair on its new master: sales resume (202 too: the
        # promoted replica has no replica of its own for WAIT).
        buyers = iter("after-%d" % i for i in range(100000))
        wait_until(lambda: all(h.snatch(ev, next(buyers))[0] in (200, 202) for _ in range(8)),
                   30, step=0.2, what="sales again on the promoted replica")
        nm = st.redis.master_for_key("{%s}:meta" % ev)
        assert nm.port != m.port
        assert nm.cmd("SCRIPT", "EXISTS", sha1(new)) == [1], "the promoted master lacks the new script"
        assert nm.cmd("SCRIPT", "EXISTS", sha1(old)) == [0], "the promoted master got the old script"
        assert host_log_count(h, "deduct script pending") == st.threads
        wait_until(lambda: host_log_count(h, "deduct script loaded by Redis") == st.threads, 10,
                   what="each thread's 'loaded' line (the dead master has no say)")
        assert "Redis refused the new deduct script" not in h.proc.log_text()


if __name__ == "__main__":
    suite.run()
