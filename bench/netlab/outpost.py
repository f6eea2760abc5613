"""Outpost's manually keyed data plane as a managed subprocess.

Until IKE lands, the tunnel ends are ``python -m common.dataplane.manual``
processes keyed from their command line: :func:`mirrored_sides` builds the
arguments of both ends of one tunnel and :class:`OutpostManualTunnel` runs
one end in a namespace, reading its JSON event lines from stdout.
"""

from __future__ import annotations

import contextlib
import json
import queue
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from netlab.netns import NamespacePair, ns_cmd
from netlab.process import LabError, Undoable, stop_process


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


def mirrored_sides(
    pair: NamespacePair,
    *,
    inner_a: str,
    inner_b: str,
    spi_a_in: int,
    spi_b_in: int,
    key_a_in: str,
    key_b_in: str,
) -> tuple[OutpostSide, OutpostSide]:
    """Both ends of one tunnel across ``pair``, A's inbound SA being B's outbound.

    Each end gets its inner address as a /24 on its TUN and routes the other
    end's inner address (a /32) into the tunnel.
    """
    return (
        OutpostSide(pair.ns_a, f"{inner_a}/24", pair.ip_a, pair.ip_b, spi_a_in, spi_b_in,
                    key_a_in, key_b_in, [f"{inner_b}/32"]),
        OutpostSide(pair.ns_b, f"{inner_b}/24", pair.ip_b, pair.ip_a, spi_b_in, spi_a_in,
                    key_b_in, key_a_in, [f"{inner_a}/32"]),
    )  # fmt: skip


class OutpostManualTunnel(Undoable):
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
        self._register(f"outpost in {self.side.ns}", lambda: stop_process(proc))

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
        self._release()
        return self.stopped
