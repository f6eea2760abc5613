"""IKEv2 fragmentation (RFC 7383) between our IkeSession and strongSwan 5.9.8.

Topology, driver and charon as in ``test_ike_strongswan_certs.py``::

    [laptop 192.0.2.2] ---- [gw 192.0.2.1] ---- [office 10.99.0.10]

Both ends announce N(IKEV2_FRAGMENTATION_SUPPORTED) (charon: ``fragmentation
= yes``, its default) and sign with certificates, so IKE_AUTH is large:

- strongSwan -> us: charon's ``fragment_size = 576`` (its whole IP datagram)
  makes it split any certificate IKE_AUTH (about 800 octets) into SKF
  fragments, which we authenticate one by one and reassemble, as responder
  (its request) and as initiator (its response);
- us -> strongSwan: an RSA leaf plus an RSA intermediate in CERT make our
  IKE_AUTH about 2.1 kB, above our default ``fragment_size`` (1280 octets
  of UDP payload, marker included), so the driver sends it in 2 fragments.

charon's log (``enc = 1``) is the witness: "splitting IKE message" for what
it sent, "received fragment" / "reassembled fragmented IKE message" for what
it got from us.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.helpers.ike_driver import DriverProcess
from tests.helpers.netns import Host, NetnsLab
from tests.helpers.pki import Issued, make_ca, make_leaf
from tests.helpers.strongswan import StrongSwan, SwanConnection

LAPTOP_IP = "192.0.2.2"
GATEWAY_IP = "192.0.2.1"
CLIENT_ID = "rw.lab.example"
CLIENT_EMAIL = "rw@lab.example"
GATEWAY_ID = "gw.lab.example"
POOL = "10.99.100.0/24"
OFFICE = "10.99.0.0/24"
IKE = "aes256gcm16-prfsha256-x25519"
ESP = "aes256gcm16"
SWAN_FRAGMENT_SIZE = 576  # charon counts the IP header: 548 octets of UDP payload

pytestmark = [pytest.mark.privileged, pytest.mark.needs_tool("/usr/lib/ipsec/charon")]


@dataclass(frozen=True)
class Pki:
    ca: Issued
    intermediate: Issued  # RSA, issued by ``ca``
    gateway: Issued  # ECDSA, issued by ``ca``
    client: Issued  # ECDSA, issued by ``ca``
    rsa_client: Issued  # RSA, issued by ``intermediate``


@pytest.fixture(scope="module")
def pki() -> Pki:
    # strongSwan checks validity against the wall clock: valid from yesterday, for 30 days
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    end = start + datetime.timedelta(days=31)
    ca = make_ca("Outpost Interop CA", not_before=start)
    intermediate = make_ca("Outpost Issuing CA", issuer=ca, key_kind="rsa2048", not_before=start)

    def client(issuer: Issued, kind: str) -> Issued:
        return make_leaf(
            issuer,
            CLIENT_ID,
            key_kind=kind,  # type: ignore[arg-type]
            dns_names=(CLIENT_ID,),
            emails=(CLIENT_EMAIL,),
            not_before=start,
            not_after=end,
        )

    gateway = make_leaf(
        ca,
        GATEWAY_ID,
        dns_names=(GATEWAY_ID,),
        eku=(ExtendedKeyUsageOID.SERVER_AUTH,),
        not_before=start,
        not_after=end,
    )
    return Pki(ca, intermediate, gateway, client(ca, "ecdsa-p256"), client(intermediate, "rsa2048"))


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
    office = netns_lab.add_host("office")
    netns_lab.link(gw, office, addr_a="10.99.0.1/24", addr_b="10.99.0.10/24")
    return Lab(laptop, gw, tmp_path)


def _swan_files(ca: Issued, own: Issued, name: str) -> dict[str, bytes]:
    return {
        "x509ca/ca.pem": ca.pem,
        f"x509/{name}.pem": own.pem,
        f"private/{name}.pem": own.key_pem,
    }


def _driver_credentials(
    lab: Lab, ca: Issued, own: Issued, name: str, chain: tuple[Issued, ...] = ()
) -> list[str]:
    """``--ca/--cert/--key``; the certificate file holds the leaf, then ``chain``."""
    directory = lab.tmp_path / "driver"
    own.write_pem(directory / f"{name}.pem", directory / f"{name}.key")
    with (directory / f"{name}.pem").open("ab") as pem:
        for issued in chain:
            pem.write(issued.pem)
    ca.write_pem(directory / "ca.pem")
    return [
        *("--ca", str(directory / "ca.pem")),
        *("--cert", str(directory / f"{name}.pem")),
        *("--key", str(directory / f"{name}.key")),
    ]


def _gateway_swan(lab: Lab, pki: Pki, fragment_size: int | None) -> StrongSwan:
    swan = StrongSwan(lab.gw, lab.tmp_path / "swan-gw")
    swan.start(
        SwanConnection(
            local_addr=GATEWAY_IP,
            local_id=GATEWAY_ID,
            remote_id=CLIENT_ID,
            psk="",
            ike_proposal=IKE,
            esp_proposal=ESP,
            pool=POOL,
            local_ts=OFFICE,
            name="rw",
            cert="gw.pem",
        ),
        files=_swan_files(pki.ca, pki.gateway, "gw"),
        fragment_size=fragment_size,
    )
    return swan


def _our_initiator(lab: Lab, pki: Pki, client: Issued, chain: tuple[Issued, ...]) -> DriverProcess:
    return DriverProcess(
        lab.laptop,
        [
            *("--role", "initiator", "--local", LAPTOP_IP, "--remote", GATEWAY_IP),
            *("--local-id", CLIENT_ID, "--remote-id", GATEWAY_ID),
            *_driver_credentials(lab, pki.ca, client, "rw", chain),
            *("--ike", IKE, "--esp", ESP, "--force-encap", "--lifetime", "20"),
        ],
    )


def _established(driver: DriverProcess, swan: StrongSwan) -> None:
    try:
        established = driver.wait_for("ike_sa_established", "ike_sa_failed", timeout=10)
        assert established["event"] == "ike_sa_established", established
        driver.wait_for("child_sa_established", timeout=2)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{swan.logs()}") from None


def _assert_established(list_sas: str, name: str) -> None:
    assert re.search(rf"^{name}: #\d+, ESTABLISHED, IKEv2", list_sas, re.MULTILINE), list_sas
    assert re.search(r"office: #\d+, reqid \d+, INSTALLED, TUNNEL-in-UDP", list_sas), list_sas


def test_strongswan_gateway_fragments_its_ike_auth_response(lab: Lab, pki: Pki) -> None:
    """charon splits ``<-- IKE_AUTH`` into EF(n/m); our initiator reassembles it.

    [laptop] ike_driver (ECDSA)  ===>  [gw] charon fragment_size = 576
             HDR, SK {IDi, CERT, ...}  -->
                       <-- HDR, SKF(1/m) {IDr, CERT, AUTH, ...}, ..., HDR, SKF(m/m)
    """
    swan = _gateway_swan(lab, pki, SWAN_FRAGMENT_SIZE)
    driver = _our_initiator(lab, pki, pki.client, ())
    _established(driver, swan)
    _assert_established(swan.list_sas(), "rw")
    log = swan.log.read_text(errors="replace")
    split = re.search(r"splitting IKE message \((\d+) bytes\) into (\d+) fragments", log)
    assert split is not None, log
    assert int(split.group(2)) >= 2, log
    assert re.search(r"generating IKE_AUTH response 1 \[ EF\(1/\d+\) \]", log), log
    # our request was small enough to go whole (an SK payload, not EF)
    assert re.search(r"parsed IKE_AUTH request 1 \[ IDi CERT", log), log
    assert driver.stop() == 0


def test_our_initiator_fragments_its_ike_auth_request(lab: Lab, pki: Pki) -> None:
    """Our 2.1 kB IKE_AUTH (RSA leaf + RSA intermediate) goes in SKF fragments.

    [laptop] ike_driver (RSA chain, fragment_size 1280)  ===>  [gw] charon
             HDR, SKF(1/2) {IDi, CERT, CERT, ...}, HDR, SKF(2/2)  -->
    """
    swan = _gateway_swan(lab, pki, None)
    driver = _our_initiator(lab, pki, pki.rsa_client, (pki.intermediate,))
    _established(driver, swan)
    _assert_established(swan.list_sas(), "rw")
    log = swan.log.read_text(errors="replace")
    # charon's receiver threads may take the two fragments in either order.
    waiting = re.search(r"received fragment #([12]) of 2, waiting for complete IKE message", log)
    assert waiting, log
    other = "2" if waiting.group(1) == "1" else "1"
    assert re.search(
        rf"received fragment #{other} of 2, reassembled fragmented IKE message \(\d+ bytes\)",
        log,
    ), log
    assert re.search(r"parsed IKE_AUTH request 1 \[ IDi CERT CERT", log), log
    assert re.search(r"authentication of 'rw\.lab\.example' with RSA\S* successful", log), log
    assert driver.stop() == 0


def test_strongswan_initiator_fragments_its_ike_auth_request(lab: Lab, pki: Pki) -> None:
    """charon splits ``IKE_AUTH -->``; our responder reassembles the request.

    [laptop] charon fragment_size = 576  ===>  [gw] ike_driver responder
             HDR, SKF(1/n) {IDi, CERT, ...}, ..., HDR, SKF(n/n)  -->
    """
    driver = DriverProcess(
        lab.gw,
        [
            *("--role", "responder", "--local", GATEWAY_IP, "--local-id", GATEWAY_ID),
            *_driver_credentials(lab, pki.ca, pki.gateway, "gw"),
            *("--pool-start", "10.99.100.7", "--subnet", OFFICE, "--dns", "10.99.0.53"),
            *("--ike", IKE, "--esp", ESP, "--force-encap", "--lifetime", "20"),
        ],
    )
    driver.wait_for("ready")
    swan = StrongSwan(lab.laptop, lab.tmp_path / "swan-laptop")
    swan.start(
        SwanConnection(
            local_addr=LAPTOP_IP,
            remote_addr=GATEWAY_IP,
            local_id=CLIENT_EMAIL,
            remote_id=GATEWAY_ID,
            psk="",
            ike_proposal=IKE,
            esp_proposal=ESP,
            vips="0.0.0.0",
            remote_ts=OFFICE,
            name="home",
            cert="rw.pem",
            send_cert="always",
        ),
        files=_swan_files(pki.ca, pki.client, "rw"),
        fragment_size=SWAN_FRAGMENT_SIZE,
    )
    error = swan.initiate()
    assert error is None, f"{error}\n{driver.collect()}\n{swan.logs()}"
    established = driver.wait_for("ike_sa_established", timeout=2)
    assert established["remote_id"] == CLIENT_EMAIL
    _assert_established(swan.list_sas(), "home")
    log = swan.log.read_text(errors="replace")
    assert re.search(r"splitting IKE message \(\d+ bytes\) into \d+ fragments", log), log
    assert re.search(r"generating IKE_AUTH request 1 \[ EF\(1/\d+\) \]", log), log
    assert driver.stop() == 0
