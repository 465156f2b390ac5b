"""The tracker's state: accounts, groups, join requests, the file registry, presence.

Pure logic, no I/O. Durable changes are *operations* (plain JSON-ready dicts)
applied by :meth:`TrackerState.apply`: it validates the operation against the
current state and either raises an :class:`MbtError` leaving the state untouched,
or mutates the state and returns a result. Replaying the same operations in the
same order always rebuilds the same state, which is what the store (durability)
and replication between trackers rely on.

Presence (who is logged in right now, from which peer address, announcing which
files) is not durable: it lives in :class:`Session` objects that disappear when
their connection does. With several trackers, sessions held by another tracker
are mirrored here too (``origin`` is that tracker's number; see
:mod:`mbt.tracker.presence`), so queries list peers whichever tracker they use.

Rules worth knowing:

* A group's ``members`` list is kept in join order; the owner is a member.
* When the owner leaves, the oldest remaining member becomes owner; when the
  last member leaves, the group and its file registry are deleted.
* A member leaving a group stops sharing every file in that group; a file with
  no sharer left disappears from the registry.
* A file is registered under its name in a group; the same name with the same
  whole-file hash adds a sharer, a different hash is a ``file_conflict``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Set, Tuple

from mbt.errors import (AlreadyMember, AlreadyRequested, FileConflict, GroupExists, InvalidArgument, NoSuchFile,
                        NoSuchGroup, NoSuchRequest, NoSuchUser, NotMember, NotOwner, NotSharing, UnknownOp,
                        UserExists, check_file_name, check_id)
from mbt.manifest import Manifest


@dataclass
class Group:
    """A group: owner, members in join order, pending requests in request order."""

    group_id: str
    owner: str
    members: List[str] = field(default_factory=list)
    requests: List[str] = field(default_factory=list)


@dataclass
class SharedFile:
    """A file registered in a group, with the users that share it (durably)."""

    manifest: Manifest
    sharers: Set[str] = field(default_factory=set)


@dataclass
class Session:
    """A logged-in connection: who, from which peer address, announcing what."""

    session_id: str
    user: str
    address: str
    shares: Set[Tuple[str, str]] = field(default_factory=set)  # (group, name)
    origin: int = 0     # 0: a connection to this tracker; else the tracker that holds it
    #: Another tracker's session: did its tracker find the address accepting? (None: unknown)
    reachable: Optional[bool] = None


class _Watched(dict):
    """A dict that tells its state whenever an entry is put in or taken out.

    The state's query caches (:meth:`TrackerState.list_files`,
    :meth:`TrackerState.get_peers`) are only valid while nothing changed;
    code outside this module (snapshots, the fleet) puts sessions and files in
    and takes them out directly, so the containers themselves report it.
    """

    __slots__ = ("_changed",)

    def __init__(self, changed) -> None:
        super().__init__()
        self._changed = changed

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self._changed(value)

    def __delitem__(self, key) -> None:
        super().__delitem__(key)
        self._changed(None)

    def pop(self, *args):
        value = super().pop(*args)
        self._changed(None)
        return value

    def popitem(self):
        item = super().popitem()
        self._changed(None)
        return item

    def clear(self) -> None:
        super().clear()
        self._changed(None)

    def update(self, *args, **kwargs) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]


class TrackerState:
    """Accounts, groups, requests and files (durable) plus sessions (ephemeral).

    Queries that peers make all the time (``list_files``, ``get_peers``) do
    not scan the sessions: ``_sharing`` maps each (group, file) to the sessions
    that may be announcing it (a superset, checked and pruned when read), and
    each group's listing and each file's peer list are cached until anything
    they depend on changes (``_version``).
    """

    def __init__(self) -> None:
        self.users: Dict[str, str] = {}            # user id -> password record
        self.groups: Dict[str, Group] = {}
        self.files: Dict[Tuple[str, str], SharedFile] = _Watched(self._files_changed)
        self.sessions: Dict[str, Session] = _Watched(self._session_put)
        #: group -> names of its registered files (so leaving a group does not scan every file).
        self._names_by_group: Dict[str, Set[str]] = {}
        #: (group, name) -> {session id: session} that announced it (maybe stale: checked when read).
        self._sharing: Dict[Tuple[str, str], Dict[str, Session]] = {}
        #: Bumped by every change a listing depends on; the caches below hold it.
        self._version = 0
        self._listing: Dict[str, Tuple[int, List[dict]]] = {}
        self._peers: Dict[Tuple[str, str], Tuple[int, List[Session], dict]] = {}

    # ------------------------------------------------------------------
    # indexes and caches

    def _files_changed(self, _entry) -> None:
        self._version += 1

    def _session_put(self, session: Optional[Session]) -> None:
        self._version += 1
        if session is not None:
            for key in session.shares:
                self._sharing.setdefault(key, {})[session.session_id] = session

    def _announced(self, session: Session, key: Tuple[str, str]) -> None:
        """``session`` now announces ``key`` (already added to its shares)."""
        self._version += 1
        self._sharing.setdefault(key, {})[session.session_id] = session

    def _sharing_sessions(self, key: Tuple[str, str]) -> List[Session]:
        """The live sessions announcing ``key`` (whatever their user's registration); prunes stale entries."""
        index = self._sharing.get(key)
        if not index:
            return []
        live = []
        stale = []
        sessions = self.sessions
        for sid, s in index.items():
            if sessions.get(sid) is s and key in s.shares:
                live.append(s)
            else:
                stale.append(sid)
        for sid in stale:
            del index[sid]
        if not index:
            del self._sharing[key]
        return live

    # ------------------------------------------------------------------
    # durable operations

    def apply(self, op: dict) -> dict:
        """Validate and apply one durable operation; return its result dict.

        Raises MbtError (and changes nothing) when the operation is not valid
        in the current state.
        """
        name = op.get("op") if isinstance(op, dict) else None
        handler = getattr(self, "_op_" + name, None) if isinstance(name, str) else None
        if handler is None:
            raise UnknownOp("unknown operation %r" % (name,))
        return handler(op)

    def reset_durable(self) -> None:
        """Forget accounts, groups and files (sessions stay): before replaying a log."""
        self.users.clear()
        self.groups.clear()
        self.files.clear()
        self._names_by_group.clear()

    def add_file(self, group: str, manifest: Manifest, sharers) -> None:
        """Register a file with its sharers as they are (restoring a snapshot)."""
        self.files[(group, manifest.name)] = SharedFile(manifest, set(sharers))
        self._names_by_group.setdefault(group, set()).add(manifest.name)

    def _file_keys(self, group: str) -> List[Tuple[str, str]]:
        return [(group, name) for name in sorted(self._names_by_group.get(group, ()))]

    def _op_create_user(self, op: dict) -> dict:
        user = check_id("user id", op.get("user"))
        record = op.get("password_record")
        if not isinstance(record, str) or not record:
            raise InvalidArgument("missing password record")
        if user in self.users:
            raise UserExists("user %s already exists" % user)
        self.users[user] = record
        return {"user": user}

    def _op_create_group(self, op: dict) -> dict:
        user = self._known_user(op.get("user"))
        group = check_id("group id", op.get("group"))
        if group in self.groups:
            raise GroupExists("group %s already exists" % group)
        self.groups[group] = Group(group, owner=user, members=[user])
        return {"group": group, "owner": user}

    def _op_join_group(self, op: dict) -> dict:
        user = self._known_user(op.get("user"))
        g = self._group(op.get("group"))
        if user in g.members:
            raise AlreadyMember("you are already a member of group %s" % g.group_id)
        if user in g.requests:
            raise AlreadyRequested(
                "you already asked to join group %s; wait for its owner %s to accept"
                % (g.group_id, g.owner))
        g.requests.append(user)
        return {"group": g.group_id, "owner": g.owner}

    def _op_leave_group(self, op: dict) -> dict:
        user = self._known_user(op.get("user"))
        g = self._group(op.get("group"))
        if user not in g.members:
            if user in g.requests:
                g.requests.remove(user)     # leaving withdraws a pending request
                return {"group": g.group_id, "withdrawn": True}
            raise NotMember("you are not a member of group %s" % g.group_id)
        g.members.remove(user)
        for key in self._file_keys(g.group_id):
            self._drop_sharer(key, user)
        result = {"group": g.group_id, "deleted": False, "owner": g.owner, "was_owner": g.owner == user}
        if not g.members:
            del self.groups[g.group_id]
            for key in self._file_keys(g.group_id):
                del self.files[key]
            self._names_by_group.pop(g.group_id, None)
            result["deleted"] = True
            result["owner"] = None
        elif g.owner == user:
            g.owner = g.members[0]          # the oldest remaining member
            result["owner"] = g.owner
        return result

    def _op_accept_request(self, op: dict) -> dict:
        g = self._owned_group(op.get("owner"), op.get("group"))
        user = check_id("user id", op.get("user"))
        if user not in g.requests:
            raise NoSuchRequest("%s has no pending request to join group %s"
                                % (user, g.group_id))
        g.requests.remove(user)
        g.members.append(user)
        return {"group": g.group_id, "user": user}

    def _op_reject_request(self, op: dict) -> dict:
        g = self._owned_group(op.get("owner"), op.get("group"))
        user = check_id("user id", op.get("user"))
        if user not in g.requests:
            raise NoSuchRequest("%s has no pending request to join group %s"
                                % (user, g.group_id))
        g.requests.remove(user)
        return {"group": g.group_id, "user": user}

    def _op_share_file(self, op: dict) -> dict:
        user = self._known_user(op.get("user"))
        g = self._member_group(user, op.get("group"))
        manifest = Manifest.from_dict(op.get("manifest"))
        key = (g.group_id, manifest.name)
        entry = self.files.get(key)
        if entry is None:
            entry = self.files[key] = SharedFile(manifest)
            self._names_by_group.setdefault(g.group_id, set()).add(manifest.name)
        elif entry.manifest.file_hash != manifest.file_hash or entry.manifest.size != manifest.size:
            raise FileConflict(
                "group %s already has a different file named %s; rename yours to share it"
                % (g.group_id, manifest.name))
        if user not in entry.sharers:
            entry.sharers.add(user)
            self._version += 1
        return {"group": g.group_id, "name": manifest.name, "size": manifest.size,
                "pieces": manifest.pieces, "sharers": len(entry.sharers)}

    def _op_stop_share(self, op: dict) -> dict:
        user = self._known_user(op.get("user"))
        g = self._member_group(user, op.get("group"))
        name = check_file_name(op.get("name"))
        entry = self.files.get((g.group_id, name))
        if entry is None or user not in entry.sharers:
            raise NotSharing("you do not share %s in group %s" % (name, g.group_id))
        self._drop_sharer((g.group_id, name), user)
        return {"group": g.group_id, "name": name}

    def _drop_sharer(self, key: Tuple[str, str], user: str) -> None:
        entry = self.files.get(key)
        if entry is None:
            return
        entry.sharers.discard(user)
        self._version += 1
        for s in self._sharing_sessions(key):      # every session announcing key is in the index
            if s.user == user:
                s.shares.discard(key)
        if not entry.sharers:
            del self.files[key]
            names = self._names_by_group.get(key[0])
            if names is not None:
                names.discard(key[1])
                if not names:
                    del self._names_by_group[key[0]]

    # ------------------------------------------------------------------
    # checks shared by operations and queries

    def _known_user(self, user: object) -> str:
        user = check_id("user id", user)
        if user not in self.users:
            raise NoSuchUser("no user %s" % user)
        return user

    def _group(self, group: object) -> Group:
        group = check_id("group id", group)
        g = self.groups.get(group)
        if g is None:
            raise NoSuchGroup("no group %s; list_groups shows the groups" % group)
        return g

    def _member_group(self, user: str, group: object) -> Group:
        g = self._group(group)
        if user not in g.members:
            if user in g.requests:      # join_group would only say "already asked"
                raise NotMember("you are not a member of group %s yet; your request to join"
                                " is waiting for its owner %s" % (g.group_id, g.owner))
            raise NotMember("you are not a member of group %s; use join_group %s"
                            % (g.group_id, g.group_id))
        return g

    def _owned_group(self, owner: object, group: object) -> Group:
        owner = self._known_user(owner)
        g = self._group(group)
        if g.owner != owner:
            raise NotOwner("only the owner of group %s (%s) can do that" % (g.group_id, g.owner))
        return g

    # ------------------------------------------------------------------
    # queries

    def password_record(self, user: str) -> Optional[str]:
        """The stored password record of ``user``, or None."""
        return self.users.get(user)

    def list_groups(self, user: Optional[str] = None) -> List[dict]:
        """Every group: id, owner and member count, sorted by id; with ``user``,
        also ``role``: ``owner``, ``member``, ``pending`` (asked to join) or ``""``."""
        out = []
        for g in sorted(self.groups.values(), key=lambda g: g.group_id):
            item = {"group": g.group_id, "owner": g.owner, "members": len(g.members)}
            if user is not None:
                item["role"] = ("owner" if g.owner == user else "member" if user in g.members
                                else "pending" if user in g.requests else "")
            out.append(item)
        return out

    def list_requests(self, owner: str, group: object) -> List[str]:
        """Pending join requests of a group (owner only), oldest first."""
        return list(self._owned_group(owner, group).requests)

    def list_files(self, user: str, group: object) -> List[dict]:
        """Files of a group (members only): name, size, pieces, file hash, online peers."""
        g = self._member_group(self._known_user(user), group)
        cached = self._listing.get(g.group_id)
        if cached is None or cached[0] != self._version:
            out = []
            for key in self._file_keys(g.group_id):
                entry = self.files[key]
                m = entry.manifest
                # One per peer address: a peer that reconnected is counted once.
                online = {s.address for s in self._sharing_sessions(key) if s.user in entry.sharers}
                out.append({"name": key[1], "size": m.size, "pieces": m.pieces,
                            "file_hash": m.file_hash, "peers": len(online)})
            cached = self._listing[g.group_id] = (self._version, out)
        return [dict(f) for f in cached[1]]

    def get_peers(self, user: str, group: object, name: object, exclude_session: str = "",
                  reachable: Optional[Callable[[Session], Optional[bool]]] = None) -> dict:
        """Manifest and online peers (user, address) sharing a file (members only).

        With ``reachable``, each peer also gets ``"reachable": reachable(its session)``."""
        g = self._member_group(self._known_user(user), group)
        name = check_file_name(name)
        key = (g.group_id, name)
        entry = self.files.get(key)
        if entry is None:
            raise NoSuchFile("no file %s in group %s; list_files %s shows them"
                             % (name, g.group_id, g.group_id))
        cached = self._peers.get(key)
        if cached is None or cached[0] != self._version:
            cached = self._peers[key] = (self._version, self._online_sharers(key), entry.manifest.to_dict())
        asker = self.sessions.get(exclude_session)
        # The asker's own peer is never listed, also not under an older session of
        # it that another tracker still mirrors (it reconnected after a failover).
        own = asker.address if asker is not None else None
        if reachable is None:
            peers = [{"user": s.user, "address": s.address, "peer": s.session_id}
                     for s in cached[1] if s.session_id != exclude_session and s.address != own]
        else:
            peers = [{"user": s.user, "address": s.address, "peer": s.session_id, "reachable": reachable(s)}
                     for s in cached[1] if s.session_id != exclude_session and s.address != own]
        m = cached[2]
        return {"manifest": dict(m, piece_hashes=list(m["piece_hashes"])), "peers": peers}

    def file_by_hash(self, user: str, group: object, file_hash: object) -> dict:
        """The manifest of the file with ``file_hash`` in a group (members only)."""
        g = self._member_group(self._known_user(user), group)
        for key in self._file_keys(g.group_id):
            if self.files[key].manifest.file_hash == file_hash:
                return self.files[key].manifest.to_dict()
        raise NoSuchFile("no file with hash %s in group %s; list_files %s shows them"
                         % (str(file_hash)[:64], g.group_id, g.group_id))

    def is_member(self, user: str, group: str) -> bool:
        """Is ``user`` a member of ``group`` right now?"""
        g = self.groups.get(group)
        return g is not None and user in g.members

    def _online_sharers(self, key: Tuple[str, str]) -> List[Session]:
        entry = self.files.get(key)
        if entry is None:
            return []
        # One entry per peer address: a peer that reconnected is listed once.
        by_address: Dict[str, Session] = {}
        matching = [s for s in self._sharing_sessions(key) if s.user in entry.sharers]
        for s in sorted(matching, key=lambda s: s.session_id):   # deterministic order
            by_address[s.address] = s
        return list(by_address.values())

    # ------------------------------------------------------------------
    # presence (ephemeral)

    def open_session(self, session_id: str, user: str, address: str) -> Session:
        """Record a logged-in session (after the password was checked)."""
        self._known_user(user)
        s = self.sessions[session_id] = Session(session_id, user, address)
        return s

    def close_session(self, session_id: str) -> None:
        """Forget a session: its peer no longer appears as a seeder."""
        self.sessions.pop(session_id, None)

    def announce(self, session_id: str, group: str, name: str) -> None:
        """Mark a registered file as served by this session's peer right now."""
        s = self.sessions[session_id]
        entry = self.files.get((group, name))
        if entry is not None and s.user in entry.sharers and (group, name) not in s.shares:
            s.shares.add((group, name))
            self._announced(s, (group, name))

    def withdraw(self, session_id: str, group: str, name: str) -> None:
        """This session's peer stops serving a file (without unregistering it)."""
        s = self.sessions.get(session_id)
        if s is not None and (group, name) in s.shares:
            s.shares.discard((group, name))
            self._version += 1

    # Sessions held by other trackers. They are not checked against accounts or
    # registrations here: the tracker holding them did that, and this tracker
    # may not have applied the same operations yet (queries filter anyway).

    @staticmethod
    def remote_session_id(origin: int, session_id: str) -> str:
        """The key under which tracker ``origin``'s session ``session_id`` is kept."""
        return "%d/%s" % (origin, session_id)

    def put_remote_session(self, origin: int, session_id: str, user: str, address: str,
                           shares=()) -> Session:
        """Mirror (or replace) a session held by tracker ``origin``."""
        key = self.remote_session_id(origin, session_id)
        s = self.sessions[key] = Session(key, user, address, set(shares), origin)
        return s

    def remote_announce(self, origin: int, session_id: str, group: str, name: str, on: bool) -> None:
        """Tracker ``origin``'s session announced (``on``) or withdrew a file."""
        s = self.sessions.get(self.remote_session_id(origin, session_id))
        if s is not None and ((group, name) in s.shares) != on:
            if on:
                s.shares.add((group, name))
                self._announced(s, (group, name))
            else:
                s.shares.discard((group, name))
                self._version += 1

    def remote_reachable(self, origin: int, session_id: str, reachable: bool) -> None:
        """Tracker ``origin`` dialled its session's address: did it accept?"""
        s = self.sessions.get(self.remote_session_id(origin, session_id))
        if s is not None:
            s.reachable = bool(reachable)

    def drop_remote_session(self, origin: int, session_id: str) -> None:
        """Tracker ``origin``'s session ended."""
        self.sessions.pop(self.remote_session_id(origin, session_id), None)

    def drop_remote_sessions(self, origin: int) -> int:
        """Forget every session held by tracker ``origin``; return how many."""
        keys = [k for k, s in self.sessions.items() if s.origin == origin]
        for k in keys:
            del self.sessions[k]
        return len(keys)

    def local_sessions(self) -> List[Session]:
        """Sessions of connections to this tracker."""
        return [s for s in self.sessions.values() if s.origin == 0]

    # ------------------------------------------------------------------

    def digest(self) -> str:
        """A SHA-256 over the durable state, to compare trackers' states."""
        h = hashlib.sha256()
        for u in sorted(self.users):
            h.update(("u %s %s\n" % (u, self.users[u])).encode())
        for gid in sorted(self.groups):
            g = self.groups[gid]
            h.update(("g %s %s %s %s\n" % (gid, g.owner, ",".join(g.members), ",".join(g.requests))).encode())
        for key in sorted(self.files):
            e = self.files[key]
            h.update(("f %s %s %s %s\n" % (key[0], key[1], e.manifest.file_hash,
                                           ",".join(sorted(e.sharers)))).encode())
        return h.hexdigest()
