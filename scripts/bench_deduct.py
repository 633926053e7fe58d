#!/usr/bin/env python3
"""Redis cost of lua/deduct.lua alone: starts a private redis-server on a free loopback port in a
temp dir, creates an event with huge stock, runs N batches of K new buyers each through EVALSHA
(one connection, one batch at a time, as a host's loop thread sends them; each batch carries the
{E}:pending entry of the batch before, as acknowledged batches ride on batches to leave it), and
prints per K:
  - script us/batch and us/buyer: INFO commandstats' evalsha usec (the time Redis spends inside
    the script, its redis.call()s included),
  - cpu us/buyer: the redis-server process's user+system CPU from /proc/<pid>/stat over the run
    (what the script costs plus reading the request, writing the reply, the AOF write and fsync),
  - aof B/buyer: bytes appended to the AOF per buyer (--aof; an AOF rewrite child rewrites every
    one of them again, so they cost twice),
  - the redis.call()s the script made, per batch, with their usec per call (commandstats counts
    calls made from scripts too).

  scripts/bench_deduct.py [--script lua/deduct.lua] [-k 1 20 40] [-n 3000] [--aof | --both]
                          [--runs 1] [-v] [--hold-ms 0] [--no-acks]
  scripts/bench_deduct.py --single --script OLD.lua   the one-buyer ARGV of the script before
                                                      batches (event, user, qty, host, deadline)
--aof: --appendonly yes --appendfsync always, as the stack runs Redis (without: no persistence).
The script's ARGV is built by argv_for() below: keep it in step with lua/deduct.lua's header.
"""
import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Redis:
    def __init__(self, port):
        for _ in range(200):
            try:
                self.c = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("redis-server did not start")
        self.f = self.c.makefile("rb")

    def cmd(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for x in args:
            x = x if isinstance(x, bytes) else str(x).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(x), x))
        self.c.sendall(b"".join(out))
        return self.read()

    def read(self):
        line = self.f.readline()
        t, rest = line[:1], line[1:-2]
        if t == b"-":
            raise RuntimeError(rest.decode())
        if t == b"+":
            return rest
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self.f.read(n + 2)[:-2]
        return [self.read() for _ in range(max(int(rest), 0))]

    def info(self, section):
        out = {}
        for line in self.cmd("INFO", section).decode().split("\r\n"):
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k] = v
        return out


def cpu_s(pid):
    """utime + stime of pid, and of its reaped children (an AOF rewrite's fork)."""
    with open("/proc/%d/stat" % pid) as f:
        w = f.read().rsplit(")", 1)[1].split()
    return (int(w[11]) + int(w[12])) / TICK, (int(w[13]) + int(w[14])) / TICK


def argv_for(users, hold_ms=0, acks=()):
    # event, host_id, deadline_ms, n, hold_ms, keep, idem_window_ms, then (user, qty, key) each,
    # then the {E}:pending fields (batches' first order ids) JetStream acknowledged, deleted
    argv = ["e", "h1", 0, len(users), hold_ms, 0, 3600000]
    for u in users:
        argv += [u, 1, ""]
    return argv + list(acks)


def sold_ids(reply):
    """The ids a batch sold, from deduct.lua's short reply (a buyer who bought answers an
    integer; the last element is {gen, created_ms, hold_until, first_seq}) or the long one of
    scripts before it ({"ok", id, ...} per buyer)."""
    if not isinstance(reply, list):
        return []  # a cut-down script (measuring its parts)
    ids = [x[1] for x in reply if isinstance(x, list) and x and x[0] == b"ok"]
    bought = sum(1 for x in reply if isinstance(x, int))
    if bought:
        ms, seq = int(reply[-1][1]), int(reply[-1][3])
        ids += [b"%013d-%010d-e" % (ms, seq + i) for i in range(bought)]
    return ids


def acked_entry(reply):
    # A batch's {E}:pending entry is named by its first order id.
    return sold_ids(reply)[:1]


