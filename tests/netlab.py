"""A small internet in network namespaces, with real NAT (nftables masquerade).

Topology (every name is prefixed with a per-lab tag, so labs of parallel test
runs never meet)::

    public bridge 198.18.0.0/15 (namespace "core", bridge br0)
      |- tracker   198.18.0.10
      |- relay     198.18.0.11
      |- tracker2  198.18.0.12      a second tracker of the same fleet
      |- pub       198.18.0.20      a peer on the public side
      |- pub2      198.18.0.21      another public host (replays tickets)
      |- rtrA      198.18.1.1  ==NAT==  homeA 100.64.1.2 (lan 100.64.1.0/24)
      '- rtrB      198.18.2.1  ==NAT==  homeB 100.64.2.2 (lan 100.64.2.0/24)

Public hosts have no route to 100.64.0.0/10 (as on the internet); each home
reaches the public side through its router, which masquerades the home's
source address (``nft ... oifname "wan" ip saddr 100.64.0.0/10 masquerade``)
and, like every home router without port forwarding, lets nothing in that
the home did not start. :class:`Lab` builds it and always removes it
(namespaces, and with them every veth and bridge), also when a test fails.
Needs root, ``ip`` and ``nft``; :func:`unavailable` says why not in one line.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from typing import Dict, List, Optional

PUBLIC = {"tracker": "198.18.0.10", "relay": "198.18.0.11", "tracker2": "198.18.0.12", "pub": "198.18.0.20",
          "pub2": "198.18.0.21"}
HOMES = {"homeA": ("rtrA", "198.18.1.1", "100.64.1"), "homeB": ("rtrB", "198.18.2.1", "100.64.2")}
_counter = itertools.count()


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def unavailable() -> Optional[str]:
    """Why network namespaces with NAT cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespace NAT tests need root (CI runs them as root)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return "network namespace NAT tests need %r (make test installs nftables/iproute2)" % tool
    name = "mbtprobe%d" % os.getpid()
    try:
        _run("ip", "netns", "add", name)
    except (subprocess.CalledProcessError, OSError) as e:
        return "cannot create network namespaces here: %s" % (getattr(e, "stderr", "") or e).strip()
    try:
        r = _run("ip", "netns", "exec", name, "nft", "add", "table", "ip", "probe", check=False)
        if r.returncode != 0:
            return "nftables does not work in a network namespace here: %s" % r.stderr.strip()
    finally:
        _run("ip", "netns", "del", name, check=False)
    return None


class Lab:
    """The namespaces above; ``ns(name)`` is the real namespace name of a host."""

    def __init__(self) -> None:
        self.tag = "m%x%x" % (os.getpid() % 0xfff, next(_counter))
        self.made: List[str] = []

    def ns(self, host: str) -> str:
        return "%s-%s" % (self.tag, host)

    def ip(self, host: str) -> str:
        """The address a host's own interface has (a home's private address)."""
        if host in PUBLIC:
            return PUBLIC[host]
        return HOMES[host][2] + ".2"

    def exec_prefix(self, host: str) -> List[str]:
        """Prefix to run a command inside a host's namespace."""
        return ["ip", "netns", "exec", self.ns(host)]

    def sh(self, host: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run(*(self.exec_prefix(host) + list(argv)), check=check)

    def _add_ns(self, host: str) -> None:
        _run("ip", "netns", "add", self.ns(host))
        self.made.append(self.ns(host))
        self.sh(host, "ip", "link", "set", "lo", "up")

    def _veth(self, a_host: str, a_if: str, b_host: str, b_if: str) -> None:
        # Created with temporary unique names in the root namespace, then moved and renamed.
        tmp_a, tmp_b = "%s%sa" % (self.tag, a_if[:3]), "%s%sb" % (self.tag, b_host[-4:])
        tmp_a, tmp_b = tmp_a[:15], tmp_b[:15]
        _run("ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
        try:
            _run("ip", "link", "set", tmp_a, "netns", self.ns(a_host))
            _run("ip", "link", "set", tmp_b, "netns", self.ns(b_host))
        except subprocess.CalledProcessError:
            _run("ip", "link", "del", tmp_a, check=False)
            raise
        self.sh(a_host, "ip", "link", "set", tmp_a, "name", a_if)
        self.sh(b_host, "ip", "link", "set", tmp_b, "name", b_if)
        self.sh(a_host, "ip", "link", "set", a_if, "up")
        self.sh(b_host, "ip", "link", "set", b_if, "up")

    def _public_port(self, host: str, address: str, ifname: str = "eth0") -> None:
        port = "p" + host[-5:]
        self._veth(host, ifname, "core", port)
        self.sh("core", "ip", "link", "set", port, "master", "br0")
        self.sh(host, "ip", "addr", "add", address + "/15", "dev", ifname)

    def up(self) -> "Lab":
        """Build everything; on any failure remove what was made and raise."""
        try:
            self._add_ns("core")
            self.sh("core", "ip", "link", "add", "br0", "type", "bridge")
            self.sh("core", "ip", "link", "set", "br0", "up")
            for host, address in PUBLIC.items():
                self._add_ns(host)
                self._public_port(host, address)
            for home, (router, wan, lan) in HOMES.items():
                self._add_ns(router)
                self._add_ns(home)
                self._public_port(router, wan, "wan")
                self._veth(router, "lan", home, "eth0")
                self.sh(router, "ip", "addr", "add", lan + ".1/24", "dev", "lan")
                self.sh(home, "ip", "addr", "add", lan + ".2/24", "dev", "eth0")
                self.sh(home, "ip", "route", "add", "default", "via", lan + ".1")
                self.sh(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
                # The home router: masquerade outbound, drop unsolicited inbound.
                rules = """
                table ip nat {
                  chain postrouting { type nat hook postrouting priority 100; oifname "wan" ip saddr 100.64.0.0/10 masquerade; }
                }
                table ip filter {
                  chain forwarding { type filter hook forward priority 0; policy drop;
                    ct state established,related accept;
                    iifname "lan" oifname "wan" accept; }
                }
                """
                p = subprocess.run(self.exec_prefix(router) + ["nft", "-f", "-"], input=rules, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                if p.returncode != 0:
                    raise RuntimeError("nft in %s: %s" % (router, p.stderr.strip()))
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Remove every namespace made (their veths and bridge go with them); kill stray processes."""
        for name in reversed(self.made):
            pids = _run("ip", "netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            _run("ip", "netns", "del", name, check=False)
        self.made = []

    def __enter__(self) -> "Lab":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def leftovers(self) -> Dict[str, List[str]]:
        """Namespaces and links of this lab still present (for the cleanup test)."""
        names = _run("ip", "netns", "list").stdout.split("\n")
        links = _run("ip", "-o", "link").stdout.split("\n")
        return {"netns": [n for n in names if n.startswith(self.tag + "-")],
                "links": [ln for ln in links if self.tag in ln]}
