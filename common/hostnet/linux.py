"""Linux :class:`~common.hostnet.base.HostNetwork`: ``/dev/net/tun`` and rtnetlink.

TUN devices come from the character device (``Documentation/networking/tuntap.rst``):
open ``/dev/net/tun``, then ``TUNSETIFF`` with ``IFF_TUN | IFF_NO_PI`` names the
device and makes the descriptor carry bare IP packets. The device is not
persistent, so it disappears when the descriptor closes, even if the process
dies without cleaning up. Addresses, routes, MTU and link state go through
one pyroute2 ``IPRoute`` netlink socket, never through ``ip`` subprocesses,
so that errors come back as errno values we can turn into sentences.

Every failure becomes a :class:`HostNetworkError` whose message names the
operation and says what to do; the one a user meets first is the missing
CAP_NET_ADMIN capability.

The instance is meant for one thread (the control plane's); TUN reads and
writes on the returned devices may happen in any thread or worker.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from ipaddress import ip_address
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

from pyroute2 import IPRoute, NetlinkError

from common.hostnet.base import (
    GRANT_CAP_NET_ADMIN,
    MTU_REJECTED,
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

TUN_PATH: Final = "/dev/net/tun"
TUNSETIFF: Final = 0x400454CA  # _IOW('T', 202, int), linux/if_tun.h
IFF_TUN: Final = 0x0001
IFF_NO_PI: Final = 0x1000
IFF_VNET_HDR: Final = 0x4000  # every read/write starts with a struct virtio_net_hdr
TUNSETOFFLOAD: Final = 0x400454D0  # _IOW('T', 208, unsigned int)
# TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6: we complete checksums and segment TCP ourselves
# (common.wire.offload); UDP segmentation offload is not enabled.
TUN_OFFLOADS: Final = 0x01 | 0x02 | 0x04
# struct ifreq: 16-byte name, then the union whose first member is the short
# flags; the whole struct is 40 bytes on 64-bit Linux and the kernel copies all of it.
_IFREQ: Final = struct.Struct("16sH22x")
# The largest IP packet; a TUN read with a smaller buffer silently truncates.
MAX_PACKET: Final = 65535

IFA_F_NODAD: Final = 0x02  # linux/if_addr.h
# socket.AF_INET / AF_INET6 on Linux; common/ may not import socket (STYLE.md).
_AF_INET: Final = 2
_AF_INET6: Final = 10

_FORWARDING_PATHS: Final = {
    4: "/proc/sys/net/ipv4/ip_forward",
    6: "/proc/sys/net/ipv6/conf/all/forwarding",
}

_T = TypeVar("_T")

_MTU_REASONS: Final = {errno.EINVAL: MTU_REJECTED}


def _no_link_local(ifname: str) -> None:
    """No IPv6 link-local address on the TUN (addr_gen_mode 1, "none").

    A layer-3 tunnel has no neighbours to discover: with a link-local address
    the kernel would send router solicitations and MLD reports into the
    tunnel, which no peer routes. Best effort: IPv6 may be disabled.
    """
    path = f"/proc/sys/net/ipv6/conf/{ifname}/addr_gen_mode"
    with contextlib.suppress(OSError), open(path, "w") as setting:
        setting.write("1")


class LinuxTunDevice:
    """An open TUN device: a blocking descriptor carrying one IP packet per read or write."""

    def __init__(self, fd: int, name: str, net: LinuxHostNetwork, *, offload: bool = False) -> None:
        self._fd = fd
        self._name = name
        self._net = net
        self.offload = offload

    @property
    def name(self) -> str:
        return self._name

    @property
    def mtu(self) -> int:
        """Asked from the kernel each time, so an MTU set later by anyone is seen."""
        return self._net.link_mtu(self._name)

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError(f"TUN device {self._name} is closed")
        return self._fd

    def read(self) -> bytes:
        return os.read(self.fileno(), MAX_PACKET)

    def write(self, packet: bytes) -> int:
        return os.write(self.fileno(), packet)

    def close(self) -> None:
        """Close the descriptor; the kernel then removes the device, its addresses and routes.

        Closing does not wake a thread blocked in :meth:`read` on Linux: a
        worker that must stop should poll with a timeout or a wake-up pipe.
        """
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> LinuxTunDevice:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LinuxTunDevice(name={self._name!r}, fd={self._fd})"


CAP_NET_ADMIN: Final = 12  # linux/capability.h


def has_cap_net_admin(status_path: str = "/proc/self/status") -> bool:
    """Whether this process holds CAP_NET_ADMIN in its effective set.

    Asked before any work that needs it (a client's handshake), so the person
    hears "needs root or CAP_NET_ADMIN" at once rather than after a tunnel is
    negotiated for nothing. Unknown (no /proc): assume yes and let the real
    call fail with its own clear error.
    """
    try:
        with open(status_path, encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return True


class LinuxHostNetwork:
    """The host network of the current network namespace, through rtnetlink.

    Args:
        iproute: a pyroute2 ``IPRoute`` (or a stand-in for tests); by default
            one is opened here and closed by :meth:`close`.
        tun_path: the TUN character device.
    """

    def __init__(self, *, iproute: Any = None, tun_path: str = TUN_PATH) -> None:
        # pyroute2 (0.9) runs its synchronous API on an asyncio loop of its
        # own, which fails inside a running loop ("This event loop is already
        # running"): the client and the concentrator call us from theirs. So
        # every netlink request runs on one private thread, which also keeps
        # the IPRoute object on the thread that made it.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")
        self._ipr: Any = self._thread.submit(IPRoute).result() if iproute is None else iproute
        self._tun_path = tun_path

    # -- TUN ---------------------------------------------------------------

    def create_tun(self, name: str, *, mtu: int, offload: bool = False) -> LinuxTunDevice:
        """Create the TUN device ``name``, set its MTU and bring it up.

        With ``offload`` the device carries a virtio-net header on every read
        and write and exchanges TCP super packets (``common.wire.offload``);
        ``device.offload`` says whether the kernel accepted it.

        ``name`` may hold a ``%d`` pattern ("outpost%d"); the device's
        ``name`` is then the one the kernel chose.

        Raises:
            HostNetworkError: no CAP_NET_ADMIN, no ``/dev/net/tun``, the name is
                taken by a device that is not a TUN, or the MTU is refused.
        """
        check_ifname(name)
        what = f"creating TUN device {name}"
        try:
            fd = os.open(self._tun_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise HostNetworkError(
                f"{what} needs {self._tun_path}, which does not exist: load the tun module "
                "(modprobe tun) or, in a container, pass the device in (--device /dev/net/tun)",
                errno=errno.ENOENT,
            ) from exc
        except PermissionError as exc:
            raise HostNetworkError(
                f"{what}: no permission to open {self._tun_path}: {GRANT_CAP_NET_ADMIN}",
                errno=exc.errno,
            ) from exc
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
        try:
            ifreq = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), flags))
            if offload:
                fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_OFFLOADS)
        except OSError as exc:
            os.close(fd)
            code = exc.errno or errno.EIO
            if code == errno.EINVAL:
                raise HostNetworkError(
                    f"{what} failed: an interface named {name} already exists and is not "
                    "a TUN device of this kind; choose another name",
                    errno=code,
                ) from exc
            raise explain_errno(what, code) from exc
        actual = ifreq[:16].split(b"\0", 1)[0].decode()
        device = LinuxTunDevice(fd, actual, self, offload=offload)
        try:
            index = self._index(actual)
            self._netlink(
                f"setting the MTU of {actual} to {mtu}",
                lambda: self._ipr.link("set", index=index, mtu=mtu),
                _MTU_REASONS,
            )
            _no_link_local(actual)
            self._netlink(
                f"bringing {actual} up", lambda: self._ipr.link("set", index=index, state="up")
            )
        except BaseException:
            device.close()
            raise
        return device

    # -- addresses and links -------------------------------------------------

    def add_address(self, ifname: str, interface: IpInterface) -> AddressAssignment:
        """Add the address; IPv6 skips duplicate address detection.

        The concentrator leased the inner address, so it is unique by
        construction, and DAD would keep it unusable for a second or more.
        """
        index = self._index(ifname)
        extra = {"flags": IFA_F_NODAD} if interface.version == 6 else {}
        self._netlink(
            f"adding address {interface} to {ifname}",
            lambda: self._ipr.addr(
                "add",
                index=index,
                address=str(interface.ip),
                prefixlen=interface.network.prefixlen,
                **extra,
            ),
        )
        return AddressAssignment(ifname, interface)

    def remove_address(self, assignment: AddressAssignment) -> None:
        interface = assignment.interface
        index = self._index(assignment.ifname)
        self._netlink(
            f"removing address {interface} from {assignment.ifname}",
            lambda: self._ipr.addr(
                "del", index=index, address=str(interface.ip), prefixlen=interface.network.prefixlen
            ),
        )

    def set_mtu(self, ifname: str, mtu: int) -> int:
        previous = self.link_mtu(ifname)
        index = self._index(ifname)
        self._netlink(
            f"setting the MTU of {ifname} to {mtu}",
            lambda: self._ipr.link("set", index=index, mtu=mtu),
            _MTU_REASONS,
        )
        return previous

    def link_mtu(self, ifname: str) -> int:
        return self._link_info(self._index(ifname))[1]

    # -- routes --------------------------------------------------------------

    def add_route(
        self,
        network: IpNetwork,
        *,
        ifname: str | None = None,
        gateway: IpAddress | None = None,
        table: int | None = None,
        metric: int | None = None,
    ) -> Route:
        check_route_target(network, ifname, gateway)
        route = Route(network, ifname, gateway, table, metric)
        self._route("add", route)
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
        self._route("del", Route(network, ifname, gateway, table, metric))

    def remove_route(self, route: Route) -> None:
        self._route("del", route)

    def route_to(self, destination: IpAddress) -> RouteLookup:
        """The kernel's own lookup (``ip route get``), so policy rules and PMTU are honoured.

        Raises:
            HostNetworkError: no route covers ``destination``.
        """
        replies = self._netlink(
            f"looking up the route to {destination}",
            lambda: self._ipr.route("get", dst=str(destination)),
        )
        reply = next(iter(replies))
        ifname, mtu = self._link_info(int(reply.get("RTA_OIF")))
        metrics = reply.get("RTA_METRICS")
        if metrics is not None:
            route_mtu = metrics.get("RTAX_MTU")
            if route_mtu:  # a route MTU or a learned PMTU exception lowers the link's
                mtu = min(mtu, int(route_mtu))
        gateway = reply.get("RTA_GATEWAY")
        source = reply.get("RTA_PREFSRC")
        return RouteLookup(
            destination=destination,
            ifname=ifname,
            mtu=mtu,
            gateway=ip_address(gateway) if gateway else None,
            source=ip_address(source) if source else None,
        )

    # -- forwarding ------------------------------------------------------------

    def set_forwarding(self, version: IpVersion, enabled: bool) -> bool:
        """Write the namespace's forwarding sysctl; returns whether it was on before."""
        path = _FORWARDING_PATHS[version]
        what = f"switching IPv{version} forwarding {'on' if enabled else 'off'} ({path})"
        try:
            with open(path) as current:
                previous = current.read().strip() != "0"
            with open(path, "w") as target:
                target.write("1\n" if enabled else "0\n")
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES, errno.EROFS):
                raise HostNetworkError(
                    f"{what} needs root in this network namespace", errno=exc.errno
                ) from exc
            raise explain_errno(what, exc.errno or errno.EIO) from exc
        return previous

    # -- lifetime --------------------------------------------------------------

    def close(self) -> None:
        """Close the netlink socket; the changes made stay in place."""
        try:
            self._thread.submit(self._ipr.close).result()
        finally:
            self._thread.shutdown(wait=True)

    def __enter__(self) -> LinuxHostNetwork:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- helpers ---------------------------------------------------------------

    def _index(self, ifname: str) -> int:
        indexes = self._netlink(
            f"looking up interface {ifname}", lambda: self._ipr.link_lookup(ifname=ifname)
        )
        if not indexes:
            raise HostNetworkError(
                f"there is no network interface named {ifname}", errno=errno.ENODEV
            )
        return int(indexes[0])

    def _link_info(self, index: int) -> tuple[str, int]:
        """Name and MTU of the interface with this index."""
        links = self._netlink(f"reading interface {index}", lambda: self._ipr.get_links(index))
        return str(links[0].get("IFLA_IFNAME")), int(links[0].get("IFLA_MTU"))

    def _route(self, command: str, route: Route) -> None:
        args: dict[str, Any] = {
            "dst": str(route.network),
            "family": _AF_INET6 if route.network.version == 6 else _AF_INET,
        }
        if route.ifname is not None:
            args["oif"] = self._index(route.ifname)
        if route.gateway is not None:
            args["gateway"] = str(route.gateway)
        if route.table is not None:
            args["table"] = route.table
        if route.metric is not None:
            args["priority"] = route.metric
        verb = "adding" if command == "add" else "deleting"
        description = describe_route(
            route.network, route.ifname, route.gateway, route.table, route.metric
        )
        reasons = (
            {errno.ENETUNREACH: f"the gateway {route.gateway} is not on a connected network"}
            if route.gateway is not None and command == "add"
            else None
        )
        self._netlink(
            f"{verb} route {description}", lambda: self._ipr.route(command, **args), reasons
        )

    def _netlink(
        self, what: str, call: Callable[[], _T], reasons: Mapping[int, str] | None = None
    ) -> _T:
        """Run one netlink request, turning its errno into a :class:`HostNetworkError`."""
        try:
            return self._thread.submit(call).result()
        except NetlinkError as exc:
            raise explain_errno(what, int(exc.code), reasons) from exc
        except OSError as exc:
            raise explain_errno(what, exc.errno or errno.EIO, reasons) from exc


if TYPE_CHECKING:  # LinuxHostNetwork and LinuxTunDevice satisfy the Protocols.

    def _conforms(net: LinuxHostNetwork) -> tuple[HostNetwork, TunDevice]:
        return net, net.create_tun("x", mtu=1500)