def run(a, k, aof):
    port = free_port()
    d = tempfile.mkdtemp(prefix="snatch-bench-deduct.")
    conf = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", d]
    conf += ["--appendonly", "yes", "--appendfsync", "always"] if aof else ["--appendonly", "no"]
    p = subprocess.Popen(["redis-server"] + conf, stdout=subprocess.DEVNULL)
    try:
        r = Redis(port)
        sha = r.cmd("SCRIPT", "LOAD", open(a.script).read()).decode()
        r.cmd("HSET", "{e}:meta", "stock", 10 ** 12, "sold", 0, "limit", 1, "gen", 1)
        keys = ["{e}:%s" % s for s in ("meta", "users", "orders", "uorders", "pending")]
        u, acks = 0, []
        if not a.single:  # warm up: the hashes grow as they would in a sale under way
            for _ in range(200):
                users = ["w%d" % (u + i) for i in range(20)]
                u += 20
                acks = acked_entry(r.cmd("EVALSHA", sha, 5, *keys, *argv_for(users, 0, acks)))
        aof0 = int(r.info("persistence").get("aof_current_size", 0))
        r.cmd("CONFIG", "RESETSTAT")
        c0, ch0 = cpu_s(p.pid)
        t0 = time.monotonic()
        for _ in range(a.n):
            if a.single:
                u += 1
                r.cmd("EVALSHA", sha, 5, *keys, "e", "u%d" % u, 1, "h1", 0)
                continue
            users = ["u%d" % (u + i) for i in range(k)]
            u += k
            # The orders of the batch before were acknowledged meanwhile: its entry rides
            # along, as the host's pending deletes do.
            reply = r.cmd("EVALSHA", sha, 5, *keys, *argv_for(users, a.hold_ms, acks))
            acks = acked_entry(reply) if a.acks else []
        wall = time.monotonic() - t0
        c1, ch1 = cpu_s(p.pid)
        stats = r.info("commandstats")
        aof1 = int(r.info("persistence").get("aof_current_size", 0))
        r.cmd("INFO", "commandstats")  # after the CPU reading: not counted
        buyers = a.n * k
        ev = stats.get("cmdstat_evalsha", "")
        usec = float(ev.split("usec=")[1].split(",")[0]) if ev else 0.0
        calls = []
        for name, v in sorted(stats.items()):
            if name in ("cmdstat_evalsha", "cmdstat_config|resetstat"):
                continue
            f = dict(x.split("=") for x in v.split(","))
            calls.append("%s %.2f/batch %.2fus" % (name[8:], int(f["calls"]) / a.n,
                                                    float(f["usec_per_call"])))
        print("%-10s K=%-3d aof=%-3s script %7.1f us/batch %6.2f us/buyer | cpu %6.2f us/buyer"
              " (children %.2f) | aof %5.0f B/buyer | %.0f buyers/s" % (
                  os.path.basename(a.script), k, "yes" if aof else "no", usec / a.n,
                  usec / buyers, (c1 - c0) * 1e6 / buyers, (ch1 - ch0) * 1e6 / buyers,
                  (aof1 - aof0) / buyers, buyers / wall))
        if a.verbose:
            print("    " + "; ".join(calls))
    finally:
        p.terminate()
        p.wait()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--script", default=os.path.join(ROOT, "lua", "deduct.lua"))
    ap.add_argument("-k", type=int, nargs="+", default=[1, 20, 40], help="buyers per batch")
    ap.add_argument("-n", type=int, default=3000, help="batches")
    ap.add_argument("--aof", action="store_true", help="appendonly yes, appendfsync always")
    ap.add_argument("--both", action="store_true", help="without then with --aof")
    ap.add_argument("--hold-ms", type=int, default=0, help="orders sold with a hold")
    ap.add_argument("--no-acks", dest="acks", action="store_false",
                    help="no acknowledged entries riding on the batches")
    ap.add_argument("--runs", type=int, default=1, help="repeat each measurement")
    ap.add_argument("-v", "--verbose", action="store_true", help="the script's redis.call()s")
    ap.add_argument("--single", action="store_true", help="old one-buyer ARGV")
    a = ap.parse_args()
    for aof in ([False, True] if a.both else [a.aof]):
        for k in ([1] if a.single else a.k):
            for _ in range(a.runs):
                run(a, k, aof)


if __name__ == "__main__":
    main()
