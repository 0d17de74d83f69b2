"""Host names and ports in addresses users type (``-qmp tcp:HOST:PORT``, ``-incoming``, ``migrate``).

``check_host`` accepts what the resolver can take without surprises: an IPv4
or IPv6 literal, or an ASCII DNS name (letters, digits, '-', '_', labels of
1-63 characters, at most 253 in all). Anything else, such as ``é..`` (which
makes the socket module raise TypeError "encoding of hostname failed") or a
NUL byte, is refused here with a ValueError naming the problem, before any
socket call sees it.
"""

from __future__ import annotations

import ipaddress
import re

MAX_HOST = 253
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def check_host(host: str) -> str:
    """``host`` unchanged if usable (an empty host is the caller's default); ValueError otherwise."""
    if not isinstance(host, str):
        raise ValueError("the host must be a string")
    if not host:
        return host
    if not host.isascii() or not host.isprintable():  # also an IPv6 scope id such as "fe80::1%é"
        raise ValueError(f"host name {host[:64]!r} is not ASCII (use an address or a punycode xn-- name)")
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    if len(host) > MAX_HOST:
        raise ValueError(f"host name longer than {MAX_HOST} characters")
    if not host.isascii():
        raise ValueError(f"host name {host[:64]!r} is not ASCII (use an address or a punycode xn-- name)")
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"invalid host name {host[:64]!r}")
    return host


def check_port(text: str) -> int:
    """A TCP port 0-65535 from decimal text; ValueError names the problem (no digit-limit surprises)."""
    if not isinstance(text, str) or not text.isascii() or not text.isdigit() or len(text) > 5:
        raise ValueError(f"invalid port {str(text)[:16]!r}")
    port = int(text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range")
    return port
