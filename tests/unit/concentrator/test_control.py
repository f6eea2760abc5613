"""The control socket: each command, its permissions, and a server no client can knock over.

A fake ``ServiceView`` answers; the server runs on a socket in ``tmp_path``.
The CLI tests start the server on a thread with its own loop and run
``outpost-concentrator`` as a subprocess against it, as an admin would.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from concentrator.cli import main
from concentrator.control import (
    MAX_REQUEST_BYTES,
    ControlError,
    ControlServer,
    control_request,
    handle_request,
)

REPO = Path(__file__).resolve().parents[3]

STATUS: dict[str, Any] = {
    "version": "0.1.0",
    "uptime_s": 3723.5,
    "listen": ["192.0.2.1"],
    "tunnels": 1,
    "half_open": 0,
    "pool": {"ipv4": {"size": 253, "active": 1, "released": 0, "free": 252}},
    "handshakes": {"established": 4, "failed": 1},
    "handshake_failures": {"AUTHENTICATION_FAILED": 1},
    "closures": {"dead peer": 3},
    "ike_drops": {},
    "dataplane": {
        "inbound": {"packets": 10, "bytes": 2048, "drops": {"replayed": 2}, "other": {}},
        "outbound": {"packets": 12, "bytes": 4096, "drops": {}, "other": {}},
    },
    "memory": {"concentrator": 50 << 20},
}
SESSIONS: list[dict[str, Any]] = [
    {
        "id": 7,
        "identity": "alice@example.org",
        "outer": "198.51.100.7:4500",
        "local": "192.0.2.1:4500",
        "inner": ["10.99.0.2"],
        "ike_suite": "aes256gcm16/prfsha256/x25519",
        "esp_suite": "aes256gcm16",
        "established_at": 1_700_000_000.0,
        "uptime_s": 125.0,
        "state": "established",
        "child_sas": [],
        "packets_in": 3,
        "bytes_in": 1536,
        "packets_out": 4,
        "bytes_out": 3 << 20,
    }
]


class FakeView:
    """A ``ServiceView`` with canned answers that records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.fail: str | None = None

    def _called(self, name: str, argument: object = None) -> None:
        self.calls.append((name, argument))
        if self.fail == name:
            raise RuntimeError(f"{name} exploded\nsecond line")

    def status(self) -> dict[str, Any]:
        self._called("status")
        return STATUS

    def sessions(self) -> list[dict[str, Any]]:
        self._called("sessions")
        return SESSIONS

    def disconnect(self, tunnel_id: int) -> bool:
        self._called("disconnect", tunnel_id)
        return tunnel_id == 7

    def reload(self) -> dict[str, Any]:
        self._called("reload")
        return {"added": ["bob"], "removed": [], "changed": [], "restart_required": ["pool.ipv4"]}


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "control.sock"


@pytest_asyncio.fixture
async def server(socket_path: Path) -> AsyncIterator[ControlServer]:
    errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    control = ControlServer(FakeView(), socket_path)
    await control.start()
    yield control
    await control.close()
    assert not errors, errors  # nothing a client did escaped as an unhandled error


