"""The four front ends as real processes: README's commands side by side, start failures said once."""

import os
import signal
import socket
import subprocess

import pytest

from mbt.driver import Process, bin_path, free_port, wait_port


@pytest.fixture
def info(tmp_path):
    ports = [free_port(), free_port()]
    (tmp_path / "tracker_info.txt").write_text("".join("127.0.0.1:%d\n" % p for p in ports))
    return "tracker_info.txt", ports


def twistd(procs, tmp_path, name, args):
    p = Process([bin_path("twistd"), "-n"] + args, cwd=str(tmp_path), log=str(tmp_path / (name + ".log")))
    procs.append(p)
    return p


def test_readme_twistd_commands_run_side_by_side_in_one_directory(procs, tmp_path, info):
    """Two trackers and a peer under twistd in one directory, no --pidfile: none refuses to start."""
    path, ports = info
    console, peer_port = free_port(), free_port()
    t1 = twistd(procs, tmp_path, "t1", ["mbt-tracker", "--info", path, "--no", "1", "--state-dir", "t1"])
    t2 = twistd(procs, tmp_path, "t2", ["mbt-tracker", "--info", path, "--no", "2", "--state-dir", "t2"])
    wait_port(ports[0], 30, t1.proc)
    wait_port(ports[1], 30, t2.proc)
    peer = twistd(procs, tmp_path, "peer", [
        "mbt-peer", "--address", "127.0.0.1:%d" % peer_port, "--info", path,
        "--console", "tcp:%d:interface=127.0.0.1" % console, "--state-dir", "peer"])
    wait_port(console, 30, peer.proc)
    pidfiles = sorted(n for n in os.listdir(tmp_path) if n.endswith(".pid"))
    assert pidfiles == sorted(["mbt-tracker-1.pid", "mbt-tracker-2.pid",
                               "mbt-peer-127.0.0.1_%d.pid" % peer_port])
    for p in (t1, t2, peer):
        assert p.proc.poll() is None
        os.killpg(p.pid, signal.SIGTERM)
        assert p.wait(15) in (0, -signal.SIGTERM)
    for name in ("t1", "t2", "peer"):
        log = (tmp_path / (name + ".log")).read_text()
        assert "Another twistd server is running" not in log and "Traceback" not in log
    assert [n for n in os.listdir(tmp_path) if n.endswith(".pid")] == []   # twistd removed its own


def test_gitignore_covers_twistd_pid_files():
    root = os.path.join(os.path.dirname(__file__), os.pardir)
    with open(os.path.join(root, ".gitignore")) as f:
        patterns = f.read().split()
    assert "twistd.pid" in patterns and "*.pid" in patterns


@pytest.fixture
def busy_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    yield s.getsockname()[1]
    s.close()


def said_once(text, port):
    """The reason is one line, said once (not Twisted's 'Couldn't listen on ...' again)."""
    line = "error: cannot listen on 127.0.0.1:%d: address already in use" % port
    assert line in text, text
    assert "Couldn't listen" not in text and "Traceback" not in text
    return True


def test_a_busy_port_is_said_once_by_mbt_tracker(tmp_path, busy_port):
    (tmp_path / "info").write_text("127.0.0.1:%d\n" % busy_port)
    p = subprocess.run([bin_path("mbt-tracker"), "info", "1", "--state-dir", "st"], cwd=str(tmp_path),
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert p.returncode == 1 and said_once(p.stderr.decode(), busy_port)
    assert [ln for ln in p.stderr.decode().splitlines() if "error" in ln] == \
        ["error: cannot listen on 127.0.0.1:%d: address already in use" % busy_port]


def test_a_busy_port_is_said_once_by_mbt_client(tmp_path, busy_port):
    (tmp_path / "info").write_text("127.0.0.1:%d\n" % free_port())
    p = subprocess.run([bin_path("mbt-client"), "127.0.0.1:%d" % busy_port, "info", "--state-dir", "st"],
                       cwd=str(tmp_path), stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert p.returncode == 1 and said_once(p.stderr.decode(), busy_port)
    assert [ln for ln in p.stderr.decode().splitlines() if "error" in ln] == \
        ["error: cannot listen on 127.0.0.1:%d: address already in use" % busy_port]


@pytest.mark.parametrize("which", ["tracker", "peer", "console"])
def test_a_busy_port_ends_twistd_with_one_error_line(tmp_path, busy_port, which):
    tracker_port = busy_port if which == "tracker" else free_port()
    (tmp_path / "info").write_text("127.0.0.1:%d\n" % tracker_port)
    if which == "tracker":
        args = ["mbt-tracker", "--info", "info", "--no", "1", "--state-dir", "st"]
    else:
        args = ["mbt-peer", "--info", "info", "--state-dir", "st",
                "--address", "127.0.0.1:%d" % (busy_port if which == "peer" else free_port()),
                "--console", "tcp:%d" % (busy_port if which == "console" else free_port())]
    p = subprocess.run([bin_path("twistd"), "-n"] + args, cwd=str(tmp_path), stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60)
    out = (p.stdout + p.stderr).decode()
    assert p.returncode == 1 and said_once(out, busy_port)
    assert out.count("cannot listen") == 1
    assert [n for n in os.listdir(tmp_path) if n.endswith(".pid")] == []
