"""What the tracker knows about one client connection.

Shared by the protocol (:mod:`mbt.protocols.tracker`), which makes one per
connection, and the request handler (:mod:`mbt.tracker.service`), which reads
and updates it; it lives here so that the protocol never imports the service.
"""

from __future__ import annotations

from typing import Callable, Optional


class Connection:
    """One client connection: its remote address and, once logged in, its session."""

    def __init__(self, remote: str = "?") -> None:
        self.remote = remote
        self.session_id: Optional[str] = None
        self.user: Optional[str] = None
        self.address: Optional[str] = None
        self.token: Optional[str] = None
        self.session_key: Optional[str] = None   # the peer's session public key (mbt/2), hex
        self.closed = False
        #: Sends an unsolicited message to this client (set by the protocol).
        self.push: Callable[[dict], None] = lambda message: None
