"""Tests for mbt.protocols.console: stdio and telnet consoles, manhole factory.

Fake transports only (StringTransport); the fake backend hands out Deferreds
that the tests fire by hand.
"""

from __future__ import annotations

import re
from typing import Callable, List

import pytest
from twisted.conch import telnet
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from mbt.protocols import console
from mbt.protocols.console import MAX_LINE, PROMPT, StdioConsole, TelnetConsole

BANNER = "mbt peer 127.0.0.1:7001 \u2014 type help for commands"
TOO_LONG = "error: line too long (max 65536 bytes)"


class FakeBackend:
    """Records commands; each execute() returns a Deferred the test fires."""

    def __init__(self) -> None:
        self.commands: List[str] = []
        self.deferreds: List[defer.Deferred] = []
        self.listeners: List[Callable[[str], None]] = []

    def execute(self, line: str) -> defer.Deferred:
        self.commands.append(line)
        d = defer.Deferred()
        self.deferreds.append(d)
        return d

    def subscribe(self, listener: Callable[[str], None]) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def notify(self, text: str) -> None:
        for listener in list(self.listeners):
            listener(text)


class ImmediateBackend(FakeBackend):
    """A backend whose replies are already available (synchronous Deferreds)."""

    def execute(self, line: str) -> defer.Deferred:
        self.commands.append(line)
        return defer.succeed("did " + line)


@pytest.fixture
def logged():
    """Collect log events that carry a failure (log.failure and friends)."""
    events = []

    def observer(event):
        if "log_failure" in event:
            events.append(event)

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


# ---------------------------------------------------------------------------
# stdio


class StdioHarness:
    def __init__(self, backend=None):
        self.backend = backend or FakeBackend()
        self.quits = 0
        self.proto = StdioConsole(self.backend, BANNER, self.on_quit)
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def on_quit(self):
        self.quits += 1

    def output(self) -> str:
        """Everything printed since the last call."""
        text = self.transport.value().decode("utf-8")
        self.transport.clear()
        return text

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)


@pytest.fixture
def stdio():
    h = StdioHarness()
    assert h.output() == BANNER + "\n" + PROMPT
    return h


def test_stdio_banner_then_prompt():
    h = StdioHarness()
    assert h.output() == BANNER + "\n" + PROMPT


def test_stdio_reply_then_prompt(stdio):
    stdio.send(b"help\n")
    assert stdio.backend.commands == ["help"]
    assert stdio.output() == ""  # nothing until the reply comes
    stdio.backend.deferreds[0].callback("line one\nline two")
    assert stdio.output() == "line one\nline two\n" + PROMPT


def test_stdio_crlf_and_whitespace_are_stripped(stdio):
    stdio.send(b"  status   group  \r\n")
    assert stdio.backend.commands == ["status   group"]


def test_stdio_empty_reply_prints_only_prompt(stdio):
    stdio.send(b"noop\n")
    stdio.backend.deferreds[0].callback("")
    assert stdio.output() == PROMPT


def test_stdio_reply_trailing_newline_not_doubled(stdio):
    stdio.send(b"x\n")
    stdio.backend.deferreds[0].callback("ok\n")
    assert stdio.output() == "ok\n" + PROMPT


def test_stdio_pipelined_lines_run_in_order(stdio):
    stdio.send(b"first\nsecond\nthi")
    assert stdio.backend.commands == ["first"]  # second waits for first's reply
    assert stdio.transport.producerState == "paused"  # back-pressure while lines wait
    stdio.send(b"rd\n")
    stdio.backend.deferreds[0].callback("one")
    assert stdio.backend.commands == ["first", "second"]
    assert stdio.output() == "one\n" + PROMPT
    stdio.backend.deferreds[1].callback("two")
    assert stdio.backend.commands == ["first", "second", "third"]
    stdio.backend.deferreds[2].callback("three")
    assert stdio.output() == "two\n" + PROMPT + "three\n" + PROMPT
    assert stdio.transport.producerState == "producing"


def test_stdio_pipelined_with_synchronous_backend():
    h = StdioHarness(ImmediateBackend())
    h.output()
    h.send(b"a\n\nb\nc\n")
    assert h.backend.commands == ["a", "b", "c"]
    assert h.output() == "did a\n" + PROMPT + PROMPT + "did b\n" + PROMPT + "did c\n" + PROMPT


