"""Anti-replay sliding window, RFC 4303 section 3.4.3, with ESN inference (appendix A2).

The window is split in two steps on purpose: ``check`` before decryption (cheap
rejection of replays and of packets left of the window, without touching
state) and ``commit`` only once the ICV has verified, so a forged packet can
never move the window (RFC 4303 section 3.4.3; strongSwan libipsec does the
same). The bitmap is one Python int: bit ``i`` set means sequence number
``top - i`` was received. In-order traffic costs one shift and one OR.
"""

from __future__ import annotations

from typing import Final

DEFAULT_WINDOW: Final = 4096
_LOW32: Final = 0xFFFFFFFF


class ReplayWindow:
    """Which sequence numbers were already received, for one inbound SA.

    Sequence numbers here are full (64-bit with ESN). Zero is never valid
    (RFC 4303 section 3.3.3: the first packet sent has number 1), so it is
    marked as received from the start.
    """

    __slots__ = ("_bitmap", "_shifted", "size", "top")

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if size < 32:
            raise ValueError(
                "the anti-replay window must hold at least 32 packets (RFC 4303 3.4.3)"
            )
        self.size = size
        self.top = 0
        self._bitmap = 1
        self._shifted = 0

    def check(self, seq: int) -> bool:
        """True when ``seq`` is new and not left of the window. No state changes."""
        top = self.top
        if seq > top:
            return True
        offset = top - seq
        return offset < self.size and not (self._bitmap >> offset) & 1

    def commit(self, seq: int) -> None:
        """Record an authenticated packet; call only after ``check`` passed and the ICV verified."""
        top = self.top
        if seq > top:
            shift = seq - top
            self.top = seq
            if shift >= self.size:
                self._bitmap = 1
                self._shifted = 0
                return
            self._bitmap = (self._bitmap << shift) | 1
            self._shifted += shift
            if self._shifted > self.size:
                # Bits past the window are never read; trimming only bounds memory.
                self._bitmap &= (1 << self.size) - 1
                self._shifted = 0
        else:
            self._bitmap |= 1 << (top - seq)

    def infer_esn(self, seq_low: int) -> int:
        """Full 64-bit number for a received low half, RFC 4303 appendix A2.2.

        Returns 0 when the number falls before the start of the sequence
        space (it can only be a replay or garbage): 0 is marked as received
        from the start, so ``check`` rejects it with no extra test.
        """
        top = self.top
        top_low = top & _LOW32
        top_high = top >> 32
        bottom = top_low - self.size + 1
        if bottom >= 0:  # case A: the window does not straddle a 2^32 boundary
            high = top_high if seq_low >= bottom else top_high + 1
        else:  # case B: window spans two low-half subspaces
            high = top_high - 1 if seq_low >= (bottom & _LOW32) else top_high
        if high < 0 or high > _LOW32:
            return 0  # outside the 64-bit space: old or forged, rejected as a replay
        return (high << 32) | seq_low
