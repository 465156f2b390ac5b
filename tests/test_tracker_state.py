"""TrackerState, exhaustively: every operation, every error, the replay property."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mbt.errors import MbtError
from mbt.manifest import PIECE_SIZE, piece_count
from mbt.tracker.state import TrackerState

REC = "scrypt$16$8$1$00$00"     # the state never looks inside a password record


def who(peers):
    """get_peers entries without the session handle and reachability (tested in test_nat_unit)."""
    return [{"user": p["user"], "address": p["address"]} for p in peers]


def manifest(name="song.bin", size=PIECE_SIZE + 1, h="a"):
    return {"name": name, "size": size, "piece_size": PIECE_SIZE, "file_hash": h * 64,
            "piece_hashes": [h * 64] * piece_count(size)}


def apply_ok(state, op, **args):
    return state.apply(dict(args, op=op))


def apply_err(state, code, op, **args):
    """Apply an op that must fail with ``code`` and leave the durable state unchanged."""
    before = state.digest()
    with pytest.raises(MbtError) as e:
        state.apply(dict(args, op=op))
    assert e.value.code == code, (e.value.code, e.value.message)
    assert e.value.message and "\n" not in e.value.message
    assert state.digest() == before
    return e.value


def query_err(code, fn, *args, **kw):
    with pytest.raises(MbtError) as e:
        fn(*args, **kw)
    assert e.value.code == code, (e.value.code, e.value.message)
    return e.value


@pytest.fixture
def s():
    """alice owns club; bob is a member; carol has asked to join; dave is a stranger."""
    state = TrackerState()
    for u in ("alice", "bob", "carol", "dave"):
        apply_ok(state, "create_user", user=u, password_record=REC + u)
    apply_ok(state, "create_group", user="alice", group="club")
    apply_ok(state, "join_group", user="bob", group="club")
    apply_ok(state, "accept_request", owner="alice", group="club", user="bob")
    apply_ok(state, "join_group", user="carol", group="club")
    return state


BAD_IDS = ["", ".hidden", "a" * 65, "a b", "a/b", "../x", "x\x00", "alice\n", "\u00e9", None, 5, ["a"]]


# -- unknown and malformed operations -------------------------------------------

@pytest.mark.parametrize("op", [{"op": "nope"}, {}, {"op": None}, {"op": 5}, {"op": "__init__"},
                                {"op": ""}, "create_user", None, ["create_user"]])
def test_unknown_or_malformed_op_is_unknown_op(op):
    state = TrackerState()
    with pytest.raises(MbtError) as e:
        state.apply(op)
    assert e.value.code == "unknown_op"


# -- accounts ------------------------------------------------------------------

def test_create_user_stores_the_record():
    state = TrackerState()
    assert apply_ok(state, "create_user", user="alice", password_record="r1") == {"user": "alice"}
    assert state.password_record("alice") == "r1"
    assert state.password_record("bob") is None


def test_create_user_twice_is_user_exists(s):
    e = apply_err(s, "user_exists", "create_user", user="alice", password_record="other")
    assert "alice" in e.message
    assert s.password_record("alice") == REC + "alice"


@pytest.mark.parametrize("user", BAD_IDS)
def test_create_user_with_invalid_id_is_invalid_argument(user):
    apply_err(TrackerState(), "invalid_argument", "create_user", user=user, password_record="r")


@pytest.mark.parametrize("record", [None, "", 5])
def test_create_user_without_password_record_is_invalid_argument(record):
    apply_err(TrackerState(), "invalid_argument", "create_user", user="alice", password_record=record)


def test_id_limits_are_inclusive():
    state = TrackerState()
    for u in ("a", "A" * 64, "x.y_z-1", "_x", "-x", "9"):
        apply_ok(state, "create_user", user=u, password_record="r")


# -- groups --------------------------------------------------------------------

def test_create_group_makes_creator_owner_and_only_member():
    state = TrackerState()
    apply_ok(state, "create_user", user="alice", password_record="r")
    assert apply_ok(state, "create_group", user="alice", group="club") == {"group": "club", "owner": "alice"}
    assert state.list_groups() == [{"group": "club", "owner": "alice", "members": 1}]
    assert state.is_member("alice", "club")


def test_create_group_errors(s):
    apply_err(s, "group_exists", "create_group", user="bob", group="club")
    apply_err(s, "no_such_user", "create_group", user="zed", group="new")
    for bad in BAD_IDS:
        apply_err(s, "invalid_argument", "create_group", user="bob", group=bad)
        apply_err(s, "invalid_argument", "create_group", user=bad, group="new")


def test_list_groups_is_sorted_with_owner_and_member_count(s):
    apply_ok(s, "create_group", user="dave", group="aardvarks")
    assert s.list_groups() == [{"group": "aardvarks", "owner": "dave", "members": 1},
                               {"group": "club", "owner": "alice", "members": 2}]


def test_join_group_is_a_pending_request_not_membership(s):
    assert apply_ok(s, "join_group", user="dave", group="club") == {"group": "club", "owner": "alice"}
    assert not s.is_member("dave", "club")
    assert s.list_requests("alice", "club") == ["carol", "dave"]   # oldest first


def test_join_group_errors(s):
    apply_err(s, "already_member", "join_group", user="alice", group="club")   # the owner
    apply_err(s, "already_member", "join_group", user="bob", group="club")
    e = apply_err(s, "already_requested", "join_group", user="carol", group="club")
    assert "alice" in e.message   # says whom to wait for
    apply_err(s, "no_such_group", "join_group", user="dave", group="nope")
    apply_err(s, "no_such_user", "join_group", user="zed", group="club")
    apply_err(s, "invalid_argument", "join_group", user="dave", group="bad id")


def test_list_requests_is_for_the_owner_only(s):
    assert s.list_requests("alice", "club") == ["carol"]
    query_err("not_owner", s.list_requests, "bob", "club")
    query_err("not_owner", s.list_requests, "carol", "club")
    query_err("no_such_group", s.list_requests, "alice", "nope")
    query_err("no_such_user", s.list_requests, "zed", "club")
    query_err("invalid_argument", s.list_requests, "alice", None)


def test_accept_request_makes_a_member(s):
    assert apply_ok(s, "accept_request", owner="alice", group="club", user="carol") == \
        {"group": "club", "user": "carol"}
    assert s.is_member("carol", "club")
    assert s.list_requests("alice", "club") == []
    assert s.list_groups()[0]["members"] == 3


def test_accept_request_errors(s):
    apply_err(s, "not_owner", "accept_request", owner="bob", group="club", user="carol")
    apply_err(s, "not_owner", "accept_request", owner="carol", group="club", user="carol")
    apply_err(s, "no_such_request", "accept_request", owner="alice", group="club", user="dave")
    apply_err(s, "no_such_request", "accept_request", owner="alice", group="club", user="bob")
    apply_err(s, "no_such_request", "accept_request", owner="alice", group="club", user="ghost")
    apply_err(s, "no_such_group", "accept_request", owner="alice", group="nope", user="carol")
    apply_err(s, "no_such_user", "accept_request", owner="zed", group="club", user="carol")
    apply_err(s, "invalid_argument", "accept_request", owner="alice", group="club", user="bad id")
    apply_err(s, "invalid_argument", "accept_request", owner="alice", group="club", user=None)


def test_reject_request_drops_the_request(s):
    assert apply_ok(s, "reject_request", owner="alice", group="club", user="carol") == \
        {"group": "club", "user": "carol"}
    assert not s.is_member("carol", "club")
    assert s.list_requests("alice", "club") == []
    # Rejected users may ask again.
    apply_ok(s, "join_group", user="carol", group="club")


def test_reject_request_errors(s):
    apply_err(s, "not_owner", "reject_request", owner="bob", group="club", user="carol")
    apply_err(s, "no_such_request", "reject_request", owner="alice", group="club", user="dave")
    apply_err(s, "no_such_group", "reject_request", owner="alice", group="nope", user="carol")
    apply_err(s, "no_such_user", "reject_request", owner="zed", group="club", user="carol")
    apply_err(s, "invalid_argument", "reject_request", owner="alice", group="club", user="")


def test_leave_group_by_a_member(s):
    assert apply_ok(s, "leave_group", user="bob", group="club") == \
        {"group": "club", "deleted": False, "owner": "alice", "was_owner": False}
    assert not s.is_member("bob", "club")
    assert s.list_groups()[0]["members"] == 1


def test_leave_group_withdraws_a_pending_request(s):
    assert apply_ok(s, "leave_group", user="carol", group="club") == {"group": "club", "withdrawn": True}
    assert s.list_requests("alice", "club") == []


def test_leave_group_errors(s):
    apply_err(s, "not_member", "leave_group", user="dave", group="club")
    apply_err(s, "no_such_group", "leave_group", user="bob", group="nope")
    apply_err(s, "no_such_user", "leave_group", user="zed", group="club")
    apply_err(s, "invalid_argument", "leave_group", user="bob", group=".x")


def test_owner_leaving_hands_ownership_to_the_oldest_remaining_member(s):
    apply_ok(s, "accept_request", owner="alice", group="club", user="carol")
    apply_ok(s, "join_group", user="dave", group="club")
    apply_ok(s, "accept_request", owner="alice", group="club", user="dave")
    result = apply_ok(s, "leave_group", user="alice", group="club")
    assert result == {"group": "club", "deleted": False, "owner": "bob", "was_owner": True}
    assert s.list_groups() == [{"group": "club", "owner": "bob", "members": 3}]
    # The new owner has the owner's powers, the old one has none.
    apply_ok(s, "join_group", user="alice", group="club")
    assert s.list_requests("bob", "club") == ["alice"]
    query_err("not_owner", s.list_requests, "carol", "club")
    # bob leaves too: carol (joined before dave) is next.
    assert apply_ok(s, "leave_group", user="bob", group="club")["owner"] == "carol"


def test_last_member_leaving_deletes_the_group_and_its_files(s):
    apply_ok(s, "share_file", user="alice", group="club", manifest=manifest())
    apply_ok(s, "leave_group", user="bob", group="club")
    result = apply_ok(s, "leave_group", user="alice", group="club")
    assert result == {"group": "club", "deleted": True, "owner": None, "was_owner": True}
    assert s.list_groups() == []
    assert s.files == {}
    # Pending requests went with it; the id is free again.
    apply_err(s, "no_such_group", "join_group", user="carol", group="club")
    apply_ok(s, "create_group", user="dave", group="club")
    assert s.list_files("dave", "club") == []


def test_leaving_drops_the_members_shares(s):
    apply_ok(s, "share_file", user="alice", group="club", manifest=manifest("both.bin"))
    apply_ok(s, "share_file", user="bob", group="club", manifest=manifest("both.bin"))
    apply_ok(s, "share_file", user="bob", group="club", manifest=manifest("bobs.bin", h="b"))
    s.open_session("s-bob", "bob", "10.0.0.2:7000")
    s.announce("s-bob", "club", "both.bin")
    s.announce("s-bob", "club", "bobs.bin")
    apply_ok(s, "leave_group", user="bob", group="club")
    # bob's only file is gone; the shared one stays with alice as its sharer.
    assert [f["name"] for f in s.list_files("alice", "club")] == ["both.bin"]
    assert s.files[("club", "both.bin")].sharers == {"alice"}
    assert s.sessions["s-bob"].shares == set()
    # Rejoining does not bring the shares back.
    apply_ok(s, "join_group", user="bob", group="club")
    apply_ok(s, "accept_request", owner="alice", group="club", user="bob")
    assert [f["name"] for f in s.list_files("bob", "club")] == ["both.bin"]


# -- files ---------------------------------------------------------------------

def test_share_file_registers_the_manifest(s):
    result = apply_ok(s, "share_file", user="bob", group="club", manifest=manifest(size=3 * PIECE_SIZE))
    assert result == {"group": "club", "name": "song.bin", "size": 3 * PIECE_SIZE, "pieces": 3,
                      "sharers": 1}
    assert s.list_files("alice", "club") == [{"name": "song.bin", "size": 3 * PIECE_SIZE, "pieces": 3,
                                              "file_hash": "a" * 64, "peers": 0}]


def test_same_name_same_hash_adds_a_sharer(s):
    apply_ok(s, "share_file", user="alice", group="club", manifest=manifest())
    assert apply_ok(s, "share_file", user="bob", group="club", manifest=manifest())["sharers"] == 2
    # Sharing again is idempotent.
    assert apply_ok(s, "share_file", user="bob", group="club", manifest=manifest())["sharers"] == 2


def test_same_name_different_content_is_file_conflict(s):
    apply_ok(s, "share_file", user="alice", group="club", manifest=manifest())
    e = apply_err(s, "file_conflict", "share_file", user="bob", group="club", manifest=manifest(h="b"))
    assert "song.bin" in e.message
    apply_err(s, "file_conflict", "share_file", user="alice", group="club",
              manifest=manifest(size=PIECE_SIZE + 2))


def test_same_name_in_another_group_is_another_file(s):
    apply_ok(s, "create_group", user="alice", group="other")
    apply_ok(s, "share_file", user="alice", group="club", manifest=manifest())
    apply_ok(s, "share_file", user="alice", group="other", manifest=manifest(h="b"))
    assert s.list_files("alice", "other")[0]["file_hash"] == "b" * 64


def test_share_file_errors(s):
    apply_err(s, "not_member", "share_file", user="carol", group="club", manifest=manifest())  # only asked
    apply_err(s, "not_member", "share_file", user="dave", group="club", manifest=manifest())
    apply_err(s, "no_such_group", "share_file", user="bob", group="nope", manifest=manifest())
    apply_err(s, "no_such_user", "share_file", user="zed", group="club", manifest=manifest())
    apply_err(s, "invalid_argument", "share_file", user="bob", group="club", manifest=None)
    apply_err(s, "invalid_argument", "share_file", user="bob", group="club", manifest=manifest(name="../x"))
    bad = manifest()
    bad["piece_hashes"] = bad["piece_hashes"][:1]
    apply_err(s, "invalid_argument", "share_file", user="bob", group="club", manifest=bad)
    assert s.files == {}


def test_stop_share_keeps_the_file_while_others_share_it(s):
    apply_ok(s, "share_file", user="alice", group="club", manifest=manifest())
    apply_ok(s, "share_file", user="bob", group="club", manifest=manifest())
    assert apply_ok(s, "stop_share", user="alice", group="club", name="song.bin") == \
        {"group": "club", "name": "song.bin"}
    assert s.files[("club", "song.bin")].sharers == {"bob"}


def test_file_disappears_when_its_last_sharer_stops(s):
    apply_ok(s, "share_file", user="alice", group="club", manifest=manifest())
    apply_ok(s, "stop_share", user="alice", group="club", name="song.bin")
    assert s.list_files("bob", "club") == []
    query_err("no_such_file", s.get_peers, "bob", "club", "song.bin")
    # The name is free for different content now.
    apply_ok(s, "share_file", user="bob", group="club", manifest=manifest(h="c"))


def test_stop_share_errors(s):
    apply_ok(s, "share_file", user="alice", group="club", manifest=manifest())
    apply_err(s, "not_sharing", "stop_share", user="bob", group="club", name="song.bin")
    apply_err(s, "not_sharing", "stop_share", user="alice", group="club", name="other.bin")
    apply_err(s, "not_member", "stop_share", user="dave", group="club", name="song.bin")
    apply_err(s, "no_such_group", "stop_share", user="alice", group="nope", name="song.bin")
    apply_err(s, "no_such_user", "stop_share", user="zed", group="club", name="song.bin")
    apply_err(s, "invalid_argument", "stop_share", user="alice", group="club", name="a/b")
    apply_err(s, "invalid_argument", "stop_share", user="alice", group="club", name=None)


def test_list_files_is_for_members_only(s):
    query_err("not_member", s.list_files, "dave", "club")
    query_err("not_member", s.list_files, "carol", "club")
    query_err("no_such_group", s.list_files, "alice", "nope")
    query_err("no_such_user", s.list_files, "zed", "club")
    query_err("invalid_argument", s.list_files, "alice", "")


# -- presence ------------------------------------------------------------------

@pytest.fixture
def shared(s):
    """song.bin shared by alice and bob in club."""
    apply_ok(s, "share_file", user="alice", group="club", manifest=manifest())
    apply_ok(s, "share_file", user="bob", group="club", manifest=manifest())
    return s


def peers(state, user="alice", exclude=""):
    return state.get_peers(user, "club", "song.bin", exclude_session=exclude)["peers"]


def count(state):
    return state.list_files("alice", "club")[0]["peers"]


def test_peer_counts_only_online_sessions_that_announced_the_file(shared):
    s = shared
    assert count(s) == 0                              # registered, nobody online
    s.open_session("1", "alice", "10.0.0.1:7000")
    assert count(s) == 0                              # online, not announced
    s.announce("1", "club", "song.bin")
    assert count(s) == 1
    s.open_session("2", "bob", "10.0.0.2:7000")
    s.announce("2", "club", "song.bin")
    assert count(s) == 2
    s.withdraw("2", "club", "song.bin")
    assert count(s) == 1
    s.close_session("1")
    assert count(s) == 0
    s.close_session("1")                              # closing twice is harmless
    s.withdraw("1", "club", "song.bin")


def test_announce_ignores_files_the_user_does_not_share(shared):
    s = shared
    s.open_session("c", "carol", "10.0.0.3:7000")
    s.announce("c", "club", "song.bin")               # carol is no sharer
    s.announce("c", "club", "missing.bin")            # no such file
    assert s.sessions["c"].shares == set()
    assert count(s) == 0


def test_a_peer_address_is_counted_once(shared):
    s = shared
    for sid in ("1", "2"):                           # the same peer reconnected
        s.open_session(sid, "alice", "10.0.0.1:7000")
        s.announce(sid, "club", "song.bin")
    assert count(s) == 1
    assert who(peers(s, user="bob")) == [{"user": "alice", "address": "10.0.0.1:7000"}]


def test_get_peers_returns_manifest_and_online_peers_but_not_the_asker(shared):
    s = shared
    s.open_session("a", "alice", "10.0.0.1:7000")
    s.open_session("b", "bob", "10.0.0.2:7000")
    s.announce("a", "club", "song.bin")
    s.announce("b", "club", "song.bin")
    got = s.get_peers("alice", "club", "song.bin", exclude_session="a")
    assert got["manifest"] == manifest()
    assert who(got["peers"]) == [{"user": "bob", "address": "10.0.0.2:7000"}]
    assert sorted(p["address"] for p in peers(s)) == ["10.0.0.1:7000", "10.0.0.2:7000"]


def test_get_peers_errors(shared):
    s = shared
    query_err("not_member", s.get_peers, "dave", "club", "song.bin")
    query_err("no_such_file", s.get_peers, "alice", "club", "nope.bin")
    query_err("no_such_group", s.get_peers, "alice", "nope", "song.bin")
    query_err("no_such_user", s.get_peers, "zed", "club", "song.bin")
    query_err("invalid_argument", s.get_peers, "alice", "club", "../etc/passwd")


def test_stop_share_removes_the_file_from_the_users_sessions(shared):
    s = shared
    s.open_session("a", "alice", "10.0.0.1:7000")
    s.announce("a", "club", "song.bin")
    apply_ok(s, "stop_share", user="alice", group="club", name="song.bin")
    assert s.sessions["a"].shares == set()
    assert count(s) == 0


def test_open_session_needs_a_known_user():
    query_err("no_such_user", TrackerState().open_session, "1", "ghost", "10.0.0.1:7000")


def test_sessions_are_not_durable_state(shared):
    before = shared.digest()
    shared.open_session("a", "alice", "10.0.0.1:7000")
    shared.announce("a", "club", "song.bin")
    assert shared.digest() == before


# -- determinism -----------------------------------------------------------------

STORY = [
    {"op": "create_user", "user": "alice", "password_record": "r1"},
    {"op": "create_user", "user": "bob", "password_record": "r2"},
    {"op": "create_user", "user": "carol", "password_record": "r3"},
    {"op": "create_group", "user": "alice", "group": "club"},
    {"op": "join_group", "user": "bob", "group": "club"},
    {"op": "join_group", "user": "carol", "group": "club"},
    {"op": "accept_request", "owner": "alice", "group": "club", "user": "bob"},
    {"op": "reject_request", "owner": "alice", "group": "club", "user": "carol"},
    {"op": "share_file", "user": "bob", "group": "club", "manifest": manifest()},
    {"op": "share_file", "user": "alice", "group": "club", "manifest": manifest("x.bin", h="b")},
    {"op": "stop_share", "user": "alice", "group": "club", "name": "x.bin"},
    {"op": "leave_group", "user": "alice", "group": "club"},
]


def test_replaying_the_same_ops_gives_the_same_digest():
    a, b = TrackerState(), TrackerState()
    digests = [a.digest()]
    for op in STORY:
        a.apply(op)
        digests.append(a.digest())
    for op in STORY:
        b.apply(op)
    assert a.digest() == b.digest()
    # Every op changed the durable state.
    assert all(x != y for x, y in zip(digests, digests[1:]))
    assert b.list_groups() == [{"group": "club", "owner": "bob", "members": 1}]


def test_a_different_history_gives_a_different_digest():
    a, b = TrackerState(), TrackerState()
    for op in STORY:
        a.apply(op)
    for op in STORY[:-1]:
        b.apply(op)
    assert a.digest() != b.digest()


def test_apply_does_not_keep_references_to_the_op(s):
    m = manifest()
    apply_ok(s, "share_file", user="bob", group="club", manifest=m)
    m["piece_hashes"].append("f" * 64)
    m["file_hash"] = "f" * 64
    assert s.list_files("bob", "club")[0]["file_hash"] == "a" * 64


# -- property: random histories --------------------------------------------------
#
# Operations are drawn one at a time, mostly from what exists in the state at that
# moment (so that histories get deep: requests accepted, files shared, owners
# leaving) and now and then from names that are missing or invalid.

USER_POOL = ["u1", "u2", "u3", "u4", "u5"]
GROUP_POOL = ["g1", "g2", "g3"]
NAME_POOL = ["a.bin", "b.bin"]
SESSIONS = ["s1", "s2", "s3", "s4"]
#: Every history starts with a few users and two groups.
PROLOGUE = [{"op": "create_user", "user": u, "password_record": "r-" + u} for u in ("u1", "u2", "u3")] + [
    {"op": "create_group", "user": "u1", "group": "g1"},
    {"op": "create_group", "user": "u2", "group": "g2"},
]
ADDRESSES = ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"]


def pick(rnd, present, pool, bad):
    """Mostly something present, else anything from the pool, rarely an invalid value."""
    x = rnd.random()
    if present and x < 0.75:
        return rnd.choice(sorted(present))
    return bad if x > 0.95 else rnd.choice(pool)


def draw_step(rnd, state):
    users = set(state.users)
    groups = set(state.groups)
    names = {n for (_g, n) in state.files}
    members = {m for g in state.groups.values() for m in g.members}
    owners = {g.owner for g in state.groups.values()}
    requesters = {r for g in state.groups.values() for r in g.requests}
    user = lambda present=users: pick(rnd, present, USER_POOL, "bad id")   # noqa: E731
    group = lambda: pick(rnd, groups, GROUP_POOL, ".bad")                  # noqa: E731
    name = lambda: pick(rnd, names, NAME_POOL, "../x")                      # noqa: E731
    kind = rnd.choice([
        "create_user", "create_group", "join_group", "join_group", "leave_group",
        "accept_request", "accept_request", "reject_request", "share_file", "share_file",
        "stop_share", "bogus", "open", "open", "close", "announce", "announce",
        "remote", "withdraw", "drop_remote", "snapshot"])
    if kind == "remote":
        mine = sorted(state.files)
        shares = [rnd.choice(mine)] if mine and rnd.random() < 0.7 else []
        return ("remote", rnd.choice([2, 3]), rnd.choice(SESSIONS), user(), rnd.choice(ADDRESSES), shares)
    if kind == "drop_remote":
        return ("drop_remote", rnd.choice([2, 3]), rnd.choice(SESSIONS) if rnd.random() < 0.7 else None)
    if kind == "snapshot":
        return ("snapshot",)
    if kind == "create_user":
        u = pick(rnd, set(), USER_POOL, "bad id")
        return {"op": kind, "user": u, "password_record": "r-%s" % u}
    if kind == "create_group":
        return {"op": kind, "user": user(), "group": pick(rnd, set(), GROUP_POOL, ".bad")}
    if kind in ("join_group", "leave_group"):
        return {"op": kind, "user": user(), "group": group()}
    if kind in ("accept_request", "reject_request"):
        return {"op": kind, "owner": user(owners), "group": group(), "user": user(requesters)}
    if kind == "share_file":
        m = manifest(name(), rnd.choice([0, 1, PIECE_SIZE + 1]), rnd.choice("ab"))
        return {"op": kind, "user": user(members), "group": group(), "manifest": m}
    if kind == "stop_share":
        return {"op": kind, "user": user(members), "group": group(), "name": name()}
    if kind == "bogus":
        return {"op": "bogus"}
    sid = pick(rnd, set(state.sessions), SESSIONS, "nope")
    if kind == "open":
        return ("open", sid, user(), rnd.choice(ADDRESSES))
    if kind == "close":
        return ("close", sid)
    sess = state.sessions.get(sid)
    mine = {k for k, e in state.files.items() if sess is not None and sess.user in e.sharers}
    verb = "withdraw" if kind == "withdraw" else "announce"
    if mine and rnd.random() < 0.8:
        return (verb, sid) + rnd.choice(sorted(mine))
    return (verb, sid, group(), name())


def reference_listing(state, gid):
    """list_files as the obvious scan over every session computes it (the caches must agree)."""
    out = []
    for (g, name), entry in sorted(state.files.items()):
        if g == gid:
            online = {s.address for s in state.sessions.values()
                      if (g, name) in s.shares and s.user in entry.sharers}
            m = entry.manifest
            out.append({"name": name, "size": m.size, "pieces": m.pieces, "file_hash": m.file_hash,
                        "peers": len(online)})
    return out


def reference_peers(state, key, exclude):
    """get_peers' peer list by the obvious scan (one per address, the newest session id)."""
    entry = state.files[key]
    by_address = {}
    for s in sorted((s for s in state.sessions.values() if key in s.shares and s.user in entry.sharers),
                    key=lambda s: s.session_id):
        by_address[s.address] = s
    asker = state.sessions.get(exclude)
    own = asker.address if asker is not None else None
    return [{"user": s.user, "address": s.address, "peer": s.session_id} for s in by_address.values()
            if s.session_id != exclude and s.address != own]


