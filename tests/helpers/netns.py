"""Network-namespace lab for system tests: named hosts, veth links, guaranteed cleanup.

A :class:`NetnsLab` builds a small topology out of network namespaces, the
way WireGuard's ``src/tests/netns.sh`` and ``../shared/interop/netns.sh`` do,
but with names that cannot collide and a teardown that always runs::

    def test_ping_through_gateway(netns_lab: NetnsLab) -> None:
        '''
        [laptop] to-gw 192.0.2.2/24 ==== 192.0.2.1/24 to-laptop [gw] to-lan 10.99.0.1/24
                                                    ==== 10.99.0.10/24 to-gw [lan]
        '''
        laptop, gw, lan = (netns_lab.add_host(h) for h in ("laptop", "gw", "lan"))
        netns_lab.link(laptop, gw, addr_a="192.0.2.2/24", addr_b="192.0.2.1/24")
        netns_lab.link(gw, lan, addr_a="10.99.0.1/24", addr_b="10.99.0.10/24")
        netns_lab.forwarding(gw)
        netns_lab.route(laptop, "10.99.0.0/24", via="192.0.2.1")
        netns_lab.route(lan, "default", via="10.99.0.1")
        laptop.run(["ping", "-c1", "-W2", "10.99.0.10"])

Naming. Every namespace is ``opt<token>-<label>``: ``opt`` marks lab namespaces,
the five-character token is random per lab, so parallel runs (and other
engineers' runs on the same machine) never collide. Interface names come from
the labels, not from the namespace names: the end of a link in host A that
faces host B is ``to-<B>`` (``to-<B>2`` for a second link, the label cut
short if needed), at most 15 bytes because labels are at most 12 characters.

Cleanup. Teardown (in ``finally``) stops the processes started with
:meth:`Host.popen` (SIGTERM to their process group, SIGKILL after a grace
period), kills anything else still running inside the lab's namespaces, and
deletes them. A run killed before its teardown leaves namespaces behind; so
before creating anything each lab writes ``/run/outpost-tests/opt<token>.owner``
(pid and process start time), and every new lab deletes the namespaces whose
owner has died. A namespace with no owner file is left alone: it may be
someone else's.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import string
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_interface
from pathlib import Path
from types import TracebackType
from typing import Any, Final

LAB_MARKER: Final = "opt"
OWNER_DIR: Final = Path("/run/outpost-tests")
MAX_LABEL: Final = 12  # "to-" + label fits IFNAMSIZ
IFNAME_MAX: Final = 15
_TOKEN_ALPHABET: Final = string.ascii_lowercase + string.digits
_LAB_NAMESPACE: Final = re.compile(rf"^({LAB_MARKER}[a-z0-9]{{5}})-[a-z0-9]+$")
_LABEL: Final = re.compile(rf"^[a-z][a-z0-9]{{0,{MAX_LABEL - 1}}}$")


class NetnsCommandError(subprocess.CalledProcessError):
    """A command in a namespace failed; unlike its base class, it shows what the command said."""

    def __str__(self) -> str:
        parts = [super().__str__()]
        for label, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            if text:
                parts.append(f"{label}:\n{text.rstrip()}")
        return "\n".join(parts)


def run_command(
    argv: Sequence[str],
    *,
    check: bool = True,
    timeout: float = 30.0,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command with captured text output; a failure carries that output.

    ``env`` adds to (or overrides in) the inherited environment.
    """
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )
    if check and result.returncode != 0:
        raise NetnsCommandError(result.returncode, result.args, result.stdout, result.stderr)
    return result


