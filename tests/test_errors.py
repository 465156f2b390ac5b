"""mbt.errors: one typed class per error code, rebuilt typed from the wire."""

import os
import re

import pytest
from twisted.python.failure import Failure

from mbt import errors
from mbt.errors import (CatchingUp, InvalidArgument, MbtError, NotLoggedIn, NotMember, error_class,
                        error_from_wire)

DOCS = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "protocol.rst")


def documented_codes():
    """The codes of the table in docs/protocol.rst 2.4, plus the client-side tracker_unavailable."""
    text = open(DOCS, encoding="utf-8").read()
    table = text[text.index("2.4 Error codes"):text.index("2.5 ")]
    return re.findall(r"^   \* - ``([a-z_]+)``$", table, re.M) + ["tracker_unavailable"]


def test_every_documented_code_has_its_own_class():
    codes = documented_codes()
    assert len(codes) > 20
    for code in codes:
        cls = error_class(code)
        assert cls is not MbtError and cls.code == code, code


def test_codes_are_unique():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, MbtError)
               and c is not MbtError]
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes))


def test_an_error_rebuilt_from_the_wire_is_typed():
    err = error_from_wire({"code": "not_member", "message": "you are not a member of group club"})
    assert isinstance(err, NotMember) and err.code == "not_member"
    assert err.message == "you are not a member of group club"
    assert Failure(err).check(NotMember) is NotMember
    assert err.to_wire() == {"code": "not_member", "message": "you are not a member of group club"}


def test_an_unknown_or_malformed_code_stays_a_plain_error_with_its_code():
    err = error_from_wire({"code": "from_the_future", "message": "new"})
    assert type(err) is MbtError and err.code == "from_the_future" and err.message == "new"
    odd = error_from_wire("not an object")
    assert type(odd) is MbtError and (odd.code, odd.message) == ("error", "tracker error")


def test_constructing_by_code_gives_the_class():
    assert isinstance(MbtError("wait", "catching_up"), CatchingUp)
    assert type(MbtError("plain")) is MbtError and MbtError("plain").code == "error"


@pytest.mark.parametrize("err, line", [
    (NotLoggedIn(), "error: not logged in; use login <user_id> <passwd>"),
    (InvalidArgument("bad\nid "), "error: bad id"),
])
def test_console_line_is_one_line(err, line):
    assert err.console_line() == line