def test_stdio_empty_lines_reprompt(stdio):
    stdio.send(b"\n   \n\t\r\n")
    assert stdio.output() == PROMPT * 3
    assert stdio.backend.commands == []


def test_stdio_long_line_rejected_and_console_continues(stdio):
    stdio.send(b"x" * (MAX_LINE + 1) + b"\nhelp\n")
    assert stdio.output() == TOO_LONG + "\n" + PROMPT
    assert stdio.backend.commands == ["help"]


def test_stdio_long_line_in_chunks_discarded_to_newline(stdio):
    chunk = b"y" * 10000
    for _ in range(7):  # 70000 bytes without a newline
        stdio.send(chunk)
    assert stdio.output() == TOO_LONG + "\n" + PROMPT
    stdio.send(chunk + b"still the long line\nstatus\n")
    assert stdio.output() == ""  # no second error for the same line
    assert stdio.backend.commands == ["status"]


def test_stdio_max_length_line_accepted(stdio):
    stdio.send(b"z" * MAX_LINE + b"\r\n")
    assert stdio.backend.commands == ["z" * MAX_LINE]


def test_stdio_invalid_utf8_replaced(stdio):
    stdio.send(b"find caf\xe9 \xc3\xa9\n")
    assert stdio.backend.commands == ["find caf\ufffd \u00e9"]


def test_stdio_backend_errback_prints_internal_error(stdio, logged):
    stdio.send(b"boom\nnext\n")
    stdio.backend.deferreds[0].errback(Failure(ValueError("secret detail")))
    assert stdio.output() == "error: internal error: ValueError\n" + PROMPT
    assert stdio.backend.commands == ["boom", "next"]  # the console survived
    assert len(logged) == 1 and logged[0]["log_failure"].check(ValueError)


def test_stdio_backend_raising_prints_internal_error(logged):
    class Raising(FakeBackend):
        def execute(self, line):
            raise KeyError(line)

    h = StdioHarness(Raising())
    h.output()
    h.send(b"login alice hunter2\n")
    assert h.output() == "error: internal error: KeyError\n" + PROMPT
    # Only the command word is logged, never its (possibly secret) arguments.
    assert logged[0]["command"] == "login"


def test_stdio_quit(stdio):
    stdio.send(b"quit\nhelp\n")
    assert stdio.output() == "bye\n"
    assert stdio.quits == 1
    assert stdio.backend.commands == []  # quit is never passed to the backend
    assert stdio.backend.listeners == []  # unsubscribed
    stdio.proto.connectionLost(Failure(error.ConnectionDone()))
    assert stdio.quits == 1  # still once


def test_stdio_quit_with_arguments_is_usage_error(stdio):
    stdio.send(b"quit now\n")
    assert stdio.output() == "error: usage: quit\n" + PROMPT
    assert stdio.quits == 0
    assert stdio.backend.commands == []


def test_stdio_quit_waits_its_turn(stdio):
    stdio.send(b"slow\nquit\n")
    assert stdio.quits == 0
    stdio.backend.deferreds[0].callback("done")
    assert stdio.output() == "done\n" + PROMPT + "bye\n"
    assert stdio.quits == 1


def test_stdio_connection_lost_quits_once_and_unsubscribes(stdio):
    assert len(stdio.backend.listeners) == 1
    stdio.proto.connectionLost(Failure(error.ConnectionDone()))
    stdio.proto.connectionLost(Failure(error.ConnectionDone()))
    assert stdio.quits == 1
    assert stdio.backend.listeners == []


def test_stdio_end_of_input_runs_queued_commands_first(stdio):
    stdio.send(b"one\ntwo")  # last line has no newline
    stdio.proto.readConnectionLost()
    assert stdio.quits == 0
    stdio.backend.deferreds[0].callback("1")
    assert stdio.quits == 0
    assert stdio.backend.commands == ["one", "two"]
    stdio.backend.deferreds[1].callback("2")
    assert stdio.output() == "1\n" + PROMPT + "2\n" + PROMPT
    assert stdio.quits == 1
    stdio.proto.connectionLost(Failure(error.ConnectionDone()))
    assert stdio.quits == 1


def test_stdio_end_of_input_when_idle_quits(stdio):
    stdio.proto.readConnectionLost()
    assert stdio.quits == 1
    assert stdio.output() == ""


