"""Test harness: real redis-server, nats-server, snatch-host and snatch-subscriber processes on
free loopback ports in temp dirs, stopped by PID afterwards (also when a test fails).

Every class is a context manager; `Stack` starts the whole thing. Only the Python standard library
is used. Paths come from SNATCH_BUILD_DIR / SNATCH_SOURCE_DIR (set by ctest)."""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

SOURCE_DIR = os.environ.get("SNATCH_SOURCE_DIR",
                            os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
BUILD_DIR = os.environ.get("SNATCH_BUILD_DIR", os.path.join(SOURCE_DIR, "build"))
ADMIN_TOKEN = "test-admin-token-0123456789"
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def binary(name):
    return os.path.join(BUILD_DIR, name)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("process exited with %s before listening on %d" % (proc.returncode, port))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("nothing listening on port %d after %.1fs" % (port, timeout))


def wait_until(pred, timeout=10.0, step=0.05, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError("timed out waiting for " + what)


def order_json(oid, value):
    """The order's JSON text of an {E}:orders value in either form (README "Redis data"): a
    test's reading of host/common/order_msg.c order_record_json; None when it is neither."""
    if value.startswith("{"):
        return value
    m = re.fullmatch(r"(\d{13,18})-\d{10,}-([\w.:@-]+)", oid, re.ASCII)
    v = re.fullmatch(r"([1-9]\d*) ([\w.:@-]+) ([\w.:@-]+)", value, re.ASCII)
    if not m or not v:
        return None
    return ('{"event":"%s","host":"%s","created_at":%d,"order_id":"%s","qty":%s,"user":"%s"}'
            % (m[2], v[2], int(m[1]), oid, v[1], v[3]))


def js_publish(port, subject, msg_id, headers, payload):
    """Publishes one message with headers to JetStream (HPUB); returns the ack."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rb")
        f.readline()
        hdr = "NATS/1.0\r\nNats-Msg-Id: %s\r\n" % msg_id
        hdr += "".join("%s: %s\r\n" % kv for kv in headers.items()) + "\r\n"
        hb, pb = hdr.encode(), payload.encode()
        s.sendall(b'CONNECT {"verbose":false,"headers":true}\r\nSUB _INBOX.t 1\r\n'
                  b"HPUB %s _INBOX.t %d %d\r\n%s%s\r\nPING\r\n"
                  % (subject.encode(), len(hb), len(hb) + len(pb), hb, pb))
        while True:
            line = f.readline()
            if line.startswith(b"MSG "):
                n = int(line.split()[-1])
                return json.loads(f.read(n + 2)[:n])
            if line.startswith(b"PING"):
                s.sendall(b"PONG\r\n")
            if not line or line.startswith(b"-ERR"):
                raise OSError(line)


def all_threads_stopped(pid):
    """True once /proc shows every thread of pid in state T (stopped by a signal)."""
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                state = f.read().rsplit(") ", 1)[1][0]
        except (OSError, IndexError):
            continue  # the thread exited meanwhile
        if state != "T":
            return False
    return True


class Proc:
    """A child process we started; stopped by PID only."""

    def __init__(self, argv, log_path, env=None):
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.p = None

    def start(self):
        self.log = open(self.log_path, "ab")
        self.p = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=self.env)
        return self

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p is not None and self.p.poll() is None

    def send_signal(self, sig):
        if self.alive():
            os.kill(self.p.pid, sig)

    def kill9(self):
        if self.alive():
            self.p.kill()
            self.p.wait()

    def sigstop(self, timeout=10.0):
        """SIGSTOP, then wait until every thread of the process is stopped: the signal takes
        effect asynchronously, and until it has, the server still answers (e.g. acknowledges a
        publish that a test expects to go unanswered)."""
        os.kill(self.p.pid, signal.SIGSTOP)
        wait_until(lambda: all_threads_stopped(self.p.pid), timeout, 0.005,
                   "pid %d to stop" % self.p.pid)

    def stop(self, timeout=10.0, sig=signal.SIGTERM):
        if self.p is None:
            return None
        if self.alive():
            os.kill(self.p.pid, sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()
        return self.p.returncode

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


class TempDir:
    def __init__(self, prefix="snatch-test-"):
        self.path = tempfile.mkdtemp(prefix=prefix)

    def cleanup(self):
        if os.environ.get("SNATCH_KEEP_TMP"):
            print("kept", self.path)
            return
        shutil.rmtree(self.path, ignore_errors=True)


def deduct_reply(event, n, out):
    """lua/deduct.lua's reply for n buyers in the long form tests compare: a buyer who bought
    answers an integer (units left) and the batch's last element {gen, created_ms, hold_until,
    first_seq} completes it into ["ok", order_id, remaining, gen, created_ms, hold_until].
    Asserts the short form's rules: the last element exactly when someone bought."""
    if not isinstance(out, list):
        return out
    assert len(out) in (n, n + 1), out
    tail = out[n] if len(out) == n + 1 else None
    bought = [o for o in out[:n] if isinstance(o, int)]
    assert (tail is not None) == bool(bought), out
    seq, res = (int(tail[3]) if tail else 0), []
    for o in out[:n]:
        if isinstance(o, int):
            ms = int(tail[1])
            res.append(["ok", "%013d-%010d-%s" % (ms, seq, event), o, tail[0], ms, tail[2]])
            seq += 1
        else:
            res.append(o)
    return res


class RedisServer:
    """extra: more redis-server arguments. auth: the AUTH arguments ((password,) or (user,
    password)) that cmd() sends first, for a server started with requirepass or ACL users."""

    def __init__(self, workdir, port=None, aof_always=False, extra=(), auth=()):
        self.port = port or free_port()
        self.dir = os.path.join(workdir, "redis-%d" % self.port)
        os.makedirs(self.dir, exist_ok=True)
        self.aof_always = aof_always
        self.extra = list(extra)
        self.auth = tuple(auth)
        self.proc = None

    def start(self):
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                "--save", "", "--daemonize", "no", "--protected-mode", "no"]
        if self.aof_always:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        argv += self.extra
        self.proc = Proc(argv, os.path.join(self.dir, "redis.log")).start()
        wait_port(self.port, proc=self.proc.p)
        wait_until(lambda: self._ping(), 10, what="redis PING")
        return self

    def _ping(self):
        try:
            return self.cmd("PING") == "PONG"
        except (OSError, RuntimeError):
            return False

    def stop(self):
        if self.proc:
            self.proc.stop()

    def kill9(self):
        if self.proc:
            self.proc.kill9()

    def cmd(self, *args):
        """One command over RESP2; returns str/int/list/None, raises RuntimeError on -ERR."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            out = b""
            for command in ([("AUTH",) + self.auth] if self.auth else []) + [args]:
                out += b"*%d\r\n" % len(command)
                for a in command:
                    a = a if isinstance(a, bytes) else str(a).encode()
                    out += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(out)
            f = s.makefile("rb")
            if self.auth:
                _read_resp(f)
            return _read_resp(f)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _read_resp(f):
    line = f.readline()
    if not line:
        raise OSError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode("utf-8", "replace")
    if kind == b"*":
        n = int(rest)
        if n < 0:
            return None
        return [_read_resp(f) for _ in range(n)]
    raise OSError("bad RESP line %r" % line)


class NatsServer:
    """extra: more nats-server arguments (auth, TLS); scheme: of url ("tls" with TLS)."""

    def __init__(self, workdir, port=None, extra=(), scheme="nats"):
        self.port = port or free_port()
        self.store = os.path.join(workdir, "nats-%d" % self.port)
        os.makedirs(self.store, exist_ok=True)
        self.extra = list(extra)
        self.scheme = scheme
        self.proc = None

    @property
    def url(self):
        return "%s://127.0.0.1:%d" % (self.scheme, self.port)

    def start(self):
        argv = ["nats-server", "-js", "-sd", self.store, "-a", "127.0.0.1", "-p", str(self.port)]
        argv += self.extra
        self.proc = Proc(argv, os.path.join(self.store, "nats.log")).start()
        wait_port(self.port, proc=self.proc.p)
        return self

    def stop(self):
        if self.proc:
            self.proc.stop()

    def kill9(self):
        if self.proc:
            self.proc.kill9()

    def restart(self, down_seconds=0.0):
        self.stop()
        time.sleep(down_seconds)
        return self.start()

    def request(self, subject, payload=b"", timeout=5.0):
        """One NATS request (core protocol over a socket, no client library); returns the reply
        payload. Used for JetStream's API, e.g. request("$JS.API.STREAM.INFO.ORDERS")."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            f = s.makefile("rb")
            f.readline()  # INFO
            inbox = "_INBOX.snatch-test"
            s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB %s 1\r\n'
                      b"PUB %s %s %d\r\n%s\r\nPING\r\n"
                      % (inbox.encode(), subject.encode(), inbox.encode(), len(payload), payload))
            while True:
                line = f.readline()
                if not line:
                    raise OSError("NATS closed the connection")
                if line.startswith(b"PING"):
                    s.sendall(b"PONG\r\n")
                elif line.startswith(b"MSG "):
                    n = int(line.split()[-1])
                    data = f.read(n + 2)[:n]
                    return data
                elif line.startswith(b"-ERR"):
                    raise OSError(line.decode().strip())

    def stream_info(self, stream="ORDERS"):
        """JetStream's stream info as a dict ("error" in it when the stream does not exist)."""
        return json.loads(self.request("$JS.API.STREAM.INFO." + stream))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def redis_key_slot(key):
    """The Redis Cluster slot of key: CRC16 (XMODEM) of the {hash tag} if there is a non-empty one,
    of the whole key otherwise, modulo 16384 (the cluster spec's definition)."""
    k = key.encode() if isinstance(key, str) else key
    s = k.find(b"{")
    if s >= 0:
        e = k.find(b"}", s + 1)
        if e > s + 1:
            k = k[s + 1:e]
    crc = 0
    for b in k:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc % 16384


