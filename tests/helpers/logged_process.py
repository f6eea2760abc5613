"""A program under test, run in a namespace, whose stderr lines the test reads as they come.

The concentrator (``concentrator_lab.ConcentratorProcess``) and the client
(``client_lab.ClientProcess``) are both watched this way: every line is kept
(and copied to ``log_path`` for a failed test to show), ``mark``/``since``
let a test look only at what happened after a point, and a wait fails at
once, with the log, when the program exits instead of logging what was awaited.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, ClassVar


@dataclass(kw_only=True)
class LoggedProcess:
    """The stderr-reading half; subclasses start ``process`` and call ``_follow``."""

    log_path: Path
    name: ClassVar[str] = "the program"  # in failure messages: "the client", "concentrator"
    process: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _reader: threading.Thread | None = None

    def _follow(self) -> None:
        """Start reading the started process's stderr on a thread."""
        assert self.process is not None
        assert self.process.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        with self.log_path.open("a") as copy:
            for line in stream:
                copy.write(line)
                copy.flush()
                with self._changed:
                    self.lines.append(line.rstrip("\n"))
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def mark(self) -> int:
        """An index into :attr:`lines`: pass it as ``since`` to ignore older lines."""
        with self._changed:
            return len(self.lines)

    def log_text(self, since: int = 0) -> str:
        with self._changed:
            return "\n".join(self.lines[since:])

    def find(self, pattern: str, since: int = 0) -> list[re.Match[str]]:
        """Every log line after ``since`` that ``pattern`` (a regex) matches."""
        regex = re.compile(pattern)
        with self._changed:
            return [m for line in self.lines[since:] if (m := regex.search(line))]

    def wait_log(
        self, pattern: str, *, since: int = 0, timeout: float = 15.0, what: str | None = None
    ) -> re.Match[str]:
        """The first line after ``since`` matching ``pattern``; raises if none in ``timeout``.

        Also raises at once if the process exits first, with its log: a
        crashed program must not look like a slow one.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[since:]:
                    if match := regex.search(line):
                        return match
                remaining = deadline - time.monotonic()
                exited = self.process is not None and self.process.poll() is not None
                if remaining <= 0 or (exited and not self._reader_alive()):
                    raise AssertionError(
                        f"{self.name} never logged {what or pattern!r} ({self._state_text()}):\n"
                        + "\n".join(self.lines[-80:])
                    )
                self._changed.wait(min(remaining, 0.2))

    def _reader_alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def _state_text(self) -> str:
        status = None if self.process is None else self.process.poll()
        return "still running" if status is None else f"exited {status}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, *, timeout: float = 15.0) -> int:
        """SIGTERM (both programs then send their Deletes and undo); the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
            raise AssertionError(
                f"{self.name} ignored SIGTERM for {timeout} s:\n{self.log_text()}"
            ) from None
        if self._reader is not None:
            self._reader.join(timeout=5)
        return status
