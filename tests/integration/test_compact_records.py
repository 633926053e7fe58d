"""{E}:orders holds a compact "<qty> <host> <user>" per order (lua/deduct.lua); every reader
rebuilds the order's JSON from it and the id (host/common/order_msg.c order_record_json), so
what clients, JetStream and SQLite see is byte for byte what it was when Redis held the JSON.
A JSON record (written by an earlier version, before an upgrade) is still read as it is: it
answers GET /v1/orders/{id} and the buyer's list, and reconciliation republishes it."""
import http.client
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import ADMIN_TOKEN, Stack, Suite, wait_until  # noqa: E402

suite = Suite()
AUTH = {"Authorization": "Bearer " + ADMIN_TOKEN}
FAST_RECONCILE = ("--reconcile-interval-ms", "200", "--reconcile-after-ms", "1000",
                  "--ack-timeout-ms", "400")
OLD_MS = 1000000000000


def record(event, host, ms, oid, qty, user):
    """The record JSON as deduct.lua stored it before records were compact (its field order)."""
    return ('{"event":"%s","host":"%s","created_at":%d,"order_id":"%s","qty":%d,"user":"%s"}'
            % (event, host, ms, oid, qty, user))


def message(event, host, ms, oid, qty, user):
    """The built-in JetStream payload (the policy has no order()): what the host publishes."""
    return ('{"order_id":"%s","event":"%s","user":"%s","qty":%d,"host":"%s","created_at":%d}'
            % (oid, event, user, qty, host, ms))


def raw_get(h, path, headers=None):
    """(status, body bytes): the answers are compared byte for byte, not as parsed JSON."""
    c = http.client.HTTPConnection("127.0.0.1", h.port, timeout=10)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def as_buyer(user):
    return {"X-User-Id": user}


def buy(h, event, user, qty=1):
    s, b = h.snatch(event, user, qty)
    assert s == 200, (s, b)
    return b["order_id"]


def ms_of(oid):
    return int(oid[:13])


def payloads(st, event):
    return dict(st.sub.query("SELECT order_id, payload FROM orders WHERE event=?", (event,)))


@suite.case
def a_compact_record_answers_as_the_json_did():
    with Stack(hosts=1, threads=1, subscriber=False) as st:
        h, r = st.host, st.redis
        h.create_event("cr", 10, per_user_limit=3)
        a1, a2 = buy(h, "cr", "alice"), buy(h, "cr", "alice", 2)
        b1 = buy(h, "cr", "b.o-b:1@x_y")
        want = {a1: record("cr", "h1", ms_of(a1), a1, 1, "alice"),
                a2: record("cr", "h1", ms_of(a2), a2, 2, "alice"),
                b1: record("cr", "h1", ms_of(b1), b1, 1, "b.o-b:1@x_y")}
        for oid, user in ((a1, "alice"), (a2, "alice"), (b1, "b.o-b:1@x_y")):
            for headers in (as_buyer(user), AUTH):
                assert raw_get(h, "/v1/orders/" + oid, headers) == (200, want[oid].encode())
            # Another buyer: as missing as before.
            s, body = raw_get(h, "/v1/orders/" + oid, as_buyer("mallory"))
            assert (s, json.loads(body)) == (404, {"error": "unknown_order"}), (s, body)
        lst = '{"event":"cr","user":"alice","orders":[%s,%s]}' % (want[a1], want[a2])
        for headers in (as_buyer("alice"), AUTH):
            s, body = raw_get(h, "/v1/events/cr/users/alice/orders", headers)
            assert (s, body) == (200, lst.encode()), (s, body)
        # What answered so is compact in Redis (the answers above are checked first, so that
        # an earlier version passes them and fails only here).
        stored = dict(zip(*[iter(r.cmd("HGETALL", "{cr}:orders"))] * 2))
        assert stored == {a1: "1 h1 alice", a2: "2 h1 alice", b1: "1 h1 b.o-b:1@x_y"}, stored
        # lua/order.lua reads the buyer of a compact record: only alice may (try to) cancel.
        s, b = h.request("DELETE", "/v1/orders/%s?user=mallory" % a1)
        assert s == 403 and b["error"] == "forbidden", (s, b)
        s, b = h.request("DELETE", "/v1/orders/%s?user=alice" % a1)
        assert s == 409 and b["error"] == "order_paid", (s, b)
        # A record that is neither form is nobody's order; the admin token is told it is broken.
        r.cmd("HSET", "{cr}:orders", b1, "garbage")
        s, body = raw_get(h, "/v1/orders/" + b1, as_buyer("b.o-b:1@x_y"))
        assert s == 404, (s, body)
        s, body = raw_get(h, "/v1/orders/" + b1, AUTH)
        assert s == 500 and json.loads(body)["error"] == "internal", (s, body)
        s, body = raw_get(h, "/v1/events/cr/users/b.o-b:1@x_y/orders", AUTH)
        assert (s, body) == (200, b'{"event":"cr","user":"b.o-b:1@x_y","orders":[]}'), (s, body)


