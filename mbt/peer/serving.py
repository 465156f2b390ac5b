"""What a peer can serve right now: one :class:`Servable` per (group, file)."""

from __future__ import annotations

from typing import Set

from mbt.manifest import Manifest
from mbt.peer.storage import PieceFile


class Servable:
    """A file this peer serves: its pieces on disk and the verified ones.

    ``have`` is shared with a running download, so a piece counts here the
    moment the download has verified and written it; ``add_piece`` then pushes a
    HAVE to every downloader connected to this file.
    """

    def __init__(self, group: str, manifest: Manifest, piece_file: PieceFile, have: Set[int]) -> None:
        self.group = group
        self.manifest = manifest
        self.piece_file = piece_file
        self.have = have
        self.watchers = set()

    def watch(self, conn) -> None:
        """``conn`` (a serving connection) wants HAVE notices."""
        self.watchers.add(conn)

    def unwatch(self, conn) -> None:
        """Stop notifying ``conn``."""
        self.watchers.discard(conn)

    def add_piece(self, index: int) -> None:
        """Piece ``index`` is verified on disk: servable from now on."""
        self.have.add(index)
        for conn in list(self.watchers):
            conn.have(index)

    def read(self, index: int, offset: int, length: int) -> bytes:
        """Read a block of a verified piece."""
        return self.piece_file.read(index, offset, length)
