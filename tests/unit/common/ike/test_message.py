"""IKE header and payload chain (RFC 7296 3.1, 3.2, 3.14; RFC 7383 2.5), and the strongSwan
captures: every IKE message decodes, matches the JSON account, and re-encodes byte for byte.

https://www.rfc-editor.org/rfc/rfc7296#section-3.1
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from common.ike.constants import ExchangeType, NotifyType, PayloadType, TransformType
from common.ike.errors import (
    InvalidMajorVersionError,
    MalformedMessage,
    RemoteProtocolError,
    UnsupportedCriticalPayloadError,
)
from common.ike.message import (
    IKE_HEADER_LEN,
    EncryptedFragment,
    EncryptedPayload,
    IkeHeader,
    IkeMessage,
    decode_message,
    decode_payload_chain,
    encode_header,
    encode_message,
    encode_payload_chain,
    peek_header,
)
from common.ike.payloads import (
    KeyExchange,
    Nonce,
    Notify,
    SecurityAssociation,
    UnknownPayload,
    VendorId,
)
from tests.helpers.vectors import (
    LINKTYPE_ETHERNET,
    UdpDatagram,
    load_json_vectors,
    udp_datagrams,
    vector_path,
    write_pcap,
)

NON_ESP_MARKER = b"\x00\x00\x00\x00"  # RFC 3948 2.2
HEADER = IkeHeader(
    spi_i=bytes.fromhex("810d6849697aa1fc"),
    spi_r=bytes(8),
    exchange_type=ExchangeType.IKE_SA_INIT,
    message_id=0,
    initiator=True,
    response=False,
)
SUITES = ("gcm", "chacha")


def test_header_layout_rfc_7296_3_1() -> None:
    raw = encode_header(HEADER, PayloadType.SA, 0x1FC)
    assert raw == bytes.fromhex("810d6849697aa1fc 0000000000000000 21 20 22 08 00000000 000001fc")
    response = IkeHeader(b"\x01" * 8, b"\x02" * 8, ExchangeType.INFORMATIONAL, 7, False, True)
    assert encode_header(response, 0, 28)[16:20] == bytes((0, 0x20, 37, 0x20))


def test_empty_message_round_trip_and_peek() -> None:
    message = IkeMessage(HEADER, ())
    data = encode_message(message)
    assert len(data) == IKE_HEADER_LEN
    assert decode_message(data) == message
    assert peek_header(data) == HEADER


def test_whole_message_round_trip() -> None:
    payloads = (
        Notify(NotifyType.COOKIE, b"c" * 16),
        KeyExchange(31, b"k" * 32),
        Nonce(b"n" * 32),
        VendorId(b"outpost"),
        UnknownPayload(200, b"opaque"),
    )
    message = IkeMessage(HEADER, payloads)
    data = encode_message(message)
    assert struct.unpack_from("!I", data, 24)[0] == len(data)
    assert data[16] == PayloadType.NOTIFY
    assert decode_message(data) == message


def test_header_length_must_equal_datagram() -> None:
    data = encode_message(IkeMessage(HEADER, (Nonce(b"n" * 16),)))
    with pytest.raises(MalformedMessage):
        decode_message(data + b"\x00")
    with pytest.raises(MalformedMessage):
        decode_message(data[:-1])
    with pytest.raises(MalformedMessage):
        peek_header(data[:27])


def test_other_major_version_is_its_own_error() -> None:
    data = bytearray(encode_message(IkeMessage(HEADER, ())))
    data[17] = 0x10  # IKEv1
    with pytest.raises(InvalidMajorVersionError) as info:
        decode_message(bytes(data))
    assert not isinstance(info.value, MalformedMessage)
    assert info.value.notify == NotifyType.INVALID_MAJOR_VERSION
    data[17] = 0x2F  # minor version 15: accepted and kept (RFC 7296 2.5)
    assert decode_message(bytes(data)).header.minor_version == 15


def test_unknown_critical_payload_is_refused_rfc_7296_2_5() -> None:
    first, chain = encode_payload_chain((UnknownPayload(200, b"x", critical=True),))
    data = encode_header(HEADER, first, IKE_HEADER_LEN + len(chain)) + chain
    with pytest.raises(UnsupportedCriticalPayloadError) as info:
        decode_message(data)
    assert isinstance(info.value, RemoteProtocolError)
    assert info.value.notify == NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD
    assert info.value.notify_data == b"\xc8"  # the one-octet payload type, RFC 7296 3.10.1
    # The critical bit on a payload we understand is ignored (RFC 7296 3.2).
    first, chain = encode_payload_chain((Nonce(b"n" * 16),))
    flagged = chain[:1] + b"\x80" + chain[2:]
    assert decode_payload_chain(first, flagged) == [Nonce(b"n" * 16)]


@pytest.mark.parametrize(
    ("description", "chain"),
    [
        ("generic length below 4", b"\x00\x00\x00\x03"),
        ("generic length past the end", b"\x00\x00\x00\x20" + bytes(16)),
        ("chain ends before the announced payload", b""),
        ("trailing octets after the last payload", b"\x00\x00\x00\x04\x00"),
    ],
)
def test_chain_rejects(description: str, chain: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_payload_chain(PayloadType.VENDOR_ID, chain)


def test_sk_is_last_and_opaque_rfc_7296_3_14() -> None:
    sk = EncryptedPayload(PayloadType.IDI, b"\x00" * 40)
    message = IkeMessage(HEADER, (Notify(NotifyType.COOKIE, b"c"), sk))
    data = encode_message(message)
    assert decode_message(data) == message
    assert data[-40 - 4] == PayloadType.IDI  # SK's Next Payload is the first inner payload
    # SK followed by more octets (its own length unchanged): SK is not last.
    tail = b"\x00\x00\x00\x08" + b"\x00" * 4
    forged = data[:24] + struct.pack("!I", len(data) + len(tail)) + data[28:] + tail
    with pytest.raises(MalformedMessage):
        decode_message(forged)
    with pytest.raises(MalformedMessage):  # no SK inside a decrypted SK
        decode_payload_chain(PayloadType.SK, b"\x00\x00\x00\x08" + bytes(4))
    with pytest.raises(ValueError, match="last"):
        encode_payload_chain((sk, Nonce(b"n" * 16)))


def test_skf_rfc_7383_2_5() -> None:
    first = EncryptedFragment(PayloadType.IDI, 1, 2, b"\x01" * 24)
    second = EncryptedFragment(0, 2, 2, b"\x02" * 24)
    for fragment in (first, second):
        message = IkeMessage(HEADER, (fragment,))
        assert decode_message(encode_message(message)) == message
    for bad in (
        EncryptedFragment(0, 0, 2, b""),  # numbers start at 1
        EncryptedFragment(0, 3, 2, b""),  # past the total
        EncryptedFragment(PayloadType.IDI, 2, 2, b""),  # only fragment 1 names the inner type
    ):
        with pytest.raises(MalformedMessage):
            decode_message(encode_message(IkeMessage(HEADER, (bad,))))


def test_message_accessors() -> None:
    message = IkeMessage(HEADER, (Notify(NotifyType.COOKIE, b"c"), Nonce(b"n" * 16)))
    assert message.get(Nonce) == Nonce(b"n" * 16)
    assert message.get(KeyExchange) is None
    assert message.get_all(Notify) == [Notify(NotifyType.COOKIE, b"c")]
    assert message.notify(NotifyType.COOKIE) is not None
    assert message.notify(NotifyType.REKEY_SA) is None


# --- strongSwan captures ------------------------------------------------------------------


def ike_datagrams(path: Path) -> list[tuple[UdpDatagram, bytes]]:
    """The IKE messages of a capture: all of port 500, and port 4500 behind the marker."""
    found = []
    for datagram in udp_datagrams(path):
        if 500 in (datagram.sport, datagram.dport):
            found.append((datagram, datagram.payload))
        elif 4500 in (datagram.sport, datagram.dport) and datagram.payload[:4] == NON_ESP_MARKER:
            found.append((datagram, datagram.payload[4:]))  # RFC 3948 2.2
    return found


def pcapng_to_pcap(source: Path, target: Path) -> Path:
    """Rewrite a single-interface pcapng capture as classic pcap for tests/helpers/vectors.py.

    Only the blocks the shared capture holds are understood (SHB, IDB, EPB).
    """
    blob = source.read_bytes()
    order = "<" if blob[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
    linktype, packets, offset = LINKTYPE_ETHERNET, [], 0
    while offset + 12 <= len(blob):
        block_type, block_len = struct.unpack_from(order + "II", blob, offset)
        if block_type == 1:  # Interface Description Block
            linktype = struct.unpack_from(order + "H", blob, offset + 8)[0]
        elif block_type == 6:  # Enhanced Packet Block
            captured = struct.unpack_from(order + "I", blob, offset + 20)[0]
            packets.append(blob[offset + 28 : offset + 28 + captured])
        offset += block_len
    write_pcap(target, packets, linktype)
    return target


def test_strongswan_rw_capture(tmp_path: Path) -> None:
    path = pcapng_to_pcap(vector_path("strongswan", "strongswan-rw.pcap"), tmp_path / "rw.pcap")
    messages = ike_datagrams(path)
    assert [d.frame for d, _ in messages] == [1, 2, 3, 4]
    for _datagram, data in messages:
        assert encode_message(decode_message(data)) == data
    request, response = (decode_message(data) for _, data in messages[:2])
    for message in (request, response):
        assert message.header.exchange_type == ExchangeType.IKE_SA_INIT
        assert message.get(SecurityAssociation) is not None
        assert message.get(KeyExchange) is not None
        assert message.get(Nonce) is not None
        assert message.notify(NotifyType.NAT_DETECTION_SOURCE_IP) is not None
        assert message.notify(NotifyType.NAT_DETECTION_DESTINATION_IP) is not None
    for _, data in messages[2:]:
        assert isinstance(decode_message(data).payloads[-1], EncryptedPayload)


@pytest.mark.parametrize("suite", SUITES)
def test_strongswan_messages_match_json(suite: str) -> None:
    account = load_json_vectors(f"strongswan/strongswan-{suite}-psk.json")
    by_frame = {
        d.frame: data
        for d, data in ike_datagrams(vector_path(f"strongswan/strongswan-{suite}-psk.pcap"))
    }
    expected = account["ike_messages"]
    assert sorted(by_frame) == sorted(m["frame"] for m in expected)
    for entry in expected:
        data = by_frame[entry["frame"]]
        message = decode_message(data)
        header = message.header
        assert header.exchange_type == ExchangeType[entry["exchange"]]
        assert header.message_id == entry["mid"]
        assert header.response is entry["is_response"]
        assert header.initiator is entry["sender_is_original_initiator"]
        assert header.spi_i.hex() == entry["spi_i"]
        assert header.spi_r.hex() == entry["spi_r"]
        assert peek_header(data) == header
        assert encode_message(message) == data  # byte-identical re-encoding
        if header.exchange_type != ExchangeType.IKE_SA_INIT:
            assert isinstance(message.payloads[-1], EncryptedPayload)


_JSON_TRANSFORM_TYPE = {
    "ENCR": TransformType.ENCR,
    "PRF": TransformType.PRF,
    "INTEG": TransformType.INTEG,
    "DH": TransformType.KE,
}


def _transform_triples(sa: SecurityAssociation) -> list[tuple[int, int, int | None]]:
    return [(t.transform_type, t.transform_id, t.key_length) for t in sa.proposals[0].transforms]


@pytest.mark.parametrize("suite", SUITES)
def test_strongswan_ike_sa_init_payloads(suite: str) -> None:
    account = load_json_vectors(f"strongswan/strongswan-{suite}-psk.json")
    by_frame = {
        d.frame: decode_message(data)
        for d, data in ike_datagrams(vector_path(f"strongswan/strongswan-{suite}-psk.pcap"))
    }
    checked = 0
    for ike_sa in account["ike_sas"]:
        request = by_frame[ike_sa["frames"]["request"]]
        response = by_frame[ike_sa["frames"]["response"]]
        if request.header.exchange_type != ExchangeType.IKE_SA_INIT:
            continue  # a rekeyed IKE SA: its SA/KE/Nonce are inside SK
        expected: list[Any] = [
            (_JSON_TRANSFORM_TYPE[t["type"]], t["id"], t["key_length"])
            for t in ike_sa["transforms_iana"]
        ]
        for message, nonce, ke in ((request, "ni", "ke_i"), (response, "nr", "ke_r")):
            sa = message.get(SecurityAssociation)
            assert sa is not None
            key_exchange = message.get(KeyExchange)
            assert key_exchange is not None
            assert key_exchange.group == ike_sa["ke_group"]
            assert key_exchange.data.hex() == ike_sa[ke]
            assert message.get(Nonce) == Nonce(bytes.fromhex(ike_sa[nonce]))
            assert message.notify(NotifyType.NAT_DETECTION_SOURCE_IP) is not None
            assert message.notify(NotifyType.NAT_DETECTION_DESTINATION_IP) is not None
        response_sa = response.get(SecurityAssociation)
        assert response_sa is not None
        assert len(response_sa.proposals) == 1
        assert _transform_triples(response_sa) == expected  # the chosen proposal
        request_sa = request.get(SecurityAssociation)
        assert request_sa is not None
        assert set(expected) <= {
            triple
            for proposal in request_sa.proposals
            for triple in _transform_triples(SecurityAssociation((proposal,)))
        }
        checked += 1
    assert checked == 1
