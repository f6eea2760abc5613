"""``outpost``: one-line errors and exit codes, and ``status`` against a live status socket."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from client import cli
from client.state import ClientStatus, TunnelInfo, TunnelState
from client.statusd import StatusView
from concentrator.control import ControlServer

REPO = Path(__file__).resolve().parents[3]


def run_outpost(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real entry point in a fresh interpreter (what a person sees, tracebacks included)."""
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def test_status_with_no_client_is_one_line_exit_1(tmp_path: Path) -> None:
    result = run_outpost("status", "--socket", str(tmp_path / "nobody.sock"))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == "outpost: no Outpost client is running\n"


def test_status_looks_in_the_default_places(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "stale.sock"
    stale.write_text("")  # not a socket: nobody listens there
    monkeypatch.setattr(cli, "candidate_socket_paths", lambda: [tmp_path / "x.sock", stale])
    assert cli.main(["status"]) == 1
    assert capsys.readouterr().err == "outpost: no Outpost client is running\n"


def test_up_with_a_broken_profile_is_one_line_exit_2(tmp_path: Path) -> None:
    profile = tmp_path / "office.toml"
    profile.write_text('[gateway]\naddress = "vpn.example.com"\n[auth]\nid = "alice@example.com"\n')
    result = run_outpost("up", "--profile", str(profile))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("outpost: ")
    assert str(profile) in lines[0]
    assert "psk" in lines[0]  # names the key that is missing


def test_up_with_a_missing_profile_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["up", "--profile", str(tmp_path / "nothere.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "cannot read" in err


def test_up_with_toml_garbage_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = tmp_path / "office.toml"
    profile.write_text("[gateway\naddress = ")
    assert cli.main(["up", "--profile", str(profile)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "TOML" in err


def test_profiles_lists_good_and_broken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "outpost" / "profiles"
    folder.mkdir(parents=True)
    (folder / "office.toml").write_text(
        '[gateway]\naddress = "vpn.example.com"\n[auth]\nid = "a@example.com"\npsk = "s3cret-psk"\n'
        '[tunnel]\nmode = "full"\n'
    )
    (folder / "lab.toml").write_text("[gateway]\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert cli.main(["profiles"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("lab")
    assert "broken" in out[0]
    assert out[1].split() == ["office", "vpn.example.com", "full"]
    assert "s3cret" not in "\n".join(out)


def test_profiles_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert cli.main(["profiles"]) == 0
    assert capsys.readouterr().out == f"no profiles in {tmp_path}/outpost/profiles\n"


STATUS = ClientStatus(
    TunnelState.CONNECTED,
    "office",
    "vpn.example.com",
    tunnel=TunnelInfo(
        gateway="192.0.2.1:4500",
        gateway_identity="vpn.example.com",
        inner_ipv4="10.99.100.2",
        inner_ipv6=None,
        dns=("10.99.0.53",),
        routes=("10.99.0.0/24",),
        mode="split",
        ike_suite="aes256gcm16/prfsha256/x25519",
        esp_suite="aes256gcm16",
        inbound_spi="c0ffee01",
        outbound_spi="c0ffee02",
        established_at=1.0,
        next_rekey_at=None,
    ),
)


@pytest.mark.asyncio
async def test_status_asks_the_running_client(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "client.sock"

    async def disconnect() -> None:
        return None

    loop = asyncio.get_running_loop()
    async with ControlServer(StatusView(lambda: STATUS, disconnect), path):
        assert await loop.run_in_executor(None, cli.main, ["status", "--socket", str(path)]) == 0
        human = capsys.readouterr().out
        assert human.splitlines()[0] == "office: connected (vpn.example.com)"
        assert "10.99.100.2" in human
        assert "10.99.0.0/24" in human
        code = await loop.run_in_executor(
            None, cli.main, ["status", "--json", "--socket", str(path)]
        )
        assert code == 0
        assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(STATUS.to_json()))
