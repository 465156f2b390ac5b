"""Tracker time: a peer's estimate of the trackers' clock, from its own.

Ticket expiry is written by a tracker in the tracker's clock, so a serving
peer must judge it in that clock too, whatever its own says. Every ``login``
and ``ping`` reply carries the tracker's ``time`` (unix seconds, float). A
sample is ``(sent, received, tracker_time)`` with ``sent`` and ``received`` the
peer's own clock around the request; the tracker read its clock somewhere in
between, so ``tracker_time - (sent + received) / 2`` estimates the offset with
an error of at most half the round trip. Like NTP's minimum filter, the
estimate comes from the sample with the shortest round trip among the last
:data:`SAMPLES` ones (a reply stuck behind a slow tracker says little).

Pure: no clock of its own; callers pass times in.
"""

from __future__ import annotations

from collections import deque
from typing import Deque, Optional, Tuple

#: Samples kept; the one with the shortest round trip wins.
SAMPLES = 8
#: An offset larger than this (seconds) is "wildly off": the user is told once.
WILD_SKEW = 3600.0


def describe_offset(offset: float) -> str:
    """``3h 0m ahead of`` / ``12m 5s behind`` (how this clock differs from the trackers')."""
    ahead = offset < 0          # tracker = local + offset: a negative offset means we are ahead
    s = int(round(abs(offset)))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    text = "%dh %dm" % (h, m) if h else "%dm %ds" % (m, sec)
    return "%s %s" % (text, "ahead of" if ahead else "behind")


class TrackerClock:
    """This peer's offset to the trackers' clock: ``tracker_time = local + offset``."""

    def __init__(self, samples: int = SAMPLES, wild: float = WILD_SKEW) -> None:
        self._samples: Deque[Tuple[float, float]] = deque(maxlen=samples)   # (round trip, offset)
        self.wild = wild
        self.offset: float = 0.0
        self._warned = False

    @property
    def known(self) -> bool:
        """Has any tracker told us its time yet?"""
        return bool(self._samples)

    def sample(self, sent: float, received: float, tracker_time: object) -> bool:
        """Add one reply's time; returns False (and ignores it) when it is unusable."""
        if (isinstance(tracker_time, bool) or not isinstance(tracker_time, (int, float))
                or tracker_time != tracker_time or abs(tracker_time) > 1e11 or received < sent):
            return False
        self._samples.append((received - sent, float(tracker_time) - (sent + received) / 2.0))
        self.offset = min(self._samples)[1]
        return True

    def now(self, local: float) -> float:
        """The trackers' time now, given this peer's clock reads ``local``."""
        return local + self.offset

    def warning(self) -> Optional[str]:
        """A one-time notice when our clock is wildly off; ``None`` otherwise or after the first."""
        if self._warned or not self._samples or abs(self.offset) <= self.wild:
            return None
        self._warned = True
        return ("this computer's clock is %s the trackers' time; mbt judges tickets by the"
                " trackers' time so sharing still works, but please set the clock right"
                " (e.g. enable NTP)" % describe_offset(self.offset))
