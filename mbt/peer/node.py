"""The peer as a whole: tracker link, session, shares, downloads, piece service.

:class:`PeerNode` is what the console commands talk to. Each user-facing
operation is a method returning a Deferred that fires with a result (plain
data or text) or fails with an :class:`~mbt.errors.MbtError`; formatting for
the console lives in :mod:`mbt.peer.commands`.
"""

from __future__ import annotations

import hmac
import os
import random
from typing import Callable, Dict, List, Optional, Tuple

from twisted.internet import defer, task, threads
from twisted.logger import Logger

from mbt.errors import (AlreadyDownloading, AlreadyLoggedIn, AlreadyShared, BadTicket, FileConflict, InvalidArgument,
                        MbtError, NoPeers, NoSuchGroup, NotLoggedIn, NotMember, NotSharing, check_file_name, check_id)
from mbt.manifest import Manifest, hash_file
from mbt.peer.download import Download, DownloadProgress
from mbt.peer.ratelimit import TokenBucket
from mbt import tickets
from mbt.tickets import verify_ticket
from mbt.trackertime import TrackerClock
from mbt.tls import TLSConfig, server_endpoint
from mbt.peer.serving import Servable
from mbt.peer.shares import DownloadRecord, DownloadState, Share, ShareStore
from mbt.peer.storage import PieceFile
from mbt.peer.swarm import TICKET_REFRESH
from mbt.peer.tracker_client import TrackerClient
from mbt.protocols.peer import PeerServerFactory
from mbt.timers import cancel_pending

log = Logger(namespace="mbt.peer")

#: Progress notices for hashing come at most this often (seconds).
PROGRESS_INTERVAL = 2.0
#: While logged in, every shared file is checked with a ``stat`` this often
#: (seconds): a file deleted or changed meanwhile stops being shared at once,
#: not at the next login. Cheap: one ``stat`` per share.
SHARE_CHECK_INTERVAL = 5.0


