"""One definition of each program's options, shared by its two front ends (mbt.options),
and services built from them without side effects (mbt.tap)."""

import os

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from mbt import tap
from mbt.options import (BadConfig, ClientCommandOptions, PeerFlags, PeerOptions, TrackerCommandOptions,
                         TrackerFlags, TrackerOptions)


@pytest.fixture
def info(tmp_path):
    path = tmp_path / "tracker_info.txt"
    path.write_text("127.0.0.1:6881\n127.0.0.1:6882\n")
    return str(path)


def parsed(cls, argv):
    options = cls()
    options.parseOptions(argv)
    return options


def flags(cls):
    """{long name: help text} of every flag ``cls`` takes."""
    options = cls()
    return {name: options.docs.get(name) for name in options.longOpt}


def test_both_tracker_front_ends_take_the_same_flags_with_the_same_help():
    seed, twistd = flags(TrackerCommandOptions), flags(TrackerOptions)
    shared = {name.rstrip("=") for name in flags(TrackerFlags)} - {"help", "version"}
    assert {"state-dir", "secret-file", "tls-cert", "tls-key", "tls-ca"} <= shared
    for name in shared:
        assert seed[name + "="] == twistd[name + "="]
    # The positional parts are flags under twistd only; --log-file is twistd's own --logfile
    # there, and --export-to (write a snapshot and exit) is a one-shot job for the command.
    assert set(seed) - set(twistd) == {"log-file=", "export-to="}
    assert set(twistd) - set(seed) == {"info=", "no="}


def test_both_peer_front_ends_take_the_same_flags_with_the_same_help():
    seed, twistd = flags(ClientCommandOptions), flags(PeerOptions)
    shared = {name.rstrip("=") for name in flags(PeerFlags)} - {"help", "version"}
    assert {"state-dir", "upload-rate", "web", "tls-cert", "tls-key", "tls-ca"} <= shared
    for name in shared:
        assert seed[name + "="] == twistd[name + "="]
    assert set(seed) - set(twistd) == {"log-file="}
    assert set(twistd) - set(seed) == {"address=", "info=", "console=", "manhole="}


def test_tls_flags_are_worded_the_same_for_tracker_and_peer():
    tracker, peer = flags(TrackerFlags), flags(PeerFlags)
    for name in ("tls-cert=", "tls-key=", "tls-ca="):
        assert tracker[name] == peer[name]


@pytest.mark.parametrize("cls", [TrackerCommandOptions, TrackerOptions, ClientCommandOptions, PeerOptions])
def test_help_shows_every_default(cls):
    text = str(cls())
    assert "~/.local/share/mbt/" in text            # --state-dir
    if cls in (ClientCommandOptions, PeerOptions):
        assert "[default: the last 'set upload_rate', else none]" in text
    if cls is ClientCommandOptions:
        assert "STATE_DIR/peer.log" in text
    if cls in (TrackerCommandOptions, TrackerOptions):
        assert ".mbt-tracker-secret" in text


def test_seed_and_twistd_tracker_options_give_the_same_config(info, tmp_path):
    seed = parsed(TrackerCommandOptions, [info, "2", "--state-dir", str(tmp_path / "s")])
    twistd = parsed(TrackerOptions, ["--info", info, "--no", "2", "--state-dir", str(tmp_path / "s")])
    for key in ("info", "no", "address", "trackers", "state-dir", "tls", "secret-file"):
        assert seed[key] == twistd[key], key
    assert seed["no"] == 2 and str(seed["address"]) == "127.0.0.1:6882"


def test_options_may_come_before_or_after_the_positional_arguments(info, tmp_path):
    after = parsed(ClientCommandOptions, ["127.0.0.1:7001", info, "--state-dir", "d", "-u", "1M"])
    before = parsed(ClientCommandOptions, ["--state-dir=d", "--upload-rate", "1M", "127.0.0.1:7001", info])
    for options in (after, before):
        assert options["state-dir"] == "d" and options["upload-rate"] == 1e6
        assert options["address"] == "127.0.0.1:7001" and options["info"] == info


