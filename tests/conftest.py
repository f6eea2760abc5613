"""Test-wide hooks: environment-dependent skips that must never pass CI silently.

Tests marked ``privileged`` (root, network namespaces, TUN devices) or
``needs_tool("name")`` (an external program such as tshark, iperf3, charon)
skip on a developer laptop that lacks them. When the ``CI`` environment
variable is set, such a skip is reported as a failure instead: CI must never
go green by skipping the system, interop or cross-check tiers (DEVELOPERS.md).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator

import pytest

ENV_DEPENDENT_MARKERS = ("privileged", "needs_tool")


def running_in_ci() -> bool:
    """CI sets ``CI``; an empty value or "false"/"0" does not count."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("privileged") is not None:
        if os.geteuid() != 0:
            pytest.skip("needs root (network namespaces, TUN devices)")
        if shutil.which("ip") is None:
            pytest.skip("needs iproute2 (`ip`)")
    for marker in item.iter_markers("needs_tool"):
        for tool in marker.args:
            if shutil.which(tool) is None and not os.path.exists(tool):
                pytest.skip(f"needs {tool}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # An expected failure is reported as skipped with ``wasxfail``: it is not
    # an environment skip and must keep its meaning in CI.
    was_xfail = hasattr(report, "wasxfail")
    if report.skipped and not was_xfail and running_in_ci() and _is_environment_dependent(item):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which counts as a failure: {reason}"
    return report


def _is_environment_dependent(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(name) is not None for name in ENV_DEPENDENT_MARKERS)
