"""Line framing with bounded memory and linear cost, for channels that allow long lines.

Twisted's ``LineOnlyReceiver`` joins its buffer with every new chunk and splits
the whole again (``(self._buffer + data).split(...)``): a line of *n* bytes
arriving in chunks of *c* costs *n²/2c* bytes copied, seconds of CPU for a
16 MiB line sent in small pieces. :class:`BoundedLineReceiver` appends the
chunks of an unfinished line to one ``bytearray`` (amortised linear) and
copies it once, when its newline arrives. A large ``bytearray`` lives in its
own mapping, so its memory goes back to the system when the line is done or
dropped (a list of chunks left the heap fragmented: measured, the RSS stayed).

It also lets its owner bound memory across connections: bytes of an
unfinished line beyond ``FREE_BYTES`` are charged to a shared
:class:`LineBudget` (per remote host and in all), and such a *long line* must
be finished within ``LONG_LINE_DEADLINE`` seconds of its first byte.
"""

from __future__ import annotations

from typing import Dict, Optional

from twisted.internet import protocol

from mbt.timers import cancel_pending

#: Bytes of an unfinished line every connection may hold without a charge.
FREE_BYTES = 64 * 1024


class LineBudget:
    """Bytes of unfinished long lines one process holds, per remote host and in all (pure).

    ``charge`` says whether ``n`` more bytes fit; ``release`` returns them.
    """

    def __init__(self, total: int, per_host: int) -> None:
        self.total = total
        self.per_host = per_host
        self.used = 0
        self.by_host: Dict[str, int] = {}

    def charge(self, host: str, n: int) -> bool:
        """Take ``n`` bytes for ``host`` if both limits allow; True if taken."""
        held = self.by_host.get(host, 0)
        if self.used + n > self.total or held + n > self.per_host:
            return False
        self.used += n
        self.by_host[host] = held + n
        return True

    def release(self, host: str, n: int) -> None:
        """Give back ``n`` bytes charged to ``host``."""
        if n <= 0:
            return
        self.used -= n
        left = self.by_host.get(host, 0) - n
        if left > 0:
            self.by_host[host] = left
        else:
            self.by_host.pop(host, None)


class BoundedLineReceiver(protocol.Protocol):
    """Delivers ``delimiter``-terminated lines to ``lineReceived``; linear in bytes received.

    Subclasses set ``MAX_LENGTH`` (may change per connection at any time; it
    applies to the line in progress), and optionally ``budget`` (a
    :class:`LineBudget`), ``budget_host`` and ``clock`` with
    ``LONG_LINE_DEADLINE``. Hooks: ``lineLengthExceeded``,
    ``lineBudgetExceeded`` (the shared budget is spent) and
    ``lineDeadlineExceeded`` (a long line took too long); each is expected to
    drop the connection. Lines stop being delivered once the transport is
    disconnecting, as with Twisted's receivers.
    """

    delimiter = b"\n"
    MAX_LENGTH = 16384
    LONG_LINE_DEADLINE: Optional[float] = None
    budget: Optional[LineBudget] = None
    budget_host = "?"
    clock = None

    _buf: Optional[bytearray] = None
    _partial = 0            # bytes of the unfinished line
    _charged = 0            # of which charged to the budget
    _deadline = None

    def dataReceived(self, data: bytes) -> None:
        """Split ``data`` into lines; keep an unfinished tail without copying what came before."""
        delimiter = self.delimiter
        pos, end = 0, len(data)
        while pos < end:
            if self.transport is not None and self.transport.disconnecting:
                return
            nl = data.find(delimiter, pos)
            if nl < 0:
                self._keep(memoryview(data)[pos:] if pos else data)
                return
            if self._partial:
                self._buf += memoryview(data)[pos:nl]
                line = bytes(self._buf)
                self._reset_partial()
            else:
                line = data[pos:nl]
            pos = nl + len(delimiter)
            if len(line) > self.MAX_LENGTH:
                self.lineLengthExceeded(line)
                return
            self.lineReceived(line)

    def _keep(self, tail) -> None:
        size = self._partial + len(tail)
        if size > self.MAX_LENGTH:
            self._reset_partial()
            self.lineLengthExceeded(tail)
            return
        want = max(0, size - FREE_BYTES) - self._charged
        if want > 0:
            budget = self.budget
            if budget is not None and not budget.charge(self.budget_host, want):
                self._reset_partial()
                self.lineBudgetExceeded()
                return
            if budget is not None:
                self._charged += want
            if self._deadline is None and self.LONG_LINE_DEADLINE is not None and self.clock is not None:
                self._deadline = self.clock.callLater(self.LONG_LINE_DEADLINE, self._too_slow)
        if not self._partial:
            self._buf = bytearray(tail)
        else:
            self._buf += tail
        self._partial = size

    def _reset_partial(self) -> None:
        """Forget the unfinished line: return its budget, stop its deadline."""
        self._buf = None
        self._partial = 0
        if self._charged and self.budget is not None:
            self.budget.release(self.budget_host, self._charged)
        self._charged = 0
        self._deadline = cancel_pending(self._deadline)

    def _too_slow(self) -> None:
        self._deadline = None
        self._reset_partial()
        self.lineDeadlineExceeded()

    def stop_budgeting(self) -> None:
        """From now on nothing of this connection is charged (an authenticated peer tracker)."""
        if self._charged and self.budget is not None:
            self.budget.release(self.budget_host, self._charged)
        self._charged = 0
        self.budget = None
        self.LONG_LINE_DEADLINE = None
        self._deadline = cancel_pending(self._deadline)

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        self._reset_partial()

    def sendLine(self, line: bytes) -> None:
        """Write ``line`` and the delimiter."""
        self.transport.writeSequence((line, self.delimiter))

    def lineReceived(self, line: bytes) -> None:
        raise NotImplementedError

    def lineLengthExceeded(self, line: bytes) -> None:
        """The line in progress is over ``MAX_LENGTH``: drop the connection."""
        self.transport.loseConnection()

    def lineBudgetExceeded(self) -> None:
        """The shared budget has no room for the line in progress: drop the connection."""
        self.transport.loseConnection()

    def lineDeadlineExceeded(self) -> None:
        """A long line was not finished in time: drop the connection."""
        self.transport.loseConnection()
