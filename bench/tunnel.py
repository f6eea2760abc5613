"""Tunnel benchmark: plain veth, Outpost's data plane and strongSwan, in ONE run.

Why one run: on a small shared VM absolute throughput moves by tens of
percent between minutes, so "Outpost did X Mbit/s today, strongSwan did Y
last week" says nothing. Every path is measured here on the same namespace
pair, minutes apart, and the report leads with the ratios:

- plain: the veth link itself (TCP uses 64 KB GSO segments, so its packet
  rate is not comparable; it is the ceiling, not a peer);
- outpost: ``python -m common.dataplane.manual`` on both ends (manual SPIs
  and keys, ESP-in-UDP 4500), per cipher suite;
- strongswan: charon 5.9.8 with kernel-libipsec (userspace ESP on a TUN,
  ESP-in-UDP forced with ``encap = yes``), per cipher suite.

Each tunnel path carries one iperf3 TCP stream (median of N runs) and a UDP
flood of small packets (receiver packets/s and loss), between the inner
addresses 10.10.0.1 (A) -> 10.10.0.2 (B). Both tunnels get the same inner MTU
(1400 by default: kernel-libipsec reads at most 1400 bytes from its TUN, so
strongSwan cannot go higher, and Outpost is clamped to match so neither side
gains from bigger packets). CPU seconds of the tunnel processes are metered
from /proc so throughput can be read per core used.

Run as root: ``.venv/bin/python bench/tunnel.py [--quick]``. Results: a table
on stdout and ``bench/results/tunnel.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

from netlab.cpu import CpuMeter
from netlab.iperf import Iperf3, TcpResult, UdpResult
from netlab.netns import NamespacePair, ping, remove_stale_namespaces, set_mtu
from netlab.outpost import OutpostManualTunnel, mirrored_sides
from netlab.process import (
    CHARON,
    CLEANUP,
    LabError,
    install_signal_handlers,
    require_tools,
    run,
)
from netlab.swan import SwanTunnel

REPO: Final = Path(__file__).resolve().parent.parent
RESULTS: Final = REPO / "bench" / "results" / "tunnel.json"
NS_PREFIX: Final = "obtun"
INNER_A: Final = "10.10.0.1"
INNER_B: Final = "10.10.0.2"
SPI_A_IN: Final = 0x1001  # A's inbound = B's outbound
SPI_B_IN: Final = 0x2002
#: kernel-libipsec 5.9.8 drops inner packets above this size (its TUN read buffer)
LIBIPSEC_MAX_MTU: Final = 1400
DEFAULT_SUITES: Final = ("aes256gcm16", "chacha20poly1305")
#: KEYMAT octets per direction (key || 4-octet salt) for the suites benchmarked
KEYMAT_LEN: Final[dict[str, int]] = {"aes256gcm16": 36, "aes128gcm16": 20, "chacha20poly1305": 36}


@dataclass
class PathResult:
    """Everything measured on one path (plain, or one tunnel with one suite)."""

    path: str
    suite: str
    mtu: int | None = None
    tcp: list[TcpResult] = field(default_factory=list)
    udp: UdpResult | None = None
    counters: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def label(self) -> str:
        """``path/suite`` key used for ratios."""
        return f"{self.path}/{self.suite}"

    @property
    def tcp_median(self) -> float | None:
        """Median receiver Mbit/s over the TCP runs."""
        return statistics.median(r.mbps for r in self.tcp) if self.tcp else None

    @property
    def tcp_retransmits(self) -> float | None:
        """Median TCP retransmits per run (ESP packets the tunnel dropped, mostly)."""
        values = [r.retransmits for r in self.tcp if r.retransmits is not None]
        return statistics.median(values) if values else None

    @property
    def rcvbuf_drops(self) -> int | None:
        """UDP receive-buffer overflows in both namespaces over all TCP runs."""
        kernel = self.counters.get("kernel_during_tcp")
        if not kernel:
            return None
        return sum(int(side.get("UdpRcvbufErrors", 0)) for side in kernel.values())

    @property
    def fragments(self) -> int:
        """Outer IP fragments created or reassembled during the TCP runs (should be 0)."""
        kernel = self.counters.get("kernel_during_tcp") or {}
        return sum(
            int(side.get(k, 0))
            for side in kernel.values()
            for k in ("IpFragCreates", "IpReasmReqds")
        )

    @property
    def tcp_cpu_pct(self) -> float | None:
        """Median CPU of the tunnel processes during TCP, percent of one core."""
        values = [r.cpu.proc_pct for r in self.tcp if r.cpu and r.cpu.proc_cpu_s > 0]
        return statistics.median(values) if values else None

    @property
    def mbps_per_core(self) -> float | None:
        """TCP Mbit/s per core of tunnel CPU: throughput with the 2-core contention removed."""
        cpu, mbps = self.tcp_cpu_pct, self.tcp_median
        return mbps / (cpu / 100) if cpu and mbps is not None else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        median, cpu, per_core = self.tcp_median, self.tcp_cpu_pct, self.mbps_per_core
        return {
            "path": self.path,
            "suite": self.suite,
            "inner_mtu": self.mtu,
            "tcp_median_mbps": round(median, 1) if median is not None else None,
            "tcp_runs_mbps": [round(r.mbps, 1) for r in self.tcp],
            "tcp_median_retransmits": self.tcp_retransmits,
            "tcp_rcvbuf_drops": self.rcvbuf_drops,
            "tcp_outer_fragments": self.fragments,
            "tcp_tunnel_cpu_pct": round(cpu, 1) if cpu is not None else None,
            "tcp_mbps_per_tunnel_core": round(per_core, 1) if per_core is not None else None,
            "tcp": [r.as_dict() for r in self.tcp],
            "udp": self.udp.as_dict() if self.udp else None,
            "counters": self.counters,
            "error": self.error,
        }


@dataclass
class Settings:
    """What one invocation measures (from the command line)."""

    runs: int
    tcp_seconds: float
    udp_seconds: float
    udp_length: int
    suites: Sequence[str]
    inner_mtu: int
    outpost_native_mtu: bool
    strongswan: bool
    pause: float
    python: str
    workdir: Path


def log(message: str) -> None:
    """Progress line on stderr, so stdout stays the result table."""
    print(f"[tunnel] {message}", file=sys.stderr, flush=True)


#: kernel counters read in both namespaces around the measurements
KERNEL_COUNTERS: Final = ("IpFragCreates", "IpReasmReqds", "UdpRcvbufErrors", "UdpSndbufErrors")


def _kernel_counters(pair: NamespacePair) -> dict[str, dict[str, int]]:
    """Absolute :data:`KERNEL_COUNTERS` per side."""
    return {side: pair.ip_stat(pair.ns(side), *KERNEL_COUNTERS) for side in ("a", "b")}


def _delta(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    return {
        side: {k: v - before[side].get(k, 0) for k, v in values.items()}
        for side, values in after.items()
    }


def measure(
    pair: NamespacePair,
    iperf: Iperf3,
    result: PathResult,
    settings: Settings,
    pids: Sequence[int],
) -> None:
    """The TCP runs and the UDP flood on one path, each CPU-metered over ``pids``.

    Kernel counters are kept for the TCP runs: outer IP fragments (a tunnel
    MTU that is too large makes every big packet two, quietly halving the
    figures) and UDP socket buffer overflows (where a tunnel drops ESP
    packets it was too slow to read: the usual cause of TCP retransmits here).
    The UDP flood is left out of them: iperf3's own socket overflows there.
    """
    before = _kernel_counters(pair)
    for i in range(settings.runs):
        tcp = iperf.tcp(settings.tcp_seconds, cpu=CpuMeter(pids))
        result.tcp.append(tcp)
        cpu = f", tunnel CPU {tcp.cpu.proc_pct:.0f}%" if tcp.cpu and pids else ""
        log(
            f"{result.label} TCP run {i + 1}/{settings.runs}: {tcp.mbps:.1f} Mbit/s "
            f"(retransmits {tcp.retransmits}{cpu})"
        )
        time.sleep(settings.pause)
    result.counters["kernel_during_tcp"] = _delta(before, _kernel_counters(pair))
    udp = iperf.udp(settings.udp_seconds, settings.udp_length, cpu=CpuMeter(pids))
    result.udp = udp
    log(
        f"{result.label} UDP {udp.length} B: received {udp.received_pps:,.0f} pps "
        f"(sent {udp.sent_pps:,.0f} pps, loss {udp.loss_pct:.1f}%)"
    )
    time.sleep(settings.pause)


def run_plain(pair: NamespacePair, settings: Settings) -> PathResult:
    """The veth link itself, outer address to outer address."""
    result = PathResult("plain", "-", mtu=pair.mtu)
    measure(pair, Iperf3(pair.ns_a, pair.ns_b, pair.ip_b), result, settings, [])
    return result


def _wait_link_gone(ns: str, dev: str, timeout: float = 5.0) -> None:
    """Wait until a TUN device disappears (its owner closed it on exit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run(["ip", "-n", ns, "link", "show", dev], check=False).returncode != 0:
            return
        time.sleep(0.1)
    raise LabError(f"{dev} still present in {ns} after its tunnel stopped")


def run_outpost(pair: NamespacePair, suite: str, settings: Settings) -> PathResult:
    """Outpost's manually keyed data plane on both ends, fresh random keys."""
    result = PathResult("outpost", suite)
    key_a_in = secrets.token_hex(KEYMAT_LEN[suite])
    key_b_in = secrets.token_hex(KEYMAT_LEN[suite])
    sides = mirrored_sides(
        pair,
        inner_a=INNER_A,
        inner_b=INNER_B,
        spi_a_in=SPI_A_IN,
        spi_b_in=SPI_B_IN,
        key_a_in=key_a_in,
        key_b_in=key_b_in,
    )
    tunnels = [
        OutpostManualTunnel(
            side, python=settings.python, cwd=REPO, suite=suite, log_dir=settings.workdir
        )
        for side in sides
    ]
    try:
        for tunnel in tunnels:
            tunnel.start()
        for tunnel in tunnels:
            ready = tunnel.wait_ready()
            result.counters.setdefault("ready", []).append(ready)
            mtu = int(ready["tun_mtu"])
            if not settings.outpost_native_mtu and settings.inner_mtu < mtu:
                mtu = settings.inner_mtu
                set_mtu(tunnel.side.ns, tunnel.tun, mtu)
            result.mtu = mtu
        ping(pair.ns_a, INNER_B)
        pids = [t.pid for t in tunnels]
        measure(pair, Iperf3(pair.ns_a, pair.ns_b, INNER_B), result, settings, pids)
        for tunnel in tunnels:
            if not tunnel.alive():
                raise LabError(f"Outpost data plane in {tunnel.side.ns} died during the run")
    finally:
        for tunnel, name in zip(tunnels, ("a", "b"), strict=True):
            stopped = tunnel.stop()
            if stopped is not None:
                result.counters[name] = {k: stopped.get(k) for k in ("inbound", "outbound")}
        for tunnel in tunnels:
            with contextlib.suppress(LabError):
                _wait_link_gone(tunnel.side.ns, tunnel.tun)
    inbound_b = result.counters.get("b", {}).get("inbound") or {}
    if not inbound_b.get("packets"):
        raise LabError("Outpost counters show no ESP packets received by B")
    return result


def run_strongswan(pair: NamespacePair, suite: str, settings: Settings) -> PathResult:
    """strongSwan kernel-libipsec host-to-host tunnel, same inner addresses."""
    mtu = min(settings.inner_mtu, LIBIPSEC_MAX_MTU)
    result = PathResult("strongswan", suite, mtu=mtu)
    workdir = settings.workdir / f"strongswan-{suite}"
    with SwanTunnel(
        pair,
        suite=suite,
        inner_a=INNER_A,
        inner_b=INNER_B,
        tun_mtu=mtu,
        workdir=workdir,
        psk=secrets.token_hex(24),
    ) as tunnel:
        measure(pair, Iperf3(pair.ns_a, pair.ns_b, INNER_B), result, settings, tunnel.pids)
        for name, swan in (("a", tunnel.a), ("b", tunnel.b)):
            result.counters[name] = vars(swan.child_counters())
    if not result.counters["b"]["in_packets"]:
        raise LabError("strongSwan counters show no ESP packets received by B")
    return result


def guarded(
    results: list[PathResult], path: str, suite: str, step: Callable[[], PathResult]
) -> None:
    """Run one path; a failure is recorded and reported, and the others still run."""
    log(f"--- {path} {suite}")
    try:
        results.append(step())
    except LabError as error:
        log(f"{path} {suite} FAILED: {error}")
        results.append(PathResult(path, suite, error=str(error)))


def ratios(results: Sequence[PathResult]) -> dict[str, dict[str, float | None]]:
    """outpost/strongswan and outpost/plain per suite, for TCP and UDP packets/s."""
    by_label = {r.label: r for r in results if r.error is None}
    plain = by_label.get("plain/-")

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    out: dict[str, dict[str, float | None]] = {}
    for r in results:
        if r.path != "outpost" or r.error is not None:
            continue
        swan = by_label.get(f"strongswan/{r.suite}")
        udp = r.udp.received_pps if r.udp else None
        out[r.suite] = {
            "outpost_over_strongswan_tcp": ratio(r.tcp_median, swan.tcp_median if swan else None),
            "outpost_over_strongswan_udp_pps": ratio(
                udp, swan.udp.received_pps if swan and swan.udp else None
            ),
            "outpost_over_strongswan_mbps_per_core": ratio(
                r.mbps_per_core, swan.mbps_per_core if swan else None
            ),
            "outpost_over_plain_tcp": ratio(r.tcp_median, plain.tcp_median if plain else None),
            "outpost_over_plain_udp_pps": ratio(
                udp, plain.udp.received_pps if plain and plain.udp else None
            ),
        }
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_table(
    results: Sequence[PathResult], quotients: dict[str, dict[str, float | None]]
) -> str:
    """The human-readable report: one row per path, then the ratios."""
    header = (
        f"{'path':<11} {'suite':<17} {'MTU':>5} {'TCP Mbit/s':>10}  {'runs':<22}"
        f" {'retr':>6} {'rcvbuf':>7} {'tun CPU%':>8} {'Mbit/s/core':>11}"
        f" {'UDP rx pps':>10} {'loss%':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        if r.error is not None:
            lines.append(f"{r.path:<11} {r.suite:<17} FAILED: {r.error.splitlines()[0][:80]}")
            continue
        runs = " ".join(f"{t.mbps:.0f}" for t in r.tcp)
        lines.append(
            f"{r.path:<11} {r.suite:<17} {_fmt(r.mtu, 'd'):>5} {_fmt(r.tcp_median, '.1f'):>10}"
            f"  {runs:<22} {_fmt(r.tcp_retransmits, '.0f'):>6} {_fmt(r.rcvbuf_drops, 'd'):>7}"
            f" {_fmt(r.tcp_cpu_pct, '.0f'):>8} {_fmt(r.mbps_per_core, '.0f'):>11}"
            f" {_fmt(r.udp.received_pps if r.udp else None, ',.0f'):>10}"
            f" {_fmt(r.udp.loss_pct if r.udp else None, '.1f'):>6}"
        )
    for r in results:
        if r.error is None and r.fragments:
            lines.append(f"WARNING: {r.label}: {r.fragments} outer IP fragments (MTU too large)")
    lines.append("")
    lines.append("Ratios in this run (TCP: median Mbit/s; UDP: received packets/s):")
    for suite, q in quotients.items():
        lines.append(
            f"  {suite:<17} outpost/strongswan TCP {_fmt(q['outpost_over_strongswan_tcp'], '.2f')}"
            f" (target >= 1.0), UDP {_fmt(q['outpost_over_strongswan_udp_pps'], '.2f')},"
            f" Mbit/s per core {_fmt(q['outpost_over_strongswan_mbps_per_core'], '.2f')};"
            f" outpost/plain TCP {_fmt(q['outpost_over_plain_tcp'], '.3f')},"
            f" UDP {_fmt(q['outpost_over_plain_udp_pps'], '.3f')}"
        )
    lines += [
        "",
        "retr: median TCP retransmits per run. rcvbuf: UDP receive-buffer drops over all TCP",
        "runs (ESP packets a tunnel end read too slowly). tun CPU%: tunnel processes on both",
        "ends during TCP, 100 = one core. Plain TCP uses 64 KB GSO segments: a ceiling only.",
    ]
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """Versions and machine facts stored next to the figures."""

    def first_line(cmd: list[str]) -> str | None:
        with contextlib.suppress(LabError, OSError):
            out = run(cmd, timeout=10, check=False)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        return None

    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "iperf3": first_line(["iperf3", "--version"]),
        "strongswan": first_line([CHARON, "--version"]),
        "git": first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command line; ``--quick`` is the one-minute smoke run."""
    parser = argparse.ArgumentParser(
        description="Plain veth vs Outpost vs strongSwan (kernel-libipsec) in one run."
    )
    parser.add_argument("--quick", action="store_true", help="1 run of 3 s each (about a minute)")
    parser.add_argument("--runs", type=int, help="TCP runs per path (default 3, quick 1)")
    parser.add_argument("--tcp-seconds", type=float, help="seconds per TCP run (default 10)")
    parser.add_argument("--udp-seconds", type=float, help="seconds of UDP flood (default 5)")
    parser.add_argument("--udp-length", type=int, default=64, help="UDP payload bytes")
    parser.add_argument("--suites", default=",".join(DEFAULT_SUITES), help="comma-separated")
    parser.add_argument(
        "--inner-mtu",
        type=int,
        default=LIBIPSEC_MAX_MTU,
        help="TUN MTU for both tunnels (strongSwan is capped at 1400)",
    )
    parser.add_argument(
        "--outpost-native-mtu",
        action="store_true",
        help="leave Outpost's TUN at the MTU it computes from the path (not like-for-like)",
    )
    parser.add_argument("--no-strongswan", action="store_true", help="skip strongSwan")
    parser.add_argument("--output", type=Path, default=RESULTS, help="JSON results file")
    parser.add_argument("--keep-logs", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--python",
        default=str(REPO / ".venv" / "bin" / "python")
        if (REPO / ".venv" / "bin" / "python").exists()
        else sys.executable,
        help="interpreter that runs common.dataplane.manual",
    )
    args = parser.parse_args(argv)
    for suite in args.suites.split(","):
        if suite not in KEYMAT_LEN:
            parser.error(f"unsupported suite {suite!r}; choose from {', '.join(KEYMAT_LEN)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run every path, print the table, write the JSON; non-zero if a path failed."""
    args = parse_args(argv)
    tools = ["ip", "ss", "ping", "iperf3"]
    if not args.no_strongswan:
        tools += ["unshare", "mount", "swanctl", CHARON]
    try:
        require_tools(*tools)
    except LabError as error:
        print(f"tunnel.py: {error}", file=sys.stderr)
        return 2
    install_signal_handlers()
    for stale in remove_stale_namespaces(NS_PREFIX):
        log(f"removed stale namespace {stale} from an earlier interrupted run")

    workdir = Path(tempfile.mkdtemp(prefix="obtun-bench-"))
    settings = Settings(
        runs=args.runs or (1 if args.quick else 3),
        tcp_seconds=args.tcp_seconds or (3 if args.quick else 10),
        udp_seconds=args.udp_seconds or (3 if args.quick else 5),
        udp_length=args.udp_length,
        suites=args.suites.split(","),
        inner_mtu=args.inner_mtu,
        outpost_native_mtu=args.outpost_native_mtu,
        strongswan=not args.no_strongswan,
        pause=0.5 if args.quick else 1.0,
        python=args.python,
        workdir=workdir,
    )
    results: list[PathResult] = []
    started = time.monotonic()
    interrupted = False
    try:
        with NamespacePair(prefix=NS_PREFIX) as pair:
            log(f"namespaces {pair.ns_a} ({pair.addr_a}) <-> {pair.ns_b} ({pair.addr_b})")
            guarded(results, "plain", "-", partial(run_plain, pair, settings))
            # each Outpost suite right next to its strongSwan twin: drift in the
            # machine's load between them is as small as it can be
            for suite in settings.suites:
                guarded(results, "outpost", suite, partial(run_outpost, pair, suite, settings))
                if settings.strongswan:
                    step = partial(run_strongswan, pair, suite, settings)
                    guarded(results, "strongswan", suite, step)
    except KeyboardInterrupt as stop:
        interrupted = True
        log(f"interrupted ({stop or 'Ctrl-C'}): cleaning up")
    except LabError as error:
        log(f"lab setup failed: {error}")
        results.append(PathResult("lab", "-", error=str(error)))
    finally:
        CLEANUP.run_all()

    quotients = ratios(results)
    print(render_table(results, quotients))
    report = {
        "settings": {
            "runs": settings.runs,
            "tcp_seconds": settings.tcp_seconds,
            "udp_seconds": settings.udp_seconds,
            "udp_length": settings.udp_length,
            "inner_mtu": settings.inner_mtu,
            "outpost_native_mtu": settings.outpost_native_mtu,
            "quick": args.quick,
            "interrupted": interrupted,
        },
        "environment": environment(),
        "duration_s": round(time.monotonic() - started, 1),
        "results": [r.as_dict() for r in results],
        "ratios": quotients,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    log(f"results written to {args.output} ({report['duration_s']} s)")

    failed = interrupted or any(r.error for r in results)
    if args.keep_logs or failed:
        log(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if interrupted:
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
