"""``outpost-concentrator``: run the concentrator, check its configuration, ask it questions.

Subcommands:

- ``run --config FILE``: the service in the foreground, logging to stderr;
- ``check-config --config FILE``: load and validate, print a short summary;
- ``status [--json]``, ``sessions [--json]``, ``disconnect ID``: ask the
  running service over its control socket (``[control] socket`` of the
  configuration, or ``--socket``).

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
    except (_UnavailableError, OSError) as exc:
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
    ):
        sub = command(name, help_text, handler)
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        sub.add_argument("--socket", type=Path, help="control socket (default: from --config)")
    sub = command("disconnect", "close a client's tunnel", _disconnect)
    sub.add_argument("id", help="the client's IKE identity (or session id)")
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


def _control(args: argparse.Namespace, command: str, **arguments: object) -> Mapping[str, object]:
    socket_path: Path = args.socket or load_config(args.config).control.socket
    control_request = _lazy("concentrator.control", "control_request")
    reply: Mapping[str, object] = control_request(socket_path, command, arguments)
    return reply


class _UnavailableError(Exception):
    """A part of the concentrator this build does not have (yet)."""


def _lazy(module: str, name: str) -> Any:
    """``module.name``, imported only when a command needs it (see the module docstring)."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise _UnavailableError(f"{module}.{name} is not available in this installation") from None


def _print_reply(reply: Mapping[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(reply, indent=2, sort_keys=True, default=str))
        return
    for key, value in reply.items():
        print(f"{key}: {value}")


def _status(args: argparse.Namespace) -> int:
    _print_reply(_control(args, "status"), args.json)
    return EXIT_OK


def _sessions(args: argparse.Namespace) -> int:
    _print_reply(_control(args, "sessions"), args.json)
    return EXIT_OK


def _disconnect(args: argparse.Namespace) -> int:
    _print_reply(_control(args, "disconnect", id=args.id), False)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
