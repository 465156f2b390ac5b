"""Peers on real networks: network namespaces with real NAT (tests/netlab.py), real processes.

A public seeder serves a downloader at home behind an nftables masquerade
(the ticket names the downloader's key, not its address); a ticket replayed
from another namespace is refused; peers whose clocks are minutes off
(libfaketime) still share, and a wildly wrong clock is told on the console.
"""

import os
import shutil
import sys
import time

import pytest

from mbt import certs
from mbt.driver import Console, Process, bin_path
from mbt.manifest import hash_file
from tests import netlab

WHY = netlab.unavailable()
pytestmark = pytest.mark.skipif(WHY is not None, reason=WHY or "")
TRACKER = netlab.PUBLIC["tracker"] + ":7300"


@pytest.fixture
def lab():
    with netlab.Lab() as lab:
        yield lab


def start(lab, procs, tmp_path, host, name, skew=None, extra=None, info="info"):
    (tmp_path / name).mkdir(exist_ok=True)
    prefix = lab.exec_prefix(host)
    if skew is not None:
        if shutil.which("faketime") is None:
            pytest.skip("clock skew tests need libfaketime (Debian faketime; make test installs it)")
        prefix = prefix + ["faketime", "-f", skew]
    c = Console(netlab.PUBLIC.get(host, lab.ip(host)) + ":7000", str(tmp_path / info),
                str(tmp_path / name / "state"), cwd=str(tmp_path / name), prefix=prefix,
                log=str(tmp_path / (name + ".log")), extra=extra)
    procs.append(c)
    return c


def until_ok(console, line, expect, timeout=20.0):
    deadline = time.monotonic() + timeout
    while True:
        reply = console.cmd(line)
        if reply.startswith(expect) or time.monotonic() > deadline:
            return reply
        time.sleep(0.3)


RELAY = netlab.PUBLIC["relay"] + ":7400"


def start_relay(lab, procs, tmp_path, *flags):
    (tmp_path / "relay").mkdir(exist_ok=True)
    relay = Process(lab.exec_prefix("relay") + [bin_path("twistd"), "-n", "--pidfile", "relay.pid", "mbt-relay",
                                                 "--listen", "tcp:7400:interface=" + netlab.PUBLIC["relay"]]
                    + list(flags), cwd=str(tmp_path / "relay"), log=str(tmp_path / "relay.log"))
    procs.append(relay)
    wait_listening(lab, "relay", netlab.PUBLIC["relay"], 7400, relay)
    return relay


def wait_listening(lab, host, address, port, proc, timeout=20.0):
    """Wait until ``address:port`` accepts a connection from inside ``host``'s namespace."""
    probe = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()"
    deadline = time.monotonic() + timeout
    while lab.sh(host, sys.executable, "-c", probe, address, str(port), check=False).returncode != 0:
        assert proc.proc.poll() is None, "exited with %s before listening" % proc.proc.returncode
        assert time.monotonic() < deadline, "nothing listening on %s:%d" % (address, port)
        time.sleep(0.1)


def tls_flags(tmp_path):
    """A CA and certificates naming each host's own address: --tls-* flags per role."""
    d = tmp_path / "certs"
    d.mkdir()
    ca_key, ca_cert = certs.make_ca()
    certs.write_pair(str(d), "ca", ca_key, ca_cert)
    flags = {}
    for name, ips in (("tracker", [netlab.PUBLIC["tracker"]]),
                      ("peer", [netlab.PUBLIC["pub"], "100.64.1.2", "100.64.2.2"])):
        key, cert = certs.make_cert(ca_key, ca_cert, name, ips)
        c, k = certs.write_pair(str(d), name, key, cert)
        flags[name] = ["--tls-cert", c, "--tls-key", k, "--tls-ca", str(d / "ca.pem")]
    return flags


