"""Tests for mbt.peer.commands: the console command table.

A fake node stands in for PeerNode: each method records its call and answers
with a Deferred the test chose (``defer.succeed`` / ``defer.fail``), so every
reply is available synchronously. The user contract (ARCHITECTURE.md section 1)
is spelled out here independently of the code under test.
"""

from __future__ import annotations

import shlex
from typing import Dict, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.logger import globalLogPublisher

from mbt.errors import InvalidArgument, MbtError, NotLoggedIn, check_file_name
from mbt.peer.download import DownloadProgress
from mbt.peer.commands import CommandTable

#: The contract: every command and its usage, in the documented argument order.
CONTRACT: Dict[str, str] = {
    "create_user": "create_user <user_id> <passwd>",
    "login": "login <user_id> <passwd>",
    "logout": "logout",
    "create_group": "create_group <group_id>",
    "list_groups": "list_groups",
    "join_group": "join_group <group_id>",
    "leave_group": "leave_group <group_id>",
    "list_requests": "list_requests <group_id>",
    "accept_request": "accept_request <group_id> <user_id>",
    "reject_request": "reject_request <group_id> <user_id>",
    "list_files": "list_files <group_id>",
    "upload_file": "upload_file <file_path> <group_id>",
    "download_file": "download_file <group_id> <file_name> <destination_path>",
    "show_downloads": "show_downloads",
    "stop_share": "stop_share <group_id> <file_name>",
    "help": "help [command]",
    "quit": "quit",
}

#: Commands that reach the node (and its tracker) through a Deferred.
NODE_COMMANDS = [c for c in CONTRACT if c not in ("help", "quit", "show_downloads")]


def nargs(name: str) -> int:
    return CONTRACT[name].count("<")


def sample_line(name: str) -> str:
    """A well-formed line for ``name`` with distinct placeholder arguments."""
    return " ".join([name] + ["arg%d" % i for i in range(nargs(name))])


DEFAULT_RESULTS = {
    "create_user": {},
    "login": {"user": "arg0", "shares": 0, "resumed": 0, "warnings": []},
    "logout": {"user": "bob", "shares": 2},
    "create_group": {"group": "arg0", "owner": "bob"},
    "list_groups": {"groups": []},
    "join_group": {"group": "arg0", "owner": "alice"},
    "leave_group": {"group": "arg0", "deleted": False, "owner": "alice"},
    "list_requests": {"requests": []},
    "accept_request": {},
    "reject_request": {},
    "list_files": {"files": []},
    "upload_file": {"name": "a.bin", "group": "club", "size": 5, "pieces": 1, "sharers": 1,
                    "seconds": 0.01},
    "download_file": {"name": "arg1", "dest": "/tmp/arg2"},
    "stop_share": {"group": "arg0", "name": "arg1"},
}


class FakeNode:
    """The methods of PeerNode that commands.py uses, answering as told.

    ``results[name]`` is the value to succeed with, an exception instance to
    fail the Deferred with, or a callable building the Deferred itself.
    """

    def __init__(self) -> None:
        self.calls: List[tuple] = []
        self.results = dict(DEFAULT_RESULTS)
        self.download_lines: List[DownloadProgress] = []
        self.listeners = []
        self.user = "u"

    def _answer(self, name, *args):
        self.calls.append((name,) + args)
        r = self.results[name]
        if isinstance(r, BaseException):
            return defer.fail(r)
        if callable(r):
            return r(*args)
        return defer.succeed(r)

    def subscribe(self, listener):
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def create_user(self, user, password):
        return self._answer("create_user", user, password)

    def login(self, user, password):
        return self._answer("login", user, password)

    def logout(self):
        return self._answer("logout")

    def create_group(self, group):
        return self._answer("create_group", group)

    def list_groups(self):
        return self._answer("list_groups")

    def join_group(self, group):
        return self._answer("join_group", group)

    def leave_group(self, group):
        return self._answer("leave_group", group)

    def list_requests(self, group):
        return self._answer("list_requests", group)

    def accept_request(self, group, user):
        return self._answer("accept_request", group, user)

    def reject_request(self, group, user):
        return self._answer("reject_request", group, user)

    def list_files(self, group):
        return self._answer("list_files", group)

    def upload_file(self, path, group):
        return self._answer("upload_file", path, group)

    def download_file(self, group, name, dest):
        return self._answer("download_file", group, name, dest)

    def show_downloads(self):
        self.calls.append(("show_downloads",))
        return list(self.download_lines)

    def stop_share(self, group, name):
        return self._answer("stop_share", group, name)


