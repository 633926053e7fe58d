"""Live event administration against real redis-server and nats-server: PUT creates and refuses
to overwrite (409) unless ?reset=1, a reset keeps earlier orders and ids and reconciliation
consistent; PATCH changes stock (never below sold: 409, decided in Redis) and the per-user limit
live; pause/resume under load; GET /admin/events; bad input changes nothing."""
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Stack, Suite, wait_until, ADMIN_TOKEN  # noqa: E402
from loadgen import crowd, by_status  # noqa: E402

suite = Suite()
AUTH = {"Authorization": "Bearer " + ADMIN_TOKEN, "Content-Type": "application/json"}


def admin(host, method, path, body=None, headers=AUTH):
    if isinstance(body, dict):
        body = json.dumps(body)
    return host.request(method, path, body=body, headers=headers)


def meta(st, event):
    m = st.redis.cmd("HGETALL", "{%s}:meta" % event)
    return dict(zip(m[::2], m[1::2]))


def redis_ms(st):
    t = st.redis.cmd("TIME")
    return int(t[0]) * 1000 + int(t[1]) // 1000


def check_rows(st, event, expect_units):
    """Every unit Redis sold is one row, no buyer twice per generation, ids unique."""
    wait_until(lambda: st.sub.rows(event) >= expect_units, 30, what="subscriber catch-up")
    time.sleep(0.3)
    rows = st.sub.query("SELECT order_id, user, qty FROM orders WHERE event=?", (event,))
    assert sum(r[2] for r in rows) == expect_units, (len(rows), expect_units)
    assert len({r[0] for r in rows}) == len(rows), "an order id persisted twice"
    return rows


@suite.case
def put_twice_is_409_unless_reset():
    with Stack(hosts=1, threads=2) as st:
        h = st.host
        assert admin(h, "PUT", "/admin/events/gig", {"stock": 5})[0] == 200
        assert h.snatch("gig", "a1")[0] == 200
        before = meta(st, "gig")
        s, b = admin(h, "PUT", "/admin/events/gig", {"stock": 50, "per_user_limit": 3})
        assert (s, b["error"]) == (409, "event_exists"), (s, b)
        s, b = admin(h, "PUT", "/admin/events/gig?reset=0", {"stock": 50})
        assert (s, b["error"]) == (409, "event_exists"), (s, b)
        assert meta(st, "gig") == before, "a refused PUT changed the event"
        s, b = admin(h, "PUT", "/admin/events/gig?reset=yes", {"stock": 50})
        assert (s, b["error"]) == (400, "bad_request"), (s, b)
        assert meta(st, "gig") == before
        # The sale goes on as it was: a1 still holds its ticket, the stock is still 5.
        assert h.snatch("gig", "a1") == (409, {"error": "limit_reached"})
        s, ev = h.request("GET", "/v1/events/gig")
        assert (ev["stock"], ev["sold"], ev["generation"]) == (5, 1, 1), ev
        wait_until(lambda: st.redis.cmd("HLEN", "{gig}:pending") == 0, 10, what="pending empty")
        s, b = admin(h, "PUT", "/admin/events/gig?reset=1", {"stock": 50})
        assert s == 200 and b["generation"] == 2 and b["paused"] is False, (s, b)


