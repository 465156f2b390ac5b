"""Whole mbt downloads direct vs connect-back vs relay, and the time to the first piece.

    sudo .venv/bin/python benchmarks/relay_peers.py [--mb 128] [--rounds 3] [--first-runs 3]

Everything runs on the loopback of one private network namespace (made and
removed by this script; needs root, ``ip`` and ``nft``): a tracker, an
``mbt-relay``, a seeder and a downloader, all real processes. How the
downloader reaches the seeder is forced with nftables in that namespace,
exactly as a NAT would: new TCP connections to the seeder's port (and, for
the relay, the downloader's) are refused, so the tracker's login probe finds
the address unreachable and the peers use connect-back or the relay:

* ``direct``: no rule;
* ``connect-back``: the seeder's port refuses (the seeder dials out);
* ``relay``: both ports refuse (both dial the relay).

Per mode and round, a fresh downloader (new state dir) logs in and fetches

* a 64 KiB file (one piece): the seconds from ``download_file`` until
  ``show_downloads`` says ``[C]`` -- the time to the first (and only) piece,
  i.e. tracker round trips, connect (or connect_peer, the dial push and the
  seeder's call), HELLO/CHALLENGE/PROOF, one REQUEST and its PIECE;
* a ``--mb`` MiB file: MB/s from ``download_file`` to ``[C]``; in relay mode
  also the relay's CPU seconds per GB relayed (from /proc).

Modes alternate within each round (the box's load hits all alike); the best
of the rounds is printed.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from mbt.driver import Console, Process, bin_path  # noqa: E402

TRACKER, RELAY, SEEDER, FETCHER = 7300, 7400, 7001, 7002
MODES = {"direct": [], "connect-back": [SEEDER], "relay": [SEEDER, FETCHER]}


def sh(*argv, check=True, input=None):
    return subprocess.run(list(argv), check=check, input=input, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def cpu_seconds(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, root: str, mb: int) -> None:
        self.root = root
        self.ns = "mbtbench%d" % os.getpid()
        self.mb = mb
        self.procs = []

    def prefix(self):
        return ["ip", "netns", "exec", self.ns]

    def up(self) -> None:
        sh("ip", "netns", "add", self.ns)
        sh(*self.prefix(), "ip", "link", "set", "lo", "up")
        info = os.path.join(self.root, "info")
        with open(info, "w") as f:
            f.write("127.0.0.1:%d\nrelay 127.0.0.1:%d\n" % (TRACKER, RELAY))
        self.info = info
        self.start([bin_path("mbt-tracker"), info, "1", "--state-dir", os.path.join(self.root, "t")], "tracker")
        self.relay = self.start([bin_path("twistd"), "-n", "--pidfile", "", "mbt-relay", "--listen",
                                 "tcp:%d:interface=127.0.0.1" % RELAY], "relay")
        time.sleep(1.0)
        self.sam = self.console("sam", SEEDER)
        self.until(self.sam, "create_user sam pw", "user sam created")
        self.until(self.sam, "login sam pw", "logged in as sam")
        self.sam.cmd("create_group club")
        fay = self.console("fay0", FETCHER)
        self.until(fay, "create_user fay pw", "user fay created")
        fay.cmd("login fay pw")
        fay.cmd("join_group club")
        self.until(self.sam, "accept_request club fay", "fay is now a member")
        fay.stop()
        with open(os.path.join(self.root, "sam", "small.bin"), "wb") as f:
            f.write(os.urandom(64 * 1024))
        with open(os.path.join(self.root, "sam", "big.bin"), "wb") as f:
            for _ in range(self.mb):
                f.write(os.urandom(1 << 20))
        for name in ("small.bin", "big.bin"):
            assert self.sam.cmd("upload_file %s club" % name, timeout=300).startswith("shared")

    def start(self, argv, name):
        p = Process(self.prefix() + argv, cwd=self.root, log=os.path.join(self.root, name + ".log"))
        self.procs.append(p)
        return p

    def console(self, name, port):
        d = os.path.join(self.root, name)
        os.makedirs(d, exist_ok=True)
        c = Console("127.0.0.1:%d" % port, self.info, os.path.join(d, "state"), cwd=d, prefix=self.prefix())
        self.procs.append(c)
        return c

    @staticmethod
    def until(console, line, expect, timeout=20.0):
        deadline = time.monotonic() + timeout
        while True:
            reply = console.cmd(line)
            if reply.startswith(expect):
                return reply
            if time.monotonic() > deadline:
                raise RuntimeError("%s: %s" % (line, reply))
            time.sleep(0.2)

    def refuse(self, ports) -> None:
        """New connections to ``ports`` are refused (as behind NAT); the seeder logs in again to be re-probed."""
        sh(*self.prefix(), "nft", "flush", "ruleset")
        if ports:
            rules = ("table inet nat_like {\n chain input {\n  type filter hook input priority 0;\n"
                     "  tcp dport { %s } ct state new reject with tcp reset\n }\n}\n"
                     % ", ".join(str(p) for p in ports))
            sh(*self.prefix(), "nft", "-f", "-", input=rules)
        self.sam.cmd("logout")
        self.until(self.sam, "login sam pw", "logged in as sam")
        time.sleep(0.5)                     # the tracker's probe of the seeder's address

    def fetch(self, run: str, name: str):
        """Seconds from download_file to [C] for a fresh downloader; and the relay's CPU seconds meanwhile."""
        fay = self.console(run, FETCHER)
        try:
            self.until(fay, "login fay pw", "logged in as fay")
            time.sleep(0.5)                 # the probe of the downloader's address
            cpu0 = cpu_seconds(self.relay.pid)
            start = time.monotonic()
            assert fay.cmd("download_file club %s ." % name).startswith("downloading")
            while True:
                status = fay.cmd("show_downloads")
                if status.startswith(("[C]", "[F]")):
                    break
                if time.monotonic() - start > 300:
                    raise RuntimeError("download did not finish: %s" % status)
            seconds = time.monotonic() - start
            cpu = cpu_seconds(self.relay.pid) - cpu0
            assert status.startswith("[C]"), status
            return seconds, cpu
        finally:
            fay.stop()
            shutil.rmtree(os.path.join(self.root, run), ignore_errors=True)

    def down(self) -> None:
        for p in reversed(self.procs):
            p.stop(5)
        sh("ip", "netns", "del", self.ns, check=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--first-runs", type=int, default=3, help="64 KiB downloads per mode and round")
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("nft"):
        raise SystemExit("needs root and nft (a private network namespace)")
    first = {m: 1e9 for m in MODES}
    whole = {m: 1e9 for m in MODES}
    relay_cpu = 1e9
    root = tempfile.mkdtemp(prefix="mbt-relay-peers-")
    bench = Bench(root, args.mb)
    try:
        bench.up()
        bench.refuse([])
        bench.fetch("warm-up", "big.bin")   # page cache, the seeder's first read of its share
        runs = 0
        for _ in range(args.rounds):
            for mode, ports in MODES.items():
                bench.refuse(ports)
                for _ in range(args.first_runs):
                    runs += 1
                    first[mode] = min(first[mode], bench.fetch("f%d" % runs, "small.bin")[0])
                runs += 1
                seconds, cpu = bench.fetch("f%d" % runs, "big.bin")
                whole[mode] = min(whole[mode], seconds)
                if mode == "relay":
                    relay_cpu = min(relay_cpu, cpu)
    finally:
        bench.down()
        shutil.rmtree(root, ignore_errors=True)
    size = args.mb * (1 << 20) / 1e6
    for mode in MODES:
        print("%-13s first piece (64 KiB file) %6.0f ms   %d MiB file %7.1f MB/s  (%3.0f %% of direct)"
              % (mode, first[mode] * 1000, args.mb, size / whole[mode], 100.0 * whole["direct"] / whole[mode]))
    print("relay CPU during the relayed downloads: %.2f s per GB" % (relay_cpu / (size / 1e3)))


if __name__ == "__main__":
    main()
