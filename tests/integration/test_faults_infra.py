"""Fault suite, infrastructure side: the same three-host stack as test_faults.py, and one fault of
the things around the hosts per case: kill -9 of the subscriber (restarted), nats-server
restarted on the same store, redis-server killed and restarted from its AOF (appendfsync
always), Redis and NATS unreachable for a few seconds (SIGSTOP ... SIGCONT).

While a server is down every request must end quickly with 503 (fail closed) or 202 (deducted,
pending: reconciliation republishes it), never hang and never 200; afterwards, with
reconciliation, every 200 and 202 is exactly one SQLite row, Redis sold == rows, nothing
oversold, and the demand that keeps coming sells the rest of the stock."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Suite  # noqa: E402
from test_faults_common import (FaultStack, MultiCrowd, during, freeze, longest,  # noqa: E402
                                sell_out, verify, wait_sold)

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


if __name__ == "__main__":
    suite.run()
