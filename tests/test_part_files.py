"""``.part`` files are never followed through symlinks or shared with other files (issue #12 item 1).

Unit tests of :mod:`mbt.peer.storage` on real files in ``tmp_path``, and one
in-process download over real loopback sockets where the ``.part`` path is
swapped for a symlink while the download is paused. The restart of a real
peer process is in ``tests/test_part_files_e2e.py``.
"""

import os
import stat

import pytest
import pytest_twisted

from mbt.manifest import PIECE_SIZE, hash_file
from mbt.peer.storage import PART_MODE, PieceFile, UnsafePartFile
from tests.cluster import make_file, wait_download, wait_for
from tests.test_download_faults import cluster  # noqa: F401  (the fixture)

VICTIM = b"precious data that must never be touched\n"


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "src.bin"
    make_file(path, 2 * PIECE_SIZE + 10)
    return str(path), hash_file(str(path))


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim.txt"
    path.write_bytes(VICTIM)
    return path


def test_a_symlink_at_the_part_path_is_refused_and_its_target_untouched(tmp_path, source, victim):
    part = tmp_path / "dest.part"
    part.symlink_to(victim)
    with pytest.raises(UnsafePartFile) as e:
        PieceFile(str(part), source[1], writable=True)
    assert "symbolic link" in e.value.strerror
    assert victim.read_bytes() == VICTIM


def test_a_dangling_symlink_is_not_created_through(tmp_path, source):
    part = tmp_path / "dest.part"
    part.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePartFile):
        PieceFile(str(part), source[1], writable=True)
    assert not (tmp_path / "elsewhere").exists()


def test_a_part_file_with_another_hard_link_is_refused(tmp_path, source, victim):
    part = tmp_path / "dest.part"
    os.link(victim, part)
    with pytest.raises(UnsafePartFile) as e:
        PieceFile(str(part), source[1], writable=True)
    assert "hard links" in e.value.strerror
    assert victim.read_bytes() == VICTIM


def test_a_directory_or_fifo_at_the_part_path_is_refused(tmp_path, source):
    (tmp_path / "d.part").mkdir()
    with pytest.raises(OSError):
        PieceFile(str(tmp_path / "d.part"), source[1], writable=True)
    os.mkfifo(tmp_path / "f.part")
    with pytest.raises(UnsafePartFile):
        PieceFile(str(tmp_path / "f.part"), source[1], writable=True)


def test_a_new_part_file_is_private_and_the_finished_file_gets_the_umask_mode(tmp_path, source):
    part = tmp_path / "dest.part"
    old = os.umask(0o022)
    try:
        pf = PieceFile(str(part), source[1], writable=True)
        assert stat.S_IMODE(os.stat(part).st_mode) == PART_MODE == 0o600
        pf.publish(str(tmp_path / "dest"))
        assert stat.S_IMODE(os.stat(tmp_path / "dest").st_mode) == 0o644
        pf.close()
    finally:
        os.umask(old)


def test_an_old_world_readable_part_file_is_made_private_on_resume(tmp_path, source):
    part = tmp_path / "dest.part"
    part.write_bytes(b"")
    os.chmod(part, 0o644)
    PieceFile(str(part), source[1], writable=True).close()
    assert stat.S_IMODE(os.stat(part).st_mode) == 0o600


def test_publish_links_the_open_file_even_if_its_path_was_swapped(tmp_path, source, victim):
    part = tmp_path / "dest.part"
    pf = PieceFile(str(part), source[1], writable=True)
    os.pwrite(pf.fd, b"ours", 0)
    assert pf.is_at()
    os.rename(part, tmp_path / "moved")
    part.symlink_to(victim)
    assert not pf.is_at()
    pf.publish(str(tmp_path / "dest"))
    assert not os.path.islink(tmp_path / "dest")
    assert (tmp_path / "dest").read_bytes()[:4] == b"ours"
    assert victim.read_bytes() == VICTIM
    pf.close()


def test_publish_never_replaces_a_symlink_at_the_destination(tmp_path, source, victim):
    pf = PieceFile(str(tmp_path / "dest.part"), source[1], writable=True)
    (tmp_path / "dest").symlink_to(victim)
    with pytest.raises(FileExistsError):
        pf.publish(str(tmp_path / "dest"))
    assert os.readlink(tmp_path / "dest") == str(victim)
    assert victim.read_bytes() == VICTIM
    pf.close()


# -- a download paused, its .part swapped for a symlink, resumed in the same process ----------

@pytest_twisted.inlineCallbacks
def test_a_part_file_swapped_while_paused_is_never_written_or_linked(cluster, tmp_path, victim):
    yield cluster.start_tracker()
    make_file(tmp_path / "f.bin", 4 * PIECE_SIZE, seed=3)
    ann = yield cluster.user("ann", upload_rate=PIECE_SIZE)      # slow: the download stays running
    yield ann.create_group("g")
    yield ann.upload_file("f.bin", "g")
    ben = yield cluster.user("ben")
    yield ben.join_group("g")
    yield ann.accept_request("g", "ben")
    (tmp_path / "dl").mkdir()
    reply = yield ben.commands.execute("download_file g f.bin dl")
    assert reply.startswith("downloading f.bin into")
    dl = ben.downloads[("g", "f.bin")]
    yield wait_for(lambda: dl.have, 20, what="a first piece")
    yield ben.logout()
    part = tmp_path / "dl" / "f.bin.part"
    os.rename(part, tmp_path / "stolen")
    part.symlink_to(victim)
    ann.set_upload_rate(0)
    yield ben.login("ben", "pw-ben")
    assert (yield wait_download(ben, "g", "f.bin")) == "F"
    assert "replaced" in dl.reason
    assert victim.read_bytes() == VICTIM
    assert not os.path.lexists(tmp_path / "dl" / "f.bin")
    assert os.readlink(part) == str(victim)         # not ours: left alone, not deleted


