"""A manually keyed tunnel: the data plane on a real TUN device, with no IKE.

What ``ip xfrm state add`` is to the kernel, this is to Outpost: both ends are
given SPIs and keys on the command line, so the data plane can be tested and
benchmarked between network namespaces before (and independently of) IKE.
Keys on a command line are visible to other local users: this tool is for
test hosts and benchmarks, never for production tunnels.

Output is one JSON object per line on stdout: ``ready`` once packets flow,
``counters`` on SIGUSR1, and ``stopped`` (with final counters) on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import socket
import sys
import time
from dataclasses import asdict
from types import FrameType

from common.dataplane.control import DataPlane, DataPlaneCounters
from common.dataplane.messages import SaPair
from common.dataplane.prefixmap import IpNetwork, parse_network
from common.esp.natt import NAT_T_PORT
from common.esp.suites import SUITES, suite_by_name, tunnel_mtu
from common.hostnet.base import HostNetworkError
from common.hostnet.linux import LinuxHostNetwork


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outpost-manual-tunnel",
        description="Run the Outpost data plane with manually given SPIs and keys (test/bench).",
    )
    parser.add_argument("--tun", required=True, help="TUN device name to create")
    parser.add_argument(
        "--address",
        action="append",
        required=True,
        help="inner address/prefix on the TUN; repeat for IPv4 and IPv6 together",
    )
    parser.add_argument("--local", required=True, help="outer address to bind")
    parser.add_argument("--local-port", type=int, default=NAT_T_PORT)
    parser.add_argument("--peer", required=True, help="peer's outer address")
    parser.add_argument("--peer-port", type=int, default=NAT_T_PORT)
    parser.add_argument("--suite", default="aes256gcm16", choices=sorted(SUITES))
    parser.add_argument("--spi-in", required=True, type=lambda v: int(v, 0))
    parser.add_argument("--spi-out", required=True, type=lambda v: int(v, 0))
    parser.add_argument("--key-in", required=True, help="hex KEYMAT for the inbound SA")
    parser.add_argument("--key-out", required=True, help="hex KEYMAT for the outbound SA")
    parser.add_argument("--esn", action="store_true", help="64-bit extended sequence numbers")
    parser.add_argument(
        "--remote-net",
        action="append",
        required=True,
        help="peer's inner network (routed into the tunnel, accepted as source); repeatable",
    )
    parser.add_argument("--replay-window", type=int, default=4096)
    parser.add_argument("--path-mtu", type=int, help="outer path MTU (default: from the route)")
    parser.add_argument("--mode", choices=("process", "thread"), default="process")
    parser.add_argument(
        "--no-offload", action="store_true", help="plain TUN: no TCP segmentation offloads"
    )
    parser.add_argument(
        "--no-mss-clamp",
        action="store_true",
        help="leave the MSS of TCP SYNs alone (default: clamp to what fits the TUN MTU)",
    )
    return parser


def _emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _counters_dict(counters: DataPlaneCounters) -> dict[str, object]:
    return {
        "inbound": counters.inbound,
        "outbound": counters.outbound,
        "sas": [asdict(sa) for sa in counters.sas],
    }


def _covers(
    interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface, network: IpNetwork
) -> bool:
    if isinstance(interface, ipaddress.IPv4Interface) and isinstance(
        network, ipaddress.IPv4Network
    ):
        return network.subnet_of(interface.network)
    if isinstance(interface, ipaddress.IPv6Interface) and isinstance(
        network, ipaddress.IPv6Network
    ):
        return network.subnet_of(interface.network)
    return False


def run(args: argparse.Namespace) -> int:
    suite = suite_by_name(args.suite)
    peer = ipaddress.ip_address(args.peer)
    remote_nets = [parse_network(n) for n in args.remote_net]
    inner = [ipaddress.ip_interface(address) for address in args.address]
    with LinuxHostNetwork() as host:
        path_mtu = args.path_mtu or host.route_to(peer).mtu
        mtu = tunnel_mtu(path_mtu, (suite,), outer_ipv6=peer.version == 6)
        family = socket.AF_INET6 if peer.version == 6 else socket.AF_INET
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.bind((args.local, args.local_port))
        tun = host.create_tun(args.tun, mtu=mtu, offload=not args.no_offload)
        try:
            for interface in inner:
                host.add_address(tun.name, interface)
            for network in remote_nets:
                if any(_covers(interface, network) for interface in inner):
                    continue  # the connected route already covers it
                host.add_route(network, ifname=tun.name)
            return _serve(args, tun.fileno(), tun.offload, udp, suite.name, path_mtu, mtu)
        finally:
            tun.close()
            udp.close()


def _serve(
    args: argparse.Namespace,
    tun_fd: int,
    tun_offload: bool,
    udp: socket.socket,
    suite: str,
    path_mtu: int,
    mtu: int,
) -> int:
    plane = DataPlane(
        tun_fd,
        udp,
        mode=args.mode,
        tun_offload=tun_offload,
        mss_clamp_mtu=None if args.no_mss_clamp else mtu,
    )
    plane.start()
    plane.install_sa(
        SaPair(
            peer_id=1,
            suite=suite,
            inbound_spi=args.spi_in,
            outbound_spi=args.spi_out,
            peer_address=(args.peer, args.peer_port),
            inner_networks=tuple(args.remote_net),
            inbound_keymat=bytes.fromhex(args.key_in),
            outbound_keymat=bytes.fromhex(args.key_out),
            esn=args.esn,
            replay_window=args.replay_window,
        )
    )
    # Plain flags, not threading.Event: Event.set() in a signal handler can
    # deadlock on the lock the interrupted Event.wait() holds (seen in CI).
    pending: set[str] = set()

    def on_stop(_signum: int, _frame: FrameType | None) -> None:
        pending.add("stop")

    def on_report(_signum: int, _frame: FrameType | None) -> None:
        pending.add("report")

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGUSR1, on_report)
    _emit("ready", tun=args.tun, suite=suite, path_mtu=path_mtu, tun_mtu=mtu, offload=tun_offload)
    try:
        while "stop" not in pending:
            time.sleep(0.2)
            if "report" in pending:
                pending.discard("report")
                _emit("counters", **_counters_dict(plane.counters()))
            if not plane.alive():
                _emit("failed", reason="a data-plane worker exited")
                return 1
        _emit("stopped", **_counters_dict(plane.counters()))
        return 0
    finally:
        plane.stop()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        sys.exit(run(args))
    except HostNetworkError as error:
        print(f"outpost-manual-tunnel: {error}", file=sys.stderr)
        sys.exit(1)
    except (ValueError, OSError) as error:
        print(f"outpost-manual-tunnel: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
