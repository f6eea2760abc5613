"""LinuxHostNetwork turns OS failures into sentences a user can act on (no root needed).

The system calls are replaced (``fcntl.ioctl``, ``os.open``, a fake IPRoute),
so these run anywhere; tests/system/test_hostnet_linux.py covers the real kernel.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import NetlinkError

from common.hostnet.base import HostNetworkError, explain_errno
from common.hostnet.linux import TUNSETIFF, LinuxHostNetwork


class FakeIPRoute:
    """Stands in for pyroute2's IPRoute: one interface, and a chosen netlink error."""

    def __init__(self, error: int | None = None) -> None:
        self.error = error
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.closed = False

    def link_lookup(self, *, ifname: str) -> list[int]:
        return [7] if ifname in ("outpost0", "eth0") else []

    def _maybe_fail(self, kind: str, command: str, kwargs: dict[str, Any]) -> list[Any]:
        self.requests.append((kind, command, kwargs))
        if self.error is not None:
            raise NetlinkError(self.error, os.strerror(self.error))
        return []

    def link(self, command: str, **kwargs: Any) -> list[Any]:
        return self._maybe_fail("link", command, kwargs)

    def addr(self, command: str, **kwargs: Any) -> list[Any]:
        return self._maybe_fail("addr", command, kwargs)

    def route(self, command: str, **kwargs: Any) -> list[Any]:
        return self._maybe_fail("route", command, kwargs)

    def get_links(self, index: int) -> list[dict[str, Any]]:
        return [{"IFLA_IFNAME": "outpost0", "IFLA_MTU": 1400}]

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def tun_path(tmp_path: Path) -> str:
    """A stand-in for /dev/net/tun that os.open accepts."""
    path = tmp_path / "tun"
    path.write_bytes(b"")
    return str(path)


def _ioctl_failing_with(code: int) -> Any:
    def ioctl(fd: int, request: int, arg: bytes) -> bytes:
        assert request == TUNSETIFF
        assert arg[16:18] == (0x1001).to_bytes(2, "little")  # IFF_TUN | IFF_NO_PI
        raise OSError(code, os.strerror(code))

    return ioctl


def test_eperm_on_tunsetiff_explains_cap_net_admin(
    monkeypatch: pytest.MonkeyPatch, tun_path: str
) -> None:
    monkeypatch.setattr(fcntl, "ioctl", _ioctl_failing_with(errno.EPERM))
    net = LinuxHostNetwork(iproute=FakeIPRoute(), tun_path=tun_path)
    with pytest.raises(HostNetworkError) as caught:
        net.create_tun("outpost0", mtu=1400)
    assert str(caught.value).startswith(
        "creating TUN device outpost0 needs CAP_NET_ADMIN: run as root or grant the "
        "capability (setcap cap_net_admin+ep"
    )
    assert caught.value.errno == errno.EPERM


def test_missing_dev_net_tun_says_so(tmp_path: Path) -> None:
    net = LinuxHostNetwork(iproute=FakeIPRoute(), tun_path=str(tmp_path / "absent"))
    with pytest.raises(HostNetworkError, match=r"needs .*absent, which does not exist: load"):
        net.create_tun("outpost0", mtu=1400)


def test_unreadable_dev_net_tun_explains_permission(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: str, flags: int) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(os, "open", refuse)
    net = LinuxHostNetwork(iproute=FakeIPRoute())
    with pytest.raises(HostNetworkError, match="no permission to open /dev/net/tun: run as root"):
        net.create_tun("outpost0", mtu=1400)


def test_name_taken_by_another_kind_of_device(
    monkeypatch: pytest.MonkeyPatch, tun_path: str
) -> None:
    monkeypatch.setattr(fcntl, "ioctl", _ioctl_failing_with(errno.EINVAL))
    net = LinuxHostNetwork(iproute=FakeIPRoute(), tun_path=tun_path)
    with pytest.raises(HostNetworkError, match="eth0 already exists and is not a TUN device"):
        net.create_tun("eth0", mtu=1400)


