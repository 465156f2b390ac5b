"""10,000 simulated peers: the tracker embedded, over PostgreSQL alone and as a fleet, against a ceiling.

``python benchmarks/tracker_load.py --trackers 3 [--store postgresql://USER@HOST/DB]`` runs,
in ONE run (the machine is shared, so only figures of one run compare):

ceiling
    a bare Twisted JSON-lines server (``--serve-ceiling``): parse the line, look the
    answer up in a dict, encode it, write it. It answers with exactly the replies
    the embedded tracker gave (captured after its set-up), so its reply bytes and
    encoding work are the tracker's; everything else the tracker does is what the
    fraction measures.
embedded
    one ``mbt-tracker`` with an SQLite state dir.
pg x1, pg x N
    1 and ``--trackers`` ``mbt-tracker --store URL`` processes on one database
    (each configuration in a fresh database of the given server; without
    ``--store`` a private server is started from Debian's binaries, as the tests do).

For each configuration: ``--peers`` connections (default 10,000), spread round
robin over the trackers and over 127.0.x.y source addresses (at most 50 per
address: the tracker allows 64), every one logged in as one of ``--users``
accounts (each in one of ``--groups`` groups) with its own peer address, and
every one sharing one file of its group (``--files`` per group), so a
``get_peers`` lists about peers / (groups x files) peers. The accounts, groups,
memberships and file registrations are written into the store *before* the
trackers start, with password records of a cheap scrypt setting (n=16): logging
10,000 peers in with the real setting would cost ~400 CPU s of scrypt. Logins
are therefore not part of the timed mix (their cost, ~37 ms of scrypt CPU each,
is in docs/performance.rst); the set-up's logins and announcements are timed and
reported, since over PostgreSQL each one is a write of the fleet.

Then, for each offered rate, requests are sent open loop for ``--seconds``:
``list_files`` of the connection's group, ``get_peers`` of a file in it and
``share_file`` re-announcing the connection's own file (``--mix``, default
45/45/10 %). Latency is send -> reply. A rate is *met* when p99 < 50 ms and
every request was answered; the configuration's figure is its best met rate.
Rates stop at the first one that saturates (answers fall behind, or p99 over
1 s). Every loop is bounded in count and time.

The load generator: ``--generators`` processes (default 1), forked for each
step, each driving its share of the connections and of the rate with a plain
``epoll`` loop and pre-encoded request lines. Their CPU is reported per step
next to the servers' (and the database's, for a private server); a step where a
generator used more than 90 % of a core is marked ``gen-bound``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from typing import Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mbt.driver import Process, bin_path, free_port, wait_port  # noqa: E402
from tracker_load import (Conn, Loop, _frag, manifest, percentile, proc_cpu, raise_nofile,  # noqa: E402
                          TARGET_P99_MS)

PASSWORD = "pw"
DEFAULT_RATES = (1000, 2000, 3000, 4000, 5000, 6000, 8000, 10000, 13000, 16000, 20000)
SATURATED_P99_MS = 1000.0


# -- the state, written into the store before the trackers start ----------------------

class Layout:
    """Who is who: users, groups, files, and what each connection does."""

    def __init__(self, peers: int, users: int, groups: int, files: int, file_mib: int) -> None:
        # Every file has at least one sharing user (else it would not be registered).
        self.peers, self.users, self.groups, self.files = peers, users, groups, min(files, users // groups)
        self.size = file_mib * 2 ** 20
        self.manifests = {(g, f): manifest(g * files + f, self.size) for g in range(groups) for f in range(files)}
        for (g, f), m in self.manifests.items():
            m["name"] = "g%d-f%02d.bin" % (g, f)

    def group_of_user(self, u: int) -> int:
        return u % self.groups

    def file_of_user(self, u: int) -> int:
        return (u // self.groups) % self.files

    def user_of_conn(self, c: int) -> int:
        return c % self.users

    def ops(self) -> List[dict]:
        """The operations that build the state (users, groups, members, registrations)."""
        from mbt import passwords
        record = passwords.make_record(PASSWORD, n=16)     # cheap: a benchmark fixture only
        ops = [{"op": "create_user", "user": "u%d" % u, "password_record": record} for u in range(self.users)]
        for g in range(self.groups):
            ops.append({"op": "create_group", "user": "u%d" % g, "group": "g%d" % g})
        for u in range(self.groups, self.users):
            g = self.group_of_user(u)
            ops.append({"op": "join_group", "user": "u%d" % u, "group": "g%d" % g})
            ops.append({"op": "accept_request", "owner": "u%d" % g, "group": "g%d" % g, "user": "u%d" % u})
        for u in range(self.users):
            g = self.group_of_user(u)
            ops.append({"op": "share_file", "user": "u%d" % u, "group": "g%d" % g,
                        "manifest": self.manifests[(g, self.file_of_user(u))]})
        return ops


def write_state_dir(state_dir: str, layout: Layout) -> int:
    """An SQLite tracker state dir holding the layout's state; returns the operation count."""
    from mbt.tracker.store import SQLiteStore
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    store = SQLiteStore(os.path.join(state_dir, "tracker.sqlite3"))
    try:
        ops = layout.ops()
        for op in ops:
            store.append(op)
    finally:
        store.close()
    return len(ops)