class PeerNode:
    """One peer process: serves pieces on ``address`` and runs the user's commands."""

    def __init__(self, address: str, trackers, state_dir: str, reactor,
                 rng: Optional[random.Random] = None, cwd: Optional[str] = None,
                 upload_rate: Optional[float] = None, tls: Optional[TLSConfig] = None,
                 threadpool=None) -> None:
        self.address = address
        self.trackers = trackers
        self.state_dir = state_dir
        self.reactor = reactor
        self.threadpool = threadpool    # None: the reactor's, taken when first needed
        self.rng = rng or random.Random()
        self.cwd = cwd or os.getcwd()
        self.tls = tls
        self.store = ShareStore(state_dir)
        self.user: Optional[str] = None
        self._password: Optional[str] = None      # kept in memory only, to log back in
        self.login_serial = 0       # bumped at every login: what was signed in before is void
        self.servables: Dict[Tuple[str, str], Servable] = {}   # (group, file_hash) -> Servable
        self.ticket_key: Optional[str] = None     # the trackers' public ticket key (hex)
        self._tickets: Dict[Tuple[str, str], Tuple[str, float]] = {}
        #: This login's Ed25519 key: tickets name its public half (protocol mbt/2).
        self.session_key = None
        #: Our offset to the trackers' clock; tickets are judged in their time.
        self.tracker_clock = TrackerClock()
        #: Connect-back tokens we wait for: token -> (build client protocol, timer).
        self._callbacks: Dict[str, tuple] = {}
        self.downloads: Dict[Tuple[str, str], Download] = {}
        self._listeners: List[Callable[[str], None]] = []
        self.tracker = TrackerClient(trackers, reactor, on_connected=self._tracker_connected,
                                     notify=self.notify, tls=tls, on_time=self._tracker_time,
                                     on_push=self.tracker_push)
        if upload_rate is None:     # no --upload-rate: the last ``set upload_rate`` holds
            upload_rate = self.store.settings.get("upload_rate", 0.0)
        self.upload_limiter = TokenBucket(reactor, upload_rate)
        self._share_checker: Optional[task.LoopingCall] = None
        self._rechecking: set = set()
        #: ``set verify_on_disk on``: after the last piece, read the file back and check it again.
        self.verify_on_disk = False
        #: ``set direct_writes off``: write verified pieces through the page cache
        #: (for slow rotating disks, where the kernel's write-back sorts writes).
        self.direct_writes = True
        self.server_factory = PeerServerFactory(self, reactor, limiter=self.upload_limiter)
        self.port = None
        for record in self.store.downloads.values():
            self.downloads[record.key] = Download(self, record, reactor, self.run_in_thread, self.rng)

    def run_in_thread(self, f: Callable, *args, **kwargs) -> defer.Deferred:
        """Run blocking work (hashing, disk writes) in the thread pool, never on the reactor."""
        if self.threadpool is None:
            self.threadpool = self.reactor.getThreadPool()
        return threads.deferToThreadPool(self.reactor, self.threadpool, f, *args, **kwargs)

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> defer.Deferred:
        """Listen for other peers on our address and connect to a tracker."""
        host, port = self.address.rsplit(":", 1)
        d = server_endpoint(self.reactor, host, int(port), self.tls, direct=True).listen(self.server_factory)

        def listening(p):
            self.port = p
            if int(port) == 0:      # tests: the OS chose the port; advertise the real one
                self.address = "%s:%d" % (host, p.getHost().port)
            self.tracker.start()
            log.info("peer serving on {addr}; state in {dir}", addr=self.address, dir=self.state_dir)
            return p
        return d.addCallback(listening)

    def running_downloads(self) -> int:
        """How many downloads are fetching right now (``quit`` pauses them)."""
        return sum(1 for dl in self.downloads.values() if dl.status == DownloadState.RUNNING and dl.running)

    def set_upload_rate(self, rate: float) -> None:
        """Change the upload cap live and keep it in the state dir for later runs."""
        self.upload_limiter.set_rate(rate)
        self.store.put_setting("upload_rate", rate)

    @defer.inlineCallbacks
    def stop(self):
        """Quit: pause downloads (progress saved), tell the tracker, stop listening."""
        self._stop_share_checks()
        for dl in self.downloads.values():
            dl.pause()
        if self.user is not None and self.tracker.ready:
            try:
                yield self.tracker.request("logout")
            except MbtError:
                pass
        self.tracker.stop()
        self.server_factory.refuse_all("peer shutting down")
        if self.port is not None:
            yield self.port.stopListening()
        self._close_shared_files()

    def _close_shared_files(self) -> None:
        """Close what we serve, except running downloads' .part files: those stay
        open for a verification still writing in a thread and for the resume."""
        downloading = {id(dl.servable) for dl in self.downloads.values()
                       if dl.servable is not None and dl.status == DownloadState.RUNNING}
        for s in self.servables.values():
            if id(s) not in downloading:
                s.piece_file.close()

    # -- notices -------------------------------------------------------------

    def subscribe(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Receive asynchronous notices; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def notify(self, message: str) -> None:
        """Tell every console something happened in the background."""
        log.info("notice: {msg}", msg=message)
        # Prefixed so that a script reading replies can tell it from command output.
        message = "notice: " + message
        for listener in list(self._listeners):
            try:
                listener(message)
            except Exception:       # a broken console must not break the peer
                log.failure("console listener failed")

    def tracker_push(self, message: dict) -> None:
        """An unsolicited message from the tracker (docs/protocol.rst 2.3, "Pushes")."""
        if message.get("push") == "dial":
            return self._tracker_push(message)
        text = membership_notice(message) if self.user is not None else None
        if text is not None:
            self.notify(text)
        else:
            log.info("ignored tracker push {push!r} {kind!r}", push=str(message.get("push"))[:40],
                     kind=str(message.get("kind"))[:40])

    # -- session -------------------------------------------------------------

    def _need_login(self) -> str:
        if self.user is None:
            raise NotLoggedIn()
        return self.user

    def create_user(self, user: str, password: str) -> defer.Deferred:
        check_id("user id", user)
        return self.tracker.request("create_user", user=user, password=password)

    @defer.inlineCallbacks
    def login(self, user: str, password: str):
        """Log in, then re-announce every share and resume unfinished downloads."""
        check_id("user id", user)
        if self.user is not None:
            raise AlreadyLoggedIn("already logged in as %s; logout first" % self.user)
        key = tickets.new_session_key()
        yield self._send_login(self.tracker.request, user, password, key)
        self.session_key = key
        self.user, self._password = user, password
        self.login_serial += 1
        try:
            self.ticket_key = (yield self.tracker.request("ticket_key"))["public_key"]
            shared, warnings = yield self._announce_all()
        except Exception:
            # All or nothing: a half-done login would serve nothing yet refuse a retry.
            self.user = self._password = self.session_key = None
            self.servables.clear()
            self.tracker.request("logout").addErrback(lambda f: None)
            raise
        resumed = self._resume_downloads()
        self._start_share_checks()
        return {"user": user, "shares": shared, "warnings": warnings, "resumed": resumed}

    def is_session(self, user: str, password: str) -> bool:
        """Is this peer logged in as ``user`` with ``password``? (The web page's
        sign-in to a session the console opened: no tracker round trip.)"""
        if self.user is None or self._password is None or user != self.user:
            return False
        return hmac.compare_digest(password.encode("utf-8"), self._password.encode("utf-8"))

    @defer.inlineCallbacks
    def logout(self):
        """Stop serving everything until the next login; pause downloads."""
        user = self._need_login()
        self._stop_share_checks()
        for dl in self.downloads.values():
            dl.pause()
        note = ""
        try:
            yield self.tracker.request("logout")
        except MbtError as e:
            # Logout is local first: we stop serving whatever the tracker says. An
            # unreachable tracker drops our session when our connection goes.
            note = e.message
        finally:
            # Even if the tracker is unreachable we stop serving: logout is local first.
            self.user = self._password = self.session_key = None
            self._tickets.clear()
            self.server_factory.refuse_all("peer logged out")
            # Close shared files; a paused download keeps its .part file open
            # and registers it again when it resumes at login.
            self._close_shared_files()
            self.servables.clear()
        shares = sum(1 for s in self.store.shares.values() if s.user in ("", user))
        return {"user": user, "shares": shares, "note": note}

    @defer.inlineCallbacks
    def _send_login(self, send: Callable[..., defer.Deferred], user: str, password: str, key):
        """The ``login`` request, the same at a user's login and at every re-login
        after a (re)connect; the reply's ``time`` is a sample of the trackers' clock."""
        sent = self.reactor.seconds()
        reply = yield send("login", user=user, password=password, address=self.address,
                           session_key=tickets.public_key_hex(key))
        self._tracker_time(sent, self.reactor.seconds(), reply.get("time"))
        return reply

    @defer.inlineCallbacks
    def _tracker_connected(self, client: TrackerClient):
        """After a (re)connect: log back in from memory and re-announce shares."""
        if self.user is None or self._password is None:
            return
        try:
            yield self._send_login(client.raw_request, self.user, self._password, self.session_key)
        except MbtError as e:
            self.notify("could not log back in as %s: %s" % (self.user, e.message))
            return
        try:
            self.ticket_key = (yield client.raw_request("ticket_key"))["public_key"]
        except MbtError:
            pass
        shared, warnings = yield self._announce_all(raw=True)
        for dl in self.downloads.values():
            if dl.status == DownloadState.RUNNING and dl.have:
                client.raw_request("share_file", group=dl.record.group,
                                   manifest=dl.manifest.to_dict()).addErrback(lambda f: None)
        self.notify("logged back in as %s; sharing %d file%s" % (self.user, shared, "" if shared == 1 else "s"))
        for dl in list(self.downloads.values()):
            if dl.status == DownloadState.RUNNING:
                dl.tracker_back()       # no stale "(tracker: connection ... lost)" on its line
        for w in warnings:
            self.notify(w)

    @defer.inlineCallbacks
    def _announce_all(self, raw: bool = False):
        """Announce every persisted share; drop the ones that changed or vanished."""
        request = self.tracker.raw_request if raw else self.tracker.request
        shared, warnings = 0, []
        for share in list(self.store.shares.values()):
            if share.user not in ("", self.user):
                continue        # another user's share on this peer: theirs to announce
            why = yield self._share_problem(share)
            if why is not None:
                self.store.remove_share(share.key)
                warnings.append("warning: stopped sharing %s in %s: %s" % (share.name, share.group, why))
                continue
            try:
                yield request("share_file", group=share.group, manifest=share.manifest)
            except MbtError as e:
                if isinstance(e, (NotMember, NoSuchGroup, FileConflict)):
                    self.store.remove_share(share.key)
                    warnings.append("warning: stopped sharing %s in %s: %s" % (share.name, share.group, e.message))
                else:
                    warnings.append("warning: could not announce %s in %s: %s"
                                    % (share.name, share.group, e.message))
                continue
            self._serve_share(share)
            shared += 1
        return shared, warnings

    @defer.inlineCallbacks
    def _share_problem(self, share: Share):
        """None if ``share`` still holds what was hashed, else why not (a sentence).

        A file that is only touched (same size, new mtime) is re-hashed in a
        thread; if the content is the same it stays shared.
        """
        problem = share.changed_on_disk()
        if problem is None:
            return None
        if problem == "missing":
            return "%s is gone" % share.path
        if problem == "size changed":
            return "%s changed on disk; upload_file it again to share the new content" % share.path
        try:
            # In the scheme of the announced manifest (an old share: whole-file SHA-256).
            fresh = yield self.run_in_thread(hash_file, share.path, share.name,
                                             whole_file=not share.get_manifest().rooted)
        except (OSError, MbtError) as e:
            return "cannot read %s (%s)" % (share.path, e)
        if fresh.file_hash != share.manifest["file_hash"]:
            return "the file changed on disk; upload_file it again to share the new content"
        try:
            st = os.stat(share.path)
        except OSError:
            return "%s is gone" % share.path
        share.record(st)
        self.store.save_shares()
        return None

    # -- noticing deleted or changed shares while logged in -------------------

    def _start_share_checks(self) -> None:
        if self._share_checker is None:
            self._share_checker = task.LoopingCall(self.check_shares)
            self._share_checker.clock = self.reactor
            self._share_checker.start(SHARE_CHECK_INTERVAL, now=False).addErrback(
                lambda f: log.failure("share check failed", f))

    def _stop_share_checks(self) -> None:
        if self._share_checker is not None:
            if self._share_checker.running:
                self._share_checker.stop()
            self._share_checker = None

    def _my_shares(self) -> List[Share]:
        return [s for s in self.store.shares.values() if self.user is not None and s.user in ("", self.user)]

    def check_shares(self) -> None:
        """Stop sharing every file of ours that is gone or changed (one ``stat`` each)."""
        for share in self._my_shares():
            self.check_share(share)

    def check_share(self, share: Share) -> bool:
        """Is ``share`` still as hashed? A missing or resized file is dropped at
        once (tracker told, console told once); a touched or replaced one is
        re-hashed in the background and dropped only if its content changed."""
        problem = share.changed_on_disk()
        if problem is None:
            return True
        if problem in ("modified", "replaced"):
            if share.key not in self._rechecking:
                self._rechecking.add(share.key)
                d = self._share_problem(share)

                def checked(why):
                    self._rechecking.discard(share.key)
                    if why is not None and self.store.shares.get(share.key) is share:
                        self.drop_share(share, why)
                d.addCallback(checked).addErrback(lambda f: log.failure("re-checking a share failed", f))
            return False
        self.drop_share(share, "%s is gone" % share.path if problem == "missing" else
                        "%s changed on disk; upload_file it again to share the new content" % share.path)
        return False

    def drop_share(self, share: Share, why: str) -> None:
        """Stop sharing ``share`` here and on the tracker, and say so once."""
        if self.store.shares.get(share.key) is not share:
            return      # already dropped (the periodic check and a failed read raced)
        self.store.remove_share(share.key)
        servable = self.servables.get((share.group, share.manifest["file_hash"]))
        if servable is not None:
            self.unregister_servable(servable)
            servable.piece_file.close()
        if self.user is not None:
            self.tracker.request("stop_share", group=share.group, name=share.name).addErrback(lambda f: None)
        self.notify("stopped sharing %s in %s: %s" % (share.name, share.group, why))

    def _serve_share(self, share: Share) -> None:
        manifest = share.get_manifest()
        key = (share.group, manifest.file_hash)
        if key in self.servables:
            return
        try:
            pf = PieceFile(share.path, manifest)
        except OSError as e:
            log.warn("cannot open {path}: {err}", path=share.path, err=e)
            return
        # The file opened must be the one checked and hashed: the path may have
        # been swapped (for a symlink to someone's private file, say) since.
        why = share.differs_from(os.fstat(pf.fd))
        if why is not None:
            pf.close()
            log.warn("not serving {path}: the file opened is not the one hashed ({why})",
                     path=share.path, why=why)
            return
        self.servables[key] = Servable(share.group, manifest, pf, set(range(manifest.pieces)))

    def _resume_downloads(self) -> int:
        count = 0
        for dl in self.downloads.values():
            if dl.status == DownloadState.RUNNING and not dl.running and dl.record.user in ("", self.user):
                dl.start()
                count += 1
        return count

    # -- serving ------------------------------------------------------------

    def open_servable(self, group: str, file_hash: str, user: str, ticket: Optional[str],
                      remote: str) -> Servable:
        """Decide whether a HELLO may be served; return what to serve or raise MbtError.

        This is the access-control seam: a peer serves only files it shares, only
        in their group, only while its user is logged in.
        """
        if self.user is None:
            raise NotSharing("this peer is not sharing right now (logged out)")
        servable = self.servables.get((group, file_hash))
        if servable is not None:
            share = self.store.shares.get((group, servable.manifest.name))
            if (share is not None and share.manifest["file_hash"] == file_hash
                    and not self.check_share(share)):
                servable = None     # deleted or changed since it was hashed
        if servable is None:
            raise NotSharing("no such file shared here in group %s" % group[:64])
        self._check_ticket(group, file_hash, user, ticket, remote)
        return servable

    def _check_ticket(self, group: str, file_hash: str, user: str, ticket: Optional[str],
                      remote: str) -> dict:
        """Only a member the tracker vouches for right now gets a byte."""
        if self.ticket_key is None:
            raise NotSharing("this peer cannot check tickets yet (no tracker key)")
        if not ticket:
            raise BadTicket("a ticket from the tracker is required (get_ticket)")
        payload = verify_ticket(ticket, self.ticket_key, self.tracker_now())
        if payload["g"] != group or payload["h"] != file_hash:
            raise BadTicket("ticket is for another file or group")
        if payload["u"] != user:
            raise BadTicket("ticket is for another user")
        if "k" not in payload:
            # An mbt/1 ticket names an address, which says nothing behind NAT.
            raise BadTicket("ticket is not bound to a key (an mbt/1 ticket); upgrade mbt")
        return payload

    @staticmethod
    def ticket_expires(ticket: Optional[str]) -> Optional[float]:
        """Expiry (tracker time) of a ticket that :meth:`open_servable` has just verified."""
        return float(tickets.ticket_expiry(ticket))

    @staticmethod
    def ticket_holder(ticket: Optional[str]) -> str:
        """The session key a ticket :meth:`open_servable` has just verified names."""
        return tickets.ticket_holder(ticket)

    def prove(self, challenge: str, group: str, file_hash: str) -> str:
        """Our ``PROOF`` for a server's challenge: signed with this login's key."""
        if self.session_key is None:
            raise NotLoggedIn("not logged in")
        return tickets.sign_challenge(self.session_key, challenge, group, file_hash, self.user or "-")

    # -- tracker time ---------------------------------------------------------

    def tracker_now(self) -> float:
        """The trackers' clock now (our clock plus the offset learnt at login and pings)."""
        return self.tracker_clock.now(self.reactor.seconds())

    def _tracker_time(self, sent: float, received: float, tracker_time: object) -> None:
        if self.tracker_clock.sample(sent, received, tracker_time):
            warning = self.tracker_clock.warning()
            if warning is not None:
                self.notify(warning)

    # -- connect-back and relay -------------------------------------------------

    def expect_callback(self, token: str, build: Callable[[], object], on_timeout: Callable[[], None],
                        timeout: float = 15.0) -> None:
        """A seeder will dial us with ``CALLBACK token``: ``build()`` makes its downloading protocol."""
        def expired():
            if self._callbacks.pop(token, None) is not None:
                on_timeout()
        self._callbacks[token] = (build, self.reactor.callLater(timeout, expired))

    def take_callback(self, token: str):
        """The downloading protocol for a connect-back, or None for an unknown token."""
        entry = self._callbacks.pop(token, None)
        if entry is None:
            return None
        build, timer = entry
        cancel_pending(timer)
        return build()

    def _tracker_push(self, message: dict) -> None:
        """The tracker asks us to dial a downloader (connect-back) or a relay."""
        if message.get("push") != "dial" or self.user is None:
            return
        from mbt.peer.reaching import dial_for_downloader
        dial_for_downloader(self, message)

    @defer.inlineCallbacks
    def get_ticket(self, group: str, file_hash: str):
        """A ticket proving our membership to the peers we download from (cached)."""
        cached = self._tickets.get((group, file_hash))
        if cached is not None and cached[1] - self.tracker_now() > TICKET_REFRESH:
            return cached[0]
        result = yield self.tracker.request("get_ticket", group=group, file_hash=file_hash)
        self._tickets[(group, file_hash)] = (result["ticket"], float(result["expires"]))
        return result["ticket"]

    def register_servable(self, servable: Servable) -> None:
        """A download makes its verified pieces servable."""
        self.servables.setdefault((servable.group, servable.manifest.file_hash), servable)

    def servable_broken(self, servable: Servable, why: str) -> None:
        """A shared file can no longer be read as hashed: stop sharing it, loudly."""
        key = (servable.group, servable.manifest.file_hash)
        if self.servables.get(key) is not servable:
            return
        self.unregister_servable(servable)
        name = servable.manifest.name
        share = self.store.shares.get((servable.group, name))
        if share is not None and share.manifest["file_hash"] == servable.manifest.file_hash:
            self.drop_share(share, "cannot read %s (%s); upload_file it again" % (share.path, why))

    def unregister_servable(self, servable: Servable) -> None:
        """Stop serving a file (download failed, share stopped)."""
        key = (servable.group, servable.manifest.file_hash)
        if self.servables.get(key) is servable:
            del self.servables[key]
            self.server_factory.refuse_all("file no longer shared",
                                           lambda c: c.servable is servable)

    # -- groups --------------------------------------------------------------

    def _request(self, op: str, **args) -> defer.Deferred:
        try:
            self._need_login()
        except MbtError as e:
            return defer.fail(e)
        return self.tracker.request(op, **args)

    def create_group(self, group: str) -> defer.Deferred:
        return self._request("create_group", group=check_id("group id", group))

    def list_groups(self) -> defer.Deferred:
        return self._request("list_groups")

    def join_group(self, group: str) -> defer.Deferred:
        return self._request("join_group", group=check_id("group id", group))

    @defer.inlineCallbacks
    def leave_group(self, group: str):
        check_id("group id", group)
        result = yield self._request("leave_group", group=group)
        # The tracker dropped our shares in that group: stop serving them here too.
        for key in [k for k in self.store.shares if k[0] == group]:
            share = self.store.remove_share(key)
            servable = self.servables.get((group, share.manifest["file_hash"]))
            if servable is not None:
                self.unregister_servable(servable)
                servable.piece_file.close()
        for dl in self.downloads.values():
            if dl.record.group == group and dl.status == DownloadState.RUNNING:
                dl.fail("left group %s" % group)
        return result

    def list_requests(self, group: str) -> defer.Deferred:
        return self._request("list_requests", group=check_id("group id", group))

    def accept_request(self, group: str, user: str) -> defer.Deferred:
        return self._request("accept_request", group=check_id("group id", group),
                             user=check_id("user id", user))

    def reject_request(self, group: str, user: str) -> defer.Deferred:
        return self._request("reject_request", group=check_id("group id", group),
                             user=check_id("user id", user))

    def list_files(self, group: str) -> defer.Deferred:
        return self._request("list_files", group=check_id("group id", group))

    # -- sharing -------------------------------------------------------------

    def resolve_path(self, path: str) -> str:
        """A user's path: ``~`` expanded, relative to the client's working directory."""
        return os.path.normpath(os.path.join(self.cwd, os.path.expanduser(path)))

    @defer.inlineCallbacks
    def upload_file(self, path: str, group: str):
        """Hash a file (in a thread, with progress) and share it in ``group``."""
        self._need_login()
        check_id("group id", group)
        full = self.resolve_path(path)
        if not os.path.exists(full):
            raise InvalidArgument("no such file: %s" % full)
        if os.path.isdir(full):
            raise InvalidArgument("%s is a directory; upload_file shares one file" % full)
        if not os.path.isfile(full):
            raise InvalidArgument("%s is not a regular file" % full)
        if not os.access(full, os.R_OK):
            raise InvalidArgument("cannot read %s: permission denied" % full)
        name = check_file_name(os.path.basename(full))
        old = self.store.shares.get((group, name))
        if old is not None and old.user not in ("", self.user):
            old = None          # another user's share on this peer
        if old is not None and old.path == full and old.changed_on_disk() is None:
            # The very file we already share, unchanged: nothing to hash. Announce
            # it again all the same (cheap) in case the tracker lost it.
            result = yield self._request("share_file", group=group, manifest=old.manifest)
            self._serve_share(old)
            m = old.get_manifest()
            return {"name": name, "group": group, "size": m.size, "pieces": m.pieces,
                    "sharers": result.get("sharers", 1), "seconds": 0.0, "already": True,
                    "path": full, "previous_path": None}
        # Membership first: a non-member learns it before a long hash.
        yield self._request("list_files", group=group)
        st = os.stat(full)
        progress = _Progress(self, name, st.st_size)
        try:
            manifest = yield self.run_in_thread(
                hash_file, full, name, lambda done, total: self.reactor.callFromThread(progress, done, total))
        except OSError as e:
            raise InvalidArgument("cannot read %s: %s" % (full, e.strerror or e))
        st2 = os.stat(full)
        if (st2.st_size, st2.st_mtime_ns, st2.st_ino) != (st.st_size, st.st_mtime_ns, st.st_ino):
            raise InvalidArgument("%s changed while it was hashed; try again" % full)
        result = yield self._request("share_file", group=group, manifest=manifest.to_dict())
        share = Share(group=group, name=name, path=full, manifest=manifest.to_dict(),
                      size=st.st_size, mtime_ns=st.st_mtime_ns, user=self.user)
        share.record(st)
        old = self.store.shares.get(share.key)
        if old is not None:
            servable = self.servables.get((group, old.manifest["file_hash"]))
            if servable is not None and servable.piece_file.path != full:
                self.unregister_servable(servable)
                servable.piece_file.close()
        same = (old is not None and old.path == full
                and old.manifest["file_hash"] == manifest.file_hash)
        moved = old.path if old is not None and old.path != full else None
        self.store.put_share(share)
        self._serve_share(share)
        return {"name": name, "group": group, "size": manifest.size, "pieces": manifest.pieces,
                "sharers": result.get("sharers", 1), "seconds": progress.elapsed(),
                "already": same, "path": full, "previous_path": moved}

    @defer.inlineCallbacks
    def stop_share(self, group: str, name: str):
        self._need_login()
        check_id("group id", group)
        check_file_name(name)
        yield self._request("stop_share", group=group, name=name)
        share = self.store.remove_share((group, name))
        if share is not None:
            servable = self.servables.get((group, share.manifest["file_hash"]))
            if servable is not None:
                self.unregister_servable(servable)
                servable.piece_file.close()
        dl = self.downloads.get((group, name))
        if dl is not None:
            dl.no_share = True          # also once it completes, and after a restart of it
            if dl.servable is not None:
                self.unregister_servable(dl.servable)
        return {"group": group, "name": name}

    # -- downloads -----------------------------------------------------------

    @defer.inlineCallbacks
    def download_file(self, group: str, name: str, destination: str):
        """Start a background download; fires once it is under way."""
        self._need_login()
        check_id("group id", group)
        check_file_name(name)
        # The tracker first: not a member / no such file beat any local problem.
        user = self.user
        info = yield self._request("get_peers", group=group, name=name)
        if self.user != user:
            raise NotLoggedIn("you logged out while the download was being set up; nothing started")
        manifest = Manifest.from_dict(info.get("manifest"))
        # What we have ourselves before who else has it: the tracker never lists
        # our own peer, so "nobody is sharing" would be wrong if we do.
        current = self.downloads.get((group, name))
        if current is not None and current.status == DownloadState.RUNNING:
            raise AlreadyDownloading("already downloading %s from %s into %s" % (name, group, current.record.dest))
        share = self.store.shares.get((group, name))
        if share is not None and (self.check_share(share) or self.store.shares.get(share.key) is share):
            raise AlreadyShared("you already share %s in %s (%s)" % (name, group, share.path))
        if not info.get("peers"):
            raise NoPeers("nobody is sharing %s in %s right now; try again later" % (name, group))
        if not destination.strip():
            raise InvalidArgument("empty destination; give a directory or a new file path")
        dest = self.resolve_path(destination)
        if os.path.isdir(dest):
            dest = os.path.join(dest, name)
        else:
            parent = os.path.dirname(dest) or "."
            if os.path.exists(parent) and not os.path.isdir(parent):
                raise InvalidArgument("%s is not a directory" % parent)
            if not os.path.isdir(parent):
                raise InvalidArgument("directory %s does not exist" % parent)
        if os.path.lexists(dest):
            raise InvalidArgument("%s already exists; it is never overwritten" % dest)
        if not os.access(os.path.dirname(dest), os.W_OK):
            raise InvalidArgument("cannot write to %s: permission denied" % os.path.dirname(dest))
        if any(d.record.dest == dest and d.status == DownloadState.RUNNING for d in self.downloads.values()):
            raise InvalidArgument("another download is writing to %s" % dest)
        if os.path.lexists(dest + ".part"):
            raise InvalidArgument("%s.part exists (another program's partial file?); remove it first" % dest)
        record = DownloadRecord(group=group, name=name, dest=dest, manifest=manifest.to_dict(),
                                user=self.user)
        self.store.put_download(record)
        old = self.downloads.get((group, name))
        if old is not None:
            old.pause()
        dl = self.downloads[(group, name)] = Download(self, record, self.reactor, self.run_in_thread, self.rng)
        dl.start()
        return {"name": name, "dest": dest}

    def _mine(self, owner: str) -> bool:
        return self.user is None or owner in ("", self.user)

    def my_downloads(self) -> List[Download]:
        """The logged-in user's downloads, oldest first (every one when logged out)."""
        return [dl for dl in self.downloads.values() if self._mine(dl.record.user)]

    def show_downloads(self) -> List[DownloadProgress]:
        """The progress of each download of the logged-in user (all of them when
        logged out), oldest first."""
        return [dl.progress() for dl in self.my_downloads()]

    def clear_downloads(self) -> int:
        """Forget the finished ([C] and [F]) downloads of this user; return how many.

        A completed file stays where it is and stays shared: only its line goes.
        """
        done = [key for key, dl in self.downloads.items()
                if dl.status in (DownloadState.COMPLETE, DownloadState.FAILED) and self._mine(dl.record.user)]
        for key in done:
            del self.downloads[key]
        self.store.remove_downloads(done)
        return len(done)

    def download_ended(self, dl: Download) -> None:
        """A download completed or failed: persist, and share a complete file."""
        if dl.status == DownloadState.COMPLETE and dl.no_share:
            self.notify("download of %s from %s complete: %s (not shared: you ran stop_share)"
                        % (dl.record.name, dl.record.group, dl.record.dest))
        elif dl.status == DownloadState.COMPLETE:
            # The file we wrote and verified, not whatever the path names by now.
            st = (os.fstat(dl.piece_file.fd) if dl.piece_file is not None and dl.piece_file.fd is not None
                  else os.stat(dl.record.dest))
            share = Share(group=dl.record.group, name=dl.record.name, path=dl.record.dest,
                          manifest=dl.manifest.to_dict(), size=st.st_size, mtime_ns=st.st_mtime_ns,
                          user=dl.record.user)
            share.record(st)
            self.store.put_share(share)
            # Keep serving from the very same open file (the rename kept the inode).
            if dl.servable is not None and dl.piece_file is not None:
                dl.servable.piece_file = dl.piece_file
            else:
                self._serve_share(share)
            if not dl.announced and self.user is not None:
                dl.announce()
            self.notify("download of %s from %s complete: %s" % (dl.record.name, dl.record.group, dl.record.dest))
        else:
            self.notify("download of %s from %s failed: %s" % (dl.record.name, dl.record.group, dl.reason))
            if dl.announced and self.user is not None and dl.key not in self.store.shares:
                self.tracker.request("stop_share", group=dl.record.group,
                                     name=dl.record.name).addErrback(lambda f: None)
        self.store.save_downloads()


def membership_notice(event: dict) -> Optional[str]:
    """The console line for a membership event, or None if it is not one we know."""
    try:
        group = check_id("group id", event.get("group"))
        kind = event.get("kind")
        if event.get("push") != "membership":
            return None
        if kind == "accepted":
            return "%s accepted you into group %s; list_files %s shows its files" % (
                check_id("user id", event.get("by")), group, group)
        if kind == "rejected":
            return "%s turned down your request to join group %s" % (check_id("user id", event.get("by")), group)
        if kind == "requested":
            user = check_id("user id", event.get("user"))
            return "%s asks to join your group %s; accept_request %s %s or reject_request %s %s" % (
                user, group, group, user, group, user)
        if kind == "owner":
            return "you are now the owner of group %s (%s left it)" % (group, check_id("user id", event.get("by")))
    except MbtError:
        return None
    return None


class _Progress:
    """Prints hashing progress of a big file every few seconds."""

    def __init__(self, node: PeerNode, name: str, total: int) -> None:
        self.node, self.name, self.total = node, name, total
        self.start = node.reactor.seconds()
        self.last = self.start

    def __call__(self, done: int, total: int) -> None:
        now = self.node.reactor.seconds()
        if now - self.last >= PROGRESS_INTERVAL and done < total:
            self.last = now
            rate = done / max(1e-6, now - self.start) / 1e6
            self.node.notify("hashing %s: %d%% (%.0f MB/s)" % (self.name, 100 * done // max(1, total), rate))

    def elapsed(self) -> float:
        return self.node.reactor.seconds() - self.start
