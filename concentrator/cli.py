"""``outpost-concentrator``: run the concentrator, check its configuration, ask it questions.

Subcommands:

- ``run --config FILE``: the service in the foreground, logging to stderr;
- ``check-config --config FILE``: load and validate, print a short summary;
- ``status [--json]``, ``sessions [--json]``, ``disconnect ID``,
  ``reload [--json]``: ask the running service over its control socket
  (``[control] socket`` of the configuration, or ``--socket``); human output
  is a short summary or a table, ``--json`` the service's answer as is. A
  concentrator that is not running (or refuses) is one line on stderr and
  exit 1.

A broken configuration prints its one-line ``ConfigError`` to stderr and
exits 2, never a traceback: an admin reads the message, not our stack. The
service and control client are imported only by the commands that use them,
so ``check-config`` works on a host (or in a build) without them.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from concentrator.config import Config, ConfigError, load_config
from concentrator.pool import AddressPool
from concentrator.store import MemoryStore

DEFAULT_CONFIG = Path("/etc/outpost/concentrator.toml")
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        status: int = args.handler(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    except (_UnavailableError, _CommandFailedError, OSError) as exc:
        # A missing service module, a control socket nobody listens on, a port
        # in use: one line, as for configuration errors.
        print(f"outpost-concentrator: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outpost-concentrator",
        description="Outpost IPsec (IKEv2) VPN concentrator.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, handler: object) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "--config", type=Path, default=DEFAULT_CONFIG, help=f"default {DEFAULT_CONFIG}"
        )
        sub.set_defaults(handler=handler)
        return sub

    command("run", "run the concentrator in the foreground", _run)
    command("check-config", "validate the configuration and summarize it", _check_config)
    for name, help_text, handler in (
        ("status", "show the running concentrator's state", _status),
        ("sessions", "list the connected clients", _sessions),
        ("reload", "re-read users and policy without dropping tunnels", _reload),
    ):
        sub = command(name, help_text, handler)
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        sub.add_argument("--socket", type=Path, help="control socket (default: from --config)")
    sub = command("disconnect", "close a client's tunnel", _disconnect)
    sub.add_argument("id", help="the session id (see `sessions`) or the client's IKE identity")
    sub.add_argument("--socket", type=Path, help="control socket (default: from --config)")
    return parser


# --- check-config --------------------------------------------------------------------


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(summary(config))
    return EXIT_OK


def summary(config: Config) -> str:
    """A few lines an admin can eyeball after editing the configuration."""
    pool = AddressPool.from_config(config.pool, MemoryStore())
    usage4 = pool.usage(4)
    assert usage4 is not None
    pool_text = f"{config.pool.ipv4} ({usage4.size} addresses, gateway {pool.gateway(4)})"
    usage6 = pool.usage(6)
    if usage6 is not None:
        pool_text += f", {config.pool.ipv6} (gateway {pool.gateway(6)})"
    patterns = sum(user.is_pattern for user in config.users)
    certificate_users = "none" if config.ca is None else f"authorize={config.ca.authorize}"
    listen = ", ".join(str(address) for address in config.server.listen)
    lines = [
        f"{config.source}: OK",
        f"  identity: {config.server.identity}",
        f"  listen:   {listen} (ports {config.server.ike_port}, {config.server.natt_port})",
        f"  pool:     {pool_text}",
        f"  lan:      {', '.join(str(net) for net in config.lan.subnets)}",
        f"  users:    {len(config.users)} ({patterns} patterns), groups: {len(config.groups)}, "
        f"certificate users: {certificate_users}",
    ]
    return "\n".join(lines)


# --- run -------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    for warning in config.warnings:
        logging.warning("%s", warning)
    run_service = _lazy("concentrator.service", "run_service")
    result = run_service(config)
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return result if isinstance(result, int) else EXIT_OK


# --- control-socket commands -----------------------------------------------------------


class _CommandFailedError(Exception):
    """The control socket answered no (or nobody listens): one line for the admin."""


def _control(args: argparse.Namespace, command: str, **arguments: object) -> Any:
    """``command``'s result from the running concentrator (``concentrator.control``)."""
    socket_path: Path = args.socket or load_config(args.config).control.socket
    control_request = _lazy("concentrator.control", "control_request")
    control_error: type[Exception] = _lazy("concentrator.control", "ControlError")
    try:
        return control_request(socket_path, command, arguments)
    except control_error as exc:
        raise _CommandFailedError(str(exc)) from None


class _UnavailableError(Exception):
    """A part of the concentrator this build does not have (yet)."""


