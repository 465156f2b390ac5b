"""Downloads over real loopback sockets, including the faults users meet.

Seeders are slowed down with their upload rate limit where a test needs the
download to still be running when something happens; nothing sleeps blindly.
"""

import os

import pytest
import pytest_twisted
from twisted.internet import protocol, reactor

import mbt.peer.download as download_mod
import mbt.peer.swarm as swarm_mod
from mbt.manifest import PIECE_SIZE
from mbt.peer.storage import bitfield_hex
from tests.cluster import Cluster, make_file, sha256_file, wait_download, wait_for

MiB = 1024 * 1024


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    pytest_twisted.blockon(c.stop())


@pytest_twisted.inlineCallbacks
def swarm(cluster, tmp_path, size, seeders=1, rates=None, seed=7, name="f.bin"):
    """Tracker, ``seeders`` peers sharing one file, and a downloader ``dan``."""
    yield cluster.start_tracker()
    sha = make_file(tmp_path / name, size, seed=seed)
    owner = None
    peers = []
    for i in range(seeders):
        rate = (rates or [0] * seeders)[i]
        p = yield cluster.user("seed%d" % i, upload_rate=rate)
        if owner is None:
            owner = p
            yield p.create_group("g")
        else:
            yield p.join_group("g")
            yield owner.accept_request("g", p.user)
        yield p.upload_file(name, "g")
        peers.append(p)
    dan = yield cluster.user("dan")
    yield dan.join_group("g")
    yield owner.accept_request("g", "dan")
    (tmp_path / "dl").mkdir(exist_ok=True)
    return peers, dan, sha


@pytest.mark.parametrize("size", [0, 1, PIECE_SIZE, 3 * PIECE_SIZE, 3 * PIECE_SIZE + 1])
@pytest_twisted.inlineCallbacks
def test_download_sizes_at_piece_boundaries(cluster, tmp_path, size):
    seeds, dan, sha = yield swarm(cluster, tmp_path, size)
    reply = yield dan.commands.execute("download_file g f.bin dl")
    assert reply.startswith("downloading f.bin into")
    assert (yield wait_download(dan, "g", "f.bin")) == "C"
    assert os.path.getsize(tmp_path / "dl" / "f.bin") == size
    assert sha256_file(tmp_path / "dl" / "f.bin") == sha
    assert os.listdir(tmp_path / "dl") == ["f.bin"]


@pytest_twisted.inlineCallbacks
def test_pieces_come_from_several_seeders_at_once(cluster, tmp_path):
    seeds, dan, sha = yield swarm(cluster, tmp_path, 8 * MiB, seeders=3, rates=[4e6] * 3)
    yield dan.download_file("g", "f.bin", "dl")
    assert (yield wait_download(dan, "g", "f.bin")) == "C"
    assert sha256_file(tmp_path / "dl" / "f.bin") == sha
    uploaded = [s.server_factory.uploaded for s in seeds]
    assert all(u > 0 for u in uploaded), uploaded


@pytest_twisted.inlineCallbacks
def test_download_survives_seeder_killed_mid_transfer(cluster, tmp_path):
    seeds, dan, sha = yield swarm(cluster, tmp_path, 6 * MiB, seeders=2, rates=[2e6, 2e6])
    yield dan.download_file("g", "f.bin", "dl")
    dl = dan.downloads[("g", "f.bin")]
    yield wait_for(lambda: len(dl.have) >= 2, 20, what="a few pieces")
    cluster.kill_peer(seeds[0])
    assert (yield wait_download(dan, "g", "f.bin", timeout=40)) == "C"
    assert sha256_file(tmp_path / "dl" / "f.bin") == sha


