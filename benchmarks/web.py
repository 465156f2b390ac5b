"""Speed of the web page (issue #15): render time for 1,000 files, live-channel CPU.

1. render: a real tracker and a real ``mbt-client --web`` whose group holds
   1,000 shared files. Timed over HTTP (urllib, median of ``--runs``): the
   page (``GET /``) and its data (``GET /api/files``); and, when Chromium and
   Selenium are here, in the real browser: from the click on the group's
   Files button until its 1,000 rows are in the table (median of ``--runs``).
   Target: < 200 ms.
2. live:  a seeder and a leecher in this process on loopback, a 300 MB
   download, with ``--pages`` pages (real HTTP connections) reading the
   event stream. The reactor-thread CPU spent building and writing events
   (thread_time around every tick and notice) per second of download and per
   page, as a share of one core. Target: < 2 %.

Usage: python benchmarks/web.py [--work DIR] [--runs N] [--size-mb 300] [--pages 1] [--only render|live]
Data files live in --work (default $MBT_BENCH_DIR or /tmp/mbt-bench), never in the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FILES = 1000


def _fresh(work: str, name: str) -> str:
    d = os.path.join(work, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


class Http:
    """A cookie-keeping urllib client of the page."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.cookie = ""
        self.csrf = ""

    def call(self, method: str, path: str, body=None):
        headers = {"cookie": self.cookie}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers.update({"content-type": "application/json", "x-csrf-token": self.csrf})
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(req, timeout=30) as resp:
            for c in resp.headers.get_all("set-cookie") or []:
                if c.startswith("mbt_session="):
                    self.cookie = c.split(";", 1)[0]
            raw = resp.read()
        return raw

    def sign_in(self, user: str, password: str) -> None:
        self.csrf = json.loads(self.call("GET", "/api/state"))["csrf"]
        self.call("POST", "/api/create_user", {"user": user, "password": password})
        state = json.loads(self.call("POST", "/api/login", {"user": user, "password": password}))["state"]
        self.csrf = state["csrf"]


def bench_render(work: str, runs: int) -> dict:
    from mbt.driver import Console, Process, bin_path, free_port, wait_port
    base = _fresh(work, "web-render")
    tport, wport = free_port(), free_port()
    info = os.path.join(base, "tracker_info.txt")
    with open(info, "w") as f:
        f.write("127.0.0.1:%d\n" % tport)
    procs = []
    try:
        t = Process([bin_path("mbt-tracker"), info, "1", "--state-dir", os.path.join(base, "t")],
                    log=os.path.join(base, "tracker.log"))
        procs.append(t)
        wait_port(tport, 20, t.proc)
        files = os.path.join(base, "files")
        os.makedirs(files)
        a = Console("127.0.0.1:%d" % free_port(), info, os.path.join(base, "a"), cwd=files,
                    extra=["--web", "tcp:%d" % wport])
        procs.append(a)
        http = Http("http://127.0.0.1:%d" % wport)
        http.sign_in("ann", "pw-ann")
        http.call("POST", "/api/create_group", {"group": "big"})
        t0 = time.monotonic()
        for i in range(FILES):
            name = "file-%04d-with-a-longish-name.bin" % i
            with open(os.path.join(files, name), "wb") as f:
                f.write(os.urandom(64 + i))
            reply = a.cmd("upload_file %s big" % name)
            assert reply.startswith("shared"), reply
        populate = time.monotonic() - t0
        page_ms, data_ms = [], []
        for _ in range(runs):
            s = time.perf_counter()
            http.call("GET", "/")
            page_ms.append((time.perf_counter() - s) * 1000)
            s = time.perf_counter()
            body = http.call("GET", "/api/files?group=big")
            data_ms.append((time.perf_counter() - s) * 1000)
            assert len(json.loads(body)["files"]) == FILES
        out = {"files": FILES, "populate_s": round(populate, 1), "page_ms": round(statistics.median(page_ms), 1),
               "data_ms": round(statistics.median(data_ms), 1), "data_bytes": len(body)}
        out.update(_browser_render(http, runs))
        return out
    finally:
        for p in reversed(procs):
            p.stop(5)


def _browser_render(http: Http, runs: int) -> dict:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
    except ImportError:
        return {"browser": "skipped: selenium is not installed"}
    binary, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver_bin:
        return {"browser": "skipped: no chromium/chromedriver"}
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1000"):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(driver_bin), options=opts)
    try:
        d.get(http.url + "/static/app.css")
        name, value = http.cookie.split("=", 1)
        d.add_cookie({"name": name, "value": value, "path": "/"})
        load_ms, click_ms, timing = [], [], []
        for _ in range(runs):
            s = time.perf_counter()
            d.get(http.url + "/")
            button = "#group-table tbody tr[data-group='big'] .files-btn"
            _wait(lambda: d.find_elements(By.CSS_SELECTOR, button), 20)
            load_ms.append((time.perf_counter() - s) * 1000)
            timing.append(d.execute_script("""
                var nav = performance.getEntriesByType('navigation')[0];
                var res = performance.getEntriesByType('resource');
                var g = res.filter(function (r) { return r.name.indexOf('/api/groups') >= 0; })[0];
                return {dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd, req: nav.requestStart,
                        resp: nav.responseStart, respEnd: nav.responseEnd, fetchStart: nav.fetchStart,
                        groups_end: g ? g.responseEnd : null,
                        entries: res.map(function (r) { return [r.name.split('/').slice(3).join('/'), Math.round(r.startTime), Math.round(r.responseEnd)]; })};
            """))
            # Timed inside the page: click -> 1,000 rows in the table (no WebDriver round trips).
            ms = d.execute_async_script("""
                var done = arguments[arguments.length - 1];
                var body = document.querySelector('#file-table tbody');
                var t0 = performance.now();
                var obs = new MutationObserver(function () {
                  if (body.querySelectorAll('tr').length >= %d) {
                    obs.disconnect();
                    requestAnimationFrame(function () { done(performance.now() - t0); });
                  }
                });
                obs.observe(body, {childList: true});
                document.querySelector(arguments[0]).click();
            """ % FILES, button)
            click_ms.append(ms)
        print("navigation timings:", timing[-1])
        return {"browser_load_ms": round(statistics.median(load_ms), 1),
                "browser_files_ms": round(statistics.median(click_ms), 1)}
    finally:
        d.quit()


