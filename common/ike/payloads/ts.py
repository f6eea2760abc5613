"""Traffic Selector payloads, TSi and TSr (RFC 7296 3.13).

A traffic selector is an address range, a port range and an IP protocol.
Addresses are ``ipaddress`` objects so that narrowing (RFC 7296 2.9) can
compare them directly. Selector types other than the two address ranges
(for example TS_SECLABEL, RFC 9478) are kept raw instead of failing the whole
message: the responder answers TS_UNACCEPTABLE, the parser does not decide.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import ClassVar, Final

from common.ike.constants import IpProtocol, PayloadType, TrafficSelectorType
from common.ike.errors import MalformedMessage
from common.ike.payloads._codec import as_enum, body, expect_end
from common.wire.buffer import Buffer

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# RFC 7296 3.13.1: selector length is 16 for IPv4 ranges, 40 for IPv6 ranges.
_SELECTOR_LEN: Final[dict[int, int]] = {
    TrafficSelectorType.TS_IPV4_ADDR_RANGE: 16,
    TrafficSelectorType.TS_IPV6_ADDR_RANGE: 40,
}
_SELECTOR_HEADER_LEN: Final = 4


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """One TS_IPV4_ADDR_RANGE or TS_IPV6_ADDR_RANGE selector (RFC 7296 3.13.1).

    ``ip_protocol`` 0 means any protocol; ports 0..65535 mean any port.
    """

    start_address: IpAddress
    end_address: IpAddress
    ip_protocol: int = 0
    start_port: int = 0
    end_port: int = 65535

    def __post_init__(self) -> None:
        if self.start_address.version != self.end_address.version:
            raise ValueError("traffic selector mixes IPv4 and IPv6")  # API misuse

    @property
    def ts_type(self) -> TrafficSelectorType:
        if self.start_address.version == 4:
            return TrafficSelectorType.TS_IPV4_ADDR_RANGE
        return TrafficSelectorType.TS_IPV6_ADDR_RANGE


@dataclass(frozen=True, slots=True)
class UnknownTrafficSelector:
    """A selector of a type this implementation does not use; ``data`` follows the length."""

    ts_type: int
    ip_protocol: int
    data: bytes


AnyTrafficSelector = TrafficSelector | UnknownTrafficSelector


@dataclass(frozen=True, slots=True)
class TsPayload:
    """The common layout of TSi and TSr; use the subclasses."""

    payload_type: ClassVar[PayloadType]
    selectors: tuple[AnyTrafficSelector, ...]


@dataclass(frozen=True, slots=True)
class TsInitiator(TsPayload):
    """TSi."""

    payload_type: ClassVar[PayloadType] = PayloadType.TSI


@dataclass(frozen=True, slots=True)
class TsResponder(TsPayload):
    """TSr."""

    payload_type: ClassVar[PayloadType] = PayloadType.TSR


def _pull_selector(buf: Buffer) -> AnyTrafficSelector:
    ts_type = as_enum(TrafficSelectorType, buf.pull_uint8())
    ip_protocol = buf.pull_uint8()
    length = buf.pull_uint16()
    if length < _SELECTOR_HEADER_LEN:
        raise MalformedMessage(f"traffic selector length {length}")
    expected = _SELECTOR_LEN.get(ts_type)
    if expected is None:
        return UnknownTrafficSelector(ts_type, ip_protocol, buf.pull_bytes(length - 4))
    if length != expected:
        raise MalformedMessage(
            f"traffic selector type {ts_type} length {length}"
        )  # RFC 7296 3.13.1
    start_port = buf.pull_uint16()
    end_port = buf.pull_uint16()
    size = (expected - 8) // 2
    factory = ipaddress.IPv4Address if size == 4 else ipaddress.IPv6Address
    start = factory(buf.pull_bytes(size))
    end = factory(buf.pull_bytes(size))
    return TrafficSelector(start, end, as_enum(IpProtocol, ip_protocol), start_port, end_port)


def _pull_ts(buf: Buffer, length: int) -> tuple[AnyTrafficSelector, ...]:
    sub = body(buf, length)
    count = sub.pull_uint8()
    sub.pull_bytes(3)  # RESERVED
    if count == 0:
        raise MalformedMessage("TS payload without selectors")
    selectors = tuple(_pull_selector(sub) for _ in range(count))
    expect_end(sub, "TS payload (number of TSs disagrees with its length)")  # RFC 7296 3.13
    return selectors


def pull_tsi(buf: Buffer, length: int) -> TsInitiator:
    """Read a TSi body: number of TSs (1), RESERVED (3), selectors."""
    return TsInitiator(_pull_ts(buf, length))


def pull_tsr(buf: Buffer, length: int) -> TsResponder:
    """Read a TSr body (same layout as TSi)."""
    return TsResponder(_pull_ts(buf, length))


def push_ts(buf: Buffer, payload: TsPayload) -> None:
    """Write a TSi or TSr body."""
    buf.push_uint8(len(payload.selectors))
    buf.push_bytes(b"\x00\x00\x00")
    for selector in payload.selectors:
        if isinstance(selector, UnknownTrafficSelector):
            buf.push_uint8(selector.ts_type)
            buf.push_uint8(selector.ip_protocol)
            buf.push_uint16(4 + len(selector.data))
            buf.push_bytes(selector.data)
            continue
        buf.push_uint8(selector.ts_type)
        buf.push_uint8(selector.ip_protocol)
        buf.push_uint16(_SELECTOR_LEN[selector.ts_type])
        buf.push_uint16(selector.start_port)
        buf.push_uint16(selector.end_port)
        buf.push_bytes(selector.start_address.packed)
        buf.push_bytes(selector.end_address.packed)
