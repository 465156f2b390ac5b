"""The piece picker: which blocks to request from which peer.

Pure and deterministic: no I/O, no clock, no reactor. Time is passed in as
``now`` arguments and every random choice comes from the injected
:class:`random.Random`, so a given seed and call sequence always yields the
same requests. Peers are opaque hashable objects (the caller's connections).

Policy, in order of precedence for each :meth:`PiecePicker.next_requests`:

1. blocks nobody is fetching in pieces already started (finish them first);
2. a new piece: random while fewer than ``random_first`` pieces are verified,
   then rarest first (availability from bitfields and HAVEs, random tie-break);
3. endgame, once no peer could start a new piece: blocks already outstanding
   at other peers, fewest copies first; the first copy to arrive cancels the rest.

Around that: a throughput EWMA per peer sizes request timeouts and keeps slow
peers from starting pieces near the end; timed-out requests go back to the
pool and are not given to the same peer again for a while. A peer that sent
a piece failing its hash on its own is banned at once; suppliers of a failed
piece shared with others get a strike, are banned at two, and meanwhile
fetch whole pieces alone (probation), so a liar's next bad piece convicts it
and clears its partners: the picker keeps who sent which block and hands a
failed piece's record to its :class:`~mbt.peer.evidence.BanEvidence`, which
judges. ``docs/piece-selection.rst`` is the full specification.

Sanity figure (not a timed test): a simulated full download of a 2048-piece
(1 GiB) file, 8 to 30 peers, pipelines of 4 to 32 blocks, spends 0.05-0.1 s
in the picker (about 10,000 calls).
"""

from __future__ import annotations

import random
from bisect import bisect_left, insort
from dataclasses import dataclass, field
from typing import Dict, Hashable, Iterable, List, Optional, Set, Tuple

from mbt.manifest import PIECE_SIZE, piece_count as _piece_count, piece_length as _piece_length
from mbt.peer.evidence import BanEvidence

BLOCK_SIZE = 128 * 1024

#: Weight of a new throughput sample in a peer's EWMA.
RATE_ALPHA = 0.25
#: Shortest interval a sample is measured over: blocks delivered in the same
#: instant must not produce an infinite rate.
MIN_SAMPLE_INTERVAL = 1e-3
#: A request may take this many times the expected queue time before expiring.
TIMEOUT_SLACK = 3.0
#: Adaptive timeouts stay within [request_timeout * MIN, request_timeout * MAX].
TIMEOUT_MIN_FACTOR = 0.5
TIMEOUT_MAX_FACTOR = 4.0
#: A peer's rate is multiplied by this on every expire() that times it out.
TIMEOUT_PENALTY = 0.5

Peer = Hashable

# Piece states. A piece moves FRESH -> STARTED -> PENDING -> HAVE; a failed
# hash sends PENDING back to FRESH.
_FRESH, _STARTED, _PENDING, _HAVE = range(4)
_UNSET = object()


@dataclass(frozen=True, order=True)
class BlockRequest:
    """One block to request: ``length`` bytes at ``offset`` inside piece ``index``."""

    index: int
    offset: int
    length: int


@dataclass
class BlockResult:
    """What :meth:`PiecePicker.block_received` tells the caller to do with a block.

    ``accepted``: False for a duplicate, unrequested or unknown block; drop its bytes.
    ``piece_complete``: every block of the piece has arrived; verify its hash.
    ``cancels``: ``(peer, request)`` endgame copies still outstanding elsewhere;
    send CANCEL to those peers (they are already forgotten here).
    """

    accepted: bool
    piece_complete: bool
    cancels: List[Tuple[Peer, BlockRequest]] = field(default_factory=list)


class _Peer:
    """What the picker knows about one connected peer."""

    __slots__ = ("have", "needed", "outstanding", "avoid", "rate", "samples",
                 "last_arrival", "timeouts")

    def __init__(self) -> None:
        self.have: Set[int] = set()
        self.needed = 0                       # pieces in ``have`` we have not verified
        self.outstanding: Dict[BlockRequest, float] = {}   # request -> time sent
        self.avoid: Dict[BlockRequest, float] = {}         # timed out here: not before time
        self.rate = 0.0                       # bytes/s EWMA
        self.samples = 0
        self.last_arrival = float("-inf")
        self.timeouts = 0                     # consecutive expire() penalties


