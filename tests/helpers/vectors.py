"""Test-vector loading: pyca-style ``KEY = value`` files, JSON, and a tiny pcap reader.

The vector files live in ``tests/vectors/`` so that the tests never reach
outside the repository at run time. The text format and the loader follow
pyca/cryptography's ``load_nist_vectors`` (``# comments``, ``[sections]``,
``COUNT = n`` starts a new vector), because that format keeps an RFC's hex
next to a comment saying where it comes from, and diffs well.

The pcap reader exists because the strongSwan captures must be read with
nothing but the standard library: a decoder from the library under test
(scapy is also a cross-check tool here) would not be an independent witness.
"""

from __future__ import annotations

import ipaddress
import json
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeVar

VECTORS_DIR: Final = Path(__file__).resolve().parent.parent / "vectors"

T = TypeVar("T")


def vector_path(*parts: str) -> Path:
    """Absolute path of a file under ``tests/vectors/``."""
    return VECTORS_DIR.joinpath(*parts)


def load_vectors_from_file(
    relative: str | Path, loader: Callable[[Iterable[str]], T], mode: str = "r"
) -> T:
    """pyca's helper: open ``tests/vectors/<relative>`` and hand its lines to ``loader``."""
    with open(VECTORS_DIR / relative, mode) as handle:
        return loader(handle)


def load_nist_vectors(vector_data: Iterable[str]) -> list[dict[str, str]]:
    """Parse ``KEY = value`` blocks into dicts (keys lower-cased, values stripped).

    A new vector starts at each ``COUNT`` line, or at the first key after a
    blank line (for files that do not number their vectors). Section headers
    in brackets are recorded as ``section`` on the vectors that follow.
    A value may continue on following lines that hold only hex (long packets).
    """
    vectors: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    section = ""
    last_key = ""
    for raw in vector_data:
        line = raw.strip()
        if not line or line.startswith("#"):
            if not line:
                current = None
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            current = None
            continue
        if "=" not in line:
            if current is None or not last_key:
                raise ValueError(f"continuation line outside a vector: {line!r}")
            current[last_key] += line.replace(" ", "")
            continue
        key, _, value = (part.strip() for part in line.partition("="))
        key = key.lower()
        if key == "count" or current is None:
            current = {"section": section} if section else {}
            vectors.append(current)
        current[key] = value.replace(" ", "") if key != "count" else value
        last_key = key
    return vectors


def load_json_vectors(relative: str | Path) -> dict[str, Any]:
    """A JSON vector file under ``tests/vectors/``."""
    data: dict[str, Any] = json.loads((VECTORS_DIR / relative).read_text())
    return data


def unhex(value: str) -> bytes:
    """Hex from a vector file, tolerating spaces and colons as RFCs print them."""
    return bytes.fromhex(value.replace(" ", "").replace(":", "").replace("\n", ""))


# --- pcap (libpcap classic format), stdlib only -------------------------------------------

_PCAP_MAGIC_USEC: Final = 0xA1B2C3D4
_PCAP_MAGIC_NSEC: Final = 0xA1B23C4D
LINKTYPE_NULL: Final = 0
LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW: Final = 101
LINKTYPE_LINUX_SLL: Final = 113
_ETHERTYPE_IPV4: Final = 0x0800
_ETHERTYPE_IPV6: Final = 0x86DD
_ETHERTYPE_VLAN: Final = (0x8100, 0x88A8)
_IPPROTO_UDP: Final = 17
# IPv6 extension headers that may sit between the fixed header and UDP (RFC 8200 4).
_IPV6_EXTENSIONS: Final = frozenset((0, 43, 60))


class PcapRecord(NamedTuple):
    """One captured frame: 1-based number (as tshark counts), link type and bytes."""

    frame: int
    linktype: int
    data: bytes


class UdpDatagram(NamedTuple):
    """A UDP datagram found in a capture, with the frame number tshark would show."""

    frame: int
    src: str
    dst: str
    sport: int
    dport: int
    payload: bytes


def read_pcap(path: str | Path) -> list[PcapRecord]:
    """Every record of a classic pcap file, either byte order, usec or nsec timestamps."""
    blob = Path(path).read_bytes()
    if len(blob) < 24:
        raise ValueError(f"{path}: too short for a pcap global header")
    for order in ("<", ">"):
        (magic,) = struct.unpack_from(order + "I", blob, 0)
        if magic in (_PCAP_MAGIC_USEC, _PCAP_MAGIC_NSEC):
            break
    else:
        raise ValueError(f"{path}: not a classic pcap file (pcapng is not supported)")
    linktype = struct.unpack_from(order + "I", blob, 20)[0] & 0x0FFFFFFF
    record = struct.Struct(order + "IIII")
    records: list[PcapRecord] = []
    offset = 24
    while offset + record.size <= len(blob):
        _sec, _frac, incl_len, _orig_len = record.unpack_from(blob, offset)
        offset += record.size
        if offset + incl_len > len(blob):
            raise ValueError(f"{path}: record {len(records) + 1} is truncated")
        records.append(PcapRecord(len(records) + 1, linktype, blob[offset : offset + incl_len]))
        offset += incl_len
    return records


