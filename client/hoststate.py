"""What a running client changed on the host, kept on disk so the next start can repair it.

A client undoes its routes and DNS when it stops (``client.routes``,
``client.dns``), but a client killed with SIGKILL, or one that crashes in
the interpreter, undoes nothing. So before each change the
client writes what it is about to change to ``/run/outpost/client-<profile>.json``
(:class:`HostState`), and removes the file once everything is undone. At the
next start, :func:`repair_stale` finds the files of clients that are no longer
running and undoes what they list.

What really needs repair after a kill (checked, not assumed):

- the **TUN device** does not: ours are not persistent (no TUNSETPERSIST in
  ``common.hostnet.linux``), so the kernel deletes the device when the last
  descriptor closes, and with it its addresses and every route through it.
  The data-plane workers hold the descriptor too, but they exit when their
  control channel to the dead client closes. A device still present at repair
  time is reported, not removed (``HostNetwork`` has no way to delete a link
  and a present device means some process still holds it);
- **routes through the TUN** go with the device; removing them again is
  harmless (ESRCH is ignored);
- the **host route pinning the gateway** to the physical interface (full
  tunnel) stays and must be removed: it would keep the gateway's traffic on
  a path that may no longer be right after the laptop moves;
- **DNS** stays entirely: resolv.conf files keep our servers (which no
  longer answer) until restored from the backup; systemd-resolved forgets a
  link's settings when the link vanishes, so ``resolvectl revert`` is only a
  safety net there.

A client counts as dead when its pid is gone, is a zombie, or belongs to a
process started at a different time (pid reuse: the start time from
``/proc/<pid>/stat`` is recorded with the pid).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any, Final

from client.dns import DnsEnvironment, DnsError, DnsRecord, restore_dns
from client.routes import remove_routes
from common.hostnet.base import HostNetwork, HostNetworkError, Route, describe_route

STATE_DIR: Final = Path("/run/outpost")
FORMAT_VERSION: Final = 1
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]")


class HostStateBusy(Exception):  # noqa: N818 - reads as what happened
    """Another running client already uses this profile."""


def process_start_time(pid: int, proc: Path = Path("/proc")) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone or a zombie."""
    try:
        data = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = data.rpartition(")")[2].split()  # the command name may hold spaces and ')'
    if not fields or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 of proc(5); fields[0] is field 3


def process_alive(pid: int, start_time: int | None) -> bool:
    """Whether the process that wrote a state file still runs (same pid, same start)."""
    now = process_start_time(pid)
    return now is not None and (start_time is None or now == start_time)


def state_path(state_dir: Path, profile: str) -> Path:
    """``client-<profile>.json``, with characters unsafe in a file name replaced."""
    return state_dir / f"client-{_UNSAFE.sub('_', profile) or '_'}.json"


