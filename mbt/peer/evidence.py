"""Ban evidence: who supplied the blocks of pieces that failed their hash, and the verdicts.

Pure and deterministic, owned by the :class:`~mbt.peer.picker.PiecePicker`
(one per download). Like libtorrent's ``smart_ban``, the evidence starts
from which peer sent which block of a failed piece (the picker hands over
its ``block -> supplier`` record of the piece); unlike ``smart_ban`` it does
not hash blocks, so it cannot tell which block was bad and judges the
suppliers of a failed piece together:

* a sole supplier is banned at once;
* if a supplier is already banned, it explains the failure: no strikes;
* if the suppliers include all those of an earlier shared failure not yet
  explained, the same suspects explain it: no new strikes;
* otherwise each supplier gets a strike and is banned at ``strikes_to_ban``.
  A peer with a strike is *on probation* (the picker has it fetch whole
  pieces alone, so that its next bad piece convicts it without doubt).

When a peer is banned, the strikes its co-suppliers got from failures it
took part in are withdrawn; a peer whose last strike goes is *cleared* (off
probation). Bans and strikes last for the download, across reconnects.
``docs/piece-selection.rst`` is the full specification.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Hashable, List, Mapping, Set

Peer = Hashable

#: Strikes (failed pieces shared with other suppliers) that ban a peer.
STRIKES_TO_BAN = 2


@dataclass
class Verdict:
    """What one failed piece changed: peers newly ``banned`` (in supplier order,
    banned together) and peers ``cleared`` (their last strike was withdrawn)."""

    banned: List[Peer] = field(default_factory=list)
    cleared: List[Peer] = field(default_factory=list)


class BanEvidence:
    """Strikes, bans and the unexplained shared failures of one download."""

    def __init__(self, strikes_to_ban: int = STRIKES_TO_BAN) -> None:
        self.strikes_to_ban = strikes_to_ban
        #: Banned peers (read by the picker on its hot paths; changed only here).
        self.banned: Set[Peer] = set()
        self._strikes: Dict[Peer, int] = {}
        self._unexplained: List[frozenset] = []     # supplier sets of shared failures

    def is_banned(self, peer: Peer) -> bool:
        """Whether ``peer`` is banned."""
        return peer in self.banned

    def strikes(self, peer: Peer) -> int:
        """Strikes ``peer`` got for failed pieces it shared with other suppliers."""
        return self._strikes.get(peer, 0)

    def on_probation(self, peer: Peer) -> bool:
        """Whether ``peer`` has a strike (and so should fetch whole pieces alone)."""
        return peer in self._strikes

    def piece_failed(self, received: Mapping[object, Peer]) -> Verdict:
        """Judge the suppliers of a piece that failed its hash.

        ``received`` maps each block of the piece to the peer whose copy was
        accepted (the same peer may appear for several blocks).
        """
        suppliers = list(dict.fromkeys(received.values()))
        group = frozenset(suppliers)
        verdict = Verdict()
        if not suppliers:
            return verdict
        if len(suppliers) == 1:
            culprits = suppliers
        elif group & self.banned or any(earlier <= group for earlier in self._unexplained):
            culprits = []
        else:
            self._unexplained.append(group)
            for s in suppliers:
                self._strikes[s] = self._strikes.get(s, 0) + 1
            culprits = [s for s in suppliers if self._strikes[s] >= self.strikes_to_ban]
        verdict.banned = [s for s in culprits if s not in self.banned]
        self.banned.update(verdict.banned)      # banned together: they do not clear each other
        for s in verdict.banned:
            self._strikes.pop(s, None)
            # Failures it took part in are explained: withdraw its co-suppliers' strikes.
            for earlier in [g for g in self._unexplained if s in g]:
                self._unexplained.remove(earlier)
                for other in earlier - self.banned:
                    self._strikes[other] -= 1
                    if not self._strikes[other]:
                        del self._strikes[other]
                        verdict.cleared.append(other)
        return verdict
