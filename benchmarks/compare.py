"""``make bench-compare``: mbt and libtorrent on the same job, back to back, in one run.

The job: one leecher downloads one file (1 GiB of random bytes by default)
from 4 local seeders, to disk, on 127.0.0.1. Both systems get the same file,
the same disk and the same machine, and their runs alternate (mbt, libtorrent,
mbt, ...) so that the noise of a shared VM hits both alike. Each figure is the
median of ``--runs`` runs.

* **mbt**: ``swarm.leech_once`` -- a fresh ``mbt-client`` logs in, then
  ``download_file`` is sent and ``show_downloads`` polled every 20 ms until
  ``[C]``; end to end = between the two.
* **libtorrent 2.0** (Debian's ``python3-libtorrent``, run by ``lt_job.py``
  under ``/usr/bin/python3``) with ``high_performance_seed()`` on the seeders
  and the leecher -- the anchors' ``bt-hp`` configuration, ~480 MB/s when it was
  measured. Four persistent seeders; a fresh leecher process per run; end to
  end = adding the torrent -> ``torrent_finished_alert`` (every piece checked).
  Peers come from a local ``opentracker`` when it is installed, as in the
  anchors: with ``connect_peer()`` alone, libtorrent dials only at its next
  0.5 s session tick, which would hand mbt 0.5 s per run (``--lt-peers
  direct`` shows that variant).

Printed for both: end-to-end MB/s (10^6 bytes/s), leecher CPU seconds during
the download (user+sys, all threads), leecher peak RSS (``VmHWM``; for
libtorrent this counts its mmap-ed download file, so its anonymous memory is
shown too), seeders' CPU seconds per GB delivered, and the ratios mbt /
libtorrent. Every download is compared with the source (``cmp``) after the
timed part.

If libtorrent or mktorrent is not installed (``make bench-compare`` tries
``apt-get install`` first), the libtorrent half is skipped with a message and
mbt's figures are still printed (exit status 0).

Data files live in ``--work`` (default ``$MBT_BENCH_DIR`` or /tmp/mbt-bench).
Nothing is downloaded from outside this machine; all traffic is on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from swarm import (MB, MiB, Swarm, files_equal, fluid_bound, leech_once, machine_busy, make_data,  # noqa: E402
                   one_seeder_many_leechers, settle, summarize)

from mbt.driver import free_port, wait_port  # noqa: E402

#: Debian's Python: the only interpreter here with the libtorrent bindings.
LT_PY = "/usr/bin/python3"
LT_JOB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lt_job.py")
#: 2**19 = 512 KiB pieces, the size mbt uses.
PIECE_EXP = "19"


def libtorrent_missing() -> Optional[str]:
    """Why the libtorrent half cannot run here, or None if it can."""
    if not os.path.exists(LT_PY):
        return "%s not found" % LT_PY
    if subprocess.run([LT_PY, "-c", "import libtorrent"], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL).returncode != 0:
        return "%s cannot import libtorrent (package python3-libtorrent)" % LT_PY
    if shutil.which("mktorrent") is None:
        return "mktorrent is not installed (package mktorrent)"
    return None


def cpu_seconds(pid: int) -> float:
    """user+sys CPU seconds of a live process (all its threads)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Child:
    """A background process in its own process group, stopped for sure by ``stop()``."""

    def __init__(self, argv: List[str], log: str, stdout_pipe: bool = False) -> None:
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE if stdout_pipe else self.log,
                                     stderr=self.log, stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                pass
        self.log.close()


