"""Readings of the concentrator under test: its ``status`` over the control socket, and its CPU.

The control socket speaks one JSON line each way (concentrator/control.py);
it is spoken here again, in a dozen lines, rather than imported, so the load
tester depends on the concentrator's protocol and not on its code. The
socket's peer credentials (``SO_PEERCRED``) name the concentrator's process,
so its CPU time (and its data-plane workers', its child processes) is read
from ``/proc`` with nothing else to configure. That works when the tester and
the concentrator share a PID namespace, as network-namespace labs do.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

from loadtest.stats import GatewayReading

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class GatewayStatusError(Exception):
    """The control socket could not be read."""


def request(path: str | Path, command: str, timeout: float = 10.0) -> tuple[Any, int | None]:
    """Ask the concentrator ``command``; its result and the pid that answered."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            sock.sendall(json.dumps({"command": command, "arguments": {}}).encode() + b"\n")
            chunks: list[bytes] = []
            while not chunks or not chunks[-1].endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as error:
            raise GatewayStatusError(f"control socket {path}: {error}") from None
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        raise GatewayStatusError(f"control socket {path}: not JSON") from None
    if not isinstance(answer, dict) or not answer.get("ok"):
        raise GatewayStatusError(f"control socket {path}: {answer!r:.200}")
    pid = struct.unpack("iII", credentials)[0]
    return answer.get("result"), (pid or None)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of ``pid`` and of its live children (the data-plane workers)."""
    total = 0.0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    pids += [int(c) for c in children]
    for each in pids:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            if each == pid:
                return None
            continue
        # utime and stime are fields 14 and 15 of stat(5); fields[0] is field 3.
        total += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return total


def read_gateway(path: str | Path) -> GatewayReading:
    """One reading: tunnels, resident bytes of the concentrator and its workers, CPU so far."""
    status, pid = request(path, "status")
    memory = {str(k): int(v) for k, v in dict(status.get("memory") or {}).items()}
    return GatewayReading(
        tunnels=int(status.get("tunnels", 0)),
        rss_bytes=sum(memory.values()),
        cpu_s=None if pid is None else cpu_seconds(pid),
        at_s=time.monotonic(),
        memory=memory,
    )
