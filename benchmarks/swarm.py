"""Benchmark jobs run with real mbt processes on loopback (used by run.py and compare.py).

Everything is driven through the consoles exactly as a user's script would:
``download_file`` is sent, then ``show_downloads`` is polled every 20 ms until
``[C]``; "end to end" is the time between the two.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from typing import Dict, List, Optional

from mbt.driver import Console, Process, bin_path, free_port, wait_port

MB = 1e6
MiB = 1 << 20


def make_data(path: str, size: int) -> None:
    """A file of random bytes (reused between runs if it has the right size)."""
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    with open(path + ".tmp", "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n
    os.replace(path + ".tmp", path)


def proc_stats(pid: int) -> Dict[str, float]:
    """CPU seconds (user+sys) and peak RSS (MiB) of a live process."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = 0.0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024.0
    return {"cpu": cpu, "rss": hwm}


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all CPUs, everything but idle and iowait).

    Sampled around each run: busy time not spent by the leecher or the
    seeders is other load (the tracker, this driver, kernel threads, other
    users of a shared VM), printed so that a disturbed run is visible.
    """
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


class Swarm:
    """One tracker plus seeders sharing ``data`` in group ``bench``."""

    def __init__(self, work: str, data: str, seeders: int, upload_rate: Optional[str] = None,
                 tls: bool = False) -> None:
        self.work = work
        self.data = data
        self.tls_args: List[str] = tls_flags(work) if tls else []
        self.procs: List[Process] = []
        self.seeders: List[Console] = []
        try:
            self._start(seeders, upload_rate)
        except BaseException:
            self.stop()     # never leave a tracker or seeder running after a failed set-up
            raise

    def _start(self, seeders: int, upload_rate: Optional[str]) -> None:
        work, data = self.work, self.data
        port = free_port()
        self.info = os.path.join(work, "tracker_info.txt")
        with open(self.info, "w") as f:
            f.write("127.0.0.1:%d\n" % port)
        t = Process([bin_path("mbt-tracker"), self.info, "1", "--state-dir", os.path.join(work, "tracker")]
                    + self.tls_args, log=os.path.join(work, "tracker.log"))
        self.procs.append(t)
        wait_port(port, 20, t.proc)
        self.leechers = 0
        self.hash_times: List[float] = []     # upload_file reply time of every seeder
        self.rate_args = ["--upload-rate", upload_rate] if upload_rate else []
        for i in range(seeders):
            c = self.peer("seed%d" % i, extra=self.rate_args)
            if i == 0:
                self.must(c, "create_group bench")
            else:
                self.must(c, "join_group bench")
                self.must(self.seeders[0], "accept_request bench seed%d" % i)
            t0 = time.monotonic()
            self.must(c, "upload_file %s bench" % data, timeout=600)
            self.hash_seconds = time.monotonic() - t0
            self.hash_times.append(self.hash_seconds)
            self.seeders.append(c)
        self.name = os.path.basename(data)

    def must(self, con: Console, line: str, timeout: float = 60) -> str:
        reply = con.cmd(line, timeout)
        if reply.startswith("error: "):
            raise RuntimeError("%s: %r -> %s" % (con.address, line, reply))
        return reply

    def peer(self, name: str, extra=None) -> Console:
        d = os.path.join(self.work, name)
        os.makedirs(d, exist_ok=True)
        c = Console("127.0.0.1:%d" % free_port(), self.info, os.path.join(d, "state"), cwd=d,
                    extra=(extra or []) + self.tls_args, log=os.path.join(d, "console.err"))
        self.procs.append(c)
        self.must(c, "create_user %s pw" % name)
        self.must(c, "login %s pw" % name)
        return c

    def leecher(self, extra=None) -> Console:
        self.leechers += 1
        name = "leech%d" % self.leechers
        c = self.peer(name, extra=extra)
        self.must(c, "join_group bench")
        self.must(self.seeders[0], "accept_request bench %s" % name)
        os.makedirs(os.path.join(self.work, name, "dl"), exist_ok=True)
        return c

    def download(self, con: Console, timeout: float = 600) -> float:
        """Start a download and wait for [C]; return seconds end to end."""
        t0 = time.monotonic()
        self.must(con, "download_file bench %s dl" % self.name)
        return self.wait_done(con, t0, timeout)

    def wait_done(self, con: Console, t0: float, timeout: float = 600) -> float:
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            reply = con.cmd("show_downloads")
            if reply.startswith("[C]"):
                return time.monotonic() - t0
            if reply.startswith("[F]"):
                raise RuntimeError("download failed: %s" % reply)
            time.sleep(0.02)
        raise RuntimeError("download not complete after %.0fs" % timeout)

    def verify(self, con: Console) -> bool:
        path = os.path.join(self.work, con_name(con, self), "dl", self.name)
        return files_equal(path, self.data)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop(5)


def con_name(con: Console, swarm: Swarm) -> str:
    return os.path.basename(os.path.dirname(con.argv[4]))


def files_equal(a: str, b: str) -> bool:
    return subprocess.run(["cmp", "-s", a, b]).returncode == 0


def leech_once(swarm: Swarm) -> Dict:
    """One download by a fresh leecher from every seeder of ``swarm``; the leecher is stopped after.

    CPU is counted for the download only (``download_file`` -> ``[C]``), not the
    interpreter start-up and login before it, so it compares with libtorrent's
    figure taken the same way (``lt_job.py``). Peak RSS is the process's
    high-water mark (``VmHWM``), start-up included.
    """
    size = os.path.getsize(swarm.data)
    leech = swarm.leecher()
    try:
        cpu0 = proc_stats(leech.pid)["cpu"]
        seeder_cpu0 = sum(proc_stats(s.pid)["cpu"] for s in swarm.seeders)
        busy0 = machine_busy()
        secs = swarm.download(leech)
        busy = machine_busy() - busy0
        st = proc_stats(leech.pid)
        seeder_cpu = sum(proc_stats(s.pid)["cpu"] for s in swarm.seeders) - seeder_cpu0
        ok = swarm.verify(leech)
    finally:
        leech.stop(10)
        shutil.rmtree(os.path.join(swarm.work, con_name(leech, swarm), "dl"), ignore_errors=True)
    settle()
    return {"seconds": secs, "mbps": size / secs / MB, "cpu": st["cpu"] - cpu0, "cpu_total": st["cpu"],
            "rss": st["rss"], "seeder_cpu": seeder_cpu, "other_cpu": busy - (st["cpu"] - cpu0) - seeder_cpu,
            "verified": ok}


def settle() -> None:
    """Between runs (not timed): write back the last download's dirty pages.

    Otherwise the kernel's writeback of run N lands in the middle of run N+1.
    """
    os.sync()
    time.sleep(0.5)


def summarize(results: List[Dict], size: int) -> Dict:
    """Medians over runs (each figure separately) plus the raw runs."""
    return {"runs": results,
            "mbps": statistics.median(r["mbps"] for r in results),
            "cpu": statistics.median(r["cpu"] for r in results),
            "rss": statistics.median(r["rss"] for r in results),
            "seeder_cpu_per_gb": statistics.median(r["seeder_cpu"] for r in results) / (size / 1e9),
            "verified": all(r["verified"] for r in results)}


def tls_flags(work: str) -> List[str]:
    """A throwaway CA and one certificate (IP SAN 127.0.0.1) that every process of the job uses."""
    from mbt import certs
    d = os.path.join(work, "certs")
    os.makedirs(d, exist_ok=True)
    ca_key, ca_cert = certs.make_ca()
    certs.write_pair(d, "ca", ca_key, ca_cert)
    key, cert = certs.make_cert(ca_key, ca_cert, "bench")
    cert_path, key_path = certs.write_pair(d, "bench", key, cert)
    return ["--tls-cert", cert_path, "--tls-key", key_path, "--tls-ca", os.path.join(d, "ca.pem")]


def one_to_many_seeders(work: str, data: str, seeders: int = 4, runs: int = 3, tls: bool = False) -> Dict:
    """One leecher downloads ``data`` from ``seeders`` seeders; medians over ``runs``."""
    swarm = Swarm(work, data, seeders, tls=tls)
    try:
        results = [leech_once(swarm) for _ in range(runs)]
    finally:
        swarm.stop()
    return summarize(results, os.path.getsize(data))


class UploadSampler:
    """Bytes each peer has uploaded, from the kernel's per-socket counters (``ss -ti``).

    mbt has no upload counter to query, and a finished leecher closes its
    connections (taking their counters with it), so a thread samples every
    established loopback socket every 0.1 s and keeps each one's highest
    ``bytes_acked``. The sums are therefore a slight under-estimate. Without
    ``ss`` (iproute2) it records nothing.
    """

    def __init__(self) -> None:
        import threading
        self.best: Dict[tuple, int] = {}
        self.available = shutil.which("ss") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "UploadSampler":
        if self.available:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        import re
        acked = re.compile(r"bytes_acked:(\d+)")
        deadline = time.monotonic() + 1800      # bounded, whatever happens to the caller
        while not self._stop.is_set() and time.monotonic() < deadline:
            out = subprocess.run(["ss", "-tinH", "state", "established", "src", "127.0.0.1"],
                                 capture_output=True, text=True).stdout.splitlines()
            # ss prints each socket on two lines: addresses, then the TCP info.
            for head, info in zip(out, out[1:]):
                f = head.split()
                m = acked.search(info)
                if len(f) >= 4 and m and ":" in f[2]:
                    key = (f[2], f[3])
                    self.best[key] = max(self.best.get(key, 0), int(m.group(1)))
            self._stop.wait(0.1)

    def uploaded(self, address: str) -> int:
        """Bytes sent by the peer serving on ``address`` (its server sockets' local address)."""
        return sum(v for (local, _remote), v in self.best.items() if local == address)


def fluid_bound(size: float, leechers: int, rate: float) -> float:
    """Least time for 1 seeder + N leechers, every peer uploading at most ``rate`` bytes/s.

    The seeder must send every byte at least once (F/u), and the N copies
    (N*F bytes) can be uploaded no faster than all N+1 peers together
    (u + N*u).
    """
    return max(size / rate, leechers * size / (rate + leechers * rate))


def one_seeder_many_leechers(work: str, data: str, leechers: int = 8, upload_rate: Optional[str] = None) -> Dict:
    """One seeder, ``leechers`` leechers starting together; total time until all are [C].

    Every console is polled in turn, so each leecher gets its own finish time.
    ``seeder_upload`` is what the seeder sent, in file sizes: the fluid bound
    assumes it sends each byte about once and the leechers trade the rest.
    """
    swarm = Swarm(work, data, 1, upload_rate=upload_rate)
    sampler = UploadSampler()
    size = os.path.getsize(data)
    try:
        cons = [swarm.leecher(extra=swarm.rate_args) for _ in range(leechers)]
        pids = [c.pid for c in cons] + [s.pid for s in swarm.seeders]
        sampler.start()
        cpu0 = sum(proc_stats(p)["cpu"] for p in pids)
        busy0 = machine_busy()
        t0 = time.monotonic()
        for c in cons:
            swarm.must(c, "download_file bench %s dl" % swarm.name)
        times: Dict[int, float] = {}
        deadline = t0 + 600
        while len(times) < len(cons) and time.monotonic() < deadline:
            for i, c in enumerate(cons):
                if i in times:
                    continue
                reply = c.cmd("show_downloads")
                if reply.startswith("[C]"):
                    times[i] = time.monotonic() - t0
                elif reply.startswith("[F]"):
                    raise RuntimeError("download failed: %s" % reply)
            time.sleep(0.02)
        if len(times) < len(cons):
            raise RuntimeError("%d of %d downloads not complete after 600 s" % (len(cons) - len(times), len(cons)))
        # CPU of every mbt process of the job from the start until the last is done:
        # on a 2-core machine this job can be bound by it (docs/performance.rst).
        cpu = sum(proc_stats(p)["cpu"] for p in pids) - cpu0
        busy = machine_busy() - busy0
        sampler.stop()
        ok = all(swarm.verify(c) for c in cons)
        out = {"total_seconds": max(times.values()), "times": [times[i] for i in range(len(cons))], "verified": ok,
               "cpu": cpu, "machine_cpu": busy}
        if sampler.available:
            out["seeder_upload"] = sampler.uploaded(swarm.seeders[0].address) / size
            out["leecher_upload"] = [sampler.uploaded(c.address) / size for c in cons]
        return out
    finally:
        sampler.stop()
        swarm.stop()
