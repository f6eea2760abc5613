"""Certificate users of outpost-loadtest: the issuer, the load-test profile keys, the report.

The issuer's certificates must be what a gateway accepts (our verifier and
an in-memory IKE_AUTH with both sides signing stand in for the concentrator),
name exactly the client's identity, and cost little. The profile keys
``certificate_ca``/``certificate_ca_key`` are the load tester's alone: the
normal client refuses them, and the loaded profile never signs as the CA.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from client.profile import ProfileError, load_profile
from common.ike.certs import CertificateRejected, CertificateVerifier, identity_matches
from common.ike.constants import IdType
from common.ike.events import ChildSaEstablished, IkeSaEstablished
from common.ike.policy import Identity
from loadtest.issuer import CertificateIssuer, IssuerError
from loadtest.profile import load_loadtest_profile
from loadtest.stats import Report, Tally
from tests.helpers.ike_pair import GATEWAY_ID, Credentials, MemoryPolicy, establish, ike_pair
from tests.helpers.pki import Issued, make_ca, make_leaf

NOW = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca("Loadtest CA", not_before=NOW - DAY, not_after=NOW + 365 * DAY)


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("identity", "san_type"),
    [
        (Identity.rfc822("user-17@loadtest"), x509.RFC822Name),
        (Identity.fqdn("host-17.loadtest"), x509.DNSName),
        (Identity(IdType.ID_IPV4_ADDR, ipaddress.IPv4Address("10.1.2.3").packed), x509.IPAddress),
    ],
)
def test_issued_certificate_verifies_and_names_exactly_its_identity(
    ca: Issued, identity: Identity, san_type: type[x509.GeneralName]
) -> None:
    issuer = CertificateIssuer(ca.certificate, ca.key, now=NOW)
    issued = issuer.issue(identity)
    leaf = CertificateVerifier([ca.certificate]).verify(der(issued.certificate), [], now=NOW)
    assert identity_matches(leaf, identity.id_type, identity.data)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert len(list(sans)) == 1
    assert isinstance(next(iter(sans)), san_type)
    other = Identity.rfc822("user-18@loadtest")
    assert not identity_matches(leaf, other.id_type, other.data)
    key = issued.key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert key.public_key() == leaf.public_key()
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert issuer.issued == 1
    assert 0 < issuer.seconds == issuer.last_seconds


def test_issued_certificates_are_fresh_per_client_and_valid_around_now(ca: Issued) -> None:
    issuer = CertificateIssuer(ca.certificate, ca.key, now=NOW)
    first = issuer.issue(Identity.rfc822("user-1@loadtest"))
    again = issuer.issue(Identity.rfc822("user-1@loadtest"))
    assert first.certificate.serial_number != again.certificate.serial_number
    assert first.key.public_key() != again.key.public_key()
    leaf = first.certificate
    assert leaf.not_valid_before_utc < NOW < leaf.not_valid_after_utc
    verifier = CertificateVerifier([ca.certificate])
    with pytest.raises(CertificateRejected):
        verifier.verify(der(leaf), [], now=NOW + 30 * DAY)  # the default lifetime is a week


def test_a_certificate_from_another_ca_is_refused(ca: Issued) -> None:
    stranger = make_ca("Another CA", not_before=NOW - DAY, not_after=NOW + DAY)
    issued = CertificateIssuer(stranger.certificate, stranger.key, now=NOW).issue(
        Identity.rfc822("user-1@loadtest")
    )
    with pytest.raises(CertificateRejected):
        CertificateVerifier([ca.certificate]).verify(der(issued.certificate), [], now=NOW)


def test_issuer_refuses_a_leaf_or_a_key_that_does_not_match(ca: Issued) -> None:
    leaf = make_leaf(ca, not_before=NOW - DAY, not_after=NOW + DAY)
    with pytest.raises(IssuerError, match="not a CA"):
        CertificateIssuer(leaf.certificate, leaf.key, now=NOW)
    with pytest.raises(IssuerError, match="does not match"):
        CertificateIssuer(ca.certificate, leaf.key, now=NOW)


def test_issued_certificate_authenticates_ike_auth_with_a_signing_gateway(ca: Issued) -> None:
    """Both sides sign (RFC 7427); the responder trusts the CA and admits whom it vouches for."""
    client_id = Identity.rfc822("user-42@loadtest")
    issued = CertificateIssuer(ca.certificate, ca.key, now=NOW).issue(client_id)
    gateway = make_leaf(
        ca,
        "gateway",
        dns_names=[GATEWAY_ID.data.decode()],
        not_before=NOW - DAY,
        not_after=NOW + DAY,
        eku=(ExtendedKeyUsageOID.SERVER_AUTH,),
    )
    pair = ike_pair(
        psk=b"",
        client_id=client_id,
        policy=MemoryPolicy(psks={}, cas=(ca.certificate,)),
        initiator_credentials=Credentials(issued.key, issued.certificate, cas=(ca.certificate,)),
        responder_credentials=Credentials(gateway.key, gateway.certificate),
        validation_time=NOW,
    )
    client_events, gateway_events = establish(pair)
    for side in (client_events, gateway_events):
        assert any(isinstance(event, IkeSaEstablished) for event in side), side
        assert any(isinstance(event, ChildSaEstablished) for event in side), side


# --- the load-test profile ------------------------------------------------------------


def write_ca(directory: Path, ca: Issued) -> None:
    ca.write_pem(directory / "ca.pem", directory / "ca.key")
    (directory / "ca.key").chmod(0o600)


def profile_text(auth: str) -> str:
    return f"""\
