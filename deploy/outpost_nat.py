#!/usr/bin/env python3
"""Source NAT (and an optional forward filter) for the concentrator's pool, with nftables.

When the office LAN has no route back to the pool (10.99.100.0/24 say), a
LAN host's replies to a client never come back. Either the LAN router gets a
route to the pool via the concentrator, or the concentrator masquerades the
pool behind its own LAN address; this script does the latter::

    outpost-nat --config /etc/outpost/concentrator.toml [--lan-interface eth1]
    outpost-nat --pool 10.99.100.0/24 --lan-subnet 10.99.0.0/24 --lan-interface eth1
    outpost-nat --config ... --forward-filter   # pool -> LAN subnets only
    outpost-nat --remove
    outpost-nat --config ... --dry-run          # print the nft script, change nothing

Everything lives in tables of our own (``table ip outpost`` and
``table ip6 outpost``), which each run replaces in one nft transaction, so
running it twice changes nothing and other rulesets are never touched.
``--remove`` deletes both tables.

``--forward-filter`` drops forwarded traffic from the pool to anything but
the LAN subnets: a client cannot use the gateway to reach the internet (or
other clients) unless a full-tunnel subnet (``0.0.0.0/0``) is configured.
It only drops: an accept here does not override another table's drop.

Only the standard library: it runs with the system's python3 (3.11+), not
only inside the concentrator's virtual environment.
"""

from __future__ import annotations

import argparse
import ipaddress
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

TABLE = "outpost"
FAMILIES = {4: "ip", 6: "ip6"}
EXIT_USAGE = 2

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class NatError(Exception):
    """A one-line problem for the admin (bad address, unreadable config): exit 2."""


class NftError(NatError):
    """nft is missing or refused the script: exit 1."""


@dataclass(frozen=True)
class Plan:
    """What to NAT: the pool(s), the LAN subnets, and the optional limits."""

    pools: tuple[Network, ...]
    lan: tuple[Network, ...]
    lan_interface: str | None = None
    forward_filter: bool = False


