"""The peer's command consoles: one over stdin/stdout, one over telnet.

Both consoles drive the same command backend (``execute(line) -> Deferred[str]``
plus ``subscribe(listener) -> unsubscribe`` for asynchronous notices) and keep
the same contract, which users' scripts rely on:

* a banner line, then the prompt ``mbt> `` (no newline) whenever the console is
  ready for the next command; a reply is everything printed between a command
  and the next prompt;
* commands run one at a time, in order; lines that arrive while a command runs
  are queued;
* an asynchronous notice is printed on its own line(s) - followed by a fresh
  prompt when the console is idle, without one while a command runs (that
  command's prompt follows its reply);
* lines longer than :data:`MAX_LINE` bytes are answered with an error and the
  console keeps going; invalid UTF-8 is decoded with replacement characters;
* ``quit`` is handled here, never passed to the backend.

:func:`manhole_factory` additionally offers a password-protected Python shell
(:class:`twisted.conch.manhole.ColoredManhole`) into the running peer.
"""

from __future__ import annotations

import collections
import functools
import hmac
import os
import re
import typing
from typing import Any, Callable, Deque, Optional, Tuple

from twisted.conch import manhole, recvline, telnet
from twisted.conch.insults import insults
from twisted.cred import checkers, credentials, error, portal
from twisted.internet import defer, interfaces, protocol
from twisted.internet import error as net_error
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger(namespace="mbt.console")

#: Printed whenever the console is ready for the next command.
PROMPT = "mbt> "
#: Longest accepted command line, in bytes (without the line terminator).
MAX_LINE = 65536
#: The reply to a line longer than MAX_LINE.
LINE_TOO_LONG = "error: line too long (max %d bytes)" % MAX_LINE
#: Keystrokes a telnet session may type ahead while a command runs.
MAX_TYPEAHEAD = 4 * MAX_LINE
#: Input lines remembered per telnet session for the up/down arrows.
HISTORY_LIMIT = 1000
#: Failed manhole logins before the connection is dropped.
MAX_LOGIN_ATTEMPTS = 3


