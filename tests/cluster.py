"""In-process clusters for integration tests: real trackers and peers on 127.0.0.1.

Everything listens on port 0 and talks over real loopback sockets through the
global reactor (pytest-twisted). Waits are bounded polls, never bare sleeps.
"""

from __future__ import annotations

import hashlib
import os
import random

from twisted.internet import defer, reactor, task

from mbt.peer.commands import CommandTable
from mbt.peer.node import PeerNode
from mbt.tracker.service import TrackerService
from mbt.trackerinfo import TrackerAddress


def make_file(path, size: int, seed: int = 1) -> str:
    """Write ``size`` deterministic pseudo-random bytes; return their SHA-256."""
    rng = random.Random(seed)
    data = rng.randbytes(size)
    with open(path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def pause(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate()`` until true; fail the test after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError("timed out after %.0fs waiting for %s" % (timeout, what))
        yield pause(interval)


class Cluster:
    """A tracker plus any number of peers, all torn down by ``stop()``.

    With ``store_url`` (a ``postgresql://`` database) the tracker keeps its
    state there instead of an SQLite state dir (a restarted tracker reads it back).
    """

    def __init__(self, root, store_url=None) -> None:
        self.root = str(root)
        self.store_url = store_url
        self.tracker = None
        self.tracker_address = None
        self.peers = []

    @defer.inlineCallbacks
    def start_tracker(self, port: int = 0, state: str = "tracker"):
        svc = TrackerService("tcp:%d:interface=127.0.0.1" % port, os.path.join(self.root, state),
                             store_url=self.store_url)
        svc.startService()
        p = yield svc.listening
        self.tracker = svc
        self.tracker_address = TrackerAddress(1, "127.0.0.1", p.getHost().port)
        return svc

    @defer.inlineCallbacks
    def stop_tracker(self):
        if self.tracker is not None:
            yield self.tracker.stopService()
            self.tracker = None

    @defer.inlineCallbacks
    def peer(self, name: str, port: int = 0, **kwargs):
        state = os.path.join(self.root, "peer-" + name)
        os.makedirs(state, exist_ok=True)
        node = PeerNode("127.0.0.1:%d" % port, [self.tracker_address], state, reactor,
                        rng=random.Random(hash(name) & 0xffff), cwd=self.root, **kwargs)
        node.commands = CommandTable(node)
        yield node.start()
        yield wait_for(lambda: node.tracker.ready, 10, what="tracker connection")
        self.peers.append(node)
        return node

    @defer.inlineCallbacks
    def user(self, name: str, port: int = 0, create: bool = True, **kwargs):
        """A started peer with user ``name`` (password ``pw-name``) logged in."""
        node = yield self.peer(name, port, **kwargs)
        if create:
            yield node.create_user(name, "pw-" + name)
        yield node.login(name, "pw-" + name)
        return node

    @defer.inlineCallbacks
    def group(self, group: str, owner, *members):
        yield owner.create_group(group)
        for m in members:
            yield m.join_group(group)
            yield owner.accept_request(group, m.user)

    @defer.inlineCallbacks
    def stop_peer(self, node):
        if node in self.peers:
            self.peers.remove(node)
        yield node.stop()

    def kill_peer(self, node) -> None:
        """Abrupt death: drop every socket without a goodbye."""
        if node in self.peers:
            self.peers.remove(node)
        tracker_proto = node.tracker.proto
        node.tracker.stop()                 # no reconnect, no logout
        for dl in node.downloads.values():
            dl.running = False
            for c in dl.swarm.connections():
                c.transport.abortConnection()
        for c in list(node.server_factory.connections):
            c.transport.abortConnection()
        if tracker_proto is not None:
            tracker_proto.transport.abortConnection()
        if node.port is not None:
            node.port.stopListening()

    @defer.inlineCallbacks
    def stop(self):
        for node in list(self.peers):
            try:
                yield node.stop()
            except Exception:
                pass
        self.peers = []
        yield self.stop_tracker()


@defer.inlineCallbacks
def wait_download(node, group: str, name: str, timeout: float = 30.0):
    """Wait until the download ends; return its status letter."""
    dl = node.downloads[(group, name)]
    yield wait_for(lambda: dl.status in ("C", "F"), timeout, what="download of %s to end" % name)
    return dl.status