@suite.case
def reset_keeps_earlier_orders_and_ids():
    with Stack(hosts=2, threads=2) as st:
        a, b = st.hosts
        a.create_event("tour", 4)
        first = {}
        for u in ("u1", "u2", "u3"):
            s, body = a.snatch("tour", u)
            assert s == 200, (s, body)
            first[u] = body["order_id"]
        check_rows(st, "tour", 3)
        wait_until(lambda: st.redis.cmd("HLEN", "{tour}:pending") == 0, 10, what="pending empty")
        s, body = admin(b, "PUT", "/admin/events/tour?reset=1", {"stock": 2})
        assert s == 200 and body["generation"] == 2, (s, body)
        m = meta(st, "tour")
        assert (m["stock"], m["sold"], m["sold_before"]) == ("2", "0", "3"), m
        # Earlier buyers: their orders still answer, to them and to the admin.
        for u, oid in first.items():
            s, rec = a.request("GET", "/v1/orders/%s?user=%s" % (oid, u))
            assert s == 200 and rec["order_id"] == oid, (s, rec)
            s, rec = b.request("GET", "/v1/orders/" + oid, headers=AUTH)
            assert s == 200 and rec["user"] == u, (s, rec)
        # A new generation is a new sale: an earlier buyer may buy again, with a new id.
        wait_until(lambda: a.request("GET", "/v1/events/tour")[1].get("generation") == 2, 5,
                   what="host a to follow the reset")
        s, body = a.snatch("tour", "u1")
        assert s == 200, (s, body)
        new_id = body["order_id"]
        assert new_id not in first.values()
        seqs = sorted(int(x.split("-")[1]) for x in list(first.values()) + [new_id])
        assert len(set(seqs)) == 4 and int(new_id.split("-")[1]) == seqs[-1], seqs
        s, mine = a.request("GET", "/v1/events/tour/users/u1/orders?user=u1")
        assert s == 200 and {o["order_id"] for o in mine["orders"]} == {first["u1"], new_id}, mine
        assert b.snatch("tour", "u4")[0] == 200
        assert b.snatch("tour", "u5") == (409, {"error": "sold_out"})
        rows = check_rows(st, "tour", 5)
        assert {r[0] for r in rows} == set(first.values()) | {new_id} | {
            o for o in st.redis.cmd("HKEYS", "{tour}:orders")}, "rows differ from Redis orders"
        # Reconciliation: SQLite is held to every unit ever sold (3 + 2), nothing is missing.
        wait_until(lambda: st.redis.cmd("HLEN", "{tour}:pending") == 0, 10, what="pending empty")
        rc, out = st.reconcile("--event", "tour")
        assert rc == 0, out
        line = [l for l in out.splitlines() if l.startswith("tour")][0].split()
        assert line[1:5] == ["2", "5", "5", "5"], line


@suite.case
def patch_below_sold_is_409_and_changes_nothing():
    with Stack(hosts=1, threads=2) as st:
        h = st.host
        h.create_event("club", 5)
        for u in ("a", "b", "c"):
            assert h.snatch("club", u)[0] == 200
        before = meta(st, "club")
        s, b = admin(h, "PATCH", "/admin/events/club", {"stock": 2})
        assert (s, b["error"]) == (409, "stock_below_sold"), (s, b)
        assert "3" in b["detail"], b
        assert meta(st, "club") == before
        s, b = admin(h, "PATCH", "/admin/events/club", {"stock": 3})
        assert s == 200 and (b["stock"], b["sold"], b["remaining"]) == (3, 3, 0), b
        assert h.snatch("club", "d") == (409, {"error": "sold_out"})
        check_rows(st, "club", 3)


@suite.case
def bad_input_is_4xx_and_changes_nothing():
    with Stack(hosts=1, threads=1, subscriber=False) as st:
        h = st.host
        h.create_event("bad", 5, per_user_limit=2)
        before = meta(st, "bad")
        cases = [
            ("PATCH", "/admin/events/bad", "{not json", 400, "bad_request"),
            ("PATCH", "/admin/events/bad", '{"stock":-1}', 400, "bad_request"),
            ("PATCH", "/admin/events/bad", '{"stock":1.5}', 400, "bad_request"),
            ("PATCH", "/admin/events/bad", '{"stock":"7"}', 400, "bad_request"),
            ("PATCH", "/admin/events/bad", '{"per_user_limit":0}', 400, "bad_request"),
            ("PATCH", "/admin/events/bad", "{}", 400, "bad_request"),
            ("PATCH", "/admin/events/bad", "[]", 400, "bad_request"),
            ("PATCH", "/admin/events/bad", '{"stock":9,"paused":true}', 400, "bad_request"),
            ("PATCH", "/admin/events/bad", '{"stock":9,"stock":8}', 400, "bad_request"),
            ("PATCH", "/admin/events/b..d", '{"stock":9}', 400, "bad_request"),
            ("PUT", "/admin/events/bad?reset=1", '{"stock":-3}', 400, "bad_request"),
            ("PUT", "/admin/events/bad?reset=1", "nope", 400, "bad_request"),
            ("PATCH", "/admin/events/nosuch", '{"stock":9}', 404, "unknown_event"),
            ("POST", "/admin/events/nosuch/pause", None, 404, "unknown_event"),
            ("POST", "/admin/events/nosuch/resume", None, 404, "unknown_event"),
            ("GET", "/admin/events/bad/pause", None, 405, "method_not_allowed"),
            ("DELETE", "/admin/events", None, 405, "method_not_allowed"),
        ]
        for method, path, body, status, err in cases:
            s, b = admin(h, method, path, body)
            assert (s, b.get("error") if isinstance(b, dict) else b) == (status, err), \
                (method, path, body, s, b)
        for method, path in (("PATCH", "/admin/events/bad"), ("POST", "/admin/events/bad/pause"),
                             ("GET", "/admin/events")):
            s, b = admin(h, method, path, '{"stock":9}',
                         headers={"Authorization": "Bearer wrong-token-wrong-token"})
            assert s == 401, (method, path, s, b)
        assert meta(st, "bad") == before, "bad input changed the event"
        assert not st.redis.cmd("EXISTS", "{nosuch}:meta"), "a refused change created an event"
        assert st.redis.cmd("SISMEMBER", "snatch:events", "nosuch") == 0