class CommandBackend(typing.Protocol):
    """What the consoles need from the peer (structural type, for hints only)."""

    def execute(self, line: str) -> defer.Deferred:
        """Run one command line; fire with the reply text (may be multi-line or "")."""

    def subscribe(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Register ``listener`` for asynchronous notices; return an unsubscribe function."""

    # Optional: ``complete(text) -> list of words`` that may end ``text`` (the
    # input line up to the cursor); the telnet console completes on Tab with it.


# ---------------------------------------------------------------------------
# Shared command logic


def _clean(text: Any) -> str:
    """Normalise backend output: ``None`` -> "", no trailing line breaks."""
    if text is None:
        return ""
    if not isinstance(text, str):
        text = str(text)
    # The console adds the final newline itself; a reply that already ends with
    # one must not turn into an extra empty line in front of the prompt.
    return text.rstrip("\r\n")


def _encode(text: str) -> bytes:
    # "replace" because backend text could carry lone surrogates (e.g. from
    # file names decoded with surrogateescape); a console must never crash on it.
    return text.encode("utf-8", "replace")


class _CommandRunner:
    """Runs one console command at a time and prints its reply and the prompt.

    Console-specific behaviour comes in as callables: ``write`` prints text,
    ``ready`` shows the prompt and lets the console feed the next queued input,
    ``quit`` ends the session (after ``bye`` has been printed).
    """

    def __init__(
        self,
        backend: CommandBackend,
        write: Callable[[str], None],
        ready: Callable[[], None],
        quit: Callable[[], None],
        farewell: Callable[[], str] = lambda: "bye",
    ) -> None:
        self._backend = backend
        self._farewell = farewell
        self._write = write
        self._ready = ready
        self._quit = quit
        #: True while the backend is working on a command.
        self.busy = False
        #: Set by the console once the session is over: late replies are dropped.
        self.closed = False
        #: The command word running now, and ``on_reply(command, reply)`` called
        #: after each reply (the telnet console tells its other sessions).
        self.command = ""
        self.on_reply: Optional[Callable[[str, str], None]] = None

    def submit(self, line: str) -> None:
        """Run ``line``. Must only be called while not :attr:`busy`."""
        assert not self.busy, "commands run one at a time"
        words = line.split()
        if not words:
            self._ready()
            return
        if words[0] == "quit":
            if len(words) > 1:
                self.reply("error: usage: quit")
            else:
                self._write(self._farewell() + "\n")
                self._quit()
            return
        self.busy = True
        self.command = words[0]
        d = defer.maybeDeferred(self._backend.execute, line.strip())
        d.addErrback(self._internal_error, words[0])
        d.addCallback(self._finished)
        # Printing itself failing (e.g. a transport torn down mid-write) must
        # not end as an "Unhandled error in Deferred".
        d.addErrback(lambda f: log.failure("console failed to print a reply", f))

    def reply(self, text: Any) -> None:
        """Print ``text`` (if any) as a complete reply, then the prompt."""
        text = _clean(text)
        if text:
            self._write(text + "\n")
        self._ready()

    def _internal_error(self, failure: Failure, command: str) -> str:
        # The backend promises never to errback; if it does anyway, keep the
        # console alive. Only the command word is logged: arguments may hold
        # secrets such as passwords.
        log.failure("console command {command!r} failed", failure, command=command)
        return "error: internal error: %s" % (failure.type.__name__,)

    def _finished(self, text: Any) -> None:
        self.busy = False
        if not self.closed:
            self.reply(text)
        if self.on_reply is not None:
            self.on_reply(self.command, _clean(text))


# ---------------------------------------------------------------------------
# stdin/stdout


_TOO_LONG = object()  # queue marker for a line that exceeded MAX_LINE


@implementer(interfaces.IHalfCloseableProtocol)
class StdioConsole(LineOnlyReceiver):
    """The command console on stdin/stdout (or any byte stream).

    Lines end with ``\\n`` (a trailing ``\\r`` is dropped). Used as
    ``stdio.StandardIO(StdioConsole(backend, banner, on_quit), reactor=reactor)``.

    ``on_quit`` is called exactly once: after ``quit``, after end of input (once
    every queued command has been answered), or when the stream is lost. It is
    expected to stop the peer; the console never stops the reactor itself.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, backend: CommandBackend, banner: str, on_quit: Callable[[], None]) -> None:
        self.backend = backend
        self.banner = banner
        self._on_quit = on_quit
        # Here quit stops the peer: the backend may say what that pauses.
        farewell = getattr(backend, "quit_message", None)
        self._runner = _CommandRunner(backend, self._write, self._ready, self._end,
                                      *([farewell] if farewell is not None else []))
        self._pending: Deque[object] = collections.deque()  # str lines or _TOO_LONG
        self._buffer = b""
        self._discarding = False  # inside an overlong line, dropping bytes up to "\n"
        self._draining = False
        self._paused = False
        self._eof = False
        self._closed = False
        self._unsubscribe: Optional[Callable[[], None]] = None

    # -- protocol events

    def connectionMade(self) -> None:
        if self.banner:
            self._write(_clean(self.banner) + "\n")
        self._write(PROMPT)
        self._unsubscribe = self.backend.subscribe(self._notice)

    def dataReceived(self, data: bytes) -> None:
        # Own framing instead of LineOnlyReceiver's: an overlong line must be
        # answered and skipped, not drop the connection, and lines must queue
        # behind a running command instead of running at once.
        if self._closed:
            return
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for raw in lines:
            if self._discarding:
                self._discarding = False  # the tail of an overlong line, already answered
            else:
                self._enqueue(raw)
        if self._discarding:
            self._buffer = b""
        elif self._too_long(self._buffer):
            self._pending.append(_TOO_LONG)
            self._discarding = True
            self._buffer = b""
        self._drain()

    def readConnectionLost(self) -> None:
        """End of input: answer what is queued (a final unterminated line too), then quit."""
        self._eof = True
        if self._buffer and not self._discarding:
            self._enqueue(self._buffer)
        self._buffer = b""
        self._drain()

    def writeConnectionLost(self) -> None:
        """Nobody reads our output any more: the console is over."""
        self._end()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._end()

    # -- internals

    @staticmethod
    def _too_long(raw: bytes) -> bool:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        return len(raw) > MAX_LINE

    def _enqueue(self, raw: bytes) -> None:
        if self._too_long(raw):
            self._pending.append(_TOO_LONG)
        else:
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            self._pending.append(raw.decode("utf-8", "replace"))

    def _drain(self) -> None:
        """Run queued lines until one is still running or the queue is empty."""
        if self._draining:  # re-entered from _ready() after a synchronous reply
            return
        self._draining = True
        try:
            while self._pending and not self._runner.busy and not self._closed:
                item = self._pending.popleft()
                if item is _TOO_LONG:
                    self._runner.reply(LINE_TOO_LONG)
                else:
                    self._runner.submit(item)  # type: ignore[arg-type]
        finally:
            self._draining = False
        if self._closed:
            return
        # Back-pressure: stop reading stdin while lines are waiting, so a huge
        # piped script is not read into memory ahead of its execution.
        self._set_paused(bool(self._pending))
        if self._eof and not self._pending and not self._runner.busy:
            self._end()

    def _set_paused(self, paused: bool) -> None:
        if paused == self._paused or self.transport is None:
            return
        self._paused = paused
        if paused:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()

    def _write(self, text: str) -> None:
        if not self._closed:
            self.transport.write(_encode(text))

    def _ready(self) -> None:
        self._write(PROMPT)
        self._drain()

    def _notice(self, text: str) -> None:
        if self._closed:
            return
        text = _clean(text)
        if self._runner.busy:
            self._write(text + "\n")
        else:
            # The prompt is showing (the cursor sits right after it): move to a
            # fresh line, print the notice, then show a fresh prompt.
            self._write("\n" + text + "\n" + PROMPT)

    def _end(self) -> None:
        """Close the console (idempotent); call on_quit exactly once."""
        if self._closed:
            return
        self._closed = self._runner.closed = True
        self._pending.clear()
        if self._unsubscribe is not None:
            unsubscribe, self._unsubscribe = self._unsubscribe, None
            unsubscribe()
        try:
            self._on_quit()
        except Exception:
            log.failure("on_quit failed")


