"""A policy whose admit() never returns for one buyer ("wedge"): LuaJIT cannot interrupt it, so
the loop thread that took that request is wedged for good. The loop-stall watchdog must see it:
the host's other thread keeps selling, /healthz answers 503 "stalled" with the reason (from the
thread still running), /metrics counts it, the log says it once; with --stall-exit-ms the
process exits with status 70 (for its supervisor to restart it), and after it, as after a
kill -9, reconciliation leaves every invariant intact (no oversell, every 200 a row).

Real redis-server, nats-server and subscriber (harness.Stack); bounded in time throughout."""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jsonschema
import yaml

sys.path.insert(0, os.path.dirname(__file__))
from harness import SOURCE_DIR, Suite, binary, wait_until  # noqa: E402
from test_faults_common import FaultStack, MultiCrowd, sold, verify, wait_sold  # noqa: E402

suite = Suite()

STOCK = 400
BIG_STOCK = 50000
EXIT_STATUS = 70  # README: snatch-host's exit status after --stall-exit-ms
WEDGE = "wedge"
# A request to the wedged thread is never answered: short timeouts, then a new connection
# (which the kernel may give the other thread).
PROBE_TIMEOUT_S = 1.0


def wedge_policy(path):
    """lua/policy.lua with an endless loop at the top of admit() for buyer WEDGE only."""
    with open(os.path.join(SOURCE_DIR, "lua", "policy.lua")) as f:
        src = f.read()
    head = "function M.admit(req)\n"
    assert src.count(head) == 1, "lua/policy.lua has no 'function M.admit(req)': update the test"
    src = src.replace(head, head + "  if req.user == '%s' then\n    local n = 0\n"
                      "    while true do n = n + 1 end\n  end\n" % WEDGE)
    with open(path, "w") as f:
        f.write(src)
    return path


def users(prefix, n=6000):
    return ["%s%d" % (prefix, i) for i in range(n)]


def stack(exit_ms):
    st = FaultStack(hosts=1, threads=2, host_extra=("--stall-exit-ms", str(exit_ms)))
    st.policy = wedge_policy(os.path.join(st.tmp.path, "policy.lua"))
    return st


def send_wedge(port):
    """The wedging request, on a connection of its own that is never read from: the thread
    that takes it never answers. Returns the socket (closed by the caller)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"POST /v1/events/ev/snatch?user=" + WEDGE.encode() + b" HTTP/1.1\r\n"
              b"Host: t\r\nContent-Length: 0\r\n\r\n")
    return s


def try_get(port, path):
    """(status, body text) on a new connection, or None when it landed on the wedged thread."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=PROBE_TIMEOUT_S)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def get_answered(port, path, timeout=30.0):
    """GET until a thread that still runs answers it."""
    got = []

    def answered():
        r = try_get(port, path)
        if r is not None:
            got.append(r)
        return r is not None
    wait_until(answered, timeout, 0.05, "an answer to GET %s from a running thread" % path)
    return got[-1]


def healthz_stalled(port, timeout=20.0):
    """Waits for /healthz 503 "stalled" (answered by the other thread); returns its body."""
    seen = []

    def stalled():
        r = try_get(port, "/healthz")
        if r is not None and r[0] == 503 and '"stalled"' in r[1]:
            seen.append(r[1])
            return True
        return False
    wait_until(stalled, timeout, 0.1, "/healthz 503 stalled")
    return seen[-1]


def check_health_spec(body):
    """The stalled /healthz body against docs/openapi.yaml's 503 of getHealth."""
    with open(os.path.join(SOURCE_DIR, "docs", "openapi.yaml")) as f:
        spec = yaml.safe_load(f)
    r = spec["paths"]["/healthz"]["get"]["responses"]["503"]
    schema = r["content"]["application/json"]["schema"]
    resolver = jsonschema.RefResolver.from_schema(spec)
    jsonschema.Draft4Validator(schema, resolver=resolver).validate(json.loads(body))


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("no %s in /metrics" % name)


def stall_lines(log):
    return [line for line in log.splitlines() if "stall: loop thread" in line]


