"""State directories: where trackers and peers keep their files, and the lock on one.

Used by both programs (tracker and peer), so it belongs to neither.
"""

from __future__ import annotations

import fcntl
import os
from typing import Optional

from mbt.errors import ConfigError


def default_state_dir(kind: str) -> str:
    """A per-user data directory, e.g. ``~/.local/share/mbt/tracker-1``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "mbt", kind)


def ensure_state_dir(path: str) -> str:
    """Create the state dir (mode 0700) if needed; raise ConfigError if unusable."""
    path = os.path.abspath(os.path.expanduser(path))
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as e:
        raise ConfigError("cannot use state dir %s: %s" % (path, e.strerror or e))
    if not os.access(path, os.W_OK):
        raise ConfigError("state dir %s is not writable" % path)
    return path


class StateDirLock:
    """An exclusive lock on a state dir, so two processes never share one."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "lock")
        self._fd: Optional[int] = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise ConfigError("state dir %s is in use by another mbt process" % state_dir)
        os.ftruncate(self._fd, 0)
        os.write(self._fd, b"%d\n" % os.getpid())

    def release(self) -> None:
        """Release the lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
