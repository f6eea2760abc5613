"""Cross-check with tshark: Wireshark's ESP dissector reads (and, given keys, decrypts) our packets.

Our ESP packets go into a pcap as ESP-in-UDP on 4500 (RFC 3948) in IPv4,
tshark reads it once with an ``esp_sa`` entry per SA, and the tests check:

- no frame is malformed and no expert item of severity "error" appears, for any suite;
- ChaCha20-Poly1305 frames still decode as ESP (SPI, sequence number): tshark
  4.0 has no ChaCha20 entry in its ESP algorithm list, so it cannot decrypt them;
- AES-GCM-128/256 and AES-CBC with HMAC-SHA2 frames decrypt to exactly our
  inner packets, with ``esp.icv_good == 1``, padding 1, 2, 3... and next header 4/41.

UAT syntax and algorithm names: /work/shared/interop/vectors/README.md
"Decrypting with tshark" (AES-GCM key given with its 4-octet salt).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.esp.sa import OutboundSa
from common.esp.suites import EspSuite, suite_by_name
from tests.helpers.packets import esp_trailer, ipv4_icmp_echo, ipv4_udp, ipv6_udp
from tests.helpers.vectors import write_pcap

pytestmark = pytest.mark.needs_tool("tshark")

OUTER_SRC, OUTER_DST = "192.0.2.2", "192.0.2.1"
EXPERT_ERROR = 0x00800000  # PI_ERROR in epan/proto.h; warnings (0x00600000) are allowed

# suite -> (tshark encryption algorithm, tshark authentication algorithm); None: no decryption.
TSHARK_ALGORITHMS: dict[str, tuple[str, str] | None] = {
    "aes128gcm16": ("AES-GCM with 16 octet ICV [RFC4106]", "NULL"),
    "aes256gcm16": ("AES-GCM with 16 octet ICV [RFC4106]", "NULL"),
    "chacha20poly1305": None,
    "aes128-sha256": ("AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]"),
    "aes128-sha384": ("AES-CBC [RFC3602]", "HMAC-SHA-384-192 [RFC4868]"),
    "aes128-sha512": ("AES-CBC [RFC3602]", "HMAC-SHA-512-256 [RFC4868]"),
    "aes256-sha256": ("AES-CBC [RFC3602]", "HMAC-SHA-256-128 [RFC4868]"),
    "aes256-sha384": ("AES-CBC [RFC3602]", "HMAC-SHA-384-192 [RFC4868]"),
    "aes256-sha512": ("AES-CBC [RFC3602]", "HMAC-SHA-512-256 [RFC4868]"),
}
SUITE_NAMES = sorted(TSHARK_ALGORITHMS)
DECRYPTABLE = [name for name in SUITE_NAMES if TSHARK_ALGORITHMS[name] is not None]
FIELDS = (
    "frame.number",
    "esp.spi",
    "esp.sequence",
    "esp.icv_good",
    "esp.icv_bad",
    "esp.pad",
    "esp.pad_len",
    "esp.protocol",
    "esp.decrypted_data",
    "esp.contained_data",
    "icmp.ident",
    "icmp.seq",
    "ipv6.src",
    "_ws.malformed",
    "_ws.expert.severity",
    "_ws.expert.message",
)


@dataclass(frozen=True)
class Sent:
    """One packet we put in the capture, and what tshark must make of it."""

    frame: int
    suite: EspSuite
    spi: int
    seq: int
    inner: bytes
    next_header: int


def keymat_for(suite: EspSuite, spi: int) -> bytes:
    return bytes((spi + 13 * index) & 0xFF for index in range(suite.keymat_len))


def inner_packets() -> list[bytes]:
    """IPv4 pings and IPv6 UDP of lengths that walk through every padding remainder."""
    packets = []
    for size in range(0, 32, 3):
        packets.append(ipv4_icmp_echo(ident=0x4242, seq=size, data=bytes(range(size))))
        packets.append(ipv6_udp(sport=40000 + size, data=b"v6" * size))
    return packets


def uat_line(name: str, spi: int) -> str:
    algorithms = TSHARK_ALGORITHMS[name]
    assert algorithms is not None
    suite = suite_by_name(name)
    keymat = keymat_for(suite, spi)
    encryption, authentication = algorithms
    if suite.is_aead:
        key, auth_key = keymat, b""  # tshark wants the AES-GCM key with its salt
    else:
        key, auth_key = keymat[: suite.key_len], keymat[suite.key_len :]
    auth_field = f'"0x{auth_key.hex()}"' if auth_key else '""'
    return (
        f'uat:esp_sa:"IPv4","{OUTER_SRC}","{OUTER_DST}","0x{spi:08x}","{encryption}",'
        f'"0x{key.hex()}","{authentication}",{auth_field}'
    )


@dataclass(frozen=True)
class Capture:
    sent: list[Sent]
    frames: dict[int, dict[str, str]]


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Capture:
    """Build the pcap, run tshark once over it with every SA, parse its field output."""
    sent: list[Sent] = []
    datagrams: list[bytes] = []
    for index, name in enumerate(SUITE_NAMES):
        suite = suite_by_name(name)
        spi = 0x0A000100 + index
        outbound = OutboundSa(spi, suite, keymat_for(suite, spi))
        for inner in inner_packets():
            esp = outbound.encapsulate(inner)
            assert isinstance(esp, bytes)
            datagrams.append(ipv4_udp(OUTER_SRC, OUTER_DST, sport=4500, dport=4500, data=esp))
            next_header = 4 if inner[0] >> 4 == 4 else 41
            sent.append(Sent(len(datagrams), suite, spi, outbound.seq, inner, next_header))
    path: Path = tmp_path_factory.mktemp("tshark") / "outpost-esp.pcap"
    write_pcap(path, datagrams)

    command = [
        "tshark",
        "-n",
        "-r",
        str(path),
        "-o",
        "esp.enable_encryption_decode:TRUE",
        "-o",
        "esp.enable_authentication_check:TRUE",
    ]
    for index, name in enumerate(SUITE_NAMES):
        if TSHARK_ALGORITHMS[name] is not None:
            command += ["-o", uat_line(name, 0x0A000100 + index)]
    command += ["-T", "fields", "-E", "separator=/t", "-E", "aggregator=|", "-E", "occurrence=a"]
    for field in FIELDS:
        command += ["-e", field]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    frames: dict[int, dict[str, str]] = {}
    for line in result.stdout.splitlines():
        values = line.split("\t")
        assert len(values) == len(FIELDS), line
        row = dict(zip(FIELDS, values, strict=True))
        frames[int(row["frame.number"])] = row
    return Capture(sent, frames)


def test_every_frame_was_read(capture: Capture) -> None:
    assert sorted(capture.frames) == [sent.frame for sent in capture.sent]


@pytest.mark.parametrize("name", SUITE_NAMES)
def test_no_malformed_frame_and_no_expert_error(capture: Capture, name: str) -> None:
    for sent in (s for s in capture.sent if s.suite.name == name):
        row = capture.frames[sent.frame]
        assert row["_ws.malformed"] == "", (sent.frame, row["_ws.expert.message"])
        severities = [int(value, 0) for value in row["_ws.expert.severity"].split("|") if value]
        errors = [s for s in severities if s >= EXPERT_ERROR]
        assert not errors, (sent.frame, row["_ws.expert.message"])


@pytest.mark.parametrize("name", SUITE_NAMES)
def test_every_frame_decodes_as_esp_with_our_spi_and_sequence(capture: Capture, name: str) -> None:
    for sent in (s for s in capture.sent if s.suite.name == name):
        row = capture.frames[sent.frame]
        assert int(row["esp.spi"], 0) == sent.spi, sent.frame
        assert int(row["esp.sequence"]) == sent.seq, sent.frame
        assert "Wrong Sequence Number" not in row["_ws.expert.message"]


@pytest.mark.parametrize("name", DECRYPTABLE)
def test_tshark_decrypts_to_our_inner_packets(capture: Capture, name: str) -> None:
    for sent in (s for s in capture.sent if s.suite.name == name):
        row = capture.frames[sent.frame]
        assert row["esp.icv_good"] == "1", (sent.frame, row)
        assert row["esp.icv_bad"] in ("", "0"), sent.frame
        assert row["esp.contained_data"] == sent.inner.hex(), sent.frame
        trailer = esp_trailer(len(sent.inner), sent.next_header, sent.suite.alignment)
        assert row["esp.decrypted_data"] == (sent.inner + trailer).hex(), sent.frame
        assert int(row["esp.protocol"], 0) == sent.next_header, sent.frame
        assert int(row["esp.pad_len"]) == trailer[-2], sent.frame
        assert row["esp.pad"].replace(":", "") == trailer[:-2].hex(), sent.frame


@pytest.mark.parametrize("name", DECRYPTABLE)
def test_tshark_dissects_the_decrypted_inner_packets(capture: Capture, name: str) -> None:
    """Past the bytes: tshark's own IP/ICMP/IPv6 dissectors read the fields we put in."""
    for sent in (s for s in capture.sent if s.suite.name == name):
        row = capture.frames[sent.frame]
        if sent.next_header == 4:
            assert int(row["icmp.ident"].split("|")[0], 0) == 0x4242, sent.frame
            assert int(row["icmp.seq"].split("|")[0]) == int.from_bytes(sent.inner[26:28], "big")
        else:
            assert row["ipv6.src"] == "fd00:99::1", sent.frame


