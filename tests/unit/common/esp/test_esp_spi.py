"""Inbound SPI allocation: never reserved, never in use, and carrying the worker number.

DESIGN.md "Where it goes beyond one machine": the kernel steers datagrams to
the worker named in the SPI's top bits, so a wrong prefix silently sends
packets to a worker that does not hold the SA.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest

from common.esp.spi import MIN_SPI, allocate_spi, worker_of


def scripted_rng(values: Iterable[int]) -> Callable[[int], bytes]:
    """An rng that returns the given 32-bit values in order, then fails the test."""
    iterator = iter(values)

    def rng(size: int) -> bytes:
        assert size == 4
        return next(iterator).to_bytes(4, "big")

    return rng


def test_reserved_spis_are_skipped() -> None:
    """RFC 4303 2.1: 0 is local-use, 1-255 reserved: a random 0..255 must be drawn again."""
    rng = scripted_rng([0, 1, 255, 256])
    assert allocate_spi(set(), rng=rng) == 256


def test_spis_in_use_are_skipped() -> None:
    rng = scripted_rng([0x1000, 0x2000, 0x3000])
    assert allocate_spi({0x1000, 0x2000}, rng=rng) == 0x3000


def test_gives_up_when_nothing_free_is_drawn() -> None:
    with pytest.raises(RuntimeError, match="SPI"):
        allocate_spi({0x1000}, rng=scripted_rng([0x1000] * 64))


@pytest.mark.parametrize(("worker", "worker_bits"), [(0, 1), (1, 1), (5, 3), (255, 8), (0, 8)])
def test_worker_number_sits_in_the_top_bits(worker: int, worker_bits: int) -> None:
    for random_value in (0, 0xFFFFFFFF, 0x12345678, 0x80000001):
        rng = scripted_rng([random_value, 0x00ABCDEF, 0x7FFFFFFF])
        spi = allocate_spi(set(), worker=worker, worker_bits=worker_bits, rng=rng)
        assert spi >> (32 - worker_bits) == worker
        assert worker_of(spi, worker_bits) == worker
        assert MIN_SPI <= spi <= 0xFFFFFFFF


def test_without_worker_bits_the_whole_spi_is_random() -> None:
    assert allocate_spi(set(), rng=scripted_rng([0xDEADBEEF])) == 0xDEADBEEF
    assert worker_of(0xDEADBEEF, 0) == 0


@pytest.mark.parametrize(("worker", "worker_bits"), [(1, 0), (2, 1), (-1, 2), (0, 9), (0, -1)])
def test_worker_that_does_not_fit_is_refused(worker: int, worker_bits: int) -> None:
    with pytest.raises(ValueError, match="worker"):
        allocate_spi(set(), worker=worker, worker_bits=worker_bits)


def test_real_randomness_gives_distinct_valid_spis() -> None:
    in_use: set[int] = set()
    for _ in range(200):
        spi = allocate_spi(in_use, worker=3, worker_bits=4)
        assert spi not in in_use
        assert worker_of(spi, 4) == 3
        in_use.add(spi)
