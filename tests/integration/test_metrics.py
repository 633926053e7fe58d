"""Metrics and operators' files: /metrics of snatch-host and snatch-subscriber pass
`promtool check metrics` while a burst runs and after it (every family with HELP and TYPE, its
lines together), the counters agree with what happened, and the example Prometheus
configuration, alert rules and Grafana dashboard are valid and name only metrics that a live
host or subscriber exposes."""
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import (SOURCE_DIR, Stack, Subscriber, Suite, TempDir, bench,  # noqa: E402
                     free_port, wait_until)

suite = Suite()
PROMTOOL = shutil.which("promtool")
EXAMPLES = os.path.join(SOURCE_DIR, "examples", "prometheus")
HIST_SUFFIXES = ("_bucket", "_sum", "_count")


def scrape(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        body = r.read().decode()
        assert r.status == 200, (r.status, body)
        assert r.getheader("Content-Type", "").startswith("text/plain"), r.getheaders()
        return body
    finally:
        conn.close()


def try_scrape(port):
    try:
        return scrape(port)
    except OSError:
        return ""


def promtool_metrics(text, what):
    p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), (
        "%s: promtool check metrics: %s%s\n%s" % (what, p.stdout, p.stderr, text))


def families(text):
    """Checks the layout promtool does not: HELP then TYPE before a family's samples, and each
    family's samples in one run. Returns {family: type} and {sample name: [(labels, value)]}."""
    types, samples, done = {}, {}, set()
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert name not in done and name not in types, "family %s declared twice" % name
            current = ("help", name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split()
            assert current == ("help", name), "TYPE %s without HELP right before" % name
            if types:
                done.add(list(types)[-1])
            types[name] = typ
            current = name
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", line)
        assert m, "bad line %r" % line
        name = m.group(1)
        fam = name
        for suf in HIST_SUFFIXES:
            if name.endswith(suf) and types.get(name[:-len(suf)]) == "histogram":
                fam = name[:-len(suf)]
        assert fam == current, "sample %s outside its family's block (in %s)" % (name, current)
        samples.setdefault(name, []).append((m.group(2) or "", float(m.group(3))))
    return types, samples


def value(samples, name, labels=""):
    for lab, v in samples.get(name, []):
        if all(part in lab for part in labels.split(",") if part):
            return v
    raise AssertionError("no sample %s{%s}" % (name, labels))


@suite.case
def metrics_valid_under_load_and_counting():
    assert PROMTOOL, "promtool not found (Debian package prometheus; scripts/setup.sh installs it)"
    mport = free_port()
    with Stack(hosts=1, threads=2, host_extra=("--reconcile-interval-ms", "200"),
               sub_extra=("--metrics-listen", "127.0.0.1:%d" % mport)) as st:
        S = 300
        st.host.create_event("mx", S)
        wait_until(lambda: "snatch_subscriber" in try_scrape(mport), 15,
                   what="subscriber /metrics")
        url = "http://%s/v1/events/mx/snatch" % st.host.base
        result = {}
        t = threading.Thread(target=lambda: result.setdefault(
            "r", bench(url, "-m", "POST", "-c", "16", "-t", "1", "-d", "3", "--rate", "4000",
                       timeout=60)))
        t.start()
        scrapes = 0
        while t.is_alive():
            promtool_metrics(scrape(st.host.port), "host during load")
            promtool_metrics(scrape(mport), "subscriber during load")
            scrapes += 1
            time.sleep(0.2)
        t.join()
        code, res, out = result["r"]
        assert code == 0 and res is not None, out
        assert scrapes >= 3, scrapes
        sold = res["status"].get("200", 0)
        assert sold == S, res["status"]
        wait_until(lambda: st.sub.rows("mx") >= S, 30, what="subscriber catch-up")
        # The subscriber asks the server for its lag about once a second.
        wait_until(lambda: "snatch_subscriber_lag_messages 0\n" in scrape(mport), 15,
                   what="subscriber lag 0")

        htext = scrape(st.host.port)
        promtool_metrics(htext, "host after load")
        htypes, hs = families(htext)
        stext = scrape(mport)
        promtool_metrics(stext, "subscriber after load")
        stypes, ss = families(stext)

        answered = sum(res["status"].values())
        assert value(hs, "snatch_snatch_outcomes_total", 'outcome="sold"') == S
        snatch_reqs = sum(v for lab, v in hs["snatch_http_requests_total"] if 'route="snatch"' in lab)
        assert snatch_reqs == answered, (snatch_reqs, answered)
        assert value(hs, "snatch_http_request_duration_seconds_count", 'route="snatch"') == answered
        assert value(hs, "snatch_http_request_duration_seconds_bucket",
                     'route="snatch",le="+Inf"') == answered
        assert value(hs, "snatch_http_request_duration_seconds_sum", 'route="snatch"') > 0
        assert htypes["snatch_http_request_duration_seconds"] == "histogram"
        assert value(hs, "snatch_jetstream_ack_duration_seconds_count") == S
        assert htypes["snatch_jetstream_ack_duration_seconds"] == "histogram"
        assert value(hs, "snatch_reconciler_passes_total", 'result="ok"') >= 1
        assert value(hs, "snatch_reconciler_pending_orders") == 0
        assert value(hs, "snatch_local_stock_left", 'event="mx"') == 0
        assert value(hs, "snatch_event_sold_out", 'event="mx"') == 1
        assert 'version="' in hs["snatch_build_info"][0][0]

        assert value(ss, "snatch_subscriber_rows_persisted_total") == S
        batches = value(ss, "snatch_subscriber_batch_size_messages_count")
        # Messages, not orders: the orders of one host loop turn share a message.
        msgs = value(ss, "snatch_subscriber_batch_size_messages_sum")
        assert batches >= 1 and batches <= msgs <= S, (batches, msgs, S)
        assert value(ss, "snatch_subscriber_commit_duration_seconds_count") == batches
        assert stypes["snatch_subscriber_commit_duration_seconds"] == "histogram"
        assert value(ss, "snatch_subscriber_dead_letters_total") == 0
        assert 'program="snatch-subscriber"' in ss["snatch_build_info"][0][0]
        # Anything but GET /metrics is a 404; a silent client or an endless head only holds the
        # responder for its read timeout.
        conn = http.client.HTTPConnection("127.0.0.1", mport, timeout=10)
        conn.request("GET", "/nope")
        assert conn.getresponse().status == 404
        conn.close()
        with socket.create_connection(("127.0.0.1", mport), timeout=10) as silent, \
                socket.create_connection(("127.0.0.1", mport), timeout=10) as flood:
            try:
                flood.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 100000)
            except OSError:
                pass  # the responder stopped reading and closed: what we want
            assert "snatch_subscriber_rows_persisted_total" in scrape(mport)
            silent.sendall(b"")
        with open(os.path.join(st.tmp.path, "scrape-names.json"), "w") as f:
            json.dump(sorted(set(hs) | set(ss)), f)
        check_examples(set(hs) | set(ss))


