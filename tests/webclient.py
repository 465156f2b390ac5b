"""A small cookie-keeping HTTP client for the web page's tests (twisted.web Agent)."""

from __future__ import annotations

import json
from typing import Optional

from twisted.internet import defer, reactor
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer


@implementer(IBodyProducer)
class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def stopProducing(self):
        pass


class Reply:
    """Status, headers and body of one response."""

    def __init__(self, code: int, headers: Headers, body: bytes) -> None:
        self.code, self.headers, self.body = code, headers, body

    def header(self, name: str) -> Optional[str]:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def json(self):
        return json.loads(self.body.decode("utf-8"))


class WebClient:
    """One browser: keeps the session cookie and the CSRF token."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.agent = Agent(reactor)
        self.cookie: Optional[str] = None
        self.csrf: Optional[str] = None
        self.set_cookies = []

    @defer.inlineCallbacks
    def request(self, method: str, path: str, body: Optional[bytes] = None, headers: Optional[dict] = None):
        h = Headers({"host": [self.url.split("//", 1)[1]]})
        if self.cookie:
            h.addRawHeader("cookie", "mbt_session=" + self.cookie)
        for k, v in (headers or {}).items():
            h.addRawHeader(k, v)
        resp = yield self.agent.request(method.encode(), (self.url + path).encode(), h,
                                        _Bytes(body) if body is not None else None)
        data = yield readBody(resp)
        for c in resp.headers.getRawHeaders("set-cookie") or []:
            self.set_cookies.append(c)
            if c.startswith("mbt_session="):
                self.cookie = c.split(";", 1)[0].split("=", 1)[1]
        return Reply(resp.code, resp.headers, data)

    def get(self, path: str):
        return self.request("GET", path)

    @defer.inlineCallbacks
    def state(self):
        r = yield self.get("/api/state")
        self.csrf = r.json()["csrf"]
        return r.json()

    def post(self, _action: str, csrf: Optional[str] = "session", content_type: str = "application/json", **args):
        headers = {"content-type": content_type}
        token = self.csrf if csrf == "session" else csrf
        if token is not None:
            headers["x-csrf-token"] = token
        return self.request("POST", "/api/" + _action, json.dumps(args).encode(), headers)

    @defer.inlineCallbacks
    def sign_in(self, user: str, password: str, create: bool = False):
        yield self.state()
        if create:
            r = yield self.post("create_user", user=user, password=password)
            assert r.code == 200, r.body
        r = yield self.post("login", user=user, password=password)
        assert r.code == 200, r.body
        self.csrf = r.json()["state"]["csrf"]
        return r.json()
