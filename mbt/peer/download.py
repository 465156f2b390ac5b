"""One download, the transfer: picker, pipelined requests, verification, completion.

A :class:`Download` lets its :class:`~mbt.peer.swarm.Swarm` find and connect
the peers that share the file, and the :class:`~mbt.peer.picker.PiecePicker`
decide which block to ask of which peer. Blocks are assembled in a per-piece
buffer (memory bounded by the pieces in flight, never by the file size); a
complete piece is hashed and written to ``DEST.part`` in a worker thread. Each
verified piece is at once servable to other members (see
:class:`~mbt.peer.serving.Servable`). When every piece is in, the whole file is
linked to the destination, never over an existing file: for a rooted manifest
(``file_hash`` = root of the piece hashes) the verified pieces prove the whole
file; an old-style manifest's whole-file SHA-256 is computed alongside the
download and checked first (and ``set verify_on_disk on`` reads every byte
back from disk and checks it again).
"""

from __future__ import annotations

import os
import random
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, Dict, Optional, Set, Tuple

from twisted.internet import defer
from twisted.logger import Logger

from mbt.manifest import PIECE_SIZE, Manifest
from mbt.peer.picker import BLOCK_SIZE, BlockRequest, PiecePicker
from mbt.peer.ratelimit import RateMeter
from mbt.peer.serving import Servable
from mbt.peer.shares import DownloadRecord, DownloadState
from mbt.peer.storage import PieceFile, UnsafePartFile, WholeFileHash
from mbt.peer.swarm import Swarm
from mbt.protocols.peer import PeerClientProtocol
from mbt.timers import cancel_pending

log = Logger(namespace="mbt.peer.download")

#: Bytes one REQUEST asks for. A peer that has shown it is fast
#: (FAST_PEER_RATE) gets whole pieces (MAX_BLOCK allows it): one line, one PIECE
#: header, one picker round trip and one receive run per piece instead of four,
#: a quarter of the per-block work on the reactor thread (docs/performance.rst,
#: round two). Others get BLOCK_SIZE blocks: a slow or rate-capped server then
#: sends in small steps (its token bucket overshoots by at most one block).
FAST_BLOCK = PIECE_SIZE
FAST_PEER_RATE = 8e6
#: Bytes outstanding per peer (pipelining), whatever the block size.
PIPELINE_BYTES = 2 * 1024 * 1024
#: A download with no usable peer for this long fails (it can be started again).
NO_PEER_LIMIT = 600.0
#: A block not delivered within this many seconds is asked of another peer.
REQUEST_TIMEOUT = 15.0
#: Progress is saved at most this often (seconds).
SAVE_INTERVAL = 2.0
#: Pieces hashed/written in worker threads at once; beyond this the download stops
#: asking for more, so memory stays bounded when the disk or CPU lags.
MAX_VERIFY_BACKLOG = 24
#: Pool jobs hashing and writing this download's pieces at once (the machine's
#: cores), each taking up to VERIFY_BATCH queued pieces: fewer hand-offs and
#: wake-ups than one job per piece, and two busy threads instead of ten
#: contending for two cores.
VERIFY_JOBS = 2
VERIFY_BATCH = 4


@dataclass(frozen=True)
class DownloadProgress:
    """What ``show_downloads`` shows of one download (formatted in :mod:`mbt.peer.commands`)."""

    status: DownloadState
    group: str
    name: str
    dest: str           # where the file goes
    reason: str         # why it failed
    percent: float      # verified share of the file, 0-100
    rate: float         # bytes/s over the last few seconds
    peers: int          # usable connections
    running: bool       # False: paused until login
    note: str           # what it is waiting for, if anything
    via: str = ""       # how peers are reached when not all directly: "connect-back 1, relay 1"


