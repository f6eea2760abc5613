"""Our client (``outpost up``) against a strongSwan gateway (issue 5, "Proof").

strongSwan is the gateway nobody here wrote: Debian's charon 5.9.8 with
kernel-libipsec (userspace ESP on its TUN ``ipsec0``; the kernel has no XFRM)
in the ``gw`` namespace, a virtual-IP pool, and the office LAN as its
``local_ts``; the laptop runs ``outpost up`` (topology of
tests/helpers/concentrator_lab.py, with charon in place of our concentrator)::

    [laptop1] 192.0.2.2 outpost up --- br0 --- 192.0.2.1 [gw] charon, pool 10.99.100.0/24,
                                                           ipsec0, forwarding on
                                                           10.99.0.1 ==== 10.99.0.10 [lan]

Checked: the inner address comes from strongSwan's pool and the LAN host
answers a ping (the laptop has no other route to it), with PSK and ECDSA
certificates, AES-GCM-256 and ChaCha20-Poly1305 (the proposal strongSwan
allows is the only one it accepts, and ``swanctl --list-sas`` must show it);
SIGTERM deletes the SA at strongSwan. Child SA rekeys that *strongSwan*
starts while a ping runs every 2 ms lose no echo: as the rekey responder
our client keeps sending on the old SA until strongSwan deletes it
(``SaPair.defer_outbound``), and afterwards both ends show the new SPIs.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.helpers.client_lab import (
    ClientProcess,
    ping,
    profile_text,
    route_get,
    wait_until,
    write_profile,
)
from tests.helpers.concentrator_lab import (
    GATEWAY_ID,
    GATEWAY_IP,
    LAN,
    LAN_HOST_IP,
    POOL,
    ConcentratorLab,
    build_lab,
)
from tests.helpers.netns import NetnsLab
from tests.helpers.pki import Issued, make_ca, make_leaf
from tests.helpers.strongswan import StrongSwan, SwanConnection, SwanIkeSa

pytestmark = [
    pytest.mark.privileged,
    pytest.mark.needs_tool("/usr/lib/ipsec/charon", "swanctl"),
]

ALICE = "alice@lab.example"
PSK = "alice-swan-psk-0123456789abcdef"
CERT_CLIENT_ID = "rw.lab.example"
IKE = "aes256gcm16-prfsha256-x25519"
# A ping every 2 ms (500 a second, far below libipsec's limits) across three
# rekeys: every echo lost in any switch-over would show. Note: charon installs
# its new SAs so quickly that forcing defer_outbound off did not lose an echo
# in two runs either; the test proves "no loss with strongSwan", not that flag.
PING_INTERVAL_S = 0.002
PINGS = 3000
REKEYS = 3
REKEY_EVERY_S = 1.2
LISTED = {"aes256gcm16": "AES_GCM_16-256", "chacha20poly1305": "CHACHA20_POLY1305"}


@dataclass(frozen=True)
class Pki:
    ca: Issued
    gateway: Issued
    client: Issued


@pytest.fixture(scope="module")
def lab() -> Iterator[ConcentratorLab]:
    """One lab for the module; charon forwards between ipsec0 and the LAN (it does not itself)."""
    with NetnsLab() as netns_lab:
        built = build_lab(netns_lab, laptops=1)
        netns_lab.forwarding(built.gw)
        yield built


@pytest.fixture(scope="module")
def pki() -> Pki:
    """ECDSA P-256 CA, gateway and client certificates, valid around now (charon checks)."""
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    end = start + datetime.timedelta(days=31)
    ca = make_ca("Outpost Client Test CA", not_before=start)
    gateway = make_leaf(
        ca,
        GATEWAY_ID,
        dns_names=(GATEWAY_ID,),
        eku=(ExtendedKeyUsageOID.SERVER_AUTH,),
        not_before=start,
        not_after=end,
    )
    client = make_leaf(
        ca, CERT_CLIENT_ID, dns_names=(CERT_CLIENT_ID,), not_before=start, not_after=end
    )
    return Pki(ca, gateway, client)


@dataclass
class Setup:
    """A charon gateway and our client for one test; both stopped at the end."""

    swan: StrongSwan
    client: ClientProcess


def start_gateway(
    lab: ConcentratorLab, workdir: Path, *, esp: str, pki: Pki | None = None
) -> StrongSwan:
    """charon in ``gw``: pool, the LAN as local_ts, PSK or (given ``pki``) certificates."""
    swan = StrongSwan(lab.gw, workdir)
    files = None
    if pki is not None:
        files = {
            "x509ca/ca.pem": pki.ca.pem,
            "x509/gw.pem": pki.gateway.pem,
            "private/gw.pem": pki.gateway.key_pem,
        }
    swan.start(
        SwanConnection(
            local_addr=GATEWAY_IP,
            local_id=GATEWAY_ID,
            remote_id=CERT_CLIENT_ID if pki else ALICE,
            psk="" if pki else PSK,
            ike_proposal=IKE,
            esp_proposal=esp,
            pool=POOL,
            local_ts=LAN,
            name="rw",
            child="office",
            cert="gw.pem" if pki else None,
        ),
        files=files,
    )
    return swan


def start_client(
    lab: ConcentratorLab, tmp_path: Path, *, esp: str, pki: Pki | None = None
) -> ClientProcess:
    """``outpost up`` in the laptop, offering only ``esp``, with a PSK or the client certificate."""
    settings: dict[str, Any] = {"psk": PSK, "user": ALICE}
    if pki is not None:
        credentials = tmp_path / "credentials"
        pki.client.write_pem(credentials / "client.pem", credentials / "client.key")
        (credentials / "client.key").chmod(0o600)
        pki.ca.write_pem(credentials / "ca.pem")
        settings = {
            "user": CERT_CLIENT_ID,
            "certificate": credentials / "client.pem",
            "key": credentials / "client.key",
            "ca": credentials / "ca.pem",
        }
    profile = write_profile(
        tmp_path / "office.toml",
        profile_text(ike_proposals=[IKE], esp_proposals=[esp], **settings),
    )
    client = ClientProcess(
        lab.laptops[0], profile, tmp_path / "run", log_path=tmp_path / "client.log"
    )
    client.start()
    return client


@pytest.fixture
def setups(lab: ConcentratorLab) -> Iterator[list[Setup]]:
    """What a test started; the client gets SIGTERM (it must exit 0), then charon stops."""
    started: list[Setup] = []
    try:
        yield started
    finally:
        for setup in started:
            if setup.client.alive():
                setup.client.stop()
            setup.swan.stop()


def connect(
    lab: ConcentratorLab,
    tmp_path: Path,
    setups: list[Setup],
    *,
    esp: str,
    pki: Pki | None = None,
) -> tuple[Setup, dict[str, Any]]:
    """charon and our client, until the client says "connected"; its status."""
    swan = start_gateway(lab, tmp_path / "swan-gw", esp=esp, pki=pki)
    client = start_client(lab, tmp_path, esp=esp, pki=pki)
    setup = Setup(swan, client)
    setups.append(setup)
    try:
        status = client.wait_state("connected", timeout=30)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{swan.logs()}") from None
    return setup, status


def only_child(swan: StrongSwan) -> tuple[SwanIkeSa, Any]:
    """strongSwan's one IKE SA and its one INSTALLED Child SA."""
    sas = swan.sas()
    assert len(sas) == 1, swan.list_sas()
    children = [c for c in sas[0].children if c.state == "INSTALLED"]
    assert len(children) == 1, swan.list_sas()
    return sas[0], children[0]


