"""snatch-subscriber against a real nats-server: the stream is pre-filled with orders-fill (a test
helper publishing host-shaped orders), and SQLite must end up holding each order exactly once
whatever happens: duplicates, malformed messages, kill -9, SIGTERM, NATS starting late."""
import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (NatsServer, Subscriber, TempDir, binary, free_port, js_publish,  # noqa: E402
                     wait_until)


def fill(url, count, first=1, event="e1", *extra):
    argv = [binary("orders-fill"), "--nats", url, "--count", str(count), "--first", str(first),
            "--event", event] + list(extra)
    subprocess.run(argv, check=True, timeout=120)


def wait_rows(sub, n, stall, what):
    """Waits until sub has stored n rows, failing only when no row came for stall seconds: how fast
    a loaded machine writes is no concern of the test, a subscriber that stops writing is. The
    whole wait is still bounded (by 2000 rows a second, at worst)."""
    deadline = time.time() + stall + n / 2000.0
    last, last_t = -1, time.time()
    while time.time() < deadline:
        rows = sub.rows()
        if rows >= n:
            return
        if rows != last:
            last, last_t = rows, time.time()
        elif time.time() - last_t > stall:
            break
        time.sleep(0.2)
    raise AssertionError("timed out waiting for %s (%d of %d rows)" % (what, max(last, 0), n))


def count(db, table="orders", where="", args=()):
    con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
    try:
        return con.execute("SELECT count(*) FROM %s %s" % (table, where), args).fetchone()[0]
    finally:
        con.close()


