"""One way to stop a timer: :func:`cancel_pending`.

Every protocol and service keeps its timers (``IDelayedCall`` from
``clock.callLater``, or a :class:`twisted.internet.task.LoopingCall`) in an
attribute that is ``None`` when nothing is scheduled. Stopping one must not
fail when it has already fired, was cancelled, or never started; this helper
says that once instead of four lines at every place that stops a timer.
"""

from __future__ import annotations

from typing import Optional, Union

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall

Timer = Union[IDelayedCall, LoopingCall]


def cancel_pending(timer: Optional[Timer]) -> None:
    """Cancel ``timer`` if it is still pending (stop it, for a running LoopingCall).

    ``None``, a call that already fired or was cancelled, and a stopped loop
    are left alone. Returns ``None``, so ``self._t = cancel_pending(self._t)``
    stops a timer and forgets it in one line.
    """
    if timer is None:
        return None
    if isinstance(timer, LoopingCall):
        if timer.running:
            timer.stop()
    elif timer.active():
        timer.cancel()
    return None
