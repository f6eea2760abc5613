"""The client as a real ``outpost up`` process in a namespace lab (issue 5, "Proof").

Built on the concentrator's lab (tests/helpers/concentrator_lab.py), with the
``inet`` namespace turned into a small Internet: a router on the bridge and a
web host behind it, so "other traffic" has somewhere to go that is *not* the
office::

    [laptop1] 192.0.2.2 --+                      [inet] router 192.0.2.254 (br0)
                          +-- br0 [inet] --------+       198.51.100.1 --- 198.51.100.10 [www]
    [gw] 192.0.2.1 -------+                      |       route 10.99.100.0/24 via 192.0.2.1
      TUN outpost0 10.99.100.1/24, 10.99.0.1/24 ==== 10.99.0.10/24 [lan]

Every laptop and the gateway have a default route via the router. The router
knows no route to the office LAN, so the LAN host is reachable from a laptop
only through the tunnel; it routes the pool back to the gateway, so a
full-tunnel client's traffic, forwarded by the gateway, gets answered (the web
host then sees the *inner* address as the source, where a split-tunnel
laptop's packets show its outer address 192.0.2.2).

:class:`ClientProcess` runs ``outpost up --profile FILE`` inside a laptop, in
a private mount namespace with a test directory bound on ``/run/outpost``.
Root's client already keeps its status socket and stale-state records per
named network namespace (``/run/outpost/netns/NAME/``); the bind mount also
keeps them out of the real ``/run`` and lets the test read them from outside
(``ClientProcess.state_dir``, ``outpost status --json --socket ...``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final

from tests.helpers.concentrator_lab import (
    GATEWAY_ID,
    GATEWAY_IP,
    POOL,
    REPO,
    ConcentratorLab,
    build_lab,
)
from tests.helpers.logged_process import LoggedProcess
from tests.helpers.netns import Host, NetnsLab

# OUTPOST_CLIENT runs the tests against another build of the command.
CLIENT_BIN: Final = os.environ.get("OUTPOST_CLIENT", str(Path(sys.executable).parent / "outpost"))

ROUTER_IP: Final = "192.0.2.254"
ROUTER_WWW_IP: Final = "198.51.100.1"
WWW_IP: Final = "198.51.100.10"
INTERNET: Final = "198.51.100.0/24"
LAB_DNS: Final = "10.99.0.53"  # concentrator_document's [pool] dns


@dataclass(frozen=True)
class ClientLab:
    """The hosts of the module docstring's topology."""

    gw: Host
    lan: Host
    laptops: tuple[Host, ...]
    inet: Host
    www: Host

    @property
    def concentrator_lab(self) -> ConcentratorLab:
        """The same hosts as the concentrator lab sees them."""
        return ConcentratorLab(self.gw, self.lan, self.laptops)


def build_client_lab(netns_lab: NetnsLab, *, laptops: int = 1) -> ClientLab:
    """The concentrator's lab plus the router and web host of the module docstring."""
    base = build_lab(netns_lab, laptops=laptops)
    inet = netns_lab.hosts["inet"]
    www = netns_lab.add_host("www")
    inet.ip("addr", "add", f"{ROUTER_IP}/24", "dev", "br0")
    netns_lab.link(inet, www, addr_a=f"{ROUTER_WWW_IP}/24", addr_b=f"{WWW_IP}/24")
    netns_lab.forwarding(inet)
    netns_lab.route(inet, POOL, via=GATEWAY_IP)
    netns_lab.route(www, "default", via=ROUTER_WWW_IP)
    for host in (base.gw, *base.laptops):
        netns_lab.route(host, "default", via=ROUTER_IP)
    return ClientLab(base.gw, base.lan, base.laptops, inet, www)


# --- profiles -----------------------------------------------------------------------------


def profile_text(
    *,
    user: str,
    psk: str | None = None,
    certificate: Path | None = None,
    key: Path | None = None,
    ca: Path | None = None,
    gateway: str = GATEWAY_IP,
    identity: str = GATEWAY_ID,
    mode: str = "split",
    dns: bool = True,
    dpd_interval: float = 30,
    max_backoff: float = 60,
    ike_proposals: Iterable[str] | None = None,
    esp_proposals: Iterable[str] | None = None,
) -> str:
    """A client profile (client/profile.py's keys) as TOML text."""

    def strings(values: Iterable[str]) -> str:
        return "[" + ", ".join(json.dumps(v) for v in values) + "]"

    lines = [
        "[gateway]",
        f"address = {json.dumps(gateway)}",
        f"identity = {json.dumps(identity)}",
        "[auth]",
        f"id = {json.dumps(user)}",
    ]
    if psk is not None:
        lines.append(f"psk = {json.dumps(psk)}")
    if certificate is not None:
        lines += [f"certificate = {json.dumps(str(certificate))}", f"key = {json.dumps(str(key))}"]
    if ca is not None:
        lines.append(f"ca = {json.dumps(str(ca))}")
    lines += [
        "[tunnel]",
        f"mode = {json.dumps(mode)}",
        f"dns = {'true' if dns else 'false'}",
        "[dpd]",
        f"interval = {dpd_interval}",
        "[reconnect]",
        f"max_backoff = {max_backoff}",
    ]
    if ike_proposals is not None or esp_proposals is not None:
        lines.append("[ike]")
        if ike_proposals is not None:
            lines.append(f"proposals = {strings(ike_proposals)}")
        if esp_proposals is not None:
            lines.append(f"esp_proposals = {strings(esp_proposals)}")
    return "\n".join(lines) + "\n"


