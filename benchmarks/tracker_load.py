"""Tracker request throughput: many concurrent connections against a real ``mbt-tracker``.

Each connection logs in once (scrypt makes logins deliberately slow; their
rate is reported separately), then runs a closed loop of ``list_files`` and
``get_peers`` requests for a fixed time. Reports requests/s and latency
percentiles. Run alone: ``python benchmarks/tracker_load.py --connections 50``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mbt.driver import Process, bin_path, free_port, wait_port  # noqa: E402

MANIFEST = {"name": "f.bin", "size": 1, "piece_size": 524288, "file_hash": "0" * 64, "piece_hashes": ["1" * 64]}


def run(work: str, connections: int = 50, seconds: float = 5.0, users: int = 10) -> dict:
    """Start a tracker, load it from this process (Twisted client), stop it; return figures."""
    port = free_port()
    info = os.path.join(work, "tracker_info.txt")
    with open(info, "w") as f:
        f.write("127.0.0.1:%d\n" % port)
    tracker = Process([bin_path("mbt-tracker"), info, "1", "--state-dir", os.path.join(work, "state")],
                      log=os.path.join(work, "tracker.log"))
    try:
        wait_port(port, 20, tracker.proc)
        return _load(port, connections, seconds, users)
    finally:
        tracker.stop(10)


def _load(port: int, connections: int, seconds: float, users: int) -> dict:
    from twisted.internet import defer, endpoints, reactor, task
    from mbt.protocols.tracker import TrackerClientProtocol

    latencies = []
    counts = {"requests": 0, "errors": 0, "logins": 0, "login_seconds": 0.0}
    result = {}

    @defer.inlineCallbacks
    def connect():
        ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        p = yield endpoints.connectProtocol(ep, TrackerClientProtocol())
        return p

    @defer.inlineCallbacks
    def worker(i, stop_at):
        p = yield connect()
        user = "u%d" % (i % users)
        t0 = time.perf_counter()
        yield p.request("login", user=user, password="pw", address="127.0.0.1:%d" % (20000 + i))
        counts["login_seconds"] += time.perf_counter() - t0
        counts["logins"] += 1
        yield barrier
        n = 0
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            try:
                if n % 2:
                    yield p.request("get_peers", group="g", name="f.bin")
                else:
                    yield p.request("list_files", group="g")
            except Exception:
                counts["errors"] += 1
            latencies.append(time.perf_counter() - t0)
            counts["requests"] += 1
            n += 1
        p.transport.loseConnection()

    barrier = defer.Deferred()

    @defer.inlineCallbacks
    def main():
        try:
            setup = yield connect()
            for u in range(users):
                yield setup.request("create_user", user="u%d" % u, password="pw")
            yield setup.request("login", user="u0", password="pw", address="127.0.0.1:19999")
            yield setup.request("create_group", group="g")
            for u in range(1, users):
                c = yield connect()
                yield c.request("login", user="u%d" % u, password="pw", address="127.0.0.1:19998")
                yield c.request("join_group", group="g")
                yield setup.request("accept_request", group="g", user="u%d" % u)
                c.transport.loseConnection()
            yield setup.request("share_file", group="g", manifest=MANIFEST)
            stop_at = [0.0]
            t_login = time.perf_counter()
            ds = [worker(i, stop_at) for i in range(connections)]
            # Everyone logged in: start the clock for the request loop.
            while counts["logins"] < connections:
                yield task.deferLater(reactor, 0.01, lambda: None)
            result["login_rps"] = connections / (time.perf_counter() - t_login)
            t0 = time.perf_counter()
            stop_at[0] = t0 + seconds
            barrier.callback(None)
            yield defer.DeferredList(ds)
            elapsed = time.perf_counter() - t0
            lat = sorted(latencies)
            result.update({
                "connections": connections, "seconds": elapsed, "requests": counts["requests"],
                "errors": counts["errors"], "rps": counts["requests"] / elapsed,
                "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[int(len(lat) * 0.99)],
            })
            setup.transport.loseConnection()
        except Exception as e:
            result["error"] = repr(e)
        finally:
            reactor.stop()

    reactor.callWhenRunning(main)
    reactor.run()
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


if __name__ == "__main__":
    import tempfile
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args()
    r = run(tempfile.mkdtemp(prefix="mbt-tracker-load-"), a.connections, a.seconds)
    print("%d connections: %.0f requests/s (list_files + get_peers), p50 %.2f ms, p99 %.2f ms, "
          "%d errors; logins %.0f/s" % (r["connections"], r["rps"], r["p50_ms"], r["p99_ms"], r["errors"],
                                        r["login_rps"]))
