"""IKE handshake rate: in-memory IKE_SA_INIT + IKE_AUTH beside the bare key exchange, same run.

Usage: ``python bench/ike.py`` (about 40 s) or ``python bench/ike.py --quick`` (about 10 s);
``--auth psk`` alone is the old 12 s run.

What one handshake is: a fresh initiator and responder ``IkeSession`` (IKE
``aes256gcm16-prfsha256-<group>``, ESP ``aes256gcm16``, the initiator asks
for an address with CP), IKE_SA_INIT and IKE_AUTH handed across in memory
(no sockets, no event loop), until both report ``ESTABLISHED`` and the responder
has leased an address. Randomness is ``os.urandom``, as in production.

Each group is measured with each AUTH kind, in the same run:

- ``psk``: both sides use the PSK MIC (RFC 7296 2.15);
- ``ecdsa-p256`` / ``ed25519``: both sides sign (RFC 7427) with a leaf of that
  key type issued by one ECDSA P-256 root, and send it in CERT; so the
  responder's share includes verifying the client's chain (path building at a
  fixed validation time) and its AUTH, and signing its own. Certificates and
  keys are made once, before timing (a real concentrator loads them once too).

Three figures per row, one core, one process:

- ``e2e hs/s``: complete handshakes per second, both sides' work included;
- ``resp ms``: the responder's share per handshake (making its session plus
  every ``receive_datagram`` / ``datagrams_to_send`` call), timed with
  ``time.perf_counter`` around those calls only; ``resp hs/s`` = 1 / that, the
  rate one concentrator core could answer if nothing else ran;
- ``KE ms``: the bare key exchange one side does per handshake, i.e.
  ``KeyExchange.generate`` + ``shared_secret`` (the responder's irreducible cost);
  ``KE/resp`` = KE ms / resp ms is the share of the responder's time that is
  the Diffie-Hellman itself, the rest being protocol (parsing, PRF, AUTH, SK,
  proposals, CP, Child SA keys).

Method: best of several repeats (the least disturbed run), each over a batch,
handshakes and bare KE alternating so a burst of load elsewhere hits both.
Results also go to ``bench/results/ike.json`` (gitignored).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Final

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a plain script from anywhere
    sys.path.insert(0, str(ROOT))

import cryptography  # noqa: E402
import nacl  # noqa: E402
from cryptography import x509  # noqa: E402

from common.ike.constants import KeyExchangeMethod  # noqa: E402
from common.ike.events import AddressAssigned, IkeSaEstablished  # noqa: E402
from common.ike.exchanges import Address  # noqa: E402
from common.ike.key_exchange import KeyExchange  # noqa: E402
from common.ike.policy import (  # noqa: E402
    Identity,
    IkeConfiguration,
    IpAddress,
    IpNetwork,
    IpVersion,
    accept_any_vouched_identity,
)
from common.ike.session import IkeSaState, IkeSession  # noqa: E402
from tests.helpers.pki import EPOCH, KeyKind, make_ca, make_leaf  # noqa: E402

GROUPS: dict[str, KeyExchangeMethod] = {
    "x25519": KeyExchangeMethod.CURVE25519,
    "ecp256": KeyExchangeMethod.ECP_256,
}
CIPHER = "aes256gcm16"
RESULTS = ROOT / "bench" / "results" / "ike.json"
NOTE = "Certificate rows: both sides sign (RFC 7427) and the responder validates the chain."
# AUTH kind -> the leaves' key type (None: PSK); every leaf is issued by one P-256 root.
AUTHS: Final[dict[str, KeyKind | None]] = {
    "psk": None,
    "ecdsa-p256": "ecdsa-p256",
    "ed25519": "ed25519",
}

INITIATOR: Address = ("192.0.2.2", 500)
RESPONDER: Address = ("192.0.2.1", 500)
CLIENT_ID = Identity.rfc822("alice@example.org")
GATEWAY_ID = Identity.fqdn("vpn.example.org")
PSK = b"bench-psk-not-secret-0123456789"
OFFICE = (ipaddress.IPv4Network("10.1.0.0/16"),)
DNS = (ipaddress.IPv4Address("10.1.0.53"),)


@dataclass
class BenchPolicy:
    """The responder's policy: one PSK, a fresh address per handshake (as a pool would).

    With ``cas`` it is a ``CertificatePolicy`` admitting whoever they vouch for.
    """

    next_host: int = 2
    leases: int = 0
    cas: tuple[x509.Certificate, ...] = ()

    def ca_certificates(self) -> Sequence[x509.Certificate]:
        return self.cas

    def authorize(self, identity: Identity, certificate: x509.Certificate) -> bool:
        return accept_any_vouched_identity(identity, certificate)

    def psk_for(self, identity: Identity) -> bytes | None:
        return PSK if identity == CLIENT_ID else None

    def lease_address(self, identity: Identity, version: IpVersion) -> IpAddress | None:
        if version != 4:
            return None  # IPv4-only pool: a dual-stack peer gets its IPv4 address alone
        self.leases += 1
        self.next_host = self.next_host % 60000 + 1
        return ipaddress.IPv4Address("10.99.0.0") + self.next_host

    def dns_servers(self) -> Sequence[IpAddress]:
        return DNS

    def subnets_for(self, identity: Identity) -> Sequence[IpNetwork]:
        return OFFICE


@dataclass
class Configurations:
    initiator: IkeConfiguration
    responder: IkeConfiguration
    cas: tuple[x509.Certificate, ...] = ()

    def policy(self) -> BenchPolicy:
        return BenchPolicy(cas=self.cas)


def configurations(group: str, auth: str = "psk") -> Configurations:
    ike = (f"{CIPHER}-prfsha256-{group}",)
    esp = (CIPHER,)
    initiator = IkeConfiguration(
        local_id=CLIENT_ID,
        remote_id=GATEWAY_ID,
        psk=PSK,
        ike_proposals=ike,
        esp_proposals=esp,
    )
    responder = IkeConfiguration(local_id=GATEWAY_ID, ike_proposals=ike, esp_proposals=esp)
    kind = AUTHS[auth]
    if kind is None:
        return Configurations(initiator, responder)
    ca = make_ca("Bench Root CA")
    client = make_leaf(ca, "alice", key_kind=kind, emails=("alice@example.org",))
    gateway = make_leaf(ca, "vpn.example.org", key_kind=kind, dns_names=("vpn.example.org",))
    return Configurations(
        replace(
            initiator,
            psk=b"",
            private_key=client.key,
            certificate=client.certificate,
            ca_certificates=(ca.certificate,),
            validation_time=EPOCH,
        ),
        replace(
            responder,
            private_key=gateway.key,
            certificate=gateway.certificate,
            validation_time=EPOCH,
        ),
        (ca.certificate,),
    )


def handshake(configs: Configurations, policy: BenchPolicy) -> float:
    """One complete handshake; returns the responder's seconds."""
    clock = 0.0
    now = time.perf_counter
    initiator = IkeSession(
        configs.initiator, is_initiator=True, local_addr=INITIATOR, remote_addr=RESPONDER
    )
    start = now()
    responder = IkeSession(
        configs.responder, is_initiator=False, local_addr=RESPONDER, policy=policy
    )
    responder_time = now() - start
    initiator.initiate(clock)
    for _ in range(4):
        requests = initiator.datagrams_to_send(clock)
        if not requests:
            break
        start = now()
        for data, _destination in requests:
            responder.receive_datagram(data, INITIATOR, clock)
        responses = responder.datagrams_to_send(clock)
        responder_time += now() - start
        for data, _destination in responses:
            initiator.receive_datagram(data, RESPONDER, clock)
    if not initiator.state is responder.state is IkeSaState.ESTABLISHED:
        raise RuntimeError(f"handshake failed: {initiator.state} / {responder.state}")
    return responder_time


