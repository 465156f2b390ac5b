"""TRACKER_INFO parsing: every tracker one ``IP:PORT`` or ``IP PORT`` a line."""

import pytest

from mbt.errors import ConfigError
from mbt.trackerinfo import (TrackerAddress, load_tracker_info, parse_address,
                             parse_tracker_info, select_tracker)


def test_colon_and_space_forms_both_parse_and_are_numbered_in_order():
    trackers = parse_tracker_info("127.0.0.1:6881\n10.0.0.2 6882\n10.0.0.3\t6883\n")
    assert trackers == [TrackerAddress(1, "127.0.0.1", 6881),
                        TrackerAddress(2, "10.0.0.2", 6882),
                        TrackerAddress(3, "10.0.0.3", 6883)]
    assert str(trackers[1]) == "10.0.0.2:6882"


def test_blank_lines_comments_and_surrounding_spaces_are_ignored():
    text = ("# all trackers\n"
            "\n"
            "   \n"
            "  127.0.0.1:7001   # first\n"
            "\t# indented comment\n"
            "127.0.0.1 7002\r\n"
            "#127.0.0.1:7003\n")
    trackers = parse_tracker_info(text)
    # Numbers count trackers, not lines: comments and blanks do not shift them.
    assert trackers == [TrackerAddress(1, "127.0.0.1", 7001), TrackerAddress(2, "127.0.0.1", 7002)]


def test_ipv6_and_localhost_are_accepted():
    assert parse_address("[::1]:6881") == ("::1", 6881)
    assert parse_address("::1 6881") == ("::1", 6881)
    assert parse_address("localhost:6881") == ("localhost", 6881)


@pytest.mark.parametrize("line", [
    "127.0.0.1",                # no port
    "127.0.0.1:",               # empty port
    ":6881",                    # no host
    "tracker.example:6881",     # not an IP address
    "127.0.0.1 6881 extra",     # three fields
    "127.0.0.1:port",           # not a number
    "127.0.0.1:-1",
    "127.0.0.1:+80",
    "127.0.0.1:0",              # out of range
    "127.0.0.1:65536",
    "127.0.0.1:99999999999999999999",
    "300.1.1.1:6881",
    "127.0.0.1:\u0661\u0662",   # non-ASCII digits are not a port
])
def test_bad_line_is_an_error_naming_file_and_line(line):
    text = "# header\n127.0.0.1:6881\n\n%s\n" % line
    with pytest.raises(ConfigError) as e:
        parse_tracker_info(text, "info.txt")
    msg = str(e.value)
    assert msg.startswith("info.txt line 4: "), msg
    assert e.value.console_line().startswith("error: info.txt line 4")


@pytest.mark.parametrize("port", ["0", "65536", "70000"])
def test_bad_port_message_says_the_valid_range(port):
    with pytest.raises(ConfigError, match=r"line 1: port '%s' is not a number in 1\.\.65535" % port):
        parse_tracker_info("127.0.0.1:%s\n" % port, "t")


def test_port_bounds_are_inclusive():
    assert parse_address("127.0.0.1:1") == ("127.0.0.1", 1)
    assert parse_address("127.0.0.1:65535") == ("127.0.0.1", 65535)


@pytest.mark.parametrize("text", ["", "\n\n", "# only comments\n   # here\n"])
def test_file_without_trackers_is_an_error(text):
    with pytest.raises(ConfigError, match="lists no tracker"):
        parse_tracker_info(text, "empty.txt")


def test_load_reads_a_file_and_names_it_in_errors(tmp_path):
    good = tmp_path / "info.txt"
    good.write_text("127.0.0.1:6881\n127.0.0.1 6882\n")
    assert [str(t) for t in load_tracker_info(str(good))] == ["127.0.0.1:6881", "127.0.0.1:6882"]
    bad = tmp_path / "bad.txt"
    bad.write_text("127.0.0.1:6881\nnonsense\n")
    with pytest.raises(ConfigError) as e:
        load_tracker_info(str(bad))
    assert str(e.value).startswith("%s line 2: " % bad)
    assert "nonsense" in str(e.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read tracker info file"):
        load_tracker_info(str(tmp_path / "nope.txt"))


def test_binary_garbage_file_is_a_config_error_not_a_crash(tmp_path):
    path = tmp_path / "garbage"
    path.write_bytes(b"\xff\xfe\x00\x01garbage\n")
    with pytest.raises(ConfigError, match="line 1"):
        load_tracker_info(str(path))


def test_select_tracker_returns_the_numbered_tracker():
    trackers = parse_tracker_info("127.0.0.1:1\n127.0.0.1:2\n")
    assert select_tracker(trackers, 1).port == 1
    assert select_tracker(trackers, 2).port == 2


@pytest.mark.parametrize("number", [0, -1, 3, 100])
def test_tracker_number_out_of_range_is_a_clear_error(number):
    trackers = parse_tracker_info("127.0.0.1:1\n127.0.0.1:2\n")
    with pytest.raises(ConfigError) as e:
        select_tracker(trackers, number, "info.txt")
    assert str(e.value) == ("tracker number %d is out of range: info.txt lists 2 tracker(s)" % number)


def test_repository_tracker_info_lists_two_local_trackers():
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tracker_info.txt")
    trackers = load_tracker_info(path)
    assert len(trackers) == 2
    assert all(t.host == "127.0.0.1" for t in trackers)
