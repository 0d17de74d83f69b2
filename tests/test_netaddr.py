"""Host names and ports users type: anything the socket module could choke on is a ValueError up front."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given, settings, strategies as st

from kvmpy.netaddr import check_host, check_port


@pytest.mark.parametrize("host", ["", "localhost", "127.0.0.1", "::1", "fe80::1%lo", "example.com.", "a_b.c-d",
                                  "xn--9ca.example", "0"])
def test_good_hosts(host: str) -> None:
    assert check_host(host) == host


@pytest.mark.parametrize("host", ["é..", "é", "a..b", "-a", "a" * 64, ("a." * 127) + "b", "a\0b", "a b", "..",
                                  "exa\nmple"])
def test_bad_hosts(host: str) -> None:
    with pytest.raises(ValueError):
        check_host(host)


@pytest.mark.parametrize("port, ok", [("0", 0), ("4444", 4444), ("65535", 65535), ("65536", None), ("", None),
                                       ("-1", None), ("٣", None), ("9" * 5000, None), ("0x10", None)])
def test_ports(port: str, ok: int | None) -> None:
    if ok is None:
        with pytest.raises(ValueError):
            check_port(port)
    else:
        assert check_port(port) == ok


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_an_accepted_host_never_makes_the_socket_module_raise_type_or_unicode_errors(host: str) -> None:
    try:
        check_host(host)
    except ValueError:
        return
    try:
        socket.getaddrinfo(host or None, 1, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass  # a name, not a number: resolving it is the resolver's business, and fails as OSError