def story(lab, procs, tmp_path, seeder_skew=None, fetcher_skew=None, seeder="pub", fetcher="homeA", tls=None,
          size=3 * 1024 * 1024 + 11, relay=True):
    """Sam shares a file from ``seeder``; Fay downloads it at ``fetcher``. ``tls``: tls_flags()."""
    (tmp_path / "info").write_text(TRACKER + "\n" + ("relay " + RELAY + "\n" if relay else ""))
    tracker = Process(lab.exec_prefix("tracker") + [bin_path("mbt-tracker"), str(tmp_path / "info"), "1",
                                                   "--state-dir", str(tmp_path / "t")]
                      + (tls["tracker"] if tls else []), log=str(tmp_path / "tracker.log"))
    procs.append(tracker)
    peer_flags = tls["peer"] if tls else None
    sam = start(lab, procs, tmp_path, seeder, "sam", seeder_skew, peer_flags)
    fay = start(lab, procs, tmp_path, fetcher, "fay", fetcher_skew, peer_flags)
    assert until_ok(sam, "create_user sam pw", "user sam created").startswith("user sam created")
    assert sam.cmd("login sam pw").startswith("logged in as sam")
    sam.cmd("create_group club")
    assert fay.cmd("create_user fay pw").startswith("user fay created")
    assert fay.cmd("login fay pw").startswith("logged in as fay")
    fay.cmd("join_group club")
    assert sam.cmd("accept_request club fay").startswith("fay is now a member")
    data = os.urandom(size)
    (tmp_path / "sam" / "clip.bin").write_bytes(data)
    assert sam.cmd("upload_file clip.bin club").startswith("shared clip.bin in club")
    return sam, fay, data


def finish(fay, tmp_path, data, timeout=40.0, started=False):
    if not started:
        assert fay.cmd("download_file club clip.bin .").startswith("downloading clip.bin")
    deadline, status = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        status = fay.cmd("show_downloads")
        if status.startswith(("[C]", "[F]")):
            break
        time.sleep(0.3)
    assert status.startswith("[C] [club] clip.bin"), status
    assert (tmp_path / "fay" / "clip.bin").read_bytes() == data


def test_a_public_seeder_serves_a_downloader_behind_nat_by_key(lab, procs, tmp_path):
    sam, fay, data = story(lab, procs, tmp_path)
    finish(fay, tmp_path, data)
    # The seeder saw the home router's address, not the one Fay announced.
    log = (tmp_path / "sam.log").read_text(errors="replace") if (tmp_path / "sam.log").exists() else ""
    assert "100.64.1.2" not in log.replace("100.64.1.2:7000", "")


@pytest.mark.parametrize("seeder_skew,fetcher_skew", [("+10m", "-10m"), ("+59m", "+10m"), ("-10m", "+59m")])
def test_downloads_complete_with_clocks_minutes_apart(lab, procs, tmp_path, seeder_skew, fetcher_skew):
    sam, fay, data = story(lab, procs, tmp_path, seeder_skew, fetcher_skew)
    finish(fay, tmp_path, data)
    assert not any("clock" in n for n in sam.notices + fay.notices)


def test_a_clock_hours_off_is_told_once_and_still_shares(lab, procs, tmp_path):
    sam, fay, data = story(lab, procs, tmp_path, seeder_skew="+3h")
    finish(fay, tmp_path, data)
    sam.cmd("help")
    told = [n for n in sam.notices if "clock" in n]
    assert len(told) == 1 and "3h 0m ahead of the trackers' time" in told[0], sam.notices


REPLAY = r'''
import json, socket, sys
from mbt.tickets import new_session_key, public_key_hex, sign_challenge
tracker, seeder, h = sys.argv[1], sys.argv[2], sys.argv[3]
def lines(sock):
    buf = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line
t = socket.create_connection(tracker.split(":"), timeout=5)
rd = lines(t)
key = new_session_key()
for i, req in enumerate([{"op": "login", "user": "fay", "password": "pw", "address": "100.64.2.2:7000",
                          "session_key": public_key_hex(key)},
                         {"op": "get_ticket", "group": "club", "file_hash": h}]):
    t.sendall(json.dumps(dict(req, id=i + 1)).encode() + b"\n")
    reply = json.loads(next(rd))
    while "id" not in reply:
        reply = json.loads(next(rd))
print(reply["ok"]["ticket"])
'''

HELLO = r'''
import socket, sys
from mbt.tickets import new_session_key, sign_challenge
seeder, h, ticket = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.create_connection(seeder.split(":"), timeout=5)
s.sendall(("HELLO mbt/2 club %s fay %s\n" % (h, ticket)).encode())
first = s.makefile("rb").readline().decode().strip()
challenge = first.split(" ")[1]
thief = new_session_key()
s.sendall(("PROOF %s\nREQUEST 0 0 1000\n" % sign_challenge(thief, challenge, "club", h, "fay")).encode())
print(first.split(" ")[0], s.makefile("rb").readline().decode().strip())
'''


