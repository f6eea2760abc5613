"""Counting and reporting: what each worker tallies, how the parent adds them up, the report.

Workers send :class:`Tally` deltas (plain dicts and lists, so they cross a
pipe as they are); the parent folds them into one ``Tally`` and, at the end,
into a :class:`Report`. The report math lives here, apart from any I/O, so
the unit tests can check it with made-up numbers: percentiles by linear
interpolation between closest ranks (what ``numpy.percentile`` does by
default, so figures compare with other tools), rates over the span that
actually carried the load, and the concentrator's memory per tunnel as
resident-memory growth over tunnel growth between two ``status`` readings.

Failure reasons come from the IKE events themselves (:func:`failure_reason`):
the Notify the gateway sent when there is one (``AUTHENTICATION_FAILED``,
``INTERNAL_ADDRESS_FAILURE`` for an exhausted pool, ``NO_PROPOSAL_CHOSEN``...),
``timeout`` when the gateway never answered, so an admin reads the same
words as in RFC 7296 and in strongSwan's log.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from common.ike.events import ChildSaFailed, IkeSaFailed, PeerUnreachable

TIMEOUT: Final = "timeout"
# IkeSaFailed reasons the core gives when the peer never answered.
_UNANSWERED: Final = ("peer unreachable",)


def failure_reason(event: IkeSaFailed | ChildSaFailed | PeerUnreachable) -> str:
    """The report's name for why a handshake failed.

    The gateway's Notify wins (it is the gateway's own word); an unanswered
    handshake is a ``timeout``; anything else keeps the core's reason text,
    so no failure is ever hidden under a catch-all.
    """
    if isinstance(event, PeerUnreachable):
        return TIMEOUT
    if event.notify is not None:
        return event.notify.name
    if event.reason in _UNANSWERED:
        return TIMEOUT
    return event.reason.replace(" ", "_")


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (0-100) by linear interpolation; None for no values."""
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} outside 0..100")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Tally:
    """Counters of one worker, or of all of them once merged.

    ``establish_ms`` keeps every client's time to establish (IKE_SA_INIT
    sent to Child SA installed), so percentiles are exact, not bucketed:
    10,000 floats are nothing next to 10,000 tunnels.
    """

    started: int = 0
    established: int = 0
    failed: int = 0
    lost: int = 0  # established tunnels that went down before the end
    closed: int = 0  # tunnels we deleted at the end
    establish_ms: list[float] = field(default_factory=list)
    last_established_s: float | None = None  # on the parent's clock
    failures: Counter[str] = field(default_factory=Counter)
    packets_sent: int = 0
    packets_received: int = 0
    reply_errors: Counter[str] = field(default_factory=Counter)
    esp_drops: Counter[str] = field(default_factory=Counter)
    child_rekeys: int = 0
    ike_rekeys: int = 0
    rekeys_failed: int = 0
    flood_sent: int = 0
    flood_cookies: int = 0
    flood_answered: int = 0
    certificates_issued: int = 0  # client certificates issued by the tester (issuing CA)
    certificate_issue_s: float = 0.0  # CPU-bound time spent issuing them, summed

    def merge(self, other: Tally | Mapping[str, Any]) -> None:
        """Add ``other`` (a Tally or its :meth:`to_wire` dict) into this one."""
        data = other.to_wire() if isinstance(other, Tally) else other
        for name, value in data.items():
            mine = getattr(self, name)
            if name == "last_established_s":
                if value is not None and (mine is None or value > mine):
                    self.last_established_s = value
            elif isinstance(mine, Counter):
                mine.update(value)
            elif isinstance(mine, list):
                mine.extend(value)
            else:
                setattr(self, name, mine + value)

    def to_wire(self) -> dict[str, Any]:
        """A plain dict for the pipe to the parent."""
        return {
            name: (dict(value) if isinstance(value, Counter) else value)
            for name, value in vars(self).items()
        }

    def drain(self) -> dict[str, Any]:
        """This tally as a wire dict, and reset to zero (a worker sends deltas)."""
        data = self.to_wire()
        fresh = Tally()
        fresh.last_established_s = None
        vars(self).update(vars(fresh))
        return data

    @property
    def in_flight(self) -> int:
        return self.started - self.established - self.failed


@dataclass(frozen=True)
class GatewayReading:
    """One ``status`` of the concentrator: tunnels held, resident bytes by process, CPU."""

    tunnels: int
    rss_bytes: int
    cpu_s: float | None = None
    at_s: float = 0.0
    memory: Mapping[str, int] = field(default_factory=dict)


def rss_per_tunnel(before: GatewayReading, after: GatewayReading) -> float | None:
    """Resident memory growth per added tunnel; None when no tunnel was added."""
    added = after.tunnels - before.tunnels
    if added <= 0:
        return None
    return (after.rss_bytes - before.rss_bytes) / added


