"""Hostile clients, application side (issue 14): names that cannot poison the order pipeline,
buyer identity only from trusted peers, buyer data only for its buyer, rate buckets nobody else
can burn, an event table that refuses what it cannot hold, and a guarded admin token.

All traffic comes from 127.0.0.1. "Untrusted peer" cases start the host with a --trusted-proxy
that excludes loopback (10.255.255.255/32, a CIDR string only: nothing is ever sent there);
X-Forwarded-For addresses are header text only."""
import http.client
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import (ADMIN_TOKEN, SOURCE_DIR, Stack, Suite, TempDir, binary,  # noqa: E402
                     wait_until)

suite = Suite()
AUTH = {"Authorization": "Bearer " + ADMIN_TOKEN, "Content-Type": "application/json"}
FAST_RECONCILE = ("--reconcile-interval-ms", "200", "--reconcile-after-ms", "1000",
                  "--ack-timeout-ms", "400")
NOT_LOOPBACK = ("--trusted-proxy", "10.255.255.255/32")


class Conn:
    """One keep-alive connection for many requests (thousands of PUTs, floods)."""

    def __init__(self, host):
        self.c = http.client.HTTPConnection("127.0.0.1", host.port, timeout=30)

    def request(self, method, path, body=None, headers=None):
        self.c.request(method, path, body=body, headers=headers or {})
        r = self.c.getresponse()
        data = r.read().decode("utf-8", "replace")
        try:
            return r.status, json.loads(data)
        except ValueError:
            return r.status, data

    def close(self):
        self.c.close()


def put_event(conn, event, stock=1, limit=1, reset=False):
    return conn.request("PUT", "/admin/events/" + event + ("?reset=1" if reset else ""),
                        body=json.dumps({"stock": stock, "per_user_limit": limit}), headers=AUTH)


def buy(h, event, user):
    return h.request("POST", "/v1/events/%s/snatch" % event, headers={"X-User-Id": user})


def sqlite_row(st, order_id):
    r = st.sub.query("SELECT event, user, qty FROM orders WHERE order_id=?", (order_id,))
    return r[0] if r else None


@suite.case
def poisoned_names_refused_and_every_allowed_edge_reaches_sqlite():
    """a..b (and any name that is no NATS subject token sequence) is a 400 that changes nothing;
    names at every edge of the rule go host -> Redis -> JetStream -> subscriber -> SQLite."""
    longest = ("e." * 32)[:63] + "z"  # 64 bytes, dots inside
    edges = [longest, "_e_", "-e-", ":e:", "@e@", "0e9", "Ze.a", "a.b.c", "x"]
    buyers = ["U" * 64, "_u.v_", "-u-", ":u:", "@u@", "9u0", "u.v.w", "a", "b.c"]
    with Stack(hosts=1, threads=2) as st:
        h = st.host
        c = Conn(h)
        for bad in ["a..b", ".a", "a.", ".", "a...b"]:
            s, b = put_event(c, bad)
            assert s == 400 and b["error"] == "bad_request", (bad, s, b)
            s, b = buy(h, bad, "someone")
            assert s == 400, (bad, s, b)
        s, b = buy(h, "ok", "a..b")
        assert s == 400 and "buyer" in b["detail"], (s, b)
        assert st.redis.cmd("SCARD", "snatch:events") == 0, "a refused name reached Redis"
        orders = {}
        for ev, user in zip(edges, buyers):
            s, b = put_event(c, ev, stock=2)
            assert s == 200, (ev, s, b)
            s, b = buy(h, ev, user)
            assert s == 200 and b["event"] == ev and b["user"] == user, (ev, user, s, b)
            orders[b["order_id"]] = (ev, user)
        c.close()
        for oid, (ev, user) in orders.items():
            wait_until(lambda: sqlite_row(st, oid) is not None, 30, what="%s in SQLite" % oid)
            assert sqlite_row(st, oid) == (ev, user, 1), (oid, sqlite_row(st, oid))


