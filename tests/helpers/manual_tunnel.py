"""The manually keyed tunnel runner (``python -m common.dataplane.manual``) on lab hosts.

Two :class:`TunnelEnd` configurations are mirrors of each other: A's
outbound SPI and key are B's inbound ones and the other way round. Keys and
SPIs are random per test (:func:`mirrored_ends`), so no two tests ever share
an SA. A test may still change one end (``dataclasses.replace``) to break the
mirror on purpose, say a wrong inbound key::

    a_end, b_end = mirrored_ends(
        "aes256gcm16",
        a=EndAddresses(outer="192.0.2.1", inner="10.10.0.1/24", remote_nets=("10.10.0.2/32",)),
        b=EndAddresses(outer="192.0.2.2", inner="10.10.0.2/24", remote_nets=("10.10.0.1/32",)),
    )
    a = ManualTunnel.start(host_a, a_end)
    b = ManualTunnel.start(host_b, b_end)
    a.wait_ready(); b.wait_ready()
    ...
    final_b = b.stop()          # the "stopped" line's counters
    assert final_b["inbound"]["packets"] > 0

The runner prints one JSON object per line on stdout (``ready``,
``counters`` on SIGUSR1, ``stopped`` on SIGTERM); a reader thread queues
them, another keeps stderr, so a failure can show what the runner said.
Processes are started with :meth:`Host.popen`, so the lab's teardown stops
them whatever happens; a test calls :meth:`ManualTunnel.stop` first to read
the final counters.
"""

from __future__ import annotations

import contextlib
import json
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from common.esp.suites import suite_by_name
from tests.helpers.netns import Host

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
RUNNER_MODULE: Final = "common.dataplane.manual"
DEFAULT_TUN: Final = "otun0"


class RunnerError(AssertionError):
    """The runner did not do what a test needed; the message carries its stderr."""


@dataclass(frozen=True)
class EndAddresses:
    """Where one end lives: its outer address, inner address/prefix and peer's inner networks."""

    outer: str
    inner: str
    remote_nets: tuple[str, ...]


@dataclass(frozen=True)
class TunnelEnd:
    """Everything one runner is started with (keys as bytes, SPIs as ints)."""

    suite: str
    address: str  # inner address/prefix on the TUN
    local: str  # outer address to bind
    peer: str  # the peer's outer address
    spi_in: int
    spi_out: int
    key_in: bytes
    key_out: bytes
    remote_nets: tuple[str, ...]
    tun: str = DEFAULT_TUN
    extra_args: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        """The runner's command line (keys included: a throwaway key on a lab host)."""
        argv = [
            sys.executable,
            "-m",
            RUNNER_MODULE,
            *("--tun", self.tun),
            *("--address", self.address),
            *("--local", self.local),
            *("--peer", self.peer),
            *("--suite", self.suite),
            *("--spi-in", hex(self.spi_in)),
            *("--spi-out", hex(self.spi_out)),
            *("--key-in", self.key_in.hex()),
            *("--key-out", self.key_out.hex()),
        ]
        for network in self.remote_nets:
            argv += ["--remote-net", network]
        return argv + list(self.extra_args)


def random_spi() -> int:
    """A random SPI outside 0..255 (RFC 4303 2.1 reserves those)."""
    return 0x100 + secrets.randbelow(0xFFFFFFFF - 0x100)


def random_keymat(suite: str) -> bytes:
    """Fresh KEYMAT for one direction of ``suite`` (key || salt, or key || integrity key)."""
    return secrets.token_bytes(suite_by_name(suite).keymat_len)


def mirrored_ends(
    suite: str,
    *,
    a: EndAddresses,
    b: EndAddresses,
    extra_args: tuple[str, ...] = (),
) -> tuple[TunnelEnd, TunnelEnd]:
    """Two ends with random SPIs and keys, A's outbound SA being B's inbound one and vice versa."""
    spi_ab, spi_ba = random_spi(), random_spi()
    while spi_ba == spi_ab:
        spi_ba = random_spi()
    key_ab, key_ba = random_keymat(suite), random_keymat(suite)
    end_a = TunnelEnd(
        suite=suite,
        address=a.inner,
        local=a.outer,
        peer=b.outer,
        spi_in=spi_ba,
        spi_out=spi_ab,
        key_in=key_ba,
        key_out=key_ab,
        remote_nets=a.remote_nets,
        extra_args=extra_args,
    )
    end_b = TunnelEnd(
        suite=suite,
        address=b.inner,
        local=b.outer,
        peer=a.outer,
        spi_in=spi_ab,
        spi_out=spi_ba,
        key_in=key_ab,
        key_out=key_ba,
        remote_nets=b.remote_nets,
        extra_args=extra_args,
    )
    return end_a, end_b


