"""``make bench``: mbt's throughput, CPU and memory on loopback, with real processes.

Jobs (all figures from this one run):

1. hash:    ``upload_file`` of a 1 GiB file (the console's reply time), MB/s.
2. 4->1:    one leecher downloads a 1 GiB file from 4 seeders, to disk; median of
            ``--runs`` runs: end-to-end MB/s (download_file -> [C]), leecher CPU
            seconds during the download and peak RSS, seeder CPU per GB.
            (``make bench-compare`` runs the same job next to libtorrent.)
3. memory:  peak RSS of the leecher for 256 MiB and 1 GiB (and 4 GiB with
            ``--big``): it should stay flat as the file grows.
4. 1->8:    one seeder, 8 leechers of a 256 MiB file starting together (total
            time). With ``--upload-rate`` every one of the 9 peers caps its
            uploads, and the measured time is compared with the fluid bound
            max(F/u, N*F/(u + N*u)) (issue #8: within 1.3x).
5. tracker: the load curve of ``tracker_load.py``: 1,000 logged-in
            connections, open-loop list_files / get_peers / a few logins at
            several offered rates; requests/s vs p50/p99 latency, a table and a
            PNG plot (matplotlib, from the ``bench`` extra). Then the fleet
            comparison of ``tracker_scale.py``: 10,000 peers against a bare
            JSON-lines ceiling, the embedded tracker, and 1 and 3 trackers over
            PostgreSQL, each as a fraction of the ceiling of the same run.

Data files live in ``--work`` (default ``$MBT_BENCH_DIR`` or /tmp/mbt-bench),
never in the repository.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from swarm import MiB, MB, Swarm, fluid_bound, make_data, one_seeder_many_leechers, one_to_many_seeders  # noqa: E402


def fresh(work: str, name: str) -> str:
    d = os.path.join(work, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def bench_hash(work: str, data: str, runs: int) -> dict:
    """``upload_file`` by ``runs`` seeders in turn (the file is in the page cache): median time."""
    swarm = Swarm(fresh(work, "hash"), data, runs)
    swarm.stop()
    size = os.path.getsize(data)
    secs = statistics.median(swarm.hash_times)
    return {"seconds": secs, "mbps": size / secs / MB, "runs": swarm.hash_times}


def one_to_eight(work: str, data: str, runs: int, upload_rate: str) -> dict:
    """The 1->8 job ``runs`` times (a fresh swarm each): median of the total times."""
    from mbt.peer.ratelimit import parse_rate
    rate = parse_rate(upload_rate)
    rs = [one_seeder_many_leechers(fresh(work, "1to8"), data, 8, upload_rate=upload_rate if rate else None)
          for _ in range(runs)]
    med = sorted(rs, key=lambda r: r["total_seconds"])[len(rs) // 2]
    out = {"runs": [r["total_seconds"] for r in rs], "total_seconds": med["total_seconds"],
           "finish_times": sorted(med["times"]),       # every leecher of the median run
           "seeder_upload": med.get("seeder_upload"), "leecher_upload": med.get("leecher_upload"),
           "first_seconds": statistics.median(min(r["times"]) for r in rs),
           "verified": all(r["verified"] for r in rs)}
    if rate:
        out["fluid_bound"] = fluid_bound(os.path.getsize(data), 8, rate)
        out["ratio"] = out["total_seconds"] / out["fluid_bound"]
    return out


def disk_line(path: str) -> str:
    """``df -h`` of the work dir, one line: which disk the memory job used."""
    out = subprocess.run(["df", "-h", "--output=source,fstype,size,avail,target", path],
                         capture_output=True, text=True).stdout.strip().splitlines()
    return out[-1] if out else "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=os.environ.get("MBT_BENCH_DIR", "/tmp/mbt-bench"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--big", action="store_true", help="memory: also a 4 GiB download (needs ~9 GiB of disk)")
    ap.add_argument("--only", nargs="+", choices=["hash", "4to1", "tls", "memory", "1to8", "tracker"])
    ap.add_argument("--upload-rate", default="25M", help="per-peer cap for the 1->8 job (0 = none)")
    ap.add_argument("--tracker-rates", default="500,1000,2000,5000,8000,10000", help="offered requests/s")
    ap.add_argument("--tracker-connections", type=int, default=1000)
    ap.add_argument("--tracker-seconds", type=float, default=4.0, help="per offered rate")
    ap.add_argument("--tracker-peers", type=int, default=10000,
                    help="tracker job: also the fleet comparison with this many peers (0: skip it)")
    ap.add_argument("--tracker-fleet", type=int, default=3, help="trackers of the fleet over PostgreSQL")
    ap.add_argument("--tracker-store", help="postgresql:// URL of a server for the fleet's databases "
                    "(default: a private server from Debian's PostgreSQL binaries)")
    ap.add_argument("--json", help="write all results here")
    args = ap.parse_args()
    if not 1 <= args.runs <= 20:
        ap.error("--runs must be 1-20")
    os.makedirs(args.work, exist_ok=True)
    jobs = args.only or ["hash", "4to1", "tls", "memory", "1to8", "tracker"]
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds")}
    one_g = os.path.join(args.work, "data-1GiB.bin")
    q_g = os.path.join(args.work, "data-256MiB.bin")
    print("make bench %s; %d CPUs, load average %.2f; work dir %s; data files are random bytes, generated once"
          % (results["date"], os.cpu_count(), os.getloadavg()[0], args.work), flush=True)
    if set(jobs) & {"hash", "4to1", "tls", "memory"}:
        make_data(one_g, 1024 * MiB)
    if set(jobs) & {"memory", "1to8"}:
        make_data(q_g, 256 * MiB)

    if "hash" in jobs:
        r = results["hash"] = bench_hash(args.work, one_g, args.runs)
        print("hash      upload_file 1 GiB, median of %d: %.2f s = %.0f MB/s (target >= 1000); runs %s s"
              % (args.runs, r["seconds"], r["mbps"], ", ".join("%.2f" % x for x in r["runs"])), flush=True)

    if "4to1" in jobs:
        r = results["4to1"] = one_to_many_seeders(fresh(args.work, "4to1"), one_g, 4, args.runs)
        print("4->1      1 GiB from 4 seeders, median of %d: %.0f MB/s end to end; leecher CPU %.2f s, "
              "peak RSS %.0f MiB; seeders %.2f CPU s/GB; verified=%s"
              % (args.runs, r["mbps"], r["cpu"], r["rss"], r["seeder_cpu_per_gb"], r["verified"]), flush=True)
        print("          runs: %s MB/s" % ", ".join("%.0f" % x["mbps"] for x in r["runs"]), flush=True)

    if "tls" in jobs:
        r = results["tls"] = one_to_many_seeders(fresh(args.work, "tls"), one_g, 4, args.runs, tls=True)
        print("tls       the 4->1 job with TLS on every channel, median of %d: %.0f MB/s end to end; "
              "leecher CPU %.2f s, peak RSS %.0f MiB; verified=%s"
              % (args.runs, r["mbps"], r["cpu"], r["rss"], r["verified"]), flush=True)
        print("          runs: %s MB/s" % ", ".join("%.0f" % x["mbps"] for x in r["runs"]), flush=True)

    if "memory" in jobs:
        sizes = [("256 MiB", q_g), ("1 GiB", None if "4to1" in results else one_g)]
        if args.big:
            need = 2 * 4096 * MiB + 512 * MiB     # the source, the download, some slack
            free = shutil.disk_usage(args.work).free
            big = os.path.join(args.work, "data-4GiB.bin")
            if free + (os.path.getsize(big) if os.path.exists(big) else 0) < need:
                print("memory    4 GiB skipped: %.1f GiB free in %s, %.1f GiB needed"
                      % (free / 2 ** 30, args.work, need / 2 ** 30), flush=True)
            else:
                make_data(big, 4096 * MiB)
                sizes.append(("4 GiB", big))
        print("memory    disk: %s" % disk_line(args.work), flush=True)
        mem = results["memory"] = {}
        for label, path in sizes:
            if path is None:
                mem[label] = results["4to1"]["rss"]
                note = "(from the 4->1 job)"
            else:
                r = one_to_many_seeders(fresh(args.work, "mem"), path, 4, 1)
                mem[label] = r["rss"]
                note = "(%.0f MB/s, verified=%s)" % (r["mbps"], r["verified"])
            print("memory    leecher peak RSS for %-7s %4.0f MiB %s" % (label + ":", mem[label], note), flush=True)
        shutil.rmtree(os.path.join(args.work, "mem"), ignore_errors=True)

    if "1to8" in jobs:
        r = results["1to8"] = one_to_eight(args.work, q_g, args.runs, args.upload_rate)
        line = ("1->8      256 MiB, 1 seeder + 8 leechers, median of %d: all done in %.2f s (first leecher %.2f s); "
                "verified=%s; runs %s s" % (args.runs, r["total_seconds"], r["first_seconds"], r["verified"],
                                            ", ".join("%.2f" % x for x in r["runs"])))
        line += "\n          leechers done at (median run): %s s" % ", ".join("%.1f" % t for t in r["finish_times"])
        if r["seeder_upload"] is not None:
            line += ("\n          the seeder uploaded %.2f x the file; the leechers %s x"
                     % (r["seeder_upload"], ", ".join("%.2f" % x for x in r["leecher_upload"])))
        if "ratio" in r:
            line += ("\n          upload cap %s/s on each of the 9 peers: fluid bound %.2f s, ratio %.2f "
                     "(target <= 1.3; below 1.0 would mean a cap is not enforced)"
                     % (args.upload_rate, r["fluid_bound"], r["ratio"]))
        print(line, flush=True)

    if "tracker" in jobs:
        import tracker_load
        rates = [float(x) for x in args.tracker_rates.split(",") if x]
        work = fresh(args.work, "tracker")
        r = results["tracker"] = tracker_load.curve(work, rates, connections=args.tracker_connections,
                                                    seconds=args.tracker_seconds,
                                                    log=lambda s: print("tracker   " + s, flush=True))
        for line in tracker_load.summary(r).splitlines():
            print("tracker   " + line, flush=True)
        png = tracker_load.plot(r, os.path.join(args.work, "tracker-curve.png"))
        print("tracker   plot: %s" % (png or "not written (matplotlib missing: pip install '.[bench]')"), flush=True)
        if args.tracker_peers:
            import tracker_scale
            results["tracker_scale"] = tracker_scale.compare(
                fresh(args.work, "tracker-scale"), args.tracker_store, args.tracker_fleet, peers=args.tracker_peers,
                log=lambda s: print("scale     " + s, flush=True))

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    t0 = time.monotonic()
    code = main()
    print("(make bench took %.0f s)" % (time.monotonic() - t0))
    sys.exit(code)
