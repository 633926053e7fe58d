"""Fault suite, infrastructure side: the same three-host stack as test_faults.py, and one fault of
the things around the hosts per case: kill -9 of the subscriber (restarted), nats-server
restarted on the same store, redis-server killed and restarted from its AOF (appendfsync
always), Redis and NATS unreachable for a few seconds (SIGSTOP ... SIGCONT), and NATS frozen for
15 s under a crowd wide enough to fill the socket buffers (the host's loop threads must go on
answering).

While a server is down every request must end quickly with 503 (fail closed) or 202 (deducted,
pending: reconciliation republishes it), never hang and never 200; afterwards, with
reconciliation, every 200 and 202 is exactly one SQLite row, Redis sold == rows, nothing
oversold, and the demand that keeps coming sells the rest of the stock."""
import asyncio
import json
import os
import re
import resource
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import SOURCE_DIR, Suite  # noqa: E402
from test_faults_common import (Answer, FaultStack, MultiCrowd, during, freeze,  # noqa: E402
                                longest, sell_out, sold, verify, wait_sold)

suite = Suite()

STOCK = 600
# Enough buyers that demand outlasts the outage (503s burn buyers fast) and still exceeds the
# stock afterwards; the crowd is stopped as soon as the stock is sold.
BUYERS = 60000
REDIS_TIMEOUT_MS = 300
ACK_TIMEOUT_MS = 1000
EXTRA = ("--redis-timeout-ms", str(REDIS_TIMEOUT_MS), "--ack-timeout-ms", str(ACK_TIMEOUT_MS))
# A request may wait for Redis (deduct), then for the JetStream ack, plus scheduling noise on a
# busy 2-core box. Anything longer is a hang.
BOUND_S = (REDIS_TIMEOUT_MS + ACK_TIMEOUT_MS) / 1000.0 + 3.0


def users(prefix, n=BUYERS):
    return ["%s%d" % (prefix, i) for i in range(n)]


