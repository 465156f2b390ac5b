"""Messages and state that must not mislead (issue #12 items 10-15): real
tracker and peers on loopback, driven through the console command table."""

import os

import pytest
import pytest_twisted
from twisted.internet import defer

from mbt.manifest import PIECE_SIZE
from mbt.peer import node as node_mod
from tests.cluster import Cluster, make_file, wait_download, wait_for


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    pytest_twisted.blockon(c.stop())


def peers_of(listing: str, name: str) -> str:
    """The last word pair (``N peer(s)``) of ``name``'s line in a list_files reply."""
    line = [ln for ln in listing.split("\n") if ln.split()[0] == name][0]
    return " ".join(line.split()[-2:])


@defer.inlineCallbacks
def club(cluster, tmp_path, size=1000, bob=True, upload=True, **alice_kwargs):
    """A tracker; alice owning club (bob a member if ``bob``); a.bin of ``size``
    bytes, shared by alice if ``upload``. Returns (alice, bob or None)."""
    yield cluster.start_tracker()
    alice = yield cluster.user("alice", **alice_kwargs)
    other = None
    if bob:
        other = yield cluster.user("bob")
        yield cluster.group("club", alice, other)
    else:
        yield alice.create_group("club")
    make_file(tmp_path / "a.bin", size)
    if upload:
        yield alice.upload_file("a.bin", "club")
    return alice, other


@pytest_twisted.inlineCallbacks
def test_download_of_a_file_only_you_share_says_you_share_it(cluster, tmp_path):
    # Item 10: was "nobody is sharing a.bin in club right now" while list_files said 1 peer.
    alice, _ = yield club(cluster, tmp_path, bob=False)
    assert peers_of((yield alice.commands.execute("list_files club")), "a.bin") == "1 peer"
    reply = yield alice.commands.execute("download_file club a.bin copy.bin")
    assert reply == "error: you already share a.bin in club (%s)" % (tmp_path / "a.bin")


@pytest_twisted.inlineCallbacks
def test_deleted_share_stops_being_shared_while_logged_in(cluster, tmp_path, monkeypatch):
    # Item 11: a deleted file stayed listed (and "you already share" it) until the next login.
    monkeypatch.setattr(node_mod, "SHARE_CHECK_INTERVAL", 0.2)
    alice, bob = yield club(cluster, tmp_path)
    notices = []
    alice.subscribe(notices.append)
    os.unlink(tmp_path / "a.bin")
    yield wait_for(lambda: notices, 10, what="the periodic check to notice")
    assert notices == ["notice: stopped sharing a.bin in club: %s is gone" % (tmp_path / "a.bin")]
    assert ("club", "a.bin") not in alice.store.shares
    # The tracker was told: the file is gone from the group (alice was its only sharer).
    yield wait_for(lambda: True, 1)
    assert (yield bob.commands.execute("list_files club")) == "(no files shared in club)"
    # Told once only, however many checks run afterwards.
    alice.check_shares()
    alice.check_shares()
    assert len(notices) == 1


@pytest_twisted.inlineCallbacks
def test_deleted_share_is_noticed_at_once_by_a_download_request(cluster, tmp_path):
    # Item 11, "at once when a request fails": no need to wait for the periodic check.
    alice, _ = yield club(cluster, tmp_path, bob=False)
    notices = []
    alice.subscribe(notices.append)
    os.unlink(tmp_path / "a.bin")
    reply = yield alice.commands.execute("download_file club a.bin copy.bin")
    assert notices == ["notice: stopped sharing a.bin in club: %s is gone" % (tmp_path / "a.bin")]
    assert "already share" not in reply


@pytest_twisted.inlineCallbacks
def test_changed_share_is_refused_to_downloaders_at_once(cluster, tmp_path):
    # Item 11: a HELLO for a share whose file changed size is refused, and the share dropped.
    alice, bob = yield club(cluster, tmp_path, size=2 * PIECE_SIZE)
    notices = []
    alice.subscribe(notices.append)
    with open(tmp_path / "a.bin", "ab") as f:
        f.write(b"more")
    (tmp_path / "dl").mkdir()
    yield bob.download_file("club", "a.bin", "dl")
    yield wait_for(lambda: notices, 10, what="alice to notice")
    assert notices[0].startswith("notice: stopped sharing a.bin in club: %s changed on disk" % (tmp_path / "a.bin"))
    assert alice.server_factory.uploaded == 0