class LtSwarm:
    """``seeders`` persistent libtorrent seeders of ``data``, optionally behind an opentracker."""

    def __init__(self, work: str, data: str, seeders: int, high_perf: bool, use_tracker: bool,
                 upload_rate: float = 0) -> None:
        self.work = work
        self.data = data
        self.high_perf = high_perf
        self.use_tracker = use_tracker
        self.upload_rate = upload_rate
        self.children: List[Child] = []
        self.seeder_pids: List[int] = []
        self.ports: List[int] = []
        try:
            self._start(seeders)
        except BaseException:
            self.stop()
            raise

    def _start(self, seeders: int) -> None:
        tracker_port = free_port()
        # The announce URL is written into the torrent, so a new torrent per set-up.
        self.torrent = os.path.join(self.work, os.path.basename(self.data) + ".torrent")
        if os.path.exists(self.torrent):
            os.unlink(self.torrent)
        subprocess.run(["mktorrent", "-l", PIECE_EXP, "-a", "http://127.0.0.1:%d/announce" % tracker_port,
                        "-o", self.torrent, self.data], check=True, stdout=subprocess.DEVNULL)
        if self.use_tracker:
            self._start_opentracker(tracker_port)
        for i in range(seeders):
            port = free_port()
            argv = [LT_PY, LT_JOB, "seed", self.torrent, "--port", str(port),
                    "--save", os.path.dirname(os.path.abspath(self.data)),
                    "--stats", os.path.join(self.work, "seed%d.json" % i)] + self._flags()
            c = Child(argv, os.path.join(self.work, "seed%d.log" % i), stdout_pipe=True)
            self.children.append(c)
            self.seeder_pids.append(c.proc.pid)
            self.ports.append(port)
        # Each seeder checks every piece of its copy before it says READY.
        deadline = time.monotonic() + 300
        for c in self.children[-seeders:]:
            line = self._readline(c.proc, deadline)
            if not line.startswith("READY"):
                raise RuntimeError("libtorrent seeder did not start: %r (see %s)" % (line, c.log.name))

    def _flags(self) -> List[str]:
        return ((["--high-perf"] if self.high_perf else []) + (["--tracker"] if self.use_tracker else [])
                + (["--upload-rate", str(self.upload_rate)] if self.upload_rate else []))

    @staticmethod
    def _readline(proc: subprocess.Popen, deadline: float) -> str:
        buf = b""
        fd = proc.stdout.fileno()
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return buf.decode() + " (timeout)"
            chunk = os.read(fd, 1)
            if not chunk:
                break
            buf += chunk
        return buf.decode().strip()

    def _start_opentracker(self, port: int) -> None:
        """opentracker as the anchors ran it (Debian builds it in whitelist mode)."""
        d = os.path.join(self.work, "opentracker")
        os.makedirs(d, exist_ok=True)
        info_hash = subprocess.run(
            [LT_PY, "-c", "import libtorrent as lt, sys; print(lt.torrent_info(sys.argv[1]).info_hashes().v1)",
             self.torrent], check=True, capture_output=True, text=True).stdout.strip()
        with open(os.path.join(d, "whitelist.txt"), "w") as f:
            f.write(info_hash + "\n")
        # opentracker chroots into -d, so the whitelist is named relative to that root.
        with open(os.path.join(d, "ot.conf"), "w") as f:
            f.write("access.whitelist /whitelist.txt\n")
        c = Child(["opentracker", "-i", "127.0.0.1", "-p", str(port), "-P", str(port), "-d", d,
                   "-u", "nobody", "-f", os.path.join(d, "ot.conf")], os.path.join(self.work, "opentracker.log"))
        self.children.append(c)
        wait_port(port, 20, c.proc)

    def leech_once(self) -> Dict:
        """One download by a fresh libtorrent leecher process."""
        dl = os.path.join(self.work, "dl")
        shutil.rmtree(dl, ignore_errors=True)
        os.makedirs(dl)
        js = os.path.join(self.work, "leech.json")
        # A fresh listen port per run: seeders remember earlier leechers' host:port
        # and would dial in to a later one (see the anchors' README, point 8).
        argv = [LT_PY, LT_JOB, "leech", self.torrent, "--port", str(free_port()), "--save", dl,
                "--json", js] + self._flags()
        if not self.use_tracker:
            argv += ["--peers", ",".join("127.0.0.1:%d" % p for p in self.ports)]
        seeder_cpu0 = sum(cpu_seconds(p) for p in self.seeder_pids)
        busy0 = machine_busy()
        with open(os.path.join(self.work, "leech.log"), "ab") as log:
            rc = subprocess.run(argv, stdout=log, stderr=log, timeout=660).returncode
        busy = machine_busy() - busy0
        seeder_cpu = sum(cpu_seconds(p) for p in self.seeder_pids) - seeder_cpu0
        with open(js) as f:
            j = json.load(f)
        if rc != 0 or not j["ok"]:
            raise RuntimeError("libtorrent leecher failed (rc %d): %s" % (rc, j.get("errors")))
        ok = files_equal(os.path.join(dl, os.path.basename(self.data)), self.data)
        shutil.rmtree(dl, ignore_errors=True)
        settle()
        size = j["size"]
        return {"seconds": j["add_to_finished_s"], "mbps": size / j["add_to_finished_s"] / MB,
                "mbps_from_process_start": size / j["start_to_finished_s"] / MB,
                "first_payload_s": j["add_to_first_payload_s"],
                "cpu": j["cpu_download_s"], "rss": j["vm_hwm_kb"] / 1024.0,
                "rss_anon": j["peak_rss_anon_kb"] / 1024.0, "seeder_cpu": seeder_cpu, "verified": ok,
                # The leecher's whole process life here (start-up and exit included): a rough figure.
                "other_cpu": busy - j["cpu_at_finish_s"] - seeder_cpu}

    def swarm_once(self, leechers: int) -> Dict:
        """The 1 -> N job: ``leechers`` fresh leechers, set up, then started together.

        Each leecher seeds on after it finishes (as mbt's do), until every one
        is done. Returns the time from the common start until the last
        finished, every finish time, and what each peer uploaded (payload, from
        libtorrent's own counters).
        """
        procs: List[subprocess.Popen] = []
        logs = []
        jsons = []
        ports = [free_port() for _ in range(leechers)]
        try:
            for i in range(leechers):
                dl = os.path.join(self.work, "dl%d" % i)
                shutil.rmtree(dl, ignore_errors=True)
                os.makedirs(dl)
                js = os.path.join(self.work, "leech%d.json" % i)
                if os.path.exists(js):
                    os.unlink(js)
                jsons.append(js)
                argv = [LT_PY, LT_JOB, "leech", self.torrent, "--port", str(ports[i]), "--save", dl,
                        "--json", js, "--swarm"] + self._flags()
                if not self.use_tracker:
                    others = ["127.0.0.1:%d" % p for p in self.ports + ports[:i]]
                    argv += ["--peers", ",".join(others)]
                log = open(os.path.join(self.work, "leech%d.log" % i), "ab")
                logs.append(log)
                procs.append(subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                              start_new_session=True))
            deadline = time.monotonic() + 120
            for p in procs:
                line = self._readline(p, deadline)
                if line != "READY":
                    raise RuntimeError("libtorrent leecher did not get ready: %r" % line)
            up0 = self._seeder_upload()
            t0 = time.time()
            for p in procs:
                p.stdin.write(b"GO\n")
                p.stdin.flush()
            finished: Dict[int, float] = {}
            deadline = time.monotonic() + 600
            while len(finished) < leechers and time.monotonic() < deadline:
                for i, js in enumerate(jsons):
                    if i in finished or not os.path.exists(js):
                        if i not in finished and procs[i].poll() is not None:
                            raise RuntimeError("libtorrent leecher %d exited early (rc %s)" % (i, procs[i].returncode))
                        continue
                    with open(js) as f:
                        j = json.load(f)
                    if not j["ok"]:
                        raise RuntimeError("libtorrent leecher %d failed: %s" % (i, j.get("errors")))
                    finished[i] = j["wall_finished"] - t0
                time.sleep(0.02)
            if len(finished) < leechers:
                raise RuntimeError("%d libtorrent leechers not done after 600 s" % (leechers - len(finished)))
            time.sleep(0.5)         # the seeder's stats file is rewritten every 0.2 s
            seeder_up = self._seeder_upload() - up0
        finally:
            for p in procs:
                if p.poll() is None:
                    try:
                        os.killpg(p.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)
            for log in logs:
                log.close()
        ups = []
        for js in jsons:
            with open(js) as f:
                ups.append(json.load(f)["payload_upload"])
        name = os.path.basename(self.data)
        ok = all(files_equal(os.path.join(self.work, "dl%d" % i, name), self.data) for i in range(leechers))
        for i in range(leechers):
            shutil.rmtree(os.path.join(self.work, "dl%d" % i), ignore_errors=True)
        size = os.path.getsize(self.data)
        return {"total_seconds": max(finished.values()), "times": [finished[i] for i in range(leechers)],
                "seeder_upload": seeder_up / size, "leecher_upload": [u / size for u in ups], "verified": ok}

    def _seeder_upload(self) -> int:
        total = 0
        for i in range(len(self.ports)):
            path = os.path.join(self.work, "seed%d.json" % i)
            deadline = time.monotonic() + 5
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.05)
            with open(path) as f:
                total += json.load(f)["payload_upload"]
        return total

    def stop(self) -> None:
        for c in reversed(self.children):
            c.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=os.environ.get("MBT_BENCH_DIR", "/tmp/mbt-bench"))
    ap.add_argument("--runs", type=int, default=3, help="runs of each system (median reported; default 3)")
    ap.add_argument("--size-mib", type=int, default=1024, help="file size in MiB (default 1024)")
    ap.add_argument("--seeders", type=int, default=4)
    ap.add_argument("--lt-peers", choices=["auto", "tracker", "direct"], default="auto",
                    help="how the libtorrent leecher finds its seeders: a local opentracker "
                         "(auto: if installed) or connect_peer() (direct)")
    ap.add_argument("--lt-default-settings", action="store_true",
                    help="libtorrent without high_performance_seed() (the anchors' plain bt suite)")
    ap.add_argument("--skip-libtorrent", action="store_true")
    ap.add_argument("--no-tls", action="store_true", help="skip mbt's 4->1 runs with TLS on every channel")
    ap.add_argument("--no-swarm", action="store_true", help="skip the 1 seeder -> N leechers job")
    ap.add_argument("--only-swarm", action="store_true", help="only the 1 seeder -> N leechers job")
    ap.add_argument("--swarm-leechers", type=int, default=16)
    ap.add_argument("--swarm-size-mib", type=int, default=256)
    ap.add_argument("--swarm-rate", default="25M", help="upload cap of every process in the swarm job")
    ap.add_argument("--json", help="also write every figure here")
    args = ap.parse_args()
    if args.runs < 1 or args.runs > 20:
        ap.error("--runs must be 1-20")

    os.makedirs(args.work, exist_ok=True)
    size = args.size_mib * MiB
    # Same names as run.py, so the 1 GiB file is generated once for both.
    label = "1 GiB" if args.size_mib == 1024 else "%d MiB" % args.size_mib
    data = os.path.join(args.work, "data-%s.bin" % label.replace(" ", ""))
    print("bench-compare %s: one leecher downloads a %s file from %d seeders, to disk; %d runs each, alternating"
          % (datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), label, args.seeders, args.runs), flush=True)
    print("  machine: %d CPUs, load average %.2f; work dir %s (%s free)"
          % (os.cpu_count(), os.getloadavg()[0], args.work, _free(args.work)), flush=True)
    print("  ('other CPU' of a run: the machine's busy CPU during it, less the leecher's and the seeders': "
          "tracker, this driver, kernel, other users of the machine)", flush=True)
    make_data(data, size)

    why = "skipped by --skip-libtorrent" if args.skip_libtorrent else libtorrent_missing()
    use_tracker = False
    if why is None:
        have_ot = shutil.which("opentracker") is not None
        if args.lt_peers == "tracker" and not have_ot:
            why = "opentracker is not installed (package opentracker)"
        use_tracker = args.lt_peers == "tracker" or (args.lt_peers == "auto" and have_ot)
    if why:
        print("  libtorrent half SKIPPED: %s. Install with: apt-get install -y python3-libtorrent mktorrent "
              "opentracker time" % why, flush=True)

    mbt_dir = os.path.join(args.work, "compare-mbt")
    lt_dir = os.path.join(args.work, "compare-lt")
    tls_dir = os.path.join(args.work, "compare-tls")
    for d in (mbt_dir, lt_dir, tls_dir):     # a tracker's state left by an earlier run would refuse our users
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)

    swarm = lt = tls_swarm = None
    mbt_runs: List[Dict] = []
    lt_runs: List[Dict] = []
    tls_runs: List[Dict] = []
    out = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "size": size}
    if args.only_swarm:
        ok = swarm_job(args, why, use_tracker, out)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
        return 0 if ok else 1
    try:
        t0 = time.monotonic()
        swarm = Swarm(mbt_dir, data, args.seeders)
        print("  mbt: tracker + %d seeders up in %.1f s (upload_file hashed %s in %.2f s = %.0f MB/s)"
              % (args.seeders, time.monotonic() - t0, label, swarm.hash_seconds, size / swarm.hash_seconds / MB),
              flush=True)
        if not why:
            # libtorrent trouble (opentracker needs root for its chroot, a
            # seeder that cannot start, ...) never costs mbt's figures.
            for tracker in ([True, False] if use_tracker else [False]):
                t0 = time.monotonic()
                try:
                    lt = LtSwarm(lt_dir, data, args.seeders, high_perf=not args.lt_default_settings,
                                 use_tracker=tracker)
                except Exception as e:      # noqa: BLE001 -- reported, then skipped
                    print("  libtorrent set-up failed%s: %s" % (" with opentracker" if tracker else "", e),
                          flush=True)
                    continue
                use_tracker = tracker
                print("  libtorrent: %d seeders up (full check of the file) in %.1f s"
                      % (args.seeders, time.monotonic() - t0), flush=True)
                break
            if lt is None:
                why = "its set-up failed (see above)"
        for i in range(args.runs):
            r = leech_once(swarm)
            mbt_runs.append(r)
            print("  run %d  mbt         %6.0f MB/s  %5.2f s  leecher CPU %5.2f s  RSS %5.0f MiB  "
                  "seeders CPU %5.2f s  other CPU %5.2f s  verified=%s"
                  % (i + 1, r["mbps"], r["seconds"], r["cpu"], r["rss"], r["seeder_cpu"], r["other_cpu"],
                     r["verified"]), flush=True)
            if lt is not None:
                try:
                    r = lt.leech_once()
                except Exception as e:      # noqa: BLE001 -- reported, then skipped
                    print("  libtorrent run failed: %s; the libtorrent half stops here" % e, flush=True)
                    lt.stop()
                    lt, lt_runs = None, []
                    why = "a run failed (see above)"
                    continue
                lt_runs.append(r)
                print("  run %d  libtorrent  %6.0f MB/s  %5.2f s  leecher CPU %5.2f s  RSS %5.0f MiB "
                      "(anon %4.0f)  seeders CPU %5.2f s  other CPU %5.2f s  verified=%s"
                      % (i + 1, r["mbps"], r["seconds"], r["cpu"], r["rss"], r["rss_anon"], r["seeder_cpu"],
                         r["other_cpu"], r["verified"]), flush=True)
            if not args.no_tls:
                if tls_swarm is None:
                    # Up only now, so that its idle seeders do not weigh on the first runs.
                    tls_swarm = Swarm(tls_dir, data, args.seeders, tls=True)
                r = leech_once(tls_swarm)
                tls_runs.append(r)
                print("  run %d  mbt TLS     %6.0f MB/s  %5.2f s  leecher CPU %5.2f s  RSS %5.0f MiB  "
                      "seeders CPU %5.2f s  other CPU %5.2f s  verified=%s"
                      % (i + 1, r["mbps"], r["seconds"], r["cpu"], r["rss"], r["seeder_cpu"], r["other_cpu"],
                         r["verified"]), flush=True)
    finally:
        for x in (swarm, lt, tls_swarm):
            if x is not None:
                x.stop()

    m = summarize(mbt_runs, size)
    out["mbt"] = m
    rows = [("mbt", m, None)]
    if tls_runs:
        t_ = out["mbt_tls"] = summarize(tls_runs, size)
        rows.append(("mbt, TLS on every channel", t_, None))
    if lt_runs:
        l_ = summarize(lt_runs, size)
        l_["rss_anon"] = statistics.median(r["rss_anon"] for r in lt_runs)
        l_["mbps_from_process_start"] = statistics.median(r["mbps_from_process_start"] for r in lt_runs)
        out["libtorrent"] = l_
        lt_name = "libtorrent%s (%s)" % ("" if args.lt_default_settings else " high_performance_seed",
                                         "via opentracker" if use_tracker else "connect_peer")
        rows.append((lt_name, l_, "anon %.0f" % l_["rss_anon"]))

    print("\n%s, %d seeders -> 1 leecher, to disk; medians of %d runs" % (label, args.seeders, args.runs))
    print("%-50s %10s %14s %22s %16s %9s" % ("", "MB/s e2e", "leecher CPU s", "leecher peak RSS MiB",
                                              "seeder CPU s/GB", "verified"))
    for name, r, note in rows:
        rss = "%.0f" % r["rss"] + (" (%s)" % note if note else "")
        print("%-50s %10.0f %14.2f %22s %16.2f %9s" % (name, r["mbps"], r["cpu"], rss, r["seeder_cpu_per_gb"],
                                                      r["verified"]))
        print("%-50s %10s" % ("  runs", ", ".join("%.0f" % x["mbps"] for x in r["runs"])))
    if lt_runs:
        ratio = m["mbps"] / l_["mbps"]
        out["ratio"] = {"mbps": ratio, "leecher_cpu": m["cpu"] / l_["cpu"],
                        "seeder_cpu_per_gb": m["seeder_cpu_per_gb"] / l_["seeder_cpu_per_gb"]}
        print("ratio mbt / libtorrent: speed %.2f (target >= 1.2), leecher CPU %.2f, seeder CPU per GB %.2f "
              "(target <= 1)" % (ratio, out["ratio"]["leecher_cpu"], out["ratio"]["seeder_cpu_per_gb"]))
        print("(libtorrent from process start, as the anchors' 'done' column: %.0f MB/s)"
              % l_["mbps_from_process_start"])
        if not use_tracker:
            print("(without a tracker libtorrent dials its peers only at its next 0.5 s tick: "
                  "its figure is low by about that much per run; install opentracker for a fair ratio)")
    else:
        print("libtorrent: skipped (%s); no ratio" % why)
    if tls_runs:
        out["tls_ratio"] = t_["mbps"] / m["mbps"]
        print("ratio mbt TLS / mbt plaintext: speed %.2f (target >= 0.85), leecher CPU %.2f"
              % (out["tls_ratio"], t_["cpu"] / m["cpu"]))
    ok = m["verified"] and (not lt_runs or out["libtorrent"]["verified"]) and (not tls_runs or t_["verified"])
    if not args.no_swarm:
        ok = swarm_job(args, why, use_tracker, out) and ok
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0 if ok else 1


