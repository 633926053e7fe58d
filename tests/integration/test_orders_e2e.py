"""Order pipeline end to end through snatch-host: a 200 is a row; an order whose JetStream ack
never came (NATS stalled, host killed between deduction and ack) is republished by the host's
own reconciliation thread and lands exactly once; NATS down means 503 and nothing deducted."""
import json
import os
import signal
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Stack, Suite, wait_until  # noqa: E402

suite = Suite()
FAST_RECONCILE = ("--reconcile-interval-ms", "200", "--reconcile-after-ms", "1000",
                  "--ack-timeout-ms", "400")


def pending(st, event):
    return st.redis.cmd("HLEN", "{%s}:pending" % event)


def rows_for(st, order_id):
    return st.sub.query("SELECT count(*) FROM orders WHERE order_id=?", (order_id,))[0][0]


@suite.case
def stalled_nats_gives_202_then_the_order_lands_once():
    with Stack(hosts=1, threads=2, host_extra=FAST_RECONCILE) as st:
        st.host.create_event("stall", 10)
        s, b = st.host.snatch("stall", "before")
        assert s == 200, (s, b)
        # Acknowledged ids leave {E}:pending in batches after the 200 (pending.c): let this one
        # go, so that the count below is the stalled order's alone.
        wait_until(lambda: pending(st, "stall") == 0, 30, what="the acknowledged id cleared")
        st.nats.proc.sigstop()  # returns once it took effect: no ack can slip out after it
        try:
            s, b = st.host.snatch("stall", "during")
            assert s == 202 and b["status"] == "pending" and b["user"] == "during", (s, b)
            oid = b["order_id"]
            assert pending(st, "stall") == 1
        finally:
            st.nats.proc.send_signal(signal.SIGCONT)
        wait_until(lambda: rows_for(st, oid) == 1, 30, what="the pending order in SQLite")
        wait_until(lambda: pending(st, "stall") == 0, 30, what="pending entry cleared")
        time.sleep(1.5)  # another reconciliation pass must not add anything
        assert rows_for(st, oid) == 1
        assert st.sub.rows("stall") == 2
        s, lst = st.host.request("GET", "/v1/events/stall/users/during/orders",
                                  headers={"X-User-Id": "during"})
        assert [o["order_id"] for o in lst["orders"]] == [oid], lst


@suite.case
def stalled_nats_leaves_one_entry_per_batch_and_every_order_lands_once():
    """Buyers deducted in one batch while JetStream acknowledges nothing: every one gets 202, their
    batch leaves one {E}:pending entry naming all of them. nats-server is then killed with their
    messages unread (they never reach the stream) and restarted: the reconciler republishes each
    order of the entry, SQLite holds each once and the entry goes."""
    with Stack(hosts=1, threads=1, host_extra=FAST_RECONCILE) as st:
        st.host.create_event("grp", 50)
        N = 12
        out = {}

        def buy(i):
            out[i] = st.host.snatch("grp", "g%d" % i)

        st.nats.proc.sigstop()
        killed = False
        try:
            # Redis stopped (well inside --redis-timeout-ms): the first buyer's batch waits for
            # it, the others queue behind it and leave together as the next batch.
            st.redis.proc.sigstop()
            try:
                crowd = [threading.Thread(target=buy, args=(i,)) for i in range(N)]
                for t in crowd:
                    t.start()
                time.sleep(0.3)
            finally:
                st.redis.proc.send_signal(signal.SIGCONT)
            for t in crowd:
                t.join(30)
            assert sorted(r[0] for r in out.values()) == [202] * N, out
            ids = sorted(r[1]["order_id"] for r in out.values())
            entries = st.redis.cmd("HGETALL", "{grp}:pending")
            entries = dict(zip(entries[::2], entries[1::2]))
            assert sum(int(v.split()[1]) for v in entries.values()) == N, entries
            assert len(entries) < N, entries  # at least one entry names several orders
            assert set(entries) <= set(ids), (entries, ids)
            st.nats.kill9()  # the messages it had not read die with it
            killed = True
        finally:
            if not killed:
                st.nats.proc.send_signal(signal.SIGCONT)
        st.nats.start()
        wait_until(lambda: st.sub.rows("grp") == N, 30, what="every order in SQLite")
        wait_until(lambda: pending(st, "grp") == 0, 30, what="the entries cleared")
        time.sleep(1.5)  # another reconciliation pass must not add anything
        stored = sorted(r[0] for r in st.sub.query(
            "SELECT order_id FROM orders WHERE event='grp'"))
        assert stored == ids, (stored, ids)


