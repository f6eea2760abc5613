"""ReplayWindow against a set-based model (hypothesis RuleBasedStateMachine), ESN included.

The model is the RFC's definition written the slow, obvious way, so the int
bitmap (shifts, trims, far jumps) is checked against it rather than against
itself:

- RFC 4303 3.4.3: a number is acceptable when it is above the highest one
  received, or inside the window (``top - W < seq``) and not received yet;
  0 is never acceptable (3.3.3: counting starts at 1).
- RFC 4303 Appendix A2.2: for a received low half, the full number is the one
  congruent to it modulo 2^32 in ``[top - W + 1, top - W + 1 + 2^32)``; that is
  what cases A and B compute. Below zero it does not exist (we expect 0 then,
  which ``check`` rejects).
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from common.esp.replay import ReplayWindow

TWO_32 = 1 << 32
TWO_64 = 1 << 64


class ReplayWindowMachine(RuleBasedStateMachine):
    """Drives check/commit/infer_esn with numbers near the window, far away, and near 2^32."""

    def __init__(self) -> None:
        super().__init__()
        self.window = ReplayWindow(32)
        self.size = 32
        self.top = 0
        self.received: set[int] = {0}

    # --- the model ----------------------------------------------------------------------

    def model_check(self, seq: int) -> bool:
        if seq > self.top:
            return True
        return self.top - seq < self.size and seq not in self.received

    def model_commit(self, seq: int) -> None:
        self.received.add(seq)
        self.top = max(self.top, seq)

    def model_infer(self, seq_low: int) -> int:
        bottom = self.top - self.size + 1
        seq = bottom + ((seq_low - bottom) % TWO_32)
        return seq if seq >= 0 else 0

    def near(self, offset: int) -> int:
        return max(0, self.top + offset)

    # --- rules --------------------------------------------------------------------------

    @initialize(size=st.sampled_from([32, 33, 64, 100, 128, 1024]))
    def make_window(self, size: int) -> None:
        self.window = ReplayWindow(size)
        self.size = size

    @rule(offset=st.integers(-140, 140))
    def receive_near_top(self, offset: int) -> None:
        self._receive(self.near(offset))

    @rule(offset=st.integers(1, 3 * TWO_32))
    def receive_far_ahead(self, offset: int) -> None:
        self._receive(self.top + offset)

    @rule(below=st.integers(0, 40), high=st.integers(0, 3))
    def jump_to_a_2_32_boundary(self, below: int, high: int) -> None:
        target = (high + 1) * TWO_32 - below
        if target > self.top:
            self._receive(target)

    @rule(seq=st.integers(0, TWO_64 - 1))
    def check_anything(self, seq: int) -> None:
        assert self.window.check(seq) == self.model_check(seq), seq

    @rule(offset=st.integers(-140, 140))
    def check_twice_changes_nothing(self, offset: int) -> None:
        seq = self.near(offset)
        first = self.window.check(seq)
        assert self.window.check(seq) == first == self.model_check(seq)

    @rule(offset=st.integers(-300, 300))
    def receive_esn_low_half(self, offset: int) -> None:
        """A sender's packet at top + offset, of which only the low 32 bits travel."""
        sent = self.top + offset
        if sent <= 0:
            return
        inferred = self.window.infer_esn(sent & 0xFFFFFFFF)
        assert inferred == self.model_infer(sent & 0xFFFFFFFF), (hex(self.top), hex(sent))
        if self.top - self.size < sent < self.top - self.size + 1 + TWO_32:
            assert inferred == sent, "inside the inference range the true number comes back"
        self._receive(inferred)

    @precondition(lambda self: self.top > 0)
    @rule(seq_low=st.integers(0, 0xFFFFFFFF))
    def infer_any_low_half(self, seq_low: int) -> None:
        inferred = self.window.infer_esn(seq_low)
        assert inferred == self.model_infer(seq_low)
        assert inferred & 0xFFFFFFFF == seq_low or inferred == 0

    def _receive(self, seq: int) -> None:
        """What decapsulate does after the ICV verified: check, then commit only if new."""
        accepted = self.window.check(seq)
        assert accepted == self.model_check(seq), (hex(self.top), hex(seq))
        if accepted:
            self.window.commit(seq)
            self.model_commit(seq)

    # --- invariants ---------------------------------------------------------------------

    @invariant()
    def same_top(self) -> None:
        assert self.window.top == self.top

    @invariant()
    def window_agrees_on_its_whole_span(self) -> None:
        low = max(0, self.top - self.size - 1)
        for seq in range(low, self.top + 2):
            assert self.window.check(seq) == self.model_check(seq), (hex(self.top), hex(seq))


ReplayWindowMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None
)
TestReplayWindow = ReplayWindowMachine.TestCase