def check_once(configs: Configurations) -> None:
    """Untimed: the handshake really establishes, with an address, before we time it."""
    policy = configs.policy()
    initiator = IkeSession(
        configs.initiator, is_initiator=True, local_addr=INITIATOR, remote_addr=RESPONDER
    )
    responder = IkeSession(
        configs.responder, is_initiator=False, local_addr=RESPONDER, policy=policy
    )
    initiator.initiate(0.0)
    for _ in range(4):
        for data, _ in initiator.datagrams_to_send(0.0):
            responder.receive_datagram(data, INITIATOR, 0.0)
        for data, _ in responder.datagrams_to_send(0.0):
            initiator.receive_datagram(data, RESPONDER, 0.0)
    found = []
    while (event := initiator.next_event()) is not None:
        found.append(event)
    assert any(isinstance(e, IkeSaEstablished) for e in found), found
    assert any(isinstance(e, AddressAssigned) for e in found), found
    assert policy.leases == 1


@dataclass
class Row:
    group: str
    cipher: str
    auth: str
    handshakes_per_repeat: int
    e2e_handshakes_per_s: float
    responder_ms: float
    ke_ms: float
    all_repeats: dict[str, list[float]] = field(default_factory=dict)

    @property
    def responder_handshakes_per_s(self) -> float:
        return 1000.0 / self.responder_ms

    @property
    def ke_share(self) -> float:
        """Share of the responder's time that is the bare key exchange."""
        return self.ke_ms / self.responder_ms


