"""Helpers shared by the payload codecs: bounded bodies and lenient enum mapping.

Every ``pull_<payload>(buf, length)`` reads exactly the ``length`` body octets
that follow the generic payload header (RFC 7296 3.2); the header itself is
message.py's business. Reading the body into its own ``Buffer`` means a
sub-parser can never run into the next payload, and a body with trailing
octets is caught by ``expect_end``.
"""

from __future__ import annotations

from enum import IntEnum

from common.ike.errors import MalformedMessage
from common.wire.buffer import Buffer


def body(buf: Buffer, length: int) -> Buffer:
    """A buffer over the next ``length`` octets of ``buf`` (which it consumes)."""
    return Buffer(buf.pull_bytes(length))


def expect_end(sub: Buffer, what: str) -> None:
    """Reject octets left over after a structure whose fields all were read."""
    if not sub.eof():
        raise MalformedMessage(f"{what}: {sub.remaining()} trailing octets")


def as_enum(cls: type[IntEnum], value: int) -> int:
    """The registry member for ``value`` if the registry lists it, else the plain int.

    Unknown registry values are not errors at the codec layer (constants.py):
    the negotiation code decides what an unknown transform or notify means.
    """
    try:
        return cls(value)
    except ValueError:
        return value
