"""Piece geometry and file manifests (pure, plus a chunked file hasher).

A file is cut into 512 KiB pieces; the manifest holds the SHA-256 of every
piece and the file's identity, ``file_hash``. Manifests made by
:func:`hash_file` are *rooted*: ``file_hash`` is :func:`pieces_root`, a
SHA-256 over the file's size and its piece hashes, so a file whose every piece
matches its piece hash is the file ``file_hash`` names, and no byte needs
hashing twice. Manifests from before (whole-file SHA-256 in ``file_hash``)
stay valid; :attr:`Manifest.rooted` tells the two apart (docs/protocol.rst,
2.7). Everything here is independent of the network.

``python -m mbt.manifest FILE`` prints a file's ``file_hash`` (and its plain
SHA-256), for checking by hand.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterable, Optional, Sequence

from mbt.errors import InvalidArgument, check_file_name

PIECE_SIZE = 512 * 1024
#: Largest file we accept in a manifest (1 TiB): bounds piece lists from the network.
MAX_FILE_SIZE = 1 << 40
HASH_HEX_LEN = 64


def piece_count(size: int, piece_size: int = PIECE_SIZE) -> int:
    """Number of pieces of a file of ``size`` bytes (0 for an empty file)."""
    return (size + piece_size - 1) // piece_size


def piece_length(index: int, size: int, piece_size: int = PIECE_SIZE) -> int:
    """Length in bytes of piece ``index``."""
    n = piece_count(size, piece_size)
    if not 0 <= index < n:
        raise IndexError(index)
    if index == n - 1:
        return size - piece_size * (n - 1)
    return piece_size


#: Domain separation of :func:`pieces_root` (a file's bytes never start a root's input by accident).
ROOT_TAG = b"mbt pieces-v1\n"


def pieces_root(size: int, piece_digests: Iterable[bytes]) -> str:
    """The identity of a file from its size and its pieces' raw SHA-256 digests.

    ``SHA-256(b"mbt pieces-v1\\n" + ASCII decimal size + b"\\n" + digest_0 + digest_1 + ...)``
    with the 32-byte digests in piece order, as 64 lowercase hex digits.
    """
    h = hashlib.sha256(ROOT_TAG + b"%d\n" % size)
    for d in piece_digests:
        h.update(d)
    return h.hexdigest()


_HEX_DIGEST = re.compile("[0-9a-f]{%d}" % HASH_HEX_LEN)


def _is_hex_digest(value: object) -> bool:
    # A compiled pattern, not a loop over characters: manifests are validated
    # by the thousand when a tracker restores a snapshot.
    return isinstance(value, str) and _HEX_DIGEST.fullmatch(value) is not None


@dataclass(frozen=True)
class Manifest:
    """What identifies a shared file: name, size, piece hashes and whole-file hash."""

    name: str
    size: int
    file_hash: str
    piece_hashes: Sequence[str] = field(default_factory=tuple)
    piece_size: int = PIECE_SIZE

    @cached_property
    def rooted(self) -> bool:
        """Is ``file_hash`` the root of the piece hashes (so verified pieces prove the file)?

        False for manifests from before roots: their ``file_hash`` is the
        whole file's SHA-256, which a download must still compute.
        """
        return pieces_root(self.size, (bytes.fromhex(h) for h in self.piece_hashes)) == self.file_hash

    @property
    def pieces(self) -> int:
        """Number of pieces."""
        return len(self.piece_hashes)

    def piece_length(self, index: int) -> int:
        """Length of piece ``index``."""
        return piece_length(index, self.size, self.piece_size)

    def to_dict(self) -> dict:
        """A JSON-ready dict (the tracker protocol's manifest object)."""
        return {"name": self.name, "size": self.size, "piece_size": self.piece_size,
                "file_hash": self.file_hash, "piece_hashes": list(self.piece_hashes)}

    @classmethod
    def from_dict(cls, data: object) -> "Manifest":
        """Validate and build a manifest from untrusted data; raise InvalidArgument."""
        if not isinstance(data, dict):
            raise InvalidArgument("manifest must be an object")
        name = check_file_name(data.get("name"))
        size = data.get("size")
        psize = data.get("piece_size", PIECE_SIZE)
        fh = data.get("file_hash")
        hashes = data.get("piece_hashes")
        if type(size) is not int or not 0 <= size <= MAX_FILE_SIZE:
            raise InvalidArgument("manifest size must be an integer 0..%d" % MAX_FILE_SIZE)
        if type(psize) is not int or psize != PIECE_SIZE:
            raise InvalidArgument("manifest piece_size must be %d" % PIECE_SIZE)
        if not _is_hex_digest(fh):
            raise InvalidArgument("manifest file_hash must be 64 lowercase hex digits")
        if not isinstance(hashes, list) or len(hashes) != piece_count(size):
            raise InvalidArgument("manifest must list %d piece hashes" % piece_count(size))
        if not all(_is_hex_digest(h) for h in hashes):
            raise InvalidArgument("manifest piece hashes must be 64 lowercase hex digits")
        return cls(name=name, size=size, file_hash=fh, piece_hashes=tuple(hashes), piece_size=psize)


def hash_file(path: str, name: Optional[str] = None,
              progress: Optional[Callable[[int, int], None]] = None,
              cancelled: Optional[Callable[[], bool]] = None, whole_file: bool = False) -> Manifest:
    """Hash ``path`` piece by piece into a rooted manifest (blocking: run it in a thread).

    Each byte is hashed once: the pieces are hashed by two pool threads
    (hashlib drops the GIL, so both cores work) while this thread reads ahead
    into a small ring of reused buffers, so memory stays at a few pieces
    whatever the size. ``whole_file=True`` makes an old-style manifest instead
    (``file_hash`` = SHA-256 of the whole file; needed only to re-check a share
    announced with one). ``progress(done_bytes, total_bytes)`` is called after
    every piece read; it runs in the hashing thread, so it must be thread-safe
    (e.g. ``callFromThread``).
    """
    whole = hashlib.sha256() if whole_file else None
    digests = []
    ring = 4
    bufs = [bytearray(PIECE_SIZE) for _ in range(ring)]
    pending: deque = deque()        # futures of the pieces in flight, in order
    done = 0
    with ThreadPoolExecutor(max_workers=2) as pool, open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        turn = 0
        while True:
            if len(pending) == ring:        # bufs[turn] is free once its piece is hashed
                digests.append(pending.popleft().result())
            view = memoryview(bufs[turn])
            n = f.readinto(view)
            # A short read is only the end of the file; fill the piece completely.
            while n and n < PIECE_SIZE:
                more = f.readinto(view[n:])
                if not more:
                    break
                n += more
            if not n:
                break
            chunk = view[:n]
            if whole is not None:
                whole.update(chunk)
            pending.append(pool.submit(_digest, chunk))
            done += n
            turn = (turn + 1) % ring
            if progress is not None:
                progress(done, size)
            if cancelled is not None and cancelled():
                raise InvalidArgument("hashing of %s cancelled" % path)
            if n < PIECE_SIZE:
                break
        while pending:
            digests.append(pending.popleft().result())
    if done != size:
        raise InvalidArgument("%s changed size while it was hashed" % path)
    file_hash = whole.hexdigest() if whole is not None else pieces_root(done, digests)
    return Manifest(name=name or os.path.basename(path), size=done, file_hash=file_hash,
                    piece_hashes=tuple(d.hex() for d in digests))


def _digest(data) -> bytes:
    return hashlib.sha256(data).digest()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m mbt.manifest FILE...``: each file's mbt ``file_hash`` and plain SHA-256."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m mbt.manifest FILE...\n"
              "prints, per file: its mbt file_hash (the root of its 512 KiB piece hashes, as list_files\n"
              "and the manifest show it) and its plain SHA-256 (as sha256sum prints it)")
        return 0 if args else 2
    code = 0
    for path in args:
        try:
            m = hash_file(path)
            with open(path, "rb") as f:
                sha = hashlib.file_digest(f, "sha256").hexdigest()
        except (OSError, InvalidArgument) as e:
            print("error: %s: %s" % (path, getattr(e, "strerror", None) or e), file=sys.stderr)
            code = 1
            continue
        print("%s  file_hash  %s" % (m.file_hash, path))
        print("%s  sha256     %s" % (sha, path))
    return code


if __name__ == "__main__":
    sys.exit(main())