def virtual_ip_at_gateway(swan: StrongSwan) -> str:
    """The address strongSwan leased (``remote ... [VIP]`` in ``--list-sas``)."""
    text = swan.list_sas()
    match = re.search(r"^\s+remote\s+'[^']*' @ \S+ \[([0-9.]+)\]", text, re.MULTILINE)
    assert match, text
    return match.group(1)


def spi_changed(old_inbound_spi: str, status: dict[str, Any]) -> bool:
    """Whether the client's current Child SA is no longer the one with ``old_inbound_spi``."""
    return bool(status["tunnel"]["inbound_spi"] != old_inbound_spi)


# --- tests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "esp"),
    [
        ("psk", "aes256gcm16"),
        ("psk", "chacha20poly1305"),
        ("ecdsa", "aes256gcm16"),
    ],
)
def test_address_from_strongswan_pool_and_lan_reachable(
    lab: ConcentratorLab, tmp_path: Path, setups: list[Setup], pki: Pki, auth: str, esp: str
) -> None:
    """Connected with strongSwan's pool address; ping crosses both userspace ESP stacks."""
    setup, status = connect(lab, tmp_path, setups, esp=esp, pki=pki if auth == "ecdsa" else None)
    inner = status["tunnel"]["inner_ipv4"]
    assert ipaddress.ip_address(inner) in ipaddress.ip_network(POOL), status
    assert inner == virtual_ip_at_gateway(setup.swan)
    assert status["tunnel"]["routes"] == [LAN], status  # strongSwan's local_ts
    ike, child = only_child(setup.swan)
    assert ike.state == "ESTABLISHED", setup.swan.list_sas()
    assert child.mode == "TUNNEL-in-UDP", setup.swan.list_sas()
    assert LISTED[esp] in child.proposal, child
    # The two ends agree on the SA: each one's inbound SPI is the other's outbound.
    assert (child.spi_in, child.spi_out) == (
        status["tunnel"]["outbound_spi"],
        status["tunnel"]["inbound_spi"],
    ), (child, status["tunnel"])

    laptop = lab.laptops[0]
    assert route_get(laptop, LAN_HOST_IP)["dev"].startswith("outpost")
    ping(laptop, LAN_HOST_IP, count=5)

    assert setup.client.stop() == 0, setup.client.log_text()
    # SIGTERM sent a Delete that strongSwan accepted: no SA left there.
    wait_until(lambda: not setup.swan.sas(), timeout=5, what="strongSwan to delete the IKE SA")