def outage_case(name, ev, fault, aof=False, outage_ok=(202, 503, 409)):
    """Runs the crowd, applies fault(st) (which returns the outage window) mid-burst, keeps
    selling until sold out, checks. `outage_ok`: the statuses allowed for requests sent while
    the server was down."""
    with FaultStack(hosts=3, threads=2, aof_always=aof, host_extra=EXTRA) as st:
        st.host.create_event(ev, STOCK)
        crowd = MultiCrowd(st.hosts, ev, users(ev), threads=12, stop_at=time.time() + 60).start()
        wait_sold(st, ev, STOCK // 10)
        t_from, t_to = fault(st)
        answers = sell_out(st, ev, STOCK, crowd)
        inside, slowest_inside = during(answers, t_from, t_to)
        slowest = longest(answers)
        note = "outage=%.1fs during=%s max_request=%.2fs" % (
            t_to - t_from, fmt(inside), slowest)
        res = verify(st, ev, STOCK, answers, name, note=note)
        assert inside, "no request was sent during the outage: the case tested nothing"
        assert set(inside) <= set(outage_ok), "during the outage: %r (allowed %r)" % (
            inside, outage_ok)
        assert slowest <= BOUND_S, "a request took %.2fs (bound %.1fs)" % (slowest, BOUND_S)
        for h in st.hosts:
            assert h.proc.alive(), "host %s died:\n%s" % (h.host_id, h.proc.log_text()[-3000:])
        return res


def fmt(counts):
    return ",".join("%s:%d" % (k, v) for k, v in sorted(counts.items())) or "-"


@suite.case
def subscriber_kill9_and_restart():
    def fault(st):
        st.sub.kill9()
        t0 = time.time()
        time.sleep(1.0)
        st.sub.start()
        return t0, time.time()

    # The subscriber is not on the request path: sales go on (200) while it is down.
    outage_case("kill -9 subscriber, restart", "sub", fault, outage_ok=(200, 409))


@suite.case
def nats_restart_same_store():
    def fault(st):
        st.nats.stop()
        t0 = time.time()
        time.sleep(2.0)
        t1 = time.time()  # hosts reconnect as soon as the port opens, before start() returns
        st.nats.start()
        return t0, t1

    outage_case("restart nats-server (2s down)", "nrs", fault)


@suite.case
def redis_kill9_restart_from_aof():
    def fault(st):
        st.redis.kill9()
        t0 = time.time()
        time.sleep(1.5)
        t1 = time.time()
        st.redis.start()
        return t0, t1

    outage_case("kill -9 redis, restart (AOF)", "aof", fault, aof=True)


@suite.case
def redis_unreachable_sigstop():
    def fault(st):
        return freeze(st.redis.proc, 3.0)

    outage_case("redis SIGSTOP 3s", "rfz", fault)


@suite.case
def nats_unreachable_sigstop():
    def fault(st):
        return freeze(st.nats.proc, 3.0)

    outage_case("nats SIGSTOP 3s", "nfz", fault)


# ---- a long NATS stall under a wide crowd ----------------------------------------------------

STALL_STOCK = 6000
STALL_CONNS = 1500       # buyers waiting at once: orders in flight when NATS stops reading
STALL_FREEZE_S = 15.0
STALL_ACK_TIMEOUT_MS = 30000  # longer than the stall: every order in flight is published again
# each second (ATTEMPT_MAX_MS) for the whole stall, which is what fills the socket buffers
STALL_PAD = 780          # order() pads each record to about 1 KB (ORDERS_PAYLOAD_MAX is 1024)
# A liveness bound, not a speed assertion: a loop thread that answers at all answers /healthz in
# milliseconds; one blocked in a write to the frozen server answers only after SIGCONT.
STALL_PROBE_BOUND_S = 5.0


def padded_policy(path):
    """The default policy plus an order() that pads every record to about 1 KB: a stalled
    server's socket buffers fill with fewer buyers."""
    with open(os.path.join(SOURCE_DIR, "lua", "policy.lua")) as f:
        src = f.read()
    order = ("function M.order(o)\n"
             "  return string.format('{\"order_id\":\"%%s\",\"event\":\"%%s\",\"user\":\"%%s\","
             "\"qty\":%%d,\"host\":\"%%s\",\"created_at\":%%d,\"pad\":\"%s\"}', o.order_id, "
             "o.event, o.user, o.qty, o.host, o.created_at)\nend\n\nreturn M\n" % ("x" * STALL_PAD))
    new, n = re.subn(r"\nreturn M\n*$", "\n" + order, src)
    assert n == 1, "lua/policy.lua does not end with 'return M' any more: update the test"
    with open(path, "w") as f:
        f.write(new)
    return path


class WideCrowd:
    """`conns` keep-alive buyers at once on one host (asyncio, in a thread of its own), each
    buying for the next user until stop() or `stop_at`. A 503 makes that buyer wait 0.2 s, as a
    client backs off; every request has a timeout. answers: Answer objects as MultiCrowd's."""

    def __init__(self, host, event, users, conns, stop_at, timeout=60.0):
        self.port = host.port
        self.event = event
        self.users = users
        self.conns = conns
        self.stop_at = stop_at
        self.timeout = timeout
        self.answers = []
        self._next = 0
        self._stop = threading.Event()
        self._t = None

    def sent(self):
        return self._next

    def stop(self):
        self._stop.set()

    async def _request(self, reader, writer, user):
        writer.write(("POST /v1/events/%s/snatch?user=%s HTTP/1.1\r\nHost: t\r\n"
                      "Content-Length: 0\r\n\r\n" % (self.event, user)).encode())
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        length, close = 0, False
        while True:
            line = (await reader.readline()).strip()
            if not line:
                break
            k, _, v = line.decode("latin-1").partition(":")
            if k.lower() == "content-length":
                length = int(v)
            elif k.lower() == "connection" and v.strip().lower() == "close":
                close = True
        body = (await reader.readexactly(length)).decode("utf-8", "replace")
        try:
            body = json.loads(body)
        except ValueError:
            pass
        return status, body, close

    async def _buyer(self):
        conn = None
        while not self._stop.is_set() and time.time() < self.stop_at:
            if self._next >= len(self.users):
                break
            a = Answer(self.users[self._next])
            self._next += 1
            a.host = a.first = 0
            a.attempts = 1
            try:
                if conn is None:
                    conn = await asyncio.wait_for(
                        asyncio.open_connection("127.0.0.1", self.port), self.timeout)
                a.status, a.body, close = await asyncio.wait_for(
                    self._request(conn[0], conn[1], a.user), self.timeout)
            except (OSError, ValueError, IndexError, asyncio.TimeoutError,
                    asyncio.IncompleteReadError) as e:
                a.why = repr(e)
                a.cut = 1
                close = True
            a.t1 = time.time()
            a.latency = a.t1 - a.t0
            self.answers.append(a)
            if close and conn is not None:
                conn[1].close()
                conn = None
            if a.status == 503:
                await asyncio.sleep(0.2)
        if conn is not None:
            conn[1].close()

    async def _main(self):
        await asyncio.gather(*(self._buyer() for _ in range(self.conns)))

    def start(self):
        self._t = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._t.start()
        return self

    def join(self, timeout=120.0):
        self._t.join(timeout)
        assert not self._t.is_alive(), "crowd did not finish"
        return self.answers


def probe_health(host, until, bound):
    """GET /healthz on a new connection every 0.25 s until `until`: (answers, slowest seconds,
    failures). Any answer counts (503 degraded is one): the question is whether the host's
    threads answer at all."""
    n, slowest, fails = 0, 0.0, []
    while time.time() < until:
        t0 = time.time()
        try:
            host.request("GET", "/healthz", timeout=bound)
            n += 1
        except OSError as e:
            fails.append("%.1fs: %r" % (t0 - (until - STALL_FREEZE_S), e))
        slowest = max(slowest, time.time() - t0)
        time.sleep(0.25)
    return n, slowest, fails


@suite.case
def nats_stalled_long_loop_answers():
    """nats-server stops reading for 15 s while ~1500 buyers wait for their acks: the host's
    publishes fill the socket buffers. The loop threads must keep answering (/healthz, the 503s
    of new sales), and afterwards the usual invariants hold."""
    ev = "nstall"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = STALL_CONNS + 256  # the crowd's sockets, and the test's own files
    if soft != resource.RLIM_INFINITY and soft < want:
        assert hard == resource.RLIM_INFINITY or hard >= want, (
            "this case needs %d open files, the hard limit is %d" % (want, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    st = FaultStack(hosts=1, threads=2, host_extra=(
        "--ack-timeout-ms", str(STALL_ACK_TIMEOUT_MS), "--redis-timeout-ms", "1000"))
    st.policy = padded_policy(os.path.join(st.tmp.path, "policy.lua"))
    with st:
        st.host.create_event(ev, STALL_STOCK)
        crowd = WideCrowd(st.host, ev, users(ev, 200000), STALL_CONNS,
                          stop_at=time.time() + 120).start()
        wait_sold(st, ev, STALL_STOCK // 6, timeout=40)
        st.nats.proc.sigstop()
        t_from = time.time()
        try:
            n, slowest, fails = probe_health(st.host, t_from + STALL_FREEZE_S,
                                             STALL_PROBE_BOUND_S)
        finally:
            t_to = time.time()
            os.kill(st.nats.proc.pid, signal.SIGCONT)
        print("stall: /healthz answered %d times, slowest %.2fs, %d failed %s; sold %d" % (
            n, slowest, len(fails), fails[:3], sold(st, ev)), flush=True)
        print("".join(line for line in st.host.proc.log_text().splitlines(True)
                      if "orders:" in line), end="", flush=True)
        answers = sell_out(st, ev, STALL_STOCK, crowd, timeout=60)
        res = verify(st, ev, STALL_STOCK, answers, "nats SIGSTOP 15s, wide crowd",
                     note="outage=%.1fs probes=%d slowest_probe=%.2fs" % (
                         t_to - t_from, n, slowest))
        assert not fails and slowest <= STALL_PROBE_BOUND_S, (
            "the host did not answer /healthz while NATS was frozen: %d failed (%s), slowest "
            "%.2fs" % (len(fails), fails[:3], slowest))
        # The stall filled the socket buffers, or this case tested nothing: the host's write to
        # the frozen server ran into the write deadline and cnats dropped the connection.
        assert "orders: disconnected from NATS" in st.host.proc.log_text(), (
            "the connection to the frozen NATS was never dropped: the socket buffers did not "
            "fill (widen the crowd)")
        assert st.host.proc.alive()
        # Every row, republished ones too, has the policy's order() shape (snatch-reconcile was
        # given the hosts' --policy).
        rows = st.sub.query("SELECT payload FROM orders WHERE event=?", (ev,))
        unpadded = [p for (p,) in rows if json.loads(p).get("pad") != "x" * STALL_PAD]
        assert not unpadded, "%d of %d orders stored without the policy's order() padding: %s" % (
            len(unpadded), len(rows), unpadded[0])
        return res


if __name__ == "__main__":
    suite.run()