def test_seed_and_twistd_peer_options_give_the_same_config(info):
    seed = parsed(ClientCommandOptions, ["127.0.0.1:7001", info, "--upload-rate", "2M"])
    twistd = parsed(PeerOptions, ["--address", "127.0.0.1:7001", "--info", info, "--upload-rate", "2M",
                                  "--console", "tcp:7100"])
    for key in ("address", "info", "trackers", "state-dir", "upload-rate", "tls", "web"):
        assert seed[key] == twistd[key], key
    assert twistd["console"] == "tcp:7100:interface=127.0.0.1"     # loopback by default
    assert seed["state-dir"].endswith(os.path.join("mbt", "peer-127.0.0.1_7001"))


@pytest.mark.parametrize("cls, argv, message", [
    (TrackerOptions, ["--no", "1"], "--info TRACKER_INFO is required"),
    (TrackerOptions, ["--info", "x"], "--no N is required"),
    (TrackerCommandOptions, ["x"], "missing N"),
    (TrackerCommandOptions, [], "missing TRACKER_INFO N"),
    (TrackerCommandOptions, ["x", "one"], "N must be a number"),
    (TrackerCommandOptions, ["x", "1", "y"], "too many arguments: y"),
    (PeerOptions, ["--address", "127.0.0.1:1", "--console", "tcp:1"], "--info TRACKER_INFO is required"),
    (ClientCommandOptions, ["127.0.0.1:1"], "missing TRACKER_INFO"),
    (ClientCommandOptions, ["nowhere", "x"], "bad peer address"),
])
def test_tracker_info_is_required_by_every_front_end(cls, argv, message):
    with pytest.raises(usage.UsageError, match=message):
        parsed(cls, argv)


def test_an_unusable_tracker_info_is_a_config_error_not_a_usage_error(tmp_path):
    with pytest.raises(BadConfig, match="cannot read tracker info file"):
        parsed(TrackerCommandOptions, [str(tmp_path / "missing.txt"), "1"])
    with pytest.raises(BadConfig, match="out of range"):
        (tmp_path / "i").write_text("127.0.0.1:1\n")
        parsed(TrackerOptions, ["--info", str(tmp_path / "i"), "--no", "3"])


class FakeTwistd(usage.Options):
    """The part of twistd's ServerOptions a plugin's options see: ``parent['pidfile']``."""

    optParameters = [["pidfile", "", "twistd.pid", ""]]

    def __init__(self, sub):
        usage.Options.__init__(self)
        self.subCommands = [("sub", None, sub, "")]


def test_twistd_plugins_use_a_pid_file_of_their_own(info):
    tracker = FakeTwistd(TrackerOptions)
    tracker.parseOptions(["sub", "--info", info, "--no", "2"])
    peer = FakeTwistd(PeerOptions)
    peer.parseOptions(["sub", "--address", "127.0.0.1:7001", "--info", info, "--console", "tcp:1"])
    assert tracker["pidfile"] == "mbt-tracker-2.pid"
    assert peer["pidfile"] == "mbt-peer-127.0.0.1_7001.pid"
    explicit = FakeTwistd(TrackerOptions)
    explicit.parseOptions(["--pidfile", "my.pid", "sub", "--info", info, "--no", "1"])
    assert explicit["pidfile"] == "my.pid"


def test_making_the_services_touches_nothing_until_they_start(info, tmp_path):
    reactor = MemoryReactorClock()
    tracker = tap.makeTrackerService(
        parsed(TrackerOptions, ["--info", info, "--no", "1", "--state-dir", str(tmp_path / "t")]),
        reactor=reactor)
    peer = tap.makePeerService(
        parsed(PeerOptions, ["--address", "127.0.0.1:7001", "--info", info, "--console", "tcp:7100",
                             "--state-dir", str(tmp_path / "p")]), reactor=reactor)
    assert sorted(os.listdir(tmp_path)) == ["tracker_info.txt"]   # no state dir, no secret
    tracker.startService()
    try:
        assert (tmp_path / "t" / "tracker.sqlite3").exists()
        assert (tmp_path / ".mbt-tracker-secret").exists()
        assert reactor.tcpServers[0][0] == 6881        # listens on its line of TRACKER_INFO
    finally:
        tracker.stopService()
    peer.startService()
    try:
        assert (tmp_path / "p" / "lock").exists()
        assert [port for port, *_ in reactor.tcpServers][1:] == [7001, 7100]
    finally:
        peer.stopService()
