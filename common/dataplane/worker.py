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
    """Process entry: ``python -m common.dataplane.worker ROLE TUN UDP[,UDP...] CONTROL IKE
    offload|plain [MSS_CLAMP_MTU]``.

    File descriptors are inherited from the control plane (``pass_fds``), so
    a worker opens nothing itself and needs no privilege of its own. Several
    UDP descriptors, comma-separated, keep the order of ``SaPair.local_socket``.
    """
    import signal
    import sys

    args = sys.argv[1:] if argv is None else argv
    role, tun_fd, control_fd, ike_fd = args[0], int(args[1]), int(args[3]), int(args[4])
    udp_fds = [int(fd) for fd in args[2].split(",")]
    tun_offload = len(args) > 5 and args[5] == "offload"
    mss_clamp_mtu = int(args[6]) if len(args) > 6 and int(args[6]) > 0 else None
    # Ctrl-C and group-wide SIGTERMs (timeout, systemd) reach us too; the control
    # plane decides when we stop (closing the channel), after reading final counters.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sockets = [socket.socket(fileno=fd) for fd in udp_fds]
    control = socket.socket(fileno=control_fd)
    worker: Worker
    if role == "outbound":
        worker = OutboundWorker(
            tun_fd,
            sockets,
            control,
            exit_on_close=True,
            tun_offload=tun_offload,
            mss_clamp_mtu=mss_clamp_mtu,
        )
    elif role == "inbound":
        ike = socket.socket(fileno=ike_fd)
        worker = InboundWorker(
            tun_fd,
            sockets,
            control,
            ike,
            exit_on_close=True,
            tun_offload=tun_offload,
            mss_clamp_mtu=mss_clamp_mtu,
        )
    else:
        raise SystemExit(f"unknown worker role {role!r}")
    worker.run()


if __name__ == "__main__":
    main()
