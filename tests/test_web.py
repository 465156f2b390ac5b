"""The web page's resources over real HTTP on loopback, against a real tracker and peers.

Each route's success and error paths, the CSRF and sign-in refusals, the
security headers and cookie flags, escaping, and the live channel. The page's
actions must answer exactly what the console answers (one implementation).
"""

import json
import os

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.web.client import Agent
from twisted.web.http_headers import Headers

from mbt.web.server import normalize_endpoint, start_web, stop_web
from mbt.web.sessions import SessionStore
from tests.cluster import Cluster, make_file, sha256_file, wait_download, wait_for
from tests.webclient import WebClient

XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    pytest_twisted.blockon(c.stop())


@pytest.fixture
def webs():
    started = []
    yield started
    for w in started:
        pytest_twisted.blockon(stop_web(w))


@defer.inlineCallbacks
def web_for(node, webs):
    started = yield start_web(reactor, node, node.commands, "tcp:0")
    webs.append(started)
    return WebClient(started[1])


def test_endpoints_default_to_loopback():
    assert normalize_endpoint("tcp:8080") == "tcp:8080:interface=127.0.0.1"
    assert normalize_endpoint("8080") == "tcp:8080:interface=127.0.0.1"
    assert normalize_endpoint("tcp:8080:interface=0.0.0.0") == "tcp:8080:interface=0.0.0.0"
    assert normalize_endpoint("ssl:8443:privateKey=k.pem:certKey=c.pem") == \
        "ssl:8443:privateKey=k.pem:certKey=c.pem:interface=127.0.0.1"
    assert normalize_endpoint("unix:/tmp/x.sock") == "unix:/tmp/x.sock"


def test_sessions_are_bounded_and_expire():
    store = SessionStore(max_sessions=3, idle_limit=10)
    made = [store.create(0) for _ in range(5)]
    assert len(store) == 3 and store.get(made[0].token, 1) is None
    assert store.get(made[4].token, 5) is made[4]
    assert store.get(made[4].token, 16) is None          # idle too long
    s = store.create(20)
    assert not s.csrf_ok("") and not s.csrf_ok("x" * 43) and s.csrf_ok(s.csrf)
    fresh = store.renew(s, 21)
    assert store.get(s.token, 21) is None and fresh.token != s.token and fresh.csrf != s.csrf


@pytest_twisted.inlineCallbacks
def test_page_static_files_headers_and_cookie(cluster, webs):
    yield cluster.start_tracker()
    node = yield cluster.peer("p")
    web = yield web_for(node, webs)
    r = yield web.get("/")
    assert r.code == 200 and r.header("content-type").startswith("text/html")
    csp = r.header("content-security-policy")
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert r.header("x-content-type-options") == "nosniff"
    cookie = web.set_cookies[0]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Secure" not in cookie      # plain HTTP here; ssl: adds it (request.isSecure)
    body = r.body.decode()
    assert '<script src="/static/app.js"' in body and "<script>" not in body and "onclick" not in body
    assert "not signed in" in body and node.address in body
    for name, ctype in (("app.js", "text/javascript"), ("app.css", "text/css")):
        r = yield web.get("/static/" + name)
        assert r.code == 200 and r.header("content-type").startswith(ctype) and len(r.body) > 500
        again = yield web.request("GET", "/static/" + name, headers={"if-none-match": r.header("etag")})
        assert again.code == 304 and again.body == b""
    for path in ("/static/../resources.py", "/static/x.js", "/nope", "/api/nope"):
        r = yield web.get(path)
        assert r.code == 404, path