def corrupt(path, offset, length=100):
    """Alter bytes of a shared file on disk, keeping its size and mtime (as bit
    rot would): the seeder's own stat checks cannot notice, its downloaders must."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(length)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest_twisted.inlineCallbacks
def test_corrupt_seeder_is_banned_and_good_peers_finish(cluster, tmp_path):
    yield cluster.start_tracker()
    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    sha = make_file(tmp_path / "good" / "f.bin", 4 * PIECE_SIZE, seed=3)
    make_file(tmp_path / "bad" / "f.bin", 4 * PIECE_SIZE, seed=3)
    good = yield cluster.user("good", upload_rate=3e6)
    bad = yield cluster.user("bad")
    dan = yield cluster.user("dan")
    yield cluster.group("g", good, bad, dan)
    yield good.upload_file("good/f.bin", "g")
    yield bad.upload_file("bad/f.bin", "g")
    for i in range(4):                      # every piece of the bad copy is wrong now
        corrupt(tmp_path / "bad" / "f.bin", i * PIECE_SIZE + 1000)
    (tmp_path / "dl").mkdir()
    yield dan.download_file("g", "f.bin", "dl")
    assert (yield wait_download(dan, "g", "f.bin", timeout=40)) == "C"
    assert sha256_file(tmp_path / "dl" / "f.bin") == sha
    dl = dan.downloads[("g", "f.bin")]
    assert bad.address in dl.swarm.banned_addresses
    assert good.address not in dl.swarm.banned_addresses


@pytest_twisted.inlineCallbacks
def test_only_corrupt_seeders_fail_cleanly_with_no_file(cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(swarm_mod, "ALL_BANNED_LIMIT", 1.0)
    seeds, dan, sha = yield swarm(cluster, tmp_path, 3 * PIECE_SIZE)
    corrupt(tmp_path / "f.bin", PIECE_SIZE + 5)
    yield dan.download_file("g", "f.bin", "dl")
    assert (yield wait_download(dan, "g", "f.bin", timeout=30)) == "F"
    line = (yield dan.commands.execute("show_downloads"))
    assert line.startswith("[F] [g] f.bin  every peer sharing it sent corrupt data")
    assert os.listdir(tmp_path / "dl") == []


class StallingServer(protocol.Protocol):
    """A peer that answers the handshake, offers everything, then never sends a byte."""

    pieces = 0

    def dataReceived(self, data):
        if data.startswith(b"HELLO"):
            self.transport.write(b"BITFIELD %d %s\nUNCHOKE\n"
                                 % (self.pieces, bitfield_hex(range(self.pieces), self.pieces).encode()))


@pytest_twisted.inlineCallbacks
def test_stalled_peer_times_out_and_blocks_are_fetched_elsewhere(cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(download_mod, "REQUEST_TIMEOUT", 1.0)
    seeds, dan, sha = yield swarm(cluster, tmp_path, 4 * PIECE_SIZE, rates=[2e6])
    # A staller logged in as a member that "shares" the file.
    staller_factory = protocol.Factory.forProtocol(StallingServer)
    StallingServer.pieces = 4
    port = reactor.listenTCP(0, staller_factory, interface="127.0.0.1")
    try:
        mallory = yield cluster.user("mallory", port=0)
        # Re-point mallory's advertised address at the staller and share the file.
        yield mallory.logout()
        mallory.address = "127.0.0.1:%d" % port.getHost().port
        yield mallory.login("mallory", "pw-mallory")
        yield mallory.join_group("g")
        yield seeds[0].accept_request("g", "mallory")
        yield mallory.upload_file("f.bin", "g")
        yield dan.download_file("g", "f.bin", "dl")
        dl = dan.downloads[("g", "f.bin")]
        yield wait_for(lambda: len(dl.swarm.conns) >= 2 or dl.status != "D", 10, what="two peers")
        assert (yield wait_download(dan, "g", "f.bin", timeout=40)) == "C"
        assert sha256_file(tmp_path / "dl" / "f.bin") == sha
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_two_downloaders_serve_each_other_before_finishing(cluster, tmp_path):
    seeds, dan, sha = yield swarm(cluster, tmp_path, 6 * MiB, rates=[1.5e6])
    eve = yield cluster.user("eve")
    yield eve.join_group("g")
    yield seeds[0].accept_request("g", "eve")
    yield dan.download_file("g", "f.bin", "dl")
    dl = dan.downloads[("g", "f.bin")]
    yield wait_for(lambda: len(dl.have) >= 2, 20, what="dan's first pieces")
    (tmp_path / "dl2").mkdir()
    yield eve.download_file("g", "f.bin", "dl2")
    # Eve gets pieces from Dan while Dan is still downloading.
    yield wait_for(lambda: dan.server_factory.uploaded > 0, 20, what="dan to upload to eve")
    assert dl.status == "D"
    assert (yield wait_download(dan, "g", "f.bin", timeout=60)) == "C"
    assert (yield wait_download(eve, "g", "f.bin", timeout=60)) == "C"
    assert sha256_file(tmp_path / "dl2" / "f.bin") == sha


@pytest_twisted.inlineCallbacks
def test_download_resumes_after_peer_restart(cluster, tmp_path):
    seeds, dan, sha = yield swarm(cluster, tmp_path, 6 * MiB, rates=[2e6])
    yield dan.download_file("g", "f.bin", "dl")
    dl = dan.downloads[("g", "f.bin")]
    yield wait_for(lambda: len(dl.have) >= 4, 20, what="some pieces")
    yield cluster.stop_peer(dan)
    had = len(dl.have)
    assert os.path.exists(tmp_path / "dl" / "f.bin.part")
    assert not os.path.exists(tmp_path / "dl" / "f.bin")
    sent_before = seeds[0].server_factory.uploaded
    dan2 = yield cluster.user("dan", create=False)
    reply = yield dan2.commands.execute("show_downloads")
    assert reply.startswith("[D] [g] f.bin")
    assert (yield wait_download(dan2, "g", "f.bin", timeout=40)) == "C"
    assert sha256_file(tmp_path / "dl" / "f.bin") == sha
    # Only what was missing was fetched again.
    fetched = seeds[0].server_factory.uploaded - sent_before
    assert fetched <= 6 * MiB - had * PIECE_SIZE + 2 * PIECE_SIZE


@pytest_twisted.inlineCallbacks
def test_existing_destination_is_never_overwritten(cluster, tmp_path):
    seeds, dan, sha = yield swarm(cluster, tmp_path, 1000)
    (tmp_path / "dl" / "f.bin").write_bytes(b"mine")
    reply = yield dan.commands.execute("download_file g f.bin dl")
    assert reply.startswith("error: ") and "already exists" in reply
    reply = yield dan.commands.execute("download_file g f.bin nodir/x.bin")
    assert reply.startswith("error: directory") and "does not exist" in reply
    reply = yield dan.commands.execute("download_file g nosuch.bin dl")
    assert reply.startswith("error: no file nosuch.bin in group g")
    assert (tmp_path / "dl" / "f.bin").read_bytes() == b"mine"


@pytest_twisted.inlineCallbacks
def test_logout_pauses_a_download_and_login_resumes_it(cluster, tmp_path):
    seeds, dan, sha = yield swarm(cluster, tmp_path, 6 * MiB, rates=[2e6])
    yield dan.download_file("g", "f.bin", "dl")
    dl = dan.downloads[("g", "f.bin")]
    yield wait_for(lambda: len(dl.have) >= 3, 20, what="some pieces")
    yield dan.logout()
    lines = (yield dan.commands.execute("show_downloads")).split("\n")
    # Logged out nothing is live: said first, and no stale rate or peer count.
    assert lines[0] == "(logged out: nothing is downloading; unfinished downloads resume at the next login)"
    assert lines[1].startswith("[D] [g] f.bin  ") and lines[1].endswith("% paused until the next login")
    assert "/s" not in lines[1] and "peer" not in lines[1]
    reply = yield dan.commands.execute("login dan pw-dan")
    assert "resumed 1 download" in reply
    assert (yield wait_download(dan, "g", "f.bin", timeout=40)) == "C"
    assert sha256_file(tmp_path / "dl" / "f.bin") == sha


@pytest_twisted.inlineCallbacks
def test_seeder_stops_sharing_a_file_truncated_on_disk(cluster, tmp_path):
    seeds, dan, sha = yield swarm(cluster, tmp_path, 3 * PIECE_SIZE)
    notices = []
    seeds[0].subscribe(notices.append)
    with open(tmp_path / "f.bin", "r+b") as f:
        f.truncate(1000)
    yield dan.download_file("g", "f.bin", "dl")
    yield wait_for(lambda: any("changed on disk" in n for n in notices), 20, what="the seeder to notice")
    assert ("g", "f.bin") not in seeds[0].store.shares
    files = (yield dan.list_files("g"))["files"]
    assert files == [] or files[0]["peers"] == 0
    line = yield dan.commands.execute("show_downloads")
    assert line.startswith("[D] [g] f.bin") and not os.path.exists(tmp_path / "dl" / "f.bin")


# -- file identity: rooted manifests, old-style manifests, verify_on_disk -------

def _old_style_uploads(monkeypatch, file_hash=None):
    """Seeders hash like a peer from before roots: file_hash = whole-file SHA-256 (or a forged one)."""
    import dataclasses

    import mbt.peer.node as node_mod
    real = node_mod.hash_file

    def old_hash_file(path, name=None, progress=None, cancelled=None, whole_file=False):
        m = real(path, name, progress, cancelled, whole_file=True)
        return dataclasses.replace(m, file_hash=file_hash) if file_hash else m
    monkeypatch.setattr(node_mod, "hash_file", old_hash_file)


@pytest_twisted.inlineCallbacks
def test_a_rooted_manifest_needs_no_second_pass(cluster, tmp_path):
    seeds, dan, sha = yield swarm(cluster, tmp_path, 3 * PIECE_SIZE + 5)
    yield dan.download_file("g", "f.bin", "dl")
    dl = dan.downloads[("g", "f.bin")]
    assert dl.manifest.rooted and dl.file_hash is None
    assert (yield wait_download(dan, "g", "f.bin")) == "C"
    assert sha256_file(tmp_path / "dl" / "f.bin") == sha


@pytest_twisted.inlineCallbacks
def test_an_old_style_manifest_is_still_checked_against_the_whole_file(cluster, tmp_path, monkeypatch):
    _old_style_uploads(monkeypatch)
    seeds, dan, sha = yield swarm(cluster, tmp_path, 3 * PIECE_SIZE + 5)
    assert seeds[0].store.shares[("g", "f.bin")].manifest["file_hash"] == sha
    yield dan.download_file("g", "f.bin", "dl")
    dl = dan.downloads[("g", "f.bin")]
    assert not dl.manifest.rooted and dl.file_hash is not None
    assert (yield wait_download(dan, "g", "f.bin")) == "C"
    assert sha256_file(tmp_path / "dl" / "f.bin") == sha


@pytest_twisted.inlineCallbacks
def test_good_pieces_under_a_file_hash_that_is_neither_root_nor_sha256_save_nothing(cluster, tmp_path,
                                                                                     monkeypatch):
    _old_style_uploads(monkeypatch, file_hash="0" * 64)
    seeds, dan, sha = yield swarm(cluster, tmp_path, 2 * PIECE_SIZE)
    yield dan.download_file("g", "f.bin", "dl")
    assert (yield wait_download(dan, "g", "f.bin")) == "F"
    line = yield dan.commands.execute("show_downloads")
    assert "whole-file hash mismatch; nothing saved" in line
    assert os.listdir(tmp_path / "dl") == []


@pytest_twisted.inlineCallbacks
def test_verify_on_disk_reads_the_file_back_and_catches_bytes_changed_after_their_check(cluster, tmp_path,
                                                                                       monkeypatch):
    from mbt.peer.storage import PieceFile
    real = PieceFile.verify_and_write

    def write_then_rot(self, index, data):
        ok = real(self, index, data)
        if ok and index == 1:
            os.pwrite(self.fd, b"\xff" if data[7] != 0xff else b"\x00", index * PIECE_SIZE + 7)
        return ok
    monkeypatch.setattr(PieceFile, "verify_and_write", write_then_rot)
    seeds, dan, sha = yield swarm(cluster, tmp_path, 3 * PIECE_SIZE)
    assert (yield dan.commands.execute("set verify_on_disk on")).startswith("completed downloads are read back")
    yield dan.download_file("g", "f.bin", "dl")
    assert (yield wait_download(dan, "g", "f.bin")) == "F"
    assert "whole-file hash mismatch; nothing saved" in (yield dan.commands.execute("show_downloads"))
    assert os.listdir(tmp_path / "dl") == []
