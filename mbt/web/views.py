"""Pure functions: the node's state as the JSON the page shows (no I/O)."""

from __future__ import annotations

from typing import Dict, List, Optional

from mbt.peer.commands import download_line
from mbt.peer.shares import DownloadState

#: Characters naming the peer a verified piece came from (index into ``sources``);
#: ``-`` for pieces with no known peer (verified from disk at resume).
_SOURCE_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

#: What the page calls each download state (``show_downloads`` shows its letter).
STATE_WORDS = {DownloadState.RUNNING: "downloading", DownloadState.COMPLETE: "complete",
               DownloadState.FAILED: "failed"}


def relation(group: dict, user: Optional[str]) -> str:
    """``owner`` / ``member`` / ``pending`` / ``none`` for one ``list_groups`` row:
    the tracker's ``role`` for the asking user (the console's marker column)."""
    role = group.get("role")
    if role in ("owner", "member", "pending"):
        return role
    if user is not None and group.get("owner") == user:
        return "owner"
    return "none"


def group_rows(groups: List[dict], user: Optional[str]) -> List[dict]:
    """``list_groups`` rows with the signed-in user's relation to each."""
    return [{"group": str(g.get("group", "")), "owner": str(g.get("owner", "")),
             "members": int(g.get("members", 0)), "relation": relation(g, user)} for g in groups]


def file_rows(files: List[dict]) -> List[dict]:
    """``list_files`` rows: name, size, pieces, peers sharing it now."""
    return [{"name": str(f.get("name", "")), "size": int(f.get("size", 0)),
             "pieces": int(f.get("pieces", 0)), "peers": int(f.get("peers", 0))} for f in files]


def piece_sources(dl, cells: str) -> Dict[str, object]:
    """Which peer each verified piece came from: a peer list and one character per piece."""
    peers: List[str] = []
    index: Dict[str, int] = {}
    out = []
    sources = dl.sources
    for i, c in enumerate(cells):
        addr = sources.get(i) if c == "v" else None
        if addr is None:
            out.append("-")
            continue
        k = index.get(addr)
        if k is None:
            k = index[addr] = min(len(peers), len(_SOURCE_CHARS) - 1)
            if len(peers) < len(_SOURCE_CHARS):
                peers.append(addr)
        out.append(_SOURCE_CHARS[k])
    return {"sources": peers, "src": "".join(out)}


def download_view(dl, with_map: bool = True) -> dict:
    """One download as the page shows it (the same facts as its ``show_downloads`` line)."""
    size = dl.manifest.size
    percent = dl.percent()
    rate = dl.meter.rate() if dl.status == DownloadState.RUNNING and dl.running else 0.0
    left = max(0, size - dl.verified_bytes) if dl.status == DownloadState.RUNNING else 0
    eta = (left / rate) if rate > 0 and left else None
    progress = dl.progress()
    peers = progress.peers if dl.status == DownloadState.RUNNING else 0
    if dl.status == DownloadState.RUNNING and not dl.running:
        note = "paused until login"
    else:
        note = dl.note if dl.status == DownloadState.RUNNING else ""
    view = {
        "id": "%s/%s" % (dl.record.group, dl.record.name),
        "group": dl.record.group, "name": dl.record.name, "dest": dl.record.dest,
        "state": DownloadState(dl.status).value, "state_word": STATE_WORDS[DownloadState(dl.status)],
        "reason": dl.reason if dl.status == DownloadState.FAILED else "", "note": note,
        "percent": round(percent, 1), "rate": round(rate), "eta": None if eta is None else round(eta),
        "peers": peers, "size": size, "pieces": dl.manifest.pieces,
        "line": download_line(progress),
    }
    if with_map:
        cells = dl.piece_map()
        view["map"] = cells
        view.update(piece_sources(dl, cells))
    return view