@suite.case
def host_killed_between_deduction_and_ack_is_republished_by_another_host():
    with Stack(hosts=2, threads=1, host_extra=FAST_RECONCILE) as st:
        a, b = st.hosts
        a.create_event("kill", 10)
        st.nats.proc.sigstop()
        out = {}

        def buy():
            try:
                out["r"] = a.snatch("kill", "victim", )
            except Exception as e:  # the host dies under the request
                out["r"] = ("dead", str(e))

        t = threading.Thread(target=buy)
        t.start()
        wait_until(lambda: pending(st, "kill") == 1, 30, what="the deduction")
        a.kill9()  # deducted in Redis, ack never received
        t.join()
        st.nats.proc.send_signal(signal.SIGCONT)
        oid = st.redis.cmd("HKEYS", "{kill}:orders")[0]
        wait_until(lambda: rows_for(st, oid) == 1, 30, what="the orphaned order in SQLite")
        wait_until(lambda: pending(st, "kill") == 0, 30, what="pending entry cleared")
        assert st.sub.rows("kill") == 1
        assert int(st.redis.cmd("HGET", "{kill}:meta", "sold")) == 1
        # The dead host never saw the ack, so only a reconciler can have emptied {kill}:pending
        # (checked above): the surviving host's thread republished it and says so.
        assert "republished" in b.proc.log_text(), b.proc.log_text()[-2000:]


@suite.case
def nats_down_fails_closed_and_recovers():
    with Stack(hosts=1, threads=2) as st:
        st.host.create_event("nd", 100)
        assert st.host.snatch("nd", "a1")[0] == 200
        st.nats.stop()
        wait_until(lambda: st.host.request("GET", "/healthz")[0] == 503, 30, what="health degraded")
        sold_before = st.redis.cmd("HGET", "{nd}:meta", "sold")
        for i in range(20):
            s, b = st.host.snatch("nd", "down%d" % i)
            assert s == 503 and b["error"] == "unavailable", (s, b)
        assert st.redis.cmd("HGET", "{nd}:meta", "sold") == sold_before, "deducted while NATS down"
        st.nats.start()
        wait_until(lambda: st.host.snatch("nd", "back")[0] == 200, 30, what="recovery")
        wait_until(lambda: st.sub.rows("nd") == 2, 30, what="rows after recovery")


# A policy whose order() adds a field: whichever path delivers the order (the host's publish or a
# republish by reconciliation), the stored payload is the policy's.
POLICY_SRC = os.path.join(os.environ.get("SNATCH_SOURCE_DIR", os.path.join(
    os.path.dirname(__file__), "..", "..")), "lua", "policy.lua")
DEDUCT = ("--deduct", os.path.join(os.path.dirname(POLICY_SRC), "deduct.lua"))
# The default policy defines no order() (the host's built-in payload): this one adds it.
EXTRA_ORDER = """
function M.order(o)
  return string.format('{"order_id":"%s","event":"%s","user":"%s","qty":%d,"host":"%s",' ..
    '"created_at":%d,"channel":"web"}', o.order_id, o.event, o.user, o.qty, o.host, o.created_at)
end

return M
"""


def extra_field_policy(dirpath):
    with open(POLICY_SRC) as f:
        text = f.read()
    assert "function M.order" not in text and text.rstrip().endswith("return M"), \
        "lua/policy.lua changed: update this test"
    path = os.path.join(dirpath, "extra_policy.lua")
    with open(path, "w") as f:
        f.write(text.rstrip()[:-len("return M")] + EXTRA_ORDER)
    return path


def payload_of(st, order_id):
    rows = st.sub.query("SELECT payload FROM orders WHERE order_id=?", (order_id,))
    return json.loads(rows[0][0]) if rows else None


def orphan_an_order(st, host, event):
    """Host deducts with NATS stalled, then dies before the ack; NATS dies too, with the publish
    that may sit unread in its socket buffer: the order exists only in Redis ({E}:orders and
    {E}:pending), and only a republish can deliver it. Returns its id."""
    host.create_event(event, 10)
    st.nats.proc.sigstop()
    out = {}

    def buy():
        try:
            out["r"] = host.snatch(event, "victim")
        except Exception as e:  # the host dies under the request
            out["r"] = ("dead", str(e))

    t = threading.Thread(target=buy)
    t.start()
    try:
        wait_until(lambda: pending(st, event) == 1, 30, what="the deduction")
        host.kill9()
    finally:
        t.join()
        st.nats.kill9()
        st.nats.start()
    return st.redis.cmd("HKEYS", "{%s}:orders" % event)[0]


