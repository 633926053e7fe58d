"""KNOWN BUGS found by the fault suite, one reproduction each. These cases FAIL until the bug is
fixed; they are registered in tests/faults.cmake as DISABLED (ctest lists them as "Not Run",
so nobody is blocked) - run them by hand:
    SNATCH_BUILD_DIR=build python3 tests/integration/test_faults_bugs.py
When one passes, the bug is fixed: drop DISABLED (or move the case into test_faults*.py).

BUG 1 (sale.c / redis.c / deduct.lua): a deduction that times out is answered 503
"unavailable" - documented as "nothing deducted" - but the EVALSHA already sits in Redis's socket
buffer; when Redis resumes (after a GC-like stall, SIGSTOP, a slow fsync, a long script) it runs
it: the buyer holds a ticket (sold +1, {E}:users, {E}:orders, {E}:pending), reconciliation
persists it, and the buyer was told he has nothing (a retry then says 409 limit_reached).

BUG 2 (http.c http_server_close, with worker.c on_drain_tick): on SIGTERM the drain timer sees
inflight == 0 and calls http_server_close, whose fast path closes every connection with
`!c->head && c->writes == 0 && !c->in_feed` - but an answer built in place by http_respond sits
in c->out (out_len > 0) until the idle handler flushes it, one loop phase later. Timers run
before idle, so the answers of the last sales (their orders already acknowledged by JetStream,
HDEL'd from {E}:pending right after) are freed unsent and the client reads EOF
(RemoteDisconnected). strace shows: async wakeup (acks) -> close(fd) of each connection with no
write() -> the HDELs. Fix: also require c->out_len == 0 (and not dirty) in that fast path, or
flush before closing."""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Suite, wait_until  # noqa: E402
from test_faults_common import FaultStack, meta  # noqa: E402

suite = Suite()


@suite.case
def bug1_deduct_timeout_answers_503_but_redis_sells():
    with FaultStack(hosts=1, threads=1, host_extra=("--redis-timeout-ms", "300")) as st:
        h = st.host
        h.create_event("ghost", 10)
        s, b = h.snatch("ghost", "warm")  # event known, script loaded: the next call is EVALSHA
        assert s == 200, (s, b)
        os.kill(st.redis.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.time()
            s, b = h.snatch("ghost", "victim")
            took = time.time() - t0
        finally:
            os.kill(st.redis.proc.pid, signal.SIGCONT)
        assert s == 503 and b == {"error": "unavailable"}, (s, b)
        assert took < 3.0, took
        time.sleep(1.0)  # Redis reads what was buffered while it was stopped
        wait_until(lambda: h.request("GET", "/healthz")[0] == 200, 10, what="host back")
        sold = int(meta(st, "ghost")["sold"])
        held = st.redis.cmd("HGET", "{ghost}:users", "victim")
        retry = h.snatch("ghost", "victim")
        assert held is None and sold == 1, (
            "503 'unavailable' (nothing deducted) but Redis sold the buyer a ticket: sold=%d, "
            "{ghost}:users victim=%s, retry -> %r" % (sold, held, retry))


@suite.case
def bug2_sigterm_drops_answers_of_the_last_sales():
    import test_faults
    # Three tries: the race needs a sale to finish in the drain's last loop turn (most runs).
    for _ in range(3):
        test_faults.sigterm_case("SIGTERM (strict)", acks_in_flight=False, strict=True)
        test_faults.sigterm_case("SIGTERM, acks in flight (strict)", acks_in_flight=True,
                                 strict=True)


if __name__ == "__main__":
    suite.run()
