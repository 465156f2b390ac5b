"""Login throttling: guessers slow down, the real user still gets in, one budget for all trackers.

Pure tests of :mod:`mbt.throttle` with the time passed in, and of
:mod:`mbt.tracker.login_budget` with two guards joined by in-memory links and
a ``task.Clock``. Real tracker processes: ``tests/test_throttle_e2e.py``.
"""

import pytest
from twisted.internet import task

from mbt.throttle import (ADDRESS_FREE, PAIR_FREE, USER_FREE, LocalLoginGuard, LoginThrottle)
from mbt.tracker.login_budget import SharedLoginGuard

A, B = "198.51.100.7", "203.0.113.9"      # the guesser's address, the real user's


def guess(t, user, address, now, times=1):
    """Wrong passwords."""
    for _ in range(times):
        t.attempt(user, address, now)
        t.failed(user, address, now)


def test_a_few_mistakes_are_free():
    t = LoginThrottle()
    for i in range(PAIR_FREE - 1):
        assert t.retry_after("bob", A, now=i) is None
        guess(t, "bob", A, now=i)
    assert t.retry_after("bob", A, now=5) is None


def test_a_guesser_does_not_lock_the_real_user_out():
    """The issue's case: 12 wrong passwords for alice from one address."""
    t = LoginThrottle()
    guess(t, "alice", A, 0, times=12)
    assert t.retry_after("alice", A, 0) is not None         # the guesser waits
    assert t.retry_after("alice", B, 0) is None             # alice, elsewhere, does not


def test_a_steady_guesser_waits_longer_and_longer_and_alice_never_waits():
    t = LoginThrottle()
    now, waits = 0.0, []
    for _ in range(30):                 # the guesser tries again the moment it may
        wait = t.retry_after("alice", A, now) or 0.0
        now += wait
        waits.append(wait)
        guess(t, "alice", A, now)
        assert t.retry_after("alice", B, now) is None
    assert waits[:PAIR_FREE] == [0.0] * PAIR_FREE
    assert waits[PAIR_FREE + 3] > waits[PAIR_FREE + 1] > 0


