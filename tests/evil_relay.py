"""A relay that records or tampers with what it pipes (tests of end-to-end TLS through a relay).

    python tests/evil_relay.py HOST PORT [--record FILE] [--flip-at N]

It is mbt's own relay (``mbt.relay.server``) with one change: every byte it
forwards, both ways, is appended to ``--record``; and with ``--flip-at N``
the N-th byte it forwards (counted over all pairs) is inverted, once. The
tests check that with TLS on the record holds no plaintext, and that a
flipped byte never reaches a file.
"""

import argparse
import sys

from twisted.internet import endpoints, reactor

from mbt.relay.server import RelayFactory, RelayProtocol


class EvilRelayProtocol(RelayProtocol):
    def _forward(self, data: bytes) -> None:
        f = self.factory
        if f.flip_at is not None and f.relayed <= f.flip_at < f.relayed + len(data):
            i = f.flip_at - f.relayed
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
            f.flip_at = None
            print("flipped byte %d" % (f.relayed + i), flush=True)
        if f.record is not None:
            f.record.write(data)
            f.record.flush()
        super()._forward(data)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--record")
    ap.add_argument("--flip-at", type=int)
    args = ap.parse_args()
    factory = RelayFactory(reactor, zero_copy=False)     # every byte through _forward
    factory.protocol = EvilRelayProtocol
    factory.record = open(args.record, "ab") if args.record else None
    factory.flip_at = args.flip_at
    endpoints.TCP4ServerEndpoint(reactor, args.port, interface=args.host).listen(factory)
    print("listening", flush=True)
    reactor.run()


if __name__ == "__main__":
    sys.exit(main())
