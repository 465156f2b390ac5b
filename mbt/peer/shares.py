"""What this peer shares and downloads, persisted in its state dir.

Two small JSON files, each rewritten atomically (temp file + rename, mode 0600):

* ``shares.json``: files this peer serves (uploaded or completely downloaded):
  group, name, path, manifest, and the file's size and mtime when hashed.
* ``downloads.json``: downloads not yet complete (and finished ones, for
  ``show_downloads`` until ``clear_downloads``), with the pieces verified so far.
* ``settings.json``: settings changed with ``set`` (``upload_rate``), so they
  hold after a restart; a command-line flag given at start wins.
"""

from __future__ import annotations

import enum
import json
import os
import stat
from dataclasses import asdict, dataclass, field, fields
from typing import Dict, Iterable, List, Optional, Tuple

from twisted.logger import Logger

from mbt.errors import MbtError
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


#: The JSON type each field of a stored entry must have (the dataclass annotations).
_FIELD_TYPES = {"str": str, "int": int, "dict": dict, "List[int]": list}


def _load_entries(path: str, cls) -> list:
    """The entries of one of our JSON files; whatever is malformed is skipped, never fatal.

    An entry must have exactly the fields of ``cls``, of the right types, and a
    valid manifest: a bad one would otherwise fail every later login or the
    peer's start.
    """
    data = _read_json(path, [])
    if not isinstance(data, list):
        log.error("cannot read {path}: not a JSON list; starting from empty", path=path)
        return []
    entries = []
    for item in data:
        try:
            entry = cls(**item)
            for f in fields(entry):
                value = getattr(entry, f.name)
                if isinstance(value, bool) or not isinstance(value, _FIELD_TYPES[f.type]):
                    raise TypeError("%s is not %s" % (f.name, f.type))
            if not all(type(i) is int for i in getattr(entry, "have", ())):
                raise TypeError("have is not a list of piece indices")
            Manifest.from_dict(entry.manifest)
        except (TypeError, MbtError) as e:
            log.error("ignoring a malformed entry in {path}: {err}", path=path, err=e)
            continue
        entries.append(entry)
    return entries


#: Every setting ``set`` may persist, and a check of its stored value.
_SETTINGS = {
    "upload_rate": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf"),
}


def _load_settings(path: str) -> dict:
    """The saved settings; an unknown or malformed one is skipped (logged), never fatal."""
    data = _read_json(path, {})
    if not isinstance(data, dict):
        log.error("cannot read {path}: not a JSON object; using defaults", path=path)
        return {}
    good = {}
    for name, value in data.items():
        check = _SETTINGS.get(name)
        if check is None or not check(value):
            log.error("ignoring setting {name!r} in {path}", name=name, path=path)
            continue
        good[name] = value
    return good


@dataclass
class Share:
    """A complete file this peer serves in a group."""

    group: str
    name: str
    path: str
    manifest: dict
    size: int
    mtime_ns: int
    user: str = ""             # whose share ("" in files from before users were recorded)
    file_id: List[int] = field(default_factory=list)   # [st_dev, st_ino] as hashed ([] in older files)

    @property
    def key(self) -> Key:
        return (self.group, self.name)

    def get_manifest(self) -> Manifest:
        """The manifest as an object."""
        return Manifest.from_dict(self.manifest)

    def record(self, st: os.stat_result) -> None:
        """Remember which file (and which version of it) was hashed."""
        self.size, self.mtime_ns, self.file_id = st.st_size, st.st_mtime_ns, [st.st_dev, st.st_ino]

    def differs_from(self, st: os.stat_result) -> Optional[str]:
        """None if ``st`` is the file as hashed, else how it differs.

        "replaced" means another file now stands at the path (a rename over
        it, or a symlink planted in its place): its content must be checked
        again before a byte of it is served.
        """
        if not stat.S_ISREG(st.st_mode):
            return "replaced"
        if st.st_size != self.size:
            return "size changed"
        if self.file_id and [st.st_dev, st.st_ino] != self.file_id:
            return "replaced"
        if st.st_mtime_ns != self.mtime_ns:
            return "modified"
        return None

    def changed_on_disk(self) -> Optional[str]:
        """None if the file is as hashed, else why not (missing, size changed, replaced, modified)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return "missing"
        return self.differs_from(st)


class DownloadState(str, enum.Enum):
    """Where a download stands. The value is the letter ``show_downloads``
    prints (``[D]``) and ``downloads.json`` keeps, so both stay as they were."""

    RUNNING = "D"       # running, or paused until the next login
    COMPLETE = "C"
    FAILED = "F"

    def __str__(self) -> str:
        return self.value


@dataclass
class DownloadRecord:
    """A download's durable progress."""

    group: str
    name: str
    dest: str
    manifest: dict
    have: List[int] = field(default_factory=list)
    status: str = DownloadState.RUNNING     # a DownloadState (stored as its letter)
    reason: str = ""
    user: str = ""              # who started it ("" in older files)

    def __post_init__(self) -> None:
        try:
            self.status = DownloadState(self.status)
        except ValueError:
            raise TypeError("status %r is not one of D, C, F" % (self.status,)) from None

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
        self._settings_path = os.path.join(state_dir, "settings.json")
        self.settings = _load_settings(self._settings_path)
        self.shares: Dict[Key, Share] = {
            s.key: s for s in _load_entries(self._shares_path, Share)}
        self.downloads: Dict[Key, DownloadRecord] = {
            r.key: r for r in _load_entries(self._downloads_path, DownloadRecord)}

    def put_setting(self, name: str, value) -> None:
        """Remember a setting (``set``) and save."""
        self.settings[name] = value
        _write_json_atomic(self._settings_path, self.settings)

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

    def remove_downloads(self, keys: Iterable[Key]) -> None:
        """Forget these download records and save (once, if any was known)."""
        gone = [key for key in keys if self.downloads.pop(key, None) is not None]
        if gone:
            self.save_downloads()

    def save_downloads(self) -> None:
        """Write downloads.json."""
        _write_json_atomic(self._downloads_path, [asdict(r) for r in self.downloads.values()])