@suite.case
def subscriber_metrics_served_while_waiting_for_nats():
    """Before NATS answers, /metrics is up (no lag sample yet); a second subscriber asking for
    the same metrics port fails at start."""
    tmp = TempDir()
    mport = free_port()
    dead_nats = "nats://127.0.0.1:%d" % free_port()
    extra = ("--metrics-listen", "127.0.0.1:%d" % mport)
    a = Subscriber(tmp.path, dead_nats, extra=extra)
    b = Subscriber(tmp.path, dead_nats, db_path=os.path.join(tmp.path, "b.db"), extra=extra)
    try:
        a.start()
        wait_until(lambda: "snatch_build_info" in try_scrape(mport), 15, what="metrics up")
        text = scrape(mport)
        promtool_metrics(text, "subscriber waiting for NATS")
        _, samples = families(text)
        assert "snatch_subscriber_lag_messages" not in samples, samples
        b.start()
        rc = b.proc.p.wait(15)
        assert rc == 1 and "cannot listen" in b.proc.log_text(), (rc, b.proc.log_text())
        assert a.proc.alive()
    finally:
        b.stop()
        a.stop()
        tmp.cleanup()


def promql_names(expr):
    return set(re.findall(r"\bsnatch_[a-z0-9_]+\b", expr))


def check_examples(live):
    """The example files against a live scrape's sample names."""
    for args in (["check", "config", os.path.join(EXAMPLES, "prometheus.yml")],
                 ["check", "rules", os.path.join(EXAMPLES, "alerts.yml")]):
        p = subprocess.run([PROMTOOL] + args, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    used = {}
    with open(os.path.join(EXAMPLES, "alerts.yml")) as f:
        # The rule file is YAML; an expression is either inline after "expr:" or a block below it.
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("expr:"):
            block = [line.split("expr:", 1)[1]]
            indent = len(line) - len(line.lstrip())
            for nxt in lines[i + 1:]:
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                    break
                block.append(nxt)
            for n in promql_names(" ".join(block)):
                used.setdefault(n, "alerts.yml")
    with open(os.path.join(EXAMPLES, "grafana-dashboard.json")) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs, "dashboard without queries"
    for e in exprs:
        for n in promql_names(e):
            used.setdefault(n, "grafana-dashboard.json")
    assert len(used) >= 15, sorted(used)
    missing = sorted("%s (%s)" % (n, where) for n, where in used.items() if n not in live)
    assert not missing, "not in any live scrape: %s" % ", ".join(missing)


@suite.case
def examples_catch_a_wrong_metric_name():
    """The name check is not vacuous: a name absent from the scrape is reported."""
    try:
        check_examples({"snatch_build_info"})
    except AssertionError as e:
        assert "not in any live scrape" in str(e), e
        return
    raise AssertionError("check_examples accepted names missing from the scrape")


if __name__ == "__main__":
    suite.run()
