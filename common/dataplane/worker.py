"""Process entry of a data-plane worker (``python -m common.dataplane.worker``).

The control plane (``common.dataplane.control``) spawns one process per
direction and hands each its descriptors; the loops live in ``inbound`` and
``outbound``, what they share in ``base``.
"""

from __future__ import annotations

import socket

from common.dataplane.base import Worker
from common.dataplane.inbound import InboundWorker
from common.dataplane.outbound import OutboundWorker


def main(argv: list[str] | None = None) -> None:
    """Process entry: ``python -m common.dataplane.worker ROLE TUN UDP CONTROL IKE [offload]``.

    File descriptors are inherited from the control plane (``pass_fds``), so
    a worker opens nothing itself and needs no privilege of its own.
    """
    import signal
    import sys

    args = sys.argv[1:] if argv is None else argv
    role, tun_fd, udp_fd, control_fd, ike_fd = args[0], *map(int, args[1:5])
    tun_offload = len(args) > 5 and args[5] == "offload"
    # Ctrl-C and group-wide SIGTERMs (timeout, systemd) reach us too; the control
    # plane decides when we stop (closing the channel), after reading final counters.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    udp = socket.socket(fileno=udp_fd)
    control = socket.socket(fileno=control_fd)
    worker: Worker
    if role == "outbound":
        worker = OutboundWorker(tun_fd, udp, control, exit_on_close=True, tun_offload=tun_offload)
    elif role == "inbound":
        ike = socket.socket(fileno=ike_fd)
        worker = InboundWorker(
            tun_fd, udp, control, ike, exit_on_close=True, tun_offload=tun_offload
        )
    else:
        raise SystemExit(f"unknown worker role {role!r}")
    worker.run()


if __name__ == "__main__":
    main()