def check_queries(state):
    for gid, g in state.groups.items():
        assert state.list_files(g.owner, gid) == reference_listing(state, gid)
    for key, entry in state.files.items():
        member = state.groups[key[0]].members[0]
        for exclude in [""] + sorted(state.sessions)[:2]:
            got = state.get_peers(member, key[0], key[1], exclude_session=exclude)
            assert got["peers"] == reference_peers(state, key, exclude)
            assert got["manifest"] == entry.manifest.to_dict()


def check_invariants(state):
    check_queries(state)
    for gid, g in state.groups.items():
        assert g.members, gid
        assert g.owner in g.members
        assert len(set(g.members)) == len(g.members)
        assert len(set(g.requests)) == len(g.requests)
        assert not set(g.members) & set(g.requests)
        assert set(g.members) <= set(state.users) and set(g.requests) <= set(state.users)
    for (gid, name), entry in state.files.items():
        assert gid in state.groups
        assert entry.manifest.name == name
        assert entry.sharers and entry.sharers <= set(state.groups[gid].members)
    for sess in state.local_sessions():      # other trackers' sessions are mirrored unchecked
        for key in sess.shares:
            assert key in state.files and sess.user in state.files[key].sharers
    for gid in state.groups:
        for f in state.list_files(state.groups[gid].owner, gid):
            assert 0 <= f["peers"] <= len(state.files[(gid, f["name"])].sharers) * len(ADDRESSES)