@suite.case
def old_json_records_answer_and_are_republished_byte_for_byte():
    with Stack(hosts=1, threads=1, host_extra=FAST_RECONCILE) as st:
        h, r = st.host, st.redis
        h.create_event("old", 10, per_user_limit=3)
        # As an earlier version left them: carol's JSON record still pending (its host died
        # before the ack), dave's compact one too.
        c1 = "%013d-%010d-old" % (OLD_MS, 1)
        d1 = "%013d-%010d-old" % (OLD_MS, 2)
        old_rec = record("old", "h0", OLD_MS, c1, 2, "carol")
        r.cmd("HSET", "{old}:orders", c1, old_rec, d1, "1 h0 dave")
        r.cmd("HSET", "{old}:pending", c1, OLD_MS, d1, OLD_MS)
        r.cmd("HSET", "{old}:uorders", "carol", c1, "dave", d1)
        r.cmd("HSET", "{old}:users", "carol", 2, "dave", 1)
        r.cmd("HSET", "{old}:meta", "sold", 3, "seq", 2)
        # Carol buys again: her list holds the old JSON as it is next to the new record.
        c2 = buy(h, "old", "carol")
        assert r.cmd("HGET", "{old}:orders", c2) == "1 h1 carol"
        new_rec = record("old", "h1", ms_of(c2), c2, 1, "carol")
        assert raw_get(h, "/v1/orders/" + c1, as_buyer("carol")) == (200, old_rec.encode())
        assert raw_get(h, "/v1/orders/" + c1, as_buyer("dave"))[0] == 404
        s, body = raw_get(h, "/v1/events/old/users/carol/orders", as_buyer("carol"))
        want = '{"event":"old","user":"carol","orders":[%s,%s]}' % (old_rec, new_rec)
        assert (s, body) == (200, want.encode()), (s, body)
        # The host's reconciler republishes both pending orders: SQLite holds the message the
        # host publishes for a sale, byte for byte, as it did from the JSON record.
        wait_until(lambda: len(payloads(st, "old")) == 3, 30, what="the pending orders in SQLite")
        got = payloads(st, "old")
        assert got == {c1: message("old", "h0", OLD_MS, c1, 2, "carol"),
                       d1: message("old", "h0", OLD_MS, d1, 1, "dave"),
                       c2: message("old", "h1", ms_of(c2), c2, 1, "carol")}, got
        wait_until(lambda: r.cmd("HLEN", "{old}:pending") == 0, 10, what="pending emptied")

        # snatch-reconcile republishes what SQLite lacks from {E}:orders alone (no pending
        # entry): a JSON record and a compact one.
        h.create_event("gone", 10, per_user_limit=3)
        e1 = "%013d-%010d-gone" % (OLD_MS, 1)
        e2 = "%013d-%010d-gone" % (OLD_MS, 2)
        r.cmd("HSET", "{gone}:orders", e1, record("gone", "h0", OLD_MS, e1, 1, "erin"),
              e2, "3 h0 frank")
        r.cmd("HSET", "{gone}:meta", "sold", 4, "seq", 2)
        rc, out = st.reconcile("--wait", "20")
        assert rc == 0, (rc, out)
        got = payloads(st, "gone")
        assert got == {e1: message("gone", "h0", OLD_MS, e1, 1, "erin"),
                       e2: message("gone", "h0", OLD_MS, e2, 3, "frank")}, got


if __name__ == "__main__":
    suite.run()
