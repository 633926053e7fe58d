"""Order life against real servers (redis-server, nats-server, snatch-subscriber, snatch-host):
holds paid, cancelled and expired (lua/order.lua decides each transition atomically in Redis),
a released ticket sold again, the ORDERS stream's transitions persisted once each in SQLite
(order_history, orders.status) whatever their order of arrival, races where exactly one
transition wins, idempotent retries of a snatch to two hosts, and hosts killed with -9 while
they release expired holds."""
import json
import os
import random
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(__file__))
from harness import (ADMIN_TOKEN, SOURCE_DIR, Stack, Suite, js_publish, order_json,  # noqa: E402
                     wait_until)

suite = Suite()
PAY_TOKEN = "test-payment-token-0123456789"


def life_stack(hold_ms, hosts=1, keep=False, expire_ms=200, extra=(), **kw):
    """A Stack whose policy holds orders hold_ms (0: the shipped policy, unchanged)."""
    st = Stack(hosts=hosts, aof_always=True, **kw)
    lua = os.path.join(SOURCE_DIR, "lua")
    if hold_ms:
        src = open(os.path.join(lua, "policy.lua")).read()
        add = "M.hold_ms = %d\nM.hold_keeps_limit = %s\n" % (hold_ms, "true" if keep else "false")
        src = src.replace("\nreturn M", "\n" + add + "return M")
        st.policy = os.path.join(st.tmp.path, "policy.lua")
        with open(st.policy, "w") as f:
            f.write(src)
    tok = os.path.join(st.tmp.path, "payment.token")
    with open(tok, "w") as f:
        f.write(PAY_TOKEN + "\n")
    st.host_extra = ["--deduct", os.path.join(lua, "deduct.lua"),
                     "--order-script", os.path.join(lua, "order.lua"),
                     "--payment-token-file", tok, "--expire-interval-ms", str(expire_ms),
                     "--reconcile-interval-ms", "500", "--reconcile-after-ms", "3000",
                     "--ack-timeout-ms", "2000"] + list(extra)
    return st


def pay(h, oid, token=PAY_TOKEN):
    return h.request("POST", "/v1/orders/%s/pay" % oid,
                     headers={"Authorization": "Bearer " + token})


def cancel(h, oid, user):
    return h.request("DELETE", "/v1/orders/%s?user=%s" % (oid, user))


def get(h, oid, user):
    return h.request("GET", "/v1/orders/%s?user=%s" % (oid, user))


def snatch(h, event, user, key=None, qty=None):
    q = "?user=%s" % user + ("&qty=%d" % qty if qty else "")
    headers = {"Idempotency-Key": key} if key else {}
    return h.request("POST", "/v1/events/%s/snatch%s" % (event, q), headers=headers)


def meta(st, event):
    v = st.redis.cmd("HGETALL", "{%s}:meta" % event)
    return dict(zip(v[::2], v[1::2]))


def history(st, event=None):
    """{order_id: [states]} from SQLite's order_history."""
    out = {}
    for oid, state in st.sub.query("SELECT order_id, state FROM order_history"):
        if event is None or oid.endswith("-" + event):
            out.setdefault(oid, []).append(state)
    return out


def statuses(st, event):
    return dict(st.sub.query("SELECT order_id, status FROM orders WHERE event = ?", (event,)))


def redis_states(st, event):
    v = st.redis.cmd("HGETALL", "{%s}:state" % event) or []
    return {k: s.split()[0] for k, s in zip(v[::2], v[1::2])}


@suite.case
def hold_then_pay():
    with life_stack(60000) as st:
        h = st.host
        h.create_event("hp", 1)
        s, b = snatch(h, "hp", "alice")
        assert s == 200 and b["status"] == "held" and b["hold_until"] > 0, (s, b)
        oid = b["order_id"]
        s, g = get(h, oid, "alice")
        assert s == 200 and g["status"] == "held" and g["hold_until"] == b["hold_until"], g
        assert pay(h, oid, "wrong-token-wrong-token")[0] == 401
        assert h.request("POST", "/v1/orders/%s/pay" % oid)[0] == 401
        assert snatch(h, "hp", "bob")[0] == 409  # held counts as sold
        s, p = pay(h, oid)
        assert s == 200 and p["status"] == "paid", (s, p)
        s, p2 = pay(h, oid)  # the payment side retries: same answer
        assert s == 200 and p2["status"] == "paid", (s, p2)
        assert cancel(h, oid, "alice")[0] == 409
        s, g = get(h, oid, "alice")
        assert g["status"] == "paid" and g["status_at"] >= b["hold_until"] - 60000, g
        assert meta(st, "hp")["sold"] == "1"
        wait_until(lambda: statuses(st, "hp").get(oid) == "paid", 20, what="SQLite status paid")
        assert sorted(history(st)[oid]) == ["held", "paid"], history(st)
        wait_until(lambda: st.redis.cmd("HLEN", "{hp}:tpending") == 0, 10, what="tpending empty")


