"""mbt.timers.cancel_pending: stops pending timers, leaves everything else alone."""

from twisted.internet import task

from mbt.timers import cancel_pending


def test_a_pending_call_is_cancelled_and_never_fires():
    clock = task.Clock()
    fired = []
    call = clock.callLater(5, fired.append, 1)
    assert cancel_pending(call) is None
    assert not call.active() and not clock.getDelayedCalls()
    clock.advance(10)
    assert fired == []


def test_a_call_that_already_fired_or_was_cancelled_is_left_alone():
    clock = task.Clock()
    fired = []
    call = clock.callLater(1, fired.append, 1)
    clock.advance(1)
    cancel_pending(call)                # fired: no AlreadyCalled
    gone = clock.callLater(1, fired.append, 2)
    gone.cancel()
    cancel_pending(gone)                # cancelled: no AlreadyCancelled
    assert fired == [1]


def test_none_is_nothing_to_cancel():
    assert cancel_pending(None) is None


def test_a_running_loop_is_stopped_and_a_stopped_one_left_alone():
    clock = task.Clock()
    ticks = []
    loop = task.LoopingCall(ticks.append, 1)
    loop.clock = clock
    loop.start(10, now=False)
    cancel_pending(loop)
    assert not loop.running
    clock.advance(30)
    assert ticks == []
    cancel_pending(loop)                # already stopped: no error


def test_the_idiom_forgets_the_timer():
    clock = task.Clock()

    class Holder:
        timer = clock.callLater(3, lambda: None)

    h = Holder()
    h.timer = cancel_pending(h.timer)
    assert h.timer is None and not clock.getDelayedCalls()
