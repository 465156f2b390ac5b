"""Moving a deployment between stores: an SQLite state dir into PostgreSQL, and back.

``import_state_dir`` replays an SQLite tracker's log and seeds an *empty*
PostgreSQL database with the resulting state as one snapshot (one
transaction: all or nothing). ``export_state_dir`` reads the fleet's state
and writes it into a new SQLite state dir as the short list of ordinary
operations that rebuild it (:func:`mbt.tracker.snapshot.ops_for`), then checks
that the replayed copy has the same digest. Password records are copied as
they are, so every password keeps working.
"""

from __future__ import annotations

import os
from typing import Tuple

from mbt.errors import ConfigError, DatabaseUnavailable, MbtError
from mbt.tracker import snapshot
from mbt.statedir import StateDirLock, ensure_state_dir
from mbt.tracker.oplog import OpLog
from mbt.tracker.pgfleet import rebuild
from mbt.tracker.pgstore import PgLog, safe_url
from mbt.tracker.state import TrackerState
from mbt.tracker.store import SQLiteStore

DB_NAME = "tracker.sqlite3"


def _summary(state: TrackerState) -> dict:
    return {"users": len(state.users), "groups": len(state.groups),
            "requests": sum(len(g.requests) for g in state.groups.values()), "files": len(state.files)}


def _replayed(store) -> Tuple[TrackerState, int]:
    state = TrackerState()

    def apply(op: dict) -> None:
        try:
            state.apply(op)
        except MbtError:
            pass        # refused when it was logged too (an old repair): same outcome as the tracker
    count = OpLog(store).load(apply, lambda text: snapshot.reset_to(state, text))
    return state, count


def import_state_dir(state_dir: str, url: str) -> dict:
    """Copy the SQLite tracker state in ``state_dir`` into the (empty) database at ``url``."""
    path = os.path.join(os.path.abspath(os.path.expanduser(state_dir)), DB_NAME)
    if not os.path.isfile(path):
        raise ConfigError("no tracker database in %s (expected %s)" % (state_dir, DB_NAME))
    lock = StateDirLock(os.path.dirname(path))      # no tracker may be writing it meanwhile
    try:
        store = SQLiteStore(path)
        try:
            state, count = _replayed(store)
        finally:
            store.close()
    finally:
        lock.release()
    db = PgLog(url)
    try:
        db.ensure_schema()
        db.import_snapshot(snapshot.dumps(state))
    except DatabaseUnavailable:
        raise ConfigError("cannot reach the tracker database %s" % safe_url(url))
    except ValueError as e:
        raise ConfigError("cannot import into %s: %s" % (safe_url(url), e))
    finally:
        db.close()
    out = _summary(state)
    out["operations"] = count
    out["digest"] = state.digest()
    return out


def export_state_dir(url: str, state_dir: str) -> dict:
    """Write the fleet's durable state at ``url`` into a new SQLite state dir."""
    db = PgLog(url)
    try:
        db.ensure_schema()
        _base, text, rows = db.load()
    except DatabaseUnavailable:
        raise ConfigError("cannot reach the tracker database %s" % safe_url(url))
    finally:
        db.close()
    state = rebuild(text, rows, None)
    directory = ensure_state_dir(state_dir)
    path = os.path.join(directory, DB_NAME)
    if os.path.exists(path):
        raise ConfigError("%s already holds a tracker database; export into an empty state dir" % directory)
    lock = StateDirLock(directory)
    try:
        store = SQLiteStore(path)
        try:
            log = OpLog(store)
            check = TrackerState()
            with store.bulk():
                for op in snapshot.ops_for(state):
                    check.apply(op)
                    log.append(op)
        finally:
            store.close()
    finally:
        lock.release()
    if check.digest() != state.digest():
        raise ConfigError("the exported copy in %s differs from the database; do not use it" % directory)
    out = _summary(state)
    out["digest"] = state.digest()
    return out