def run_session_step(state, step):
    kind = step[0]
    if kind == "remote":
        _, origin, sid, user, address, shares = step
        state.put_remote_session(origin, sid, user, address)
        for key in shares:
            state.remote_announce(origin, sid, key[0], key[1], True)
    elif kind == "drop_remote":
        if step[2] is None:
            state.drop_remote_sessions(step[1])
        else:
            state.drop_remote_session(step[1], step[2])
    elif kind == "snapshot":
        from mbt.tracker import snapshot
        snapshot.loads(state, snapshot.dumps(state, sessions=True))
    elif kind == "withdraw":
        state.withdraw(step[1], step[2], step[3])
    elif kind == "open":
        try:
            state.open_session(step[1], step[2], step[3])
        except MbtError:
            pass
    elif kind == "close":
        state.close_session(step[1])
    elif step[1] in state.sessions:
        state.announce(step[1], step[2], step[3])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False), st.integers(min_value=0, max_value=80))
def test_random_histories_are_deterministic_and_failures_change_nothing(rnd, length):
    a, b = TrackerState(), TrackerState()
    logged = []
    for step in PROLOGUE + [None] * length:
        step = step or draw_step(rnd, a)
        if isinstance(step, tuple):
            run_session_step(a, step)
            check_invariants(a)
            continue
        before = a.digest()
        try:
            a.apply(step)
        except MbtError as e:
            assert a.digest() == before, "failed %r (%s) changed the state" % (step, e.code)
        else:
            assert a.digest() != before or step["op"] == "share_file", step
            logged.append(step)
        check_invariants(a)
        try:
            b.apply(step)
        except MbtError:
            pass
        assert a.digest() == b.digest()
    # Replaying only the successful operations (what the store keeps) rebuilds the state.
    c = TrackerState()
    for op in logged:
        c.apply(op)
    assert c.digest() == a.digest()
    assert c.list_groups() == a.list_groups()


