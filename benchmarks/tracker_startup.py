"""Tracker start-up with a long history: 100,000 users, 1,000,000 operations (issue #14).

What it does:

1. Builds the history (not timed into the result): ``--users`` accounts, one
   group per ten users with nine members each and three files shared by two
   members, then *churn* up to ``--ops`` operations: members sharing a file
   and stopping, outsiders joining, being accepted and leaving, or being
   rejected. Every operation is validated by ``TrackerState.apply`` as it is
   generated and stored through the store's own code:

   * ``--store sqlite``: appended with ``OpLog.append`` (hash chain, JSON
     encoding and ``oid`` as a tracker logs them) into a fresh state dir, and
     snapshotted by the compactor's own ``build_and_save`` where a running
     tracker leaves its two snapshots: the newest multiple of
     ``mbt.tracker.compaction.SNAPSHOT_EVERY`` up to ``--ops`` and the one
     before it. ``--ops 1009999`` gives the worst case: 9,999 operations
     after the newest snapshot to replay.
   * ``--store postgresql://...`` (an empty database) or ``--store pgserver``
     (a throwaway server started like the tests', ``tests/pgserver.py``):
     every operation copied into ``mbt_log`` as ``PgLog.append_many`` encodes it,
     ``mbt_head`` set, and the snapshot at the newest multiple of
     ``mbt.tracker.pgfleet.SNAPSHOT_EVERY`` up to ``--ops`` saved by
     ``PgLog.save_snapshot`` (which deletes the older log rows as a tracker's
     snapshot does).

   Password records are real ``scrypt`` records made by
   ``mbt.passwords.make_record`` for the password ``pw-bench`` (a pool of
   ``--records`` of them, reused across users: hashing 100,000 at ~45 ms
   each would take over an hour), so every account can log in.

   ``--no-snapshots`` leaves the whole log and no snapshot, as a state dir
   written before snapshots existed (the tracker then replays it all).

2. Times ``mbt-tracker`` ``--runs`` times: from ``exec`` until it answers a
   ``ping`` on its port (the tracker listens only once its state is loaded),
   and until it answers a ``login`` of one of the users (which includes one
   scrypt hash, ~45 ms), and the CPU time the tracker process used until its
   first answer (which, unlike the wall time, hardly depends on the other
   work of a shared machine; the PostgreSQL server's CPU is not included).

Run: ``python benchmarks/tracker_startup.py --store sqlite`` or
``--store pgserver`` (or a URL). Target (issue #14): <= 2 s for both.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Iterator, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mbt import passwords  # noqa: E402
from mbt.driver import bin_path, free_port  # noqa: E402
from mbt.manifest import PIECE_SIZE  # noqa: E402
from mbt.tracker.state import TrackerState  # noqa: E402

PASSWORD = "pw-bench"
TARGET_SECONDS = 2.0


def user(i: int) -> str:
    return "user%06d" % i


def manifest(rng: random.Random, name: str) -> dict:
    size = rng.randrange(1, 3 * PIECE_SIZE)
    pieces = -(-size // PIECE_SIZE)
    return {"name": name, "size": size, "piece_size": PIECE_SIZE, "file_hash": "%064x" % rng.getrandbits(256),
            "piece_hashes": ["%064x" % rng.getrandbits(256) for _ in range(pieces)]}


def history(users: int, records: List[str], seed: int = 14) -> Iterator[dict]:
    """Operations a tracker could have logged, each valid after the ones before (endless:
    the churn goes on; take as many as wanted)."""
    rng = random.Random(seed)
    for i in range(users):
        yield {"op": "create_user", "user": user(i), "password_record": records[i % len(records)]}
    members = {}
    for g in range(max(1, users // 10)):
        gid = "group%05d" % g
        owner = user(g * 10 % users)
        yield {"op": "create_group", "user": owner, "group": gid}
        members[gid] = [owner]
        for k in range(1, 10):
            u = user((g * 10 + k) % users)
            if u in members[gid]:
                continue
            yield {"op": "join_group", "user": u, "group": gid}
            yield {"op": "accept_request", "owner": owner, "group": gid, "user": u}
            members[gid].append(u)
        for f in range(3):
            m = manifest(rng, "file%d.bin" % f)
            for sharer in members[gid][1 + f:3 + f]:
                yield {"op": "share_file", "user": sharer, "group": gid, "manifest": m}
    gids = sorted(members)
    for serial in itertools.count():
        gid = rng.choice(gids)
        owner = members[gid][0]
        kind = rng.random()
        if kind < 0.5:
            sharer = rng.choice(members[gid])
            name = "tmp%d.bin" % serial
            yield {"op": "share_file", "user": sharer, "group": gid, "manifest": manifest(rng, name)}
            yield {"op": "stop_share", "user": sharer, "group": gid, "name": name}
            continue
        outsider = user(rng.randrange(users))
        if outsider in members[gid]:
            continue
        yield {"op": "join_group", "user": outsider, "group": gid}
        if kind < 0.85:
            yield {"op": "accept_request", "owner": owner, "group": gid, "user": outsider}
            yield {"op": "leave_group", "user": outsider, "group": gid}
        else:
            yield {"op": "reject_request", "owner": owner, "group": gid, "user": outsider}


def validated(ops: Iterator[dict], state: TrackerState) -> Iterator[dict]:
    """Each operation applied to ``state`` first (a refused one is a bug of the generator)."""
    for op in ops:
        state.apply(op)
        yield op


def build_sqlite(state_dir: str, ops: Iterator[dict], total: int, snapshots: bool = True) -> dict:
    from mbt.tracker.compaction import SNAPSHOT_EVERY, build_and_save
    from mbt.tracker.oplog import OpLog
    from mbt.tracker.replication import new_oid
    from mbt.tracker.store import SQLiteStore
    os.makedirs(state_dir, mode=0o700)
    store = SQLiteStore(os.path.join(state_dir, "tracker.sqlite3"))
    log = OpLog(store)
    newest = total // SNAPSHOT_EVERY * SNAPSHOT_EVERY
    wanted = [s for s in (newest - SNAPSHOT_EVERY, newest) if s > 0] if snapshots else []
    hashes = {}
    done = 0
    while done < total:
        with store.bulk():      # 100,000 appends a transaction
            for op in itertools.islice(ops, 100000):
                op["oid"] = new_oid(1)
                seq, digest = log.append(op)
                if seq in wanted:
                    hashes[seq] = digest
                done += 1
    for seq in wanted:      # the compactor's own code, as a running tracker calls it
        assert build_and_save(store, seq, hashes[seq])
    out = {"snapshots": [s for s, _h in store.snapshot_index()], "first_kept": store.first_seq(),
           "snapshot_bytes": len(store.snapshot_text(newest) or "") if wanted else 0}
    store.close()
    out["db_bytes"] = sum(os.path.getsize(os.path.join(state_dir, f)) for f in os.listdir(state_dir))
    return out


def build_pg(url: str, ops: Iterator[dict], total: int, state: TrackerState) -> dict:
    import psycopg
    from mbt.tracker import snapshot
    from mbt.tracker.pgfleet import SNAPSHOT_EVERY
    from mbt.tracker.pgstore import PgLog, _dumps
    db = PgLog(url)
    db.ensure_schema()
    if db.head() != 0:
        raise SystemExit("error: the database at --store already holds operations; give an empty one")
    newest = total // SNAPSHOT_EVERY * SNAPSHOT_EVERY
    text = None
    with psycopg.connect(url) as conn:
        with conn.cursor().copy("COPY mbt_log (seq, op) FROM STDIN") as copy:
            for seq, op in enumerate(ops, 1):
                copy.write_row((seq, _dumps(op)))
                if seq == newest:
                    text = snapshot.dumps(state, sessions=True)   # what the fleet's snapshot stores
        conn.execute("UPDATE mbt_head SET seq = %s WHERE id = 1", (total,))
    if newest:
        db.save_snapshot(newest, text)
    head = db.head()
    db.close()
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT count(*) FROM mbt_log").fetchone()[0]
    return {"snapshots": [newest], "log_rows": rows, "head": head, "snapshot_bytes": len(text or "")}


def first_answer(port: int, proc: subprocess.Popen, started: float, timeout: float = 120.0) -> float:
    """Seconds from ``started`` until a ``ping`` on ``port`` is answered."""
    deadline = started + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("error: the tracker exited with %s" % proc.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b'{"op":"ping","id":1}\n')
                reply = s.makefile("rb").readline()
            if b'"ok"' in reply:
                return time.monotonic() - started
        except OSError:
            time.sleep(0.005)
    raise SystemExit("error: no answer within %.0f s" % timeout)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far: unlike the wall time,
    it hardly depends on what else the shared machine is running."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def login_time(port: int, started: float) -> float:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall((json.dumps({"op": "login", "id": 1, "user": user(7), "password": PASSWORD,
                               "address": "127.0.0.1:9"}) + "\n").encode())
        reply = json.loads(s.makefile("rb").readline())
    if "ok" not in reply:
        raise SystemExit("error: login failed: %r" % reply)
    return time.monotonic() - started


def time_starts(argv_tail: List[str], work: str, runs: int) -> List[dict]:
    out = []
    for _ in range(runs):
        port = free_port()
        info = os.path.join(work, "tracker_info.txt")
        with open(info, "w") as f:
            f.write("127.0.0.1:%d\n" % port)
        log = open(os.path.join(work, "tracker.log"), "ab")
        started = time.monotonic()
        proc = subprocess.Popen([bin_path("mbt-tracker"), info, "1"] + argv_tail, stdin=subprocess.PIPE,
                                stdout=log, stderr=log, start_new_session=True)
        try:
            ping = first_answer(port, proc, started)
            cpu = cpu_seconds(proc.pid)
            login = login_time(port, started)
        finally:
            proc.kill()
            proc.wait()
            log.close()
        out.append({"ping": ping, "login": login, "cpu": cpu, "load_average": round(os.getloadavg()[0], 1)})
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default="sqlite", help="sqlite, pgserver, or postgresql://... (an empty database)")
    ap.add_argument("--users", type=int, default=100000)
    ap.add_argument("--ops", type=int, default=1000000)
    ap.add_argument("--records", type=int, default=8, help="distinct scrypt records to reuse")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", default=None, help="directory for the state dir / logs (default: a temporary one)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--no-snapshots", action="store_true",
                    help="sqlite: the whole log and no snapshot (a state dir from before snapshots existed)")
    args = ap.parse_args(argv)
    if args.ops < args.users:
        ap.error("--ops must be at least --users")
    work = tempfile.mkdtemp(prefix="mbt-startup-", dir=args.work)
    server = None
    try:
        records = [passwords.make_record(PASSWORD) for _ in range(args.records)]
        state = TrackerState()
        ops = validated(itertools.islice(history(args.users, records), args.ops), state)
        began = time.monotonic()
        if args.store == "sqlite":
            built = build_sqlite(os.path.join(work, "state"), ops, args.ops, not args.no_snapshots)
            tail = ["--state-dir", os.path.join(work, "state")]
        else:
            url = args.store
            if url == "pgserver":
                sys.path.insert(0, ROOT)
                from tests.pgserver import PgServer
                server = PgServer()
                url = server.new_database()
            built = build_pg(url, ops, args.ops, state)
            tail = ["--store", url]
        built["build_seconds"] = round(time.monotonic() - began, 1)
        built.update(users=len(state.users), groups=len(state.groups), files=len(state.files),
                     operations=args.ops)
        runs = time_starts(tail, work, args.runs)
    finally:
        if server is not None:
            server.close()
        shutil.rmtree(work, ignore_errors=True)
    result = {"store": "sqlite" if args.store == "sqlite" else "postgresql", "history": built, "runs": runs,
              "median_ping_seconds": statistics.median(r["ping"] for r in runs),
              "median_cpu_seconds": statistics.median(r["cpu"] for r in runs),
              "median_login_seconds": statistics.median(r["login"] for r in runs)}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        h = built
        print("history: %d operations, %d users, %d groups, %d files; built in %.1f s; snapshots at %s"
              % (h["operations"], h["users"], h["groups"], h["files"], h["build_seconds"], h["snapshots"]))
        for i, r in enumerate(runs, 1):
            print("run %d: first answer %.2f s after exec (tracker CPU %.2f s), first login answered %.2f s"
                  " (load average %.1f)" % (i, r["ping"], r["cpu"], r["login"], r["load_average"]))
        verdict = "met" if result["median_ping_seconds"] <= TARGET_SECONDS else "NOT met"
        print("%s: median start-up %.2f s, tracker CPU %.2f s (target <= %.1f s: %s)"
              % (result["store"], result["median_ping_seconds"], result["median_cpu_seconds"],
                 TARGET_SECONDS, verdict))
    return 0


if __name__ == "__main__":
    sys.exit(main())
