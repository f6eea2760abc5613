"""The concentrator as a real process in a namespace lab, with strongSwan road warriors.

The system tests of the concentrator (tests/system/test_concentrator.py) run
``outpost-concentrator run`` exactly as an admin would, inside a ``gw``
namespace, against road warriors that are real strongSwan charons in
``laptop`` namespaces, and check what reaches a host in a ``lan`` namespace::

    [laptop1] 192.0.2.2 --+
    [laptop2] 192.0.2.3 --+-- br0 [inet] --+-- 192.0.2.1 [gw] outpost-concentrator
    [laptop3] 192.0.2.4 --+                          |   TUN outpost0 10.99.100.1/24
                                                     |   10.99.0.1/24
                                                     +== 10.99.0.10/24 [lan]
                                                         route 10.99.100.0/24 via 10.99.0.1

The laptops share one Ethernet segment (a bridge in an ``inet`` namespace),
as road warriors on the Internet share the concentrator's public address.
The LAN host routes the pool back to the gateway (no NAT: the deploy/ NAT
script is not what these tests are about). Forwarding in ``gw`` is left off:
switching it on is the concentrator's job, and the tests would hide it.

:class:`ConcentratorProcess` is one ``outpost-concentrator run`` (started
through ``Host.popen``, so the lab's teardown stops it whatever happens): a
thread keeps every stderr line, :meth:`ConcentratorProcess.wait_log` waits
for a log line, :meth:`ConcentratorProcess.stop` sends SIGTERM and returns
the exit status. :func:`concentrator_document` is the configuration the
tests start from.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final
from unittest import mock

from tests.helpers import strongswan
from tests.helpers.concentrator_config import Document, dumps
from tests.helpers.logged_process import LoggedProcess
from tests.helpers.netns import Host, NetnsLab
from tests.helpers.packets import esp_trailer, ipv4_header, reference_esp_seal
from tests.helpers.strongswan import StrongSwan, SwanConnection

REPO: Final = Path(__file__).resolve().parents[2]
# OUTPOST_CONCENTRATOR runs the tests against another build of the command.
CONCENTRATOR_BIN: Final = os.environ.get(
    "OUTPOST_CONCENTRATOR", str(Path(sys.executable).parent / "outpost-concentrator")
)

GATEWAY_IP: Final = "192.0.2.1"
LAPTOP_IPS: Final = ("192.0.2.2", "192.0.2.3", "192.0.2.4")
GATEWAY_LAN_IP: Final = "10.99.0.1"
LAN_HOST_IP: Final = "10.99.0.10"
LAN: Final = "10.99.0.0/24"
POOL: Final = "10.99.100.0/24"
POOL_GATEWAY: Final = "10.99.100.1"
GATEWAY_ID: Final = "vpn.lab.example"
METRICS_PORT: Final = 9810  # inside gw's own namespace: no clash with anything outside


@dataclass(frozen=True)
class ConcentratorLab:
    """The hosts of the topology in the module docstring."""

    gw: Host
    lan: Host
    laptops: tuple[Host, ...]


def build_lab(netns_lab: NetnsLab, *, laptops: int = 3) -> ConcentratorLab:
    """Create the namespaces, links, bridge and LAN route of the module docstring."""
    if not 1 <= laptops <= len(LAPTOP_IPS):
        raise ValueError(f"1 to {len(LAPTOP_IPS)} laptops")
    inet = netns_lab.add_host("inet")
    gw = netns_lab.add_host("gw")
    lan = netns_lab.add_host("lan")
    hosts = tuple(netns_lab.add_host(f"laptop{n + 1}") for n in range(laptops))
    inet.ip("link", "add", "br0", "type", "bridge")
    for host, address in ((gw, GATEWAY_IP), *zip(hosts, LAPTOP_IPS, strict=False)):
        link = netns_lab.link(host, inet, addr_a=f"{address}/24")
        inet.ip("link", "set", link.ifname_b, "master", "br0")
    inet.ip("link", "set", "br0", "up")
    netns_lab.link(gw, lan, addr_a=f"{GATEWAY_LAN_IP}/24", addr_b=f"{LAN_HOST_IP}/24")
    netns_lab.route(lan, POOL, via=GATEWAY_LAN_IP)
    gw.sysctl({"net.ipv4.ip_forward": 0})
    return ConcentratorLab(gw, lan, hosts)


def concentrator_document(
    workdir: Path,
    users: list[dict[str, Any]],
    *,
    dpd_interval: float = 3,
    dpd_timeout: float = 10,
) -> Document:
    """A configuration listening on 192.0.2.1 with state files under ``workdir``."""
    return {
        "server": {"listen": [GATEWAY_IP], "identity": GATEWAY_ID, "tun": "outpost0"},
        "pool": {"ipv4": POOL, "dns": ["10.99.0.53"]},
        "lan": {"subnets": [LAN]},
        "users": users,
        "dpd": {"interval": dpd_interval, "timeout": dpd_timeout},
        # Both AEADs (the built-in default is AES-GCM-256 only), as in the example config.
        "ike": {
            "proposals": ["aes256gcm16-prfsha256-x25519-ecp256"],
            "esp_proposals": ["aes256gcm16", "chacha20poly1305"],
        },
        "store": {"path": str(workdir / "state.db")},
        "control": {"socket": str(workdir / "control" / "control.sock")},
        "metrics": {"listen": f"127.0.0.1:{METRICS_PORT}"},
    }


def write_document(path: Path, document: Document) -> Path:
    """Write ``document`` as TOML at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(document))
    return path