def test_stdio_reply_after_connection_lost_is_dropped(stdio):
    stdio.send(b"slow\n")
    stdio.proto.connectionLost(Failure(error.ConnectionDone()))
    stdio.backend.deferreds[0].callback("late")
    assert stdio.output() == ""


def test_stdio_notice_while_idle(stdio):
    stdio.backend.notify("switched to tracker 127.0.0.1:6882")
    assert stdio.output() == "\nswitched to tracker 127.0.0.1:6882\n" + PROMPT


def test_stdio_notice_while_busy_has_no_prompt(stdio):
    stdio.send(b"download x\n")
    stdio.backend.notify("download of x complete")
    assert stdio.output() == "download of x complete\n"
    stdio.backend.deferreds[0].callback("ok")
    assert stdio.output() == "ok\n" + PROMPT


def test_stdio_notice_after_quit_ignored(stdio):
    listener = stdio.backend.listeners[0]
    stdio.send(b"quit\n")
    stdio.output()
    listener("late notice")
    assert stdio.output() == ""


def test_stdio_on_quit_exception_is_logged_not_raised(logged):
    def bad_quit():
        raise RuntimeError("x")

    proto = StdioConsole(FakeBackend(), BANNER, bad_quit)
    proto.makeConnection(StringTransport())
    proto.dataReceived(b"quit\n")
    assert logged and logged[0]["log_failure"].check(RuntimeError)


# ---------------------------------------------------------------------------
# telnet

_IAC_RE = re.compile(rb"\xff(?:\xff|[\xfb-\xfe].|\xfa.*?\xff\xf0|.)", re.S)
_ANSI_RE = re.compile(rb"\x1b(?:\[[0-9;?]*[A-Za-z~]|[^\[])")


def strip_codes(data: bytes) -> str:
    """What the scripted telnet client sees: no IAC sequences, no ANSI escapes."""
    data = _IAC_RE.sub(lambda m: b"\xff" if m.group() == b"\xff\xff" else b"", data)
    return _ANSI_RE.sub(b"", data).decode("utf-8", "replace")


class TelnetHarness:
    def __init__(self, backend, factory=None):
        self.backend = backend
        self.factory = factory or console.telnet_console_factory(backend, BANNER)
        self.proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    @property
    def console(self) -> TelnetConsole:
        return self.proto.protocol.protocol.terminalProtocol

    def raw(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def output(self) -> str:
        return strip_codes(self.raw())

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)


@pytest.fixture
def tel():
    h = TelnetHarness(FakeBackend())
    assert h.output() == BANNER + "\r\n" + PROMPT
    return h


def test_telnet_prompt_and_banner():
    h = TelnetHarness(FakeBackend())
    raw = h.raw()
    # Option negotiation first, then the banner; the prompt is the very last thing.
    assert raw.startswith(telnet.IAC)
    assert raw.endswith(BANNER.encode("utf-8") + b"\r\n" + PROMPT.encode())
    assert h.console.ps[h.console.pn] == PROMPT.encode()
    assert set(h.console.ps) == {PROMPT.encode()}


def test_telnet_help_command(tel):
    tel.send(b"help\r\n")
    assert tel.backend.commands == ["help"]
    tel.backend.deferreds[0].callback("commands:\n  help\n  quit")
    out = tel.output()
    # echo of the command, then the reply on new lines, then the prompt at the
    # start of a line; exactly one CR per line end.
    assert out == "help\r\ncommands:\r\n  help\r\n  quit\r\n" + PROMPT
    assert out.endswith("\r\n" + PROMPT)


def test_telnet_raw_client_that_refuses_options(tel, logged):
    """The scripted harness: WONT for every DO, DO for every WILL, then a command."""
    answers = (telnet.IAC + telnet.WONT + telnet.LINEMODE + telnet.IAC + telnet.WONT + telnet.NAWS
               + telnet.IAC + telnet.WONT + telnet.SGA + telnet.IAC + telnet.DO + telnet.ECHO)
    tel.send(answers + b"status\r\n")
    tel.backend.deferreds[0].callback("all good")
    raw = tel.raw()
    assert b"\r\r" not in raw
    assert strip_codes(raw) == "status\r\nall good\r\n" + PROMPT
    assert logged == []  # refused options are no error
    assert (tel.console.width, tel.console.height) == (80, 24)  # no NAWS: defaults


