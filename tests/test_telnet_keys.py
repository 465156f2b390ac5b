"""Telnet console keys: telnet commands (IAC EOF, IP, SUSP, ...), line editing, Tab completion.

Fake transports here; tests/test_telnet_real.py sends the same bytes to a real
``twistd -n mbt-peer``.
"""

import pytest
from twisted.conch import telnet

from mbt.protocols.console import PROMPT
from tests.test_console import BANNER, FakeBackend, ManholeHarness, TelnetHarness, logged  # noqa: F401

IAC = telnet.IAC
EOF, SUSP, ABORT = b"\xec", b"\xed", b"\xee"


class CompletingBackend(FakeBackend):
    def complete(self, text):
        words = text.split(" ")
        if len(words) == 1:
            choices = ["list_groups", "list_files", "list_requests", "login", "logout", "help"]
        else:
            choices = ["club", "clubhouse", "chess"]
        return [c for c in choices if c.startswith(words[-1])]


@pytest.fixture
def tel():
    h = TelnetHarness(CompletingBackend())
    assert h.output() == BANNER + "\r\n" + PROMPT
    return h


def line(h):
    return b"".join(h.console.lineBuffer).decode(), h.console.lineBufferIndex


@pytest.mark.parametrize("command", [EOF, SUSP, ABORT, telnet.IP, telnet.BRK, telnet.AO, telnet.AYT,
                                     telnet.EC, telnet.EL, telnet.NOP, telnet.GA, telnet.DM, b"\x10",
                                     b"\xe0"])
def test_every_telnet_command_keeps_the_session(tel, logged, command):
    tel.send(b"hel" + IAC + command + b"p")
    tel.send(b"\r\n")
    assert not tel.transport.disconnecting or command == EOF
    assert logged == []          # no traceback, no failure logged


def test_iac_eof_on_an_empty_line_closes_the_session_like_quit(tel, logged):
    tel.send(IAC + EOF)
    assert tel.output().endswith("bye\r\n")
    assert tel.transport.disconnecting
    assert tel.backend.listeners == []          # unsubscribed: the session is over
    assert logged == []


def test_iac_eof_on_a_non_empty_line_rings_the_bell(tel):
    tel.send(b"list" + IAC + EOF)
    assert tel.raw().endswith(b"\a")
    assert not tel.transport.disconnecting and line(tel) == ("list", 4)


@pytest.mark.parametrize("command", [telnet.IP, telnet.BRK, ABORT])
def test_iac_ip_clears_the_current_line(tel, command):
    tel.send(b"clear" + IAC + command + b"list_groups\r\n")
    assert tel.backend.commands == ["list_groups"]
    assert "^C\r\n" + PROMPT in tel.output()


def test_iac_susp_rings_the_bell_and_keeps_the_line(tel):
    tel.send(b"log" + IAC + SUSP)
    assert tel.raw().endswith(b"\a") and line(tel) == ("log", 3)


def test_iac_ec_and_el_erase_a_character_and_the_line(tel):
    tel.send(b"helpx" + IAC + telnet.EC)
    assert line(tel) == ("help", 4)
    tel.send(IAC + telnet.EL + b"list_files\r\n")
    assert tel.backend.commands == ["list_files"]


def test_iac_ayt_answers_above_the_input_line(tel):
    tel.send(b"lo" + IAC + telnet.AYT)
    assert tel.output().endswith("[yes]\r\n" + PROMPT + "lo")
    assert line(tel) == ("lo", 2)


def test_commands_split_across_packets_and_doubled_iac(tel):
    tel.send(b"ab" + IAC)
    tel.send(EOF + b"c" + IAC + IAC + b"d")
    assert b"".join(tel.console.lineBuffer) == b"abc\xffd"   # EOF mid-line: bell; IAC IAC: a 0xff byte


def test_ctrl_u_kills_the_line(tel):
    tel.send(b"clear\x15list_groups\r\n")
    assert tel.backend.commands == ["list_groups"]


def test_ctrl_a_ctrl_e_move_home_and_end(tel):
    tel.send(b"ist_groups\x01l")
    assert line(tel) == ("list_groups", 1)
    tel.send(b"\x05 x")
    assert line(tel) == ("list_groups x", 13)


def test_ctrl_k_kills_to_the_end(tel):
    tel.send(b"list_groups junk\x01\x1b[C\x1b[C\x1b[C\x1b[C\x0b")
    assert line(tel) == ("list", 4)


def test_ctrl_w_kills_the_word_before_the_cursor(tel):
    tel.send(b"join_group clubb  \x17")
    assert line(tel) == ("join_group ", 11)
    tel.send(b"\x17\x17")
    assert line(tel) == ("", 0)


def test_ctrl_w_in_the_middle_keeps_the_rest(tel):
    tel.send(b"a bb c\x1b[D\x1b[D\x17")
    assert line(tel) == ("a  c", 2)


def test_ctrl_l_redraws_prompt_and_line(tel):
    tel.send(b"logi\x0c")
    raw = tel.raw()
    assert b"\x1b[2J" in raw and raw.endswith(PROMPT.encode() + b"logi")
    assert line(tel) == ("logi", 4)


def test_tab_completes_a_unique_command_name(tel):
    tel.send(b"he\t")
    assert line(tel) == ("help ", 5)


def test_tab_completes_the_common_prefix_then_lists_the_choices(tel):
    tel.send(b"l\t")
    assert line(tel) == ("l", 1)                  # list_* and log*: no common part to add
    out = tel.output()
    assert "list_files  list_groups  list_requests  login  logout" in out
    assert out.endswith(PROMPT + "l")
    tel.send(b"is\t")
    assert line(tel) == ("list_", 5)


def test_tab_completes_group_ids(tel):
    tel.send(b"list_files ch\t")
    assert line(tel) == ("list_files chess ", 17)
    tel.send(b"\x15join_group cl\t")
    assert line(tel) == ("join_group club", 15)


def test_tab_with_no_choice_rings_the_bell(tel):
    tel.send(b"zz\t")
    assert tel.raw().endswith(b"\a") and line(tel) == ("zz", 2)


def test_manhole_survives_telnet_commands_and_quits_on_iac_eof(logged):
    h = ManholeHarness()
    h.proto.dataReceived(b"admin\r\n" + IAC + telnet.DO + telnet.ECHO)
    h.proto.dataReceived(b"s3cret\r\n" + IAC + telnet.DONT + telnet.ECHO)
    assert ">>> " in h.output()
    h.proto.dataReceived(b"1 +" + IAC + telnet.IP + b"answer" + IAC + SUSP + IAC + telnet.AYT + b"\r\n")
    assert "42" in h.output()
    assert not h.transport.disconnecting
    h.proto.dataReceived(IAC + EOF)
    assert h.transport.disconnecting
    assert logged == []


def test_manhole_login_prompt_closes_on_iac_ip(logged):
    h = ManholeHarness()
    h.proto.dataReceived(b"adm" + IAC + SUSP)
    assert not h.transport.disconnecting
    h.proto.dataReceived(IAC + telnet.IP)
    assert h.transport.disconnecting and logged == []