class _NodeGroup:
    """Servers started together (self.nodes, self.start()); stopped by PID, each one, also when
    the start fails half-way."""

    def stop(self):
        for n in self.nodes:
            try:
                n.stop()
            except Exception:
                n.kill9()

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()


class RedisCluster(_NodeGroup):
    """masters x (1 + replicas) redis-servers in cluster mode on loopback ports, formed with
    `redis-cli --cluster create`. Nodes are RedisServer objects (kill9/stop/start each one; a node
    restarted on its port and dir rejoins with its nodes.conf). extra: more arguments for every
    node (e.g. min-replicas-to-write)."""

    def __init__(self, workdir, masters=3, replicas=1, node_timeout_ms=1000, aof_always=False,
                 extra=()):
        self.workdir = workdir
        self.n_masters = masters
        self.replicas = replicas
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                # A replica's first sync starts at once instead of after the default 5 s.
                "--repl-diskless-sync-delay", "0",
                # CLUSTER SLOTS lists a replica only once its offset is non-zero: the master's
                # ping (every 10 s by default) is what first moves it.
                "--repl-ping-replica-period", "1"] + list(extra)
        # The bus port is set, not left at port + 10000, which may be above 65535 or taken.
        self.nodes = [RedisServer(workdir, aof_always=aof_always,
                                  extra=args + ["--cluster-port", str(free_port())])
                      for _ in range(masters * (1 + replicas))]

    @property
    def seeds(self):
        """What snatch's --redis takes: a comma list of every node."""
        return ",".join("127.0.0.1:%d" % n.port for n in self.nodes)

    def start(self):
        for n in self.nodes:
            n.start()
        argv = ["redis-cli", "--cluster", "create"] + ["127.0.0.1:%d" % n.port for n in self.nodes]
        argv += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        if p.returncode != 0:
            raise RuntimeError("redis-cli --cluster create: %s" % p.stdout.decode()[-2000:])
        self.wait_ok()
        return self

    def alive_nodes(self):
        return [n for n in self.nodes if n.proc is not None and n.proc.alive()]

    def node(self, port):
        return next(n for n in self.nodes if n.port == port)

    def _info(self, n, section):
        text = n.cmd("INFO", section) if section != "cluster" else n.cmd("CLUSTER", "INFO")
        return dict(line.split(":", 1) for line in text.split("\r\n") if ":" in line)

    def slots(self, via=None):
        """[(start, end, master_port, [replica ports])] as a live node (or via) sees it."""
        for n in ([via] if via else self.alive_nodes()):
            try:
                out = []
                for r in n.cmd("CLUSTER", "SLOTS"):
                    out.append((int(r[0]), int(r[1]), int(r[2][1]), [int(x[1]) for x in r[3:]]))
                return out
            except (OSError, RuntimeError):
                continue
        raise RuntimeError("no live cluster node answers CLUSTER SLOTS")

    def master_for_key(self, key):
        """The RedisServer that owns key's slot now."""
        slot = redis_key_slot(key)
        for start, end, port, _ in self.slots():
            if start <= slot <= end:
                return self.node(port)
        raise RuntimeError("slot %d not covered" % slot)

    def replicas_of(self, master):
        for _, _, port, reps in self.slots():
            if port == master.port:
                return [self.node(p) for p in reps]
        return []

    def masters(self):
        return [self.node(p) for p in sorted({s[2] for s in self.slots()})]

    def wait_ok(self, timeout=30.0):
        """Every live node says cluster_state:ok and all 16384 slots are assigned to live masters;
        with every node up, each master also has its replicas attached and in sync (replication is
        what a failover relies on)."""
        def ok():
            try:
                for n in self.alive_nodes():
                    if self._info(n, "cluster").get("cluster_state") != "ok":
                        return False
                live = {n.port for n in self.alive_nodes()}
                covered = 0
                for start, end, port, _ in self.slots():
                    if port not in live:
                        return False
                    covered += end - start + 1
                    if len(live) < len(self.nodes):
                        continue  # a node is down: its master has fewer replicas, by design
                    rep = self._info(self.node(port), "replication")
                    up = sum(1 for k, v in rep.items() if k.startswith("slave") and "state=online" in v)
                    if up < self.replicas or len(self.replicas_of(self.node(port))) < self.replicas:
                        return False
                    # With min-replicas-to-write, a replica online whose last ack is older than
                    # min-replicas-max-lag does not count: its master refuses writes until the
                    # next ack (on a loaded machine, right after the cluster came up).
                    good = rep.get("min_slaves_good_slaves")
                    if good is not None and int(good) < self.replicas:
                        return False
                return covered == 16384
            except (OSError, RuntimeError, StopIteration):
                return False
        wait_until(ok, timeout, 0.1, "redis cluster state ok")

    def cmd(self, *args):
        """A key command (the key is args[1]) on the master owning its slot, after one MOVED."""
        try:
            return self.master_for_key(args[1]).cmd(*args)
        except RuntimeError as e:
            if not str(e).startswith("MOVED "):
                raise
            return self.node(int(str(e).split()[2].rsplit(":", 1)[1])).cmd(*args)

    def bus_port(self, node):
        return int(node.extra[node.extra.index("--cluster-port") + 1])

    def keys_for_masters(self, prefix="ev"):
        """One event name per master, each hashing ({name}) to a different master."""
        found = {}
        ranges = self.slots()
        i = 0
        while len(found) < len(ranges):
            name = "%s%d" % (prefix, i)
            slot = redis_key_slot("{%s}" % name)
            for start, end, port, _ in ranges:
                if start <= slot <= end and port not in found:
                    found[port] = name
            i += 1
        return [found[p] for p in sorted(found)]