def test_telnet_naws_sets_size_without_clearing_screen(tel):
    tel.send(telnet.IAC + telnet.SB + telnet.NAWS + b"\x00\x64\x00\x28" + telnet.IAC + telnet.SE)
    assert (tel.console.width, tel.console.height) == (100, 40)
    assert tel.raw() == b""


def test_telnet_character_mode_enter(tel):
    # Clients in character mode send CR NUL (or a bare CR) for Enter.
    for ch in b"help":
        tel.send(bytes([ch]))
    tel.send(b"\r\x00")
    assert tel.backend.commands == ["help"]


def test_telnet_line_editing_and_history(tel):
    tel.send(b"helq\x7fp\r\n")  # backspace
    tel.backend.deferreds[0].callback("")
    tel.send(b"\x1b[A\r\n")  # up arrow recalls "help"
    assert tel.backend.commands == ["help", "help"]


def test_telnet_pipelined_lines_queued(tel):
    tel.send(b"first\r\nsecond\r\n")
    assert tel.backend.commands == ["first"]
    assert tel.output() == "first\r\n"  # "second" not echoed into the running command
    tel.backend.deferreds[0].callback("one")
    assert tel.backend.commands == ["first", "second"]
    tel.backend.deferreds[1].callback("two")
    assert tel.output() == "one\r\n" + PROMPT + "second\r\ntwo\r\n" + PROMPT


def test_telnet_empty_line_reprompts(tel):
    tel.send(b"\r\n  \r\n")
    assert tel.output() == "\r\n" + PROMPT + "  \r\n" + PROMPT
    assert tel.backend.commands == []


def test_telnet_long_line(tel):
    tel.send(b"x" * (MAX_LINE + 10) + b"\r\nhelp\r\n")
    out = tel.output()
    assert out.endswith("\r\n" + TOO_LONG + "\r\n" + PROMPT + "help\r\n")
    assert tel.backend.commands == ["help"]


def test_telnet_utf8_input(tel):
    # UTF-8 arrives byte by byte as keystrokes; IAC IAC is a literal 0xff byte.
    tel.send("caf\u00e9 ".encode("utf-8") + telnet.IAC + telnet.IAC + b"\r\n")
    assert tel.backend.commands == ["caf\u00e9 \ufffd"]
    assert tel.output() == "caf\u00e9 \ufffd\r\n"  # echoed (0xff doubled on the wire)
    tel.backend.deferreds[0].callback("ok")
    tel.send(b"bad \xe9\r\n")
    assert tel.backend.commands[-1] == "bad \ufffd"


def test_telnet_errback(tel, logged):
    tel.send(b"boom\r\n")
    tel.backend.deferreds[0].errback(Failure(RuntimeError("x")))
    assert tel.output() == "boom\r\nerror: internal error: RuntimeError\r\n" + PROMPT
    tel.send(b"again\r\n")
    assert tel.backend.commands == ["boom", "again"]


def test_telnet_quit_closes_session_only(tel):
    other = TelnetHarness(tel.backend, tel.factory)
    assert len(tel.backend.listeners) == 2
    tel.send(b"quit\r\n")
    assert tel.output() == "quit\r\nbye\r\n"
    assert tel.transport.disconnecting
    assert tel.backend.commands == []
    tel.proto.connectionLost(Failure(error.ConnectionDone()))
    assert len(tel.backend.listeners) == 1
    # The other session goes on.
    assert not other.transport.disconnecting
    other.output()
    other.send(b"status\r\n")
    other.backend.deferreds[0].callback("fine")
    assert other.output() == "status\r\nfine\r\n" + PROMPT


def test_telnet_quit_usage(tel):
    tel.send(b"quit please\r\n")
    assert tel.output() == "quit please\r\nerror: usage: quit\r\n" + PROMPT
    assert not tel.transport.disconnecting


def test_telnet_ctrl_d_quits(tel):
    tel.send(b"\x04")
    assert tel.output().endswith("bye\r\n")
    assert tel.transport.disconnecting