@pytest_twisted.inlineCallbacks
def test_csrf_content_type_origin_and_get_refusals(cluster, webs):
    yield cluster.start_tracker()
    node = yield cluster.peer("p")
    web = yield web_for(node, webs)
    yield web.state()
    r = yield web.post("create_user", csrf=None, user="ann", password="pw")
    assert r.code == 403 and "security token" in r.json()["error"]
    r = yield web.post("create_user", csrf="forged", user="ann", password="pw")
    assert r.code == 403
    r = yield web.post("create_user", content_type="application/x-www-form-urlencoded", user="ann", password="pw")
    assert r.code == 415
    r = yield web.request("POST", "/api/create_user", json.dumps({"user": "ann", "password": "pw"}).encode(),
                          {"content-type": "application/json", "x-csrf-token": web.csrf,
                           "origin": "http://evil.example"})
    assert r.code == 403 and "cross-site" in r.json()["error"]
    # No state change on GET: actions are not queries.
    r = yield web.get("/api/create_user?user=ann&password=pw")
    assert r.code == 404
    r = yield web.request("PUT", "/api/login")
    assert r.code == 405
    # A token from another browser does not work in this one.
    other = WebClient(web.url)
    yield other.state()
    r = yield web.post("create_user", csrf=other.csrf, user="ann", password="pw")
    assert r.code == 403
    r = yield web.post("create_user", user="ann", password="pw")
    assert r.code == 200 and r.json()["message"] == "user ann created; now login ann <passwd>"
    r = yield web.post("create_user", user="ann")
    assert r.code == 400 and r.json()["error"] == "password is missing"
    r = yield web.request("POST", "/api/login", b"{nope", {"content-type": "application/json",
                                                          "x-csrf-token": web.csrf})
    assert r.code == 400 and "not JSON" in r.json()["error"]


@pytest_twisted.inlineCallbacks
def test_sign_in_is_needed_and_follows_the_peer_session(cluster, webs):
    yield cluster.start_tracker()
    node = yield cluster.peer("p")
    web = yield web_for(node, webs)
    for path in ("/api/groups", "/api/files?group=g", "/api/downloads", "/events"):
        r = yield web.get(path)
        assert r.code == 401, path
    yield web.state()
    r = yield web.post("create_group", group="g")
    assert r.code == 401 and node.user is None
    r = yield web.post("login", user="ann", password="pw")
    assert r.code == 400
    console_says = yield node.commands.execute("login ann pw")
    assert r.json()["error"] == console_says[len("error: "):]
    old_cookie = web.cookie
    yield web.sign_in("ann", "pw", create=True)
    assert web.cookie != old_cookie and node.user == "ann"     # a new session at sign-in
    st = yield web.state()
    assert st["signed_in"] and st["user"] == "ann" and st["tracker"] == "127.0.0.1:%d" % cluster.tracker_address.port
    stale = WebClient(web.url)
    stale.cookie = old_cookie
    r = yield stale.get("/api/groups")
    assert r.code == 401
    # A second browser must prove the password of the session the peer is in.
    other = WebClient(web.url)
    yield other.state()
    r = yield other.post("login", user="ann", password="wrong")
    assert r.code == 400 and "already logged in as ann" in r.json()["error"]
    yield other.sign_in("ann", "pw")
    # Logout on the console signs every page out.
    yield node.commands.execute("logout")
    for w in (web, other):
        r = yield w.get("/api/groups")
        assert r.code == 401
    # Logging in again on the console does not sign old pages back in.
    yield node.commands.execute("login ann pw")
    r = yield web.get("/api/groups")
    assert r.code == 401
    yield web.sign_in("ann", "pw")
    r = yield web.post("logout")
    assert r.code == 200 and r.json()["message"].startswith("logged out ann") and node.user is None
    r = yield other.get("/api/groups")
    assert r.code == 401