@suite.case
def per_user_limit_changes_live():
    with Stack(hosts=2, threads=2, subscriber=False) as st:
        a, b = st.hosts
        a.create_event("lim", 100, per_user_limit=1)
        assert a.snatch("lim", "x")[0] == 200
        assert b.snatch("lim", "x") == (409, {"error": "limit_reached"})
        s, body = admin(a, "PATCH", "/admin/events/lim", {"per_user_limit": 2})
        assert s == 200 and body["per_user_limit"] == 2 and body["stock"] == 100, body
        # Decided in Redis: the other host applies it at once, without waiting for a refresh.
        assert b.snatch("lim", "x")[0] == 200
        assert a.snatch("lim", "x") == (409, {"error": "limit_reached"})
        s, body = admin(b, "PATCH", "/admin/events/lim", {"per_user_limit": 1})
        assert s == 200 and body["per_user_limit"] == 1
        assert a.snatch("lim", "y")[0] == 200
        assert a.snatch("lim", "y") == (409, {"error": "limit_reached"})
        assert st.redis.cmd("HGET", "{lim}:users", "x") == "2"


@suite.case
def patch_stock_up_under_load_sells_again_without_oversell():
    """Both hosts sell out and answer sold out locally; a PATCH through host a while buyers keep
    coming to host b, which never saw the PATCH: it sells again (after its next refresh), and
    the sale ends at exactly the new stock."""
    with Stack(hosts=2, threads=2) as st:
        a, b = st.hosts
        a.create_event("wave", 60)
        res = crowd(a.port, "wave", ["w%d" % i for i in range(40)], threads=4) + \
            crowd(b.port, "wave", ["v%d" % i for i in range(40)], threads=4)
        assert by_status(res).get(200) == 60, by_status(res)
        for h in (a, b):
            assert h.snatch("wave", "late-" + h.host_id) == (409, {"error": "sold_out"})
        stop = threading.Event()
        out = []

        def load(host, prefix):
            out.extend(crowd(host.port, "wave", ["%s%d" % (prefix, i) for i in range(100000)],
                             threads=4, stop=stop))

        ts = [threading.Thread(target=load, args=(b, "lb"))]
        for t in ts:
            t.start()
        try:
            time.sleep(0.5)
            s, body = admin(a, "PATCH", "/admin/events/wave", {"stock": 160})
            assert s == 200 and body["stock"] == 160, body
            wait_until(lambda: int(meta(st, "wave")["sold"]) >= 160, 30, what="new stock sold")
            time.sleep(1.0)  # the load keeps coming after the sell-out: nothing more may sell
        finally:
            stop.set()
            for t in ts:
                t.join()
        wins = [(u, body) for u, s, body in out if s == 200]
        assert len(wins) == 100, (len(wins), by_status(out))
        assert a.snatch("wave", "after") == (409, {"error": "sold_out"})
        assert set(by_status(out)) <= {200, 409}, by_status(out)
        assert int(meta(st, "wave")["sold"]) == 160
        rows = check_rows(st, "wave", 160)
        assert len({r[1] for r in rows}) == 160, "a buyer got two tickets"


