"""Piece geometry and file manifests (pure, plus a chunked file hasher).

A file is cut into 512 KiB pieces; the manifest holds the SHA-256 of every piece
and of the whole file. Everything here is independent of the network.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

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


def _is_hex_digest(value: object) -> bool:
    return (isinstance(value, str) and len(value) == HASH_HEX_LEN
            and all(c in "0123456789abcdef" for c in value))


@dataclass(frozen=True)
class Manifest:
    """What identifies a shared file: name, size, piece hashes and whole-file hash."""

    name: str
    size: int
    file_hash: str
    piece_hashes: Sequence[str] = field(default_factory=tuple)
    piece_size: int = PIECE_SIZE

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
              cancelled: Optional[Callable[[], bool]] = None) -> Manifest:
    """Hash ``path`` piece by piece (blocking: run it in a thread).

    ``progress(done_bytes, total_bytes)`` is called after every piece; it runs in
    the hashing thread, so it must be thread-safe (e.g. ``callFromThread``).
    Reads with a reused buffer, so memory stays at one piece whatever the size.
    """
    whole = hashlib.sha256()
    hashes = []
    # Two alternating buffers: while this thread hashes piece k, a second thread
    # feeds the previous piece to the whole-file hash. hashlib drops the GIL on
    # large buffers, so the two SHA-256 passes run on two cores (~2x faster).
    bufs = [bytearray(PIECE_SIZE), bytearray(PIECE_SIZE)]
    done = 0
    pending = None
    with ThreadPoolExecutor(max_workers=1) as pool, open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        turn = 0
        while True:
            buf = bufs[turn]
            view = memoryview(buf)
            n = f.readinto(buf)
            # A short read is only the end of the file; fill the piece completely.
            while n and n < PIECE_SIZE:
                more = f.readinto(view[n:])
                if not more:
                    break
                n += more
            if not n:
                break
            chunk = view[:n]
            if pending is not None:
                pending.result()            # whole-file hash stays in file order
            pending = pool.submit(whole.update, chunk)
            hashes.append(hashlib.sha256(chunk).hexdigest())
            done += n
            turn ^= 1
            if progress is not None:
                progress(done, size)
            if cancelled is not None and cancelled():
                raise InvalidArgument("hashing of %s cancelled" % path)
            if n < PIECE_SIZE:
                break
        if pending is not None:
            pending.result()
    if done != size:
        raise InvalidArgument("%s changed size while it was hashed" % path)
    return Manifest(name=name or os.path.basename(path), size=done, file_hash=whole.hexdigest(),
                    piece_hashes=tuple(hashes))