@pytest_twisted.inlineCallbacks
def test_groups_requests_files_share_download_with_console_texts(cluster, webs, tmp_path):
    yield cluster.start_tracker()
    node = yield cluster.peer("web")
    web = yield web_for(node, webs)
    yield web.sign_in("ann", "pw", create=True)
    bob = yield cluster.user("bob")
    r = yield web.post("create_group", group="club")
    assert r.json()["message"] == "group club created; you are its owner"
    r = yield web.post("create_group", group="club")
    assert r.code == 400
    yield bob.commands.execute("join_group club")
    r = yield web.get("/api/groups")
    g = r.json()
    assert g["groups"] == [{"group": "club", "owner": "ann", "members": 1, "relation": "owner"}]
    assert g["requests"] == {"club": ["bob"]}
    bob_web = yield web_for(bob, webs)
    yield bob_web.sign_in("bob", "pw-bob")
    r = yield bob_web.get("/api/groups")
    assert r.json() == {"groups": [{"group": "club", "owner": "ann", "members": 1, "relation": "pending"}],
                        "requests": {}}
    r = yield web.post("accept_request", group="club", user="bob")
    assert r.json()["message"] == "bob is now a member of club"
    r = yield web.post("reject_request", group="club", user="nobody")
    assert r.code == 400 and r.json()["error"]
    r = yield web.get("/api/groups")
    assert r.json()["groups"][0]["members"] == 2 and r.json()["requests"] == {"club": []}
    yield bob.create_group("bobs")
    r = yield bob_web.get("/api/groups")
    assert [(g["group"], g["relation"]) for g in r.json()["groups"]] == [("bobs", "owner"), ("club", "member")]
    r = yield web.get("/api/groups")
    assert [(g["group"], g["relation"]) for g in r.json()["groups"]] == [("bobs", "none"), ("club", "owner")]
    # bob shares a file with a name that is HTML; the page gets it as plain data.
    os.makedirs(tmp_path / "b", exist_ok=True)
    sha = make_file(tmp_path / "b" / XSS, 2 * 512 * 1024 + 5)
    yield bob.commands.execute("upload_file %s club" % ("'b/%s'" % XSS))
    r = yield web.get("/api/files?group=club")
    files = r.json()["files"]
    assert files == [{"name": XSS, "size": 2 * 512 * 1024 + 5, "pieces": 3, "peers": 1, "mine": False}]
    assert b"<img" not in r.body or r.header("content-type").startswith("application/json")
    r = yield web.get("/api/files?group=nosuch")
    assert r.code == 400 and "nosuch" in r.json()["error"]
    r = yield web.get("/api/files")
    assert r.code == 400
    # Errors are the console's texts, word for word.
    (tmp_path / "exists.bin").write_bytes(b"x")
    r = yield web.post("download_file", group="club", name=XSS, dest="exists.bin")
    assert r.code == 400
    assert r.json()["error"] == "%s already exists; it is never overwritten" % (tmp_path / "exists.bin")
    r = yield web.post("download_file", group="club", name=XSS, dest="nodir/x")
    assert r.json()["error"] == "directory %s does not exist" % (tmp_path / "nodir")
    (tmp_path / "in").mkdir()
    r = yield web.post("download_file", group="club", name=XSS, dest="in")
    assert r.json()["message"] == "downloading %s into %s" % (XSS, tmp_path / "in" / XSS)
    assert (yield wait_download(node, "club", XSS)) == "C"
    assert sha256_file(tmp_path / "in" / XSS) == sha
    r = yield web.get("/api/downloads")
    (d,) = r.json()["downloads"]
    assert d["state"] == "C" and d["percent"] == 100.0 and d["map"] == "vvv" and d["dest"] == str(tmp_path / "in" / XSS)
    assert d["sources"] == [bob.address] and d["src"] == "000"
    # The completed download is shared by us now: Stop sharing.
    r = yield web.get("/api/files?group=club")
    assert r.json()["files"][0]["mine"] is True and r.json()["files"][0]["peers"] == 2
    r = yield web.post("stop_share", group="club", name=XSS)
    assert r.json()["message"] == "stopped sharing %s in club" % XSS
    # Share a file by path; the console's reply is the page's message.
    make_file(tmp_path / "mine.bin", 1000)
    r = yield web.post("upload_file", path="mine.bin", group="club")
    assert r.json()["message"] == "shared mine.bin in club: 1000 bytes (1000 B), 1 piece"
    r = yield web.post("upload_file", path="missing.bin", group="club")
    assert r.json()["error"] == "no such file: %s" % (tmp_path / "missing.bin")
    r = yield web.post("clear_downloads")
    assert r.json()["message"] == "cleared 1 finished download"
    r = yield web.get("/api/downloads")
    assert r.json()["downloads"] == []
    r = yield web.post("leave_group", group="club")
    assert r.json()["message"] == "left group club; ownership passed to bob"
    r = yield web.post("join_group", group="club")
    assert r.json()["message"] == "asked to join club; waiting for its owner bob to accept"
    r = yield web.post("create_group", group=XSS)
    assert r.code == 400 and XSS in r.json()["error"]


