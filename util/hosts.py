"""What a published ``host:port`` may be: a DNS name, an IPv4 address or a bracketed IPv6
address, and a port 1-65535.

Other nodes dial a published peer address as a gRPC target, and gRPC reads a target
``unix:PATH``, ``unix-abstract:NAME`` or ``vsock:CID:PORT`` as a socket on the dialling
machine: a member publishing ``unix-abstract:x:1`` made every node that followed the
directory connect to a socket of its own. So a host has no ``:`` outside brackets, and
the rule is one, here, for the directory (`node.identity.directory.check_address`) and
for the node's own setting (`node.config.check_advertised`). Pure and light: the
settings are read by every CLI command.

A well-formed address may still be one every dialler reads as its own machine or network
(`local_kind`): a member publishing ``127.0.0.1:5432`` or ``169.254.169.254:80`` made
every node that followed the directory call its own database or its cloud's metadata
service. The resolver reads ``127.1``, ``2130706433`` and ``0x7f.0.0.1`` as
``127.0.0.1`` too, and ``localhost`` names the dialler itself, so they are read the same.
"""

from __future__ import annotations

import ipaddress
import re
import socket

#: the longest DNS name
MAX_HOST = 253
#: a DNS name or an IPv4 address (labels of letters, digits, ``_`` and ``-``)
#: what the resolver may read as a number (``inet_aton``: ``127.1``, ``0x7f.1``, ``2130706433``)
_NUMERIC = re.compile(r"[0-9][0-9A-Fa-fXx.]*")
_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?")


def is_host(host: str) -> bool:
    """``host`` is a DNS name, an IPv4 address or an IPv6 address in brackets."""
    if len(host) > MAX_HOST:
        return False
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    return _NAME.fullmatch(host) is not None


def is_host_port(address: str) -> bool:
    """``address`` is ``host:port`` by `is_host`, with a port of 1 to 5 digits in 1-65535."""
    host, sep, port = address.rpartition(":")
    digits = port.isascii() and port.isdigit() and len(port) <= 5
    return bool(sep and host) and is_host(host) and digits and 0 < int(port) < 65536


def local_kind(host: str) -> str | None:
    """What ``host`` (an `is_host`) is when it is no public address: ``"loopback"``
    (also ``localhost``), ``"link-local"``, ``"unspecified"``, ``"multicast"``, or
    ``"private"`` (any other address not globally reachable: RFC 1918, unique local,
    shared, documentation ranges). None: a public address, or a DNS name (module
    docstring)."""
    bare = host[1:-1] if host.startswith("[") else host.rstrip(".")
    lowered = bare.lower()
    if lowered == "localhost" or lowered.endswith(".localhost"):
        return "loopback"
    address = _address(bare)
    if address is None:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address) and address.packed[0] == 0:
        return "unspecified"  # 0.0.0.0/8: "this network", Linux dials 0.0.0.0 as itself
    for kind, flag in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("unspecified", address.is_unspecified),
        ("multicast", address.is_multicast),
    ):
        if flag:
            return kind
    return None if address.is_global else "private"


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as the resolver reads an address (the numeric forms of ``inet_aton``
    included); None: a name."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    if not _NUMERIC.fullmatch(text):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None
