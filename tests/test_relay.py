"""The relay: pairing by token, piping, limits and timeouts (fake transports and a fake clock)."""

import pytest
from twisted.internet import task
from twisted.internet.testing import StringTransport

from mbt.relay.pairing import Allowance, Pairing, RelayRefused, parse_handshake
from mbt.relay.server import HANDSHAKE_TIMEOUT, PAIR_TIMEOUT, RelayFactory
from mbt.tap_relay import Options, makeService

TOKEN = "t0ken-" + "a" * 20


def test_handshake_parsing():
    assert parse_handshake(b"RELAY %s serve\r" % TOKEN.encode()) == (TOKEN, "serve")
    for bad in (b"", b"RELAY", b"RELAY short serve", b"RELAY %s both" % TOKEN.encode(),
                b"relay %s serve" % TOKEN.encode(), b"RELAY %s serve x" % TOKEN.encode(), b"\xff"):
        with pytest.raises(RelayRefused):
            parse_handshake(bad)


def test_pairing_matches_opposite_sides_of_one_token():
    p = Pairing()
    assert p.arrive(TOKEN, "serve", "a") is None
    with pytest.raises(RelayRefused, match="already waiting"):
        p.arrive(TOKEN, "serve", "a2")
    assert p.arrive("other-token-xxxxxxxx", "fetch", "c") is None
    assert p.arrive(TOKEN, "fetch", "b") == "a"
    assert p.pairs == 1 and list(p.waiting) == ["other-token-xxxxxxxx"]
    p.leave("c", paired=False)
    assert not p.waiting
    p.leave("b", paired=True)
    assert p.pairs == 0


def test_a_full_relay_refuses():
    p = Pairing(max_waiting=1, max_pairs=1)
    p.arrive(TOKEN, "serve", "a")
    with pytest.raises(RelayRefused, match="full"):
        p.arrive("x" * 20, "serve", "x")
    p.arrive(TOKEN, "fetch", "b")
    p.arrive("y" * 20, "serve", "y")
    with pytest.raises(RelayRefused, match="full"):
        p.arrive("y" * 20, "fetch", "z")


def test_allowance_pauses_for_as_long_as_the_debt_takes():
    a = Allowance(1000.0, now=0.0, burst=1000.0)
    assert a.charge(1000, 0.0) == 0.0
    assert a.charge(500, 0.0) == pytest.approx(0.5)
    assert a.charge(0, 0.5) == 0.0               # paid back
    assert Allowance(0, now=0.0).charge(10 ** 9, 0.0) == 0.0


def connect(factory, clock):
    proto = factory.buildProtocol(None)
    t = StringTransport()
    proto.makeConnection(t)
    return proto, t


def pair(rate=0.0, total_rate=0.0):
    clock = task.Clock()
    f = RelayFactory(clock, rate=rate, total_rate=total_rate)
    a, ta = connect(f, clock)
    b, tb = connect(f, clock)
    a.dataReceived(b"RELAY %s serve\n" % TOKEN.encode())
    assert ta.value() == b""                       # nobody to talk to yet
    b.dataReceived(b"RELAY %s fet" % TOKEN.encode())
    b.dataReceived(b"ch\nearly bytes")
    return clock, f, (a, ta), (b, tb)


def test_two_connections_with_one_token_are_piped_both_ways():
    clock, f, (a, ta), (b, tb) = pair()
    assert ta.value() == b"OK\nearly bytes" and tb.value() == b"OK\n"
    ta.clear(), tb.clear()
    a.dataReceived(b"PIECE 0 0 3\nabc")
    b.dataReceived(b"REQUEST 0 0 3\n")
    assert tb.value() == b"PIECE 0 0 3\nabc" and ta.value() == b"REQUEST 0 0 3\n"
    assert f.relayed == len(b"early bytes") + 15 + 14


def test_a_full_send_buffer_stops_the_other_side_reading():
    clock, f, (a, ta), (b, tb) = pair()
    tb.producer.pauseProducing()        # b's socket buffer is full
    assert ta.producerState == "paused"
    tb.producer.resumeProducing()
    assert ta.producerState == "producing"


def test_the_per_connection_rate_pauses_and_resumes_reading():
    clock, f, (a, ta), (b, tb) = pair(rate=1024 * 1024)
    a.dataReceived(b"x" * (1024 * 1024))         # a quarter-second burst plus 0.75 s of debt
    assert ta.producerState == "paused"
    clock.advance(0.7)
    assert ta.producerState == "paused"
    clock.advance(0.1)
    assert ta.producerState == "producing"
    assert tb.producerState == "producing"       # the other direction was never limited


def test_the_total_rate_counts_every_connection():
    clock, f, (a, ta), (b, tb) = pair(total_rate=1024 * 1024)
    a.dataReceived(b"x" * (600 * 1024))
    assert ta.producerState == "paused"
    b.dataReceived(b"y" * 1024)
    assert tb.producerState == "paused"


