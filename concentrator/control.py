"""The concentrator's local control socket: one JSON request per line, one JSON answer per line.

Protocol (a line-oriented cousin of strongSwan's vici, without the event
stream, which nothing needs yet)::

    -> {"command": "status" | "sessions" | "disconnect" | "reload", "arguments": {...}}
    <- {"ok": true, "result": ...}   or   {"ok": false, "error": "one line"}

A connection may carry several requests in turn. ``disconnect`` takes
``{"id": <tunnel id>}``; the others take no arguments.

Who may ask is decided by the file system, as for charon's vici socket: the
socket is mode 0600 in a directory we create 0700, so only its owner (root,
who runs the service) connects. It is bound under a temporary name, chmod'ed,
then renamed into place, so there is no moment at which it exists with the
umask's permissions.

The server must never fall over because of a client: garbage, an unknown
command, a request beyond ``MAX_REQUEST_BYTES``, a client that goes away
mid-request or never finishes its line all end with an error answer or a
closed connection, never an exception out of the server. A failing
``ServiceView`` method becomes an error answer too (and a logged traceback).

``control_request`` is the blocking client the CLI uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from concentrator.status import ServiceView

log = logging.getLogger("outpost.concentrator.control")

MAX_REQUEST_BYTES: Final = 64 * 1024
# Answers are not capped by the server (a sessions list of thousands of
# tunnels is legitimately large); the client refuses absurd ones.
MAX_RESPONSE_BYTES: Final = 64 * 1024 * 1024
IDLE_TIMEOUT_S: Final = 30.0
MAX_CLIENTS: Final = 32
COMMANDS: Final = ("status", "sessions", "disconnect", "reload")


class ControlError(Exception):
    """The control socket could not be used, or the concentrator refused the request."""


# --- requests -----------------------------------------------------------------------------


def handle_request(view: ServiceView, line: bytes) -> dict[str, Any]:
    """One request line to its answer; never raises (the server's only decision point).

    Kept apart from the socket handling so every malformed input is testable
    without a socket.
    """
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return _error("request is not valid JSON")
    if not isinstance(request, dict):
        return _error("request must be a JSON object")
    command = request.get("command")
    arguments = request.get("arguments", {})
    if arguments is None:
        arguments = {}
    if not isinstance(command, str) or command not in COMMANDS:
        return _error(f"unknown command {command!r}; expected one of {', '.join(COMMANDS)}")
    if not isinstance(arguments, dict):
        return _error("arguments must be a JSON object")
    try:
        call = _bind(view, command, arguments)
    except ValueError as error:
        return _error(f"{command}: {error}")
    try:
        result = call()
    except Exception as error:
        # A bug or a refused reload: the client gets one line, the log the traceback.
        log.exception("control command %s failed", command)
        return _error(f"{command} failed: {_one_line(error)}")
    return {"ok": True, "result": result}


def _bind(view: ServiceView, command: str, arguments: dict[str, Any]) -> Callable[[], Any]:
    """The view method for ``command`` with its checked arguments (ValueError if wrong)."""
    expected = {"disconnect": {"id"}}.get(command, set())
    unknown = set(arguments) - expected
    if unknown:
        raise ValueError(f"unknown argument {sorted(unknown)[0]!r}")
    if command == "disconnect":
        tunnel_id = arguments.get("id")
        if isinstance(tunnel_id, bool) or not isinstance(tunnel_id, int):
            raise ValueError('needs {"id": <tunnel id, an integer>}')
        return lambda: view.disconnect(tunnel_id)
    methods: dict[str, Callable[[], Any]] = {
        "status": view.status,
        "sessions": view.sessions,
        "reload": view.reload,
    }
    return methods[command]


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def encode_response(response: dict[str, Any]) -> bytes:
    """The answer line; a result that is not JSON-able becomes an error, not a dead connection."""
    try:
        text = json.dumps(response, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        log.error("control answer is not JSON-able: %s", error)
        text = json.dumps(_error("internal error: the answer could not be encoded"))
    return text.encode() + b"\n"


# --- server ----------------------------------------------------------------------------


class ControlServer:
    """The Unix-socket server answering ``ServiceView`` questions on the service's loop.

    Drivers: the service awaits ``start()`` once its view works and
    ``close()`` on the way out (or uses ``async with``). Requests run on the
    event loop, so the view may read the manager without locks.
    """

    def __init__(
        self,
        view: ServiceView,
        path: Path | str,
        *,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.view = view
        self.path = Path(path)
        self.idle_timeout_s = idle_timeout_s
        self.max_clients = max_clients
        self._server: asyncio.Server | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        """Bind the socket (replacing a stale one) and start answering.

        Raises:
            ControlError: the path is not usable, or another concentrator listens there.
        """
        if self._server is not None:
            raise RuntimeError("control server already started")
        sock = bind_control_socket(self.path)
        info = os.stat(self.path)
        self._identity = (info.st_dev, info.st_ino)
        self._server = await asyncio.start_unix_server(
            self._serve_client, sock=sock, limit=MAX_REQUEST_BYTES
        )
        log.info("control socket %s", self.path)

    async def close(self) -> None:
        """Stop listening, hang up on clients, remove our socket file (not a successor's)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._writers):
            writer.close()
        await server.wait_closed()
        with contextlib.suppress(OSError):
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == self._identity:
                self.path.unlink()

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One connection: answer lines until EOF, an error that ends it, or idleness."""
        if len(self._writers) >= self.max_clients:
            await _send(writer, _error("too many control clients; try again"))
            await _hang_up(writer)
            return
        self._writers.add(writer)
        try:
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), self.idle_timeout_s)
                except TimeoutError:
                    return  # a client that never finishes its line holds nothing for long
                except ValueError:
                    # StreamReader's limit: no newline within MAX_REQUEST_BYTES. The
                    # rest of that line is still coming, so the stream cannot resync.
                    await _send(writer, _error(f"request exceeds {MAX_REQUEST_BYTES} bytes"))
                    return
                except ConnectionError:
                    return
                if not line.strip():
                    if not line:
                        return  # EOF
                    continue  # blank keep-alive lines are ignored
                if not await _send(writer, handle_request(self.view, line)):
                    return
                if not line.endswith(b"\n"):
                    return  # EOF after an unterminated (but answered) request
        finally:
            self._writers.discard(writer)
            await _hang_up(writer)


async def _send(writer: asyncio.StreamWriter, response: dict[str, Any]) -> bool:
    """Write one answer; False if the client is gone (which is its business, not ours)."""
    try:
        writer.write(encode_response(response))
        await writer.drain()
    except (ConnectionError, OSError):
        return False
    return True


async def _hang_up(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError):
        await writer.wait_closed()


def bind_control_socket(path: Path) -> socket.socket:
    """A listening-ready Unix socket at ``path``, mode 0600, replacing a stale socket file.

    Raises:
        ControlError: ``path`` is something other than a socket (we never
            delete an admin's file), a live concentrator answers on it, or the
            path cannot be bound (too long for ``sun_path``, read-only, ...).
    """
    parent = path.parent
    if not parent.exists():
        try:
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise ControlError(f"cannot create {parent}: {error.strerror}") from None
    _remove_stale(path)
    temporary = parent / f".ctl{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(temporary))
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except OSError as error:
        sock.close()
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise ControlError(
            f"cannot bind control socket {path}: {error.strerror or error}"
        ) from None
    return sock


def _remove_stale(path: Path) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ControlError(f"{path} exists and is not a socket; remove it or choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody listens: left by a crash
        return
    finally:
        probe.close()
    raise ControlError(f"another concentrator is listening on {path}")


# --- client ----------------------------------------------------------------------------


def control_request(
    socket_path: Path | str,
    command: str,
    arguments: dict[str, Any] | None = None,
    timeout: float = 5.0,
) -> Any:
    """Ask the running concentrator one question and return the ``result`` of its answer.

    Blocking on purpose: the CLI asks once and exits.

    Raises:
        ControlError: no concentrator (missing socket or nobody listening),
            no permission, no answer within ``timeout`` seconds, or the
            concentrator's own ``error`` line.
    """
    path = Path(socket_path)
    request = json.dumps({"command": command, "arguments": arguments or {}}).encode() + b"\n"
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            raise ControlError(f"is the concentrator running? no socket at {path}") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path} (run as its owner, root)") from None
        except TimeoutError:
            raise ControlError(f"the concentrator did not accept within {timeout:g} s") from None
        except OSError as error:
            raise ControlError(f"cannot reach the concentrator at {path}: {error}") from None
        try:
            sock.sendall(request)
            line = _read_line(sock, deadline)
        except TimeoutError:
            raise ControlError(f"the concentrator did not answer within {timeout:g} s") from None
        except OSError as error:
            raise ControlError(f"control connection failed: {error}") from None
    return _parse_response(line)


def _read_line(sock: socket.socket, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            raise ControlError("the concentrator closed the connection without an answer")
        newline = chunk.find(b"\n")
        if newline >= 0:
            chunks.append(chunk[:newline])
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise ControlError(f"answer exceeds {MAX_RESPONSE_BYTES} bytes")


def _parse_response(line: bytes) -> Any:
    try:
        response = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise ControlError("the concentrator's answer is not valid JSON") from None
    if not isinstance(response, dict) or not isinstance(response.get("ok"), bool):
        raise ControlError("the concentrator's answer is malformed")
    if not response["ok"]:
        raise ControlError(str(response.get("error") or "request refused"))
    return response.get("result")
