"""docs/openapi.yaml against running snatch-hosts: every response the spec lists is produced
(except those that need a fault inside the host, in SKIPPED), each body is validated against its
schema (Debian python3-jsonschema), /metrics is checked as Prometheus text (HELP and TYPE for
every family, its samples together), and any status the spec does not list for that operation
fails the test. Real redis-server and nats-server; two short faults are staged on them (NATS
stopped with SIGSTOP for 202 and 409 orders_pending, Redis stopped for 503).

Three hosts: `host` (--allow-query-user, --max-events 4, loopback a trusted proxy, as by
default), `strict` (no --allow-query-user, no admin token, loopback not a trusted proxy,
--admin-listen) and `capped` (--max-connections-per-client 1, for 503 too_many_connections).
Per-address limits are reached from made-up client addresses sent by the trusted loopback in
X-Forwarded-For, so that loopback itself is never throttled."""
import json
import os
import re
import signal
import socket
import sys
import time
import unittest

import jsonschema
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (ADMIN_TOKEN, SANITIZER_MARKERS, SOURCE_DIR, Host, NatsServer,  # noqa: E402
                     RedisServer, TempDir, free_port, wait_until)

SPEC_PATH = os.path.join(SOURCE_DIR, "docs", "openapi.yaml")
# Responses that only a fault inside the host produces; everything else must be exercised.
# (getMetrics 503 is produced, as too_many_connections; its out-of-memory `unavailable` is not.)
SKIPPED = {
    **{(op, "500"): "out of memory in the host" for op in (
        "getEvent", "putEvent", "getUserOrders", "getMetrics",
        "getHealth", "payOrder", "cancelOrder", "patchEvent", "pauseEvent", "resumeEvent",
        "listEvents")},
}
OPS = {  # operationId -> (method, a concrete path)
    "snatch": ("POST", "/v1/events/ev/snatch?user=zz"),
    "getEvent": ("GET", "/v1/events/ev"),
    "putEvent": ("PUT", "/admin/events/ev"),
    "getOrder": ("GET", "/v1/orders/0000000000000-0000000000-ev"),
    "payOrder": ("POST", "/v1/orders/0000000000000-0000000000-ev/pay"),
    "cancelOrder": ("DELETE", "/v1/orders/0000000000000-0000000000-ev"),
    "getUserOrders": ("GET", "/v1/events/ev/users/zz/orders"),
    "getMetrics": ("GET", "/metrics"),
    "getHealth": ("GET", "/healthz"),
    "patchEvent": ("PATCH", "/admin/events/ev"),
    "pauseEvent": ("POST", "/admin/events/ev/pause"),
    "resumeEvent": ("POST", "/admin/events/ev/resume"),
    "listEvents": ("GET", "/admin/events"),
}
PAY_TOKEN = "test-payment-token-0123456789"
ADMIN_OPS = ("patchEvent", "pauseEvent", "resumeEvent", "listEvents")
WRONG_METHOD = {"snatch": "GET", "getEvent": "POST", "putEvent": "POST", "getOrder": "POST",
                "getUserOrders": "POST", "getMetrics": "PUT", "getHealth": "POST",
                "payOrder": "GET", "cancelOrder": "PUT", "patchEvent": "POST",
                "pauseEvent": "GET", "resumeEvent": "PUT", "listEvents": "POST"}
MAX_HEAD = 1024
MAX_BODY = 1024
MAX_EVENTS = 4
# Statuses whose meaning is the operation's own: README's API table must name each of them.
OWN_STATUSES = {"200", "202", "401", "403", "409", "429"}
# The policy used: the default one, plus a refusal of its own choosing (451) for one buyer and
# a failing admit() for another (500 policy_error).
BLOCKED = ("  if req.user == 'blocked' then return false, 451, 'blocked', 'test policy' end\n"
           "  if req.user == 'crash' then error('test policy fails') end\n")
# Heads the HTTP layer refuses with 400 before routing; {line} is the request line + Host.
BAD_HEADS = {
    "Content-Length with Transfer-Encoding":
        b"{line}Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "conflicting Content-Length": b"{line}Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "space before the colon": b"{line}Content-Length : 0\r\n\r\n",
    "obs-fold": b"{line}X-A: b\r\n c\r\n\r\n",
    "obs-fold after an empty value": b"{line}X-A:\r\n\tc\r\n\r\n",
    "bare LF": b"{bare}Host: a\n\n",
    "bare CR": b"{line}X-A: b\rc\r\n\r\n",
    "two X-User-Id": b"{line}X-User-Id: a\r\nX-User-Id: b\r\n\r\n",
    "two Authorization": b"{line}Authorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n",
    "two X-Forwarded-For": b"{line}X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-For: "
                           b"192.0.2.8\r\n\r\n",
    "two Idempotency-Key": b"{line}Idempotency-Key: a\r\nIdempotency-Key: b\r\n\r\n",
}