@pytest.fixture
def node():
    return FakeNode()


@pytest.fixture
def table(node):
    return CommandTable(node)


def run(table: CommandTable, line: str) -> str:
    """Execute ``line``; the reply must already be there, and be text."""
    out = []
    table.execute(line).addBoth(out.append)
    assert len(out) == 1, "execute() did not fire synchronously with a fake node"
    assert isinstance(out[0], str), "execute() must fire with text, got %r" % (out[0],)
    return out[0]


def is_error_reply(reply: str) -> bool:
    """How scripts read a reply (contract-smoke): any line starting with 'error: '."""
    return any(ln.lstrip().startswith("error: ") for ln in reply.splitlines())


def assert_one_error_line(reply: str) -> None:
    assert reply.startswith("error: "), reply
    assert len(reply.splitlines()) == 1, "error reply spans several lines: %r" % reply


# -- parsing and usage -----------------------------------------------------

def test_table_has_the_contract_commands_plus_set(table):
    # ``set`` (issue #8's live upload rate) and ``clear_downloads`` (issue #12)
    # are the commands beyond the contract.
    assert set(table.commands) == set(CONTRACT) | {"set", "clear_downloads"}


@pytest.mark.parametrize("name", [c for c in CONTRACT if c != "help"])
def test_wrong_argument_count_is_one_usage_line(table, node, name):
    counts = {nargs(name) + 1, nargs(name) + 3}
    if nargs(name):
        counts |= {0, nargs(name) - 1}
    for n in sorted(counts):
        line = " ".join([name] + ["x%d" % i for i in range(n)])
        assert run(table, line) == "error: usage: " + CONTRACT[name], line
    assert node.calls == [], "a usage error must not reach the node"


def test_help_with_two_arguments_is_usage_error(table):
    assert run(table, "help login logout") == "error: usage: help [command]"


@pytest.mark.parametrize("line", ["frobnicate", "frobnicate a b", "LOGIN bob pw", "list-groups",
                                  "'login bob'"])
def test_unknown_command_is_one_error_line_pointing_to_help(table, node, line):
    reply = run(table, line)
    assert_one_error_line(reply)
    assert "unknown command" in reply and "help" in reply
    assert node.calls == []


def test_unknown_command_name_is_shortened(table):
    reply = run(table, "x" * 5000)
    assert_one_error_line(reply)
    assert len(reply) < 200


@pytest.mark.parametrize("line", ["", " ", "   \t  "])
def test_empty_line_gives_empty_reply(table, node, line):
    assert run(table, line) == ""
    assert node.calls == []


@pytest.mark.parametrize("line", ['login bob "secret', "login bob 'secret", 'upload_file "a b club',
                                  "login bob secret\\"])
def test_unbalanced_quotes_are_one_error_line_without_the_arguments(table, node, line):
    reply = run(table, line)
    assert_one_error_line(reply)
    assert "secret" not in reply
    assert node.calls == []


@pytest.mark.parametrize("line, path", [
    ('upload_file "/tmp/my file.txt" club', "/tmp/my file.txt"),
    ("upload_file '/tmp/my file.txt' club", "/tmp/my file.txt"),
    ("upload_file /tmp/my\\ file.txt club", "/tmp/my file.txt"),
    ('upload_file "it\'s here.txt" club', "it's here.txt"),
])
def test_quoted_path_with_spaces_is_one_argument(table, node, line, path):
    assert not is_error_reply(run(table, line))
    assert node.calls == [("upload_file", path, "club")]


