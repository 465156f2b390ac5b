"""The trackers' shared secret: authenticates the sync channel and seeds the ticket key.

By default it lives in ``.mbt-tracker-secret`` next to the TRACKER_INFO file:
the first tracker that needs it creates it (0600, 32 random bytes as hex), the
others read it, so several trackers started on one machine from the same info
file agree without any setup. Trackers on different machines need a copy of the
same file (``--secret-file``). The secret itself is never logged.
"""

from __future__ import annotations

import os
import secrets
import stat

from twisted.logger import Logger

from mbt.errors import ConfigError

log = Logger(namespace="mbt.tracker.secret")

SECRET_FILE_NAME = ".mbt-tracker-secret"
#: A secret shorter than this many bytes is refused (too easy to guess).
MIN_SECRET_BYTES = 16
_MAX_SECRET_BYTES = 4096


def default_secret_path(info_path: str) -> str:
    """``.mbt-tracker-secret`` in the directory of the tracker info file."""
    return os.path.join(os.path.dirname(os.path.abspath(info_path)), SECRET_FILE_NAME)


def _create(path: str) -> bool:
    """Create ``path`` with a fresh secret, atomically; False if it already exists.

    The secret is written to a private temporary file which is then hard-linked
    into place: ``link`` fails if the name exists (like O_CREAT|O_EXCL), and a
    reader never sees a half-written file.
    """
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, ".%s.%s.tmp" % (os.path.basename(path), secrets.token_hex(6)))
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def load_or_create_secret(path: str, create: bool = True) -> bytes:
    """Read the shared secret from ``path`` (creating it first if allowed and missing)."""
    path = os.path.abspath(os.path.expanduser(path))
    if create and not os.path.exists(path):
        try:
            if _create(path):
                log.info("created the trackers' shared secret file {path}", path=path)
        except OSError as e:
            raise ConfigError("cannot create the tracker secret file %s: %s (use --secret-file)"
                              % (path, e.strerror or e))
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_SECRET_BYTES + 1)
        mode = os.stat(path).st_mode
    except OSError as e:
        raise ConfigError("cannot read the tracker secret file %s: %s" % (path, e.strerror or e))
    secret = data.strip()
    if len(secret) < MIN_SECRET_BYTES or len(data) > _MAX_SECRET_BYTES:
        raise ConfigError("tracker secret file %s must hold %d to %d bytes"
                          % (path, MIN_SECRET_BYTES, _MAX_SECRET_BYTES))
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warn("tracker secret file {path} is readable by other users; chmod 600 it", path=path)
    return secret