@dataclass(eq=False)
class Host:
    """One test host: a network namespace, and the commands run inside it."""

    lab: NetnsLab = field(repr=False)
    label: str
    name: str  # the namespace name, for `ip netns exec` and `ip -n`
    _link_count: dict[str, int] = field(default_factory=dict, repr=False)
    _ifnames: set[str] = field(default_factory=set, repr=False)

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace and wait for it (``ip netns exec``).

        ``env`` adds variables to the inherited environment.

        Raises:
            NetnsCommandError: ``check`` and a non-zero exit status.
            subprocess.TimeoutExpired: still running after ``timeout`` seconds (it is killed).
        """
        return run_command(
            ["ip", "netns", "exec", self.name, *argv],
            check=check,
            timeout=timeout,
            input=input,
            env=env,
        )

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in the background inside the namespace; teardown stops it.

        The process leads a new session, so teardown can signal it together
        with whatever it starts. Output goes where ``kwargs`` say; by default it
        is inherited, which pytest captures and shows for a failed test.
        """
        return self.lab._start(self, argv, kwargs)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``ip -n <namespace> args...``: configure or inspect the host's network."""
        return run_command(["ip", "-n", self.name, *args], check=check)

    def sysctl(self, settings: Mapping[str, str | int]) -> None:
        """Set sysctls inside the namespace, such as ``{"net.ipv4.ip_forward": 1}``."""
        pairs = [f"{key}={value}" for key, value in settings.items()]
        self.run(["sysctl", "-qw", *pairs])

    def _next_ifname(self, peer_label: str) -> str:
        """``to-<peer>``, then ``to-<peer>2``... (the label cut short to fit 15 bytes)."""
        count = self._link_count.get(peer_label, 0) + 1
        self._link_count[peer_label] = count
        if count == 1:
            return f"to-{peer_label}"
        suffix = str(count)
        return f"to-{peer_label[: IFNAME_MAX - 3 - len(suffix)]}{suffix}"


@dataclass(frozen=True)
class Link:
    """A veth pair between two hosts: which interface ends up where."""

    host_a: Host
    ifname_a: str
    host_b: Host
    ifname_b: str
    mtu: int