def script_calls(st):
    """{command: calls} of EVAL and EVALSHA from Redis's commandstats."""
    out = {}
    for line in st.redis.cmd("INFO", "commandstats").split("\r\n"):
        for name in ("eval", "evalsha"):
            if line.startswith("cmdstat_%s:calls=" % name):
                out[name] = int(line.split("calls=")[1].split(",")[0])
    return out


@suite.case
def order_script_goes_by_sha_and_survives_a_flush():
    # order.lua (~6 KB) is named by its SHA1: a look-up sends no script. A Redis that forgot
    # it (SCRIPT FLUSH, a restart, a new master) answers NOSCRIPT once; the call goes again as
    # EVAL and the next ones by SHA1 again.
    with life_stack(60000) as st:
        h = st.host
        h.create_event("sha", 1)
        s, b = snatch(h, "sha", "alice")
        assert s == 200, (s, b)
        oid = b["order_id"]
        assert get(h, oid, "alice")[0] == 200
        before = script_calls(st)
        for _ in range(5):
            assert get(h, oid, "alice")[0] == 200
        after = script_calls(st)
        assert after.get("eval", 0) == before.get("eval", 0), (before, after)
        assert after["evalsha"] >= before["evalsha"] + 5, (before, after)
        st.redis.cmd("SCRIPT", "FLUSH")
        s, g = get(h, oid, "alice")
        assert s == 200 and g["status"] == "held", (s, g)
        again = script_calls(st)
        assert again.get("eval", 0) > after.get("eval", 0), (after, again)
        s, p = pay(h, oid)
        assert s == 200 and p["status"] == "paid", (s, p)


@suite.case
def hold_expires_and_another_buyer_gets_the_ticket():
    with life_stack(1200) as st:
        h = st.host
        h.create_event("hx", 1)
        s, b = snatch(h, "hx", "alice")
        assert s == 200 and b["status"] == "held", b
        oid = b["order_id"]
        assert snatch(h, "hx", "bob")[0] == 409  # the host now believes it sold out
        wait_until(lambda: get(h, oid, "alice")[1].get("status") == "expired", 10,
                   what="hold expired by the sweeper")
        m = meta(st, "hx")
        assert m["sold"] == "0", m
        assert st.redis.cmd("HGET", "{hx}:users", "alice") is None  # her count went back
        assert pay(h, oid)[0] == 409  # too late
        # Within one refresh the host sells again.
        got = []
        wait_until(lambda: got.append(snatch(h, "hx", "bob")) or got[-1][0] == 200, 5,
                   what="bob buys the released ticket")
        bob = got[-1][1]["order_id"]
        assert meta(st, "hx")["sold"] == "1"
        wait_until(lambda: statuses(st, "hx") == {oid: "expired", bob: "held"}, 20,
                   what="SQLite: alice expired, bob held")
        assert sorted(history(st)[oid]) == ["expired", "held"]


@suite.case
def hold_keeps_limit_when_the_policy_says_so():
    with life_stack(800, keep=True) as st:
        h = st.host
        h.create_event("hk", 5)
        s, b = snatch(h, "hk", "alice")
        assert s == 200, b
        wait_until(lambda: get(h, b["order_id"], "alice")[1].get("status") == "expired", 10,
                   what="expired")
        assert meta(st, "hk")["sold"] == "0"
        assert st.redis.cmd("HGET", "{hk}:users", "alice") == "1"
        assert snatch(h, "hk", "alice")[0] == 409  # limit 1 still reached


