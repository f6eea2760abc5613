"""Test-only glue: one ``IkeSession`` over real UDP sockets, for interop tests.

Run it inside a network namespace, as a subprocess of the test::

    ip netns exec NS .venv/bin/python -m tests.helpers.ike_driver \\
        --role initiator --local 192.0.2.2 --remote 192.0.2.1 \\
        --local-id rw.lab.example --remote-id gw.lab.example --psk SECRET

With ``--cert``/``--key`` (PEM files) it signs its AUTH (RFC 7427) instead;
``--ca`` (PEM, repeatable) are the trust anchors for a signing peer (the
responder's policy then admits whoever they vouch for), checked at the wall
clock's UTC time when the driver starts. An ID with ``@`` is ID_RFC822_ADDR.

It binds UDP 500 and 4500 on ``--local``, feeds received IKE datagrams to the
session (stripping the RFC 3948 non-ESP marker on 4500, counting ESP and
NAT keepalives there without handing them over), sends what the session
queues from the right port, and calls ``handle_timer`` on time. Every step
of interest is one JSON object per line on stdout::

    {"event": "ready"}                            sockets bound
    {"event": "ike_sa_established", ...}          IkeSaEstablished
    {"event": "child_sa_established", ...}        ChildSaEstablished
    {"event": "child_sa_failed", ...}             ChildSaFailed
    {"event": "address_assigned", ...}            AddressAssigned
    {"event": "ike_sa_failed", "notify": ...}     IkeSaFailed (then the driver exits 1)
    {"event": "child_sa_rekeyed", ...}            ChildSaRekeyed (old and new SPIs)
    {"event": "ike_sa_rekeyed", ...}              IkeSaRekeyed (old and new IKE SPIs)
    {"event": "rekey_failed", ...}                RekeyFailed
    {"event": "child_sa_deleted", ...}            ChildSaDeleted
    {"event": "ike_sa_deleted", "by_peer": ...}   IkeSaDeleted (then the driver exits 0)
    {"event": "peer_unreachable", ...}            PeerUnreachable (then the driver exits 1)
    {"event": "command", "command": ..., ...}     a stdin command was started (or refused)
    {"event": "idle", "after": ...}               no request of ours outstanding any more
    {"event": "stopped", "drops": {...}}          leaving (SIGTERM, or --lifetime ran out)

After the IKE SA is up the driver stays, answering the peer's requests
(INFORMATIONAL, CREATE_CHILD_SA), until the IKE SA is deleted, SIGTERM or
``--lifetime``. One command a line on stdin starts an exchange of ours::

    check_liveness | rekey_child [INBOUND_SPI_HEX] | rekey_ike | delete

(``rekey_child`` without an SPI rekeys the newest Child SA). ``idle`` follows
once the session has no request of ours in flight (``get_timer()`` is None),
that is when the command's exchanges, follow-up Deletes included, are answered.
Blocking sockets and ``select``: a test needs no event loop.
:class:`DriverProcess` starts it in a namespace, reads the lines and writes commands.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from types import FrameType
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from common.ike import defaults
from common.ike.auth import SigningKey
from common.ike.constants import KeyExchangeMethod
from common.ike.events import (
    AddressAssigned,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaRekeyed,
    IkeEvent,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    PeerUnreachable,
    RekeyFailed,
)
from common.ike.payloads import TrafficSelector
from common.ike.policy import (
    Identity,
    IkeConfiguration,
    IpAddress,
    IpNetwork,
    IpVersion,
    accept_any_vouched_identity,
)
from common.ike.session import IkeSession

NON_ESP_MARKER: Final = bytes(4)  # RFC 3948 2.2
NAT_KEEPALIVE: Final = b"\xff"  # RFC 3948 2.3
REPO_ROOT: Final = Path(__file__).resolve().parents[2]
PFS_GROUPS: Final = {
    "x25519": KeyExchangeMethod.CURVE25519,
    "ecp256": KeyExchangeMethod.ECP_256,
    "ecp384": KeyExchangeMethod.ECP_384,
    "modp2048": KeyExchangeMethod.MODP_2048,
}


# --- the driver (runs inside the namespace) ---------------------------------------------


@dataclass
class PoolPolicy:
    """A ``ResponderPolicy``: one PSK for every identity, addresses leased in order.

    ``pool_v6`` empty means no IPv6 pool: a dual-stack peer then gets IPv4 only.
    """

    psk: bytes
    pool: list[ipaddress.IPv4Address]
    subnets: tuple[IpNetwork, ...]
    dns: tuple[IpAddress, ...] = ()
    pool_v6: list[ipaddress.IPv6Address] = field(default_factory=list)
    leases: dict[tuple[Identity, int], IpAddress] = field(default_factory=dict)

    def psk_for(self, identity: Identity) -> bytes | None:
        return self.psk

    def lease_address(self, identity: Identity, version: IpVersion) -> IpAddress | None:
        key = (identity, version)
        if key not in self.leases:
            pool: list[ipaddress.IPv4Address] | list[ipaddress.IPv6Address]
            pool = self.pool if version == 4 else self.pool_v6
            if not pool:
                return None
            self.leases[key] = pool.pop(0)
        return self.leases[key]

    def dns_servers(self) -> Sequence[IpAddress]:
        return self.dns

    def subnets_for(self, identity: Identity) -> Sequence[IpNetwork]:
        return self.subnets


@dataclass
class CertPoolPolicy(PoolPolicy):
    """A ``CertificatePolicy``: ``PoolPolicy`` plus trust anchors; whoever they vouch for."""

    cas: tuple[x509.Certificate, ...] = ()

    def ca_certificates(self) -> Sequence[x509.Certificate]:
        return self.cas

    def authorize(self, identity: Identity, certificate: x509.Certificate) -> bool:
        return accept_any_vouched_identity(identity, certificate)


def identity(text: str) -> Identity:
    """ID_RFC822_ADDR when ``text`` has an ``@``, else ID_FQDN."""
    return Identity.rfc822(text) if "@" in text else Identity.fqdn(text)


def _load_certificates(paths: Sequence[str]) -> tuple[x509.Certificate, ...]:
    found: list[x509.Certificate] = []
    for path in paths:
        found += x509.load_pem_x509_certificates(Path(path).read_bytes())
    return tuple(found)


def _load_key(path: str) -> SigningKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    return key  # type: ignore[return-value]


def _ts(selector: TrafficSelector) -> str:
    return f"{selector.start_address}-{selector.end_address}"


def event_record(event: IkeEvent) -> dict[str, Any]:
    """The JSON-able form of one event (never any key material)."""
    match event:
        case IkeSaEstablished():
            return {
                "event": "ike_sa_established",
                "spi_i": event.spi_i.hex(),
                "spi_r": event.spi_r.hex(),
                "ike_suite": event.ike_suite,
                "prf": event.prf,
                "group": event.group,
                "local_id": str(event.local_id),
                "remote_id": str(event.remote_id),
            }
        case ChildSaEstablished():
            return {
                "event": "child_sa_established",
                "inbound_spi": f"{event.inbound_spi:08x}",
                "outbound_spi": f"{event.outbound_spi:08x}",
                "esp_suite": event.esp_suite,
                "esn": event.esn,
                "local_ts": [_ts(ts) for ts in event.local_ts],
                "remote_ts": [_ts(ts) for ts in event.remote_ts],
            }
        case ChildSaFailed():
            return {
                "event": "child_sa_failed",
                "reason": event.reason,
                "notify": None if event.notify is None else event.notify.name,
            }
        case AddressAssigned():
            return {
                "event": "address_assigned",
                "address": None if event.address is None else str(event.address),
                "dns": [str(dns) for dns in event.dns],
                "subnets": [str(net) for net in event.subnets],
                "address_v6": None if event.address_v6 is None else str(event.address_v6),
                "prefix_length_v6": event.prefix_length_v6,
                "dns_v6": [str(dns) for dns in event.dns_v6],
                "subnets_v6": [str(net) for net in event.subnets_v6],
            }
        case IkeSaFailed():
            return {
                "event": "ike_sa_failed",
                "reason": event.reason,
                "notify": None if event.notify is None else event.notify.name,
            }
        case ChildSaRekeyed():
            return {
                "event": "child_sa_rekeyed",
                "old_inbound_spi": f"{event.old_inbound_spi:08x}",
                "old_outbound_spi": f"{event.old_outbound_spi:08x}",
                "inbound_spi": f"{event.inbound_spi:08x}",
                "outbound_spi": f"{event.outbound_spi:08x}",
                "esp_suite": event.esp_suite,
                "esn": event.esn,
                "local_ts": [_ts(ts) for ts in event.local_ts],
                "remote_ts": [_ts(ts) for ts in event.remote_ts],
            }
        case IkeSaRekeyed():
            return {
                "event": "ike_sa_rekeyed",
                "old_spi_i": event.old_spi_i.hex(),
                "old_spi_r": event.old_spi_r.hex(),
                "spi_i": event.spi_i.hex(),
                "spi_r": event.spi_r.hex(),
            }
        case RekeyFailed():
            return {
                "event": "rekey_failed",
                "inbound_spi": None if event.inbound_spi is None else f"{event.inbound_spi:08x}",
                "reason": event.reason,
                "notify": None if event.notify is None else event.notify.name,
            }
        case ChildSaDeleted():
            return {
                "event": "child_sa_deleted",
                "inbound_spi": f"{event.inbound_spi:08x}",
                "outbound_spi": f"{event.outbound_spi:08x}",
            }
        case IkeSaDeleted():
            return {"event": "ike_sa_deleted", "by_peer": event.by_peer}
        case PeerUnreachable():
            return {"event": "peer_unreachable", "reason": event.reason}
    raise TypeError(f"unknown event {event!r}")


def _emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


class _TerminatedError(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _TerminatedError


def run_command(session: IkeSession, line: str, children: list[int], now: float) -> dict[str, Any]:
    """Start the exchange one stdin line asks for; the ``command`` record to print."""
    name, *rest = line.split()
    record: dict[str, Any] = {"event": "command", "command": name}
    try:
        match name:
            case "check_liveness":
                session.check_liveness(now)
            case "rekey_ike":
                session.rekey_ike(now)
            case "delete":
                session.delete(now)
            case "rekey_child":
                if not rest and not children:
                    raise RuntimeError("no Child SA to rekey")
                spi = int(rest[0], 16) if rest else children[-1]
                record["inbound_spi"] = f"{spi:08x}"
                session.rekey_child(spi, now)
            case _:
                raise RuntimeError(f"unknown command {line!r}")
    except (RuntimeError, ValueError) as error:
        record["error"] = str(error)
    return record


def run_driver(args: argparse.Namespace) -> int:
    """Bind, run the session until it closes, SIGTERM or ``--lifetime``; the exit status."""
    local = args.local
    sock_ike = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock_nat = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock_ike.bind((local, defaults.IKE_PORT))
    sock_nat.bind((local, defaults.NAT_T_PORT))
    cas = _load_certificates(args.ca)
    certificates = _load_certificates([args.cert]) if args.cert else ()
    uses_certs = bool(cas or certificates)
    configuration = IkeConfiguration(
        local_id=identity(args.local_id),
        remote_id=identity(args.remote_id) if args.remote_id else None,
        psk=args.psk.encode() if args.role == "initiator" else b"",
        ike_proposals=tuple(args.ike),
        esp_proposals=tuple(args.esp),
        force_encapsulation=args.force_encap,
        request_ipv6=args.request_ipv6,
        pfs_group=PFS_GROUPS[args.pfs] if args.pfs else None,
        private_key=_load_key(args.key) if args.key else None,
        certificate=certificates[0] if certificates else None,
        certificate_chain=certificates[1:],
        ca_certificates=cas if args.role == "initiator" else (),
        validation_time=datetime.datetime.now(datetime.UTC) if uses_certs else None,
    )
    if args.role == "initiator":
        session = IkeSession(
            configuration,
            is_initiator=True,
            local_addr=(local, defaults.IKE_PORT),
            remote_addr=(args.remote, defaults.IKE_PORT),
        )
    else:
        first = ipaddress.IPv4Address(args.pool_start)
        policy = CertPoolPolicy(
            psk=args.psk.encode(),
            pool=[first + i for i in range(16)],
            pool_v6=(
                [ipaddress.IPv6Address(args.pool6_start) + i for i in range(16)]
                if args.pool6_start
                else []
            ),
            subnets=tuple(ipaddress.ip_network(net) for net in args.subnet),
            dns=tuple(ipaddress.ip_address(dns) for dns in args.dns),
            cas=cas,
        )
        session = IkeSession(
            configuration,
            is_initiator=False,
            local_addr=(local, defaults.IKE_PORT),
            policy=policy,
        )
    counters: Counter[str] = Counter()
    status = 0
    stdin = sys.stdin.fileno()
    readers: list[Any] = [sock_ike, sock_nat, stdin]
    pending_input = b""
    children: list[int] = []  # our inbound SPIs of the live Child SAs, oldest first
    busy_after: str | None = None  # the command whose exchanges are not all answered yet
    signal.signal(signal.SIGTERM, _raise_stop)
    _emit({"event": "ready", "role": args.role, "local": local})
    deadline = time.monotonic() + args.lifetime
    try:
        if args.role == "initiator":
            session.initiate(time.monotonic())
        while True:
            now = time.monotonic()
            for data, (host, port) in session.datagrams_to_send(now):
                if session.use_nat_t:
                    sock_nat.sendto(NON_ESP_MARKER + data, (host, port))
                    counters["sent 4500"] += 1
                else:
                    sock_ike.sendto(data, (host, port))
                    counters["sent 500"] += 1
            closed: int | None = None
            while (event := session.next_event()) is not None:
                _emit(event_record(event))
                match event:
                    case ChildSaEstablished() | ChildSaRekeyed():
                        children.append(event.inbound_spi)
                    case ChildSaDeleted() if event.inbound_spi in children:
                        children.remove(event.inbound_spi)
                    case IkeSaFailed() | PeerUnreachable():
                        closed = 1
                    case IkeSaDeleted():
                        closed = 0
            if closed is not None:
                status = closed
                break
            timer = session.get_timer()
            if busy_after is not None and not session.exchanging:
                _emit({"event": "idle", "after": busy_after})
                busy_after = None
            wake = deadline if timer is None else min(deadline, timer)
            if now >= deadline:
                break
            readable, _, _ = select.select(readers, [], [], max(0.0, wake - now))
            now = time.monotonic()
            for sock in readable:
                if sock is stdin:
                    chunk = os.read(stdin, 4096)
                    if not chunk:
                        readers.remove(stdin)  # EOF (or /dev/null): no more commands
                        continue
                    pending_input += chunk
                    while b"\n" in pending_input:
                        raw, pending_input = pending_input.split(b"\n", 1)
                        if line := raw.decode().strip():
                            record = run_command(session, line, children, now)
                            _emit(record)
                            if "error" not in record:
                                busy_after = line
                    continue
                data, addr = sock.recvfrom(65535)
                if sock is sock_nat:
                    if data == NAT_KEEPALIVE:
                        counters["nat keepalive"] += 1
                        continue
                    if not data.startswith(NON_ESP_MARKER):
                        counters["esp"] += 1  # IKE only here: ESP is counted, not decrypted
                        continue
                    data = data[len(NON_ESP_MARKER) :]
                counters[f"received {addr[1]}->{sock.getsockname()[1]}"] += 1
                session.receive_datagram(data, (addr[0], addr[1]), now)
            timer = session.get_timer()
            if timer is not None and time.monotonic() >= timer:
                session.handle_timer(time.monotonic())
    except _TerminatedError:
        pass
    finally:
        _emit({"event": "stopped", "drops": dict(session.drops), "counters": dict(counters)})
        sock_ike.close()
        sock_nat.close()
    return status


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=("initiator", "responder"), required=True)
    parser.add_argument("--local", required=True, help="our IPv4 address (ports 500 and 4500)")
    parser.add_argument("--remote", help="the responder's address (initiator only)")
    parser.add_argument("--local-id", required=True, help="our ID_FQDN (or RFC822 with @)")
    parser.add_argument("--remote-id", default="", help="the peer's ID_FQDN (or RFC822)")
    parser.add_argument("--psk", default="", help="the PSK (not needed with --cert/--key)")
    parser.add_argument("--cert", help="our PEM certificate (then intermediates): sign AUTH")
    parser.add_argument("--key", help="our PEM (PKCS#8) private key, with --cert")
    parser.add_argument("--ca", action="append", default=[], help="PEM trust anchor(s)")
    parser.add_argument("--ike", action="append", default=None, help="IKE proposal (repeatable)")
    parser.add_argument("--esp", action="append", default=None, help="ESP proposal (repeatable)")
    parser.add_argument("--force-encap", action="store_true", help="fake a NAT (encap=yes)")
    parser.add_argument("--pfs", choices=sorted(PFS_GROUPS), help="KE group of a Child rekey")
    parser.add_argument("--pool-start", default="10.99.100.1", help="responder: first lease")
    parser.add_argument("--pool6-start", default="", help="responder: first IPv6 lease")
    parser.add_argument(
        "--subnet", action="append", default=None, help="responder: TSr network (v4 or v6)"
    )
    parser.add_argument("--dns", action="append", default=[], help="responder: DNS server (v4/v6)")
    parser.add_argument(
        "--request-ipv6", action="store_true", help="initiator: ask for an IPv6 address too"
    )
    parser.add_argument("--lifetime", type=float, default=30.0, help="seconds before leaving")
    args = parser.parse_args(argv)
    args.ike = args.ike or list(defaults.IKE_PROPOSALS)
    args.esp = args.esp or list(defaults.ESP_PROPOSALS)
    args.subnet = args.subnet or ["10.99.0.0/24"]
    if args.role == "initiator" and not args.remote:
        parser.error("an initiator needs --remote")
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    if not args.psk and not args.cert:
        parser.error("--psk or --cert/--key is needed")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run_driver(parse_args(argv))


# --- the test's side: start the driver in a namespace, read its events -------------------


class DriverProcess:
    """A running driver in ``host`` (a ``tests.helpers.netns.Host``); the lab stops it.

    Its stdout lines are read on a thread into a queue, so :meth:`wait_for`
    can time out; stderr is kept for failure messages.
    """

    def __init__(self, host: Any, args: Sequence[str]) -> None:
        self.events: list[dict[str, Any]] = []
        self._queue: Queue[dict[str, Any] | None] = Queue()
        self._stderr: list[str] = []
        self.process: subprocess.Popen[str] = host.popen(
            [sys.executable, "-m", "tests.helpers.ike_driver", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self._queue.put(json.loads(line))
            except ValueError:
                self._stderr.append(f"(stdout) {line}")
        self._queue.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def wait_for(self, *names: str, timeout: float = 10.0) -> dict[str, Any]:
        """The first event (from now on) whose name is one of ``names``; raises on timeout/exit."""
        for seen in self.events:
            if seen["event"] in names and not seen.get("_taken"):
                seen["_taken"] = True
                return seen
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                event = self._queue.get(timeout=max(0.0, remaining))
            except Empty:
                raise AssertionError(
                    f"driver: no {names} in {timeout} s; events {self.events}\n{self.stderr}"
                ) from None
            if event is None:
                self._queue.put(None)  # keep reporting the end
                raise AssertionError(
                    f"driver exited ({self.process.poll()}) before {names}; "
                    f"events {self.events}\n{self.stderr}"
                )
            self.events.append(event)
            if event["event"] in names:
                event["_taken"] = True
                return event

    def collect(self, timeout: float = 0.5) -> list[dict[str, Any]]:
        """Every event so far, after waiting up to ``timeout`` for more."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                event = self._queue.get(timeout=remaining)
            except Empty:
                break
            if event is None:
                self._queue.put(None)
                break
            self.events.append(event)
        return self.events

    def command(self, line: str) -> dict[str, Any]:
        """Send one stdin command (``check_liveness``, ``rekey_child [SPI]``, ``rekey_ike``,
        ``delete``); its ``command`` record, which must carry no ``error``."""
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        record = self.wait_for("command", timeout=5)
        assert record["command"] == line.split()[0], record
        assert "error" not in record, record
        return record

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM and wait; the exit status (the lab kills it if this fails)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


if __name__ == "__main__":
    sys.exit(main())
