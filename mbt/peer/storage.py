"""Piece storage on disk: reading blocks to serve, verified writes into ``.part`` files.

Everything here is blocking file I/O on small, bounded buffers (at most one
piece). Reads of one block from the page cache take microseconds and run on the
reactor thread; hashing plus writing a whole piece runs in a worker thread
(``deferToThread``), where hashlib and ``os.pwrite`` release the GIL.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterable, List, Optional, Set

from mbt.manifest import Manifest


def bitfield_hex(have: Iterable[int], count: int) -> str:
    """Encode a set of piece indices as hex, most significant bit = piece 0."""
    bits = bytearray((count + 7) // 8)
    for i in have:
        bits[i >> 3] |= 0x80 >> (i & 7)
    return bits.hex()


def parse_bitfield(text: str, count: int) -> Set[int]:
    """Decode :func:`bitfield_hex`; raise ValueError on a wrong length or stray bits."""
    raw = bytes.fromhex(text)
    if len(raw) != (count + 7) // 8:
        raise ValueError("bitfield has %d bytes, expected %d" % (len(raw), (count + 7) // 8))
    have = set()
    for byte_index, byte in enumerate(raw):
        if not byte:
            continue
        for bit in range(8):
            if byte & (0x80 >> bit):
                i = byte_index * 8 + bit
                if i >= count:
                    raise ValueError("bitfield sets bits past the last piece")
                have.add(i)
    return have


class PieceFile:
    """One file on disk seen as pieces: the complete shared file or a ``.part`` file."""

    def __init__(self, path: str, manifest: Manifest, writable: bool = False) -> None:
        self.path = path
        self.manifest = manifest
        if writable:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            if os.fstat(fd).st_size != manifest.size:
                os.ftruncate(fd, manifest.size)     # sparse: no data written yet
        else:
            fd = os.open(path, os.O_RDONLY)
        self.fd: Optional[int] = fd

    def read(self, index: int, offset: int, length: int) -> bytes:
        """Read ``length`` bytes of piece ``index`` at ``offset`` (caller validated bounds)."""
        pos = index * self.manifest.piece_size + offset
        data = os.pread(self.fd, length, pos)
        if len(data) != length:
            raise IOError("short read from %s (file changed on disk?)" % self.path)
        return data

    def piece_ok(self, index: int, data) -> bool:
        """Does ``data`` hash to piece ``index``'s SHA-256?"""
        return hashlib.sha256(data).hexdigest() == self.manifest.piece_hashes[index]

    def verify_and_write(self, index: int, data) -> bool:
        """Check piece ``index`` and, if good, write it at its place. Runs in a thread."""
        if not self.piece_ok(index, data):
            return False
        pos = index * self.manifest.piece_size
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, pos)
            view = view[n:]
            pos += n
        return True

    def verify_existing(self, candidates: Iterable[int]) -> List[int]:
        """Re-hash pieces already on disk (resume); return those that are good. Thread."""
        good = []
        for i in candidates:
            if not 0 <= i < self.manifest.pieces:
                continue
            length = self.manifest.piece_length(i)
            data = os.pread(self.fd, length, i * self.manifest.piece_size)
            if len(data) == length and self.piece_ok(i, data):
                good.append(i)
        return good

    def file_hash(self) -> str:
        """SHA-256 of the whole file as it is on disk (thread: reads everything).

        Past ``manifest.size`` too (to the end, or a little beyond the size): a
        file that grew since it was opened must not pass as the manifest's file.
        """
        h = hashlib.sha256()
        buf = bytearray(1 << 20)
        pos = 0
        while pos <= self.manifest.size:
            n = os.preadv(self.fd, [buf], pos)
            if n <= 0:
                break
            h.update(memoryview(buf)[:n])
            pos += n
        return h.hexdigest()

    def close(self) -> None:
        """Close the file descriptor."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
