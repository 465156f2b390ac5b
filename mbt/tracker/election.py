"""Who leads: the decision one tracker takes from what its links report. Pure.

Roles:

* ``leading`` -- sequences every write;
* ``following`` -- in sync with the leader, serving under a lease;
* ``syncing`` -- (re)starting, dropped, or catching up from a leader;
* ``electing`` -- was following, lost its leader, waits for a new one.

Rules (``docs/replication.rst`` 2.3): leadership is sticky; a tracker
without a leader follows any visible leader (the lowest-numbered if several);
nobody starts an election while a linked tracker still follows a leader we
cannot see; a syncing tracker waits for the startup grace (or until every
tracker of its info file is linked) before an election; the election goes to
the longest log, ties to the lowest number; of two leaders that meet, the
lower-numbered one stays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Tuple

SYNCING, ELECTING, FOLLOWING, LEADING = "syncing", "electing", "following", "leading"
ROLES = (SYNCING, ELECTING, FOLLOWING, LEADING)

# What to do next (with the tracker number it concerns, if any).
STAY = "stay"                   # nothing to change
STEP_DOWN = "step_down"         # another, lower-numbered leader: follow it
LOST_LEADER = "lost_leader"     # our leader's link is gone: electing
LEADER_LEFT = "leader_left"     # our leader stopped leading: syncing
DROP_TARGET = "drop_target"     # the tracker we were catching up from no longer leads
FOLLOW = "follow"               # catch up from this leader, then follow it
LEAD = "lead"                   # take the lead


@dataclass(frozen=True)
class Me:
    """This tracker as the decision sees it."""

    number: int
    role: str
    leader: Optional[int]
    sync_target: Optional[int]
    head: int
    grace_over: bool


@dataclass(frozen=True)
class Other:
    """A linked tracker, as its last status message described it."""

    number: int
    role: str
    leader: Optional[int]       # whom it follows or catches up from (itself if leading)
    head: int


def decide(me: Me, others: Iterable[Other]) -> Tuple[str, Optional[int]]:
    """The next step for ``me``; apply it and decide again until STAY."""
    others = list(others)
    linked = {o.number: o for o in others}
    if me.role == LEADING:
        rivals = [o.number for o in others if o.role == LEADING and o.number < me.number]
        return (STEP_DOWN, min(rivals)) if rivals else (STAY, None)
    if me.role == FOLLOWING:
        leader = linked.get(me.leader)
        if leader is None:
            return LOST_LEADER, me.leader
        if leader.role != LEADING:
            return LEADER_LEFT, me.leader
        return STAY, None
    if me.sync_target is not None:
        target = linked.get(me.sync_target)
        if target is not None and target.role == LEADING:
            return STAY, None               # catching up from it
        return DROP_TARGET, me.sync_target
    leaders = [o.number for o in others if o.role == LEADING]
    if leaders:
        return FOLLOW, min(leaders)
    if any(o.leader is not None and o.leader != me.number and o.leader not in linked for o in others):
        return STAY, None       # it follows a leader we cannot see (yet): do not start a second one
    if me.role == SYNCING and not me.grace_over:
        return STAY, None
    candidates = [(me.head, -me.number)]
    candidates += [(o.head, -o.number) for o in others if o.role in (SYNCING, ELECTING) and o.leader is None]
    if max(candidates) == (me.head, -me.number):
        return LEAD, None
    return STAY, None           # a better candidate will take the lead
