"""What the control plane and the data-plane workers say to each other.

Everything here crosses a process boundary (pickled over a SOCK_SEQPACKET
socket pair) and only at control-plane rates: installs, removals, counter
requests and rare notices. Nothing per packet crosses it (DESIGN.md "Data
plane and control plane"). Keys travel in ``SaPair`` with ``repr=False`` so
they never reach a log line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# An outer (host, port), as the UDP socket sees it. IPv6 sockets report 4-tuples;
# the workers trim them to (host, port) before anything leaves a worker (a
# link-local host keeps its "%scope" suffix, so nothing is lost) and widen
# installed ones back to the socket's own form at install time.
PeerAddress = tuple[str, int]


@dataclass(frozen=True, slots=True)
class SaPair:
    """One Child SA as both workers need it, the way charon hands an SA to XFRM.

    ``inner_networks`` are the peer's side of the traffic selectors: what we
    route to the peer (outbound) and the only sources we accept from it
    (inbound anti-spoof). For a concentrator that is the leased address; for a
    client, the office subnets (or 0.0.0.0/0 in full tunnel).

    ``local_socket`` is the index, in the sequence of UDP sockets the data
    plane was given, of the socket the peer talks to (the one its IKE
    datagrams arrived on, ``IkeDatagram.local_socket``): ESP to the peer
    leaves from it, so the peer sees replies from the address it sent to.
    ``peer_address`` must be of that socket's family (an IPv4 peer on a
    dual-stack IPv6 socket may be given as ``1.2.3.4`` or ``::ffff:1.2.3.4``).
    """

    peer_id: int
    suite: str
    inbound_spi: int
    outbound_spi: int
    peer_address: PeerAddress
    inner_networks: tuple[str, ...]
    inbound_keymat: bytes = field(repr=False)
    outbound_keymat: bytes = field(repr=False)
    esn: bool = False
    replay_window: int = 4096
    soft_seq_limit: int | None = None
    local_socket: int = 0
    # Install the inbound half only and keep sending on the current outbound SA
    # until ``ActivateOutbound`` names this one: the responder of a Child SA
    # rekey must not use the new SA before the initiator has installed its
    # inbound half, or packets in flight meet an unknown SPI (RFC 7296 2.8).
    defer_outbound: bool = False


# -- control plane -> worker ------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstallSa:
    """Add the inbound half and make the outbound half current for its peer (make before break)."""

    pair: SaPair


@dataclass(frozen=True, slots=True)
class RemoveInboundSa:
    """Retire one inbound SPI, e.g. the old SA once a rekey completed."""

    spi: int


@dataclass(frozen=True, slots=True)
class RemovePeer:
    """Forget a peer: its routes, its outbound SA and all its inbound SPIs."""

    peer_id: int


@dataclass(frozen=True, slots=True)
class ActivateOutbound:
    """Start sending to ``peer_id`` on the deferred outbound SA ``outbound_spi``."""

    peer_id: int
    outbound_spi: int


@dataclass(frozen=True, slots=True)
class SetPeerAddress:
    """Follow the peer to a new address (NAT rebinding, RFC 7296 2.23), from ``local_socket``."""

    peer_id: int
    address: PeerAddress
    local_socket: int = 0


@dataclass(frozen=True, slots=True)
class RequestCounters:
    token: int


@dataclass(frozen=True, slots=True)
class Request:
    """A command with a token; the worker answers ``Applied(token)`` once it took effect.

    The answer is what makes ``install_sa`` synchronous: when it returns, the
    next packet the TUN gives the worker already finds its SA.
    """

    token: int
    command: InstallSa | RemoveInboundSa | RemovePeer | SetPeerAddress | ActivateOutbound


# -- worker -> control plane ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Applied:
    token: int


@dataclass(frozen=True, slots=True)
class SaCounters:
    spi: int
    peer_id: int
    direction: str  # "inbound" or "outbound"
    packets: int
    octets: int
    drops: dict[str, int]
    sequence: int  # highest sent (outbound) or received (inbound)


@dataclass(frozen=True, slots=True)
class CountersReport:
    """One worker's counters, in parts: a channel message holds at most
    ``channel.MAX_MESSAGE`` octets, and thousands of SAs do not fit in one.
    ``totals`` rides on the ``final`` part."""

    token: int
    role: str  # which worker: "inbound" or "outbound"
    totals: dict[str, int]  # packets, octets and drops by reason for the whole worker
    sas: tuple[SaCounters, ...]
    final: bool = True


@dataclass(frozen=True, slots=True)
class RekeyNeeded:
    """An outbound SA crossed its soft sequence limit; IKE should CREATE_CHILD_SA."""

    peer_id: int
    spi: int


@dataclass(frozen=True, slots=True)
class PeerAddressChanged:
    """An authenticated ESP packet came from a new outer address, or to another of our sockets."""

    peer_id: int
    spi: int
    address: PeerAddress
    local_socket: int = 0


@dataclass(frozen=True, slots=True)
class WorkerReady:
    """The worker runs and reads commands; sent once at start."""

    role: str


@dataclass(frozen=True, slots=True)
class WorkerFailed:
    role: str
    reason: str


Command = (
    InstallSa | RemoveInboundSa | RemovePeer | SetPeerAddress | ActivateOutbound | RequestCounters
)
Event = CountersReport | RekeyNeeded | PeerAddressChanged | WorkerReady | WorkerFailed | Applied


@dataclass(frozen=True, slots=True)
class IkeDatagram:
    """An IKE message that arrived on a port-4500 socket (non-ESP marker removed).

    ``local_socket`` says which of the data plane's sockets it arrived on
    (answer with ``DataPlane.send_ike(..., local_socket=...)`` and install the
    Child SA with the same ``SaPair.local_socket``), ``local`` that socket's
    bound address (what NAT_DETECTION_DESTINATION_IP hashes, RFC 7296 2.23,
    when the socket is bound to one address rather than the wildcard).
    """

    data: bytes
    address: PeerAddress
    local_socket: int = 0
    local: PeerAddress | None = None
