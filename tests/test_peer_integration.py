"""Integration: real tracker and peers on loopback, the group and share story."""

import os

import pytest
import pytest_twisted

from tests.cluster import Cluster, make_file, pause, sha256_file, wait_download, wait_for


@pytest.fixture
def cluster(tmp_path, store_url):
    """A tracker over each store in turn (SQLite, then PostgreSQL) and its peers."""
    c = Cluster(tmp_path, store_url)
    yield c
    pytest_twisted.blockon(c.stop())


def files_of(result, name):
    return [f for f in result["files"] if f["name"] == name]


@pytest_twisted.inlineCallbacks
def test_group_story_upload_and_download(cluster, tmp_path):
    yield cluster.start_tracker()
    alice = yield cluster.user("alice")
    bob = yield cluster.user("bob")
    yield cluster.group("club", alice, bob)
    sha = make_file(tmp_path / "song.bin", 3 * 512 * 1024 + 17)
    up = yield alice.commands.execute("upload_file song.bin club")
    assert up.startswith("shared song.bin in club: %d bytes" % (3 * 512 * 1024 + 17)), up
    listing = yield bob.commands.execute("list_files club")
    assert listing.split()[0] == "song.bin" and "1 peer" in listing
    (tmp_path / "dl").mkdir()
    reply = yield bob.commands.execute("download_file club song.bin dl")
    assert reply == "downloading song.bin into %s" % (tmp_path / "dl" / "song.bin")
    assert (yield wait_download(bob, "club", "song.bin")) == "C"
    assert sha256_file(tmp_path / "dl" / "song.bin") == sha
    assert not (tmp_path / "dl" / "song.bin.part").exists()
    shown = yield bob.commands.execute("show_downloads")
    assert shown == "[C] [club] song.bin  %s" % (tmp_path / "dl" / "song.bin")
    # A completed download is shared onward: two peers, once bob's announcement (sent
    # after the download completed) is through; over PostgreSQL that is a database write.
    for _ in range(100):
        listing = yield alice.commands.execute("list_files club")
        if "2 peers" in listing:
            break
        yield pause(0.05)
    assert "2 peers" in listing


@pytest_twisted.inlineCallbacks
def test_non_member_cannot_list_or_download(cluster, tmp_path):
    yield cluster.start_tracker()
    alice = yield cluster.user("alice")
    eve = yield cluster.user("eve")
    yield alice.create_group("club")
    make_file(tmp_path / "a.bin", 1000)
    yield alice.upload_file("a.bin", "club")
    reply = yield eve.commands.execute("list_files club")
    assert reply.startswith("error: you are not a member of group club")
    reply = yield eve.commands.execute("download_file club a.bin .")
    assert reply.startswith("error: you are not a member of group club")
    reply = yield eve.commands.execute("upload_file a.bin club")
    assert reply.startswith("error: you are not a member")


@pytest_twisted.inlineCallbacks
def test_logout_hides_shares_and_login_restores_them(cluster, tmp_path):
    yield cluster.start_tracker()
    alice = yield cluster.user("alice")
    bob = yield cluster.user("bob")
    yield cluster.group("club", alice, bob)
    make_file(tmp_path / "a.bin", 600000)
    yield alice.upload_file("a.bin", "club")
    assert files_of((yield bob.list_files("club")), "a.bin")[0]["peers"] == 1
    reply = yield alice.commands.execute("logout")
    assert reply.startswith("logged out alice")
    assert files_of((yield bob.list_files("club")), "a.bin")[0]["peers"] == 0
    reply = yield bob.commands.execute("download_file club a.bin .")
    assert reply == "error: nobody is sharing a.bin in club right now; try again later"
    reply = yield alice.commands.execute("list_groups")
    assert reply == "error: not logged in; use login <user_id> <passwd>"
    reply = yield alice.commands.execute("login alice pw-alice")
    assert reply == "logged in as alice; sharing 1 file"
    assert files_of((yield bob.list_files("club")), "a.bin")[0]["peers"] == 1


@pytest_twisted.inlineCallbacks
def test_share_survives_peer_restart_with_same_state_dir(cluster, tmp_path):
    yield cluster.start_tracker()
    alice = yield cluster.user("alice")
    bob = yield cluster.user("bob")
    yield cluster.group("club", alice, bob)
    make_file(tmp_path / "a.bin", 700000)
    yield alice.upload_file("a.bin", "club")
    yield cluster.stop_peer(alice)
    assert files_of((yield bob.list_files("club")), "a.bin")[0]["peers"] == 0
    alice2 = yield cluster.user("alice", create=False)
    assert files_of((yield bob.list_files("club")), "a.bin")[0]["peers"] == 1
    yield bob.download_file("club", "a.bin", str(tmp_path / "copy.bin"))
    assert (yield wait_download(bob, "club", "a.bin")) == "C"
    assert sha256_file(tmp_path / "copy.bin") == sha256_file(tmp_path / "a.bin")
    assert alice2.server_factory.uploaded > 0


