"""One login budget for all trackers: strikes are shared over the sync links, like presence.

Every tracker keeps a :class:`~mbt.throttle.LoginThrottle`. When it admits a
login attempt, and when the password turns out wrong or right, it updates
its counters and tells every linked tracker at once. A tracker
applies what it hears at its own clock's *now* (no clock comparison between
trackers). When two trackers (re)link they send each other their live
counters (with each one's age), and each keeps the higher count.

The guarantee, with the trackers linked: a guesser gets the budget of one
tracker in all, however it spreads its attempts over the trackers, except
for attempts that reach different trackers within one link delay of each
other (a few milliseconds on a LAN): each of those may be admitted before the
others' strikes arrive, at most one extra per tracker per such window. A
tracker cut off from the others counts alone while it is cut off, and the
counters are merged when the link comes back.

Messages (``{"t": "login", ...}`` on the sync channel, docs/replication.rst)::

    {"t": "login", "kind": "attempt", "user": U, "address": A}
    {"t": "login", "kind": "failed", "user": U, "address": A}
    {"t": "login", "kind": "ok", "user": U, "address": A}
    {"t": "login", "kind": "snapshot", "counters": [[KEY..., STRIKES, AGE_SECONDS], ...]}
"""

from __future__ import annotations

from typing import Dict, Optional

from mbt.throttle import LoginThrottle

#: Counters sent to a tracker that links (the most recently struck first).
SNAPSHOT_LIMIT = 10000
_EVENTS = {"attempt": LoginThrottle.attempt, "failed": LoginThrottle.failed, "ok": LoginThrottle.succeeded}


def _text(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 256:
        raise ValueError("bad login budget field")
    return value


def _key(items: list) -> tuple:
    if not items or items[0] not in ("p", "a", "u") or len(items) != (3 if items[0] == "p" else 2):
        raise ValueError("bad login budget key")
    return tuple(_text(x) for x in items)


def _number(value: object, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
        raise ValueError("bad login budget number")
    return float(value)


class SharedLoginGuard:
    """A :class:`~mbt.throttle.LoginGuard` whose counters every linked tracker shares."""

    def __init__(self, clock, throttle: Optional[LoginThrottle] = None) -> None:
        self.clock = clock
        self.throttle = throttle or LoginThrottle()
        self.links: Dict[int, object] = {}

    # -- the LoginGuard interface (TrackerCore) ---------------------------------

    def admit(self, user: str, address: str) -> Optional[float]:
        now = self.clock.seconds()
        wait = self.throttle.retry_after(user, address, now)
        if wait is None:
            self.throttle.attempt(user, address, now)
            self._broadcast({"t": "login", "kind": "attempt", "user": user, "address": address})
        return wait

    def failed(self, user: str, address: str) -> None:
        self.throttle.failed(user, address, self.clock.seconds())
        self._broadcast({"t": "login", "kind": "failed", "user": user, "address": address})

    def succeeded(self, user: str, address: str) -> None:
        self.throttle.succeeded(user, address, self.clock.seconds())
        self._broadcast({"t": "login", "kind": "ok", "user": user, "address": address})

    # -- links (the replicator) -------------------------------------------------

    def link_up(self, number: int, link) -> None:
        """Tracker ``number`` is linked: send it our live counters."""
        self.links[number] = link
        now = self.clock.seconds()
        counters = [list(key) + [strikes, round(age, 3)]
                    for key, strikes, age in self.throttle.entries(now, SNAPSHOT_LIMIT)]
        link.send({"t": "login", "kind": "snapshot", "counters": counters})

    def link_down(self, number: int) -> None:
        """The link to tracker ``number`` is gone."""
        self.links.pop(number, None)

    def receive(self, number: int, msg: dict) -> None:
        """A login budget message from tracker ``number``; raises ValueError if malformed."""
        now = self.clock.seconds()
        kind = msg.get("kind")
        if kind in _EVENTS:
            _EVENTS[kind](self.throttle, _text(msg.get("user")), _text(msg.get("address")), now)
        elif kind == "snapshot":
            counters = msg.get("counters")
            if not isinstance(counters, list) or len(counters) > SNAPSHOT_LIMIT:
                raise ValueError("bad login budget snapshot")
            parsed = []
            for c in counters:
                if not isinstance(c, list) or len(c) < 4:
                    raise ValueError("bad login budget counter")
                parsed.append((_key(c[:-2]), _number(c[-2], 1e9), _number(c[-1], 1e9)))
            for key, strikes, age in reversed(parsed):      # oldest first: recency order kept
                self.throttle.merge(key, strikes, now - age, now)
        else:
            raise ValueError("unknown login budget message")

    def _broadcast(self, msg: dict) -> None:
        for link in list(self.links.values()):
            link.send(msg)
