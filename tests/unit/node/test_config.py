"""Node settings: loading, environment overrides and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qdspace.node.config import NodeSettings
from qdspace.node.errors import ConfigError


def _write(directory: Path, **data: object) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    base = {"name": "cellex", "role": "supplier", "member_id": "cellex-1"}
    (directory / "node.json").write_text(json.dumps({**base, **data}))


def test_defaults_and_sqlite_url(tmp_path: Path) -> None:
    _write(tmp_path)
    s = NodeSettings.load(tmp_path)
    assert s.database_url == f"sqlite:///{tmp_path.resolve() / 'node.db'}"
    assert s.grpc_port == 7443


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, api_port=9000)
    monkeypatch.setenv("QDSPACE_API_PORT", "9100")
    assert NodeSettings.load(tmp_path).api_port == 9100


def test_missing_directory_and_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="node directory not found"):
        NodeSettings.load(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"node\.json not found"):
        NodeSettings.load(tmp_path)


def test_bad_values_name_the_field(tmp_path: Path) -> None:
    _write(tmp_path, grpc_port=70000)
    with pytest.raises(ConfigError, match="grpc_port"):
        NodeSettings.load(tmp_path)
    _write(tmp_path, peers={"polycell": "nohostport"})
    with pytest.raises(ConfigError, match="polycell"):
        NodeSettings.load(tmp_path)
    (tmp_path / "node.json").write_text("{broken")
    with pytest.raises(ConfigError, match="not valid JSON"):
        NodeSettings.load(tmp_path)


def test_authority_service_settings(tmp_path: Path) -> None:
    _write(tmp_path)
    s = NodeSettings.load(tmp_path)
    assert (s.authority_url, s.advertise_peer) == ("", "")  # none: static peers, CRL file
    assert s.directory_refresh_s > 0 and s.crl_refresh_s > 0
    _write(
        tmp_path,
        authority_url="https://authority.example:9443/",
        advertise_peer="10.0.0.2:7443",
        crl_refresh_s=0.5,
    )
    s = NodeSettings.load(tmp_path)
    assert s.authority_url == "https://authority.example:9443"
    assert (s.advertise_peer, s.crl_refresh_s) == ("10.0.0.2:7443", 0.5)
    for bad, field in (
        ({"authority_url": "http://authority.example"}, "authority_url"),
        ({"authority_url": "authority.example"}, "authority_url"),
        ({"advertise_peer": "10.0.0.2"}, "advertise_peer"),
        ({"crl_refresh_s": 0}, "crl_refresh_s"),
        ({"directory_refresh_s": -1}, "directory_refresh_s"),
    ):
        _write(tmp_path, **bad)
        with pytest.raises(ConfigError, match=field):
            NodeSettings.load(tmp_path)


def test_the_advertised_dsp_address(tmp_path: Path) -> None:
    _write(tmp_path)
    assert NodeSettings.load(tmp_path).advertise_dsp == ""  # the bound host and port
    for given, kept in (
        ("https://cellex.example:8600/", "https://cellex.example:8600"),
        ("https://cellex.example", "https://cellex.example"),
        ("https://[2001:db8::7]:8600", "https://[2001:db8::7]:8600"),
    ):
        _write(tmp_path, advertise_dsp=given)
        assert NodeSettings.load(tmp_path).advertise_dsp == kept
    for bad in (
        "http://cellex.example:8600",  # the listener is TLS only
        "cellex.example:8600",
        "https://cellex.example:8600/dsp",  # the routes hang off the root
        "https://op:secret@cellex.example:8600",
        "https://cellex.example:8600?x=1",
        "https://cellex.example:99999",
        "https://cellex.example:0",
        "https://:8600",
    ):
        _write(tmp_path, advertise_dsp=bad)
        with pytest.raises(ConfigError, match="advertise_dsp"):
            NodeSettings.load(tmp_path)