class NatsCluster(_NodeGroup):
    """n nats-servers forming one JetStream cluster over loopback routes. Nodes are NatsServer
    objects (kill9/stop/start each; a node restarted keeps its store and name)."""

    def __init__(self, workdir, n=3, extra=()):
        self.cluster_ports = [free_port() for _ in range(n)]
        routes = ",".join("nats://127.0.0.1:%d" % p for p in self.cluster_ports)
        self.nodes = []
        for i, cp in enumerate(self.cluster_ports):
            args = ["--server_name", "n%d" % (i + 1), "--cluster_name", "snatch",
                    "--cluster", "nats://127.0.0.1:%d" % cp, "--routes", routes] + list(extra)
            self.nodes.append(NatsServer(workdir, extra=args))

    @property
    def urls(self):
        """What snatch's --nats takes: a comma list of every node."""
        return ",".join(n.url for n in self.nodes)

    def alive_nodes(self):
        return [n for n in self.nodes if n.proc is not None and n.proc.alive()]

    def by_name(self, name):
        return self.nodes[int(name[1:]) - 1]

    def start(self):
        for n in self.nodes:
            n.start()
        self.wait_ready()
        return self

    def wait_ready(self, timeout=30.0):
        """JetStream answers on every live node (a meta leader was elected)."""
        def ok():
            try:
                for n in self.alive_nodes():
                    info = json.loads(n.request("$JS.API.INFO", timeout=2.0))
                    if "error" in info:
                        return False
                return True
            except (OSError, ValueError):
                return False
        wait_until(ok, timeout, 0.2, "JetStream cluster ready")

    def stream_info(self, stream="ORDERS"):
        last = None
        for n in self.alive_nodes():
            try:
                return n.stream_info(stream)
            except (OSError, ValueError) as e:
                last = e
        raise RuntimeError("no live NATS node answers stream info: %s" % last)

    def stream_leader(self, stream="ORDERS"):
        """The NatsServer leading stream now, or None while it has no leader."""
        info = self.stream_info(stream)
        name = (info.get("cluster") or {}).get("leader")
        return self.by_name(name) if name else None


