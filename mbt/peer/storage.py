"""Piece storage on disk: reading blocks to serve, verified writes into ``.part`` files.

Everything here is blocking file I/O on small, bounded buffers (at most one
piece). Reads of one block from the page cache take microseconds and run on the
reactor thread; hashing plus writing a whole piece runs in a worker thread
(the node's thread pool), where hashlib and ``os.pwrite`` release the GIL.
Pieces a download wrote with ``O_DIRECT`` are not in the page cache: serving
one on reads it from the disk first, as serving a cold shared file always did.
:class:`WholeFileHash` hashes a download's whole file as its pieces land.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import stat
import threading
from typing import Iterable, List, Optional, Set

from mbt.manifest import Manifest, pieces_root

#: Offsets and lengths of direct (``O_DIRECT``) writes are multiples of this
#: (4 KiB covers 512-byte and 4 KiB logical blocks alike).
DIRECT_ALIGN = 4096


def _open_direct(fd: int) -> Optional[int]:
    """A second descriptor of the file open as ``fd``, for ``O_DIRECT`` writes; None where there is none.

    Reopened through ``/proc/self/fd`` (the open file itself, never its path
    again) and checked to be the same inode. File systems without direct I/O
    (tmpfs, some FUSE) refuse the open, and the caller keeps buffered writes.
    """
    if not hasattr(os, "O_DIRECT"):
        return None
    try:
        dfd = os.open("/proc/self/fd/%d" % fd, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return None
    here, there = os.fstat(fd), os.fstat(dfd)
    if (here.st_dev, here.st_ino) != (there.st_dev, there.st_ino):
        os.close(dfd)
        return None
    return dfd


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


#: Mode of a ``.part`` file while it is incomplete: owner only. Its bytes are
#: unverified and belong to a group others on this machine need not see; the
#: finished file gets the mode any new file of the user gets (0666 & ~umask).
PART_MODE = 0o600


class UnsafePartFile(OSError):
    """The ``.part`` path is not a plain file of ours (a symlink, a hard link, another owner's...)."""


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` would race with threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)      # no /proc: the brief change is to a stricter mask only
    os.umask(mask)
    return mask


def _open_part(path: str) -> int:
    """Open (or create, exclusively) a ``.part`` file without following a symlink; check it is ours."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK     # NONBLOCK: a FIFO cannot stall us
    try:
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, PART_MODE)
    except OSError as e:
        if os.path.islink(path):
            raise UnsafePartFile(e.errno, "%s: it is a symbolic link (not followed)" % path)
        raise
    try:
        st = os.fstat(fd)
        why = None
        if not stat.S_ISREG(st.st_mode):
            why = "is not a regular file"
        elif st.st_uid != os.geteuid():
            why = "belongs to another user"
        elif st.st_nlink != 1:
            why = "has other hard links"
        if why is not None:
            raise UnsafePartFile(0, "%s: it %s" % (path, why))
        if stat.S_IMODE(st.st_mode) != PART_MODE:
            os.fchmod(fd, PART_MODE)        # e.g. left 0644 by an older mbt
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


class PieceFile:
    """One file on disk seen as pieces: the complete shared file or a ``.part`` file.

    A writable (``.part``) file is opened with ``O_NOFOLLOW`` (created with
    ``O_EXCL``, mode :data:`PART_MODE`) and must be a regular file of ours with
    no other hard link, else :class:`UnsafePartFile`. :meth:`is_at` tells
    whether its path still names the opened file; :meth:`publish` links the
    opened file itself (never whatever the path names now) to its destination.
    """

    def __init__(self, path: str, manifest: Manifest, writable: bool = False,
                 direct_writes: bool = False) -> None:
        self.path = path
        self.manifest = manifest
        if writable:
            fd = _open_part(path)
            try:
                if os.fstat(fd).st_size != manifest.size:
                    os.ftruncate(fd, manifest.size)     # sparse: no data written yet
            except BaseException:
                os.close(fd)
                raise
        else:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.fd: Optional[int] = fd
        # Verified pieces go to disk with O_DIRECT, past the page cache: a
        # buffered write copies every byte into freshly allocated page-cache
        # memory, and on a VM whose freed memory goes back to the host
        # (free page reporting) that first touch cost 1.3-1.5 CPU s per GiB
        # (dd into a new file: 1.5 s cold, 0.2 s warm; O_DIRECT 0.13 s).
        # Reads (serving pieces on, resume checks) keep using ``fd``.
        self._direct_fd: Optional[int] = _open_direct(fd) if writable and direct_writes else None
        self._aligned: Optional[mmap.mmap] = None     # page-aligned copy of a piece for O_DIRECT
        # One writer at a time: ext4 serialises buffered writes to a file on its
        # inode lock, and the kernel's waiters spin on it (measured with perf: 16 %
        # of a leecher's CPU with ten pool threads writing). Waiting here sleeps;
        # the hashing before it still runs on every pool thread at once.
        self._write_lock = threading.Lock()

    def is_at(self, path: Optional[str] = None) -> bool:
        """Does ``path`` (default: the path it was opened by) name this very file, not a symlink?"""
        if self.fd is None:
            return False
        try:
            there = os.lstat(path or self.path)
        except OSError:
            return False
        here = os.fstat(self.fd)
        return stat.S_ISREG(there.st_mode) and (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino)

    def publish(self, dest: str) -> None:
        """Give the finished file its final mode and link it at ``dest`` (never replacing anything).

        The link is made to the open file itself (``/proc/self/fd``), so a
        ``.part`` path swapped for a symlink meanwhile cannot be put in place.
        Raises FileExistsError if anything (a symlink too) is at ``dest``.
        """
        os.fchmod(self.fd, 0o666 & ~current_umask())
        proc = "/proc/self/fd/%d" % self.fd
        if not os.path.exists(proc):
            if not self.is_at():
                raise UnsafePartFile(0, "%s was replaced; not linked" % self.path)
            os.link(self.path, dest, follow_symlinks=False)
            return
        # linkat(AT_SYMLINK_FOLLOW) on the fd's magic link. Python calls plain
        # link() (which would link the /proc symlink itself) unless a dir fd is given.
        parent = os.open(os.path.dirname(dest) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.link(proc, os.path.basename(dest), dst_dir_fd=parent, follow_symlinks=True)
        finally:
            os.close(parent)

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
        with self._write_lock:
            if (self._direct_fd is not None and pos % DIRECT_ALIGN == 0
                    and len(view) % DIRECT_ALIGN == 0 and self._write_direct(view, pos)):
                return True
            while view:
                n = os.pwrite(self.fd, view, pos)
                view = view[n:]
                pos += n
        return True

    @property
    def direct(self) -> bool:
        """Are aligned pieces written with O_DIRECT?"""
        return self._direct_fd is not None

    def _write_direct(self, view: memoryview, pos: int) -> bool:
        """Write ``view`` at ``pos`` with O_DIRECT (caller holds the write lock).

        O_DIRECT needs an aligned buffer: the piece is copied into one page-aligned
        buffer kept for the file (a copy within warm memory, cheap next to a
        page-cache copy into fresh memory). Returns False, and turns direct
        writes off for this file, if the direct write fails in any way (a file
        system that opens with O_DIRECT but refuses the write says EINVAL or
        EOPNOTSUPP); the caller then writes the piece buffered, so a real
        error (a full disk) is met there and reported as before.
        """
        n = len(view)
        if self._aligned is None or len(self._aligned) < n:
            if self._aligned is not None:
                self._aligned.close()
            self._aligned = mmap.mmap(-1, max(n, self.manifest.piece_size))
        self._aligned[:n] = view
        written = 0
        with memoryview(self._aligned) as whole, whole[:n] as chunk:
            try:
                while written < n:
                    step = os.pwrite(self._direct_fd, chunk[written:], pos + written)
                    if step <= 0:
                        break
                    written += step
            except OSError:
                pass
        if written < n:
            self._close_direct()        # the views are released: the buffer may go
            return False
        return True

    def _close_direct(self) -> None:
        if self._direct_fd is not None:
            os.close(self._direct_fd)
            self._direct_fd = None
        if self._aligned is not None:
            self._aligned.close()
            self._aligned = None

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
        """The file's identity as it is on disk, in its manifest's scheme (thread: reads everything).

        For a rooted manifest, the root of every piece's SHA-256 read back from
        disk; for an old-style one, the SHA-256 of the whole file. Past
        ``manifest.size`` too (to the end, or a little beyond the size): a file
        that grew since it was opened must not pass as the manifest's file.
        """
        if os.fstat(self.fd).st_size != self.manifest.size:
            return "size %d" % os.fstat(self.fd).st_size
        if self.manifest.rooted:
            digests = []
            buf = bytearray(self.manifest.piece_size)
            for i in range(self.manifest.pieces):
                length = self.manifest.piece_length(i)
                view = memoryview(buf)[:length]
                if os.preadv(self.fd, [view], i * self.manifest.piece_size) != length:
                    return "short read"
                digests.append(hashlib.sha256(view).digest())
            return pieces_root(self.manifest.size, digests)
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
        """Close the file descriptor(s)."""
        with self._write_lock:
            self._close_direct()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class WholeFileHash:
    """SHA-256 of the whole file, computed while the download runs.

    Pieces arrive in any order; the hash must see them in file order. Worker
    threads call :meth:`piece_written` after each verified write, which feeds
    every piece from the cursor on that is already on disk (the piece just
    written straight from memory, others read back from the page cache). The
    hash thus trails the download on the spare core instead of re-reading the
    whole file after the last piece; :meth:`finish` hashes whatever is left.
    """

    def __init__(self, piece_file: PieceFile, pieces: int) -> None:
        self.piece_file = piece_file
        self.written = bytearray(pieces)      # 1 = verified and on disk
        self.cursor = 0
        self.sha = hashlib.sha256()
        self.lock = threading.Lock()

    def piece_written(self, index: int, data=None) -> None:
        """Thread: piece ``index`` is on disk; advance the hash if nobody else is."""
        self.written[index] = 1
        if self.lock.acquire(blocking=False):
            try:
                self._advance(index, data)
            finally:
                self.lock.release()

    def _advance(self, index: int = -1, data=None) -> None:
        m = self.piece_file.manifest
        while self.cursor < len(self.written) and self.written[self.cursor]:
            if self.cursor == index and data is not None:
                self.sha.update(data)
            else:
                self.sha.update(self.piece_file.read(self.cursor, 0, m.piece_length(self.cursor)))
            self.cursor += 1

    def finish(self) -> str:
        """Thread: hash the rest (every piece must be on disk); return the hex digest."""
        with self.lock:
            self._advance()
            if self.cursor != len(self.written):
                raise IOError("piece %d is not on disk" % self.cursor)
            return self.sha.hexdigest()
