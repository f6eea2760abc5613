"""The CI rule itself: an environment-dependent skip must fail when CI is set."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run_inner_suite(tmp_path: Path, ci_value: str | None) -> subprocess.CompletedProcess[str]:
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.mark.needs_tool("definitely-not-an-installed-program-xyz")
            def test_needs_missing_tool():
                pass

            def test_plain_skip_is_fine():
                pytest.skip("not environment dependent")
            """
        )
    )
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    env = {"PATH": "/usr/bin:/bin"}
    if ci_value is not None:
        env["CI"] = ci_value
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--strict-markers",
            "-o",
            "markers=privileged\nneeds_tool(name)",
            str(test_file),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(("ci_value", "expect_failure"), [(None, False), ("true", True)])
def test_environment_dependent_skip_fails_only_in_ci(
    tmp_path: Path, ci_value: str | None, expect_failure: bool
) -> None:
    result = _run_inner_suite(tmp_path, ci_value)
    # A skip raised during setup turns into a setup error: either way the run fails.
    assert (result.returncode != 0) is expect_failure, result.stdout
    assert ("1 error" in result.stdout) is expect_failure, result.stdout
    # The ordinary skip (not environment dependent) stays a skip in both cases.
    assert "1 skipped" in result.stdout or "2 skipped" in result.stdout, result.stdout