def test_descriptor_is_closed_when_setup_fails_after_the_ioctl(
    monkeypatch: pytest.MonkeyPatch, tun_path: str
) -> None:
    """The device must not survive a failed MTU: closing the descriptor removes it."""
    closed: list[int] = []
    real_close = os.close

    def close(fd: int) -> None:
        closed.append(fd)
        real_close(fd)

    monkeypatch.setattr(fcntl, "ioctl", lambda fd, request, arg: b"outpost0".ljust(40, b"\0"))
    monkeypatch.setattr(os, "close", close)
    net = LinuxHostNetwork(iproute=FakeIPRoute(error=errno.EINVAL), tun_path=tun_path)
    with pytest.raises(HostNetworkError, match="setting the MTU of outpost0 to 40 failed: the dev"):
        net.create_tun("outpost0", mtu=40)
    assert len(closed) == 1


def test_bad_interface_names_are_refused_before_any_system_call() -> None:
    net = LinuxHostNetwork(iproute=FakeIPRoute(), tun_path="/nonexistent")
    for name in ("", "a" * 16, "has space", "a/b"):
        with pytest.raises(HostNetworkError, match="interface name"):
            net.create_tun(name, mtu=1400)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (errno.EPERM, "adding route 10.0.0.0/8 dev outpost0 needs CAP_NET_ADMIN: run as root"),
        (errno.EEXIST, "adding route 10.0.0.0/8 dev outpost0 failed: it already exists"),
        (errno.ENODEV, "adding route 10.0.0.0/8 dev outpost0 failed: there is no such network"),
        (errno.EOPNOTSUPP, "adding route 10.0.0.0/8 dev outpost0 failed: Operation not supp"),
    ],
)
def test_netlink_errors_name_the_route(code: int, expected: str) -> None:
    net = LinuxHostNetwork(iproute=FakeIPRoute(error=code))
    with pytest.raises(HostNetworkError, match=re.escape(expected)) as caught:
        net.add_route(ip_network("10.0.0.0/8"), ifname="outpost0")
    assert caught.value.errno == code
    assert isinstance(caught.value.__cause__, NetlinkError)


def test_route_request_carries_every_field_and_delete_mirrors_it() -> None:
    ipr = FakeIPRoute()
    net = LinuxHostNetwork(iproute=ipr)
    route = net.add_route(
        ip_network("2001:db8::/32"),
        ifname="eth0",
        gateway=ip_address("fe80::1"),
        table=100,
        metric=5,
    )
    net.remove_route(route)
    expected = {
        "dst": "2001:db8::/32",
        "family": 10,
        "oif": 7,
        "gateway": "fe80::1",
        "table": 100,
        "priority": 5,
    }
    assert ipr.requests == [("route", "add", expected), ("route", "del", expected)]


def test_gateway_off_link_gets_its_own_words() -> None:
    net = LinuxHostNetwork(iproute=FakeIPRoute(error=errno.ENETUNREACH))
    with pytest.raises(HostNetworkError, match=r"the gateway 10\.9\.9\.9 is not on a connected"):
        net.add_route(ip_network("10.0.0.0/8"), gateway=ip_address("10.9.9.9"))


def test_unknown_interface_and_close() -> None:
    ipr = FakeIPRoute()
    with LinuxHostNetwork(iproute=ipr) as net:
        with pytest.raises(HostNetworkError, match="no network interface named wlan9"):
            net.link_mtu("wlan9")
        assert net.link_mtu("outpost0") == 1400
    assert ipr.closed


def test_forwarding_without_permission(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("builtins.open", refuse)
    net = LinuxHostNetwork(iproute=FakeIPRoute())
    with pytest.raises(HostNetworkError, match=r"IPv4 forwarding on .* needs root in this network"):
        net.set_forwarding(4, True)


def test_explain_errno_prefers_the_callers_words() -> None:
    error = explain_errno("doing x", errno.EINVAL, {errno.EINVAL: "x must be even"})
    assert str(error) == "doing x failed: x must be even"
    assert error.errno == errno.EINVAL