@pytest.mark.parametrize("name", NODE_COMMANDS)
def test_arguments_reach_the_node_in_contract_order(table, node, name):
    reply = run(table, sample_line(name))
    assert not is_error_reply(reply), reply
    assert node.calls == [(name,) + tuple("arg%d" % i for i in range(nargs(name)))]


# -- help ------------------------------------------------------------------

def test_help_lists_every_contract_command(table, node):
    reply = run(table, "help")
    assert not is_error_reply(reply)
    first_words = {ln.split()[0] for ln in reply.splitlines() if ln.strip()}
    missing = set(CONTRACT) - first_words
    assert not missing, "help does not list %s" % sorted(missing)
    for name, usage in CONTRACT.items():
        assert usage in reply
    assert node.calls == []


@pytest.mark.parametrize("name", list(CONTRACT))
def test_help_command_shows_its_usage(table, name):
    reply = run(table, "help " + name)
    assert not is_error_reply(reply)
    assert "usage: " + CONTRACT[name] in reply


def test_help_unknown_command_is_one_error_line(table):
    reply = run(table, "help nosuch")
    assert_one_error_line(reply)
    assert "nosuch" in reply


def test_quit_reaching_the_table_is_an_error_not_a_crash(table, node):
    # The consoles handle quit themselves; the table must still answer with a line.
    assert_one_error_line(run(table, "quit"))
    assert node.calls == []


# -- errors ----------------------------------------------------------------

@pytest.mark.parametrize("name", NODE_COMMANDS)
def test_tracker_error_is_exactly_error_message(table, node, name):
    node.results[name] = MbtError("group club does not exist", "no_such_group")
    assert run(table, sample_line(name)) == "error: group club does not exist"


@pytest.mark.parametrize("name", NODE_COMMANDS)
def test_error_raised_before_any_deferred_is_still_one_line(table, node, name):
    def raise_now(*args):
        raise InvalidArgument("invalid group id '!!'")
    node.results[name] = raise_now
    assert run(table, sample_line(name)) == "error: invalid group id '!!'"


@pytest.mark.parametrize("name", NODE_COMMANDS)
def test_not_logged_in(table, node, name):
    node.results[name] = NotLoggedIn()
    assert run(table, sample_line(name)) == "error: not logged in; use login <user_id> <passwd>"


@settings(max_examples=300, deadline=None)
@given(message=st.text(), code=st.text(max_size=20), name=st.sampled_from(NODE_COMMANDS))
def test_any_tracker_error_is_one_error_line(message, code, name):
    node = FakeNode()
    node.results[name] = MbtError(message, code or None)
    reply = run(CommandTable(node), sample_line(name))
    assert_one_error_line(reply)
    plain = message.replace("\n", " ").strip()
    if len(plain.splitlines()) <= 1 and "\r" not in plain:
        assert reply == "error: " + plain


@pytest.mark.parametrize("exc", [RuntimeError("boom hunter2"), KeyError("hunter2"),
                                 TypeError("login() got hunter2"), ValueError("hunter2\nTraceback")])
def test_unexpected_exception_is_one_line_without_its_message(table, node, exc):
    node.results["login"] = exc
    seen = []
    globalLogPublisher.addObserver(seen.append)
    try:
        reply = run(table, "login bob hunter2")
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert_one_error_line(reply)
    assert reply.startswith("error: internal error")
    assert "hunter2" not in reply and "boom" not in reply and "Traceback" not in reply
    # It is logged for the operator, with the command word only, never its arguments.
    events = [e for e in seen if e.get("log_failure") is not None]
    assert events and events[0].get("cmd") == "login"
    assert not any("hunter2" in str(v) for e in events for k, v in e.items()
                   if k not in ("log_failure",))


def test_unexpected_synchronous_exception_is_internal_error(table, node):
    def explode(*args):
        raise ZeroDivisionError("secret")
    node.results["create_group"] = explode
    reply = run(table, "create_group club")
    assert_one_error_line(reply)
    assert "internal error" in reply and "secret" not in reply


