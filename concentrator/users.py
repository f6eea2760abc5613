"""Who may connect, with which key, to which networks: the IKE responder's policy.

``UserDirectory`` implements ``common.ike.policy.CertificatePolicy`` (and so
``ResponderPolicy``) from the configuration's ``[[users]]``, ``[[groups]]``,
``[lan]``, ``[pool] dns`` and ``[ca]``, and hands out addresses from an
``AddressPool``. One directory serves every session of the concentrator.

Lookup: an identity matches its exact ``[[users]]`` entry (FQDN and e-mail
ids compared without regard to case, ``common.ike.identities``), else the
first ``{n}`` pattern entry that matches it (``user-{n}@loadtest`` takes
``user-17@loadtest``; n without leading zeros, within ``n_min..n_max``).

Certificate users: ``authorize`` admits any certified identity under
``[ca] authorize = "any"``, else only identities a ``[[users]]`` entry names.
``psk_for`` returns None for an entry without a PSK, so a certificate user
can not log in with a key nobody gave it.

Leases: ``lease_address`` leases from the pool for the identity. Every address
it returned must go back through ``release(address)`` when the session that
got it ends (or fails after the lease), and only then: the pool can not tell
which session of a twice-connected identity is ending, the address can.

Reload (SIGHUP, control command): ``reload(new_config)`` swaps the user table
in one assignment, so a handshake sees the old table or the new, never a mix;
leases are untouched. It returns what changed; the service logs that and may
disconnect sessions for which ``may_connect`` is now False.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography import x509

from common.ike.config import IpAddress, IpNetwork
from common.ike.identities import PATTERN, identity_key, identity_text, parse_identity
from common.ike.policy import CertificatePolicy, Identity
from concentrator.config_model import Config, UserConfig
from concentrator.pool import AddressPool

_NUMBER = r"(0|[1-9][0-9]*)"


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """What a ``reload`` changed, by configured user id (patterns as written).

    ``restart_required`` names settings that differ in the new file but only
    take effect at the next start (listen addresses, pool ranges, store...).
    """

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = ()

    @property
    def users_changed(self) -> bool:
        """Whether any user was added, removed or changed."""
        return bool(self.added or self.removed or self.changed)


class _Table:
    """An immutable index of the users of one configuration."""

    def __init__(self, users: Sequence[UserConfig]) -> None:
        self.by_key: dict[str, UserConfig] = {}
        self.exact: dict[str, UserConfig] = {}
        patterns: list[tuple[int, re.Pattern[str], UserConfig]] = []
        for user in users:
            key = identity_key(parse_identity(user.id))
            self.by_key[key] = user
            if user.is_pattern:
                prefix, _, suffix = user.id.lower().partition(PATTERN)
                regex = re.compile(re.escape(prefix) + _NUMBER + re.escape(suffix))
                patterns.append((user.identity_type, regex, user))
            else:
                self.exact[key] = user
        self.patterns = tuple(patterns)

    def find(self, identity: Identity) -> UserConfig | None:
        user = self.exact.get(identity_key(identity))
        if user is not None or not self.patterns:
            return user
        text = identity_text(identity).lower()
        for id_type, regex, candidate in self.patterns:
            match = regex.fullmatch(text) if id_type == identity.id_type else None
            if match is None:
                continue
            n = int(match.group(1))
            if n >= candidate.n_min and (candidate.n_max is None or n <= candidate.n_max):
                return candidate
        return None


class UserDirectory(CertificatePolicy):
    """The responder policy of the concentrator (see the module docstring)."""

    def __init__(self, config: Config, pool: AddressPool) -> None:
        self._pool = pool
        self._config = config
        self._table = _Table(config.users)

    @property
    def config(self) -> Config:
        """The configuration in force (the latest one ``reload`` was given)."""
        return self._config

    # --- ResponderPolicy ------------------------------------------------------

    def psk_for(self, identity: Identity) -> bytes | None:
        """The PSK of the entry matching ``identity``; None if unknown or a certificate user."""
        user = self._table.find(identity)
        return None if user is None else user.psk

    def lease_address(self, identity: Identity, version: Literal[4, 6]) -> IpAddress | None:
        """An address of ``version`` for ``identity`` from the pool (sticky); see ``release``."""
        return self._pool.lease(identity_key(identity), version)

    def dns_servers(self) -> Sequence[IpAddress]:
        """``[pool] dns``, both families."""
        return self._config.pool.dns

    def subnets_for(self, identity: Identity) -> Sequence[IpNetwork]:
        """The entry's networks (own, group's or the LAN's); the LAN's for an
        unlisted identity admitted by ``authorize = "any"``; else none."""
        user = self._table.find(identity)
        if user is not None:
            return user.subnets
        if self._config.ca is not None and self._config.ca.authorize == "any":
            return self._config.lan.subnets
        return ()

    # --- CertificatePolicy ----------------------------------------------------

    def ca_certificates(self) -> Sequence[x509.Certificate]:
        """The ``[ca]`` trust anchors; none when certificate users are not configured."""
        return () if self._config.ca is None else self._config.ca.certificates

    def authorize(self, identity: Identity, certificate: x509.Certificate) -> bool:
        """Whether a CA-verified ``identity`` may connect (``[ca] authorize``)."""
        del certificate  # the core already checked the chain and that it names identity
        return self._certificate_admits(identity)

    def _certificate_admits(self, identity: Identity) -> bool:
        ca = self._config.ca
        if ca is None:
            return False
        return ca.authorize == "any" or self._table.find(identity) is not None

    # --- Service API ----------------------------------------------------------

    def release(self, address: IpAddress) -> bool:
        """Give back an address ``lease_address`` returned, when its session ends.

        Returns whether a lease was active (False for a double release).
        """
        return self._pool.release(address)

    def user_for(self, identity: Identity) -> UserConfig | None:
        """The ``[[users]]`` entry ``identity`` matches (for logs and status)."""
        return self._table.find(identity)

    def may_connect(self, identity: Identity, *, certificate: bool) -> bool:
        """Whether ``identity`` would be admitted now (to recheck live sessions after a reload).

        Args:
            certificate: whether the session authenticated with a certificate
                (else a PSK: admitted only while its entry still has a PSK).
        """
        if certificate:
            return self._certificate_admits(identity)
        return self.psk_for(identity) is not None

    def reload(self, new: Config) -> ReloadReport:
        """Swap in ``new``'s users, groups, networks, DNS and CA; keep every lease.

        The caller has loaded ``new`` with ``load_config`` (so it is valid).
        Changed PSKs or networks apply to new handshakes; live sessions keep
        what they negotiated unless the service disconnects them.
        """
        old_table, old_config = self._table, self._config
        table = _Table(new.users)
        self._table, self._config = table, new
        added = [u.id for k, u in table.by_key.items() if k not in old_table.by_key]
        removed = [u.id for k, u in old_table.by_key.items() if k not in table.by_key]
        changed = [
            u.id
            for k, u in table.by_key.items()
            if k in old_table.by_key and old_table.by_key[k] != u
        ]
        return ReloadReport(
            added=tuple(added),
            removed=tuple(removed),
            changed=tuple(changed),
            restart_required=_restart_required(old_config, new),
        )


def _restart_required(old: Config, new: Config) -> tuple[str, ...]:
    """Settings a reload does not apply: they are bound at start (sockets, TUN, pool, store)."""
    checks = {
        "server": old.server != new.server,
        "pool.ipv4": old.pool.ipv4 != new.pool.ipv4,
        "pool.ipv6": old.pool.ipv6 != new.pool.ipv6,
        "store": old.store != new.store,
        "control": old.control != new.control,
        "metrics": old.metrics != new.metrics,
    }
    return tuple(name for name, differs in checks.items() if differs)
