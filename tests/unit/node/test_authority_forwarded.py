"""Whose request it is behind a reverse proxy (`node.authority.forwarded`): the header
is read from trusted proxies only, from the right, up to the first address that is not
one; a malformed header from a trusted proxy is a 400 error; settings that name no
address, or trust everyone, are refused. (The served service: tests/integration/node/
test_authority_proxies.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from qdspace.node.authority.forwarded import (
    NO_PROXIES,
    TRUSTED_PROXIES_ENV,
    ForwardedForError,
    TrustedProxies,
)
from qdspace.node.cli.authority import authority_app
from qdspace.node.errors import ConfigError
from qdspace.node.faults import http_status

PROXIES = TrustedProxies.parse(["10.0.0.0/8", "192.0.2.1, 2001:db8:ff::/48"])


def test_no_proxy_is_trusted_by_default() -> None:
    assert not NO_PROXIES and str(NO_PROXIES) == "none"
    assert NO_PROXIES.client("10.0.0.1", ["198.51.100.7"]) == "10.0.0.1"
    assert NO_PROXIES.client("10.0.0.1", ["garbage"]) == "10.0.0.1"  # not even read


def test_the_header_of_an_untrusted_peer_is_ignored() -> None:
    assert PROXIES.client("203.0.113.5", ["198.51.100.7"]) == "203.0.113.5"
    assert PROXIES.client("203.0.113.5", ["garbage"]) == "203.0.113.5"
    assert PROXIES.client(None, ["198.51.100.7"]) is None


@pytest.mark.parametrize(
    ("peer", "header", "client"),
    [
        ("10.1.2.3", ["198.51.100.7"], "198.51.100.7"),
        ("::ffff:10.1.2.3", ["198.51.100.7"], "198.51.100.7"),  # a dual-stack socket
        ("10.1.2.3", ["anything, at all, 198.51.100.7"], "198.51.100.7"),  # not read
        ("10.1.2.3", ["198.51.100.7, 10.9.9.9"], "198.51.100.7"),  # a trusted hop
        ("10.1.2.3", ["198.51.100.7", "192.0.2.1"], "198.51.100.7"),  # two lines
        ("10.1.2.3", ["10.0.0.7, 10.0.0.8"], "10.0.0.7"),  # all trusted: the left-most
        ("10.1.2.3", [], "10.1.2.3"),  # no header: the proxy's own
        ("10.1.2.3", [" 2001:db8:1:2::7 "], "2001:db8:1:2::7"),
        ("10.1.2.3", ["[2001:db8:1:2::7]:4711"], "2001:db8:1:2::7"),
        ("10.1.2.3", ["[2001:db8:1:2::7]"], "2001:db8:1:2::7"),
        ("10.1.2.3", ["198.51.100.7:4711"], "198.51.100.7"),
        ("10.1.2.3", ["::ffff:198.51.100.7"], "198.51.100.7"),
        ("2001:db8:ff:1::1", ["198.51.100.7"], "198.51.100.7"),
    ],
)
def test_a_trusted_proxy_names_the_caller(peer: str, header: list[str], client: str) -> None:
    assert PROXIES.client(peer, header) == client


@pytest.mark.parametrize(
    "header",
    [
        ["not-an-address"],
        ["198.51.100.7,"],
        ["198.51.100.7,,10.0.0.1"],
        [""],
        ["[2001:db8::1"],
        ["198.51.100.7:http"],
        ["198.51.100.7", "junk"],
        ["fe80::1%eth0]:80"],
        ["1.2.3.4.5"],
    ],
)
def test_a_malformed_header_from_a_trusted_proxy_is_a_400(header: list[str]) -> None:
    with pytest.raises(ForwardedForError, match=r"X-Forwarded-For from trusted proxy 10\.1\.2\.3"):
        PROXIES.client("10.1.2.3", header)
    assert http_status(ForwardedForError("bad")) == 400


def test_the_setting_reads_addresses_and_networks() -> None:
    proxies = TrustedProxies.parse(["10.0.0.1", "192.0.2.0/24 2001:db8::/32", "10.0.0.1"])
    assert str(proxies) == "10.0.0.1/32, 192.0.2.0/24, 2001:db8::/32"
    assert TrustedProxies.parse([]) == NO_PROXIES


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("proxy.example", "not an IP address or network"),
        ("10.0.0.1/8", "has host bits set"),
        ("10.0.0.0/33", "not an IP address or network"),
        ("0.0.0.0/0", "trusts every address"),
        ("::/0", "trusts every address"),
    ],
)
def test_a_setting_that_is_no_proxy_is_refused(spec: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        TrustedProxies.parse([spec])


def test_authority_serve_refuses_a_bad_setting_before_it_starts(tmp_path: Path) -> None:
    runner = CliRunner()
    serve = ["serve", "--dir", str(tmp_path / "none"), "--trusted-proxy", "10.0.0.0/8"]
    bad = runner.invoke(authority_app, [*serve, "--trusted-proxy", "proxy.example"])
    assert bad.exit_code == 1 and "trusted proxy 'proxy.example'" in bad.output
    from_env = runner.invoke(authority_app, serve[:3], env={TRUSTED_PROXIES_ENV: "::/0"})
    assert from_env.exit_code == 1 and "trusts every address" in from_env.output
    assert "Traceback" not in bad.output + from_env.output