@dataclass(slots=True)
class HostState:
    """The state file of this client: written before each change, removed after undo."""

    state_dir: Path
    profile: str
    pid: int = field(default_factory=os.getpid)
    tun: str = ""
    routes: list[Route] = field(default_factory=list)
    dns: DnsRecord | None = None

    @property
    def path(self) -> Path:
        """Where the file is."""
        return state_path(self.state_dir, self.profile)

    def begin(self, alive: Callable[[int, int | None], bool] = process_alive) -> None:
        """Start recording (call after :func:`repair_stale`).

        Raises:
            HostStateBusy: a running client already holds this profile's file.
        """
        existing = _read(self.path)
        if existing is not None and existing.get("pid") != self.pid:
            pid = int(existing.get("pid", 0))
            if alive(pid, existing.get("start_time")):
                raise HostStateBusy(f"profile {self.profile} is already connected by process {pid}")
        self._write()

    def set_tun(self, name: str) -> None:
        """Record the TUN device (before creating it)."""
        self.tun = name
        self._write()

    def add_routes(self, routes: Sequence[Route]) -> None:
        """Record routes about to be added (``apply_routes``'s ``before_change``)."""
        self.routes += routes
        self._write()

    def set_dns(self, record: DnsRecord | None) -> None:
        """Record the DNS change about to be made (``apply_dns``'s ``before_change``)."""
        self.dns = record
        self._write()

    def clear_routes(self) -> None:
        """The routes were undone."""
        self.routes.clear()
        self._write()

    def finish(self) -> None:
        """Everything was undone: the file goes."""
        self.path.unlink(missing_ok=True)

    def to_json(self) -> dict[str, Any]:
        """The file's content."""
        return {
            "version": FORMAT_VERSION,
            "pid": self.pid,
            "start_time": process_start_time(self.pid),
            "profile": self.profile,
            "tun": self.tun,
            "routes": [_route_json(r) for r in self.routes],
            "dns": None if self.dns is None else self.dns.to_json(),
        }

    def _write(self) -> None:
        """Atomically (temporary file, then rename), so a kill never leaves half a file."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(temporary, self.path)


def repair_stale(
    state_dir: Path,
    host: HostNetwork,
    *,
    dns_env: DnsEnvironment | None = None,
    alive: Callable[[int, int | None], bool] = process_alive,
    sys_class_net: Path = Path("/sys/class/net"),
) -> list[str]:
    """Undo what dead clients left; returns one line per thing done or found, for the log.

    A file whose repair failed is kept, so a later start (or the person, told
    by the returned line) can finish it; files of running clients are left alone.
    """
    lines: list[str] = []
    if not state_dir.is_dir():
        return lines
    for path in sorted(state_dir.glob("client-*.json")):
        data = _read(path)
        if data is None:
            lines.append(f"{path}: unreadable stale state file removed")
            path.unlink(missing_ok=True)
            continue
        pid = int(data.get("pid", 0))
        if pid == os.getpid() or alive(pid, data.get("start_time")):
            continue
        lines += _repair_one(path, data, pid, host, dns_env, sys_class_net)
    return lines


def _repair_one(
    path: Path,
    data: dict[str, Any],
    pid: int,
    host: HostNetwork,
    dns_env: DnsEnvironment | None,
    sys_class_net: Path,
) -> list[str]:
    who = f"client {pid} (profile {data.get('profile', '?')})"
    lines: list[str] = []
    failed = False
    try:
        routes = [_route_from_json(r) for r in data.get("routes") or []]
        dns = DnsRecord.from_json(data["dns"]) if data.get("dns") else None
    except (KeyError, TypeError, ValueError) as exc:
        path.unlink(missing_ok=True)
        return [f"{path}: malformed stale state file removed ({exc})"]
    try:
        removed = remove_routes(host, routes)
    except HostNetworkError as exc:
        failed = True
        lines.append(f"stale routes of {who} not all removed: {exc}")
    else:
        lines += [f"removed the stale route {_describe(r)} of {who}" for r in removed]
    if dns is not None:
        try:
            restore_dns(dns, dns_env)
        except DnsError as exc:
            failed = True
            lines.append(f"stale DNS of {who} not restored: {exc}")
        else:
            lines.append(f"restored DNS ({dns.backend}) changed by {who}")
    tun = data.get("tun") or ""
    if tun and (sys_class_net / tun).exists():
        lines.append(
            f"TUN device {tun} of {who} still exists: a process still holds it open "
            "(a data-plane worker that did not exit?)"
        )
    if not failed:
        path.unlink(missing_ok=True)
    return lines


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _route_json(route: Route) -> dict[str, Any]:
    return {
        "network": str(route.network),
        "ifname": route.ifname,
        "gateway": None if route.gateway is None else str(route.gateway),
        "table": route.table,
        "metric": route.metric,
    }


def _route_from_json(data: dict[str, Any]) -> Route:
    gateway = data.get("gateway")
    return Route(
        ip_network(data["network"]),
        ifname=data.get("ifname"),
        gateway=None if gateway is None else ip_address(gateway),
        table=data.get("table"),
        metric=data.get("metric"),
    )


def _describe(route: Route) -> str:
    return describe_route(route.network, route.ifname, route.gateway, route.table, route.metric)
