"""``common.wire.buffer.Buffer``: bounds are enforced and surface as MalformedMessage."""

from __future__ import annotations

import pytest

from common.ike.constants import NotifyType
from common.ike.errors import MalformedMessage, RemoteProtocolError
from common.wire.buffer import Buffer


def test_pulls_are_network_order() -> None:
    buf = Buffer(bytes.fromhex("01 0203 04050607 08090a0b0c0d0e0f ff"))
    assert buf.pull_uint8() == 0x01
    assert buf.pull_uint16() == 0x0203
    assert buf.pull_uint32() == 0x04050607
    assert buf.pull_uint64() == 0x08090A0B0C0D0E0F
    assert buf.remaining() == 1
    assert not buf.eof()
    assert buf.pull_bytes(1) == b"\xff"
    assert buf.eof()
    assert buf.tell() == 16


@pytest.mark.parametrize(
    "pull",
    [
        lambda b: b.pull_uint8(),
        lambda b: b.pull_uint16(),
        lambda b: b.pull_uint32(),
        lambda b: b.pull_uint64(),
        lambda b: b.pull_bytes(1),
        lambda b: b.pull_bytes(-1),
    ],
)
def test_reading_past_the_end_is_malformed(pull: object) -> None:
    buf = Buffer(b"")
    with pytest.raises(MalformedMessage) as info:
        pull(buf)  # type: ignore[operator]
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, RemoteProtocolError)
    assert info.value.notify == NotifyType.INVALID_SYNTAX
    assert buf.tell() == 0  # a failed read does not move the cursor


def test_push_then_patch_a_length_field() -> None:
    buf = Buffer()
    buf.push_uint8(1)
    buf.push_uint16(0)  # placeholder
    buf.push_uint32(0xDEADBEEF)
    buf.push_uint64(1)
    buf.push_bytes(b"xy")
    end = buf.tell()
    buf.seek(1)
    buf.push_uint16(end)
    buf.seek(end)
    assert buf.data == bytes.fromhex("01 0011 deadbeef 0000000000000001 7879")
    with pytest.raises(MalformedMessage):
        buf.seek(end + 1)


def test_error_hierarchy() -> None:
    from common.ike.errors import IkeError, LocalProtocolError

    with pytest.raises(TypeError):
        IkeError("abstract")
    assert LocalProtocolError("no", NotifyType.NO_PROPOSAL_CHOSEN).notify == (
        NotifyType.NO_PROPOSAL_CHOSEN
    )
    assert RemoteProtocolError("bad").notify is None
