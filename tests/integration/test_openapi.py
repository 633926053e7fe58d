"""docs/openapi.yaml against a running snatch-host: every response the spec lists is produced
(except those that need a fault inside the host, in SKIPPED), each body is validated against its
schema (Debian python3-jsonschema), and any status the spec does not list for that operation
fails the test. Real redis-server and nats-server; two short faults are staged on them (NATS
stopped with SIGSTOP for 202 and 409 orders_pending, Redis stopped for 503)."""
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
                     RedisServer, TempDir, wait_until)

SPEC_PATH = os.path.join(SOURCE_DIR, "docs", "openapi.yaml")
# Responses that only a fault inside the host produces; everything else must be exercised.
SKIPPED = {
    **{(op, "500"): "out of memory in the host" for op in (
        "getEvent", "putEvent", "getOrder", "getUserOrders", "getMetrics",
        "getHealth")},
    ("getMetrics", "503"): "out of memory while rendering the metrics",
}
OPS = {  # operationId -> (method, a concrete path)
    "snatch": ("POST", "/v1/events/ev/snatch?user=zz"),
    "getEvent": ("GET", "/v1/events/ev"),
    "putEvent": ("PUT", "/admin/events/ev"),
    "getOrder": ("GET", "/v1/orders/0000000000000-0000000000-ev"),
    "getUserOrders": ("GET", "/v1/events/ev/users/zz/orders"),
    "getMetrics": ("GET", "/metrics"),
    "getHealth": ("GET", "/healthz"),
}
WRONG_METHOD = {"snatch": "GET", "getEvent": "POST", "putEvent": "POST", "getOrder": "DELETE",
                "getUserOrders": "POST", "getMetrics": "PUT", "getHealth": "POST"}
MAX_HEAD = 1024
MAX_BODY = 1024
# The policy used: the default one, plus a refusal of its own choosing (451) for one buyer and
# a failing admit() for another (500 policy_error).
BLOCKED = ("  if req.user == 'blocked' then return false, 451, 'blocked', 'test policy' end\n"
           "  if req.user == 'crash' then error('test policy fails') end\n")