# -- a finished shared file swapped for a symlink to someone's private file ---------------

@pytest_twisted.inlineCallbacks
def test_a_shared_file_swapped_for_a_symlink_is_never_served(cluster, tmp_path):
    """The planted target even has the shared file's size and mtime: only its
    identity (another inode) and then its content give it away."""
    yield cluster.start_tracker()
    shared = tmp_path / "f.bin"
    make_file(shared, 2 * PIECE_SIZE + 5, seed=4)
    ann = yield cluster.user("ann")
    yield ann.create_group("g")
    yield ann.upload_file("f.bin", "g")
    file_hash = ann.store.shares[("g", "f.bin")].manifest["file_hash"]
    assert ("g", file_hash) in ann.servables
    yield ann.logout()

    secret = tmp_path / "secret.bin"
    make_file(secret, 2 * PIECE_SIZE + 5, seed=5)
    st = os.stat(shared)
    os.utime(secret, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(shared, tmp_path / "moved-away")
    shared.symlink_to(secret)

    yield ann.login("ann", "pw-ann")
    yield wait_for(lambda: ("g", "f.bin") not in ann.store.shares, 20, what="the share dropped")
    assert ("g", file_hash) not in ann.servables
    assert os.readlink(shared) == str(secret)       # not ours: left alone


@pytest_twisted.inlineCallbacks
def test_a_shared_file_swapped_after_its_check_is_not_opened_for_serving(cluster, tmp_path):
    """The path checked is swapped before it is opened: the open file's identity decides."""
    yield cluster.start_tracker()
    shared = tmp_path / "f.bin"
    make_file(shared, PIECE_SIZE, seed=6)
    ann = yield cluster.user("ann")
    yield ann.create_group("g")
    yield ann.upload_file("f.bin", "g")
    share = ann.store.shares[("g", "f.bin")]
    servable = ann.servables.pop(("g", share.manifest["file_hash"]))
    servable.piece_file.close()

    secret = tmp_path / "secret.bin"
    make_file(secret, PIECE_SIZE, seed=7)
    st = os.stat(shared)
    os.utime(secret, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(shared, tmp_path / "moved-away")
    shared.symlink_to(secret)
    ann._serve_share(share)
    assert ("g", share.manifest["file_hash"]) not in ann.servables


# -- direct (O_DIRECT) writes ------------------------------------------------

def _supports_o_direct(directory) -> bool:
    probe = os.path.join(str(directory), ".o_direct_probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except (OSError, AttributeError):
        return False
    os.close(fd)
    os.unlink(probe)
    return True


def _write_every_piece(path, source, direct):
    manifest = hash_file(source)
    data = open(source, "rb").read()
    pf = PieceFile(path, manifest, writable=True, direct_writes=direct)
    try:
        for i in reversed(range(manifest.pieces)):     # any order, the short last piece first
            piece = data[i * PIECE_SIZE:(i + 1) * PIECE_SIZE]
            assert pf.verify_and_write(i, bytearray(piece))
            assert pf.read(i, 0, len(piece)) == piece      # read back through the buffered descriptor
        assert not pf.verify_and_write(0, bytearray(PIECE_SIZE))    # a bad piece is neither written
        return pf.direct, manifest
    finally:
        pf.close()


def test_direct_writes_land_every_byte_and_the_short_last_piece(tmp_path):
    if not _supports_o_direct(tmp_path):
        pytest.skip("the test directory's file system has no O_DIRECT")
    source = str(tmp_path / "src.bin")
    with open(source, "wb") as f:
        f.write(os.urandom(3 * PIECE_SIZE + 12345))       # last piece not a multiple of 4 KiB
    part = str(tmp_path / "dst.part")
    direct, manifest = _write_every_piece(part, source, True)
    assert direct, "O_DIRECT is available here, yet the pieces were written buffered"
    assert open(part, "rb").read() == open(source, "rb").read()


def test_direct_writes_off_keeps_the_page_cache_path(tmp_path):
    source = str(tmp_path / "src.bin")
    with open(source, "wb") as f:
        f.write(os.urandom(PIECE_SIZE + 1))
    part = str(tmp_path / "dst.part")
    direct, _ = _write_every_piece(part, source, False)
    assert not direct
    assert open(part, "rb").read() == open(source, "rb").read()


def test_a_failing_direct_write_falls_back_to_the_page_cache(tmp_path):
    if not _supports_o_direct(tmp_path):
        pytest.skip("the test directory's file system has no O_DIRECT")
    source = str(tmp_path / "src.bin")
    with open(source, "wb") as f:
        f.write(os.urandom(2 * PIECE_SIZE))
    data = open(source, "rb").read()
    pf = PieceFile(str(tmp_path / "dst.part"), hash_file(source), writable=True, direct_writes=True)
    try:
        assert pf.direct
        # A file system that opens with O_DIRECT but then refuses the write:
        # here, a descriptor that cannot write at all stands in for it.
        os.close(pf._direct_fd)
        pf._direct_fd = os.open(str(tmp_path / "dst.part"), os.O_RDONLY)
        assert pf.verify_and_write(1, bytearray(data[PIECE_SIZE:]))
        assert not pf.direct                                   # off for the rest of this file
        assert pf.verify_and_write(0, bytearray(data[:PIECE_SIZE]))
    finally:
        pf.close()
    assert open(str(tmp_path / "dst.part"), "rb").read() == data
