"""Garbage at every port of real processes: they stay up and keep serving."""

import os
import random
import socket

from mbt.driver import Console, Process, bin_path, free_port, wait_port
from tests.test_e2e import Telnet

TLS_CLIENT_HELLO = bytes.fromhex("16030100a5010000a10303") + os.urandom(32) + b"\x00" * 20
PAYLOADS = [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    TLS_CLIENT_HELLO,
    b"\xff\xfb\x01\xff\xfd\x03" * 50,                 # telnet negotiation storm
    b"\x00" * 4096,
    b'{"id": 1, "op": "login", "user": "' + b"a" * 100000 + b'"}\n',
    b"HELLO mbt/2 " + b"x" * 70000 + b"\n",
    b"REQUEST 0 0 99999999999999\n" * 10,
    b"[" * 100000 + b"\n",
]


def blast(port, payload, big=False):
    """Send one payload (and, if ``big``, 20 MB without a newline); ignore resets."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return
    try:
        s.sendall(payload)
        if big:
            chunk = os.urandom(1 << 20).replace(b"\n", b"x")
            for _ in range(20):
                s.sendall(chunk)
        s.settimeout(0.5)
        try:
            s.recv(65536)
        except OSError:
            pass
    except OSError:
        pass
    finally:
        s.close()


def test_every_port_survives_garbage(procs, tmp_path):
    tport = free_port()
    info = tmp_path / "tracker_info.txt"
    info.write_text("127.0.0.1:%d\n" % tport)
    tracker = Process([bin_path("mbt-tracker"), str(info), "1", "--state-dir", str(tmp_path / "t")],
                      log=str(tmp_path / "tracker.log"))
    procs.append(tracker)
    wait_port(tport, 20, tracker.proc)
    (tmp_path / "a").mkdir()
    peer = Console("127.0.0.1:%d" % free_port(), str(info), str(tmp_path / "a" / "state"), cwd=str(tmp_path / "a"))
    procs.append(peer)
    console_port = free_port()
    twistd_peer = Process([bin_path("twistd"), "-n", "--pidfile=", "mbt-peer", "--address",
                           "127.0.0.1:%d" % free_port(), "--info", str(info), "--console",
                           "tcp:%d:interface=127.0.0.1" % console_port, "--state-dir", str(tmp_path / "b")],
                          cwd=str(tmp_path), log=str(tmp_path / "peer-b.log"))
    procs.append(twistd_peer)
    wait_port(console_port, 30, twistd_peer.proc)
    peer_port = int(peer.address.rsplit(":", 1)[1])

    rng = random.Random(5)
    for port in (tport, peer_port, console_port):
        for payload in PAYLOADS:
            blast(port, payload)
        for _ in range(20):
            blast(port, bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 3000))))
        blast(port, b"", big=True)

    # Everything is still up and answers a well-behaved client.
    for p in (tracker, peer, twistd_peer):
        assert p.proc.poll() is None
    assert peer.cmd("create_user gina pw").startswith("user gina created")
    assert peer.cmd("login gina pw").startswith("logged in as gina")
    assert peer.cmd("create_group gg").startswith("group gg created")
    t = Telnet(console_port)
    t.until_prompt()
    assert t.cmd("create_user hal pw").startswith("user hal created")
    assert t.cmd("login hal pw").startswith("logged in as hal")
    assert t.cmd("list_groups") == "gg  owner gina  1 member"
    # and the console itself took garbage lines as errors, not crashes
    reply = peer.cmd("\x00\x01\x02 garbage \xff")
    assert reply.startswith("error: ")
