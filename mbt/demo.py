"""``make demo``: the whole mbt story on one machine, driven like a user would.

Two trackers, three peers (``mbt-client`` processes with their consoles on
pipes), three users, one group, one upload, two parallel downloads (the second
downloader also fetches pieces from the first one's partial copy), then a hash
check. Everything runs in a temporary directory that is removed at the end.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sys
import tempfile
import time

from mbt.driver import Console, Process, bin_path, free_port, wait_port
from mbt.errors import ConfigError
from mbt.trackerinfo import load_tracker_info

FILE_SIZE = 48 * 1024 * 1024
#: Alice's upload cap, so the two downloads overlap long enough to watch them.
ALICE_RATE = "12M"


def say(text: str = "") -> None:
    print(text, flush=True)


def port_free(host: str, port: int) -> bool:
    s = socket.socket()
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def tracker_info(work: str) -> str:
    """The repo's tracker_info.txt if its ports are free, else one with free ports."""
    try:
        trackers = load_tracker_info("tracker_info.txt")
        if len(trackers) >= 2 and all(port_free(t.host, t.port) for t in trackers[:2]):
            say("trackers from ./tracker_info.txt: %s" % ", ".join(str(t) for t in trackers[:2]))
            return os.path.abspath("tracker_info.txt")
        say("the ports in ./tracker_info.txt are busy; using free ones instead")
    except ConfigError as e:
        say("cannot use ./tracker_info.txt (%s); using free ports" % e)
    path = os.path.join(work, "tracker_info.txt")
    with open(path, "w") as f:
        f.write("# written by make demo\n127.0.0.1:%d\n127.0.0.1 %d\n" % (free_port(), free_port()))
    return path


def notice_line(name: str, notice: str) -> str:
    """``bob: notice: ...``: a console's notice already says it is one."""
    return "%s: %s" % (name, notice.strip())


def show(address_to_name, consoles):
    def echo(address, line, reply):
        con = consoles.get(address)
        if con is not None:
            for notice in con.notices:
                say(notice_line(address_to_name[address], notice))
            del con.notices[:]
        say("%s> %s" % (address_to_name[address], line))
        for ln in reply.splitlines():
            say("    " + ln)
    return echo


def main() -> int:
    work = tempfile.mkdtemp(prefix="mbt-demo-")
    procs = []
    ok = False
    try:
        info = tracker_info(work)
        trackers = load_tracker_info(info)
        for n in (1, 2):
            t = Process([bin_path("mbt-tracker"), info, str(n), "--state-dir", os.path.join(work, "tracker%d" % n)],
                        log=os.path.join(work, "tracker%d.log" % n))
            procs.append(t)
            wait_port(trackers[n - 1].port, 20, t.proc)
        say("started 2 trackers")
        names = {}
        by_address = {}
        echo = show(names, by_address)
        peers = {}
        for name in ("alice", "bob", "carol"):
            address = "127.0.0.1:%d" % free_port()
            names[address] = name
            os.makedirs(os.path.join(work, name), exist_ok=True)
            extra = ["--upload-rate", ALICE_RATE] if name == "alice" else []
            peers[name] = c = Console(address, info, os.path.join(work, name, "state"),
                                      cwd=os.path.join(work, name), extra=extra, echo=echo)
            by_address[address] = c
            procs.append(c)
        say("started 3 peers: %s" % ", ".join("%s on %s" % (n, c.address) for n, c in peers.items()))
        say()
        alice, bob, carol = peers["alice"], peers["bob"], peers["carol"]

        def must(con, line):
            reply = con.cmd(line)
            if reply.startswith("error: "):
                raise RuntimeError("%r failed: %s" % (line, reply))
            return reply

        for name, con in peers.items():
            must(con, "create_user %s secret-%s" % (name, name))
            must(con, "login %s secret-%s" % (name, name))
        must(alice, "create_group movies")
        must(bob, "join_group movies")
        must(carol, "join_group movies")
        must(alice, "list_requests movies")
        must(alice, "accept_request movies bob")
        must(alice, "accept_request movies carol")
        must(bob, "list_groups")
        carol.cmd("list_files nosuchgroup")          # errors are one clear line

        data = os.urandom(FILE_SIZE)
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(work, "alice", "holiday.mkv"), "wb") as f:
            f.write(data)
        del data
        must(alice, "upload_file holiday.mkv movies")
        must(bob, "list_files movies")
        for con in (bob, carol):
            os.makedirs(os.path.join(work, con is bob and "bob" or "carol", "downloads"), exist_ok=True)
        must(bob, "download_file movies holiday.mkv downloads")
        # Let bob get a head start so carol can take pieces from his partial copy.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if _percent(bob) >= 15:
                break
            time.sleep(0.3)
        must(carol, "download_file movies holiday.mkv downloads")
        say()
        say("*** killing tracker 1 (SIGKILL) while both downloads run ***")
        procs[0].kill()
        say()
        deadline = time.monotonic() + 120
        done = set()
        while time.monotonic() < deadline and len(done) < 2:
            for con in (bob, carol):
                if con in done:
                    continue
                line = con.cmd("show_downloads")
                if line.startswith("[C]") or line.startswith("[F]"):
                    done.add(con)
            time.sleep(0.7)
        must(carol, "list_files movies")
        say()
        ok = True
        for name in ("bob", "carol"):
            path = os.path.join(work, name, "downloads", "holiday.mkv")
            if not os.path.exists(path):
                say("FAILED: %s has no %s" % (name, path))
                ok = False
                continue
            with open(path, "rb") as f:
                got = hashlib.file_digest(f, "sha256").hexdigest() if hasattr(hashlib, "file_digest") \
                    else hashlib.sha256(f.read()).hexdigest()
            same = got == digest
            ok = ok and same
            say("%s's copy: sha256 %s... %s" % (name, got[:16], "matches alice's file" if same else "DIFFERS"))
        must(bob, "logout")
        must(carol, "list_files movies")
        say()
        say("demo %s" % ("finished: every copy verified" if ok else "FAILED"))
    except Exception as e:          # the demo reports, it does not trace back at the user
        say("demo failed: %s" % e)
        ok = False
    finally:
        for p in reversed(procs):
            p.stop(5)
        if os.environ.get("MBT_DEMO_KEEP"):
            say("kept %s" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def _percent(con) -> int:
    reply = con.cmd("show_downloads")
    for tok in reply.split():
        if tok.endswith("%") and tok[:-1].isdigit():
            return int(tok[:-1])
    return 100 if reply.startswith("[C]") else 0


if __name__ == "__main__":
    sys.exit(main())
