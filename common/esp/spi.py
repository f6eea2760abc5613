"""Choosing inbound ESP SPIs: unique, unpredictable, and naming their worker.

DESIGN.md: "the SPI carries the worker's number, so the kernel can steer each
datagram to the worker that owns its SA". The top ``worker_bits`` of the SPI
hold the worker number; the rest is random, which also keeps SPIs
unpredictable to off-path attackers. SPIs 0-255 are reserved (RFC 4303 2.1).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Container

MIN_SPI = 256


def allocate_spi(
    in_use: Container[int],
    *,
    worker: int = 0,
    worker_bits: int = 0,
    rng: Callable[[int], bytes] = os.urandom,
    attempts: int = 64,
) -> int:
    """A fresh SPI not in ``in_use`` whose top ``worker_bits`` equal ``worker``."""
    if not 0 <= worker_bits <= 8 or not 0 <= worker < (1 << worker_bits):
        raise ValueError("worker number does not fit the worker bits")
    low_bits = 32 - worker_bits
    prefix = worker << low_bits
    for _ in range(attempts):
        spi = prefix | (int.from_bytes(rng(4), "big") & ((1 << low_bits) - 1))
        if spi >= MIN_SPI and spi not in in_use:
            return spi
    raise RuntimeError("no free SPI found; the SA table is implausibly full")


def worker_of(spi: int, worker_bits: int) -> int:
    return spi >> (32 - worker_bits) if worker_bits else 0
