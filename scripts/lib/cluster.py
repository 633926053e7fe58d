"""The one-machine cluster of scripts/cluster.sh, started with the test harness's own classes
(tests/integration/harness.py: RedisCluster, NatsCluster, Subscriber, Host, Nginx), so the script
and the tests start the same thing the same way.

    cluster.py up     --dir DIR [--port N] [--threads N] [--redis-replicas-per-master N]
                                                           start everything, write DIR/state.json
    cluster.py down   --dir DIR                            stop exactly the PIDs in state.json
    cluster.py status --dir DIR                            each process, the Redis cluster, the
                                                           ORDERS stream, the hosts' health
    cluster.py env    --dir DIR                            shell assignments for scripts
    cluster.py events --dir DIR [--prefix P]               one event name per Redis master

Loopback only: 6 redis-servers (3 masters, 1 replica each, min-replicas-to-write 1; with
--redis-replicas-per-master 2: 9, and a master that died for good leaves a promoted replica that
still has one), 3 nats-servers (one JetStream cluster), 3 snatch-hosts, nginx
(examples/nginx/snatch.conf) in front, the subscriber. Each in its own directory under DIR. `up` runs in a session of its own (cluster.sh
starts it with setsid) so the servers outlive it and a Ctrl-C in the terminal does not reach them."""
import argparse
import json
import os
import secrets
import signal
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
os.environ.setdefault("SNATCH_SOURCE_DIR", ROOT)
os.environ.setdefault("SNATCH_BUILD_DIR", os.path.join(ROOT, "build"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import harness  # noqa: E402
from harness import Host, NatsCluster, Nginx, RedisCluster, Subscriber  # noqa: E402

HOSTS = 3
# A master that has lost its replica refuses writes (NOREPLICAS) instead of acknowledging sales
# a failover could forget. The replica acknowledges every second; 2 s of silence is "lost".
REDIS_EXTRA = ["--min-replicas-to-write", "1", "--min-replicas-max-lag", "2"]
# Whatever the replicas per master, the hosts WAIT for 1 (cluster_flags) and a master needs 1 to
# write: a 200 is on two nodes, and with 2 replicas per master one dead node never stops a shard
# (WAIT 2 / min-replicas-to-write 2 would answer 202 / 503 on its shard until it is back).
# What the order of `down` is: the balancer first (no new buyers), the hosts (they finish their
# sales), the subscriber (it commits what it fetched), then NATS and Redis.
STOP_ORDER = ("nginx", "host", "subscriber", "nats", "redis")


def cluster_flags():
    """The host's cluster flags, when this build has them (issue 11: Redis Cluster client,
    JetStream replicas)."""
    import subprocess
    out = subprocess.run([harness.binary("snatch-host"), "--help"], stdout=subprocess.PIPE,
                         text=True).stdout
    flags = []
    if "--redis-replicas" in out:
        flags += ["--redis-replicas", "1"]
    if "--orders-replicas" in out:
        flags += ["--orders-replicas", "3"]
    return flags, out


def state_path(d):
    return os.path.join(d, "state.json")


def load(d):
    try:
        with open(state_path(d)) as f:
            return json.load(f)
    except OSError:
        return None


def start_time(pid):
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22), or None: with
    the PID it names one process, never a later one that reuses the PID."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def alive(p):
    """The recorded process still runs (same PID and start time: a reused PID is not ours)."""
    return start_time(p["pid"]) == p["start"]


def record(kind, name, proc, port, d, **extra):
    return dict(kind=kind, name=name, pid=proc.pid, start=start_time(proc.pid), port=port, dir=d,
                **extra)


def up(args):
    d = os.path.abspath(args.dir)
    st = load(d)
    if st and any(alive(p) for p in st["procs"]):
        sys.exit("cluster.py: %s already runs a cluster (cluster.sh down --dir %s first)" % (d, d))
    flags, help_text = cluster_flags()
    if "--redis-replicas" not in help_text:
        sys.exit("cluster.py: this snatch-host has no Redis Cluster support (no --redis-replicas "
                 "in --help): build a version with it (issue 11)")
    os.makedirs(d, exist_ok=True)
    procs, started = [], []

    def save(**more):
        tmp = state_path(d) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(dict(procs=procs, **more), f, indent=1)
        os.replace(tmp, state_path(d))

    try:
        rc = RedisCluster(os.path.join(d, "redis"), replicas=args.redis_replicas_per_master,
                          extra=REDIS_EXTRA)
        os.makedirs(rc.workdir, exist_ok=True)
        started.append(rc)
        rc.start()
        for n in rc.nodes:
            procs.append(record("redis", "redis-%d" % n.port, n.proc, n.port, n.dir))
        save()
        nc = NatsCluster(os.path.join(d, "nats"))
        started.append(nc)
        nc.start()
        for i, n in enumerate(nc.nodes):
            procs.append(record("nats", "nats-n%d" % (i + 1), n.proc, n.port, n.store))
        save()
        sub_dir = os.path.join(d, "subscriber")
        os.makedirs(sub_dir, exist_ok=True)
        sub = Subscriber(sub_dir, nc.urls)
        started.append(sub)
        sub.start()
        procs.append(record("subscriber", "subscriber", sub.proc, None, sub_dir, db=sub.db))
        save()
        token = secrets.token_hex(24)
        hosts = []
        for i in range(HOSTS):
            hd = os.path.join(d, "host-h%d" % (i + 1))
            os.makedirs(hd, exist_ok=True)
            h = Host(hd, rc.seeds, nc.urls, threads=args.threads, host_id="h%d" % (i + 1),
                     hosts=HOSTS, extra=["--trusted-proxy", "127.0.0.1"] + flags)
            with open(h.token_file, "w") as f:  # not the tests' fixed token
                f.write(token + "\n")
            os.chmod(h.token_file, 0o600)
            # Started without waiting, all three at once: each waits for the clusters alone.
            started.append(h)
            h.start(wait_ready=False)
            hosts.append(h)
            procs.append(record("host", "host-h%d" % (i + 1), h.proc, h.port, hd))
        save()
        for h in hosts:
            harness.wait_until(lambda: h.request("GET", "/healthz")[0] == 200, 30,
                               what="host %s /healthz 200" % h.host_id)
        lb = Nginx(d, [h.port for h in hosts], port=args.port, workers=2)
        started.append(lb)
        lb.start()
        procs.append(record("nginx", "nginx", lb.proc, lb.port, lb.dir))
        save(url="http://127.0.0.1:%d" % lb.port, seeds=rc.seeds, nats=nc.urls, db=sub.db,
             token_file=hosts[0].token_file,
             admin_urls=["http://127.0.0.1:%d" % h.port for h in hosts])
    except BaseException:
        for part in reversed(started):
            try:
                part.stop()
            except Exception:
                pass
        raise
    print("cluster: up in %s" % d)
    print("  buyers:  http://127.0.0.1:%d/v1/events/{event}/snatch   (nginx, %d hosts)" % (
        lb.port, HOSTS))
    print("  admin:   %s  (Authorization: Bearer $(cat %s))" % (
        ", ".join("127.0.0.1:%d" % h.port for h in hosts), hosts[0].token_file))
    print("  redis:   %s" % rc.seeds)
    print("  nats:    %s" % nc.urls)
    print("  orders:  %s" % sub.db)


def wait_gone(p, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not alive(p):
            return True
        time.sleep(0.05)
    return False


def down(args):
    d = os.path.abspath(args.dir)
    st = load(d)
    if st is None:
        print("cluster: nothing recorded in %s" % d)
        return
    for kind in STOP_ORDER:
        mine = [p for p in st["procs"] if p["kind"] == kind and alive(p)]
        for p in mine:
            os.kill(p["pid"], signal.SIGTERM)
        for p in mine:
            if not wait_gone(p, 20):
                print("cluster: %s (pid %d) ignored SIGTERM for 20 s: SIGKILL" % (p["name"], p["pid"]))
                os.kill(p["pid"], signal.SIGKILL)
                wait_gone(p, 5)
        if mine:
            print("cluster: stopped %s" % ", ".join("%s (pid %d)" % (p["name"], p["pid"]) for p in mine))
    os.unlink(state_path(d))
    print("cluster: down; files kept in %s" % d)


def status(args):
    d = os.path.abspath(args.dir)
    st = load(d)
    if st is None:
        print("cluster: nothing recorded in %s" % d)
        sys.exit(1)
    down_n = 0
    for p in st["procs"]:
        ok = alive(p)
        down_n += not ok
        print("%-12s pid %-7d %-5s %s" % (p["name"], p["pid"], "up" if ok else "DOWN",
                                         "127.0.0.1:%d" % p["port"] if p["port"] else p["dir"]))
    redis_nodes = [p for p in st["procs"] if p["kind"] == "redis" and alive(p)]
    if redis_nodes:
        n = harness.RedisServer.__new__(harness.RedisServer)
        n.port, n.auth = redis_nodes[0]["port"], ()
        try:
            info = n.cmd("CLUSTER", "INFO")
            print("redis cluster: " + " ".join(
                line for line in info.split("\r\n")
                if line.split(":")[0] in ("cluster_state", "cluster_slots_ok", "cluster_known_nodes",
                                          "cluster_size", "cluster_current_epoch")))
            for r in n.cmd("CLUSTER", "SLOTS"):
                print("  slots %5d-%-5d master %s replicas %s" % (
                    r[0], r[1], r[2][1], ",".join(str(x[1]) for x in r[3:]) or "none"))
        except (OSError, RuntimeError) as e:
            print("redis cluster: %s" % e)
    nats_nodes = [p for p in st["procs"] if p["kind"] == "nats" and alive(p)]
    for p in nats_nodes[:1]:
        n = harness.NatsServer.__new__(harness.NatsServer)
        n.port = p["port"]
        try:
            info = n.stream_info()
            if "error" in info:
                print("stream ORDERS: %s" % info["error"].get("description"))
            else:
                c = info.get("cluster") or {}
                print("stream ORDERS: %d messages, leader %s, replicas %s" % (
                    info["state"]["messages"], c.get("leader"),
                    ",".join("%s%s" % (r["name"], "" if r.get("current") else "(behind)")
                             for r in c.get("replicas", [])) or "none"))
        except (OSError, ValueError) as e:
            print("stream ORDERS: %s" % e)
    for url in st.get("admin_urls", []) + ([st["url"]] if st.get("url") else []):
        import urllib.request
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=3) as r:
                print("%s/healthz %d" % (url, r.status))
        except OSError as e:
            print("%s/healthz %s" % (url, e))
    sys.exit(1 if down_n else 0)


def env(args):
    d = os.path.abspath(args.dir)
    st = load(d)
    if st is None or not st.get("url"):
        sys.exit("cluster.py: no cluster up in %s" % d)
    redis_port = next(p["port"] for p in st["procs"] if p["kind"] == "redis" and alive(p))
    print("CLUSTER_URL=%s" % st["url"])
    print("CLUSTER_ADMIN_URL=%s" % st["admin_urls"][0])
    print("CLUSTER_TOKEN_FILE=%s" % st["token_file"])
    print("CLUSTER_DB=%s" % st["db"])
    print("CLUSTER_REDIS_PORT=%d" % redis_port)
    print("CLUSTER_SEEDS=%s" % st["seeds"])
    print("CLUSTER_NATS=%s" % st["nats"])


def events(args):
    """One event name per master (prefix + a number): names whose {tag} hashes to each master's
    slots, to spread a benchmark's events over the shards."""
    d = os.path.abspath(args.dir)
    st = load(d)
    node = next(p for p in st["procs"] if p["kind"] == "redis" and alive(p))
    n = harness.RedisServer.__new__(harness.RedisServer)
    n.port, n.auth = node["port"], ()
    ranges = [(r[0], r[1], r[2][1]) for r in n.cmd("CLUSTER", "SLOTS")]
    found, i = {}, 0
    while len({p for _, _, p in ranges}) > len(found):
        name = "%s%d" % (args.prefix, i)
        slot = harness.redis_key_slot("{%s}" % name)
        port = next(p for a, b, p in ranges if a <= slot <= b)
        found.setdefault(port, name)
        i += 1
    print(" ".join(found[p] for p in sorted(found)))


def main():
    ap = argparse.ArgumentParser(prog="cluster.sh")
    ap.add_argument("cmd", choices=["up", "down", "status", "env", "events"])
    ap.add_argument("--prefix", default="ev", help="events: name prefix")
    ap.add_argument("--dir", default=os.environ.get("SNATCH_CLUSTER_DIR", "/tmp/snatch-cluster"))
    ap.add_argument("--port", type=int, default=None, help="nginx's port (default: a free one)")
    ap.add_argument("--threads", type=int, default=1, help="loop threads per host (default 1)")
    ap.add_argument("--redis-replicas-per-master", type=int, default=1, metavar="N",
                    help="up: Redis replicas of each of the 3 masters, 1..5 (default 1)")
    args = ap.parse_args()
    if not 1 <= args.redis_replicas_per_master <= 5:
        ap.error("--redis-replicas-per-master: 1..5 (min-replicas-to-write 1 needs one)")
    {"up": up, "down": down, "status": status, "env": env, "events": events}[args.cmd](args)


if __name__ == "__main__":
    main()
