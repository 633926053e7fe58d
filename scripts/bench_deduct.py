#!/usr/bin/env python3
"""Redis time of lua/deduct.lua alone: starts a redis-server (no persistence) on a free loopback
port, runs N batches of K new buyers each through EVALSHA, and prints the script's time per buyer
from INFO commandstats (the time Redis spends inside the script, its redis.call()s included).

  scripts/bench_deduct.py [--script lua/deduct.lua] [-k 20] [-n 3000]
  scripts/bench_deduct.py --single --script OLD.lua   the one-buyer ARGV of the script before
                                                      batches (event, user, qty, host, deadline)
"""
import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--script", default=os.path.join(ROOT, "lua", "deduct.lua"))
    ap.add_argument("-k", type=int, default=20, help="buyers per batch")
    ap.add_argument("-n", type=int, default=3000, help="batches")
    ap.add_argument("--single", action="store_true", help="old one-buyer ARGV")
    a = ap.parse_args()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    d = tempfile.mkdtemp(prefix="snatch-bench-deduct.")
    p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", d], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                c = socket.create_connection(("127.0.0.1", port))
                break
            except OSError:
                time.sleep(0.05)
        f = c.makefile("rb")

        def cmd(*args):
            out = b"*%d\r\n" % len(args)
            for x in args:
                x = x if isinstance(x, bytes) else str(x).encode()
                out += b"$%d\r\n%s\r\n" % (len(x), x)
            c.sendall(out)
            return read()

        def read():
            line = f.readline()
            t, rest = line[:1], line[1:-2]
            if t == b"-":
                raise RuntimeError(rest.decode())
            if t in b"+:":
                return rest
            if t == b"$":
                n = int(rest)
                return None if n < 0 else f.read(n + 2)[:-2]
            return [read() for _ in range(max(int(rest), 0))]

        sha = cmd("SCRIPT", "LOAD", open(a.script).read()).decode()
        cmd("HSET", "{e}:meta", "stock", 10 ** 9, "sold", 0, "limit", 1, "gen", 1)
        cmd("CONFIG", "RESETSTAT")
        keys = ["{e}:%s" % k for k in ("meta", "users", "orders", "uorders", "pending")]
        u = 0
        k = 1 if a.single else a.k
        for _ in range(a.n):
            if a.single:
                u += 1
                cmd("EVALSHA", sha, 5, *keys, "e", "u%d" % u, 1, "h1", 0)
                continue
            argv = ["e", "h1", 0, k, 0, 0, 3600000]  # no hold, no idempotency keys
            for _ in range(k):
                u += 1
                argv += ["u%d" % u, 1, ""]
            cmd("EVALSHA", sha, 5, *keys, *argv)
        for line in cmd("INFO", "commandstats").decode().split("\r\n"):
            if line.startswith("cmdstat_evalsha:"):
                usec = float(line.split("usec=")[1].split(",")[0])
                print("%s: %d batches of %d: %.2f us of Redis per buyer" % (
                    os.path.basename(a.script), a.n, k, usec / (a.n * k)))
    finally:
        p.terminate()
        p.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