def test_malformed_node_result_is_internal_error_not_a_crash(table, node):
    node.results["list_files"] = {"files": [{"name": "a.bin"}]}     # no size, no peers
    reply = run(table, "list_files club")
    assert_one_error_line(reply)
    assert "internal error" in reply


def test_never_fired_node_deferred_leaves_execute_pending(table, node):
    # A command runs as long as the node says; execute must not invent a reply.
    pending = defer.Deferred()
    node.results["list_groups"] = lambda: pending
    out = []
    table.execute("list_groups").addBoth(out.append)
    assert out == []
    pending.callback({"groups": []})
    assert out == ["(no groups)"]


# -- success replies -------------------------------------------------------

def test_list_groups_lines_start_with_group_then_owner_then_members(table, node):
    node.results["list_groups"] = {"groups": [
        {"group": "club", "owner": "alice", "members": 3},
        {"group": "solo", "owner": "bob", "members": 1},
    ]}
    lines = run(table, "list_groups").split("\n")
    assert len(lines) == 2
    assert lines[0].split()[0] == "club" and lines[1].split()[0] == "solo"
    assert lines[0].index("alice") < lines[0].index("3 members")
    assert lines[1].index("bob") < lines[1].index("1 member")
    assert "1 members" not in lines[1]


def test_list_groups_empty(table, node):
    assert run(table, "list_groups") == "(no groups)"


def test_list_requests_one_user_id_per_line(table, node):
    node.results["list_requests"] = {"requests": ["bob", "carol"]}
    assert run(table, "list_requests club") == "bob\ncarol"


def test_list_requests_empty_is_not_an_error(table, node):
    reply = run(table, "list_requests club")
    assert reply and not is_error_reply(reply)


def _file(name, size, peers, pieces=1):
    return {"name": name, "size": size, "pieces": pieces, "peers": peers, "file_hash": "0" * 64}


def test_list_files_lines_start_with_name_then_exact_size_and_peers(table, node):
    node.results["list_files"] = {"files": [
        _file("a.bin", 1234567, 2, 3), _file("b.txt", 5, 1), _file("c.iso", 0, 0, 0)]}
    lines = run(table, "list_files club").split("\n")
    assert [ln.split()[0] for ln in lines] == ["a.bin", "b.txt", "c.iso"]
    assert "1234567" in lines[0].split() and "2 peers" in lines[0]
    assert "5" in lines[1].split() and "1 peer" in lines[1] and "1 peers" not in lines[1]
    assert "0" in lines[2].split() and "0 peers" in lines[2]
    for ln in lines:
        assert ln.index(" bytes") < ln.index(" peer")


def test_list_files_name_with_spaces_comes_first(table, node):
    node.results["list_files"] = {"files": [_file("my holiday.jpg", 10, 1)]}
    assert run(table, "list_files club").startswith("my holiday.jpg ")


def test_list_files_empty(table, node):
    reply = run(table, "list_files club")
    assert reply and not is_error_reply(reply)
    assert "club" in reply


def test_list_files_name_that_looks_like_an_error_is_not_read_as_one(table, node):
    node.results["list_files"] = {"files": [_file("error: disk full", 7, 1)]}
    reply = run(table, "list_files club")
    assert not is_error_reply(reply)
    assert shlex.split(reply)[0] == "error: disk full"    # typed back, it is the same name


def progress(status, name, reason="", percent=0.0, rate=0.0, peers=0, running=True, note=""):
    return DownloadProgress(status, "club", name, "/home/u/" + name, reason, percent, rate, peers,
                            running, note)


def test_show_downloads_formats_each_download(table, node):
    node.download_lines = [progress("D", "big.iso", percent=37.9, rate=12.5e6, peers=3),
                           progress("C", "a.bin", percent=100.0),
                           progress("F", "c.bin", reason="whole-file hash mismatch; nothing saved")]
    assert run(table, "show_downloads").split("\n") == [
        "[D] [club] big.iso  37% 12.5 MB/s 3 peers", "[C] [club] a.bin  /home/u/a.bin",
        "[F] [club] c.bin  whole-file hash mismatch; nothing saved"]


