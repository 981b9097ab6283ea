"""Node settings from secret files: ``QDSPACE_<FIELD>_FILE`` and the secrets directory.

The order, strongest first: ``QDSPACE_X``, ``QDSPACE_X_FILE``, the secrets directory
(``$QDSPACE_SECRETS_DIR`` or ``/run/secrets``), ``node.json``. A ``_FILE`` naming a file
that cannot be read, or given together with its plain variable, is one clear error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from qdspace.connector.storage import safe_url
from qdspace.node.config import DEFAULT_REGULATOR_PORT, NodeSettings
from qdspace.node.errors import ConfigError

PG = "postgresql+psycopg://qdspace:s3cret-pw@db.example:5432/qdspace"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("QDSPACE_"):
            monkeypatch.delenv(name)


def node_dir(tmp_path: Path, **data: object) -> Path:
    directory = tmp_path / "node"
    directory.mkdir(exist_ok=True)
    base = {"name": "cellex", "role": "supplier", "member_id": "cellex-1"}
    (directory / "node.json").write_text(json.dumps({**base, **data}))
    return directory


def secret(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_a_file_variable_gives_the_value_without_its_trailing_newline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = node_dir(tmp_path, db_url="sqlite:///elsewhere.db")
    monkeypatch.setenv("QDSPACE_DB_URL_FILE", str(secret(tmp_path, "db", PG + "\n")))
    monkeypatch.setenv("QDSPACE_REGULATOR_PORT_FILE", str(secret(tmp_path, "port", "9555")))
    settings = NodeSettings.load(directory)
    assert settings.database_url == PG  # the file beats node.json
    assert settings.regulator_port == 9555  # non-string fields are validated as usual


def test_the_plain_variable_and_its_file_together_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = node_dir(tmp_path)
    monkeypatch.setenv("QDSPACE_DB_URL_FILE", str(secret(tmp_path, "db", PG)))
    monkeypatch.setenv("QDSPACE_DB_URL", PG)
    with pytest.raises(ConfigError, match=r"give \$QDSPACE_DB_URL or \$QDSPACE_DB_URL_FILE"):
        NodeSettings.load(directory)


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda tmp: tmp / "absent", "does not exist"),
        (lambda tmp: tmp, "is a directory"),
        (lambda tmp: _bytes(tmp / "latin", b"\xff\xfe"), "UTF-8"),
    ],
)
def test_an_unreadable_file_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make: object, says: str
) -> None:
    directory = node_dir(tmp_path)
    path = make(tmp_path)  # type: ignore[operator]
    monkeypatch.setenv("QDSPACE_DB_URL_FILE", str(path))
    with pytest.raises(ConfigError) as caught:
        NodeSettings.load(directory)
    message = str(caught.value)
    assert "$QDSPACE_DB_URL_FILE" in message and says in message and "\n" not in message


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_file_the_user_cannot_read_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    directory = node_dir(tmp_path)
    locked = secret(tmp_path, "db", PG)
    locked.chmod(0)
    monkeypatch.setenv("QDSPACE_DB_URL_FILE", str(locked))
    with pytest.raises(ConfigError, match="cannot read"):
        NodeSettings.load(directory)


def test_a_complex_field_from_a_file_is_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = node_dir(tmp_path)
    peers = secret(tmp_path, "peers", json.dumps({"polycell": "10.0.0.7:7443"}))
    monkeypatch.setenv("QDSPACE_PEERS_FILE", str(peers))
    assert NodeSettings.load(directory).peers == {"polycell": "10.0.0.7:7443"}
    monkeypatch.setenv("QDSPACE_PEERS_FILE", str(secret(tmp_path, "bad", "polycell=x:1")))
    with pytest.raises(ConfigError, match="is not JSON"):
        NodeSettings.load(directory)


def test_the_secrets_directory_sits_between_the_environment_and_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = node_dir(tmp_path, db_url="sqlite:///from-node-json.db")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    secret(secrets, "qdspace_db_url", PG + "\n")
    monkeypatch.setenv("QDSPACE_SECRETS_DIR", str(secrets))
    assert NodeSettings.load(directory).db_url == PG
    monkeypatch.setenv("QDSPACE_DB_URL", "sqlite:///from-env.db")
    assert NodeSettings.load(directory).db_url == "sqlite:///from-env.db"
    monkeypatch.setenv("QDSPACE_SECRETS_DIR", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="QDSPACE_SECRETS_DIR"):
        NodeSettings.load(directory)


def test_listener_settings_and_their_defaults(tmp_path: Path) -> None:
    settings = NodeSettings.load(node_dir(tmp_path))
    assert (settings.regulator_host, settings.regulator_port) == ("127.0.0.1", 9443)
    assert settings.regulator_port == DEFAULT_REGULATOR_PORT
    assert settings.api_tls == (settings.layout.tls_cert, settings.layout.tls_key)
    own = NodeSettings.load(
        node_dir(tmp_path, api_tls_cert_file="api/tls.crt", api_tls_key_file="/etc/api.key")
    )
    assert own.api_tls == (own.directory / "api/tls.crt", Path("/etc/api.key"))
    with pytest.raises(ConfigError, match="together"):
        NodeSettings.load(node_dir(tmp_path, api_tls_cert_file="api/tls.crt"))


def test_a_logged_database_url_shows_no_password() -> None:
    assert "s3cret-pw" not in safe_url(PG)
    assert "s3cret-pw" not in safe_url("postgresql://db.example/q?user=u&password=s3cret-pw")
    assert safe_url("postgresql://u:s3cret-pw@h:notaport/db") == "<unparsable database URL>"


def test_node_init_writes_no_secret_of_the_environment_into_node_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qdspace.node.identity.authority import Authority
    from qdspace.node.init import init_node

    Authority.init(tmp_path / "authority", "test-space")
    monkeypatch.setenv("QDSPACE_DB_URL_FILE", str(secret(tmp_path, "db", PG)))
    monkeypatch.setenv("QDSPACE_API_PORT", "9999")
    settings = init_node(tmp_path / "n", tmp_path / "authority", name="n", role="supplier")
    written = (tmp_path / "n" / "node.json").read_text()
    assert "s3cret-pw" not in written and json.loads(written)["db_url"] == ""
    assert settings.api_port == 8443  # the environment applies when the node loads, not here
    assert NodeSettings.load(tmp_path / "n").db_url == PG
    # adding a peer rewrites the peers, not the secrets of this process's environment
    from qdspace.node.init import add_peers

    assert add_peers(tmp_path / "n", {"polycell": "10.0.0.7:7443"}).db_url == PG
    written = json.loads((tmp_path / "n" / "node.json").read_text())
    assert written["db_url"] == "" and written["peers"] == {"polycell": "10.0.0.7:7443"}
