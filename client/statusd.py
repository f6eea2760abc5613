"""The client's local status socket, for ``outpost status`` while a client runs.

It reuses the concentrator's control socket (``concentrator.control``): the
same JSON-lines protocol, 0600 socket in a 0700 directory, stale-socket
replacement and hardening against misbehaving clients. Only ``status`` means
something for a client; ``sessions`` lists its one tunnel, ``disconnect``
closes it, and ``reload`` is refused, so every command of the shared
protocol has an honest answer.

Where: ``/run/outpost/client.sock`` for root (the usual case: a TUN needs
CAP_NET_ADMIN), ``$XDG_RUNTIME_DIR/outpost/client.sock`` for anyone else.
``outpost status`` tries its own place first, then root's. Inside a named
network namespace (``ip netns exec NAME``) root's place is
``/run/outpost/netns/NAME/``: each namespace has its own routes, DNS file and
tunnel, so clients in different namespaces must not share a socket or the
stale-state records that repair acts on.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Final

from client.state import ClientStatus

ROOT_SOCKET: Final = Path("/run/outpost/client.sock")
NETNS_DIR: Final = Path("/run/netns")  # where ``ip netns`` keeps its named namespaces


def current_netns_name(netns_dir: Path = NETNS_DIR) -> str:
    """The ``ip netns`` name of the network namespace we run in, or ``""`` (none, or unnamed).

    What ``ip netns identify`` does, without running it: the named namespaces
    are bind mounts of namespace files, the same inode as our own.
    """
    try:
        ours = os.stat("/proc/self/ns/net")
        names = sorted(netns_dir.iterdir())
    except OSError:
        return ""
    for path in names:
        try:
            found = path.stat()
        except OSError:
            continue
        if (found.st_dev, found.st_ino) == (ours.st_dev, ours.st_ino):
            return path.name
    return ""


def root_socket_path() -> Path:
    """Root's socket: per named network namespace, else ``ROOT_SOCKET``."""
    namespace = current_netns_name()
    if namespace:
        return ROOT_SOCKET.parent / "netns" / namespace / ROOT_SOCKET.name
    return ROOT_SOCKET


def default_socket_path() -> Path:
    """Where this user's client listens (see the module docstring)."""
    if os.geteuid() == 0:
        return root_socket_path()
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
    if root_socket_path() not in paths:
        paths.append(root_socket_path())
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
