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


def start(lab, procs, tmp_path, host, name, skew=None):
    (tmp_path / name).mkdir(exist_ok=True)
    prefix = lab.exec_prefix(host)
    if skew is not None:
        if shutil.which("faketime") is None:
            pytest.skip("clock skew tests need libfaketime (Debian faketime; make test installs it)")
        prefix = prefix + ["faketime", "-f", skew]
    c = Console(netlab.PUBLIC.get(host, lab.ip(host)) + ":7000", str(tmp_path / "info"),
                str(tmp_path / name / "state"), cwd=str(tmp_path / name), prefix=prefix,
                log=str(tmp_path / (name + ".log")))
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


def start_relay(lab, procs, tmp_path):
    (tmp_path / "relay").mkdir(exist_ok=True)
    relay = Process(lab.exec_prefix("relay") + [bin_path("twistd"), "-n", "--pidfile", "relay.pid", "mbt-relay",
                                                 "--listen", "tcp:7400:interface=" + netlab.PUBLIC["relay"]],
                    cwd=str(tmp_path / "relay"), log=str(tmp_path / "relay.log"))
    procs.append(relay)
    return relay


def story(lab, procs, tmp_path, seeder_skew=None, fetcher_skew=None, seeder="pub", fetcher="homeA"):
    """Sam shares a file from ``seeder``; Fay downloads it at ``fetcher``."""
    (tmp_path / "info").write_text(TRACKER + "\nrelay " + RELAY + "\n")
    tracker = Process(lab.exec_prefix("tracker") + [bin_path("mbt-tracker"), str(tmp_path / "info"), "1",
                                                   "--state-dir", str(tmp_path / "t")],
                      log=str(tmp_path / "tracker.log"))
    procs.append(tracker)
    sam = start(lab, procs, tmp_path, seeder, "sam", seeder_skew)
    fay = start(lab, procs, tmp_path, fetcher, "fay", fetcher_skew)
    assert until_ok(sam, "create_user sam pw", "user sam created").startswith("user sam created")
    assert sam.cmd("login sam pw").startswith("logged in as sam")
    sam.cmd("create_group club")
    assert fay.cmd("create_user fay pw").startswith("user fay created")
    assert fay.cmd("login fay pw").startswith("logged in as fay")
    fay.cmd("join_group club")
    assert sam.cmd("accept_request club fay").startswith("fay is now a member")
    data = os.urandom(3 * 1024 * 1024 + 11)
    (tmp_path / "sam" / "clip.bin").write_bytes(data)
    assert sam.cmd("upload_file clip.bin club").startswith("shared clip.bin in club")
    return sam, fay, data


def finish(fay, tmp_path, data, timeout=40.0):
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