def _pump_lines(stream: IO[str], sink: Callable[[str | None], None]) -> None:
    with contextlib.suppress(ValueError, OSError):
        for line in stream:
            sink(line)
    sink(None)  # end of stream


@dataclass(eq=False)
class ManualTunnel:
    """One running runner on one lab host, and the JSON events it printed."""

    host: Host
    end: TunnelEnd
    process: subprocess.Popen[str]
    ready: dict[str, Any] | None = None
    stopped: dict[str, Any] | None = None
    _events: queue.Queue[str | None] = field(default_factory=queue.Queue, repr=False)
    _stderr: list[str] = field(default_factory=list, repr=False)
    _stdout_junk: list[str] = field(default_factory=list, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, repr=False)

    @classmethod
    def start(cls, host: Host, end: TunnelEnd) -> ManualTunnel:
        """Launch the runner in ``host`` (then call :meth:`wait_ready`)."""
        process = host.popen(
            end.argv(),
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        tunnel = cls(host, end, process)
        assert process.stdout is not None
        assert process.stderr is not None
        sinks: tuple[tuple[IO[str], Callable[[str | None], None]], ...] = (
            (process.stdout, tunnel._events.put),
            (process.stderr, tunnel._keep_stderr),
        )
        for stream, sink in sinks:
            thread = threading.Thread(target=_pump_lines, args=(stream, sink), daemon=True)
            thread.start()
            tunnel._threads.append(thread)
        return tunnel

    def _keep_stderr(self, line: str | None) -> None:
        if line is not None:
            self._stderr.append(line)

    # -- reading events ----------------------------------------------------------

    def stderr(self) -> str:
        """What the runner wrote on stderr so far."""
        return "".join(self._stderr)

    def _describe(self) -> str:
        code = self.process.poll()
        state = "running" if code is None else f"exited with status {code}"
        junk = "".join(self._stdout_junk[-20:])
        return (
            f"runner in {self.host.name} ({state}), argv: "
            f"{' '.join(self.end.argv()[1:9])} ...\n"
            f"--- other stdout:\n{junk}--- stderr:\n{self.stderr()[-3000:]}"
        )

    def next_event(self, name: str, timeout: float) -> dict[str, Any]:
        """The next JSON event called ``name``; earlier other events are skipped.

        Raises:
            RunnerError: the runner exited, printed ``failed``, or said nothing in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RunnerError(f"no {name!r} event within {timeout:g} s\n{self._describe()}")
            try:
                line = self._events.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._events.put(None)  # keep saying "closed" to later calls
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=5)  # stdout closes just before the exit
                time.sleep(0.1)  # let the stderr thread catch up for the message
                raise RunnerError(f"stdout closed before a {name!r} event\n{self._describe()}")
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                self._stdout_junk.append(line)
                continue
            if not isinstance(event, dict):
                self._stdout_junk.append(line)
                continue
            if event.get("event") == "failed":
                raise RunnerError(f"runner reported failure: {event}\n{self._describe()}")
            if event.get("event") == name:
                return event

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        """Block until the ``ready`` line (the TUN is up and the SA installed)."""
        self.ready = self.next_event("ready", timeout)
        return self.ready

    def counters(self, timeout: float = 15.0) -> dict[str, Any]:
        """Current counters (SIGUSR1 -> ``counters`` line): inbound, outbound, sas."""
        if self.process.poll() is not None:
            raise RunnerError(f"cannot read counters: runner is gone\n{self._describe()}")
        self.process.send_signal(signal.SIGUSR1)
        return self.next_event("counters", timeout)

    def stop(self, timeout: float = 20.0) -> dict[str, Any]:
        """SIGTERM, then the ``stopped`` line's final counters; the runner must exit 0.

        Idempotent: a second call returns the same counters.
        """
        if self.stopped is not None:
            return self.stopped
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.stopped = self.next_event("stopped", timeout)
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RunnerError(f"runner did not exit after 'stopped'\n{self._describe()}") from None
        finally:
            if self.process.poll() is None:  # never leave it behind
                self.process.kill()
                self.process.wait(timeout=10)
        if code != 0:
            raise RunnerError(
                f"runner exited with status {code} after stopping\n{self._describe()}"
            )
        return self.stopped

    @property
    def tun_mtu(self) -> int:
        """The TUN MTU from the ``ready`` line."""
        assert self.ready is not None, "wait_ready() first"
        return int(self.ready["tun_mtu"])


def start_pair(
    host_a: Host, end_a: TunnelEnd, host_b: Host, end_b: TunnelEnd, *, timeout: float = 30.0
) -> tuple[ManualTunnel, ManualTunnel]:
    """Start both runners (in parallel) and wait until both are ready."""
    a = ManualTunnel.start(host_a, end_a)
    b = ManualTunnel.start(host_b, end_b)
    a.wait_ready(timeout)
    b.wait_ready(timeout)
    return a, b
