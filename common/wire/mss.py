"""TCP MSS clamping for packets that cross the tunnel (sans-IO, never raises).

Why: path-MTU discovery through a tunnel depends on ICMP "too big" messages
that firewalls often drop, and a TCP connection whose full-sized segments
vanish hangs after the handshake (the PMTU "black hole"). Lowering the
maximum segment size both ends announce in their SYN and SYN-ACK to what
fits the tunnel avoids the question: neither end ever sends a segment larger
than the tunnel MTU. This is what ``iptables ... TCPMSS --clamp-mss-to-pmtu``
and strongSwan's ``charon.plugins.kernel-libipsec`` setups do.

The clamp for a tunnel MTU is ``mtu - 40`` for IPv4 and ``mtu - 60`` for IPv6
(IP header plus a 20-octet TCP header, RFC 9293 3.7.1 / RFC 8200 8.3):
``max_mss_for_mtu``.

What is left alone (the packet comes back as the same object, nothing allocated):

- anything but TCP with SYN set (SYN or SYN-ACK); the SYN test comes before
  any other work, since nearly every packet is not a SYN (the data-plane
  workers even make it inline, so a TCP data segment costs no call here);
- an MSS option already at or below the maximum;
- a SYN without an MSS option: RFC 9293 3.7.1 then lets the peer assume 536
  (IPv4) or 1220 (IPv6), already below any tunnel MTU we run with; adding the
  option would mean growing the packet, moving the payload and fixing the IP
  length and header checksum, for nothing;
- IPv4 fragments: a non-first fragment has no TCP header, and a SYN is far too
  small to be fragmented by anyone honest;
- IPv6 with extension headers before TCP (Next Header != 6): walking them costs
  on every packet and hosts do not put them on SYNs in practice;
- malformed headers or option lists (lengths that overrun, an MSS option whose
  length is not 4): a packet the receiving stack will refuse anyway.

The TCP checksum is updated incrementally (RFC 1624 equation 3), so only the
changed 16-bit word is read, not the segment. The MSS value may sit at an odd
offset within the TCP header (after a single NOP, say); the ones' complement
sum is byte-order independent (RFC 1071 2(B)), so the byte-swapped old and
new values then stand in for the straddled words.
"""

from __future__ import annotations

from typing import Final, overload

_TCP: Final = 6
_SYN: Final = 0x02
_IPV6_TCP_FLAGS_AT: Final = 53  # TCP flags octet right after a 40-octet IPv6 header
_OPT_EOL: Final = 0
_OPT_NOP: Final = 1
_OPT_MSS: Final = 2
IPV4_MSS_OVERHEAD: Final = 40  # IPv4 header (20) + TCP header (20)
IPV6_MSS_OVERHEAD: Final = 60  # IPv6 header (40) + TCP header (20)


def max_mss_for_mtu(mtu: int, version: int) -> int:
    """The largest MSS whose segments fit an IP packet of ``mtu`` octets."""
    return mtu - (IPV4_MSS_OVERHEAD if version == 4 else IPV6_MSS_OVERHEAD)


@overload
def clamp_mss(packet: bytes, max_mss: int) -> bytes: ...
@overload
def clamp_mss(packet: bytearray, max_mss: int) -> bytearray: ...
def clamp_mss(packet: bytes | bytearray, max_mss: int) -> bytes | bytearray:
    """``packet`` with its SYN's MSS option lowered to ``max_mss``, else ``packet`` itself.

    A ``bytearray`` is changed in place (and returned); ``bytes`` yields a new
    ``bytes`` object only when something changed. See the module docstring for
    what is left alone.
    """
    size = len(packet)
    if size < 40:  # an IPv4 or IPv6 header plus the fixed TCP header, at the least
        return packet
    version = packet[0] >> 4
    if version == 4:
        if packet[9] != _TCP:
            return packet
        tcp = (packet[0] & 0x0F) << 2
        if tcp < 20 or tcp + 20 > size or not packet[tcp + 13] & _SYN:
            return packet
        if packet[6] & 0x3F or packet[7]:  # MF set or a fragment offset: a fragment
            return packet
        end = (packet[2] << 8) | packet[3]  # total length
    elif version == 6:
        if packet[6] != _TCP or size < 60 or not packet[_IPV6_TCP_FLAGS_AT] & _SYN:
            return packet
        tcp = 40
        end = 40 + ((packet[4] << 8) | packet[5])  # payload length
    else:
        return packet
    options_end = tcp + ((packet[tcp + 12] >> 4) << 2)
    if options_end > min(end, size):
        return packet  # the data offset overruns the packet
    at = tcp + 20
    while at < options_end:
        kind = packet[at]
        if kind == _OPT_EOL:
            return packet
        if kind == _OPT_NOP:
            at += 1
            continue
        if at + 1 >= options_end:
            return packet
        length = packet[at + 1]
        if length < 2 or at + length > options_end:
            return packet  # malformed option list
        if kind == _OPT_MSS:
            if length != 4:
                return packet
            return _rewrite(packet, tcp, at + 2, max_mss)
        at += length
    return packet


@overload
def _rewrite(packet: bytes, tcp: int, field: int, max_mss: int) -> bytes: ...
@overload
def _rewrite(packet: bytearray, tcp: int, field: int, max_mss: int) -> bytearray: ...
def _rewrite(packet: bytes | bytearray, tcp: int, field: int, max_mss: int) -> bytes | bytearray:
    """Write ``max_mss`` at ``field`` if lower than what is there; RFC 1624 checksum update."""
    old = (packet[field] << 8) | packet[field + 1]
    if old <= max_mss or max_mss < 0:
        return packet
    new = max_mss & 0xFFFF
    if (field - tcp) & 1:  # straddles two checksum words: swapped bytes sum the same
        old_word = ((old & 0xFF) << 8) | (old >> 8)
        new_word = ((new & 0xFF) << 8) | (new >> 8)
    else:
        old_word, new_word = old, new
    checksum_at = tcp + 16
    checksum = (packet[checksum_at] << 8) | packet[checksum_at + 1]
    # HC' = ~(~HC + ~m + m')  (RFC 1624 equation 3)
    total = (~checksum & 0xFFFF) + (~old_word & 0xFFFF) + new_word
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    checksum = ~total & 0xFFFF
    out = packet if isinstance(packet, bytearray) else bytearray(packet)
    out[field] = new >> 8
    out[field + 1] = new & 0xFF
    out[checksum_at] = checksum >> 8
    out[checksum_at + 1] = checksum & 0xFF
    if isinstance(packet, bytearray):
        return packet
    return bytes(out)
