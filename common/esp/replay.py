"""Anti-replay sliding window, RFC 4303 section 3.4.3, with ESN inference (appendix A2).

The window is split in two steps on purpose: ``check`` before decryption (cheap
rejection of replays and of packets left of the window, without touching
state) and ``commit`` only once the ICV has verified, so a forged packet can
never move the window (RFC 4303 section 3.4.3; strongSwan libipsec does the
same).

The bitmap is a ring of 64-bit blocks, as RFC 6479 describes: sliding the
window forward clears whole blocks instead of shifting one big bitmap, so a
packet costs a few small-int operations whatever the window size (a single
4096-bit Python int had to be reallocated twice per packet).
"""

from __future__ import annotations

from typing import Final

DEFAULT_WINDOW: Final = 4096
_LOW32: Final = 0xFFFFFFFF
_BLOCK_BITS: Final = 64


class ReplayWindow:
    """Which sequence numbers were already received, for one inbound SA.

    Sequence numbers here are full (64-bit with ESN). Zero is never valid
    (RFC 4303 section 3.3.3: the first packet sent has number 1), so it is
    marked as received from the start.
    """

    __slots__ = ("_block_mask", "_blocks", "size", "top")

    def __init__(self, size: int = DEFAULT_WINDOW) -> None:
        if size < 32:
            raise ValueError(
                "the anti-replay window must hold at least 32 packets (RFC 4303 3.4.3)"
            )
        self.size = size
        self.top = 0
        # RFC 6479 section 2: one block more than the window needs, so the
        # block being filled never overlaps the oldest one still in the window;
        # a power of two so the ring index is a mask.
        blocks = 1
        while blocks * _BLOCK_BITS < size + _BLOCK_BITS:
            blocks *= 2
        self._block_mask = blocks - 1
        self._blocks = [0] * blocks
        self._blocks[0] = 1  # sequence number 0

    def check(self, seq: int) -> bool:
        """True when ``seq`` is new and not left of the window. No state changes."""
        top = self.top
        if seq > top:
            return True
        if top - seq >= self.size:
            return False
        return not (self._blocks[(seq >> 6) & self._block_mask] >> (seq & 63)) & 1

    def commit(self, seq: int) -> None:
        """Record an authenticated packet; call only after ``check`` passed and the ICV verified."""
        blocks = self._blocks
        mask = self._block_mask
        if seq > self.top:
            current = self.top >> 6
            advance = (seq >> 6) - current
            if advance > mask:
                for index in range(mask + 1):
                    blocks[index] = 0
            else:
                for step in range(1, advance + 1):
                    blocks[(current + step) & mask] = 0
            self.top = seq
        blocks[(seq >> 6) & mask] |= 1 << (seq & 63)

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
