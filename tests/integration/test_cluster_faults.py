"""Cluster fault suite (issue 11): the sale on a Redis Cluster (3 masters + 3 replicas,
min-replicas-to-write 1), a 3-node JetStream cluster (stream ORDERS with 3 replicas), three hosts
(--redis-replicas 1: a batch is confirmed only once a replica holds it) behind nginx running
examples/nginx/snatch.conf, and the subscriber. One fault per case, mid-sale: kill -9 of the Redis
master owning the event (restarted after the failover; and, on 3 masters + 6 replicas, never
restarted), on 3 + 6 kill -9 of one of its replicas (never restarted) and of the master and a
replica at once (one restarted later), kill -9 of the ORDERS stream leader, kill -9 of a host behind nginx, a rolling SIGTERM
restart of every node one by one, and the event's master cut off by nftables.

The buyers go through nginx; their pace is held down while the fault lasts (so the sale is still
running when the cluster is whole again), then released: the stock must sell out. Every case
ends with test_faults_common.verify (0 oversold, every 200 exactly one SQLite row, no buyer over
the limit, Redis sold == persisted units) and prints one FAULT line plus the failover times
(kill to the first 200 of a buyer who asked after it).

nginx answers 502 for a POST whose host died holding it (never retried, see examples/nginx); the
crowd counts it as a cut request (err), like a dropped connection: the buyer was not told.
A 202 (deducted, not confirmed) whose deduction the promoted replica does not hold and no
SQLite row has either is what "its fate follows what Redis keeps" means: reported as
dropped_202, counted as err, and the buyer holds nothing (verify checks rows == sold).

Fails when snatch-host lacks the cluster flags (--redis-replicas, --orders-replicas).
SNATCH_CLUSTER_BROKEN=1 runs the split-brain case against a broken variant (no
min-replicas-to-write, --redis-replicas 0): it must fail, and so must redis_shard_two_nodes_kill9
(the promoted replica, alone, sells). SNATCH_CLUSTER_ONE_REPLICA=1 runs
redis_master_kill9_never_back and redis_replica_kill9 on one replica per master: the master left
has no replica, refuses every write (NOREPLICAS) and the stock is left unsold: they must fail."""
import atexit
import os
import re
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Nginx, Suite, binary, wait_until  # noqa: E402
from test_faults_common import FaultStack, MultiCrowd, sold, verify  # noqa: E402

STOCK = 2000
BUYERS = 100000
BROKEN = bool(os.environ.get("SNATCH_CLUSTER_BROKEN"))
ONE_REPLICA = bool(os.environ.get("SNATCH_CLUSTER_ONE_REPLICA"))
# A master that lost its replica refuses writes (NOREPLICAS) after 2 s instead of acknowledging
# sales a failover would forget (the replica acknowledges every second).
REDIS_EXTRA = [] if BROKEN else ["--min-replicas-to-write", "1", "--min-replicas-max-lag", "2"]
HOST_EXTRA = ["--trusted-proxy", "127.0.0.1", "--redis-timeout-ms", "500", "--ack-timeout-ms",
              "1000", "--redis-replicas", "0" if BROKEN else "1", "--orders-replicas", "3"]
SLOW = 40  # buyers per second while the fault lasts
NFT_TABLE = "snatch_test_cluster_faults"
with open(Nginx.CONF) as _f:
    NGINX_FAIL_TIMEOUT = int(re.search(r"^\s*server 127\.0\.0\.1:\d+ .*fail_timeout=(\d+)s;",
                                       _f.read(), re.M).group(1))

suite = Suite()


def require_cluster_flags():
    out = subprocess.run([binary("snatch-host"), "--help"], stdout=subprocess.PIPE,
                         text=True).stdout
    missing = [f for f in ("--redis-replicas", "--orders-replicas") if f not in out]
    if missing:
        # A failure, not a skip: the suite must never pass by not running.
        print("FAIL: this snatch-host has no %s (Redis Cluster / JetStream cluster support)"
              % ", ".join(missing), flush=True)
        sys.exit(1)


