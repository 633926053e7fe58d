"""Faults of a Redis that is up but refuses the host's setup commands (issue 8): one that answers
LOADING while it reloads a big AOF after kill -9, and one BUSY running a long script while a
host connects. Before the fix the host sent SCRIPT LOAD once, got the error and never tried
again: connected but never ready, 503 for good. Now it retries with backoff and sells again.

Run: SNATCH_BUILD_DIR=build python3 tests/integration/test_faults_redis_setup.py"""
import os
import re
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Host, Stack, Suite, wait_until  # noqa: E402
from test_faults_common import FaultStack, MultiCrowd, sell_out, verify, wait_sold  # noqa: E402

suite = Suite()

STOCK = 1500
BUYERS = 300000
EXTRA = ("--redis-timeout-ms", "300", "--ack-timeout-ms", "1000")
# The keys that make the reload slow, as in a Redis that holds other data besides the sale.
FILLER_KEYS = 300000
# key-load-delay -10: Redis sleeps 1 us every 10 keys while loading, which makes the reload of
# FILLER_KEYS take a couple of seconds on any machine (measured and printed); LOADING answers go
# out every 1 KiB read instead of every 2 MB.
LOADING_ARGS = ("--enable-debug-command", "yes", "--key-load-delay", "-10",
                "--loading-process-events-interval-bytes", "1024")
# Generous: this box is shared; before the fix the hosts never sold again at all.
RESUME_BOUND_S = 5.0


def backend_errors(host, step):
    st, body = host.request("GET", "/metrics")
    assert st == 200, st
    m = re.search(r'snatch_backend_errors_total\{backend="redis",step="%s"\} (\d+)' % step, body)
    assert m, "no %s counter in /metrics" % step
    return int(m.group(1))


def redis_info(st, field):
    info = st.redis.cmd("INFO", "persistence")
    m = re.search(r"^%s:(\S+)" % field, info, re.M)
    return m.group(1) if m else None


@suite.case
def redis_restart_while_loading_aof():
    with FaultStack(hosts=3, threads=2, aof_always=True, host_extra=EXTRA,
                    redis_extra=LOADING_ARGS) as st:
        # The filler goes into the AOF's base file, which is what a restart reloads.
        st.redis.cmd("DEBUG", "POPULATE", FILLER_KEYS, "filler")
        st.redis.cmd("BGREWRITEAOF")
        wait_until(lambda: redis_info(st, "aof_rewrite_in_progress") == "0" and
                   redis_info(st, "aof_rewrite_scheduled") == "0", 60, 0.1, "AOF rewrite")
        ev = "ld"
        st.host.create_event(ev, STOCK)
        crowd = MultiCrowd(st.hosts, ev, ["ld%d" % i for i in range(BUYERS)], threads=12,
                           stop_at=time.time() + 90).start()
        wait_sold(st, ev, STOCK // 10)
        st.redis.kill9()
        t_kill = time.time()
        time.sleep(0.5)
        t_restart = time.time()
        st.redis.start()  # returns once PING answers PONG: the load is over
        t_loaded = time.time()
        answers = sell_out(st, ev, STOCK, crowd, timeout=40)
        after = [a.t1 for a in answers if a.status == 200 and a.t0 >= t_kill]
        resumed = min(after) - t_loaded if after else float("inf")
        note = "loading=%.1fs first_200_after_load=%.2fs" % (t_loaded - t_restart, resumed)
        res = verify(st, ev, STOCK, answers, "kill -9 redis, slow AOF load", note=note)
        assert t_loaded - t_restart >= 1.0, "the reload was too quick to test anything: " + note
        assert resumed <= RESUME_BOUND_S, "hosts did not sell again soon after the load: " + note
        assert res["unsold"] == 0, note
        refused = sum(backend_errors(h, "script_load") for h in st.hosts)
        assert refused > 0, "no SCRIPT LOAD was refused: the hosts never met LOADING (" + note + ")"
        print("  loading %.2fs, first 200 %.2fs after it, %d refused SCRIPT LOADs counted" % (
            t_loaded - t_restart, resumed, refused), flush=True)


class BusyScript(threading.Thread):
    """EVAL of a script that loops until SCRIPT KILL, on its own connection."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.reply = None

    def run(self):
        script = b"while true do end"
        with socket.create_connection(("127.0.0.1", self.port), timeout=60) as s:
            s.sendall(b"*3\r\n$4\r\nEVAL\r\n$%d\r\n%s\r\n$1\r\n0\r\n" % (len(script), script))
            self.reply = s.makefile("rb").readline()


@suite.case
def redis_busy_script_while_host_connects():
    with Stack(hosts=0, redis_extra=("--busy-reply-threshold", "100")) as st:
        busy = BusyScript(st.redis.port)
        busy.start()
        wait_until(lambda: _busy(st), 10, 0.05, "Redis BUSY")
        h = Host(st.tmp.path, st.redis.port, st.nats.url, threads=2)
        st.hosts.append(h)
        h.start(wait_ready=False)
        wait_until(lambda: "BUSY" in h.proc.log_text(), 15, 0.05, "SCRIPT LOAD refused with BUSY")
        time.sleep(0.5)  # refused again meanwhile, still not ready
        assert h.request("GET", "/healthz")[0] == 503
        t_kill = time.time()
        st.redis.cmd("SCRIPT", "KILL")
        busy.join(10)
        wait_until(lambda: h.request("GET", "/healthz")[0] == 200, 15, 0.05, "host ready again")
        took = time.time() - t_kill
        h.create_event("bz", 5)
        for i in range(5):
            s, b = h.snatch("bz", "u%d" % i)
            assert s == 200, (s, b)
        wait_until(lambda: st.sub.rows("bz") == 5, 20, 0.1, "5 rows persisted")
        assert backend_errors(h, "script_load") >= 2, "refusals not counted"
        print("  ready %.2fs after SCRIPT KILL" % took, flush=True)


def _busy(st):
    try:
        st.redis.cmd("PING")
        return False
    except RuntimeError as e:
        return str(e).startswith("BUSY")


if __name__ == "__main__":
    suite.run()
