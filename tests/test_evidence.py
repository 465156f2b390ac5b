"""mbt.peer.evidence.BanEvidence: judging the suppliers of pieces that failed their hash (pure)."""

from mbt.peer.evidence import STRIKES_TO_BAN, BanEvidence, Verdict
from mbt.peer.picker import BlockRequest


def blocks(*suppliers):
    """A failed piece's record: block i was accepted from suppliers[i]."""
    return {BlockRequest(0, i * 10, 10): s for i, s in enumerate(suppliers)}


def test_a_sole_supplier_is_banned_at_once_however_many_blocks_it_sent():
    ev = BanEvidence()
    assert ev.piece_failed(blocks("L", "L", "L")) == Verdict(banned=["L"])
    assert ev.is_banned("L") and ev.strikes("L") == 0 and not ev.on_probation("L")
    assert ev.piece_failed(blocks("L")) == Verdict()        # already banned: nothing new


def test_shared_failure_strikes_every_supplier_and_puts_them_on_probation():
    ev = BanEvidence()
    assert ev.piece_failed(blocks("L", "H", "L")) == Verdict()
    assert ev.strikes("L") == ev.strikes("H") == 1
    assert ev.on_probation("L") and ev.on_probation("H") and not ev.on_probation("X")
    assert not ev.banned


def test_second_strike_bans_and_clears_the_partner_of_the_first_failure():
    ev = BanEvidence()
    ev.piece_failed(blocks("L", "H"))
    verdict = ev.piece_failed(blocks("L", "K"))
    assert verdict == Verdict(banned=["L"], cleared=["H", "K"])
    assert ev.strikes("H") == ev.strikes("K") == 0 and not ev.on_probation("H")


def test_the_same_suspects_failing_again_is_no_new_evidence():
    ev = BanEvidence()
    ev.piece_failed(blocks("A", "B"))
    assert ev.piece_failed(blocks("B", "A", "B")) == Verdict()
    assert ev.strikes("A") == ev.strikes("B") == 1


def test_a_failure_with_a_banned_supplier_is_explained_by_it():
    ev = BanEvidence()
    ev.piece_failed(blocks("L"))
    assert ev.piece_failed(blocks("L", "H")) == Verdict()
    assert ev.strikes("H") == 0


def test_two_unexplained_shared_failures_ban_both_partners_together():
    ev = BanEvidence()
    ev.piece_failed(blocks("A", "B"))
    ev.piece_failed(blocks("A", "B", "C"))      # a superset of an unexplained failure: no strikes
    assert ev.strikes("C") == 0
    ev2 = BanEvidence()
    ev2.piece_failed(blocks("A", "B"))
    ev2.piece_failed(blocks("B", "A"))
    assert ev2.strikes("A") == 1                # same suspects: still one strike each
    ev3 = BanEvidence(strikes_to_ban=1)
    assert ev3.piece_failed(blocks("A", "B")) == Verdict(banned=["A", "B"])   # they do not clear each other


def test_the_threshold_is_a_parameter():
    assert STRIKES_TO_BAN == 2
    ev = BanEvidence(strikes_to_ban=3)
    ev.piece_failed(blocks("L", "A"))
    ev.piece_failed(blocks("L", "B"))
    assert not ev.banned and ev.strikes("L") == 2
    assert ev.piece_failed(blocks("L", "C")).banned == ["L"]


def test_the_picker_owns_its_evidence():
    from mbt.manifest import PIECE_SIZE
    from mbt.peer.picker import PiecePicker
    p = PiecePicker(PIECE_SIZE)
    assert isinstance(p.evidence, BanEvidence)
    p.add_peer("L", [0])
    for req in p.next_requests("L", 10, now=0):
        p.block_received("L", req.index, req.offset, req.length, now=1)
    assert p.piece_failed(0) == ["L"]
    assert p.evidence.is_banned("L") and p.is_banned("L")
    assert p.next_requests("L", 10, now=2) == []
