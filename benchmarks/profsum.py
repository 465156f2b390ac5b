"""Summarize a py-spy ``--format raw`` profile: where the samples went, by function.

``py-spy record -r 200 -f raw -o prof.txt -p PID [--threads]`` writes one line
per distinct stack: ``frame;frame;...;leaf COUNT`` (with ``--threads`` the first
frame names the thread). This prints the share of samples per function, both
*self* (the leaf: where the CPU actually was) and *inclusive* (anywhere on the
stack: what a call costs with everything below it), plus the share per thread.

Idle time is left out by default: a stack whose leaf is a blocking wait
(``epoll.poll``'s Python caller, ``Condition.wait``, ...) is not CPU.

    python benchmarks/profsum.py prof.txt [--top 25] [--thread MainThread] [--with-idle]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys

#: Leaves that mean "waiting", not "working" (py-spy samples idle threads too
#: unless --idle is off; with --threads, a pool thread waiting for work shows here).
IDLE_LEAVES = ("EPollReactor.doPoll (twisted/internet/epollreactor.py:227)", "Condition.wait", "Queue.get",
               "_UnixWaker.doRead", "select (")
#: Frames that add nothing to a summary (the reactor's plumbing on every stack).
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")


def parse(path: str):
    """Yield (thread, [frames without line numbers], count)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            raw = raw.rstrip("\n")
            if not raw:
                continue
            stack, _, count = raw.rpartition(" ")
            try:
                n = int(count)
            except ValueError:
                continue
            frames = stack.split(";")
            thread = "all"
            if frames and frames[0].startswith("thread ("):
                thread = frames[0].split(":", 1)[-1].strip() or frames[0]
                frames = frames[1:]
            yield thread, frames, n


def short(frame: str) -> str:
    """``func (file:line)`` -> ``func (file)``: aggregate a function over its lines."""
    m = _FRAME.match(frame)
    return "%s (%s)" % (m.group("func"), m.group("file")) if m else frame


def summarize(path: str, top: int = 25, thread: str = "", with_idle: bool = False) -> str:
    self_c = collections.Counter()
    incl = collections.Counter()
    per_thread = collections.Counter()
    total = idle = 0
    for th, frames, n in parse(path):
        if thread and thread not in th:
            continue
        if not frames:
            continue
        if not with_idle and any(frames[-1].startswith(x) or x in frames[-1] for x in IDLE_LEAVES):
            idle += n
            continue
        total += n
        per_thread[th] += n
        self_c[short(frames[-1])] += n
        for f in set(short(x) for x in frames):
            incl[f] += n
    out = ["%s: %d busy samples (%d idle samples left out)" % (path, total, idle)]
    if total == 0:
        return "\n".join(out)
    if len(per_thread) > 1:
        out.append("by thread: " + ", ".join("%s %.0f%%" % (t, 100.0 * c / total) for t, c in per_thread.most_common()))
    out.append("self (where the CPU was):")
    out += ["  %5.1f%%  %s" % (100.0 * c / total, f) for f, c in self_c.most_common(top)]
    out.append("inclusive (a function with everything it calls):")
    out += ["  %5.1f%%  %s" % (100.0 * c / total, f) for f, c in incl.most_common(top)]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--thread", default="", help="only threads whose name contains this")
    ap.add_argument("--with-idle", action="store_true")
    a = ap.parse_args()
    print(summarize(a.profile, a.top, a.thread, a.with_idle))
    return 0


if __name__ == "__main__":
    sys.exit(main())
