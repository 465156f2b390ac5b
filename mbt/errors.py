"""Typed errors.

Every failure a user or a remote party can cause is an :class:`MbtError` with a
stable machine ``code`` (sent over the tracker protocol) and a human
``message`` (printed by the console as one ``error: <message>`` line).
"""

from __future__ import annotations

import re
from typing import Dict, Optional


class MbtError(Exception):
    """A failure with a stable code and a one-line human message.

    Every code mbt uses has its own subclass below (the table of
    ``docs/protocol.rst`` 2.4 plus the peer's local ones), so callers test a
    failure with ``failure.check(NotMember)`` or ``isinstance``, never by
    comparing code strings. ``MbtError(message, code)`` with a known code
    builds that code's class: an error rebuilt from a tracker's reply (or
    made by a test) is as typed as one raised here. An unknown code stays a
    plain :class:`MbtError` carrying it.
    """

    code = "error"
    #: The message when none is given (subclasses with a standard wording).
    default_message = ""
    _by_code: Dict[str, type] = {}

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__ and cls.__module__ == __name__:     # the table is this module's
            MbtError._by_code.setdefault(cls.code, cls)

    def __new__(cls, message: Optional[str] = None, code: Optional[str] = None):
        if cls is MbtError and code is not None:
            cls = error_class(code)
        return super().__new__(cls)

    def __init__(self, message: Optional[str] = None, code: Optional[str] = None):
        if message is None:
            message = self.default_message
        super().__init__(message)
        self.message = message.replace("\n", " ").strip()
        if code is not None and code != type(self).code:
            self.code = code

    def __str__(self) -> str:
        return self.message

    def console_line(self) -> str:
        """The single console line for this error."""
        return "error: " + self.message

    def to_wire(self) -> dict:
        """The ``error`` object of a reply: ``{"code": ..., "message": ...}``."""
        return {"code": self.code, "message": self.message}


def error_class(code: str) -> type:
    """The :class:`MbtError` subclass of ``code`` (:class:`MbtError` itself if unknown)."""
    return MbtError._by_code.get(code, MbtError)


def error_from_wire(err: object) -> MbtError:
    """The typed error a reply's ``error`` object stands for (a malformed one: a plain tracker error)."""
    if not isinstance(err, dict):
        err = {}
    return MbtError(str(err.get("message", "tracker error")), str(err.get("code", "error")))


# -- local to one program ---------------------------------------------------------

class UsageError(MbtError):
    """A command was called with the wrong arguments."""

    code = "usage"


class ConfigError(MbtError):
    """A configuration file or command-line option is unusable."""

    code = "config"


class TrackerUnavailable(MbtError):
    """No tracker answered (none reachable, connection lost, no reply in time); never on the wire."""

    code = "tracker_unavailable"


class BadTicket(MbtError):
    """A serving peer refuses a download ticket (its message travels as ``ERROR``)."""

    code = "bad_ticket"


class AlreadyDownloading(MbtError):
    """``download_file`` of a file this peer is downloading already."""

    code = "already_downloading"


class AlreadyShared(MbtError):
    """``download_file`` of a file this peer shares itself."""

    code = "already_shared"


class NoPeers(MbtError):
    """``download_file`` when nobody shares the file right now."""

    code = "no_peers"


# -- framing of the tracker channel (``id`` null) --------------------------------

class BadJson(MbtError):
    """A line that is not a JSON document."""

    code = "bad_json"


class BadRequest(MbtError):
    """A line that is not a JSON object, or has no valid ``id``."""

    code = "bad_request"


class LineTooLong(MbtError):
    """A line over the channel's limit."""

    code = "line_too_long"


class LineTimeout(MbtError):
    """A long line that did not arrive in time."""

    code = "line_timeout"


class Busy(MbtError):
    """Too many requests in flight, or no room for a long line."""

    code = "busy"


# -- tracker replies (docs/protocol.rst 2.4) --------------------------------------

class UnknownOp(MbtError):
    """``op`` missing or not an operation."""

    code = "unknown_op"


class NotLoggedIn(MbtError):
    """The operation needs a session."""

    code = "not_logged_in"
    default_message = "not logged in; use login <user_id> <passwd>"