@pytest_twisted.inlineCallbacks
def test_modified_or_deleted_share_is_not_served_blindly(cluster, tmp_path):
    yield cluster.start_tracker()
    alice = yield cluster.user("alice")
    yield alice.create_group("club")
    make_file(tmp_path / "a.bin", 1000, seed=1)
    make_file(tmp_path / "b.bin", 1000, seed=2)
    yield alice.upload_file("a.bin", "club")
    yield alice.upload_file("b.bin", "club")
    yield alice.logout()
    make_file(tmp_path / "a.bin", 1000, seed=3)      # same size, new content
    os.unlink(tmp_path / "b.bin")
    reply = yield alice.commands.execute("login alice pw-alice")
    assert "sharing 0 files" in reply
    assert "a.bin in club: the file changed on disk" in reply
    assert "b.bin in club" in reply and "is gone" in reply
    assert not alice.store.shares


@pytest_twisted.inlineCallbacks
def test_stop_share_removes_file_when_nobody_shares_it(cluster, tmp_path):
    yield cluster.start_tracker()
    alice = yield cluster.user("alice")
    yield alice.create_group("club")
    make_file(tmp_path / "a.bin", 1000)
    yield alice.upload_file("a.bin", "club")
    reply = yield alice.commands.execute("stop_share club a.bin")
    assert reply == "stopped sharing a.bin in club"
    assert (yield alice.list_files("club"))["files"] == []
    reply = yield alice.commands.execute("stop_share club a.bin")
    assert reply == "error: you do not share a.bin in group club"


@pytest_twisted.inlineCallbacks
def test_upload_errors_are_specific(cluster, tmp_path):
    yield cluster.start_tracker()
    alice = yield cluster.user("alice")
    yield alice.create_group("club")
    (tmp_path / "adir").mkdir()
    assert (yield alice.commands.execute("upload_file nope.bin club")).startswith("error: no such file")
    assert "is a directory" in (yield alice.commands.execute("upload_file adir club"))
    make_file(tmp_path / "a.bin", 10)
    assert (yield alice.commands.execute("upload_file a.bin nogroup")).startswith("error: no group nogroup")
    assert (yield alice.commands.execute("upload_file a.bin bad/group")).startswith("error: invalid group id")


@pytest_twisted.inlineCallbacks
def test_same_name_different_content_is_a_conflict(cluster, tmp_path):
    yield cluster.start_tracker()
    alice = yield cluster.user("alice")
    bob = yield cluster.user("bob")
    yield cluster.group("club", alice, bob)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    make_file(tmp_path / "a" / "x.bin", 100, seed=1)
    make_file(tmp_path / "b" / "x.bin", 100, seed=2)
    yield alice.upload_file("a/x.bin", "club")
    reply = yield bob.commands.execute("upload_file b/x.bin club")
    assert reply.startswith("error: group club already has a different file named x.bin")
    # Same content from another member adds a seeder.
    make_file(tmp_path / "b" / "x.bin", 100, seed=1)
    reply = yield bob.commands.execute("upload_file b/x.bin club")
    assert reply.startswith("shared x.bin in club")
    assert files_of((yield alice.list_files("club")), "x.bin")[0]["peers"] == 2


@pytest_twisted.inlineCallbacks
def test_peer_reconnects_and_reannounces_after_tracker_restart(cluster, tmp_path):
    yield cluster.start_tracker()
    port = cluster.tracker_address.port
    alice = yield cluster.user("alice")
    yield alice.create_group("club")
    make_file(tmp_path / "a.bin", 1000)
    yield alice.upload_file("a.bin", "club")
    notices = []
    alice.subscribe(notices.append)
    yield cluster.stop_tracker()
    yield wait_for(lambda: not alice.tracker.ready, 5, what="peer to notice the loss")
    reply = yield alice.commands.execute("list_groups")
    assert reply.startswith("error: no tracker reachable")
    yield cluster.start_tracker(port=port)
    yield wait_for(lambda: alice.tracker.ready, 15, what="peer to reconnect")
    result = yield alice.list_files("club")
    assert result["files"][0]["peers"] == 1
    assert any("logged back in as alice" in n for n in notices)
