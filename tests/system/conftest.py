"""System tier: real network namespaces, veth links and TUN devices (DESIGN.md tier 5).

``netns_lab`` gives each test its own :class:`~tests.helpers.netns.NetnsLab`,
torn down whatever the test does. A test that uses it is marked
``privileged`` automatically, so without root it skips (and fails in CI)
instead of erroring in the fixture.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.netns import NetnsLab


@pytest.fixture
def netns_lab() -> Iterator[NetnsLab]:
    """A fresh namespace lab; stale namespaces of dead runs are removed first."""
    with NetnsLab() as lab:
        yield lab


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "netns_lab" in getattr(item, "fixturenames", ()) and not item.get_closest_marker(
            "privileged"
        ):
            item.add_marker(pytest.mark.privileged)
