"""The road-warrior lab: an office LAN host, the concentrator, and a laptop on the Internet.

``make demo`` and ``make demo-tui`` show Outpost the way a person meets it:
the real ``outpost-concentrator run`` and the real ``outpost up`` (or
``outpost tui``), started from files a person would write, in three network
namespaces of their own::

    [laptop] 192.0.2.2 ===== 192.0.2.1 [gw] outpost-concentrator
             TUN 10.99.100.x          |  TUN outpost0 10.99.100.1/24
                                      |  10.99.0.1/24
                                      +=== 10.99.0.10/24 [lan]
                                           route 10.99.100.0/24 via 10.99.0.1

Nothing here touches the host's interfaces or routes: every namespace is
created here and deleted again (with whatever still runs inside it) on every
exit path, through :data:`~netlab.process.CLEANUP`.

Two things the client shares with the rest of the machine are kept private:

- its status socket and stale-state records live in ``/run/outpost``, the
  same path for every root client, so a demo beside a real Outpost client
  (or beside a test run) would answer ``outpost status`` for the wrong one.
  :func:`private_run_outpost` gives the client its own tmpfs there, in the
  mount namespace ``ip netns exec`` already creates, and :func:`ns_enter`
  runs ``outpost status`` in that same mount namespace;
- its DNS goes to ``/etc/netns/<laptop>/resolv.conf``; the teardown removes
  that directory if a killed client left it behind.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final, Self

from netlab.netns import delete_netns, netns_list, ns_cmd, ping
from netlab.process import CLEANUP, LabError, LabSetup, run, stop_process

GATEWAY_IP: Final = "192.0.2.1"
LAPTOP_IP: Final = "192.0.2.2"
GATEWAY_LAN_IP: Final = "10.99.0.1"
LAN_HOST_IP: Final = "10.99.0.10"
LAN: Final = "10.99.0.0/24"
POOL: Final = "10.99.100.0/24"
GATEWAY_ID: Final = "vpn.demo.example"
USER_ID: Final = "alice@demo.example"
DNS_SERVER: Final = "10.99.0.53"


@dataclass
class OfficeLab(LabSetup):
    """The three namespaces of the module docstring, named ``<prefix><pid>-<role>``.

    The pid keeps two runs (a demo and a test) from colliding; the role
    suffix tells a person reading ``ip netns list`` which one is which.
    """

    prefix: str = "odemo"
    mtu: int = 1500
    lan: str = field(init=False)
    gw: str = field(init=False)
    laptop: str = field(init=False)

    def __post_init__(self) -> None:
        base = f"{self.prefix}{os.getpid()}"
        self.lan, self.gw, self.laptop = f"{base}-lan", f"{base}-gw", f"{base}-laptop"
        # veth names are per namespace, so short fixed names cannot clash
        self._links = (
            (self.laptop, "to-gw", f"{LAPTOP_IP}/24", self.gw, "to-laptop", f"{GATEWAY_IP}/24"),
            (self.gw, "to-lan", f"{GATEWAY_LAN_IP}/24", self.lan, "to-gw", f"{LAN_HOST_IP}/24"),
        )

    @property
    def namespaces(self) -> tuple[str, str, str]:
        """All three names, laptop first."""
        return self.laptop, self.gw, self.lan

    def up(self) -> Self:
        """Create the namespaces, links, addresses and the LAN's route back to the pool."""
        self._register(f"namespaces {', '.join(self.namespaces)}", self._teardown)
        for ns in self.namespaces:
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            for key in ("all", "default"):
                run(ns_cmd(ns, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0"))
        for ns_a, dev_a, addr_a, ns_b, dev_b, addr_b in self._links:
            # created inside A directly: the host namespace never sees the pair
            run(
                [
                    *("ip", "-n", ns_a, "link", "add", dev_a, "mtu", str(self.mtu)),
                    *("type", "veth", "peer", "name", dev_b, "netns", ns_b),
                ]
            )
            for ns, dev, addr in ((ns_a, dev_a, addr_a), (ns_b, dev_b, addr_b)):
                run(["ip", "-n", ns, "link", "set", dev, "mtu", str(self.mtu)])
                run(["ip", "-n", ns, "addr", "add", addr, "dev", dev])
                run(["ip", "-n", ns, "link", "set", dev, "up"])
        run(["ip", "-n", self.lan, "route", "add", POOL, "via", GATEWAY_LAN_IP])
        # Forwarding in gw stays off: switching it on is the concentrator's job.
        run(ns_cmd(self.gw, "sysctl", "-qw", "net.ipv4.ip_forward=0"))
        ping(self.laptop, GATEWAY_IP, count=1, timeout=10)
        ping(self.lan, GATEWAY_LAN_IP, count=1, timeout=10)
        return self

    def _teardown(self) -> None:
        """Kill what still runs inside, delete the namespaces and a left-behind DNS file."""
        existing = set(netns_list())
        for ns in self.namespaces:
            if ns in existing:
                delete_netns(ns)
            # only ever our own, pid-named directory (a killed client leaves it)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)

    def remaining(self) -> list[str]:
        """Those of our namespaces that still exist (for checks after cleanup)."""
        existing = set(netns_list())
        return [ns for ns in self.namespaces if ns in existing]


# --- configuration files ------------------------------------------------------------------


def concentrator_config(workdir: Path, psk: str) -> Path:
    """A concentrator configuration for the lab (one PSK user), in ``workdir``, mode 0600."""
    text = f"""\
# written by bench/netlab/office.py for one demo run
[server]
listen = ["{GATEWAY_IP}"]
identity = "{GATEWAY_ID}"
tun = "outpost0"

[pool]
ipv4 = "{POOL}"
dns = ["{DNS_SERVER}"]

[lan]
subnets = ["{LAN}"]

[[users]]
id = "{USER_ID}"
psk = "{psk}"

[store]
path = "{workdir / "state.db"}"

[control]
socket = "{workdir / "control" / "control.sock"}"
"""
    return _write_private(workdir / "concentrator.toml", text)


def client_profile(workdir: Path, psk: str, name: str = "office") -> Path:
    """The laptop's profile for the lab (split tunnel), ``workdir/<name>.toml``, mode 0600."""
    text = f"""\
# written by bench/netlab/office.py for one demo run
[gateway]
address = "{GATEWAY_IP}"
identity = "{GATEWAY_ID}"

[auth]
id = "{USER_ID}"
psk = "{psk}"

[tunnel]
mode = "split"
"""
    return _write_private(workdir / f"{name}.toml", text)


def _write_private(path: Path, text: str) -> Path:
    """Write a file holding a PSK readable by its owner only (the client warns otherwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


# --- processes ----------------------------------------------------------------------------

_PRIVATE_RUN: Final = (
    'mkdir -p /run/outpost && mount -t tmpfs -o mode=0700 outpost-lab /run/outpost && exec "$@"'
)


def private_run_outpost(ns: str, *argv: str) -> list[str]:
    """The argv that runs ``argv`` in ``ns`` with a private, empty ``/run/outpost``.

    ``ip netns exec`` already gives the command a mount namespace of its own
    (a slave of the host's), so the tmpfs is seen by that process only and
    vanishes with it. The shell ``exec``\\ s, so the pid is the client's.
    """
    return ns_cmd(ns, "sh", "-c", _PRIVATE_RUN, "outpost-lab", *argv)


def ns_enter(pid: int, *argv: str) -> list[str]:
    """The argv that runs ``argv`` in the network and mount namespaces of ``pid``."""
    return ["nsenter", "--target", str(pid), "--net", "--mount", "--", *argv]


@dataclass
class LoggedProcess:
    """A long-running program whose stderr (its log) goes to a file we can search.

    A file instead of a pipe: nothing can block on a full pipe, and a
    failure can always show the last lines.
    """

    label: str
    argv: Sequence[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _undo: object = None

    def start(self) -> Self:
        """Start it in a session of its own; registered with :data:`CLEANUP`."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = self.process
        self._undo = CLEANUP.push(self.label, lambda: stop_process(process))
        return self

    @property
    def pid(self) -> int:
        """The process id (after ``ip netns exec`` and ``sh`` exec'd into the program)."""
        if self.process is None:
            raise LabError(f"{self.label} was never started")
        return self.process.pid

    def lines(self) -> list[str]:
        """Every line it has written so far."""
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def tail(self, count: int = 12) -> list[str]:
        """The last ``count`` lines, for a failure report."""
        return self.lines()[-count:]

    def alive(self) -> bool:
        """Whether it still runs."""
        return self.process is not None and self.process.poll() is None

    def wait_log(self, pattern: str, *, timeout: float, what: str) -> re.Match[str]:
        """The first line matching ``pattern``; :class:`LabError` on timeout or early exit."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines():
                if match := regex.search(line):
                    return match
            if not self.alive():
                code = None if self.process is None else self.process.returncode
                raise LabError(f"{self.label} exited (status {code}) before {what}")
            if time.monotonic() > deadline:
                raise LabError(f"{self.label}: no {what} within {timeout:g} s")
            time.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (both programs then close their tunnels cleanly); the exit status."""
        if self.process is None:
            return None
        status = stop_process(self.process, timeout=timeout)
        undo = self._undo
        if callable(undo):
            undo()  # already stopped: only forgets the registration
        return status


def print_tails(processes: Sequence[LoggedProcess], out: IO[str], count: int = 12) -> None:
    """The last log lines of each process, indented under its label."""
    for proc in processes:
        lines = proc.tail(count)
        print(f"  last lines of {proc.label}:", file=out)
        for line in lines or ["(nothing)"]:
            print(f"    {line}", file=out)
