"""Membership events: what a logged-in user is told, unasked, when others act.

When an owner accepts or rejects a join request, or a leaving owner hands a
group on, the user concerned may be logged in through any tracker. Every
tracker applies every durable operation (:mod:`mbt.tracker.replication`), so
each one derives the events of an operation *as it applies it live* and pushes
them to the sessions of its own connections; the user's tracker is always one
of them, whichever tracker the acting owner used. Replays (loading the store,
rebuilding after a repair) push nothing.

Pure: :func:`membership_events` maps an applied operation and its result to
``(user, event)`` pairs; the event dicts go on the wire as they are (see
``docs/protocol.rst``, "Events").
"""

from __future__ import annotations

from typing import List, Tuple


def membership_events(op: dict, result: dict) -> List[Tuple[str, dict]]:
    """The events an applied operation causes, as ``(user to tell, event)``."""
    kind = op.get("op")
    if not isinstance(result, dict):
        return []
    group = result.get("group")
    if kind == "accept_request":
        return [(op["user"], {"push": "membership", "kind": "accepted", "group": group, "by": op["owner"]})]
    if kind == "reject_request":
        return [(op["user"], {"push": "membership", "kind": "rejected", "group": group, "by": op["owner"]})]
    if kind == "join_group":
        return [(result["owner"], {"push": "membership", "kind": "requested", "group": group,
                                   "user": op["user"]})]
    if kind == "leave_group" and result.get("was_owner") and not result.get("deleted"):
        return [(result["owner"], {"push": "membership", "kind": "owner", "group": group, "by": op["user"]})]
    return []