class Subscriber:
    def __init__(self, workdir, nats_url, db_path=None, batch=None, extra=()):
        self.db = db_path or os.path.join(workdir, "orders.db")
        self.workdir = workdir
        self.argv = [binary("snatch-subscriber"), "--nats", nats_url, "--db", self.db]
        if batch:
            self.argv += ["--batch", str(batch)]
        self.argv += list(extra)
        self.proc = None
        self.n = 0

    def start(self):
        self.n += 1
        self.proc = Proc(self.argv, os.path.join(self.workdir, "subscriber-%d.log" % self.n)).start()
        return self

    def stop(self, timeout=15.0):
        return self.proc.stop(timeout) if self.proc else None

    def kill9(self):
        if self.proc:
            self.proc.kill9()

    def rows(self, event=None):
        if not os.path.exists(self.db):
            return 0
        try:
            con = sqlite3.connect("file:%s?mode=ro" % self.db, uri=True, timeout=5)
            try:
                if event is None:
                    return con.execute("SELECT count(*) FROM orders").fetchone()[0]
                return con.execute("SELECT count(*) FROM orders WHERE event=?", (event,)).fetchone()[0]
            finally:
                con.close()
        except sqlite3.OperationalError:
            return 0

    def query(self, sql, args=()):
        con = sqlite3.connect("file:%s?mode=ro" % self.db, uri=True, timeout=5)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _redis_addr(redis):
    """--redis's value: a port of 127.0.0.1, or an address list given as it is (a cluster's seeds)."""
    return redis if isinstance(redis, str) else "127.0.0.1:%d" % redis


