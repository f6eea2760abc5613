"""``outpost-concentrator check-config``: exit 0 with a summary, 2 with one line, no traceback.

Named ``test_concentrator_cli.py`` so its basename is unique in the suite.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from concentrator.cli import main
from tests.helpers.concentrator_config import ALICE_PSK, base_document, write_config

REPO = Path(__file__).resolve().parents[3]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "concentrator.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def test_check_config_ok_prints_summary(tmp_path: Path) -> None:
    result = _cli("check-config", "--config", str(write_config(tmp_path, base_document())))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
    assert "3 (1 patterns)" in result.stdout  # users
    assert "253 addresses" in result.stdout  # pool size of a /24 less gateway
    assert "127.0.0.1, ::1" in result.stdout  # listen addresses
    assert ALICE_PSK not in result.stdout + result.stderr


def test_check_config_example() -> None:
    result = _cli("check-config", "--config", str(REPO / "deploy" / "concentrator.example.toml"))
    assert result.returncode == 0, result.stderr


def test_check_config_error_is_one_line_exit_2(tmp_path: Path) -> None:
    document = base_document()
    document["users"][0]["psk"] = "tiny"
    document["users"][0]["pks"] = ALICE_PSK
    result = _cli("check-config", "--config", str(write_config(tmp_path, document)))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(str(tmp_path / "concentrator.toml") + ": users[0].")
    assert "Traceback" not in result.stderr
    assert ALICE_PSK not in result.stderr
    assert "tiny" not in result.stderr


def test_missing_config_file_exit_2(tmp_path: Path) -> None:
    result = _cli("check-config", "--config", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_entry_point_is_installed() -> None:
    script = Path(sys.executable).parent / "outpost-concentrator"
    assert script.exists(), "pip install -e . registers [project.scripts]"
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    for command in ("run", "check-config", "status", "sessions", "disconnect"):
        assert command in result.stdout


def test_run_with_bad_config_exits_2_before_importing_the_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = base_document()
    document["pool"]["ipv4"] = "10.99.0.0/24"  # overlaps the LAN
    assert main(["run", "--config", str(write_config(tmp_path, document))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "pool.ipv4" in err