def swarm_job(args, why: Optional[str], use_tracker: bool, out: Dict) -> bool:
    """1 seeder -> N leechers, every process's upload capped; mbt and libtorrent alternating."""
    from mbt.peer.ratelimit import parse_rate
    rate = parse_rate(args.swarm_rate)
    n = args.swarm_leechers
    label = "%d MiB" % args.swarm_size_mib
    data = os.path.join(args.work, "data-%s.bin" % label.replace(" ", ""))
    make_data(data, args.swarm_size_mib * MiB)
    size = os.path.getsize(data)
    bound = fluid_bound(size, n, rate) if rate else None
    print("\nswarm: 1 seeder -> %d leechers of a %s file, all started together, every process's upload "
          "capped at %s/s; %d runs each, alternating" % (n, label, args.swarm_rate, args.runs), flush=True)
    print("  machine: load average %.2f" % os.getloadavg()[0], flush=True)
    mbt_runs: List[Dict] = []
    lt_runs: List[Dict] = []
    for i in range(args.runs):
        d = os.path.join(args.work, "swarm-mbt")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        busy0 = machine_busy()
        r = one_seeder_many_leechers(d, data, n, upload_rate=args.swarm_rate if rate else None)
        r["busy"] = machine_busy() - busy0
        mbt_runs.append(r)
        _swarm_line(i, "mbt", r)
        settle()
        if why:
            continue
        d = os.path.join(args.work, "swarm-lt")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        lt = None
        try:
            lt = LtSwarm(d, data, 1, high_perf=not args.lt_default_settings, use_tracker=use_tracker,
                         upload_rate=rate)
            busy0 = machine_busy()
            r = lt.swarm_once(n)
            r["busy"] = machine_busy() - busy0
        except Exception as e:      # noqa: BLE001 -- reported, then skipped
            print("  libtorrent swarm run failed: %s; the libtorrent half stops here" % e, flush=True)
            why = "a swarm run failed (see above)"
            continue
        finally:
            if lt is not None:
                lt.stop()
        lt_runs.append(r)
        _swarm_line(i, "libtorrent", r)
        settle()
    res = out["swarm"] = {"leechers": n, "size": size, "rate": rate, "fluid_bound": bound,
                          "mbt": _swarm_summary(mbt_runs)}
    print("\n1 -> %d, %s, upload cap %s/s on every process; medians of %d runs" % (n, label, args.swarm_rate,
                                                                                 args.runs))
    if bound:
        print("fluid bound max(F/u, N*F/((N+1)*u)) = %.2f s" % bound)
    print("%-12s %14s %12s %18s %9s" % ("", "last done s", "/ fluid", "seeder uploaded", "verified"))
    rows = [("mbt", res["mbt"])]
    if lt_runs:
        res["libtorrent"] = _swarm_summary(lt_runs)
        rows.append(("libtorrent", res["libtorrent"]))
    for name, r in rows:
        print("%-12s %14.2f %12s %17.2fx %9s" % (name, r["total_seconds"],
                                                 "%.2f" % (r["total_seconds"] / bound) if bound else "-",
                                                 r["seeder_upload"], r["verified"]))
        print("%-12s %s s" % ("  runs", ", ".join("%.2f" % x for x in r["runs"])))
    m = res["mbt"]
    if m.get("cpu") is not None:
        print("mbt's %d processes used %.1f CPU s during the download of the median run (%.2f cores); the machine "
              "was busy %.2f of its %d cores" % (n + 1, m["cpu"], m["cpu"] / m["total_seconds"],
                                                 m["machine_cpu"] / m["total_seconds"], os.cpu_count()))
    if lt_runs:
        res["ratio"] = res["mbt"]["total_seconds"] / res["libtorrent"]["total_seconds"]
        print("mbt / libtorrent time: %.2f (target <= 1); mbt / fluid bound: %s (target <= 1.15)"
              % (res["ratio"], "%.2f" % (res["mbt"]["total_seconds"] / bound) if bound else "-"))
    else:
        print("libtorrent: skipped (%s)" % why)
    return res["mbt"]["verified"] and (not lt_runs or res["libtorrent"]["verified"])


