"""Shared pieces of the fault suite (test_faults.py, test_faults_infra.py): a buyer crowd spread
round-robin over several hosts that fails over when a host is gone, the invariant checker that
every case ends with, and the one-line report per case.

Not a test by itself (no cases): it is named test_faults_*.py only because the suite owns that
pattern. Only the Python standard library is used."""
import collections
import glob
import http.client
import json
import os
import re
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import SOURCE_DIR, Stack, wait_until  # noqa: E402

# Per-case summary lines go here too (JSON lines) when set: scripts/faults.sh renders them into
# the table of docs/RELIABILITY.md.
REPORT_ENV = "SNATCH_FAULTS_REPORT"


# ---- load --------------------------------------------------------------------------------------

class Answer:
    __slots__ = ("user", "host", "status", "body", "latency", "attempts", "cut", "t0", "t1", "why",
                 "first", "raw")

    def __init__(self, user):
        self.user = user
        self.t0 = time.time()  # the buyer's first attempt started
        self.t1 = 0.0          # the last attempt ended
        self.why = ""          # the last transport error, for the report
        self.first = -1        # the host tried first (round-robin), before any failover
        self.host = -1
        self.status = -1
        self.body = None
        self.latency = 0.0
        self.attempts = 0
        self.cut = 0  # attempts whose connection died after the request went out
        self.raw = None  # (headers, raw body bytes) of an answer whose body is not JSON


class MultiCrowd:
    """Distinct buyers sent round-robin to `hosts` by `threads` keep-alive clients. A buyer whose
    host refuses or drops the connection is retried on the next host (what a load balancer does);
    retrying is safe because the per-buyer limit makes a second sale of the same buyer impossible.
    Runs in the background: start(), then join(). Bounded: stops at `stop_at` or when stop() is
    called, and every request has a socket timeout."""

    def __init__(self, hosts, event, users, threads=12, stop_at=None, timeout=15.0):
        self.hosts = hosts
        self.event = event
        self.users = users
        self.threads = threads
        self.stop_at = stop_at
        self.timeout = timeout
        self.answers = []
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ts = []

    def _take(self):
        with self._lock:
            if self._next >= len(self.users):
                return None, -1
            i = self._next
            self._next += 1
            return self.users[i], i

    def stop(self):
        self._stop.set()

    def sent(self):
        with self._lock:
            return self._next

    def _one(self, conns, hi, path):
        """One attempt on host hi: (status, body, raw) or raises OSError/HTTPException. body is the
        parsed JSON, or the text when it is not JSON; raw is then (headers, bytes) for the report,
        else None."""
        conn = conns.get(hi)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.hosts[hi].port, timeout=self.timeout)
            conn.connect()  # a refused connect never reached the host: plain failover
            conns[hi] = conn
        try:
            conn.request("POST", path)
            r = conn.getresponse()
            raw = r.read()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            conns.pop(hi, None)
            raise _Cut(repr(e))
        if r.getheader("Connection", "").lower() == "close":
            conn.close()
            conns.pop(hi, None)
        data = raw.decode("utf-8", "replace")
        try:
            return r.status, json.loads(data), None
        except ValueError:
            return r.status, data, (r.getheaders(), raw)

    def _worker(self):
        conns = {}
        local = []
        n = len(self.hosts)
        while not self._stop.is_set() and (self.stop_at is None or time.time() < self.stop_at):
            user, i = self._take()
            if user is None:
                break
            a = Answer(user)
            path = "/v1/events/%s/snatch?user=%s" % (self.event, user)
            a.first = i % n
            for k in range(n + 1):
                hi = (i + k) % n
                a.attempts += 1
                t0 = time.time()
                try:
                    a.status, a.body, a.raw = self._one(conns, hi, path)
                    a.host = hi
                    a.latency = time.time() - t0
                    break
                except _Cut as e:
                    a.cut += 1
                    a.why = str(e)
                except (OSError, http.client.HTTPException):
                    conns.pop(hi, None)
            a.t1 = time.time()
            local.append(a)
        for c in conns.values():
            c.close()
        with self._lock:
            self.answers.extend(local)

    def start(self):
        self._ts = [threading.Thread(target=self._worker, daemon=True) for _ in range(self.threads)]
        for t in self._ts:
            t.start()
        return self

    def join(self, timeout=120.0):
        deadline = time.time() + timeout
        for t in self._ts:
            t.join(max(0.1, deadline - time.time()))
        assert not any(t.is_alive() for t in self._ts), "crowd threads did not finish"
        return self.answers