def raw(port, data, timeout=10.0):
    """Sends bytes, reads until the server closes; returns (status, headers, body bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, v in
               (line.split(":", 1) for line in lines[1:] if ":" in line)}
    n = int(headers.get("content-length", len(body)))
    return status, headers, body[:n]


def request(port, method, path, body=None, headers=None):
    h = {"Host": "127.0.0.1", "Connection": "close"}
    h.update(headers or {})
    data = body.encode() if isinstance(body, str) else (body or b"")
    if body is not None:
        h["Content-Length"] = str(len(data))
    head = "%s %s HTTP/1.1\r\n" % (method, path) + "".join(
        "%s: %s\r\n" % kv for kv in h.items()) + "\r\n"
    return raw(port, head.encode() + data)


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
        cls.host = Host(cls.tmp.path, cls.redis.port, cls.nats.url, policy=policy, threads=1,
                        extra=opts).start()
        # A host without --admin-token-file, for 403.
        cls.noadmin = Host(cls.tmp.path, cls.redis.port, cls.nats.url, policy=policy, threads=1,
                           host_id="h2", extra=opts)
        i = cls.noadmin.argv.index("--admin-token-file")
        del cls.noadmin.argv[i:i + 2]
        cls.noadmin.start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.nats.proc.send_signal(signal.SIGCONT)
        except Exception:
            pass
        for p in (cls.noadmin, cls.host):
            p.stop()
        logs = [p.proc.log_text() for p in (cls.noadmin, cls.host) if p.proc is not None]
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

    def call(self, op_id, method, path, body=None, headers=None, **kw):
        return self.check(op_id, request(self.host.port, method, path, body, headers), **kw)

    def admin(self, event, body, token=ADMIN_TOKEN, port=None):
        return request(port or self.host.port, "PUT", "/admin/events/" + event, body,
                       {"Authorization": "Bearer " + token} if token else None)

    # ---- the cases, in order: healthy, NATS stalled, Redis down ----

    def test_all_documented_responses(self):
        self.healthy()
        self.parse_level()
        self.nats_stalled()
        self.redis_down()
        missing = sorted(k for op in self.ops for k in
                         ((op, s) for s in self.ops[op][2]["responses"])
                         if k not in self.seen and k not in SKIPPED)
        self.assertEqual(missing, [], "documented but never produced")
        print("responses checked: %d; skipped (need a fault): %s" % (
            len(self.seen), ", ".join("%s %s" % k for k in sorted(SKIPPED))))

    def healthy(self):
        self.check("getHealth", request(self.host.port, "GET", "/healthz"), 200)
        for ev, stock in (("ev", 3), ("few", 1), ("big", 100), ("slow", 10)):
            self.check("putEvent", self.admin(ev, json.dumps({"stock": stock})), 200)
        self.check("putEvent", self.admin("ev", '{"stock":3}', token="wrong"), 401,
                   "unauthorized")
        self.check("putEvent", self.admin("ev", '{"stock":-1}'), 400, "bad_request")
        self.check("putEvent", self.admin("bad!name", '{"stock":1}'), 400, "bad_request")
        self.check("putEvent", self.admin("ev", '{"stock":1}', port=self.noadmin.port), 403,
                   "forbidden")
        # The hosts see the new generation within ~0.5 s.
        wait_until(lambda: request(self.host.port, "GET", "/v1/events/ev")[0] == 200, 5)

        sold = self.call("snatch", "POST", "/v1/events/ev/snatch?user=alice", status=200)
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

        ev = self.call("getEvent", "GET", "/v1/events/ev", status=200)
        self.assertEqual((ev["sold"], ev["status"]), (3, "sold_out"))
        self.call("getEvent", "GET", "/v1/events/bad!name", status=400, error="bad_request")
        self.call("getEvent", "GET", "/v1/events/nosuch", status=404, error="unknown_event")

        rec = self.call("getOrder", "GET", "/v1/orders/" + sold["order_id"], status=200)
        self.assertEqual(rec["user"], "alice")
        self.call("getOrder", "GET", "/v1/orders/0000000000000-0000000000-ev", status=404,
                  error="unknown_order")
        self.call("getOrder", "GET", "/v1/orders/not-an-id", status=400, error="bad_request")

        mine = self.call("getUserOrders", "GET", "/v1/events/ev/users/alice/orders", status=200)
        self.assertEqual([o["order_id"] for o in mine["orders"]], [sold["order_id"]])
        self.call("getUserOrders", "GET", "/v1/events/ev/users/bad!user/orders", status=400,
                  error="bad_request")

        text = self.call("getMetrics", "GET", "/metrics", status=200)
        self.assertIn("# TYPE", text)
        for op, method in WRONG_METHOD.items():
            path = OPS[op][1]
            self.call(op, method, path, body="" if method in ("POST", "PUT") else None,
                      status=405, error="method_not_allowed")

    def seen_status(self, op, status):
        self.assertIn((op, str(status)), self.seen)

    def parse_level(self):
        """Errors of the HTTP layer: on every operation's path."""
        port = self.host.port
        for op, (method, path) in OPS.items():
            line = "%s %s HTTP/1.1\r\nHost: a\r\n" % (method, path)
            self.check(op, raw(port, line.encode() + b"X-Pad: " + b"a" * (MAX_HEAD * 2) +
                               b"\r\n\r\n"), 431, "header_too_large")
            self.check(op, raw(port, line.encode() + b"Content-Length: %d\r\n\r\n" %
                               (MAX_BODY * 4)), 413, "body_too_large")
            self.check(op, raw(port, ("%s %s HTTP/1.2\r\nHost: a\r\n\r\n" % (method, path))
                               .encode()), 505, "http_version_not_supported")
            # A head that never ends: answered 408 after --header-timeout-ms.
            self.check(op, raw(port, line.encode()), 408, "timeout")
            # Request smuggling shape: refused before routing.
            self.check(op, raw(port, line.encode() + b"Content-Length: 1\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400,
                       "bad_request")

    def nats_stalled(self):
        """JetStream stops answering (nats-server SIGSTOPped): a sale is 202, the order stays
        pending in Redis, and resetting that event is refused until it is published."""
        self.nats.proc.send_signal(signal.SIGSTOP)
        try:
            d = self.call("snatch", "POST", "/v1/events/slow/snatch?user=patient", status=202)
            self.assertEqual(d["status"], "pending")
            self.check("putEvent", self.admin("slow", '{"stock":10}'), 409, "orders_pending")
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
        self.check("putEvent", self.admin("big", '{"stock":5}'), 503, "unavailable")
        self.call("getOrder", "GET", "/v1/orders/0000000000000-0000000000-ev", status=503,
                  error="unavailable")
        self.call("getUserOrders", "GET", "/v1/events/ev/users/alice/orders", status=503,
                  error="unavailable")

    def test_readme_endpoints_in_spec(self):
        """Every endpoint of README's API table is in the spec, and nothing else is."""
        with open(os.path.join(SOURCE_DIR, "README.md")) as f:
            readme = f.read()
        listed = set(re.findall(r"^\| `(GET|POST|PUT) (/[^ `]*)", readme, re.M))
        specd = {(m, p) for m, p, _ in self.ops.values()}
        self.assertEqual(listed, specd)


if __name__ == "__main__":
    unittest.main(verbosity=2)