@pytest_twisted.inlineCallbacks
def test_events_stream_downloads_notices_and_signout(cluster, webs):
    yield cluster.start_tracker()
    node = yield cluster.peer("p")
    web = yield web_for(node, webs)
    yield web.sign_in("ann", "pw", create=True)
    received = []
    done = defer.Deferred()

    class Collect:
        def dataReceived(self, data):
            received.append(data)

        def connectionLost(self, reason):
            done.callback(None)

        def makeConnection(self, transport):
            pass

    h = Headers({"cookie": ["mbt_session=" + web.cookie], "host": [web.url.split("//")[1]]})
    resp = yield Agent(reactor).request(b"GET", (web.url + "/events").encode(), h)
    assert resp.code == 200
    assert resp.headers.getRawHeaders("content-type")[0].startswith("text/event-stream")
    from twisted.internet.protocol import Protocol
    proto = Protocol()
    proto.dataReceived = lambda data: received.append(data)
    proto.connectionLost = lambda reason: done.callback(None)
    resp.deliverBody(proto)
    yield wait_for(lambda: b"event: downloads\ndata: []" in b"".join(received), 5, what="first event")
    node.notify("hello <b>page</b>")
    yield wait_for(lambda: b"event: notice" in b"".join(received), 5, what="notice")
    text = b"".join(received).decode()
    notice = [ln for ln in text.split("\n") if ln.startswith("data: {\"text\"")][0]
    assert json.loads(notice[6:]) == {"text": "notice: hello <b>page</b>"}
    yield node.logout()
    yield wait_for(lambda: done.called, 5, what="stream closed after logout")
    assert b"event: signout" in b"".join(received)
    app = webs[0][2]
    yield wait_for(lambda: not app.events.pages and app.events._loop is None, 5, what="ticker stopped")


def test_piece_map_and_sources_of_a_running_download(tmp_path):
    from twisted.internet import task

    from mbt.manifest import hash_file
    from mbt.peer.download import Download
    from mbt.peer.picker import PiecePicker
    from mbt.peer.shares import DownloadRecord
    from mbt.web.views import download_view
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 8192)            # 2 MiB: 4 pieces
    manifest = hash_file(str(src))
    record = DownloadRecord(group="g", name="src.bin", dest=str(tmp_path / "out.bin"),
                            manifest=manifest.to_dict(), have=[3])
    dl = Download(object(), record, task.Clock(), run_in_thread=None)
    assert dl.piece_map() == "...v"                        # saved progress before the resume check
    dl.have = {0, 3}
    dl.picker = PiecePicker(manifest.size, have={0, 3}, random_first=0)
    peer = object()
    dl.picker.add_peer(peer, {0, 1, 2, 3})
    reqs = dl.picker.next_requests(peer, 1, 0.0)
    dl.sources = {0: "10.0.0.1:7000"}
    cells = dl.piece_map()
    assert cells[0] == "v" and cells[3] == "v" and cells[reqs[0].index] == "f" and cells.count(".") == 1
    view = download_view(dl)
    assert view["sources"] == ["10.0.0.1:7000"] and view["src"] == "0--" "-"
    assert view["state"] == "D" and view["note"] == "paused until login" and view["eta"] is None


def test_twistd_peer_serves_the_page_over_tls_with_a_secure_cookie(procs, tmp_path):
    import ssl
    import time
    import urllib.request

    from mbt import certs
    from mbt.driver import Process, bin_path, free_port, wait_port
    from tests.test_e2e import start_tracker
    _, info, _ = start_tracker(procs, tmp_path)
    ca_key, ca_cert = certs.make_ca()
    ca_path, _ = certs.write_pair(str(tmp_path), "ca", ca_key, ca_cert)
    key, cert = certs.make_cert(ca_key, ca_cert, "peer")
    cert_path, key_path = certs.write_pair(str(tmp_path), "peer", key, cert)
    web_port = free_port()
    log = tmp_path / "peer.log"
    peer = Process([bin_path("twistd"), "-n", "--pidfile=", "mbt-peer", "--address", "127.0.0.1:%d" % free_port(),
                    "--info", info, "--console", "tcp:%d" % free_port(), "--state-dir", str(tmp_path / "peer"),
                    "--web", "ssl:%d:privateKey=%s:certKey=%s" % (web_port, key_path, cert_path)],
                   cwd=str(tmp_path), log=str(log))
    procs.append(peer)
    wait_port(web_port, 30, peer.proc)
    url = "https://127.0.0.1:%d/" % web_port
    deadline = time.monotonic() + 10
    while "web page: %s" % url not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "web page: %s" % url in log.read_text()
    ctx = ssl.create_default_context(cafile=ca_path)
    with urllib.request.urlopen(url, context=ctx, timeout=10) as resp:
        assert resp.status == 200 and b"/static/app.js" in resp.read()
        cookie = resp.headers["set-cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