def _swarm_line(i: int, name: str, r: Dict) -> None:
    # mbt: CPU during the download itself (its processes, the whole machine); else around the job.
    cpu = ("download: mbt %d processes %5.1f CPU s, machine %5.1f" % (1 + len(r["times"]), r["cpu"], r["machine_cpu"])
           if "cpu" in r else "machine busy %5.1f CPU s" % r["busy"])
    print("  run %d  %-10s last done %6.2f s (first %5.2f s)  seeder uploaded %.2fx the file  %s  verified=%s"
          % (i + 1, name, r["total_seconds"], min(r["times"]), r.get("seeder_upload") or 0.0, cpu,
             r["verified"]), flush=True)


def _swarm_summary(runs: List[Dict]) -> Dict:
    med = sorted(runs, key=lambda r: r["total_seconds"])[len(runs) // 2]
    return {"runs": [r["total_seconds"] for r in runs], "total_seconds": med["total_seconds"],
            "finish_times": sorted(med["times"]), "seeder_upload": med.get("seeder_upload") or 0.0,
            "leecher_upload": med.get("leecher_upload"), "verified": all(r["verified"] for r in runs),
            "cpu": med.get("cpu"), "machine_cpu": med.get("machine_cpu")}


def _free(path: str) -> str:
    st = os.statvfs(path)
    return "%.0f GiB" % (st.f_bavail * st.f_frsize / 2 ** 30)


if __name__ == "__main__":
    sys.exit(main())
