"""Login throttling: a few mistakes are free, brute force slows down exponentially."""

from mbt.throttle import LoginThrottle


def test_a_few_mistakes_are_free():
    t = LoginThrottle()
    for i in range(4):
        assert t.retry_after("bob", "127.0.0.1", now=i) is None
        t.failed("bob", "127.0.0.1", now=i)
    assert t.retry_after("bob", "127.0.0.1", now=5) is None


def test_brute_force_on_one_user_waits_longer_and_longer():
    t = LoginThrottle()
    now = 0.0
    for _ in range(5):
        t.failed("bob", "127.0.0.1", now)
    first = t.retry_after("bob", "127.0.0.1", now)
    assert first is not None and first > 0
    for _ in range(5):
        t.failed("bob", "127.0.0.1", now)
    assert t.retry_after("bob", "127.0.0.1", now) > first
    # another user from another address is not affected
    assert t.retry_after("ann", "127.0.0.2", now) is None


def test_delay_is_capped_and_strikes_decay():
    t = LoginThrottle(max_delay=300)
    for _ in range(40):
        t.failed("bob", "127.0.0.1", 0)
    assert t.retry_after("bob", "127.0.0.1", 0) <= 300
    assert t.retry_after("bob", "127.0.0.1", 40 * 60 + 1) is None


def test_one_address_guessing_many_users_is_slowed():
    t = LoginThrottle()
    for i in range(20):
        t.failed("user%d" % i, "127.0.0.9", 0)
    assert t.retry_after("fresh", "127.0.0.9", 0) is not None
    assert t.retry_after("fresh", "127.0.0.8", 0) is None


def test_success_clears_the_users_strikes():
    t = LoginThrottle()
    for _ in range(6):
        t.failed("bob", "127.0.0.1", 0)
    t.succeeded("bob")
    assert t.retry_after("bob", "127.0.0.2", 0) is None