def test_telnet_two_sessions_share_backend(tel):
    other = TelnetHarness(tel.backend, tel.factory)
    other.output()
    tel.send(b"one\r\n")
    other.send(b"two\r\n")
    assert tel.backend.commands == ["one", "two"]
    tel.backend.deferreds[1].callback("for two")
    tel.backend.deferreds[0].callback("for one")
    assert tel.output() == "one\r\nfor one\r\n" + PROMPT
    assert other.output() == "two\r\nfor two\r\n" + PROMPT
    tel.backend.notify("download of x complete")
    assert tel.output() == other.output() == "download of x complete\r\n" + PROMPT


def test_telnet_notice_while_idle_redraws_input(tel):
    tel.send(b"sta")
    tel.raw()
    tel.backend.notify("switched to tracker 127.0.0.1:6882")
    raw = tel.raw()
    assert raw.startswith(b"\x1b[2K")  # the input line is erased first
    assert strip_codes(raw) == "switched to tracker 127.0.0.1:6882\r\n" + PROMPT + "sta"
    tel.send(b"tus\r\n")
    assert tel.backend.commands == ["status"]


def test_telnet_notice_while_busy(tel):
    tel.send(b"download x\r\n")
    tel.output()
    tel.backend.notify("download of x complete")
    assert tel.output() == "download of x complete\r\n"
    tel.backend.deferreds[0].callback("ok")
    assert tel.output() == "ok\r\n" + PROMPT


def test_telnet_connection_lost_unsubscribes_and_drops_late_reply(tel):
    tel.send(b"slow\r\n")
    tel.output()
    tel.proto.connectionLost(Failure(error.ConnectionLost()))
    assert tel.backend.listeners == []
    tel.backend.deferreds[0].callback("late")
    assert tel.raw() == b""


def test_telnet_stock_stack_also_works():
    """The console class also runs on the stock Twisted telnet stack."""
    from twisted.conch.insults import insults

    backend = FakeBackend()
    proto = telnet.TelnetTransport(telnet.TelnetBootstrapProtocol, insults.ServerProtocol,
                                   TelnetConsole, backend, BANNER)
    transport = StringTransport()
    proto.makeConnection(transport)
    transport.clear()
    proto.dataReceived(b"help\r\n")
    backend.deferreds[0].callback("reply")
    out = strip_codes(transport.value()).replace("\r", "")
    assert out == "help\nreply\n" + PROMPT


# ---------------------------------------------------------------------------
# manhole


class ManholeHarness:
    def __init__(self):
        self.factory = console.manhole_factory({"answer": 42}, "admin", "s3cret")
        self.proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def output(self) -> str:
        data = self.transport.value()
        self.transport.clear()
        return strip_codes(data)


def test_manhole_wrong_password_refused():
    h = ManholeHarness()
    assert h.output() == "Username: "
    h.proto.dataReceived(b"admin\r\n")
    assert h.output() == "Password: "
    h.proto.dataReceived(b"wrong\r\n")
    out = h.output()
    assert "Authentication failed" in out and out.endswith("Username: ")
    assert ">>> " not in out
    h.proto.dataReceived(b"nobody\r\ns3cret\r\n")
    assert "Authentication failed" in h.output()
    assert not h.transport.disconnecting
    h.proto.dataReceived(b"admin\r\nnope\r\n")  # third failure: goodbye
    assert h.transport.disconnecting


def test_manhole_right_password_gives_python_shell():
    h = ManholeHarness()
    # A client that does negotiate echo (DO ECHO, then DONT ECHO) like real telnet.
    h.proto.dataReceived(b"admin\r\n" + telnet.IAC + telnet.DO + telnet.ECHO)
    h.proto.dataReceived(b"s3cret\r\n" + telnet.IAC + telnet.DONT + telnet.ECHO)
    assert ">>> " in h.output()
    h.proto.dataReceived(b"answer + 1\r\n")
    assert "43" in h.output()


def test_password_checker_constant_time_compare():
    from twisted.cred.credentials import UsernamePassword
    from twisted.cred.error import UnauthorizedLogin

    checker = console._SinglePasswordChecker("admin", "pw")
    ok = checker.requestAvatarId(UsernamePassword(b"admin", b"pw"))
    assert ok.result == b"admin"
    for user, password in [(b"admin", b"px"), (b"adm", b"pw"), (b"", b"")]:
        bad = checker.requestAvatarId(UsernamePassword(user, password))
        failure = bad.result
        bad.addErrback(lambda f: None)
        assert failure.check(UnauthorizedLogin)
