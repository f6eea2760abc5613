"""The in-memory TUN and host network behave as the kernel does where callers can tell."""

from __future__ import annotations

import contextlib
import errno
import re
import select
import threading
from ipaddress import ip_address, ip_interface, ip_network

import pytest

from common.hostnet.base import (
    AddressAssignment,
    HostNetwork,
    HostNetworkError,
    Route,
    RouteLookup,
    TunDevice,
)
from common.hostnet.memory import Call, MemoryHostNetwork, MemoryTunDevice


@pytest.fixture
def net() -> MemoryHostNetwork:
    host = MemoryHostNetwork()
    host.add_link("eth0", mtu=1500, addresses=("192.0.2.2/24", "2001:db8::2/64"))
    return host


# -- the TUN device ------------------------------------------------------------


def test_tun_reads_injected_packets_in_order_and_records_writes(net: MemoryHostNetwork) -> None:
    tun = net.create_tun("outpost0", mtu=1400)
    assert tun.inject(b"\x45first")
    assert tun.inject(b"\x45second")
    assert tun.pending() == 2
    assert tun.read() == b"\x45first"
    assert tun.read() == b"\x45second"
    assert tun.write(b"\x45reply") == 6
    assert tun.written == [b"\x45reply"]


def test_tun_fileno_is_readable_exactly_while_packets_wait(net: MemoryHostNetwork) -> None:
    tun = net.create_tun("outpost0", mtu=1400)
    assert select.select([tun], [], [], 0)[0] == []
    tun.inject(b"packet")
    assert select.select([tun], [], [], 0)[0] == [tun]
    tun.read()
    assert select.select([tun], [], [], 0)[0] == []


def test_tun_read_blocks_until_another_thread_injects(net: MemoryHostNetwork) -> None:
    tun = net.create_tun("outpost0", mtu=1400)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(tun.read()))
    reader.start()
    reader.join(0.05)
    assert reader.is_alive()
    tun.inject(b"late")
    reader.join(5)
    assert got == [b"late"]


def test_close_wakes_a_blocked_reader_with_ebadf(net: MemoryHostNetwork) -> None:
    tun = net.create_tun("outpost0", mtu=1400)
    errors: list[OSError] = []

    def read() -> None:
        try:
            tun.read()
        except OSError as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(0.05)
    tun.close()
    reader.join(5)
    assert not reader.is_alive()
    assert [e.errno for e in errors] == [errno.EBADF]
    with pytest.raises(OSError, match="closed"):
        tun.write(b"x")
    tun.close()  # idempotent


def test_tun_queue_is_bounded_and_drops_are_counted() -> None:
    tun = MemoryTunDevice("t0", 1400, queue_limit=2)
    assert [tun.inject(b"p") for _ in range(3)] == [True, True, False]
    assert tun.dropped == 1
    tun.close()


# -- the host network ----------------------------------------------------------


def test_doubles_satisfy_the_protocols(net: MemoryHostNetwork) -> None:
    host: HostNetwork = net
    tun: TunDevice = host.create_tun("outpost0", mtu=1400)
    assert (tun.name, tun.mtu) == ("outpost0", 1400)


def test_client_style_configuration_and_undo(net: MemoryHostNetwork) -> None:
    """What the client does after AddressAssigned, then undoes in reverse order."""
    office = ip_network("10.99.0.0/24")
    with contextlib.ExitStack() as undo:
        tun = undo.enter_context(contextlib.closing(net.create_tun("outpost%d", mtu=1400)))
        assert tun.name == "outpost0"
        undo.callback(net.remove_address, net.add_address(tun.name, ip_interface("10.8.0.2/32")))
        undo.callback(net.remove_route, net.add_route(office, ifname=tun.name))
        previous = net.set_mtu(tun.name, 1380)
        undo.callback(net.set_mtu, tun.name, previous)
        assert net.route_to(ip_address("10.99.0.7")) == RouteLookup(
            ip_address("10.99.0.7"), "outpost0", 1380, None, ip_address("10.8.0.2")
        )
        assert net.routes() == [Route(office, ifname="outpost0")]
    assert net.routes() == []
    assert "outpost0" not in net.links
    assert [c.method for c in net.calls] == [
        "create_tun",
        "add_address",
        "add_route",
        "set_mtu",
        "route_to",
        "set_mtu",
        "remove_route",
        "remove_address",
    ]
    assert net.calls[0] == Call("create_tun", {"name": "outpost%d", "mtu": 1400})


def test_route_lookup_longest_prefix_then_lowest_metric(net: MemoryHostNetwork) -> None:
    tun = net.create_tun("outpost0", mtu=1400)
    net.add_address(tun.name, ip_interface("10.8.0.2/32"))
    net.add_route(ip_network("0.0.0.0/0"), gateway=ip_address("192.0.2.1"))
    net.add_route(ip_network("10.0.0.0/8"), ifname=tun.name, metric=100)
    net.add_route(ip_network("10.0.0.0/8"), gateway=ip_address("192.0.2.1"), metric=50)

    assert net.route_to(ip_address("10.1.2.3")).ifname == "eth0"  # metric 50 beats 100
    assert net.route_to(ip_address("10.1.2.3")).gateway == ip_address("192.0.2.1")
    assert net.route_to(ip_address("198.51.100.1")).mtu == 1500
    assert net.route_to(ip_address("192.0.2.77")).gateway is None  # connected /24
    assert net.route_to(ip_address("2001:db8::1")).source == ip_address("2001:db8::2")
    assert net.route_to(ip_address("10.8.0.2")).ifname == "lo"  # our own address