class Download:
    """One file being downloaded into ``record.dest``: the transfer.

    Owns the picker, the piece buffers, verification and completion; its
    :class:`~mbt.peer.swarm.Swarm` finds and connects the peers. ``run_in_thread``
    runs blocking work (hashing, writing) off the reactor thread and returns a
    Deferred -- the node passes its thread pool; tests pass a stand-in.
    """

    def __init__(self, node, record: DownloadRecord, reactor, run_in_thread: Callable[..., defer.Deferred],
                 rng: Optional[random.Random] = None) -> None:
        self.node = node
        self.record = record
        self.reactor = reactor
        self.run_in_thread = run_in_thread
        self.rng = rng or random.Random()
        self.manifest = Manifest.from_dict(record.manifest)
        self.status = record.status
        self.reason = record.reason
        self.have: Set[int] = set()
        # Until the resume check has re-hashed them, show the saved progress.
        self.verified_bytes = sum(self.manifest.piece_length(i) for i in record.have
                                  if 0 <= i < self.manifest.pieces)
        self.file_hash: Optional[WholeFileHash] = None
        self.picker: Optional[PiecePicker] = None
        self.piece_file: Optional[PieceFile] = None
        self.servable: Optional[Servable] = None
        self.swarm = Swarm(node, self, reactor, self.rng)
        self._told_unusable = False     # the "cannot download from any peer" notice was given
        self.buffers: Dict[int, bytearray] = {}
        self._spare: list = []      # verified pieces' buffers, reused (no zeroing, no page faults)
        self.inplace: Dict[tuple, PeerClientProtocol] = {}   # (index, offset) -> writer
        self.verifying: Set[int] = set()       # queued or being hashed/written
        self._verify_queue: Deque[Tuple[int, bytearray]] = deque()
        self._verify_jobs = 0
        self.running = False
        self.started_at = None
        self.last_peer_time = None
        self.note = ""
        self._ticker = None
        self._last_save = -1e9
        self._dirty = False
        self.meter = RateMeter(reactor)
        self._starting: Optional[defer.Deferred] = None
        self.no_share = False       # the user ran stop_share: never serve or announce it
        self.sources: Dict[int, str] = {}   # piece -> address of the peer that completed it

    # -- status --------------------------------------------------------------

    @property
    def key(self):
        return self.record.key

    @property
    def announced(self) -> bool:
        """Has the tracker been told we share (part of) this file?"""
        return self.swarm.announced

    def now(self) -> float:
        return self.reactor.seconds()

    def percent(self) -> float:
        """Verified share of the file, 0-100."""
        if not self.manifest.size:
            return 100.0 if self.status == DownloadState.COMPLETE else 0.0
        return 100.0 * self.verified_bytes / self.manifest.size

    def progress(self) -> DownloadProgress:
        """A snapshot for ``show_downloads``."""
        peers = sum(1 for c in self.swarm.conns.values() if c.ready)
        return DownloadProgress(self.status, self.record.group, self.record.name, self.record.dest,
                                self.reason, self.percent(), self.meter.rate(), peers, self.running,
                                self.note, self._via())

    def _via(self) -> str:
        """``connect-back 1, direct 2``; empty when every ready peer was dialled directly."""
        ways = [getattr(c, "via", "direct") for c in self.swarm.conns.values() if c.ready]
        if all(w == "direct" for w in ways):
            return ""
        return ", ".join("%s %d" % (w, ways.count(w)) for w in sorted(set(ways)))

    def piece_map(self) -> str:
        """One character per piece: ``v`` verified, ``f`` in flight (requested or
        being checked), ``.`` missing."""
        n = self.manifest.pieces
        if self.status == DownloadState.COMPLETE:
            return "v" * n
        cells = bytearray(b"." * n)
        busy = set(self.verifying)
        if self.picker is not None:
            busy |= self.picker.in_flight()
        for i in busy:
            cells[i] = 0x66         # "f"
        for i in (self.have or self.record.have):
            if 0 <= i < n:
                cells[i] = 0x76     # "v"
        return cells.decode("ascii")

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> defer.Deferred:
        """Open or resume the ``.part`` file, then fetch pieces in the background.

        Never fails: an unexpected error ends the download as ``[F]`` with the
        reason instead of leaving it stuck. A start already under way is reused.
        """
        if self._starting is not None:
            return self._starting
        d = self._starting = self._start()

        def done(result):
            self._starting = None
            return result

        def failed(f):
            log.failure("download of {name} could not start", f, name=self.record.name)
            self.running = True         # so that fail() below ends it properly
            self.fail("internal error: %s" % f.getErrorMessage())
        return d.addErrback(failed).addBoth(done)

    @defer.inlineCallbacks
    def _start(self):
        if self.running or self.status != DownloadState.RUNNING:
            return
        self.running = True
        self.started_at = self.last_peer_time = self.now()
        self.meter.restart()
        if self.piece_file is not None and not self.piece_file.is_at():
            # Paused with the file open, and meanwhile something else was put at
            # its path (a symlink to another file...): never write or link that.
            self.fail("%s was replaced or removed while the download was paused; nothing saved"
                      % self.record.part_path)
            return
        if self.piece_file is None:
            try:
                self.piece_file = PieceFile(self.record.part_path, self.manifest, writable=True,
                                            direct_writes=self.node.direct_writes)
            except UnsafePartFile as e:
                self.fail("refusing %s" % e.strerror)
                return
            except OSError as e:
                self.fail("cannot write %s: %s" % (self.record.part_path, e.strerror or e))
                return
            # Resume: trust nothing on disk until it hashes right again.
            if not self.manifest.rooted:
                # An old-style manifest: its file_hash is the whole file's SHA-256.
                self.file_hash = WholeFileHash(self.piece_file, self.manifest.pieces)
            if self.record.have:
                good = yield self.run_in_thread(self.piece_file.verify_existing, list(self.record.have))
                self.have.update(good)
                self.verified_bytes = sum(self.manifest.piece_length(i) for i in good)
                if self.file_hash is not None:
                    for i in good:
                        self.file_hash.written[i] = 1
                if not self.running:        # paused while re-checking: start over next time
                    self.piece_file.close()
                    self.piece_file = None
                    self.have.clear()
                    self.verified_bytes = 0
                    return
            self.picker = PiecePicker(self.manifest.size, have=self.have, rng=self.rng, block_size=BLOCK_SIZE,
                                      request_timeout=REQUEST_TIMEOUT)
            self.servable = Servable(self.record.group, self.manifest, self.piece_file, self.have)
        if not self.no_share:
            self.node.register_servable(self.servable)
            if self.have:
                self.swarm.announce()
        if self.picker.done:
            self._finish().addErrback(self._finish_failed)
            return
        self._ticker = self.reactor.callLater(0, self._tick)

    def tracker_back(self) -> None:
        """Logged back in (maybe on another tracker): drop a tracker error, ask for peers again."""
        if self.note.startswith("tracker: "):
            self.note = ""
        if self.running:
            self.swarm.refresh_peers()

    def pause(self) -> None:
        """Stop fetching (logout, quit); progress is kept for the next start."""
        if not self.running:
            return
        self.running = False
        self._stop_activity()
        self._save(force=True)

    def announce(self) -> None:
        """Tell the tracker we share (part of) this file."""
        self.swarm.announce()

    def _stop_activity(self) -> None:
        self._ticker = cancel_pending(self._ticker)
        self.swarm.disconnect_all()

    def fail(self, reason: str) -> None:
        """End as failed: nothing at the destination, the ``.part`` file removed."""
        if self.status != DownloadState.RUNNING:
            return
        log.warn("download of {name} failed: {reason}", name=self.record.name, reason=reason)
        self.status, self.reason = DownloadState.FAILED, reason
        self.running = False
        self._stop_activity()
        self._close_storage(remove_part=True)
        self._release_buffers()
        self.record.status, self.record.reason, self.record.have = DownloadState.FAILED, reason, []
        self.node.download_ended(self)

    def _release_buffers(self) -> None:
        """An ended download keeps no piece memory."""
        self.buffers.clear()
        self._spare.clear()
        self.inplace.clear()
        self._verify_queue.clear()

    def _close_storage(self, remove_part: bool) -> None:
        if self.servable is not None:
            self.node.unregister_servable(self.servable)
        # Only our own .part file is removed, never what someone put at its path.
        ours = self.piece_file is not None and self.piece_file.is_at()
        if self.piece_file is not None:
            self.piece_file.close()
            self.piece_file = None
        if remove_part and ours:
            try:
                os.unlink(self.record.part_path)
            except OSError:
                pass

    # -- the periodic step ---------------------------------------------------

    def _tick(self) -> None:
        self._ticker = None
        if not self.running:
            return
        now = self.now()
        for peer, req in self.picker.expire(now):
            if peer.connected:
                peer.cancel(req.index, req.offset, req.length)
        ready = [c for c in self.swarm.conns.values() if c.ready and not self.picker.is_banned(c)]
        if ready:
            self.last_peer_time = now
            self.note = ""
        elif now - self.last_peer_time > NO_PEER_LIMIT:
            self.fail("no peer has shared it for %d minutes; try again later" % (NO_PEER_LIMIT // 60))
            return
        else:
            waited = now - self.last_peer_time
            problems = self.swarm.problems()
            if waited > 5 and problems:
                # Every known peer refused us or cannot be reached: say why, once on the console.
                self.note = "; ".join(problems)
                if not self._told_unusable:
                    self._told_unusable = True
                    self.node.notify("cannot download %s from any peer: %s" % (self.record.name, self.note))
            elif waited > 5:
                self.note = "no peer sharing it right now; waiting %ds" % waited
        self.swarm.tick(now, len(ready))
        if self.status != DownloadState.RUNNING:
            return
        for conn in ready:
            self._fill(conn)
        self._save()
        self._ticker = self.reactor.callLater(1.0, self._tick)

    # -- called by PeerClientProtocol ---------------------------------------

    def valid_block(self, index: int, offset: int, length: int) -> bool:
        """Is (index, offset, length) inside the file?"""
        return (index < self.manifest.pieces and length > 0
                and offset + length <= self.manifest.piece_length(index))

    def peer_ready(self, conn: PeerClientProtocol, have: Set[int]) -> None:
        self.note = ""
        self.swarm.peer_problems.pop(conn.address, None)
        self._told_unusable = False
        self.picker.add_peer(conn, have)
        self._fill(conn)

    def peer_have(self, conn: PeerClientProtocol, index: int) -> None:
        self.picker.peer_has(conn, index)
        self._fill(conn)

    def peer_choked(self, conn: PeerClientProtocol, choked: bool) -> None:
        # A choking server REJECTs what it will not serve, and requests it drops
        # silently time out in the picker; an unchoke lets us send requests.
        self._fill(conn)

    def peer_rejected(self, conn: PeerClientProtocol, index: int, offset: int, length: int) -> None:
        # Not refilled at once (it would ask the same peer again); the tick does.
        self.picker.block_rejected(conn, BlockRequest(index, offset, length))

    def peer_error(self, conn: PeerClientProtocol, reason: str) -> None:
        log.info("peer {a}: {reason}", a=conn.address, reason=reason)
        if reason.startswith("refused: "):
            self.swarm.peer_problems[conn.address] = "%s (%s)" % (reason[:120], conn.address)

    def peer_lost(self, conn: PeerClientProtocol) -> None:
        for key in [k for k, w in self.inplace.items() if w is conn]:
            del self.inplace[key]
        self.swarm.lost(conn)
        if self.picker is not None:
            self.picker.remove_peer(conn)
            if self.running:
                for other in self.swarm.connections():
                    if other.ready:
                        self._fill(other)

    def block_target(self, conn: PeerClientProtocol, index: int, offset: int, length: int):
        """Where the bytes of a block now arriving should go: its place in the piece
        buffer if ``conn`` is the only peer fetching it, else None (scratch)."""
        if (self.picker is None or (index, offset) in self.inplace
                or not self.picker.sole_holder(conn, index, offset, length)):
            return None
        self.inplace[(index, offset)] = conn
        return memoryview(self._piece_buffer(index))[offset:offset + length]

    def block_received(self, conn: PeerClientProtocol, index: int, offset: int, data) -> None:
        if not self.running or self.picker is None:
            return
        length = len(data)
        writer = self.inplace.pop((index, offset), None)
        result = self.picker.block_received(conn, index, offset, length, self.now())
        for other, req in result.cancels:
            if other is not conn and other.connected:
                other.cancel(req.index, req.offset, req.length)
        if result.accepted:
            self.meter.add(length)
            if writer is not conn:
                if writer is not None:
                    writer.redirect_to_scratch()     # its bytes must not land on ours
                self._piece_buffer(index)[offset:offset + length] = data
            if result.piece_complete:
                self.sources[index] = conn.address
                self._verify(index)
        # Refill in batches once half the pipeline has drained: one write
        # (one send) for several REQUEST lines, not one per block.
        if self.picker.outstanding(conn) <= self._block_plan(conn)[1] // 2:
            self._fill(conn)

    def _block_plan(self, conn: PeerClientProtocol):
        """(block size, pipeline depth in blocks) for new requests to ``conn``."""
        bs = FAST_BLOCK if self.picker.peer_rate(conn) >= FAST_PEER_RATE else BLOCK_SIZE
        return bs, max(2, PIPELINE_BYTES // bs)

    def _piece_buffer(self, index: int) -> bytearray:
        """The buffer piece ``index`` is assembled in, made on first use: a spare one
        when the size fits (every byte of it is overwritten by the piece's blocks
        before the piece is checked)."""
        buf = self.buffers.get(index)
        if buf is None:
            length = self.manifest.piece_length(index)
            if length == self.manifest.piece_size and self._spare:
                buf = self._spare.pop()
            else:
                buf = bytearray(length)
            self.buffers[index] = buf
        return buf

    def _fill(self, conn: PeerClientProtocol) -> None:
        if not self.running or not conn.ready or conn.choked or not conn.connected:
            return
        if len(self.verifying) >= MAX_VERIFY_BACKLOG:
            return      # resumed when a verification finishes
        bs, depth = self._block_plan(conn)
        want = depth - self.picker.outstanding(conn)
        if want <= 0:
            return
        reqs = self.picker.next_requests(conn, want, self.now(), bs)
        if reqs:
            conn.request_many([(r.index, r.offset, r.length) for r in reqs])

    # -- verification and completion ----------------------------------------

    def _verify(self, index: int) -> None:
        """Piece ``index`` is complete in memory: queue it to be hashed and written."""
        self.verifying.add(index)
        self._verify_queue.append((index, self.buffers.pop(index)))
        if self._verify_jobs < VERIFY_JOBS:
            self._verify_batch()

    def _verify_batch(self) -> None:
        """Hand up to VERIFY_BATCH queued pieces to one pool job."""
        batch = []
        while self._verify_queue and len(batch) < VERIFY_BATCH:
            batch.append(self._verify_queue.popleft())
        piece_file, file_hash = self.piece_file, self.file_hash

        def verify_write_hash():      # runs in a worker thread
            results = []
            for index, buf in batch:
                ok = piece_file.verify_and_write(index, buf)
                if ok and file_hash is not None:
                    file_hash.piece_written(index, buf)
                results.append(ok)
            return results
        self._verify_jobs += 1
        d = self.run_in_thread(verify_write_hash)

        def checked(results):
            self._verify_jobs -= 1
            for (index, buf), ok in zip(batch, results):
                self._checked(index, buf, ok)
            if self._verify_queue and self._verify_jobs < VERIFY_JOBS and self.piece_file is not None:
                self._verify_batch()

        def broken(f):
            self._verify_jobs -= 1
            for index, _ in batch:
                self.verifying.discard(index)
            self.fail("cannot write %s: %s" % (self.record.part_path, f.getErrorMessage()))
        d.addCallbacks(checked, broken)

    def _checked(self, index: int, buf: bytearray, ok: bool) -> None:
        """Piece ``index`` was hashed (and, if ``ok``, written): count it or fetch it again."""
        self.verifying.discard(index)
        if len(buf) == self.manifest.piece_size and len(self._spare) < MAX_VERIFY_BACKLOG:
            self._spare.append(buf)     # the worker thread is done with it
        if self.status != DownloadState.RUNNING or self.picker is None:
            return
        if ok:
            self.picker.piece_verified(index)
            self.verified_bytes += self.manifest.piece_length(index)
            self.servable.add_piece(index)      # HAVE to our own downloaders at once
            self._dirty = True
            if not self.swarm.announced and not self.no_share:
                self.swarm.announce()
            if self.picker.done and not self.verifying:
                self._finish().addErrback(self._finish_failed)
            elif len(self.verifying) == MAX_VERIFY_BACKLOG - 1:
                for conn in self.swarm.connections():     # backlog drained: resume
                    self._fill(conn)
        else:
            banned = self.picker.piece_failed(index)
            log.warn("piece {i} of {name} failed its hash check", i=index, name=self.record.name)
            for peer in banned:
                self.swarm.ban(peer)
            for conn in self.swarm.connections():
                self._fill(conn)

    def _finish_failed(self, f) -> None:
        log.failure("finishing the download of {name} failed", f, name=self.record.name)
        self.running = True
        self.fail("could not finish: %s" % f.getErrorMessage())

    @defer.inlineCallbacks
    def _finish(self):
        if self.status != DownloadState.RUNNING or not self.running:
            return
        self.running = False
        self._stop_activity()
        # Every piece has matched its hash. For a rooted manifest that proves the
        # file (file_hash is the root of those hashes): no second pass, unless the
        # user asked for the bytes on disk to be read back and checked again.
        if self.file_hash is not None or self.node.verify_on_disk:
            self.note = "checking the whole file"
            try:
                if self.file_hash is not None:
                    ok = (yield self.run_in_thread(self.file_hash.finish)) == self.manifest.file_hash
                else:
                    ok = (yield self.run_in_thread(self.piece_file.file_hash)) == self.manifest.file_hash
            except (IOError, OSError) as e:
                self.fail("cannot read back %s: %s" % (self.record.part_path, e))
                return
            if self.status != DownloadState.RUNNING:
                return
            if not ok:
                self.fail("whole-file hash mismatch; nothing saved")
                return
        if not self.piece_file.is_at():
            self.fail("%s was replaced or removed during the download; nothing saved" % self.record.part_path)
            return
        try:
            # The verified file itself is linked (not whatever its path names by
            # now), and link() never replaces anything: the destination, even a
            # symlink that appeared there during the download, is never overwritten.
            self.piece_file.publish(self.record.dest)
        except FileExistsError:
            self.fail("%s appeared during the download; not overwritten" % self.record.dest)
            return
        except OSError as e:
            self.fail("cannot create %s: %s" % (self.record.dest, e.strerror or e))
            return
        if self.piece_file.is_at():
            try:
                os.unlink(self.record.part_path)
            except OSError:
                pass
        self.status = self.record.status = DownloadState.COMPLETE
        self.record.have = []
        self._release_buffers()
        self.note = ""
        elapsed = self.now() - (self.started_at or self.now())
        log.info("downloaded {name} ({size} bytes) in {t:.2f}s", name=self.record.name,
                 size=self.manifest.size, t=elapsed)
        self.node.download_ended(self)

    # -- bookkeeping ---------------------------------------------------------

    def _save(self, force: bool = False) -> None:
        if not (self._dirty or force):
            return
        now = self.now()
        if not force and now - self._last_save < SAVE_INTERVAL:
            return
        self._last_save = now
        self._dirty = False
        if self.picker is not None:     # not while the resume check is still re-hashing
            self.record.have = sorted(self.have)
        self.node.store.save_downloads()
