"""The namespace lab itself: topology, routing, and cleanup that cannot be skipped."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.netns import (
    NetnsLab,
    list_namespaces,
    owner_record,
    process_start_time,
    remove_stale_namespaces,
)

pytestmark = pytest.mark.privileged


def _ours(prefix: str) -> list[str]:
    return [name for name in list_namespaces() if name.startswith(prefix + "-")]


def test_routed_path_between_three_hosts(netns_lab: NetnsLab) -> None:
    """IPv4 and IPv6 across a router, only once the routes exist.

    [laptop] to-gw  192.0.2.2/24  2001:db8:1::2/64
               |  "internet"
    [gw]     to-laptop 192.0.2.1/24 2001:db8:1::1/64    (forwarding)
             to-lan    10.99.0.1/24 fd00:99::1/64
               |  "office LAN"
    [lan]    to-gw  10.99.0.10/24  fd00:99::10/64       (default via gw)
    """
    laptop, gw, lan = (netns_lab.add_host(label) for label in ("laptop", "gw", "lan"))
    wan = netns_lab.link(
        laptop,
        gw,
        addr_a=["192.0.2.2/24", "2001:db8:1::2/64"],
        addr_b=["192.0.2.1/24", "2001:db8:1::1/64"],
        mtu=1420,
    )
    netns_lab.link(
        gw,
        lan,
        addr_a=["10.99.0.1/24", "fd00:99::1/64"],
        addr_b=["10.99.0.10/24", "fd00:99::10/64"],
    )
    assert (wan.ifname_a, wan.ifname_b) == ("to-gw", "to-laptop")
    assert "mtu 1420" in laptop.ip("link", "show", "dev", "to-gw").stdout
    netns_lab.forwarding(gw)
    netns_lab.route(lan, "default", via="10.99.0.1")
    netns_lab.route(lan, "default", via="fd00:99::1")

    # No route yet: the laptop reaches only its own link, as in interop/netns.sh.
    assert laptop.run(["ping", "-c1", "-W1", "10.99.0.10"], check=False).returncode != 0

    netns_lab.route(laptop, "10.99.0.0/24", via="192.0.2.1")
    netns_lab.route(laptop, "fd00:99::/64", via="2001:db8:1::1")
    laptop.run(["ping", "-c1", "-W2", "10.99.0.10"])
    laptop.run(["ping", "-6", "-c1", "-W2", "fd00:99::10"])
    lan.run(["ping", "-c1", "-W2", "192.0.2.2"])


def test_teardown_removes_namespaces_and_stops_processes() -> None:
    """Teardown runs on failure too, and leaves neither namespaces nor processes."""
    seen: dict[str, Any] = {}
    with pytest.raises(RuntimeError, match="test body failed"):
        _failing_test_body(seen)

    assert _ours(seen["prefix"]) == []
    assert seen["polite"].returncode == -signal.SIGTERM
    assert seen["stubborn"].returncode == -signal.SIGKILL
    assert process_start_time(seen["orphan"]) is None or _is_zombie(seen["orphan"])
    assert not Path(f"/run/outpost-tests/{seen['prefix']}.owner").exists()


def _failing_test_body(seen: dict[str, Any]) -> None:
    with NetnsLab(term_grace_s=0.5) as lab:
        seen["prefix"] = lab.prefix
        a, b = lab.add_host("a"), lab.add_host("b")
        lab.link(a, b, addr_a="198.51.100.1/24", addr_b="198.51.100.2/24")
        seen["polite"] = a.popen(["sleep", "300"])
        # Ignores SIGTERM (and so does its sleep child): needs the SIGKILL.
        seen["stubborn"] = b.popen(["sh", "-c", "trap '' TERM; sleep 300"])
        # Forked away from any tracked process: found through `ip netns pids`.
        echoed = a.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"]).stdout
        seen["orphan"] = int(echoed)
        assert len(_ours(lab.prefix)) == 2
        raise RuntimeError("test body failed")


def test_stale_namespace_of_dead_owner_is_removed(tmp_path: Path) -> None:
    """A lab removes namespaces whose owner died, and only those."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    fake = {
        "optdead0": f"{dead.pid} {process_start_time(os.getpid())}\n",  # pid gone
        "optreuse": f"{os.getpid()} 1\n",  # pid alive, but a later process: reused
        "optalive": owner_record(os.getpid()),  # this very process: alive
    }
    names = [f"{prefix}-x" for prefix in fake] + ["optnoown-x"]  # the last has no owner file
    try:
        for prefix, record in fake.items():
            (tmp_path / f"{prefix}.owner").write_text(record)
        for name in names:
            subprocess.run(["ip", "netns", "add", name], check=True)

        removed = remove_stale_namespaces(tmp_path)

        assert sorted(removed) == ["optdead0-x", "optreuse-x"]
        present = set(list_namespaces())
        assert {"optalive-x", "optnoown-x"} <= present
        assert not {"optdead0-x", "optreuse-x"} & present
        assert sorted(p.name for p in tmp_path.iterdir()) == ["optalive.owner"]
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def test_lab_start_cleans_up_after_a_killed_run(tmp_path: Path) -> None:
    """The fixture path: entering a lab is what removes the leftovers."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "optkill1.owner").write_text(f"{dead.pid} 0\n")
    subprocess.run(["ip", "netns", "add", "optkill1-gw"], check=True)
    try:
        with NetnsLab(owner_dir=tmp_path) as lab:
            assert "optkill1-gw" not in list_namespaces()
            assert (tmp_path / f"{lab.prefix}.owner").read_text() == owner_record(os.getpid())
        assert list(tmp_path.iterdir()) == []
    finally:
        subprocess.run(["ip", "netns", "del", "optkill1-gw"], check=False, capture_output=True)


def test_labels_and_interface_names(netns_lab: NetnsLab) -> None:
    """Labels are checked; interface names derived from them fit in 15 bytes."""
    laptop, conc = netns_lab.add_host("laptop"), netns_lab.add_host("concentrator")
    for label in ("laptop", "Laptop", "has-dash", "concentrator1"):
        with pytest.raises(ValueError, match="host label"):
            netns_lab.add_host(label)
    first = netns_lab.link(laptop, conc)
    second = netns_lab.link(laptop, conc, mtu=1280)
    assert (first.ifname_a, first.ifname_b) == ("to-concentrator", "to-laptop")
    assert (second.ifname_a, second.ifname_b) == ("to-concentrato2", "to-laptop2")
    assert "mtu 1280" in conc.ip("link", "show", "dev", "to-laptop2").stdout
    with pytest.raises(ValueError, match="laptop already has an interface 'to-concentrator'"):
        netns_lab.link(laptop, conc, ifname_a="to-concentrator", ifname_b="spare")


def _is_zombie(pid: int) -> bool:
    """A killed child of an exited shell may linger as a zombie until init reaps it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"