class Databases:
    """Fresh databases for the PostgreSQL configurations: on ``url``'s server, or a private one."""

    def __init__(self, url: Optional[str], log: Callable[[str], None]) -> None:
        self.url = url
        self.server = None
        self.made: List[str] = []
        if url is None:
            from tests.pgserver import PgServer
            self.server = PgServer()
            self.base = self.server.base_url
            self.admin_url = self.base + "/postgres"
            log("  private PostgreSQL server on port %d (fsync=off, synchronous_commit=off; see tests/pgserver.py)"
                % self.server.port)
        else:
            parts = urllib.parse.urlsplit(url)
            self.base = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "", "", ""))
            self.query = parts.query
            self.admin_url = url
        self.stem = "mbt_bench_%d" % os.getpid()

    def fresh(self, tag: str) -> str:
        import psycopg
        name = ("%s_%s" % (self.stem, tag)).lower()
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS %s" % name)
            conn.execute("CREATE DATABASE %s" % name)
        self.made.append(name)
        url = "%s/%s" % (self.base, name)
        return url + ("?" + self.query if self.url and self.query else "")

    def postgres_pids(self) -> List[int]:
        """The private server's processes (for its CPU); none for a server we did not start."""
        if self.server is None or self.server.proc is None:
            return []
        root = self.server.proc.pid
        pids = [root]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open("/proc/%s/stat" % entry) as f:
                        if int(f.read().rsplit(")", 1)[1].split()[1]) == root:
                            pids.append(int(entry))
                except (OSError, ValueError, IndexError):
                    pass
        return pids

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            return
        import psycopg
        try:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                for name in self.made:
                    conn.execute("DROP DATABASE IF EXISTS %s" % name)
        except psycopg.Error:
            pass


# -- servers ----------------------------------------------------------------------------

