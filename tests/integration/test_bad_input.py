"""Hostile clients: garbage, oversize heads and bodies, smuggling shapes, slow clients. Each gets
a clear 4xx or a close, nothing changes in Redis, and the host keeps serving everyone else."""
import os
import re
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Stack, Suite  # noqa: E402

suite = Suite()


def complete(out):
    """True once out holds one whole response (head + Content-Length body)."""
    end = out.find(b"\r\n\r\n")
    if end < 0:
        return False
    length = 0
    for line in out[:end].split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    return len(out) >= end + 4 + length


def raw(port, data, timeout=5.0, read_all=True):
    """Sends raw bytes, returns what came back until close or timeout (or, with read_all
    False, until one whole response arrived)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
            if not read_all and complete(out):
                break
        return out
    finally:
        s.close()


def status_of(resp):
    try:
        return int(resp.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


CASES = [
    # (name, request bytes, acceptable statuses; None = a close without answer is fine too)
    ("garbage", b"\x00\x01\x02hello\r\n\r\n", {400, None}),
    ("bad method", b"BREW /v1/events/x HTTP/1.1\r\nHost: a\r\n\r\n", {400, 405, 501, None}),
    ("bad version", b"GET /healthz HTTP/9.9\r\nHost: a\r\n\r\n", {400, 505, None}),
    ("huge head", b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * 100000 + b"\r\n\r\n", {431, 400, None}),
    ("huge body", b"POST /v1/events/sm/snatch?user=x HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n" + b"a" * 70000, {413}),
    ("cl+te", b"POST /v1/events/sm/snatch?user=s1 HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400, None}),
    ("dup cl", b"POST /v1/events/sm/snatch?user=s2 HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", {400, None}),
    ("bad user", b"POST /v1/events/sm/snatch?user=%27%3Bdrop HTTP/1.1\r\nHost: a\r\n\r\n", {400}),
    ("sql user hdr", b"POST /v1/events/sm/snatch HTTP/1.1\r\nX-User-Id: x' OR 1=1 --\r\n\r\n", {400}),
    ("bad qty", b"POST /v1/events/sm/snatch?user=q1&qty=1e3 HTTP/1.1\r\n\r\n", {400}),
    ("neg qty", b"POST /v1/events/sm/snatch?user=q2&qty=-1 HTTP/1.1\r\n\r\n", {400}),
    ("long event", b"POST /v1/events/" + b"e" * 300 + b"/snatch?user=x HTTP/1.1\r\n\r\n", {400}),
    ("traversal", b"GET /v1/events/../../etc/passwd HTTP/1.1\r\n\r\n", {400, 404}),
]


@suite.case
def hostile_requests_get_4xx_and_change_nothing():
    with Stack(hosts=1, threads=2, subscriber=False,
               host_extra=("--header-timeout-ms", "1000")) as st:
        h = st.host
        h.create_event("sm", 10)
        before = st.redis.cmd("HGETALL", "{sm}:meta")
        for name, data, ok in CASES:
            resp = raw(h.port, data, read_all=False)
            code = status_of(resp)
            assert code in ok, (name, code, resp[:200])
            assert h.request("GET", "/healthz")[0] == 200, name
        assert st.redis.cmd("HGETALL", "{sm}:meta") == before, "bad input changed Redis"
        assert st.redis.cmd("HLEN", "{sm}:users") == 0


@suite.case
def slow_clients_do_not_starve_others():
    """Slowloris: a thousand connections dribbling their request head a byte at a time while
    real buyers are served; the header timeout then closes every slow one (408)."""
    with Stack(hosts=1, threads=2, subscriber=False,
               host_extra=("--header-timeout-ms", "1500")) as st:
        h = st.host
        h.create_event("slow", 100)
        head = b"POST /v1/events/slow/snatch?user=slowpoke HTTP/1.1\r\nHost: a\r\n"
        socks = [socket.create_connection(("127.0.0.1", h.port)) for _ in range(1000)]
        served = 0
        t0 = time.time()
        for rnd in range(10):  # ten bytes each, one byte per connection per round
            for s in socks:
                s.send(head[rnd:rnd + 1])
            s_, b = h.snatch("slow", "fast%d" % rnd)
            assert s_ == 200, (s_, b)
            served += 1
            time.sleep(0.05)
        assert served == 10 and time.time() - t0 < 10
        time.sleep(1.8)
        closed = 0
        for s in socks:
            s.settimeout(2)
            try:
                data = s.recv(4096)
                if data == b"" or status_of(data) == 408:
                    closed += 1
            except OSError:
                closed += 1
            s.close()
        assert closed == len(socks), closed
        assert st.redis.cmd("HGET", "{slow}:meta", "sold") == "10"
        assert h.snatch("slow", "after")[0] == 200


@suite.case
def pipelined_requests_answered_in_order():
    with Stack(hosts=1, threads=1, subscriber=False) as st:
        h = st.host
        h.create_event("pipe", 3)
        reqs = b"".join(b"POST /v1/events/pipe/snatch?user=p%d HTTP/1.1\r\nHost: a\r\n\r\n" % i
                        for i in range(6))
        reqs += b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"
        resp = raw(h.port, reqs, timeout=10)
        codes = [int(c) for c in re.findall(rb"HTTP/1\.1 (\d{3}) ", resp)]
        assert codes == [200, 200, 200, 409, 409, 409, 200], codes
        users = [b'"user":"p%d"' % i for i in range(3)]
        pos = [resp.find(u) for u in users]
        assert all(p > 0 for p in pos) and pos == sorted(pos), pos


@suite.case
def bot_hammering_one_id_gets_429_and_at_most_the_limit():
    from loadgen import crowd, by_status
    with Stack(hosts=1, threads=2, subscriber=False) as st:
        h = st.host
        h.create_event("bot", 1000, per_user_limit=2)
        res = crowd(h.port, "bot", ["bot-7"] * 300, threads=8)
        counts = by_status(res)
        assert counts.get(200) == 2, counts                 # never more than the limit
        assert counts.get(429, 0) >= 250, counts            # the token bucket (burst 10, 5/s)
        assert set(counts) <= {200, 409, 429}, counts
        assert st.redis.cmd("HGET", "{bot}:users", "bot-7") == "2"
        assert st.redis.cmd("HGET", "{bot}:meta", "sold") == "2"
        # Other buyers are not affected by the bot's bucket.
        assert h.snatch("bot", "human-1")[0] == 200


if __name__ == "__main__":
    suite.run()
