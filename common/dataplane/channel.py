"""Message framing between the control plane and a data-plane worker.

A ``SOCK_SEQPACKET`` Unix socket pair keeps message boundaries, so one pickled
message is one ``send``. Both ends are this program's own processes, which is
what makes pickle acceptable here; nothing from the network is unpickled.
"""

from __future__ import annotations

import pickle
import socket
from typing import Final

MAX_MESSAGE: Final = 1 << 20


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(control-plane end, worker end)."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (parent, child):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MAX_MESSAGE)
    return parent, child


def send_message(sock: socket.socket, message: object, *, block: bool = True) -> bool:
    """Send one message; ``False`` (never an exception) when non-blocking and the peer is full."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        sock.send(data, 0 if block else socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    return True


def receive_message(sock: socket.socket) -> object | None:
    """The next message, or ``None`` when the other end closed."""
    data = sock.recv(MAX_MESSAGE)
    if not data:
        return None
    message: object = pickle.loads(data)
    return message
