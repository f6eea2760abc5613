"""iperf3 runs between two namespaces, and their results parsed from ``iperf3 -J``.

TCP reports receiver throughput, the figure that counts; the UDP flood
reports what the sender pushed and what arrived. Either run can be metered
with :class:`~netlab.cpu.CpuMeter` over exactly the client's lifetime.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from netlab.cpu import CpuMeter, CpuSample
from netlab.netns import ns_cmd
from netlab.process import CLEANUP, LabError, run, stop_process

IPERF3_PORT: Final = 5201


@dataclass
class TcpResult:
    """One iperf3 TCP run; receiver throughput is the figure that counts."""

    mbps: float
    sender_mbps: float
    retransmits: int | None
    seconds: float
    cpu: CpuSample | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "mbps": round(self.mbps, 1),
            "sender_mbps": round(self.sender_mbps, 1),
            "retransmits": self.retransmits,
            "seconds": round(self.seconds, 2),
            "cpu": self.cpu.as_dict() if self.cpu else None,
        }


@dataclass
class UdpResult:
    """One iperf3 UDP flood: what the sender pushed and what arrived."""

    length: int
    sent_packets: int
    received_packets: int
    sent_pps: float
    received_pps: float
    loss_pct: float
    cpu: CpuSample | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "length": self.length,
            "sent_packets": self.sent_packets,
            "received_packets": self.received_packets,
            "sent_pps": round(self.sent_pps),
            "received_pps": round(self.received_pps),
            "loss_pct": round(self.loss_pct, 2),
            "cpu": self.cpu.as_dict() if self.cpu else None,
        }


def parse_iperf3_tcp(report: dict[str, Any]) -> TcpResult:
    """Receiver-side throughput from an ``iperf3 -J`` TCP client report."""
    end = report["end"]
    received, sent = end["sum_received"], end["sum_sent"]
    return TcpResult(
        mbps=received["bits_per_second"] / 1e6,
        sender_mbps=sent["bits_per_second"] / 1e6,
        retransmits=sent.get("retransmits"),
        seconds=received["seconds"],
    )


def parse_iperf3_udp(report: dict[str, Any], length: int) -> UdpResult:
    """Received packets/s from an ``iperf3 -J -u`` client report.

    iperf3 3.12's ``sum_received.packets`` counts the highest sequence seen,
    lost ones included, so arrivals are ``packets - lost_packets``. The
    receiver interval includes the drain tail, so its rate is slightly
    conservative, the same way for every path.
    """
    end = report["end"]
    sent, received = end["sum_sent"], end["sum_received"]
    arrived = int(received["packets"]) - int(received["lost_packets"])
    sent_packets = int(sent["packets"])
    return UdpResult(
        length=length,
        sent_packets=sent_packets,
        received_packets=arrived,
        sent_pps=sent_packets / sent["seconds"] if sent["seconds"] else 0.0,
        received_pps=arrived / received["seconds"] if received["seconds"] else 0.0,
        loss_pct=100.0 * (1 - arrived / sent_packets) if sent_packets else 100.0,
    )


@dataclass
class Iperf3:
    """iperf3 from ``client_ns`` to a one-shot server on ``server_addr`` in ``server_ns``.

    A fresh ``iperf3 -s -1`` per run: a server left "busy" by an aborted flood
    cannot spoil the next measurement, and nothing outlives the run.
    """

    client_ns: str
    server_ns: str
    server_addr: str
    port: int = IPERF3_PORT
    connect_timeout_ms: int = 5000

    @contextlib.contextmanager
    def _server(self) -> Iterator[None]:
        server = subprocess.Popen(
            ns_cmd(
                self.server_ns, "iperf3", "-s", "-1", "-B", self.server_addr, "-p", str(self.port)
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        undo = CLEANUP.push("iperf3 server", lambda: stop_process(server))
        try:
            self._wait_listening(server)
            yield
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(5)  # a one-off server exits by itself after the test
        finally:
            undo()

    def _wait_listening(self, server: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if server.poll() is not None:
                err = server.stderr.read() if server.stderr else ""
                raise LabError(f"iperf3 server in {self.server_ns} exited: {err.strip()}")
            out = run(
                ns_cmd(self.server_ns, "ss", "-Hltn", f"sport = :{self.port}"), timeout=5
            ).stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise LabError(f"iperf3 server in {self.server_ns} did not start listening")

    def _client(self, seconds: float, extra: Sequence[str], cpu: CpuMeter | None) -> dict[str, Any]:
        cmd = ns_cmd(
            self.client_ns,
            "iperf3",
            "-c",
            self.server_addr,
            "-p",
            str(self.port),
            "-t",
            f"{seconds:g}",
            "-J",
            "--connect-timeout",
            str(self.connect_timeout_ms),
            *extra,
        )
        with self._server():
            if cpu:
                cpu.start()
            result = run(cmd, timeout=seconds + 40, check=False)
        try:
            report: dict[str, Any] = json.loads(result.stdout)
        except json.JSONDecodeError as error:
            raise LabError(
                f"iperf3 gave no JSON (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-500:]}"
            ) from error
        if "error" in report:
            raise LabError(f"iperf3 to {self.server_addr}: {report['error']}")
        return report

    def tcp(self, seconds: float, cpu: CpuMeter | None = None) -> TcpResult:
        """One TCP stream for ``seconds``; optionally meter the tunnel's CPU."""
        report = self._client(seconds, [], cpu)
        sample = cpu.stop() if cpu else None
        result = parse_iperf3_tcp(report)
        result.cpu = sample
        return result

    def udp(
        self, seconds: float, length: int = 64, bitrate: str = "0", cpu: CpuMeter | None = None
    ) -> UdpResult:
        """An unthrottled (``-b 0``) UDP flood of ``length``-byte payloads."""
        report = self._client(seconds, ["-u", "-b", bitrate, "-l", str(length)], cpu)
        sample = cpu.stop() if cpu else None
        result = parse_iperf3_udp(report, length)
        result.cpu = sample
        return result
