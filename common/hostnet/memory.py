"""In-memory TUN device and recording host network, for tests (wireguard-go ``tuntest``).

Code that configures the network (the client after AddressAssigned, the
concentrator at start) and the data-plane workers are tested against these
doubles without root. They behave like the kernel where a caller could tell
the difference, and raise the same :class:`HostNetworkError` messages as
``linux.py``:

- creating a TUN adds an interface that is up; closing the device removes
  it, with its addresses and the routes through it;
- an address adds its connected route; route lookup is longest prefix, then
  lowest metric, in the main table;
- adding an existing route or address fails (EEXIST), deleting a missing one
  fails (ESRCH, EADDRNOTAVAIL), unknown interfaces fail (ENODEV);
- a TUN queues at most ``queue_limit`` unread packets and drops (and counts)
  the rest, as the kernel drops beyond ``txqueuelen``.

Every public call is recorded in ``calls``, in order, for tests that check
what was configured and in which order (including the undo).
"""

from __future__ import annotations

import errno
import os
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv6Interface, ip_interface
from types import TracebackType
from typing import TYPE_CHECKING, Final

from common.hostnet.base import (
    MAIN_TABLE,
    MTU_REJECTED,
    TUN_MAX_MTU,
    TUN_MIN_MTU,
    AddressAssignment,
    HostNetwork,
    HostNetworkError,
    IpAddress,
    IpInterface,
    IpNetwork,
    IpVersion,
    Route,
    RouteLookup,
    TunDevice,
    check_ifname,
    check_route_target,
    describe_route,
    explain_errno,
)

LOOPBACK_MTU: Final = 65536
DEFAULT_QUEUE_LIMIT: Final = 500  # the kernel's default txqueuelen for a TUN device


class MemoryTunDevice:
    """A TUN device whose kernel side is the test.

    ``inject`` plays the kernel routing a packet into the device; the program
    under test gets it from ``read``. What the program writes lands in
    ``written``. ``fileno`` is the read end of a pipe holding one byte per
    queued packet, so ``select``/``poll`` on it work as on a real TUN.
    ``inject`` and ``read`` may run in different threads.
    """

    def __init__(
        self,
        name: str,
        mtu: int,
        *,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
        on_close: Callable[[MemoryTunDevice], None] | None = None,
    ) -> None:
        self.offload = False
        self._name = name
        self._mtu = mtu
        self._queue: deque[bytes] = deque()
        self._queue_limit = queue_limit
        self._lock = threading.Lock()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)  # inject never blocks, even past the pipe's size
        self._on_close = on_close
        self.closed = False
        self.written: list[bytes] = []
        """Every packet the program wrote, oldest first; tests may clear it."""
        self.dropped = 0
        """Injected packets dropped because ``queue_limit`` unread packets were waiting."""

    @property
    def name(self) -> str:
        return self._name

    @property
    def mtu(self) -> int:
        return self._mtu

    def fileno(self) -> int:
        if self.closed:
            raise ValueError(f"TUN device {self._name} is closed")
        return self._read_fd

    def inject(self, packet: bytes) -> bool:
        """The kernel sends ``packet`` into the device; ``False`` when the queue was full."""
        with self._lock:
            if self.closed:
                raise ValueError(f"TUN device {self._name} is closed")
            if len(self._queue) >= self._queue_limit:
                self.dropped += 1
                return False
            try:
                os.write(self._write_fd, b"\x00")
            except BlockingIOError:  # the pipe is full: as good as a full queue
                self.dropped += 1
                return False
            self._queue.append(bytes(packet))
        return True

    def pending(self) -> int:
        """How many injected packets wait to be read."""
        return len(self._queue)

    def read(self) -> bytes:
        """Block until a packet is injected, like ``os.read`` on a blocking TUN.

        Raises:
            OSError: EBADF once the device is closed (also wakes a blocked reader).
        """
        if self.closed or not os.read(self._read_fd, 1):
            raise OSError(errno.EBADF, f"TUN device {self._name} is closed")
        with self._lock:
            if not self._queue:  # closed between the wake-up and here
                raise OSError(errno.EBADF, f"TUN device {self._name} is closed")
            return self._queue.popleft()

    def write(self, packet: bytes) -> int:
        if self.closed:
            raise OSError(errno.EBADF, f"TUN device {self._name} is closed")
        self.written.append(bytes(packet))
        return len(packet)

    def close(self) -> None:
        """Close the device; a thread blocked in :meth:`read` wakes up with EBADF.

        The write end of the pipe closes first, so a blocked reader sees end of
        file rather than a descriptor number that might be reused.
        """
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self._queue.clear()
            os.close(self._write_fd)
        os.close(self._read_fd)
        if self._on_close is not None:
            self._on_close(self)

    def _set_mtu(self, mtu: int) -> None:
        self._mtu = mtu

    def __repr__(self) -> str:
        return f"MemoryTunDevice(name={self._name!r}, mtu={self._mtu}, closed={self.closed})"


