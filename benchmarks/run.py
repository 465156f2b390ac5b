"""``make bench``: mbt's throughput, CPU and memory on loopback, with real processes.

Jobs (all figures from this one run):

1. hash:   ``upload_file`` of a 1 GiB file (the console's reply time), MB/s.
2. 4->1:   one leecher downloads a 1 GiB file from 4 seeders, to disk; median of
           ``--runs`` runs: end-to-end MB/s (download_file -> [C]), leecher CPU
           seconds and peak RSS, seeder CPU per GB.
3. memory: peak RSS of the leecher for 256 MiB and 1 GiB (and 4 GiB with --big).
4. 1->8:   one seeder, 8 leechers of a 256 MiB file starting together (total time);
           with --upload-rate every peer's upload is capped and the fluid bound
           max(F/u, N*F/(u + N*u)) is printed next to the measured time.
5. tracker: 50 concurrent connections doing login + list_files (requests/s).

Data files live in ``--work`` (default /tmp/mbt-bench), never in the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from swarm import MiB, MB, Swarm, make_data, one_seeder_many_leechers, one_to_many_seeders  # noqa: E402


def fresh(work: str, name: str) -> str:
    d = os.path.join(work, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def bench_hash(work: str, data: str) -> dict:
    swarm = Swarm(fresh(work, "hash"), data, 1)
    swarm.stop()
    size = os.path.getsize(data)
    return {"seconds": swarm.hash_seconds, "mbps": size / swarm.hash_seconds / MB}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=os.environ.get("MBT_BENCH_DIR", "/tmp/mbt-bench"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--big", action="store_true", help="also a 4 GiB download (needs ~12 GiB of disk)")
    ap.add_argument("--only", nargs="+", choices=["hash", "4to1", "memory", "1to8", "tracker"])
    ap.add_argument("--upload-rate", default="25M", help="per-peer cap for the 1->8 job (0 = none)")
    ap.add_argument("--json", help="write all results here")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    jobs = args.only or ["hash", "4to1", "memory", "1to8", "tracker"]
    results = {}
    one_g = os.path.join(args.work, "data-1GiB.bin")
    q_g = os.path.join(args.work, "data-256MiB.bin")
    print("work dir %s; data files are random bytes, generated once" % args.work, flush=True)
    if set(jobs) & {"hash", "4to1", "memory"}:
        make_data(one_g, 1024 * MiB)
    if set(jobs) & {"memory", "1to8"}:
        make_data(q_g, 256 * MiB)

    if "hash" in jobs:
        r = results["hash"] = bench_hash(args.work, one_g)
        print("hash      upload_file 1 GiB: %.2f s = %.0f MB/s" % (r["seconds"], r["mbps"]), flush=True)

    if "4to1" in jobs:
        r = results["4to1"] = one_to_many_seeders(fresh(args.work, "4to1"), one_g, 4, args.runs)
        print("4->1      1 GiB from 4 seeders, median of %d: %.0f MB/s end to end; leecher CPU %.2f s, "
              "peak RSS %.0f MiB; seeders %.2f CPU s/GB; verified=%s"
              % (args.runs, r["mbps"], r["cpu"], r["rss"], r["seeder_cpu_per_gb"], r["verified"]), flush=True)
        print("          runs: %s" % ", ".join("%.0f" % x["mbps"] for x in r["runs"]), flush=True)

    if "memory" in jobs:
        sizes = [("256 MiB", q_g)]
        if "4to1" in results:
            sizes.append(("1 GiB", None))
        else:
            sizes.append(("1 GiB", one_g))
        if args.big:
            big = os.path.join(args.work, "data-4GiB.bin")
            make_data(big, 4096 * MiB)
            sizes.append(("4 GiB", big))
        mem = results["memory"] = {}
        for label, path in sizes:
            if path is None:
                mem[label] = results["4to1"]["rss"]
            else:
                mem[label] = one_to_many_seeders(fresh(args.work, "mem"), path, 4, 1)["rss"]
            print("memory    leecher peak RSS for %s: %.0f MiB" % (label, mem[label]), flush=True)

    if "1to8" in jobs:
        from mbt.peer.ratelimit import parse_rate
        rate = parse_rate(args.upload_rate)
        r = results["1to8"] = one_seeder_many_leechers(fresh(args.work, "1to8"), q_g, 8,
                                                        upload_rate=args.upload_rate if rate else None)
        line = "1->8      256 MiB, 1 seeder + 8 leechers: all done in %.2f s; verified=%s" % (
            r["total_seconds"], r["verified"])
        if rate:
            F, N, u = 256 * MiB, 8, rate
            bound = max(F / u, N * F / (u + N * u))
            r["fluid_bound"] = bound
            line += "; upload cap %s/s each, fluid bound %.2f s, ratio %.2f" % (
                args.upload_rate, bound, r["total_seconds"] / bound)
        print(line, flush=True)

    if "tracker" in jobs:
        from tracker_load import run as tracker_run
        r = results["tracker"] = tracker_run(fresh(args.work, "tracker"), connections=50, seconds=5)
        print("tracker   %d connections, login + list_files: %.0f requests/s, p50 %.1f ms, p99 %.1f ms"
              % (r["connections"], r["rps"], r["p50_ms"], r["p99_ms"]), flush=True)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