@suite.case
def cancel_by_the_buyer_only():
    with life_stack(60000) as st:
        h = st.host
        h.create_event("hc", 1)
        s, b = snatch(h, "hc", "alice")
        oid = b["order_id"]
        assert cancel(h, oid, "mallory")[0] == 403
        assert h.request("DELETE", "/v1/orders/%s" % oid)[0] == 403
        s, c = cancel(h, oid, "alice")
        assert s == 200 and c["status"] == "cancelled", (s, c)
        assert cancel(h, oid, "alice")[0] == 200  # a retried cancel: same answer
        assert pay(h, oid)[0] == 409
        assert meta(st, "hc")["sold"] == "0"
        wait_until(lambda: snatch(h, "hc", "bob")[0] == 200, 5, what="bob buys it")
        wait_until(lambda: statuses(st, "hc").get(oid) == "cancelled", 20, what="SQLite")


@suite.case
def without_hold_nothing_changes_for_clients():
    with life_stack(0) as st:
        h = st.host
        h.create_event("h0", 2)
        s, b = snatch(h, "h0", "alice")
        assert s == 200 and sorted(b) == ["event", "order_id", "qty", "user"], b
        oid = b["order_id"]
        s, g = get(h, oid, "alice")
        assert s == 200 and json.loads(order_json(oid, st.redis.cmd("HGET", "{h0}:orders",
                                                                   oid))) == g, g
        assert "status" not in g
        assert st.redis.cmd("HLEN", "{h0}:state") == 0
        assert pay(h, oid) == (200, {"order_id": oid, "status": "paid"})
        assert cancel(h, oid, "alice")[0] == 409
        wait_until(lambda: statuses(st, "h0") == {oid: "paid"}, 20, what="row")
        assert history(st) == {}


def sell(h, event, users, workers=16):
    def one(u):
        for _ in range(50):
            s, b = snatch(h, event, u)
            if s != 429:
                return u, s, b
            time.sleep(0.2)
        return u, s, b
    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(one, users))


