"""What an operator meets before any sale: every program's --version (the one version of
CMakeLists.txt), -h/--help, one-line usage errors; snatch-reconcile refusing a --db that does not
exist; the retention of stream ORDERS set by flags (real nats-server, stream info read back)."""
import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (SANITIZER_MARKERS, SOURCE_DIR, Host, NatsServer, RedisServer,  # noqa: E402
                     TempDir, binary, wait_until)

PROGRAMS = ("snatch-host", "snatch-subscriber", "snatch-reconcile", "snatch-bench")
DAY_MS = 24 * 3600 * 1000


def project_version():
    with open(os.path.join(SOURCE_DIR, "CMakeLists.txt")) as f:
        return re.search(r"project\(snatch VERSION ([0-9.]+)", f.read()).group(1)


def run(*argv, timeout=30):
    p = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


class CliTest(unittest.TestCase):
    def test_version_everywhere(self):
        v = project_version()
        for prog in PROGRAMS:
            rc, out, err = run(binary(prog), "--version")
            self.assertEqual((rc, out, err), (0, "%s %s\n" % (prog, v), ""), prog)

    def test_help_everywhere(self):
        for prog in PROGRAMS:
            for flag in ("-h", "--help"):
                rc, out, err = run(binary(prog), flag)
                self.assertEqual(rc, 0, prog)
                self.assertTrue(out.startswith("usage: " + prog), (prog, flag, out[:80]))
                self.assertIn("--version", out, prog)
                self.assertEqual(err, "", prog)

    def test_usage_error_is_one_line(self):
        for prog in PROGRAMS:
            rc, out, err = run(binary(prog), "--foo")
            self.assertEqual(rc, 2, prog)
            self.assertEqual(out, "", prog)
            self.assertEqual(err, "%s: unknown option --foo (see --help)\n" % prog)
            # A flag that wants a value, given none (each program has --db or --listen).
            flag = {"snatch-host": "--listen", "snatch-bench": "--db"}.get(prog, "--db")
            rc, out, err = run(binary(prog), flag)
            self.assertEqual(rc, 2, prog)
            self.assertEqual(err, "%s: option %s needs a value (see --help)\n" % (prog, flag))
        rc, _, err = run(binary("snatch-host"))
        self.assertEqual((rc, err), (2, "snatch-host: missing POLICY.lua (see --help)\n"))
        rc, _, err = run(binary("snatch-subscriber"), "--db", "x.db")
        self.assertEqual((rc, err), (2, "snatch-subscriber: missing --nats (see --help)\n"))

    def test_malformed_integer_is_usage_error(self):
        # Trailing text, a sign, a space, and 19 digits past INT64_MAX: atoi/strtol let some of
        # these through; each program's integer flags now refuse them all in one line.
        cases = (("snatch-host", "--threads", "2x", 32),
                 ("snatch-host", "--max-inflight", "+5", 1000000),
                 ("snatch-subscriber", "--batch", "5x", 100000),
                 ("snatch-subscriber", "--batch", " 5", 100000),
                 ("snatch-reconcile", "--wait", "5x", 2147483647),
                 ("snatch-reconcile", "--wait", "-1", 2147483647),
                 ("snatch-reconcile", "--pending", "9999999999999999999", 9223372036854775807))
        low = {"--threads": 1, "--max-inflight": 1, "--batch": 1, "--wait": 0, "--pending": 0}
        for prog, flag, bad, high in cases:
            rc, out, err = run(binary(prog), flag, bad)
            self.assertEqual((rc, out), (2, ""), (prog, flag, bad))
            self.assertEqual(err, "%s: %s must be an integer from %d to %d (see --help)\n"
                             % (prog, flag, low[flag], high), (prog, flag, bad))
            for marker in SANITIZER_MARKERS:
                self.assertNotIn(marker, err)

    def test_retention_flags_checked(self):
        for prog in ("snatch-host", "snatch-reconcile"):
            for flag, bad in (("--orders-max-age-ms", "1000"), ("--orders-max-bytes", "-1"),
                              ("--orders-max-bytes", "12x")):
                rc, _, err = run(binary(prog), flag, bad, "--redis", "127.0.0.1:1", "x")
                self.assertEqual(rc, 2, (prog, flag, bad))
                self.assertEqual(len(err.splitlines()), 1, err)
                self.assertIn(flag, err)


