"""External programs the lab drives, and their guaranteed cleanup.

Every external call goes through :func:`run` (bounded, and failures name the
command), every child we start is stopped with :func:`stop_process` or
:func:`kill_pids`, and every resource registers its undo in :data:`CLEANUP`
as soon as it exists, so a benchmark killed half-way leaves nothing behind.
:class:`LabSetup` is the context-manager shape shared by the multi-step
resources (a namespace pair, a strongSwan tunnel).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, Final, Self

CHARON: Final = "/usr/lib/ipsec/charon"

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


# --------------------------------------------------------------------------
# stopping what we started


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


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (ours or not)."""
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
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


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


class Undoable:
    """Holds the one :data:`CLEANUP` registration of a lab resource.

    The undo is registered before the first step that needs undoing, so an
    exception or signal at any later point still finds it; running it early
    (a normal stop) also removes it from :data:`CLEANUP`.
    """

    _undo: Callable[[], None] | None = None

    def _register(self, label: str, action: Callable[[], object]) -> None:
        self._undo = CLEANUP.push(label, action)

    def _release(self) -> bool:
        """Run the registered undo now, if there is one; whether there was."""
        if self._undo is None:
            return False
        self._undo()
        self._undo = None
        return True


class LabSetup(Undoable):
    """A resource set up in several steps by :meth:`up`, undone by :meth:`down`.

    :meth:`up` registers :meth:`_teardown` first, so a failure half-way (or a
    signal) undoes the steps already taken; ``with`` does the same on every
    exit path.
    """

    def up(self) -> Self:
        """Set everything up (subclasses start with ``self._register(..., self._teardown)``)."""
        raise NotImplementedError

    def _teardown(self) -> None:
        raise NotImplementedError

    def down(self) -> None:
        """Undo whatever :meth:`up` did (idempotent)."""
        self._release()

    def __enter__(self) -> Self:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *_exc: object) -> None:
        self.down()
