"""Who is this console? Banner with the logged-in user; logins and logouts announced to other sessions."""

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from mbt import demo
from mbt.protocols import console
from mbt.protocols.console import PROMPT
from tests.test_console import FakeBackend, strip_codes


class Session:
    def __init__(self, factory):
        self.proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def output(self):
        data = self.transport.value()
        self.transport.clear()
        return strip_codes(data)


def test_banner_is_computed_when_each_session_opens():
    who = ["not logged in"]
    factory = console.telnet_console_factory(FakeBackend(), lambda: "mbt peer (%s)" % who[0])
    assert Session(factory).output() == "mbt peer (not logged in)\r\n" + PROMPT
    who[0] = "logged in as ann"
    assert Session(factory).output() == "mbt peer (logged in as ann)\r\n" + PROMPT


def test_a_logout_in_one_session_is_announced_in_the_others():
    backend = FakeBackend()
    factory = console.telnet_console_factory(backend, "hi")
    a, b, c = Session(factory), Session(factory), Session(factory)
    for s in (a, b, c):
        s.output()
    a.proto.dataReceived(b"logout\r\n")
    backend.deferreds[0].callback("logged out ann; stopped sharing 2 files until the next login")
    assert a.output() == "logout\r\nlogged out ann; stopped sharing 2 files until the next login\r\n" + PROMPT
    for s in (b, c):
        assert "notice: in another console session: logged out ann; stopped sharing 2 files" in s.output()


def test_a_login_is_announced_but_a_failed_one_is_not():
    backend = FakeBackend()
    factory = console.telnet_console_factory(backend, "hi")
    a, b = Session(factory), Session(factory)
    a.output(), b.output()
    a.proto.dataReceived(b"login ann x\r\n")
    backend.deferreds[0].callback("error: wrong password")
    assert b.output() == ""
    a.proto.dataReceived(b"login ann pw\r\n")
    backend.deferreds[1].callback("logged in as ann; sharing 0 files")
    assert "notice: in another console session: logged in as ann" in b.output()


def test_a_closed_session_is_not_told():
    backend = FakeBackend()
    factory = console.telnet_console_factory(backend, "hi")
    a, b = Session(factory), Session(factory)
    b.proto.dataReceived(b"quit\r\n")
    assert factory.sessions == [a.proto.protocol.protocol.terminalProtocol]


def test_demo_prints_notice_once():
    assert demo.notice_line("bob", "notice: hashing f: 50% ") == "bob: notice: hashing f: 50%"
