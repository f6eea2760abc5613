"""PSK AUTH (RFC 7296 2.15) against the AUTH payloads strongSwan 5.9.8 put on the wire.

The JSON vectors do not hold the AUTH values, so the test takes them from the
capture itself: it decrypts the IKE_AUTH request and response (frames 3 and 4)
with SK_ei / SK_er (derived here by ``common.ike.keys``, whose values
test_keys.py checks against strongSwan) and walks the payload chain to the AUTH
payload. The decryption and the payload walk are a few lines of ``struct`` and
``cryptography`` written here, independent of the message codec.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from common.ike.auth import (
    KEY_PAD,
    id_payload_body,
    psk_auth,
    signed_octets,
    verify_psk_auth,
)
from common.ike.constants import AuthMethod, IdType, PayloadType, PseudorandomFunction
from common.ike.ike_suites import ike_suite_by_name
from common.ike.keys import IkeSaKeys, derive_ike_sa_keys, prf
from tests.helpers.vectors import load_json_vectors, udp_datagrams, unhex, vector_path

SHA256 = PseudorandomFunction.PRF_HMAC_SHA2_256
NON_ESP_MARKER = bytes(4)  # RFC 3948 2.2: IKE on port 4500 starts with four zero octets


def _datagram(capture: dict[str, Any], frame: int) -> bytes:
    for datagram in udp_datagrams(vector_path("strongswan", capture["pcap"])):
        if datagram.frame == frame:
            return datagram.payload
    raise AssertionError(f"frame {frame} is not a UDP datagram")


def _decrypt_sk(capture: dict[str, Any], message: bytes, sk_e: bytes) -> tuple[int, bytes]:
    """(first inner payload type, plaintext payloads) of a message whose first payload is SK."""
    first_payload = message[16]
    assert first_payload == PayloadType.SK, "IKE_AUTH should be one unfragmented SK payload"
    sk_next, _flags, sk_len = struct.unpack_from("!BBH", message, 28)
    body = message[32 : 28 + sk_len]
    iv, sealed = body[:8], body[8:]
    key, salt = sk_e[:-4], sk_e[-4:]
    aead = AESGCM(key) if capture["suite"]["ike_encr"].startswith("aes") else ChaCha20Poly1305(key)
    # RFC 5282 5.1 / RFC 7634 3: nonce = salt | IV; AAD = IKE header | SK generic header.
    plain = aead.decrypt(salt + iv, sealed, message[:32])
    pad_len = plain[-1]
    return sk_next, plain[: len(plain) - 1 - pad_len]


def _payloads(first: int, data: bytes) -> dict[int, bytes]:
    """Payload type -> body (after the 4-octet generic header), walking Next Payload."""
    found: dict[int, bytes] = {}
    kind, offset = first, 0
    while kind != PayloadType.NO_NEXT_PAYLOAD:
        next_kind, _flags, length = struct.unpack_from("!BBH", data, offset)
        found[kind] = data[offset + 4 : offset + length]
        kind, offset = next_kind, offset + length
    assert offset == len(data)
    return found


def _keys(capture: dict[str, Any]) -> IkeSaKeys:
    sa = capture["ike_sas"][0]
    suite = ike_suite_by_name(capture["suite"]["ike_encr"])
    _, keys = derive_ike_sa_keys(
        SHA256,
        unhex(sa["ni"]),
        unhex(sa["nr"]),
        unhex(sa["g_ir"]),
        unhex(sa["spi_i"]),
        unhex(sa["spi_r"]),
        encr_key_len=suite.sk_e_len,
        integ_key_len=suite.sk_a_len,
    )
    return keys


@pytest.fixture(
    params=["strongswan-gcm-psk.json", "strongswan-chacha-psk.json"], ids=["gcm", "chacha"]
)
def capture(request: pytest.FixtureRequest) -> dict[str, Any]:
    data: dict[str, Any] = load_json_vectors(f"strongswan/{request.param}")
    return data


@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_psk_auth_matches_strongswan(capture: dict[str, Any], role: str) -> None:
    sa = capture["ike_sas"][0]
    keys = _keys(capture)
    psk = unhex(capture["psk"]["hex"])
    if role == "initiator":
        # InitiatorSignedOctets = RealMessage1 | NonceRData | prf(SK_pi, IDi')
        real_message = _datagram(capture, sa["frames"]["request"])
        peer_nonce, sk_p, sk_e = unhex(sa["nr"]), keys.sk_pi, keys.sk_ei
        auth_frame, id_type = sa["frames"]["ike_auth_request"], PayloadType.IDI
    else:
        # ResponderSignedOctets = RealMessage2 | NonceIData | prf(SK_pr, IDr')
        real_message = _datagram(capture, sa["frames"]["response"])
        peer_nonce, sk_p, sk_e = unhex(sa["ni"]), keys.sk_pr, keys.sk_er
        auth_frame, id_type = sa["frames"]["ike_auth_response"], PayloadType.IDR
    assert real_message[:8] == unhex(sa["spi_i"])  # port 500: no non-ESP marker

    wire = _datagram(capture, auth_frame)
    assert wire[:4] == NON_ESP_MARKER
    first, plain = _decrypt_sk(capture, wire[4:], sk_e)
    payloads = _payloads(first, plain)
    auth_body = payloads[PayloadType.AUTH]
    assert auth_body[0] == AuthMethod.SHARED_KEY_MESSAGE_INTEGRITY_CODE
    expected_auth = auth_body[4:]

    # The ID payload body built by hand: ID_FQDN, three zero octets, the name.
    body = id_payload_body(IdType.ID_FQDN, capture[role]["id"].encode())
    assert body == bytes((2, 0, 0, 0)) + capture[role]["id"].encode()
    assert payloads[id_type] == body  # and it is what strongSwan sent

    octets = signed_octets(real_message, peer_nonce, SHA256, sk_p, body)
    assert psk_auth(SHA256, psk, octets) == expected_auth
    assert verify_psk_auth(SHA256, psk, octets, expected_auth)


def test_psk_auth_rejects_wrong_inputs(capture: dict[str, Any]) -> None:
    sa = capture["ike_sas"][0]
    keys = _keys(capture)
    psk = unhex(capture["psk"]["hex"])
    real_message = _datagram(capture, sa["frames"]["request"])
    body = id_payload_body(IdType.ID_FQDN, b"rw.lab.example")
    octets = signed_octets(real_message, unhex(sa["nr"]), SHA256, keys.sk_pi, body)
    good = psk_auth(SHA256, psk, octets)
    assert not verify_psk_auth(SHA256, psk + b"x", octets, good)
    assert not verify_psk_auth(SHA256, psk, octets + b"x", good)
    assert not verify_psk_auth(SHA256, psk, octets, good[:-1] + bytes((good[-1] ^ 1,)))
    assert not verify_psk_auth(SHA256, psk, octets, good[:-1])
    # SK_pr instead of SK_pi, or the wrong nonce, changes the signed octets.
    assert signed_octets(real_message, unhex(sa["nr"]), SHA256, keys.sk_pr, body) != octets
    assert signed_octets(real_message, unhex(sa["ni"]), SHA256, keys.sk_pi, body) != octets


def test_signed_octets_layout() -> None:
    octets = signed_octets(b"MSG", b"NONCE", SHA256, b"skp", b"\x02\x00\x00\x00id")
    assert octets == b"MSG" + b"NONCE" + prf(SHA256, b"skp", b"\x02\x00\x00\x00id")


def test_key_pad_is_the_rfc_constant() -> None:
    assert KEY_PAD == b"Key Pad for IKEv2"  # RFC 7296 2.15, 17 octets, no NUL
    assert psk_auth(SHA256, b"psk", b"o") == prf(SHA256, prf(SHA256, b"psk", KEY_PAD), b"o")


def test_empty_psk_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        psk_auth(SHA256, b"", b"octets")