def test_show_downloads_says_paused_or_waiting(table, node):
    node.download_lines = [progress("D", "a.bin", percent=5, rate=2500, peers=1, running=False),
                           progress("D", "b.bin", rate=12, note="no peer sharing it right now; waiting 9s")]
    assert run(table, "show_downloads").split("\n") == [
        "[D] [club] a.bin  5% paused until the next login",
        "[D] [club] b.bin  0% 12 B/s 0 peers  (no peer sharing it right now; waiting 9s)"]


def test_show_downloads_logged_out_says_nothing_runs(table, node):
    node.user = None
    node.download_lines = [progress("D", "a.bin", percent=5, running=False)]
    assert run(table, "show_downloads").split("\n") == [
        "(logged out: nothing is downloading; unfinished downloads resume at the next login)",
        "[D] [club] a.bin  5% paused until the next login"]


def test_show_downloads_empty(table, node):
    reply = run(table, "show_downloads")
    assert reply and not is_error_reply(reply)


def test_download_file_reply(table, node):
    node.results["download_file"] = {"name": "f.bin", "dest": "/home/u/dl/f.bin"}
    assert run(table, "download_file club f.bin dl") == "downloading f.bin into /home/u/dl/f.bin"
    assert node.calls == [("download_file", "club", "f.bin", "dl")]


def test_login_reply_counts_and_warnings(table, node):
    node.results["login"] = {"user": "bob", "shares": 2, "resumed": 1,
                             "warnings": ["warning: stopped sharing x in club: /x is gone"]}
    lines = run(table, "login bob pw").split("\n")
    assert lines[0].startswith("logged in as bob") and "2 files" in lines[0]
    assert any("1 download" in ln for ln in lines)
    assert lines[-1] == "warning: stopped sharing x in club: /x is gone"


def test_upload_file_reply_has_name_group_and_exact_size(table, node):
    node.results["upload_file"] = {"name": "a.bin", "group": "club", "size": 1048577, "pieces": 3,
                                   "sharers": 1, "seconds": 0.5}
    reply = run(table, "upload_file a.bin club")
    assert "a.bin" in reply and "club" in reply and "1048577" in reply
    assert not is_error_reply(reply)


@pytest.mark.parametrize("result", [
    {"group": "g", "deleted": False, "owner": "alice"},
    {"group": "g", "deleted": True, "owner": None},
    {"group": "g", "withdrawn": True},
])
def test_leave_group_replies(table, node, result):
    node.results["leave_group"] = result
    reply = run(table, "leave_group g")
    assert "g" in reply and not is_error_reply(reply)


# Names a tracker may list: whatever check_file_name accepts.
file_names = st.text(min_size=1, max_size=40).filter(lambda s: _valid_name(s))


def _valid_name(s: str) -> bool:
    try:
        check_file_name(s)
        return True
    except MbtError:
        return False


@settings(max_examples=300, deadline=None)
@given(names=st.lists(st.one_of(file_names, st.just("error: x"), st.just("error:"),
                                st.just("a\u2028error: b"),
                                st.just("x\x85error: y")), min_size=1, max_size=4, unique=True),
       sizes=st.lists(st.integers(0, 1 << 40), min_size=4, max_size=4))
def test_list_files_one_line_per_file_and_never_an_error(names, sizes):
    node = FakeNode()
    node.results["list_files"] = {"files": [_file(n, s, 1) for n, s in zip(names, sizes)]}
    reply = run(CommandTable(node), "list_files club")
    assert not is_error_reply(reply)
    assert len(reply.splitlines()) == len(names)
    for ln, size in zip(reply.splitlines(), sizes):
        assert str(size) in ln.split()


