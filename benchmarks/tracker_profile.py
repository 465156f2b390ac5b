"""CPU per tracker request, in-process and without the network: where a ``list_files`` goes.

The tracker's request path (``TrackerServerProtocol`` -> ``TrackerCore`` ->
``TrackerState`` -> JSON reply -> the per-request log line) runs on fake
transports (``StringTransport``), with 10,000 logged-in peers laid out as in
``tracker_scale.py`` (1,000 users in 10 groups, 20 files per group, every peer
sharing one file). Each operation is timed over ``--requests`` requests with
``time.process_time`` (CPU, so the other users of a shared machine matter much
less than in the load benchmarks), next to the same requests answered by the
ceiling's bare JSON-lines protocol. ``--cprofile N`` prints the top N functions
of a cProfile of the ``list_files`` run.

The log goes where ``mbt-tracker`` sends it, with the same observer
(``MBT_LOG_LEVEL`` respected), into a temporary file.

    python benchmarks/tracker_profile.py [--peers 10000] [--requests 20000] [--cprofile 25]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from twisted.internet import defer  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from tracker_scale import PASSWORD, Layout  # noqa: E402


def build(layout: Layout):
    """A tracker core over the layout's state, and one logged-in protocol per peer, sharing its file."""
    from mbt.protocols.tracker import TrackerServerFactory
    from mbt.tracker.service import TrackerCore
    from mbt.tracker.state import TrackerState
    from mbt.tracker.store import MemoryStore
    store = MemoryStore()
    for op in layout.ops():
        store.append(op)
    from twisted.internet import reactor       # never run: only its timer heap (task.Clock sorts per call)
    clock = reactor
    core = TrackerCore(TrackerState(), store, run_in_thread=lambda f, *a, **k: defer.maybeDeferred(f, *a, **k),
                       clock=clock)
    core.load()
    factory = TrackerServerFactory(core)
    protos = []
    for i in range(layout.peers):
        p = factory.buildProtocol(IPv4Address("TCP", "10.%d.%d.%d" % (i // 65536, i // 256 % 256, i % 256), 5000))
        t = StringTransport()
        p.makeConnection(t)
        u = layout.user_of_conn(i)
        g = layout.group_of_user(u)
        p.dataReceived(json.dumps({"id": 1, "op": "login", "user": "u%d" % u, "password": PASSWORD,
                                   "address": "10.0.0.1:%d" % (10000 + i)}).encode() + b"\n")
        p.dataReceived(json.dumps({"id": 2, "op": "share_file", "group": "g%d" % g,
                                   "manifest": layout.manifests[(g, layout.file_of_user(u))]}).encode() + b"\n")
        replies = t.value().splitlines()
        assert len(replies) == 2 and all(b'"ok"' in r for r in replies), replies
        t.clear()
        protos.append((p, t, g, u))
    return core, protos


def lines_for(layout: Layout, protos, op: str, n: int):
    out = []
    for k in range(n):
        p, t, g, u = protos[(k * 7919) % len(protos)]
        if op == "list_files":
            req = {"id": k, "op": op, "group": "g%d" % g}
        elif op == "get_peers":
            req = {"id": k, "op": op, "group": "g%d" % g, "name": layout.manifests[(g, k % layout.files)]["name"]}
        else:
            req = {"id": k, "op": op, "group": "g%d" % g, "manifest": layout.manifests[(g, layout.file_of_user(u))]}
        out.append((p, t, json.dumps(req, separators=(",", ":")).encode() + b"\n"))
    return out


def timed(work) -> float:
    """CPU seconds per request for ``work`` = [(protocol, transport, line)]."""
    t0 = time.process_time()
    for p, t, line in work:
        p.dataReceived(line)
        t.clear()
    return (time.process_time() - t0) / len(work)


def ceiling_protocols(replies_by_key, protos):
    """The ceiling's bare protocol (tracker_scale.serve_ceiling's), one per tracker protocol."""
    from twisted.protocols.basic import LineReceiver
    from mbt.protocols.jsonlines import encode

    class Bare(LineReceiver):
        delimiter = b"\n"
        MAX_LENGTH = 1 << 20

        def lineReceived(self, line: bytes) -> None:
            req = json.loads(line)
            op = req.get("op")
            if op == "get_peers":
                key = (op, req.get("group"), req.get("name"))
            elif op == "share_file":
                key = (op, req.get("group"), req["manifest"].get("name"))
            else:
                key = (op, req.get("group"))
            self.sendLine(encode({"id": req.get("id"), "ok": replies_by_key.get(key, {})}))
    out = {}
    for p, _t, _g, _u in protos:
        b = Bare()
        t = StringTransport()
        b.makeConnection(t)
        out[id(p)] = (b, t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, default=10000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--groups", type=int, default=10)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--file-mib", type=int, default=16)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--cprofile", type=int, default=0, help="print the top N functions of list_files' profile")
    a = ap.parse_args()
    if not (1 <= a.peers <= 100000 and 1 <= a.requests <= 200000):
        ap.error("--peers 1-100000, --requests 1-200000")
    log_path = os.path.join(tempfile.mkdtemp(prefix="mbt-tracker-profile-"), "tracker.log")
    from mbt.scripts import _start_logging
    _start_logging(log_path)
    layout = Layout(a.peers, a.users, a.groups, a.files, a.file_mib)
    t0 = time.monotonic()
    core, protos = build(layout)
    print("%d peers logged in and sharing in %.1f s (in-process, fake transports); log: %s"
          % (a.peers, time.monotonic() - t0, log_path))
    # The ceiling answers with the tracker's own replies (as in tracker_scale.py).
    replies = {}
    for g in range(layout.groups):
        p = next(x for x in protos if x[2] == g)
        replies[("list_files", "g%d" % g)] = {"files": core.state.list_files(p[0].conn.user, "g%d" % g)}
        for f in range(layout.files):
            name = layout.manifests[(g, f)]["name"]
            replies[("get_peers", "g%d" % g, name)] = core.op_get_peers(p[0].conn, {"group": "g%d" % g,
                                                                                   "name": name})
            m = core.state.files[("g%d" % g, name)].manifest
            replies[("share_file", "g%d" % g, name)] = {
                "group": "g%d" % g, "name": name, "size": m.size, "pieces": m.pieces,
                "sharers": len(core.state.files[("g%d" % g, name)].sharers)}
    bare = ceiling_protocols(replies, protos)
    print("%-12s %12s %12s %8s" % ("op", "tracker us", "ceiling us", "ratio"))
    for op in ("list_files", "get_peers", "share_file"):
        work = lines_for(layout, protos, op, a.requests)
        timed(work[: len(work) // 10])      # warm up
        tracker_us = 1e6 * timed(work)
        ceiling_us = 1e6 * timed([bare[id(p)] + (line,) for p, _t, line in work])
        print("%-12s %12.1f %12.1f %8.2f" % (op, tracker_us, ceiling_us, tracker_us / ceiling_us))
    if a.cprofile:
        import cProfile
        import pstats
        work = lines_for(layout, protos, "list_files", a.requests)
        prof = cProfile.Profile()
        prof.enable()
        timed(work)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(a.cprofile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
