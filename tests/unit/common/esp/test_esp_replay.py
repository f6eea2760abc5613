"""Anti-replay window (RFC 4303 3.4.3) and ESN inference (RFC 4303 Appendix A2.2): the edges.

https://www.rfc-editor.org/rfc/rfc4303#section-3.4.3
https://www.rfc-editor.org/rfc/rfc4303#appendix-A.2.2

The property tier (tests/property/test_replay_state_machine.py) checks the
window against a set-based model on random operations; this file names the
edges that random search could miss or that the RFC spells out.
"""

from __future__ import annotations

import pytest

from common.esp.replay import DEFAULT_WINDOW, ReplayWindow

W = 64
TWO_32 = 1 << 32


def _window(size: int, *received: int) -> ReplayWindow:
    window = ReplayWindow(size)
    for seq in received:
        assert window.check(seq), seq
        window.commit(seq)
    return window


def test_sequence_number_zero_is_never_accepted() -> None:
    """RFC 4303 3.3.3: the first packet is 1, so 0 can only be forged or replayed."""
    window = ReplayWindow(W)
    assert not window.check(0)
    assert window.check(1)
    window.commit(1)
    assert not window.check(0)


def test_window_smaller_than_32_is_refused() -> None:
    """RFC 4303 3.4.3: a receiver's window MUST hold at least 32 packets."""
    with pytest.raises(ValueError, match="32"):
        ReplayWindow(31)
    assert ReplayWindow(32).size == 32


def test_default_window_is_large() -> None:
    """DESIGN.md: 'default well above 1024 packets'."""
    assert ReplayWindow().size == DEFAULT_WINDOW >= 1024


def test_check_does_not_change_state() -> None:
    window = _window(W, 5)
    for _ in range(3):
        assert window.check(7)
        assert window.check(6)
    assert window.top == 5
    window.commit(7)
    assert window.check(6), "checking 6 earlier must not have marked it"


def test_duplicate_is_rejected_in_order_and_out_of_order() -> None:
    window = _window(W, 1, 2, 3, 10, 7)
    for seq in (1, 2, 3, 7, 10):
        assert not window.check(seq), seq
    for seq in (4, 5, 6, 8, 9, 11):
        assert window.check(seq), seq


@pytest.mark.parametrize("size", [32, 64, 100, 1024, 4096])
def test_left_edge_of_the_window_exactly(size: int) -> None:
    """With top T and size W, T-W+1 is the oldest acceptable number and T-W is too old."""
    top = 10 * size
    window = _window(size, top)
    assert window.check(top - size + 1)
    assert not window.check(top - size)
    window.commit(top - size + 1)
    assert not window.check(top - size + 1)


@pytest.mark.parametrize("size", [32, 64, 4096])
def test_received_bit_survives_until_it_leaves_the_window(size: int) -> None:
    window = _window(size, 1)
    window.commit(size)  # 1 is now the left edge: offset size - 1
    assert not window.check(1), "1 is still inside the window and was received"
    window.commit(size + 1)  # 1 has left the window
    assert not window.check(1)
    assert window.check(2)


@pytest.mark.parametrize("jump", [W - 1, W, W + 1, 10 * W, TWO_32 + 5])
def test_far_jump_forgets_everything_behind_the_window(jump: int) -> None:
    window = _window(W, *range(1, 11))
    window.commit(10 + jump)
    assert window.top == 10 + jump
    assert not window.check(10 + jump)
    for seq in range(max(1, 10 + jump - W + 1), 10 + jump):
        expected_received = seq <= 10
        assert window.check(seq) is not expected_received, seq
    assert not window.check(10 + jump - W)


def test_long_in_order_run_keeps_exactly_the_last_window() -> None:
    """Many shifts (the bitmap trim path) must not lose or invent bits."""
    window = _window(W, *range(1, 5 * W))
    top = 5 * W - 1
    assert window.top == top
    assert all(not window.check(seq) for seq in range(1, top + 1))
    assert window.check(top + 1)
    window = _window(W, *range(2, 5 * W, 2))  # only even numbers
    top = 5 * W - 2
    for seq in range(top - W + 1, top + 1):
        assert window.check(seq) is (seq % 2 == 1), seq


