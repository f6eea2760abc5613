"""A byte buffer with typed network-order pulls and pushes (aioquic ``Buffer`` shape).

Every IKE codec reads through ``Buffer`` so that "reading past the end" is
checked in one place and always surfaces as ``MalformedMessage`` (STYLE.md:
parsers raise nothing else), never as ``IndexError`` or ``struct.error``.
The buffer reads from immutable ``bytes`` (no copy on construction) and turns
into a ``bytearray`` only when something is pushed.
"""

from __future__ import annotations

import struct
from typing import Final

from common.ike.errors import MalformedMessage

__all__ = ["Buffer", "MalformedMessage"]

_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")
_U64: Final = struct.Struct("!Q")


class Buffer:
    """A cursor over bytes: ``pull_*`` reads at the cursor, ``push_*`` writes there.

    Writing at the cursor (not always at the end) lets an encoder reserve a
    length field, write the body, then ``seek`` back and fill it in.
    """

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes = b"") -> None:
        self._data: bytes | bytearray = data
        self._pos = 0

    @property
    def data(self) -> bytes:
        """Everything in the buffer, whatever the cursor position."""
        return bytes(self._data)

    def tell(self) -> int:
        """The cursor position."""
        return self._pos

    def seek(self, pos: int) -> None:
        """Move the cursor; a position outside the data is malformed input."""
        if not 0 <= pos <= len(self._data):
            raise MalformedMessage(f"seek to {pos} outside 0..{len(self._data)}")
        self._pos = pos

    def eof(self) -> bool:
        """True when the cursor is at the end."""
        return self._pos >= len(self._data)

    def remaining(self) -> int:
        """Bytes left after the cursor."""
        return len(self._data) - self._pos

    # --- reading ------------------------------------------------------------------------

    def _advance(self, size: int) -> int:
        start = self._pos
        end = start + size
        if size < 0 or end > len(self._data):
            raise MalformedMessage(f"read of {size} bytes at {start} past end {len(self._data)}")
        self._pos = end
        return start

    def pull_bytes(self, size: int) -> bytes:
        """The next ``size`` bytes."""
        start = self._advance(size)
        return bytes(self._data[start : self._pos])

    def pull_uint8(self) -> int:
        return self._data[self._advance(1)]

    def pull_uint16(self) -> int:
        value: int = _U16.unpack_from(self._data, self._advance(2))[0]
        return value

    def pull_uint32(self) -> int:
        value: int = _U32.unpack_from(self._data, self._advance(4))[0]
        return value

    def pull_uint64(self) -> int:
        value: int = _U64.unpack_from(self._data, self._advance(8))[0]
        return value

    # --- writing ------------------------------------------------------------------------

    def push_bytes(self, value: bytes) -> None:
        """Write ``value`` at the cursor (overwriting, or extending at the end)."""
        if not isinstance(self._data, bytearray):
            self._data = bytearray(self._data)
        end = self._pos + len(value)
        self._data[self._pos : end] = value
        self._pos = end

    def push_uint8(self, value: int) -> None:
        self.push_bytes(bytes((value,)))

    def push_uint16(self, value: int) -> None:
        self.push_bytes(_U16.pack(value))

    def push_uint32(self, value: int) -> None:
        self.push_bytes(_U32.pack(value))

    def push_uint64(self, value: int) -> None:
        self.push_bytes(_U64.pack(value))