# ---------------------------------------------------------------------------
# telnet


class _TelnetTransport(telnet.TelnetTransport):
    """A TelnetTransport whose output has exactly one CR before every LF.

    Each layer of the stock stack (insults, bootstrap, transport) turns "\\n"
    into "\\r\\n" again, so the wire would carry "\\r\\r\\r\\n"; line-oriented
    clients and scripts would see empty lines. IACs are doubled as usual.
    """

    _LINE_END = re.compile(rb"\r*\n")

    def dataReceived(self, data: bytes) -> None:
        """Telnet's parser, which also takes commands it does not know.

        The stock parser raises ``ValueError('Stumped', ...)`` (and drops the
        session with a traceback) for a command byte outside its list, e.g.
        IAC EOF (236), IAC SUSP (237) or IAC ABORT (238), which a real telnet
        client in line mode sends for Ctrl-D, Ctrl-Z and Ctrl-C. The data is
        fed up to each IAC; a command byte the stock parser does not know is
        taken here and passed on like the known ones (to ``unhandledCommand``).
        """
        start = 0
        while start < len(data):
            if self.state == "escaped" and data[start:start + 1] not in _PARSED_COMMANDS:
                self.state = "data"
                self.commandReceived(data[start:start + 1], None)
                start += 1
                continue
            end = data.find(telnet.IAC, start)
            end = len(data) if end < 0 else end + 1
            telnet.TelnetTransport.dataReceived(self, data[start:end])
            start = end

    def write(self, data: bytes) -> None:
        data = data.replace(telnet.IAC, telnet.IAC * 2)
        self.transport.write(self._LINE_END.sub(b"\r\n", data))

    def writeSequence(self, seq) -> None:
        self.write(b"".join(seq))