# --- ESN inference, RFC 4303 Appendix A2.2 ------------------------------------------------


def test_esn_case_a_within_one_subspace() -> None:
    """Case A (Tl >= W - 1): Seql >= Tl - W + 1 means Th, anything below means Th + 1."""
    top = (7 << 32) | 1000
    window = _window(W, top)
    assert window.infer_esn(1000) == top
    assert window.infer_esn(1000 - W + 1) == (7 << 32) | (1000 - W + 1)
    assert window.infer_esn(1000 + 5) == (7 << 32) | 1005
    assert window.infer_esn(0xFFFFFFFF) == (7 << 32) | 0xFFFFFFFF
    assert window.infer_esn(1000 - W) == (8 << 32) | (1000 - W)
    assert window.infer_esn(0) == 8 << 32


def test_esn_case_a_at_the_top_of_a_subspace_rolls_over() -> None:
    """The window at the end of a subspace: small numbers are the next subspace."""
    top = (3 << 32) | 0xFFFFFFF0
    window = _window(W, top)
    assert window.infer_esn(0xFFFFFFF0 - 1) == (3 << 32) | 0xFFFFFFEF
    assert window.infer_esn(0xFFFFFFFF) == (3 << 32) | 0xFFFFFFFF
    assert window.infer_esn(0) == 4 << 32
    assert window.infer_esn(5) == (4 << 32) | 5


def test_esn_case_b_window_straddles_the_boundary() -> None:
    """Case B (Tl < W - 1): Seql >= Tl - W + 1 (mod 2^32) means Th - 1, otherwise Th."""
    top = (5 << 32) | 10
    window = _window(W, top)
    bottom_low = (10 - W + 1) % TWO_32  # 2^32 - 53
    assert window.infer_esn(bottom_low) == (4 << 32) | bottom_low
    assert window.infer_esn(0xFFFFFFFF) == (4 << 32) | 0xFFFFFFFF
    assert window.infer_esn(bottom_low - 1) == (5 << 32) | (bottom_low - 1)
    assert window.infer_esn(0) == 5 << 32
    assert window.infer_esn(10) == top
    assert window.infer_esn(11) == top + 1


def test_esn_case_b_at_the_start_of_the_sa_never_goes_negative() -> None:
    """Near 0 with Th = 0, 'Th - 1' does not exist: such numbers must be rejected, not wrapped."""
    window = _window(DEFAULT_WINDOW, 3)
    seq = window.infer_esn(0xFFFFFFFF)
    assert seq >= 0
    assert not window.check(seq)
    assert window.infer_esn(4) == 4


def test_esn_packets_across_the_2_32_boundary_are_accepted_once() -> None:
    """The whole receive path across 2^32: infer, check, commit, and replays after."""
    window = _window(W, TWO_32 - 3)
    received = []
    for low in (0xFFFFFFFE, 0xFFFFFFFF, 0, 1, 0xFFFFFFFC, 2):
        seq = window.infer_esn(low)
        assert window.check(seq), hex(seq)
        window.commit(seq)
        received.append(seq)
    assert received == [TWO_32 - 2, TWO_32 - 1, TWO_32, TWO_32 + 1, TWO_32 - 4, TWO_32 + 2]
    for low in (0xFFFFFFFE, 0xFFFFFFFF, 0, 1, 0xFFFFFFFC, 2, 0xFFFFFFFD):
        assert not window.check(window.infer_esn(low)), hex(low)


def test_esn_inference_never_leaves_the_64_bit_space() -> None:
    """In the last 2^32 subspace, case A's 'Th + 1' does not exist: the result must stay
    below 2^64 (and be rejected), or decapsulate's 64-bit packing raises (see test_esp_sa)."""
    window = _window(W, (0xFFFFFFFF << 32) | 1000)
    seq = window.infer_esn(0)  # below the window bottom: case A says high + 1 = 2^32
    assert 0 <= seq < 1 << 64
    assert not window.check(seq)
    assert window.infer_esn(1001) == (0xFFFFFFFF << 32) | 1001
