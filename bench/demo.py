"""`make demo` and `make demo-tui`: Outpost end to end, as a person would run it.

Three network namespaces (see :mod:`netlab.office`): an office LAN host, the
concentrator ``gw`` and a road-warrior ``laptop``. The demo writes a
concentrator configuration and a client profile with a fresh random PSK,
starts ``outpost-concentrator run`` in gw and ``outpost up`` in the laptop,
waits until ``outpost status --json`` says connected, pings the LAN host
through the tunnel, runs iperf3 for 3 s each way, disconnects (SIGTERM: the
client sends a Delete and restores its routes and DNS), checks that it did,
and removes everything. It prints a few lines of what happened; on a failure
one line saying why plus the last log lines of each program, and exit 1.

``--tui`` (``make demo-tui``) starts the Textual TUI in the laptop namespace
instead of the headless client and leaves the terminal to the person until
they quit it.

It runs the programs the way an admin would, from the virtual environment
next to the interpreter running this script (``make demo`` uses
``.venv/bin/python``), and imports nothing of Outpost itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from netlab.iperf import Iperf3
from netlab.netns import ns_cmd
from netlab.office import (
    GATEWAY_IP,
    LAN,
    LAN_HOST_IP,
    LAPTOP_IP,
    POOL,
    LoggedProcess,
    OfficeLab,
    client_profile,
    concentrator_config,
    ns_enter,
    print_tails,
    private_run_outpost,
)
from netlab.process import LabError, install_signal_handlers, require_tools, run

REPO: Final = Path(__file__).resolve().parents[1]
BIN: Final = Path(sys.executable).parent  # not resolved: the venv's own scripts
OUTPOST: Final = str(BIN / "outpost")
CONCENTRATOR: Final = str(BIN / "outpost-concentrator")
CONNECT_TIMEOUT_S: Final = 30.0
IPERF_SECONDS: Final = 3.0
PINGS: Final = 5


@dataclass
class Demo:
    """One run: the lab, the two programs, and the files they were started from."""

    lab: OfficeLab
    workdir: Path
    concentrator: LoggedProcess | None = None
    client: LoggedProcess | None = None

    @property
    def processes(self) -> list[LoggedProcess]:
        """The programs started so far, for a failure report."""
        return [p for p in (self.concentrator, self.client) if p is not None]

    def start_concentrator(self, psk: str) -> None:
        """Write its configuration and start it in gw; wait until it listens."""
        config = concentrator_config(self.workdir, psk)
        self.concentrator = LoggedProcess(
            "outpost-concentrator",
            ns_cmd(self.lab.gw, CONCENTRATOR, "run", "--config", str(config)),
            self.workdir / "concentrator.log",
        ).start()
        self.concentrator.wait_log(r"listening on ", timeout=20, what="'listening on'")

    def concentrator_status(self) -> dict[str, Any]:
        """``outpost-concentrator status --json`` over its control socket."""
        config = self.workdir / "concentrator.toml"
        out = run(
            ns_cmd(self.lab.gw, CONCENTRATOR, "status", "--json", "--config", str(config))
        ).stdout
        result: dict[str, Any] = json.loads(out)
        return result

    def start_client(self, profile: Path) -> None:
        """``outpost up`` in the laptop namespace, with its own ``/run/outpost``."""
        self.client = LoggedProcess(
            "outpost up",
            private_run_outpost(self.lab.laptop, OUTPOST, "up", "--profile", str(profile)),
            self.workdir / "client.log",
        ).start()

    def client_status(self) -> dict[str, Any] | None:
        """``outpost status --json`` next to the running client; None before it answers."""
        assert self.client is not None
        result = run(ns_enter(self.client.pid, OUTPOST, "status", "--json"), check=False)
        if result.returncode != 0:
            return None
        status: dict[str, Any] = json.loads(result.stdout)
        return status

    def wait_connected(self) -> dict[str, Any]:
        """Poll ``outpost status`` until connected; a failed state or timeout raises."""
        assert self.client is not None
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        last: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            if not self.client.alive():
                raise LabError("the client exited before it connected")
            last = self.client_status() or last
            if last and last.get("state") == "connected" and last.get("tunnel"):
                return last
            if last and last.get("state") == "failed":
                raise LabError(f"the client gave up: {last.get('error')}")
            time.sleep(0.2)
        state = last.get("state") if last else "no answer from `outpost status`"
        raise LabError(f"not connected after {CONNECT_TIMEOUT_S:g} s (state: {state})")


def parse_ping(text: str) -> tuple[int, int, float | None]:
    """(sent, received, average rtt in ms) from iputils ping's summary."""
    counts = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    rtt = re.search(r"= [\d.]+/([\d.]+)/", text)
    if not counts:
        raise LabError(f"cannot read ping's summary:\n{text.strip()}")
    return int(counts.group(1)), int(counts.group(2)), float(rtt.group(1)) if rtt else None


