"""Parse TRACKER_INFO: the list of every tracker, one ``IP:PORT`` or ``IP PORT`` a line.

A line ``relay IP:PORT`` names an ``mbt-relay`` instead (for peers that cannot
reach each other); relays are not trackers and do not count in tracker numbers.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import List

from mbt.errors import ConfigError


@dataclass(frozen=True)
class TrackerAddress:
    """One tracker's listening address; ``number`` is its 1-based position in the file."""

    number: int
    host: str
    port: int

    def __str__(self) -> str:
        return "%s:%d" % (self.host, self.port)


def parse_address(text: str) -> tuple:
    """Parse ``IP:PORT`` (or ``IP PORT``) into ``(host, port)``; raise ValueError with a reason."""
    text = text.strip()
    if " " in text or "\t" in text:
        parts = text.split()
        if len(parts) != 2:
            raise ValueError("expected IP:PORT or IP PORT")
        host, port = parts
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError("expected IP:PORT or IP PORT")
    host = host.strip("[]")
    if not host:
        raise ValueError("missing IP address")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError("%r is not an IP address" % host)
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError("port %r is not a number in 1..65535" % port)
    return host, int(port)


def parse_tracker_info(text: str, source: str = "TRACKER_INFO") -> List[TrackerAddress]:
    """Parse the contents of a tracker info file; errors name ``source`` and the line."""
    trackers = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.split()[0] == "relay":
            continue
        try:
            host, port = parse_address(line)
        except ValueError as e:
            raise ConfigError("%s line %d: %s (got %r)" % (source, lineno, e, raw.strip()))
        trackers.append(TrackerAddress(len(trackers) + 1, host, port))
    if not trackers:
        raise ConfigError("%s lists no tracker (one IP:PORT per line)" % source)
    return trackers


def parse_relays(text: str, source: str = "TRACKER_INFO") -> List[str]:
    """The ``relay IP:PORT`` lines of a tracker info file, as ``IP:PORT`` strings."""
    relays = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.split()[0] != "relay":
            continue
        try:
            host, port = parse_address(line[len("relay"):].strip())
        except ValueError as e:
            raise ConfigError("%s line %d: relay: %s (got %r)" % (source, lineno, e, raw.strip()))
        relays.append("%s:%d" % (host, port))
    return relays


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(1 << 20)
    except OSError as e:
        raise ConfigError("cannot read tracker info file %s: %s" % (path, e.strerror or e))


def load_tracker_info(path: str) -> List[TrackerAddress]:
    """Read and parse a tracker info file."""
    return parse_tracker_info(_read(path), path)


def load_relays(path: str) -> List[str]:
    """The relays a tracker info file lists (``relay IP:PORT`` lines)."""
    return parse_relays(_read(path), path)


def select_tracker(trackers: List[TrackerAddress], number: int, source: str = "TRACKER_INFO") -> TrackerAddress:
    """Return tracker ``number`` (1-based) or raise a clear ConfigError."""
    if not 1 <= number <= len(trackers):
        raise ConfigError("tracker number %d is out of range: %s lists %d tracker(s)"
                          % (number, source, len(trackers)))
    return trackers[number - 1]
