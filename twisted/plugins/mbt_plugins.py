"""twistd plugins for mbt: ``twistd -n mbt-tracker`` and ``twistd -n mbt-peer``."""

from twisted.application.service import ServiceMaker

mbtTracker = ServiceMaker(
    "mbt tracker", "mbt.tap_tracker", "mbt tracker: accounts, groups and the file registry",
    "mbt-tracker")
mbtPeer = ServiceMaker(
    "mbt peer", "mbt.tap_peer", "mbt peer: shares and downloads files, with a telnet console",
    "mbt-peer")
mbtRelay = ServiceMaker(
    "mbt relay", "mbt.tap_relay", "mbt relay: pipes bytes between two peers that cannot reach each other",
    "mbt-relay")