# ---- the stack -----------------------------------------------------------------------------

class ClusterStack(FaultStack):
    """FaultStack on a Redis Cluster and a JetStream cluster, three hosts, nginx in front."""

    def __init__(self, replicas=1):
        super().__init__(hosts=3, threads=1,
                         redis_cluster={"extra": REDIS_EXTRA, "replicas": replicas},
                         nats_cluster={}, host_extra=HOST_EXTRA)
        self.lb = None

    def __enter__(self):
        super().__enter__()
        try:
            self.lb = Nginx(self.tmp.path, [h.port for h in self.hosts]).start()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        return self

    def __exit__(self, etype, *exc):
        if self.lb is not None:
            self.lb.stop()
        return super().__exit__(etype, *exc)


class PacedCrowd(MultiCrowd):
    """MultiCrowd whose buyers start at most `rate` a second while rate is set (None: at once)."""

    def __init__(self, *a, rate=None, **kw):
        super().__init__(*a, **kw)
        self.rate = rate
        self._slot = time.time()
        self._pace = threading.Lock()

    def _take(self):
        rate = self.rate
        if rate:
            with self._pace:
                now = time.time()
                slot = max(self._slot, now)
                self._slot = slot + 1.0 / rate
            time.sleep(max(0.0, slot - now))
        return super()._take()


def sold_or(st, ev, default=-1):
    """Redis sold, or default while the cluster cannot say (a master down, CLUSTERDOWN)."""
    try:
        return sold(st, ev)
    except (OSError, RuntimeError, StopIteration):
        return default


def wait_sold_cluster(st, ev, at_least, timeout=30.0):
    wait_until(lambda: sold_or(st, ev) >= at_least, timeout, 0.02, "sold >= %d" % at_least)


def release_and_sell_out(st, ev, crowd, timeout=60.0):
    crowd.rate = None
    deadline = time.time() + timeout
    while time.time() < deadline and crowd.sent() < len(crowd.users):
        if sold_or(st, ev) >= STOCK:
            break
        time.sleep(0.05)
    crowd.stop()
    return crowd.join()


def nginx_cuts(answers):
    """nginx's own 502/504 (a host died or stalled holding the request) are cut requests."""
    n = 0
    for a in answers:
        if a.status in (502, 504) and not isinstance(a.body, dict):
            a.why = "nginx %d" % a.status
            a.status = -1
            n += 1
    return n


def dropped_202(st, ev, answers):
    """202s whose order neither Redis nor SQLite holds: the deduction was never confirmed and
    the failover did not keep it. Counted as not sold (err)."""
    in_redis = set(st.redis.cmd("HKEYS", "{%s}:orders" % ev))
    rows = {r[0] for r in st.sub.query("SELECT order_id FROM orders WHERE event=?", (ev,))}
    n = 0
    for a in answers:
        if a.status == 202 and a.body["order_id"] not in in_redis | rows:
            a.status, a.why = -1, "202 not kept"
            n += 1
    return n


def first_200_after(answers, t):
    """Seconds from t to the first 200 answered to a buyer who asked after t."""
    after = [a.t1 for a in answers if a.status == 200 and a.t0 >= t]
    return (min(after) - t) if after else float("nan")


def finish(st, ev, crowd, fault, times):
    """Sells out, then settles nginx's cuts and dropped 202s, checks and prints."""
    answers = release_and_sell_out(st, ev, crowd)
    cuts = nginx_cuts(answers)
    # The subscriber catches up before a 202 counts as dropped.
    time.sleep(1.0)
    drop = dropped_202(st, ev, answers)
    t_fault = times.pop("fault")
    note = " ".join("%s=+%.2fs" % (k, v - t_fault) for k, v in times.items())
    note += " first_200=+%.2fs nginx_cut=%d dropped_202=%d" % (
        first_200_after(answers, t_fault), cuts, drop)
    res = verify(st, ev, STOCK, answers, fault, note=note.strip())
    for h in st.hosts:
        if h.proc.p is not None and h.proc.p.returncode not in (None, 0, -9):
            raise AssertionError("host %s exited %s" % (h.host_id, h.proc.p.returncode))
    return res


