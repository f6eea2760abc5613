"""The controller's seam to the host's routes, DNS and stale-state record.

``Controller`` decides *what* the host needs (a ``NetworkPlan``: the TUN, the
networks routed into it, the gateway's bypass route in full tunnel, DNS
servers); ``HostSetup`` makes it so and hands back one undo. The stale-state
record is written *before* any change, so a client killed halfway leaves a
note that the next start repairs (issue 5).

``DirectHostSetup`` routes through ``HostNetwork`` itself and leaves DNS
alone; it is the fallback while ``client/routes.py`` and ``client/dns.py``
(route plan/apply/undo, resolved/resolv.conf, stale repair) are not in place,
and what the in-process tests use.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from common.hostnet.base import HostNetwork, HostNetworkError, IpAddress, IpNetwork, Route

log = logging.getLogger("outpost.client")

Undo = Callable[[], None]
FULL_TUNNEL = (ipaddress.ip_network("0.0.0.0/1"), ipaddress.ip_network("128.0.0.0/1"))
FULL_TUNNEL_V6 = (ipaddress.ip_network("::/1"), ipaddress.ip_network("8000::/1"))


@dataclass(frozen=True, slots=True)
class NetworkPlan:
    """What the host must look like while the tunnel is up."""

    tun: str
    mode: str  # "split" or "full"
    routes: tuple[IpNetwork, ...]  # into the TUN
    gateway: IpAddress  # the outer address; in full tunnel it keeps its own route
    dns: tuple[IpAddress, ...] = ()
    set_dns: bool = True
    extra: dict[str, str] = field(default_factory=dict)


class HostSetup(Protocol):
    """Routes and DNS for a ``NetworkPlan``, and the stale-state record around them."""

    def record(self, plan: NetworkPlan) -> None:
        """Write the stale-state record for ``plan`` before the host changes."""
        ...

    def apply(self, plan: NetworkPlan) -> Undo:
        """Route and set DNS; the undo restores what was there (raises HostNetworkError)."""
        ...

    def forget(self) -> None:
        """Remove the stale-state record (everything was undone)."""
        ...


def plan_routes(mode: str, networks: tuple[IpNetwork, ...], ipv6: bool) -> tuple[IpNetwork, ...]:
    """Full tunnel: two half-defaults per family (they beat the default route without
    replacing it); split: the networks given, without duplicates."""
    if mode == "full":
        return FULL_TUNNEL + (FULL_TUNNEL_V6 if ipv6 else ())
    unique: list[IpNetwork] = []
    for network in networks:
        if network not in unique and network.prefixlen > 0:
            unique.append(network)
    return tuple(unique)


class DirectHostSetup:
    """Routes through ``HostNetwork``, no DNS; a JSON stale-state record."""

    def __init__(self, host: HostNetwork, state_file: Path | None = None) -> None:
        self._host = host
        self._state_file = state_file

    def record(self, plan: NetworkPlan) -> None:
        if self._state_file is None:
            return
        record = {
            "pid": os.getpid(),
            "tun": plan.tun,
            "mode": plan.mode,
            "routes": [str(n) for n in plan.routes],
            "gateway": str(plan.gateway),
            "dns": [str(a) for a in plan.dns],
        }
        self._state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self._state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(record))
        os.replace(temporary, self._state_file)

    def apply(self, plan: NetworkPlan) -> Undo:
        added: list[Route] = []

        def undo() -> None:
            for route in reversed(added):
                with contextlib.suppress(HostNetworkError):
                    self._host.remove_route(route)
            added.clear()

        try:
            if plan.mode == "full":
                # The tunnel must never route itself: pin the gateway to today's path.
                path = self._host.route_to(plan.gateway)
                host_net = ipaddress.ip_network(plan.gateway)
                if path.ifname != "lo":
                    added.append(
                        self._host.add_route(host_net, ifname=path.ifname, gateway=path.gateway)
                    )
            for network in plan.routes:
                added.append(self._host.add_route(network, ifname=plan.tun))
        except HostNetworkError:
            undo()
            raise
        if plan.dns and plan.set_dns:
            log.info("DNS servers offered: %s", ", ".join(str(a) for a in plan.dns))
        return undo

    def forget(self) -> None:
        if self._state_file is not None:
            self._state_file.unlink(missing_ok=True)
