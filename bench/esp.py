"""ESP packet rate: our encapsulate/decapsulate beside the bare cipher call, same run, same sizes.

Usage: ``python bench/esp.py`` (about a minute) or ``python bench/esp.py --quick``.

Why beside the bare call: the absolute numbers depend on the machine, the
ratio ours/bare does much less, and it says how much of the per-packet cost
is the ESP framing (header, trailer, replay window, counters) rather than the
cryptography we cannot make faster. A ratio of 0.8 means our framing costs a
fifth of the packet budget.

Method: ``time.perf_counter``, best of several repeats (the least disturbed
run), each repeat over a batch of packets, ours and bare alternating.
Decapsulation runs over packets encapsulated beforehand, untimed, in order,
through a fresh InboundSa (default 4096-packet window) per repeat, so no
packet is ever short-circuited as a replay; the count of delivered packets
is checked after each repeat. Results also go to
``bench/results/esp.json`` (gitignored).
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import platform
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

import cryptography  # noqa: E402
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305  # noqa: E402

from common.esp.sa import InboundSa, OutboundSa  # noqa: E402
from common.esp.suites import EspSuite, suite_by_name  # noqa: E402

SUITES = ("aes128gcm16", "aes256gcm16", "chacha20poly1305", "aes128-sha256")
SIZES = (64, 512, 1400)
SPI = 0x0B0B0B0B
RESULTS = ROOT / "bench" / "results" / "esp.json"


@dataclass(frozen=True)
class Row:
    """One measurement: packets per second for our call and the bare crypto call."""

    suite: str
    size: int
    operation: str  # "encapsulate" or "decapsulate"
    ours_pps: float
    bare_pps: float

    @property
    def ratio(self) -> float:
        return self.ours_pps / self.bare_pps


def inner_packet(size: int) -> bytes:
    """An IPv4 UDP packet of exactly ``size`` octets (the payload is zeros)."""
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, 1, 0, 64, 17, 0, bytes(4), bytes(4))
    udp = struct.pack("!HHHH", 5000, 5001, size - 20, 0)
    return header + udp + bytes(size - 28)


def best_rates(
    ours: Callable[[], None], bare: Callable[[], None], count: int, repeats: int
) -> tuple[float, float]:
    """Packets per second of the fastest run of each, ``count`` packets a run.

    The two alternate, repeat by repeat, so a burst of load from elsewhere on
    the machine hits both sides of the ratio rather than one.
    """
    best = {ours: float("inf"), bare: float("inf")}
    for _ in range(repeats):
        for run in (ours, bare):
            start = time.perf_counter()
            run()
            best[run] = min(best[run], time.perf_counter() - start)
    return count / best[ours], count / best[bare]


def keymat_for(suite: EspSuite) -> bytes:
    return bytes(range(suite.keymat_len))


def bench_encapsulate(suite: EspSuite, size: int, count: int, repeats: int) -> Row:
    keymat = keymat_for(suite)
    inner = inner_packet(size)

    def ours() -> None:
        encapsulate = OutboundSa(SPI, suite, keymat).encapsulate
        for _ in range(count):
            encapsulate(inner)

    plaintext = inner + bytes(-(size + 2) % suite.alignment + 2)  # same length as ours seals
    key = keymat[: suite.key_len]
    if suite.is_aead:
        aead = ChaCha20Poly1305(key) if suite.name.startswith("chacha") else AESGCM(key)
        nonce, aad = bytes(12), bytes(8)

        def bare() -> None:
            encrypt = aead.encrypt
            for _ in range(count):
                encrypt(nonce, plaintext, aad)

    else:
        integ = keymat[suite.key_len :]
        iv = bytes(16)

        def bare() -> None:
            for _ in range(count):
                encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
                body = encryptor.update(plaintext) + encryptor.finalize()
                hmac.digest(integ, body, suite.hash_name)

    return Row(suite.name, size, "encapsulate", *best_rates(ours, bare, count, repeats))


def bench_decapsulate(suite: EspSuite, size: int, count: int, repeats: int) -> Row:
    keymat = keymat_for(suite)
    inner = inner_packet(size)
    outbound = OutboundSa(SPI, suite, keymat)
    results = [outbound.encapsulate(inner) for _ in range(count)]
    packets = [packet for packet in results if isinstance(packet, bytes)]
    assert len(packets) == count
    delivered: list[int] = []

    def ours() -> None:
        inbound = InboundSa(SPI, suite, keymat)  # fresh: every packet is new to it
        decapsulate = inbound.decapsulate
        for packet in packets:
            decapsulate(packet)
        delivered.append(inbound.packets)

    key = keymat[: suite.key_len]
    first = packets[0]
    if suite.is_aead:
        aead = ChaCha20Poly1305(key) if suite.name.startswith("chacha") else AESGCM(key)
        salt = keymat[suite.key_len :]
        nonce, aad, sealed = salt + first[8:16], first[:8], first[16:]

        def bare() -> None:
            decrypt = aead.decrypt
            for _ in range(count):
                decrypt(nonce, sealed, aad)

    else:
        integ = keymat[suite.key_len :]
        body, icv = first[: -suite.icv_len], first[-suite.icv_len :]

        def bare() -> None:
            for _ in range(count):
                expected = hmac.digest(integ, body, suite.hash_name)[: suite.icv_len]
                hmac.compare_digest(expected, icv)
                decryptor = Cipher(algorithms.AES(key), modes.CBC(body[8:24])).decryptor()
                decryptor.update(body[24:]) + decryptor.finalize()

    row = Row(suite.name, size, "decapsulate", *best_rates(ours, bare, count, repeats))
    if delivered != [count] * repeats:
        raise SystemExit(f"{suite.name}/{size}: delivered {delivered}, expected {count} each")
    return row


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'suite':<17} {'size':>5}  {'encap pps':>10} {'bare enc':>10} {'ratio':>6}"
        f"  {'decap pps':>10} {'bare dec':>10} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    by_key = {(row.suite, row.size, row.operation): row for row in rows}
    for suite in SUITES:
        for size in SIZES:
            enc = by_key[(suite, size, "encapsulate")]
            dec = by_key[(suite, size, "decapsulate")]
            print(
                f"{suite:<17} {size:>5}  "
                f"{enc.ours_pps:>10,.0f} {enc.bare_pps:>10,.0f} {enc.ratio:>6.2f}  "
                f"{dec.ours_pps:>10,.0f} {dec.bare_pps:>10,.0f} {dec.ratio:>6.2f}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batches, 3 repeats (~5 s)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    count, repeats = (2_000, 3) if args.quick else (10_000, 9)

    rows: list[Row] = []
    for name in SUITES:
        suite = suite_by_name(name)
        for size in SIZES:
            rows.append(bench_encapsulate(suite, size, count, repeats))
            rows.append(bench_decapsulate(suite, size, count, repeats))

    print(
        f"ESP packets/s, best of {repeats} x {count} packets; ratio = ours / bare cipher call "
        f"(Python {platform.python_version()}, cryptography {cryptography.__version__}, "
        f"{os.cpu_count()} CPUs)"
    )
    print_table(rows)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "esp",
        "quick": args.quick,
        "packets_per_repeat": count,
        "repeats": repeats,
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "results": [{**asdict(row), "ratio": row.ratio} for row in rows],
    }
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
