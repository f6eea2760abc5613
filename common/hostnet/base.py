"""The one small interface through which Outpost changes the host's network.

Both the client and the concentrator need the same few OS side effects: a TUN
device to read and write inner packets, addresses and routes that steer
traffic into it, its MTU, and IP forwarding on the concentrator. They go
through the two Protocols here, with a real implementation (``linux.py``) and
an in-memory one (``memory.py``) for tests, as wireguard-go splits ``tun/``
from ``tun/tuntest/`` and strongSwan hides the kernel behind ``kernel_net.h``
(STYLE.md principle 3). Nothing here knows about IKE.

Undo is the caller's job, made easy: every call that changes the host returns
what is needed to put it back, so a caller registers the undo right after the
change, typically on a :class:`contextlib.ExitStack`::

    with contextlib.ExitStack() as undo:
        tun = undo.enter_context(contextlib.closing(net.create_tun("outpost0", mtu=1400)))
        undo.callback(net.remove_address, net.add_address(tun.name, inner))
        undo.callback(net.remove_route, net.add_route(office, ifname=tun.name))
        previous = net.set_mtu(tun.name, 1380)
        undo.callback(net.set_mtu, tun.name, previous)
        ...  # on exit, in reverse order: MTU, route, address, device

Closing a TUN device removes it, and with it the kernel's addresses and routes
on it, but explicit undo keeps the order clear and also covers routes through
other interfaces.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import Final, Literal, Protocol, TypeAlias

IpAddress: TypeAlias = IPv4Address | IPv6Address
IpInterface: TypeAlias = IPv4Interface | IPv6Interface
IpNetwork: TypeAlias = IPv4Network | IPv6Network
IpVersion: TypeAlias = Literal[4, 6]

IFNAMSIZ: Final = 16  # Linux interface names: at most 15 bytes plus the NUL (if.h)
MAIN_TABLE: Final = 254  # RT_TABLE_MAIN (rtnetlink.h): where routes go when no table is named

TUN_MIN_MTU: Final = 68  # the kernel's limits for a TUN device (drivers/net/tun.c)
TUN_MAX_MTU: Final = 65535
MTU_REJECTED: Final = (
    f"the device does not accept that MTU (a TUN device takes {TUN_MIN_MTU} to {TUN_MAX_MTU}; "
    "IPv6 also turns itself off on a link below 1280)"
)

GRANT_CAP_NET_ADMIN: Final = (
    "run as root or grant the capability (setcap cap_net_admin+ep on the Python interpreter)"
)


class HostNetworkError(Exception):
    """An OS network operation failed; the message says what to do about it.

    Raised instead of ``OSError`` or pyroute2's ``NetlinkError`` so that the
    user interfaces can show the message as it is ("creating TUN device
    outpost0 needs CAP_NET_ADMIN: ..."), without knowing which system call
    or library failed. ``errno`` keeps the cause for callers that branch on it.
    """

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass(frozen=True, slots=True)
class AddressAssignment:
    """An address put on an interface: the handle to remove it again."""

    ifname: str
    interface: IpInterface


@dataclass(frozen=True, slots=True)
class Route:
    """A route as added, and the handle to delete it again.

    ``table`` and ``metric`` are ``None`` when the kernel's default was used
    (the main table; metric 0 for IPv4, 1024 for IPv6), so deleting matches
    what adding created.
    """

    network: IpNetwork
    ifname: str | None = None
    gateway: IpAddress | None = None
    table: int | None = None
    metric: int | None = None


@dataclass(frozen=True, slots=True)
class RouteLookup:
    """Where the kernel would send a packet to ``destination``, and how big it may be.

    ``mtu`` is the path MTU as the host knows it: the egress interface's MTU,
    lowered by an MTU on the route itself or by a learned PMTU exception.
    Outer ESP-in-UDP packets must fit it (``common.esp.suites.tunnel_mtu``).
    """

    destination: IpAddress
    ifname: str
    mtu: int
    gateway: IpAddress | None = None
    source: IpAddress | None = None


class TunDevice(Protocol):
    """A layer-3 TUN device without packet information (IFF_TUN | IFF_NO_PI).

    Each ``read`` returns one whole IP packet the kernel routed into the
    device; each ``write`` hands one IP packet to the kernel as if it had
    arrived on the device. The descriptor is blocking, and ``fileno`` lets a
    data-plane worker wait on it with ``select``/``poll`` alongside its UDP
    socket (wireguard-go ``tun.Device``).

    When ``offload`` is true every read and write starts with a virtio-net
    header and may carry a TCP super packet (``common.wire.offload``).
    """

    offload: bool

    @property
    def name(self) -> str:
        """The interface name the kernel gave the device."""
        ...

    @property
    def mtu(self) -> int:
        """The device's current MTU."""
        ...

    def fileno(self) -> int:
        """The file descriptor to wait on for readability."""
        ...

    def read(self) -> bytes:
        """Block until the kernel sends a packet into the device, and return it."""
        ...

    def write(self, packet: bytes) -> int:
        """Give one IP packet to the kernel; returns the number of bytes written."""
        ...

    def close(self) -> None:
        """Close the descriptor; the (non-persistent) device disappears with it."""
        ...


class HostNetwork(Protocol):
    """Configure the host's interfaces, addresses, routes and forwarding.

    Every change returns its undo handle or the previous value (see the
    module docstring). Every failure raises :class:`HostNetworkError`.
    """

    def create_tun(self, name: str, *, mtu: int, offload: bool = False) -> TunDevice:
        """Create a TUN device (IFF_TUN | IFF_NO_PI), set its MTU and bring it up.

        ``offload`` adds IFF_VNET_HDR and TCP segmentation/checksum offloads.
        """
        ...

    def add_address(self, ifname: str, interface: IpInterface) -> AddressAssignment:
        """Put ``interface`` (address and prefix) on ``ifname``."""
        ...

    def remove_address(self, assignment: AddressAssignment) -> None:
        """Take an address off again, as returned by :meth:`add_address`."""
        ...

    def set_mtu(self, ifname: str, mtu: int) -> int:
        """Set the MTU of ``ifname``; returns the previous MTU, to restore it later."""
        ...

    def link_mtu(self, ifname: str) -> int:
        """The current MTU of ``ifname``."""
        ...

    def add_route(
        self,
        network: IpNetwork,
        *,
        ifname: str | None = None,
        gateway: IpAddress | None = None,
        table: int | None = None,
        metric: int | None = None,
    ) -> Route:
        """Add a route; needs ``ifname``, ``gateway`` or both. Returns the undo handle."""
        ...

    def delete_route(
        self,
        network: IpNetwork,
        *,
        ifname: str | None = None,
        gateway: IpAddress | None = None,
        table: int | None = None,
        metric: int | None = None,
    ) -> None:
        """Delete a route, given the same arguments it was added with."""
        ...

    def remove_route(self, route: Route) -> None:
        """Delete a route by the handle :meth:`add_route` returned."""
        ...

    def route_to(self, destination: IpAddress) -> RouteLookup:
        """Ask the kernel's route lookup where a packet to ``destination`` goes."""
        ...

    def set_forwarding(self, version: IpVersion, enabled: bool) -> bool:
        """Switch IPv4 or IPv6 forwarding (all interfaces); returns the previous state."""
        ...

    def close(self) -> None:
        """Release the adapter's own resources (not the changes it made)."""
        ...


def check_ifname(name: str) -> None:
    """Refuse names the kernel would reject, with a message instead of EINVAL.

    Raises:
        HostNetworkError: empty, too long, or containing '/', ':' or whitespace.
    """
    if not name or len(name.encode()) >= IFNAMSIZ:
        raise HostNetworkError(f"interface name {name!r} must be 1 to {IFNAMSIZ - 1} bytes long")
    if any(ch in name for ch in "/: \t\n") or name in (".", ".."):
        raise HostNetworkError(f"interface name {name!r} may not contain '/', ':' or whitespace")


def check_route_target(network: IpNetwork, ifname: str | None, gateway: IpAddress | None) -> None:
    """A route needs somewhere to go, in the network's own address family.

    Raises:
        HostNetworkError: neither ``ifname`` nor ``gateway``, or a gateway of the
            other IP version.
    """
    if ifname is None and gateway is None:
        raise HostNetworkError(f"route to {network} needs an interface or a gateway")
    if gateway is not None and gateway.version != network.version:
        raise HostNetworkError(
            f"route to {network} cannot go via {gateway}: not the same IP version"
        )


def explain_errno(
    what: str, code: int, reasons: Mapping[int, str] | None = None
) -> HostNetworkError:
    """Turn an errno from an ioctl or netlink call into a sentence a user can act on.

    Shared by the real and the in-memory implementation, so tests of callers
    see the same messages a user would.

    Args:
        what: the operation in words, such as "adding route 10.0.0.0/24 dev outpost0".
        code: the errno value.
        reasons: better words for some errno values in this operation's context.
    """
    if code in (errno.EPERM, errno.EACCES):
        return HostNetworkError(f"{what} needs CAP_NET_ADMIN: {GRANT_CAP_NET_ADMIN}", errno=code)
    general = {
        errno.EEXIST: "it already exists",
        errno.ESRCH: "there is no such route",
        errno.EADDRNOTAVAIL: "there is no such address on the interface",
        errno.ENODEV: "there is no such network interface",
        errno.ENETUNREACH: "the network is unreachable (no route covers it)",
        errno.EHOSTUNREACH: "the host is unreachable",
        errno.EBUSY: "the device is busy (another program, or this one, holds it open)",
        errno.EINVAL: "the kernel rejected a value as invalid",
    }
    reason = (reasons or {}).get(code) or general.get(code) or os.strerror(code)
    return HostNetworkError(f"{what} failed: {reason}", errno=code)


def describe_route(
    network: IpNetwork,
    ifname: str | None,
    gateway: IpAddress | None,
    table: int | None,
    metric: int | None,
) -> str:
    """The route in ``ip route`` words, for error messages a user can search for."""
    words = [str(network)]
    if gateway is not None:
        words += ["via", str(gateway)]
    if ifname is not None:
        words += ["dev", ifname]
    if table is not None:
        words += ["table", str(table)]
    if metric is not None:
        words += ["metric", str(metric)]
    return " ".join(words)