@suite.case
def pause_and_resume_under_load():
    """A sale paused in the middle of a crowd: not one order is created while it is paused
    (checked against the persisted rows' Redis timestamps and the order sequence), buyers get
    409 paused, and after the resume the sale sells out exactly."""
    with Stack(hosts=2, threads=2) as st:
        a, b = st.hosts
        S = 400
        a.create_event("pz", S)
        stop = threading.Event()
        out = []

        def load(host, prefix):
            out.extend(crowd(host.port, "pz", ["%s%d" % (prefix, i) for i in range(100000)],
                             threads=4, stop=stop))

        ts = [threading.Thread(target=load, args=(a, "pa")),
              threading.Thread(target=load, args=(b, "pb"))]
        for t in ts:
            t.start()
        try:
            wait_until(lambda: int(meta(st, "pz").get("sold", 0)) >= 50, 30, what="sales")
            s, body = admin(b, "POST", "/admin/events/pz/pause")
            assert s == 200 and body["paused"] is True, body
            paused_ms = redis_ms(st)
            seq_paused = int(meta(st, "pz")["seq"])
            sold_paused = int(meta(st, "pz")["sold"])
            assert sold_paused < S, "sold out before the pause: the test proves nothing"
            time.sleep(1.5)
            s, ev = a.request("GET", "/v1/events/pz")
            assert ev["status"] == "paused", ev
            seq_resume = int(meta(st, "pz")["seq"])
            resume_ms = redis_ms(st)
            s, body = admin(a, "POST", "/admin/events/pz/resume")
            assert s == 200 and body["paused"] is False, body
            wait_until(lambda: int(meta(st, "pz")["sold"]) >= S, 60, what="sell-out after resume")
        finally:
            stop.set()
            for t in ts:
                t.join()
        assert seq_resume == seq_paused, "orders were created while paused"
        counts = by_status(out)
        assert counts.get(200) == S, counts
        paused = [body for _, s, body in out if s == 409 and body.get("error") == "paused"]
        assert paused, "nobody was told the sale is paused"
        assert set(counts) <= {200, 409}, counts
        rows = check_rows(st, "pz", S)
        created = [c for (c,) in st.sub.query("SELECT created_at FROM orders WHERE event='pz'")]
        inside = [c for c in created if paused_ms < c < resume_ms]
        assert not inside, "rows created while paused: %r" % inside[:5]
        assert any(c <= paused_ms for c in created) and any(c >= resume_ms for c in created)
        assert len({r[1] for r in rows}) == S


@suite.case
def list_events_with_counters():
    with Stack(hosts=1, threads=2, subscriber=False) as st:
        h = st.host
        s, body = admin(h, "GET", "/admin/events")
        assert (s, body) == (200, {"events": []}), (s, body)
        h.create_event("zeta", 10, per_user_limit=2)
        h.create_event("alpha", 3)
        h.create_event("mid", 7)
        assert h.snatch("alpha", "p", qty=1)[0] == 200
        assert h.snatch("zeta", "q", qty=2)[0] == 200
        assert admin(h, "POST", "/admin/events/mid/pause")[0] == 200
        s, body = admin(h, "GET", "/admin/events")
        assert s == 200, (s, body)
        evs = body["events"]
        assert [e["event"] for e in evs] == ["alpha", "mid", "zeta"], evs
        by = {e["event"]: e for e in evs}
        assert (by["alpha"]["stock"], by["alpha"]["sold"], by["alpha"]["remaining"]) == (3, 1, 2)
        assert (by["zeta"]["sold"], by["zeta"]["per_user_limit"]) == (2, 2)
        assert by["mid"]["paused"] is True and by["alpha"]["paused"] is False
        assert all(e["generation"] == 1 and e["sold_before"] == 0 for e in evs), evs
        assert h.snatch("mid", "r") == (409, {"error": "paused", "detail":
                                              "the sale of this event is paused; retry later"})
        assert admin(h, "POST", "/admin/events/mid/resume")[0] == 200
        assert h.snatch("mid", "r")[0] == 200
        s, body = admin(h, "GET", "/admin/events")
        assert [e["sold"] for e in body["events"]] == [1, 1, 2], body


if __name__ == "__main__":
    suite.run()