def test_a_ticket_replayed_from_another_namespace_is_refused(lab, procs, tmp_path):
    sam, fay, data = story(lab, procs, tmp_path)
    file_hash = hash_file(str(tmp_path / "sam" / "clip.bin")).file_hash
    # Fay's real ticket, issued at home B (another login of hers, with its own key)...
    got = lab.sh("homeB", sys.executable, "-c", REPLAY, TRACKER, "198.18.0.20:7000", file_hash)
    ticket = got.stdout.strip()
    # ...replayed from a public host that does not hold that key.
    out = lab.sh("pub2", sys.executable, "-c", HELLO, "198.18.0.20:7000", file_hash, ticket).stdout
    assert out.startswith("CHALLENGE ERROR proof does not verify"), out


def test_a_lab_is_removed_also_when_the_test_fails():
    lab = netlab.Lab()
    with pytest.raises(RuntimeError):
        with lab:
            assert lab.leftovers()["netns"]
            raise RuntimeError("the test failed")
    assert lab.leftovers() == {"netns": [], "links": []}


def tracker_log(tmp_path):
    return (tmp_path / "tracker.log").read_text(errors="replace")


def test_a_seeder_behind_nat_is_reached_by_connect_back(lab, procs, tmp_path):
    sam, fay, data = story(lab, procs, tmp_path, seeder="homeA", fetcher="pub")
    finish(fay, tmp_path, data)
    log = tracker_log(tmp_path)
    assert "peer address 100.64.1.2:7000 is not reachable" in log
    assert "connect_peer by fay" in log


def test_two_homes_behind_nat_meet_at_the_relay(lab, procs, tmp_path):
    start_relay(lab, procs, tmp_path)
    sam, fay, data = story(lab, procs, tmp_path, seeder="homeA", fetcher="homeB")
    finish(fay, tmp_path, data)
    assert "connect_peer by fay" in tracker_log(tmp_path)
    assert "paired" in (tmp_path / "relay.log").read_text(errors="replace")


def wait_status(fay, check, timeout=30.0):
    """Poll show_downloads until ``check(status)``; return the last status."""
    deadline, status = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        status = fay.cmd("show_downloads")
        if check(status):
            break
        time.sleep(0.2)
    return status


def percent(status):
    parts = [w for w in status.split() if w.endswith("%")]
    return float(parts[0][:-1]) if parts and parts[0][:-1].replace(".", "").isdigit() else 0.0


def test_relay_killed_mid_download_fails_over_to_the_restarted_relay(lab, procs, tmp_path):
    # 1 MB/s per connection: the 6 MB download takes seconds, so it is cut in the middle.
    relay = start_relay(lab, procs, tmp_path, "--rate", "1M")
    sam, fay, data = story(lab, procs, tmp_path, seeder="homeA", fetcher="homeB", size=6 * 1024 * 1024)
    assert fay.cmd("download_file club clip.bin .").startswith("downloading clip.bin")
    status = wait_status(fay, lambda s: "(relay 1)" in s and 10.0 <= percent(s) < 70.0)
    assert "(relay 1)" in status and percent(status) < 70.0, status
    relay.kill()
    cut = wait_status(fay, lambda s: "relay" not in s, timeout=15)
    assert cut.startswith("[D]") and "relay" not in cut, cut
    start_relay(lab, procs, tmp_path)
    finish(fay, tmp_path, data, timeout=60, started=True)
    assert "paired" in (tmp_path / "relay.log").read_text(errors="replace")


def test_relay_killed_mid_download_carries_on_from_another_peer(lab, procs, tmp_path):
    relay = start_relay(lab, procs, tmp_path, "--rate", "1M")
    sam, fay, data = story(lab, procs, tmp_path, seeder="homeA", fetcher="homeB", size=6 * 1024 * 1024)
    assert fay.cmd("download_file club clip.bin .").startswith("downloading clip.bin")
    status = wait_status(fay, lambda s: "(relay 1)" in s and percent(s) >= 10.0)
    assert "(relay 1)" in status and percent(status) < 70.0, status
    # A second seeder on the public side (reached directly), then the relay dies for good.
    pia = start(lab, procs, tmp_path, "pub", "pia")
    assert pia.cmd("create_user pia pw").startswith("user pia created")
    assert pia.cmd("login pia pw").startswith("logged in as pia")
    pia.cmd("join_group club")
    assert sam.cmd("accept_request club pia").startswith("pia is now a member")
    (tmp_path / "pia" / "clip.bin").write_bytes(data)
    assert pia.cmd("upload_file clip.bin club").startswith("shared clip.bin in club")
    relay.kill()
    finish(fay, tmp_path, data, timeout=60, started=True)


