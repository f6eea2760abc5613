"""Control-plane/worker messages: keys stay out of logs, counters can be found by SPI."""

from __future__ import annotations

from common.dataplane.control import DataPlaneCounters
from common.dataplane.messages import InstallSa, SaCounters, SaPair

INBOUND_KEY = bytes.fromhex("a1" * 36)
OUTBOUND_KEY = bytes.fromhex("b2" * 36)


def test_sa_pair_repr_never_shows_keying_material() -> None:
    """messages.py: keys travel with ``repr=False`` so a logged command cannot leak them."""
    pair = SaPair(
        peer_id=1,
        suite="aes256gcm16",
        inbound_spi=0x1234,
        outbound_spi=0x5678,
        peer_address=("192.0.2.1", 4500),
        inner_networks=("10.1.0.0/24",),
        inbound_keymat=INBOUND_KEY,
        outbound_keymat=OUTBOUND_KEY,
    )
    for text in (repr(pair), repr(InstallSa(pair)), str(pair)):
        assert "keymat" not in text
        for key in (INBOUND_KEY, OUTBOUND_KEY):
            assert key.hex()[:8] not in text
            assert repr(key) not in text
        assert "0x1234" in text or "4660" in text  # the rest is still there to debug with


def test_counters_find_an_sa_by_spi() -> None:
    inbound = SaCounters(0x1000, 1, "inbound", 3, 300, {}, 3)
    outbound = SaCounters(0x2000, 1, "outbound", 4, 400, {}, 4)
    counters = DataPlaneCounters(inbound={}, outbound={}, sas=(inbound, outbound))

    assert counters.sa(0x1000) is inbound
    assert counters.sa(0x2000) is outbound
    assert counters.sa(0x3000) is None
