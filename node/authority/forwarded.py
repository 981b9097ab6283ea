"""Whose request it is when a reverse proxy stands in front of the authority service.

Callers are counted by their address (`node.authority.attempts`). Behind a reverse proxy
every caller connects from the proxy's address, so all of them shared one budget: one
caller trying codes got every other caller refused. A proxy says whom it forwarded for in
``X-Forwarded-For``, but any caller can send that header as well, and a service that
believed it would give each forged address a budget of its own. So the header is read
only when the operator named the proxy (``qdspace authority serve --trusted-proxy``, an
address or a network, repeatable), and by default from nobody:

- the direct peer (the connection's address) is not a trusted proxy: it is the caller,
  and the header is ignored, whatever it says;
- it is one: the header's addresses (all its lines in order, joined by commas, as HTTP
  joins repeated fields) are read from the right, each written by the proxy that took
  the request from it, and the first one that is not itself a trusted proxy is the
  caller. Whatever stands left of it was written by the caller (or by proxies nobody
  vouched for) and is not read at all, so a caller cannot choose its address by sending
  the header itself. When every address is a trusted proxy, the left-most is the caller;
- a trusted proxy that sends no header: its own address is the caller's (all such
  requests share its budgets, as before);
- a header read from a trusted proxy that does not parse (an empty entry, something that
  is no IP address) is `ForwardedForError`, answered 400: the proxy is misconfigured,
  and guessing which part is the caller would let the caller pick.

Each address is an IPv4 or IPv6 address, in the forms proxies write: bare, an IPv6
address in brackets, either with a port (``192.0.2.7:4711``, ``[2001:db8::7]:4711``),
which is dropped. uvicorn's own handling of the header is off (``proxy_headers=False``
in `node.authority.server`): it believed the header from 127.0.0.1 and ::1 by default, or
from whatever ``FORWARDED_ALLOW_IPS`` named, so any caller on the authority's machine
could name any address it liked.

Trusting a network trusts every address in it to tell the truth about its callers; a
network of everyone (``0.0.0.0/0``, ``::/0``) would let every caller choose its address,
and is refused.

Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from qdspace.node.errors import ConfigError, WireFormatError

#: the environment variable ``authority serve`` also reads its trusted proxies from
TRUSTED_PROXIES_ENV = "QDSPACE_AUTHORITY_TRUSTED_PROXIES"
HEADER = "X-Forwarded-For"

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: ``[v6]``, ``[v6]:port`` or ``v4:port`` (a bare address is tried first)
_WITH_PORT = re.compile(r"^\[([0-9A-Fa-f:.]+)\](?::\d{1,5})?$|^([0-9.]+):\d{1,5}$")


class ForwardedForError(WireFormatError):
    """An ``X-Forwarded-For`` header from a trusted proxy that does not parse (400)."""


def _address(text: str) -> _Address | None:
    """The IP address ``text`` names (an IPv4-mapped IPv6 one as IPv4), or None (also
    for an IPv6 zone, ``%...``: ipaddress takes anything after it)."""
    if "%" in text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        match = _WITH_PORT.match(text)
        if match is None:
            return None
        try:
            address = ipaddress.ip_address(match[1] or match[2])
        except ValueError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class TrustedProxies:
    """The proxies whose ``X-Forwarded-For`` names the caller (the module); none: the
    header is never read."""

    networks: tuple[_Network, ...] = ()

    @classmethod
    def parse(cls, specs: Iterable[str]) -> TrustedProxies:
        """Addresses or networks (CIDR), each spec one or several separated by commas or
        spaces; `ConfigError` names the one that is neither, or that trusts everyone."""
        networks: list[_Network] = []
        for spec in specs:
            for part in spec.replace(",", " ").split():
                try:
                    network = ipaddress.ip_network(part)
                except ValueError as exc:
                    raise ConfigError(
                        f"trusted proxy {part!r}: not an IP address or network ({exc})"
                    ) from None
                if network.prefixlen == 0:
                    raise ConfigError(
                        f"trusted proxy {part!r} trusts every address: any caller could "
                        "choose the address it is counted by; name the proxies"
                    )
                networks.append(network)
        return cls(tuple(dict.fromkeys(networks)))

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __str__(self) -> str:
        return ", ".join(map(str, self.networks)) or "none"

    def trusts(self, address: _Address) -> bool:
        return any(address in network for network in self.networks)

    def client(self, peer: str | None, forwarded_for: Sequence[str]) -> str | None:
        """The caller's address: ``peer``'s (the connection's), unless ``peer`` is a
        trusted proxy that sent ``forwarded_for`` (the header's lines), which then names
        it (the module); `ForwardedForError` when that header does not parse."""
        if not self.networks or not forwarded_for or peer is None:
            return peer
        address = _address(peer)
        if address is None or not self.trusts(address):
            return peer
        for entry in reversed(",".join(forwarded_for).split(",")):
            address = _address(entry.strip())
            if address is None:
                raise ForwardedForError(_malformed(peer, entry))
            if not self.trusts(address):
                break
        return str(address)


def _malformed(peer: str, entry: str) -> str:
    """What is wrong with a trusted proxy's header (the entry shown short and quoted)."""
    what = repr(entry.strip()[:60]) if entry.strip() else "an empty entry"
    return (
        f"{HEADER} from trusted proxy {peer}: {what} is not an IP address "
        "(the proxy must append the address it took the request from)"
    )


#: the default: no proxy is trusted, the header is never read
NO_PROXIES = TrustedProxies()
