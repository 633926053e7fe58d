"""examples/access_code.lua and examples/vip_early_access.lua end to end, against real
redis-server and nats-server: codes are signed here as the registration / VIP system would
(Python's hmac), sent in headers through the host, and every refusal is checked to have
reached nothing in Redis (no deduction ran, no buyer counted)."""
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import SOURCE_DIR, Stack, Suite, wait_until  # noqa: E402

suite = Suite()
DEDUCT = ("--deduct", os.path.join(SOURCE_DIR, "lua", "deduct.lua"))


def example(name, **settings):
    """The example's text with `local NAME = value` settings replaced; returns (path, text)."""
    with open(os.path.join(SOURCE_DIR, "examples", name)) as f:
        text = f.read()
    for key, value in settings.items():
        text, n = re.subn(r"^local %s = [^\n]*$" % key, "local %s = %s" % (key, value), text,
                          flags=re.M)
        assert n == 1, key
    d = tempfile.mkdtemp(prefix="snatch-example-")
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    return path, text


def secret_of(text, pattern):
    return re.search(pattern, text).group(1).encode()


def sign(secret, signed):
    return hmac.new(secret, signed.encode(), hashlib.sha256).hexdigest()


def now_ms():
    return int(time.time() * 1000)


def deductions(st):
    """Runs of deduct.lua so far (EVALSHA, or EVAL after a NOSCRIPT)."""
    info = st.redis.cmd("INFO", "commandstats")
    calls = 0
    for name in ("evalsha", "eval"):
        m = re.search(r"cmdstat_%s:calls=(\d+)" % name, info)
        calls += int(m.group(1)) if m else 0
    return calls


def buy(h, event, user, headers):
    return h.request("POST", "/v1/events/%s/snatch" % event,
                     headers=dict({"X-User-Id": user}, **headers))


def buy_raw(h, event, headers):
    """A snatch with header lines as given (the same name twice, say)."""
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=10)
    try:
        conn.putrequest("POST", "/v1/events/%s/snatch" % event)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


@suite.case
def access_code_gates_the_sale_before_redis():
    path, text = example("access_code.lua")
    secret = secret_of(text, r"local SECRETS = \{ '([^']+)' \}")
    try:
        with Stack(hosts=1, threads=2, policy=path, host_extra=DEDUCT) as st:
            h = st.host
            h.create_event("gala", 10)
            h.create_event("other", 10)
            exp = now_ms() + 600000

            def code(event, user, expires=exp, key=secret):
                return "%d.%s" % (expires, sign(key, "%s|%s|%d" % (event, user, expires)))

            before = deductions(st)
            refused = [
                ({}, "access_code_required"),
                ({"X-Access-Code": code("other", "ann")}, "access_code_invalid"),
                ({"X-Access-Code": code("gala", "bob")}, "access_code_invalid"),
                ({"X-Access-Code": code("gala", "ann", key=b"another secret")},
                 "access_code_invalid"),
                ({"X-Access-Code": "%d.%s" % (exp + 1, code("gala", "ann").split(".")[1])},
                 "access_code_invalid"),
                ({"X-Access-Code": code("gala", "ann", expires=now_ms() - 1000)},
                 "access_code_expired"),
                ({"X-Access-Code": "not-a-code"}, "access_code_invalid"),
                ({"X-Access-Code": code("gala", "ann") + "0" * 100}, "access_code_invalid"),
                ({"X-Access-Code": code("gala", "ann")[:-1]}, "access_code_invalid"),
            ]
            for i, (headers, why) in enumerate(refused):
                s, b = buy(h, "gala", "ann", headers)
                assert (s, b.get("error")) == (403, why), (i, headers, s, b)
            # Two lines of the header are joined ("a, b"), which is no code.
            s, b = buy_raw(h, "gala", [("X-User-Id", "ann"), ("X-Access-Code", code("gala", "ann")),
                                       ("X-Access-Code", code("gala", "ann"))])
            assert (s, b.get("error")) == (403, "access_code_invalid"), (s, b)
            assert deductions(st) == before, "a refused buyer reached deduct.lua"
            assert st.redis.cmd("HLEN", "{gala}:users") == 0
            # The right code, header name in any case: sold, persisted. (A fresh buyer: ann's
            # refused tries spent her rate-limit bucket, as a guesser's would.)
            s, b = buy(h, "gala", "dee", {"x-access-code": code("gala", "dee")})
            assert s == 200, (s, b)
            s, b = buy(h, "gala", "cy", {"X-ACCESS-CODE": code("gala", "cy").upper()})
            assert s == 200, (s, b)
            assert deductions(st) > before
            wait_until(lambda: st.sub.rows("gala") == 2, 20, what="rows")
            assert {r[0] for r in st.sub.query("SELECT user FROM orders")} == {"dee", "cy"}
    finally:
        shutil.rmtree(os.path.dirname(path))


