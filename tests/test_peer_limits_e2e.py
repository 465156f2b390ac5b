"""A real seeder under a pre-HELLO flood (issue #12 item 4): an honest, ticketed HELLO still gets served.

A tracker and a seeding ``mbt-client`` run as processes. The attacker opens
1,024 connections to the seeder from 16 loopback addresses (64 each) and never
sends HELLO; then a member with a valid ticket connects from 127.0.0.1 and
must get its BITFIELD. The figures (connections the seeder holds for the
attacker, the honest HELLO's outcome) are printed; run with ``-s``.
"""

import os
import select
import socket
import time

from mbt.tickets import new_session_key, public_key_hex, sign_challenge
from mbt.driver import Console, free_port
from tests.test_e2e import start_tracker
from tests.test_replication_integration import Client

HOSTS = ["127.0.1.%d" % i for i in range(1, 17)]
PER_HOST = 64


def idle_connections(port: int):
    """1,024 connections that never say anything, in small batches the seeder's backlog holds."""
    socks = []
    for host in HOSTS:
        for batch in range(PER_HOST // 16):
            for _ in range(16):
                s = socket.socket()
                s.bind((host, 0))
                s.settimeout(5)
                try:
                    s.connect(("127.0.0.1", port))
                except OSError:
                    pass        # counted as not held
                socks.append(s)
            time.sleep(0.01)
    return socks


def held(socks, timeout: float = 4.0) -> int:
    """How many of ``socks`` the seeder keeps open, once that number stops changing.

    A socket counts when it is connected and the seeder has not hung up
    (nothing is readable: the seeder sends nothing before HELLO).
    """
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLIN)
    deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
    while True:
        closed = {fd for fd, _ev in poller.poll(0)}
        count = 0
        for s in socks:
            if s.fileno() in closed:
                continue
            try:
                s.getpeername()
                count += 1
            except OSError:
                pass            # not connected (yet)
        now = time.monotonic()
        if count != last:
            last, since = count, now
        elif now - since >= 0.5 or now > deadline:
            return count
        time.sleep(0.1)


def first_line(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    buf = b""
    try:
        while b"\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                break
            buf += chunk
    except OSError:
        pass
    return buf.split(b"\n")[0]


def test_idle_connections_before_hello_cannot_lock_out_a_ticketed_downloader(procs, tmp_path):
    _tracker, info, (port,) = start_tracker(procs, tmp_path)
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "f.bin").write_bytes(os.urandom(300000))
    peer_port = free_port()
    ann = Console("127.0.0.1:%d" % peer_port, str(info), str(tmp_path / "ann" / "state"),
                  cwd=str(tmp_path / "ann"), log=str(tmp_path / "ann.log"))
    procs.append(ann)
    assert ann.cmd("create_user ann pw").startswith("user ann created")
    assert ann.cmd("login ann pw").startswith("logged in as ann")
    assert ann.cmd("create_group g").startswith("group g created")
    ben = Client(port)
    ben.ok("create_user", user="ben", password="pw")
    key = new_session_key()
    ben.ok("login", user="ben", password="pw", address="127.0.0.1:9", session_key=public_key_hex(key))
    ben.ok("join_group", group="g")
    assert ann.cmd("accept_request g ben") == "ben is now a member of g"
    assert ann.cmd("upload_file f.bin g").startswith("shared f.bin in g")
    file_hash = ben.ok("get_peers", group="g", name="f.bin")["manifest"]["file_hash"]
    ticket = ben.ok("get_ticket", group="g", file_hash=file_hash)["ticket"]

    attackers = idle_connections(peer_port)
    try:
        taken = held(attackers)
        honest = socket.create_connection(("127.0.0.1", peer_port), timeout=5)
        t0 = time.monotonic()
        honest.sendall(b"HELLO mbt/2 g %s ben %s\n" % (file_hash.encode(), ticket.encode()))
        answer = first_line(honest, 5.0)
        if answer.startswith(b"CHALLENGE "):
            proof = sign_challenge(key, answer.split(b" ")[1].decode(), "g", file_hash, "ben")
            honest.sendall(b"PROOF %s\n" % proof.encode())
            answer = first_line(honest, 5.0)
        waited = time.monotonic() - t0
        honest.close()
    finally:
        for s in attackers:
            s.close()
    print("\nseeder held %d of %d idle pre-HELLO connections from %d addresses; honest ticketed HELLO: %s "
          "after %.0f ms" % (taken, len(attackers), len(HOSTS), (answer or b"closed without reply").decode(),
                             1000 * waited))
    assert answer.startswith(b"BITFIELD ")
    assert taken <= 128
    ben.close()
