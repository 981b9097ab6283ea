"""What a published ``host:port`` may be: a DNS name, an IPv4 address or a bracketed IPv6
address, and a port 1-65535.

Other nodes dial a published peer address as a gRPC target, and gRPC reads a target
``unix:PATH``, ``unix-abstract:NAME`` or ``vsock:CID:PORT`` as a socket on the dialling
machine: a member publishing ``unix-abstract:x:1`` made every node that followed the
directory connect to a socket of its own. So a host has no ``:`` outside brackets, and
the rule is one, here, for the directory (`node.identity.directory.check_address`) and
for the node's own setting (`node.config.check_advertised`). Pure and light: the
settings are read by every CLI command.
"""

from __future__ import annotations

import ipaddress
import re

#: the longest DNS name
MAX_HOST = 253
#: a DNS name or an IPv4 address (labels of letters, digits, ``_`` and ``-``)
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