@suite.case
def one_poisoned_event_does_not_stop_the_reconciler():
    """A name written before the rule was tightened sits in snatch:events with a pending order:
    the host's reconciliation thread skips it and still republishes the other events' orders."""
    with Stack(hosts=1, threads=1, host_extra=FAST_RECONCILE) as st:
        old_ms = "1000000000000"
        for ev in ["a..b", "zgood"]:
            oid = "%s-%010d-%s" % (old_ms, 1, ev)
            rec = json.dumps({"order_id": oid, "event": ev, "user": "u1", "qty": 1, "host": "h0",
                              "created_at": int(old_ms)})
            st.redis.cmd("HSET", "{%s}:orders" % ev, oid, rec)
            st.redis.cmd("HSET", "{%s}:pending" % ev, oid, old_ms)
            st.redis.cmd("HSET", "{%s}:meta" % ev, "stock", 1, "sold", 1, "limit", 1, "gen", 1)
            st.redis.cmd("SADD", "snatch:events", ev)
        good = "%s-%010d-zgood" % (old_ms, 1)
        wait_until(lambda: sqlite_row(st, good) is not None, 30,
                   what="zgood's pending order republished past the poisoned event")
        wait_until(lambda: st.redis.cmd("HLEN", "{zgood}:pending") == 0, 10, what="HDEL")
        assert st.redis.cmd("HLEN", "{a..b}:pending") == 1  # skipped, left for an operator
        wait_until(lambda: "skipped" in h_log(st), 10, what="the skip logged")
        # snatch-reconcile, the operator's tool, skips it the same way and reports the rest.
        rc, out = st.reconcile()
        assert rc == 0 and "zgood" in out and "skipped" in out, (rc, out)


def h_log(st):
    return st.host.proc.log_text()


@suite.case
def orders_answer_only_to_their_buyer():
    with Stack(hosts=1, threads=1, subscriber=False) as st:
        h = st.host
        h.create_event("priv", 10, per_user_limit=2)
        s, b = buy(h, "priv", "alice")
        assert s == 200, (s, b)
        oid = b["order_id"]
        path_one, path_list = "/v1/orders/" + oid, "/v1/events/priv/users/alice/orders"
        s, o = h.request("GET", path_one, headers={"X-User-Id": "alice"})
        assert s == 200 and o["user"] == "alice", (s, o)
        s, o = h.request("GET", path_list, headers={"X-User-Id": "alice"})
        assert s == 200 and [x["order_id"] for x in o["orders"]] == [oid], (s, o)
        # Another buyer: the order looks like it does not exist; the list is forbidden.
        s, o = h.request("GET", path_one, headers={"X-User-Id": "mallory"})
        assert s == 404 and o == {"error": "unknown_order"}, (s, o)
        s, o = h.request("GET", path_list, headers={"X-User-Id": "mallory"})
        assert s == 403 and o["error"] == "forbidden", (s, o)
        # ?user= (allowed on this host, like for a load tool) establishes the buyer the same way.
        s, o = h.request("GET", path_one + "?user=mallory")
        assert s == 404, (s, o)
        s, o = h.request("GET", path_list + "?user=mallory")
        assert s == 403, (s, o)
        # Nobody at all.
        for p in (path_one, path_list):
            s, o = h.request("GET", p)
            assert s == 403 and o["error"] == "forbidden", (p, s, o)
        # The admin token sees everything; a wrong one is a 401.
        s, o = h.request("GET", path_one, headers=AUTH)
        assert s == 200 and o["order_id"] == oid, (s, o)
        s, o = h.request("GET", path_list, headers=AUTH)
        assert s == 200 and len(o["orders"]) == 1, (s, o)
        s, o = h.request("GET", path_one, headers={"Authorization": "Bearer nope-nope-nope-nope"})
        assert s == 401, (s, o)


