"""Raw telnet commands (IAC EOF, SUSP, IP, ...) against a real ``twistd -n mbt-peer``: console and manhole."""

import os
import re
import select
import time

import pytest

from mbt.driver import Process, bin_path, free_port, wait_port
from tests.test_e2e import Telnet, start_tracker

IAC, EOF, SUSP, ABORT = b"\xff", b"\xec", b"\xed", b"\xee"
IP, BRK, AO, AYT, EC, EL, NOP, GA = b"\xf4", b"\xf3", b"\xf5", b"\xf6", b"\xf7", b"\xf8", b"\xf1", b"\xf9"


def closed_within(t, seconds):
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            t._read(0.2)
    except EOFError:
        return True
    return False


@pytest.fixture
def twistd_peer(procs, tmp_path):
    _tracker, info, _ = start_tracker(procs, tmp_path)
    console, manhole = free_port(), free_port()
    peer = Process([bin_path("twistd"), "-n", "mbt-peer", "--address", "127.0.0.1:%d" % free_port(),
                    "--info", info, "--console", "tcp:%d" % console, "--manhole", "tcp:%d" % manhole,
                    "--state-dir", str(tmp_path / "peer")], cwd=str(tmp_path), log=str(tmp_path / "peer.log"))
    procs.append(peer)
    wait_port(console, 30, peer.proc)
    wait_port(manhole, 30, peer.proc)
    return peer, console, manhole, tmp_path


def test_telnet_commands_from_a_real_client_never_kill_the_console(twistd_peer):
    peer, console, _manhole, tmp_path = twistd_peer
    t = Telnet(console)
    assert "not logged in" in t.until_prompt()        # the banner says who this console is
    # Ctrl-C in a line-mode client is IAC IP: the line so far is dropped.
    t.sock.sendall(b"clear" + IAC + IP + b"help list_groups\r\n")
    reply = t.until_prompt()
    assert "usage: list_groups" in reply and "unknown" not in reply
    # Every other command a client may send: the session goes on.
    t.sock.sendall(b"hel" + IAC + SUSP + IAC + AO + IAC + AYT + IAC + BRK + IAC + NOP + IAC + GA
                   + IAC + ABORT + IAC + EC + IAC + EL + b"help logout\r\n")
    assert "usage: logout" in t.until_prompt()
    # Ctrl-D on an empty line is IAC EOF: that session ends like quit.
    t.sock.sendall(IAC + EOF)
    assert closed_within(t, 10)
    assert "bye" in t.buf.decode()
    # The peer and its other sessions are fine.
    t2 = Telnet(console)
    t2.until_prompt()
    assert "usage: login" in t2.cmd("help login")
    t2.cmd("create_user tia pw")
    assert t2.cmd("login tia pw").startswith("logged in as tia")
    t3 = Telnet(console)
    assert "logged in as tia" in t3.until_prompt()
    assert t3.cmd("logout").startswith("logged out tia")
    deadline = time.monotonic() + 10
    while b"in another console session: logged out tia" not in t2.buf and time.monotonic() < deadline:
        t2._read(0.2)
    assert b"notice: in another console session: logged out tia" in t2.buf
    assert peer.proc.poll() is None
    log = (tmp_path / "peer.log").read_text()
    assert "Traceback" not in log and "Stumped" not in log


def test_telnet_commands_in_the_manhole_never_kill_it(twistd_peer):
    peer, _console, manhole, tmp_path = twistd_peer
    user, password = (tmp_path / "peer" / "manhole.passwd").read_text().strip().split(":", 1)
    t = Telnet(manhole)
    s = t.sock
    real_sendall = s.sendall

    def until(marker, timeout=20):
        deadline = time.monotonic() + timeout
        while marker not in t.buf:
            assert time.monotonic() < deadline, t.buf[-300:]
            raw = t.sock.recv(65536) if select.select([t.sock], [], [], 0.2)[0] else b""
            # Like a real client: agree to what the server does (WILL/WONT ECHO) - the manhole
            # waits for the answer to its WONT ECHO after the password.
            for verb, opt in re.findall(rb"\xff([\xfb\xfc])(.)", raw, re.S):
                real_sendall(IAC + (b"\xfd" if verb == b"\xfb" else b"\xfe") + opt)
            for opt in re.findall(rb"\xff\xfd(.)", raw, re.S):
                real_sendall(IAC + b"\xfc" + opt)
            t.buf += re.sub(rb"\xff[\xfb-\xfe].", b"", raw)
        i = t.buf.index(marker) + len(marker)
        out, t.buf = t.buf[:i], t.buf[i:]
        return out

    until(b"Username: ")
    s.sendall(IAC + SUSP + user.encode() + b"\r\n")
    until(b"Password: ")
    s.sendall(password.encode() + b"\r\n")
    until(b">>> ")
    s.sendall(b"1 +" + IAC + IP + b"6 * 7" + IAC + SUSP + IAC + AYT + IAC + AO + b"\r\n")
    until(b"KeyboardInterrupt")       # IAC IP dropped "1 +"
    until(b"[yes]")                   # IAC AYT answered
    until(b"42")
    s.sendall(IAC + EOF)
    assert closed_within(t, 10)
    assert peer.proc.poll() is None
    log = (tmp_path / "peer.log").read_text()
    assert "Traceback" not in log and "Stumped" not in log
    os.remove(tmp_path / "peer" / "manhole.passwd")