def evil_relay(lab, procs, tmp_path, *flags):
    script = os.path.join(os.path.dirname(__file__), "evil_relay.py")
    relay = Process(lab.exec_prefix("relay") + [sys.executable, script, netlab.PUBLIC["relay"], "7400"]
                    + list(flags), cwd=str(tmp_path), log=str(tmp_path / "relay.log"))
    procs.append(relay)
    wait_listening(lab, "relay", netlab.PUBLIC["relay"], 7400, relay)
    return relay


def test_with_tls_the_relay_sees_only_ciphertext_and_cannot_forge(lab, procs, tmp_path):
    record = tmp_path / "relayed.bin"
    # The relay records both directions and inverts the 200 000th byte it pipes.
    evil_relay(lab, procs, tmp_path, "--record", str(record), "--flip-at", "200000")
    sam, fay, data = story(lab, procs, tmp_path, seeder="homeA", fetcher="homeB", tls=tls_flags(tmp_path))
    finish(fay, tmp_path, data, timeout=60)
    seen = record.read_bytes()
    assert len(seen) > len(data)            # the whole file went through the relay...
    for plain in (b"HELLO mbt/2", b"BITFIELD", b"PIECE ", b"REQUEST ", data[:64],
                  data[1000000:1000064], data[-64:]):
        assert plain not in seen            # ...and none of it in clear
    assert "flipped byte 200000" in (tmp_path / "relay.log").read_text()
    # The flipped byte broke TLS on the first relayed connection, never the file.
    fay_log = (tmp_path / "fay" / "state" / "peer.log").read_text(errors="replace")
    assert "bad record mac" in fay_log.lower() or "decryption failed" in fay_log.lower(), fay_log[-3000:]


def test_without_tls_a_byte_flipped_by_the_relay_is_caught_by_the_piece_hash(lab, procs, tmp_path):
    evil_relay(lab, procs, tmp_path, "--flip-at", "200000")
    sam, fay, data = story(lab, procs, tmp_path, seeder="homeA", fetcher="homeB")
    assert fay.cmd("download_file club clip.bin .").startswith("downloading clip.bin")
    status = wait_status(fay, lambda s: "corrupt data" in s)
    assert status.startswith("[D]") and "corrupt data" in status, status
    assert not (tmp_path / "fay" / "clip.bin").exists()


REFUSER = r'''
import json, socket, sys, threading
from mbt.manifest import hash_file
from mbt.tickets import new_session_key, public_key_hex
tracker, me, path = sys.argv[1], sys.argv[2], sys.argv[3]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((me, 7000))
srv.listen(16)
t = socket.create_connection(tracker.split(":"), timeout=30)
f = t.makefile("rb")
def ask(i, req):
    t.sendall(json.dumps(dict(req, id=i)).encode() + b"\n")
    while True:
        reply = json.loads(f.readline())
        if reply.get("id") == i:
            assert "ok" in reply, reply
            return reply
ask(1, {"op": "login", "user": "rex", "password": "pw", "address": me + ":7000",
        "session_key": public_key_hex(new_session_key())})
ask(2, {"op": "share_file", "group": "club", "manifest": hash_file(path, "clip.bin").to_dict()})
print("sharing", flush=True)
while True:         # every downloader is refused at its HELLO
    c, _ = srv.accept()
    c.makefile("rb").readline()
    c.sendall(b"ERROR not serving anyone today\n")
    c.close()
'''


def test_when_every_peer_refuses_or_is_unreachable_the_user_is_told_why_once(lab, procs, tmp_path):
    # Sam shares from behind NAT and no relay is listed: nobody can reach him from home B.
    sam, fay, data = story(lab, procs, tmp_path, seeder="homeA", fetcher="homeB", relay=False)
    # Rex, on the public side, lists the same file but refuses every downloader.
    rex = start(lab, procs, tmp_path, "pub2", "rex")
    assert rex.cmd("create_user rex pw").startswith("user rex created")
    assert rex.cmd("login rex pw").startswith("logged in as rex")
    rex.cmd("join_group club")
    assert sam.cmd("accept_request club rex").startswith("rex is now a member")
    rex.stop()
    (tmp_path / "rex" / "clip.bin").write_bytes(data)
    refuser = Process(lab.exec_prefix("pub2") + [sys.executable, "-u", "-c", REFUSER, TRACKER,
                                                 netlab.PUBLIC["pub2"], str(tmp_path / "rex" / "clip.bin")],
                      log=str(tmp_path / "refuser.log"))
    procs.append(refuser)
    deadline = time.monotonic() + 20
    while "2 peer" not in fay.cmd("list_files club") and time.monotonic() < deadline:
        time.sleep(0.3)
    assert fay.cmd("download_file club clip.bin .").startswith("downloading clip.bin")
    status = wait_status(fay, lambda s: "refused" in s and "unreachable" in s, timeout=30)
    assert status.startswith("[D] [club] clip.bin"), status
    assert "refused: not serving anyone today (198.18.0.21:7000)" in status, status
    assert "unreachable: 100.64.1.2:7000" in status and "no relay" in status, status
    time.sleep(6)           # several more rounds of trying every peer...
    fay.cmd("show_downloads")
    told = [n for n in fay.notices if "cannot download clip.bin from any peer" in n]
    assert len(told) == 1, fay.notices      # ...and still one notice
    assert "refused: not serving anyone today" in told[0] and "unreachable: 100.64.1.2:7000" in told[0]


