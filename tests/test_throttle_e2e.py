"""Login throttling on two real ``mbt-tracker`` processes (issue #12 item 5).

A guesser at 127.0.0.2 spends its free wrong passwords for alice on tracker 1;
tracker 2 must then make it wait too (one budget for all trackers), while
alice at 127.0.0.1 logs in with her password on either tracker.
"""

import pytest

from mbt.throttle import PAIR_FREE
from tests.test_replication_integration import Client, Trackers


def code(c: Client, op: str, **args) -> str:
    reply = c.call(op, **args)
    return "ok" if "ok" in reply else reply["error"]["code"]


@pytest.fixture
def cluster(tmp_path):
    t = Trackers(tmp_path, 2)
    yield t
    t.stop_all()


def test_one_login_budget_for_all_trackers_and_the_real_user_gets_in(cluster):
    cluster.start(1)
    cluster.start(2)
    cluster.wait_in_sync([1, 2])
    alice = Client(cluster.port(1), source="127.0.0.1")
    assert code(alice, "create_user", user="alice", password="right") == "ok"
    alice.close()
    cluster.wait_in_sync([1, 2])

    guesser1 = Client(cluster.port(1), source="127.0.0.2")
    codes = [code(guesser1, "login", user="alice", password="guess%d" % i, address="127.0.0.2:7000")
             for i in range(PAIR_FREE)]
    assert codes == ["bad_credentials"] * PAIR_FREE
    guesser2 = Client(cluster.port(2), source="127.0.0.2")
    assert code(guesser2, "login", user="alice", password="guess-on-2", address="127.0.0.2:7000") \
        == "rate_limited"
    assert code(guesser1, "login", user="alice", password="guess-again", address="127.0.0.2:7000") \
        == "rate_limited"
    for n in (1, 2):
        alice = Client(cluster.port(n), source="127.0.0.1")
        assert code(alice, "login", user="alice", password="right", address="127.0.0.1:7000") == "ok"
        alice.close()
    guesser1.close()
    guesser2.close()