class NetnsLab:
    """A set of namespaces created for one test, removed again whatever happens.

    Use it as a context manager (the ``netns_lab`` fixture does); needs root.

    Args:
        owner_dir: where owner files live (tests of the stale clean-up use their own).
        term_grace_s: how long teardown waits after SIGTERM before SIGKILL.
    """

    def __init__(self, *, owner_dir: Path = OWNER_DIR, term_grace_s: float = 3.0) -> None:
        token = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(5))
        self.prefix = f"{LAB_MARKER}{token}"
        self.hosts: dict[str, Host] = {}
        self._owner_dir = owner_dir
        self._owner_file = owner_dir / f"{self.prefix}.owner"
        self._term_grace_s = term_grace_s
        self._processes: list[subprocess.Popen[Any]] = []
        self._entered = False

    # -- lifetime --------------------------------------------------------------

    def __enter__(self) -> NetnsLab:
        remove_stale_namespaces(self._owner_dir)
        self._owner_dir.mkdir(parents=True, exist_ok=True)
        # Written before any namespace exists, so no other run ever sees one
        # of ours without its owner and mistakes it for a stale one.
        self._owner_file.write_text(owner_record(os.getpid()))
        self._entered = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()

    def teardown(self) -> None:
        """Stop processes, delete the namespaces, then the owner file (idempotent).

        Raises:
            RuntimeError: a namespace could not be deleted (after trying them all).
        """
        try:
            self._stop_processes()
            failures = [
                f"{host.name}: {error}"
                for host in self.hosts.values()
                if (error := delete_namespace(host.name)) is not None
            ]
            self.hosts.clear()
            if failures:
                raise RuntimeError("could not delete namespaces: " + "; ".join(failures))
        finally:
            if not any(
                name.startswith(self.prefix + "-") for name in list_namespaces()
            ):  # keep the owner file while any namespace of ours survives
                self._owner_file.unlink(missing_ok=True)
            self._entered = False

    # -- building the topology -----------------------------------------------

    def add_host(self, label: str) -> Host:
        """Create namespace ``<prefix>-<label>`` with ``lo`` up and no reverse-path filter.

        Reverse-path filtering is off because TUN devices and asymmetric test
        routes would otherwise drop packets silently; IPv6 duplicate address
        detection is off so that addresses work at once.
        """
        if not self._entered:
            raise RuntimeError("use NetnsLab as a context manager (or the netns_lab fixture)")
        if not _LABEL.match(label) or label in self.hosts:
            raise ValueError(
                f"host label {label!r} must be new, [a-z][a-z0-9]*, at most {MAX_LABEL} characters"
            )
        host = Host(self, label, f"{self.prefix}-{label}")
        run_command(["ip", "netns", "add", host.name])
        self.hosts[label] = host
        host.ip("link", "set", "lo", "up")
        host.sysctl(
            {
                "net.ipv4.conf.all.rp_filter": 0,
                "net.ipv4.conf.default.rp_filter": 0,
                "net.ipv6.conf.all.accept_dad": 0,
                "net.ipv6.conf.default.accept_dad": 0,
            }
        )
        return host

    def host(self, label: str) -> Host:
        """The host added under ``label``."""
        return self.hosts[label]

    def link(
        self,
        host_a: Host,
        host_b: Host,
        *,
        addr_a: str | Iterable[str] = (),
        addr_b: str | Iterable[str] = (),
        mtu: int = 1500,
        ifname_a: str | None = None,
        ifname_b: str | None = None,
    ) -> Link:
        """Connect two hosts with a veth pair, set its MTU and addresses, and bring it up.

        Args:
            addr_a: address(es) with prefix for host A's end, IPv4 and/or IPv6
                ("192.0.2.2/24" or ["192.0.2.2/24", "2001:db8::2/64"]).
            addr_b: the same for host B's end.
            ifname_a: the interface name in host A (default ``to-<B's label>``).
            ifname_b: the interface name in host B (default ``to-<A's label>``).
        """
        name_a = ifname_a or host_a._next_ifname(host_b.label)
        name_b = ifname_b or host_b._next_ifname(host_a.label)
        for host, name in ((host_a, name_a), (host_b, name_b)):
            if len(name.encode()) > IFNAME_MAX:
                raise ValueError(f"interface name {name!r} is longer than {IFNAME_MAX} bytes")
            if name in host._ifnames:
                raise ValueError(f"{host.label} already has an interface {name!r}: name it")
        host_a._ifnames.add(name_a)
        host_b._ifnames.add(name_b)
        # Both ends are created directly in their namespaces (IFLA_NET_NS_FD),
        # so the names never have to be free in the root namespace.
        run_command(
            [
                *("ip", "link", "add", name_a, "netns", host_a.name, "type", "veth"),
                *("peer", "name", name_b, "netns", host_b.name),
            ]
        )
        for host, name, addresses in ((host_a, name_a, addr_a), (host_b, name_b, addr_b)):
            host.ip("link", "set", "dev", name, "mtu", str(mtu))
            for address in [addresses] if isinstance(addresses, str) else addresses:
                nodad = ["nodad"] if ip_interface(address).version == 6 else []
                host.ip("addr", "add", address, "dev", name, *nodad)
            host.ip("link", "set", "dev", name, "up")
        return Link(host_a, name_a, host_b, name_b, mtu)

    def route(
        self, host: Host, destination: str, via: str | None = None, *, dev: str | None = None
    ) -> None:
        """``ip route add destination [via via] [dev dev]`` inside ``host``.

        ``destination`` may be "default"; the IP version follows ``via`` or
        ``destination``, so "default" via an IPv6 gateway is an IPv6 default route.
        """
        if via is None and dev is None:
            raise ValueError("a route needs via, dev or both")
        family = ["-6"] if ":" in (via or "") or ":" in destination else []
        args = [*family, "route", "add", destination]
        if via is not None:
            args += ["via", via]
        if dev is not None:
            args += ["dev", dev]
        host.ip(*args)

    def forwarding(self, host: Host, enabled: bool = True) -> None:
        """Switch IPv4 and IPv6 forwarding of ``host`` (a router, a concentrator)."""
        value = int(enabled)
        host.sysctl({"net.ipv4.ip_forward": value, "net.ipv6.conf.all.forwarding": value})

    # -- processes -------------------------------------------------------------

    def _start(
        self, host: Host, argv: Sequence[str], kwargs: dict[str, Any]
    ) -> subprocess.Popen[Any]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs["start_new_session"] = True
        process = subprocess.Popen(["ip", "netns", "exec", host.name, *argv], **kwargs)
        self._processes.append(process)
        return process

    def _stop_processes(self) -> None:
        """SIGTERM every tracked process group, SIGKILL what outlives the grace period.

        Then SIGKILL whatever else still runs in our namespaces (a daemon that
        forked away from its group would otherwise keep a namespace alive).
        """
        running = [p for p in self._processes if p.poll() is None]
        for process in running:
            _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._term_grace_s
        for process in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
        for process in running:
            if process.poll() is None:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self._processes.clear()
        for host in self.hosts.values():
            kill_namespace_processes(host.name)


