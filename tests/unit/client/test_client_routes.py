"""Route plans (pure) and applying/undoing them on the in-memory host network."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from ipaddress import ip_address, ip_interface, ip_network

import pytest

from client.routes import AppliedRoutes, apply_routes, plan_routes, remove_routes
from common.hostnet.base import HostNetworkError, IpNetwork, Route
from common.hostnet.memory import MemoryHostNetwork

GATEWAY = ip_address("198.51.100.7")
ROUTER = ip_address("192.168.1.1")
INNER4 = ip_interface("10.99.0.5/32")
INNER6 = ip_interface("fd99::5/128")


def nets(*texts: str) -> tuple[IpNetwork, ...]:
    return tuple(ip_network(t) for t in texts)


@pytest.fixture
def host() -> MemoryHostNetwork:
    """A laptop: eth0 on 192.168.1.0/24 with a default route via 192.168.1.1, and a TUN."""
    net = MemoryHostNetwork()
    net.add_link("eth0", addresses=("192.168.1.20/24", "2001:db8:1::20/64"))
    net.add_route(ip_network("0.0.0.0/0"), gateway=ROUTER)
    net.add_route(ip_network("::/0"), gateway=ip_address("2001:db8:1::1"))
    net.create_tun("outpost0", mtu=1400)
    net.calls.clear()
    return net


# --- plan_routes ---------------------------------------------------------------------------


def test_split_is_the_collapsed_union() -> None:
    plan = plan_routes(
        "split",
        GATEWAY,
        nets("10.1.0.0/16", "10.2.0.0/24"),
        nets("10.1.5.0/24", "10.2.1.0/24", "10.2.0.0/24", "172.16.0.0/12"),
        [INNER4],
    )
    assert plan.networks == nets("10.1.0.0/16", "10.2.0.0/23", "172.16.0.0/12")
    assert not plan.needs_bypass


def test_split_skips_families_without_an_inner_address() -> None:
    plan = plan_routes("split", GATEWAY, nets("10.1.0.0/16", "fd00:1::/64"), (), [INNER4])
    assert plan.networks == nets("10.1.0.0/16")
    plan6 = plan_routes("split", GATEWAY, nets("10.1.0.0/16", "fd00:1::/64"), (), [INNER4, INNER6])
    assert plan6.networks == nets("10.1.0.0/16", "fd00:1::/64")


def test_split_default_becomes_two_halves_and_needs_the_bypass() -> None:
    plan = plan_routes("split", GATEWAY, nets("0.0.0.0/0"), (), [INNER4])
    assert plan.networks == nets("0.0.0.0/1", "128.0.0.0/1")
    assert plan.needs_bypass


def test_split_subnet_covering_the_gateway_needs_the_bypass() -> None:
    plan = plan_routes("split", GATEWAY, (), nets("198.51.100.0/24"), [INNER4])
    assert plan.needs_bypass


def test_full_tunnel() -> None:
    plan = plan_routes("full", GATEWAY, nets("10.1.0.0/16"), nets("10.2.0.0/16"), [INNER4])
    assert plan.networks == nets("0.0.0.0/1", "128.0.0.0/1")
    assert plan.needs_bypass


def test_full_tunnel_ipv6() -> None:
    plan = plan_routes("full", GATEWAY, (), (), [INNER4, INNER6])
    assert plan.networks == nets("0.0.0.0/1", "128.0.0.0/1", "::/1", "8000::/1")


def test_full_tunnel_ipv6_gateway_over_ipv4_only_inner_needs_no_bypass() -> None:
    plan = plan_routes("full", ip_address("2001:db8:9::1"), (), (), [INNER4])
    assert not plan.needs_bypass


# --- apply_routes and undo --------------------------------------------------------------------


def test_apply_split(host: MemoryHostNetwork) -> None:
    plan = plan_routes("split", GATEWAY, nets("10.1.0.0/16"), nets("10.2.0.0/16"), [INNER4])
    before = host.routes()
    applied = apply_routes(host, "outpost0", plan)
    assert applied.added == [
        Route(ip_network("10.1.0.0/16"), ifname="outpost0"),
        Route(ip_network("10.2.0.0/16"), ifname="outpost0"),
    ]
    assert host.route_to(ip_address("10.1.2.3")).ifname == "outpost0"
    assert host.route_to(GATEWAY).ifname == "eth0"
    assert [c.method for c in host.calls if c.method == "route_to"] == ["route_to"] * 2
    applied.undo()
    assert host.routes() == before


def test_apply_full_pins_the_gateway_to_the_original_path(host: MemoryHostNetwork) -> None:
    plan = plan_routes("full", GATEWAY, (), (), [INNER4, INNER6])
    before = host.routes()
    recorded: list[Sequence[Route]] = []
    applied = apply_routes(host, "outpost0", plan, before_change=recorded.append)
    bypass = Route(ip_network("198.51.100.7/32"), ifname="eth0", gateway=ROUTER)
    assert applied.added[0] == bypass  # via the pre-existing default route's next hop
    assert recorded == [tuple(applied.added)]
    assert len(applied.added) == 5
    # Everything else goes into the tunnel, the gateway itself does not.
    assert host.route_to(ip_address("8.8.8.8")).ifname == "outpost0"
    assert host.route_to(ip_address("2001:4860::8888")).ifname == "outpost0"
    lookup = host.route_to(GATEWAY)
    assert (lookup.ifname, lookup.gateway) == ("eth0", ROUTER)
    added = list(applied.added)
    applied.undo()
    assert host.routes() == before
    removed = [c.args["route"] for c in host.calls if c.method == "remove_route"]
    assert removed == added[::-1]  # exactly what was added, newest first: the bypass last


def test_bypass_on_link_gateway(host: MemoryHostNetwork) -> None:
    gateway = ip_address("192.168.1.50")  # on eth0's own network: no next hop
    applied = apply_routes(host, "outpost0", plan_routes("full", gateway, (), (), [INNER4]))
    assert applied.added[0] == Route(ip_network("192.168.1.50/32"), ifname="eth0", gateway=None)
    assert host.route_to(gateway).ifname == "eth0"


def test_before_change_sees_everything_before_any_change(host: MemoryHostNetwork) -> None:
    def check(routes: Sequence[Route]) -> None:
        assert not [c for c in host.calls if c.method == "add_route"]
        assert len(routes) == 3

    apply_routes(
        host, "outpost0", plan_routes("full", GATEWAY, (), (), [INNER4]), before_change=check
    )


def test_failure_half_way_undoes_what_was_done(host: MemoryHostNetwork) -> None:
    plan = plan_routes("full", GATEWAY, (), (), [INNER4])
    # The bypass and 0.0.0.0/1 go in, then 128.0.0.0/1 collides with a route already there.
    host.add_route(ip_network("128.0.0.0/1"), ifname="eth0")
    before = host.routes()
    with pytest.raises(HostNetworkError, match="already exists"):
        apply_routes(host, "outpost0", plan)
    assert host.routes() == before
    removed = [c.args["route"] for c in host.calls if c.method == "remove_route"]
    assert tuple(r.network for r in removed if isinstance(r, Route)) == nets(
        "0.0.0.0/1", "198.51.100.7/32"
    )


def test_failure_of_the_first_route_changes_nothing(host: MemoryHostNetwork) -> None:
    before = host.routes()
    host.fail_next("add_route", HostNetworkError("no rights", errno=errno.EPERM))
    plan = plan_routes("split", GATEWAY, nets("10.1.0.0/16"), (), [INNER4])
    with pytest.raises(HostNetworkError, match="no rights"):
        apply_routes(host, "outpost0", plan)
    assert host.routes() == before


def test_gateway_already_routed_through_the_tunnel_is_refused(host: MemoryHostNetwork) -> None:
    host.add_route(ip_network("198.51.100.0/24"), ifname="outpost0")
    plan = plan_routes("full", GATEWAY, (), (), [INNER4])
    with pytest.raises(HostNetworkError, match="already goes through outpost0"):
        apply_routes(host, "outpost0", plan)


def test_undo_after_the_tun_closed_and_twice(host: MemoryHostNetwork) -> None:
    before = host.routes()
    applied = apply_routes(host, "outpost0", plan_routes("full", GATEWAY, (), (), [INNER4]))
    host.tuns["outpost0"].close()  # the kernel drops the routes through the device
    applied.undo()  # ESRCH for those: fine; the bypass on eth0 is removed
    assert host.routes() == before
    applied.undo()  # nothing left to do
    assert applied.added == []


def test_undo_reports_an_unexpected_failure_after_trying_all(host: MemoryHostNetwork) -> None:
    applied = apply_routes(host, "outpost0", plan_routes("full", GATEWAY, (), (), [INNER4]))
    host.fail_next("remove_route", HostNetworkError("netlink broke", errno=errno.EIO))
    with pytest.raises(HostNetworkError, match="netlink broke"):
        applied.undo()
    assert len([r for r in host.routes() if r.ifname == "outpost0"]) == 1  # only the failed one
    assert isinstance(applied, AppliedRoutes)


def test_remove_routes_for_stale_repair(host: MemoryHostNetwork) -> None:
    before = host.routes()
    applied = apply_routes(host, "outpost0", plan_routes("full", GATEWAY, (), (), [INNER4]))
    routes = list(applied.added)
    host.tuns["outpost0"].close()  # the dead client's TUN went with it
    removed = remove_routes(host, routes)
    assert removed == [routes[0]]  # only the bypass on eth0 was really left
    assert host.routes() == before
