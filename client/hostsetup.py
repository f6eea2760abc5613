"""The controller's seam to the host's routes, DNS and stale-state record.

``Controller`` decides *what* the host needs (a ``NetworkPlan``: the TUN, the
networks routed into it, the gateway's bypass route in full tunnel, DNS
servers); ``HostSetup`` makes it so and hands back one undo. The stale-state
record is written *before* any change, so a client killed halfway leaves a
note that the next start repairs (issue 5).

The implementation is ``client.hoststate.ManagedHostSetup`` (``client.routes``,
``client.dns`` and the ``HostState`` file); tests may pass their own.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from client.dns import AppliedDns, DnsEnvironment, DnsError, DnsSettings, apply_dns
from client.hoststate import STATE_DIR, HostState
from client.routes import RoutePlan, apply_routes
from common.hostnet.base import HostNetwork, HostNetworkError, IpAddress, IpNetwork

log = logging.getLogger("outpost.client")

Undo = Callable[[], None]


@dataclass(frozen=True, slots=True)
class NetworkPlan:
    """What the host must look like while the tunnel is up."""

    tun: str
    mode: str  # "split" or "full"
    routes: tuple[IpNetwork, ...]  # into the TUN (``client.routes.plan_routes``)
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


class ManagedHostSetup:
    """``HostSetup`` over ``client.routes``, ``client.dns`` and ``client.hoststate``.

    Each change is recorded in the profile's ``HostState`` file before it is
    made (``before_change`` hooks), so ``repair_stale`` at the next start can
    undo what a killed client left. Call ``repair_stale`` before the first
    ``record`` (the controller does, in ``connect``).
    """

    def __init__(
        self,
        host: HostNetwork,
        profile: str,
        *,
        state_dir: Path = STATE_DIR,
        dns_env: DnsEnvironment | None = None,
    ) -> None:
        self._host = host
        self._state = HostState(state_dir, profile)
        self._dns_env = dns_env
        self._begun = False

    @property
    def state(self) -> HostState:
        """The state file being kept."""
        return self._state

    def record(self, plan: NetworkPlan) -> None:
        """Claim (or refresh) the state file with the TUN, before anything else changes.

        Raises:
            HostStateBusy: another running client holds this profile.
        """
        if not self._begun:
            self._state.begin()
            self._begun = True
        self._state.set_tun(plan.tun)

    def apply(self, plan: NetworkPlan) -> Undo:
        """Routes, then DNS; the undo restores both (DNS first), once.

        Raises:
            HostNetworkError: a route could not be added (none is left).
            DnsError: DNS could not be set (routes and DNS are undone).
        """
        route_plan = RoutePlan(
            "full" if plan.mode == "full" else "split", plan.gateway, plan.routes
        )
        routes = apply_routes(
            self._host, plan.tun, route_plan, before_change=self._state.add_routes
        )
        dns: AppliedDns | None = None
        if plan.dns and plan.set_dns:
            settings = DnsSettings(plan.dns, full_tunnel=plan.mode == "full")
            try:
                dns = apply_dns(
                    settings,
                    plan.tun,
                    env=self._dns_env,
                    label=self._state.profile,
                    before_change=self._state.set_dns,
                )
            except DnsError:
                with contextlib.suppress(HostNetworkError):
                    routes.undo()
                self._state.clear_routes()
                raise

        def undo() -> None:
            try:
                if dns is not None:
                    try:
                        dns.undo()
                    except DnsError as error:  # the message says how to fix it by hand
                        log.error("%s", error)
                    self._state.set_dns(None)
            finally:
                try:
                    routes.undo()
                except HostNetworkError as error:
                    log.error("removing routes: %s", error)
                self._state.clear_routes()

        return undo

    def forget(self) -> None:
        """Everything was undone: remove the state file."""
        if self._begun:
            self._state.finish()
            self._begun = False