async def _exchange(path: Path, *lines: bytes) -> list[dict[str, Any]]:
    """Send ``lines`` on one connection; every answer line until the server hangs up."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    for line in lines:
        writer.write(line)
    await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
    answers = [json.loads(line) for line in (await reader.read()).splitlines()]
    writer.close()
    await writer.wait_closed()
    return answers


def _mode(path: Path) -> int:
    """Permission bits of ``path`` itself (a sync helper: tests read the file system directly)."""
    return stat.S_IMODE(path.lstat().st_mode)


def _is_socket(path: Path) -> bool:
    return path.exists() and stat.S_ISSOCK(path.lstat().st_mode)


async def _ask(path: Path, command: str, arguments: dict[str, Any] | None = None) -> Any:
    return await asyncio.to_thread(control_request, path, command, arguments)


# --- protocol ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_each_command(server: ControlServer, socket_path: Path) -> None:
    assert await _ask(socket_path, "status") == STATUS
    assert await _ask(socket_path, "sessions") == SESSIONS
    assert await _ask(socket_path, "disconnect", {"id": 7}) is True
    assert await _ask(socket_path, "disconnect", {"id": 8}) is False
    assert (await _ask(socket_path, "reload"))["added"] == ["bob"]
    view = server.view
    assert isinstance(view, FakeView)
    assert view.calls == [
        ("status", None),
        ("sessions", None),
        ("disconnect", 7),
        ("disconnect", 8),
        ("reload", None),
    ]


@pytest.mark.asyncio
async def test_socket_is_0600_in_a_0700_directory(server: ControlServer, socket_path: Path) -> None:
    assert _is_socket(socket_path)
    assert _mode(socket_path) == 0o600
    assert _mode(socket_path.parent) == 0o700
    assert os.listdir(socket_path.parent) == ["control.sock"]  # no temporary left


@pytest.mark.asyncio
async def test_several_requests_on_one_connection_and_garbage_between(
    server: ControlServer, socket_path: Path
) -> None:
    answers = await _exchange(
        socket_path,
        b'{"command": "status"}\n',
        b"this is not json\n",
        b"\xff\xfe\x00garbage\n",
        b"[1, 2, 3]\n",
        b'{"command": "rm -rf /"}\n',
        b'{"command": 42}\n',
        b'{"command": "status", "arguments": [1]}\n',
        b'{"command": "status", "arguments": {"verbose": true}}\n',
        b'{"command": "disconnect", "arguments": {"id": "7"}}\n',
        b'{"command": "disconnect", "arguments": {"id": true}}\n',
        b'{"command": "disconnect"}\n',
        b"\n",
        b'{"command": "disconnect", "arguments": {"id": 7}}\n',
    )
    assert [a["ok"] for a in answers] == [True] + [False] * 10 + [True]
    errors = [a["error"] for a in answers[1:-1]]
    assert errors[0] == "request is not valid JSON"
    assert errors[1] == "request is not valid JSON"
    assert errors[2] == "request must be a JSON object"
    assert errors[3].startswith("unknown command 'rm -rf /'")
    assert "status, sessions, disconnect, reload" in errors[3]
    assert errors[4].startswith("unknown command 42")
    assert errors[5] == "arguments must be a JSON object"
    assert errors[6] == "status: unknown argument 'verbose'"
    assert errors[7:] == ['disconnect: needs {"id": <tunnel id, an integer>}'] * 3
    assert answers[-1] == {"ok": True, "result": True}


@pytest.mark.asyncio
async def test_an_oversized_request_gets_an_error_and_the_server_goes_on(
    server: ControlServer, socket_path: Path
) -> None:
    filler = b'{"command": "status", "arguments": {"x": "' + b"a" * (MAX_REQUEST_BYTES + 100)
    answers = await _exchange(socket_path, filler + b'"}}\n', b'{"command": "status"}\n')
    assert answers == [{"ok": False, "error": f"request exceeds {MAX_REQUEST_BYTES} bytes"}]
    assert await _ask(socket_path, "status") == STATUS
    # Just under the cap is a request like any other (here: a refused argument).
    padded = b'{"command": "status", "arguments": {"x": "' + b"a" * (MAX_REQUEST_BYTES - 50)
    (answer,) = await _exchange(socket_path, padded + b'"}}\n')
    assert answer == {"ok": False, "error": "status: unknown argument 'x'"}


@pytest.mark.asyncio
async def test_an_unterminated_request_at_eof_is_answered(
    server: ControlServer, socket_path: Path
) -> None:
    assert await _exchange(socket_path, b'{"command": "disconnect", "arguments": {"id": 7}}') == [
        {"ok": True, "result": True}
    ]


@pytest.mark.asyncio
async def test_clients_that_vanish_mid_request_do_no_harm(
    server: ControlServer, socket_path: Path
) -> None:
    for partial in (b'{"comm', b'{"command": "status"}\n', b"x" * (MAX_REQUEST_BYTES * 2)):
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(str(socket_path))
        raw.sendall(partial)
        # Reset instead of a clean close where we can: the server's answer meets a dead peer.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        raw.close()
    # A large answer to a client that never reads it and goes away.
    _reader, writer = await asyncio.open_unix_connection(str(socket_path))
    writer.write(b'{"command": "sessions"}\n' * 200)
    await writer.drain()
    writer.close()
    await asyncio.sleep(0.05)
    assert await _ask(socket_path, "status") == STATUS


@pytest.mark.asyncio
async def test_many_clients_at_once(server: ControlServer, socket_path: Path) -> None:
    results = await asyncio.gather(
        *(_ask(socket_path, "disconnect", {"id": n}) for n in range(20)),
        *(_ask(socket_path, "status") for _ in range(10)),
    )
    assert results[:20] == [n == 7 for n in range(20)]
    assert results[20:] == [STATUS] * 10


@pytest.mark.asyncio
async def test_a_failing_view_is_an_error_answer(server: ControlServer, socket_path: Path) -> None:
    view = server.view
    assert isinstance(view, FakeView)
    view.fail = "reload"
    with pytest.raises(ControlError, match=r"^reload failed: reload exploded second line$"):
        await _ask(socket_path, "reload")
    view.fail = None
    assert (await _ask(socket_path, "reload"))["restart_required"] == ["pool.ipv4"]


@pytest.mark.asyncio
async def test_an_unencodable_result_is_an_error_answer(socket_path: Path) -> None:
    class OddView(FakeView):
        def status(self) -> dict[str, Any]:
            return {"when": object()}

    async with ControlServer(OddView(), socket_path):
        with pytest.raises(ControlError, match="could not be encoded"):
            await _ask(socket_path, "status")
        assert await _ask(socket_path, "sessions") == SESSIONS


@pytest.mark.asyncio
async def test_idle_and_surplus_clients_are_hung_up_on(socket_path: Path) -> None:
    async with ControlServer(FakeView(), socket_path, idle_timeout_s=0.2, max_clients=2):
        idle = [await asyncio.open_unix_connection(str(socket_path)) for _ in range(2)]
        await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_unix_connection(str(socket_path))
        assert json.loads(await reader.readline())["error"].startswith("too many control clients")
        writer.close()
        for reader, _writer in idle:  # closed by the server once idle
            assert await asyncio.wait_for(reader.read(), 2.0) == b""
        for _reader, writer in idle:
            writer.close()
        assert await _ask(socket_path, "status") == STATUS


@pytest.mark.asyncio
async def test_close_removes_the_socket_and_a_stale_one_is_replaced(socket_path: Path) -> None:
    socket_path.parent.mkdir(mode=0o755)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_path))  # bound, never listened, closed: what a crash leaves
    stale.close()
    os.chmod(socket_path, 0o666)
    control = ControlServer(FakeView(), socket_path)
    await control.start()
    assert _mode(socket_path) == 0o600
    assert await _ask(socket_path, "status") == STATUS
    await control.close()
    assert not _is_socket(socket_path)
    with pytest.raises(ControlError, match="is the concentrator running"):
        await _ask(socket_path, "status")


@pytest.mark.asyncio
async def test_a_live_socket_or_a_regular_file_is_not_replaced(
    server: ControlServer, socket_path: Path
) -> None:
    with pytest.raises(ControlError, match="another concentrator is listening"):
        await ControlServer(FakeView(), socket_path).start()
    assert await _ask(socket_path, "status") == STATUS
    regular = socket_path.parent / "not-a-socket"
    regular.write_text("precious")
    with pytest.raises(ControlError, match="exists and is not a socket"):
        await ControlServer(FakeView(), regular).start()
    assert regular.read_text() == "precious"


def test_not_running_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.sock"
    with pytest.raises(ControlError) as caught:
        control_request(missing, "status")
    assert str(caught.value) == f"is the concentrator running? no socket at {missing}"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(missing))  # a socket file nobody listens on: refused
    dead.close()
    with pytest.raises(ControlError, match="is the concentrator running"):
        control_request(missing, "status")


def test_a_silent_server_times_out(tmp_path: Path) -> None:
    path = tmp_path / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    try:
        with pytest.raises(ControlError, match=r"did not answer within 0\.2 s"):
            control_request(path, "status", timeout=0.2)
    finally:
        listener.close()


def test_handle_request_never_raises() -> None:
    view = FakeView()
    for line in (b"", b"null", b"1e999", b'{"command": null}', b'"status"', b"{" * 10_000):
        answer = handle_request(view, line)
        assert answer["ok"] is False
    view.fail = "status"
    assert handle_request(view, b'{"command": "status"}')["ok"] is False


# --- the CLI against a running server ------------------------------------------------------


@pytest.fixture
def running(socket_path: Path) -> Iterator[Path]:
    """A control server on a thread with its own loop, as the service would run it."""
    loop = asyncio.new_event_loop()
    control = ControlServer(FakeView(), socket_path)
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(control.start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(control.close())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10)
    yield socket_path
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "concentrator.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )


def test_cli_status_human_and_json(running: Path) -> None:
    result = _cli("status", "--socket", str(running))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "outpost concentrator 0.1.0, up 1h 2m"
    assert "tunnels:     1 (half-open IKE SAs: 0)" in lines
    assert "handshakes:  4 established, 1 failed (AUTHENTICATION_FAILED 1)" in lines
    assert "pool ipv4:   1 active of 253, 0 released, 252 free" in lines
    assert "esp in:      10 packets, 2 KiB, drops: replayed 2" in lines
    assert "memory:      concentrator 50 MiB" in lines
    result = _cli("status", "--json", "--socket", str(running))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == STATUS


def test_cli_sessions_table_and_json(running: Path) -> None:
    result = _cli("sessions", "--socket", str(running))
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == list(
        ("ID", "IDENTITY", "OUTER", "INNER", "STATE", "UPTIME", "IN", "OUT", "ESP")
    )
    assert row.split() == [
        "7",
        "alice@example.org",
        "198.51.100.7:4500",
        "10.99.0.2",
        "established",
        "2m",
        "5s",
        "1.5",
        "KiB",
        "3",
        "MiB",
        "aes256gcm16",
    ]
    assert header.index("OUTER") == row.index("198.51.100.7:4500")  # columns line up
    result = _cli("sessions", "--json", "--socket", str(running))
    assert json.loads(result.stdout) == SESSIONS


def test_cli_disconnect_by_id_and_identity(
    running: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = _cli("disconnect", "7", "--socket", str(running))
    assert (result.returncode, result.stdout, result.stderr) == (0, "session 7 disconnected\n", "")
    result = _cli("disconnect", "8", "--socket", str(running))
    assert result.returncode == 1
    assert result.stderr == "outpost-concentrator: no session with id 8\n"
    assert main(["disconnect", "alice@example.org", "--socket", str(running)]) == 0
    assert capsys.readouterr().out == "session 7 disconnected\n"
    assert main(["disconnect", "nobody@example.org", "--socket", str(running)]) == 1
    assert capsys.readouterr().err == "outpost-concentrator: no session of nobody@example.org\n"


def test_cli_reload(running: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reload", "--socket", str(running)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "reloaded users: 1 added (bob), 0 removed, 0 changed",
        "restart required for: pool.ipv4",
    ]
    assert main(["reload", "--json", "--socket", str(running)]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == ["bob"]


def test_cli_when_not_running_is_one_line_exit_1(tmp_path: Path) -> None:
    missing = tmp_path / "control.sock"
    for command in (["status"], ["sessions", "--json"], ["disconnect", "3"], ["reload"]):
        result = _cli(*command, "--socket", str(missing))
        assert result.returncode == 1, command
        assert result.stdout == ""
        assert result.stderr == (
            f"outpost-concentrator: is the concentrator running? no socket at {missing}\n"
        )