def headless(demo: Demo, psk: str) -> None:
    """The whole ``make demo`` sequence; raises :class:`LabError` on the first failure."""
    lab = demo.lab
    print("Outpost demo", flush=True)
    demo.start_concentrator(psk)
    print(f"  concentrator  {GATEWAY_IP}  pool {POOL}, office {LAN}", flush=True)

    demo.start_client(client_profile(demo.workdir, psk))
    status = demo.wait_connected()
    tunnel = status["tunnel"]
    leased = tunnel["inner_ipv4"]
    check_dns_set(demo, tunnel.get("dns") or [])
    print(f"  laptop        {LAPTOP_IP}  leased {leased}, suite {tunnel['esp_suite']} "
          f"(IKE {tunnel['ike_suite']})", flush=True)  # fmt: skip

    result = run(
        ns_cmd(lab.laptop, "ping", "-c", str(PINGS), "-i", "0.2", "-W", "2", LAN_HOST_IP),
        timeout=30,
        check=False,
    )
    sent, received, rtt = parse_ping(result.stdout)
    if received == 0:
        raise LabError(f"no reply from {LAN_HOST_IP} through the tunnel")
    rtt_text = f"rtt {rtt:.1f} ms avg" if rtt is not None else "rtt ?"
    print(f"  ping          {LAN_HOST_IP}: {received}/{sent} replies, {rtt_text}", flush=True)

    up = Iperf3(lab.laptop, lab.lan, LAN_HOST_IP).tcp(IPERF_SECONDS)
    down = Iperf3(lab.lan, lab.laptop, leased).tcp(IPERF_SECONDS)
    print(f"  iperf3        laptop -> office {up.mbps:.0f} Mbit/s, "
          f"office -> laptop {down.mbps:.0f} Mbit/s", flush=True)  # fmt: skip

    print(f"  disconnect    {disconnect(demo)}", flush=True)


def check_dns_set(demo: Demo, servers: list[str]) -> None:
    """The gateway's DNS servers are in the laptop's resolv.conf while connected.

    Checked so that "DNS restored" at the end means something: there was a
    change to undo.
    """
    resolv = Path("/etc/netns") / demo.lab.laptop / "resolv.conf"
    text = resolv.read_text() if resolv.exists() else ""
    missing = [s for s in servers if f"nameserver {s}" not in text]
    if not servers or missing:
        raise LabError(f"the tunnel's DNS servers {servers} are not in {resolv}")


def disconnect(demo: Demo) -> str:
    """Stop the client with SIGTERM and check what a clean disconnect promises.

    The client sends a Delete (the gateway logs the tunnel down and counts no
    tunnel left), removes its TUN device and routes, and puts DNS back: the
    line says so only after each of those was seen.
    """
    assert demo.client is not None
    assert demo.concentrator is not None
    status = demo.client.stop()
    if status != 0:
        raise LabError(f"the client exited with status {status} on SIGTERM")
    if not any("disconnected" in line for line in demo.client.lines()):
        raise LabError("the client never logged 'disconnected'")
    down = demo.concentrator.wait_log(
        r"tunnel down .*: (.*) after", timeout=10, what="'tunnel down' after the client's Delete"
    )
    tunnels = demo.concentrator_status().get("tunnels")
    if tunnels != 0:
        raise LabError(f"the concentrator still counts {tunnels} tunnels after the Delete")
    routes = run(["ip", "-n", demo.lab.laptop, "route", "show"]).stdout
    if LAN in routes or "outpost" in routes:
        raise LabError(f"routes left behind in the laptop:\n{routes.strip()}")
    resolv = Path("/etc/netns") / demo.lab.laptop / "resolv.conf"
    if resolv.exists() and "Outpost" in resolv.read_text():
        raise LabError(f"{resolv} still holds the tunnel's DNS servers")
    return f"Delete sent (gateway: {down.group(1)}), routes and DNS restored"


def tui(demo: Demo, psk: str) -> None:
    """``make demo-tui``: the TUI in the laptop namespace, in the foreground, until q."""
    demo.start_concentrator(psk)
    profile = client_profile(demo.workdir, psk)
    print(f"Outpost TUI: concentrator {GATEWAY_IP} (office {LAN}), laptop {LAPTOP_IP}.")
    print(f"Press c to connect, q to quit; meanwhile try, in another terminal: "
          f"ip netns exec {demo.lab.laptop} ping {LAN_HOST_IP}")  # fmt: skip
    time.sleep(2)  # time to read the hint before the TUI takes the screen
    argv = private_run_outpost(demo.lab.laptop, OUTPOST, "tui", "--profile", str(profile))
    status = subprocess.run(argv, check=False).returncode
    if status != 0:
        raise LabError(f"outpost tui exited with status {status}")
    print("TUI closed; removing the namespaces, the concentrator and its files")


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 on success, 1 on a failure, 130 when interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tui", action="store_true", help="open the TUI in the laptop instead")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the demo builds network namespaces and TUN devices: run it as root "
              "(sudo make demo)", file=sys.stderr)  # fmt: skip
        return 1
    try:
        require_tools("ip", "ping", "iperf3", "nsenter")
        for program in (OUTPOST, CONCENTRATOR):
            if not os.access(program, os.X_OK):
                raise LabError(f"{program} not found: run `make demo` (it builds the venv)")
    except LabError as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1
    install_signal_handlers()
    psk = secrets.token_urlsafe(24)  # fresh each run, never printed
    with tempfile.TemporaryDirectory(prefix="outpost-demo-") as tmp:
        lab = OfficeLab()
        demo = Demo(lab, Path(tmp))
        try:
            with lab:
                try:
                    tui(demo, psk) if args.tui else headless(demo, psk)
                except LabError as error:
                    print(f"demo failed: {error}", file=sys.stderr)
                    print_tails(demo.processes, sys.stderr)
                    return 1
                finally:
                    for process in reversed(demo.processes):
                        process.stop()
        except KeyboardInterrupt:
            print("\ninterrupted: cleaned up", file=sys.stderr)
            return 130
        except LabError as error:  # building or removing the lab itself
            print(f"demo failed: {error}", file=sys.stderr)
            return 1
    left = lab.remaining()
    if left:
        print(f"demo failed: namespaces left behind: {', '.join(left)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
