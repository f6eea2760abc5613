"""IKE_AUTH with ECDSA P-256 certificates between our IkeSession and strongSwan 5.9.8.

The topology, the driver and charon are those of ``test_ike_strongswan.py``
(PSK); only the authentication differs: both ends sign their AUTH (RFC 7427
DIGITAL_SIGNATURE with ECDSA, strongSwan ``auth = pubkey``) and send their
end-entity certificate in CERT; each trusts one CA::

    "Outpost Interop CA" --+-- gw.lab.example   (dNSName SAN, serverAuth)
                           +-- rw.lab.example   (dNSName + rfc822Name rw@lab.example
                                                 SANs, clientAuth)
    "Rogue Interop CA" ------- rw.lab.example   (same SANs, trusted by nobody)

Everything is made with tests/helpers/pki.py and written as PEM: into
strongSwan's ``swanctl/{x509ca,x509,private}`` and into files the driver
reads (``--ca``, ``--cert``, ``--key``). strongSwan checks validity against
the wall clock, so the certificates are valid around now, and the driver
passes the wall clock's UTC time as ``validation_time``.

Our initiator sends IDi = ID_FQDN rw.lab.example; strongSwan's initiator
sends IDi = ID_RFC822_ADDR rw@lab.example (both named by the same
certificate, RFC 4945 3.1).
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

pytestmark = [pytest.mark.privileged, pytest.mark.needs_tool("/usr/lib/ipsec/charon")]


@dataclass(frozen=True)
class Pki:
    ca: Issued
    gateway: Issued
    client: Issued
    rogue_client: Issued  # same names as ``client``, issued by a CA nobody trusts


@pytest.fixture(scope="module")
def pki() -> Pki:
    # strongSwan checks validity against the wall clock: valid from yesterday, for 30 days
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    end = start + datetime.timedelta(days=31)
    ca = make_ca("Outpost Interop CA", not_before=start)
    rogue = make_ca("Rogue Interop CA", not_before=start)

    def client(issuer: Issued) -> Issued:
        return make_leaf(
            issuer,
            CLIENT_ID,
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
    return Pki(ca, gateway, client(ca), client(rogue))


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
    """strongSwan's trust anchor, certificate and key (``certs = NAME.pem``)."""
    return {
        "x509ca/ca.pem": ca.pem,
        f"x509/{name}.pem": own.pem,
        f"private/{name}.pem": own.key_pem,
    }


def _driver_credentials(lab: Lab, ca: Issued, own: Issued, name: str) -> list[str]:
    """``--ca/--cert/--key`` arguments for PEM files written under ``tmp_path/driver``."""
    directory = lab.tmp_path / "driver"
    own.write_pem(directory / f"{name}.pem", directory / f"{name}.key")
    ca.write_pem(directory / "ca.pem")
    return [
        *("--ca", str(directory / "ca.pem")),
        *("--cert", str(directory / f"{name}.pem")),
        *("--key", str(directory / f"{name}.key")),
    ]


def _gateway_swan(lab: Lab, pki: Pki) -> StrongSwan:
    """strongSwan as the concentrator: signs as gw.lab.example, wants rw.lab.example."""
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
    )
    return swan


def _laptop_swan(lab: Lab, pki: Pki, client: Issued, *, send_cert: str | None = None) -> StrongSwan:
    """strongSwan as the road warrior: signs as rw@lab.example with ``client``.

    ``send_cert`` defaults to charon's own default (``ifasked``): it sends CERT
    only after a CERTREQ, so this proves our responder asks for the client's
    certificate in its IKE_SA_INIT response (RFC 7296 1.2 ``HDR, SAr1, KEr, Nr,
    [CERTREQ]``).
    """
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
            send_cert=send_cert,
        ),
        files=_swan_files(pki.ca, client, "rw"),
    )
    return swan


def _our_initiator(lab: Lab, pki: Pki, client: Issued) -> DriverProcess:
    return DriverProcess(
        lab.laptop,
        [
            *("--role", "initiator", "--local", LAPTOP_IP, "--remote", GATEWAY_IP),
            *("--local-id", CLIENT_ID, "--remote-id", GATEWAY_ID),
            *_driver_credentials(lab, pki.ca, client, "rw"),
            *("--ike", IKE, "--esp", ESP, "--force-encap", "--lifetime", "20"),
        ],
    )


def _our_responder(lab: Lab, pki: Pki) -> DriverProcess:
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
    return driver


def _assert_established(list_sas: str, name: str) -> None:
    assert re.search(rf"^{name}: #\d+, ESTABLISHED, IKEv2", list_sas, re.MULTILINE), list_sas
    assert "AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519" in list_sas, list_sas
    assert re.search(r"office: #\d+, reqid \d+, INSTALLED, TUNNEL-in-UDP", list_sas), list_sas