@suite.case
def stalled_thread_flagged_others_keep_selling():
    """--stall-exit-ms 0: the host keeps running with one thread wedged; everything the watchdog
    shows, and the other thread's sales during the stall."""
    ev = "ev"
    with stack(0) as st:
        h = st.host
        # More than the crowd buys in the case's time: the sale must still run during the stall.
        h.create_event(ev, BIG_STOCK)
        crowd = MultiCrowd([h], ev, users("b", BIG_STOCK), threads=4, stop_at=time.time() + 90,
                           timeout=2.0).start()
        wait_sold(st, ev, 20)
        wedge = send_wedge(h.port)
        try:
            body = healthz_stalled(h.port)
            t_stalled = time.time()
            assert "loop thread" in body and "admit()" in body, body
            check_health_spec(body)
            sold_then = sold(st, ev)
            # The other thread goes on selling while the wedged one stays wedged.
            wait_sold(st, ev, sold_then + 40, timeout=60)
            status, text = get_answered(h.port, "/metrics")
            assert status == 200, (status, text[:300])
            # At least the wedged thread (a loaded machine may add a passing stall of its own).
            assert metric(text, "snatch_loop_stalled") >= 1, text[-600:]
            assert metric(text, "snatch_loop_stalls_total") >= 1, text[-600:]
            status, body = get_answered(h.port, "/healthz")
            assert status == 503 and '"stalled"' in body, (status, body)
            crowd.stop()
            answers = crowd.join()
            served = [a for a in answers if a.status == 200 and a.t0 >= t_stalled]
            assert served, "no sale was answered 200 during the stall"
            # Once per stall, not at every look of the watchdog.
            lines = [ln for ln in stall_lines(h.proc.log_text()) if "admit()" in ln]
            assert len(lines) == 1, "want one stall line for the wedge, got: %r" % lines
            assert "--stall-exit-ms 0" in lines[0], lines[0]
            assert h.proc.alive(), "exited with --stall-exit-ms 0"
        finally:
            wedge.close()
        # A wedged thread never finishes a SIGTERM's drain: the supervisor's kill it is.
        h.kill9()
        verify(st, ev, BIG_STOCK, answers, "loop thread stalled, kill -9", expect_sellout=False,
               note="200s during the stall: %d" % len(served))


@suite.case
def stall_exit_ms_ends_the_process_with_status_70():
    """--stall-exit-ms 2000: the process exits with 70 about 2 s into the stall; a restarted
    host sells the rest, and the invariants hold."""
    ev = "ev"
    with stack(2000) as st:
        h = st.host
        h.create_event(ev, STOCK)
        crowd = MultiCrowd([h], ev, users("c"), threads=6, stop_at=time.time() + 90,
                           timeout=2.0).start()
        wait_sold(st, ev, 20)
        wedge = send_wedge(h.port)
        try:
            rc = h.proc.p.wait(30)
        finally:
            wedge.close()
        h.proc.log.close()
        log = h.proc.log_text()
        assert rc == EXIT_STATUS, "exit status %s, want %d:\n%s" % (rc, EXIT_STATUS, log[-2000:])
        lines = [ln for ln in stall_lines(log) if "admit()" in ln]
        assert len(lines) == 2, "want the stall line and the exit line, got: %r" % lines
        assert "exits with status 70" in lines[0] and "exiting with status 70" in lines[1], lines
        # The supervisor's restart: the same host sells the rest. The first crowd's buyers may
        # all have had their answer by now (a quick machine), so fresh ones come too.
        h.start()
        late = MultiCrowd([h], ev, users("r"), threads=6, stop_at=time.time() + 60,
                          timeout=2.0).start()
        answers = []
        try:
            wait_until(lambda: sold(st, ev) >= STOCK, 60, 0.1, "sold out after the restart")
        finally:
            crowd.stop()
            late.stop()
            answers = crowd.join() + late.join()
        verify(st, ev, STOCK, answers, "loop thread stalled, exit 70, restart")


@suite.case
def stopped_process_is_not_a_stall():
    """A host stopped whole (SIGSTOP, as a debugger or a paused container does) for longer than
    --stall-exit-ms, then resumed, is not wedged: every thread's turn was as stopped as the
    watchdog. It must keep running, not flag a stall, and sell."""
    ev = "sp"
    with stack(1000) as st:
        h = st.host
        h.create_event(ev, STOCK)
        h.proc.sigstop()
        time.sleep(2.5)
        os.kill(h.proc.p.pid, signal.SIGCONT)
        time.sleep(1.5)
        assert h.proc.alive(), "exited after a SIGSTOP/SIGCONT:\n" + h.proc.log_text()[-2000:]
        status, body = get_answered(h.port, "/healthz")
        assert status == 200 and '"ok"' in body, (status, body)
        assert not stall_lines(h.proc.log_text()), stall_lines(h.proc.log_text())
        assert h.snatch(ev, "after-stop")[0] == 200


@suite.case
def stall_exit_ms_flag_checked():
    """0 or at least the stall threshold (1000): anything else is a one-line usage error."""
    for bad in ("500", "-1", "10x", "86400001"):
        p = subprocess.run([binary("snatch-host"), "--stall-exit-ms", bad, "x.lua"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        err = p.stderr.decode()
        assert p.returncode == 2 and len(err.splitlines()) == 1, (bad, p.returncode, err)
        assert "--stall-exit-ms" in err, err
    p = subprocess.run([binary("snatch-host"), "--help"], stdout=subprocess.PIPE, timeout=30)
    assert b"--stall-exit-ms" in p.stdout


if __name__ == "__main__":
    suite.run()