def _network_layer(record: PcapRecord) -> tuple[int, bytes] | None:
    """(IP version, bytes from the IP header on) of a frame, or None for non-IP."""
    data = record.data
    if record.linktype == LINKTYPE_ETHERNET:
        if len(data) < 14:
            return None
        ethertype = struct.unpack_from("!H", data, 12)[0]
        offset = 14
        while ethertype in _ETHERTYPE_VLAN and len(data) >= offset + 4:
            ethertype = struct.unpack_from("!H", data, offset + 2)[0]
            offset += 4
        payload = data[offset:]
    elif record.linktype == LINKTYPE_LINUX_SLL:
        if len(data) < 16:
            return None
        ethertype = struct.unpack_from("!H", data, 14)[0]
        payload = data[16:]
    elif record.linktype == LINKTYPE_RAW:
        if not data:
            return None
        ethertype = _ETHERTYPE_IPV4 if data[0] >> 4 == 4 else _ETHERTYPE_IPV6
        payload = data
    elif record.linktype == LINKTYPE_NULL:
        if len(data) < 4:
            return None
        family = struct.unpack_from("<I", data, 0)[0]
        ethertype = _ETHERTYPE_IPV4 if family == 2 else _ETHERTYPE_IPV6
        payload = data[4:]
    else:
        raise ValueError(f"unsupported pcap link type {record.linktype}")
    if ethertype == _ETHERTYPE_IPV4:
        return 4, payload
    if ethertype == _ETHERTYPE_IPV6:
        return 6, payload
    return None


def _udp_of(record: PcapRecord) -> UdpDatagram | None:
    layer = _network_layer(record)
    if layer is None:
        return None
    version, packet = layer
    if version == 4:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return None
        header_len = (packet[0] & 0x0F) * 4
        total = struct.unpack_from("!H", packet, 2)[0]
        fragment = struct.unpack_from("!H", packet, 6)[0]
        if packet[9] != _IPPROTO_UDP or fragment & 0x3FFF:  # not UDP, or a fragment
            return None
        src = str(ipaddress.IPv4Address(packet[12:16]))
        dst = str(ipaddress.IPv4Address(packet[16:20]))
        segment = packet[header_len:total]
    else:
        if len(packet) < 40 or packet[0] >> 4 != 6:
            return None
        next_header = packet[6]
        end = 40 + struct.unpack_from("!H", packet, 4)[0]
        offset = 40
        while next_header in _IPV6_EXTENSIONS and offset + 2 <= len(packet):
            next_header = packet[offset]
            offset += (packet[offset + 1] + 1) * 8
        if next_header != _IPPROTO_UDP:
            return None
        src = str(ipaddress.IPv6Address(packet[8:24]))
        dst = str(ipaddress.IPv6Address(packet[24:40]))
        segment = packet[offset:end]
    if len(segment) < 8:
        return None
    sport, dport, length = struct.unpack_from("!HHH", segment, 0)
    return UdpDatagram(record.frame, src, dst, sport, dport, segment[8:length])


def udp_datagrams(path: str | Path) -> Iterator[UdpDatagram]:
    """Every UDP datagram of a capture, as (frame, src, dst, sport, dport, payload)."""
    for record in read_pcap(path):
        datagram = _udp_of(record)
        if datagram is not None:
            yield datagram


def write_pcap(path: str | Path, packets: Iterable[bytes], linktype: int = LINKTYPE_RAW) -> None:
    """Write a classic little-endian microsecond pcap, one record per packet, 1 ms apart.

    The default link type is raw IP (101), so callers hand over IP packets and
    no Ethernet header has to be made up.
    """
    header = struct.pack("<IHHiIII", _PCAP_MAGIC_USEC, 2, 4, 0, 0, 262144, linktype)
    chunks = [header]
    for index, packet in enumerate(packets):
        chunks.append(struct.pack("<IIII", 1_700_000_000, index * 1000, len(packet), len(packet)))
        chunks.append(packet)
    Path(path).write_bytes(b"".join(chunks))