class ReconcileDbTest(unittest.TestCase):
    def test_missing_db_refused_and_not_created(self):
        tmp = TempDir()
        try:
            db = os.path.join(tmp.path, "typo.db")
            # No server needed: the file is checked before anything is contacted.
            rc, out, err = run(binary("snatch-reconcile"), "--redis", "127.0.0.1:1", "--nats",
                               "nats://127.0.0.1:1", "--db", db)
            self.assertEqual(rc, 2, err)
            self.assertIn(db, err)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertFalse(os.path.exists(db), "reconcile created the database")
            rc, _, err = run(binary("snatch-reconcile"), "--redis", "127.0.0.1:1", "--dry-run",
                             "--db", tmp.path)
            self.assertEqual(rc, 2, err)
            self.assertIn("not a regular file", err)
        finally:
            tmp.cleanup()


class RetentionTest(unittest.TestCase):
    def setUp(self):
        self.tmp = TempDir()
        self.redis = RedisServer(self.tmp.path).start()
        self.nats = NatsServer(self.tmp.path).start()
        self.hosts = []

    def tearDown(self):
        for h in self.hosts:
            h.stop()
        logs = [h.proc.log_text() for h in self.hosts]
        self.nats.stop()
        self.redis.stop()
        self.tmp.cleanup()
        reports = [t for t in logs if any(m in t for m in SANITIZER_MARKERS)]
        self.assertEqual(reports, [], "sanitizer report")

    def host(self, host_id, *extra):
        h = Host(self.tmp.path, self.redis.port, self.nats.url, host_id=host_id, threads=1,
                 extra=extra)
        self.hosts.append(h)
        return h.start()

    def stream_config(self):
        info = wait_until(lambda: (lambda i: i if "config" in i else None)(
            self.nats.stream_info()), 15, what="stream ORDERS")
        return info["config"]

    def test_host_creates_stream_with_flags(self):
        self.host("h1", "--orders-max-age-ms", str(DAY_MS), "--orders-max-bytes", "10485760")
        cfg = self.stream_config()
        self.assertEqual(cfg["max_age"], DAY_MS * 1000000)
        self.assertEqual(cfg["max_bytes"], 10485760)
        self.assertEqual(cfg["duplicate_window"], 120 * 1000 * 1000000)
        # A second host asking for other limits leaves the stream alone and says so.
        h2 = self.host("h2", "--orders-max-age-ms", "0")
        wait_until(lambda: "left as it is" in h2.proc.log_text(), 15, what="retention warning")
        self.assertEqual(self.stream_config()["max_age"], DAY_MS * 1000000)
        self.assertNotIn("left as it is", self.hosts[0].proc.log_text())

    def test_defaults_via_reconcile(self):
        # snatch-reconcile may run before any host and create the stream: same defaults.
        db = os.path.join(self.tmp.path, "orders.db")
        open(db, "wb").close()
        rc, out, err = run(binary("snatch-reconcile"), "--redis",
                           "127.0.0.1:%d" % self.redis.port, "--nats", self.nats.url, "--db", db,
                           "--event", "nothing-here")
        cfg = self.nats.stream_info().get("config")
        self.assertIsNotNone(cfg, "no stream after snatch-reconcile (rc %d: %s)" % (rc, err))
        self.assertEqual(cfg["max_age"], 7 * DAY_MS * 1000000)
        self.assertEqual(cfg["max_bytes"], 2 << 30)


if __name__ == "__main__":
    unittest.main(verbosity=2)
