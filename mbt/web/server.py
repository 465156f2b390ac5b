"""Starting the web page of a peer on any Twisted server endpoint."""

from __future__ import annotations

import re
from typing import Tuple

from twisted.internet import defer, endpoints
from twisted.web import server

from mbt.errors import ConfigError
from mbt.web.resources import WebApp, build_root


def normalize_endpoint(description: str) -> str:
    """``--web`` as given, with loopback as the default interface.

    ``8080`` and ``tcp:8080`` mean ``tcp:8080:interface=127.0.0.1`` (like the
    console); ``ssl:`` likewise; any other endpoint string is used as is.
    """
    desc = description.strip()
    if re.fullmatch(r"\d+", desc):
        desc = "tcp:" + desc
    kind = desc.split(":", 1)[0]
    if kind in ("tcp", "ssl", "tcp6") and "interface=" not in desc:
        desc += ":interface=%s" % ("::1" if kind == "tcp6" else "127.0.0.1")
    return desc


def check_endpoint(reactor, description: str) -> str:
    """The normalized endpoint, or ConfigError with the reason it is unusable."""
    desc = normalize_endpoint(description)
    try:
        endpoints.serverFromString(reactor, desc)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError("bad --web endpoint %r: %s" % (description, e))
    return desc


def page_url(description: str, port) -> str:
    """Where a browser finds the page just started."""
    scheme = "https" if description.split(":", 1)[0] == "ssl" else "http"
    host = port.getHost()
    address = getattr(host, "host", "127.0.0.1")
    if address in ("0.0.0.0", "::", ""):
        address = "127.0.0.1"
    if ":" in address:
        address = "[%s]" % address
    return "%s://%s:%d/" % (scheme, address, host.port)


@defer.inlineCallbacks
def start_web(reactor, node, table, description: str):
    """Listen for the page on ``description``; fire with ``(port, url, app)``."""
    desc = check_endpoint(reactor, description)
    app = WebApp(node, table, reactor)
    site = server.Site(build_root(app))
    site.displayTracebacks = False
    port = yield endpoints.serverFromString(reactor, desc).listen(site)
    return port, page_url(desc, port), app


def stop_web(started: Tuple) -> defer.Deferred:
    """Close every event stream and stop listening."""
    port, _url, app = started
    app.events.close_all()
    return defer.maybeDeferred(port.stopListening)
