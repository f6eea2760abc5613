"""Network-namespace lab pieces shared by Outpost's benchmarks.

Benchmarks must compare Outpost with a plain link and with strongSwan on the
same machine, in the same run, because absolute figures on a shared 2-core VM
swing by tens of percent from one minute to the next: only ratios measured
side by side mean anything. This module holds what every such benchmark needs:

- :class:`NamespacePair`: two network namespaces joined by a veth pair, torn
  down (processes killed, namespaces deleted) on every exit path;
- :class:`Iperf3`: one-shot iperf3 TCP and UDP runs parsed from ``iperf3 -J``;
- :class:`CpuMeter`: CPU seconds of a set of process trees from ``/proc``, so a
  throughput figure can be read together with what it cost;
- :class:`OutpostManualTunnel`: Outpost's manually keyed data plane
  (``python -m common.dataplane.manual``) as a managed subprocess;
- :class:`StrongSwan` and :class:`SwanTunnel`: charon 5.9.8 with its userspace
  ESP (kernel-libipsec) inside a namespace, configured from Python strings.

It is deliberately self-contained (standard library and external programs
only) so it runs before the project's own packages import, and it never
touches the host's interfaces or routes: everything lives in namespaces that
it creates and removes itself.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final

CHARON: Final = "/usr/lib/ipsec/charon"
IPERF3_PORT: Final = 5201
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")

#: Debian package that provides each external program, for error messages.
TOOL_PACKAGES: Final[dict[str, str]] = {
    "ip": "iproute2",
    "ss": "iproute2",
    "iperf3": "iperf3",
    "unshare": "util-linux",
    "mount": "mount",
    "swanctl": "strongswan-swanctl",
    CHARON: "strongswan-charon (and libcharon-extra-plugins for kernel-libipsec)",
    "ping": "iputils-ping",
}


class LabError(RuntimeError):
    """A lab step failed; the message says which command and why."""


class ToolMissingError(LabError):
    """An external program the benchmark needs is not installed."""


def require_tools(*tools: str) -> None:
    """Fail early, naming the Debian package, instead of half-way into a run."""
    missing = []
    for tool in tools:
        found = os.access(tool, os.X_OK) if tool.startswith("/") else shutil.which(tool)
        if not found:
            missing.append(f"{tool} (apt-get install {TOOL_PACKAGES.get(tool, tool)})")
    if missing:
        raise ToolMissingError("missing tools: " + "; ".join(missing))
    if os.geteuid() != 0:
        raise LabError("network namespaces need root: run as root")


def run(
    cmd: Sequence[str], *, timeout: float = 15.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command with a timeout; on failure raise :class:`LabError` with its stderr.

    Every external call goes through here so that no step can hang a benchmark
    forever and every failure names the command that caused it.
    """
    try:
        result = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise LabError(f"timed out after {timeout:g}s: {shlex.join(cmd)}") from error
    except FileNotFoundError as error:
        raise ToolMissingError(f"{cmd[0]} not found ({shlex.join(cmd)})") from error
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-800:]
        raise LabError(f"exit {result.returncode}: {shlex.join(cmd)}\n{detail}")
    return result


def ns_cmd(ns: str, *cmd: str) -> list[str]:
    """The argv that runs ``cmd`` inside network namespace ``ns``."""
    return ["ip", "netns", "exec", ns, *cmd]


# --------------------------------------------------------------------------
# cleanup on every exit path


class Cleanup:
    """LIFO cleanup callbacks, run once, from ``finally``, atexit or a signal.

    A benchmark killed half-way must not leave namespaces, charon or iperf3
    behind (they would hold port 4500 and confuse the next run), so every
    resource registers its undo here as soon as it exists.
    """

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], object]]] = []
        self._lock = threading.Lock()
        atexit.register(self.run_all)

    def push(self, label: str, action: Callable[[], object]) -> Callable[[], None]:
        """Register ``action``; returns a callable that runs it now and forgets it."""
        entry = (label, action)
        with self._lock:
            self._actions.append(entry)

        def run_now() -> None:
            with self._lock:
                if entry not in self._actions:
                    return
                self._actions.remove(entry)
            action()

        return run_now

    def run_all(self) -> None:
        """Undo everything still registered, newest first; never raises."""
        while True:
            with self._lock:
                if not self._actions:
                    return
                label, action = self._actions.pop()
            try:
                action()
            except Exception as error:  # cleanup must go on whatever failed
                print(f"netlab: cleanup of {label} failed: {error}", flush=True)