[gateway]
address = "192.0.2.1"
identity = "vpn.lab.example"
[auth]
id = "user-{{n}}@loadtest"
{auth}
"""


CERT_AUTH = 'certificate_ca = "ca.pem"\ncertificate_ca_key = "ca.key"\nca = "ca.pem"\n'


def test_profile_with_an_issuing_ca_loads_without_signing_as_the_ca(
    tmp_path: Path, ca: Issued
) -> None:
    write_ca(tmp_path, ca)
    path = tmp_path / "load.toml"
    path.write_text(profile_text(CERT_AUTH))
    loaded = load_loadtest_profile(path)
    assert loaded.issuing_ca is not None
    assert loaded.issuing_ca.certificate == ca.certificate
    auth = loaded.profile.auth
    assert auth.certificate is None
    assert auth.private_key is None
    assert auth.psk is None
    assert auth.ca_certificates == (ca.certificate,)
    assert loaded.profile.identity_for(3) == Identity.rfc822("user-3@loadtest")
    assert loaded.warnings == ()


def test_the_normal_client_refuses_the_issuing_ca_keys(tmp_path: Path, ca: Issued) -> None:
    write_ca(tmp_path, ca)
    path = tmp_path / "load.toml"
    path.write_text(profile_text(CERT_AUTH).replace("user-{n}", "alice"))
    # Refused whichever check comes first (no PSK nor certificate of its own, unknown key).
    with pytest.raises(ProfileError, match=r"auth\.(psk|certificate_ca)"):
        load_profile(path)


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ('certificate_ca = "ca.pem"\nca = "ca.pem"', "auth.certificate_ca_key: missing"),
        (CERT_AUTH + 'psk = "0123456789abcdef"', "auth.psk: psk and certificate_ca"),
        ('certificate_ca = "ca.pem"\ncertificate_ca_key = "ca.key"', "auth.ca: missing"),
        (CERT_AUTH.replace('"ca.key"', '"other.key"'), "auth.certificate_ca_key: does not match"),
        (CERT_AUTH.replace('certificate_ca = "ca.pem"', 'certificate_ca = "leaf.pem"'), "not a CA"),
        (CERT_AUTH + "typo = 1", "auth.typo"),
    ],
)
def test_bad_issuing_ca_settings_are_one_line_errors(
    tmp_path: Path, ca: Issued, auth: str, message: str
) -> None:
    write_ca(tmp_path, ca)
    leaf = make_leaf(ca, not_before=NOW - DAY, not_after=NOW + DAY)
    leaf.write_pem(tmp_path / "leaf.pem")
    make_ca("Other").write_pem(tmp_path / "other.pem", tmp_path / "other.key")
    if "leaf.pem" in auth:
        auth = auth.replace('"ca.key"', '"leaf.key"')
        leaf.write_pem(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    path = tmp_path / "load.toml"
    path.write_text(profile_text(auth))
    with pytest.raises(ProfileError, match=message) as error:
        load_loadtest_profile(path)
    assert "\n" not in str(error.value)
    assert "PRIVATE KEY" not in str(error.value)


def test_a_psk_profile_loads_as_before(tmp_path: Path) -> None:
    path = tmp_path / "load.toml"
    path.write_text(profile_text('psk = "0123456789abcdef"'))
    loaded = load_loadtest_profile(path)
    assert loaded.issuing_ca is None
    assert loaded.profile.auth.psk == b"0123456789abcdef"


def test_report_gives_the_cost_per_issued_certificate() -> None:
    tally = Tally(certificates_issued=4, certificate_issue_s=0.002)
    report = Report(clients=4, tally=tally, ramp_s=1.0, hold_s=1.0)
    assert report.to_json()["certificates"] == {"issued": 4, "mean_issue_ms": 0.5}
    assert "certificates  issued 4  0.500 ms each" in report.to_text()
    assert Report(clients=1, tally=Tally(), ramp_s=1, hold_s=1).to_json()["certificates"] is None
