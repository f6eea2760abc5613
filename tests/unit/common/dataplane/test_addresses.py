"""How the workers compare outer addresses: ``native_address`` and ``as_sockets``.

The inbound loop spots a moved peer with one tuple comparison between what
``recvmsg`` reports and what was installed, so an installed address must be
widened to exactly the form the socket reports (an IPv6 socket: a 4-tuple,
canonical text, IPv4 peers of a dual-stack socket as ``::ffff:a.b.c.d``).
"""

from __future__ import annotations

import socket

import pytest

from common.dataplane.base import as_sockets, native_address


@pytest.mark.parametrize(
    ("family", "address", "expected"),
    [
        (socket.AF_INET, ("192.0.2.1", 4500), ("192.0.2.1", 4500)),
        (socket.AF_INET6, ("2001:db8::1", 4500), ("2001:db8::1", 4500, 0, 0)),
        (socket.AF_INET6, ("2001:0db8:0:0::1", 4500), ("2001:db8::1", 4500, 0, 0)),
        (socket.AF_INET6, ("192.0.2.1", 4500), ("::ffff:192.0.2.1", 4500, 0, 0)),
    ],
)
def test_installed_addresses_take_the_form_the_socket_reports(
    family: int, address: tuple[str, int], expected: tuple[object, ...]
) -> None:
    assert native_address(family, address) == expected


def test_what_an_ipv6_socket_reports_is_its_own_native_form() -> None:
    try:
        receiver = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        receiver.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with receiver, socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sender:
        sender.bind(("::1", 0))
        sender.sendto(b"x", receiver.getsockname())
        _data, source = receiver.recvfrom(16)
        assert native_address(socket.AF_INET6, source[:2]) == source


@pytest.mark.parametrize(
    ("family", "host"),
    [(socket.AF_INET, "2001:db8::1"), (socket.AF_INET, "vpn.example.com"), (socket.AF_INET6, "")],
)
def test_hosts_of_another_family_or_names_are_refused(family: int, host: str) -> None:
    with pytest.raises(socket.gaierror):
        native_address(family, (host, 4500))


def test_one_socket_or_several() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as b,
    ):
        assert as_sockets(a) == (a,)
        assert as_sockets([a, b]) == (a, b)
        with pytest.raises(ValueError, match="at least one"):
            as_sockets([])
