"""scripts/quickstart.sh, the README's by-hand recipe, run as a user would (on free ports): it
sells one ticket that lands in SQLite, stops exactly the processes it started (their PIDs are
in its temp dir, and all are gone afterwards), writes nothing into the checkout, and README.md
shows it verbatim."""
import os
import re
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BUILD_DIR, SANITIZER_MARKERS, SOURCE_DIR, free_port  # noqa: E402

SCRIPT = os.path.join(SOURCE_DIR, "scripts", "quickstart.sh")


def checkout_state():
    """Untracked or modified files of the checkout (git ignores build dirs), None without git."""
    p = subprocess.run(["git", "-C", SOURCE_DIR, "status", "--porcelain", "--ignored"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    if p.returncode != 0:
        return None
    return set(p.stdout.decode().splitlines())


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose; only a running process counts.
    with open("/proc/%d/stat" % pid) as f:
        return f.read().split(") ", 1)[1][0] != "Z"


class QuickstartTest(unittest.TestCase):
    def test_readme_shows_the_script(self):
        with open(SCRIPT) as f:
            body = f.read()
        with open(os.path.join(SOURCE_DIR, "README.md")) as f:
            readme = f.read()
        self.assertIn("```sh\n" + body + "```\n", readme)
        self.assertNotIn("pidof", readme)

    def test_runs_and_stops_what_it_started(self):
        before = checkout_state()
        env = dict(os.environ, BUILD=BUILD_DIR, REDIS_PORT=str(free_port()),
                   NATS_PORT=str(free_port()), HTTP_PORT=str(free_port()))
        p = subprocess.run(["bash", SCRIPT], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=120)
        out = p.stdout.decode()
        m = re.search(r"^quickstart: working in (\S+)$", out, re.M)
        self.assertIsNotNone(m, out)
        workdir = m.group(1)
        try:
            self.assertEqual(p.returncode, 0, out)
            order = re.search(r'"order_id":"([^"]+)"', out)
            self.assertIsNotNone(order, out)
            self.assertIn("orders.db: %s|alice|1" % order.group(1), out)
            self.assertIn("is valid", out)
            for name in ("host", "subscriber", "nats", "redis"):
                with open(os.path.join(workdir, name + ".pid")) as f:
                    pid = int(f.read())
                self.assertFalse(alive(pid), "%s (pid %d) still running" % (name, pid))
            # Redis ran with its append-only file in the temp dir.
            self.assertTrue(os.path.isdir(os.path.join(workdir, "appendonlydir")), out)
            with open(os.path.join(workdir, "host.log")) as f:
                # The last line of an orderly stop (log.h format: time, program, level, message).
                self.assertRegex(f.read(), r"(?m) snatch-host info stopped$")
            for log in ("host.log", "subscriber.log"):
                with open(os.path.join(workdir, log), errors="replace") as f:
                    text = f.read()
                self.assertFalse([m for m in SANITIZER_MARKERS if m in text], text[-3000:])
            if before is not None:
                self.assertEqual(checkout_state(), before, "the recipe wrote into the checkout")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
