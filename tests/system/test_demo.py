"""``make demo`` works, says what happened, and leaves nothing behind.

The demo is the README's main command, so it gets the test a person's first
run would be: ``bench/demo.py`` run as ``make demo`` runs it (the venv's
python; the venv is already built here, so ``make`` itself would only add
time), and its output read as text. Besides exit 0 and the summary lines,
nothing may outlive it: no namespace of its own and no process it started.

Every process the demo starts inherits its environment, so a random marker
variable finds them all in ``/proc/*/environ`` afterwards, whatever they are
(concentrator, client, iperf3, ping) and whoever they were reparented to.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

pytestmark = [pytest.mark.privileged, pytest.mark.needs_tool("iperf3")]

REPO: Final = Path(__file__).resolve().parents[2]
POOL: Final = ipaddress.ip_network("10.99.100.0/24")
MARKER: Final = "OUTPOST_DEMO_TEST_MARK"


def marked_processes(token: str) -> list[int]:
    """Pids whose environment holds ``MARKER=token`` (the demo's children, if any lived on)."""
    needle = f"{MARKER}={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry))
    return found


def namespaces_of(pid: int) -> list[str]:
    """The demo's namespaces (``odemo<pid>-...``) that still exist."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    return [name for name in names if name.startswith(f"odemo{pid}-")]


def test_make_demo_prints_the_tunnel_and_cleans_up() -> None:
    token = secrets.token_hex(8)
    demo = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "demo.py")],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, MARKER: token},
    )
    try:
        out, err = demo.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        demo.kill()
        out, err = demo.communicate()
        pytest.fail(f"the demo ran for more than 180 s:\n{out}\n{err}")
    report = f"stdout:\n{out}\nstderr:\n{err}"
    assert demo.returncode == 0, report

    laptop = re.search(
        r"^  laptop +192\.0\.2\.2 +leased (\S+), suite (\S+) \(IKE (\S+)\)$", out, re.M
    )
    assert laptop, report
    assert ipaddress.ip_address(laptop.group(1)) in POOL, report
    assert laptop.group(2) == "aes256gcm16", report

    ping = re.search(
        r"^  ping +10\.99\.0\.10: (\d+)/(\d+) replies, rtt ([\d.]+) ms avg$", out, re.M
    )
    assert ping, report
    assert ping.group(1) == ping.group(2) == "5", report

    iperf = re.search(
        r"^  iperf3 +laptop -> office (\d+) Mbit/s, office -> laptop (\d+) Mbit/s$", out, re.M
    )
    assert iperf, report
    assert int(iperf.group(1)) > 0, report
    assert int(iperf.group(2)) > 0, report

    assert re.search(r"^  disconnect +Delete sent .*routes and DNS restored$", out, re.M), report

    assert namespaces_of(demo.pid) == [], report
    assert marked_processes(token) == [], report