@suite.case
def reads_are_rate_limited_per_buyer_and_per_address():
    with Stack(hosts=1, threads=1, subscriber=False) as st:
        h = st.host
        h.create_event("rd", 10)
        c = Conn(h)
        seen = [c.request("GET", "/v1/events/rd/users/poller/orders",
                          headers={"X-User-Id": "poller"})[0] for _ in range(60)]
        assert seen[0] == 200 and 429 in seen, seen
        # Another buyer is not affected.
        s, _ = c.request("GET", "/v1/events/rd/users/other/orders", headers={"X-User-Id": "other"})
        assert s == 200, s
        # Per client address: the X-Forwarded-For client behind the (trusted) loopback proxy.
        far = {"X-Forwarded-For": "198.51.100.7"}
        seen = [c.request("GET", "/v1/events/rd", headers=far)[0] for _ in range(600)]
        assert seen[0] == 200 and 429 in seen, seen
        s, _ = c.request("GET", "/v1/events/rd", headers={"X-Forwarded-For": "198.51.100.8"})
        assert s == 200, s
        c.close()
        # Two X-Forwarded-For lines: which hop wrote which is unknowable, so it is refused.
        raw = http.client.HTTPConnection("127.0.0.1", h.port, timeout=10)
        raw.putrequest("GET", "/v1/events/rd")
        raw.putheader("X-Forwarded-For", "198.51.100.9")
        raw.putheader("X-Forwarded-For", "10.0.0.1")
        raw.endheaders()
        assert raw.getresponse().status == 400
        raw.close()


@suite.case
def made_up_events_do_not_burn_a_buyers_bucket():
    with Stack(hosts=1, threads=1, subscriber=False) as st:
        h = st.host
        h.create_event("real", 100)
        c = Conn(h)
        for i in range(30):
            s, b = c.request("POST", "/v1/events/madeup%d/snatch" % i,
                             headers={"X-User-Id": "victim1"})
            assert s == 404, (i, s, b)
        s, b = buy(h, "real", "victim1")
        assert s == 200, ("victim1's bucket was burnt by made-up events", s, b)
        # The made-up flood is still throttled, per client address (here: per XFF client).
        flood = {"X-User-Id": "whoever", "X-Forwarded-For": "203.0.113.9"}
        seen = [c.request("POST", "/v1/events/nope%d/snatch" % i, headers=flood)[0]
                for i in range(300)]
        assert 429 in seen and set(seen) <= {404, 429}, seen
        s, b = c.request("POST", "/v1/events/nope/snatch",
                         headers={"X-User-Id": "whoever", "X-Forwarded-For": "203.0.113.10"})
        assert s == 404, (s, b)
        c.close()


@suite.case
def event_4097_is_refused_at_creation_never_half_created():
    with Stack(hosts=1, threads=2, subscriber=False) as st:
        h = st.host
        c = Conn(h)
        for i in range(4096):
            s, b = put_event(c, "ev%d" % i)
            assert s == 200, (i, s, b)
        s, b = put_event(c, "ev4096")
        assert s == 409 and b["error"] == "too_many_events", (s, b)
        assert st.redis.cmd("EXISTS", "{ev4096}:meta") == 0, "refused event created in Redis"
        s, b = buy(h, "ev4095", "last")
        assert s == 200, (s, b)
        s, b = put_event(c, "ev17", stock=3, reset=True)  # a reset of a known event still works
        assert s == 200 and b["stock"] == 3, (s, b)
        c.close()


@suite.case
def max_events_flag_sizes_the_table_for_the_whole_sale():
    with Stack(hosts=2, threads=1, subscriber=False,
               host_extra=("--max-events", "3")) as st:
        h1, h2 = st.hosts
        c = Conn(h1)
        for ev in ("m1", "m2", "m3"):
            assert put_event(c, ev)[0] == 200
        s, b = put_event(c, "m4")
        assert s == 409 and b["error"] == "too_many_events", (s, b)
        c.close()
        # The other host has room locally, but the sale (Redis) holds --max-events already.
        c = Conn(h2)
        s, b = put_event(c, "m5")
        assert s == 409 and b["error"] == "too_many_events", (s, b)
        assert st.redis.cmd("EXISTS", "{m5}:meta") == 0
        for ev in ("m1", "m2", "m3"):
            s, b = buy(h2, ev, "u-" + ev)
            assert s == 200, (ev, s, b)
        c.close()