class _Partial:
    """A started piece. Every block is in exactly one of the three collections."""

    __slots__ = ("nblocks", "unrequested", "requested", "received", "owner")

    def __init__(self, blocks: List[BlockRequest], owner: Optional[Peer]) -> None:
        self.nblocks = len(blocks)
        self.owner = owner       # a peer on probation fetching this piece alone
        self.unrequested: List[BlockRequest] = blocks            # sorted by offset
        self.requested: Dict[BlockRequest, Dict[Peer, float]] = {}  # holders -> time sent
        self.received: Dict[BlockRequest, Peer] = {}             # accepted copy's supplier


class PiecePicker:
    """Chooses the blocks to request from each peer for one file download.

    ``size`` is the file size, ``have`` the pieces already verified (e.g. on
    disk), ``rng`` the source of every random choice (pass a seeded one for
    reproducibility; the default is freshly seeded so that different clients
    pick different "random" pieces). ``random_first`` is how many verified
    pieces end the random phase; ``request_timeout`` (seconds) the base of
    the adaptive request timeout.
    """

    def __init__(self, size: int, piece_size: int = PIECE_SIZE, block_size: int = BLOCK_SIZE,
                 have: Iterable[int] = (), rng: Optional[random.Random] = None,
                 random_first: int = 4, request_timeout: float = 15.0) -> None:
        if size < 0 or piece_size <= 0 or block_size <= 0:
            raise ValueError("size must be >= 0, piece and block sizes > 0")
        self.size = size
        self.piece_size = piece_size
        self.block_size = block_size
        self.random_first = random_first
        self.request_timeout = request_timeout
        self._rng = rng if rng is not None else random.Random()
        n = self._n = _piece_count(size, piece_size)

        self._state = bytearray(n)            # _FRESH everywhere
        self._avail = [0] * n                 # non-banned peers having each piece
        self._have: Set[int] = set()
        self._have_frozen: Optional[frozenset] = None   # cache of ``have``
        self._verified_bytes = 0
        self._started: Dict[int, _Partial] = {}   # insertion order = start order
        self._open: Dict[int, None] = {}          # started pieces with unrequested blocks,
                                                  # in the order they (re)opened
        self._pending: Dict[int, _Partial] = {}   # all blocks in, hash not checked yet
        self._peers: Dict[Peer, _Peer] = {}
        #: Who sent blocks of failed pieces; strikes and bans (see mbt.peer.evidence).
        self.evidence = BanEvidence()
        self._banned = self.evidence.banned       # the evidence's set, read on hot paths
        self._rate_sum = 0.0                      # over connected, non-banned peers

        # Rarest-first index: a random rank per piece (the tie-break, drawn
        # once) and, per availability, the sorted ranks of FRESH pieces. The
        # rarest piece a seed has is then the head of the first non-empty
        # bucket, with no scan of all pieces.
        ranks = list(range(n))
        self._rng.shuffle(ranks)
        self._rank = ranks
        self._by_rank = [0] * n
        for piece, r in enumerate(ranks):
            self._by_rank[r] = piece
        self._buckets: List[List[int]] = [[]]
        self._fresh_count = n

        for index in have:
            self._check_index(index)
            if self._state[index] != _HAVE:
                self._state[index] = _HAVE
                self._have.add(index)
                self._verified_bytes += self.piece_length(index)
                self._fresh_count -= 1
        self._buckets[0] = sorted(ranks[i] for i in range(n) if self._state[i] == _FRESH)

    # ------------------------------------------------------------------ peers

    def add_peer(self, peer: Peer, have: Iterable[int]) -> None:
        """Register ``peer`` with the pieces of its bitfield (merged if already known).

        Out-of-range indices are ignored: the protocol layer rejects them.
        """
        pst = self._peers.get(peer)
        if pst is None:
            pst = self._peers[peer] = _Peer()
        for index in have:
            self._add_have(peer, pst, index)

    def peer_has(self, peer: Peer, index: int) -> None:
        """Record a HAVE message: ``peer`` now has piece ``index``."""
        pst = self._peers.get(peer)
        if pst is None:
            self.add_peer(peer, (index,))
        else:
            self._add_have(peer, pst, index)

    def remove_peer(self, peer: Peer) -> List[BlockRequest]:
        """Forget ``peer``; its outstanding requests go back to the pool and are returned.

        A ban and strikes outlive the connection: they last for the download.
        """
        pst = self._peers.pop(peer, None)
        if pst is None:
            return []
        if peer not in self._banned:
            for index in pst.have:
                self._change_avail(index, -1)
            self._recount_rates()
        released = list(pst.outstanding)
        for req in released:
            self._release(peer, req)
        self._disown(peer)
        return released

    # --------------------------------------------------------------- requests

    def next_requests(self, peer: Peer, limit: int, now: float,
                      block_size: Optional[int] = None) -> List[BlockRequest]:
        """Up to ``limit`` new requests for ``peer``, recorded as sent at ``now``.

        A piece started here is cut into blocks of ``block_size`` bytes (default:
        the picker's ``block_size``); blocks of pieces already started keep the
        size they were cut to.

        Never a block of a piece the peer lacks or we have (or that is pending
        verification), never one already outstanding at this peer, nothing for
        a banned peer; outside endgame never a block outstanding elsewhere.
        """
        pst = self._peers.get(peer)
        if limit <= 0 or pst is None or pst.needed == 0 or peer in self._banned:
            return []
        out: List[BlockRequest] = []
        # A peer on probation (it has a strike) fetches whole pieces alone, so
        # that its next bad piece, if any, convicts it without doubt.
        alone = self.evidence.on_probation(peer)
        # 1. Finish what is started: a half-fetched piece is useless to us
        #    and to the swarm until its hash is checked.
        if self._open:
            for index in list(self._open):
                if index in pst.have and self._may_take(index, peer, alone):
                    self._take(index, peer, pst, limit - len(out), now, out)
                    if len(out) >= limit:
                        return out
        # 2. Start new pieces.
        if self._fresh_available():
            rivals = self._rivals(peer, pst)
            while len(out) < limit:
                index = self._pick_fresh(pst, rivals)
                if index is None:
                    break
                self._start(index, peer if alone else None, block_size or self.block_size)
                self._take(index, peer, pst, limit - len(out), now, out)
        # 2b. Rather than idle, a peer on probation helps with shared pieces
        #     (a failure there is still caught by the strike count).
        if alone and len(out) < limit and self._open:
            for index in list(self._open):
                if index in pst.have and self._started[index].owner is None:
                    self._take(index, peer, pst, limit - len(out), now, out)
                    if len(out) >= limit:
                        return out
        # 3. Endgame: nothing left that anyone could start.
        if len(out) < limit and not alone and not self._fresh_available():
            self._endgame(peer, pst, limit - len(out), now, out)
        return out

    def block_received(self, peer: Peer, index: int, offset: int, length: int,
                       now: float) -> BlockResult:
        """Record a block from ``peer``; see :class:`BlockResult` for the answer.

        Only a block outstanding at this very peer is accepted: a late copy
        after a cancel, timeout or reject, or anything unrequested, is not.
        """
        req = BlockRequest(index, offset, length)
        pst = self._peers.get(peer)
        sent = pst.outstanding.pop(req, _UNSET) if pst is not None else _UNSET
        if sent is _UNSET:
            return BlockResult(False, False, [])
        self._measure(peer, pst, sent, length, now)
        pst.timeouts = 0
        # Invariant: a request outstanding anywhere belongs to a STARTED piece
        # and has not been received yet.
        part = self._started[index]
        cancels = []
        for other in part.requested.pop(req):
            if other != peer:
                del self._peers[other].outstanding[req]
                cancels.append((other, req))
        part.received[req] = peer
        complete = len(part.received) == part.nblocks
        if complete:
            del self._started[index]
            self._open.pop(index, None)
            self._pending[index] = part
            self._state[index] = _PENDING
        return BlockResult(True, complete, cancels)

    def sole_holder(self, peer: Peer, index: int, offset: int, length: int) -> bool:
        """Is this block outstanding at ``peer`` and at no other peer (no endgame copy)?"""
        part = self._started.get(index)
        if part is None:
            return False
        holders = part.requested.get(BlockRequest(index, offset, length))
        return holders is not None and len(holders) == 1 and peer in holders

    def block_rejected(self, peer: Peer, req: BlockRequest) -> None:
        """``peer`` will not serve ``req`` (choked us or sent REJECT): back to the pool."""
        pst = self._peers.get(peer)
        if pst is not None and pst.outstanding.pop(req, _UNSET) is not _UNSET:
            self._release(peer, req)

    def expire(self, now: float) -> List[Tuple[Peer, BlockRequest]]:
        """Drop requests older than their peer's :meth:`timeout_for`; return them.

        Each goes back to the pool (unless another copy is outstanding) and is
        not given to the same peer again for ``request_timeout`` seconds, so it
        is re-requested elsewhere; the peer's rate is halved once per call.
        The caller sends CANCEL for every returned pair.
        """
        expired: List[Tuple[Peer, BlockRequest]] = []
        for peer, pst in self._peers.items():
            if not pst.outstanding:
                continue
            timeout = self.timeout_for(peer)
            late = [req for req, sent in pst.outstanding.items() if now - sent > timeout]
            if not late:
                continue
            for req in late:
                del pst.outstanding[req]
                part = self._started[req.index]
                if part.owner is not None and part.owner == peer:
                    part.owner = None        # others may finish it now
                self._release(peer, req)
                pst.avoid[req] = now + self.request_timeout
                expired.append((peer, req))
            if peer not in self._banned:
                self._rate_sum -= pst.rate * (1 - TIMEOUT_PENALTY)
            pst.rate *= TIMEOUT_PENALTY
            pst.timeouts += 1
        return expired

    def timeout_for(self, peer: Peer) -> float:
        """Seconds a request to ``peer`` may stay outstanding before :meth:`expire`.

        ``TIMEOUT_SLACK`` times the time the peer needs, at its measured rate,
        to send everything outstanding at it; clamped to
        [request_timeout/2, request_timeout*4]; ``request_timeout`` while its
        rate is unknown.
        """
        pst = self._peers.get(peer)
        base = self.request_timeout
        if pst is None or pst.samples == 0 or pst.rate <= 0:
            return base
        queued = sum(req.length for req in pst.outstanding) or self.block_size
        queue_time = queued / pst.rate
        return min(max(TIMEOUT_SLACK * queue_time, base * TIMEOUT_MIN_FACTOR),
                   base * TIMEOUT_MAX_FACTOR)

    # ----------------------------------------------------------- verification

    def piece_verified(self, index: int) -> None:
        """Piece ``index`` passed its hash (or was found good on disk): we have it."""
        self._check_index(index)
        state = self._state[index]
        if state == _HAVE:
            return
        if state == _FRESH:
            self._bucket_remove(index)
            self._fresh_count -= 1
        elif state == _STARTED:
            # Not the normal path (that is PENDING): forget requests for it;
            # their blocks will arrive unaccepted.
            part = self._started.pop(index)
            self._open.pop(index, None)
            for req, holders in part.requested.items():
                for holder in holders:
                    del self._peers[holder].outstanding[req]
        else:
            del self._pending[index]
        self._state[index] = _HAVE
        self._have.add(index)
        self._have_frozen = None
        self._verified_bytes += self.piece_length(index)
        for pst in self._peers.values():
            if index in pst.have:
                pst.needed -= 1

    def piece_failed(self, index: int) -> List[Peer]:
        """Piece ``index`` failed its hash: fetch it all again; return peers newly banned.

        Ignored (returns []) unless the piece is pending verification. Who
        sent which of its blocks goes to :attr:`evidence`
        (:meth:`BanEvidence.piece_failed <mbt.peer.evidence.BanEvidence.piece_failed>`
        says how suppliers are judged). A peer with a strike is on probation:
        it fetches whole pieces alone (see :meth:`next_requests`). A banned
        peer's outstanding requests return to the pool; a cleared peer's
        pieces are open to others again.
        """
        self._check_index(index)
        if self._state[index] != _PENDING:
            return []
        part = self._pending.pop(index)
        self._state[index] = _FRESH
        self._fresh_count += 1
        self._bucket_add(index)
        verdict = self.evidence.piece_failed(part.received)
        for peer in verdict.cleared:
            self._disown(peer)                  # off probation
        for peer in verdict.banned:
            self._ban(peer)
        return verdict.banned

    # ---------------------------------------------------------------- queries

    def is_banned(self, peer: Peer) -> bool:
        """Whether ``peer`` is banned for this download."""
        return peer in self._banned

    def strikes(self, peer: Peer) -> int:
        """Strikes ``peer`` got for failed pieces it shared with other suppliers."""
        return self.evidence.strikes(peer)

    def interesting(self, peer: Peer) -> bool:
        """Whether ``peer`` has a piece we have not verified yet (and is not banned)."""
        pst = self._peers.get(peer)
        return pst is not None and pst.needed > 0 and peer not in self._banned

    def outstanding(self, peer: Peer) -> int:
        """Number of requests outstanding at ``peer``."""
        pst = self._peers.get(peer)
        return len(pst.outstanding) if pst is not None else 0

    def peer_rate(self, peer: Peer) -> float:
        """Measured throughput of ``peer`` in bytes/s (EWMA), 0.0 if unknown."""
        pst = self._peers.get(peer)
        return pst.rate if pst is not None else 0.0

    @property
    def endgame(self) -> bool:
        """True once no peer could start a new piece: requests may be duplicated."""
        return not self.done and not self._fresh_available()

    @property
    def done(self) -> bool:
        """Every piece is verified (at once for an empty file)."""
        return len(self._have) == self._n

    @property
    def have(self) -> frozenset:
        """The verified pieces."""
        if self._have_frozen is None:
            self._have_frozen = frozenset(self._have)
        return self._have_frozen

    def in_flight(self) -> Set[int]:
        """Pieces started but not yet verified (blocks requested or awaiting the hash check)."""
        return set(self._started) | set(self._pending)

    @property
    def piece_count(self) -> int:
        """Number of pieces of the file."""
        return self._n

    @property
    def verified_bytes(self) -> int:
        """Total length of the verified pieces."""
        return self._verified_bytes

    def availability(self, index: int) -> int:
        """Number of connected, non-banned peers that have piece ``index``."""
        return self._avail[index]

    def piece_length(self, index: int) -> int:
        """Length of piece ``index`` (the last one may be shorter)."""
        return _piece_length(index, self.size, self.piece_size)

    # --------------------------------------------------------------- internal

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self._n:
            raise IndexError("piece index %r out of range" % (index,))

    def _blocks(self, index: int, bs: int) -> List[BlockRequest]:
        length = self.piece_length(index)
        return [BlockRequest(index, off, min(bs, length - off)) for off in range(0, length, bs)]

    def _add_have(self, peer: Peer, pst: _Peer, index: int) -> None:
        if not 0 <= index < self._n or index in pst.have:
            return
        pst.have.add(index)
        if self._state[index] != _HAVE:
            pst.needed += 1
        if peer not in self._banned:
            self._change_avail(index, +1)

    def _change_avail(self, index: int, delta: int) -> None:
        if self._state[index] == _FRESH:
            self._bucket_remove(index)
            self._avail[index] += delta
            self._bucket_add(index)
        else:
            self._avail[index] += delta

    def _bucket_add(self, index: int) -> None:
        a = self._avail[index]
        while len(self._buckets) <= a:
            self._buckets.append([])
        insort(self._buckets[a], self._rank[index])

    def _bucket_remove(self, index: int) -> None:
        bucket = self._buckets[self._avail[index]]
        del bucket[bisect_left(bucket, self._rank[index])]

    def _fresh_available(self) -> int:
        """FRESH pieces at least one usable peer has (bucket 0: nobody has them)."""
        return self._fresh_count - len(self._buckets[0])

    def _rivals(self, peer: Peer, pst: _Peer) -> List[_Peer]:
        """Faster active peers a too-slow ``peer`` leaves new pieces to (usually none).

        ``peer`` is too slow once it would need longer to fetch one piece than
        the whole swarm needs for everything still missing: a piece it started
        would then be the last to finish. A peer whose rate is unknown is given
        the benefit of the doubt unless it has just timed out.
        """
        if pst.samples == 0 and pst.timeouts == 0:
            return []
        missing = self.size - self._verified_bytes
        if pst.rate * missing >= self.piece_size * self._rate_sum:
            return []
        return [q for other, q in self._peers.items()
                if q is not pst and q.outstanding and q.rate > pst.rate
                and other not in self._banned]

    def _pick_fresh(self, pst: _Peer, rivals: List[_Peer]) -> Optional[int]:
        """The FRESH piece ``pst`` should start, or None. See the module docstring."""
        have, state = pst.have, self._state
        if rivals:
            def eligible(i: int) -> bool:
                return i in have and not any(i in q.have for q in rivals)
        else:
            eligible = have.__contains__
        if len(self._have) < self.random_first:
            candidates = [i for i in sorted(have) if state[i] == _FRESH and eligible(i)]
            return self._rng.choice(candidates) if candidates else None
        # Walk the FRESH pieces rarest first (bucket 0 is held by nobody). For a
        # seed the answer is the first piece looked at; for a peer with few
        # pieces, scanning its own pieces is cheaper, so the walk gets a budget
        # of len(have) steps: the cost is at most twice the cheaper of the two.
        budget = len(have)
        by_rank = self._by_rank
        for bucket in self._buckets[1:]:
            for r in bucket:
                i = by_rank[r]
                if eligible(i):
                    return i
                budget -= 1
                if budget <= 0:
                    return self._rarest_of(have, eligible)
        return None

    def _rarest_of(self, have: Set[int], eligible) -> Optional[int]:
        """The eligible FRESH piece of ``have`` with the lowest (availability, rank)."""
        state, avail, rank, n = self._state, self._avail, self._rank, self._n
        best, best_key = None, None
        for i in have:
            if state[i] == _FRESH and eligible(i):
                key = avail[i] * n + rank[i]
                if best_key is None or key < best_key:
                    best, best_key = i, key
        return best

    def _start(self, index: int, owner: Optional[Peer], block_size: int) -> None:
        self._bucket_remove(index)
        self._fresh_count -= 1
        self._state[index] = _STARTED
        self._started[index] = _Partial(self._blocks(index, block_size), owner)
        self._open[index] = None

    def _may_take(self, index: int, peer: Peer, alone: bool) -> bool:
        """Whether ``peer`` may take open blocks of started piece ``index`` in step 1.

        Pieces a peer on probation fetches alone are its own; a peer on
        probation claims a piece nobody else has supplied or been asked for.
        """
        part = self._started[index]
        if part.owner is not None:
            return part.owner == peer
        if not alone:
            return True
        if all(s == peer for s in part.received.values()) and all(
                len(h) == 1 and peer in h for h in part.requested.values()):
            part.owner = peer
            return True
        return False

    def _avoids(self, pst: _Peer, req: BlockRequest, now: float) -> bool:
        until = pst.avoid.get(req)
        if until is None:
            return False
        if until <= now:
            del pst.avoid[req]
            return False
        return True

    def _take(self, index: int, peer: Peer, pst: _Peer, want: int, now: float,
              out: List[BlockRequest]) -> None:
        """Move up to ``want`` unrequested blocks of a started piece to ``peer``."""
        part = self._started[index]
        keep = []
        for req in part.unrequested:
            if want > 0 and not (pst.avoid and self._avoids(pst, req, now)):
                part.requested[req] = {peer: now}
                pst.outstanding[req] = now
                out.append(req)
                want -= 1
            else:
                keep.append(req)
        part.unrequested = keep
        if not keep:
            self._open.pop(index, None)

    def _endgame(self, peer: Peer, pst: _Peer, want: int, now: float,
                 out: List[BlockRequest]) -> None:
        """Duplicate blocks outstanding elsewhere: fewest copies, then oldest request."""
        candidates = []
        for index, part in self._started.items():
            if index not in pst.have or part.owner is not None:
                continue
            for req, holders in part.requested.items():
                if peer in holders or (pst.avoid and self._avoids(pst, req, now)):
                    continue
                candidates.append((len(holders), min(holders.values()), req))
        candidates.sort()
        for _, _, req in candidates[:want]:
            self._started[req.index].requested[req][peer] = now
            pst.outstanding[req] = now
            out.append(req)

    def _release(self, peer: Peer, req: BlockRequest) -> None:
        """``req`` is no longer outstanding at ``peer``; if no copy is left, re-pool it."""
        part = self._started[req.index]
        holders = part.requested[req]
        del holders[peer]
        if not holders:
            del part.requested[req]
            insort(part.unrequested, req)
            self._open[req.index] = None

    def _measure(self, peer: Peer, pst: _Peer, sent: float, length: int, now: float) -> None:
        # A block's service time starts when it was requested or when the
        # previous block from this peer arrived, whichever is later: with a
        # pipeline, requests wait in the peer's queue behind each other.
        start = max(sent, pst.last_arrival)
        sample = length / max(now - start, MIN_SAMPLE_INTERVAL)
        pst.last_arrival = now
        old = pst.rate
        pst.rate = sample if pst.samples == 0 else old + RATE_ALPHA * (sample - old)
        pst.samples += 1
        if peer not in self._banned:
            self._rate_sum += pst.rate - old

    def _recount_rates(self) -> None:
        self._rate_sum = sum(q.rate for p, q in self._peers.items() if p not in self._banned)

    def _ban(self, peer: Peer) -> None:
        """``peer`` was just banned (by the evidence): stop counting and asking it."""
        self._disown(peer)
        pst = self._peers.get(peer)
        if pst is None:
            return
        for index in pst.have:
            self._change_avail(index, -1)
        for req in list(pst.outstanding):
            del pst.outstanding[req]
            self._release(peer, req)
        self._recount_rates()

    def _disown(self, peer: Peer) -> None:
        """Let other peers help with the pieces ``peer`` was fetching alone."""
        for part in self._started.values():
            if part.owner is not None and part.owner == peer:
                part.owner = None
