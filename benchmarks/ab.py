"""A/B of two mbt trees on the same job, alternating runs in one process tree.

``--a-src DIR`` (and optionally ``--b-src DIR``) name directories holding an
``mbt`` package (e.g. ``git archive main mbt | tar -x -C /tmp/a``); the
processes of that side run the installed ``mbt-client`` with ``PYTHONPATH=DIR``,
so only mbt's own code differs. Without ``--b-src``, B is the installed package.
Runs alternate A, B, A, B, ... so that the noise of a shared machine hits both
alike; medians are printed with the ratio B / A.

Jobs:

* ``4to1``: one seeder swarm (4 seeders, from ``--seeders-from``), a fresh
  leecher per run from A or B: a leecher-side change;
* ``4to1-tls``: the same with TLS on every channel;
* ``swarm``: 1 seeder -> ``--leechers`` leechers, every process capped at
  ``--rate``; the whole swarm from A or B (seeder and leechers).

    python benchmarks/ab.py --a-src /tmp/a --job 4to1 --runs 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from contextlib import contextmanager
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from swarm import MiB, Swarm, fluid_bound, leech_once, make_data, one_seeder_many_leechers  # noqa: E402


@contextmanager
def side(src: Optional[str]):
    """Children started inside run ``src``'s mbt package (None: the installed one)."""
    old = os.environ.get("PYTHONPATH")
    if src:
        os.environ["PYTHONPATH"] = os.path.abspath(src)
    else:
        os.environ.pop("PYTHONPATH", None)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a-src", required=True)
    ap.add_argument("--b-src")
    ap.add_argument("--job", choices=["4to1", "4to1-tls", "swarm"], default="4to1")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--seeders-from", choices=["a", "b"], default="b")
    ap.add_argument("--leechers", type=int, default=16)
    ap.add_argument("--rate", default="25M")
    ap.add_argument("--work", default=os.path.join(os.environ.get("MBT_BENCH_DIR", "/tmp/mbt-bench"), "ab"))
    a = ap.parse_args()
    if not 1 <= a.runs <= 20:
        ap.error("--runs must be 1-20")
    srcs = {"A": a.a_src, "B": a.b_src}
    label = "1GiB" if a.size_mib == 1024 else "%dMiB" % a.size_mib
    data = os.path.join(os.path.dirname(a.work.rstrip("/")), "data-%s.bin" % label)
    make_data(data, a.size_mib * MiB)
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    print("A/B %s: A=%s B=%s, %d runs each, load average %.2f" % (a.job, a.a_src, a.b_src or "(installed)",
                                                                 a.runs, os.getloadavg()[0]), flush=True)
    res: Dict[str, List[Dict]] = {"A": [], "B": []}
    if a.job.startswith("4to1"):
        with side(srcs[a.seeders_from.upper()]):
            swarm = Swarm(a.work, data, 4, tls=a.job.endswith("tls"))
        try:
            for i in range(a.runs):
                for name in ("A", "B"):
                    with side(srcs[name]):
                        r = leech_once(swarm)
                    res[name].append(r)
                    print("  run %d %s %6.0f MB/s  leecher CPU %5.2f s  RSS %4.0f MiB  seeders CPU %5.2f s  "
                          "other CPU %5.2f s  verified=%s" % (i + 1, name, r["mbps"], r["cpu"], r["rss"],
                                                              r["seeder_cpu"], r["other_cpu"], r["verified"]),
                          flush=True)
        finally:
            swarm.stop()
        for name in ("A", "B"):
            rs = res[name]
            print("%s: median %.0f MB/s, leecher CPU %.2f s (CPU s per GiB %.2f), RSS %.0f MiB, seeders %.2f CPU s"
                  % (name, statistics.median(r["mbps"] for r in rs), statistics.median(r["cpu"] for r in rs),
                     statistics.median(r["cpu"] for r in rs) * 1024 / a.size_mib,
                     statistics.median(r["rss"] for r in rs), statistics.median(r["seeder_cpu"] for r in rs)))
        mb = {n: statistics.median(r["mbps"] for r in res[n]) for n in res}
        cpu = {n: statistics.median(r["cpu"] for r in res[n]) for n in res}
        print("B / A: speed %.2f, leecher CPU %.2f" % (mb["B"] / mb["A"], cpu["B"] / cpu["A"]))
        ok = all(r["verified"] for n in res for r in res[n])
    else:
        from mbt.peer.ratelimit import parse_rate
        bound = fluid_bound(a.size_mib * MiB, a.leechers, parse_rate(a.rate))
        for i in range(a.runs):
            for name in ("A", "B"):
                d = os.path.join(a.work, "swarm")
                shutil.rmtree(d, ignore_errors=True)
                os.makedirs(d)
                with side(srcs[name]):
                    r = one_seeder_many_leechers(d, data, a.leechers, upload_rate=a.rate)
                res[name].append(r)
                print("  run %d %s last done %6.2f s (%.2f x fluid; first %5.2f s)  seeder uploaded %.2fx  "
                      "download CPU: mbt %5.1f s, machine %5.1f s  verified=%s"
                      % (i + 1, name, r["total_seconds"], r["total_seconds"] / bound, min(r["times"]),
                         r.get("seeder_upload") or 0, r["cpu"], r["machine_cpu"], r["verified"]), flush=True)
        for name in ("A", "B"):
            rs = res[name]
            t = statistics.median(r["total_seconds"] for r in rs)
            print("%s: median last done %.2f s = %.2f x fluid (%.2f s); seeder uploaded %.2fx the file (median)"
                  % (name, t, t / bound, bound, statistics.median(r.get("seeder_upload") or 0 for r in rs)))
        t = {n: statistics.median(r["total_seconds"] for r in res[n]) for n in res}
        print("B / A time: %.2f" % (t["B"] / t["A"]))
        ok = all(r["verified"] for n in res for r in res[n])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
