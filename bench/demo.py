"""`make demo`: two hosts, one Outpost tunnel between them, what happened in a few lines.

Until the IKEv2 core and the client/concentrator services land, the demo
shows the part that exists end to end: the data plane on real TUN devices
between two network namespaces, keyed by hand (fresh random keys each run).
It pings through the tunnel, runs a short iperf3 transfer, shows from the
counters that every packet crossed as ESP-in-UDP, and removes everything.

    [demo-a] 10.10.0.1 (TUN) -- ESP in UDP 4500 -- [demo-b] 10.10.0.2 (TUN)
             192.0.2.1 ========= veth ========== 192.0.2.2
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import tempfile
from pathlib import Path

from netlab.iperf import Iperf3
from netlab.netns import NamespacePair, ping
from netlab.outpost import OutpostManualTunnel, mirrored_sides
from netlab.process import LabError, install_signal_handlers, require_tools

REPO = Path(__file__).resolve().parents[1]
SUITE = "aes256gcm16"
INNER_A, INNER_B = "10.10.0.1", "10.10.0.2"


def main() -> int:
    if os.geteuid() != 0:
        print("make demo builds network namespaces and TUN devices: run it as root.")
        return 2
    require_tools("ip", "ping", "iperf3")
    install_signal_handlers()
    key_a_in, key_b_in = secrets.token_hex(36), secrets.token_hex(36)
    spi_a, spi_b = 0x1000 + secrets.randbelow(1 << 20), 0x2000000 + secrets.randbelow(1 << 20)
    with (
        tempfile.TemporaryDirectory(prefix="outpost-demo-") as logs,
        NamespacePair(prefix="odemo") as pair,
    ):
        sides = mirrored_sides(
            pair,
            inner_a=INNER_A,
            inner_b=INNER_B,
            spi_a_in=spi_a,
            spi_b_in=spi_b,
            key_a_in=key_a_in,
            key_b_in=key_b_in,
        )
        tunnels = [
            OutpostManualTunnel(
                side, python=sys.executable, cwd=REPO, suite=SUITE, log_dir=Path(logs)
            )
            for side in sides
        ]
        try:
            for tunnel in tunnels:
                tunnel.start()
            ready, _ = (tunnel.wait_ready() for tunnel in tunnels)
            print(f"tunnel up: {pair.ns_a} {INNER_A} <-> {pair.ns_b} {INNER_B}, {SUITE}, "
                  f"ESP in UDP 4500, TUN MTU {ready['tun_mtu']} for a path MTU of "
                  f"{ready['path_mtu']}")  # fmt: skip
            pings = ping(pair.ns_a, INNER_B, count=5, timeout=20)
            rtt = re.search(r"= [\d.]+/([\d.]+)/", pings.stdout)
            print(f"ping {INNER_B} through the tunnel: 5/5 replies, "
                  f"average round trip {rtt.group(1) if rtt else '?'} ms")  # fmt: skip
            tcp = Iperf3(pair.ns_a, pair.ns_b, INNER_B).tcp(3.0)
            print(f"iperf3 TCP for 3 s: {tcp.mbps:.0f} Mbit/s, {tcp.retransmits} retransmits")
        finally:
            stopped = [tunnel.stop() for tunnel in tunnels]
        received = (stopped[1] or {}).get("inbound", {})
        print(f"{pair.ns_b} decrypted {received.get('packets', 0)} ESP packets "
              f"({received.get('octets', 0) / 1e6:.1f} MB inner), dropped "
              f"{sum(v for k, v in received.items() if k.startswith('drop_'))}")  # fmt: skip
    print("cleaned up: namespaces and TUN devices removed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LabError as error:
        print(f"demo failed: {error}", file=sys.stderr)
        sys.exit(1)