def parse_answer(buf):
    """Splits one answer off buf: ((status, headers, body), rest) or (None, buf) if incomplete."""
    head, sep, rest = buf.partition(b"\r\n\r\n")
    if not sep:
        return None, buf
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, v in
               (line.split(":", 1) for line in lines[1:] if ":" in line)}
    n = int(headers.get("content-length", len(rest)))
    if len(rest) < n:
        return None, buf
    return (status, headers, rest[:n]), rest[n:]


def read_all(s):
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return out
        out += chunk


def raw(port, data, timeout=10.0):
    """Sends bytes, reads until the server closes; returns (status, headers, body bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if data:
            s.sendall(data)
        answer, _ = parse_answer(read_all(s))
    assert answer is not None, "no complete answer"
    return answer


def encode(method, path, body=None, headers=None, close=True):
    h = {"Host": "127.0.0.1"}
    if close:
        h["Connection"] = "close"
    h.update(headers or {})
    data = body.encode() if isinstance(body, str) else (body or b"")
    if body is not None:
        h["Content-Length"] = str(len(data))
    return ("%s %s HTTP/1.1\r\n" % (method, path) + "".join(
        "%s: %s\r\n" % kv for kv in h.items()) + "\r\n").encode() + data


def request(port, method, path, body=None, headers=None):
    return raw(port, encode(method, path, body, headers))


def pipeline(port, method, path, n, headers=None):
    """n requests on one connection (the last one closes it); returns the n answers."""
    data = b"".join(encode(method, path, None, headers, close=(i == n - 1)) for i in range(n))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        buf = read_all(s)
    answers = []
    while True:
        a, buf = parse_answer(buf)
        if a is None:
            break
        answers.append(a)
    assert len(answers) == n, (len(answers), n)
    return answers


def check_prometheus(text):
    """Text format 0.0.4 as README's Metrics section says: every sample's family has HELP and
    TYPE lines before it, and a family's lines are together."""
    helps, types, current, done = set(), {}, None, set()
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            parts = line.split(" ", 3)
            name = parts[2]
            if name != current:
                assert name not in done, "family %s split" % name
                if current is not None:
                    done.add(current)
                current = name
            if parts[1] == "HELP":
                helps.add(name)
            else:
                assert parts[3] in ("counter", "gauge", "histogram", "summary", "untyped"), line
                types[name] = parts[3]
            continue
        assert not line.startswith("#"), line
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)( -?\d+)?$", line)
        assert m, "not a sample line: %r" % line
        float(m.group(3))
        name = m.group(1)
        family = name
        if family not in types:
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            assert types.get(family) == "histogram", "sample %s has no TYPE" % name
        assert family == current, "sample %s outside its family's lines" % name
        assert family in helps, "family %s has no HELP" % family
    assert types, "no metric families"
    return types


class OpenApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(SPEC_PATH) as f:
            cls.spec = yaml.safe_load(f)
        cls.resolver = jsonschema.RefResolver.from_schema(cls.spec)
        cls.ops = {}
        for path, item in cls.spec["paths"].items():
            for method, op in item.items():
                cls.ops[op["operationId"]] = (method.upper(), path, op)
        cls.seen = set()
        cls.hosts = []
        cls.tmp = TempDir()
        cls.redis = RedisServer(cls.tmp.path).start()
        cls.nats = NatsServer(cls.tmp.path).start()
        with open(os.path.join(SOURCE_DIR, "lua", "policy.lua")) as f:
            text = f.read()
        assert "function M.admit(req)\n" in text
        policy = os.path.join(cls.tmp.path, "policy.lua")  # no deduct.lua beside it
        with open(policy, "w") as f:
            f.write(text.replace("function M.admit(req)\n", "function M.admit(req)\n" + BLOCKED))
        opts = ("--header-timeout-ms", "300", "--max-head", str(MAX_HEAD), "--max-body",
                str(MAX_BODY), "--ack-timeout-ms", "500", "--reconcile-interval-ms", "0")

        def start(host_id, extra=(), query_user=True, admin=True):
            h = Host(cls.tmp.path, cls.redis.port, cls.nats.url, policy=policy, threads=1,
                     host_id=host_id, extra=opts + tuple(extra), query_user=query_user)
            if not admin:
                i = h.argv.index("--admin-token-file")
                del h.argv[i:i + 2]
            cls.hosts.append(h)
            return h.start()

        cls.host = start("h1", ("--max-events", str(MAX_EVENTS)))
        # No admin token (403), no ?user= (400), loopback not a trusted proxy (X-User-Id
        # ignored), and an admin listener (404 for each route on the wrong listener).
        cls.admin_port = free_port()
        cls.strict = start("h2", ("--trusted-proxy", "192.0.2.1", "--admin-listen",
                                  "127.0.0.1:%d" % cls.admin_port), query_user=False,
                           admin=False)
        cls.capped = start("h3", ("--max-connections-per-client", "1"))
        # Orders held for payment (the order life): a policy with hold_ms and a payment token.
        held = os.path.join(cls.tmp.path, "held.lua")
        with open(held, "w") as f:
            f.write(text.replace("\nreturn M", "\nM.hold_ms = 600000\nreturn M"))
        tok = os.path.join(cls.tmp.path, "payment.token")
        with open(tok, "w") as f:
            f.write(PAY_TOKEN)
        cls.holder = Host(cls.tmp.path, cls.redis.port, cls.nats.url, policy=held, threads=1,
                          host_id="h4", extra=opts + ("--payment-token-file", tok))
        cls.hosts.append(cls.holder)
        cls.holder.start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.nats.proc.send_signal(signal.SIGCONT)
        except Exception:
            pass
        for p in reversed(cls.hosts):
            p.stop()
        logs = [p.proc.log_text() for p in cls.hosts if p.proc is not None]
        cls.nats.stop()
        cls.redis.stop()
        cls.tmp.cleanup()
        reports = [t for t in logs if any(m in t for m in SANITIZER_MARKERS)]
        assert not reports, "sanitizer report:\n" + "\n".join(reports)

    # ---- checking one answer against the spec ----

    def response_spec(self, op_id, status):
        responses = self.ops[op_id][2]["responses"]
        key = str(status)
        if key not in responses:
            key = "%dXX" % (status // 100)
        if key not in responses:
            self.fail("%s answered %d, which docs/openapi.yaml does not list" % (op_id, status))
        r = responses[key]
        if "$ref" in r:
            r = self.spec["components"]["responses"][r["$ref"].rsplit("/", 1)[1]]
        return key, r

    def check(self, op_id, answer, status=None, error=None):
        """Validates answer (status, headers, body) for op_id; returns the parsed body."""
        st, headers, body = answer
        if status is not None:
            self.assertEqual(st, status, "%s: %r" % (op_id, body[:300]))
        key, r = self.response_spec(op_id, st)
        self.seen.add((op_id, key))
        ctype = headers.get("content-type", "").split(";")[0]
        self.assertIn(ctype, r["content"], "%s %d: content type %s" % (op_id, st, ctype))
        if ctype != "application/json":
            return body.decode()
        doc = json.loads(body)
        schema = r["content"][ctype]["schema"]
        jsonschema.Draft4Validator(schema, resolver=self.resolver).validate(doc)
        if error is not None:
            self.assertEqual(doc.get("error"), error, doc)
        return doc

    def call(self, op_id, method, path, body=None, headers=None, port=None, **kw):
        return self.check(op_id, request(port or self.host.port, method, path, body, headers),
                          **kw)

    def admin(self, event, body, token=ADMIN_TOKEN, port=None, client=None, method="PUT",
              path=None):
        h = {"Authorization": "Bearer " + token} if token else {}
        if client:
            h["X-Forwarded-For"] = client
        return request(port or self.host.port, method, path or "/admin/events/" + event, body, h)

    def admin_op(self, op, event="ev", body=None, **kw):
        """One of ADMIN_OPS on event (listEvents names none)."""
        suffix = {"pauseEvent": "/pause", "resumeEvent": "/resume"}.get(op, "")
        path = "/admin/events" if op == "listEvents" else "/admin/events/" + event + suffix
        return self.admin(event, body, method=OPS[op][0], path=path, **kw)

    def limited(self, op_id, path, headers, n=40):
        """n reads at once: the first ones pass, then 429 rate_limited; each is checked."""
        answers = pipeline(self.host.port, "GET", path, n, headers)
        for a in answers:
            self.check(op_id, a)
        self.assertEqual(answers[-1][0], 429, answers[-1])
        self.check(op_id, answers[-1], 429, "rate_limited")

    # ---- the cases, in order: healthy, NATS stalled, Redis down ----

    def test_all_documented_responses(self):
        self.healthy()
        self.orders()
        self.life()
        self.other_listeners()
        self.parse_level()
        self.connection_cap()
        self.nats_stalled()
        self.redis_down()
        missing = sorted(k for op in self.ops for k in
                         ((op, s) for s in self.ops[op][2]["responses"])
                         if k not in self.seen and k not in SKIPPED)
        self.assertEqual(missing, [], "documented but never produced")
        print("responses checked: %d; skipped (need a fault): %s" % (
            len(self.seen), "; ".join("%s %s: %s" % (k + (v,)) for k, v in sorted(SKIPPED.items()))))

    def healthy(self):
        self.check("getHealth", request(self.host.port, "GET", "/healthz"), 200)
        for ev, stock in (("ev", 3), ("few", 1), ("big", 100), ("slow", 10)):
            self.check("putEvent", self.admin(ev, json.dumps({"stock": stock})), 200)
        # --max-events 4: a fifth event is refused, an existing one can still be reset.
        self.check("putEvent", self.admin("fifth", '{"stock":1}'), 409, "too_many_events")
        self.check("putEvent", self.admin("big", '{"stock":100}'), 409, "event_exists")
        self.check("putEvent", self.admin("big?reset=1", '{"stock":100}'), 200)
        self.check("putEvent", self.admin("ev", '{"stock":-1}'), 400, "bad_request")
        self.check("putEvent", self.admin("bad!name", '{"stock":1}'), 400, "bad_request")
        self.check("putEvent", self.admin("ev", '{"stock":3}', token=None), 401, "unauthorized")
        # Failed authentications from one client address: 10, then 429 even for the token.
        guesser = "198.51.100.1"
        for _ in range(10):
            self.check("putEvent", self.admin("ev", '{"stock":3}', token="wrong-token-0123456",
                                              client=guesser), 401, "unauthorized")
        self.check("putEvent", self.admin("ev", '{"stock":3}', token="wrong-token-0123456",
                                          client=guesser), 429, "rate_limited")
        self.check("putEvent", self.admin("ev", '{"stock":3}', client=guesser), 429,
                   "rate_limited")
        for op in ADMIN_OPS:
            self.check(op, self.admin_op(op, body='{"stock":3}', token=None), 401, "unauthorized")
            self.check(op, self.admin_op(op, body='{"stock":3}', client=guesser), 429,
                       "rate_limited")
        # The hosts see the new generation within ~0.5 s.
        wait_until(lambda: request(self.host.port, "GET", "/v1/events/ev")[0] == 200, 5)

        self.sold = self.call("snatch", "POST", "/v1/events/ev/snatch?user=alice", status=200)
        self.call("snatch", "POST", "/v1/events/ev/snatch?user=alice", status=409,
                  error="limit_reached")
        self.call("snatch", "POST", "/v1/events/ev/snatch", headers={"X-User-Id": "bob"},
                  status=200)
        self.call("snatch", "POST", "/v1/events/ev/snatch?user=carol", status=200)
        self.call("snatch", "POST", "/v1/events/ev/snatch?user=dave", status=409,
                  error="sold_out")
        self.call("snatch", "POST", "/v1/events/few/snatch?user=erin&qty=2", status=409,
                  error="insufficient_stock")
        self.call("snatch", "POST", "/v1/events/ev/snatch", status=400, error="bad_request")
        self.call("snatch", "POST", "/v1/events/ev/snatch?user=bad!user", status=400,
                  error="bad_request")
        self.call("snatch", "POST", "/v1/events/big/snatch?user=x&qty=0", status=400,
                  error="bad_request")
        self.call("snatch", "POST", "/v1/events/nosuch/snatch?user=x", status=404,
                  error="unknown_event")
        self.call("snatch", "POST", "/v1/events/big/snatch?user=blocked", status=451,
                  error="blocked")
        self.call("snatch", "POST", "/v1/events/big/snatch?user=crash", status=500,
                  error="policy_error")
        statuses = [self.call("snatch", "POST", "/v1/events/big/snatch?user=bot")
                    for _ in range(30)]
        self.assertIn("rate_limited", [d.get("error") for d in statuses])
        self.seen_status("snatch", 429)
        # Without --allow-query-user ?user= is refused; X-User-Id from a peer that is not a
        # trusted proxy is ignored (no buyer).
        self.call("snatch", "POST", "/v1/events/big/snatch?user=x", port=self.strict.port,
                  status=400, error="bad_request")
        self.call("snatch", "POST", "/v1/events/big/snatch", headers={"X-User-Id": "bob"},
                  port=self.strict.port, status=400, error="bad_request")

        ev = self.call("getEvent", "GET", "/v1/events/ev", status=200)
        self.assertEqual((ev["sold"], ev["status"]), (3, "sold_out"))
        self.live_admin()
        self.call("getEvent", "GET", "/v1/events/bad!name", status=400, error="bad_request")
        self.call("getEvent", "GET", "/v1/events/nosuch", status=404, error="unknown_event")
        self.limited("getEvent", "/v1/events/ev", {"X-Forwarded-For": "203.0.113.1"}, n=240)

        text = self.call("getMetrics", "GET", "/metrics", status=200)
        types = check_prometheus(text)
        self.assertEqual(types.get("snatch_http_requests_total"), "counter")
        self.assertEqual(types.get("snatch_http_request_duration_seconds"), "histogram")
        for op, method in WRONG_METHOD.items():
            path = OPS[op][1]
            self.call(op, method, path, body="" if method in ("POST", "PUT") else None,
                      status=405, error="method_not_allowed")

    def live_admin(self):
        """PATCH, pause, resume, list: every answer of their own."""
        d = self.check("patchEvent", self.admin_op("patchEvent", "big", '{"stock":120}'), 200)
        self.assertEqual((d["stock"], d["paused"]), (120, False))
        self.check("patchEvent", self.admin_op("patchEvent", "big", '{"per_user_limit":2}'), 200)
        for bad in ('{}', '{"stock":-1}', 'nope', '{"stock":1,"x":1}'):
            self.check("patchEvent", self.admin_op("patchEvent", "big", bad), 400, "bad_request")
        self.check("patchEvent", self.admin_op("patchEvent", "bad!name", '{"stock":1}'), 400,
                   "bad_request")
        self.check("patchEvent", self.admin_op("patchEvent", "nosuch", '{"stock":1}'), 404,
                   "unknown_event")
        self.check("patchEvent", self.admin_op("patchEvent", "ev", '{"stock":2}'), 409,
                   "stock_below_sold")
        for op in ("pauseEvent", "resumeEvent"):
            self.check(op, self.admin_op(op, "nosuch"), 404, "unknown_event")
            self.check(op, self.admin_op(op, "bad!name"), 400, "bad_request")
        d = self.check("pauseEvent", self.admin_op("pauseEvent", "big"), 200)
        self.assertTrue(d["paused"])
        self.call("snatch", "POST", "/v1/events/big/snatch?user=pz", status=409, error="paused")
        ev = self.call("getEvent", "GET", "/v1/events/big", status=200)
        self.assertEqual(ev["status"], "paused")
        d = self.check("resumeEvent", self.admin_op("resumeEvent", "big"), 200)
        self.assertFalse(d["paused"])
        d = self.check("listEvents", self.admin_op("listEvents"), 200)
        self.assertEqual([e["event"] for e in d["events"]], ["big", "ev", "few", "slow"])

    def orders(self):
        """Order look-ups answer only to their buyer or the admin token."""
        oid = self.sold["order_id"]
        path = "/v1/orders/" + oid
        rec = self.call("getOrder", "GET", path + "?user=alice", status=200)
        self.assertEqual((rec["order_id"], rec["user"]), (oid, "alice"))
        self.call("getOrder", "GET", path, headers={"X-User-Id": "alice"}, status=200)
        self.call("getOrder", "GET", path, headers={"Authorization": "Bearer " + ADMIN_TOKEN},
                  status=200)
        # Another buyer's order is answered like a missing one.
        self.call("getOrder", "GET", path + "?user=bob", status=404, error="unknown_order")
        self.call("getOrder", "GET", "/v1/orders/0000000000000-0000000000-ev?user=alice",
                  status=404, error="unknown_order")
        self.call("getOrder", "GET", path, status=403, error="forbidden")
        self.call("getOrder", "GET", path, headers={"X-User-Id": "alice"},
                  port=self.strict.port, status=403, error="forbidden")
        self.call("getOrder", "GET", "/v1/orders/not-an-id?user=alice", status=400,
                  error="bad_request")
        self.call("getOrder", "GET", path + "?user=bad!user", status=400, error="bad_request")
        self.call("getOrder", "GET", path + "?user=alice", port=self.strict.port, status=400,
                  error="bad_request")
        self.call("getOrder", "GET", path, headers={"Authorization": "Bearer wrong-token-01234",
                                                    "X-Forwarded-For": "198.51.100.2"},
                  status=401, error="unauthorized")
        self.limited("getOrder", path, {"X-User-Id": "reader1"})
        # A record in neither stored form (compact or JSON): the admin is told, a buyer is not.
        bad = "0000000000001-0000000001-ev"
        self.redis.cmd("HSET", "{ev}:orders", bad, "not a record")
        self.call("getOrder", "GET", "/v1/orders/" + bad,
                  headers={"Authorization": "Bearer " + ADMIN_TOKEN}, status=500, error="internal")
        self.redis.cmd("HDEL", "{ev}:orders", bad)

        upath = "/v1/events/ev/users/alice/orders"
        mine = self.call("getUserOrders", "GET", upath + "?user=alice", status=200)
        self.assertEqual([o["order_id"] for o in mine["orders"]], [oid])
        self.call("getUserOrders", "GET", upath,
                  headers={"Authorization": "Bearer " + ADMIN_TOKEN}, status=200)
        none = self.call("getUserOrders", "GET", "/v1/events/ev/users/dave/orders",
                         headers={"X-User-Id": "dave"}, status=200)
        self.assertEqual(none["orders"], [])
        self.call("getUserOrders", "GET", upath + "?user=bob", status=403, error="forbidden")
        self.call("getUserOrders", "GET", upath, status=403, error="forbidden")
        self.call("getUserOrders", "GET", "/v1/events/ev/users/bad!user/orders?user=alice",
                  status=400, error="bad_request")
        self.call("getUserOrders", "GET", upath + "?user=alice", port=self.strict.port,
                  status=400, error="bad_request")
        self.call("getUserOrders", "GET", upath,
                  headers={"Authorization": "Bearer wrong-token-01234",
                           "X-Forwarded-For": "198.51.100.3"}, status=401, error="unauthorized")
        self.limited("getUserOrders", "/v1/events/ev/users/reader2/orders",
                     {"X-User-Id": "reader2"})

    def pay(self, oid, token=PAY_TOKEN, port=None, client=None):
        h = {"Authorization": "Bearer " + token} if token else {}
        if client:
            h["X-Forwarded-For"] = client
        return request(port or self.holder.port, "POST", "/v1/orders/%s/pay" % oid, None, h)

    def life(self):
        """Held orders: pay, cancel, idempotent snatch retries."""
        hp = self.holder.port  # sells event big (the --max-events of h1 are taken)
        key = {"Idempotency-Key": "k-0001"}
        a = self.call("snatch", "POST", "/v1/events/big/snatch?user=ann", headers=key, port=hp,
                      status=200)
        self.assertEqual(a["status"], "held")
        again = self.call("snatch", "POST", "/v1/events/big/snatch?user=ann", headers=key,
                          port=hp, status=200)
        self.assertEqual(again["order_id"], a["order_id"])
        self.call("snatch", "POST", "/v1/events/big/snatch?user=ann&qty=2", headers=key,
                  port=hp, status=422, error="idempotency_key_reused")
        self.call("snatch", "POST", "/v1/events/big/snatch?user=ann",
                  headers={"Idempotency-Key": "k" * 129}, port=hp, status=400,
                  error="bad_request")
        oid = a["order_id"]
        v = self.call("getOrder", "GET", "/v1/orders/%s?user=ann" % oid, port=hp, status=200)
        self.assertEqual(v["status"], "held")
        self.check("payOrder", self.pay(oid, token=None), 401, "unauthorized")
        self.check("payOrder", self.pay("not-an-id"), 400, "bad_request")
        self.check("payOrder", self.pay("0000000000000-0000000000-big"), 404, "unknown_order")
        self.check("payOrder", self.pay(oid, port=self.host.port), 403, "forbidden")
        self.assertEqual(self.check("payOrder", self.pay(oid), 200)["status"], "paid")
        self.check("payOrder", self.pay(oid), 200)
        v = self.call("getOrder", "GET", "/v1/orders/%s?user=ann" % oid, port=hp, status=200)
        self.assertEqual(v["status"], "paid")
        for _ in range(10):
            self.check("payOrder", self.pay(oid, token="wrong-token-0123456",
                                            client="198.51.100.9"), 401, "unauthorized")
        self.check("payOrder", self.pay(oid, client="198.51.100.9"), 429, "rate_limited")
        path = "/v1/orders/" + oid
        self.call("cancelOrder", "DELETE", path + "?user=ann", port=hp, status=409,
                  error="order_paid")
        b = self.call("snatch", "POST", "/v1/events/big/snatch?user=bea", port=hp, status=200)
        bpath = "/v1/orders/" + b["order_id"]
        self.call("cancelOrder", "DELETE", bpath + "?user=ann", port=hp, status=403,
                  error="forbidden")
        self.call("cancelOrder", "DELETE", bpath, port=hp, status=403, error="forbidden")
        self.call("cancelOrder", "DELETE", bpath + "?user=bea", port=self.strict.port,
                  status=400, error="bad_request")
        self.call("cancelOrder", "DELETE", "/v1/orders/nope?user=bea", port=hp, status=400,
                  error="bad_request")
        self.call("cancelOrder", "DELETE", "/v1/orders/0000000000000-0000000000-big?user=bea",
                  port=hp, status=404, error="unknown_order")
        c = self.call("cancelOrder", "DELETE", bpath + "?user=bea", port=hp, status=200)
        self.assertEqual(c["status"], "cancelled")
        self.check("payOrder", self.pay(b["order_id"]), 409, "order_cancelled")
        self.life_held = [self.call("snatch", "POST", "/v1/events/big/snatch?user=cy%d" % i,
                                    port=hp, status=200)["order_id"] for i in range(2)]
        # A reset waits until no order is held (their release would land in the new sale).
        # Their acknowledged ids leave {big}:pending on the host's next flush; until then the
        # reset is refused as orders_pending, which is checked first.
        wait_until(lambda: self.redis.cmd("HLEN", "{big}:pending") == 0, 10,
                   what="acknowledged orders deleted from {big}:pending")
        self.check("putEvent", self.admin("big?reset=1", '{"stock":100}', port=hp), 409,
                   "orders_held")

    def other_listeners(self):
        """--admin-listen: each route answers 404 not_found on the listener it does not live on;
        without an admin token, admin answers 403."""
        strict, admin = self.strict.port, self.admin_port
        self.check("putEvent", self.admin("ev", '{"stock":1}', port=admin), 403, "forbidden")
        self.check("putEvent", self.admin("ev", '{"stock":1}', port=strict), 404, "not_found")
        for op in ADMIN_OPS:
            self.check(op, self.admin_op(op, body='{"stock":1}', port=admin), 403, "forbidden")
            self.check(op, self.admin_op(op, body='{"stock":1}', port=strict), 404, "not_found")
        self.call("getMetrics", "GET", "/metrics", port=strict, status=404, error="not_found")
        check_prometheus(self.call("getMetrics", "GET", "/metrics", port=admin, status=200))
        self.call("getHealth", "GET", "/healthz", port=admin, status=200)
        for op in ("snatch", "getEvent", "getOrder", "getUserOrders", "payOrder", "cancelOrder"):
            method, path = OPS[op]
            self.call(op, method, path, port=admin, status=404, error="not_found")

    def seen_status(self, op, status):
        self.assertIn((op, str(status)), self.seen)

    def parse_level(self):
        """Errors of the HTTP layer: on every operation's path."""
        port = self.host.port
        for op, (method, path) in OPS.items():
            line = ("%s %s HTTP/1.1\r\nHost: a\r\n" % (method, path)).encode()
            bare = ("%s %s HTTP/1.1\n" % (method, path)).encode()
            self.check(op, raw(port, line + b"X-Pad: " + b"a" * (MAX_HEAD * 2) +
                               b"\r\n\r\n"), 431, "header_too_large")
            self.check(op, raw(port, line + b"Content-Length: %d\r\n\r\n" %
                               (MAX_BODY * 4)), 413, "body_too_large")
            self.check(op, raw(port, ("%s %s HTTP/1.2\r\nHost: a\r\n\r\n" % (method, path))
                               .encode()), 505, "http_version_not_supported")
            # A head that never ends: answered 408 after --header-timeout-ms.
            self.check(op, raw(port, line), 408, "timeout")
            for what, shape in BAD_HEADS.items():
                data = shape.replace(b"{line}", line).replace(b"{bare}", bare)
                with self.subTest(op=op, shape=what):
                    self.check(op, raw(port, data), 400, "bad_request")

    def connection_cap(self):
        """--max-connections-per-client 1, one connection held mid-request: every new one is
        answered 503 too_many_connections on accept, before its request is read. The test reads
        that answer without sending the request (bytes sent to a socket the host closes unread
        could turn the close into a reset that discards the answer), so the same answer is
        checked against each operation's 503."""
        port = self.capped.port
        holder = None
        deadline = time.time() + 10
        while holder is None and time.time() < deadline:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            buf = b""
            try:
                answer = None
                while answer is None:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                    answer, _ = parse_answer(buf)
            except OSError:
                answer = None
            if answer is not None and answer[0] == 200:
                s.sendall(b"GET /healthz HTTP/1.1\r\n")  # mid-request from now on
                holder = s
            else:  # refused while an earlier connection was still closing
                s.close()
                time.sleep(0.05)
        self.assertIsNotNone(holder, "no connection admitted by the capped host")
        try:
            for op in OPS:
                self.check(op, raw(port, b""), 503, "too_many_connections")
        finally:
            holder.close()

    def nats_stalled(self):
        """JetStream stops answering (nats-server SIGSTOPped): a sale is 202, the order stays
        pending in Redis, and resetting that event is refused until it is published."""
        self.nats.proc.sigstop()  # in effect before the sale, or NATS may still ack it
        try:
            d = self.call("snatch", "POST", "/v1/events/slow/snatch?user=patient", status=202)
            self.assertEqual(d["status"], "pending")
            self.check("putEvent", self.admin("slow?reset=1", '{"stock":10}'), 409,
                       "orders_pending")
            # A transition decided in Redis and not acknowledged: 202, republished later.
            paid, cancelled = self.life_held
            self.assertEqual(self.check("payOrder", self.pay(paid), 202)["status"], "paid")
            self.call("cancelOrder", "DELETE", "/v1/orders/%s?user=cy1" % cancelled,
                      port=self.holder.port, status=202)
        finally:
            self.nats.proc.send_signal(signal.SIGCONT)

    def redis_down(self):
        self.redis.stop()
        wait_until(lambda: request(self.host.port, "GET", "/healthz")[0] == 503, 15,
                   what="healthz 503")
        h = self.check("getHealth", request(self.host.port, "GET", "/healthz"), 503)
        self.assertEqual((h["status"], h["redis"]), ("degraded", False))
        self.call("snatch", "POST", "/v1/events/big/snatch?user=late", status=503,
                  error="unavailable")
        self.call("getEvent", "GET", "/v1/events/big", status=503, error="unavailable")
        self.check("putEvent", self.admin("big?reset=1", '{"stock":5}'), 503, "unavailable")
        for op in ADMIN_OPS:
            self.check(op, self.admin_op(op, "big", '{"stock":5}'), 503, "unavailable")
        self.call("getOrder", "GET", "/v1/orders/0000000000000-0000000000-ev?user=alice",
                  status=503, error="unavailable")
        self.call("getUserOrders", "GET", "/v1/events/ev/users/alice/orders?user=alice",
                  status=503, error="unavailable")
        wait_until(lambda: request(self.holder.port, "GET", "/healthz")[0] == 503, 15,
                   what="holder healthz 503")
        oid = self.life_held[0]
        self.check("payOrder", self.pay(oid), 503, "unavailable")
        self.call("cancelOrder", "DELETE", "/v1/orders/%s?user=cy0" % oid,
                  port=self.holder.port, status=503, error="unavailable")

    def test_spec_has_no_empty_values(self):
        """A comma inside an unquoted flow-mapping value (`{description: a, b}`) silently makes
        a key `b` with no value: no null may appear anywhere in the spec."""
        def nulls(x, where):
            if isinstance(x, dict):
                return [n for k, v in x.items() for n in nulls(v, where + "/" + str(k))]
            if isinstance(x, list):
                return [n for i, v in enumerate(x) for n in nulls(v, "%s/%d" % (where, i))]
            return [where] if x is None else []
        self.assertEqual(nulls(self.spec, ""), [])

    def test_readme_endpoints_in_spec(self):
        """README's API table and the spec agree: the same endpoints; every status a row names
        is in the spec for that operation; and every status of an operation's own (OWN_STATUSES:
        not one of the generic answers README gives for all endpoints below the table) is named
        in its row."""
        with open(os.path.join(SOURCE_DIR, "README.md")) as f:
            readme = f.read()
        rows = {}
        for line in readme.splitlines():
            m = re.match(r"^\| `(GET|POST|PUT|PATCH|DELETE) (/[^ `]*)", line)
            if m:
                # Statuses, not rates ("100 reads/s", "burst 200").
                rows[m.groups()] = set(re.findall(
                    r"(?<!burst )(?<!past )\b([1-5]\d\d)\b(?!/s| reads)", line))
        specd = {(m, p): op for m, p, op in self.ops.values()}
        self.assertEqual(set(rows), set(specd))
        for key, named in rows.items():
            listed = set(specd[key]["responses"])
            self.assertEqual(named - listed, set(), "README names, the spec lacks: %s" % (key,))
            own = {s for s in listed if s in OWN_STATUSES}
            self.assertEqual(own - named, set(), "the spec lists, README lacks: %s" % (key,))


if __name__ == "__main__":
    unittest.main(verbosity=2)
