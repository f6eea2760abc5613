"""The data plane on real TUN devices between two namespaces, keyed by hand (no IKE).

Each test starts ``python -m common.dataplane.manual`` on both ends with
mirrored random SPIs and keys (tests.helpers.manual_tunnel), sends real
traffic between the inner addresses, and checks both what the runners count
and what a capture on the "internet" veth shows: nothing but ESP in UDP 4500
with our SPIs, never an inner packet in clear, never an IP fragment.

Throughput is only checked against a sanity floor: another benchmark may
share the two cores of the test machine.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from common.esp.suites import suite_by_name
from tests.helpers.manual_tunnel import (
    EndAddresses,
    TunnelEnd,
    mirrored_ends,
    random_keymat,
    start_pair,
)
from tests.helpers.netns import Host, NetnsLab

pytestmark = pytest.mark.privileged

A_OUTER: Final = "192.0.2.1"
B_OUTER: Final = "192.0.2.2"
A_OUTER6: Final = "2001:db8:1::1"
B_OUTER6: Final = "2001:db8:1::2"
A_INNER: Final = "10.10.0.1"
B_INNER: Final = "10.10.0.2"
A_INNER6: Final = "fd00::1"
B_INNER6: Final = "fd00::2"
SPOOFED_INNER: Final = "10.10.0.9"
TUN: Final = "otun0"
PINGS: Final = 5
IPERF_SECONDS: Final = 3
MIN_MBIT_S: Final = 20.0  # a sanity floor, not a benchmark
ESP_LAYERS: Final = ("udp", "udpencap", "esp")


# -- topology -------------------------------------------------------------------


def ipv4_lab(lab: NetnsLab, *, mtu: int = 1500) -> tuple[Host, Host]:
    """Hosts a and b on one veth: a to-b 192.0.2.1/24 <-> 192.0.2.2/24 to-a b."""
    a, b = lab.add_host("a"), lab.add_host("b")
    lab.link(a, b, addr_a=f"{A_OUTER}/24", addr_b=f"{B_OUTER}/24", mtu=mtu)
    return a, b


def ipv4_ends(suite: str, extra_args: tuple[str, ...] = ()) -> tuple[TunnelEnd, TunnelEnd]:
    """A 10.10.0.1/24 and B 10.10.0.2/24 inside; each accepts only the other's /32."""
    return mirrored_ends(
        suite,
        a=EndAddresses(A_OUTER, f"{A_INNER}/24", (f"{B_INNER}/32",)),
        b=EndAddresses(B_OUTER, f"{B_INNER}/24", (f"{A_INNER}/32",)),
        extra_args=extra_args,
    )


# -- traffic --------------------------------------------------------------------


def ping(
    host: Host,
    destination: str,
    *,
    count: int = PINGS,
    source: str | None = None,
    payload: int | None = None,
    dont_fragment: bool = False,
    wait_s: int = 2,
) -> subprocess.CompletedProcess[str]:
    """``ping`` from ``host``; the caller looks at the result (it is not checked)."""
    argv = ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", str(wait_s)]
    if source is not None:
        argv += ["-I", source]
    if payload is not None:
        argv += ["-s", str(payload)]
    if dont_fragment:
        argv += ["-M", "do"]
    return host.run([*argv, destination], check=False, timeout=count * (wait_s + 1) + 10)


def assert_ping_ok(host: Host, destination: str, **kwargs: Any) -> None:
    result = ping(host, destination, **kwargs)
    failure = f"ping {destination} from {host.name} failed:\n{result.stdout}{result.stderr}"
    assert result.returncode == 0, failure
    assert " 0% packet loss" in result.stdout, failure