def _store_roundtrip(kind, tmp_path, request, ops):
    """Log ``ops`` in a real store of ``kind`` and rebuild a state from what it reads back."""
    if kind == "sqlite":
        from mbt.tracker.service import TrackerCore
        from mbt.tracker.store import SQLiteStore
        store = SQLiteStore(str(tmp_path / "t.sqlite3"))
        try:
            for op in ops:
                store.append(op)
            core = TrackerCore(TrackerState(), store)      # the tracker's own start-up path
            core.load()
            return core.state
        finally:
            store.close()
    from mbt.tracker.pgfleet import rebuild
    from mbt.tracker.pgstore import PgLog
    db = PgLog(request.getfixturevalue("pg_url"))
    try:
        db.ensure_schema()
        for op in ops:
            head, _rows = db.lock_tail(db.head())
            db.append_many(head + 1, [op])
        _base, text, rows = db.load()
        return rebuild(text, rows, None)
    finally:
        db.close()


@pytest.mark.parametrize("seed", range(4))
def test_random_histories_logged_in_each_store_rebuild_the_same_state(store_kind, tmp_path, request, seed):
    """The replay property through the real stores: SQLite's log and PostgreSQL's."""
    import random
    rnd = random.Random(seed)
    a = TrackerState()
    logged = []
    for step in PROLOGUE + [None] * 60:
        step = step or draw_step(rnd, a)
        if isinstance(step, tuple):
            run_session_step(a, step)
            continue
        try:
            a.apply(step)
        except MbtError:
            continue
        logged.append(step)
    c = _store_roundtrip(store_kind, tmp_path, request, logged)
    assert c.digest() == a.digest()
    assert c.list_groups() == a.list_groups()
    for gid, g in a.groups.items():
        assert [f["name"] for f in c.list_files(g.owner, gid)] == [f["name"] for f in a.list_files(g.owner, gid)]


