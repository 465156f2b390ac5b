"""Tracker time: the offset estimate, its filter, and the one-time warning (a fake clock, no I/O)."""

from mbt.trackertime import SAMPLES, WILD_SKEW, TrackerClock, describe_offset


def test_the_offset_is_tracker_time_minus_the_round_trips_midpoint():
    c = TrackerClock()
    assert not c.known and c.now(100.0) == 100.0
    # We are 600 s ahead: we sent at 1000 (ours), the tracker read 400.5, the reply came at 1001.
    assert c.sample(1000.0, 1001.0, 400.5)
    assert c.known
    assert c.offset == -600.0
    assert c.now(2000.0) == 1400.0


def test_the_sample_with_the_shortest_round_trip_wins():
    c = TrackerClock()
    c.sample(0.0, 10.0, 3605.0)        # slow reply: midpoint 5 -> offset 3600, error up to 5 s
    c.sample(20.0, 20.2, 3620.1)       # fast reply: offset exactly 3600.0
    c.sample(30.0, 38.0, 3640.0)       # slow again, claims 3606
    assert abs(c.offset - 3600.0) < 1e-9


def test_old_samples_are_forgotten():
    c = TrackerClock()
    c.sample(0.0, 0.01, 100.0)         # very fast, offset ~100
    for i in range(SAMPLES):
        c.sample(10.0 + i, 10.5 + i, 10.25 + i + 50.0)    # offset 50
    assert abs(c.offset - 50.0) < 1e-9


def test_unusable_samples_are_ignored():
    c = TrackerClock()
    for bad in (None, "12", True, float("nan"), 1e30):
        assert not c.sample(0.0, 1.0, bad)
    assert not c.sample(5.0, 4.0, 100.0)     # received before sent: our clock jumped
    assert not c.known and c.offset == 0.0


def test_a_wild_clock_is_told_once():
    c = TrackerClock()
    c.sample(0.0, 0.0, 3 * 3600.0)         # we are 3 h behind
    msg = c.warning()
    assert "3h 0m behind the trackers' time" in msg and "NTP" in msg
    assert c.warning() is None
    c.sample(0.0, 0.0, 4 * 3600.0)
    assert c.warning() is None


def test_a_clock_within_the_limit_is_not_worth_a_warning():
    for skew in (600.0, -600.0, 59 * 60.0, WILD_SKEW):
        c = TrackerClock()
        c.sample(1000.0, 1000.0, 1000.0 + skew)
        assert c.warning() is None
    assert TrackerClock().warning() is None


def test_describe_offset():
    assert describe_offset(-3 * 3600.0) == "3h 0m ahead of"
    assert describe_offset(725.0) == "12m 5s behind"
