"""LinuxHostNetwork against the real kernel, inside namespaces made by the lab.

A TUN device, an address or a route has to be made by a process inside the
lab's namespace, while pytest itself stays in the root namespace. So each
scenario below is a function that this file runs as a program inside the
namespace (``ip netns exec <ns> python tests/system/test_hostnet_linux.py
<scenario>``); the pytest tests start it and check the JSON it prints.
A scenario fails with a traceback (and a non-zero status) that the test shows.

    [laptop] to-gw 192.0.2.2/24 2001:db8:1::2/64 (MTU 1420) ==== 192.0.2.1/24 [gw]
             optun0 (the TUN under test) 10.77.0.1/24 fd00:77::1/64,
             with 10.78.0.0/24 and fd00:78::/64 routed into it
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Interface, IPv6Interface, ip_address, ip_network
from pathlib import Path

import pytest

from common.hostnet.base import HostNetworkError, TunDevice
from common.hostnet.linux import LinuxHostNetwork
from common.wire.ip import internet_checksum
from tests.helpers.netns import Host, NetnsLab

pytestmark = pytest.mark.privileged

REPO = Path(__file__).resolve().parents[2]
WAN_MTU = 1420
TUN = "optun0"
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
ROOT_WITHOUT_NET_ADMIN = ("setpriv", "--bounding-set", "-net_admin")


# -- the pytest side -------------------------------------------------------------


@pytest.fixture
def laptop(netns_lab: NetnsLab) -> Host:
    laptop, gw = netns_lab.add_host("laptop"), netns_lab.add_host("gw")
    netns_lab.link(
        laptop,
        gw,
        addr_a=["192.0.2.2/24", "2001:db8:1::2/64"],
        addr_b=["192.0.2.1/24", "2001:db8:1::1/64"],
        mtu=WAN_MTU,
    )
    return laptop


def _scenario(host: Host, name: str, *, prefix: tuple[str, ...] = ()) -> dict[str, object]:
    """Run scenario ``name`` inside ``host``; returns the JSON object it printed last."""
    # The interpreter comes straight after any setpriv: a helper such as env(1),
    # run without privileges, may not be allowed to execute an interpreter
    # that lives under /root (pyenv), while setpriv still is.
    argv = [*prefix, sys.executable, str(Path(__file__)), name]
    result = host.run(argv, timeout=60, env={"PYTHONPATH": str(REPO)})
    lines = result.stdout.strip().splitlines()
    report: dict[str, object] = json.loads(lines[-1]) if lines else {}
    return report


def test_tun_carries_an_ipv4_echo_both_ways(laptop: Host) -> None:
    report = _scenario(laptop, "tun-ipv4")
    assert report == {"request": "10.77.0.1 -> 10.78.0.5", "ping": "1 received"}


def test_tun_carries_an_ipv6_echo_both_ways(laptop: Host) -> None:
    report = _scenario(laptop, "tun-ipv6")
    assert report == {"request": "fd00:77::1 -> fd00:78::5", "ping": "1 received"}


def test_routes_mtu_lookup_and_forwarding(laptop: Host) -> None:
    report = _scenario(laptop, "routes")
    assert report["errors"] == {
        "duplicate": "adding route 10.78.0.0/24 dev optun0 failed: it already exists",
        "missing": "deleting route 10.79.0.0/24 dev optun0 failed: there is no such route",
        "unreachable": "looking up the route to 198.51.100.7 failed: "
        "the network is unreachable (no route covers it)",
        "gateway": "adding route 10.80.0.0/24 via 203.0.113.1 failed: "
        "the gateway 203.0.113.1 is not on a connected network",
        "not_tun": "creating TUN device to-gw failed: an interface named to-gw already "
        "exists and is not a TUN device of this kind; choose another name",
        "busy": "creating TUN device optun0 failed: the device is busy "
        "(another program, or this one, holds it open)",
        "closed": "there is no network interface named optun0",
    }
    # The namespace's forwarding really changed; the lab's hosts start with it off.
    assert laptop.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"


def test_usable_from_a_running_asyncio_loop(laptop: Host) -> None:
    assert _scenario(laptop, "in-loop") == {"ifname": TUN, "source": "10.77.0.1"}


@pytest.mark.needs_tool("setpriv")
@pytest.mark.parametrize(
    ("prefix", "uid"),
    [pytest.param(NOBODY, 65534, id="nobody"), pytest.param(ROOT_WITHOUT_NET_ADMIN, 0, id="root")],
)
def test_without_cap_net_admin_the_message_says_what_to_do(
    laptop: Host, prefix: tuple[str, ...], uid: int
) -> None:
    """As nobody, and as root whose bounding set lacks CAP_NET_ADMIN: the capability counts."""
    report = _scenario(laptop, "unprivileged", prefix=prefix)
    grant = (
        "run as root or grant the capability (setcap cap_net_admin+ep on the Python interpreter)"
    )
    assert report == {
        "create_tun": f"creating TUN device optun0 needs CAP_NET_ADMIN: {grant}",
        "add_route": f"adding route 10.1.0.0/24 dev lo needs CAP_NET_ADMIN: {grant}",
        "errno": [1, 1],
        "uid": uid,
    }
    assert "optun0" not in laptop.ip("-br", "link").stdout


# -- the scenarios, run inside the namespace ------------------------------------------------


def scenario_tun_ipv4() -> dict[str, object]:
    """The kernel routes a ping into the TUN; we read the request and write the reply."""
    with LinuxHostNetwork() as net, net.create_tun(TUN, mtu=1400) as tun:
        assert (tun.name, tun.mtu, net.link_mtu(TUN)) == (TUN, 1400, 1400)
        net.add_address(TUN, IPv4Interface("10.77.0.1/24"))
        net.add_route(ip_network("10.78.0.0/24"), ifname=TUN)
        ping = _start_ping("10.78.0.5")
        request = _read_until(tun, lambda p: p[0] >> 4 == 4 and p[9] == 1 and p[20] == 8)
        tun.write(_ipv4_echo_reply(request))
        return {
            "request": f"{ip_address(request[12:16])} -> {ip_address(request[16:20])}",
            "ping": _ping_result(ping),
        }


def scenario_tun_ipv6() -> dict[str, object]:
    """The same over IPv6: ICMPv6 echo, its checksum over the pseudo-header."""
    with LinuxHostNetwork() as net, net.create_tun(TUN, mtu=1400) as tun:
        net.add_address(TUN, IPv6Interface("fd00:77::1/64"))
        net.add_route(ip_network("fd00:78::/64"), ifname=TUN)
        ping = _start_ping("fd00:78::5")
        # Skip what else the kernel sends into a new IPv6 link (MLD, router solicitations).
        request = _read_until(tun, lambda p: p[0] >> 4 == 6 and p[6] == 58 and p[40] == 128)
        tun.write(_ipv6_echo_reply(request))
        return {
            "request": f"{ip_address(request[8:24])} -> {ip_address(request[24:40])}",
            "ping": _ping_result(ping),
        }


def scenario_routes() -> dict[str, object]:
    """Route lookup and MTU through the veth and the TUN; every error in words."""
    errors: dict[str, str] = {}
    with LinuxHostNetwork() as net:
        wan = net.route_to(ip_address("192.0.2.1"))
        assert (wan.ifname, wan.mtu, wan.gateway) == ("to-gw", WAN_MTU, None), wan
        assert wan.source == ip_address("192.0.2.2"), wan
        assert net.route_to(ip_address("2001:db8:1::1")).ifname == "to-gw"

        beyond = net.add_route(
            ip_network("198.51.100.0/24"), gateway=ip_address("192.0.2.1"), metric=10
        )
        lookup = net.route_to(ip_address("198.51.100.7"))
        assert (lookup.ifname, lookup.gateway) == ("to-gw", ip_address("192.0.2.1")), lookup
        net.add_route(ip_network("198.51.100.0/24"), ifname="to-gw", table=100)
        net.delete_route(ip_network("198.51.100.0/24"), ifname="to-gw", table=100)

        tun = net.create_tun("optun%d", mtu=1400)
        assert tun.name == TUN
        net.add_address(TUN, IPv4Interface("10.77.0.1/24"))
        office = net.add_route(ip_network("10.78.0.0/24"), ifname=TUN)
        assert net.set_mtu(TUN, 1380) == 1400
        assert (tun.mtu, net.route_to(ip_address("10.78.0.9")).mtu) == (1380, 1380)

        errors["duplicate"] = _error_of(lambda: net.add_route(office.network, ifname=TUN))
        errors["missing"] = _error_of(
            lambda: net.delete_route(ip_network("10.79.0.0/24"), ifname=TUN)
        )
        net.remove_route(beyond)
        errors["unreachable"] = _error_of(lambda: net.route_to(ip_address("198.51.100.7")))
        errors["gateway"] = _error_of(
            lambda: net.add_route(ip_network("10.80.0.0/24"), gateway=ip_address("203.0.113.1"))
        )
        errors["not_tun"] = _error_of(lambda: net.create_tun("to-gw", mtu=1400))
        errors["busy"] = _error_of(lambda: net.create_tun(TUN, mtu=1400))

        assert net.set_forwarding(4, True) is False
        assert net.set_forwarding(4, True) is True

        tun.close()  # a non-persistent TUN disappears with its descriptor
        errors["closed"] = _error_of(lambda: net.link_mtu(TUN))
    return {"errors": errors}


def scenario_unprivileged() -> dict[str, object]:
    """Run as nobody: no CAP_NET_ADMIN, so creating and routing fail with advice."""
    with LinuxHostNetwork() as net:
        create = _exception_of(lambda: net.create_tun(TUN, mtu=1400))
        route = _exception_of(lambda: net.add_route(ip_network("10.1.0.0/24"), ifname="lo"))
        assert net.link_mtu("lo") == 65536  # reading needs no privilege
    return {
        "create_tun": str(create),
        "add_route": str(route),
        "errno": [create.errno, route.errno],
        "uid": os.getuid(),
    }


def scenario_inside_a_running_loop() -> dict[str, object]:
    """The client and the concentrator call us from their asyncio loop (pyroute2 0.9 did not)."""

    async def main() -> dict[str, object]:
        with LinuxHostNetwork() as net:
            tun = net.create_tun(TUN, mtu=1400)
            try:
                net.add_address(tun.name, IPv4Interface("10.77.0.1/24"))
                lookup = net.route_to(ip_address("10.77.0.9"))
            finally:
                tun.close()
        return {"ifname": lookup.ifname, "source": str(lookup.source)}

    return asyncio.run(main())


SCENARIOS: dict[str, Callable[[], dict[str, object]]] = {
    "in-loop": scenario_inside_a_running_loop,
    "tun-ipv4": scenario_tun_ipv4,
    "tun-ipv6": scenario_tun_ipv6,
    "routes": scenario_routes,
    "unprivileged": scenario_unprivileged,
}


def _exception_of(action: Callable[[], object]) -> HostNetworkError:
    try:
        action()
    except HostNetworkError as exc:
        return exc
    raise AssertionError("expected a HostNetworkError")


def _error_of(action: Callable[[], object]) -> str:
    return str(_exception_of(action))


def _start_ping(address: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ping", "-n", "-c1", "-W5", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _ping_result(ping: subprocess.Popen[str]) -> str:
    output, _ = ping.communicate(timeout=10)
    assert ping.returncode == 0, output
    return "1 received" if " 1 received" in output else output


def _read_until(tun: TunDevice, wanted: Callable[[bytes], bool], timeout_s: float = 5.0) -> bytes:
    """Read packets from ``tun`` until one is ``wanted``, waiting with select (no hang)."""
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    while (remaining := deadline - time.monotonic()) > 0:
        if select.select([tun], [], [], remaining)[0]:
            packet = tun.read()
            if wanted(packet):
                return packet
            seen.append(packet[:48].hex())
    raise AssertionError(f"no matching packet in {timeout_s} s; saw {seen}")


def _ipv4_echo_reply(request: bytes) -> bytes:
    """Swap the addresses (the header checksum stays valid) and make type 8 a type 0."""
    header_len = (request[0] & 0x0F) * 4
    header = request[:12] + request[16:20] + request[12:16] + request[20:header_len]
    icmp = b"\x00\x00\x00\x00" + request[header_len + 4 :]
    icmp = icmp[:2] + struct.pack("!H", internet_checksum(icmp)) + icmp[4:]
    return header + icmp


def _ipv6_echo_reply(request: bytes) -> bytes:
    """Swap the addresses and make type 128 a 129, checksummed over the pseudo-header."""
    source, destination = request[24:40], request[8:24]
    icmp = b"\x81\x00\x00\x00" + request[44:]
    pseudo = source + destination + struct.pack("!I3xB", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", internet_checksum(pseudo + icmp)) + icmp[4:]
    return request[:8] + source + destination + icmp


def main(argv: list[str]) -> int:
    print(json.dumps(SCENARIOS[argv[0]]()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
