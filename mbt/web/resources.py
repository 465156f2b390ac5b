"""The routes of the web page (twisted.web resources).

``GET /`` the page; ``GET /static/app.js|app.css``; ``GET /api/<query>`` JSON
queries; ``POST /api/<action>`` actions (JSON body, ``X-CSRF-Token`` header);
``GET /events`` the server-sent event stream. Every action runs the console's
own command (:class:`~mbt.peer.commands.CommandTable`), so its rules and its
texts, success and error alike, are the console's; queries call the same
:class:`~mbt.peer.node.PeerNode` methods as the console's listings.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Dict, Optional
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import http, resource, server
from twisted.web.template import renderElement

from mbt.errors import MbtError, NotLoggedIn, UsageError
from mbt.web.events import EventHub
from mbt.web.page import Page
from mbt.web.sessions import Session, SessionStore
from mbt.web.views import download_view, file_rows, group_rows

log = Logger(namespace="mbt.web")

COOKIE = b"mbt_session"
#: Largest request body accepted (bytes): every action takes a few short strings.
MAX_BODY = 16 * 1024
#: Longest argument accepted (characters): paths are the longest.
MAX_ARG = 4096

CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       b"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC_TYPES = {"app.js": b"text/javascript; charset=utf-8", "app.css": b"text/css; charset=utf-8"}


def security_headers(request) -> None:
    """Headers every response carries."""
    request.setHeader(b"content-security-policy", CSP)
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"referrer-policy", b"no-referrer")


def plain_text(request, code: int, text: bytes) -> bytes:
    """A short plain-text answer with status ``code`` (refusals and 404s)."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return text


class WebApp:
    """What the resources share: the node, its command table, sessions, events."""

    def __init__(self, node, table, reactor) -> None:
        self.node = node
        self.table = table
        self.reactor = reactor
        self.sessions = SessionStore()
        self.events = EventHub(node, reactor, self.signed_in)

    def signed_in(self, session: Optional[Session]) -> bool:
        """May this browser act as the peer's logged-in user? Only during the
        very login it signed in to: a logout anywhere ends it for good."""
        return (session is not None and session.user is not None and session.user == self.node.user
                and session.login_serial == self.node.login_serial)

    def sign_in(self, request, session: Session, user: str) -> Session:
        """A fresh session (new cookie and CSRF token) signed in to the current login."""
        fresh = self.sessions.renew(session, self.reactor.seconds())
        fresh.user, fresh.login_serial = user, self.node.login_serial
        self.set_cookie(request, fresh)
        return fresh

    def session_for(self, request, create: bool = True) -> Optional[Session]:
        """The request's session; a new one (and its cookie) if it has none."""
        now = self.reactor.seconds()
        token = request.getCookie(COOKIE)
        session = self.sessions.get(token.decode("ascii", "replace") if token else None, now)
        if session is None and create:
            session = self.sessions.create(now)
            self.set_cookie(request, session)
        return session

    def set_cookie(self, request, session: Session) -> None:
        request.addCookie(COOKIE, session.token.encode("ascii"), path=b"/", httpOnly=True,
                          secure=True if request.isSecure() else None, sameSite="strict")

    def tracker_text(self) -> str:
        t = self.node.tracker
        current = getattr(t, "current", None)
        if not t.ready or current is None:
            return "no tracker reachable right now"
        return "%s:%d" % (current.host, current.port)

    def state(self, session: Session) -> dict:
        signed = self.signed_in(session)
        return {"signed_in": signed, "user": self.node.user if signed else None,
                "peer_user": self.node.user is not None, "tracker": self.tracker_text(),
                "address": self.node.address, "csrf": session.csrf}


class PageResource(resource.Resource):
    """``GET /``: the page shell."""

    isLeaf = True

    def __init__(self, app: WebApp) -> None:
        super().__init__()
        self.app = app

    def render_GET(self, request):
        security_headers(request)
        request.setHeader(b"cache-control", b"no-store")
        if request.postpath not in ([], [b""]):
            return plain_text(request, 404, b"no such page\n")
        session = self.app.session_for(request)
        if self.app.signed_in(session):
            who = "signed in as %s; tracker %s" % (session.user, self.app.tracker_text())
        else:
            who = "not signed in; tracker %s" % self.app.tracker_text()
        return renderElement(request, Page(self.app.node.address, who))


