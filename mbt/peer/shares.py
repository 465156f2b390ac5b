"""What this peer shares and downloads, persisted in its state dir.

Two small JSON files, each rewritten atomically (temp file + rename, mode 0600):

* ``shares.json``: files this peer serves (uploaded or completely downloaded):
  group, name, path, manifest, and the file's size and mtime when hashed.
* ``downloads.json``: downloads not yet complete (and finished ones, for
  ``show_downloads``), with the pieces verified so far.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

from twisted.logger import Logger

from mbt.manifest import Manifest

log = Logger(namespace="mbt.peer.shares")

Key = Tuple[str, str]   # (group, file name)


def _write_json_atomic(path: str, data) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: str, default):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as e:
        log.error("cannot read {path}: {err}; starting from empty", path=path, err=e)
        return default


@dataclass
class Share:
    """A complete file this peer serves in a group."""

    group: str
    name: str
    path: str
    manifest: dict
    size: int
    mtime_ns: int

    @property
    def key(self) -> Key:
        return (self.group, self.name)

    def get_manifest(self) -> Manifest:
        """The manifest as an object."""
        return Manifest.from_dict(self.manifest)

    def changed_on_disk(self) -> Optional[str]:
        """None if the file is as hashed, else why not (missing, size or mtime changed)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return "missing"
        if st.st_size != self.size:
            return "size changed"
        if st.st_mtime_ns != self.mtime_ns:
            return "modified"
        return None


@dataclass
class DownloadRecord:
    """A download's durable progress."""

    group: str
    name: str
    dest: str
    manifest: dict
    have: List[int] = field(default_factory=list)
    status: str = "D"           # D running, C complete, F failed
    reason: str = ""

    @property
    def key(self) -> Key:
        return (self.group, self.name)

    @property
    def part_path(self) -> str:
        return self.dest + ".part"


class ShareStore:
    """The persisted share list and download list of one peer."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self._shares_path = os.path.join(state_dir, "shares.json")
        self._downloads_path = os.path.join(state_dir, "downloads.json")
        self.shares: Dict[Key, Share] = {}
        for item in _read_json(self._shares_path, []):
            try:
                s = Share(**item)
                self.shares[s.key] = s
            except TypeError:
                log.error("ignoring a malformed share entry in {path}", path=self._shares_path)
        self.downloads: Dict[Key, DownloadRecord] = {}
        for item in _read_json(self._downloads_path, []):
            try:
                r = DownloadRecord(**item)
                self.downloads[r.key] = r
            except TypeError:
                log.error("ignoring a malformed download entry in {path}", path=self._downloads_path)

    def put_share(self, share: Share) -> None:
        """Add or replace a share and save."""
        self.shares[share.key] = share
        self.save_shares()

    def remove_share(self, key: Key) -> Optional[Share]:
        """Remove a share (if present) and save."""
        s = self.shares.pop(key, None)
        if s is not None:
            self.save_shares()
        return s

    def save_shares(self) -> None:
        """Write shares.json."""
        _write_json_atomic(self._shares_path, [asdict(s) for s in self.shares.values()])

    def put_download(self, record: DownloadRecord) -> None:
        """Add or replace a download record and save."""
        self.downloads[record.key] = record
        self.save_downloads()

    def remove_download(self, key: Key) -> None:
        """Forget a download record and save."""
        if self.downloads.pop(key, None) is not None:
            self.save_downloads()

    def save_downloads(self) -> None:
        """Write downloads.json."""
        _write_json_atomic(self._downloads_path, [asdict(r) for r in self.downloads.values()])