def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_of(pids: List[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += proc_cpu(pid)
        except (OSError, ValueError, IndexError):
            pass
    return total


class Servers:
    """The processes of one configuration; ``ports[i]`` serves connection i % len(ports)."""

    def __init__(self, procs: List[Process], ports: List[int], extra_pids: Callable[[], List[int]] = list) -> None:
        self.procs, self.ports, self.extra_pids = procs, ports, extra_pids

    def cpu(self) -> float:
        return cpu_of([p.pid for p in self.procs])

    def extra_cpu(self) -> float:
        return cpu_of(self.extra_pids())

    def stop(self) -> None:
        for p in self.procs:
            p.stop(10)


def start_trackers(work: str, count: int, where: List[List[str]], env: dict) -> Servers:
    ports = [free_port() for _ in range(count)]
    info = os.path.join(work, "tracker_info.txt")
    with open(info, "w") as f:
        f.write("".join("127.0.0.1:%d\n" % p for p in ports))
    procs = []
    try:
        for n in range(1, count + 1):      # one after the other: the first creates the shared secret
            p = Process([bin_path("mbt-tracker"), info, str(n)] + where[n - 1],
                        log=os.path.join(work, "tracker%d.log" % n), env=env)
            procs.append(p)
            wait_port(ports[n - 1], 60, p.proc)
    except BaseException:
        for p in procs:
            p.stop(5)
        raise
    return Servers(procs, ports)


def start_ceiling(work: str, replies: dict) -> Servers:
    path = os.path.join(work, "ceiling-replies.json")
    with open(path, "w") as f:
        json.dump([[list(k), v] for k, v in replies.items()], f)
    port = free_port()
    p = Process([sys.executable, os.path.abspath(__file__), "--serve-ceiling", str(port), path],
                log=os.path.join(work, "ceiling.log"))
    wait_port(port, 20, p.proc)
    return Servers([p], [port])


def serve_ceiling(port: int, path: str) -> None:
    """The ceiling: a bare Twisted JSON-lines server (parse, look up, answer)."""
    from twisted.internet import protocol, reactor
    from twisted.protocols.basic import LineReceiver
    from mbt.protocols.jsonlines import encode

    with open(path) as f:
        table = {tuple(k): v for k, v in json.load(f)}

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
            result = table.get(key, {})
            self.sendLine(encode({"id": req.get("id"), "ok": result}))

    f = protocol.ServerFactory()
    f.protocol = Bare
    reactor.listenTCP(port, f, backlog=1024, interface="127.0.0.1")
    reactor.run()


# -- the load ----------------------------------------------------------------------------

class Peers:
    """The generator side of one configuration: connections, their requests."""

    def __init__(self, layout: Layout, servers: Servers, log: Callable[[str], None]) -> None:
        self.layout = layout
        self.servers = servers
        self.log = log
        self.loop = Loop(0)
        self.conns: List[Conn] = []

    def connect(self) -> float:
        """Open every connection (batches of 25 answered pings); returns seconds."""
        t0 = time.monotonic()
        n, ports = self.layout.peers, self.servers.ports
        batch = 25
        while len(self.conns) < n:
            fresh = []
            for _ in range(min(batch, n - len(self.conns))):
                i = len(self.conns) + len(fresh)
                self.loop.port = ports[i % len(ports)]
                # 50 connections per source address (the tracker allows 64 per address).
                src = "127.0.%d.%d" % (1 + i // 50 // 250, 1 + i // 50 % 250)
                import socket
                s = socket.create_connection(("127.0.0.1", self.loop.port), timeout=10, source_address=(src, 0))
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                c = Conn(s, i)
                self.loop.conns[c.fd] = c
                import select
                self.loop.ep.register(c.fd, select.EPOLLIN)
                fresh.append(c)
            answered = []
            for c in fresh:
                self.loop.send(c, "ping", b"", "setup", answered.append)
            self.loop.wait(lambda: len(answered) == len(fresh), 60, "ping on new connections")
            self.conns += fresh
        return time.monotonic() - t0

    def login_and_share(self) -> tuple:
        """Log every connection in and announce its file; (login s, share s)."""
        lay = self.loop, self.layout
        loop, layout = lay
        t0 = time.monotonic()
        loop.call_many([(c, "login", {"user": "u%d" % layout.user_of_conn(c.index), "password": PASSWORD,
                                      "address": c.address}) for c in self.conns], timeout=900, window=200)
        t1 = time.monotonic()
        loop.call_many([(c, "share_file", self.share_args(c)) for c in self.conns], timeout=900, window=200)
        return t1 - t0, time.monotonic() - t1

    def share_args(self, c: Conn) -> dict:
        u = self.layout.user_of_conn(c.index)
        g = self.layout.group_of_user(u)
        return {"group": "g%d" % g, "manifest": self.layout.manifests[(g, self.layout.file_of_user(u))]}

    def capture(self) -> dict:
        """One reply of each kind for every group and file (the ceiling serves these)."""
        out = {}
        lay = self.layout
        for g in range(lay.groups):
            c = next(c for c in self.conns if lay.group_of_user(lay.user_of_conn(c.index)) == g)
            out[("list_files", "g%d" % g)] = self.loop.call(c, "list_files", {"group": "g%d" % g})
            for f in range(lay.files):
                name = lay.manifests[(g, f)]["name"]
                out[("get_peers", "g%d" % g, name)] = self.loop.call(c, "get_peers", {"group": "g%d" % g,
                                                                                      "name": name})
            for f in range(lay.files):
                m = lay.manifests[(g, f)]
                out[("share_file", "g%d" % g, m["name"])] = {
                    "group": "g%d" % g, "name": m["name"], "size": m["size"],
                    "pieces": len(m["piece_hashes"]), "sharers": sum(
                        1 for u in range(lay.users) if lay.group_of_user(u) == g and lay.file_of_user(u) == f)}
        return out

    def requests(self, c: Conn) -> List[tuple]:
        """The pre-encoded (op, args) this connection sends, in the mix's proportions."""
        lay = self.layout
        u = lay.user_of_conn(c.index)
        g = lay.group_of_user(u)
        return [("list_files", _frag({"group": "g%d" % g})),
                [("get_peers", _frag({"group": "g%d" % g, "name": lay.manifests[(g, f)]["name"]}))
                 for f in range(lay.files)],
                ("share_file", _frag(self.share_args(c)))]

    def close(self) -> None:
        self.loop.close()


def _generate(conns: List[Conn], reqs: Dict[int, list], rate: float, seconds: float, drain: float,
              mix: tuple, out_fd: int) -> None:
    """One generator process: open-loop requests over ``conns`` at ``rate``; figures to ``out_fd``."""
    import select
    loop = Loop(0)
    for c in conns:
        loop.conns[c.fd] = c
        loop.ep.register(c.fd, select.EPOLLIN | (select.EPOLLOUT if c.out else 0))
        c.watching_out = bool(c.out)
    lat: Dict[str, List[float]] = {"list_files": [], "get_peers": [], "share_file": []}
    errors: Dict[str, int] = {}
    done = [0]
    in_window = [True]

    def finished(kind, latency, code, tag):
        if in_window[0]:
            done[0] += 1
        lat[kind].append(latency)
        if code is not None:
            errors[kind + ":" + code] = errors.get(kind + ":" + code, 0) + 1
    loop.on_done = finished
    p_list, p_peers = mix[0], mix[0] + mix[1]
    n = len(conns)
    rr = sent = 0
    t0 = time.perf_counter()
    t_end = t0 + seconds
    interval = 1.0 / rate
    while True:
        now = time.perf_counter()
        if now >= t_end:
            break
        due = min(int((now - t0) * rate) + 1 - sent, 200)
        for _ in range(due):
            c = conns[rr % n]
            rr += 1
            if c.fd not in loop.conns:
                continue
            sent += 1
            r = reqs[c.index]
            x = (sent * 0.6180339887) % 1.0          # a fixed, well-spread sequence in [0, 1)
            if x < p_list:
                loop.send(c, r[0][0], r[0][1], "list_files")
            elif x < p_peers:
                op, args = r[1][sent % len(r[1])]
                loop.send(c, op, args, "get_peers")
            else:
                loop.send(c, r[2][0], r[2][1], "share_file")
        loop.poll(max(0.0, t0 + sent * interval - time.perf_counter()))
    elapsed = time.perf_counter() - t0
    r0 = os.times()
    in_window[0] = False
    deadline = time.perf_counter() + drain
    while loop.pending and time.perf_counter() < deadline and loop.conns:
        loop.poll(0.01)
    r = os.times()
    result = {"sent": sent, "done": done[0], "elapsed": elapsed, "unanswered": len(loop.pending),
              "closed": loop.closed, "latencies": lat, "errors": errors, "cpu": r.user + r.system,
              "window_cpu": r0.user + r0.system}
    data = json.dumps(result).encode()
    while data:
        k = os.write(out_fd, data)
        data = data[k:]


def run_step(peers: Peers, reqs: Dict[int, list], rate: float, seconds: float, drain: float, mix: tuple,
             generators: int, servers: Servers) -> dict:
    """Fork ``generators`` processes, each with a slice of the connections and of the rate."""
    slices = [peers.conns[i::generators] for i in range(generators)]
    children = []
    cpu0, extra0 = servers.cpu(), servers.extra_cpu()
    t0 = time.perf_counter()
    for part in slices:
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:        # the child: generate, report, exit without running any cleanup
            try:
                os.close(rfd)
                _generate(part, reqs, rate / generators, seconds, drain, mix, wfd)
                os._exit(0)
            except BaseException:
                import traceback
                traceback.print_exc()
                os._exit(1)
        os.close(wfd)
        children.append((pid, rfd))
    # The servers' CPU over the sending window only (the drain after it would dilute it).
    time.sleep(max(0.0, t0 + seconds - time.perf_counter()))
    cpu1, extra1 = servers.cpu(), servers.extra_cpu()
    window = time.perf_counter() - t0
    results = []
    for pid, rfd in children:
        chunks = []
        while True:
            b = os.read(rfd, 1 << 20)
            if not b:
                break
            chunks.append(b)
        os.close(rfd)
        _pid, status = os.waitpid(pid, 0)
        if status != 0 or not chunks:
            raise RuntimeError("a load generator process failed (status %d)" % status)
        results.append(json.loads(b"".join(chunks)))
    elapsed = max(r["elapsed"] for r in results)
    lat = sorted(x for r in results for v in r["latencies"].values() for x in v)
    per_kind = {k: sorted(x for r in results for x in r["latencies"][k]) for k in ("list_files", "get_peers",
                                                                                    "share_file")}
    errors: Dict[str, int] = {}
    for r in results:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    step = {
        "offered_rps": rate, "sent_rps": sum(r["sent"] for r in results) / elapsed,
        "done_rps": sum(r["done"] for r in results) / elapsed,
        "p50_ms": 1000 * percentile(lat, 0.5), "p99_ms": 1000 * percentile(lat, 0.99),
        "max_ms": 1000 * (lat[-1] if lat else float("nan")),
        "p99_by_op_ms": {k: 1000 * percentile(v, 0.99) for k, v in per_kind.items()},
        "errors": errors, "unanswered": sum(r["unanswered"] for r in results),
        "closed": sum(r["closed"] for r in results),
        # Server CPU over the whole step (window + drain), as % of one core.
        "server_cpu_pct": 100 * (cpu1 - cpu0) / window, "db_cpu_pct": 100 * (extra1 - extra0) / window,
        "gen_cpu_pct": [100 * r["window_cpu"] / r["elapsed"] for r in results],
    }
    step["gen_bound"] = any(x > 90 for x in step["gen_cpu_pct"])
    return step


def met(step: dict) -> bool:
    return step["p99_ms"] < TARGET_P99_MS and not step["unanswered"] and not step["errors"] \
        and step["done_rps"] >= 0.95 * step["offered_rps"]


HEADER = ("  offered/s   done/s  p50 ms  p99 ms  p99 list/peers/share ms  errors  server CPU  db CPU  gen CPU")


def format_step(s: dict) -> str:
    by = s["p99_by_op_ms"]
    return ("  %9.0f %8.0f %7.1f %7.1f  %7.1f/%6.1f/%6.1f     %6d %10.0f%% %6.0f%%  %s%s%s"
            % (s["offered_rps"], s["done_rps"], s["p50_ms"], s["p99_ms"], by["list_files"], by["get_peers"],
               by["share_file"], sum(s["errors"].values()), s["server_cpu_pct"], s["db_cpu_pct"],
               "+".join("%.0f%%" % x for x in s["gen_cpu_pct"]),
               "  gen-bound" if s["gen_bound"] else "", "" if met(s) else "  (not met)"))


def curve(peers: Peers, servers: Servers, rates, seconds: float, drain: float, mix: tuple, generators: int,
          log: Callable[[str], None]) -> dict:
    reqs = {c.index: peers.requests(c) for c in peers.conns}
    steps = []
    log(HEADER)
    for rate in rates:
        s = run_step(peers, reqs, rate, seconds, drain, mix, generators, servers)
        steps.append(s)
        log(format_step(s))
        if s["unanswered"] or s["closed"] or s["done_rps"] < 0.8 * s["sent_rps"] or s["p99_ms"] > SATURATED_P99_MS:
            log("  saturated: higher rates skipped")
            break
        time.sleep(0.5)
    ok = [s for s in steps if met(s)]
    best = max(ok, key=lambda s: s["done_rps"]) if ok else None
    # Throughput whatever the latency: the highest rate it kept up with (every request answered,
    # >= 95 % within the window). Less sensitive than p99 to other processes taking the CPU away.
    kept = [s for s in steps if not s["unanswered"] and not s["closed"] and s["done_rps"] >= 0.95 * s["offered_rps"]]
    peak = max(kept, key=lambda s: s["done_rps"]) if kept else None
    return {"steps": steps, "best": best, "peak": peak}


def compare(work: str, store: Optional[str], trackers: int, peers: int = 10000, users: int = 1000,
            groups: int = 10, files: int = 20, file_mib: int = 16, rates=DEFAULT_RATES, seconds: float = 3.0,
            drain: float = 3.0, mix: tuple = (0.45, 0.45, 0.10), generators: int = 1,
            log_level: Optional[str] = None, configs=("embedded", "ceiling", "pg1", "pgN", "ceiling"),
            log: Callable[[str], None] = print, profile: Optional[str] = None,
            profile_config: str = "embedded") -> dict:
    """The whole comparison; returns every figure."""
    nofile = raise_nofile()
    if nofile < peers + 200:
        raise RuntimeError("open-file limit %d is too low for %d connections (ulimit -Hn)" % (nofile, peers))
    os.makedirs(work, exist_ok=True)
    layout = Layout(peers, users, groups, files, file_mib)
    env = dict(os.environ)
    if log_level:
        env["MBT_LOG_LEVEL"] = log_level
    log("tracker scale: %d peers (connections), %d users in %d groups, %d files of %d MiB per group; "
        "mix list_files/get_peers/share_file %.0f/%.0f/%.0f %%; %d generator process(es); %d CPUs, load %.1f"
        % (peers, users, groups, files, file_mib, 100 * mix[0], 100 * mix[1], 100 * mix[2], generators,
           os.cpu_count(), os.getloadavg()[0]))
    seed_dir = os.path.join(work, "seed")
    t0 = time.monotonic()
    n_ops = write_state_dir(seed_dir, layout)
    log("  seed state: %d operations in %.1f s" % (n_ops, time.monotonic() - t0))
    results: Dict[str, dict] = {"peers": peers, "users": users, "groups": groups, "files": files,
                                "file_mib": file_mib, "mix": list(mix), "generators": generators,
                                "trackers": trackers, "configs": {}}
    replies = None
    dbs = None
    try:
        for position, name in enumerate(configs):
            key = name
            if name == "ceiling" and "ceiling" in configs[:position]:
                key = "ceiling2"        # measured again later in the run: the machine's load drifts
            if name == "ceiling":
                if replies is None:
                    log("ceiling skipped: it serves the embedded tracker's replies (run 'embedded' first)")
                    continue
                label = "ceiling (bare Twisted JSON-lines server)" + (", again" if key == "ceiling2" else "")
                servers = start_ceiling(work, replies)
            elif name == "embedded":
                label = "embedded (1 tracker, SQLite)"
                d = os.path.join(work, "embedded")
                import shutil
                shutil.rmtree(d, ignore_errors=True)
                shutil.copytree(seed_dir, os.path.join(d, "state"))
                servers = start_trackers(d, 1, [["--state-dir", os.path.join(d, "state")]], env)
            else:
                count = 1 if name == "pg1" else trackers
                label = "PostgreSQL, %d tracker%s" % (count, "s" if count > 1 else "")
                if dbs is None:
                    try:
                        dbs = Databases(store, log)
                    except (ImportError, RuntimeError, OSError) as e:
                        log("%s: skipped, no PostgreSQL server (%s; make bench installs Debian's postgresql)"
                            % (label, e))
                        continue
                url = dbs.fresh(name)
                from mbt.tracker.migrate import import_state_dir
                import_state_dir(seed_dir, url)
                d = os.path.join(work, name)
                os.makedirs(d, exist_ok=True)
                servers = start_trackers(d, count, [["--store", url]] * count, env)
                servers.extra_pids = dbs.postgres_pids
            log("%s:" % label)
            p = Peers(layout, servers, log)
            try:
                figures = {"label": label}
                figures["connect_s"] = p.connect()
                if name != "ceiling":
                    cpu0 = servers.cpu()
                    figures["login_s"], figures["share_s"] = p.login_and_share()
                    log("  %d connections in %.1f s; %d logins in %.1f s (%.0f/s), %d announcements in %.1f s "
                        "(%.0f/s)" % (peers, figures["connect_s"], peers, figures["login_s"],
                                      peers / figures["login_s"], peers, figures["share_s"],
                                      peers / figures["share_s"]))
                    figures["setup_server_cpu_s"] = servers.cpu() - cpu0
                    figures["tracker_rss_mib"] = [rss_mib(pr.pid) for pr in servers.procs]
                    log("  set-up CPU of the tracker(s): %.1f s; resident memory with every peer online: %s MiB"
                        % (figures["setup_server_cpu_s"], ", ".join("%.0f" % x for x in figures["tracker_rss_mib"])))
                    if name == "embedded":
                        replies = p.capture()
                else:
                    log("  %d connections in %.1f s" % (peers, figures["connect_s"]))
                spy = None
                if profile and name == profile_config:
                    from tracker_load import start_profile
                    spy = start_profile(servers.procs[0].pid, profile)
                try:
                    figures.update(curve(p, servers, rates, seconds, drain, mix, generators, log))
                finally:
                    if spy is not None:
                        from tracker_load import stop_profile
                        stop_profile(spy)
                        log("  py-spy profile of tracker 1 during the steps: %s" % profile)
                b = figures["best"]
                log("  best with p99 < %.0f ms: %s; kept up with %s" % (
                    TARGET_P99_MS, "%.0f requests/s (p99 %.1f ms)" % (b["done_rps"], b["p99_ms"]) if b else "none",
                    "%.0f requests/s" % figures["peak"]["done_rps"] if figures["peak"] else "none"))
                results["configs"][key] = figures
            finally:
                p.close()
                servers.stop()
    finally:
        if dbs is not None:
            dbs.close()
    log(summary(results))
    return results


def summary(results: dict) -> str:
    cfg = results["configs"]
    ceilings = [cfg[k]["best"] for k in ("ceiling", "ceiling2") if k in cfg and cfg[k]["best"]]
    # The higher of the ceiling's measurements: the fractions are the conservative ones.
    ceiling = max(ceilings, key=lambda b: b["done_rps"]) if ceilings else None
    lines = ["summary (best rate with p99 < %.0f ms, and the highest rate kept up with; %d peers; "
             "fractions of the same run's ceiling%s):"
             % (TARGET_P99_MS, results["peers"], ", the higher of its two measurements" if len(ceilings) > 1
                else "")]
    peaks = [cfg[k]["peak"]["done_rps"] for k in ("ceiling", "ceiling2") if k in cfg and cfg[k].get("peak")]
    peak_ceiling = max(peaks) if peaks else None
    targets = {"embedded": 0.5, "pgN": 0.5}
    for name in ("ceiling", "ceiling2", "embedded", "pg1", "pgN"):
        if name not in cfg:
            continue
        b = cfg[name]["best"]
        rate = b["done_rps"] if b else 0.0
        frac = rate / ceiling["done_rps"] if ceiling else float("nan")
        extra = ""
        if name in targets:
            extra = "  (target >= %.1f)" % targets[name]
        if name == "pgN":
            extra += "  (target >= 5,000 requests/s)"
        p = cfg[name].get("peak")
        prate = p["done_rps"] if p else 0.0
        pfrac = prate / peak_ceiling if peak_ceiling else float("nan")
        lines.append("  %-50s %6.0f/s p99 %5.1f ms  %.2f of ceiling | kept up with %6.0f/s  %.2f of ceiling%s"
                     % (cfg[name]["label"], rate, b["p99_ms"] if b else float("nan"), frac, prate, pfrac, extra))
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve-ceiling", nargs=2, metavar=("PORT", "REPLIES"), help=argparse.SUPPRESS)
    ap.add_argument("--store", help="postgresql:// URL of a server where fresh databases may be created "
                    "(default: a private server from Debian's PostgreSQL binaries)")
    ap.add_argument("--trackers", type=int, default=3)
    ap.add_argument("--peers", type=int, default=10000)
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--groups", type=int, default=10)
    ap.add_argument("--files", type=int, default=20, help="files per group")
    ap.add_argument("--file-mib", type=int, default=16)
    ap.add_argument("--rates", default=",".join(str(r) for r in DEFAULT_RATES))
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--drain", type=float, default=3.0)
    ap.add_argument("--mix", default="45,45,10", help="percent list_files,get_peers,share_file")
    ap.add_argument("--generators", type=int, default=1)
    ap.add_argument("--configs", default="embedded,ceiling,pg1,pgN,ceiling",
                    help="in this order (the ceiling serves the embedded tracker's replies: after it; "
                    "a second ceiling is measured again)")
    ap.add_argument("--log-level")
    ap.add_argument("--work")
    ap.add_argument("--json")
    ap.add_argument("--profile", help="py-spy raw profile of tracker 1 of --profile-config during its steps "
                    "(py-spy in the venv: pip install py-spy)")
    ap.add_argument("--profile-config", default="embedded", help="embedded, pg1 or pgN (default embedded)")
    a = ap.parse_args(argv)
    if a.serve_ceiling:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        serve_ceiling(int(a.serve_ceiling[0]), a.serve_ceiling[1])
        return 0
    # SIGTERM (a killed run) unwinds like an error: every tracker, server and database is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    rates = [float(x) for x in a.rates.split(",") if x]
    mix = tuple(float(x) / 100 for x in a.mix.split(","))
    if (not rates or len(rates) > 20 or max(rates) > 100000 or a.seconds > 30 or not 1 <= a.peers <= 18000
            or not 1 <= a.trackers <= 8 or not 1 <= a.generators <= 4 or len(mix) != 3 or abs(sum(mix) - 1) > 1e-6
            or a.users > a.peers or a.groups > a.users):
        ap.error("bad limits: at most 20 rates up to 100000/s, --seconds <= 30, --peers <= 18000, "
                 "--trackers 1-8, --generators 1-4, --mix of three percentages adding to 100")
    work = a.work or tempfile.mkdtemp(prefix="mbt-tracker-scale-")
    r = compare(work, a.store, a.trackers, a.peers, a.users, a.groups, a.files, a.file_mib, rates, a.seconds,
                a.drain, mix, a.generators, a.log_level, tuple(a.configs.split(",")), profile=a.profile,
                profile_config=a.profile_config)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