def parse_network(text: str, what: str) -> Network:
    """``text`` as a network; host bits set is an error (a typo, not a choice)."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as error:
        raise NatError(f"{what}: {error}") from None


def plan_from_config(path: Path) -> tuple[list[Network], list[Network]]:
    """The ``[pool]`` ipv4/ipv6 and ``[lan] subnets`` of the concentrator's config."""
    try:
        with path.open("rb") as stream:
            data = tomllib.load(stream)
    except OSError as error:
        raise NatError(f"{path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise NatError(f"{path}: {error}") from None
    pool = data.get("pool", {})
    if not isinstance(pool, dict) or "ipv4" not in pool:
        raise NatError(f"{path}: [pool] ipv4 is missing")
    pools = [parse_network(str(pool["ipv4"]), f"{path}: pool.ipv4")]
    if "ipv6" in pool:
        pools.append(parse_network(str(pool["ipv6"]), f"{path}: pool.ipv6"))
    lan = data.get("lan", {})
    subnets = lan.get("subnets") if isinstance(lan, dict) else None
    if not isinstance(subnets, list) or not subnets:
        raise NatError(f"{path}: [lan] subnets is missing or empty")
    return pools, [parse_network(str(s), f"{path}: lan.subnets") for s in subnets]


def _set(networks: Iterable[Network]) -> str:
    # Collapsed first: nft refuses overlapping intervals in one set.
    collapsed = ipaddress.collapse_addresses(networks)  # type: ignore[type-var]
    return "{ " + ", ".join(str(net) for net in collapsed) + " }"


def _quote(ifname: str) -> str:
    if not ifname or len(ifname) > 15 or any(c in ifname for c in '"/ \\'):
        raise NatError(f"--lan-interface {ifname!r} is not an interface name")
    return f'"{ifname}"'


def _table(version: int, pool: Network, lan: list[Network], plan: Plan) -> list[str]:
    """The body of one family's table: masquerade, and the filter if asked."""
    family = FAMILIES[version]
    # A /0 LAN (full tunnel) matches any destination: no daddr test at all.
    full = any(net.prefixlen == 0 for net in lan)
    to_lan = "" if full else f"{family} daddr {_set(lan)} "
    out = f"oifname {_quote(plan.lan_interface)} " if plan.lan_interface else ""
    lines = [
        f"table {family} {TABLE} {{",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        # Pool-to-pool (client to client, back out of the TUN) is never rewritten.
        f"    {family} saddr {pool} {family} daddr != {pool} {to_lan}{out}masquerade",
        "  }",
    ]
    if plan.forward_filter and not full:  # with a /0 LAN there is nothing to refuse
        lines += [
            "  chain forward {",
            "    type filter hook forward priority filter; policy accept;",
            # Replies from the LAN to the pool do not match (their source is
            # not the pool) and pass; so does everything not from the pool.
            f"    {family} saddr {pool} {to_lan}accept",
            f"    {family} saddr {pool} drop",
            "  }",
        ]
    lines.append("}")
    return lines


def render(plan: Plan | None) -> str:
    """The nft script: replace (or, for ``None``, delete) our tables in one transaction."""
    lines = ["#!/usr/sbin/nft -f", "# outpost-nat: generated; each run replaces these tables"]
    for version, family in FAMILIES.items():
        # "table X" creates it if missing, so the delete that follows never
        # fails; nft applies the whole file atomically.
        lines += [f"table {family} {TABLE}", f"delete table {family} {TABLE}"]
        if plan is None:
            continue
        lan = [net for net in plan.lan if net.version == version]
        for pool in (p for p in plan.pools if p.version == version):
            if lan:
                lines += _table(version, pool, lan, plan)
    return "\n".join(lines) + "\n"


def build_plan(args: argparse.Namespace) -> Plan:
    """Merge ``--config`` with the explicit options (which win)."""
    pools: list[Network] = []
    lan: list[Network] = []
    if args.config is not None:
        pools, lan = plan_from_config(args.config)
    if args.pool:
        pools = [parse_network(p, "--pool") for p in args.pool]
    if args.lan_subnet:
        lan = [parse_network(s, "--lan-subnet") for s in args.lan_subnet]
    if not pools or not lan:
        raise NatError("give --config, or --pool and --lan-subnet")
    if not any(p.version == n.version for p in pools for n in lan):
        raise NatError("no pool and LAN subnet of the same IP version: nothing to NAT")
    return Plan(tuple(pools), tuple(lan), args.lan_interface, args.forward_filter)


def apply(script: str) -> None:
    """Feed ``script`` to ``nft -f -``; its complaint becomes a NatError."""
    try:
        result = subprocess.run(
            ["nft", "-f", "-"], input=script, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise NftError("nft not found: apt-get install nftables") from None
    if result.returncode != 0:
        raise NftError(f"nft failed: {result.stderr.strip()}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outpost-nat",
        description="Masquerade the concentrator's pool towards the LAN (nftables).",
    )
    parser.add_argument("--config", type=Path, help="concentrator TOML: [pool] and [lan] subnets")
    parser.add_argument("--pool", action="append", help="pool network (repeatable; IPv4/IPv6)")
    parser.add_argument("--lan-subnet", action="append", help="LAN network (repeatable)")
    parser.add_argument("--lan-interface", help="only NAT traffic leaving this interface")
    parser.add_argument(
        "--forward-filter", action="store_true", help="forward from the pool to the LAN only"
    )
    parser.add_argument("--remove", action="store_true", help="delete our tables")
    parser.add_argument("--dry-run", action="store_true", help="print the nft script only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, render, and apply (or print) the ruleset; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        script = render(None if args.remove else build_plan(args))
        if args.dry_run:
            print(script, end="")
        else:
            apply(script)
    except NatError as error:
        print(f"outpost-nat: {error}", file=sys.stderr)
        return 1 if isinstance(error, NftError) else EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