# -- issue #12 item 12: where each user stands, and what a pending user is told ----

def test_list_groups_says_where_the_asking_user_stands(s):
    roles = {u: [g["role"] for g in s.list_groups(u)] for u in ("alice", "bob", "carol", "dave")}
    assert roles == {"alice": ["owner"], "bob": ["member"], "carol": ["pending"], "dave": [""]}
    assert s.list_groups() == [{"group": "club", "owner": "alice", "members": 2}]


def test_a_pending_user_is_not_told_to_join_again(s):
    e = query_err("not_member", s.list_files, "carol", "club")
    assert "join_group" not in e.message and "waiting for its owner alice" in e.message
    assert "use join_group club" in query_err("not_member", s.list_files, "dave", "club").message
    assert apply_err(s, "already_requested", "join_group", user="carol", group="club")


def test_membership_events_of_each_operation(s):
    from mbt.tracker.events import membership_events
    def events(op, **args):
        op = dict(args, op=op)
        return membership_events(op, s.apply(op))
    assert events("join_group", user="dave", group="club") == \
        [("alice", {"push": "membership", "kind": "requested", "group": "club", "user": "dave"})]
    assert events("reject_request", owner="alice", group="club", user="dave") == \
        [("dave", {"push": "membership", "kind": "rejected", "group": "club", "by": "alice"})]
    assert events("accept_request", owner="alice", group="club", user="carol") == \
        [("carol", {"push": "membership", "kind": "accepted", "group": "club", "by": "alice"})]
    assert events("leave_group", user="carol", group="club") == []          # not the owner
    assert events("leave_group", user="alice", group="club") == \
        [("bob", {"push": "membership", "kind": "owner", "group": "club", "by": "alice"})]
    assert events("leave_group", user="bob", group="club") == []            # group deleted
    assert events("create_group", user="bob", group="den") == []