def test_route_in_other_table_is_not_used_for_lookup(net: MemoryHostNetwork) -> None:
    net.add_route(ip_network("10.0.0.0/8"), ifname="eth0", table=100)
    assert net.routes(100) == [Route(ip_network("10.0.0.0/8"), ifname="eth0", table=100)]
    with pytest.raises(HostNetworkError, match=r"looking up the route to 10\.1\.1\.1") as caught:
        net.route_to(ip_address("10.1.1.1"))
    assert caught.value.errno == errno.ENETUNREACH


def test_closing_the_tun_removes_its_routes_and_addresses(net: MemoryHostNetwork) -> None:
    tun = net.create_tun("outpost0", mtu=1400)
    net.add_address(tun.name, ip_interface("10.8.0.2/24"))
    net.add_route(ip_network("10.99.0.0/24"), ifname=tun.name)
    net.add_route(ip_network("10.98.0.0/24"), gateway=ip_address("10.8.0.1"))
    net.add_route(ip_network("198.51.100.0/24"), gateway=ip_address("192.0.2.1"))
    tun.close()
    assert [r.network for r in net.routes()] == [ip_network("198.51.100.0/24")]
    with pytest.raises(HostNetworkError, match="no network interface named outpost0"):
        net.link_mtu("outpost0")


@pytest.mark.parametrize(
    ("action", "message", "code"),
    [
        (
            lambda n: n.add_route(ip_network("10.0.0.0/8"), ifname="eth0"),
            "adding route 10.0.0.0/8 dev eth0 failed: it already exists",
            errno.EEXIST,
        ),
        (
            lambda n: n.delete_route(ip_network("10.1.0.0/16"), ifname="eth0"),
            "deleting route 10.1.0.0/16 dev eth0 failed: there is no such route",
            errno.ESRCH,
        ),
        (
            lambda n: n.add_route(ip_network("10.2.0.0/16"), gateway=ip_address("203.0.113.1")),
            "gateway 203.0.113.1 is not on a connected network",
            errno.ENETUNREACH,
        ),
        (
            lambda n: n.add_address("eth0", ip_interface("192.0.2.2/24")),
            "adding address 192.0.2.2/24 to eth0 failed: it already exists",
            errno.EEXIST,
        ),
        (
            lambda n: n.remove_address(AddressAssignment("eth0", ip_interface("192.0.2.9/24"))),
            "there is no such address",
            errno.EADDRNOTAVAIL,
        ),
        (lambda n: n.set_mtu("wlan9", 1400), "no network interface named wlan9", errno.ENODEV),
        (lambda n: n.create_tun("eth0", mtu=1400), "is not a TUN device", errno.EINVAL),
        (lambda n: n.create_tun("t0", mtu=40), "does not accept that MTU", errno.EINVAL),
    ],
)
def test_errors_match_the_kernel_and_the_linux_messages(
    net: MemoryHostNetwork, action: object, message: str, code: int
) -> None:
    net.add_route(ip_network("10.0.0.0/8"), ifname="eth0")
    with pytest.raises(HostNetworkError, match=re.escape(message)) as caught:
        action(net)  # type: ignore[operator]
    assert caught.value.errno == code


def test_route_needs_a_target_of_its_own_ip_version(net: MemoryHostNetwork) -> None:
    with pytest.raises(HostNetworkError, match="needs an interface or a gateway"):
        net.add_route(ip_network("10.0.0.0/8"))
    with pytest.raises(HostNetworkError, match="not the same IP version"):
        net.add_route(ip_network("10.0.0.0/8"), gateway=ip_address("2001:db8::1"))


def test_delete_route_matches_like_the_kernel(net: MemoryHostNetwork) -> None:
    """Unset fields are wildcards; the default metric differs by IP version."""
    net.add_route(ip_network("10.0.0.0/8"), ifname="eth0", metric=10)
    net.add_route(ip_network("10.0.0.0/8"), ifname="eth0", metric=20)
    net.delete_route(ip_network("10.0.0.0/8"))
    assert [r.metric for r in net.routes()] == [20]
    net.add_route(ip_network("2001:db8:5::/48"), ifname="eth0")
    with pytest.raises(HostNetworkError, match="already exists"):
        net.add_route(ip_network("2001:db8:5::/48"), ifname="eth0", metric=1024)
    net.delete_route(ip_network("2001:db8:5::/48"), metric=1024)


def test_fail_next_injects_one_failure_and_forwarding_remembers(net: MemoryHostNetwork) -> None:
    net.fail_next("add_route", HostNetworkError("boom"))
    with pytest.raises(HostNetworkError, match="boom"):
        net.add_route(ip_network("10.0.0.0/8"), ifname="eth0")
    net.add_route(ip_network("10.0.0.0/8"), ifname="eth0")
    assert net.set_forwarding(4, True) is False
    assert net.set_forwarding(4, False) is True
    assert net.forwarding == {4: False, 6: False}


def test_closed_network_refuses_calls(net: MemoryHostNetwork) -> None:
    with net:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        net.link_mtu("eth0")