def sell_out(st, event, stock, crowd, timeout=30.0):
    """After the fault: keeps the crowd going until Redis sold the whole stock (or `timeout`),
    then stops it. Demand after the fault is what makes an undersell visible."""
    deadline = time.time() + timeout
    while time.time() < deadline and crowd.sent() < len(crowd.users):
        if sold(st, event) >= stock:
            break
        time.sleep(0.05)
    crowd.stop()
    return crowd.join()


def during(answers, t_from, t_to):
    """Answers whose buyer started and finished inside [t_from, t_to]: sent while the fault
    lasted. Returns (status counts, longest request in s)."""
    inside = [a for a in answers if a.t0 >= t_from and a.t1 <= t_to]
    return statuses(inside), max([a.t1 - a.t0 for a in inside] or [0.0])


def longest(answers):
    return max([a.t1 - a.t0 for a in answers] or [0.0])


def run_crowd(hosts, event, users, threads=12, stop_at=None):
    return MultiCrowd(hosts, event, users, threads, stop_at).start().join()


def statuses(answers):
    return dict(collections.Counter(a.status for a in answers))


class _Cut(Exception):
    pass


# ---- state -------------------------------------------------------------------------------------

def meta(st, event):
    m = st.redis.cmd("HGETALL", "{%s}:meta" % event)
    return dict(zip(m[::2], m[1::2]))


def sold(st, event):
    return int(meta(st, event).get("sold", 0))


def wait_sold(st, event, at_least, timeout=20.0):
    """Blocks until Redis sold >= at_least (the fault then hits mid-burst, not before it)."""
    wait_until(lambda: sold(st, event) >= at_least, timeout, 0.01, "sold >= %d" % at_least)


def sanitized_build():
    """True when snatch-host carries ASan: RSS then grows with the allocator's quarantine, and
    leaks are LeakSanitizer's job (its report fails the case, see FaultStack)."""
    from harness import binary
    with open(binary("snatch-host"), "rb") as f:
        return b"__asan_init" in f.read()


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def freeze(proc, seconds):
    """SIGSTOP a server for `seconds`, then SIGCONT: it is unreachable but keeps its sockets.
    Returns (stopped, resumed): from a little after the stop took effect (seen in /proc: all
    threads of a process stop asynchronously, and an answer the server produced just before may
    still be on its way) to right before SIGCONT."""
    proc.sigstop()
    stopped = time.time() + 0.05
    try:
        time.sleep(seconds)
    finally:
        resumed = time.time()
        os.kill(proc.pid, signal.SIGCONT)
    return stopped, resumed


def policy_with_tolerate(path, tolerate, refill=True):
    """Writes the default policy with allocate() surviving `tolerate` dead hosts; refill=False
    switches off the top-up of a spent quota (so the quota alone decides what a host sells)."""
    with open(os.path.join(SOURCE_DIR, "lua", "policy.lua")) as f:
        src = f.read()
    new, n = re.subn(r"local function tolerate\(hosts\).*?\nend\n",
                     "local function tolerate(hosts)\n  return math.max(0, math.min(%d, hosts - 1))"
                     "\nend\n" % tolerate, src, count=1, flags=re.S)
    assert n == 1, "lua/policy.lua has no tolerate(hosts) function any more: update the test"
    if not refill:
        new, n = re.subn(r"\nM\.refill = true", "\nM.refill = false", new, count=1)
        assert n == 1, "lua/policy.lua has no M.refill = true any more: update the test"
    with open(path, "w") as f:
        f.write(new)
    return path


SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                   "WARNING: AddressSanitizer", "ERROR: ThreadSanitizer")