@suite.case
def races_pay_cancel_expire_exactly_one_wins():
    """2000 held orders; for each, a payment to one host and a cancel to the other race each
    other and the sweepers of both hosts near the deadline. Exactly one transition wins each,
    in Redis and in SQLite, and what the callers were told agrees with it."""
    N = 2000
    with life_stack(2500, hosts=2, expire_ms=50) as st:
        h1, h2 = st.hosts
        h1.create_event("race", N, per_user_limit=1)
        users = ["u%d" % i for i in range(N)]
        sold = sell(h1, "race", users[: N // 2]) + sell(h2, "race", users[N // 2:])
        assert all(s == 200 for _, s, _ in sold), [x for x in sold if x[1] != 200][:3]
        orders = [(u, b["order_id"]) for u, _, b in sold]
        random.seed(7)
        random.shuffle(orders)
        told = {}  # oid -> list of (op, status, body)
        lock = threading.Lock()

        def race(item):
            u, oid = item
            a, b = (h1, h2) if random.random() < 0.5 else (h2, h1)
            out = []
            t1 = threading.Thread(target=lambda: out.append(("pay",) + pay(a, oid)))
            t2 = threading.Thread(target=lambda: out.append(("cancel",) + cancel(b, oid, u)))
            t1.start()
            t2.start()
            t1.join()
            t2.join()
            with lock:
                told[oid] = out
        with ThreadPoolExecutor(16) as ex:
            list(ex.map(race, orders))
        wait_until(lambda: st.redis.cmd("ZCARD", "{race}:holds") == 0, 20, what="holds gone")
        states = redis_states(st, "race")
        assert len(states) == N and set(states.values()) <= {"paid", "cancelled", "expired"}
        counts = {k: list(states.values()).count(k) for k in ("paid", "cancelled", "expired")}
        print("outcomes: %s" % counts, flush=True)
        for oid, out in told.items():
            final = states[oid]
            for op, s, b in out:
                if s == 200:
                    assert b["status"] == final, (oid, out, final)
                    assert (op == "pay") == (final == "paid"), (oid, out, final)
                else:
                    assert s == 409, (oid, out)
        assert int(meta(st, "race")["sold"]) == counts["paid"]
        assert st.redis.cmd("HLEN", "{race}:users") == counts["paid"]
        wait_until(lambda: st.sub.query(
            "SELECT count(*) FROM orders WHERE event='race' AND status <> 'held'")[0][0] == N,
            60, what="every order settled in SQLite")
        rows = statuses(st, "race")
        assert rows == states, [k for k in states if rows.get(k) != states[k]][:5]
        hist = history(st, "race")
        for oid, final in states.items():
            assert sorted(hist[oid]) == sorted(["held", final]), (oid, hist[oid])


@suite.case
def idempotent_retries_to_two_hosts():
    """The same (buyer, key) sent 4 times at once, two to each host: one order, one unit each,
    every answer the same order id; a limit of 2 would have let plain retries buy twice."""
    K = 60
    with life_stack(0, hosts=2) as st:
        h1, h2 = st.hosts
        h1.create_event("idem", 1000, per_user_limit=2)
        got = {}
        lock = threading.Lock()

        def retry(k):
            u, key = "b%d" % k, "key-%d-%s" % (k, "x" * 40)
            res = []
            ts = [threading.Thread(target=lambda h=h: res.append(snatch(h, "idem", u, key)))
                  for h in (h1, h2, h1, h2)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            with lock:
                got[u] = res
        with ThreadPoolExecutor(16) as ex:
            list(ex.map(retry, range(K)))
        ids = set()
        for u, res in got.items():
            assert all(s == 200 for s, _ in res), (u, res)
            one = {b["order_id"] for _, b in res}
            assert len(one) == 1, (u, res)
            ids |= one
        assert len(ids) == K
        assert meta(st, "idem")["sold"] == str(K)
        assert st.redis.cmd("HLEN", "{idem}:orders") == K
        wait_until(lambda: st.sub.query("SELECT count(*) FROM orders WHERE event='idem'")[0][0]
                   == K, 30, what="one row per key")
        # Later retries: same answer, nothing taken; a new key buys the second allowed ticket.
        s, b = snatch(h2, "idem", "b0", "key-0-" + "x" * 40)
        assert s == 200 and b["order_id"] in ids
        assert snatch(h1, "idem", "b0", "another-key")[0] == 200
        assert meta(st, "idem")["sold"] == str(K + 1)


@suite.case
def same_key_other_qty_is_422():
    with life_stack(0) as st:
        h = st.host
        h.create_event("iq", 10, per_user_limit=4)
        s, b = snatch(h, "iq", "ann", "k1", qty=2)
        assert s == 200, b
        s, e = snatch(h, "iq", "ann", "k1", qty=3)
        assert s == 422 and e["error"] == "idempotency_key_reused", (s, e)
        assert meta(st, "iq")["sold"] == "2"
        assert snatch(h, "iq", "ann", "k" * 129)[0] == 400  # bounded length
        s, r = snatch(h, "iq", "ann", "k1", qty=2)
        assert s == 200 and r["order_id"] == b["order_id"]
        # A refusal is an answer too: the same key after sold out replays it.
        h.create_event("iz", 1)
        assert snatch(h, "iz", "zed")[0] == 200
        assert snatch(h, "iz", "ann", "kz")[0] == 409
        assert snatch(h, "iz", "ann", "kz")[0] == 409


@suite.case
def subscriber_takes_transitions_in_any_order():
    with Stack(hosts=1) as st:  # the host makes the stream
        port = st.nats.port
        wait_until(lambda: "error" not in st.nats.stream_info(), 10, what="stream made")

        def order(oid, until):
            body = json.dumps({"order_id": oid, "event": "oo", "user": "u", "qty": 1,
                               "host": "h1", "created_at": 1})
            return js_publish(port, "orders.oo", oid, {"Snatch-Hold-Until": str(until)}, body)

        def tr(oid, state, at):
            body = json.dumps({"order_id": oid, "event": "oo", "user": "u", "qty": 1,
                               "state": state, "at": at})
            return js_publish(port, "orders.oo", "%s:%s" % (oid, state),
                              {"Snatch-Transition": state}, body)
        a, b, c = ("1700000000000-%010d-oo" % i for i in (1, 2, 3))
        tr(a, "paid", 5)          # paid before its order: must end paid
        order(a, 9)
        order(b, 9)               # in order: held, then expired
        tr(b, "expired", 9)
        tr(b, "expired", 9)       # a republished duplicate (new stream message after the window)
        order(c, 9)               # stays held
        js_publish(port, "orders.oo", "x:bogus", {"Snatch-Transition": "bogus"}, "{}")
        wait_until(lambda: len(statuses_of(st)) == 3 and statuses_of(st)[b] == "expired", 20,
                   what="rows")
        assert statuses_of(st) == {a: "paid", b: "expired", c: "held"}, statuses_of(st)
        h = history(st)
        assert sorted(h[a]) == ["held", "paid"] and sorted(h[b]) == ["expired", "held"], h
        assert h[c] == ["held"]
        assert st.sub.query("SELECT count(*) FROM dead_letters")[0][0] == 1


def statuses_of(st):
    return dict(st.sub.query("SELECT order_id, status FROM orders"))


@suite.case
def hosts_killed_while_releasing_expired_holds():
    """3000 held orders expire while both hosts' sweepers release them; with JetStream stalled
    for a moment (so that expiries are decided in Redis and not yet acknowledged), each host is
    killed with -9 mid-release and started again. Afterwards every order is expired exactly once (Redis
    and SQLite), each unit went back, every payment answered 200 is persisted once, and the
    whole stock sells again: nothing lost, nothing sold twice."""
    N = 3000
    with life_stack(3000, hosts=2, expire_ms=20) as st:
        h1, h2 = st.hosts
        h1.create_event("kx", N, per_user_limit=1)
        users = ["k%d" % i for i in range(N)]
        sold = sell(h1, "kx", users[: N // 2]) + sell(h2, "kx", users[N // 2:])
        assert all(s == 200 for _, s, _ in sold), [x for x in sold if x[1] != 200][:3]
        oids = [b["order_id"] for _, _, b in sold]
        paid = []

        def payer():  # payments keep arriving while the hosts die
            for oid in oids[::15]:
                for h in (h1, h2):
                    try:
                        s, b = pay(h, oid)
                    except OSError:
                        continue
                    if s == 200:
                        paid.append(oid)
                    break
        t = threading.Thread(target=payer)
        t.start()
        wait_until(lambda: st.redis.cmd("ZCARD", "{kx}:holds") < N - 200, 30,
                   what="release under way")
        # JetStream stalls for a moment: the sweepers go on deciding expiries in Redis whose
        # acks cannot come, so the hosts die with transitions decided and not yet published.
        st.nats.proc.sigstop()
        try:
            wait_until(lambda: st.redis.cmd("HLEN", "{kx}:tpending") >= 50, 30,
                       what="transitions decided, not acknowledged")
            h1.kill9()
            time.sleep(0.2)
            h2.kill9()
        finally:
            st.nats.proc.send_signal(signal.SIGCONT)
        left = st.redis.cmd("ZCARD", "{kx}:holds")
        unacked = st.redis.cmd("HLEN", "{kx}:tpending")
        print("at the kills: %d holds left, %d transitions unacknowledged" % (left, unacked),
              flush=True)
        assert left > 0 and unacked > 0  # the restarted hosts finish and republish
        t.join()
        h1.start()
        h2.start()
        wait_until(lambda: st.redis.cmd("ZCARD", "{kx}:holds") == 0, 30, what="all released")
        states = redis_states(st, "kx")
        assert len(states) == N
        assert set(paid) <= {k for k, v in states.items() if v == "paid"}, "a 200 not paid"
        npaid = list(states.values()).count("paid")
        assert int(meta(st, "kx")["sold"]) == npaid
        # Transitions whose ack died with a host are republished by the reconcilers.
        wait_until(lambda: st.redis.cmd("HLEN", "{kx}:tpending") == 0, 30, what="tpending empty")
        wait_until(lambda: statuses(st, "kx") == states, 60, what="SQLite agrees with Redis")
        hist = history(st, "kx")
        assert all(sorted(hist[k]) == sorted(["held", v]) for k, v in states.items())
        # The released units sell again, exactly the stock.
        again = sell(h2, "kx", ["z%d" % i for i in range(N - npaid + 50)])
        assert sum(1 for _, s, _ in again if s == 200) == N - npaid
        assert int(meta(st, "kx")["sold"]) == N
        code, out = st.reconcile("--event", "kx", "--wait", "30")
        assert code == 0, out


@suite.case
def repair_replays_holds_and_transitions():
    """--redis-repair: a node that lost the event's orders and one cancel gets them back from
    stream ORDERS. Transition messages are not orders; a held order is restored as its persisted
    transitions say (paid and held count in sold, cancelled does not); a cancel this node lost
    is applied to the order it still has held."""
    with life_stack(60000, extra=["--redis-repair"]) as st:
        h, r = st.host, st.redis
        h.create_event("rh", 10, per_user_limit=5)
        ids = {}
        for u in ("alice", "bob", "carol", "dave"):
            s, b = snatch(h, "rh", u)
            assert s == 200 and b["status"] == "held", (s, b)
            ids[u] = b["order_id"]
        assert pay(h, ids["alice"])[0] == 200
        assert cancel(h, ids["bob"], "bob")[0] == 200
        assert cancel(h, ids["carol"], "carol")[0] == 200
        assert meta(st, "rh")["sold"] == "2"
        wait_until(lambda: len(history(st, "rh")) == 4 and r.cmd("HLEN", "{rh}:tpending") == 0
                   and r.cmd("HLEN", "{rh}:pending") == 0, 20, what="everything persisted")
        # The node "loses" every order but carol's, which it still has held (her cancel lost).
        until = r.cmd("HGET", "{rh}:state", ids["dave"]).split()[1]
        rec = r.cmd("HGET", "{rh}:orders", ids["carol"])
        r.cmd("DEL", "{rh}:orders", "{rh}:users", "{rh}:uorders", "{rh}:state", "{rh}:holds")
        r.cmd("HSET", "{rh}:orders", ids["carol"], rec)
        r.cmd("HSET", "{rh}:state", ids["carol"], "held %s 0 1 carol" % until)
        r.cmd("ZADD", "{rh}:holds", until, ids["carol"])
        r.cmd("HSET", "{rh}:users", "carol", "1")
        r.cmd("HSET", "{rh}:meta", "sold", "1", "owner", "0123456789abcdef")
        assert snatch(h, "rh", "erin")[0] == 503  # repairing: the repair starts
        run_id = r.cmd("INFO", "server").split("run_id:")[1].split()[0]
        wait_until(lambda: meta(st, "rh").get("owner") == run_id, 20, what="repaired")
        m = meta(st, "rh")
        assert m["sold"] == "2", m  # alice paid, dave held; bob and carol released
        assert redis_states(st, "rh") == {ids["alice"]: "paid", ids["bob"]: "cancelled",
                                          ids["carol"]: "cancelled", ids["dave"]: "held"}
        assert r.cmd("ZRANGE", "{rh}:holds", 0, -1) == [ids["dave"]]
        users = r.cmd("HGETALL", "{rh}:users")
        assert dict(zip(users[::2], users[1::2])) == {"alice": "1", "dave": "1"}, users
        assert pay(h, ids["dave"])[0] == 200
        assert snatch(h, "rh", "erin")[0] == 200


@suite.case
def repair_counts_each_order_once():
    """--redis-repair restores an order once however many messages of stream ORDERS hold it: the
    host's batches of concurrent sales, another batch of all of them (one twice), and single
    republishes of half of them (what a reconciler sends): sold and every buyer's count are counted once."""
    with life_stack(0, extra=["--redis-repair"]) as st:
        h, r = st.host, st.redis
        h.create_event("rb", 100, per_user_limit=3)
        users = ["b%d" % i for i in range(20)]
        with ThreadPoolExecutor(20) as ex:
            res = list(ex.map(lambda u: snatch(h, "rb", u), users))
        assert all(s == 200 for s, _ in res), res
        ids = [b["order_id"] for _, b in res]
        wait_until(lambda: st.sub.rows("rb") == 20 and r.cmd("HLEN", "{rb}:pending") == 0, 20,
                   what="every order persisted")
        payload = dict(st.sub.query("SELECT order_id, payload FROM orders WHERE event='rb'"))
        recs = [payload[i] for i in sorted(ids, reverse=True)] + [payload[ids[0]]]
        ack = js_publish(st.nats.port, "orders.rb", "%s+%d" % (max(ids), len(recs)),
                         {"Snatch-Orders": str(len(recs))}, "\n".join(recs))
        assert "error" not in ack and "duplicate" not in ack, ack
        for i in ids[:10]:  # the other ten are in batches only
            assert "error" not in js_publish(st.nats.port, "orders.rb", i, {}, payload[i])
        # The node "loses" every order of the event.
        r.cmd("DEL", "{rb}:orders", "{rb}:users", "{rb}:uorders")
        r.cmd("HSET", "{rb}:meta", "sold", "0", "owner", "0123456789abcdef")
        assert snatch(h, "rb", "zed")[0] == 503  # repairing: the repair starts
        run_id = r.cmd("INFO", "server").split("run_id:")[1].split()[0]
        wait_until(lambda: meta(st, "rb").get("owner") == run_id, 20, what="repaired")
        assert meta(st, "rb")["sold"] == "20", meta(st, "rb")
        got = r.cmd("HGETALL", "{rb}:users")
        assert dict(zip(got[::2], got[1::2])) == {u: "1" for u in users}, got
        assert r.cmd("HLEN", "{rb}:orders") == 20
        assert snatch(h, "rb", "zed")[0] == 200


if __name__ == "__main__":
    suite.run()
