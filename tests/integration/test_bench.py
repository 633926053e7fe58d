#!/usr/bin/env python3
"""Integration test of snatch-bench against a tiny in-test HTTP server with a known pattern.

The server (threads, 127.0.0.1, free port) numbers the requests it processes globally: every 3rd
gets 409 {"error":"sold_out"}, the others 200 with a unique order id; every 7th answer carries
"Connection: close" and the server then drops whatever else the client pipelined. So the counts
snatch-bench reports per status and error code are known exactly, with and without pipelining,
and the buyers the server saw must be exactly u0..u(n-1) (requests cut by a close are resent with
their buyer). Further cases plant a duplicate order id and a double sale, which the oracle must
flag, and serve GET /v1/events/e1 for --event-url.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import unittest
from urllib.parse import parse_qs, urlsplit

BUILD = os.environ.get("SNATCH_BUILD_DIR", os.path.join(os.path.dirname(__file__), "../../build"))
BENCH = os.path.join(BUILD, "snatch-bench")


class PatternServer:
    """HTTP/1.1 keep-alive server answering by the global request number."""

    def __init__(self, close_every=7, duplicate_ids=False):
        self.close_every = close_every
        self.duplicate_ids = duplicate_ids
        self.lock = threading.Lock()
        self.count = 0
        self.sold = 0
        self.users = []
        self.peers = set()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.threads = []
        self.running = True
        self.acceptor = threading.Thread(target=self.accept_loop, daemon=True)
        self.acceptor.start()

    def url(self, path="/v1/events/e1/snatch"):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def stop(self):
        self.running = False
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            pass
        self.acceptor.join(5)
        self.sock.close()
        for t in self.threads:
            t.join(5)

    def accept_loop(self):
        while self.running:
            conn, peer = self.sock.accept()
            self.peers.add(peer[0])
            if not self.running:
                conn.close()
                break
            t = threading.Thread(target=self.serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def serve(self, conn):
        conn.settimeout(20)
        f = conn.makefile("rb")
        try:
            for _ in range(100000):
                if not self.one_request(conn, f):
                    break
        except OSError:
            pass
        finally:
            self.linger(conn, f)

    @staticmethod
    def linger(conn, f):
        """Closes like nginx's lingering close: closing with unread pipelined requests would
        send a reset that can destroy the answer sent just before."""
        try:
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(2)
            for _ in range(1000):
                if not f.read1(65536):
                    break
        except OSError:
            pass
        f.close()
        conn.close()

    def one_request(self, conn, f):
        line = f.readline(8192)
        if not line:
            return False
        method, target, _ = line.decode().split(" ", 2)
        headers = {}
        while True:
            h = f.readline(8192).decode()
            if h in ("\r\n", "\n", ""):
                break
            k, v = h.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        body_len = int(headers.get("content-length", "0"))
        if body_len:
            f.read(body_len)
        parts = urlsplit(target)
        if method == "GET" and parts.path == "/v1/events/e1":
            with self.lock:
                body = json.dumps({"stock": 1000, "sold": self.sold,
                                   "remaining": 1000 - self.sold})
            conn.sendall(self.response(200, body, False))
            return True
        user = headers.get("x-user-id") or parse_qs(parts.query).get("user", ["?"])[0]
        with self.lock:
            self.count += 1
            k = self.count
            self.users.append(user)
            if k % 3 != 0:
                self.sold += 1
        close = self.close_every and k % self.close_every == 0
        if k % 3 == 0:
            status, body = 409, '{"error":"sold_out","detail":"none left"}'
        else:
            oid = "o1" if self.duplicate_ids else "o%d" % k
            status, body = 200, json.dumps({"order_id": oid, "event": "e1", "user": user,
                                            "qty": 1})
        conn.sendall(self.response(status, body, close))
        return not close

    @staticmethod
    def response(status, body, close):
        reason = {200: "OK", 409: "Conflict"}[status]
        head = "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (
            status, reason, len(body))
        if close:
            head += "Connection: close\r\n"
        return (head + "\r\n" + body).encode()


def run_bench(args, timeout=60):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "r.json")
        p = subprocess.run([BENCH, "--quiet", "--json", out] + args, capture_output=True,
                           text=True, timeout=timeout)
        result = None
        if os.path.exists(out):
            with open(out) as f:
                result = json.load(f)
        return p, result


class BenchTest(unittest.TestCase):
    def setUp(self):
        self.servers = []

    def tearDown(self):
        for s in self.servers:
            s.stop()

    def server(self, **kw):
        s = PatternServer(**kw)
        self.servers.append(s)
        return s

    def check_exact(self, extra):
        s = self.server()
        p, r = run_bench(["-c", "4", "-t", "2", "-n", "600", "-m", "POST", "--check"] + extra +
                         [s.url()])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(r["requests"], 600)
        self.assertEqual(r["answers"], 600)
        self.assertEqual(r["status"], {"200": 400, "409": 200})
        self.assertEqual(r["errors"], {"sold_out": 200})
        self.assertEqual(r["conn_errors"], 0)
        self.assertEqual(r["timeouts"], 0)
        self.assertEqual(r["unanswered"], 0)
        self.assertEqual(r["oracle"]["ok"], 400)
        self.assertEqual(r["oracle"]["distinct_ids"], 400)
        self.assertEqual(r["oracle"]["failures"], 0)
        self.assertEqual(s.count, 600)
        self.assertEqual(sorted(s.users), sorted("u%d" % i for i in range(600)))
        self.assertIn("oracle: ok duplicate order ids", p.stdout)
        lat = r["latency_us"]
        self.assertTrue(0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"])
        return r

    def test_counts_exact(self):
        self.check_exact([])

    def test_counts_exact_pipelined(self):
        r = self.check_exact(["--pipeline", "4"])
        self.assertGreater(r["resent"], 0)  # requests cut by "Connection: close" were resent

    def test_user_header_and_offset(self):
        s = self.server(close_every=0)
        p, r = run_bench(["-c", "3", "-n", "30", "--user-header", "--user-offset", "1000",
                          s.url()])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(sorted(s.users), sorted("u%d" % i for i in range(1000, 1030)))

    def test_open_loop_and_sources(self):
        s = self.server()
        p, r = run_bench(["-c", "6", "-n", "200", "--rate", "2000", "--pipeline", "2",
                          "--source", "1-3", "-m", "POST", s.url()])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(r["answers"], 200)
        self.assertEqual(r["status"], {"200": 134, "409": 66})
        self.assertEqual(r["unsent"], 0)
        self.assertEqual(s.peers, {"127.0.0.1", "127.0.0.2", "127.0.0.3"})

    def test_duplicate_order_ids_fail(self):
        s = self.server(duplicate_ids=True)
        p, r = run_bench(["-c", "2", "-n", "30", "--check", s.url()])
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("oracle: FAIL duplicate order ids: 19", p.stdout)
        self.assertEqual(r["oracle"]["duplicate_ids"], 19)

    def test_double_sale_fails(self):
        s = self.server(close_every=0)
        p, r = run_bench(["-c", "2", "-n", "60", "--users", "3", "--check", s.url()])
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertRegex(p.stdout, r"oracle: FAIL buyers over limit: [1-3]\n", p.stderr)
        self.assertEqual(r["oracle"]["distinct_ids"], 40)

    def test_event_url(self):
        s = self.server()
        p, r = run_bench(["-c", "4", "-n", "90", "--event-url", s.url("/v1/events/e1"),
                          s.url()])
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("oracle: ok oversell (sold > stock)", p.stdout)
        self.assertIn("oracle: ok sold below 200s", p.stdout)
        self.assertEqual(r["oracle"]["event"]["sold_delta"], 60)

    def test_unreachable_server_ends(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there now
        p, r = run_bench(["-c", "2", "-n", "10", "--timeout", "500",
                          "http://127.0.0.1:%d/" % port])
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertGreater(r["connect_errors"], 0)
        self.assertEqual(r["answers"], 0)

    def test_usage(self):
        p = subprocess.run([BENCH, "--help"], capture_output=True, text=True, timeout=10)
        self.assertEqual(p.returncode, 0)
        for opt in ("--pipeline", "--rate", "--users", "--source", "--check", "--event-url",
                    "--db", "--wait-db", "--json", "--user-header"):
            self.assertIn(opt, p.stdout)
        p = subprocess.run([BENCH, "-n", "1", "-d", "1", "http://127.0.0.1:1/"],
                           capture_output=True, text=True, timeout=10)
        self.assertEqual(p.returncode, 2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