CLEANUP: Final = Cleanup()


def install_signal_handlers() -> None:
    """Turn SIGINT/SIGTERM/SIGHUP into KeyboardInterrupt so ``finally`` blocks clean up.

    Without this a plain ``kill`` of the benchmark would skip every ``finally``
    and leak namespaces; SIGINT is set explicitly because a shell starts
    background jobs with it ignored, and Python then leaves it ignored.
    """

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def stop_process(
    proc: subprocess.Popen[Any], *, sig: int = signal.SIGTERM, timeout: float = 5.0
) -> int | None:
    """Signal one child we started, wait for it, SIGKILL it if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)
    return proc.returncode


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_pids(pids: Sequence[int], *, timeout: float = 3.0) -> None:
    """SIGTERM the given pids, then SIGKILL those still alive after ``timeout``."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------
# namespaces


def netns_list() -> list[str]:
    """Names of the existing network namespaces."""
    out = run(["ip", "netns", "list"], timeout=10).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def netns_pids(ns: str) -> list[int]:
    """Pids of processes whose network namespace is ``ns`` (all started by us)."""
    out = run(["ip", "netns", "pids", ns], timeout=10, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def delete_netns(ns: str) -> None:
    """Kill what runs in ``ns`` (only processes we started live there), then delete it.

    ``ip netns del`` alone leaves processes running in the orphaned namespace,
    still holding their sockets; they must go first.
    """
    pids = netns_pids(ns)
    if pids:
        kill_pids(pids)
    run(["ip", "netns", "del", ns], timeout=15, check=False)


def remove_stale_namespaces(prefix: str) -> list[str]:
    """Delete ``<prefix><pid>-*`` namespaces whose creating process is gone.

    Only names of the exact form this module gives are touched, so namespaces
    of other tools (and of a concurrently running copy) are left alone.
    """
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)-[a-z]$")
    removed = []
    for ns in netns_list():
        match = pattern.match(ns)
        if match and not _pid_alive(int(match.group(1))):
            delete_netns(ns)
            removed.append(ns)
    return removed


