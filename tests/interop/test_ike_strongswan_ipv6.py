"""IPv6 inner addresses (INTERNAL_IP6_ADDRESS) between our IkeSession and strongSwan 5.9.8.

The outer transport stays IPv4; what is new is a dual-stack configuration
payload (RFC 7296 3.15.1) and traffic selectors of both families (2.9)::

    [laptop] to-gw 192.0.2.2/24 ======== 192.0.2.1/24 to-laptop [gw]
     rw.lab.example                                   gw.lab.example
                                                      to-office 10.99.0.1/24, fd00:99::1/64
                                                               ||
                              10.99.0.10/24, fd00:99::10/64 to-gw [office]

    virtual IPs come from 10.99.100.0/24 and fd00:100::/120
    (strongSwan's two pools, or our policy's leases)

Both directions: a strongSwan road warrior with ``vips = 0.0.0.0,::`` gets
both families from our responder, and our initiator with ``--request-ipv6``
gets both from a strongSwan gateway with an IPv4 and an IPv6 pool. Each is
checked on both sides: our driver's events and ``swanctl --list-sas``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.ike_driver import DriverProcess
from tests.helpers.netns import Host, NetnsLab
from tests.helpers.strongswan import StrongSwan, SwanConnection, swanctl_conf

LAPTOP_IP = "192.0.2.2"
GATEWAY_IP = "192.0.2.1"
CLIENT_ID = "rw.lab.example"
GATEWAY_ID = "gw.lab.example"
PSK = "lab-psk-not-secret-0123456789abcdef"
POOL = "10.99.100.0/24"
POOL6 = "fd00:100::/120"
OFFICE = "10.99.0.0/24"
OFFICE6 = "fd00:99::/64"

pytestmark = [pytest.mark.privileged, pytest.mark.needs_tool("/usr/lib/ipsec/charon")]


@dataclass
class Lab:
    laptop: Host
    gw: Host
    tmp_path: Path


@pytest.fixture
def lab(netns_lab: NetnsLab, tmp_path: Path) -> Lab:
    laptop = netns_lab.add_host("laptop")
    gw = netns_lab.add_host("gw")
    netns_lab.link(laptop, gw, addr_a=f"{LAPTOP_IP}/24", addr_b=f"{GATEWAY_IP}/24")
    # The office network in both families, so a strongSwan gateway has a source
    # address for the route it installs towards each of a client's virtual IPs.
    office = netns_lab.add_host("office")
    netns_lab.link(
        gw,
        office,
        addr_a=["10.99.0.1/24", "fd00:99::1/64"],
        addr_b=["10.99.0.10/24", "fd00:99::10/64"],
    )
    return Lab(laptop, gw, tmp_path)


def _dual_stack_gateway_swan(lab: Lab) -> StrongSwan:
    """strongSwan as the concentrator in ``gw`` with an IPv4 and an IPv6 pool.

    ``SwanConnection`` knows one pool; a strongSwan pool holds one range, so
    the second is added to the generated swanctl.conf and everything reloaded.
    """
    connection = SwanConnection(
        local_addr=GATEWAY_IP,
        local_id=GATEWAY_ID,
        remote_id=CLIENT_ID,
        psk=PSK,
        pool=POOL,
        local_ts=f"{OFFICE},{OFFICE6}",
        name="rw",
    )
    swan = StrongSwan(lab.gw, lab.tmp_path / "swan-gw")
    swan.start(connection)
    conf = swanctl_conf(connection)
    conf = conf.replace("pools = test_pool", "pools = test_pool, test_pool6")
    pool6 = f"    test_pool6 {{\n        addrs = {POOL6}\n    }}\n"
    conf = conf.replace("pools {\n", "pools {\n" + pool6)
    path = swan.swanctl_dir / "swanctl.conf"
    path.write_text(conf)
    swan.swanctl("--load-all", "--file", str(path))
    return swan


def _virtual_ips(list_sas: str, side: str) -> list[str]:
    """The bracketed virtual IPs of the ``local``/``remote`` line of ``--list-sas``."""
    match = re.search(rf"^\s+{side}\s+'[^']*' @ \S+ \[([^\]]*)\]\s*$", list_sas, re.MULTILINE)
    assert match, list_sas
    return match.group(1).split()


def test_strongswan_dual_stack_initiator_gets_both_families_from_our_responder(lab: Lab) -> None:
    """strongSwan (vips = 0.0.0.0,::) gets an IPv4 and an IPv6 address from our responder.

    [laptop] charon: vips 0.0.0.0,::,        ===>  [gw] ike_driver --role responder:
             remote_ts 10.99.0.0/24,                    leases 10.99.100.7, fd00:100::7;
                       fd00:99::/64                     subnets 10.99.0.0/24, fd00:99::/64
    CP(CFG_REQUEST: IP4_ADDRESS, IP6_ADDRESS, ...) --> <-- CP(CFG_REPLY: both, /128)
    """
    driver = DriverProcess(
        lab.gw,
        [
            *("--role", "responder", "--local", GATEWAY_IP, "--local-id", GATEWAY_ID),
            *("--psk", PSK, "--pool-start", "10.99.100.7", "--pool6-start", "fd00:100::7"),
            *("--subnet", OFFICE, "--subnet", OFFICE6),
            *("--dns", "10.99.0.53", "--dns", "fd00:99::53"),
            *("--ike", "aes256gcm16-prfsha256-x25519", "--esp", "aes256gcm16"),
            *("--force-encap", "--lifetime", "20"),
        ],
    )
    driver.wait_for("ready")
    swan = StrongSwan(lab.laptop, lab.tmp_path / "swan-laptop")
    swan.start(
        SwanConnection(
            local_addr=LAPTOP_IP,
            remote_addr=GATEWAY_IP,
            local_id=CLIENT_ID,
            remote_id=GATEWAY_ID,
            psk=PSK,
            vips="0.0.0.0,::",
            remote_ts=f"{OFFICE},{OFFICE6}",
            name="home",
        )
    )
    error = swan.initiate()
    assert error is None, f"{error}\n{driver.collect()}\n{swan.logs()}"
    child = driver.wait_for("child_sa_established", timeout=2)
    # RFC 7296 2.9: TSi narrowed to the two leases, TSr to the two subnets.
    assert child["remote_ts"] == ["10.99.100.7-10.99.100.7", "fd00:100::7-fd00:100::7"]
    assert child["local_ts"] == [
        "10.99.0.0-10.99.0.255",
        "fd00:99::-fd00:99::ffff:ffff:ffff:ffff",
    ]

    sas = swan.list_sas()
    assert re.search(r"^home: #\d+, ESTABLISHED, IKEv2", sas, re.MULTILINE), sas
    assert sorted(_virtual_ips(sas, "local")) == ["10.99.100.7", "fd00:100::7"], sas
    assert re.search(r"office: #\d+, reqid \d+, INSTALLED, TUNNEL-in-UDP", sas), sas
    assert re.search(r"^\s+local\s+10\.99\.100\.7/32 fd00:100::7/128\s*$", sas, re.MULTILINE), sas
    assert driver.stop() == 0


def test_our_dual_stack_initiator_gets_both_families_from_strongswan(lab: Lab) -> None:
    """Our initiator (--request-ipv6) gets one address of each family from strongSwan.

    [laptop] ike_driver --role initiator   ===>  [gw] charon: pools 10.99.100.0/24 and
             --request-ipv6                           fd00:100::/120, local_ts both offices
    """
    swan = _dual_stack_gateway_swan(lab)
    driver = DriverProcess(
        lab.laptop,
        [
            *("--role", "initiator", "--local", LAPTOP_IP, "--remote", GATEWAY_IP),
            *("--local-id", CLIENT_ID, "--remote-id", GATEWAY_ID, "--psk", PSK),
            *("--ike", "aes256gcm16-prfsha256-x25519", "--esp", "aes256gcm16"),
            *("--force-encap", "--request-ipv6", "--lifetime", "20"),
        ],
    )
    try:
        assigned = driver.wait_for("address_assigned", "ike_sa_failed", timeout=10)
        assert assigned["event"] == "address_assigned", assigned
        child = driver.wait_for("child_sa_established", timeout=2)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{swan.logs()}") from None
    address, address_v6 = assigned["address"], assigned["address_v6"]
    assert address.startswith("10.99.100."), assigned
    assert address_v6 is not None, assigned
    assert address_v6.startswith("fd00:100::"), assigned
    # strongSwan 5.9.8 sends the prefix length 64 (ours sends 128); it is passed on as is.
    assert assigned["prefix_length_v6"] == 64, assigned
    assert child["local_ts"] == [f"{address}-{address}", f"{address_v6}-{address_v6}"]
    assert child["remote_ts"] == [
        "10.99.0.0-10.99.0.255",
        "fd00:99::-fd00:99::ffff:ffff:ffff:ffff",
    ]

    sas = swan.list_sas()
    assert re.search(r"^rw: #\d+, ESTABLISHED, IKEv2", sas, re.MULTILINE), sas
    assert sorted(_virtual_ips(sas, "remote")) == sorted([address, address_v6]), sas
    assert driver.stop() == 0
