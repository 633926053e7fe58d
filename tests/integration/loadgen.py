"""A small concurrent buyer crowd for tests (not a benchmark: snatch-bench is the load tool).
Keep-alive connections, one thread each; returns every answer so tests can check invariants."""
import http.client
import json
import threading
import time


def crowd(port, event, users, threads=16, qty=None, path_fmt=None, stop_at=None, stop=None):
    """Each user in `users` tries once, until time stop_at or until the threading.Event `stop`
    is set. Returns a list of (user, status, body dict or text)."""
    results = []
    lock = threading.Lock()
    chunks = [users[i::threads] for i in range(threads)]

    def worker(chunk):
        conn = None
        local = []
        for u in chunk:
            if stop_at is not None and time.time() > stop_at:
                break
            if stop is not None and stop.is_set():
                break
            path = (path_fmt or "/v1/events/{event}/snatch?user={user}").format(event=event, user=u)
            if qty is not None:
                path += "&qty=%d" % qty
            for attempt in range(3):
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
                    conn.request("POST", path)
                    r = conn.getresponse()
                    data = r.read().decode("utf-8", "replace")
                    try:
                        body = json.loads(data)
                    except ValueError:
                        body = data
                    local.append((u, r.status, body))
                    if r.getheader("Connection", "").lower() == "close":
                        conn.close()
                        conn = None
                    break
                except (OSError, http.client.HTTPException) as e:
                    if conn is not None:
                        conn.close()
                    conn = None
                    if attempt == 2:
                        local.append((u, -1, str(e)))
        if conn is not None:
            conn.close()
        with lock:
            results.extend(local)

    ts = [threading.Thread(target=worker, args=(c,)) for c in chunks if c]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results


def by_status(results):
    out = {}
    for _, st, _ in results:
        out[st] = out.get(st, 0) + 1
    return out