class Host:
    def __init__(self, workdir, redis_port, nats_url, policy=None, threads=2, host_id="h1",
                 hosts=1, port=None, extra=(), query_user=True):
        self.port = port or free_port()
        self.workdir = workdir
        self.policy = policy or os.path.join(SOURCE_DIR, "lua", "policy.lua")
        self.token_file = os.path.join(workdir, "admin.token")
        with open(self.token_file, "w") as f:
            f.write(ADMIN_TOKEN + "\n")
        self.argv = [binary("snatch-host"), "--listen", "127.0.0.1:%d" % self.port,
                     "--threads", str(threads), "--redis", _redis_addr(redis_port),
                     "--nats", nats_url, "--host-id", host_id, "--hosts", str(hosts),
                     "--admin-token-file", self.token_file] + list(extra) + [self.policy]
        if query_user:
            # The tests name buyers with ?user= (like a load tool): opt in, as they must.
            self.argv[1:1] = ["--allow-query-user"]
        self.host_id = host_id
        self.proc = None

    @property
    def base(self):
        return "127.0.0.1:%d" % self.port

    def start(self, wait_ready=True):
        self.proc = Proc(self.argv, os.path.join(self.workdir, "host-%s.log" % self.host_id)).start()
        wait_port(self.port, proc=self.proc.p)
        if wait_ready:
            wait_until(lambda: self.request("GET", "/healthz")[0] == 200, 15, what="host /healthz 200")
        return self

    def stop(self, timeout=15.0):
        return self.proc.stop(timeout) if self.proc else None

    def kill9(self):
        if self.proc:
            self.proc.kill9()

    def hup(self):
        self.proc.send_signal(signal.SIGHUP)

    def request(self, method, path, body=None, headers=None, timeout=10.0):
        """Returns (status, parsed JSON body or text)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read().decode("utf-8", "replace")
            try:
                return r.status, json.loads(data)
            except ValueError:
                return r.status, data
        finally:
            conn.close()

    def create_event(self, event, stock, per_user_limit=1, reset=False):
        """PUT /admin/events/<event>; an existing event needs reset=True (?reset=1)."""
        st, body = self.request("PUT", "/admin/events/" + event + ("?reset=1" if reset else ""),
                                body=json.dumps({"stock": stock, "per_user_limit": per_user_limit}),
                                headers={"Authorization": "Bearer " + ADMIN_TOKEN,
                                         "Content-Type": "application/json"})
        if st != 200:
            raise AssertionError("create_event %s: %s %r" % (event, st, body))
        return body

    def snatch(self, event, user, qty=None):
        q = "?user=%s" % user + ("&qty=%d" % qty if qty is not None else "")
        return self.request("POST", "/v1/events/%s/snatch%s" % (event, q))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Nginx:
    """nginx in front of hosts, running examples/nginx/snatch.conf as shipped except for its
    listen line and upstream server addresses (one line per port in upstream_ports, with the
    file's own parameters). conf: another file of the same shape (a test's broken variant).
    server_extra: directives added to its server block (tests only). Stopped by its master's
    PID (the workers are its children)."""

    CONF = os.path.join(SOURCE_DIR, "examples", "nginx", "snatch.conf")

    def __init__(self, workdir, upstream_ports, port=None, workers=1, conf=None, server_extra=""):
        self.port = port or free_port()
        self.dir = os.path.join(workdir, "nginx-%d" % self.port)
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        self.upstream_ports = list(upstream_ports)
        self.workers = workers
        self.src = conf or self.CONF
        self.server_extra = server_extra
        self.proc = None

    def site(self):
        """The example file with this instance's ports."""
        with open(self.src) as f:
            text = f.read()
        lines = re.findall(r"^([ \t]*)server 127\.0\.0\.1:\d+(.*;)$", text, re.M)
        assert lines, "no 'server 127.0.0.1:PORT ...;' line in " + self.src
        indent, params = lines[0]
        first = [True]

        def upstream(_m):
            if not first[0]:
                return ""
            first[0] = False
            return "".join("%sserver 127.0.0.1:%d%s\n" % (indent, p, params)
                           for p in self.upstream_ports)
        text = re.sub(r"^[ \t]*server 127\.0\.0\.1:\d+.*;\n", upstream, text, flags=re.M)
        text, n = re.subn(r"^([ \t]*)listen [^;]*;", r"\1listen 127.0.0.1:%d;%s" % (
            self.port, self.server_extra.replace("\\", "\\\\")), text, count=1, flags=re.M)
        assert n == 1, "no listen line in " + self.src
        return text

    def write(self):
        site = os.path.join(self.dir, "snatch.conf")
        with open(site, "w") as f:
            f.write(self.site())
        d = self.dir
        main = os.path.join(d, "nginx.conf")
        with open(main, "w") as f:
            # As root the workers would switch to nobody, who cannot use the temp dir.
            f.write(("user root;\n" if os.getuid() == 0 else "") + (
                "worker_processes %d;\ndaemon off;\npid %s/nginx.pid;\nerror_log %s/error.log warn;\n"
                "events { worker_connections 4096; }\n"
                "http {\n  access_log off;\n  client_body_temp_path %s/tmp/body;\n"
                "  proxy_temp_path %s/tmp/proxy;\n  fastcgi_temp_path %s/tmp/fastcgi;\n"
                "  uwsgi_temp_path %s/tmp/uwsgi;\n  scgi_temp_path %s/tmp/scgi;\n"
                "  include %s;\n}\n") % ((self.workers,) + (d,) * 7 + (site,)))
        return main

    def start(self):
        main = self.write()
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = Proc([nginx, "-p", self.dir, "-c", main, "-e", os.path.join(self.dir, "error.log")],
                         os.path.join(self.dir, "nginx.log")).start()
        wait_port(self.port, proc=self.proc.p)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc:
            self.proc.stop()

    def error_log(self):
        try:
            with open(os.path.join(self.dir, "error.log")) as f:
                return f.read()
        except OSError:
            return ""

    # Same calls as a Host, through the balancer.
    request = Host.request
    snatch = Host.snatch

    @property
    def base(self):
        return "127.0.0.1:%d" % self.port

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def bench(url, *args, timeout=300):
    """Runs snatch-bench; returns (exit code, parsed --json result, stdout)."""
    fd, jpath = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        p = subprocess.run([binary("snatch-bench"), "--json", jpath, "--quiet"] + list(args) + [url],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        out = p.stdout.decode("utf-8", "replace")
        try:
            with open(jpath) as f:
                res = json.load(f)
        except (OSError, ValueError):
            res = None
        return p.returncode, res, out
    finally:
        os.unlink(jpath)


class Stack:
    """redis + nats + subscriber + N hosts. Use as a context manager; everything is stopped
    (by PID) on exit and the temp dir removed."""

    def __init__(self, hosts=1, threads=2, policy=None, aof_always=False, subscriber=True,
                 host_extra=(), query_user=True, redis_extra=(), sub_extra=(),
                 redis_cluster=None, nats_cluster=None):
        """redis_cluster / nats_cluster: keyword arguments of RedisCluster / NatsCluster (a dict,
        {} for the defaults) to run on a cluster instead of one server; self.redis / self.nats
        are then the cluster objects."""
        self.tmp = TempDir()
        self.n_hosts = hosts
        self.threads = threads
        self.policy = policy
        self.aof_always = aof_always
        self.with_subscriber = subscriber
        self.host_extra = host_extra
        self.query_user = query_user
        self.redis_extra = redis_extra
        self.sub_extra = sub_extra
        self.redis_cluster = redis_cluster
        self.nats_cluster = nats_cluster
        self.redis = self.nats = self.sub = None
        self.hosts = []

    def __enter__(self):
        try:
            if self.redis_cluster is not None:
                self.redis = RedisCluster(self.tmp.path, aof_always=self.aof_always,
                                          **self.redis_cluster).start()
            else:
                self.redis = RedisServer(self.tmp.path, aof_always=self.aof_always,
                                         extra=self.redis_extra).start()
            if self.nats_cluster is not None:
                self.nats = NatsCluster(self.tmp.path, **self.nats_cluster).start()
            else:
                self.nats = NatsServer(self.tmp.path).start()
            if self.with_subscriber:
                self.sub = Subscriber(self.tmp.path, self.nats_url, extra=self.sub_extra).start()
            for i in range(self.n_hosts):
                h = Host(self.tmp.path, self.redis_addr, self.nats_url, policy=self.policy,
                         threads=self.threads, host_id="h%d" % (i + 1), hosts=self.n_hosts,
                         extra=self.host_extra, query_user=self.query_user)
                # Listed before it starts: one that never gets healthy is still stopped on exit.
                self.hosts.append(h)
                h.start()
            return self
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise

    @property
    def host(self):
        return self.hosts[0]

    @property
    def redis_addr(self):
        """--redis's value for this stack's Redis (one server's port, or a cluster's seeds)."""
        return self.redis.seeds if isinstance(self.redis, RedisCluster) else self.redis.port

    @property
    def nats_url(self):
        """--nats's value for this stack's NATS (one URL, or a cluster's comma list)."""
        return self.nats.urls if isinstance(self.nats, NatsCluster) else self.nats.url

    def reconcile(self, *args, timeout=120):
        argv = [binary("snatch-reconcile"), "--redis", _redis_addr(self.redis_addr),
                "--nats", self.nats_url, "--db", self.sub.db if self.sub else
                os.path.join(self.tmp.path, "orders.db")] + list(args)
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        return p.returncode, p.stdout.decode("utf-8", "replace")

    def dump_logs(self):
        for h in self.hosts:
            if h.proc:
                print("---- host %s log (tail) ----" % h.host_id)
                print(h.proc.log_text()[-4000:])
        if self.sub and self.sub.proc:
            print("---- subscriber log (tail) ----")
            print(self.sub.proc.log_text()[-3000:])

    def __exit__(self, etype, *exc):
        if etype is not None:
            self.dump_logs()
        for h in self.hosts:
            try:
                h.stop()
            except Exception:
                h.kill9()
        for part in (self.sub, self.nats, self.redis):
            if part is not None:
                try:
                    part.stop()
                except Exception:
                    pass
        # In the ASan+UBSan pass every integration test is also a memory check: a report in any
        # of our processes' logs (leaks are reported at exit) fails the test.
        reports = []
        for name, proc in [("host " + h.host_id, h.proc) for h in self.hosts] + [
                ("subscriber", self.sub.proc if self.sub else None)]:
            text = proc.log_text() if proc is not None else ""
            for marker in SANITIZER_MARKERS:
                if marker in text:
                    i = text.index(marker)
                    reports.append("%s: %s" % (name, text[max(0, i - 200):i + 3000]))
                    break
        self.tmp.cleanup()
        if reports and etype is None:
            raise AssertionError("sanitizer report:\n" + "\n".join(reports))


class Suite:
    """Named test cases; prints 'N passed, N failed' and exits non-zero on a failure."""

    def __init__(self):
        self.cases = []

    def case(self, fn):
        self.cases.append(fn)
        return fn

    def run(self):
        only = sys.argv[1:]
        # A filter naming no case would pass having run nothing: a typo must not look green.
        unknown = sorted(set(only) - {fn.__name__ for fn in self.cases})
        if unknown:
            print("no such case: %s" % ", ".join(unknown), flush=True)
            sys.exit(2)
        passed = failed = 0
        for fn in self.cases:
            if only and fn.__name__ not in only:
                continue
            t0 = time.time()
            try:
                fn()
                passed += 1
                print("PASS %s (%.1fs)" % (fn.__name__, time.time() - t0), flush=True)
            except BaseException as e:  # noqa: B902 - report and go on with the next case
                failed += 1
                import traceback
                traceback.print_exc()
                print("FAIL %s: %s" % (fn.__name__, e), flush=True)
        print("%d passed, %d failed" % (passed, failed))
        sys.exit(1 if failed else 0)