def _lazy(module: str, name: str) -> Any:
    """``module.name``, imported only when a command needs it (see the module docstring)."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise _UnavailableError(f"{module}.{name} is not available in this installation") from None


def _print_json(result: object) -> None:
    print(json.dumps(result, indent=2, sort_keys=True, default=str))


def _status(args: argparse.Namespace) -> int:
    result = _control(args, "status")
    if args.json:
        _print_json(result)
    else:
        print(format_status(result))
    return EXIT_OK


def _sessions(args: argparse.Namespace) -> int:
    result = _control(args, "sessions")
    if args.json:
        _print_json(result)
    else:
        print(format_sessions(result))
    return EXIT_OK


def _disconnect(args: argparse.Namespace) -> int:
    text: str = args.id
    if text.isdigit():
        ids = [int(text)]
    else:
        # An identity: resolve it to its session ids first (the socket speaks ids only).
        ids = [s["id"] for s in _control(args, "sessions") if s.get("identity") == text]
        if not ids:
            raise _CommandFailedError(f"no session of {text}")
    for tunnel_id in ids:
        if not _control(args, "disconnect", id=tunnel_id):
            raise _CommandFailedError(f"no session with id {tunnel_id}")
        print(f"session {tunnel_id} disconnected")
    return EXIT_OK


def _reload(args: argparse.Namespace) -> int:
    result = _control(args, "reload")
    if args.json:
        _print_json(result)
    else:
        print(format_reload(result))
    return EXIT_OK


# --- human output ----------------------------------------------------------------------


def format_status(status: Mapping[str, Any]) -> str:
    """``status`` for a terminal: one line per subject."""
    dataplane = status.get("dataplane", {})
    lines = [
        f"outpost concentrator {status.get('version', '?')}, "
        f"up {format_duration(status.get('uptime_s'))}",
        f"listen:      {', '.join(status.get('listen', [])) or '-'}",
        f"tunnels:     {status.get('tunnels', 0)} "
        f"(half-open IKE SAs: {status.get('half_open', 0)})",
    ]
    for family, usage in status.get("pool", {}).items():
        lines.append(
            f"pool {family}:   {usage.get('active', 0)} active of {usage.get('size', 0)}, "
            f"{usage.get('released', 0)} released, {usage.get('free', 0)} free"
        )
    handshakes = status.get("handshakes", {})
    lines.append(
        f"handshakes:  {handshakes.get('established', 0)} established, "
        f"{handshakes.get('failed', 0)} failed{_counts(status.get('handshake_failures', {}))}"
    )
    lines.append(f"closures:    {_counts(status.get('closures', {}), bare=True)}")
    lines.append(f"ike drops:   {_counts(status.get('ike_drops', {}), bare=True)}")
    for direction, label in (("inbound", "in"), ("outbound", "out")):
        totals = dataplane.get(direction, {})
        lines.append(
            f"esp {label + ':':<8} {totals.get('packets', 0)} packets, "
            f"{format_bytes(totals.get('bytes', 0))}, "
            f"drops: {_counts(totals.get('drops', {}), bare=True)}"
        )
    memory = status.get("memory", {})
    if memory:
        parts = [f"{name} {format_bytes(rss)}" for name, rss in memory.items()]
        lines.append(f"memory:      {', '.join(parts)}")
    return "\n".join(lines)


def _counts(counts: Mapping[str, int], bare: bool = False) -> str:
    """``{"a": 1}`` as ``a 1, ...``; in parentheses after a total unless ``bare``."""
    text = ", ".join(f"{reason} {count}" for reason, count in counts.items())
    if bare:
        return text or "none"
    return f" ({text})" if text else ""


SESSION_COLUMNS = ("ID", "IDENTITY", "OUTER", "INNER", "STATE", "UPTIME", "IN", "OUT", "ESP")


def format_sessions(sessions: Sequence[Mapping[str, Any]]) -> str:
    """``sessions`` as an aligned table, one tunnel per row."""
    if not sessions:
        return "no sessions"
    rows = [SESSION_COLUMNS]
    for session in sessions:
        rows.append(
            (
                str(session.get("id", "")),
                session.get("identity") or "-",
                session.get("outer", "-"),
                ",".join(session.get("inner", [])) or "-",
                session.get("state", "-"),
                format_duration(session.get("uptime_s")),
                format_bytes(session.get("bytes_in", 0)),
                format_bytes(session.get("bytes_out", 0)),
                session.get("esp_suite") or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(SESSION_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def format_reload(report: Mapping[str, Any]) -> str:
    """``reload``'s report: what changed among users, what waits for a restart."""
    parts = []
    for key in ("added", "removed", "changed"):
        names = report.get(key, [])
        parts.append(f"{len(names)} {key}" + (f" ({', '.join(names)})" if names else ""))
    lines = [f"reloaded users: {', '.join(parts)}"]
    restart = report.get("restart_required", [])
    if restart:
        lines.append(f"restart required for: {', '.join(restart)}")
    return "\n".join(lines)


def format_duration(seconds: float | None) -> str:
    """``93784`` -> ``1d 2h 3m``; seconds shown only below a minute."""
    if seconds is None:
        return "-"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def format_bytes(count: float) -> str:
    """Bytes in binary units, 3 significant digits: ``1.21 MiB``."""
    value = float(count)
    if value < 1024:
        return f"{int(value)} B"
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.3g} {unit}"
    return f"{value / 1024:.1f} TiB"


if __name__ == "__main__":
    sys.exit(main())
