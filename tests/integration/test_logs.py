"""Log lines of snatch-host, snatch-subscriber and snatch-reconcile: every line carries an
RFC 3339 UTC time with milliseconds, the program and a level; --log-format json writes one JSON
object per line (ts, level, program, msg)."""
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import Stack, Suite, binary, free_port, wait_until  # noqa: E402

suite = Suite()
TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
LEVELS = ("debug", "info", "warn", "error")


def log_lines(proc):
    # Sanitizer reports are not ours (and fail the suite elsewhere): only our lines count.
    return [l for l in proc.log_text().splitlines() if l.strip()]


def check_text(lines, program):
    assert lines, "no log lines from %s" % program
    for l in lines:
        assert re.match(r"^%s %s (%s) \S" % (TS, program, "|".join(LEVELS)), l), l


def check_json(lines, program):
    assert lines, "no log lines from %s" % program
    docs = []
    for l in lines:
        d = json.loads(l)
        assert set(d) == {"ts", "level", "program", "msg"}, d
        assert re.match("^%s$" % TS, d["ts"]) and d["level"] in LEVELS, d
        assert d["program"] == program, d
        docs.append(d)
    return docs


@suite.case
def text_lines_by_default():
    with Stack(hosts=1, threads=2) as st:
        st.host.create_event("lg", 5)
        assert st.host.snatch("lg", "u1")[0] == 200
        wait_until(lambda: st.sub.rows("lg") == 1, 30, what="subscriber persisted the order")
        st.host.stop()
        st.sub.stop()
        host = log_lines(st.host.proc)
        check_text(host, "snatch-host")
        assert any(re.search(r" info redis: connected to ", l) for l in host), host
        assert any(re.search(r" info SIGTERM: stopping", l) for l in host), host
        check_text(log_lines(st.sub.proc), "snatch-subscriber")


@suite.case
def json_lines_with_flag():
    with Stack(hosts=1, threads=2, host_extra=("--log-format", "json"),
               sub_extra=("--log-format", "json")) as st:
        st.host.create_event("lg", 5)
        assert st.host.snatch("lg", "u1")[0] == 200
        wait_until(lambda: st.sub.rows("lg") == 1, 30, what="subscriber persisted the order")
        st.host.stop()
        st.sub.stop()
        docs = check_json(log_lines(st.host.proc), "snatch-host")
        assert any(d["msg"].startswith("redis: connected to ") and d["level"] == "info"
                   for d in docs), docs
        docs = check_json(log_lines(st.sub.proc), "snatch-subscriber")
        assert any(d["msg"].startswith("subscriber: stopped, persisted 1") for d in docs), docs
        # snatch-reconcile: its table stays on stdout, its log lines go to stderr.
        p = subprocess.run([binary("snatch-reconcile"), "--log-format", "json", "--redis",
                            "127.0.0.1:%d" % st.redis.port, "--db", st.sub.db, "--nats",
                            "nats://127.0.0.1:%d" % free_port()],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 3, (p.returncode, p.stdout, p.stderr)
        docs = check_json(p.stderr.splitlines(), "snatch-reconcile")
        assert any(d["level"] == "error" and "NATS" in d["msg"] for d in docs), docs


@suite.case
def bad_log_format_is_a_usage_error():
    for prog, args in (("snatch-host", ["x.lua"]), ("snatch-subscriber", ["--nats", "n", "--db", "d"]),
                       ("snatch-reconcile", ["--redis", "127.0.0.1:1", "--db", "d"])):
        p = subprocess.run([binary(prog), "--log-format", "xml"] + args, capture_output=True,
                           text=True, timeout=30)
        assert p.returncode == 2 and "--log-format must be text or json" in p.stderr, (prog, p)


if __name__ == "__main__":
    suite.run()
