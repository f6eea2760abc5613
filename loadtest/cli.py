"""``outpost-loadtest``: the command line of the load tester (README "Load testing").

Exit status: 0 when every client established and no probe was lost or
misdelivered, 1 otherwise (so a CI job can gate on it), 2 for bad arguments
or an unreadable profile (one line, no traceback, as the other commands).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from client.profile import ProfileError, resolve_gateway
from loadtest.profile import load_loadtest_profile
from loadtest.runner import RunOptions, run
from loadtest.stats import dumps

EPILOG = """\
example (1,000 road warriors, 50 new handshakes/s, one ping a second each):
  outpost-loadtest --gateway 192.0.2.1 --profile loadtest.toml --clients 1000 \\
      --rate 50 --duration 30 --traffic 1 --target 10.99.0.10 --json report.json \\
      --concentrator-socket /run/outpost/control.sock

the profile is a client profile whose [auth] id holds {n} (user-{n}@loadtest);
client n uses identity n, from --first on. For certificate users, [auth] holds
certificate_ca and certificate_ca_key (a test CA the gateway trusts) instead of
a PSK, and ca (the gateway's CA): each client gets its own ECDSA P-256
certificate for its identity, issued just before its handshake.
"""


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be positive")
    return value


def _not_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} cannot be negative")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outpost-loadtest",
        description=(
            "Simulate many IKEv2 road warriors against one gateway (Outpost or any IKEv2 "
            "gateway such as strongSwan): each a real initiator asking for an inner "
            "address, each pinging through its own tunnel."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--gateway", help="gateway address (default: the profile's)")
    add("--profile", required=True, help="client profile (TOML); [auth] id may hold {n}")
    add("--clients", type=_count, required=True, help="number of simulated road warriors")
    add("--rate", type=_positive, default=50.0, help="new handshakes per second (default 50)")
    add(
        "--duration",
        type=_not_negative,
        default=10.0,
        help="seconds to hold the tunnels with traffic once all are up (default 10)",
    )
    add(
        "--traffic",
        type=_not_negative,
        default=1.0,
        metavar="PPS",
        help="probes per second per client (default 1; 0: none)",
    )
    add("--target", help="inner address probes go to (a host on the office LAN)")
    add("--protocol", choices=("icmp", "udp"), default="icmp", help="probe kind (default icmp)")
    add("--port", type=int, default=7, help="UDP echo port of the target (udp probes)")
    add("--json", type=Path, help="write the report as JSON here")
    add(
        "--processes",
        type=_count,
        default=os.cpu_count() or 1,
        help="worker processes (default: the number of CPUs)",
    )
    add(
        "--source-addresses",
        metavar="CIDR",
        help=(
            "bind client n to host n of CIDR (they must be local, "
            "e.g. 'ip route add local CIDR dev lo')"
        ),
    )
    add("--first", type=int, default=0, help="number of the first client's identity (default 0)")
    add(
        "--timeout",
        type=_positive,
        default=30.0,
        help="seconds a handshake may take before it counts as a timeout (default 30)",
    )
    add(
        "--retransmit-timeout",
        type=_positive,
        default=2.0,
        help="seconds before the first IKE retransmission (default 2; then x1.8 each)",
    )
    add("--max-in-flight", type=_count, help="hold new handshakes while this many are unanswered")
    add(
        "--flood",
        type=_not_negative,
        default=0.0,
        metavar="RATE",
        help=(
            "during the hold, also send RATE/s IKE_SA_INIT from the source "
            "addresses, never followed up (COOKIE check)"
        ),
    )
    add("--rekey", type=_positive, metavar="S", help="rekey each Child SA S seconds after it is up")
    add(
        "--concentrator-socket",
        metavar="PATH",
        help="Outpost concentrator control socket: report its memory per tunnel and CPU",
    )
    add("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        loaded = load_loadtest_profile(args.profile)
        profile = loaded.profile
        gateway = args.gateway or str(resolve_gateway(profile))
        ipaddress.ip_address(gateway)
        target = str(ipaddress.IPv4Address(args.target)) if args.target else None
        if args.source_addresses:
            ipaddress.ip_network(args.source_addresses, strict=False)
    except (ProfileError, ValueError, OSError) as error:
        print(f"outpost-loadtest: {error}", file=sys.stderr)
        return 2
    for warning in loaded.warnings:
        print(f"outpost-loadtest: warning: {warning}", file=sys.stderr)
    if args.traffic > 0 and target is None:
        print("outpost-loadtest: --traffic needs --target (or --traffic 0)", file=sys.stderr)
        return 2
    options = RunOptions(
        gateway=gateway,
        profile=str(args.profile),
        clients=args.clients,
        rate=args.rate,
        duration_s=args.duration,
        traffic_pps=args.traffic if target else 0.0,
        target=target,
        protocol=args.protocol,
        port=args.port,
        processes=args.processes,
        source_addresses=args.source_addresses,
        first=args.first,
        timeout_s=args.timeout,
        retransmit_timeout_s=args.retransmit_timeout,
        max_in_flight=args.max_in_flight,
        flood_rate=args.flood,
        rekey_after_s=args.rekey,
        concentrator_socket=args.concentrator_socket,
    )
    report = run(options, progress=None if args.quiet else sys.stderr)
    print(report.to_text())
    if args.json is not None:
        args.json.write_text(dumps(report))
    tally = report.tally
    healthy = (
        tally.established == args.clients
        and tally.lost == 0
        and tally.packets_received == tally.packets_sent
        and not tally.reply_errors
    )
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