@dataclass
class ConcentratorProcess(LoggedProcess):
    """One ``outpost-concentrator run --config CONFIG`` inside ``host``.

    Its stderr lines are read as they come (``logged_process.LoggedProcess``).
    """

    host: Host
    config: Path
    name: ClassVar[str] = "concentrator"

    def start(self, *, timeout: float = 20.0) -> None:
        """Start it and wait for its "listening on" line (raises with the log if it dies)."""
        self.process = self.host.popen(
            [CONCENTRATOR_BIN, "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self._follow()
        self.wait_log(r"listening on ", timeout=timeout, what="the concentrator to listen")

    # --- the admin's view: control socket and metrics -------------------------------------

    def cli(self, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
        """``outpost-concentrator ARGS --config CONFIG`` inside ``host`` (checked)."""
        return self.host.run(
            [CONCENTRATOR_BIN, *args, "--config", str(self.config)], timeout=timeout
        )

    def status(self) -> dict[str, Any]:
        """``outpost-concentrator status --json``, parsed."""
        result: dict[str, Any] = json.loads(self.cli("status", "--json").stdout)
        return result

    def sessions(self) -> list[dict[str, Any]]:
        """``outpost-concentrator sessions --json``, parsed."""
        result: list[dict[str, Any]] = json.loads(self.cli("sessions", "--json").stdout)
        return result

    def metrics(self) -> str:
        """The Prometheus text the metrics endpoint serves (fetched from inside ``host``)."""
        url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
        script = (
            "import urllib.request; "
            f"print(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
        )
        return self.host.run([sys.executable, "-c", script], timeout=15).stdout


def metric_value(text: str, name: str, labels: str = "") -> float | None:
    """The sample ``name{labels}`` of Prometheus text (labels as written, e.g. ``reason="x"``)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, _, value = line.rpartition(" ")
        if key == wanted:
            return float(value)
    return None


# --- strongSwan road warriors ------------------------------------------------------------


def road_warrior(
    laptop_ip: str,
    identity: str,
    *,
    psk: str = "",
    esp: str = "aes256gcm16",
    cert: str | None = None,
) -> SwanConnection:
    """A road warrior asking for a virtual IP and the LAN (``vips = 0.0.0.0``, encap = yes)."""
    return SwanConnection(
        local_addr=laptop_ip,
        remote_addr=GATEWAY_IP,
        local_id=identity,
        remote_id=GATEWAY_ID,
        psk=psk,
        esp_proposal=esp,
        vips="0.0.0.0",
        remote_ts=LAN,
        name="home",
        cert=cert,
    )


class RoadWarrior(StrongSwan):
    """A strongSwan charon that also logs its Child SA keys (``chd = 4``).

    A test that must put a forged packet *inside* an authentic ESP SA needs
    the keys: charon's kernel-libipsec never sends an inner source outside
    its negotiated traffic selector, so the forgery has to be sealed by the
    test (:func:`esp_in_udp`) with the SA charon negotiated.
    """

    def start(self, connection: SwanConnection, **kwargs: Any) -> None:
        base = strongswan.strongswan_conf

        def with_child_keys(workdir: Path, *, fragment_size: int | None = None) -> str:
            text = base(workdir, fragment_size=fragment_size)
            return text.replace("net = 1\n", "net = 1\n            chd = 4\n", 1)

        with mock.patch.object(strongswan, "strongswan_conf", with_child_keys):
            super().start(connection, **kwargs)

    def virtual_ip(self) -> str:
        """The virtual IP the gateway assigned (``local '...' @ ... [VIP]`` of ``--list-sas``)."""
        text = self.list_sas()
        match = re.search(r"^\s+local\s+'[^']*' @ \S+ \[([0-9.]+)\]", text, re.MULTILINE)
        assert match, f"no virtual IP in:\n{text}\n{self.logs()}"
        return match.group(1)

    def outbound_sa(self) -> tuple[int, int, bytes]:
        """The newest Child SA's outbound SPI, its packet count so far, and its keymat.

        The keymat is charon's "encryption initiator key" (key || 4-byte salt
        for AEADs): a road warrior is the initiator, so that is its outbound key.
        """
        text = self.list_sas()
        spi = re.findall(r"^\s+out\s+([0-9a-f]{8}),\s+\d+ bytes,\s+(\d+) packets", text, re.M)
        assert spi, f"no outbound SA in:\n{text}"
        keys = re.findall(
            r"encryption initiator key => \d+ bytes @ \S+\n((?:.*\[CHD\]\s+\d+: .*\n)+)",
            self.log.read_text(),
        )
        assert keys, "charon logged no Child SA key (chd = 4)"
        keymat = b"".join(
            bytes.fromhex("".join(re.findall(r"\b[0-9A-F]{2}\b", line.split(": ", 1)[1][:48])))
            for line in keys[-1].splitlines()
        )
        return int(spi[-1][0], 16), int(spi[-1][1]), keymat


def esp_in_udp(
    *,
    suite: str,
    keymat: bytes,
    spi: int,
    seq: int,
    inner: bytes,
    source: str,
    destination: str = GATEWAY_IP,
) -> bytes:
    """An outer IPv4 datagram: UDP 4500 -> 4500 carrying ``inner`` in ESP (RFC 3948).

    Sealed by ``reference_esp_seal`` (written from the RFCs, not from
    ``common.esp``), so the concentrator sees an authentic packet of the SA.
    """
    plaintext = inner + esp_trailer(len(inner), 4, 4)  # next header 4: IPv4 in tunnel mode
    esp = reference_esp_seal(suite, keymat, spi, seq, plaintext, iv=seq.to_bytes(8, "big"))
    udp = struct.pack("!HHHH", 4500, 4500, 8 + len(esp), 0) + esp
    return ipv4_header(source, destination, 17, len(udp)) + udp


_RAW_SENDER: Final = """
import socket, sys
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for line in sys.stdin:
    packet = bytes.fromhex(line.strip())
    raw.sendto(packet, (socket.inet_ntoa(packet[16:20]), 0))
"""


def send_raw(host: Host, packets: list[bytes]) -> None:
    """Send whole IPv4 packets (headers included) from ``host`` through a raw socket.

    A raw socket sends from port 4500 although charon holds that port, which
    is what a forged or replayed ESP-in-UDP datagram needs.
    """
    host.run([sys.executable, "-c", _RAW_SENDER], input="".join(p.hex() + "\n" for p in packets))


_UDP_SINK: Final = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, (address, port) = sock.recvfrom(65535)
    print(address, data.hex(), flush=True)
"""


@dataclass
class UdpSink:
    """A UDP listener on a lab host: which sources sent which payloads."""

    host: Host
    address: str
    port: int
    output: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        with self.output.open("w") as out:
            self.process = self.host.popen(
                [sys.executable, "-u", "-c", _UDP_SINK, self.address, str(self.port)], stdout=out
            )
        deadline = time.monotonic() + timeout
        while not self.output.read_text().startswith("ready"):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"UDP sink on {self.host.name} did not start")
            time.sleep(0.05)

    def received(self) -> list[tuple[str, bytes]]:
        """(source address, payload) of every datagram so far."""
        lines = self.output.read_text().splitlines()[1:]
        return [(a, bytes.fromhex(h)) for a, _, h in (line.partition(" ") for line in lines)]

    def wait_for(self, payload: bytes, timeout: float = 5.0) -> str | None:
        """The source of the first datagram carrying ``payload``; None if none in time."""
        deadline = time.monotonic() + timeout
        while True:
            for source, data in self.received():
                if data == payload:
                    return source
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)
