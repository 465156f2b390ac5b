"""The live channel: server-sent events to every open page.

One ticker for all pages (not one per page) builds the downloads' view once a
second while any page is open, serializes it once, and writes it only to the
pages whose last copy differs; console notices are pushed at once. A page
whose session is no longer signed in (a ``logout`` anywhere) is told so and
its stream is closed. Nothing runs while no page is open.
"""

from __future__ import annotations

import json
from typing import Callable, List, Optional

from twisted.internet import task
from twisted.logger import Logger

from mbt.web.views import download_view

log = Logger(namespace="mbt.web.events")

#: Seconds between two downloads updates, and between keep-alive comments.
TICK = 1.0
KEEPALIVE = 15.0


def sse(event: str, data) -> bytes:
    """One server-sent event: its name and JSON data on one line."""
    return ("event: %s\ndata: %s\n\n" % (event, json.dumps(data, separators=(",", ":")))).encode("utf-8")


class _Page:
    """One open event stream."""

    def __init__(self, request, session) -> None:
        self.request = request
        self.session = session
        self.last_downloads: Optional[str] = None
        self.last_write = 0.0
        self.closed = False

    def write(self, data: bytes, now: float) -> None:
        if not self.closed:
            self.request.write(data)
            self.last_write = now


class EventHub:
    """Every open page's event stream, fed by one ticker and the node's notices."""

    def __init__(self, node, reactor, signed_in: Callable, tick: float = TICK) -> None:
        self.node = node
        self.reactor = reactor
        self.signed_in = signed_in       # session -> bool
        self.tick = tick
        self.pages: List[_Page] = []
        self._loop: Optional[task.LoopingCall] = None
        self._unsubscribe: Optional[Callable[[], None]] = None

    def add(self, request, session) -> None:
        """Stream events to ``request`` until the page goes away."""
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        page = _Page(request, session)
        self.pages.append(page)
        request.notifyFinish().addBoth(lambda _: self._gone(page))
        page.write(b"retry: 3000\n\n", self.reactor.seconds())
        if self._unsubscribe is None:
            self._unsubscribe = self.node.subscribe(self.notice)
        if self._loop is None:
            self._loop = task.LoopingCall(self._tick)
            self._loop.clock = self.reactor
            self._loop.start(self.tick, now=False)
        self._send_downloads([page])

    def _gone(self, page: _Page) -> None:
        page.closed = True
        if page in self.pages:
            self.pages.remove(page)
        if not self.pages:
            self.stop()

    def stop(self) -> None:
        """No page open: no ticker, no notice listener."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def close_all(self) -> None:
        """The web listener is going away: end every stream."""
        for page in list(self.pages):
            page.closed = True
            page.request.finish()
        self.pages = []
        self.stop()

    def notice(self, message: str) -> None:
        """A console notice, pushed at once to every signed-in page."""
        data = sse("notice", {"text": message})
        now = self.reactor.seconds()
        for page in list(self.pages):
            if self.signed_in(page.session):
                page.write(data, now)

    def _tick(self) -> None:
        try:
            self._tick_pages()
        except Exception:       # the live channel must outlive any one bad update
            log.failure("web events tick failed")

    def _tick_pages(self) -> None:
        now = self.reactor.seconds()
        live = []
        for page in list(self.pages):
            if not self.signed_in(page.session):
                page.write(sse("signout", {"text": "this peer is no longer logged in as you"}), now)
                page.closed = True
                self.pages.remove(page)
                page.request.finish()
                continue
            live.append(page)
        self._send_downloads(live)
        for page in live:
            if now - page.last_write >= KEEPALIVE:
                page.write(b": keep-alive\n\n", now)
        if not self.pages:
            self.stop()

    def _send_downloads(self, pages: List[_Page]) -> None:
        if not pages:
            return
        views = [download_view(dl) for dl in self.node.my_downloads()] if self.node.user else []
        body = json.dumps(views, separators=(",", ":"))
        data = None
        now = self.reactor.seconds()
        for page in pages:
            if page.last_downloads != body:
                if data is None:
                    data = ("event: downloads\ndata: %s\n\n" % body).encode("utf-8")
                page.last_downloads = body
                page.write(data, now)