@dataclass(slots=True)
class MemoryLink:
    """An interface of the in-memory host."""

    name: str
    mtu: int
    up: bool = True
    addresses: list[IpInterface] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Call:
    """One recorded call: the method name and its arguments by name."""

    method: str
    args: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _RouteEntry:
    route: Route  # as added, so that remove_route(handle) finds it
    egress: str  # the interface it leaves by (resolved from the gateway if not given)
    metric: int  # the effective metric (kernel default when none was given)


def default_metric(version: IpVersion) -> int:
    """The kernel's metric for a route added without one (IPv4 0, IPv6 1024)."""
    return 0 if version == 4 else 1024


class MemoryHostNetwork:
    """A host network that lives in dictionaries and records every call.

    Starts with a loopback interface ``lo``; ``add_link`` adds others (an
    ``eth0`` towards the internet, say) before the code under test runs.
    ``fail_next`` makes the next call of a method raise, to test a caller's
    error handling and undo.
    """

    def __init__(self) -> None:
        self.links: dict[str, MemoryLink] = {}
        self.tuns: dict[str, MemoryTunDevice] = {}
        self.forwarding: dict[int, bool] = {4: False, 6: False}
        self.calls: list[Call] = []
        self.closed = False
        self._routes: list[_RouteEntry] = []
        self._failures: dict[str, HostNetworkError] = {}
        self.add_link("lo", mtu=LOOPBACK_MTU)
        self.links["lo"].addresses += [IPv4Interface("127.0.0.1/8"), IPv6Interface("::1/128")]

    # -- test set-up and inspection (not recorded) -----------------------------

    def add_link(self, name: str, *, mtu: int = 1500, addresses: tuple[str, ...] = ()) -> None:
        """Give the host an interface it already has, such as ``eth0``."""
        check_ifname(name)
        self.links[name] = MemoryLink(name, mtu, addresses=[ip_interface(a) for a in addresses])

    def fail_next(self, method: str, error: HostNetworkError) -> None:
        """Make the next call of ``method`` raise ``error`` (the call is still recorded)."""
        self._failures[method] = error

    def routes(self, table: int = MAIN_TABLE) -> list[Route]:
        """The routes added to ``table`` and still present, in the order they were added."""
        return [e.route for e in self._routes if (e.route.table or MAIN_TABLE) == table]

    def addresses(self, ifname: str) -> list[IpInterface]:
        """The addresses on ``ifname`` (a copy)."""
        return list(self._link(ifname).addresses)

    # -- HostNetwork -----------------------------------------------------------

    def create_tun(self, name: str, *, mtu: int, offload: bool = False) -> MemoryTunDevice:
        if offload:
            raise HostNetworkError("the in-memory TUN device has no virtio-net offloads")
        self._record("create_tun", name=name, mtu=mtu)
        check_ifname(name)
        what = f"creating TUN device {name}"
        if "%d" in name:  # the kernel picks the first free number
            numbered = (name.replace("%d", str(n)) for n in range(1000))
            name = next(n for n in numbered if n not in self.links)
        if name in self.tuns:
            raise explain_errno(what, errno.EBUSY)
        if name in self.links:
            raise HostNetworkError(
                f"{what} failed: an interface named {name} already exists and is not "
                "a TUN device of this kind; choose another name",
                errno=errno.EINVAL,
            )
        _check_mtu(f"setting the MTU of {name} to {mtu}", mtu)
        tun = MemoryTunDevice(name, mtu, on_close=self._tun_closed)
        self.links[name] = MemoryLink(name, mtu)
        self.tuns[name] = tun
        return tun

    def add_address(self, ifname: str, interface: IpInterface) -> AddressAssignment:
        self._record("add_address", ifname=ifname, interface=interface)
        link = self._link(ifname)
        if interface in link.addresses:
            raise explain_errno(f"adding address {interface} to {ifname}", errno.EEXIST)
        link.addresses.append(interface)
        return AddressAssignment(ifname, interface)

    def remove_address(self, assignment: AddressAssignment) -> None:
        self._record("remove_address", assignment=assignment)
        link = self._link(assignment.ifname)
        if assignment.interface not in link.addresses:
            raise explain_errno(
                f"removing address {assignment.interface} from {assignment.ifname}",
                errno.EADDRNOTAVAIL,
            )
        link.addresses.remove(assignment.interface)

    def set_mtu(self, ifname: str, mtu: int) -> int:
        self._record("set_mtu", ifname=ifname, mtu=mtu)
        link = self._link(ifname)
        if ifname in self.tuns:
            _check_mtu(f"setting the MTU of {ifname} to {mtu}", mtu)
            self.tuns[ifname]._set_mtu(mtu)
        previous, link.mtu = link.mtu, mtu
        return previous

    def link_mtu(self, ifname: str) -> int:
        self._record("link_mtu", ifname=ifname)
        return self._link(ifname).mtu

    def add_route(
        self,
        network: IpNetwork,
        *,
        ifname: str | None = None,
        gateway: IpAddress | None = None,
        table: int | None = None,
        metric: int | None = None,
    ) -> Route:
        self._record(
            "add_route", network=network, ifname=ifname, gateway=gateway, table=table, metric=metric
        )
        check_route_target(network, ifname, gateway)
        route = Route(network, ifname, gateway, table, metric)
        what = f"adding route {describe_route(network, ifname, gateway, table, metric)}"
        if ifname is not None:
            self._link(ifname)
        egress = ifname
        if gateway is not None:
            on_link = self._connected_link(gateway, only=ifname)
            if on_link is None:
                raise explain_errno(
                    what,
                    errno.ENETUNREACH,
                    {errno.ENETUNREACH: f"the gateway {gateway} is not on a connected network"},
                )
            egress = on_link
        assert egress is not None  # check_route_target guarantees one of the two
        effective = default_metric(network.version) if metric is None else metric
        for entry in self._routes:
            if (entry.route.table or MAIN_TABLE) == (table or MAIN_TABLE) and (
                entry.route.network,
                entry.metric,
            ) == (network, effective):
                raise explain_errno(what, errno.EEXIST)
        self._routes.append(_RouteEntry(route, egress, effective))
        return route

    def delete_route(
        self,
        network: IpNetwork,
        *,
        ifname: str | None = None,
        gateway: IpAddress | None = None,
        table: int | None = None,
        metric: int | None = None,
    ) -> None:
        """Delete the first route that matches; fields left ``None`` match anything (kernel)."""
        self._record(
            "delete_route",
            network=network,
            ifname=ifname,
            gateway=gateway,
            table=table,
            metric=metric,
        )
        self._delete(Route(network, ifname, gateway, table, metric))

    def remove_route(self, route: Route) -> None:
        self._record("remove_route", route=route)
        self._delete(route)

    def route_to(self, destination: IpAddress) -> RouteLookup:
        self._record("route_to", destination=destination)
        for link in self.links.values():
            if any(a.ip == destination for a in link.addresses):  # local: the kernel uses lo
                return RouteLookup(destination, "lo", self.links["lo"].mtu, None, destination)
        candidates: list[tuple[int, int, str, IpAddress | None]] = []
        for entry in self._routes:
            if (
                entry.route.table or MAIN_TABLE
            ) == MAIN_TABLE and destination in entry.route.network:
                candidates.append(
                    (
                        entry.route.network.prefixlen,
                        -entry.metric,
                        entry.egress,
                        entry.route.gateway,
                    )
                )
        for link in self.links.values():
            for address in link.addresses:
                if destination in address.network:  # the connected route an address brings
                    connected = default_metric(4) if address.version == 4 else 256
                    candidates.append((address.network.prefixlen, -connected, link.name, None))
        if not candidates:
            raise explain_errno(f"looking up the route to {destination}", errno.ENETUNREACH)
        _, _, egress, gateway = max(candidates, key=lambda c: (c[0], c[1]))
        link = self.links[egress]
        source = next((a.ip for a in link.addresses if a.version == destination.version), None)
        return RouteLookup(destination, egress, link.mtu, gateway, source)

    def set_forwarding(self, version: IpVersion, enabled: bool) -> bool:
        self._record("set_forwarding", version=version, enabled=enabled)
        previous = self.forwarding[version]
        self.forwarding[version] = enabled
        return previous

    def close(self) -> None:
        self._record("close")
        self.closed = True

    def __enter__(self) -> MemoryHostNetwork:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -------------------------------------------------------------

    def _record(self, method: str, **args: object) -> None:
        if self.closed:
            raise RuntimeError(f"{method}() on a closed MemoryHostNetwork")
        self.calls.append(Call(method, args))
        failure = self._failures.pop(method, None)
        if failure is not None:
            raise failure

    def _link(self, ifname: str) -> MemoryLink:
        link = self.links.get(ifname)
        if link is None:
            raise HostNetworkError(
                f"there is no network interface named {ifname}", errno=errno.ENODEV
            )
        return link

    def _connected_link(self, address: IpAddress, *, only: str | None) -> str | None:
        for link in self.links.values():
            if only is not None and link.name != only:
                continue
            if any(address in a.network for a in link.addresses):
                return link.name
        return None

    def _delete(self, wanted: Route) -> None:
        what = "deleting route " + describe_route(
            wanted.network, wanted.ifname, wanted.gateway, wanted.table, wanted.metric
        )
        for entry in sorted(self._routes, key=lambda e: e.metric):
            route = entry.route
            if (
                route.network == wanted.network
                and (route.table or MAIN_TABLE) == (wanted.table or MAIN_TABLE)
                and (wanted.metric is None or wanted.metric == entry.metric)
                and (wanted.ifname is None or wanted.ifname == entry.egress)
                and (wanted.gateway is None or wanted.gateway == route.gateway)
            ):
                self._routes.remove(entry)
                return
        raise explain_errno(what, errno.ESRCH)

    def _tun_closed(self, tun: MemoryTunDevice) -> None:
        """The kernel removes a closed TUN's interface, its addresses and its routes."""
        if self.tuns.get(tun.name) is tun:
            del self.tuns[tun.name]
            del self.links[tun.name]
            self._routes = [e for e in self._routes if e.egress != tun.name]


def _check_mtu(what: str, mtu: int) -> None:
    if not TUN_MIN_MTU <= mtu <= TUN_MAX_MTU:
        raise explain_errno(
            what,
            errno.EINVAL,
            {errno.EINVAL: MTU_REJECTED},
        )


if TYPE_CHECKING:  # MemoryHostNetwork and MemoryTunDevice satisfy the Protocols.

    def _conforms(net: MemoryHostNetwork) -> tuple[HostNetwork, TunDevice]:
        return net, net.create_tun("x", mtu=1500)