def metric(st, sample):
    status, text = st.host.request("GET", "/metrics")
    assert status == 200, (status, text)
    for line in text.splitlines():
        f = line.split()
        if len(f) == 2 and f[0] == sample:
            return float(f[1])
    return None


@suite.case
def malformed_pending_entries_are_logged_once_counted_and_left():
    """{E}:pending entries in neither form (written by hand, or by a bug) are left for an
    operator: the host's reconciler logs each once, not at every pass, and counts them in
    /metrics at every pass."""
    with Stack(hosts=1, threads=2, host_extra=("--reconcile-interval-ms", "100")) as st:
        st.host.create_event("bad", 10)
        bad = {"1700000000000-0000000007-bad": "garbage", "not-an-id": "1700000000000 2"}
        for k, v in bad.items():
            st.redis.cmd("HSET", "{bad}:pending", k, v)
        ok = 'snatch_reconciler_passes_total{result="ok"}'
        first = metric(st, ok)
        wait_until(lambda: metric(st, ok) >= first + 8, 30, what="8 reconciler passes")
        log = st.host.proc.log_text()
        for k in bad:
            lines = [ln for ln in log.splitlines() if "malformed entry " + k in ln]
            assert len(lines) == 1, (k, lines)
        assert metric(st, "snatch_reconciler_malformed_pending") == 2
        assert metric(st, "snatch_reconciler_malformed_pending_total") >= 2 * 8
        st.redis.cmd("HDEL", "{bad}:pending", "not-an-id")  # an operator mended it
        passes = metric(st, ok)
        wait_until(lambda: metric(st, ok) >= passes + 2, 30, what="2 more passes")
        assert metric(st, "snatch_reconciler_malformed_pending") == 1
        v = st.redis.cmd("HGETALL", "{bad}:pending")
        assert dict(zip(v[::2], v[1::2])) == {"1700000000000-0000000007-bad": "garbage"}, v
        # Many: the host remembers 64 logged entries, the others are counted but not logged.
        for i in range(70):
            st.redis.cmd("HSET", "{bad}:pending", "junk-%d" % i, "x")
        passes = metric(st, ok)
        wait_until(lambda: metric(st, ok) >= passes + 3, 30, what="3 more passes")
        assert metric(st, "snatch_reconciler_malformed_pending") == 71
        log = st.host.proc.log_text()
        assert sum("malformed entry " in ln for ln in log.splitlines()) == 64, log[-3000:]


@suite.case
def republished_order_has_the_policy_payload_host_thread():
    with tempfile.TemporaryDirectory(prefix="snatch-policy-") as d:
        policy = extra_field_policy(d)
        with Stack(hosts=2, threads=1, policy=policy, host_extra=FAST_RECONCILE + DEDUCT) as st:
            a, b = st.hosts
            oid = orphan_an_order(st, a, "pol")
            wait_until(lambda: rows_for(st, oid) == 1, 30, what="the orphaned order in SQLite")
            p = payload_of(st, oid)
            assert p["channel"] == "web" and p["order_id"] == oid and p["user"] == "victim", p
            # The host's own publish gives the same shape.
            s, body = b.snatch("pol", "direct")
            assert s == 200, (s, body)
            wait_until(lambda: rows_for(st, body["order_id"]) == 1, 30, what="the direct order")
            assert payload_of(st, body["order_id"])["channel"] == "web"


@suite.case
def republished_order_has_the_policy_payload_reconcile_tool():
    with tempfile.TemporaryDirectory(prefix="snatch-policy-") as d:
        policy = extra_field_policy(d)
        with Stack(hosts=1, threads=1, policy=policy,
                   host_extra=("--reconcile-interval-ms", "0", "--ack-timeout-ms", "400") +
                   DEDUCT) as st:
            oid = orphan_an_order(st, st.host, "tool")
            code, out = st.reconcile("--policy", policy, "--wait", "30")
            assert code == 0, out
            assert rows_for(st, oid) == 1, out
            p = payload_of(st, oid)
            assert p["channel"] == "web" and p["order_id"] == oid, p
            assert pending(st, "tool") == 0


if __name__ == "__main__":
    suite.run()
