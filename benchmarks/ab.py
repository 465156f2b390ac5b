"""A/B of two mbt trees on the same job, alternating runs in one process tree.

A side is either a source tree or a whole install:

* ``--a-src DIR`` (and optionally ``--b-src DIR``) name directories holding an
  ``mbt`` package (e.g. ``git archive main mbt | tar -x -C /tmp/a``); the
  processes of that side run the installed ``mbt-client`` with
  ``PYTHONPATH=DIR``, so only mbt's own code differs;
* ``--a-venv VENV`` (and ``--b-venv VENV``) name virtualenvs with mbt installed
  (e.g. ``git worktree add --detach /tmp/a COMMIT && make -C /tmp/a .venv/.code``,
  then ``--a-venv /tmp/a/.venv``); that side's tracker, seeders and leechers
  are the commands in ``VENV/bin``, so two commits far apart (whose entry
  points or module layout differ) compare as users would run them.

A side given neither is the installed package. Runs alternate A B B A A B ...
so that the noise of a shared machine hits both alike; medians (and the
spread, min-max) are printed with the ratio B / A.

Jobs:

* ``4to1``: one seeder swarm (4 seeders, from ``--seeders-from``), a fresh
  leecher per run from A or B: a leecher-side change; ``--seeders-from each``
  gives every side its own tracker and seeders (a change to both ends: both
  swarms stay up, each idle while the other side runs);
* ``4to1-tls``: the same with TLS on every channel;
* ``swarm``: 1 seeder -> ``--leechers`` leechers, every process capped at
  ``--rate``; the whole swarm from A or B (seeder and leechers).

    python benchmarks/ab.py --a-src /tmp/a --job 4to1 --runs 5
    python benchmarks/ab.py --a-venv /tmp/before/.venv --b-venv /tmp/after/.venv \
        --seeders-from each --runs 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from contextlib import contextmanager
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mbt.driver  # noqa: E402
import swarm as swarm_mod  # noqa: E402
from swarm import MiB, Swarm, fluid_bound, leech_once, make_data, one_seeder_many_leechers  # noqa: E402


@contextmanager
def side(src: Optional[str], venv: Optional[str] = None):
    """Children started inside run ``src``'s mbt package, or ``venv``'s commands (neither: the installed one).

    ``venv``: the driver's ``bin_path`` (which otherwise names the commands
    next to this Python) points into ``venv/bin`` for the duration.
    """
    old = os.environ.get("PYTHONPATH")
    old_bin = mbt.driver.bin_path
    if src:
        os.environ["PYTHONPATH"] = os.path.abspath(src)
    else:
        os.environ.pop("PYTHONPATH", None)
    if venv:
        bindir = os.path.join(os.path.abspath(venv), "bin")
        mbt.driver.bin_path = swarm_mod.bin_path = lambda name: os.path.join(bindir, name)
    try:
        yield
    finally:
        mbt.driver.bin_path = swarm_mod.bin_path = old_bin
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def spread(values: List[float], fmt: str = "%.2f") -> str:
    """``median (min-max)`` of one figure over the runs."""
    return (fmt + " (" + fmt + "-" + fmt + ")") % (statistics.median(values), min(values), max(values))


def order(i: int) -> Tuple[str, str]:
    """A, B in even rounds, B, A in odd ones (A B B A A B ...): neither side always runs first."""
    return ("A", "B") if i % 2 == 0 else ("B", "A")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a-src", help="A: a directory holding an mbt package (run with PYTHONPATH)")
    ap.add_argument("--b-src", help="B: likewise (default: the installed package)")
    ap.add_argument("--a-venv", help="A: a virtualenv with mbt installed (its bin/ commands)")
    ap.add_argument("--b-venv", help="B: likewise")
    ap.add_argument("--job", choices=["4to1", "4to1-tls", "swarm"], default="4to1")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--seeders-from", choices=["a", "b", "each"], default="b",
                    help="4to1: whose tracker and seeders serve (each: every side its own)")
    ap.add_argument("--leechers", type=int, default=16)
    ap.add_argument("--rate", default="25M")
    ap.add_argument("--work", default=os.path.join(os.environ.get("MBT_BENCH_DIR", "/tmp/mbt-bench"), "ab"))
    a = ap.parse_args()
    if not 1 <= a.runs <= 20:
        ap.error("--runs must be 1-20")
    if not (a.a_src or a.a_venv):
        ap.error("A needs --a-src or --a-venv")
    if (a.a_src and a.a_venv) or (a.b_src and a.b_venv):
        ap.error("a side is either --X-src or --X-venv, not both")
    srcs = {"A": a.a_src, "B": a.b_src}
    venvs = {"A": a.a_venv, "B": a.b_venv}
    names = {n: srcs[n] or venvs[n] or "(installed)" for n in srcs}
    label = "1GiB" if a.size_mib == 1024 else "%dMiB" % a.size_mib
    data = os.path.join(os.path.dirname(a.work.rstrip("/")), "data-%s.bin" % label)
    os.makedirs(os.path.dirname(data), exist_ok=True)
    make_data(data, a.size_mib * MiB)
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    print("A/B %s: A=%s B=%s, %d runs each, %s, load average %.2f %.2f %.2f"
          % (a.job, names["A"], names["B"], a.runs, label, *os.getloadavg()), flush=True)
    res: Dict[str, List[Dict]] = {"A": [], "B": []}
    size = a.size_mib * MiB
    if a.job.startswith("4to1"):
        swarms: Dict[str, Swarm] = {}
        try:
            for name in ("A", "B"):
                owner = name if a.seeders_from == "each" else a.seeders_from.upper()
                if owner not in swarms:
                    d = os.path.join(a.work, owner)
                    os.makedirs(d)
                    with side(srcs[owner], venvs[owner]):
                        swarms[owner] = Swarm(d, data, 4, tls=a.job.endswith("tls"))
                swarms[name] = swarms[owner]
            for i in range(a.runs):
                for name in order(i):
                    with side(srcs[name], venvs[name]):
                        r = leech_once(swarms[name])
                    r["load"] = os.getloadavg()[0]
                    res[name].append(r)
                    print("  run %d %s %6.0f MB/s  leecher CPU %5.2f s  RSS %4.0f MiB  seeders CPU %5.2f s  "
                          "other CPU %5.2f s  load %5.2f  verified=%s"
                          % (i + 1, name, r["mbps"], r["cpu"], r["rss"], r["seeder_cpu"], r["other_cpu"],
                             r["load"], r["verified"]), flush=True)
        finally:
            for sw in {id(s): s for s in swarms.values()}.values():
                sw.stop()
        print("median (min-max) of %d runs each:" % a.runs)
        for name in ("A", "B"):
            rs = res[name]
            print("%s: %s MB/s; leecher CPU s/GiB %s; seeders CPU s/GB %s; leecher peak RSS %s MiB; "
                  "load average %s"
                  % (name, spread([r["mbps"] for r in rs], "%.0f"), spread([r["cpu"] * MiB * 1024 / size for r in rs]),
                     spread([r["seeder_cpu"] * 1e9 / size for r in rs]), spread([r["rss"] for r in rs], "%.0f"),
                     spread([r["load"] for r in rs], "%.1f")), flush=True)
        mb = {n: statistics.median(r["mbps"] for r in res[n]) for n in res}
        cpu = {n: statistics.median(r["cpu"] for r in res[n]) for n in res}
        print("B / A: speed %.2f, leecher CPU %.2f" % (mb["B"] / mb["A"], cpu["B"] / cpu["A"]))
        ok = all(r["verified"] for n in res for r in res[n])
    else:
        from mbt.peer.ratelimit import parse_rate
        bound = fluid_bound(a.size_mib * MiB, a.leechers, parse_rate(a.rate))
        for i in range(a.runs):
            for name in order(i):
                d = os.path.join(a.work, "swarm")
                shutil.rmtree(d, ignore_errors=True)
                os.makedirs(d)
                with side(srcs[name], venvs[name]):
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
