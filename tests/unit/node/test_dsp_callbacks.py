"""Where a provider that follows the member directory takes a consumer's DSP callbacks
(`node.dsp.callbacks`, `connector.dsp_codec.check_callback`), what a node publishes as
its DSP endpoint (`node.run.published_dsp`), and the directory entry that carries it."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from qdspace.connector.dsp_codec import DspMessageError, check_callback
from qdspace.node.config import NodeSettings
from qdspace.node.dsp.callbacks import CallbackCheck
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.directory import DirectoryEntry, new_entry, verify_entry
from qdspace.node.identity.member import MemberKeys, create_member_keys
from qdspace.node.run import published_dsp


@pytest.mark.parametrize(
    "callback",
    [
        "https://sunarc.example:8600/callback",
        "https://SunArc.Example:8600/callback/",
        "https://sunarc.example:8600",
    ],
)
def test_a_callback_at_the_published_address_is_taken(callback: str) -> None:
    check_callback(callback, "sunarc.example:8600", "m-sunarc")


def test_the_default_port_is_443() -> None:
    check_callback("https://sunarc.example/callback", "sunarc.example:443", "m-sunarc")
    with pytest.raises(DspMessageError, match=re.escape("https://sunarc.example:8600")):
        check_callback("https://sunarc.example/callback", "sunarc.example:8600", "m-sunarc")


@pytest.mark.parametrize(
    "callback",
    [
        "https://10.0.0.5:22/cb",  # another host and port
        "https://sunarc.example:8601/callback",  # another port of the same host
        "https://sunarc.example:8600@10.0.0.5:22/cb",  # user info naming the published address
        "http://sunarc.example:8600/callback",  # no TLS
        "https://sunarc.example:99999/callback",  # no port
        "https://[::1]:8600/callback",
    ],
)
def test_a_callback_anywhere_else_is_refused_naming_the_published_address(callback: str) -> None:
    with pytest.raises(DspMessageError) as refused:
        check_callback(callback, "sunarc.example:8600", "m-sunarc")
    assert refused.value.where == "$.callbackAddress"
    assert "https://sunarc.example:8600" in str(refused.value)
    assert "m-sunarc" in str(refused.value)


def test_an_ipv6_published_address() -> None:
    check_callback("https://[::1]:8600/callback", "[::1]:8600", "m-sunarc")


def test_a_member_that_publishes_no_dsp_address_names_no_callback() -> None:
    with pytest.raises(DspMessageError, match=r"publishes no DSP address.*advertise_dsp"):
        check_callback("https://sunarc.example:8600/callback", None, "m-sunarc")


@pytest.fixture(scope="module")
def sunarc(tmp_path_factory: pytest.TempPathFactory) -> MemberKeys:
    workdir = tmp_path_factory.mktemp("callbacks")
    authority = Authority.init(workdir / "authority", "test-space")
    return create_member_keys(workdir / "sunarc", authority, name="sunarc", role="oem")


def _entry(keys: MemberKeys, endpoints: dict[str, str]) -> DirectoryEntry:
    return new_entry(keys.identity, keys.signing_key, endpoints)


def test_the_check_reads_the_members_own_entry(sunarc: MemberKeys) -> None:
    with_dsp = _entry(sunarc, {"peer": "sunarc.example:7443", "dsp": "sunarc.example:8600"})
    verify_entry(DirectoryEntry.from_json(with_dsp.to_json()))  # signed with its dsp endpoint
    listed = {sunarc.identity.member_id: with_dsp}
    check = CallbackCheck(listed.get)
    check.check("https://sunarc.example:8600/callback", sunarc.identity)
    with pytest.raises(DspMessageError, match=re.escape("https://sunarc.example:8600")):
        check.check("https://intranet:5432/callback", sunarc.identity)
    no_dsp = {sunarc.identity.member_id: _entry(sunarc, {"peer": "sunarc.example:7443"})}
    with pytest.raises(DspMessageError, match="publishes no DSP address"):
        CallbackCheck(no_dsp.get).check("https://sunarc.example:8600/cb", sunarc.identity)
    with pytest.raises(DspMessageError, match="not in the member directory"):
        CallbackCheck({}.get).check("https://sunarc.example:8600/cb", sunarc.identity)


def test_with_static_peers_a_callback_is_taken_only_on_the_peer_s_configured_host(
    sunarc: MemberKeys,
) -> None:
    """Without a directory, the operator's ``NAME=HOST:PORT`` is all there is: any port of
    that host (the member's machine), nowhere else; names compared as written."""
    peers = {"sunarc": "SunArc.example:7443", "v6": "[fd00::5]:7443"}
    check = CallbackCheck(static=peers.get)
    check.check("https://sunarc.example:8600/callback", sunarc.identity)
    check.check("https://SUNARC.example:1/cb", sunarc.identity)
    for elsewhere in [
        "https://10.0.0.5:5432/cb",  # the provider's own network
        "https://169.254.169.254/latest",  # a cloud's metadata service
        "https://sunarc.example.evil:8600/cb",
        "https://sunarc.example:8600@10.0.0.5:22/cb",  # user info naming the host
        "https://127.0.0.1:8600/cb",  # the same machine under another name is not the name
    ]:
        with pytest.raises(DspMessageError, match=r"on sunarc.example, where this node's peers"):
            check.check(elsewhere, sunarc.identity)
    with pytest.raises(DspMessageError, match=r"not among this node's peers.*peer-add"):
        CallbackCheck(static={}.get).check("https://sunarc.example:8600/cb", sunarc.identity)
    v6 = CallbackCheck(static=lambda _name: peers["v6"])
    v6.check("https://[FD00::5]:8600/cb", sunarc.identity)
    with pytest.raises(DspMessageError):
        v6.check("https://[fd00::6]:8600/cb", sunarc.identity)


def test_a_bare_binding_takes_any_https_callback(sunarc: MemberKeys) -> None:
    """The routes' own default (tests of the routes alone): no rule to apply."""
    CallbackCheck().check("https://anywhere.example:1/cb", sunarc.identity)


def _settings(tmp_path: Path, **values: object) -> NodeSettings:
    return NodeSettings(
        name="sunarc", role="oem", member_id="m-sunarc", directory=tmp_path, **values
    )  # type: ignore[arg-type]


def test_what_a_node_publishes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = "https://authority.example:8443"
    assert published_dsp(_settings(tmp_path), "https://127.0.0.1:8600") is None  # no directory
    assert (
        published_dsp(
            _settings(tmp_path, authority_url=url, dsp_host="10.1.2.3"), "https://10.1.2.3:8600"
        )
        == "10.1.2.3:8600"
    )
    advertised = _settings(
        tmp_path, authority_url=url, dsp_host="0.0.0.0", advertise_dsp="https://SunArc.example"
    )
    assert published_dsp(advertised, "https://SunArc.example") == "sunarc.example:443"
    with caplog.at_level(logging.WARNING, logger="node"):
        wildcard = _settings(tmp_path, authority_url=url, dsp_host="0.0.0.0")
        assert published_dsp(wildcard, "https://127.0.0.1:8600") is None
    assert "without advertise_dsp" in caplog.text