class InvalidArgument(MbtError):
    """An argument has the wrong form (bad id, bad path, ...)."""

    code = "invalid_argument"


class Internal(MbtError):
    """Unexpected failure inside the tracker (details stay in its log)."""

    code = "internal"
    default_message = "internal tracker error"


class UserExists(MbtError):
    """An account with this user id already exists."""

    code = "user_exists"


class BadCredentials(MbtError):
    """Unknown user id or wrong password (deliberately one code and message)."""

    code = "bad_credentials"


class RateLimited(MbtError):
    """Too many login attempts; the message says how long to wait."""

    code = "rate_limited"


class AlreadyLoggedIn(MbtError):
    """This connection (or peer) already has a session; logout first."""

    code = "already_logged_in"


class GroupExists(MbtError):
    """A group with this id already exists."""

    code = "group_exists"


class NoSuchGroup(MbtError):
    """No group with this id."""

    code = "no_such_group"


class AlreadyMember(MbtError):
    """The caller is already a member of the group."""

    code = "already_member"


class AlreadyRequested(MbtError):
    """The caller already has a pending join request for the group."""

    code = "already_requested"


class NotMember(MbtError):
    """The caller is not a member of the group."""

    code = "not_member"


class NotOwner(MbtError):
    """Only the group's owner may do this."""

    code = "not_owner"


class NoSuchRequest(MbtError):
    """The named user has no pending request to join the group."""

    code = "no_such_request"


class FileConflict(MbtError):
    """The group already has a different file of this name."""

    code = "file_conflict"


class NotSharing(MbtError):
    """The caller does not share that file (tracker); this peer does not serve it (peer wire)."""

    code = "not_sharing"


class NoSuchFile(MbtError):
    """No such file in the group."""

    code = "no_such_file"


class NoSuchUser(MbtError):
    """The acting user does not exist (accounts are never deleted)."""

    code = "no_such_user"


class NoSuchPeer(MbtError):
    """``connect_peer``: the named peer is logged in at no tracker of the fleet (or its tracker is out of reach)."""

    code = "no_such_peer"


class Unreachable(MbtError):
    """``connect_peer``: neither side accepts connections and there is no relay."""

    code = "unreachable"


class CatchingUp(MbtError):
    """This tracker cannot answer from current state now; retry or use another tracker."""

    code = "catching_up"


class DatabaseUnavailable(MbtError):
    """PostgreSQL mode: the database cannot be reached (or failed mid-operation); the request failed whole."""

    code = "db_unavailable"
    default_message = "tracker database unavailable; retrying"


class Unconfirmed(MbtError):
    """A forwarded write was not confirmed in time; it may or may not have been applied."""

    code = "unconfirmed"


class NotLeader(MbtError):
    """Sync channel only: a proposal reached a tracker that does not lead."""

    code = "not_leader"
    default_message = "not the leader"


#: Ids of users and groups: 1-64 characters of letters, digits, ``.``, ``_``, ``-``,
#: not starting with ``.`` (so an id is never ``.`` or ``..`` when used in a path).
ID_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")

#: Shared file names: no path separators, no NUL, no control characters, not ``.``/``..``,
#: at most 255 bytes of UTF-8 (the usual file-system limit).
_BAD_NAME_CHARS = re.compile(r"[/\\\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_id(kind: str, value: object) -> str:
    """Return ``value`` if it is a valid user or group id, else raise InvalidArgument."""
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        shown = value if isinstance(value, str) and len(value) <= 80 else "<%d chars>" % len(str(value))
        raise InvalidArgument(
            "invalid %s %r: use 1-64 characters of A-Z a-z 0-9 . _ - (not starting with '.')"
            % (kind, shown))
    return value


def _utf8_len_ok(value: str) -> bool:
    try:
        return len(value.encode("utf-8")) <= 255     # strict: no lone surrogates
    except UnicodeEncodeError:
        return False


def check_file_name(value: object) -> str:
    """Return ``value`` if it is a safe base file name, else raise InvalidArgument."""
    if (not isinstance(value, str) or not value or value in (".", "..")
            or _BAD_NAME_CHARS.search(value) or not _utf8_len_ok(value)
            or value != value.strip()):
        raise InvalidArgument("invalid file name %r" % (value if isinstance(value, str) else type(value).__name__))
    return value
