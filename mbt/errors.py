"""Typed errors.

Every failure a user or a remote party can cause is an :class:`MbtError` with a
stable machine ``code`` (sent over the tracker protocol) and a human
``message`` (printed by the console as one ``error: <message>`` line).
"""

from __future__ import annotations

import re


class MbtError(Exception):
    """A failure with a stable code and a one-line human message."""

    code = "error"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.message = message.replace("\n", " ").strip()
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message

    def console_line(self) -> str:
        """The single console line for this error."""
        return "error: " + self.message


class UsageError(MbtError):
    """A command was called with the wrong arguments."""

    code = "usage"


class InvalidArgument(MbtError):
    """An argument has the wrong form (bad id, bad path, ...)."""

    code = "invalid_argument"


class ConfigError(MbtError):
    """A configuration file or command-line option is unusable."""

    code = "config"


class NotLoggedIn(MbtError):
    code = "not_logged_in"

    def __init__(self, message: str = "not logged in; use login <user_id> <passwd>"):
        super().__init__(message)


class TrackerUnavailable(MbtError):
    code = "tracker_unavailable"


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