TRACKER2 = netlab.PUBLIC["tracker2"] + ":7300"


def unix_socket_url(pg_server):
    """A fresh database on the test PostgreSQL, by its Unix socket (reachable from every namespace)."""
    name = pg_server.new_database().rsplit("/", 1)[1]
    return "postgresql://postgres@/%s?host=%s&port=%d" % (name, pg_server.root, pg_server.port)


@pytest.mark.parametrize("via", ["connect-back", "relay"])
@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_connect_back_and_relay_across_two_trackers_of_a_fleet(lab, procs, tmp_path, request, store, via):
    """Sam (at home A) is logged in at tracker 2, Fay at tracker 1: tracker 1 has tracker 2 push the dial."""
    url = unix_socket_url(request.getfixturevalue("pg_server")) if store == "postgresql" else None
    if via == "relay":
        start_relay(lab, procs, tmp_path)
    (tmp_path / "info").write_text("%s\n%s\nrelay %s\n" % (TRACKER, TRACKER2, RELAY))
    (tmp_path / "info1").write_text("%s\nrelay %s\n" % (TRACKER, RELAY))
    (tmp_path / "info2").write_text("%s\nrelay %s\n" % (TRACKER2, RELAY))
    for number, host in ((1, "tracker"), (2, "tracker2")):
        where = ["--store", url] if url else ["--state-dir", str(tmp_path / ("t%d" % number))]
        t = Process(lab.exec_prefix(host) + [bin_path("mbt-tracker"), str(tmp_path / "info"), str(number)] + where,
                    log=str(tmp_path / ("tracker%d.log" % number)))
        procs.append(t)
        wait_listening(lab, host, netlab.PUBLIC[host], 7300, t)
    sam = start(lab, procs, tmp_path, "homeA", "sam", info="info2")
    fay = start(lab, procs, tmp_path, "pub" if via == "connect-back" else "homeB", "fay", info="info1")
    assert until_ok(sam, "create_user sam pw", "user sam created").startswith("user sam created")
    assert until_ok(sam, "login sam pw", "logged in as sam").startswith("logged in as sam")
    assert until_ok(sam, "create_group club", "group club created").startswith("group club created")
    assert until_ok(fay, "create_user fay pw", "user fay created").startswith("user fay created")
    assert until_ok(fay, "login fay pw", "logged in as fay").startswith("logged in as fay")
    fay.cmd("join_group club")
    assert until_ok(sam, "accept_request club fay", "fay is now a member").startswith("fay is now a member")
    data = os.urandom(2 * 1024 * 1024 + 5)
    (tmp_path / "sam" / "clip.bin").write_bytes(data)
    assert sam.cmd("upload_file clip.bin club").startswith("shared clip.bin in club")
    # Tracker 1 knows Sam only through tracker 2, which found his address unreachable.
    assert "1 peer" in until_ok(fay, "list_files club", "clip.bin", timeout=20), fay.cmd("list_files club")
    finish(fay, tmp_path, data, timeout=60)
    t1 = (tmp_path / "tracker1.log").read_text(errors="replace")
    t2 = (tmp_path / "tracker2.log").read_text(errors="replace")
    assert "connect_peer by fay" in t1 and "connect_peer" not in t2
    assert "peer address 100.64.1.2:7000 is not reachable" in t2
    sam_log = (tmp_path / "sam" / "state" / "peer.log").read_text(errors="replace")
    assert "connected to tracker %s" % TRACKER2 in sam_log
    assert "dialling %s" % via in sam_log