@dataclass
class NamespacePair:
    """Two namespaces A and B joined by one veth pair: the "internet" link.

    Names embed our pid (``<prefix><pid>-a``) so concurrent runs and other
    tools' fixed names (rw/gw/lan) never collide. Reverse-path filtering is
    off inside both namespaces because tunnel devices make routes asymmetric.
    """

    prefix: str = "obtun"
    addr_a: str = "192.0.2.1/24"
    addr_b: str = "192.0.2.2/24"
    mtu: int = 1500
    ns_a: str = field(init=False)
    ns_b: str = field(init=False)
    veth_a: str = field(init=False)
    veth_b: str = field(init=False)
    _undo: Callable[[], None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        pid = os.getpid()
        self.ns_a, self.ns_b = f"{self.prefix}{pid}-a", f"{self.prefix}{pid}-b"
        # interface names are limited to 15 characters
        self.veth_a, self.veth_b = f"{self.prefix}{pid}a"[:15], f"{self.prefix}{pid}b"[:15]

    @property
    def ip_a(self) -> str:
        """A's outer address without prefix length."""
        return self.addr_a.split("/")[0]

    @property
    def ip_b(self) -> str:
        """B's outer address without prefix length."""
        return self.addr_b.split("/")[0]

    def up(self) -> NamespacePair:
        """Create both namespaces and the veth link; undone by :meth:`down`."""
        self._undo = CLEANUP.push(f"namespaces {self.ns_a}/{self.ns_b}", self._teardown)
        for ns in (self.ns_a, self.ns_b):
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            for key in ("all", "default"):
                run(ns_cmd(ns, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0"))
        # create the veth inside A directly: the host namespace never sees it
        run(
            [
                *("ip", "-n", self.ns_a, "link", "add", self.veth_a, "mtu", str(self.mtu)),
                *("type", "veth", "peer", "name", self.veth_b, "netns", self.ns_b),
            ]
        )
        for ns, dev, addr in (
            (self.ns_a, self.veth_a, self.addr_a),
            (self.ns_b, self.veth_b, self.addr_b),
        ):
            run(["ip", "-n", ns, "link", "set", dev, "mtu", str(self.mtu)])
            run(["ip", "-n", ns, "addr", "add", addr, "dev", dev])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
        run(ns_cmd(self.ns_a, "ping", "-c", "1", "-W", "2", self.ip_b), timeout=10)
        return self

    def _teardown(self) -> None:
        existing = set(netns_list())
        for ns in (self.ns_a, self.ns_b):
            if ns in existing:
                delete_netns(ns)

    def down(self) -> None:
        """Kill everything left in the namespaces and delete them (idempotent)."""
        if self._undo is not None:
            self._undo()
            self._undo = None

    def __enter__(self) -> NamespacePair:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *_exc: object) -> None:
        self.down()

    def ns(self, side: str) -> str:
        """Namespace name for side ``"a"`` or ``"b"``."""
        return {"a": self.ns_a, "b": self.ns_b}[side]

    def addr(self, ns: str, address: str, dev: str = "lo", *, add: bool = True) -> None:
        """Add (or delete) an address inside one of our namespaces."""
        run(["ip", "-n", ns, "addr", "add" if add else "del", address, "dev", dev], check=add)

    def ip_stat(self, ns: str, *counters: str) -> dict[str, int]:
        """Kernel SNMP counters (``IpFragCreates``, ``UdpRcvbufErrors``...) inside ``ns``.

        Read from ``/proc/net/snmp`` as seen from inside the namespace; unlike
        ``nstat`` this leaves no history file behind for other users to trip on.
        """
        text = run(ns_cmd(ns, "cat", "/proc/net/snmp"), timeout=10).stdout
        return {k: v for k, v in parse_snmp(text).items() if not counters or k in counters}


def parse_snmp(text: str) -> dict[str, int]:
    """``/proc/net/snmp`` (header line, value line per protocol) as ``{"IpFragCreates": n}``."""
    values: dict[str, int] = {}
    lines = text.splitlines()
    for header, data in zip(lines[::2], lines[1::2], strict=False):
        proto, _, names = header.partition(":")
        _, _, numbers = data.partition(":")
        for name, number in zip(names.split(), numbers.split(), strict=False):
            values[proto + name] = int(number)
    return values


# --------------------------------------------------------------------------
# CPU accounting


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, utime+stime seconds of the whole thread group) from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is state (field 3): ppid is field 4, utime/stime fields 14/15
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_tree(roots: Sequence[int]) -> list[int]:
    """``roots`` and all their live descendants (the data plane forks workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry))
    found: list[int] = []
    todo = [r for r in roots if _pid_alive(r)]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.append(pid)
            todo.extend(children.get(pid, ()))
    return found


def _machine_times() -> tuple[float, float]:
    """(total, idle) CPU seconds of the whole machine since boot."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values) / CLK_TCK, (values[3] + values[4]) / CLK_TCK


@dataclass
class CpuSample:
    """CPU used by the measured processes and by the machine over one interval."""

    wall_s: float
    proc_cpu_s: float
    machine_busy_cores: float

    @property
    def proc_pct(self) -> float:
        """Measured processes' CPU in percent of one core."""
        return 100.0 * self.proc_cpu_s / self.wall_s if self.wall_s else 0.0

    def as_dict(self) -> dict[str, float]:
        """JSON-friendly form."""
        return {
            "wall_s": round(self.wall_s, 2),
            "proc_cpu_s": round(self.proc_cpu_s, 2),
            "proc_pct_of_one_core": round(self.proc_pct, 1),
            "machine_busy_cores": round(self.machine_busy_cores, 2),
        }


class CpuMeter:
    """Measures utime+stime of process trees between :meth:`start` and :meth:`stop`.

    ``/proc/<pid>/stat`` of a process already includes its exited threads;
    the tree is re-read at each end so workers spawned meanwhile count too
    (a worker that both starts and exits inside the interval is missed, which
    does not happen with long-lived tunnel processes).
    """

    def __init__(self, roots: Sequence[int]) -> None:
        self.roots = list(roots)
        self._start: tuple[dict[int, float], float, float, float] | None = None

    def _snapshot(self) -> tuple[dict[int, float], float, float, float]:
        per_pid: dict[int, float] = {}
        for pid in process_tree(self.roots):
            stat = _proc_stat(pid)
            if stat is not None:
                per_pid[pid] = stat[1]
        total, idle = _machine_times()
        return per_pid, total, idle, time.monotonic()

    def start(self) -> None:
        """Take the "before" snapshot."""
        self._start = self._snapshot()

    def stop(self) -> CpuSample:
        """Take the "after" snapshot and return the difference."""
        if self._start is None:
            raise LabError("CpuMeter.stop() without start()")
        before, total_a, idle_a, t_a = self._start
        after, total_b, idle_b, t_b = self._snapshot()
        proc = sum(v - before.get(pid, 0.0) for pid, v in after.items())
        wall = t_b - t_a
        busy = (total_b - total_a) - (idle_b - idle_a)
        return CpuSample(wall, proc, busy / wall if wall else 0.0)


# --------------------------------------------------------------------------
# iperf3


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


# --------------------------------------------------------------------------
# Outpost's manually keyed data plane


class _LineReader:
    """Reads a child's stdout lines on a thread so waits can time out."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def next_event(self, event: str, timeout: float) -> dict[str, Any] | None:
        """The next JSON line whose ``event`` is ``event``; None on EOF or timeout."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            if line is None:
                return None
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and obj.get("event") in (event, "failed"):
                return obj
        return None


@dataclass
class OutpostSide:
    """Arguments of one end of a manually keyed Outpost tunnel."""

    ns: str
    address: str  # inner address/prefix on the TUN
    local: str
    peer: str
    spi_in: int
    spi_out: int
    key_in: str
    key_out: str
    remote_nets: Sequence[str]


class OutpostManualTunnel:
    """One ``python -m common.dataplane.manual`` process in a namespace.

    It prints ``{"event": "ready"}`` once its TUN and SA are up, and the final
    counters on SIGTERM; both are kept so a benchmark can prove the traffic
    really went through ESP.
    """

    def __init__(
        self,
        side: OutpostSide,
        *,
        python: str,
        cwd: Path,
        suite: str,
        tun: str = "otun0",
        log_dir: Path,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.side = side
        self.python, self.cwd, self.suite, self.tun = python, cwd, suite, tun
        self.extra_args = list(extra_args)
        self.stderr_path = log_dir / f"outpost-{side.ns}.stderr"
        self.proc: subprocess.Popen[str] | None = None
        self.ready: dict[str, Any] | None = None
        self.stopped: dict[str, Any] | None = None
        self._reader: _LineReader | None = None
        self._undo: Callable[[], None] | None = None

    def argv(self) -> list[str]:
        """The command line (keys included: this is a test tool on a lab host)."""
        s = self.side
        argv = [
            self.python,
            "-m",
            "common.dataplane.manual",
            "--tun",
            self.tun,
            "--address",
            s.address,
            "--local",
            s.local,
            "--peer",
            s.peer,
            "--spi-in",
            hex(s.spi_in),
            "--spi-out",
            hex(s.spi_out),
            "--key-in",
            s.key_in,
            "--key-out",
            s.key_out,
            "--suite",
            self.suite,
        ]
        for net in s.remote_nets:
            argv += ["--remote-net", net]
        return argv + self.extra_args

    def start(self) -> None:
        """Launch the process (call :meth:`wait_ready` afterwards)."""
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                ns_cmd(self.side.ns, *self.argv()),
                cwd=self.cwd,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                start_new_session=True,  # Ctrl-C reaches us, and we stop it in order
            )
        assert self.proc.stdout is not None
        self._reader = _LineReader(self.proc.stdout)
        proc = self.proc
        self._undo = CLEANUP.push(f"outpost in {self.side.ns}", lambda: stop_process(proc))

    def _stderr_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.stderr_path.read_text().strip()[-1500:]
        return ""

    def wait_ready(self, timeout: float = 20.0) -> dict[str, Any]:
        """Block until the ``ready`` line; raise with its stderr if it died instead."""
        assert self._reader is not None
        event = self._reader.next_event("ready", timeout)
        if event is None or event.get("event") != "ready":
            assert self.proc is not None
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(1)  # stdout closes a moment before the exit status exists
            code = self.proc.poll()
            state = f"exited with code {code}" if code is not None else f"no ready in {timeout:g}s"
            raise LabError(
                f"Outpost data plane in {self.side.ns} not ready ({event or state}):\n"
                f"{shlex.join(self.argv()[:3])} ...\n{self._stderr_tail()}"
            )
        self.ready = event
        return event

    @property
    def pid(self) -> int:
        """Pid of the runner (its workers are its children)."""
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the runner is still running."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """SIGTERM, collect the ``stopped`` counters, make sure it is gone."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self._reader is not None
            self.stopped = self._reader.next_event("stopped", timeout)
        if self._undo is not None:
            self._undo()
            self._undo = None
        return self.stopped


# --------------------------------------------------------------------------
# strongSwan (charon 5.9.8 + kernel-libipsec)

#: IKE and ESP proposals per suite name (Outpost and strongSwan share the names).
SWAN_PROPOSALS: Final[dict[str, tuple[str, str]]] = {
    "aes256gcm16": ("aes256gcm16-prfsha256-x25519", "aes256gcm16"),
    "aes128gcm16": ("aes128gcm16-prfsha256-x25519", "aes128gcm16"),
    "chacha20poly1305": ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305"),
}

# kernel-libipsec MUST precede kernel-netlink: otherwise the XFRM backend wins
# and installing the Child SA fails with ENOSYS on a kernel without ESP. The
# resolve plugin is left out so nothing writes the host's resolv.conf.
_SWAN_PLUGINS: Final = (
    "random nonce openssl aesni aes gcm chapoly sha1 sha2 hmac kdf pem pkcs1 pkcs8 x509 "
    "pubkey curve25519 gmp constraints revocation attr kernel-libipsec kernel-netlink "
    "socket-default vici"
)

_SWANCTL_SUBDIRS: Final = (
    *("x509", "x509ca", "x509ocsp", "x509aa", "x509ac", "x509crl", "pubkey"),
    *("rsa", "ecdsa", "bliss", "pkcs8", "pkcs12", "private", "conf.d"),
)


def strongswan_conf(workdir: Path, *, threads: int = 16) -> str:
    """strongswan.conf for one charon whose state all lives under ``workdir``."""
    return f"""\
# generated by bench/netlab.py: one charon inside one benchmark namespace
charon {{
    load = {_SWAN_PLUGINS}
    install_routes = yes
    install_virtual_ip = yes
    threads = {threads}
    plugins {{
        vici {{
            socket = unix://{workdir}/run/charon.vici
        }}
        kernel-libipsec {{
            allow_peer_ts = no
        }}
        socket-default {{
            use_ipv6 = no
        }}
    }}
    filelog {{
        bench {{
            path = {workdir}/charon.log
            time_format = %b %e %T
            append = no
            default = 1
            ike = 1
            knl = 1
            esp = 1
            flush_line = yes
        }}
    }}
    syslog {{
        daemon {{
            default = -1
        }}
        auth {{
            default = -1
        }}
    }}
}}
swanctl {{
    socket = unix://{workdir}/run/charon.vici
}}
"""


@dataclass
class SwanPeerConfig:
    """One end of a host-to-host strongSwan tunnel (PSK, ESP-in-UDP forced)."""

    local_addr: str
    remote_addr: str
    local_ts: str
    remote_ts: str
    local_id: str
    remote_id: str
    ike_proposal: str
    esp_proposal: str
    psk: str
    name: str = "bench"


def swanctl_conf(cfg: SwanPeerConfig) -> str:
    """swanctl.conf: one IKE SA and one tunnel-mode Child SA between two hosts.

    ``encap = yes`` makes charon fake a NAT so ESP travels in UDP 4500 as
    Outpost's always does; ``start_action = none`` leaves initiation to us.
    """
    return f"""\
# generated by bench/netlab.py
connections {{
    {cfg.name} {{
        version = 2
        local_addrs = {cfg.local_addr}
        remote_addrs = {cfg.remote_addr}
        proposals = {cfg.ike_proposal}
        encap = yes
        local {{
            auth = psk
            id = {cfg.local_id}
        }}
        remote {{
            auth = psk
            id = {cfg.remote_id}
        }}
        children {{
            {cfg.name} {{
                local_ts = {cfg.local_ts}
                remote_ts = {cfg.remote_ts}
                esp_proposals = {cfg.esp_proposal}
                mode = tunnel
                start_action = none
            }}
        }}
    }}
}}
secrets {{
    ike-{cfg.name} {{
        id-local = {cfg.local_id}
        id-remote = {cfg.remote_id}
        secret = "{cfg.psk}"
    }}
}}
"""


@dataclass
class SwanChildCounters:
    """Bytes/packets of the Child SA as ``swanctl --list-sas`` shows them."""

    in_bytes: int = 0
    in_packets: int = 0
    out_bytes: int = 0
    out_packets: int = 0


_SA_LINE: Final = re.compile(
    r"^\s*(in|out)\s+[0-9a-f]+(?:\s*\(-\|[^)]*\))?,\s+(\d+) bytes,\s+(\d+) packets", re.M
)


def parse_child_counters(list_sas: str) -> SwanChildCounters:
    """Sum the ``in``/``out`` counter lines of ``swanctl --list-sas`` output."""
    counters = SwanChildCounters()
    for direction, octets, packets in _SA_LINE.findall(list_sas):
        if direction == "in":
            counters.in_bytes += int(octets)
            counters.in_packets += int(packets)
        else:
            counters.out_bytes += int(octets)
            counters.out_packets += int(packets)
    return counters


class StrongSwan:
    """One charon in network namespace ``ns``, all its state under ``workdir``.

    charon 5.9.8 has ``/var/run/charon.pid`` compiled in, so two instances on
    one host collide; each runs in a private mount namespace with its own
    ``workdir/run`` bind-mounted on /run. ``ip netns exec`` and ``unshare``
    (without ``--fork``) both exec, and ``sh -c "... && exec charon"`` too, so
    the Popen pid is charon's own pid.
    """

    def __init__(self, ns: str, workdir: Path) -> None:
        self.ns = ns
        self.workdir = workdir
        self.conf = workdir / "strongswan.conf"
        self.swanctl_dir = workdir / "swanctl"
        self.vici = workdir / "run" / "charon.vici"
        self.proc: subprocess.Popen[bytes] | None = None
        self._undo: Callable[[], None] | None = None

    def write_config(self, peer: SwanPeerConfig) -> None:
        """Write strongswan.conf and swanctl/swanctl.conf into the work folder."""
        (self.workdir / "run").mkdir(parents=True, exist_ok=True)
        for sub in _SWANCTL_SUBDIRS:
            (self.swanctl_dir / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(strongswan_conf(self.workdir))
        swanctl = self.swanctl_dir / "swanctl.conf"
        swanctl.write_text(swanctl_conf(peer))
        swanctl.chmod(0o600)

    def start(self, timeout: float = 10.0) -> None:
        """Start charon and wait for its vici socket."""
        for stale in (self.vici, self.workdir / "run" / "charon.pid"):
            stale.unlink(missing_ok=True)
        inner = f"mount --bind {shlex.quote(str(self.workdir / 'run'))} /run && exec {CHARON}"
        with open(self.workdir / "charon.stdout", "wb") as out:
            self.proc = subprocess.Popen(
                ns_cmd(
                    self.ns,
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "env",
                    f"STRONGSWAN_CONF={self.conf}",
                    "sh",
                    "-c",
                    inner,
                ),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = self.proc
        self._undo = CLEANUP.push(f"charon in {self.ns}", lambda: stop_process(proc, timeout=8))
        deadline = time.monotonic() + timeout
        while not self.vici.is_socket():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"charon in {self.ns} did not start:\n{self.log_tail()}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        """charon's pid (see the class docstring for why it is the Popen pid)."""
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, chars: int = 2000) -> str:
        """The end of charon's stdout and log, for error messages."""
        parts = []
        for name in ("charon.stdout", "charon.log"):
            with contextlib.suppress(OSError):
                parts.append(f"--- {name}\n" + (self.workdir / name).read_text()[-chars:])
        return "\n".join(parts)

    def swanctl(self, command: str, *args: str, timeout: float = 30.0) -> str:
        """Run ``swanctl COMMAND --uri <our vici> ARGS`` and return its stdout."""
        cmd = ns_cmd(
            self.ns,
            "env",
            f"STRONGSWAN_CONF={self.conf}",
            f"SWANCTL_DIR={self.swanctl_dir}",
            "swanctl",
            command,
            "--uri",
            f"unix://{self.vici}",
            *args,
        )
        try:
            return run(cmd, timeout=timeout).stdout
        except LabError as error:
            raise LabError(f"{error}\n{self.log_tail()}") from error

    def load_all(self) -> None:
        """Load connections and secrets from our swanctl.conf."""
        self.swanctl("--load-all", "--file", str(self.swanctl_dir / "swanctl.conf"))

    def initiate(self, child: str, timeout: int = 20) -> None:
        """Bring the Child SA up (IKE_SA_INIT + IKE_AUTH) and wait for it."""
        self.swanctl(
            "--initiate", "--child", child, "--timeout", str(timeout), timeout=timeout + 10
        )

    def child_counters(self) -> SwanChildCounters:
        """Current ESP byte/packet counters of our Child SAs."""
        return parse_child_counters(self.swanctl("--list-sas", timeout=10))

    def tun_devices(self) -> list[str]:
        """kernel-libipsec's TUN devices (``ipsec0``...) in our namespace."""
        out = run(["ip", "-n", self.ns, "-o", "link", "show"], timeout=10).stdout
        return re.findall(r"^\d+:\s+(ipsec\d+)[:@]", out, re.M)

    def stop(self, ike: str | None = None, timeout: float = 8.0) -> None:
        """Delete the IKE SA (so the peer knows), then SIGTERM charon and wait."""
        if self.proc is None:
            return
        if ike and self.proc.poll() is None and self.vici.is_socket():
            with contextlib.suppress(LabError):
                self.swanctl("--terminate", "--ike", ike, "--timeout", "5", timeout=10)
        if self._undo is not None:
            self._undo()
            self._undo = None
        else:
            stop_process(self.proc, timeout=timeout)


class SwanTunnel:
    """A host-to-host strongSwan tunnel between the two namespaces of a pair.

    The inner addresses go on ``lo`` as /32s (this kernel has no dummy
    driver); charon then installs ``inner_b dev ipsec0 src inner_a`` in table
    220, so inner traffic can only flow through the tunnel. The libipsec TUN
    comes up with MTU 1500, which would make every full-size inner packet an
    IP-fragmented outer one: it is clamped to ``tun_mtu`` once the SA is up.
    """

    def __init__(
        self,
        pair: NamespacePair,
        *,
        suite: str,
        inner_a: str,
        inner_b: str,
        tun_mtu: int,
        workdir: Path,
        psk: str,
    ) -> None:
        if suite not in SWAN_PROPOSALS:
            raise LabError(f"no strongSwan proposal for suite {suite}")
        self.pair, self.suite, self.tun_mtu = pair, suite, tun_mtu
        self.inner_a, self.inner_b = inner_a, inner_b
        ike, esp = SWAN_PROPOSALS[suite]
        self.a = StrongSwan(pair.ns_a, workdir / "a")
        self.b = StrongSwan(pair.ns_b, workdir / "b")
        self.a.write_config(
            SwanPeerConfig(
                pair.ip_a,
                pair.ip_b,
                f"{inner_a}/32",
                f"{inner_b}/32",
                "a.bench.example",
                "b.bench.example",
                ike,
                esp,
                psk,
            )
        )
        self.b.write_config(
            SwanPeerConfig(
                pair.ip_b,
                pair.ip_a,
                f"{inner_b}/32",
                f"{inner_a}/32",
                "b.bench.example",
                "a.bench.example",
                ike,
                esp,
                psk,
            )
        )
        self._undo: Callable[[], None] | None = None

    @property
    def pids(self) -> list[int]:
        """Both charons' pids (libipsec's ESP threads live inside them)."""
        return [self.a.pid, self.b.pid]

    def up(self) -> SwanTunnel:
        """Addresses, both charons, IKE, MTU clamp, and a ping through the tunnel."""
        self._undo = CLEANUP.push(f"strongSwan {self.suite}", self._teardown)
        self.pair.addr(self.pair.ns_a, f"{self.inner_a}/32")
        self.pair.addr(self.pair.ns_b, f"{self.inner_b}/32")
        self.a.start()
        self.b.start()
        self.b.load_all()
        self.a.load_all()
        self.a.initiate("bench")
        for swan in (self.a, self.b):
            devices = swan.tun_devices()
            if not devices:
                raise LabError(f"no ipsec TUN device in {swan.ns}:\n{swan.log_tail()}")
            for dev in devices:
                run(["ip", "-n", swan.ns, "link", "set", dev, "mtu", str(self.tun_mtu)])
        run(
            ns_cmd(self.pair.ns_a, "ping", "-c", "3", "-i", "0.2", "-W", "2", self.inner_b),
            timeout=15,
        )
        return self

    def _teardown(self) -> None:
        self.a.stop(ike="bench")
        self.b.stop()
        for ns, addr in ((self.pair.ns_a, self.inner_a), (self.pair.ns_b, self.inner_b)):
            with contextlib.suppress(LabError):
                self.pair.addr(ns, f"{addr}/32", add=False)

    def down(self) -> None:
        """Stop both charons and remove the inner addresses (idempotent)."""
        if self._undo is not None:
            self._undo()
            self._undo = None

    def __enter__(self) -> SwanTunnel:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *_exc: object) -> None:
        self.down()
