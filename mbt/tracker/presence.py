"""Presence shared between trackers: who is online through which tracker, announcing what.

Presence is ephemeral and owned by the tracker a peer is connected to. That
tracker tells every linked tracker when a session opens or closes and when it
announces a file; when two trackers (re)link they exchange full snapshots. A
tracker that loses its link to another keeps that tracker's sessions for
``expiry`` seconds (a quick reconnect replaces them with a fresh snapshot),
then forgets them: peers connected through a dead tracker stop being listed
within that bound, until they re-announce through another tracker.

Two more kinds serve peers that cannot be dialled (``connect_peer``): a
tracker tells the others whether its session's address accepted its probe
(``reach``), and hands the tracker holding a seeder's session the ``dial``
push a downloader on another tracker asked for (``dial``).

Mirrored sessions live in the same :class:`~mbt.tracker.state.TrackerState` as
local ones (with ``origin`` set), so ``get_peers`` and ``list_files`` merge
both and dedupe by peer address.
"""

from __future__ import annotations

from typing import Callable, Dict

from twisted.logger import Logger

from mbt.errors import NoSuchPeer
from mbt.tracker.state import Session, TrackerState
from mbt.timers import cancel_pending

log = Logger(namespace="mbt.tracker.presence")

#: Seconds a dead link's sessions stay listed (a link that comes back sooner loses nothing).
PRESENCE_EXPIRY = 2.0


def _str(value: object) -> str:
    if not isinstance(value, str) or len(value) > 1024:
        raise ValueError("bad presence field")
    return value


def _shares(value: object) -> list:
    if not isinstance(value, list):
        raise ValueError("bad presence shares")
    out = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2):
            raise ValueError("bad presence share")
        out.append((_str(item[0]), _str(item[1])))
    return out


class PresenceGossip:
    """Broadcasts this tracker's session changes and mirrors the other trackers' sessions."""

    def __init__(self, state: TrackerState, clock, expiry: float = PRESENCE_EXPIRY) -> None:
        self.state = state
        self.clock = clock
        self.expiry = expiry
        self.links: Dict[int, object] = {}
        #: ``reachable(session_id)``: what this tracker's probe found (set by the core).
        self.reachable: Callable[[str], object] = lambda session_id: None
        self._expiry_timers: Dict[int, object] = {}
        #: ``on_dial(session_id, push)``: another tracker relays a ``dial`` push
        #: for one of our sessions (set by the tracker core).
        self.on_dial: Callable[[str, dict], None] = lambda session_id, push: None

    # -- changes on this tracker (called by TrackerCore) -------------------------

    def opened(self, session: Session) -> None:
        """A client logged in here."""
        self._broadcast({"t": "presence", "kind": "open", "sid": session.session_id,
                         "user": session.user, "address": session.address})

    def closed(self, session_id: str) -> None:
        """A session here ended (logout or connection lost)."""
        self._broadcast({"t": "presence", "kind": "close", "sid": session_id})

    def announced(self, session_id: str, group: str, name: str) -> None:
        """A session here announced that its peer serves a file."""
        session = self.state.sessions.get(session_id)
        if session is not None and (group, name) in session.shares:
            self._broadcast({"t": "presence", "kind": "announce", "sid": session_id,
                             "group": group, "name": name})

    def reach(self, session_id: str, reachable: bool) -> None:
        """This tracker probed a session's address: tell the others what it found."""
        self._broadcast({"t": "presence", "kind": "reach", "sid": session_id, "ok": bool(reachable)})

    def dial(self, origin: int, session_id: str, push: dict) -> None:
        """Have tracker ``origin`` send ``push`` to its session ``session_id``.

        Raises NoSuchPeer when the link to that tracker is down.
        """
        link = self.links.get(origin)
        if link is None:
            raise NoSuchPeer("the tracker that peer is connected to is not reachable now")
        link.send({"t": "presence", "kind": "dial", "sid": session_id, "push": push})

    def _broadcast(self, msg: dict) -> None:
        for link in list(self.links.values()):
            link.send(msg)

    # -- links (called by the replicator) --------------------------------------

    def link_up(self, number: int, link) -> None:
        """A link to tracker ``number`` is up: send it everything we hold."""
        self.links[number] = link
        cancel_pending(self._expiry_timers.pop(number, None))
        sessions = [{"sid": s.session_id, "user": s.user, "address": s.address,
                     "shares": sorted([g, n] for g, n in s.shares), "reachable": self.reachable(s.session_id)}
                    for s in sorted(self.state.local_sessions(), key=lambda s: s.session_id)]
        link.send({"t": "presence", "kind": "snapshot", "sessions": sessions})

    def link_down(self, number: int) -> None:
        """The link to tracker ``number`` is gone: forget its sessions after ``expiry``."""
        self.links.pop(number, None)
        cancel_pending(self._expiry_timers.pop(number, None))
        self._expiry_timers[number] = self.clock.callLater(self.expiry, self._expire, number)

    def _expire(self, number: int) -> None:
        self._expiry_timers.pop(number, None)
        if number in self.links:
            return
        dropped = self.state.drop_remote_sessions(number)
        if dropped:
            log.info("forgot {n} session(s) of unreachable tracker {t}", n=dropped, t=number)

    def receive(self, number: int, msg: dict) -> None:
        """A presence message from tracker ``number``; raises ValueError if malformed."""
        kind = msg.get("kind")
        if kind == "snapshot":
            sessions = msg.get("sessions")
            if not isinstance(sessions, list):
                raise ValueError("bad presence snapshot")
            parsed = [(_str(s.get("sid")), _str(s.get("user")), _str(s.get("address")),
                       _shares(s.get("shares", [])), s.get("reachable"))
                      for s in sessions if isinstance(s, dict)]
            self.state.drop_remote_sessions(number)
            for sid, user, address, shares, reachable in parsed:
                self.state.put_remote_session(number, sid, user, address, shares)
                if isinstance(reachable, bool):
                    self.state.remote_reachable(number, sid, reachable)
        elif kind == "open":
            self.state.put_remote_session(number, _str(msg.get("sid")), _str(msg.get("user")),
                                          _str(msg.get("address")))
        elif kind == "close":
            self.state.drop_remote_session(number, _str(msg.get("sid")))
        elif kind == "announce":
            self.state.remote_announce(number, _str(msg.get("sid")), _str(msg.get("group")),
                                       _str(msg.get("name")), True)
        elif kind == "reach":
            self.state.remote_reachable(number, _str(msg.get("sid")), msg.get("ok") is True)
        elif kind == "dial":
            push = msg.get("push")
            if not isinstance(push, dict) or push.get("push") != "dial":
                raise ValueError("bad dial relay")
            self.on_dial(_str(msg.get("sid")), push)
        else:
            raise ValueError("unknown presence message")

    def stop(self) -> None:
        """Cancel pending expiries (shutdown)."""
        for timer in self._expiry_timers.values():
            cancel_pending(timer)
        self._expiry_timers.clear()
