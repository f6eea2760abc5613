"""The real TUI, in a real terminal (tmux), against a real tunnel to our concentrator.

The Pilot and snapshot tests (tests/unit) drive the app against a fake
controller in a virtual screen; this one checks what they cannot: that
``outpost tui`` started as a person starts it, in a terminal, connects to a
real ``outpost-concentrator`` in namespaces (tests/helpers/concentrator_lab.py),
shows the state and the leased address, counts the packets of a ping that
really crosses the tunnel, and that ``q`` sends the Delete before it exits.

The screen is read with ``tmux capture-pane -p``, i.e. as text, the way a
person would read it. tmux runs its own server (``-L`` with a random name,
no configuration file), so a person's tmux sessions on the same machine are
never seen or touched, and the ``finally`` kills exactly that server.

The client gets a private, empty ``/run/outpost`` (a tmpfs in the mount
namespace that ``ip netns exec`` creates for it): the status socket and
stale-state records of every root client live there, and a client of
another test running at the same time must not be answered or "repaired".
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import pytest

from tests.helpers.concentrator_lab import (
    GATEWAY_ID,
    GATEWAY_IP,
    LAN_HOST_IP,
    POOL,
    ConcentratorProcess,
    build_lab,
    concentrator_document,
    write_document,
)
from tests.helpers.netns import NetnsLab

pytestmark = [pytest.mark.privileged, pytest.mark.needs_tool("tmux")]

OUTPOST: Final = str(Path(sys.executable).parent / "outpost")
USER: Final = "alice@tui.example"
SESSION: Final = "outpost-tui"
PRIVATE_RUN: Final = (
    'mkdir -p /run/outpost && mount -t tmpfs -o mode=0700 outpost-test /run/outpost && exec "$@"'
)
POOL_ADDRESS: Final = re.compile(r"\b10\.99\.100\.(\d{1,3})\b")
PACKETS_ROW: Final = re.compile(r"packets\s+([\d,]+)\s+([\d,]+)")


class Tmux:
    """One private tmux server (``tmux -L NAME -f /dev/null``) and its one session."""

    def __init__(self) -> None:
        self.server = f"outpost-test-{secrets.token_hex(4)}"

    def command(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``tmux -L server ARGS``, output captured."""
        return subprocess.run(
            ["tmux", "-L", self.server, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=check,
        )

    def start(self, shell_command: str, *, width: int = 120, height: int = 40) -> None:
        """A detached session of ``width`` x ``height`` running ``shell_command``."""
        self.command(
            "new-session", "-d", "-s", SESSION, "-x", str(width), "-y", str(height), shell_command
        )

    def screen(self) -> str:
        """The visible text of the pane ("" once the session is gone)."""
        result = self.command("capture-pane", "-p", "-t", SESSION, check=False)
        return result.stdout if result.returncode == 0 else ""

    def keys(self, *keys: str) -> None:
        """Type ``keys`` into the pane."""
        self.command("send-keys", "-t", SESSION, *keys)

    def alive(self) -> bool:
        """Whether the session still exists (it ends when the TUI exits)."""
        return self.command("has-session", "-t", SESSION, check=False).returncode == 0

    def kill(self) -> None:
        """Kill our server (and so the session and whatever still runs in it)."""
        self.command("kill-server", check=False)

    def wait_screen(self, predicate: Callable[[str], bool], *, timeout: float, what: str) -> str:
        """Poll the screen until ``predicate`` holds; the failure shows the last screen."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen() or screen
            if predicate(screen):
                return screen
            time.sleep(0.25)
        pytest.fail(f"the TUI never showed {what} within {timeout:g} s; last screen:\n{screen}")


def packets(screen: str) -> tuple[int, int]:
    """(in, out) of the counters panel's packets row."""
    match = PACKETS_ROW.search(screen)
    assert match, f"no packets row on the screen:\n{screen}"
    return int(match.group(1).replace(",", "")), int(match.group(2).replace(",", ""))


def write_profile(path: Path, psk: str) -> Path:
    """The laptop's profile (split tunnel to the lab's concentrator), mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(
            f'[gateway]\naddress = "{GATEWAY_IP}"\nidentity = "{GATEWAY_ID}"\n'
            f'[auth]\nid = "{USER}"\npsk = "{psk}"\n'
            '[tunnel]\nmode = "split"\n'
        )
    return path


def test_tui_in_tmux_connects_counts_a_ping_and_deletes_on_quit(
    netns_lab: NetnsLab, tmp_path: Path
) -> None:
    lab = build_lab(netns_lab, laptops=1)
    laptop = lab.laptops[0]
    psk = secrets.token_urlsafe(24)
    config = write_document(
        tmp_path / "concentrator.toml",
        concentrator_document(tmp_path, [{"id": USER, "psk": psk}]),
    )
    concentrator = ConcentratorProcess(lab.gw, config, log_path=tmp_path / "concentrator.log")
    concentrator.start()
    profile = write_profile(tmp_path / "office.toml", psk)
    exit_file = tmp_path / "tui.exit"
    tui = shlex.join(
        [
            *("ip", "netns", "exec", laptop.name, "sh", "-c", PRIVATE_RUN, "outpost-tui"),
            *(OUTPOST, "tui", "--profile", str(profile)),
        ]
    )
    # The session ends when the TUI does; its exit status is kept in a file.
    # Textual draws on stderr, so stderr must stay the terminal; and it takes
    # COLUMNS/LINES, when set, over the terminal's real size.
    env = "env -u COLUMNS -u LINES LANG=C.UTF-8 TERM=xterm-256color"
    shell = f"{env} {tui}; echo $? > {exit_file}"

    tmux = Tmux()
    try:
        tmux.start(shell)
        tmux.wait_screen(lambda s: "Connect" in s and "office" in s, timeout=30, what="the app")
        tmux.keys("c")
        screen = tmux.wait_screen(
            lambda s: (
                "connected" in s.lower().replace("disconnected", "")
                and POOL_ADDRESS.search(s) is not None
            ),
            timeout=30,
            what="'connected' and a leased address",
        )
        leased = POOL_ADDRESS.search(screen)
        assert leased is not None
        assert 2 <= int(leased.group(1)) <= 254, f"{leased.group(0)} is not a client lease"
        before = packets(screen)

        laptop.run(["ping", "-c", "5", "-i", "0.2", "-W", "2", LAN_HOST_IP], timeout=20)
        tmux.wait_screen(
            lambda s: all(a >= b + 5 for a, b in zip(packets(s), before, strict=True)),
            timeout=15,
            what=f"the packet counters grow by 5 each way from {before}",
        )

        tmux.keys("q")
        deadline = time.monotonic() + 20
        while tmux.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not tmux.alive(), f"the TUI did not exit on q:\n{tmux.screen()}"
        assert exit_file.read_text().strip() == "0", "outpost tui exited with an error"
        concentrator.wait_log(r"tunnel down .*deleted by peer", timeout=10, what="the Delete")
        assert concentrator.status()["tunnels"] == 0
        assert POOL not in laptop.ip("route", "show").stdout
    finally:
        tmux.kill()