def _wait(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.005)
    raise RuntimeError("timed out")


def bench_live(work: str, size_mb: int, pages: int) -> dict:
    from twisted.internet import defer, reactor, task
    from twisted.internet.protocol import Protocol
    from twisted.web.client import Agent
    from twisted.web.http_headers import Headers

    from mbt.web import events as events_mod
    from mbt.web.server import start_web, stop_web
    from tests.cluster import Cluster, wait_download
    base = _fresh(work, "web-live")
    spent = {"cpu": 0.0, "ticks": 0, "bytes": 0}
    hub_tick = events_mod.EventHub._tick
    hub_notice = events_mod.EventHub.notice

    def timed(f):
        def run(self, *a):
            s = time.thread_time()
            try:
                return f(self, *a)
            finally:
                spent["cpu"] += time.thread_time() - s
                spent["ticks"] += 1
        return run
    events_mod.EventHub._tick = timed(hub_tick)
    events_mod.EventHub.notice = timed(hub_notice)
    result = {}

    @defer.inlineCallbacks
    def run():
        cluster = Cluster(base)
        webs = []
        try:
            yield cluster.start_tracker()
            seed = yield cluster.user("seed")
            leech = yield cluster.user("leech")
            yield cluster.group("g", seed, leech)
            with open(os.path.join(base, "big.bin"), "wb") as f:
                for _ in range(size_mb):
                    f.write(os.urandom(1000 * 1000))
            yield seed.upload_file("big.bin", "g")
            started = yield start_web(reactor, leech, leech.commands, "tcp:0")
            webs.append(started)
            from tests.webclient import WebClient
            web = WebClient(started[1])
            yield web.sign_in("leech", "pw-leech")
            streams = []
            for _ in range(pages):
                h = Headers({"cookie": ["mbt_session=" + web.cookie]})
                resp = yield Agent(reactor).request(b"GET", (started[1] + "events").encode(), h)
                p = Protocol()
                p.dataReceived = lambda data: spent.__setitem__("bytes", spent["bytes"] + len(data))
                resp.deliverBody(p)
                streams.append(resp)
            yield task.deferLater(reactor, 1.2, lambda: None)
            spent.update(cpu=0.0, ticks=0, bytes=0)
            os.makedirs(os.path.join(base, "in"))
            t0 = time.monotonic()
            yield leech.download_file("g", "big.bin", "in")
            status = yield wait_download(leech, "g", "big.bin", timeout=600)
            secs = time.monotonic() - t0
            result.update(status=status, seconds=round(secs, 2), mbps=round(size_mb / secs, 1),
                          pages=pages, pieces=leech.downloads[("g", "big.bin")].manifest.pieces,
                          channel_cpu_ms=round(spent["cpu"] * 1000, 1), ticks=spent["ticks"],
                          event_bytes_per_s=round(spent["bytes"] / secs),
                          core_share_per_page_pct=round(100 * spent["cpu"] / secs / pages, 3))
        finally:
            for w in webs:
                yield stop_web(w)
            yield cluster.stop()
            reactor.stop()
    reactor.callWhenRunning(run)
    reactor.run()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=os.environ.get("MBT_BENCH_DIR", "/tmp/mbt-bench"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size-mb", type=int, default=300)
    ap.add_argument("--pages", type=int, default=1)
    ap.add_argument("--only", choices=["render", "live"])
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    if args.only != "live":
        r = bench_render(args.work, args.runs)
        print("render (%d files): page %.1f ms, data %.1f ms (%d bytes) over HTTP; browser: %s"
              % (r["files"], r["page_ms"], r["data_ms"], r["data_bytes"],
                 r.get("browser") or "page load to groups %.1f ms, Files click to %d rows %.1f ms"
                 % (r["browser_load_ms"], r["files"], r["browser_files_ms"])), flush=True)
    if args.only != "render":
        r = bench_live(args.work, args.size_mb, args.pages)
        print("live: %d MB in %.2f s (%.1f MB/s, %d pieces) with %d page(s): channel CPU %.1f ms over %d ticks,"
              " %d event bytes/s, %.3f %% of a core per page"
              % (args.size_mb, r["seconds"], r["mbps"], r["pieces"], r["pages"], r["channel_cpu_ms"],
                 r["ticks"], r["event_bytes_per_s"], r["core_share_per_page_pct"]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