def create_event_retrying(st, ev, stock, seconds=10.0):
    """PUT /admin/events/<ev>, again while it answers 503, as an operator would: right after the
    cluster comes up (or a case before it), a loaded machine can delay a replica's once-a-second
    ack past min-replicas-max-lag (2 s here), and its master then refuses writes (NOREPLICAS)
    until the next ack. A refused PUT wrote nothing (the refusal comes at the script's first
    write), so repeating it is safe."""
    end = time.time() + seconds
    while True:
        try:
            return st.host.create_event(ev, stock)
        except AssertionError as e:
            if ": 503 " not in str(e) or time.time() > end:
                raise
            time.sleep(0.2)


def start_sale(st, ev, rate=SLOW):
    create_event_retrying(st, ev, STOCK)
    crowd = PacedCrowd([st.lb], ev, ["%s%d" % (ev, i) for i in range(BUYERS)], threads=12,
                       stop_at=time.time() + 240, rate=rate).start()
    wait_sold_cluster(st, ev, STOCK // 10)
    return crowd


def other_node(rc, *not_these):
    ports = {n.port for n in not_these}
    return next(n for n in rc.alive_nodes() if n.port not in ports)


def owner(rc, ev, via):
    """The port of the master that via says holds ev's slot; None when via did not answer (a
    node of a cluster under fault and load may miss one query: the caller asks again)."""
    from harness import redis_key_slot
    slot = redis_key_slot("{%s}:meta" % ev)
    try:
        slots = rc.slots(via=via)
    except RuntimeError as e:
        print("  CLUSTER SLOTS via %d: %s (asking again)" % (via.port, e), flush=True)
        return None
    for start, end, port, _ in slots:
        if start <= slot <= end:
            return port
    return None


# ---- nftables ------------------------------------------------------------------------------

def nft(script):
    p = subprocess.run(["nft", "-f", "-"], input=script, text=True, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT)
    if p.returncode != 0:
        raise RuntimeError("nft failed: %s\n%s" % (p.stdout, script))


def nft_delete():
    subprocess.run(["nft", "delete", "table", "inet", NFT_TABLE], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def local_ports_to(pid, remote_ports):
    """Local ports of pid's TCP connections to remote_ports (its outgoing cluster-bus links)."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            m = re.match(r"socket:\[(\d+)\]", os.readlink("/proc/%d/fd/%s" % (pid, fd)))
        except OSError:
            continue
        if m:
            inodes.add(m.group(1))
    out = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            c = line.split()
            if c[9] in inodes and int(c[2].split(":")[1], 16) in remote_ports:
                out.add(int(c[1].split(":")[1], 16))
    return out


class Partition:
    """Cuts a Redis node off on loopback with nftables, in table NFT_TABLE (deleted before, and
    on every exit path: context exit, atexit, SIGTERM/SIGINT). Dropped: everything to and from
    its client port and its bus port, its own outgoing bus links (by their local ports), and
    every new connection to a bus port (so it cannot open new ones; the other nodes keep theirs).
    clients=True keeps its client port open for the connections already made (the hosts'):
    only the replication link (from its replicas' sockets) and the bus are cut: split brain."""

    def __init__(self, rc, node, clients=False):
        self.rc, self.node, self.clients = rc, node, clients

    def __enter__(self):
        nft_delete()
        rc, n = self.rc, self.node
        buses = {rc.bus_port(x) for x in rc.nodes}
        mine = {rc.bus_port(n)} | local_ports_to(n.proc.pid, buses - {rc.bus_port(n)})
        if self.clients:
            # The replicas' links to its client port, and any new connection to it.
            for r in rc.nodes:
                if r is not n and r.proc.alive():
                    mine |= local_ports_to(r.proc.pid, {n.port})
            extra = "    tcp dport %d tcp flags & (syn | ack) == syn drop\n" % n.port
        else:
            mine.add(n.port)
            extra = ""
        ports = ", ".join(str(p) for p in sorted(mine))
        nft("table inet %s {\n  chain input {\n    type filter hook input priority -10;\n"
            "    tcp dport { %s } drop\n    tcp sport { %s } drop\n"
            "    tcp dport { %s } tcp flags & (syn | ack) == syn drop\n%s  }\n}\n" % (
                NFT_TABLE, ports, ports, ", ".join(str(p) for p in sorted(buses)), extra))
        return self

    def heal(self):
        nft_delete()

    def __exit__(self, *exc):
        self.heal()


def _on_signal(sig, _frame):
    nft_delete()
    raise SystemExit(128 + sig)


# ---- cases ---------------------------------------------------------------------------------

@suite.case
def redis_master_kill9():
    with ClusterStack() as st:
        rc, ev = st.redis, "rk"
        crowd = start_sale(st, ev)
        m = rc.master_for_key("{%s}:meta" % ev)
        times = {"fault": time.time()}
        m.kill9()
        via = other_node(rc, m)
        wait_until(lambda: owner(rc, ev, via) not in (None, m.port), 20, 0.05, "replica promoted")
        times["promoted"] = time.time()
        # Restarted only now: a master back before the failover, with no persistence, would
        # return empty and still own its slots. It rejoins as the new master's replica, and
        # with min-replicas-to-write 1 that is when its shard sells again.
        m.start()
        rc.wait_ok()
        times["replica_back"] = time.time()
        finish(st, ev, crowd, "kill -9 redis master of event", times)


def replica_online(node):
    """node (a master) has a replica attached and in sync."""
    try:
        text = node.cmd("INFO", "replication")
    except (OSError, RuntimeError):
        return False
    return any(line.startswith("slave") and "state=online" in line for line in text.split("\r\n"))


@suite.case
def redis_master_kill9_never_back():
    """The event's master dies and stays dead. With two replicas per master the promoted one
    keeps the other as its replica, so min-replicas-to-write 1 and WAIT 1 are met and the sale
    sells out with no operator. SNATCH_CLUSTER_ONE_REPLICA=1 runs it on one replica per master
    (what README's Known limits describes): the new master has no replica, refuses every write
    (NOREPLICAS), and the stock is left unsold: it must fail."""
    replicas = 1 if ONE_REPLICA else 2
    with ClusterStack(replicas=replicas) as st:
        rc, ev = st.redis, "rd"
        crowd = start_sale(st, ev)
        m = rc.master_for_key("{%s}:meta" % ev)
        times = {"fault": time.time()}
        m.kill9()
        via = other_node(rc, m)

        def promoted():
            port = owner(rc, ev, via)
            return port if port not in (None, m.port) else None
        new = rc.node(wait_until(promoted, 20, 0.05, "replica promoted"))
        times["promoted"] = time.time()
        # Not a condition of the case (the sell-out is): when the new master could write again.
        try:
            wait_until(lambda: replica_online(new), 10, 0.05, "a replica online on the new master")
            times["replica_online"] = time.time()
        except AssertionError as e:
            print("  %s" % e, flush=True)
        finish(st, ev, crowd, "kill -9 redis master, never back (%d replicas)" % replicas, times)


@suite.case
def redis_replica_kill9():
    """One replica of the event's master dies and stays dead. With two replicas per master the
    other one still acknowledges: min-replicas-to-write 1 and the hosts' WAIT 1 are met and the
    sale sells out with no operator. SNATCH_CLUSTER_ONE_REPLICA=1 runs it on one replica per
    master (README's Known limits): the master is left with none, refuses every write
    (NOREPLICAS) and the stock is left unsold: it must fail."""
    replicas = 1 if ONE_REPLICA else 2
    with ClusterStack(replicas=replicas) as st:
        rc, ev = st.redis, "rp"
        crowd = start_sale(st, ev)
        m = rc.master_for_key("{%s}:meta" % ev)
        r = rc.replicas_of(m)[0]
        times = {"fault": time.time()}
        r.kill9()
        # The master drops the link at once (the dead process's socket is closed); a few
        # seconds at the slow pace, past min-replicas-max-lag, before the crowd is released.
        wait_until(lambda: online_replicas(m) == replicas - 1, 10, 0.05, "replica link dropped")
        times["link_dropped"] = time.time()
        time.sleep(3.0)
        finish(st, ev, crowd, "kill -9 redis replica of event, never back (%d replicas)"
               % replicas, times)


def online_replicas(node):
    """How many replicas node (a master) has attached and in sync; -1 when it does not answer."""
    try:
        text = node.cmd("INFO", "replication")
    except (OSError, RuntimeError):
        return -1
    return sum(1 for line in text.split("\r\n")
               if line.startswith("slave") and "state=online" in line)


MIGRATE_WAIT = 20.0  # s after the promotion for a replica to migrate (Redis waits 5 s)


@suite.case
def redis_shard_two_nodes_kill9():
    """The event's master and one of its two replicas die at once. The last replica is promoted
    with no replica of its own: min-replicas-to-write 1 makes it refuse every write
    (NOREPLICAS), so the shard sells nothing, until Redis's replica migration
    (cluster-migration-barrier 1, the default) moves it a replica of a shard that has two, 5 s
    after it became an orphan; then it sells again, with no operator. One dead node is then
    restarted (it rejoins as the new master's replica) and the sale must sell out.
    SNATCH_CLUSTER_BROKEN=1 (no min-replicas-to-write) must fail: the lone master sells."""
    with ClusterStack(replicas=2) as st:
        rc, ev = st.redis, "r2"
        crowd = start_sale(st, ev)
        m = rc.master_for_key("{%s}:meta" % ev)
        dead, last = rc.replicas_of(m)
        times = {"fault": time.time()}
        m.kill9()
        dead.kill9()
        via = other_node(rc, m, dead)
        wait_until(lambda: owner(rc, ev, via) == last.port, 20, 0.05, "last replica promoted")
        times["promoted"] = time.time()
        base = lone_master_holds(last, ev, time.time() + MIGRATE_WAIT)
        times["replica_migrated"] = time.time()
        info = last.cmd("INFO", "replication")
        port = int(re.search(r"^slave0:ip=[^,]+,port=(\d+),state=online", info, re.M).group(1))
        assert port not in (m.port, dead.port), "a dead node is the replica: %d" % port
        # Sells again, with no operator: a replica of another shard serves as its replica.
        wait_until(lambda: hget_sold(last, ev) > base, 20, 0.05, "sales after the migration")
        times["sells_again"] = time.time()
        print("  sold %d while alone; replica %d migrated to it" % (base, port), flush=True)
        m.start()
        wait_until(lambda: online_replicas(last) >= 2, 20, 0.05, "old master back as a replica")
        times["node_back"] = time.time()
        finish(st, ev, crowd, "kill -9 redis master and one of its 2 replicas", times)


def hget_sold(node, ev):
    """The event's sold on node, read there (-1 when it does not answer)."""
    try:
        return int(node.cmd("HGET", "{%s}:meta" % ev, "sold") or 0)
    except (OSError, RuntimeError):
        return -1


def lone_master_holds(node, ev, deadline):
    """Until node (a master) has a replica online: asserts its sold never moves (it refuses
    every write), and returns it. Fails at deadline. Each sold is read before the replicas are
    counted, so a sale made once a replica came is never taken for one made without."""
    base = None
    while True:
        s = hget_sold(node, ev)
        n = online_replicas(node)
        if n > 0:
            assert base is not None, "never read sold on %d while it had no replica" % node.port
            return base
        if s >= 0 and n == 0:
            base = s if base is None else base
            assert s == base, "a master with no replica sold: %d -> %d" % (base, s)
        assert time.time() < deadline, "no replica on %d after %.0f s" % (node.port, MIGRATE_WAIT)
        time.sleep(0.05)


@suite.case
def stream_leader_kill9():
    with ClusterStack() as st:
        nc, ev = st.nats, "nk"
        crowd = start_sale(st, ev)
        leader = wait_until(nc.stream_leader, 10, 0.1, "ORDERS leader")
        times = {"fault": time.time()}
        leader.kill9()
        wait_until(lambda: _leader_other(nc, leader), 30, 0.1, "a new ORDERS leader")
        times["new_leader"] = time.time()
        leader.start()
        nc.wait_ready()
        times["node_back"] = time.time()
        finish(st, ev, crowd, "kill -9 ORDERS stream leader", times)


def _leader_other(nc, old):
    try:
        new = nc.stream_leader()
    except RuntimeError:
        return False
    return new is not None and new is not old


@suite.case
def host_kill9_behind_nginx():
    with ClusterStack() as st:
        ev = "hk"
        crowd = start_sale(st, ev)
        times = {"fault": time.time()}
        st.hosts[1].kill9()
        time.sleep(3.0)
        finish(st, ev, crowd, "kill -9 host behind nginx", times)


@suite.case
def rolling_sigterm_restart():
    with ClusterStack() as st:
        rc, nc, ev = st.redis, st.nats, "rr"
        # Slower still: the restart lasts 30-60 s and the sale must outlast it.
        crowd = start_sale(st, ev, rate=SLOW // 2)
        times = {"fault": time.time()}
        for n in list(rc.nodes):
            was_master = n.port in {m.port for m in rc.masters()}
            n.stop()
            if was_master:
                via = other_node(rc, n)
                wait_until(lambda: all(s[2] != n.port for s in rc.slots(via=via)), 20, 0.05,
                           "failover of %d" % n.port)
            n.start()
            rc.wait_ok()
        times["redis_done"] = time.time()
        for n in nc.nodes:
            n.stop()
            n.start()
            nc.wait_ready()
            wait_until(nc.stream_leader, 30, 0.1, "ORDERS leader")
        times["nats_done"] = time.time()
        st.sub.stop()
        st.sub.start()
        times["subscriber_done"] = time.time()
        for h in st.hosts:
            t0 = time.time()
            assert h.stop() == 0, "host %s did not exit 0 on SIGTERM" % h.host_id
            t1 = time.time()
            h.start()
            print("  host %s: SIGTERM to exit %.2fs, start to /healthz 200 %.2fs" % (
                h.host_id, t1 - t0, time.time() - t1), flush=True)
            # The refused connects of its restart took it out of nginx's pool for fail_timeout:
            # stopping the next before it is back may leave nginx with no host at all.
            time.sleep(NGINX_FAIL_TIMEOUT + 0.5)
        times["hosts_done"] = time.time()
        # Every sale of the rolling restart counts: it must still be going on.
        assert sold_or(st, ev) < STOCK, "sold out before the restart was over: slow SLOW down"
        finish(st, ev, crowd, "rolling SIGTERM restart, all", times)
        assert "no live upstreams" not in st.lb.error_log(), "nginx had no host left"


def partition_case(label, ev, clients):
    with ClusterStack() as st:
        rc = st.redis
        crowd = start_sale(st, ev)
        m = rc.master_for_key("{%s}:meta" % ev)
        via = other_node(rc, m)
        with Partition(rc, m, clients=clients):
            times = {"fault": time.time()}
            wait_until(lambda: owner(rc, ev, via) not in (None, m.port), 20, 0.05,
                       "replica promoted")
            times["promoted"] = time.time()
            time.sleep(2.0)
        times["healed"] = time.time()
        rc.wait_ok()
        times["rejoined"] = time.time()
        return finish(st, ev, crowd, label, times)


@suite.case
def partition_master_nftables():
    partition_case("nftables: event's master cut off", "pm", clients=False)


@suite.case
def partition_split_brain_nftables():
    # The hosts still reach the old master; its replica and the other nodes do not. With
    # min-replicas-to-write it refuses to sell within 2 s; without it (SNATCH_CLUSTER_BROKEN=1)
    # it keeps selling what the promoted replica sells again: oversold.
    partition_case("nftables: split brain (hosts reach old master)", "sb", clients=True)


@suite.case
def cluster_sh_up_status_down():
    """scripts/cluster.sh: up starts the whole cluster, a sale goes through its nginx, status
    says every process is up, down stops exactly the recorded PIDs."""
    cluster_sh_case()


@suite.case
def cluster_sh_two_replicas_per_master():
    """cluster.sh up --redis-replicas-per-master 2: 9 redis-servers, status lists two replicas
    for every master's slots, down stops them all; 0 is refused before anything starts."""
    cluster_sh_case(per_master=2)


def cluster_sh_case(per_master=None):
    from harness import SOURCE_DIR, TempDir
    import json
    import urllib.request
    tmp = TempDir()
    d = os.path.join(tmp.path, "cluster")
    sh = os.path.join(SOURCE_DIR, "scripts", "cluster.sh")

    def run(*args):
        p = subprocess.run([sh] + list(args) + ["--dir", d], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=120)
        return p.returncode, p.stdout
    try:
        if per_master is None:
            rc, out = run("up")
        else:
            rc, out = run("up", "--redis-replicas-per-master", "0")
            assert rc == 2 and "1..5" in out and not os.path.exists(d), (rc, out)
            rc, out = run("up", "--redis-replicas-per-master", str(per_master))
        assert rc == 0, out
        with open(os.path.join(d, "state.json")) as f:
            st = json.load(f)
        pids = [p["pid"] for p in st["procs"]]
        assert sorted(p["kind"] for p in st["procs"]) == sorted(
            ["redis"] * 3 * (1 + (per_master or 1)) + ["nats"] * 3 + ["subscriber"] +
            ["host"] * 3 + ["nginx"]), st
        rc, out = run("status")
        assert rc == 0 and "DOWN" not in out and "cluster_state:ok" in out, out
        assert "stream ORDERS" in out, out
        reps = re.findall(r"^  slots .* replicas (\S+)$", out, re.M)
        assert len(reps) == 3 and all(len(r.split(",")) == (per_master or 1) for r in reps), out
        with open(st["token_file"]) as f:
            token = f.read().strip()
        req = urllib.request.Request(st["admin_urls"][0] + "/admin/events/sh", method="PUT",
                                     data=b'{"stock":5,"per_user_limit":1}',
                                     headers={"Authorization": "Bearer " + token})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
        req = urllib.request.Request(st["url"] + "/v1/events/sh/snatch?user=u1", method="POST")
        with urllib.request.urlopen(req, timeout=20) as r:
            assert r.status == 200, r.status
        rc, out = run("down")
        assert rc == 0, out
        left = [p for p in pids if os.path.exists("/proc/%d" % p)]
        assert not left, "still running after down: %s" % left
    finally:
        if os.path.exists(os.path.join(d, "state.json")):
            run("down")
        tmp.cleanup()


if __name__ == "__main__":
    require_cluster_flags()
    nft_delete()  # left by a run that was killed (SIGKILL cannot be caught)
    atexit.register(nft_delete)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    suite.run()