@pytest.mark.parametrize("name", ["error:", "error: x", "error:'q", "error:x y"])
def test_a_file_name_starting_with_error_colon_is_listed_quoted(name):
    node = FakeNode()
    node.results["list_files"] = {"files": [_file(name, 7, 1)]}
    reply = run(CommandTable(node), "list_files club")
    assert not is_error_reply(reply), reply
    assert shlex.split(reply)[0] == name


@settings(max_examples=200, deadline=None)
@given(name=file_names, dest=st.text(st.characters(blacklist_characters="\n"), min_size=1, max_size=40))
def test_download_reply_is_one_line_never_an_error(name, dest):
    node = FakeNode()
    node.results["download_file"] = {"name": name, "dest": dest}
    reply = run(CommandTable(node), "download_file club x y")
    assert reply.startswith("downloading ")
    assert len(reply.splitlines()) == 1 and not is_error_reply(reply)


@settings(max_examples=500, deadline=None)
@given(line=st.text(max_size=80))
def test_any_line_gets_text_and_errors_are_one_line(line):
    reply = run(CommandTable(FakeNode()), line)
    if reply.startswith("error: "):
        assert len(reply.splitlines()) == 1
    else:
        assert not is_error_reply(reply)


def test_subscribe_goes_to_the_node(table, node):
    got = []
    unsubscribe = table.subscribe(got.append)
    assert node.listeners == [got.append]
    unsubscribe()
    assert node.listeners == []


def _unstarted_node(state_dir, **kwargs):
    """A real PeerNode that is never started (no sockets): for its settings."""
    from twisted.internet import task
    from mbt.peer.node import PeerNode
    return PeerNode("127.0.0.1:0", [], str(state_dir), task.Clock(), **kwargs)


def test_set_upload_rate_changes_the_shared_bucket_live(tmp_path):
    node = _unstarted_node(tmp_path)
    table = CommandTable(node)
    assert table.execute("set upload_rate 20M").result == \
        "upload rate limit: 20.0 MB/s for all uploads (kept for later runs)"
    assert node.upload_limiter.rate == 20e6
    assert table.execute("set upload_rate 0").result == "no upload rate limit (kept for later runs)"
    assert table.execute("set upload_rate fast").result.startswith("error: bad rate 'fast'")
    assert table.execute("set color blue").result.startswith("error: unknown setting 'color'")


def test_set_direct_writes_switches_how_new_downloads_write(tmp_path):
    node = _unstarted_node(tmp_path)
    table = CommandTable(node)
    assert node.direct_writes                                   # on by default
    assert table.execute("set direct_writes off").result.startswith(
        "downloads started or resumed from now on write through the page cache")
    assert node.direct_writes is False
    assert table.execute("set direct_writes on").result.startswith(
        "downloads started or resumed from now on write verified pieces past the page cache")
    assert node.direct_writes is True
    assert table.execute("set direct_writes maybe").result == "error: direct_writes is on or off"
    assert node.direct_writes is True
    assert "direct_writes" in table.execute("help set").result


def test_set_upload_rate_survives_a_restart_and_the_flag_wins(tmp_path):
    table = CommandTable(_unstarted_node(tmp_path))
    table.execute("set upload_rate 300k")
    assert _unstarted_node(tmp_path).upload_limiter.rate == 300e3          # kept
    assert _unstarted_node(tmp_path, upload_rate=5e6).upload_limiter.rate == 5e6   # --upload-rate wins
    assert _unstarted_node(tmp_path, upload_rate=0.0).upload_limiter.rate == 0     # also --upload-rate 0
    assert "keep it for later runs" in table.execute("help set").result
    assert "--upload-rate" in table.execute("help set").result


@pytest.mark.parametrize("content", ['{"upload_rate": -1}', '{"upload_rate": "fast"}', "[1]", "{nope",
                                     '{"upload_rate": true}', '{"colour": 3}'])
def test_bad_saved_settings_are_ignored_not_fatal(tmp_path, content):
    (tmp_path / "settings.json").write_text(content)
    assert _unstarted_node(tmp_path).upload_limiter.rate == 0
