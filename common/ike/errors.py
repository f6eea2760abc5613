"""The IKE core's error hierarchy (h11 style, STYLE.md "Error handling").

Errors are raised deep (in a codec or a task) and caught once, in
``IkeSession.receive_datagram``, which then applies RFC 7296 section 2.21:
unauthenticated junk is dropped and counted, authenticated errors are answered
with the Notify that ``notify`` names. Keeping the hint on the exception means
the catcher never has to guess which Notify an error deserves.

- ``LocalProtocolError``: we refuse something, or the caller misused the API.
- ``RemoteProtocolError``: the peer violated the protocol.
- ``MalformedMessage``: the only error a parser may raise (a ``ValueError``
  too, so generic code that already catches ``ValueError`` keeps working).
"""

from __future__ import annotations

from common.ike.constants import NotifyType


class IkeError(Exception):
    """Abstract base of every IKE core error; never raised as itself.

    Attributes:
        notify: the Notify the peer should get for this error (RFC 7296 3.10.1),
            or None when nothing should be sent (junk is dropped, RFC 7296 2.21).
        notify_data: the Notification Data to send with ``notify``.
    """

    notify: NotifyType | None
    notify_data: bytes

    def __init__(
        self, message: str, notify: NotifyType | None = None, notify_data: bytes = b""
    ) -> None:
        if type(self) is IkeError:
            raise TypeError("IkeError is abstract; raise a subclass")  # as h11's ProtocolError
        super().__init__(message)
        self.notify = notify
        self.notify_data = notify_data


class LocalProtocolError(IkeError):
    """We refuse to go on (policy, or the caller misused the API)."""


class RemoteProtocolError(IkeError):
    """The peer violated the protocol; ``notify`` says what to tell it."""


class MalformedMessage(RemoteProtocolError, ValueError):  # noqa: N818 (STYLE.md name)
    """Bytes that do not parse: RFC 7296 3.10.1 INVALID_SYNTAX.

    The only exception a parser raises (STYLE.md), so fuzzing can check that
    no ``IndexError`` or ``struct.error`` ever leaks out of the codecs.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, NotifyType.INVALID_SYNTAX)


class InvalidMajorVersionError(RemoteProtocolError):
    """The IKE header's major version is not 2 (RFC 7296 2.5, 3.1).

    Not a MalformedMessage: the bytes may well be a valid IKEv3 (or IKEv1)
    message, and the answer differs (INVALID_MAJOR_VERSION, not INVALID_SYNTAX).
    """

    def __init__(self, major_version: int) -> None:
        super().__init__(
            f"IKE major version {major_version} is not 2", NotifyType.INVALID_MAJOR_VERSION
        )
        self.major_version = major_version


class UnsupportedCriticalPayloadError(RemoteProtocolError):
    """An unknown payload type carries the critical bit (RFC 7296 2.5, 3.2).

    RFC 7296 3.10.1: the Notification Data is the one-octet payload type.
    """

    def __init__(self, payload_type: int) -> None:
        super().__init__(
            f"unsupported critical payload type {payload_type}",
            NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
            bytes((payload_type,)),
        )
        self.payload_type = payload_type
