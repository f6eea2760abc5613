"""What the control socket and the metrics endpoint show: the service's view, as plain dicts.

``ServiceView`` is the one API the user interfaces talk to (STYLE.md
principle 4, strongSwan's vici): ``control.py`` answers ``status``,
``sessions``, ``disconnect`` and ``reload`` through it, and ``metrics.py``
turns ``status()`` into Prometheus families. The service implements it in a
few lines with the pure builders below, which take the ``TunnelManager``, a
``DataPlaneCounters`` reading and the pool, so what an admin sees is
unit-testable without sockets, workers or clocks.

Everything returned is JSON-able (str keys, str/int/float/bool/None, lists,
dicts): the control socket sends it as is, ``--json`` prints it as is, and
the metrics exporter can copy it to another thread without sharing a single
object with the asyncio loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, Protocol

from common.dataplane.control import DataPlaneCounters
from common.dataplane.messages import SaCounters
from common.ike.exchanges import format_address
from concentrator.manager import TunnelManager
from concentrator.pool import PoolUsage
from concentrator.tunnel import Tunnel
from concentrator.users import ReloadReport

# The manager's handshake counter keys: "established", "failed: <reason>",
# "child failed: <reason>", "half-open timeout". Everything but the first is
# a failure; "failed: " is dropped from the reason, the rest is kept so a
# Child SA refusal stays distinguishable from an IKE one.
ESTABLISHED = "established"
_FAILED_PREFIX = "failed: "
# Keys of a worker's totals that are neither traffic nor drops.
_TRAFFIC_KEYS = ("packets", "octets")
_DROP_PREFIX = "drop_"


class ServiceView(Protocol):
    """What the running concentrator answers to its control socket and metrics.

    Called on the service's event loop (the control server runs there), so an
    implementation may read the manager directly; ``metrics.py`` never calls
    it from its own thread but takes ``status()`` snapshots the service hands
    over (see ``MetricsExporter``).
    """

    def status(self) -> dict[str, Any]:
        """The whole concentrator at a glance (``build_status``)."""
        ...

    def sessions(self) -> list[dict[str, Any]]:
        """One entry per tunnel (``build_sessions``)."""
        ...

    def disconnect(self, tunnel_id: int) -> bool:
        """Delete one tunnel's IKE SA (the client is told); False if there is no such tunnel."""
        ...

    def reload(self) -> dict[str, Any]:
        """Re-read users and policy from the configuration file (``reload_report``).

        Raises:
            Exception: whatever makes the new file unusable (a ``ConfigError``);
                the control server sends its one-line message back.
        """
        ...


class PoolView(Protocol):
    """The part of ``AddressPool`` the status needs."""

    def usage(self, version: Literal[4, 6] = 4) -> PoolUsage | None: ...


def package_version() -> str:
    """The installed ``outpost-vpn`` version, or "unknown" when run from a bare checkout."""
    try:
        return metadata.version("outpost-vpn")
    except metadata.PackageNotFoundError:
        return "unknown"


# --- memory -----------------------------------------------------------------------------


def resident_bytes(pid: int | None = None) -> int | None:
    """A process's resident set size (``VmRSS``) from ``/proc``; None if it is gone or unreadable.

    ``/proc/PID/status`` rather than ``resource.getrusage``: the latter gives
    the peak (``ru_maxrss``), and only for ourselves and reaped children, while
    the workers are live children whose current size is what an admin watches.
    """
    path = Path("/proc/self/status" if pid is None else f"/proc/{pid}/status")
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            fields = line.split()
            try:
                value = int(fields[1])
            except (IndexError, ValueError):
                return None
            unit = fields[2].lower() if len(fields) > 2 else "kb"
            return value * 1024 if unit == "kb" else value
    return None  # kernel threads have no VmRSS