def sanitizer_reports(paths):
    """(log name, first lines of the report) for every log with sanitizer output."""
    out = []
    for p in paths:
        try:
            with open(p, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        for mark in SANITIZER_MARKS:
            i = text.find(mark)
            if i >= 0:
                out.append((os.path.basename(p), text[max(0, i - 200):i + 1500]))
                break
    return out


class FaultStack(Stack):
    """A Stack whose policy file (optional) is written into its own temp dir, and whose host and
    subscriber logs are searched for sanitizer reports (ASan/UBSan/LSan builds) once everything
    stopped: a report fails the case."""

    def __init__(self, tolerate=None, refill=True, **kw):
        super().__init__(**kw)
        if tolerate is not None or not refill:
            self.policy = policy_with_tolerate(os.path.join(self.tmp.path, "policy.lua"),
                                               1 if tolerate is None else tolerate, refill)

    def __exit__(self, etype, *exc):
        for h in self.hosts:
            try:
                h.stop()
            except Exception:
                h.kill9()
        if self.sub is not None:
            try:
                self.sub.stop()
            except Exception:
                self.sub.kill9()
        logs = glob.glob(os.path.join(self.tmp.path, "host-*.log")) + glob.glob(
            os.path.join(self.tmp.path, "subscriber-*.log"))
        reports = sanitizer_reports(logs)
        for name, text in reports:
            print("==== sanitizer report in %s ====\n%s" % (name, text), flush=True)
        super().__exit__(etype, *exc)
        if reports and etype is None:
            raise AssertionError("sanitizer reports in " + ", ".join(n for n, _ in reports))


# ---- verdict -----------------------------------------------------------------------------------

def verify(st, event, stock, answers, fault, expect_sellout=True, reconcile=True,
           assert_unsold=True, check_pending=True, note=""):
    """Checks the invariants after a fault and prints the case's line. Returns the numbers.

    oversold  = max(0, sold in Redis - stock, SQLite units - stock) must be 0
    missing   = order ids answered 200 (or 202) with no SQLite row must be 0 (after reconciliation)
    duplicates= repeated order ids in 200s + buyers with two tickets + rows - distinct buyers
    persisted = SQLite rows of the event; must equal Redis sold (no lost order, nothing extra)
    unsold    = stock - sold; must be 0 when the case promises a sell-out
    """
    ok = [a for a in answers if a.status == 200]
    pend = [a for a in answers if a.status == 202]
    bad = [a for a in ok + pend if not isinstance(a.body, dict) or "order_id" not in a.body]
    for a in bad[:5]:
        print("  BAD BODY: status=%d user=%s host=%d attempts=%d cut=%d (%s) sent %.3f took %.3fs "
              "headers=%r raw=%r body=%r" % (
                  a.status, a.user, a.host, a.attempts, a.cut, a.why, a.t0, a.t1 - a.t0,
                  a.raw[0] if a.raw else None, a.raw[1] if a.raw else None, a.body), flush=True)
    assert not bad, "%d answers 200/202 without a JSON order (first: status=%d raw=%r)" % (
        len(bad), bad[0].status, bad[0].raw[1] if bad[0].raw else bad[0].body)
    ids_ok = [a.body["order_id"] for a in ok]
    ids_pend = [a.body["order_id"] for a in pend]
    # Before reconciliation: the subscriber alone must hold every 200 (JetStream acked it).
    want = set(ids_ok)

    def have_all():
        rows = {r[0] for r in st.sub.query("SELECT order_id FROM orders WHERE event=?", (event,))}
        return want <= rows

    try:
        # A subscriber killed with a batch fetched and not acknowledged gets it again only after
        # the consumer's AckWait (30 s, snatch-subscriber's ACK_WAIT_NS): wait past that.
        wait_until(have_all, 45, 0.1, "subscriber to persist every 200")
        missing_before = 0
    except AssertionError:
        got = {r[0] for r in st.sub.query("SELECT order_id FROM orders WHERE event=?", (event,))}
        missing_before = len(want - got)
    rec_rc, rec_out = (None, "")
    if reconcile:
        # Exit 3 is a pass cut short by Redis or NATS (right after a Redis Cluster failover the
        # first node asked may still hand out the old slot map): an operator runs it again, as
        # the host's own reconciler does every pass. Two more tries; every failure is printed.
        # The hosts' policy goes along, as an operator gives it: its order() renders what is
        # republished (without it a custom order()'s fields would be missing from those rows).
        policy = ("--policy", st.policy) if getattr(st, "policy", None) else ()
        for attempt in range(3):
            rec_rc, rec_out = st.reconcile("--event", event, "--wait", "20", *policy)
            if rec_rc != 3 or attempt == 2:
                break
            print("snatch-reconcile exited 3 (attempt %d), again in 2 s:\n%s"
                  % (attempt + 1, rec_out[-1500:]), flush=True)
            time.sleep(2)
    m = meta(st, event)
    sold_n = int(m.get("sold", 0))
    stock_n = int(m.get("stock", stock))
    rows = st.sub.query("SELECT order_id, user, qty, host FROM orders WHERE event=?", (event,))
    row_ids = {r[0] for r in rows}
    users_rows = collections.Counter(r[1] for r in rows)
    units = sum(r[2] for r in rows)
    redis_orders = st.redis.cmd("HLEN", "{%s}:orders" % event)
    pending_left = st.redis.cmd("HLEN", "{%s}:pending" % event)
    in_redis = set(st.redis.cmd("HKEYS", "{%s}:orders" % event))
    lost_in_redis = len(set(ids_ok + ids_pend) - in_redis)
    winners = collections.Counter(a.user for a in ok + pend)
    # Redis may forget sales in a failover: what SQLite holds counts too.
    oversold = max(0, sold_n - stock_n, units - stock_n)
    missing = len(set(ids_ok) - row_ids) + len(set(ids_pend) - row_ids) + lost_in_redis
    duplicates = ((len(ids_ok + ids_pend) - len(set(ids_ok + ids_pend))) +
                  sum(c - 1 for c in winners.values() if c > 1) +
                  sum(c - 1 for c in users_rows.values() if c > 1))
    # Sold to a buyer who was never told so: the request was cut or timed out after Redis took
    # the unit. Allowed (the buyer holds it and finds it via GET .../orders) but reported.
    told = {a.user for a in ok + pend}
    silent = [r for r in rows if r[1] not in told]
    last = {a.user: a.status for a in answers}
    silent_503 = sum(1 for r in silent if last.get(r[1]) == 503)
    unsold = max(0, stock_n - sold_n)
    counts = statuses(answers)
    line = ("FAULT %-28s requests=%d 200=%d 202=%d 503=%d 409=%d err=%d persisted=%d sold=%d "
            "oversold=%d missing=%d duplicates=%d unsold=%d silent=%d(503:%d)%s" % (
                fault, len(answers), len(ok), len(pend), counts.get(503, 0), counts.get(409, 0),
                counts.get(-1, 0), len(rows), sold_n, oversold, missing, duplicates, unsold,
                len(silent), silent_503, (" " + note) if note else ""))
    print(line, flush=True)
    by_user = {a.user: a for a in answers}
    for r in silent[:5]:
        a = by_user.get(r[1])
        print("  silent: order %s of %s sold by %s at %.3f: answer %s" % (
            r[0], r[1], r[3], int(r[0][:13]) / 1000.0, "none (never sent)" if a is None else
            "status=%s body=%s host=%d attempts=%d cut=%d (%s) sent %.3f took %.3fs" % (
                a.status, a.body, a.host, a.attempts, a.cut, a.why, a.t0, a.t1 - a.t0)), flush=True)
    res = {"fault": fault, "requests": len(answers), "ok": len(ok), "pending": len(pend),
           "unavailable": counts.get(503, 0), "refused": counts.get(409, 0),
           "errors": counts.get(-1, 0), "persisted": len(rows), "sold": sold_n, "stock": stock_n,
           "oversold": oversold, "missing": missing, "missing_before_reconcile": missing_before,
           "duplicates": duplicates, "unsold": unsold, "silent": len(silent),
           "silent_503": silent_503, "lost_in_redis": lost_in_redis, "sellout": expect_sellout, "note": note, "statuses": counts}
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(res) + "\n")
    # The invariants.
    assert oversold == 0, line
    assert len(rows) <= stock_n, line
    assert duplicates == 0, line
    assert missing_before == 0, "200s not persisted before reconciliation: " + line
    if reconcile:
        assert rec_rc == 0, "snatch-reconcile exited %s:\n%s" % (rec_rc, rec_out)
    assert missing == 0, line
    assert units == sold_n, "Redis sold %d, SQLite holds %d units: %s" % (sold_n, units, line)
    assert redis_orders == sold_n, "{%s}:orders has %d, sold %d" % (event, redis_orders, sold_n)
    if check_pending and reconcile:
        assert pending_left == 0, "{%s}:pending still holds %d after reconciliation" % (
            event, pending_left)
    assert set(counts) <= {200, 202, 409, 503, -1}, counts
    if expect_sellout and assert_unsold:
        assert unsold == 0, "undersold: " + line
    return res