def test_chacha_decrypts_where_tshark_knows_chacha(capture: Capture, tmp_path: Path) -> None:
    """tshark 4.0 has no ChaCha20 ESP entry and refuses the UAT line; later ones have
    "ChaCha20 with Poly1305 [RFC7634]". Either the refusal is the known one, or the
    frames must decrypt to our inner packets: the check turns itself on with an upgrade.
    """
    index = SUITE_NAMES.index("chacha20poly1305")
    spi = 0x0A000100 + index
    keymat = keymat_for(suite_by_name("chacha20poly1305"), spi)
    path = tmp_path / "chacha.pcap"
    chacha = [s for s in capture.sent if s.suite.name == "chacha20poly1305"]
    write_pcap(
        path,
        [
            ipv4_udp(OUTER_SRC, OUTER_DST, sport=4500, dport=4500, data=_esp_of(sent, keymat))
            for sent in chacha
        ],
    )
    line = (
        f'uat:esp_sa:"IPv4","{OUTER_SRC}","{OUTER_DST}","0x{spi:08x}",'
        f'"ChaCha20 with Poly1305 [RFC7634]","0x{keymat.hex()}","NULL",""'
    )
    command = ["tshark", "-n", "-r", str(path), "-o", "esp.enable_encryption_decode:TRUE"]
    command += ["-o", line, "-T", "fields", "-e", "esp.contained_data"]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        assert "ChaCha20 with Poly1305" in result.stderr, result.stderr
        return
    assert result.stdout.split() == [sent.inner.hex() for sent in chacha]


def _esp_of(sent: Sent, keymat: bytes) -> bytes:
    """Rebuild the packet of ``sent`` (same seq, IV = seq) for a capture of its own."""
    outbound = OutboundSa(sent.spi, sent.suite, keymat)
    return outbound.encapsulate_at(sent.inner, sent.seq, sent.seq.to_bytes(8, "big"))
