"""TLS end to end: two trackers and two peers, every channel over TLS, as users run them."""

import hashlib
import os
import socket
import time


from mbt import certs
from mbt.driver import Console, Process, bin_path, free_port, wait_port


def test_cluster_over_tls_shares_downloads_and_fails_over(procs, tmp_path):
    d = tmp_path / "certs"
    d.mkdir()
    ca_key, ca_cert = certs.make_ca()
    certs.write_pair(str(d), "ca", ca_key, ca_cert)
    flags = {}
    for name in ("t1", "t2", "ann", "ben"):
        key, cert = certs.make_cert(ca_key, ca_cert, name)
        c, k = certs.write_pair(str(d), name, key, cert)
        flags[name] = ["--tls-cert", c, "--tls-key", k, "--tls-ca", str(d / "ca.pem")]
    ports = [free_port(), free_port()]
    info = tmp_path / "tracker_info.txt"
    info.write_text("127.0.0.1:%d\n127.0.0.1:%d\n" % tuple(ports))
    trackers = []
    for n in (1, 2):
        t = Process([bin_path("mbt-tracker"), str(info), str(n), "--state-dir", str(tmp_path / ("t%d" % n))]
                    + flags["t%d" % n], log=str(tmp_path / ("t%d.log" % n)))
        procs.append(t)
        trackers.append(t)
        wait_port(ports[n - 1], 20, t.proc)
    peers = {}
    for name in ("ann", "ben"):
        (tmp_path / name).mkdir()
        c = Console("127.0.0.1:%d" % free_port(), str(info), str(tmp_path / name / "state"),
                    cwd=str(tmp_path / name), extra=flags[name])
        procs.append(c)
        peers[name] = c
    ann, ben = peers["ann"], peers["ben"]
    assert ann.cmd("create_user ann pw").startswith("user ann created")
    assert ann.cmd("login ann pw").startswith("logged in")
    assert ben.cmd("create_user ben pw").startswith("user ben created")
    assert ben.cmd("login ben pw").startswith("logged in")
    assert ann.cmd("create_group g").startswith("group g created")
    assert ben.cmd("join_group g").startswith("asked to join")
    assert ann.cmd("accept_request g ben").startswith("ben is now a member")
    data = os.urandom(3 * 512 * 1024 + 9)
    (tmp_path / "ann" / "f.bin").write_bytes(data)
    assert ann.cmd("upload_file f.bin g").startswith("shared f.bin")

    # A plaintext client on a TLS tracker port gets no answer.
    s = socket.create_connection(("127.0.0.1", ports[0]), timeout=5)
    s.sendall(b'{"id": 1, "op": "ping"}\n')
    s.settimeout(2)
    try:
        got = s.recv(100)
    except OSError:
        got = b""
    s.close()
    assert b'"ok"' not in got

    # Kill tracker 1: both peers move to tracker 2 (over TLS), which has everything.
    trackers[0].kill()
    deadline = time.monotonic() + 20
    reply = ""
    while time.monotonic() < deadline:
        reply = ben.cmd("list_files g", timeout=20)
        if reply.startswith("f.bin") and reply.endswith("1 peer"):
            break
        time.sleep(0.3)
    assert reply.startswith("f.bin  %d bytes" % len(data)) and reply.endswith("1 peer")
    (tmp_path / "ben" / "dl").mkdir()
    assert ben.cmd("download_file g f.bin dl").startswith("downloading f.bin")
    status = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = ben.cmd("show_downloads")
        if status[:3] in ("[C]", "[F]"):
            break
        time.sleep(0.2)
    assert status == "[C] [g] f.bin  %s" % (tmp_path / "ben" / "dl" / "f.bin")
    assert hashlib.sha256((tmp_path / "ben" / "dl" / "f.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
