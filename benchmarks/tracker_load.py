"""Tracker load curve: 1,000 connected peers, open-loop mixed traffic at several offered rates.

What it does, against a real ``mbt-tracker`` subprocess on 127.0.0.1:

1. Set-up (not timed): ``--users`` accounts, one group, ``--files`` files in it;
   ``--connections`` TCP connections, every one logged in (as one of the users,
   each with its own peer address), and the first ``--sharers`` of them sharing
   one file each, so ``get_peers`` returns a few online peers per file.
2. For every offered rate (default 0.5k, 1k, 2k, 5k, 8k, 10k requests/s), for
   ``--seconds`` seconds: requests are *sent on a schedule*, whether or not
   earlier ones were answered (open loop: a slow tracker cannot slow the
   senders down and hide its own latency), round robin over the connections.
   The mix: half ``list_files``, half ``get_peers`` ("peers for a file"), and a
   small share (``--login-share``, default 0.1 %) of *real* logins: a
   connection logs out and logs in again, which runs scrypt (~40 ms of CPU,
   deliberately slow) on the tracker's thread pool. Logins are reported
   separately and left out of the request latency percentiles.
3. Per rate: requests/s actually completed, p50/p99/max latency (send ->
   reply), errors, the logins' rate and latency, and the CPU used by the
   tracker and by this load generator. After each rate the answers still
   outstanding get ``--drain`` seconds; a rate that leaves requests unanswered
   saturates the tracker, and higher rates are skipped (the curve is bounded).

The load generator is a plain ``epoll`` loop with pre-formatted request lines,
not Twisted with a Deferred per request: it must stay cheap, because on the
2-core test machine it shares the CPU with the tracker it is measuring.
One process holds every connection; the soft ``RLIMIT_NOFILE`` is raised to
the hard limit first (the tracker, started after that, inherits it).

Run alone: ``python benchmarks/tracker_load.py [--rates 1000,5000] [--plot out.png]``.
With ``--trackers N`` (and optionally ``--store URL``) it runs the 10,000-peer
comparison of ``tracker_scale.py`` instead: a bare JSON-lines ceiling, the
embedded tracker, and 1 and N trackers over PostgreSQL, in one run.
``make bench`` runs it through ``run.py`` and writes the PNG next to the data.
Target (issue #8): >= 5,000 requests/s with p99 < 50 ms.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import select
import socket
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mbt.driver import Process, bin_path, free_port, wait_port  # noqa: E402

DEFAULT_RATES = (500, 1000, 2000, 5000, 8000, 10000)
TARGET_RPS, TARGET_P99_MS = 5000, 50.0
GROUP = "g"
PASSWORD = "pw"
#: Most requests one step sends at once when it is behind schedule (keeps a
#: stalled generator from bursting thousands of requests in one go).
MAX_BURST = 200


def raise_nofile() -> int:
    """Raise the soft limit on open files to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def manifest(i: int, size: int, piece_size: int = 524288) -> dict:
    """A syntactically valid manifest of file ``i`` (the tracker never sees the bytes)."""
    pieces = max(1, (size + piece_size - 1) // piece_size)
    return {"name": "file%03d.bin" % i, "size": size, "piece_size": piece_size,
            "file_hash": "%064x" % (i + 1), "piece_hashes": ["%064x" % (i * 100000 + k) for k in range(pieces)]}


def percentile(sorted_values: List[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def proc_cpu(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Conn:
    """One client connection: socket, unsent bytes, partial reply line."""

    __slots__ = ("sock", "fd", "out", "inbuf", "busy", "index", "address", "watching_out")

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.out = b""
        self.inbuf = b""
        self.busy = False       # withheld from the request rotation while it logs in again
        self.watching_out = False
        self.index = index
        self.address = "127.0.0.1:%d" % (20000 + index)


class Loop:
    """Pipelined JSON-lines requests over many connections, one epoll loop.

    ``send`` writes a request and remembers (send time, kind, callback, tag)
    under its id; replies are matched by id. The fast path reads the id from the
    reply's first bytes (the tracker writes ``{"id":N,...`` first) and only
    looks for ``"error"``; set-up requests with a callback get the decoded reply.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.ep = select.epoll()
        self.conns: Dict[int, Conn] = {}
        self.pending: Dict[int, tuple] = {}
        self.next_id = 1
        self.on_done: Optional[Callable] = None     # (kind, latency, error_code, tag) for timed requests
        self.closed = 0

    def connect(self, n: int, batch: int = 25) -> List[Conn]:
        """``n`` connections, ``batch`` at a time, each batch answered before the next.

        The tracker listens with Twisted's default backlog (50): connecting
        faster than it accepts overflows the queue, and the kernel's SYN retry
        then costs a whole second per dropped connection. A ``ping`` on every
        new connection, answered, proves the tracker has accepted it.
        """
        out: List[Conn] = []
        while len(out) < n:
            fresh = []
            for _ in range(min(batch, n - len(out))):
                # Spread over loopback source addresses: the tracker caps
                # connections per address (MAX_CONNECTIONS_PER_HOST).
                index = len(out) + len(fresh)
                s = socket.create_connection(("127.0.0.1", self.port), timeout=10,
                                             source_address=("127.0.%d.%d" % (1 + index // 12800, 1 + index // 50 % 256), 0))
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                c = Conn(s, len(out) + len(fresh))
                self.conns[c.fd] = c
                self.ep.register(c.fd, select.EPOLLIN)
                fresh.append(c)
            answered = []
            for c in fresh:     # any reply will do, even an error: it was accepted
                self.send(c, "ping", b"", "setup", answered.append)
            self.wait(lambda: len(answered) == len(fresh), 30, "ping on new connections")
            out += fresh
        return out

    def send(self, c: Conn, op: str, args: bytes, kind: str, callback: Optional[Callable] = None,
             tag=None) -> None:
        """Send ``{"id":N,"op":op<args>}``; ``args`` is a pre-encoded JSON fragment like ``,"group":"g"``."""
        rid = self.next_id
        self.next_id += 1
        self.pending[rid] = (time.perf_counter(), kind, callback, tag)
        c.out += b'{"id":%d,"op":"%s"%s}\n' % (rid, op.encode(), args)
        self._flush(c)

    def _flush(self, c: Conn) -> None:
        try:
            n = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            n = 0
        c.out = c.out[n:]
        # Ask for EPOLLOUT only while something is left to write (and change the
        # registration only when that changes: one syscall fewer per request).
        if bool(c.out) != c.watching_out:
            c.watching_out = bool(c.out)
            self.ep.modify(c.fd, select.EPOLLIN | (select.EPOLLOUT if c.out else 0))

    def poll(self, timeout: float) -> None:
        for fd, ev in self.ep.poll(timeout):
            c = self.conns.get(fd)
            if c is None:
                continue
            if ev & select.EPOLLOUT:
                self._flush(c)
            if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                self._read(c)

    def _read(self, c: Conn) -> None:
        try:
            data = c.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            data = b""
            if e.errno not in (errno.ECONNRESET, errno.EPIPE):
                raise
        if not data:
            self.closed += 1
            self.ep.unregister(c.fd)
            del self.conns[c.fd]
            c.sock.close()
            return
        buf = c.inbuf + data if c.inbuf else data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            self._reply(buf, start, nl)
            start = nl + 1
        c.inbuf = buf[start:]

    def _reply(self, buf: bytes, start: int, end: int) -> None:
        now = time.perf_counter()
        rid = None
        if buf.startswith(b'{"id":', start):
            comma = buf.find(b",", start + 6, end)
            try:
                rid = int(buf[start + 6:comma])
            except ValueError:
                rid = None
        entry = self.pending.pop(rid, None) if rid is not None else None
        if entry is None:
            return      # not ours (or an id-less error line): ignored
        t_sent, kind, callback, tag = entry
        is_error = buf.startswith(b'"error"', comma + 1)
        if callback is not None:
            callback(json.loads(buf[start:end]))
        elif self.on_done is not None:
            code = None
            if is_error:
                try:
                    code = json.loads(buf[start:end])["error"].get("code", "?")
                except (ValueError, KeyError, AttributeError):
                    code = "?"
            self.on_done(kind, now - t_sent, code, tag)

    def call(self, c: Conn, op: str, args: dict, timeout: float = 60.0) -> dict:
        """Set-up only: one request, wait for its decoded reply; raise on an error reply."""
        box = []
        self.send(c, op, _frag(args), "setup", box.append)
        self.wait(lambda: box, timeout, op)
        if "error" in box[0]:
            raise RuntimeError("%s %r -> %s" % (op, {k: v for k, v in args.items() if k != "password"},
                                                box[0]["error"]))
        return box[0]["ok"]

    def call_many(self, calls: List[tuple], timeout: float, window: int = 64) -> List[dict]:
        """Set-up only: ``(conn, op, args)`` requests, at most ``window`` in flight; all must succeed."""
        results: List[Optional[dict]] = [None] * len(calls)
        state = {"next": 0, "done": 0}

        def launch():
            while state["next"] < len(calls) and state["next"] - state["done"] < window:
                i = state["next"]
                state["next"] += 1
                c, op, args = calls[i]
                self.send(c, op, _frag(args), "setup", lambda reply, i=i: finish(i, reply))

        def finish(i, reply):
            if "error" in reply:
                raise RuntimeError("%s -> %s" % (calls[i][1], reply["error"]))
            results[i] = reply["ok"]
            state["done"] += 1
            launch()

        launch()
        self.wait(lambda: state["done"] == len(calls), timeout, "%d set-up requests" % len(calls))
        return results

    def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise RuntimeError("tracker did not answer %s within %.0f s" % (what, timeout))
            if not self.conns:
                raise RuntimeError("every connection to the tracker was closed")
            self.poll(0.05)

    def close(self) -> None:
        for c in list(self.conns.values()):
            c.sock.close()
        self.conns.clear()
        self.ep.close()


def _frag(args: dict) -> bytes:
    """``{"a": 1}`` -> ``,"a":1`` (to splice into a request line)."""
    if not args:
        return b""
    return b"," + json.dumps(args, separators=(",", ":")).encode()[1:-1]


class Step:
    """Figures of one offered rate."""

    def __init__(self) -> None:
        self.latencies: List[float] = []
        self.login_latencies: List[float] = []
        self.errors: Dict[str, int] = {}
        self.done_in_window = 0
        self.logins = 0
        self.in_window = True


def setup(loop: Loop, connections: int, users: int, files: int, sharers: int, file_size: int,
          log: Callable[[str], None]) -> List[Conn]:
    """Accounts, group, files; ``connections`` logged-in connections. Returns them."""
    admin = loop.connect(1)[0]
    loop.call_many([(admin, "create_user", {"user": "u%d" % u, "password": PASSWORD}) for u in range(users)],
                   timeout=120, window=8)
    loop.call(admin, "login", {"user": "u0", "password": PASSWORD, "address": "127.0.0.1:19999"})
    loop.call(admin, "create_group", {"group": GROUP})
    t0 = time.monotonic()
    conns = loop.connect(connections)
    log("  %d connections open in %.1f s" % (len(conns), time.monotonic() - t0))
    t0 = time.monotonic()
    # Every login runs scrypt on the tracker's thread pool: ~20 s for 1,000 on 2 cores.
    loop.call_many([(c, "login", {"user": "u%d" % (c.index % users), "password": PASSWORD,
                                  "address": c.address}) for c in conns], timeout=600, window=32)
    log("  %d logins in %.1f s" % (len(conns), time.monotonic() - t0))
    for u in range(1, min(users, len(conns))):
        c = conns[u]        # logged in as user u (index % users)
        loop.call(c, "join_group", {"group": GROUP})
        loop.call(admin, "accept_request", {"group": GROUP, "user": "u%d" % u})
    loop.call_many([(conns[i], "share_file", {"group": GROUP, "manifest": manifest(i % files, file_size)})
                    for i in range(min(sharers, len(conns)))], timeout=120)
    return conns


def run_step(loop: Loop, conns: List[Conn], rate: float, seconds: float, drain: float, login_share: float,
             files: int, users: int, tracker_pid: int) -> dict:
    """Offer ``rate`` requests/s for ``seconds``; figures of what came back."""
    st = Step()

    def done(kind, latency, code, tag):
        if st.in_window:
            st.done_in_window += 1
        if code is not None:
            st.errors[kind + ":" + code] = st.errors.get(kind + ":" + code, 0) + 1
        if kind == "login":
            st.logins += 1
            st.login_latencies.append(latency)
            tag.busy = False        # logged in again: back in the rotation
        elif kind != "logout":
            st.latencies.append(latency)

    loop.on_done = done
    # Pre-encoded argument fragments: building JSON per request would cost more
    # generator CPU than the tracker spends answering some of them.
    list_args = _frag({"group": GROUP})
    peer_args = [_frag({"group": GROUP, "name": "file%03d.bin" % f}) for f in range(files)]
    login_every = int(round(1 / login_share)) if login_share > 0 else 0
    n = len(conns)
    rr = 0
    sent = 0
    cpu_t0, cpu_g0 = proc_cpu(tracker_pid), self_cpu()
    t0 = time.perf_counter()
    t_end = t0 + seconds
    interval = 1.0 / rate
    while True:
        now = time.perf_counter()
        if now >= t_end:
            break
        due = min(int((now - t0) * rate) + 1 - sent, MAX_BURST)
        for _ in range(due):
            c = conns[rr % n]
            rr += 1
            if c.busy or c.fd not in loop.conns:
                continue        # this slot is skipped; the next one takes the request
            sent += 1
            if login_every and sent % login_every == 0:
                # A real login: log out, then in again (scrypt). The connection
                # sits out of the rotation until the login is answered.
                c.busy = True
                loop.send(c, "logout", b"", "logout")
                loop.send(c, "login", _frag({"user": "u%d" % (c.index % users), "password": PASSWORD,
                                             "address": c.address}), "login", tag=c)
            elif sent % 2:
                loop.send(c, "list_files", list_args, "list_files")
            else:
                loop.send(c, "get_peers", peer_args[(sent // 2) % files], "get_peers")
        # Sleep in epoll until the next request is due (or a reply arrives).
        loop.poll(max(0.0, t0 + sent * interval - time.perf_counter()))
    elapsed = time.perf_counter() - t0
    st.in_window = False
    cpu_t1, cpu_g1 = proc_cpu(tracker_pid), self_cpu()
    deadline = time.perf_counter() + drain
    while loop.pending and time.perf_counter() < deadline and loop.conns:
        loop.poll(0.01)
    unanswered = len(loop.pending)
    loop.pending.clear()        # a saturated step must not spill into the next one
    for c in conns:
        c.busy = False
    loop.on_done = None
    lat = sorted(st.latencies)
    llat = sorted(st.login_latencies)
    return {
        "offered_rps": rate, "sent_rps": sent / elapsed, "done_rps": st.done_in_window / elapsed,
        "requests": len(lat), "p50_ms": 1000 * percentile(lat, 0.50), "p99_ms": 1000 * percentile(lat, 0.99),
        "max_ms": 1000 * (lat[-1] if lat else float("nan")),
        "errors": sum(st.errors.values()), "error_kinds": st.errors, "unanswered": unanswered,
        "logins": st.logins, "login_rps": st.logins / elapsed,
        "login_p50_ms": 1000 * percentile(llat, 0.50), "login_p99_ms": 1000 * percentile(llat, 0.99),
        "tracker_cpu_pct": 100 * (cpu_t1 - cpu_t0) / elapsed, "loadgen_cpu_pct": 100 * (cpu_g1 - cpu_g0) / elapsed,
        "closed_connections": loop.closed,
    }


def curve(work: str, rates=DEFAULT_RATES, connections: int = 1000, seconds: float = 4.0, drain: float = 5.0,
          users: int = 20, files: int = 20, sharers: int = 100, file_mib: int = 64, login_share: float = 0.001,
          log_level: Optional[str] = None, log: Callable[[str], None] = print,
          profile: Optional[str] = None, store: Optional[str] = None) -> dict:
    """Start a tracker, run every rate against it, stop it; return the figures.

    With ``store`` (a postgresql:// URL of an empty database) the tracker keeps
    its state there (``--store``) instead of in an SQLite state dir."""
    nofile = raise_nofile()
    if nofile < connections + 100:
        raise RuntimeError("open-file limit %d is too low for %d connections (ulimit -Hn)" % (nofile, connections))
    os.makedirs(work, exist_ok=True)
    port = free_port()
    info = os.path.join(work, "tracker_info.txt")
    with open(info, "w") as f:
        f.write("127.0.0.1:%d\n" % port)
    env = dict(os.environ)
    if log_level:
        env["MBT_LOG_LEVEL"] = log_level
    state = os.path.join(work, "state")
    where = ["--store", store] if store else ["--state-dir", state]
    tracker = Process([bin_path("mbt-tracker"), info, "1"] + where,
                      log=os.path.join(work, "tracker.log"), env=env)
    loop = None
    try:
        wait_port(port, 20, tracker.proc)
        loop = Loop(port)
        log("tracker load: %d connections, %d users, %d files of %d MiB (%d sharers), login share %.2f %%, "
            "tracker log level %s; open-file limit %d"
            % (connections, users, files, file_mib, sharers, 100 * login_share, log_level or "default (info)",
               nofile))
        conns = setup(loop, connections, users, files, sharers, file_mib * 2 ** 20, log)
        spy = start_profile(tracker.pid, profile) if profile else None
        steps = []
        log(HEADER)
        for rate in rates:
            r = run_step(loop, conns, rate, seconds, drain, login_share, files, users, tracker.pid)
            steps.append(r)
            log(format_row(r))
            # Saturated: answers fell behind the offered rate (the backlog only
            # grows at higher rates, so they would measure the queue, not the tracker).
            if r["unanswered"] or r["closed_connections"] or r["done_rps"] < 0.8 * r["sent_rps"]:
                log("  saturated (completed %.0f of %.0f requests/s; %d unanswered %.0f s after the step; "
                    "%d connections closed): higher rates skipped"
                    % (r["done_rps"], r["sent_rps"], r["unanswered"], drain, r["closed_connections"]))
                break
            time.sleep(1.0)     # let the tracker's queues empty before the next rate
        if spy is not None:
            stop_profile(spy)
            log("  profile of the tracker during the steps: %s" % profile)
        return {"connections": connections, "users": users, "files": files, "file_mib": file_mib,
                "sharers": sharers, "login_share": login_share, "seconds": seconds,
                "log_level": log_level or "info", "steps": steps, "best": best(steps)}
    finally:
        if loop is not None:
            loop.close()
        tracker.stop(10)


HEADER = ("offered/s   sent/s   done/s   p50 ms   p99 ms   max ms  errors  logins/s  login p50/p99 ms"
          "  tracker CPU  loadgen CPU")


def format_row(r: dict) -> str:
    return ("%9.0f %8.0f %8.0f %8.1f %8.1f %8.1f %7d %9.1f %8.0f/%-8.0f %10.0f%% %11.0f%%"
            % (r["offered_rps"], r["sent_rps"], r["done_rps"], r["p50_ms"], r["p99_ms"], r["max_ms"],
               r["errors"], r["login_rps"], r["login_p50_ms"], r["login_p99_ms"], r["tracker_cpu_pct"],
               r["loadgen_cpu_pct"]))


def best(steps: List[dict]) -> Optional[dict]:
    """The highest completed rate whose p99 met the target (or None)."""
    ok = [s for s in steps if s["p99_ms"] < TARGET_P99_MS and not s["unanswered"]]
    return max(ok, key=lambda s: s["done_rps"]) if ok else None


def start_profile(pid: int, out: str):
    """py-spy (if installed next to this Python) sampling the tracker at 200 Hz, raw format."""
    import subprocess
    spy = bin_path("py-spy")
    if not os.path.exists(spy):
        print("  (no py-spy in %s: no profile)" % os.path.dirname(spy))
        return None
    p = subprocess.Popen([spy, "record", "-r", "200", "-f", "raw", "-o", out, "-p", str(pid), "--nonblocking"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)     # py-spy attaches
    return p


def stop_profile(p) -> None:
    import signal
    import subprocess
    p.send_signal(signal.SIGINT)        # py-spy writes its output on SIGINT
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def table(result: dict) -> str:
    """The whole curve as a text table, with the summary lines."""
    return "\n".join([HEADER] + [format_row(s) for s in result["steps"]] + [summary(result)])


def summary(result: dict) -> str:
    """The best rate meeting the p99 target, and the error replies seen."""
    lines = []
    b = result["best"]
    lines.append("best rate with p99 < %.0f ms: %s (target: >= %d requests/s)"
                 % (TARGET_P99_MS, "%.0f requests/s (p99 %.1f ms)" % (b["done_rps"], b["p99_ms"]) if b else "none",
                    TARGET_RPS))
    errs = {}
    for s in result["steps"]:
        for k, v in s["error_kinds"].items():
            errs[k] = errs.get(k, 0) + v
    if errs:
        lines.append("error replies by op:code: %s" % ", ".join("%s %d" % kv for kv in sorted(errs.items())))
    return "\n".join(lines)


def plot(result: dict, path: str) -> Optional[str]:
    """requests/s (completed) vs p99 (and p50) latency as a PNG; None if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")       # no display on the test machine
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    steps = result["steps"]
    x = [s["done_rps"] for s in steps]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(x, [s["p99_ms"] for s in steps], "o-", label="p99")
    ax.plot(x, [s["p50_ms"] for s in steps], "s--", label="p50")
    for s in steps:
        ax.annotate("%gk offered" % (s["offered_rps"] / 1000), (s["done_rps"], s["p99_ms"]),
                    textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.axhline(TARGET_P99_MS, color="red", linestyle=":", label="target p99 %.0f ms" % TARGET_P99_MS)
    ax.axvline(TARGET_RPS, color="green", linestyle=":", label="target %d requests/s" % TARGET_RPS)
    ax.set_yscale("log")
    ax.set_xlabel("requests/s completed (list_files + get_peers + %.1f %% logins)" % (100 * result["login_share"]))
    ax.set_ylabel("latency, ms (log scale)")
    ax.set_title("mbt-tracker, %d connected peers, open-loop load" % result["connections"])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    if any(a == "--trackers" or a.startswith("--trackers=") for a in sys.argv[1:]):
        # The fleet comparison: 10,000 peers; ceiling, embedded, 1 and N trackers over PostgreSQL.
        import tracker_scale
        return tracker_scale.main(sys.argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", help="state and logs (default: a new directory under $TMPDIR)")
    ap.add_argument("--rates", default=",".join(str(r) for r in DEFAULT_RATES),
                    help="offered requests/s, comma separated (default %(default)s)")
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=4.0, help="per rate (default 4)")
    ap.add_argument("--drain", type=float, default=5.0, help="wait for late answers after each rate (default 5 s)")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--sharers", type=int, default=100, help="connections that share a file (default 100)")
    ap.add_argument("--file-mib", type=int, default=64,
                    help="size of the shared files: sets the manifest that get_peers returns (default 64 MiB, "
                         "128 piece hashes)")
    ap.add_argument("--login-share", type=float, default=0.001, help="fraction of requests that are logins")
    ap.add_argument("--log-level", help="the tracker's MBT_LOG_LEVEL (default: its own default, info)")
    ap.add_argument("--plot", help="write the PNG here")
    ap.add_argument("--profile", help="py-spy raw profile of the tracker during the steps, written here")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--store", help="postgresql://... URL of an empty database: the tracker keeps its state"
                    " there (--store) instead of an SQLite state dir")
    ap.add_argument("--trackers", type=int, help="run the 10,000-peer fleet comparison (tracker_scale.py; "
                    "see its --help) with this many trackers over PostgreSQL")
    a = ap.parse_args()
    rates = [float(x) for x in a.rates.split(",") if x]
    if not rates or len(rates) > 20 or max(rates) > 100000 or a.seconds > 60 or a.connections > 20000:
        ap.error("at most 20 rates up to 100000/s, --seconds <= 60, --connections <= 20000")
    work = a.work or tempfile.mkdtemp(prefix="mbt-tracker-load-")
    r = curve(work, rates, a.connections, a.seconds, a.drain, a.users, a.files, a.sharers, a.file_mib,
              a.login_share, a.log_level, profile=a.profile, store=a.store)
    print(summary(r))
    path = plot(r, a.plot or os.path.join(work, "tracker-curve.png"))
    print("plot: %s" % (path or "not written (matplotlib is not installed: pip install '.[bench]')"))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
