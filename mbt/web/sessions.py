"""Browser sessions of the web page: an unguessable cookie and a CSRF token each.

Pure bookkeeping (the clock is passed in). A session becomes *signed in* when
its browser proves the peer's account (a successful ``login``, or the password
of the session the console opened); it stays so only during that same login of
the peer (see ``PeerNode.login_serial``), so a ``logout`` anywhere signs every
page out, and a later login signs none back in.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from typing import Optional

#: Sessions kept at once (oldest dropped first) and their idle lifetime (seconds).
MAX_SESSIONS = 256
IDLE_LIMIT = 12 * 3600.0


class Session:
    """One browser: its cookie token, CSRF token and the user it signed in as."""

    def __init__(self, token: str, csrf: str, now: float) -> None:
        self.token = token
        self.csrf = csrf
        self.user: Optional[str] = None
        self.login_serial = -1      # the peer's login this session signed in to
        self.last_seen = now

    def csrf_ok(self, presented: Optional[str]) -> bool:
        """Constant-time check of the token a state-changing request carries."""
        return bool(presented) and hmac.compare_digest(presented.encode("utf-8", "replace"),
                                                       self.csrf.encode("ascii"))


class SessionStore:
    """Every live browser session, bounded in number and idle time."""

    def __init__(self, max_sessions: int = MAX_SESSIONS, idle_limit: float = IDLE_LIMIT) -> None:
        self.max_sessions = max_sessions
        self.idle_limit = idle_limit
        self._sessions: "OrderedDict[str, Session]" = OrderedDict()

    def get(self, token: Optional[str], now: float) -> Optional[Session]:
        """The session of a cookie value, if it is known and not idle too long."""
        if not token:
            return None
        s = self._sessions.get(token)
        if s is None:
            return None
        if now - s.last_seen > self.idle_limit:
            del self._sessions[token]
            return None
        s.last_seen = now
        self._sessions.move_to_end(token)
        return s

    def create(self, now: float) -> Session:
        """A fresh anonymous session (the oldest is dropped beyond the cap)."""
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now)
        self._sessions[s.token] = s
        return s

    def renew(self, old: Session, now: float) -> Session:
        """Sign-in: new cookie and CSRF tokens (no fixation), the old ones forgotten."""
        self._sessions.pop(old.token, None)
        return self.create(now)

    def __len__(self) -> int:
        return len(self._sessions)
