"""Snapshots of a :class:`~mbt.tracker.state.TrackerState`: to and from plain JSON.

A snapshot holds the durable state (accounts, groups, requests, files) and,
when asked, the sessions. Loading a snapshot and applying the operations that
followed it gives the same state as replaying the whole history, so start-up
does not grow with history. :func:`ops_for` goes the other way: a short list
of ordinary operations that rebuild a state from nothing (used to export a
PostgreSQL-backed fleet to an SQLite state dir); applying them goes through
:meth:`TrackerState.apply`, so the state's rules are checked once more.
"""

from __future__ import annotations

import json
from typing import List, Optional

from mbt.manifest import Manifest
from mbt.tracker.state import Group, Session, TrackerState

FORMAT = 1


def dump(state: TrackerState, sessions: bool = False) -> dict:
    """The state as a JSON-ready dict (sessions only if ``sessions``)."""
    out = {
        "format": FORMAT,
        "users": state.users,
        "groups": [[g.group_id, g.owner, g.members, g.requests]
                   for g in state.groups.values()],
        "files": [[gid, entry.manifest.to_dict(), sorted(entry.sharers)]
                  for (gid, _name), entry in state.files.items()],
    }
    if sessions:
        out["sessions"] = [[s.session_id, s.user, s.address, sorted(s.shares), s.origin]
                           for s in state.sessions.values()]
    return out


def dumps(state: TrackerState, sessions: bool = False) -> str:
    """:func:`dump` as compact JSON text."""
    return json.dumps(dump(state, sessions), separators=(",", ":"))


def _trusted_manifest(data: dict) -> Manifest:
    return Manifest(name=data["name"], size=data["size"], file_hash=data["file_hash"],
                    piece_hashes=tuple(data["piece_hashes"]), piece_size=data["piece_size"])


def restore(state: TrackerState, data: dict, checked: bool = True) -> None:
    """Replace ``state``'s durable part (and sessions, if the snapshot has them) by ``data``.

    ``checked=False`` skips validating every manifest again: for a snapshot
    this tracker's own store kept (checksummed; its manifests were validated
    when they were shared), where that is most of a start-up's time.
    """
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError("not a tracker snapshot of format %d" % FORMAT)
    state.reset_durable()
    state.users.update(data["users"])
    for gid, owner, members, requests in data["groups"]:
        state.groups[gid] = Group(gid, owner, list(members), list(requests))
    manifest_of = Manifest.from_dict if checked else _trusted_manifest
    for gid, manifest, sharers in data["files"]:
        state.add_file(gid, manifest_of(manifest), sharers)
    if "sessions" in data:
        state.sessions.clear()
        for sid, user, address, shares, origin in data["sessions"]:
            state.sessions[sid] = Session(sid, user, address, {tuple(k) for k in shares}, origin)


def loads(state: TrackerState, text: str, checked: bool = True) -> None:
    """:func:`restore` from JSON text."""
    restore(state, json.loads(text), checked)


def reset_to(state: TrackerState, text: Optional[str]) -> None:
    """Make ``state``'s durable part that of a snapshot text from this tracker's own
    store (None: the empty state)."""
    if text is None:
        state.reset_durable()
    else:
        loads(state, text, checked=False)


def ops_for(state: TrackerState) -> List[dict]:
    """Operations that rebuild ``state``'s durable part from an empty state.

    The owner of a group is always its oldest member (``members[0]``), so
    creating the group as that member and accepting the others in join order
    gives the same members, owner and requests.
    """
    ops: List[dict] = []
    for user in sorted(state.users):
        ops.append({"op": "create_user", "user": user, "password_record": state.users[user]})
    for gid in sorted(state.groups):
        g = state.groups[gid]
        first = g.owner if g.owner in g.members else g.members[0]
        ops.append({"op": "create_group", "user": first, "group": gid})
        for member in g.members:
            if member != first:
                ops.append({"op": "join_group", "user": member, "group": gid})
                ops.append({"op": "accept_request", "owner": first, "group": gid, "user": member})
        for user in g.requests:
            ops.append({"op": "join_group", "user": user, "group": gid})
    for (gid, _name), entry in sorted(state.files.items()):
        for user in sorted(entry.sharers):
            ops.append({"op": "share_file", "user": user, "group": gid,
                        "manifest": entry.manifest.to_dict()})
    return ops