#: Command bytes after IAC that Twisted's telnet parser understands itself.
_PARSED_COMMANDS = frozenset([telnet.IAC, telnet.SB, telnet.WILL, telnet.WONT, telnet.DO, telnet.DONT,
                              telnet.EOR, telnet.NOP, telnet.DM, telnet.BRK, telnet.IP, telnet.AO,
                              telnet.AYT, telnet.EC, telnet.EL, telnet.GA])
#: Telnet commands (RFC 854, RFC 1184) a client sends for a key, as the key's byte.
TELNET_EOF, TELNET_SUSP, TELNET_ABORT = b"\xec", b"\xed", b"\xee"
_COMMAND_KEYS = {
    telnet.IP: b"\x03",       # Interrupt Process (Ctrl-C): drop the current line
    telnet.BRK: b"\x03",      # Break: likewise
    TELNET_ABORT: b"\x03",    # Abort: likewise
    TELNET_EOF: b"\x04",      # End of File (Ctrl-D): quit on an empty line
    TELNET_SUSP: b"\x1a",     # Suspend (Ctrl-Z): a session cannot be suspended; bell
    telnet.EC: b"\x7f",       # Erase Character: backspace
    telnet.EL: b"\x15",       # Erase Line: Ctrl-U
}


class _TelnetBootstrap(telnet.TelnetBootstrapProtocol):
    """TelnetBootstrapProtocol that takes a refused option quietly.

    The stock class logs every refused DO/WILL as a critical failure with a
    traceback; simple clients refuse them all (and still work: the server does
    the echoing and line editing, 80x24 is assumed without NAWS).
    """

    def connectionMade(self) -> None:
        transport = self.transport
        transport.negotiationMap[telnet.NAWS] = self.telnet_NAWS
        transport.negotiationMap[telnet.LINEMODE] = self.telnet_LINEMODE
        for opt in (telnet.LINEMODE, telnet.NAWS, telnet.SGA):
            transport.do(opt).addErrback(self._refused, opt)
        transport.will(telnet.ECHO).addErrback(self._refused, telnet.ECHO)

        self.protocol = self.protocolFactory(*self.protocolArgs, **self.protocolKwArgs)
        factory = getattr(self, "factory", None)
        if factory is not None:
            self.protocol.factory = factory
        self.protocol.makeConnection(self)

    def unhandledCommand(self, command: bytes, argument: object) -> None:
        """A telnet command from the client: the key it stands for, or an answer.

        Anything else (NOP, GA, DM, AO, unknown bytes) is ignored: nothing a
        client sends ever ends a session with a traceback.
        """
        key = _COMMAND_KEYS.get(command)
        if key is not None:
            self.protocol.dataReceived(key)   # insults parses it as that keystroke
        elif command == telnet.AYT:
            shell = getattr(self.protocol, "terminalProtocol", None)
            if hasattr(shell, "are_you_there"):
                shell.are_you_there()
            elif shell is not None:        # the manhole
                shell.terminal.nextLine()
                shell.terminal.write(b"[yes]")
                shell.terminal.nextLine()
                shell.drawInputLine()
        else:
            log.debug("telnet command {cmd} ignored", cmd=ord(command))

    @staticmethod
    def _refused(failure: Failure, opt: bytes) -> None:
        if failure.check(telnet.TelnetError, net_error.ConnectionDone, net_error.ConnectionLost):
            # Refused, already on, or the client left mid-negotiation: normal.
            log.debug("telnet option {opt} not enabled: {why}", opt=ord(opt),
                      why=failure.getErrorMessage())
        else:
            log.failure("telnet negotiation of option {opt} failed", failure, opt=ord(opt))


