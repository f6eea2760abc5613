"""The strongSwan 5.9.8 captures, end to end through our codec and SK protection.

For both captures (AES-GCM-256 and ChaCha20-Poly1305, tests/vectors/strongswan/README.md):

- every IKE message decodes with ``decode_message`` (port 500 as is, port 4500
  after the RFC 3948 non-ESP marker) and its header matches the JSON account;
- every SK payload opens with ``open_sk`` under the JSON's keys: SK_ei when the
  sender is the original initiator (I flag), else SK_er (RFC 7296 2.14), of the
  IKE SA the JSON names (frames 27/28 use the rekeyed SA);
- the plaintext decodes with ``decode_payload_chain`` into the payloads each
  exchange carries (RFC 7296 1.2, 1.3.2, 1.3.3, 1.4.1, 2.19), and the values
  inside agree with the JSON (child SPIs, rekey nonces and KE data, lease);
- re-encoding the decoded inner chain gives the decrypted plaintext byte for byte.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

import pytest

from common.ike.constants import (
    ConfigType,
    ConfigurationAttributeType,
    ExchangeType,
    NotifyType,
    PayloadType,
    ProtocolId,
)
from common.ike.ike_suites import IkeSuite, ike_suite_for_transforms
from common.ike.message import (
    IKE_HEADER_LEN,
    EncryptedPayload,
    IkeMessage,
    Payload,
    decode_message,
    decode_payload_chain,
    encode_message,
    encode_payload_chain,
)
from common.ike.payloads import (
    Authentication,
    ConfigurationPayload,
    Delete,
    IdInitiator,
    IdResponder,
    KeyExchange,
    Nonce,
    Notify,
    SecurityAssociation,
    TsInitiator,
    TsResponder,
)
from common.ike.payloads.ts import IpAddress, TrafficSelector
from common.ike.protection import IntegrityCheckFailed, open_sk
from tests.helpers.vectors import load_json_vectors, udp_datagrams, vector_path

CAPTURES = ("strongswan-gcm-psk.json", "strongswan-chacha-psk.json")
NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 2.2
NAT_T_PORT = 4500
EXPECTED_FRAMES = (1, 2, 3, 4, 11, 12, 13, 14, 19, 20, 21, 22, 27, 28)

P = TypeVar("P")


@dataclass(frozen=True)
class Captured:
    """One IKE message of a capture, decoded, with its JSON account."""

    frame: int
    data: bytes  # without the non-ESP marker
    message: IkeMessage
    info: dict[str, Any]


@dataclass(frozen=True)
class Opened:
    """A protected message and what its SK payload held."""

    captured: Captured
    first_payload: int
    plaintext: bytes
    payloads: list[Payload]


@cache
def vectors_of(name: str) -> dict[str, Any]:
    return load_json_vectors(f"strongswan/{name}")


def suite_of(name: str) -> IkeSuite:
    transforms = {t["type"]: t for t in vectors_of(name)["ike_sas"][0]["transforms_iana"]}
    suite = ike_suite_for_transforms(
        transforms["ENCR"]["id"], transforms["ENCR"]["key_length"], None
    )
    assert suite is not None
    return suite


def captured_messages(name: str) -> list[Captured]:
    vectors = vectors_of(name)
    by_frame = {info["frame"]: info for info in vectors["ike_messages"]}
    found: list[Captured] = []
    for datagram in udp_datagrams(vector_path("strongswan", vectors["pcap"])):
        info = by_frame.get(datagram.frame)
        if info is None:
            continue
        data = datagram.payload
        if NAT_T_PORT in (datagram.sport, datagram.dport):
            assert data.startswith(NON_ESP_MARKER), datagram.frame
            data = data[len(NON_ESP_MARKER) :]
        found.append(Captured(datagram.frame, data, decode_message(data), info))
    return found


def opened_messages(name: str) -> dict[int, Opened]:
    """Every protected message of ``name``, by frame number."""
    vectors = vectors_of(name)
    suite = suite_of(name)
    opened: dict[int, Opened] = {}
    for captured in captured_messages(name):
        sk = captured.message.get(EncryptedPayload)
        if sk is None:
            continue
        ike_sa = vectors["ike_sas"][captured.info["ike_sa"]]
        # RFC 7296 2.14: the original initiator's messages use SK_ei, the responder's SK_er;
        # the I flag says which one sent it (RFC 7296 3.1).
        sender_is_initiator = captured.message.header.initiator
        assert sender_is_initiator == captured.info["sender_is_original_initiator"]
        sk_e = bytes.fromhex(ike_sa["sk_ei"] if sender_is_initiator else ike_sa["sk_er"])
        sk_a = bytes.fromhex(ike_sa["sk_ai"] if sender_is_initiator else ike_sa["sk_ar"])
        # SK is the only payload, so its generic header follows the IKE header.
        assert captured.message.payloads == (sk,)
        first, plaintext = open_sk(captured.data, IKE_HEADER_LEN, suite, sk_e, sk_a)
        assert first == sk.first_payload
        payloads = decode_payload_chain(first, plaintext)
        opened[captured.frame] = Opened(captured, first, plaintext, payloads)
    return opened


def kinds(payloads: Sequence[Payload]) -> list[str]:
    """Payload names in wire order, a Notify shown as ``N(<type>)``."""
    names: list[str] = []
    for payload in payloads:
        if isinstance(payload, Notify):
            names.append(f"N({payload.notify_type})")
        else:
            names.append(type(payload).__name__)
    return names


def only(payloads: Sequence[Payload], kind: type[P]) -> P:
    matches = [payload for payload in payloads if isinstance(payload, kind)]
    assert len(matches) == 1, kinds(payloads)
    return matches[0]


def ranges(payload: TsInitiator | TsResponder) -> list[tuple[IpAddress, IpAddress]]:
    selectors = [s for s in payload.selectors if isinstance(s, TrafficSelector)]
    assert len(selectors) == len(payload.selectors), payload
    return [(s.start_address, s.end_address) for s in selectors]


def in_order(payloads: Sequence[Payload], *expected: type) -> None:
    """Each of ``expected`` appears exactly once, in that relative order."""
    positions = []
    for kind in expected:
        indices = [i for i, payload in enumerate(payloads) if isinstance(payload, kind)]
        assert len(indices) == 1, (kind.__name__, kinds(payloads))
        positions.append(indices[0])
    assert positions == sorted(positions), kinds(payloads)


# --- every message --------------------------------------------------------------------------


@pytest.mark.parametrize("name", CAPTURES)
def test_every_message_decodes_and_matches_the_account(name: str) -> None:
    captured = captured_messages(name)
    assert [c.frame for c in captured] == list(EXPECTED_FRAMES)
    for c in captured:
        header = c.message.header
        assert header.exchange_type == ExchangeType[c.info["exchange"]], c.frame
        assert header.message_id == c.info["mid"]
        assert header.response == c.info["is_response"]
        assert header.spi_i.hex() == c.info["spi_i"]
        assert header.spi_r.hex() == c.info["spi_r"]
        assert encode_message(c.message) == c.data
        if header.exchange_type == ExchangeType.IKE_SA_INIT:
            assert c.message.get(EncryptedPayload) is None
        else:
            assert [p.payload_type for p in c.message.payloads] == [PayloadType.SK]


@pytest.mark.parametrize("name", CAPTURES)
def test_every_sk_payload_opens_and_reencodes_byte_for_byte(name: str) -> None:
    opened = opened_messages(name)
    assert sorted(opened) == [f for f in EXPECTED_FRAMES if f > 2]
    for frame, item in opened.items():
        first, chain = encode_payload_chain(item.payloads)
        assert chain == item.plaintext, frame
        if item.payloads:
            assert first == item.first_payload
        else:
            # An empty INFORMATIONAL response (RFC 7296 1.4.1): SK names no inner payload.
            assert item.first_payload == PayloadType.NO_NEXT_PAYLOAD
            assert item.plaintext == b""


@pytest.mark.parametrize("name", CAPTURES)
def test_wrong_direction_key_does_not_open(name: str) -> None:
    vectors = vectors_of(name)
    suite = suite_of(name)
    ike_sa = vectors["ike_sas"][0]
    auth_request = next(c for c in captured_messages(name) if c.frame == 3)
    with pytest.raises(IntegrityCheckFailed):
        open_sk(auth_request.data, IKE_HEADER_LEN, suite, bytes.fromhex(ike_sa["sk_er"]), b"")


# --- what each exchange carries -----------------------------------------------------------


@pytest.mark.parametrize("name", CAPTURES)
def test_ike_auth_request(name: str) -> None:
    vectors = vectors_of(name)
    payloads = opened_messages(name)[3].payloads
    # HDR, SK {IDi, [N(INITIAL_CONTACT)], [IDr], AUTH, CP(CFG_REQUEST), SAi2, TSi, TSr, N...}
    in_order(
        payloads,
        IdInitiator,
        IdResponder,
        Authentication,
        ConfigurationPayload,
        SecurityAssociation,
        TsInitiator,
        TsResponder,
    )
    assert only(payloads, IdInitiator).data == vectors["initiator"]["id"].encode()
    assert only(payloads, IdResponder).data == vectors["responder"]["id"].encode()
    cp = only(payloads, ConfigurationPayload)
    assert cp.cfg_type == ConfigType.CFG_REQUEST
    assert ConfigurationAttributeType.INTERNAL_IP4_ADDRESS in [a.attr_type for a in cp.attributes]
    sa = only(payloads, SecurityAssociation)
    child = vectors["child_sas"][0]
    assert [p.protocol_id for p in sa.proposals] == [ProtocolId.ESP]
    assert sa.proposals[0].spi.hex() == child["spi_i"]
    tsr = only(payloads, TsResponder)
    subnet = ipaddress.IPv4Network(vectors["responder"]["traffic_selector"])
    assert ranges(tsr) == [(subnet.network_address, subnet.broadcast_address)]


@pytest.mark.parametrize("name", CAPTURES)
def test_ike_auth_response(name: str) -> None:
    vectors = vectors_of(name)
    payloads = opened_messages(name)[4].payloads
    # HDR, SK {IDr, AUTH, CP(CFG_REPLY), SAr2, TSi, TSr, N...}
    in_order(
        payloads,
        IdResponder,
        Authentication,
        ConfigurationPayload,
        SecurityAssociation,
        TsInitiator,
        TsResponder,
    )
    assert not any(isinstance(p, IdInitiator) for p in payloads)
    assert only(payloads, IdResponder).data == vectors["responder"]["id"].encode()
    cp = only(payloads, ConfigurationPayload)
    assert cp.cfg_type == ConfigType.CFG_REPLY
    addresses = [
        ipaddress.IPv4Address(a.value)
        for a in cp.attributes
        if a.attr_type == ConfigurationAttributeType.INTERNAL_IP4_ADDRESS
    ]
    virtual_ip = ipaddress.IPv4Address(vectors["initiator"]["virtual_ip"])
    assert addresses == [virtual_ip] == [ipaddress.IPv4Address("10.99.100.1")]
    sa = only(payloads, SecurityAssociation)
    assert len(sa.proposals) == 1
    assert sa.proposals[0].spi.hex() == vectors["child_sas"][0]["spi_r"]
    tsi = only(payloads, TsInitiator)
    assert ranges(tsi) == [(virtual_ip, virtual_ip)]


@pytest.mark.parametrize("name", CAPTURES)
def test_child_sa_rekey(name: str) -> None:
    vectors = vectors_of(name)
    old, new = vectors["child_sas"]
    opened = opened_messages(name)
    request, response = opened[11].payloads, opened[12].payloads
    # RFC 7296 1.3.3: HDR, SK {N(REKEY_SA), SA, Ni, [KEi], TSi, TSr} -->
    in_order(request, Notify, SecurityAssociation, Nonce, TsInitiator, TsResponder)
    rekey = only(request, Notify)
    assert rekey.notify_type == NotifyType.REKEY_SA
    assert rekey.protocol_id == ProtocolId.ESP
    assert rekey.spi.hex() == old["spi_i"]  # the SPI the initiator receives on (inbound)
    assert only(request, SecurityAssociation).proposals[0].spi.hex() == new["spi_i"]
    assert only(request, Nonce).data.hex() == new["ni"]
    assert not any(isinstance(p, KeyExchange) for p in request)  # no PFS in this lab
    # <-- HDR, SK {SA, Nr, [KEr], TSi, TSr}
    in_order(response, SecurityAssociation, Nonce, TsInitiator, TsResponder)
    assert only(response, SecurityAssociation).proposals[0].spi.hex() == new["spi_r"]
    assert only(response, Nonce).data.hex() == new["nr"]


@pytest.mark.parametrize("name", CAPTURES)
def test_ike_sa_rekey(name: str) -> None:
    rekeyed = vectors_of(name)["ike_sas"][1]
    opened = opened_messages(name)
    # RFC 7296 1.3.2: HDR, SK {SA, Ni, KEi} -->   <-- HDR, SK {SA, Nr, KEr}
    for frame, side in ((19, "i"), (20, "r")):
        payloads = opened[frame].payloads
        assert kinds(payloads) == ["SecurityAssociation", "Nonce", "KeyExchange"], frame
        proposals = only(payloads, SecurityAssociation).proposals
        assert [p.protocol_id for p in proposals] == [ProtocolId.IKE]
        spi = proposals[0].spi
        assert len(spi) == 8  # an IKE SPI (RFC 7296 3.3.1)
        assert spi.hex() == rekeyed[f"spi_{side}"]
        assert only(payloads, Nonce).data.hex() == rekeyed[f"n{side}"]
        ke = only(payloads, KeyExchange)
        assert ke.group == rekeyed["ke_group"]
        assert ke.data.hex() == rekeyed[f"ke_{side}"]


@pytest.mark.parametrize("name", CAPTURES)
def test_informational_deletes(name: str) -> None:
    vectors = vectors_of(name)
    old = vectors["child_sas"][0]
    opened = opened_messages(name)
    # RFC 7296 1.4.1: deleting office{1}; each side names the SPI it receives on.
    request = only(opened[13].payloads, Delete)
    response = only(opened[14].payloads, Delete)
    assert (request.protocol_id, [s.hex() for s in request.spis]) == (
        ProtocolId.ESP,
        [old["spi_i"]],
    )
    assert (response.protocol_id, [s.hex() for s in response.spis]) == (
        ProtocolId.ESP,
        [old["spi_r"]],
    )
    # Deleting an IKE SA: Delete(IKE) with no SPI, answered by an empty INFORMATIONAL.
    for request_frame, response_frame in ((21, 22), (27, 28)):
        delete = only(opened[request_frame].payloads, Delete)
        assert (delete.protocol_id, delete.spis) == (ProtocolId.IKE, ())
        assert opened[response_frame].payloads == []
    assert opened[27].captured.info["ike_sa"] == 1
