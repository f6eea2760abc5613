"""Network namespaces: the two-namespace lab link and commands run inside it.

Everything a benchmark does lives in namespaces it creates and deletes
itself, so the host's interfaces and routes are never touched. Deleting a
namespace kills what runs in it first: ``ip netns del`` alone would leave
those processes running, still holding their sockets.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from typing import Self

from netlab.process import LabSetup, kill_pids, pid_alive, run


def ns_cmd(ns: str, *cmd: str) -> list[str]:
    """The argv that runs ``cmd`` inside network namespace ``ns``."""
    return ["ip", "netns", "exec", ns, *cmd]


def ping(
    ns: str, address: str, *, count: int = 3, timeout: float = 15.0
) -> subprocess.CompletedProcess[str]:
    """Ping ``address`` from ``ns``, 0.2 s apart; :class:`LabError` if nothing answers."""
    return run(
        ns_cmd(ns, "ping", "-c", str(count), "-i", "0.2", "-W", "2", address), timeout=timeout
    )


def set_mtu(ns: str, dev: str, mtu: int) -> None:
    """Set the MTU of device ``dev`` in namespace ``ns``."""
    run(["ip", "-n", ns, "link", "set", dev, "mtu", str(mtu)])


def netns_list() -> list[str]:
    """Names of the existing network namespaces."""
    out = run(["ip", "netns", "list"], timeout=10).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(ns: str) -> list[int]:
    """Pids of processes whose network namespace is ``ns`` (all started by us)."""
    out = run(["ip", "netns", "pids", ns], timeout=10, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def delete_netns(ns: str) -> None:
    """Kill what runs in ``ns`` (only processes we started live there), then delete it.

    ``ip netns del`` alone leaves processes running in the orphaned namespace,
    still holding their sockets; they must go first.
    """
    pids = netns_pids(ns)
    if pids:
        kill_pids(pids)
    run(["ip", "netns", "del", ns], timeout=15, check=False)


def remove_stale_namespaces(prefix: str) -> list[str]:
    """Delete ``<prefix><pid>-*`` namespaces whose creating process is gone.

    Only names of the exact form :class:`NamespacePair` gives are touched, so
    namespaces of other tools (and of a concurrently running copy) are left
    alone.
    """
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)-[a-z]$")
    removed = []
    for ns in netns_list():
        match = pattern.match(ns)
        if match and not pid_alive(int(match.group(1))):
            delete_netns(ns)
            removed.append(ns)
    return removed


@dataclass
class NamespacePair(LabSetup):
    """Two namespaces A and B joined by one veth pair: the "internet" link.

    Names embed our pid (``<prefix><pid>-a``) so concurrent runs and other
    tools' fixed names (rw/gw/lan) never collide. Reverse-path filtering is
    off inside both namespaces because tunnel devices make routes asymmetric.
    Torn down (processes killed, namespaces deleted) on every exit path.
    """

    prefix: str = "obtun"
    addr_a: str = "192.0.2.1/24"
    addr_b: str = "192.0.2.2/24"
    mtu: int = 1500
    ns_a: str = field(init=False)
    ns_b: str = field(init=False)
    veth_a: str = field(init=False)
    veth_b: str = field(init=False)

    def __post_init__(self) -> None:
        pid = os.getpid()
        self.ns_a, self.ns_b = f"{self.prefix}{pid}-a", f"{self.prefix}{pid}-b"
        # interface names are limited to 15 characters
        self.veth_a, self.veth_b = f"{self.prefix}{pid}a"[:15], f"{self.prefix}{pid}b"[:15]

    @property
    def ip_a(self) -> str:
        """A's outer address without prefix length."""
        return self.addr_a.split("/")[0]

    @property
    def ip_b(self) -> str:
        """B's outer address without prefix length."""
        return self.addr_b.split("/")[0]

    def up(self) -> Self:
        """Create both namespaces and the veth link; undone by :meth:`down`."""
        self._register(f"namespaces {self.ns_a}/{self.ns_b}", self._teardown)
        for ns in (self.ns_a, self.ns_b):
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            for key in ("all", "default"):
                run(ns_cmd(ns, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0"))
        # create the veth inside A directly: the host namespace never sees it
        run(
            [
                *("ip", "-n", self.ns_a, "link", "add", self.veth_a, "mtu", str(self.mtu)),
                *("type", "veth", "peer", "name", self.veth_b, "netns", self.ns_b),
            ]
        )
        for ns, dev, addr in (
            (self.ns_a, self.veth_a, self.addr_a),
            (self.ns_b, self.veth_b, self.addr_b),
        ):
            set_mtu(ns, dev, self.mtu)
            run(["ip", "-n", ns, "addr", "add", addr, "dev", dev])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
        ping(self.ns_a, self.ip_b, count=1, timeout=10)
        return self

    def _teardown(self) -> None:
        """Kill everything left in the namespaces and delete them."""
        existing = set(netns_list())
        for ns in (self.ns_a, self.ns_b):
            if ns in existing:
                delete_netns(ns)

    def ns(self, side: str) -> str:
        """Namespace name for side ``"a"`` or ``"b"``."""
        return {"a": self.ns_a, "b": self.ns_b}[side]

    def addr(self, ns: str, address: str, dev: str = "lo", *, add: bool = True) -> None:
        """Add (or delete) an address inside one of our namespaces."""
        run(["ip", "-n", ns, "addr", "add" if add else "del", address, "dev", dev], check=add)

    def ip_stat(self, ns: str, *counters: str) -> dict[str, int]:
        """Kernel SNMP counters (``IpFragCreates``, ``UdpRcvbufErrors``...) inside ``ns``.

        Read from ``/proc/net/snmp`` as seen from inside the namespace; unlike
        ``nstat`` this leaves no history file behind for other users to trip on.
        """
        text = run(ns_cmd(ns, "cat", "/proc/net/snmp"), timeout=10).stdout
        return {k: v for k, v in parse_snmp(text).items() if not counters or k in counters}


def parse_snmp(text: str) -> dict[str, int]:
    """``/proc/net/snmp`` (header line, value line per protocol) as ``{"IpFragCreates": n}``."""
    values: dict[str, int] = {}
    lines = text.splitlines()
    for header, data in zip(lines[::2], lines[1::2], strict=False):
        proto, _, names = header.partition(":")
        _, _, numbers = data.partition(":")
        for name, number in zip(names.split(), numbers.split(), strict=False):
            values[proto + name] = int(number)
    return values