class TelnetConsole(recvline.HistoricRecvLine):
    """One telnet console session: line editing and history over insults.

    Runs on ``insults.ServerProtocol`` over a telnet bootstrap/transport (see
    :func:`telnet_console_factory`). Keystrokes typed while a command runs are
    held back and replayed once its reply and prompt are printed, so pasted or
    pipelined lines run in order and their echo never mixes with a reply.
    """

    ps = (PROMPT.encode("ascii"), PROMPT.encode("ascii"))
    pn = 0

    def __init__(self, backend: CommandBackend, banner, sessions=None) -> None:
        self.backend = backend
        self.banner = banner
        #: The factory that knows every session (announces logins and logouts), if any.
        self.sessions = sessions
        self._pending_keys: Deque[Tuple[Any, Any]] = collections.deque()
        self._draining = False
        self._closed = False
        self._too_long = False  # the current input line exceeded MAX_LINE
        self._unsubscribe: Optional[Callable[[], None]] = None
        self._runner = _CommandRunner(backend, self._write, self._ready, self._quit)
        self._runner.on_reply = self._announce

    # -- connection

    def connectionMade(self) -> None:
        if self.sessions is not None:
            self.sessions.sessions.append(self)
        super().connectionMade()  # sets up the line buffer and draws the screen
        self.keyHandlers.update({
            b"\x08": self.handle_BACKSPACE,  # ^H: what many clients send for backspace
            b"\x03": self.handle_INT,        # ^C: abandon the current line
            b"\x04": self.handle_EOF,        # ^D on an empty line: quit
            b"\x01": self.handle_HOME,       # ^A: start of line
            b"\x05": self.handle_END,        # ^E: end of line
            b"\x15": self.handle_KILL_LINE,  # ^U: erase the line
            b"\x0b": self.handle_KILL_END,   # ^K: erase to the end of the line
            b"\x17": self.handle_KILL_WORD,  # ^W: erase the word before the cursor
            b"\x0c": self.handle_REDRAW,     # ^L: clear the screen, redraw the line
            b"\x1a": self.handle_BELL,       # ^Z: a session cannot be suspended
            self.terminal.TAB: self.handle_TAB,  # complete a command name or group id
        })
        self._unsubscribe = self.backend.subscribe(self._notice)

    def initializeScreen(self) -> None:
        # Unlike RecvLine, no terminal.reset(): that would clear the user's
        # screen. Modes first, so the prompt is the last thing on the wire.
        self.setInsertMode()
        banner = self.banner() if callable(self.banner) else self.banner
        if banner:
            self._write(_clean(banner) + "\n")
        self.terminal.write(self.ps[self.pn])

    def terminalSize(self, width: int, height: int) -> None:
        # RecvLine clears the whole screen here (NAWS arrives right after
        # connecting and would wipe the banner); only the size matters to us.
        self.width, self.height = width, height

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._close()

    def _announce(self, command: str, reply: str) -> None:
        """A login or logout here is news for the other sessions on this peer."""
        if command in ("login", "logout") and reply and not reply.startswith("error: ") \
                and self.sessions is not None:
            self.sessions.announce(self, "notice: in another console session: " + reply.splitlines()[0])

    # -- input

    def keystrokeReceived(self, keyID: Any, modifier: Any) -> None:
        if self._closed:
            return
        if self._runner.busy:
            if len(self._pending_keys) >= MAX_TYPEAHEAD:
                self._write("error: too much input while a command runs; closing\n")
                self._quit()
                return
            self._pending_keys.append((keyID, modifier))
            return
        handler = self.keyHandlers.get(keyID)
        if handler is not None:
            handler()
        elif _is_text(keyID):
            self.characterReceived(keyID, False)
        # Anything else (unknown control bytes, unbound function keys) is
        # ignored; RecvLine would log a warning for each.

    def characterReceived(self, ch: bytes, moreCharactersComing: bool) -> None:
        grows = self.mode == "insert" or self.lineBufferIndex >= len(self.lineBuffer)
        if grows and len(self.lineBuffer) >= MAX_LINE:
            self._too_long = True  # drop the rest of the line; answered on RETURN
            return
        super().characterReceived(ch, moreCharactersComing)

    def handle_INT(self) -> None:
        """^C: drop the current input line and show a fresh prompt."""
        self.lineBuffer = []
        self.lineBufferIndex = 0
        self.historyPosition = len(self.historyLines)
        self._too_long = False
        self.terminal.write(b"^C")
        self.terminal.nextLine()
        self.terminal.write(self.ps[self.pn])

    def handle_EOF(self) -> None:
        """^D: quit on an empty line, otherwise ring the bell."""
        if self.lineBuffer:
            self.terminal.write(b"\a")
        else:
            self.terminal.nextLine()
            self._runner.submit("quit")

    def handle_BELL(self) -> None:
        self.terminal.write(b"\a")

    def handle_KILL_LINE(self) -> None:
        """^U: erase the whole input line."""
        self._set_line(b"", 0)

    def handle_KILL_END(self) -> None:
        """^K: erase from the cursor to the end of the line."""
        before, _after = self.currentLineBuffer()
        self._set_line(before, len(before))

    def handle_KILL_WORD(self) -> None:
        """^W: erase the word before the cursor (and the blanks after it)."""
        before, after = self.currentLineBuffer()
        kept = before.rstrip(b" ")
        kept = kept[:len(kept) - len(kept.split(b" ")[-1])]
        self._set_line(kept + after, len(kept))

    def handle_REDRAW(self) -> None:
        """^L: clear the screen and draw the prompt and the input line again."""
        self.terminal.eraseDisplay()
        self.terminal.cursorHome()
        self.drawInputLine()
        self._cursor_back(len(self.lineBuffer) - self.lineBufferIndex)

    def handle_TAB(self) -> None:
        """Complete the word before the cursor; with several choices, list them."""
        before, after = self.currentLineBuffer()
        complete = getattr(self.backend, "complete", None)
        if complete is None:
            return self.handle_BELL()
        text = before.decode("utf-8", "replace")
        word = text.split(" ")[-1]
        choices = sorted(set(complete(text)))
        if not choices:
            return self.handle_BELL()
        common = os.path.commonprefix(choices)
        if len(choices) == 1:
            common += " "
        if len(common) > len(word):
            insert = common[len(word):].encode("utf-8")
            self._set_line(before + insert + after, len(before) + len(insert))
            return None
        # Nothing to add: show the choices above a fresh prompt and input line.
        self._above_input("  ".join(choices))
        return None

    def are_you_there(self) -> None:
        """IAC AYT: say so, above the input line."""
        self._above_input("[yes]")

    def _set_line(self, line: bytes, cursor: int) -> None:
        """Replace the input line on screen and in the buffer; put the cursor at ``cursor``."""
        self._cursor_back(self.lineBufferIndex)
        self.terminal.eraseToLineEnd()
        self.lineBuffer = [line[i:i + 1] for i in range(len(line))]
        self.lineBufferIndex = len(self.lineBuffer)
        self.terminal.write(line)
        self._cursor_back(len(line) - cursor)
        self.lineBufferIndex = cursor

    def _cursor_back(self, n: int) -> None:
        if n > 0:
            self.terminal.cursorBackward(n)

    def lineReceived(self, line: bytes) -> None:
        del self.historyLines[:-HISTORY_LIMIT]
        self.historyPosition = len(self.historyLines)
        if self._too_long or len(line) > MAX_LINE:
            self._too_long = False
            self._runner.reply(LINE_TOO_LONG)
        else:
            self._runner.submit(line.decode("utf-8", "replace"))

    # -- output

    def _write(self, text: str) -> None:
        if not self._closed:
            self.terminal.write(_encode(text))

    def _ready(self) -> None:
        if not self._closed:
            self.terminal.write(self.ps[self.pn])
            self._drain()

    def _drain(self) -> None:
        """Replay keystrokes held back while the previous command ran."""
        if self._draining:  # re-entered via _ready() after a synchronous reply
            return
        self._draining = True
        try:
            while self._pending_keys and not self._runner.busy and not self._closed:
                self.keystrokeReceived(*self._pending_keys.popleft())
        finally:
            self._draining = False

    def _notice(self, text: str) -> None:
        if self._closed:
            return
        text = _clean(text)
        if self._runner.busy:
            # The cursor is on a fresh line below the command; the reply (and
            # its prompt) will follow.
            self._write(text + "\n")
            return
        self._above_input(text)

    def _above_input(self, text: str) -> None:
        """Print ``text`` above the input line, then redraw prompt and partial input
        (what Manhole.addOutput does for asynchronous output)."""
        self.terminal.eraseLine()
        self.terminal.cursorBackward(self.lineBufferIndex + len(self.ps[self.pn]))
        self._write(text + "\n")
        self.drawInputLine()
        self._cursor_back(len(self.lineBuffer) - self.lineBufferIndex)

    # -- ending

    def _quit(self) -> None:
        """Close this telnet session only (other sessions and the peer go on)."""
        transport = self.terminal.transport  # the telnet bootstrap protocol
        self._close()
        # Not terminal.loseConnection(): that first sends a terminal reset
        # (ESC c), which clears the user's screen and hides "bye".
        transport.loseConnection()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = self._runner.closed = True
        if self.sessions is not None and self in self.sessions.sessions:
            self.sessions.sessions.remove(self)
        self._pending_keys.clear()
        if self._unsubscribe is not None:
            unsubscribe, self._unsubscribe = self._unsubscribe, None
            unsubscribe()


