"""The client's local status socket, for ``outpost status`` while a client runs.

It reuses the concentrator's control socket (``concentrator.control``): the
same JSON-lines protocol, 0600 socket in a 0700 directory, stale-socket
replacement and hardening against misbehaving clients. Only ``status`` means
something for a client; ``sessions`` lists its one tunnel, ``disconnect``
closes it, and ``reload`` is refused, so every command of the shared
protocol has an honest answer.

Where: ``/run/outpost/client.sock`` for root (the usual case: a TUN needs
CAP_NET_ADMIN), ``$XDG_RUNTIME_DIR/outpost/client.sock`` for anyone else.
``outpost status`` tries its own place first, then root's.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Final

from client.state import ClientStatus

ROOT_SOCKET: Final = Path("/run/outpost/client.sock")


def default_socket_path() -> Path:
    """Where this user's client listens (see the module docstring)."""
    if os.geteuid() == 0:
        return ROOT_SOCKET
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "outpost" / "client.sock"
    return Path(f"/tmp/outpost-{os.getuid()}/client.sock")  # no session manager: still private


def default_state_dir() -> Path:
    """Where stale-state records go: ``/run/outpost`` for root, else the runtime directory."""
    return default_socket_path().parent


def candidate_socket_paths() -> list[Path]:
    """Where ``outpost status`` looks, in order: this user's place, then root's."""
    paths = [default_socket_path()]
    if ROOT_SOCKET not in paths:
        paths.append(ROOT_SOCKET)
    return paths


class StatusView:
    """``concentrator.status.ServiceView`` for a client: answers from ``status()`` only."""

    def __init__(
        self,
        status: Callable[[], ClientStatus],
        disconnect: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        self._status = status
        self._disconnect = disconnect
        self._tasks: set[asyncio.Task[None]] = set()

    def status(self) -> dict[str, Any]:
        return self._status().to_json()

    def sessions(self) -> list[dict[str, Any]]:
        tunnel = self.status().get("tunnel")
        return [tunnel] if tunnel else []

    def disconnect(self, tunnel_id: int) -> bool:
        """Start a disconnect (the answer does not wait for it); the id is ignored."""
        del tunnel_id
        task = asyncio.get_running_loop().create_task(self._disconnect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def reload(self) -> dict[str, Any]:
        raise ValueError("a client has nothing to reload; restart it with the changed profile")
