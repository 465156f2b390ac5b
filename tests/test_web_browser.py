"""End to end in a real headless Chromium: the whole story on real processes.

A tracker, peer A (``mbt-client --web``) driven only through its page, and
peer B driven through its console. Screenshots are saved in ``test-artifacts/`` when a step fails; the downloads
view is saved as ``test-artifacts/web-downloads.png`` on every run, and over
``docs/web-downloads.png`` (the README shows it) only when
``MBT_UPDATE_SCREENSHOT=1`` is set, so a test run leaves the checkout clean.
"""

import hashlib
import os
import shutil
import time

import pytest

from mbt.driver import free_port
from tests.test_e2e import start_client, start_tracker

XSS = "<img src=x onerror=alert(1)>"
DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
SIZE = 24 * 1024 * 1024 + 7


def _browser():
    """A headless Chromium, or pytest.skip with the one reason it cannot be had."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install '.[test]')")
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_bin = shutil.which("chromedriver")
    if not binary or not driver_bin:
        pytest.skip("no chromium/chromedriver here (make test installs Debian's chromium chromium-driver as root)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1000",
                "--disable-gpu", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_bin), options=opts)


class Page:
    """Small waits over a WebDriver (bounded; no sleeps without a deadline)."""

    def __init__(self, driver) -> None:
        from selenium.webdriver.common.by import By
        self.d, self.By = driver, By

    def find(self, css):
        return self.d.find_element(self.By.CSS_SELECTOR, css)

    def all(self, css):
        return self.d.find_elements(self.By.CSS_SELECTOR, css)

    def wait(self, predicate, timeout=20.0, what="condition"):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                value = predicate()
                if value:
                    return value
            except Exception as e:      # element not there yet / replaced by a re-render
                last = e
            time.sleep(0.1)
        raise AssertionError("timed out after %.0fs waiting for %s (%s)" % (timeout, what, last))

    def text(self, css):
        return self.find(css).text

    def type(self, css, text):
        el = self.find(css)
        el.clear()
        el.send_keys(text)

    def click(self, css):
        self.find(css).click()

    def msg(self, css, startswith, timeout=20.0):
        return self.wait(lambda: self.text(css).startswith(startswith) and self.text(css),
                         timeout, "%s to say %r (says %r)" % (css, startswith, self.text(css)))


def test_web_page_story_in_chromium(procs, tmp_path):
    driver = _browser()
    page = Page(driver)
    try:
        _story(page, procs, tmp_path)
    except BaseException:
        # Kept outside pytest's rotating tmp dirs: test-artifacts/ at the top of the repo.
        out = os.path.join(os.path.dirname(DOCS), "test-artifacts")
        os.makedirs(out, exist_ok=True)
        shot = os.path.join(out, "web-failure-%d.png" % int(time.time()))
        driver.get_screenshot_as_file(shot)
        print("screenshot of the failing page: %s" % shot)
        for entry in driver.get_log("browser"):
            print("browser console:", entry.get("level"), entry.get("message"))
        raise
    finally:
        driver.quit()


def _story(page, procs, tmp_path):
    _, info, _ = start_tracker(procs, tmp_path)
    web_port = free_port()
    a = start_client(procs, tmp_path, "a", info, extra=["--web", "tcp:%d" % web_port])
    url = "http://127.0.0.1:%d/" % web_port
    assert "web page: %s" % url in a.banner
    b = start_client(procs, tmp_path, "b", info, extra=["--upload-rate", "6M"])
    d = page.d
    d.get(url)
    page.wait(lambda: page.find("#signin").is_displayed(), what="the sign-in form")
    assert page.text("#who-text").startswith("not signed in; tracker 127.0.0.1:")

    # Create an account and sign in.
    page.type("#login-user", "ann")
    page.type("#login-password", "pw-ann")
    page.click("#create-user-button")
    page.msg("#signin-msg", "user ann created")
    page.click("#login-button")
    page.wait(lambda: page.find("#app").is_displayed(), what="the signed-in page")
    assert page.text("#who-text").startswith("signed in as ann; tracker 127.0.0.1:")

    # A group; an HTML name is refused in words and shown as text.
    page.type("#group-name", XSS)
    page.click("#create-group")
    err = page.msg("#groups-msg", "error: invalid group id")
    assert XSS in err and not page.all("#groups img")
    page.type("#group-name", "club")
    page.click("#create-group")
    page.msg("#groups-msg", "group club created; you are its owner")
    page.wait(lambda: page.text("#group-table tbody tr[data-group='club'] td:nth-child(4)") == "owner",
              what="club listed with relation owner")

    # Peer B asks on its console; A accepts on the page.
    assert b.cmd("create_user bob pw-bob").startswith("user bob created")
    assert b.cmd("login bob pw-bob").startswith("logged in as bob")
    assert b.cmd("join_group club").startswith("asked to join club")
    page.click("#refresh-groups")
    page.wait(lambda: page.all(".request[data-user='bob'] .accept"), what="bob's join request")
    page.click(".request[data-user='bob'] .accept")
    page.msg("#groups-msg", "bob is now a member of club")
    page.wait(lambda: page.text("#group-table tbody tr[data-group='club'] td:nth-child(3)") == "2",
              what="2 members")

    # B shares a file whose name is HTML.
    (tmp_path / "b" / XSS).write_bytes(os.urandom(SIZE))
    with open(tmp_path / "b" / XSS, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    assert b.cmd("upload_file '%s' club" % XSS, 60).startswith("shared %s in club" % XSS)
    page.click("#group-table tbody tr[data-group='club'] .files-btn")
    page.wait(lambda: page.all("#file-table tbody tr td:first-child")
              and page.text("#file-table tbody tr td:first-child") == XSS, what="the file listed by its name")
    assert not page.all("#files img") and not page.all("img")
    row = "#file-table tbody tr"
    assert page.text(row + " td:nth-child(2)") == "24.0 MiB" and page.text(row + " td:nth-child(4)") == "1"

    # Error path: downloading onto an existing file, in the console's words.
    (tmp_path / "a" / "taken.bin").write_bytes(b"mine")
    page.type("#dest", "taken.bin")
    page.click(row + " .download")
    page.msg("#files-msg", "error: %s already exists; it is never overwritten" % (tmp_path / "a" / "taken.bin"))
    assert (tmp_path / "a" / "taken.bin").read_bytes() == b"mine"

    # The download, watched on the live channel until the bar is full.
    (tmp_path / "a" / "in").mkdir()
    page.type("#dest", "in")
    page.click(row + " .download")
    page.msg("#files-msg", "downloading %s into" % XSS)
    item = ".download[data-id='club/%s']" % XSS.replace("'", "\\'")
    page.wait(lambda: page.all(item), what="the download in the list")
    shot = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pct = float(page.text(item + " .pct").rstrip("%") or 0)
        if shot is None and 15 <= pct <= 85:
            shot = page.find("#downloads").screenshot_as_png       # mid-download: bar, rate, map
        if page.text(item + " .state").startswith("[C] complete"):
            break
        time.sleep(0.2)
    assert page.text(item + " .pct") == "100.0%", page.text(item + " .state")
    assert page.find(item + " .fill").get_attribute("style").replace(" ", "").startswith("width:100%")
    assert page.text(item + " .dest") == "into %s" % (tmp_path / "a" / "in" / XSS)
    assert "from %s" % b.address in page.text(item + " .legend")
    with open(tmp_path / "a" / "in" / XSS, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == sha
    page.wait(lambda: any("complete" in li.text for li in page.all("#notice-list li")),
              what="the download-complete notice")
    assert not page.all("img")
    png = shot or page.find("#downloads").screenshot_as_png
    artifacts = os.path.join(os.path.dirname(DOCS), "test-artifacts")
    os.makedirs(artifacts, exist_ok=True)
    targets = [os.path.join(artifacts, "web-downloads.png")]
    if os.environ.get("MBT_UPDATE_SCREENSHOT") == "1":
        targets.append(os.path.join(DOCS, "web-downloads.png"))
    for target in targets:
        with open(target, "wb") as f:
            f.write(png)

    # Logout on the page is the console's logout.
    page.click("#logout")
    page.wait(lambda: page.find("#signin").is_displayed(), what="signed out")
    page.msg("#signin-msg", "logged out ann; stopped sharing 1 file")

    # The page survives its peer going away: a message in words and a retry button.
    page.type("#login-user", "ann")
    page.type("#login-password", "pw-ann")
    page.click("#login-button")
    page.wait(lambda: page.find("#app").is_displayed(), what="signed in again")
    a.stop(10)
    page.click("#refresh-groups")
    page.wait(lambda: page.find("#net-error").is_displayed(), what="the network error banner")
    assert page.text("#net-error-text").startswith(("error: cannot reach this peer's web page",
                                                    "live updates interrupted"))
    assert page.find("#net-retry").is_displayed() and page.find("#group-table").is_displayed()