def bench_group(group: str, count: int, repeats: int, auth: str = "psk") -> Row:
    configs = configurations(group, auth)
    method = GROUPS[group]
    check_once(configs)
    peer_public = KeyExchange.generate(method).public_value
    e2e: list[float] = []
    responder: list[float] = []
    bare: list[float] = []
    for _ in range(repeats):
        policy = configs.policy()
        responder_total = 0.0
        start = time.perf_counter()
        for _ in range(count):
            responder_total += handshake(configs, policy)
        e2e.append(count / (time.perf_counter() - start))
        responder.append(1000.0 * responder_total / count)
        assert policy.leases == count

        start = time.perf_counter()
        for _ in range(count):
            KeyExchange.generate(method).shared_secret(peer_public)
        bare.append(1000.0 * (time.perf_counter() - start) / count)
    return Row(
        group,
        CIPHER,
        auth,
        count,
        max(e2e),
        min(responder),
        min(bare),
        {"e2e_handshakes_per_s": e2e, "responder_ms": responder, "ke_ms": bare},
    )


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'IKE suite':<32} {'auth':<11} {'e2e hs/s':>9} {'resp ms':>8} {'resp hs/s':>10} "
        f"{'KE ms':>7} {'KE/resp':>8}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        suite = f"{row.cipher}-prfsha256-{row.group}"
        print(
            f"{suite:<32} {row.auth:<11} {row.e2e_handshakes_per_s:>9.0f} {row.responder_ms:>8.3f} "
            f"{row.responder_handshakes_per_s:>10.0f} {row.ke_ms:>7.3f} {row.ke_share:>8.2f}"
        )
    print()
    print("e2e hs/s: complete IKE_SA_INIT + IKE_AUTH (CP lease) per second, both sides,")
    print("          one core; resp ms: responder CPU per handshake (resp hs/s = 1/resp ms);")
    print("KE ms: bare KeyExchange.generate + shared_secret (one side's DH per handshake);")
    print("KE/resp: share of the responder's time that is the key exchange itself.")
    print(NOTE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer handshakes (a few seconds)")
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    parser.add_argument("--auth", nargs="+", default=list(AUTHS), choices=list(AUTHS))
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    count, repeats = (100, 3) if args.quick else (400, 5)

    rows = []
    for auth in args.auth:
        for group in args.groups:
            print(f"{auth} {group}: {repeats} x {count} handshakes...", file=sys.stderr)
            rows.append(bench_group(group, count, repeats, auth))
    print_table(rows)

    document = {
        "benchmark": "ike",
        "quick": args.quick,
        "handshakes_per_repeat": count,
        "repeats": repeats,
        "note": NOTE,
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "pynacl": nacl.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "results": [
            {
                **asdict(row),
                "responder_handshakes_per_s": row.responder_handshakes_per_s,
                "ke_share": row.ke_share,
            }
            for row in rows
        ],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
