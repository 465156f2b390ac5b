"""Help that answers the usual mistakes (paths with spaces, relative paths) and Tab completion."""

import pytest

from mbt.peer.commands import CommandTable
from tests.test_commands import FakeNode, assert_one_error_line, run


@pytest.fixture
def node():
    n = FakeNode()
    n.cwd = "/home/ann/work"
    n.servables, n.downloads = {("music", "h1"): None}, {("films", "a.mkv"): None}
    return n


@pytest.fixture
def table(node):
    return CommandTable(node)


@pytest.mark.parametrize("line", [
    "upload_file my file.txt club",
    "upload_file /tmp/my file club",
    "download_file club my song.mp3 dl",
    "download_file club song.mp3 ~/My Music",
])
def test_too_many_arguments_with_a_path_hint_at_quoting(table, node, line):
    reply = run(table, line)
    assert_one_error_line(reply)
    assert reply.startswith("error: usage: %s <" % line.split()[0])
    assert 'quote a name or path that has spaces, e.g. "my file.txt"' in reply
    assert node.calls == []


def test_too_many_plain_words_get_the_bare_usage(table):
    assert run(table, "join_group a b") == "error: usage: join_group <group_id>"


def test_quoted_path_with_spaces_reaches_the_node(table, node):
    node.results["upload_file"] = {"name": "my file.txt", "group": "club", "size": 1, "pieces": 1,
                                   "seconds": 0}
    assert run(table, 'upload_file "my file.txt" club').startswith("shared my file.txt in club")
    assert node.calls == [("upload_file", "my file.txt", "club")]


def test_help_upload_file_explains_relative_paths(table):
    reply = run(table, "help upload_file")
    assert reply.startswith("usage: upload_file <file_path> <group_id>")
    assert "relative to the peer process's working directory (/home/ann/work)" in reply
    assert 'upload_file "my file.txt" club' in reply


def test_help_download_file_explains_the_destination(table):
    reply = run(table, "help download_file")
    assert reply.startswith("usage: download_file <group_id> <file_name> <destination_path>")
    assert "an existing directory (the file is saved there as <file_name>)" in reply
    assert "or a new file path in an existing directory" in reply
    assert "never overwritten" in reply
    assert "working directory (/home/ann/work)" in reply


def test_tab_completion_of_command_names(table):
    assert table.complete("") == list(table.commands)
    assert sorted(table.complete("list_")) == ["list_files", "list_groups", "list_requests"]
    assert table.complete("upl") == ["upload_file"]
    assert table.complete("help sh") == ["show_downloads"]
    assert table.complete("set up") == ["upload_rate"]


def test_tab_completion_of_group_ids_seen_by_this_console(table, node):
    node.results["list_groups"] = {"groups": [{"group": "club", "owner": "a", "members": 1},
                                              {"group": "chess", "owner": "b", "members": 2}]}
    assert table.complete("list_files c") == []          # nothing seen yet but shares/downloads
    assert table.complete("list_files ") == ["films", "music"]
    run(table, "list_groups")
    assert table.complete("list_files c") == ["chess", "club"]
    assert table.complete("accept_request cl") == ["club"]
    assert table.complete("accept_request club b") == []  # a user id: no completion
    assert table.complete("upload_file x.txt m") == ["music"]