def transactions(port):
    """The subscriber's committed transactions so far (its batch histogram's count), or None."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
        conn.close()
    except OSError:
        return None
    for line in body.splitlines():
        if line.startswith("snatch_subscriber_batch_size_messages_count "):
            return float(line.split()[1])
    return None


class SubscriberTest(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.nats = NatsServer(self.tmp.path).start()
        self.subs = []

    def tearDown(self):
        for s in self.subs:
            s.kill9()
        self.nats.stop()
        self.tmp.cleanup()

    def subscriber(self, batch=None, extra=()):
        s = Subscriber(self.tmp.path, self.nats.url, batch=batch, extra=extra)
        self.subs.append(s)
        return s

    def test_persists_each_order_once(self):
        fill(self.nats.url, 20000)
        fill(self.nats.url, 500, 1)  # same ids, inside the dedup window: not stored again
        fill(self.nats.url, 300, 1, "e1", "--no-msg-id")  # stored again: SQLite must ignore
        s = self.subscriber(batch=700).start()
        wait_until(lambda: s.rows() >= 20000, 60, what="20000 rows")
        time.sleep(0.5)
        self.assertEqual(s.stop(), 0)
        self.assertEqual(s.rows(), 20000)
        self.assertEqual(count(s.db, "orders", "WHERE event=?", ("e1",)), 20000)
        row = s.query("SELECT order_id, event, user, qty, host, created_at, payload FROM orders "
                      "WHERE order_id='1795596636082-0000000007-e1'")[0]
        self.assertEqual(row[1:6], ("e1", "u7", 1, "fill", 1795596636082))
        self.assertIn('"order_id":"1795596636082-0000000007-e1"', row[6])
        self.assertIn("duplicates 300", s.proc.log_text())

    def test_batch_messages(self):
        """A batch (README "The ORDERS stream") is stored record by record; the same orders again
        as single republishes are ignored (SQLite's primary key); a bad record is dead-lettered
        alone, its neighbours stored; a Snatch-Orders that disagrees with the body keeps the
        good records and dead-letters the message."""
        fill(self.nats.url, 0, 1)  # makes the stream

        def rec(n):
            oid = "1795596636082-%010d-e1" % n
            return oid, json.dumps({"order_id": oid, "event": "e1", "user": "u%d" % n, "qty": 1,
                                    "host": "h1", "created_at": 1}, separators=(",", ":"))

        def batch(ids, count=None, extra=(), first=None):
            recs = [rec(n) for n in ids]
            body = "\n".join([r for _, r in recs] + list(extra))
            n = count if count is not None else len(recs) + len(extra)
            msg_id = "%s+%d" % (first or recs[0][0], n)
            ack = js_publish(self.nats.port, "orders.e1", msg_id, {"Snatch-Orders": str(n)}, body)
            self.assertNotIn("error", ack)
            self.assertNotIn("duplicate", ack)

        batch([1, 2, 3])
        for n in (1, 2, 3):  # a reconciler republishing the batch's orders one by one
            oid, body = rec(n)
            self.assertNotIn("error", js_publish(self.nats.port, "orders.e1", oid, {}, body))
        batch([3, 2, 1], first="again")  # another batch holding them all: stored once still
        batch([4, 5], extra=['{"order_id":"bad"}'])
        batch([6, 7], count=5)
        s = self.subscriber().start()
        wait_until(lambda: s.rows() >= 7 and count(s.db, "dead_letters") >= 2, 30,
                   what="7 rows, 2 dead letters")
        time.sleep(0.5)
        self.assertEqual(s.stop(), 0)
        self.assertEqual(s.rows(), 7)
        got = s.query("SELECT order_id, user FROM orders ORDER BY order_id")
        self.assertEqual(got, [(rec(n)[0], "u%d" % n) for n in range(1, 8)])
        dl = s.query("SELECT reason, data FROM dead_letters ORDER BY id")
        self.assertEqual(len(dl), 2)
        self.assertEqual(bytes(dl[0][1]), b'{"order_id":"bad"}')
        self.assertIn("Snatch-Orders: 5", dl[1][0])
        self.assertIn("duplicates 6", s.proc.log_text())

    def test_malformed_goes_to_dead_letters(self):
        fill(self.nats.url, 100, 1)
        for bad in ["not json", "[1,2]", '{"order_id":"x","event":"e1","user":"u","qty":"1"}',
                    '{"order_id":"","event":"e1","user":"u","qty":1}',
                    '{"order_id":"y","event":"e1","user":"u","qty":0}']:
            fill(self.nats.url, 0, 1, "e1", "--raw", bad)
        fill(self.nats.url, 100, 101)
        s = self.subscriber().start()
        wait_until(lambda: s.rows() >= 200, 30, what="200 rows")
        wait_until(lambda: count(s.db, "dead_letters") >= 5, 10, what="5 dead letters")
        self.assertEqual(s.stop(), 0)
        self.assertEqual(s.rows(), 200)
        dl = s.query("SELECT subject, reason, data FROM dead_letters ORDER BY id")
        self.assertEqual(len(dl), 5)
        self.assertEqual(dl[0][0], "orders.e1")
        self.assertIn("not JSON", dl[0][1])
        self.assertEqual(bytes(dl[0][2]), b"not json")
        self.assertIn("qty", dl[2][1])
        # Acknowledged: a restart does not dead-letter them again.
        s2 = self.subscriber().start()
        time.sleep(1.5)
        self.assertEqual(s2.stop(), 0)
        self.assertEqual(count(s.db, "dead_letters"), 5)

    def test_fast_scanner_agrees_with_json_parser(self):
        # The subscriber reads the host's flat orders with its own scanner and leaves anything
        # unusual to jansson: each case pins what must be stored (and how) or dead-lettered.
        good = {
            "v1": ('{"order_id":"v1","event":"e1","user":"u1","qty":2,"host":"h","created_at":5}',
                   ("e1", "u1", 2, "h", 5)),
            "v2": (' { "order_id" : "v2" ,\n"event":"e1",\t"user":"u2","qty":1 }\r\n',
                   ("e1", "u2", 1, None, None)),
            "v3": ('{"order_id":"v3","event":"e1","user":"a\\"b\\u0041","qty":1}',
                   ("e1", 'a"bA', 1, None, None)),
            "v4": ('{"order_id":"v4","event":"e1","user":"\u00e9t\u00e9","qty":1}',
                   ("e1", "\u00e9t\u00e9", 1, None, None)),
            "v5": ('{"order_id":"v5","event":"e1","user":"u","qty":1,"tier":"gold","n":-3}',
                   ("e1", "u", 1, None, None)),
            "v6": ('{"order_id":"v6","event":"e1","user":"u","qty":1,"host":null,'
                   '"created_at":null}', ("e1", "u", 1, None, None)),
            "v7": ('{"order_id":"v7","event":"e1","user":"u","qty":1,"created_at":-7}',
                   ("e1", "u", 1, None, None)),
            "v8": ('{"qty":3,"user":"u","created_at":0,"event":"e1","order_id":"v8"}',
                   ("e1", "u", 3, None, 0)),
            "v9": ('{"order_id":"v9","event":"e1","user":"u","qty":1,"meta":{"a":[1,2.5]}}',
                   ("e1", "u", 1, None, None)),
        }
        bad = [
            '{"order_id":"d1","event":"e1","user":"u","qty":1,"qty":2}',
            '{"order_id":"d2","event":"e1","user":"u","qty":1,"x":1,"x":"2"}',
            '{"order_id":"d3","event":"e1","user":"u","qty":01}',
            '{"order_id":"d4","event":"e1","user":"u","qty":1.0}',
            '{"order_id":"d5","event":"e1","user":"u","qty":1,}',
            '{"order_id":"d6","event":"e1","user":"u","qty":1} x',
            '{"order_id":"d7","event":"e1","user":"u","qty":1,"host":""}',
            '{"order_id":"d8","event":"e1","user":"u","qty":99999999999999999999}',
            '{"order_id":"d9","event":"e1","user":"u","qty":1,"created_at":"5"}',
            '{"order_id":"d10","event":"e1","qty":1}',
            '{"order_id":"d11","event":"e1"',
            '{"order_id":"d12","event":"e1","user":"u","qty":-1}',
            '{"order_id":"d13","event":"e1","user":"u\\u0000v","qty":1}',
            '{"order_id":"d14","event":"e1","user":"u","qty":1e0}',
        ]
        for data, _ in good.values():
            fill(self.nats.url, 0, 1, "e1", "--raw", data)
        for data in bad:
            fill(self.nats.url, 0, 1, "e1", "--raw", data)
        s = self.subscriber().start()
        wait_until(lambda: s.rows() >= len(good) and count(s.db, "dead_letters") >= len(bad),
                   30, what="every case handled")
        self.assertEqual(s.stop(), 0)
        rows = {r[0]: r[1:] for r in s.query(
            "SELECT order_id, event, user, qty, host, created_at FROM orders")}
        self.assertEqual(set(rows), set(good))
        for oid, (data, want) in good.items():
            self.assertEqual(rows[oid], want, oid)
        payload = s.query("SELECT payload FROM orders WHERE order_id='v2'")[0][0]
        self.assertEqual(payload, good["v2"][0])  # stored verbatim, white space included
        dl = s.query("SELECT reason, data FROM dead_letters ORDER BY id")
        self.assertEqual([bytes(d[1]).decode() for d in dl], bad)
        self.assertIn("duplicate", dl[0][0])
        self.assertIn("qty", dl[3][0])

    def test_kill9_and_restart(self):
        n = 200000
        fill(self.nats.url, n)
        s = self.subscriber(batch=500).start()
        wait_until(lambda: s.rows() > 0, 30, what="first rows")
        s.kill9()
        before = s.rows()
        s2 = self.subscriber(batch=500).start()
        # The orders the killed one fetched come back only after AckWait (30 s): a stall up to
        # that long is expected.
        wait_rows(s2, n, 60, "all rows after restart")
        time.sleep(0.5)
        self.assertEqual(s2.stop(), 0)
        self.assertEqual(s2.rows(), n)
        self.assertLessEqual(before, n)
        distinct = s2.query("SELECT count(DISTINCT order_id) FROM orders")[0][0]
        self.assertEqual(distinct, n)

    def test_sigterm_commits_and_acks(self):
        n = 100000
        fill(self.nats.url, n)
        s = self.subscriber(batch=1000).start()
        wait_until(lambda: s.rows() > 0, 30, what="first rows")
        self.assertEqual(s.stop(), 0)  # SIGTERM in the middle
        mid = s.rows()
        self.assertIn("stopped, persisted %d" % mid, s.proc.log_text())
        s2 = self.subscriber(batch=1000).start()
        wait_until(lambda: s2.rows() >= n, 60, what="all rows")
        time.sleep(0.5)
        self.assertEqual(s2.stop(), 0)
        self.assertEqual(s2.rows(), n)
        # Everything the first run committed was acknowledged: nothing came back as a duplicate.
        self.assertNotRegex(s2.proc.log_text(), r"duplicates [1-9]")

    def test_waits_for_nats_and_stream(self):
        port = free_port()
        url = "nats://127.0.0.1:%d" % port
        s = Subscriber(self.tmp.path, url, db_path=os.path.join(self.tmp.path, "late.db"))
        self.subs.append(s)
        s.start()
        time.sleep(1.0)
        self.assertTrue(s.proc.alive())
        late = NatsServer(self.tmp.path, port=port).start()
        try:
            time.sleep(1.0)  # connected, the stream does not exist yet
            self.assertTrue(s.proc.alive())
            fill(url, 1000)
            wait_until(lambda: s.rows() >= 1000, 30, what="rows once NATS is up")
            self.assertEqual(s.stop(), 0)
            self.assertEqual(s.rows(), 1000)
        finally:
            late.stop()

    def test_linger_gathers_a_trickle(self):
        """--linger: after a fetch that did not fill the batch, the subscriber lets messages
        gather for that long, so a trickle of orders is committed a few transactions a second,
        not one per message; each order is still stored once. (--linger 0 commits about one
        transaction per message here.)"""
        fill(self.nats.url, 0, 1)  # makes the stream
        mport = free_port()
        s = self.subscriber(extra=("--linger", "300", "--metrics-listen",
                                   "127.0.0.1:%d" % mport)).start()
        wait_until(lambda: transactions(mport) is not None, 15, what="subscriber metrics")
        n, t0 = 60, time.time()
        for i in range(1, n + 1):
            oid = "1795596636082-%010d-e1" % i
            body = json.dumps({"order_id": oid, "event": "e1", "user": "u%d" % i, "qty": 1,
                               "host": "h1", "created_at": 1}, separators=(",", ":"))
            self.assertNotIn("error", js_publish(self.nats.port, "orders.e1", oid, {}, body))
            time.sleep(0.01)
        took = time.time() - t0
        wait_until(lambda: s.rows() >= n, 30, what="%d rows" % n)
        # One fetch (and so at most one transaction) per 300 ms of publishing, plus the first and
        # the last; however slowly the machine published.
        self.assertLessEqual(transactions(mport), took / 0.3 + 3)
        self.assertEqual(s.stop(), 0)
        self.assertEqual(s.rows(), n)

    def test_help_and_bad_flags(self):
        out = subprocess.run([binary("snatch-subscriber"), "--help"], stdout=subprocess.PIPE,
                             timeout=10)
        self.assertEqual(out.returncode, 0)
        self.assertIn(b"--batch", out.stdout)
        self.assertIn(b"--sync", out.stdout)
        self.assertIn(b"--linger", out.stdout)
        for v in ("-1", "1001", "x"):
            bad = subprocess.run([binary("snatch-subscriber"), "--nats", "nats://127.0.0.1:1",
                                  "--db", "x.db", "--linger", v], stderr=subprocess.PIPE,
                                 timeout=10)
            self.assertEqual(bad.returncode, 2, v)
            self.assertIn(b"--linger", bad.stderr)
        bad = subprocess.run([binary("snatch-subscriber"), "--nats", "x"], stderr=subprocess.PIPE,
                             timeout=10)
        self.assertEqual(bad.returncode, 2)


if __name__ == "__main__":
    unittest.main(verbosity=2)
