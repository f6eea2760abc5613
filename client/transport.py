"""The client's IKE over UDP: two sockets, their readers on the loop, and the hand-over.

STYLE.md's ``transport.py``: asyncio glue for ``IkeSession``, IKE only.

- the "500" socket (an ephemeral local port; what matters is the gateway's
  port 500) is non-blocking and read here, for IKE_SA_INIT;
- the "4500" socket (RFC 3948) is blocking, because the data plane's workers
  will own it. Until the data plane exists (the first IKE_AUTH), this loop
  reads it with ``MSG_DONTWAIT``, keeping only IKE (non-ESP marker); then
  ``hand_over`` stops that and reads the IKE the inbound worker hands up
  through ``DataPlane.ike_fd``. ESP never reaches the loop.

Both sockets live as long as the connection, across reconnections, so the
gateway and any NAT keep seeing the same source ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Final

from common.dataplane.control import DataPlane
from common.esp.natt import NON_ESP_MARKER
from common.ike.exchanges import Address

log = logging.getLogger("outpost.client")

IKE_BATCH: Final = 64  # datagrams per wake-up, so one flood cannot starve the loop
MAX_DATAGRAM: Final = 65535
KEEPALIVE: Final = b"\xff"  # RFC 3948 2.3: one octet 0xFF


class IkeTransport:
    """Sockets and readers; ``receive`` is called per IKE datagram, ``done`` after each batch."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        receive: Callable[[bytes, Address], None],
        done: Callable[[], None],
        failed: Callable[[str], None],
    ) -> None:
        self._loop = loop
        self._receive = receive
        self._done = done
        self._failed = failed
        self.gateway_ip: str | None = None
        self.ike: socket.socket | None = None
        self.natt: socket.socket | None = None
        self._natt_on_loop = False
        self._dataplane: DataPlane | None = None

    def bind(self, gateway_ip: str, local_address: str | None) -> None:
        """Open both sockets for ``gateway_ip``'s family, once per connection.

        Raises:
            OSError: a socket could not be opened or bound.
        """
        if self.ike is not None and (self.gateway_ip == gateway_ip or self._dataplane):
            # Bound already (a data plane owns the NAT-T socket: keep it; a
            # gateway changing address family between attempts is rare).
            self.gateway_ip = gateway_ip
            return
        self.close()
        family = socket.AF_INET6 if ":" in gateway_ip else socket.AF_INET
        local = local_address or ("::" if family == socket.AF_INET6 else "0.0.0.0")
        ike = socket.socket(family, socket.SOCK_DGRAM)
        natt = socket.socket(family, socket.SOCK_DGRAM)
        try:
            for sock in (ike, natt):
                sock.bind((local, 0))
            ike.setblocking(False)
        except OSError:
            ike.close()
            natt.close()
            raise
        self.ike, self.natt, self.gateway_ip = ike, natt, gateway_ip
        self._loop.add_reader(ike.fileno(), self._on_ike_500)
        self._loop.add_reader(natt.fileno(), self._on_natt_before_dataplane)
        self._natt_on_loop = True

    @property
    def local_address(self) -> Address:
        assert self.ike is not None
        host, port = self.ike.getsockname()[:2]
        return (host, port)

    def hand_over(self, dataplane: DataPlane) -> None:
        """The data plane reads the NAT-T socket from now on; IKE comes up via ``ike_fd``."""
        if self._natt_on_loop and self.natt is not None:
            self._loop.remove_reader(self.natt.fileno())
            self._natt_on_loop = False
        self._dataplane = dataplane
        self._loop.add_reader(dataplane.ike_fd, self._on_ike_4500)

    def release(self) -> None:
        """Before the data plane stops: stop reading its IKE descriptor."""
        dataplane, self._dataplane = self._dataplane, None
        if dataplane is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(dataplane.ike_fd)

    def send(self, data: bytes, address: Address, nat_t: bool) -> None:
        """From port 4500 with the non-ESP marker once NAT-T is in use, else from "500"."""
        try:
            if nat_t:
                if self._dataplane is not None:
                    self._dataplane.send_ike(data, address)
                elif self.natt is not None:
                    self.natt.sendto(NON_ESP_MARKER + data, address)
            elif self.ike is not None:
                self.ike.sendto(data, address)
        except OSError as error:  # lost like any datagram; the core retransmits
            log.debug("sending IKE to %s: %s", address, error)

    def keepalive(self, port: int) -> None:
        """RFC 3948 2.3: keep a NAT's mapping of our port 4500 alive."""
        if self.natt is not None and self.gateway_ip is not None:
            with contextlib.suppress(OSError):
                self.natt.sendto(KEEPALIVE, (self.gateway_ip, port))

    def close(self) -> None:
        self.release()
        for sock in (self.ike, self.natt):
            if sock is None:
                continue
            if sock.fileno() >= 0:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(sock.fileno())
            sock.close()
        self.ike = self.natt = None
        self._natt_on_loop = False
        self.gateway_ip = None

    # --- readers -----------------------------------------------------------------------------

    def _on_ike_500(self) -> None:
        sock = self.ike
        if sock is None:
            return
        for _ in range(IKE_BATCH):
            try:
                data, source = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:  # ICMP port unreachable surfaces here: not fatal
                log.debug("IKE socket: %s", error)
                continue
            self._receive(data, (source[0], source[1]))
        self._done()

    def _on_natt_before_dataplane(self) -> None:
        """IKE on the NAT-T socket while no data plane reads it (the first IKE_AUTH)."""
        sock = self.natt
        if sock is None:
            return
        for _ in range(IKE_BATCH):
            try:
                data, source = sock.recvfrom(MAX_DATAGRAM, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                log.debug("NAT-T socket: %s", error)
                continue
            if data.startswith(NON_ESP_MARKER):  # ESP or keepalives before an SA: nothing to do
                self._receive(data[len(NON_ESP_MARKER) :], (source[0], source[1]))
        self._done()

    def _on_ike_4500(self) -> None:
        dataplane = self._dataplane
        if dataplane is None:
            return
        try:
            datagrams = dataplane.read_ike()
        except Exception as error:
            self.release()
            self._failed(f"reading IKE from the data plane: {error}")
            return
        for datagram in datagrams:
            self._receive(datagram.data, datagram.address)
        self._done()
