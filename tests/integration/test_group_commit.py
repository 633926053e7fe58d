"""Group commit of deductions end to end (snatch-host, redis-server with AOF always, nats-server,
snatch-subscriber): snatch-bench's crowd makes the host send batches of many buyers, with
repeats of the same buyer in one batch, and its oracle checks every 200 (unique ids, per-buyer
limit, a SQLite row each, Redis's sold equal to the 200s). Then the host is killed with -9 while
batches are in flight: after reconciliation every 200 has its row, nothing is oversold, and
Redis, {E}:orders and SQLite agree unit for unit."""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import ADMIN_TOKEN, Stack, Suite, binary, wait_until  # noqa: E402

suite = Suite()


def meta(st, event):
    v = st.redis.cmd("HGETALL", "{%s}:meta" % event)
    return dict(zip(v[::2], v[1::2]))


def batch_stats(st):
    """(batches, buyers) from the host's snatch_deduct_batch_size histogram."""
    s, text = st.host.request("GET", "/metrics",
                              headers={"Authorization": "Bearer " + ADMIN_TOKEN})
    assert s == 200, (s, text)
    count = total = 0
    for line in text.splitlines():
        if line.startswith("snatch_deduct_batch_size_count"):
            count = int(float(line.split()[1]))
        elif line.startswith("snatch_deduct_batch_size_sum"):
            total = int(float(line.split()[1]))
    return count, total


def bench(st, event, args, json_path):
    url = "http://127.0.0.1:%d/v1/events/%s/snatch" % (st.host.port, event)
    argv = [binary("snatch-bench"), "--quiet", "-t", "2", "-m", "POST", "--timeout", "20000",
            "--json", json_path] + args + [url]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@suite.case
def burst_sells_exactly_the_stock_in_batches():
    with Stack(hosts=1, threads=2, aof_always=True) as st:
        S, LIMIT = 20000, 2
        st.host.create_event("gc", S, per_user_limit=LIMIT)
        out = os.path.join(st.tmp.path, "bench.json")
        evurl = "http://127.0.0.1:%d/v1/events/gc" % st.host.port
        # 30000 buyers drawn at random, 60000 requests: demand far above the stock, and the
        # same buyer often twice in one batch.
        p = bench(st, "gc", ["-c", "200", "-n", "60000", "--users", "30000", "--check",
                             "--per-user-limit", str(LIMIT), "--event-url", evurl,
                             "--db", st.sub.db, "--wait-db", "60"], out)
        text = p.communicate(timeout=300)[0].decode()
        assert p.returncode == 0, text
        r = json.load(open(out))
        assert r["status"].get("200", 0) == S, r["status"]
        assert set(r["status"]) <= {"200", "409"}, r["status"]
        m = meta(st, "gc")
        assert int(m["sold"]) == S, m
        rows = st.sub.query("SELECT user, sum(qty), count(*) FROM orders WHERE event='gc' "
                            "GROUP BY user")
        assert sum(x[1] for x in rows) == S and sum(x[2] for x in rows) == S, len(rows)
        assert max(x[1] for x in rows) <= LIMIT
        assert st.redis.cmd("HLEN", "{gc}:orders") == S
        wait_until(lambda: st.redis.cmd("HLEN", "{gc}:pending") == 0, 30,
                   what="acknowledged orders deleted from pending")
        batches, buyers = batch_stats(st)
        assert batches > 0 and buyers > batches, (batches, buyers)  # batches did form
        print("batches=%d buyers=%d mean=%.1f" % (batches, buyers, buyers / batches), flush=True)


@suite.case
def kill9_with_batches_in_flight_loses_nothing():
    with Stack(hosts=1, threads=2, aof_always=True) as st:
        S = 30000
        st.host.create_event("gk", S)
        out = os.path.join(st.tmp.path, "bench.json")
        # --db: snatch-bench's oracle checks that every 200 it got is a row (JetStream acked it,
        # so the subscriber has it without reconciliation).
        p = bench(st, "gk", ["-c", "200", "-d", "8", "--check", "--db", st.sub.db,
                             "--wait-db", "30"], out)
        try:
            wait_until(lambda: int(meta(st, "gk").get("sold", 0)) >= 3000, 60, 0.02,
                       what="sales under way")
            st.host.kill9()
        finally:
            text = p.communicate(timeout=120)[0].decode()
        r = json.load(open(out))
        ok = r["status"].get("200", 0)
        assert ok > 0, text
        rc = st.reconcile("--event", "gk", "--wait", "30")
        assert rc[0] == 0, rc
        m = meta(st, "gk")
        sold = int(m["sold"])
        assert ok <= sold <= S, (ok, m)
        wait_until(lambda: st.sub.rows("gk") == sold, 30, what="every unit sold a row")
        rows = st.sub.query("SELECT count(*), count(DISTINCT order_id), count(DISTINCT user), "
                            "sum(qty) FROM orders WHERE event='gk'")[0]
        assert rows == (sold, sold, sold, sold), (rows, sold)
        assert st.redis.cmd("HLEN", "{gk}:orders") == sold
        assert st.redis.cmd("HLEN", "{gk}:pending") == 0
        # The oracle of snatch-bench saw unique ids and one ticket per buyer among the 200s.
        assert r.get("oracle", {}).get("failures", 0) == 0, r.get("oracle")
        print("200=%d sold=%d (sold without a 200 reaching the client: %d)" % (
            ok, sold, sold - ok), flush=True)


if __name__ == "__main__":
    suite.run()