def test_one_side_closing_closes_the_other_after_its_buffer():
    clock, f, (a, ta), (b, tb) = pair()
    a.connectionLost(None)
    assert tb.disconnecting and tb.producer is None
    assert f.pairing.pairs == 0 and not f.connections - {b}


def test_an_unpaired_connection_gives_up():
    clock = task.Clock()
    f = RelayFactory(clock)
    a, ta = connect(f, clock)
    a.dataReceived(b"RELAY %s serve\n" % TOKEN.encode())
    clock.advance(PAIR_TIMEOUT)
    assert ta.value() == b"ERROR no partner in time\n" and ta.disconnecting
    a.connectionLost(None)
    assert not f.pairing.waiting


def test_silence_and_garbage_are_refused():
    clock = task.Clock()
    f = RelayFactory(clock)
    a, ta = connect(f, clock)
    clock.advance(HANDSHAKE_TIMEOUT)
    assert ta.value() == b"ERROR no handshake in time\n" and ta.disconnecting
    b, tb = connect(f, clock)
    b.dataReceived(b"GET / HTTP/1.1\r\n")
    assert tb.value().startswith(b"ERROR bad handshake") and tb.disconnecting
    c, tc = connect(f, clock)
    c.dataReceived(b"R" * 500)
    assert tc.value() == b"ERROR handshake line too long\n"
    d, td = connect(f, clock)
    d.dataReceived(b"RELAY %s serve\n" % TOKEN.encode() + b"z" * (65 * 1024))
    assert td.value() == b"ERROR too much data before pairing\n"


def test_options():
    o = Options()
    o.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", "--rate", "10M", "--total-rate", "1G"])
    assert o["rate"] == 10e6 and o["total-rate"] == 1e9
    assert "tls" not in o       # peers run TLS end to end through the relay
    svc = makeService(o, reactor=task.Clock())
    assert svc.factory.rate == 10e6
    from twisted.python import usage
    for bad in ([], ["--listen", "tcp:1", "--rate", "fast"], ["--listen", "tcp:1", "--max-pairs", "0"],
                ["--listen", "tcp:1", "--tls-cert", "/nonexistent"]):    # no such flag
        with pytest.raises(usage.UsageError):
            Options().parseOptions(bad)


# -- the real relay process: bytes intact both ways, backpressure, close after the last byte ------

@pytest.mark.parametrize("flags", [[], ["--no-zero-copy"]], ids=["splice", "copy"])
def test_a_real_relay_pipes_every_byte_both_ways_and_closes_after_the_last(procs, tmp_path, flags):
    import hashlib
    import os
    import socket
    import threading
    import time

    from mbt.driver import Process, bin_path, free_port, wait_port
    port = free_port()
    relay = Process([bin_path("twistd"), "-n", "--pidfile", "", "mbt-relay", "--listen",
                     "tcp:%d:interface=127.0.0.1" % port] + flags, cwd=str(tmp_path), log=str(tmp_path / "relay.log"))
    procs.append(relay)
    wait_port(port, 20, relay.proc)
    a = socket.create_connection(("127.0.0.1", port), timeout=30)
    b = socket.create_connection(("127.0.0.1", port), timeout=30)
    # Early data after the handshake line is kept and forwarded after OK.
    a.sendall(b"RELAY %s serve\nearly-" % TOKEN.encode())
    b.sendall(b"RELAY %s fetch\n" % TOKEN.encode())
    assert a.recv(3) == b"OK\n" and b.recv(3) == b"OK\n"
    big = os.urandom(24 * 1024 * 1024 + 7)
    small = os.urandom(300 * 1024 + 3)
    tail = os.urandom(4 * 1024 * 1024)
    got = {}

    def receive(sock, name, length=None, slow=False):
        if slow:
            time.sleep(1.0)        # the relay meets a full destination first: backpressure
        h, n = hashlib.sha256(), 0
        while length is None or n < length:
            chunk = sock.recv(min(1 << 20, (length - n) if length is not None else 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
        got[name] = (n, h.hexdigest())

    def run(*threads):
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    # Both ways at once, the fetch side reading late.
    run(threading.Thread(target=a.sendall, args=(big,)), threading.Thread(target=b.sendall, args=(small,)),
        threading.Thread(target=receive, args=(b, "b", len(big) + 6, True)),
        threading.Thread(target=receive, args=(a, "a", len(small))))
    assert got["b"] == (len(big) + 6, hashlib.sha256(b"early-" + big).hexdigest())
    assert got["a"] == (len(small), hashlib.sha256(small).hexdigest())
    # One side writes its last bytes and hangs up at once: the other gets them all, then the end.
    a.sendall(tail)
    a.close()
    time.sleep(0.5)
    run(threading.Thread(target=receive, args=(b, "end")))
    assert got["end"] == (len(tail), hashlib.sha256(tail).hexdigest())
    b.close()
    assert ("(copy)" if flags else "(splice)") in (tmp_path / "relay.log").read_text()