def wait_listening(host: Host, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not host.run(["ss", "-Hltn", f"sport = :{port}"]).stdout.strip():
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing listens on TCP {port} in {host.name}")
        time.sleep(0.05)


def iperf3_tcp(client: Host, server: Host, server_address: str) -> dict[str, Any]:
    """One iperf3 TCP run of ``IPERF_SECONDS`` from ``client``; iperf3's ``end.sum_received``."""
    server.popen(
        ["iperf3", "-s", "-1", "-B", server_address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening(server, 5201)
    result = client.run(
        [
            "iperf3",
            "-c",
            server_address,
            "-t",
            str(IPERF_SECONDS),
            "-J",
            "--connect-timeout",
            "5000",
        ],
        check=False,
        timeout=IPERF_SECONDS + 40,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        report = {}
    failure = f"iperf3 failed: {report.get('error')}\n{result.stdout[-2000:]}{result.stderr}"
    assert result.returncode == 0, failure
    assert "error" not in report, failure
    received: dict[str, Any] = report["end"]["sum_received"]
    return received


# -- capture --------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """What tshark makes of one captured frame (it cannot decrypt: it has no keys)."""

    number: int
    layers: tuple[str, ...]
    ip_len: int | None  # the outer IP packet's total length
    src: str
    udp_ports: tuple[int, ...]
    spi: int | None
    icmpv6_type: int | None
    fragment: bool

    @property
    def is_esp(self) -> bool:
        return self.layers[3:] == ESP_LAYERS and self.layers[2] in ("ip", "ipv6")

    @property
    def is_link_noise(self) -> bool:
        """ARP, IPv6 neighbour discovery and MLD: the veth's own housekeeping, never echoes."""
        if self.layers[2:] == ("arp",):
            return True
        if self.layers[2:] not in (("ipv6", "icmpv6"), ("ipv6", "ipv6.hopopts", "icmpv6")):
            return False  # MLD reports carry a hop-by-hop router alert
        return self.icmpv6_type in LINK_ICMPV6_TYPES


# MLD query/report/done (130-132), RS, RA, NS, NA, redirect (133-137), MLDv2 report (143)
LINK_ICMPV6_TYPES: Final = frozenset({130, 131, 132, 133, 134, 135, 136, 137, 143})

CAPTURE_FIELDS: Final = (
    "frame.number",
    "frame.protocols",
    "ip.len",
    "ipv6.plen",
    "ip.src",
    "ipv6.src",
    "udp.srcport",
    "udp.dstport",
    "esp.spi",
    "icmpv6.type",
    "ip.flags.mf",
    "ip.frag_offset",
    "ipv6.fraghdr.offset",
)


class Capture:
    """tshark writing everything one interface sees to a pcap, until :meth:`stop`."""

    def __init__(self, host: Host, ifname: str, directory: Path) -> None:
        self.host = host
        self.ifname = ifname
        self.path = directory / f"{host.label}-{ifname}.pcap"
        self.log = directory / f"{host.label}-{ifname}.tshark.stderr"
        with open(self.log, "w") as log:
            self.process = host.popen(
                ["tshark", "-n", "-i", ifname, "-s", "256", "-w", str(self.path)],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self._wait_capturing()

    def _wait_capturing(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while "Capturing on" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"tshark did not start capturing:\n{self.log.read_text()}")
            time.sleep(0.05)
        time.sleep(0.3)  # the message comes from tshark once dumpcap has opened the interface

    def _wait_written(self, quiet_s: float = 1.0, timeout: float = 15.0) -> None:
        """Wait until the pcap stops growing.

        dumpcap reads the kernel's packet ring in blocks (released on a
        timeout when not full) and drops what it has not read yet when it is
        interrupted, so the last packets of a test would be missing without this.
        """
        deadline = time.monotonic() + timeout
        size, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            current = self.path.stat().st_size if self.path.exists() else 0
            if current != size:
                size, since = current, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return
            time.sleep(0.1)

    def stop(self) -> list[Frame]:
        """Once all is written, SIGINT (tshark exits); then every frame of the capture."""
        self._wait_written()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=20)
        result = subprocess.run(
            [
                *("tshark", "-n", "-r", str(self.path), "-T", "fields"),
                *("-E", "separator=/t", "-E", "occurrence=f"),
                *(arg for name in CAPTURE_FIELDS for arg in ("-e", name)),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"tshark -r failed: {result.stderr}"
        frames = []
        for line in result.stdout.splitlines():
            values = dict(zip(CAPTURE_FIELDS, line.split("\t"), strict=True))
            if values["ip.len"]:
                ip_len: int | None = int(values["ip.len"])
            elif values["ipv6.plen"]:
                ip_len = 40 + int(values["ipv6.plen"])
            else:
                ip_len = None
            frames.append(
                Frame(
                    number=int(values["frame.number"]),
                    layers=tuple(values["frame.protocols"].split(":")),
                    ip_len=ip_len,
                    src=values["ip.src"] or values["ipv6.src"],
                    udp_ports=tuple(
                        int(values[name]) for name in ("udp.srcport", "udp.dstport") if values[name]
                    ),
                    spi=int(values["esp.spi"], 0) if values["esp.spi"] else None,
                    icmpv6_type=int(values["icmpv6.type"]) if values["icmpv6.type"] else None,
                    fragment=values["ip.flags.mf"] in ("1", "True")
                    or values["ip.frag_offset"] not in ("", "0")
                    or "ipv6.fraghdr" in values["frame.protocols"]
                    or values["ipv6.fraghdr.offset"] != "",
                )
            )
        return frames


def esp_frames_only(frames: list[Frame], spis: set[int], *, at_least: int) -> list[Frame]:
    """Every IP frame is ESP-in-UDP-4500 with one of ``spis``; returns the ESP frames.

    The veth's own housekeeping (ARP, IPv6 ND/MLD) is the only other traffic
    it may carry; an ICMP (or ICMPv6 echo) or TCP layer anywhere means an
    inner packet went out in clear (tshark cannot decrypt ours: it has no keys).
    """
    clear = [
        f
        for f in frames
        if {"icmp", "tcp"} & set(f.layers) or ("icmpv6" in f.layers and not f.is_link_noise)
    ]
    assert not clear, f"inner traffic in clear on the wire: {clear[:5]}"
    strangers = [f for f in frames if not f.is_esp and not f.is_link_noise]
    assert not strangers, f"frames that are not ESP in UDP 4500: {strangers[:5]}"
    esp = [f for f in frames if f.is_esp]
    wrong_port = [f for f in esp if f.udp_ports != (4500, 4500)]
    assert not wrong_port, f"ESP not between ports 4500: {wrong_port[:5]}"
    seen = {f.spi for f in esp}
    assert seen == spis, f"SPIs on the wire {seen} != ours {spis}"
    assert len(esp) >= at_least, f"only {len(esp)} ESP frames captured, expected >= {at_least}"
    fragments = [f for f in frames if f.fragment]
    assert not fragments, f"IP fragments on the wire: {fragments[:5]}"
    return esp


def assert_no_errors(final: dict[str, Any], *reasons: str) -> None:
    for direction in ("inbound", "outbound"):
        for reason in reasons:
            assert final[direction].get(f"drop_{reason}", 0) == 0, (direction, reason, final)


def ip_snmp(host: Host) -> dict[str, int]:
    """``/proc/net/snmp`` of ``host`` as {"IpFragCreates": n, ...}."""
    lines = host.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
    values: dict[str, int] = {}
    for header, data in zip(lines[::2], lines[1::2], strict=True):
        proto, _, names = header.partition(":")
        for name, number in zip(names.split(), data.partition(":")[2].split(), strict=True):
            values[proto + name] = int(number)
    return values


# -- tests ----------------------------------------------------------------------


@pytest.mark.needs_tool("iperf3", "tshark")
@pytest.mark.parametrize(
    ("suite", "offload"),
    [
        pytest.param("aes256gcm16", True, id="aes256gcm16"),
        pytest.param("chacha20poly1305", True, id="chacha20poly1305"),
        pytest.param("aes256gcm16", False, id="aes256gcm16-no-offload"),
    ],
)
def test_ping_and_tcp_cross_the_tunnel_only_as_esp(
    netns_lab: NetnsLab, tmp_path: Path, suite: str, offload: bool
) -> None:
    """Ping and an iperf3 TCP transfer between inner addresses; the veth carries only ESP.

    [a] otun0 10.10.0.1/24 (remote-net 10.10.0.2/32)
        to-b 192.0.2.1/24  ==== veth (tshark) ====  to-a 192.0.2.2/24
                                                    otun0 10.10.0.2/24 (remote-net 10.10.0.1/32) [b]
    ESP in UDP 4500 <-> 4500; --no-offload on both ends for the plain TUN path.
    """
    a, b = ipv4_lab(netns_lab)
    end_a, end_b = ipv4_ends(suite, () if offload else ("--no-offload",))
    tun_a, tun_b = start_pair(a, end_a, b, end_b)
    assert tun_a.ready is not None
    assert tun_b.ready is not None
    assert (tun_a.ready["offload"], tun_b.ready["offload"]) == (offload, offload)
    assert tun_a.ready["suite"] == suite

    capture = Capture(a, "to-b", tmp_path)
    assert_ping_ok(a, B_INNER)
    received = iperf3_tcp(a, b, B_INNER)
    frames = capture.stop()
    final_a, final_b = tun_a.stop(), tun_b.stop()

    mbit_s = received["bits_per_second"] / 1e6
    print(f"{suite} offload={offload}: {mbit_s:.0f} Mbit/s, {len(frames)} frames captured")
    assert received["bytes"] > 0
    assert mbit_s > MIN_MBIT_S, f"{mbit_s:.1f} Mbit/s through the tunnel"
    esp_frames_only(frames, {end_a.spi_out, end_b.spi_out}, at_least=2 * PINGS)
    # B decrypted (about) what A encrypted; nothing failed authentication or anti-spoofing.
    assert 0 < final_b["inbound"]["packets"] <= final_a["outbound"]["packets"]
    assert 0 < final_a["inbound"]["packets"] <= final_b["outbound"]["packets"]
    assert final_b["inbound"]["octets"] >= received["bytes"]
    for final in (final_a, final_b):
        assert_no_errors(final, "auth_failed", "spoofed_source", "malformed", "unknown_spi")


def test_inner_source_outside_the_peers_networks_is_dropped(netns_lab: NetnsLab) -> None:
    """A packet from an inner address B does not accept for A is dropped by B (anti-spoof).

    [a] otun0 10.10.0.1/24 + 10.10.0.9/32
        to-b 192.0.2.1/24  ==== veth ====  to-a 192.0.2.2/24
                                           otun0 10.10.0.2/24, remote-net 10.10.0.1/32 only [b]
    ping -I 10.10.0.9 10.10.0.2: A encrypts it (the destination is B's), B decrypts
    it and drops it for its source.
    """
    a, b = ipv4_lab(netns_lab)
    end_a, end_b = ipv4_ends("aes256gcm16")
    tun_a, tun_b = start_pair(a, end_a, b, end_b)
    assert_ping_ok(a, B_INNER, count=2)  # the tunnel itself works
    a.ip("addr", "add", f"{SPOOFED_INNER}/32", "dev", TUN)

    spoofed = ping(a, B_INNER, count=3, source=SPOOFED_INNER, wait_s=1)
    final_a, final_b = tun_a.stop(), tun_b.stop()

    assert spoofed.returncode != 0, spoofed.stdout
    assert " 100% packet loss" in spoofed.stdout, spoofed.stdout
    assert final_b["inbound"].get("drop_spoofed_source", 0) >= 3, final_b
    assert final_a["outbound"]["packets"] >= 2 + 3  # the spoofed pings did go out as ESP
    assert final_b["outbound"]["packets"] == 2  # only the two genuine echo replies came back
    assert_no_errors(final_b, "auth_failed")


def test_wrong_inbound_key_fails_authentication_without_crashing(netns_lab: NetnsLab) -> None:
    """B's inbound key differs from A's outbound key: B drops every packet, and keeps running.

    [a] otun0 10.10.0.1/24
        to-b 192.0.2.1/24  ==== veth ====  to-a 192.0.2.2/24
                                           otun0 10.10.0.2/24 [b]
    SPIs mirrored, but B --key-in is a fresh random key.
    """
    a, b = ipv4_lab(netns_lab)
    end_a, end_b = ipv4_ends("aes256gcm16")
    end_b = dataclasses.replace(end_b, key_in=random_keymat(end_b.suite))
    assert end_b.key_in != end_a.key_out
    tun_a, tun_b = start_pair(a, end_a, b, end_b)

    result = ping(a, B_INNER, count=3, wait_s=1)
    assert result.returncode != 0, result.stdout
    assert " 100% packet loss" in result.stdout, result.stdout

    running = tun_b.counters()  # still answers SIGUSR1
    assert running["inbound"].get("drop_auth_failed", 0) >= 3, running
    assert running["inbound"]["packets"] == 0
    assert tun_b.process.poll() is None
    final_b = tun_b.stop()  # and stops cleanly (exit status 0)
    tun_a.stop()
    assert final_b["inbound"]["drop_auth_failed"] >= 3
    assert final_b["outbound"]["packets"] == 0


@pytest.mark.needs_tool("tshark")
@pytest.mark.parametrize("inner_version", [4, 6], ids=["inner-ipv4", "inner-ipv6"])
def test_ipv6_outer_transport(netns_lab: NetnsLab, tmp_path: Path, inner_version: int) -> None:
    """ESP in UDP over IPv6 between the outer addresses; IPv4 or IPv6 inside.

    [a] to-b 2001:db8:1::1/64 ==== veth (tshark) ==== to-a 2001:db8:1::2/64 [b]
        otun0 10.10.0.1/24 <-> otun0 10.10.0.2/24   (inner-ipv4; remote-nets the /32s)
        otun0 fd00::1/64   <-> otun0 fd00::2/64     (inner-ipv6; remote-nets the /128s)
    The runner takes a single --address, so each inner family is its own tunnel.
    """
    a, b = netns_lab.add_host("a"), netns_lab.add_host("b")
    netns_lab.link(a, b, addr_a=f"{A_OUTER6}/64", addr_b=f"{B_OUTER6}/64")
    if inner_version == 4:
        inner_a, inner_b, prefix, host_prefix, headers = A_INNER, B_INNER, 24, 32, 20 + 8
    else:
        inner_a, inner_b, prefix, host_prefix, headers = A_INNER6, B_INNER6, 64, 128, 40 + 8
    end_a, end_b = mirrored_ends(
        "aes256gcm16",
        a=EndAddresses(A_OUTER6, f"{inner_a}/{prefix}", (f"{inner_b}/{host_prefix}",)),
        b=EndAddresses(B_OUTER6, f"{inner_b}/{prefix}", (f"{inner_a}/{host_prefix}",)),
    )
    tun_a, tun_b = start_pair(a, end_a, b, end_b)
    assert tun_a.ready is not None
    assert tun_a.ready["path_mtu"] == 1500
    # IPv6 (40) + UDP (8) + ESP header, IV, pad length, next header, ICV (8 + 8 + 2 + 16)
    assert 1500 - 40 - 8 - 34 - 3 <= tun_a.tun_mtu <= 1500 - 40 - 8 - 34

    capture = Capture(a, "to-b", tmp_path)
    assert_ping_ok(a, inner_b)
    assert_ping_ok(b, inner_a, count=2)
    # the largest inner packet the TUN takes, not fragmented on the way
    assert_ping_ok(a, inner_b, count=2, payload=tun_a.tun_mtu - headers, dont_fragment=True)
    frames = capture.stop()
    final_a, final_b = tun_a.stop(), tun_b.stop()

    esp = esp_frames_only(frames, {end_a.spi_out, end_b.spi_out}, at_least=2 * (PINGS + 2 + 2))
    assert {f.layers[2] for f in esp} == {"ipv6"}
    assert max(f.ip_len or 0 for f in esp) <= 1500
    assert final_b["inbound"]["packets"] >= PINGS + 2 + 2
    assert final_a["inbound"]["packets"] >= PINGS + 2 + 2
    for final in (final_a, final_b):
        assert_no_errors(final, "auth_failed", "spoofed_source")


@pytest.mark.needs_tool("tshark")
def test_tunnel_mtu_fits_the_path_without_fragments(netns_lab: NetnsLab, tmp_path: Path) -> None:
    """Path MTU 1400: a DF packet of exactly the TUN MTU passes unfragmented; one octet more fails.

    [a] otun0 10.10.0.1/24 (MTU from ready: tun_mtu)
        to-b 192.0.2.1/24 mtu 1400 ==== veth (tshark) ==== to-a 192.0.2.2/24 mtu 1400
                                                           otun0 10.10.0.2/24 [b]
    """
    a, b = ipv4_lab(netns_lab, mtu=1400)
    end_a, end_b = ipv4_ends("aes256gcm16")
    tun_a, tun_b = start_pair(a, end_a, b, end_b)
    assert tun_a.ready is not None
    assert tun_a.ready["path_mtu"] == 1400
    tun_mtu = tun_a.tun_mtu
    assert tun_b.tun_mtu == tun_mtu
    assert f"mtu {tun_mtu} " in a.ip("link", "show", "dev", TUN).stdout
    assert 1400 - 28 - 34 - 3 <= tun_mtu <= 1400 - 28 - 34  # IPv4+UDP, ESP, at most 3 of padding

    capture = Capture(a, "to-b", tmp_path)
    assert_ping_ok(a, B_INNER, count=3, payload=tun_mtu - 28, dont_fragment=True)
    too_big = ping(a, B_INNER, count=1, payload=tun_mtu - 27, dont_fragment=True)
    frames = capture.stop()
    final_b = tun_b.stop()
    tun_a.stop()

    assert too_big.returncode != 0
    assert "message too long" in too_big.stdout + too_big.stderr, too_big
    esp = esp_frames_only(frames, {end_a.spi_out, end_b.spi_out}, at_least=2 * 3)
    # the full-size pings went out as outer packets of (at most) the path MTU, in one piece
    full_size = tun_mtu + 20 + 8 + suite_by_name(end_a.suite).overhead(tun_mtu)
    assert full_size <= 1400
    assert [f.ip_len for f in esp].count(full_size) == 2 * 3
    assert max(f.ip_len or 0 for f in esp) == full_size
    assert final_b["inbound"]["packets"] == 3  # the one-too-big ping never reached the tunnel
    for host in (a, b):
        snmp = ip_snmp(host)
        assert snmp["IpFragCreates"] == 0, (host.name, snmp)
        assert snmp["IpReasmReqds"] == 0, (host.name, snmp)