def write_profile(path: Path, text: str) -> Path:
    """Write a profile (0600: it may hold a PSK) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o600)
    return path


# --- the client process ---------------------------------------------------------------------


@dataclass
class ClientProcess(LoggedProcess):
    """One ``outpost up --profile PROFILE`` inside ``host``, with ``run_dir`` as /run/outpost.

    Its stderr lines are read as they come (``logged_process.LoggedProcess``).
    """

    host: Host
    profile: Path
    run_dir: Path
    verbose: bool = False
    name: ClassVar[str] = "the client"

    @property
    def socket(self) -> Path:
        """The status socket, as seen from outside the client's mount namespace.

        Root's client keeps it per named network namespace (``client.statusd``).
        """
        return self.state_dir / "client.sock"

    @property
    def state_dir(self) -> Path:
        """Root's status socket and stale-state records: per named network namespace."""
        return self.run_dir / "netns" / self.host.name

    def start(self) -> None:
        """Start it (returns at once; wait with :meth:`wait_state` or :meth:`wait_log`)."""
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        command = " ".join(
            [CLIENT_BIN, "up", "--profile", f"'{self.profile}'", *(["-v"] if self.verbose else [])]
        )
        self.process = self.host.popen(
            [
                *("unshare", "--mount", "--propagation", "private"),
                *(
                    "sh",
                    "-c",
                    f"mkdir -p /run/outpost && mount --bind '{self.run_dir}' "
                    f"/run/outpost && exec {command}",
                ),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self._follow()

    def status(self) -> dict[str, Any] | None:
        """``outpost status --json --socket ...`` parsed; None while nothing answers."""
        result = self.host.run(
            [CLIENT_BIN, "status", "--json", "--socket", str(self.socket)], check=False
        )
        if result.returncode != 0:
            return None
        answer: dict[str, Any] = json.loads(result.stdout)
        return answer

    def wait_status(
        self,
        condition: Callable[[dict[str, Any]], bool],
        *,
        timeout: float = 20.0,
        what: str = "the status expected",
    ) -> dict[str, Any]:
        """Poll ``outpost status --json`` until ``condition`` holds; raises with the log."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        while True:
            if not self.alive():
                raise AssertionError(
                    f"the client exited ({self._state_text()}) before {what}:\n{self.log_text()}"
                )
            last = self.status()
            if last is not None and condition(last):
                return last
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the client never showed {what}; last status {last}:\n{self.log_text()}"
                )
            time.sleep(0.2)

    def wait_state(self, state: str, *, timeout: float = 20.0) -> dict[str, Any]:
        """Wait until ``outpost status --json`` says ``state`` (e.g. "connected")."""
        return self.wait_status(lambda s: s.get("state") == state, timeout=timeout, what=state)

    def kill(self) -> None:
        """SIGKILL: nothing is undone, which the next start must repair."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)


# --- looking at a host ----------------------------------------------------------------------


def routes(host: Host) -> list[dict[str, Any]]:
    """``ip -j route show`` of ``host`` (main table), parsed."""
    result: list[dict[str, Any]] = json.loads(host.ip("-j", "route", "show").stdout or "[]")
    return result


def route_get(host: Host, destination: str) -> dict[str, Any]:
    """``ip -j route get DESTINATION``: the route the kernel would use."""
    result: list[dict[str, Any]] = json.loads(host.ip("-j", "route", "get", destination).stdout)
    return result[0]


def links(host: Host) -> list[str]:
    """The interface names of ``host``."""
    return [link["ifname"] for link in json.loads(host.ip("-j", "link", "show").stdout)]


def netns_resolv_conf(host: Host) -> Path:
    """``/etc/netns/<namespace>/resolv.conf``: what ``ip netns exec`` shows as resolv.conf."""
    return Path("/etc/netns") / host.name / "resolv.conf"


def wait_until(condition: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something true; raise naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def ping(host: Host, destination: str, *, count: int = 3, interval: float = 0.2) -> str:
    """Ping ``destination`` from ``host``: every echo must be answered; the output."""
    result = host.run(
        ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2", destination],
        check=False,
        timeout=count * interval + 30,
    )
    assert f" {count} received" in result.stdout, result.stdout + result.stderr
    return result.stdout


_UDP_SEND: Final = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
"""


def send_udp(host: Host, destination: str, port: int, payload: str) -> None:
    """One UDP datagram from ``host`` (the kernel picks the route and the source)."""
    host.run([sys.executable, "-c", _UDP_SEND, destination, str(port), payload])


def iperf(host: Host, server: str, *, seconds: int = 2, reverse: bool = False) -> int:
    """Bytes the receiving end counted in an iperf3 TCP run to ``server`` (back with -R)."""
    argv = ["iperf3", "-c", server, "-t", str(seconds), "-J", *(["-R"] if reverse else [])]
    for attempt in range(20):  # the server may still be starting
        result = host.run(argv, check=False, timeout=seconds + 30)
        if result.returncode == 0:
            break
        if "refused" not in result.stdout + result.stderr or attempt == 19:
            raise AssertionError(f"iperf3 failed:\n{result.stdout}\n{result.stderr}")
        time.sleep(0.25)
    received: int = json.loads(result.stdout)["end"]["sum_received"]["bytes"]
    return received
