"""``outpost``: the client's command line (issue 5, "Commands").

::

    outpost up --profile FILE        headless, in the foreground; Ctrl-C or SIGTERM
                                     disconnects cleanly (exit 0); FAILED exits 1
    outpost status [--json] [--socket PATH]
                                     asks a running client over its status socket
    outpost tui [--profile FILE]     the Textual TUI (all profiles, or the one given)
    outpost profiles                 the profiles in ~/.config/outpost/profiles

Every error a person can cause is one line on stderr, never a traceback: a
broken profile exits 2 (naming the file and the key), "no Outpost client is
running" exits 1. ``--profile`` takes a path or a profile's name.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client.profile import (
    Profile,
    ProfileError,
    find_profile,
    list_profiles,
    load_profile,
    profiles_dir,
)
from client.state import StateChanged, TunnelState
from client.statusd import candidate_socket_paths

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    """The console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        match args.command:
            case "up":
                return _up(args.profile, verbose=args.verbose)
            case "status":
                return _status(args.socket, as_json=args.json)
            case "tui":
                return _tui(args.profile)
            case "profiles":
                return _profiles()
    except ProfileError as error:
        return _fail(str(error), EXIT_USAGE)
    except KeyboardInterrupt:
        return EXIT_FAILED
    parser.error(f"unknown command {args.command!r}")  # exits


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="outpost", description="Outpost road-warrior VPN client")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = commands.add_parser("up", help="connect in the foreground (Ctrl-C disconnects)")
    up.add_argument("--profile", required=True, help="a profile file, or a profile's name")
    up.add_argument("-v", "--verbose", action="store_true", help="also log protocol details")
    status = commands.add_parser("status", help="ask the running client how it is")
    status.add_argument("--json", action="store_true", help="the raw status as JSON")
    status.add_argument("--socket", type=Path, help="the client's status socket")
    tui = commands.add_parser("tui", help="the interactive interface")
    tui.add_argument("--profile", help="show only this profile (file or name)")
    commands.add_parser("profiles", help=f"list the profiles in {profiles_dir()}")
    return parser


def _fail(message: str, code: int) -> int:
    print(f"outpost: {message}", file=sys.stderr)
    return code


def _load(name_or_path: str) -> Profile:
    profile = load_profile(find_profile(name_or_path))
    for warning in profile.warnings:
        print(f"outpost: warning: {warning}", file=sys.stderr)
    return profile


# --- up ----------------------------------------------------------------------------------------


def _up(name_or_path: str, *, verbose: bool) -> int:
    profile = _load(name_or_path)
    # The controller writes each LogLine to the "outpost.client" log too: that is
    # what a person watching the terminal (or journald) reads.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    return asyncio.run(_run_up(profile))


async def _run_up(profile: Profile) -> int:
    from client.controller import Controller

    controller = Controller(profile)
    events = controller.events()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    failed = asyncio.Event()

    async def watch() -> None:
        async for event in events:
            if isinstance(event, StateChanged) and event.status.state is TunnelState.FAILED:
                failed.set()
                return

    watcher = asyncio.create_task(watch())
    stopper = asyncio.create_task(stop.wait())
    try:
        await controller.connect()
        await asyncio.wait({watcher, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        stopper.cancel()
        await controller.close()
    # The FAILED reason was already logged, in one line, by the controller.
    return EXIT_FAILED if failed.is_set() else EXIT_OK


# --- status ------------------------------------------------------------------------------------


def _status(given: Path | None, *, as_json: bool) -> int:
    from concentrator.control import ControlError, control_request

    for path in [given] if given is not None else candidate_socket_paths():
        running = _listening(path)
        if running is None:
            continue
        if running is False:
            return _fail(f"permission denied on {path}; the client runs as root (try sudo)", 1)
        try:
            result = control_request(path, "status")
        except ControlError as error:
            return _fail(f"the client at {path} did not answer: {error}", EXIT_FAILED)
        if not isinstance(result, dict):
            return _fail(f"the client at {path} answered something else than a status", 1)
        print(json.dumps(result, indent=2) if as_json else _describe(result))
        return EXIT_OK
    return _fail("no Outpost client is running", EXIT_FAILED)


def _listening(path: Path) -> bool | None:
    """True: something listens at ``path``; False: we may not connect; None: nobody there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except PermissionError:
            return False
        except OSError:  # missing, stale (refused), not a socket, too long a path
            return None
    return True


def _describe(status: dict[str, Any]) -> str:
    """The status in a few lines for a person."""
    lines = [f"{status.get('profile')}: {status.get('state')} ({status.get('gateway')})"]
    tunnel = status.get("tunnel") or {}
    if tunnel:
        inner = ", ".join(a for a in (tunnel.get("inner_ipv4"), tunnel.get("inner_ipv6")) if a)
        rows = [
            ("gateway", f"{tunnel.get('gateway')} ({tunnel.get('gateway_identity')})"),
            ("address", inner or "-"),
            ("routes", ", ".join(tunnel.get("routes") or ()) or "-"),
            ("dns", ", ".join(tunnel.get("dns") or ()) or "-"),
            ("mode", str(tunnel.get("mode"))),
            (
                "esp",
                f"{tunnel.get('esp_suite')} in {tunnel.get('inbound_spi')}"
                f" out {tunnel.get('outbound_spi')}",
            ),
            ("ike", str(tunnel.get("ike_suite"))),
            ("up for", _duration(time.time() - float(tunnel.get("established_at") or time.time()))),
        ]
        lines += [f"  {name:<8} {value}" for name, value in rows]
    traffic = status.get("traffic") or {}
    if traffic:
        lines.append(
            f"  {'traffic':<8} in {traffic.get('packets_in', 0)} packets"
            f" / {traffic.get('bytes_in', 0)} bytes, out {traffic.get('packets_out', 0)} packets"
            f" / {traffic.get('bytes_out', 0)} bytes"
        )
        drops = traffic.get("drops") or {}
        if drops:
            lines.append(f"  {'drops':<8} " + ", ".join(f"{k} {v}" for k, v in drops.items()))
    if status.get("error"):
        lines.append(f"  {'error':<8} {status['error']}")
    if status.get("next_retry_at"):
        wait = max(0.0, float(status["next_retry_at"]) - time.time())
        lines.append(f"  {'retry':<8} attempt {status.get('reconnect_attempt')}, in {wait:.0f} s")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(max(0.0, seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


# --- tui and profiles --------------------------------------------------------------------------


def _tui(name_or_path: str | None) -> int:
    if name_or_path is not None:
        profiles = {(profile := _load(name_or_path)).name: profile}
    else:
        profiles = {}
        for path in list_profiles():
            try:
                profile = load_profile(path)
            except ProfileError as error:
                print(f"outpost: skipping {error}", file=sys.stderr)
                continue
            profiles[profile.name] = profile
    from client.controller import Controller
    from client.tui.app import run_tui
    from client.tui.model import ProfileEntry

    entries = [ProfileEntry(p.name, p.gateway.address, p.tunnel.mode) for p in profiles.values()]

    def make_controller(name: str) -> Controller:
        return Controller(profiles[name])

    run_tui(entries, make_controller)
    return EXIT_OK


def _profiles() -> int:
    paths = list_profiles()
    if not paths:
        print(f"no profiles in {profiles_dir()}")
        return EXIT_OK
    for path in paths:
        try:
            profile = load_profile(path)
        except ProfileError as error:
            print(f"{path.stem:<16} broken: {error}")
            continue
        print(f"{profile.name:<16} {profile.gateway.address:<24} {profile.tunnel.mode}")
    return EXIT_OK


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