def _is_text(keyID: Any) -> bool:
    """A single printable byte: ASCII text or part of a multi-byte UTF-8 character."""
    if not isinstance(keyID, bytes) or len(keyID) != 1:
        return False
    value = keyID[0]
    # Non-ASCII bytes are kept so names like "café" can be typed; the cursor
    # arithmetic is per byte, which is good enough for a command line.
    return 0x20 <= value < 0x7F or value >= 0x80


class _TelnetConsoleFactory(protocol.ServerFactory):
    def __init__(self, backend: CommandBackend, banner) -> None:
        self.backend = backend
        self.banner = banner
        self.sessions: list = []

    def buildProtocol(self, addr) -> protocol.Protocol:
        log.info("telnet console session from {addr}", addr=addr)
        proto = _TelnetTransport(_TelnetBootstrap, insults.ServerProtocol,
                                 TelnetConsole, self.backend, self.banner, self)
        proto.factory = self
        return proto

    def announce(self, origin: TelnetConsole, text: str) -> None:
        """Print ``text`` as a notice in every session but ``origin``."""
        for session in list(self.sessions):
            if session is not origin:
                session._notice(text)


def telnet_console_factory(backend: CommandBackend, banner) -> protocol.ServerFactory:
    """A factory of telnet console sessions, all driving ``backend``.

    ``banner`` is text, or a callable giving it when a session opens (so it
    can say who is logged in). A login or logout in one session is announced
    as a notice in the others.

    Each connection gets its own :class:`TelnetConsole` (with line editing
    and history); ``quit`` closes only that session. Listen on loopback only:
    the console is unauthenticated.
    """
    return _TelnetConsoleFactory(backend, banner)