@suite.case
def vip_codes_buy_from_opens_at_minus_lead():
    hour = 3600 * 1000
    # The VIP window is now: the sale opens in an hour, VIPs may buy from an hour ago.
    path, text = example("vip_early_access.lua", OPENS_AT_MS=str(now_ms() + hour),
                         VIP_LEAD_MS=str(2 * hour))
    secret = secret_of(text, r"local SECRET = '([^']+)'")
    exp = now_ms() + 600000

    def vip(event, user, expires=exp, prefix="vip|"):
        return "%d.%s" % (expires, sign(secret, "%s%s|%s|%d" % (prefix, event, user, expires)))

    try:
        with Stack(hosts=1, threads=2, policy=path, host_extra=DEDUCT) as st:
            h = st.host
            h.create_event("fanclub", 10)
            before = deductions(st)
            s, b = buy(h, "fanclub", "pat", {})
            assert (s, b.get("error")) == (409, "not_started"), (s, b)
            assert "for VIP codes at" in b["detail"], b
            for headers in ({"X-VIP-Code": vip("fanclub", "sam")},
                            {"X-VIP-Code": vip("fanclub", "pat", prefix="")},
                            {"X-VIP-Code": vip("fanclub", "pat", expires=now_ms() - 1)},
                            {"X-VIP-Code": vip("elsewhere", "pat")},
                            {"X-VIP-Code": "garbage"}):
                s, b = buy(h, "fanclub", "pat", headers)
                assert (s, b.get("error")) == (403, "vip_code_invalid"), (headers, s, b)
            assert deductions(st) == before, "a refused buyer reached deduct.lua"
            s, b = buy(h, "fanclub", "pat", {"X-VIP-Code": vip("fanclub", "pat")})
            assert s == 200, (s, b)
            wait_until(lambda: st.sub.rows("fanclub") == 1, 20, what="row")
    finally:
        shutil.rmtree(os.path.dirname(path))
    # Before the VIP window even a VIP waits; after the opening nobody needs a code.
    path, text = example("vip_early_access.lua", OPENS_AT_MS=str(now_ms() + 3 * hour),
                         VIP_LEAD_MS=str(hour))
    try:
        with Stack(hosts=1, threads=1, policy=path, host_extra=DEDUCT, subscriber=False) as st:
            h = st.host
            h.create_event("fanclub", 10)
            s, b = buy(h, "fanclub", "pat", {"X-VIP-Code": vip("fanclub", "pat")})
            assert (s, b.get("error")) == (409, "not_started"), (s, b)
            assert st.redis.cmd("HLEN", "{fanclub}:users") == 0
    finally:
        shutil.rmtree(os.path.dirname(path))
    path, text = example("vip_early_access.lua", OPENS_AT_MS=str(now_ms() - 1000))
    try:
        with Stack(hosts=1, threads=1, policy=path, host_extra=DEDUCT, subscriber=False) as st:
            h = st.host
            h.create_event("fanclub", 10)
            assert buy(h, "fanclub", "pat", {})[0] == 200
            assert buy(h, "fanclub", "sam", {"X-VIP-Code": "ignored after the opening"})[0] == 200
    finally:
        shutil.rmtree(os.path.dirname(path))


if __name__ == "__main__":
    suite.run()
