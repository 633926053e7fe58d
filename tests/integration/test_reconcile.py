"""snatch-reconcile against real redis-server, nats-server and snatch-subscriber. Orders are
minted by lua/deduct.lua itself (EVAL), as the host would, but never published: reconciliation
must find them missing, republish them so that they land in SQLite exactly once, clear their
pending entries, and report with the right exit status."""
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (SOURCE_DIR, NatsServer, RedisServer, Subscriber, TempDir, binary,  # noqa: E402
                     deduct_reply, wait_until)

with open(os.path.join(SOURCE_DIR, "lua", "deduct.lua")) as f:
    DEDUCT = f.read()
with open(os.path.join(SOURCE_DIR, "lua", "order.lua")) as f:
    ORDER = f.read()


class ReconcileTest(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.redis = RedisServer(self.tmp.path).start()
        self.nats = NatsServer(self.tmp.path).start()
        self.sub = Subscriber(self.tmp.path, self.nats.url).start()
        # The subscriber creates the schema; reconcile may run before the first order arrives.
        wait_until(lambda: os.path.exists(self.sub.db), 10, what="database file")

    def tearDown(self):
        self.sub.kill9()
        self.nats.stop()
        self.redis.stop()
        self.tmp.cleanup()

    def create_event(self, event, stock):
        r = self.redis
        r.cmd("HSET", "{%s}:meta" % event, "stock", stock, "sold", 0, "limit", 5, "gen", 1,
              "seq", 0)
        r.cmd("SADD", "snatch:events", event)

    def sell(self, event, user, qty=1, hold_ms=0):
        keys = ["{%s}:%s" % (event, k) for k in ("meta", "users", "orders", "uorders", "pending")]
        reply = deduct_reply(event, 1, self.redis.cmd(
            "EVAL", DEDUCT, 5, *keys, event, "h1", 0, 1, hold_ms, 0, 60000, user, qty, ""))[0]
        self.assertEqual(reply[0], "ok", reply)
        return reply[1]

    def life(self, event, op, *args):
        keys = ["{%s}:%s" % (event, k)
                for k in ("meta", "users", "orders", "holds", "state", "tpending")]
        return self.redis.cmd("EVAL", ORDER, 6, *keys, op, event, *args)

    def test_transitions_republished(self):
        """Held orders and their transitions decided in Redis, never published: reconciliation
        publishes both, the held order with its hold header, and SQLite ends in Redis's state."""
        self.create_event("evh", 10)
        paid = self.sell("evh", "u1", hold_ms=60000)
        gone = self.sell("evh", "u2", qty=2, hold_ms=1)
        held = self.sell("evh", "u3", hold_ms=60000)
        time.sleep(0.05)
        self.assertEqual(self.life("evh", "pay", paid)[0], "ok")
        self.assertEqual(self.life("evh", "expire", "100")[0], gone)
        self.assertEqual(self.redis.cmd("HLEN", "{evh}:tpending"), 2)
        self.assertEqual(self.redis.cmd("HGET", "{evh}:meta", "sold"), "2")
        code, out = self.reconcile("--wait", "30")
        self.assertEqual(code, 0, out)
        self.assertEqual(self.redis.cmd("HLEN", "{evh}:tpending"), 0)
        self.assertEqual(dict(self.sub.query("SELECT order_id, status FROM orders")),
                         {paid: "paid", gone: "expired", held: "held"})
        self.assertEqual(self.sub.query("SELECT count(*) FROM order_history")[0][0], 5)

    def reconcile(self, *args):
        argv = [binary("snatch-reconcile"), "--redis", "127.0.0.1:%d" % self.redis.port,
                "--nats", self.nats.url, "--db", self.sub.db] + list(args)
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        return p.returncode, p.stdout.decode()

    def row(self, out, event):
        for line in out.splitlines():
            f = line.split()
            if f and f[0] == event:
                return dict(zip(["stock", "sold", "orders", "rows", "missing", "republished",
                                 "extra"], map(int, f[1:8])))
        self.fail("no row for %s in:\n%s" % (event, out))

    def test_republishes_missing_once(self):
        self.create_event("ev1", 50)
        self.create_event("ev2", 10)
        ids = [self.sell("ev1", "u%d" % i) for i in range(30)]
        self.sell("ev2", "a", 2)
        self.assertEqual(self.redis.cmd("HLEN", "{ev1}:pending"), 30)

        code, out = self.reconcile("--dry-run")
        self.assertEqual(code, 1, out)
        self.assertEqual(self.row(out, "ev1"),
                         dict(stock=50, sold=30, orders=30, rows=0, missing=30, republished=0,
                              extra=0))
        self.assertEqual(self.row(out, "ev2")["sold"], 2)
        self.assertEqual(self.redis.cmd("HLEN", "{ev1}:pending"), 30)

        code, out = self.reconcile("--event", "ev1", "--wait", "30")
        self.assertEqual(code, 0, out)
        self.assertEqual(self.row(out, "ev1")["republished"], 30)
        self.assertNotIn("ev2", out)
        self.assertEqual(self.redis.cmd("HLEN", "{ev1}:pending"), 0)
        self.assertEqual(self.sub.rows("ev1"), 30)
        stored = [r[0] for r in self.sub.query("SELECT order_id FROM orders WHERE event='ev1' "
                                               "ORDER BY order_id")]
        self.assertEqual(stored, sorted(ids))

        # Everything, twice: nothing missing for ev1, ev2 republished; still one row per order.
        code, out = self.reconcile("--wait", "30")
        self.assertEqual(code, 0, out)
        self.assertEqual(self.row(out, "ev1")["republished"], 0)
        self.assertEqual(self.row(out, "ev2")["republished"], 1)
        code, out = self.reconcile("--wait", "30")
        self.assertEqual(code, 0, out)
        self.assertEqual(self.sub.rows(), 31)
        self.assertEqual(self.sub.query("SELECT count(DISTINCT order_id) FROM orders")[0][0], 31)

    def test_oversold_sqlite_fails(self):
        self.create_event("ev3", 5)
        self.sell("ev3", "u1")
        code, out = self.reconcile("--wait", "30")
        self.assertEqual(code, 0, out)
        self.sub.stop()
        import sqlite3
        con = sqlite3.connect(self.sub.db)
        con.execute("INSERT INTO orders(order_id, event, user, qty, host, created_at, payload)"
                    " VALUES('9999999999999-0000000099-ev3','ev3','x',3,'h9',0,'{}')")
        con.commit()
        con.close()
        code, out = self.reconcile("--dry-run")
        self.assertEqual(code, 1, out)
        self.assertEqual(self.row(out, "ev3")["extra"], 1)

    def test_pending_pass(self):
        self.create_event("ev4", 20)
        ids = [self.sell("ev4", "u%d" % i) for i in range(5)]
        code, out = self.reconcile("--pending", "3600000")  # all younger than an hour: skipped
        self.assertEqual(code, 0, out)
        self.assertIn("republished 0 pending", out)
        self.assertEqual(self.redis.cmd("HLEN", "{ev4}:pending"), 5)
        time.sleep(0.05)
        code, out = self.reconcile("--pending", "0")
        self.assertEqual(code, 0, out)
        self.assertIn("republished 5 pending", out)
        self.assertEqual(self.redis.cmd("HLEN", "{ev4}:pending"), 0)
        wait_until(lambda: self.sub.rows("ev4") == 5, 20, what="5 rows")
        self.assertEqual(sorted(r[0] for r in self.sub.query("SELECT order_id FROM orders")),
                         sorted(ids))

    def sell_batch(self, event, users):
        """One EVAL of several buyers, as a host's deduction batch: one {E}:pending entry."""
        keys = ["{%s}:%s" % (event, k) for k in ("meta", "users", "orders", "uorders", "pending")]
        argv = [event, "h1", 0, len(users), 0, 0, 60000]
        for u in users:
            argv += [u, 1, ""]
        out = deduct_reply(event, len(users), self.redis.cmd("EVAL", DEDUCT, 5, *keys, *argv))
        self.assertEqual([o[0] for o in out], ["ok"] * len(users), out)
        return [o[1] for o in out], out[0][4]

    def pending(self, event):
        v = self.redis.cmd("HGETALL", "{%s}:pending" % event) or []
        return dict(zip(v[::2], v[1::2]))

    def stored(self, event):
        return sorted(r[0] for r in self.sub.query(
            "SELECT order_id FROM orders WHERE event=? ORDER BY order_id", (event,)))

    def test_batch_entry_partly_acknowledged(self):
        """A batch of five orders, the first two acknowledged by JetStream and the other three
        not: its one entry stays; the pending pass republishes every order of it (the two again,
        de-duplicated), SQLite holds each once, and the entry is gone after."""
        self.create_event("evb", 20)
        ids, ms = self.sell_batch("evb", ["u%d" % i for i in range(5)])
        self.assertEqual(self.pending("evb"), {ids[0]: "%d 5" % ms})
        # The two acknowledged: published through an entry naming only them, then the real
        # entry put back (what a host leaves when the acks of the other three never came).
        self.redis.cmd("HSET", "{evb}:pending", ids[0], "%d 2" % ms)
        time.sleep(0.05)
        code, out = self.reconcile("--pending", "0")
        self.assertEqual(code, 0, out)
        self.assertIn("republished 2 pending", out)
        wait_until(lambda: self.stored("evb") == ids[:2], 20, what="the first two rows")
        self.redis.cmd("HSET", "{evb}:pending", ids[0], "%d 5" % ms)
        code, out = self.reconcile("--pending", "0")
        self.assertEqual(code, 0, out)
        self.assertIn("republished 5 pending", out)
        self.assertEqual(self.pending("evb"), {})
        wait_until(lambda: self.stored("evb") == ids, 20, what="five rows")
        time.sleep(0.3)  # a duplicate would land as late as the last row
        self.assertEqual(self.sub.query("SELECT count(*) FROM orders WHERE event='evb'")[0][0], 5)

    def test_old_form_and_malformed_entries(self):
        """Entries of the previous version (one per order, value "<ms>") are still republished
        and deleted; a malformed entry is left alone and does not stop the others."""
        self.create_event("evo", 20)
        ids, ms = self.sell_batch("evo", ["a", "b", "c"])
        self.redis.cmd("DEL", "{evo}:pending")
        for i in ids:
            self.redis.cmd("HSET", "{evo}:pending", i, ms)
        bad = {"%013d-%010d-evo" % (ms, 90): "%d x" % ms, "not-an-id": str(ms),
               "%013d-%010d-evo" % (ms, 91): "%d 0" % ms}
        for k, v in bad.items():
            self.redis.cmd("HSET", "{evo}:pending", k, v)
        time.sleep(0.05)
        code, out = self.reconcile("--pending", "0")
        self.assertEqual(code, 0, out)
        self.assertIn("republished 3 pending", out)
        self.assertEqual(self.pending("evo"), bad)
        wait_until(lambda: self.stored("evo") == ids, 20, what="three rows")

    def test_compare_with_batch_and_old_entries(self):
        """snatch-reconcile's comparison: a batch's orders missing from SQLite are republished;
        its entry goes once SQLite holds all of them (after --wait); an old-form entry whose
        order SQLite holds goes too."""
        self.create_event("evc", 20)
        ids, ms = self.sell_batch("evc", ["a", "b", "c", "d"])
        code, out = self.reconcile("--event", "evc", "--wait", "30")
        self.assertEqual(code, 0, out)
        self.assertEqual(self.row(out, "evc")["republished"], 4)
        self.assertEqual(self.stored("evc"), ids)
        self.assertEqual(self.pending("evc"), {})
        self.redis.cmd("HSET", "{evc}:pending", ids[2], ms)  # an old-form entry, persisted
        code, out = self.reconcile("--event", "evc")
        self.assertEqual(code, 0, out)
        self.assertEqual(self.row(out, "evc")["republished"], 0)
        self.assertEqual(self.pending("evc"), {})
        self.assertEqual(len(self.stored("evc")), 4)

    def test_compare_forgets_single_entries(self):
        """snatch-reconcile's comparison with the subscriber down (nothing lands in SQLite): the
        single-order entries of the orders it republished go at once, a batch entry stays whole
        (its orders are not all in SQLite yet), and reading the entries costs no HGET per
        republished order (the only HGETs left are the hold reads of {E}:state)."""
        self.create_event("evs", 300)
        for i in range(260):  # more than one HMGET's worth (256)
            self.sell("evs", "s%d" % i)
        ids, ms = self.sell_batch("evs", ["b%d" % i for i in range(5)])
        self.sub.stop()
        self.redis.cmd("CONFIG", "RESETSTAT")
        code, out = self.reconcile("--event", "evs")
        self.assertEqual(code, 1, out)
        self.assertEqual(self.row(out, "evs")["republished"], 265)
        self.assertEqual(self.pending("evs"), {ids[0]: "%d 5" % ms})
        stats = self.redis.cmd("INFO", "commandstats")
        hget = [ln for ln in stats.splitlines() if ln.startswith("cmdstat_hget:")]
        calls = int(hget[0].split("calls=")[1].split(",")[0]) if hget else 0
        self.assertLessEqual(calls, 265, stats)

    def test_unreachable_and_usage(self):
        code, _ = self.reconcile("--dry-run", "--bogus")
        self.assertEqual(code, 2)
        p = subprocess.run([binary("snatch-reconcile"), "--redis", "127.0.0.1:1", "--dry-run",
                            "--db", self.sub.db], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        self.assertEqual(p.returncode, 3)


if __name__ == "__main__":
    unittest.main(verbosity=2)
