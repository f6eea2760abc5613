"""SA lifetimes: when to rekey an SA and when to give it up (RFC 7296 2.8).

strongSwan's semantics (``rekey_time``, ``over_time``, ``rand_time``): an SA
made (or remade by a rekey) at ``t`` is rekeyed at its *soft* time
``t + rekey_time - random(0, rand_time)`` and, if no rekey succeeded by
then, given up at its *hard* time ``t + rekey_time + over_time``. The jitter
comes from the session's rng, so both peers rarely start the same rekey at
once (RFC 7296 2.8.1 asks for the jitter; a collision that happens anyway is
resolved by the lowest-nonce rule, state.py rule 7) and a seeded rng makes
it repeatable. An SA replaced by the peer's rekey (REKEYED) is not rekeyed
again; its hard time still deletes it if the peer's Delete never comes.

Either side may rekey (RFC 7296 2.8); whoever's soft time comes first does.
A rekey that cannot start (our window is busy, the SA is already being
rekeyed or deleted) or is refused is tried again ``REKEY_RETRY_S`` plus up to
``REKEY_RETRY_JITTER_S`` later: the soft time moves on each time it fires.

No per-SA task and no clock: ``Lifetimes`` only keeps two numbers per SA.
``IkeSession`` calls ``track`` after each input to notice new SAs (a new
Child SA, the switch to a rekeyed IKE SA) and forget gone ones, reports
``deadline()`` in ``get_timer()``, and acts on ``due(now)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from common.ike import defaults
from common.ike.policy import IkeConfiguration
from common.ike.tasks.base import ChildSa, IkeSa

__all__ = ["Due", "Lifetime", "LifetimePolicy", "Lifetimes"]

Rng = Callable[[int], bytes]


@dataclass(slots=True)
class Lifetime:
    """One SA's deadlines, in the session's ``now`` seconds; None: never."""

    rekey_at: float | None
    expires_at: float | None

    def deadline(self) -> float | None:
        return min((t for t in (self.rekey_at, self.expires_at) if t is not None), default=None)


@dataclass(frozen=True, slots=True)
class LifetimePolicy:
    """``rekey_time`` / ``over_time`` / ``rand_time`` of one kind of SA."""

    rekey_time: float
    over_time: float
    rand_time: float

    @classmethod
    def of(
        cls, rekey_time: float, over_time: float | None, rand_time: float | None
    ) -> LifetimePolicy:
        """Fill in the 10% defaults (``defaults.py``); reject negative times.

        Raises:
            ValueError: a negative time, or jitter not below the rekey time.
        """
        over = rekey_time * defaults.OVER_TIME_FRACTION if over_time is None else over_time
        rand = rekey_time * defaults.RAND_TIME_FRACTION if rand_time is None else rand_time
        if rekey_time < 0 or over < 0 or rand < 0:
            raise ValueError("SA lifetimes cannot be negative")
        if rekey_time and rand >= rekey_time:
            raise ValueError("rand_time must be below rekey_time")
        return cls(rekey_time, over, rand)

    def start(self, now: float, rng: Rng) -> Lifetime:
        """The deadlines of an SA made at ``now``; rekey_time 0 gives none."""
        if not self.rekey_time:
            return Lifetime(None, None)
        jitter = uniform(rng, self.rand_time) if self.rand_time else 0.0
        return Lifetime(now + self.rekey_time - jitter, now + self.rekey_time + self.over_time)


def uniform(rng: Rng, high: float) -> float:
    """A number in ``[0, high)`` from 32 bits of ``rng``."""
    return int.from_bytes(rng(4), "big") / 2**32 * high


def retry_at(now: float, rng: Rng) -> float:
    """When to try an automatic rekey again (charon's retry interval and jitter)."""
    return now + defaults.REKEY_RETRY_S + uniform(rng, defaults.REKEY_RETRY_JITTER_S)


@dataclass(slots=True)
class Due:
    """What ``Lifetimes.due`` found at ``now``; the session acts on it."""

    ike_expired: bool = False
    ike_rekey: bool = False
    children_expired: list[ChildSa] = field(default_factory=list)
    children_rekey: list[ChildSa] = field(default_factory=list)


class Lifetimes:
    """The lifetimes of the current IKE SA and of each of its Child SAs."""

    __slots__ = ("_child_policy", "_children", "_ike", "_ike_policy", "_rng")

    def __init__(self, config: IkeConfiguration, rng: Rng) -> None:
        """Read the lifetimes of ``config``; ``rng`` draws the jitter.

        Raises:
            ValueError: an invalid lifetime setting.
        """
        self._ike_policy = LifetimePolicy.of(
            config.ike_rekey_time, config.ike_over_time, config.ike_rand_time
        )
        self._child_policy = LifetimePolicy.of(
            config.child_rekey_time, config.child_over_time, config.child_rand_time
        )
        self._rng = rng
        self._ike: tuple[IkeSa, Lifetime] | None = None
        self._children: dict[int, tuple[ChildSa, Lifetime]] = {}

    def ike(self) -> Lifetime | None:
        """The current IKE SA's lifetime, once it is established."""
        return None if self._ike is None else self._ike[1]

    def child(self, inbound_spi: int) -> Lifetime | None:
        """The lifetime of the Child SA whose inbound SPI is ``inbound_spi``."""
        entry = self._children.get(inbound_spi)
        return None if entry is None else entry[1]

    def track(self, sa: IkeSa, now: float) -> None:
        """Start lifetimes for SAs made since the last call, forget those gone.

        ``sa`` is the current, established IKE SA; a new object (the switch
        to a rekeyed IKE SA) starts a fresh IKE lifetime, while the Child SAs
        it took over keep theirs (the same ``ChildSa`` objects).
        """
        if self._ike is None or self._ike[0] is not sa:
            self._ike = (sa, self._ike_policy.start(now, self._rng))
        children = sa.child_sas
        for spi in [
            spi for spi, (child, _) in self._children.items() if children.get(spi) is not child
        ]:
            del self._children[spi]
        for spi, child in children.items():
            if spi not in self._children:
                self._children[spi] = (child, self._child_policy.start(now, self._rng))

    def deadline(self) -> float | None:
        """The earliest rekey or expiry of any tracked SA."""
        lifetimes = [entry[1] for entry in self._children.values()]
        if self._ike is not None:
            lifetimes.append(self._ike[1])
        return min((d for lt in lifetimes if (d := lt.deadline()) is not None), default=None)

    def due(self, now: float) -> Due:
        """The SAs whose hard or soft time has come.

        Expired Child SAs are forgotten here; a soft time that fired moves to
        the retry time, so an automatic rekey that cannot start or is refused
        comes round again (the session decides whether it can start now).
        """
        due = Due()
        if self._ike is not None:
            lifetime = self._ike[1]
            if lifetime.expires_at is not None and lifetime.expires_at <= now:
                due.ike_expired = True
                return due
            if lifetime.rekey_at is not None and lifetime.rekey_at <= now:
                due.ike_rekey = True
                lifetime.rekey_at = retry_at(now, self._rng)
        for spi, (child, lifetime) in list(self._children.items()):
            if lifetime.expires_at is not None and lifetime.expires_at <= now:
                due.children_expired.append(child)
                del self._children[spi]
            elif lifetime.rekey_at is not None and lifetime.rekey_at <= now:
                due.children_rekey.append(child)
                lifetime.rekey_at = retry_at(now, self._rng)
        return due
