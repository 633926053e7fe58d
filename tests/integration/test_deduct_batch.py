"""lua/deduct.lua's batch form against a real redis-server: each buyer of a batch is checked
and deducted in order with its own outcome, stock that runs out inside a batch sells exactly to
zero, the same buyer twice gets exactly the per-user limit, an expired or unknown batch changes
nothing, a batch that sold leaves one {E}:pending entry, and acknowledged entries riding on a
batch leave it. The order records are the compact "<qty> <host> <user>" that, with the id, gives
back the JSON the readers (GET /v1/orders, snatch-reconcile) serve; a name that is not plain
keeps the JSON form."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (SOURCE_DIR, RedisServer, Suite, TempDir, deduct_reply,  # noqa: E402
                     order_json)

with open(os.path.join(SOURCE_DIR, "lua", "deduct.lua")) as f:
    DEDUCT = f.read()

suite = Suite()


def keys(event):
    return ["{%s}:%s" % (event, k) for k in ("meta", "users", "orders", "uorders", "pending")]


def batch(r, event, buyers, acks=(), deadline=0, hold_ms=0, keep=0, window=3600000):
    argv = [event, "h1", deadline, len(buyers), hold_ms, keep, window]
    for b in buyers:
        user, qty, key = b if len(b) == 3 else (b[0], b[1], "")
        argv += [user, qty, key]
    return deduct_reply(event, len(buyers), r.cmd("EVAL", DEDUCT, 5, *keys(event), *argv, *acks))


def hgetall(r, key):
    v = r.cmd("HGETALL", key) or []
    return dict(zip(v[::2], v[1::2]))


class Redis:
    def __enter__(self):
        self.tmp = TempDir()
        self.r = RedisServer(self.tmp.path).start()
        return self.r

    def __exit__(self, *exc):
        self.r.stop()
        self.tmp.cleanup()


def create(r, event, stock, limit):
    r.cmd("HSET", "{%s}:meta" % event, "stock", stock, "sold", 0, "limit", limit, "gen", 7)


@suite.case
def mixed_outcomes_in_one_batch():
    with Redis() as r:
        create(r, "m", 5, 2)
        out = batch(r, "m", [("a", 1), ("a", 2), ("b", 3), ("c", 2), ("d", 2), ("e", 1), ("f", 1)])
        verdicts = [o[0] for o in out]
        # a:1 ok (4 left); a:2 over the limit of 2; b:3 over the limit; c:2 ok (2 left);
        # d:2 ok (0 left); e, f: sold out.
        assert verdicts == ["ok", "limit_reached", "limit_reached", "ok", "ok", "sold_out",
                            "sold_out"], out
        assert out[1][1] == 1 and out[1][2] == "7", out  # held 1, gen
        assert [o[2] for o in out if o[0] == "ok"] == [4, 2, 0], out
        meta = hgetall(r, "{m}:meta")
        assert meta["sold"] == "5" and meta["seq"] == "3", meta
        users = hgetall(r, "{m}:users")
        assert users == {"a": "1", "c": "2", "d": "2"}, users
        ids = [o[1] for o in out if o[0] == "ok"]
        assert len(set(ids)) == 3 and all(i.endswith("-m") and len(i) == 26 for i in ids), ids
        assert sorted(ids) == ids, "ids must increase in batch order"
        orders = hgetall(r, "{m}:orders")
        assert set(orders) == set(ids), orders
        assert orders[ids[1]] == "2 h1 c", orders
        # Byte for byte the JSON this script stored before records were compact.
        assert order_json(ids[1], orders[ids[1]]) == (
            '{"event":"m","host":"h1","created_at":%d,"order_id":"%s","qty":2,"user":"c"}'
            % (out[3][4], ids[1])), orders
        assert hgetall(r, "{m}:uorders") == {"a": ids[0], "c": ids[1], "d": ids[2]}
        # A name the host would refuse still makes valid JSON (the script's escaping path).
        create(r, "m2", 5, 2)
        batch(r, "m2", [('q"\\x', 1), ("p", 1)])
        raw = hgetall(r, "{m2}:orders")
        assert sorted(v[0] for v in raw.values()) == ["1", "{"], raw  # p compact, q"\x JSON
        recs = [json.loads(order_json(k, v)) for k, v in raw.items()]
        assert sorted(x["user"] for x in recs) == ['p', 'q"\\x'], recs
        assert all(set(x) == {"order_id", "event", "user", "qty", "host", "created_at"}
                   for x in recs), recs
        # One {E}:pending entry for the batch: its first order -> "<ms> <n>" (seqs 1..3)
        ms = [o for o in out if o[0] == "ok"][0][4]
        assert hgetall(r, "{m}:pending") == {ids[0]: "%d 3" % ms}
        assert [i.split("-")[1] for i in ids] == ["%010d" % k for k in (1, 2, 3)], ids

        # insufficient for a qty while a smaller one still fits
        create(r, "q", 3, 5)
        out = batch(r, "q", [("a", 2), ("b", 2), ("c", 1), ("d", 1)])
        assert [o[0] for o in out] == ["ok", "insufficient", "ok", "sold_out"], out
        assert out[1][1] == 1, out  # remaining when b asked
        assert hgetall(r, "{q}:meta")["sold"] == "3"


@suite.case
def stock_runs_out_inside_a_batch_exactly_to_zero():
    with Redis() as r:
        create(r, "z", 37, 1)
        sold = 0
        for b in range(3):
            out = batch(r, "z", [("u%d-%d" % (b, i), 1) for i in range(20)])
            sold += sum(1 for o in out if o[0] == "ok")
            assert all(o[0] in ("ok", "sold_out") for o in out), out
        assert sold == 37, sold
        assert hgetall(r, "{z}:meta")["sold"] == "37"
        assert int(r.cmd("HLEN", "{z}:orders")) == 37
        # one entry per batch that sold: 20 + 17, the third sold nothing
        pend = hgetall(r, "{z}:pending")
        assert sorted(int(v.split()[1]) for v in pend.values()) == [17, 20], pend


@suite.case
def same_buyer_twice_gets_exactly_the_limit():
    with Redis() as r:
        create(r, "t", 100, 3)
        out = batch(r, "t", [("x", 2), ("x", 1), ("x", 1), ("y", 1), ("x", 1)])
        assert [o[0] for o in out] == ["ok", "ok", "limit_reached", "ok", "limit_reached"], out
        assert out[2][1] == 3 and out[4][1] == 3, out
        assert hgetall(r, "{t}:users") == {"x": "3", "y": "1"}
        # uorders lists both of x's orders, in order
        assert hgetall(r, "{t}:uorders")["x"] == "%s,%s" % (out[0][1], out[1][1])
        # across batches too
        out = batch(r, "t", [("x", 1), ("y", 2), ("y", 1)])
        assert [o[0] for o in out] == ["limit_reached", "ok", "limit_reached"], out
        assert hgetall(r, "{t}:users") == {"x": "3", "y": "3"}
        assert hgetall(r, "{t}:meta")["sold"] == "6"


@suite.case
def expired_unknown_and_malformed_change_nothing():
    with Redis() as r:
        create(r, "e", 10, 1)
        out = batch(r, "e", [("a", 1), ("b", 1)], deadline=1)  # 1970: long past
        assert out == [["expired"], ["expired"]], out
        out = batch(r, "nosuch", [("a", 1), ("b", 1)])
        assert out == [["unknown_event"], ["unknown_event"]], out
        for bad in ([("a", 1), ("b", 0)], [("a", "x")]):
            try:
                batch(r, "e", bad)
                raise AssertionError("a malformed batch was accepted")
            except RuntimeError as e:
                assert "bad qty" in str(e), e
        try:
            r.cmd("EVAL", DEDUCT, 5, *keys("e"), "e", "h1", 0, 3, "a", 1)
            raise AssertionError("a short batch was accepted")
        except RuntimeError as e:
            assert "bad batch" in str(e), e
        assert hgetall(r, "{e}:meta").get("sold") == "0"
        assert r.cmd("EXISTS", "{e}:users", "{e}:orders", "{e}:pending", "{nosuch}:meta") == 0


@suite.case
def acknowledged_entries_ride_on_a_batch():
    with Redis() as r:
        create(r, "p", 10, 1)
        first = batch(r, "p", [("a", 1), ("b", 1), ("c", 1)])[0][1]
        second = batch(r, "p", [("x", 1), ("y", 1)])[0][1]
        assert set(hgetall(r, "{p}:pending")) == {first, second}
        out = batch(r, "p", [("d", 1), ("a", 1)], acks=[first])
        assert [o[0] for o in out] == ["ok", "limit_reached"], out
        d = out[0][1]
        assert set(hgetall(r, "{p}:pending")) == {second, d}
        # They are deleted whatever the buyers' outcome, even when the batch expired.
        out = batch(r, "p", [("e", 1)], acks=[second], deadline=1)
        assert out == [["expired"]], out
        assert set(hgetall(r, "{p}:pending")) == {d}
        # The records stay: only the pending entries go.
        assert int(r.cmd("HLEN", "{p}:orders")) == 6


@suite.case
def holds_and_idempotency_keys_in_one_batch():
    """hold_ms > 0: every order sold is held ({E}:holds by deadline, {E}:state); a key seen
    twice in one batch is a replay of its first decision (nothing taken twice), another qty
    with it is key_reused, a refusal is replayed too; buyers without a key are unchanged."""
    with Redis() as r:
        create(r, "k", 3, 2)
        out = batch(r, "k", [("a", 1, "x1"), ("a", 1, "x1"), ("a", 2, "x1"), ("b", 1),
                             ("c", 2, "z"), ("c", 2, "z")], hold_ms=60000, keep=1)
        assert [o[0] for o in out] == ["ok", "replay", "key_reused", "ok", "insufficient",
                                       "insufficient"], out
        assert out[1][1] == out[0][1] and out[1][6] == "h1", out  # same id, the selling host
        assert out[2][1] == "1", out  # the qty the key was first used with
        assert out[5][3] == "replay", out
        until = int(out[0][5])
        assert until - out[0][4] == 60000, out
        meta = hgetall(r, "{k}:meta")
        assert meta["sold"] == "2", meta
        assert r.cmd("ZCARD", "{k}:holds") == 2
        st = r.cmd("HGET", "{k}:state", out[0][1]).split()
        assert st == ["held", str(until), "1", "1", "a"], st
        assert r.cmd("PTTL", "{k}:idem:a|x1") > 3500000  # the window (1 h)
        # A later batch: the replay again, without a hold nothing more is held.
        out2 = batch(r, "k", [("a", 1, "x1"), ("d", 1)])
        assert out2[0][0] == "replay" and out2[0][1] == out[0][1], out2
        assert out2[1][0] == "ok" and out2[1][5] == "0", out2
        assert r.cmd("ZCARD", "{k}:holds") == 2 and hgetall(r, "{k}:meta")["sold"] == "3"


@suite.case
def reply_is_short_for_buyers_who_bought():
    # A buyer who bought answers only the units left; what every such buyer shares comes once,
    # as the batch's last element, and only when someone bought (the host builds each order id
    # from it: the ids must be the ones {E}:orders holds).
    with Redis() as r:
        create(r, "w", 2, 1)
        raw = r.cmd("EVAL", DEDUCT, 5, *keys("w"), "w", "h1", 0, 3, 0, 0, 3600000,
                    "a", 1, "", "b", 1, "", "c", 1, "")
        assert raw[:2] == [1, 0] and raw[2] == ["sold_out", 0, "7"], raw
        assert len(raw) == 4 and raw[3][0] == "7" and raw[3][2] == "0" and raw[3][3] == 1, raw
        ms = int(raw[3][1])
        assert set(hgetall(r, "{w}:orders")) == {"%013d-%010d-w" % (ms, s) for s in (1, 2)}
        raw = r.cmd("EVAL", DEDUCT, 5, *keys("w"), "w", "h1", 0, 1, 0, 0, 3600000, "d", 1, "")
        assert raw == [["sold_out", 0, "7"]], raw


@suite.case
def order_ids_keep_their_layout_across_seq_digits():
    # Ids across a hundred, across a million and up to the last of ten seq digits are what
    # "%013d-%010d-%s" writes (keyspace.h's layout, which the readers parse); a batch that could
    # go past ten digits is refused and changes nothing.
    with Redis() as r:
        for seq0 in (0, 97, 999998, 9999999995):
            ev = "s%d" % seq0
            create(r, ev, 10, 1)
            r.cmd("HSET", "{%s}:meta" % ev, "seq", seq0)
            out = batch(r, ev, [("a", 1), ("b", 1), ("c", 1), ("d", 1)])
            ids = [o[1] for o in out]
            ms = int(ids[0][:13])
            assert ids == ["%013d-%010d-%s" % (ms, seq0 + i, ev) for i in (1, 2, 3, 4)], ids
            rec = json.loads(order_json(ids[3], hgetall(r, "{%s}:orders" % ev)[ids[3]]))
            assert rec["order_id"] == ids[3] and rec["created_at"] == ms, rec
        try:
            batch(r, "s9999999995", [("e", 1)])
            raise AssertionError("an order id past ten seq digits was minted")
        except RuntimeError as e:
            assert "order ids exhausted" in str(e), e
        meta = hgetall(r, "{s9999999995}:meta")
        assert meta["seq"] == "9999999999" and meta["sold"] == "4", meta


if __name__ == "__main__":
    suite.run()