@pytest_twisted.inlineCallbacks
def test_touched_but_identical_share_stays_shared(cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(node_mod, "SHARE_CHECK_INTERVAL", 0.1)
    alice, _ = yield club(cluster, tmp_path, bob=False)
    notices = []
    alice.subscribe(notices.append)
    st = os.stat(tmp_path / "a.bin")
    os.utime(tmp_path / "a.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    share = alice.store.shares[("club", "a.bin")]
    yield wait_for(lambda: share.mtime_ns == st.st_mtime_ns + 10 ** 9, 10, what="the re-hash")
    assert notices == [] and ("club", "a.bin") in alice.store.shares


@pytest_twisted.inlineCallbacks
def test_upload_of_an_already_shared_file_says_so(cluster, tmp_path):
    # Item 13: was "shared a.bin in club: ..." again, as if new.
    alice, _ = yield club(cluster, tmp_path, bob=False, upload=False)
    first = yield alice.commands.execute("upload_file a.bin club")
    assert first.startswith("shared a.bin in club: 1000 bytes")
    again = yield alice.commands.execute("upload_file a.bin club")
    assert again == "already shared a.bin in club from %s" % (tmp_path / "a.bin")


@pytest_twisted.inlineCallbacks
def test_upload_of_the_same_name_from_another_path_says_it_moved(cluster, tmp_path):
    # Item 13: the share was re-pointed silently.
    yield cluster.start_tracker()
    alice = yield cluster.user("alice")
    bob = yield cluster.user("bob")
    yield cluster.group("club", alice, bob)
    make_file(tmp_path / "a.bin", 2 * PIECE_SIZE)
    (tmp_path / "other").mkdir()
    make_file(tmp_path / "other" / "a.bin", 2 * PIECE_SIZE)       # same content elsewhere
    yield alice.upload_file("a.bin", "club")
    reply = yield alice.commands.execute("upload_file other/a.bin club")
    assert reply == "a.bin in club is now shared from %s instead of %s" % (
        tmp_path / "other" / "a.bin", tmp_path / "a.bin")
    assert alice.store.shares[("club", "a.bin")].path == str(tmp_path / "other" / "a.bin")
    # And it is served from the new path: the old one can go.
    os.unlink(tmp_path / "a.bin")
    (tmp_path / "dl").mkdir()
    yield bob.download_file("club", "a.bin", "dl")
    assert (yield wait_download(bob, "club", "a.bin")) == "C"


@pytest_twisted.inlineCallbacks
def test_show_downloads_gives_the_destination_and_clear_downloads_clears_finished(cluster, tmp_path):
    # Item 15: [C] lines never went away and did not say where the file is.
    alice, bob = yield club(cluster, tmp_path)
    (tmp_path / "dl").mkdir()
    yield bob.download_file("club", "a.bin", "dl")
    assert (yield wait_download(bob, "club", "a.bin")) == "C"
    shown = yield bob.commands.execute("show_downloads")
    assert shown == "[C] [club] a.bin  %s" % (tmp_path / "dl" / "a.bin")
    assert (yield bob.commands.execute("clear_downloads")) == "cleared 1 finished download"
    assert (yield bob.commands.execute("show_downloads")) == "(no downloads)"
    assert (yield bob.commands.execute("clear_downloads")) == "(no finished downloads to clear)"
    # Gone for good (also after a restart), while the file stays shared.
    assert ("club", "a.bin") not in bob.store.downloads
    assert "downloads.json" in os.listdir(bob.state_dir)
    assert ("club", "a.bin") in bob.store.shares
    listing = yield alice.commands.execute("list_files club")
    assert peers_of(listing, "a.bin") == "2 peers"


@pytest_twisted.inlineCallbacks
def test_quit_during_a_download_says_it_is_paused(cluster, tmp_path):
    # Item 14: quit said only "bye".
    from twisted.internet.testing import StringTransport
    from mbt.protocols.console import StdioConsole
    alice, bob = yield club(cluster, tmp_path, size=4 * PIECE_SIZE, upload_rate=200e3)      # slow: still running at quit
    (tmp_path / "dl").mkdir()
    yield bob.download_file("club", "a.bin", "dl")
    quits = []
    console = StdioConsole(bob.commands, "", lambda: quits.append(1))
    transport = StringTransport()
    console.makeConnection(transport)
    console.dataReceived(b"quit\n")
    assert transport.value().decode().endswith(
        "mbt> 1 download paused; it resumes at the next login\nbye\n")
    assert quits == [1]
    # Without a running download it is just "bye".
    yield bob.logout()
    console = StdioConsole(bob.commands, "", lambda: None)
    transport = StringTransport()
    console.makeConnection(transport)
    console.dataReceived(b"quit\n")
    assert transport.value().decode() == "mbt> bye\n"


@pytest_twisted.inlineCallbacks
def test_membership_notices_and_list_groups_markers(cluster, tmp_path):
    # Item 12: no word on accept/reject/hand-over; no marker in list_groups;
    # a pending user was told "use join_group G" and then "already asked".
    yield cluster.start_tracker()
    alice = yield cluster.user("alice")
    bob = yield cluster.user("bob")
    heard = {"alice": [], "bob": []}
    alice.subscribe(heard["alice"].append)
    bob.subscribe(heard["bob"].append)
    yield alice.create_group("club")
    yield alice.create_group("den")
    yield alice.create_group("zoo")
    yield bob.join_group("club")
    yield bob.join_group("den")
    yield wait_for(lambda: len(heard["alice"]) == 2, 10, what="alice's notices")
    assert heard["alice"] == [
        "notice: bob asks to join your group club; accept_request club bob or reject_request club bob",
        "notice: bob asks to join your group den; accept_request den bob or reject_request den bob"]
    assert (yield bob.commands.execute("list_groups")) == \
        "club  owner alice  1 member  pending\nden  owner alice  1 member  pending\nzoo  owner alice  1 member"
    reply = yield bob.commands.execute("list_files club")
    assert reply == "error: you are not a member of group club yet; your request to join is waiting for its owner alice"
    yield alice.commands.execute("accept_request club bob")
    yield alice.commands.execute("reject_request den bob")
    yield wait_for(lambda: len(heard["bob"]) == 2, 10, what="bob's notices")
    assert heard["bob"] == ["notice: alice accepted you into group club; list_files club shows its files",
                            "notice: alice turned down your request to join group den"]
    assert (yield alice.commands.execute("list_groups")) == \
        "club  owner alice  2 members  owner\nden  owner alice  1 member  owner\nzoo  owner alice  1 member  owner"
    assert (yield bob.commands.execute("list_groups")) == \
        "club  owner alice  2 members  member\nden  owner alice  1 member\nzoo  owner alice  1 member"
    yield alice.commands.execute("leave_group club")
    yield wait_for(lambda: len(heard["bob"]) == 3, 10, what="bob's ownership notice")
    assert heard["bob"][2] == "notice: you are now the owner of group club (alice left it)"


@pytest.mark.parametrize("event", [
    {"push": "membership", "kind": "accepted", "group": "bad group", "by": "alice"},
    {"push": "membership", "kind": "accepted", "group": "club", "by": "a\nnotice: fake"},
    {"push": "membership", "kind": "accepted", "group": "club"},
    {"push": "membership", "kind": "exploded", "group": "club", "by": "alice"},
    {"push": "other", "kind": "accepted", "group": "club", "by": "alice"},
    {"push": "membership", "kind": "requested", "group": ["club"], "user": "bob"},
])
def test_malformed_or_unknown_tracker_events_are_ignored(event):
    assert node_mod.membership_notice(event) is None