def test_rekey_by_strongswan_loses_no_ping(
    lab: ConcentratorLab, tmp_path: Path, setups: list[Setup]
) -> None:
    """``swanctl --rekey --child office`` (3x) during a 500/s ping: 0% loss, new SPIs at both."""
    setup, status = connect(lab, tmp_path, setups, esp="aes256gcm16")
    before = (status["tunnel"]["inbound_spi"], status["tunnel"]["outbound_spi"])
    laptop = lab.laptops[0]
    output = tmp_path / "ping.txt"
    with output.open("w") as stream:
        pinger = laptop.popen(
            [*("ping", "-n", "-q", "-i", str(PING_INTERVAL_S), "-c", str(PINGS)), LAN_HOST_IP],
            stdout=stream,
        )
    for _ in range(REKEYS):
        time.sleep(REKEY_EVERY_S)  # traffic on the current SA first
        current = setup.client.wait_state("connected")["tunnel"]["inbound_spi"]
        setup.swan.rekey(child="office")
        setup.client.wait_status(
            functools.partial(spi_changed, current), timeout=5, what="the rekey"
        )
    try:
        pinger.wait(timeout=PINGS * PING_INTERVAL_S + 30)
    except subprocess.TimeoutExpired:
        pinger.kill()
        raise
    text = output.read_text()
    assert f" {PINGS} received, 0% packet loss" in text, text + setup.client.log_text()

    after = setup.client.wait_status(
        lambda s: (s["tunnel"]["inbound_spi"], s["tunnel"]["outbound_spi"]) != before,
        timeout=10,
        what="new SPIs",
    )
    setup.client.wait_log(r"rekeyed Child SA")
    # strongSwan: the old Child SA is gone, the new one is the client's current one.
    swan_sas = setup.swan.wait_sas(
        lambda sas: (
            len(sas) == 1
            and len(sas[0].children) == 1
            and sas[0].children[0].state == "INSTALLED"
            and sas[0].children[0].spi_in not in (before[1], "")
        ),
        timeout=10,
        what="one rekeyed Child SA",
    )
    child = swan_sas[0].children[0]
    assert (child.spi_in, child.spi_out) == (
        after["tunnel"]["outbound_spi"],
        after["tunnel"]["inbound_spi"],
    ), (child, after["tunnel"])
    ping(laptop, LAN_HOST_IP)
    assert setup.client.stop() == 0, setup.client.log_text()