class StaticResource(resource.Resource):
    """``GET /static/app.js`` and ``/static/app.css`` from the package (read once)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.files: Dict[str, bytes] = {}
        self.etags: Dict[str, bytes] = {}
        for name in STATIC_TYPES:
            with open(os.path.join(STATIC_DIR, name), "rb") as f:
                self.files[name] = f.read()
            self.etags[name] = b'"%s"' % hashlib.sha256(self.files[name]).hexdigest()[:20].encode()

    def render_GET(self, request):
        security_headers(request)
        name = request.postpath[0].decode("ascii", "replace") if len(request.postpath) == 1 else ""
        if name not in self.files:
            return plain_text(request, 404, b"no such file\n")
        request.setHeader(b"content-type", STATIC_TYPES[name])
        request.setHeader(b"cache-control", b"no-cache")     # revalidated: 304 while unchanged
        if request.setETag(self.etags[name]) == http.CACHED:
            return b""
        return self.files[name]


class EventsResource(resource.Resource):
    """``GET /events``: the live channel (signed-in pages only)."""

    isLeaf = True

    def __init__(self, app: WebApp) -> None:
        super().__init__()
        self.app = app

    def render_GET(self, request):
        security_headers(request)
        session = self.app.session_for(request, create=False)
        if not self.app.signed_in(session):
            return plain_text(request, 401, b"not signed in\n")
        self.app.events.add(request, session)
        return server.NOT_DONE_YET


class _Reply(Exception):
    """An HTTP refusal with a message for the page."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class ApiResource(resource.Resource):
    """``/api/<name>``: JSON queries (GET) and actions (POST with a CSRF token)."""

    isLeaf = True

    def __init__(self, app: WebApp) -> None:
        super().__init__()
        self.app = app
        #: GET queries: name -> (handler(session, query args), needs sign-in).
        self.queries: Dict[str, tuple] = {
            "state": (self.q_state, False),
            "groups": (self.q_groups, True),
            "files": (self.q_files, True),
            "downloads": (self.q_downloads, True),
        }
        #: POST actions: name -> (handler(session, body), argument names, needs sign-in).
        self.actions: Dict[str, tuple] = {
            "create_user": (self.a_create_user, ["user", "password"], False),
            "login": (self.a_login, ["user", "password"], False),
            "logout": (self.a_logout, [], True),
            "create_group": (self.a_command("create_group"), ["group"], True),
            "join_group": (self.a_command("join_group"), ["group"], True),
            "leave_group": (self.a_command("leave_group"), ["group"], True),
            "accept_request": (self.a_command("accept_request"), ["group", "user"], True),
            "reject_request": (self.a_command("reject_request"), ["group", "user"], True),
            "upload_file": (self.a_command("upload_file"), ["path", "group"], True),
            "download_file": (self.a_command("download_file"), ["group", "name", "dest"], True),
            "stop_share": (self.a_command("stop_share"), ["group", "name"], True),
            "clear_downloads": (self.a_command("clear_downloads"), [], True),
        }

    # -- dispatch ------------------------------------------------------------

    def render(self, request):
        security_headers(request)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        name = request.postpath[0].decode("utf-8", "replace") if len(request.postpath) == 1 else ""
        try:
            if request.method in (b"GET", b"HEAD"):
                d = self._query(request, name)
            elif request.method == b"POST":
                d = self._action(request, name)
            else:
                request.setHeader(b"allow", b"GET, POST")
                raise _Reply(405, "method not allowed")
        except _Reply as e:
            d = defer.fail(e)
        finished = []
        request.notifyFinish().addBoth(finished.append)
        d.addCallbacks(lambda body: (200, body), self._error, errbackArgs=(name,))

        def write(result):
            if finished:
                return      # the browser went away
            code, body = result
            request.setResponseCode(code)
            request.write(json.dumps(body, separators=(",", ":")).encode("utf-8"))
            request.finish()
        d.addCallback(write).addErrback(lambda f: log.failure("web reply failed", f))
        return server.NOT_DONE_YET

    def _error(self, failure, name: str):
        if failure.check(_Reply):
            return failure.value.code, {"error": failure.value.message}
        if failure.check(NotLoggedIn):
            return 401, {"error": failure.value.message, "code": NotLoggedIn.code}
        if failure.check(MbtError):
            return 400, {"error": failure.value.message, "code": failure.value.code}
        log.failure("web action {name} failed", failure, name=name)   # never the arguments
        return 500, {"error": "internal error in %s (%s); see the peer's log" % (name, failure.type.__name__)}

    def _query(self, request, name: str) -> defer.Deferred:
        entry = self.queries.get(name)
        if entry is None:
            raise _Reply(404, "no such query: %s" % name[:40])
        handler, needs = entry
        session = self.app.session_for(request)
        if needs and not self.app.signed_in(session):
            raise _Reply(401, "not signed in")
        args = {k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace")
                for k, v in request.args.items() if v}
        return defer.maybeDeferred(handler, session, args)

    def _action(self, request, name: str) -> defer.Deferred:
        entry = self.actions.get(name)
        if entry is None:
            raise _Reply(404, "no such action: %s" % name[:40])
        handler, argnames, needs = entry
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            raise _Reply(415, "actions take a JSON body")
        origin = request.getHeader(b"origin")
        host = request.getHeader(b"host")
        if origin is not None and (host is None or urlsplit(origin.decode("latin-1")).netloc.encode("latin-1") != host):
            raise _Reply(403, "cross-site request refused")
        session = self.app.session_for(request, create=False)
        if session is None or not session.csrf_ok(
                (request.getHeader(b"x-csrf-token") or b"").decode("ascii", "replace")):
            raise _Reply(403, "your page's security token is out of date; reload the page")
        if needs and not self.app.signed_in(session):
            raise _Reply(401, "not signed in")
        raw = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        if len(raw) > MAX_BODY:
            raise _Reply(413, "request too large")
        try:
            body = json.loads(raw.decode("utf-8") or "{}")
        except (UnicodeDecodeError, ValueError):
            raise _Reply(400, "the request body is not JSON")
        if not isinstance(body, dict):
            raise _Reply(400, "the request body must be a JSON object")
        args = []
        for a in argnames:
            value = body.get(a)
            if not isinstance(value, str):
                raise _Reply(400, "%s is missing" % a)
            if len(value) > MAX_ARG:
                raise _Reply(400, "%s is too long" % a)
            args.append(value)
        return defer.maybeDeferred(handler, request, session, *args)

    # -- queries ---------------------------------------------------------------

    def q_state(self, session: Session, args: dict) -> dict:
        return self.app.state(session)

    @defer.inlineCallbacks
    def q_groups(self, session: Session, args: dict):
        node = self.app.node
        result = yield node.list_groups()
        rows = group_rows(result.get("groups", []), node.user)
        owned = [r["group"] for r in rows if r["relation"] == "owner"]
        answers = yield defer.DeferredList([node.list_requests(g) for g in owned], consumeErrors=True)
        requests = {}
        for g, (ok, value) in zip(owned, answers):
            requests[g] = value.get("requests", []) if ok else []
        return {"groups": rows, "requests": requests}

    @defer.inlineCallbacks
    def q_files(self, session: Session, args: dict):
        group = args.get("group", "")
        if not group:
            raise UsageError("which group? (group is missing)")
        node = self.app.node
        result = yield node.list_files(group)
        rows = file_rows(result.get("files", []))
        for r in rows:
            share = node.store.shares.get((group, r["name"]))
            r["mine"] = share is not None and share.user in ("", node.user)
        return {"group": group, "files": rows}

    def q_downloads(self, session: Session, args: dict) -> dict:
        return {"downloads": [download_view(dl) for dl in self.app.node.my_downloads()]}

    # -- actions ---------------------------------------------------------------

    def a_command(self, name: str) -> Callable:
        """The console command ``name``: its reply text is the page's message."""
        method = getattr(self.app.table, "cmd_" + name)

        def run(request, session, *args):
            return defer.maybeDeferred(method, *args).addCallback(lambda text: {"message": text})
        return run

    def a_create_user(self, request, session, user: str, password: str):
        return self.app.table.cmd_create_user(user, password).addCallback(
            lambda text: {"message": text})

    @defer.inlineCallbacks
    def a_login(self, request, session, user: str, password: str):
        node = self.app.node
        if node.is_session(user, password):
            text = "signed in as %s (this peer was already logged in)" % user
        else:
            text = yield self.app.table.cmd_login(user, password)
        fresh = self.app.sign_in(request, session, user)
        return {"message": text, "state": self.app.state(fresh)}

    @defer.inlineCallbacks
    def a_logout(self, request, session):
        text = yield self.app.table.cmd_logout()
        return {"message": text, "state": self.app.state(session)}


class NotFound(resource.Resource):
    """Any other path: a plain 404 with the same headers."""

    isLeaf = True

    def render(self, request):
        security_headers(request)
        return plain_text(request, 404, b"no such page\n")


class Root(resource.Resource):
    """``/``, ``/static/``, ``/api/``, ``/events``; nothing else."""

    def __init__(self, app: WebApp) -> None:
        super().__init__()
        self.children_by_name = {b"": PageResource(app), b"static": StaticResource(),
                                 b"api": ApiResource(app), b"events": EventsResource(app)}

    def getChild(self, path: bytes, request):
        return self.children_by_name.get(path) or NotFound()

    def render(self, request):
        return self.children_by_name[b""].render(request)


def build_root(app: WebApp) -> resource.Resource:
    """The resource tree of the page."""
    return Root(app)
