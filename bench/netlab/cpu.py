"""CPU accounting of process trees from ``/proc``.

A throughput figure only means something next to what it cost: on a 2-core
VM shared by both tunnel ends and iperf3, a tunnel can look fast by taking
the other side's core. :class:`CpuMeter` reads utime+stime of the measured
processes (and the machine's busy time) before and after one measurement.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from netlab.process import LabError, pid_alive

CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


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
    todo = [r for r in roots if pid_alive(r)]
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