def _signal_group(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


# -- namespaces and their owners ----------------------------------------------


def list_namespaces() -> list[str]:
    """Names of all network namespaces ``ip netns`` knows (everyone's, not only ours)."""
    output = run_command(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in output.splitlines() if line.strip()]


def kill_namespace_processes(name: str) -> None:
    """SIGKILL every process still running inside namespace ``name`` (by pid)."""
    result = run_command(["ip", "netns", "pids", name], check=False)
    for word in result.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(word), signal.SIGKILL)


def delete_namespace(name: str) -> str | None:
    """Delete namespace ``name``; returns the error text, or ``None`` on success or if gone."""
    result = run_command(["ip", "netns", "del", name], check=False)
    if result.returncode == 0 or name not in list_namespaces():
        return None
    return result.stderr.strip() or f"exit status {result.returncode}"


def process_start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (clock ticks after boot), ``None`` if no such process.

    Paired with the pid it names one process for good: a pid reused by a
    later process comes with a later start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def owner_record(pid: int) -> str:
    """The owner file's content for process ``pid``: ``"<pid> <start time>\\n"``."""
    return f"{pid} {process_start_time(pid)}\n"


def owner_alive(record: str) -> bool:
    """Whether the process an owner record names still runs (same pid, same start time)."""
    try:
        pid_text, start_text = record.split()
        pid = int(pid_text)
    except ValueError:
        return False
    start = process_start_time(pid)
    return start is not None and str(start) == start_text


def remove_stale_namespaces(owner_dir: Path = OWNER_DIR) -> list[str]:
    """Delete lab namespaces whose owning test run has died; returns their names.

    Only names of the lab's form (``opt<token>-<label>``) with an owner file
    naming a dead process are touched. The processes still inside them are
    killed first, or the namespace would outlive its name.
    """
    removed: list[str] = []
    for name in list_namespaces():
        match = _LAB_NAMESPACE.match(name)
        if match is None:
            continue
        owner_file = owner_dir / f"{match.group(1)}.owner"
        try:
            record = owner_file.read_text()
        except FileNotFoundError:
            continue  # not ours to judge (see the module docstring)
        if owner_alive(record):
            continue
        kill_namespace_processes(name)
        if delete_namespace(name) is None:
            removed.append(name)
    if owner_dir.is_dir():
        live_prefixes = {m.group(1) for n in list_namespaces() if (m := _LAB_NAMESPACE.match(n))}
        for owner_file in owner_dir.glob(f"{LAB_MARKER}*.owner"):
            with contextlib.suppress(FileNotFoundError):
                if owner_file.stem not in live_prefixes and not owner_alive(owner_file.read_text()):
                    owner_file.unlink()
    return removed