@suite.case
def query_user_needs_the_flag():
    with Stack(hosts=1, threads=1, subscriber=False, query_user=False) as st:
        h = st.host
        h.create_event("qu", 10, per_user_limit=2)
        s, b = h.request("POST", "/v1/events/qu/snatch?user=me")
        assert s == 400 and "--allow-query-user" in b["detail"], (s, b)
        s, b = h.request("POST", "/v1/events/qu/snatch?user=me", headers={"X-User-Id": "me"})
        assert s == 400, (s, b)
        s, b = buy(h, "qu", "me")  # X-User-Id from loopback: trusted by default
        assert s == 200 and b["user"] == "me", (s, b)
        s, b = h.request("GET", "/v1/events/qu/users/me/orders?user=me")
        assert s == 400, (s, b)


@suite.case
def x_user_id_from_an_untrusted_peer_is_ignored():
    with Stack(hosts=1, threads=1, subscriber=False, host_extra=NOT_LOOPBACK) as st:
        h = st.host
        h.create_event("ut", 10, per_user_limit=2)
        s, b = buy(h, "ut", "victim")
        assert s == 400 and "buyer" in b["detail"], (s, b)
        s, b = h.request("POST", "/v1/events/ut/snatch?user=me", headers={"X-User-Id": "victim"})
        assert s == 200 and b["user"] == "me", (s, b)
        s, b = h.request("GET", "/v1/events/ut/users/victim/orders",
                         headers={"X-User-Id": "victim"})
        assert s == 403, (s, b)
    # Bad flag values stop the host at start with a clear message.
    tmp = TempDir()
    try:
        tok = os.path.join(tmp.path, "tok")
        with open(tok, "w") as f:
            f.write(ADMIN_TOKEN)
        for bad in ["10.0.0.1/8", "nonsense", "10.0.0.0/40"]:
            p = subprocess.run([binary("snatch-host"), "--trusted-proxy", bad, "--test",
                                os.path.join(SOURCE_DIR, "lua", "policy.lua")],
                               capture_output=True, timeout=30)
            assert p.returncode != 0 and b"--trusted-proxy" in p.stderr, (bad, p)
    finally:
        tmp.cleanup()


@suite.case
def admin_token_is_long_and_guessing_is_slowed():
    tmp = TempDir()
    try:
        tok = os.path.join(tmp.path, "tok")
        with open(tok, "w") as f:
            f.write("short-token\n")  # 11 bytes
        # --test: the flags are checked, nothing is started.
        p = subprocess.run([binary("snatch-host"), "--admin-token-file", tok, "--test",
                            os.path.join(SOURCE_DIR, "lua", "policy.lua")],
                           capture_output=True, timeout=30)
        assert p.returncode != 0 and b"16" in p.stderr, p
    finally:
        tmp.cleanup()
    with Stack(hosts=1, threads=1, subscriber=False) as st:
        h = st.host
        c = Conn(h)
        body = json.dumps({"stock": 1})
        seen = [c.request("PUT", "/admin/events/g", body=body,
                          headers={"Authorization": "Bearer guess-%04d-guess-guess" % i})[0]
                for i in range(15)]
        assert seen[0] == 401 and seen[-1] == 429, seen
        # Even the right token waits now, from this address: guessing gains nothing.
        s, _ = c.request("PUT", "/admin/events/g", body=body, headers=AUTH)
        assert s == 429, s
        # Another client address (X-Forwarded-For through the trusted loopback) is not blocked.
        s, _ = c.request("PUT", "/admin/events/g", body=body,
                         headers=dict(AUTH, **{"X-Forwarded-For": "198.51.100.20"}))
        assert s == 200, s
        c.close()


if __name__ == "__main__":
    suite.run()
