"""A symlink put at ``DEST.part`` while a peer is down is not followed at its restart (issue #12 item 1).

Real processes: a tracker, a slow seeder and a downloader ``mbt-client``. The
download is paused by ``logout``, the downloader quits, its ``DEST.part`` is
replaced by a symlink to another file, the downloader is started again with
the same state dir and logs in: the download must fail with a clear reason,
and the other file must be exactly as it was.
"""

import os
import time

from tests.test_e2e import start_client, start_tracker

VICTIM = b"precious data that must never be touched\n"


def poll(c, command, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        reply = c.cmd(command)
        if predicate(reply) or time.monotonic() > deadline:
            return reply
        time.sleep(0.2)


def test_a_symlink_at_dest_part_is_not_followed_after_a_restart(procs, tmp_path):
    _tracker, info, _ports = start_tracker(procs, tmp_path)
    ann = start_client(procs, tmp_path, "ann", str(info), extra=["--upload-rate", "200k"])
    (tmp_path / "ann" / "f.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    assert ann.cmd("create_user ann pw").startswith("user ann created")
    assert ann.cmd("login ann pw").startswith("logged in as ann")
    assert ann.cmd("create_group g").startswith("group g created")
    assert ann.cmd("upload_file f.bin g").startswith("shared f.bin in g")
    ben = start_client(procs, tmp_path, "ben", str(info))
    assert ben.cmd("create_user ben pw").startswith("user ben created")
    assert ben.cmd("login ben pw").startswith("logged in as ben")
    ben.cmd("join_group g")
    assert ann.cmd("accept_request g ben") == "ben is now a member of g"
    (tmp_path / "ben" / "dl").mkdir()
    assert ben.cmd("download_file g f.bin dl").startswith("downloading f.bin into")
    progress = poll(ben, "show_downloads", lambda r: "[D]" in r and " 0%" not in r and "0.0%" not in r, 20)
    assert progress.startswith("[D]"), progress
    ben.cmd("logout")
    assert ben.stop() == 0

    part = tmp_path / "ben" / "dl" / "f.bin.part"
    assert part.exists()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    os.unlink(part)
    part.symlink_to(victim)

    ben = start_client(procs, tmp_path, "ben", str(info))
    reply = ben.cmd("login ben pw")
    assert "logged in as ben" in reply
    status = poll(ben, "show_downloads", lambda r: r.startswith("[F]") or r.startswith("[C]"), 20)
    assert victim.read_bytes() == VICTIM
    assert not os.path.lexists(tmp_path / "ben" / "dl" / "f.bin")
    assert status.startswith("[F]") and "symbolic link" in status, status
    told = "\n".join(ben.notices + [reply])        # the notice may come before or with the reply
    assert "failed: refusing %s: it is a symbolic link (not followed)" % part in told
    assert os.path.islink(part)             # someone else's: reported, not deleted
