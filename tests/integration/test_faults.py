"""Fault suite, host side: three snatch-hosts (--hosts 3) on one Redis, one NATS with JetStream and
one subscriber; a crowd of distinct buyers, larger than the stock, spread round-robin over the
hosts; then one fault per case: kill -9 of one host, of two hosts (default policy vs a policy
that tolerates two dead hosts), SIGTERM under load, SIGHUP storms. Every case ends with the
invariant check of test_faults_common.verify and prints one FAULT line.

test_faults_infra.py holds the faults of Redis, NATS and the subscriber."""
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Suite, order_json, wait_until  # noqa: E402
from test_faults_common import (FaultStack, MultiCrowd, rss_kb, sanitized_build,  # noqa: E402
                                statuses, sold, verify, wait_sold)

suite = Suite()

STOCK = 600
BUYERS = 4000


def users(prefix, n=BUYERS):
    return ["%s%d" % (prefix, i) for i in range(n)]


def kill_mid_burst(n_kill, tolerate=None, label=None, assert_unsold=True, refill=True,
                   after=None):
    with FaultStack(hosts=3, threads=2, tolerate=tolerate, refill=refill) as st:
        ev = "k%d" % n_kill
        st.host.create_event(ev, STOCK)
        crowd = MultiCrowd(st.hosts, ev, users("b"), threads=12, stop_at=time.time() + 60).start()
        wait_sold(st, ev, STOCK // 10)
        for h in st.hosts[1:1 + n_kill]:
            h.kill9()
        answers = crowd.join()
        if after is not None:
            answers += after(st, ev)
        dead = [h.host_id for h in st.hosts[1:1 + n_kill]]
        s = sold(st, ev)
        quota = st.host.request("GET", "/v1/events/" + ev)[1]["local_quota"]
        note = "dead=%s local_quota=%d" % (",".join(dead), quota)
        return verify(st, ev, STOCK, answers, label or ("kill -9 %d of 3 hosts" % n_kill),
                      assert_unsold=assert_unsold, note=note), s


@suite.case
def kill9_one_host_mid_burst():
    # Default policy: ceil(stock / (hosts - 1)) per host, so two hosts cover the whole stock.
    kill_mid_burst(1)


@suite.case
def kill9_two_hosts_quota_alone_may_undersell():
    # tolerate=1 without refill: the quota alone cannot cover two dead hosts, the survivor's
    # quota is ceil(stock/2). Recorded, not asserted (how much is left depends on what the dead
    # sold before they died): this is what the policy's factor is for.
    res, _ = kill_mid_burst(2, label="kill -9 2 of 3 (tolerate=1, no refill)",
                            assert_unsold=False, refill=False)
    print("  tolerate=1, refill off, two dead hosts: %d of %d tickets unsold" % (
        res["unsold"], STOCK))


@suite.case
def kill9_two_hosts_default_policy_refills_and_sells_out():
    # The default policy (tolerate=1, refill on): once the survivor's quota is spent while Redis
    # still has stock, its next refresh tops it up; buyers who keep coming get the rest.
    def late_buyers(st, ev):
        time.sleep(1.2)  # at least two refreshes
        return MultiCrowd([st.hosts[0]], ev, users("late"), threads=8,
                          stop_at=time.time() + 60).start().join()

    kill_mid_burst(2, label="kill -9 2 of 3 (default: tolerate=1, refill)", after=late_buyers)


@suite.case
def kill9_two_hosts_tolerate2_sells_out():
    # allocate = stock / (hosts - 2) = the full stock per host: one survivor sells everything.
    kill_mid_burst(2, tolerate=2, label="kill -9 2 of 3 (tolerate=2)")


@suite.case
def kill9_two_hosts_then_operator_raises_tolerate_live():
    """The remedy for more dead hosts than the policy tolerates, without a restart: raise
    tolerate in policy.lua and SIGHUP the survivor; its quota is recomputed (the difference is
    added to what it has left) and the rest of the stock sells."""
    from test_faults_common import policy_with_tolerate
    with FaultStack(hosts=3, threads=2, tolerate=1, refill=False) as st:
        ev = "op"
        survivor = st.hosts[0]
        survivor.create_event(ev, STOCK)
        crowd = MultiCrowd(st.hosts, ev, users("o"), threads=12, stop_at=time.time() + 60).start()
        wait_sold(st, ev, STOCK // 10)
        for h in st.hosts[1:]:
            h.kill9()
        answers = crowd.join()
        stuck = STOCK - sold(st, ev)
        assert stuck > 0, "two dead hosts with tolerate=1 left nothing unsold: case tested nothing"
        policy_with_tolerate(st.policy, 2)
        survivor.hup()
        # The refresh (every 0.5 s) recomputes the quota with the new allocate().
        wait_until(lambda: survivor.request("GET", "/v1/events/" + ev)[1]["local_quota"] == STOCK,
                   10, what="quota recomputed after SIGHUP")
        more = MultiCrowd([survivor], ev, users("p"), threads=8,
                          stop_at=time.time() + 60).start().join()
        res = verify(st, ev, STOCK, answers + more, "kill -9 2 of 3, then tolerate=2 + SIGHUP",
                     note="unsold_before_reload=%d" % stuck)
        assert res["unsold"] == 0, res


def sigterm_case(label, acks_in_flight, strict=False):
    """SIGTERM one of three hosts mid-burst. With acks_in_flight, NATS is stopped (SIGSTOP) for
    a moment around the signal, so the victim holds requests that wait for their JetStream ack
    when it is told to stop: it must answer them (200 once NATS is back) before exiting 0."""
    extra = ("--ack-timeout-ms", "4000")
    with FaultStack(hosts=3, threads=2, host_extra=extra) as st:
        ev = "term"
        st.host.create_event(ev, STOCK)
        victim, vi = st.hosts[1], 1
        crowd = MultiCrowd(st.hosts, ev, users("t"), threads=12, stop_at=time.time() + 60).start()
        wait_sold(st, ev, STOCK // 10)
        if acks_in_flight:
            os.kill(st.nats.proc.pid, signal.SIGSTOP)
            time.sleep(0.3)
        t_term = time.time()
        victim.proc.send_signal(signal.SIGTERM)
        if acks_in_flight:
            time.sleep(0.5)
            os.kill(st.nats.proc.pid, signal.SIGCONT)
        try:
            rc = victim.proc.p.wait(20)
        except Exception:
            rc = None
        t_exit = time.time()
        answers = crowd.join()
        log = victim.proc.log_text()
        assert rc == 0, "SIGTERM: snatch-host exited %r\n%s" % (rc, log[-3000:])
        assert "SIGTERM: stopping" in log and "stopped" in log, log[-2000:]
        # Every order the stopped host sold was acknowledged before it exited: nothing of it is
        # left pending in Redis, and the subscriber has all of it without reconciliation.
        orders = st.redis.cmd("HGETALL", "{%s}:orders" % ev)
        mine = {k for k, v in zip(orders[::2], orders[1::2])
                if json.loads(order_json(k, v))["host"] == victim.host_id}
        assert mine, "the stopped host sold nothing"
        pending = set(st.redis.cmd("HKEYS", "{%s}:pending" % ev))

        def persisted():
            rows = {r[0] for r in st.sub.query("SELECT order_id FROM orders WHERE event=?", (ev,))}
            return mine <= rows

        wait_until(persisted, 30, what="the stopped host's orders in SQLite")
        unacked = mine & pending
        # Requests the victim held when the signal came: answered, and (NATS back) with 200.
        held = [a for a in answers if a.first == vi and a.t0 < t_term < a.t1]
        cut = sum(a.cut for a in answers)
        print("  SIGTERM at %.3f, victim exited at %.3f" % (t_term, t_exit))
        note = "victim_sold=%d held_at_signal=%d(%s) cut_then_failover=%d exit_after=%.2fs" % (
            len(mine), len(held), ",".join(sorted({str(a.status) for a in held})) or "-", cut,
            t_exit - t_term)
        res = verify(st, ev, STOCK, answers, label, note=note)
        assert not unacked, "%d orders of the stopped host never acknowledged" % len(unacked)
        # A request cut by the shutdown after Redis sold it is a ticket nobody was told of.
        # KNOWN BUG 2 (test_faults_bugs.py): answers made in the drain's last loop turn are
        # dropped. Reported here, asserted there (strict), so ctest is not blocked.
        if res["silent"]:
            print("  KNOWN BUG 2: %d answered-and-acked requests never reached the client" %
                  res["silent"])
        if strict:
            assert res["silent"] == 0, "in-flight requests dropped by the shutdown: " + note
        if acks_in_flight:
            assert held, "no request was waiting for its ack at SIGTERM: the case tested nothing"
            if strict:
                assert all(a.status == 200 and a.host == vi for a in held), [
                    (a.status, a.body, a.why) for a in held]


@suite.case
def sigterm_drains_in_flight_then_exits_0():
    sigterm_case("SIGTERM 1 of 3 hosts", acks_in_flight=False)


@suite.case
def sigterm_waits_for_acks_in_flight():
    sigterm_case("SIGTERM, acks in flight", acks_in_flight=True)


BROKEN = "return { allocate = function( end }\n"


def write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@suite.case
def sighup_storm_no_failed_request_no_leak():
    with FaultStack(hosts=1, threads=2, tolerate=0) as st:
        h = st.host
        good_src = open(st.policy).read()
        ev = "hup"
        STOCK_BIG = 200000
        h.create_event(ev, STOCK_BIG)
        errors = []

        def storm(n, pace):
            for i in range(n):
                write(st.policy, BROKEN if i % 3 == 2 else good_src)
                h.hup()
                time.sleep(pace)
            write(st.policy, good_src)
            h.hup()

        # Warm up: load and some reloads, so allocator pools and JIT traces settle.
        crowd = MultiCrowd([h], ev, users("w", 3000), threads=8, stop_at=time.time() + 20).start()
        storm(20, 0.02)
        warm = crowd.join()
        time.sleep(0.5)
        rss0 = rss_kb(h.proc.pid)
        crowd = MultiCrowd([h], ev, users("s", 12000), threads=8, stop_at=time.time() + 30).start()
        storm(200, 0.01)
        answers = crowd.join()
        time.sleep(0.5)
        rss1 = rss_kb(h.proc.pid)
        assert h.proc.alive(), h.proc.log_text()[-3000:]
        counts = statuses(answers)
        if set(counts) != {200}:
            errors.append("failed requests during the storm: %r" % counts)
        assert set(statuses(warm)) == {200}, statuses(warm)
        _, m = h.request("GET", "/metrics")
        reloads = {}
        for line in m.splitlines():
            if line.startswith("snatch_policy_reloads_total{"):
                reloads[line.split('"')[1]] = int(float(line.split()[-1]))
        growth = rss1 - rss0
        note = "reloads_ok=%d reloads_refused=%d rss_kb=%d->%d" % (
            reloads.get("ok", 0), reloads.get("error", 0), rss0, rss1)
        verify(st, ev, STOCK_BIG, warm + answers, "SIGHUP storm (220, 1/3 broken)",
               expect_sellout=False, note=note)
        assert reloads.get("ok", 0) > 0 and reloads.get("error", 0) > 0, reloads
        assert not errors, errors
        # 220 reloads x 2 threads, each a fresh lua_State: a leak of one state per reload is
        # tens of MB. 16 MB is room for allocator noise, not for a leak.
        if sanitized_build():
            print("  ASan build: RSS growth (%d kB) not checked, LeakSanitizer is" % growth)
            return
        assert growth < 16 * 1024, "RSS grew by %d kB over 200 reloads (%s)" % (growth, note)


if __name__ == "__main__":
    suite.run()
