"""Where the leecher's CPU goes: py-spy on one 4 -> 1 download, then a summary.

Starts a swarm (tracker + ``--seeders`` seeders of a ``--size-mib`` file), a
fresh leecher, attaches ``py-spy record -r 200 -f raw --threads`` to the
leecher, runs one download, stops py-spy and prints ``profsum.py``'s summary
(all threads, then the reactor thread alone). py-spy must be installed next to
this Python (``pip install py-spy``); sampling costs the leecher a few percent.

    python benchmarks/profile_leech.py [--size-mib 1024] [--out prof.txt] [--seeder] [--tls]

``--seeder`` profiles the first seeder instead, during the same download;
``--tls`` runs the swarm with TLS on every channel.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from swarm import MB, MiB, Swarm, con_name, make_data, proc_stats  # noqa: E402
from profsum import summarize  # noqa: E402

from mbt.driver import bin_path  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=os.path.join(os.environ.get("MBT_BENCH_DIR", "/tmp/mbt-bench"), "profile"))
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--seeders", type=int, default=4)
    ap.add_argument("--out", help="raw py-spy output (default: WORK/leech-prof.txt)")
    ap.add_argument("--seeder", action="store_true", help="profile the first seeder instead of the leecher")
    ap.add_argument("--tls", action="store_true", help="TLS on every channel")
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    spy = bin_path("py-spy")
    if not os.path.exists(spy):
        print("py-spy is not installed in %s (pip install py-spy)" % os.path.dirname(spy))
        return 2
    data_dir = os.path.dirname(a.work.rstrip("/"))
    label = "1GiB" if a.size_mib == 1024 else "%dMiB" % a.size_mib
    data = os.path.join(data_dir, "data-%s.bin" % label)
    make_data(data, a.size_mib * MiB)
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    out = a.out or os.path.join(a.work, "%s-prof.txt" % ("seed" if a.seeder else "leech"))
    swarm = Swarm(a.work, data, a.seeders, tls=a.tls)
    try:
        leech = swarm.leecher()
        target = swarm.seeders[0].pid if a.seeder else leech.pid
        prof = subprocess.Popen([spy, "record", "-r", "200", "-f", "raw", "-o", out, "-p", str(target), "--threads"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)     # py-spy attaches
        cpu0 = proc_stats(target)["cpu"]
        secs = swarm.download(leech)
        cpu = proc_stats(target)["cpu"] - cpu0
        prof.send_signal(signal.SIGINT)     # py-spy writes the file on SIGINT
        prof.wait(30)
        ok = swarm.verify(leech)
        print("%s download: %.2f s = %.0f MB/s; profiled %s used %.2f CPU s; verified=%s"
              % (label, secs, a.size_mib * MiB / secs / MB, "seeder" if a.seeder else "leecher", cpu, ok))
        shutil.rmtree(os.path.join(a.work, con_name(leech, swarm), "dl"), ignore_errors=True)
    finally:
        swarm.stop()
    print(summarize(out, a.top))
    print()
    print(summarize(out, a.top, thread="MainThread"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