@dataclass
class Report:
    """The run's outcome: what the text report prints and ``--json`` writes."""

    clients: int
    tally: Tally
    ramp_s: float  # first handshake sent .. last tunnel established
    hold_s: float  # traffic after the ramp
    peak_handshakes_per_s: float = 0.0
    gateway_before: GatewayReading | None = None
    gateway_after: GatewayReading | None = None
    gateway: str = ""

    @property
    def handshakes_per_s(self) -> float:
        """Tunnels established per second of ramp (the sustained handshake rate)."""
        if self.ramp_s <= 0:
            return 0.0
        return self.tally.established / self.ramp_s

    @property
    def loss(self) -> float:
        sent = self.tally.packets_sent
        return 0.0 if sent == 0 else max(0, sent - self.tally.packets_received) / sent

    def establish_percentiles(self) -> dict[str, float | None]:
        values = self.tally.establish_ms
        return {f"p{p}": _round(percentile(values, p)) for p in (50, 95, 99)}

    def concentrator(self) -> dict[str, Any] | None:
        before, after = self.gateway_before, self.gateway_after
        if before is None or after is None:
            return None
        cpu = None
        span = after.at_s - before.at_s
        if before.cpu_s is not None and after.cpu_s is not None and span > 0:
            cpu = round(100 * (after.cpu_s - before.cpu_s) / span, 1)
        return {
            "tunnels_before": before.tunnels,
            "tunnels_after": after.tunnels,
            "rss_before_bytes": before.rss_bytes,
            "rss_after_bytes": after.rss_bytes,
            "memory_after": dict(after.memory),
            "cpu_percent": cpu,
        }

    def to_json(self) -> dict[str, Any]:
        """The machine-readable report (the keys issue 6 names, then the details)."""
        tally = self.tally
        per_tunnel = None
        if self.gateway_before is not None and self.gateway_after is not None:
            per_tunnel = _round(rss_per_tunnel(self.gateway_before, self.gateway_after), 0)
        return {
            "clients": self.clients,
            "established": tally.established,
            "failed": tally.failed,
            "handshakes_per_s": round(self.handshakes_per_s, 1),
            "establish_ms": self.establish_percentiles(),
            "packets_sent": tally.packets_sent,
            "packets_received": tally.packets_received,
            "concentrator_rss_per_tunnel_bytes": per_tunnel,
            "failures": dict(sorted(tally.failures.items())),
            "gateway": self.gateway,
            "peak_handshakes_per_s": round(self.peak_handshakes_per_s, 1),
            "ramp_s": round(self.ramp_s, 3),
            "hold_s": round(self.hold_s, 3),
            "loss": round(self.loss, 6),
            "lost_tunnels": tally.lost,
            "reply_errors": dict(sorted(tally.reply_errors.items())),
            "esp_drops": dict(sorted(tally.esp_drops.items())),
            "rekeys": {
                "child": tally.child_rekeys,
                "ike": tally.ike_rekeys,
                "failed": tally.rekeys_failed,
            },
            "flood": {
                "sent": tally.flood_sent,
                "cookies": tally.flood_cookies,
                "answered": tally.flood_answered,
            },
            "certificates": self.certificates(),
            "concentrator": self.concentrator(),
        }

    def certificates(self) -> dict[str, Any] | None:
        """Client certificates the tester issued and the mean cost of one; None with a PSK."""
        tally = self.tally
        if not tally.certificates_issued:
            return None
        mean = 1000 * tally.certificate_issue_s / tally.certificates_issued
        return {"issued": tally.certificates_issued, "mean_issue_ms": round(mean, 3)}

    def to_text(self) -> str:
        """The human report printed at the end of a run."""
        data = self.to_json()
        tally = self.tally
        ms = data["establish_ms"]
        lines = [
            f"outpost-loadtest against {self.gateway}: {self.clients} clients",
            f"  established   {tally.established}   failed {tally.failed}"
            f"   lost after up {tally.lost}",
            f"  handshakes/s  {data['handshakes_per_s']} sustained over {self.ramp_s:.1f} s"
            f" (peak {data['peak_handshakes_per_s']} in 1 s)",
            "  establish ms  " + "  ".join(f"{k} {_ms(v)}" for k, v in ms.items()),
            f"  ESP packets   sent {tally.packets_sent}  received {tally.packets_received}"
            f"  loss {100 * self.loss:.2f}%  over {self.hold_s:.1f} s held",
            f"  rekeys        child {tally.child_rekeys}  ike {tally.ike_rekeys}"
            f"  failed {tally.rekeys_failed}",
        ]
        certificates = data["certificates"]
        if certificates is not None:
            lines.append(
                f"  certificates  issued {certificates['issued']}"
                f"  {certificates['mean_issue_ms']:.3f} ms each (ECDSA P-256 key + CA signature)"
            )
        if tally.failures:
            lines.append("  failures      " + _counts(tally.failures))
        if tally.reply_errors:
            lines.append("  reply errors  " + _counts(tally.reply_errors))
        if tally.esp_drops:
            lines.append("  ESP drops     " + _counts(tally.esp_drops))
        if tally.flood_sent:
            lines.append(
                f"  flood         IKE_SA_INIT sent {tally.flood_sent}  answered with COOKIE"
                f" {tally.flood_cookies}  answered in full {tally.flood_answered}"
            )
        gateway = data["concentrator"]
        if gateway is not None:
            per_tunnel = data["concentrator_rss_per_tunnel_bytes"]
            cpu = gateway["cpu_percent"]
            lines.append(
                f"  concentrator  tunnels {gateway['tunnels_before']} -> {gateway['tunnels_after']}"
                f"  rss {_mib(gateway['rss_before_bytes'])} -> {_mib(gateway['rss_after_bytes'])}"
                f"  per tunnel {'n/a' if per_tunnel is None else f'{per_tunnel / 1024:.1f} KiB'}"
                f"  cpu {'n/a' if cpu is None else f'{cpu}%'}"
            )
        return "\n".join(lines)


def dumps(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2, sort_keys=False) + "\n"


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _mib(value: int) -> str:
    return f"{value / 2**20:.1f} MiB"


def _counts(counter: Mapping[str, int]) -> str:
    return "  ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: -kv[1]))
