"""The one reading of a plain ``https://`` address a member names for itself or a peer.

An operator names a provider's DSP address (``provider_url``), and where other members
reach this node's DSP listener (``advertise_dsp``). Both are dialled by the node, so both
must be nothing but a scheme, a host, a port and (where the caller allows it) a path: no
user or password (a host hidden behind ``user@``), no query or fragment, a port that is
a number in range. The rules and their messages live here once.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit


def plain_https(url: str) -> SplitResult:
    """`url`'s parts when it is ``https://HOST[:PORT][/PATH]`` and nothing else;
    ``ValueError`` saying what is wrong otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
        raise ValueError("must be https://HOST[:PORT][/PATH] without user or password")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query or a fragment")
    try:
        parts.port  # noqa: B018 (a port out of range or not a number raises here)
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from None
    return parts


def https_origin(url: str) -> tuple[str, int] | None:
    """(host, port) of an ``https://`` URL, the host in lower case and the port 443 where
    none is named; None for any other scheme, no host, or a port that is not one."""
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError:
        return None
    if parts.scheme.lower() != "https" or not parts.hostname:
        return None
    return parts.hostname.lower(), port


def split_host_port(address: str) -> tuple[str, str]:
    """``host:port`` as (host, port), an IPv6 host without its brackets (`host_port`'s
    inverse); the port as written, for the caller to check."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), port


def host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets (as a URL and the directory write it)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