# ---------------------------------------------------------------------------
# manhole


@implementer(checkers.ICredentialsChecker)
class _SinglePasswordChecker:
    """Accepts exactly one username/password pair, compared in constant time."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, username: str, password: str) -> None:
        self._username = username.encode("utf-8")
        self._password = password.encode("utf-8")

    def requestAvatarId(self, creds: credentials.IUsernamePassword) -> defer.Deferred:
        username = _as_bytes(creds.username)
        # Both comparisons always run, so timing does not reveal which one failed.
        user_ok = hmac.compare_digest(username, self._username)
        password_ok = hmac.compare_digest(_as_bytes(creds.password), self._password)
        if user_ok and password_ok:
            return defer.succeed(username)
        return defer.fail(error.UnauthorizedLogin())


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


@implementer(portal.IRealm)
class _ManholeRealm:
    """Hands each authenticated telnet user a ColoredManhole on ``namespace``."""

    def __init__(self, namespace: dict) -> None:
        self.namespace = namespace

    def requestAvatar(self, avatarId, mind, *interfaces_):
        if telnet.ITelnetProtocol not in interfaces_:
            raise NotImplementedError("the manhole only serves telnet")
        log.info("manhole login by {user!r}", user=avatarId)
        shell = _TelnetBootstrap(insults.ServerProtocol, manhole.ColoredManhole, self.namespace)
        return telnet.ITelnetProtocol, shell, lambda: None


class _ManholeLogin(telnet.AuthenticatingTelnetProtocol):
    """AuthenticatingTelnetProtocol, hardened a little.

    * a trailing CR is stripped from the username and password lines;
    * login does not wait forever when the client refuses to switch echo off
      for the password (the stock class never logs such a client in);
    * the connection is dropped after MAX_LOGIN_ATTEMPTS failures.
    """

    failures = 0

    def unhandledCommand(self, command: bytes, argument: object) -> None:
        """Ctrl-C or Ctrl-D (IAC IP / IAC EOF ...) at the login prompt: goodbye; others ignored."""
        if command in (telnet.IP, telnet.BRK, TELNET_ABORT, TELNET_EOF):
            self.transport.loseConnection()

    def telnet_User(self, line: bytes) -> str:
        self.username = line.rstrip(b"\r")
        # Ask the client to stop echoing (the password); fine if it refuses.
        self.transport.will(telnet.ECHO).addErrback(lambda f: None)
        self.transport.write(b"Password: ")
        return "Password"

    def telnet_Password(self, line: bytes) -> str:
        username, password = self.username, line.rstrip(b"\r")
        del self.username

        def login(_ignored: object) -> None:
            creds = credentials.UsernamePassword(username, password)
            d = self.portal.login(creds, None, telnet.ITelnetProtocol)
            d.addCallbacks(self._cbLogin, self._ebLogin)

        # Turn client echo back on first; if echo never got switched off (or
        # the client has not answered yet) wont() fails at once - log in anyway.
        self.transport.wont(telnet.ECHO).addBoth(login)
        return "Discard"

    def _ebLogin(self, failure: Failure) -> None:
        self.failures += 1
        log.warn("manhole login failed ({n} of {max})", n=self.failures, max=MAX_LOGIN_ATTEMPTS)
        if self.failures >= MAX_LOGIN_ATTEMPTS:
            self.transport.write(b"\nAuthentication failed\n")
            self.transport.loseConnection()
            return
        super()._ebLogin(failure)


def manhole_factory(namespace: dict, username: str, password: str) -> protocol.ServerFactory:
    """A telnet factory for a Python shell into the running peer.

    Users log in with ``username``/``password`` and get a
    :class:`twisted.conch.manhole.ColoredManhole` whose locals start as a copy
    of ``namespace`` (the objects in it are shared, so it can inspect and
    modify the live peer). Telnet is cleartext: bind to loopback only.
    """
    manhole_portal = portal.Portal(_ManholeRealm(namespace),
                                   [_SinglePasswordChecker(username, password)])
    factory = protocol.ServerFactory()
    factory.protocol = functools.partial(_TelnetTransport, _ManholeLogin, manhole_portal)
    return factory