def process_memory(worker_pids: Mapping[str, int] | None = None) -> dict[str, int]:
    """RSS of this process ("concentrator") and of each data-plane worker process by role.

    Worker threads (``mode="thread"``) share our RSS, so pass no pids then.
    A process that cannot be read is left out rather than shown as 0.
    """
    memory: dict[str, int] = {}
    own = resident_bytes()
    if own is not None:
        memory["concentrator"] = own
    for role, pid in (worker_pids or {}).items():
        rss = resident_bytes(pid)
        if rss is not None:
            memory[role] = rss
    return memory


# --- status -----------------------------------------------------------------------------


def build_status(
    manager: TunnelManager,
    counters: DataPlaneCounters | None,
    pool: PoolView,
    *,
    listen: Sequence[object],
    uptime_s: float,
    memory: Mapping[str, int] | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """The ``status`` answer and the metrics snapshot.

    Args:
        manager: the control plane (tunnels, half-open SAs, handshake/closure/drop counters).
        counters: the latest data-plane reading; None before the first one (zeros are shown).
        pool: the address pool, for its per-family usage.
        listen: our listening addresses, as configured.
        uptime_s: seconds since the service started.
        memory: ``process_memory()``; taken as a parameter so this stays pure.
        version: defaults to the installed package's.

    Returns:
        A JSON-able dict; its keys are documented by the code below and read
        by ``metrics.py`` and the CLI.
    """
    handshakes, failures = split_handshakes(manager.handshakes)
    return {
        "version": version if version is not None else package_version(),
        "uptime_s": round(uptime_s, 3),
        "listen": [str(address) for address in listen],
        "tunnels": sum(1 for _ in manager.established()),
        "half_open": manager.half_open,
        "pool": pool_status(pool),
        "handshakes": handshakes,
        "handshake_failures": failures,
        "closures": dict(sorted(manager.closures.items())),
        "ike_drops": dict(sorted(manager.ike_drops.items())),
        "dataplane": dataplane_totals(counters),
        "memory": dict(memory or {}),
    }


def split_handshakes(counter: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """The manager's handshake counter as ``({established, failed}, {reason: count})``.

    A Child SA refused right after its IKE SA was established counts once as
    ``established`` (the IKE SA was) and once as a failure (the tunnel was
    not): the manager counts both facts and we do not guess which one an
    admin prefers.
    """
    failures: dict[str, int] = {}
    for key, count in counter.items():
        if key == ESTABLISHED or not count:
            continue
        reason = key.removeprefix(_FAILED_PREFIX)
        failures[reason] = failures.get(reason, 0) + count
    results = {ESTABLISHED: counter.get(ESTABLISHED, 0), "failed": sum(failures.values())}
    return results, dict(sorted(failures.items()))


def pool_status(pool: PoolView) -> dict[str, dict[str, int]]:
    """Per family ("ipv4", "ipv6" when configured): size, active, released, free."""
    families: dict[str, dict[str, int]] = {}
    versions: tuple[Literal[4, 6], ...] = (4, 6)
    for version in versions:
        usage = pool.usage(version)
        if usage is not None:
            families[f"ipv{version}"] = {
                "size": usage.size,
                "active": usage.active,
                "released": usage.released,
                "free": usage.free,
            }
    return families


def dataplane_totals(counters: DataPlaneCounters | None) -> dict[str, Any]:
    """Both workers' totals: packets/bytes per direction, drops per direction and reason.

    ``inbound`` is ESP from clients decrypted towards the LAN, ``outbound``
    LAN traffic encrypted towards clients. Other worker counters
    (keepalives, IKE datagrams handed up) are kept under ``other``.
    """
    result: dict[str, Any] = {}
    for direction in ("inbound", "outbound"):
        totals = {} if counters is None else getattr(counters, direction)
        drops = {
            key.removeprefix(_DROP_PREFIX): count
            for key, count in totals.items()
            if key.startswith(_DROP_PREFIX)
        }
        other = {
            key: count
            for key, count in totals.items()
            if key not in _TRAFFIC_KEYS and not key.startswith(_DROP_PREFIX)
        }
        result[direction] = {
            "packets": totals.get("packets", 0),
            "bytes": totals.get("octets", 0),
            "drops": dict(sorted(drops.items())),
            "other": dict(sorted(other.items())),
        }
    return result


# --- sessions ---------------------------------------------------------------------------


def build_sessions(
    manager: TunnelManager,
    counters: DataPlaneCounters | None,
    *,
    now: float,
    wall_now: float,
) -> list[dict[str, Any]]:
    """The ``sessions`` answer: every tunnel the manager holds, oldest first.

    Args:
        manager: the control plane.
        counters: the latest data-plane reading (per-SA packets and bytes); None shows zeros.
        now: the manager's clock (the loop's monotonic time), to compute ages.
        wall_now: ``time.time()`` at the same moment, to turn ``established_at``
            into a Unix time an admin can read (the manager keeps none, on purpose).
    """
    by_spi: dict[tuple[str, int], SaCounters] = {}
    if counters is not None:
        for sa in counters.sas:
            by_spi[(sa.direction, sa.spi)] = sa
    return [
        session_entry(tunnel, by_spi, now=now, wall_now=wall_now)
        for tunnel in sorted(manager.tunnels.values(), key=lambda t: t.tunnel_id)
    ]


def session_entry(
    tunnel: Tunnel,
    sa_counters: Mapping[tuple[str, int], SaCounters],
    *,
    now: float,
    wall_now: float,
) -> dict[str, Any]:
    """One tunnel as ``sessions`` shows it (``sa_counters`` by (direction, SPI))."""
    children: list[dict[str, Any]] = []
    totals = {"packets_in": 0, "bytes_in": 0, "packets_out": 0, "bytes_out": 0}
    for child in sorted(tunnel.children.values(), key=lambda c: c.installed_at):
        # Inbound and outbound SPIs are chosen by different parties and may be
        # equal, so counters are matched by direction as well as SPI.
        inbound = sa_counters.get(("inbound", child.inbound_spi))
        outbound = sa_counters.get(("outbound", child.outbound_spi))
        traffic = {
            "packets_in": inbound.packets if inbound else 0,
            "bytes_in": inbound.octets if inbound else 0,
            "packets_out": outbound.packets if outbound else 0,
            "bytes_out": outbound.octets if outbound else 0,
        }
        for key, value in traffic.items():
            totals[key] += value
        children.append(
            {
                "inbound_spi": f"{child.inbound_spi:08x}",
                "outbound_spi": f"{child.outbound_spi:08x}",
                "suite": child.suite,
                "inner_networks": [str(n) for n in child.inner_networks],
                **traffic,
            }
        )
    established_at = tunnel.established_at
    return {
        "id": tunnel.tunnel_id,
        "identity": None if tunnel.identity is None else str(tunnel.identity),
        "outer": format_address(tunnel.remote),
        "local": format_address(tunnel.local),
        "inner": [str(address) for address in tunnel.leased],
        "ike_suite": tunnel.ike_suite,
        "esp_suite": tunnel.esp_suite,
        "established_at": (
            None if established_at is None else round(wall_now - (now - established_at), 3)
        ),
        "uptime_s": None if established_at is None else round(now - established_at, 3),
        "state": tunnel_state(tunnel),
        "child_sas": children,
        **totals,
    }


def tunnel_state(tunnel: Tunnel) -> str:
    """ "half-open" until IKE_AUTH completes, "established", then "closing" once deleting."""
    if tunnel.closing:
        return "closing"
    return "established" if tunnel.established else "half-open"


# --- reload -----------------------------------------------------------------------------


def reload_report(report: ReloadReport) -> dict[str, Any]:
    """A ``ReloadReport`` as the ``reload`` command's JSON answer."""
    return {
        "added": list(report.added),
        "removed": list(report.removed),
        "changed": list(report.changed),
        "restart_required": list(report.restart_required),
    }