def test_guessing_spread_over_many_addresses_meets_the_per_user_ceiling():
    t = LoginThrottle()
    for i in range(USER_FREE):
        guess(t, "alice", "10.0.%d.%d" % (i // 200, i % 200), 0)
    assert t.retry_after("alice", "10.9.9.9", 0) is not None   # now she waits too: the ceiling
    assert t.retry_after("bob", "10.9.9.9", 0) is None


def test_one_address_guessing_many_users_is_slowed():
    t = LoginThrottle()
    for i in range(ADDRESS_FREE):
        guess(t, "user%d" % i, A, 0)
    assert t.retry_after("fresh", A, 0) is not None
    assert t.retry_after("fresh", B, 0) is None


def test_delay_is_capped_and_strikes_decay():
    t = LoginThrottle(max_delay=300)
    guess(t, "bob", A, 0, times=40)
    assert t.retry_after("bob", A, 0) <= 300
    assert t.retry_after("bob", A, 40 * 60 + 1) is None


def test_a_right_password_clears_the_pair_but_not_the_user_or_address():
    t = LoginThrottle()
    guess(t, "bob", A, 0, times=PAIR_FREE + 1)
    t.attempt("bob", A, 0)
    t.succeeded("bob", A, 0)
    assert t.current(("p", "bob", A), 0)[0] == 0
    assert t.current(("u", "bob"), 0)[0] == PAIR_FREE + 1     # an attacker may own the account
    assert t.current(("a", A), 0)[0] == PAIR_FREE + 1


def test_many_right_logins_at_once_from_one_address_never_wait():
    """An office behind one NAT address: right passwords never count against the address."""
    clock = task.Clock()
    guard = LocalLoginGuard(clock)
    for i in range(3 * ADDRESS_FREE):
        assert guard.admit("user%d" % i, A) is None
    for i in range(3 * ADDRESS_FREE):
        guard.succeeded("user%d" % i, A)
    assert guard.admit("late", A) is None


def test_attempts_are_counted_when_admitted_so_parallel_ones_count_too():
    clock = task.Clock()
    guard = LocalLoginGuard(clock)
    admitted = [guard.admit("alice", A) for _ in range(PAIR_FREE + 3)]   # none answered yet
    assert admitted[:PAIR_FREE] == [None] * PAIR_FREE
    assert all(w is not None and w > 0 for w in admitted[PAIR_FREE:])
    assert guard.admit("alice", B) is None


def test_memory_is_bounded():
    t = LoginThrottle(max_tracked=30)
    for i in range(100):
        guess(t, "u%d" % i, "10.0.0.%d" % (i % 250), 0)
    assert len(t._strikes) <= 30


# -- one budget across trackers ---------------------------------------------------------------

class Link:
    """Delivers a guard's messages straight to another guard, as a sync link would."""

    def __init__(self, target, number):
        self.target, self.number = target, number
        self.sent = []

    def send(self, msg):
        self.sent.append(msg)
        assert msg["t"] == "login"
        self.target.receive(self.number, msg)


def linked(clock):
    g1, g2 = SharedLoginGuard(clock), SharedLoginGuard(clock)
    g1.link_up(2, Link(g2, 1))
    g2.link_up(1, Link(g1, 2))
    return g1, g2


def test_guesses_on_one_tracker_count_on_the_other():
    clock = task.Clock()
    g1, g2 = linked(clock)
    for _ in range(PAIR_FREE):
        assert g1.admit("alice", A) is None
    assert g2.admit("alice", A) is not None          # tracker 2 has no fresh budget to give
    assert g1.admit("alice", A) is not None
    assert g2.admit("alice", B) is None              # alice herself is let in everywhere
    g2.succeeded("alice", B)
    assert g1.throttle.current(("p", "alice", B), clock.seconds())[0] == 0


def test_wrong_passwords_on_one_tracker_count_on_the_other():
    clock = task.Clock()
    g1, g2 = linked(clock)
    for i in range(USER_FREE):
        address = "10.0.%d.%d" % (i // 200, i % 200)
        assert (g1, g2)[i % 2].admit("alice", address) is None
        (g1, g2)[i % 2].failed("alice", address)
    assert g1.admit("alice", B) is not None and g2.admit("alice", B) is not None


def test_alternating_between_trackers_gives_no_more_guesses_than_one_tracker():
    clock = task.Clock()
    g1, g2 = linked(clock)
    lone = LocalLoginGuard(clock)
    allowed_pair = allowed_lone = 0
    for i in range(200):                       # one attempt a second for 200 s
        g = (g1, g2)[i % 2]
        if g.admit("alice", A) is None:
            allowed_pair += 1
            g.failed("alice", A)
        if lone.admit("alice", A) is None:
            allowed_lone += 1
            lone.failed("alice", A)
        clock.advance(1)
    assert allowed_pair == allowed_lone < 20


def test_trackers_that_link_later_exchange_their_counters():
    clock = task.Clock()
    g1, g2 = SharedLoginGuard(clock), SharedLoginGuard(clock)
    for _ in range(PAIR_FREE):
        g1.admit("alice", A)
    clock.advance(0.5)
    assert g2.admit("alice", A) is None              # not linked: tracker 2 knew nothing
    g1.link_up(2, Link(g2, 1))
    g2.link_up(1, Link(g1, 2))
    assert g2.throttle.current(("p", "alice", A), clock.seconds())[0] == PAIR_FREE
    assert g1.throttle.current(("p", "alice", A), clock.seconds())[0] == PAIR_FREE
    assert g2.admit("alice", A) is not None
    g1.link_down(2)
    g1.admit("bob", A)
    assert g2.throttle.current(("u", "bob"), clock.seconds())[0] == 0     # no link, no news


@pytest.mark.parametrize("msg", [
    {"t": "login", "kind": "attempt", "user": 7, "address": A},
    {"t": "login", "kind": "failed", "user": "alice", "address": ""},
    {"t": "login", "kind": "ok", "user": "alice"},
    {"t": "login", "kind": "snapshot", "counters": "x"},
    {"t": "login", "kind": "snapshot", "counters": [["q", "alice", 3, 1]]},
    {"t": "login", "kind": "snapshot", "counters": [["u", "alice", -1, 1]]},
    {"t": "login", "kind": "snapshot", "counters": [["p", "alice", 3, 1]]},
    {"t": "login", "kind": "nope"},
])
def test_malformed_budget_messages_are_refused(msg):
    with pytest.raises(ValueError):
        SharedLoginGuard(task.Clock()).receive(2, msg)
