"""Relay throughput vs a direct TCP connection on loopback, and the relay's CPU per GB.

    .venv/bin/python benchmarks/relay.py [--mb 512] [--rounds 3]

Starts ``twistd -n mbt-relay`` on 127.0.0.1, pairs two sockets through it
(``RELAY <token> serve|fetch``) and pushes ``--mb`` MiB one way; the same
over a direct loopback connection, and through a relay started with
``--no-zero-copy`` (bytes copied through Python, as before splice). The
three alternate for ``--rounds`` rounds and the best of each is kept. Prints
MB/s, the ratio to direct (target >= 70 %), the relay process's CPU
seconds per GB (user+system, from /proc) and the whole path's (sender,
receiver and relay): on loopback every hop costs kernel CPU on the same
cores, so path CPU direct / path CPU relayed bounds the ratio a CPU-bound
box can reach. The peer wire adds its own costs
on top (both cases alike; benchmarks/relay_peers.py measures whole
downloads).
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from mbt.driver import bin_path, free_port, wait_port  # noqa: E402

CHUNK = 1024 * 1024


def own_cpu() -> float:
    """CPU seconds (user+system) of this process, all threads: the sender's and receiver's work."""
    t = os.times()
    return t.user + t.system


def pump(send: socket.socket, recv: socket.socket, total: int) -> float:
    """Send ``total`` bytes over send->recv; seconds until the last byte arrived."""
    block = os.urandom(CHUNK)

    def writer():
        left = total
        while left:
            n = min(left, CHUNK)
            send.sendall(block[:n])
            left -= n
    t = threading.Thread(target=writer)
    start = time.perf_counter()
    t.start()
    got = 0
    buf = bytearray(4 * CHUNK)
    while got < total:
        n = recv.recv_into(buf)
        if not n:
            raise RuntimeError("connection closed after %d bytes" % got)
        got += n
    t.join()
    return time.perf_counter() - start


def cpu_seconds(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def through_relay(total: int, extra: list) -> tuple:
    """(seconds, relay CPU seconds) to push ``total`` bytes through a fresh ``mbt-relay``."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        relay = subprocess.Popen([bin_path("twistd"), "-n", "--pidfile", "r.pid", "--logfile", "r.log",
                                  "mbt-relay", "--listen", "tcp:%d:interface=127.0.0.1" % port] + extra, cwd=tmp)
        try:
            wait_port(port, 20, relay)
            a = socket.create_connection(("127.0.0.1", port))
            b = socket.create_connection(("127.0.0.1", port))
            token = "bench-" + "x" * 20
            a.sendall(("RELAY %s serve\n" % token).encode())
            b.sendall(("RELAY %s fetch\n" % token).encode())
            assert a.recv(3) == b"OK\n" and b.recv(3) == b"OK\n"
            cpu0, ends0 = cpu_seconds(relay.pid), own_cpu()
            seconds = pump(a, b, total)
            cpu, ends = cpu_seconds(relay.pid) - cpu0, own_cpu() - ends0
            a.close(), b.close()
        finally:
            relay.terminate()
            relay.wait(10)
    return seconds, cpu, ends


def direct(total: int) -> tuple:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    c = socket.create_connection(srv.getsockname())
    s, _ = srv.accept()
    ends0 = own_cpu()
    seconds = pump(c, s, total)
    ends = own_cpu() - ends0
    c.close(), s.close(), srv.close()
    return seconds, ends


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best of each is kept")
    args = ap.parse_args()
    total = args.mb * 1024 * 1024
    best = {"direct": 1e9, "splice": 1e9, "copy": 1e9}
    cpu = {"direct": 1e9, "splice": 1e9, "copy": 1e9}      # CPU s of the whole path (ends + relay)
    relay_cpu = {"splice": 1e9, "copy": 1e9}
    for _ in range(args.rounds):        # alternating: the box's load hits all three alike
        seconds, ends = direct(total)
        best["direct"], cpu["direct"] = min(best["direct"], seconds), min(cpu["direct"], ends)
        for mode, extra in (("splice", []), ("copy", ["--no-zero-copy"])):
            seconds, used, ends = through_relay(total, extra)
            best[mode] = min(best[mode], seconds)
            relay_cpu[mode] = min(relay_cpu[mode], used)
            cpu[mode] = min(cpu[mode], used + ends)
    mb, gb = total / 1e6, total / 1e9
    cores = os.cpu_count() or 1
    print("direct loopback          : %8.1f MB/s  path CPU %.2f s/GB" % (mb / best["direct"], cpu["direct"] / gb))
    for mode, what in (("splice", "mbt-relay (splice, default)"), ("copy", "mbt-relay --no-zero-copy")):
        print("%-25s: %8.1f MB/s  (%.0f %% of direct; target >= 70 %%)  relay CPU %.2f s/GB, path CPU %.2f s/GB"
              % (what, mb / best[mode], 100.0 * best["direct"] / best[mode], relay_cpu[mode] / gb,
                 cpu[mode] / gb))
    print("CPU-bound ceiling on %d cores, relay/direct: splice %.0f %%, copy %.0f %% (path CPU ratio)"
          % (cores, 100.0 * cpu["direct"] / cpu["splice"], 100.0 * cpu["direct"] / cpu["copy"]))

if __name__ == "__main__":
    main()
