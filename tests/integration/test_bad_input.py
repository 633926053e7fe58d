"""Hostile clients: garbage, oversize heads and bodies, smuggling shapes, slow clients. Each gets
a clear 4xx or a close, nothing changes in Redis, and the host keeps serving everyone else."""
import os
import re
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Host, Stack, Suite  # noqa: E402

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
    # Framing a proxy in front may read differently (http-parser 2.9 honours them): refused.
    ("fold after empty user id", b"POST /v1/events/sm/snatch?user=f1 HTTP/1.1\r\nX-User-Id:\r\n victim\r\n\r\n", {400}),
    ("fold after empty TE", b"POST /v1/events/sm/snatch?user=f2 HTTP/1.1\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", {400}),
    ("fold after empty CL", b"POST /v1/events/sm/snatch?user=f3 HTTP/1.1\r\nContent-Length:\r\n 2\r\n\r\n{}", {400}),
    ("bare LF in head", b"POST /v1/events/sm/snatch?user=f4 HTTP/1.1\r\nX-Foo: a\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400}),
    ("bare LF lines", b"POST /v1/events/sm/snatch?user=f5 HTTP/1.1\nHost: a\n\n", {400}),
    ("blank value padding", b"POST /v1/events/sm/snatch?user=f6 HTTP/1.1\r\nX-Pad:" + b" " * 9000 + b"a\r\n\r\n", {431}),
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



def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def flood_unread(port, data, stop):
    """Sends data as fast as the host takes it and never reads an answer."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setblocking(False)
    sent = 0
    try:
        while not stop.is_set() and sent < len(data):
            try:
                sent += s.send(data[sent:sent + 65536])
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                break
        stop.wait(30)
    finally:
        s.close()


@suite.case
def pipelined_cheap_requests_do_not_buffer_without_bound():
    """Clients pipelining GET /metrics by the thousand and never reading: parsing pauses once a
    connection's unsent answers pass a cap, so the host's memory stays bounded and its loop
    threads keep answering other clients."""
    # Under ASan, freed blocks sit in its quarantine (256 MiB by default) and would count as RSS.
    old_asan = os.environ.get("ASAN_OPTIONS")
    os.environ["ASAN_OPTIONS"] = (old_asan + ":" if old_asan else "") + "quarantine_size_mb=1"
    try:
        pipelined_metrics_flood()
    finally:
        if old_asan is None:
            del os.environ["ASAN_OPTIONS"]
        else:
            os.environ["ASAN_OPTIONS"] = old_asan


def pipelined_metrics_flood():
    with Stack(hosts=1, threads=2, subscriber=False) as st:
        h = st.host
        for i in range(40):  # a bigger /metrics answer, as a real sale has
            h.create_event("m%02d" % i, 10)
        metrics_len = len(raw(h.port, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n"))
        pid = h.proc.pid
        base = rss_kib(pid)
        data = b"GET /metrics HTTP/1.1\r\n\r\n" * 40000  # ~1 MiB each
        stop = threading.Event()
        floods = [threading.Thread(target=flood_unread, args=(h.port, data, stop))
                  for _ in range(16)]
        try:
            for t in floods:
                t.start()
            peak = base
            worst = 0.0
            t_end = time.time() + 4
            while time.time() < t_end:
                t0 = time.time()
                code = h.request("GET", "/healthz", timeout=5)[0]
                worst = max(worst, time.time() - t0)
                assert code == 200, code
                peak = max(peak, rss_kib(pid))
                time.sleep(0.1)
        finally:
            stop.set()
            for t in floods:
                t.join(40)
        grown_mib = (peak - base) / 1024
        print("metrics answer %d bytes, RSS %d -> peak %d KiB, worst /healthz %.3f s" %
              (metrics_len, base, peak, worst))
        # Unbounded, each connection buffers ~2500 answers per 64 KiB read it gets parsed.
        assert grown_mib < 64, grown_mib
        assert worst < 2.0, worst
        assert h.request("GET", "/healthz")[0] == 200


@suite.case
def strict_framing_closes_the_connection():
    with Stack(hosts=1, threads=1, subscriber=False) as st:
        h = st.host
        h.create_event("fr", 10)
        # The second request, folded, must not run; the first is answered, then the close.
        resp = raw(h.port, b"GET /healthz HTTP/1.1\r\n\r\n"
                   b"POST /v1/events/fr/snatch?user=u1 HTTP/1.1\r\nX-User-Id:\r\n victim\r\n\r\n"
                   b"POST /v1/events/fr/snatch?user=u2 HTTP/1.1\r\n\r\n", timeout=5)
        codes = [int(c) for c in re.findall(rb"HTTP/1\.1 (\d{3}) ", resp)]
        assert codes == [200, 400], codes
        assert st.redis.cmd("HLEN", "{fr}:users") == 0


def hold(port, n, data=b""):
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if data:
            s.sendall(data)
        socks.append(s)
    return socks


def hold_busy(port, n):
    """n connections, each admitted (answered once) and then mid-request: none can be shed."""
    socks = []
    deadline = time.time() + 10
    while len(socks) < n and time.time() < deadline:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        out = b""
        try:
            while not complete(out):
                chunk = s.recv(4096)
                if not chunk:
                    break
                out += chunk
        except OSError:
            pass
        if status_of(out) == 200:
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
            socks.append(s)
        else:  # refused while earlier connections were still closing: try again
            s.close()
            time.sleep(0.05)
    assert len(socks) == n, len(socks)
    return socks


def refused(port):
    """True when a new connection is answered 503 or closed at once, without a request."""
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    try:
        data = s.recv(4096)
        return data == b"" or status_of(data) == 503
    except socket.timeout:
        return False
    except OSError:
        return True
    finally:
        s.close()


@suite.case
def connection_cap_sheds_idle_connections_for_new_buyers():
    with Stack(hosts=1, threads=2, subscriber=False,
               host_extra=("--max-connections", "20", "--max-connections-per-client", "0")) as st:
        h = st.host
        h.create_event("cap", 100)
        idle = hold(h.port, 40)  # idle keep-alive holders, twice the cap
        try:
            for i in range(5):
                assert h.snatch("cap", "buyer%d" % i)[0] == 200, i
        finally:
            for s in idle:
                s.close()
        # Nothing idle to shed (every holder is mid-request): new connections are refused at
        # once, never left waiting.
        busy = []
        try:
            busy = hold_busy(h.port, 20)
            assert refused(h.port)
        finally:
            for s in busy:
                s.close()
        time.sleep(0.3)
        assert h.snatch("cap", "after")[0] == 200


@suite.case
def connection_cap_per_client_address():
    with Stack(hosts=1, threads=2, subscriber=False,
               host_extra=("--max-connections-per-client", "6")) as st:
        h = st.host
        held = hold_busy(h.port, 6)
        try:
            assert refused(h.port)
        finally:
            for s in held:
                s.close()
        time.sleep(0.3)
        assert h.request("GET", "/healthz")[0] == 200


@suite.case
def second_host_on_a_served_port_refuses_to_start():
    with Stack(hosts=1, threads=2, subscriber=False) as st:
        h = st.host
        argv = list(h.argv)
        argv[argv.index("--host-id") + 1] = "h2"
        try:
            p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=15)
        except subprocess.TimeoutExpired:
            raise AssertionError("a second host started on port %d" % h.port)
        out = p.stdout.decode("utf-8", "replace")
        assert p.returncode != 0 and "address already in use" in out, (p.returncode, out)
        assert h.request("GET", "/healthz")[0] == 200


@suite.case
def admin_listener_serves_admin_and_metrics_only_there():
    from harness import ADMIN_TOKEN, free_port
    aport = free_port()
    with Stack(hosts=1, threads=2, subscriber=False,
               host_extra=("--admin-listen", "127.0.0.1:%d" % aport)) as st:
        h = st.host
        admin = Host.__new__(Host)
        admin.port = aport
        auth = {"Authorization": "Bearer " + ADMIN_TOKEN}
        body = '{"stock": 5}'
        assert h.request("PUT", "/admin/events/al", body=body, headers=auth)[0] == 404
        assert h.request("GET", "/metrics")[0] == 404
        assert admin.request("PUT", "/admin/events/al", body=body, headers=auth)[0] == 200
        st_, text = admin.request("GET", "/metrics")
        assert st_ == 200 and "snatch" in text, (st_, text[:200])
        assert h.snatch("al", "buyer1")[0] == 200
        assert admin.snatch("al", "buyer2")[0] == 404  # buyers belong on the public port
        assert h.request("GET", "/healthz")[0] == 200
        assert admin.request("GET", "/healthz")[0] == 200


if __name__ == "__main__":
    suite.run()