def test_our_initiator_to_strongswan_gateway_with_certificates(lab: Lab, pki: Pki) -> None:
    """Our ECDSA-signing initiator gets an IKE SA, a Child SA and a pool address.

    [laptop] ike_driver --cert rw           ===>  [gw] charon auth = pubkey, certs = gw.pem
    IKE_AUTH: {IDi, CERT, CERTREQ, IDr, AUTH(14), CP, SA, TSi, TSr} -->
          <-- {IDr, CERT, AUTH(14), CP(10.99.100.x), SA, TSi, TSr}
    """
    swan = _gateway_swan(lab, pki)
    driver = _our_initiator(lab, pki, pki.client)
    try:
        established = driver.wait_for("ike_sa_established", "ike_sa_failed", timeout=10)
        assert established["event"] == "ike_sa_established", established
        assert established["remote_id"] == GATEWAY_ID
        address = driver.wait_for("address_assigned", timeout=2)["address"]
        child = driver.wait_for("child_sa_established", timeout=2)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{swan.logs()}") from None
    assert address.startswith("10.99.100.")
    assert child["local_ts"] == [f"{address}-{address}"]
    assert child["remote_ts"] == ["10.99.0.0-10.99.0.255"]

    sas = swan.list_sas()
    _assert_established(sas, "rw")
    assert f"remote 'rw.lab.example' @ {LAPTOP_IP}[4500] [{address}]" in sas, sas
    log = swan.log.read_text(errors="replace")
    assert 'using trusted ca certificate "O=Outpost Test, CN=Outpost Interop CA"' in log, log
    assert re.search(r"authentication of 'rw\.lab\.example' with ECDSA\S* successful", log), log
    assert re.search(
        r"parsed IKE_AUTH request 1 \[ IDi CERT (N\(INIT_CONTACT\) )?(CERTREQ )?IDr AUTH", log
    ), log
    assert driver.stop() == 0


def test_strongswan_initiator_to_our_responder_with_certificates(lab: Lab, pki: Pki) -> None:
    """strongSwan signing as rw@lab.example gets the address our CertificatePolicy leases.

    [laptop] charon auth = pubkey, id = rw@lab.example  ===>  [gw] ike_driver --cert gw
                                                                   --ca (vouched identities)
    """
    driver = _our_responder(lab, pki)
    swan = _laptop_swan(lab, pki, pki.client)
    error = swan.initiate()
    assert error is None, f"{error}\n{driver.collect()}\n{swan.logs()}"
    established = driver.wait_for("ike_sa_established", timeout=2)
    assert established["remote_id"] == CLIENT_EMAIL
    assert established["local_id"] == GATEWAY_ID
    child = driver.wait_for("child_sa_established", timeout=2)
    assert child["remote_ts"] == ["10.99.100.7-10.99.100.7"]
    assert child["local_ts"] == ["10.99.0.0-10.99.0.255"]

    sas = swan.list_sas()
    _assert_established(sas, "home")
    assert f"local  '{CLIENT_EMAIL}' @ {LAPTOP_IP}[4500] [10.99.100.7]" in sas, sas
    assert f"remote '{GATEWAY_ID}' @ {GATEWAY_IP}[4500]" in sas, sas
    log = swan.log.read_text(errors="replace")
    assert re.search(r"authentication of 'gw\.lab\.example' with ECDSA\S* successful", log), log
    assert driver.stop() == 0


def test_our_initiator_with_untrusted_certificate_is_refused(lab: Lab, pki: Pki) -> None:
    """strongSwan finds no trusted key for our rogue-CA certificate: AUTHENTICATION_FAILED.

    [laptop] ike_driver --cert rw (Rogue CA) ===> [gw] charon <-- N(AUTHENTICATION_FAILED)
    """
    swan = _gateway_swan(lab, pki)
    driver = _our_initiator(lab, pki, pki.rogue_client)
    failed = driver.wait_for("ike_sa_established", "ike_sa_failed", timeout=10)
    assert failed["event"] == "ike_sa_failed", failed
    assert failed["notify"] == "AUTHENTICATION_FAILED", failed
    assert driver.process.wait(timeout=5) == 1
    assert "ESTABLISHED" not in swan.list_sas()
    log = swan.log.read_text(errors="replace")
    assert "no trusted ECDSA public key found for 'rw.lab.example'" in log, swan.logs()
    assert "generating IKE_AUTH response 1 [ N(AUTH_FAILED) ]" in log, swan.logs()


def test_strongswan_initiator_with_untrusted_certificate_is_refused(lab: Lab, pki: Pki) -> None:
    """Our responder refuses strongSwan's rogue-CA certificate; its --initiate fails.

    [laptop] charon certs = rw.pem (Rogue CA) ===> [gw] ike_driver --> N(AUTHENTICATION_FAILED)
    """
    driver = _our_responder(lab, pki)
    swan = _laptop_swan(lab, pki, pki.rogue_client)
    error = swan.initiate(timeout_s=5)
    assert error is not None, swan.list_sas()
    failed = driver.wait_for("ike_sa_established", "ike_sa_failed", timeout=5)
    assert failed["event"] == "ike_sa_failed", failed
    assert failed["notify"] == "AUTHENTICATION_FAILED", failed
    # refused for its chain, not for a missing CERT or a bad signature
    assert failed["reason"].startswith(f"peer {CLIENT_EMAIL}: "), failed
    assert "(untrusted issuer)" in failed["reason"], failed
    assert "Rogue Interop CA" in failed["reason"], failed
    assert "ESTABLISHED" not in swan.list_sas()
    log = swan.log.read_text(errors="replace")
    assert re.search(r"generating IKE_AUTH request 1 \[ IDi CERT ", log), swan.logs()
    assert "received AUTHENTICATION_FAILED notify error" in log, swan.logs()
